//! Lanes: one thread per transform worker for its block transforms' passes.
//!
//! Without a lane, each object's pass runs on a blocking thread of its own: when a pass ends,
//! the worker task must be woken to open the next object and wake a thread for it. On a
//! machine whose cores are all busy digesting, each of those wake-ups may wait behind a
//! digest for the scheduler's next tick while a core idles (session 14, BENCHMARKS.md). A
//! lane keeps one thread and a short queue of passes: its worker queues the next object's
//! pass while the current one runs, and the thread goes from one pass to the next without
//! waiting for its worker. A queued pass holds a local file's handle, or opens its object
//! as it starts (a remote body opened ahead would time out unread behind a long pass).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;
use tracing::warn;

/// Passes a lane holds queued behind the one it runs. [`Lane::ready`] means "the queued pass
/// has started" only with one.
pub const LANE_PASSES_QUEUED: usize = 1;
const _: () = assert!(LANE_PASSES_QUEUED == 1);

/// One object's pass through a block transform, its failures and panics already caught.
pub(crate) type Pass = Box<dyn FnOnce() + Send + 'static>;

/// A thread for one worker's passes, started at its first pass and ended when the lane is
/// dropped (after the passes queued on it), or if a pass panics past its own guard (a
/// new thread is started for the next pass then).
#[derive(Default)]
pub struct Lane {
    passes: Option<mpsc::Sender<Pass>>,
    /// Passes queued on this lane so far.
    queued: u64,
    /// Passes queued or running now.
    pending: Arc<AtomicUsize>,
}

impl fmt::Debug for Lane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lane")
            .field("started", &self.passes.is_some())
            .field("queued", &self.queued)
            .finish()
    }
}

impl Lane {
    /// Passes queued on this lane so far (a pass that had to run elsewhere is not counted).
    pub fn passes_queued(&self) -> u64 {
        self.queued
    }

    /// No pass is queued or running.
    pub fn idle(&self) -> bool {
        self.pending.load(Ordering::Acquire) == 0
    }

    /// Queues a pass behind the ones before it; waits while [`LANE_PASSES_QUEUED`] are queued.
    pub(crate) async fn run(&mut self, pass: Pass) {
        let passes = match &self.passes {
            Some(passes) if !passes.is_closed() => passes,
            _ => match start_thread(Arc::clone(&self.pending)) {
                Ok(passes) => self.passes.insert(passes),
                Err(e) => {
                    warn!(error = %e, "could not start a lane thread; running the pass on a blocking thread");
                    tokio::task::spawn_blocking(pass);
                    return;
                }
            },
        };
        // Counted before the thread can take it (and count it done).
        self.pending.fetch_add(1, Ordering::AcqRel);
        match passes.send(pass).await {
            Ok(()) => self.queued += 1,
            Err(mpsc::error::SendError(pass)) => {
                self.pending.fetch_sub(1, Ordering::AcqRel);
                // The thread is gone (passes catch their panics, so this is a bug guard): the
                // pass still runs, and its output stream still ends.
                warn!("lane thread gone; running the pass on a blocking thread");
                self.passes = None;
                tokio::task::spawn_blocking(pass);
            }
        }
    }

    /// Waits until the lane can take a pass without waiting: with one pass queued, until
    /// that pass has started.
    pub async fn ready(&self) {
        if let Some(passes) = &self.passes {
            // The permit is given back at once; only this lane's worker queues passes.
            let _ = passes.reserve().await;
        }
    }
}

fn start_thread(pending: Arc<AtomicUsize>) -> std::io::Result<mpsc::Sender<Pass>> {
    let (tx, mut rx) = mpsc::channel::<Pass>(LANE_PASSES_QUEUED);
    std::thread::Builder::new()
        .name("letl-lane".to_string())
        .spawn(move || {
            while let Some(pass) = rx.blocking_recv() {
                pass();
                pending.fetch_sub(1, Ordering::AcqRel);
            }
        })?;
    Ok(tx)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a panic is the failure report

    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_run_in_order_on_one_thread_and_a_dropped_lane_finishes_its_queue() {
        let ran: Arc<Mutex<Vec<(usize, std::thread::ThreadId)>>> = Arc::default();
        let mut lane = Lane::default();
        lane.ready().await;
        for i in 0..6 {
            let ran = Arc::clone(&ran);
            lane.run(Box::new(move || {
                // Slow enough that later passes queue behind it.
                std::thread::sleep(Duration::from_millis(5));
                ran.lock().unwrap().push((i, std::thread::current().id()));
            }))
            .await;
        }
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        lane.run(Box::new(move || {
            let _ = done_tx.send(());
        }))
        .await;
        drop(lane);
        done_rx.await.unwrap();
        let ran = ran.lock().unwrap().clone();
        assert_eq!(
            ran.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            (0..6).collect::<Vec<_>>()
        );
        assert!(ran.iter().all(|(_, thread)| *thread == ran[0].1), "{ran:?}");
        assert_ne!(ran[0].1, std::thread::current().id());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lane_queues_at_most_its_bound_behind_the_running_pass() {
        let mut lane = Lane::default();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        lane.run(Box::new(move || {
            let _ = release_rx.recv();
        }))
        .await;
        // The first pass runs (and blocks); the queue takes LANE_PASSES_QUEUED more at once.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for _ in 0..LANE_PASSES_QUEUED {
            tokio::time::timeout(Duration::from_secs(5), lane.run(Box::new(|| {})))
                .await
                .unwrap();
        }
        let full = tokio::time::timeout(Duration::from_millis(100), lane.ready()).await;
        assert!(full.is_err(), "a full lane is not ready");
        release_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), lane.ready())
            .await
            .unwrap();
    }
}

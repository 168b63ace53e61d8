//! Background tasks a service starts (job runners) and waits for at shutdown.

use std::sync::{Mutex, MutexGuard};

use tokio::task::JoinHandle;

/// Locks a mutex, taking the data of one a panicking thread left behind (the state it guards
/// stays consistent between statements).
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The runner tasks of a service.
#[derive(Debug, Default)]
pub struct Runners(Mutex<Vec<JoinHandle<()>>>);

impl Runners {
    /// Keeps `runner` (and forgets those that already finished).
    pub fn push(&self, runner: JoinHandle<()>) {
        let mut runners = lock(&self.0);
        runners.retain(|r| !r.is_finished());
        runners.push(runner);
    }

    /// Waits until `deadline` for every runner; aborts those still going then. Returns how
    /// many were cut.
    pub async fn join_until(&self, deadline: tokio::time::Instant) -> usize {
        let runners = std::mem::take(&mut *lock(&self.0));
        let mut cut = 0;
        for mut runner in runners {
            if tokio::time::timeout_at(deadline, &mut runner)
                .await
                .is_err()
            {
                runner.abort();
                cut += 1;
            }
        }
        cut
    }
}

//! A stage: a stage actor supervising a pool of worker actors that take items from the
//! stage's queue. The stage grows the pool when the queue passes its threshold, shrinks it when
//! the queue stays empty, replaces a worker that panicked (dead-lettering the item it held), and
//! ends when its queue is closed and drained and its last worker has stopped.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::{Notify, oneshot};
use tracing::{debug, error, info};

use super::{IDLE_TICKS_BEFORE_SHRINK, Input, JobProgress, SCALE_TICK, Scaling, StageCounters};

/// What a stage's workers do with one item.
#[async_trait::async_trait]
pub(crate) trait Work: Send + Sync + 'static {
    type Item: Send + 'static;
    /// What one worker keeps from one item to the next (a transform worker's lane).
    type Local: Default + Send + 'static;
    const STAGE: &'static str;
    fn input(item: &Self::Item) -> &Input;
    /// Handles one item to its end; failures go to the dead-letter list, never back here.
    async fn process(&self, local: &mut Self::Local, item: Self::Item);
    /// The job's figures, where dead letters go.
    fn progress(&self) -> &JobProgress;

    fn dead_letter(&self, input: Input, error: String) {
        self.progress().dead_letter(super::DeadLetter {
            input,
            stage: Self::STAGE.to_string(),
            error,
        });
    }
}

/// A running stage: wait for its end with [`Stage::finished`].
pub(crate) struct Stage {
    done: oneshot::Receiver<()>,
}

impl Stage {
    pub(crate) async fn start<W: Work>(
        name: &'static str,
        scaling: Scaling,
        queue: async_channel::Receiver<W::Item>,
        work: Arc<W>,
        progress: Arc<JobProgress>,
    ) -> Result<Self, String> {
        let (done_tx, done) = oneshot::channel();
        let args = StageArgs {
            name,
            scaling,
            queue,
            work,
            progress,
            done: Some(done_tx),
        };
        // Unnamed: ractor's name registry is process-global.
        Actor::spawn(None, StageActor::<W>(PhantomData), args)
            .await
            .map_err(|e| format!("starting the {name} stage: {e}"))?;
        Ok(Self { done })
    }

    /// Waits until the stage's queue is closed and drained and its workers stopped.
    pub(crate) async fn finished(self) {
        let _ = self.done.await;
    }
}

struct StageActor<W>(PhantomData<fn() -> W>);

struct StageArgs<W: Work> {
    name: &'static str,
    scaling: Scaling,
    queue: async_channel::Receiver<W::Item>,
    work: Arc<W>,
    progress: Arc<JobProgress>,
    /// Told when the stage stops.
    done: Option<oneshot::Sender<()>>,
}

struct Worker {
    /// The input the worker is on, if any: dead-lettered if the worker panics.
    current: Arc<Mutex<Option<Input>>>,
    retire: Arc<Notify>,
}

struct StageState<W: Work> {
    args: StageArgs<W>,
    workers: BTreeMap<ActorId, Worker>,
    breaching: bool,
    idle_ticks: u32,
    ended: bool,
}

enum StageMsg {
    Tick,
}

impl<W: Work> StageState<W> {
    fn counters(&self) -> &StageCounters {
        match self.args.name {
            "extract" => &self.args.progress.extract,
            "transform" => &self.args.progress.transform,
            _ => &self.args.progress.load,
        }
    }

    fn worker_count(&self) -> u32 {
        u32::try_from(self.workers.len()).unwrap_or(u32::MAX)
    }

    async fn add_worker(&mut self, myself: &ActorRef<StageMsg>) -> Result<(), ActorProcessingErr> {
        let current = Arc::new(Mutex::new(None));
        let retire = Arc::new(Notify::new());
        let args = WorkerArgs {
            queue: self.args.queue.clone(),
            work: Arc::clone(&self.args.work),
            current: Arc::clone(&current),
            retire: Arc::clone(&retire),
        };
        let (worker, _) =
            Actor::spawn_linked(None, WorkerActor::<W>(PhantomData), args, myself.get_cell())
                .await?;
        self.workers
            .insert(worker.get_id(), Worker { current, retire });
        let counters = self.counters();
        counters.workers_provisioned.fetch_add(1, Ordering::Relaxed);
        let now = self.workers.len() as u64;
        counters.workers.store(now, Ordering::Relaxed);
        counters.workers_peak.fetch_max(now, Ordering::Relaxed);
        Ok(())
    }

    /// The queue is closed and empty and no worker is left: the stage is over.
    fn maybe_end(&mut self, myself: &ActorRef<StageMsg>) {
        if !self.ended
            && self.workers.is_empty()
            && self.args.queue.is_closed()
            && self.args.queue.is_empty()
        {
            self.ended = true;
            debug!(stage = self.args.name, "stage drained");
            myself.stop(None);
        }
    }
}

impl<W: Work> Actor for StageActor<W> {
    type Msg = StageMsg;
    type State = StageState<W>;
    type Arguments = StageArgs<W>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: StageArgs<W>,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = StageState {
            args,
            workers: BTreeMap::new(),
            breaching: false,
            idle_ticks: 0,
            ended: false,
        };
        for _ in 0..state.args.scaling.workers_min {
            state.add_worker(&myself).await?;
        }
        let ticker = myself.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SCALE_TICK).await;
                if ticker.cast(StageMsg::Tick).is_err() {
                    return;
                }
            }
        });
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.counters().workers.store(0, Ordering::Relaxed);
        state.counters().queue_len.store(0, Ordering::Relaxed);
        if let Some(done) = state.args.done.take() {
            let _ = done.send(());
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            StageMsg::Tick => {
                let len = state.args.queue.len();
                state
                    .counters()
                    .queue_len
                    .store(len as u64, Ordering::Relaxed);
                let scaling = state.args.scaling;
                let above = len > scaling.threshold as usize;
                if above && !state.breaching {
                    state
                        .counters()
                        .threshold_breaches
                        .fetch_add(1, Ordering::Relaxed);
                }
                state.breaching = above;
                let workers = state.worker_count();
                if above && workers < scaling.workers_max && !state.args.queue.is_closed() {
                    let grown = (f64::from(workers.max(1)) * scaling.growth_factor).ceil();
                    let target = if grown >= f64::from(scaling.workers_max) {
                        scaling.workers_max
                    } else {
                        // In range: below workers_max, which is a u32.
                        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                        let target = grown as u32;
                        target.max(workers + 1)
                    };
                    info!(
                        stage = state.args.name,
                        queue = len,
                        from = workers,
                        to = target,
                        "queue past its threshold; adding workers"
                    );
                    for _ in workers..target {
                        state.add_worker(&myself).await?;
                    }
                    state.idle_ticks = 0;
                } else if len == 0 {
                    state.idle_ticks += 1;
                    if state.idle_ticks >= IDLE_TICKS_BEFORE_SHRINK && workers > scaling.workers_min
                    {
                        // Any idle one: it stops at its next wait for an item.
                        if let Some(worker) = state.workers.values().find(|w| {
                            w.current
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .is_none()
                        }) {
                            debug!(
                                stage = state.args.name,
                                workers, "queue idle; retiring a worker"
                            );
                            worker.retire.notify_one();
                        }
                        state.idle_ticks = 0;
                    }
                } else {
                    state.idle_ticks = 0;
                }
                state.maybe_end(&myself);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                state.workers.remove(&cell.get_id());
            }
            SupervisionEvent::ActorFailed(cell, failure) => {
                let held = state
                    .workers
                    .remove(&cell.get_id())
                    .and_then(|w| w.current.lock().unwrap_or_else(|p| p.into_inner()).take());
                error!(stage = state.args.name, error = %failure, input = ?held.as_ref().map(|i| &i.uri), "worker panicked; replacing it");
                state.counters().restarts.fetch_add(1, Ordering::Relaxed);
                if let Some(input) = held {
                    state.args.work.dead_letter(
                        input,
                        format!("the {} worker panicked: {failure}", state.args.name),
                    );
                }
                let queue = &state.args.queue;
                if !(queue.is_closed() && queue.is_empty())
                    || state.worker_count() < state.args.scaling.workers_min
                {
                    state.add_worker(&myself).await?;
                }
            }
            _ => return Ok(()),
        }
        state
            .counters()
            .workers
            .store(state.workers.len() as u64, Ordering::Relaxed);
        state.maybe_end(&myself);
        Ok(())
    }
}

struct WorkerActor<W>(PhantomData<fn() -> W>);

struct WorkerArgs<W: Work> {
    queue: async_channel::Receiver<W::Item>,
    work: Arc<W>,
    current: Arc<Mutex<Option<Input>>>,
    retire: Arc<Notify>,
}

struct WorkerState<W: Work> {
    args: WorkerArgs<W>,
    local: W::Local,
}

enum WorkerMsg {
    Next,
}

impl<W: Work> Actor for WorkerActor<W> {
    type Msg = WorkerMsg;
    type State = WorkerState<W>;
    type Arguments = WorkerArgs<W>;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: WorkerArgs<W>,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.cast(WorkerMsg::Next)?;
        Ok(WorkerState {
            args,
            local: W::Local::default(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        WorkerMsg::Next: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let WorkerState { args: state, local } = state;
        let item = tokio::select! {
            item = state.queue.recv() => item,
            () = state.retire.notified() => {
                myself.stop(Some("retired".to_string()));
                return Ok(());
            }
        };
        let Ok(item) = item else {
            // Closed and drained: this stage's work is done.
            myself.stop(None);
            return Ok(());
        };
        *state.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(W::input(&item).clone());
        state.work.process(local, item).await;
        *state.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
        myself.cast(WorkerMsg::Next)?;
        Ok(())
    }
}

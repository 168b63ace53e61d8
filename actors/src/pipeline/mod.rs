//! The pipeline engine: one job runs extract, transform and load stages, each a stage actor
//! supervising a pool of worker actors, linked by bounded queues.
//!
//! [`run_job`] wires a job sink first, so the function reads as the pipeline does. A lister
//! pages through the [`Source`], skips inputs the [`Ledger`] says were already produced by
//! this pipeline version, and feeds the extract queue. Extract workers take inputs in and hand
//! them on; transform workers open them (or leave that to the pass) and run the chain (block
//! transforms on the worker's [`Lane`], one object queued behind the running one), and the
//! result streams to a load worker, which stores it with the [`Sink`] and records it in the
//! ledger. Each stage grows its pool by its growth factor when its queue passes its
//! threshold, and shrinks it when idle. A worker that panics is replaced; the object it held
//! goes to the job's dead-letter list.
//!
//! Stopping a job (the node stopping, or a cancel) stops the lister; the stages then drain
//! their queues and end, each closing the queue after it, so everything taken in is finished.
//!
//! Sources, sinks and ledgers are traits: the node gives tier prefixes, directories and its
//! provenance records; the simulator can give in-memory ones.

mod stage;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use letl_storage::{ByteStream, ObjectBody};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use crate::transform::{Lane, Opening, Transform, apply_chain_on, opened};
use stage::{Stage, Work};

/// Inputs one page of a listing brings.
pub const LIST_PAGE_INPUTS: usize = 1000;
/// Dead letters a job keeps with their errors; past this it only counts them.
pub const DEAD_LETTERS_KEPT: usize = 1000;
/// A queue holds up to this many times its stage's threshold.
const QUEUE_CAPACITY_PER_THRESHOLD: usize = 2;
/// Output chunks in flight between a transform worker and the load worker storing its result.
const PIPE_CHUNKS_IN_FLIGHT: usize = 4;
/// Most workers one stage may be given.
pub const STAGE_WORKERS_LIMIT: u32 = 64;
/// Load workers kept per transform worker: one storing a worker's result while another
/// finishes (syncs) the one before.
const LOAD_WORKERS_PER_TRANSFORM_WORKER: u32 = 2;
/// Largest queue threshold: a queue holds twice this many items, allocated up front.
pub const THRESHOLD_LIMIT: u32 = 10_000;

/// How one stage's pool grows and shrinks.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scaling {
    /// Queue length past which the stage grows.
    pub threshold: u32,
    /// Workers are multiplied by this (rounded up) at each growth; more than 1.
    pub growth_factor: f64,
    pub workers_min: u32,
    pub workers_max: u32,
}

impl Default for Scaling {
    fn default() -> Self {
        Self {
            threshold: 64,
            growth_factor: 2.0,
            workers_min: 1,
            workers_max: 8,
        }
    }
}

impl Scaling {
    /// Why these settings cannot work, naming the field (`field` is e.g. `scaling.transform`).
    pub fn check(&self, field: &str) -> Result<(), String> {
        if self.threshold == 0 {
            return Err(format!("{field}.threshold: must be at least 1"));
        }
        if self.threshold > THRESHOLD_LIMIT {
            return Err(format!(
                "{field}.threshold: at most {THRESHOLD_LIMIT} (got {})",
                self.threshold
            ));
        }
        if !(self.growth_factor > 1.0 && self.growth_factor.is_finite()) {
            return Err(format!(
                "{field}.growth_factor: must be more than 1 (got {})",
                self.growth_factor
            ));
        }
        if self.workers_min == 0 {
            return Err(format!("{field}.workers_min: must be at least 1"));
        }
        if self.workers_max < self.workers_min {
            return Err(format!(
                "{field}.workers_max: {} is less than workers_min ({})",
                self.workers_max, self.workers_min
            ));
        }
        if self.workers_max > STAGE_WORKERS_LIMIT {
            return Err(format!(
                "{field}.workers_max: at most {STAGE_WORKERS_LIMIT}"
            ));
        }
        Ok(())
    }

    fn queue_capacity(&self) -> usize {
        usize::try_from(self.threshold)
            .unwrap_or(usize::MAX)
            .saturating_mul(QUEUE_CAPACITY_PER_THRESHOLD)
            .max(2)
    }
}

/// One object a job takes in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    /// Where it comes from, as users name it (`ssd:/covid/a.fa`, `file:///data/a.fa`).
    pub uri: String,
    /// Its key below the source's prefix: outputs are named from it.
    pub key: String,
    pub size: u64,
    /// What identifies these bytes (a content hash, or size and modification time): an input
    /// whose fingerprint changed is processed again.
    pub fingerprint: String,
}

/// Where a job's result went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    pub uri: String,
    pub size: u64,
    /// The stored object's content hash, as its tier reports it.
    pub hash: String,
}

/// A job's inputs.
#[async_trait::async_trait]
pub trait Source: Send + Sync + fmt::Debug + 'static {
    /// Inputs in key order after `after` (a key), at most `limit`.
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Input>, String>;
    async fn open(&self, input: &Input) -> Result<ObjectBody, String>;
}

/// Where a job's results go.
#[async_trait::async_trait]
pub trait Sink: Send + Sync + fmt::Debug + 'static {
    /// Stores the result for `input`. An output stream that ends in an error must not be
    /// stored.
    async fn store(&self, input: &Input, output: ByteStream) -> Result<Stored, String>;
}

/// What was produced before, per input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// Not produced by this pipeline version from these bytes: process it.
    New,
    /// Produced before, by an earlier job: skip it, counted as skipped.
    Produced,
    /// Produced by this very job before it was interrupted: skip it, already counted.
    ProducedByThisJob,
}

/// The provenance of produced objects, which makes runs incremental.
#[async_trait::async_trait]
pub trait Ledger: Send + Sync + fmt::Debug + 'static {
    async fn seen(&self, input: &Input) -> Result<Seen, String>;
    /// Records that `input` produced `stored` (after it is stored).
    async fn record(&self, input: &Input, stored: &Stored) -> Result<(), String>;
}

/// Everything a job runs on.
#[derive(Clone, Debug)]
pub struct JobPlan {
    pub job_id: String,
    pub source: Arc<dyn Source>,
    pub chain: Vec<Arc<dyn Transform>>,
    pub sink: Arc<dyn Sink>,
    pub ledger: Arc<dyn Ledger>,
    pub extract: Scaling,
    pub transform: Scaling,
    pub load: Scaling,
}

/// An object that could not be processed, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub input: Input,
    /// `extract`, `transform` or `load`.
    pub stage: String,
    pub error: String,
}

/// One stage's figures.
#[derive(Debug, Default)]
pub struct StageCounters {
    pub workers: AtomicU64,
    pub workers_peak: AtomicU64,
    /// Workers started over the job (first ones, growth and replacements).
    pub workers_provisioned: AtomicU64,
    /// Times its queue went past its threshold.
    pub threshold_breaches: AtomicU64,
    /// Workers replaced after a panic.
    pub restarts: AtomicU64,
    pub queue_len: AtomicU64,
}

/// A job's live figures, shared by its actors and read by the API.
#[derive(Debug, Default)]
pub struct JobProgress {
    pub objects_in: AtomicU64,
    pub bytes_in: AtomicU64,
    pub objects_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub skipped: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub listing_done: AtomicU64,
    pub extract: StageCounters,
    pub transform: StageCounters,
    pub load: StageCounters,
    dead_letters: Mutex<Vec<DeadLetter>>,
}

impl JobProgress {
    pub(crate) fn dead_letter(&self, letter: DeadLetter) {
        info!(input = %letter.input.uri, stage = %letter.stage, error = %letter.error, "object dead-lettered");
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
        let mut letters = self.dead_letters.lock().unwrap_or_else(|p| p.into_inner());
        if letters.len() < DEAD_LETTERS_KEPT {
            letters.push(letter);
        }
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead_letters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Starts from figures saved by an earlier run of the same job.
    pub fn restore(&self, stats: &JobStats, letters: Vec<DeadLetter>) {
        self.objects_in.store(stats.objects_in, Ordering::Relaxed);
        self.bytes_in.store(stats.bytes_in, Ordering::Relaxed);
        self.objects_out.store(stats.objects_out, Ordering::Relaxed);
        self.bytes_out.store(stats.bytes_out, Ordering::Relaxed);
        self.skipped.store(stats.skipped, Ordering::Relaxed);
        self.dead_lettered
            .store(stats.dead_lettered, Ordering::Relaxed);
        *self.dead_letters.lock().unwrap_or_else(|p| p.into_inner()) = letters;
    }

    pub fn snapshot(&self) -> JobStats {
        let stage = |c: &StageCounters| StageStats {
            workers: c.workers.load(Ordering::Relaxed),
            workers_peak: c.workers_peak.load(Ordering::Relaxed),
            workers_provisioned: c.workers_provisioned.load(Ordering::Relaxed),
            threshold_breaches: c.threshold_breaches.load(Ordering::Relaxed),
            restarts: c.restarts.load(Ordering::Relaxed),
            queue_len: c.queue_len.load(Ordering::Relaxed),
        };
        JobStats {
            objects_in: self.objects_in.load(Ordering::Relaxed),
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            objects_out: self.objects_out.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            listing_done: self.listing_done.load(Ordering::Relaxed) > 0,
            extract: stage(&self.extract),
            transform: stage(&self.transform),
            load: stage(&self.load),
        }
    }
}

/// A stage's figures at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageStats {
    pub workers: u64,
    pub workers_peak: u64,
    pub workers_provisioned: u64,
    pub threshold_breaches: u64,
    pub restarts: u64,
    pub queue_len: u64,
}

/// A job's figures at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStats {
    pub objects_in: u64,
    pub bytes_in: u64,
    pub objects_out: u64,
    pub bytes_out: u64,
    pub skipped: u64,
    pub dead_lettered: u64,
    /// The whole source has been listed (so `objects_in` will not grow past what is queued).
    pub listing_done: bool,
    pub extract: StageStats,
    pub transform: StageStats,
    pub load: StageStats,
}

impl StageStats {
    fn absorb(&mut self, other: &StageStats) {
        self.workers += other.workers;
        self.workers_peak += other.workers_peak;
        self.workers_provisioned += other.workers_provisioned;
        self.threshold_breaches += other.threshold_breaches;
        self.restarts += other.restarts;
        self.queue_len += other.queue_len;
    }
}

impl JobStats {
    /// Adds another run's figures to these (a job run by several nodes: the sum of its
    /// parts; its listing is done when every part's is).
    pub fn absorb(&mut self, other: &JobStats) {
        self.objects_in += other.objects_in;
        self.bytes_in += other.bytes_in;
        self.objects_out += other.objects_out;
        self.bytes_out += other.bytes_out;
        self.skipped += other.skipped;
        self.dead_lettered += other.dead_lettered;
        self.listing_done &= other.listing_done;
        self.extract.absorb(&other.extract);
        self.transform.absorb(&other.transform);
        self.load.absorb(&other.load);
    }
}

/// How a job's run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobEnd {
    /// Every input was taken in and finished (produced, skipped or dead-lettered).
    Finished,
    /// Stopped before the source was listed to its end; what was taken in was finished.
    Stopped,
    /// The source could not be listed.
    ListingFailed(String),
}

/// Runs one job to its end, or until `stop` is set (then it drains and returns `Stopped`).
pub async fn run_job(
    plan: JobPlan,
    progress: Arc<JobProgress>,
    mut stop: watch::Receiver<bool>,
) -> Result<JobEnd, String> {
    let job = plan.job_id.clone();
    // Sink first: each stage is started before the one that feeds it. A transform worker's
    // result reaches the load queue when it starts being made (a result queued on its lane,
    // when its pass starts); load keeps two workers per transform worker, so one can finish
    // storing (and syncing) a worker's last result while another takes its next.
    let paired = plan
        .transform
        .workers_max
        .saturating_mul(LOAD_WORKERS_PER_TRANSFORM_WORKER)
        .min(STAGE_WORKERS_LIMIT);
    let load_scaling = Scaling {
        workers_min: plan.load.workers_min.max(paired),
        workers_max: plan.load.workers_max.max(paired),
        ..plan.load
    };
    let (to_load, load_queue) = async_channel::bounded(load_scaling.queue_capacity());
    let load = Stage::start(
        "load",
        load_scaling,
        load_queue,
        Arc::new(Load {
            sink: Arc::clone(&plan.sink),
            ledger: Arc::clone(&plan.ledger),
            progress: Arc::clone(&progress),
        }),
        Arc::clone(&progress),
    )
    .await?;
    let (to_transform, transform_queue) = async_channel::bounded(plan.transform.queue_capacity());
    let transform = Stage::start(
        "transform",
        plan.transform,
        transform_queue,
        Arc::new(TransformStep {
            source: Arc::clone(&plan.source),
            rest_self_driven: plan.chain.iter().skip(1).all(|t| t.self_driven()),
            first_on_lane: plan.chain.first().is_some_and(|t| t.self_driven()),
            source_gives_streams: AtomicBool::new(false),
            chain: plan.chain.clone(),
            next: to_load,
            progress: Arc::clone(&progress),
        }),
        Arc::clone(&progress),
    )
    .await?;
    let (to_extract, extract_queue) = async_channel::bounded(plan.extract.queue_capacity());
    let extract = Stage::start(
        "extract",
        plan.extract,
        extract_queue,
        Arc::new(Extract {
            next: to_transform,
            progress: Arc::clone(&progress),
        }),
        Arc::clone(&progress),
    )
    .await?;

    // The lister: the one producer of the extract queue.
    let mut after: Option<String> = None;
    let end = 'listing: loop {
        if *stop.borrow() {
            break JobEnd::Stopped;
        }
        let page = match plan.source.list(after.as_deref(), LIST_PAGE_INPUTS).await {
            Ok(page) => page,
            Err(e) => break JobEnd::ListingFailed(e),
        };
        let full = page.len() == LIST_PAGE_INPUTS;
        for input in page {
            after = Some(input.key.clone());
            match plan.ledger.seen(&input).await {
                Ok(Seen::New) => {}
                Ok(Seen::Produced) => {
                    progress.skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Ok(Seen::ProducedByThisJob) => continue,
                Err(e) => {
                    progress.dead_letter(DeadLetter {
                        input,
                        stage: "extract".to_string(),
                        error: format!("reading its provenance: {e}"),
                    });
                    continue;
                }
            }
            tokio::select! {
                sent = to_extract.send(input) => {
                    if sent.is_err() {
                        break 'listing JobEnd::Stopped;
                    }
                }
                _ = stop.wait_for(|s| *s) => break 'listing JobEnd::Stopped,
            }
        }
        if !full {
            progress.listing_done.store(1, Ordering::Relaxed);
            break JobEnd::Finished;
        }
    };
    debug!(job, ?end, "listing ended; draining the stages");
    // Closing the first queue drains the stages one after another.
    drop(to_extract);
    extract.finished().await;
    transform.finished().await;
    load.finished().await;
    info!(job, ?end, "job run ended");
    Ok(end)
}

/// Extract workers: take each input in and hand it to the transform stage.
struct Extract {
    next: async_channel::Sender<Input>,
    progress: Arc<JobProgress>,
}

#[async_trait::async_trait]
impl Work for Extract {
    type Item = Input;
    type Local = ();
    const STAGE: &'static str = "extract";

    fn input(item: &Input) -> &Input {
        item
    }

    /// Takes the input in and hands it to the transform stage, which opens it when a worker
    /// (or its lane) starts on it: a queue of opened inputs would hold an open object (and any
    /// read-ahead) per queued input. An input that cannot be opened is dead-lettered there.
    async fn process(&self, (): &mut (), input: Input) {
        self.progress.objects_in.fetch_add(1, Ordering::Relaxed);
        self.progress
            .bytes_in
            .fetch_add(input.size, Ordering::Relaxed);
        if let Err(async_channel::SendError(input)) = self.next.send(input).await {
            self.dead_letter(input, "the transform stage stopped".to_string());
        }
    }

    fn progress(&self) -> &JobProgress {
        &self.progress
    }
}

/// Transform workers: run the chain. When its first step queues its pass on the worker's lane
/// (a block transform) and every later step makes its output by itself, the worker waits for
/// the pass to start, hands the output to a load worker as it is, and takes its next object to
/// queue behind it: the lane thread goes from one object to the next without waiting on this
/// task. Any other chain's output is streamed to a load worker through a pipe by the worker,
/// busy until the whole result went through.
///
/// For a chain that starts on the lane, the worker opens each object itself, ahead of its
/// pass, while the source gives local files: a file waits in the lane's queue as a handle. The
/// first time an object comes as a stream (another node's, an S3 object), which would time
/// out waiting unread behind a long pass, that stream is used only if the lane is idle (else
/// dropped and opened again by its pass), and from then on the job's passes open their own
/// objects as they start.
struct TransformStep {
    source: Arc<dyn Source>,
    chain: Vec<Arc<dyn Transform>>,
    /// Every step of the chain after the first makes its output by itself.
    rest_self_driven: bool,
    /// The first step runs its passes on lanes (a block transform): objects are worth
    /// opening ahead of their passes.
    first_on_lane: bool,
    /// The source gave a stream: objects are opened by their passes, not ahead (shared by
    /// the job's workers, so each learns it once for all).
    source_gives_streams: AtomicBool,
    next: async_channel::Sender<(Input, ByteStream)>,
    progress: Arc<JobProgress>,
}

impl TransformStep {
    /// The input, to be opened by whoever runs the first step.
    fn opening(&self, input: &Input) -> Opening {
        let source = Arc::clone(&self.source);
        let input = input.clone();
        Box::pin(async move { source.open(&input).await })
    }

    /// The input for a worker whose lane runs `lane`'s passes: opened here while the source
    /// gives local files, else left for its pass to open (see [`TransformStep`]).
    async fn opening_ahead(&self, lane: &Lane, input: &Input) -> Result<Opening, String> {
        if !self.first_on_lane || self.source_gives_streams.load(Ordering::Relaxed) {
            return Ok(self.opening(input));
        }
        match self.source.open(input).await? {
            body @ ObjectBody::File(_) => Ok(opened(body)),
            // Its pass starts at once: nothing to wait behind.
            body @ ObjectBody::Stream(_) if lane.idle() => {
                self.source_gives_streams.store(true, Ordering::Relaxed);
                Ok(opened(body))
            }
            ObjectBody::Stream(_) => {
                self.source_gives_streams.store(true, Ordering::Relaxed);
                debug!(input = %input.uri, "the source gives streams; opening each object as its pass starts");
                Ok(self.opening(input))
            }
        }
    }
}

#[async_trait::async_trait]
impl Work for TransformStep {
    type Item = Input;
    type Local = Lane;
    const STAGE: &'static str = "transform";

    fn input(item: &Input) -> &Input {
        item
    }

    async fn process(&self, lane: &mut Lane, input: Input) {
        let opening = match self.opening_ahead(lane, &input).await {
            Ok(opening) => opening,
            Err(e) => return self.dead_letter(input, e),
        };
        let queued_before = lane.passes_queued();
        let mut output = match apply_chain_on(&self.chain, opening, lane).await {
            Ok(output) => output,
            Err(e) => return self.dead_letter(input, e.0),
        };
        if self.rest_self_driven && lane.passes_queued() != queued_before {
            // The output reaches the load when its pass starts, so a put never waits for a
            // pass ahead of it. Its errors end the stream: the load worker sees them, does not
            // store, and dead-letters the object as the transform's.
            lane.ready().await;
            if let Err(async_channel::SendError((input, _))) = self.next.send((input, output)).await
            {
                return self.dead_letter(input, "the load stage stopped".to_string());
            }
            return;
        }
        let (pipe_tx, pipe_rx) = mpsc::channel::<Piped>(PIPE_CHUNKS_IN_FLIGHT);
        // Only an explicit end is an end: a pipe dropped half-way (this worker panicked while
        // the output streamed) fails the load, which then stores nothing.
        let piped: ByteStream = Box::pin(futures_util::stream::unfold(
            (pipe_rx, false),
            |(mut rx, ended)| async move {
                if ended {
                    return None;
                }
                match rx.recv().await {
                    Some(Piped::Chunk(chunk)) => Some((chunk, (rx, false))),
                    Some(Piped::End) => None,
                    None => Some((Err(std::io::Error::other(PIPE_BROKEN)), (rx, true))),
                }
            },
        ));
        if let Err(async_channel::SendError((input, _))) = self.next.send((input, piped)).await {
            return self.dead_letter(input, "the load stage stopped".to_string());
        }
        // Errors travel down the pipe: the load worker sees them and does not store, and
        // dead-letters the object as the transform's.
        while let Some(chunk) = output.next().await {
            let failed = chunk.is_err();
            if pipe_tx.send(Piped::Chunk(chunk)).await.is_err() || failed {
                return;
            }
        }
        let _ = pipe_tx.send(Piped::End).await;
    }

    fn progress(&self) -> &JobProgress {
        &self.progress
    }
}

/// The load's error when its transform worker went away mid-output (it panicked; the
/// transform stage dead-letters the object, so the load stage does not again).
const PIPE_BROKEN: &str = "the transform stopped before the end of its output";

/// What goes down the pipe from a transform worker to a load worker.
enum Piped {
    Chunk(std::io::Result<Bytes>),
    End,
}

/// Load workers: store each result and record its provenance.
struct Load {
    sink: Arc<dyn Sink>,
    ledger: Arc<dyn Ledger>,
    progress: Arc<JobProgress>,
}

#[async_trait::async_trait]
impl Work for Load {
    type Item = (Input, ByteStream);
    type Local = ();
    const STAGE: &'static str = "load";

    fn input(item: &(Input, ByteStream)) -> &Input {
        &item.0
    }

    async fn process(&self, (): &mut (), (input, output): (Input, ByteStream)) {
        // An error in the output is the transform's: dead-lettered as the transform's.
        let transform_failed: Arc<Mutex<Option<String>>> = Arc::default();
        let seen = Arc::clone(&transform_failed);
        let output: ByteStream = Box::pin(output.inspect(move |chunk| {
            if let Err(e) = chunk {
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert_with(|| e.to_string());
            }
        }));
        match self.sink.store(&input, output).await {
            Ok(stored) => {
                self.progress.objects_out.fetch_add(1, Ordering::Relaxed);
                self.progress
                    .bytes_out
                    .fetch_add(stored.size, Ordering::Relaxed);
                if let Err(e) = self.ledger.record(&input, &stored).await {
                    // Stored, but the next run will not know: it produces it again.
                    tracing::warn!(input = %input.uri, error = %e, "could not record provenance");
                }
            }
            Err(e) if e.contains(PIPE_BROKEN) => {
                tracing::debug!(input = %input.uri, "output cut by its transform worker; not stored");
            }
            Err(e) => {
                let failed = transform_failed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take();
                match failed {
                    Some(error) => self.progress.dead_letter(DeadLetter {
                        input,
                        stage: TransformStep::STAGE.to_string(),
                        error,
                    }),
                    None => self.dead_letter(input, e),
                }
            }
        }
    }

    fn progress(&self) -> &JobProgress {
        &self.progress
    }
}

/// How often a stage checks its queue to grow or shrink.
pub(crate) const SCALE_TICK: Duration = Duration::from_millis(50);
/// Ticks a stage's queue must stay empty before it retires a worker.
pub(crate) const IDLE_TICKS_BEFORE_SHRINK: u32 = 20;

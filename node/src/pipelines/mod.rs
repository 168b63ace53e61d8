//! Pipelines on a node: registrations, mounts and jobs (with their request ids and figures)
//! in the replicated control plane (raft); provenance in the node's database, next to the
//! objects it describes.
//!
//! A registration keeps the spec and a version that grows whenever the spec changes. Running
//! a mounted pipeline creates a job (a raft command: a request id starts one job, for ever)
//! that the engine (`letl_actors::pipeline`) runs on the node that took the request; its
//! figures are saved as it goes and when it ends. A job interrupted by the node's stop (or a
//! crash) is resumed at the node's next start: inputs it already produced are skipped through
//! their provenance, so no object is produced twice.

pub mod io;
pub mod spec;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::places::Places;
use axum::http::StatusCode;
use letl_actors::pipeline::{
    DeadLetter, Input, JobEnd, JobPlan, JobProgress, JobStats, Source, run_job,
};
use letl_actors::transform::TransformRegistry;
use letl_storage::{
    Clock, DbRecords, IndexDb, ObjectBody, S3Settings, StorageError, check_request_id,
};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::error::ApiError;
use crate::moves::new_request_id;
use crate::tasks::{Runners, lock};
use io::{
    CacheSink, CacheSource, DirSource, Provenance, ProvenanceLedger, S3Source, TierSink, TierSource,
};
use letl_actors::cache::CacheHandle;
use letl_actors::pipeline::Sink;
use letl_raft::cluster::Cluster;
use letl_raft::{Command, ControlState, JobEntry, PipelineEntry, Response};
use spec::{Compiled, ExtractFrom, LoadTo, PipelineSpec};

/// Pipeline jobs running at once on a node.
pub const PIPELINE_JOBS_RUNNING_MAX: usize = 4;
/// How often a running job saves its figures.
const JOB_SAVE_INTERVAL: Duration = Duration::from_secs(1);
/// How often the scheduler looks for pipelines that are due.
const SCHEDULE_TICK: Duration = Duration::from_secs(1);
/// Jobs of one pipeline that `letl pipeline stats` sums (the most recent).
const STATS_JOBS_MAX: usize = 10_000;
/// Times a job's last record is offered to the control plane at once; after that it waits in
/// the node's outbox, offered again at every scheduler tick.
const FINAL_SAVE_ATTEMPTS: u32 = 3;
/// Pause between those attempts.
const SAVE_RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Ended jobs a node remembers (so it does not adopt them again); the oldest saved ones are
/// forgotten beyond this.
const ENDED_KEPT_MAX: usize = 100_000;
/// A cancelled job waits this long for its parts to stop before it ends without them (a part
/// on a node that is down stops when that node next runs it).
const PART_CANCEL_WAIT: Duration = Duration::from_secs(30);

/// Longest error text a dead letter keeps in a job record that would not fit otherwise.
const DEAD_LETTER_ERROR_TRIMMED_BYTES: usize = 512;

/// A registered pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The spec as JSON text (specs hold free-form transform arguments).
    pub spec_json: String,
    /// 1 at first registration, one more at each change of the spec.
    pub version: u64,
    pub mounted: bool,
    pub registered_ms: u64,
    pub updated_ms: u64,
}

impl From<PipelineEntry> for Registered {
    fn from(entry: PipelineEntry) -> Self {
        Self {
            spec_json: entry.spec_json,
            version: entry.version,
            mounted: entry.mounted,
            registered_ms: entry.registered_ms,
            updated_ms: entry.updated_ms,
        }
    }
}

impl Registered {
    pub fn spec(&self) -> Result<PipelineSpec, ApiError> {
        serde_json::from_str(&self.spec_json).map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("stored pipeline spec unreadable: {e}"),
            )
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Running,
    /// Every input was produced or skipped.
    Succeeded,
    /// Some inputs were dead-lettered, or the source could not be listed.
    Failed,
    Cancelled,
    /// Stopped with the node; resumed at its next start.
    Interrupted,
}

impl JobState {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

/// A pipeline job as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    /// The node that runs it.
    #[serde(default)]
    pub node: u64,
    pub request_id: Option<String>,
    pub pipeline: String,
    pub pipeline_version: u64,
    pub state: JobState,
    pub error: Option<String>,
    pub stats: JobStats,
    pub dead_letters: Vec<DeadLetter>,
    /// A retry job runs only these inputs (the dead letters of `retry_of`).
    pub inputs: Option<Vec<Input>>,
    pub retry_of: Option<String>,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    /// A job run by several nodes (its source is a tier kept on several): one part per node,
    /// each over the objects that node is home for, with its figures as last seen. This
    /// job's figures are their sum.
    #[serde(default)]
    pub parts: Vec<JobPart>,
    /// The job this one is a part of.
    #[serde(default)]
    pub part_of: Option<String>,
    /// Object bytes this job moved between nodes (inputs fetched, results sent).
    #[serde(default)]
    pub bytes_between_nodes: u64,
    /// The job was asked to stop; its parts stop when they see it.
    #[serde(default)]
    pub cancel_requested: bool,
}

impl JobRecord {
    /// A job just started, with nothing done yet.
    fn starting(id: String, node: u64, pipeline: &str, version: u64, now_ms: u64) -> Self {
        Self {
            id,
            node,
            request_id: None,
            pipeline: pipeline.to_string(),
            pipeline_version: version,
            state: JobState::Running,
            error: None,
            stats: JobStats::default(),
            dead_letters: Vec::new(),
            inputs: None,
            retry_of: None,
            started_ms: now_ms,
            ended_ms: None,
            parts: Vec::new(),
            part_of: None,
            bytes_between_nodes: 0,
            cancel_requested: false,
        }
    }
}

/// One node's part of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPart {
    pub node: u64,
    /// The part's own job id.
    pub job: String,
    pub state: JobState,
    pub error: Option<String>,
    pub stats: JobStats,
    pub bytes_between_nodes: u64,
}

/// A pipeline's figures over its jobs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineStats {
    pub jobs: u64,
    pub jobs_running: u64,
    pub jobs_succeeded: u64,
    pub jobs_failed: u64,
    pub objects_in: u64,
    pub bytes_in: u64,
    pub objects_out: u64,
    pub bytes_out: u64,
    pub skipped: u64,
    pub dead_lettered: u64,
    pub extract_workers_provisioned: u64,
    pub transform_workers_provisioned: u64,
    pub load_workers_provisioned: u64,
    pub extract_threshold_breaches: u64,
    pub transform_threshold_breaches: u64,
    pub load_threshold_breaches: u64,
    pub elapsed_ms: u64,
    pub last_job: Option<String>,
}

#[derive(Debug)]
struct Running {
    pipeline: String,
    progress: Arc<JobProgress>,
    cancel: watch::Sender<bool>,
}

/// A job record as the control plane holds it.
fn parse_job(entry: &JobEntry) -> Result<JobRecord, ApiError> {
    serde_json::from_str(&entry.record_json)
        .map_err(|e| internal(format!("stored job record unreadable: {e}")))
}

/// The job entries of a control state that pass `keep` (cloned: parse them after the read,
/// not while holding the state).
fn entries_in(state: &ControlState, keep: impl Fn(&JobEntry) -> bool) -> Vec<JobEntry> {
    state.jobs.values().filter(|e| keep(e)).cloned().collect()
}

/// Parsed jobs, most recent first.
fn parse_jobs(entries: &[JobEntry]) -> Result<Vec<JobRecord>, ApiError> {
    let mut jobs = entries
        .iter()
        .map(parse_job)
        .collect::<Result<Vec<_>, _>>()?;
    jobs.sort_by(|a, b| b.started_ms.cmp(&a.started_ms).then(a.id.cmp(&b.id)));
    Ok(jobs)
}

/// A job's record as JSON that fits a control-plane command: dead letters' errors are
/// trimmed, then dead letters dropped (their count stays in the figures), if it must.
fn job_json(job: &JobRecord) -> Result<String, ApiError> {
    let max = letl_raft::state::COMMAND_DOCUMENT_BYTES_MAX;
    let json = serde_json::to_string(job).map_err(internal)?;
    if json.len() <= max {
        return Ok(json);
    }
    let mut job = job.clone();
    for letter in &mut job.dead_letters {
        if letter.error.len() > DEAD_LETTER_ERROR_TRIMMED_BYTES {
            let mut end = DEAD_LETTER_ERROR_TRIMMED_BYTES;
            while !letter.error.is_char_boundary(end) {
                end -= 1;
            }
            letter.error.truncate(end);
            letter.error.push_str(" [trimmed]");
        }
    }
    loop {
        let json = serde_json::to_string(&job).map_err(internal)?;
        if json.len() <= max {
            return Ok(json);
        }
        if job.dead_letters.is_empty() {
            return Err(internal(format!(
                "job `{}`: its record is {} bytes, more than {max}",
                job.id,
                json.len()
            )));
        }
        let keep = job.dead_letters.len() / 2;
        job.dead_letters.truncate(keep);
    }
}

/// A job started by `request_id` must be of the pipeline the request names.
fn same_pipeline(job: JobRecord, name: &str, request_id: &str) -> Result<JobRecord, ApiError> {
    if job.pipeline != name {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "request id `{request_id}` was used to run pipeline `{}`",
                job.pipeline
            ),
        ));
    }
    Ok(job)
}

#[derive(Clone, Debug)]
pub struct Pipelines {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    places: Places,
    cache: CacheHandle,
    /// The cache's byte bound: a result loaded into the cache may not exceed it.
    cache_bytes_max: u64,
    transforms: Arc<TransformRegistry>,
    /// Registrations, mounts and jobs.
    control: Cluster,
    provenance: DbRecords<Provenance>,
    /// Set once this node's unfinished jobs have been read back and resumed after its start.
    resumed: AtomicBool,
    /// Jobs this node ran to their end since it started: `None` once the end is recorded in
    /// the control plane, the record while it waits to be (the outbox). Locked after
    /// `running`, never before.
    ended: Mutex<BTreeMap<String, Option<JobRecord>>>,
    clock: Arc<dyn Clock>,
    stop: watch::Receiver<bool>,
    /// The endpoint of `s3://` extract sources (the config's `[source]`).
    source_s3: Option<S3Settings>,
    /// Serializes registrations, mounts and job starts.
    admin: tokio::sync::Mutex<()>,
    running: Mutex<BTreeMap<String, Running>>,
    /// Counts runs of this node that ended (left `running`): what [`Pipelines::wait_job`]
    /// waits on besides the control state.
    runs_ended: watch::Sender<u64>,
    runners: Runners,
}

impl Inner {
    /// Compiles a spec and checks that this node has what it reads from.
    fn compile(&self, spec: &PipelineSpec) -> Result<Compiled, String> {
        let compiled = spec.compile(&self.transforms)?;
        if matches!(compiled.from, ExtractFrom::S3 { .. }) && self.source_s3.is_none() {
            return Err(format!(
                "extract.from: `{}`: s3:// sources need [source] endpoint in this node's config",
                spec.extract.from
            ));
        }
        Ok(compiled)
    }

    /// The tiers a spec names exist on this node (one that is down is fine: it may come
    /// back), and an s3:// source and a load tier that is the same bucket on the same endpoint
    /// do not overlap (the pipeline would read its own output).
    async fn check_tiers(&self, spec: &PipelineSpec, compiled: &Compiled) -> Result<(), String> {
        let named = [
            match &compiled.from {
                ExtractFrom::Tier(from) => Some(("extract.from", &spec.extract.from, &from.tier)),
                _ => None,
            },
            match &compiled.to {
                LoadTo::Tier(to) => Some(("load.to", &spec.load.to, &to.tier)),
                LoadTo::Cache(_) => None,
            },
        ];
        for (field, text, tier) in named.into_iter().flatten() {
            if let Err(e @ StorageError::UnknownTier { .. }) = self.places.check_tier(tier) {
                return Err(format!("{field}: `{text}`: {e}"));
            }
        }
        let (ExtractFrom::S3 { bucket, prefix }, LoadTo::Tier(to), Some(settings)) =
            (&compiled.from, &compiled.to, &self.source_s3)
        else {
            return Ok(());
        };
        let Ok(tier) = self.places.directory().get(&to.tier) else {
            return Ok(());
        };
        let Ok(stats) = tier.stats().await else {
            return Ok(());
        };
        let same_bucket = stats.description.backend == "s3"
            && stats.description.location
                == format!("{}/{bucket}", settings.endpoint.trim_end_matches('/'));
        let (a, b) = (prefix.as_str(), to.prefix.as_str());
        if same_bucket && (a.starts_with(b) || b.starts_with(a)) {
            return Err(format!(
                "load.to: {} is bucket `{bucket}` of the source endpoint and overlaps extract.from {}: the pipeline would read its own output (a loop)",
                spec.load.to, spec.extract.from
            ));
        }
        Ok(())
    }
}

fn not_found(what: &str, name: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no {what} `{name}`"))
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::internal(e.to_string())
}

/// Where pipelines keep their node-local records (provenance of the objects they made here).
#[derive(Clone, Debug)]
pub struct PipelineStores {
    provenance: DbRecords<Provenance>,
}

impl PipelineStores {
    pub fn open(db: &IndexDb) -> letl_storage::Result<Self> {
        Ok(Self {
            provenance: db.records("provenance")?,
        })
    }
}

impl Pipelines {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        stores: PipelineStores,
        control: Cluster,
        places: Places,
        cache: CacheHandle,
        cache_bytes_max: u64,
        transforms: Arc<TransformRegistry>,
        clock: Arc<dyn Clock>,
        stop: watch::Receiver<bool>,
        source_s3: Option<S3Settings>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                places,
                cache,
                cache_bytes_max,
                transforms,
                control,
                provenance: stores.provenance,
                resumed: AtomicBool::new(false),
                ended: Mutex::new(BTreeMap::new()),
                clock,
                stop,
                source_s3,
                admin: tokio::sync::Mutex::new(()),
                running: Mutex::new(BTreeMap::new()),
                runs_ended: watch::channel(0).0,
                runners: Runners::default(),
            }),
        }
    }

    /// Registers (or updates) a pipeline from its spec text; returns it with its version.
    pub async fn register(&self, text: &str) -> Result<(String, Registered), ApiError> {
        let spec = spec::parse(text).map_err(ApiError::bad_request)?;
        let compiled = self.inner.compile(&spec).map_err(ApiError::bad_request)?;
        self.inner
            .check_tiers(&spec, &compiled)
            .await
            .map_err(ApiError::bad_request)?;
        let spec_json = serde_json::to_string(&spec).map_err(internal)?;
        let registered = self
            .control_write(Command::RegisterPipeline {
                name: spec.name.clone(),
                spec_json,
                mounted: spec.mounted,
                now_ms: self.inner.clock.now_ms(),
            })
            .await?;
        info!(pipeline = %spec.name, version = registered.version, mounted = registered.mounted, "pipeline registered");
        Ok((spec.name, registered))
    }

    /// A registration or mount change through the control plane.
    async fn control_write(&self, command: Command) -> Result<Registered, ApiError> {
        match self.inner.control.write(command).await? {
            Response::Pipeline(entry) => Ok(entry.into()),
            Response::Refused { reason } if reason.starts_with("no pipeline") => {
                Err(ApiError::new(StatusCode::NOT_FOUND, reason))
            }
            Response::Refused { reason } => Err(ApiError::new(StatusCode::CONFLICT, reason)),
            other => Err(internal(format!("unexpected control answer: {other:?}"))),
        }
    }

    /// Every registration, as of now (a linearizable read).
    pub async fn list(&self) -> Result<Vec<(String, Registered)>, ApiError> {
        Ok(self
            .inner
            .control
            .read(|s| {
                s.pipelines
                    .iter()
                    .map(|(name, entry)| (name.clone(), entry.clone().into()))
                    .collect()
            })
            .await?)
    }

    /// A registration as of now (a linearizable read).
    pub async fn get(&self, name: &str) -> Result<Registered, ApiError> {
        self.inner
            .control
            .read(|s| s.pipelines.get(name).cloned())
            .await?
            .map(Registered::from)
            .ok_or_else(|| not_found("pipeline", name))
    }

    /// A registration as this node has applied it (for resuming jobs at start).
    fn get_local(&self, name: &str) -> Result<Registered, ApiError> {
        self.inner
            .control
            .read_local(|s| s.pipelines.get(name).cloned())
            .map(Registered::from)
            .ok_or_else(|| not_found("pipeline", name))
    }

    /// Mounts or unmounts. Unmounting stops new runs; running jobs finish.
    pub async fn set_mounted(&self, name: &str, mounted: bool) -> Result<Registered, ApiError> {
        let registered = self
            .control_write(Command::SetMounted {
                name: name.to_string(),
                mounted,
                now_ms: self.inner.clock.now_ms(),
            })
            .await?;
        info!(pipeline = name, mounted, "pipeline mount set");
        Ok(registered)
    }

    /// Starts a job of a mounted pipeline. A request id given before returns its job.
    pub async fn run(&self, name: &str, request_id: Option<String>) -> Result<JobRecord, ApiError> {
        if let Some(id) = &request_id {
            check_request_id(id)?;
        }
        if *self.inner.stop.borrow() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the node is stopping; no new jobs",
            ));
        }
        let _admin = self.inner.admin.lock().await;
        if let Some(id) = &request_id {
            let earlier = self
                .inner
                .control
                .read(|s| s.job_requests.get(id).and_then(|j| s.jobs.get(j)).cloned())
                .await?;
            if let Some(entry) = earlier {
                let job = same_pipeline(parse_job(&entry)?, name, id)?;
                return Ok(self.live(job));
            }
        }
        let registered = self.get(name).await?;
        if !registered.mounted {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("pipeline `{name}` is not mounted; `letl pipeline mount {name}` first"),
            ));
        }
        self.check_can_start(name).await?;
        let id = format!("j{}", &new_request_id(self.inner.clock.now_ms())[1..]);
        let parts = self.parts_for(&id, &registered)?;
        let job = JobRecord {
            request_id: request_id.clone(),
            parts,
            ..JobRecord::starting(
                id,
                self.inner.control.node_id(),
                name,
                registered.version,
                self.inner.clock.now_ms(),
            )
        };
        self.start_job(job, &registered).await
    }

    /// The parts of a new job: one per node that keeps the source's tier, when there are
    /// several (each transforms the objects it is home for); none otherwise.
    fn parts_for(&self, id: &str, registered: &Registered) -> Result<Vec<JobPart>, ApiError> {
        let compiled = self
            .inner
            .compile(&registered.spec()?)
            .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))?;
        let ExtractFrom::Tier(from) = &compiled.from else {
            return Ok(Vec::new());
        };
        // Nodes leaving still hold objects: they run a part too.
        let holders = self.inner.places.keepers(&from.tier);
        if holders.len() < 2 {
            return Ok(Vec::new());
        }
        Ok(holders
            .into_iter()
            .map(|node| JobPart {
                node,
                job: format!("{id}.n{node}"),
                state: JobState::Running,
                error: None,
                stats: JobStats::default(),
                bytes_between_nodes: 0,
            })
            .collect())
    }

    /// A new job over the dead letters of job `id`.
    pub async fn retry(&self, id: &str) -> Result<JobRecord, ApiError> {
        let _admin = self.inner.admin.lock().await;
        let old = self.job(id).await?;
        let me = self.inner.control.node_id();
        if old.node != me {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "job `{id}` ran on node {}; retry it there (its inputs are that node's)",
                    old.node
                ),
            ));
        }
        if !old.state.is_finished() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "job `{id}` is {}; retry it once it has ended",
                    old.state.name()
                ),
            ));
        }
        if old.dead_letters.is_empty() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("job `{id}` has no dead-lettered objects to retry"),
            ));
        }
        let registered = self.get(&old.pipeline).await?;
        if !registered.mounted {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "pipeline `{}` is not mounted; mount it to retry",
                    old.pipeline
                ),
            ));
        }
        self.check_can_start(&old.pipeline).await?;
        let job = JobRecord {
            inputs: Some(old.dead_letters.iter().map(|d| d.input.clone()).collect()),
            retry_of: Some(old.id.clone()),
            ..JobRecord::starting(
                format!("j{}", &new_request_id(self.inner.clock.now_ms())[1..]),
                self.inner.control.node_id(),
                &old.pipeline,
                registered.version,
                self.inner.clock.now_ms(),
            )
        };
        self.start_job(job, &registered).await
    }

    /// One job per pipeline at a time on a node (two would make the same outputs), counting
    /// the jobs it has yet to resume after its start, and at most
    /// [`PIPELINE_JOBS_RUNNING_MAX`] jobs on the node.
    async fn check_can_start(&self, name: &str) -> Result<(), ApiError> {
        let busy = |id: &str| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!("pipeline `{name}` has a job running ({id}); wait for it or cancel it"),
            )
        };
        let running = {
            let running = lock(&self.inner.running);
            if let Some((id, _)) = running.iter().find(|(_, r)| r.pipeline == name) {
                return Err(busy(id));
            }
            running.len()
        };
        if !self.inner.resumed.load(Ordering::Acquire) {
            let me = self.inner.control.node_id();
            let unfinished = self
                .inner
                .control
                .read(|s| entries_in(s, |e| e.node == me && e.pipeline == name && !e.finished))
                .await?;
            if let Some(job) = unfinished.first() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "pipeline `{name}` has a job to resume after this node's start ({}); try again shortly",
                        parse_job(job)?.id
                    ),
                ));
            }
        }
        if running >= PIPELINE_JOBS_RUNNING_MAX {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{PIPELINE_JOBS_RUNNING_MAX} pipeline jobs are running; try again when one ends"
                ),
            ));
        }
        Ok(())
    }

    /// Records the job through the control plane and runs it here; if its request id
    /// started a job before (through any node), that job is the answer instead.
    async fn start_job(
        &self,
        job: JobRecord,
        registered: &Registered,
    ) -> Result<JobRecord, ApiError> {
        let compiled = self.inner.compile(&registered.spec()?).map_err(|e| {
            ApiError::new(
                StatusCode::CONFLICT,
                format!("pipeline `{}` cannot run: {e}", job.pipeline),
            )
        })?;
        let start = Command::StartJob {
            id: job.id.clone(),
            node: job.node,
            pipeline: job.pipeline.clone(),
            request_id: job.request_id.clone(),
            record_json: job_json(&job)?,
        };
        let answer = match self.inner.control.write(start).await {
            Ok(answer) => answer,
            Err(e) => {
                // The write may have been applied all the same (an answer lost, a timeout
                // after proposing): if the job is recorded, it is this node's to run. If it is
                // recorded later still, the scheduler's tick adopts it.
                let recorded = self
                    .inner
                    .control
                    .read(|s| s.jobs.contains_key(&job.id))
                    .await;
                if !matches!(recorded, Ok(true)) {
                    return Err(e.into());
                }
                Response::Job {
                    id: job.id.clone(),
                    record_json: String::new(),
                    created: true,
                }
            }
        };
        match answer {
            // Ours, recorded now or by an earlier delivery of the same command.
            Response::Job { id, .. } if id == job.id => {
                if !lock(&self.inner.running).contains_key(&job.id) {
                    info!(job = %job.id, pipeline = %job.pipeline, version = job.pipeline_version, "pipeline job started");
                    self.spawn(job.clone(), compiled);
                }
                Ok(job)
            }
            Response::Job { record_json, .. } => {
                let earlier: JobRecord = serde_json::from_str(&record_json).map_err(internal)?;
                let request_id = job.request_id.unwrap_or_default();
                let earlier = same_pipeline(earlier, &job.pipeline, &request_id)?;
                Ok(self.live(earlier))
            }
            Response::Refused { reason } => Err(ApiError::new(StatusCode::CONFLICT, reason)),
            other => Err(internal(format!("unexpected control answer: {other:?}"))),
        }
    }

    fn spawn(&self, job: JobRecord, compiled: Compiled) {
        let progress = Arc::new(JobProgress::default());
        progress.restore(&job.stats, job.dead_letters.clone());
        let (cancel, cancelled) = watch::channel(false);
        lock(&self.inner.running).insert(
            job.id.clone(),
            Running {
                pipeline: job.pipeline.clone(),
                progress: Arc::clone(&progress),
                cancel,
            },
        );
        let inner = Arc::clone(&self.inner);
        let runner = tokio::spawn(async move {
            let id = job.id.clone();
            let parent = !job.parts.is_empty();
            let outcome = if job.parts.is_empty() {
                run(&inner, job, compiled, Arc::clone(&progress), cancelled).await
            } else {
                run_parts(&inner, job, Arc::clone(&progress), cancelled).await
            };
            let unsaved = match outcome {
                Ok(end) => end,
                // A parent runs nothing itself: still unfinished in the control state, the job
                // keeper adopts it again once the control plane answers (found by the
                // simulator: it used to wait for the node's next start, running for ever).
                Err(e) if parent => {
                    warn!(job = %id, error = %e.message, "pipeline job could not be recorded; the job keeper resumes it");
                    lock(&inner.running).remove(&id);
                    return;
                }
                // A job whose stages may still be draining waits for the next start, so that
                // no object is produced twice.
                Err(e) => {
                    warn!(job = %id, error = %e.message, "pipeline job could not be recorded; it resumes at the next start");
                    None
                }
            };
            let mut running = lock(&inner.running);
            let mut ended = lock(&inner.ended);
            if ended.len() >= ENDED_KEPT_MAX
                && let Some(old) = ended
                    .iter()
                    .find(|(_, e)| e.is_none())
                    .map(|(k, _)| k.clone())
            {
                ended.remove(&old);
            }
            ended.insert(id.clone(), unsaved);
            running.remove(&id);
            inner.runs_ended.send_modify(|n| *n += 1);
        });
        self.inner.runners.push(runner);
    }

    /// A job as of now (a linearizable read), with its live figures if it runs here.
    pub async fn job(&self, id: &str) -> Result<JobRecord, ApiError> {
        let entry = self
            .inner
            .control
            .read(|s| s.jobs.get(id).cloned())
            .await?
            .ok_or_else(|| not_found("job", id))?;
        Ok(self.live(parse_job(&entry)?))
    }

    /// `job` once it is no longer running, or as it is when `wait` has passed (or the node
    /// stops) first: what `letl pipeline run --wait` and `letl job watch` poll with, so that
    /// they see a job's end as it happens rather than at their next poll.
    pub async fn wait_job(&self, id: &str, wait: Duration) -> Result<JobRecord, ApiError> {
        let deadline = tokio::time::Instant::now() + wait;
        // Subscribed before the first read: an end between that read and the wait is seen.
        let mut applied = self.inner.control.applied();
        let mut runs_ended = self.inner.runs_ended.subscribe();
        let mut stop = self.inner.stop.clone();
        let mut job = self.job(id).await?;
        while job.state == JobState::Running && !*stop.borrow() {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                changed = applied.changed() => if changed.is_err() { break },
                changed = runs_ended.changed() => if changed.is_err() { break },
                _ = stop.changed() => break,
            }
            // The linearizable read was made once; this node's applied state holds the end
            // as soon as it is committed here.
            let entry = self.inner.control.read_local(|s| s.jobs.get(id).cloned());
            job = match entry {
                Some(entry) => self.live(parse_job(&entry)?),
                None => return Err(not_found("job", id)),
            };
        }
        Ok(job)
    }

    /// `job` with the live figures of this node's run of it, if it runs here.
    fn live(&self, mut job: JobRecord) -> JobRecord {
        if let Some(running) = lock(&self.inner.running).get(&job.id) {
            job.state = JobState::Running;
            job.stats = running.progress.snapshot();
            job.dead_letters = running.progress.dead_letters();
        }
        job
    }

    /// Jobs as of now (a linearizable read), most recent first; of one pipeline if named.
    /// Parts of jobs are not listed: their job shows them.
    pub async fn jobs(&self, pipeline: Option<&str>) -> Result<Vec<JobRecord>, ApiError> {
        self.inner.control.read(|_| ()).await?;
        let mut jobs = self.jobs_local(pipeline)?;
        jobs.retain(|j| j.part_of.is_none());
        Ok(jobs)
    }

    /// Jobs as this node has applied them, most recent first; of one pipeline if named.
    fn jobs_local(&self, pipeline: Option<&str>) -> Result<Vec<JobRecord>, ApiError> {
        let entries = self
            .inner
            .control
            .read_local(|s| entries_in(s, |e| pipeline.is_none_or(|p| e.pipeline == p)));
        let jobs = parse_jobs(&entries)?;
        let running = lock(&self.inner.running);
        Ok(jobs
            .into_iter()
            .map(|mut job| {
                if let Some(live) = running.get(&job.id) {
                    job.stats = live.progress.snapshot();
                }
                job
            })
            .collect())
    }

    /// Stops a running job: it takes in nothing more, finishes what it took in, and ends
    /// `cancelled`. Only the node that runs it can.
    pub async fn cancel(&self, id: &str) -> Result<JobRecord, ApiError> {
        let job = self.job(id).await?;
        match lock(&self.inner.running).get(id) {
            Some(running) => {
                let _ = running.cancel.send(true);
                info!(job = id, "pipeline job cancel requested");
            }
            None if job.state == JobState::Running && job.node != self.inner.control.node_id() => {
                let at = self
                    .inner
                    .control
                    .members()
                    .get(&job.node)
                    .map(|m| format!(" ({})", m.http))
                    .unwrap_or_default();
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("job `{id}` runs on node {}{at}; cancel it there", job.node),
                ));
            }
            None => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("job `{id}` is {}, not running", job.state.name()),
                ));
            }
        }
        Ok(job)
    }

    pub async fn stats(&self, name: &str) -> Result<PipelineStats, ApiError> {
        // A linearizable read: this node has applied everything committed before it.
        self.get(name).await?;
        self.figures(name, None)
    }

    /// Registrations as this node has applied them (may lag the leader: for metrics).
    pub fn list_local(&self) -> Vec<(String, Registered)> {
        self.inner.control.read_local(|s| {
            s.pipelines
                .iter()
                .map(|(name, entry)| (name.clone(), entry.clone().into()))
                .collect()
        })
    }

    /// A pipeline's figures over its jobs as this node has applied them: all of them, or
    /// those one node ran.
    pub fn figures(&self, name: &str, node: Option<u64>) -> Result<PipelineStats, ApiError> {
        let mut stats = PipelineStats::default();
        // A job run in parts counts once overall (its figures are its parts' sum), and per
        // node as the part each node ran.
        let jobs = self
            .jobs_local(Some(name))?
            .into_iter()
            .filter(|j| match node {
                None => j.part_of.is_none(),
                Some(n) => j.node == n && j.parts.is_empty(),
            });
        for job in jobs.take(STATS_JOBS_MAX) {
            stats.jobs += 1;
            match job.state {
                JobState::Running | JobState::Interrupted => stats.jobs_running += 1,
                JobState::Succeeded => stats.jobs_succeeded += 1,
                JobState::Failed | JobState::Cancelled => stats.jobs_failed += 1,
            }
            let s = &job.stats;
            stats.objects_in += s.objects_in;
            stats.bytes_in += s.bytes_in;
            stats.objects_out += s.objects_out;
            stats.bytes_out += s.bytes_out;
            stats.skipped += s.skipped;
            stats.dead_lettered += s.dead_lettered;
            stats.extract_workers_provisioned += s.extract.workers_provisioned;
            stats.transform_workers_provisioned += s.transform.workers_provisioned;
            stats.load_workers_provisioned += s.load.workers_provisioned;
            stats.extract_threshold_breaches += s.extract.threshold_breaches;
            stats.transform_threshold_breaches += s.transform.threshold_breaches;
            stats.load_threshold_breaches += s.load.threshold_breaches;
            let end = job.ended_ms.unwrap_or_else(|| self.inner.clock.now_ms());
            stats.elapsed_ms += end.saturating_sub(job.started_ms);
            if stats.last_job.is_none() {
                stats.last_job = Some(job.id.clone());
            }
        }
        Ok(stats)
    }

    /// The provenance of an output object, if a pipeline produced it.
    pub fn provenance_of(&self, output: &str) -> Result<Option<Provenance>, ApiError> {
        Ok(self.inner.provenance.get(&io::by_output(output))?)
    }

    /// [`Self::provenance_of`] without a handle on the pipelines, for `Places` to keep: the
    /// pipelines hold the places, so a handle there would be a cycle that is never freed.
    pub fn provenance_lookup(
        &self,
    ) -> impl Fn(&str) -> Result<Option<Provenance>, ApiError> + Send + Sync + 'static {
        let records = self.inner.provenance.clone();
        move |output| Ok(records.get(&io::by_output(output))?)
    }

    /// Starts the node's job keeper: it resumes the jobs a previous run of this node left
    /// running or interrupted as soon as the control plane answers, and then at every tick
    /// records the ends waiting in the outbox, adopts this node's jobs that are recorded but
    /// not running (a start whose answer was lost), and, on the leader, runs schedules.
    pub fn resume(&self) {
        let this = self.clone();
        tokio::spawn(async move { this.keep().await });
    }

    async fn keep(&self) {
        let mut last_run: BTreeMap<String, tokio::time::Instant> = BTreeMap::new();
        let mut stop = self.inner.stop.clone();
        loop {
            if *stop.borrow() {
                return;
            }
            if let Err(e) = self.adopt().await {
                warn!(error = %e.message, "cannot read or record this node's pipeline jobs now; retrying");
            }
            // Registrations are the cluster's: only the leader runs their schedules.
            if self.inner.control.is_leader() {
                self.run_due(&mut last_run).await;
            }
            tokio::select! {
                () = tokio::time::sleep(SCHEDULE_TICK) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Records the ends waiting in the outbox, then runs this node's unfinished jobs that no
    /// runner of this process holds (at start: those a previous run left).
    async fn adopt(&self) -> Result<(), ApiError> {
        let _admin = self.inner.admin.lock().await;
        let unsaved: Vec<JobRecord> = lock(&self.inner.ended)
            .values()
            .flatten()
            .cloned()
            .collect();
        for job in unsaved {
            save_job(&self.inner, &job).await?;
            info!(job = %job.id, state = job.state.name(), "pipeline job's end recorded");
            lock(&self.inner.ended).insert(job.id.clone(), None);
        }
        let me = self.inner.control.node_id();
        let entries = self
            .inner
            .control
            .read(|s| entries_in(s, |e| e.node == me && !e.finished))
            .await?;
        for entry in entries {
            if *self.inner.stop.borrow() {
                break;
            }
            let mut job = parse_job(&entry)?;
            {
                let running = lock(&self.inner.running);
                let ended = lock(&self.inner.ended);
                if running.contains_key(&job.id) || ended.contains_key(&job.id) {
                    continue;
                }
            }
            let compiled = self.get_local(&job.pipeline).and_then(|registered| {
                self.inner
                    .compile(&registered.spec()?)
                    .map_err(ApiError::bad_request)
            });
            match compiled {
                Ok(compiled) => {
                    info!(job = %job.id, pipeline = %job.pipeline, "resuming pipeline job");
                    job.state = JobState::Running;
                    // The listing starts again and counts what it skips again.
                    job.stats.skipped = 0;
                    if let Err(e) = save_job(&self.inner, &job).await {
                        warn!(job = %job.id, error = %e.message, "could not record the job as resumed; it runs anyway");
                    }
                    self.spawn(job, compiled);
                }
                Err(e) => {
                    warn!(job = %job.id, error = %e.message, "cannot resume pipeline job; recording it failed");
                    job.state = JobState::Failed;
                    job.error = Some(format!("could not be resumed: {}", e.message));
                    job.ended_ms = Some(self.inner.clock.now_ms());
                    let unsaved = save_job(&self.inner, &job).await.err().map(|_| job.clone());
                    lock(&self.inner.ended).insert(job.id.clone(), unsaved);
                }
            }
        }
        self.inner.resumed.store(true, Ordering::Release);
        Ok(())
    }

    /// Runs mounted pipelines that have a schedule when they are due and have no job
    /// unfinished on any node.
    async fn run_due(&self, last_run: &mut BTreeMap<String, tokio::time::Instant>) {
        let Ok((pipelines, busy)) = self
            .inner
            .control
            .read(|s| {
                let busy: std::collections::BTreeSet<String> = s
                    .jobs
                    .values()
                    .filter(|e| !e.finished)
                    .map(|e| e.pipeline.clone())
                    .collect();
                let pipelines: Vec<(String, Registered)> = s
                    .pipelines
                    .iter()
                    .map(|(name, entry)| (name.clone(), entry.clone().into()))
                    .collect();
                (pipelines, busy)
            })
            .await
        else {
            return;
        };
        for (name, registered) in pipelines {
            let Ok(Some(interval)) = registered.spec().map(|s| {
                s.schedule
                    .as_deref()
                    .and_then(|t| spec::parse_schedule(t).ok())
            }) else {
                continue;
            };
            if !registered.mounted || busy.contains(&name) {
                continue;
            }
            let due = last_run
                .get(&name)
                .is_none_or(|at| at.elapsed() >= interval);
            if due {
                last_run.insert(name.clone(), tokio::time::Instant::now());
                match self.run(&name, None).await {
                    Ok(job) => info!(pipeline = %name, job = %job.id, "scheduled run started"),
                    Err(e) => {
                        warn!(pipeline = %name, error = %e.message, "scheduled run refused")
                    }
                }
            }
        }
    }

    /// After the stop signal: waits until `deadline` for jobs to drain and record themselves;
    /// jobs still going then are cut and resume at the next start.
    pub async fn stopped(&self, deadline: tokio::time::Instant) {
        let cut = self.inner.runners.join_until(deadline).await;
        if cut > 0 {
            warn!(
                jobs = cut,
                "a pipeline job did not drain before hard_terminate; it resumes at the next start"
            );
        }
    }

    /// Live figures of running jobs, for `/metrics`.
    pub fn running_stats(&self) -> Vec<(String, JobStats)> {
        let running = lock(&self.inner.running);
        running
            .iter()
            .map(|(id, r)| (id.clone(), r.progress.snapshot()))
            .collect()
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Inputs fixed in advance (a retry job's), opened through the pipeline's own source.
#[derive(Debug)]
struct FixedSource {
    inner: Arc<dyn Source>,
    inputs: Vec<Input>,
}

#[async_trait::async_trait]
impl Source for FixedSource {
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Input>, String> {
        let mut inputs = self.inputs.clone();
        inputs.sort_by(|a, b| a.key.cmp(&b.key));
        inputs.dedup_by(|a, b| a.key == b.key);
        Ok(inputs
            .into_iter()
            .filter(|i| after.is_none_or(|a| i.key.as_str() > a))
            .take(limit)
            .collect())
    }

    async fn open(&self, input: &Input) -> Result<ObjectBody, String> {
        self.inner.open(input).await
    }
}

/// Runs one job and records how it ended; answers its last record if that could not be
/// recorded yet.
async fn run(
    inner: &Inner,
    mut job: JobRecord,
    compiled: Compiled,
    progress: Arc<JobProgress>,
    mut cancelled: watch::Receiver<bool>,
) -> Result<Option<JobRecord>, ApiError> {
    let between_nodes = Arc::new(AtomicU64::new(job.bytes_between_nodes));
    let source: Arc<dyn Source> = match &compiled.from {
        ExtractFrom::Tier(from) => Arc::new(TierSource {
            places: inner.places.clone(),
            from: from.clone(),
            here_only: job.part_of.is_some(),
            between_nodes: Arc::clone(&between_nodes),
        }),
        ExtractFrom::Dir(root) => Arc::new(DirSource::new(root.clone())),
        ExtractFrom::S3 { bucket, prefix } => {
            let settings = inner
                .source_s3
                .as_ref()
                .unwrap_or_else(|| unreachable!("compile checks the source endpoint"));
            Arc::new(S3Source::new(settings, bucket, prefix.clone()))
        }
        ExtractFrom::Cache(prefix) => Arc::new(CacheSource {
            cache: inner.cache.clone(),
            prefix: prefix.clone(),
        }),
    };
    let sink: Arc<dyn Sink> = match &compiled.to {
        LoadTo::Tier(to) => Arc::new(TierSink {
            places: inner.places.clone(),
            between_nodes: Arc::clone(&between_nodes),
            to: to.clone(),
            key_template: compiled.key_template.clone(),
            pipeline: job.pipeline.clone(),
        }),
        LoadTo::Cache(prefix) => Arc::new(CacheSink {
            cache: inner.cache.clone(),
            prefix: prefix.clone(),
            key_template: compiled.key_template.clone(),
            pipeline: job.pipeline.clone(),
            max_bytes: inner.cache_bytes_max,
        }),
    };
    let source: Arc<dyn Source> = match job.inputs.clone() {
        Some(inputs) => Arc::new(FixedSource {
            inner: source,
            inputs,
        }),
        None => source,
    };
    let plan = JobPlan {
        job_id: job.id.clone(),
        source,
        chain: compiled.chain.clone(),
        sink,
        ledger: Arc::new(ProvenanceLedger {
            records: inner.provenance.clone(),
            places: inner.places.clone(),
            cache: inner.cache.clone(),
            pipeline: job.pipeline.clone(),
            version: compiled.version_tag(),
            job: job.id.clone(),
            clock: Arc::clone(&inner.clock),
        }),
        extract: compiled.extract,
        transform: compiled.transform,
        load: compiled.load,
    };
    // One stop for the engine: the node's, or this job's cancel.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut node_stop = inner.stop.clone();
    let watcher = tokio::spawn(async move {
        tokio::select! {
            _ = node_stop.wait_for(|s| *s) => {}
            _ = cancelled.wait_for(|s| *s) => {}
        }
        let _ = stop_tx.send(true);
    });
    // Aborted with this function's future (hard_terminate, or an early return on an error):
    // the engine never outlives its runner.
    let mut engine = AbortOnDrop(tokio::spawn(run_job(plan, Arc::clone(&progress), stop_rx)));
    let end = loop {
        tokio::select! {
            end = &mut engine.0 => break end,
            () = tokio::time::sleep(JOB_SAVE_INTERVAL) => {
                job.stats = progress.snapshot();
                job.dead_letters = progress.dead_letters();
                job.bytes_between_nodes = between_nodes.load(Ordering::Relaxed);
                if let Some(parent) = &job.part_of
                    && parent_cancelled(inner, parent)
                    && let Some(running) = lock(&inner.running).get(&job.id)
                {
                    let _ = running.cancel.send(true);
                }
                inner.provenance.flush().await?;
                if let Err(e) = save_job(inner, &job).await {
                    warn!(job = %job.id, error = %e.message, "could not save the job's progress; it runs on");
                }
            }
        }
    };
    watcher.abort();
    job.stats = progress.snapshot();
    job.dead_letters = progress.dead_letters();
    job.bytes_between_nodes = between_nodes.load(Ordering::Relaxed);
    let node_stopping = *inner.stop.borrow();
    match end {
        Ok(Ok(JobEnd::Finished)) => {
            job.state = if job.stats.dead_lettered == 0 {
                JobState::Succeeded
            } else {
                JobState::Failed
            };
        }
        Ok(Ok(JobEnd::Stopped)) if node_stopping => job.state = JobState::Interrupted,
        Ok(Ok(JobEnd::Stopped)) => job.state = JobState::Cancelled,
        Ok(Ok(JobEnd::ListingFailed(e))) => {
            job.state = JobState::Failed;
            job.error = Some(format!("listing the source failed: {e}"));
        }
        Ok(Err(e)) => {
            job.state = JobState::Failed;
            job.error = Some(e);
        }
        Err(e) => {
            job.state = JobState::Failed;
            job.error = Some(format!("the job's engine failed: {e}"));
        }
    }
    if job.state != JobState::Interrupted {
        job.ended_ms = Some(inner.clock.now_ms());
    }
    inner.provenance.flush().await?;
    info!(job = %job.id, pipeline = %job.pipeline, state = job.state.name(), produced = job.stats.objects_out, skipped = job.stats.skipped, dead = job.stats.dead_lettered, between_nodes = job.bytes_between_nodes, "pipeline job ended");
    record_end(inner, job).await
}

/// Whether job `parent` has been asked to stop, as this node has applied it.
fn parent_cancelled(inner: &Inner, parent: &str) -> bool {
    inner
        .control
        .read_local(|s| s.jobs.get(parent).cloned())
        .and_then(|entry| parse_job(&entry).ok())
        .is_some_and(|p| p.cancel_requested || p.state.is_finished())
}

/// Runs a job made of parts: records each part (its node runs it; recording one twice is
/// harmless), then follows them, summing their figures into this job's record every
/// [`JOB_SAVE_INTERVAL`], until all have ended. Cancelling asks the parts to stop.
async fn run_parts(
    inner: &Inner,
    mut job: JobRecord,
    progress: Arc<JobProgress>,
    mut cancelled: watch::Receiver<bool>,
) -> Result<Option<JobRecord>, ApiError> {
    for part in &job.parts {
        start_part(inner, &job, part).await?;
    }
    let mut stop = inner.stop.clone();
    // A job resumed after its cancel was asked for waits for its parts afresh.
    let mut cancel_since = job.cancel_requested.then(tokio::time::Instant::now);
    loop {
        // No `watch::Ref` is held past the select (it is not `Send`).
        let stopping = tokio::select! {
            () = tokio::time::sleep(JOB_SAVE_INTERVAL) => false,
            _ = cancelled.wait_for(|c| *c), if !job.cancel_requested => false,
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopping {
            // The parts go on on their nodes; this job follows them again at the next start.
            job.state = JobState::Interrupted;
            return record_end(inner, job).await;
        }
        if *cancelled.borrow() && !job.cancel_requested {
            info!(job = %job.id, "asking the job's parts to stop");
            job.cancel_requested = true;
            cancel_since = Some(tokio::time::Instant::now());
        }
        let entries: Vec<Option<JobEntry>> = inner.control.read_local(|s| {
            job.parts
                .iter()
                .map(|p| s.jobs.get(&p.job).cloned())
                .collect()
        });
        let mut stats = JobStats {
            listing_done: true,
            ..JobStats::default()
        };
        let mut dead_letters = Vec::new();
        let mut between = 0;
        for (part, entry) in job.parts.iter_mut().zip(entries) {
            if let Some(record) = entry.as_ref().and_then(|e| parse_job(e).ok()) {
                part.state = record.state;
                part.error = record.error;
                part.stats = record.stats;
                part.bytes_between_nodes = record.bytes_between_nodes;
                dead_letters.extend(record.dead_letters);
            }
            stats.absorb(&part.stats);
            between += part.bytes_between_nodes;
        }
        job.stats = stats;
        job.dead_letters = dead_letters;
        job.bytes_between_nodes = between;
        progress.restore(&job.stats, job.dead_letters.clone());
        // A part whose node left the cluster never ends by itself (found by the simulator):
        // it is ended here. Only with a loaded membership that has this node in it.
        let members = inner.control.members();
        if members.contains_key(&inner.control.node_id()) {
            for part in job
                .parts
                .iter_mut()
                .filter(|p| !p.state.is_finished() && !members.contains_key(&p.node))
            {
                end_departed_part(inner, &job.id, part).await;
            }
        }
        let all_ended = job.parts.iter().all(|p| p.state.is_finished());
        let gave_up = cancel_since.is_some_and(|at| at.elapsed() >= PART_CANCEL_WAIT);
        if all_ended || gave_up {
            for part in job.parts.iter_mut().filter(|p| !p.state.is_finished()) {
                // A part whose node did not stop it in time is ended here, so it blocks no
                // later run (its node, if it comes back, does not resume an ended part).
                part.state = JobState::Cancelled;
                part.error = Some(format!(
                    "node {} did not stop it within {PART_CANCEL_WAIT:?}",
                    part.node
                ));
                end_part(inner, &job.id, part).await;
            }
            job.state = if job.cancel_requested {
                JobState::Cancelled
            } else if job.parts.iter().all(|p| p.state == JobState::Succeeded) {
                JobState::Succeeded
            } else {
                JobState::Failed
            };
            let failed: Vec<String> = job
                .parts
                .iter()
                .filter_map(|p| p.error.as_ref().map(|e| format!("node {}: {e}", p.node)))
                .collect();
            if !failed.is_empty() {
                job.error = Some(failed.join("; "));
            }
            job.ended_ms = Some(inner.clock.now_ms());
            info!(job = %job.id, pipeline = %job.pipeline, state = job.state.name(), parts = job.parts.len(), produced = job.stats.objects_out, between_nodes = job.bytes_between_nodes, "pipeline job ended");
            return record_end(inner, job).await;
        }
        if let Err(e) = save_job(inner, &job).await {
            warn!(job = %job.id, error = %e.message, "could not save the job's progress; it runs on");
        }
    }
}

/// Records a part as ended on behalf of its node.
async fn end_part(inner: &Inner, job: &str, part: &JobPart) {
    let Some(entry) = inner.control.read_local(|s| s.jobs.get(&part.job).cloned()) else {
        return;
    };
    let Ok(mut record) = parse_job(&entry) else {
        return;
    };
    if entry.finished {
        return;
    }
    record.state = part.state.clone();
    record.error = part.error.clone();
    record.ended_ms = Some(inner.clock.now_ms());
    if let Err(e) = save_job(inner, &record).await {
        warn!(job, part = %part.job, error = %e.message, "could not record a part as ended");
    }
}

/// Ends a part whose node left the cluster: as its record stands if it ended before (read
/// linearizably: this node may not have applied that end yet), else as failed. Left as it
/// is when the control plane does not answer; the parent's next tick tries again.
async fn end_departed_part(inner: &Inner, job: &str, part: &mut JobPart) {
    let entry = match inner.control.read(|s| s.jobs.get(&part.job).cloned()).await {
        Ok(entry) => entry,
        Err(e) => {
            warn!(job, part = %part.job, error = %e, "could not read a departed node's part");
            return;
        }
    };
    let Some(record) = entry.as_ref().and_then(|e| parse_job(e).ok()) else {
        return;
    };
    if entry.is_some_and(|e| e.finished) {
        part.state = record.state;
        part.error = record.error;
        return;
    }
    let ended = JobRecord {
        state: JobState::Failed,
        error: Some(format!(
            "node {} left the cluster before its part ended",
            part.node
        )),
        ended_ms: Some(inner.clock.now_ms()),
        ..record
    };
    match save_job(inner, &ended).await {
        Ok(()) => {
            part.state = ended.state;
            part.error = ended.error;
        }
        Err(e) => {
            warn!(job, part = %part.job, error = %e.message, "could not record a departed node's part as ended");
        }
    }
}

/// Records one part of `job` for its node to run (that node's job keeper adopts it).
async fn start_part(inner: &Inner, job: &JobRecord, part: &JobPart) -> Result<(), ApiError> {
    let record = JobRecord {
        part_of: Some(job.id.clone()),
        ..JobRecord::starting(
            part.job.clone(),
            part.node,
            &job.pipeline,
            job.pipeline_version,
            inner.clock.now_ms(),
        )
    };
    let start = Command::StartJob {
        id: record.id.clone(),
        node: record.node,
        pipeline: record.pipeline.clone(),
        request_id: None,
        record_json: job_json(&record)?,
    };
    match inner.control.write(start).await? {
        Response::Job { .. } => Ok(()),
        Response::Refused { reason } => Err(ApiError::new(StatusCode::CONFLICT, reason)),
        other => Err(internal(format!("unexpected control answer: {other:?}"))),
    }
}

/// Records a job's last state, retrying a few times; answers the record if it could not be
/// recorded (it waits in the outbox).
async fn record_end(inner: &Inner, job: JobRecord) -> Result<Option<JobRecord>, ApiError> {
    let mut attempt = 1;
    while let Err(e) = save_job(inner, &job).await {
        if attempt >= FINAL_SAVE_ATTEMPTS {
            warn!(job = %job.id, error = %e.message, "could not record the job's end; it waits in this node's outbox");
            return Ok(Some(job));
        }
        warn!(job = %job.id, attempt, error = %e.message, "could not record the job's end; retrying");
        tokio::time::sleep(SAVE_RETRY_PAUSE).await;
        attempt += 1;
    }
    Ok(None)
}

/// Replaces a job's record in the control plane.
async fn save_job(inner: &Inner, job: &JobRecord) -> Result<(), ApiError> {
    let put = Command::PutJob {
        id: job.id.clone(),
        record_json: job_json(job)?,
        finished: job.state.is_finished(),
    };
    match inner.control.write(put).await? {
        Response::Done => Ok(()),
        // Ended for good already (its parent gave up on it): nothing more to record.
        Response::Refused { reason } if reason.ends_with(letl_raft::state::JOB_ENDED) => {
            info!(job = %job.id, "the job had been ended elsewhere; its last state is not recorded");
            Ok(())
        }
        Response::Refused { reason } => Err(internal(reason)),
        other => Err(internal(format!("unexpected control answer: {other:?}"))),
    }
}

//! Move jobs: `letl mv ssd:/covid/ hdd:/archive/` copies or moves every object under a prefix
//! as one job, with progress.
//!
//! Creating a job lists its source once into a durable item list (see
//! [`letl_storage::SledMoveJobs`]); the job then hands item after item to the [`Mover`] under
//! the item's own request id (`<job id>:<n>`), a few at a time. Progress is saved as items finish.
//! A node stopped or killed mid-job resumes it at its next start from the saved progress: items
//! it redoes replay their first result from the move log, so nothing moves twice and every
//! item is counted once. The same job request id again returns the job, never a second run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::StatusCode;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use letl_actors::TierDirectory;
use letl_storage::{
    Clock, LIST_PAGE_ENTRIES_MAX, MOVE_JOB_FAILURES_KEPT, MOVE_JOB_OBJECTS_MAX, MoveJob,
    MoveJobFailure, MoveJobItem, MoveJobState, ObjectKey, ObjectUri, PrefixUri, SledMoveJobs,
    check_request_id,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::error::ApiError;
use crate::moves::{Mover, Transferred, new_request_id};

/// Transfers one job runs at once.
pub const MOVE_JOB_TRANSFERS_IN_FLIGHT: usize = 4;
/// How often a running job saves its progress (it also saves when it stops and when it ends).
const PROGRESS_SAVE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct MoveJobs {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    directory: TierDirectory,
    mover: Mover,
    store: SledMoveJobs,
    clock: Arc<dyn Clock>,
    /// Set when the node stops: runners start no new item and save their progress.
    stop: watch::Receiver<bool>,
    /// Request ids whose job is being created now.
    creating: Mutex<BTreeSet<String>>,
    /// Running jobs: their latest progress (saved at most [`PROGRESS_SAVE_INTERVAL`] ago) and
    /// their runner.
    live: Mutex<BTreeMap<String, MoveJob>>,
    runners: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl MoveJobs {
    pub fn new(
        directory: TierDirectory,
        mover: Mover,
        store: SledMoveJobs,
        clock: Arc<dyn Clock>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                directory,
                mover,
                store,
                clock,
                stop,
                creating: Mutex::new(BTreeSet::new()),
                live: Mutex::new(BTreeMap::new()),
                runners: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Creates a job moving (or copying) everything under `source` to `destination` and starts
    /// it; returns it as it starts. A request id seen before returns that job.
    pub async fn start(
        &self,
        source: &str,
        destination: &str,
        remove_source: bool,
        request_id: Option<String>,
    ) -> Result<MoveJob, ApiError> {
        let (source, destination) = check_prefixes(source, destination)?;
        let request_id = match request_id {
            Some(id) => {
                check_request_id(&id)?;
                id
            }
            None => new_request_id(self.inner.clock.now_ms()),
        };
        if !lock(&self.inner.creating).insert(request_id.clone()) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("request id `{request_id}` is in progress"),
            ));
        }
        let created = self
            .create(&request_id, source, destination, remove_source)
            .await;
        lock(&self.inner.creating).remove(&request_id);
        let (job, new) = created?;
        if new {
            self.spawn(job.clone());
        }
        Ok(job)
    }

    /// The job, or why not: `(job, true)` for a new job that must be started.
    async fn create(
        &self,
        request_id: &str,
        source: PrefixUri,
        destination: PrefixUri,
        remove_source: bool,
    ) -> Result<(MoveJob, bool), ApiError> {
        if let Some(job) = self.find(request_id)? {
            if job.source != source
                || job.destination != destination
                || job.remove_source != remove_source
            {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "request id `{request_id}` was used for another job ({} {} -> {})",
                        kind(job.remove_source),
                        job.source,
                        job.destination
                    ),
                ));
            }
            return Ok((job, false));
        }
        if self.inner.mover.record(request_id)?.is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("request id `{request_id}` was used for a single transfer"),
            ));
        }
        // Both tiers must exist before anything is listed.
        let from = self.inner.directory.get(&source.tier)?;
        self.inner.directory.get(&destination.tier)?;

        let store = &self.inner.store;
        store.clear_items(request_id)?;
        let (mut objects, mut bytes) = (0u64, 0u64);
        let mut start_after: Option<ObjectKey> = None;
        loop {
            let page = from
                .list(
                    source.prefix.clone(),
                    start_after.clone(),
                    LIST_PAGE_ENTRIES_MAX,
                )
                .await?;
            let full = page.len() == LIST_PAGE_ENTRIES_MAX;
            for (key, meta) in page {
                if objects == MOVE_JOB_OBJECTS_MAX {
                    store.clear_items(request_id)?;
                    return Err(ApiError::bad_request(format!(
                        "more than {MOVE_JOB_OBJECTS_MAX} objects under {source}: one job takes at most that many; {} sub-prefixes one by one",
                        kind(remove_source)
                    )));
                }
                let item = MoveJobItem {
                    key: key.clone(),
                    size: meta.size,
                };
                store.put_item(request_id, objects, &item)?;
                objects += 1;
                bytes += meta.size;
                start_after = Some(key);
            }
            if !full {
                break;
            }
        }
        if objects == 0 {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no objects under {source}"),
            ));
        }
        let now = self.inner.clock.now_ms();
        let job = MoveJob {
            request_id: request_id.to_string(),
            source,
            destination,
            remove_source,
            state: MoveJobState::Running,
            objects_total: objects,
            bytes_total: bytes,
            objects_tried: 0,
            objects_done: 0,
            bytes_done: 0,
            objects_failed: 0,
            failures: Vec::new(),
            started_ms: now,
            updated_ms: now,
        };
        store.put(&job)?;
        store.flush().await?;
        info!(request_id, source = %job.source, destination = %job.destination, objects, bytes, moved = remove_source, "move job created");
        Ok((job, true))
    }

    /// A job by request id: its live progress while it runs.
    pub fn find(&self, request_id: &str) -> Result<Option<MoveJob>, ApiError> {
        if let Some(job) = lock(&self.inner.live).get(request_id) {
            return Ok(Some(job.clone()));
        }
        Ok(self.inner.store.get(request_id)?)
    }

    pub fn get(&self, request_id: &str) -> Result<MoveJob, ApiError> {
        self.find(request_id)?.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no move job with request id `{request_id}`"),
            )
        })
    }

    /// Every job, most recent first.
    pub fn all(&self) -> Result<Vec<MoveJob>, ApiError> {
        let mut jobs = self.inner.store.all()?;
        {
            let live = lock(&self.inner.live);
            for job in &mut jobs {
                if let Some(now) = live.get(&job.request_id) {
                    *job = now.clone();
                }
            }
        }
        jobs.sort_by(|a, b| {
            b.started_ms
                .cmp(&a.started_ms)
                .then(a.request_id.cmp(&b.request_id))
        });
        Ok(jobs)
    }

    /// Starts again every job a previous run left running. Called at start, after the mover
    /// finished its own interrupted transfers.
    pub fn resume(&self) -> Result<(), ApiError> {
        for job in self.inner.store.all()? {
            if job.state == MoveJobState::Running {
                info!(request_id = %job.request_id, tried = job.objects_tried, total = job.objects_total, "resuming move job");
                self.spawn(job);
            }
        }
        Ok(())
    }

    /// After the stop signal: waits up to `grace` for runners to finish their items in flight
    /// and save their progress; runners still going then are cut, as a crash would (their
    /// transfers finish at the next start).
    pub async fn stopped(&self, grace: Duration) {
        let runners = std::mem::take(&mut *lock(&self.inner.runners));
        let deadline = tokio::time::Instant::now() + grace;
        for mut runner in runners {
            if tokio::time::timeout_at(deadline, &mut runner)
                .await
                .is_err()
            {
                warn!(
                    "a move job did not stop within the shutdown grace; it resumes at the next start"
                );
                runner.abort();
            }
        }
    }

    fn spawn(&self, job: MoveJob) {
        lock(&self.inner.live).insert(job.request_id.clone(), job.clone());
        let inner = Arc::clone(&self.inner);
        let runner = tokio::spawn(async move {
            let request_id = job.request_id.clone();
            if let Err(e) = run(&inner, job).await {
                warn!(request_id, error = %e.message, "move job stopped on an error; it resumes at the next start");
            }
            lock(&inner.live).remove(&request_id);
        });
        let mut runners = lock(&self.inner.runners);
        runners.retain(|r| !r.is_finished());
        runners.push(runner);
    }
}

fn kind(remove_source: bool) -> &'static str {
    if remove_source { "mv" } else { "cp" }
}

/// Both sides of a job name directories (`ssd:/covid/`, or a whole tier `ssd:/`), and neither
/// lies inside the other on one tier (the job would take its own output as input).
fn check_prefixes(source: &str, destination: &str) -> Result<(PrefixUri, PrefixUri), ApiError> {
    let source_uri = PrefixUri::parse(source)?;
    let destination_uri = PrefixUri::parse(destination)?;
    for (what, uri) in [("source", &source_uri), ("destination", &destination_uri)] {
        if !uri.is_directory() {
            return Err(ApiError::bad_request(format!(
                "a job's {what} must be a prefix ending in `/` (or a whole tier, `{}:/`), not `{uri}`",
                uri.tier
            )));
        }
    }
    let (s, d) = (source_uri.prefix.as_str(), destination_uri.prefix.as_str());
    if source_uri.tier == destination_uri.tier && (s.starts_with(d) || d.starts_with(s)) {
        return Err(ApiError::bad_request(format!(
            "{source_uri} and {destination_uri} overlap: a job cannot write inside its own source"
        )));
    }
    Ok((source_uri, destination_uri))
}

/// Where item `key` goes: the destination prefix, then the key below the source prefix.
fn destination_of(job: &MoveJob, key: &ObjectKey) -> Result<ObjectUri, ApiError> {
    let below = key
        .as_str()
        .strip_prefix(job.source.prefix.as_str())
        .ok_or_else(|| {
            ApiError::bad_request(format!("`{key}` is not under {}", job.source.prefix))
        })?;
    let key = ObjectKey::new(format!("{}{below}", job.destination.prefix))?;
    Ok(ObjectUri::new(job.destination.tier.clone(), key))
}

/// Item `n`'s transfer. The outer error (the item list unreadable) stops the job; the inner
/// one is this item's failure, which the job records and goes on.
async fn transfer_item(
    inner: &Inner,
    job: &MoveJob,
    n: u64,
) -> Result<(MoveJobItem, Result<Transferred, ApiError>), ApiError> {
    let item = inner.store.item(&job.request_id, n)?;
    let source = ObjectUri::new(job.source.tier.clone(), item.key.clone());
    let outcome = match destination_of(job, &item.key) {
        Ok(destination) => {
            inner
                .mover
                .transfer_as(
                    job.item_request_id(n),
                    source,
                    destination,
                    job.remove_source,
                )
                .await
        }
        Err(e) => Err(e),
    };
    Ok((item, outcome))
}

/// Runs a job from where it stands until every item was tried, or the node stops.
async fn run(inner: &Inner, mut job: MoveJob) -> Result<(), ApiError> {
    let mut stop = inner.stop.clone();
    // The sender gone counts as a stop: the node is going away.
    let mut stop_gone = false;
    // What the transfers read; `job` itself takes their progress.
    let plan = job.clone();
    let mut in_flight = FuturesOrdered::new();
    let mut next = job.objects_tried;
    let mut saved_at = tokio::time::Instant::now();
    loop {
        let stopping = stop_gone || *stop.borrow();
        while !stopping
            && next < job.objects_total
            && in_flight.len() < MOVE_JOB_TRANSFERS_IN_FLIGHT
        {
            in_flight.push_back(transfer_item(inner, &plan, next));
            next += 1;
        }
        let Some(finished) = (tokio::select! {
            finished = in_flight.next() => finished,
            changed = stop.changed(), if !stopping => {
                stop_gone = changed.is_err();
                continue;
            }
        }) else {
            break;
        };
        let (item, outcome) = finished?;
        job.objects_tried += 1;
        match outcome {
            Ok(done) => {
                job.objects_done += 1;
                job.bytes_done += done.meta.size;
            }
            Err(e) => {
                warn!(request_id = %job.request_id, key = %item.key, error = %e.message, "move job item failed");
                job.objects_failed += 1;
                if job.failures.len() < MOVE_JOB_FAILURES_KEPT {
                    job.failures.push(MoveJobFailure {
                        key: item.key,
                        error: e.message,
                    });
                }
            }
        }
        job.updated_ms = inner.clock.now_ms();
        lock(&inner.live).insert(job.request_id.clone(), job.clone());
        if saved_at.elapsed() >= PROGRESS_SAVE_INTERVAL {
            inner.store.put(&job)?;
            inner.store.flush().await?;
            saved_at = tokio::time::Instant::now();
        }
    }
    if job.objects_tried == job.objects_total {
        job.state = MoveJobState::Done;
        info!(request_id = %job.request_id, done = job.objects_done, failed = job.objects_failed, bytes = job.bytes_done, "move job finished");
    } else {
        info!(request_id = %job.request_id, tried = job.objects_tried, total = job.objects_total, "move job paused by the node's stop; it resumes at the next start");
    }
    inner.store.put(&job)?;
    inner.store.flush().await?;
    Ok(())
}

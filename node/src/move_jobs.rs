//! Move jobs: `letl mv ssd:/covid/ hdd:/archive/` copies or moves every object under a prefix
//! as one job, with progress.
//!
//! Creating a job lists its source once into a durable item list (see
//! [`letl_storage::DbMoveJobs`]); the job then hands item after item to the [`Mover`] under
//! the item's own request id (`<job id>#<n>`), a few at a time, retrying an item a few times
//! when a tier is unavailable. Progress is saved as items finish: the job's counts cover the
//! items before the oldest one not yet finished. A node stopped or killed mid-job resumes it at
//! its next start from there: items it redoes replay their first result from the move log, so
//! nothing moves twice and every item is counted once. The same job request id again returns
//! the job, never a second run (and restarts a job that stalled).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use letl_storage::{
    Clock, DbMoveJobs, LIST_PAGE_ENTRIES_MAX, MOVE_JOB_FAILURES_KEPT, MOVE_JOB_OBJECTS_MAX,
    MoveJob, MoveJobFailure, MoveJobItem, MoveJobState, ObjectKey, ObjectUri, PrefixUri,
    check_request_id,
};
use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

use crate::error::ApiError;
use crate::moves::{Mover, Transferred, new_request_id};
use crate::places::Places;
use crate::tasks::{Runners, lock};

/// Transfers one job runs at once.
pub const MOVE_JOB_TRANSFERS_IN_FLIGHT: usize = 4;
/// Jobs that transfer at once; more wait their turn (shown as running, with nothing done yet).
pub const MOVE_JOBS_RUNNING_MAX: usize = 4;
/// Items a job may finish past its oldest unfinished one (which holds its saved progress
/// back); beyond that it waits for that one.
const MOVE_JOB_WINDOW_ITEMS: u64 = 1024;
/// Tries of one item while its transfer fails on a transient error (a tier unavailable).
pub const MOVE_JOB_ITEM_ATTEMPTS_MAX: u32 = 4;
/// Wait before the second try of an item; doubled for each further one.
const ITEM_RETRY_BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// How often a running job saves its progress (it also saves when it stops and when it ends).
const PROGRESS_SAVE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct MoveJobs {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    places: Places,
    mover: Mover,
    store: DbMoveJobs,
    clock: Arc<dyn Clock>,
    /// Set when the node stops: no job starts, runners start no new item and save.
    stop: watch::Receiver<bool>,
    /// [`MOVE_JOBS_RUNNING_MAX`] permits, one per job transferring.
    slots: Arc<Semaphore>,
    /// Request ids whose job is being created now.
    creating: Mutex<BTreeSet<String>>,
    /// Jobs with a runner in this process, or whose runner stopped on an error: their latest
    /// progress (the store's copy is at most [`PROGRESS_SAVE_INTERVAL`] older).
    live: Mutex<BTreeMap<String, Live>>,
    runners: Runners,
}

#[derive(Clone, Debug)]
struct Live {
    job: MoveJob,
    /// Why the runner stopped before the job's end, if it did: the same request id again
    /// starts it again.
    stalled: Option<String>,
}

/// A job as the API shows it: the job, and why it stalled if its runner stopped on an error.
#[derive(Clone, Debug)]
pub struct JobView {
    pub job: MoveJob,
    pub stalled: Option<String>,
}

/// A request id marked as being created for as long as this lives.
struct Creating {
    inner: Arc<Inner>,
    id: String,
}

impl Drop for Creating {
    fn drop(&mut self) {
        lock(&self.inner.creating).remove(&self.id);
    }
}

impl MoveJobs {
    pub fn new(
        places: Places,
        mover: Mover,
        store: DbMoveJobs,
        clock: Arc<dyn Clock>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                places,
                mover,
                store,
                clock,
                stop,
                slots: Arc::new(Semaphore::new(MOVE_JOBS_RUNNING_MAX)),
                creating: Mutex::new(BTreeSet::new()),
                live: Mutex::new(BTreeMap::new()),
                runners: Runners::default(),
            }),
        }
    }

    /// Creates a job moving (or copying) everything under `source` to `destination` and starts
    /// it; returns it as it starts. A request id seen before returns that job (starting it
    /// again if its runner had stopped).
    pub async fn start(
        &self,
        source: &str,
        destination: &str,
        remove_source: bool,
        request_id: Option<String>,
    ) -> Result<JobView, ApiError> {
        let (source, destination) = check_prefixes(source, destination)?;
        let request_id = match request_id {
            Some(id) => {
                check_request_id(&id)?;
                id
            }
            None => new_request_id(self.inner.clock.now_ms()),
        };
        if *self.inner.stop.borrow() {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the node is stopping; start the job again once it is back",
            ));
        }
        if !lock(&self.inner.creating).insert(request_id.clone()) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("request id `{request_id}` is in progress"),
            ));
        }
        let creating = Creating {
            inner: Arc::clone(&self.inner),
            id: request_id.clone(),
        };
        // Apart from the request: a client that goes away cannot cut a creation half-way.
        let this = self.clone();
        tokio::spawn(async move {
            let _creating = creating;
            this.create(&request_id, source, destination, remove_source)
                .await
        })
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("creating the job failed: {e}"),
            )
        })?
    }

    /// The job under `request_id`, created (and listed) if new, and running.
    async fn create(
        &self,
        request_id: &str,
        source: PrefixUri,
        destination: PrefixUri,
        remove_source: bool,
    ) -> Result<JobView, ApiError> {
        if let Some(view) = self.find(request_id)? {
            let job = &view.job;
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
            let has_runner = lock(&self.inner.live)
                .get(request_id)
                .is_some_and(|live| live.stalled.is_none());
            if job.state == MoveJobState::Running && !has_runner {
                info!(request_id, "starting a stalled move job again");
                self.spawn(view.job.clone());
                return Ok(JobView {
                    job: view.job,
                    stalled: None,
                });
            }
            return Ok(view);
        }
        if self.inner.mover.record(request_id)?.is_some() {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("request id `{request_id}` was used for a single transfer"),
            ));
        }
        // Both tiers must exist before anything is listed.
        let places = &self.inner.places;
        places.check_tier(&source.tier)?;
        places.check_tier(&destination.tier)?;

        let store = &self.inner.store;
        store.clear_items(request_id)?;
        let (mut objects, mut bytes) = (0u64, 0u64);
        let mut start_after: Option<ObjectKey> = None;
        loop {
            let listing = places
                .list(
                    &source.tier,
                    source.prefix.clone(),
                    start_after.clone(),
                    LIST_PAGE_ENTRIES_MAX,
                )
                .await?;
            if !listing.unreachable.is_empty() {
                // A job over part of a prefix would look done with objects left behind.
                store.clear_items(request_id)?;
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "{source} cannot be listed whole now: {}",
                        listing.unreachable.join("; ")
                    ),
                ));
            }
            let page = listing.entries;
            let full = page.len() == LIST_PAGE_ENTRIES_MAX;
            if objects + page.len() as u64 > MOVE_JOB_OBJECTS_MAX {
                store.clear_items(request_id)?;
                return Err(ApiError::bad_request(format!(
                    "more than {MOVE_JOB_OBJECTS_MAX} objects under {source}: one job takes at most that many; {} sub-prefixes one by one",
                    kind(remove_source)
                )));
            }
            start_after = page.last().map(|(key, _)| key.clone());
            let items: Vec<MoveJobItem> = page
                .into_iter()
                .map(|(key, meta)| {
                    bytes += meta.size;
                    MoveJobItem {
                        key,
                        size: meta.size,
                    }
                })
                .collect();
            store.put_items(request_id, objects, &items)?;
            objects += items.len() as u64;
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
        self.spawn(job.clone());
        Ok(JobView { job, stalled: None })
    }

    /// A job by request id: its live progress while it runs.
    pub fn find(&self, request_id: &str) -> Result<Option<JobView>, ApiError> {
        if let Some(live) = lock(&self.inner.live).get(request_id) {
            return Ok(Some(JobView {
                job: live.job.clone(),
                stalled: live.stalled.clone(),
            }));
        }
        Ok(self
            .inner
            .store
            .get(request_id)?
            .map(|job| JobView { job, stalled: None }))
    }

    pub fn get(&self, request_id: &str) -> Result<JobView, ApiError> {
        self.find(request_id)?.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no move job with request id `{request_id}`"),
            )
        })
    }

    /// Every job, most recent first.
    pub fn all(&self) -> Result<Vec<JobView>, ApiError> {
        let live = lock(&self.inner.live).clone();
        let mut jobs: Vec<JobView> = self
            .inner
            .store
            .all()?
            .into_iter()
            .map(|job| match live.get(&job.request_id) {
                Some(now) => JobView {
                    job: now.job.clone(),
                    stalled: now.stalled.clone(),
                },
                None => JobView { job, stalled: None },
            })
            .collect();
        jobs.sort_by(|a, b| {
            b.job
                .started_ms
                .cmp(&a.job.started_ms)
                .then(a.job.request_id.cmp(&b.job.request_id))
        });
        Ok(jobs)
    }

    /// Starts again every job a previous run left running, and drops item lists nobody needs.
    /// Called at start, after the mover finished its own interrupted transfers.
    pub fn resume(&self) -> Result<(), ApiError> {
        let swept = self.inner.store.sweep_items()?;
        if swept > 0 {
            info!(
                items = swept,
                "dropped the item lists of finished or unfinished-to-create move jobs"
            );
        }
        for job in self.inner.store.all()? {
            if job.state == MoveJobState::Running {
                info!(request_id = %job.request_id, tried = job.objects_tried, total = job.objects_total, "resuming move job");
                self.spawn(job);
            }
        }
        Ok(())
    }

    /// After the stop signal: waits until `deadline` for runners to finish their items in
    /// flight and save their progress; runners still going then are cut, as a crash would
    /// (their transfers finish at the next start).
    pub async fn stopped(&self, deadline: tokio::time::Instant) {
        let cut = self.inner.runners.join_until(deadline).await;
        if cut > 0 {
            warn!(
                jobs = cut,
                "a move job did not stop within the shutdown grace; it resumes at the next start"
            );
        }
    }

    fn spawn(&self, job: MoveJob) {
        let request_id = job.request_id.clone();
        lock(&self.inner.live).insert(
            request_id.clone(),
            Live {
                job: job.clone(),
                stalled: None,
            },
        );
        let inner = Arc::clone(&self.inner);
        let runner = tokio::spawn(async move {
            match run(&inner, job).await {
                Ok(()) => {
                    lock(&inner.live).remove(&request_id);
                }
                Err(e) => {
                    warn!(request_id, error = %e.message, "move job stalled; the same request id, or the next start, starts it again");
                    if let Some(live) = lock(&inner.live).get_mut(&request_id) {
                        live.stalled = Some(e.message);
                    }
                }
            }
        });
        self.inner.runners.push(runner);
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

/// One item's end: the item, and its transfer's outcome.
type ItemOutcome = (MoveJobItem, Result<Transferred, ApiError>);

/// Item `n`'s transfer, tried again after a pause while it fails on a transient error and the
/// node is not stopping. The outer error (the item list unreadable) stalls the job; the inner
/// one is this item's failure, which the job records and goes on.
async fn transfer_item(
    inner: &Inner,
    job: &MoveJob,
    n: u64,
) -> (u64, Result<ItemOutcome, ApiError>) {
    let item = match inner.store.item(&job.request_id, n) {
        Ok(item) => item,
        Err(e) => return (n, Err(e.into())),
    };
    let source = ObjectUri::new(job.source.tier.clone(), item.key.clone());
    let destination = match destination_of(job, &item.key) {
        Ok(destination) => destination,
        Err(e) => return (n, Ok((item, Err(e)))),
    };
    let mut backoff = ITEM_RETRY_BACKOFF_FIRST;
    let mut attempt = 1;
    loop {
        let outcome = inner
            .mover
            .transfer_as(
                job.item_request_id(n),
                source.clone(),
                destination.clone(),
                job.remove_source,
            )
            .await;
        match outcome {
            Err(e)
                if e.transient && attempt < MOVE_JOB_ITEM_ATTEMPTS_MAX && !*inner.stop.borrow() =>
            {
                warn!(request_id = %job.request_id, key = %item.key, attempt, error = %e.message, "move job item failed; trying again");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
            outcome => return (n, Ok((item, outcome))),
        }
    }
}

/// Counts one finished item into the job.
fn count(job: &mut MoveJob, (item, outcome): &ItemOutcome) {
    job.objects_tried += 1;
    match outcome {
        Ok(done) => {
            job.objects_done += 1;
            job.bytes_done += done.meta.size;
        }
        Err(e) => {
            job.objects_failed += 1;
            if job.failures.len() < MOVE_JOB_FAILURES_KEPT {
                job.failures.push(MoveJobFailure {
                    key: item.key.clone(),
                    error: e.message.clone(),
                });
            }
        }
    }
}

/// Runs a job from where it stands until every item was tried, the node stops, or the item
/// list cannot be read (the job stalls: the error is returned).
async fn run(inner: &Inner, mut job: MoveJob) -> Result<(), ApiError> {
    let mut stop = inner.stop.clone();
    // The sender gone counts as a stop: the node is going away.
    let mut stop_gone = false;
    let _slot = tokio::select! {
        slot = Arc::clone(&inner.slots).acquire_owned() => slot.map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?,
        _ = stop.wait_for(|stop| *stop) => return Ok(()),
    };
    // What the transfers read; `job` itself takes their progress.
    let plan = job.clone();
    let mut unfinished = FuturesUnordered::new();
    // Items finished past the oldest unfinished one: counted once that one is.
    let mut ahead: BTreeMap<u64, ItemOutcome> = BTreeMap::new();
    let mut next = job.objects_tried;
    let mut saved_at = tokio::time::Instant::now();
    let mut stalled: Option<ApiError> = None;
    loop {
        let stopping = stalled.is_some() || stop_gone || *stop.borrow();
        while !stopping
            && unfinished.len() < MOVE_JOB_TRANSFERS_IN_FLIGHT
            && next < job.objects_total
            && next < job.objects_tried + MOVE_JOB_WINDOW_ITEMS
        {
            unfinished.push(transfer_item(inner, &plan, next));
            next += 1;
        }
        if unfinished.is_empty() {
            break;
        }
        let (n, finished) = tokio::select! {
            Some(finished) = unfinished.next() => finished,
            changed = stop.changed(), if !stopping => {
                stop_gone = changed.is_err();
                continue;
            }
        };
        match finished {
            Ok(outcome) => {
                if let (item, Err(e)) = &outcome {
                    warn!(request_id = %job.request_id, key = %item.key, error = %e.message, "move job item failed");
                }
                ahead.insert(n, outcome);
            }
            Err(e) => {
                // Finish what is in flight, then stop.
                stalled.get_or_insert(e);
                continue;
            }
        }
        while let Some(outcome) = ahead.remove(&job.objects_tried) {
            count(&mut job, &outcome);
        }
        job.updated_ms = inner.clock.now_ms();
        let mut shown = job.clone();
        for outcome in ahead.values() {
            count(&mut shown, outcome);
        }
        if let Some(live) = lock(&inner.live).get_mut(&job.request_id) {
            live.job = shown;
        }
        if saved_at.elapsed() >= PROGRESS_SAVE_INTERVAL {
            inner.store.put(&job)?;
            inner.store.flush().await?;
            saved_at = tokio::time::Instant::now();
        }
    }
    if job.objects_tried == job.objects_total {
        job.state = MoveJobState::Done;
        info!(request_id = %job.request_id, done = job.objects_done, failed = job.objects_failed, bytes = job.bytes_done, "move job finished");
    } else if stalled.is_none() {
        info!(request_id = %job.request_id, tried = job.objects_tried, total = job.objects_total, "move job paused by the node's stop; it resumes at the next start");
    }
    inner.store.put(&job)?;
    inner.store.flush().await?;
    if job.state == MoveJobState::Done {
        // The list served its purpose; a failure to drop it is swept at the next start.
        if let Err(e) = inner.store.clear_items(&job.request_id) {
            warn!(request_id = %job.request_id, error = %e, "could not drop a finished job's item list");
        }
    }
    match stalled {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

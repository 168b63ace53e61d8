//! Exactly-once copies and moves between tiers.
//!
//! Every transfer has a request id (given, or made up) and a durable record in the move log,
//! written before each step it guards:
//!
//! 1. `Copying` with the source's size and hash, then the copy, which the destination tier
//!    publishes only if the bytes hash to that;
//! 2. `Copied`, then (for a move) the source's deletion, only if it still has that hash;
//! 3. `Done`.
//!
//! A node killed at any point finishes the transfer at its next start ([`resume`]): a copy that
//! did not land is redone from the still-present source, a copied move deletes its source. The
//! object is never lost, and never left live in two places. A request id given again returns
//! the first result and starts nothing.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use crate::places::Places;
use letl_storage::{
    Clock, MoveLog, MoveRecord, MoveState, ObjectMeta, ObjectUri, StorageError, check_request_id,
};
use tracing::{info, warn};

use crate::error::ApiError;
use axum::http::StatusCode;

/// Transfers as the service runs them.
#[derive(Clone, Debug)]
pub struct Mover {
    /// Sources and destinations, wherever in the cluster they live.
    places: Places,
    log: Arc<dyn MoveLog>,
    clock: Arc<dyn Clock>,
    /// Request ids running now: a second request with the same id waits for nothing and is
    /// told the first is in progress.
    running: Arc<Mutex<BTreeSet<String>>>,
}

/// What a finished transfer reports.
#[derive(Clone, Debug)]
pub struct Transferred {
    pub request_id: String,
    pub destination: ObjectUri,
    pub meta: ObjectMeta,
}

/// Errors a tier gives before publishing anything, that the same request would meet again: a
/// transfer ending in one is recorded as failed. Any other error (unavailable, I/O, index)
/// leaves the transfer pending, to be finished or redone.
pub(crate) fn is_clean_refusal(e: &StorageError) -> bool {
    matches!(
        e,
        StorageError::InvalidUri { .. }
            | StorageError::InvalidKey { .. }
            | StorageError::InvalidRequestId { .. }
            | StorageError::InvalidTierName { .. }
            | StorageError::UnknownTier { .. }
            | StorageError::NotFound { .. }
            | StorageError::TierFull { .. }
            | StorageError::NoSpace { .. }
            | StorageError::TooLarge { .. }
            | StorageError::Conflict { .. }
            | StorageError::LengthMismatch { .. }
            | StorageError::HashMismatch { .. }
    )
}

/// A request id marked as running for as long as this lives (also when its future is dropped
/// half-way, as when a client disconnects).
struct Running<'a> {
    set: &'a Mutex<BTreeSet<String>>,
    id: String,
}

impl<'a> Running<'a> {
    fn claim(set: &'a Mutex<BTreeSet<String>>, id: &str) -> Option<Self> {
        let mut ids = set.lock().unwrap_or_else(|p| p.into_inner());
        ids.insert(id.to_string()).then(|| Self {
            set,
            id: id.to_string(),
        })
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

/// Test hook: `LETL_CRASH_AT=<point>` ends the process at that point of a transfer, as a
/// SIGKILL would (no clean-up), so black-box tests can check recovery from each step.
fn crash_point(point: &str) {
    static CRASH_AT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let at = CRASH_AT.get_or_init(|| std::env::var("LETL_CRASH_AT").ok());
    if at.as_deref() == Some(point) {
        warn!(point, "LETL_CRASH_AT reached: exiting without clean-up");
        std::process::exit(137);
    }
}

thread_local! {
    /// The state of this thread's seeded id generator, once [`seed_request_ids`] set it.
    static SEEDED_IDS: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// From now on, ids made on this thread ([`new_request_id`]: request ids callers did not give,
/// job ids) come from a generator seeded with `seed`: the simulator runs every node on one
/// thread, and a run must replay from its seed.
pub fn seed_request_ids(seed: u64) {
    SEEDED_IDS.with(|state| state.set(Some(seed)));
}

/// Eight bytes for an id: from the seeded generator (splitmix64) if this thread has one, else
/// from the operating system.
fn id_bytes() -> [u8; 8] {
    SEEDED_IDS.with(|state| match state.get() {
        Some(current) => {
            let next = current.wrapping_add(0x9E37_79B9_7F4A_7C15);
            state.set(Some(next));
            let mut z = next;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)).to_be_bytes()
        }
        None => {
            let mut bytes = [0u8; 8];
            let _ = getrandom::fill(&mut bytes);
            bytes
        }
    })
}

/// A request id for callers that gave none: unique enough, and says when it was made.
pub(crate) fn new_request_id(now_ms: u64) -> String {
    let bytes = id_bytes();
    format!(
        "t{now_ms}-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

impl Mover {
    pub fn new(places: Places, log: Arc<dyn MoveLog>, clock: Arc<dyn Clock>) -> Self {
        Self {
            places,
            log,
            clock,
            running: Arc::new(Mutex::new(BTreeSet::new())),
        }
    }

    /// The record of one transfer, if its request id was used.
    pub fn record(&self, request_id: &str) -> Result<Option<MoveRecord>, ApiError> {
        Ok(self.log.get(request_id)?)
    }

    pub fn records(&self) -> Result<Vec<MoveRecord>, ApiError> {
        let mut all = self.log.all()?;
        all.sort_by(|a, b| {
            b.started_ms
                .cmp(&a.started_ms)
                .then(a.request_id.cmp(&b.request_id))
        });
        Ok(all)
    }

    async fn save(&self, record: &mut MoveRecord, state: MoveState) -> Result<(), ApiError> {
        record.state = state;
        record.updated_ms = self.clock.now_ms();
        self.log.put(record)?;
        self.log.flush().await?;
        Ok(())
    }

    /// Copies (or moves) `source` to `destination` under `request_id`.
    pub async fn transfer(
        &self,
        source: ObjectUri,
        destination: ObjectUri,
        remove_source: bool,
        request_id: Option<String>,
    ) -> Result<Transferred, ApiError> {
        let request_id = match request_id {
            Some(id) => {
                check_request_id(&id)?;
                id
            }
            None => new_request_id(self.clock.now_ms()),
        };
        self.transfer_as(request_id, source, destination, remove_source)
            .await
    }

    /// [`Self::transfer`] under a request id made by letl itself (a move job's item ids are
    /// longer than a caller's may be).
    pub(crate) async fn transfer_as(
        &self,
        request_id: String,
        source: ObjectUri,
        destination: ObjectUri,
        remove_source: bool,
    ) -> Result<Transferred, ApiError> {
        if source == destination {
            return Err(ApiError::bad_request(format!(
                "source and destination are the same object ({source})"
            )));
        }
        let Some(_running) = Running::claim(&self.running, &request_id) else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("request id `{request_id}` is in progress"),
            ));
        };
        self.transfer_once(&request_id, source, destination, remove_source)
            .await
    }

    async fn transfer_once(
        &self,
        request_id: &str,
        source: ObjectUri,
        destination: ObjectUri,
        remove_source: bool,
    ) -> Result<Transferred, ApiError> {
        if let Some(record) = self.log.get(request_id)? {
            if record.source != source
                || record.destination != destination
                || record.remove_source != remove_source
            {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "request id `{request_id}` was used for another transfer ({} {} -> {})",
                        if record.remove_source { "mv" } else { "cp" },
                        record.source,
                        record.destination
                    ),
                ));
            }
            return self.replay(record).await;
        }
        // Both tiers are checked before anything is recorded.
        self.places.check_tier(&source.tier)?;
        self.places.check_tier(&destination.tier)?;
        // A move between tiers on one file system can hand over the file itself, when this node
        // is the only home of both. A copy never does: two objects sharing one file would
        // change together if it were edited in place.
        let linkable = match (
            self.places.only_here(&source),
            self.places.only_here(&destination),
        ) {
            (Some(from), Some(to)) if remove_source => Some((from, to)),
            _ => None,
        };
        let local = match &linkable {
            Some((from, _)) => from.local_file(source.key.clone()).await?,
            None => None,
        };
        let (size, hash) = match &local {
            Some(file) => (file.size, file.hash),
            None => {
                let meta = self.places.head(&source).await?;
                (meta.size, meta.hash)
            }
        };
        let now = self.clock.now_ms();
        let mut record = MoveRecord {
            request_id: request_id.to_string(),
            source: source.clone(),
            destination: destination.clone(),
            remove_source,
            size,
            hash,
            state: MoveState::Copying,
            started_ms: now,
            updated_ms: now,
        };
        self.log.put(&record)?;
        self.log.flush().await?;
        crash_point("move:intent");

        let mut copied = None;
        if let (Some(file), Some((_, to))) = (local, &linkable) {
            match to.put_local_file(destination.key.clone(), file).await {
                Ok(Some(meta)) => copied = Some(Ok(meta)),
                Ok(None) => {}
                Err(e) => copied = Some(Err(e)),
            }
        }
        let copied = match copied {
            Some(linked) => linked,
            None => self.stream_copy(&record).await,
        };
        let copied = match copied {
            Ok(copied) => copied,
            Err(e) if is_clean_refusal(&e) => {
                // Refused before anything was published; the source is untouched.
                self.save(&mut record, MoveState::Failed(e.to_string()))
                    .await?;
                return Err(e.into());
            }
            Err(e) => {
                // A tier unavailable or an I/O error: the copy may even have been published
                // before the failure. The intent stays: the same request id again, or the next
                // start, finishes the transfer or redoes the copy.
                warn!(request_id, error = %e, "transfer interrupted; its request id retries it, and the next start finishes it");
                return Err(e.into());
            }
        };
        crash_point("move:copied");
        self.save(&mut record, MoveState::Copied).await?;
        crash_point("move:recorded");
        self.finish(&mut record).await?;
        crash_point("move:deleted");
        info!(request_id, %source, %destination, size, moved = remove_source, "transfer done");
        Ok(Transferred {
            request_id: request_id.to_string(),
            destination,
            meta: copied,
        })
    }

    /// Streams the source's bytes to the destination, which publishes them only if they hash
    /// to the recorded hash. The node holding the source sends them straight to the
    /// destination's homes.
    async fn stream_copy(&self, record: &MoveRecord) -> Result<ObjectMeta, StorageError> {
        self.places
            .copy(
                &record.source,
                &record.destination,
                record.size,
                record.hash,
            )
            .await
    }

    /// After `Copied`: deletes a move's source (only if it still has the copied hash), then
    /// records `Done`.
    async fn finish(&self, record: &mut MoveRecord) -> Result<(), ApiError> {
        if record.remove_source {
            match self.places.delete(&record.source, Some(record.hash)).await {
                Ok(_) | Err(StorageError::NotFound { .. }) => {}
                Err(e @ StorageError::Conflict { .. }) => {
                    // The source was rewritten after it was read: it is a new object now, and
                    // stays. The copy of the old one is at the destination.
                    warn!(request_id = %record.request_id, error = %e, "source changed during the move; kept");
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.save(record, MoveState::Done).await
    }

    /// A request id seen before: its first result, finishing it first if it was interrupted.
    async fn replay(&self, mut record: MoveRecord) -> Result<Transferred, ApiError> {
        match &record.state {
            MoveState::Failed(reason) => Err(ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "request id `{}` failed earlier: {reason}",
                    record.request_id
                ),
            )),
            MoveState::Done => self.result_of(&record).await,
            MoveState::Copying | MoveState::Copied => {
                self.recover(&mut record).await?;
                self.result_of(&record).await
            }
        }
    }

    async fn result_of(&self, record: &MoveRecord) -> Result<Transferred, ApiError> {
        if let MoveState::Failed(reason) = &record.state {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("request id `{}` failed: {reason}", record.request_id),
            ));
        }
        let meta = self.places.head(&record.destination).await?;
        Ok(Transferred {
            request_id: record.request_id.clone(),
            destination: record.destination.clone(),
            meta,
        })
    }

    /// Brings an interrupted transfer to `Done` (or `Failed`, if its source is gone and its copy
    /// never landed).
    async fn recover(&self, record: &mut MoveRecord) -> Result<(), ApiError> {
        if record.state == MoveState::Copying {
            let landed = matches!(self.places.head(&record.destination).await, Ok(m) if m.hash == record.hash);
            if !landed {
                match self.places.head(&record.source).await {
                    Ok(meta) if meta.hash == record.hash => {
                        self.stream_copy(record).await?;
                    }
                    Ok(_) | Err(StorageError::NotFound { .. }) => {
                        let reason = "interrupted, and its source changed or vanished before the copy landed";
                        self.save(record, MoveState::Failed(reason.to_string()))
                            .await?;
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            self.save(record, MoveState::Copied).await?;
        }
        if record.state == MoveState::Copied {
            self.finish(record).await?;
        }
        Ok(())
    }

    /// Finishes every transfer a previous run left unfinished. Called at start, before serving.
    pub async fn resume(&self) -> Result<(), ApiError> {
        for mut record in self.log.all()? {
            if record.is_finished() {
                continue;
            }
            let from = record.state.clone();
            match self.recover(&mut record).await {
                Ok(()) => {
                    info!(request_id = %record.request_id, from = ?from, to = ?record.state, "interrupted transfer finished")
                }
                Err(e) => {
                    warn!(request_id = %record.request_id, error = %e.message, "interrupted transfer could not be finished now; it is retried at the next start or when its request id comes again")
                }
            }
        }
        Ok(())
    }
}

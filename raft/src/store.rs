//! The raft storage (sled on disk, or memory: see `letl_storage::kv`): a log store (entries under big-endian u64 keys, plus vote,
//! committed and purged ids) and a state machine that applies commands in memory and persists
//! a snapshot of itself, from which it restarts (openraft replays committed entries after it).

// openraft's storage traits fix the error type, and it is large.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use letl_storage::StorageError;
use letl_storage::kv::{Db, KeyRange, MemoryDb, Op, Tree};

use letl_storage::codec::{decode_stored, encode_stored};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, EntryPayload, ErrorSubject, ErrorVerb, RaftLogReader, RaftSnapshotBuilder,
    StorageIOError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{
    ControlState, Entry, LogId, NodeId, RaftStorageError, Response, SnapshotMeta, StoredMembership,
    TypeConfig,
};

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";
const SNAPSHOT: &str = "snapshot";

fn io_error(subject: ErrorSubject<NodeId>, verb: ErrorVerb, e: impl ToString) -> RaftStorageError {
    StorageIOError::new(subject, verb, AnyError::error(e.to_string())).into()
}

fn log_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Appends a log store's flusher holds at once (their writers wait for room beyond this).
const FLUSH_QUEUE_MAX: usize = 1024;

/// An append waiting until the log is on disk.
struct FlushRequest {
    db: Db,
    done: LogFlushed<TypeConfig>,
}

/// Starts the thread that makes appends durable: it takes every append waiting, flushes the
/// database once for all of them, then tells each, in order. (openraft 0.9 waits for each
/// append's flush before the next, so it finds one at a time; the thread saves a blocking-task
/// hand-off per append, and would group appends with a raft that pipelines them.) The thread
/// ends when its last sender goes.
fn start_flusher() -> std::io::Result<tokio::sync::mpsc::Sender<FlushRequest>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<FlushRequest>(FLUSH_QUEUE_MAX);
    std::thread::Builder::new()
        .name("raft-log-flush".to_string())
        .spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut waiting = vec![first];
                while waiting.len() < FLUSH_QUEUE_MAX {
                    match rx.try_recv() {
                        Ok(next) => waiting.push(next),
                        Err(_) => break,
                    }
                }
                let flushed = waiting[0].db.flush_blocking().map_err(|e| e.to_string());
                for request in waiting {
                    request
                        .done
                        .log_io_completed(flushed.clone().map_err(std::io::Error::other));
                }
            }
        })?;
    Ok(tx)
}

/// The raft database of one node (its own sled database, apart from the object index).
#[derive(Clone, Debug)]
pub struct RaftDb {
    db: Db,
}

impl RaftDb {
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        Ok(Self { db: Db::open(dir)? })
    }

    /// A database removed when dropped (unit tests).
    pub fn temporary() -> Result<Self, StorageError> {
        Ok(Self {
            db: Db::temporary()?,
        })
    }

    /// A database in `memory`, which outlives this handle: a node opened on it again finds
    /// its vote, log and snapshot (the simulator's restarted hosts).
    pub fn memory(memory: MemoryDb) -> Self {
        Self {
            db: Db::Memory(memory),
        }
    }

    /// The log store and the state machine over this database.
    pub fn stores(&self) -> Result<(LogStore, StateMachineStore), RaftStorageError> {
        let tree = |name: &str| {
            self.db
                .tree(name)
                .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Read, e))
        };
        // A memory log is durable once written: its appends complete at once.
        let flusher = match &self.db {
            Db::Sled(_) => Some(
                start_flusher().map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?,
            ),
            Db::Memory(_) => None,
        };
        let log = LogStore {
            db: self.db.clone(),
            log: tree("raft-log")?,
            meta: tree("raft-meta")?,
            committed: Arc::new(Mutex::new(None)),
            flusher,
        };
        let machine = StateMachineStore::open(self.db.clone(), tree("raft-machine")?)?;
        Ok((log, machine))
    }

    /// Whether this database holds any raft state (a vote or a log).
    pub fn is_empty(&self) -> Result<bool, StorageError> {
        Ok(self.db.tree("raft-meta")?.is_empty() && self.db.tree("raft-log")?.is_empty())
    }
}

/// The raft log.
#[derive(Clone, Debug)]
pub struct LogStore {
    db: Db,
    log: Tree,
    meta: Tree,
    /// The last committed id openraft saved: for status.
    committed: Arc<Mutex<Option<LogId>>>,
    /// Makes appends durable, several per flush (none for a memory log).
    flusher: Option<tokio::sync::mpsc::Sender<FlushRequest>>,
}

impl LogStore {
    fn get_meta<T: for<'de> Deserialize<'de>>(
        &self,
        key: &str,
        subject: ErrorSubject<NodeId>,
    ) -> Result<Option<T>, RaftStorageError> {
        self.meta
            .get(key.as_bytes())
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Read, e))?
            .map(|v| decode_stored(&v).map_err(|e| io_error(subject, ErrorVerb::Read, e)))
            .transpose()
    }

    async fn put_meta<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        subject: ErrorSubject<NodeId>,
    ) -> Result<(), RaftStorageError> {
        let bytes =
            encode_stored(value).map_err(|e| io_error(subject.clone(), ErrorVerb::Write, e))?;
        self.meta
            .insert(key.as_bytes(), bytes)
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Write, e))?;
        self.db
            .flush()
            .await
            .map_err(|e| io_error(subject, ErrorVerb::Write, e))
    }

    /// Removes the log entries between `start` and `end`, in one batch.
    fn remove(&self, start: Bound<Vec<u8>>, end: Bound<Vec<u8>>) -> Result<(), RaftStorageError> {
        let write = |e: StorageError| io_error(ErrorSubject::Logs, ErrorVerb::Write, e);
        let doomed = self
            .log
            .range((start, end))
            .map(|item| item.map(|(key, _)| Op::Remove(key)))
            .collect::<Result<Vec<Op>, StorageError>>()
            .map_err(write)?;
        self.log.apply(doomed).map_err(write)
    }

    /// The last committed log id this node knows of.
    pub fn committed(&self) -> Option<LogId> {
        *self.committed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, RaftStorageError> {
        let bound = |b: Bound<&u64>| match b {
            Bound::Included(i) => Bound::Included(log_key(*i).to_vec()),
            Bound::Excluded(i) => Bound::Excluded(log_key(*i).to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        let keys: KeyRange = (bound(range.start_bound()), bound(range.end_bound()));
        let mut entries = Vec::new();
        for item in self.log.range(keys) {
            let (_, value) = item.map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            entries.push(
                decode_stored(&value)
                    .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?,
            );
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, RaftStorageError> {
        let last_purged: Option<LogId> = self.get_meta(PURGED, ErrorSubject::Logs)?;
        let last_entry = match self
            .log
            .last_value()
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?
        {
            Some(value) => Some(
                decode_stored::<Entry>(&value)
                    .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Read, e))?
                    .log_id,
            ),
            None => None,
        };
        // A purge's removals may not have reached the disk before a crash: whatever is left
        // at or below the purged id does not count.
        let last = last_entry.max(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &openraft::Vote<NodeId>) -> Result<(), RaftStorageError> {
        self.put_meta(VOTE, vote, ErrorSubject::Vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<openraft::Vote<NodeId>>, RaftStorageError> {
        self.get_meta(VOTE, ErrorSubject::Vote)
    }

    /// Kept without a flush of its own: it reaches the disk with the next log flush. After a
    /// crash a stale committed id only means less of the log is applied at start; the rest is
    /// applied once a leader commits again (openraft allows this id to lag).
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), RaftStorageError> {
        *self.committed.lock().unwrap_or_else(|p| p.into_inner()) = committed;
        let bytes = encode_stored(&committed)
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        self.meta
            .insert(COMMITTED.as_bytes(), bytes)
            .map_err(|e| io_error(ErrorSubject::Store, ErrorVerb::Write, e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, RaftStorageError> {
        let committed: Option<Option<LogId>> = self.get_meta(COMMITTED, ErrorSubject::Store)?;
        let committed = committed.flatten();
        *self.committed.lock().unwrap_or_else(|p| p.into_inner()) = committed;
        Ok(committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = Vec::new();
        for entry in entries {
            let value = encode_stored(&entry)
                .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            batch.push(Op::Insert(log_key(entry.log_id.index).to_vec(), value));
        }
        self.log
            .apply(batch)
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        // The callback says the entries are durable: the flusher calls it after its flush.
        let Some(flusher) = &self.flusher else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let request = FlushRequest {
            db: self.db.clone(),
            done: callback,
        };
        flusher.send(request).await.map_err(|_| {
            io_error(
                ErrorSubject::Logs,
                ErrorVerb::Write,
                "the log flusher stopped",
            )
        })
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        self.remove(
            Bound::Included(log_key(log_id.index).to_vec()),
            Bound::Unbounded,
        )?;
        self.db
            .flush()
            .await
            .map_err(|e| io_error(ErrorSubject::Logs, ErrorVerb::Write, e))
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), RaftStorageError> {
        // The purged id is saved first: a crash between the two leaves entries that
        // get_log_state ignores, never a gap.
        self.put_meta(PURGED, &log_id, ErrorSubject::Logs).await?;
        self.remove(
            Bound::Unbounded,
            Bound::Included(log_key(log_id.index).to_vec()),
        )
    }
}

/// A snapshot as kept in the database.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// What the state machine holds; one lock covers all of it, so a snapshot copies a consistent
/// state, applied id and membership while `apply` goes on.
#[derive(Debug, Default)]
struct Machine {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: ControlState,
    snapshots_built: u64,
}

/// The control state machine.
#[derive(Clone, Debug)]
pub struct StateMachineStore {
    db: Db,
    tree: Tree,
    machine: Arc<Mutex<Machine>>,
    /// Held while a snapshot is compared with the saved one and saved.
    saving: Arc<Mutex<()>>,
    /// The last applied index, for readers that wait for an index.
    applied: watch::Sender<u64>,
}

impl StateMachineStore {
    fn open(db: Db, tree: Tree) -> Result<Self, RaftStorageError> {
        let mut machine = Machine::default();
        if let Some(stored) = tree
            .get(SNAPSHOT.as_bytes())
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?
        {
            let stored: StoredSnapshot = decode_stored(&stored)
                .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
            machine.state = decode_stored(&stored.data)
                .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
            machine.last_applied = stored.meta.last_log_id;
            machine.membership = stored.meta.last_membership;
        }
        let applied = machine.last_applied.map_or(0, |id| id.index);
        Ok(Self {
            db,
            tree,
            machine: Arc::new(Mutex::new(machine)),
            saving: Arc::new(Mutex::new(())),
            applied: watch::channel(applied).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Machine> {
        self.machine.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the applied state.
    pub fn read<T>(&self, f: impl FnOnce(&ControlState) -> T) -> T {
        f(&self.lock().state)
    }

    /// Reads the applied state and the last applied index together.
    pub fn read_applied<T>(&self, f: impl FnOnce(&ControlState) -> T) -> (u64, T) {
        let machine = self.lock();
        (
            machine.last_applied.map_or(0, |id| id.index),
            f(&machine.state),
        )
    }

    /// The last applied log id.
    pub fn last_applied(&self) -> Option<LogId> {
        self.lock().last_applied
    }

    /// Follows the last applied index.
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Saves a snapshot unless a later one is saved already: a build of an older point that
    /// finishes after a newer snapshot was installed must not replace it (the log before the
    /// newer one may be purged).
    async fn save_snapshot(&self, stored: &StoredSnapshot) -> Result<(), RaftStorageError> {
        let subject = || ErrorSubject::Snapshot(Some(stored.meta.signature()));
        let bytes = encode_stored(stored).map_err(|e| io_error(subject(), ErrorVerb::Write, e))?;
        {
            let _saving = self.saving.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(current) = self
                .tree
                .get(SNAPSHOT.as_bytes())
                .map_err(|e| io_error(subject(), ErrorVerb::Read, e))?
            {
                let current: StoredSnapshot =
                    decode_stored(&current).map_err(|e| io_error(subject(), ErrorVerb::Read, e))?;
                if current.meta.last_log_id > stored.meta.last_log_id {
                    return Ok(());
                }
            }
            self.tree
                .insert(SNAPSHOT.as_bytes(), bytes)
                .map_err(|e| io_error(subject(), ErrorVerb::Write, e))?;
        }
        self.db
            .flush()
            .await
            .map_err(|e| io_error(subject(), ErrorVerb::Write, e))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, RaftStorageError> {
        let (meta, state) = {
            let mut machine = self.lock();
            machine.snapshots_built += 1;
            let state = machine.state.clone();
            let snapshot_id = match machine.last_applied {
                Some(id) => format!(
                    "{}-{}-{}",
                    id.leader_id.term, id.index, machine.snapshots_built
                ),
                None => format!("0-0-{}", machine.snapshots_built),
            };
            let meta = SnapshotMeta {
                last_log_id: machine.last_applied,
                last_membership: machine.membership.clone(),
                snapshot_id,
            };
            (meta, state)
        };
        let data = encode_stored(&state)
            .map_err(|e| io_error(ErrorSubject::StateMachine, ErrorVerb::Read, e))?;
        let stored = StoredSnapshot { meta, data };
        self.save_snapshot(&stored).await?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership), RaftStorageError> {
        let machine = self.lock();
        Ok((machine.last_applied, machine.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, RaftStorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut responses = Vec::new();
        let last = {
            let mut machine = self.lock();
            for entry in entries {
                machine.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => Response::Done,
                    EntryPayload::Normal(command) => machine.state.apply(command),
                    EntryPayload::Membership(membership) => {
                        machine.membership = StoredMembership::new(Some(entry.log_id), membership);
                        Response::Done
                    }
                };
                responses.push(response);
            }
            machine.last_applied.map_or(0, |id| id.index)
        };
        self.applied.send_replace(last);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, RaftStorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), RaftStorageError> {
        let data = snapshot.into_inner();
        let state: ControlState = decode_stored(&data).map_err(|e| {
            io_error(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                e,
            )
        })?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        // Durable first: a crash after this restarts from the installed snapshot.
        self.save_snapshot(&stored).await?;
        let last = {
            let mut machine = self.lock();
            machine.state = state;
            machine.last_applied = meta.last_log_id;
            machine.membership = meta.last_membership.clone();
            machine.last_applied.map_or(0, |id| id.index)
        };
        self.applied.send_replace(last);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, RaftStorageError> {
        let Some(bytes) = self
            .tree
            .get(SNAPSHOT.as_bytes())
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?
        else {
            return Ok(None);
        };
        let stored: StoredSnapshot = decode_stored(&bytes)
            .map_err(|e| io_error(ErrorSubject::Snapshot(None), ErrorVerb::Read, e))?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::*;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), RaftStorageError> {
            let dir = tempfile::tempdir().unwrap();
            let (log, machine) = RaftDb::open(dir.path()).unwrap().stores()?;
            Ok((dir, log, machine))
        }
    }

    #[test]
    fn the_sled_store_passes_openraft_suite() {
        Suite::test_all(Builder).unwrap();
    }

    struct MemoryBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, ()> for MemoryBuilder {
        async fn build(&self) -> Result<((), LogStore, StateMachineStore), RaftStorageError> {
            let (log, machine) = RaftDb::memory(MemoryDb::default()).stores()?;
            Ok(((), log, machine))
        }
    }

    #[test]
    fn the_memory_store_passes_openraft_suite() {
        Suite::test_all(MemoryBuilder).unwrap();
    }

    #[tokio::test]
    async fn a_memory_database_outlives_its_stores() {
        let memory = MemoryDb::default();
        let db = RaftDb::memory(memory.clone());
        assert!(db.is_empty().unwrap());
        let (mut log, _) = db.stores().unwrap();
        let vote = openraft::Vote::new(3, 2);
        log.save_vote(&vote).await.unwrap();
        drop(log);
        let again = RaftDb::memory(memory);
        assert!(!again.is_empty().unwrap());
        let (mut log, _) = again.stores().unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
    }
}

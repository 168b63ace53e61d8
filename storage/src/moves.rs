//! The move log: one durable record per copy or move between tiers, keyed by request id, so a
//! move interrupted by a crash is finished at the next start and a repeated request id returns
//! the first result. Node-local for now; the raft control plane takes it over later.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Result, StorageError};
use crate::hash::ContentHash;
use crate::kv::Tree;
use crate::uri::ObjectUri;

/// Longest request id.
pub const REQUEST_ID_BYTES_MAX: usize = 128;

/// Where a move stands. Each state is recorded durably before the step after it starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveState {
    /// The intent is recorded; the destination may or may not hold the copy yet.
    Copying,
    /// The destination holds a verified copy; the source may still exist.
    Copied,
    /// Finished: the destination holds the object (and a move's source is gone).
    Done,
    /// Given up, with the reason; the source was never deleted.
    Failed(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRecord {
    pub request_id: String,
    pub source: ObjectUri,
    pub destination: ObjectUri,
    /// A move (true) or a copy (false).
    pub remove_source: bool,
    /// The source's size and hash when the move began: what the destination must hold.
    pub size: u64,
    pub hash: ContentHash,
    pub state: MoveState,
    pub started_ms: u64,
    pub updated_ms: u64,
}

impl MoveRecord {
    pub fn is_finished(&self) -> bool {
        matches!(self.state, MoveState::Done | MoveState::Failed(_))
    }
}

/// Checks a caller's request id: 1 to 128 of `A-Z a-z 0-9 . _ - :`.
pub fn check_request_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= REQUEST_ID_BYTES_MAX
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'));
    if ok {
        Ok(())
    } else {
        Err(StorageError::InvalidRequestId {
            id: crate::uri::shorten(id),
            reason: "a request id is 1 to 128 of A-Z, a-z, 0-9, '.', '_', '-', ':'".to_string(),
        })
    }
}

#[async_trait::async_trait]
pub trait MoveLog: Send + Sync + Debug + 'static {
    fn get(&self, request_id: &str) -> Result<Option<MoveRecord>>;
    fn put(&self, record: &MoveRecord) -> Result<()>;
    /// Every record, in request-id order.
    fn all(&self) -> Result<Vec<MoveRecord>>;
    async fn flush(&self) -> Result<()>;
}

/// The move log in the node's database.
#[derive(Debug, Clone)]
pub struct DbMoveLog {
    tree: Tree,
}

impl crate::index::IndexDb {
    pub fn moves(&self) -> Result<DbMoveLog> {
        Ok(DbMoveLog {
            tree: self.open_tree("moves")?,
        })
    }
}

#[async_trait::async_trait]
impl MoveLog for DbMoveLog {
    fn get(&self, request_id: &str) -> Result<Option<MoveRecord>> {
        self.tree
            .get(request_id.as_bytes())?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    fn put(&self, record: &MoveRecord) -> Result<()> {
        self.tree
            .insert(record.request_id.as_bytes(), codec::encode(record)?)?;
        Ok(())
    }

    fn all(&self) -> Result<Vec<MoveRecord>> {
        self.tree
            .iter()
            .map(|item| codec::decode(&item?.1))
            .collect()
    }

    async fn flush(&self) -> Result<()> {
        self.tree.flush().await
    }
}

/// The move log's in-memory twin.
#[derive(Debug, Default)]
pub struct MemoryMoveLog {
    records: Mutex<BTreeMap<String, MoveRecord>>,
}

impl MemoryMoveLog {
    fn records(&self) -> MutexGuard<'_, BTreeMap<String, MoveRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait::async_trait]
impl MoveLog for MemoryMoveLog {
    fn get(&self, request_id: &str) -> Result<Option<MoveRecord>> {
        Ok(self.records().get(request_id).cloned())
    }

    fn put(&self, record: &MoveRecord) -> Result<()> {
        self.records()
            .insert(record.request_id.clone(), record.clone());
        Ok(())
    }

    fn all(&self) -> Result<Vec<MoveRecord>> {
        Ok(self.records().values().cloned().collect())
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_checked() {
        for ok in ["a", "move-2026-11-21:1", &"x".repeat(128)] {
            check_request_id(ok).unwrap();
        }
        for bad in ["", "a b", "a/b", &"x".repeat(129)] {
            assert!(check_request_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sled_move_log_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::index::IndexDb::open(&dir.path().join("index")).unwrap();
        let log = db.moves().unwrap();
        let record = MoveRecord {
            request_id: "r1".to_string(),
            source: ObjectUri::parse("ssd:/a").unwrap(),
            destination: ObjectUri::parse("hdd:/a").unwrap(),
            remove_source: true,
            size: 3,
            hash: ContentHash::of(b"abc"),
            state: MoveState::Failed("no".to_string()),
            started_ms: 1,
            updated_ms: 2,
        };
        log.put(&record).unwrap();
        assert_eq!(log.get("r1").unwrap(), Some(record.clone()));
        assert_eq!(log.all().unwrap(), vec![record]);
        assert_eq!(log.get("r2").unwrap(), None);
    }
}

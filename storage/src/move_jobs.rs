//! Move jobs: a copy or move of every object under a prefix, run as one job with progress.
//!
//! A job lists its source once, when it is created, into a durable item list; then it transfers
//! item after item, each through the move log under a request id derived from the job's and
//! the item's number, so an interrupted job resumes where it stood and no object moves twice.
//! Node-local for now; the raft control plane takes it over later.

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Result, StorageError};
use crate::kv::{Op, Tree};
use crate::uri::{ObjectKey, PrefixUri};

/// Most objects one job takes: a larger prefix is refused, naming the bound, so that a job's
/// item list and its progress stay a size one node handles in one go.
pub const MOVE_JOB_OBJECTS_MAX: u64 = 1_000_000;
/// Failures a job keeps with their reasons; past this it only counts them.
pub const MOVE_JOB_FAILURES_KEPT: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MoveJobState {
    Running,
    /// Every item was tried; some may have failed (see `failures`).
    Done,
}

/// An object that could not be transferred, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveJobFailure {
    pub key: ObjectKey,
    pub error: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveJob {
    pub request_id: String,
    pub source: PrefixUri,
    pub destination: PrefixUri,
    pub remove_source: bool,
    pub state: MoveJobState,
    pub objects_total: u64,
    pub bytes_total: u64,
    /// Items tried so far, in list order: the next one to try is `objects_tried`.
    pub objects_tried: u64,
    pub objects_done: u64,
    pub bytes_done: u64,
    pub objects_failed: u64,
    /// The first [`MOVE_JOB_FAILURES_KEPT`] failures.
    pub failures: Vec<MoveJobFailure>,
    pub started_ms: u64,
    pub updated_ms: u64,
}

impl MoveJob {
    /// The request id of item `n`'s own transfer in the move log. `#` is in no caller's
    /// request id, so these never meet one.
    pub fn item_request_id(&self, n: u64) -> String {
        format!("{}#{n}", self.request_id)
    }
}

/// One object of a job's listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveJobItem {
    pub key: ObjectKey,
    pub size: u64,
}

/// Jobs by request id, and their item lists keyed by request id and item number.
#[derive(Debug, Clone)]
pub struct DbMoveJobs {
    jobs: Tree,
    items: Tree,
}

impl crate::index::IndexDb {
    pub fn move_jobs(&self) -> Result<DbMoveJobs> {
        Ok(DbMoveJobs {
            jobs: self.open_tree("move-jobs")?,
            items: self.open_tree("move-job-items")?,
        })
    }
}

/// `<request id> 0x00 <n, big-endian>`: a job's items are contiguous and in order. Request ids
/// never contain a NUL byte.
fn item_key(request_id: &str, n: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(request_id.len() + 9);
    key.extend_from_slice(request_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&n.to_be_bytes());
    key
}

impl DbMoveJobs {
    pub fn get(&self, request_id: &str) -> Result<Option<MoveJob>> {
        self.jobs
            .get(request_id.as_bytes())?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    /// Every job, in request-id order.
    pub fn all(&self) -> Result<Vec<MoveJob>> {
        self.jobs
            .iter()
            .map(|item| codec::decode(&item?.1))
            .collect()
    }

    /// Writes items `first..` of a job being created, in one batch. Items go in before the
    /// job itself, so a job that exists has its whole list.
    pub fn put_items(&self, request_id: &str, first: u64, items: &[MoveJobItem]) -> Result<()> {
        let mut batch = Vec::new();
        for (n, item) in (first..).zip(items) {
            batch.push(Op::Insert(item_key(request_id, n), codec::encode(item)?));
        }
        self.items.apply(batch)
    }

    /// Removes item lists nobody needs: those of finished jobs, and those a creation left
    /// behind without its job (it failed, or the node died while listing). Returns how many
    /// items went.
    pub fn sweep_items(&self) -> Result<u64> {
        let mut removed = 0;
        let mut current: Option<(Vec<u8>, bool)> = None;
        for item in self.items.iter() {
            let (key, _) = item?;
            let id = key.split(|&b| b == 0).next().unwrap_or_default().to_vec();
            let needed = match &current {
                Some((known, needed)) if *known == id => *needed,
                _ => {
                    let job = match std::str::from_utf8(&id) {
                        Ok(text) => self.get(text)?,
                        Err(_) => None,
                    };
                    let needed = job.is_some_and(|j| j.state == MoveJobState::Running);
                    current = Some((id, needed));
                    needed
                }
            };
            if !needed {
                self.items.remove(&key)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes the items of a job whose creation did not finish (before listing it again).
    pub fn clear_items(&self, request_id: &str) -> Result<()> {
        let mut prefix = request_id.as_bytes().to_vec();
        prefix.push(0);
        for item in self.items.scan_prefix(&prefix) {
            self.items.remove(&item?.0)?;
        }
        Ok(())
    }

    pub fn item(&self, request_id: &str, n: u64) -> Result<MoveJobItem> {
        match self.items.get(&item_key(request_id, n))? {
            Some(v) => codec::decode(&v),
            None => Err(StorageError::Index(format!(
                "move job `{request_id}` has no item {n}"
            ))),
        }
    }

    pub fn put(&self, job: &MoveJob) -> Result<()> {
        self.jobs
            .insert(job.request_id.as_bytes(), codec::encode(job)?)?;
        Ok(())
    }

    pub async fn flush(&self) -> Result<()> {
        self.items.flush().await?;
        self.jobs.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_and_their_items_round_trip_and_clear() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::index::IndexDb::open(&dir.path().join("index")).unwrap();
        let jobs = db.move_jobs().unwrap();
        let item = |k: &str| MoveJobItem {
            key: ObjectKey::new(k).unwrap(),
            size: 7,
        };
        // Two ids where one is a prefix of the other: their items must not mix.
        let items = |p: &str| {
            (0..3)
                .map(|n| item(&format!("{p}/{n}")))
                .collect::<Vec<_>>()
        };
        jobs.put_items("j", 0, &items("a")).unwrap();
        jobs.put_items("j1", 0, &items("b")).unwrap();
        jobs.put_items("orphan", 0, &items("c")).unwrap();
        let job = MoveJob {
            request_id: "j".to_string(),
            source: PrefixUri::parse("ssd:/a/").unwrap(),
            destination: PrefixUri::parse("hdd:/").unwrap(),
            remove_source: true,
            state: MoveJobState::Running,
            objects_total: 3,
            bytes_total: 21,
            objects_tried: 0,
            objects_done: 0,
            bytes_done: 0,
            objects_failed: 0,
            failures: Vec::new(),
            started_ms: 1,
            updated_ms: 1,
        };
        jobs.put(&job).unwrap();
        jobs.flush().await.unwrap();
        assert_eq!(jobs.get("j").unwrap(), Some(job.clone()));
        assert_eq!(jobs.all().unwrap(), vec![job.clone()]);
        assert_eq!(jobs.item("j", 2).unwrap(), item("a/2"));
        assert_eq!(job.item_request_id(2), "j#2");
        // Items of a running job stay; those without a job go.
        assert_eq!(jobs.sweep_items().unwrap(), 6);
        assert_eq!(jobs.item("j", 1).unwrap(), item("a/1"));
        assert!(jobs.item("j1", 0).is_err());
        jobs.put(&MoveJob {
            state: MoveJobState::Done,
            ..job
        })
        .unwrap();
        assert_eq!(jobs.sweep_items().unwrap(), 3);
        jobs.put_items("k", 0, &items("d")).unwrap();
        jobs.clear_items("k").unwrap();
        assert!(jobs.item("k", 0).is_err());
    }
}

//! The object index: key -> size, hash, times, version, one per tier. On sled in a node, in a
//! `BTreeMap` in tests and the simulator.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::codec;
use crate::error::{Result, StorageError};
use crate::hash::ContentHash;
use crate::kv::{Db, MemoryDb, Tree};
use crate::uri::{KeyPrefix, ObjectKey, TierName};

/// What letl knows about an object beyond its bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    pub size: u64,
    pub hash: ContentHash,
    pub created_ms: u64,
    pub modified_ms: u64,
    /// 1 for a new object, one more on each overwrite.
    pub version: u64,
    /// The backend's stamp of the bytes this entry describes (see `BackendObject::stamp`): an
    /// object whose stamp differs was replaced without this entry, and is rehashed at start.
    pub stamp: u64,
}

impl ObjectMeta {
    /// Whether this version of an object supersedes `other`, a version of the same URI held
    /// elsewhere: the later write wins (`modified_ms`, which a copy between nodes keeps and an
    /// overwrite always raises), and of two written in the same millisecond the one with the
    /// greater hash, so that every node picks the same.
    pub fn supersedes(&self, other: &ObjectMeta) -> bool {
        (self.modified_ms, self.hash.as_bytes()) > (other.modified_ms, other.hash.as_bytes())
    }
}

#[async_trait::async_trait]
pub trait ObjectIndex: Send + Sync + Debug + 'static {
    fn get(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>>;

    /// Inserts or replaces, returning what was there.
    fn insert(&self, key: &ObjectKey, meta: &ObjectMeta) -> Result<Option<ObjectMeta>>;

    fn remove(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>>;

    /// Entries under `prefix` after `start_after`, in key order, at most `limit`.
    fn list(
        &self,
        prefix: &KeyPrefix,
        start_after: Option<&ObjectKey>,
        limit: usize,
    ) -> Result<Vec<(ObjectKey, ObjectMeta)>>;

    /// Number of objects and their total size (a full scan: for start-up, not per request).
    fn totals(&self) -> Result<(u64, u64)>;

    /// When `key` was last deleted, while that is remembered: its tombstone, which orders the
    /// deletion against versions of the object on other nodes (see `ObjectMeta::supersedes`).
    fn tombstone(&self, key: &ObjectKey) -> Result<Option<u64>>;

    /// Remembers that `key` was deleted at `deleted_ms`; `None` forgets it.
    fn set_tombstone(&self, key: &ObjectKey, deleted_ms: Option<u64>) -> Result<()>;

    /// Tombstones after `start_after`, in key order, at most `limit`.
    fn tombstones(
        &self,
        start_after: Option<&ObjectKey>,
        limit: usize,
    ) -> Result<Vec<(ObjectKey, u64)>>;

    /// Makes every write so far durable.
    async fn flush(&self) -> Result<()>;
}

/// One database per node (sled; memory in the simulator); each tier's index is a tree in it,
/// next to the move log, move jobs and records.
#[derive(Debug, Clone)]
pub struct IndexDb {
    db: Db,
}

/// How long opening waits for the database lock: a previous holder (a node still exiting, or
/// sled's flusher thread after the last handle in this process was dropped) lets go shortly.
const INDEX_LOCK_WAIT: Duration = Duration::from_secs(10);
const INDEX_LOCK_RETRY: Duration = Duration::from_millis(50);

impl IndexDb {
    /// Opens (creating) the node's index database. Blocks: call it off the async threads.
    pub fn open(path: &Path) -> Result<Self> {
        let deadline = Instant::now() + INDEX_LOCK_WAIT;
        loop {
            match Db::open(path) {
                Ok(db) => return Ok(Self { db }),
                // sled reports a held lock as an `Other` error with this text (sled 0.34).
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                    if Instant::now() >= deadline {
                        return Err(StorageError::Index(format!(
                            "{} is locked by another process: is another letl node running on this data dir?",
                            path.display()
                        )));
                    }
                    std::thread::sleep(INDEX_LOCK_RETRY);
                }
                Err(e) => return Err(StorageError::Index(format!("open {}: {e}", path.display()))),
            }
        }
    }

    /// A database in `memory`, which outlives this handle (the simulator's nodes).
    pub fn memory(memory: MemoryDb) -> Self {
        Self {
            db: Db::Memory(memory),
        }
    }

    pub fn tier(&self, tier: &TierName) -> Result<DbIndex> {
        let tree = self.db.tree(&format!("tier/{tier}"))?;
        let tombstones = self.db.tree(&format!("tombstones/{tier}"))?;
        Ok(DbIndex { tree, tombstones })
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush_blocking()
    }

    pub(crate) fn open_tree(&self, name: &str) -> Result<Tree> {
        self.db.tree(name)
    }
}

/// A tier's index in the node's [`IndexDb`].
#[derive(Debug, Clone)]
pub struct DbIndex {
    tree: Tree,
    tombstones: Tree,
}

fn key_of(bytes: &[u8]) -> Result<ObjectKey> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| StorageError::Index(format!("stored key is not UTF-8: {e}")))?;
    ObjectKey::new(text)
}

#[async_trait::async_trait]
impl ObjectIndex for DbIndex {
    fn get(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>> {
        self.tree
            .get(key.as_str().as_bytes())?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    fn insert(&self, key: &ObjectKey, meta: &ObjectMeta) -> Result<Option<ObjectMeta>> {
        self.tree
            .insert(key.as_str().as_bytes(), codec::encode(meta)?)?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    fn remove(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>> {
        self.tree
            .remove(key.as_str().as_bytes())?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    fn list(
        &self,
        prefix: &KeyPrefix,
        start_after: Option<&ObjectKey>,
        limit: usize,
    ) -> Result<Vec<(ObjectKey, ObjectMeta)>> {
        let lower = lower_bound(prefix, start_after);
        let mut out = Vec::new();
        let lower = match lower {
            Bound::Included(s) => Bound::Included(s.as_bytes().to_vec()),
            Bound::Excluded(s) => Bound::Excluded(s.as_bytes().to_vec()),
            Bound::Unbounded => Bound::Unbounded,
        };
        for item in self.tree.range((lower, Bound::Unbounded)) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            if !k.starts_with(prefix.as_str().as_bytes()) {
                break;
            }
            out.push((key_of(&k)?, codec::decode(&v)?));
        }
        Ok(out)
    }

    fn totals(&self) -> Result<(u64, u64)> {
        let mut objects = 0;
        let mut bytes = 0;
        for item in self.tree.iter() {
            let (_, v) = item?;
            let meta: ObjectMeta = codec::decode(&v)?;
            objects += 1;
            bytes += meta.size;
        }
        Ok((objects, bytes))
    }

    fn tombstone(&self, key: &ObjectKey) -> Result<Option<u64>> {
        self.tombstones
            .get(key.as_str().as_bytes())?
            .map(|v| codec::decode(&v))
            .transpose()
    }

    fn set_tombstone(&self, key: &ObjectKey, deleted_ms: Option<u64>) -> Result<()> {
        let key = key.as_str().as_bytes();
        match deleted_ms {
            Some(at) => self.tombstones.insert(key, codec::encode(&at)?)?,
            None => self.tombstones.remove(key)?,
        };
        Ok(())
    }

    fn tombstones(
        &self,
        start_after: Option<&ObjectKey>,
        limit: usize,
    ) -> Result<Vec<(ObjectKey, u64)>> {
        let lower = match start_after {
            Some(after) => Bound::Excluded(after.as_str().as_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in self.tombstones.range((lower, Bound::Unbounded)) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item?;
            out.push((key_of(&k)?, codec::decode(&v)?));
        }
        Ok(out)
    }

    async fn flush(&self) -> Result<()> {
        // One database: flushing one tree makes every tree's writes durable.
        self.tree.flush().await
    }
}

/// Where a listing starts: at the prefix, or just after `start_after` if that is further on.
fn lower_bound<'a>(prefix: &'a KeyPrefix, start_after: Option<&'a ObjectKey>) -> Bound<&'a str> {
    match start_after {
        Some(after) if after.as_str() >= prefix.as_str() => Bound::Excluded(after.as_str()),
        _ => Bound::Included(prefix.as_str()),
    }
}

/// The index's in-memory twin.
#[derive(Debug, Default)]
pub struct MemoryIndex {
    entries: Mutex<BTreeMap<String, ObjectMeta>>,
    tombstones: Mutex<BTreeMap<String, u64>>,
}

impl MemoryIndex {
    fn entries(&self) -> MutexGuard<'_, BTreeMap<String, ObjectMeta>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn tombstones(&self) -> MutexGuard<'_, BTreeMap<String, u64>> {
        self.tombstones
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait::async_trait]
impl ObjectIndex for MemoryIndex {
    fn get(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>> {
        Ok(self.entries().get(key.as_str()).cloned())
    }

    fn insert(&self, key: &ObjectKey, meta: &ObjectMeta) -> Result<Option<ObjectMeta>> {
        Ok(self.entries().insert(key.to_string(), meta.clone()))
    }

    fn remove(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>> {
        Ok(self.entries().remove(key.as_str()))
    }

    fn list(
        &self,
        prefix: &KeyPrefix,
        start_after: Option<&ObjectKey>,
        limit: usize,
    ) -> Result<Vec<(ObjectKey, ObjectMeta)>> {
        let lower = lower_bound(prefix, start_after);
        let entries = self.entries();
        let mut out = Vec::new();
        for (k, v) in entries.range::<str, _>((lower, Bound::Unbounded)) {
            if out.len() >= limit || !k.starts_with(prefix.as_str()) {
                break;
            }
            out.push((ObjectKey::new(k.clone())?, v.clone()));
        }
        Ok(out)
    }

    fn totals(&self) -> Result<(u64, u64)> {
        let entries = self.entries();
        Ok((entries.len() as u64, entries.values().map(|m| m.size).sum()))
    }

    fn tombstone(&self, key: &ObjectKey) -> Result<Option<u64>> {
        Ok(self.tombstones().get(key.as_str()).copied())
    }

    fn set_tombstone(&self, key: &ObjectKey, deleted_ms: Option<u64>) -> Result<()> {
        match deleted_ms {
            Some(at) => self.tombstones().insert(key.to_string(), at),
            None => self.tombstones().remove(key.as_str()),
        };
        Ok(())
    }

    fn tombstones(
        &self,
        start_after: Option<&ObjectKey>,
        limit: usize,
    ) -> Result<Vec<(ObjectKey, u64)>> {
        let lower = match start_after {
            Some(after) => Bound::Excluded(after.as_str()),
            None => Bound::Unbounded,
        };
        let tombstones = MemoryIndex::tombstones(self);
        tombstones
            .range::<str, _>((lower, Bound::Unbounded))
            .take(limit)
            .map(|(k, at)| Ok((ObjectKey::new(k.clone())?, *at)))
            .collect()
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(size: u64) -> ObjectMeta {
        ObjectMeta {
            size,
            hash: ContentHash::of(&size.to_le_bytes()),
            created_ms: 1,
            modified_ms: 2,
            version: 1,
            stamp: size,
        }
    }

    fn exercise(index: &dyn ObjectIndex) {
        for key in ["a/1", "a/2", "a-b", "b/1", "a/3"] {
            index
                .insert(&ObjectKey::new(key).unwrap(), &meta(key.len() as u64))
                .unwrap();
        }
        let keys = |prefix: &str, after: Option<&str>, limit| -> Vec<String> {
            let after = after.map(|a| ObjectKey::new(a).unwrap());
            index
                .list(&KeyPrefix::new(prefix).unwrap(), after.as_ref(), limit)
                .unwrap()
                .into_iter()
                .map(|(k, _)| k.to_string())
                .collect()
        };
        assert_eq!(keys("", None, 100), ["a-b", "a/1", "a/2", "a/3", "b/1"]);
        assert_eq!(keys("a/", None, 2), ["a/1", "a/2"]);
        assert_eq!(keys("a/", Some("a/2"), 10), ["a/3"]);
        assert_eq!(keys("a/", Some("0"), 10), ["a/1", "a/2", "a/3"]);
        assert_eq!(keys("b", Some("z"), 10), Vec::<String>::new());
        assert_eq!(index.totals().unwrap(), (5, 3 + 3 + 3 + 3 + 3));
        let k = ObjectKey::new("a/2").unwrap();
        assert_eq!(index.remove(&k).unwrap(), Some(meta(3)));
        assert_eq!(index.get(&k).unwrap(), None);

        index.set_tombstone(&k, Some(7)).unwrap();
        index
            .set_tombstone(&ObjectKey::new("a/1").unwrap(), Some(5))
            .unwrap();
        index
            .set_tombstone(&ObjectKey::new("z").unwrap(), Some(9))
            .unwrap();
        index
            .set_tombstone(&ObjectKey::new("z").unwrap(), None)
            .unwrap();
        assert_eq!(index.tombstone(&k).unwrap(), Some(7));
        let tombstones = |after: Option<&str>, limit| -> Vec<(String, u64)> {
            let after = after.map(|a| ObjectKey::new(a).unwrap());
            index
                .tombstones(after.as_ref(), limit)
                .unwrap()
                .into_iter()
                .map(|(k, at)| (k.to_string(), at))
                .collect()
        };
        assert_eq!(tombstones(None, 10), [("a/1".into(), 5), ("a/2".into(), 7)]);
        assert_eq!(tombstones(Some("a/1"), 10), [("a/2".into(), 7)]);
        assert_eq!(tombstones(None, 1), [("a/1".into(), 5)]);
        assert_eq!(index.totals().unwrap().0, 4, "tombstones are not objects");
    }

    #[test]
    fn memory_index_lists_in_key_order() {
        exercise(&MemoryIndex::default());
    }

    #[test]
    fn sled_index_lists_in_key_order_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let tier = TierName::new("ssd").unwrap();
        {
            let db = IndexDb::open(&dir.path().join("index")).unwrap();
            exercise(&db.tier(&tier).unwrap());
            db.flush().unwrap();
        }
        let db = IndexDb::open(&dir.path().join("index")).unwrap();
        let index = db.tier(&tier).unwrap();
        assert_eq!(index.totals().unwrap().0, 4);
        assert_eq!(
            index.tombstone(&ObjectKey::new("a/2").unwrap()).unwrap(),
            Some(7)
        );
        assert_eq!(
            index.get(&ObjectKey::new("a/1").unwrap()).unwrap(),
            Some(meta(3))
        );
    }
}

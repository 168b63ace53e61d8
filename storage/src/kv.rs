//! The node's ordered key-value databases: sled on disk, or memory (unit tests and the
//! simulator, which keeps a node's [`MemoryDb`] across the node's crash and restart).
//!
//! Only the operations the indexes, records, move logs and the raft log need. A memory write
//! is durable at once, so its flushes do nothing.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Result, StorageError};

/// One tree's keys and values, in key order.
type MemoryTree = BTreeMap<Vec<u8>, Vec<u8>>;

/// A key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// A key range, bounds owned.
pub type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

/// Entries in key order, read lazily from sled (a snapshot from memory).
pub type Entries<'a> = Box<dyn Iterator<Item = Result<Entry>> + 'a>;

/// A database kept in memory; clones share it.
#[derive(Clone, Debug, Default)]
pub struct MemoryDb {
    trees: Arc<Mutex<BTreeMap<String, MemoryTree>>>,
}

impl MemoryDb {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, MemoryTree>> {
        self.trees.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on tree `name`.
    fn with<T>(&self, name: &str, f: impl FnOnce(&mut MemoryTree) -> T) -> T {
        f(self.lock().entry(name.to_string()).or_default())
    }
}

/// One database.
#[derive(Clone, Debug)]
pub enum Db {
    Sled(sled::Db),
    Memory(MemoryDb),
}

/// One write of an atomic batch.
#[derive(Debug)]
pub enum Op {
    Insert(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
}

impl Db {
    /// Opens (creating) a sled database at `path`. Blocks.
    pub fn open(path: &Path) -> std::result::Result<Self, sled::Error> {
        Ok(Self::Sled(sled::Config::new().path(path).open()?))
    }

    /// A sled database that is removed when dropped (unit tests).
    pub fn temporary() -> std::result::Result<Self, sled::Error> {
        Ok(Self::Sled(sled::Config::new().temporary(true).open()?))
    }

    /// Opens tree `name`, creating it.
    pub fn tree(&self, name: &str) -> Result<Tree> {
        match self {
            Self::Sled(db) => Ok(Tree::Sled(db.open_tree(name)?)),
            Self::Memory(db) => {
                db.with(name, |_| ());
                Ok(Tree::Memory {
                    db: db.clone(),
                    name: name.to_string(),
                })
            }
        }
    }

    /// Makes every write so far durable, on a blocking thread. sled 0.34's `flush_async` runs
    /// on sled's own small thread pool and can deadlock there when several flushes (of the index
    /// database and the raft log's) are in flight at once: every pool thread waits for a write
    /// that needs a pool thread.
    pub async fn flush(&self) -> Result<()> {
        match self {
            Self::Sled(db) => {
                let db = db.clone();
                flush_off_thread(move || db.flush()).await
            }
            Self::Memory(_) => Ok(()),
        }
    }

    /// [`Db::flush`] on the calling thread.
    pub fn flush_blocking(&self) -> Result<()> {
        match self {
            Self::Sled(db) => Ok(db.flush().map(|_| ())?),
            Self::Memory(_) => Ok(()),
        }
    }
}

async fn flush_off_thread(
    flush: impl FnOnce() -> std::result::Result<usize, sled::Error> + Send + 'static,
) -> Result<()> {
    match tokio::task::spawn_blocking(flush).await {
        Ok(flushed) => Ok(flushed.map(|_| ())?),
        Err(e) => Err(StorageError::Index(format!("the flush task failed: {e}"))),
    }
}

/// One tree (ordered keys) of a [`Db`].
#[derive(Clone, Debug)]
pub enum Tree {
    Sled(sled::Tree),
    Memory { db: MemoryDb, name: String },
}

fn entry(item: std::result::Result<(sled::IVec, sled::IVec), sled::Error>) -> Result<Entry> {
    let (k, v) = item?;
    Ok((k.to_vec(), v.to_vec()))
}

impl Tree {
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self {
            Self::Sled(tree) => Ok(tree.get(key)?.map(|v| v.to_vec())),
            Self::Memory { db, name } => Ok(db.with(name, |t| t.get(key).cloned())),
        }
    }

    /// Sets `key`; returns the value it replaced.
    pub fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<Option<Vec<u8>>> {
        match self {
            Self::Sled(tree) => Ok(tree.insert(key, value)?.map(|v| v.to_vec())),
            Self::Memory { db, name } => Ok(db.with(name, |t| t.insert(key.to_vec(), value))),
        }
    }

    /// Removes `key`; returns its value.
    pub fn remove(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self {
            Self::Sled(tree) => Ok(tree.remove(key)?.map(|v| v.to_vec())),
            Self::Memory { db, name } => Ok(db.with(name, |t| t.remove(key))),
        }
    }

    /// The value under the greatest key.
    pub fn last_value(&self) -> Result<Option<Vec<u8>>> {
        match self {
            Self::Sled(tree) => Ok(tree.last()?.map(|(_, v)| v.to_vec())),
            Self::Memory { db, name } => {
                Ok(db.with(name, |t| t.last_key_value().map(|(_, v)| v.clone())))
            }
        }
    }

    /// The entries in `range`, in key order.
    pub fn range(&self, range: KeyRange) -> Entries<'_> {
        match self {
            Self::Sled(tree) => Box::new(tree.range::<Vec<u8>, _>(range).map(entry)),
            Self::Memory { db, name } => {
                let found: Vec<Entry> = db.with(name, |t| {
                    t.range::<Vec<u8>, _>(range)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                });
                Box::new(found.into_iter().map(Ok))
            }
        }
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> Entries<'_> {
        self.range((Bound::Unbounded, Bound::Unbounded))
    }

    /// The entries whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &[u8]) -> Entries<'_> {
        match self {
            Self::Sled(tree) => Box::new(tree.scan_prefix(prefix).map(entry)),
            Self::Memory { .. } => {
                let prefix = prefix.to_vec();
                let from = (Bound::Included(prefix.clone()), Bound::Unbounded);
                Box::new(self.range(from).take_while(move |item| {
                    item.as_ref().map_or(true, |(k, _)| k.starts_with(&prefix))
                }))
            }
        }
    }

    /// Applies `ops` all or none.
    pub fn apply(&self, ops: Vec<Op>) -> Result<()> {
        match self {
            Self::Sled(tree) => {
                let mut batch = sled::Batch::default();
                for op in ops {
                    match op {
                        Op::Insert(k, v) => batch.insert(k, v),
                        Op::Remove(k) => batch.remove(k),
                    }
                }
                Ok(tree.apply_batch(batch)?)
            }
            Self::Memory { db, name } => {
                db.with(name, |t| {
                    for op in ops {
                        match op {
                            Op::Insert(k, v) => {
                                t.insert(k, v);
                            }
                            Op::Remove(k) => {
                                t.remove(&k);
                            }
                        }
                    }
                });
                Ok(())
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Self::Sled(tree) => tree.is_empty(),
            Self::Memory { db, name } => db.with(name, |t| t.is_empty()),
        }
    }

    /// Makes this tree's writes durable (see [`Db::flush`]).
    pub async fn flush(&self) -> Result<()> {
        match self {
            Self::Sled(tree) => {
                let tree = tree.clone();
                flush_off_thread(move || tree.flush()).await
            }
            Self::Memory { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same operations give the same answers on both kinds.
    fn exercise(db: &Db) {
        let tree = db.tree("t").unwrap();
        assert!(tree.is_empty());
        assert_eq!(tree.insert(b"b", b"2".to_vec()).unwrap(), None);
        assert_eq!(
            tree.insert(b"b", b"3".to_vec()).unwrap(),
            Some(b"2".to_vec())
        );
        tree.apply(vec![
            Op::Insert(b"a".to_vec(), b"1".to_vec()),
            Op::Insert(b"ab".to_vec(), b"4".to_vec()),
            Op::Insert(b"c".to_vec(), b"5".to_vec()),
            Op::Remove(b"c".to_vec()),
        ])
        .unwrap();
        let keys =
            |entries: Entries<'_>| -> Vec<Vec<u8>> { entries.map(|e| e.unwrap().0).collect() };
        assert_eq!(
            keys(tree.iter()),
            vec![b"a".to_vec(), b"ab".to_vec(), b"b".to_vec()]
        );
        assert_eq!(
            keys(tree.scan_prefix(b"a")),
            vec![b"a".to_vec(), b"ab".to_vec()]
        );
        assert_eq!(
            keys(tree.range((
                Bound::Excluded(b"a".to_vec()),
                Bound::Included(b"b".to_vec())
            ))),
            vec![b"ab".to_vec(), b"b".to_vec()]
        );
        assert_eq!(tree.last_value().unwrap(), Some(b"3".to_vec()));
        assert_eq!(tree.remove(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(tree.get(b"a").unwrap(), None);
        assert!(db.tree("other").unwrap().is_empty());
    }

    #[test]
    fn sled_and_memory_trees_answer_alike() {
        exercise(&Db::temporary().unwrap());
        exercise(&Db::Memory(MemoryDb::default()));
    }

    #[test]
    fn a_memory_database_outlives_its_handles() {
        let memory = MemoryDb::default();
        Db::Memory(memory.clone())
            .tree("t")
            .unwrap()
            .insert(b"k", b"v".to_vec())
            .unwrap();
        let again = Db::Memory(memory).tree("t").unwrap();
        assert_eq!(again.get(b"k").unwrap(), Some(b"v".to_vec()));
    }
}

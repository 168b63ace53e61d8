//! Where the raft database keeps its trees: sled on disk, or memory (unit tests and the
//! simulator, which keeps a host's [`MemoryDb`] across the host's crash and restart).
//!
//! Only the few operations the log store and the state machine need: a memory write is
//! durable at once, so its flush does nothing.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};

/// One tree's keys and values, in key order.
type MemoryTree = BTreeMap<Vec<u8>, Vec<u8>>;
/// Entries read from a tree, in key order.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A raft database kept in memory; clones share it.
#[derive(Clone, Debug, Default)]
pub struct MemoryDb {
    trees: Arc<Mutex<BTreeMap<String, MemoryTree>>>,
}

impl MemoryDb {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, MemoryTree>> {
        self.trees.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One database of a node's raft state.
#[derive(Clone, Debug)]
pub(crate) enum Db {
    Sled(sled::Db),
    Memory(MemoryDb),
}

/// One write of an atomic batch.
pub(crate) enum Op {
    Insert(Vec<u8>, Vec<u8>),
    Remove(Vec<u8>),
}

/// A key range, bounds owned.
pub(crate) type KeyRange = (Bound<Vec<u8>>, Bound<Vec<u8>>);

impl Db {
    pub(crate) fn tree(&self, name: &str) -> Result<Tree, String> {
        match self {
            Self::Sled(db) => db
                .open_tree(name)
                .map(Tree::Sled)
                .map_err(|e| e.to_string()),
            Self::Memory(db) => {
                db.lock().entry(name.to_string()).or_default();
                Ok(Tree::Memory {
                    db: db.clone(),
                    name: name.to_string(),
                })
            }
        }
    }

    /// Makes every write so far durable. sled's runs on a blocking thread: sled 0.34's
    /// `flush_async` can deadlock when several run at once.
    pub(crate) async fn flush(&self) -> Result<(), String> {
        match self {
            Self::Sled(db) => {
                let db = db.clone();
                match tokio::task::spawn_blocking(move || db.flush()).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(e) => Err(format!("the flush task failed: {e}")),
                }
            }
            Self::Memory(_) => Ok(()),
        }
    }

    /// [`Db::flush`] on the calling thread.
    pub(crate) fn flush_blocking(&self) -> Result<(), String> {
        match self {
            Self::Sled(db) => db.flush().map(|_| ()).map_err(|e| e.to_string()),
            Self::Memory(_) => Ok(()),
        }
    }
}

/// One tree (ordered keys) of a [`Db`].
#[derive(Clone, Debug)]
pub(crate) enum Tree {
    Sled(sled::Tree),
    Memory { db: MemoryDb, name: String },
}

/// Runs `f` on the memory tree `name` of `db`.
fn with<T>(db: &MemoryDb, name: &str, f: impl FnOnce(&mut MemoryTree) -> T) -> T {
    f(db.lock().entry(name.to_string()).or_default())
}

impl Tree {
    pub(crate) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        match self {
            Self::Sled(tree) => tree
                .get(key)
                .map(|v| v.map(|v| v.to_vec()))
                .map_err(|e| e.to_string()),
            Self::Memory { db, name } => Ok(with(db, name, |t| t.get(key).cloned())),
        }
    }

    pub(crate) fn insert(&self, key: &[u8], value: Vec<u8>) -> Result<(), String> {
        self.apply(vec![Op::Insert(key.to_vec(), value)])
    }

    /// The value under the greatest key.
    pub(crate) fn last_value(&self) -> Result<Option<Vec<u8>>, String> {
        match self {
            Self::Sled(tree) => tree
                .last()
                .map(|last| last.map(|(_, v)| v.to_vec()))
                .map_err(|e| e.to_string()),
            Self::Memory { db, name } => Ok(with(db, name, |t| {
                t.last_key_value().map(|(_, v)| v.clone())
            })),
        }
    }

    /// The entries in `range`, in key order.
    pub(crate) fn range(&self, range: KeyRange) -> Result<Entries, String> {
        match self {
            Self::Sled(tree) => tree
                .range::<Vec<u8>, _>(range)
                .map(|item| {
                    item.map(|(k, v)| (k.to_vec(), v.to_vec()))
                        .map_err(|e| e.to_string())
                })
                .collect(),
            Self::Memory { db, name } => Ok(with(db, name, |t| {
                t.range::<Vec<u8>, _>(range)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })),
        }
    }

    /// Applies `ops` all or none.
    pub(crate) fn apply(&self, ops: Vec<Op>) -> Result<(), String> {
        match self {
            Self::Sled(tree) => {
                let mut batch = sled::Batch::default();
                for op in ops {
                    match op {
                        Op::Insert(k, v) => batch.insert(k, v),
                        Op::Remove(k) => batch.remove(k),
                    }
                }
                tree.apply_batch(batch).map_err(|e| e.to_string())
            }
            Self::Memory { db, name } => {
                with(db, name, |t| {
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

    pub(crate) fn is_empty(&self) -> bool {
        match self {
            Self::Sled(tree) => tree.is_empty(),
            Self::Memory { db, name } => with(db, name, |t| t.is_empty()),
        }
    }
}

//! A tier held in memory, for unit tests and the simulator. It holds whole objects in memory
//! by design; nothing in production uses it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::backend::{
    BackendObject, ByteStream, CapacityGauge, Committed, ObjectReader, PutLimits, Staged,
    TierBackend, TierDescription, check_final_len, check_running_len, reserve_for_put,
};
use crate::clock::Clock;
use crate::error::{Result, StorageError};
use crate::hash::Hasher;
use crate::uri::{KeyPrefix, ObjectKey, TierName};

/// Bytes one chunk of a get carries, so readers see a stream as they would from disk.
const READ_CHUNK_BYTES: usize = 64 << 10;

#[derive(Debug)]
pub struct MemoryTier {
    description: TierDescription,
    gauge: Arc<CapacityGauge>,
    clock: Arc<dyn Clock>,
    next_staged: AtomicU64,
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    objects: BTreeMap<ObjectKey, MemoryObject>,
    staged: BTreeMap<String, Bytes>,
    /// Stamps of committed objects: one more per commit.
    commits: u64,
}

#[derive(Debug)]
struct MemoryObject {
    data: Bytes,
    modified_ms: u64,
    stamp: u64,
}

impl MemoryObject {
    fn listed(&self, key: &ObjectKey) -> BackendObject {
        BackendObject {
            key: key.clone(),
            size: self.data.len() as u64,
            modified_ms: self.modified_ms,
            stamp: self.stamp,
        }
    }
}

impl MemoryState {
    /// The fs backend's rules, kept here so tests and the simulator meet the same refusals as
    /// production: an object cannot sit under another object, nor where other objects sit under.
    fn collision(&self, key: &ObjectKey) -> Option<String> {
        let mut parent = String::new();
        let segments: Vec<&str> = key.segments().collect();
        for segment in &segments[..segments.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(segment);
            if ObjectKey::new(parent.clone()).is_ok_and(|p| self.objects.contains_key(&p)) {
                return Some(format!(
                    "`{parent}` is an object, so no object can be stored under it"
                ));
            }
        }
        // Keys below sort from `key/` on (`key-a` sorts before it, so start there, not at `key`).
        let below = format!("{key}/");
        self.objects
            .range::<str, _>((Bound::Included(below.as_str()), Bound::Unbounded))
            .next()
            .filter(|(k, _)| k.as_str().starts_with(&below))
            .map(|_| {
                "other objects are stored under this key, so it cannot be an object itself"
                    .to_string()
            })
    }
}

impl MemoryTier {
    pub fn new(name: TierName, capacity_bytes: Option<u64>, clock: Arc<dyn Clock>) -> Self {
        Self {
            description: TierDescription {
                name: name.clone(),
                kind: "memory".to_string(),
                backend: "memory".to_string(),
                location: "memory".to_string(),
                capacity_bytes,
            },
            gauge: CapacityGauge::new(name, capacity_bytes),
            clock,
            next_staged: AtomicU64::new(0),
            state: Mutex::new(MemoryState::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, MemoryState> {
        // A panic while holding this lock leaves plain maps behind, still consistent.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn conflict(&self, key: &ObjectKey, reason: String) -> StorageError {
        StorageError::Conflict {
            tier: self.description.name.to_string(),
            key: key.to_string(),
            reason,
        }
    }

    /// Staged puts not yet committed or aborted; tests check that failures leave none.
    pub fn staged_count(&self) -> usize {
        self.state().staged.len()
    }
}

#[async_trait::async_trait]
impl TierBackend for MemoryTier {
    fn describe(&self) -> TierDescription {
        self.description.clone()
    }

    fn gauge(&self) -> &Arc<CapacityGauge> {
        &self.gauge
    }

    async fn check_key(&self, key: &ObjectKey) -> Result<()> {
        match self.state().collision(key) {
            Some(reason) => Err(self.conflict(key, reason)),
            None => Ok(()),
        }
    }

    async fn stage(
        &self,
        key: &ObjectKey,
        mut body: ByteStream,
        limits: PutLimits,
    ) -> Result<Staged> {
        let mut reservation = reserve_for_put(&self.gauge, limits)?;
        let mut data = BytesMut::new();
        let mut hasher = Hasher::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(StorageError::Body)?;
            let received = data.len() as u64 + chunk.len() as u64;
            check_running_len(received, limits)?;
            if limits.declared_len.is_none() {
                reservation.grow(chunk.len() as u64)?;
            }
            hasher.update(&chunk);
            data.extend_from_slice(&chunk);
        }
        let size = data.len() as u64;
        check_final_len(size, limits)?;
        let token = format!(
            "staged-{}",
            self.next_staged.fetch_add(1, Ordering::Relaxed)
        );
        self.state().staged.insert(token.clone(), data.freeze());
        Ok(Staged {
            key: key.clone(),
            size,
            hash: hasher.finish(),
            token,
            reservation,
        })
    }

    async fn commit(&self, staged: Staged) -> Result<Committed> {
        let now = self.clock.now_ms();
        let (replaced_size, stamp) = {
            let mut state = self.state();
            let Some(data) = state.staged.remove(&staged.token) else {
                return Err(StorageError::io(
                    "commit",
                    std::io::Error::other(format!("no staged put {}", staged.token)),
                ));
            };
            if let Some(reason) = state.collision(&staged.key) {
                drop(state);
                return Err(self.conflict(&staged.key, reason));
            }
            state.commits += 1;
            let stamp = state.commits;
            let object = MemoryObject {
                data,
                modified_ms: now,
                stamp,
            };
            let replaced = state.objects.insert(staged.key.clone(), object);
            (replaced.map(|old| old.data.len() as u64), stamp)
        };
        staged.reservation.keep();
        if let Some(old) = replaced_size {
            self.gauge.release(old);
        }
        Ok(Committed {
            replaced_size,
            stamp,
        })
    }

    async fn abort(&self, staged: Staged) {
        self.state().staged.remove(&staged.token);
    }

    async fn get(&self, key: &ObjectKey) -> Result<ObjectReader> {
        let data = self.state().objects.get(key).map(|o| o.data.clone());
        let Some(data) = data else {
            return Err(StorageError::NotFound {
                tier: self.description.name.to_string(),
                key: key.to_string(),
            });
        };
        Ok(ObjectReader {
            size: data.len() as u64,
            body: crate::stream_of(data, READ_CHUNK_BYTES).into(),
        })
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<BackendObject>> {
        Ok(self.state().objects.get(key).map(|o| o.listed(key)))
    }

    async fn list(
        &self,
        prefix: &KeyPrefix,
        start_after: Option<&ObjectKey>,
        limit: usize,
    ) -> Result<Vec<BackendObject>> {
        let limit = limit.min(crate::backend::LIST_PAGE_ENTRIES_MAX);
        Ok(self
            .state()
            .objects
            .iter()
            .filter(|(key, _)| prefix.matches(key) && start_after.is_none_or(|s| *key > s))
            .take(limit)
            .map(|(key, object)| object.listed(key))
            .collect())
    }

    async fn delete(&self, key: &ObjectKey) -> Result<Option<u64>> {
        let removed = self
            .state()
            .objects
            .remove(key)
            .map(|o| o.data.len() as u64);
        if let Some(size) = removed {
            self.gauge.release(size);
        }
        Ok(removed)
    }
}

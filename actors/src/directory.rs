//! Where callers find a tier's actor. The supervisor replaces an entry when it restarts a tier,
//! so callers look a tier up per request instead of keeping its `ActorRef`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use letl_storage::{
    ByteStream, ContentHash, KeyPrefix, LocalFile, ObjectKey, ObjectMeta, ObjectReader,
    StorageError, TierDescription, TierName,
};
use ractor::rpc::CallResult;
use ractor::{ActorRef, MessagingErr, RpcReplyPort};

use crate::tier::{DeleteMode, PutCondition, PutRequest, TierMsg, TierStats};

#[derive(Clone, Debug)]
enum TierEntry {
    Up(ActorRef<TierMsg>),
    /// The supervisor gave up restarting it; the reason is told to every caller.
    Down {
        reason: String,
        description: TierDescription,
    },
}

/// A tier as listings show it, up or down.
#[derive(Clone, Debug)]
pub enum TierStatus {
    Up(TierStats),
    Down {
        description: TierDescription,
        reason: String,
    },
}

/// The node's tiers by name, in name order.
#[derive(Clone, Debug, Default)]
pub struct TierDirectory {
    entries: Arc<RwLock<BTreeMap<TierName, TierEntry>>>,
}

impl TierDirectory {
    fn read(&self) -> RwLockReadGuard<'_, BTreeMap<TierName, TierEntry>> {
        // Entries are replaced whole, so a panic elsewhere cannot leave one half-written.
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, BTreeMap<TierName, TierEntry>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_up(&self, name: TierName, actor: ActorRef<TierMsg>) {
        self.write().insert(name, TierEntry::Up(actor));
    }

    pub(crate) fn set_down(&self, name: TierName, reason: String, description: TierDescription) {
        self.write().insert(
            name,
            TierEntry::Down {
                reason,
                description,
            },
        );
    }

    /// The tier's handle, or an error naming the tiers this node has.
    pub fn get(&self, name: &TierName) -> Result<TierHandle, StorageError> {
        // One read guard for the whole lookup: taking a second one while holding it could
        // deadlock behind a waiting writer (std's RwLock lets writers go first).
        let entries = self.read();
        match entries.get(name) {
            Some(TierEntry::Up(actor)) => Ok(TierHandle {
                name: name.clone(),
                actor: actor.clone(),
            }),
            Some(TierEntry::Down { reason, .. }) => Err(StorageError::Unavailable {
                tier: name.to_string(),
                reason: reason.clone(),
            }),
            None => Err(StorageError::UnknownTier {
                tier: name.to_string(),
                known: entries
                    .keys()
                    .map(TierName::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// The names of this node's tiers, up or down, in name order.
    pub fn names(&self) -> Vec<TierName> {
        self.read().keys().cloned().collect()
    }

    /// Every tier with its counts, or why it is down; a down tier never hides the others.
    pub async fn statuses(&self) -> Vec<(TierName, TierStatus)> {
        let entries: Vec<(TierName, TierEntry)> = self
            .read()
            .iter()
            .map(|(n, e)| (n.clone(), e.clone()))
            .collect();
        let mut out = Vec::with_capacity(entries.len());
        for (name, entry) in entries {
            let status = match entry {
                TierEntry::Up(actor) => {
                    let handle = TierHandle {
                        name: name.clone(),
                        actor,
                    };
                    match handle.stats().await {
                        Ok(stats) => TierStatus::Up(stats),
                        Err(e) => TierStatus::Down {
                            description: TierDescription {
                                name: name.clone(),
                                kind: String::new(),
                                backend: String::new(),
                                location: String::new(),
                                capacity_bytes: None,
                            },
                            reason: e.to_string(),
                        },
                    }
                }
                TierEntry::Down {
                    reason,
                    description,
                } => TierStatus::Down {
                    description,
                    reason,
                },
            };
            out.push((name, status));
        }
        out
    }

    pub(crate) fn actors(&self) -> Vec<(TierName, ActorRef<TierMsg>)> {
        self.read()
            .iter()
            .filter_map(|(name, entry)| match entry {
                TierEntry::Up(actor) => Some((name.clone(), actor.clone())),
                TierEntry::Down { .. } => None,
            })
            .collect()
    }
}

/// A typed front to one tier actor.
#[derive(Clone, Debug)]
pub struct TierHandle {
    name: TierName,
    actor: ActorRef<TierMsg>,
}

impl TierHandle {
    pub fn name(&self) -> &TierName {
        &self.name
    }

    pub async fn put(
        &self,
        key: ObjectKey,
        body: ByteStream,
        declared_len: Option<u64>,
        expected_hash: Option<ContentHash>,
    ) -> Result<ObjectMeta, StorageError> {
        let request = PutRequest {
            key,
            body,
            declared_len,
            expected_hash,
            condition: PutCondition::Any,
            copy_of: None,
        };
        self.put_request(request).await
    }

    /// A put with every option of [`PutRequest`].
    pub async fn put_request(&self, request: PutRequest) -> Result<ObjectMeta, StorageError> {
        self.call(|reply| TierMsg::Put(request, reply)).await
    }

    /// Puts a copy of `of`, a version of `key` held by another node: the body must have its
    /// size and hash, and the copy keeps its times. Refused (`Conflict`) unless `condition`
    /// holds when it would be published.
    pub async fn put_copy(
        &self,
        key: ObjectKey,
        body: ByteStream,
        of: ObjectMeta,
        condition: PutCondition,
    ) -> Result<ObjectMeta, StorageError> {
        let request = PutRequest {
            key,
            body,
            declared_len: Some(of.size),
            expected_hash: Some(of.hash),
            condition,
            copy_of: Some(of),
        };
        self.put_request(request).await
    }

    /// Whether a put of `key` with `declared_len` bytes would be accepted now.
    pub async fn check_put(
        &self,
        key: ObjectKey,
        declared_len: Option<u64>,
    ) -> Result<(), StorageError> {
        self.call(|reply| TierMsg::CheckPut {
            key,
            declared_len,
            reply,
        })
        .await
    }

    pub async fn get(&self, key: ObjectKey) -> Result<(ObjectMeta, ObjectReader), StorageError> {
        self.call(|reply| TierMsg::Get(key, reply)).await
    }

    pub async fn head(&self, key: ObjectKey) -> Result<ObjectMeta, StorageError> {
        self.call(|reply| TierMsg::Head(key, reply)).await
    }

    /// The local file holding `key`, if this tier keeps objects as local files.
    pub async fn local_file(&self, key: ObjectKey) -> Result<Option<LocalFile>, StorageError> {
        self.call(|reply| TierMsg::LocalFile(key, reply)).await
    }

    /// Puts another tier's local file without copying it, where this tier can; `None` when it
    /// cannot and the bytes must be streamed.
    pub async fn put_local_file(
        &self,
        key: ObjectKey,
        file: LocalFile,
    ) -> Result<Option<ObjectMeta>, StorageError> {
        self.call(|reply| TierMsg::PutLocalFile { key, file, reply })
            .await
    }

    pub async fn list(
        &self,
        prefix: KeyPrefix,
        start_after: Option<ObjectKey>,
        limit: usize,
    ) -> Result<Vec<(ObjectKey, ObjectMeta)>, StorageError> {
        self.call(|reply| TierMsg::List {
            prefix,
            start_after,
            limit,
            reply,
        })
        .await
    }

    /// Deletes `key` (with `expected_hash`: only if it still has those bytes), and remembers
    /// the deletion (see [`TierMsg::Delete`]).
    pub async fn delete(
        &self,
        key: ObjectKey,
        expected_hash: Option<ContentHash>,
    ) -> Result<ObjectMeta, StorageError> {
        self.delete_as(key, expected_hash, DeleteMode::Deleted)
            .await
    }

    /// Deletes `key` (with `expected_hash`: only if it still has those bytes), remembering
    /// the deletion as `mode` says.
    pub async fn delete_as(
        &self,
        key: ObjectKey,
        expected_hash: Option<ContentHash>,
        mode: DeleteMode,
    ) -> Result<ObjectMeta, StorageError> {
        self.call(|reply| TierMsg::Delete {
            key,
            expected_hash,
            mode,
            reply,
        })
        .await
    }

    /// Deletes this tier's copy of `key`, which other nodes hold now (if it still has
    /// `expected_hash`): the object was not deleted, so no deletion is remembered.
    pub async fn delete_moved_away(
        &self,
        key: ObjectKey,
        expected_hash: ContentHash,
    ) -> Result<ObjectMeta, StorageError> {
        self.delete_as(key, Some(expected_hash), DeleteMode::MovedAway)
            .await
    }

    /// When `key` was last deleted here, if that is remembered.
    pub async fn tombstone(&self, key: ObjectKey) -> Result<Option<u64>, StorageError> {
        self.call(|reply| TierMsg::Tombstone(key, reply)).await
    }

    /// A deletion at `deleted_ms` learnt from another node (see [`TierMsg::Bury`]).
    pub async fn bury(
        &self,
        key: ObjectKey,
        deleted_ms: u64,
    ) -> Result<Option<ObjectMeta>, StorageError> {
        self.call(|reply| TierMsg::Bury {
            key,
            deleted_ms,
            reply,
        })
        .await
    }

    /// Tombstones after `start_after`, in key order, at most `limit`.
    pub async fn tombstones(
        &self,
        start_after: Option<ObjectKey>,
        limit: usize,
    ) -> Result<Vec<(ObjectKey, u64)>, StorageError> {
        self.call(|reply| TierMsg::Tombstones {
            start_after,
            limit,
            reply,
        })
        .await
    }

    /// Forgets `key`'s tombstone if it is still the one at `deleted_ms`.
    pub async fn forget_tombstone(
        &self,
        key: ObjectKey,
        deleted_ms: u64,
    ) -> Result<(), StorageError> {
        self.call(|reply| TierMsg::ForgetTombstone {
            key,
            deleted_ms,
            reply,
        })
        .await
    }

    /// Starts a sweep of expired tombstones now (the tier also runs one every
    /// `TOMBSTONE_SWEEP_INTERVAL`).
    pub fn expire_tombstones(&self) -> Result<(), StorageError> {
        self.actor
            .cast(TierMsg::ExpireTombstones { start_after: None })
            .map_err(|_| self.unavailable())
    }

    pub async fn stats(&self) -> Result<TierStats, StorageError> {
        match self.actor.call(TierMsg::Stats, None).await {
            Ok(CallResult::Success(stats)) => Ok(stats),
            Ok(_) | Err(_) => Err(self.unavailable()),
        }
    }

    #[doc(hidden)]
    pub fn crash_for_test(&self) {
        let _ = self.actor.cast(TierMsg::CrashForTest);
    }

    async fn call<T: Send + 'static>(
        &self,
        message: impl FnOnce(RpcReplyPort<Result<T, StorageError>>) -> TierMsg,
    ) -> Result<T, StorageError> {
        match self.actor.call(message, None).await {
            Ok(CallResult::Success(result)) => result,
            Ok(CallResult::Timeout | CallResult::SenderError) | Err(MessagingErr::SendErr(_)) => {
                Err(self.unavailable())
            }
            Err(_) => Err(self.unavailable()),
        }
    }

    fn unavailable(&self) -> StorageError {
        StorageError::Unavailable {
            tier: self.name.to_string(),
            reason: "its actor stopped while handling the request; retry".to_string(),
        }
    }
}

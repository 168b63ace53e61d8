//! The tier actor: one per configured tier. It owns the tier's backend and is the only writer of
//! the tier's index, so an object's bytes and its metadata change together, in mailbox order.
//!
//! Bytes never pass through the mailbox. A put is staged by a task the actor spawns (streaming
//! from the network to the backend while hashing), and the task mails the staged result back; the
//! actor then commits it and writes the index entry in one step. A get hands the caller a stream
//! straight from the backend.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use letl_storage::{
    ByteStream, Clock, ContentHash, KeyPrefix, LocalFile, ObjectIndex, ObjectKey, ObjectMeta,
    ObjectReader, PutLimits, Staged, StorageError, TierBackend, TierDescription, TierName,
    reconcile,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, MessagingErr, RpcReplyPort};
use tracing::{debug, error, info, warn};

/// Puts one tier stages at once; more are refused as "unavailable" until some finish.
pub const TIER_PUTS_IN_FLIGHT_MAX: usize = 256;
/// How long a deletion is remembered (its tombstone): longer than any node may stay away
/// holding a copy from before the deletion, which would otherwise come back.
pub const TOMBSTONE_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often a tier forgets the tombstones older than [`TOMBSTONE_KEEP`].
pub const TOMBSTONE_SWEEP_INTERVAL: Duration = Duration::from_secs(3600);
/// Tombstones one step of a sweep looks at; the sweep goes on in later mailbox turns.
pub const TOMBSTONE_SWEEP_PAGE: usize = 1000;

/// Everything a tier actor is built from; kept by the supervisor to rebuild it after a failure.
#[derive(Clone, Debug)]
pub struct TierSpec {
    pub backend: Arc<dyn TierBackend>,
    pub index: Arc<dyn ObjectIndex>,
    pub clock: Arc<dyn Clock>,
    /// The largest object a put may bring.
    pub object_bytes_max: u64,
}

impl TierSpec {
    pub fn name(&self) -> TierName {
        self.backend.describe().name
    }
}

#[derive(Debug)]
pub struct TierArgs {
    pub spec: TierSpec,
    /// Check the index against the backend before serving (at node start, not on restarts).
    pub reconcile: bool,
}

/// A put as the tier actor receives it.
pub struct PutRequest {
    pub key: ObjectKey,
    pub body: ByteStream,
    /// The length announced by the sender, which the body must match.
    pub declared_len: Option<u64>,
    /// Refuse to publish unless the bytes hash to this (copies and moves check their source).
    pub expected_hash: Option<ContentHash>,
    /// What the put may replace; checked when it is published.
    pub condition: PutCondition,
    /// The version, held by another node under the same key, that this put copies: the copy
    /// keeps its times and number (placement is invisible to users, and `modified_ms` orders
    /// versions across nodes: see [`ObjectMeta::supersedes`]).
    pub copy_of: Option<ObjectMeta>,
}

/// When a put may replace what the tier holds under its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutCondition {
    /// Whatever is there (a client's put).
    Any,
    /// Only if nothing is: a rebalance copy never overwrites a version written since.
    Absent,
    /// Only if the version there has this hash: a rebalance copy replacing an older version.
    Replaces(ContentHash),
}

/// How a deletion is remembered (see [`ObjectIndex::tombstone`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteMode {
    /// The object is deleted: remembered if this tier held it.
    Deleted,
    /// The object is deleted, and this tier is one of its homes: remembered even if this tier
    /// does not hold it (yet: a copy on its way here from another node is refused).
    AtHome,
    /// Only this copy goes: other nodes hold the object now (a rebalance). Not remembered.
    MovedAway,
}

/// What a staged put must satisfy to be published, and what it is a copy of.
#[derive(Debug)]
pub struct PublishRules {
    expected_hash: Option<ContentHash>,
    condition: PutCondition,
    copy_of: Option<ObjectMeta>,
}

impl fmt::Debug for PutRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutRequest")
            .field("key", &self.key)
            .field("declared_len", &self.declared_len)
            .field("expected_hash", &self.expected_hash)
            .field("condition", &self.condition)
            .finish_non_exhaustive()
    }
}

/// Counts for `letl tiers` and `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierStats {
    pub description: TierDescription,
    pub objects: u64,
    /// Bytes of committed objects.
    pub bytes: u64,
    /// Bytes counted against capacity: committed objects plus puts in progress.
    pub used_bytes: u64,
    pub puts_in_flight: u64,
}

type Reply<T> = RpcReplyPort<Result<T, StorageError>>;

/// The tier actor's one message enum.
pub enum TierMsg {
    Put(PutRequest, Reply<ObjectMeta>),
    /// A staging task finished (sent by the actor's own tasks).
    Staged {
        key: ObjectKey,
        result: Result<Staged, StorageError>,
        rules: PublishRules,
        reply: Reply<ObjectMeta>,
    },
    /// Would a put of this key and length be accepted now? Changes nothing.
    CheckPut {
        key: ObjectKey,
        declared_len: Option<u64>,
        reply: Reply<()>,
    },
    Get(ObjectKey, Reply<(ObjectMeta, ObjectReader)>),
    /// The local file holding an object, with its indexed size, stamp and hash; `None` when
    /// this tier keeps no local files.
    LocalFile(ObjectKey, Reply<Option<LocalFile>>),
    /// Puts another tier's local file without copying its bytes where the backend can (see
    /// [`TierBackend::stage_local_file`]); `None`: it cannot, stream the bytes instead.
    PutLocalFile {
        key: ObjectKey,
        file: LocalFile,
        reply: Reply<Option<ObjectMeta>>,
    },
    Head(ObjectKey, Reply<ObjectMeta>),
    List {
        prefix: KeyPrefix,
        start_after: Option<ObjectKey>,
        limit: usize,
        reply: Reply<Vec<(ObjectKey, ObjectMeta)>>,
    },
    /// Deletes, optionally only if the object still has the given hash (the last step of a move).
    /// How the deletion is remembered (a tombstone, see [`ObjectIndex::tombstone`]) is `mode`'s.
    Delete {
        key: ObjectKey,
        expected_hash: Option<ContentHash>,
        mode: DeleteMode,
        reply: Reply<ObjectMeta>,
    },
    /// When the key was last deleted here, if that is remembered.
    Tombstone(ObjectKey, Reply<Option<u64>>),
    /// A deletion at `deleted_ms` learnt from another node: the version here goes unless it is
    /// later (see [`ObjectMeta::supersedes`]), and the deletion is remembered. Answers the
    /// version deleted, if any.
    Bury {
        key: ObjectKey,
        deleted_ms: u64,
        reply: Reply<Option<ObjectMeta>>,
    },
    /// Tombstones after `start_after`, in key order, at most `limit`.
    Tombstones {
        start_after: Option<ObjectKey>,
        limit: usize,
        reply: Reply<Vec<(ObjectKey, u64)>>,
    },
    /// Forgets the key's tombstone if it is still the one at `deleted_ms` (other nodes
    /// remember the deletion now).
    ForgetTombstone {
        key: ObjectKey,
        deleted_ms: u64,
        reply: Reply<()>,
    },
    /// Forgets tombstones older than [`TOMBSTONE_KEEP`], a page after `start_after` at a time.
    ExpireTombstones {
        start_after: Option<ObjectKey>,
    },
    Stats(RpcReplyPort<TierStats>),
    /// Panics inside the handler: lets tests prove that the supervisor restarts a failed tier.
    #[doc(hidden)]
    CrashForTest,
}

impl fmt::Debug for TierMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Put(request, _) => f.debug_tuple("Put").field(request).finish(),
            Self::Staged { key, .. } => f
                .debug_struct("Staged")
                .field("key", key)
                .finish_non_exhaustive(),
            Self::CheckPut { key, .. } => f
                .debug_struct("CheckPut")
                .field("key", key)
                .finish_non_exhaustive(),
            Self::Get(key, _) => f.debug_tuple("Get").field(key).finish(),
            Self::LocalFile(key, _) => f.debug_tuple("LocalFile").field(key).finish(),
            Self::PutLocalFile { key, file, .. } => f
                .debug_struct("PutLocalFile")
                .field("key", key)
                .field("file", file)
                .finish_non_exhaustive(),
            Self::Head(key, _) => f.debug_tuple("Head").field(key).finish(),
            Self::List { prefix, .. } => f
                .debug_struct("List")
                .field("prefix", prefix)
                .finish_non_exhaustive(),
            Self::Delete { key, .. } => f
                .debug_struct("Delete")
                .field("key", key)
                .finish_non_exhaustive(),
            Self::Tombstone(key, _) => f.debug_tuple("Tombstone").field(key).finish(),
            Self::Bury {
                key, deleted_ms, ..
            } => f
                .debug_struct("Bury")
                .field("key", key)
                .field("deleted_ms", deleted_ms)
                .finish_non_exhaustive(),
            Self::Tombstones { start_after, .. } => f
                .debug_struct("Tombstones")
                .field("start_after", start_after)
                .finish_non_exhaustive(),
            Self::ForgetTombstone { key, .. } => f
                .debug_struct("ForgetTombstone")
                .field("key", key)
                .finish_non_exhaustive(),
            Self::ExpireTombstones { start_after } => f
                .debug_struct("ExpireTombstones")
                .field("start_after", start_after)
                .finish(),
            Self::Stats(_) => f.write_str("Stats"),
            Self::CrashForTest => f.write_str("CrashForTest"),
        }
    }
}

#[derive(Debug, Default)]
pub struct TierActor;

#[derive(Debug)]
pub struct TierState {
    spec: TierSpec,
    name: TierName,
    /// Keys with a put being staged: a second put of the same key is refused rather than raced,
    /// so the index always describes the bytes that were committed last.
    puts_in_flight: BTreeSet<ObjectKey>,
    objects: u64,
    bytes: u64,
    /// The timer that starts each tombstone sweep; stopped with the actor.
    sweeper: Option<tokio::task::JoinHandle<()>>,
}

impl Actor for TierActor {
    type Msg = TierMsg;
    type State = TierState;
    type Arguments = TierArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: TierArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let spec = args.spec;
        let name = spec.name();
        // A tier that cannot be read now (an endpoint that is down) still starts: it serves
        // from its index, its requests fail naming the cause, and the node's other tiers go on.
        if args.reconcile
            && let Err(e) = reconcile(spec.backend.as_ref(), spec.index.as_ref()).await
        {
            warn!(tier = %name, error = %e, "could not check the index against the tier; serving from the index as it is");
        }
        let (objects, bytes) = spec
            .index
            .totals()
            .map_err(|e| format!("tier `{name}`: reading the index: {e}"))?;
        if args.reconcile {
            // The first start's one scan of the tier (the reconciliation above) made the index
            // match it: the index's total is what the tier holds, counted against capacity.
            spec.backend.gauge().add_existing(bytes);
        }
        info!(tier = %name, objects, bytes, "tier started");
        Ok(TierState {
            spec,
            name,
            puts_in_flight: BTreeSet::new(),
            objects,
            bytes,
            sweeper: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        state.sweeper =
            Some(
                myself.send_interval(TOMBSTONE_SWEEP_INTERVAL, || TierMsg::ExpireTombstones {
                    start_after: None,
                }),
            );
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(sweeper) = state.sweeper.take() {
            sweeper.abort();
        }
        if let Err(e) = state.spec.index.flush().await {
            error!(tier = %state.name, error = %e, "flushing the index at stop failed");
        }
        debug!(tier = %state.name, "tier stopped");
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            TierMsg::Put(request, reply) => state.start_put(myself, request, reply),
            TierMsg::Staged {
                key,
                result,
                rules,
                reply,
            } => {
                let outcome = state.finish_put(&key, result, rules).await;
                state.reply_after_flush(reply, outcome);
            }
            TierMsg::CheckPut {
                key,
                declared_len,
                reply,
            } => {
                let _ = reply.send(state.check_put(&key, declared_len).await);
            }
            TierMsg::Get(key, reply) => {
                let _ = reply.send(state.get(&key).await);
            }
            TierMsg::Head(key, reply) => {
                let _ = reply.send(state.head(&key));
            }
            TierMsg::LocalFile(key, reply) => {
                let _ = reply.send(state.local_file(&key).await);
            }
            TierMsg::PutLocalFile { key, file, reply } => {
                let outcome = state.put_local_file(&key, &file).await;
                state.reply_after_flush(reply, outcome);
            }
            TierMsg::List {
                prefix,
                start_after,
                limit,
                reply,
            } => {
                let listed = state.spec.index.list(&prefix, start_after.as_ref(), limit);
                let _ = reply.send(listed);
            }
            TierMsg::Delete {
                key,
                expected_hash,
                mode,
                reply,
            } => {
                let outcome = state.delete(&key, expected_hash, mode).await;
                state.reply_after_flush(reply, outcome);
            }
            TierMsg::Tombstone(key, reply) => {
                let _ = reply.send(state.spec.index.tombstone(&key));
            }
            TierMsg::Bury {
                key,
                deleted_ms,
                reply,
            } => {
                let outcome = state.bury(&key, deleted_ms).await;
                state.reply_after_flush(reply, outcome);
            }
            TierMsg::Tombstones {
                start_after,
                limit,
                reply,
            } => {
                let _ = reply.send(state.spec.index.tombstones(start_after.as_ref(), limit));
            }
            TierMsg::ForgetTombstone {
                key,
                deleted_ms,
                reply,
            } => {
                let index = &state.spec.index;
                let outcome = match index.tombstone(&key) {
                    Ok(Some(at)) if at == deleted_ms => index.set_tombstone(&key, None),
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                };
                state.reply_after_flush(reply, outcome);
            }
            TierMsg::ExpireTombstones { start_after } => {
                if let Some(next) = state.expire_tombstones(start_after.as_ref()) {
                    let _ = myself.cast(TierMsg::ExpireTombstones {
                        start_after: Some(next),
                    });
                }
            }
            TierMsg::Stats(reply) => {
                let _ = reply.send(state.stats());
            }
            TierMsg::CrashForTest => panic!("tier `{}` was told to crash", state.name),
        }
        Ok(())
    }
}

impl TierState {
    async fn check_put(
        &self,
        key: &ObjectKey,
        declared_len: Option<u64>,
    ) -> Result<(), StorageError> {
        self.spec.backend.check_key(key).await?;
        if self.puts_in_flight.contains(key) {
            return Err(self.put_in_progress(key));
        }
        if let Some(len) = declared_len {
            if len > self.spec.object_bytes_max {
                return Err(StorageError::TooLarge {
                    size: len,
                    max: self.spec.object_bytes_max,
                });
            }
            self.spec.backend.gauge().check(len)?;
        }
        Ok(())
    }

    fn put_in_progress(&self, key: &ObjectKey) -> StorageError {
        StorageError::Conflict {
            tier: self.name.to_string(),
            key: key.to_string(),
            reason: "another put of this key is in progress".to_string(),
        }
    }

    fn start_put(
        &mut self,
        myself: ActorRef<TierMsg>,
        request: PutRequest,
        reply: Reply<ObjectMeta>,
    ) {
        let PutRequest {
            key,
            body,
            declared_len,
            expected_hash,
            condition,
            copy_of,
        } = request;
        let rules = PublishRules {
            expected_hash,
            condition,
            copy_of,
        };
        if self.puts_in_flight.contains(&key) {
            let _ = reply.send(Err(self.put_in_progress(&key)));
            return;
        }
        if self.puts_in_flight.len() >= TIER_PUTS_IN_FLIGHT_MAX {
            let _ = reply.send(Err(StorageError::Unavailable {
                tier: self.name.to_string(),
                reason: format!("{TIER_PUTS_IN_FLIGHT_MAX} puts already in progress"),
            }));
            return;
        }
        self.puts_in_flight.insert(key.clone());
        let backend = Arc::clone(&self.spec.backend);
        let limits = PutLimits {
            declared_len,
            object_bytes_max: self.spec.object_bytes_max,
        };
        let tier = self.name.clone();
        tokio::spawn(async move {
            let result = backend.stage(&key, body, limits).await;
            let message = TierMsg::Staged {
                key,
                result,
                rules,
                reply,
            };
            if let Err(MessagingErr::SendErr(TierMsg::Staged { result, reply, .. })) =
                myself.cast(message)
            {
                // The actor stopped while we streamed: nothing may be published without it.
                if let Ok(staged) = result {
                    backend.abort(staged).await;
                }
                let _ = reply.send(Err(StorageError::Unavailable {
                    tier: tier.to_string(),
                    reason: "the tier stopped during the put".to_string(),
                }));
            }
        });
    }

    async fn finish_put(
        &mut self,
        key: &ObjectKey,
        staged: Result<Staged, StorageError>,
        rules: PublishRules,
    ) -> Result<ObjectMeta, StorageError> {
        self.puts_in_flight.remove(key);
        let staged = staged?;
        if let Some(expected) = rules.expected_hash
            && staged.hash != expected
        {
            let actual = staged.hash;
            self.spec.backend.abort(staged).await;
            return Err(StorageError::HashMismatch {
                key: key.to_string(),
                expected,
                actual,
            });
        }
        let previous = match self.spec.index.get(key) {
            Ok(previous) => previous,
            Err(e) => {
                self.spec.backend.abort(staged).await;
                return Err(e);
            }
        };
        let tombstone = match self.spec.index.tombstone(key) {
            Ok(tombstone) => tombstone,
            Err(e) => {
                self.spec.backend.abort(staged).await;
                return Err(e);
            }
        };
        let refused = match (rules.condition, &previous) {
            // Nothing here (the version to replace, if any, moved away meanwhile): a copy
            // comes in unless this tier remembers a deletion after its version was written.
            (PutCondition::Absent | PutCondition::Replaces(_), None) => {
                match (tombstone, &rules.copy_of) {
                    (Some(at), Some(of)) if at >= of.modified_ms => Some(format!(
                        "it was deleted here (at {at}) after this version was written (at {})",
                        of.modified_ms
                    )),
                    _ => None,
                }
            }
            (PutCondition::Any, _) => None,
            (PutCondition::Absent, Some(_)) => {
                Some("it already holds a version, which stays".to_string())
            }
            // The same bytes may have been written again since the comparison: a copy only
            // replaces a version it is later than.
            (PutCondition::Replaces(hash), Some(p)) if p.hash == hash => match &rules.copy_of {
                Some(of) if !of.supersedes(p) => Some(format!(
                    "its version (written at {}) is not older than this one (written at {})",
                    p.modified_ms, of.modified_ms
                )),
                _ => None,
            },
            (PutCondition::Replaces(hash), Some(p)) => Some(format!(
                "the version to replace ({hash}) was replaced meanwhile by {}",
                p.hash
            )),
        };
        if let Some(reason) = refused {
            self.spec.backend.abort(staged).await;
            return Err(StorageError::Conflict {
                tier: self.name.to_string(),
                key: key.to_string(),
                reason,
            });
        }
        let (size, hash) = (staged.size, staged.hash);
        let committed = self.spec.backend.commit(staged).await?;
        let now = self.spec.clock.now_ms();
        let meta = match rules.copy_of {
            Some(of) => ObjectMeta {
                size,
                hash,
                created_ms: of.created_ms,
                modified_ms: of.modified_ms,
                version: of.version,
                stamp: committed.stamp,
            },
            None => ObjectMeta {
                size,
                hash,
                created_ms: previous.as_ref().map_or(now, |p| p.created_ms),
                // Later than the version it replaces or the deletion remembered, even if the
                // clock went back: versions are ordered by it.
                modified_ms: previous
                    .as_ref()
                    .map(|p| p.modified_ms)
                    .max(tombstone)
                    .map_or(now, |last| now.max(last.saturating_add(1))),
                version: previous.as_ref().map_or(1, |p| p.version + 1),
                stamp: committed.stamp,
            },
        };
        // Should this fail, the committed file is indexed by the next start's reconciliation.
        self.spec.index.insert(key, &meta)?;
        if tombstone.is_some() {
            self.spec.index.set_tombstone(key, None)?;
        }
        match previous {
            Some(previous) => self.bytes = self.bytes - previous.size + size,
            None => {
                self.objects += 1;
                self.bytes += size;
            }
        }
        debug!(tier = %self.name, %key, size, version = meta.version, "object committed");
        Ok(meta)
    }

    async fn get(&mut self, key: &ObjectKey) -> Result<(ObjectMeta, ObjectReader), StorageError> {
        let meta = self.head(key)?;
        match self.spec.backend.get(key).await {
            // The response's length comes from the index: it must be what the tier holds.
            Ok(reader) if reader.size != meta.size => Err(StorageError::Index(format!(
                "`{key}` on tier `{}` has {} bytes but its index entry says {}: it was changed outside letl; restarting the node re-indexes it",
                self.name, reader.size, meta.size
            ))),
            Ok(reader) => Ok((meta, reader)),
            Err(StorageError::NotFound { .. }) => {
                warn!(tier = %self.name, %key, "indexed object is missing from the tier; dropping its entry");
                self.forget(key)?;
                Err(self.not_found(key))
            }
            Err(e) => Err(e),
        }
    }

    fn head(&self, key: &ObjectKey) -> Result<ObjectMeta, StorageError> {
        self.spec.index.get(key)?.ok_or_else(|| self.not_found(key))
    }

    /// Inside the mailbox, so no commit of this key runs between reading the index entry and
    /// naming the file: the file named is the indexed object.
    async fn local_file(&self, key: &ObjectKey) -> Result<Option<LocalFile>, StorageError> {
        let meta = self.head(key)?;
        Ok(self
            .spec
            .backend
            .local_path(key)
            .await?
            .map(|(path, file_id)| LocalFile {
                path,
                file_id,
                size: meta.size,
                stamp: meta.stamp,
                hash: meta.hash,
            }))
    }

    /// Stages and commits in one step of the mailbox: a hard link takes no time worth
    /// streaming beside the actor for.
    async fn put_local_file(
        &mut self,
        key: &ObjectKey,
        file: &LocalFile,
    ) -> Result<Option<ObjectMeta>, StorageError> {
        if self.puts_in_flight.contains(key) {
            return Err(self.put_in_progress(key));
        }
        let staged = self
            .spec
            .backend
            .stage_local_file(key, file, self.spec.object_bytes_max)
            .await?;
        match staged {
            Some(staged) => {
                let rules = PublishRules {
                    expected_hash: Some(file.hash),
                    condition: PutCondition::Any,
                    copy_of: None,
                };
                self.finish_put(key, Ok(staged), rules).await.map(Some)
            }
            None => Ok(None),
        }
    }

    async fn delete(
        &mut self,
        key: &ObjectKey,
        expected_hash: Option<ContentHash>,
        mode: DeleteMode,
    ) -> Result<ObjectMeta, StorageError> {
        let meta = match self.spec.index.get(key)? {
            Some(meta) => meta,
            None => {
                // A conditional delete cannot tell whether the version it names is the one
                // elsewhere: only an unconditional one is remembered here.
                if mode == DeleteMode::AtHome && expected_hash.is_none() {
                    let at = self.spec.clock.now_ms();
                    let known = self.spec.index.tombstone(key)?;
                    if known.is_none_or(|known| known < at) {
                        self.spec.index.set_tombstone(key, Some(at))?;
                    }
                }
                return Err(self.not_found(key));
            }
        };
        if let Some(expected) = expected_hash
            && meta.hash != expected
        {
            return Err(StorageError::Conflict {
                tier: self.name.to_string(),
                key: key.to_string(),
                reason: format!("it changed (now {}, expected {expected})", meta.hash),
            });
        }
        if mode == DeleteMode::MovedAway {
            self.spec.backend.delete(key).await?;
        } else {
            // Remembered before the bytes go (a crash in between leaves a tombstone beside a
            // version, which the version's next write clears), and only if they do go.
            let before = self.spec.index.tombstone(key)?;
            let at = self
                .spec
                .clock
                .now_ms()
                .max(meta.modified_ms.saturating_add(1));
            self.spec.index.set_tombstone(key, Some(at))?;
            if let Err(e) = self.spec.backend.delete(key).await {
                self.spec.index.set_tombstone(key, before)?;
                return Err(e);
            }
        }
        self.forget(key)?;
        debug!(tier = %self.name, %key, ?mode, "object deleted");
        Ok(meta)
    }

    /// A deletion at `deleted_ms` learnt from another node (see [`TierMsg::Bury`]).
    async fn bury(
        &mut self,
        key: &ObjectKey,
        deleted_ms: u64,
    ) -> Result<Option<ObjectMeta>, StorageError> {
        let index = Arc::clone(&self.spec.index);
        let held = index.get(key)?;
        if held
            .as_ref()
            .is_some_and(|meta| meta.modified_ms > deleted_ms)
        {
            // Written after the deletion: it stays, and orders itself after it.
            return Ok(None);
        }
        if index.tombstone(key)?.is_none_or(|at| at < deleted_ms) {
            index.set_tombstone(key, Some(deleted_ms))?;
        }
        let Some(meta) = held else {
            return Ok(None);
        };
        self.spec.backend.delete(key).await?;
        self.forget(key)?;
        debug!(tier = %self.name, %key, deleted_ms, "object deleted by a deletion learnt from another node");
        Ok(Some(meta))
    }

    /// Forgets one page of expired tombstones; answers where the next page starts, if any.
    fn expire_tombstones(&self, start_after: Option<&ObjectKey>) -> Option<ObjectKey> {
        let index = &self.spec.index;
        let keep_ms = u64::try_from(TOMBSTONE_KEEP.as_millis()).unwrap_or(u64::MAX);
        let before = self.spec.clock.now_ms().saturating_sub(keep_ms);
        let page = match index.tombstones(start_after, TOMBSTONE_SWEEP_PAGE) {
            Ok(page) => page,
            Err(e) => {
                warn!(tier = %self.name, error = %e, "reading tombstones failed; the next sweep tries again");
                return None;
            }
        };
        let mut forgotten = 0;
        for (key, at) in &page {
            if *at < before {
                if let Err(e) = index.set_tombstone(key, None) {
                    warn!(tier = %self.name, error = %e, "forgetting a tombstone failed; the next sweep tries again");
                    return None;
                }
                forgotten += 1;
            }
        }
        if forgotten > 0 {
            debug!(tier = %self.name, forgotten, "expired tombstones forgotten");
        }
        if page.len() < TOMBSTONE_SWEEP_PAGE {
            return None;
        }
        page.last().map(|(key, _)| key.clone())
    }

    fn forget(&mut self, key: &ObjectKey) -> Result<(), StorageError> {
        if let Some(meta) = self.spec.index.remove(key)? {
            self.objects -= 1;
            self.bytes -= meta.size;
        }
        Ok(())
    }

    fn stats(&self) -> TierStats {
        TierStats {
            description: self.spec.backend.describe(),
            objects: self.objects,
            bytes: self.bytes,
            used_bytes: self.spec.backend.gauge().used_bytes(),
            puts_in_flight: self.puts_in_flight.len() as u64,
        }
    }

    fn not_found(&self, key: &ObjectKey) -> StorageError {
        StorageError::NotFound {
            tier: self.name.to_string(),
            key: key.to_string(),
        }
    }

    /// Answers a write only once the index holds it durably. The flush runs beside the actor, so
    /// other requests go on meanwhile; sled batches concurrent flushes into one.
    fn reply_after_flush<T: Send + 'static>(
        &self,
        reply: Reply<T>,
        outcome: Result<T, StorageError>,
    ) {
        let index = Arc::clone(&self.spec.index);
        tokio::spawn(async move {
            let outcome = match outcome {
                Ok(meta) => index.flush().await.map(|()| meta),
                Err(e) => Err(e),
            };
            let _ = reply.send(outcome);
        });
    }
}

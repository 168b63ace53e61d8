//! Where objects live in a cluster, and reaching them there.
//!
//! An object on a local tier (a directory, or memory) lives on the nodes picked by rendezvous
//! hashing of its key over the voters that publish a local tier of that name: each such node
//! scores `blake3(key, node id)` and the `replicas` highest hold the object. Hashing the key
//! alone keeps an object on its node when it changes tiers under the same key. Objects on
//! remote tiers (S3 endpoints) are reached from any node, so they are served where asked.
//!
//! [`Places`] offers the tier operations by URI and sends each to the nodes that hold the
//! object, here through the tier actor or there over the data plane (QUIC, bodies streamed).
//! A read asks the holders first, then every other node with the tier (an object placed under
//! an older member set is still found); a delete asks every node with the tier.
//! [`PlacesHandler`] serves other nodes' requests on this node's tiers, never further.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use futures_util::StreamExt;
use letl_actors::transform::{Transform, TransformRegistry};
use letl_actors::{DeleteMode, PutCondition, PutRequest, TierDirectory, TierHandle};
use letl_raft::NodeId;
use letl_raft::cluster::Cluster;
use letl_raft::data::{DATA_ANSWER_TIMEOUT, DATA_QUICK_ANSWER_TIMEOUT, DataHandler};
use letl_raft::transport::TransportError;
use letl_storage::codec::{decode_wire, encode_wire};
use letl_storage::{
    ByteStream, ContentHash, KeyPrefix, ObjectKey, ObjectMeta, ObjectReader, ObjectUri,
    StorageError, TierName,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::api::{RebalanceResponse, RebalanceStatus};
use crate::error::ApiError;

/// Chunks a replicated put keeps in flight towards each replica; the slowest sets the pace.
const REPLICA_CHUNKS_IN_FLIGHT_MAX: usize = 8;
/// A copy run by the node that holds its source answers within this long (it streams the
/// whole object first; a peer that dies is noticed sooner, by the connection's idle timeout).
const REMOTE_COPY_TIMEOUT: Duration = Duration::from_secs(4 * 3600);
/// A node that did not answer is asked last, for reads, for this long.
const SUSPECT_FOR: Duration = Duration::from_secs(10);
/// A read looks for an object again when it moved away between being seen and being opened,
/// at most this many times.
const FIND_ATTEMPTS_MAX: usize = 3;
/// How an operation refused because its node placed objects by an older member set ends (see
/// [`is_stale_view`]); that node has caught up when it answers.
const STALE_VIEW: &str = "placed by an older member set than";
/// What a replica's body ends with when another replica of the same put failed.
const REPLICA_ABORTED: &str = "another replica of this put failed";

/// A request for this node's own tiers, from another node.
#[derive(Debug, Serialize, Deserialize)]
enum DataRequest {
    Put {
        uri: String,
        declared_len: Option<u64>,
        expected_hash: Option<ContentHash>,
        /// Refused if the node holds the object already (sent by nodes from before
        /// `PutCopy`; they copy without the version's times).
        only_new: bool,
    },
    CheckPut {
        uri: String,
        declared_len: Option<u64>,
    },
    Get {
        uri: String,
    },
    Head {
        uri: String,
    },
    Delete {
        uri: String,
        expected_hash: Option<ContentHash>,
    },
    List {
        tier: String,
        prefix: String,
        start_after: Option<String>,
        limit: u64,
    },
    /// The object's bytes through a transform of `kind`, applied where the object is.
    GetTransformed {
        uri: String,
        kind: String,
    },
    /// The node's rebalancer status.
    RebalanceStatus,
    /// The provenance this node recorded for an output object, if any (JSON).
    Provenance {
        output: String,
    },
    /// Copy `source`, held by the node asked, to `destination` (wherever that belongs), if the
    /// source has `hash`: the bytes go from there straight to the destination's homes.
    CopyTo {
        source: String,
        destination: String,
        size: u64,
        hash: ContentHash,
    },
    /// A copy of `of`, a version of `uri` the sender holds, which keeps its times: only if
    /// the node holds no version of it (`replaces` is `None`) or the one with hash `replaces`
    /// (see `TierHandle::put_copy`).
    PutCopy {
        uri: String,
        of: ObjectMeta,
        replaces: Option<ContentHash>,
    },
    /// When `uri` was last deleted on the node asked, if it remembers.
    Tombstone {
        uri: String,
    },
    /// A deletion of `uri` at `deleted_ms`, for the node asked to apply and remember (see
    /// `TierHandle::bury`).
    Bury {
        uri: String,
        deleted_ms: u64,
    },
    /// A `Delete` at one of the object's homes: the deletion is remembered even if the node
    /// does not hold the object (see `DeleteMode::AtHome`).
    DeleteAtHome {
        uri: String,
        expected_hash: Option<ContentHash>,
    },
    /// `request` (encoded), from a node that placed `tier`'s objects by `view`: refused
    /// (`StaleView`) if the node asked places them otherwise, by a later control state.
    Fenced {
        tier: String,
        view: View,
        request: Vec<u8>,
    },
}

/// What a node places a tier's objects by: a fingerprint of the tier's keepers (those objects
/// are placed on, and those leaving), in its control state applied up to `applied`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct View {
    applied: u64,
    placement: u64,
}

#[derive(Debug, Serialize, Deserialize)]
enum DataAnswer {
    Meta(ObjectMeta),
    Listed(Vec<(String, ObjectMeta)>),
    Done,
    Failed(WireError),
    /// The transform failed on the object (its bytes were found).
    TransformFailed(String),
    /// A rebalancer status, as JSON.
    Rebalance(String),
    /// A provenance record, as JSON, if the node has one.
    Provenance(Option<String>),
    /// When the object was last deleted, if the node remembers.
    Tombstone(Option<u64>),
    /// The asker places the tier's objects by an older member set than this node, which
    /// applied its control state up to `applied`.
    StaleView {
        applied: u64,
    },
}

/// A [`StorageError`] as it crosses the network: the same kinds, I/O errors as their text.
#[derive(Debug, Serialize, Deserialize)]
enum WireError {
    InvalidUri {
        uri: String,
        reason: String,
    },
    InvalidKey {
        key: String,
        reason: String,
    },
    InvalidRequestId {
        id: String,
        reason: String,
    },
    InvalidTierName {
        name: String,
        reason: String,
    },
    UnknownTier {
        tier: String,
        known: String,
    },
    NotFound {
        tier: String,
        key: String,
    },
    TierFull {
        tier: String,
        needed: u64,
        available: u64,
        capacity: u64,
    },
    NoSpace {
        tier: String,
        reason: String,
    },
    TooLarge {
        size: u64,
        max: u64,
    },
    Conflict {
        tier: String,
        key: String,
        reason: String,
    },
    LengthMismatch {
        declared: u64,
        received: u64,
    },
    HashMismatch {
        key: String,
        expected: ContentHash,
        actual: ContentHash,
    },
    Body(String),
    Io {
        context: String,
        message: String,
    },
    Index(String),
    Unavailable {
        tier: String,
        reason: String,
    },
}

impl From<StorageError> for WireError {
    fn from(e: StorageError) -> Self {
        use StorageError as S;
        match e {
            S::InvalidUri { uri, reason } => Self::InvalidUri { uri, reason },
            S::InvalidKey { key, reason } => Self::InvalidKey { key, reason },
            S::InvalidRequestId { id, reason } => Self::InvalidRequestId { id, reason },
            S::InvalidTierName { name, reason } => Self::InvalidTierName { name, reason },
            S::UnknownTier { tier, known } => Self::UnknownTier { tier, known },
            S::NotFound { tier, key } => Self::NotFound { tier, key },
            S::TierFull {
                tier,
                needed,
                available,
                capacity,
            } => Self::TierFull {
                tier,
                needed,
                available,
                capacity,
            },
            S::NoSpace { tier, reason } => Self::NoSpace { tier, reason },
            S::TooLarge { size, max } => Self::TooLarge { size, max },
            S::Conflict { tier, key, reason } => Self::Conflict { tier, key, reason },
            S::LengthMismatch { declared, received } => Self::LengthMismatch { declared, received },
            S::HashMismatch {
                key,
                expected,
                actual,
            } => Self::HashMismatch {
                key,
                expected,
                actual,
            },
            S::Body(e) => Self::Body(e.to_string()),
            S::Io { context, source } => Self::Io {
                context,
                message: source.to_string(),
            },
            S::Index(e) => Self::Index(e),
            S::Unavailable { tier, reason } => Self::Unavailable { tier, reason },
        }
    }
}

impl From<WireError> for StorageError {
    fn from(e: WireError) -> Self {
        use WireError as W;
        match e {
            W::InvalidUri { uri, reason } => Self::InvalidUri { uri, reason },
            W::InvalidKey { key, reason } => Self::InvalidKey { key, reason },
            W::InvalidRequestId { id, reason } => Self::InvalidRequestId { id, reason },
            W::InvalidTierName { name, reason } => Self::InvalidTierName { name, reason },
            W::UnknownTier { tier, known } => Self::UnknownTier { tier, known },
            W::NotFound { tier, key } => Self::NotFound { tier, key },
            W::TierFull {
                tier,
                needed,
                available,
                capacity,
            } => Self::TierFull {
                tier,
                needed,
                available,
                capacity,
            },
            W::NoSpace { tier, reason } => Self::NoSpace { tier, reason },
            W::TooLarge { size, max } => Self::TooLarge { size, max },
            W::Conflict { tier, key, reason } => Self::Conflict { tier, key, reason },
            W::LengthMismatch { declared, received } => Self::LengthMismatch { declared, received },
            W::HashMismatch {
                key,
                expected,
                actual,
            } => Self::HashMismatch {
                key,
                expected,
                actual,
            },
            W::Body(message) => Self::Body(io::Error::other(message)),
            W::Io { context, message } => Self::Io {
                context,
                source: io::Error::other(message),
            },
            W::Index(e) => Self::Index(e),
            W::Unavailable { tier, reason } => Self::Unavailable { tier, reason },
        }
    }
}

/// Where one copy of an object is reached.
#[derive(Clone, Debug)]
enum Place {
    Here(TierHandle),
    There(NodeId),
}

/// Where [`Places::newest`] found the version reads see: its metadata, and its bytes if they
/// were opened.
enum Located {
    Open(Place, ObjectMeta, ObjectReader),
    Seen(Place, ObjectMeta),
}

/// A page of a listing merged from the nodes, and the nodes that could not answer.
#[derive(Debug, Default)]
pub struct Listing {
    pub entries: Vec<(ObjectKey, ObjectMeta)>,
    /// `node N: why`, for each node whose objects are missing from the page.
    pub unreachable: Vec<String>,
}

/// The rendezvous order of `nodes` for `key`: the first holds the object, the next its
/// replicas, in order.
pub fn rendezvous(key: &ObjectKey, nodes: impl IntoIterator<Item = NodeId>) -> Vec<NodeId> {
    let mut scored: Vec<(u64, NodeId)> = nodes
        .into_iter()
        .map(|node| {
            let mut hasher = blake3::Hasher::new();
            hasher.update(key.as_str().as_bytes());
            hasher.update(&[0]);
            hasher.update(&node.to_be_bytes());
            let digest = hasher.finalize();
            let mut score = [0u8; 8];
            score.copy_from_slice(&digest.as_bytes()[..8]);
            (u64::from_be_bytes(score), node)
        })
        .collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.into_iter().map(|(_, node)| node).collect()
}

/// Whether `e` says that an operation was refused because this node placed objects by an
/// older member set than the node asked (it has caught up since: trying again is right).
pub fn is_stale_view(e: &StorageError) -> bool {
    matches!(e, StorageError::Unavailable { reason, .. } if reason.contains(STALE_VIEW))
}

/// Objects by URI, wherever in the cluster they live.
#[derive(Clone, Debug)]
pub struct Places {
    inner: Arc<Inner>,
}

struct Inner {
    directory: TierDirectory,
    cluster: Cluster,
    replicas: usize,
    /// Nodes that lately failed to answer, and when.
    suspects: Mutex<BTreeMap<NodeId, Instant>>,
    /// This node's rebalancer status (see `rebalance`).
    rebalance: Arc<Mutex<RebalanceStatus>>,
    /// Looks up this node's provenance records (set once the pipelines are up).
    provenance: std::sync::OnceLock<ProvenanceLookup>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Places")
            .field("node", &self.cluster.node_id())
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

/// An output object's provenance record, as JSON, from this node's records.
pub type ProvenanceLookup = Arc<dyn Fn(&str) -> Result<Option<String>, String> + Send + Sync>;

impl Places {
    pub fn new(directory: TierDirectory, cluster: Cluster, replicas: usize) -> Self {
        assert!(replicas >= 1, "an object has at least one copy");
        Self {
            inner: Arc::new(Inner {
                directory,
                cluster,
                replicas,
                suspects: Mutex::new(BTreeMap::new()),
                rebalance: Arc::new(Mutex::new(RebalanceStatus::default())),
                provenance: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Serves other nodes' requests on this node's tiers, applying `transforms` for reads
    /// through a transform.
    pub fn serve(&self, transforms: Arc<TransformRegistry>) {
        self.inner.cluster.serve_data(Arc::new(PlacesHandler {
            directory: self.inner.directory.clone(),
            transforms,
            rebalance: Arc::clone(&self.inner.rebalance),
            places: Arc::downgrade(&self.inner),
        }));
    }

    /// Sets how other nodes' provenance questions are answered here (the first call wins).
    pub fn set_provenance(&self, lookup: ProvenanceLookup) {
        let _ = self.inner.provenance.set(lookup);
    }

    /// The provenance records other voters hold for `output` (JSON each): a pipeline's part
    /// records what it produced on the node that ran it.
    pub async fn provenance_elsewhere(&self, output: &str) -> Vec<String> {
        let me = self.me();
        let tier = TierName::new("provenance").ok();
        let asks = self
            .inner
            .cluster
            .voters()
            .into_iter()
            .filter(|&node| node != me && !self.suspected(node))
            .map(|node| {
                let tier = tier.clone();
                async move {
                    let tier = tier?;
                    let request = DataRequest::Provenance {
                        output: output.to_string(),
                    };
                    match self.call(node, &tier, &request, None).await {
                        Ok((DataAnswer::Provenance(record), _)) => record,
                        Ok(_) => None,
                        Err(e) => {
                            debug!(node, error = %e, "a node did not say what it produced");
                            None
                        }
                    }
                }
            });
        futures_util::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    pub fn cluster(&self) -> &Cluster {
        &self.inner.cluster
    }

    /// This node's rebalancer status, shared with the rebalancer that keeps it.
    pub fn rebalance_status(&self) -> Arc<Mutex<RebalanceStatus>> {
        Arc::clone(&self.inner.rebalance)
    }

    /// Every voter's rebalancer status, and whether objects are placed by the current
    /// member set everywhere.
    pub async fn rebalance(&self) -> RebalanceResponse {
        let voters = self.inner.cluster.voters();
        let me = self.me();
        let asks = voters.iter().map(|&node| async move {
            if node == me {
                return Ok(self
                    .inner
                    .rebalance
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone());
            }
            let tier = TierName::new("rebalance").map_err(|e| e.to_string())?;
            match self
                .call(node, &tier, &DataRequest::RebalanceStatus, None)
                .await
            {
                Ok((DataAnswer::Rebalance(json), _)) => {
                    serde_json::from_str(&json).map_err(|e| e.to_string())
                }
                Ok((other, _)) => Err(Self::unexpected(&tier, node, &other).to_string()),
                Err(e) => Err(e.to_string()),
            }
        });
        let mut members = Vec::new();
        let mut unreachable = Vec::new();
        for (node, answer) in voters
            .iter()
            .zip(futures_util::future::join_all(asks).await)
        {
            match answer {
                Ok(status) => members.push(status),
                Err(e) => unreachable.push(format!("node {node}: {e}")),
            }
        }
        // Each member placed its objects by what the current member set gives its tiers.
        let done = unreachable.is_empty()
            && members.iter().all(|m| {
                let tiers: Vec<TierName> = self.inner.cluster.read_local(|s| {
                    s.tiers
                        .get(&m.node)
                        .into_iter()
                        .flatten()
                        .filter(|t| t.backend != "s3")
                        .filter_map(|t| TierName::new(t.name.clone()).ok())
                        .collect()
                });
                m.state == "idle"
                    && m.passes > 0
                    && m.left_behind == 0
                    && m.placed_by_tier == crate::rebalance::signature_of(self, tiers)
            });
        RebalanceResponse {
            members,
            unreachable,
            done,
        }
    }

    pub fn directory(&self) -> &TierDirectory {
        &self.inner.directory
    }

    pub fn me(&self) -> NodeId {
        self.inner.cluster.node_id()
    }

    /// The nodes that keep objects of `tier` on local storage, as this node sees the control
    /// state: voters that published a non-S3 tier of that name. Empty: serve it here.
    pub fn holders(&self, tier: &TierName) -> Vec<NodeId> {
        self.split_keepers(tier).0
    }

    /// Every node that may hold objects of `tier`: [`Self::holders`] and the nodes emptying
    /// themselves to leave, which still serve what they hold.
    pub fn keepers(&self, tier: &TierName) -> Vec<NodeId> {
        let (mut placing, draining) = self.split_keepers(tier);
        placing.extend(draining);
        placing
    }

    /// The voters keeping `tier` locally: those objects are placed on, and those draining.
    fn split_keepers(&self, tier: &TierName) -> (Vec<NodeId>, Vec<NodeId>) {
        let (_, published, draining) = self.published_keepers(tier);
        if published.len() == 1 && published[0] == self.me() {
            return (Vec::new(), Vec::new());
        }
        // A remote tier here is served here, even if other nodes keep one of that name locally.
        if let Ok(handle) = self.inner.directory.get(tier)
            && !self.is_local_backend(&handle)
        {
            return (Vec::new(), Vec::new());
        }
        let (leaving, placing): (Vec<NodeId>, Vec<NodeId>) =
            published.iter().partition(|node| draining.contains(node));
        if placing.is_empty() {
            // Every keeper is leaving: they keep their objects.
            return (published, Vec::new());
        }
        (placing, leaving)
    }

    /// The voters that published a non-S3 tier `tier`, and the nodes draining, in the control
    /// state applied up to the index returned.
    fn published_keepers(&self, tier: &TierName) -> (u64, Vec<NodeId>, BTreeSet<NodeId>) {
        let voters = self.inner.cluster.voters();
        let name = tier.as_str();
        let (applied, (published, draining)) = self.inner.cluster.read_applied(|state| {
            let published = state
                .tiers
                .iter()
                .filter(|(node, _)| voters.contains(node))
                .filter(|(_, tiers)| tiers.iter().any(|t| t.name == name && t.backend != "s3"))
                .map(|(node, _)| *node)
                .collect::<Vec<_>>();
            (published, state.draining.clone())
        });
        (applied, published, draining)
    }

    /// What this node places `tier`'s objects by now (see [`View`]).
    fn view(&self, tier: &TierName) -> View {
        let (applied, published, draining) = self.published_keepers(tier);
        let leaving: Vec<NodeId> = published
            .iter()
            .copied()
            .filter(|node| draining.contains(node))
            .collect();
        let keepers = (published, leaving);
        let mut hasher = blake3::Hasher::new();
        for node in keepers.0.iter().chain([&0]).chain(&keepers.1) {
            hasher.update(&node.to_le_bytes());
        }
        let mut placement = [0u8; 8];
        placement.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
        View {
            applied,
            placement: u64::from_le_bytes(placement),
        }
    }

    pub fn is_local_backend(&self, handle: &TierHandle) -> bool {
        self.inner
            .cluster
            .read_local(|state| {
                state.tiers.get(&self.me()).and_then(|tiers| {
                    tiers
                        .iter()
                        .find(|t| t.name == handle.name().as_str())
                        .map(|t| t.backend != "s3")
                })
            })
            .unwrap_or(true)
    }

    /// The places of `uri` in the order reads ask them: its homes, then other keepers, with
    /// nodes that lately did not answer last (a dead holder costs one timeout, not one per
    /// read). While nodes of its tier are leaving, the place of the version reads see (see
    /// [`Self::newest`]) comes first.
    async fn read_order(&self, uri: &ObjectUri) -> Result<Vec<Place>, StorageError> {
        let (mut places, _) = self.ranked(uri)?;
        places.sort_by_key(|place| matches!(place, Place::There(node) if self.suspected(*node)));
        if !self.split_keepers(&uri.tier).1.is_empty()
            && let Ok(Located::Seen(newest, _)) = self.newest(uri, false).await
        {
            let node = self.node_of(&newest);
            places.sort_by_key(|place| self.node_of(place) != node);
        }
        Ok(places)
    }

    /// What a read of `uri` that found it nowhere answers: not found, or unavailable if some
    /// nodes did not answer (`unreachable`).
    fn found_nowhere(uri: &ObjectUri, unreachable: &[String]) -> StorageError {
        if unreachable.is_empty() {
            StorageError::NotFound {
                tier: uri.tier.to_string(),
                key: uri.key.to_string(),
            }
        } else {
            StorageError::Unavailable {
                tier: uri.tier.to_string(),
                reason: format!(
                    "`{}` is on no node that answered ({})",
                    uri.key,
                    unreachable.join("; ")
                ),
            }
        }
    }

    /// Whether `node` lately failed to answer.
    pub fn suspected(&self, node: NodeId) -> bool {
        self.inner
            .suspects
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .is_some_and(|since| since.elapsed() < SUSPECT_FOR)
    }

    /// Whether some node keeps `tier` (this one, or one that published it).
    pub fn check_tier(&self, tier: &TierName) -> Result<(), StorageError> {
        if self.keepers(tier).is_empty() {
            self.inner.directory.get(tier)?;
        }
        Ok(())
    }

    fn place(&self, tier: &TierName, node: NodeId) -> Result<Place, StorageError> {
        if node == self.me() {
            Ok(Place::Here(self.inner.directory.get(tier)?))
        } else {
            Ok(Place::There(node))
        }
    }

    /// Where the copies of `uri` belong (the first is its home), then every other node with
    /// its tier, in rendezvous order.
    fn ranked(&self, uri: &ObjectUri) -> Result<(Vec<Place>, usize), StorageError> {
        let (placing, draining) = self.split_keepers(&uri.tier);
        if placing.is_empty() {
            return Ok((vec![Place::Here(self.inner.directory.get(&uri.tier)?)], 1));
        }
        let mut order = rendezvous(&uri.key, placing);
        let homes = self.inner.replicas.min(order.len());
        // Nodes leaving still hold objects until they have moved them: asked after the rest.
        order.extend(rendezvous(&uri.key, draining));
        let places = order
            .into_iter()
            .map(|node| self.place(&uri.tier, node))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((places, homes))
    }

    /// The nodes that should hold `uri`, its home first; empty when its tier is served
    /// wherever it is asked (a remote tier, or one kept by this node alone).
    pub fn homes(&self, uri: &ObjectUri) -> Vec<NodeId> {
        let holders = self.holders(&uri.tier);
        if holders.is_empty() {
            return Vec::new();
        }
        let mut order = rendezvous(&uri.key, holders);
        order.truncate(self.inner.replicas);
        order
    }

    /// Copies `source` (of `size` bytes and `hash`) to `destination` from the node that
    /// holds it: the bytes stream from there to the destination's homes, not through here.
    /// A source that is not there, or has other bytes, is `NotFound` or a `Conflict`.
    pub async fn copy(
        &self,
        source: &ObjectUri,
        destination: &ObjectUri,
        size: u64,
        hash: ContentHash,
    ) -> Result<ObjectMeta, StorageError> {
        let places = self.read_order(source).await?;
        let mut unreachable = Vec::new();
        for place in &places {
            let outcome = match place {
                Place::Here(_) => self.copy_here(source, destination, size, hash).await,
                Place::There(node) => {
                    let request = DataRequest::CopyTo {
                        source: source.to_string(),
                        destination: destination.to_string(),
                        size,
                        hash,
                    };
                    match self.call(*node, &source.tier, &request, None).await {
                        Ok((DataAnswer::Meta(meta), _)) => Ok(meta),
                        Ok((other, _)) => Err(Self::unexpected(&source.tier, *node, &other)),
                        Err(e) => Err(e),
                    }
                }
            };
            match outcome {
                // Not on that node: the next may hold it.
                Err(StorageError::NotFound { ref tier, ref key })
                    if *tier == source.tier.as_str() && *key == source.key.as_str() => {}
                Err(e) if is_stale_view(&e) => return Err(e),
                // That holder did not answer (the call made it a suspect): ask the next.
                Err(e @ StorageError::Unavailable { .. }) if matches!(place, Place::There(node) if self.suspected(*node)) =>
                {
                    unreachable.push(e.to_string());
                }
                // After a holder that did not answer (its copy may have landed), a refusal
                // from another is not the final word.
                Err(e) if !unreachable.is_empty() && crate::moves::is_clean_refusal(&e) => {
                    return Err(StorageError::Unavailable {
                        tier: source.tier.to_string(),
                        reason: format!("{e}, after: {}", unreachable.join("; ")),
                    });
                }
                other => return other,
            }
        }
        Err(Self::found_nowhere(source, &unreachable))
    }

    /// The copy, run here, of a source this node holds.
    async fn copy_here(
        &self,
        source: &ObjectUri,
        destination: &ObjectUri,
        size: u64,
        hash: ContentHash,
    ) -> Result<ObjectMeta, StorageError> {
        let (meta, reader) = self
            .inner
            .directory
            .get(&source.tier)?
            .get(source.key.clone())
            .await?;
        if meta.hash != hash {
            return Err(StorageError::Conflict {
                tier: source.tier.to_string(),
                key: source.key.to_string(),
                reason: format!("it changed: it now has {}, not {hash}", meta.hash),
            });
        }
        self.put(
            destination,
            reader.body.into_stream(),
            Some(size),
            Some(hash),
        )
        .await
    }

    /// `uri`'s metadata on node `node` only.
    pub async fn head_on(&self, node: NodeId, uri: &ObjectUri) -> Result<ObjectMeta, StorageError> {
        let place = self.place(&uri.tier, node)?;
        Ok(self.look_at(&place, uri, false).await?.0)
    }

    /// Puts a copy of `of`, a version of `uri` this node holds, on node `node` only, keeping
    /// its times: refused (`Conflict`) unless that node holds no version of `uri` when the
    /// copy would be published (`replaces` is `None`), or the one with hash `replaces`.
    pub async fn put_copy_on(
        &self,
        node: NodeId,
        uri: &ObjectUri,
        body: ByteStream,
        of: ObjectMeta,
        replaces: Option<ContentHash>,
    ) -> Result<ObjectMeta, StorageError> {
        match self.place(&uri.tier, node)? {
            Place::Here(handle) => {
                let condition = replaces.map_or(PutCondition::Absent, PutCondition::Replaces);
                handle.put_copy(uri.key.clone(), body, of, condition).await
            }
            Place::There(node) => {
                let request = DataRequest::PutCopy {
                    uri: uri.to_string(),
                    of,
                    replaces,
                };
                match self.call(node, &uri.tier, &request, Some(body)).await? {
                    (DataAnswer::Meta(meta), _) => Ok(meta),
                    (other, _) => Err(Self::unexpected(&uri.tier, node, &other)),
                }
            }
        }
    }

    /// When `uri` was last deleted on node `node`, if it remembers.
    pub async fn tombstone_on(
        &self,
        node: NodeId,
        uri: &ObjectUri,
    ) -> Result<Option<u64>, StorageError> {
        match self.place(&uri.tier, node)? {
            Place::Here(handle) => handle.tombstone(uri.key.clone()).await,
            Place::There(node) => {
                let request = DataRequest::Tombstone {
                    uri: uri.to_string(),
                };
                match self.call(node, &uri.tier, &request, None).await? {
                    (DataAnswer::Tombstone(at), _) => Ok(at),
                    (other, _) => Err(Self::unexpected(&uri.tier, node, &other)),
                }
            }
        }
    }

    /// Has node `node` apply and remember a deletion of `uri` at `deleted_ms` (see
    /// `TierHandle::bury`).
    pub async fn bury_on(
        &self,
        node: NodeId,
        uri: &ObjectUri,
        deleted_ms: u64,
    ) -> Result<(), StorageError> {
        match self.place(&uri.tier, node)? {
            Place::Here(handle) => handle.bury(uri.key.clone(), deleted_ms).await.map(drop),
            Place::There(node) => {
                let request = DataRequest::Bury {
                    uri: uri.to_string(),
                    deleted_ms,
                };
                match self.call(node, &uri.tier, &request, None).await? {
                    (DataAnswer::Done, _) => Ok(()),
                    (other, _) => Err(Self::unexpected(&uri.tier, node, &other)),
                }
            }
        }
    }

    /// Deletes `uri` at `place` only (with `expected_hash`: only if it has those bytes);
    /// `mode` is `Deleted` or `AtHome`.
    async fn delete_at(
        &self,
        place: Place,
        uri: &ObjectUri,
        expected_hash: Option<ContentHash>,
        mode: DeleteMode,
    ) -> Result<ObjectMeta, StorageError> {
        match place {
            Place::Here(handle) => handle.delete_as(uri.key.clone(), expected_hash, mode).await,
            Place::There(node) => {
                let request = if mode == DeleteMode::AtHome {
                    DataRequest::DeleteAtHome {
                        uri: uri.to_string(),
                        expected_hash,
                    }
                } else {
                    DataRequest::Delete {
                        uri: uri.to_string(),
                        expected_hash,
                    }
                };
                match self.call(node, &uri.tier, &request, None).await? {
                    (DataAnswer::Meta(meta), _) => Ok(meta),
                    (other, _) => Err(Self::unexpected(&uri.tier, node, &other)),
                }
            }
        }
    }

    /// Deletes `uri` on `node`, one of its homes, only (with `expected_hash`: only if it has
    /// those bytes); the deletion is remembered there even if it does not hold the object.
    pub async fn delete_on(
        &self,
        node: NodeId,
        uri: &ObjectUri,
        expected_hash: Option<ContentHash>,
    ) -> Result<ObjectMeta, StorageError> {
        let place = self.place(&uri.tier, node)?;
        self.delete_at(place, uri, expected_hash, DeleteMode::AtHome)
            .await
    }

    /// The node that is `uri`'s home (where its transforms run).
    pub fn home(&self, uri: &ObjectUri) -> NodeId {
        match self.ranked(uri) {
            Ok((places, _)) => match places.first() {
                Some(Place::There(node)) => *node,
                _ => self.me(),
            },
            Err(_) => self.me(),
        }
    }

    /// Whether this node runs the transforms of `uri`, which it holds: no node ranked above
    /// it for the object holds it too (whatever the member set it was placed by). A node
    /// that does not answer is taken not to hold it: its own part cannot run either.
    pub async fn processes_here(&self, uri: &ObjectUri) -> bool {
        let Ok((places, _)) = self.ranked(uri) else {
            return true;
        };
        for place in &places {
            match place {
                Place::Here(_) => return true,
                // Lately silent: taken not to hold it without waiting for it again.
                Place::There(node) if self.suspected(*node) => {}
                Place::There(_) => {
                    if self.look_at(place, uri, false).await.is_ok() {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// This node's tier actor for `uri`, if this node is the object's only home.
    pub fn only_here(&self, uri: &ObjectUri) -> Option<TierHandle> {
        match self.ranked(uri) {
            Ok((places, 1)) => match places.into_iter().next() {
                Some(Place::Here(handle)) => Some(handle),
                _ => None,
            },
            _ => None,
        }
    }

    async fn call(
        &self,
        node: NodeId,
        tier: &TierName,
        request: &DataRequest,
        body: Option<ByteStream>,
    ) -> Result<(DataAnswer, ByteStream), StorageError> {
        let fenced = DataRequest::Fenced {
            tier: tier.to_string(),
            view: self.view(tier),
            request: encode_wire(request).map_err(|e| StorageError::Index(e.to_string()))?,
        };
        let header = encode_wire(&fenced).map_err(|e| StorageError::Index(e.to_string()))?;
        let unavailable = |reason: String| StorageError::Unavailable {
            tier: tier.to_string(),
            reason: format!("node {node}: {reason}"),
        };
        // A body to take in, or a transform to run, may take a while before the answer.
        let timeout = if matches!(request, DataRequest::CopyTo { .. }) {
            REMOTE_COPY_TIMEOUT
        } else if body.is_some() || matches!(request, DataRequest::GetTransformed { .. }) {
            DATA_ANSWER_TIMEOUT
        } else {
            DATA_QUICK_ANSWER_TIMEOUT
        };
        let reply = self
            .inner
            .cluster
            .data_call(node, &header, body, timeout)
            .await;
        let reply = {
            let mut suspects = self
                .inner
                .suspects
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match reply {
                Ok(reply) => {
                    suspects.remove(&node);
                    reply
                }
                Err(e) => {
                    // Only a node that does not answer is suspect (not one our body failed to).
                    if matches!(
                        e,
                        TransportError::Unreachable { .. } | TransportError::Timeout { .. }
                    ) {
                        suspects.insert(node, Instant::now());
                    }
                    return Err(unavailable(e.to_string()));
                }
            }
        };
        let answer: DataAnswer = decode_wire(&reply.header)
            .map_err(|e| unavailable(format!("an undecodable answer: {e}")))?;
        match answer {
            DataAnswer::Failed(e) => Err(e.into()),
            DataAnswer::StaleView { applied } => {
                // Catch up before answering, so that trying again places objects as it does.
                let caught_up = match self.inner.cluster.read(|_| ()).await {
                    Ok(()) => "this node caught up".to_string(),
                    Err(e) => format!("this node could not catch up: {e}"),
                };
                Err(unavailable(format!(
                    "{tier} was {STALE_VIEW} its own (applied up to {applied}); {caught_up}: try again"
                )))
            }
            answer => Ok((answer, reply.body)),
        }
    }

    fn unexpected(tier: &TierName, node: NodeId, answer: &DataAnswer) -> StorageError {
        StorageError::Unavailable {
            tier: tier.to_string(),
            reason: format!("node {node} answered out of turn: {answer:?}"),
        }
    }

    async fn put_at(
        &self,
        place: &Place,
        uri: &ObjectUri,
        body: ByteStream,
        declared_len: Option<u64>,
        expected_hash: Option<ContentHash>,
    ) -> Result<ObjectMeta, StorageError> {
        match place {
            Place::Here(handle) => {
                handle
                    .put(uri.key.clone(), body, declared_len, expected_hash)
                    .await
            }
            Place::There(node) => {
                let request = DataRequest::Put {
                    uri: uri.to_string(),
                    declared_len,
                    expected_hash,
                    only_new: false,
                };
                match self.call(*node, &uri.tier, &request, Some(body)).await? {
                    (DataAnswer::Meta(meta), _) => Ok(meta),
                    (other, _) => Err(Self::unexpected(&uri.tier, *node, &other)),
                }
            }
        }
    }

    /// Puts `uri` on each of its homes; done when every one has it durably.
    pub async fn put(
        &self,
        uri: &ObjectUri,
        body: ByteStream,
        declared_len: Option<u64>,
        expected_hash: Option<ContentHash>,
    ) -> Result<ObjectMeta, StorageError> {
        Ok(self
            .put_counted(uri, body, declared_len, expected_hash)
            .await?
            .0)
    }

    /// [`Self::put`], also saying to how many other nodes the bytes went.
    pub async fn put_counted(
        &self,
        uri: &ObjectUri,
        body: ByteStream,
        declared_len: Option<u64>,
        expected_hash: Option<ContentHash>,
    ) -> Result<(ObjectMeta, usize), StorageError> {
        let (places, homes) = self.ranked(uri)?;
        let homes = &places[..homes];
        let remote = homes
            .iter()
            .filter(|p| matches!(p, Place::There(_)))
            .count();
        if let [only] = homes {
            let meta = self
                .put_at(only, uri, body, declared_len, expected_hash)
                .await?;
            return Ok((meta, remote));
        }
        // One body, several receivers: each chunk goes to every replica through a bounded
        // queue. Only an explicit end marker ends a replica's body cleanly: a replica that
        // fails, a body that fails, or this put abandoned half-way (its queues dropped) ends
        // the others' bodies in an error, never in a short object.
        let mut senders = Vec::with_capacity(homes.len());
        let mut puts = Vec::with_capacity(homes.len());
        for place in homes {
            let (tx, rx) = mpsc::channel::<Piece>(REPLICA_CHUNKS_IN_FLIGHT_MAX);
            senders.push(tx);
            let body: ByteStream = Box::pin(replica_body(rx));
            puts.push(self.put_at(place, uri, body, declared_len, expected_hash));
        }
        let pump = async move {
            let mut body = body;
            loop {
                let piece = match body.next().await {
                    Some(Ok(chunk)) => Piece::Data(chunk),
                    Some(Err(e)) => Piece::Failed(e.to_string()),
                    None => Piece::End,
                };
                let last = !matches!(piece, Piece::Data(_));
                for tx in &senders {
                    if tx.send(piece.clone()).await.is_err() {
                        // That replica gave up: the others' bodies end in an error (a
                        // dropped queue would too; this names why).
                        for tx in &senders {
                            let _ = tx.send(Piece::Failed(REPLICA_ABORTED.to_string())).await;
                        }
                        return;
                    }
                }
                if last {
                    return;
                }
            }
        };
        let (results, ()) = tokio::join!(futures_util::future::join_all(puts), pump);
        let mut first = None;
        let mut failure = None;
        for result in results {
            match result {
                Ok(meta) => {
                    first.get_or_insert(meta);
                }
                Err(e) => {
                    // The error that says most about what happened: a failure of the
                    // replica itself over the others' being aborted, and one that may have
                    // left a copy (unavailable, I/O) over a clean refusal, which the mover
                    // would record as final.
                    let weight = if e.to_string().contains(REPLICA_ABORTED) {
                        0
                    } else if crate::moves::is_clean_refusal(&e) {
                        1
                    } else {
                        2
                    };
                    if failure.as_ref().is_none_or(|(w, _)| *w < weight) {
                        failure = Some((weight, e));
                    }
                }
            }
        }
        match (failure, first) {
            // Some copies are published: not a clean refusal, whatever the others said (a
            // mover must leave such a transfer pending, not record it failed).
            (Some((_, e)), Some(_)) => Err(StorageError::Unavailable {
                tier: uri.tier.to_string(),
                reason: format!("{uri} is on some of its homes only: {e}"),
            }),
            (Some((_, e)), None) => Err(e),
            (None, Some(meta)) => Ok((meta, remote)),
            (None, None) => Err(StorageError::Index(format!(
                "{uri} had no home to put it on"
            ))),
        }
    }

    /// The checks a put of `uri` would fail right away, on each of its homes.
    pub async fn check_put(
        &self,
        uri: &ObjectUri,
        declared_len: Option<u64>,
    ) -> Result<(), StorageError> {
        let (places, homes) = self.ranked(uri)?;
        for place in &places[..homes] {
            match place {
                Place::Here(handle) => handle.check_put(uri.key.clone(), declared_len).await?,
                Place::There(node) => {
                    let request = DataRequest::CheckPut {
                        uri: uri.to_string(),
                        declared_len,
                    };
                    let _answer = self.call(*node, &uri.tier, &request, None).await?;
                }
            }
        }
        Ok(())
    }

    /// The object at one place: its metadata, and its bytes if `open`.
    async fn look_at(
        &self,
        place: &Place,
        uri: &ObjectUri,
        open: bool,
    ) -> Result<(ObjectMeta, Option<ObjectReader>), StorageError> {
        match place {
            Place::Here(handle) if open => {
                let (meta, reader) = handle.get(uri.key.clone()).await?;
                Ok((meta, Some(reader)))
            }
            Place::Here(handle) => Ok((handle.head(uri.key.clone()).await?, None)),
            Place::There(node) => {
                let request = if open {
                    DataRequest::Get {
                        uri: uri.to_string(),
                    }
                } else {
                    DataRequest::Head {
                        uri: uri.to_string(),
                    }
                };
                match self.call(*node, &uri.tier, &request, None).await? {
                    (DataAnswer::Meta(meta), body) => {
                        let reader = open.then(|| ObjectReader {
                            size: meta.size,
                            body: body.into(),
                        });
                        Ok((meta, reader))
                    }
                    (other, _) => Err(Self::unexpected(&uri.tier, *node, &other)),
                }
            }
        }
    }

    /// The node a place is.
    fn node_of(&self, place: &Place) -> NodeId {
        match place {
            Place::Here(_) => self.me(),
            Place::There(node) => *node,
        }
    }

    /// Puts nodes that lately did not answer last.
    fn suspects_last<'a>(&self, places: impl Iterator<Item = &'a Place>) -> Vec<&'a Place> {
        let mut places: Vec<&Place> = places.collect();
        places.sort_by_key(|place| matches!(place, Place::There(node) if self.suspected(*node)));
        places
    }

    /// Where the version of `uri` that reads see is: the first home that holds one, unless a
    /// node leaving the cluster holds a later one (until its drain has moved it); if no home
    /// holds one, the latest version among the other keepers (a rebalance under way), unless
    /// a home deleted the object after that version was written. With `open`, and no node
    /// leaving, the home's bytes are opened at once.
    async fn newest(&self, uri: &ObjectUri, open: bool) -> Result<Located, StorageError> {
        let (places, homes) = self.ranked(uri)?;
        let (_, draining) = self.split_keepers(&uri.tier);
        let mut unreachable = Vec::new();
        let mut best: Option<(Place, ObjectMeta)> = None;
        for place in self.suspects_last(places[..homes].iter()) {
            match self.look_at(place, uri, open && draining.is_empty()).await {
                Ok((meta, Some(reader))) => return Ok(Located::Open(place.clone(), meta, reader)),
                Ok((meta, None)) => {
                    best = Some((place.clone(), meta));
                    break;
                }
                Err(StorageError::NotFound { .. }) => {}
                Err(e) if is_stale_view(&e) => return Err(e),
                Err(e @ StorageError::Unavailable { .. }) => {
                    debug!(%uri, error = %e, "a holder did not answer; asking the next");
                    unreachable.push(e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        let mut found_at_home = best.is_some();
        let others = places[homes..]
            .iter()
            .filter(|place| !found_at_home || draining.contains(&self.node_of(place)));
        for place in self.suspects_last(others) {
            match self.look_at(place, uri, false).await {
                Ok((meta, _)) => {
                    if best.as_ref().is_none_or(|(_, b)| meta.supersedes(b)) {
                        best = Some((place.clone(), meta));
                    }
                }
                Err(StorageError::NotFound { .. }) => {}
                Err(e) if is_stale_view(&e) => return Err(e),
                Err(e) if found_at_home => {
                    debug!(%uri, error = %e, "a node leaving did not answer; reading the home's version");
                }
                Err(e @ StorageError::Unavailable { .. }) => {
                    debug!(%uri, error = %e, "a holder did not answer; asking the next");
                    unreachable.push(e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        if best.is_none() && homes < places.len() {
            // Objects move from other keepers to the homes, landing before they leave: one
            // that moved while the others were asked is on a home now.
            for place in self.suspects_last(places[..homes].iter()) {
                match self.look_at(place, uri, false).await {
                    Ok((meta, _)) => {
                        best = Some((place.clone(), meta));
                        found_at_home = true;
                        break;
                    }
                    Err(e) if is_stale_view(&e) => return Err(e),
                    Err(_) => {}
                }
            }
        }
        let Some((place, meta)) = best else {
            return Err(Self::found_nowhere(uri, &unreachable));
        };
        if !found_at_home {
            // A copy off the homes that a home deleted later (a node holding it did not
            // answer the delete) is no longer the object.
            for home in self.suspects_last(places[..homes].iter()) {
                match self.tombstone_on(self.node_of(home), uri).await {
                    Ok(Some(deleted_ms)) if deleted_ms >= meta.modified_ms => {
                        return Err(StorageError::NotFound {
                            tier: uri.tier.to_string(),
                            key: uri.key.to_string(),
                        });
                    }
                    Ok(_) => {}
                    Err(e) if is_stale_view(&e) => return Err(e),
                    Err(e) => {
                        debug!(%uri, error = %e, "a home did not say whether it deleted the object");
                    }
                }
            }
        }
        Ok(Located::Seen(place, meta))
    }

    /// The version of `uri` reads see (see [`Self::newest`]): its metadata, its bytes if
    /// `open`, and whether they are on another node.
    async fn find(
        &self,
        uri: &ObjectUri,
        open: bool,
    ) -> Result<(ObjectMeta, Option<ObjectReader>, bool), StorageError> {
        let mut last = None;
        for _ in 0..FIND_ATTEMPTS_MAX {
            let located = match self.newest(uri, open).await {
                // This node has caught up with the member set: look again by it.
                Err(e) if is_stale_view(&e) => {
                    last = Some(e);
                    continue;
                }
                located => located?,
            };
            let (place, meta) = match located {
                Located::Open(place, meta, reader) => {
                    return Ok((meta, Some(reader), matches!(place, Place::There(_))));
                }
                Located::Seen(place, meta) => (place, meta),
            };
            let remote = matches!(place, Place::There(_));
            if !open {
                return Ok((meta, None, remote));
            }
            match self.look_at(&place, uri, true).await {
                Ok((meta, reader)) => return Ok((meta, reader, remote)),
                // Moved or deleted since it was seen there, or the member set changed: look
                // again.
                Err(e @ StorageError::NotFound { .. }) => last = Some(e),
                Err(e) if is_stale_view(&e) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(match last {
            Some(e) if is_stale_view(&e) => e,
            _ => StorageError::Unavailable {
                tier: uri.tier.to_string(),
                reason: format!(
                    "`{}` moved away from each node it was seen on, {FIND_ATTEMPTS_MAX} times",
                    uri.key
                ),
            },
        })
    }

    pub async fn get(&self, uri: &ObjectUri) -> Result<(ObjectMeta, ObjectReader), StorageError> {
        let (meta, reader, _) = self.get_counted(uri).await?;
        Ok((meta, reader))
    }

    /// [`Self::get`], also saying whether the bytes come from another node.
    pub async fn get_counted(
        &self,
        uri: &ObjectUri,
    ) -> Result<(ObjectMeta, ObjectReader, bool), StorageError> {
        let (meta, reader, remote) = self.find(uri, true).await?;
        let reader =
            reader.ok_or_else(|| StorageError::Index(format!("{uri} opened without its bytes")))?;
        Ok((meta, reader, remote))
    }

    /// `uri`'s bytes through `transform` (of `kind`), applied on the node that holds the
    /// object: only the result crosses the network.
    pub async fn get_transformed(
        &self,
        uri: &ObjectUri,
        kind: &str,
        transform: Arc<dyn Transform>,
    ) -> Result<ByteStream, ApiError> {
        let places = self.read_order(uri).await?;
        let transform_failed =
            |message: String| ApiError::new(axum::http::StatusCode::BAD_GATEWAY, message);
        let mut unreachable = Vec::new();
        for place in &places {
            let outcome = match place {
                Place::Here(handle) => match handle.get(uri.key.clone()).await {
                    Ok((_, reader)) => {
                        return transform
                            .apply_body(reader.body)
                            .await
                            .map_err(|e| transform_failed(e.0));
                    }
                    Err(e) => e,
                },
                Place::There(node) => {
                    let request = DataRequest::GetTransformed {
                        uri: uri.to_string(),
                        kind: kind.to_string(),
                    };
                    match self.call(*node, &uri.tier, &request, None).await {
                        Ok((DataAnswer::Done, body)) => return Ok(body),
                        Ok((DataAnswer::TransformFailed(message), _)) => {
                            return Err(transform_failed(message));
                        }
                        Ok((other, _)) => Self::unexpected(&uri.tier, *node, &other),
                        Err(e) => e,
                    }
                }
            };
            match outcome {
                StorageError::NotFound { .. } => {}
                e if is_stale_view(&e) => return Err(e.into()),
                e @ StorageError::Unavailable { .. } => unreachable.push(e.to_string()),
                e => return Err(e.into()),
            }
        }
        Err(Self::found_nowhere(uri, &unreachable).into())
    }

    pub async fn head(&self, uri: &ObjectUri) -> Result<ObjectMeta, StorageError> {
        Ok(self.find(uri, false).await?.0)
    }

    /// Deletes `uri` from its homes (with `expected_hash`: only where it still has those
    /// bytes), then any copy of it on other nodes. A copy off the homes while a home held a
    /// version is stale and goes whatever its bytes (else it would come back into reads, and
    /// by a rebalance onto the homes); with no version on the homes, the copies elsewhere are
    /// the object, and `expected_hash` applies to them. Only the homes' answers, or the other
    /// copies' when the homes had none, decide the outcome; a node that does not answer for a
    /// stale copy is logged.
    pub async fn delete(
        &self,
        uri: &ObjectUri,
        expected_hash: Option<ContentHash>,
    ) -> Result<ObjectMeta, StorageError> {
        let (places, homes) = self.ranked(uri)?;
        let delete_at = |place: &Place, expected_hash, mode| {
            self.delete_at(place.clone(), uri, expected_hash, mode)
        };
        let mut deleted = None;
        let mut failure = None;
        let mut home_held = false;
        // A tier kept by this node alone has no copies on their way to remember it for.
        let at_home = if self.holders(&uri.tier).is_empty() {
            DeleteMode::Deleted
        } else {
            DeleteMode::AtHome
        };
        let at_homes = places[..homes]
            .iter()
            .map(|p| delete_at(p, expected_hash, at_home));
        for outcome in futures_util::future::join_all(at_homes).await {
            match outcome {
                Ok(meta) => {
                    home_held = true;
                    deleted.get_or_insert(meta);
                }
                Err(StorageError::NotFound { .. }) => {}
                Err(e) => {
                    home_held |= matches!(e, StorageError::Conflict { .. });
                    failure.get_or_insert(e);
                }
            }
        }
        let others_hash = if home_held { None } else { expected_hash };
        let elsewhere = places[homes..]
            .iter()
            .map(|p| delete_at(p, others_hash, DeleteMode::Deleted));
        for outcome in futures_util::future::join_all(elsewhere).await {
            match outcome {
                Ok(meta) => {
                    deleted.get_or_insert(meta);
                }
                Err(StorageError::NotFound { .. }) => {}
                Err(e) if home_held && !is_stale_view(&e) => {
                    warn!(%uri, error = %e, "a stale copy off the object's homes may remain");
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        match (failure, deleted) {
            (Some(e), _) => Err(e),
            (None, Some(meta)) => Ok(meta),
            (None, None) => Err(StorageError::NotFound {
                tier: uri.tier.to_string(),
                key: uri.key.to_string(),
            }),
        }
    }

    /// A page of `tier` merged from every node that keeps it: the first `limit` keys after
    /// `start_after`, each once.
    pub async fn list(
        &self,
        tier: &TierName,
        prefix: KeyPrefix,
        start_after: Option<ObjectKey>,
        limit: usize,
    ) -> Result<Listing, StorageError> {
        let holders = self.keepers(tier);
        if holders.is_empty() {
            let entries = self
                .inner
                .directory
                .get(tier)?
                .list(prefix, start_after, limit)
                .await?;
            return Ok(Listing {
                entries,
                unreachable: Vec::new(),
            });
        }
        let request = DataRequest::List {
            tier: tier.to_string(),
            prefix: prefix.as_str().to_string(),
            start_after: start_after.as_ref().map(|k| k.to_string()),
            limit: limit as u64,
        };
        let pages = holders.iter().map(|node| {
            let (prefix, start_after, request) = (prefix.clone(), start_after.clone(), &request);
            async move {
                let page = match self.place(tier, *node)? {
                    Place::Here(handle) => handle.list(prefix, start_after, limit).await?,
                    Place::There(node) => match self.call(node, tier, request, None).await? {
                        (DataAnswer::Listed(entries), _) => entries
                            .into_iter()
                            .map(|(key, meta)| Ok((ObjectKey::new(key)?, meta)))
                            .collect::<Result<Vec<_>, StorageError>>()?,
                        (other, _) => return Err(Self::unexpected(tier, node, &other)),
                    },
                };
                Ok::<_, StorageError>(page)
            }
        });
        let mut merged: BTreeMap<ObjectKey, ObjectMeta> = BTreeMap::new();
        let mut unreachable = Vec::new();
        let mut answered = 0usize;
        for (node, page) in holders
            .iter()
            .zip(futures_util::future::join_all(pages).await)
        {
            match page {
                Ok(page) => {
                    answered += 1;
                    for (key, meta) in page {
                        // Copies of one object: the newest wins.
                        match merged.get(&key) {
                            Some(held) if held.modified_ms >= meta.modified_ms => {}
                            _ => {
                                merged.insert(key, meta);
                            }
                        }
                    }
                }
                Err(e @ StorageError::Unavailable { .. }) => {
                    warn!(node, error = %e, "a node's objects are missing from a listing");
                    unreachable.push(format!("node {node}: {e}"));
                }
                Err(e) => return Err(e),
            }
        }
        if answered == 0 {
            return Err(StorageError::Unavailable {
                tier: tier.to_string(),
                reason: format!("no node holding it answered ({})", unreachable.join("; ")),
            });
        }
        Ok(Listing {
            entries: merged.into_iter().take(limit).collect(),
            unreachable,
        })
    }
}

/// A bounded queue's receiving end as a body.
/// What the replica tee sends each replica.
#[derive(Clone, Debug)]
enum Piece {
    Data(Bytes),
    /// The body is complete.
    End,
    Failed(String),
}

/// A replica's body from the tee: ends cleanly only at [`Piece::End`]; a queue closed
/// without it (the put abandoned) is an error.
fn replica_body(
    rx: mpsc::Receiver<Piece>,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send {
    futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(Piece::Data(chunk)) => Some((Ok(chunk), Some(rx))),
            Some(Piece::End) => None,
            Some(Piece::Failed(reason)) => Some((Err(io::Error::other(reason)), None)),
            None => Some((
                Err(io::Error::other("the put was abandoned before its end")),
                None,
            )),
        }
    })
}

/// Serves other nodes' requests on this node's own tiers.
struct PlacesHandler {
    directory: TierDirectory,
    transforms: Arc<TransformRegistry>,
    rebalance: Arc<Mutex<RebalanceStatus>>,
    /// For copies this node streams to other nodes (weak: the handler lives in the
    /// transport that `Places` holds).
    places: std::sync::Weak<Inner>,
}

impl PlacesHandler {
    async fn answer(
        &self,
        request: DataRequest,
        body: ByteStream,
    ) -> Result<(DataAnswer, Option<ByteStream>), StorageError> {
        Ok(match request {
            DataRequest::Put {
                uri,
                declared_len,
                expected_hash,
                only_new,
            } => {
                let uri = ObjectUri::parse(&uri)?;
                let handle = self.directory.get(&uri.tier)?;
                let condition = if only_new {
                    PutCondition::Absent
                } else {
                    PutCondition::Any
                };
                let request = PutRequest {
                    key: uri.key,
                    body,
                    declared_len,
                    expected_hash,
                    condition,
                    copy_of: None,
                };
                (DataAnswer::Meta(handle.put_request(request).await?), None)
            }
            DataRequest::Fenced { .. } => {
                return Err(StorageError::Index(
                    "a fenced request was not unwrapped".to_string(),
                ));
            }
            DataRequest::Tombstone { uri } => {
                let uri = ObjectUri::parse(&uri)?;
                let at = self.directory.get(&uri.tier)?.tombstone(uri.key).await?;
                (DataAnswer::Tombstone(at), None)
            }
            DataRequest::Bury { uri, deleted_ms } => {
                let uri = ObjectUri::parse(&uri)?;
                let handle = self.directory.get(&uri.tier)?;
                handle.bury(uri.key, deleted_ms).await?;
                (DataAnswer::Done, None)
            }
            DataRequest::PutCopy { uri, of, replaces } => {
                let uri = ObjectUri::parse(&uri)?;
                let handle = self.directory.get(&uri.tier)?;
                let condition = replaces.map_or(PutCondition::Absent, PutCondition::Replaces);
                let meta = handle.put_copy(uri.key, body, of, condition).await?;
                (DataAnswer::Meta(meta), None)
            }
            DataRequest::CheckPut { uri, declared_len } => {
                let uri = ObjectUri::parse(&uri)?;
                let handle = self.directory.get(&uri.tier)?;
                handle.check_put(uri.key, declared_len).await?;
                (DataAnswer::Done, None)
            }
            DataRequest::Get { uri } => {
                let uri = ObjectUri::parse(&uri)?;
                let (meta, reader) = self.directory.get(&uri.tier)?.get(uri.key).await?;
                (DataAnswer::Meta(meta), Some(reader.body.into_stream()))
            }
            DataRequest::Head { uri } => {
                let uri = ObjectUri::parse(&uri)?;
                let meta = self.directory.get(&uri.tier)?.head(uri.key).await?;
                (DataAnswer::Meta(meta), None)
            }
            DataRequest::Delete { uri, expected_hash } => {
                let uri = ObjectUri::parse(&uri)?;
                let meta = self
                    .directory
                    .get(&uri.tier)?
                    .delete(uri.key, expected_hash)
                    .await?;
                (DataAnswer::Meta(meta), None)
            }
            DataRequest::DeleteAtHome { uri, expected_hash } => {
                let uri = ObjectUri::parse(&uri)?;
                let meta = self
                    .directory
                    .get(&uri.tier)?
                    .delete_as(uri.key, expected_hash, DeleteMode::AtHome)
                    .await?;
                (DataAnswer::Meta(meta), None)
            }
            DataRequest::List {
                tier,
                prefix,
                start_after,
                limit,
            } => {
                let tier = TierName::new(tier)?;
                let prefix = KeyPrefix::new(prefix)?;
                let start_after = start_after.map(ObjectKey::new).transpose()?;
                let limit = usize::try_from(limit)
                    .unwrap_or(usize::MAX)
                    .min(letl_storage::LIST_PAGE_ENTRIES_MAX);
                let entries = self
                    .directory
                    .get(&tier)?
                    .list(prefix, start_after, limit)
                    .await?
                    .into_iter()
                    .map(|(key, meta)| (key.to_string(), meta))
                    .collect();
                (DataAnswer::Listed(entries), None)
            }
            DataRequest::CopyTo {
                source,
                destination,
                size,
                hash,
            } => {
                let source = ObjectUri::parse(&source)?;
                let destination = ObjectUri::parse(&destination)?;
                let places = self
                    .places
                    .upgrade()
                    .map(|inner| Places { inner })
                    .ok_or_else(|| StorageError::Unavailable {
                        tier: destination.tier.to_string(),
                        reason: "this node is stopping".to_string(),
                    })?;
                let meta = places.copy_here(&source, &destination, size, hash).await?;
                (DataAnswer::Meta(meta), None)
            }
            DataRequest::Provenance { output } => {
                let lookup = self
                    .places
                    .upgrade()
                    .and_then(|inner| inner.provenance.get().cloned());
                let record = match lookup {
                    Some(lookup) => lookup(&output).map_err(StorageError::Index)?,
                    None => None,
                };
                (DataAnswer::Provenance(record), None)
            }
            DataRequest::RebalanceStatus => {
                let status = self
                    .rebalance
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let json = serde_json::to_string(&status)
                    .map_err(|e| StorageError::Index(e.to_string()))?;
                (DataAnswer::Rebalance(json), None)
            }
            DataRequest::GetTransformed { uri, kind } => {
                let uri = ObjectUri::parse(&uri)?;
                let transform = match self.transforms.build_kind(&kind) {
                    Ok(transform) => transform,
                    Err(e) => return Ok((DataAnswer::TransformFailed(e.to_string()), None)),
                };
                let (_, reader) = self.directory.get(&uri.tier)?.get(uri.key).await?;
                match transform.apply_body(reader.body).await {
                    Ok(output) => (DataAnswer::Done, Some(output)),
                    Err(e) => (DataAnswer::TransformFailed(e.0), None),
                }
            }
        })
    }
}

impl PlacesHandler {
    /// The request inside a `Fenced` one, unless the asker's view of the tier is older than
    /// this node's and places its objects otherwise (then the answer is `StaleView`).
    fn unfence(&self, request: DataRequest) -> Result<DataRequest, DataAnswer> {
        let DataRequest::Fenced {
            tier,
            view,
            request,
        } = request
        else {
            return Ok(request);
        };
        let undecodable =
            |e: String| DataAnswer::Failed(WireError::Body(format!("an undecodable request: {e}")));
        if let (Some(inner), Ok(tier)) = (self.places.upgrade(), TierName::new(tier)) {
            let mine = Places { inner }.view(&tier);
            if mine.placement != view.placement && mine.applied > view.applied {
                return Err(DataAnswer::StaleView {
                    applied: mine.applied,
                });
            }
        }
        match decode_wire::<DataRequest>(&request) {
            Ok(DataRequest::Fenced { .. }) => {
                Err(undecodable("a fenced request inside another".to_string()))
            }
            Ok(request) => Ok(request),
            Err(e) => Err(undecodable(e.to_string())),
        }
    }
}

#[async_trait::async_trait]
impl DataHandler for PlacesHandler {
    async fn handle(&self, header: Vec<u8>, body: ByteStream) -> (Vec<u8>, Option<ByteStream>) {
        let request = decode_wire::<DataRequest>(&header)
            .map_err(|e| {
                DataAnswer::Failed(WireError::Body(format!("an undecodable request: {e}")))
            })
            .and_then(|request| self.unfence(request));
        let (answer, body) = match request {
            Err(refused) => (refused, None),
            Ok(request) => match self.answer(request, body).await {
                Ok(answered) => answered,
                Err(e) => (DataAnswer::Failed(e.into()), None),
            },
        };
        match encode_wire(&answer) {
            Ok(header) => (header, body),
            Err(e) => {
                let failed = DataAnswer::Failed(WireError::Index(e.to_string()));
                (encode_wire(&failed).unwrap_or_default(), None)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_spreads_keys_and_moves_few_when_a_node_joins() {
        let keys: Vec<ObjectKey> = (0..3000)
            .map(|i| ObjectKey::new(format!("data/object-{i}")).unwrap())
            .collect();
        let mut counts = BTreeMap::new();
        for key in &keys {
            *counts.entry(rendezvous(key, [1, 2, 3])[0]).or_insert(0) += 1;
        }
        for node in 1..=3 {
            let n = counts[&node];
            assert!((800..1200).contains(&n), "node {node} holds {n} of 3000");
        }
        // A fourth node takes about a quarter, each from the node that had it; no key moves
        // between the old nodes.
        let mut moved = 0;
        for key in &keys {
            let before = rendezvous(key, [1, 2, 3])[0];
            let after = rendezvous(key, [1, 2, 3, 4])[0];
            if before != after {
                assert_eq!(after, 4, "{key} moved between old nodes");
                moved += 1;
            }
        }
        assert!((600..900).contains(&moved), "{moved} of 3000 moved");
        // The order does not depend on the order nodes are given in.
        let key = &keys[0];
        assert_eq!(rendezvous(key, [3, 1, 2]), rendezvous(key, [1, 2, 3]));
    }
}

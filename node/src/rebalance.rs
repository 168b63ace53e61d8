//! Moving objects to the nodes they belong on once the member set has changed.
//!
//! Each node runs one rebalancer. When the nodes that keep its tiers change (a node joined,
//! published its tiers, or is leaving), it makes a pass over its own objects: each object goes
//! to the homes the current member set gives it, by a put that the destination verifies
//! against the object's hash. Versions are ordered across nodes by their write time, which a
//! copy keeps (`ObjectMeta::supersedes`): a home that holds the same or a later version keeps
//! it; an older one there (left by an earlier pass cut short) is replaced, but only if it is
//! still the one compared with, and a home without a version takes the copy only if it still
//! has none when it would publish it. Only once every home has a version is the copy here
//! deleted, and only if it still has the bytes that were copied; if it was deleted meanwhile,
//! the copy just made is taken back. Reads find objects wherever they are during a pass (they ask every keeper
//! after the homes). A pass that left objects behind (a home down) is tried again.
//!
//! A node leaves in three steps: it is marked draining in the control plane, so no object is
//! placed on it while it still serves what it holds; it moves everything out; then it is
//! removed (see `server::cluster_leave`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use letl_raft::{Command, NodeId, Response};
use letl_storage::{Clock, KeyPrefix, LIST_PAGE_ENTRIES_MAX, ObjectUri, StorageError, TierName};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::api::RebalanceStatus;
use crate::places::Places;

/// How often a node checks whether the member set it placed its objects by has changed.
pub const REBALANCE_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// A pass that left objects behind is tried again after this long.
pub const REBALANCE_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// For each of this node's tiers kept by several nodes, the nodes objects are placed on: what
/// placement depends on.
pub type Signature = BTreeMap<String, Vec<NodeId>>;

/// This node's rebalancer: its task and its status.
#[derive(Clone, Debug)]
pub struct Rebalancer {
    places: Places,
    status: Arc<Mutex<RebalanceStatus>>,
    clock: Arc<dyn Clock>,
    /// One pass at a time: the periodic ones and a drain.
    passes: Arc<tokio::sync::Mutex<()>>,
}

fn lock(status: &Mutex<RebalanceStatus>) -> std::sync::MutexGuard<'_, RebalanceStatus> {
    status.lock().unwrap_or_else(|p| p.into_inner())
}

/// The signature `places` gives `tiers` now.
pub fn signature_of(places: &Places, tiers: impl IntoIterator<Item = TierName>) -> Signature {
    let mut signature = Signature::new();
    for tier in tiers {
        if places.keepers(&tier).len() > 1 {
            signature.insert(tier.to_string(), places.holders(&tier));
        }
    }
    signature
}

/// Marks a pass ended however it ends: a pass dropped half-way (its request cancelled)
/// counts as having left objects behind, so it is tried again.
struct PassEnd<'a> {
    status: &'a Mutex<RebalanceStatus>,
    clock: &'a dyn Clock,
    finished: bool,
}

impl Drop for PassEnd<'_> {
    fn drop(&mut self) {
        let mut status = lock(self.status);
        status.state = "idle".to_string();
        status.finished_ms = Some(self.clock.now_ms());
        if self.finished {
            status.passes += 1;
        } else {
            status.left_behind += 1;
            status.last_error = Some("the pass was cut short".to_string());
        }
    }
}

impl Rebalancer {
    /// Starts the rebalancer's task; it ends when `stop` is set.
    pub fn start(places: Places, clock: Arc<dyn Clock>, stop: watch::Receiver<bool>) -> Self {
        let status = places.rebalance_status();
        lock(&status).node = places.me();
        lock(&status).state = "idle".to_string();
        let this = Self {
            places,
            status,
            clock,
            passes: Arc::new(tokio::sync::Mutex::new(())),
        };
        tokio::spawn(this.clone().keep(stop));
        this
    }

    fn signature(&self) -> Signature {
        signature_of(&self.places, self.places.directory().names())
    }

    async fn keep(self, mut stop: watch::Receiver<bool>) {
        let mut placed_by: Option<Signature> = None;
        let mut last_pass: Option<tokio::time::Instant> = None;
        loop {
            // Placement follows the committed member set, not a lagging view of it.
            if self.places.cluster().read(|_| ()).await.is_ok() {
                let signature = self.signature();
                let changed = placed_by.as_ref() != Some(&signature);
                let retry = lock(&self.status).left_behind > 0
                    && last_pass.is_none_or(|at| at.elapsed() >= REBALANCE_RETRY_INTERVAL);
                if changed || retry {
                    last_pass = Some(tokio::time::Instant::now());
                    let _one = self.passes.lock().await;
                    // Taken again under the lock: a drain may have changed it.
                    let signature = self.signature();
                    self.pass(&signature, &stop).await;
                    placed_by = Some(signature);
                }
            }
            let stopping = tokio::select! {
                () = tokio::time::sleep(REBALANCE_CHECK_INTERVAL) => false,
                _ = stop.changed() => true,
            };
            if stopping || *stop.borrow() {
                return;
            }
        }
    }

    /// Empties this node before it leaves: marks it draining in the control plane (no object
    /// is placed on it any more; it still serves what it holds), then moves every object to
    /// its homes. Refused if this node is the last to keep a tier it has objects on; an error
    /// if objects were left behind (a home down): try again.
    pub async fn drain(&self) -> Result<(), String> {
        let me = self.places.me();
        for tier in self.places.directory().names() {
            let Ok(handle) = self.places.directory().get(&tier) else {
                continue;
            };
            if !self.places.is_local_backend(&handle) {
                continue;
            }
            let mut others = self.places.holders(&tier);
            others.retain(|&n| n != me);
            if others.is_empty() {
                let root = KeyPrefix::new("").map_err(|e| e.to_string())?;
                let held = handle
                    .list(root, None, 1)
                    .await
                    .map_err(|e| format!("cannot tell whether tier `{tier}` holds objects: {e}"))?;
                if !held.is_empty() {
                    return Err(format!(
                        "node {me} is the last to keep tier `{tier}`; its objects would have nowhere to go"
                    ));
                }
            }
        }
        let mark = Command::SetDraining {
            node: me,
            draining: true,
        };
        match self.places.cluster().write(mark).await {
            Ok(Response::Done) => {}
            Ok(other) => return Err(format!("the control plane answered {other:?}")),
            Err(e) => return Err(e.to_string()),
        }
        // Everything committed before is applied here: the placement without this node.
        self.places
            .cluster()
            .read(|_| ())
            .await
            .map_err(|e| e.to_string())?;
        self.pass_now().await
    }

    /// One pass now, by the current placement; an error if it left objects behind.
    pub async fn pass_now(&self) -> Result<(), String> {
        let _one = self.passes.lock().await;
        let (_, stop) = watch::channel(false);
        self.pass(&self.signature(), &stop).await;
        let status = lock(&self.status).clone();
        if status.left_behind > 0 {
            return Err(format!(
                "{} objects could not be moved off node {} yet ({}); try again",
                status.left_behind,
                self.places.me(),
                status.last_error.unwrap_or_default()
            ));
        }
        Ok(())
    }

    async fn pass(&self, signature: &Signature, stop: &watch::Receiver<bool>) {
        {
            let mut status = lock(&self.status);
            status.state = "running".to_string();
            status.placed_by_tier = signature.clone();
            status.placed_by = signature.values().flatten().copied().collect();
            status.placed_by.sort_unstable();
            status.placed_by.dedup();
            status.scanned = 0;
            status.moved = 0;
            status.bytes_moved = 0;
            status.removed = 0;
            status.left_behind = 0;
            status.last_error = None;
            status.started_ms = Some(self.clock.now_ms());
            status.finished_ms = None;
        }
        let mut end = PassEnd {
            status: &self.status,
            clock: self.clock.as_ref(),
            finished: false,
        };
        for tier in signature.keys() {
            let Ok(tier) = TierName::new(tier.clone()) else {
                continue;
            };
            let passed = match self.tier_pass(&tier, stop).await {
                Ok(()) => self.tombstone_pass(&tier, stop).await,
                Err(e) => Err(e),
            };
            if let Err(e) = passed {
                warn!(%tier, error = %e, "rebalancing a tier stopped");
                let mut status = lock(&self.status);
                status.left_behind += 1;
                status.last_error = Some(format!("{tier}: {e}"));
            }
        }
        {
            let status = lock(&self.status);
            if status.moved > 0 || status.removed > 0 || status.left_behind > 0 {
                info!(
                    scanned = status.scanned,
                    moved = status.moved,
                    removed = status.removed,
                    left_behind = status.left_behind,
                    "rebalance pass done"
                );
            }
        }
        end.finished = !*stop.borrow();
    }

    /// One pass over this node's objects of `tier`.
    async fn tier_pass(
        &self,
        tier: &TierName,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), StorageError> {
        let handle = self.places.directory().get(tier)?;
        let me = self.places.me();
        let mut after = None;
        loop {
            let page = handle
                .list(KeyPrefix::new("")?, after.clone(), LIST_PAGE_ENTRIES_MAX)
                .await?;
            let full = page.len() == LIST_PAGE_ENTRIES_MAX;
            for (key, meta) in page {
                if *stop.borrow() {
                    return Ok(());
                }
                after = Some(key.clone());
                lock(&self.status).scanned += 1;
                let uri = ObjectUri::new(tier.clone(), key.clone());
                let homes = self.places.homes(&uri);
                let mut everywhere = !homes.is_empty();
                let mut copied_to = Vec::new();
                for &home in homes.iter().filter(|&&h| h != me) {
                    if self.places.suspected(home) {
                        // Lately silent: the next pass tries it, without a timeout per object.
                        everywhere = false;
                        self.left_behind(&uri, home, "lately did not answer");
                        continue;
                    }
                    let theirs = match self.places.head_on(home, &uri).await {
                        Ok(theirs) => Some(theirs),
                        Err(StorageError::NotFound { .. }) => None,
                        Err(e) => {
                            everywhere = false;
                            self.left_behind(&uri, home, &e.to_string());
                            continue;
                        }
                    };
                    // The same version there, or a later one (written there since): it stays.
                    if theirs
                        .as_ref()
                        .is_some_and(|theirs| !meta.supersedes(theirs))
                    {
                        continue;
                    }
                    // An older version there (left by a pass cut short) is replaced, unless
                    // it changes meanwhile.
                    let replaces = theirs.map(|theirs| theirs.hash);
                    let copied = async {
                        let (held, reader) = handle.get(key.clone()).await?;
                        if held.hash != meta.hash {
                            return Err(StorageError::Conflict {
                                tier: tier.to_string(),
                                key: key.to_string(),
                                reason: "changed during the rebalance".to_string(),
                            });
                        }
                        self.places
                            .put_copy_on(home, &uri, reader.body.into_stream(), held, replaces)
                            .await
                    };
                    match copied.await {
                        Ok(_) => {
                            copied_to.push(home);
                            let mut status = lock(&self.status);
                            status.moved += 1;
                            status.bytes_moved += meta.size;
                        }
                        // A version was written there meanwhile (a copy never replaces one it
                        // did not compare with): it stays.
                        Err(StorageError::Conflict {
                            ref tier, ref key, ..
                        }) if *tier == uri.tier.as_str() && *key == uri.key.as_str() => {}
                        Err(e) => {
                            everywhere = false;
                            self.left_behind(&uri, home, &e.to_string());
                        }
                    }
                }
                if everywhere && !homes.contains(&me) {
                    match handle.delete_moved_away(key.clone(), meta.hash).await {
                        Ok(_) => lock(&self.status).removed += 1,
                        // Deleted meanwhile (a delete that asked every keeper): the copies
                        // just made would bring it back, so they go too.
                        Err(StorageError::NotFound { .. }) => {
                            for &home in &copied_to {
                                match self.places.delete_on(home, &uri, Some(meta.hash)).await {
                                    // Gone already: nothing to take back.
                                    Ok(_) | Err(StorageError::NotFound { .. }) => {}
                                    Err(e) => self.left_behind(
                                        &uri,
                                        home,
                                        &format!("taking back a copy of a deleted object: {e}"),
                                    ),
                                }
                            }
                        }
                        // Rewritten here since: nothing more to do with it now.
                        Err(StorageError::Conflict { .. }) => {}
                        Err(e) => self.left_behind(&uri, me, &e.to_string()),
                    }
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// One pass over this node's tombstones of `tier`: each deletion remembered here goes to
    /// the object's homes, which delete an older version they hold and remember it, so that
    /// a copy a deletion missed (its node did not answer) goes when it reaches a home and
    /// cannot come back through a home that never heard of the deletion. Once every home
    /// remembers it, a node that is not a home forgets it.
    async fn tombstone_pass(
        &self,
        tier: &TierName,
        stop: &watch::Receiver<bool>,
    ) -> Result<(), StorageError> {
        let handle = self.places.directory().get(tier)?;
        let me = self.places.me();
        let mut after = None;
        loop {
            let page = handle
                .tombstones(after.clone(), LIST_PAGE_ENTRIES_MAX)
                .await?;
            let full = page.len() == LIST_PAGE_ENTRIES_MAX;
            for (key, deleted_ms) in page {
                if *stop.borrow() {
                    return Ok(());
                }
                after = Some(key.clone());
                let uri = ObjectUri::new(tier.clone(), key.clone());
                let homes = self.places.homes(&uri);
                let mut everywhere = !homes.is_empty();
                for &home in homes.iter().filter(|&&h| h != me) {
                    if self.places.suspected(home) {
                        everywhere = false;
                        self.left_behind(&uri, home, "lately did not answer");
                        continue;
                    }
                    if let Err(e) = self.places.bury_on(home, &uri, deleted_ms).await {
                        everywhere = false;
                        self.left_behind(&uri, home, &format!("passing on a deletion: {e}"));
                    }
                }
                if everywhere
                    && !homes.contains(&me)
                    && let Err(e) = handle.forget_tombstone(key, deleted_ms).await
                {
                    self.left_behind(&uri, me, &e.to_string());
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn left_behind(&self, uri: &ObjectUri, node: NodeId, why: &str) {
        warn!(%uri, node, error = why, "an object stays where it is for now");
        let mut status = lock(&self.status);
        status.left_behind += 1;
        status.last_error = Some(format!("{uri} (node {node}): {why}"));
    }
}

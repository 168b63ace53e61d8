//! Moving objects to the nodes they belong on once the member set has changed.
//!
//! Each node runs one rebalancer. When the nodes that keep its tiers change (a node joined, or
//! published its tiers), it makes a pass over its own objects: each object goes to the homes
//! the current member set gives it (a copy the destination verifies against the object's
//! hash), and only once every home has it is the copy here deleted, and only if it still has
//! the bytes that were copied. A home that already holds another version keeps it: it was
//! written under the new placement. Reads meanwhile find objects wherever they are (they ask
//! every holder after the homes), so nothing is unreachable during a pass. A pass that left
//! objects behind (a home down) is tried again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use letl_raft::NodeId;
use letl_storage::{Clock, KeyPrefix, LIST_PAGE_ENTRIES_MAX, ObjectUri, StorageError, TierName};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::api::RebalanceStatus;
use crate::places::Places;

/// How often a node checks whether the member set it placed its objects by has changed.
pub const REBALANCE_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// A pass that left objects behind is tried again after this long.
pub const REBALANCE_RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// The nodes keeping each of this node's tiers that are kept by several: what placement
/// depends on.
type Signature = BTreeMap<String, Vec<NodeId>>;

/// This node's rebalancer: its task and its status.
#[derive(Clone, Debug)]
pub struct Rebalancer {
    places: Places,
    status: Arc<Mutex<RebalanceStatus>>,
    clock: Arc<dyn Clock>,
    /// Set while this node empties itself to leave: the periodic passes wait.
    draining: Arc<AtomicBool>,
}

fn lock(status: &Mutex<RebalanceStatus>) -> std::sync::MutexGuard<'_, RebalanceStatus> {
    status.lock().unwrap_or_else(|p| p.into_inner())
}

impl Rebalancer {
    /// Starts the rebalancer's task; it ends when `stop` is set.
    pub fn start(places: Places, clock: Arc<dyn Clock>, stop: watch::Receiver<bool>) -> Self {
        let status = places.rebalance_status();
        lock(&status).node = places.me();
        let this = Self {
            places,
            status,
            clock,
            draining: Arc::new(AtomicBool::new(false)),
        };
        tokio::spawn(this.clone().keep(stop));
        this
    }

    fn signature(&self) -> Signature {
        let mut signature = Signature::new();
        for tier in self.places.directory().names() {
            let holders = self.places.holders(&tier);
            if holders.len() > 1 {
                signature.insert(tier.to_string(), holders);
            }
        }
        signature
    }

    async fn keep(self, mut stop: watch::Receiver<bool>) {
        let mut placed_by: Option<Signature> = None;
        let mut last_pass: Option<tokio::time::Instant> = None;
        loop {
            // Placement follows the committed member set, not a lagging view of it.
            if !self.draining.load(Ordering::Acquire)
                && self.places.cluster().read(|_| ()).await.is_ok()
            {
                let signature = self.signature();
                let changed = placed_by.as_ref() != Some(&signature);
                let retry = lock(&self.status).left_behind > 0
                    && last_pass.is_none_or(|at| at.elapsed() >= REBALANCE_RETRY_INTERVAL);
                if changed || retry {
                    last_pass = Some(tokio::time::Instant::now());
                    self.pass(&signature, &stop, false).await;
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

    /// Moves every object of this node to the other nodes that keep its tier, as if this one
    /// kept none, before it leaves the cluster. Refused if this node is the last to keep a
    /// tier it has objects on; an error if objects were left behind (a home down).
    pub async fn drain(&self) -> Result<(), String> {
        let me = self.places.me();
        let mut signature = Signature::new();
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
                let held = handle
                    .list(KeyPrefix::new("").map_err(|e| e.to_string())?, None, 1)
                    .await;
                if matches!(held, Ok(page) if !page.is_empty()) {
                    return Err(format!(
                        "node {me} is the last to keep tier `{tier}`; its objects would have nowhere to go"
                    ));
                }
                continue;
            }
            signature.insert(tier.to_string(), others);
        }
        self.draining.store(true, Ordering::Release);
        let (_, stop) = watch::channel(false);
        self.pass(&signature, &stop, true).await;
        let status = lock(&self.status).clone();
        if status.left_behind > 0 {
            self.draining.store(false, Ordering::Release);
            return Err(format!(
                "{} objects could not be moved off node {me} yet ({}); try again",
                status.left_behind,
                status.last_error.unwrap_or_default()
            ));
        }
        Ok(())
    }

    async fn pass(&self, signature: &Signature, stop: &watch::Receiver<bool>, leaving: bool) {
        {
            let mut status = lock(&self.status);
            status.state = "running".to_string();
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
        for tier in signature.keys() {
            let Ok(tier) = TierName::new(tier.clone()) else {
                continue;
            };
            if let Err(e) = self.tier_pass(&tier, stop, leaving).await {
                warn!(%tier, error = %e, "rebalancing a tier stopped");
                let mut status = lock(&self.status);
                status.left_behind += 1;
                status.last_error = Some(format!("{tier}: {e}"));
            }
        }
        let mut status = lock(&self.status);
        status.state = "idle".to_string();
        status.passes += 1;
        status.finished_ms = Some(self.clock.now_ms());
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

    /// One pass over this node's objects of `tier`.
    /// `leaving`: placed as if this node kept nothing.
    async fn tier_pass(
        &self,
        tier: &TierName,
        stop: &watch::Receiver<bool>,
        leaving: bool,
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
                let homes = self.places.homes_without(&uri, leaving.then_some(me));
                let mut everywhere = !homes.is_empty();
                for &home in homes.iter().filter(|&&h| h != me) {
                    match self.places.head_on(home, &uri).await {
                        // The same bytes, or a version written there since: it stays.
                        Ok(_) => {}
                        Err(StorageError::NotFound { .. }) => {
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
                                    .put_on(
                                        home,
                                        &uri,
                                        reader.body,
                                        Some(held.size),
                                        Some(held.hash),
                                    )
                                    .await
                            };
                            match copied.await {
                                Ok(_) => {
                                    let mut status = lock(&self.status);
                                    status.moved += 1;
                                    status.bytes_moved += meta.size;
                                }
                                Err(e) => {
                                    everywhere = false;
                                    self.left_behind(&uri, home, &e);
                                }
                            }
                        }
                        Err(e) => {
                            everywhere = false;
                            self.left_behind(&uri, home, &e);
                        }
                    }
                }
                if everywhere && !homes.contains(&me) {
                    match handle.delete(key.clone(), Some(meta.hash)).await {
                        Ok(_) => lock(&self.status).removed += 1,
                        // Gone, or rewritten here since: nothing more to do with it.
                        Err(StorageError::NotFound { .. } | StorageError::Conflict { .. }) => {}
                        Err(e) => self.left_behind(&uri, me, &e),
                    }
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn left_behind(&self, uri: &ObjectUri, node: NodeId, e: &StorageError) {
        warn!(%uri, node, error = %e, "an object stays where it is for now");
        let mut status = lock(&self.status);
        status.left_behind += 1;
        status.last_error = Some(format!("{uri} (node {node}): {e}"));
    }
}

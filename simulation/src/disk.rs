//! A simulated node's durable state: what survives a crash of its host (the raft database,
//! the tier's objects and index, the cluster identity), and the disk faults the simulator
//! turns on and off.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::FutureExt;
use letl_raft::identity::Identity;
use letl_storage::MemoryDb;
use letl_storage::{
    BackendObject, ByteStream, CapacityGauge, Clock, Committed, KeyPrefix, MemoryTier, ObjectKey,
    ObjectReader, PutLimits, Result, Staged, StorageError, TierBackend, TierDescription, TierName,
};

/// The planted bugs the simulator must find (see `--plant`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plant {
    /// The tier acknowledges a put before its bytes are durable: a crash soon after loses it.
    AckBeforeDurable,
}

impl std::str::FromStr for Plant {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ack-before-durable" => Ok(Self::AckBeforeDurable),
            other => Err(format!(
                "unknown planted bug `{other}` (known: ack-before-durable)"
            )),
        }
    }
}

/// A tier over [`MemoryTier`] with disk faults: write errors, a full disk, and (planted)
/// acknowledgement before durability.
#[derive(Debug)]
pub struct SimTier {
    inner: MemoryTier,
    write_errors: AtomicBool,
    full: AtomicBool,
    plant: Option<Plant>,
    /// Committed and acknowledged, not yet durable (only with the planted bug).
    unflushed: Mutex<Vec<ObjectKey>>,
}

impl SimTier {
    pub fn new(name: TierName, clock: Arc<dyn Clock>, plant: Option<Plant>) -> Self {
        Self {
            inner: MemoryTier::new(name, None, clock),
            write_errors: AtomicBool::new(false),
            full: AtomicBool::new(false),
            plant,
            unflushed: Mutex::new(Vec::new()),
        }
    }

    pub fn set_write_errors(&self, on: bool) {
        self.write_errors.store(on, Ordering::SeqCst);
    }

    pub fn set_full(&self, on: bool) {
        self.full.store(on, Ordering::SeqCst);
    }

    fn unflushed(&self) -> MutexGuard<'_, Vec<ObjectKey>> {
        self.unflushed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes acknowledged writes durable (the planted bug's late flush).
    pub fn flush(&self) {
        self.unflushed().clear();
    }

    /// The host crashed: writes not yet durable are lost.
    pub fn crash(&self) {
        let lost: Vec<ObjectKey> = std::mem::take(&mut *self.unflushed());
        for key in lost {
            // The memory tier's delete never waits.
            let _ = self.inner.delete(&key).now_or_never();
        }
    }

    fn refuse_writes(&self, key: &ObjectKey) -> Result<()> {
        let tier = self.inner.describe().name.to_string();
        if self.full.load(Ordering::SeqCst) {
            return Err(StorageError::NoSpace {
                tier,
                reason: format!("simulated full disk writing `{key}`"),
            });
        }
        if self.write_errors.load(Ordering::SeqCst) {
            return Err(StorageError::io(
                format!("writing `{key}` on tier `{tier}`"),
                std::io::Error::other("simulated disk write error"),
            ));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl TierBackend for SimTier {
    fn describe(&self) -> TierDescription {
        self.inner.describe()
    }

    fn gauge(&self) -> &Arc<CapacityGauge> {
        self.inner.gauge()
    }

    async fn check_key(&self, key: &ObjectKey) -> Result<()> {
        self.inner.check_key(key).await
    }

    async fn stage(&self, key: &ObjectKey, body: ByteStream, limits: PutLimits) -> Result<Staged> {
        self.refuse_writes(key)?;
        self.inner.stage(key, body, limits).await
    }

    async fn commit(&self, staged: Staged) -> Result<Committed> {
        if let Err(e) = self.refuse_writes(&staged.key) {
            self.inner.abort(staged).await;
            return Err(e);
        }
        let key = staged.key.clone();
        let committed = self.inner.commit(staged).await?;
        if self.plant == Some(Plant::AckBeforeDurable) {
            self.unflushed().push(key);
        }
        Ok(committed)
    }

    async fn abort(&self, staged: Staged) {
        self.inner.abort(staged).await;
    }

    async fn get(&self, key: &ObjectKey) -> Result<ObjectReader> {
        self.inner.get(key).await
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<BackendObject>> {
        self.inner.head(key).await
    }

    async fn list(
        &self,
        prefix: &KeyPrefix,
        start_after: Option<&ObjectKey>,
        limit: usize,
    ) -> Result<Vec<BackendObject>> {
        self.inner.list(prefix, start_after, limit).await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<Option<u64>> {
        self.refuse_writes(key)?;
        self.inner.delete(key).await
    }
}

/// Everything of one node that outlives its host's crashes.
#[derive(Debug)]
pub struct Disk {
    /// The raft log, vote and snapshot.
    pub raft: MemoryDb,
    /// The node's database: tier indexes, move log, move jobs, provenance.
    pub db: MemoryDb,
    pub tiers: Vec<Arc<SimTier>>,
    /// The cluster directory: the identity, rewritten once a join completes.
    pub cluster_dir: PathBuf,
    /// The identity the node starts with before it saved one (none for a node that joins
    /// during the run).
    pub identity: Option<Identity>,
}

impl Disk {
    /// The host crashed: what its disks had not made durable is lost.
    pub fn crash(&self) {
        self.tiers.iter().for_each(|t| t.crash());
    }

    pub fn set_write_errors(&self, on: bool) {
        self.tiers.iter().for_each(|t| t.set_write_errors(on));
    }

    pub fn set_full(&self, on: bool) {
        self.tiers.iter().for_each(|t| t.set_full(on));
    }

    /// The identity as last saved, else the first one.
    pub fn identity(&self) -> Option<Identity> {
        match Identity::load(&self.cluster_dir) {
            Ok(Some(saved)) => Some(saved),
            _ => self.identity.clone(),
        }
    }
}

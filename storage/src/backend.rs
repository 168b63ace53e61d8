//! The tier backend trait: streaming put (as stage, then commit) and get, head, list, delete.
//!
//! A put is split in two so that the caller decides when an object becomes visible: `stage`
//! streams the bytes somewhere invisible while hashing them, `commit` publishes them atomically.
//! The tier actor commits and writes the index entry in one step of its mailbox, so readers never
//! see a file whose metadata says otherwise, and a put can be checked against an expected hash
//! before anything is replaced.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};

use crate::error::{Result, StorageError};
use crate::hash::{ContentHash, Hasher};
use crate::uri::{KeyPrefix, ObjectKey, TierName};
use tracing::warn;

/// Object bytes in flight, in bounded chunks. Objects can be many GiB: no code path collects one.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// Most entries one `list` call returns; callers page with `start_after`.
pub const LIST_PAGE_ENTRIES_MAX: usize = 10_000;

/// What a put may bring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PutLimits {
    /// The length the sender announced (Content-Length), if any; the body must match it.
    pub declared_len: Option<u64>,
    /// The largest object this node accepts.
    pub object_bytes_max: u64,
}

/// An object as the backend sees it, without the index's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendObject {
    pub key: ObjectKey,
    pub size: u64,
    pub modified_ms: u64,
    /// Changes whenever the object's bytes are replaced (an fs tier: the file's modification
    /// time in nanoseconds). Reconciliation rehashes an object whose stamp is not the indexed one.
    pub stamp: u64,
}

/// A readable object: its size and its bytes.
pub struct ObjectReader {
    pub size: u64,
    pub body: ObjectBody,
}

/// An object's bytes as a get hands them over: a stream, or the object's open file (from a
/// file-system tier or directory). A consumer that works on a blocking thread, such as a
/// digest, reads the file itself, as `md5sum` does; any other turns it into a stream
/// ([`ObjectBody::into_stream`]), which reads it on a thread of its own.
pub enum ObjectBody {
    Stream(ByteStream),
    /// Positioned at the object's first byte.
    File(std::fs::File),
}

impl ObjectBody {
    /// The bytes as a stream. A file is read ahead on a blocking thread
    /// ([`crate::read_blocks`]), so this needs a tokio runtime.
    pub fn into_stream(self) -> ByteStream {
        match self {
            Self::Stream(stream) => stream,
            Self::File(file) => crate::fs::read_blocks(file),
        }
    }
}

impl From<ByteStream> for ObjectBody {
    fn from(stream: ByteStream) -> Self {
        Self::Stream(stream)
    }
}

impl fmt::Debug for ObjectBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Stream(_) => f.write_str("ObjectBody::Stream"),
            Self::File(file) => f.debug_tuple("ObjectBody::File").field(file).finish(),
        }
    }
}

impl fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectReader")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// What kind of storage a tier is, for `letl tiers` and for placement decisions later.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierDescription {
    pub name: TierName,
    /// What the tier is for users: `pmem`, `ssd`, `hdd`, `daos`, `cortx`, ...
    pub kind: String,
    /// How it stores objects: `fs`, `memory` (and `s3` once remote tiers exist).
    pub backend: String,
    /// A directory path or an endpoint URL.
    pub location: String,
    pub capacity_bytes: Option<u64>,
}

/// Bytes staged by a put and not yet visible. Commit or abort it; dropping it releases its
/// capacity reservation and leaves the staged bytes for the backend's start-up clean-up.
#[derive(Debug)]
pub struct Staged {
    pub key: ObjectKey,
    pub size: u64,
    pub hash: ContentHash,
    /// Backend-specific handle on the staged bytes (a temporary path, an upload id).
    pub token: String,
    pub reservation: Reservation,
}

/// The outcome of a commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// Size of the object this commit replaced, if any.
    pub replaced_size: Option<u64>,
    /// The committed object's stamp (see [`BackendObject::stamp`]).
    pub stamp: u64,
}

/// Counts the bytes a tier holds and refuses growth past its capacity.
///
/// Bytes are reserved before they are written, so concurrent puts cannot together overrun the
/// tier: a put of known length reserves it all up front and is refused before writing anything.
#[derive(Debug)]
pub struct CapacityGauge {
    tier: TierName,
    capacity_bytes: Option<u64>,
    used_bytes: AtomicU64,
}

impl CapacityGauge {
    pub fn new(tier: TierName, capacity_bytes: Option<u64>) -> Arc<Self> {
        Arc::new(Self {
            tier,
            capacity_bytes,
            used_bytes: AtomicU64::new(0),
        })
    }

    pub fn capacity_bytes(&self) -> Option<u64> {
        self.capacity_bytes
    }

    /// Bytes held by committed objects plus bytes reserved by puts in progress.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Acquire)
    }

    /// Reserves `bytes` for a put, or refuses naming the tier and what is left.
    pub fn reserve(self: &Arc<Self>, bytes: u64) -> Result<Reservation> {
        let mut reservation = Reservation {
            gauge: Arc::clone(self),
            bytes: 0,
        };
        reservation.grow(bytes)?;
        Ok(reservation)
    }

    fn try_add(&self, bytes: u64) -> Result<()> {
        let mut used = self.used_bytes.load(Ordering::Acquire);
        loop {
            let next = used.saturating_add(bytes);
            if let Some(capacity) = self.capacity_bytes
                && next > capacity
            {
                return Err(StorageError::TierFull {
                    tier: self.tier.to_string(),
                    needed: bytes,
                    available: capacity.saturating_sub(used),
                    capacity,
                });
            }
            match self.used_bytes.compare_exchange_weak(
                used,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(actual) => used = actual,
            }
        }
    }

    /// Whether `bytes` more would fit now, without reserving them (a preflight check).
    pub fn check(&self, bytes: u64) -> Result<()> {
        let used = self.used_bytes();
        match self.capacity_bytes {
            Some(capacity) if used.saturating_add(bytes) > capacity => {
                Err(StorageError::TierFull {
                    tier: self.tier.to_string(),
                    needed: bytes,
                    available: capacity.saturating_sub(used),
                    capacity,
                })
            }
            _ => Ok(()),
        }
    }

    /// Accounts bytes that are already on the tier (found at start-up); never refused.
    pub fn add_existing(&self, bytes: u64) {
        self.used_bytes.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Gives back the bytes of a deleted or replaced object. Stops at zero: files changed by
    /// other tools while the node runs can make the count low, and a low count is a smaller harm
    /// than a wrapped one that refuses every put.
    pub fn release(&self, bytes: u64) {
        let mut used = self.used_bytes.load(Ordering::Acquire);
        loop {
            let next = used.checked_sub(bytes).unwrap_or_else(|| {
                warn!(tier = %self.tier, used, released = bytes, "capacity count below zero; files changed outside letl?");
                0
            });
            match self.used_bytes.compare_exchange_weak(
                used,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => used = actual,
            }
        }
    }
}

/// Bytes held for a put in progress. Released on drop unless kept by a commit.
#[derive(Debug)]
pub struct Reservation {
    gauge: Arc<CapacityGauge>,
    bytes: u64,
}

impl Reservation {
    /// Reserves `more` bytes for a body whose length was not announced.
    pub fn grow(&mut self, more: u64) -> Result<()> {
        self.gauge.try_add(more)?;
        self.bytes += more;
        Ok(())
    }

    /// The bytes now belong to a committed object.
    pub fn keep(mut self) {
        self.bytes = 0;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.gauge.release(self.bytes);
        }
    }
}

/// An object's file on this node, as its tier's index describes it: what a move can hand to
/// another tier on the same file system instead of its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalFile {
    pub path: std::path::PathBuf,
    /// The file itself (device and inode), taken while its tier's actor vouched that the path
    /// held the indexed object: a link to any other file is not this object.
    pub file_id: (u64, u64),
    pub size: u64,
    /// The indexed stamp (see [`BackendObject::stamp`]): the file still holds the indexed bytes
    /// only while its stamp and size are these.
    pub stamp: u64,
    pub hash: ContentHash,
}

/// One place where objects live. Implementations: [`crate::FsTier`], [`crate::MemoryTier`].
#[async_trait::async_trait]
pub trait TierBackend: Send + Sync + fmt::Debug + 'static {
    fn describe(&self) -> TierDescription;

    fn gauge(&self) -> &Arc<CapacityGauge>;

    /// Refuses keys this backend cannot store now (beyond the rules every key follows), such
    /// as a key whose parent is an object. A preflight: `commit` checks again.
    async fn check_key(&self, key: &ObjectKey) -> Result<()>;

    /// Streams `body` somewhere invisible, hashing it, within `limits` and the tier's capacity.
    /// On error nothing stays behind.
    async fn stage(&self, key: &ObjectKey, body: ByteStream, limits: PutLimits) -> Result<Staged>;

    /// Makes staged bytes the object at their key, replacing any previous one, durably.
    async fn commit(&self, staged: Staged) -> Result<Committed>;

    /// Throws staged bytes away.
    async fn abort(&self, staged: Staged);

    async fn get(&self, key: &ObjectKey) -> Result<ObjectReader>;

    async fn head(&self, key: &ObjectKey) -> Result<Option<BackendObject>>;

    /// Objects whose key starts with `prefix` and sorts after `start_after`, in key order,
    /// at most `limit` (itself at most [`LIST_PAGE_ENTRIES_MAX`]).
    async fn list(
        &self,
        prefix: &KeyPrefix,
        start_after: Option<&ObjectKey>,
        limit: usize,
    ) -> Result<Vec<BackendObject>>;

    /// Removes an object; returns its size, or `None` if there was none.
    async fn delete(&self, key: &ObjectKey) -> Result<Option<u64>>;

    /// The file that holds `key`'s bytes and its identity (device, inode), for backends that
    /// keep objects as local files. `None` for others, or when the file is not there.
    async fn local_path(
        &self,
        _key: &ObjectKey,
    ) -> Result<Option<(std::path::PathBuf, (u64, u64))>> {
        Ok(None)
    }

    /// Stages `file` (an object of another tier on this node) without copying its bytes, where
    /// this backend can: a hard link on the same file system. The link must be to the very
    /// file the source's actor named (same device and inode, same size and stamp), so the
    /// staged bytes are the indexed object's and carry its hash. `Ok(None)`: not possible here
    /// (another file system, another kind of backend, or the path now holds another file);
    /// stream the bytes instead.
    async fn stage_local_file(
        &self,
        _key: &ObjectKey,
        _file: &LocalFile,
        _object_bytes_max: u64,
    ) -> Result<Option<Staged>> {
        Ok(None)
    }
}

/// Reads a stream to its end, returning its length and hash. Used to rebuild index entries.
pub async fn hash_stream(mut body: ByteStream) -> io::Result<(u64, ContentHash)> {
    let mut hasher = Hasher::new();
    let mut size = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
    }
    Ok((size, hasher.finish()))
}

/// Checks a body's running length against the limits; shared by every backend's `stage`.
pub(crate) fn check_running_len(received: u64, limits: PutLimits) -> Result<()> {
    if received > limits.object_bytes_max {
        return Err(StorageError::TooLarge {
            size: received,
            max: limits.object_bytes_max,
        });
    }
    if let Some(declared) = limits.declared_len
        && received > declared
    {
        return Err(StorageError::LengthMismatch { declared, received });
    }
    Ok(())
}

/// Refuses a put up front when its announced length already breaks a limit, and reserves it.
pub(crate) fn reserve_for_put(
    gauge: &Arc<CapacityGauge>,
    limits: PutLimits,
) -> Result<Reservation> {
    match limits.declared_len {
        Some(declared) if declared > limits.object_bytes_max => Err(StorageError::TooLarge {
            size: declared,
            max: limits.object_bytes_max,
        }),
        Some(declared) => gauge.reserve(declared),
        None => gauge.reserve(0),
    }
}

/// After the body ended: the announced length must have arrived in full.
pub(crate) fn check_final_len(received: u64, limits: PutLimits) -> Result<()> {
    match limits.declared_len {
        Some(declared) if declared != received => {
            Err(StorageError::LengthMismatch { declared, received })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauge_refuses_past_capacity_and_releases_on_drop() {
        let gauge = CapacityGauge::new(TierName::new("ssd").unwrap(), Some(100));
        let a = gauge.reserve(60).unwrap();
        let err = gauge.reserve(50).unwrap_err();
        assert!(err.to_string().contains("tier `ssd` is full"), "{err}");
        drop(a);
        assert_eq!(gauge.used_bytes(), 0);
        let mut b = gauge.reserve(0).unwrap();
        b.grow(100).unwrap();
        assert!(b.grow(1).is_err());
        b.keep();
        assert_eq!(gauge.used_bytes(), 100);
    }
}

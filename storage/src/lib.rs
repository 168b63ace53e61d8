//! letl's storage: the vocabulary of objects and tiers, the tier backends and the object index.
//!
//! This crate owns object URIs and key validation, the [`TierBackend`] trait with its fs and
//! in-memory backends (the S3 backend joins them with the remote-tiers work), the sled object
//! index with its in-memory twin, and the one storage error type. It is the only crate that
//! names sled (and, later, aws-sdk-s3). It never spawns actors, speaks HTTP, or knows about
//! raft: it is a library of places to put bytes and of facts about them.

mod backend;
mod clock;
pub mod codec;
mod error;
mod fs;
mod hash;
mod index;
pub mod kv;
mod memory;
mod move_jobs;
mod moves;
mod reconcile;
mod records;
#[cfg(feature = "s3")]
mod s3;
mod uri;

pub use backend::{
    BackendObject, ByteStream, CapacityGauge, Committed, LIST_PAGE_ENTRIES_MAX, LocalFile,
    ObjectBody, ObjectReader, PutLimits, Reservation, Staged, TierBackend, TierDescription,
    hash_stream,
};
pub use clock::{Clock, ManualClock, SystemClock, system_time_ms};
pub use error::{Result, StorageError};
pub use fs::{FsOpenReport, FsTier, TMP_DIR_NAME, read_blocks, write_blocks};
pub use hash::{ContentHash, Hasher};
pub use index::{DbIndex, IndexDb, MemoryIndex, ObjectIndex, ObjectMeta};
pub use kv::MemoryDb;
pub use memory::MemoryTier;
pub use move_jobs::{
    DbMoveJobs, MOVE_JOB_FAILURES_KEPT, MOVE_JOB_OBJECTS_MAX, MoveJob, MoveJobFailure, MoveJobItem,
    MoveJobState,
};
pub use moves::{
    DbMoveLog, MemoryMoveLog, MoveLog, MoveRecord, MoveState, REQUEST_ID_BYTES_MAX,
    check_request_id,
};
pub use reconcile::{ReconcileReport, reconcile};
pub use records::DbRecords;
#[cfg(feature = "s3")]
pub use s3::{S3_PART_BYTES_MAX, S3_PART_BYTES_MIN, S3OpenReport, S3Settings, S3Tier};
pub use uri::{KEY_BYTES_MAX, KeyPrefix, ObjectKey, ObjectUri, PrefixUri, TierName};

/// Ends a stream with a `TimedOut` error when no chunk arrives within `idle`: a sender that
/// stalls must not hold a put (and its key) for ever.
pub fn idle_timeout(body: ByteStream, idle: std::time::Duration) -> ByteStream {
    Box::pin(futures_util::stream::unfold(
        Some(body),
        move |body| async move {
            let mut body = body?;
            match tokio::time::timeout(idle, futures_util::StreamExt::next(&mut body)).await {
                Ok(Some(item)) => Some((item, Some(body))),
                Ok(None) => None,
                Err(_) => Some((
                    Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no data for {}s", idle.as_secs()),
                    )),
                    None,
                )),
            }
        },
    ))
}

/// A stream over one buffer, in chunks of `chunk_bytes`: for tests and small bodies.
pub fn stream_of(data: bytes::Bytes, chunk_bytes: usize) -> ByteStream {
    assert!(chunk_bytes > 0, "chunk size must be positive");
    let chunks: Vec<std::io::Result<bytes::Bytes>> = (0..data.len())
        .step_by(chunk_bytes)
        .map(|start| Ok(data.slice(start..data.len().min(start + chunk_bytes))))
        .collect();
    Box::pin(futures_util::stream::iter(chunks))
}

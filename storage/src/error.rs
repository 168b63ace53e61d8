//! The one error type of every tier backend and index.

use std::io;

use crate::hash::ContentHash;

/// What went wrong in storage. Callers tell the kinds apart (the HTTP layer maps them to
/// status codes), so each bad input has its own variant and its message names the culprit.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid object URI `{uri}`: {reason}")]
    InvalidUri { uri: String, reason: String },
    #[error("invalid key `{key}`: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("invalid request id `{id}`: {reason}")]
    InvalidRequestId { id: String, reason: String },
    #[error("invalid tier name `{name}`: {reason}")]
    InvalidTierName { name: String, reason: String },
    #[error("unknown tier `{tier}` (this node has: {known})")]
    UnknownTier { tier: String, known: String },
    #[error("no object `{key}` on tier `{tier}`")]
    NotFound { tier: String, key: String },
    #[error(
        "tier `{tier}` is full: {needed} more bytes needed, {available} available of {capacity}"
    )]
    TierFull {
        tier: String,
        needed: u64,
        available: u64,
        capacity: u64,
    },
    #[error("tier `{tier}` is out of disk space: {reason}")]
    NoSpace { tier: String, reason: String },
    #[error("object too large: {size} bytes is over the maximum object size of {max} bytes")]
    TooLarge { size: u64, max: u64 },
    #[error("conflict on `{key}` in tier `{tier}`: {reason}")]
    Conflict {
        tier: String,
        key: String,
        reason: String,
    },
    #[error("body length mismatch: {declared} bytes declared, {received} received")]
    LengthMismatch { declared: u64, received: u64 },
    #[error("content hash mismatch on `{key}`: expected {expected}, got {actual}")]
    HashMismatch {
        key: String,
        expected: ContentHash,
        actual: ContentHash,
    },
    #[error("reading the request body failed: {0}")]
    Body(#[source] io::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("object index: {0}")]
    Index(String),
    #[error("tier `{tier}` is unavailable: {reason}")]
    Unavailable { tier: String, reason: String },
}

impl StorageError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Re-states a key or tier-name error as an error about the URI that carried it.
    pub(crate) fn in_uri(self, uri: &str) -> Self {
        match self {
            Self::InvalidKey { key, reason } => Self::InvalidUri {
                uri: crate::uri::shorten(uri),
                reason: format!("invalid key `{key}`: {reason}"),
            },
            Self::InvalidTierName { name, reason } => Self::InvalidUri {
                uri: crate::uri::shorten(uri),
                reason: format!("invalid tier name `{name}`: {reason}"),
            },
            other => other,
        }
    }
}

impl From<sled::Error> for StorageError {
    fn from(e: sled::Error) -> Self {
        Self::Index(e.to_string())
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

//! The storage crate's only encoding: index values as a version byte plus bincode.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, StorageError};

/// Bumped when the encoding of stored values changes.
const FORMAT_VERSION: u8 = 1;

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut out = vec![FORMAT_VERSION];
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| StorageError::Index(format!("encode: {e}")))?;
    out.extend_from_slice(&body);
    Ok(out)
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let Some((&version, body)) = bytes.split_first() else {
        return Err(StorageError::Index("decode: empty value".to_string()));
    };
    if version != FORMAT_VERSION {
        return Err(StorageError::Index(format!(
            "decode: stored format version {version}, this build reads {FORMAT_VERSION}"
        )));
    }
    let (value, _) = bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map_err(|e| StorageError::Index(format!("decode: {e}")))?;
    Ok(value)
}

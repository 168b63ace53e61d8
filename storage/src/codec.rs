//! letl's only encoding: bincode 2 (serde mode, standard config). Stored values carry a format
//! version byte; wire messages are bare (the transport frames them and its peers are one build).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, StorageError};

/// Bumped when the encoding of stored values changes.
const FORMAT_VERSION: u8 = 1;

/// A value that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(String);

/// A stored value: the format version byte, then the value.
pub fn encode_stored<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, bincode::config::standard())
        .map_err(|e| CodecError(format!("encode: {e}")))?;
    Ok(out)
}

pub fn decode_stored<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let Some((&version, body)) = bytes.split_first() else {
        return Err(CodecError("decode: empty value".to_string()));
    };
    if version != FORMAT_VERSION {
        return Err(CodecError(format!(
            "decode: stored format version {version}, this build reads {FORMAT_VERSION}"
        )));
    }
    decode_wire(body)
}

/// A message for a peer.
pub fn encode_wire<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| CodecError(format!("encode: {e}")))
}

pub fn decode_wire<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map_err(|e| CodecError(format!("decode: {e}")))?;
    if read != bytes.len() {
        return Err(CodecError(format!(
            "decode: {} bytes left over",
            bytes.len() - read
        )));
    }
    Ok(value)
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    encode_stored(value).map_err(|e| StorageError::Index(e.0))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    decode_stored(bytes).map_err(|e| StorageError::Index(e.0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_a_wrong_version_is_named() {
        let value = (7u64, "seven".to_string(), vec![Some(1u8), None]);
        let stored = encode_stored(&value).unwrap();
        assert_eq!(
            decode_stored::<(u64, String, Vec<Option<u8>>)>(&stored).unwrap(),
            value
        );
        let mut other = stored.clone();
        other[0] = 9;
        let e = decode_stored::<(u64, String, Vec<Option<u8>>)>(&other).unwrap_err();
        assert!(e.to_string().contains("stored format version 9"), "{e}");
        let wire = encode_wire(&value).unwrap();
        assert_eq!(
            decode_wire::<(u64, String, Vec<Option<u8>>)>(&wire).unwrap(),
            value
        );
        let mut long = wire.clone();
        long.push(0);
        assert!(decode_wire::<(u64, String, Vec<Option<u8>>)>(&long).is_err());
    }
}

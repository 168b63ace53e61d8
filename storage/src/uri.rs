//! Object URIs (`<tier>:/<key>`), tier names, keys and key prefixes.
//!
//! Every name that reaches a disk passes through these constructors first, so a key can never
//! climb out of a tier's directory, hide a NUL, or exceed the length an index can hold.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::StorageError;

/// Longest key, in bytes of UTF-8.
pub const KEY_BYTES_MAX: usize = 1024;
/// Longest tier name, in bytes.
pub const TIER_NAME_BYTES_MAX: usize = 64;

/// A tier's name: a lowercase letter, then lowercase letters, digits, `-` or `_`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TierName(String);

impl TierName {
    pub fn new(name: impl Into<String>) -> Result<Self, StorageError> {
        let name = name.into();
        let invalid = |reason: &str| StorageError::InvalidTierName {
            name: shorten(&name),
            reason: reason.to_string(),
        };
        if name.is_empty() {
            return Err(invalid("it is empty"));
        }
        if name.len() > TIER_NAME_BYTES_MAX {
            return Err(invalid("it is longer than 64 bytes"));
        }
        if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(invalid("it must start with a lowercase letter"));
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        {
            return Err(invalid("only a-z, 0-9, '-' and '_' are allowed"));
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TierName {
    type Error = StorageError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<TierName> for String {
    fn from(value: TierName) -> Self {
        value.0
    }
}

impl fmt::Display for TierName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated object key: UTF-8, `/`-separated segments, none empty, `.` or `..`, no NUL,
/// at most [`KEY_BYTES_MAX`] bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ObjectKey(String);

impl ObjectKey {
    pub fn new(key: impl Into<String>) -> Result<Self, StorageError> {
        let key = key.into();
        check_key_text(&key)?;
        if key.is_empty() {
            return Err(invalid_key(&key, "it is empty"));
        }
        for segment in key.split('/') {
            check_segment(&key, segment)?;
        }
        Ok(Self(key))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The last segment: what a file copied out of letl would be called.
    pub fn basename(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

/// Keys order as their text does, so maps of keys can be searched with a `&str` bound.
impl std::borrow::Borrow<str> for ObjectKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ObjectKey {
    type Error = StorageError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<ObjectKey> for String {
    fn from(value: ObjectKey) -> Self {
        value.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key prefix for listing: empty (the whole tier), whole segments ending in `/`, or whole
/// segments followed by the start of one more (`covid/NC_`).
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyPrefix(String);

impl KeyPrefix {
    pub fn new(prefix: impl Into<String>) -> Result<Self, StorageError> {
        let prefix = prefix.into();
        check_key_text(&prefix)?;
        // Every segment but the last must be a whole, valid segment; the last one is a partial
        // name and may be empty (a prefix ending in '/') or anything without '/' and NUL.
        if let Some((whole, _partial)) = prefix.rsplit_once('/') {
            for segment in whole.split('/') {
                check_segment(&prefix, segment)?;
            }
        }
        Ok(Self(prefix))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, key: &ObjectKey) -> bool {
        key.as_str().starts_with(&self.0)
    }

    /// The whole segments of the prefix, ending in `/`, or empty.
    pub fn directory(&self) -> &str {
        match self.0.rfind('/') {
            Some(slash) => &self.0[..=slash],
            None => "",
        }
    }
}

impl TryFrom<String> for KeyPrefix {
    type Error = StorageError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<KeyPrefix> for String {
    fn from(value: KeyPrefix) -> Self {
        value.0
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `<tier>:/<key>`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectUri {
    pub tier: TierName,
    pub key: ObjectKey,
}

impl ObjectUri {
    pub fn new(tier: TierName, key: ObjectKey) -> Self {
        Self { tier, key }
    }

    pub fn parse(uri: &str) -> Result<Self, StorageError> {
        let (tier, key) = split_uri(uri)?;
        let key = ObjectKey::new(key).map_err(|e| e.in_uri(uri))?;
        Ok(Self { tier, key })
    }
}

impl fmt::Display for ObjectUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:/{}", self.tier, self.key)
    }
}

impl std::str::FromStr for ObjectUri {
    type Err = StorageError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// `<tier>:/<prefix>`, as `letl ls` takes it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PrefixUri {
    pub tier: TierName,
    pub prefix: KeyPrefix,
}

impl PrefixUri {
    pub fn parse(uri: &str) -> Result<Self, StorageError> {
        let (tier, prefix) = split_uri(uri)?;
        let prefix = KeyPrefix::new(prefix).map_err(|e| e.in_uri(uri))?;
        Ok(Self { tier, prefix })
    }

    /// A destination that names a place rather than an object (`ssd:/`, `ssd:/covid/`) takes
    /// the source's basename, as `cp file dir/` does.
    pub fn is_directory(&self) -> bool {
        self.prefix.as_str().is_empty() || self.prefix.as_str().ends_with('/')
    }

    /// The object `<prefix><name>`.
    pub fn join(&self, name: &str) -> Result<ObjectUri, StorageError> {
        let key = ObjectKey::new(format!("{}{}", self.prefix, name))?;
        Ok(ObjectUri::new(self.tier.clone(), key))
    }
}

impl fmt::Display for PrefixUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:/{}", self.tier, self.prefix)
    }
}

fn split_uri(uri: &str) -> Result<(TierName, &str), StorageError> {
    let malformed = |reason: &str| StorageError::InvalidUri {
        uri: shorten(uri),
        reason: reason.to_string(),
    };
    let Some((tier, rest)) = uri.split_once(':') else {
        return Err(malformed(
            "expected <tier>:/<key>, e.g. ssd:/covid/NC_045512.fasta",
        ));
    };
    let Some(key) = rest.strip_prefix('/') else {
        return Err(malformed(
            "expected <tier>:/<key>: the key must follow ':/'",
        ));
    };
    let tier = TierName::new(tier).map_err(|e| e.in_uri(uri))?;
    Ok((tier, key))
}

fn check_key_text(key: &str) -> Result<(), StorageError> {
    if key.len() > KEY_BYTES_MAX {
        return Err(invalid_key(key, "it is longer than 1024 bytes"));
    }
    if key.contains('\0') {
        return Err(invalid_key(key, "it contains a NUL byte"));
    }
    Ok(())
}

fn check_segment(key: &str, segment: &str) -> Result<(), StorageError> {
    match segment {
        "" => Err(invalid_key(
            key,
            "it has an empty segment ('//' or a leading or trailing '/')",
        )),
        "." => Err(invalid_key(key, "it has a '.' segment")),
        ".." => Err(invalid_key(key, "it has a '..' segment")),
        _ => Ok(()),
    }
}

fn invalid_key(key: &str, reason: &str) -> StorageError {
    StorageError::InvalidKey {
        key: shorten(key),
        reason: reason.to_string(),
    }
}

/// Error messages quote what was refused, but never a whole kilobyte of it.
pub(crate) fn shorten(text: &str) -> String {
    const QUOTE_CHARS_MAX: usize = 80;
    let printable: String = text.replace('\0', "\\0");
    if printable.chars().count() <= QUOTE_CHARS_MAX {
        printable
    } else {
        let head: String = printable.chars().take(QUOTE_CHARS_MAX).collect();
        format!("{head}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_uris() {
        let uri = ObjectUri::parse("ssd:/covid/NC_045512.fasta").unwrap();
        assert_eq!(uri.tier.as_str(), "ssd");
        assert_eq!(uri.key.as_str(), "covid/NC_045512.fasta");
        assert_eq!(uri.key.basename(), "NC_045512.fasta");
        assert_eq!(uri.to_string(), "ssd:/covid/NC_045512.fasta");
        let odd = ObjectUri::parse("cortx:/a b/ü/..x/.hidden").unwrap();
        assert_eq!(odd.key.as_str(), "a b/ü/..x/.hidden");
    }

    #[test]
    fn refuses_bad_keys_naming_the_reason() {
        let cases = [
            ("ssd:/a/../b", "'..' segment"),
            ("ssd:/a/./b", "'.' segment"),
            ("ssd:/a//b", "empty segment"),
            ("ssd://a", "empty segment"),
            ("ssd:/a/", "empty segment"),
            ("ssd:/", "empty"),
            ("ssd:/a\0b", "NUL"),
        ];
        for (uri, reason) in cases {
            let err = ObjectUri::parse(uri).unwrap_err().to_string();
            assert!(err.contains(reason), "{uri:?}: {err}");
        }
        let long = format!("ssd:/{}", "k".repeat(KEY_BYTES_MAX + 1));
        assert!(
            ObjectUri::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("1024")
        );
        let just_fits = format!("ssd:/{}", "k".repeat(KEY_BYTES_MAX));
        assert!(ObjectUri::parse(&just_fits).is_ok());
    }

    #[test]
    fn refuses_bad_uris() {
        for uri in ["ssd", "ssd:key", "SSD:/a", "9ssd:/a", ":/a", "s$d:/a"] {
            assert!(ObjectUri::parse(uri).is_err(), "{uri}");
        }
    }

    #[test]
    fn prefixes_allow_partial_last_segment() {
        let p = PrefixUri::parse("ssd:/covid/NC_").unwrap();
        assert_eq!(p.prefix.directory(), "covid/");
        assert!(!p.is_directory());
        assert!(PrefixUri::parse("ssd:/").unwrap().is_directory());
        assert!(PrefixUri::parse("ssd:/covid/").unwrap().is_directory());
        assert!(PrefixUri::parse("ssd:/a/../").is_err());
        assert!(PrefixUri::parse("ssd://").is_err());
        let joined = PrefixUri::parse("hdd:/out/").unwrap().join("x.fa").unwrap();
        assert_eq!(joined.to_string(), "hdd:/out/x.fa");
    }
}

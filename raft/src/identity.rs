//! A node's cluster identity on disk, join tokens, and the sealing of the CA key for a joining
//! node.
//!
//! The identity (`identity.json` in the cluster directory, mode 0600) holds the cluster's CA
//! certificate and key, this node's id, certificate and key, and, until the node has been
//! made a member, the members it was admitted by. Every member keeps the CA key, so any member
//! can admit a new node, even after the founder is gone.
//!
//! A join token is `letl1.<ca fingerprint>.<secret>`; the secret never leaves the node that
//! issued it and the one that joins. Two keys are derived from it: a proof, which the joining
//! node sends (the cluster stores only the proof's hash, with an expiry), and a sealing key,
//! which the issuing member stores in the control state and under which the CA key travels.
//! Whoever reads a join request and its answer (the admin API may be plain HTTP) has the proof
//! but not the sealing key, so cannot open the CA key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tls::{ClusterCa, NodeTls, TlsError, ca_fingerprint};
use crate::{NodeId, NodeInfo};

/// The identity file in a node's cluster directory.
pub const IDENTITY_FILE: &str = "identity.json";
/// A join token's prefix and format version.
const TOKEN_PREFIX: &str = "letl1";
/// Bytes of a token's secret.
const TOKEN_SECRET_BYTES: usize = 16;
/// Bytes of a sealed value's nonce and of its tag.
const SEAL_NONCE_BYTES: usize = 16;
const SEAL_TAG_BYTES: usize = 32;
const SEAL_KEY_CONTEXT: &str = "letl 2026-11 join token ca key seal";
const SEAL_TAG_CONTEXT: &str = "letl 2026-11 join token ca key tag";
const PROOF_CONTEXT: &str = "letl 2026-11 join token proof";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("the join token is malformed: {0}")]
    Token(String),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Who this node is in which cluster.
#[derive(Clone, Serialize, Deserialize)]
pub struct Identity {
    pub cluster: String,
    pub node_id: NodeId,
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The members that admitted this node; empty once it is a member itself.
    #[serde(default)]
    pub join_via: BTreeMap<NodeId, NodeInfo>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("cluster", &self.cluster)
            .field("node_id", &self.node_id)
            .field("join_via", &self.join_via)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A new cluster's CA and its first node's certificate.
    pub fn found(cluster: &str, node_id: NodeId) -> Result<Self, IdentityError> {
        let ca = ClusterCa::generate(cluster)?;
        let tls = ca.issue_node(node_id)?;
        Ok(Self {
            cluster: cluster.to_string(),
            node_id,
            ca_pem: tls.ca_pem,
            ca_key_pem: ca.key_pem(),
            cert_pem: tls.cert_pem,
            key_pem: tls.key_pem,
            join_via: BTreeMap::new(),
        })
    }

    pub fn tls(&self) -> NodeTls {
        NodeTls {
            ca_pem: self.ca_pem.clone(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }

    pub fn ca(&self) -> Result<ClusterCa, IdentityError> {
        Ok(ClusterCa::load(&self.ca_pem, &self.ca_key_pem)?)
    }

    pub fn fingerprint(&self) -> Result<String, IdentityError> {
        Ok(ca_fingerprint(&self.ca_pem)?)
    }

    /// The identity saved in `dir`, if there is one.
    pub fn load(dir: &Path) -> Result<Option<Self>, IdentityError> {
        let path = dir.join(IDENTITY_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(file_error(&path, e)),
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| file_error(&path, e))
    }

    /// Saves the identity in `dir` durably (a new file renamed over the old one), readable by
    /// its owner only.
    pub fn save(&self, dir: &Path) -> Result<(), IdentityError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
        let path = dir.join(IDENTITY_FILE);
        let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self).map_err(|e| file_error(&path, e))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| file_error(&tmp, e))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| file_error(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| file_error(&path, e))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| file_error(dir, e))
    }
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> IdentityError {
    IdentityError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// A join token's parts.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The fingerprint of the cluster CA it admits to.
    pub ca_fingerprint: String,
    secret: [u8; TOKEN_SECRET_BYTES],
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish_non_exhaustive()
    }
}

impl JoinToken {
    /// A new random token for the cluster whose CA has `ca_fingerprint`.
    pub fn generate(ca_fingerprint: &str) -> Result<Self, IdentityError> {
        let mut secret = [0u8; TOKEN_SECRET_BYTES];
        getrandom::fill(&mut secret)
            .map_err(|e| IdentityError::Refused(format!("no randomness for a token: {e}")))?;
        Ok(Self {
            ca_fingerprint: ca_fingerprint.to_string(),
            secret,
        })
    }

    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        let parts: Vec<&str> = text.trim().split('.').collect();
        let [prefix, fingerprint, secret] = parts[..] else {
            return Err(IdentityError::Token(format!(
                "expected `{TOKEN_PREFIX}.<fingerprint>.<secret>`, as `letl cluster token` prints it"
            )));
        };
        if prefix != TOKEN_PREFIX {
            return Err(IdentityError::Token(format!(
                "it starts with `{prefix}`, not `{TOKEN_PREFIX}`"
            )));
        }
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(fingerprint, 32) {
            return Err(IdentityError::Token(
                "the fingerprint is not 32 hex digits".to_string(),
            ));
        }
        if !hex(secret, 2 * TOKEN_SECRET_BYTES) {
            return Err(IdentityError::Token(format!(
                "the secret is not {} hex digits",
                2 * TOKEN_SECRET_BYTES
            )));
        }
        let mut bytes = [0u8; TOKEN_SECRET_BYTES];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&secret[2 * i..2 * i + 2], 16)
                .map_err(|e| IdentityError::Token(e.to_string()))?;
        }
        Ok(Self {
            ca_fingerprint: fingerprint.to_ascii_lowercase(),
            secret: bytes,
        })
    }

    /// What the joining node sends to show it holds the token (hex).
    pub fn proof(&self) -> String {
        encode_hex(&blake3::derive_key(PROOF_CONTEXT, &self.secret))
    }

    /// The key the CA key is sealed under (hex), kept by the cluster with the token.
    pub fn seal_key(&self) -> String {
        encode_hex(&blake3::derive_key(SEAL_KEY_CONTEXT, &self.secret))
    }

    /// Opens what was sealed under this token's sealing key.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, IdentityError> {
        open(&self.seal_key(), sealed)
    }
}

/// What the cluster stores for a proof: its hash. Refuses a proof that is not 64 hex digits.
pub fn proof_hash(proof: &str) -> Result<String, IdentityError> {
    let bytes = decode_hex(proof)
        .filter(|b| b.len() == 32)
        .ok_or_else(|| IdentityError::Token("the proof is not 64 hex digits".to_string()))?;
    Ok(blake3::hash(&bytes).to_hex().to_string())
}

fn seal_key_bytes(key: &str) -> Result<[u8; 32], IdentityError> {
    decode_hex(key)
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| IdentityError::Refused("a sealing key is not 64 hex digits".to_string()))
}

/// Seals `plain` under `key` (hex): a random nonce, the bytes under a keyed stream, a tag.
pub fn seal(key: &str, plain: &[u8]) -> Result<Vec<u8>, IdentityError> {
    let key = seal_key_bytes(key)?;
    let mut nonce = [0u8; SEAL_NONCE_BYTES];
    getrandom::fill(&mut nonce)
        .map_err(|e| IdentityError::Refused(format!("no randomness for a nonce: {e}")))?;
    let mut sealed = nonce.to_vec();
    sealed.extend(keystream_xor(&key, &nonce, plain));
    let tag = tag(&key, &sealed);
    sealed.extend_from_slice(&tag);
    Ok(sealed)
}

/// Opens what [`seal`] sealed under the same key.
pub fn open(key: &str, sealed: &[u8]) -> Result<Vec<u8>, IdentityError> {
    let key = seal_key_bytes(key)?;
    let refused = || {
        IdentityError::Refused(
            "the sealed CA key does not open with this token (tampered with, or another token)"
                .to_string(),
        )
    };
    if sealed.len() < SEAL_NONCE_BYTES + SEAL_TAG_BYTES {
        return Err(refused());
    }
    let (body, found) = sealed.split_at(sealed.len() - SEAL_TAG_BYTES);
    // blake3's Hash compares in constant time.
    if blake3::Hash::from_bytes(tag(&key, body))
        != blake3::Hash::from_slice(found).map_err(|_| refused())?
    {
        return Err(refused());
    }
    let (nonce, cipher) = body.split_at(SEAL_NONCE_BYTES);
    Ok(keystream_xor(&key, nonce, cipher))
}

fn keystream_xor(key: &[u8; 32], nonce: &[u8], data: &[u8]) -> Vec<u8> {
    let mut stream = blake3::Hasher::new_keyed(key).update(nonce).finalize_xof();
    let mut pad = vec![0u8; data.len()];
    stream.fill(&mut pad);
    data.iter().zip(pad).map(|(d, p)| d ^ p).collect()
}

fn tag(key: &[u8; 32], data: &[u8]) -> [u8; SEAL_TAG_BYTES] {
    let tag_key = blake3::derive_key(SEAL_TAG_CONTEXT, key);
    *blake3::keyed_hash(&tag_key, data).as_bytes()
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{TOKEN_PREFIX}.{}.", self.ca_fingerprint)?;
        for byte in self.secret {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// What a member gives a node it admits.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct JoinGrant {
    pub cluster: String,
    pub node_id: NodeId,
    pub ca_pem: String,
    /// The CA key sealed under the token (hex).
    pub sealed_ca_key: String,
    /// The node's certificate, signed from its request.
    pub cert_pem: String,
    /// The members when it was admitted.
    pub members: BTreeMap<NodeId, NodeInfo>,
}

/// The identity a joining node keeps: the grant checked against its token, with its own key.
pub fn joined_identity(
    token: &JoinToken,
    grant: JoinGrant,
    key_pem: String,
) -> Result<Identity, IdentityError> {
    let fingerprint = ca_fingerprint(&grant.ca_pem)?;
    if fingerprint != token.ca_fingerprint {
        return Err(IdentityError::Refused(format!(
            "the cluster answered with CA {fingerprint}, but the token is for CA {}: not the cluster the token came from",
            token.ca_fingerprint
        )));
    }
    let sealed = decode_hex(&grant.sealed_ca_key)
        .ok_or_else(|| IdentityError::Refused("the sealed CA key is not hex".to_string()))?;
    let ca_key_pem = String::from_utf8(token.open(&sealed)?)
        .map_err(|_| IdentityError::Refused("the CA key is not text".to_string()))?;
    ClusterCa::load(&grant.ca_pem, &ca_key_pem)?;
    Ok(Identity {
        cluster: grant.cluster,
        node_id: grant.node_id,
        ca_pem: grant.ca_pem,
        ca_key_pem,
        cert_pem: grant.cert_pem,
        key_pem,
        join_via: grant.members,
    })
}

pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn tokens_print_and_parse_back_and_refuse_garbage() {
        let token = JoinToken::generate(&"ab".repeat(16)).unwrap();
        let text = token.to_string();
        assert_eq!(JoinToken::parse(&text).unwrap(), token);
        assert_eq!(JoinToken::parse(&text).unwrap().proof(), token.proof());
        for bad in [
            "",
            "letl1.ab.cd",
            &text.replace("letl1", "letl2"),
            &text[..text.len() - 1],
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_sealed_key_opens_with_its_token_only() {
        let token = JoinToken::generate(&"ab".repeat(16)).unwrap();
        let sealed = seal(&token.seal_key(), b"the ca key").unwrap();
        assert_eq!(token.open(&sealed).unwrap(), b"the ca key");
        let other = JoinToken::generate(&"ab".repeat(16)).unwrap();
        assert!(other.open(&sealed).is_err());
        let mut tampered = sealed.clone();
        tampered[SEAL_NONCE_BYTES] ^= 1;
        assert!(token.open(&tampered).is_err());
        assert!(token.open(&sealed[..10]).is_err());
    }

    #[test]
    fn identities_survive_a_save_and_a_grant_checks_its_ca() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Identity::load(dir.path()).unwrap().is_none());
        let founder = Identity::found("test", 1).unwrap();
        founder.save(dir.path()).unwrap();
        let loaded = Identity::load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.cert_pem, founder.cert_pem);

        let token = JoinToken::generate(&founder.fingerprint().unwrap()).unwrap();
        let (key_pem, csr) = crate::tls::node_key_and_request().unwrap();
        let grant = JoinGrant {
            cluster: "test".to_string(),
            node_id: 2,
            ca_pem: founder.ca_pem.clone(),
            sealed_ca_key: encode_hex(
                &seal(&token.seal_key(), founder.ca_key_pem.as_bytes()).unwrap(),
            ),
            cert_pem: founder.ca().unwrap().sign_node(&csr, 2).unwrap(),
            members: BTreeMap::new(),
        };
        let joined = joined_identity(&token, grant.clone(), key_pem.clone()).unwrap();
        assert_eq!(joined.node_id, 2);
        assert_eq!(joined.ca_key_pem, founder.ca_key_pem);

        // A grant from another cluster does not match the token's fingerprint.
        let stranger = Identity::found("other", 1).unwrap();
        let forged = JoinGrant {
            ca_pem: stranger.ca_pem,
            ..grant
        };
        assert!(joined_identity(&token, forged, key_pem).is_err());
    }
}

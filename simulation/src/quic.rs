//! quinn's endpoint settings from the run's seed. quinn draws its connection ids and its
//! stateless-reset key from the OS by default; both show on the wire (a restarted node answers
//! an old connection's packets with a reset, and the peer parses it), so a run would not replay
//! bit for bit. Here both come from the seed of the node's incarnation, as the endpoint's own
//! generator does (`rng_seed`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::crypto::{CryptoError, HmacKey};
use quinn::{ConnectionId, ConnectionIdGenerator};

/// Bytes in a connection id (quinn's default length).
const CID_BYTES: usize = 8;

/// An endpoint configuration whose every random choice comes from `seed`.
pub fn endpoint_config(seed: &blake3::Hash) -> quinn::EndpointConfig {
    let reset_key = blake3::derive_key("letl simulation quic reset key", seed.as_bytes());
    let mut config = quinn::EndpointConfig::new(Arc::new(ResetKey(reset_key)));
    config.rng_seed(Some(*seed.as_bytes()));
    let cid_seed = blake3::derive_key("letl simulation quic connection ids", seed.as_bytes());
    // Each generator quinn asks for draws its own stream.
    let generators = AtomicU64::new(0);
    config.cid_generator(move || {
        let n = generators.fetch_add(1, Ordering::Relaxed);
        Box::new(SeededCids::new(&cid_seed, n))
    });
    config
}

/// Connection ids read from a seeded BLAKE3 stream.
struct SeededCids {
    stream: blake3::OutputReader,
}

impl SeededCids {
    /// The `n`th generator of the ids seeded by `cid_seed`.
    fn new(cid_seed: &[u8; blake3::KEY_LEN], n: u64) -> Self {
        let stream = blake3::Hasher::new_keyed(cid_seed)
            .update(&n.to_le_bytes())
            .finalize_xof();
        Self { stream }
    }
}

impl ConnectionIdGenerator for SeededCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut bytes = [0; CID_BYTES];
        self.stream.fill(&mut bytes);
        ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        CID_BYTES
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The stateless-reset key: a keyed BLAKE3 MAC.
struct ResetKey([u8; blake3::KEY_LEN]);

impl HmacKey for ResetKey {
    fn sign(&self, data: &[u8], signature_out: &mut [u8]) {
        signature_out.copy_from_slice(blake3::keyed_hash(&self.0, data).as_bytes());
    }

    fn signature_len(&self) -> usize {
        blake3::OUT_LEN
    }

    fn verify(&self, data: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        // `blake3::Hash` compares in constant time.
        let expected = blake3::keyed_hash(&self.0, data);
        let given: [u8; blake3::OUT_LEN] = signature.try_into().map_err(|_| CryptoError)?;
        if expected == blake3::Hash::from(given) {
            Ok(())
        } else {
            Err(CryptoError)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_and_number_give_the_same_ids() {
        let ids = |seed: u8, n: u64| {
            let mut cids = SeededCids::new(&[seed; blake3::KEY_LEN], n);
            (cids.generate_cid(), cids.generate_cid())
        };
        let (a, b) = ids(1, 0);
        assert_ne!(a, b);
        assert_eq!(a.len(), CID_BYTES);
        assert_eq!(ids(1, 0), (a, b));
        assert_ne!(ids(1, 1), (a, b));
        assert_ne!(ids(2, 0), (a, b));
    }

    #[test]
    fn reset_signatures_verify_only_with_their_key() {
        let key = ResetKey([1; blake3::KEY_LEN]);
        let mut signature = vec![0; key.signature_len()];
        key.sign(b"connection", &mut signature);
        assert!(key.verify(b"connection", &signature).is_ok());
        assert!(key.verify(b"other", &signature).is_err());
        assert!(
            ResetKey([2; blake3::KEY_LEN])
                .verify(b"connection", &signature)
                .is_err()
        );
        assert!(key.verify(b"connection", &signature[..16]).is_err());
    }
}

//! QUIC and TLS from the run's seed. quinn draws its connection ids and stateless-reset key,
//! and rustls its randoms and key shares, from the operating system; all of them show on the
//! wire in ways that change what happens: a restarted node answers an old connection's packets
//! with a reset, and parses the Initial packets a peer still sends to its old incarnation, whose
//! bits depend on the handshake's random bytes. Here every one of them comes from the seed of
//! the node's incarnation, and TLS reads simulated time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::{CryptoError, HmacKey};
use quinn::rustls;
use quinn::{ConnectionId, ConnectionIdGenerator};
use rustls::crypto::{ActiveKeyExchange, CryptoProvider, SharedSecret, SupportedKxGroup};
use rustls::pki_types::UnixTime;
use rustls::{NamedGroup, PeerMisbehaved};

use letl_raft::tls::TlsBasis;

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

/// Bytes in the destination connection id of a client's first packets (quinn's default).
const INITIAL_CID_BYTES: usize = 20;

/// Makes `config`'s connections start with destination ids from `seed` (quinn's default draws
/// them from the OS, and a connection's first packets are encrypted with keys derived from
/// it). `purpose` tells apart the streams of a node's client configurations.
pub fn seed_initial_ids(config: &mut quinn::ClientConfig, seed: &blake3::Hash, purpose: &str) {
    let key = blake3::derive_key("letl simulation quic initial ids", seed.as_bytes());
    let stream = blake3::Hasher::new_keyed(&key)
        .update(purpose.as_bytes())
        .finalize_xof();
    let stream = Mutex::new(stream);
    config.initial_dst_cid_provider(Arc::new(move || {
        let mut bytes = [0; INITIAL_CID_BYTES];
        stream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fill(&mut bytes);
        ConnectionId::new(&bytes)
    }));
}

/// A TLS basis whose every random choice comes from `seed`, on simulated time.
///
/// rustls wants its random source for the life of the process: each incarnation's is leaked,
/// a few hundred bytes per node restart in a run's process.
pub fn tls_basis(seed: &blake3::Hash) -> TlsBasis {
    let random: &'static SeededRandom = Box::leak(Box::new(SeededRandom::new(seed)));
    let x25519: &'static SeededX25519 = Box::leak(Box::new(SeededX25519 { random }));
    TlsBasis {
        provider: Arc::new(CryptoProvider {
            kx_groups: vec![x25519],
            secure_random: random,
            ..rustls::crypto::ring::default_provider()
        }),
        time: Arc::new(SimTime),
    }
}

/// Random bytes read from a seeded BLAKE3 stream.
#[derive(Debug)]
struct SeededRandom(Mutex<blake3::OutputReader>);

impl SeededRandom {
    fn new(seed: &blake3::Hash) -> Self {
        let key = blake3::derive_key("letl simulation tls random", seed.as_bytes());
        Self(Mutex::new(blake3::Hasher::new_keyed(&key).finalize_xof()))
    }

    fn fill(&self, buf: &mut [u8]) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).fill(buf);
    }
}

impl rustls::crypto::SecureRandom for SeededRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), rustls::crypto::GetRandomFailed> {
        SeededRandom::fill(self, buf);
        Ok(())
    }
}

/// X25519 key exchange with secrets from a [`SeededRandom`] (ring's draws its own).
#[derive(Debug)]
struct SeededX25519 {
    random: &'static SeededRandom,
}

impl SupportedKxGroup for SeededX25519 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
        let mut secret = [0; 32];
        self.random.fill(&mut secret);
        let secret = x25519_dalek::StaticSecret::from(secret);
        let public = x25519_dalek::PublicKey::from(&secret);
        Ok(Box::new(X25519Exchange { secret, public }))
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

struct X25519Exchange {
    secret: x25519_dalek::StaticSecret,
    public: x25519_dalek::PublicKey,
}

impl ActiveKeyExchange for X25519Exchange {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, rustls::Error> {
        let peer: [u8; 32] = peer_pub_key
            .try_into()
            .map_err(|_| PeerMisbehaved::InvalidKeyShare)?;
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer));
        // A low-order point gives an all-zero secret (RFC 7748, section 6.1).
        if !shared.was_contributory() {
            return Err(PeerMisbehaved::InvalidKeyShare.into());
        }
        Ok(SharedSecret::from(&shared.as_bytes()[..]))
    }

    fn pub_key(&self) -> &[u8] {
        self.public.as_bytes()
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

/// turmoil's simulated wall clock.
#[derive(Debug)]
struct SimTime;

impl rustls::time_provider::TimeProvider for SimTime {
    fn current_time(&self) -> Option<UnixTime> {
        turmoil::since_epoch().map(UnixTime::since_unix_epoch)
    }
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
    fn seeded_key_exchanges_agree_and_repeat() {
        let exchange = |seed: &[u8]| {
            let random = Box::leak(Box::new(SeededRandom::new(&blake3::hash(seed))));
            SeededX25519 { random }.start().unwrap()
        };
        let (a, b) = (exchange(b"a"), exchange(b"b"));
        let (a_pub, b_pub) = (a.pub_key().to_vec(), b.pub_key().to_vec());
        assert_eq!(exchange(b"a").pub_key(), &a_pub[..]);
        assert_ne!(a_pub, b_pub);
        let one = a.complete(&b_pub).unwrap();
        let two = b.complete(&a_pub).unwrap();
        assert_eq!(one.secret_bytes(), two.secret_bytes());
        assert!(
            exchange(b"a").complete(&[0; 32]).is_err(),
            "a low-order point"
        );
        assert!(exchange(b"a").complete(&[1; 31]).is_err(), "a short key");
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

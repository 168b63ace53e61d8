//! The cluster's certificates: a cluster CA made at `cluster init`, node certificates it signs
//! (named `node-<id>.letl`, whatever the request asked for), and the QUIC configurations that
//! require them on both sides (mutual TLS).

use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::NodeId;

/// The ALPN protocol of node-to-node control traffic (raft, forwarded writes).
pub const ALPN: &[u8] = b"letl/1";
/// The ALPN protocol of node-to-node object traffic: its own connection, so bulk bytes never
/// queue ahead of raft heartbeats.
pub const DATA_ALPN: &[u8] = b"letl-data/1";
/// A connection with no traffic for this long is closed (peers send keep-alives well within).
pub const CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Keep-alives on idle connections.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Streams a peer may have open on one connection at once.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("tls configuration: {0}")]
    Config(String),
}

fn cert_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Certificate(e.to_string())
}

fn config_error(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

/// The DNS name in node `id`'s certificate, which peers check when they connect to it.
pub fn server_name(id: NodeId) -> String {
    format!("node-{id}.letl")
}

/// A short fingerprint of a CA certificate (blake3 of its DER, 32 hex digits): a join token
/// carries it so the joining node can check it reached the right cluster.
pub fn ca_fingerprint(ca_pem: &str) -> Result<String, TlsError> {
    let der = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(cert_error)?;
    Ok(blake3::hash(der.as_ref()).to_hex()[..32].to_string())
}

/// The cluster CA: it signs node certificates.
#[derive(Debug)]
pub struct ClusterCa {
    cert_pem: String,
    key: KeyPair,
}

impl ClusterCa {
    pub fn generate(cluster_id: &str) -> Result<Self, TlsError> {
        let key = new_key()?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(cert_error)?;
        params.serial_number = Some(serial_number(&key));
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, format!("letl cluster {cluster_id}"));
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).map_err(cert_error)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
        })
    }

    pub fn load(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(cert_error)?;
        // Checks the pair parses as a CA certificate now, not at the first join.
        Issuer::from_ca_cert_pem(cert_pem, &key).map_err(cert_error)?;
        Ok(Self {
            cert_pem: cert_pem.to_string(),
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Signs a node's certificate request as node `id`: the certificate names that node only,
    /// whatever names the request asked for.
    pub fn sign_node(&self, csr_pem: &str, id: NodeId) -> Result<String, TlsError> {
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(cert_error)?;
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(cert_error)?;
        let name = server_name(id);
        csr.params.subject_alt_names = vec![SanType::DnsName(
            name.clone().try_into().map_err(cert_error)?,
        )];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        csr.params.distinguished_name = dn;
        csr.params.is_ca = IsCa::NoCa;
        csr.params.serial_number = Some(serial_number(&csr.public_key));
        csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        csr.params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        Ok(csr.signed_by(&issuer).map_err(cert_error)?.pem())
    }

    /// A key and a signed certificate for node `id`, made here (the founding node's own).
    pub fn issue_node(&self, id: NodeId) -> Result<NodeTls, TlsError> {
        let (key_pem, csr_pem) = node_key_and_request()?;
        Ok(NodeTls {
            ca_pem: self.cert_pem.clone(),
            cert_pem: self.sign_node(&csr_pem, id)?,
            key_pem,
        })
    }
}

/// A new key: Ed25519, whose signatures are deterministic and always 64 bytes, so a
/// handshake's messages have the same sizes every time (the simulator replays them).
/// Keys made before (ECDSA P-256) still load and sign.
fn new_key() -> Result<KeyPair, TlsError> {
    KeyPair::generate_for(&rcgen::PKCS_ED25519).map_err(cert_error)
}

/// A certificate's serial number: 20 bytes of the BLAKE3 of its public key, the first byte in
/// 0x40..0x80 so the number is positive and always encodes in 20 bytes (rcgen's own serial
/// drops a leading zero byte one time in 128).
fn serial_number(key: &impl rcgen::PublicKeyData) -> rcgen::SerialNumber {
    let hash = blake3::hash(&key.subject_public_key_info());
    let mut serial = hash.as_bytes()[..SERIAL_BYTES].to_vec();
    serial[0] = (serial[0] & 0x3f) | 0x40;
    rcgen::SerialNumber::from_slice(&serial)
}

/// RFC 5280's largest serial number.
const SERIAL_BYTES: usize = 20;

/// A new node key and a certificate request for it (PEM): the key never leaves the node.
pub fn node_key_and_request() -> Result<(String, String), TlsError> {
    let key = new_key()?;
    let params = CertificateParams::new(vec!["letl-node".to_string()]).map_err(cert_error)?;
    let csr = params.serialize_request(&key).map_err(cert_error)?;
    Ok((key.serialize_pem(), csr.pem().map_err(cert_error)?))
}

/// What a node presents and trusts: the cluster CA, its certificate and its key (PEM).
#[derive(Clone)]
pub struct NodeTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for NodeTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTls").finish_non_exhaustive()
    }
}

/// What a node's TLS draws on: its cryptography and its wall clock (for session tickets'
/// ages and certificates' validity). Nodes use ring and the system clock; the simulator seeds
/// the one and simulates the other, so handshakes replay.
#[derive(Clone, Debug)]
pub struct TlsBasis {
    pub provider: Arc<rustls::crypto::CryptoProvider>,
    pub time: Arc<dyn rustls::time_provider::TimeProvider>,
}

impl Default for TlsBasis {
    fn default() -> Self {
        Self {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            time: Arc::new(rustls::time_provider::DefaultTimeProvider),
        }
    }
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(STREAMS_PER_CONNECTION_MAX.into())
        .keep_alive_interval(Some(KEEP_ALIVE_INTERVAL))
        .max_idle_timeout(CONNECTION_IDLE_TIMEOUT.try_into().ok());
    Arc::new(transport)
}

impl NodeTls {
    fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        let ca = CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).map_err(cert_error)?;
        roots.add(ca).map_err(cert_error)?;
        Ok(roots)
    }

    fn chain(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let cert = CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(cert_error)?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(cert_error)?;
        Ok((vec![cert], key))
    }

    /// Accepts only peers with a certificate from the cluster CA.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        self.server_config_on(&TlsBasis::default())
    }

    /// [`Self::server_config`] on the given basis.
    pub fn server_config_on(&self, basis: &TlsBasis) -> Result<quinn::ServerConfig, TlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            Arc::clone(&basis.provider),
        )
        .build()
        .map_err(config_error)?;
        let (chain, key) = self.chain()?;
        let mut tls = rustls::ServerConfig::builder_with_details(
            Arc::clone(&basis.provider),
            Arc::clone(&basis.time),
        )
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(config_error)?;
        tls.alpn_protocols = vec![ALPN.to_vec(), DATA_ALPN.to_vec()];
        let crypto = QuicServerConfig::try_from(tls).map_err(config_error)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(transport());
        Ok(config)
    }

    /// Presents this node's certificate and trusts only the cluster CA.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        self.client_config_on(ALPN, &TlsBasis::default())
    }

    /// The same, for the object traffic's connections.
    pub fn data_client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        self.client_config_on(DATA_ALPN, &TlsBasis::default())
    }

    /// A client configuration for `alpn` ([`ALPN`] or [`DATA_ALPN`]) on the given basis.
    pub fn client_config_on(
        &self,
        alpn: &[u8],
        basis: &TlsBasis,
    ) -> Result<quinn::ClientConfig, TlsError> {
        let (chain, key) = self.chain()?;
        let mut tls = rustls::ClientConfig::builder_with_details(
            Arc::clone(&basis.provider),
            Arc::clone(&basis.time),
        )
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_root_certificates(self.roots()?)
        .with_client_auth_cert(chain, key)
        .map_err(config_error)?;
        tls.alpn_protocols = vec![alpn.to_vec()];
        let crypto = QuicClientConfig::try_from(tls).map_err(config_error)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(transport());
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and node key as clusters founded before Ed25519 have them (ECDSA P-256).
    fn ecdsa_ca() -> ClusterCa {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let cert = params.self_signed(&key).unwrap();
        ClusterCa::load(&cert.pem(), &key.serialize_pem()).unwrap()
    }

    fn ecdsa_node(ca: &ClusterCa, id: NodeId) -> NodeTls {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = CertificateParams::new(vec!["letl-node".to_string()]).unwrap();
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        NodeTls {
            ca_pem: ca.cert_pem().to_string(),
            cert_pem: ca.sign_node(&csr, id).unwrap(),
            key_pem: key.serialize_pem(),
        }
    }

    /// One DER element at the start of `der`: its tag, its header's length and its content's.
    fn element(der: &[u8]) -> (u8, usize, usize) {
        match der[1] {
            short @ 0..0x80 => (der[0], 2, usize::from(short)),
            long => {
                let bytes = usize::from(long & 0x7f);
                let len = der[2..2 + bytes]
                    .iter()
                    .fold(0, |len, b| len << 8 | usize::from(*b));
                (der[0], 2 + bytes, len)
            }
        }
    }

    /// A certificate's serial number as encoded (Certificate, TBSCertificate, [0] version,
    /// then the INTEGER).
    fn serial(cert_pem: &str) -> Vec<u8> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let mut at = 0;
        for _ in 0..2 {
            let (tag, header, _) = element(&der[at..]);
            assert_eq!(tag, 0x30, "a SEQUENCE");
            at += header;
        }
        let (tag, header, len) = element(&der[at..]);
        assert_eq!(tag, 0xa0, "the version");
        at += header + len;
        let (tag, header, len) = element(&der[at..]);
        assert_eq!(tag, 0x02, "an INTEGER");
        der[at + header..at + header + len].to_vec()
    }

    #[test]
    fn a_request_signed_twice_gives_the_same_certificate_with_a_full_length_serial() {
        let ca = ClusterCa::generate("test").unwrap();
        let (_key, csr) = node_key_and_request().unwrap();
        let cert = ca.sign_node(&csr, 2).unwrap();
        assert_eq!(cert, ca.sign_node(&csr, 2).unwrap());
        for pem in [cert.as_str(), ca.cert_pem()] {
            let serial = serial(pem);
            assert_eq!(serial.len(), SERIAL_BYTES);
            assert!((0x40..0x80).contains(&serial[0]), "{serial:?}");
        }
        let (_, other) = node_key_and_request().unwrap();
        assert_ne!(serial(&cert), serial(&ca.sign_node(&other, 2).unwrap()));
    }

    /// Connects `client` to `server` over loopback QUIC and returns the peer's certificate.
    async fn handshake(server: &NodeTls, server_id: NodeId, client: &NodeTls) -> Vec<u8> {
        let local = "127.0.0.1:0".parse().unwrap();
        let listener = quinn::Endpoint::server(server.server_config().unwrap(), local).unwrap();
        let addr = listener.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let connection = listener.accept().await.unwrap().await.unwrap();
            let certs = connection.peer_identity().unwrap();
            let certs = certs.downcast::<Vec<CertificateDer<'static>>>().unwrap();
            certs[0].to_vec()
        });
        let mut dialer = quinn::Endpoint::client(local).unwrap();
        dialer.set_default_client_config(client.client_config().unwrap());
        let connection = dialer
            .connect(addr, &server_name(server_id))
            .unwrap()
            .await
            .unwrap();
        let seen = accept.await.unwrap();
        connection.close(0u32.into(), b"done");
        seen
    }

    #[tokio::test]
    async fn new_ed25519_nodes_and_older_ecdsa_nodes_accept_each_other() {
        let ca = ecdsa_ca();
        let old = ecdsa_node(&ca, 1);
        let new = ca.issue_node(2).unwrap();
        assert!(KeyPair::from_pem(&new.key_pem).unwrap().algorithm() == &rcgen::PKCS_ED25519);
        let client_cert = |tls: &NodeTls| {
            CertificateDer::from_pem_slice(tls.cert_pem.as_bytes())
                .unwrap()
                .to_vec()
        };
        assert_eq!(handshake(&old, 1, &new).await, client_cert(&new));
        assert_eq!(handshake(&new, 2, &old).await, client_cert(&old));
    }
}

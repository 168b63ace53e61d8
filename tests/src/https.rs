//! A real HTTPS file server for tests: Python's `http.server` behind TLS, with a certificate
//! signed by a throw-away CA made here, on 127.0.0.1. The node trusts that CA through
//! `SSL_CERT_FILE`, as a user with a private CA would set it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// Longest wait for the server to announce its port.
const HTTPS_START_TIMEOUT: Duration = Duration::from_secs(20);

const SERVER: &str = r#"
import functools, http.server, ssl, sys
port_file, directory, cert, key = sys.argv[1:]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
import os; os.rename(port_file + ".tmp", port_file)
server.serve_forever()
"#;

/// A running HTTPS server serving the files of `root`.
#[derive(Debug)]
pub struct HttpsServer {
    /// `https://127.0.0.1:<port>`
    pub base: String,
    /// Files under here are served at `<base>/<relative path>`.
    pub root: PathBuf,
    /// The PEM of the CA that signed the server's certificate.
    pub ca_file: PathBuf,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl HttpsServer {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("files");
        std::fs::create_dir_all(&root).expect("files dir");
        let (ca_pem, cert_pem, key_pem) = certificates();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write pem");
            path
        };
        let ca_file = write("ca.pem", &ca_pem);
        let cert = write("cert.pem", &cert_pem);
        let key = write("key.pem", &key_pem);
        let port_file = dir.path().join("port");
        let child = Command::new("python3")
            .arg("-c")
            .arg(SERVER)
            .args([&port_file, &root, &cert, &key])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 for the test https server");
        let port = wait_for_port(&port_file);
        Self {
            base: format!("https://127.0.0.1:{port}"),
            root,
            ca_file,
            dir,
            child,
        }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_port(port_file: &Path) -> u16 {
    let deadline = Instant::now() + HTTPS_START_TIMEOUT;
    loop {
        if let Ok(text) = std::fs::read_to_string(port_file)
            && let Ok(port) = text.trim().parse()
        {
            return port;
        }
        assert!(
            Instant::now() < deadline,
            "the test https server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A CA, and a server certificate for 127.0.0.1 signed by it: (CA PEM, cert PEM, key PEM).
pub fn certificates() -> (String, String, String) {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).expect("ca certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("server params");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    (ca.pem(), cert.pem(), key.serialize_pem())
}

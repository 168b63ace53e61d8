//! The seed's LETL routes: `POST /cortx/write`, `POST /daos/ssd/write`, `POST /tiering/D-C`,
//! `POST /tiering/C-D`, each with `{destination_uri, source_uri, request_id}` (`source` is
//! accepted for `source_uri`, as the seed's own example writes it).
//!
//! A write route reads its source (a tier URI, `file:///path`, `http(s)://` URL, or a key of the
//! node's default source directory) and stores it on the route's tier at
//! `destination_uri/<basename of the source>`. A tiering route moves `source_uri` from one tier
//! to `destination_uri` on the other, exactly once (see `moves`). Request ids and destinations
//! are unique for ever, across the cluster: a reused one gets 409 and changes nothing. They are
//! reserved through the control plane (raft), so they are durable and every node sees them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::places::Places;
use axum::http::StatusCode;
use futures_util::TryStreamExt;
use letl_raft::cluster::Cluster;
use letl_raft::{Claim, Command, Held, Response};
use letl_storage::{
    ByteStream, Clock, ObjectKey, ObjectUri, S3Settings, S3Tier, StorageError, TierBackend,
    TierName, check_request_id, read_blocks,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::ApiError;
use crate::moves::Mover;

/// Longest LETL request id (the mover's ids add a 5-byte `letl:` prefix).
const LETL_REQUEST_ID_BYTES_MAX: usize = 120;
/// Reservation space of the LETL routes' request ids.
const REQUEST_SPACE: &str = "letl-request";
/// Reservation space of the LETL routes' destinations.
const DESTINATION_SPACE: &str = "letl-destination";

/// What a LETL route reserved, as the control plane records it with the reservation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Reservation {
    request_id: String,
    route: String,
    source: String,
    destination: String,
    node: u64,
    reserved_ms: u64,
    /// This attempt's own name: a request id that comes again is another attempt, and finds
    /// the names held.
    attempt: String,
}

impl Reservation {
    fn claims(&self) -> Vec<Claim> {
        vec![
            Claim::new(REQUEST_SPACE, self.request_id.clone()),
            Claim::new(DESTINATION_SPACE, self.destination.clone()),
        ]
    }
}

/// Body of every LETL route.
#[derive(Clone, Debug, Deserialize)]
pub struct LetlRequest {
    pub destination_uri: String,
    #[serde(alias = "source")]
    pub source_uri: String,
    pub request_id: String,
}

/// What a LETL route wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LetlResponse {
    pub request_id: String,
    pub source: String,
    pub uri: String,
    pub size: u64,
    pub hash: String,
}

/// The LETL routes' state: reservations and where sources come from.
#[derive(Debug)]
pub struct Letl {
    places: Places,
    mover: Mover,
    control: Cluster,
    clock: Arc<dyn Clock>,
    /// Where a `source_uri` without a scheme is read from.
    source_dir: Option<PathBuf>,
    /// The endpoint of `s3://` sources (and its default bucket, if not empty).
    source_s3: Option<S3Settings>,
    /// One client per source bucket, made on first use.
    source_buckets: std::sync::Mutex<BTreeMap<String, Arc<S3Tier>>>,
    /// For http(s) sources; the reason when it could not be built (no readable root store).
    http: Result<reqwest::Client, String>,
}

fn conflict(message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, message)
}

/// The 409 for a name someone else reserved, saying who.
fn taken(claim: &Claim, held: &Held, destination: &ObjectUri) -> ApiError {
    let first: Option<Reservation> = serde_json::from_str(&held.record).ok();
    match (claim.space.as_str(), first) {
        (REQUEST_SPACE, Some(first)) => conflict(format!(
            "request_id `{}` was already used (by {} writing {})",
            claim.key, first.route, first.destination
        )),
        (REQUEST_SPACE, None) => conflict(format!("request_id `{}` was already used", claim.key)),
        (_, Some(first)) => conflict(format!(
            "destination_uri {destination} was already written (by request `{}`)",
            first.request_id
        )),
        (_, None) => conflict(format!("destination_uri {destination} was already written")),
    }
}

impl Letl {
    pub fn new(
        places: Places,
        mover: Mover,
        control: Cluster,
        clock: Arc<dyn Clock>,
        source_dir: Option<PathBuf>,
        source_s3: Option<S3Settings>,
    ) -> Self {
        Self {
            places,
            mover,
            control,
            clock,
            source_dir,
            source_s3,
            source_buckets: std::sync::Mutex::new(BTreeMap::new()),
            http: source_http_client(),
        }
    }

    /// `POST /cortx/write` and `POST /daos/ssd/write`.
    pub async fn write(
        &self,
        route: &str,
        tier: &str,
        request: LetlRequest,
    ) -> Result<LetlResponse, ApiError> {
        check_letl_id(&request.request_id)?;
        let tier = TierName::new(tier)?;
        let basename = source_basename(&request.source_uri)?;
        let key = ObjectKey::new(format!(
            "{}/{basename}",
            request.destination_uri.trim_end_matches('/')
        ))
        .map_err(|e| ApiError::bad_request(format!("destination_uri: {e}")))?;
        let destination = ObjectUri::new(tier, key);
        let reservation = self.reserve(route, &request, &destination).await?;
        let written = async {
            let (body, size) = self.open_source(&request.source_uri).await?;
            Ok::<_, ApiError>(self.places.put(&destination, body, size, None).await?)
        }
        .await;
        match written {
            Ok(meta) => {
                info!(route, request_id = %request.request_id, source = %request.source_uri, %destination, size = meta.size, "letl write done");
                Ok(LetlResponse {
                    request_id: request.request_id,
                    source: request.source_uri,
                    uri: destination.to_string(),
                    size: meta.size,
                    hash: meta.hash.to_string(),
                })
            }
            Err(e) => {
                self.release(&reservation).await;
                Err(e)
            }
        }
    }

    /// `POST /tiering/D-C` and `POST /tiering/C-D`: moves `source_uri` on `from` to
    /// `destination_uri` on `to`.
    pub async fn tier(
        &self,
        route: &str,
        from: &str,
        to: &str,
        request: LetlRequest,
    ) -> Result<LetlResponse, ApiError> {
        check_letl_id(&request.request_id)?;
        let source = ObjectUri::new(
            TierName::new(from)?,
            ObjectKey::new(request.source_uri.clone())
                .map_err(|e| ApiError::bad_request(format!("source_uri: {e}")))?,
        );
        let destination = ObjectUri::new(
            TierName::new(to)?,
            ObjectKey::new(request.destination_uri.clone())
                .map_err(|e| ApiError::bad_request(format!("destination_uri: {e}")))?,
        );
        let reservation = self.reserve(route, &request, &destination).await?;
        let moved = self
            .mover
            .transfer(
                source.clone(),
                destination,
                true,
                Some(format!("letl:{}", request.request_id)),
            )
            .await;
        match moved {
            Ok(done) => Ok(LetlResponse {
                request_id: request.request_id,
                source: source.to_string(),
                uri: done.destination.to_string(),
                size: done.meta.size,
                hash: done.meta.hash.to_string(),
            }),
            Err(e) => {
                self.release(&reservation).await;
                Err(e)
            }
        }
    }

    /// Reserves the request id and the destination across the cluster (both or neither), or
    /// says which was taken. An object already at the destination counts as taken too.
    async fn reserve(
        &self,
        route: &str,
        request: &LetlRequest,
        destination: &ObjectUri,
    ) -> Result<Reservation, ApiError> {
        let now_ms = self.clock.now_ms();
        let reservation = Reservation {
            request_id: request.request_id.clone(),
            route: route.to_string(),
            source: request.source_uri.clone(),
            destination: destination.to_string(),
            node: self.control.node_id(),
            reserved_ms: now_ms,
            attempt: format!(
                "{}:{}",
                self.control.node_id(),
                crate::moves::new_request_id(now_ms)
            ),
        };
        let record = serde_json::to_string(&reservation)
            .map_err(|e| ApiError::internal(format!("encode a reservation: {e}")))?;
        let reserve = Command::Reserve {
            claims: reservation.claims(),
            holder: reservation.attempt.clone(),
            record,
        };
        let answer = match self.control.write(reserve).await {
            Ok(answer) => answer,
            Err(e) => {
                // It may have been applied all the same: give back whatever it took (a
                // release after it in the log frees it; one before it finds nothing).
                self.release(&reservation).await;
                return Err(e.into());
            }
        };
        match answer {
            Response::Reserved => {}
            Response::Conflict { claim, held } => {
                return Err(taken(&claim, &held, destination));
            }
            other => {
                return Err(ApiError::internal(format!(
                    "unexpected control answer to a reservation: {other:?}"
                )));
            }
        }
        let looked = match self.places.check_tier(&destination.tier) {
            Ok(()) => match self.places.head(destination).await {
                Ok(_) => Ok(true),
                Err(StorageError::NotFound { .. }) => Ok(false),
                // Unknown (a holder down) is not "absent".
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let exists = match looked {
            Ok(exists) => exists,
            Err(e) => {
                self.release(&reservation).await;
                return Err(e.into());
            }
        };
        if exists {
            self.release(&reservation).await;
            return Err(conflict(format!(
                "destination_uri {destination} already holds an object"
            )));
        }
        Ok(reservation)
    }

    /// Gives back a reservation whose write failed, so the request can be retried. If the
    /// control plane cannot take it now, the names stay reserved (a retry then gets 409):
    /// nothing is written twice.
    async fn release(&self, reservation: &Reservation) {
        let release = Command::Release {
            claims: reservation.claims(),
            holder: reservation.attempt.clone(),
        };
        if let Err(e) = self.control.write(release).await {
            warn!(request_id = %reservation.request_id, error = %e, "could not release a failed request's reservation; its request id and destination stay taken");
        }
    }

    /// A stream of the source's bytes and its length when known.
    async fn open_source(&self, source: &str) -> Result<(ByteStream, Option<u64>), ApiError> {
        if let Some(path) = source.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(ApiError::bad_request(format!(
                    "source `{source}`: a file:// source needs an absolute path (file:///...)"
                )));
            }
            return open_file(Path::new(path), source).await;
        }
        if source.starts_with("http://") || source.starts_with("https://") {
            let http = self.http.as_ref().map_err(|reason| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("source `{source}`: this node has no http client: {reason}"),
                )
            })?;
            let response = http.get(source).send().await.map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("source `{source}`: {}", crate::error::error_chain(&e)),
                )
            })?;
            if !response.status().is_success() {
                return Err(ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    format!("source `{source}` answered {}", response.status()),
                ));
            }
            let size = response.content_length();
            let body: ByteStream = Box::pin(response.bytes_stream().map_err(std::io::Error::other));
            return Ok((letl_storage::idle_timeout(body, SOURCE_IDLE_TIMEOUT), size));
        }
        if let Some(rest) = source.strip_prefix("s3://") {
            let Some((bucket, key)) = rest.split_once('/') else {
                return Err(ApiError::bad_request(format!(
                    "source `{source}`: expected s3://bucket/key"
                )));
            };
            return self.open_s3(bucket, key, source).await;
        }
        if let Some((tier, _)) = source.split_once(":/")
            && TierName::new(tier).is_ok()
        {
            let uri = ObjectUri::parse(source)?;
            let (_, reader) = self.places.get(&uri).await?;
            return Ok((reader.body.into_stream(), Some(reader.size)));
        }
        let Some(dir) = &self.source_dir else {
            if let Some(settings) = &self.source_s3
                && !settings.bucket.is_empty()
            {
                return self.open_s3(&settings.bucket.clone(), source, source).await;
            }
            return Err(ApiError::bad_request(format!(
                "source `{source}` has no scheme and this node has no default source (set [source] dir, or endpoint and bucket, in the config)"
            )));
        };
        // Validated like a key, so it cannot climb out of the source directory.
        let key = ObjectKey::new(source)
            .map_err(|e| ApiError::bad_request(format!("source_uri: {e}")))?;
        let mut path = dir.clone();
        path.extend(key.segments());
        open_file(&path, source).await
    }
}

/// An http(s) source that sends nothing for this long fails the write (and frees its put).
const SOURCE_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);
/// Connecting to an http(s) source that does not answer fails after this long.
const SOURCE_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The client for `http://` and `https://` sources. https trusts the system's root
/// certificates; `SSL_CERT_FILE` or `SSL_CERT_DIR` in the node's environment replace them (a
/// private CA). A root store that cannot be read leaves https sources failing with the reason.
fn source_http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(SOURCE_CONNECT_TIMEOUT)
        .build()
        .map_err(|e| {
            let reason = crate::error::error_chain(&e);
            warn!(error = %reason, "no http client for http(s) sources");
            reason
        })
}

/// Most source buckets whose clients are kept.
const SOURCE_BUCKETS_MAX: usize = 64;

impl Letl {
    async fn open_s3(
        &self,
        bucket: &str,
        key: &str,
        source: &str,
    ) -> Result<(ByteStream, Option<u64>), ApiError> {
        let Some(settings) = &self.source_s3 else {
            return Err(ApiError::bad_request(format!(
                "source `{source}`: s3:// sources need [source] endpoint in the config"
            )));
        };
        let key =
            ObjectKey::new(key).map_err(|e| ApiError::bad_request(format!("source_uri: {e}")))?;
        let reader = {
            let tier = {
                let mut buckets = self
                    .source_buckets
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if buckets.len() >= SOURCE_BUCKETS_MAX && !buckets.contains_key(bucket) {
                    buckets.clear();
                }
                let tier = buckets
                    .entry(bucket.to_string())
                    .or_insert_with(|| Arc::new(S3Tier::source(settings, bucket)));
                Arc::clone(tier)
            };
            tier.get(&key).await
        };
        match reader {
            Ok(reader) => Ok((reader.body.into_stream(), Some(reader.size))),
            Err(StorageError::NotFound { .. }) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("source `{source}` does not exist"),
            )),
            Err(e) => Err(e.into()),
        }
    }
}

fn check_letl_id(id: &str) -> Result<(), ApiError> {
    check_request_id(id)?;
    if id.len() > LETL_REQUEST_ID_BYTES_MAX {
        return Err(StorageError::InvalidRequestId {
            id: id.chars().take(40).collect(),
            reason: format!("LETL request ids are at most {LETL_REQUEST_ID_BYTES_MAX} bytes"),
        }
        .into());
    }
    Ok(())
}

/// The last path segment of a source, which names the object a write route stores.
fn source_basename(source: &str) -> Result<String, ApiError> {
    let path = source.split_once("://").map_or(source, |(_, rest)| rest);
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let name = path
        .rsplit(['/', ':'])
        .find(|s| !s.is_empty())
        .unwrap_or("");
    if name.is_empty() || name == "." || name == ".." {
        return Err(ApiError::bad_request(format!(
            "source `{source}` names no object"
        )));
    }
    Ok(name.to_string())
}

async fn open_file(path: &Path, source: &str) -> Result<(ByteStream, Option<u64>), ApiError> {
    let path = path.to_path_buf();
    let opened = tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(&path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        Ok((file, meta.len()))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match opened {
        Ok((file, size)) => Ok((read_blocks(file), Some(size))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("source `{source}` does not exist"),
        )),
        Err(e) => Err(ApiError::bad_request(format!("source `{source}`: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basenames_of_sources() {
        for (source, name) in [
            ("project-19-276121/letlCovidSet/A1", "A1"),
            ("file:///data/x.fa", "x.fa"),
            ("http://host:80/a/b.gz?x=1", "b.gz"),
            ("ssd:/covid/NC_045512", "NC_045512"),
        ] {
            assert_eq!(source_basename(source).unwrap(), name);
        }
        assert!(
            source_basename("http://host/").is_ok(),
            "the host names the object"
        );
        assert!(source_basename("").is_err());
    }
}

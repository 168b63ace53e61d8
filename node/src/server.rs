//! The HTTP API: `/v1` (JSON metadata, raw streamed object bodies), `/metrics`, `/healthz`.
//! Every route but `/healthz` needs `Authorization: Bearer <admin token>`.

use std::io;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::TryStreamExt;
use letl_storage::{KeyPrefix, LIST_PAGE_ENTRIES_MAX, ObjectKey, ObjectUri, TierName};
use serde::Deserialize;

use crate::api::{
    CacheRecordInfo, HASH_HEADER, JobInfo, JobsResponse, LIST_PAGE_DEFAULT, ListResponse, MoveInfo,
    MoveJobInfo, MoveJobRequest, MoveJobsResponse, MovesResponse, ObjectInfo, PipelineInfo,
    PipelinesResponse, RunRequest, TierInfo, TiersResponse, TransferRequest, TransferResponse,
    VERSION_HEADER,
};
use crate::error::ApiError;
use crate::letl::{Letl, LetlRequest, LetlResponse};
use crate::metrics::{self, Metrics};
use crate::move_jobs::MoveJobs;
use crate::service::ObjectService;

#[derive(Clone, Debug)]
pub struct AppState {
    pub service: ObjectService,
    pub letl: Arc<Letl>,
    pub jobs: MoveJobs,
    pub transforms: Arc<letl_actors::transform::TransformRegistry>,
    pub pipelines: crate::pipelines::Pipelines,
    pub stopper: Arc<crate::node::Stopper>,
    pub cluster: letl_raft::cluster::Cluster,
    pub rebalancer: crate::rebalance::Rebalancer,
    pub cache: letl_actors::cache::CacheHandle,
    pub cache_limits: letl_actors::cache::CacheLimits,
    pub token: Arc<str>,
    pub metrics: Arc<Metrics>,
}

pub fn router(state: AppState) -> Router {
    let authed = Router::new()
        .route("/v1/tiers", get(list_tiers))
        .route("/v1/objects/{tier}", get(list_objects))
        .route(
            "/v1/objects/{tier}/{*key}",
            get(get_object).put(put_object).delete(delete_object),
        )
        .route("/v1/stat/{tier}/{*key}", get(stat_object))
        .route("/v1/preflight/{tier}/{*key}", get(preflight_put))
        .route("/v1/copy", post(copy_object))
        .route("/v1/move", post(move_object))
        .route("/v1/moves", get(list_moves))
        .route("/v1/move-jobs", get(list_move_jobs).post(start_move_job))
        .route("/v1/move-jobs/{id}", get(get_move_job))
        .route("/v1/pipelines", get(list_pipelines).post(register_pipeline))
        .route("/v1/pipelines/{name}", get(show_pipeline))
        .route(
            "/v1/pipelines/{name}/mount",
            post(
                |s: State<AppState>, p: Result<Path<String>, PathRejection>| {
                    mount_pipeline(s, p, true)
                },
            ),
        )
        .route(
            "/v1/pipelines/{name}/unmount",
            post(
                |s: State<AppState>, p: Result<Path<String>, PathRejection>| {
                    mount_pipeline(s, p, false)
                },
            ),
        )
        .route("/v1/pipelines/{name}/run", post(run_pipeline))
        .route("/v1/pipelines/{name}/stats", get(pipeline_stats))
        .route("/v1/jobs", get(list_jobs))
        .route("/v1/jobs/{id}", get(show_job))
        .route("/v1/jobs/{id}/cancel", post(cancel_job))
        .route("/v1/jobs/{id}/retry", post(retry_job))
        .route("/v1/node/shutdown", post(shutdown_node))
        .route("/v1/cluster/status", get(cluster_status))
        .route("/v1/cluster/rebalance", get(cluster_rebalance))
        .route("/v1/cluster/token", post(cluster_token))
        .route("/v1/cluster/leave", post(cluster_leave))
        .route("/v1/cache", post(cache_put))
        .route("/v1/cache/{id}", get(cache_get).delete(cache_remove))
        .route("/metrics", get(render_metrics))
        // The seed's LETL routes, as it named them.
        .route(
            "/cortx/write",
            post(|State(s): State<AppState>, b: Bytes| letl_write(s, b, "/cortx/write", "cortx")),
        )
        .route(
            "/daos/ssd/write",
            post(|State(s): State<AppState>, b: Bytes| letl_write(s, b, "/daos/ssd/write", "daos")),
        )
        .route(
            "/tiering/D-C",
            post(|State(s): State<AppState>, b: Bytes| {
                letl_tiering(s, b, "/tiering/D-C", "daos", "cortx")
            }),
        )
        .route(
            "/tiering/C-D",
            post(|State(s): State<AppState>, b: Bytes| {
                letl_tiering(s, b, "/tiering/C-D", "cortx", "daos")
            }),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        // A joining node has no admin token: its join token is checked instead.
        .route("/v1/cluster/join", post(cluster_join))
        .merge(authed)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such route; the API lives under /v1",
            )
        })
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state.metrics),
            metrics::record,
        ))
        .with_state(state)
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        return ApiError::unauthorized("missing Authorization: Bearer <token> header (the token is in the node's data dir, admin.token)").into_response();
    };
    let presented = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !constant_time_eq(presented.trim().as_bytes(), state.token.as_bytes()) {
        return ApiError::unauthorized("invalid bearer token").into_response();
    }
    next.run(request).await
}

/// Compares without an early exit, so response time says nothing about how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn object_uri(path: Result<Path<(String, String)>, PathRejection>) -> Result<ObjectUri, ApiError> {
    let Path((tier, key)) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    ObjectUri::parse(&format!("{tier}:/{key}")).map_err(ApiError::from)
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Content-Length is not a number"))
        })
        .transpose()
}

/// A refused body is read (and dropped) up to this many bytes before the error is sent, so that
/// a client still writing it reads the error instead of a reset connection. Larger bodies are
/// not read: clients ask `/v1/preflight` first (the CLI does), or send `Expect: 100-continue`.
const REFUSED_BODY_DRAIN_BYTES_MAX: u64 = 16 << 20;
/// Longest time spent draining a refused body.
const REFUSED_BODY_DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

async fn refuse_body(body: Body, declared: Option<u64>, error: ApiError) -> ApiError {
    if declared.is_some_and(|len| len > REFUSED_BODY_DRAIN_BYTES_MAX) {
        return error;
    }
    let mut stream = body.into_data_stream();
    let mut drained = 0u64;
    let _ = tokio::time::timeout(REFUSED_BODY_DRAIN_TIMEOUT, async {
        while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut stream).await {
            drained += chunk.len() as u64;
            if drained > REFUSED_BODY_DRAIN_BYTES_MAX {
                break;
            }
        }
    })
    .await;
    error
}

/// An upload that sends nothing for this long fails, freeing its key and its put slot.
const BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, Deserialize)]
struct PreflightQuery {
    size: Option<u64>,
}

/// `GET /v1/preflight/{tier}/{key}?size=N`: 204 if such a put would be accepted now, else the
/// error it would get. Nothing changes.
async fn preflight_put(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<PreflightQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let uri = object_uri(path)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    state.service.check_put(&uri, query.size).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn put_object(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<ObjectInfo>), ApiError> {
    let declared = match content_length(&headers) {
        Ok(declared) => declared,
        Err(e) => return Err(refuse_body(body, None, e).await),
    };
    let checked = match object_uri(path) {
        Ok(uri) => state.service.check_put(&uri, declared).await.map(|()| uri),
        Err(e) => Err(e),
    };
    let uri = match checked {
        Ok(uri) => uri,
        Err(e) => return Err(refuse_body(body, declared, e).await),
    };
    let stream = letl_storage::idle_timeout(
        Box::pin(body.into_data_stream().map_err(io::Error::other)),
        BODY_IDLE_TIMEOUT,
    );
    let meta = state.service.put(&uri, stream, declared).await?;
    Ok((StatusCode::CREATED, Json(ObjectInfo::new(&uri, &meta))))
}

#[derive(Debug, Deserialize)]
struct GetQuery {
    /// Apply this transform on the way out; nothing is stored.
    transform: Option<String>,
}

async fn get_object(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<GetQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let uri = object_uri(path)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    if let Some(kind) = query.transform {
        let transform = state
            .transforms
            .build_kind(&kind)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let output = state
            .service
            .places()
            .get_transformed(&uri, &kind, transform)
            .await?;
        // No length or hash is known before the end; an error mid-way cuts the response, so
        // the client never takes a short result for a whole one.
        let mut response = Body::from_stream(output).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        return Ok(response);
    }
    let (meta, reader) = state.service.get(&uri).await?;
    let mut response = Body::from_stream(reader.body.into_stream()).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(meta.size));
    let hash = meta.hash.to_string();
    if let Ok(value) = HeaderValue::from_str(&hash) {
        headers.insert(HASH_HEADER, value);
    }
    if let Ok(value) = HeaderValue::from_str(&format!("\"{hash}\"")) {
        headers.insert(header::ETAG, value);
    }
    headers.insert(VERSION_HEADER, HeaderValue::from(meta.version));
    Ok(response)
}

async fn stat_object(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<ObjectInfo>, ApiError> {
    let uri = object_uri(path)?;
    let meta = state.service.head(&uri).await?;
    let mut info = ObjectInfo::new(&uri, &meta);
    // Provenance describes this object only while its bytes are what was produced. The
    // node that ran the producing pipeline part keeps it: here, or another node.
    let hash = meta.hash.to_string();
    info.provenance = state
        .pipelines
        .provenance_of(&uri.to_string())?
        .filter(|p| p.output_hash == hash);
    if info.provenance.is_none() {
        info.provenance = state
            .service
            .places()
            .provenance_elsewhere(&uri.to_string())
            .await
            .iter()
            .filter_map(|json| serde_json::from_str::<crate::pipelines::io::Provenance>(json).ok())
            .find(|p| p.output_hash == hash);
    }
    Ok(Json(info))
}

async fn delete_object(
    State(state): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<ObjectInfo>, ApiError> {
    let uri = object_uri(path)?;
    let meta = state.service.delete(&uri).await?;
    Ok(Json(ObjectInfo::new(&uri, &meta)))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
    start_after: Option<String>,
    limit: Option<usize>,
}

async fn list_objects(
    State(state): State<AppState>,
    tier: Result<Path<String>, PathRejection>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ListResponse>, ApiError> {
    let Path(tier) = tier.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let tier = TierName::new(tier)?;
    let prefix = KeyPrefix::new(query.prefix)?;
    let start_after = query.start_after.map(ObjectKey::new).transpose()?;
    let limit = query.limit.unwrap_or(LIST_PAGE_DEFAULT);
    if limit == 0 || limit > LIST_PAGE_ENTRIES_MAX {
        return Err(ApiError::bad_request(format!(
            "limit must be 1 to {LIST_PAGE_ENTRIES_MAX}"
        )));
    }
    let page = state
        .service
        .list(&tier, prefix, start_after, limit)
        .await?;
    let next_start_after = (page.entries.len() == limit)
        .then(|| page.entries.last().map(|(k, _)| k.to_string()))
        .flatten();
    let objects = page
        .entries
        .into_iter()
        .map(|(key, meta)| ObjectInfo::new(&ObjectUri::new(tier.clone(), key), &meta))
        .collect();
    Ok(Json(ListResponse {
        objects,
        next_start_after,
        unreachable: page.unreachable,
    }))
}

/// Reservation space of copies' and moves' request ids.
const TRANSFER_SPACE: &str = "transfer-request";
/// Reservation space of move jobs' request ids.
const MOVE_JOB_SPACE: &str = "move-job-request";

/// Gives back a request id this node claimed when the request failed before the node kept
/// any record of it (bad paths, a missing source), so it can be used again through any node.
async fn release_request_id(state: &AppState, space: &str, id: &str) {
    let release = letl_raft::Command::Release {
        claims: vec![letl_raft::Claim::new(space, id)],
        holder: format!("node-{}", state.cluster.node_id()),
    };
    if let Err(e) = state.cluster.write(release).await {
        tracing::warn!(request_id = id, error = %e, "could not give back the request id of a failed request; it stays this node's");
    }
}

/// Takes a client's request id for this node across the cluster: the same id through another
/// node is refused (409, naming the node), through this one it finds this node's own record
/// of it.
async fn claim_request_id(
    state: &AppState,
    space: &str,
    request_id: Option<&str>,
    what: String,
) -> Result<(), ApiError> {
    let Some(id) = request_id else {
        return Ok(());
    };
    letl_storage::check_request_id(id)?;
    let node = state.cluster.node_id();
    let answer = state
        .cluster
        .write(letl_raft::Command::Reserve {
            claims: vec![letl_raft::Claim::new(space, id)],
            holder: format!("node-{node}"),
            record: what,
        })
        .await?;
    match answer {
        letl_raft::Response::Reserved => Ok(()),
        letl_raft::Response::Conflict { held, .. } => Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "request id `{id}` was used through {} for {}",
                held.holder.replace('-', " "),
                held.record
            ),
        )),
        other => Err(ApiError::internal(format!(
            "unexpected control answer to a request id claim: {other:?}"
        ))),
    }
}

/// `copy SOURCE -> DESTINATION` or `move ...`: what a request id was used for.
fn transfer_text(remove_source: bool, source: &str, destination: &str) -> String {
    let verb = if remove_source { "move" } else { "copy" };
    format!("{verb} {source} -> {destination}")
}

async fn transfer(
    state: AppState,
    request: Result<Json<TransferRequest>, JsonRejection>,
    remove_source: bool,
) -> Result<Json<TransferResponse>, ApiError> {
    let Json(request) = request.map_err(|e| ApiError::bad_request(e.body_text()))?;
    // Detached: a client that hangs up cannot leave its request id claimed and unused.
    detached(async move {
        let id = request.request_id.clone();
        claim_request_id(
            &state,
            TRANSFER_SPACE,
            id.as_deref(),
            transfer_text(remove_source, &request.source, &request.destination),
        )
        .await?;
        let done = state
            .service
            .transfer(
                &request.source,
                &request.destination,
                remove_source,
                request.request_id,
            )
            .await;
        if done.is_err()
            && let Some(id) = &id
            && matches!(state.service.mover().record(id), Ok(None))
        {
            release_request_id(&state, TRANSFER_SPACE, id).await;
        }
        let done = done?;
        Ok(TransferResponse {
            request_id: done.request_id,
            object: ObjectInfo::new(&done.destination, &done.meta),
        })
    })
    .await
}

async fn copy_object(
    State(state): State<AppState>,
    request: Result<Json<TransferRequest>, JsonRejection>,
) -> Result<Json<TransferResponse>, ApiError> {
    transfer(state, request, false).await
}

async fn move_object(
    State(state): State<AppState>,
    request: Result<Json<TransferRequest>, JsonRejection>,
) -> Result<Json<TransferResponse>, ApiError> {
    transfer(state, request, true).await
}

/// Most transfers `GET /v1/moves` returns (the most recent).
const MOVES_LISTED_MAX: usize = 1_000;

async fn list_moves(State(state): State<AppState>) -> Result<Json<MovesResponse>, ApiError> {
    let records = state.service.mover().records()?;
    let moves = records
        .iter()
        .take(MOVES_LISTED_MAX)
        .map(MoveInfo::from)
        .collect();
    Ok(Json(MovesResponse { moves }))
}

/// Most pipeline jobs `GET /v1/jobs` returns (the most recent).
const JOBS_LISTED_MAX: usize = 1_000;

fn path_name(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(name)
}

/// `POST /v1/pipelines`: the body is the spec, TOML or JSON.
async fn register_pipeline(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<PipelineInfo>, ApiError> {
    let text = std::str::from_utf8(&body).map_err(|_| {
        ApiError::bad_request("the pipeline spec must be UTF-8 text (TOML or JSON)")
    })?;
    let (name, registered) = state.pipelines.register(text).await?;
    Ok(Json(PipelineInfo::new(&name, &registered)))
}

async fn list_pipelines(
    State(state): State<AppState>,
) -> Result<Json<PipelinesResponse>, ApiError> {
    let pipelines = state
        .pipelines
        .list()
        .await?
        .iter()
        .map(|(name, registered)| PipelineInfo::new(name, registered))
        .collect();
    Ok(Json(PipelinesResponse { pipelines }))
}

async fn show_pipeline(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<PipelineInfo>, ApiError> {
    let name = path_name(path)?;
    Ok(Json(PipelineInfo::new(
        &name,
        &state.pipelines.get(&name).await?,
    )))
}

async fn mount_pipeline(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    mounted: bool,
) -> Result<Json<PipelineInfo>, ApiError> {
    let name = path_name(path)?;
    let registered = state.pipelines.set_mounted(&name, mounted).await?;
    Ok(Json(PipelineInfo::new(&name, &registered)))
}

async fn run_pipeline(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Json<JobInfo>, ApiError> {
    let name = path_name(path)?;
    let request: RunRequest = if body.is_empty() {
        RunRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(format!("the body must be JSON {{\"request_id\"}}: {e}"))
        })?
    };
    let job = state.pipelines.run(&name, request.request_id).await?;
    Ok(Json(JobInfo::new(&job, now_ms())))
}

async fn pipeline_stats(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<crate::pipelines::PipelineStats>, ApiError> {
    let name = path_name(path)?;
    Ok(Json(state.pipelines.stats(&name).await?))
}

#[derive(Debug, Deserialize)]
struct JobsQuery {
    pipeline: Option<String>,
}

async fn list_jobs(
    State(state): State<AppState>,
    query: Result<Query<JobsQuery>, QueryRejection>,
) -> Result<Json<JobsResponse>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let now = now_ms();
    let jobs = state
        .pipelines
        .jobs(query.pipeline.as_deref())
        .await?
        .iter()
        .take(JOBS_LISTED_MAX)
        .map(|job| JobInfo::new(job, now))
        .collect();
    Ok(Json(JobsResponse { jobs }))
}

/// Longest `wait_ms` of `GET /v1/jobs/{id}`; a longer one waits this long.
const JOB_WAIT_MS_MAX: u64 = 60_000;

#[derive(Debug, Deserialize)]
struct JobQuery {
    /// Answer once the job is no longer running, or after this many milliseconds.
    wait_ms: Option<u64>,
}

async fn show_job(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<JobQuery>, QueryRejection>,
) -> Result<Json<JobInfo>, ApiError> {
    let id = path_name(path)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let job = match query.wait_ms {
        Some(ms) => {
            let wait = std::time::Duration::from_millis(ms.min(JOB_WAIT_MS_MAX));
            state.pipelines.wait_job(&id, wait).await?
        }
        None => state.pipelines.job(&id).await?,
    };
    Ok(Json(JobInfo::new(&job, now_ms())))
}

async fn cancel_job(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<JobInfo>, ApiError> {
    let id = path_name(path)?;
    Ok(Json(JobInfo::new(
        &state.pipelines.cancel(&id).await?,
        now_ms(),
    )))
}

async fn retry_job(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<JobInfo>, ApiError> {
    let id = path_name(path)?;
    Ok(Json(JobInfo::new(
        &state.pipelines.retry(&id).await?,
        now_ms(),
    )))
}

#[derive(Debug, Deserialize)]
struct CachePutQuery {
    /// Time-to-live, e.g. `30s` (default: the cache's `expire_in`).
    expire_in: Option<String>,
}

/// `POST /v1/cache`: keeps the body as a new record; answers its id.
async fn cache_put(
    State(state): State<AppState>,
    query: Result<Query<CachePutQuery>, QueryRejection>,
    body: Body,
) -> Result<Json<CacheRecordInfo>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let expire_in = query
        .expire_in
        .map(|text| {
            humantime::parse_duration(&text)
                .ok()
                .filter(|d| !d.is_zero() && *d <= letl_actors::cache::CACHE_EXPIRE_IN_MAX)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "expire_in: `{text}` is not a duration like 30s or 5m, of at most 30 days"
                    ))
                })
        })
        .transpose()?;
    let max = state.cache_limits.max_bytes;
    let mut stream = letl_storage::idle_timeout(
        Box::pin(body.into_data_stream().map_err(io::Error::other)),
        BODY_IDLE_TIMEOUT,
    );
    let mut data = bytes::BytesMut::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        let chunk = chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        if (data.len() + chunk.len()) as u64 > max {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the record is more than the cache holds ({max} bytes)"),
            ));
        }
        data.extend_from_slice(&chunk);
    }
    let id = format!("c{}", &crate::moves::new_request_id(0)[2..]);
    let entry = state
        .cache
        .put(id.clone(), data.freeze(), expire_in)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(Json(CacheRecordInfo::from(&entry)))
}

fn cache_gone(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("cache record `{id}` expired or unknown"),
    )
}

async fn cache_get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_name(path)?;
    let (entry, data) = state
        .cache
        .get(&id)
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .ok_or_else(|| cache_gone(&id))?;
    let mut response = Body::from(data).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(value) = HeaderValue::from_str(&entry.hash.to_string()) {
        headers.insert(HASH_HEADER, value);
    }
    Ok(response)
}

async fn cache_remove(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = path_name(path)?;
    match state.cache.remove(&id).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(cache_gone(&id)),
        Err(e) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            e.to_string(),
        )),
    }
}

/// `POST /v1/node/shutdown`: the same clean stop as SIGTERM.
async fn shutdown_node(State(state): State<AppState>) -> StatusCode {
    tracing::info!("shutdown requested over the API");
    state.stopper.stop();
    StatusCode::ACCEPTED
}

fn now_ms() -> u64 {
    letl_storage::system_time_ms(std::time::SystemTime::now())
}

/// Most jobs `GET /v1/move-jobs` returns (the most recent).
const MOVE_JOBS_LISTED_MAX: usize = 1_000;

async fn start_move_job(
    State(state): State<AppState>,
    request: Result<Json<MoveJobRequest>, JsonRejection>,
) -> Result<Json<MoveJobInfo>, ApiError> {
    let Json(request) = request.map_err(|e| ApiError::bad_request(e.body_text()))?;
    detached(async move {
        let id = request.request_id.clone();
        claim_request_id(
            &state,
            MOVE_JOB_SPACE,
            id.as_deref(),
            transfer_text(request.remove_source, &request.source, &request.destination),
        )
        .await?;
        let job = state
            .jobs
            .start(
                &request.source,
                &request.destination,
                request.remove_source,
                request.request_id,
            )
            .await;
        if job.is_err()
            && let Some(id) = &id
            && matches!(state.jobs.find(id), Ok(None))
        {
            release_request_id(&state, MOVE_JOB_SPACE, id).await;
        }
        Ok(MoveJobInfo::from(&job?))
    })
    .await
}

async fn get_move_job(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<MoveJobInfo>, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(Json(MoveJobInfo::from(&state.jobs.get(&id)?)))
}

async fn list_move_jobs(State(state): State<AppState>) -> Result<Json<MoveJobsResponse>, ApiError> {
    let jobs = state
        .jobs
        .all()?
        .iter()
        .take(MOVE_JOBS_LISTED_MAX)
        .map(MoveJobInfo::from)
        .collect();
    Ok(Json(MoveJobsResponse { jobs }))
}

/// The LETL routes read their body as JSON whatever its Content-Type says: the seed's clients
/// (curl -d, FastAPI's docs page) do not all send `application/json`.
fn letl_body(body: Bytes) -> Result<LetlRequest, ApiError> {
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be JSON {{\"destination_uri\", \"source_uri\" (or \"source\"), \"request_id\"}}: {e}"
        ))
    })
}

/// `POST /cortx/write`, `POST /daos/ssd/write`: `route` stores its source on `tier`.
async fn letl_write(
    state: AppState,
    body: Bytes,
    route: &'static str,
    tier: &'static str,
) -> Result<Json<LetlResponse>, ApiError> {
    let request = letl_body(body)?;
    let letl = Arc::clone(&state.letl);
    detached(async move { letl.write(route, tier, request).await }).await
}

/// Runs a request's work apart from the request, so a client that goes away cannot cut it
/// between reserving and releasing what it holds.
async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T, ApiError>> + Send + 'static,
) -> Result<Json<T>, ApiError> {
    match tokio::spawn(work).await {
        Ok(outcome) => outcome.map(Json),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the request's task failed: {e}"),
        )),
    }
}

/// `POST /tiering/D-C`, `POST /tiering/C-D`: `route` moves from tier `from` to tier `to`.
async fn letl_tiering(
    state: AppState,
    body: Bytes,
    route: &'static str,
    from: &'static str,
    to: &'static str,
) -> Result<Json<LetlResponse>, ApiError> {
    let request = letl_body(body)?;
    let letl = Arc::clone(&state.letl);
    detached(async move { letl.tier(route, from, to, request).await }).await
}

async fn list_tiers(State(state): State<AppState>) -> Json<TiersResponse> {
    let tiers = state
        .service
        .tiers()
        .await
        .into_iter()
        .map(TierInfo::from)
        .collect();
    Json(TiersResponse { tiers })
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    let tiers: Vec<TierInfo> = state
        .service
        .tiers()
        .await
        .into_iter()
        .map(TierInfo::from)
        .collect();
    let mut text = state.metrics.render(&tiers);
    // This node's jobs only: summing every node's metrics counts each job once.
    let node = state.cluster.node_id();
    let pipelines: Vec<_> = state
        .pipelines
        .list_local()
        .into_iter()
        .filter_map(|(name, _)| {
            state
                .pipelines
                .figures(&name, Some(node))
                .ok()
                .map(|s| (name, s))
        })
        .collect();
    text.push_str(&metrics::render_pipelines(
        &pipelines,
        &state.pipelines.running_stats(),
    ));
    let (sent, received) = state.cluster.data_bytes();
    text.push_str(&metrics::render_data_plane(sent, received));
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
        .into_response()
}

async fn cluster_rebalance(State(state): State<AppState>) -> Json<crate::api::RebalanceResponse> {
    Json(state.service.places().rebalance().await)
}

async fn cluster_status(State(state): State<AppState>) -> Json<letl_raft::cluster::ClusterStatus> {
    Json(state.cluster.status())
}

async fn cluster_token(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<crate::api::TokenResponse>, ApiError> {
    let request: crate::api::TokenRequest = if body.is_empty() {
        crate::api::TokenRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("the body must be JSON {{\"ttl\"}}: {e}")))?
    };
    let ttl = match request.ttl.as_deref() {
        None => crate::api::DEFAULT_TOKEN_TTL,
        Some(text) => humantime::parse_duration(text)
            .map_err(|e| ApiError::bad_request(format!("ttl: `{text}`: {e}")))?,
    };
    let token = state.cluster.issue_token(ttl).await?;
    Ok(Json(crate::api::TokenResponse {
        token,
        expires_in_s: ttl.as_secs(),
    }))
}

async fn cluster_join(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<letl_raft::identity::JoinGrant>, ApiError> {
    let request: crate::api::JoinRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be JSON {{\"ca_fingerprint\", \"proof\", \"csr_pem\"}}: {e}"
        ))
    })?;
    let grant = state
        .cluster
        .admit(&request.ca_fingerprint, &request.proof, &request.csr_pem)
        .await?;
    Ok(Json(grant))
}

async fn cluster_leave(State(state): State<AppState>) -> Result<StatusCode, ApiError> {
    // The node is marked draining (nothing more is placed on it) and its objects go to the
    // nodes that stay; only then is it removed. A failed drain leaves it draining: run the
    // leave again.
    let drained = |e: String| ApiError {
        transient: true,
        ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e)
    };
    state.rebalancer.drain().await.map_err(drained)?;
    state.cluster.leave().await?;
    // A put that was on its way when the node was marked draining may have landed here.
    if let Err(e) = state.rebalancer.pass_now().await {
        tracing::error!(error = %e, "objects that reached this node during its leave stay on it");
    }
    tracing::info!(node = state.cluster.node_id(), "left the cluster; stopping");
    state.stopper.stop();
    Ok(StatusCode::NO_CONTENT)
}

//! The JSON shapes of the `/v1` HTTP API, shared by the server and the CLI.

use letl_actors::TierStatus;
use letl_storage::{MoveJobState, MoveRecord, MoveState, ObjectMeta, ObjectUri};

use crate::move_jobs::JobView;
use serde::{Deserialize, Serialize};

/// Most entries a list page returns unless asked for fewer.
pub const LIST_PAGE_DEFAULT: usize = 1_000;

/// An object as the API describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    pub uri: String,
    pub tier: String,
    pub key: String,
    pub size: u64,
    pub hash: String,
    pub version: u64,
    /// RFC 3339, UTC.
    pub created: String,
    pub modified: String,
    pub created_ms: u64,
    pub modified_ms: u64,
    /// For objects a pipeline produced: where from, by which pipeline version and job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<crate::pipelines::io::Provenance>,
}

impl ObjectInfo {
    pub fn new(uri: &ObjectUri, meta: &ObjectMeta) -> Self {
        Self {
            uri: uri.to_string(),
            tier: uri.tier.to_string(),
            key: uri.key.to_string(),
            size: meta.size,
            hash: meta.hash.to_string(),
            version: meta.version,
            created: rfc3339(meta.created_ms),
            modified: rfc3339(meta.modified_ms),
            created_ms: meta.created_ms,
            modified_ms: meta.modified_ms,
            provenance: None,
        }
    }
}

pub fn rfc3339(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(time).to_string()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResponse {
    pub objects: Vec<ObjectInfo>,
    /// Pass as `start_after` to get the next page; absent on the last page.
    pub next_start_after: Option<String>,
    /// Nodes whose objects are missing from this page (`node N: why`); absent when none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierInfo {
    pub name: String,
    pub kind: String,
    pub backend: String,
    /// A directory path or an endpoint URL.
    pub location: String,
    pub objects: u64,
    pub bytes: u64,
    /// Committed bytes plus bytes reserved by puts in progress.
    pub used_bytes: u64,
    pub capacity_bytes: Option<u64>,
    /// False when the tier's actor is down; `error` then says why and the counts are zero.
    pub up: bool,
    pub error: Option<String>,
}

impl From<TierStatus> for TierInfo {
    fn from(status: TierStatus) -> Self {
        match status {
            TierStatus::Up(stats) => {
                let d = stats.description;
                Self {
                    name: d.name.to_string(),
                    kind: d.kind,
                    backend: d.backend,
                    location: d.location,
                    objects: stats.objects,
                    bytes: stats.bytes,
                    used_bytes: stats.used_bytes,
                    capacity_bytes: d.capacity_bytes,
                    up: true,
                    error: None,
                }
            }
            TierStatus::Down {
                description: d,
                reason,
            } => Self {
                name: d.name.to_string(),
                kind: d.kind,
                backend: d.backend,
                location: d.location,
                objects: 0,
                bytes: 0,
                used_bytes: 0,
                capacity_bytes: d.capacity_bytes,
                up: false,
                error: Some(reason),
            },
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TiersResponse {
    pub tiers: Vec<TierInfo>,
}

/// Body of `POST /v1/copy` and `POST /v1/move`. A destination ending in `/` (or a bare
/// `tier:/`) keeps the source's basename.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRequest {
    pub source: String,
    pub destination: String,
    /// Makes the transfer idempotent: the same id again returns the first result. One is made
    /// up when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Answer of `POST /v1/copy` and `POST /v1/move`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferResponse {
    pub request_id: String,
    pub object: ObjectInfo,
}

/// A transfer as `GET /v1/moves` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveInfo {
    pub request_id: String,
    /// `mv` or `cp`.
    pub kind: String,
    pub source: String,
    pub destination: String,
    pub size: u64,
    pub hash: String,
    /// `copying`, `copied`, `done` or `failed`.
    pub state: String,
    pub error: Option<String>,
    pub started: String,
    pub updated: String,
}

impl From<&MoveRecord> for MoveInfo {
    fn from(r: &MoveRecord) -> Self {
        let (state, error) = match &r.state {
            MoveState::Copying => ("copying", None),
            MoveState::Copied => ("copied", None),
            MoveState::Done => ("done", None),
            MoveState::Failed(reason) => ("failed", Some(reason.clone())),
        };
        Self {
            request_id: r.request_id.clone(),
            kind: if r.remove_source { "mv" } else { "cp" }.to_string(),
            source: r.source.to_string(),
            destination: r.destination.to_string(),
            size: r.size,
            hash: r.hash.to_string(),
            state: state.to_string(),
            error,
            started: rfc3339(r.started_ms),
            updated: rfc3339(r.updated_ms),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovesResponse {
    /// Most recent first.
    pub moves: Vec<MoveInfo>,
}

/// Body of `POST /v1/move-jobs`: copy or move every object under `source` (a prefix ending in
/// `/`, or `tier:/`) to the same keys below `destination`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveJobRequest {
    pub source: String,
    pub destination: String,
    /// A move (true) or a copy (false, the default).
    #[serde(default)]
    pub remove_source: bool,
    /// The same id again returns the job, never a second run. One is made up when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// One object a job could not transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveJobFailureInfo {
    pub key: String,
    pub error: String,
}

/// A move job with its progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveJobInfo {
    pub request_id: String,
    /// `mv` or `cp`.
    pub kind: String,
    pub source: String,
    pub destination: String,
    /// `running`, `done` (with `objects_failed > 0`, some objects were not transferred), or
    /// `stalled` (its runner stopped on `error`; the same request again starts it again).
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub objects_total: u64,
    pub bytes_total: u64,
    pub objects_done: u64,
    pub bytes_done: u64,
    pub objects_failed: u64,
    /// The first failures, with their reasons.
    pub failures: Vec<MoveJobFailureInfo>,
    pub started: String,
    pub updated: String,
}

impl MoveJobInfo {
    pub fn is_running(&self) -> bool {
        self.state == "running"
    }

    /// Objects tried so far, done or failed.
    pub fn objects_tried_shown(&self) -> u64 {
        self.objects_done + self.objects_failed
    }
}

impl From<&JobView> for MoveJobInfo {
    fn from(view: &JobView) -> Self {
        let job = &view.job;
        Self {
            request_id: job.request_id.clone(),
            kind: if job.remove_source { "mv" } else { "cp" }.to_string(),
            source: job.source.to_string(),
            destination: job.destination.to_string(),
            state: match (&job.state, &view.stalled) {
                (MoveJobState::Done, _) => "done",
                (MoveJobState::Running, None) => "running",
                (MoveJobState::Running, Some(_)) => "stalled",
            }
            .to_string(),
            error: view.stalled.clone(),
            objects_total: job.objects_total,
            bytes_total: job.bytes_total,
            objects_done: job.objects_done,
            bytes_done: job.bytes_done,
            objects_failed: job.objects_failed,
            failures: job
                .failures
                .iter()
                .map(|f| MoveJobFailureInfo {
                    key: f.key.to_string(),
                    error: f.error.clone(),
                })
                .collect(),
            started: rfc3339(job.started_ms),
            updated: rfc3339(job.updated_ms),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveJobsResponse {
    /// Most recent first.
    pub jobs: Vec<MoveJobInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Response headers of an object get.
pub const HASH_HEADER: &str = "x-letl-hash";
pub const VERSION_HEADER: &str = "x-letl-version";

/// A registered pipeline as `GET /v1/pipelines` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PipelineInfo {
    pub name: String,
    pub version: u64,
    pub mounted: bool,
    pub registered: String,
    pub updated: String,
    /// The spec as registered (TOML and JSON specs both shown as JSON).
    pub spec: serde_json::Value,
}

impl PipelineInfo {
    pub fn new(name: &str, registered: &crate::pipelines::Registered) -> Self {
        Self {
            name: name.to_string(),
            version: registered.version,
            mounted: registered.mounted,
            registered: rfc3339(registered.registered_ms),
            updated: rfc3339(registered.updated_ms),
            spec: serde_json::from_str(&registered.spec_json).unwrap_or_default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PipelinesResponse {
    pub pipelines: Vec<PipelineInfo>,
}

/// Body of `POST /v1/pipelines/{name}/run` (optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// An object a job could not process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterInfo {
    pub uri: String,
    pub stage: String,
    pub error: String,
}

/// A pipeline job with its figures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: String,
    /// The node that runs it.
    #[serde(default)]
    pub node: u64,
    pub request_id: Option<String>,
    pub pipeline: String,
    pub pipeline_version: u64,
    /// `running`, `succeeded`, `failed`, `cancelled`, or `interrupted` (resumes at the node's
    /// next start).
    pub state: String,
    pub error: Option<String>,
    pub stats: letl_actors::pipeline::JobStats,
    pub dead_letters: Vec<DeadLetterInfo>,
    pub retry_of: Option<String>,
    pub started: String,
    pub ended: Option<String>,
    pub elapsed_ms: u64,
    /// Object bytes the job moved between nodes (inputs fetched, results sent).
    #[serde(default)]
    pub bytes_between_nodes: u64,
    /// A job run by several nodes: each node's part, with its figures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<JobPartInfo>,
    /// The job this one is a part of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_of: Option<String>,
}

/// One node's part of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPartInfo {
    pub node: u64,
    pub job: String,
    pub state: String,
    pub error: Option<String>,
    pub stats: letl_actors::pipeline::JobStats,
    pub bytes_between_nodes: u64,
}

impl JobInfo {
    pub fn new(job: &crate::pipelines::JobRecord, now_ms: u64) -> Self {
        Self {
            id: job.id.clone(),
            node: job.node,
            request_id: job.request_id.clone(),
            pipeline: job.pipeline.clone(),
            pipeline_version: job.pipeline_version,
            state: job.state.name().to_string(),
            error: job.error.clone(),
            stats: job.stats.clone(),
            dead_letters: job
                .dead_letters
                .iter()
                .map(|d| DeadLetterInfo {
                    uri: d.input.uri.clone(),
                    stage: d.stage.clone(),
                    error: d.error.clone(),
                })
                .collect(),
            retry_of: job.retry_of.clone(),
            started: rfc3339(job.started_ms),
            ended: job.ended_ms.map(rfc3339),
            elapsed_ms: job
                .ended_ms
                .unwrap_or(now_ms)
                .saturating_sub(job.started_ms),
            bytes_between_nodes: job.bytes_between_nodes,
            parts: job
                .parts
                .iter()
                .map(|p| JobPartInfo {
                    node: p.node,
                    job: p.job.clone(),
                    state: p.state.name().to_string(),
                    error: p.error.clone(),
                    stats: p.stats.clone(),
                    bytes_between_nodes: p.bytes_between_nodes,
                })
                .collect(),
            part_of: job.part_of.clone(),
        }
    }

    pub fn is_running(&self) -> bool {
        self.state == "running"
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobsResponse {
    pub jobs: Vec<JobInfo>,
}

/// A cache record as `POST /v1/cache` answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecordInfo {
    pub id: String,
    pub size: u64,
    pub hash: String,
    pub expires_in_ms: u64,
}

impl From<&letl_actors::cache::CacheEntry> for CacheRecordInfo {
    fn from(entry: &letl_actors::cache::CacheEntry) -> Self {
        Self {
            id: entry.key.clone(),
            size: entry.size,
            hash: entry.hash.to_string(),
            expires_in_ms: u64::try_from(entry.expires_in.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// How long a join token lives unless the request says.
pub const DEFAULT_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// `POST /v1/cluster/token`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// How long the token lives (`30m`, `2h`; default 1 h).
    pub ttl: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenResponse {
    pub token: String,
    pub expires_in_s: u64,
}

/// `POST /v1/cluster/join`: a node asking to be admitted.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The fingerprint of the CA the joining node's token is for.
    pub ca_fingerprint: String,
    /// Proof that it holds the token (derived from its secret; the secret stays with it).
    pub proof: String,
    /// Its certificate request (PEM); its key stays with it.
    pub csr_pem: String,
}

/// One node's rebalancer, as `GET /v1/cluster/rebalance` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalanceStatus {
    pub node: u64,
    /// `idle` or `running`.
    pub state: String,
    /// The nodes its last pass placed objects over (empty: no tier is kept by several).
    pub placed_by: Vec<u64>,
    /// The same, per tier: the nodes objects of each tier were placed on.
    #[serde(default)]
    pub placed_by_tier: std::collections::BTreeMap<String, Vec<u64>>,
    pub passes: u64,
    /// Objects of this node looked at by the last pass.
    pub scanned: u64,
    /// Copies the last pass made on the objects' homes.
    pub moved: u64,
    pub bytes_moved: u64,
    /// Objects the last pass deleted here once their homes had them.
    pub removed: u64,
    /// Objects the last pass could not place (a home down): tried again.
    pub left_behind: u64,
    pub last_error: Option<String>,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
}

/// Every member's rebalancer, and whether the cluster's objects are where the current
/// member set places them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebalanceResponse {
    pub members: Vec<RebalanceStatus>,
    /// `node N: why`, for members that did not answer.
    pub unreachable: Vec<String>,
    /// Every member answered, is idle, placed its objects by the current member set and
    /// left nothing behind.
    pub done: bool,
}

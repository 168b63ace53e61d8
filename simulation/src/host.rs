//! One simulated node: the real node (`letl_node::node::start`: HTTP routes, tier actors under
//! their supervisor, placement and the data plane, the mover, move jobs, pipelines with their
//! stage actors, the cache actor, the rebalancer) over the real control plane (openraft over
//! quinn, on a simulated UDP socket), on the durable state of its [`Disk`]. The workload
//! drives it over HTTP; the checker also reads its applied control state through a probe.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use letl_actors::TierSpec;
use letl_node::node::NodeDeps;
use letl_node::pipelines::PipelineStores;
use letl_raft::cluster::{Cluster, ClusterParts};
use letl_raft::store::RaftDb;
use letl_raft::transport::QuicTransport;
use letl_raft::{NodeId, NodeInfo};
use letl_storage::{Clock, IndexDb, TierBackend};
use tokio::sync::{mpsc, oneshot};

use crate::disk::Disk;
use crate::http::{ADMIN_TOKEN, HTTP_PORT, SimListener};
use crate::udp::SimUdp;

/// The UDP port of every node's QUIC endpoint.
pub const QUIC_PORT: u16 = 7000;
/// Probes a node's queue holds before the prober waits.
const PROBES_QUEUED_MAX: usize = 16;
/// The largest object the simulated tiers take.
const OBJECT_BYTES_MAX: u64 = 16 << 20;
/// How often the planted "late flush" makes acknowledged writes durable.
const PLANTED_FLUSH_INTERVAL: Duration = Duration::from_secs(2);
/// How long pipeline jobs may drain at a stop (the simulated nodes are crashed, never stopped).
const HARD_TERMINATE: Duration = Duration::from_secs(30);
/// How long requests may finish at a stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The simulated wall clock: turmoil's time since its fixed epoch.
#[derive(Debug, Default)]
pub struct SimClock;

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        turmoil::since_epoch().map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
    }
}

/// A node's applied control state at one index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub applied: u64,
    /// BLAKE3 of the encoded state.
    pub digest: String,
    pub voters: Vec<NodeId>,
    /// Nodes that published their tiers.
    pub published: Vec<NodeId>,
    /// How many jobs each request id started.
    pub jobs_by_request: BTreeMap<String, usize>,
}

/// Each running node's probe queue, replaced when its host restarts.
pub type Registry = Arc<Mutex<BTreeMap<NodeId, mpsc::Sender<oneshot::Sender<Probe>>>>>;

/// What a host needs to (re)start its node.
#[derive(Clone, Debug)]
pub struct HostSpec {
    pub node: NodeId,
    /// Where peers reach its QUIC endpoint.
    pub addr: SocketAddr,
    pub disk: Arc<Disk>,
    pub registry: Registry,
    pub replicas: usize,
    /// Seeds this incarnation's QUIC endpoint (with the node id and the start's time).
    pub seed: u64,
}

/// Where a joining node learns its join token and a member to ask: set by the workload.
pub type JoinSlot = Arc<Mutex<Option<(String, std::net::IpAddr)>>>;

/// Pause between a joining node's attempts.
const JOIN_RETRY: Duration = Duration::from_millis(500);

/// A node that is not a member yet: waits for a token, joins as `letl cluster join` does
/// (`POST /v1/cluster/join` with its certificate request, then saves the identity it is
/// granted), then runs. A restart after the join runs at once.
pub async fn join_then_run(spec: HostSpec, slot: JoinSlot) -> turmoil::Result {
    while spec.disk.identity().is_none() {
        let ticket = slot.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if let Some((token, member)) = ticket {
            match join(&spec.disk, &token, member).await {
                Ok(()) => break,
                Err(e) => tracing::debug!(error = %e, "join refused; asking again"),
            }
        }
        tokio::time::sleep(JOIN_RETRY).await;
    }
    run(spec).await
}

async fn join(disk: &Disk, token: &str, member: std::net::IpAddr) -> Result<(), String> {
    let (ca_fingerprint, proof) =
        letl_raft::cluster::join_proof(token).map_err(|e| e.to_string())?;
    let (key_pem, csr_pem) = letl_raft::cluster::join_request().map_err(|e| e.to_string())?;
    let request = letl_node::api::JoinRequest {
        ca_fingerprint,
        proof,
        csr_pem,
    };
    let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    let answer = crate::http::call(
        member,
        hyper::Method::POST,
        "/v1/cluster/join",
        bytes::Bytes::from(body),
        JOIN_ANSWER_TIMEOUT,
    )
    .await?;
    if answer.status != 200 {
        return Err(format!("{} {}", answer.status, answer.text()));
    }
    let grant: letl_raft::identity::JoinGrant = answer.json()?;
    letl_raft::cluster::save_joined(&disk.cluster_dir, token, grant, key_pem)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// How long a joining node waits for the member's answer.
const JOIN_ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs one node until its host is crashed.
pub async fn run(spec: HostSpec) -> turmoil::Result {
    let clock: Arc<dyn Clock> = Arc::new(SimClock);
    let identity = spec
        .disk
        .identity()
        .ok_or("the node has no identity: it never joined")?;
    let tls = identity.tls();
    // turmoil binds the unspecified address only; peers reach it at the host's address.
    let any = SocketAddr::new(std::net::IpAddr::from([0, 0, 0, 0]), spec.addr.port());
    let socket = Arc::new(SimUdp::bind(any).await?);
    let started = turmoil::sim_elapsed().unwrap_or_default().as_millis();
    let incarnation = blake3::hash(format!("{} {} {started}", spec.seed, spec.node).as_bytes());
    let basis = crate::quic::tls_basis(&incarnation);
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
        crate::quic::endpoint_config(&incarnation),
        Some(tls.server_config_on(&basis)?),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    let mut control = tls.client_config_on(letl_raft::tls::ALPN, &basis)?;
    crate::quic::seed_initial_ids(&mut control, &incarnation, "control");
    endpoint.set_default_client_config(control);
    let mut data = tls.client_config_on(letl_raft::tls::DATA_ALPN, &basis)?;
    crate::quic::seed_initial_ids(&mut data, &incarnation, "data");
    let transport = Arc::new(QuicTransport::from_endpoint(endpoint, data));
    let cluster = Cluster::start(ClusterParts {
        dir: spec.disk.cluster_dir.clone(),
        identity,
        db: RaftDb::memory(spec.disk.raft.clone()),
        transport,
        advertise: NodeInfo {
            quic: spec.addr.to_string(),
            http: SocketAddr::new(spec.addr.ip(), HTTP_PORT).to_string(),
        },
        clock: Arc::clone(&clock),
    })
    .await?;

    let index_db = IndexDb::memory(spec.disk.db.clone());
    let mut tiers = Vec::new();
    for tier in &spec.disk.tiers {
        tiers.push(TierSpec {
            backend: Arc::clone(tier) as Arc<dyn TierBackend>,
            index: Arc::new(index_db.tier(&tier.describe().name)?),
            clock: Arc::clone(&clock),
            object_bytes_max: OBJECT_BYTES_MAX,
        });
        let flushing = Arc::clone(tier);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PLANTED_FLUSH_INTERVAL).await;
                flushing.flush();
            }
        });
    }
    let deps = NodeDeps {
        listener: SimListener::bind().await?,
        tiers,
        token: ADMIN_TOKEN.to_string(),
        moves: Arc::new(index_db.moves()?),
        move_jobs: index_db.move_jobs()?,
        pipelines: PipelineStores::open(&index_db)?,
        cluster: cluster.clone(),
        replicas: spec.replicas,
        hard_terminate: HARD_TERMINATE,
        cache: letl_actors::cache::CacheLimits::default(),
        source_dir: None,
        source_s3: None,
        clock,
        shutdown_grace: SHUTDOWN_GRACE,
        index_db: Some(index_db),
    };

    let (tx, probes) = mpsc::channel(PROBES_QUEUED_MAX);
    spec.registry
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(spec.node, tx);
    tokio::spawn(answer_probes(probes, cluster));
    letl_node::node::start(deps, std::future::pending()).await?;
    Ok(())
}

async fn answer_probes(mut probes: mpsc::Receiver<oneshot::Sender<Probe>>, cluster: Cluster) {
    while let Some(reply) = probes.recv().await {
        let (applied, (digest, published, jobs_by_request)) = cluster.read_applied(|state| {
            let encoded = letl_storage::codec::encode_stored(state).unwrap_or_default();
            let mut jobs: BTreeMap<String, usize> = BTreeMap::new();
            for job in state.jobs.values() {
                if let Some(request) = &job.request_id {
                    *jobs.entry(request.clone()).or_default() += 1;
                }
            }
            (
                blake3::hash(&encoded).to_hex().to_string(),
                state.tiers.keys().copied().collect(),
                jobs,
            )
        });
        let _ = reply.send(Probe {
            applied,
            digest,
            voters: cluster.voters().into_iter().collect(),
            published,
            jobs_by_request,
        });
    }
}

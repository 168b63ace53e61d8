//! One simulated node: the real control plane (openraft over quinn, on a simulated UDP
//! socket), the real tier actors under their supervisor, placement and the data plane
//! (`Places`, `PlacesHandler`) and the rebalancer, on the durable state of its [`Disk`]. The
//! workload reaches it through a request queue, as the HTTP routes reach these parts.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use letl_actors::{RestartPolicy, SupervisorArgs, SupervisorHandle, TierDirectory, TierSpec};
use letl_node::places::Places;
use letl_node::rebalance::Rebalancer;
use letl_raft::cluster::{Cluster, ClusterParts};
use letl_raft::store::RaftDb;
use letl_raft::transport::QuicTransport;
use letl_raft::{Command, NodeId, NodeInfo, Response, TierEntry};
use letl_storage::{Clock, ObjectUri, StorageError};
use tokio::sync::{mpsc, oneshot, watch};

use crate::disk::Disk;
use crate::udp::SimUdp;

/// The UDP port of every node's QUIC endpoint.
pub const QUIC_PORT: u16 = 7000;
/// The one tier every simulated node keeps.
pub const TIER: &str = "ssd";
/// Requests a node's queue holds before the workload waits.
const REQUESTS_QUEUED_MAX: usize = 64;
/// The largest object the simulated tiers take.
const OBJECT_BYTES_MAX: u64 = 16 << 20;
/// How often the planted "late flush" makes acknowledged writes durable.
const PLANTED_FLUSH_INTERVAL: Duration = Duration::from_secs(2);

/// The simulated wall clock: turmoil's time since its fixed epoch.
#[derive(Debug, Default)]
pub struct SimClock;

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        turmoil::since_epoch().map_or(0, |t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
    }
}

/// What the workload asks a node.
#[derive(Debug)]
pub enum Request {
    /// Puts an object; answers its content hash.
    Put {
        key: String,
        data: Bytes,
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// Reads an object; answers the hash of the bytes read, or `None` if it does not exist.
    Get {
        key: String,
        reply: oneshot::Sender<Result<Option<String>, String>>,
    },
    /// Deletes an object; answers whether it existed.
    Delete {
        key: String,
        reply: oneshot::Sender<Result<bool, String>>,
    },
    /// A control-plane command, through this node (forwarded to the leader).
    Write {
        command: Command,
        reply: oneshot::Sender<Result<Response, String>>,
    },
    /// This node's applied control state, summarized.
    Probe { reply: oneshot::Sender<Probe> },
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

/// Each running node's request queue, replaced when its host restarts.
pub type Registry = Arc<Mutex<BTreeMap<NodeId, mpsc::Sender<Request>>>>;

/// What a host needs to (re)start its node.
#[derive(Clone, Debug)]
pub struct HostSpec {
    pub node: NodeId,
    pub addr: SocketAddr,
    pub disk: Arc<Disk>,
    pub registry: Registry,
    pub replicas: usize,
    /// Seeds this incarnation's QUIC endpoint (with the node id and the start's time).
    pub seed: u64,
}

/// Runs one node until its host is crashed.
pub async fn run(spec: HostSpec) -> turmoil::Result {
    let clock: Arc<dyn Clock> = Arc::new(SimClock);
    let identity = spec.disk.identity();
    let tls = identity.tls();
    // turmoil binds the unspecified address only; peers reach it at the host's address.
    let any = SocketAddr::new(std::net::IpAddr::from([0, 0, 0, 0]), spec.addr.port());
    let socket = Arc::new(SimUdp::bind(any).await?);
    let mut endpoint_config = quinn::EndpointConfig::default();
    let started = turmoil::sim_elapsed().unwrap_or_default().as_millis();
    let rng = blake3::hash(format!("{} {} {started}", spec.seed, spec.node).as_bytes());
    endpoint_config.rng_seed(Some(*rng.as_bytes()));
    let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
        endpoint_config,
        Some(tls.server_config()?),
        socket,
        Arc::new(quinn::TokioRuntime),
    )?;
    endpoint.set_default_client_config(tls.client_config()?);
    let transport = Arc::new(QuicTransport::from_endpoint(
        endpoint,
        tls.data_client_config()?,
    ));
    let cluster = Cluster::start(ClusterParts {
        dir: spec.disk.cluster_dir.clone(),
        identity,
        db: RaftDb::memory(spec.disk.raft.clone()),
        transport,
        advertise: NodeInfo {
            quic: spec.addr.to_string(),
            http: SocketAddr::new(spec.addr.ip(), 80).to_string(),
        },
        clock: Arc::clone(&clock),
    })
    .await?;

    let directory = TierDirectory::default();
    let tier: Arc<dyn letl_storage::TierBackend> = spec.disk.tier.clone();
    let d = tier.describe();
    let published = vec![TierEntry {
        name: d.name.to_string(),
        kind: d.kind,
        backend: d.backend,
        location: d.location,
    }];
    let _supervisor = SupervisorHandle::start(SupervisorArgs {
        tiers: vec![TierSpec {
            backend: tier,
            index: spec.disk.index.clone(),
            clock: Arc::clone(&clock),
            object_bytes_max: OBJECT_BYTES_MAX,
        }],
        directory: directory.clone(),
        restart_policy: RestartPolicy::default(),
    })
    .await?;
    let (_stop, stop_rx) = watch::channel(false);
    tokio::spawn(letl_node::node::publish_tiers(
        cluster.clone(),
        published,
        stop_rx.clone(),
    ));
    let places = Places::new(directory, cluster.clone(), spec.replicas);
    places.serve(Arc::new(letl_node::transforms::registry()));
    let _rebalancer = Rebalancer::start(places.clone(), Arc::clone(&clock), stop_rx);
    let flushing = Arc::clone(&spec.disk.tier);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(PLANTED_FLUSH_INTERVAL).await;
            flushing.flush();
        }
    });

    let (tx, mut requests) = mpsc::channel(REQUESTS_QUEUED_MAX);
    spec.registry
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(spec.node, tx);
    while let Some(request) = requests.recv().await {
        tokio::spawn(serve(request, places.clone(), cluster.clone()));
    }
    Ok(())
}

fn uri(key: &str) -> Result<ObjectUri, String> {
    ObjectUri::parse(&format!("{TIER}:/{key}")).map_err(|e| e.to_string())
}

async fn serve(request: Request, places: Places, cluster: Cluster) {
    match request {
        Request::Put { key, data, reply } => {
            let answer = async {
                let uri = uri(&key)?;
                let len = data.len() as u64;
                let body = futures_util::stream::once(async move { Ok(data) }).boxed();
                places
                    .put(&uri, body, Some(len), None)
                    .await
                    .map(|meta| meta.hash.to_string())
                    .map_err(|e| e.to_string())
            }
            .await;
            let _ = reply.send(answer);
        }
        Request::Get { key, reply } => {
            let answer = async {
                let uri = uri(&key)?;
                match places.get(&uri).await {
                    Ok((_, mut reader)) => {
                        let mut hasher = letl_storage::Hasher::new();
                        let mut read = 0u64;
                        while let Some(chunk) = reader.body.next().await {
                            let chunk = chunk.map_err(|e| e.to_string())?;
                            read += chunk.len() as u64;
                            hasher.update(&chunk);
                        }
                        if read != reader.size {
                            return Err(format!("read {read} bytes of {}", reader.size));
                        }
                        Ok(Some(hasher.finish().to_string()))
                    }
                    Err(StorageError::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e.to_string()),
                }
            }
            .await;
            let _ = reply.send(answer);
        }
        Request::Delete { key, reply } => {
            let answer = async {
                let uri = uri(&key)?;
                match places.delete(&uri, None).await {
                    Ok(_) => Ok(true),
                    Err(StorageError::NotFound { .. }) => Ok(false),
                    Err(e) => Err(e.to_string()),
                }
            }
            .await;
            let _ = reply.send(answer);
        }
        Request::Write { command, reply } => {
            let _ = reply.send(cluster.write(command).await.map_err(|e| e.to_string()));
        }
        Request::Probe { reply } => {
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
}

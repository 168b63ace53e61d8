//! One simulated run from a seed: a cluster of [`host`](crate::host) nodes on turmoil, a
//! workload against them, faults injected on a seeded schedule, the invariants checked during
//! the run and after the faults heal, and a trace whose hash says whether two runs were the
//! same.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use hyper::Method;
use letl_node::api::{JobInfo, ObjectInfo};
use letl_raft::identity::Identity;
use letl_raft::{NodeId, NodeInfo};
use letl_storage::{ContentHash, TierName};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::sync::oneshot;

use crate::disk::{Disk, Plant, SimTier};
use crate::host::{self, HostSpec, JoinSlot, Probe, QUIC_PORT, Registry, SimClock};
use crate::http::{self, Answer};

/// Simulated time advanced per step.
const TICK: Duration = Duration::from_millis(5);
/// Every message's latency on a healthy link: one value, so packets keep their order (quinn
/// counts reordering as loss).
const LATENCY: Duration = Duration::from_millis(5);
/// A run that has not ended by then has hung: the invariants' own bounds are far below.
const SIM_DURATION_MAX: Duration = Duration::from_secs(900);
/// Datagrams a simulated socket queues before it drops.
const UDP_QUEUE_MAX: usize = 4096;
/// The simulated wall clock starts here (2026-01-01).
const EPOCH_S: u64 = 1_767_225_600;
/// How long the workload waits for one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the probes wait for one answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// The cluster must have every node as a voter within this.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
/// After the faults heal, everything must agree and answer within this (liveness).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often the nodes' applied states are compared during the workload.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Keys each workload worker uses.
const KEYS_PER_WORKER: u32 = 12;
/// Request ids the workers share (so that several nodes take the same one).
const REQUEST_IDS: u32 = 6;
/// Times a move is tried under its request id before it is left in doubt until healing.
const MOVE_ATTEMPTS: u32 = 4;
/// The tiers every simulated node keeps.
const TIERS: [&str; 2] = ["ssd", "hdd"];

/// What one run does.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub nodes: u64,
    pub replicas: usize,
    /// Concurrent workload workers, each with its own keys.
    pub workers: u32,
    pub ops_per_worker: u32,
    pub plant: Option<Plant>,
    /// Inject faults (off: a plain run, for comparing).
    pub faults: bool,
    /// A node joins and leaves during the run.
    pub membership: bool,
}

impl Options {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            nodes: 3,
            replicas: 1,
            workers: 3,
            ops_per_worker: 40,
            plant: None,
            faults: true,
            membership: true,
        }
    }
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub seed: u64,
    /// BLAKE3 of the trace: equal for two runs of one seed.
    pub trace_hash: String,
    pub violations: Vec<String>,
    pub events: usize,
    pub sim_time: Duration,
    pub trace: Vec<String>,
}

/// What the hosts, the workload and the checker share.
#[derive(Debug, Default)]
struct Shared {
    trace: Mutex<Vec<String>>,
    violations: Mutex<Vec<String>>,
    registry: Registry,
    workload_done: AtomicBool,
    /// The joining node's token and the member it asks.
    join_slot: JoinSlot,
    /// The joining node's leave was acknowledged.
    left: AtomicBool,
}

impl Shared {
    fn event(&self, line: impl Into<String>) {
        let at = turmoil::sim_elapsed().unwrap_or_default().as_millis();
        lock(&self.trace).push(format!("{at:>8} {}", line.into()));
    }

    /// An event seen from outside the hosts (the fault schedule), at simulated time `at`.
    fn event_at(&self, at: Duration, line: String) {
        lock(&self.trace).push(format!("{:>8} {line}", at.as_millis()));
    }

    fn violation(&self, what: impl Into<String>) {
        let what = what.into();
        self.event(format!("VIOLATION {what}"));
        lock(&self.violations).push(what);
    }

    /// One HTTP request to `node`, as the CLI would send it.
    async fn http(
        &self,
        node: NodeId,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> Result<Answer, String> {
        let ip = turmoil::lookup(host_name(node));
        http::call(ip, method, path, body, REQUEST_TIMEOUT).await
    }

    async fn probe(&self, node: NodeId) -> Result<Probe, String> {
        let queue = lock(&self.registry).get(&node).cloned();
        let Some(queue) = queue else {
            return Err(format!("node {node} has not started"));
        };
        let (tx, rx) = oneshot::channel();
        if queue.send(tx).await.is_err() {
            return Err(format!("node {node} is down"));
        }
        match tokio::time::timeout(PROBE_TIMEOUT, rx).await {
            Ok(Ok(probe)) => Ok(probe),
            Ok(Err(_)) => Err(format!("node {node} went down during the probe")),
            Err(_) => Err(format!("node {node} did not answer the probe")),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn host_name(node: NodeId) -> String {
    format!("n{node}")
}

/// What each object may hold: the values of writes whose outcome is known, plus those that
/// may or may not have happened (failed or timed out). `None` is "no object".
#[derive(Debug, Default)]
struct Model {
    objects: BTreeMap<String, BTreeSet<Option<String>>>,
    /// The job each request id started, as answered.
    jobs: BTreeMap<String, String>,
    /// Moves whose outcome is unknown: replayed (same request id) after healing.
    moves_in_doubt: Vec<PendingMove>,
}

#[derive(Clone, Debug)]
struct PendingMove {
    /// The node that took it, and holds its record.
    node: NodeId,
    request_id: String,
    source: String,
    destination: String,
    /// What the source may have held.
    moved: BTreeSet<Option<String>>,
}

impl Model {
    fn possible(&mut self, uri: &str) -> &mut BTreeSet<Option<String>> {
        self.objects
            .entry(uri.to_string())
            .or_insert_with(|| BTreeSet::from([None]))
    }

    fn in_doubt(&self, uri: &str) -> bool {
        self.moves_in_doubt
            .iter()
            .any(|m| m.source == uri || m.destination == uri)
    }

    /// A move that happened: the destination holds what the source held, the source nothing.
    fn moved(&mut self, source: &str, destination: &str, moved: &BTreeSet<Option<String>>) {
        *self.possible(destination) = moved.iter().filter(|v| v.is_some()).cloned().collect();
        *self.possible(source) = BTreeSet::from([None]);
    }
}

/// Runs one seed.
pub fn run(options: &Options) -> Outcome {
    letl_raft::runtime::seed_election_rng(options.seed);
    letl_node::moves::seed_request_ids(options.seed);
    let shared = Arc::new(Shared::default());
    let model = Arc::new(Mutex::new(Model::default()));
    let mut sim = turmoil::Builder::new()
        .simulation_duration(SIM_DURATION_MAX)
        .tick_duration(TICK)
        .min_message_latency(LATENCY)
        .max_message_latency(LATENCY)
        .udp_capacity(UDP_QUEUE_MAX)
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_S))
        .rng_seed(options.seed)
        .build();
    let dirs = match tempfile::tempdir() {
        Ok(dirs) => dirs,
        Err(e) => return failed_to_start(options.seed, format!("a temporary directory: {e}")),
    };
    let disks = match build_hosts(&mut sim, options, &shared, dirs.path()) {
        Ok(disks) => disks,
        Err(e) => return failed_to_start(options.seed, e),
    };

    let client_shared = Arc::clone(&shared);
    let client_model = Arc::clone(&model);
    let client_options = options.clone();
    sim.client("workload", async move {
        workload(client_shared, client_model, client_options).await;
        Ok(())
    });

    let mut faults = Faults::new(options, &disks);
    let mut checking = false;
    loop {
        let done = match sim.step() {
            Ok(done) => done,
            Err(e) => {
                shared.violation(format!("the simulation stopped: {e}"));
                break;
            }
        };
        if checking {
            if done {
                break;
            }
            continue;
        }
        if done || shared.workload_done.load(Ordering::SeqCst) {
            faults.heal(&mut sim, &shared);
            let check_shared = Arc::clone(&shared);
            let check_model = Arc::clone(&model);
            let nodes = options.nodes;
            let membership = options.membership;
            sim.client("checker", async move {
                check(check_shared, check_model, nodes, membership).await;
                Ok(())
            });
            checking = true;
            continue;
        }
        if options.faults {
            faults.tick(&mut sim, &shared);
        }
    }
    let sim_time = sim.elapsed();
    drop(sim);
    let trace = std::mem::take(&mut *lock(&shared.trace));
    let mut hasher = blake3::Hasher::new();
    for line in &trace {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    Outcome {
        seed: options.seed,
        trace_hash: hasher.finalize().to_hex()[..16].to_string(),
        violations: std::mem::take(&mut *lock(&shared.violations)),
        events: trace.len(),
        sim_time,
        trace,
    }
}

fn failed_to_start(seed: u64, why: String) -> Outcome {
    Outcome {
        seed,
        trace_hash: String::new(),
        violations: vec![format!("the simulation could not start: {why}")],
        events: 0,
        sim_time: Duration::ZERO,
        trace: Vec::new(),
    }
}

/// Registers the hosts; node 1 founds the cluster, the others join through it.
fn build_hosts(
    sim: &mut turmoil::Sim<'_>,
    options: &Options,
    shared: &Arc<Shared>,
    dirs: &std::path::Path,
) -> Result<BTreeMap<NodeId, Arc<Disk>>, String> {
    let founder = Identity::found("sim", 1).map_err(|e| e.to_string())?;
    let ca = founder.ca().map_err(|e| e.to_string())?;
    let mut disks = BTreeMap::new();
    let mut first: Option<NodeInfo> = None;
    // The founding nodes, then (with `membership`) one that joins and leaves during the run.
    let joiners = u64::from(options.membership);
    for node in 1..=options.nodes + joiners {
        let identity = if node == 1 {
            Some(founder.clone())
        } else if node > options.nodes {
            None
        } else {
            let tls = ca.issue_node(node).map_err(|e| e.to_string())?;
            let via = first.clone().ok_or("node 1 is registered first")?;
            Some(Identity {
                cluster: founder.cluster.clone(),
                node_id: node,
                ca_pem: tls.ca_pem,
                ca_key_pem: founder.ca_key_pem.clone(),
                cert_pem: tls.cert_pem,
                key_pem: tls.key_pem,
                join_via: BTreeMap::from([(1, via)]),
            })
        };
        let cluster_dir = dirs.join(host_name(node));
        std::fs::create_dir_all(&cluster_dir).map_err(|e| e.to_string())?;
        let mut tiers = Vec::new();
        for name in TIERS {
            let name = TierName::new(name).map_err(|e| e.to_string())?;
            tiers.push(Arc::new(SimTier::new(
                name,
                Arc::new(SimClock),
                options.plant,
            )));
        }
        let disk = Arc::new(Disk {
            raft: letl_storage::MemoryDb::default(),
            db: letl_storage::MemoryDb::default(),
            tiers,
            cluster_dir,
            identity,
        });
        let name = host_name(node);
        let spec = HostSpec {
            node,
            addr: std::net::SocketAddr::new(std::net::IpAddr::from([0, 0, 0, 0]), QUIC_PORT),
            disk: Arc::clone(&disk),
            registry: Arc::clone(&shared.registry),
            replicas: options.replicas,
            seed: options.seed,
        };
        let slot = (node > options.nodes).then(|| Arc::clone(&shared.join_slot));
        sim.host(name.as_str(), move || {
            let mut spec = spec.clone();
            let slot = slot.clone();
            async move {
                spec.addr.set_ip(turmoil::lookup(host_name(spec.node)));
                match slot {
                    Some(slot) => host::join_then_run(spec, slot).await,
                    None => host::run(spec).await,
                }
            }
        });
        let ip = sim.lookup(name.as_str());
        if node == 1 {
            first = Some(NodeInfo {
                quic: std::net::SocketAddr::new(ip, QUIC_PORT).to_string(),
                http: std::net::SocketAddr::new(ip, http::HTTP_PORT).to_string(),
            });
        }
        disks.insert(node, disk);
    }
    Ok(disks)
}

/// The workload: waits for the cluster to form, then runs the workers and the prober.
async fn workload(shared: Arc<Shared>, model: Arc<Mutex<Model>>, options: Options) {
    let all: Vec<NodeId> = (1..=options.nodes).collect();
    let deadline = tokio::time::Instant::now() + FORM_TIMEOUT;
    loop {
        if let Ok(probe) = shared.probe(1).await
            && probe.voters == all
        {
            shared.event(format!("formed: voters {:?}", probe.voters));
            break;
        }
        if tokio::time::Instant::now() > deadline {
            shared.violation(format!("the cluster did not form within {FORM_TIMEOUT:?}"));
            shared.workload_done.store(true, Ordering::SeqCst);
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let workers_done = Arc::new(AtomicBool::new(false));
    let workers = futures_util::future::join_all(
        (0..options.workers)
            .map(|w| worker(Arc::clone(&shared), Arc::clone(&model), options.clone(), w)),
    );
    let done = Arc::clone(&workers_done);
    let workers = async move {
        workers.await;
        done.store(true, Ordering::SeqCst);
    };
    tokio::join!(
        workers,
        prober(
            Arc::clone(&shared),
            options.nodes,
            Arc::clone(&workers_done)
        ),
        async {
            if options.membership {
                membership(Arc::clone(&shared), options.clone(), workers_done).await;
            }
        },
    );
    shared.event("workload done");
    shared.workload_done.store(true, Ordering::SeqCst);
}

/// A membership change during the workload: a new node joins with a token, becomes a voter,
/// then leaves (drained first). Bounded by the workers: what is not done by their end is
/// finished after healing.
async fn membership(shared: Arc<Shared>, options: Options, stop: Arc<AtomicBool>) {
    let mut rng = StdRng::seed_from_u64(options.seed.wrapping_mul(0xA076_1D64_78BD_642F));
    let joiner = options.nodes + 1;
    tokio::time::sleep(Duration::from_millis(rng.gen_range(2000..8000))).await;
    let via = rng.gen_range(1..=options.nodes);
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match issue_token(&shared, via).await {
            Ok(token) => {
                *lock(&shared.join_slot) = Some((token, turmoil::lookup(host_name(via))));
                shared.event(format!("join token for node {joiner} from n{via}"));
                break;
            }
            Err(e) => shared.event(format!("token n{via} -> err {e}")),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(probe) = shared.probe(1).await
            && probe.voters.contains(&joiner)
        {
            shared.event(format!("node {joiner} is a voter"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_millis(rng.gen_range(2000..8000))).await;
    while !stop.load(Ordering::SeqCst) {
        let answer = leave(&shared, joiner).await;
        shared.event(format!("leave n{joiner} -> {}", outcome(&answer)));
        if answer.is_ok() {
            shared.left.store(true, Ordering::SeqCst);
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn issue_token(shared: &Shared, node: NodeId) -> Result<String, String> {
    let answer = shared
        .http(node, Method::POST, "/v1/cluster/token", Bytes::new())
        .await?;
    match answer.status {
        200 => Ok(answer.json::<letl_node::api::TokenResponse>()?.token),
        status => Err(format!("{status} {}", answer.text())),
    }
}

/// Asks `node` to leave: it drains, is removed, and stops.
async fn leave(shared: &Shared, node: NodeId) -> Result<u16, String> {
    let answer = shared
        .http(node, Method::POST, "/v1/cluster/leave", Bytes::new())
        .await?;
    match answer.status {
        204 => Ok(204),
        status => Err(format!("{status} {}", answer.text())),
    }
}

/// Compares the nodes' applied states while the workload runs: two nodes that applied up to
/// the same index must hold the same state (they applied the same committed prefix).
async fn prober(shared: Arc<Shared>, nodes: u64, stop: Arc<AtomicBool>) {
    let mut seen: BTreeMap<u64, (String, NodeId)> = BTreeMap::new();
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(PROBE_INTERVAL).await;
        for node in 1..=nodes {
            let Ok(probe) = shared.probe(node).await else {
                continue;
            };
            compare(&shared, &mut seen, node, &probe);
        }
    }
}

fn compare(
    shared: &Shared,
    seen: &mut BTreeMap<u64, (String, NodeId)>,
    node: NodeId,
    probe: &Probe,
) {
    match seen.get(&probe.applied) {
        Some((digest, other)) if *digest != probe.digest => shared.violation(format!(
            "nodes {other} and {node} applied different control states at index {}",
            probe.applied
        )),
        Some(_) => {}
        None => {
            seen.insert(probe.applied, (probe.digest.clone(), node));
        }
    }
    for (request, jobs) in &probe.jobs_by_request {
        if *jobs > 1 {
            shared.violation(format!(
                "request id `{request}` started {jobs} jobs (node {node} at index {})",
                probe.applied
            ));
        }
    }
}

/// `ssd:/w0/k3` → `/v1/objects/ssd/w0/k3`.
fn object_path(uri: &str) -> String {
    let (tier, key) = uri.split_once(":/").unwrap_or((uri, ""));
    format!("/v1/objects/{tier}/{key}")
}

/// Pipeline `name`, fed by worker `n`'s objects: identity, from its keys on ssd to
/// `hdd:/out<n>/`.
fn pipeline_spec(name: &str, n: u32, threshold: u32, mounted: bool) -> String {
    serde_json::json!({
        "name": name,
        "mounted": mounted,
        "extract": {"from": format!("ssd:/w{n}/")},
        "transform": [{"kind": "identity"}],
        "load": {"to": format!("hdd:/out{n}/")},
        "scaling": {"threshold": threshold},
    })
    .to_string()
}

/// Reads `uri` through `node`: the hash of its bytes, `None` if it does not exist.
async fn read(shared: &Shared, node: NodeId, uri: &str) -> Result<Option<String>, String> {
    let answer = shared
        .http(node, Method::GET, &object_path(uri), Bytes::new())
        .await?;
    match answer.status {
        200 => Ok(Some(ContentHash::of(&answer.body).to_string())),
        404 => Ok(None),
        status => Err(format!("{status} {}", answer.text())),
    }
}

/// Checks a read against the model.
fn check_read(
    shared: &Shared,
    model: &Mutex<Model>,
    node: NodeId,
    uri: &str,
    read: &Option<String>,
) {
    let mut model = lock(model);
    let possible = model.possible(uri);
    if !possible.contains(read) {
        shared.violation(format!(
            "get {uri} through node {node} read {}, expected one of {}",
            shown(read),
            possible.iter().map(shown).collect::<Vec<_>>().join(", ")
        ));
    }
}

/// How a move request ended.
#[derive(Debug)]
enum Moved {
    Done,
    /// Refused, with the reason: nothing changed.
    Refused(String),
}

impl std::fmt::Display for Moved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Done => f.write_str("moved"),
            Self::Refused(reason) => write!(f, "refused: {reason}"),
        }
    }
}

/// Moves `source` to `destination` under `request_id` through `node`; `Err` if the outcome
/// is unknown.
async fn move_once(
    shared: &Shared,
    node: NodeId,
    request_id: &str,
    source: &str,
    destination: &str,
) -> Result<Moved, String> {
    let body = serde_json::json!({
        "source": source,
        "destination": destination,
        "request_id": request_id,
    });
    let answer = shared
        .http(
            node,
            Method::POST,
            "/v1/move",
            Bytes::from(body.to_string()),
        )
        .await?;
    match answer.status {
        200..=299 => Ok(Moved::Done),
        // The request id's move failed before (recorded: nothing moved).
        409 if answer.text().contains("failed earlier") => {
            Ok(Moved::Refused(format!("409 {}", answer.text())))
        }
        // Another conflict: the request id is held by another node (which took the move and
        // keeps its record), so this one cannot say what became of it.
        409 => Err(format!("409 {}", answer.text())),
        status @ 400..=499 => Ok(Moved::Refused(format!("{status} {}", answer.text()))),
        status => Err(format!("{status} {}", answer.text())),
    }
}

/// One workload worker: a seeded sequence of operations on its own objects and the shared
/// request ids, each checked against the model.
async fn worker(shared: Arc<Shared>, model: Arc<Mutex<Model>>, options: Options, w: u32) {
    let mut rng = StdRng::seed_from_u64(
        options.seed ^ (u64::from(w) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    for op in 0..options.ops_per_worker {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
        let node = rng.gen_range(1..=options.nodes);
        let key = format!("w{w}/k{}", rng.gen_range(0..KEYS_PER_WORKER));
        let tier = if rng.gen_bool(0.75) { "ssd" } else { "hdd" };
        let uri = format!("{tier}:/{key}");
        let other = format!("{}:/{key}", if tier == "ssd" { "hdd" } else { "ssd" });
        if lock(&model).in_doubt(&uri) || lock(&model).in_doubt(&other) {
            continue;
        }
        let roll = rng.gen_range(0..100);
        if roll < 35 {
            let size = if rng.gen_bool(0.05) {
                rng.gen_range(64 << 10..512 << 10)
            } else {
                rng.gen_range(1..16 << 10)
            };
            let mut data = vec![0u8; size];
            rng.fill_bytes(&mut data);
            let expected = ContentHash::of(&data).to_string();
            let answer = shared
                .http(node, Method::PUT, &object_path(&uri), Bytes::from(data))
                .await
                .and_then(|a| match a.status {
                    201 => a.json::<ObjectInfo>().map(|info| info.hash),
                    status => Err(format!("{status} {}", a.text())),
                });
            let mut model = lock(&model);
            match &answer {
                Ok(hash) if *hash == expected => {
                    *model.possible(&uri) = BTreeSet::from([Some(expected.clone())]);
                }
                Ok(hash) => shared.violation(format!(
                    "put {uri} through node {node} answered {hash}, not the hash of its bytes {expected}"
                )),
                Err(_) => {
                    model.possible(&uri).insert(Some(expected.clone()));
                }
            }
            shared.event(format!(
                "w{w} put n{node} {uri} {size} {} -> {}",
                short(&expected),
                outcome(&answer.map(|h| short(&h)))
            ));
        } else if roll < 60 {
            let answer = read(&shared, node, &uri).await;
            if let Ok(found) = &answer {
                check_read(&shared, &model, node, &uri, found);
            }
            shared.event(format!(
                "w{w} get n{node} {uri} -> {}",
                outcome(&answer.map(|r| shown(&r)))
            ));
        } else if roll < 68 {
            let answer = shared
                .http(node, Method::DELETE, &object_path(&uri), Bytes::new())
                .await
                .and_then(|a| match a.status {
                    200..=299 => Ok(true),
                    404 => Ok(false),
                    status => Err(format!("{status} {}", a.text())),
                });
            let mut model = lock(&model);
            match answer {
                Ok(_) => *model.possible(&uri) = BTreeSet::from([None]),
                Err(_) => {
                    model.possible(&uri).insert(None);
                }
            }
            shared.event(format!("w{w} delete n{node} {uri} -> {}", outcome(&answer)));
        } else if roll < 80 {
            // A move to the other tier, retried under its request id until it is settled.
            let moved = lock(&model).possible(&uri).clone();
            if moved.contains(&None) {
                continue;
            }
            let request_id = format!("m-w{w}-{op}");
            let mut answer = Err(String::new());
            // Retried through the same node: the node that takes a request id keeps its record.
            for _ in 0..MOVE_ATTEMPTS {
                answer = move_once(&shared, node, &request_id, &uri, &other).await;
                shared.event(format!(
                    "w{w} move n{node} {request_id} {uri} -> {other} -> {}",
                    outcome(&answer)
                ));
                if answer.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let mut model = lock(&model);
            match answer {
                Ok(Moved::Done) => model.moved(&uri, &other, &moved),
                Ok(Moved::Refused(_)) => {}
                Err(_) => model.moves_in_doubt.push(PendingMove {
                    node,
                    request_id,
                    source: uri,
                    destination: other,
                    moved,
                }),
            }
        } else if roll < 90 {
            let request = format!("r{}", rng.gen_range(0..REQUEST_IDS));
            let name = format!("p{}", rng.gen_range(0..options.workers));
            let body = serde_json::json!({ "request_id": request }).to_string();
            let path = format!("/v1/pipelines/{name}/run");
            let answer = shared
                .http(node, Method::POST, &path, Bytes::from(body))
                .await
                .and_then(|a| match a.status {
                    200..=299 => a.json::<JobInfo>().map(|job| Some(job.id)),
                    404 | 409 => Ok(None),
                    status => Err(format!("{status} {}", a.text())),
                });
            if let Ok(Some(started)) = &answer {
                let mut model = lock(&model);
                match model.jobs.get(&request) {
                    Some(earlier) if earlier != started => shared.violation(format!(
                        "request id `{request}` answered job {started}, earlier {earlier}"
                    )),
                    Some(_) => {}
                    None => {
                        model.jobs.insert(request.clone(), started.clone());
                    }
                }
            }
            shared.event(format!(
                "w{w} run n{node} {name} {request} -> {}",
                outcome(&answer.map(|j| j.unwrap_or_else(|| "refused".to_string())))
            ));
        } else {
            let n = rng.gen_range(0..options.workers);
            let (path, body) = match rng.gen_range(0..3) {
                0 => (
                    "/v1/pipelines".to_string(),
                    pipeline_spec(
                        &format!("p{n}"),
                        n,
                        rng.gen_range(1..4) * 16,
                        rng.gen_bool(0.7),
                    ),
                ),
                1 => (format!("/v1/pipelines/p{n}/mount"), String::new()),
                _ => (format!("/v1/pipelines/p{n}/unmount"), String::new()),
            };
            let answer = shared
                .http(node, Method::POST, &path, Bytes::from(body))
                .await
                .map(|a| a.status);
            shared.event(format!("w{w} POST n{node} {path} -> {}", outcome(&answer)));
        }
    }
}

fn short(hash: &str) -> String {
    hash.trim_start_matches("blake3:").chars().take(8).collect()
}

fn shown(value: &Option<String>) -> String {
    value.as_deref().map_or("nothing".to_string(), short)
}

fn outcome<T: std::fmt::Display>(answer: &Result<T, String>) -> String {
    match answer {
        Ok(v) => format!("ok {v}"),
        Err(e) => format!("err {e}"),
    }
}

/// Waits until `attempt` succeeds or the deadline passes; the last answer.
async fn until<T>(
    deadline: tokio::time::Instant,
    mut attempt: impl AsyncFnMut() -> Result<T, String>,
) -> Result<T, String> {
    loop {
        let answer = attempt().await;
        if answer.is_ok() || tokio::time::Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// After the faults healed: every node must come to the same state and take writes, every
/// move in doubt must finish under its request id, every job must end, and every object must
/// read as the model allows.
async fn check(shared: Arc<Shared>, model: Arc<Mutex<Model>>, nodes: u64, membership: bool) {
    shared.event("healed; checking");
    let all: Vec<NodeId> = (1..=nodes).collect();
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    // Liveness: a control write through every node.
    for node in 1..=nodes {
        let body = Bytes::from(pipeline_spec(&format!("live-{node}"), 0, 16, false));
        let answer = until(deadline, async || {
            let a = shared
                .http(node, Method::POST, "/v1/pipelines", body.clone())
                .await?;
            match a.status {
                200..=299 => Ok(()),
                status => Err(format!("{status} {}", a.text())),
            }
        })
        .await;
        if let Err(e) = answer {
            shared.violation(format!(
                "node {node} took no write within {SETTLE_TIMEOUT:?} of healing: {e}"
            ));
        }
    }
    // Membership: the joining node joins and leaves, if the workload could not finish that.
    let joiner = nodes + 1;
    if membership && !shared.left.load(Ordering::SeqCst) {
        if lock(&shared.join_slot).is_none() {
            match until(deadline, async || issue_token(&shared, 1).await).await {
                Ok(token) => {
                    *lock(&shared.join_slot) = Some((token, turmoil::lookup(host_name(1))))
                }
                Err(e) => shared.violation(format!(
                    "no join token within {SETTLE_TIMEOUT:?} of healing: {e}"
                )),
            }
        }
        let joined = until(deadline, async || {
            let probe = shared.probe(1).await?;
            if probe.voters.contains(&joiner) {
                Ok(())
            } else {
                Err(format!("voters {:?}", probe.voters))
            }
        })
        .await;
        shared.event(format!(
            "node {joiner} joined -> {}",
            outcome(&joined.clone().map(|()| "voter"))
        ));
        if let Err(e) = joined {
            shared.violation(format!(
                "node {joiner} did not become a voter within {SETTLE_TIMEOUT:?} of healing: {e}"
            ));
        } else {
            let left = until(deadline, async || leave(&shared, joiner).await).await;
            shared.event(format!("leave n{joiner} -> {}", outcome(&left)));
            if let Err(e) = left {
                shared.violation(format!(
                    "node {joiner} could not leave within {SETTLE_TIMEOUT:?} of healing: {e}"
                ));
            }
        }
    }
    // Agreement: every node applies the same state.
    let settled = until(deadline, async || {
        let mut probes = Vec::new();
        for node in 1..=nodes {
            probes.push(shared.probe(node).await?);
        }
        let first = probes[0].clone();
        if probes.iter().all(|p| {
            p.applied == first.applied
                && p.digest == first.digest
                && p.voters == all
                && all.iter().all(|n| p.published.contains(n))
        }) {
            Ok(first)
        } else {
            Err(format!("{probes:?}"))
        }
    })
    .await;
    match &settled {
        Ok(probe) => {
            // The digest stays out of the trace: join tokens put random bytes in the state.
            shared.event(format!("agreed at index {}", probe.applied));
            compare(&shared, &mut BTreeMap::new(), 1, probe);
        }
        Err(e) => shared.violation(format!(
            "the nodes did not agree within {SETTLE_TIMEOUT:?} of healing: {e}"
        )),
    }
    // Exactly once: a move in doubt finishes under its request id, through any node.
    let in_doubt = std::mem::take(&mut lock(&model).moves_in_doubt);
    for pending in in_doubt {
        let answer = until(deadline, async || {
            move_once(
                &shared,
                pending.node,
                &pending.request_id,
                &pending.source,
                &pending.destination,
            )
            .await
        })
        .await;
        shared.event(format!(
            "replayed {} {} -> {} -> {}",
            pending.request_id,
            pending.source,
            pending.destination,
            outcome(&answer)
        ));
        match answer {
            Ok(Moved::Done) => {
                lock(&model).moved(&pending.source, &pending.destination, &pending.moved);
            }
            Ok(Moved::Refused(_)) => {
                // Refused on replay: it never happened, or it was undone; either way only one
                // of the two may hold the object.
                let mut model = lock(&model);
                model
                    .possible(&pending.source)
                    .extend(pending.moved.iter().cloned());
                model
                    .possible(&pending.destination)
                    .extend(pending.moved.iter().cloned());
            }
            Err(e) => shared.violation(format!(
                "move {} did not finish within {SETTLE_TIMEOUT:?} of healing: {e}",
                pending.request_id
            )),
        }
    }
    // Liveness: every job started ends.
    let jobs: Vec<String> = lock(&model).jobs.values().cloned().collect();
    for job in jobs {
        let ended = until(deadline, async || {
            let a = shared
                .http(1, Method::GET, &format!("/v1/jobs/{job}"), Bytes::new())
                .await?;
            let info: JobInfo = a.json()?;
            match info.ended {
                Some(_) => Ok(info.state),
                None => Err(format!("still {}", info.state)),
            }
        })
        .await;
        shared.event(format!("job {job} -> {}", outcome(&ended)));
        if let Err(e) = ended {
            shared.violation(format!(
                "job {job} did not end within {SETTLE_TIMEOUT:?} of healing: {e}"
            ));
        }
    }
    // No acknowledged write lost: each object reads as the model allows.
    let objects: Vec<(String, BTreeSet<Option<String>>)> = lock(&model)
        .objects
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (i, (uri, possible)) in objects.iter().enumerate() {
        let node = (i as u64 % nodes) + 1;
        let found = until(deadline, async || read(&shared, node, uri).await).await;
        match &found {
            Ok(read) if possible.contains(read) => {}
            Ok(read) => shared.violation(format!(
                "after healing, {uri} reads {} through node {node}; acknowledged: one of {}",
                shown(read),
                possible.iter().map(shown).collect::<Vec<_>>().join(", ")
            )),
            Err(e) => shared.violation(format!(
                "after healing, {uri} cannot be read through node {node}: {e}"
            )),
        }
        shared.event(format!(
            "final {uri} n{node} -> {}",
            outcome(&found.map(|r| shown(&r)))
        ));
    }
    shared.event("checked");
}

/// A fault in force, and when it ends.
#[derive(Debug)]
enum Fault {
    Partition(NodeId, NodeId),
    Crash(NodeId),
    Loss(NodeId, NodeId),
    Delay(NodeId, NodeId),
    /// Links held one by one, released in a random order.
    Clog(Vec<(NodeId, NodeId)>),
    DiskErrors(NodeId),
    DiskFull(NodeId),
}

/// The seeded fault schedule.
struct Faults {
    rng: StdRng,
    nodes: u64,
    disks: BTreeMap<NodeId, Arc<Disk>>,
    next_at: Duration,
    active: Vec<(Duration, Fault)>,
}

/// Faults in force at once, at most.
const FAULTS_AT_ONCE_MAX: usize = 2;

impl Faults {
    fn new(options: &Options, disks: &BTreeMap<NodeId, Arc<Disk>>) -> Self {
        Self {
            rng: StdRng::seed_from_u64(options.seed.wrapping_mul(0xD1B5_4A32_D192_ED03)),
            nodes: options.nodes,
            disks: disks.clone(),
            next_at: Duration::from_secs(5),
            active: Vec::new(),
        }
    }

    fn pair(&mut self) -> (NodeId, NodeId) {
        let a = self.rng.gen_range(1..=self.nodes);
        let mut b = self.rng.gen_range(1..self.nodes);
        if b >= a {
            b += 1;
        }
        (a, b)
    }

    fn tick(&mut self, sim: &mut turmoil::Sim<'_>, shared: &Shared) {
        let now = sim.elapsed();
        let (ended, active): (Vec<_>, Vec<_>) = std::mem::take(&mut self.active)
            .into_iter()
            .partition(|(until, _)| *until <= now);
        self.active = active;
        for (_, fault) in ended {
            self.end(sim, shared, fault);
        }
        if now < self.next_at {
            return;
        }
        self.next_at = now + Duration::from_millis(self.rng.gen_range(500..3000));
        if self.active.len() >= FAULTS_AT_ONCE_MAX {
            return;
        }
        let lasts = Duration::from_millis(self.rng.gen_range(1000..6000));
        let crashed = self
            .active
            .iter()
            .any(|(_, f)| matches!(f, Fault::Crash(_)));
        let fault = match self.rng.gen_range(0..7) {
            0 => {
                let (a, b) = self.pair();
                sim.partition(host_name(a).as_str(), host_name(b).as_str());
                Fault::Partition(a, b)
            }
            1 if !crashed => {
                let node = self.rng.gen_range(1..=self.nodes);
                sim.crash(host_name(node).as_str());
                self.disks[&node].crash();
                Fault::Crash(node)
            }
            2 => {
                let (a, b) = self.pair();
                let rate = self.rng.gen_range(0.05..0.3);
                sim.set_link_fail_rate(host_name(a).as_str(), host_name(b).as_str(), rate);
                Fault::Loss(a, b)
            }
            3 => {
                let (a, b) = self.pair();
                let latency = Duration::from_millis(self.rng.gen_range(50..400));
                sim.set_link_latency(host_name(a).as_str(), host_name(b).as_str(), latency);
                Fault::Delay(a, b)
            }
            4 => {
                let mut links = Vec::new();
                for _ in 0..self.rng.gen_range(1..=3) {
                    let (a, b) = self.pair();
                    sim.hold(host_name(a).as_str(), host_name(b).as_str());
                    links.push((a, b));
                }
                Fault::Clog(links)
            }
            5 => {
                let node = self.rng.gen_range(1..=self.nodes);
                self.disks[&node].set_write_errors(true);
                Fault::DiskErrors(node)
            }
            6 => {
                let node = self.rng.gen_range(1..=self.nodes);
                self.disks[&node].set_full(true);
                Fault::DiskFull(node)
            }
            _ => return,
        };
        shared.event_at(now, format!("fault {fault:?} for {lasts:?}"));
        self.active.push((now + lasts, fault));
    }

    fn end(&mut self, sim: &mut turmoil::Sim<'_>, shared: &Shared, fault: Fault) {
        let name = |n: NodeId| host_name(n);
        match &fault {
            Fault::Partition(a, b) => sim.repair(name(*a).as_str(), name(*b).as_str()),
            Fault::Crash(node) => sim.bounce(name(*node).as_str()),
            Fault::Loss(a, b) => {
                sim.set_link_fail_rate(name(*a).as_str(), name(*b).as_str(), 0.0);
            }
            Fault::Delay(a, b) => {
                sim.set_link_latency(name(*a).as_str(), name(*b).as_str(), LATENCY)
            }
            Fault::Clog(links) => {
                let mut links = links.clone();
                // Released in a random order.
                while !links.is_empty() {
                    let at = self.rng.gen_range(0..links.len());
                    let (a, b) = links.swap_remove(at);
                    sim.release(name(a).as_str(), name(b).as_str());
                }
            }
            Fault::DiskErrors(node) => self.disks[node].set_write_errors(false),
            Fault::DiskFull(node) => self.disks[node].set_full(false),
        }
        shared.event_at(sim.elapsed(), format!("healed {fault:?}"));
    }

    /// Ends every fault in force.
    fn heal(&mut self, sim: &mut turmoil::Sim<'_>, shared: &Shared) {
        for (_, fault) in std::mem::take(&mut self.active) {
            self.end(sim, shared, fault);
        }
    }
}

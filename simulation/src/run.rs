//! One simulated run from a seed: a cluster of [`host`](crate::host) nodes on turmoil, a
//! workload against them, faults injected on a seeded schedule, the invariants checked during
//! the run and after the faults heal, and a trace whose hash says whether two runs were the
//! same.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use letl_raft::identity::Identity;
use letl_raft::{Command, NodeId, NodeInfo, Response};
use letl_storage::{ContentHash, MemoryIndex, TierName};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use tokio::sync::oneshot;

use crate::disk::{Disk, Plant, SimTier};
use crate::host::{self, HostSpec, Probe, QUIC_PORT, Registry, Request, SimClock, TIER};

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
/// Reads of an object after healing before it counts as lost to reads.
const FINAL_READ_ATTEMPTS: u32 = 10;

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
}

impl Shared {
    fn event(&self, line: impl Into<String>) {
        let at = turmoil::sim_elapsed().unwrap_or_default().as_millis();
        lock(&self.trace).push(format!("{at:>8} {}", line.into()));
    }

    fn violation(&self, what: impl Into<String>) {
        let what = what.into();
        self.event(format!("VIOLATION {what}"));
        lock(&self.violations).push(what);
    }

    /// Sends one request to `node` and waits for its answer, bounded.
    async fn ask<T>(
        &self,
        node: NodeId,
        timeout: Duration,
        request: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, String> {
        let queue = lock(&self.registry).get(&node).cloned();
        let Some(queue) = queue else {
            return Err(format!("node {node} has not started"));
        };
        let (tx, rx) = oneshot::channel();
        if queue.send(request(tx)).await.is_err() {
            return Err(format!("node {node} is down"));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => Err(format!("node {node} went down during the request")),
            Err(_) => Err(format!("node {node} did not answer within {timeout:?}")),
        }
    }

    async fn probe(&self, node: NodeId) -> Result<Probe, String> {
        self.ask(node, PROBE_TIMEOUT, |reply| Request::Probe { reply })
            .await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn host_name(node: NodeId) -> String {
    format!("n{node}")
}

/// What each key may hold: the values of writes whose outcome is known, plus those that
/// may or may not have happened (failed or timed out). `None` is "no object".
#[derive(Debug, Default)]
struct Model {
    keys: BTreeMap<String, BTreeSet<Option<String>>>,
    /// The job each request id started, as answered.
    jobs: BTreeMap<String, String>,
}

impl Model {
    fn possible(&mut self, key: &str) -> &mut BTreeSet<Option<String>> {
        self.keys
            .entry(key.to_string())
            .or_insert_with(|| BTreeSet::from([None]))
    }
}

/// Runs one seed.
pub fn run(options: &Options) -> Outcome {
    letl_raft::runtime::seed_election_rng(options.seed);
    let shared = Arc::new(Shared::default());
    let model = Arc::new(Mutex::new(Model::default()));
    let dirs = tempfile::tempdir().map_err(|e| e.to_string());
    let mut sim = turmoil::Builder::new()
        .simulation_duration(SIM_DURATION_MAX)
        .tick_duration(TICK)
        .min_message_latency(LATENCY)
        .max_message_latency(LATENCY)
        .udp_capacity(UDP_QUEUE_MAX)
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_S))
        .rng_seed(options.seed)
        .build();

    let dirs = match dirs {
        Ok(dirs) => dirs,
        Err(e) => return failed_to_start(options.seed, format!("a temporary directory: {e}")),
    };
    let disks = match build_disks(&mut sim, options, &shared, dirs.path()) {
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
            sim.client("checker", async move {
                check(check_shared, check_model, nodes).await;
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
fn build_disks(
    sim: &mut turmoil::Sim<'_>,
    options: &Options,
    shared: &Arc<Shared>,
    dirs: &std::path::Path,
) -> Result<BTreeMap<NodeId, Arc<Disk>>, String> {
    let founder = Identity::found("sim", 1).map_err(|e| e.to_string())?;
    let ca = founder.ca().map_err(|e| e.to_string())?;
    let tier = TierName::new(TIER).map_err(|e| e.to_string())?;
    let mut disks = BTreeMap::new();
    let mut first: Option<NodeInfo> = None;
    for node in 1..=options.nodes {
        let identity = if node == 1 {
            founder.clone()
        } else {
            let tls = ca.issue_node(node).map_err(|e| e.to_string())?;
            let via = first.clone().ok_or("node 1 is registered first")?;
            Identity {
                cluster: founder.cluster.clone(),
                node_id: node,
                ca_pem: tls.ca_pem,
                ca_key_pem: founder.ca_key_pem.clone(),
                cert_pem: tls.cert_pem,
                key_pem: tls.key_pem,
                join_via: BTreeMap::from([(1, via)]),
            }
        };
        let cluster_dir = dirs.join(host_name(node));
        std::fs::create_dir_all(&cluster_dir).map_err(|e| e.to_string())?;
        let disk = Arc::new(Disk {
            raft: letl_raft::MemoryDb::default(),
            tier: Arc::new(SimTier::new(
                tier.clone(),
                Arc::new(SimClock),
                options.plant,
            )),
            index: Arc::new(MemoryIndex::default()),
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
        sim.host(name.as_str(), move || {
            let mut spec = spec.clone();
            async move {
                spec.addr.set_ip(turmoil::lookup(host_name(spec.node)));
                host::run(spec).await
            }
        });
        let ip = sim.lookup(name.as_str());
        if node == 1 {
            first = Some(NodeInfo {
                quic: std::net::SocketAddr::new(ip, QUIC_PORT).to_string(),
                http: std::net::SocketAddr::new(ip, 80).to_string(),
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
        prober(Arc::clone(&shared), options.nodes, workers_done)
    );
    shared.event("workload done");
    shared.workload_done.store(true, Ordering::SeqCst);
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

/// One workload worker: a seeded sequence of operations on its own keys and the shared
/// request ids, each checked against the model.
async fn worker(shared: Arc<Shared>, model: Arc<Mutex<Model>>, options: Options, w: u32) {
    let mut rng = StdRng::seed_from_u64(
        options.seed ^ (u64::from(w) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    for op in 0..options.ops_per_worker {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..300))).await;
        let node = rng.gen_range(1..=options.nodes);
        let key = format!("w{w}/k{}", rng.gen_range(0..KEYS_PER_WORKER));
        let roll = rng.gen_range(0..100);
        if roll < 40 {
            let size = if rng.gen_bool(0.05) {
                rng.gen_range(64 << 10..512 << 10)
            } else {
                rng.gen_range(1..16 << 10)
            };
            let mut data = vec![0u8; size];
            rng.fill_bytes(&mut data);
            let expected = ContentHash::of(&data).to_string();
            let data = Bytes::from(data);
            let answer = shared
                .ask(node, REQUEST_TIMEOUT, |reply| Request::Put {
                    key: key.clone(),
                    data,
                    reply,
                })
                .await
                .and_then(|r| r);
            let mut model = lock(&model);
            match &answer {
                Ok(hash) if *hash == expected => {
                    *model.possible(&key) = BTreeSet::from([Some(expected.clone())]);
                }
                Ok(hash) => shared.violation(format!(
                    "put {key} through node {node} answered {hash}, not the hash of its bytes {expected}"
                )),
                Err(_) => {
                    model.possible(&key).insert(Some(expected.clone()));
                }
            }
            shared.event(format!(
                "w{w} put n{node} {key} {size} {} -> {}",
                short(&expected),
                outcome(&answer.map(|h| short(&h)))
            ));
        } else if roll < 72 {
            let answer = shared
                .ask(node, REQUEST_TIMEOUT, |reply| Request::Get {
                    key: key.clone(),
                    reply,
                })
                .await
                .and_then(|r| r);
            if let Ok(read) = &answer {
                let mut model = lock(&model);
                let possible = model.possible(&key);
                if !possible.contains(read) {
                    shared.violation(format!(
                        "get {key} through node {node} read {}, expected one of {}",
                        shown(read),
                        possible.iter().map(shown).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            shared.event(format!(
                "w{w} get n{node} {key} -> {}",
                outcome(&answer.map(|r| shown(&r)))
            ));
        } else if roll < 82 {
            let answer = shared
                .ask(node, REQUEST_TIMEOUT, |reply| Request::Delete {
                    key: key.clone(),
                    reply,
                })
                .await
                .and_then(|r| r);
            let mut model = lock(&model);
            match answer {
                Ok(_) => *model.possible(&key) = BTreeSet::from([None]),
                Err(_) => {
                    model.possible(&key).insert(None);
                }
            }
            shared.event(format!("w{w} delete n{node} {key} -> {}", outcome(&answer)));
        } else if roll < 92 {
            let request = format!("r{}", rng.gen_range(0..REQUEST_IDS));
            let id = format!("job-w{w}-{op}");
            let command = Command::StartJob {
                id: id.clone(),
                node,
                pipeline: "sim".to_string(),
                request_id: Some(request.clone()),
                record_json: "{}".to_string(),
            };
            let answer = write(&shared, node, command).await;
            if let Ok(Response::Job { id: started, .. }) = &answer {
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
                "w{w} start-job n{node} {request} {id} -> {}",
                outcome(&answer.map(|r| format!("{r:?}")))
            ));
        } else {
            let name = format!("p{}", rng.gen_range(0..3));
            let command = if rng.gen_bool(0.5) {
                Command::RegisterPipeline {
                    name: name.clone(),
                    spec_json: format!("{{\"v\":{}}}", rng.gen_range(0..3)),
                    mounted: rng.gen_bool(0.5),
                    now_ms: 0,
                }
            } else {
                Command::SetMounted {
                    name: name.clone(),
                    mounted: rng.gen_bool(0.5),
                    now_ms: 0,
                }
            };
            let answer = write(&shared, node, command).await;
            shared.event(format!(
                "w{w} pipeline n{node} {name} -> {}",
                outcome(&answer.map(|r| format!("{r:?}")))
            ));
        }
    }
}

async fn write(shared: &Shared, node: NodeId, command: Command) -> Result<Response, String> {
    shared
        .ask(node, REQUEST_TIMEOUT, |reply| Request::Write {
            command,
            reply,
        })
        .await
        .and_then(|r| r)
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

/// After the faults healed: every node must come to the same state, take writes, and every
/// object must read as the model allows.
async fn check(shared: Arc<Shared>, model: Arc<Mutex<Model>>, nodes: u64) {
    shared.event("healed; checking");
    let all: Vec<NodeId> = (1..=nodes).collect();
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    // Liveness: a write through every node.
    for node in 1..=nodes {
        loop {
            let command = Command::RegisterPipeline {
                name: format!("live-{node}"),
                spec_json: "{}".to_string(),
                mounted: false,
                now_ms: 0,
            };
            if write(&shared, node, command).await.is_ok() {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                shared.violation(format!(
                    "node {node} took no write within {SETTLE_TIMEOUT:?} of healing"
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    // Agreement: every node applies the same state.
    let settled = loop {
        let mut probes = Vec::new();
        for node in 1..=nodes {
            probes.push(shared.probe(node).await);
        }
        let agreed = probes.iter().all(|p| {
            matches!((p, &probes[0]), (Ok(p), Ok(first))
                if p.applied == first.applied && p.digest == first.digest
                    && p.voters == all && p.published == all)
        });
        if agreed {
            break probes.into_iter().next().and_then(Result::ok);
        }
        if tokio::time::Instant::now() > deadline {
            shared.violation(format!(
                "the nodes did not agree within {SETTLE_TIMEOUT:?} of healing: {probes:?}"
            ));
            break None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if let Some(probe) = &settled {
        shared.event(format!(
            "agreed at index {} {}",
            probe.applied,
            short(&probe.digest)
        ));
        let mut seen = BTreeMap::new();
        compare(&shared, &mut seen, 1, probe);
    }
    // No acknowledged write lost: each key reads as the model allows, through every node.
    let keys: Vec<(String, BTreeSet<Option<String>>)> = lock(&model)
        .keys
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (i, (key, possible)) in keys.iter().enumerate() {
        let node = (i as u64 % nodes) + 1;
        let mut last = Err(String::new());
        for _ in 0..FINAL_READ_ATTEMPTS {
            last = shared
                .ask(node, REQUEST_TIMEOUT, |reply| Request::Get {
                    key: key.clone(),
                    reply,
                })
                .await
                .and_then(|r| r);
            if last.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        match &last {
            Ok(read) if possible.contains(read) => {}
            Ok(read) => shared.violation(format!(
                "after healing, {key} reads {} through node {node}; acknowledged: one of {}",
                shown(read),
                possible.iter().map(shown).collect::<Vec<_>>().join(", ")
            )),
            Err(e) => shared.violation(format!(
                "after healing, {key} cannot be read through node {node}: {e}"
            )),
        }
        shared.event(format!(
            "final {key} n{node} -> {}",
            outcome(&last.map(|r| shown(&r)))
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
                self.disks[&node].tier.crash();
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
                self.disks[&node].tier.set_write_errors(true);
                Fault::DiskErrors(node)
            }
            6 => {
                let node = self.rng.gen_range(1..=self.nodes);
                self.disks[&node].tier.set_full(true);
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
            Fault::DiskErrors(node) => self.disks[node].tier.set_write_errors(false),
            Fault::DiskFull(node) => self.disks[node].tier.set_full(false),
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

impl Shared {
    /// An event seen from outside the hosts (the fault schedule), at simulated time `at`.
    fn event_at(&self, at: Duration, line: String) {
        lock(&self.trace).push(format!("{:>8} {line}", at.as_millis()));
    }
}

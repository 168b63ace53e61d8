//! Starting and stopping a node.
//!
//! [`start`] takes already-built parts (a bound listener, tier backends and indexes) and a
//! shutdown future, so tests and the simulator drive the same code as production; [`run`]
//! builds the production parts from a config and calls it.
//!
//! Shutdown protocol: when `shutdown` resolves the HTTP server stops accepting and lets in-flight
//! requests finish and move jobs finish the transfers they have in flight and save their
//! progress (together at most `shutdown_grace` after the signal, then they are cut and resume
//! at the next start); then the supervisor drains every
//! tier actor, each flushing its index on stop; last the index database is flushed as a whole.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use letl_actors::{RestartPolicy, SupervisorArgs, SupervisorHandle, TierDirectory, TierSpec};
use letl_raft::cluster::{Cluster, ClusterError, ClusterSettings};
use letl_raft::{Command, NodeInfo, Response, TierEntry};
use letl_storage::{Clock, DbMoveJobs, FsTier, IndexDb, MoveLog, S3Tier, SystemClock, TierBackend};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::{NodeConfig, TierStore};
use crate::letl::Letl;
use crate::metrics::Metrics;
use crate::move_jobs::MoveJobs;
use crate::moves::Mover;
use crate::pipelines::{PipelineStores, Pipelines};
use crate::places::Places;
use crate::server::{AppState, router};
use crate::service::ObjectService;

/// File in the data dir holding the address the node listens on (useful with `--http :0`).
pub const HTTP_ADDR_FILE: &str = "http.addr";

/// What a node runs on, built by the caller. `L` is where HTTP connections come from: a TCP
/// listener, or the simulator's.
#[derive(Debug)]
pub struct NodeDeps<L = TcpListener> {
    pub listener: L,
    pub tiers: Vec<TierSpec>,
    pub token: String,
    /// The durable record of copies and moves (see `moves`).
    pub moves: Arc<dyn MoveLog>,
    /// Jobs that copy or move whole prefixes (see `move_jobs`).
    pub move_jobs: DbMoveJobs,
    /// Pipeline jobs and provenance.
    pub pipelines: PipelineStores,
    /// The replicated control plane: registrations and mounts.
    pub cluster: Cluster,
    /// Copies of each object on a local tier, on distinct nodes.
    pub replicas: usize,
    /// How long pipeline jobs may drain at shutdown.
    pub hard_terminate: Duration,
    /// The cache actor's bounds.
    pub cache: letl_actors::cache::CacheLimits,
    /// The LETL routes' default source directory.
    pub source_dir: Option<PathBuf>,
    /// The LETL routes' S3 source endpoint.
    pub source_s3: Option<letl_storage::S3Settings>,
    pub clock: Arc<dyn Clock>,
    pub shutdown_grace: Duration,
    /// Flushed as a whole once the tiers have stopped; absent when indexes live in memory.
    pub index_db: Option<IndexDb>,
}

/// Runs a node until `shutdown` resolves, then stops it cleanly.
pub async fn start<L>(
    deps: NodeDeps<L>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let directory = TierDirectory::default();
    let published: Vec<TierEntry> = deps
        .tiers
        .iter()
        .map(|tier| {
            let d = tier.backend.describe();
            TierEntry {
                name: d.name.to_string(),
                kind: d.kind,
                backend: d.backend,
                location: d.location,
            }
        })
        .collect();
    let supervisor = SupervisorHandle::start(SupervisorArgs {
        tiers: deps.tiers,
        directory: directory.clone(),
        restart_policy: RestartPolicy::default(),
    })
    .await
    .map_err(anyhow::Error::msg)?;

    // One signal, several listeners: the server's graceful shutdown, the grace timer, and the
    // move jobs' runners.
    let stopper = Arc::new(Stopper::default());
    let stop_rx = stopper.subscribe();
    let signal_stop = Arc::clone(&stopper);
    tokio::spawn(async move {
        shutdown.await;
        signal_stop.stop();
    });
    tokio::spawn(publish_tiers(
        deps.cluster.clone(),
        published,
        stop_rx.clone(),
    ));

    // Transfers a previous run left unfinished are finished before anything new is served;
    // then the move jobs it left running go on from where they stood.
    let places = Places::new(directory.clone(), deps.cluster.clone(), deps.replicas);
    let transforms = Arc::new(crate::transforms::registry());
    places.serve(Arc::clone(&transforms));
    let rebalancer = crate::rebalance::Rebalancer::start(
        places.clone(),
        Arc::clone(&deps.clock),
        stop_rx.clone(),
    );
    let mover = Mover::new(places.clone(), deps.moves, Arc::clone(&deps.clock));
    mover
        .resume()
        .await
        .map_err(|e| anyhow::anyhow!("resuming transfers: {}", e.message))?;
    let jobs = MoveJobs::new(
        places.clone(),
        mover.clone(),
        deps.move_jobs,
        Arc::clone(&deps.clock),
        stop_rx.clone(),
    );
    jobs.resume()
        .map_err(|e| anyhow::anyhow!("resuming move jobs: {}", e.message))?;
    let cache = letl_actors::cache::CacheHandle::start(deps.cache)
        .await
        .map_err(anyhow::Error::msg)?;
    let pipelines = Pipelines::new(
        deps.pipelines,
        deps.cluster.clone(),
        places.clone(),
        cache.clone(),
        deps.cache.max_bytes,
        Arc::clone(&transforms),
        Arc::clone(&deps.clock),
        stop_rx.clone(),
        deps.source_s3.clone(),
    );
    pipelines.resume();
    let provenance = pipelines.provenance_lookup();
    places.set_provenance(Arc::new(move |output: &str| {
        let record = provenance(output).map_err(|e| e.message)?;
        record
            .map(|r| serde_json::to_string(&r).map_err(|e| e.to_string()))
            .transpose()
    }));
    let letl = Letl::new(
        places.clone(),
        mover.clone(),
        deps.cluster.clone(),
        Arc::clone(&deps.clock),
        deps.source_dir,
        deps.source_s3,
    );
    let state = AppState {
        letl: Arc::new(letl),
        service: ObjectService::new(places, mover),
        jobs: jobs.clone(),
        transforms,
        pipelines: pipelines.clone(),
        stopper: Arc::clone(&stopper),
        cluster: deps.cluster.clone(),
        rebalancer,
        cache: cache.clone(),
        cache_limits: deps.cache,
        token: Arc::from(deps.token),
        metrics: Arc::new(Metrics::default()),
    };
    let addr = deps.listener.local_addr()?;
    info!(?addr, "listening for http");

    let mut server_stop = stop_rx.clone();
    let server = axum::serve(deps.listener, router(state)).with_graceful_shutdown(async move {
        let _ = server_stop.wait_for(|stop| *stop).await;
        info!("shutting down: no new requests; finishing those in flight");
    });
    let mut grace_stop = stop_rx;
    let grace = deps.shutdown_grace;
    tokio::select! {
        served = server.into_future() => served.context("http server")?,
        () = async move {
            let _ = grace_stop.wait_for(|stop| *stop).await;
            tokio::time::sleep(grace).await;
        } => warn!(grace_s = grace.as_secs(), "requests still in flight after the shutdown grace; cutting them"),
    }

    // Runners finish their transfers in flight while the tiers still serve them, within what is
    // left of the grace.
    let stopped_at = stopper.stopped_at();
    jobs.stopped(stopped_at + grace).await;
    // Pipeline jobs drain their queues, within `hard_terminate` of the stop.
    pipelines.stopped(stopped_at + deps.hard_terminate).await;
    supervisor.shutdown().await.map_err(anyhow::Error::msg)?;
    cache.stop();
    deps.cluster.shutdown().await;
    if let Some(db) = deps.index_db {
        tokio::task::spawn_blocking(move || db.flush())
            .await?
            .context("flushing the object index")?;
    }
    info!("node stopped");
    Ok(())
}

/// Times a node offers its tier definitions to the control plane after its start.
const PUBLISH_TIERS_ATTEMPTS: u32 = 120;
/// Pause between those attempts.
const PUBLISH_TIERS_PAUSE: Duration = Duration::from_secs(1);

/// Publishes this node's tiers in the control plane (`letl cluster status` shows them), unless
/// it holds them already; retried while the cluster has no quorum.
pub async fn publish_tiers(
    cluster: Cluster,
    tiers: Vec<TierEntry>,
    mut stop: watch::Receiver<bool>,
) {
    let node = cluster.node_id();
    for attempt in 1..=PUBLISH_TIERS_ATTEMPTS {
        let current = cluster.read(|s| s.tiers.get(&node).cloned()).await;
        if matches!(&current, Ok(Some(held)) if *held == tiers) {
            return;
        }
        let publish = Command::SetTiers {
            node,
            tiers: tiers.clone(),
        };
        match cluster.write(publish).await {
            Ok(Response::Done) => {
                info!(tiers = tiers.len(), "tiers published");
                return;
            }
            Ok(other) => {
                warn!(answer = ?other, "the control plane refused this node's tiers");
                return;
            }
            Err(e @ ClusterError::Refused(_)) => {
                warn!(error = %e, "the control plane refused this node's tiers");
                return;
            }
            Err(e) => debug!(attempt, error = %e, "tiers not published yet; retrying"),
        }
        tokio::select! {
            () = tokio::time::sleep(PUBLISH_TIERS_PAUSE) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
    warn!(
        attempts = PUBLISH_TIERS_ATTEMPTS,
        "could not publish this node's tiers; the next start tries again"
    );
}

/// Builds a production node from `config` and runs it until `shutdown`.
pub async fn run(
    config: NodeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("create data dir {}", config.data_dir.display()))?;
    let token = crate::token::load_or_create(&config.data_dir)?;
    let index_path = config.index_path();
    let index_db = tokio::task::spawn_blocking(move || IndexDb::open(&index_path)).await??;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut tiers = Vec::new();
    for tier in &config.tiers {
        let kind = tier.kind.to_string();
        let backend: Arc<dyn TierBackend> = match &tier.store {
            TierStore::Dir(path) => {
                // Staged files a crash left are logged by `open` itself.
                let (backend, _) =
                    FsTier::open(tier.name.clone(), &kind, path.clone(), tier.capacity_bytes)
                        .await
                        .with_context(|| format!("open tier `{}`", tier.name))?;
                info!(tier = %tier.name, path = %path.display(), "tier opened");
                Arc::new(backend)
            }
            TierStore::S3(settings) => {
                let (backend, report) = S3Tier::open(
                    tier.name.clone(),
                    &kind,
                    settings.clone(),
                    tier.capacity_bytes,
                )
                .await;
                if report.unreachable.is_none() {
                    info!(tier = %tier.name, endpoint = %settings.endpoint, bucket = %settings.bucket, "tier opened");
                }
                Arc::new(backend)
            }
        };
        tiers.push(TierSpec {
            backend,
            index: Arc::new(index_db.tier(&tier.name)?),
            clock: Arc::clone(&clock),
            object_bytes_max: config.object_bytes_max,
        });
    }
    let listener = TcpListener::bind(config.http)
        .await
        .with_context(|| format!("cannot listen on {}", config.http))?;
    let http_addr = listener.local_addr()?;
    write_http_addr(&config.data_dir, http_addr)?;
    let cluster = Cluster::open(ClusterSettings {
        dir: config.cluster_dir(),
        name: config.cluster.name.clone(),
        quic_listen: config.cluster.quic,
        advertise: NodeInfo {
            quic: config
                .cluster
                .advertise_quic
                .clone()
                .unwrap_or_else(|| config.cluster.quic.to_string()),
            http: config
                .cluster
                .advertise_http
                .clone()
                .unwrap_or_else(|| http_addr.to_string()),
        },
        clock: Arc::clone(&clock),
    })
    .await
    .context("opening the control plane")?;
    let deps = NodeDeps {
        listener,
        tiers,
        token,
        moves: Arc::new(index_db.moves()?),
        move_jobs: index_db.move_jobs()?,
        pipelines: PipelineStores::open(&index_db)?,
        cluster,
        replicas: config.cluster.replicas,
        hard_terminate: config.hard_terminate,
        cache: config.cache,
        source_dir: config.source_dir.clone(),
        source_s3: config.source_s3.clone(),
        clock,
        shutdown_grace: config.shutdown_grace,
        index_db: Some(index_db),
    };
    start(deps, shutdown).await
}

/// The node's one stop: set by a signal or by `letl node shutdown`; remembers when.
#[derive(Debug)]
pub struct Stopper {
    tx: watch::Sender<bool>,
    at: std::sync::OnceLock<tokio::time::Instant>,
}

impl Default for Stopper {
    fn default() -> Self {
        Self {
            tx: watch::channel(false).0,
            at: std::sync::OnceLock::new(),
        }
    }
}

impl Stopper {
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    pub fn stop(&self) {
        let _ = self.at.set(tokio::time::Instant::now());
        self.tx.send_replace(true);
    }

    /// When the stop came (now, if it has not).
    pub fn stopped_at(&self) -> tokio::time::Instant {
        self.at
            .get()
            .copied()
            .unwrap_or_else(tokio::time::Instant::now)
    }
}

fn write_http_addr(data_dir: &std::path::Path, addr: SocketAddr) -> anyhow::Result<()> {
    let path: PathBuf = data_dir.join(HTTP_ADDR_FILE);
    let tmp = data_dir.join(format!("{HTTP_ADDR_FILE}.tmp"));
    std::fs::write(&tmp, format!("http://{addr}\n"))
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

/// Installs SIGINT and SIGTERM handlers now (so a signal during start-up is not lost, nor
/// fatal) and returns a future that resolves on the first of them.
pub fn shutdown_signals() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("listen for SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("listen for SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => info!(signal = "SIGINT", "shutdown requested"),
            _ = terminate.recv() => info!(signal = "SIGTERM", "shutdown requested"),
        }
    })
}

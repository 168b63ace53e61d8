//! The `letl` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::api::{MoveJobInfo, ObjectInfo, TierInfo, TransferResponse};
use crate::client::{Client, Failure, Outcome, exit};
use crate::config::{DEFAULT_DATA_DIR, NodeConfig, Overrides};

#[derive(Debug, Parser)]
#[command(
    name = "letl",
    version,
    about = "letl: tiered object storage and ETL near the data"
)]
pub struct Cli {
    #[command(flatten)]
    pub connection: Connection,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Connection {
    /// The node's HTTP address.
    #[arg(
        long,
        global = true,
        env = "LETL_ADDR",
        default_value = "http://127.0.0.1:7070"
    )]
    pub addr: String,
    /// Admin token [default: read from <data-dir>/admin.token].
    #[arg(long, global = true, env = "LETL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The node's data directory [default: ./letl-data].
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start a node (with no flags: the single-node default in ./letl-data on 127.0.0.1:7070);
    /// `letl node shutdown` stops a running one cleanly.
    Node {
        #[command(subcommand)]
        action: Option<NodeAction>,
        /// TOML config file (see letl.example.toml).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Address for the HTTP API [default: 127.0.0.1:7070].
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
        /// Address for the QUIC endpoint other nodes use [default: the HTTP port + 1].
        #[arg(long, value_name = "ADDR")]
        quic: Option<String>,
    },
    /// The cluster: init, token, join, status, leave.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Store a file (FILE `-` reads stdin); a URI ending in `/` keeps the file's name.
    Put {
        /// The file to store, or `-` for stdin.
        file: String,
        /// Where: `tier:/key`, or `tier:/dir/` to keep the file's name.
        uri: String,
    },
    /// Fetch an object into FILE (default: its basename here), or to stdout with `-`.
    Get {
        /// The object, e.g. `ssd:/covid/NC_045512.fasta`.
        uri: String,
        /// A file or directory to write to, or `-` for stdout.
        file: Option<String>,
        /// Fetch the object through this transform (`md5`, `sha256`, `gzip`, `zstd`,
        /// `fasta-stats`, ...) without storing the result.
        #[arg(long, value_name = "KIND")]
        transform: Option<String>,
    },
    /// List objects under a prefix, e.g. `ssd:/covid/`.
    Ls {
        /// A tier and key prefix: `ssd:/`, `ssd:/covid/`, `ssd:/covid/NC_`.
        prefix: String,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Show an object's metadata.
    Stat {
        /// The object, e.g. `ssd:/covid/NC_045512.fasta`.
        uri: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove an object.
    Rm {
        /// The object to remove.
        uri: String,
    },
    /// Copy an object, within a tier or between tiers (hash-verified); a source ending in `/`
    /// copies every object under it, as one job with progress.
    Cp {
        /// The object to copy, or a prefix ending in `/` (`ssd:/covid/`, `ssd:/`).
        source: String,
        /// `tier:/key`, or `tier:/dir/` to keep the source's name (for a prefix: where the
        /// keys below it go).
        destination: String,
        /// Runs the copy once: the same id again returns the first result.
        #[arg(long, value_name = "ID")]
        request_id: Option<String>,
        /// For a prefix: print the job's request id and return without waiting.
        #[arg(long)]
        detach: bool,
    },
    /// Move an object: copy, verify the hash, then remove the source; a source ending in `/`
    /// moves every object under it, as one job with progress.
    Mv {
        /// The object to move, or a prefix ending in `/` (`ssd:/covid/`, `ssd:/`).
        source: String,
        /// `tier:/key`, or `tier:/dir/` to keep the source's name (for a prefix: where the
        /// keys below it go).
        destination: String,
        /// Runs the move once: the same id again returns the first result.
        #[arg(long, value_name = "ID")]
        request_id: Option<String>,
        /// For a prefix: print the job's request id and return without waiting.
        #[arg(long)]
        detach: bool,
    },
    /// List copies and moves: in progress, and recent ones with how they ended.
    Moves {
        #[arg(long)]
        json: bool,
        /// List the jobs that copy or move whole prefixes instead.
        #[arg(long, conflicts_with = "job")]
        jobs: bool,
        /// Show one prefix job's progress.
        #[arg(long, value_name = "ID")]
        job: Option<String>,
        /// With `--job`: wait for the job to finish (exits non-zero if objects failed).
        #[arg(long, requires = "job")]
        wait: bool,
    },
    /// List this node's tiers with their use and capacity.
    Tiers {
        #[arg(long)]
        json: bool,
    },
    /// Pipelines: register, list, show, mount, unmount, run, stats.
    Pipeline {
        #[command(subcommand)]
        action: PipelineAction,
    },
    /// Pipeline jobs: status, watch, cancel, retry.
    Job {
        #[command(subcommand)]
        action: JobAction,
    },
    /// The in-memory cache: put a file for a while, get it back by id.
    Cache {
        #[command(subcommand)]
        action: CacheAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheAction {
    /// Keep a file (`-`: stdin) in the cache; prints its id.
    Put {
        file: String,
        /// How long it lives (default: the node's `[cache] expire_in`, 1m).
        #[arg(long, value_name = "DURATION")]
        expire_in: Option<String>,
    },
    /// Write a record to FILE (default: stdout).
    Get { id: String, file: Option<String> },
}

#[derive(Debug, Subcommand)]
pub enum ClusterAction {
    /// Found a one-node cluster in --data-dir (the CA and this node's certificate); `letl
    /// node` does this itself on a fresh data dir.
    Init {
        /// TOML config file, for the cluster's name.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Issue a join token for a new node (ask the node at --addr).
    Token {
        /// How long the token is valid (`30m`, `2h`).
        #[arg(long, value_name = "DURATION", default_value = "1h")]
        ttl: String,
    },
    /// Make --data-dir a new member of the cluster that ADDR (a member's HTTP address) is in;
    /// then start it with `letl node`: it tells the cluster its addresses when it starts.
    Join {
        /// A member's HTTP address, like http://10.0.0.5:7070.
        #[arg(value_name = "ADDR")]
        member: String,
        /// A token from `letl cluster token`.
        #[arg(long)]
        token: String,
        /// TOML config file the node will start with (for its data dir).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Members, roles, leader, term, commit and applied index, last contact per node.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Take the node at --addr out of the cluster, then stop it.
    Leave,
    /// Objects moving to the nodes the current member set places them on.
    Rebalance {
        #[command(subcommand)]
        action: RebalanceAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum RebalanceAction {
    /// Each member's last pass over its objects, and whether all are placed; exits 0 once
    /// every object is where the current member set places it.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeAction {
    /// Stop the node at --addr as SIGTERM would: no new work, queues drained, progress saved.
    Shutdown,
}

#[derive(Debug, Subcommand)]
pub enum PipelineAction {
    /// Register (or update) a pipeline from a TOML or JSON spec (see pipelines/covid-md5.toml).
    Register { file: String },
    /// List registered pipelines.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a pipeline's spec, version and mount state.
    Show { name: String },
    /// Mount a pipeline so it can run.
    Mount { name: String },
    /// Unmount a pipeline: no new runs; running jobs finish.
    Unmount { name: String },
    /// Run a mounted pipeline; prints the job id.
    Run {
        name: String,
        /// The same id again returns the same job, never a second run.
        #[arg(long, value_name = "ID")]
        request_id: Option<String>,
        /// Wait for the job to end; exit non-zero if it failed.
        #[arg(long)]
        wait: bool,
    },
    /// A pipeline's figures over its jobs.
    Stats {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobAction {
    /// A job's state and figures.
    Status {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Follow a job with a progress bar until it ends; exit non-zero if it failed.
    Watch { id: String },
    /// Stop a running job: it takes in nothing more and finishes what it took in.
    Cancel { id: String },
    /// Run again only the objects a finished job dead-lettered, as a new job; prints its id.
    Retry {
        id: String,
        #[arg(long)]
        wait: bool,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Node {
            action: None,
            config,
            http,
            quic,
        } => run_node(config, http, quic, cli.connection.data_dir),
        Command::Cluster {
            action: ClusterAction::Init { config },
        } => cluster_init(config, cli.connection.data_dir),
        Command::Cluster {
            action:
                ClusterAction::Join {
                    member,
                    token,
                    config,
                },
        } => cluster_join(
            &member,
            &token,
            config,
            Overrides {
                data_dir: cli.connection.data_dir,
                ..Overrides::default()
            },
        ),
        command => run_client(&cli.connection, command),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("letl: error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

fn runtime() -> Outcome<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Failure::new(
                exit::FAILURE,
                format!("cannot start the async runtime: {e}"),
            )
        })
}

fn run_node(
    config: Option<PathBuf>,
    http: Option<String>,
    quic: Option<String>,
    data_dir: Option<PathBuf>,
) -> Outcome {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("LETL_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let overrides = Overrides {
        data_dir,
        http,
        quic,
    };
    let config = NodeConfig::load(config.as_deref(), &overrides)
        .map_err(|e| Failure::new(exit::BAD_INPUT, e.to_string()))?;
    runtime()?
        .block_on(async move {
            let signals = crate::node::shutdown_signals()?;
            crate::node::run(config, signals).await
        })
        .map_err(|e| Failure::new(exit::FAILURE, format!("{e:#}")))
}

fn cluster_init(config: Option<PathBuf>, data_dir: Option<PathBuf>) -> Outcome {
    let overrides = Overrides {
        data_dir,
        ..Overrides::default()
    };
    let config = NodeConfig::load(config.as_deref(), &overrides)
        .map_err(|e| Failure::new(exit::BAD_INPUT, e.to_string()))?;
    let identity = letl_raft::cluster::found(&config.cluster_dir(), &config.cluster.name)
        .map_err(cluster_failure)?;
    println!(
        "founded cluster `{}` with node {} in {}; start it with `letl node`",
        identity.cluster,
        identity.node_id,
        config.data_dir.display()
    );
    Ok(())
}

fn cluster_failure(e: letl_raft::cluster::ClusterError) -> Failure {
    use letl_raft::cluster::ClusterError;
    let code = match e {
        ClusterError::Refused(_) => exit::BAD_INPUT,
        ClusterError::Forbidden(_) => exit::UNAUTHORIZED,
        ClusterError::NoQuorum(_) | ClusterError::Failed(_) | ClusterError::Busy(_) => {
            exit::FAILURE
        }
    };
    Failure::new(code, e.to_string())
}

/// Prepares a data dir as a new member: asks the member at `addr` to admit it with the token,
/// checks the answer against the token, and saves the identity the node starts with.
fn cluster_join(addr: &str, token: &str, config: Option<PathBuf>, overrides: Overrides) -> Outcome {
    let config = NodeConfig::load(config.as_deref(), &overrides)
        .map_err(|e| Failure::new(exit::BAD_INPUT, e.to_string()))?;
    let dir = config.cluster_dir();
    if let Some(identity) = letl_raft::cluster::identity_in(&dir).map_err(cluster_failure)? {
        return Err(Failure::new(
            exit::CONFLICT,
            format!(
                "{} already belongs to cluster `{}` as node {}; join with a fresh --data-dir",
                config.data_dir.display(),
                identity.cluster,
                identity.node_id
            ),
        ));
    }
    let (ca_fingerprint, proof) = letl_raft::cluster::join_proof(token).map_err(cluster_failure)?;
    let (key_pem, csr_pem) = letl_raft::cluster::join_request().map_err(cluster_failure)?;
    let client = Client::new(addr, String::new())?;
    let grant = runtime()?.block_on(client.cluster_join(&crate::api::JoinRequest {
        ca_fingerprint,
        proof,
        csr_pem,
    }))?;
    let identity =
        letl_raft::cluster::save_joined(&dir, token, grant, key_pem).map_err(cluster_failure)?;
    println!(
        "joined cluster `{}` as node {}; start it with `letl node --data-dir {}` (it becomes a voter once it has caught up)",
        identity.cluster,
        identity.node_id,
        config.data_dir.display()
    );
    Ok(())
}

fn token(connection: &Connection) -> Outcome<String> {
    if let Some(token) = &connection.token {
        return Ok(token.clone());
    }
    let dir = connection
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
    crate::token::read(&crate::token::token_path(&dir)).map_err(|e| {
        Failure::new(
            exit::UNAUTHORIZED,
            format!("no admin token: pass --token, set LETL_TOKEN, or point --data-dir at the node's data dir ({e:#})"),
        )
    })
}

fn run_client(connection: &Connection, command: Command) -> Outcome {
    let client = Client::new(&connection.addr, token(connection)?)?;
    runtime()?.block_on(async move {
        match command {
            Command::Node {
                action: Some(NodeAction::Shutdown),
                ..
            } => {
                client.shutdown_node().await?;
                println!("shutdown requested");
            }
            Command::Node { action: None, .. } => unreachable!("handled by run_node"),
            Command::Cluster {
                action: ClusterAction::Init { .. } | ClusterAction::Join { .. },
            } => unreachable!("handled before connecting"),
            Command::Cluster {
                action: ClusterAction::Token { ttl },
            } => {
                let issued = client.cluster_token(Some(ttl)).await?;
                println!("{}", issued.token);
            }
            Command::Cluster {
                action: ClusterAction::Status { json },
            } => print_cluster_status(&client.cluster_status().await?, json)?,
            Command::Cluster {
                action:
                    ClusterAction::Rebalance {
                        action: RebalanceAction::Status { json },
                    },
            } => {
                let status = client.cluster_rebalance().await?;
                print_rebalance(&status, json)?;
                if !status.done {
                    return Err(Failure::new(
                        exit::FAILURE,
                        "the rebalance is not finished".to_string(),
                    ));
                }
            }
            Command::Cluster {
                action: ClusterAction::Leave,
            } => {
                client.cluster_leave().await?;
                println!("left the cluster; the node is stopping");
            }
            Command::Pipeline { action } => pipeline(&client, action).await?,
            Command::Job { action } => job(&client, action).await?,
            Command::Cache {
                action: CacheAction::Put { file, expire_in },
            } => {
                let record = client.cache_put(&file, expire_in.as_deref()).await?;
                println!("{}", record.id);
            }
            Command::Cache {
                action: CacheAction::Get { id, file },
            } => client.cache_get(&id, file.as_deref()).await?,
            Command::Put { file, uri } => print_written(&client.put(&file, &uri).await?),
            Command::Get {
                uri,
                file,
                transform,
            } => {
                if let Some((path, size, hash)) = client
                    .get(&uri, file.as_deref(), transform.as_deref())
                    .await?
                {
                    println!("{}\t{size}\t{hash}", path.display());
                }
            }
            Command::Ls { prefix, json } => {
                client
                    .list(&prefix, |object| {
                        if json {
                            println!("{}", serde_json::to_string(object).unwrap_or_default());
                        } else {
                            println!("{}\t{}\t{}", object.size, object.modified, object.uri);
                        }
                    })
                    .await?;
            }
            Command::Stat { uri, json } => {
                let info = client.stat(&uri).await?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&info).unwrap_or_default()
                    );
                } else {
                    println!("uri:      {}", info.uri);
                    println!("size:     {} ({})", info.size, human_bytes(info.size));
                    println!("hash:     {}", info.hash);
                    println!("version:  {}", info.version);
                    println!("created:  {}", info.created);
                    println!("modified: {}", info.modified);
                    if let Some(made) = &info.provenance {
                        println!(
                            "made by:  pipeline {} ({}), job {}",
                            made.pipeline, made.version, made.job
                        );
                        println!("from:     {} ({})", made.source, made.source_fingerprint);
                    }
                }
            }
            Command::Rm { uri } => {
                let info = client.remove(&uri).await?;
                println!("removed {}", info.uri);
            }
            Command::Cp {
                source,
                destination,
                request_id,
                detach,
            } => transfer(&client, &source, &destination, false, request_id, detach).await?,
            Command::Mv {
                source,
                destination,
                request_id,
                detach,
            } => transfer(&client, &source, &destination, true, request_id, detach).await?,
            Command::Moves {
                json,
                jobs: _,
                job: Some(id),
                wait,
            } => {
                let mut job = client.move_job(&id).await?;
                if wait {
                    job = client.wait_move_job(job).await?;
                }
                print_job(&job, json);
                if wait {
                    job_outcome(&job)?;
                }
            }
            Command::Moves {
                json, jobs: true, ..
            } => {
                for job in client.move_jobs().await?.jobs {
                    print_job(&job, json);
                }
            }
            Command::Moves { json, .. } => {
                for m in client.moves().await?.moves {
                    if json {
                        println!("{}", serde_json::to_string(&m).unwrap_or_default());
                    } else {
                        let state = match &m.error {
                            Some(error) => format!("failed: {error}"),
                            None => m.state.clone(),
                        };
                        println!(
                            "{}\t{}\t{}\t{} -> {}\t{}",
                            m.started, m.request_id, m.kind, m.source, m.destination, state
                        );
                    }
                }
            }
            Command::Tiers { json } => {
                let tiers = client.tiers().await?.tiers;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&tiers).unwrap_or_default()
                    );
                } else {
                    print_tiers(&tiers);
                }
            }
        }
        Ok(())
    })
}

/// `letl cp`/`letl mv`: one object, or (source ending in `/`) every object under a prefix as
/// a job, waited for unless `detach`.
async fn transfer(
    client: &Client,
    source: &str,
    destination: &str,
    remove_source: bool,
    request_id: Option<String>,
    detach: bool,
) -> Outcome {
    let is_prefix = letl_storage::PrefixUri::parse(source).is_ok_and(|p| p.is_directory());
    if !is_prefix {
        if detach {
            return Err(Failure::new(
                exit::BAD_INPUT,
                "--detach is for prefixes (a source ending in `/`); one object is moved at once",
            ));
        }
        print_transferred(
            &client
                .transfer(source, destination, remove_source, request_id)
                .await?,
        );
        return Ok(());
    }
    let job = client
        .start_move_job(source, destination, remove_source, request_id)
        .await?;
    if detach {
        println!("{}", job.request_id);
        return Ok(());
    }
    let job = client.wait_move_job(job).await?;
    print_job(&job, false);
    job_outcome(&job)
}

/// A job's line: request id, kind, source -> destination, state, objects and bytes done of
/// the total, failed objects; its failures follow on stderr.
fn print_job(job: &MoveJobInfo, json: bool) {
    if json {
        println!("{}", serde_json::to_string(job).unwrap_or_default());
        return;
    }
    println!(
        "{}\t{}\t{} -> {}\t{}\t{}/{} objects\t{}/{} bytes\t{} failed",
        job.request_id,
        job.kind,
        job.source,
        job.destination,
        job.state,
        job.objects_done,
        job.objects_total,
        job.bytes_done,
        job.bytes_total,
        job.objects_failed
    );
    for failure in &job.failures {
        eprintln!("letl: {}: {}", failure.key, failure.error);
    }
}

/// A finished job whose objects did not all make it is a failed command.
fn job_outcome(job: &MoveJobInfo) -> Outcome {
    if job.objects_failed == 0 {
        return Ok(());
    }
    Err(Failure::new(
        exit::FAILURE,
        format!(
            "{} of {} objects under {} could not be {}",
            job.objects_failed,
            job.objects_total,
            job.source,
            if job.kind == "mv" { "moved" } else { "copied" }
        ),
    ))
}

async fn pipeline(client: &Client, action: PipelineAction) -> Outcome {
    match action {
        PipelineAction::Register { file } => {
            print_pipeline_line(&client.register_pipeline(&file).await?)
        }
        PipelineAction::List { json } => {
            for p in client.pipelines().await?.pipelines {
                if json {
                    println!("{}", serde_json::to_string(&p).unwrap_or_default());
                } else {
                    print_pipeline_line(&p);
                }
            }
        }
        PipelineAction::Show { name } => {
            let p = client.pipeline(&name).await?;
            println!("{}", serde_json::to_string_pretty(&p).unwrap_or_default());
        }
        PipelineAction::Mount { name } => {
            print_pipeline_line(&client.mount_pipeline(&name, true).await?)
        }
        PipelineAction::Unmount { name } => {
            print_pipeline_line(&client.mount_pipeline(&name, false).await?)
        }
        PipelineAction::Run {
            name,
            request_id,
            wait,
        } => {
            let job = client.run_pipeline(&name, request_id).await?;
            println!("{}", job.id);
            if wait {
                let job = client.wait_job(job, false).await?;
                print_job_status(&job);
                job_result(&job)?;
            }
        }
        PipelineAction::Stats { name, json } => {
            let stats = client.pipeline_stats(&name).await?;
            if json {
                println!("{}", serde_json::to_string(&stats).unwrap_or_default());
            } else if let Some(fields) = stats.as_object() {
                for (key, value) in fields {
                    println!("{key}: {value}");
                }
            }
        }
    }
    Ok(())
}

async fn job(client: &Client, action: JobAction) -> Outcome {
    match action {
        JobAction::Status { id, json } => {
            let job = client.job(&id).await?;
            if json {
                println!("{}", serde_json::to_string(&job).unwrap_or_default());
            } else {
                print_job_status(&job);
            }
        }
        JobAction::Watch { id } => {
            let job = client.wait_job(client.job(&id).await?, true).await?;
            print_job_status(&job);
            job_result(&job)?;
        }
        JobAction::Cancel { id } => {
            let job = client.cancel_job(&id).await?;
            println!("cancel requested for {} ({})", job.id, job.pipeline);
        }
        JobAction::Retry { id, wait } => {
            let job = client.retry_job(&id).await?;
            println!("{}", job.id);
            if wait {
                let job = client.wait_job(job, false).await?;
                print_job_status(&job);
                job_result(&job)?;
            }
        }
    }
    Ok(())
}

/// `name  vN  mounted|unmounted`.
fn print_pipeline_line(p: &crate::api::PipelineInfo) {
    println!(
        "{}\tv{}\t{}",
        p.name,
        p.version,
        if p.mounted { "mounted" } else { "unmounted" }
    );
}

fn print_job_status(job: &crate::api::JobInfo) {
    let s = &job.stats;
    println!("job:        {}", job.id);
    println!(
        "pipeline:   {} (version {})",
        job.pipeline, job.pipeline_version
    );
    println!("state:      {}", job.state);
    println!("node:       {}", job.node);
    if let Some(error) = &job.error {
        println!("error:      {error}");
    }
    println!(
        "objects:    in {} ({}), out {} ({}), skipped {}, dead-lettered {}",
        s.objects_in,
        human_bytes(s.bytes_in),
        s.objects_out,
        human_bytes(s.bytes_out),
        s.skipped,
        s.dead_lettered
    );
    for (stage, st) in [
        ("extract", &s.extract),
        ("transform", &s.transform),
        ("load", &s.load),
    ] {
        println!(
            "{stage:<10}  workers {} (peak {}, provisioned {}), threshold breaches {}, restarts {}",
            st.workers, st.workers_peak, st.workers_provisioned, st.threshold_breaches, st.restarts
        );
    }
    println!("elapsed:    {:.3} s", job.elapsed_ms as f64 / 1000.0);
    println!("between nodes: {}", human_bytes(job.bytes_between_nodes));
    if let Some(parent) = &job.part_of {
        println!("part of:    {parent}");
    }
    for part in &job.parts {
        let p = &part.stats;
        println!(
            "  node {:<3} {:<11} in {} ({}), out {} ({}), skipped {}, dead-lettered {}, between nodes {}",
            part.node,
            part.state,
            p.objects_in,
            human_bytes(p.bytes_in),
            p.objects_out,
            human_bytes(p.bytes_out),
            p.skipped,
            p.dead_lettered,
            human_bytes(part.bytes_between_nodes)
        );
    }
    for letter in &job.dead_letters {
        eprintln!(
            "letl: dead letter: {} ({}): {}",
            letter.uri, letter.stage, letter.error
        );
    }
}

/// A job that did not succeed is a failed command.
fn job_result(job: &crate::api::JobInfo) -> Outcome {
    if job.state == "succeeded" {
        return Ok(());
    }
    Err(Failure::new(
        exit::FAILURE,
        format!(
            "job {} {}{}",
            job.id,
            job.state,
            match (&job.error, job.stats.dead_lettered) {
                (Some(e), _) => format!(": {e}"),
                (None, 0) => String::new(),
                (None, n) => format!(
                    ": {n} objects dead-lettered (`letl job retry {}` runs them again)",
                    job.id
                ),
            }
        ),
    ))
}

/// A copy or move: the written object's line, then its request id.
fn print_transferred(done: &TransferResponse) {
    let info = &done.object;
    println!(
        "{}\t{}\t{}\t{}",
        info.uri, info.size, info.hash, done.request_id
    );
}

/// One line per written object: URI, size, hash (tab-separated, URI first).
fn print_written(info: &ObjectInfo) {
    println!("{}\t{}\t{}", info.uri, info.size, info.hash);
}

fn print_tiers(tiers: &[TierInfo]) {
    let rows: Vec<[String; 6]> = tiers
        .iter()
        .map(|t| {
            [
                t.name.clone(),
                t.kind.clone(),
                t.objects.to_string(),
                human_bytes(t.used_bytes),
                t.capacity_bytes
                    .map_or_else(|| "unlimited".to_string(), human_bytes),
                format!("{}:{}", t.backend, t.location),
            ]
        })
        .collect();
    let header = ["NAME", "KIND", "OBJECTS", "USED", "CAPACITY", "LOCATION"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header);
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3], &row[4], &row[5]]);
    }
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `value` as pretty JSON on stdout.
fn print_json(value: &impl serde::Serialize) -> Outcome {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Failure::new(exit::FAILURE, e.to_string()))?;
    println!("{text}");
    Ok(())
}

fn print_rebalance(status: &crate::api::RebalanceResponse, json: bool) -> Outcome {
    if json {
        return print_json(status);
    }
    println!(
        "{}",
        if status.done {
            "every object is where the current member set places it"
        } else {
            "rebalancing"
        }
    );
    println!(
        "{:>4}  {:<7}  {:>6}  {:>8}  {:>7}  {:>10}  {:>7}  {:>11}  placed by",
        "node", "state", "passes", "scanned", "moved", "bytes", "removed", "left behind"
    );
    for m in &status.members {
        let placed_by: Vec<String> = m.placed_by.iter().map(u64::to_string).collect();
        println!(
            "{:>4}  {:<7}  {:>6}  {:>8}  {:>7}  {:>10}  {:>7}  {:>11}  {}",
            m.node,
            m.state,
            m.passes,
            m.scanned,
            m.moved,
            human_bytes(m.bytes_moved),
            m.removed,
            m.left_behind,
            if placed_by.is_empty() {
                "-".to_string()
            } else {
                placed_by.join(",")
            }
        );
        if let Some(error) = &m.last_error {
            eprintln!("letl: node {}: {error}", m.node);
        }
    }
    for missing in &status.unreachable {
        eprintln!("letl: no answer from {missing}");
    }
    Ok(())
}

fn print_cluster_status(status: &letl_raft::cluster::ClusterStatus, json: bool) -> Outcome {
    if json {
        return print_json(status);
    }
    let show = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    println!(
        "cluster {}: node {} is {}{}; leader {}, term {}, commit {}, applied {}",
        status.cluster,
        status.node_id,
        status.role,
        if status.joining { " (joining)" } else { "" },
        show(status.leader),
        status.term,
        show(status.commit),
        show(status.applied),
    );
    println!(
        "{:>4}  {:<7}  {:<8}  {:<21}  {:<21}  {:>7}  {:<12}  tiers",
        "id", "role", "state", "quic", "http", "matched", "last contact"
    );
    for member in &status.members {
        let state = if Some(member.id) == status.leader {
            "leader"
        } else {
            "-"
        };
        let contact = match (member.id == status.node_id, member.last_contact_ms) {
            (true, _) => "(this node)".to_string(),
            (false, Some(ms)) => format!("{ms} ms ago"),
            (false, None) => "never".to_string(),
        };
        println!(
            "{:>4}  {:<7}  {:<8}  {:<21}  {:<21}  {:>7}  {contact:<12}  {}",
            member.id,
            if member.voter { "voter" } else { "learner" },
            state,
            member.quic,
            member.http,
            show(member.matched),
            if member.tiers.is_empty() {
                "-".to_string()
            } else {
                member.tiers.join(",")
            },
        );
    }
    Ok(())
}

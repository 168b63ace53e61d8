//! `letl-simulation`: runs the deterministic cluster simulation.
//!
//! `--seed N` runs one seed and prints its trace hash; `--seeds A..B` sweeps seeds A to B-1,
//! each in its own process, several at once. A failing seed prints the command that replays it.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use letl_simulation::{Options, Plant, run};

#[derive(Debug, Parser)]
#[command(
    name = "letl-simulation",
    about = "Deterministic simulation of a letl cluster under faults"
)]
struct Args {
    /// Run this one seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Sweep the seeds A..B (B excluded), each in its own process.
    #[arg(long, value_name = "A..B")]
    seeds: Option<String>,
    /// Seeds run at once in a sweep (default: the machine's cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Plant a known bug the invariants must catch: ack-before-durable.
    #[arg(long)]
    plant: Option<Plant>,
    /// Run without faults.
    #[arg(long)]
    no_faults: bool,
    /// No node joins and leaves during the run (by default a fourth node joins, with a
    /// token, and leaves, drained).
    #[arg(long)]
    no_membership: bool,
    /// The default: a node joins and leaves during the run (kept for older replay commands).
    #[arg(long, hide = true, conflicts_with = "no_membership")]
    membership: bool,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 3)]
    nodes: u64,
    /// Copies of each object.
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// Operations per workload worker.
    #[arg(long, default_value_t = 40)]
    ops: u32,
    /// Print the whole trace of a single run.
    #[arg(long)]
    trace: bool,
    /// Show the nodes' logs (tracing, filtered by RUST_LOG) of a single run.
    #[arg(long)]
    logs: bool,
    /// Print one machine-readable line (used by sweeps).
    #[arg(long, hide = true)]
    summary: bool,
}

impl Args {
    fn options(&self, seed: u64) -> Options {
        Options {
            seed,
            nodes: self.nodes,
            replicas: self.replicas,
            ops_per_worker: self.ops,
            plant: self.plant,
            faults: !self.no_faults,
            membership: !self.no_membership,
            ..Options::new(seed)
        }
    }

    /// The flags a sweep passes on to each seed's process.
    fn passed_on(&self) -> Vec<String> {
        let mut flags = vec![
            format!("--nodes={}", self.nodes),
            format!("--replicas={}", self.replicas),
            format!("--ops={}", self.ops),
        ];
        if let Some(plant) = &self.plant {
            flags.push(format!("--plant={}", plant_name(*plant)));
        }
        if self.no_faults {
            flags.push("--no-faults".to_string());
        }
        if self.no_membership {
            flags.push("--no-membership".to_string());
        }
        flags
    }

    /// The command that replays `seed` with these flags.
    fn replay(&self, seed: u64) -> String {
        let mut command = format!("cargo run -p letl-simulation --release -- --seed {seed}");
        for flag in self.passed_on() {
            if flag != "--nodes=3" && flag != "--replicas=1" && flag != "--ops=40" {
                command.push(' ');
                command.push_str(&flag);
            }
        }
        command
    }
}

/// A sweep prints its progress after this many seeds.
const SWEEP_PROGRESS_EVERY: u64 = 50;

fn plant_name(plant: Plant) -> &'static str {
    match plant {
        Plant::AckBeforeDurable => "ack-before-durable",
    }
}

/// Nodes a simulated cluster may have (faults between pairs need two).
const NODES: std::ops::RangeInclusive<u64> = 2..=7;

fn main() -> ExitCode {
    let args = Args::parse();
    if !NODES.contains(&args.nodes) {
        eprintln!(
            "error: --nodes {}: a simulated cluster has {} to {} nodes",
            args.nodes,
            NODES.start(),
            NODES.end()
        );
        return ExitCode::from(2);
    }
    if args.logs {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .without_time()
            .init();
    }
    match (&args.seed, &args.seeds) {
        (Some(seed), _) => single(&args, *seed),
        (None, Some(range)) => match parse_range(range) {
            Ok((from, to)) => sweep(&args, from, to),
            Err(e) => {
                eprintln!("error: --seeds {range}: {e}");
                ExitCode::from(2)
            }
        },
        (None, None) => {
            eprintln!("error: give --seed N or --seeds A..B");
            ExitCode::from(2)
        }
    }
}

fn parse_range(range: &str) -> Result<(u64, u64), String> {
    let (from, to) = range
        .split_once("..")
        .ok_or("expected A..B, such as 0..200")?;
    let from: u64 = from.parse().map_err(|e| format!("`{from}`: {e}"))?;
    let to: u64 = to.parse().map_err(|e| format!("`{to}`: {e}"))?;
    if to <= from {
        return Err(format!("the range is empty ({to} is not above {from})"));
    }
    Ok((from, to))
}

fn single(args: &Args, seed: u64) -> ExitCode {
    let started = Instant::now();
    let outcome = run(&args.options(seed));
    if args.summary {
        // One line: seed, hash, events, violations, then the first violation.
        println!(
            "seed={} hash={} events={} violations={} first={}",
            outcome.seed,
            outcome.trace_hash,
            outcome.events,
            outcome.violations.len(),
            outcome
                .violations
                .first()
                .map_or("", String::as_str)
                .replace('\n', " ")
        );
    } else {
        if args.trace {
            for line in &outcome.trace {
                println!("{line}");
            }
        }
        println!(
            "seed {seed}: trace hash {} ({} events, {:.1} s simulated in {:.1} s)",
            outcome.trace_hash,
            outcome.events,
            outcome.sim_time.as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
        for violation in &outcome.violations {
            println!("  violation: {violation}");
        }
        if !outcome.violations.is_empty() {
            println!("  replay: {}", args.replay(seed));
        }
    }
    if outcome.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs seeds `from..to`, `jobs` processes at a time; prints each failure with its replay
/// command, and the rate.
fn sweep(args: &Args, from: u64, to: u64) -> ExitCode {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("error: cannot find this program to run each seed: {e}");
            return ExitCode::from(2);
        }
    };
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let started = Instant::now();
    let mut next = from;
    let mut running: Vec<(u64, std::process::Child)> = Vec::new();
    let mut failed: Vec<(u64, String)> = Vec::new();
    let mut done = 0u64;
    while next < to || !running.is_empty() {
        while running.len() < jobs && next < to {
            let child = std::process::Command::new(&exe)
                .arg(format!("--seed={next}"))
                .arg("--summary")
                .args(args.passed_on())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn();
            match child {
                Ok(child) => running.push((next, child)),
                Err(e) => failed.push((next, format!("could not start: {e}"))),
            }
            next += 1;
        }
        // Wait for the oldest; seeds take similar times.
        let (seed, child) = running.remove(0);
        let result = child.wait_with_output();
        done += 1;
        match result {
            Ok(output) => {
                let line = String::from_utf8_lossy(&output.stdout).trim().to_string();
                if !output.status.success() || !line.contains("violations=0") {
                    let why = line.split_once("first=").map_or_else(
                        || format!("exit {}: {line}", output.status),
                        |(_, v)| v.to_string(),
                    );
                    println!("seed {seed} FAILED: {why}");
                    println!("  replay: {}", args.replay(seed));
                    failed.push((seed, why));
                }
            }
            Err(e) => failed.push((seed, format!("lost its process: {e}"))),
        }
        if done.is_multiple_of(SWEEP_PROGRESS_EVERY) {
            let rate = done as f64 / started.elapsed().as_secs_f64();
            println!("{done}/{} seeds, {rate:.2} seeds/s", to - from);
            let _ = std::io::stdout().flush();
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "swept seeds {from}..{to}: {} runs in {seconds:.1} s ({:.2} seeds/s, {jobs} at a time); {} failed",
        to - from,
        (to - from) as f64 / seconds,
        failed.len()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

//! The benchmark harness: puts and gets a large file through a real node and copies the same
//! file with `cp` in the same run, alternating the commands so that drift in the machine's speed
//! hits them alike, and prints median times, throughput and ratios.
//!
//!     cargo build --release --bins && ./target/release/letl-bench
//!
//! `LETL_BENCH_MIB` sets the size (default 1024), `LETL_BENCH_RUNS` the runs per command
//! (default 5), `LETL_BENCH_DIR` where the files go (default: the temporary directory).
//!
//! A put is durable when it returns (the node fsyncs the file and its directory), so besides
//! plain `cp` the harness times `cp` followed by `sync` of the copy: the fair baseline for puts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use letl_tests::{TestNode, letl_bin, test_bytes};

/// Bytes of the source file written per step.
const WRITE_STEP_BYTES: usize = 8 << 20;

fn env_number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(text) => text
            .parse()
            .with_context(|| format!("{name}={text} is not a number")),
        Err(_) => Ok(default),
    }
}

fn timed(label: &str, command: &mut Command) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let out = command.output().with_context(|| format!("run {label}"))?;
    let elapsed = start.elapsed();
    if !out.status.success() {
        bail!("{label} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(elapsed)
}

fn sh(script: &str) -> Command {
    let mut command = Command::new("sh");
    command.arg("-c").arg(script);
    command
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn mib_per_s(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / time.as_secs_f64()
}

/// Peak resident memory of a process, from /proc.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn write_source(path: &Path, bytes: u64) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let block = test_bytes(WRITE_STEP_BYTES, 42);
    let mut left = bytes;
    let mut step = 0u64;
    while left > 0 {
        // Vary each block so nothing downstream can deduplicate or compress its way ahead.
        let n = usize::try_from(left.min(WRITE_STEP_BYTES as u64))?;
        let mut chunk = block[..n].to_vec();
        chunk[..8].copy_from_slice(&step.to_le_bytes());
        file.write_all(&chunk)?;
        left -= n as u64;
        step += 1;
    }
    file.flush()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mib = env_number("LETL_BENCH_MIB", 1024)?;
    let runs = env_number("LETL_BENCH_RUNS", 5)?;
    ensure!(
        mib > 0 && runs > 0,
        "LETL_BENCH_MIB and LETL_BENCH_RUNS must be positive"
    );
    let bytes = mib << 20;
    let parent = std::env::var_os("LETL_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let work = tempfile::tempdir_in(&parent).context("bench directory")?;
    let source = work.path().join("source.bin");
    let copy = work.path().join("copy.bin");
    let fetched = work.path().join("fetched.bin");
    eprintln!(
        "letl-bench: {mib} MiB, {runs} runs each, in {}",
        work.path().display()
    );
    write_source(&source, bytes)?;
    let source_text = source.display().to_string();

    let node = TestNode::start_in(work.path(), None);
    let letl = letl_bin();
    let letl_cmd = |args: &[&str]| {
        let mut command = Command::new(&letl);
        command
            .args(["--addr", &node.addr, "--data-dir"])
            .arg(&node.data_dir)
            .args(args);
        command
    };
    // Warm-up: every command once, so page cache and first-run costs are shared alike.
    timed("cp", Command::new("cp").arg(&source).arg(&copy))?;
    timed(
        "letl put",
        &mut letl_cmd(&["put", &source_text, "ssd:/bench/warm"]),
    )?;
    timed(
        "letl get",
        &mut letl_cmd(&[
            "get",
            "ssd:/bench/warm",
            fetched.to_str().unwrap_or_default(),
        ]),
    )?;

    let (mut cp, mut cp_sync, mut put, mut get) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        std::fs::remove_file(&copy).ok();
        cp.push(timed("cp", Command::new("cp").arg(&source).arg(&copy))?);
        std::fs::remove_file(&copy).ok();
        cp_sync.push(timed(
            "cp+sync",
            &mut sh(&format!(
                "cp '{}' '{}' && sync '{}'",
                source.display(),
                copy.display(),
                copy.display()
            )),
        )?);
        let uri = format!("ssd:/bench/run-{run}");
        put.push(timed(
            "letl put",
            &mut letl_cmd(&["put", &source_text, &uri]),
        )?);
        std::fs::remove_file(&fetched).ok();
        get.push(timed(
            "letl get",
            &mut letl_cmd(&["get", &uri, fetched.to_str().unwrap_or_default()]),
        )?);
        ensure!(
            std::fs::metadata(&fetched)?.len() == bytes,
            "fetched file has the wrong size"
        );
        // Keep the tier from filling the disk: each run's object is removed after its get.
        timed("letl rm", &mut letl_cmd(&["rm", &uri]))?;
    }
    let node_peak = peak_rss_mib(node.pid());
    let (cp, cp_sync, put, get) = (median(cp), median(cp_sync), median(put), median(get));

    let row = |name: &str, time: Duration| {
        println!(
            "| {name} | {:.3} s | {:.0} MiB/s |",
            time.as_secs_f64(),
            mib_per_s(bytes, time)
        );
    };
    println!("| command | median time | throughput |");
    println!("| --- | --- | --- |");
    row("cp", cp);
    row("cp + sync", cp_sync);
    row("letl put", put);
    row("letl get", get);
    println!();
    println!("put vs cp: {:.2}x", cp.as_secs_f64() / put.as_secs_f64());
    println!(
        "put vs cp + sync: {:.2}x",
        cp_sync.as_secs_f64() / put.as_secs_f64()
    );
    println!("get vs cp: {:.2}x", cp.as_secs_f64() / get.as_secs_f64());
    if let Some(peak) = node_peak {
        println!("node peak resident memory: {peak:.0} MiB (object size {mib} MiB)");
    }
    Ok(())
}

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
//!
//! Scenarios, chosen by the first argument:
//! - `put-get` (the default): the above.
//! - `s3`: put and get through an S3 tier on a local SeaweedFS (`weed`, or `$LETL_WEED`) against
//!   `aws s3 cp` to the same server (`pip install awscli`). Size `LETL_BENCH_S3_MIB`, 256.
//! - `move`: `letl mv` between two fs tiers against `cp` + `rm` (and `cp` + `sync` + `rm`).
//! - `pipeline`: an md5 pipeline over `LETL_BENCH_MIB` in 4 MiB objects on the ssd tier, with one
//!   and with two transform workers, against `md5sum` over the same files; and a zstd (level 1)
//!   pipeline against `zstd -1` over them.
//! - `raft`: 3 nodes on loopback; `LETL_BENCH_COMMANDS` (default 10,000) control-plane commands,
//!   mount/unmount pairs, from 4 concurrent clients (client i sends to node i mod 3, so two
//!   of three go through a follower); p50/p99 latency as each client sees it, and commits/s.
//! - `data-plane`: `LETL_BENCH_MIB` between two endpoints over the data plane against a raw
//!   quinn sender and receiver (same certificates and settings); then an md5 pipeline over
//!   `LETL_BENCH_MIB` in 4 MiB objects spread on 3 nodes, and the bytes it sent between them.

mod data_plane;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use letl_tests::{HttpConnection, TestNode, letl_bin, test_bytes};

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
    match std::env::args().nth(1).as_deref() {
        None | Some("put-get") => put_get(),
        Some("s3") => s3(),
        Some("move") => tier_move(),
        Some("pipeline") => pipeline(),
        Some("raft") => raft(),
        Some("data-plane") => {
            let mib = env_number("LETL_BENCH_MIB", 1024)?;
            let runs = usize::try_from(env_number("LETL_BENCH_RUNS", 5)?)?;
            data_plane::transfer(mib << 20, runs)?;
            data_plane::spread_md5(mib << 20)
        }
        Some(other) => {
            bail!("unknown scenario `{other}`: use put-get, s3, move, pipeline, raft or data-plane")
        }
    }
}

struct Table {
    bytes: u64,
}

impl Table {
    fn header(&self) {
        println!("| command | median time | throughput |");
        println!("| --- | --- | --- |");
    }

    fn row(&self, name: &str, time: Duration) {
        println!(
            "| {name} | {:.3} s | {:.0} MiB/s |",
            time.as_secs_f64(),
            mib_per_s(self.bytes, time)
        );
    }
}

fn ratio(name: &str, letl: Duration, baseline: Duration) {
    println!(
        "{name}: {:.2}x",
        baseline.as_secs_f64() / letl.as_secs_f64()
    );
}

fn letl_command(node: &TestNode, args: &[&str]) -> Command {
    let mut command = Command::new(letl_bin());
    command
        .args(["--addr", &node.addr, "--data-dir"])
        .arg(&node.data_dir)
        .args(args);
    command
}

/// `letl put`/`get` through an S3 tier against `aws s3 cp` to the same SeaweedFS.
fn s3() -> anyhow::Result<()> {
    let mib = env_number("LETL_BENCH_S3_MIB", 256)?;
    let runs = env_number("LETL_BENCH_RUNS", 5)?;
    let bytes = mib << 20;
    let parent = std::env::var_os("LETL_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let work = tempfile::tempdir_in(&parent).context("bench directory")?;
    let source = work.path().join("source.bin");
    let out = work.path().join("out.bin");
    write_source(&source, bytes)?;
    let server = letl_tests::seaweed::S3Server::start();
    let config = format!(
        "[tiers.cortx]\nkind = \"cortx\"\nbackend = \"s3\"\nendpoint = \"{}\"\nbucket = \"bench\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{}\"\n",
        server.endpoint,
        letl_tests::seaweed::S3_ACCESS_KEY,
        letl_tests::seaweed::S3_SECRET_KEY
    );
    let node = TestNode::start_in(work.path(), Some(&config));
    let aws = |args: &[&str]| {
        let mut command = Command::new("aws");
        command
            .args([
                "--endpoint-url",
                &server.endpoint,
                "s3",
                "cp",
                "--only-show-errors",
            ])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", letl_tests::seaweed::S3_ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", letl_tests::seaweed::S3_SECRET_KEY)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
            .env("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required");
        command
    };
    let source_text = source.display().to_string();
    let out_text = out.display().to_string();
    eprintln!(
        "letl-bench s3: {mib} MiB, {runs} runs each, SeaweedFS at {}",
        server.endpoint
    );
    timed("aws put", &mut aws(&[&source_text, "s3://bench/warm-aws"]))?;
    timed(
        "letl put",
        &mut letl_command(&node, &["put", &source_text, "cortx:/warm-letl"]),
    )?;
    let (mut aws_put, mut aws_get, mut letl_put, mut letl_get) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let aws_key = format!("s3://bench/aws-{run}");
        let letl_uri = format!("cortx:/letl-{run}");
        aws_put.push(timed("aws put", &mut aws(&[&source_text, &aws_key]))?);
        letl_put.push(timed(
            "letl put",
            &mut letl_command(&node, &["put", &source_text, &letl_uri]),
        )?);
        std::fs::remove_file(&out).ok();
        aws_get.push(timed("aws get", &mut aws(&[&aws_key, &out_text]))?);
        std::fs::remove_file(&out).ok();
        letl_get.push(timed(
            "letl get",
            &mut letl_command(&node, &["get", &letl_uri, &out_text]),
        )?);
        ensure!(
            std::fs::metadata(&out)?.len() == bytes,
            "fetched file has the wrong size"
        );
    }
    let (aws_put, aws_get, letl_put, letl_get) = (
        median(aws_put),
        median(aws_get),
        median(letl_put),
        median(letl_get),
    );
    let table = Table { bytes };
    table.header();
    table.row("aws s3 cp (put)", aws_put);
    table.row("letl put (s3 tier)", letl_put);
    table.row("aws s3 cp (get)", aws_get);
    table.row("letl get (s3 tier)", letl_get);
    println!();
    ratio("put vs aws s3 cp", letl_put, aws_put);
    ratio("get vs aws s3 cp", letl_get, aws_get);
    Ok(())
}

/// `letl mv` between two fs tiers against `cp` + `rm` of the same file.
fn tier_move() -> anyhow::Result<()> {
    let mib = env_number("LETL_BENCH_MIB", 1024)?;
    let runs = env_number("LETL_BENCH_RUNS", 5)?;
    let bytes = mib << 20;
    let parent = std::env::var_os("LETL_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let work = tempfile::tempdir_in(&parent).context("bench directory")?;
    let source = work.path().join("source.bin");
    write_source(&source, bytes)?;
    let (from_dir, to_dir) = (work.path().join("a"), work.path().join("b"));
    std::fs::create_dir_all(&from_dir)?;
    std::fs::create_dir_all(&to_dir)?;
    let node = TestNode::start_in(work.path(), None);
    let source_text = source.display().to_string();
    eprintln!("letl-bench move: {mib} MiB, {runs} runs each");
    let (mut cp_rm, mut cp_sync_rm, mut mv) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let (from, to) = (from_dir.join("f"), to_dir.join("f"));
        for (label, script, times) in [
            ("cp+rm", "cp '{from}' '{to}' && rm '{from}'", &mut cp_rm),
            (
                "cp+sync+rm",
                "cp '{from}' '{to}' && sync '{to}' && rm '{from}'",
                &mut cp_sync_rm,
            ),
        ] {
            std::fs::copy(&source, &from)?;
            std::fs::remove_file(&to).ok();
            let script = script
                .replace("{from}", &from.display().to_string())
                .replace("{to}", &to.display().to_string());
            times.push(timed(label, &mut sh(&script))?);
        }
        let (src_uri, dst_uri) = (format!("ssd:/m-{run}"), format!("hdd:/m-{run}"));
        timed(
            "letl put",
            &mut letl_command(&node, &["put", &source_text, &src_uri]),
        )?;
        mv.push(timed(
            "letl mv",
            &mut letl_command(&node, &["mv", &src_uri, &dst_uri]),
        )?);
        timed("letl rm", &mut letl_command(&node, &["rm", &dst_uri]))?;
    }
    let (cp_rm, cp_sync_rm, mv) = (median(cp_rm), median(cp_sync_rm), median(mv));
    let table = Table { bytes };
    table.header();
    table.row("cp + rm", cp_rm);
    table.row("cp + sync + rm", cp_sync_rm);
    table.row("letl mv (ssd -> hdd)", mv);
    println!();
    ratio("mv vs cp + rm", mv, cp_rm);
    ratio("mv vs cp + sync + rm", mv, cp_sync_rm);
    Ok(())
}

/// Objects of the pipeline scenario.
const PIPELINE_OBJECT_BYTES: u64 = 4 << 20;

fn pipeline() -> anyhow::Result<()> {
    let mib = env_number("LETL_BENCH_MIB", 1024)?;
    let runs = env_number("LETL_BENCH_RUNS", 3)?;
    let bytes = mib << 20;
    let objects = bytes / PIPELINE_OBJECT_BYTES;
    ensure!(
        objects > 0 && runs > 0,
        "LETL_BENCH_MIB must be at least 4 and LETL_BENCH_RUNS positive"
    );
    let parent = std::env::var_os("LETL_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let work = tempfile::tempdir_in(&parent).context("bench directory")?;
    let files = work.path().join("files");
    std::fs::create_dir_all(&files)?;
    let mut names = Vec::new();
    for i in 0..objects {
        let name = format!("o{i:04}");
        write_source(&files.join(&name), PIPELINE_OBJECT_BYTES)?;
        // Distinct objects: the first bytes differ.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(files.join(&name))?;
        file.write_all(&i.to_le_bytes())?;
        names.push(name);
    }
    let node = TestNode::start_in(work.path(), None);
    eprintln!("letl-bench pipeline: {objects} objects of 4 MiB, {runs} runs each");
    for name in &names {
        let source = files.join(name).display().to_string();
        timed_quiet(&mut letl_command(
            &node,
            &["put", &source, &format!("ssd:/bench/{name}")],
        ))?;
    }
    let specs = [
        ("md5-1w", "[[transform]]\nkind = \"md5\"", 1),
        ("md5-2w", "[[transform]]\nkind = \"md5\"", 2),
        ("zstd-1w", "[[transform]]\nkind = \"zstd\"\nlevel = 1", 1),
    ];
    for (name, transform, workers) in specs {
        let spec = format!(
            "name = \"{name}\"\nmounted = true\n[extract]\nfrom = \"ssd:/bench/\"\n{transform}\n[load]\nto = \"hdd:/{name}/\"\n[scaling.transform]\nworkers_min = {workers}\nworkers_max = {workers}\n"
        );
        let path = work.path().join(format!("{name}.toml"));
        std::fs::write(&path, spec)?;
        timed_quiet(&mut letl_command(
            &node,
            &["pipeline", "register", &path.display().to_string()],
        ))?;
    }
    let listed = names.join(" ");
    // Half the files each, for two md5sum processes at once: what two cores give this work
    // here without letl (the reference for two transform workers).
    let (first_half, second_half) = names.split_at(names.len() / 2);
    let (first_half, second_half) = (first_half.join(" "), second_half.join(" "));
    let mut md5sum_two = Vec::new();
    let (mut md5sum, mut zstd, mut zstd_files) = (Vec::new(), Vec::new(), Vec::new());
    let mut zstd_each_synced = Vec::new();
    let mut letl: [Vec<Duration>; 3] = Default::default();
    for run in 0..runs {
        md5sum.push(timed(
            "md5sum",
            &mut sh(&format!(
                "cd '{}' && md5sum {listed} > /dev/null",
                files.display()
            )),
        )?);
        md5sum_two.push(timed(
            "two md5sum at once",
            &mut sh(&format!(
                "cd '{}' && (md5sum {first_half} > /dev/null & md5sum {second_half} > /dev/null & wait)",
                files.display()
            )),
        )?);
        zstd.push(timed(
            "zstd -1",
            &mut sh(&format!(
                "cd '{}' && zstd -1 -q -c {listed} > /dev/null",
                files.display()
            )),
        )?);
        // What the pipeline does: one new compressed file per object, durable. A new directory
        // each run, as the pipeline gets a new target: overwriting the last run's files would
        // reuse their pages, where the pipeline's writes need new ones.
        let packed_dir = work.path().join(format!("zstd-out/run{run}"));
        std::fs::create_dir_all(&packed_dir)?;
        zstd_files.push(timed(
            "zstd -1 to files + sync",
            &mut sh(&format!(
                "cd '{}' && zstd -1 -q -f --output-dir-flat '{out}' {listed} && sync -f '{out}'",
                files.display(),
                out = packed_dir.display()
            )),
        )?);
        // Durable per object, as each pipeline output is: every file synced once written.
        let each_dir = work.path().join(format!("zstd-each/run{run}"));
        std::fs::create_dir_all(&each_dir)?;
        zstd_each_synced.push(timed(
            "zstd -1 each file synced",
            &mut sh(&format!(
                "cd '{}' && for f in {listed}; do zstd -1 -q -f \"$f\" -o '{out}'/\"$f\".zst && sync \"{out}/$f.zst\" || exit 1; done",
                files.display(),
                out = each_dir.display()
            )),
        )?);
        for (i, (name, _, _)) in specs.iter().enumerate() {
            // A new target each run (so a new recipe): nothing is skipped as already done.
            let path = work.path().join(format!("{name}.toml"));
            let spec: String = std::fs::read_to_string(&path)?
                .lines()
                .map(|line| {
                    if line.starts_with("to = ") {
                        format!("to = \"hdd:/{name}/run{run}/\"\n")
                    } else {
                        format!("{line}\n")
                    }
                })
                .collect();
            std::fs::write(&path, spec)?;
            timed_quiet(&mut letl_command(
                &node,
                &["pipeline", "register", &path.display().to_string()],
            ))?;
            letl[i].push(timed(
                name,
                &mut letl_command(&node, &["pipeline", "run", name, "--wait"]),
            )?);
            // Every object must have been made (a run that skipped them would time nothing).
            let listed = letl_command(&node, &["ls", &format!("hdd:/{name}/run{run}/")])
                .output()
                .context("list outputs")?;
            let made = String::from_utf8_lossy(&listed.stdout).lines().count() as u64;
            ensure!(
                made == objects,
                "{name} run {run} made {made} of {objects} outputs"
            );
        }
    }
    let table = Table { bytes };
    table.header();
    let md5sum = median(md5sum);
    let md5sum_two = median(md5sum_two);
    let zstd = median(zstd);
    let zstd_files = median(zstd_files);
    let zstd_each_synced = median(zstd_each_synced);
    let [one, two, packed] = letl.map(median);
    table.row("md5sum", md5sum);
    table.row(
        "two md5sum processes at once (half the files each)",
        md5sum_two,
    );
    table.row("letl md5 pipeline, 1 transform worker", one);
    table.row("letl md5 pipeline, 2 transform workers", two);
    table.row("zstd -1 (to /dev/null)", zstd);
    table.row("zstd -1 (to files, then sync)", zstd_files);
    table.row("zstd -1 (each file synced once written)", zstd_each_synced);
    table.row("letl zstd (level 1) pipeline, 1 transform worker", packed);
    println!();
    ratio("md5, 1 worker vs md5sum", one, md5sum);
    ratio("md5, 2 workers vs md5sum", two, md5sum);
    ratio(
        "two md5sum at once vs md5sum (this machine's two-core ceiling)",
        md5sum_two,
        md5sum,
    );
    ratio("zstd vs zstd -1 to /dev/null", packed, zstd);
    ratio("zstd vs zstd -1 to files + sync", packed, zstd_files);
    ratio(
        "zstd vs zstd -1 with each file synced (durable per object, as the pipeline)",
        packed,
        zstd_each_synced,
    );
    Ok(())
}

/// Runs a set-up command, failing the bench if it fails; not timed.
fn timed_quiet(command: &mut Command) -> anyhow::Result<()> {
    let out = command.output().context("run set-up command")?;
    ensure!(
        out.status.success(),
        "set-up command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn put_get() -> anyhow::Result<()> {
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

/// Concurrent clients of the raft scenario.
const RAFT_CLIENTS: usize = 4;

/// Control-plane commits through a 3-node cluster: mount/unmount pairs from concurrent clients.
fn raft() -> anyhow::Result<()> {
    let commands = env_number("LETL_BENCH_COMMANDS", 10_000)?;
    let mut nodes = vec![TestNode::cluster_member()];
    nodes[0].restart();
    let token = letl_command(&nodes[0], &["cluster", "token"]).output()?;
    ensure!(token.status.success(), "cluster token failed");
    let token = String::from_utf8(token.stdout)?.trim().to_string();
    for _ in 0..2 {
        let mut node = TestNode::cluster_member();
        let joined = node.cli(&["cluster", "join", &nodes[0].url(), "--token", &token]);
        ensure!(joined.code == 0, "join failed: {}", joined.stderr);
        node.restart();
        nodes.push(node);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = nodes[0].cli(&["cluster", "status", "--json"]);
        let voters = serde_json::from_str::<serde_json::Value>(&status.stdout)
            .ok()
            .and_then(|s| {
                s["members"]
                    .as_array()
                    .map(|m| m.iter().filter(|m| m["voter"] == true).count())
            });
        if voters == Some(3) {
            break;
        }
        ensure!(Instant::now() < deadline, "the cluster never had 3 voters");
        std::thread::sleep(Duration::from_millis(200));
    }
    let spec_dir = tempfile::tempdir()?;
    for client in 0..RAFT_CLIENTS {
        let spec = spec_dir.path().join(format!("p{client}.toml"));
        std::fs::write(
            &spec,
            format!(
                "name = \"bench-{client}\"\n[extract]\nfrom = \"ssd:/in{client}/\"\n[[transform]]\nkind = \"md5\"\n[load]\nto = \"hdd:/out{client}/\"\n"
            ),
        )?;
        let registered = nodes[0].cli(&["pipeline", "register", &spec.to_string_lossy()]);
        ensure!(
            registered.code == 0,
            "register failed: {}",
            registered.stderr
        );
    }
    let per_client = commands / RAFT_CLIENTS as u64;
    let started = Instant::now();
    let latencies: Vec<Vec<Duration>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..RAFT_CLIENTS)
            .map(|client| {
                let node = &nodes[client % nodes.len()];
                scope.spawn(move || -> anyhow::Result<Vec<Duration>> {
                    let mut times = Vec::new();
                    let mut connection = HttpConnection::open(node)?;
                    for i in 0..per_client {
                        let action = if i % 2 == 0 { "mount" } else { "unmount" };
                        let path = format!("/v1/pipelines/bench-{client}/{action}");
                        let start = Instant::now();
                        let (status, body) = connection.request("POST", &path, b"")?;
                        times.push(start.elapsed());
                        ensure!(status == 200, "{path}: {status} {body}");
                    }
                    Ok(times)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().map_err(|_| anyhow::anyhow!("a client panicked"))?)
            .collect::<anyhow::Result<_>>()
    })?;
    let elapsed = started.elapsed();
    let mut all: Vec<Duration> = latencies.into_iter().flatten().collect();
    all.sort();
    // The q-quantile, q in percent.
    let at = |q: usize| all[(all.len() * q / 100).min(all.len() - 1)];
    let through_follower: u64 =
        (0..RAFT_CLIENTS).filter(|c| c % 3 != 0).count() as u64 * per_client;
    println!(
        "{} commands from {RAFT_CLIENTS} clients ({through_follower} sent to followers) in {:.2} s",
        all.len(),
        elapsed.as_secs_f64()
    );
    println!("| p50 | p99 | max | commits/s |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| {:.2} ms | {:.2} ms | {:.2} ms | {:.0} |",
        at(50).as_secs_f64() * 1e3,
        at(99).as_secs_f64() * 1e3,
        all[all.len() - 1].as_secs_f64() * 1e3,
        all.len() as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}

//! `letl-bench data-plane`: object bytes between two nodes over letl's data plane (QUIC with
//! the cluster's mutual TLS, a header frame, then the body streamed) against a minimal raw
//! quinn sender and receiver with the same certificates, crypto and transport settings, in
//! the same process and run; and the bytes an md5 pipeline over `LETL_BENCH_MIB` spread on 3
//! nodes sends between them.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use bytes::Bytes;
use futures_util::StreamExt;
use letl_raft::data::{DATA_ANSWER_TIMEOUT, DataHandler};
use letl_raft::tls::ClusterCa;
use letl_raft::transport::{Handler, QuicTransport, Rpc, RpcReply};
use letl_storage::ByteStream;

/// Size of the pieces both senders write.
const PIECE_BYTES: usize = 1 << 20;

/// Takes a body in and answers how many bytes came.
struct Sink;

#[async_trait::async_trait]
impl DataHandler for Sink {
    async fn handle(&self, _: Vec<u8>, mut body: ByteStream) -> (Vec<u8>, Option<ByteStream>) {
        let mut total = 0u64;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => total += chunk.len() as u64,
                Err(e) => return (format!("failed: {e}").into_bytes(), None),
            }
        }
        (total.to_be_bytes().to_vec(), None)
    }
}

struct NoControl;

#[async_trait::async_trait]
impl Handler for NoControl {
    async fn handle(&self, _: Rpc) -> RpcReply {
        RpcReply::Failed("a benchmark node".to_string())
    }
}

/// `bytes` as pieces of one buffer (cloning a `Bytes` copies nothing).
fn body(bytes: u64, piece: &Bytes) -> ByteStream {
    let pieces = bytes / piece.len() as u64;
    let piece = piece.clone();
    Box::pin(futures_util::stream::iter(
        (0..pieces).map(move |_| Ok::<_, io::Error>(piece.clone())),
    ))
}

async fn over_data_plane(
    one: &QuicTransport,
    addr: &str,
    bytes: u64,
    piece: &Bytes,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let reply = one
        .data_call(
            2,
            addr,
            b"bench",
            Some(body(bytes, piece)),
            DATA_ANSWER_TIMEOUT,
        )
        .await?;
    let elapsed = start.elapsed();
    let got = u64::from_be_bytes(
        reply
            .header
            .as_slice()
            .try_into()
            .with_context(|| String::from_utf8_lossy(&reply.header).to_string())?,
    );
    ensure!(
        got == bytes,
        "the data plane delivered {got} of {bytes} bytes"
    );
    Ok(elapsed)
}

/// The minimal raw quinn exchange: one stream, the bytes written piece by piece, then the
/// receiver answers how many it read.
async fn over_raw_quinn(
    client: &quinn::Endpoint,
    server_addr: std::net::SocketAddr,
    bytes: u64,
    piece: &Bytes,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let connection = client
        .connect(server_addr, &letl_raft::tls::server_name(2))?
        .await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    for _ in 0..bytes / piece.len() as u64 {
        send.write_chunk(piece.clone()).await?;
    }
    send.finish()?;
    let mut answer = [0u8; 8];
    recv.read_exact(&mut answer).await?;
    let elapsed = start.elapsed();
    let got = u64::from_be_bytes(answer);
    ensure!(got == bytes, "raw quinn delivered {got} of {bytes} bytes");
    connection.close(0u32.into(), b"done");
    Ok(elapsed)
}

async fn raw_receiver(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            while let Ok((mut send, mut recv)) = connection.accept_bi().await {
                let mut total = 0u64;
                while let Ok(Some(chunk)) = recv.read_chunk(PIECE_BYTES, true).await {
                    total += chunk.bytes.len() as u64;
                }
                let _ = send.write_all(&total.to_be_bytes()).await;
                let _ = send.finish();
                let _ = send.stopped().await;
            }
        });
    }
}

/// Times both, alternating, and prints the table.
pub fn transfer(bytes: u64, runs: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let ca = ClusterCa::generate("bench")?;
        let (tls_one, tls_two) = (ca.issue_node(1)?, ca.issue_node(2)?);
        let local = "127.0.0.1:0".parse()?;
        let one = QuicTransport::bind(local, &tls_one)?;
        let two = QuicTransport::bind(local, &tls_two)?;
        let _serving = two.serve(Arc::new(NoControl));
        two.serve_data(Arc::new(Sink));
        let addr = two.local_addr()?.to_string();

        let raw_server = quinn::Endpoint::server(tls_two.server_config()?, local)?;
        let raw_addr = raw_server.local_addr()?;
        tokio::spawn(raw_receiver(raw_server));
        let mut raw_client = quinn::Endpoint::client(local)?;
        raw_client.set_default_client_config(tls_one.client_config()?);

        let piece = Bytes::from(letl_tests::test_bytes(PIECE_BYTES, 7));
        let (mut plane, mut raw) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            raw.push(over_raw_quinn(&raw_client, raw_addr, bytes, &piece).await?);
            plane.push(over_data_plane(&one, &addr, bytes, &piece).await?);
        }
        let (plane, raw) = (crate::median(plane), crate::median(raw));
        println!(
            "{} MiB between two endpoints on loopback, median of {runs} runs",
            bytes >> 20
        );
        println!("| path | time | MiB/s | vs raw quinn |");
        println!("| --- | --- | --- | --- |");
        println!(
            "| raw quinn | {:.3} s | {:.0} | 1.00x |",
            raw.as_secs_f64(),
            crate::mib_per_s(bytes, raw)
        );
        println!(
            "| letl data plane | {:.3} s | {:.0} | {:.2}x |",
            plane.as_secs_f64(),
            crate::mib_per_s(bytes, plane),
            raw.as_secs_f64() / plane.as_secs_f64()
        );
        Ok(())
    })
}

/// Object size of the spread pipeline's inputs.
const SPREAD_OBJECT_BYTES: usize = 4 << 20;

fn data_plane_bytes(node: &letl_tests::TestNode) -> anyhow::Result<u64> {
    let (status, text) = node.http("GET", "/metrics", b"");
    ensure!(status == 200, "metrics: {status}");
    let mut total = 0;
    for line in text.lines() {
        if let Some(value) = line.strip_prefix("letl_data_plane_bytes_sent_total ") {
            total += value.trim().parse::<u64>()?;
        }
    }
    Ok(total)
}

/// An md5 pipeline over `bytes` in 4 MiB objects put through node 1 of 3: the bytes the
/// job moved between nodes, and every node's data-plane bytes during the run.
pub fn spread_md5(bytes: u64) -> anyhow::Result<()> {
    let nodes = letl_tests::cluster::form(3, None);
    let objects = bytes / SPREAD_OBJECT_BYTES as u64;
    let base = letl_tests::test_bytes(SPREAD_OBJECT_BYTES, 11);
    for i in 0..objects {
        let mut data = base.clone();
        data[..8].copy_from_slice(&i.to_le_bytes());
        let (status, body) =
            nodes[0].http("PUT", &format!("/v1/objects/ssd/spread/o{i:04}"), &data);
        ensure!(status == 201, "put {i}: {status} {body}");
    }
    let mut held = Vec::new();
    for node in &nodes {
        let dir = node.tier_dir("ssd").join("spread");
        held.push(std::fs::read_dir(&dir).map(|d| d.count()).unwrap_or(0));
    }
    let spec = nodes[0].dir.path().join("spread-md5.toml");
    std::fs::write(
        &spec,
        "name = \"spread-md5\"\nmounted = true\n[extract]\nfrom = \"ssd:/spread/\"\n[[transform]]\nkind = \"md5\"\n[load]\nto = \"hdd:/spread-md5/\"\n",
    )?;
    let registered = nodes[0].cli(&["pipeline", "register", &spec.to_string_lossy()]);
    ensure!(registered.code == 0, "register: {}", registered.stderr);
    let before: u64 = nodes
        .iter()
        .map(data_plane_bytes)
        .sum::<anyhow::Result<u64>>()?;
    let start = Instant::now();
    let run = nodes[0].cli(&["pipeline", "run", "spread-md5", "--wait"]);
    let elapsed = start.elapsed();
    ensure!(run.code == 0, "run: {} {}", run.stdout, run.stderr);
    let after: u64 = nodes
        .iter()
        .map(data_plane_bytes)
        .sum::<anyhow::Result<u64>>()?;
    let id = run.stdout.lines().next().unwrap_or_default().to_string();
    let job: serde_json::Value =
        serde_json::from_str(&nodes[0].cli(&["job", "status", &id, "--json"]).stdout)?;
    let input = job["stats"]["bytes_in"].as_u64().unwrap_or(0);
    let between = job["bytes_between_nodes"].as_u64().unwrap_or(0);
    ensure!(
        input == objects * SPREAD_OBJECT_BYTES as u64,
        "the job read {input} bytes: {job}"
    );
    let per_node: Vec<String> = job["parts"]
        .as_array()
        .map(|parts| {
            parts
                .iter()
                .map(|p| format!("node {}: {}", p["node"], p["stats"]["objects_in"]))
                .collect()
        })
        .unwrap_or_default();
    println!(
        "md5 pipeline over {} MiB ({objects} objects of 4 MiB, held {held:?} by nodes 1-3) in {:.2} s; objects per part: {}",
        input >> 20,
        elapsed.as_secs_f64(),
        per_node.join(", ")
    );
    println!(
        "| bytes in | bytes between nodes (job) | ratio | data-plane body bytes during the run (all nodes) |"
    );
    println!("| --- | --- | --- | --- |");
    println!(
        "| {input} | {between} | {:.5}% | {} |",
        between as f64 * 100.0 / input as f64,
        after - before
    );
    Ok(())
}

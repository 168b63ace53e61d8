//! A node's life: restarts keep everything, SIGTERM lets in-flight requests finish and exits 0,
//! and SIGKILL in the middle of a put never leaves a partial object.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use letl_tests::{TestNode, blake3_of, test_bytes};

/// Starts `letl put - URI` and feeds it `first` bytes, returning the child with stdin open.
fn start_streaming_put(node: &TestNode, uri: &str, first: &[u8]) -> std::process::Child {
    let mut child = node
        .command(&["put", "-", uri])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.as_mut().unwrap().write_all(first).unwrap();
    child
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigkill_during_a_put_leaves_no_partial_object() {
    let mut node = TestNode::start(None);
    let head = test_bytes(4 << 20, 7);
    let mut put = start_streaming_put(&node, "ssd:/genomes/partial.fa", &head);
    // The put is underway once its staged file exists and holds bytes.
    wait_for("a staged file", || {
        std::fs::read_dir(node.tier_dir("ssd").join(".letl-tmp"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.metadata().map(|m| m.len() > 0).unwrap_or(false))
            })
            .unwrap_or(false)
    });
    node.kill();
    drop(put.stdin.take());
    let out = put.wait_with_output().unwrap();
    assert_ne!(
        out.status.code(),
        Some(0),
        "the interrupted put must not report success"
    );

    node.restart();
    node.cli(&["stat", "ssd:/genomes/partial.fa"])
        .fails(3, "no object");
    assert_eq!(
        node.staged_files("ssd"),
        0,
        "crash leftovers are removed at start"
    );
    assert!(!node.tier_dir("ssd").join("genomes/partial.fa").exists());
    let tiers: serde_json::Value =
        serde_json::from_str(node.cli(&["tiers", "--json"]).ok()).unwrap();
    let ssd = tiers
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ssd")
        .unwrap();
    assert_eq!(ssd["used_bytes"], 0, "the partial bytes are not counted");
}

#[test]
fn an_acknowledged_put_survives_sigkill_with_its_hash() {
    let mut node = TestNode::start(None);
    let data = test_bytes(3 << 20, 8);
    let file = node.dir.path().join("data.bin");
    std::fs::write(&file, &data).unwrap();
    node.cli(&["put", file.to_str().unwrap(), "hdd:/kept.bin"])
        .ok();
    node.kill();
    node.restart();
    let stat = node.cli(&["stat", "hdd:/kept.bin"]).ok().to_string();
    assert!(stat.contains(&blake3_of(&data)), "{stat}");
    // The index entry was durable before the put was acknowledged: nothing needed repair.
    let log = node.log();
    assert!(!log.contains("index repaired"), "{log}");
    assert!(log.contains("index matches tier contents"), "{log}");
    let out = node
        .command(&["get", "hdd:/kept.bin", "-"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, data);
}

#[test]
fn sigterm_finishes_in_flight_puts_then_exits_zero() {
    let mut node = TestNode::start(None);
    let head = test_bytes(1 << 20, 9);
    let tail = test_bytes(1 << 20, 10);
    let mut put = start_streaming_put(&node, "ssd:/in-flight", &head);
    wait_for("a staged file", || node.staged_files("ssd") > 0);
    node.signal_term();
    // The node no longer accepts new connections...
    let addr = node.addr.trim_start_matches("http://").to_string();
    wait_for("the listener to close", || {
        std::net::TcpStream::connect(&addr).is_err()
    });
    // ...but the put that was underway completes.
    put.stdin.as_mut().unwrap().write_all(&tail).unwrap();
    drop(put.stdin.take());
    let out = put.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "in-flight put failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = node.wait();
    assert_eq!(status.code(), Some(0), "{}", node.log());
    assert!(node.log().contains("node stopped"));

    node.restart();
    let mut whole = head;
    whole.extend_from_slice(&tail);
    let stat = node.cli(&["stat", "ssd:/in-flight"]).ok().to_string();
    assert!(stat.contains(&blake3_of(&whole)), "{stat}");
}

#[test]
fn restarts_keep_objects_versions_and_token() {
    let mut node = TestNode::start(None);
    let token = node.token();
    let file = node.dir.path().join("f");
    for round in 0..3u64 {
        std::fs::write(
            &file,
            test_bytes(1000 + usize::try_from(round).unwrap(), round),
        )
        .unwrap();
        node.cli(&["put", file.to_str().unwrap(), "cortx:/objects/f"])
            .ok();
    }
    assert_eq!(node.terminate().code(), Some(0));
    node.restart();
    assert_eq!(node.token(), token, "the token is written once");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(node.data_dir.join("admin.token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let stat = node.cli(&["stat", "cortx:/objects/f"]).ok().to_string();
    assert!(
        stat.contains("version:  3") && stat.contains("size:     1002 "),
        "{stat}"
    );
    // A restarted node counts what its tiers already hold against their capacity.
    let tiers: serde_json::Value =
        serde_json::from_str(node.cli(&["tiers", "--json"]).ok()).unwrap();
    let cortx = tiers
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "cortx")
        .unwrap();
    assert_eq!(
        (cortx["objects"].as_u64(), cortx["used_bytes"].as_u64()),
        (Some(1), Some(1002))
    );

    // An object replaced while the node was down by bytes of the same size is rehashed at
    // start (as after a crash between a rename and its index flush).
    assert_eq!(node.terminate().code(), Some(0));
    let same_size = test_bytes(1002, 99);
    std::fs::write(node.tier_dir("cortx").join("objects/f"), &same_size).unwrap();
    node.restart();
    let stat = node.cli(&["stat", "cortx:/objects/f"]).ok().to_string();
    assert!(stat.contains(&blake3_of(&same_size)), "{stat}");
    let out = node
        .command(&["get", "cortx:/objects/f", "-"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, same_size);

    // Files dropped into a tier directory while the node was down are indexed at start.
    assert_eq!(node.terminate().code(), Some(0));
    let outside = test_bytes(5000, 11);
    std::fs::create_dir_all(node.tier_dir("daos").join("dropped")).unwrap();
    std::fs::write(node.tier_dir("daos").join("dropped/in.bin"), &outside).unwrap();
    std::fs::remove_file(node.tier_dir("cortx").join("objects/f")).unwrap();
    node.restart();
    let stat = node.cli(&["stat", "daos:/dropped/in.bin"]).ok().to_string();
    assert!(stat.contains(&blake3_of(&outside)), "{stat}");
    node.cli(&["stat", "cortx:/objects/f"])
        .fails(3, "no object");
}

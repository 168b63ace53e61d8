//! S3 tiers on a real S3-compatible server (SeaweedFS on 127.0.0.1), driven through the CLI.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use letl_tests::seaweed::{S3_SECRET_KEY, S3Server};
use letl_tests::{TestNode, blake3_of, test_bytes};

fn node_with(server: &S3Server, secret: &str) -> TestNode {
    let config = format!(
        "[tiers.ssd]\nkind = \"ssd\"\n{}",
        server.tier_toml("cortx", "cortx", "letl-test", secret)
    );
    TestNode::start(Some(&config))
}

fn write(node: &TestNode, name: &str, data: &[u8]) -> String {
    let path = node.dir.path().join(name);
    std::fs::write(&path, data).unwrap();
    path.display().to_string()
}

fn fetch(node: &TestNode, uri: &str) -> Vec<u8> {
    let out = node.command(&["get", uri, "-"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn s3_tier_stores_lists_moves_and_deletes() {
    let server = S3Server::start();
    let mut node = node_with(&server, S3_SECRET_KEY);

    // Small, empty and multipart (40 MiB in 5 MiB parts) objects round-trip with their hashes.
    let small = test_bytes(1_000, 1);
    let big = test_bytes(40 << 20, 2);
    let small_file = write(&node, "small", &small);
    let big_file = write(&node, "big", &big);
    let empty_file = write(&node, "empty", b"");
    let out = node
        .cli(&["put", &big_file, "cortx:/genomes/big.fa"])
        .ok()
        .to_string();
    assert!(out.contains(&blake3_of(&big)), "{out}");
    node.cli(&["put", &small_file, "cortx:/genomes/small.fa"])
        .ok();
    node.cli(&["put", &empty_file, "cortx:/empty"]).ok();
    assert_eq!(fetch(&node, "cortx:/genomes/big.fa"), big);
    assert_eq!(fetch(&node, "cortx:/genomes/small.fa"), small);
    assert!(fetch(&node, "cortx:/empty").is_empty());
    let listed = node.cli(&["ls", "cortx:/genomes/"]).ok().to_string();
    let uris: Vec<&str> = listed
        .lines()
        .map(|l| l.rsplit('\t').next().unwrap())
        .collect();
    assert_eq!(uris, ["cortx:/genomes/big.fa", "cortx:/genomes/small.fa"]);

    // Moves both ways between a local tier and the endpoint keep the bytes.
    node.cli(&["mv", "cortx:/genomes/small.fa", "ssd:/staged/"])
        .ok();
    assert!(node.cli(&["stat", "cortx:/genomes/small.fa"]).code == 3);
    assert_eq!(fetch(&node, "ssd:/staged/small.fa"), small);
    node.cli(&["mv", "ssd:/staged/small.fa", "cortx:/archive/small.fa"])
        .ok();
    assert_eq!(fetch(&node, "cortx:/archive/small.fa"), small);
    node.cli(&["cp", "cortx:/genomes/big.fa", "ssd:/big.fa"])
        .ok();
    assert_eq!(fetch(&node, "ssd:/big.fa"), big);

    // Overwrite and delete.
    node.cli(&["put", &small_file, "cortx:/genomes/big.fa"])
        .ok();
    assert!(
        node.cli(&["stat", "cortx:/genomes/big.fa"])
            .ok()
            .contains("version:  2")
    );
    node.cli(&["rm", "cortx:/genomes/big.fa"]).ok();
    node.cli(&["get", "cortx:/genomes/big.fa", "-"])
        .fails(3, "no object");

    let tiers: serde_json::Value =
        serde_json::from_str(node.cli(&["tiers", "--json"]).ok()).unwrap();
    let cortx = tiers
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "cortx")
        .unwrap();
    assert_eq!(
        (cortx["backend"].as_str(), cortx["objects"].as_u64()),
        (Some("s3"), Some(2))
    );
    assert_eq!(cortx["used_bytes"], small.len() as u64);
    assert!(cortx["location"].as_str().unwrap().ends_with("/letl-test"));

    // A restart re-reads the endpoint: the objects and their metadata are all there.
    assert_eq!(node.terminate().code(), Some(0));
    node.restart();
    assert_eq!(fetch(&node, "cortx:/archive/small.fa"), small);
    assert!(!node.log().contains("index repaired"), "{}", node.log());
}

#[test]
fn an_endpoint_that_is_down_fails_its_tier_only() {
    let mut server = S3Server::start();
    let endpoint = server.endpoint.clone();
    server.stop();
    let node = node_with(&server, S3_SECRET_KEY);
    let file = write(&node, "f", b"data");
    node.cli(&["put", &file, "cortx:/x"])
        .fails(1, &format!("endpoint {endpoint} is unreachable"));
    node.cli(&["ls", "cortx:/"]).ok();
    // The rest of the node works.
    node.cli(&["put", &file, "ssd:/x"]).ok();
    let tiers = node.cli(&["tiers"]).ok().to_string();
    assert!(tiers.contains("cortx") && tiers.contains("ssd"), "{tiers}");
    node.cli(&["mv", "ssd:/x", "cortx:/x"])
        .fails(1, "unreachable");
    assert_eq!(
        fetch(&node, "ssd:/x"),
        b"data",
        "a failed move keeps its source"
    );
}

#[test]
fn wrong_credentials_get_a_clear_error() {
    let server = S3Server::start();
    let node = node_with(&server, "not-the-secret");
    let file = write(&node, "f", b"data");
    node.cli(&["put", &file, "cortx:/x"]).fails(
        1,
        &format!("endpoint {} refused the credentials", server.endpoint),
    );
    node.cli(&["put", &file, "ssd:/x"]).ok();
}

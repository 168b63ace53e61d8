//! Forming clusters of real nodes and waiting for them to settle.

use std::time::{Duration, Instant};

use crate::TestNode;

/// Longest wait for a cluster to reach a state (an election takes 0.5 to 1 s; a join a few).
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

pub fn status(node: &TestNode) -> serde_json::Value {
    serde_json::from_str(node.cli(&["cluster", "status", "--json"]).ok()).expect("status json")
}

/// Waits until `check` holds for `node`'s status; returns that status.
#[track_caller]
pub fn wait_status(
    node: &TestNode,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let run = node.cli(&["cluster", "status", "--json"]);
        if run.code == 0 {
            let status: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
            if check(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "never {what}: {status}");
        } else {
            assert!(Instant::now() < deadline, "never {what}: {}", run.stderr);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn voters(status: &serde_json::Value) -> usize {
    status["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter(|m| m["voter"] == true)
        .count()
}

/// `node` joins `member`'s cluster with `token`, then starts.
pub fn join(node: &mut TestNode, member: &TestNode, token: &str) {
    let out = node
        .cli(&["cluster", "join", &member.url(), "--token", token])
        .ok()
        .to_string();
    assert!(out.contains("joined cluster"), "{out}");
    node.restart();
}

/// `size` nodes with `config`: the first founds the cluster, the others join it; returns once
/// every node sees all as voters with their tiers published.
pub fn form(size: usize, config: Option<&str>) -> Vec<TestNode> {
    let mut nodes = vec![TestNode::cluster_member_with(config)];
    nodes[0].restart();
    wait_status(&nodes[0], "a leader", |s| s["leader"] == 1);
    let token = nodes[0].cli(&["cluster", "token"]).ok().trim().to_string();
    for _ in 1..size {
        let mut node = TestNode::cluster_member_with(config);
        join(&mut node, &nodes[0], &token);
        nodes.push(node);
    }
    // Each node places objects by its own view of the members: wait for every view.
    for node in &nodes {
        wait_status(node, "every member a voter with its tiers", |s| {
            voters(s) == size
                && s["members"].as_array().expect("members").iter().all(|m| {
                    m["tiers"]
                        .as_array()
                        .is_some_and(|t| t.iter().any(|name| name == "ssd"))
                })
        });
    }
    nodes
}

/// Runs an idempotent command (a read, a run under a request id) until it succeeds: right
/// after an election or a restart, the cluster answers "try again" (exit 1, HTTP 503) for a
/// moment. Any other failure, or one lasting past [`SETTLE_TIMEOUT`], fails the test.
#[track_caller]
pub fn settled_ok(node: &TestNode, args: &[&str]) -> String {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let run = node.cli(args);
        if run.code == 0 {
            return run.stdout;
        }
        assert!(
            run.code == 1 && Instant::now() < deadline,
            "{args:?} failed: {run:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

//! Three real `letl node` processes on loopback form a cluster over QUIC. The story, step by
//! step: node 1 founds it and issues a token, nodes 2 and 3 join; a pipeline registered and
//! mounted through node 1 is seen through node 3; the leader is SIGKILLed and another is
//! elected with everything intact; an unmount goes through a surviving follower; the killed
//! node restarts and catches up; with two of three stopped, writes through the survivor fail
//! with "no quorum" and nothing is half-applied. Joining with a wrong token, or one from
//! another cluster, is refused. Request ids are the cluster's: a pipeline run's request id
//! gives the same job through any node, and a LETL route's request id used through one node
//! is refused through another.

use std::time::Instant;

use letl_tests::TestNode;
use letl_tests::cluster::{join, settled_ok, status, voters, wait_status};

const SPEC: &str = "name = \"covid-md5\"\n[extract]\nfrom = \"ssd:/covid/\"\n[[transform]]\nkind = \"md5\"\n[load]\nto = \"hdd:/covid-md5/\"\n";

fn show(node: &TestNode) -> serde_json::Value {
    let shown = settled_ok(node, &["pipeline", "show", "covid-md5"]);
    serde_json::from_str(&shown).unwrap_or_else(|_| panic!("show json: {shown}"))
}

#[test]
fn three_nodes_keep_registrations_and_mounts_through_a_leader_kill_and_refuse_without_quorum() {
    // Node 1 founds the cluster (a fresh data dir, no flags beyond its ports).
    let mut nodes = vec![TestNode::cluster_member()];
    nodes[0].restart();
    let founded = wait_status(&nodes[0], "a leader", |s| s["leader"] == 1);
    assert_eq!(founded["role"], "leader");
    assert_eq!(voters(&founded), 1);

    // It issues a token; nodes 2 and 3 join with it and become voters.
    let token = nodes[0].cli(&["cluster", "token"]).ok().trim().to_string();
    assert!(token.starts_with("letl1."), "{token}");
    for _ in 0..2 {
        let mut node = TestNode::cluster_member();
        join(&mut node, &nodes[0], &token);
        nodes.push(node);
    }
    let full = wait_status(&nodes[0], "three voters", |s| voters(s) == 3);
    let ids: Vec<u64> = full["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    // Each member publishes its tiers.
    wait_status(&nodes[0], "every member's tiers", |s| {
        s["members"].as_array().unwrap().iter().all(|m| {
            m["tiers"]
                .as_array()
                .is_some_and(|t| t.iter().any(|name| name == "ssd"))
        })
    });
    let human = nodes[0].cli(&["cluster", "status"]).ok().to_string();
    assert!(human.contains("leader 1"), "{human}");
    assert!(human.contains("ms ago"), "{human}");

    // Register and mount through node 1; node 3 sees it.
    let spec = nodes[0].dir.path().join("covid-md5.toml");
    std::fs::write(&spec, SPEC).unwrap();
    nodes[0]
        .cli(&["pipeline", "register", spec.to_str().unwrap()])
        .ok();
    nodes[0].cli(&["pipeline", "mount", "covid-md5"]).ok();
    let seen = show(&nodes[2]);
    assert_eq!(seen["mounted"], true, "{seen}");
    assert_eq!(seen["version"], 1, "{seen}");

    // A run through node 1 under a request id; the same id through node 3 is the same job,
    // never a second run, and node 2 sees the job (run by node 1) and how it ended.
    let input = nodes[0].dir.path().join("a.fa");
    std::fs::write(&input, b">a\nACGT\n").unwrap();
    nodes[0]
        .cli(&["put", input.to_str().unwrap(), "ssd:/covid/a.fa"])
        .ok();
    // A request id makes the run safe to repeat while the new cluster settles.
    let first = settled_ok(
        &nodes[0],
        &[
            "pipeline",
            "run",
            "covid-md5",
            "--request-id",
            "run-1",
            "--wait",
        ],
    )
    .lines()
    .next()
    .unwrap()
    .to_string();
    let again = nodes[2]
        .cli(&["pipeline", "run", "covid-md5", "--request-id", "run-1"])
        .ok()
        .lines()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(again, first);
    let job: serde_json::Value =
        serde_json::from_str(nodes[1].cli(&["job", "status", &first, "--json"]).ok()).unwrap();
    assert_eq!(job["node"], 1, "{job}");
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["stats"]["objects_out"], 1, "{job}");
    let jobs: serde_json::Value =
        serde_json::from_str(&nodes[2].http("GET", "/v1/jobs?pipeline=covid-md5", b"").1).unwrap();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1, "{jobs}");

    // A LETL write's request id, used through node 1, is taken through node 2 as well.
    let write = |node: &TestNode, destination: &str| {
        let body = format!(
            r#"{{"destination_uri": "{destination}", "source_uri": "file://{}", "request_id": "letl-1"}}"#,
            input.display()
        );
        node.http("POST", "/cortx/write", body.as_bytes())
    };
    let (code, answer) = write(&nodes[0], "in");
    assert_eq!(code, 200, "{answer}");
    let (code, answer) = write(&nodes[1], "elsewhere");
    assert_eq!(code, 409, "{answer}");
    assert!(
        answer.contains("request_id `letl-1` was already used"),
        "{answer}"
    );
    // So is a copy's request id: the same id through node 1 again is the same copy, through
    // node 2 it is refused, naming the node that took it.
    let copy_as = |node: &TestNode, id: &str| {
        node.cli(&["cp", "ssd:/covid/a.fa", "hdd:/copies/", "--request-id", id])
    };
    let copy = |node: &TestNode| copy_as(node, "cp-1");
    copy(&nodes[0]).ok();
    copy(&nodes[0]).ok();
    copy(&nodes[1]).fails(5, "was used through node 1 for copy ssd:/covid/a.fa");
    // A request that fails before anything is recorded gives its id back.
    nodes[1]
        .cli(&[
            "cp",
            "ssd:/covid/none",
            "hdd:/copies/",
            "--request-id",
            "cp-2",
        ])
        .fails(3, "");
    copy_as(&nodes[0], "cp-2").ok();
    copy_as(&nodes[1], "cp-2").fails(5, "was used through node 1");

    // SIGKILL the leader: another is elected, and the registration and mount are intact.
    let leader = status(&nodes[1])["leader"].as_u64().expect("a leader");
    let killed = usize::try_from(leader - 1).unwrap();
    nodes[killed].kill();
    let killed_at = Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != killed).collect();
    let after = wait_status(&nodes[survivors[0]], "a new leader", |s| {
        s["leader"].as_u64().is_some_and(|l| l != leader)
    });
    let new_leader = after["leader"].as_u64().unwrap();
    eprintln!("new leader {new_leader} after {:?}", killed_at.elapsed());
    for i in &survivors {
        let seen = show(&nodes[*i]);
        assert_eq!(seen["mounted"], true, "node {}: {seen}", i + 1);
    }

    // Unmount through a surviving follower; the other survivor sees it.
    let follower = survivors
        .iter()
        .copied()
        .find(|i| *i as u64 + 1 != new_leader)
        .unwrap();
    nodes[follower]
        .cli(&["pipeline", "unmount", "covid-md5"])
        .ok();
    for i in &survivors {
        assert_eq!(show(&nodes[*i])["mounted"], false, "node {}", i + 1);
    }

    // The killed node restarts and catches up: its own read shows the unmount.
    nodes[killed].restart();
    assert_eq!(show(&nodes[killed])["mounted"], false);
    let commit = status(&nodes[survivors[0]])["commit"].as_u64().unwrap();
    wait_status(&nodes[killed], "caught up", |s| {
        s["applied"].as_u64().is_some_and(|a| a >= commit)
    });

    // Two of three stopped: writes through the survivor fail with "no quorum" …
    let survivor = killed;
    for i in &survivors {
        nodes[*i].kill();
    }
    nodes[survivor]
        .cli(&["pipeline", "mount", "covid-md5"])
        .fails(1, "no quorum");
    nodes[survivor]
        .cli(&["pipeline", "register", spec.to_str().unwrap()])
        .fails(1, "no quorum");
    // … and once they are back, nothing of it was applied.
    for i in &survivors {
        nodes[*i].restart();
    }
    wait_status(&nodes[survivor], "a leader again", |s| s["leader"].is_u64());
    let seen = show(&nodes[survivor]);
    assert_eq!(seen["mounted"], false, "{seen}");
    assert_eq!(seen["version"], 1, "{seen}");

    // Node 2 restarts on other ports: the cluster records its new addresses and reaches it.
    nodes[1].terminate();
    let (http, quic) = letl_tests::free_ports();
    nodes[1].http_listen = format!("127.0.0.1:{http}");
    nodes[1].quic_listen = Some(format!("127.0.0.1:{quic}"));
    nodes[1].restart();
    let moved = format!("127.0.0.1:{quic}");
    wait_status(&nodes[0], "node 2's new address", |s| {
        s["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == 2 && m["quic"] == moved.as_str())
    });
    nodes[1].cli(&["pipeline", "mount", "covid-md5"]).ok();
    assert_eq!(show(&nodes[0])["mounted"], true);

    // Node 3 leaves: it stops, the others go on with two voters. Its data dir joins again, as
    // a new member, with its objects.
    let kept = nodes[2].dir.path().join("kept.fa");
    std::fs::write(&kept, b">k\nGGCC\n").unwrap();
    nodes[2]
        .cli(&["put", kept.to_str().unwrap(), "ssd:/kept.fa"])
        .ok();
    let out = nodes[2].cli(&["cluster", "leave"]).ok().to_string();
    assert!(out.contains("left the cluster"), "{out}");
    assert!(nodes[2].wait_for_exit().success());
    wait_status(&nodes[0], "two voters", |s| voters(s) == 2);
    let (first, rest) = nodes.split_at_mut(2);
    join(&mut rest[0], &first[0], &token);
    let rejoined = wait_status(&nodes[0], "three voters again", |s| voters(s) == 3);
    assert!(
        rejoined["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == 4),
        "{rejoined}"
    );
    assert_eq!(show(&nodes[2])["version"], 1);
    let got = nodes[2]
        .command(&["get", "ssd:/kept.fa", "-"])
        .output()
        .unwrap();
    assert_eq!(got.stdout, b">k\nGGCC\n");

    // A node with a wrong token, or a token from another cluster, is refused.
    let mut stranger = TestNode::cluster_member();
    let mut wrong = token.clone();
    wrong.replace_range(wrong.len() - 4.., "0000");
    stranger
        .cli(&["cluster", "join", &nodes[0].url(), "--token", &wrong])
        .fails(4, "not one this cluster issued");
    let mut other = TestNode::cluster_member();
    other.restart();
    let foreign = other.cli(&["cluster", "token"]).ok().trim().to_string();
    stranger
        .cli(&["cluster", "join", &nodes[0].url(), "--token", &foreign])
        .fails(4, "another cluster");
    // Refused joins leave the stranger's data dir free to found its own cluster.
    stranger.restart();
    wait_status(&stranger, "its own cluster", |s| s["leader"] == 1);
}

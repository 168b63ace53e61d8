//! The data plane between three real nodes on loopback: objects put through one node are
//! spread over all three by rendezvous hashing, stored once each (or on two nodes with
//! `replicas = 2`), and readable, listable and deletable through every node; a pipeline over
//! them runs on every node over the objects it is home for, so only results travel; with two
//! replicas, every object survives a SIGKILLed node.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::path::Path;

use letl_tests::TestNode;
use letl_tests::cluster::{form, join, voters, wait_status};

const OBJECTS: usize = 300;

fn content(i: usize) -> String {
    format!("object {i} of the data plane test\n").repeat(1 + i % 7)
}

/// The files under `dir` (recursively), by path relative to it.
fn files_under(dir: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&at) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let name = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .to_string();
                found.insert(name, std::fs::read_to_string(&path).unwrap_or_default());
            }
        }
    }
    found
}

fn put_all(node: &TestNode, count: usize) {
    for i in 0..count {
        let (status, body) = node.http(
            "PUT",
            &format!("/v1/objects/ssd/spread/obj-{i:03}"),
            content(i).as_bytes(),
        );
        assert_eq!(status, 201, "put {i}: {body}");
    }
}

fn run_and_wait(node: &TestNode, pipeline: &str) -> serde_json::Value {
    let out = node.cli(&["pipeline", "run", pipeline, "--wait"]);
    let id = out.stdout.lines().next().unwrap().to_string();
    serde_json::from_str(node.cli(&["job", "status", &id, "--json"]).ok()).unwrap()
}

#[track_caller]
fn read_back(node: &TestNode, i: usize) {
    let (status, body) = node.http("GET", &format!("/v1/objects/ssd/spread/obj-{i:03}"), b"");
    assert_eq!(status, 200, "get {i} through {}: {body}", node.url());
    assert_eq!(body, content(i), "object {i} through {}", node.url());
}

#[test]
fn objects_put_through_one_node_spread_over_three_and_are_served_through_every_node() {
    let nodes = form(3, None);
    put_all(&nodes[0], OBJECTS);

    // Each object is stored once, on one node's disk; each node holds about a third.
    let held: Vec<BTreeMap<String, String>> = nodes
        .iter()
        .map(|n| files_under(&n.tier_dir("ssd").join("spread")))
        .collect();
    let total: usize = held.iter().map(BTreeMap::len).sum();
    assert_eq!(
        total,
        OBJECTS,
        "each object once: {:?}",
        held.iter().map(BTreeMap::len).collect::<Vec<_>>()
    );
    for (n, files) in held.iter().enumerate() {
        assert!(
            (60..=140).contains(&files.len()),
            "node {} holds {} of {OBJECTS}",
            n + 1,
            files.len()
        );
        for (name, text) in files {
            let i: usize = name.trim_start_matches("obj-").parse().unwrap();
            assert_eq!(*text, content(i), "{name} on node {}", n + 1);
        }
    }

    // Every object reads back through every node, and lists whole through each.
    for node in &nodes {
        for i in 0..OBJECTS {
            read_back(node, i);
        }
        let listed = node.cli(&["ls", "ssd:/spread/"]);
        assert_eq!(listed.ok().lines().count(), OBJECTS, "{}", listed.stdout);
    }
    let stat = nodes[2].cli(&["stat", "ssd:/spread/obj-007"]);
    assert!(
        stat.ok().contains(&content(7).len().to_string()),
        "{}",
        stat.stdout
    );

    // A missing object is a 404 from any node, after every holder was asked.
    let (status, body) = nodes[1].http("GET", "/v1/objects/ssd/spread/none", b"");
    assert_eq!(status, 404, "{body}");

    // An md5 pipeline over them runs on all three nodes, each over the objects it is home
    // for; only the 32-byte results cross between nodes.
    let spec = nodes[0].dir.path().join("spread-md5.toml");
    std::fs::write(
        &spec,
        "name = \"spread-md5\"\nmounted = true\n[extract]\nfrom = \"ssd:/spread/\"\n[[transform]]\nkind = \"md5\"\n[load]\nto = \"hdd:/spread-md5/\"\n",
    )
    .unwrap();
    nodes[0]
        .cli(&["pipeline", "register", spec.to_str().unwrap()])
        .ok();
    let job = run_and_wait(&nodes[0], "spread-md5");
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["stats"]["objects_out"], OBJECTS as u64, "{job}");
    let parts = job["parts"].as_array().expect("parts");
    assert_eq!(parts.len(), 3, "{job}");
    for part in parts {
        let took = part["stats"]["objects_in"].as_u64().unwrap();
        assert!((60..=140).contains(&took), "a part took {took}: {job}");
        assert_eq!(part["state"], "succeeded", "{job}");
    }
    let input_bytes = job["stats"]["bytes_in"].as_u64().unwrap();
    let between = job["bytes_between_nodes"].as_u64().unwrap();
    assert!(
        between <= 32 * OBJECTS as u64 && between < input_bytes / 2,
        "{between} bytes between nodes for {input_bytes} of input: {job}"
    );
    for i in [0, 1, 2, 150, 299] {
        let digest = letl_tests::md5sum_of(content(i).as_bytes());
        for node in &nodes {
            let (status, body) = node.http(
                "GET",
                &format!("/v1/objects/hdd/spread-md5/obj-{i:03}"),
                b"",
            );
            assert_eq!(
                (status, body.as_str()),
                (200, digest.as_str()),
                "output {i}"
            );
        }
    }
    // An output's provenance shows through every node, whichever node produced it.
    for node in &nodes {
        let stat: serde_json::Value = serde_json::from_str(
            node.cli(&["stat", "hdd:/spread-md5/obj-150", "--json"])
                .ok(),
        )
        .unwrap();
        assert_eq!(
            stat["provenance"]["source"], "ssd:/spread/obj-150",
            "{stat}"
        );
    }
    // A run again touches nothing: each node skips what it produced.
    let again = run_and_wait(&nodes[1], "spread-md5");
    assert_eq!(again["stats"]["skipped"], OBJECTS as u64, "{again}");
    assert_eq!(again["stats"]["objects_out"], 0, "{again}");
    // A read through a transform runs where the object is: the same digest through each node.
    for node in &nodes {
        let out = node
            .command(&["get", "ssd:/spread/obj-042", "-", "--transform", "md5"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            letl_tests::md5sum_of(content(42).as_bytes())
        );
    }

    // Deletes through node 3 remove the objects wherever they are.
    for i in (0..OBJECTS).step_by(2) {
        nodes[2]
            .cli(&["rm", &format!("ssd:/spread/obj-{i:03}")])
            .ok();
    }
    let left: usize = nodes
        .iter()
        .map(|n| files_under(&n.tier_dir("ssd").join("spread")).len())
        .sum();
    assert_eq!(left, OBJECTS / 2);
    let listed = nodes[1].cli(&["ls", "ssd:/spread/"]);
    assert_eq!(listed.ok().lines().count(), OBJECTS / 2);
    let (status, _) = nodes[0].http("GET", "/v1/objects/ssd/spread/obj-000", b"");
    assert_eq!(status, 404);
    read_back(&nodes[0], 1);

    // A copy and a move through a node that holds neither end: the bytes go from the source's
    // node straight to the destination's, never through node 1.
    let i = (1..OBJECTS)
        .step_by(2)
        .find(|i| {
            placed_on(&format!("spread/obj-{i:03}"), &[1, 2, 3]) != 1
                && placed_on(&format!("copies/obj-{i:03}"), &[1, 2, 3]) != 1
                && placed_on(&format!("moved/obj-{i:03}"), &[1, 2, 3]) != 1
        })
        .unwrap();
    let received = || -> u64 {
        let (_, text) = nodes[0].http("GET", "/metrics", b"");
        text.lines()
            .find_map(|l| l.strip_prefix("letl_data_plane_bytes_received_total "))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = received();
    let source = format!("ssd:/spread/obj-{i:03}");
    nodes[0]
        .cli(&["cp", &source, &format!("hdd:/copies/obj-{i:03}")])
        .ok();
    nodes[0]
        .cli(&[
            "mv",
            &format!("hdd:/copies/obj-{i:03}"),
            &format!("hdd:/moved/obj-{i:03}"),
        ])
        .ok();
    assert_eq!(received(), before, "object bytes went through node 1");
    for node in &nodes {
        let (status, body) = node.http("GET", &format!("/v1/objects/hdd/moved/obj-{i:03}"), b"");
        assert_eq!((status, body), (200, content(i)));
        let (status, _) = node.http("GET", &format!("/v1/objects/hdd/copies/obj-{i:03}"), b"");
        assert_eq!(status, 404);
    }
    let on_disk = |dir: &str| -> usize {
        nodes
            .iter()
            .map(|n| files_under(&n.tier_dir("hdd").join(dir)).len())
            .sum()
    };
    assert_eq!((on_disk("copies"), on_disk("moved")), (0, 1));
}

#[test]
fn with_two_replicas_every_object_is_on_two_nodes_and_survives_a_sigkill() {
    let config = "[cluster]\nreplicas = 2\n";
    let mut nodes = form(3, Some(config));
    let count = 90;
    put_all(&nodes[0], count);

    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    for node in &nodes {
        for name in files_under(&node.tier_dir("ssd").join("spread")).into_keys() {
            *copies.entry(name).or_insert(0) += 1;
        }
    }
    assert_eq!(copies.len(), count);
    assert!(copies.values().all(|&c| c == 2), "{copies:?}");

    // Node 2 dies without a word; every object still reads through the other two.
    nodes[1].kill();
    for node in [&nodes[0], &nodes[2]] {
        for i in 0..count {
            read_back(node, i);
        }
    }
    let listed = nodes[2].cli(&["ls", "ssd:/spread/"]);
    assert_eq!(listed.ok().lines().count(), count, "{}", listed.stdout);
    assert!(listed.stderr.contains("node 2"), "{}", listed.stderr);
}

/// The node rendezvous hashing places `key` on among `nodes` (the formula, restated here).
fn placed_on(key: &str, nodes: &[u64]) -> u64 {
    let score = |node: u64| {
        let mut hasher = blake3::Hasher::new();
        hasher.update(key.as_bytes());
        hasher.update(&[0]);
        hasher.update(&node.to_be_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
        u64::from_be_bytes(first)
    };
    *nodes.iter().max_by_key(|&&n| score(n)).unwrap()
}

#[test]
fn a_fourth_node_takes_its_share_and_every_object_stays_readable() {
    let mut nodes = form(3, None);
    let count = 120;
    put_all(&nodes[0], count);
    for (n, node) in nodes.iter().enumerate() {
        for name in files_under(&node.tier_dir("ssd").join("spread")).into_keys() {
            assert_eq!(
                placed_on(&format!("spread/{name}"), &[1, 2, 3]),
                n as u64 + 1
            );
        }
    }

    let token = nodes[0].cli(&["cluster", "token"]).ok().trim().to_string();
    let mut fourth = TestNode::cluster_member();
    join(&mut fourth, &nodes[0], &token);
    nodes.push(fourth);
    for node in &nodes {
        wait_status(node, "four voters with their tiers", |s| {
            voters(s) == 4
                && s["members"].as_array().unwrap().iter().all(|m| {
                    m["tiers"]
                        .as_array()
                        .is_some_and(|t| t.iter().any(|name| name == "ssd"))
                })
        });
    }
    // Writes, deletes and reads go on while objects move: 100..110 are rewritten and
    // 110..120 deleted through node 2, at once.
    let expected = |i: usize| match i {
        100..110 => Some(format!("rewritten {i}\n")),
        110..120 => None,
        _ => Some(content(i)),
    };
    for i in 100..120 {
        let path = format!("/v1/objects/ssd/spread/obj-{i:03}");
        let (status, body) = match expected(i) {
            Some(text) => nodes[1].http("PUT", &path, text.as_bytes()),
            None => nodes[1].http("DELETE", &path, b""),
        };
        assert!(status == 200 || status == 201, "{i}: {status} {body}");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut reads = 0;
    loop {
        read_back(&nodes[reads % 4], reads % 100);
        reads += 1;
        let status = nodes[1].cli(&["cluster", "rebalance", "status", "--json"]);
        if status.code == 0 {
            let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
            assert_eq!(status["members"].as_array().unwrap().len(), 4, "{status}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never rebalanced: {}",
            status.stdout
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let human = nodes[0].cli(&["cluster", "rebalance", "status"]);
    assert!(
        human.ok().contains("every object is where"),
        "{}",
        human.stdout
    );
    let check_all = |nodes: &[TestNode], members: &[u64]| {
        // Each object is once on disk, with the bytes last written, on the node the member
        // set places it on; deleted ones are nowhere.
        let mut seen = BTreeMap::new();
        for (n, node) in nodes.iter().enumerate() {
            for (name, text) in files_under(&node.tier_dir("ssd").join("spread")) {
                let key = format!("spread/{name}");
                let i: usize = name.trim_start_matches("obj-").parse().unwrap();
                assert!(members.contains(&(n as u64 + 1)), "{key} on node {}", n + 1);
                assert_eq!(placed_on(&key, members), n as u64 + 1, "{key}");
                assert_eq!(Some(text), expected(i), "{key} on node {}", n + 1);
                assert!(seen.insert(key, n).is_none(), "{name} twice");
            }
        }
        assert_eq!(seen.len(), count - 10);
        for node in nodes.iter().filter(|n| n.is_running()) {
            for i in 0..count {
                let (status, body) =
                    node.http("GET", &format!("/v1/objects/ssd/spread/obj-{i:03}"), b"");
                match expected(i) {
                    Some(text) => assert_eq!((status, body), (200, text), "{i}"),
                    None => assert_eq!(status, 404, "{i} was deleted"),
                }
            }
        }
        seen
    };
    let seen = check_all(&nodes, &[1, 2, 3, 4]);
    let on_fourth = seen.values().filter(|&&n| n == 3).count();
    assert!((15..=50).contains(&on_fourth), "node 4 holds {on_fourth}");

    // Node 4 leaves: its objects go back to the three, before it goes.
    let left = nodes[3].cli(&["cluster", "leave"]);
    assert!(left.ok().contains("left the cluster"), "{}", left.stdout);
    nodes[3].wait();
    check_all(&nodes, &[1, 2, 3]);
}

//! S3 tiers on a real S3-compatible server (SeaweedFS on 127.0.0.1), driven through the CLI.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use letl_tests::seaweed::{S3_SECRET_KEY, S3Server};
use letl_tests::{TestNode, blake3_of, md5sum_of, test_bytes};

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

/// The seed's walkthrough on real endpoints: CORTX and DAOS are two S3 servers, and the
/// dataset is read from a bucket of the configured source endpoint.
#[test]
fn the_seed_walkthrough_runs_across_two_s3_endpoints() {
    let cortx = S3Server::start();
    let daos = S3Server::start();
    let config = format!(
        "[source]\nendpoint = \"{}\"\nbucket = \"seed-source\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{S3_SECRET_KEY}\"\n{}{}{}",
        cortx.endpoint,
        letl_tests::seaweed::S3_ACCESS_KEY,
        cortx.tier_toml("cortx", "cortx", "cortx", S3_SECRET_KEY),
        daos.tier_toml("daos", "daos", "daos", S3_SECRET_KEY),
        // The source bucket as a tier too, so the test can fill it the way a user would.
        cortx.tier_toml("src", "fs", "seed-source", S3_SECRET_KEY),
    );
    let node = TestNode::start(Some(&config));
    let (a1, b1) = (test_bytes(700_000, 21), test_bytes(6 << 20, 22));
    let a1_file = write(&node, "A1", &a1);
    let b1_file = write(&node, "B1", &b1);
    node.cli(&["put", &a1_file, "src:/project-19-276121/letlCovidSet/A1"])
        .ok();
    node.cli(&["put", &b1_file, "src:/project-19-276121/letlCovidSet/B1"])
        .ok();

    for (route, body) in letl_tests::SEED_REQUESTS {
        let (status, answer) = node.http("POST", route, body.as_bytes());
        assert_eq!(status, 200, "{route}: {answer}");
    }
    assert_eq!(fetch(&node, "daos:/public/tiering/A1"), a1);
    assert_eq!(fetch(&node, "cortx:/public/tiering/B1"), b1);
    node.cli(&["stat", "cortx:/Covid-19/DNA/NC_045512/A1"])
        .fails(3, "no object");
    node.cli(&["stat", "daos:/daos/public/data/B1"])
        .fails(3, "no object");
    for (route, body) in letl_tests::SEED_REQUESTS {
        assert_eq!(node.http("POST", route, body.as_bytes()).0, 409, "{route}");
    }

    // An s3:// source on the source endpoint.
    let (status, answer) = node.http(
        "POST",
        "/cortx/write",
        br#"{"destination_uri": "again", "source_uri": "s3://seed-source/project-19-276121/letlCovidSet/B1", "request_id": "s3src"}"#,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(fetch(&node, "cortx:/again/B1"), b1);
    let (status, answer) = node.http(
        "POST",
        "/cortx/write",
        br#"{"destination_uri": "again", "source_uri": "s3://seed-source/nothing/here", "request_id": "s3src2"}"#,
    );
    assert_eq!(
        (status, answer.contains("does not exist")),
        (404, true),
        "{answer}"
    );

    // A few hundred MiB stream from one endpoint to the other and back out, whole.
    let big = test_bytes(200 << 20, 23);
    let big_file = write(&node, "big", &big);
    node.cli(&["put", &big_file, "cortx:/big/genome.fa"]).ok();
    node.cli(&[
        "mv",
        "cortx:/big/genome.fa",
        "daos:/big/genome.fa",
        "--request-id",
        "big-move",
    ])
    .ok();
    let out = node
        .command(&["get", "daos:/big/genome.fa", "-"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(blake3_of(&out.stdout), blake3_of(&big));
    node.cli(&["stat", "cortx:/big/genome.fa"])
        .fails(3, "no object");
}

/// A real SIGKILL while a move streams into an S3 multipart upload: after restart the move is
/// finished from the intact source, and exactly one complete copy exists.
#[test]
fn sigkill_during_a_move_to_s3_leaves_exactly_one_copy() {
    let server = S3Server::start();
    let mut node = node_with(&server, S3_SECRET_KEY);
    let data = test_bytes(100 << 20, 31);
    let file = write(&node, "big", &data);
    node.cli(&["put", &file, "ssd:/big.bin"]).ok();

    let mut mv = node
        .command(&[
            "mv",
            "ssd:/big.bin",
            "cortx:/big.bin",
            "--request-id",
            "kill-me",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill once the move is recorded and its copy is underway.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, moves) = node.http("GET", "/v1/moves", b"");
        if moves.contains("\"state\":\"copying\"") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the move never started: {moves}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // `copying` shows as soon as it is written; it is durable once its flush returns, a few
    // milliseconds later. The copy itself takes far longer.
    std::thread::sleep(std::time::Duration::from_millis(200));
    node.kill();
    let _ = mv.wait();

    node.restart();
    let moves = node.cli(&["moves"]).ok().to_string();
    assert!(
        moves.contains("kill-me\tmv\tssd:/big.bin -> cortx:/big.bin\tdone"),
        "{moves}\n{}",
        node.log()
    );
    node.cli(&["stat", "ssd:/big.bin"]).fails(3, "no object");
    assert_eq!(blake3_of(&fetch(&node, "cortx:/big.bin")), blake3_of(&data));
    assert!(!node.tier_dir("ssd").join("big.bin").exists());
    // The kill came mid-copy (a 100 MiB copy takes far longer than the 5 ms poll): the restart
    // finished the move, it did not find it done.
    assert!(
        node.log().contains("interrupted transfer finished"),
        "{}",
        node.log()
    );
}

#[test]
fn a_move_that_meets_a_down_endpoint_stays_pending_and_finishes_later() {
    let mut server = S3Server::start();
    let mut node = node_with(&server, S3_SECRET_KEY);
    let single = write(&node, "single", b"one object");
    node.cli(&["put", &single, "ssd:/one"]).ok();
    for i in 0..3 {
        let file = write(&node, &format!("f{i}"), format!("object {i}").as_bytes());
        node.cli(&["put", &file, &format!("ssd:/set/{i}")]).ok();
    }
    server.stop();

    // One object: the move fails, but it is pending, not failed, and the source stays.
    node.cli(&["mv", "ssd:/one", "cortx:/one", "--request-id", "r1"])
        .fails(1, "unreachable");
    let moves = node.cli(&["moves"]).ok().to_string();
    assert!(
        moves.contains("r1\tmv\tssd:/one -> cortx:/one\tcopying"),
        "{moves}"
    );
    assert_eq!(fetch(&node, "ssd:/one"), b"one object");

    // A job: each item is tried a few times, then reported; nothing is lost.
    let run = node.cli(&["mv", "ssd:/set/", "cortx:/set/", "--request-id", "j1"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("3 of 3 objects under ssd:/set/ could not be moved"),
        "{}",
        run.stderr
    );
    assert_eq!(fetch(&node, "ssd:/set/2"), b"object 2");

    // The endpoint is back: the same request id finishes the single move...
    server.restart();
    let done = node
        .cli(&["mv", "ssd:/one", "cortx:/one", "--request-id", "r1"])
        .ok()
        .to_string();
    assert!(done.starts_with("cortx:/one\t10\t"), "{done}");
    assert_eq!(fetch(&node, "cortx:/one"), b"one object");
    node.cli(&["stat", "ssd:/one"]).fails(3, "no object");
    // ...and the next start finishes the job's pending transfers.
    node.terminate();
    node.restart();
    for i in 0..3 {
        assert_eq!(
            fetch(&node, &format!("cortx:/set/{i}")),
            format!("object {i}").as_bytes()
        );
        node.cli(&["stat", &format!("ssd:/set/{i}")])
            .fails(3, "no object");
    }
}

/// A pipeline reads a prefix of a bucket on the `[source]` endpoint: its md5 results match
/// md5sum, a re-run touches nothing, a replaced object is reprocessed alone, and a load
/// target inside the source prefix of the same bucket is refused as a loop.
#[test]
fn a_pipeline_extracts_from_an_s3_source_prefix() {
    let server = S3Server::start();
    let config = format!(
        "[source]\nendpoint = \"{}\"\naccess_key_id = \"{}\"\nsecret_access_key = \"{S3_SECRET_KEY}\"\n[tiers.ssd]\nkind = \"ssd\"\n{}",
        server.endpoint,
        letl_tests::seaweed::S3_ACCESS_KEY,
        // The bucket as a tier too, so the test fills it the way a user would.
        server.tier_toml("genomes", "cortx", "genomes", S3_SECRET_KEY),
    );
    let node = TestNode::start(Some(&config));
    let mut inputs = Vec::new();
    for i in 0..12usize {
        let key = if i % 3 == 0 {
            format!("covid/deep/s{i:02}.fa")
        } else {
            format!("covid/s{i:02}.fa")
        };
        let data = test_bytes(50_000 + 1000 * i, 40 + i as u64);
        let file = write(&node, "in", &data);
        node.cli(&["put", &file, &format!("genomes:/{key}")]).ok();
        inputs.push((key, data));
    }
    // Outside the prefix: not read.
    let other = write(&node, "other", b"not covid");
    node.cli(&["put", &other, "genomes:/flu/x.fa"]).ok();

    let spec = node.dir.path().join("s3-md5.toml");
    let text = "name = \"s3-md5\"\nmounted = true\n[extract]\nfrom = \"s3://genomes/covid/\"\n[[transform]]\nkind = \"md5\"\n[load]\nto = \"ssd:/md5/\"\n";
    std::fs::write(&spec, text).unwrap();
    node.cli(&["pipeline", "register", spec.to_str().unwrap()])
        .ok();
    let run = node.cli(&["pipeline", "run", "s3-md5", "--wait"]);
    assert_eq!(run.code, 0, "{run:?}");
    for (key, data) in &inputs {
        let relative = key.strip_prefix("covid/").unwrap();
        let got = fetch(&node, &format!("ssd:/md5/{relative}"));
        assert_eq!(String::from_utf8(got).unwrap(), md5sum_of(data), "{key}");
    }
    node.cli(&["stat", "ssd:/md5/x.fa"]).fails(3, "no object");
    let stat = node.cli(&["stat", "ssd:/md5/s01.fa"]).ok().to_string();
    assert!(stat.contains("s3://genomes/covid/s01.fa"), "{stat}");

    // A re-run skips everything; a replaced object is reprocessed alone.
    let job = |out: &letl_tests::Run| -> serde_json::Value {
        let id = out.stdout.lines().next().unwrap().to_string();
        serde_json::from_str(node.cli(&["job", "status", &id, "--json"]).ok()).unwrap()
    };
    let again = job(&node.cli(&["pipeline", "run", "s3-md5", "--wait"]));
    assert_eq!(again["stats"]["objects_out"], 0, "{again}");
    assert_eq!(again["stats"]["skipped"], 12, "{again}");
    let changed = write(&node, "changed", b"changed");
    node.cli(&["put", &changed, "genomes:/covid/s01.fa"]).ok();
    let third = job(&node.cli(&["pipeline", "run", "s3-md5", "--wait"]));
    assert_eq!(third["stats"]["objects_out"], 1, "{third}");
    assert_eq!(
        String::from_utf8(fetch(&node, "ssd:/md5/s01.fa")).unwrap(),
        md5sum_of(b"changed")
    );

    // Loading into the source prefix of the same bucket would read its own output.
    std::fs::write(&spec, text.replace("ssd:/md5/", "genomes:/covid/md5/")).unwrap();
    node.cli(&["pipeline", "register", spec.to_str().unwrap()])
        .fails(2, "the pipeline would read its own output (a loop)");
    // A bucket that does not exist fails the job with the endpoint's reason.
    std::fs::write(
        &spec,
        text.replace("s3://genomes/", "s3://no-such-bucket/")
            .replace("s3-md5", "s3-none"),
    )
    .unwrap();
    node.cli(&["pipeline", "register", spec.to_str().unwrap()])
        .ok();
    let failed = job(&node.cli(&["pipeline", "run", "s3-none", "--wait"]));
    assert_eq!(failed["state"], "failed", "{failed}");
}

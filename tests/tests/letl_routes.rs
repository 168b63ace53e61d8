//! The seed's LETL routes, with the seed's own four example requests, run as written.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use letl_tests::{SEED_REQUESTS, TestNode, blake3_of, test_bytes};

fn fetch(node: &TestNode, uri: &str) -> Option<Vec<u8>> {
    let out = node.command(&["get", uri, "-"]).output().unwrap();
    out.status.success().then_some(out.stdout)
}

fn node_with_source() -> (TestNode, Vec<u8>, Vec<u8>) {
    let source = tempfile::tempdir().unwrap().keep();
    let set = source.join("project-19-276121/letlCovidSet");
    std::fs::create_dir_all(&set).unwrap();
    let (a1, b1) = (test_bytes(300_000, 11), test_bytes(200_000, 12));
    std::fs::write(set.join("A1"), &a1).unwrap();
    std::fs::write(set.join("B1"), &b1).unwrap();
    let config = format!("[source]\ndir = \"{}\"\n", source.display());
    (TestNode::start(Some(&config)), a1, b1)
}

#[test]
fn the_seed_walkthrough_runs_as_written() {
    let (mut node, a1, b1) = node_with_source();
    for (route, body) in SEED_REQUESTS {
        let (status, answer) = node.http("POST", route, body.as_bytes());
        assert_eq!(status, 200, "{route}: {answer}");
        let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert!(
            answer["hash"].as_str().unwrap().starts_with("blake3:"),
            "{route}: {answer}"
        );
    }
    // A1 went to CORTX, then moved to DAOS; B1 went to DAOS, then moved to CORTX.
    assert_eq!(fetch(&node, "daos:/public/tiering/A1").unwrap(), a1);
    assert_eq!(fetch(&node, "cortx:/public/tiering/B1").unwrap(), b1);
    assert!(fetch(&node, "cortx:/Covid-19/DNA/NC_045512/A1").is_none());
    assert!(fetch(&node, "daos:/daos/public/data/B1").is_none());
    let stat = node
        .cli(&["stat", "cortx:/public/tiering/B1"])
        .ok()
        .to_string();
    assert!(stat.contains(&blake3_of(&b1)), "{stat}");

    // Every request again: 409, and nothing changes. Also after a restart.
    let before = node.cli(&["tiers", "--json"]).ok().to_string();
    for round in 0..2 {
        for (route, body) in SEED_REQUESTS {
            let (status, answer) = node.http("POST", route, body.as_bytes());
            assert_eq!(status, 409, "round {round}, {route}: {answer}");
            assert!(answer.contains("already"), "{answer}");
        }
        assert_eq!(node.cli(&["tiers", "--json"]).ok(), before);
        node.terminate();
        node.restart();
    }
    // A new request id to a destination already written: 409 as well.
    let (status, answer) = node.http(
        "POST",
        "/daos/ssd/write",
        br#"{"destination_uri": "public/tiering", "source_uri": "project-19-276121/letlCovidSet/A1", "request_id": "fresh"}"#,
    );
    assert_eq!(status, 409, "{answer}");
    assert!(answer.contains("daos:/public/tiering/A1"), "{answer}");
}

#[test]
fn write_routes_take_files_tier_uris_and_http_sources() {
    let (node, a1, _) = node_with_source();
    let local = node.dir.path().join("local.fa");
    std::fs::write(&local, b">seq\nACGT\n").unwrap();
    let body = format!(
        r#"{{"destination_uri": "in", "source_uri": "file://{}", "request_id": "f1"}}"#,
        local.display()
    );
    let (status, answer) = node.http("POST", "/cortx/write", body.as_bytes());
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains("\"uri\":\"cortx:/in/local.fa\""),
        "{answer}"
    );

    let (status, answer) = node.http(
        "POST",
        "/daos/ssd/write",
        br#"{"destination_uri": "copies", "source_uri": "cortx:/in/local.fa", "request_id": "t1"}"#,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        fetch(&node, "daos:/copies/local.fa").unwrap(),
        b">seq\nACGT\n"
    );

    let body = format!(
        r#"{{"destination_uri": "web", "source_uri": "{}/healthz", "request_id": "h1"}}"#,
        node.addr
    );
    let (status, answer) = node.http("POST", "/cortx/write", body.as_bytes());
    assert_eq!(status, 200, "{answer}");
    assert_eq!(fetch(&node, "cortx:/web/healthz").unwrap(), b"ok\n");

    // Bad requests name what is wrong and reserve nothing: the same id works once fixed.
    for (body, status, text) in [
        (
            r#"{"destination_uri": "x", "source_uri": "project-19-276121/letlCovidSet/none", "request_id": "r1"}"#,
            404,
            "does not exist",
        ),
        (
            r#"{"destination_uri": "x", "source_uri": "../etc/passwd", "request_id": "r1"}"#,
            400,
            "'..' segment",
        ),
        (
            r#"{"destination_uri": "x", "source_uri": "file://relative", "request_id": "r1"}"#,
            400,
            "absolute path",
        ),
        (
            r#"{"destination_uri": "x", "source_uri": "s3://b/k", "request_id": "r1"}"#,
            400,
            "need [source] endpoint",
        ),
        (
            r#"{"destination_uri": "x", "request_id": "r1"}"#,
            400,
            "source_uri",
        ),
        (
            r#"{"destination_uri": "a//b", "source_uri": "project-19-276121/letlCovidSet/A1", "request_id": "r1"}"#,
            400,
            "destination_uri",
        ),
        (
            r#"{"destination_uri": "x", "source_uri": "project-19-276121/letlCovidSet/A1", "request_id": "bad id"}"#,
            400,
            "invalid request id",
        ),
    ] {
        let (got, answer) = node.http("POST", "/cortx/write", body.as_bytes());
        assert_eq!(got, status, "{body}: {answer}");
        assert!(answer.contains(text), "{body}: {answer}");
    }
    let (status, answer) = node.http(
        "POST",
        "/cortx/write",
        br#"{"destination_uri": "x", "source_uri": "project-19-276121/letlCovidSet/A1", "request_id": "r1"}"#,
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(fetch(&node, "cortx:/x/A1").unwrap(), a1);
    // The routes need the token like every other call.
    let (status, _) = letl_tests::http(&node.addr, "POST", "/cortx/write", &[], b"{}");
    assert_eq!(status, 401);
}

#[test]
fn https_sources_are_read_with_the_trusted_roots_and_refused_otherwise() {
    let server = letl_tests::https::HttpsServer::start();
    let data = test_bytes(300_000, 21);
    std::fs::create_dir_all(server.root.join("sets")).unwrap();
    std::fs::write(server.root.join("sets/A1"), &data).unwrap();
    let body = |source: &str, id: &str| {
        format!(
            r#"{{"destination_uri": "web", "source_uri": "{}/{source}", "request_id": "{id}"}}"#,
            server.base
        )
    };

    // A node that does not trust the server's CA refuses it, naming the source and why, and
    // keeps nothing: the request id can be used again.
    let mut node = TestNode::start(None);
    let (status, answer) = node.http("POST", "/cortx/write", body("sets/A1", "h1").as_bytes());
    assert_eq!(status, 502, "{answer}");
    assert!(
        answer.contains(&format!("{}/sets/A1", server.base)),
        "{answer}"
    );
    assert!(answer.contains("certificate"), "{answer}");
    assert!(fetch(&node, "cortx:/web/A1").is_none());

    // Trusting the CA (as a private CA is trusted: SSL_CERT_FILE), the same request works.
    node.terminate();
    node.env = vec![(
        "SSL_CERT_FILE".to_string(),
        server.ca_file.display().to_string(),
    )];
    node.restart();
    let (status, answer) = node.http("POST", "/cortx/write", body("sets/A1", "h1").as_bytes());
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(&blake3_of(&data)), "{answer}");
    assert_eq!(fetch(&node, "cortx:/web/A1").unwrap(), data);

    // A missing file is the server's 404, passed on as a bad gateway naming the source.
    let (status, answer) = node.http("POST", "/cortx/write", body("sets/none", "h2").as_bytes());
    assert_eq!(status, 502, "{answer}");
    assert!(answer.contains("404"), "{answer}");
}

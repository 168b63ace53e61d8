//! Every CLI command against a real node, as a user types it, and every bad input the
//! foundation issue lists: each gets a clear one-line error, its exit code, and changes nothing.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use letl_tests::{TestNode, blake3_of, blake3_of_file, http, test_bytes};

fn write(node: &TestNode, name: &str, data: &[u8]) -> String {
    let path = node.dir.path().join(name);
    std::fs::write(&path, data).unwrap();
    path.display().to_string()
}

/// Listing of a prefix as (size, uri) pairs.
fn ls(node: &TestNode, prefix: &str) -> Vec<(u64, String)> {
    node.cli(&["ls", prefix])
        .ok()
        .lines()
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            assert_eq!(cols.len(), 3, "ls line: {line}");
            (cols[0].parse().unwrap(), cols[2].to_string())
        })
        .collect()
}

#[test]
fn every_command_works_as_a_user_types_it() {
    let node = TestNode::start(None);
    let genome = test_bytes(5 * 1024 * 1024 + 3, 1);
    let file = write(&node, "NC_045512.fasta", &genome);

    // put: to a full key, and to a "directory" that keeps the file name.
    let out = node
        .cli(&["put", &file, "ssd:/covid/NC_045512.fasta"])
        .ok()
        .to_string();
    assert_eq!(
        out.trim(),
        format!(
            "ssd:/covid/NC_045512.fasta\t{}\t{}",
            genome.len(),
            blake3_of(&genome)
        )
    );
    node.cli(&["put", &file, "ssd:/covid/copies/"]).ok();
    let odd = "ssd:/odd names/ü ?#%.fa";
    node.cli(&["put", &file, odd]).ok();

    // stat, plain and JSON.
    let stat = node
        .cli(&["stat", "ssd:/covid/NC_045512.fasta"])
        .ok()
        .to_string();
    assert!(
        stat.contains(&format!("hash:     {}", blake3_of(&genome))),
        "{stat}"
    );
    assert!(stat.contains("version:  1"), "{stat}");
    let json: serde_json::Value =
        serde_json::from_str(node.cli(&["stat", odd, "--json"]).ok()).unwrap();
    assert_eq!(json["key"], "odd names/ü ?#%.fa");
    assert_eq!(json["size"], genome.len() as u64);

    // ls: key order, prefixes, partial segments, JSON lines.
    assert_eq!(
        ls(&node, "ssd:/"),
        [
            (
                genome.len() as u64,
                "ssd:/covid/NC_045512.fasta".to_string()
            ),
            (
                genome.len() as u64,
                "ssd:/covid/copies/NC_045512.fasta".to_string()
            ),
            (genome.len() as u64, odd.to_string()),
        ]
    );
    assert_eq!(ls(&node, "ssd:/covid/c").len(), 1);
    assert_eq!(ls(&node, "hdd:/").len(), 0);
    let lines = node.cli(&["ls", "ssd:/covid/", "--json"]).ok().to_string();
    for line in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["hash"], blake3_of(&genome));
    }

    // get: to a named file, to the basename in the current directory, to stdout.
    let out_path = node.dir.path().join("fetched.fasta");
    node.cli(&[
        "get",
        "ssd:/covid/NC_045512.fasta",
        out_path.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(std::fs::read(&out_path).unwrap(), genome);
    std::fs::remove_file(node.dir.path().join("NC_045512.fasta")).unwrap();
    node.cli(&["get", "ssd:/covid/copies/NC_045512.fasta"]).ok();
    assert_eq!(
        blake3_of_file(&node.dir.path().join("NC_045512.fasta")),
        blake3_of(&genome)
    );
    let piped = node.command(&["get", odd, "-"]).output().unwrap();
    assert!(piped.status.success());
    assert_eq!(piped.stdout, genome);

    // overwrite bumps the version.
    let v2 = test_bytes(1000, 2);
    let v2_file = write(&node, "v2", &v2);
    node.cli(&["put", &v2_file, "ssd:/covid/NC_045512.fasta"])
        .ok();
    let stat = node
        .cli(&["stat", "ssd:/covid/NC_045512.fasta"])
        .ok()
        .to_string();
    assert!(
        stat.contains("version:  2") && stat.contains("size:     1000 "),
        "{stat}"
    );

    // cp between tiers keeps the source; mv removes it; both keep the bytes.
    let out = node
        .cli(&["cp", "ssd:/covid/NC_045512.fasta", "hdd:/archive/"])
        .ok()
        .to_string();
    assert!(
        out.starts_with("hdd:/archive/NC_045512.fasta\t1000\t"),
        "{out}"
    );
    node.cli(&[
        "mv",
        "ssd:/covid/copies/NC_045512.fasta",
        "pmem:/hot/genome.fa",
    ])
    .ok();
    assert!(ls(&node, "ssd:/covid/copies/").is_empty());
    let piped = node
        .command(&["get", "pmem:/hot/genome.fa", "-"])
        .output()
        .unwrap();
    assert_eq!(piped.stdout, genome);
    assert!(node.tier_dir("pmem").join("hot/genome.fa").is_file());
    assert!(
        !node.tier_dir("ssd").join("covid/copies").exists(),
        "emptied directories are removed"
    );

    // rm.
    assert_eq!(node.cli(&["rm", odd]).ok().trim(), format!("removed {odd}"));
    node.cli(&["stat", odd]).fails(3, "no object");

    // tiers: the five defaults with their use.
    let tiers = node.cli(&["tiers"]).ok().to_string();
    for name in ["pmem", "ssd", "hdd", "daos", "cortx"] {
        assert!(tiers.lines().any(|l| l.starts_with(name)), "{tiers}");
    }
    let tiers: serde_json::Value =
        serde_json::from_str(node.cli(&["tiers", "--json"]).ok()).unwrap();
    let pmem = tiers
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "pmem")
        .unwrap();
    assert_eq!(pmem["objects"], 1);
    assert_eq!(pmem["used_bytes"], genome.len() as u64);
    assert_eq!(pmem["kind"], "pmem");
    assert_eq!(pmem["up"], true);

    // stdin put, the token from the environment, the address from the environment.
    let mut child = node
        .command(&["put", "-", "daos:/from-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), b"ACGT\n").unwrap();
    drop(child.stdin.take());
    assert!(child.wait_with_output().unwrap().status.success());
    let env_run = std::process::Command::new(letl_tests::letl_bin())
        .args(["stat", "daos:/from-stdin"])
        .env("LETL_ADDR", &node.addr)
        .env("LETL_TOKEN", node.token())
        .current_dir(node.dir.path())
        .output()
        .unwrap();
    assert!(
        env_run.status.success(),
        "{}",
        String::from_utf8_lossy(&env_run.stderr)
    );
    assert!(String::from_utf8_lossy(&env_run.stdout).contains("size:     5 "));
}

#[test]
fn http_api_health_metrics_and_auth() {
    let node = TestNode::start(None);
    assert_eq!(
        http(&node.addr, "GET", "/healthz", &[], b""),
        (200, "ok\n".to_string())
    );
    // Every other route needs the token.
    for path in [
        "/v1/tiers",
        "/metrics",
        "/v1/objects/ssd/x",
        "/v1/objects/ssd",
    ] {
        let (status, body) = http(&node.addr, "GET", path, &[], b"");
        assert_eq!(status, 401, "{path}");
        assert!(body.contains("missing Authorization"), "{body}");
        let (status, body) = http(
            &node.addr,
            "GET",
            path,
            &[("Authorization", "Bearer nope")],
            b"",
        );
        assert_eq!(
            (status, body.contains("invalid bearer token")),
            (401, true),
            "{path}"
        );
    }
    let (status, _) = http(&node.addr, "PUT", "/v1/objects/ssd/x", &[], b"data");
    assert_eq!(status, 401);
    assert!(
        node.cli(&["ls", "ssd:/"]).ok().is_empty(),
        "unauthorized put stored nothing"
    );

    let (status, body) = node.http("PUT", "/v1/objects/hdd/m/a", b"hello");
    assert_eq!(status, 201, "{body}");
    let (status, body) = node.http("GET", "/v1/objects/hdd/m/a", b"");
    assert_eq!((status, body.as_str()), (200, "hello"));
    let (status, _) = node.http("DELETE", "/v1/objects/hdd/m/a", b"");
    assert_eq!(status, 200);
    let (status, _) = node.http("PUT", "/v1/objects/hdd/m/b", b"12345678");
    assert_eq!(status, 201);

    let (status, metrics) = node.http("GET", "/metrics", b"");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("letl_tier_objects{tier=\"hdd\",kind=\"hdd\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("letl_tier_bytes{tier=\"hdd\",kind=\"hdd\"} 8"),
        "{metrics}"
    );
    assert!(
        metrics.contains("letl_http_requests_total{method=\"PUT\",route=\"/v1/objects/{tier}/{*key}\",status=\"201\"} 2"),
        "{metrics}"
    );
    assert!(metrics.contains("status=\"401\""), "{metrics}");
    assert!(
        metrics.contains("letl_tier_up{tier=\"ssd\",kind=\"ssd\"} 1"),
        "{metrics}"
    );
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let config = r#"
        [node]
        max_object_size = "1MiB"
        [tiers.ssd]
        kind = "ssd"
        [tiers.small]
        kind = "hdd"
        capacity = "100KiB"
    "#;
    let node = TestNode::start(Some(config));
    let kept = write(&node, "kept", b"kept");
    node.cli(&["put", &kept, "ssd:/kept"]).ok();
    let before = node.cli(&["tiers", "--json"]).ok().to_string();

    // Invalid URIs and keys, refused before anything is sent.
    let long_key = format!("ssd:/{}", "k".repeat(1025));
    let cases = [
        ("ssd:/a/../b", "'..' segment"),
        ("ssd:/a//b", "empty segment"),
        ("ssd:/a/./b", "'.' segment"),
        ("ssd:a", "expected <tier>:/<key>"),
        (long_key.as_str(), "longer than 1024 bytes"),
    ];
    for (uri, reason) in cases {
        node.cli(&["put", &kept, uri]).fails(2, reason);
        node.cli(&["stat", uri]).fails(2, reason);
    }
    // The server refuses them too (a NUL cannot be a CLI argument, only a URL byte).
    for (path, reason) in [
        ("/v1/objects/ssd/a%00b", "NUL"),
        ("/v1/objects/ssd/a/../b", "'..' segment"),
        ("/v1/objects/ssd/a//b", "empty segment"),
    ] {
        let (status, body) = node.http("PUT", path, b"x");
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains(reason), "{path}: {body}");
    }
    let (status, body) = node.http(
        "PUT",
        &format!("/v1/objects/ssd/{}", "k".repeat(1025)),
        b"x",
    );
    assert_eq!((status, body.contains("1024")), (400, true), "{body}");

    // Unknown tier.
    node.cli(&["put", &kept, "tape:/x"])
        .fails(3, "unknown tier `tape` (this node has: small, ssd)");
    node.cli(&["ls", "tape:/"]).fails(3, "unknown tier `tape`");

    // Missing or wrong token.
    let no_token = std::process::Command::new(letl_tests::letl_bin())
        .args([
            "--addr",
            &node.addr,
            "--data-dir",
            "/nonexistent",
            "ls",
            "ssd:/",
        ])
        .env_remove("LETL_TOKEN")
        .output()
        .unwrap();
    assert_eq!(no_token.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("no admin token"));
    node.cli(&["--token", "wrong", "put", &kept, "ssd:/x"])
        .fails(4, "invalid bearer token");

    // Over the maximum object size: 413, from a file (length known) and from stdin (not).
    let big = write(&node, "big", &test_bytes(2 << 20, 3));
    node.cli(&["put", &big, "ssd:/big"])
        .fails(6, "object too large");
    let piped = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cat {big} | {} --addr {} --data-dir {} put - ssd:/big",
            letl_tests::letl_bin().display(),
            node.addr,
            node.data_dir.display()
        ))
        .output()
        .unwrap();
    assert_eq!(
        piped.status.code(),
        Some(6),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );
    assert!(String::from_utf8_lossy(&piped.stderr).contains("object too large"));
    let (status, _) = node.http("PUT", "/v1/objects/ssd/big", &test_bytes(2 << 20, 3));
    assert_eq!(status, 413);

    // Tier full: 507 naming the tier, and no partial file left.
    let fits = write(&node, "fits", &test_bytes(60 << 10, 4));
    node.cli(&["put", &fits, "small:/a"]).ok();
    node.cli(&["put", &fits, "small:/b"])
        .fails(6, "tier `small` is full");
    let piped = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cat {fits} | {} --addr {} --data-dir {} put - small:/b",
            letl_tests::letl_bin().display(),
            node.addr,
            node.data_dir.display()
        ))
        .output()
        .unwrap();
    assert_eq!(piped.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&piped.stderr).contains("tier `small` is full"));
    let (status, body) = node.http("PUT", "/v1/objects/small/b", &test_bytes(60 << 10, 4));
    assert_eq!(
        (status, body.contains("tier `small` is full")),
        (507, true),
        "{body}"
    );
    assert_eq!(node.staged_files("small"), 0);
    assert!(!node.tier_dir("small").join("b").exists());
    node.cli(&["rm", "small:/a"]).ok();

    // Missing objects: 404, exit 3.
    node.cli(&["get", "ssd:/missing"])
        .fails(3, "no object `missing` on tier `ssd`");
    assert!(
        !node.dir.path().join("missing").exists(),
        "no partial download left"
    );
    node.cli(&["rm", "ssd:/missing"]).fails(3, "no object");
    node.cli(&["cp", "ssd:/missing", "small:/x"])
        .fails(3, "no object");
    let (status, _) = node.http("GET", "/v1/objects/ssd/missing", b"");
    assert_eq!(status, 404);

    // Nonsense transfers.
    node.cli(&["cp", "ssd:/kept", "ssd:/kept"])
        .fails(2, "same object");
    node.cli(&["put", "/nonexistent/file", "ssd:/x"])
        .fails(2, "cannot read /nonexistent/file");
    node.cli(&["--addr", "localhost:1", "ls", "ssd:/"])
        .fails(2, "must start with http://");

    // A file where a directory of objects is: a conflict.
    node.cli(&["put", &kept, "ssd:/kept/inner"])
        .fails(5, "`kept` is an object");

    // Nothing above changed anything.
    assert_eq!(node.cli(&["tiers", "--json"]).ok(), before);
    assert_eq!(node.cli(&["ls", "ssd:/"]).ok().lines().count(), 1);
    assert_eq!(node.staged_files("ssd"), 0);
}

#[test]
fn a_node_is_unreachable_with_a_clear_message() {
    let node = TestNode::start(None);
    let run = node.cli(&["--addr", "http://127.0.0.1:1", "ls", "ssd:/"]);
    run.fails(1, "cannot reach the node at http://127.0.0.1:1");
}

#[test]
fn a_malformed_config_stops_the_node_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    for (text, field) in [
        (
            "[tiers.ssd]\nkind = \"ssd\"\ncapacity = \"lots\"\n",
            "capacity",
        ),
        (
            "[tiers.ssd]\nkind = \"ssd\"\ncapacty = \"1GiB\"\n",
            "capacty",
        ),
        ("[node]\nhttp = \"nowhere\"\n", "node.http"),
        ("[tiers.ssd]\nkind = \"floppy\"\n", "kind"),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(letl_tests::letl_bin())
            .args(["node", "--config", path.to_str().unwrap(), "--data-dir"])
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(field), "expected {field:?} in: {stderr}");
        assert!(
            !dir.path().join("data").exists(),
            "a refused config creates nothing"
        );
    }
    let out = std::process::Command::new(letl_tests::letl_bin())
        .args(["node", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read config file /nonexistent.toml")
    );
}

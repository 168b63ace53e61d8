//! Pipelines as users run them: register, mount, run, stats, jobs; results checked against
//! the system's own tools; incremental re-runs; exec and http transforms against a real
//! subprocess and a real HTTP server; a node stopped mid-job.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;

use letl_tests::{TestNode, test_bytes};

/// Writes `count` files (some in sub-directories) under `dir`; returns their relative paths.
fn write_files(dir: &Path, count: usize, bytes: usize) -> Vec<String> {
    let mut names = Vec::new();
    for i in 0..count {
        let name = if i % 4 == 0 {
            format!("sub{}/f{i:04}.dat", i % 3)
        } else {
            format!("f{i:04}.dat")
        };
        let path = dir.join(&name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, test_bytes(bytes + i, i as u64)).unwrap();
        names.push(name);
    }
    names.sort();
    names
}

fn spec_file(node: &TestNode, name: &str, text: &str) -> PathBuf {
    let path = node.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The object's bytes over the HTTP API.
fn object(node: &TestNode, uri: &str) -> Option<String> {
    let (tier, key) = uri.split_once(":/").unwrap();
    let (status, body) = node.http("GET", &format!("/v1/objects/{tier}/{key}"), b"");
    (status == 200).then_some(body)
}

fn job_json(node: &TestNode, id: &str) -> serde_json::Value {
    serde_json::from_str(node.cli(&["job", "status", id, "--json"]).ok()).unwrap()
}

fn run_and_wait(node: &TestNode, pipeline: &str) -> serde_json::Value {
    let out = node.cli(&["pipeline", "run", pipeline, "--wait"]);
    let id = out.stdout.lines().next().unwrap().to_string();
    let job = job_json(node, &id);
    assert_eq!(
        out.code,
        if job["state"] == "succeeded" { 0 } else { 1 },
        "{out:?}"
    );
    job
}

#[test]
fn an_md5_pipeline_matches_md5sum_and_reruns_only_what_changed() {
    let node = TestNode::start(None);
    let input = node.dir.path().join("input");
    let names = write_files(&input, 1000, 100);
    let spec = spec_file(
        &node,
        "md5",
        &format!(
            "name = \"covid-md5\"\nmounted = true\n[extract]\nfrom = \"file://{}/\"\n[[transform]]\nkind = \"md5\"\n[load]\nto = \"hdd:/covid-md5/\"\n",
            input.display()
        ),
    );
    let registered = node
        .cli(&["pipeline", "register", spec.to_str().unwrap()])
        .ok()
        .to_string();
    assert_eq!(registered, "covid-md5\tv1\tmounted\n");

    let job = run_and_wait(&node, "covid-md5");
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["stats"]["objects_out"], 1000);
    // The same digests as md5sum on the same files.
    let sums = Command::new("md5sum")
        .args(&names)
        .current_dir(&input)
        .output()
        .unwrap();
    let sums = String::from_utf8(sums.stdout).unwrap();
    for line in sums.lines() {
        let (digest, name) = line.split_once("  ").unwrap();
        assert_eq!(
            object(&node, &format!("hdd:/covid-md5/{name}")).as_deref(),
            Some(digest),
            "{name}"
        );
    }

    // Again: nothing to do. Then one input changes: only it is made again.
    let again = run_and_wait(&node, "covid-md5");
    assert_eq!(
        (
            again["stats"]["skipped"].as_u64(),
            again["stats"]["objects_out"].as_u64()
        ),
        (Some(1000), Some(0)),
        "{again}"
    );
    std::fs::write(input.join(&names[7]), b"changed").unwrap();
    let changed = run_and_wait(&node, "covid-md5");
    assert_eq!(changed["stats"]["objects_out"], 1, "{changed}");
    assert_eq!(changed["stats"]["skipped"], 999, "{changed}");
    assert_eq!(
        object(&node, &format!("hdd:/covid-md5/{}", names[7])),
        Some(md5_hex(b"changed"))
    );
    // A new version of the pipeline makes everything again.
    let spec_v2 = std::fs::read_to_string(&spec).unwrap().replace(
        "kind = \"md5\"",
        "kind = \"md5\"\n[[transform]]\nkind = \"identity\"",
    );
    std::fs::write(&spec, spec_v2).unwrap();
    assert_eq!(
        node.cli(&["pipeline", "register", spec.to_str().unwrap()])
            .ok(),
        "covid-md5\tv2\tmounted\n"
    );
    let v2 = run_and_wait(&node, "covid-md5");
    assert_eq!(v2["stats"]["objects_out"], 1000, "{v2}");

    // The provenance of an output.
    let stat: serde_json::Value = serde_json::from_str(
        node.cli(&["stat", &format!("hdd:/covid-md5/{}", names[0]), "--json"])
            .ok(),
    )
    .unwrap();
    assert_eq!(stat["provenance"]["pipeline"], "covid-md5", "{stat}");
    assert!(
        stat["provenance"]["source"]
            .as_str()
            .unwrap()
            .ends_with(&names[0]),
        "{stat}"
    );

    let stats = node
        .cli(&["pipeline", "stats", "covid-md5", "--json"])
        .ok()
        .to_string();
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["jobs"], 4);
    assert_eq!(stats["objects_out"], 2001);
    assert_eq!(stats["skipped"], 1999);
}

/// md5 of a small buffer, as the system's md5sum prints it.
fn md5_hex(data: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x");
    std::fs::write(&path, data).unwrap();
    let out = Command::new("md5sum").arg(&path).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().next().unwrap().to_string()
}

//! Transforms as users meet them: `letl get --transform`, checked against the system's own
//! tools on the same bytes.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::process::Command;

use letl_tests::{TestNode, test_bytes};

fn tool_digest(tool: &str, path: &std::path::Path) -> String {
    let out = Command::new(tool).arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn get_with_a_transform_returns_the_transformed_bytes_and_stores_nothing() {
    let node = TestNode::start(None);
    let data = test_bytes(3 << 20, 4);
    let file = node.dir.path().join("data.bin");
    std::fs::write(&file, &data).unwrap();
    node.cli(&["put", file.to_str().unwrap(), "ssd:/d/data.bin"])
        .ok();
    let objects_before = node.cli(&["tiers", "--json"]).ok().to_string();

    for (kind, tool) in [("md5", "md5sum"), ("sha256", "sha256sum")] {
        let out = node
            .command(&["get", "ssd:/d/data.bin", "-", "--transform", kind])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            tool_digest(tool, &file),
            "{kind}"
        );
    }
    // To a file: gzip there, and the system's gunzip gives the object back.
    let packed = node.dir.path().join("data.gz");
    node.cli(&[
        "get",
        "ssd:/d/data.bin",
        packed.to_str().unwrap(),
        "--transform",
        "gzip",
    ])
    .ok();
    let unpacked = Command::new("gzip")
        .arg("-dc")
        .arg(&packed)
        .output()
        .unwrap();
    assert!(unpacked.status.success());
    assert_eq!(unpacked.stdout, data);
    assert_eq!(
        node.cli(&["tiers", "--json"]).ok(),
        objects_before,
        "nothing stored"
    );

    node.cli(&["get", "ssd:/d/data.bin", "-", "--transform", "md6"])
        .fails(2, "unknown transform `md6`");
    node.cli(&["get", "ssd:/d/data.bin", "-", "--transform", "exec"])
        .fails(2, "transform.command: missing");
    node.cli(&["get", "ssd:/d/none", "-", "--transform", "md5"])
        .fails(3, "no object");
    // A transform that fails half-way never passes for a whole result.
    let broken = node.dir.path().join("broken.out");
    let run = node.cli(&[
        "get",
        "ssd:/d/data.bin",
        broken.to_str().unwrap(),
        "--transform",
        "gunzip",
    ]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(!broken.exists());
}

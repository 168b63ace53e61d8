//! Exactly-once copies and moves: request ids, and a node killed at every step of a move.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::os::unix::fs::MetadataExt;

use letl_tests::{TestNode, blake3_of, test_bytes};

fn fetch(node: &TestNode, uri: &str) -> Option<Vec<u8>> {
    let out = node.command(&["get", uri, "-"]).output().unwrap();
    out.status.success().then_some(out.stdout)
}

#[test]
fn request_ids_make_transfers_idempotent() {
    let node = TestNode::start(None);
    let file = node.dir.path().join("f");
    std::fs::write(&file, b"first").unwrap();
    node.cli(&["put", file.to_str().unwrap(), "ssd:/a"]).ok();

    let first = node
        .cli(&["cp", "ssd:/a", "hdd:/a", "--request-id", "copy-1"])
        .ok()
        .to_string();
    assert!(first.trim_end().ends_with("\tcopy-1"), "{first}");
    // The source changes; the same request id returns the first result and copies nothing.
    std::fs::write(&file, b"second").unwrap();
    node.cli(&["put", file.to_str().unwrap(), "ssd:/a"]).ok();
    assert_eq!(
        node.cli(&["cp", "ssd:/a", "hdd:/a", "--request-id", "copy-1"])
            .ok(),
        first
    );
    assert_eq!(fetch(&node, "hdd:/a").unwrap(), b"first");
    // The id cannot be reused for another transfer, and bad ids are refused.
    node.cli(&["mv", "ssd:/a", "pmem:/a", "--request-id", "copy-1"])
        .fails(5, "request id `copy-1` was used for another transfer");
    node.cli(&["mv", "ssd:/a", "pmem:/a", "--request-id", "no spaces"])
        .fails(2, "invalid request id");

    // A copy has its own file; a move between tiers on one file system hands over the file
    // itself, without copying its bytes.
    let inode = |path: std::path::PathBuf| std::fs::metadata(path).unwrap().ino();
    let source_inode = inode(node.tier_dir("ssd").join("a"));
    assert_ne!(inode(node.tier_dir("hdd").join("a")), source_inode);

    // A move repeated after it finished returns its result; the source stays gone.
    let moved = node
        .cli(&["mv", "ssd:/a", "pmem:/a", "--request-id", "move-1"])
        .ok()
        .to_string();
    assert!(moved.contains(&blake3_of(b"second")), "{moved}");
    assert_eq!(
        node.cli(&["mv", "ssd:/a", "pmem:/a", "--request-id", "move-1"])
            .ok(),
        moved
    );
    assert!(fetch(&node, "ssd:/a").is_none());
    assert_eq!(inode(node.tier_dir("pmem").join("a")), source_inode);

    // A failed transfer is recorded, and its id answers with the failure.
    node.cli(&["mv", "ssd:/missing", "pmem:/x", "--request-id", "move-2"])
        .fails(3, "no object");
    let moves = node.cli(&["moves"]).ok().to_string();
    assert!(
        moves.contains("copy-1\tcp\tssd:/a -> hdd:/a\tdone"),
        "{moves}"
    );
    assert!(
        moves.contains("move-1\tmv\tssd:/a -> pmem:/a\tdone"),
        "{moves}"
    );
    let json: Vec<serde_json::Value> = node
        .cli(&["moves", "--json"])
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(json.len(), 2);
}

#[test]
fn a_move_killed_at_any_step_ends_with_exactly_one_copy() {
    let data = test_bytes(3 << 20, 5);
    for point in [
        "move:intent",
        "move:copied",
        "move:recorded",
        "move:deleted",
    ] {
        let mut node = TestNode::start(None);
        let file = node.dir.path().join("obj");
        std::fs::write(&file, &data).unwrap();
        node.cli(&["put", file.to_str().unwrap(), "ssd:/data/obj"])
            .ok();
        node.terminate();
        node.env = vec![("LETL_CRASH_AT".to_string(), point.to_string())];
        node.restart();

        let run = node.cli(&[
            "mv",
            "ssd:/data/obj",
            "hdd:/archive/obj",
            "--request-id",
            "m1",
        ]);
        assert_ne!(
            run.code, 0,
            "{point}: the move cannot report success from a crashed node"
        );
        assert_eq!(
            node.wait_for_exit().code(),
            Some(137),
            "{point}: {}",
            node.log()
        );

        node.env.clear();
        node.restart();
        assert!(
            fetch(&node, "ssd:/data/obj").is_none(),
            "{point}: the source must be gone"
        );
        assert_eq!(
            fetch(&node, "hdd:/archive/obj").unwrap(),
            data,
            "{point}: one complete copy"
        );
        assert!(!node.tier_dir("ssd").join("data/obj").exists(), "{point}");
        let moves = node.cli(&["moves"]).ok().to_string();
        assert!(
            moves.contains("m1\tmv\tssd:/data/obj -> hdd:/archive/obj\tdone"),
            "{point}: {moves}"
        );
        // The client retries with its request id: the first result, nothing moved twice.
        let again = node
            .cli(&[
                "mv",
                "ssd:/data/obj",
                "hdd:/archive/obj",
                "--request-id",
                "m1",
            ])
            .ok()
            .to_string();
        assert!(again.starts_with("hdd:/archive/obj\t"), "{point}: {again}");
        assert!(again.contains(&blake3_of(&data)), "{point}: {again}");
        let objects = node.objects_total();
        assert_eq!(objects, 1, "{point}: exactly one object on the node");
    }
}

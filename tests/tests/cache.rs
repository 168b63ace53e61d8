//! The cache as users meet it: `letl cache put/get`, expiry, eviction, bounds, and two
//! pipelines chained through `cache:` without touching a tier.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use letl_tests::{TestNode, test_bytes};

fn get(node: &TestNode, id: &str) -> Option<Vec<u8>> {
    let out = node.command(&["cache", "get", id]).output().unwrap();
    out.status.success().then_some(out.stdout)
}

#[test]
fn records_come_back_until_they_expire_and_the_least_recently_used_make_room() {
    let node = TestNode::start(Some(
        "[cache]\nexpire_in = \"1m\"\nmax_records = 2\nmax_bytes = \"1KiB\"\n",
    ));
    let file = node.dir.path().join("f");
    let mut ids = Vec::new();
    for text in ["first", "second"] {
        std::fs::write(&file, text).unwrap();
        ids.push(
            node.cli(&["cache", "put", file.to_str().unwrap()])
                .ok()
                .trim()
                .to_string(),
        );
    }
    assert_eq!(get(&node, &ids[0]).unwrap(), b"first");
    // A third record: the least recently used (the second; the first was just read) goes.
    std::fs::write(&file, "third").unwrap();
    ids.push(
        node.cli(&["cache", "put", file.to_str().unwrap()])
            .ok()
            .trim()
            .to_string(),
    );
    node.cli(&["cache", "get", &ids[1]])
        .fails(3, &format!("cache record `{}` expired or unknown", ids[1]));
    assert_eq!(get(&node, &ids[0]).unwrap(), b"first");
    assert_eq!(get(&node, &ids[2]).unwrap(), b"third");

    // A record with its own time-to-live.
    let short = node
        .cli(&["cache", "put", file.to_str().unwrap(), "--expire-in", "1s"])
        .ok()
        .trim()
        .to_string();
    assert_eq!(get(&node, &short).unwrap(), b"third");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    node.cli(&["cache", "get", &short])
        .fails(3, "expired or unknown");

    // Bounds and bad input.
    std::fs::write(&file, test_bytes(2048, 1)).unwrap();
    node.cli(&["cache", "put", file.to_str().unwrap()])
        .fails(6, "more than the cache holds (1024 bytes)");
    node.cli(&[
        "cache",
        "put",
        file.to_str().unwrap(),
        "--expire-in",
        "soon",
    ])
    .fails(2, "expire_in: `soon`");
    node.cli(&["cache", "get", "never-was"])
        .fails(3, "expired or unknown");
}

#[test]
fn pipelines_chain_through_the_cache() {
    let node = TestNode::start(None);
    let input = node.dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    for i in 0..10 {
        std::fs::write(
            input.join(format!("f{i}")),
            test_bytes(20_000 + i, i as u64),
        )
        .unwrap();
    }
    let pack = format!(
        "name = \"pack\"\nmounted = true\n[extract]\nfrom = \"file://{}/\"\n[[transform]]\nkind = \"gzip\"\n[load]\nto = \"cache:packed/\"\n",
        input.display()
    );
    let unpack = "name = \"unpack\"\nmounted = true\n[extract]\nfrom = \"cache:packed/\"\n[[transform]]\nkind = \"gunzip\"\n[load]\nto = \"hdd:/back/\"\n";
    for (name, text) in [("pack", pack.as_str()), ("unpack", unpack)] {
        let path = node.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        node.cli(&["pipeline", "register", path.to_str().unwrap()])
            .ok();
    }
    node.cli(&["pipeline", "run", "pack", "--wait"]).ok();
    node.cli(&["pipeline", "run", "unpack", "--wait"]).ok();
    for i in 0..10 {
        let out = node
            .command(&["get", &format!("hdd:/back/f{i}"), "-"])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, test_bytes(20_000 + i, i as u64), "f{i}");
    }
    // Nothing touched a tier on the way but the last load.
    let objects = node.objects_total();
    assert_eq!(objects, 10);
    // A loop through the cache is refused.
    let looped = node.dir.path().join("loop.toml");
    std::fs::write(
        &looped,
        "name = \"loop\"\n[extract]\nfrom = \"cache:\"\n[load]\nto = \"cache:again/\"\n",
    )
    .unwrap();
    node.cli(&["pipeline", "register", looped.to_str().unwrap()])
        .fails(2, "a loop");
}

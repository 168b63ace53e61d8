//! Moves and copies of whole prefixes, run as one job with progress: what a user sees, bad
//! input, objects that cannot move, and a node killed mid-job.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use letl_tests::{TestNode, blake3_of, test_bytes};

/// Puts `count` objects under `prefix` (some in a sub-directory); returns their keys below the
/// prefix with their hashes.
fn put_set(node: &TestNode, prefix: &str, count: usize) -> Vec<(String, String)> {
    let mut set = Vec::new();
    for i in 0..count {
        let name = if i % 3 == 0 {
            format!("sub/o{i}")
        } else {
            format!("o{i}")
        };
        let data = test_bytes(1000 + i * 37, i as u64);
        let file = node.dir.path().join("upload");
        std::fs::write(&file, &data).unwrap();
        node.cli(&["put", file.to_str().unwrap(), &format!("{prefix}{name}")])
            .ok();
        set.push((name, blake3_of(&data)));
    }
    set.sort();
    set
}

/// `ls` as (key below `prefix`, hash) pairs.
fn listed(node: &TestNode, prefix: &str) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = node
        .cli(&["ls", prefix, "--json"])
        .ok()
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            let uri = v["uri"].as_str().unwrap();
            (
                uri.strip_prefix(prefix).unwrap().to_string(),
                v["hash"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    found.sort();
    found
}

#[test]
fn a_prefix_moves_as_one_job_and_its_request_id_runs_it_once() {
    let node = TestNode::start(None);
    let set = put_set(&node, "ssd:/covid/", 25);
    let other = put_set(&node, "ssd:/covidx/", 1);

    let out = node
        .cli(&[
            "mv",
            "ssd:/covid/",
            "hdd:/archive/",
            "--request-id",
            "job-1",
        ])
        .ok()
        .to_string();
    assert!(
        out.starts_with("job-1\tmv\tssd:/covid/ -> hdd:/archive/\tdone\t25/25 objects\t"),
        "{out}"
    );
    assert!(out.trim_end().ends_with("\t0 failed"), "{out}");
    assert_eq!(listed(&node, "hdd:/archive/"), set);
    assert!(listed(&node, "ssd:/covid/").is_empty());
    // A prefix is whole segments: `covidx/` is another directory and stays.
    assert_eq!(listed(&node, "ssd:/covidx/"), other);

    // The same request id returns the job; nothing runs again.
    let again = node
        .cli(&[
            "mv",
            "ssd:/covid/",
            "hdd:/archive/",
            "--request-id",
            "job-1",
        ])
        .ok()
        .to_string();
    assert_eq!(again, out);
    node.cli(&[
        "mv",
        "ssd:/covid/",
        "pmem:/elsewhere/",
        "--request-id",
        "job-1",
    ])
    .fails(5, "request id `job-1` was used for another job");
    let shown = node.cli(&["moves", "--job", "job-1"]).ok().to_string();
    assert_eq!(shown, out);
    let jobs = node.cli(&["moves", "--jobs", "--json"]).ok().to_string();
    let job: serde_json::Value = serde_json::from_str(jobs.lines().next().unwrap()).unwrap();
    assert_eq!(job["objects_done"], 25);
    assert_eq!(job["state"], "done");
    // Each object's own transfer is in the move log under the job's id.
    let moves = node.cli(&["moves"]).ok().to_string();
    assert_eq!(moves.matches("\tjob-1#").count(), 25, "{moves}");

    // A copy job, detached, then followed to its end.
    let id = node
        .cli(&["cp", "hdd:/archive/", "pmem:/", "--detach"])
        .ok()
        .trim()
        .to_string();
    let followed = node
        .cli(&["moves", "--job", &id, "--wait"])
        .ok()
        .to_string();
    assert!(
        followed.contains("\tcp\thdd:/archive/ -> pmem:/\tdone\t25/25 objects"),
        "{followed}"
    );
    assert_eq!(listed(&node, "pmem:/"), set);
    assert_eq!(listed(&node, "hdd:/archive/"), set);
}

#[test]
fn bad_prefix_jobs_are_refused_naming_what_is_wrong() {
    let node = TestNode::start(None);
    put_set(&node, "ssd:/a/", 2);
    node.cli(&["mv", "ssd:/a/", "hdd:/file"])
        .fails(2, "a job's destination must be a prefix ending in `/`");
    node.cli(&["mv", "ssd:/a/", "ssd:/a/b/"])
        .fails(2, "overlap");
    node.cli(&["mv", "ssd:/", "ssd:/x/"]).fails(2, "overlap");
    node.cli(&["mv", "ssd:/nothing/", "hdd:/x/"])
        .fails(3, "no objects under ssd:/nothing/");
    node.cli(&["mv", "ssd:/a/", "tape:/x/"])
        .fails(3, "unknown tier `tape`");
    node.cli(&["mv", "ssd:/a/", "hdd:/x/", "--request-id", "a b"])
        .fails(2, "invalid request id");
    node.cli(&["moves", "--job", "never"])
        .fails(3, "no move job with request id `never`");
    node.cli(&["mv", "ssd:/a/o1", "hdd:/x/", "--detach"])
        .fails(2, "--detach is for prefixes");
    // Nothing moved.
    assert_eq!(listed(&node, "ssd:/a/").len(), 2);
}

#[test]
fn objects_that_cannot_move_are_reported_and_stay_where_they_were() {
    let node = TestNode::start(None);
    let set = put_set(&node, "ssd:/in/", 7);
    // `out/sub` is an object on the destination, so `out/sub/...` cannot be stored.
    let file = node.dir.path().join("blocker");
    std::fs::write(&file, b"blocker").unwrap();
    node.cli(&["put", file.to_str().unwrap(), "hdd:/out/sub"])
        .ok();

    let run = node.cli(&["mv", "ssd:/in/", "hdd:/out/", "--request-id", "j"]);
    let blocked: Vec<&(String, String)> =
        set.iter().filter(|(k, _)| k.starts_with("sub/")).collect();
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "{} of 7 objects under ssd:/in/ could not be moved",
            blocked.len()
        )),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("letl: in/sub/o0: "), "{}", run.stderr);
    assert!(
        run.stdout
            .contains(&format!("\tdone\t{}/7 objects", 7 - blocked.len())),
        "{}",
        run.stdout
    );
    // The blocked objects are still at the source, the others moved; none is lost.
    let left = listed(&node, "ssd:/in/");
    assert_eq!(left.len(), blocked.len());
    assert!(left.iter().all(|(k, _)| k.starts_with("sub/")));
    assert_eq!(listed(&node, "hdd:/out/").len(), 7 - blocked.len() + 1);
}

#[test]
fn a_job_interrupted_by_a_crash_resumes_at_restart_and_moves_each_object_once() {
    for point in ["move:intent", "move:copied", "move:recorded"] {
        let mut node = TestNode::start(None);
        let set = put_set(&node, "ssd:/data/", 9);
        node.terminate();
        node.env = vec![("LETL_CRASH_AT".to_string(), point.to_string())];
        node.restart();
        let run = node.cli(&["mv", "ssd:/data/", "hdd:/kept/", "--request-id", "crashy"]);
        assert_ne!(run.code, 0, "{point}: a crashed node cannot report success");
        assert_eq!(
            node.wait_for_exit().code(),
            Some(137),
            "{point}: {}",
            node.log()
        );

        node.env.clear();
        node.restart();
        let done = node
            .cli(&["moves", "--job", "crashy", "--wait"])
            .ok()
            .to_string();
        assert!(done.contains("\tdone\t9/9 objects\t"), "{point}: {done}");
        assert!(done.trim_end().ends_with("\t0 failed"), "{point}: {done}");
        assert_eq!(listed(&node, "hdd:/kept/"), set, "{point}");
        assert!(listed(&node, "ssd:/data/").is_empty(), "{point}");
        let objects = node.objects_total();
        assert_eq!(objects, 9, "{point}: each object exactly once");
    }
}

#[test]
fn a_job_paused_by_sigterm_goes_on_after_restart() {
    let mut node = TestNode::start(None);
    let data = test_bytes(2 << 20, 9);
    let file = node.dir.path().join("big");
    std::fs::write(&file, &data).unwrap();
    let count = 40;
    for i in 0..count {
        node.cli(&["put", file.to_str().unwrap(), &format!("ssd:/big/{i}")])
            .ok();
    }
    // A copy streams every byte, so the job takes long enough to stop it half-way.
    let id = node
        .cli(&["cp", "ssd:/big/", "hdd:/big/", "--detach"])
        .ok()
        .trim()
        .to_string();
    loop {
        let job: serde_json::Value =
            serde_json::from_str(node.cli(&["moves", "--job", &id, "--json"]).ok()).unwrap();
        if job["objects_done"].as_u64().unwrap() > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(node.terminate().code(), Some(0), "{}", node.log());
    let paused: serde_json::Value = {
        node.restart();
        serde_json::from_str(node.cli(&["moves", "--job", &id, "--json"]).ok()).unwrap()
    };
    eprintln!(
        "after restart: {} of {count} copied",
        paused["objects_done"]
    );
    let done = node
        .cli(&["moves", "--job", &id, "--wait"])
        .ok()
        .to_string();
    assert!(
        done.contains(&format!("\tdone\t{count}/{count} objects\t")),
        "{done}"
    );
    assert_eq!(listed(&node, "hdd:/big/").len(), count);
    assert!(
        listed(&node, "hdd:/big/")
            .iter()
            .all(|(_, hash)| *hash == blake3_of(&data))
    );
    assert_eq!(listed(&node, "ssd:/big/").len(), count);
    // Nothing was left half-written by the stop.
    assert_eq!(node.staged_files("hdd"), 0);
}

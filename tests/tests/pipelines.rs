//! Pipelines as users run them: register, mount, run, stats, jobs; results checked against
//! the system's own tools; incremental re-runs; exec and http transforms against a real
//! subprocess and a real HTTP server; a node stopped mid-job.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;

use letl_tests::{TestNode, md5sum_of, test_bytes};

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
        Some(md5sum_of(b"changed"))
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

fn dir_pipeline(name: &str, input: &Path, transforms: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nmounted = true\n[extract]\nfrom = \"file://{}/\"\n{transforms}\n[load]\nto = \"hdd:/{name}/\"\n{extra}",
        input.display()
    )
}

#[test]
fn bad_specs_and_bad_runs_are_refused_with_the_reason() {
    let node = TestNode::start(None);
    let input = node.dir.path().join("in");
    write_files(&input, 3, 10);
    let md5 = "[[transform]]\nkind = \"md5\"";
    let register = |text: &str| {
        let path = spec_file(&node, "spec", text);
        node.cli(&["pipeline", "register", path.to_str().unwrap()])
    };
    let cases = [
        (
            dir_pipeline("p", &input, md5, "[scaling]\nthreshold = 0"),
            "scaling.threshold: must be at least 1",
        ),
        (
            dir_pipeline("p", &input, md5, "[scaling]\ngrowth_factor = 1.0"),
            "scaling.growth_factor: must be more than 1",
        ),
        (
            dir_pipeline(
                "p",
                &input,
                md5,
                "[scaling]\nworkers_min = 4\nworkers_max = 2",
            ),
            "scaling.workers_max: 2 is less than workers_min (4)",
        ),
        (
            dir_pipeline("p", &input, "[[transform]]\nkind = \"md7\"", ""),
            "transform[0].kind: unknown transform `md7`",
        ),
        (
            dir_pipeline("p", &input, "[[transform]]\nkind = \"zstd\"\nspeed = 3", ""),
            "transform[0].speed: unknown argument",
        ),
        (
            dir_pipeline(
                "p",
                &input,
                "[[transform]]\nkind = \"exec\"\ncommand = [\"no-such-command-here\"]",
                "",
            ),
            "transform[0].command: command `no-such-command-here` not found",
        ),
        (
            "name = \"p\"\n[extract]\nfrom = \"ssd:/data/\"\n[load]\nto = \"ssd:/data/out/\"\n"
                .to_string(),
            "the pipeline would read its own output (a loop)",
        ),
        (
            "name = \"p\"\n[extract]\nfrom = \"s3://genomes/covid/\"\n[load]\nto = \"ssd:/out/\"\n"
                .to_string(),
            "extract.from: `s3://genomes/covid/`: s3:// sources need [source] endpoint",
        ),
        (
            dir_pipeline("p", &input, md5, "").replace("hdd:/p/", "tape:/p/"),
            "load.to: `tape:/p/`: unknown tier `tape`",
        ),
    ];
    for (text, reason) in cases {
        register(&text).fails(2, reason);
    }
    node.cli(&["pipeline", "run", "nope"])
        .fails(3, "no pipeline `nope`");
    node.cli(&["pipeline", "list"]).ok();
    assert_eq!(
        node.cli(&["pipeline", "list"]).ok(),
        "",
        "nothing was registered"
    );

    // Mounting governs running.
    let text = dir_pipeline("p", &input, md5, "").replace("mounted = true", "mounted = false");
    assert_eq!(register(&text).ok(), "p\tv1\tunmounted\n");
    node.cli(&["pipeline", "run", "p"])
        .fails(5, "pipeline `p` is not mounted");
    node.cli(&["pipeline", "mount", "p"]).ok();
    let first = node
        .cli(&["pipeline", "run", "p", "--request-id", "r1", "--wait"])
        .ok()
        .to_string();
    // The same request id: the same job, never a second run.
    let second = node
        .cli(&["pipeline", "run", "p", "--request-id", "r1"])
        .ok()
        .to_string();
    assert_eq!(second.lines().next(), first.lines().next());
    let jobs: serde_json::Value =
        serde_json::from_str(&node.http("GET", "/v1/jobs?pipeline=p", b"").1).unwrap();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1);
    node.cli(&["pipeline", "unmount", "p"]).ok();
    node.cli(&["pipeline", "run", "p"]).fails(5, "not mounted");
    node.cli(&["job", "status", "j-none"])
        .fails(3, "no job `j-none`");
}

#[test]
fn a_slow_transform_grows_its_workers_and_the_breaches_show_in_stats() {
    let node = TestNode::start(None);
    let input = node.dir.path().join("in");
    write_files(&input, 60, 100);
    let text = dir_pipeline(
        "slow",
        &input,
        "[[transform]]\nkind = \"exec\"\ncommand = [\"sh\", \"-c\", \"sleep 0.05; cat\"]",
        "[scaling]\nthreshold = 2\ngrowth_factor = 2.0\nworkers_min = 1\nworkers_max = 6",
    );
    let path = spec_file(&node, "slow", &text);
    node.cli(&["pipeline", "register", path.to_str().unwrap()])
        .ok();
    // `GET /v1/jobs/{id}?wait_ms=N` (what `--wait` and `job watch` ask with) answers once the
    // job ended, or as it is after N ms. The job takes at least 0.5 s (60 objects of 50 ms,
    // at most 6 at a time).
    let out = node.cli(&["pipeline", "run", "slow"]);
    let id = out.ok().lines().next().unwrap().to_string();
    let (status, body) = node.http("GET", &format!("/v1/jobs/{id}?wait_ms=1"), b"");
    assert_eq!(status, 200, "{body}");
    let running: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(running["state"], "running", "{running}");
    let (status, body) = node.http("GET", &format!("/v1/jobs/{id}?wait_ms=soon"), b"");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("wait_ms"), "{body}");
    let (status, body) = node.http("GET", &format!("/v1/jobs/{id}?wait_ms=60000"), b"");
    assert_eq!(status, 200, "{body}");
    let ended: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ended["state"], "succeeded", "{ended}");
    let job = job_json(&node, &id);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["stats"]["objects_out"], 60);
    let transform = &job["stats"]["transform"];
    assert!(transform["workers_peak"].as_u64().unwrap() > 1, "{job}");
    assert!(transform["workers_peak"].as_u64().unwrap() <= 6, "{job}");
    assert!(
        transform["threshold_breaches"].as_u64().unwrap() >= 1,
        "{job}"
    );
    let stats: serde_json::Value =
        serde_json::from_str(node.cli(&["pipeline", "stats", "slow", "--json"]).ok()).unwrap();
    assert!(
        stats["transform_threshold_breaches"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    assert!(
        stats["transform_workers_provisioned"].as_u64().unwrap() > 1,
        "{stats}"
    );
    let human = node
        .cli(&["job", "status", job["id"].as_str().unwrap()])
        .ok()
        .to_string();
    assert!(human.contains("state:      succeeded"), "{human}");
    let (status, metrics) = node.http("GET", "/metrics", b"");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("letl_pipeline_objects_out_total{pipeline=\"slow\"} 60"),
        "{metrics}"
    );
    assert!(
        metrics.contains("letl_pipeline_transform_threshold_breaches_total{pipeline=\"slow\"}"),
        "{metrics}"
    );
}

/// A child process killed (and reaped) when dropped.
struct Server(std::process::Child);

impl Server {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real HTTP transform server: uppercases what is POSTed; 500 for bodies containing "bad".
fn start_transform_server(dir: &Path) -> (Server, u16) {
    let port_file = dir.join("port");
    let script = r#"
import http.server, os, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if self.headers.get("Transfer-Encoding") == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        if b"bad" in body:
            self.send_response(500); self.end_headers(); self.wfile.write(b"cannot take it"); return
        out = body.upper()
        self.send_response(200)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
open(sys.argv[1] + ".tmp", "w").write(str(s.server_address[1])); os.rename(sys.argv[1] + ".tmp", sys.argv[1])
s.serve_forever()
"#;
    let server = Server(
        Command::new("python3")
            .args(["-c", script, port_file.to_str().unwrap()])
            .spawn()
            .unwrap(),
    );
    for _ in 0..500 {
        if let Ok(text) = std::fs::read_to_string(&port_file) {
            return (server, text.trim().parse().unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("the transform server did not start");
}

#[test]
fn exec_and_http_transforms_run_real_programs_and_dead_letter_their_failures() {
    let node = TestNode::start(None);
    let input = node.dir.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    for (name, text) in [
        ("a", "alpha"),
        ("b", "bad beta"),
        ("c", "gamma"),
        ("d", "bad delta"),
    ] {
        std::fs::write(input.join(name), text).unwrap();
    }
    // exec: a shell script that fails, with a message on stderr, on bad input.
    let script = "x=$(cat); case \"$x\" in *bad*) echo \"refusing $x\" >&2; exit 3;; esac; printf %s \"$x\" | tr a-z A-Z";
    let text = dir_pipeline(
        "shout",
        &input,
        &format!(
            "[[transform]]\nkind = \"exec\"\ncommand = [\"sh\", \"-c\", {script:?}]\ntimeout = \"10s\""
        ),
        "",
    );
    let path = spec_file(&node, "shout", &text);
    node.cli(&["pipeline", "register", path.to_str().unwrap()])
        .ok();
    let run = node.cli(&["pipeline", "run", "shout", "--wait"]);
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("2 objects dead-lettered"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("refusing bad beta"), "{}", run.stderr);
    assert_eq!(object(&node, "hdd:/shout/a").as_deref(), Some("ALPHA"));
    assert_eq!(
        object(&node, "hdd:/shout/b"),
        None,
        "a failed result is never stored"
    );
    // A retry runs only the dead letters.
    let id = run.stdout.lines().next().unwrap();
    let retry = node.cli(&["job", "retry", id, "--wait"]);
    assert_eq!(retry.code, 1, "{retry:?}");
    let retried = job_json(&node, retry.stdout.lines().next().unwrap());
    assert_eq!(retried["stats"]["objects_in"], 2, "{retried}");
    assert_eq!(retried["retry_of"], id);

    // A command that takes too long is stopped at its timeout, named in the error.
    let text = dir_pipeline(
        "hang",
        &input,
        "[[transform]]\nkind = \"exec\"\ncommand = [\"sleep\", \"30\"]\ntimeout = \"1s\"",
        "[scaling]\nworkers_max = 4\nworkers_min = 4",
    );
    let path = spec_file(&node, "hang", &text);
    node.cli(&["pipeline", "register", path.to_str().unwrap()])
        .ok();
    let hung = run_and_wait(&node, "hang");
    assert_eq!(hung["stats"]["dead_lettered"], 4, "{hung}");
    let error = hung["dead_letters"][0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(error.contains("no result within 1s (killed)"), "{error}");

    // http: a real server, and a server that is down.
    let (mut server, port) = start_transform_server(node.dir.path());
    let text = dir_pipeline(
        "web",
        &input,
        &format!(
            "[[transform]]\nkind = \"http\"\nurl = \"http://127.0.0.1:{port}/upper\"\ntimeout = \"10s\""
        ),
        "",
    );
    let path = spec_file(&node, "web", &text);
    node.cli(&["pipeline", "register", path.to_str().unwrap()])
        .ok();
    let job = run_and_wait(&node, "web");
    assert_eq!(job["stats"]["objects_out"], 2, "{job}");
    assert_eq!(object(&node, "hdd:/web/c").as_deref(), Some("GAMMA"));
    let letters = job["dead_letters"].as_array().unwrap();
    assert!(
        letters[0]["error"].as_str().unwrap().contains("500"),
        "{job}"
    );
    server.stop();
    std::fs::write(input.join("a"), "alpha again").unwrap();
    let down = run_and_wait(&node, "web");
    assert_eq!(down["state"], "failed", "{down}");
    let error = down["dead_letters"][0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        error.contains(&format!("http transform http://127.0.0.1:{port}/upper")),
        "{error}"
    );
    assert_eq!(
        object(&node, "hdd:/web/a").as_deref(),
        Some("ALPHA"),
        "the old output stays"
    );
}

#[test]
fn a_node_stopped_mid_job_resumes_it_and_makes_each_output_once() {
    let mut node = TestNode::start(None);
    let input = node.dir.path().join("in");
    let names = write_files(&input, 30, 50);
    let text = dir_pipeline(
        "steady",
        &input,
        "[[transform]]\nkind = \"exec\"\ncommand = [\"sh\", \"-c\", \"sleep 0.1; cat\"]",
        // Short queues: the stop comes while most inputs are still unlisted.
        "[scaling]\nthreshold = 1\nworkers_max = 1",
    );
    let path = spec_file(&node, "steady", &text);
    node.cli(&["pipeline", "register", path.to_str().unwrap()])
        .ok();
    let id = node
        .cli(&["pipeline", "run", "steady"])
        .ok()
        .trim()
        .to_string();
    loop {
        if job_json(&node, &id)["stats"]["objects_out"]
            .as_u64()
            .unwrap()
            >= 3
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // `letl node shutdown`: the job stops taking in, drains, records itself; the node exits 0.
    assert_eq!(node.cli(&["node", "shutdown"]).ok(), "shutdown requested\n");
    assert_eq!(node.wait_for_exit().code(), Some(0), "{}", node.log());
    assert!(
        node.log().contains("pipeline job ended") && node.log().contains("state=\"interrupted\""),
        "the job was stopped before its end: {}",
        node.log()
    );
    node.restart();
    let done = node.cli(&["job", "watch", &id]);
    assert_eq!(done.code, 0, "{done:?}");
    let job = job_json(&node, &id);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["stats"]["objects_out"], 30, "{job}");
    let listed = node.cli(&["ls", "hdd:/steady/"]).ok().lines().count();
    assert_eq!(listed, names.len());
    assert_eq!(node.staged_files("hdd"), 0);
}

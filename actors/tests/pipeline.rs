//! The pipeline engine on in-memory sources and sinks: results, autoscaling, dead letters,
//! panics, incremental runs and stopping.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use letl_actors::pipeline::{
    Input, JobEnd, JobPlan, JobProgress, Ledger, Scaling, Seen, Sink, Source, Stored, run_job,
};
use letl_actors::transform::{Transform, TransformError, TransformRegistry};
use letl_storage::{ByteStream, ObjectBody, stream_of};
use tokio::sync::watch;

#[derive(Debug, Default)]
struct MemorySource {
    objects: BTreeMap<String, Vec<u8>>,
    /// Which thread opened each object, in order.
    opened_on: Mutex<Vec<String>>,
}

impl MemorySource {
    fn new(objects: BTreeMap<String, Vec<u8>>) -> Self {
        Self {
            objects,
            ..Self::default()
        }
    }

    /// Opens made on lane threads, and elsewhere.
    fn opens(&self) -> (usize, usize) {
        let opened_on = self.opened_on.lock().unwrap();
        let on_lanes = opened_on.iter().filter(|t| *t == "letl-lane").count();
        (on_lanes, opened_on.len() - on_lanes)
    }
}

#[async_trait::async_trait]
impl Source for MemorySource {
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Input>, String> {
        Ok(self
            .objects
            .iter()
            .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
            .take(limit)
            .map(|(k, v)| Input {
                uri: format!("mem:/{k}"),
                key: k.clone(),
                size: v.len() as u64,
                fingerprint: format!("{:x}", fingerprint(v)),
            })
            .collect())
    }

    async fn open(&self, input: &Input) -> Result<ObjectBody, String> {
        let thread = std::thread::current()
            .name()
            .unwrap_or("unnamed")
            .to_string();
        self.opened_on.lock().unwrap().push(thread);
        let data = self.objects.get(&input.key).ok_or("gone")?;
        Ok(stream_of(Bytes::from(data.clone()), 1000).into())
    }
}

/// A cheap fingerprint for tests: length and a sum.
fn fingerprint(data: &[u8]) -> u64 {
    data.iter().fold(data.len() as u64, |acc, b| {
        acc.wrapping_mul(31).wrapping_add(u64::from(*b))
    })
}

#[derive(Debug, Default)]
struct MemorySink {
    stored: Mutex<BTreeMap<String, Vec<u8>>>,
}

#[async_trait::async_trait]
impl Sink for MemorySink {
    async fn store(&self, input: &Input, mut output: ByteStream) -> Result<Stored, String> {
        let mut bytes = Vec::new();
        while let Some(chunk) = output.next().await {
            bytes.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
        }
        let size = bytes.len() as u64;
        self.stored.lock().unwrap().insert(input.key.clone(), bytes);
        Ok(Stored {
            uri: format!("out:/{}", input.key),
            size,
            hash: String::new(),
        })
    }
}

#[derive(Debug, Default)]
struct MemoryLedger {
    produced: Mutex<BTreeMap<String, String>>,
}

#[async_trait::async_trait]
impl Ledger for MemoryLedger {
    async fn seen(&self, input: &Input) -> Result<Seen, String> {
        Ok(match self.produced.lock().unwrap().get(&input.key) {
            Some(f) if *f == input.fingerprint => Seen::Produced,
            _ => Seen::New,
        })
    }
    async fn record(&self, input: &Input, _stored: &Stored) -> Result<(), String> {
        self.produced
            .lock()
            .unwrap()
            .insert(input.key.clone(), input.fingerprint.clone());
        Ok(())
    }
}

/// Sleeps, then passes the object on; panics on objects named `bad...`.
#[derive(Debug)]
struct Slow(Duration);

#[async_trait::async_trait]
impl Transform for Slow {
    fn kind(&self) -> &str {
        "slow"
    }
    fn version(&self) -> u32 {
        1
    }
    async fn apply(&self, input: ByteStream) -> Result<ByteStream, TransformError> {
        tokio::time::sleep(self.0).await;
        let mut bytes = Vec::new();
        let mut input = input;
        while let Some(chunk) = input.next().await {
            bytes.extend_from_slice(&chunk.map_err(|e| TransformError(e.to_string()))?);
        }
        assert!(
            !bytes.starts_with(b"bad"),
            "slow transform met a bad object"
        );
        Ok(stream_of(Bytes::from(bytes), 4096))
    }
}

fn source(count: usize) -> Arc<MemorySource> {
    let mut objects = BTreeMap::new();
    for i in 0..count {
        objects.insert(
            format!("obj{i:04}"),
            format!("object number {i}").into_bytes(),
        );
    }
    Arc::new(MemorySource::new(objects))
}

fn plan(
    source: Arc<MemorySource>,
    chain: Vec<Arc<dyn Transform>>,
    sink: Arc<MemorySink>,
    ledger: Arc<MemoryLedger>,
    transform: Scaling,
) -> JobPlan {
    JobPlan {
        job_id: "test".to_string(),
        source,
        chain,
        sink,
        ledger,
        extract: Scaling::default(),
        transform,
        load: Scaling::default(),
    }
}

/// Runs a job to its end, which must be `Finished`; gives its figures as they ended.
async fn finished(job: JobPlan) -> Arc<JobProgress> {
    let progress = Arc::new(JobProgress::default());
    let (_stop_tx, stop) = watch::channel(false);
    let end = tokio::time::timeout(
        Duration::from_secs(120),
        run_job(job, Arc::clone(&progress), stop),
    )
    .await
    .expect("the job ends")
    .unwrap();
    assert_eq!(end, JobEnd::Finished);
    progress
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_md5_job_produces_every_digest_and_a_rerun_skips_them_all() {
    let md5 = TransformRegistry::builtin().build_kind("md5").unwrap();
    let (sink, ledger) = (
        Arc::new(MemorySink::default()),
        Arc::new(MemoryLedger::default()),
    );
    let source = source(300);
    let progress = Arc::new(JobProgress::default());
    let (_stop_tx, stop) = watch::channel(false);
    let end = run_job(
        plan(
            Arc::clone(&source),
            vec![Arc::clone(&md5)],
            Arc::clone(&sink),
            Arc::clone(&ledger),
            Scaling::default(),
        ),
        Arc::clone(&progress),
        stop.clone(),
    )
    .await
    .unwrap();
    assert_eq!(end, JobEnd::Finished);
    let stats = progress.snapshot();
    assert_eq!(
        (stats.objects_in, stats.objects_out, stats.dead_lettered),
        (300, 300, 0)
    );
    let stored = sink.stored.lock().unwrap().clone();
    assert_eq!(stored.len(), 300);
    // The digest as md5sum prints it.
    use md5::Digest;
    for (key, digest) in &stored {
        let data = &source.objects[key];
        assert_eq!(
            *digest,
            letl_actors::transform::hex(&md5::Md5::digest(data)).into_bytes()
        );
    }

    let again = Arc::new(JobProgress::default());
    run_job(
        plan(
            source,
            vec![md5],
            Arc::clone(&sink),
            ledger,
            Scaling::default(),
        ),
        Arc::clone(&again),
        stop,
    )
    .await
    .unwrap();
    let stats = again.snapshot();
    assert_eq!(
        (stats.skipped, stats.objects_in, stats.objects_out),
        (300, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_transform_grows_its_workers_and_counts_breaches() {
    let (sink, ledger) = (
        Arc::new(MemorySink::default()),
        Arc::new(MemoryLedger::default()),
    );
    let progress = Arc::new(JobProgress::default());
    let (_stop_tx, stop) = watch::channel(false);
    let scaling = Scaling {
        threshold: 2,
        growth_factor: 2.0,
        workers_min: 1,
        workers_max: 6,
    };
    let slow: Arc<dyn Transform> = Arc::new(Slow(Duration::from_millis(30)));
    run_job(
        plan(source(60), vec![slow], Arc::clone(&sink), ledger, scaling),
        Arc::clone(&progress),
        stop,
    )
    .await
    .unwrap();
    let stats = progress.snapshot();
    assert_eq!(stats.objects_out, 60);
    assert!(stats.transform.threshold_breaches >= 1, "{stats:?}");
    assert!(stats.transform.workers_peak > 1, "{stats:?}");
    assert!(stats.transform.workers_peak <= 6, "{stats:?}");
    assert_eq!(stats.transform.workers, 0, "the stage ended");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_transform_dead_letters_its_object_and_the_rest_go_on() {
    let mut objects = BTreeMap::new();
    for i in 0..20 {
        objects.insert(format!("ok{i:02}"), b"fine".to_vec());
    }
    objects.insert("zz".to_string(), b"bad object".to_vec());
    let source = Arc::new(MemorySource::new(objects));
    let (sink, ledger) = (
        Arc::new(MemorySink::default()),
        Arc::new(MemoryLedger::default()),
    );
    let progress = Arc::new(JobProgress::default());
    let (_stop_tx, stop) = watch::channel(false);
    let slow: Arc<dyn Transform> = Arc::new(Slow(Duration::ZERO));
    let end = run_job(
        plan(
            source,
            vec![slow],
            Arc::clone(&sink),
            ledger,
            Scaling::default(),
        ),
        Arc::clone(&progress),
        stop,
    )
    .await
    .unwrap();
    assert_eq!(end, JobEnd::Finished);
    let stats = progress.snapshot();
    assert_eq!(
        (stats.objects_out, stats.dead_lettered),
        (20, 1),
        "{stats:?}"
    );
    assert_eq!(stats.transform.restarts, 1);
    let letters = progress.dead_letters();
    assert_eq!(letters[0].input.key, "zz");
    assert!(letters[0].error.contains("panicked"), "{letters:?}");
}

/// Streams its first chunk, then panics: a worker dying while its output streams.
#[derive(Debug)]
struct DiesMidway;

#[async_trait::async_trait]
impl Transform for DiesMidway {
    fn kind(&self) -> &str {
        "dies-midway"
    }
    fn version(&self) -> u32 {
        1
    }
    async fn apply(&self, _input: ByteStream) -> Result<ByteStream, TransformError> {
        let chunks = futures_util::stream::iter(0..2).map(|i| {
            assert!(i == 0, "died mid-output");
            Ok(Bytes::from_static(b"partial"))
        });
        Ok(Box::pin(chunks))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dying_mid_output_stores_nothing_and_counts_once() {
    let (sink, ledger) = (
        Arc::new(MemorySink::default()),
        Arc::new(MemoryLedger::default()),
    );
    let progress = Arc::new(JobProgress::default());
    let (_stop_tx, stop) = watch::channel(false);
    let dies: Arc<dyn Transform> = Arc::new(DiesMidway);
    run_job(
        plan(
            source(3),
            vec![dies],
            Arc::clone(&sink),
            ledger,
            Scaling::default(),
        ),
        Arc::clone(&progress),
        stop,
    )
    .await
    .unwrap();
    let stats = progress.snapshot();
    assert_eq!(
        (stats.objects_out, stats.dead_lettered),
        (0, 3),
        "{stats:?}"
    );
    assert!(
        sink.stored.lock().unwrap().is_empty(),
        "a cut output is never stored"
    );
    assert!(
        progress
            .dead_letters()
            .iter()
            .all(|d| d.stage == "transform")
    );
}

/// Runs a job over `source` and stops it after 200 ms: it must end `Stopped`, having
/// finished everything it took in, some but not all of the source. Gives its figures and
/// what it stored.
async fn stopped_midway(
    source: Arc<MemorySource>,
    chain: Vec<Arc<dyn Transform>>,
    transform: Scaling,
) -> (letl_actors::pipeline::JobStats, BTreeMap<String, Vec<u8>>) {
    let (sink, ledger) = (
        Arc::new(MemorySink::default()),
        Arc::new(MemoryLedger::default()),
    );
    let progress = Arc::new(JobProgress::default());
    let (stop_tx, stop) = watch::channel(false);
    let total = source.objects.len() as u64;
    let job = tokio::spawn(run_job(
        plan(source, chain, Arc::clone(&sink), ledger, transform),
        Arc::clone(&progress),
        stop,
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop_tx.send(true).unwrap();
    let end = job.await.unwrap().unwrap();
    assert_eq!(end, JobEnd::Stopped);
    let stats = progress.snapshot();
    assert!(
        stats.objects_out > 0 && stats.objects_out < total,
        "{stats:?}"
    );
    assert_eq!(
        stats.objects_in,
        stats.objects_out + stats.dead_lettered,
        "{stats:?}"
    );
    let stored = sink.stored.lock().unwrap().clone();
    assert_eq!(stored.len() as u64, stats.objects_out);
    (stats, stored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_job_finishes_what_it_took_in() {
    let slow: Arc<dyn Transform> = Arc::new(Slow(Duration::from_millis(20)));
    stopped_midway(source(3000), vec![slow], Scaling::default()).await;
}

/// An embedder's block transform: passes bytes through, sleeping over each block for the
/// time it is given, and panics on objects that start `bad`.
#[derive(Debug)]
struct PassThrough {
    per_block: Duration,
}

struct PassThroughState {
    per_block: Duration,
    started: bool,
    out: letl_actors::transform::Output,
}

impl letl_actors::transform::BlockState for PassThroughState {
    fn update(&mut self, block: &[u8]) -> std::io::Result<()> {
        if !self.started {
            self.started = true;
            assert!(!block.starts_with(b"bad"), "met a bad object");
        }
        std::thread::sleep(self.per_block);
        self.out.extend_from_slice(block)
    }
    fn finish(self: Box<Self>) -> std::io::Result<()> {
        Ok(())
    }
}

impl letl_actors::transform::BlockTransform for PassThrough {
    fn kind(&self) -> &str {
        "pass-through"
    }
    fn version(&self) -> u32 {
        1
    }
    fn start(
        &self,
        out: letl_actors::transform::Output,
    ) -> Box<dyn letl_actors::transform::BlockState> {
        Box::new(PassThroughState {
            per_block: self.per_block,
            started: false,
            out,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_transform_panicking_on_one_object_dead_letters_it_and_its_lane_goes_on() {
    let mut objects = BTreeMap::new();
    for i in 0..30 {
        objects.insert(format!("k{i:02}"), format!("fine {i}").into_bytes());
    }
    objects.insert("k10-bad".to_string(), b"bad object".to_vec());
    let source = Arc::new(MemorySource::new(objects));
    let (sink, ledger) = (
        Arc::new(MemorySink::default()),
        Arc::new(MemoryLedger::default()),
    );
    let one_worker = Scaling {
        workers_min: 1,
        workers_max: 1,
        ..Scaling::default()
    };
    let progress = finished(plan(
        Arc::clone(&source),
        vec![Arc::new(PassThrough {
            per_block: Duration::ZERO,
        })],
        Arc::clone(&sink),
        ledger,
        one_worker,
    ))
    .await;
    let stats = progress.snapshot();
    assert_eq!(
        (stats.objects_out, stats.dead_lettered),
        (30, 1),
        "{stats:?}"
    );
    let letters = progress.dead_letters();
    assert_eq!(letters[0].input.key, "k10-bad");
    assert_eq!(letters[0].stage, "transform", "{letters:?}");
    assert!(
        letters[0]
            .error
            .contains("transform `pass-through` panicked: met a bad object"),
        "{letters:?}"
    );
    let stored = sink.stored.lock().unwrap().clone();
    for (key, bytes) in &source.objects {
        if key != "k10-bad" {
            assert_eq!(stored.get(key), Some(bytes), "{key}");
        }
    }
    assert!(!stored.contains_key("k10-bad"));
    // One lane opened every object but the first, before and after the panic (this source
    // gives streams: the worker's first open found that out, and its lane was idle, so that
    // stream was used). Nothing was opened twice.
    assert_eq!(source.opens(), (30, 1));
}

/// Large results from two lanes, one running and one queued on each, with the load stage
/// asked for a single worker: every result arrives, byte for byte (load keeps two workers per
/// transform worker), and every object was opened on a lane thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_from_two_lanes_all_arrive_with_one_load_worker_asked_for() {
    let mut objects = BTreeMap::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..8 {
        // Incompressible: each result is several output blocks.
        let data: Vec<u8> = (0..(6 << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect();
        objects.insert(format!("big{i}"), data);
    }
    let source = Arc::new(MemorySource::new(objects));
    let (sink, ledger) = (
        Arc::new(MemorySink::default()),
        Arc::new(MemoryLedger::default()),
    );
    let registry = TransformRegistry::builtin();
    let chain = vec![
        registry
            .build(
                "transform[0]",
                serde_json::json!({"kind": "zstd", "level": 1})
                    .as_object()
                    .unwrap(),
            )
            .unwrap(),
        registry.build_kind("unzstd").unwrap(),
    ];
    let two_workers = Scaling {
        workers_min: 2,
        workers_max: 2,
        ..Scaling::default()
    };
    let mut job = plan(
        Arc::clone(&source),
        chain,
        Arc::clone(&sink),
        ledger,
        two_workers,
    );
    job.load = Scaling {
        workers_min: 1,
        workers_max: 1,
        ..Scaling::default()
    };
    let progress = finished(job).await;
    let stats = progress.snapshot();
    assert_eq!(
        (stats.objects_out, stats.dead_lettered),
        (8, 0),
        "{stats:?}"
    );
    assert!(stats.load.workers_peak >= 4, "{stats:?}");
    let stored = sink.stored.lock().unwrap().clone();
    for (key, data) in &source.objects {
        assert!(stored.get(key) == Some(data), "{key} differs");
    }
    let (on_lanes, elsewhere) = source.opens();
    assert_eq!(on_lanes + elsewhere, 8, "each object opened once");
    assert!(elsewhere <= 2, "{elsewhere} opens ahead of their passes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_with_no_transforms_copies_each_object_opened_by_its_worker() {
    let source = source(40);
    let (sink, ledger) = (
        Arc::new(MemorySink::default()),
        Arc::new(MemoryLedger::default()),
    );
    let progress = finished(plan(
        Arc::clone(&source),
        Vec::new(),
        Arc::clone(&sink),
        ledger,
        Scaling::default(),
    ))
    .await;
    assert_eq!(progress.snapshot().objects_out, 40);
    assert_eq!(*sink.stored.lock().unwrap(), source.objects);
    // No lane: nothing to run on one.
    assert_eq!(source.opens().0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_job_finishes_the_passes_its_lanes_took_in() {
    let source = source(3000);
    let (stats, stored) = stopped_midway(
        Arc::clone(&source),
        vec![Arc::new(PassThrough {
            per_block: Duration::from_millis(2),
        })],
        Scaling {
            workers_min: 2,
            workers_max: 2,
            ..Scaling::default()
        },
    )
    .await;
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    for (key, bytes) in &stored {
        assert_eq!(Some(bytes), source.objects.get(key), "{key}");
    }
    // Each object taken in was opened once, by a lane as its pass started but for each
    // worker's first.
    let (on_lanes, elsewhere) = source.opens();
    assert_eq!((on_lanes + elsewhere) as u64, stats.objects_in);
    assert!(elsewhere <= 2, "{elsewhere} opens ahead of their passes");
}

/// Local files, opened as `ObjectBody::File`.
#[derive(Debug)]
struct FileSource {
    dir: tempfile::TempDir,
    keys: Vec<String>,
    opens: Mutex<BTreeMap<String, usize>>,
}

#[async_trait::async_trait]
impl Source for FileSource {
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Input>, String> {
        Ok(self
            .keys
            .iter()
            .filter(|k| after.is_none_or(|a| k.as_str() > a))
            .take(limit)
            .map(|k| Input {
                uri: format!("file:/{k}"),
                key: k.clone(),
                size: 0,
                fingerprint: k.clone(),
            })
            .collect())
    }

    async fn open(&self, input: &Input) -> Result<ObjectBody, String> {
        *self
            .opens
            .lock()
            .unwrap()
            .entry(input.key.clone())
            .or_default() += 1;
        let file =
            std::fs::File::open(self.dir.path().join(&input.key)).map_err(|e| e.to_string())?;
        Ok(ObjectBody::File(file))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_files_are_opened_once_each_ahead_of_their_passes() {
    let dir = tempfile::tempdir().unwrap();
    let mut keys = Vec::new();
    let mut objects = BTreeMap::new();
    for i in 0..50 {
        let key = format!("f{i:02}");
        let data = format!("file number {i}").repeat(1000).into_bytes();
        std::fs::write(dir.path().join(&key), &data).unwrap();
        objects.insert(key.clone(), data);
        keys.push(key);
    }
    let source = Arc::new(FileSource {
        dir,
        keys,
        opens: Mutex::default(),
    });
    let (sink, ledger) = (
        Arc::new(MemorySink::default()),
        Arc::new(MemoryLedger::default()),
    );
    let md5 = TransformRegistry::builtin().build_kind("md5").unwrap();
    let mut job = plan(
        Arc::new(MemorySource::default()),
        vec![md5],
        Arc::clone(&sink),
        ledger,
        Scaling {
            workers_min: 2,
            workers_max: 2,
            ..Scaling::default()
        },
    );
    job.source = Arc::clone(&source) as Arc<dyn Source>;
    let progress = finished(job).await;
    assert_eq!(progress.snapshot().objects_out, 50);
    let stored = sink.stored.lock().unwrap().clone();
    use md5::Digest;
    for (key, data) in &objects {
        assert_eq!(
            stored[key],
            letl_actors::transform::hex(&md5::Md5::digest(data)).into_bytes(),
            "{key}"
        );
    }
    let opens = source.opens.lock().unwrap().clone();
    assert_eq!(opens.len(), 50);
    assert!(opens.values().all(|n| *n == 1), "{opens:?}");
}

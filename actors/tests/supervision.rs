//! The supervisor and tier actors, on in-memory backends.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use letl_actors::{
    NodeSupervisor, RestartPolicy, SupervisorArgs, SupervisorMsg, TierDirectory, TierSpec,
};
use letl_storage::{
    ByteStream, ContentHash, KeyPrefix, ManualClock, MemoryIndex, MemoryTier, ObjectKey,
    StorageError, TierName, hash_stream, stream_of,
};
use ractor::{Actor, ActorRef};
use tokio::sync::mpsc;

fn key(k: &str) -> ObjectKey {
    ObjectKey::new(k).unwrap()
}

fn spec(name: &str, capacity: Option<u64>) -> TierSpec {
    let clock = Arc::new(ManualClock::new(1_000));
    TierSpec {
        backend: Arc::new(MemoryTier::new(
            TierName::new(name).unwrap(),
            capacity,
            clock.clone(),
        )),
        index: Arc::new(MemoryIndex::default()),
        clock,
        object_bytes_max: 1 << 20,
    }
}

async fn start(policy: RestartPolicy) -> (ActorRef<SupervisorMsg>, TierDirectory) {
    let directory = TierDirectory::default();
    let args = SupervisorArgs {
        tiers: vec![spec("ssd", None), spec("hdd", Some(100))],
        directory: directory.clone(),
        restart_policy: policy,
    };
    let (supervisor, _) = Actor::spawn(None, NodeSupervisor, args).await.unwrap();
    (supervisor, directory)
}

fn ssd() -> TierName {
    TierName::new("ssd").unwrap()
}

async fn put(
    directory: &TierDirectory,
    k: &str,
    data: &'static [u8],
) -> Result<letl_storage::ObjectMeta, StorageError> {
    let tier = directory.get(&ssd())?;
    tier.put(
        key(k),
        stream_of(Bytes::from_static(data), 3),
        Some(data.len() as u64),
        None,
    )
    .await
}

#[tokio::test]
async fn tier_actor_serves_objects_with_versions() {
    let (supervisor, directory) = start(RestartPolicy::default()).await;
    let first = put(&directory, "a/b", b"hello").await.unwrap();
    assert_eq!((first.size, first.version), (5, 1));
    assert_eq!(first.hash, ContentHash::of(b"hello"));
    let second = put(&directory, "a/b", b"hello again").await.unwrap();
    assert_eq!(
        (second.size, second.version, second.created_ms),
        (11, 2, first.created_ms)
    );

    let tier = directory.get(&ssd()).unwrap();
    let (meta, reader) = tier.get(key("a/b")).await.unwrap();
    assert_eq!(meta, second);
    assert_eq!(
        hash_stream(reader.body).await.unwrap(),
        (11, ContentHash::of(b"hello again"))
    );
    put(&directory, "a/c", b"x").await.unwrap();
    let listed = tier
        .list(KeyPrefix::new("a/").unwrap(), None, 10)
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        ["a/b", "a/c"]
    );
    let stats = tier.stats().await.unwrap();
    assert_eq!((stats.objects, stats.bytes, stats.used_bytes), (2, 12, 12));

    // A move's last step deletes only what it copied.
    let err = tier.delete(key("a/b"), Some(first.hash)).await.unwrap_err();
    assert!(matches!(err, StorageError::Conflict { .. }), "{err}");
    tier.delete(key("a/b"), Some(second.hash)).await.unwrap();
    assert!(matches!(
        tier.head(key("a/b")).await,
        Err(StorageError::NotFound { .. })
    ));
    assert_eq!(tier.stats().await.unwrap().objects, 1);

    let err = directory.get(&TierName::new("tape").unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown tier `tape` (this node has: hdd, ssd)"
    );
    supervisor
        .call(SupervisorMsg::Shutdown, None)
        .await
        .unwrap();
}

#[tokio::test]
async fn puts_check_hashes_and_do_not_race_on_one_key() {
    let (_supervisor, directory) = start(RestartPolicy::default()).await;
    let tier = directory.get(&ssd()).unwrap();
    let err = tier
        .put(
            key("k"),
            stream_of(Bytes::from_static(b"abc"), 2),
            None,
            Some(ContentHash::of(b"abd")),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::HashMismatch { .. }), "{err}");
    assert!(matches!(
        tier.head(key("k")).await,
        Err(StorageError::NotFound { .. })
    ));

    // A put whose body is still streaming holds its key.
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(1);
    let slow: ByteStream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| (c, rx))
    }));
    let pending = tokio::spawn({
        let tier = tier.clone();
        async move { tier.put(key("k"), slow, None, None).await }
    });
    tx.send(Ok(Bytes::from_static(b"first"))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = put(&directory, "k", b"second").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("another put of this key is in progress"),
        "{err}"
    );
    drop(tx);
    assert_eq!(pending.await.unwrap().unwrap().size, 5);

    // Capacity errors come back through the actor unchanged.
    let hdd = directory.get(&TierName::new("hdd").unwrap()).unwrap();
    let big = stream_of(Bytes::from(vec![7u8; 101]), 10);
    let err = hdd.put(key("big"), big, Some(101), None).await.unwrap_err();
    assert!(matches!(err, StorageError::TierFull { .. }), "{err}");
}

#[tokio::test]
async fn supervisor_restarts_a_failed_tier_and_keeps_its_objects() {
    let (_supervisor, directory) = start(RestartPolicy::default()).await;
    put(&directory, "kept", b"data").await.unwrap();
    let before = directory.get(&ssd()).unwrap();
    before.crash_for_test();
    // The old actor is gone; the directory soon points at a new one.
    let mut restarted = None;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if let Ok(tier) = directory.get(&ssd())
            && tier.head(key("kept")).await.is_ok()
            && before.head(key("kept")).await.is_err()
        {
            restarted = Some(tier);
            break;
        }
    }
    let tier = restarted.expect("the tier actor was not restarted");
    let (meta, reader) = tier.get(key("kept")).await.unwrap();
    assert_eq!(meta.size, 4);
    let chunks: Vec<_> = reader.body.collect().await;
    assert_eq!(chunks.len(), 1);
    // The other tier never noticed.
    assert!(
        directory
            .get(&TierName::new("hdd").unwrap())
            .unwrap()
            .stats()
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_tier_failing_past_its_budget_is_left_down_with_a_reason() {
    let policy = RestartPolicy {
        restarts_max: 1,
        window: Duration::from_secs(60),
    };
    let (_supervisor, directory) = start(policy).await;
    for _ in 0..2 {
        let tier = directory.get(&ssd()).unwrap();
        tier.crash_for_test();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if tier.stats().await.is_err() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = directory.get(&ssd()).unwrap_err();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err}");
    assert!(
        err.to_string().contains("failed more than 1 times"),
        "{err}"
    );
}

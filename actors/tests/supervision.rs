//! The supervisor and tier actors, on in-memory backends.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use letl_actors::{
    DeleteMode, PutCondition, RestartPolicy, SupervisorArgs, SupervisorHandle, TOMBSTONE_KEEP,
    TierDirectory, TierHandle, TierSpec, TierStatus,
};
use letl_storage::{
    ByteStream, Clock, ContentHash, KeyPrefix, ManualClock, MemoryIndex, MemoryTier, ObjectKey,
    ObjectMeta, StorageError, TierBackend, TierName, hash_stream, stream_of,
};
use tokio::sync::mpsc;

fn key(k: &str) -> ObjectKey {
    ObjectKey::new(k).unwrap()
}

fn ssd() -> TierName {
    TierName::new("ssd").unwrap()
}

/// A node's actors over two in-memory tiers: `ssd` (unlimited) and `hdd` (100 bytes).
struct Fixture {
    supervisor: SupervisorHandle,
    directory: TierDirectory,
    ssd: Arc<MemoryTier>,
    clock: Arc<ManualClock>,
}

impl Fixture {
    async fn start(policy: RestartPolicy) -> Self {
        let clock = Arc::new(ManualClock::new(1_000));
        let ssd = Arc::new(MemoryTier::new(ssd(), None, clock.clone()));
        let hdd = Arc::new(MemoryTier::new(
            TierName::new("hdd").unwrap(),
            Some(100),
            clock.clone(),
        ));
        let spec = |backend: Arc<MemoryTier>| TierSpec {
            backend,
            index: Arc::new(MemoryIndex::default()),
            clock: clock.clone(),
            object_bytes_max: 1 << 20,
        };
        let directory = TierDirectory::default();
        let supervisor = SupervisorHandle::start(SupervisorArgs {
            tiers: vec![spec(ssd.clone()), spec(hdd)],
            directory: directory.clone(),
            restart_policy: policy,
        })
        .await
        .unwrap();
        Self {
            supervisor,
            directory,
            ssd,
            clock,
        }
    }

    fn tier(&self) -> TierHandle {
        self.directory.get(&ssd()).unwrap()
    }

    async fn put(&self, k: &str, data: &'static [u8]) -> Result<ObjectMeta, StorageError> {
        let tier = self.directory.get(&ssd())?;
        tier.put(
            key(k),
            stream_of(Bytes::from_static(data), 3),
            Some(data.len() as u64),
            None,
        )
        .await
    }

    /// Crashes the ssd actor and waits until the directory serves a new one.
    async fn crash_and_wait_for_restart(&self) -> TierHandle {
        let before = self.tier();
        before.crash_for_test();
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if before.stats().await.is_err()
                && let Ok(tier) = self.directory.get(&ssd())
                && tier.stats().await.is_ok()
            {
                return tier;
            }
        }
        panic!("the tier actor was not restarted");
    }
}

/// A body the test feeds by hand, to hold a put open.
fn slow_body() -> (mpsc::Sender<std::io::Result<Bytes>>, ByteStream) {
    let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(1);
    let body: ByteStream = Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|c| (c, rx))
    }));
    (tx, body)
}

#[tokio::test]
async fn tier_actor_serves_objects_with_versions_and_times() {
    let node = Fixture::start(RestartPolicy::default()).await;
    let first = node.put("a/b", b"hello").await.unwrap();
    assert_eq!(
        (
            first.size,
            first.version,
            first.created_ms,
            first.modified_ms
        ),
        (5, 1, 1_000, 1_000)
    );
    assert_eq!(first.hash, ContentHash::of(b"hello"));
    node.clock.advance_ms(500);
    let second = node.put("a/b", b"hello again").await.unwrap();
    assert_eq!(
        (
            second.size,
            second.version,
            second.created_ms,
            second.modified_ms
        ),
        (11, 2, 1_000, 1_500),
        "an overwrite keeps the creation time and moves the modification time"
    );

    let tier = node.tier();
    let (meta, reader) = tier.get(key("a/b")).await.unwrap();
    assert_eq!(meta, second);
    assert_eq!(
        hash_stream(reader.body.into_stream()).await.unwrap(),
        (11, ContentHash::of(b"hello again"))
    );
    node.put("a/c", b"x").await.unwrap();
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
    assert_eq!(node.ssd.gauge().used_bytes(), 1);

    let err = node
        .directory
        .get(&TierName::new("tape").unwrap())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown tier `tape` (this node has: hdd, ssd)"
    );
    node.supervisor.shutdown().await.unwrap();
}

#[tokio::test]
async fn copies_keep_their_version_and_replace_only_what_they_compared_with() {
    let node = Fixture::start(RestartPolicy::default()).await;
    let tier = node.tier();
    let body = |data: &'static [u8]| stream_of(Bytes::from_static(data), 3);
    // A version written on another node at 700, version 3.
    let theirs = ObjectMeta {
        size: 3,
        hash: ContentHash::of(b"old"),
        created_ms: 100,
        modified_ms: 700,
        version: 3,
        stamp: 0,
    };
    let copied = tier
        .put_copy(key("k"), body(b"old"), theirs.clone(), PutCondition::Absent)
        .await
        .unwrap();
    assert_eq!(
        (copied.created_ms, copied.modified_ms, copied.version),
        (100, 700, 3),
        "a copy keeps the times and number of the version it copies"
    );
    let err = tier
        .put_copy(key("k"), body(b"old"), theirs.clone(), PutCondition::Absent)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already holds a version"), "{err}");

    // A later version replaces it only while it is still the one compared with.
    let newer = ObjectMeta {
        size: 3,
        hash: ContentHash::of(b"new"),
        modified_ms: 900,
        ..theirs.clone()
    };
    assert!(newer.supersedes(&theirs) && !theirs.supersedes(&newer));
    let err = tier
        .put_copy(
            key("k"),
            body(b"new"),
            newer.clone(),
            PutCondition::Replaces(ContentHash::of(b"other")),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("replaced meanwhile"), "{err}");
    let replaced = tier
        .put_copy(
            key("k"),
            body(b"new"),
            newer.clone(),
            PutCondition::Replaces(theirs.hash),
        )
        .await
        .unwrap();
    assert_eq!((replaced.hash, replaced.modified_ms), (newer.hash, 900));
    // The body must be the version named.
    tier.delete_moved_away(key("k"), newer.hash).await.unwrap();
    let err = tier
        .put_copy(key("k"), body(b"nah"), newer.clone(), PutCondition::Absent)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::HashMismatch { .. }), "{err}");
    // The version to replace moved away meanwhile (no deletion remembered): the copy comes in.
    tier.put_copy(
        key("k"),
        body(b"new"),
        newer.clone(),
        PutCondition::Replaces(theirs.hash),
    )
    .await
    .unwrap();
    // The same bytes written again since the comparison are a later version: they stay.
    let rewritten = node.put("same", b"old").await.unwrap();
    assert!(rewritten.supersedes(&newer));
    let err = tier
        .put_copy(
            key("same"),
            body(b"new"),
            newer.clone(),
            PutCondition::Replaces(rewritten.hash),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("is not older than this one"),
        "{err}"
    );
    assert_eq!(tier.head(key("same")).await.unwrap().hash, rewritten.hash);

    // An overwrite is later than the version it replaces, even with the clock behind it.
    assert_eq!(node.clock.now_ms(), 1_000);
    let overwritten = node.put("k", b"mine").await.unwrap();
    assert_eq!(overwritten.modified_ms, 1_000);
    node.clock.set_ms(500);
    let behind = node.put("k", b"again").await.unwrap();
    assert_eq!(behind.modified_ms, 1_001);
    assert!(behind.supersedes(&overwritten));
    node.supervisor.shutdown().await.unwrap();
}

#[tokio::test]
async fn deletions_are_remembered_and_keep_older_copies_out() {
    let node = Fixture::start(RestartPolicy::default()).await;
    let tier = node.tier();
    let body = |data: &'static [u8]| stream_of(Bytes::from_static(data), 3);
    let version = |data: &'static [u8], modified_ms| ObjectMeta {
        size: data.len() as u64,
        hash: ContentHash::of(data),
        created_ms: 1,
        modified_ms,
        version: 1,
        stamp: 0,
    };

    // A delete is remembered, after the version it deleted even with the clock behind.
    node.clock.set_ms(2_000);
    let written = node.put("k", b"v1").await.unwrap();
    node.clock.set_ms(1_500);
    tier.delete(key("k"), None).await.unwrap();
    assert_eq!(tier.tombstone(key("k")).await.unwrap(), Some(2_001));
    // A copy of a version written before it stays out; a later one comes in.
    let err = tier
        .put_copy(key("k"), body(b"v1"), written.clone(), PutCondition::Absent)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("deleted here (at 2001)"), "{err}");
    let later = version(b"v2", 2_002);
    tier.put_copy(key("k"), body(b"v2"), later, PutCondition::Absent)
        .await
        .unwrap();
    assert_eq!(
        tier.tombstone(key("k")).await.unwrap(),
        None,
        "a version clears it"
    );

    // An overwrite after a delete is later than the delete.
    tier.delete(key("k"), None).await.unwrap();
    let again = node.put("k", b"v3").await.unwrap();
    assert_eq!(again.modified_ms, 2_004);

    // A copy that moved away leaves no tombstone; a home remembers a delete of an object it
    // does not hold yet.
    tier.delete_moved_away(key("k"), again.hash).await.unwrap();
    assert_eq!(tier.tombstone(key("k")).await.unwrap(), None);
    let err = tier
        .delete_as(key("absent"), None, DeleteMode::AtHome)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    assert_eq!(tier.tombstone(key("absent")).await.unwrap(), Some(1_500));
    // Not a conditional one: the version it names may not be the one elsewhere.
    let err = tier
        .delete_as(
            key("unsure"),
            Some(ContentHash::of(b"x")),
            DeleteMode::AtHome,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
    assert_eq!(tier.tombstone(key("unsure")).await.unwrap(), None);
    tier.delete(key("other"), None).await.unwrap_err();
    assert_eq!(tier.tombstone(key("other")).await.unwrap(), None);

    // A deletion learnt from another node removes an older version, not a later one.
    node.clock.set_ms(5_000);
    node.put("old", b"o").await.unwrap();
    node.put("new", b"n").await.unwrap();
    assert!(tier.bury(key("old"), 5_000).await.unwrap().is_some());
    assert!(tier.bury(key("new"), 4_999).await.unwrap().is_none());
    tier.head(key("new")).await.unwrap();
    assert!(matches!(
        tier.head(key("old")).await,
        Err(StorageError::NotFound { .. })
    ));
    assert_eq!(tier.tombstone(key("old")).await.unwrap(), Some(5_000));
    tier.forget_tombstone(key("old"), 4_000).await.unwrap();
    assert_eq!(
        tier.tombstone(key("old")).await.unwrap(),
        Some(5_000),
        "not that one"
    );
    tier.forget_tombstone(key("old"), 5_000).await.unwrap();
    node.clock.set_ms(6_000);
    tier.delete(key("new"), None).await.unwrap();
    let tombstones = || async {
        tier.tombstones(None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|(k, at)| (k.to_string(), at))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        tombstones().await,
        [("absent".to_string(), 1_500), ("new".to_string(), 6_000)]
    );

    // Tombstones are forgotten once older than TOMBSTONE_KEEP.
    let keep_ms = u64::try_from(TOMBSTONE_KEEP.as_millis()).unwrap();
    node.clock.set_ms(2_000 + keep_ms);
    tier.expire_tombstones().unwrap();
    assert_eq!(tombstones().await, [("new".to_string(), 6_000)]);
    node.supervisor.shutdown().await.unwrap();
}

#[tokio::test]
async fn puts_check_hashes_and_do_not_race_on_one_key() {
    let node = Fixture::start(RestartPolicy::default()).await;
    let tier = node.tier();
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
    assert_eq!(
        node.ssd.staged_count(),
        0,
        "the refused bytes were thrown away"
    );
    assert_eq!(
        node.ssd.gauge().used_bytes(),
        0,
        "and their reservation released"
    );

    // A put whose body is still streaming holds its key, and preflight sees it.
    let (tx, slow) = slow_body();
    let pending = tokio::spawn({
        let tier = tier.clone();
        async move { tier.put(key("k"), slow, None, None).await }
    });
    tx.send(Ok(Bytes::from_static(b"first"))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = node.put("k", b"second").await.unwrap_err();
    assert!(
        err.to_string()
            .contains("another put of this key is in progress"),
        "{err}"
    );
    let err = tier.check_put(key("k"), Some(6)).await.unwrap_err();
    assert!(matches!(err, StorageError::Conflict { .. }), "{err}");
    drop(tx);
    assert_eq!(pending.await.unwrap().unwrap().size, 5);
    tier.check_put(key("k"), Some(6)).await.unwrap();

    // Capacity and size limits come back through the actor unchanged, before and during a put.
    let hdd = node.directory.get(&TierName::new("hdd").unwrap()).unwrap();
    let err = hdd.check_put(key("big"), Some(101)).await.unwrap_err();
    assert!(matches!(err, StorageError::TierFull { .. }), "{err}");
    let err = hdd.check_put(key("big"), Some(2 << 20)).await.unwrap_err();
    assert!(matches!(err, StorageError::TooLarge { .. }), "{err}");
    let big = stream_of(Bytes::from(vec![7u8; 101]), 10);
    let err = hdd.put(key("big"), big, Some(101), None).await.unwrap_err();
    assert!(matches!(err, StorageError::TierFull { .. }), "{err}");
}

#[tokio::test]
async fn supervisor_restarts_a_failed_tier_and_aborts_its_open_put() {
    let node = Fixture::start(RestartPolicy::default()).await;
    node.put("kept", b"data").await.unwrap();
    // A put is streaming when the actor fails.
    let (tx, slow) = slow_body();
    let pending = tokio::spawn({
        let tier = node.tier();
        async move { tier.put(key("open"), slow, None, None).await }
    });
    tx.send(Ok(Bytes::from_static(b"partial"))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let tier = node.crash_and_wait_for_restart().await;
    let (meta, _) = tier.get(key("kept")).await.unwrap();
    assert_eq!(meta.size, 4);

    // The open put finishes streaming into a dead actor: it fails, and nothing is published.
    drop(tx);
    let err = pending.await.unwrap().unwrap_err();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err}");
    assert!(matches!(
        tier.head(key("open")).await,
        Err(StorageError::NotFound { .. })
    ));
    assert_eq!(node.ssd.staged_count(), 0);
    assert_eq!(node.ssd.gauge().used_bytes(), 4);
    // The restarted actor serves puts, and the other tier never noticed.
    node.put("after", b"ok").await.unwrap();
    assert!(
        node.directory
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
    let node = Fixture::start(policy).await;
    node.crash_and_wait_for_restart().await;
    let last = node.tier();
    last.crash_for_test();
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if node.directory.get(&ssd()).is_err() {
            break;
        }
    }
    let err = node.directory.get(&ssd()).unwrap_err();
    assert!(matches!(err, StorageError::Unavailable { .. }), "{err}");
    assert!(
        err.to_string().contains("failed more than 1 times"),
        "{err}"
    );
    // Listings still show every tier: the down one with its reason, the others with counts.
    let statuses = node.directory.statuses().await;
    assert_eq!(statuses.len(), 2);
    match &statuses[1].1 {
        TierStatus::Down {
            description,
            reason,
        } => {
            assert_eq!(description.name, ssd());
            assert!(reason.contains("failed more than 1 times"));
        }
        TierStatus::Up(_) => panic!("ssd should be down"),
    }
    assert!(matches!(statuses[0].1, TierStatus::Up(_)));
}

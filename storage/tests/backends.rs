//! The backend contract, checked on the fs and in-memory backends alike, plus what only the fs
//! backend promises (files on disk, crash leftovers cleaned, index repaired).

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use letl_storage::{
    ByteStream, ContentHash, FsTier, IndexDb, KeyPrefix, ManualClock, MemoryIndex, MemoryTier,
    ObjectIndex, ObjectKey, ObjectMeta, PutLimits, StorageError, TMP_DIR_NAME, TierBackend,
    TierName, hash_stream, reconcile, stream_of,
};

const UNLIMITED: u64 = u64::MAX;

fn key(k: &str) -> ObjectKey {
    ObjectKey::new(k).unwrap()
}

fn limits(declared: Option<u64>) -> PutLimits {
    PutLimits {
        declared_len: declared,
        object_bytes_max: UNLIMITED,
    }
}

fn pattern(len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| u8::try_from(i * 31 % 251).unwrap())
            .collect::<Vec<u8>>(),
    )
}

async fn put(
    tier: &dyn TierBackend,
    k: &str,
    data: Bytes,
    declared: bool,
) -> Result<ContentHash, StorageError> {
    let len = data.len() as u64;
    let staged = tier
        .stage(
            &key(k),
            stream_of(data, 7_000),
            limits(declared.then_some(len)),
        )
        .await?;
    let hash = staged.hash;
    tier.commit(staged).await?;
    Ok(hash)
}

async fn read(tier: &dyn TierBackend, k: &str) -> Result<(u64, ContentHash), StorageError> {
    let reader = tier.get(&key(k)).await?;
    Ok(hash_stream(reader.body.into_stream()).await.unwrap())
}

async fn fs_tier(dir: &Path, capacity: Option<u64>) -> FsTier {
    FsTier::open(
        TierName::new("ssd").unwrap(),
        "ssd",
        dir.join("ssd"),
        capacity,
    )
    .await
    .unwrap()
    .0
}

fn memory_tier(capacity: Option<u64>) -> MemoryTier {
    MemoryTier::new(
        TierName::new("mem").unwrap(),
        capacity,
        Arc::new(ManualClock::new(5)),
    )
}

async fn contract(tier: &dyn TierBackend) {
    // Round trip, with and without a declared length.
    let data = pattern(3 * 1024 * 1024 + 17);
    let hash = put(tier, "covid/NC_045512.fasta", data.clone(), true)
        .await
        .unwrap();
    assert_eq!(hash, ContentHash::of(&data));
    assert_eq!(
        read(tier, "covid/NC_045512.fasta").await.unwrap(),
        (data.len() as u64, hash)
    );
    put(tier, "covid/a-b", Bytes::from_static(b"x"), false)
        .await
        .unwrap();
    put(tier, "covid/a/z", Bytes::from_static(b"yy"), false)
        .await
        .unwrap();
    put(tier, "empty", Bytes::new(), true).await.unwrap();
    assert_eq!(read(tier, "empty").await.unwrap().0, 0);
    assert_eq!(tier.gauge().used_bytes(), data.len() as u64 + 3);

    // Overwrite replaces the bytes and the accounting.
    put(tier, "covid/a-b", Bytes::from_static(b"xyz"), true)
        .await
        .unwrap();
    assert_eq!(read(tier, "covid/a-b").await.unwrap().0, 3);
    assert_eq!(tier.gauge().used_bytes(), data.len() as u64 + 5);

    // Listing: key order ('-' sorts before '/'), prefixes, pages.
    let list = |prefix: &'static str, after: Option<&'static str>, limit: usize| async move {
        tier.list(
            &KeyPrefix::new(prefix).unwrap(),
            after.map(key).as_ref(),
            limit,
        )
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key.to_string())
        .collect::<Vec<_>>()
    };
    assert_eq!(
        list("", None, 100).await,
        ["covid/NC_045512.fasta", "covid/a-b", "covid/a/z", "empty"]
    );
    assert_eq!(list("covid/a", None, 100).await, ["covid/a-b", "covid/a/z"]);
    assert_eq!(list("covid/", Some("covid/a-b"), 100).await, ["covid/a/z"]);
    assert_eq!(
        list("", None, 2).await,
        ["covid/NC_045512.fasta", "covid/a-b"]
    );
    assert_eq!(list("", Some("covid/a-b"), 1).await, ["covid/a/z"]);
    assert_eq!(list("nothing/", None, 10).await, Vec::<String>::new());
    let head = tier.head(&key("covid/a/z")).await.unwrap().unwrap();
    assert_eq!(head.size, 2);
    assert!(tier.head(&key("covid/a")).await.unwrap().is_none());

    // Bad bodies leave nothing behind.
    let err = tier
        .stage(&key("short"), stream_of(pattern(10), 3), limits(Some(11)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::LengthMismatch {
                declared: 11,
                received: 10
            }
        ),
        "{err}"
    );
    let err = tier
        .stage(&key("long"), stream_of(pattern(12), 3), limits(Some(11)))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::LengthMismatch { .. }), "{err}");
    let err = tier
        .stage(
            &key("big"),
            stream_of(pattern(100), 10),
            PutLimits {
                declared_len: None,
                object_bytes_max: 50,
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::TooLarge { max: 50, .. }),
        "{err}"
    );
    let failing: ByteStream = Box::pin(futures_util::stream::iter(vec![
        Ok(Bytes::from_static(b"abc")),
        Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "client went away",
        )),
    ]));
    let err = tier
        .stage(&key("cut"), failing, limits(None))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::Body(_)), "{err}");
    assert!(matches!(
        tier.get(&key("cut")).await,
        Err(StorageError::NotFound { .. })
    ));
    assert_eq!(tier.gauge().used_bytes(), data.len() as u64 + 5);

    // Delete.
    assert_eq!(tier.delete(&key("covid/a/z")).await.unwrap(), Some(2));
    assert_eq!(tier.delete(&key("covid/a/z")).await.unwrap(), None);
    assert!(matches!(
        tier.get(&key("covid/a/z")).await,
        Err(StorageError::NotFound { .. })
    ));
    assert_eq!(tier.gauge().used_bytes(), data.len() as u64 + 3);
}

#[tokio::test]
async fn memory_backend_keeps_the_contract() {
    let tier = memory_tier(None);
    contract(&tier).await;
    assert_eq!(tier.staged_count(), 0);
}

#[tokio::test]
async fn fs_backend_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let tier = fs_tier(dir.path(), None).await;
    contract(&tier).await;
    // Files sit at their keys; nothing is left staged; emptied directories are removed.
    assert!(dir.path().join("ssd/covid/NC_045512.fasta").is_file());
    assert_eq!(
        std::fs::read_dir(dir.path().join("ssd").join(TMP_DIR_NAME))
            .unwrap()
            .count(),
        0
    );
    assert!(!dir.path().join("ssd/covid/a").exists());
}

async fn capacity(tier: &dyn TierBackend) {
    put(tier, "a", pattern(60), true).await.unwrap();
    // Declared length over what is left: refused before a byte is written.
    let err = tier
        .stage(&key("b"), stream_of(pattern(50), 10), limits(Some(50)))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::TierFull {
                needed: 50,
                available: 40,
                capacity: 100,
                ..
            }
        ),
        "{err}"
    );
    // Unknown length: refused when the stream passes the capacity.
    let err = tier
        .stage(&key("b"), stream_of(pattern(50), 10), limits(None))
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::TierFull { .. }), "{err}");
    assert_eq!(tier.gauge().used_bytes(), 60);
    put(tier, "b", pattern(40), false).await.unwrap();
    assert_eq!(tier.gauge().used_bytes(), 100);
    tier.delete(&key("a")).await.unwrap();
    put(tier, "c", pattern(60), true).await.unwrap();
}

#[tokio::test]
async fn capacity_is_enforced_before_writing() {
    capacity(&memory_tier(Some(100))).await;
    let dir = tempfile::tempdir().unwrap();
    let tier = fs_tier(dir.path(), Some(100)).await;
    capacity(&tier).await;
    assert_eq!(
        std::fs::read_dir(dir.path().join("ssd").join(TMP_DIR_NAME))
            .unwrap()
            .count(),
        0
    );
}

/// An object cannot sit under another object, nor where other objects sit under it: the fs
/// backend cannot store that, and the memory backend refuses it too, so tests and the
/// simulator meet production's refusals.
async fn collisions(tier: &dyn TierBackend) {
    put(tier, "a/b", pattern(5), true).await.unwrap();
    put(tier, "a-b", pattern(5), true).await.unwrap();
    let err = put(tier, "a", pattern(5), true).await.unwrap_err();
    assert!(matches!(err, StorageError::Conflict { .. }), "{err}");
    let err = put(tier, "a/b/c", pattern(5), true).await.unwrap_err();
    assert!(err.to_string().contains("`a/b` is an object"), "{err}");
    // The same conflicts are found before any body is sent.
    let err = tier.check_key(&key("a/b/c/d")).await.unwrap_err();
    assert!(err.to_string().contains("`a/b` is an object"), "{err}");
    let err = tier.check_key(&key("a")).await.unwrap_err();
    assert!(matches!(err, StorageError::Conflict { .. }), "{err}");
    tier.check_key(&key("a/c/d")).await.unwrap();
    tier.check_key(&key("a-b/x")).await.unwrap_err();
    assert_eq!(tier.gauge().used_bytes(), 10);
}

#[tokio::test]
async fn keys_that_collide_with_directories_are_conflicts() {
    collisions(&memory_tier(None)).await;
    let dir = tempfile::tempdir().unwrap();
    let tier = fs_tier(dir.path(), None).await;
    collisions(&tier).await;
    let err = put(&tier, &format!("{TMP_DIR_NAME}/x"), pattern(5), true)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::InvalidKey { .. }), "{err}");
}

#[tokio::test]
async fn fs_open_cleans_crash_leftovers_and_reconcile_counts_what_is_there() {
    let dir = tempfile::tempdir().unwrap();
    {
        let tier = fs_tier(dir.path(), None).await;
        put(&tier, "x/y", pattern(1000), true).await.unwrap();
    }
    std::fs::write(
        dir.path()
            .join("ssd")
            .join(TMP_DIR_NAME)
            .join("0000000000000000"),
        b"partial",
    )
    .unwrap();
    let (tier, report) = FsTier::open(
        TierName::new("ssd").unwrap(),
        "ssd",
        dir.path().join("ssd"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(report.staged_files_removed, 1);
    // What is there is counted by the one start-up scan, reconciliation, into the index.
    let index = MemoryIndex::default();
    reconcile(&tier, &index).await.unwrap();
    assert_eq!(index.totals().unwrap(), (1, 1000));
}

#[tokio::test]
async fn reconcile_repairs_the_index_from_fs_contents() {
    let dir = tempfile::tempdir().unwrap();
    let tier = fs_tier(dir.path(), None).await;
    let index = IndexDb::open(&dir.path().join("index"))
        .unwrap()
        .tier(&TierName::new("ssd").unwrap())
        .unwrap();
    // Committed but never indexed (a crash between rename and index write).
    let orphan = pattern(2500);
    put(&tier, "orphan", orphan.clone(), true).await.unwrap();
    // Indexed but gone.
    let ghost = ObjectMeta {
        size: 3,
        hash: ContentHash::of(b"abc"),
        created_ms: 1,
        modified_ms: 1,
        version: 1,
        stamp: 1,
    };
    index.insert(&key("ghost"), &ghost).unwrap();
    // Indexed with the right size and stamp: left alone.
    let kept_hash = put(&tier, "kept", pattern(10), true).await.unwrap();
    let kept = ObjectMeta {
        size: 10,
        hash: kept_hash,
        created_ms: 7,
        modified_ms: 7,
        version: 3,
        stamp: tier.head(&key("kept")).await.unwrap().unwrap().stamp,
    };
    index.insert(&key("kept"), &kept).unwrap();
    // Indexed, then replaced by bytes of the same size (a crash before the index flush):
    // the stamp tells.
    let old_hash = put(&tier, "replaced", pattern(20), true).await.unwrap();
    let replaced = ObjectMeta {
        size: 20,
        hash: old_hash,
        created_ms: 5,
        modified_ms: 5,
        version: 1,
        stamp: tier.head(&key("replaced")).await.unwrap().unwrap().stamp,
    };
    index.insert(&key("replaced"), &replaced).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let new_bytes = Bytes::from(vec![9u8; 20]);
    put(&tier, "replaced", new_bytes.clone(), true)
        .await
        .unwrap();

    let report = reconcile(&tier, &index).await.unwrap();
    assert_eq!((report.added, report.removed, report.rehashed), (1, 1, 1));
    let repaired = index.get(&key("replaced")).unwrap().unwrap();
    assert_eq!(
        (repaired.hash, repaired.version, repaired.created_ms),
        (ContentHash::of(&new_bytes), 2, 5)
    );
    assert_eq!(
        index.get(&key("orphan")).unwrap().unwrap().hash,
        ContentHash::of(&orphan)
    );
    assert_eq!(index.get(&key("ghost")).unwrap(), None);
    assert_eq!(index.get(&key("kept")).unwrap(), Some(kept));
    let again = reconcile(&tier, &index).await.unwrap();
    assert_eq!((again.added, again.removed, again.rehashed), (0, 0, 0));
}

#[tokio::test]
async fn reconcile_pages_through_many_objects() {
    let tier = memory_tier(None);
    let index = MemoryIndex::default();
    for i in 0..2_500 {
        put(
            &tier,
            &format!("k/{i:05}"),
            Bytes::from(i.to_string()),
            true,
        )
        .await
        .unwrap();
    }
    for i in (0..2_600).step_by(2) {
        let meta = ObjectMeta {
            size: 99,
            hash: ContentHash::of(b""),
            created_ms: 0,
            modified_ms: 0,
            version: 1,
            stamp: 0,
        };
        index.insert(&key(&format!("k/{i:05}")), &meta).unwrap();
    }
    let report = reconcile(&tier, &index).await.unwrap();
    assert_eq!(report.added, 1_250);
    assert_eq!(report.rehashed, 1_250);
    assert_eq!(report.removed, 50);
    assert_eq!(index.totals().unwrap().0, 2_500);
}

#[tokio::test]
async fn fs_large_put_passes_several_writeback_steps() {
    // 200 MiB crosses the 64 MiB early-writeback step three times. The body is generated as it
    // streams, so the test holds one chunk at a time, as the node does.
    const CHUNK: usize = 1 << 20;
    const CHUNKS: u64 = 200;
    let dir = tempfile::tempdir().unwrap();
    let tier = fs_tier(dir.path(), None).await;
    let chunk = pattern(CHUNK);
    let body: ByteStream = Box::pin(futures_util::stream::iter((0..CHUNKS).map(move |i| {
        let mut c = chunk.to_vec();
        c[..8].copy_from_slice(&i.to_le_bytes());
        Ok(Bytes::from(c))
    })));
    let mut expected = letl_storage::Hasher::new();
    for i in 0..CHUNKS {
        let mut c = pattern(CHUNK).to_vec();
        c[..8].copy_from_slice(&i.to_le_bytes());
        expected.update(&c);
    }
    let total = CHUNKS * CHUNK as u64;
    let staged = tier
        .stage(&key("big/object"), body, limits(Some(total)))
        .await
        .unwrap();
    assert_eq!((staged.size, staged.hash), (total, expected.finish()));
    tier.commit(staged).await.unwrap();
    assert_eq!(
        read(&tier, "big/object").await.unwrap(),
        (total, expected.finish())
    );
    assert_eq!(
        std::fs::metadata(dir.path().join("ssd/big/object"))
            .unwrap()
            .len(),
        total
    );
}

#[tokio::test]
async fn fs_tiers_on_one_file_system_hand_over_files_without_copying() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let ssd = fs_tier(dir.path(), None).await;
    let (hdd, _) = FsTier::open(
        TierName::new("hdd").unwrap(),
        "hdd",
        dir.path().join("hdd"),
        Some(10_000),
    )
    .await
    .unwrap();
    let hash = put(&ssd, "a/obj", pattern(5000), true).await.unwrap();
    let found = ssd.head(&key("a/obj")).await.unwrap().unwrap();
    let (path, file_id) = ssd.local_path(&key("a/obj")).await.unwrap().unwrap();
    let file = letl_storage::LocalFile {
        path,
        file_id,
        size: found.size,
        stamp: found.stamp,
        hash,
    };

    // A file whose stamp is not the indexed one may hold other bytes: no shortcut, nothing left.
    let stale = letl_storage::LocalFile {
        stamp: found.stamp + 1,
        ..file.clone()
    };
    assert!(
        hdd.stage_local_file(&key("b/obj"), &stale, UNLIMITED)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(hdd.gauge().used_bytes(), 0);
    let tmp = dir.path().join("hdd").join(TMP_DIR_NAME);
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    // Another file now at the path, even of the same size and time: not the indexed object.
    let other = letl_storage::LocalFile {
        file_id: (file.file_id.0, file.file_id.1 + 1),
        ..file.clone()
    };
    assert!(
        hdd.stage_local_file(&key("b/obj"), &other, UNLIMITED)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);

    // Too large for the tier: refused, as a streamed put would be.
    let err = hdd
        .stage_local_file(&key("b/obj"), &file, 4000)
        .await
        .unwrap_err();
    assert!(matches!(err, StorageError::TooLarge { .. }), "{err}");

    let staged = hdd
        .stage_local_file(&key("b/obj"), &file, UNLIMITED)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((staged.size, staged.hash), (5000, hash));
    hdd.commit(staged).await.unwrap();
    assert_eq!(read(&hdd, "b/obj").await.unwrap(), (5000, hash));
    assert_eq!(hdd.gauge().used_bytes(), 5000);
    let inode = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(
        inode(&dir.path().join("hdd/b/obj")),
        inode(&dir.path().join("ssd/a/obj"))
    );
    // The source's deletion leaves the destination whole.
    ssd.delete(&key("a/obj")).await.unwrap();
    assert_eq!(read(&hdd, "b/obj").await.unwrap(), (5000, hash));

    // Backends without local files take no shortcut.
    let memory = memory_tier(None);
    assert!(memory.local_path(&key("a/obj")).await.unwrap().is_none());
    assert!(
        memory
            .stage_local_file(&key("a/obj"), &file, UNLIMITED)
            .await
            .unwrap()
            .is_none()
    );
}

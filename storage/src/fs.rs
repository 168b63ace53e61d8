//! A tier in a local directory (PMem on DAX or tmpfs, SSD, HDD, or a DAOS dfuse mount).
//!
//! Layout: objects live at `<root>/<key>`, so the directory is readable by other tools; staged
//! puts live in `<root>/.letl-tmp/` on the same file system, so publishing is one `rename`.
//! A put is durable when `commit` returns: the file was fsynced before the rename, and the
//! directory (and any directory it created) after it. Whatever a crash leaves in `.letl-tmp`
//! is removed by the next `open`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::backend::{
    BackendObject, ByteStream, CapacityGauge, Committed, LocalFile, ObjectBody, ObjectReader,
    PutLimits, Staged, TierBackend, TierDescription, check_final_len, check_running_len,
    reserve_for_put,
};
use crate::clock::system_time_ms;
use crate::error::{Result, StorageError};
use crate::hash::{ContentHash, Hasher};
use crate::uri::{KeyPrefix, ObjectKey, TierName};

/// Directory under a tier's root that holds staged puts; no key may start with it.
pub const TMP_DIR_NAME: &str = ".letl-tmp";
/// Longest file name most local file systems take.
const SEGMENT_BYTES_MAX: usize = 255;
/// Body chunks queued between the network and the writer thread.
const WRITE_CHUNKS_IN_FLIGHT_MAX: usize = 32;
/// Bytes the writer gathers before writing them with one vectored write.
const WRITE_BLOCK_BYTES: usize = 1 << 20;
/// Bytes one read of a get returns.
const READ_BLOCK_BYTES: usize = 256 << 10;
/// Read blocks queued between the reader thread and the network.
const READ_BLOCKS_IN_FLIGHT_MAX: usize = 8;
/// Block buffers kept for reuse, process-wide (each [`READ_BLOCK_BYTES`]). A block's buffer
/// comes back when its last user drops it: readers, many small objects one after another
/// included, reuse the same memory instead of fresh pages the kernel must fault in and zero,
/// which cost more than the read itself.
const READ_BUFFERS_POOLED_MAX: usize = 64;

static READ_BUFFER_POOL: std::sync::Mutex<Vec<Vec<u8>>> = std::sync::Mutex::new(Vec::new());

/// A read block's buffer, back to the pool when its last user drops it.
struct PooledBlock(Vec<u8>);

impl AsRef<[u8]> for PooledBlock {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for PooledBlock {
    fn drop(&mut self) {
        let buffer = std::mem::take(&mut self.0);
        let mut pool = READ_BUFFER_POOL.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < READ_BUFFERS_POOLED_MAX {
            pool.push(buffer);
        }
    }
}

/// An empty buffer with room for one block: from the pool, else a new one.
fn read_buffer() -> Vec<u8> {
    let pooled = READ_BUFFER_POOL
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop();
    let mut buffer = pooled.unwrap_or_default();
    buffer.clear();
    buffer.reserve_exact(READ_BLOCK_BYTES);
    buffer
}

/// Reads the next block (up to [`READ_BLOCK_BYTES`], less only at the end of the file) into
/// `buffer`'s spare room, which is not zeroed first; returns the bytes read.
fn read_block(file: &mut File, buffer: &mut Vec<u8>) -> io::Result<usize> {
    let limit = u64::try_from(READ_BLOCK_BYTES).unwrap_or(u64::MAX);
    Read::take(&mut *file, limit).read_to_end(buffer)
}

#[derive(Debug)]
pub struct FsTier {
    description: TierDescription,
    root: PathBuf,
    tmp_dir: PathBuf,
    gauge: Arc<CapacityGauge>,
    /// Names staged files uniquely within this process; the directory is emptied at open.
    next_staged: AtomicU64,
}

/// What `open` found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FsOpenReport {
    pub staged_files_removed: u64,
}

impl FsTier {
    /// Opens (creating if needed) a tier rooted at `root` and removes staged files a crash left
    /// behind. It does not walk the objects already there: the tier actor's reconciliation does
    /// that once at start, and seeds the capacity gauge from the reconciled index.
    pub async fn open(
        name: TierName,
        kind: &str,
        root: PathBuf,
        capacity_bytes: Option<u64>,
    ) -> Result<(Self, FsOpenReport)> {
        let tmp_dir = root.join(TMP_DIR_NAME);
        let (root, tmp_dir, report) = blocking(move || {
            fs::create_dir_all(&root).map_err(|e| {
                StorageError::io(format!("create tier directory {}", root.display()), e)
            })?;
            let mut report = FsOpenReport::default();
            if tmp_dir.exists() {
                for entry in fs::read_dir(&tmp_dir)
                    .map_err(|e| StorageError::io(format!("read {}", tmp_dir.display()), e))?
                {
                    let entry = entry.map_err(|e| StorageError::io("read staged files", e))?;
                    fs::remove_file(entry.path()).map_err(|e| {
                        StorageError::io(
                            format!("remove staged file {}", entry.path().display()),
                            e,
                        )
                    })?;
                    report.staged_files_removed += 1;
                }
            }
            fs::create_dir_all(&tmp_dir)
                .map_err(|e| StorageError::io(format!("create {}", tmp_dir.display()), e))?;
            Ok((root, tmp_dir, report))
        })
        .await?;
        let gauge = CapacityGauge::new(name.clone(), capacity_bytes);
        if report.staged_files_removed > 0 {
            info!(tier = %name, files = report.staged_files_removed, "removed staged files left by a crash");
        }
        let tier = Self {
            description: TierDescription {
                name,
                kind: kind.to_string(),
                backend: "fs".to_string(),
                location: root.display().to_string(),
                capacity_bytes,
            },
            root,
            tmp_dir,
            gauge,
            next_staged: AtomicU64::new(0),
        };
        Ok((tier, report))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &ObjectKey) -> PathBuf {
        let mut path = self.root.clone();
        path.extend(key.segments());
        path
    }

    fn check_fs_key(&self, key: &ObjectKey) -> Result<()> {
        let invalid = |reason: String| StorageError::InvalidKey {
            key: key.to_string(),
            reason,
        };
        if key.segments().next() == Some(TMP_DIR_NAME) {
            return Err(invalid(format!("`{TMP_DIR_NAME}` is reserved on fs tiers")));
        }
        if key.segments().any(|s| s.len() > SEGMENT_BYTES_MAX) {
            return Err(invalid(format!(
                "fs tiers take segments of at most {SEGMENT_BYTES_MAX} bytes"
            )));
        }
        Ok(())
    }

    fn conflict(&self, key: &ObjectKey, reason: impl Into<String>) -> StorageError {
        StorageError::Conflict {
            tier: self.description.name.to_string(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }

    fn not_found(&self, key: &ObjectKey) -> StorageError {
        StorageError::NotFound {
            tier: self.description.name.to_string(),
            key: key.to_string(),
        }
    }
}

#[async_trait::async_trait]
impl TierBackend for FsTier {
    fn describe(&self) -> TierDescription {
        self.description.clone()
    }

    fn gauge(&self) -> &Arc<CapacityGauge> {
        &self.gauge
    }

    /// Besides the name rules, the collisions a commit would refuse: the key is a directory of
    /// other objects, or one of its parents is an object. Checked before a put's body is sent;
    /// `commit` checks again, since either can change meanwhile.
    async fn check_key(&self, key: &ObjectKey) -> Result<()> {
        self.check_fs_key(key)?;
        let root = self.root.clone();
        let segments: Vec<String> = key.segments().map(str::to_string).collect();
        let collision = blocking(move || {
            let mut path = root.clone();
            for (i, segment) in segments.iter().enumerate() {
                path.push(segment);
                let last = i + 1 == segments.len();
                match fs::symlink_metadata(&path) {
                    Ok(meta) if last && meta.is_dir() => return Ok(Some(None)),
                    Ok(meta) if !last && !meta.is_dir() => {
                        return Ok(Some(Some(segments[..=i].join("/"))));
                    }
                    Ok(_) => {}
                    // Nothing further down exists either.
                    Err(e) if is_absent(&e) => return Ok(None),
                    Err(e) => return Err(StorageError::io(format!("stat {}", path.display()), e)),
                }
            }
            Ok(None)
        })
        .await?;
        match collision {
            None => Ok(()),
            Some(None) => Err(self.conflict(
                key,
                "other objects are stored under this key, so it cannot be an object itself",
            )),
            Some(Some(parent)) => Err(self.conflict(
                key,
                format!("`{parent}` is an object, so no object can be stored under it"),
            )),
        }
    }

    async fn stage(
        &self,
        key: &ObjectKey,
        mut body: ByteStream,
        limits: PutLimits,
    ) -> Result<Staged> {
        self.check_fs_key(key)?;
        let mut reservation = reserve_for_put(&self.gauge, limits)?;
        let serial = self.next_staged.fetch_add(1, Ordering::Relaxed);
        let staged_path = self.tmp_dir.join(format!("{serial:016x}"));
        let (chunks_tx, chunks_rx) = mpsc::channel::<Bytes>(WRITE_CHUNKS_IN_FLIGHT_MAX);
        let writer_path = staged_path.clone();
        let writer = tokio::task::spawn_blocking(move || write_staged(&writer_path, chunks_rx));

        let mut received = 0u64;
        let mut writer_stopped = false;
        let streamed: Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(StorageError::Body)?;
                let len = chunk.len() as u64;
                received += len;
                check_running_len(received, limits)?;
                if limits.declared_len.is_none() {
                    reservation.grow(len)?;
                }
                if chunks_tx.send(chunk).await.is_err() {
                    // The writer stopped; its error is reported below.
                    writer_stopped = true;
                    break;
                }
            }
            check_final_len(received, limits)
        }
        .await;
        drop(chunks_tx);
        let written = match writer.await {
            Ok(Ok(written)) => Ok(written),
            Ok(Err(e)) if is_out_of_space(&e) => Err(StorageError::NoSpace {
                tier: self.description.name.to_string(),
                reason: e.to_string(),
            }),
            Ok(Err(e)) => Err(StorageError::io(
                format!(
                    "write staged object for `{key}` on tier `{}`",
                    self.description.name
                ),
                e,
            )),
            Err(join) => Err(StorageError::io(
                "staged object writer failed",
                io::Error::other(join),
            )),
        };
        // When the writer failed, its error is the cause; the short body it left is not.
        let outcome = if writer_stopped {
            written.and_then(|w| streamed.map(|()| w))
        } else {
            streamed.and(written)
        };
        match outcome {
            Ok((size, hash)) => {
                debug_assert_eq!(size, received);
                Ok(Staged {
                    key: key.clone(),
                    size,
                    hash,
                    token: staged_path.display().to_string(),
                    reservation,
                })
            }
            Err(e) => {
                remove_staged(staged_path).await;
                Err(e)
            }
        }
    }

    async fn commit(&self, staged: Staged) -> Result<Committed> {
        let final_path = self.path_of(&staged.key);
        let staged_path = PathBuf::from(&staged.token);
        let root = self.root.clone();
        let published = blocking(move || publish(&root, &staged_path, &final_path)).await;
        match published {
            Ok(Published::Replaced {
                replaced_size,
                stamp,
            }) => {
                staged.reservation.keep();
                if let Some(old) = replaced_size {
                    self.gauge.release(old);
                }
                Ok(Committed {
                    replaced_size,
                    stamp,
                })
            }
            Ok(Published::ParentIsObject(parent)) => {
                let err = self.conflict(
                    &staged.key,
                    format!("`{parent}` is an object, so no object can be stored under it"),
                );
                self.abort(staged).await;
                Err(err)
            }
            Ok(Published::KeyIsDirectory) => {
                let err = self.conflict(
                    &staged.key,
                    "other objects are stored under this key, so it cannot be an object itself",
                );
                self.abort(staged).await;
                Err(err)
            }
            Err(e) => {
                self.abort(staged).await;
                Err(e)
            }
        }
    }

    async fn local_path(&self, key: &ObjectKey) -> Result<Option<(PathBuf, (u64, u64))>> {
        use std::os::unix::fs::MetadataExt;
        self.check_fs_key(key)?;
        let path = self.path_of(key);
        blocking(move || match fs::metadata(&path) {
            Ok(meta) => Ok(Some((path, (meta.dev(), meta.ino())))),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(StorageError::io(format!("stat {}", path.display()), e)),
        })
        .await
    }

    /// Hard-links `file` into this tier's staging directory: no byte is copied, and the commit
    /// that follows is the usual rename. Only when the link still is the indexed file (same size
    /// and stamp) are its bytes the ones `file.hash` describes; otherwise the caller streams.
    async fn stage_local_file(
        &self,
        key: &ObjectKey,
        file: &LocalFile,
        object_bytes_max: u64,
    ) -> Result<Option<Staged>> {
        self.check_fs_key(key)?;
        if file.size > object_bytes_max {
            return Err(StorageError::TooLarge {
                size: file.size,
                max: object_bytes_max,
            });
        }
        let reservation = self.gauge.reserve(file.size)?;
        let serial = self.next_staged.fetch_add(1, Ordering::Relaxed);
        let staged_path = self.tmp_dir.join(format!("{serial:016x}"));
        let (source, link, expected) = (file.path.clone(), staged_path.clone(), file.clone());
        let linked = blocking(move || {
            if let Err(e) = fs::hard_link(&source, &link) {
                // Another file system, or one without hard links: not an error, just no
                // shortcut. A source that vanished is reported by the streamed copy.
                debug!(source = %source.display(), error = %e, "no hard link; the bytes are copied");
                return Ok(false);
            }
            let same = fs::metadata(&link)
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    (m.dev(), m.ino()) == expected.file_id
                        && m.len() == expected.size
                        && stamp_of(&m) == expected.stamp
                })
                .unwrap_or(false);
            if !same {
                debug!(source = %source.display(), "linked file is not the indexed one; the bytes are copied");
                let _ = fs::remove_file(&link);
            }
            Ok(same)
        })
        .await?;
        Ok(linked.then(|| Staged {
            key: key.clone(),
            size: file.size,
            hash: file.hash,
            token: staged_path.display().to_string(),
            reservation,
        }))
    }

    async fn abort(&self, staged: Staged) {
        remove_staged(PathBuf::from(&staged.token)).await;
        drop(staged.reservation);
    }

    async fn get(&self, key: &ObjectKey) -> Result<ObjectReader> {
        self.check_fs_key(key)?;
        let path = self.path_of(key);
        let opened = blocking(move || {
            let file = match File::open(&path) {
                Ok(file) => file,
                Err(e) if is_absent(&e) => return Ok(None),
                Err(e) => return Err(StorageError::io(format!("open {}", path.display()), e)),
            };
            let meta = file
                .metadata()
                .map_err(|e| StorageError::io(format!("stat {}", path.display()), e))?;
            Ok(meta.is_file().then_some((file, meta.len())))
        })
        .await?;
        let Some((file, size)) = opened else {
            return Err(self.not_found(key));
        };
        Ok(ObjectReader {
            size,
            body: ObjectBody::File(file),
        })
    }

    async fn head(&self, key: &ObjectKey) -> Result<Option<BackendObject>> {
        self.check_fs_key(key)?;
        let path = self.path_of(key);
        let key = key.clone();
        blocking(move || match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => Ok(Some(BackendObject {
                key,
                size: meta.len(),
                modified_ms: meta.modified().map(system_time_ms).unwrap_or(0),
                stamp: stamp_of(&meta),
            })),
            Ok(_) => Ok(None),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(StorageError::io(format!("stat {}", path.display()), e)),
        })
        .await
    }

    async fn list(
        &self,
        prefix: &KeyPrefix,
        start_after: Option<&ObjectKey>,
        limit: usize,
    ) -> Result<Vec<BackendObject>> {
        let root = self.root.clone();
        let prefix = prefix.clone();
        let start_after = start_after.map(|k| k.as_str().to_string());
        let limit = limit.min(crate::backend::LIST_PAGE_ENTRIES_MAX);
        blocking(move || {
            let mut out = Vec::new();
            if limit == 0 {
                return Ok(out);
            }
            let rel = prefix.directory().to_string();
            let mut dir = root.clone();
            dir.extend(rel.split('/').filter(|s| !s.is_empty()));
            let walk = Walk {
                prefix: prefix.as_str(),
                start_after: start_after.as_deref(),
                limit,
            };
            match walk.dir(&dir, &rel, &mut out) {
                Ok(_) => Ok(out),
                Err(e) if is_absent(&e) => Ok(out),
                Err(e) => Err(StorageError::io(format!("list {}", dir.display()), e)),
            }
        })
        .await
    }

    async fn delete(&self, key: &ObjectKey) -> Result<Option<u64>> {
        self.check_fs_key(key)?;
        let path = self.path_of(key);
        let root = self.root.clone();
        let removed = blocking(move || {
            let size = match fs::symlink_metadata(&path) {
                Ok(meta) if meta.is_file() => meta.len(),
                Ok(_) => return Ok(None),
                Err(e) if is_absent(&e) => return Ok(None),
                Err(e) => return Err(StorageError::io(format!("stat {}", path.display()), e)),
            };
            fs::remove_file(&path)
                .map_err(|e| StorageError::io(format!("remove {}", path.display()), e))?;
            let parent = path.parent().unwrap_or(&root);
            sync_dir(parent)?;
            prune_empty_dirs(&root, parent);
            Ok(Some(size))
        })
        .await?;
        if let Some(size) = removed {
            self.gauge.release(size);
        }
        Ok(removed)
    }
}

/// Runs file-system work off the async threads: the one seam through which this backend blocks.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|join| StorageError::io("file-system task failed", io::Error::other(join)))?
}

fn is_out_of_space(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// A file's stamp: its modification time in nanoseconds, new for every staged file.
fn stamp_of(meta: &fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// The writer thread of a put: writes and hashes the chunks, then fsyncs the file.
///
/// A large put would otherwise leave all its bytes dirty in the page cache for one long fsync
/// at the end. Once [`WRITEBACK_STEP_BYTES`] were written, a second thread starts and
/// `fdatasync`s the file each time that many more were, so the disk writes while the network
/// still delivers and the final fsync has little left to do. A smaller put (most pipeline
/// outputs) starts no thread.
fn write_staged(path: &Path, chunks: mpsc::Receiver<Bytes>) -> io::Result<(u64, ContentHash)> {
    let file = OpenOptions::new().write(true).create_new(true).open(path)?;
    std::thread::scope(|scope| {
        let mut out = StepWriter {
            file: &file,
            since_step: 0,
            scope,
            writeback: None,
        };
        let written = write_blocks(&mut out, chunks);
        let synced = out.finish();
        let written = written?;
        synced?;
        file.sync_all()?;
        Ok(written)
    })
}

/// Bytes written between two early writebacks of a staged file.
const WRITEBACK_STEP_BYTES: u64 = 64 << 20;

/// The writeback thread of a staged file: told to sync through a queue of one (a step that
/// arrives while a sync runs is merged into the next one).
struct Writeback<'scope> {
    steps: std::sync::mpsc::SyncSender<()>,
    thread: std::thread::ScopedJoinHandle<'scope, io::Result<()>>,
}

/// A file writer that signals a writeback thread every [`WRITEBACK_STEP_BYTES`], starting it
/// at the first step.
struct StepWriter<'scope, 'env> {
    file: &'env File,
    since_step: u64,
    scope: &'scope std::thread::Scope<'scope, 'env>,
    writeback: Option<Writeback<'scope>>,
}

impl Write for StepWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.stepped(n)?;
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let n = self.file.write_vectored(bufs)?;
        self.stepped(n)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl StepWriter<'_, '_> {
    fn stepped(&mut self, n: usize) -> io::Result<()> {
        self.since_step += n as u64;
        if self.since_step < WRITEBACK_STEP_BYTES {
            return Ok(());
        }
        self.since_step = 0;
        if self.writeback.is_none() {
            let syncer = self.file.try_clone()?;
            let (steps, step_rx) = std::sync::mpsc::sync_channel::<()>(1);
            let thread = self.scope.spawn(move || -> io::Result<()> {
                while step_rx.recv().is_ok() {
                    syncer.sync_data()?;
                }
                Ok(())
            });
            self.writeback = Some(Writeback { steps, thread });
        }
        if let Some(writeback) = &self.writeback {
            // Full: a sync is already queued and will cover these bytes too.
            let _ = writeback.steps.try_send(());
        }
        Ok(())
    }

    /// Ends the writeback thread, if one started, with how its syncs went.
    fn finish(self) -> io::Result<()> {
        let Some(Writeback { steps, thread }) = self.writeback else {
            return Ok(());
        };
        drop(steps);
        thread
            .join()
            .map_err(|_| io::Error::other("writeback thread panicked"))?
    }
}

/// Drains `chunks` into `out` on a blocking thread, hashing each chunk as it arrives (while it
/// is still in cache) and writing them in batches of about [`WRITE_BLOCK_BYTES`] with one
/// vectored write, so no byte is copied in user space and the system-call count stays low.
/// Returns the bytes written and their hash. Used by staged puts and by the CLI's downloads.
pub fn write_blocks(
    out: &mut impl Write,
    mut chunks: mpsc::Receiver<Bytes>,
) -> io::Result<(u64, ContentHash)> {
    let mut hasher = Hasher::new();
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut size = 0u64;
    while let Some(chunk) = chunks.blocking_recv() {
        hasher.update(&chunk);
        size += chunk.len() as u64;
        batch_bytes += chunk.len();
        batch.push(chunk);
        if batch_bytes >= WRITE_BLOCK_BYTES {
            write_batch(out, &batch)?;
            batch.clear();
            batch_bytes = 0;
        }
    }
    write_batch(out, &batch)?;
    out.flush()?;
    Ok((size, hasher.finish()))
}

/// Writes every chunk of `batch`, in order, with as few `writev` calls as the kernel allows.
fn write_batch(out: &mut impl Write, batch: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = batch.iter().map(|chunk| IoSlice::new(chunk)).collect();
    let mut remaining: &mut [IoSlice<'_>] = &mut slices;
    while !remaining.is_empty() {
        match out.write_vectored(remaining) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "write returned 0 bytes",
                ));
            }
            Ok(n) => IoSlice::advance_slices(&mut remaining, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn remove_staged(path: PathBuf) {
    let result = tokio::task::spawn_blocking(move || match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if is_absent(&e) => Ok(()),
        Err(e) => Err((path, e)),
    })
    .await;
    if let Ok(Err((path, e))) = result {
        warn!(path = %path.display(), error = %e, "could not remove staged file; the next start removes it");
    }
}

/// Streams a file from its current position in large blocks read on a blocking thread, with a
/// bounded queue between that thread and the consumer. Used by gets, and by the CLI to send files.
///
/// Block buffers are reused: each goes back to a process-wide pool when the consumer drops
/// its block (see [`READ_BUFFERS_POOLED_MAX`]).
pub fn read_blocks(mut file: File) -> ByteStream {
    let (blocks_tx, blocks_rx) = mpsc::channel::<io::Result<Bytes>>(READ_BLOCKS_IN_FLIGHT_MAX);
    tokio::task::spawn_blocking(move || {
        loop {
            let mut buffer = read_buffer();
            let block = match read_block(&mut file, &mut buffer) {
                Ok(0) => {
                    drop(PooledBlock(buffer));
                    return;
                }
                Ok(_) => Bytes::from_owner(PooledBlock(buffer)),
                Err(e) => {
                    drop(PooledBlock(buffer));
                    let _ = blocks_tx.blocking_send(Err(e));
                    return;
                }
            };
            if blocks_tx.blocking_send(Ok(block)).is_err() {
                // The reader went away (client disconnected).
                return;
            }
        }
    });
    Box::pin(futures_util::stream::unfold(
        blocks_rx,
        |mut rx| async move { rx.recv().await.map(|block| (block, rx)) },
    ))
}

enum Published {
    Replaced {
        replaced_size: Option<u64>,
        stamp: u64,
    },
    ParentIsObject(String),
    KeyIsDirectory,
}

/// Renames a staged file to its key's path, creating parent directories, and fsyncs every
/// directory whose entries changed.
fn publish(root: &Path, staged: &Path, final_path: &Path) -> Result<Published> {
    let io_err =
        |what: &str, path: &Path, e| StorageError::io(format!("{what} {}", path.display()), e);
    let parent = final_path.parent().unwrap_or(root);
    // Walk up to the deepest ancestor that exists; it must be a directory.
    let mut missing = Vec::new();
    let mut existing = parent;
    loop {
        match fs::metadata(existing) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => {
                let rel = existing.strip_prefix(root).unwrap_or(existing);
                return Ok(Published::ParentIsObject(rel.display().to_string()));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                missing.push(existing);
                existing = existing.parent().unwrap_or(root);
            }
            Err(e) => return Err(io_err("stat", existing, e)),
        }
    }
    for dir in missing.iter().rev() {
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err("create directory", dir, e)),
        }
    }
    let replaced = match fs::symlink_metadata(final_path) {
        Ok(meta) if meta.is_dir() => return Ok(Published::KeyIsDirectory),
        Ok(meta) => Some(meta.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err("stat", final_path, e)),
    };
    let stamp = fs::metadata(staged)
        .map(|m| stamp_of(&m))
        .map_err(|e| io_err("stat", staged, e))?;
    fs::rename(staged, final_path).map_err(|e| io_err("rename into", final_path, e))?;
    sync_dir(parent)?;
    // New directories are durable only once their own parents are synced.
    for dir in &missing {
        if let Some(up) = dir.parent() {
            sync_dir(up)?;
        }
    }
    Ok(Published::Replaced {
        replaced_size: replaced,
        stamp,
    })
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io(format!("fsync directory {}", dir.display()), e))
}

/// Removes directories left empty by a delete, up to (not including) the root, so that a key
/// that was a directory can become an object again.
fn prune_empty_dirs(root: &Path, mut dir: &Path) {
    while dir != root && dir.starts_with(root) {
        if fs::remove_dir(dir).is_err() {
            return;
        }
        match dir.parent() {
            Some(up) => dir = up,
            None => return,
        }
    }
}

/// A depth-first walk in key order. Directories sort as `name/`, so the walk meets keys in the
/// same byte order as the index does (`a-b` before `a/x`).
struct Walk<'a> {
    prefix: &'a str,
    start_after: Option<&'a str>,
    limit: usize,
}

impl Walk<'_> {
    /// Returns true once `limit` entries were collected.
    fn dir(&self, dir: &Path, rel: &str, out: &mut Vec<BackendObject>) -> io::Result<bool> {
        let mut entries = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                warn!(dir = %dir.display(), "skipping a file name that is not UTF-8");
                continue;
            };
            if rel.is_empty() && name == TMP_DIR_NAME {
                continue;
            }
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                entries.push((format!("{rel}{name}/"), true));
            } else if file_type.is_file() {
                entries.push((format!("{rel}{name}"), false));
            }
        }
        entries.sort();
        for (path, is_dir) in entries {
            if is_dir {
                let may_match = path.starts_with(self.prefix) || self.prefix.starts_with(&path);
                // Every key below `path` starts with it: skip the subtree when all of them sort
                // at or before `start_after`.
                let already_listed = self
                    .start_after
                    .is_some_and(|s| !s.starts_with(&path) && path.as_str() < s);
                if may_match && !already_listed {
                    let mut sub = dir.to_path_buf();
                    sub.push(
                        path.trim_end_matches('/')
                            .rsplit('/')
                            .next()
                            .unwrap_or_default(),
                    );
                    match self.dir(&sub, &path, out) {
                        Ok(true) => return Ok(true),
                        Ok(false) => {}
                        // Removed while we walked: nothing to list there.
                        Err(e) if is_absent(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
                continue;
            }
            if !path.starts_with(self.prefix)
                || self.start_after.is_some_and(|s| path.as_str() <= s)
            {
                continue;
            }
            let Ok(key) = ObjectKey::new(path.clone()) else {
                debug!(path, "skipping a file whose name is not a valid key");
                continue;
            };
            let meta = match fs::metadata(dir.join(key.basename())) {
                Ok(meta) => meta,
                Err(e) if is_absent(&e) => continue,
                Err(e) => return Err(e),
            };
            out.push(BackendObject {
                key,
                size: meta.len(),
                modified_ms: meta.modified().map(system_time_ms).unwrap_or(0),
                stamp: stamp_of(&meta),
            });
            if out.len() >= self.limit {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

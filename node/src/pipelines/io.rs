//! What pipelines read from and write to on a node: tier prefixes, directories, and the
//! provenance records that make runs incremental.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use letl_actors::cache::CacheHandle;
use letl_actors::pipeline::{Input, Ledger, Seen, Sink, Source, Stored};
use letl_storage::{
    ByteStream, DbRecords, KeyPrefix, ObjectBody, ObjectKey, ObjectMeta, ObjectUri, PrefixUri,
    S3Settings, S3Tier, TierBackend,
};
use serde::{Deserialize, Serialize};

use super::spec::render_key;
use crate::places::Places;

/// Most files a directory source takes in one run.
pub const DIR_SOURCE_FILES_MAX: usize = 1_000_000;

/// Objects under a tier prefix; fingerprints are their content hashes.
#[derive(Debug)]
pub struct TierSource {
    pub places: Places,
    pub from: PrefixUri,
    /// Only the objects this node keeps and processes (see [`Places::processes_here`]): a
    /// job's part on one node of several. Otherwise every object, wherever it is.
    pub here_only: bool,
    /// Object bytes fetched from other nodes, added to as inputs are opened.
    pub between_nodes: Arc<AtomicU64>,
}

impl TierSource {
    fn input(&self, key: &ObjectKey, meta: &ObjectMeta) -> Input {
        Input {
            uri: ObjectUri::new(self.from.tier.clone(), key.clone()).to_string(),
            key: key
                .as_str()
                .strip_prefix(self.from.prefix.as_str())
                .unwrap_or(key.as_str())
                .to_string(),
            size: meta.size,
            fingerprint: meta.hash.to_string(),
        }
    }

    /// This node's own inputs after `start_after`: pages of its tier, keeping those it
    /// processes, until `limit` are found or the tier has no more.
    async fn list_here(
        &self,
        mut start_after: Option<ObjectKey>,
        limit: usize,
    ) -> Result<Vec<Input>, String> {
        let tier = self
            .places
            .directory()
            .get(&self.from.tier)
            .map_err(|e| e.to_string())?;
        let mut inputs = Vec::new();
        loop {
            let page = tier
                .list(self.from.prefix.clone(), start_after.clone(), limit)
                .await
                .map_err(|e| e.to_string())?;
            let full = page.len() == limit;
            for (key, meta) in page {
                start_after = Some(key.clone());
                let uri = ObjectUri::new(self.from.tier.clone(), key.clone());
                if self.places.processes_here(&uri).await {
                    inputs.push(self.input(&key, &meta));
                    if inputs.len() == limit {
                        return Ok(inputs);
                    }
                }
            }
            if !full {
                return Ok(inputs);
            }
        }
    }
}

#[async_trait::async_trait]
impl Source for TierSource {
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Input>, String> {
        let start_after = after
            .map(|key| ObjectKey::new(format!("{}{key}", self.from.prefix)))
            .transpose()
            .map_err(|e| e.to_string())?;
        if self.here_only {
            return self.list_here(start_after, limit).await;
        }
        let page = self
            .places
            .list(
                &self.from.tier,
                self.from.prefix.clone(),
                start_after,
                limit,
            )
            .await
            .map_err(|e| e.to_string())?;
        if !page.unreachable.is_empty() {
            // A run over part of the source would look complete with inputs left out.
            return Err(format!(
                "{} cannot be listed whole now: {}",
                self.from,
                page.unreachable.join("; ")
            ));
        }
        Ok(page
            .entries
            .iter()
            .map(|(key, meta)| self.input(key, meta))
            .collect())
    }

    async fn open(&self, input: &Input) -> Result<ObjectBody, String> {
        let key = ObjectKey::new(format!("{}{}", self.from.prefix, input.key))
            .map_err(|e| e.to_string())?;
        let uri = ObjectUri::new(self.from.tier.clone(), key);
        let (meta, reader, remote) = self
            .places
            .get_counted(&uri)
            .await
            .map_err(|e| e.to_string())?;
        if remote {
            self.between_nodes.fetch_add(meta.size, Ordering::Relaxed);
        }
        if meta.hash.to_string() != input.fingerprint {
            return Err(format!("{} changed since it was listed", input.uri));
        }
        Ok(reader.body)
    }
}

/// Objects under a prefix of a bucket on the `[source]` endpoint; fingerprints are their size
/// and ETag.
#[derive(Debug)]
pub struct S3Source {
    bucket_name: String,
    bucket: S3Tier,
    prefix: KeyPrefix,
}

impl S3Source {
    pub fn new(settings: &S3Settings, bucket: &str, prefix: KeyPrefix) -> Self {
        Self {
            bucket_name: bucket.to_string(),
            bucket: S3Tier::source(settings, bucket),
            prefix,
        }
    }

    fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket_name)
    }
}

#[async_trait::async_trait]
impl Source for S3Source {
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Input>, String> {
        let start_after = after
            .map(|key| ObjectKey::new(format!("{}{key}", self.prefix.as_str())))
            .transpose()
            .map_err(|e| e.to_string())?;
        let page = self
            .bucket
            .list(&self.prefix, start_after.as_ref(), limit)
            .await
            .map_err(|e| e.to_string())?;
        Ok(page
            .into_iter()
            .map(|object| Input {
                uri: self.uri(object.key.as_str()),
                key: object
                    .key
                    .as_str()
                    .strip_prefix(self.prefix.as_str())
                    .unwrap_or(object.key.as_str())
                    .to_string(),
                size: object.size,
                fingerprint: format!("{}:{:016x}", object.size, object.stamp),
            })
            .collect())
    }

    async fn open(&self, input: &Input) -> Result<ObjectBody, String> {
        let key = ObjectKey::new(format!("{}{}", self.prefix.as_str(), input.key))
            .map_err(|e| e.to_string())?;
        let (reader, stamp) = self
            .bucket
            .get_stamped(&key)
            .await
            .map_err(|e| e.to_string())?;
        if format!("{}:{stamp:016x}", reader.size) != input.fingerprint {
            return Err(format!("{} changed since it was listed", input.uri));
        }
        Ok(reader.body)
    }
}

/// Files under a directory (recursively, in path order); fingerprints are size and
/// modification time.
#[derive(Debug)]
pub struct DirSource {
    pub root: PathBuf,
    /// The listing, made once per run.
    listed: Mutex<Option<Arc<Vec<Input>>>>,
}

impl DirSource {
    pub fn new(root: PathBuf) -> Self {
        Self {
            root,
            listed: Mutex::new(None),
        }
    }

    fn walk(root: &std::path::Path) -> Result<Vec<Input>, String> {
        use std::os::unix::fs::MetadataExt;
        let mut found = Vec::new();
        let mut dirs = vec![(root.to_path_buf(), String::new())];
        while let Some((dir, rel)) = dirs.pop() {
            let entries =
                std::fs::read_dir(&dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
            for entry in entries {
                let entry = entry.map_err(|e| format!("read {}: {e}", dir.display()))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                let meta = std::fs::metadata(&path)
                    .map_err(|e| format!("stat {}: {e}", path.display()))?;
                let key = format!("{rel}{name}");
                if meta.is_dir() {
                    dirs.push((path, format!("{key}/")));
                } else if meta.is_file() {
                    if found.len() == DIR_SOURCE_FILES_MAX {
                        return Err(format!(
                            "more than {DIR_SOURCE_FILES_MAX} files under {}; split the pipeline",
                            root.display()
                        ));
                    }
                    found.push(Input {
                        uri: format!("file://{}", path.display()),
                        key,
                        size: meta.len(),
                        fingerprint: format!(
                            "{}:{}.{}",
                            meta.len(),
                            meta.mtime(),
                            meta.mtime_nsec()
                        ),
                    });
                }
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(found)
    }
}

#[async_trait::async_trait]
impl Source for DirSource {
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Input>, String> {
        let listed = self
            .listed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let all = match listed {
            Some(all) => all,
            None => {
                let root = self.root.clone();
                let all = Arc::new(
                    tokio::task::spawn_blocking(move || Self::walk(&root))
                        .await
                        .map_err(|e| e.to_string())??,
                );
                *self.listed.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&all));
                all
            }
        };
        let start = match after {
            Some(after) => all.partition_point(|input| input.key.as_str() <= after),
            None => 0,
        };
        Ok(all.iter().skip(start).take(limit).cloned().collect())
    }

    async fn open(&self, input: &Input) -> Result<ObjectBody, String> {
        let mut path = self.root.clone();
        path.extend(input.key.split('/'));
        let file =
            std::fs::File::open(&path).map_err(|e| format!("open {}: {e}", path.display()))?;
        Ok(ObjectBody::File(file))
    }
}

/// Results stored under a tier prefix, named by the key template.
#[derive(Debug)]
pub struct TierSink {
    pub places: Places,
    /// Result bytes sent to other nodes, added to as results are stored.
    pub between_nodes: Arc<AtomicU64>,
    pub to: PrefixUri,
    pub key_template: String,
    pub pipeline: String,
}

impl TierSink {
    pub fn output_uri(&self, input: &Input) -> Result<ObjectUri, String> {
        let key = ObjectKey::new(format!(
            "{}{}",
            self.to.prefix,
            render_key(&self.key_template, &input.key, &self.pipeline)
        ))
        .map_err(|e| format!("output key for {}: {e}", input.uri))?;
        Ok(ObjectUri::new(self.to.tier.clone(), key))
    }
}

#[async_trait::async_trait]
impl Sink for TierSink {
    async fn store(&self, input: &Input, output: ByteStream) -> Result<Stored, String> {
        let uri = self.output_uri(input)?;
        let (meta, remote) = self
            .places
            .put_counted(&uri, output, None, None)
            .await
            .map_err(|e| e.to_string())?;
        self.between_nodes
            .fetch_add(meta.size * remote as u64, Ordering::Relaxed);
        Ok(Stored {
            uri: uri.to_string(),
            size: meta.size,
            hash: meta.hash.to_string(),
        })
    }
}

/// Where an output came from: kept per input (for incremental runs) and per output (for
/// `letl stat`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub pipeline: String,
    /// See [`super::spec::Compiled::version_tag`].
    pub version: String,
    pub source: String,
    pub source_fingerprint: String,
    pub output: String,
    /// The output's content hash when it was produced: the record describes the object only
    /// while it still has it.
    pub output_hash: String,
    pub job: String,
    pub produced_ms: u64,
}

/// Provenance records of one pipeline version, as one job sees them.
#[derive(Debug)]
pub struct ProvenanceLedger {
    pub records: DbRecords<Provenance>,
    pub places: Places,
    pub cache: CacheHandle,
    pub pipeline: String,
    pub version: String,
    pub job: String,
    pub clock: Arc<dyn letl_storage::Clock>,
}

/// Key of an input's record.
pub fn by_input(pipeline: &str, source: &str) -> String {
    format!("in/{pipeline}\u{0}{source}")
}

/// Key of an output's record.
pub fn by_output(output: &str) -> String {
    format!("out/{output}")
}

#[async_trait::async_trait]
impl Ledger for ProvenanceLedger {
    async fn seen(&self, input: &Input) -> Result<Seen, String> {
        let Some(record) = self
            .records
            .get(&by_input(&self.pipeline, &input.uri))
            .map_err(|e| e.to_string())?
        else {
            return Ok(Seen::New);
        };
        if record.version != self.version || record.source_fingerprint != input.fingerprint {
            return Ok(Seen::New);
        }
        // An output deleted, expired or overwritten since is made again.
        let present = match record.output.strip_prefix("cache:") {
            Some(key) => matches!(
                self.cache.get(key).await,
                Ok(Some((entry, _))) if entry.hash.to_string() == record.output_hash
            ),
            None => {
                let output = ObjectUri::parse(&record.output).map_err(|e| e.to_string())?;
                matches!(
                    self.places.head(&output).await,
                    Ok(meta) if meta.hash.to_string() == record.output_hash
                )
            }
        };
        Ok(match (present, record.job == self.job) {
            (false, _) => Seen::New,
            (true, true) => Seen::ProducedByThisJob,
            (true, false) => Seen::Produced,
        })
    }

    async fn record(&self, input: &Input, stored: &Stored) -> Result<(), String> {
        let record = Provenance {
            pipeline: self.pipeline.clone(),
            version: self.version.clone(),
            source: input.uri.clone(),
            source_fingerprint: input.fingerprint.clone(),
            output: stored.uri.clone(),
            output_hash: stored.hash.clone(),
            job: self.job.clone(),
            produced_ms: self.clock.now_ms(),
        };
        self.records
            .put(&by_input(&self.pipeline, &input.uri), &record)
            .map_err(|e| e.to_string())?;
        self.records
            .put(&by_output(&stored.uri), &record)
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Cache records under a prefix; fingerprints are their content hashes.
#[derive(Debug)]
pub struct CacheSource {
    pub cache: CacheHandle,
    pub prefix: String,
}

#[async_trait::async_trait]
impl Source for CacheSource {
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Input>, String> {
        let after = after.map(|key| format!("{}{key}", self.prefix));
        let entries = self
            .cache
            .list(&self.prefix, after, limit)
            .await
            .map_err(|e| e.to_string())?;
        Ok(entries
            .into_iter()
            .map(|entry| Input {
                uri: format!("cache:{}", entry.key),
                key: entry.key[self.prefix.len()..].to_string(),
                size: entry.size,
                fingerprint: entry.hash.to_string(),
            })
            .collect())
    }

    async fn open(&self, input: &Input) -> Result<ObjectBody, String> {
        let key = format!("{}{}", self.prefix, input.key);
        match self.cache.get(&key).await.map_err(|e| e.to_string())? {
            Some((_, data)) => Ok(letl_storage::stream_of(data, CACHE_CHUNK_BYTES).into()),
            None => Err(format!("cache record `{key}` expired or unknown")),
        }
    }
}

/// Chunks a cache record is streamed in.
const CACHE_CHUNK_BYTES: usize = 1 << 20;

/// Results kept as cache records (for the next pipeline of a chain).
#[derive(Debug)]
pub struct CacheSink {
    pub cache: CacheHandle,
    pub prefix: String,
    pub key_template: String,
    pub pipeline: String,
    /// A result larger than this is refused as it streams, never held whole.
    pub max_bytes: u64,
}

#[async_trait::async_trait]
impl Sink for CacheSink {
    async fn store(&self, input: &Input, mut output: ByteStream) -> Result<Stored, String> {
        use futures_util::StreamExt;
        let key = format!(
            "{}{}",
            self.prefix,
            render_key(&self.key_template, &input.key, &self.pipeline)
        );
        let mut data = bytes::BytesMut::new();
        while let Some(chunk) = output.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            if (data.len() + chunk.len()) as u64 > self.max_bytes {
                return Err(format!(
                    "the result is more than the cache holds ({} bytes)",
                    self.max_bytes
                ));
            }
            data.extend_from_slice(&chunk);
        }
        let entry = self
            .cache
            .put(key.clone(), data.freeze(), None)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Stored {
            uri: format!("cache:{key}"),
            size: entry.size,
            hash: entry.hash.to_string(),
        })
    }
}

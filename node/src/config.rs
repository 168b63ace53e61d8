//! Node configuration: an optional TOML file, command-line flags over it, defaults under both,
//! turned into a validated [`NodeConfig`]. Errors name the field that was wrong.

use letl_actors::cache::CacheLimits;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use letl_storage::{S3_PART_BYTES_MAX, S3_PART_BYTES_MIN, S3Settings, TierName};
use serde::Deserialize;
use serde::de::{self, Visitor};

pub const DEFAULT_DATA_DIR: &str = "./letl-data";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:7070";
/// The name a founded cluster gets unless configured.
pub const DEFAULT_CLUSTER_NAME: &str = "letl";
/// S3's own ceiling; a node that must refuse smaller objects says so in its config.
pub const DEFAULT_OBJECT_BYTES_MAX: u64 = 5 << 40;
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// How long pipeline jobs may drain at shutdown unless configured.
pub const DEFAULT_HARD_TERMINATE: Duration = Duration::from_secs(30 * 60);
/// The single-node default's tiers, each a directory under `<data_dir>/tiers/`. `daos` and
/// `cortx` are local stand-ins until configured as endpoints.
pub const DEFAULT_TIERS: [(&str, TierKind); 5] = [
    ("pmem", TierKind::Pmem),
    ("ssd", TierKind::Ssd),
    ("hdd", TierKind::Hdd),
    ("daos", TierKind::Daos),
    ("cortx", TierKind::Cortx),
];

/// A node's validated configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    pub object_bytes_max: u64,
    pub shutdown_grace: Duration,
    /// At shutdown, how long pipeline jobs may take to drain before they are cut (and resume
    /// at the next start).
    pub hard_terminate: Duration,
    pub tiers: Vec<TierConfig>,
    /// The LETL routes' default source: `source_uri` keys without a scheme are read here.
    pub source_dir: Option<PathBuf>,
    /// The endpoint of `s3://bucket/key` sources; with a bucket, scheme-less keys are read from
    /// that bucket when there is no `source_dir`.
    pub source_s3: Option<S3Settings>,
    /// The cache actor's time-to-live and bounds.
    pub cache: CacheLimits,
    /// Where the node talks to other nodes, and how they reach it.
    pub cluster: ClusterConfig,
}

/// The node's place in a cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// The name a cluster founded by this node gets.
    pub name: String,
    /// Where the QUIC endpoint (raft and node-to-node requests) listens: by default the HTTP
    /// address's IP with the next port (127.0.0.1:7071), or a free port if HTTP's is 0.
    pub quic: SocketAddr,
    /// How other nodes reach this one's QUIC endpoint and HTTP API (default: where they
    /// listen; a port 0 is replaced by the one taken).
    pub advertise_quic: Option<String>,
    pub advertise_http: Option<String>,
    /// Copies of each object on a local tier, on distinct nodes (default 1).
    pub replicas: usize,
}

/// Copies of an object unless configured.
pub const REPLICAS_DEFAULT: usize = 1;
/// Most copies of an object a cluster keeps.
pub const REPLICAS_MAX: usize = 7;

#[derive(Clone, Debug)]
pub struct TierConfig {
    pub name: TierName,
    pub kind: TierKind,
    pub store: TierStore,
    pub capacity_bytes: Option<u64>,
}

/// Where a tier keeps its objects.
#[derive(Clone, Debug)]
pub enum TierStore {
    /// A directory, already resolved against the data directory.
    Dir(PathBuf),
    /// An S3-compatible endpoint.
    S3(S3Settings),
}

impl TierConfig {
    /// The tier's directory, for fs tiers.
    pub fn path(&self) -> Option<&Path> {
        match &self.store {
            TierStore::Dir(path) => Some(path),
            TierStore::S3(_) => None,
        }
    }
}

/// Part size of multipart uploads to S3 tiers unless configured.
pub const DEFAULT_S3_PART_BYTES: u64 = 16 << 20;
pub const DEFAULT_S3_REGION: &str = "us-east-1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TierKind {
    Pmem,
    Ssd,
    Hdd,
    Daos,
    Cortx,
    Fs,
}

impl fmt::Display for TierKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Pmem => "pmem",
            Self::Ssd => "ssd",
            Self::Hdd => "hdd",
            Self::Daos => "daos",
            Self::Cortx => "cortx",
            Self::Fs => "fs",
        })
    }
}

/// Flags given on the command line; each overrides the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub http: Option<String>,
    pub quic: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config field `{field}`: {message}")]
    Field { field: String, message: String },
}

fn field_error(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    node: FileNode,
    #[serde(default)]
    source: FileSource,
    #[serde(default)]
    cache: FileCache,
    #[serde(default)]
    cluster: FileCluster,
    tiers: Option<BTreeMap<String, FileTier>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCluster {
    name: Option<String>,
    quic: Option<String>,
    advertise_quic: Option<String>,
    advertise_http: Option<String>,
    replicas: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNode {
    data_dir: Option<PathBuf>,
    http: Option<String>,
    max_object_size: Option<ByteSize>,
    shutdown_grace: Option<String>,
    hard_terminate: Option<String>,
}

/// The cache actor's bounds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCache {
    expire_in: Option<String>,
    max_records: Option<usize>,
    max_bytes: Option<ByteSize>,
}

/// Where the LETL routes read a `source_uri` without a scheme.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSource {
    dir: Option<PathBuf>,
    endpoint: Option<String>,
    bucket: Option<String>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTier {
    kind: Option<TierKind>,
    backend: Option<String>,
    path: Option<PathBuf>,
    capacity: Option<ByteSize>,
    endpoint: Option<String>,
    bucket: Option<String>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    part_size: Option<ByteSize>,
}

impl NodeConfig {
    /// Reads `file` (if given), applies `overrides`, and validates the result.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let parsed = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_path_buf(),
                    message: e.to_string().trim_end().to_string(),
                })?
            }
            None => FileConfig::default(),
        };
        Self::from_file(parsed, overrides)
    }

    /// Parses TOML text (for tests and tools).
    pub fn from_toml(text: &str, overrides: &Overrides) -> Result<Self, ConfigError> {
        let parsed = toml::from_str::<FileConfig>(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string().trim_end().to_string(),
        })?;
        Self::from_file(parsed, overrides)
    }

    fn from_file(file: FileConfig, overrides: &Overrides) -> Result<Self, ConfigError> {
        let data_dir = overrides
            .data_dir
            .clone()
            .or(file.node.data_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if data_dir.as_os_str().is_empty() {
            return Err(field_error("node.data_dir", "must not be empty"));
        }
        let (http_field, http_text) = match (&overrides.http, &file.node.http) {
            (Some(flag), _) => ("--http", flag.clone()),
            (None, Some(text)) => ("node.http", text.clone()),
            (None, None) => ("node.http", DEFAULT_HTTP_ADDR.to_string()),
        };
        let http = http_text.parse::<SocketAddr>().map_err(|e| {
            field_error(
                http_field,
                format!("`{http_text}` is not an address like 127.0.0.1:7070 ({e})"),
            )
        })?;
        let cluster = cluster_config(file.cluster, overrides, http)?;
        let object_bytes_max = file
            .node
            .max_object_size
            .map_or(DEFAULT_OBJECT_BYTES_MAX, |s| s.0);
        if object_bytes_max == 0 {
            return Err(field_error("node.max_object_size", "must be more than 0"));
        }
        let shutdown_grace = match file.node.shutdown_grace {
            Some(text) => humantime::parse_duration(&text).map_err(|e| {
                field_error(
                    "node.shutdown_grace",
                    format!("`{text}` is not a duration like 30s or 5m ({e})"),
                )
            })?,
            None => DEFAULT_SHUTDOWN_GRACE,
        };
        let hard_terminate = match file.node.hard_terminate {
            Some(text) => humantime::parse_duration(&text).map_err(|e| {
                field_error(
                    "node.hard_terminate",
                    format!("`{text}` is not a duration like 30s or 30m ({e})"),
                )
            })?,
            None => DEFAULT_HARD_TERMINATE,
        };
        let tiers = match file.tiers {
            None => DEFAULT_TIERS
                .iter()
                .map(|(name, kind)| {
                    Ok(TierConfig {
                        name: TierName::new(*name)
                            .map_err(|e| field_error("tiers", e.to_string()))?,
                        kind: *kind,
                        store: TierStore::Dir(data_dir.join("tiers").join(name)),
                        capacity_bytes: None,
                    })
                })
                .collect::<Result<Vec<_>, ConfigError>>()?,
            Some(tiers) if tiers.is_empty() => {
                return Err(field_error(
                    "tiers",
                    "no tier is configured; remove [tiers] to get the default five",
                ));
            }
            Some(tiers) => tiers
                .into_iter()
                .map(|(name, tier)| tier_config(&data_dir, name, tier))
                .collect::<Result<Vec<_>, ConfigError>>()?,
        };
        check_tier_paths(&data_dir, &tiers)?;
        let defaults = CacheLimits::default();
        let cache = CacheLimits {
            expire_in: match &file.cache.expire_in {
                Some(text) => humantime::parse_duration(text).map_err(|e| {
                    field_error(
                        "cache.expire_in",
                        format!("`{text}` is not a duration like 1m or 30s ({e})"),
                    )
                })?,
                None => defaults.expire_in,
            },
            max_records: file.cache.max_records.unwrap_or(defaults.max_records),
            max_bytes: file.cache.max_bytes.map_or(defaults.max_bytes, |b| b.0),
        };
        if cache.expire_in.is_zero() || cache.expire_in > letl_actors::cache::CACHE_EXPIRE_IN_MAX {
            return Err(field_error(
                "cache.expire_in",
                "must be more than zero and at most 30 days",
            ));
        }
        if cache.max_records == 0 {
            return Err(field_error("cache.max_records", "must be at least 1"));
        }
        if cache.max_bytes == 0 {
            return Err(field_error("cache.max_bytes", "must be more than 0"));
        }
        if let Some(dir) = &file.source.dir
            && dir.as_os_str().is_empty()
        {
            return Err(field_error("source.dir", "must not be empty"));
        }
        let source = file.source;
        let source_dir = source.dir;
        let source_s3 = match source.endpoint {
            None => {
                for (set, part) in [
                    (source.bucket.is_some(), "bucket"),
                    (source.region.is_some(), "region"),
                    (source.access_key_id.is_some(), "access_key_id"),
                    (source.secret_access_key.is_some(), "secret_access_key"),
                ] {
                    if set {
                        return Err(field_error(
                            format!("source.{part}"),
                            "needs source.endpoint",
                        ));
                    }
                }
                None
            }
            Some(endpoint) => {
                let default_bucket = source.bucket.clone();
                let fields = S3Fields {
                    endpoint: Some(endpoint),
                    // Checked when given; a name that passes stands in for validation otherwise.
                    bucket: Some(
                        source
                            .bucket
                            .unwrap_or_else(|| "letl-no-default-bucket".to_string()),
                    ),
                    region: source.region,
                    access_key_id: source.access_key_id,
                    secret_access_key: source.secret_access_key,
                    part_size: None,
                };
                let mut settings = s3_settings(&|part: &str| format!("source.{part}"), fields)?;
                // Empty: no default bucket, so only s3://bucket/key sources use the endpoint.
                settings.bucket = default_bucket.unwrap_or_default();
                Some(settings)
            }
        };
        Ok(Self {
            data_dir,
            http,
            object_bytes_max,
            shutdown_grace,
            hard_terminate,
            tiers,
            source_dir,
            source_s3,
            cache,
            cluster,
        })
    }

    pub fn index_path(&self) -> PathBuf {
        self.data_dir.join("index")
    }

    /// The node's cluster identity and raft database.
    pub fn cluster_dir(&self) -> PathBuf {
        self.data_dir.join("cluster")
    }
}

fn cluster_config(
    file: FileCluster,
    overrides: &Overrides,
    http: SocketAddr,
) -> Result<ClusterConfig, ConfigError> {
    let name = file
        .name
        .unwrap_or_else(|| DEFAULT_CLUSTER_NAME.to_string());
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(field_error(
            "cluster.name",
            format!("`{name}` must be 1 to 64 letters, digits, `-` or `_`"),
        ));
    }
    let quic = match (&overrides.quic, &file.quic) {
        (Some(text), _) | (None, Some(text)) => {
            let field = if overrides.quic.is_some() {
                "--quic"
            } else {
                "cluster.quic"
            };
            text.parse::<SocketAddr>().map_err(|e| {
                field_error(
                    field,
                    format!("`{text}` is not an address like 127.0.0.1:7071 ({e})"),
                )
            })?
        }
        (None, None) => {
            let port = match http.port() {
                0 => 0,
                port => port.checked_add(1).ok_or_else(|| {
                    field_error(
                        "cluster.quic",
                        "the HTTP port is the last one; give the QUIC address",
                    )
                })?,
            };
            SocketAddr::new(http.ip(), port)
        }
    };
    for (field, listen, advertise) in [
        ("cluster.advertise_quic", quic, &file.advertise_quic),
        ("cluster.advertise_http", http, &file.advertise_http),
    ] {
        match advertise {
            Some(text) if text.parse::<SocketAddr>().is_err() => {
                return Err(field_error(
                    field,
                    format!("`{text}` is not an address like 10.0.0.5:7071"),
                ));
            }
            None if listen.ip().is_unspecified() => {
                return Err(field_error(
                    field,
                    format!(
                        "needed when listening on all interfaces ({listen}): the address other nodes use"
                    ),
                ));
            }
            _ => {}
        }
    }
    let replicas = file.replicas.unwrap_or(REPLICAS_DEFAULT);
    if !(1..=REPLICAS_MAX).contains(&replicas) {
        return Err(field_error(
            "cluster.replicas",
            format!("{replicas} must be 1 to {REPLICAS_MAX}"),
        ));
    }
    Ok(ClusterConfig {
        name,
        quic,
        advertise_quic: file.advertise_quic,
        advertise_http: file.advertise_http,
        replicas,
    })
}

/// Tiers need directories of their own: a tier inside another would count, list and delete the
/// other's objects behind its actor, and a tier holding the data dir would expose the index
/// and the admin token as objects. Paths are compared after making them absolute and removing
/// `.` and `..` (without touching the disk: directories may not exist yet).
fn check_tier_paths(data_dir: &Path, tiers: &[TierConfig]) -> Result<(), ConfigError> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let data_dir = normalize(&cwd, data_dir);
    let index = data_dir.join("index");
    let mut seen: Vec<(&TierName, PathBuf)> = Vec::new();
    for tier in tiers {
        let Some(tier_path) = tier.path() else {
            continue;
        };
        let field = format!("tiers.{}.path", tier.name);
        let path = normalize(&cwd, tier_path);
        if data_dir.starts_with(&path) {
            return Err(field_error(
                field,
                format!(
                    "{} contains the node's data dir {}; give the tier a directory of its own",
                    tier_path.display(),
                    data_dir.display()
                ),
            ));
        }
        if path.starts_with(&index) {
            return Err(field_error(
                field,
                format!("{} is inside the node's index", tier_path.display()),
            ));
        }
        for (other, other_path) in &seen {
            if path.starts_with(other_path) || other_path.starts_with(&path) {
                return Err(field_error(
                    field,
                    format!(
                        "{} overlaps the directory of tier `{other}` ({}); tiers need separate directories",
                        tier_path.display(),
                        other_path.display()
                    ),
                ));
            }
        }
        seen.push((&tier.name, path));
    }
    Ok(())
}

fn normalize(cwd: &Path, path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in cwd.join(path).components() {
        match component {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn tier_config(data_dir: &Path, name: String, tier: FileTier) -> Result<TierConfig, ConfigError> {
    let field = |part: &str| format!("tiers.{name}.{part}");
    let tier_name = TierName::new(name.clone())
        .map_err(|e| field_error(format!("tiers.{name}"), e.to_string()))?;
    let kind = tier.kind.ok_or_else(|| {
        field_error(
            field("kind"),
            "missing; one of pmem, ssd, hdd, daos, cortx, fs",
        )
    })?;
    if let Some(capacity) = &tier.capacity
        && capacity.0 == 0
    {
        return Err(field_error(
            field("capacity"),
            "must be more than 0 (leave it out for no limit)",
        ));
    }
    let capacity_bytes = tier.capacity.map(|c| c.0);
    let store = match tier.backend.as_deref() {
        None | Some("fs") => {
            for (set, part) in [
                (tier.endpoint.is_some(), "endpoint"),
                (tier.bucket.is_some(), "bucket"),
                (tier.region.is_some(), "region"),
                (tier.access_key_id.is_some(), "access_key_id"),
                (tier.secret_access_key.is_some(), "secret_access_key"),
                (tier.part_size.is_some(), "part_size"),
            ] {
                if set {
                    return Err(field_error(
                        field(part),
                        "only s3 tiers take this; add backend = \"s3\"",
                    ));
                }
            }
            let path = tier
                .path
                .unwrap_or_else(|| PathBuf::from("tiers").join(&name));
            if path.as_os_str().is_empty() {
                return Err(field_error(field("path"), "must not be empty"));
            }
            TierStore::Dir(if path.is_absolute() {
                path
            } else {
                data_dir.join(path)
            })
        }
        Some("s3") => {
            if tier.path.is_some() {
                return Err(field_error(
                    field("path"),
                    "s3 tiers have an endpoint and a bucket, not a path",
                ));
            }
            TierStore::S3(s3_settings(
                &field,
                S3Fields {
                    endpoint: tier.endpoint,
                    bucket: tier.bucket,
                    region: tier.region,
                    access_key_id: tier.access_key_id,
                    secret_access_key: tier.secret_access_key,
                    part_size: tier.part_size,
                },
            )?)
        }
        Some(other) => {
            return Err(field_error(
                field("backend"),
                format!("unknown backend `{other}`; use \"fs\" or \"s3\""),
            ));
        }
    };
    Ok(TierConfig {
        name: tier_name,
        kind,
        store,
        capacity_bytes,
    })
}

/// The settings of an S3 endpoint, as a tier or the LETL source section gives them.
struct S3Fields {
    endpoint: Option<String>,
    bucket: Option<String>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    part_size: Option<ByteSize>,
}

fn s3_settings(field: &dyn Fn(&str) -> String, tier: S3Fields) -> Result<S3Settings, ConfigError> {
    let endpoint = tier.endpoint.ok_or_else(|| {
        field_error(
            field("endpoint"),
            "missing; the endpoint URL, e.g. http://127.0.0.1:8333",
        )
    })?;
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) || endpoint.len() < 10
    {
        return Err(field_error(
            field("endpoint"),
            format!("`{endpoint}` is not an http:// or https:// URL"),
        ));
    }
    let bucket = tier
        .bucket
        .ok_or_else(|| field_error(field("bucket"), "missing"))?;
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !bucket_ok {
        return Err(field_error(
            field("bucket"),
            format!(
                "`{bucket}` is not a bucket name: 3 to 63 of a-z, 0-9, '-' and '.', starting and ending with a letter or digit"
            ),
        ));
    }
    let from_env = |value: Option<String>, part: &str, var: &str| {
        value
            .or_else(|| std::env::var(var).ok())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                field_error(
                    field(part),
                    format!("missing; set it here or in the {var} environment variable"),
                )
            })
    };
    let access_key_id = from_env(tier.access_key_id, "access_key_id", "AWS_ACCESS_KEY_ID")?;
    let secret_access_key = from_env(
        tier.secret_access_key,
        "secret_access_key",
        "AWS_SECRET_ACCESS_KEY",
    )?;
    let part_bytes = tier.part_size.map_or(DEFAULT_S3_PART_BYTES, |s| s.0);
    if !(S3_PART_BYTES_MIN..=S3_PART_BYTES_MAX).contains(&part_bytes) {
        return Err(field_error(
            field("part_size"),
            "must be from 5MiB to 5GiB (S3's limits)",
        ));
    }
    Ok(S3Settings {
        endpoint,
        bucket,
        region: tier.region.unwrap_or_else(|| DEFAULT_S3_REGION.to_string()),
        access_key_id,
        secret_access_key,
        part_bytes,
    })
}

/// A byte count written as an integer (bytes) or a string with a unit: `500MiB`, `2 GB`, `1TiB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<Self, String> {
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let bad = || {
            format!(
                "invalid size `{text}`: expected bytes or a number with a unit (KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            )
        };
        let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "m" | "mb" => 1_000_000,
            "g" | "gb" => 1_000_000_000,
            "t" | "tb" => 1_000_000_000_000,
            "kib" => 1 << 10,
            "mib" => 1 << 20,
            "gib" => 1 << 30,
            "tib" => 1 << 40,
            _ => return Err(bad()),
        };
        if number.is_empty() {
            return Err(bad());
        }
        if let Ok(whole) = number.parse::<u64>() {
            return whole.checked_mul(multiplier).map(Self).ok_or_else(bad);
        }
        // Fractions like 1.5GiB: exact enough in f64 for any size a disk has.
        let value: f64 = number.parse().map_err(|_| bad())?;
        let bytes = (value * multiplier as f64).round();
        if !(0.0..1.8e19).contains(&bytes) {
            return Err(bad());
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Ok(Self(bytes as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in bytes, or a string like \"500MiB\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_give_five_directory_tiers() {
        let config = NodeConfig::load(None, &Overrides::default()).unwrap();
        assert_eq!(config.http.to_string(), "127.0.0.1:7070");
        assert_eq!(config.data_dir, PathBuf::from("./letl-data"));
        let names: Vec<_> = config.tiers.iter().map(|t| t.name.to_string()).collect();
        assert_eq!(names, ["pmem", "ssd", "hdd", "daos", "cortx"]);
        assert_eq!(
            config.tiers[1].path(),
            Some(Path::new("./letl-data/tiers/ssd"))
        );
    }

    #[test]
    fn flags_override_the_file() {
        let text = "[node]\ndata_dir = \"/srv/letl\"\nhttp = \"0.0.0.0:80\"\n";
        let overrides = Overrides {
            data_dir: None,
            http: Some("127.0.0.1:9000".to_string()),
            quic: None,
        };
        let config = NodeConfig::from_toml(text, &overrides).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/srv/letl"));
        assert_eq!(config.http.port(), 9000);
        assert_eq!(config.cluster.quic.to_string(), "127.0.0.1:9001");
    }

    #[test]
    fn cluster_settings_are_checked_with_the_field_named() {
        let none = Overrides::default();
        let config = NodeConfig::from_toml("", &none).unwrap();
        assert_eq!(config.cluster.quic.to_string(), "127.0.0.1:7071");
        assert_eq!(config.cluster.name, DEFAULT_CLUSTER_NAME);
        for (text, field) in [
            ("[cluster]\nquic = \"nowhere\"\n", "cluster.quic"),
            ("[cluster]\nname = \"a b\"\n", "cluster.name"),
            ("[cluster]\nreplicas = 0\n", "cluster.replicas"),
            ("[cluster]\nreplicas = 8\n", "cluster.replicas"),
            (
                "[cluster]\nquic = \"0.0.0.0:7071\"\n",
                "cluster.advertise_quic",
            ),
            (
                "[cluster]\nadvertise_http = \"somewhere\"\n",
                "cluster.advertise_http",
            ),
        ] {
            let err = NodeConfig::from_toml(text, &none).unwrap_err().to_string();
            assert!(err.contains(field), "{text}: {err}");
        }
        let flag = Overrides {
            quic: Some("bad".to_string()),
            ..Overrides::default()
        };
        let err = NodeConfig::from_toml("", &flag).unwrap_err().to_string();
        assert!(err.contains("--quic"), "{err}");
    }

    #[test]
    fn tiers_resolve_paths_and_sizes() {
        let text = r#"
            [node]
            data_dir = "/d"
            max_object_size = "1.5GiB"
            [tiers.fast]
            kind = "pmem"
            path = "/mnt/pmem0"
            capacity = "64GiB"
            [tiers.slow]
            kind = "hdd"
            capacity = 1000
        "#;
        let config = NodeConfig::from_toml(text, &Overrides::default()).unwrap();
        assert_eq!(config.object_bytes_max, 1_610_612_736);
        assert_eq!(config.tiers[0].path(), Some(Path::new("/mnt/pmem0")));
        assert_eq!(config.tiers[0].capacity_bytes, Some(64 << 30));
        assert_eq!(config.tiers[1].path(), Some(Path::new("/d/tiers/slow")));
        assert_eq!(config.tiers[1].capacity_bytes, Some(1000));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                "[tiers.ssd]\nkind = \"ssd\"\ncapacity = \"10QB\"\n",
                "capacity = \"10QB\"",
            ),
            (
                "[tiers.ssd]\nkind = \"ssd\"\ncapacty = \"10GB\"\n",
                "unknown field `capacty`",
            ),
            ("[tiers.ssd]\nkind = \"tape\"\n", "kind = \"tape\""),
            ("[tiers.ssd]\npath = \"x\"\n", "tiers.ssd.kind"),
            ("[tiers.SSD]\nkind = \"ssd\"\n", "tiers.SSD"),
            ("[node]\nhttp = \"localhost\"\n", "node.http"),
            ("[node]\nshutdown_grace = \"soon\"\n", "node.shutdown_grace"),
            (
                "[tiers.a]\nkind = \"ssd\"\npath = \"p\"\n[tiers.b]\nkind = \"hdd\"\npath = \"p\"\n",
                "tiers.b.path",
            ),
            (
                "[tiers.a]\nkind = \"ssd\"\nbackend = \"nfs\"\n",
                "tiers.a.backend",
            ),
            (
                "[tiers.a]\nkind = \"ssd\"\npath = \"/x\"\n[tiers.b]\nkind = \"hdd\"\npath = \"/x/y/../y/z\"\n",
                "tiers.b.path",
            ),
            (
                "[node]\ndata_dir = \"/d\"\n[tiers.a]\nkind = \"ssd\"\npath = \"/d/./\"\n",
                "contains the node's data dir",
            ),
            (
                "[node]\ndata_dir = \"/d\"\n[tiers.a]\nkind = \"ssd\"\npath = \"index/x\"\n",
                "inside the node's index",
            ),
            ("[tiers]\n", "no tier is configured"),
            ("[node\n", "line 1"),
        ];
        for (text, expected) in cases {
            let err = NodeConfig::from_toml(text, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected),
                "for {text:?} expected {expected:?} in: {err}"
            );
        }
    }

    #[test]
    fn s3_tiers_take_endpoint_bucket_and_credentials() {
        let text = r#"
            [tiers.cortx]
            kind = "cortx"
            backend = "s3"
            endpoint = "http://127.0.0.1:8333"
            bucket = "letl-data"
            access_key_id = "key"
            secret_access_key = "secret"
            part_size = "8MiB"
        "#;
        let config = NodeConfig::from_toml(text, &Overrides::default()).unwrap();
        let TierStore::S3(s3) = &config.tiers[0].store else {
            panic!("expected an s3 tier")
        };
        assert_eq!(
            (s3.bucket.as_str(), s3.region.as_str(), s3.part_bytes),
            ("letl-data", "us-east-1", 8 << 20)
        );
        assert!(
            !format!("{s3:?}").contains("secret\""),
            "the secret is never printed"
        );
        let base = "[tiers.c]\nkind = \"cortx\"\nbackend = \"s3\"\naccess_key_id = \"k\"\nsecret_access_key = \"s\"\n";
        for (extra, expected) in [
            ("bucket = \"b-1\"\n", "tiers.c.endpoint"),
            (
                "endpoint = \"ftp://x\"\nbucket = \"b-1\"\n",
                "tiers.c.endpoint",
            ),
            (
                "endpoint = \"http://127.0.0.1:1\"\nbucket = \"B_1\"\n",
                "tiers.c.bucket",
            ),
            (
                "endpoint = \"http://127.0.0.1:1\"\nbucket = \"b-1\"\npart_size = \"1MiB\"\n",
                "tiers.c.part_size",
            ),
            (
                "endpoint = \"http://127.0.0.1:1\"\nbucket = \"b-1\"\npath = \"x\"\n",
                "tiers.c.path",
            ),
        ] {
            let err = NodeConfig::from_toml(&format!("{base}{extra}"), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected),
                "for {extra:?} expected {expected:?} in: {err}"
            );
        }
        let err = NodeConfig::from_toml(
            "[tiers.s]\nkind = \"ssd\"\nbucket = \"b-1\"\n",
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("tiers.s.bucket") && err.contains("only s3 tiers"),
            "{err}"
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(ByteSize::parse("500MiB").unwrap().0, 500 << 20);
        assert_eq!(ByteSize::parse("2 GB").unwrap().0, 2_000_000_000);
        assert_eq!(ByteSize::parse("17").unwrap().0, 17);
        assert!(ByteSize::parse("GiB").is_err());
        assert!(ByteSize::parse("99999999999TiB").is_err());
    }
}

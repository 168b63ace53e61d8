//! Node configuration: an optional TOML file, command-line flags over it, defaults under both,
//! turned into a validated [`NodeConfig`]. Errors name the field that was wrong.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use letl_storage::TierName;
use serde::Deserialize;
use serde::de::{self, Visitor};

pub const DEFAULT_DATA_DIR: &str = "./letl-data";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:7070";
/// S3's own ceiling; a node that must refuse smaller objects says so in its config.
pub const DEFAULT_OBJECT_BYTES_MAX: u64 = 5 << 40;
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub http: SocketAddr,
    pub object_bytes_max: u64,
    pub shutdown_grace: Duration,
    pub tiers: Vec<TierConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierConfig {
    pub name: TierName,
    pub kind: TierKind,
    /// The tier's directory, already resolved against the data directory.
    pub path: PathBuf,
    pub capacity_bytes: Option<u64>,
}

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
    tiers: Option<BTreeMap<String, FileTier>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileNode {
    data_dir: Option<PathBuf>,
    http: Option<String>,
    max_object_size: Option<ByteSize>,
    shutdown_grace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTier {
    kind: Option<TierKind>,
    backend: Option<String>,
    path: Option<PathBuf>,
    capacity: Option<ByteSize>,
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
        let tiers = match file.tiers {
            None => DEFAULT_TIERS
                .iter()
                .map(|(name, kind)| {
                    Ok(TierConfig {
                        name: TierName::new(*name)
                            .map_err(|e| field_error("tiers", e.to_string()))?,
                        kind: *kind,
                        path: data_dir.join("tiers").join(name),
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
        Ok(Self {
            data_dir,
            http,
            object_bytes_max,
            shutdown_grace,
            tiers,
        })
    }

    pub fn index_path(&self) -> PathBuf {
        self.data_dir.join("index")
    }
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
        let field = format!("tiers.{}.path", tier.name);
        let path = normalize(&cwd, &tier.path);
        if data_dir.starts_with(&path) {
            return Err(field_error(
                field,
                format!(
                    "{} contains the node's data dir {}; give the tier a directory of its own",
                    tier.path.display(),
                    data_dir.display()
                ),
            ));
        }
        if path.starts_with(&index) {
            return Err(field_error(
                field,
                format!("{} is inside the node's index", tier.path.display()),
            ));
        }
        for (other, other_path) in &seen {
            if path.starts_with(other_path) || other_path.starts_with(&path) {
                return Err(field_error(
                    field,
                    format!(
                        "{} overlaps the directory of tier `{other}` ({}); tiers need separate directories",
                        tier.path.display(),
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
    match tier.backend.as_deref() {
        None | Some("fs") => {}
        Some("s3") => {
            return Err(field_error(
                field("backend"),
                "s3 endpoints are not supported by this build yet; use \"fs\" (a directory or a dfuse mount)",
            ));
        }
        Some(other) => {
            return Err(field_error(
                field("backend"),
                format!("unknown backend `{other}`; use \"fs\""),
            ));
        }
    }
    let path = tier
        .path
        .unwrap_or_else(|| PathBuf::from("tiers").join(&name));
    if path.as_os_str().is_empty() {
        return Err(field_error(field("path"), "must not be empty"));
    }
    let path = if path.is_absolute() {
        path
    } else {
        data_dir.join(path)
    };
    if let Some(capacity) = &tier.capacity
        && capacity.0 == 0
    {
        return Err(field_error(
            field("capacity"),
            "must be more than 0 (leave it out for no limit)",
        ));
    }
    Ok(TierConfig {
        name: tier_name,
        kind,
        path,
        capacity_bytes: tier.capacity.map(|c| c.0),
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
        assert_eq!(config.tiers[1].path, PathBuf::from("./letl-data/tiers/ssd"));
    }

    #[test]
    fn flags_override_the_file() {
        let text = "[node]\ndata_dir = \"/srv/letl\"\nhttp = \"0.0.0.0:80\"\n";
        let overrides = Overrides {
            data_dir: None,
            http: Some("127.0.0.1:9000".to_string()),
        };
        let config = NodeConfig::from_toml(text, &overrides).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/srv/letl"));
        assert_eq!(config.http.port(), 9000);
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
        assert_eq!(config.tiers[0].path, PathBuf::from("/mnt/pmem0"));
        assert_eq!(config.tiers[0].capacity_bytes, Some(64 << 30));
        assert_eq!(config.tiers[1].path, PathBuf::from("/d/tiers/slow"));
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
    fn sizes_parse() {
        assert_eq!(ByteSize::parse("500MiB").unwrap().0, 500 << 20);
        assert_eq!(ByteSize::parse("2 GB").unwrap().0, 2_000_000_000);
        assert_eq!(ByteSize::parse("17").unwrap().0, 17);
        assert!(ByteSize::parse("GiB").is_err());
        assert!(ByteSize::parse("99999999999TiB").is_err());
    }
}

//! Pipeline specs: the TOML (or JSON) shape users write, and its validation into a plan the
//! engine runs. Every error names the field.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use letl_actors::pipeline::Scaling;
use letl_actors::transform::{Transform, TransformRegistry};
use letl_storage::{KeyPrefix, PrefixUri};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Longest pipeline name.
pub const PIPELINE_NAME_BYTES_MAX: usize = 64;
/// Most transforms one chain may have.
pub const TRANSFORMS_MAX: usize = 16;
/// Most transform threads one job may hold: each transform of each transform worker can hold
/// a blocking thread for the object it is on, and the node's blocking pool (512) also serves
/// every tier read and write.
pub const JOB_TRANSFORM_THREADS_MAX: u32 = 64;
/// Shortest schedule interval.
pub const SCHEDULE_INTERVAL_MIN: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    pub name: String,
    /// Mounted at registration: it can run at once.
    #[serde(default)]
    pub mounted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub extract: ExtractSpec,
    /// The chain, in order; each table is `kind` plus the transform's arguments.
    #[serde(default)]
    pub transform: Vec<Map<String, Value>>,
    pub load: LoadSpec,
    #[serde(default)]
    pub scaling: ScalingSpec,
    /// `every 10m`: run the pipeline (when mounted) at this interval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractSpec {
    /// `ssd:/covid/` (a tier prefix) or `file:///data/covid/` (a directory).
    pub from: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadSpec {
    /// A tier prefix, e.g. `hdd:/covid-md5/`.
    pub to: String,
    /// The output key below `to`: `{key}` (the input's key below `extract.from`, the default),
    /// `{name}` (its last segment), `{stem}` (that without its last `.ext`), `{pipeline}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Settings for every stage, each overridable per stage in `[scaling.extract]`,
/// `[scaling.transform]`, `[scaling.load]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalingSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers_min: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers_max: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extract: Option<StageScalingSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<StageScalingSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<StageScalingSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageScalingSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers_min: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers_max: Option<u32>,
}

/// Where a pipeline reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtractFrom {
    Tier(PrefixUri),
    Dir(PathBuf),
    /// Cache records whose key starts with this (`cache:stage1/`; empty: all of them).
    Cache(String),
    /// Objects under a prefix (empty: the whole bucket) of a bucket on the node's `[source]`
    /// endpoint.
    S3 {
        bucket: String,
        prefix: KeyPrefix,
    },
}

/// `s3://bucket/` or `s3://bucket/prefix/`: a bucket named as S3 names them, and a prefix
/// that is empty or whole key segments ending in `/`.
fn parse_s3_source(from: &str, rest: &str) -> Result<ExtractFrom, String> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && !bucket.starts_with(['.', '-'])
        && !bucket.ends_with(['.', '-']);
    if !bucket_ok {
        return Err(format!(
            "extract.from: `{from}`: `{bucket}` is not a bucket name (3 to 63 lowercase letters, digits, dots and hyphens)"
        ));
    }
    if !prefix.is_empty() && !prefix.ends_with('/') {
        return Err(format!(
            "extract.from: `{from}` must be a prefix ending in `/` (or a whole bucket, `s3://{bucket}/`)"
        ));
    }
    let prefix = KeyPrefix::new(prefix).map_err(|e| format!("extract.from: `{from}`: {e}"))?;
    Ok(ExtractFrom::S3 {
        bucket: bucket.to_string(),
        prefix,
    })
}

/// Where a pipeline's results go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadTo {
    Tier(PrefixUri),
    /// Cache records, keyed by this prefix and the key template.
    Cache(String),
}

/// A cache prefix: empty, or key-like segments ending in `/`.
fn check_cache_prefix(field: &str, prefix: &str) -> Result<String, String> {
    if prefix.is_empty() {
        return Ok(String::new());
    }
    let ok = prefix.ends_with('/')
        && prefix.len() <= 256
        && prefix
            .trim_end_matches('/')
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != ".." && !s.contains('\0'));
    if ok {
        Ok(prefix.to_string())
    } else {
        Err(format!(
            "{field}: `cache:{prefix}`: a cache prefix is `cache:` or `cache:name/` (segments ending in `/`)"
        ))
    }
}

/// A validated spec, ready to run.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub from: ExtractFrom,
    pub chain: Vec<Arc<dyn Transform>>,
    pub to: LoadTo,
    pub key_template: String,
    pub extract: Scaling,
    pub transform: Scaling,
    pub load: Scaling,
    pub schedule: Option<Duration>,
    /// A hash of what decides the outputs: source, chain with arguments, target, key template.
    pub recipe: String,
}

impl Compiled {
    /// What identifies the outputs' recipe: the spec fields that decide them and every
    /// transform's kind and version. Outputs made under another tag are made again.
    pub fn version_tag(&self) -> String {
        let chain: Vec<String> = self
            .chain
            .iter()
            .map(|t| format!("{}@{}", t.kind(), t.version()))
            .collect();
        let recipe = self.recipe.trim_start_matches("blake3:");
        format!("{}[{}]", &recipe[..recipe.len().min(16)], chain.join(","))
    }
}

/// Reads a spec from TOML, or JSON if it starts with `{`.
pub fn parse(text: &str) -> Result<PipelineSpec, String> {
    if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| format!("pipeline spec (JSON): {e}"))
    } else {
        toml::from_str(text).map_err(|e| format!("pipeline spec (TOML): {}", e.to_string().trim()))
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= PIPELINE_NAME_BYTES_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "name: `{name}` must be 1 to {PIPELINE_NAME_BYTES_MAX} of a-z, 0-9, '-', '_', '.', starting with a letter or digit"
        ))
    }
}

fn scaling(
    spec: &ScalingSpec,
    stage: &str,
    own: Option<&StageScalingSpec>,
) -> Result<Scaling, String> {
    let defaults = Scaling::default();
    let pick =
        |own: Option<u32>, shared: Option<u32>, default: u32| own.or(shared).unwrap_or(default);
    let own = own.cloned().unwrap_or_default();
    let scaling = Scaling {
        threshold: pick(own.threshold, spec.threshold, defaults.threshold),
        growth_factor: own
            .growth_factor
            .or(spec.growth_factor)
            .unwrap_or(defaults.growth_factor),
        workers_min: pick(own.workers_min, spec.workers_min, defaults.workers_min),
        workers_max: pick(own.workers_max, spec.workers_max, defaults.workers_max),
    };
    let field = if own == StageScalingSpec::default() {
        "scaling".to_string()
    } else {
        format!("scaling.{stage}")
    };
    scaling.check(&field)?;
    Ok(scaling)
}

/// `every 10m` (or `every 1h30m`).
pub fn parse_schedule(text: &str) -> Result<Duration, String> {
    let interval = text
        .trim()
        .strip_prefix("every")
        .map(str::trim)
        .filter(|rest| !rest.is_empty())
        .ok_or_else(|| {
            format!("schedule: `{text}`: expected `every <interval>`, e.g. `every 10m`")
        })?;
    let interval =
        humantime::parse_duration(interval).map_err(|e| format!("schedule: `{text}`: {e}"))?;
    if interval < SCHEDULE_INTERVAL_MIN {
        return Err(format!(
            "schedule: `{text}`: the interval must be at least {}",
            humantime::format_duration(SCHEDULE_INTERVAL_MIN)
        ));
    }
    Ok(interval)
}

/// Checks a key template: known placeholders, and something that makes keys differ.
fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    let mut varies = false;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("load.key: `{template}`: an unclosed `{{`"))?;
        match &after[..close] {
            "key" | "name" | "stem" => varies = true,
            "pipeline" => {}
            other => {
                return Err(format!(
                    "load.key: `{template}`: unknown placeholder `{{{other}}}` (use {{key}}, {{name}}, {{stem}}, {{pipeline}})"
                ));
            }
        }
        rest = &after[close + 1..];
    }
    if rest.contains('}') {
        return Err(format!("load.key: `{template}`: a `}}` without `{{`"));
    }
    if !varies {
        return Err(format!(
            "load.key: `{template}`: must contain {{key}}, {{name}} or {{stem}}, or every input would write the same object"
        ));
    }
    Ok(())
}

/// Fills a key template for an input whose key below the source prefix is `key`.
pub fn render_key(template: &str, key: &str, pipeline: &str) -> String {
    let name = key.rsplit('/').next().unwrap_or(key);
    let stem = match name.rfind('.') {
        Some(dot) if dot > 0 => &name[..dot],
        _ => name,
    };
    template
        .replace("{key}", key)
        .replace("{name}", name)
        .replace("{stem}", stem)
        .replace("{pipeline}", pipeline)
}

impl PipelineSpec {
    /// Checks everything that can be checked without running: names, sources, targets,
    /// transforms and their arguments, scaling, schedule, and that the output is not inside
    /// the input (a loop).
    pub fn compile(&self, transforms: &TransformRegistry) -> Result<Compiled, String> {
        check_name(&self.name)?;
        let from = if let Some(path) = self.extract.from.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "extract.from: `{}`: a file:// source needs an absolute path (file:///...)",
                    self.extract.from
                ));
            }
            ExtractFrom::Dir(PathBuf::from(path))
        } else if let Some(prefix) = self.extract.from.strip_prefix("cache:") {
            ExtractFrom::Cache(check_cache_prefix("extract.from", prefix)?)
        } else if let Some(rest) = self.extract.from.strip_prefix("s3://") {
            parse_s3_source(&self.extract.from, rest)?
        } else {
            let prefix =
                PrefixUri::parse(&self.extract.from).map_err(|e| format!("extract.from: {e}"))?;
            if !prefix.is_directory() {
                return Err(format!(
                    "extract.from: `{}` must be a prefix ending in `/` (or a whole tier, `{}:/`)",
                    self.extract.from, prefix.tier
                ));
            }
            ExtractFrom::Tier(prefix)
        };
        if self.transform.len() > TRANSFORMS_MAX {
            return Err(format!(
                "transform: at most {TRANSFORMS_MAX} transforms in one chain"
            ));
        }
        let chain = self
            .transform
            .iter()
            .enumerate()
            .map(|(i, table)| {
                transforms
                    .build(&format!("transform[{i}]"), table)
                    .map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let to = if let Some(prefix) = self.load.to.strip_prefix("cache:") {
            LoadTo::Cache(check_cache_prefix("load.to", prefix)?)
        } else if self.load.to.contains("://") {
            return Err(format!(
                "load.to: `{}`: load targets are tier prefixes (hdd:/out/) or cache:",
                self.load.to
            ));
        } else {
            let to = PrefixUri::parse(&self.load.to).map_err(|e| format!("load.to: {e}"))?;
            if !to.is_directory() {
                return Err(format!(
                    "load.to: `{}` must be a prefix ending in `/` (or a whole tier, `{}:/`)",
                    self.load.to, to.tier
                ));
            }
            LoadTo::Tier(to)
        };
        let key_template = self.load.key.clone().unwrap_or_else(|| "{key}".to_string());
        check_template(&key_template)?;
        let overlap = |a: &str, b: &str| a.starts_with(b) || b.starts_with(a);
        let looped = match (&from, &to) {
            (ExtractFrom::Tier(from), LoadTo::Tier(to)) => {
                from.tier == to.tier && overlap(from.prefix.as_str(), to.prefix.as_str())
            }
            (ExtractFrom::Cache(from), LoadTo::Cache(to)) => overlap(from, to),
            _ => false,
        };
        if looped {
            return Err(format!(
                "load.to: {} and extract.from {} overlap: the pipeline would read its own output (a loop)",
                self.load.to, self.extract.from
            ));
        }
        let schedule = self.schedule.as_deref().map(parse_schedule).transpose()?;
        let transform = scaling(&self.scaling, "transform", self.scaling.transform.as_ref())?;
        let threads = transform
            .workers_max
            .saturating_mul(u32::try_from(chain.len().max(1)).unwrap_or(u32::MAX));
        if threads > JOB_TRANSFORM_THREADS_MAX {
            return Err(format!(
                "scaling.transform.workers_max: {} workers times {} transforms is more than {JOB_TRANSFORM_THREADS_MAX} transform threads for one job",
                transform.workers_max,
                chain.len()
            ));
        }
        // What the outputs are made of: a change elsewhere (scaling, schedule, description)
        // does not make them again.
        let recipe = serde_json::json!({
            "from": self.extract.from,
            "transform": self.transform,
            "to": self.load.to,
            "key": key_template,
        });
        Ok(Compiled {
            from,
            chain,
            to,
            key_template,
            extract: scaling(&self.scaling, "extract", self.scaling.extract.as_ref())?,
            transform,
            load: scaling(&self.scaling, "load", self.scaling.load.as_ref())?,
            schedule,
            recipe: letl_storage::ContentHash::of(recipe.to_string().as_bytes()).to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
name = "covid-md5"
mounted = true
[extract]
from = "ssd:/covid/"
[[transform]]
kind = "md5"
[load]
to = "hdd:/covid-md5/"
[scaling]
threshold = 64
growth_factor = 2.0
workers_min = 1
workers_max = 8
"#;

    fn compile(text: &str) -> Result<Compiled, String> {
        parse(text)?.compile(&TransformRegistry::builtin())
    }

    #[test]
    fn the_issue_example_compiles() {
        let compiled = compile(EXAMPLE).unwrap();
        assert_eq!(compiled.chain.len(), 1);
        assert_eq!(compiled.transform.workers_max, 8);
        assert!(compiled.version_tag().ends_with("[md5@1]"));
        // Scaling does not change what outputs are made of; the chain does.
        let scaled = compile(&EXAMPLE.replace("workers_max = 8", "workers_max = 4")).unwrap();
        assert_eq!(scaled.version_tag(), compiled.version_tag());
        let chained = compile(&EXAMPLE.replace("kind = \"md5\"", "kind = \"sha256\"")).unwrap();
        assert_ne!(chained.version_tag(), compiled.version_tag());
        let s3 = compile(&EXAMPLE.replace("ssd:/covid/", "s3://genomes/covid/")).unwrap();
        assert_eq!(
            s3.from,
            ExtractFrom::S3 {
                bucket: "genomes".to_string(),
                prefix: KeyPrefix::new("covid/").unwrap(),
            }
        );
        let whole = compile(&EXAMPLE.replace("ssd:/covid/", "s3://genomes")).unwrap();
        assert!(matches!(whole.from, ExtractFrom::S3 { prefix, .. } if prefix.as_str().is_empty()));
        assert_eq!(render_key("{key}", "a/b.fa", "p"), "a/b.fa");
        assert_eq!(render_key("{stem}.md5", "a/b.fa", "p"), "b.md5");
    }

    #[test]
    fn bad_specs_are_refused_naming_the_field() {
        let with = |from: &str, to: &str| EXAMPLE.replace(from, to);
        let cases = [
            (
                with("threshold = 64", "threshold = 0"),
                "scaling.threshold: must be at least 1",
            ),
            (
                with("growth_factor = 2.0", "growth_factor = 1.0"),
                "scaling.growth_factor: must be more than 1",
            ),
            (
                with("workers_min = 1", "workers_min = 9"),
                "scaling.workers_max: 8 is less than workers_min (9)",
            ),
            (
                with("kind = \"md5\"", "kind = \"md6\""),
                "transform[0].kind: unknown transform `md6`",
            ),
            (
                with("kind = \"md5\"", "kind = \"md5\"\nlevel = 3"),
                "transform[0].level: unknown argument",
            ),
            (
                with("hdd:/covid-md5/", "ssd:/covid/md5/"),
                "overlap: the pipeline would read its own output",
            ),
            (
                with("hdd:/covid-md5/", "hdd:/file"),
                "load.to: `hdd:/file` must be a prefix",
            ),
            (
                with("name = \"covid-md5\"", "name = \"Covid MD5\""),
                "name: `Covid MD5` must be",
            ),
            (
                with("[load]", "[load]\nkey = \"fixed\""),
                "load.key: `fixed`: must contain {key}",
            ),
            (
                with("[load]", "[load]\nkey = \"{nope}\""),
                "unknown placeholder `{nope}`",
            ),
            (
                with("mounted = true", "mounted = true\nschedule = \"daily\""),
                "schedule: `daily`",
            ),
            (
                with("mounted = true", "mounted = true\ncolour = 1"),
                "unknown field `colour`",
            ),
            (
                with("from = \"ssd:/covid/\"", "from = \"s3://b/p/\""),
                "extract.from: `s3://b/p/`: `b` is not a bucket name",
            ),
            (
                with("from = \"ssd:/covid/\"", "from = \"s3://bucket/p\""),
                "extract.from: `s3://bucket/p` must be a prefix ending in `/`",
            ),
            (
                with("from = \"ssd:/covid/\"", "from = \"cache:a\""),
                "extract.from: `cache:a`",
            ),
            (
                with("from = \"ssd:/covid/\"", "from = \"cache:a/\"")
                    .replace("hdd:/covid-md5/", "cache:a/b/"),
                "overlap",
            ),
        ];
        for (text, expected) in cases {
            let err = compile(&text).unwrap_err();
            assert!(err.contains(expected), "{expected}: {err}");
        }
        let per_stage = with(
            "workers_max = 8",
            "workers_max = 8\n[scaling.transform]\nthreshold = 0",
        );
        assert!(
            compile(&per_stage)
                .unwrap_err()
                .starts_with("scaling.transform.threshold")
        );
        assert_eq!(
            compile(&with(
                "mounted = true",
                "mounted = true\nschedule = \"every 10m\""
            ))
            .unwrap()
            .schedule,
            Some(Duration::from_secs(600))
        );
    }
}

#[cfg(test)]
mod examples {
    use super::*;

    #[test]
    fn the_example_files_in_the_repo_compile() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../pipelines");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let spec = parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            spec.compile(&TransformRegistry::builtin())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
        assert!(seen >= 2);
    }
}

//! The built-in CPU transforms: identity, digests, compression, line filters, FASTA statistics.

use std::io::{self, Write};
use std::sync::Arc;

use regex::bytes::Regex;
use sha2::Digest;

use super::{
    Args, BlockState, BlockTransform, Output, SpecError, Transform, TransformError,
    TransformRegistry, hex, md5::Md5,
};
use letl_storage::ByteStream;

/// Longest line the line filter and the FASTA parser hold while looking for its end.
pub const LINE_BYTES_MAX: usize = 64 << 20;
/// zstd levels the `zstd` transform takes.
const ZSTD_LEVELS: std::ops::RangeInclusive<i64> = 1..=22;
/// gzip levels the `gzip` transform takes.
const GZIP_LEVELS: std::ops::RangeInclusive<i64> = 0..=9;

pub(super) fn register_all(registry: &mut TransformRegistry) {
    registry.register("identity", |_| Ok(Arc::new(Identity)));
    registry.register("md5", |_| Ok(Arc::new(DigestTransform::<Md5>::new("md5"))));
    registry.register("sha256", |_| {
        Ok(Arc::new(DigestTransform::<sha2::Sha256>::new("sha256")))
    });
    registry.register("gzip", |args| {
        let level = level(args, "level", GZIP_LEVELS, 6)?;
        Ok(Arc::new(Gzip { level }))
    });
    registry.register("gunzip", |_| Ok(Arc::new(Gunzip)));
    registry.register("zstd", |args| {
        let level = level(args, "level", ZSTD_LEVELS, 3)?;
        Ok(Arc::new(Zstd { level }))
    });
    registry.register("unzstd", |_| Ok(Arc::new(Unzstd)));
    registry.register("lines", |args| Ok(Arc::new(LineFilter::from_args(args)?)));
    registry.register("fasta-stats", |_| Ok(Arc::new(FastaStats)));
}

fn level(
    args: &mut Args,
    name: &str,
    range: std::ops::RangeInclusive<i64>,
    default: i64,
) -> Result<u32, SpecError> {
    let level = args.integer(name)?.unwrap_or(default);
    if !range.contains(&level) {
        return Err(args.error(
            name,
            format!(
                "{level} is out of range {}..={}",
                range.start(),
                range.end()
            ),
        ));
    }
    u32::try_from(level).map_err(|e| args.error(name, e))
}

/// Passes the bytes through unchanged.
#[derive(Debug)]
struct Identity;

#[async_trait::async_trait]
impl Transform for Identity {
    fn kind(&self) -> &str {
        "identity"
    }
    fn version(&self) -> u32 {
        1
    }
    async fn apply(&self, input: ByteStream) -> Result<ByteStream, TransformError> {
        Ok(input)
    }
}

/// A digest of the whole object, as lowercase hex (what `md5sum`/`sha256sum` print first).
struct DigestTransform<D> {
    kind: &'static str,
    _digest: std::marker::PhantomData<fn() -> D>,
}

impl<D> std::fmt::Debug for DigestTransform<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestTransform")
            .field("kind", &self.kind)
            .finish()
    }
}

impl<D> DigestTransform<D> {
    fn new(kind: &'static str) -> Self {
        Self {
            kind,
            _digest: std::marker::PhantomData,
        }
    }
}

/// A digest a [`DigestTransform`] computes: letl's own MD5, or a `digest` crate's hash.
trait ObjectDigest: Send + 'static {
    fn new() -> Self;
    fn update(&mut self, bytes: &[u8]);
    /// The digest as lowercase hex.
    fn finish_hex(self) -> String;
}

impl ObjectDigest for Md5 {
    fn new() -> Self {
        Md5::new()
    }
    fn update(&mut self, bytes: &[u8]) {
        Md5::update(self, bytes);
    }
    fn finish_hex(self) -> String {
        hex(&self.finalize())
    }
}

impl ObjectDigest for sha2::Sha256 {
    fn new() -> Self {
        Digest::new()
    }
    fn update(&mut self, bytes: &[u8]) {
        Digest::update(self, bytes);
    }
    fn finish_hex(self) -> String {
        hex(&self.finalize())
    }
}

struct DigestState<D> {
    digest: D,
    out: Output,
}

impl<D: ObjectDigest> BlockState for DigestState<D> {
    fn update(&mut self, block: &[u8]) -> io::Result<()> {
        self.digest.update(block);
        Ok(())
    }
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        let digest = std::mem::replace(&mut self.digest, D::new()).finish_hex();
        self.out.extend_from_slice(digest.as_bytes())
    }
}

impl<D: ObjectDigest> BlockTransform for DigestTransform<D> {
    fn kind(&self) -> &str {
        self.kind
    }
    fn version(&self) -> u32 {
        1
    }
    fn start(&self, out: Output) -> Box<dyn BlockState> {
        Box::new(DigestState {
            digest: D::new(),
            out,
        })
    }
}

/// A `Write` codec (an encoder or decoder writing straight into the [`Output`]) as a block
/// state: its output goes on in bounded blocks as it comes, however much one input block makes.
struct CodecState<W: Write + Send> {
    codec: W,
    finish: fn(W) -> io::Result<Output>,
}

impl<W: Write + Send> BlockState for CodecState<W> {
    fn update(&mut self, block: &[u8]) -> io::Result<()> {
        self.codec.write_all(block)
    }
    fn finish(self: Box<Self>) -> io::Result<()> {
        (self.finish)(self.codec)?.flush()
    }
}

#[derive(Debug)]
struct Gzip {
    level: u32,
}

impl BlockTransform for Gzip {
    fn kind(&self) -> &str {
        "gzip"
    }
    fn version(&self) -> u32 {
        1
    }
    fn start(&self, out: Output) -> Box<dyn BlockState> {
        Box::new(CodecState {
            codec: flate2::write::GzEncoder::new(out, flate2::Compression::new(self.level)),
            finish: flate2::write::GzEncoder::finish,
        })
    }
}

#[derive(Debug)]
struct Gunzip;

impl BlockTransform for Gunzip {
    fn kind(&self) -> &str {
        "gunzip"
    }
    fn version(&self) -> u32 {
        1
    }
    fn start(&self, out: Output) -> Box<dyn BlockState> {
        Box::new(CodecState {
            codec: flate2::write::MultiGzDecoder::new(out),
            finish: flate2::write::MultiGzDecoder::finish,
        })
    }
}

#[derive(Debug)]
struct Zstd {
    level: u32,
}

/// A zstd encoder or decoder that could not be created: every block fails with the reason.
struct Broken(String);

impl BlockState for Broken {
    fn update(&mut self, _block: &[u8]) -> io::Result<()> {
        Err(io::Error::other(self.0.clone()))
    }
    fn finish(self: Box<Self>) -> io::Result<()> {
        Err(io::Error::other(self.0))
    }
}

impl BlockTransform for Zstd {
    fn kind(&self) -> &str {
        "zstd"
    }
    fn version(&self) -> u32 {
        1
    }
    fn start(&self, out: Output) -> Box<dyn BlockState> {
        let level = i32::try_from(self.level).unwrap_or(3);
        match zstd::stream::write::Encoder::new(out, level) {
            Ok(encoder) => Box::new(CodecState {
                codec: encoder,
                finish: zstd::stream::write::Encoder::finish,
            }),
            Err(e) => Box::new(Broken(format!("zstd encoder: {e}"))),
        }
    }
}

#[derive(Debug)]
struct Unzstd;

/// Finishing also checks the input did not stop in the middle of a frame.
fn finish_decoder(decoder: zstd::stream::write::Decoder<'static, Output>) -> io::Result<Output> {
    decoder.finish()
}

impl BlockTransform for Unzstd {
    fn kind(&self) -> &str {
        "unzstd"
    }
    fn version(&self) -> u32 {
        1
    }
    fn start(&self, out: Output) -> Box<dyn BlockState> {
        match zstd::stream::write::Decoder::new(out) {
            Ok(decoder) => Box::new(CodecState {
                codec: decoder,
                finish: finish_decoder,
            }),
            Err(e) => Box::new(Broken(format!("zstd decoder: {e}"))),
        }
    }
}

/// Splits blocks into lines (each with its `\n`, the last one maybe without), holding at most
/// [`LINE_BYTES_MAX`] of an unfinished line.
#[derive(Default)]
struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    fn feed(
        &mut self,
        block: &[u8],
        mut each: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut rest = block;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let (line, after) = rest.split_at(end + 1);
            if self.partial.is_empty() {
                each(line)?;
            } else {
                self.partial.extend_from_slice(line);
                each(&std::mem::take(&mut self.partial))?;
            }
            rest = after;
        }
        if self.partial.len() + rest.len() > LINE_BYTES_MAX {
            return Err(io::Error::other(format!(
                "a line longer than {LINE_BYTES_MAX} bytes"
            )));
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    fn end(self, mut each: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        if self.partial.is_empty() {
            Ok(())
        } else {
            each(&self.partial)
        }
    }
}

/// Keeps (or drops) the lines containing a string or matching a regex.
#[derive(Debug)]
struct LineFilter {
    matcher: LineMatcher,
    keep: bool,
}

#[derive(Debug, Clone)]
enum LineMatcher {
    Contains(Vec<u8>),
    Regex(Regex),
}

impl LineMatcher {
    fn matches(&self, line: &[u8]) -> bool {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        match self {
            Self::Contains(needle) => line.windows(needle.len()).any(|w| w == needle.as_slice()),
            Self::Regex(regex) => regex.is_match(line),
        }
    }
}

impl LineFilter {
    fn from_args(args: &mut Args) -> Result<Self, SpecError> {
        let contains = args.string("contains")?;
        let regex = args.string("regex")?;
        let action = args.string("action")?.unwrap_or_else(|| "keep".to_string());
        let keep = match action.as_str() {
            "keep" => true,
            "drop" => false,
            other => return Err(args.error("action", format!("`{other}`: expected keep or drop"))),
        };
        let matcher = match (contains, regex) {
            (Some(needle), None) if !needle.is_empty() => {
                LineMatcher::Contains(needle.into_bytes())
            }
            (Some(_), None) => return Err(args.error("contains", "must not be empty")),
            (None, Some(pattern)) => {
                LineMatcher::Regex(Regex::new(&pattern).map_err(|e| args.error("regex", e))?)
            }
            (Some(_), Some(_)) => {
                return Err(args.error("regex", "give `contains` or `regex`, not both"));
            }
            (None, None) => return Err(args.error("contains", "give `contains` or `regex`")),
        };
        Ok(Self { matcher, keep })
    }
}

struct LineFilterState {
    lines: Lines,
    matcher: LineMatcher,
    keep: bool,
    out: Output,
}

impl BlockState for LineFilterState {
    fn update(&mut self, block: &[u8]) -> io::Result<()> {
        let (matcher, keep, out) = (&self.matcher, self.keep, &mut self.out);
        self.lines.feed(block, |line| {
            if matcher.matches(line) == keep {
                out.extend_from_slice(line)?;
            }
            Ok(())
        })
    }
    fn finish(self: Box<Self>) -> io::Result<()> {
        let Self {
            lines,
            matcher,
            keep,
            mut out,
        } = *self;
        lines.end(|line| {
            if matcher.matches(line) == keep {
                out.extend_from_slice(line)?;
            }
            Ok(())
        })
    }
}

impl BlockTransform for LineFilter {
    fn kind(&self) -> &str {
        "lines"
    }
    fn version(&self) -> u32 {
        1
    }
    fn start(&self, out: Output) -> Box<dyn BlockState> {
        Box::new(LineFilterState {
            lines: Lines::default(),
            matcher: self.matcher.clone(),
            keep: self.keep,
            out,
        })
    }
}

/// Per FASTA record: `{"id", "length", "gc"}` as one JSON line. `gc` is the share of G and C
/// among the record's A, C, G, T (case-insensitive); other letters (N, ...) count in `length`
/// only.
#[derive(Debug)]
struct FastaStats;

struct FastaState {
    lines: Lines,
    record: Option<Record>,
    out: Output,
}

#[derive(Default)]
struct Record {
    id: String,
    length: u64,
    gc: u64,
    acgt: u64,
}

impl Record {
    fn write(&self, out: &mut Output) -> io::Result<()> {
        let gc = if self.acgt == 0 {
            0.0
        } else {
            self.gc as f64 / self.acgt as f64
        };
        let line = serde_json::json!({"id": self.id, "length": self.length, "gc": (gc * 1e6).round() / 1e6});
        out.extend_from_slice(format!("{line}\n").as_bytes())
    }
}

impl FastaState {
    fn line(record: &mut Option<Record>, line: &[u8], out: &mut Output) -> io::Result<()> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(header) = line.strip_prefix(b">") {
            if let Some(done) = record.take() {
                done.write(out)?;
            }
            let id = header
                .split(|b| b.is_ascii_whitespace())
                .next()
                .unwrap_or_default();
            *record = Some(Record {
                id: String::from_utf8_lossy(id).into_owned(),
                ..Record::default()
            });
            return Ok(());
        }
        if line.is_empty() || line.starts_with(b";") {
            return Ok(());
        }
        let Some(current) = record.as_mut() else {
            return Err(io::Error::other(
                "not FASTA: sequence data before the first `>` header",
            ));
        };
        for &b in line {
            match b.to_ascii_uppercase() {
                b'G' | b'C' => {
                    current.gc += 1;
                    current.acgt += 1;
                }
                b'A' | b'T' => current.acgt += 1,
                _ => {}
            }
        }
        current.length += line.len() as u64;
        Ok(())
    }
}

impl BlockState for FastaState {
    fn update(&mut self, block: &[u8]) -> io::Result<()> {
        let (record, out) = (&mut self.record, &mut self.out);
        self.lines.feed(block, |line| Self::line(record, line, out))
    }
    fn finish(self: Box<Self>) -> io::Result<()> {
        let Self {
            lines,
            mut record,
            mut out,
        } = *self;
        lines.end(|line| Self::line(&mut record, line, &mut out))?;
        if let Some(done) = record {
            done.write(&mut out)?;
        }
        Ok(())
    }
}

impl BlockTransform for FastaStats {
    fn kind(&self) -> &str {
        "fasta-stats"
    }
    fn version(&self) -> u32 {
        1
    }
    fn start(&self, out: Output) -> Box<dyn BlockState> {
        Box::new(FastaState {
            lines: Lines::default(),
            record: None,
            out,
        })
    }
}

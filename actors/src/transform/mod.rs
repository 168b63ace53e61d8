//! Transforms: what a pipeline does to each object's bytes, and what `letl get --transform`
//! applies on read.
//!
//! A [`Transform`] turns one object's byte stream into another, streaming, never holding an
//! object whole. The in-process kinds are in [`TransformRegistry::builtin`] (the node adds
//! `exec` and `http`, which run commands and speak HTTP); a program that
//! embeds letl registers its own with [`TransformRegistry::register`] (see
//! `actors/examples/custom_transform.rs`). A transform is built from its spec (`kind` plus
//! arguments) once, when a pipeline is registered, so bad arguments are refused then, naming
//! the argument.
//!
//! CPU-bound transforms implement the simpler [`BlockTransform`] (feed blocks, then finish) and
//! run on a thread that reads its input itself, and sends its output through a bounded queue:
//! a pipeline's transform worker's [`Lane`], or else a blocking thread per object. An input
//! that is a local file is read there directly, as `md5sum` reads it; a stream is pulled
//! there (its own bounded queue is the read-ahead).

mod builtin;
mod lane;
mod md5;

pub use lane::{LANE_PASSES_QUEUED, Lane};

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use letl_storage::{ByteStream, ObjectBody};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

/// Output blocks queued from a blocking transform's thread.
const BLOCK_OUTPUT_IN_FLIGHT_MAX: usize = 4;

/// The read size of a blocking transform that reads a local file itself: small enough that a
/// block is still in the core's cache when the transform reads it.
const FILE_READ_BYTES: usize = 128 << 10;

/// One step of a pipeline's chain, built from its spec.
#[async_trait::async_trait]
pub trait Transform: Send + Sync + fmt::Debug + 'static {
    /// The kind, as specs name it (`md5`, `zstd`, ...).
    fn kind(&self) -> &str;

    /// Changes whenever the output for the same input and arguments may change; part of a
    /// pipeline's version, so outputs made by an older version are made again.
    fn version(&self) -> u32;

    /// The output for one object. Errors found while streaming (a failing command, a server
    /// that hangs up) arrive as an error item of the returned stream; the consumer must not
    /// publish a stream that ended in an error.
    async fn apply(&self, input: ByteStream) -> Result<ByteStream, TransformError>;

    /// The same, for an object as a get hands it over. A transform that can read a local file
    /// itself overrides this (a [`BlockTransform`] does, saving a reader thread and a queue);
    /// by default the body is read as a stream.
    async fn apply_body(&self, input: ObjectBody) -> Result<ByteStream, TransformError> {
        self.apply(input.into_stream()).await
    }

    /// The same, in a pipeline's transform worker, for an object not opened yet: a transform
    /// that runs its pass on a thread may queue it on the worker's [`Lane`], where the object
    /// is opened when the pass starts (an open error then ends the output in that error). By
    /// default, the object is opened here and given to [`Transform::apply_body`].
    async fn apply_opening_on(
        &self,
        opening: Opening,
        lane: &mut Lane,
    ) -> Result<ByteStream, TransformError> {
        let _ = lane;
        let body = opening.await.map_err(TransformError)?;
        self.apply_body(body).await
    }

    /// Whether the output is produced whether or not anyone reads it yet (by a thread or task
    /// of the transform's own), bounded by its own queue: a pipeline's transform worker whose
    /// chain's first step queued its pass on the lane can then hand the output to the load
    /// as it is when all the later steps are like this. By default, no (the output stream
    /// does the transform's work as it is read).
    fn self_driven(&self) -> bool {
        false
    }
}

/// An object to be opened: a pipeline's transform worker gives it to its chain unopened (see
/// [`Transform::apply_opening_on`]).
pub type Opening = BoxFuture<'static, Result<ObjectBody, String>>;

/// The opening of an object already open.
pub fn opened(body: ObjectBody) -> Opening {
    Box::pin(std::future::ready(Ok(body)))
}

/// A transform that failed on one object: the object goes to the job's dead-letter list with
/// this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TransformError(pub String);

/// A bad transform spec: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct SpecError {
    pub field: String,
    pub reason: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A transform's arguments, as the spec gave them (TOML and JSON both map to JSON values).
/// Each getter marks its argument used; [`Args::finish`] refuses the ones nobody asked for.
#[derive(Debug)]
pub struct Args {
    /// `transform[2]`, for error messages.
    field: String,
    kind: String,
    values: Map<String, Value>,
    used: Vec<String>,
}

impl Args {
    pub fn new(field: impl Into<String>, kind: &str, values: Map<String, Value>) -> Self {
        Self {
            field: field.into(),
            kind: kind.to_string(),
            values,
            used: Vec::new(),
        }
    }

    fn take(&mut self, name: &str) -> Option<&Value> {
        self.used.push(name.to_string());
        self.values.get(name)
    }

    pub fn error(&self, name: &str, reason: impl fmt::Display) -> SpecError {
        SpecError::new(format!("{}.{name}", self.field), reason.to_string())
    }

    pub fn string(&mut self, name: &str) -> Result<Option<String>, SpecError> {
        match self.take(name).cloned() {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.error(name, format!("expected a string, got {other}"))),
        }
    }

    pub fn integer(&mut self, name: &str) -> Result<Option<i64>, SpecError> {
        match self.take(name).cloned() {
            None => Ok(None),
            Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
            Some(other) => Err(self.error(name, format!("expected an integer, got {other}"))),
        }
    }

    pub fn boolean(&mut self, name: &str) -> Result<Option<bool>, SpecError> {
        match self.take(name).cloned() {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(b)),
            Some(other) => Err(self.error(name, format!("expected true or false, got {other}"))),
        }
    }

    /// A string or a list of strings (a command line).
    pub fn strings(&mut self, name: &str) -> Result<Option<Vec<String>>, SpecError> {
        match self.take(name).cloned() {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(vec![s])),
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(self.error(name, format!("expected strings, got {other}"))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(other) => Err(self.error(
                name,
                format!("expected a string or a list of strings, got {other}"),
            )),
        }
    }

    /// A duration such as `"30s"` or `"2m"`.
    pub fn duration(&mut self, name: &str) -> Result<Option<Duration>, SpecError> {
        match self.string(name)? {
            None => Ok(None),
            Some(text) => humantime::parse_duration(&text).map(Some).map_err(|e| {
                self.error(
                    name,
                    format!("`{text}` is not a duration like 30s or 2m: {e}"),
                )
            }),
        }
    }

    /// Refuses arguments that no getter asked for.
    pub fn finish(self) -> Result<(), SpecError> {
        let unknown: Vec<&String> = self
            .values
            .keys()
            .filter(|k| !self.used.contains(k))
            .collect();
        match unknown.first() {
            None => Ok(()),
            Some(name) => {
                let takes = if self.used.is_empty() {
                    "no arguments".to_string()
                } else {
                    self.used.join(", ")
                };
                Err(SpecError::new(
                    format!("{}.{name}", self.field),
                    format!(
                        "unknown argument for transform `{}` (it takes: {takes})",
                        self.kind
                    ),
                ))
            }
        }
    }
}

/// Builds one kind of transform from its arguments.
pub type TransformBuilder =
    Arc<dyn Fn(&mut Args) -> Result<Arc<dyn Transform>, SpecError> + Send + Sync>;

/// The transform kinds a node knows, by name.
#[derive(Clone)]
pub struct TransformRegistry {
    builders: BTreeMap<String, TransformBuilder>,
}

impl fmt::Debug for TransformRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransformRegistry")
            .field("kinds", &self.builders.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TransformRegistry {
    /// No kinds at all.
    pub fn empty() -> Self {
        Self {
            builders: BTreeMap::new(),
        }
    }

    /// The built-in kinds that compute in-process: identity, md5, sha256, gzip, gunzip, zstd,
    /// unzstd, lines, fasta-stats. The node adds `exec` and `http`, which reach outside.
    pub fn builtin() -> Self {
        let mut registry = Self::empty();
        builtin::register_all(&mut registry);
        registry
    }

    /// Adds (or replaces) a kind.
    pub fn register(
        &mut self,
        kind: &str,
        builder: impl Fn(&mut Args) -> Result<Arc<dyn Transform>, SpecError> + Send + Sync + 'static,
    ) {
        self.builders.insert(kind.to_string(), Arc::new(builder));
    }

    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.builders.keys().map(String::as_str)
    }

    /// Builds the transform a spec table describes: its `kind`, and its arguments beside it.
    /// `field` names the table in errors (`transform[0]`).
    pub fn build(
        &self,
        field: &str,
        spec: &Map<String, Value>,
    ) -> Result<Arc<dyn Transform>, SpecError> {
        let mut values = spec.clone();
        let kind = match values.remove("kind") {
            Some(Value::String(kind)) => kind,
            Some(other) => {
                return Err(SpecError::new(
                    format!("{field}.kind"),
                    format!("expected a string, got {other}"),
                ));
            }
            None => {
                return Err(SpecError::new(
                    format!("{field}.kind"),
                    format!(
                        "missing; one of: {}",
                        self.kinds().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        };
        let Some(builder) = self.builders.get(&kind) else {
            return Err(SpecError::new(
                format!("{field}.kind"),
                format!(
                    "unknown transform `{kind}`; one of: {}",
                    self.kinds().collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        let mut args = Args::new(field, &kind, values);
        let transform = builder(&mut args)?;
        args.finish()?;
        Ok(transform)
    }

    /// A transform named only by kind, with default arguments (`letl get --transform md5`).
    pub fn build_kind(&self, kind: &str) -> Result<Arc<dyn Transform>, SpecError> {
        let mut spec = Map::new();
        spec.insert("kind".to_string(), Value::String(kind.to_string()));
        self.build("transform", &spec)
    }
}

/// Applies a chain of transforms, each to the previous one's output; the first one takes the
/// body as it is (a local file is read by the transform itself where it can).
pub async fn apply_chain(
    chain: &[Arc<dyn Transform>],
    input: impl Into<ObjectBody>,
) -> Result<ByteStream, TransformError> {
    let input = input.into();
    let Some((first, rest)) = chain.split_first() else {
        return Ok(input.into_stream());
    };
    let output = first.apply_body(input).await?;
    apply_rest(rest, output).await
}

/// The same in a pipeline's transform worker, for an object not opened yet: the first
/// transform may queue its pass on the worker's lane, which opens the object.
pub async fn apply_chain_on(
    chain: &[Arc<dyn Transform>],
    opening: Opening,
    lane: &mut Lane,
) -> Result<ByteStream, TransformError> {
    let Some((first, rest)) = chain.split_first() else {
        let body = opening.await.map_err(TransformError)?;
        return Ok(body.into_stream());
    };
    let output = first.apply_opening_on(opening, lane).await?;
    apply_rest(rest, output).await
}

async fn apply_rest(
    rest: &[Arc<dyn Transform>],
    mut output: ByteStream,
) -> Result<ByteStream, TransformError> {
    for transform in rest {
        output = transform.apply(output).await?;
    }
    Ok(output)
}

/// A CPU-bound transform, fed block after block on a thread of its own (a pipeline worker's
/// lane, or a blocking thread).
pub trait BlockTransform: Send + Sync + fmt::Debug + 'static {
    fn kind(&self) -> &str;
    fn version(&self) -> u32;
    /// State for one object, writing its result to `out`.
    fn start(&self, out: Output) -> Box<dyn BlockState>;
}

/// One object's pass through a [`BlockTransform`].
pub trait BlockState: Send {
    /// Takes the next input block (writing any output to its [`Output`]).
    fn update(&mut self, block: &[u8]) -> io::Result<()>;
    /// The input ended: writes the rest of the output. The [`Output`] is flushed when dropped.
    fn finish(self: Box<Self>) -> io::Result<()>;
}

/// Bytes an [`Output`] gathers before it sends them on as one block.
pub const OUTPUT_BLOCK_BYTES: usize = 1 << 20;

/// Where a [`BlockState`] writes its result: sent on in blocks of [`OUTPUT_BLOCK_BYTES`]
/// through a bounded queue, so a result (a decompressed bomb included) is never held whole.
/// Writing fails with `BrokenPipe` once the consumer is gone.
#[derive(Debug)]
pub struct Output {
    tx: mpsc::Sender<Produced>,
    buf: Vec<u8>,
}

impl Output {
    /// Sends what is gathered (blocks while the queue is full).
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let block = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Produced::Block(block))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the consumer went away"))
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) -> io::Result<()> {
        io::Write::write_all(self, bytes)
    }
}

impl io::Write for Output {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let room = OUTPUT_BLOCK_BYTES - self.buf.len();
        let n = bytes.len().min(room);
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() >= OUTPUT_BLOCK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        let _ = self.send();
    }
}

/// What a blocking transform's thread sends: output, or how it ended.
#[derive(Debug)]
enum Produced {
    Block(Bytes),
    Done,
    Failed(io::Error),
}

#[async_trait::async_trait]
impl<T: BlockTransform> Transform for T {
    fn kind(&self) -> &str {
        BlockTransform::kind(self)
    }

    fn version(&self) -> u32 {
        BlockTransform::version(self)
    }

    async fn apply(&self, input: ByteStream) -> Result<ByteStream, TransformError> {
        Transform::apply_body(self, ObjectBody::Stream(input)).await
    }

    async fn apply_body(&self, input: ObjectBody) -> Result<ByteStream, TransformError> {
        let (pass, output) = block_pass(self, opened(input));
        tokio::task::spawn_blocking(pass);
        Ok(output)
    }

    async fn apply_opening_on(
        &self,
        opening: Opening,
        lane: &mut Lane,
    ) -> Result<ByteStream, TransformError> {
        let (pass, output) = block_pass(self, opening);
        lane.run(pass).await;
        Ok(output)
    }

    fn self_driven(&self) -> bool {
        true
    }
}

/// One object's pass through a block transform, to run on a thread, and its output. The
/// thread opens the object and reads it itself: no reader thread for a file, no task and
/// queue between a stream and it (sessions 11, 13 and 14, BENCHMARKS.md).
fn block_pass<T: BlockTransform>(transform: &T, opening: Opening) -> (lane::Pass, ByteStream) {
    let (out_tx, out_rx) = mpsc::channel::<Produced>(BLOCK_OUTPUT_IN_FLIGHT_MAX);
    let runtime = tokio::runtime::Handle::current();
    let mut state = transform.start(Output {
        tx: out_tx.clone(),
        buf: Vec::new(),
    });
    let kind = BlockTransform::kind(transform).to_string();
    let pass_kind = kind.clone();
    let pass: lane::Pass = Box::new(move || {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let input = runtime.block_on(opening).map_err(io::Error::other)?;
            match input {
                ObjectBody::File(mut file) => {
                    let mut block = vec![0; FILE_READ_BYTES];
                    loop {
                        match io::Read::read(&mut file, &mut block) {
                            Ok(0) => break,
                            Ok(n) => state.update(&block[..n])?,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                ObjectBody::Stream(mut stream) => {
                    while let Some(block) = runtime.block_on(stream.next()) {
                        state.update(&block?)?;
                    }
                }
            }
            // Finishing drops the state's output, which sends what it still holds.
            state.finish()
        }));
        let last = match outcome {
            Ok(Ok(())) => Produced::Done,
            // The consumer went away: nobody to tell.
            Ok(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe && out_tx.is_closed() => {
                return;
            }
            Ok(Err(e)) => Produced::Failed(e),
            Err(panic) => Produced::Failed(io::Error::other(format!(
                "transform `{pass_kind}` panicked: {}",
                panic_message(panic.as_ref())
            ))),
        };
        let _ = out_tx.blocking_send(last);
    });
    let output: ByteStream = Box::pin(futures_util::stream::unfold(
        (out_rx, kind, false),
        |(mut rx, kind, ended)| async move {
            if ended {
                return None;
            }
            match rx.recv().await {
                Some(Produced::Block(block)) => Some((Ok(block), (rx, kind, false))),
                Some(Produced::Done) => None,
                Some(Produced::Failed(e)) => Some((Err(e), (rx, kind, true))),
                // The thread vanished without saying how it ended: never a clean end.
                None => Some((
                    Err(io::Error::other(format!(
                        "transform `{kind}` stopped without finishing"
                    ))),
                    (rx, kind, true),
                )),
            }
        },
    ));
    (pass, output)
}

/// The text of a panic payload.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Lowercase hex, as `md5sum` prints digests.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

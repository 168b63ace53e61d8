//! A program that embeds letl's transforms and adds its own kind: `count-lines`, which turns
//! an object into the number of lines it has, then runs it (after the built-in `gunzip`) over a
//! gzip-compressed text.
//!
//!     cargo run -p letl-actors --example custom_transform
//!
//! A CPU-bound transform implements `BlockTransform` (fed block after block on a blocking
//! thread); one that waits on something else (a service, a process) implements `Transform`.
//! Registered kinds are built from spec tables, so a pipeline spec names it like any other:
//! `[[transform]] kind = "count-lines"`.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use letl_actors::transform::{BlockState, BlockTransform, Output, TransformRegistry, apply_chain};
use letl_storage::stream_of;

#[derive(Debug)]
struct CountLines;

struct Counting {
    lines: u64,
    /// Where the result goes, in bounded blocks.
    out: Output,
}

impl BlockState for Counting {
    fn update(&mut self, block: &[u8]) -> io::Result<()> {
        self.lines += block.iter().filter(|&&b| b == b'\n').count() as u64;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> io::Result<()> {
        let text = format!("{}\n", self.lines);
        self.out.extend_from_slice(text.as_bytes())
    }
}

impl BlockTransform for CountLines {
    fn kind(&self) -> &str {
        "count-lines"
    }

    /// Bump this when the output for the same input changes: outputs made by an older
    /// version are made again by incremental runs.
    fn version(&self) -> u32 {
        1
    }

    fn start(&self, out: Output) -> Box<dyn BlockState> {
        Box::new(Counting { lines: 0, out })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut registry = TransformRegistry::builtin();
    // The builder sees the spec's arguments; `count-lines` takes none, so any is refused.
    registry.register("count-lines", |_args| Ok(Arc::new(CountLines)));

    let chain = vec![
        registry.build_kind("gzip")?,
        registry.build_kind("gunzip")?,
        registry.build_kind("count-lines")?,
    ];
    let text: String = (0..1000).map(|i| format!("line {i}\n")).collect();
    let mut output = apply_chain(&chain, stream_of(Bytes::from(text), 4096)).await?;
    let mut result = Vec::new();
    while let Some(block) = output.next().await {
        result.extend_from_slice(&block?);
    }
    print!("{}", String::from_utf8(result)?);
    Ok(())
}

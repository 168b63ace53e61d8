//! The in-process transforms: known answers, chunk boundaries anywhere, round trips, and bad
//! specs refused naming the field.

#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use letl_actors::transform::{
    BlockState, BlockTransform, OUTPUT_BLOCK_BYTES, Output, Transform, TransformRegistry,
    apply_chain,
};
use letl_storage::{ObjectBody, stream_of};
use serde_json::{Map, Value, json};

fn spec(value: Value) -> Map<String, Value> {
    value.as_object().unwrap().clone()
}

fn build(value: Value) -> Arc<dyn Transform> {
    TransformRegistry::builtin()
        .build("transform[0]", &spec(value))
        .unwrap()
}

async fn run(transform: &Arc<dyn Transform>, input: &[u8], chunk: usize) -> io::Result<Vec<u8>> {
    let mut out = transform
        .apply(stream_of(Bytes::copy_from_slice(input), chunk))
        .await
        .map_err(io::Error::other)?;
    let mut bytes = Vec::new();
    while let Some(block) = out.next().await {
        bytes.extend_from_slice(&block?);
    }
    Ok(bytes)
}

/// The same output whatever the input's chunking.
async fn run_all_chunkings(transform: &Arc<dyn Transform>, input: &[u8]) -> Vec<u8> {
    let first = run(transform, input, input.len().max(1)).await.unwrap();
    for chunk in [1, 2, 3, 7, 64, 1000] {
        assert_eq!(
            run(transform, input, chunk).await.unwrap(),
            first,
            "chunk {chunk}"
        );
    }
    first
}

#[tokio::test]
async fn digests_print_as_md5sum_and_sha256sum_do() {
    let md5 = build(json!({"kind": "md5"}));
    assert_eq!(
        run_all_chunkings(&md5, b"The quick brown fox jumps over the lazy dog").await,
        b"9e107d9d372bb6826bd81d3542a419d6"
    );
    assert_eq!(
        run(&md5, b"", 1).await.unwrap(),
        b"d41d8cd98f00b204e9800998ecf8427e"
    );
    let sha = build(json!({"kind": "sha256"}));
    assert_eq!(
        run_all_chunkings(&sha, b"abc").await,
        b"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[tokio::test]
async fn compression_round_trips() {
    let data: Vec<u8> = (0..200_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect();
    for (pack, unpack) in [
        (json!({"kind": "gzip"}), json!({"kind": "gunzip"})),
        (
            json!({"kind": "gzip", "level": 9}),
            json!({"kind": "gunzip"}),
        ),
        (json!({"kind": "zstd"}), json!({"kind": "unzstd"})),
        (
            json!({"kind": "zstd", "level": 19}),
            json!({"kind": "unzstd"}),
        ),
    ] {
        let chain = [build(pack.clone()), build(unpack)];
        let packed = run(&chain[0], &data, 4096).await.unwrap();
        assert!(packed.len() < data.len() / 2, "{pack}");
        let out = apply_chain(&chain, stream_of(Bytes::from(data.clone()), 10_000))
            .await
            .unwrap();
        let back: Vec<u8> = out.map(|b| b.unwrap().to_vec()).concat().await;
        assert_eq!(back, data, "{pack}");
    }
    // Not gzip: an error, never a clean end.
    let gunzip = build(json!({"kind": "gunzip"}));
    assert!(run(&gunzip, b"plainly not gzip data", 5).await.is_err());
    let unzstd = build(json!({"kind": "unzstd"}));
    assert!(run(&unzstd, b"plainly not zstd data", 5).await.is_err());
}

/// A local file given as it is (what a file-system tier's get hands over) is read by the
/// transform itself: the same output as the same bytes streamed, for a digest and a chain.
#[tokio::test]
async fn a_local_file_gives_what_its_stream_gives() {
    // Longer than one read of the file, and not a multiple of it.
    let data: Vec<u8> = (0..(3 << 20) + 17_u32)
        .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("object");
    std::fs::write(&path, &data).unwrap();
    let chains = [
        vec![build(json!({"kind": "md5"}))],
        vec![
            build(json!({"kind": "zstd"})),
            build(json!({"kind": "unzstd"})),
        ],
        vec![build(json!({"kind": "sha256"}))],
    ];
    for chain in chains {
        let file = std::fs::File::open(&path).unwrap();
        let from_file = apply_chain(&chain, ObjectBody::File(file)).await.unwrap();
        let from_file: Vec<u8> = from_file.map(|b| b.unwrap().to_vec()).concat().await;
        let streamed = apply_chain(&chain, stream_of(Bytes::from(data.clone()), 65_536))
            .await
            .unwrap();
        let streamed: Vec<u8> = streamed.map(|b| b.unwrap().to_vec()).concat().await;
        assert_eq!(from_file, streamed, "{}", chain[0].kind());
    }
    // An empty chain gives the file's bytes back.
    let file = std::fs::File::open(&path).unwrap();
    let same = apply_chain(&[], ObjectBody::File(file)).await.unwrap();
    let same: Vec<u8> = same.map(|b| b.unwrap().to_vec()).concat().await;
    assert_eq!(same, data);
    // The digest is md5sum's.
    let file = std::fs::File::open(&path).unwrap();
    let digest = apply_chain(&[build(json!({"kind": "md5"}))], ObjectBody::File(file))
        .await
        .unwrap();
    let digest: Vec<u8> = digest.map(|b| b.unwrap().to_vec()).concat().await;
    let expected = <md5::Md5 as md5::Digest>::digest(&data);
    assert_eq!(
        String::from_utf8(digest).unwrap(),
        letl_actors::transform::hex(&expected)
    );
}

#[tokio::test]
async fn a_decompression_bomb_comes_out_in_bounded_blocks() {
    // 64 MiB of zeros packs into a few KiB; unpacking hands it on in bounded blocks, never
    // all at once.
    let zeros = Bytes::from(vec![0u8; 64 << 20]);
    let packed = run(
        &build(json!({"kind": "zstd", "level": 19})),
        &zeros,
        1 << 20,
    )
    .await
    .unwrap();
    assert!(packed.len() < 64 << 10, "{}", packed.len());
    let mut out = build(json!({"kind": "unzstd"}))
        .apply(stream_of(Bytes::from(packed), 1 << 20))
        .await
        .unwrap();
    let (mut total, mut largest) = (0usize, 0usize);
    while let Some(block) = out.next().await {
        let block = block.unwrap();
        total += block.len();
        largest = largest.max(block.len());
    }
    assert_eq!(total, 64 << 20);
    assert!(largest <= OUTPUT_BLOCK_BYTES, "{largest}");
    // A truncated frame is an error, not a short result.
    let packed = run(&build(json!({"kind": "zstd"})), b"some text to pack", 100)
        .await
        .unwrap();
    let unzstd = build(json!({"kind": "unzstd"}));
    assert!(
        run(&unzstd, &packed[..packed.len() - 3], 100)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn line_filters_keep_or_drop_across_chunks() {
    let text = b">seq1 desc\nACGT\n>seq2\nGGCC\nno newline at end";
    let keep = build(json!({"kind": "lines", "contains": ">"}));
    assert_eq!(run_all_chunkings(&keep, text).await, b">seq1 desc\n>seq2\n");
    let drop = build(json!({"kind": "lines", "contains": ">", "action": "drop"}));
    assert_eq!(
        run_all_chunkings(&drop, text).await,
        b"ACGT\nGGCC\nno newline at end"
    );
    let regex = build(json!({"kind": "lines", "regex": "^[ACGT]+$"}));
    assert_eq!(run_all_chunkings(&regex, text).await, b"ACGT\nGGCC\n");
}

#[tokio::test]
async fn fasta_stats_give_one_json_line_per_record() {
    let fasta = b">NC_045512.2 Severe acute\nATGC\nGGNN\n\n>second\nAAAA\r\n>empty\n";
    let stats = build(json!({"kind": "fasta-stats"}));
    let out = run_all_chunkings(&stats, fasta).await;
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines,
        vec![
            json!({"id": "NC_045512.2", "length": 8, "gc": 0.666667}),
            json!({"id": "second", "length": 4, "gc": 0.0}),
            json!({"id": "empty", "length": 0, "gc": 0.0}),
        ]
    );
    assert!(
        run(&stats, b"ACGT\n", 2).await.is_err(),
        "data before any header"
    );
}

#[test]
fn bad_specs_name_the_field() {
    let registry = TransformRegistry::builtin();
    let error = |value: Value| {
        registry
            .build("transform[1]", &spec(value))
            .unwrap_err()
            .to_string()
    };
    assert!(
        error(json!({"kind": "md6"})).starts_with("transform[1].kind: unknown transform `md6`")
    );
    assert!(error(json!({})).starts_with("transform[1].kind: missing"));
    assert_eq!(
        error(json!({"kind": "md5", "level": 3})),
        "transform[1].level: unknown argument for transform `md5` (it takes: no arguments)"
    );
    assert!(
        error(json!({"kind": "zstd", "level": 23}))
            .starts_with("transform[1].level: 23 is out of range 1..=22")
    );
    assert!(
        error(json!({"kind": "zstd", "level": "high"}))
            .starts_with("transform[1].level: expected an integer")
    );
    assert!(error(json!({"kind": "lines", "regex": "("})).starts_with("transform[1].regex: "));
    assert!(
        error(json!({"kind": "lines"}))
            .starts_with("transform[1].contains: give `contains` or `regex`")
    );
    assert!(
        error(json!({"kind": "lines", "contains": "a", "action": "maybe"}))
            .starts_with("transform[1].action: `maybe`")
    );
}

/// An embedder's transform that panics half-way through.
#[derive(Debug)]
struct Bomb;

struct BombState(usize, Output);

impl BlockState for BombState {
    fn update(&mut self, block: &[u8]) -> io::Result<()> {
        self.0 += block.len();
        assert!(self.0 < 10, "bomb went off");
        self.1.extend_from_slice(block)
    }
    fn finish(self: Box<Self>) -> io::Result<()> {
        Ok(())
    }
}

impl BlockTransform for Bomb {
    fn kind(&self) -> &str {
        "bomb"
    }
    fn version(&self) -> u32 {
        1
    }
    fn start(&self, out: Output) -> Box<dyn BlockState> {
        Box::new(BombState(0, out))
    }
}

#[tokio::test]
async fn a_panicking_transform_ends_its_stream_in_an_error() {
    let mut registry = TransformRegistry::builtin();
    registry.register("bomb", |_| Ok(Arc::new(Bomb)));
    let bomb = registry.build_kind("bomb").unwrap();
    assert_eq!(run(&bomb, b"short", 2).await.unwrap(), b"short");
    let err = run(&bomb, b"far too long for the bomb", 4)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("transform `bomb` panicked: bomb went off"),
        "{err}"
    );
}

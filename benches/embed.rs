//! What embedding costs end to end: `ingestd sync` of the same folder with
//! `skip_embedding_generation` (the one-shot default) and with `--embed`, against a local
//! OpenAI-compatible provider (tests/common/embed.rs, in this process) that answers every batch
//! at once with a fixed vector, so the figure is ingestd's own cost: queueing, batching, HTTP,
//! parsing and checking the vectors, and writing them on the records.
//!
//! Two shapes: Carbon's default chunk size (1500 tokens) and small chunks (256 tokens, about six
//! times the vectors per byte), both with 1536-dimension vectors (ada-002,
//! text-embedding-3-small). Each run is repeated five times and the median taken; the two modes alternate
//! so noise hits both alike.
//!
//! Reported: chunks/s with and without embedding, the embedding path's cost in percent, the
//! records' size without and with vectors (1536 numbers as JSON text are about 14 KB per
//! record), and HTTP requests per 1,000 chunks (batching efficiency; the fewest possible at
//! `max_batch_inputs` = 256 is 3.9). Both runs use the default files in flight, which is
//! twice as many when embedding.
//!
//! Run: `cargo bench --bench embed`.

mod common;
#[path = "../tests/common/http.rs"]
#[allow(dead_code)]
mod http;
#[path = "../tests/common/embed.rs"]
#[allow(dead_code)]
mod provider;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{median, prose};

const FILES: u64 = 400;
const RUNS: usize = 5;
const DIMENSIONS: usize = 1536;

fn main() {
    let corpus = tempfile::tempdir().expect("temporary folder");
    let mut bytes = 0;
    for i in 0..FILES {
        // 4–64 KB each.
        let text = prose(i, 4096, 60 * 1024);
        bytes += text.len();
        std::fs::write(corpus.path().join(format!("doc-{i:04}.txt")), text).expect("file");
    }
    let provider = provider::Provider::start();
    provider.answer_instantly();
    let work = tempfile::tempdir().expect("temporary folder");
    std::fs::write(
        work.path().join("pipeline.toml"),
        format!(
            r#"
[embedding]
default_model = "BENCH"
[embedding.providers.local]
url = "{}"
auth = "none"
[embedding.models.BENCH]
provider = "local"
model = "bench"
dimensions = {DIMENSIONS}
request_dimensions = true
"#,
            provider.url()
        ),
    )
    .expect("config");
    println!(
        "embedding bench: {FILES} files, {:.1} MB of text, {DIMENSIONS}-dimension vectors, median of {RUNS}",
        bytes as f64 / 1e6
    );
    println!(
        "{:>10} | {:>8} | {:>12} | {:>12} | {:>8} | {:>13} | {:>16}",
        "chunk_size",
        "chunks",
        "skip chunk/s",
        "embed chunk/s",
        "cost",
        "output MB",
        "requests/1000"
    );
    for chunk_size in ["1500", "256"] {
        let mut skipped = Vec::new();
        let mut embedded = Vec::new();
        let mut chunks = 0;
        let mut requests = 0;
        let mut sizes = (0, 0);
        for _ in 0..RUNS {
            let (elapsed, count, size) = sync(work.path(), corpus.path(), chunk_size, false);
            skipped.push(elapsed);
            chunks = count;
            sizes.0 = size;
            let before = provider.seen().len();
            let (elapsed, count, size) = sync(work.path(), corpus.path(), chunk_size, true);
            assert_eq!(count, chunks, "embedding changed the chunks");
            sizes.1 = size;
            embedded.push(elapsed);
            requests = provider.seen().len() - before;
        }
        let (skip, embed) = (median(&mut skipped), median(&mut embedded));
        // The floor: only writing this many vectors as JSON numbers, on one core.
        let vectors = vec![provider::vector("", DIMENSIONS); chunks];
        let started = Instant::now();
        serde_json::to_writer(std::io::sink(), &vectors).expect("serialising");
        let floor = started.elapsed();
        println!(
            "{chunk_size:>10} | {chunks:>8} | {:>12.0} | {:>12.0} | {:>7.1}% | {:>5.1} → {:>5.1} | {:>16.1}",
            chunks as f64 / skip.as_secs_f64(),
            chunks as f64 / embed.as_secs_f64(),
            (embed.as_secs_f64() / skip.as_secs_f64() - 1.0) * 100.0,
            sizes.0 as f64 / 1e6,
            sizes.1 as f64 / 1e6,
            requests as f64 * 1000.0 / chunks as f64
        );
        println!(
            "{:>10}   writing the {chunks} vectors as JSON text alone takes {:.2} s ({:.0}% of the skipped run)",
            "",
            floor.as_secs_f64(),
            floor.as_secs_f64() / skip.as_secs_f64() * 100.0
        );
    }
}

/// One `ingestd sync` of `corpus`: its wall time, and the number and bytes of the records it
/// wrote.
fn sync(work: &Path, corpus: &Path, chunk_size: &str, embed: bool) -> (Duration, usize, usize) {
    let out = work.join("records.jsonl");
    let mut command = Command::new(env!("CARGO_BIN_EXE_ingestd"));
    command
        .args([
            "sync",
            corpus.to_str().expect("a UTF-8 path"),
            "--chunk-size",
            chunk_size,
        ])
        .arg("--out")
        .arg(&out)
        .args(["--events", "/dev/null"])
        .current_dir(work)
        .env_remove("RUST_LOG");
    if embed {
        command.arg("--embed");
    }
    let started = Instant::now();
    let status = command.status().expect("running ingestd");
    let elapsed = started.elapsed();
    assert!(status.success(), "ingestd sync failed");
    let records = std::fs::read(&out).expect("records");
    let count = memchr::memchr_iter(b'\n', &records).count();
    (elapsed, count, records.len())
}

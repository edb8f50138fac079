//! Chunker throughput against two exact tokenizers and a peer, measured in one run.
//!
//! Corpus: the prose of the books shipped with the Rust toolchain, then its standard-library
//! documentation pages (`rustup component add rust-docs`), HTML turned into text by ingestd's
//! own extractor. Figures are MB/s of input text at chunk_size 512 / overlap 50, best of three
//! runs each, one thread:
//!
//! * tiktoken — tiktoken-rs `encode_ordinary` over the same text once (the named reference);
//! * bpe      — bpe-openai `encode` over the same text once (the fastest exact encoder we know);
//! * peer     — text-splitter's `TextSplitter` with tiktoken-rs as its sizer (the plain way);
//! * ours     — `ingestd::chunk::Chunker`, plain and markdown, for cl100k_base and o200k_base.
//!
//! Run: `cargo bench --bench chunking` (set `INGESTD_BENCH_MB` to change the corpus size).

mod common;

use std::time::Duration;

use common::{best_of, corpus, mb, rate, repeat_to};
use ingestd::chunk::{Chunker, Encoding, Structure};
use text_splitter::{ChunkConfig, TextSplitter};

const SIZE: usize = 512;
const OVERLAP: usize = 50;

fn main() {
    let target_mb: usize = std::env::var("INGESTD_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let pages = corpus(target_mb * 1_000_000);
    let total: usize = pages.iter().map(String::len).sum();
    println!(
        "corpus: {} pages, {:.1} MB of text from the Rust toolchain's books and std docs",
        pages.len(),
        mb(total)
    );

    println!("\nsingle thread, chunk_size {SIZE}, overlap {OVERLAP}");
    for encoding in Encoding::ALL {
        let tiktoken = encoding.core_bpe().expect("tiktoken-rs vocabulary");
        let bpe = match encoding {
            Encoding::Cl100kBase => bpe_openai::cl100k_base(),
            Encoding::O200kBase => bpe_openai::o200k_base(),
        };
        let chunker = Chunker::new(encoding, SIZE, OVERLAP).expect("chunker");
        let _ = (chunker.count("warm up"), bpe.count("warm up"));
        let floor = best_of(3, || {
            pages
                .iter()
                .map(|p| tiktoken.encode_ordinary(p).len())
                .sum::<usize>()
        });
        let second = best_of(3, || {
            pages
                .iter()
                .map(|p| bpe.encode(p.as_str()).len())
                .sum::<usize>()
        });
        println!("  {encoding}");
        println!(
            "    tiktoken-rs encode once     {:>7.2} MB/s",
            rate(total, floor)
        );
        println!(
            "    bpe-openai encode once      {:>7.2} MB/s   {:.2}x tiktoken-rs",
            rate(total, second),
            ratio(floor, second)
        );
        for structure in [Structure::Plain, Structure::Markdown] {
            let ours = best_of(3, || {
                pages
                    .iter()
                    .map(|p| chunker.chunk(p, structure).len())
                    .sum::<usize>()
            });
            println!(
                "    ours, {:<9}             {:>7.2} MB/s   {:.2}x tiktoken-rs   {:.2}x bpe-openai",
                format!("{structure:?}").to_lowercase(),
                rate(total, ours),
                ratio(floor, ours),
                ratio(second, ours)
            );
        }
    }

    peer_and_sizes(&pages);
}

/// text-splitter with tiktoken-rs as its sizer, then ours on single documents of growing size.
fn peer_and_sizes(pages: &[String]) {
    let tiktoken = Encoding::Cl100kBase.core_bpe().expect("tiktoken-rs");
    let chunker = Chunker::new(Encoding::Cl100kBase, SIZE, OVERLAP).expect("chunker");
    let peer_pages = &pages[..pages.len().min(pages.len() / 4 + 1)];
    let peer_bytes: usize = peer_pages.iter().map(String::len).sum();
    let peer_floor = best_of(1, || {
        peer_pages
            .iter()
            .map(|p| tiktoken.encode_ordinary(p).len())
            .sum::<usize>()
    });
    let splitter = TextSplitter::new(
        ChunkConfig::new(SIZE)
            .with_overlap(OVERLAP)
            .expect("config")
            .with_sizer(&tiktoken),
    );
    let peer = best_of(1, || {
        peer_pages
            .iter()
            .map(|p| splitter.chunks(p).count())
            .sum::<usize>()
    });
    println!(
        "\npeer: text-splitter + tiktoken sizer, cl100k_base  {:>7.2} MB/s   {:.2}x tiktoken-rs   (on {:.1} MB)",
        rate(peer_bytes, peer),
        ratio(peer_floor, peer),
        mb(peer_bytes)
    );

    println!("\ndocument size (one document, ours vs tiktoken-rs on the same text, cl100k_base)");
    let joined = pages.join("\n\n");
    for size in [10_000, 100_000, 1_000_000, 10_000_000, 50_000_000] {
        let doc = repeat_to(&joined, size);
        let reps = (20_000_000 / size).clamp(1, 200);
        let floor = best_of(2, || {
            (0..reps)
                .map(|_| tiktoken.encode_ordinary(&doc).len())
                .sum::<usize>()
        });
        let ours = best_of(2, || {
            (0..reps)
                .map(|_| chunker.chunk(&doc, Structure::Plain).len())
                .sum::<usize>()
        });
        println!(
            "  {:>9} bytes: ours {:>7.2} MB/s, tiktoken-rs {:>7.2} MB/s, {:.2}x",
            doc.len(),
            rate(doc.len() * reps, ours),
            rate(doc.len() * reps, floor),
            ratio(floor, ours)
        );
    }
}

/// How many times faster the second timing is than the first.
fn ratio(reference: Duration, ours: Duration) -> f64 {
    reference.as_secs_f64() / ours.as_secs_f64()
}

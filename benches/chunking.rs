//! Chunker throughput against its floor and its peer, measured in one run.
//!
//! Corpus: the prose of the books shipped with the Rust toolchain, then its standard-library
//! documentation pages (`rustup component add rust-docs`), HTML turned into text by ingestd's
//! own extractor. Figures are MB/s of input text
//! at chunk_size 512 / overlap 50 (cl100k_base), best of three runs each:
//!
//! * floor — tiktoken-rs `encode_ordinary` over the same text once;
//! * peer  — text-splitter's `TextSplitter` with tiktoken-rs as its sizer (the plain way);
//! * ours  — `ingestd::chunk::Chunker`.
//!
//! Run: `cargo bench --bench chunking` (set `INGESTD_BENCH_MB` to change the corpus size).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ingestd::chunk::{Chunker, Encoding, Structure};
use ingestd::detect::detect;
use ingestd::extract::extract;
use text_splitter::{ChunkConfig, TextSplitter};

const SIZE: usize = 512;
const OVERLAP: usize = 50;
const BOOKS: &[&str] = &[
    "book",
    "reference",
    "nomicon",
    "rust-by-example",
    "cargo",
    "edition-guide",
    "embedded-book",
    "rustc",
    "unstable-book",
    "style-guide",
    "clippy",
    "error_codes",
    "rustdoc",
    // The books hold about 8 MB of prose; the standard library's documentation pages (English
    // with code samples) make up the rest.
    "std",
    "alloc",
];

#[allow(clippy::too_many_lines)] // one straight report, read top to bottom
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

    let bpe = Encoding::Cl100kBase
        .core_bpe()
        .expect("tiktoken-rs vocabulary");
    let chunker = Chunker::new(Encoding::Cl100kBase, SIZE, OVERLAP).expect("chunker");
    let _ = chunker.count("warm up the tokenizer");

    let floor = best_of(3, || {
        pages
            .iter()
            .map(|p| bpe.encode_ordinary(p).len())
            .sum::<usize>()
    });
    let ours = best_of(3, || {
        pages
            .iter()
            .map(|p| chunker.chunk(p, Structure::Plain).len())
            .sum::<usize>()
    });
    let peer_pages = &pages[..pages.len().min(pages.len() / 4 + 1)];
    let peer_bytes: usize = peer_pages.iter().map(String::len).sum();
    let peer_floor = best_of(1, || {
        peer_pages
            .iter()
            .map(|p| bpe.encode_ordinary(p).len())
            .sum::<usize>()
    });
    let splitter = TextSplitter::new(
        ChunkConfig::new(SIZE)
            .with_overlap(OVERLAP)
            .expect("config")
            .with_sizer(&bpe),
    );
    let peer = best_of(1, || {
        peer_pages
            .iter()
            .map(|p| splitter.chunks(p).count())
            .sum::<usize>()
    });

    println!("\nsingle thread, chunk_size {SIZE}, overlap {OVERLAP}, cl100k_base");
    println!(
        "  (a) tiktoken-rs encode once (floor)   {:>7.2} MB/s",
        rate(total, floor)
    );
    println!(
        "  ours: ingestd Chunker                 {:>7.2} MB/s   {:.2}x of (a)",
        rate(total, ours),
        floor.as_secs_f64() / ours.as_secs_f64()
    );
    println!(
        "  (b) text-splitter + tiktoken sizer    {:>7.2} MB/s   {:.2}x of (a)   (on {:.1} MB)",
        rate(peer_bytes, peer),
        peer_floor.as_secs_f64() / peer.as_secs_f64(),
        mb(peer_bytes)
    );

    println!("\ndocument size (one document, ours vs floor on the same text)");
    let joined = pages.join("\n\n");
    for size in [10_000, 100_000, 1_000_000, 10_000_000, 50_000_000] {
        let doc = repeat_to(&joined, size);
        let reps = (20_000_000 / size).clamp(1, 200);
        let floor = best_of(2, || {
            (0..reps)
                .map(|_| bpe.encode_ordinary(&doc).len())
                .sum::<usize>()
        });
        let ours = best_of(2, || {
            (0..reps)
                .map(|_| chunker.chunk(&doc, Structure::Plain).len())
                .sum::<usize>()
        });
        println!(
            "  {:>9} bytes: ours {:>7.2} MB/s, floor {:>7.2} MB/s, {:.2}x",
            doc.len(),
            rate(doc.len() * reps, ours),
            rate(doc.len() * reps, floor),
            floor.as_secs_f64() / ours.as_secs_f64()
        );
    }

    println!("\ntwo threads across files (ours)");
    let two = best_of(3, || {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..2)
                .map(|t| {
                    let (pages, chunker) = (&pages, &chunker);
                    scope.spawn(move || {
                        pages
                            .iter()
                            .skip(t)
                            .step_by(2)
                            .map(|p| chunker.chunk(p, Structure::Plain).len())
                            .sum::<usize>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(0))
                .sum::<usize>()
        })
    });
    println!(
        "  {:>7.2} MB/s, {:.2}x of one thread",
        rate(total, two),
        ours.as_secs_f64() / two.as_secs_f64()
    );
}

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> Duration {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(f());
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn mb(bytes: usize) -> f64 {
    bytes as f64 / 1e6
}

fn rate(bytes: usize, took: Duration) -> f64 {
    mb(bytes) / took.as_secs_f64()
}

fn repeat_to(text: &str, size: usize) -> String {
    let mut out = String::with_capacity(size + text.len());
    while out.len() < size {
        out.push_str(text);
        out.push_str("\n\n");
    }
    let mut cut = size;
    while !out.is_char_boundary(cut) {
        cut -= 1;
    }
    out.truncate(cut);
    out
}

/// Page texts of the toolchain's books, up to about `want` bytes.
fn corpus(want: usize) -> Vec<String> {
    let sysroot = std::process::Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .expect("rustc --print sysroot");
    let html =
        PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim()).join("share/doc/rust/html");
    assert!(
        html.join("book").is_dir(),
        "no books under {}: run `rustup component add rust-docs`",
        html.display()
    );
    let mut files = Vec::new();
    for book in BOOKS {
        collect_html(&html.join(book), &mut files);
    }
    let mut pages = Vec::new();
    let mut total = 0;
    for file in files {
        let Ok(raw) = std::fs::read_to_string(&file) else {
            continue;
        };
        // mdBook repeats the table of contents on every page; the prose is in <main>.
        let body = match (raw.find("<main>"), raw.rfind("</main>")) {
            (Some(a), Some(b)) if a < b => &raw[a..b + 7],
            _ => continue,
        };
        let detected = detect(body.as_bytes(), Some("text/html"), "page.html");
        let Ok(text) = extract(body.as_bytes(), detected, None, usize::MAX) else {
            continue;
        };
        if text.text.len() < 500 {
            continue;
        }
        total += text.text.len();
        pages.push(text.text);
        if total >= want {
            break;
        }
    }
    assert!(total >= want, "only {:.1} MB of prose found", mb(total));
    pages
}

fn collect_html(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            collect_html(&path, out);
        } else if path.extension().is_some_and(|e| e == "html") && !path.ends_with("print.html") {
            out.push(path);
        }
    }
}

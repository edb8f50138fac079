//! The whole `ingestd sync` path against one tokenizer pass over the same files, every side a
//! whole process, measured in one run.
//!
//! Corpus: the prose of the Rust toolchain's books and std docs as text files (see
//! `common::corpus`), chunk_size 512 / overlap 50, cl100k_base. Best of nine interleaved
//! rounds (a run of under a second on a shared 2-core machine is easily slowed by a
//! neighbour; the best is the one that was not); each side is a process of its own, pinned
//! with `taskset`:
//!
//! * tiktoken — tiktoken-rs `encode_ordinary` over every file once, one core (the reference);
//! * bpe      — bpe-openai `encode` over every file once, one core (the second reference);
//! * ours     — `ingestd sync DIR --out /dev/null`, on one core and on both;
//! * bpe × 2  — the bpe pass as two processes at once, one per core, each over half the bytes:
//!   what two cores give a pass that shares nothing (the ceiling for "both cores vs one");
//! * ours × 2 — `ingestd sync` the same way, two processes over the halves: what splitting the
//!   files between the cores, with nothing handed from one to the other, would give;
//! * stdio    — `ingestd sync DIR > FILE 2> FILE` on one core, as a newcomer first runs it.
//!
//! Then one large object (`INGESTD_BENCH_LARGE_MB`, default 200 MB of the same prose) on one
//! core and on two, and documents from 10 KB to 50 MB (throughput and peak RSS, one core),
//! best of five and three interleaved rounds.
//!
//! Run: `cargo bench --bench sync` (`INGESTD_BENCH_MB` sets the corpus size, default 22;
//! `INGESTD_BENCH_CORPUS=DIR` writes the corpus files there, keeps them and stops, for
//! profiling `ingestd sync DIR` by hand).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{corpus, mb, rate, repeat_to, run_sampled};

/// Rounds over the corpus; the best of each side counts.
const ROUNDS: usize = 9;

/// Set in the environment of a reference pass: `tiktoken` or `bpe`, then the folder.
const REFERENCE_ENV: &str = "INGESTD_BENCH_REFERENCE";

fn main() {
    if let Ok(reference) = std::env::var(REFERENCE_ENV) {
        reference_pass(&reference);
        return;
    }
    let env_mb = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let pages = corpus(env_mb("INGESTD_BENCH_MB", 22) * 1_000_000);
    let total: usize = pages.iter().map(String::len).sum();
    let root = tempfile::tempdir().expect("a temporary folder");
    let files = root.path().join("prose");
    std::fs::create_dir(&files).expect("a folder");
    for (i, page) in pages.iter().enumerate() {
        std::fs::write(files.join(format!("page-{i:05}.txt")), page).expect("writing a page");
    }
    if let Ok(keep) = std::env::var("INGESTD_BENCH_CORPUS") {
        std::fs::rename(&files, &keep).expect("moving the corpus");
        println!(
            "{} files, {:.1} MB written to {keep}",
            pages.len(),
            mb(total)
        );
        return;
    }
    // The machine's own two-core ceiling: the bpe-openai pass, and `ingestd sync`, split in two
    // processes, one per core, each over half the bytes.
    let halves = [root.path().join("half-0"), root.path().join("half-1")];
    let mut half_bytes = [0; 2];
    for half in &halves {
        std::fs::create_dir(half).expect("a folder");
    }
    for (i, page) in pages.iter().enumerate() {
        let to = usize::from(half_bytes[1] < half_bytes[0]);
        half_bytes[to] += page.len();
        let name = format!("page-{i:05}.txt");
        std::fs::hard_link(files.join(&name), halves[to].join(&name)).expect("linking a page");
    }
    settle();
    println!(
        "corpus: {} files, {:.1} MB of prose; chunk_size 512, overlap 50, cl100k_base",
        pages.len(),
        mb(total)
    );
    whole_process(&files, &halves, total, root.path());

    let joined = pages.join("\n\n");
    drop(pages);
    large_object(root.path(), &joined, env_mb("INGESTD_BENCH_LARGE_MB", 200));
    sizes(root.path(), &joined);
}

/// The corpus (`total` bytes in `files`, and split by bytes into `halves`) through every side,
/// best of [`ROUNDS`] interleaved rounds.
fn whole_process(files: &Path, halves: &[std::path::PathBuf; 2], total: usize, root: &Path) {
    let (mut tiktoken, mut bpe, mut bpe_two) = (vec![], vec![], vec![]);
    let (mut one, mut two, mut two_processes, mut stdio, mut peak) =
        (vec![], vec![], vec![], vec![], 0);
    for _ in 0..ROUNDS {
        tiktoken.push(reference(&[(files, "0")], "tiktoken"));
        bpe.push(reference(&[(files, "0")], "bpe"));
        bpe_two.push(reference(&[(&halves[0], "0"), (&halves[1], "1")], "bpe"));
        let (took, rss) = sync(files, "0");
        one.push(took);
        peak = peak.max(rss);
        two.push(sync(files, "0,1").0);
        two_processes.push(syncs(&[(&halves[0], "0"), (&halves[1], "1")]));
        stdio.push(sync_stdio(files, root));
    }
    let (tiktoken, bpe, bpe_two) = (best(&tiktoken), best(&bpe), best(&bpe_two));
    let (one, two, two_processes, stdio) =
        (best(&one), best(&two), best(&two_processes), best(&stdio));
    println!("\nwhole process, best of {ROUNDS}");
    println!(
        "  tiktoken-rs pass, 1 core      {:>7.2} MB/s",
        rate(total, tiktoken)
    );
    println!(
        "  bpe-openai pass, 1 core       {:>7.2} MB/s   {:.2}x tiktoken-rs",
        rate(total, bpe),
        ratio(tiktoken, bpe)
    );
    println!(
        "  ingestd sync, 1 core          {:>7.2} MB/s   {:.2}x tiktoken-rs   {:.2}x bpe-openai   peak RSS {:.0} MB",
        rate(total, one),
        ratio(tiktoken, one),
        ratio(bpe, one),
        peak as f64 / 1024.0
    );
    println!(
        "  ingestd sync, 2 cores         {:>7.2} MB/s   {:.2}x tiktoken-rs   {:.2}x itself on 1 core",
        rate(total, two),
        ratio(tiktoken, two),
        ratio(one, two)
    );
    println!(
        "  bpe-openai, 2 processes       {:>7.2} MB/s   {:.2}x the pass on 1 core: two cores' most here",
        rate(total, bpe_two),
        ratio(bpe, bpe_two)
    );
    println!(
        "  ingestd sync, 2 processes     {:>7.2} MB/s   {:.2}x itself on 1 core: files split between the cores; 1 process on 2 cores is {:.2} of it",
        rate(total, two_processes),
        ratio(one, two_processes),
        ratio(two_processes, two)
    );
    println!(
        "  ingestd sync > FILE 2> FILE   {:>7.2} MB/s   {:.2}x the speed with --out /dev/null (1 core)",
        rate(total, stdio),
        ratio(one, stdio)
    );
}

/// One object of `large_mb` MB of the corpus's text on one core and on two, best of five
/// interleaved rounds.
fn large_object(root: &Path, joined: &str, large_mb: usize) {
    let large = root.join("large");
    std::fs::create_dir(&large).expect("a folder");
    let object = repeat_to(joined, large_mb * 1_000_000);
    std::fs::write(large.join("large.txt"), &object).expect("writing the large object");
    drop(object);
    settle();
    let (mut one, mut two, mut rss_one, mut rss_two) = (vec![], vec![], 0, 0);
    for _ in 0..5 {
        let (took, rss) = sync(&large, "0");
        one.push(took);
        rss_one = rss_one.max(rss);
        let (took, rss) = sync(&large, "0,1");
        two.push(took);
        rss_two = rss_two.max(rss);
    }
    let (one, two) = (best(&one), best(&two));
    println!("\none {large_mb} MB text object, best of 5");
    println!(
        "  1 core  {:>7.2} MB/s   peak RSS {:.0} MB",
        rate(large_mb * 1_000_000, one),
        rss_one as f64 / 1024.0
    );
    println!(
        "  2 cores {:>7.2} MB/s   peak RSS {:.0} MB   {:.2}x of 1 core",
        rate(large_mb * 1_000_000, two),
        rss_two as f64 / 1024.0,
        ratio(one, two)
    );
    std::fs::remove_dir_all(&large).expect("removing the large object");
}

/// Throughput and peak RSS on one core for documents of 10 KB, 1 MB and 50 MB, best of three
/// rounds that take each size in turn. Every size is cut from the same text (25 MB of the
/// corpus): 2,500 documents of 10 KB, 25 of 1 MB, and one of 50 MB that is that text twice,
/// so that what is compared is the size and not the content (the corpus runs from the books'
/// prose to the std docs' code-like pages, which cost more a byte).
fn sizes(root: &Path, joined: &str) {
    println!("\ndocument size (25 MB of text as documents of one size, 1 core, best of 3)");
    let text = repeat_to(joined, 25_000_000);
    let mut folders = vec![];
    for size in [10_000, 1_000_000, 50_000_000] {
        let folder = root.join(format!("size-{size}"));
        std::fs::create_dir(&folder).expect("a folder");
        let docs: Vec<std::borrow::Cow<'_, str>> = if size > text.len() {
            vec![text.repeat(size / text.len()).into()]
        } else {
            pieces_of(&text, size).into_iter().map(Into::into).collect()
        };
        for (i, doc) in docs.iter().enumerate() {
            std::fs::write(folder.join(format!("doc-{i:05}.txt")), &**doc).expect("writing");
        }
        let bytes = docs.iter().map(|doc| doc.len()).sum::<usize>();
        folders.push((folder, size, docs.len(), bytes, vec![], 0));
    }
    settle();
    for _ in 0..3 {
        for (folder, _, _, _, times, peak) in &mut folders {
            let (took, rss) = sync(folder, "0");
            times.push(took);
            *peak = (*peak).max(rss);
        }
    }
    let mut rates = vec![];
    for (folder, size, count, bytes, times, peak) in &folders {
        let rate = rate(*bytes, best(times));
        rates.push(rate);
        println!(
            "  {size:>9} bytes x {count:>4}: {rate:>7.2} MB/s   peak RSS {:.0} MB",
            *peak as f64 / 1024.0
        );
        std::fs::remove_dir_all(folder).expect("removing");
    }
    let (low, high) = rates.iter().fold((f64::MAX, 0.0_f64), |(low, high), &r| {
        (low.min(r), high.max(r))
    });
    println!(
        "  the slowest {:.0}% below the fastest",
        100.0 * (high - low) / high
    );
}

/// `text` in consecutive pieces of about `size` bytes (each ends at a character boundary).
fn pieces_of(text: &str, size: usize) -> Vec<&str> {
    let mut pieces = vec![];
    let mut start = 0;
    while start + size <= text.len() {
        let mut end = start + size;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        pieces.push(&text[start..end]);
        start = end;
    }
    pieces
}

/// Writes the files just written back to disk (`sync`) before they are measured: the kernel
/// would do it about 30 s after they were written, in the middle of the rounds, on any core.
fn settle() {
    let status = Command::new("sync").status().expect("running sync");
    assert!(status.success(), "sync failed: {status}");
}

/// Reference passes (this binary again, a process for each folder, on that folder's core), all
/// at once: how long until the last one ended.
fn reference(passes: &[(&Path, &str)], which: &str) -> Duration {
    together(
        passes.iter().map(|(folder, core)| {
            let mut command = Command::new("taskset");
            command
                .args(["-c", core])
                .arg(std::env::current_exe().expect("this benchmark's path"))
                .env(REFERENCE_ENV, format!("{which}:{}", folder.display()));
            command
        }),
        &format!("the {which} pass"),
    )
}

/// Runs `commands` all at once: how long until the last one ended.
fn together(commands: impl Iterator<Item = Command>, what: &str) -> Duration {
    let started = Instant::now();
    let children: Vec<_> = commands
        .map(|mut command| {
            command
                .spawn()
                .unwrap_or_else(|err| panic!("running {what}: {err}"))
        })
        .collect();
    for mut child in children {
        let status = child
            .wait()
            .unwrap_or_else(|err| panic!("waiting for {what}: {err}"));
        assert!(status.success(), "{what} failed: {status}");
    }
    started.elapsed()
}

/// Reads every file of the folder and encodes it once (in the reference's own process).
fn reference_pass(spec: &str) {
    let (which, folder) = spec.split_once(':').expect("which:folder");
    let mut paths: Vec<_> = std::fs::read_dir(folder)
        .expect("the corpus folder")
        .map(|e| e.expect("an entry").path())
        .collect();
    paths.sort();
    let tiktoken = (which == "tiktoken").then(|| tiktoken_rs::cl100k_base().expect("vocabulary"));
    let mut tokens = 0;
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("a text file");
        tokens += match &tiktoken {
            Some(bpe) => bpe.encode_ordinary(&text).len(),
            None => bpe_openai::cl100k_base().encode(text.as_str()).len(),
        };
    }
    std::hint::black_box(tokens);
}

/// One `ingestd sync` of `folder` on `cores` (a taskset list): how long it took, peak RSS in KiB.
fn sync(folder: &Path, cores: &str) -> (Duration, u64) {
    run_sampled(ingestd(folder, cores).args(["--out", "/dev/null", "--events", "/dev/null"]))
}

/// `ingestd sync` of each folder at once, each in a process of its own on its core (a taskset
/// list): how long until the last one ended.
fn syncs(passes: &[(&Path, &str)]) -> Duration {
    together(
        passes.iter().map(|(folder, cores)| {
            let mut command = ingestd(folder, cores);
            command.args(["--out", "/dev/null", "--events", "/dev/null"]);
            command
        }),
        "ingestd sync",
    )
}

/// One `ingestd sync` of `folder` on core 0 as first tried: records on stdout and events on
/// stderr, each into a file in `into`. How long it took.
fn sync_stdio(folder: &Path, into: &Path) -> Duration {
    let file = |name: &str| std::fs::File::create(into.join(name)).expect("an output file");
    let mut command = ingestd(folder, "0");
    command
        .stdout(file("records.jsonl"))
        .stderr(file("events.jsonl"));
    run_sampled(&mut command).0
}

/// `ingestd sync folder` at 512/50 on `cores`.
fn ingestd(folder: &Path, cores: &str) -> Command {
    let mut command = Command::new("taskset");
    command
        .args(["-c", cores, env!("CARGO_BIN_EXE_ingestd")])
        .args(["sync", folder.to_str().expect("a UTF-8 path")])
        .args(["--chunk-size", "512", "--chunk-overlap", "50"])
        .env_remove("RUST_LOG");
    command
}

fn best(times: &[Duration]) -> Duration {
    times.iter().copied().min().unwrap_or_default()
}

/// How many times faster `ours` is than `reference`.
fn ratio(reference: Duration, ours: Duration) -> f64 {
    reference.as_secs_f64() / ours.as_secs_f64()
}

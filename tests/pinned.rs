//! The records of the fixtures, pinned: speed work must not change what is produced.
//!
//! Each case runs the real `ingestd sync` and compares its records (without `last_modified`,
//! which is the checkout's file time) with `fixtures/pinned/`. A large generated text, streamed
//! in several segments, is pinned by its record count and a digest of its records.
//!
//! The pins were written by the binary before the tokenizer and throughput work. Re-pin only
//! when a change to the records is intended, and say so in the commit:
//! `INGESTD_PIN_WRITE=1 cargo test --test pinned` (set `INGESTD_PIN_BIN` to pin another
//! build's output).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{fixture, lines};

/// The text fixtures and the documents parsed in-process (not PDFs, whose text comes from the
/// installed poppler).
fn inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let documents = dir.join("documents");
    std::fs::create_dir(&documents).unwrap();
    for entry in std::fs::read_dir(fixture("documents")).unwrap() {
        let path = entry.unwrap().path();
        let pdf = path.extension().is_some_and(|e| e == "pdf");
        if path.is_file() && !pdf && path.file_name().is_some_and(|n| n != "expected.json") {
            std::fs::copy(&path, documents.join(path.file_name().unwrap())).unwrap();
        }
    }
    (fixture("text"), documents)
}

/// Runs `ingestd sync` (or the binary in `INGESTD_PIN_BIN`) and returns its records as JSON
/// lines without `file.last_modified`.
fn records(dir: &Path, target: &Path, args: &[&str]) -> String {
    let binary =
        std::env::var("INGESTD_PIN_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_ingestd").into());
    let out = Command::new(binary)
        .arg("sync")
        .arg(target)
        .args(["--request-id", "pinned", "--events", "/dev/null"])
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("running ingestd");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut normalized = String::new();
    for mut record in lines(&out.stdout) {
        if let Some(file) = record["file"].as_object_mut() {
            file.remove("last_modified");
        }
        normalized.push_str(&serde_json::to_string(&record).unwrap());
        normalized.push('\n');
    }
    normalized
}

/// Compares `got` with the pin `name`, or writes it when re-pinning.
fn check(name: &str, got: &str) {
    let path = fixture("pinned").join(name);
    if std::env::var_os("INGESTD_PIN_WRITE").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, got).unwrap();
        return;
    }
    let want =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    if got != want {
        let (got, want): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
        let first = got
            .iter()
            .zip(&want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{name}: {} records, {} pinned; first difference at line {first}:\n  got:    {}\n  pinned: {}",
            got.len(),
            want.len(),
            got.get(first).unwrap_or(&"(none)"),
            want.get(first).unwrap_or(&"(none)"),
        );
    }
}

#[test]
fn fixture_records_are_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let (text, documents) = inputs(dir.path());
    let cases: [(&str, &Path, &[&str]); 5] = [
        (
            "text-12-3.jsonl",
            &text,
            &["--chunk-size", "12", "--chunk-overlap", "3"],
        ),
        ("text-default.jsonl", &text, &[]),
        (
            "text-o200k-40-10-prepend.jsonl",
            &text,
            &[
                "--chunk-size",
                "40",
                "--chunk-overlap",
                "10",
                "--encoding",
                "o200k_base",
                "--prepend-filename",
            ],
        ),
        (
            "documents-64-8.jsonl",
            &documents,
            &["--chunk-size", "64", "--chunk-overlap", "8"],
        ),
        (
            "documents-o200k-300-30.jsonl",
            &documents,
            &[
                "--chunk-size",
                "300",
                "--chunk-overlap",
                "30",
                "--encoding",
                "o200k_base",
            ],
        ),
    ];
    for (name, target, args) in cases {
        check(name, &records(dir.path(), target, args));
    }
}

/// About 9 MB of prose-like text with sentences, paragraphs, headings and lists: more than two
/// streamed segments.
fn large_text() -> String {
    const WORDS: &[&str] = &[
        "the",
        "river",
        "stone",
        "ledger",
        "harbour",
        "signal",
        "copper",
        "meadow",
        "lantern",
        "quarry",
        "thread",
        "orbit",
        "candle",
        "summit",
        "garden",
        "engine",
        "violet",
        "and",
        "of",
        "to",
        "café",
        "naïve",
        "日本語",
        "données",
        "über",
        "1998",
        "3.14",
        "e.g.",
    ];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        usize::try_from(state % n as u64).unwrap()
    };
    let mut text = String::with_capacity(9_500_000);
    while text.len() < 9_000_000 {
        match next(12) {
            0 => text.push_str("\n\n## Section\n\n"),
            1 => text.push_str("\n- "),
            _ => {}
        }
        for _ in 0..3 + next(25) {
            text.push_str(WORDS[next(WORDS.len())]);
            text.push(' ');
        }
        text.push_str(if next(4) == 0 { "?\n" } else { ". " });
        if next(6) == 0 {
            text.push_str("\n\n");
        }
    }
    text
}

#[test]
fn a_large_streamed_text_keeps_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("large");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("large.txt"), large_text()).unwrap();
    std::fs::write(folder.join("large.md"), large_text().replace("  ", " ")).unwrap();
    let got = records(
        dir.path(),
        &folder,
        &["--chunk-size", "512", "--chunk-overlap", "50"],
    );
    let count = got.lines().count();
    assert!(count > 3000, "{count} records: the text was not split");
    let digest = format!("{count} {}\n", blake3::hash(got.as_bytes()).to_hex());
    check("large-512-50.digest", &digest);

    // Alone, the file has a CPU slot to spare (on two cores or more), so each next segment is
    // read and tokenized on it while one is cut: its records are the pinned ones all the same.
    let alone = records(
        dir.path(),
        &folder.join("large.txt"),
        &["--chunk-size", "512", "--chunk-overlap", "50"],
    );
    let mut pinned = String::new();
    for line in got.lines().filter(|line| {
        serde_json::from_str::<serde_json::Value>(line).unwrap()["file"]["key"] == "large.txt"
    }) {
        pinned.push_str(line);
        pinned.push('\n');
    }
    assert!(pinned.lines().count() > 1000);
    assert!(
        alone == pinned,
        "large.txt alone differs from its pinned records"
    );
}

//! The real `ingestd sync` binary: outputs, flags, exit codes and every class of bad input.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use common::{assert_exit, fixture, ingestd, ingestd_with, ingestd_within, lines, outcome, root};
use serde_json::Value;

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Chunk texts of each file, joined in order (at a chunk size that fits every fixture whole).
fn texts_by_file(records: &[Value]) -> BTreeMap<String, String> {
    let mut by_file: BTreeMap<String, String> = BTreeMap::new();
    for record in records {
        let key = record["file"]["key"].as_str().unwrap().to_owned();
        by_file
            .entry(key)
            .or_default()
            .push_str(record["text"].as_str().unwrap());
    }
    by_file
}

#[test]
fn every_text_fixture_yields_its_source_text() {
    let dir = tempfile::tempdir().unwrap();
    let out = ingestd(
        dir.path(),
        &[
            "sync",
            fixture("text").to_str().unwrap(),
            "--chunk-size",
            "4000",
        ],
    );
    assert_exit(&out, 0);
    let texts = texts_by_file(&lines(&out.stdout));
    let expected = expected();
    for (key, text) in expected["exact"].as_object().unwrap() {
        assert_eq!(texts.get(key).map(String::as_str), text.as_str(), "{key}");
    }
    for (key, phrases) in expected["contains"].as_object().unwrap() {
        let got = texts
            .get(key)
            .unwrap_or_else(|| panic!("no chunks for {key}"));
        for phrase in phrases.as_array().unwrap() {
            assert!(
                got.contains(phrase.as_str().unwrap()),
                "{key} lacks {phrase}: {got:?}"
            );
        }
    }
    for (key, phrases) in expected["excludes"].as_object().unwrap() {
        let got = &texts[key];
        for phrase in phrases.as_array().unwrap() {
            assert!(
                !got.contains(phrase.as_str().unwrap()),
                "{key} has {phrase}: {got:?}"
            );
        }
    }
}

#[test]
fn runs_are_deterministic_and_records_are_complete() {
    let dir = tempfile::tempdir().unwrap();
    let text = fixture("text");
    let args = [
        "sync",
        text.to_str().unwrap(),
        "--chunk-size",
        "12",
        "--chunk-overlap",
        "3",
    ];
    let first = ingestd(dir.path(), &args);
    let second = ingestd(dir.path(), &args);
    assert_eq!(first.status.code(), Some(0));
    assert_eq!(
        first.stdout, second.stdout,
        "same input and options must give identical records"
    );
    let records = lines(&first.stdout);
    assert!(
        records.len() > 40,
        "small chunks should split the fixtures: {}",
        records.len()
    );
    let mut ids = std::collections::HashSet::new();
    for r in &records {
        assert!(
            ids.insert(r["chunk_id"].as_str().unwrap().to_owned()),
            "duplicate chunk_id"
        );
        assert!(r["token_count"].as_u64().unwrap() <= 12);
        assert_eq!(r["chunking"]["chunk_size"], 12);
        assert_eq!(r["chunking"]["encoding"], "cl100k_base");
        assert_eq!(r["file"]["media_type"], "TEXT");
        assert_eq!(r["file"]["bucket"], Value::Null);
        assert_eq!(r["embedding"], Value::Null);
    }
    // Different options ⇒ different ids.
    let other = ingestd(
        dir.path(),
        &[
            "sync",
            fixture("text").to_str().unwrap(),
            "--chunk-size",
            "13",
            "--chunk-overlap",
            "3",
        ],
    );
    let other_ids: Vec<Value> = lines(&other.stdout)
        .iter()
        .map(|r| r["chunk_id"].clone())
        .collect();
    assert!(records.iter().all(|r| !other_ids.contains(&r["chunk_id"])));
}

#[test]
fn bad_files_get_classified_events_and_exit_code_3() {
    let dir = tempfile::tempdir().unwrap();
    let out = ingestd(dir.path(), &["sync", fixture("bad").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    assert!(out.stdout.is_empty(), "no records expected");
    let events = lines(&out.stderr);
    let check = |key: &str, event: &str, field: &str, code: &str| {
        let e = outcome(&events, key);
        assert_eq!(e["event"], event, "{key}: {e}");
        assert_eq!(e[field], code, "{key}: {e}");
        assert!(!e["message"].as_str().unwrap().is_empty());
    };
    check("empty.txt", "FILES_SKIPPED", "reason", "EMPTY");
    check(
        "random.txt",
        "FILES_SKIPPED",
        "reason",
        "UNSUPPORTED_FORMAT",
    );
    // A PNG header with nothing valid in it, named .txt: detected as PNG, refused as one.
    check("png_named.txt", "FILE_ERROR", "error_code", "CORRUPT_FILE");
    assert_eq!(
        outcome(&events, "png_named.txt")["file"]["media_type"],
        "IMAGE"
    );
    check(
        "invalid_utf8_bom.txt",
        "FILE_ERROR",
        "error_code",
        "INVALID_ENCODING",
    );
    check("broken.json", "FILE_ERROR", "error_code", "CORRUPT_FILE");
    let last = events.last().unwrap();
    assert_eq!(last["event"], "ALL_FILES_PROCESSED");
    assert_eq!(
        (
            last["files_failed"].as_u64(),
            last["files_skipped"].as_u64()
        ),
        (Some(3), Some(2))
    );
}

#[test]
fn oversized_files_are_skipped_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pipeline.toml"),
        "[limits]\nmax_object_bytes = 40\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("big.txt"), "x".repeat(41)).unwrap();
    std::fs::write(data.join("small.txt"), "fits").unwrap();
    let out = ingestd(dir.path(), &["sync", "data"]);
    assert_eq!(out.status.code(), Some(0));
    let events = lines(&out.stderr);
    assert_eq!(outcome(&events, "big.txt")["reason"], "TOO_LARGE");
    assert_eq!(outcome(&events, "small.txt")["event"], "FILE_READY");
    assert_eq!(lines(&out.stdout).len(), 1);
}

/// Formats parsed whole have their own cap; plain text past it is streamed instead.
#[test]
fn whole_parsed_formats_over_their_cap_are_skipped_but_text_streams() {
    let dir = tempfile::tempdir().unwrap();
    // Both files are over one streaming segment (4 MiB); the cap is below it.
    std::fs::write(
        dir.path().join("pipeline.toml"),
        "[limits]\nmax_text_object_bytes = 1000000\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // Over one segment (4 MiB), so only its head is read before it is skipped.
    let rows: Vec<String> = (0..400_000).map(|i| format!("{{\"n\": {i}}}")).collect();
    std::fs::write(data.join("big.json"), format!("[{}]", rows.join(",\n"))).unwrap();
    let prose: String = (0..120_000)
        .map(|i| format!("Sentence number {i} of a long streamed text file."))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(prose.len() > 5 * 1024 * 1024);
    std::fs::write(data.join("long.txt"), &prose).unwrap();
    let out = ingestd(
        dir.path(),
        &[
            "sync",
            "data",
            "--chunk-size",
            "2000",
            "--chunk-overlap",
            "0",
        ],
    );
    assert_exit(&out, 0);
    let events = lines(&out.stderr);
    assert_eq!(outcome(&events, "big.json")["reason"], "TOO_LARGE");
    let ready = outcome(&events, "long.txt");
    assert_eq!(ready["event"], "FILE_READY");
    // The streamed records tile the text in order, each within chunk_size.
    let records = lines(&out.stdout);
    assert_eq!(records.len() as u64, ready["chunk_count"].as_u64().unwrap());
    let mut rebuilt = String::new();
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record["chunk_index"].as_u64(), Some(i as u64));
        assert!(record["token_count"].as_u64().unwrap() <= 2000);
        let [start, end] = [
            record["range"][0].as_u64().unwrap() as usize,
            record["range"][1].as_u64().unwrap() as usize,
        ];
        assert_eq!(&prose[start..end], record["text"].as_str().unwrap());
        assert!(
            start >= rebuilt.len(),
            "chunk {i} overlaps the previous one"
        );
        assert!(
            prose[rebuilt.len()..start].trim().is_empty(),
            "text lost before chunk {i}"
        );
        rebuilt.push_str(&prose[rebuilt.len()..end]);
    }
    assert_eq!(rebuilt.trim_end(), prose.trim_end());
}

#[test]
fn unreadable_entries_and_symlink_loops_are_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("sub")).unwrap();
    std::fs::write(data.join("ok.md"), "# fine\n").unwrap();
    std::os::unix::fs::symlink(dir.path().join("missing.txt"), data.join("dangling.txt")).unwrap();
    std::os::unix::fs::symlink(&data, data.join("sub/loop")).unwrap();
    let out = ingestd(dir.path(), &["sync", "data"]);
    assert_exit(&out, 3);
    let events = lines(&out.stderr);
    assert_eq!(
        outcome(&events, "dangling.txt")["error_code"],
        "READ_FAILED"
    );
    let looped = outcome(&events, "sub/loop");
    assert_eq!(looped["error_code"], "READ_FAILED");
    assert!(
        looped["message"].as_str().unwrap().contains("loop"),
        "{looped}"
    );
    assert_eq!(outcome(&events, "ok.md")["event"], "FILE_READY");
}

#[test]
fn usage_errors_exit_2_with_one_sentence_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let text = fixture("text");
    let text = text.to_str().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "[chunking]\nchunk_sise = 3\n").unwrap();
    for (args, needle) in [
        (
            vec![
                "sync",
                text,
                "--chunk-size",
                "100",
                "--chunk-overlap",
                "100",
            ],
            "chunk_overlap",
        ),
        (vec!["sync", text, "--chunk-size", "0"], "chunk_size"),
        (vec!["sync", text, "--chunk-size", "9000"], "maximum"),
        (vec!["sync", text, "--encoding", "gpt2"], "unknown encoding"),
        (vec!["sync", "no/such/path"], "no/such/path"),
        (vec!["sync", text, "--config", "bad.toml"], "chunk_sise"),
        (vec!["sync", text, "--tag", "novalue"], "KEY=VALUE"),
    ] {
        let mut with_out = args.clone();
        with_out.extend(["--out", "out.jsonl"]);
        let out = ingestd(dir.path(), &with_out);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(
            !dir.path().join("out.jsonl").exists(),
            "{args:?} wrote output"
        );
    }
}

#[test]
fn events_on_stderr_stay_whole_lines_beside_the_log() {
    // Events and log lines share stderr, written by different threads: each event must reach
    // it as one line of its own (unbuffered, an event was a write per JSON token, and log
    // lines landed inside events).
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let count = 600;
    for i in 0..count {
        let text = format!("Paragraph {i} about rivers and stones.\n\n").repeat(20 + i % 7);
        std::fs::write(files.join(format!("f{i:04}.txt")), text).unwrap();
    }
    let out = ingestd_with(
        dir.path(),
        &["sync", "files", "--out", "records.jsonl"],
        &[("RUST_LOG", "debug")],
    );
    assert_exit(&out, 0);
    let (mut events, mut log) = (0, 0);
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        if line.starts_with('{') {
            let event: Value = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("a broken event line ({err}): {line}"));
            assert!(event["event"].is_string(), "{line}");
            events += 1;
        } else {
            assert!(!line.contains("{\""), "an event inside a log line: {line}");
            log += 1;
        }
    }
    // FILE_SYNCING and FILE_READY for each file, and the run's ALL_FILES_PROCESSED.
    assert_eq!(events, 2 * count + 1);
    assert!(log >= count / 2, "{log} log lines: was RUST_LOG honoured?");
}

#[test]
fn flags_reach_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let out = ingestd(
        dir.path(),
        &[
            "sync",
            fixture("text/formats/guide.md").to_str().unwrap(),
            "--chunk-size",
            "20",
            "--chunk-overlap",
            "0",
            "--encoding",
            "o200k_base",
            "--tag",
            "team=legal",
            "--tag",
            "tier=gold",
            "--prepend-filename",
            "--request-id",
            "req-1",
            "--out",
            "chunks.jsonl",
            "--events",
            "events.jsonl",
        ],
    );
    assert_exit(&out, 0);
    assert!(
        out.stdout.is_empty() && out.stderr.is_empty(),
        "outputs belong in the files"
    );
    let records = lines(&std::fs::read(dir.path().join("chunks.jsonl")).unwrap());
    let bpe = tiktoken_rs::o200k_base().unwrap();
    assert!(records.len() > 1);
    for r in &records {
        let text = r["text"].as_str().unwrap();
        assert!(text.starts_with("guide.md\n"), "{text:?}");
        assert_eq!(
            r["token_count"].as_u64().unwrap() as usize,
            bpe.encode_ordinary(text).len()
        );
        assert!(r["token_count"].as_u64().unwrap() <= 20);
        assert_eq!(r["tags"]["team"], "legal");
        assert_eq!(r["tags"]["tier"], "gold");
        assert_eq!(r["request_id"], "req-1");
        assert_eq!(r["chunking"]["encoding"], "o200k_base");
        assert_eq!(r["file"]["key"], "guide.md");
        assert_eq!(r["file"]["format"], "markdown");
    }
    let events = lines(&std::fs::read(dir.path().join("events.jsonl")).unwrap());
    let ready = outcome(&events, "guide.md");
    assert_eq!(
        ready["chunk_count"].as_u64().unwrap() as usize,
        records.len()
    );
    assert_eq!(ready["request_id"], "req-1");
}

#[test]
fn shipped_config_is_picked_up_from_the_working_directory() {
    // Run from the repository root: pipeline.toml there is valid and used.
    let out = ingestd(&root(), &["sync", "fixtures/text/formats/talk.vtt"]);
    assert_exit(&out, 0);
    assert_eq!(lines(&out.stdout)[0]["chunking"]["chunk_size"], 1500);
}

#[test]
fn output_that_cannot_be_written_is_fatal_exit_1() {
    // /dev/full accepts the open and fails every write: a full disk.
    let dir = tempfile::tempdir().unwrap();
    let text = fixture("text");
    let out = ingestd(
        dir.path(),
        &["sync", text.to_str().unwrap(), "--out", "/dev/full"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("error: writing chunks"), "{stderr}");
}

/// Syncs a folder of `files` (name, text) into chunks of 40 tokens without overlap, with
/// `concurrency` files in flight, within `limit`.
fn sync_small_chunks(
    files: &[(String, String)],
    concurrency: &str,
    limit: std::time::Duration,
) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for (name, text) in files {
        std::fs::write(data.join(name), text).unwrap();
    }
    let args = [
        "sync",
        "data",
        "--chunk-size",
        "40",
        "--chunk-overlap",
        "0",
        "--concurrency",
        concurrency,
    ];
    common::ingestd_within(dir.path(), &args, limit)
}

/// Many files of many chunks each, more in flight than CPU slots, the first one the slowest:
/// files waiting for the writer must not hold the CPU slots the first one needs.
#[test]
fn many_large_files_in_flight_do_not_wait_on_each_other() {
    let sentence = "Each file here yields hundreds of small chunks for the writer. ";
    let mut files = vec![("a-first.txt".to_owned(), sentence.repeat(20_000))];
    for i in 0..8 {
        files.push((format!("b-{i}.txt"), sentence.repeat(3_000)));
    }
    let out = sync_small_chunks(&files, "8", std::time::Duration::from_mins(2));
    assert_exit(&out, 0);
    let events = lines(&out.stderr);
    let ready = events.iter().filter(|e| e["event"] == "FILE_READY").count();
    assert_eq!(ready, 9);
    let records = lines(&out.stdout);
    assert!(records.len() > 9 * 256, "{} records", records.len());
}

/// A file listed after a large one is processed meanwhile, not after it: its output waits in
/// a spool, and the output stays in listing order, each file's lines together.
#[test]
fn a_file_behind_a_large_one_finishes_first_and_is_written_after_it() {
    let sentence = "Each file here yields thousands of small chunks for the writer. ";
    let files = [
        ("a-large.txt".to_owned(), sentence.repeat(120_000)),
        ("b-small.txt".to_owned(), sentence.repeat(15_000)),
    ];
    let out = sync_small_chunks(&files, "2", std::time::Duration::from_mins(3));
    assert_exit(&out, 0);
    let events = lines(&out.stderr);
    let ready_at = |key: &str| {
        let event = events
            .iter()
            .find(|e| e["event"] == "FILE_READY" && e["file"]["key"] == key)
            .unwrap_or_else(|| panic!("no FILE_READY for {key}"));
        // UTC, fixed width, milliseconds: the strings order as the times do.
        event["emitted_at"].as_str().unwrap().to_owned()
    };
    // Before spooling, b stopped after 256 records until a was written, so it finished last.
    assert!(
        ready_at("b-small.txt") < ready_at("a-large.txt"),
        "the small file waited for the large one"
    );
    let records = lines(&out.stdout);
    let keys: Vec<&str> = records
        .iter()
        .map(|r| r["file"]["key"].as_str().unwrap())
        .collect();
    let first_b = keys.iter().position(|k| *k == "b-small.txt").unwrap();
    assert!(keys[..first_b].iter().all(|k| *k == "a-large.txt"));
    assert!(keys[first_b..].iter().all(|k| *k == "b-small.txt"));
    for (i, record) in records[first_b..].iter().enumerate() {
        assert_eq!(record["chunk_index"], i, "b's records out of order");
    }
}

/// Text whose first segments hold no boundary a chunk could end on, then a few words.
#[test]
fn blank_or_boundaryless_segments_do_not_stall_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(
        data.join("blank.txt"),
        format!("{}hello world", " \n".repeat(3_000_000)),
    )
    .unwrap();
    let args = ["sync", "data"];
    let out = common::ingestd_within(dir.path(), &args, std::time::Duration::from_mins(2));
    assert_exit(&out, 0);
    let records = lines(&out.stdout);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["text"], "hello world");
    let start = records[0]["range"][0].as_u64().unwrap();
    assert_eq!(start, 6_000_000);
}

/// Streamed markdown with overlap: across segment seams chunks stay in order, within size,
/// true to the source, and share no more than the overlap with their neighbour.
#[test]
fn streamed_markdown_with_overlap_keeps_its_promises() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let mut doc = String::new();
    let mut section = 0;
    while doc.len() < 9 * 1024 * 1024 {
        section += 1;
        let _ = write!(
            doc,
            "## Section {section}\n\nParagraph {section} explains one idea in a few plain sentences. It goes on a little longer so that chunks hold several paragraphs.\n\n- item one of {section}\n- item two\n\n"
        );
    }
    std::fs::write(data.join("book.md"), &doc).unwrap();
    let out = ingestd(
        dir.path(),
        &[
            "sync",
            "data",
            "--chunk-size",
            "200",
            "--chunk-overlap",
            "20",
        ],
    );
    assert_exit(&out, 0);
    let records = lines(&out.stdout);
    let bpe = tiktoken_rs::cl100k_base().unwrap();
    let mut previous: Option<(usize, usize)> = None;
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record["chunk_index"].as_u64(), Some(i as u64));
        let (start, end) = (
            record["range"][0].as_u64().unwrap() as usize,
            record["range"][1].as_u64().unwrap() as usize,
        );
        assert_eq!(&doc[start..end], record["text"].as_str().unwrap());
        assert!(record["token_count"].as_u64().unwrap() <= 200);
        if let Some((prev_start, prev_end)) = previous {
            assert!(start > prev_start, "chunk {i} does not move forward");
            if start < prev_end {
                let shared = bpe.encode_ordinary(&doc[start..prev_end]).len();
                assert!(shared <= 20, "chunk {i} shares {shared} tokens");
            }
            assert!(
                doc[prev_end.min(start)..start].trim().is_empty(),
                "text lost before chunk {i}"
            );
        }
        previous = Some((start, end));
    }
    assert!(
        doc[previous.unwrap().1..].trim().is_empty(),
        "text lost at the end"
    );
}

#[test]
fn images_are_described_from_their_headers_with_what_the_tools_say() {
    let dir = tempfile::tempdir().unwrap();
    let images = fixture("media/images");
    let out = ingestd(dir.path(), &["sync", images.to_str().unwrap()]);
    assert_exit(&out, 0);
    let expected: BTreeMap<String, [u64; 2]> =
        serde_json::from_str(&std::fs::read_to_string(fixture("media/images.json")).unwrap())
            .unwrap();
    let records = lines(&out.stdout);
    let events = lines(&out.stderr);
    assert_eq!(records.len(), expected.len(), "one record per image");
    for record in &records {
        let key = record["file"]["key"].as_str().unwrap();
        let [width, height] = expected[key];
        assert_eq!(record["file"]["media_type"], "IMAGE", "{key}");
        assert_eq!(record["media"]["width"], width, "{key}: {record}");
        assert_eq!(record["media"]["height"], height, "{key}: {record}");
        // A vector image has no colour type; every raster one says its own.
        assert_eq!(
            record["media"]["color_type"].is_string(),
            record["file"]["format"] != "svg",
            "{key}: {record}"
        );
        assert_eq!(record["text"], "", "{key}");
        assert_eq!(record["token_count"], 0, "{key}");
        let ready = outcome(&events, key);
        assert_eq!(ready["event"], "FILE_READY", "{key}: {ready}");
        assert_eq!(ready["chunk_count"], 1);
    }
    // The photo's EXIF, as exiftool wrote and reads it; GPS only when configured.
    let exif: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("media/exif.json")).unwrap())
            .unwrap();
    let exif = &exif["photo.jpg"];
    let photo = records
        .iter()
        .find(|r| r["file"]["key"] == "photo.jpg")
        .unwrap();
    for field in ["orientation", "captured_at", "camera_make", "camera_model"] {
        assert_eq!(
            photo["media"]["exif"][field], exif[field],
            "{field}: {photo}"
        );
    }
    assert!(
        photo["media"]["exif"].get("latitude").is_none(),
        "GPS is off by default"
    );
    std::fs::write(
        dir.path().join("gps.toml"),
        "[images]\ninclude_gps = true\n",
    )
    .unwrap();
    let photo_path = images.join("photo.jpg");
    let out = ingestd(
        dir.path(),
        &["sync", photo_path.to_str().unwrap(), "--config", "gps.toml"],
    );
    assert_exit(&out, 0);
    let located = &lines(&out.stdout)[0]["media"]["exif"];
    for field in ["latitude", "longitude"] {
        let (got, want) = (
            located[field].as_f64().unwrap(),
            exif[field].as_f64().unwrap(),
        );
        assert!((got - want).abs() < 1e-6, "{field}: {got} vs {want}");
    }

    let formats: BTreeSet<&str> = records
        .iter()
        .map(|r| r["file"]["format"].as_str().unwrap())
        .collect();
    assert_eq!(
        formats,
        BTreeSet::from([
            "bmp", "gif", "ico", "jpeg", "png", "pnm", "svg", "tiff", "webp", "xbm", "xpm"
        ])
    );
    // TIFFs the decoder refuses are described from their first directory, as the fixture
    // script wrote it.
    let colour = |key: &str| {
        let record = records.iter().find(|r| r["file"]["key"] == key).unwrap();
        record["media"]["color_type"].as_str().unwrap().to_owned()
    };
    assert_eq!(colour("deep.tiff"), "L12");
    assert!(
        colour("lab.tiff").starts_with("Lab"),
        "{}",
        colour("lab.tiff")
    );
}

#[test]
fn broken_and_hostile_images_get_their_codes_and_the_next_file_is_chunked() {
    let dir = tempfile::tempdir().unwrap();
    let bad = fixture("media/bad");
    let out = ingestd_within(
        dir.path(),
        &["sync", bad.to_str().unwrap()],
        std::time::Duration::from_secs(30),
    );
    assert_exit(&out, 3);
    let events = lines(&out.stderr);
    for (key, event, field, code) in [
        ("truncated.png", "FILE_ERROR", "error_code", "CORRUPT_FILE"),
        ("zero.png", "FILE_ERROR", "error_code", "CORRUPT_FILE"),
        ("cut.jpg", "FILE_ERROR", "error_code", "CORRUPT_FILE"),
        ("absurd.png", "FILE_ERROR", "error_code", "LIMIT_EXCEEDED"),
        ("bomb.png", "FILE_ERROR", "error_code", "LIMIT_EXCEEDED"),
        ("vast.svg", "FILE_ERROR", "error_code", "LIMIT_EXCEEDED"),
        ("filter.png", "FILE_ERROR", "error_code", "CORRUPT_FILE"),
        ("noise.jpg", "FILES_SKIPPED", "reason", "UNSUPPORTED_FORMAT"),
        (
            "phone.heic",
            "FILES_SKIPPED",
            "reason",
            "UNSUPPORTED_FORMAT",
        ),
        ("after.txt", "FILE_READY", "event", "FILE_READY"),
    ] {
        let e = outcome(&events, key);
        assert_eq!(e["event"], event, "{key}: {e}");
        assert_eq!(e[field], code, "{key}: {e}");
    }
    let records = lines(&out.stdout);
    assert_eq!(records.len(), 1, "only the text file has a record");
    assert_eq!(records[0]["file"]["key"], "after.txt");
    // The bomb was refused from its header: nowhere near its 400 million pixels were decoded.
    let bomb = outcome(&events, "bomb.png");
    assert!(
        bomb["message"].as_str().unwrap().contains("20000×20000"),
        "{bomb}"
    );
}

/// Runs `ingestd ARGS` in `dir` under a pseudo-terminal (util-linux's `script`), as a person
/// at a terminal would; returns its exit code and what the terminal showed.
fn on_a_terminal(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let quoted: Vec<String> = std::iter::once(env!("CARGO_BIN_EXE_ingestd"))
        .chain(args.iter().copied())
        .map(|arg| format!("'{}'", arg.replace('\'', "'\\''")))
        .collect();
    let out = std::process::Command::new("script")
        .args([
            "--quiet",
            "--return",
            "--command",
            &quoted.join(" "),
            "/dev/null",
        ])
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("util-linux's `script` runs commands under a pseudo-terminal: install it");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_terminal_shows_failed_files_and_the_summary_not_every_event() {
    let dir = tempfile::tempdir().unwrap();
    let bad = fixture("media/bad");
    let (code, shown) = on_a_terminal(
        dir.path(),
        &["sync", bad.to_str().unwrap(), "--out", "records.jsonl"],
    );
    assert_eq!(code, Some(3), "{shown}");
    // One readable line per failed file: its key, code and sentence.
    for (key, code) in [
        ("truncated.png", "CORRUPT_FILE"),
        ("bomb.png", "LIMIT_EXCEEDED"),
        ("vast.svg", "LIMIT_EXCEEDED"),
    ] {
        let line = shown
            .lines()
            .find(|line| line.contains(&format!("failed: {key}: {code}: ")))
            .unwrap_or_else(|| panic!("no line for {key} in {shown}"));
        assert!(
            line.len() > format!("failed: {key}: {code}: ").len() + 10,
            "{line}"
        );
    }
    assert!(
        !shown.contains("\"schema_version\""),
        "JSON on the terminal: {shown}"
    );
    assert!(
        !shown.contains("phone.heic"),
        "a skipped file is not a failure: {shown}"
    );
    assert!(
        shown.contains("ingestd sync: ") && shown.contains("failed "),
        "{shown}"
    );
    let records = std::fs::read_to_string(dir.path().join("records.jsonl")).unwrap();
    assert_eq!(lines(records.as_bytes()).len(), 1, "the text file's record");
    // `--events -` asks for the JSON events on the terminal; a file gets them whatever stderr is.
    let with_events = |events: &str| {
        let args = [
            "sync",
            bad.to_str().unwrap(),
            "--out",
            "/dev/null",
            "--events",
            events,
        ];
        on_a_terminal(dir.path(), &args).1
    };
    let shown = with_events("-");
    assert!(shown.contains("\"event\":\"FILE_ERROR\""), "{shown}");
    let shown = with_events("events.jsonl");
    assert!(!shown.contains("\"schema_version\""), "{shown}");
    let events = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    assert!(
        lines(events.as_bytes())
            .iter()
            .any(|e| e["event"] == "FILE_ERROR")
    );
}

/// The words rendered into the OCR fixtures.
fn rendered_words() -> Vec<String> {
    let listed: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("media/ocr.json")).unwrap()).unwrap();
    listed["words"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn ocr_recognises_the_rendered_words_with_the_real_tesseract() {
    let dir = tempfile::tempdir().unwrap();
    let signs = fixture("media/ocr");
    let out = ingestd(dir.path(), &["sync", signs.to_str().unwrap(), "--ocr"]);
    assert_exit(&out, 0);
    let records = lines(&out.stdout);
    for key in ["sign.png", "sign.jpg"] {
        let of: Vec<&Value> = records.iter().filter(|r| r["file"]["key"] == key).collect();
        assert!(!of.is_empty(), "{key} has no records");
        let text: String = of.iter().map(|r| r["text"].as_str().unwrap()).collect();
        for word in rendered_words() {
            assert!(text.contains(&word), "{key}: `{word}` not in {text:?}");
        }
        for record in of {
            assert!(record["token_count"].as_u64().unwrap() > 0);
            assert_eq!(record["media"]["width"], 900, "{record}");
            assert_eq!(record["media"]["height"], 220, "{record}");
        }
    }
    // Without --ocr: one record per image, no text.
    let out = ingestd(dir.path(), &["sync", signs.to_str().unwrap()]);
    assert_exit(&out, 0);
    let records = lines(&out.stdout);
    assert_eq!(records.len(), 2);
    assert!(records.iter().all(|r| r["text"] == ""));
}

#[test]
fn ocr_that_cannot_run_or_runs_too_long_fails_the_file_and_the_next_is_chunked() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("in");
    std::fs::create_dir(&folder).unwrap();
    std::fs::copy(fixture("media/ocr/sign.png"), folder.join("a-sign.png")).unwrap();
    std::fs::write(
        folder.join("b-after.txt"),
        "Text after the image is chunked.\n",
    )
    .unwrap();
    // A Tesseract that never answers (a real child process, killed at the limit).
    let stuck = common::program(&dir.path().join("stuck-tesseract"), "exec sleep 60");
    for (config, code, words) in [
        (
            format!(
                "[images]\ntesseract = \"{}\"\nocr_timeout_secs = 1\n",
                stuck.display()
            ),
            "LIMIT_EXCEEDED",
            "ocr_timeout_secs",
        ),
        (
            "[images]\ntesseract = \"/nonexistent/tesseract\"\n".to_owned(),
            "OCR_UNAVAILABLE",
            "tesseract-ocr",
        ),
        (
            "[images]\nmax_read_bytes = 1000\n".to_owned(),
            "LIMIT_EXCEEDED",
            "max_read_bytes",
        ),
    ] {
        std::fs::write(dir.path().join("pipeline.toml"), &config).unwrap();
        let out = ingestd_within(
            dir.path(),
            &["sync", folder.to_str().unwrap(), "--ocr"],
            std::time::Duration::from_secs(30),
        );
        assert_exit(&out, 3);
        let events = lines(&out.stderr);
        let failed = outcome(&events, "a-sign.png");
        assert_eq!(failed["error_code"], code, "{config}: {failed}");
        assert!(
            failed["message"].as_str().unwrap().contains(words),
            "{failed}"
        );
        assert_eq!(outcome(&events, "b-after.txt")["event"], "FILE_READY");
    }
}

#[test]
fn a_large_tiff_with_its_directory_at_the_end_is_read_on_to_find_it() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("scans");
    std::fs::create_dir(&folder).unwrap();
    // The image crate writes a TIFF's directory after its pixels: beyond the first 4 MiB here.
    let scan = image::RgbImage::from_fn(1400, 1100, |x, y| image::Rgb([x as u8, y as u8, 7]));
    let path = folder.join("scan.tiff");
    scan.save_with_format(&path, image::ImageFormat::Tiff)
        .unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > 4 * 1024 * 1024);
    let out = ingestd(dir.path(), &["sync", folder.to_str().unwrap()]);
    assert_exit(&out, 0);
    let records = lines(&out.stdout);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["media"]["width"], 1400);
    assert_eq!(records[0]["media"]["height"], 1100);
    // Within images.max_read_bytes only: beyond it the header is not found, and the message
    // says why.
    std::fs::write(
        dir.path().join("pipeline.toml"),
        "[images]\nmax_read_bytes = 4194304\n",
    )
    .unwrap();
    let out = ingestd(dir.path(), &["sync", folder.to_str().unwrap()]);
    assert_exit(&out, 3);
    let failed = outcome(&lines(&out.stderr), "scan.tiff").clone();
    assert_eq!(failed["error_code"], "CORRUPT_FILE", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap()
            .contains("max_read_bytes")
    );
}

/// `sync DIR --state FILE`, events of the run from its `--events` file.
fn sync_with_state(
    dir: &std::path::Path,
    folder: &std::path::Path,
    state: &str,
) -> (i32, Vec<Value>, Vec<Value>) {
    let events = dir.join("events.jsonl");
    let out = ingestd(
        dir,
        &[
            "sync",
            folder.to_str().unwrap(),
            "--state",
            state,
            "--events",
            events.to_str().unwrap(),
        ],
    );
    let code = out.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 2,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = std::fs::read(&events)
        .map(|b| lines(&b))
        .unwrap_or_default();
    (code, lines(&out.stdout), events)
}

#[test]
fn sync_with_state_skips_what_is_unchanged_and_reports_what_was_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("docs");
    // Names whose walk order and byte order differ ("a-c" < "a/b").
    std::fs::create_dir_all(folder.join("a")).unwrap();
    std::fs::write(folder.join("a/b.txt"), "Inside a folder.\n").unwrap();
    std::fs::write(folder.join("a-c.txt"), "Beside the folder.\n").unwrap();
    std::fs::copy(fixture("text/formats/guide.md"), folder.join("guide.md")).unwrap();
    let state = dir.path().join("state.sqlite");
    let state = state.to_str().unwrap();

    let (code, records, events) = sync_with_state(dir.path(), &folder, state);
    assert_eq!(code, 0);
    assert_eq!(
        events.iter().filter(|e| e["event"] == "FILE_READY").count(),
        3
    );
    let guide_ids: BTreeSet<String> = records
        .iter()
        .filter(|r| r["file"]["key"] == "guide.md")
        .map(|r| r["chunk_id"].as_str().unwrap().to_owned())
        .collect();

    // Nothing changed: no records, one FILES_SKIPPED naming every file, nothing deleted.
    let (code, records, events) = sync_with_state(dir.path(), &folder, state);
    assert_eq!(code, 0);
    assert!(records.is_empty(), "{records:?}");
    let skipped: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "FILES_SKIPPED")
        .collect();
    assert_eq!(skipped.len(), 1, "{events:?}");
    assert_eq!(skipped[0]["reason"], "UNCHANGED");
    let keys: Vec<&str> = skipped[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["a-c.txt", "a/b.txt", "guide.md"]);
    assert!(
        !events.iter().any(|e| e["event"] == "FILE_DELETED"),
        "{events:?}"
    );
    let all = events.last().unwrap();
    assert_eq!(all["event"], "ALL_FILES_PROCESSED");
    assert_eq!(all["files_skipped"], 3);

    // One file replaced, one removed: the new one's records, the old ids announced, a tombstone.
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(folder.join("guide.md"), "Rewritten entirely.\n").unwrap();
    std::fs::remove_file(folder.join("a-c.txt")).unwrap();
    let (code, records, events) = sync_with_state(dir.path(), &folder, state);
    assert_eq!(code, 0);
    assert!(
        records.iter().all(|r| r["file"]["key"] == "guide.md"),
        "{records:?}"
    );
    assert_eq!(
        records[0]["text"].as_str().unwrap().trim(),
        "Rewritten entirely."
    );
    let ready = outcome(&events, "guide.md");
    assert_eq!(ready["event"], "FILE_READY");
    let removed: BTreeSet<String> = ready["removed_chunk_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(removed, guide_ids);
    let deleted: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "FILE_DELETED")
        .collect();
    assert_eq!(deleted.len(), 1, "{events:?}");
    assert_eq!(deleted[0]["file"]["key"], "a-c.txt");
    assert_eq!(events.last().unwrap()["files_deleted"], 1);

    // Other options shape other records: everything is processed again.
    let out = ingestd(
        dir.path(),
        &[
            "sync",
            folder.to_str().unwrap(),
            "--state",
            state,
            "--chunk-size",
            "100",
        ],
    );
    assert_exit(&out, 0);
    assert_eq!(lines(&out.stdout).len(), 2);

    // A file that is not a store is refused before anything is written.
    let bad = dir.path().join("bad.sqlite");
    std::fs::write(&bad, vec![0x5a_u8; 8192]).unwrap();
    let (code, records, _) = sync_with_state(dir.path(), &folder, bad.to_str().unwrap());
    assert_eq!(code, 2);
    assert!(records.is_empty());
    let out = ingestd(
        dir.path(),
        &[
            "sync",
            folder.to_str().unwrap(),
            "--state",
            bad.to_str().unwrap(),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("STATE_CORRUPT"), "{stderr}");
}

/// The cores `ingestd` may run on, as its own threads see them: slots get cores of their own
/// only when these are as many as its CPU slots (the CPU quota), two or more.
#[cfg(target_os = "linux")]
fn expected_slot_cores() -> Option<usize> {
    let mine = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    let cores = (0..nix::sched::CpuSet::count())
        .filter(|&cpu| mine.is_set(cpu).unwrap())
        .count();
    let slots = std::thread::available_parallelism().unwrap().get();
    (cores >= 2 && cores == slots).then_some(cores)
}

#[cfg(target_os = "linux")]
#[test]
fn cpu_pin_slots_decides_whether_slots_get_cores_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let text = fixture("text");
    let said = |pin: &str| {
        let out = common::ingestd_with(
            dir.path(),
            &[
                "sync",
                text.to_str().unwrap(),
                "--out",
                "/dev/null",
                "--events",
                "/dev/null",
            ],
            &[
                ("RUST_LOG", "ingestd=debug"),
                ("INGESTD__CPU__PIN_SLOTS", pin),
            ],
        );
        assert_exit(&out, 0);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        stderr
            .lines()
            .find(|line| line.contains("CPU slots' cores"))
            .unwrap_or_else(|| panic!("no line about the slots' cores in {stderr}"))
            .to_owned()
    };
    let on = said("true");
    assert!(on.contains("pin_slots=true"), "{on}");
    let expected = match expected_slot_cores() {
        Some(cores) => format!("cores=Some({cores})"),
        None => "cores=None".to_owned(),
    };
    assert!(on.contains(&expected), "expected {expected}: {on}");
    let off = said("false");
    assert!(
        off.contains("pin_slots=false") && off.contains("cores=None"),
        "{off}"
    );

    // A value that is not a boolean is refused before anything runs.
    let out = common::ingestd_with(
        dir.path(),
        &["sync", text.to_str().unwrap()],
        &[("INGESTD__CPU__PIN_SLOTS", "maybe")],
    );
    assert_exit(&out, 2);
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cpu.pin_slots"), "{stderr}");
}

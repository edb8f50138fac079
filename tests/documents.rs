//! Documents through the real `ingestd sync`: PDF, Office, OpenDocument, RTF, e-mail and EPUB
//! yield the text `fixtures/make_documents.py` wrote into them, with pages, rows and options;
//! every hostile class gets its code. Expected phrases come from that script, never from
//! ingestd.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{assert_exit, fixture, ingestd, lines, outcome};
use serde_json::Value;

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture("documents/expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The good fixtures (not `bad/`), copied to a folder of their own.
fn good_documents() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("documents")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() && path.file_name().unwrap() != "expected.json" {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// Each file's text, rebuilt from its chunk records by their byte ranges (chunks overlap).
fn texts(records: &[Value]) -> BTreeMap<String, String> {
    let mut by_file: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for record in records {
        let key = record["file"]["key"].as_str().unwrap().to_owned();
        by_file.entry(key).or_default().push(record);
    }
    by_file
        .into_iter()
        .map(|(key, mut records)| {
            records.sort_by_key(|r| r["chunk_index"].as_u64());
            let mut text = String::new();
            for record in records {
                let start = record["range"][0].as_u64().unwrap() as usize;
                let chunk = record["text"].as_str().unwrap();
                if start >= text.len() {
                    text.push_str(&" ".repeat(start - text.len()));
                    text.push_str(chunk);
                } else if start + chunk.len() > text.len() {
                    text.push_str(&chunk[text.len() - start..]);
                }
            }
            (key, text)
        })
        .collect()
}

fn sync(
    dir: &Path,
    target: &Path,
    extra: &[&str],
) -> (Vec<Value>, Vec<Value>, std::process::Output) {
    let events = dir.join("events.jsonl");
    let mut args = vec![
        "sync",
        target.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = ingestd(dir, &args);
    let records = lines(&out.stdout);
    let events = lines(&std::fs::read(&events).unwrap_or_default());
    (records, events, out)
}

fn phrases<'a>(spec: &'a Value, field: &str) -> Vec<&'a str> {
    spec[field]
        .as_array()
        .map(|list| list.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn every_document_yields_the_text_written_into_it() {
    let docs = good_documents();
    let work = tempfile::tempdir().unwrap();
    let (records, events, out) = sync(work.path(), docs.path(), &["--chunk-size", "4000", "--ocr"]);
    assert_exit(&out, 0);
    let texts = texts(&records);
    let expected = expected();
    for (key, spec) in expected.as_object().unwrap() {
        if key.starts_with("bad/") {
            continue;
        }
        let event = outcome(&events, key);
        if key == "legacy.doc" {
            // No well-kept reader of Word 97 files: a clear skip.
            assert_eq!(event["event"], "FILES_SKIPPED", "{event}");
            assert_eq!(event["reason"], "UNSUPPORTED_FORMAT");
            assert!(
                event["message"].as_str().unwrap().contains("docx"),
                "{event}"
            );
            continue;
        }
        assert_eq!(event["event"], "FILE_READY", "{key}: {event}");
        let text = texts
            .get(key)
            .unwrap_or_else(|| panic!("no records for {key}"));
        let extension = key.rsplit('.').next().unwrap();
        let record = records.iter().find(|r| r["file"]["key"] == *key).unwrap();
        assert_eq!(record["file"]["format"], extension, "{key}");
        assert_eq!(record["file"]["media_type"], "TEXT", "{key}");
        for phrase in phrases(spec, "phrases")
            .into_iter()
            .chain(phrases(spec, "ocr_phrases"))
            .chain(phrases(spec, "attachments"))
            .chain(phrases(spec, "hyphenated").into_iter().map(|_| "inter"))
        {
            assert!(text.contains(phrase), "{key} lacks {phrase:?}:\n{text}");
        }
        for phrase in phrases(spec, "absent") {
            assert!(!text.contains(phrase), "{key} has {phrase:?}:\n{text}");
        }
        for phrase in phrases(spec, "once") {
            assert_eq!(
                text.matches(phrase).count(),
                1,
                "{key}: {phrase:?} not once:\n{text}"
            );
        }
        let order: Vec<usize> = phrases(spec, "order")
            .into_iter()
            .map(|p| text.find(p).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{key}: out of order");
        // Paged documents: every record says where it starts and ends.
        if let Some(pages) = spec["pages"].as_u64() {
            let mut last = 0;
            for record in records.iter().filter(|r| r["file"]["key"] == *key) {
                let (first, end) = (
                    record["page"].as_u64().unwrap(),
                    record["last_page"].as_u64().unwrap(),
                );
                assert!(
                    1 <= first && first <= end && end <= pages,
                    "{key}: {first}..{end}"
                );
                last = last.max(end);
            }
            assert_eq!(last, pages, "{key}");
        } else {
            assert!(
                records
                    .iter()
                    .filter(|r| r["file"]["key"] == *key)
                    .all(|r| r["page"].is_null())
            );
        }
    }
}

#[test]
fn pages_are_boundaries_when_asked_and_phrases_are_on_their_page() {
    let docs = good_documents();
    let work = tempfile::tempdir().unwrap();
    let expected = expected();
    for key in ["report.pdf", "deck.pptx", "slides.odp", "scan.pdf"] {
        let spec = &expected[key];
        let target = docs.path().join(key);
        let (records, _, out) = sync(
            work.path(),
            &target,
            &["--chunk-size", "4000", "--page-boundary", "--ocr"],
        );
        assert_exit(&out, 0);
        for record in &records {
            assert_eq!(
                record["page"], record["last_page"],
                "{key}: a chunk crosses a page"
            );
        }
        for (phrase, page) in spec["page_of"].as_object().unwrap() {
            let holder = records
                .iter()
                .find(|r| r["text"].as_str().unwrap().contains(phrase.as_str()))
                .unwrap_or_else(|| panic!("{key}: no chunk holds {phrase:?}"));
            assert_eq!(holder["page"], *page, "{key}: {phrase:?}");
        }
        // Without the option, a chunk this large spans the pages.
        let (records, _, out) = sync(work.path(), &target, &["--chunk-size", "4000", "--ocr"]);
        assert_exit(&out, 0);
        assert_eq!(records.len(), 1, "{key}");
        assert_eq!(records[0]["page"], 1);
        assert_eq!(records[0]["last_page"], spec["pages"]);
    }
}

#[test]
fn spreadsheet_rows_carry_their_headers_and_can_bound_chunks() {
    let docs = good_documents();
    let work = tempfile::tempdir().unwrap();
    let expected = expected();
    for key in ["budget.xlsx", "budget.xls", "budget.ods"] {
        let spec = &expected[key];
        let target = docs.path().join(key);
        let (records, _, out) = sync(work.path(), &target, &["--chunk-size", "4000"]);
        assert_exit(&out, 0);
        let text = &texts(&records)[key];
        for (sheet, rows) in spec["rows"].as_object().unwrap() {
            assert!(text.contains(&format!("Sheet: {sheet}")), "{key}: {sheet}");
            let rows = rows.as_array().unwrap();
            let header: Vec<&str> = rows[0]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h.as_str().unwrap())
                .collect();
            for row in &rows[1..] {
                let line = row
                    .as_array()
                    .unwrap()
                    .iter()
                    .zip(&header)
                    .filter(|(cell, _)| !cell.is_null())
                    .map(|(cell, column)| match cell {
                        Value::String(s) => format!("{column}: {s}"),
                        number => format!("{column}: {number}"),
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                assert!(
                    text.lines().any(|l| l == line),
                    "{key}: no line {line:?} in\n{text}"
                );
            }
        }
        // Two rows at most per chunk, each chunk ending where a row ends.
        let (records, _, out) = sync(work.path(), &target, &["--max-items-per-chunk", "2"]);
        assert_exit(&out, 0);
        let data_rows: usize = spec["rows"]
            .as_object()
            .unwrap()
            .values()
            .map(|r| r.as_array().unwrap().len() - 1)
            .sum();
        assert!(
            records.len() >= data_rows / 2,
            "{key}: {} chunks",
            records.len()
        );
        for record in &records {
            let text = record["text"].as_str().unwrap();
            let rows = text.lines().filter(|l| !l.starts_with("Sheet: ")).count();
            assert!((1..=2).contains(&rows), "{key}: {rows} rows in {text:?}");
        }
    }
}

#[test]
fn csv_and_json_rows_bound_chunks_only_when_asked() {
    let work = tempfile::tempdir().unwrap();
    let csv: String = std::iter::once("city,harbour,ships\n".to_owned())
        .chain((0..60).map(|i| format!("Port {i},Harbour number {i} on the coast,{}\n", i * 3)))
        .collect();
    let json = format!(
        "[{}]",
        (0..60)
            .map(|i| format!(r#"{{"id":{i},"name":"item {i}","tags":["a","b"]}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    std::fs::write(work.path().join("ports.csv"), csv).unwrap();
    std::fs::write(work.path().join("items.json"), json).unwrap();
    // Where each row (or item) starts: a CSV line naming its first column; a JSON element's
    // first path.
    let starts_row = |key: &str, text: &str| match key {
        "ports.csv" => text.starts_with("city: "),
        _ => {
            text.starts_with('[')
                && text
                    .split(']')
                    .nth(1)
                    .is_some_and(|rest| rest.starts_with(".id: "))
        }
    };
    let rows_in = |key: &str, text: &str| text.lines().filter(|line| starts_row(key, line)).count();
    for key in ["ports.csv", "items.json"] {
        let target = work.path().join(key);
        // As text: chunks fill up to chunk_size wherever fits best, with more than three rows.
        let (plain, _, out) = sync(
            work.path(),
            &target,
            &["--chunk-size", "128", "--chunk-overlap", "0"],
        );
        assert_exit(&out, 0);
        assert!(
            plain
                .iter()
                .any(|r| rows_in(key, r["text"].as_str().unwrap()) > 3),
            "{key}: no text chunk holds more than three rows"
        );
        // By rows: each chunk starts at a row (or item) and holds whole ones, at most two.
        let (rows, _, out) = sync(
            work.path(),
            &target,
            &["--chunk-size", "128", "--max-items-per-chunk", "2"],
        );
        assert_exit(&out, 0);
        for record in &rows {
            let text = record["text"].as_str().unwrap();
            assert!(starts_row(key, text), "{key}: {text:?}");
            assert!(record["token_count"].as_u64().unwrap() <= 128);
            assert!((1..=2).contains(&rows_in(key, text)), "{key}: {text:?}");
        }
        // --split-rows alone: whole rows, as many as fit.
        let (split, _, out) = sync(
            work.path(),
            &target,
            &["--chunk-size", "128", "--split-rows"],
        );
        assert_exit(&out, 0);
        assert!(split.len() < rows.len(), "{key}");
        for record in &split {
            let text = record["text"].as_str().unwrap();
            assert!(starts_row(key, text), "{key}: {text:?}");
        }
        // Every row is in exactly one chunk.
        let total: usize = split
            .iter()
            .map(|r| rows_in(key, r["text"].as_str().unwrap()))
            .sum();
        assert_eq!(total, 60, "{key}");
    }
}

#[test]
fn hostile_documents_get_their_codes_and_the_run_goes_on() {
    let work = tempfile::tempdir().unwrap();
    // A short time limit, so the flate bomb is abandoned rather than read to its end.
    let config = work.path().join("pipeline.toml");
    std::fs::write(&config, "[documents]\ntimeout_secs = 5\n").unwrap();
    let bad = work.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    for entry in std::fs::read_dir(fixture("documents/bad")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, bad.join(path.file_name().unwrap())).unwrap();
    }
    many_entries(&bad.join("many_entries.docx"));
    sparse_sheet(&bad.join("sparse.xlsx"));
    encrypted_office(&bad.join("secret.docx"));
    let started = std::time::Instant::now();
    let (records, events, out) = sync(
        work.path(),
        &bad,
        &["--config", config.to_str().unwrap(), "--chunk-size", "4000"],
    );
    assert!(
        started.elapsed() < std::time::Duration::from_mins(1),
        "took {:?}",
        started.elapsed()
    );
    assert_exit(&out, 3);
    let texts = texts(&records);
    let expected = expected();
    for (key, spec) in expected.as_object().unwrap() {
        if let Some(key) = key.strip_prefix("bad/") {
            check_hostile(key, spec, &events, &records, &texts);
        }
    }
    // A sheet claiming a million rows of 16,384 columns is stopped at the reader's memory
    // limit; a password-protected Office file says so.
    let sparse = outcome(&events, "sparse.xlsx");
    assert_eq!(sparse["error_code"], "LIMIT_EXCEEDED", "{sparse}");
    assert!(
        sparse["message"]
            .as_str()
            .unwrap()
            .contains("child_memory_bytes"),
        "{sparse}"
    );
    let secret = outcome(&events, "secret.docx");
    assert_eq!(secret["error_code"], "PASSWORD_PROTECTED", "{secret}");
    // The flate bomb's pdftotext was killed at the time limit, not left running.
    let running = std::process::Command::new("pgrep")
        .args(["-f", "flate_bomb.pdf"])
        .output()
        .unwrap();
    assert!(
        running.stdout.is_empty(),
        "a reader is still running: {:?}",
        String::from_utf8_lossy(&running.stdout)
    );
}

/// Checks one hostile fixture's outcome against its class.
fn check_hostile(
    key: &str,
    spec: &Value,
    events: &[Value],
    records: &[Value],
    texts: &BTreeMap<String, String>,
) {
    let event = outcome(events, key);
    let said = event.to_string();
    let code = event["error_code"]
        .as_str()
        .or(event["reason"].as_str())
        .unwrap_or("")
        .to_owned();
    let event = event["event"].as_str().unwrap().to_owned();
    let class = spec["class"].as_str().unwrap();
    match class {
        "zip_bomb" | "lying_bomb" | "many_entries" | "flate_bomb" => {
            assert_eq!(
                (event.as_str(), code.as_str()),
                ("FILE_ERROR", "LIMIT_EXCEEDED"),
                "{key}: {said}"
            );
        }
        "user_password" => {
            assert_eq!(
                (event.as_str(), code.as_str()),
                ("FILE_ERROR", "PASSWORD_PROTECTED"),
                "{key}: {said}"
            );
            assert!(!said.contains(spec["user_password"].as_str().unwrap()));
        }
        "corrupt" => {
            assert_eq!(
                (event.as_str(), code.as_str()),
                ("FILE_ERROR", "CORRUPT_FILE"),
                "{key}: {said}"
            );
        }
        "random" => {
            assert_eq!(
                (event.as_str(), code.as_str()),
                ("FILES_SKIPPED", "UNSUPPORTED_FORMAT"),
                "{key}: {said}"
            );
        }
        "truncated_pdf" => {
            // Poppler reads what is there; a truncated PDF is never a silent success with
            // no text.
            if event == "FILE_READY" {
                assert!(!texts[key].trim().is_empty(), "{key}: ready without text");
            } else {
                assert_eq!(code, "CORRUPT_FILE", "{key}: {said}");
            }
        }
        "entity_expansion" | "external_entity" | "wrong_extension" | "nested_archive" => {
            assert_eq!(event, "FILE_READY", "{key}: {said}");
            let text = &texts[key];
            for phrase in phrases(spec, "absent") {
                assert!(!text.contains(phrase), "{key} has {phrase:?}");
            }
            for phrase in phrases(spec, "phrases") {
                assert!(text.contains(phrase), "{key} lacks {phrase:?}");
            }
            if let Some(actual) = spec["actual"].as_str() {
                let record = records.iter().find(|r| r["file"]["key"] == key).unwrap();
                assert_eq!(record["file"]["format"], actual, "{key}");
            }
            // Attachments nest only to documents.max_depth (3): the message, its
            // attachment, and that one's.
            let by_depth = phrases(spec, "phrases_by_depth");
            for (depth, phrase) in by_depth.iter().enumerate() {
                assert_eq!(
                    text.contains(phrase),
                    depth < 3,
                    "{key}: depth {} {phrase:?}",
                    depth + 1
                );
            }
            if !by_depth.is_empty() {
                assert!(text.contains("documents.max_depth"), "{key}: {text}");
            }
        }
        other => panic!("no expectation for class {other}"),
    }
}

/// A DOCX with 100,000 tiny entries besides its parts (9 MB: made here, not committed).
fn many_entries(path: &Path) {
    use std::io::Write as _;
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("[Content_Types].xml", stored).unwrap();
    zip.write_all(b"<Types/>").unwrap();
    zip.start_file("word/document.xml", stored).unwrap();
    zip.write_all(b"<w:document xmlns:w=\"w\"><w:body><w:p><w:r><w:t>many</w:t></w:r></w:p></w:body></w:document>")
        .unwrap();
    for i in 0..100_000 {
        zip.start_file(format!("junk/{i}"), stored).unwrap();
        zip.write_all(b"x").unwrap();
    }
    zip.finish().unwrap();
}

/// An XLSX of two cells, A1 and XFD1048576: a grid of 17 billion cells if read densely.
fn sparse_sheet(path: &Path) {
    use std::io::Write as _;
    let main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main";
    let rels = "http://schemas.openxmlformats.org/officeDocument/2006/relationships";
    let package = "http://schemas.openxmlformats.org/package/2006/relationships";
    let parts = [
        (
            "[Content_Types].xml".to_owned(),
            "<Types xmlns=\"http://schemas.openxmlformats.org/package/2006/content-types\">\
             <Override PartName=\"/xl/workbook.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml\"/>\
             <Override PartName=\"/xl/worksheets/sheet1.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml\"/></Types>".to_owned(),
        ),
        (
            "_rels/.rels".to_owned(),
            format!("<Relationships xmlns=\"{package}\"><Relationship Id=\"rId1\" Type=\"{rels}/officeDocument\" Target=\"xl/workbook.xml\"/></Relationships>"),
        ),
        (
            "xl/workbook.xml".to_owned(),
            format!("<workbook xmlns=\"{main}\" xmlns:r=\"{rels}\"><sheets><sheet name=\"S\" sheetId=\"1\" r:id=\"rId1\"/></sheets></workbook>"),
        ),
        (
            "xl/_rels/workbook.xml.rels".to_owned(),
            format!("<Relationships xmlns=\"{package}\"><Relationship Id=\"rId1\" Type=\"{rels}/worksheet\" Target=\"worksheets/sheet1.xml\"/></Relationships>"),
        ),
        (
            "xl/worksheets/sheet1.xml".to_owned(),
            format!("<worksheet xmlns=\"{main}\"><sheetData><row r=\"1\"><c r=\"A1\"><v>1</v></c></row>\
                     <row r=\"1048576\"><c r=\"XFD1048576\"><v>2</v></c></row></sheetData></worksheet>"),
        ),
    ];
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    for (name, text) in &parts {
        zip.start_file(name.as_str(), zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(text.as_bytes()).unwrap();
    }
    zip.finish().unwrap();
}

/// What Office writes for a password-protected document: an OLE file holding the encryption
/// header and the encrypted package.
fn encrypted_office(path: &Path) {
    use std::io::Write as _;
    let mut file = cfb::create(path).unwrap();
    file.create_stream("EncryptionInfo")
        .unwrap()
        .write_all(&[4, 0, 4, 0, 0x40, 0, 0, 0])
        .unwrap();
    file.create_stream("EncryptedPackage")
        .unwrap()
        .write_all(&[0x5A; 4096])
        .unwrap();
    file.flush().unwrap();
}

#[test]
fn a_pdf_reader_that_cannot_be_run_is_a_clear_error() {
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("pipeline.toml");
    std::fs::write(
        &config,
        "[documents]\npdftotext = \"/nonexistent/pdftotext\"\n",
    )
    .unwrap();
    let (_, events, out) = sync(
        work.path(),
        &fixture("documents/report.pdf"),
        &["--config", config.to_str().unwrap()],
    );
    assert_exit(&out, 0);
    let event = outcome(&events, "report.pdf");
    assert_eq!(event["event"], "FILES_SKIPPED", "{event}");
    assert_eq!(event["reason"], "UNSUPPORTED_FORMAT", "{event}");
    assert!(
        event["message"].as_str().unwrap().contains("poppler-utils"),
        "{event}"
    );
    // A scan read without OCR says what it left out.
    let elsewhere = tempfile::tempdir().unwrap();
    let (_, events, out) = sync(elsewhere.path(), &fixture("documents/scan.pdf"), &[]);
    assert_exit(&out, 0);
    let event = outcome(&events, "scan.pdf");
    assert_eq!(event["event"], "FILE_READY", "{event}");
    assert!(
        event["message"]
            .as_str()
            .unwrap()
            .contains("1 of 2 pages have no text layer"),
        "{event}"
    );
}

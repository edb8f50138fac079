//! Documents per second. PDFs: `ingestd sync` over real PDFs (by default the R manuals of
//! Debian's `r-doc-pdf`, 40 to 3,700 pages) against Poppler's `pdftotext` on the same files in
//! the same run, process start included for both (one `pdftotext` per file, one `ingestd` per
//! run), both pinned to one core. Office: `ingestd sync` over generated DOCX, PPTX and XLSX
//! files of a few MB each. Peak resident memory of the `ingestd` process for each.
//!
//! Run: `scripts/bench-documents.sh` (installs poppler-utils and r-doc-pdf), or
//! `cargo bench --bench documents` with `INGESTD_BENCH_PDFS` naming a folder of PDFs.

mod common;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{median, prose, run_sampled};

const RUNS: usize = 3;

fn main() {
    let folder = std::env::var("INGESTD_BENCH_PDFS")
        .unwrap_or_else(|_| "/usr/share/R/doc/manual".to_owned());
    let pdfs = pdfs(Path::new(&folder));
    assert!(
        !pdfs.is_empty(),
        "no PDFs in {folder}: install r-doc-pdf (scripts/bench-documents.sh) or set \
         INGESTD_BENCH_PDFS"
    );
    let corpus = tempfile::tempdir().expect("temporary folder");
    let (mut pages, mut bytes) = (0, 0);
    for pdf in &pdfs {
        let name = pdf.file_name().expect("a file name");
        std::fs::copy(pdf, corpus.path().join(name)).expect("copying a PDF");
        pages += page_count(pdf);
        bytes += std::fs::metadata(pdf).expect("a PDF's size").len();
    }
    println!(
        "document bench: {} PDFs, {pages} pages, {:.1} MB, one core, median of {RUNS}",
        pdfs.len(),
        bytes as f64 / 1e6
    );
    let (mut ours, mut theirs, mut peak) = (Vec::new(), Vec::new(), 0);
    for _ in 0..RUNS {
        let started = Instant::now();
        for pdf in &pdfs {
            let status = pinned("pdftotext")
                .args(["-enc", "UTF-8", "-eol", "unix"])
                .arg(pdf)
                .arg("-")
                .stdout(Stdio::null())
                .status()
                .expect("running pdftotext");
            assert!(status.success(), "pdftotext failed on {}", pdf.display());
        }
        theirs.push(started.elapsed());
        let (took, rss) = sync(corpus.path());
        ours.push(took);
        peak = peak.max(rss);
    }
    let (ours, theirs) = (median(&mut ours), median(&mut theirs));
    let rate = |took: Duration| pages as f64 / took.as_secs_f64();
    let mbps = |took: Duration| bytes as f64 / 1e6 / took.as_secs_f64();
    println!(
        "  pdftotext:      {:7.0} pages/s  {:6.1} MB/s",
        rate(theirs),
        mbps(theirs)
    );
    println!(
        "  ingestd sync:   {:7.0} pages/s  {:6.1} MB/s  peak RSS {:.0} MB  ({:.2}x pdftotext)",
        rate(ours),
        mbps(ours),
        peak as f64 / 1024.0,
        theirs.as_secs_f64() / ours.as_secs_f64()
    );

    let office = tempfile::tempdir().expect("temporary folder");
    let bytes = write_office(office.path());
    let (mut times, mut peak) = (Vec::new(), 0);
    for _ in 0..RUNS {
        let (took, rss) = sync(office.path());
        times.push(took);
        peak = peak.max(rss);
    }
    let took = median(&mut times);
    println!(
        "  office (DOCX, PPTX, XLSX, {:.1} MB): {:.1} MB/s  peak RSS {:.0} MB",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / took.as_secs_f64(),
        peak as f64 / 1024.0
    );
}

/// The PDFs of a folder, in name order; of files with the same bytes, one.
fn pdfs(folder: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(folder) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "pdf"))
        .collect();
    found.sort();
    let mut seen = std::collections::BTreeSet::new();
    found.retain(|p| seen.insert(std::fs::read(p).map(|b| *blake3::hash(&b).as_bytes()).ok()));
    found
}

fn page_count(pdf: &Path) -> u64 {
    let info = Command::new("pdfinfo")
        .arg(pdf)
        .output()
        .expect("running pdfinfo (poppler-utils)");
    String::from_utf8_lossy(&info.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Pages:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("pdfinfo gives the page count")
}

/// `program` on core 0 (with taskset), so both sides get one core.
fn pinned(program: &str) -> Command {
    let mut command = Command::new("taskset");
    command.args(["-c", "0", program]);
    command
}

/// One `ingestd sync` over `folder` on one core: how long it took and its peak RSS in KiB.
fn sync(folder: &Path) -> (Duration, u64) {
    run_sampled(
        pinned(env!("CARGO_BIN_EXE_ingestd"))
            .args(["sync", folder.to_str().expect("a UTF-8 path")])
            .args([
                "--concurrency",
                "1",
                "--out",
                "/dev/null",
                "--events",
                "/dev/null",
            ])
            .env_remove("RUST_LOG"),
    )
}

/// A DOCX, a PPTX and an XLSX of generated prose; their total size.
fn write_office(folder: &Path) -> u64 {
    write_docx(&folder.join("report.docx"));
    write_pptx(&folder.join("deck.pptx"));
    write_xlsx(&folder.join("ledger.xlsx"));
    ["report.docx", "deck.pptx", "ledger.xlsx"]
        .iter()
        .map(|name| std::fs::metadata(folder.join(name)).expect("written").len())
        .sum()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;")
}

fn write_docx(path: &Path) {
    let mut body = String::new();
    for i in 0..20_000 {
        let _ = write!(
            body,
            "<w:p><w:r><w:t>{}</w:t></w:r></w:p>",
            escape(&prose(i, 200, 400).replace('\n', " "))
        );
    }
    let document = format!(
        "<w:document xmlns:w=\"http://schemas.openxmlformats.org/wordprocessingml/2006/main\">\
         <w:body>{body}</w:body></w:document>"
    );
    zip(
        path,
        &[
            ("[Content_Types].xml", "<Types/>"),
            ("word/document.xml", &document),
        ],
    );
}

fn write_pptx(path: &Path) {
    let mut slides = vec![(
        "ppt/_rels/presentation.xml.rels".to_owned(),
        String::from("<Relationships>"),
    )];
    let mut list = String::new();
    for i in 0..300u64 {
        let mut shapes = String::new();
        for j in 0..20 {
            let _ = write!(
                shapes,
                "<p:sp><p:txBody><a:p><a:r><a:t>{}</a:t></a:r></a:p></p:txBody></p:sp>",
                escape(&prose(i * 100 + j, 100, 200).replace('\n', " "))
            );
        }
        slides.push((
            format!("ppt/slides/slide{i}.xml"),
            format!("<p:sld xmlns:p=\"p\" xmlns:a=\"a\"><p:cSld><p:spTree>{shapes}</p:spTree></p:cSld></p:sld>"),
        ));
        let _ = write!(
            slides[0].1,
            "<Relationship Id=\"rId{i}\" Type=\"slide\" Target=\"slides/slide{i}.xml\"/>"
        );
        let _ = write!(list, "<p:sldId r:id=\"rId{i}\"/>");
    }
    slides[0].1.push_str("</Relationships>");
    slides.push((
        "ppt/presentation.xml".to_owned(),
        format!("<p:presentation xmlns:p=\"p\" xmlns:r=\"r\"><p:sldIdLst>{list}</p:sldIdLst></p:presentation>"),
    ));
    slides.push(("[Content_Types].xml".to_owned(), "<Types/>".to_owned()));
    let slides: Vec<(&str, &str)> = slides
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    zip(path, &slides);
}

fn write_xlsx(path: &Path) {
    let mut rows = String::from(
        "<row><c t=\"inlineStr\"><is><t>id</t></is></c><c t=\"inlineStr\"><is><t>note</t></is></c>\
         <c t=\"inlineStr\"><is><t>amount</t></is></c></row>",
    );
    for i in 0..50_000u64 {
        let _ = write!(
            rows,
            "<row><c><v>{i}</v></c><c t=\"inlineStr\"><is><t>{}</t></is></c><c><v>{}.5</v></c></row>",
            escape(&prose(i, 20, 40).replace('\n', " ")),
            i * 3
        );
    }
    let main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main";
    let rels = "http://schemas.openxmlformats.org/officeDocument/2006/relationships";
    zip(
        path,
        &[
            (
                "[Content_Types].xml",
                "<Types xmlns=\"http://schemas.openxmlformats.org/package/2006/content-types\">\
                 <Override PartName=\"/xl/workbook.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml\"/>\
                 <Override PartName=\"/xl/worksheets/sheet1.xml\" ContentType=\"application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml\"/></Types>",
            ),
            (
                "_rels/.rels",
                &format!(
                    "<Relationships xmlns=\"http://schemas.openxmlformats.org/package/2006/relationships\"><Relationship Id=\"rId1\" Type=\"{rels}/officeDocument\" Target=\"xl/workbook.xml\"/></Relationships>"
                ),
            ),
            (
                "xl/workbook.xml",
                &format!(
                    "<workbook xmlns=\"{main}\" xmlns:r=\"{rels}\"><sheets><sheet name=\"Ledger\" sheetId=\"1\" r:id=\"rId1\"/></sheets></workbook>"
                ),
            ),
            (
                "xl/_rels/workbook.xml.rels",
                &format!(
                    "<Relationships xmlns=\"http://schemas.openxmlformats.org/package/2006/relationships\"><Relationship Id=\"rId1\" Type=\"{rels}/worksheet\" Target=\"worksheets/sheet1.xml\"/></Relationships>"
                ),
            ),
            (
                "xl/worksheets/sheet1.xml",
                &format!("<worksheet xmlns=\"{main}\"><sheetData>{rows}</sheetData></worksheet>"),
            ),
        ],
    );
}

fn zip(path: &Path, entries: &[(&str, &str)]) {
    let file = std::fs::File::create(path).expect("creating a file");
    let mut zip = zip::ZipWriter::new(file);
    for (name, text) in entries {
        zip.start_file(*name, zip::write::SimpleFileOptions::default())
            .expect("a zip entry");
        zip.write_all(text.as_bytes()).expect("writing a zip entry");
    }
    zip.finish().expect("finishing a zip");
}

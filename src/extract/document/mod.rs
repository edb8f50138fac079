//! The document family: PDF, Word, PowerPoint, Excel, OpenDocument, RTF, e-mail and EPUB turned
//! into text with where its pages (or slides) and rows start. Containers are told apart by
//! their own directory (a ZIP's entries, an OLE file's streams), never by the name. Every
//! reader is bounded: ZIP entries, inflated bytes and ratios are checked before and while
//! anything is inflated, XML entities are never expanded, child processes run with a cleared
//! environment, a memory limit and a deadline, and nested attachments stop at a depth.

mod child;
mod container;
mod isolated;
mod mail;
mod ooxml;
mod opendoc;
mod pdf;
mod rtf;
mod sheet;
mod xml;

use std::io::{Read, Seek};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Extracted, Rejection};
use crate::chunk::Structure;
use crate::error::{ErrorCode, FileError, SkipReason};

use container::Container;
pub use isolated::{Assignment, extract_isolated, serve};

/// `[documents]`: how documents are read, and what one may cost.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DocumentsConfig {
    /// Read each document in a process of its own (this program, `ingestd extract-document`)
    /// under `child_memory_bytes` and the deadline, so that a reader that crashes, aborts on
    /// an allocation or hangs costs that process, not the worker. Off: read in the worker.
    pub isolate: bool,
    /// The pdftotext program (Debian's poppler-utils) that reads the text layer of PDFs; when
    /// it cannot be run, PDFs fail with `UNSUPPORTED_FORMAT`.
    pub pdftotext: String,
    /// The pdftoppm program (poppler-utils) that renders pages without text for OCR.
    pub pdftoppm: String,
    /// The pdfinfo program (poppler-utils) that gives a page's size before it is rendered.
    pub pdfinfo: String,
    /// The prlimit program (util-linux) that puts `child_memory_bytes` on each child process;
    /// empty to run children without it.
    pub prlimit: String,
    /// Address space one child process may map (bytes, RLIMIT_AS).
    pub child_memory_bytes: u64,
    /// Seconds one document's extraction may take, attachments and OCR included
    /// (`LIMIT_EXCEEDED`; child processes are killed).
    pub timeout_secs: u64,
    /// Documents larger than this (bytes) are not read (`FILES_SKIPPED` `TOO_LARGE`). They are
    /// spooled to a temporary file, not held in memory.
    pub max_bytes: u64,
    /// ZIP containers (DOCX, XLSX, PPTX, OpenDocument, EPUB) with more entries than this are
    /// refused before any is read (`LIMIT_EXCEEDED`).
    pub max_zip_entries: usize,
    /// Bytes all the entries read from one ZIP container may inflate to, together.
    pub max_unzipped_bytes: u64,
    /// Largest ratio of inflated to stored bytes one ZIP entry may have (zip bombs compress
    /// thousands to one; real documents rarely pass 100).
    pub max_zip_ratio: u64,
    /// How deep attachments of attachments are read (an e-mail's attached e-mail is depth 2).
    pub max_depth: usize,
    /// With `use_ocr`, at most this many PDF pages without text are rendered and recognised.
    pub max_ocr_pages: usize,
    /// Resolution pages are rendered at for OCR (dots per inch).
    pub ocr_dpi: u32,
    /// Most pixels a page is rendered to for OCR: a larger page is rendered at a lower
    /// resolution to fit.
    pub max_ocr_pixels: u64,
}

impl DocumentsConfig {
    /// Checks the section.
    ///
    /// # Errors
    /// What is wrong, in a sentence.
    pub fn validate(&self) -> Result<(), String> {
        if self.timeout_secs == 0
            || self.max_bytes == 0
            || self.max_zip_entries == 0
            || self.max_unzipped_bytes == 0
            || self.max_zip_ratio == 0
            || self.max_depth == 0
            || self.ocr_dpi == 0
            || self.max_ocr_pixels == 0
        {
            return Err(
                "timeout_secs, max_bytes, max_zip_entries, max_unzipped_bytes, \
                        max_zip_ratio, max_depth, ocr_dpi and max_ocr_pixels must be at least 1"
                    .to_owned(),
            );
        }
        if self.child_memory_bytes < 64 * 1024 * 1024 {
            return Err("child_memory_bytes must be at least 64 MiB".to_owned());
        }
        Ok(())
    }
}

impl Default for DocumentsConfig {
    fn default() -> Self {
        DocumentsConfig {
            isolate: true,
            pdftotext: "pdftotext".to_owned(),
            pdftoppm: "pdftoppm".to_owned(),
            pdfinfo: "pdfinfo".to_owned(),
            prlimit: "prlimit".to_owned(),
            child_memory_bytes: 2 * 1024 * 1024 * 1024,
            timeout_secs: 300,
            max_bytes: 512 * 1024 * 1024,
            max_zip_entries: 20_000,
            max_unzipped_bytes: 1024 * 1024 * 1024,
            max_zip_ratio: 200,
            max_depth: 3,
            max_ocr_pages: 50,
            ocr_dpi: 300,
            max_ocr_pixels: 40_000_000,
        }
    }
}

/// What one document's extraction may use: the configuration, the job's OCR, the text limit,
/// and the moment it must be done by.
#[derive(Debug, Clone)]
pub struct Budget {
    /// `[documents]`.
    pub config: DocumentsConfig,
    /// Tesseract, when the job asks for OCR (`use_ocr`).
    pub ocr: Option<super::ocr::Ocr>,
    /// Extracted text larger than this fails the file (`limits.max_text_bytes`).
    pub max_text_bytes: usize,
    /// When the extraction is abandoned.
    pub deadline: Instant,
}

impl Budget {
    /// A budget that starts now.
    #[must_use]
    pub fn starting_now(
        config: &DocumentsConfig,
        ocr: Option<super::ocr::Ocr>,
        max_text_bytes: usize,
    ) -> Self {
        Budget {
            config: config.clone(),
            ocr,
            max_text_bytes,
            deadline: Instant::now() + Duration::from_secs(config.timeout_secs),
        }
    }

    /// `LIMIT_EXCEEDED` once the deadline has passed.
    fn check_time(&self) -> Result<(), FileError> {
        if Instant::now() >= self.deadline {
            return Err(self.timed_out());
        }
        Ok(())
    }

    fn timed_out(&self) -> FileError {
        FileError::permanent(
            ErrorCode::LimitExceeded,
            format!(
                "reading the document took longer than documents.timeout_secs ({} s); it was \
                 abandoned",
                self.config.timeout_secs
            ),
        )
    }
}

/// Where a document's bytes are: a spooled file, or memory (an attachment).
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// A whole file on disk.
    File(&'a Path),
    /// Whole bytes in memory.
    Bytes(&'a [u8]),
}

/// Something a ZIP or OLE reader can read from.
pub(crate) trait Seekable: Read + Seek {}
impl<T: Read + Seek> Seekable for T {}

impl<'a> Input<'a> {
    /// How a child process is given the document: the file's path, or `-` and the bytes to
    /// feed its standard input.
    fn for_child(self) -> (std::ffi::OsString, Option<&'a [u8]>) {
        match self {
            Input::File(path) => (path.as_os_str().to_owned(), None),
            Input::Bytes(bytes) => ("-".into(), Some(bytes)),
        }
    }

    fn open(self) -> Result<Box<dyn Seekable + 'a>, FileError> {
        Ok(match self {
            Input::File(path) => Box::new(std::io::BufReader::new(
                std::fs::File::open(path).map_err(|err| {
                    FileError::transient(
                        ErrorCode::Internal,
                        format!("opening the spooled document: {err}"),
                    )
                })?,
            )),
            Input::Bytes(bytes) => Box::new(std::io::Cursor::new(bytes)),
        })
    }
}

/// Text being written, with where its pages and rows start, within a byte limit.
#[derive(Debug)]
pub(crate) struct Builder {
    text: String,
    pages: Vec<usize>,
    items: Vec<usize>,
    limit: usize,
}

impl Builder {
    pub(crate) fn new(limit: usize) -> Self {
        Builder {
            text: String::new(),
            pages: Vec::new(),
            items: Vec::new(),
            limit,
        }
    }

    /// Appends `text`.
    ///
    /// # Errors
    /// `LIMIT_EXCEEDED` once the text passes the limit.
    pub(crate) fn push(&mut self, text: &str) -> Result<(), FileError> {
        self.text.push_str(text);
        if self.text.len() > self.limit {
            return Err(FileError::permanent(
                ErrorCode::LimitExceeded,
                format!(
                    "extracted text is over the limit of {} bytes (limits.max_text_bytes)",
                    self.limit
                ),
            ));
        }
        Ok(())
    }

    /// Appends character data of a document: white space at the start of a line is dropped
    /// (layout, not text).
    pub(crate) fn push_text(&mut self, text: &str) -> Result<(), FileError> {
        if self.text.is_empty() || self.text.ends_with('\n') {
            self.push(text.trim_start_matches([' ', '\t']))
        } else {
            self.push(text)
        }
    }

    /// Ends the current line, unless the text is empty or already ends one.
    pub(crate) fn end_line(&mut self) -> Result<(), FileError> {
        if !self.text.is_empty() && !self.text.ends_with('\n') {
            self.push("\n")?;
        }
        Ok(())
    }

    /// Ends the current paragraph with a blank line (the strongest boundary chunks prefer).
    pub(crate) fn end_paragraph(&mut self) -> Result<(), FileError> {
        self.end_line()?;
        if !self.text.is_empty() && !self.text.ends_with("\n\n") {
            self.push("\n")?;
        }
        Ok(())
    }

    /// Starts a new page (or slide): what follows is on it.
    pub(crate) fn page(&mut self) -> Result<(), FileError> {
        self.end_paragraph()?;
        self.pages.push(self.text.len());
        Ok(())
    }

    /// Starts a new row or item: what follows belongs to it.
    pub(crate) fn item(&mut self) -> Result<(), FileError> {
        self.end_line()?;
        self.items.push(self.text.len());
        Ok(())
    }

    /// Drops the spaces at the end of the text.
    pub(crate) fn drop_trailing_spaces(&mut self) {
        self.text.truncate(self.text.trim_end_matches(' ').len());
    }

    /// Starts a table cell: a separator unless the cell is the row's first.
    pub(crate) fn cell(&mut self, first: bool) -> Result<(), FileError> {
        self.drop_trailing_spaces();
        if first { Ok(()) } else { self.push(" | ") }
    }

    /// Ends a table row: its cells make one line.
    pub(crate) fn end_row(&mut self) -> Result<(), FileError> {
        self.drop_trailing_spaces();
        self.end_line()
    }

    /// Drops `suffix` from the end of the text, if it ends with it.
    pub(crate) fn drop_suffix(&mut self, suffix: &str) {
        if self.text.ends_with(suffix) {
            self.text.truncate(self.text.len() - suffix.len());
        }
    }

    /// The text as written so far.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// The finished text: trailing blank space trimmed, and page and row starts kept within it.
    pub(crate) fn finish(self) -> Extracted {
        let Builder {
            mut text,
            mut pages,
            mut items,
            ..
        } = self;
        text.truncate(text.trim_end().len());
        for starts in [&mut pages, &mut items] {
            for start in starts.iter_mut() {
                *start = (*start).min(text.len());
            }
        }
        // A row that starts where the text ends holds nothing.
        while items.last().is_some_and(|&start| start >= text.len()) {
            items.pop();
        }
        Extracted {
            text,
            structure: Structure::Plain,
            pages,
            items,
            note: None,
        }
    }
}

/// Where a walk over a document is in its (possibly nested) tables: each row is a line, its
/// cells between ` | `, and paragraphs inside a cell run on.
#[derive(Debug, Default)]
pub(crate) struct Tables {
    /// Per open table: whether its current row has a cell yet.
    rows: Vec<bool>,
}

impl Tables {
    /// A table opens.
    pub(crate) fn open(&mut self, out: &mut Builder) -> Result<(), FileError> {
        self.rows.push(false);
        out.end_line()
    }

    /// A row opens.
    pub(crate) fn row(&mut self) {
        if let Some(row) = self.rows.last_mut() {
            *row = false;
        }
    }

    /// A cell opens.
    pub(crate) fn cell(&mut self, out: &mut Builder) -> Result<(), FileError> {
        match self.rows.last_mut() {
            Some(row) => {
                let first = !*row;
                *row = true;
                out.cell(first)
            }
            None => Ok(()),
        }
    }

    /// A paragraph ends: a line, or a space inside a cell.
    pub(crate) fn end_paragraph(&self, out: &mut Builder) -> Result<(), FileError> {
        if self.rows.is_empty() {
            out.end_line()
        } else if out.text().ends_with([' ', '|', '\n']) {
            Ok(())
        } else {
            out.push(" ")
        }
    }

    /// A table closes.
    pub(crate) fn close(&mut self, out: &mut Builder) -> Result<(), FileError> {
        self.rows.pop();
        out.end_line()
    }
}

/// `CORRUPT_FILE`: the document does not parse as `format`.
pub(crate) fn corrupt(format: &str, why: impl std::fmt::Display) -> FileError {
    FileError::permanent(ErrorCode::CorruptFile, format!("{format} reader: {why}"))
}

/// `PASSWORD_PROTECTED`, saying what is encrypted.
fn password_protected(what: &str) -> FileError {
    FileError::permanent(
        ErrorCode::PasswordProtected,
        format!("{what}; it cannot be read without it"),
    )
}

/// A format that is recognised but not read.
fn unsupported(message: String) -> Rejection {
    Rejection::Skip {
        reason: SkipReason::UnsupportedFormat,
        message,
    }
}

/// Whether documents of `format` (a detected name) are read whole from a spooled file: every
/// document, and ZIP and OLE files, whose directory says which document they are.
#[must_use]
pub fn spooled(format: crate::detect::Format) -> bool {
    use crate::detect::{Family, Format};
    format.family() == Family::Document || matches!(format, Format::Binary("zip" | "ole"))
}

/// Extracts the text of a whole document detected as `format` (a name such as `pdf`, `docx`,
/// `zip` or `ole`: containers are told apart by their directory here). Blocking: run it on a
/// blocking thread, inside the runtime (PDFs are read by child processes).
///
/// Returns the format it was read as (a ZIP may turn out to be a DOCX) and its text.
///
/// # Errors
/// A [`Rejection`]: `UNSUPPORTED_FORMAT` skips for what is not read, `CORRUPT_FILE`,
/// `PASSWORD_PROTECTED` and `LIMIT_EXCEEDED` errors for what cannot or may not be read.
pub fn extract(
    input: Input<'_>,
    format: &'static str,
    budget: &Budget,
) -> Result<(&'static str, Extracted), Rejection> {
    extract_at(input, format, budget, 1)
}

/// [`extract`] of a document found `depth` levels deep (1: the object itself).
fn extract_at(
    input: Input<'_>,
    format: &'static str,
    budget: &Budget,
    depth: usize,
) -> Result<(&'static str, Extracted), Rejection> {
    budget.check_time()?;
    let (format, container) = match format {
        "zip" | "docx" | "docm" | "xlsx" | "xlsm" | "pptx" | "pptm" | "odt" | "ods" | "odp"
        | "epub" => {
            let mut zip = container::Zip::open(input.open()?, &budget.config)?;
            let format = zip.kind().ok_or_else(|| {
                unsupported(
                    "a zip archive that is not a document (no Office, OpenDocument or EPUB \
                     parts); archives are not unpacked"
                        .to_owned(),
                )
            })?;
            if matches!(format, "odt" | "ods" | "odp") && opendoc::encrypted(&mut zip) {
                return Err(password_protected(
                    "the OpenDocument file is encrypted with a password",
                )
                .into());
            }
            (format, Some(Container::Zip(Box::new(zip))))
        }
        "ole" | "doc" | "xls" | "ppt" | "msg" => {
            let ole = container::ole_kind(input.open()?)?;
            (ole, None)
        }
        other => (other, None),
    };
    let extracted = match (format, container) {
        // Without Poppler, PDFs are skipped, as media are without ffprobe.
        ("pdf", _) => pdf::extract(input, budget).map_err(|err| match err.code {
            ErrorCode::UnsupportedFormat => unsupported(err.message),
            _ => Rejection::Error(err),
        })?,
        ("docx" | "docm", Some(Container::Zip(zip))) => ooxml::word(*zip, budget)?,
        ("pptx" | "pptm", Some(Container::Zip(zip))) => ooxml::slides(*zip, budget)?,
        ("odt" | "odp", Some(Container::Zip(zip))) => opendoc::text(*zip, budget)?,
        ("epub", Some(Container::Zip(zip))) => opendoc::epub(*zip, budget)?,
        ("xlsx" | "xlsm" | "ods", Some(Container::Zip(zip))) => {
            // calamine reads the container itself; its parts were checked against the limits.
            drop(zip);
            sheet::extract(input.open()?, format, budget)?
        }
        ("xls", _) => sheet::extract(input.open()?, format, budget)?,
        ("rtf", _) => rtf::extract(input.open()?, budget)?,
        ("eml", _) => mail::eml(input, budget, depth)?,
        ("msg", _) => mail::msg(input.open()?, budget, depth)?,
        ("doc" | "ppt", _) => {
            return Err(unsupported(format!(
                "legacy {format} files (Office 97-2003) are not read; save them as {format}x"
            )));
        }
        (other, _) => {
            return Err(unsupported(format!("{other} documents are not read")));
        }
    };
    Ok((format, extracted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_keeps_page_and_row_starts_within_the_text() {
        let mut b = Builder::new(1000);
        b.page().unwrap();
        b.push("one").unwrap();
        b.page().unwrap();
        b.push("two").unwrap();
        b.item().unwrap();
        b.push("  \n\n").unwrap();
        b.item().unwrap();
        let done = b.finish();
        assert_eq!(done.text, "one\n\ntwo");
        assert_eq!(done.pages, vec![0, 5]);
        assert_eq!(done.items, Vec::<usize>::new());
    }

    #[test]
    fn builder_refuses_text_past_its_limit() {
        let mut b = Builder::new(4);
        b.push("four").unwrap();
        let err = b.push("!").unwrap_err();
        assert_eq!(err.code, ErrorCode::LimitExceeded);
    }
}

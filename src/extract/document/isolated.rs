//! Documents read in a process of their own: the worker (or `sync`) runs this program as
//! `ingestd extract-document` on each document, under the memory limit and the deadline, and
//! reads its answer — the text, or the classified reason there is none — as JSON. A reader
//! that crashes, aborts on an allocation or hangs costs that process only.

use std::io::Read as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Budget, DocumentsConfig, Extracted, Input, Rejection, child, extract};
use crate::chunk::Structure;
use crate::error::{ErrorCode, ErrorKind, FileError, SkipReason};

/// What a reader process answers, as one JSON object on its standard output.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Answer {
    /// The text, with the format the document turned out to be.
    Text {
        format: String,
        text: String,
        pages: Vec<usize>,
        items: Vec<usize>,
        note: Option<String>,
    },
    /// Nothing to read (`FILES_SKIPPED`).
    Skip { reason: SkipReason, message: String },
    /// The document cannot or may not be read (`FILE_ERROR`).
    Error {
        code: ErrorCode,
        message: String,
        retryable: bool,
    },
}

/// What a reader process is told: the budget, as it can travel.
#[derive(Debug, Serialize, Deserialize)]
pub struct Assignment {
    /// `[documents]`.
    pub config: DocumentsConfig,
    /// Tesseract's program and languages, and seconds per page, when OCR is asked for.
    pub ocr: Option<(String, String, u64)>,
    /// `limits.max_text_bytes`.
    pub max_text_bytes: usize,
    /// Milliseconds the reader has: the time left until the deadline, less a margin in which
    /// it stops its own children before it is itself stopped.
    pub millis: u64,
}

/// Reads a document in a reader process (`ingestd extract-document`) run by `program` (this
/// executable), as [`extract`] would in this one.
///
/// # Errors
/// As [`extract`]; a reader process that crashes (or dies at its memory limit) is
/// `CORRUPT_FILE`, one past the deadline `LIMIT_EXCEEDED`.
pub async fn extract_isolated(
    program: &Path,
    input: Input<'_>,
    format: &'static str,
    budget: &Budget,
) -> Result<(&'static str, Extracted), Rejection> {
    let assignment = Assignment {
        config: budget.config.clone(),
        ocr: budget.ocr.as_ref().map(|ocr| {
            (
                ocr.program.clone(),
                ocr.languages.clone(),
                ocr.timeout.as_secs(),
            )
        }),
        max_text_bytes: budget.max_text_bytes,
        millis: u64::try_from(
            budget
                .deadline
                .saturating_duration_since(Instant::now())
                .as_millis(),
        )
        .unwrap_or(u64::MAX)
        .saturating_sub(MARGIN.as_millis() as u64)
        .max(1),
    };
    let assignment = serde_json::to_string(&assignment).map_err(|err| {
        FileError::permanent(
            ErrorCode::Internal,
            format!("encoding a reader's task: {err}"),
        )
    })?;
    let (path, stdin) = input.for_child();
    let args: Vec<std::ffi::OsString> = vec![
        "extract-document".into(),
        "--format".into(),
        format.into(),
        "--task".into(),
        assignment.into(),
        path,
    ];
    let program = program.to_string_lossy();
    // The reader keeps the text within limits.max_text_bytes; as JSON it can take up to six
    // bytes a character (`\u0001`), plus row and page offsets. This cap only guards against a
    // reader gone wrong.
    let cap = budget
        .max_text_bytes
        .saturating_mul(8)
        .saturating_add(1 << 20);
    // The reader stops its own children at its deadline; it is stopped a margin later.
    let outer = Budget {
        deadline: budget.deadline + MARGIN,
        ..budget.clone()
    };
    let output = child::run(&program, &args, stdin, cap, &outer)
        .await
        .map_err(|err| match err.code {
            // This program could not be started (replaced on disk, no processes left).
            ErrorCode::UnsupportedFormat => FileError::transient(
                ErrorCode::Internal,
                format!("starting the document reader: {}", err.message),
            ),
            _ => err,
        })?;
    let said = || crate::extract::said(&output.stderr, child::QUOTED_CHARS);
    let answer: Answer = match serde_json::from_slice(&output.stdout) {
        Ok(answer) if output.success => answer,
        _ if output.stdout.len() >= cap => {
            return Err(Rejection::Error(FileError::permanent(
                ErrorCode::LimitExceeded,
                format!(
                    "the document reader answered more than {cap} bytes for a text of at most \
                     {} (limits.max_text_bytes)",
                    budget.max_text_bytes
                ),
            )));
        }
        // A panic in a reader is the document's doing.
        _ if output.code == Some(101) => {
            return Err(Rejection::Error(FileError::permanent(
                ErrorCode::CorruptFile,
                format!("the document reader crashed on it: {}", said()),
            )));
        }
        // Anything else (a task it refused, a runtime it could not start) is ours, and may
        // pass.
        _ => {
            return Err(Rejection::Error(FileError::transient(
                ErrorCode::Internal,
                format!(
                    "the document reader stopped without an answer (exit {}): {}",
                    output
                        .code
                        .map_or_else(|| "unknown".to_owned(), |c| c.to_string()),
                    said()
                ),
            )));
        }
    };
    answer.into_result(format)
}

impl Answer {
    /// What [`extract`] would have returned; `format` is the one asked for.
    fn into_result(self, format: &'static str) -> Result<(&'static str, Extracted), Rejection> {
        match self {
            Answer::Text {
                format: read_as,
                text,
                pages,
                items,
                note,
            } => {
                let read_as = KNOWN
                    .iter()
                    .find(|k| **k == read_as)
                    .copied()
                    .unwrap_or(format);
                Ok((
                    read_as,
                    Extracted {
                        text,
                        structure: Structure::Plain,
                        pages,
                        items,
                        note,
                    },
                ))
            }
            Answer::Skip { reason, message } => Err(Rejection::Skip { reason, message }),
            Answer::Error {
                code,
                message,
                retryable,
            } => Err(Rejection::Error(FileError {
                code,
                message,
                kind: if retryable {
                    ErrorKind::Transient
                } else {
                    ErrorKind::Permanent
                },
            })),
        }
    }
}

/// How much earlier than the worker's deadline the reader's own falls.
const MARGIN: Duration = Duration::from_secs(2);

/// The formats a document can be read as.
const KNOWN: [&str; 16] = [
    "pdf", "docx", "docm", "pptx", "pptm", "xlsx", "xlsm", "xls", "odt", "odp", "ods", "rtf",
    "eml", "msg", "epub", "zip",
];

/// `ingestd extract-document`: reads the document at `path` (`-`: standard input) as
/// `format`, within `assignment`, and writes the [`Answer`] to `out`. Runs inside a runtime.
///
/// # Errors
/// When the answer cannot be written or the input read.
pub async fn serve(
    format: &str,
    assignment: Assignment,
    path: &Path,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    let format = KNOWN
        .iter()
        .chain(["ole", "doc", "ppt"].iter())
        .find(|k| **k == format)
        .copied()
        .unwrap_or("zip");
    let budget = Budget {
        config: assignment.config,
        ocr: assignment
            .ocr
            .map(|(program, languages, seconds)| crate::extract::ocr::Ocr {
                program,
                languages,
                timeout: Duration::from_secs(seconds),
            }),
        max_text_bytes: assignment.max_text_bytes,
        deadline: Instant::now() + Duration::from_millis(assignment.millis),
    };
    let bytes = if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes)?;
        Some(bytes)
    } else {
        None
    };
    let path = path.to_owned();
    let answer = tokio::task::spawn_blocking(move || {
        let input = match &bytes {
            Some(bytes) => Input::Bytes(bytes),
            None => Input::File(&path),
        };
        match extract(input, format, &budget) {
            Ok((format, extracted)) => Answer::Text {
                format: format.to_owned(),
                text: extracted.text,
                pages: extracted.pages,
                items: extracted.items,
                note: extracted.note,
            },
            Err(Rejection::Skip { reason, message }) => Answer::Skip { reason, message },
            Err(Rejection::Error(err)) => Answer::Error {
                retryable: err.retryable(),
                code: err.code,
                message: err.message,
            },
        }
    })
    .await
    .unwrap_or_else(|_| Answer::Error {
        code: ErrorCode::CorruptFile,
        message: "the document reader crashed on it".to_owned(),
        retryable: false,
    });
    serde_json::to_writer(&mut *out, &answer)?;
    out.flush()
}

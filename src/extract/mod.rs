//! Text out of bytes, one module per family. Runs on blocking threads, never on the async
//! runtime, and never trusts the input: every failure is a classified [`Rejection`].

mod charset;
pub mod document;
pub mod ffmpeg;
pub mod ffprobe;
pub mod frames;
pub(crate) mod html;
pub mod image;
mod image_size;
pub mod media;
pub mod ocr;
mod served;
mod text;

pub use charset::StreamDecoder;

use crate::chunk::Structure;
use crate::detect::{Detected, Family};
use crate::error::{ErrorCode, FileError, SkipReason};

/// The environment a decoder child process gets: where programs, libraries and data are, and
/// the locale; not the service's own (provider keys, S3 credentials).
pub(crate) fn child_env() -> impl Iterator<Item = (&'static str, std::ffi::OsString)> {
    [
        "PATH",
        "LD_LIBRARY_PATH",
        "LANG",
        "LC_ALL",
        "TMPDIR",
        "TESSDATA_PREFIX",
    ]
    .into_iter()
    .filter_map(|name| Some((name, std::env::var_os(name)?)))
}

/// What a child process said (its stderr), trimmed to its first `chars` characters for a
/// message.
pub(crate) fn said(output: &[u8], chars: usize) -> String {
    String::from_utf8_lossy(output)
        .trim()
        .chars()
        .take(chars)
        .collect()
}

/// Text ready to be chunked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Extracted {
    /// The text; chunk ranges are byte offsets into it.
    pub text: String,
    /// The structure that decides chunk boundaries.
    pub structure: Structure,
    /// Where each page (or slide) of a paged document starts, as byte offsets in `text`,
    /// ascending; empty for text that has no pages.
    pub pages: Vec<usize>,
    /// Where each row (tables, spreadsheets) or item (JSON, JSON Lines) starts, as byte
    /// offsets in `text`, ascending; empty for text that has none.
    pub items: Vec<usize>,
    /// What `FILE_READY` should say about the text (pages without a text layer left out).
    pub note: Option<String>,
}

/// Why a file yields no text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Nothing wrong with the file, but nothing to do with it (`FILES_SKIPPED`).
    Skip {
        /// The stable reason.
        reason: SkipReason,
        /// One human sentence.
        message: String,
    },
    /// The file is broken or breaks a limit (`FILE_ERROR`).
    Error(FileError),
}

impl From<FileError> for Rejection {
    fn from(err: FileError) -> Self {
        Rejection::Error(err)
    }
}

/// The structure text of `format` is chunked with when it can be streamed: formats whose text
/// is their decoded characters as they are (plain text, markdown, code). Others are parsed whole.
#[must_use]
pub fn streamable(format: crate::detect::Format) -> Option<Structure> {
    use crate::detect::Format;
    match format {
        Format::Plain | Format::Code(_) => Some(Structure::Plain),
        Format::Markdown => Some(Structure::Markdown),
        _ => None,
    }
}

/// Extracts the text of a whole object.
///
/// `declared_charset` is the `charset=` of the object's content type, if any; `max_text_bytes`
/// caps the extracted text (formats such as JSON can expand).
///
/// # Errors
/// A [`Rejection`] saying why there is no text.
pub fn extract(
    bytes: &[u8],
    detected: Detected,
    declared_charset: Option<&str>,
    max_text_bytes: usize,
) -> Result<Extracted, Rejection> {
    let format = detected.format;
    match format.family() {
        Family::Text => {}
        Family::Document | Family::Image | Family::Audio | Family::Video => {
            return Err(Rejection::Skip {
                reason: SkipReason::UnsupportedFormat,
                message: format!("{} files are not read as text", format.name()),
            });
        }
        Family::Other => {
            return Err(Rejection::Skip {
                reason: SkipReason::UnsupportedFormat,
                message: format!(
                    "content is {}, not text or a supported media format",
                    match format {
                        crate::detect::Format::Binary(name) =>
                            format!("a {name} archive or binary"),
                        _ => "binary data of no known format".to_owned(),
                    }
                ),
            });
        }
    }
    let hint = detected.text_hint.unwrap_or(crate::detect::TextHint::Bytes);
    let decoded = charset::decode(bytes, hint, declared_charset)?;
    let (text, structure, items) = text::extract(format, &decoded, max_text_bytes)?;
    if text.len() > max_text_bytes {
        return Err(Rejection::Error(FileError::permanent(
            ErrorCode::LimitExceeded,
            format!(
                "extracted text is {} bytes, over the limit of {max_text_bytes} (limits.max_text_bytes)",
                text.len()
            ),
        )));
    }
    Ok(Extracted {
        text,
        structure,
        pages: Vec::new(),
        items,
        note: None,
    })
}

//! Text in images, recognised by Tesseract run as a child process: a crash or a runaway
//! recognition costs that process, never the worker, and it is killed at its time limit.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::error::{ErrorCode, FileError};

/// Longest part of Tesseract's own error output quoted in an error.
const QUOTED_CHARS: usize = 200;

/// How to run Tesseract.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ocr {
    /// The program (`tesseract`, or a path).
    pub program: String,
    /// Tesseract languages (`eng`, `eng+deu`).
    pub languages: String,
    /// Longest one image may take.
    pub timeout: Duration,
}

/// Formats Tesseract reads (through Leptonica) from its standard input.
#[must_use]
pub fn readable(format: &str) -> bool {
    matches!(format, "png" | "jpeg" | "tiff" | "bmp" | "gif" | "webp")
}

impl Ocr {
    /// The text Tesseract recognises in `image` (an encoded image file), trimmed.
    ///
    /// # Errors
    /// `OCR_UNAVAILABLE` when the program cannot be run; `LIMIT_EXCEEDED` past the time limit;
    /// `CORRUPT_FILE` when Tesseract cannot read the image.
    pub async fn recognise(&self, image: &[u8]) -> Result<String, FileError> {
        let mut child = Command::new(&self.program)
            .env_clear()
            .envs(super::child_env())
            .args(["stdin", "stdout", "-l", &self.languages, "--psm", "3"])
            // One core per recognition: the caller holds one CPU slot for it.
            .env("OMP_THREAD_LIMIT", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|err| {
                FileError::permanent(
                    ErrorCode::OcrUnavailable,
                    format!(
                        "OCR was asked for, but `{}` could not be run ({err}); install \
                         tesseract-ocr or set images.tesseract",
                        self.program
                    ),
                )
            })?;
        let mut stdin = child.stdin.take();
        let run = async {
            if let Some(stdin) = stdin.as_mut() {
                // A Tesseract that stops reading early says why on stderr; that is reported.
                let _ = stdin.write_all(image).await;
            }
            drop(stdin);
            child.wait_with_output().await
        };
        let output = match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(output)) => output,
            Ok(Err(err)) => {
                return Err(FileError::transient(
                    ErrorCode::OcrUnavailable,
                    format!("running `{}`: {err}", self.program),
                ));
            }
            // Dropping the child kills it.
            Err(_) => {
                return Err(FileError::permanent(
                    ErrorCode::LimitExceeded,
                    format!(
                        "OCR took longer than images.ocr_timeout_secs ({} s)",
                        self.timeout.as_secs()
                    ),
                ));
            }
        };
        if !output.status.success() {
            let said: String = String::from_utf8_lossy(&output.stderr)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .collect::<Vec<_>>()
                .join("; ")
                .chars()
                .take(QUOTED_CHARS)
                .collect();
            return Err(FileError::permanent(
                ErrorCode::CorruptFile,
                format!(
                    "tesseract could not read the image ({}): {said}",
                    output.status
                ),
            ));
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }
}

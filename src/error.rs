//! The stable, machine-readable codes that reach `FILE_ERROR` and `FILES_SKIPPED` events, and
//! whether a failure is worth retrying; and why configuration could not be loaded. A leaf:
//! every component uses these without importing upwards.

use std::fmt;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Whether retrying the same work can succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A passing fault (network, throttling, a busy dependency): retry with backoff.
    Transient,
    /// The input itself is wrong: report once, do not retry.
    Permanent,
}

/// Stable error codes carried by `FILE_ERROR` events. Never renamed; new ones may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The object could not be read (permissions, I/O error, vanished while reading).
    ReadFailed,
    /// The bytes are not what their format says (truncated, malformed, undecodable).
    CorruptFile,
    /// Text declared in one encoding (BOM or charset) is not valid in it.
    InvalidEncoding,
    /// The object is larger than a configured limit.
    TooLarge,
    /// A decoder limit (dimensions, allocation, time) was reached.
    LimitExceeded,
    /// The object's format is not supported.
    UnsupportedFormat,
    /// The source answered that the key does not exist.
    NoSuchKey,
    /// The source answered that the bucket does not exist.
    NoSuchBucket,
    /// The credentials were refused.
    AccessDenied,
    /// The job carries no credentials this worker can use.
    NoCredentials,
    /// The endpoint is not allowed by configuration.
    EndpointNotAllowed,
    /// The source could not be reached or kept failing; retryable.
    SourceUnavailable,
    /// The object was replaced while it was being streamed and records of the old version had
    /// already left; retryable (the retry reads the new version).
    ObjectChanged,
    /// Output could not be delivered downstream.
    SinkFailed,
    /// A bug in ingestd (a decoder panicked); the file is reported, the worker goes on.
    Internal,
    /// Embeddings were asked for, but the model is not configured or its provider has no key.
    EmbeddingNotConfigured,
    /// The embedding provider refused the API key.
    EmbeddingAuth,
    /// The embedding provider kept answering 429; retryable.
    EmbeddingRateLimited,
    /// The embedding provider answered something that is not one valid vector per chunk.
    EmbeddingBadResponse,
    /// The embedding provider could not be reached, timed out or kept failing (5xx); retryable.
    EmbeddingUnavailable,
    /// The embedding provider refused the request itself (400-class other than auth and 429).
    EmbeddingRejected,
    /// OCR was asked for, but Tesseract cannot be run.
    OcrUnavailable,
    /// The transcription provider failed: retryable after the attempts for 429, 5xx, timeouts
    /// and garbage; permanent when it refused the key or the request.
    TranscriptionFailed,
    /// The document is encrypted with a password it was not given (a PDF with a user password).
    PasswordProtected,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ReadFailed => "READ_FAILED",
            ErrorCode::CorruptFile => "CORRUPT_FILE",
            ErrorCode::InvalidEncoding => "INVALID_ENCODING",
            ErrorCode::TooLarge => "TOO_LARGE",
            ErrorCode::LimitExceeded => "LIMIT_EXCEEDED",
            ErrorCode::UnsupportedFormat => "UNSUPPORTED_FORMAT",
            ErrorCode::NoSuchKey => "NO_SUCH_KEY",
            ErrorCode::NoSuchBucket => "NO_SUCH_BUCKET",
            ErrorCode::AccessDenied => "ACCESS_DENIED",
            ErrorCode::NoCredentials => "NO_CREDENTIALS",
            ErrorCode::EndpointNotAllowed => "ENDPOINT_NOT_ALLOWED",
            ErrorCode::SourceUnavailable => "SOURCE_UNAVAILABLE",
            ErrorCode::ObjectChanged => "OBJECT_CHANGED",
            ErrorCode::SinkFailed => "SINK_FAILED",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::EmbeddingNotConfigured => "EMBEDDING_NOT_CONFIGURED",
            ErrorCode::EmbeddingAuth => "EMBEDDING_AUTH",
            ErrorCode::EmbeddingRateLimited => "EMBEDDING_RATE_LIMITED",
            ErrorCode::EmbeddingBadResponse => "EMBEDDING_BAD_RESPONSE",
            ErrorCode::EmbeddingUnavailable => "EMBEDDING_UNAVAILABLE",
            ErrorCode::EmbeddingRejected => "EMBEDDING_REJECTED",
            ErrorCode::OcrUnavailable => "OCR_UNAVAILABLE",
            ErrorCode::TranscriptionFailed => "TRANSCRIPTION_FAILED",
            ErrorCode::PasswordProtected => "PASSWORD_PROTECTED",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a file produced no chunks without being an error (`FILES_SKIPPED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SkipReason {
    /// The object has no bytes.
    Empty,
    /// The object is larger than the configured limit for its kind.
    TooLarge,
    /// The format is recognised but not (yet) processed, or not recognised at all.
    UnsupportedFormat,
    /// The object is unchanged since the last sync.
    Unchanged,
}

impl SkipReason {
    /// The reason as it appears on the wire.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::Empty => "EMPTY",
            SkipReason::TooLarge => "TOO_LARGE",
            SkipReason::UnsupportedFormat => "UNSUPPORTED_FORMAT",
            SkipReason::Unchanged => "UNCHANGED",
        }
    }
}

/// A failure to process one file, as reported in its `FILE_ERROR` event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FileError {
    /// The stable code.
    pub code: ErrorCode,
    /// One human sentence: what was being done, to what, and what went wrong.
    pub message: String,
    /// Whether the same work may succeed later.
    pub kind: ErrorKind,
}

impl FileError {
    /// A permanent failure.
    pub fn permanent(code: ErrorCode, message: impl Into<String>) -> Self {
        FileError {
            code,
            message: message.into(),
            kind: ErrorKind::Permanent,
        }
    }

    /// A failure that may pass.
    pub fn transient(code: ErrorCode, message: impl Into<String>) -> Self {
        FileError {
            code,
            message: message.into(),
            kind: ErrorKind::Transient,
        }
    }

    /// Whether retrying may succeed.
    #[must_use]
    pub fn retryable(&self) -> bool {
        self.kind == ErrorKind::Transient
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_serde() {
        for code in [
            ErrorCode::CorruptFile,
            ErrorCode::InvalidEncoding,
            ErrorCode::NoSuchBucket,
            ErrorCode::EmbeddingNotConfigured,
            ErrorCode::EmbeddingRateLimited,
            ErrorCode::EmbeddingBadResponse,
            ErrorCode::PasswordProtected,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
        for reason in [
            SkipReason::Empty,
            SkipReason::TooLarge,
            SkipReason::UnsupportedFormat,
        ] {
            assert_eq!(serde_json::to_value(reason).unwrap(), reason.as_str());
        }
    }
}

/// Why configuration could not be loaded. Every variant names the file, variable or field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown or mistyped fields.
    #[error("parsing config {origin}: {message}")]
    Parse {
        /// The file, or "defaults".
        origin: String,
        /// What the parser said (it names the field).
        message: String,
    },
    /// An override variable is malformed.
    #[error("environment override {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong with it.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid config: {field}: {message}")]
    Invalid {
        /// The dotted field name, e.g. `chunking.chunk_overlap`.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
}

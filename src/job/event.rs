//! Events: what happened to each file and request, on `ingest.events` (routing key = event
//! name) and in `ingestd sync --events`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::detect::MediaType;
use crate::error::{ErrorCode, SkipReason};

/// One event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// Always [`super::SCHEMA_VERSION`].
    pub schema_version: u32,
    /// What happened, with its details.
    #[serde(flatten)]
    pub kind: EventKind,
    /// The request this event belongs to.
    pub request_id: Option<String>,
    /// The customer.
    pub customer_id: Option<String>,
    /// The data source.
    pub data_source_id: Option<String>,
    /// The file, for file events.
    pub file: Option<FileRef>,
    /// When the event was emitted, RFC 3339 UTC.
    pub emitted_at: String,
}

/// The event name (`event`) and its details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "event", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventKind {
    /// Processing of a file started.
    FileSyncing {},
    /// A file was processed and all its chunks emitted.
    FileReady {
        /// Chunks emitted.
        chunk_count: usize,
        /// Tokens in those chunks.
        token_count: usize,
        /// Anything a consumer should know about the records (an audio or video file without a
        /// transcript says why).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// Chunk ids this file had at its previous sync and no longer has: downstream stores
        /// drop them (state only; absent when none).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        removed_chunk_ids: Vec<String>,
    },
    /// A file failed.
    FileError {
        /// Stable code.
        error_code: ErrorCode,
        /// One human sentence.
        message: String,
        /// Whether the same work may succeed later.
        retryable: bool,
    },
    /// A file was deliberately not processed.
    FilesSkipped {
        /// Stable reason.
        reason: SkipReason,
        /// One human sentence.
        message: String,
        /// `UNCHANGED`: the objects skipped, up to 1,000 per event (absent for other reasons,
        /// which concern `file`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        files: Vec<FileRef>,
    },
    /// Downstream should drop this file's chunks.
    FileDeleted {},
    /// A data source was connected.
    DataSourceReady {},
    /// Every file of a request was processed.
    AllFilesProcessed(ProcessedCounts),
    /// The request named more files than allowed; the rest were not synced.
    FileSyncLimitReached {
        /// The limit.
        limit: u64,
    },
}

/// Totals of a request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProcessedCounts {
    /// Files that became `FILE_READY`.
    pub files_ready: u64,
    /// Files that became `FILE_ERROR`.
    pub files_failed: u64,
    /// Files reported in `FILES_SKIPPED` (unchanged ones included).
    pub files_skipped: u64,
    /// Files reported in `FILE_DELETED` (a sync with state found them gone).
    #[serde(default)]
    pub files_deleted: u64,
    /// Chunks emitted.
    pub chunk_count: u64,
    /// Tokens in those chunks.
    pub token_count: u64,
}

/// The file an event is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FileRef {
    /// The bucket; null for local files.
    pub bucket: Option<String>,
    /// The key or relative path.
    pub key: String,
    /// The object version, when known.
    pub etag: Option<String>,
    /// The media type, when detected.
    pub media_type: Option<MediaType>,
    /// The format, when detected.
    pub format: Option<String>,
}

impl EventKind {
    /// `FILES_SKIPPED` (`UNCHANGED`) of `files`: the worker's and `ingestd sync --state`'s.
    #[must_use]
    pub fn unchanged(files: Vec<FileRef>) -> Self {
        EventKind::FilesSkipped {
            reason: SkipReason::Unchanged,
            message: "unchanged since the last sync (same ETag and options)".to_owned(),
            files,
        }
    }
}

impl Event {
    /// An event stamped now.
    #[must_use]
    pub fn new(kind: EventKind, file: Option<FileRef>) -> Self {
        Event {
            schema_version: super::SCHEMA_VERSION,
            kind,
            request_id: None,
            customer_id: None,
            data_source_id: None,
            file,
            emitted_at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
        }
    }

    /// The event name, also its routing key.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self.kind {
            EventKind::FileSyncing {} => "FILE_SYNCING",
            EventKind::FileReady { .. } => "FILE_READY",
            EventKind::FileError { .. } => "FILE_ERROR",
            EventKind::FilesSkipped { .. } => "FILES_SKIPPED",
            EventKind::FileDeleted {} => "FILE_DELETED",
            EventKind::DataSourceReady {} => "DATA_SOURCE_READY",
            EventKind::AllFilesProcessed(_) => "ALL_FILES_PROCESSED",
            EventKind::FileSyncLimitReached { .. } => "FILE_SYNC_LIMIT_REACHED",
        }
    }
}

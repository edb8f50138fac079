//! One object through the stages: fetch → detect → extract → chunk → records. Shared by the
//! one-shot `sync` command and the worker; knows nothing about where the output goes.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::chunk::Chunker;
use crate::detect::{self, Detected};
use crate::error::{ErrorCode, FileError, SkipReason};
use crate::extract::{self, Rejection};
use crate::job::{ChunkRecord, ChunkingInfo, Event, EventKind, FileInfo, FileRef, SCHEMA_VERSION};
use crate::source::{ObjectMeta, Source, SourceKind};

/// Everything that is the same for every file of one request.
#[derive(Debug, Clone)]
pub struct Request {
    /// The chunker for the request's size, overlap and encoding.
    pub chunker: Arc<Chunker>,
    /// Prepend the file name to each chunk's text.
    pub prepend_filename: bool,
    /// Tags copied onto every record.
    pub tags: BTreeMap<String, Value>,
    /// Correlation ids copied onto every record and event.
    pub request_id: Option<String>,
    /// The customer.
    pub customer_id: Option<String>,
    /// The data source.
    pub data_source_id: Option<String>,
    /// Text objects larger than this are skipped before download.
    pub max_text_object_bytes: u64,
    /// Extracted text larger than this fails the file.
    pub max_text_bytes: usize,
}

/// What processing one file produced: its records and the events that frame them.
#[derive(Debug, Clone)]
pub struct FileOutput {
    /// `FILE_SYNCING`, stamped when processing started.
    pub started: Event,
    /// The chunk records, in order.
    pub records: Vec<ChunkRecord>,
    /// `FILE_READY`, `FILE_ERROR` or `FILES_SKIPPED`.
    pub outcome: Event,
    /// Bytes read from the source.
    pub bytes_read: u64,
}

impl FileOutput {
    /// The file's outcome event's kind.
    #[must_use]
    pub fn outcome_kind(&self) -> &EventKind {
        &self.outcome.kind
    }
}

/// Processes one object end to end. Never fails: every problem becomes the outcome event.
pub async fn process<S: Source>(
    source: &S,
    mut object: ObjectMeta,
    request: Arc<Request>,
) -> FileOutput {
    let mut file_ref = FileRef {
        bucket: object.bucket.clone(),
        key: object.key.clone(),
        etag: object.etag.clone(),
        media_type: None,
        format: None,
    };
    let started = request.event(EventKind::FileSyncing {}, Some(file_ref.clone()));
    let finish = |file_ref: FileRef, records: Vec<ChunkRecord>, kind, bytes_read| {
        let outcome = request.event(kind, Some(file_ref));
        tracing::debug!(key = %outcome.file.as_ref().map_or("", |f| f.key.as_str()), outcome = outcome.name(), chunks = records.len(), bytes_read, "file processed");
        FileOutput {
            started: started.clone(),
            records,
            outcome,
            bytes_read,
        }
    };
    if object.size == 0 {
        let kind = skipped(SkipReason::Empty, "the object has no bytes".to_owned());
        return finish(file_ref, Vec::new(), kind, 0);
    }
    if object.size > request.max_text_object_bytes {
        let message = format!(
            "the object is {} bytes, over limits.max_text_object_bytes ({})",
            object.size, request.max_text_object_bytes
        );
        return finish(
            file_ref,
            Vec::new(),
            skipped(SkipReason::TooLarge, message),
            0,
        );
    }
    let bytes = match source.read(&object, request.max_text_object_bytes).await {
        Ok(fetched) => {
            // Describe the version that was read, not the one that was listed.
            object.etag = fetched.etag.or(object.etag);
            object.content_type = fetched.content_type.or(object.content_type);
            object.size = fetched.bytes.len() as u64;
            fetched.bytes
        }
        Err(err) if err.code == ErrorCode::TooLarge => {
            return finish(
                file_ref,
                Vec::new(),
                skipped(SkipReason::TooLarge, err.message),
                0,
            );
        }
        Err(err) => return finish(file_ref, Vec::new(), failed(&err), 0),
    };
    let bytes_read = bytes.len() as u64;
    let kind = source.kind();
    let work_request = Arc::clone(&request);
    let work = tokio::task::spawn_blocking(move || convert(&bytes, &object, kind, &work_request));
    match work.await {
        Ok(Converted { detected, result }) => {
            file_ref.media_type = detected.format.media_type();
            file_ref.format = Some(detected.format.name().to_owned());
            match result {
                Ok((records, etag)) => {
                    file_ref.etag = Some(etag);
                    let kind = EventKind::FileReady {
                        chunk_count: records.len(),
                        token_count: records.iter().map(|r| r.token_count).sum(),
                    };
                    finish(file_ref, records, kind, bytes_read)
                }
                Err(Rejection::Skip { reason, message }) => {
                    finish(file_ref, Vec::new(), skipped(reason, message), bytes_read)
                }
                Err(Rejection::Error(err)) => {
                    finish(file_ref, Vec::new(), failed(&err), bytes_read)
                }
            }
        }
        Err(join) => {
            // A panic in a decoder is a bug to fix, but it costs one file, not the worker.
            let message = if join.is_panic() {
                format!(
                    "processing {} crashed inside a decoder; the file was not processed",
                    file_ref.key
                )
            } else {
                format!("processing {} was cancelled", file_ref.key)
            };
            let err = FileError::permanent(ErrorCode::Internal, message);
            finish(file_ref, Vec::new(), failed(&err), bytes_read)
        }
    }
}

fn skipped(reason: SkipReason, message: String) -> EventKind {
    EventKind::FilesSkipped { reason, message }
}

fn failed(err: &FileError) -> EventKind {
    EventKind::FileError {
        error_code: err.code,
        message: err.message.clone(),
        retryable: err.retryable(),
    }
}

struct Converted {
    detected: Detected,
    result: Result<(Vec<ChunkRecord>, String), Rejection>,
}

/// The CPU-bound part, on a blocking thread.
fn convert(bytes: &[u8], object: &ObjectMeta, kind: SourceKind, request: &Request) -> Converted {
    let (mime, charset) = split_content_type(object.content_type.as_deref());
    let detected = detect::detect(bytes, mime.as_deref(), &object.key);
    let result = extract::extract(bytes, detected, charset.as_deref(), request.max_text_bytes).map(
        |extracted| {
            let etag = object.etag.clone().unwrap_or_else(|| content_etag(bytes));
            let file = FileInfo {
                bucket: object.bucket.clone(),
                key: object.key.clone(),
                etag: Some(etag.clone()),
                size: object.size,
                last_modified: object
                    .last_modified
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                content_type: object.content_type.clone(),
                media_type: detected.format.media_type(),
                format: detected.format.name().to_owned(),
                data_source_metadata: kind.data_source_metadata().to_owned(),
                file_metadata: kind.file_metadata().to_owned(),
            };
            (
                records(&extracted.text, extracted.structure, &file, request),
                etag,
            )
        },
    );
    Converted { detected, result }
}

/// Cuts the text and builds one record per chunk.
fn records(
    text: &str,
    structure: crate::chunk::Structure,
    file: &FileInfo,
    request: &Request,
) -> Vec<ChunkRecord> {
    let chunker = &request.chunker;
    let prefix = request.prepend_filename.then(|| {
        let name = file.key.rsplit('/').next().unwrap_or(&file.key);
        format!("{name}\n")
    });
    // The prefix counts toward chunk_size; one token of slack covers the rare merge across
    // the seam, and the final count below is exact either way.
    let capacity = prefix.as_ref().map_or(chunker.size(), |p| {
        chunker.size().saturating_sub(chunker.count(p) + 1).max(1)
    });
    let chunking = ChunkingInfo {
        chunk_size: chunker.size(),
        chunk_overlap: chunker.overlap(),
        encoding: chunker.encoding(),
    };
    chunker
        .chunk_within(text, structure, capacity)
        .into_iter()
        .enumerate()
        .map(|(index, chunk)| {
            let body = &text[chunk.range.clone()];
            let (text, token_count) = match &prefix {
                Some(prefix) => {
                    let joined = format!("{prefix}{body}");
                    let count = chunker.count(&joined);
                    if count <= chunker.size() {
                        (joined, count)
                    } else {
                        (body.to_owned(), chunk.token_count)
                    }
                }
                None => (body.to_owned(), chunk.token_count),
            };
            ChunkRecord {
                schema_version: SCHEMA_VERSION,
                chunk_id: chunk_id(file, &chunking, prefix.is_some(), index, &chunk.range),
                request_id: request.request_id.clone(),
                customer_id: request.customer_id.clone(),
                data_source_id: request.data_source_id.clone(),
                file: file.clone(),
                chunk_index: index,
                text,
                token_count,
                range: [chunk.range.start, chunk.range.end],
                page: None,
                time_range_ms: None,
                tags: request.tags.clone(),
                embedding: None,
                embedding_model: None,
                chunking,
            }
        })
        .collect()
}

/// Same object version + same options + same place ⇒ same id.
fn chunk_id(
    file: &FileInfo,
    chunking: &ChunkingInfo,
    prepended: bool,
    index: usize,
    range: &std::ops::Range<usize>,
) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in [
        "ingestd-chunk-v1",
        file.bucket.as_deref().unwrap_or(""),
        &file.key,
        file.etag.as_deref().unwrap_or(""),
        chunking.encoding.as_str(),
        &chunking.chunk_size.to_string(),
        &chunking.chunk_overlap.to_string(),
        if prepended { "prepend" } else { "" },
        &index.to_string(),
        &format!("{}-{}", range.start, range.end),
    ] {
        hasher.update(part.as_bytes());
        hasher.update(&[0]);
    }
    hasher.finalize().to_hex()[..32].to_owned()
}

/// A version tag for objects without one (local files): a hash of the content.
fn content_etag(bytes: &[u8]) -> String {
    format!("\"{}\"", &blake3::hash(bytes).to_hex()[..32])
}

/// `text/csv; charset=windows-1252` → (`text/csv`, `windows-1252`).
fn split_content_type(content_type: Option<&str>) -> (Option<String>, Option<String>) {
    let Some(content_type) = content_type else {
        return (None, None);
    };
    let mut parts = content_type.split(';');
    let mime = parts.next().map(|m| m.trim().to_owned());
    let charset = parts.find_map(|p| {
        let (key, value) = p.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| value.trim().trim_matches('"').to_owned())
    });
    (mime, charset)
}

impl Request {
    /// An event of this request, about `file` when it concerns one.
    #[must_use]
    pub fn event(&self, kind: EventKind, file: Option<FileRef>) -> Event {
        let mut event = Event::new(kind, file);
        event.request_id.clone_from(&self.request_id);
        event.customer_id.clone_from(&self.customer_id);
        event.data_source_id.clone_from(&self.data_source_id);
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_split_into_mime_and_charset() {
        assert_eq!(
            split_content_type(Some("text/csv; Charset=\"windows-1252\"")),
            (Some("text/csv".to_owned()), Some("windows-1252".to_owned()))
        );
        assert_eq!(split_content_type(None), (None, None));
    }
}

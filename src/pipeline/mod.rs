//! One object through the stages: open → detect → extract → chunk → records, streamed. Shared by the
//! one-shot `sync` command and the worker; knows nothing about where the output goes.

mod document;
mod image;
mod media;
mod records;
mod text;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, FuturesOrdered};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::chunk::Chunker;
use crate::detect::{self, Detected, Family};
use crate::embed::{Embedding, Route};
use crate::error::{ErrorCode, FileError, SkipReason};
use crate::extract::Rejection;
use crate::extract::media::MediaLimits;
use crate::job::{
    ChunkRecord, ChunkingInfo, EncodedRecord, Event, EventKind, FileInfo, FileRef, MediaInfo,
    SCHEMA_VERSION,
};
use crate::source::{ObjectMeta, Source, SourceKind};
use crate::telemetry::{self, Stage};
use crate::transcribe::{Ask, Transcriber};

use records::{Cursor, Segment, Timed, chunk_id, cut_whole, records_of, send, send_blocking};

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
    /// Objects larger than this are skipped before download.
    pub max_object_bytes: u64,
    /// Text formats parsed whole larger than this are skipped after reading their head.
    pub max_text_object_bytes: u64,
    /// Extracted text larger than this fails the file.
    pub max_text_bytes: usize,
    /// Images claiming more pixels than this fail the file.
    pub max_image_pixels: u64,
    /// Put EXIF GPS coordinates on image records.
    pub image_gps: bool,
    /// Recognise the text in images (`use_ocr`), and how.
    pub ocr: Option<crate::extract::ocr::Ocr>,
    /// Images larger than this are not read whole (for OCR, or a header not at the start).
    pub max_image_read_bytes: u64,
    /// Slots for CPU-bound work (decoding, chunking), shared by every file: one per core, so
    /// many files can be in flight without more than that being decoded at once.
    pub cpu: Arc<Semaphore>,
    /// Whether records get vectors, and from which model.
    pub embedding: Embedding,
    /// Limits on audio and video files.
    pub media: MediaLimits,
    /// How containers symphonia does not read are described.
    pub ffprobe: crate::extract::ffprobe::Ffprobe,
    /// How audio symphonia cannot decode is decoded.
    pub ffmpeg: crate::extract::ffmpeg::Ffmpeg,
    /// Where transcripts of audio and video come from; without one, why (said on
    /// `FILE_READY`), and audio and video get metadata records only.
    pub transcriber: Result<Arc<Transcriber>, String>,
    /// What the job asks of transcripts.
    pub transcription: Ask,
    /// The longest an audio or video file may take to be described, decoded and transcribed.
    pub max_media: std::time::Duration,
    /// How documents are read, and what one may cost (`[documents]`).
    pub documents: crate::extract::document::DocumentsConfig,
    /// Where chunks must end besides their size: pages, rows.
    pub bounds: Bounds,
    /// Each file gets its record and events without being read (`skip_file_processing`).
    pub skip_processing: bool,
}

/// Where chunks must end besides their size, for text that has pages or rows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bounds {
    /// Chunks never cross a page of a paged document (`set_page_as_boundary`).
    pub pages: bool,
    /// Chunks of tables, spreadsheets and JSON end only where rows or items do, with at most
    /// this many in each (`split_rows`, `max_items_per_chunk`); `None` chunks them as text.
    pub rows: Option<usize>,
}

/// What leaves the pipeline for one file, in order: `FILE_SYNCING`, the chunk records, then the
/// outcome event (`FILE_READY`, `FILE_ERROR` or `FILES_SKIPPED`).
#[derive(Debug, Clone)]
pub enum Emitted {
    /// A status event.
    Event(Box<Event>),
    /// A chunk record on its way to a later stage of the pipeline (embedding, which adds its
    /// vector). Records leave the pipeline encoded.
    Record(Box<ChunkRecord>),
    /// A chunk record as it leaves the pipeline: serialized where it was made final.
    Encoded(Box<EncodedRecord>),
}

/// Where a file's output goes. Bounded: a slow consumer slows the file down instead of letting
/// records pile up in memory.
pub type Emitter = mpsc::Sender<Emitted>;

/// A CPU slot held by the thread doing its chunking work, with a core of its own for that
/// thread where slots have them ([`crate::cores`]). Made on that thread; between its making
/// and its drop the thread does the work and nothing else. The core is given back before the
/// slot (fields drop in order).
pub(super) struct Working {
    _core: Option<crate::cores::OnCore>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Working {
    pub(super) fn on_core(slot: Option<OwnedSemaphorePermit>) -> Working {
        Working {
            _core: slot.as_ref().and_then(|_| crate::cores::on_core()),
            _slot: slot,
        }
    }
}

/// The tally of one processed file (its outcome event has been emitted too).
#[derive(Debug, Clone)]
pub struct FileReport {
    /// The outcome event.
    pub outcome: Event,
    /// Bytes read from the source.
    pub bytes_read: u64,
}

/// How a file ended, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// `FILE_READY`, with its counts.
    Ready {
        /// Chunk records.
        chunks: u64,
        /// Tokens in them.
        tokens: u64,
    },
    /// `FILE_ERROR`.
    Failed,
    /// `FILES_SKIPPED`.
    Skipped,
}

impl Tally {
    /// `ready`, `failed` or `skipped`.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Tally::Ready { .. } => "ready",
            Tally::Failed => "failed",
            Tally::Skipped => "skipped",
        }
    }
}

impl FileReport {
    /// How the file ended.
    #[must_use]
    pub fn tally(&self) -> Tally {
        match &self.outcome.kind {
            EventKind::FileReady {
                chunk_count,
                token_count,
                ..
            } => Tally::Ready {
                chunks: *chunk_count as u64,
                tokens: *token_count as u64,
            },
            EventKind::FileError { .. } => Tally::Failed,
            _ => Tally::Skipped,
        }
    }

    /// The file's media type as reports name it; `OTHER` when it was never detected.
    #[must_use]
    pub fn media_label(&self) -> &'static str {
        self.outcome
            .file
            .as_ref()
            .and_then(|f| f.media_type)
            .map_or("OTHER", crate::detect::MediaType::as_str)
    }
}

/// Text is streamed through the chunker in segments of about this many bytes; objects up to
/// this size are read whole.
pub const SEGMENT_BYTES: usize = 4 * 1024 * 1024;

/// A segment is cut whatever it holds once it reaches this size (text with almost no
/// boundaries, where chunks cannot be told apart sooner).
const MAX_SEGMENT_BYTES: usize = 4 * SEGMENT_BYTES;

/// Opens of one object when it is replaced before any of its records left.
const MAX_OPENS: u32 = 3;

/// How a file ended.
enum Outcome {
    Ready { chunks: usize, tokens: usize },
    Skipped(SkipReason, String),
    Failed(FileError),
}

impl From<FileError> for Outcome {
    fn from(err: FileError) -> Self {
        Outcome::Failed(err)
    }
}

impl From<Rejection> for Outcome {
    fn from(rejection: Rejection) -> Self {
        match rejection {
            Rejection::Skip { reason, message } => Outcome::Skipped(reason, message),
            Rejection::Error(err) => Outcome::Failed(err),
        }
    }
}

/// The receiving end went away: stop working on the file.
fn closed() -> FileError {
    FileError::permanent(ErrorCode::SinkFailed, "the output was closed")
}

/// Processes one object end to end, emitting its events and records to `out`. Never fails:
/// every problem becomes the outcome event.
pub async fn process<S: Source>(
    source: &S,
    object: ObjectMeta,
    request: Arc<Request>,
    out: &Emitter,
) -> FileReport {
    let mut file = Processing {
        file_ref: FileRef {
            bucket: object.bucket.clone(),
            key: object.key.clone(),
            etag: object.etag.clone(),
            media_type: None,
            format: None,
        },
        object,
        request,
        kind: source.kind(),
        bytes_read: 0,
        emitted: 0,
        note: None,
    };
    let started = file
        .request
        .event(EventKind::FileSyncing {}, Some(file.file_ref.clone()));
    let embedding = file.request.embedding.clone();
    let outcome = if out.send(Emitted::Event(Box::new(started))).await.is_err() {
        Outcome::Failed(closed())
    } else {
        match &embedding {
            Embedding::Skip => file.run(source, out).await,
            Embedding::Unavailable(err) => Outcome::Failed(err.clone()),
            Embedding::Model(route) => {
                let (records, chunked) = mpsc::channel(EMBEDDING_WINDOW);
                let run = async {
                    let records = records;
                    file.run(source, &records).await
                };
                // A failed embedding closes `chunked`, which stops the run at its next record.
                match tokio::join!(run, embed_records(route, chunked, out)) {
                    (_, Err(err)) => Outcome::Failed(err),
                    (outcome, Ok(())) => outcome,
                }
            }
        }
    };
    let kind = match outcome {
        Outcome::Ready { chunks, tokens } => EventKind::FileReady {
            chunk_count: chunks,
            token_count: tokens,
            message: file.note.take(),
            removed_chunk_ids: Vec::new(),
        },
        Outcome::Skipped(reason, message) => EventKind::FilesSkipped {
            reason,
            message,
            files: Vec::new(),
        },
        Outcome::Failed(err) => EventKind::FileError {
            error_code: err.code,
            retryable: err.retryable(),
            message: err.message,
        },
    };
    let outcome = file.request.event(kind, Some(file.file_ref));
    tracing::debug!(key = %file.object.key, outcome = outcome.name(), bytes_read = file.bytes_read, "file processed");
    // A closed output has nobody left to tell.
    let _ = out.send(Emitted::Event(Box::new(outcome.clone()))).await;
    FileReport {
        outcome,
        bytes_read: file.bytes_read,
    }
}

/// Records of one file that may wait for their vectors at once, and their bytes of text (held
/// twice: on the record and in the batch); batches of several files fill up from them.
const EMBEDDING_WINDOW: usize = 512;
const EMBEDDING_WINDOW_BYTES: usize = 4 * 1024 * 1024;

/// Passes `chunked` on to `out` in order, each record with its vector from `route`. Records are
/// queued for embedding as they come, up to [`EMBEDDING_WINDOW`] ahead of the oldest one still
/// waiting, so chunking goes on while earlier batches are out.
async fn embed_records(
    route: &Route,
    mut chunked: mpsc::Receiver<Emitted>,
    out: &Emitter,
) -> Result<(), FileError> {
    // Each with the bytes of text it holds.
    let mut waiting: FuturesOrdered<BoxFuture<'static, Result<(usize, Emitted), FileError>>> =
        FuturesOrdered::new();
    let mut open = true;
    let mut held = 0;
    loop {
        let room = waiting.len() < EMBEDDING_WINDOW && held < EMBEDDING_WINDOW_BYTES;
        tokio::select! {
            Some(done) = waiting.next(), if !waiting.is_empty() => {
                let (text, done) = done?;
                held -= text;
                out.send(done).await.map_err(|_| closed())?;
            }
            item = chunked.recv(), if open && room => match item {
                Some(Emitted::Record(mut record)) if !record.text.is_empty() => {
                    let text = record.text.len();
                    held += text;
                    let vector = route.submit(record.text.clone(), record.token_count).await?;
                    let model = route.name().to_owned();
                    waiting.push_back(Box::pin(async move {
                        record.embedding = Some(vector.await?);
                        record.embedding_model = Some(model);
                        Ok((text, records::encoded(*record)?))
                    }));
                }
                // Records without text (media files without a transcript) have no vector.
                Some(Emitted::Record(record)) => {
                    let done = records::encoded(*record).map(|done| (0, done));
                    waiting.push_back(Box::pin(std::future::ready(done)));
                }
                Some(other) => waiting.push_back(Box::pin(std::future::ready(Ok((0, other))))),
                None => open = false,
            },
            else => return Ok(()),
        }
    }
}

/// One file on its way through the stages.
struct Processing {
    object: ObjectMeta,
    file_ref: FileRef,
    request: Arc<Request>,
    kind: SourceKind,
    bytes_read: u64,
    /// Records sent so far.
    emitted: usize,
    /// Said on `FILE_READY`: why an audio or video file has no transcript.
    note: Option<String>,
}

/// An object as opened: its first bytes, the rest of its body, and whether `head` is all of it.
struct Read {
    head: Vec<u8>,
    body: BoxStream<'static, Result<Bytes, FileError>>,
    ended: bool,
}

impl Processing {
    async fn run<S: Source>(&mut self, source: &S, out: &Emitter) -> Outcome {
        let limits = (
            self.request.max_object_bytes,
            self.request.max_text_object_bytes,
        );
        if self.request.skip_processing {
            return self.register(out).await;
        }
        if self.object.size == 0 {
            return Outcome::Skipped(SkipReason::Empty, "the object has no bytes".to_owned());
        }
        if self.object.size > limits.0 {
            return Outcome::Skipped(
                SkipReason::TooLarge,
                format!(
                    "the object is {} bytes, over limits.max_object_bytes ({})",
                    self.object.size, limits.0
                ),
            );
        }
        let mut opens = 0;
        loop {
            opens += 1;
            let outcome = match self.read_head(source).await {
                Ok((head, body, ended)) => self.convert(source, head, body, ended, out).await,
                Err(err) => Outcome::Failed(err),
            };
            match outcome {
                // Replaced before any record left: read the new version from the start.
                Outcome::Failed(err)
                    if err.code == ErrorCode::ObjectChanged
                        && self.emitted == 0
                        && opens < MAX_OPENS =>
                {
                    tracing::debug!(key = %self.object.key, "object replaced while being read; reading it again");
                }
                outcome => return outcome,
            }
        }
    }

    /// Opens the object and reads its first segment (all of it when it is small).
    async fn read_head<S: Source>(
        &mut self,
        source: &S,
    ) -> Result<(Vec<u8>, BoxStream<'static, Result<Bytes, FileError>>, bool), FileError> {
        let opened = source.open(&self.object).await?;
        // Describe the version that is read, not the one that was listed.
        if opened.etag.is_some() {
            self.object.etag = opened.etag;
            self.file_ref.etag.clone_from(&self.object.etag);
        }
        if opened.content_type.is_some() {
            self.object.content_type = opened.content_type;
        }
        let mut body = opened.body;
        let mut head = Vec::with_capacity(
            usize::try_from(self.object.size).map_or(SEGMENT_BYTES, |n| n.min(SEGMENT_BYTES)),
        );
        let ended = self.fill(&mut body, &mut head, SEGMENT_BYTES).await?;
        Ok((head, body, ended))
    }

    /// Appends to `bytes` until it holds `up_to` bytes or the body ends (then `true`).
    async fn fill(
        &mut self,
        body: &mut BoxStream<'static, Result<Bytes, FileError>>,
        bytes: &mut Vec<u8>,
        up_to: usize,
    ) -> Result<bool, FileError> {
        while bytes.len() < up_to {
            let started = Instant::now();
            let piece = body.next().await;
            telemetry::timed(Stage::Download, started.elapsed());
            match piece {
                Some(piece) => {
                    let piece = piece?;
                    self.bytes_read += piece.len() as u64;
                    bytes.extend_from_slice(&piece);
                }
                None => return Ok(true),
            }
        }
        Ok(false)
    }

    /// Detects what the object is and hands it to its family.
    async fn convert<S: Source>(
        &mut self,
        source: &S,
        head: Vec<u8>,
        body: BoxStream<'static, Result<Bytes, FileError>>,
        ended: bool,
        out: &Emitter,
    ) -> Outcome {
        let (mime, charset) = split_content_type(self.object.content_type.as_deref());
        let detected = detect::detect(&head, mime.as_deref(), &self.object.key);
        self.file_ref.media_type = detected.format.media_type();
        self.file_ref.format = Some(detected.format.name().to_owned());
        match detected.format.family() {
            Family::Image => self.describe_image(head, body, ended, detected, out).await,
            Family::Audio | Family::Video => {
                drop(body);
                self.describe_media(source, head, ended, detected, out)
                    .await
            }
            _ if crate::extract::document::spooled(detected.format) => {
                let read = Read { head, body, ended };
                self.read_document(read, detected, out).await
            }
            Family::Text | Family::Document | Family::Other => {
                let read = Read { head, body, ended };
                self.read_text(read, detected, charset, out).await
            }
        }
    }

    /// `skip_file_processing`: the file's one record, from what the listing said of it, without
    /// reading it. Its format is what its declared type and name say.
    async fn register(&mut self, out: &Emitter) -> Outcome {
        let (mime, _) = split_content_type(self.object.content_type.as_deref());
        let format = detect::declared(mime.as_deref(), &self.object.key);
        let detected = Detected {
            format,
            text_hint: None,
        };
        self.file_ref.media_type = format.media_type();
        self.file_ref.format = Some(format.name().to_owned());
        let file = file_info(&self.object, detected, self.kind);
        self.note = Some("registered without being read (skip_file_processing)".to_owned());
        self.send_one(self.empty_record(file, None), out).await
    }

    /// Sends the one record of a file without text.
    async fn send_media_record(
        &mut self,
        file: FileInfo,
        media: MediaInfo,
        out: &Emitter,
    ) -> Outcome {
        self.send_one(self.empty_record(file, Some(media)), out)
            .await
    }

    /// Sends a file's only record.
    async fn send_one(&mut self, record: ChunkRecord, out: &Emitter) -> Outcome {
        if let Err(err) = send(vec![record], &self.request, out).await {
            return Outcome::Failed(err);
        }
        self.emitted = 1;
        Outcome::Ready {
            chunks: 1,
            tokens: 0,
        }
    }

    /// The one record of a file without text: its facts in `media`, when it has any.
    fn empty_record(&self, file: FileInfo, media: Option<MediaInfo>) -> ChunkRecord {
        let request = &self.request;
        let chunking = request.chunking();
        ChunkRecord {
            schema_version: SCHEMA_VERSION,
            chunk_id: chunk_id(&file, &chunking, false, 0, &(0..0)),
            request_id: request.request_id.clone(),
            customer_id: request.customer_id.clone(),
            data_source_id: request.data_source_id.clone(),
            file: Arc::new(file),
            chunk_index: 0,
            text: String::new(),
            token_count: 0,
            range: [0, 0],
            page: None,
            last_page: None,
            time_range_ms: None,
            tags: request.tags.clone(),
            embedding: None,
            embedding_model: None,
            chunking,
            media,
        }
    }

    /// Text recognised in an image or heard in a recording, chunked like plain text; every
    /// record carries `media`, and the time range of the speech in it when `times` (byte range
    /// of each transcript segment → its time) says.
    async fn cut_recognised(
        &mut self,
        text: String,
        file: FileInfo,
        media: MediaInfo,
        times: Vec<Timed>,
        out: &Emitter,
    ) -> Outcome {
        let (request, sender, file) = (Arc::clone(&self.request), out.clone(), Arc::new(file));
        let slot = self.cpu_slot().await;
        let work = tokio::task::spawn_blocking(move || {
            let segment = Segment {
                media: Some(&media),
                times: &times,
                ..Segment::whole(&text, crate::chunk::Structure::Plain)
            };
            cut_whole(&segment, &file, &request, slot, &sender)
        });
        self.records_cut(work).await
    }

    /// Waits for the blocking work that cuts a whole text into records.
    async fn records_cut(
        &mut self,
        work: tokio::task::JoinHandle<Result<Outcome, FileError>>,
    ) -> Outcome {
        match self.blocking(work).await {
            Ok(outcome) => {
                if let Outcome::Ready { chunks, .. } = outcome {
                    self.emitted = chunks;
                }
                outcome
            }
            Err(err) => Outcome::Failed(err),
        }
    }

    /// Waits for a free CPU slot. The semaphore is never closed; if it were, the work would
    /// run without a slot rather than not at all.
    async fn cpu_slot(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.request.cpu).acquire_owned().await.ok()
    }

    /// Waits for work on a blocking thread; a panic there costs this file, not the worker.
    async fn blocking<T>(
        &self,
        work: tokio::task::JoinHandle<Result<T, FileError>>,
    ) -> Result<T, FileError> {
        work.await.unwrap_or_else(|join| {
            if join.is_panic() {
                return Err(self.crashed());
            }
            let message = format!("processing {} was cancelled", self.object.key);
            Err(FileError::permanent(ErrorCode::Internal, message))
        })
    }

    /// The error of a file whose decoder or chunker panicked.
    fn crashed(&self) -> FileError {
        FileError::permanent(
            ErrorCode::Internal,
            format!(
                "processing {} crashed inside a decoder; the file was not processed",
                self.object.key
            ),
        )
    }
}

fn file_info(object: &ObjectMeta, detected: Detected, kind: SourceKind) -> FileInfo {
    FileInfo {
        bucket: object.bucket.clone(),
        key: object.key.clone(),
        etag: object.etag.clone(),
        size: object.size,
        last_modified: object
            .last_modified
            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        content_type: object.content_type.clone(),
        media_type: detected.format.media_type(),
        format: detected.format.name().to_owned(),
        data_source_metadata: kind.data_source_metadata().to_owned(),
        file_metadata: kind.file_metadata().to_owned(),
    }
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

/// Bumped when the same bytes and options would give different records (a reader learns to
/// read more): stored objects are then processed again.
const RECORDS_VERSION: &str = "records-v1";

impl Request {
    /// Whether a record is final as it is cut: no later stage changes it (it gets no vector),
    /// so it leaves the pipeline encoded by the thread that cut it. Else it goes on to the
    /// embedding stage, which encodes it with its vector ([`process`]).
    fn final_at_cut(&self) -> bool {
        !matches!(self.embedding, Embedding::Model(_))
    }

    /// A hash of every option that shapes this request's records: two requests with the same
    /// fingerprint make the same records of the same object. `request_id` is left out: it
    /// correlates, it does not shape.
    #[must_use]
    pub fn fingerprint(&self) -> String {
        let embedding = match &self.embedding {
            Embedding::Skip => "none".to_owned(),
            Embedding::Model(route) => format!("model:{}", route.name()),
            Embedding::Unavailable(_) => "unavailable".to_owned(),
        };
        let parts = serde_json::json!([
            RECORDS_VERSION,
            self.chunker.encoding().as_str(),
            self.chunker.size(),
            self.chunker.overlap(),
            self.prepend_filename,
            self.tags,
            self.customer_id,
            self.data_source_id,
            embedding,
            self.ocr.as_ref().map(|ocr| &ocr.languages),
            self.image_gps,
            self.bounds.pages,
            self.bounds.rows,
            self.transcriber.is_ok(),
            self.transcription.speaker_labels,
            self.transcription.detect_language,
            self.skip_processing,
        ]);
        blake3::hash(parts.to_string().as_bytes()).to_hex()[..32].to_owned()
    }

    /// The chunking options records of this request are made with.
    #[must_use]
    pub fn chunking(&self) -> ChunkingInfo {
        ChunkingInfo {
            chunk_size: self.chunker.size(),
            chunk_overlap: self.chunker.overlap(),
            encoding: self.chunker.encoding(),
        }
    }

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

//! One object through the stages: open → detect → extract → chunk → records, streamed. Shared by the
//! one-shot `sync` command and the worker; knows nothing about where the output goes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, FuturesOrdered};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::chunk::Chunker;
use crate::detect::{self, Detected, Family, TextHint};
use crate::embed::{Embedding, Route};
use crate::error::{ErrorCode, FileError, SkipReason};
use crate::extract::media::{self, Cutter, Input, MediaLimits, Piece};
use crate::extract::{self, Rejection, StreamDecoder, ffmpeg};
use crate::job::{
    ChunkRecord, ChunkingInfo, Event, EventKind, FileInfo, FileRef, MediaInfo, SCHEMA_VERSION,
};
use crate::source::{ObjectMeta, Source, SourceKind};
use crate::transcribe::{Ask, Spoken, Transcriber};

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
}

/// What leaves the pipeline for one file, in order: `FILE_SYNCING`, the chunk records, then the
/// outcome event (`FILE_READY`, `FILE_ERROR` or `FILES_SKIPPED`).
#[derive(Debug, Clone)]
pub enum Emitted {
    /// A status event.
    Event(Box<Event>),
    /// A chunk record.
    Record(Box<ChunkRecord>),
}

/// Where a file's output goes. Bounded: a slow consumer slows the file down instead of letting
/// records pile up in memory.
pub type Emitter = mpsc::Sender<Emitted>;

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
        },
        Outcome::Skipped(reason, message) => EventKind::FilesSkipped { reason, message },
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
    let mut waiting: FuturesOrdered<BoxFuture<'static, Result<Emitted, FileError>>> =
        FuturesOrdered::new();
    let mut open = true;
    let mut held = 0;
    loop {
        let room = waiting.len() < EMBEDDING_WINDOW && held < EMBEDDING_WINDOW_BYTES;
        tokio::select! {
            Some(done) = waiting.next(), if !waiting.is_empty() => {
                let done = done?;
                if let Emitted::Record(record) = &done {
                    held -= record.text.len();
                }
                out.send(done).await.map_err(|_| closed())?;
            }
            item = chunked.recv(), if open && room => match item {
                // Records without text (media files without a transcript) have no vector.
                Some(Emitted::Record(mut record)) if !record.text.is_empty() => {
                    held += record.text.len();
                    let vector = route.submit(record.text.clone(), record.token_count).await?;
                    let model = route.name().to_owned();
                    waiting.push_back(Box::pin(async move {
                        record.embedding = Some(vector.await?);
                        record.embedding_model = Some(model);
                        Ok(Emitted::Record(record))
                    }));
                }
                Some(other) => waiting.push_back(Box::pin(std::future::ready(Ok(other)))),
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

impl Processing {
    async fn run<S: Source>(&mut self, source: &S, out: &Emitter) -> Outcome {
        let limits = (
            self.request.max_object_bytes,
            self.request.max_text_object_bytes,
        );
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
            match body.next().await {
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

    async fn convert<S: Source>(
        &mut self,
        source: &S,
        mut head: Vec<u8>,
        mut body: BoxStream<'static, Result<Bytes, FileError>>,
        ended: bool,
        out: &Emitter,
    ) -> Outcome {
        let (mime, charset) = split_content_type(self.object.content_type.as_deref());
        let detected = detect::detect(&head, mime.as_deref(), &self.object.key);
        self.file_ref.media_type = detected.format.media_type();
        self.file_ref.format = Some(detected.format.name().to_owned());
        if detected.format.family() == Family::Image {
            return self.describe_image(head, body, ended, detected, out).await;
        }
        if matches!(detected.format.family(), Family::Audio | Family::Video) {
            drop(body);
            return self
                .describe_media(source, head, ended, detected, out)
                .await;
        }
        let hint = detected.text_hint.unwrap_or(TextHint::Bytes);
        let text = detected.format.family() == Family::Text;
        // A large text object streams when its format is taken as it is and its encoding can
        // be decoded piece by piece (not UTF-32); anything else is parsed whole.
        let streamable = extract::streamable(detected.format);
        let stream = match streamable {
            Some(structure) if text && !ended => {
                StreamDecoder::for_head(&head, hint, charset.as_deref())
                    .map(|decoder| (structure, decoder))
            }
            _ => None,
        };
        let parsed_whole = text && streamable.is_none();
        let read_whole = parsed_whole || (text && !ended && stream.is_none());
        let limit = self.request.max_text_object_bytes;
        if read_whole && self.object.size.max(head.len() as u64) > limit {
            let why = if parsed_whole {
                format!("{}, which is parsed whole", detected.format.name())
            } else {
                "text in an encoding that is decoded whole (UTF-32)".to_owned()
            };
            return Outcome::Skipped(
                SkipReason::TooLarge,
                format!(
                    "the object is {} bytes of {why}, over limits.max_text_object_bytes ({limit})",
                    self.object.size
                ),
            );
        }
        if let Some((structure, decoder)) = stream {
            return self
                .stream(head, body, decoder, structure, detected, out)
                .await
                .unwrap_or_else(Outcome::Failed);
        }
        if !ended && text {
            let cap = usize::try_from(limit)
                .unwrap_or(usize::MAX)
                .saturating_add(1);
            match self.fill(&mut body, &mut head, cap).await {
                Ok(true) if head.len() as u64 <= limit => {}
                Ok(_) => {
                    return Outcome::Skipped(
                        SkipReason::TooLarge,
                        format!(
                            "the object grew past limits.max_text_object_bytes ({limit}) while being read"
                        ),
                    );
                }
                Err(err) => return Outcome::Failed(err),
            }
        }
        drop(body);
        self.object.size = head.len() as u64;
        let (object, kind, request) = (self.object.clone(), self.kind, Arc::clone(&self.request));
        let sender = out.clone();
        let slot = self.cpu_slot().await;
        let work = tokio::task::spawn_blocking(move || -> Result<Outcome, FileError> {
            let extracted =
                match extract::extract(&head, detected, charset.as_deref(), request.max_text_bytes)
                {
                    Ok(extracted) => extracted,
                    Err(rejection) => return Ok(rejection.into()),
                };
            let mut object = object;
            if object.etag.is_none() {
                object.etag = Some(content_etag(&head));
            }
            let file = file_info(&object, detected, kind);
            let mut at = Cursor::default();
            let segment = Segment {
                text: &extracted.text,
                structure: extracted.structure,
                last: true,
                media: None,
                times: &[],
            };
            cut(&segment, &file, &request, &mut at, slot, &sender)?;
            Ok(Outcome::Ready {
                chunks: at.index,
                tokens: at.tokens,
            })
        });
        match self.blocking(work).await {
            Ok(outcome) => outcome,
            Err(err) => Outcome::Failed(err),
        }
    }

    /// An image: one record with its facts in `media` and no text, or with `use_ocr` the
    /// recognised text chunked like any text, each record carrying `media`.
    async fn describe_image(
        &mut self,
        mut head: Vec<u8>,
        mut body: BoxStream<'static, Result<Bytes, FileError>>,
        ended: bool,
        detected: Detected,
        out: &Emitter,
    ) -> Outcome {
        let format = detected.format.name();
        let ocr = self
            .request
            .ocr
            .clone()
            .filter(|_| extract::ocr::readable(format));
        // Described from the head alone; OCR needs the whole image.
        let mut whole = ended;
        if ocr.is_some() {
            if let Err(err) = self.read_whole_image(&mut head, &mut body, ended).await {
                return Outcome::Failed(err);
            }
            whole = true;
        }
        let (media, file, image) = loop {
            let (mut object, kind, request) =
                (self.object.clone(), self.kind, Arc::clone(&self.request));
            let slot = self.cpu_slot().await;
            let work = tokio::task::spawn_blocking(move || {
                let described = extract::image::describe(
                    &head,
                    format,
                    request.max_image_pixels,
                    request.image_gps,
                );
                drop(slot);
                if object.etag.is_none() {
                    object.etag = Some(content_etag(&head));
                }
                Ok((described, file_info(&object, detected, kind), head))
            });
            match self.blocking(work).await {
                Ok((Ok(media), file, image)) => break (media, file, image),
                // A header that is not at the start (many TIFFs keep their directory at the
                // end): read the rest, within images.max_read_bytes, and look again.
                Ok((Err(Rejection::Error(corrupt)), _, image))
                    if corrupt.code == ErrorCode::CorruptFile && !whole =>
                {
                    head = image;
                    match self.read_whole_image(&mut head, &mut body, false).await {
                        Ok(()) => whole = true,
                        // Too large to search: it stays a header that does not parse.
                        Err(err) if err.code == ErrorCode::LimitExceeded => {
                            return Outcome::Failed(FileError {
                                message: format!(
                                    "{} (not found in the first {} bytes; the rest is over \
                                     images.max_read_bytes)",
                                    corrupt.message, SEGMENT_BYTES
                                ),
                                ..corrupt
                            });
                        }
                        Err(err) => return Outcome::Failed(err),
                    }
                }
                Ok((Err(rejection), _, _)) => return rejection.into(),
                Err(err) => return Outcome::Failed(err),
            }
        };
        drop(body);
        let text = match &ocr {
            Some(ocr) => {
                // Tesseract runs on one core: it takes a CPU slot like any decoder.
                let slot = self.cpu_slot().await;
                let recognised = ocr.recognise(&image).await;
                drop(slot);
                match recognised {
                    Ok(text) => text,
                    Err(err) => return Outcome::Failed(err),
                }
            }
            None => String::new(),
        };
        drop(image);
        if !text.is_empty() {
            return self
                .cut_recognised(text, file, media, Vec::new(), out)
                .await;
        }
        self.send_media_record(file, media, out).await
    }

    /// Audio or video: one record with its facts in `media`; with a transcription provider,
    /// the transcript chunked instead, each record carrying `media` and `time_range_ms`.
    /// Describing, decoding and transcribing together may take `max_media`; past it the file
    /// is abandoned and its decoding stops at the next packet.
    async fn describe_media<S: Source>(
        &mut self,
        source: &S,
        head: Vec<u8>,
        ended: bool,
        detected: Detected,
        out: &Emitter,
    ) -> Outcome {
        let limit = self.request.max_media;
        let abandon = Abandon(Arc::new(AtomicBool::new(false)));
        // Boxed: the media path's state is large, and most files never take it.
        let work = Box::pin(async {
            if crate::extract::ffprobe::describes(detected.format.name()) {
                self.hear_other(source, &head, detected).await
            } else {
                let abandoned = Arc::clone(&abandon.0);
                self.hear_media(source, head, ended, detected, abandoned)
                    .await
            }
        });
        let transcribed = tokio::time::timeout(limit, work).await;
        drop(abandon);
        let (file, media, segments) = match transcribed {
            Ok(Ok(transcribed)) => transcribed,
            Ok(Err(outcome)) => return outcome,
            Err(_) => {
                return Outcome::Failed(FileError::permanent(
                    ErrorCode::LimitExceeded,
                    format!(
                        "describing, decoding and transcribing took longer than \
                         limits.max_media_secs ({} s); the file was abandoned",
                        limit.as_secs()
                    ),
                ));
            }
        };
        if segments.is_empty() {
            if self.note.is_none() {
                self.note = Some("no speech was heard in the audio".to_owned());
            }
            return self.send_media_record(file, media, out).await;
        }
        let (text, times) = transcript_text(&segments);
        self.cut_recognised(text, file, media, times, out).await
    }

    /// A container symphonia does not read, described by ffprobe from its head and, with a
    /// provider, its audio decoded by ffmpeg and transcribed.
    async fn hear_other<S: Source>(
        &mut self,
        source: &S,
        head: &[u8],
        detected: Detected,
    ) -> Result<(FileInfo, MediaInfo, Vec<Spoken>), Outcome> {
        let format = detected.format.name();
        let mut media = self.request.ffprobe.describe(head, format).await?;
        let limits = self.request.media;
        if let Some(duration) = media.duration_ms.filter(|d| *d > limits.max_duration_ms) {
            return Err(Outcome::Failed(media::too_long(format, duration, limits)));
        }
        let mut object = self.object.clone();
        if object.etag.is_none() {
            object.etag = Some(content_etag(head));
        }
        let mut file = file_info(&object, detected, self.kind);
        // An ASF or FLV holding only sound (WMA) is audio.
        if media.width.is_none() {
            file.media_type = Some(crate::detect::MediaType::Audio);
            self.file_ref.media_type = file.media_type;
        }
        let transcriber = match &self.request.transcriber {
            Ok(_) if media.sample_rate.is_none() => Err("the file has no audio track".to_owned()),
            transcriber => transcriber.clone(),
        };
        let segments = match transcriber {
            Ok(transcriber) => {
                self.hear_elsewhere(source, format, &transcriber, &mut media)
                    .await?
            }
            Err(why) => {
                self.note = Some(format!("no transcript was made: {why}"));
                Vec::new()
            }
        };
        Ok((file, media, segments))
    }

    /// Transcribes audio that ffmpeg decodes: the object is read again as a stream into it
    /// (the version already described, or `OBJECT_CHANGED`). The language heard, and the
    /// duration decoded when the header did not say, go to `media`.
    async fn hear_elsewhere<S: Source>(
        &mut self,
        source: &S,
        format: &str,
        transcriber: &Transcriber,
        media: &mut MediaInfo,
    ) -> Result<Vec<Spoken>, Outcome> {
        let opened = source.open(&self.object).await.map_err(Outcome::Failed)?;
        if let (Some(read), Some(described)) = (&opened.etag, &self.object.etag)
            && read != described
        {
            return Err(Outcome::Failed(FileError::transient(
                ErrorCode::ObjectChanged,
                format!(
                    "{} was replaced while being read; read it again",
                    self.object.key
                ),
            )));
        }
        let request = Arc::clone(&self.request);
        let cutter = Cutter::new(format, request.media, transcriber.max_piece_ms());
        let (pieces, next_piece) = mpsc::channel::<Piece>(1);
        let mut fed = 0;
        let decode = request.ffmpeg.decode(
            format,
            opened.body,
            cutter,
            pieces,
            Arc::clone(&request.cpu),
            &mut fed,
        );
        let (decoded, heard) =
            tokio::join!(decode, hear(transcriber, request.transcription, next_piece));
        self.bytes_read += fed;
        match (decoded, heard) {
            // Decoding stopped because the transcription failed: the failure is the news.
            (_, Err(err)) => Err(Outcome::Failed(err)),
            // ffmpeg cannot be run, or cannot read this file from a stream: the file keeps its
            // metadata record, and says why.
            (Err(err), _) if err.code == ErrorCode::UnsupportedFormat => {
                self.note = Some(format!("no transcript was made: {}", err.message));
                Ok(Vec::new())
            }
            (Err(err), _) => Err(Outcome::Failed(err)),
            (Ok(decoded), Ok((segments, language))) => {
                if let Some(said) = &decoded.stopped {
                    tracing::warn!(key = %self.object.key, decoded_ms = decoded.duration_ms, %said, "ffmpeg stopped with an error; the audio before it is kept");
                    self.note = Some(format!(
                        "the transcript stops at {:.1} s, where decoding failed: {said}",
                        decoded.duration_ms as f64 / 1000.0
                    ));
                }
                media.language = language;
                media.duration_ms = media.duration_ms.or(Some(decoded.duration_ms));
                Ok(segments)
            }
        }
    }

    /// Describes a media file and, with a provider, transcribes it. The container is read
    /// through random access, so a large object is not downloaded to be described; its audio
    /// is decoded on a blocking thread (under a CPU slot, released while a piece waits) and
    /// sent in pieces while the next piece decodes.
    async fn hear_media<S: Source>(
        &mut self,
        source: &S,
        head: Vec<u8>,
        ended: bool,
        detected: Detected,
        abandoned: Arc<AtomicBool>,
    ) -> Result<(FileInfo, MediaInfo, Vec<Spoken>), Outcome> {
        let format = detected.format.name();
        let rest = (!ended)
            .then(|| source.random_access(&self.object))
            .transpose()
            .map_err(Outcome::Failed)?;
        let input = Input::new(head, rest, self.object.size).cancelled_by(abandoned);
        let fetched = input.fetched();
        let transcriber = self.request.transcriber.clone();
        let (object, kind, request) = (self.object.clone(), self.kind, Arc::clone(&self.request));
        let (pieces, next_piece) = mpsc::channel::<Piece>(1);
        let (described, description) = tokio::sync::oneshot::channel();
        let (cpu, runtime) = (Arc::clone(&request.cpu), tokio::runtime::Handle::current());
        let max_piece_ms = transcriber.as_ref().ok().map(|t| t.max_piece_ms());
        let no_provider = transcriber.as_ref().err().cloned();
        let mut slot = self.cpu_slot().await;
        let work = tokio::task::spawn_blocking(move || {
            let probed = match media::probe(input, format, request.media) {
                Ok(probed) => probed,
                Err(rejection) => {
                    let _ = described.send(Err(rejection));
                    return Ok(None);
                }
            };
            let (file, why_not, foreign) =
                media_file(&probed, &object, detected, kind, no_provider.as_deref());
            if described
                .send(Ok((probed.media.clone(), file, why_not, foreign)))
                .is_err()
            {
                return Ok(None);
            }
            let Some(max_piece_ms) = max_piece_ms.filter(|_| probed.has_audio()) else {
                return Ok(None);
            };
            // The slot is held while decoding, not while a piece waits for the provider.
            let decoded = probed.decode(max_piece_ms, |piece| {
                slot = None;
                pieces.blocking_send(piece).map_err(|_| closed())?;
                slot = runtime.block_on(Arc::clone(&cpu).acquire_owned()).ok();
                // (Abandoning the file stops the decoder at its next packet.)
                Ok(())
            });
            drop(slot);
            decoded.map(Some)
        });
        let (mut media, file, why_not, foreign) = match description.await {
            Ok(Ok(description)) => description,
            Ok(Err(rejection)) => {
                self.bytes_read += fetched.load(Ordering::Relaxed);
                return Err(rejection.into());
            }
            // The blocking work ended without a word: it crashed.
            Err(_) => {
                return Err(match self.blocking(work).await {
                    Err(err) => Outcome::Failed(err),
                    Ok(_) => Outcome::Failed(closed()),
                });
            }
        };
        self.file_ref.media_type = file.media_type;
        self.note = why_not;
        // A codec without a decoder here: ffmpeg decodes it (symphonia's work ends at once,
        // having no audio to decode).
        if foreign && let Ok(transcriber) = &transcriber {
            drop(next_piece);
            self.blocking(work).await.map_err(Outcome::Failed)?;
            self.bytes_read += fetched.load(Ordering::Relaxed);
            let segments = self
                .hear_elsewhere(source, format, transcriber, &mut media)
                .await?;
            return Ok((file, media, segments));
        }
        let mut segments = Vec::new();
        let mut failed = None;
        if let Ok(transcriber) = &transcriber {
            match hear(transcriber, self.request.transcription, next_piece).await {
                Ok((transcript, language)) => {
                    segments = transcript;
                    media.language = language;
                }
                // Decoding stops at its next piece.
                Err(err) => failed = Some(err),
            }
        }
        let decoded = self.blocking(work).await;
        self.bytes_read += fetched.load(Ordering::Relaxed);
        if let Some(err) = failed {
            return Err(Outcome::Failed(err));
        }
        match decoded {
            Ok(Some(decoded)) if decoded.bad_packets > 0 => {
                tracing::warn!(key = %self.object.key, bad_packets = decoded.bad_packets, "damaged audio packets were skipped");
            }
            Ok(_) => {}
            // A feature the decoder lacks: the file keeps its metadata record, and says why.
            Err(err) if err.code == ErrorCode::UnsupportedFormat => {
                self.note = Some(format!("no transcript was made: {}", err.message));
                return Ok((file, media, Vec::new()));
            }
            Err(err) => return Err(Outcome::Failed(err)),
        }
        Ok((file, media, segments))
    }

    /// Sends the one record of a file without text.
    async fn send_media_record(
        &mut self,
        file: FileInfo,
        media: MediaInfo,
        out: &Emitter,
    ) -> Outcome {
        let record = self.media_record(file, media);
        if out.send(Emitted::Record(Box::new(record))).await.is_err() {
            return Outcome::Failed(closed());
        }
        self.emitted = 1;
        Outcome::Ready {
            chunks: 1,
            tokens: 0,
        }
    }

    /// The one record of a file without text: its facts in `media`.
    fn media_record(&self, file: FileInfo, media: MediaInfo) -> ChunkRecord {
        let request = &self.request;
        let chunking = request.chunking();
        ChunkRecord {
            schema_version: SCHEMA_VERSION,
            chunk_id: chunk_id(&file, &chunking, false, 0, &(0..0)),
            request_id: request.request_id.clone(),
            customer_id: request.customer_id.clone(),
            data_source_id: request.data_source_id.clone(),
            file,
            chunk_index: 0,
            text: String::new(),
            token_count: 0,
            range: [0, 0],
            page: None,
            time_range_ms: None,
            tags: request.tags.clone(),
            embedding: None,
            embedding_model: None,
            chunking,
            media: Some(media),
        }
    }

    /// Reads the rest of an image into `head` (for OCR, or a header not at its start), up to
    /// `max_image_read_bytes`.
    async fn read_whole_image(
        &mut self,
        head: &mut Vec<u8>,
        body: &mut BoxStream<'static, Result<Bytes, FileError>>,
        ended: bool,
    ) -> Result<(), FileError> {
        let limit = self.request.max_image_read_bytes;
        let cap = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .saturating_add(1);
        let whole = ended || self.fill(body, head, cap).await?;
        if whole && head.len() as u64 <= limit {
            return Ok(());
        }
        Err(FileError::permanent(
            ErrorCode::LimitExceeded,
            format!(
                "the image is over images.max_read_bytes ({limit}); it is not read whole (for \
                 OCR, or to find a header that is not at its start)"
            ),
        ))
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
        let (request, sender) = (Arc::clone(&self.request), out.clone());
        let slot = self.cpu_slot().await;
        let work = tokio::task::spawn_blocking(move || {
            let mut at = Cursor::default();
            let segment = Segment {
                text: &text,
                structure: crate::chunk::Structure::Plain,
                last: true,
                media: Some(&media),
                times: &times,
            };
            cut(&segment, &file, &request, &mut at, slot, &sender)?;
            Ok(Outcome::Ready {
                chunks: at.index,
                tokens: at.tokens,
            })
        });
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

    /// Streams text through the chunker segment by segment: memory is bounded by
    /// [`SEGMENT_BYTES`], not by the object's size.
    async fn stream(
        &mut self,
        head: Vec<u8>,
        mut body: BoxStream<'static, Result<Bytes, FileError>>,
        mut decoder: StreamDecoder,
        structure: crate::chunk::Structure,
        detected: Detected,
        out: &Emitter,
    ) -> Result<Outcome, FileError> {
        let file = Arc::new(file_info(&self.object, detected, self.kind));
        let mut text = String::with_capacity(SEGMENT_BYTES + SEGMENT_BYTES / 4);
        decoder.push(&head, false, &mut text)?;
        drop(head);
        let mut at = Cursor::default();
        // Text to gather before cutting; it grows when a cut could not tell where its chunks
        // end (a segment of one or two chunks), up to a cap where the cut is forced.
        let mut want = SEGMENT_BYTES;
        loop {
            let mut ended = false;
            while text.len() < want {
                let Some(piece) = body.next().await else {
                    decoder.push(&[], true, &mut text)?;
                    ended = true;
                    break;
                };
                let piece = piece?;
                self.bytes_read += piece.len() as u64;
                decoder.push(&piece, false, &mut text)?;
            }
            let (request, file, sender) =
                (Arc::clone(&self.request), Arc::clone(&file), out.clone());
            let last = ended || text.len() >= MAX_SEGMENT_BYTES;
            let slot = self.cpu_slot().await;
            let work = tokio::task::spawn_blocking(move || {
                let segment = Segment {
                    text: &text,
                    structure,
                    last,
                    media: None,
                    times: &[],
                };
                let done = cut(&segment, &file, &request, &mut at, slot, &sender)?;
                text.drain(..done);
                Ok((text, at, done))
            });
            let done;
            (text, at, done) = self.blocking(work).await?;
            self.emitted = at.index;
            want = if done == 0 {
                text.len() + SEGMENT_BYTES
            } else {
                SEGMENT_BYTES
            };
            if ended {
                return Ok(Outcome::Ready {
                    chunks: at.index,
                    tokens: at.tokens,
                });
            }
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
            let message = if join.is_panic() {
                format!(
                    "processing {} crashed inside a decoder; the file was not processed",
                    self.object.key
                )
            } else {
                format!("processing {} was cancelled", self.object.key)
            };
            Err(FileError::permanent(ErrorCode::Internal, message))
        })
    }
}

/// How records describe a media file; why it gets no transcript (when it does not); and
/// whether its audio is for ffmpeg to decode (a codec without a decoder here, in a container
/// ffmpeg reads from a stream).
fn media_file(
    probed: &media::Probed,
    object: &ObjectMeta,
    detected: Detected,
    kind: SourceKind,
    no_provider: Option<&str>,
) -> (FileInfo, Option<String>, bool) {
    let mut file = file_info(object, detected, kind);
    // A video container holding only sound (WebM or MP4 audio) is audio.
    if probed.media.width.is_none() && probed.media.sample_rate.is_some() {
        file.media_type = Some(crate::detect::MediaType::Audio);
    }
    let format = detected.format.name();
    let foreign = probed.foreign_codec.is_some() && ffmpeg::decodes(format);
    let why_not = match (no_provider, probed.no_audio.as_deref()) {
        (None, Some(why)) if foreign && probed.index_after_media => Some(format!(
            "{why}, and ffmpeg cannot decode it from a stream: the {format} file's index follows \
             its media"
        )),
        (None, Some(_)) if foreign => None,
        (Some(why), _) | (None, Some(why)) => Some(why.to_owned()),
        (None, None) => None,
    };
    let foreign = foreign && no_provider.is_none() && !probed.index_after_media;
    let why_not = why_not.map(|why| format!("no transcript was made: {why}"));
    (file, why_not, foreign)
}

/// The transcript of every piece `next` brings, in order, and the language first heard.
/// Dropping `next` on a failure stops the decoding that feeds it.
async fn hear(
    transcriber: &Transcriber,
    ask: Ask,
    mut next: mpsc::Receiver<Piece>,
) -> Result<(Vec<Spoken>, Option<String>), FileError> {
    let (mut segments, mut language) = (Vec::new(), None);
    while let Some(piece) = next.recv().await {
        let transcript = transcriber.transcribe(&piece, ask).await?;
        language = language.or(transcript.language);
        segments.extend(transcript.segments);
    }
    Ok((segments, language))
}

/// Abandons a media file's decoding when dropped: its reads fail and decoding stops at the
/// next packet, even when the file's future was dropped at a time limit.
struct Abandon(Arc<AtomicBool>);

impl Drop for Abandon {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// How far into a file's text the records have got.
#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    /// Index of the next chunk.
    index: usize,
    /// Byte offset in the file's text of the text being cut.
    offset: usize,
    /// Tokens emitted so far.
    tokens: usize,
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

/// Text to cut: a whole file's, or a segment of a streamed one.
struct Segment<'a> {
    text: &'a str,
    structure: crate::chunk::Structure,
    /// No text follows.
    last: bool,
    /// Facts of the image or recording the text was recognised in.
    media: Option<&'a MediaInfo>,
    /// For transcripts: where each spoken segment is in the text, and when it was said.
    times: &'a [Timed],
}

/// A transcript segment: its bytes in the transcript, and when it was said (ms).
type Timed = (std::ops::Range<usize>, [u64; 2]);

/// The time a chunk of a transcript covers: from the first segment it touches to the last.
fn time_range(times: &[Timed], range: &std::ops::Range<usize>) -> Option<[u64; 2]> {
    let mut touched = times
        .iter()
        .filter(|(bytes, _)| bytes.start < range.end && range.start < bytes.end);
    let mut span = touched.next()?.1;
    for (_, [start, end]) in touched {
        span = [span[0].min(*start), span[1].max(*end)];
    }
    Some(span)
}

/// A transcript as text, one segment per line (`Speaker A: …` when labelled), with where each
/// segment is in it.
fn transcript_text(segments: &[Spoken]) -> (String, Vec<Timed>) {
    let mut text = String::new();
    let mut times = Vec::with_capacity(segments.len());
    for segment in segments {
        if !text.is_empty() {
            text.push('\n');
        }
        let start = text.len();
        if let Some(speaker) = &segment.speaker {
            text.push_str("Speaker ");
            text.push_str(speaker);
            text.push_str(": ");
        }
        text.push_str(&segment.text);
        times.push((start..text.len(), [segment.start_ms, segment.end_ms]));
    }
    (text, times)
}

/// Cuts a segment (which starts at `at.offset` in the file's text) under a CPU `slot`, frees
/// the slot, then sends one record per chunk (from a blocking thread). Unless the segment is
/// the last, its final two chunks are held back: where they end depends on text not read yet.
/// Returns how many bytes of the segment are done with.
fn cut(
    segment: &Segment<'_>,
    file: &FileInfo,
    request: &Request,
    at: &mut Cursor,
    slot: Option<OwnedSemaphorePermit>,
    out: &Emitter,
) -> Result<usize, FileError> {
    let &Segment {
        text,
        structure,
        last,
        ..
    } = segment;
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
    let chunking = request.chunking();
    let chunks = chunker.chunk_within(text, structure, capacity);
    let keep = if last {
        chunks.len()
    } else {
        chunks.len().saturating_sub(2)
    };
    // Done with: everything when last; else up to the first chunk held back. With too few
    // chunks to tell where they end, only the blank text before the first one (if any).
    let done = if last {
        text.len()
    } else {
        chunks
            .get(keep)
            .map_or(text.len(), |chunk| chunk.range.start)
    };
    let mut records = Vec::with_capacity(keep);
    for chunk in &chunks[..keep] {
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
        let range = at.offset + chunk.range.start..at.offset + chunk.range.end;
        let record = ChunkRecord {
            schema_version: SCHEMA_VERSION,
            chunk_id: chunk_id(file, &chunking, prefix.is_some(), at.index, &range),
            request_id: request.request_id.clone(),
            customer_id: request.customer_id.clone(),
            data_source_id: request.data_source_id.clone(),
            file: file.clone(),
            chunk_index: at.index,
            text,
            token_count,
            range: [range.start, range.end],
            page: None,
            time_range_ms: time_range(segment.times, &chunk.range),
            tags: request.tags.clone(),
            embedding: None,
            embedding_model: None,
            chunking,
            media: segment.media.cloned(),
        };
        at.index += 1;
        at.tokens += token_count;
        records.push(record);
    }
    // The CPU work is done: free the slot before waiting for the writer, which may be busy
    // with another file that needs a slot to finish.
    drop(slot);
    for record in records {
        out.blocking_send(Emitted::Record(Box::new(record)))
            .map_err(|_| closed())?;
    }
    at.offset += done;
    Ok(done)
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

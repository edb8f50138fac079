//! What each job type does. Every output goes through [`Outputs`], which publishes with
//! confirms; the caller acks a job only after [`Outputs::finish`] has all of them.

use std::pin::pin;
use std::sync::Arc;

use futures::StreamExt;
use lapin::types::FieldTable;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};

use super::metrics::Metrics;
use crate::chunk::Chunker;
use crate::config::{Config, WorkerConfig};
use crate::detect::MediaType;
use crate::embed::Embedder;
use crate::error::{ErrorCode, FileError, SkipReason};
use crate::job::{
    ChunkRecord, DataSource, Event, EventKind, FileRef, ItemRecord, ItemType, Job, JobKind,
    ObjectSelector, SCHEMA_VERSION, SyncFiles, SyncObject, SyncOptions,
};
use crate::pipeline::{self, Bounds, Emitted, FileReport, Request};
use crate::sink::amqp::{Confirms, Message, PublishError, Publisher};
use crate::source::{Listed, ObjectMeta, S3Access, S3Credentials, S3Source, Source};
use crate::transcribe::{Ask, Transcriber};

/// What every job of this process shares.
pub struct Context {
    /// The whole configuration.
    pub config: Arc<Config>,
    /// Endpoint policy, S3 clients and the request rate cap.
    pub access: S3Access,
    /// CPU slots shared by every file of every job.
    pub cpu: Arc<Semaphore>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Embedding models and their providers.
    pub embedder: Embedder,
    /// The transcription provider, or why there is none.
    pub transcriber: Result<Arc<Transcriber>, String>,
}

/// How a job ended, when its outputs were all confirmed.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done (files that failed for good have their `FILE_ERROR`): ack.
    Done,
    /// A transient failure: try again later.
    Retry(String),
    /// The job can never succeed: dead-letter it with this code and reason.
    Refuse {
        /// Stable code.
        code: &'static str,
        /// A sentence for people.
        reason: String,
    },
}

/// Records a file may have waiting to be published before its processing pauses.
const RECORDS_IN_FLIGHT: usize = 256;

/// The outputs of one job: published with confirms, settled together.
pub struct Outputs<'a> {
    publisher: &'a Publisher,
    config: &'a WorkerConfig,
    confirms: Confirms,
}

impl<'a> Outputs<'a> {
    /// Outputs published on `publisher` to the exchanges of `config`.
    #[must_use]
    pub fn new(publisher: &'a Publisher, config: &'a WorkerConfig) -> Self {
        Outputs {
            publisher,
            config,
            confirms: Confirms::default(),
        }
    }

    async fn publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        value: &impl Serialize,
    ) -> Result<(), PublishError> {
        let payload = serde_json::to_vec(value).map_err(PublishError::Encode)?;
        let message = Message {
            exchange,
            routing_key,
            payload: &payload,
            headers: FieldTable::default(),
        };
        self.publisher.send(message, &mut self.confirms).await
    }

    async fn event(&mut self, event: &Event) -> Result<(), PublishError> {
        let config = self.config;
        self.publish(&config.events_exchange, event.name(), event)
            .await
    }

    async fn record(&mut self, record: &ChunkRecord) -> Result<(), PublishError> {
        let config = self.config;
        let routing_key = record.file.media_type.map_or("OTHER", MediaType::as_str);
        self.publish(&config.chunks_exchange, routing_key, record)
            .await
    }

    async fn item(&mut self, item: &ItemRecord) -> Result<(), PublishError> {
        let config = self.config;
        self.publish(&config.events_exchange, "ITEM", item).await
    }

    async fn job(&mut self, job: &Job) -> Result<(), PublishError> {
        let config = self.config;
        self.publish(&config.jobs_exchange, job.kind.name(), job)
            .await
    }

    /// Waits until the broker has confirmed every output.
    ///
    /// # Errors
    /// The first output that was not delivered.
    pub async fn finish(mut self) -> Result<(), PublishError> {
        self.confirms.settle().await
    }
}

/// Runs `job`, publishing its outputs to `out`.
///
/// # Errors
/// When an output could not be published: the job must not be acked.
pub async fn execute(
    job: &Job,
    ctx: &Context,
    out: &mut Outputs<'_>,
) -> Result<Outcome, PublishError> {
    match &job.kind {
        JobKind::SyncFiles(sync) => {
            if let [
                ObjectSelector {
                    bucket,
                    id: Some(key),
                    ..
                },
            ] = sync.ids.as_slice()
            {
                let target = Target {
                    bucket,
                    key,
                    listed: None,
                    force_embedding: false,
                };
                return sync_object(job, &sync.data_source, target, &sync.options, ctx, out).await;
            }
            fan_out(job, &sync.data_source, &sync.ids, &sync.options, ctx, out).await
        }
        JobKind::SyncObject(one) => {
            let listed = one.size.map(|size| ObjectMeta {
                bucket: Some(one.bucket.clone()),
                key: one.key.clone(),
                size,
                etag: one.etag.clone(),
                last_modified: one
                    .last_modified
                    .as_deref()
                    .and_then(|t| humantime::parse_rfc3339_weak(t).ok()),
                content_type: None,
            });
            let target = Target {
                bucket: &one.bucket,
                key: &one.key,
                listed,
                force_embedding: false,
            };
            sync_object(job, &one.data_source, target, &one.options, ctx, out).await
        }
        JobKind::ResyncFile(one) => {
            let target = Target {
                bucket: &one.bucket,
                key: &one.key,
                listed: None,
                force_embedding: one.force_embedding_generation,
            };
            sync_object(job, &one.data_source, target, &one.options, ctx, out).await
        }
        JobKind::DeleteFiles(delete) => {
            for selector in &delete.ids {
                let key = selector.id.clone().unwrap_or_default();
                let file = file_ref(&selector.bucket, key);
                out.event(&event(
                    job,
                    &delete.data_source,
                    EventKind::FileDeleted {},
                    Some(file),
                ))
                .await?;
            }
            Ok(Outcome::Done)
        }
        JobKind::SyncItems(items) => {
            catalog(job, &items.data_source, items.buckets.as_deref(), ctx, out).await
        }
        JobKind::ConnectDataSource(connect) => {
            let ds = &connect.data_source;
            let source = match open(ds, "", "", ctx).await {
                Ok(source) => source,
                Err(err) => return failed_without_file(job, ds, &err, out).await,
            };
            if let Err(err) = source.buckets().await {
                return failed_without_file(job, ds, &err, out).await;
            }
            out.event(&event(job, ds, EventKind::DataSourceReady {}, None))
                .await?;
            if connect.sync_items {
                return catalog(job, ds, None, ctx, out).await;
            }
            Ok(Outcome::Done)
        }
        JobKind::UpdateUsers(_) => Ok(Outcome::Refuse {
            code: "UNSUPPORTED_JOB",
            reason: "update_users needs the settings store, which this worker does not have yet"
                .to_owned(),
        }),
    }
}

/// After a job that names one object was abandoned at its deadline: that object's
/// `FILE_ERROR` (`LIMIT_EXCEEDED`), so its `FILE_SYNCING` does not stay without an outcome.
///
/// # Errors
/// When the event could not be published.
pub async fn timed_out(
    job: &Job,
    message: &str,
    retryable: bool,
    out: &mut Outputs<'_>,
) -> Result<(), PublishError> {
    let (ds, bucket, key) = match &job.kind {
        JobKind::SyncObject(one) => (&one.data_source, &one.bucket, &one.key),
        JobKind::ResyncFile(one) => (&one.data_source, &one.bucket, &one.key),
        JobKind::SyncFiles(sync) => match sync.ids.as_slice() {
            [
                ObjectSelector {
                    bucket,
                    id: Some(key),
                    ..
                },
            ] => (&sync.data_source, bucket, key),
            _ => return Ok(()),
        },
        _ => return Ok(()),
    };
    let kind = EventKind::FileError {
        error_code: ErrorCode::LimitExceeded,
        message: message.to_owned(),
        retryable,
    };
    out.event(&event(job, ds, kind, Some(file_ref(bucket, key.clone()))))
        .await
}

/// An event of `job` about `file`.
fn event(job: &Job, ds: &DataSource, kind: EventKind, file: Option<FileRef>) -> Event {
    let mut event = Event::new(kind, file);
    event.request_id.clone_from(&job.request_id);
    event.customer_id.clone_from(&job.customer_id);
    event.data_source_id.clone_from(&ds.id);
    event
}

fn file_ref(bucket: &str, key: String) -> FileRef {
    FileRef {
        bucket: Some(bucket.to_owned()),
        key,
        etag: None,
        media_type: None,
        format: None,
    }
}

fn file_error(err: &FileError) -> EventKind {
    EventKind::FileError {
        error_code: err.code,
        message: err.message.clone(),
        retryable: err.retryable(),
    }
}

/// The job's credentials. Stored data sources (by `id` alone) need a store this worker does not
/// have yet.
fn credentials(ds: &DataSource) -> Result<S3Credentials, FileError> {
    match (&ds.access_key, &ds.access_key_secret) {
        (Some(access_key), Some(secret_key)) => Ok(S3Credentials {
            access_key: access_key.clone(),
            secret_key: secret_key.clone(),
        }),
        _ => Err(FileError::permanent(
            ErrorCode::NoCredentials,
            "the job's data_source has no access_key and access_key_secret; stored data \
             sources are not available to this worker",
        )),
    }
}

async fn open(
    ds: &DataSource,
    bucket: &str,
    prefix: &str,
    ctx: &Context,
) -> Result<S3Source, FileError> {
    let credentials = credentials(ds)?;
    ctx.access
        .open(ds.endpoint_url.as_deref(), &credentials, bucket, prefix)
        .await
}

/// A failure that concerns the whole data source: one `FILE_ERROR` without a file; retried when
/// transient.
async fn failed_without_file(
    job: &Job,
    ds: &DataSource,
    err: &FileError,
    out: &mut Outputs<'_>,
) -> Result<Outcome, PublishError> {
    if err.retryable() {
        return Ok(Outcome::Retry(format!("{}: {}", err.code, err.message)));
    }
    out.event(&event(job, ds, file_error(err), None)).await?;
    Ok(Outcome::Done)
}

/// The per-request settings of a sync job, from its options and the configured defaults.
fn request(
    job: &Job,
    ds: &DataSource,
    options: &SyncOptions,
    force_embedding: bool,
    ctx: &Context,
) -> Result<Arc<Request>, Outcome> {
    let chunking = &ctx.config.chunking;
    let limits = &ctx.config.limits;
    let invalid = |reason: String| Outcome::Refuse {
        code: "INVALID_JOB",
        reason,
    };
    let chunker = Chunker::new(
        options.encoding.unwrap_or(chunking.encoding),
        options.chunk_size.unwrap_or(chunking.chunk_size),
        options.chunk_overlap.unwrap_or(chunking.chunk_overlap),
    )
    .map_err(|err| invalid(err.to_string()))?;
    let files = options.file_sync_config.clone().unwrap_or_default();
    if let Some(service) = &files.transcription_service {
        let names = &ctx.config.transcription.service_names;
        if !names.iter().any(|name| name.eq_ignore_ascii_case(service)) {
            return Err(invalid(format!(
                "transcription_service `{service}` is not available here: audio and video are \
                 transcribed by the configured provider (transcription.service_names: {})",
                names.join(", ")
            )));
        }
    }
    let chunks_only = files.generate_chunks_only.unwrap_or(false);
    let rows = match (
        options.max_items_per_chunk,
        files.split_rows.unwrap_or(false),
    ) {
        (Some(0), _) => {
            return Err(invalid(
                "max_items_per_chunk must be at least 1 (or absent)".to_owned(),
            ));
        }
        (Some(max), _) => Some(max),
        (None, true) => Some(usize::MAX),
        (None, false) => None,
    };
    // `force_embedding_generation` (resync_file) embeds even when the job says skip;
    // `generate_chunks_only` never embeds (Carbon: it overrides the other two).
    let embedding = ctx
        .embedder
        .plan(
            chunks_only || (options.skip_embedding_generation && !force_embedding),
            options.embedding_model.as_deref(),
            chunker.size(),
        )
        .map_err(invalid)?;
    Ok(Arc::new(Request {
        chunker: Arc::new(chunker),
        prepend_filename: options
            .prepend_filename_to_chunks
            .unwrap_or(chunking.prepend_filename),
        tags: options.tags.clone(),
        request_id: job.request_id.clone(),
        customer_id: job.customer_id.clone(),
        data_source_id: ds.id.clone(),
        max_object_bytes: limits.max_object_bytes,
        max_text_object_bytes: limits.max_text_object_bytes,
        max_text_bytes: limits.max_text_bytes,
        max_image_pixels: limits.max_image_pixels,
        image_gps: ctx.config.images.include_gps,
        ocr: options
            .use_ocr
            .unwrap_or(false)
            .then(|| ctx.config.images.ocr()),
        max_image_read_bytes: ctx.config.images.max_read_bytes,
        cpu: Arc::clone(&ctx.cpu),
        embedding,
        media: limits.media(),
        ffprobe: ctx.config.media.ffprobe(),
        ffmpeg: ctx.config.media.ffmpeg(),
        transcriber: ctx.transcriber.clone(),
        transcription: options
            .file_sync_config
            .as_ref()
            .map(|files| Ask {
                speaker_labels: files.include_speaker_labels.unwrap_or(false),
                detect_language: files.detect_audio_language.unwrap_or(false),
            })
            .unwrap_or_default(),
        max_media: limits.max_media(),
        documents: ctx.config.documents.clone(),
        bounds: Bounds {
            pages: options.set_page_as_boundary.unwrap_or(false),
            rows,
        },
        skip_processing: files.skip_file_processing.unwrap_or(false),
    }))
}

/// The object a job names.
struct Target<'a> {
    bucket: &'a str,
    key: &'a str,
    /// What the listing said of it (fan-out children): then it is not looked up again.
    listed: Option<ObjectMeta>,
    /// Embed even when the options skip (`resync_file`'s `force_embedding_generation`).
    force_embedding: bool,
}

/// One object through the pipeline, its outputs published as they come.
async fn sync_object(
    job: &Job,
    ds: &DataSource,
    target: Target<'_>,
    options: &SyncOptions,
    ctx: &Context,
    out: &mut Outputs<'_>,
) -> Result<Outcome, PublishError> {
    let Target {
        bucket,
        key,
        listed,
        force_embedding,
    } = target;
    let request = match request(job, ds, options, force_embedding, ctx) {
        Ok(request) => request,
        Err(refusal) => return Ok(refusal),
    };
    let found = match (open(ds, bucket, "", ctx).await, listed) {
        (Ok(source), Some(object)) => Ok((source, object)),
        (Ok(source), None) => source.head(key).await.map(|object| (source, object)),
        (Err(err), _) => Err(err),
    };
    let report = match found {
        Ok((source, object)) => process(&source, object, request, out).await?,
        Err(err) => {
            let file = file_ref(bucket, key.to_owned());
            let started = request.event(EventKind::FileSyncing {}, Some(file.clone()));
            let outcome = request.event(file_error(&err), Some(file));
            out.event(&started).await?;
            out.event(&outcome).await?;
            FileReport {
                outcome,
                bytes_read: 0,
            }
        }
    };
    ctx.metrics.file_done(&report);
    match &report.outcome.kind {
        EventKind::FileError {
            retryable: true,
            error_code,
            message,
        } => Ok(Outcome::Retry(format!("{error_code}: {message}"))),
        _ => Ok(Outcome::Done),
    }
}

/// Runs the pipeline on one object while publishing what it emits.
async fn process(
    source: &S3Source,
    object: ObjectMeta,
    request: Arc<Request>,
    out: &mut Outputs<'_>,
) -> Result<FileReport, PublishError> {
    let (sender, mut emitted) = mpsc::channel(RECORDS_IN_FLIGHT);
    let work = async move {
        let report = pipeline::process(source, object, request, &sender).await;
        drop(sender);
        report
    };
    let publish = async move {
        while let Some(item) = emitted.recv().await {
            match item {
                Emitted::Event(event) => out.event(&event).await?,
                Emitted::Record(record) => out.record(&record).await?,
            }
        }
        Ok::<(), PublishError>(())
    };
    // If publishing fails, `emitted` is dropped and the pipeline stops at its next send.
    let (report, published) = tokio::join!(work, publish);
    published?;
    Ok(report)
}

/// `sync_files` over prefixes, buckets or several keys: one `sync_object` job per object,
/// published with confirms, listing page by page.
async fn fan_out(
    job: &Job,
    ds: &DataSource,
    selectors: &[ObjectSelector],
    options: &SyncOptions,
    ctx: &Context,
    out: &mut Outputs<'_>,
) -> Result<Outcome, PublishError> {
    let child = |bucket: &str, key: String, listed: Option<&ObjectMeta>| {
        let job_id = job
            .job_id
            .as_ref()
            .map(|parent| format!("{parent}/{}", blake3::hash(key.as_bytes()).to_hex()));
        Job {
            schema_version: SCHEMA_VERSION,
            job_id,
            request_id: job.request_id.clone(),
            customer_id: job.customer_id.clone(),
            kind: JobKind::SyncObject(SyncObject {
                data_source: ds.clone(),
                bucket: bucket.to_owned(),
                key,
                size: listed.map(|o| o.size),
                etag: listed.and_then(|o| o.etag.clone()),
                last_modified: listed
                    .and_then(|o| o.last_modified)
                    .map(|t| humantime::format_rfc3339_millis(t).to_string()),
                options: options.clone(),
            }),
        }
    };
    // One delivery publishes at most `fan_out_batch` children, then hands the rest of the
    // listing to a new job, so no delivery runs for long however large the bucket.
    let batch = ctx.config.worker.fan_out_batch;
    let continuation = |rest: Vec<ObjectSelector>| Job {
        schema_version: SCHEMA_VERSION,
        job_id: job.job_id.as_ref().map(|parent| format!("{parent}+")),
        request_id: job.request_id.clone(),
        customer_id: job.customer_id.clone(),
        kind: JobKind::SyncFiles(SyncFiles {
            data_source: ds.clone(),
            ids: rest,
            options: options.clone(),
        }),
    };
    let mut published = 0;
    for (i, selector) in selectors.iter().enumerate() {
        if published >= batch {
            out.job(&continuation(selectors[i..].to_vec())).await?;
            return Ok(Outcome::Done);
        }
        let bucket = selector.bucket.as_str();
        if let Some(key) = &selector.id {
            out.job(&child(bucket, key.clone(), None)).await?;
            published += 1;
            continue;
        }
        let prefix = selector.prefix.as_deref().unwrap_or("");
        let opened = open(ds, bucket, prefix, ctx).await;
        let source = match opened.map(|source| source.after(selector.start_after.as_deref())) {
            Ok(source) => source,
            Err(err) => {
                if err.retryable() {
                    return Ok(Outcome::Retry(format!("{}: {}", err.code, err.message)));
                }
                let file = file_ref(bucket, prefix.to_owned());
                out.event(&event(job, ds, file_error(&err), Some(file)))
                    .await?;
                continue;
            }
        };
        let mut listing = pin!(source.list());
        let mut last = selector.start_after.clone();
        while let Some(listed) = listing.next().await {
            match listed {
                Listed::Object(object) => {
                    if published >= batch {
                        let mut rest = selectors[i..].to_vec();
                        rest[0].start_after = last;
                        out.job(&continuation(rest)).await?;
                        return Ok(Outcome::Done);
                    }
                    out.job(&child(bucket, object.key.clone(), Some(&object)))
                        .await?;
                    published += 1;
                    last = Some(object.key);
                }
                Listed::Problem {
                    key, error, skip, ..
                } => {
                    if error.retryable() {
                        // Children published so far are harmless duplicates on the next try.
                        return Ok(Outcome::Retry(format!("{}: {}", error.code, error.message)));
                    }
                    let kind = if skip {
                        EventKind::FilesSkipped {
                            reason: SkipReason::UnsupportedFormat,
                            message: error.message.clone(),
                        }
                    } else {
                        file_error(&error)
                    };
                    out.event(&event(job, ds, kind, Some(file_ref(bucket, key))))
                        .await?;
                }
            }
        }
    }
    Ok(Outcome::Done)
}

/// `sync_items`: one item per bucket, then one per object of each bucket, page by page.
async fn catalog(
    job: &Job,
    ds: &DataSource,
    only: Option<&[String]>,
    ctx: &Context,
    out: &mut Outputs<'_>,
) -> Result<Outcome, PublishError> {
    let root = match open(ds, "", "", ctx).await {
        Ok(source) => source,
        Err(err) => return failed_without_file(job, ds, &err, out).await,
    };
    let kind = root.kind();
    let buckets: Vec<String> = match only {
        Some(names) => names.to_vec(),
        None => match root.buckets().await {
            Ok(buckets) => buckets.into_iter().map(|b| b.name).collect(),
            Err(err) => return failed_without_file(job, ds, &err, out).await,
        },
    };
    let item = |item_type, bucket: &str| ItemRecord {
        schema_version: SCHEMA_VERSION,
        item_type,
        request_id: job.request_id.clone(),
        customer_id: job.customer_id.clone(),
        data_source_id: ds.id.clone(),
        bucket: bucket.to_owned(),
        key: None,
        size: None,
        etag: None,
        last_modified: None,
        data_source_metadata: kind.data_source_metadata().to_owned(),
        file_metadata: kind.bucket_metadata().to_owned(),
    };
    for bucket in &buckets {
        out.item(&item(ItemType::Bucket, bucket)).await?;
        let source = match open(ds, bucket, "", ctx).await {
            Ok(source) => source,
            Err(err) => return failed_without_file(job, ds, &err, out).await,
        };
        let mut listing = pin!(source.list());
        while let Some(listed) = listing.next().await {
            match listed {
                Listed::Object(object) => {
                    let record = ItemRecord {
                        key: Some(object.key),
                        size: Some(object.size),
                        etag: object.etag,
                        last_modified: object
                            .last_modified
                            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                        file_metadata: kind.file_metadata().to_owned(),
                        ..item(ItemType::File, bucket)
                    };
                    out.item(&record).await?;
                }
                Listed::Problem { key, error, .. } => {
                    if error.retryable() {
                        return Ok(Outcome::Retry(format!("{}: {}", error.code, error.message)));
                    }
                    out.event(&event(
                        job,
                        ds,
                        file_error(&error),
                        Some(file_ref(bucket, key)),
                    ))
                    .await?;
                }
            }
        }
    }
    Ok(Outcome::Done)
}

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
    AutoSyncSources, ConnectDataSource, DataSource, DeleteFiles, EncodedRecord, Event, EventKind,
    FileRef, ItemRecord, ItemType, Job, JobKind, ObjectSelector, SCHEMA_VERSION, SyncFiles,
    SyncObject, SyncOptions, UpdateUsers,
};
use crate::pipeline::{self, Bounds, Emitted, FileReport, Request};
use crate::sink::amqp::{Confirms, Message, PublishError, Publisher};
use crate::source::{Listed, ObjectMeta, S3Access, S3Credentials, S3Source, Source};
use crate::state::{self, Change, Diff, StateError, Store, StoredSource, Tracker, Verdict};
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
    /// The state store (`[state]`), if any.
    pub state: Option<Store>,
    /// Stored data sources read lately, so a bucket's objects do not each read the store.
    pub sources: SourceCache,
    /// This worker among the replicas: the owner of the auto-sync leases it takes.
    pub worker_id: String,
}

/// Stored data sources, kept for a minute: a data source connected again with new credentials
/// is seen by every worker within that.
#[derive(Default)]
pub struct SourceCache {
    entries:
        std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, StoredSource)>>,
}

/// How long a stored data source is used without reading it again.
const SOURCE_TTL: std::time::Duration = std::time::Duration::from_mins(1);

impl SourceCache {
    fn get(&self, id: &str) -> Option<StoredSource> {
        let entries = self.entries.lock().ok()?;
        let (read, source) = entries.get(id)?;
        (read.elapsed() < SOURCE_TTL).then(|| source.clone())
    }

    fn put(&self, source: StoredSource) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= 1000 {
                entries.clear();
            }
            entries.insert(source.id.clone(), (std::time::Instant::now(), source));
        }
    }
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
    /// State to write once every output is confirmed.
    changes: Vec<Change>,
}

impl<'a> Outputs<'a> {
    /// Outputs published on `publisher` to the exchanges of `config`.
    #[must_use]
    pub fn new(publisher: &'a Publisher, config: &'a WorkerConfig) -> Self {
        Outputs {
            publisher,
            config,
            confirms: Confirms::default(),
            changes: Vec::new(),
        }
    }

    /// Remembers `change`, to be written once the outputs are confirmed.
    fn change(&mut self, change: Change) {
        self.changes.push(change);
    }

    async fn publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        value: &impl Serialize,
    ) -> Result<(), PublishError> {
        let payload = serde_json::to_vec(value).map_err(PublishError::Encode)?;
        self.publish_json(exchange, routing_key, &payload).await
    }

    async fn publish_json(
        &mut self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
    ) -> Result<(), PublishError> {
        let message = Message {
            exchange,
            routing_key,
            payload,
            headers: FieldTable::default(),
        };
        self.publisher.send(message, &mut self.confirms).await
    }

    async fn event(&mut self, event: &Event) -> Result<(), PublishError> {
        let config = self.config;
        self.publish(&config.events_exchange, event.name(), event)
            .await
    }

    async fn encoded(&mut self, record: &EncodedRecord) -> Result<(), PublishError> {
        let config = self.config;
        let routing_key = record.media_type.map_or("OTHER", MediaType::as_str);
        self.publish_json(&config.chunks_exchange, routing_key, record.json())
            .await
    }

    async fn item(&mut self, item: &ItemRecord) -> Result<(), PublishError> {
        let config = self.config;
        self.publish(&config.events_exchange, "ITEM", item).await
    }

    /// Publishes `job` to the jobs exchange.
    pub(super) async fn job(&mut self, job: &Job) -> Result<(), PublishError> {
        let config = self.config;
        self.publish(&config.jobs_exchange, job.kind.name(), job)
            .await
    }

    /// Waits until the broker has confirmed every output; then the state they stand for may be
    /// written.
    ///
    /// # Errors
    /// The first output that was not delivered (the state must not be written).
    pub async fn finish(mut self) -> Result<Vec<Change>, PublishError> {
        self.confirms.settle().await?;
        Ok(self.changes)
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
    let given = match &job.kind {
        JobKind::UpdateUsers(update) => return Ok(update_users(update, ctx).await),
        JobKind::ConnectDataSource(connect) => {
            return connect_data_source(job, connect, ctx, out).await;
        }
        JobKind::DeleteFiles(delete) => return delete_files(job, delete, ctx, out).await,
        JobKind::SyncFiles(sync) => &sync.data_source,
        JobKind::SyncObject(one) => &one.data_source,
        JobKind::ResyncFile(one) => &one.data_source,
        JobKind::SyncItems(items) => &items.data_source,
    };
    let resolved = match resolve(job, given, ctx).await {
        Ok(resolved) => resolved,
        Err(refusal) => return Ok(refusal),
    };
    let ds = &resolved.ds;
    match &job.kind {
        JobKind::SyncFiles(sync) => {
            let first_delivery = sync.ids.iter().all(|s| s.start_after.is_none());
            if let (true, true, Some(id)) = (resolved.stored, first_delivery, &ds.id) {
                // What automatic syncs of this data source will sync.
                out.change(Change::Synced {
                    data_source_id: id.clone(),
                    selectors: serde_json::to_string(&sync.ids).unwrap_or_default(),
                    options: serde_json::to_string(&sync.options).unwrap_or_default(),
                });
            }
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
                    resync: false,
                };
                return sync_object(job, &resolved, target, &sync.options, ctx, out).await;
            }
            fan_out(job, &resolved, &sync.ids, &sync.options, ctx, out).await
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
                resync: false,
            };
            sync_object(job, &resolved, target, &one.options, ctx, out).await
        }
        JobKind::ResyncFile(one) => {
            let target = Target {
                bucket: &one.bucket,
                key: &one.key,
                listed: None,
                force_embedding: one.force_embedding_generation,
                resync: true,
            };
            sync_object(job, &resolved, target, &one.options, ctx, out).await
        }
        JobKind::SyncItems(items) => catalog(job, ds, items.buckets.as_deref(), ctx, out).await,
        JobKind::UpdateUsers(_) | JobKind::ConnectDataSource(_) | JobKind::DeleteFiles(_) => {
            Ok(Outcome::Done)
        }
    }
}

/// `delete_files`: a `FILE_DELETED` tombstone per key; the store forgets them.
async fn delete_files(
    job: &Job,
    delete: &DeleteFiles,
    ctx: &Context,
    out: &mut Outputs<'_>,
) -> Result<Outcome, PublishError> {
    let ds = &delete.data_source;
    let scope = state::scope(
        ds.id.as_deref(),
        job.customer_id.as_deref(),
        ds.endpoint_url.as_deref(),
    );
    for selector in &delete.ids {
        let key = selector.id.clone().unwrap_or_default();
        let file = file_ref(&selector.bucket, key.clone());
        out.event(&event(job, ds, EventKind::FileDeleted {}, Some(file)))
            .await?;
        if ctx.state.is_some() {
            out.change(Change::Forget {
                scope: scope.clone(),
                bucket: selector.bucket.clone(),
                key,
            });
        }
    }
    Ok(Outcome::Done)
}

/// `connect_data_source`: checks the credentials (ListBuckets) and, with a state store, stores
/// them (secret sealed) so later jobs may name the data source by id alone.
async fn connect_data_source(
    job: &Job,
    connect: &ConnectDataSource,
    ctx: &Context,
    out: &mut Outputs<'_>,
) -> Result<Outcome, PublishError> {
    let ds = &connect.data_source;
    if ctx.state.is_some() && ds.id.is_none() {
        return Ok(Outcome::Refuse {
            code: "INVALID_JOB",
            reason: "connect_data_source needs `data_source.id`: the data source is stored \
                     under it"
                .to_owned(),
        });
    }
    let source = match open(ds, "", "", ctx).await {
        Ok(source) => source,
        Err(err) => return failed_without_file(job, ds, &err, out).await,
    };
    if let Err(err) = source.buckets().await {
        return failed_without_file(job, ds, &err, out).await;
    }
    if let (Some(store), Some(id), Some(access_key), Some(secret)) =
        (&ctx.state, &ds.id, &ds.access_key, &ds.access_key_secret)
    {
        let stored = StoredSource {
            id: id.clone(),
            customer_id: job.customer_id.clone(),
            endpoint_url: ds.endpoint_url.clone(),
            access_key: access_key.clone(),
            secret: secret.clone(),
        };
        if let Err(err) = store.put_source(&stored).await {
            return Ok(state_failed(&err));
        }
        ctx.sources.put(stored);
    }
    out.event(&event(job, ds, EventKind::DataSourceReady {}, None))
        .await?;
    if connect.sync_items {
        return catalog(job, ds, None, ctx, out).await;
    }
    Ok(Outcome::Done)
}

/// `update_users`: stores the customers' auto-sync settings.
async fn update_users(update: &UpdateUsers, ctx: &Context) -> Outcome {
    let Some(store) = &ctx.state else {
        return Outcome::Refuse {
            code: "UNSUPPORTED_JOB",
            reason: "update_users needs a state store: configure [state] path or url".to_owned(),
        };
    };
    let enabled = match &update.auto_sync_enabled_sources {
        AutoSyncSources::All(_) => true,
        AutoSyncSources::Some(sources) => !sources.is_empty(),
    };
    let settings = state::AutoSync {
        customer_ids: update.customer_ids.clone(),
        enabled,
        interval_secs: update.sync_interval_hours.map(|h| i64::from(h) * 3600),
        default_interval_secs: i64::from(ctx.config.state.default_sync_interval_hours) * 3600,
    };
    match store.put_customers(settings).await {
        Ok(()) => Outcome::Done,
        Err(err) => state_failed(&err),
    }
}

/// A state store failure as a job's outcome: retried when transient, else dead-lettered.
fn state_failed(err: &StateError) -> Outcome {
    if err.retryable() {
        Outcome::Retry(format!("{}: {err}", err.code()))
    } else {
        Outcome::Refuse {
            code: err.code(),
            reason: err.to_string(),
        }
    }
}

/// A job's data source, ready to open.
struct Resolved {
    /// With credentials: the job's own, or the stored data source's.
    ds: DataSource,
    /// Found in the store (its syncs are remembered for automatic syncs).
    stored: bool,
    /// Where its objects' state is kept ([`state::scope`]).
    scope: String,
}

/// Inline credentials as given; a data source named by id alone from the store.
async fn resolve(job: &Job, given: &DataSource, ctx: &Context) -> Result<Resolved, Outcome> {
    let scope = |ds: &DataSource| {
        state::scope(
            ds.id.as_deref(),
            job.customer_id.as_deref(),
            ds.endpoint_url.as_deref(),
        )
    };
    let inline = given.access_key.is_some() && given.access_key_secret.is_some();
    let (false, Some(id), Some(store)) = (inline, &given.id, &ctx.state) else {
        // Without credentials `open` says so (NO_CREDENTIALS).
        return Ok(Resolved {
            ds: given.clone(),
            stored: false,
            scope: scope(given),
        });
    };
    let mut found = ctx.sources.get(id);
    if found.is_none() {
        found = store.source(id).await.map_err(|err| state_failed(&err))?;
        if let Some(source) = &found {
            ctx.sources.put(source.clone());
        }
    }
    let unknown = || Outcome::Refuse {
        code: "UNKNOWN_DATA_SOURCE",
        reason: format!(
            "data source {id} is not stored: connect it first (connect_data_source), or give \
             access_key and access_key_secret"
        ),
    };
    let source = found.ok_or_else(unknown)?;
    if source.customer_id.is_some() && source.customer_id != job.customer_id {
        // Another customer's data source (or a job that names no customer) is as good as
        // unknown.
        return Err(unknown());
    }
    if let Some(endpoint) = &given.endpoint_url
        && source.endpoint_url.as_ref() != Some(endpoint)
    {
        return Err(Outcome::Refuse {
            code: "INVALID_JOB",
            reason: format!(
                "data source {id} is stored with another endpoint: name it by id alone, or \
                 connect it again"
            ),
        });
    }
    let ds = DataSource {
        id: Some(id.clone()),
        access_key: Some(source.access_key),
        access_key_secret: Some(source.secret),
        endpoint_url: source.endpoint_url,
    };
    Ok(Resolved {
        scope: scope(&ds),
        ds,
        stored: true,
    })
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

/// The job's credentials (a stored data source's are filled in by [`resolve`]).
fn credentials(ds: &DataSource) -> Result<S3Credentials, FileError> {
    match (&ds.access_key, &ds.access_key_secret) {
        (Some(access_key), Some(secret_key)) => Ok(S3Credentials {
            access_key: access_key.clone(),
            secret_key: secret_key.clone(),
        }),
        _ => Err(FileError::permanent(
            ErrorCode::NoCredentials,
            "the job's data_source has no access_key and access_key_secret, and this worker has \
             no state store ([state]) to look a stored data source up in",
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
    /// Process it even if the store says it is unchanged (`resync_file`).
    resync: bool,
}

/// One object through the pipeline, its outputs published as they come. With a state store, an
/// object unchanged since its last sync (same ETag, same options) is skipped without a GET.
async fn sync_object(
    job: &Job,
    resolved: &Resolved,
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
        resync,
    } = target;
    let ds = &resolved.ds;
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
        Ok((source, object)) => {
            let mut tracking = None;
            if let Some(store) = &ctx.state {
                let fingerprint = request.fingerprint();
                let version = state::version_of(&object);
                let prior = match store.object(&resolved.scope, bucket, key).await {
                    Ok(prior) => prior,
                    Err(err) => return Ok(state_failed(&err)),
                };
                // Without an ETag the version is only the size: never trusted to be unchanged.
                let trusted = object.etag.is_some();
                match prior {
                    Some((entry, _))
                        if !resync
                            && trusted
                            && entry.version == version
                            && entry.fingerprint == fingerprint =>
                    {
                        let mut file = file_ref(bucket, key.to_owned());
                        file.etag = object.etag.clone();
                        let report = FileReport {
                            outcome: request
                                .event(EventKind::unchanged(vec![file.clone()]), Some(file)),
                            bytes_read: 0,
                        };
                        out.event(&report.outcome).await?;
                        ctx.metrics.file_done(&report);
                        return Ok(Outcome::Done);
                    }
                    prior => {
                        let old = prior.map(|(_, ids)| ids).unwrap_or_default();
                        tracking = Some((Tracker::new(old), version, fingerprint, object.size));
                    }
                }
            }
            let tracker = tracking
                .as_mut()
                .map(|(tracker, ..)| std::mem::take(tracker));
            let (report, tracker) = process(&source, object, request, tracker, out).await?;
            if let (Some(tracker), Some((_, version, fingerprint, size))) = (tracker, tracking)
                && let Some(put) =
                    tracker.put(&resolved.scope, bucket, key, version, size, &fingerprint)
            {
                out.change(Change::Put(put));
            }
            report
        }
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

/// Runs the pipeline on one object while publishing what it emits; `tracker` notes its chunk
/// ids on the way.
async fn process(
    source: &S3Source,
    object: ObjectMeta,
    request: Arc<Request>,
    mut tracker: Option<Tracker>,
    out: &mut Outputs<'_>,
) -> Result<(FileReport, Option<Tracker>), PublishError> {
    let (sender, mut emitted) = mpsc::channel(RECORDS_IN_FLIGHT);
    let work = async move {
        let report = pipeline::process(source, object, request, &sender).await;
        drop(sender);
        report
    };
    let publish = async {
        while let Some(mut item) = emitted.recv().await {
            if let Some(tracker) = &mut tracker {
                tracker.see(&mut item);
            }
            match item {
                Emitted::Event(event) => out.event(&event).await?,
                // Records leave the pipeline encoded; one that did not is encoded here.
                Emitted::Record(record) => {
                    let record = EncodedRecord::new(*record).map_err(PublishError::Encode)?;
                    out.encoded(&record).await?;
                }
                Emitted::Encoded(record) => out.encoded(&record).await?,
            }
        }
        Ok::<(), PublishError>(())
    };
    // If publishing fails, `emitted` is dropped and the pipeline stops at its next send.
    let (report, published) = tokio::join!(work, publish);
    published?;
    Ok((report, tracker))
}

/// `sync_files` over prefixes, buckets or several keys: one `sync_object` job per object,
/// published with confirms, listing page by page. With a state store the listing is compared
/// with it on the way: unchanged objects are reported skipped (no job, no GET), and objects the
/// store knows that the listing passed over are reported deleted.
async fn fan_out(
    job: &Job,
    resolved: &Resolved,
    selectors: &[ObjectSelector],
    options: &SyncOptions,
    ctx: &Context,
    out: &mut Outputs<'_>,
) -> Result<Outcome, PublishError> {
    let ds = &resolved.ds;
    // Children and continuations carry the data source as the job gave it: a stored one's
    // secret never travels through the broker.
    let given = given(job).unwrap_or(ds);
    let fingerprint = match fingerprint(job, ds, options, ctx) {
        Ok(fingerprint) => fingerprint,
        Err(refusal) => return Ok(refusal),
    };
    // One delivery handles at most `fan_out_batch` objects, then hands the rest of the
    // listing to a new job, so no delivery runs for long however large the bucket.
    let batch = ctx.config.worker.fan_out_batch;
    let continuation = |rest: Vec<ObjectSelector>| continuation_job(job, given, options, rest);
    let mut handled = 0;
    for (i, selector) in selectors.iter().enumerate() {
        if handled >= batch {
            out.job(&continuation(selectors[i..].to_vec())).await?;
            return Ok(Outcome::Done);
        }
        let bucket = selector.bucket.as_str();
        if let Some(key) = &selector.id {
            out.job(&child_job(job, given, options, bucket, key.clone(), None))
                .await?;
            handled += 1;
            continue;
        }
        let source = match open_listing(job, resolved, given, selector, ctx, out).await? {
            Ok(source) => source,
            Err(Some(retry)) => return Ok(retry),
            Err(None) => continue,
        };
        let mut compare = ctx
            .state
            .as_ref()
            .zip(fingerprint.as_deref())
            .map(|(store, fp)| Compared::new(store, fp, &resolved.scope, selector));
        let mut listing = pin!(source.list());
        let mut last = selector.start_after.clone();
        let stop = |last| continuation(resumed(&selectors[i..], last));
        while let Some(listed) = listing.next().await {
            match listed {
                Listed::Object(object) => {
                    if handled >= batch {
                        flush(job, given, compare.as_mut(), out).await?;
                        out.job(&stop(last)).await?;
                        return Ok(Outcome::Done);
                    }
                    if let Some(compare) = &mut compare {
                        let room = batch - handled;
                        match compare.step(&object, job, given, room, out).await? {
                            Step::Failed(outcome) => return Ok(outcome),
                            Step::Full { last_gone } => {
                                out.job(&stop(last_gone.or(last))).await?;
                                return Ok(Outcome::Done);
                            }
                            Step::Unchanged { deleted } => {
                                handled += deleted + 1;
                                last = Some(object.key);
                                continue;
                            }
                            Step::Process { deleted } => handled += deleted,
                        }
                    }
                    out.job(&child_job(
                        job,
                        given,
                        options,
                        bucket,
                        object.key.clone(),
                        Some(&object),
                    ))
                    .await?;
                    handled += 1;
                    last = Some(object.key);
                }
                Listed::Problem {
                    key, error, skip, ..
                } => {
                    let problem = (bucket, key, &error, skip);
                    if let Some(retry) =
                        problem_listed(job, given, problem, compare.as_mut(), out).await?
                    {
                        return Ok(retry);
                    }
                }
            }
        }
        if let Some(compare) = &mut compare {
            // The listing reached its end: whatever the store still has under it is gone.
            match compare
                .ended(job, given, batch.saturating_sub(handled), out)
                .await?
            {
                Step::Full { last_gone } => {
                    // After the last object deleted, or else the last listed.
                    out.job(&stop(last_gone.or(last))).await?;
                    return Ok(Outcome::Done);
                }
                Step::Failed(outcome) => return Ok(outcome),
                Step::Process { deleted } | Step::Unchanged { deleted } => handled += deleted,
            }
        }
        flush(job, given, compare.as_mut(), out).await?;
    }
    Ok(Outcome::Done)
}

/// The data source as a `sync_files` job gave it.
fn given(job: &Job) -> Option<&DataSource> {
    match &job.kind {
        JobKind::SyncFiles(sync) => Some(&sync.data_source),
        _ => None,
    }
}

/// `selectors`, the first to be listed again after `last`.
fn resumed(selectors: &[ObjectSelector], last: Option<String>) -> Vec<ObjectSelector> {
    let mut rest = selectors.to_vec();
    if let Some(first) = rest.first_mut() {
        first.start_after = last;
    }
    rest
}

/// With a state store, the fingerprint of the records `options` make.
fn fingerprint(
    job: &Job,
    ds: &DataSource,
    options: &SyncOptions,
    ctx: &Context,
) -> Result<Option<String>, Outcome> {
    match &ctx.state {
        Some(_) => request(job, ds, options, false, ctx).map(|r| Some(r.fingerprint())),
        None => Ok(None),
    }
}

/// The listing a selector names; when it cannot be had, the job's retry (transient) or nothing
/// (its `FILE_ERROR` is published).
async fn open_listing(
    job: &Job,
    resolved: &Resolved,
    given: &DataSource,
    selector: &ObjectSelector,
    ctx: &Context,
    out: &mut Outputs<'_>,
) -> Result<Result<S3Source, Option<Outcome>>, PublishError> {
    let (bucket, prefix) = (&selector.bucket, selector.prefix.as_deref().unwrap_or(""));
    match open(&resolved.ds, bucket, prefix, ctx).await {
        Ok(source) => Ok(Ok(source.after(selector.start_after.as_deref()))),
        Err(err) if err.retryable() => Ok(Err(Some(Outcome::Retry(format!(
            "{}: {}",
            err.code, err.message
        ))))),
        Err(err) => {
            let file = file_ref(bucket, prefix.to_owned());
            out.event(&event(job, given, file_error(&err), Some(file)))
                .await?;
            Ok(Err(None))
        }
    }
}

/// The `sync_object` job of one listed object (or named key) of `job`.
fn child_job(
    job: &Job,
    given: &DataSource,
    options: &SyncOptions,
    bucket: &str,
    key: String,
    listed: Option<&ObjectMeta>,
) -> Job {
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
            data_source: given.clone(),
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
}

/// The `sync_files` job that goes on with `rest` of `job`'s selectors.
fn continuation_job(
    job: &Job,
    given: &DataSource,
    options: &SyncOptions,
    rest: Vec<ObjectSelector>,
) -> Job {
    Job {
        schema_version: SCHEMA_VERSION,
        job_id: job.job_id.as_ref().map(|parent| format!("{parent}+")),
        request_id: job.request_id.clone(),
        customer_id: job.customer_id.clone(),
        kind: JobKind::SyncFiles(SyncFiles {
            data_source: given.clone(),
            ids: rest,
            options: options.clone(),
        }),
    }
}

/// A listing entry that cannot be synced: its event, or, when the listing failed for now, the
/// retry of the job. The comparison with the store stops deciding deletions either way.
async fn problem_listed(
    job: &Job,
    ds: &DataSource,
    (bucket, key, error, skip): (&str, String, &FileError, bool),
    compare: Option<&mut Compared<'_>>,
    out: &mut Outputs<'_>,
) -> Result<Option<Outcome>, PublishError> {
    let mut compare = compare;
    if let Some(compare) = compare.as_deref_mut() {
        // What the listing did not reach may still exist.
        compare.diff.halt();
    }
    if error.retryable() {
        // Children published so far are harmless duplicates on the next try.
        flush(job, ds, compare, out).await?;
        let retry = format!("{}: {}", error.code, error.message);
        return Ok(Some(Outcome::Retry(retry)));
    }
    let kind = if skip {
        EventKind::FilesSkipped {
            reason: SkipReason::UnsupportedFormat,
            message: error.message.clone(),
            files: Vec::new(),
        }
    } else {
        file_error(error)
    };
    out.event(&event(job, ds, kind, Some(file_ref(bucket, key))))
        .await?;
    Ok(None)
}

/// Objects reported unchanged per `FILES_SKIPPED` event.
const UNCHANGED_PER_EVENT: usize = 1000;

/// A listing of one bucket and prefix compared with the store.
struct Compared<'a> {
    diff: Diff,
    fingerprint: &'a str,
    scope: &'a str,
    bucket: &'a str,
    /// Unchanged objects not yet reported.
    unchanged: Vec<FileRef>,
    /// The last object reported deleted.
    last_gone: Option<String>,
}

/// What comparing one listed object with the store came to.
enum Step {
    /// The store failed.
    Failed(Outcome),
    /// The batch filled up while reporting deletions before the object; continue after the
    /// last one.
    Full { last_gone: Option<String> },
    /// Unchanged: reported, nothing to do.
    Unchanged { deleted: usize },
    /// New or changed: publish its job.
    Process { deleted: usize },
}

impl<'a> Compared<'a> {
    fn new(
        store: &Store,
        fingerprint: &'a str,
        scope: &'a str,
        selector: &'a ObjectSelector,
    ) -> Self {
        let (bucket, after) = (selector.bucket.as_str(), selector.start_after.as_deref());
        let prefix = selector.prefix.as_deref().unwrap_or("");
        Compared {
            diff: Diff::new(store.clone(), scope, bucket, prefix, after),
            fingerprint,
            scope,
            bucket,
            unchanged: Vec::new(),
            last_gone: None,
        }
    }

    /// Reports up to `room` stored objects the listing passed over before `upto` (all the
    /// rest, when the listing ended) as deleted; how many it reported.
    async fn gone(
        &mut self,
        upto: Option<&str>,
        job: &Job,
        ds: &DataSource,
        room: usize,
        out: &mut Outputs<'_>,
    ) -> Result<Result<usize, Outcome>, PublishError> {
        let mut reported = 0;
        self.last_gone = None;
        while reported < room {
            let entry = match self.diff.next_gone(upto).await {
                Ok(Some(entry)) => entry,
                Ok(None) => break,
                Err(err) => return Ok(Err(state_failed(&err))),
            };
            let file = file_ref(self.bucket, entry.key.clone());
            out.event(&event(job, ds, EventKind::FileDeleted {}, Some(file)))
                .await?;
            out.change(Change::Forget {
                scope: self.scope.to_owned(),
                bucket: self.bucket.to_owned(),
                key: entry.key.clone(),
            });
            self.last_gone = Some(entry.key);
            reported += 1;
        }
        Ok(Ok(reported))
    }

    /// At the end of the listing: what the store still has under it was deleted.
    async fn ended(
        &mut self,
        job: &Job,
        ds: &DataSource,
        room: usize,
        out: &mut Outputs<'_>,
    ) -> Result<Step, PublishError> {
        Ok(match self.gone(None, job, ds, room, out).await? {
            Ok(n) if n >= room => {
                flush(job, ds, Some(self), out).await?;
                Step::Full {
                    last_gone: self.last_gone.take(),
                }
            }
            Ok(deleted) => Step::Process { deleted },
            Err(outcome) => Step::Failed(outcome),
        })
    }

    async fn step(
        &mut self,
        object: &ObjectMeta,
        job: &Job,
        ds: &DataSource,
        room: usize,
        out: &mut Outputs<'_>,
    ) -> Result<Step, PublishError> {
        let deleted = match self.gone(Some(&object.key), job, ds, room, out).await? {
            Ok(n) if n >= room => {
                flush(job, ds, Some(self), out).await?;
                return Ok(Step::Full {
                    last_gone: self.last_gone.take(),
                });
            }
            Ok(n) => n,
            Err(outcome) => return Ok(Step::Failed(outcome)),
        };
        let version = state::version_of(object);
        match self
            .diff
            .verdict(&object.key, &version, self.fingerprint)
            .await
        {
            Ok(Verdict::Unchanged) => {
                let mut file = file_ref(self.bucket, object.key.clone());
                file.etag.clone_from(&object.etag);
                self.unchanged.push(file);
                if self.unchanged.len() >= UNCHANGED_PER_EVENT {
                    flush(job, ds, Some(self), out).await?;
                }
                Ok(Step::Unchanged { deleted })
            }
            Ok(_) => Ok(Step::Process { deleted }),
            Err(err) => Ok(Step::Failed(state_failed(&err))),
        }
    }
}

/// Reports the unchanged objects `compare` has gathered, in one event.
async fn flush(
    job: &Job,
    ds: &DataSource,
    compare: Option<&mut Compared<'_>>,
    out: &mut Outputs<'_>,
) -> Result<(), PublishError> {
    if let Some(compare) = compare
        && !compare.unchanged.is_empty()
    {
        let files = std::mem::take(&mut compare.unchanged);
        out.event(&event(job, ds, EventKind::unchanged(files), None))
            .await?;
    }
    Ok(())
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

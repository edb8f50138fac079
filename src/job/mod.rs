//! The versioned message contract: jobs in ([`Job`]), chunk records ([`ChunkRecord`]) and
//! events ([`Event`]) out. Field names follow Carbon's API where it has one.

mod event;
mod record;

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::chunk::MIN_CHUNK_SIZE;

pub use event::{Event, EventKind, FileRef, ProcessedCounts};
pub use record::{
    ChunkRecord, ChunkingInfo, EncodedRecord, Exif, FileInfo, ItemRecord, ItemType, MediaInfo,
};

pub use crate::secret::Secret;

/// The `schema_version` this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Carbon's limit on `customer_ids` in one `update_users` job.
pub const MAX_CUSTOMER_IDS: usize = 100;

/// The longest automatic sync interval `update_users` may set: a year.
pub const MAX_SYNC_INTERVAL_HOURS: u32 = 24 * 366;

/// A job as published on `ingest.jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Job {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Unique per published job; the API server's or `ingestd enqueue`'s.
    pub job_id: Option<String>,
    /// Correlates every output of one API request.
    pub request_id: Option<String>,
    /// The customer the data belongs to.
    pub customer_id: Option<String>,
    /// What to do.
    #[serde(flatten)]
    pub kind: JobKind,
}

/// The job types, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JobKind {
    /// Sync keys, prefixes or whole buckets; prefixes and buckets fan out per object.
    SyncFiles(SyncFiles),
    /// Sync one object (produced by fan-out).
    SyncObject(SyncObject),
    /// Re-process one object even if unchanged, optionally with new chunking.
    ResyncFile(ResyncFile),
    /// Emit `FILE_DELETED` tombstones for objects.
    DeleteFiles(DeleteFiles),
    /// Emit the catalog of buckets and objects of a data source.
    SyncItems(SyncItems),
    /// Check credentials and register a data source.
    ConnectDataSource(ConnectDataSource),
    /// Change customers' auto-sync settings.
    UpdateUsers(UpdateUsers),
}

impl JobKind {
    /// The `type` tag, also the routing key on `ingest.jobs`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            JobKind::SyncFiles(_) => "sync_files",
            JobKind::SyncObject(_) => "sync_object",
            JobKind::ResyncFile(_) => "resync_file",
            JobKind::DeleteFiles(_) => "delete_files",
            JobKind::SyncItems(_) => "sync_items",
            JobKind::ConnectDataSource(_) => "connect_data_source",
            JobKind::UpdateUsers(_) => "update_users",
        }
    }
}

/// What a job's chunking options are checked against: the defaults it falls back to and the
/// largest size allowed (the `[chunking]` configuration's figures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLimits {
    /// Tokens per chunk when the job does not say.
    pub chunk_size: usize,
    /// Overlap when the job does not say.
    pub chunk_overlap: usize,
    /// The largest `chunk_size` a job may ask for.
    pub max_chunk_size: usize,
}

/// Where objects come from: inline credentials, or a stored data source by `id`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// The data source's id (`data_source_id` on outputs).
    pub id: Option<String>,
    /// Access key id.
    pub access_key: Option<String>,
    /// Secret access key.
    pub access_key_secret: Option<Secret>,
    /// Custom endpoint such as `nyc3.digitaloceanspaces.com` (scheme optional).
    pub endpoint_url: Option<String>,
}

/// One entry of `ids`: a key (`id`), a `prefix`, or a whole bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObjectSelector {
    /// The bucket.
    pub bucket: String,
    /// One object key.
    pub id: Option<String>,
    /// A key prefix to list.
    pub prefix: Option<String>,
    /// List only keys after this one: set when a large fan-out continues in a new job.
    pub start_after: Option<String>,
}

/// Per-file processing settings (Carbon's `file_sync_config`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileSyncConfig {
    /// Transcription provider for audio and video.
    pub transcription_service: Option<String>,
    /// Ask the transcription provider for speaker labels.
    pub include_speaker_labels: Option<bool>,
    /// Ask the transcription provider to detect the language.
    pub detect_audio_language: Option<bool>,
    /// Split spreadsheets and CSV into one item per row.
    pub split_rows: Option<bool>,
    /// Produce chunks only (no other artefacts).
    pub generate_chunks_only: Option<bool>,
    /// Register the file without processing it.
    pub skip_file_processing: Option<bool>,
}

/// Options every sync job carries, with Carbon's names and defaults.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct SyncOptions {
    /// Maximum tokens per chunk (default from configuration, 1500).
    pub chunk_size: Option<usize>,
    /// Maximum tokens shared by neighbouring chunks (default 20).
    pub chunk_overlap: Option<usize>,
    /// The tiktoken encoding sizes are counted in (default `cl100k_base`).
    pub encoding: Option<crate::chunk::Encoding>,
    /// Leave `embedding` null and call no provider.
    #[serde(default)]
    pub skip_embedding_generation: bool,
    /// Free-form tags copied onto every chunk record.
    #[serde(default)]
    pub tags: BTreeMap<String, Value>,
    /// Carbon's embedding model name (`OPENAI`, `OPENAI_ADA_SMALL_1536`, …).
    pub embedding_model: Option<String>,
    /// Prepend the file name to every chunk's text.
    pub prepend_filename_to_chunks: Option<bool>,
    /// Rows or items per chunk for csv/tsv/xlsx/json.
    pub max_items_per_chunk: Option<usize>,
    /// Never let a chunk cross a page (pdf).
    pub set_page_as_boundary: Option<bool>,
    /// Recognise text in images and scans.
    pub use_ocr: Option<bool>,
    /// Per-file settings.
    pub file_sync_config: Option<FileSyncConfig>,
}

/// `sync_files`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SyncFiles {
    /// Where the objects are.
    pub data_source: DataSource,
    /// What to sync.
    pub ids: Vec<ObjectSelector>,
    /// How to process them.
    #[serde(flatten)]
    pub options: SyncOptions,
}

/// `sync_object`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SyncObject {
    /// Where the object is.
    pub data_source: DataSource,
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// Size in bytes as listed, set by fan-out: with it the object is not looked up again
    /// before it is read.
    pub size: Option<u64>,
    /// ETag as listed (set by fan-out).
    pub etag: Option<String>,
    /// Last modification as listed, RFC 3339 (set by fan-out).
    pub last_modified: Option<String>,
    /// How to process it.
    #[serde(flatten)]
    pub options: SyncOptions,
}

/// `resync_file`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ResyncFile {
    /// Where the object is.
    pub data_source: DataSource,
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// Embed again even if the text is unchanged.
    #[serde(default)]
    pub force_embedding_generation: bool,
    /// How to process it.
    #[serde(flatten)]
    pub options: SyncOptions,
}

/// `delete_files`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeleteFiles {
    /// Where the objects were.
    pub data_source: DataSource,
    /// The objects (keys; prefixes are not accepted for deletion).
    pub ids: Vec<ObjectSelector>,
}

/// `sync_items`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SyncItems {
    /// The data source to catalogue.
    pub data_source: DataSource,
    /// Only these buckets (all visible buckets when absent).
    pub buckets: Option<Vec<String>>,
}

/// `connect_data_source`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConnectDataSource {
    /// The credentials to check and store.
    pub data_source: DataSource,
    /// Also run `sync_items` once connected.
    #[serde(default)]
    pub sync_items: bool,
}

/// `update_users`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpdateUsers {
    /// Up to 100 customers.
    pub customer_ids: Vec<String>,
    /// `["S3"]` or `"ALL"`.
    pub auto_sync_enabled_sources: AutoSyncSources,
    /// Hours between automatic syncs (1 to a year; absent: unchanged, 24 for new customers).
    pub sync_interval_hours: Option<u32>,
}

/// Which sources sync automatically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum AutoSyncSources {
    /// `"ALL"`.
    All(AllSources),
    /// A list of source names (`"S3"`).
    Some(Vec<String>),
}

/// The literal `"ALL"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AllSources {
    /// Every source.
    #[serde(rename = "ALL")]
    All,
}

/// Why a job message was refused. Each is permanent: the message is dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Not JSON, or not a JSON object.
    #[error("job is not a JSON object: {0}")]
    NotJson(String),
    /// `schema_version` missing or not one this build reads.
    #[error("unsupported schema_version {0} (this worker reads {SCHEMA_VERSION})")]
    UnsupportedVersion(String),
    /// A field is missing, mistyped or unknown, or `type` is unknown.
    #[error("invalid job: {0}")]
    Invalid(String),
}

impl JobError {
    /// A stable code for dead-letter reasons.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            JobError::NotJson(_) => "MALFORMED_JOB",
            JobError::UnsupportedVersion(_) => "UNSUPPORTED_SCHEMA_VERSION",
            JobError::Invalid(_) => "INVALID_JOB",
        }
    }
}

impl Job {
    /// Parses and validates a job message. Unknown fields anywhere are rejected, so a typo
    /// (`chunk_sise`) fails loudly instead of silently using a default.
    ///
    /// # Errors
    /// A [`JobError`] saying what is wrong, without echoing secrets.
    pub fn from_json(bytes: &[u8], chunking: ChunkLimits) -> Result<Job, JobError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|err| JobError::NotJson(err.to_string()))?;
        let Value::Object(object) = &value else {
            return Err(JobError::NotJson(format!("found {}", kind_of(&value))));
        };
        match object.get("schema_version") {
            Some(Value::Number(n)) if n.as_u64() == Some(u64::from(SCHEMA_VERSION)) => {}
            Some(other) => return Err(JobError::UnsupportedVersion(other.to_string())),
            None => {
                return Err(JobError::Invalid(
                    "missing field `schema_version`".to_owned(),
                ));
            }
        }
        let job: Job = serde_json::from_value(value.clone())
            .map_err(|err| JobError::Invalid(err.to_string()))?;
        // Flattened structs cannot deny unknown fields in serde; compare with what we read.
        let known = serde_json::to_value(&job).map_err(|err| JobError::Invalid(err.to_string()))?;
        if let Some(path) = first_unknown_field(&value, &known, "") {
            return Err(JobError::Invalid(format!("unknown field `{path}`")));
        }
        job.validate(chunking)?;
        Ok(job)
    }

    /// Checks values serde cannot: ranges, relations and list sizes.
    ///
    /// # Errors
    /// [`JobError::Invalid`] naming the field.
    pub fn validate(&self, chunking: ChunkLimits) -> Result<(), JobError> {
        let invalid = |message: String| Err(JobError::Invalid(message));
        match &self.kind {
            JobKind::SyncFiles(job) => {
                if job.ids.is_empty() {
                    return invalid(
                        "`ids` must name at least one bucket, prefix or key".to_owned(),
                    );
                }
                for (i, selector) in job.ids.iter().enumerate() {
                    if selector.bucket.trim().is_empty() {
                        return invalid(format!("`ids[{i}].bucket` is empty"));
                    }
                    if selector.id.is_some() && selector.prefix.is_some() {
                        return invalid(format!("`ids[{i}]` has both `id` and `prefix`"));
                    }
                    if selector.id.is_some() && selector.start_after.is_some() {
                        return invalid(format!("`ids[{i}]` has both `id` and `start_after`"));
                    }
                }
                job.options.validate(chunking)
            }
            JobKind::SyncObject(SyncObject {
                bucket,
                key,
                options,
                ..
            })
            | JobKind::ResyncFile(ResyncFile {
                bucket,
                key,
                options,
                ..
            }) => {
                if bucket.trim().is_empty() || key.is_empty() {
                    return invalid("`bucket` and `key` must not be empty".to_owned());
                }
                options.validate(chunking)
            }
            JobKind::DeleteFiles(job) => {
                if job.ids.is_empty() {
                    return invalid("`ids` must name at least one key".to_owned());
                }
                match job.ids.iter().position(|s| s.id.is_none()) {
                    Some(i) => invalid(format!("`ids[{i}].id` is required: deletion names keys")),
                    None => Ok(()),
                }
            }
            JobKind::SyncItems(_) | JobKind::ConnectDataSource(_) => Ok(()),
            JobKind::UpdateUsers(job) => {
                if job.customer_ids.is_empty() || job.customer_ids.len() > MAX_CUSTOMER_IDS {
                    return invalid(format!(
                        "`customer_ids` has {} entries; 1 to {MAX_CUSTOMER_IDS} are allowed",
                        job.customer_ids.len()
                    ));
                }
                if let Some(hours) = job.sync_interval_hours
                    && !(1..=MAX_SYNC_INTERVAL_HOURS).contains(&hours)
                {
                    return invalid(format!(
                        "`sync_interval_hours` is {hours}; 1 to {MAX_SYNC_INTERVAL_HOURS} are allowed"
                    ));
                }
                match &job.auto_sync_enabled_sources {
                    AutoSyncSources::Some(list) if list.iter().any(|s| s != "S3") => invalid(
                        "`auto_sync_enabled_sources` must be [\"S3\"] or \"ALL\"".to_owned(),
                    ),
                    _ => Ok(()),
                }
            }
        }
    }
}

impl SyncOptions {
    /// Checks the effective chunk size and overlap (the job's, else the configured defaults)
    /// against each other and the configured maximum.
    ///
    /// # Errors
    /// [`JobError::Invalid`] naming the field.
    pub fn validate(&self, chunking: ChunkLimits) -> Result<(), JobError> {
        let size = self.chunk_size.unwrap_or(chunking.chunk_size);
        let overlap = self.chunk_overlap.unwrap_or(chunking.chunk_overlap);
        let max = chunking.max_chunk_size;
        if !(MIN_CHUNK_SIZE..=max).contains(&size) {
            return Err(JobError::Invalid(format!(
                "`chunk_size` {size} is outside {MIN_CHUNK_SIZE}..={max}"
            )));
        }
        if overlap >= size {
            return Err(JobError::Invalid(format!(
                "`chunk_overlap` {overlap} must be smaller than `chunk_size` {size}"
            )));
        }
        Ok(())
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The dotted path of the first field of `input` that `known` (the parsed value written back)
/// does not have.
fn first_unknown_field(input: &Value, known: &Value, path: &str) -> Option<String> {
    match (input, known) {
        (Value::Object(input), Value::Object(known)) => input.iter().find_map(|(key, value)| {
            let here = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            match known.get(key) {
                None => Some(here),
                Some(known) => first_unknown_field(value, known, &here),
            }
        }),
        (Value::Array(input), Value::Array(known)) => input
            .iter()
            .zip(known)
            .enumerate()
            .find_map(|(i, (a, b))| first_unknown_field(a, b, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Which message a JSON Schema describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaKind {
    /// Jobs on `ingest.jobs`.
    Job,
    /// Chunk records on `ingest.chunks` and in `ingestd sync` output.
    Chunk,
    /// Events on `ingest.events`.
    Event,
    /// Catalog items (`ingestd sync s3://`).
    Item,
}

/// The JSON Schema (draft 2020-12) of a message.
#[must_use]
pub fn schema(kind: SchemaKind) -> Value {
    let mut schema = match kind {
        SchemaKind::Job => schemars::schema_for!(Job),
        SchemaKind::Chunk => schemars::schema_for!(ChunkRecord),
        SchemaKind::Event => schemars::schema_for!(Event),
        SchemaKind::Item => schemars::schema_for!(ItemRecord),
    }
    .to_value();
    if kind == SchemaKind::Job
        && let Value::Object(map) = &mut schema
    {
        // Jobs reject unknown fields; flattening hides them from `additionalProperties`.
        map.insert("unevaluatedProperties".to_owned(), Value::Bool(false));
    }
    schema
}

#[cfg(test)]
mod tests;

//! `pipeline.toml` → a validated [`Config`]. Environment variables override any value
//! (`INGESTD__<TABLE>__<KEY>`, e.g. `INGESTD__CHUNKING__CHUNK_SIZE=512`), so deployments change
//! settings and inject secrets without editing the file.

use std::path::Path;

use serde::Deserialize;

use crate::chunk::{Encoding, MIN_CHUNK_SIZE};

/// Prefix of environment overrides; `__` separates the table from the key.
pub const ENV_PREFIX: &str = "INGESTD__";

/// The broker URL's own variable, same as `INGESTD__WORKER__AMQP_URL`.
pub const AMQP_URL_ENV: &str = "INGESTD_AMQP_URL";

pub use crate::error::ConfigError;
pub use crate::source::S3Config;
pub use crate::telemetry::{LogConfig, LogFormat};

/// The whole configuration, one field per TOML table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[chunking]`: defaults for chunk size, overlap and encoding.
    #[serde(default)]
    pub chunking: ChunkingConfig,
    /// `[limits]`: hard limits on what one file may cost.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[sync]`: the one-shot `ingestd sync` command.
    #[serde(default)]
    pub sync: SyncConfig,
    /// `[images]`: what image records say.
    #[serde(default)]
    pub images: ImagesConfig,
    /// `[media]`: how audio and video are read.
    #[serde(default)]
    pub media: MediaConfig,
    /// `[documents]`: how PDF, Office, OpenDocument, RTF, e-mail and EPUB files are read.
    #[serde(default)]
    pub documents: crate::extract::document::DocumentsConfig,
    /// `[s3]`: S3 and Spaces endpoints and client behaviour.
    #[serde(default)]
    pub s3: S3Config,
    /// `[worker]`: the RabbitMQ worker.
    #[serde(default)]
    pub worker: WorkerConfig,
    /// `[embedding]`: embedding providers and Carbon's model names.
    #[serde(default)]
    pub embedding: crate::embed::EmbeddingConfig,
    /// `[transcription]`: the speech-to-text provider for audio and video.
    #[serde(default)]
    pub transcription: crate::transcribe::TranscriptionConfig,
    /// `[state]`: stored data sources, incremental sync and auto-sync (none by default).
    #[serde(default)]
    pub state: crate::state::StateConfig,
    /// `[log]`: diagnostics.
    #[serde(default)]
    pub log: LogConfig,
    /// `[cpu]`: where CPU work runs.
    #[serde(default)]
    pub cpu: CpuConfig,
}

/// `[cpu]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CpuConfig {
    /// While a thread does a CPU slot's chunking work, run it on a core of its own,
    /// where the process may run on exactly as many cores as it has CPU slots (see
    /// [`crate::cores`]); `false` leaves every thread to the kernel.
    #[serde(default = "default_pin_slots")]
    pub pin_slots: bool,
}

fn default_pin_slots() -> bool {
    true
}

impl Default for CpuConfig {
    fn default() -> Self {
        CpuConfig {
            pin_slots: default_pin_slots(),
        }
    }
}

/// `[chunking]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ChunkingConfig {
    /// Maximum tokens per chunk when a job or flag does not say.
    #[serde(default = "default_chunk_size")]
    pub chunk_size: usize,
    /// Maximum tokens shared by neighbouring chunks when a job or flag does not say.
    #[serde(default = "default_chunk_overlap")]
    pub chunk_overlap: usize,
    /// The tiktoken encoding sizes are counted in.
    #[serde(default = "default_encoding")]
    pub encoding: Encoding,
    /// The largest `chunk_size` a job or flag may ask for.
    #[serde(default = "default_max_chunk_size")]
    pub max_chunk_size: usize,
    /// Prepend the file name to every chunk's text when a job or flag does not say.
    #[serde(default)]
    pub prepend_filename: bool,
}

impl ChunkingConfig {
    /// The figures a job's chunking options are checked against.
    #[must_use]
    pub fn limits(&self) -> crate::job::ChunkLimits {
        crate::job::ChunkLimits {
            chunk_size: self.chunk_size,
            chunk_overlap: self.chunk_overlap,
            max_chunk_size: self.max_chunk_size,
        }
    }
}

/// Carbon's default chunk size, in tokens.
fn default_chunk_size() -> usize {
    1500
}

/// Carbon's default overlap, in tokens.
fn default_chunk_overlap() -> usize {
    20
}

/// The encoding of OpenAI's current embedding models.
fn default_encoding() -> Encoding {
    Encoding::Cl100kBase
}

/// The input limit of OpenAI's embedding models (8191 tokens).
fn default_max_chunk_size() -> usize {
    8191
}

impl Default for ChunkingConfig {
    fn default() -> Self {
        ChunkingConfig {
            chunk_size: default_chunk_size(),
            chunk_overlap: default_chunk_overlap(),
            encoding: default_encoding(),
            max_chunk_size: default_max_chunk_size(),
            prepend_filename: false,
        }
    }
}

/// `[limits]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Objects larger than this are skipped with `TOO_LARGE` before being read.
    #[serde(default = "default_max_object_bytes")]
    pub max_object_bytes: u64,
    /// Text formats parsed whole (HTML, XML, JSON, CSV, subtitles) larger than this are skipped
    /// with `TOO_LARGE` after reading only their head; plain text, markdown and code are
    /// streamed whatever their size.
    #[serde(default = "default_max_text_object_bytes")]
    pub max_text_object_bytes: u64,
    /// Extracted text larger than this is a `LIMIT_EXCEEDED` error.
    #[serde(default = "default_max_text_bytes")]
    pub max_text_bytes: usize,
    /// Images claiming more pixels than this are a `LIMIT_EXCEEDED` error.
    #[serde(default = "default_max_image_pixels")]
    pub max_image_pixels: u64,
    /// Audio and video lasting longer than this (seconds), by their header or their stream,
    /// are a `LIMIT_EXCEEDED` error.
    #[serde(default = "default_max_media_duration_secs")]
    pub max_media_duration_secs: u64,
    /// Bytes an audio or video file's headers, index and tags (cover art included) may take to
    /// read; more is a `LIMIT_EXCEEDED` error.
    #[serde(default = "default_max_media_metadata_bytes")]
    pub max_media_metadata_bytes: u64,
    /// Seconds one audio or video file may take to be described, decoded and transcribed; past
    /// it the file fails with `LIMIT_EXCEEDED` and the next one goes on.
    #[serde(default = "default_max_media_secs")]
    pub max_media_secs: u64,
}

/// 4 hours: a long meeting or a film.
fn default_max_media_duration_secs() -> u64 {
    4 * 3600
}

/// 32 MiB: a film's index and a high-resolution cover fit; a tag bomb does not.
fn default_max_media_metadata_bytes() -> u64 {
    32 * 1024 * 1024
}

/// 30 minutes: hours of audio transcribed piece by piece. A worker job is also bounded by
/// `worker.job_timeout_secs`.
fn default_max_media_secs() -> u64 {
    30 * 60
}

/// 100 megapixels: beyond the largest camera sensors, far below a decompression bomb.
fn default_max_image_pixels() -> u64 {
    100_000_000
}

/// 10 GiB: beyond this an object is an archive or a dump, not a document.
fn default_max_object_bytes() -> u64 {
    10 * 1024 * 1024 * 1024
}

/// 64 MiB: text files beyond this are rarely meant to be searched as prose.
fn default_max_text_object_bytes() -> u64 {
    64 * 1024 * 1024
}

/// 128 MiB of extracted text (JSON and CSV grow when their fields are named on every line).
fn default_max_text_bytes() -> usize {
    128 * 1024 * 1024
}

impl LimitsConfig {
    /// The limits on one audio or video file.
    #[must_use]
    pub fn media(&self) -> crate::extract::media::MediaLimits {
        crate::extract::media::MediaLimits {
            max_duration_ms: self.max_media_duration_secs.saturating_mul(1000),
            max_metadata_bytes: self.max_media_metadata_bytes,
        }
    }

    /// The longest one file may take.
    #[must_use]
    pub fn max_media(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.max_media_secs)
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_object_bytes: default_max_object_bytes(),
            max_text_object_bytes: default_max_text_object_bytes(),
            max_text_bytes: default_max_text_bytes(),
            max_image_pixels: default_max_image_pixels(),
            max_media_duration_secs: default_max_media_duration_secs(),
            max_media_metadata_bytes: default_max_media_metadata_bytes(),
            max_media_secs: default_max_media_secs(),
        }
    }
}

/// `[images]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// Put EXIF GPS coordinates on records (off: where a photo was taken is personal data).
    pub include_gps: bool,
    /// The Tesseract program run for `use_ocr`.
    pub tesseract: String,
    /// Tesseract languages (`eng`, `eng+deu`); their traineddata must be installed.
    pub ocr_languages: String,
    /// Seconds one image's recognition may take before it is killed (`LIMIT_EXCEEDED`).
    pub ocr_timeout_secs: u64,
    /// Images larger than this (bytes) are not read whole — for OCR, or to find a header that is
    /// not at the start, as in many TIFFs (`LIMIT_EXCEEDED`).
    pub max_read_bytes: u64,
}

/// `[media]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// The ffprobe program (Debian's ffmpeg) that describes audio and video symphonia does not
    /// read; when it cannot be run they are skipped (`UNSUPPORTED_FORMAT`), or keep what
    /// symphonia said of them.
    pub ffprobe: String,
    /// Seconds one file's ffprobe may take before it is killed (`LIMIT_EXCEEDED`).
    pub ffprobe_timeout_secs: u64,
    /// The ffmpeg program that decodes, for transcription, audio symphonia cannot (Opus, AC-3,
    /// Speex, AMR; the soundtrack of what ffprobe describes); when it cannot be run such files
    /// keep their metadata record and `FILE_READY` says why there is no transcript.
    pub ffmpeg: String,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            ffprobe: "ffprobe".to_owned(),
            ffprobe_timeout_secs: 30,
            ffmpeg: "ffmpeg".to_owned(),
        }
    }
}

impl MediaConfig {
    /// How to run ffprobe.
    #[must_use]
    pub fn ffprobe(&self) -> crate::extract::ffprobe::Ffprobe {
        crate::extract::ffprobe::Ffprobe {
            program: self.ffprobe.clone(),
            timeout: std::time::Duration::from_secs(self.ffprobe_timeout_secs),
        }
    }

    /// How to run ffmpeg.
    #[must_use]
    pub fn ffmpeg(&self) -> crate::extract::ffmpeg::Ffmpeg {
        crate::extract::ffmpeg::Ffmpeg {
            program: self.ffmpeg.clone(),
        }
    }
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            include_gps: false,
            tesseract: "tesseract".to_owned(),
            ocr_languages: "eng".to_owned(),
            ocr_timeout_secs: 60,
            max_read_bytes: 32 * 1024 * 1024,
        }
    }
}

impl ImagesConfig {
    /// How to run OCR for jobs and runs that ask for it.
    #[must_use]
    pub fn ocr(&self) -> crate::extract::ocr::Ocr {
        crate::extract::ocr::Ocr {
            program: self.tesseract.clone(),
            languages: self.ocr_languages.clone(),
            timeout: std::time::Duration::from_secs(self.ocr_timeout_secs),
        }
    }
}

/// `[sync]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Files in flight at once; 0 means four per CPU core (CPU work is one per core anyway).
    #[serde(default)]
    pub concurrency: usize,
    /// Follow symbolic links when walking a folder (loops are detected and reported).
    #[serde(default = "default_follow_symlinks")]
    pub follow_symlinks: bool,
    /// Embed chunks with `embedding.default_model` (as `--embed`); one-shot runs skip by default.
    #[serde(default)]
    pub embed: bool,
}

/// Links are followed: a folder of links to documents is a common layout.
fn default_follow_symlinks() -> bool {
    true
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            concurrency: 0,
            follow_symlinks: default_follow_symlinks(),
            embed: false,
        }
    }
}

impl SyncConfig {
    /// Files in flight: configured, or four per core — enough to hide each object's request
    /// latency, while CPU work stays at one per core ([`cpu_slots`]) — and eight per core when
    /// `embedding`, whose round trip to the provider each file waits for too.
    #[must_use]
    pub fn effective_concurrency(&self, embedding: bool) -> usize {
        if self.concurrency > 0 {
            self.concurrency
        } else if embedding {
            8 * cpu_slots()
        } else {
            4 * cpu_slots()
        }
    }
}

/// Files decoded and chunked at once: one per core.
#[must_use]
pub fn cpu_slots() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

/// `[worker]`: broker, topology names and delivery rules of `ingestd worker`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// The broker, `amqp://user:password@host:port/vhost` (or `amqps://`); also
    /// `INGESTD_AMQP_URL`. Never logged: it holds a password.
    pub amqp_url: crate::secret::Secret,
    /// Direct exchange jobs are published to, routing key = job type.
    pub jobs_exchange: String,
    /// Quorum queue the worker consumes; every job type is bound to it.
    pub jobs_queue: String,
    /// Exchange chunk records are published to (topic, routing key = media type).
    pub chunks_exchange: String,
    /// Exchange events are published to (topic, routing key = event name).
    pub events_exchange: String,
    /// Queue refused and exhausted jobs are parked in, with the reason in headers.
    pub dead_letter_queue: String,
    /// Also declare durable queues named like the output exchanges and bound to all they
    /// carry, so nothing is lost before downstream binds its own. Outputs are published
    /// `mandatory`: with no queue bound they are refused and the job is retried.
    pub declare_output_queues: bool,
    /// Jobs processed at once by this replica (the consumer prefetch).
    pub concurrency: u16,
    /// Deliveries of one job before the broker dead-letters it (a job that kills workers).
    pub delivery_limit: u32,
    /// Seconds a job that failed transiently waits before each further attempt; after the
    /// last, its failure stands (files get `FILE_ERROR`, other jobs are dead-lettered).
    pub retry_delays_secs: Vec<u64>,
    /// Larger job messages are dead-lettered unread.
    pub max_message_bytes: usize,
    /// `sync_object` jobs one fan-out delivery publishes at most; the rest of the listing
    /// continues in a new `sync_files` job (`start_after`), so no delivery runs for long.
    pub fan_out_batch: usize,
    /// Seconds one job may run before it is abandoned and retried; keep it below the broker's
    /// `consumer_timeout` (30 minutes by default).
    pub job_timeout_secs: u64,
    /// Seconds SIGTERM waits for jobs in flight before requeueing them.
    pub shutdown_grace_secs: u64,
    /// AMQP heartbeat in seconds: a dead connection is noticed within about twice this.
    pub heartbeat_secs: u16,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: String,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            amqp_url: crate::secret::Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            jobs_exchange: "ingest.jobs".to_owned(),
            jobs_queue: "ingest.jobs".to_owned(),
            chunks_exchange: "ingest.chunks".to_owned(),
            events_exchange: "ingest.events".to_owned(),
            dead_letter_queue: "ingest.jobs.dead".to_owned(),
            declare_output_queues: true,
            concurrency: 2,
            delivery_limit: 5,
            retry_delays_secs: vec![10, 60, 300],
            max_message_bytes: 1024 * 1024,
            fan_out_batch: 10_000,
            job_timeout_secs: 25 * 60,
            shutdown_grace_secs: 25,
            heartbeat_secs: 10,
            listen: "0.0.0.0:9464".to_owned(),
        }
    }
}

impl WorkerConfig {
    /// Checks `[worker]`.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let w = self;
        if w.concurrency == 0
            || w.delivery_limit == 0
            || w.job_timeout_secs == 0
            || w.fan_out_batch == 0
        {
            return Err(invalid(
                "worker",
                "concurrency, delivery_limit, job_timeout_secs and fan_out_batch must be at \
                 least 1",
            ));
        }
        if w.heartbeat_secs == 0 {
            return Err(invalid(
                "worker.heartbeat_secs",
                "must be at least 1: without heartbeats a dead connection is never noticed",
            ));
        }
        // The parser's message would quote the URL, password included.
        if w.amqp_url.expose().parse::<lapin::uri::AMQPUri>().is_err() {
            return Err(invalid(
                "worker.amqp_url",
                "is not an AMQP URL (amqp://user:password@host:port/vhost)",
            ));
        }
        if w.retry_delays_secs.contains(&0) {
            return Err(invalid(
                "worker.retry_delays_secs",
                "delays must be at least 1 second",
            ));
        }
        if w.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "worker.listen",
                format!("`{}` is not an address:port", w.listen),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// Loads `path` (or the defaults when `None`), applies environment overrides from `env`,
    /// and validates the result.
    ///
    /// # Errors
    /// When the file cannot be read or parsed, an override is malformed, or a value is invalid.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (origin, source) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                (path.display().to_string(), text)
            }
            None => ("defaults".to_owned(), String::new()),
        };
        let mut table: toml::Table = toml::from_str(&source).map_err(|err| ConfigError::Parse {
            origin: origin.clone(),
            message: err.to_string(),
        })?;
        apply_env(&mut table, env)?;
        let config: Config =
            table
                .try_into()
                .map_err(|err: toml::de::Error| ConfigError::Parse {
                    origin,
                    message: err.to_string(),
                })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and relations between fields.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some((field, message)) = self.state.problem() {
            return Err(invalid(field, message));
        }
        let c = &self.chunking;
        if c.max_chunk_size < MIN_CHUNK_SIZE {
            return Err(invalid(
                "chunking.max_chunk_size",
                format!("must be at least {MIN_CHUNK_SIZE}"),
            ));
        }
        if c.chunk_size < MIN_CHUNK_SIZE || c.chunk_size > c.max_chunk_size {
            return Err(invalid(
                "chunking.chunk_size",
                format!(
                    "{} is outside {MIN_CHUNK_SIZE}..={} (chunking.max_chunk_size)",
                    c.chunk_size, c.max_chunk_size
                ),
            ));
        }
        if c.chunk_overlap >= c.chunk_size {
            return Err(invalid(
                "chunking.chunk_overlap",
                format!(
                    "{} must be smaller than chunk_size {}",
                    c.chunk_overlap, c.chunk_size
                ),
            ));
        }
        if self.limits.max_object_bytes == 0 {
            return Err(invalid("limits.max_object_bytes", "must be at least 1"));
        }
        if self.limits.max_text_object_bytes == 0 {
            return Err(invalid(
                "limits.max_text_object_bytes",
                "must be at least 1",
            ));
        }
        if self.limits.max_text_bytes == 0 || self.limits.max_text_bytes > u32::MAX as usize {
            return Err(invalid(
                "limits.max_text_bytes",
                "must be between 1 and 4294967295",
            ));
        }
        if crate::source::endpoint::Endpoint::parse(&self.s3.default_endpoint).is_err() {
            return Err(invalid(
                "s3.default_endpoint",
                format!("`{}` is not an endpoint", self.s3.default_endpoint),
            ));
        }
        if self.s3.max_attempts == 0
            || self.s3.connect_timeout_secs == 0
            || self.s3.operation_timeout_secs == 0
        {
            return Err(invalid(
                "s3",
                "max_attempts and timeouts must be at least 1",
            ));
        }
        if self.sync.concurrency > 1024 {
            return Err(invalid(
                "sync.concurrency",
                "must be at most 1024 (0 = one per core)",
            ));
        }
        self.worker.validate()?;
        self.embedding.validate()?;
        self.transcription
            .validate()
            .map_err(|message| invalid("transcription", message))?;
        let l = &self.limits;
        if l.max_media_duration_secs == 0
            || l.max_media_metadata_bytes == 0
            || l.max_media_secs == 0
        {
            return Err(invalid(
                "limits",
                "max_media_duration_secs, max_media_metadata_bytes and max_media_secs must be at least 1",
            ));
        }
        if self.media.ffprobe_timeout_secs == 0 {
            return Err(invalid("media.ffprobe_timeout_secs", "must be at least 1"));
        }
        self.documents
            .validate()
            .map_err(|message| invalid("documents", message))?;
        if self.images.ocr_timeout_secs == 0 || self.images.max_read_bytes == 0 {
            return Err(invalid(
                "images",
                "ocr_timeout_secs and max_read_bytes must be at least 1",
            ));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!("`{}` is not a log filter", self.log.level),
            ));
        }
        Ok(())
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

/// Sets `INGESTD__TABLE__KEY=value` into `table.key`. The value is read as TOML when it parses
/// as a TOML value (numbers, booleans, arrays), else as a string.
fn apply_env(
    root: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    for (var, raw) in env {
        // The broker URL also has the short name every deployment tool expects.
        let path = if var == AMQP_URL_ENV {
            Some("WORKER__AMQP_URL")
        } else if var == crate::state::STATE_URL_ENV {
            Some("STATE__URL")
        } else {
            var.strip_prefix(ENV_PREFIX)
        };
        let Some(path) = path else {
            continue;
        };
        let parts: Vec<String> = path.split("__").map(str::to_ascii_lowercase).collect();
        let [table, key] = parts.as_slice() else {
            return Err(ConfigError::Env {
                var,
                message: "expected INGESTD__<TABLE>__<KEY>".to_owned(),
            });
        };
        // Credentials are strings whatever they look like (a secret of digits is not a number).
        let value = if key.ends_with("key_id")
            || key.ends_with("secret_access_key")
            || key == "amqp_url"
            || key == "url"
        {
            toml::Value::String(raw)
        } else {
            toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(raw))
        };
        let entry = root
            .entry(table.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let toml::Value::Table(entry) = entry else {
            return Err(ConfigError::Env {
                var,
                message: format!("`{table}` is not a table"),
            });
        };
        entry.insert(key.clone(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn the_shipped_pipeline_toml_parses_and_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipeline.toml");
        let shipped = Config::load(Some(&path), no_env()).unwrap();
        assert_eq!(shipped, Config::load(None, no_env()).unwrap());
    }

    #[test]
    fn env_overrides_win() {
        let env = [
            ("INGESTD__CHUNKING__CHUNK_SIZE".to_owned(), "512".to_owned()),
            (
                "INGESTD__CHUNKING__ENCODING".to_owned(),
                "o200k_base".to_owned(),
            ),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        let config = Config::load(None, env).unwrap();
        assert_eq!(config.chunking.chunk_size, 512);
        assert_eq!(config.chunking.encoding, Encoding::O200kBase);
    }

    #[test]
    fn credentials_from_the_environment_stay_strings() {
        let env = [
            ("INGESTD__S3__ACCESS_KEY_ID".to_owned(), "12345".to_owned()),
            (
                "INGESTD__S3__SECRET_ACCESS_KEY".to_owned(),
                "true".to_owned(),
            ),
        ];
        let config = Config::load(None, env).unwrap();
        assert_eq!(config.s3.access_key_id.as_deref(), Some("12345"));
        assert_eq!(
            config
                .s3
                .secret_access_key
                .as_ref()
                .map(crate::secret::Secret::expose),
            Some("true")
        );
    }

    #[test]
    fn the_broker_url_has_its_own_variable_and_is_never_shown() {
        let url = "amqp://user:p4ss@broker:5672/%2f";
        let env = [(AMQP_URL_ENV.to_owned(), url.to_owned())];
        let config = Config::load(None, env).unwrap();
        assert_eq!(config.worker.amqp_url.expose(), url);
        assert!(!format!("{config:?}").contains("p4ss"));
        let env = [(
            "INGESTD__WORKER__RETRY_DELAYS_SECS".to_owned(),
            "[0]".to_owned(),
        )];
        assert!(Config::load(None, env).is_err(), "a zero delay is refused");
        let malformed = "amqp:user:p4ss@broker";
        let env = [(AMQP_URL_ENV.to_owned(), malformed.to_owned())];
        let err = Config::load(None, env).unwrap_err().to_string();
        assert!(
            err.contains("worker.amqp_url") && !err.contains("p4ss"),
            "{err}"
        );
    }

    #[test]
    fn embedding_providers_and_models_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pipeline.toml");
        // The Azure example of docs/configuration.md.
        std::fs::write(
            &file,
            r#"
[embedding]
default_model = "AZURE_OPENAI"
[embedding.providers.azure]
url = "https://my-resource.openai.azure.com/openai/deployments/my-embedding-deployment"
auth = "api_key"
api_key_env = "AZURE_OPENAI_API_KEY"
api_version = "2024-02-01"
[embedding.models.AZURE_OPENAI]
provider = "azure"
model = "text-embedding-ada-002"
dimensions = 1536
"#,
        )
        .unwrap();
        let config = Config::load(Some(&file), no_env()).unwrap();
        let azure = &config.embedding.providers["azure"];
        assert_eq!(azure.auth, crate::embed::Auth::ApiKey);
        assert_eq!(
            config.embedding.models["AZURE_OPENAI"].max_input_tokens,
            8191
        );
        assert_eq!(
            config.embedding.models.len(),
            1,
            "the file's models replace the defaults"
        );

        for (toml, field) in [
            (
                "[embedding]\ndefault_model = \"X\"\n[embedding.models.X]\nprovider = \"nowhere\"\nmodel = \"m\"\n",
                "embedding.models.*.provider",
            ),
            (
                "[embedding.providers.p]\nurl = \"ftp://example.com\"\nauth = \"none\"\n",
                "embedding.providers.*.url",
            ),
            (
                "[embedding.providers.p]\nurl = \"https://example.com/v1\"\n",
                "embedding.providers.*.api_key_env",
            ),
            (
                "[embedding]\nmax_batch_inputs = 5000\n",
                "embedding.max_batch_inputs",
            ),
            (
                "[embedding]\ndefault_model = \"NOPE\"\n",
                "embedding.default_model",
            ),
        ] {
            std::fs::write(&file, toml).unwrap();
            let err = Config::load(Some(&file), no_env()).unwrap_err().to_string();
            assert!(err.contains(field), "{toml}: {err}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let env = [(
            "INGESTD__CHUNKING__CHUNK_OVERLAP".to_owned(),
            "1500".to_owned(),
        )];
        let err = Config::load(None, env).unwrap_err().to_string();
        assert!(err.contains("chunking.chunk_overlap"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[chunking]\nchunk_sise = 10\n").unwrap();
        let err = Config::load(Some(&file), no_env()).unwrap_err().to_string();
        assert!(err.contains("chunk_sise"), "{err}");

        std::fs::write(&file, "[chunking]\nencoding = \"gpt2\"\n").unwrap();
        let err = Config::load(Some(&file), no_env()).unwrap_err().to_string();
        assert!(err.contains("gpt2") || err.contains("encoding"), "{err}");

        let env = [("INGESTD__CHUNKING".to_owned(), "1".to_owned())];
        assert!(matches!(
            Config::load(None, env),
            Err(ConfigError::Env { .. })
        ));
    }
}

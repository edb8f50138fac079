//! The `ingestd` command: parse arguments, load configuration, hand over to the library.
//!
//! Exit codes: 0 every file ready or skipped; 3 some files failed (each has a `FILE_ERROR`
//! event); 2 usage or configuration error (nothing written); 1 fatal error.

use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use clap::{Parser, Subcommand, ValueEnum};
use ingestd::chunk::{Chunker, Encoding};
use ingestd::config::Config;
use ingestd::embed::{
    Auth, Embedder, Embedding, EmbeddingConfig, ModelConfig, OPENAI_API_KEY, ProviderConfig,
};
use ingestd::job::Secret;
use ingestd::job::{ItemRecord, ItemType, SchemaKind, schema};
use ingestd::pipeline::{Bounds, Request};
use ingestd::sink::JsonlSink;
use ingestd::source::{AnySource, LocalSource, S3Access, S3Credentials, S3Source};
use ingestd::telemetry::{Progress, init_tracing};
use ingestd::transcribe::{Ask, NO_PROVIDER, Transcriber};

#[derive(Parser)]
#[command(
    name = "ingestd",
    version,
    about = "Ingestion and chunking worker for S3 / DigitalOcean Spaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
    /// Chunk a local file or folder, or an S3/Spaces bucket, prefix or key, once and without a
    /// broker: chunk records as JSON Lines on stdout, events on stderr.
    Sync(SyncArgs),
    /// Consume jobs from RabbitMQ until SIGTERM: the deployment. Serves /healthz, /readyz and
    /// /metrics on worker.listen.
    Worker(WorkerArgs),
    /// Validate a job (a JSON file, or - for stdin), publish it to the jobs exchange with a
    /// confirm, and print its job id.
    Enqueue {
        /// The job file, or - for stdin.
        job: PathBuf,
        /// Configuration file [default: ./pipeline.toml if present, else built-in defaults].
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print the JSON Schema of a message.
    Schema {
        /// Which message.
        #[arg(value_enum)]
        message: SchemaArg,
    },
    /// Read one document and print its text as JSON: the process `sync` and the worker run
    /// for each document (documents.isolate), not a command for people.
    #[command(hide = true)]
    ExtractDocument {
        /// The detected format (pdf, docx, zip, ole, …).
        #[arg(long)]
        format: String,
        /// The budget, as JSON.
        #[arg(long)]
        task: String,
        /// The document, or - for stdin.
        path: PathBuf,
    },
}

#[derive(clap::Args)]
struct WorkerArgs {
    /// Configuration file [default: ./pipeline.toml if present, else built-in defaults].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Allow http and private or loopback S3 endpoints (local test servers only).
    #[arg(long)]
    allow_private_endpoint: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum SchemaArg {
    Job,
    Chunk,
    Event,
    Item,
}

#[derive(clap::Args)]
#[allow(clippy::struct_excessive_bools)] // on/off flags of the command line
struct SyncArgs {
    /// A file or folder (walked recursively), or s3://bucket[/prefix/ or /key].
    target: String,
    /// S3-compatible endpoint, e.g. nyc3.digitaloceanspaces.com (https implied)
    /// [default: the config's s3.default_endpoint].
    #[arg(long, value_name = "URL")]
    endpoint_url: Option<String>,
    /// Access key id for s3:// targets [default: the config's s3.access_key_id]. The secret
    /// comes from AWS_SECRET_ACCESS_KEY or the config, never from the command line.
    #[arg(
        long,
        value_name = "ID",
        env = "AWS_ACCESS_KEY_ID",
        hide_env_values = true
    )]
    access_key_id: Option<String>,
    /// Allow http and private or loopback endpoints (local test servers only).
    #[arg(long)]
    allow_private_endpoint: bool,
    /// Write chunk records here instead of stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write events as JSON Lines here (`-`: stderr). By default they go to stderr, and on a
    /// terminal only failed files are shown there, one readable line each.
    #[arg(long, value_name = "FILE")]
    events: Option<PathBuf>,
    /// Maximum tokens per chunk [default: 1500, or the config's].
    #[arg(long, value_name = "TOKENS")]
    chunk_size: Option<usize>,
    /// Maximum tokens shared by neighbouring chunks [default: 20, or the config's].
    #[arg(long, value_name = "TOKENS")]
    chunk_overlap: Option<usize>,
    /// Token encoding: cl100k_base or o200k_base [default: cl100k_base, or the config's].
    #[arg(long)]
    encoding: Option<String>,
    /// A tag copied onto every record (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// Prepend the file name to every chunk's text.
    #[arg(long)]
    prepend_filename: bool,
    /// Configuration file [default: ./pipeline.toml when present].
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Files in flight at once [default: the config's, else four per core]; decoding and
    /// chunking run at most one per core.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Request id copied onto every record and event.
    #[arg(long)]
    request_id: Option<String>,
    /// Print the run's summary (files by outcome, bytes read) to stderr even when it is not a
    /// terminal.
    #[arg(long)]
    summary: bool,
    /// Recognise the text in images and in PDF pages without a text layer with Tesseract
    /// (images.tesseract) and chunk it.
    #[arg(long)]
    ocr: bool,
    /// Keep every chunk of a paged document (PDF, PPTX, ODP) within one page or slide.
    #[arg(long)]
    page_boundary: bool,
    /// End chunks of tables, spreadsheets and JSON only where rows or items end (a row longer
    /// than a chunk is cut alone); rows do not overlap.
    #[arg(long)]
    split_rows: bool,
    /// At most this many rows or JSON items per chunk (implies --split-rows).
    #[arg(long, value_name = "N")]
    max_items_per_chunk: Option<std::num::NonZeroUsize>,
    /// Embed every chunk with embedding.default_model [default: the config's sync.embed, else
    /// off]. API keys come from the environment (OPENAI_API_KEY), never from the command line.
    #[arg(long)]
    embed: bool,
    /// An OpenAI-compatible base URL to embed with, e.g. https://api.openai.com/v1 or
    /// http://127.0.0.1:8080/v1; sends OPENAI_API_KEY when it is set, over https or to this
    /// machine only. Implies --embed.
    #[arg(long, value_name = "URL")]
    embedding_endpoint: Option<String>,
    /// A model of embedding.models (OPENAI, OPENAI_ADA_SMALL_1536, …) or, with
    /// --embedding-endpoint, the server's own model name. Implies --embed.
    #[arg(long, value_name = "NAME")]
    embedding_model: Option<String>,
    /// An OpenAI-compatible base URL to transcribe audio and video with, e.g.
    /// https://api.openai.com/v1 [default: the config's transcription.url, else none: audio and
    /// video get their metadata record only]. The key comes from transcription.api_key_env.
    #[arg(long, value_name = "URL")]
    transcription_url: Option<String>,
    /// Ask the transcription provider to label speakers (transcription.speaker_labels_model).
    #[arg(long)]
    speaker_labels: bool,
    /// Let the transcription provider detect the language instead of sending
    /// transcription.language.
    #[arg(long)]
    detect_language: bool,
    /// Remember what was synced in this SQLite file (created on first use) or postgres:// URL:
    /// a later run skips what is unchanged without reading it and reports what was deleted.
    #[arg(long, value_name = "FILE|URL")]
    state: Option<String>,
}

/// Where chunks must end besides their size: `--page-boundary`, `--split-rows`,
/// `--max-items-per-chunk`.
fn bounds(args: &SyncArgs) -> Bounds {
    Bounds {
        pages: args.page_boundary,
        rows: match (args.max_items_per_chunk, args.split_rows) {
            (Some(max), _) => Some(max.get()),
            (None, true) => Some(usize::MAX),
            (None, false) => None,
        },
    }
}

/// Whether a one-shot run embeds, and with which model; refused before anything is written
/// when the model cannot be used.
fn embedding_plan(
    args: &SyncArgs,
    config: &Config,
    size: usize,
    runtime: &tokio::runtime::Runtime,
) -> Result<(bool, Embedding), Failure> {
    let embed = args.embed
        || args.embedding_endpoint.is_some()
        || args.embedding_model.is_some()
        || config.sync.embed;
    let embedding = if embed {
        let _runtime = runtime.enter();
        let embedder = Embedder::start(&embedding_config(args, config)?, |var| {
            std::env::var(var).ok()
        });
        match embedder.plan(false, None, size) {
            Ok(Embedding::Unavailable(err)) => {
                return Err(usage(anyhow!("{}: {}", err.code, err.message)));
            }
            Ok(plan) => plan,
            Err(why) => return Err(usage(anyhow!(why))),
        }
    } else {
        Embedding::Skip
    };
    Ok((embed, embedding))
}

/// The transcription provider of a one-shot run: the config's, at `--transcription-url` when
/// given; none when neither names one.
fn transcriber(
    args: &SyncArgs,
    config: &Config,
) -> Result<Result<Arc<Transcriber>, String>, Failure> {
    let mut transcription = config.transcription.clone();
    if let Some(url) = &args.transcription_url {
        transcription.url = Some(url.clone());
    }
    transcription
        .validate()
        .map_err(|why| usage(anyhow!(why)))?;
    let started = Transcriber::start(&transcription, |var| std::env::var(var).ok())
        .map_err(|why| usage(anyhow!(why)))?;
    Ok(started.ok_or_else(|| NO_PROVIDER.to_owned()))
}

/// The `[embedding]` of a one-shot run: the config's, with the model and endpoint of the
/// command line. An endpoint becomes a provider of its own that every model is sent to.
fn embedding_config(args: &SyncArgs, config: &Config) -> Result<EmbeddingConfig, Failure> {
    let mut embedding = config.embedding.clone();
    let name = args
        .embedding_model
        .clone()
        .unwrap_or_else(|| embedding.default_model.clone());
    if let Some(url) = &args.embedding_endpoint {
        const PROVIDER: &str = "command-line";
        if !reqwest::Url::parse(url).is_ok_and(|url| matches!(url.scheme(), "http" | "https")) {
            return Err(usage(anyhow!(
                "--embedding-endpoint: `{url}` is not an http(s) URL"
            )));
        }
        // The key goes only where it cannot be read on the way: https, or this machine.
        let private = reqwest::Url::parse(url).is_ok_and(|url| {
            url.scheme() == "https"
                || matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
        });
        let keyed =
            private && std::env::var(OPENAI_API_KEY).is_ok_and(|key| !key.trim().is_empty());
        let provider = if keyed {
            ProviderConfig::new(url, Auth::Bearer, Some(OPENAI_API_KEY.to_owned()))
        } else {
            ProviderConfig::new(url, Auth::None, None)
        };
        let model = match embedding.models.get(&name) {
            Some(known) => ModelConfig {
                provider: PROVIDER.to_owned(),
                ..known.clone()
            },
            // The server's own model: its vectors' length is learned from the first answer.
            None => ModelConfig {
                provider: PROVIDER.to_owned(),
                model: name.clone(),
                dimensions: None,
                request_dimensions: false,
                max_input_tokens: config.chunking.max_chunk_size,
            },
        };
        embedding.providers.insert(PROVIDER.to_owned(), provider);
        embedding.models.insert(name.clone(), model);
    }
    // A model that is not configured is reported with the models that are (EMBEDDING_NOT_CONFIGURED).
    embedding.default_model = name;
    Ok(embedding)
}

fn parse_tag(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("`{raw}` is not KEY=VALUE")),
    }
}

/// A failure and the exit code it maps to.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: error.into(),
    }
}

fn fatal(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 1,
        error: error.into(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sync(args) => sync(args),
        Command::Worker(args) => worker(&args),
        Command::Enqueue { job, config } => enqueue(&job, config.as_deref()),
        Command::Schema { message } => print_schema(message),
        Command::ExtractDocument { format, task, path } => extract_document(&format, &task, &path),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure { code, error }) => {
            eprintln!("error: {error:#}");
            ExitCode::from(code)
        }
    }
}

fn worker(args: &WorkerArgs) -> Result<u8, Failure> {
    let config = load_config(args.config.as_deref())?;
    init_tracing(&config.log);
    pin_cpu_slots(&config);
    let runtime = tokio::runtime::Runtime::new()
        .context("starting the async runtime")
        .map_err(fatal)?;
    runtime
        .block_on(ingestd::worker::run(
            Arc::new(config),
            args.allow_private_endpoint,
            stop_signal(),
        ))
        .map_err(|err| match err {
            // A store that can never be used as configured is a configuration error.
            ingestd::worker::WorkerError::State(_) => usage(anyhow!(err)),
            other @ ingestd::worker::WorkerError::Listen { .. } => fatal(other),
        })?;
    Ok(0)
}

/// Resolves on SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn enqueue(path: &Path, config: Option<&Path>) -> Result<u8, Failure> {
    let config = load_config(config)?;
    let bytes = if path == Path::new("-") {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)
            .context("reading the job from stdin")
            .map_err(usage)?;
        bytes
    } else {
        std::fs::read(path)
            .with_context(|| format!("reading {}", path.display()))
            .map_err(usage)?
    };
    let mut job = ingestd::job::Job::from_json(&bytes, config.chunking.limits())
        .map_err(|err| usage(anyhow!("{}: {err}", err.code())))?;
    let job_id = job
        .job_id
        .get_or_insert_with(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let mut seed = bytes.clone();
            seed.extend_from_slice(&now.as_nanos().to_le_bytes());
            seed.extend_from_slice(&std::process::id().to_le_bytes());
            blake3::hash(&seed).to_hex()[..32].to_owned()
        })
        .clone();
    let runtime = tokio::runtime::Runtime::new()
        .context("starting the async runtime")
        .map_err(fatal)?;
    runtime
        .block_on(ingestd::worker::enqueue(&config.worker, &job))
        .map_err(|err| fatal(anyhow!(err)))?;
    println!("{job_id}");
    Ok(0)
}

fn extract_document(format: &str, task: &str, path: &Path) -> Result<u8, Failure> {
    let task = serde_json::from_str(task)
        .context("reading the task")
        .map_err(usage)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .map_err(fatal)?;
    let mut out = BufWriter::new(std::io::stdout().lock());
    runtime
        .block_on(ingestd::extract::document::serve(
            format, task, path, &mut out,
        ))
        .context("writing the document's text")
        .map_err(fatal)?;
    Ok(0)
}

fn print_schema(message: SchemaArg) -> Result<u8, Failure> {
    let kind = match message {
        SchemaArg::Job => SchemaKind::Job,
        SchemaArg::Chunk => SchemaKind::Chunk,
        SchemaArg::Event => SchemaKind::Event,
        SchemaArg::Item => SchemaKind::Item,
    };
    let text = serde_json::to_string_pretty(&schema(kind)).map_err(fatal)?;
    println!("{text}");
    Ok(0)
}

/// Gives CPU slots cores of their own when the configuration lets it and the machine suits it
/// (see `ingestd::cores`); before the runtime starts any thread.
fn pin_cpu_slots(config: &Config) {
    let pin_slots = config.cpu.pin_slots;
    let cores = if pin_slots {
        ingestd::cores::pin_cpu_slots()
    } else {
        None
    };
    tracing::debug!(pin_slots, ?cores, "CPU slots' cores");
}

fn load_config(explicit: Option<&Path>) -> Result<Config, Failure> {
    let default = Path::new("pipeline.toml");
    let path = explicit.or_else(|| default.is_file().then_some(default));
    Config::load(path, std::env::vars()).map_err(usage)
}

fn sync(args: SyncArgs) -> Result<u8, Failure> {
    // Everything that can be wrong with the request is checked before anything is written.
    let config = load_config(args.config.as_deref())?;
    init_tracing(&config.log);
    pin_cpu_slots(&config);
    let chunking = &config.chunking;
    let size = args.chunk_size.unwrap_or(chunking.chunk_size);
    let overlap = args.chunk_overlap.unwrap_or(chunking.chunk_overlap);
    let encoding = match &args.encoding {
        Some(name) => name.parse::<Encoding>().map_err(|e| usage(anyhow!(e)))?,
        None => chunking.encoding,
    };
    if size > chunking.max_chunk_size {
        return Err(usage(anyhow!(
            "--chunk-size {size} is above the maximum of {} (chunking.max_chunk_size)",
            chunking.max_chunk_size
        )));
    }
    let chunker = Chunker::new(encoding, size, overlap).map_err(usage)?;
    let runtime = tokio::runtime::Runtime::new()
        .context("starting the async runtime")
        .map_err(fatal)?;
    let (embed, embedding) = embedding_plan(&args, &config, size, &runtime)?;
    let transcriber = {
        let _runtime = runtime.enter();
        transcriber(&args, &config)?
    };
    let (source, exact) = runtime.block_on(open_source(&args, &config))?;
    let incremental = match &args.state {
        Some(location) => Some(runtime.block_on(incremental(location, &args, &config, exact))?),
        None => None,
    };
    let progress = Progress::new(std::io::stderr().is_terminal());
    let mut sink = sink(&args, &progress)?;
    let bounds = bounds(&args);
    let request = Arc::new(Request {
        chunker: Arc::new(chunker),
        prepend_filename: args.prepend_filename || chunking.prepend_filename,
        tags: args
            .tags
            .into_iter()
            .map(|(k, v)| (k, serde_json::Value::String(v)))
            .collect(),
        request_id: args.request_id,
        customer_id: None,
        data_source_id: None,
        max_object_bytes: config.limits.max_object_bytes,
        max_text_object_bytes: config.limits.max_text_object_bytes,
        max_text_bytes: config.limits.max_text_bytes,
        max_image_pixels: config.limits.max_image_pixels,
        image_gps: config.images.include_gps,
        ocr: args.ocr.then(|| config.images.ocr()),
        max_image_read_bytes: config.images.max_read_bytes,
        cpu: Arc::new(tokio::sync::Semaphore::new(ingestd::config::cpu_slots())),
        embedding,
        media: config.limits.media(),
        ffprobe: config.media.ffprobe(),
        ffmpeg: config.media.ffmpeg(),
        transcriber,
        transcription: Ask {
            speaker_labels: args.speaker_labels,
            detect_language: args.detect_language,
        },
        max_media: config.limits.max_media(),
        documents: config.documents.clone(),
        bounds,
        skip_processing: false,
    });
    if let AnySource::S3(catalog) = &source
        && args.target == "s3://"
    {
        return runtime.block_on(write_catalog(catalog, &request, &mut sink));
    }
    let concurrency = args
        .concurrency
        .unwrap_or_else(|| config.sync.effective_concurrency(embed));
    // The writer runs on the runtime's worker threads, not on this one: each record a file
    // task hands it is then a task wake-up on a busy worker, not a sleeping thread woken on
    // another core (measured: a third of the context switches, a tenth less CPU).
    let task = runtime.spawn(async move {
        let summary = ingestd::sync::run(
            source,
            request,
            concurrency,
            incremental,
            &mut sink,
            &progress,
        )
        .await;
        (summary, progress)
    });
    let (summary, progress) = runtime
        .block_on(task)
        .map_err(|err| fatal(anyhow!("the sync stopped: {err}")))?;
    let summary = summary.map_err(fatal)?;
    progress.finish();
    if args.summary || std::io::stderr().is_terminal() {
        eprint!("{}", summary.render());
    }
    Ok(summary.exit_code())
}

/// Bytes of records written at once: a record is a few KB, and the default 8 KiB wrote one
/// or two at a time (over the corpus, 4,343 writes of 26.7 MB; now 424).
const RECORDS_BUFFER: usize = 64 * 1024;

/// Where `sync` writes: records to stdout or `--out`; events to stderr or `--events`. On a
/// terminal, events on stderr wait for the progress bar, and a person reads failures there,
/// not every event's JSON (`--events -` asks for it).
fn sink(args: &SyncArgs, progress: &Progress) -> Result<JsonlSink, Failure> {
    let chunks: Box<dyn Write + Send> = match &args.out {
        Some(path) => Box::new(BufWriter::with_capacity(RECORDS_BUFFER, create(path)?)),
        None => Box::new(BufWriter::with_capacity(RECORDS_BUFFER, std::io::stdout())),
    };
    let terminal = std::io::stderr().is_terminal();
    let to_stderr = args
        .events
        .as_ref()
        .is_none_or(|path| path.as_os_str() == "-");
    let events: Box<dyn Write + Send> = match &args.events {
        Some(path) if !to_stderr => Box::new(BufWriter::new(create(path)?)),
        _ => Box::new(std::io::stderr()),
    };
    let mut sink = JsonlSink::new(chunks, events);
    if terminal && to_stderr {
        sink = sink.with_event_wrapper(progress.suspender());
    }
    if terminal && args.events.is_none() {
        sink = sink.with_readable_events();
    }
    Ok(sink)
}

/// `ingestd sync s3://`: one item record per bucket the key can see. A failure to list is the
/// run's failure: exit 3 with one line naming the code.
async fn write_catalog(
    source: &S3Source,
    request: &Request,
    sink: &mut JsonlSink,
) -> Result<u8, Failure> {
    let buckets = match source.buckets().await {
        Ok(buckets) => buckets,
        Err(err) => {
            eprintln!("error: {}: {}", err.code, err.message);
            return Ok(3);
        }
    };
    let kind = ingestd::source::Source::kind(source);
    for bucket in buckets {
        let item = ItemRecord {
            schema_version: ingestd::job::SCHEMA_VERSION,
            item_type: ItemType::Bucket,
            request_id: request.request_id.clone(),
            customer_id: request.customer_id.clone(),
            data_source_id: request.data_source_id.clone(),
            bucket: bucket.name,
            key: None,
            size: None,
            etag: None,
            last_modified: bucket
                .created
                .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
            data_source_metadata: kind.data_source_metadata().to_owned(),
            file_metadata: kind.bucket_metadata().to_owned(),
        };
        sink.write_item(&item).map_err(fatal)?;
    }
    sink.flush().map_err(fatal)?;
    Ok(0)
}

/// `--state`: the store, and where this target's objects are remembered in it.
async fn incremental(
    location: &str,
    args: &SyncArgs,
    config: &Config,
    exact: bool,
) -> Result<ingestd::sync::Incremental, Failure> {
    let key = std::env::var(&config.state.key_env).ok();
    let store = ingestd::state::Store::open(location, key.as_deref())
        .await
        .map_err(|err| {
            let failure = if err.retryable() { fatal } else { usage };
            failure(anyhow!("--state: {}: {err}", err.code()))
        })?;
    let (scope, bucket, prefix) = if let Some(location) = args.target.strip_prefix("s3://") {
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        let endpoint = args
            .endpoint_url
            .clone()
            .unwrap_or_else(|| config.s3.default_endpoint.clone());
        let scope = ingestd::state::scope(None, None, Some(&endpoint));
        (scope, bucket.to_owned(), prefix.to_owned())
    } else {
        // A folder is remembered by its absolute path; one file as part of its folder.
        let path = std::fs::canonicalize(&args.target)
            .with_context(|| format!("cannot read {}", args.target))
            .map_err(usage)?;
        let folder = if path.is_file() {
            path.parent().map(Path::to_path_buf).unwrap_or_default()
        } else {
            path
        };
        let scope = ingestd::sync::LOCAL_SCOPE.to_owned();
        (scope, folder.display().to_string(), String::new())
    };
    Ok(ingestd::sync::Incremental {
        store,
        scope,
        bucket,
        prefix,
        deletions: !exact,
    })
}

/// The source named by the target: a local path, or an S3 bucket/prefix/key whose endpoint has
/// passed the endpoint policy; and whether it is one object (not a folder or prefix).
async fn open_source(args: &SyncArgs, config: &Config) -> Result<(AnySource, bool), Failure> {
    let Some(location) = args.target.strip_prefix("s3://") else {
        let local = LocalSource::new(&args.target, config.sync.follow_symlinks)
            .with_context(|| format!("cannot read {}", args.target))
            .map_err(usage)?;
        let exact = Path::new(&args.target).is_file();
        return Ok((AnySource::Local(local), exact));
    };
    let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
    if bucket.is_empty() && !prefix.is_empty() {
        return Err(usage(anyhow!(
            "{}: name a bucket, as s3://bucket[/prefix], or none (s3://) for the catalog",
            args.target
        )));
    }
    let access = S3Access::new(&config.s3, args.allow_private_endpoint);
    let access_key = args
        .access_key_id
        .clone()
        .or_else(|| config.s3.access_key_id.clone());
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY")
        .ok()
        .map(Secret::new)
        .or_else(|| config.s3.secret_access_key.clone());
    let (Some(access_key), Some(secret_key)) = (access_key, secret) else {
        return Err(usage(anyhow!(
            "no credentials to read {}: set AWS_ACCESS_KEY_ID (or --access-key-id) and \
             AWS_SECRET_ACCESS_KEY, or s3.access_key_id and s3.secret_access_key in the config",
            args.target
        )));
    };
    let credentials = S3Credentials {
        access_key,
        secret_key,
    };
    let source = access
        .open(args.endpoint_url.as_deref(), &credentials, bucket, prefix)
        .await
        .map_err(|err| {
            let failure = if err.retryable() { fatal } else { usage };
            failure(anyhow!("{}: {}", err.code, err.message))
        })?;
    if bucket.is_empty() {
        // `s3://`: the catalog of buckets, not files.
        return Ok((AnySource::S3(source), false));
    }
    // A key names one object, anything else a prefix. Wrong credentials or a missing bucket
    // then surface from the listing as classified FILE_ERROR events.
    match source.clone().narrow_to_exact_object().await {
        Ok(narrowed) => {
            let exact = narrowed.is_single();
            Ok((AnySource::S3(narrowed), exact))
        }
        // A passing fault must not silently turn a key into a prefix.
        Err(err) if err.retryable() => Err(fatal(anyhow!("{}: {}", err.code, err.message))),
        Err(_) => Ok((AnySource::S3(source), false)),
    }
}

fn create(path: &Path) -> Result<std::fs::File, Failure> {
    std::fs::File::create(path)
        .with_context(|| format!("cannot create {}", path.display()))
        .map_err(usage)
}

//! Diagnostics: tracing set-up, the time spent in each stage of the pipeline (shown by the
//! worker's `/metrics`), and the progress bar of one-shot runs.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;

/// `[log]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter (`info`, `ingestd=debug,warn`); `RUST_LOG` wins when set.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// `text` for people, `json` for log pipelines.
    #[serde(default)]
    pub format: LogFormat,
}

/// Warnings and errors only: one-shot output stays readable.
fn default_log_level() -> String {
    "warn".to_owned()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_log_level(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Silences lapin's log of returned messages (which prints their bodies).
const QUIET_RETURNS: &str = "lapin::returned_messages=off";

/// Symphonia logs every oddity of a file (junk before a header, a damaged packet, a cut tag);
/// what matters reaches the file's outcome event instead.
const QUIET_DEMUXERS: &str = "symphonia=off";

/// Installs the global tracing subscriber: to stderr, filtered by `RUST_LOG` or the config.
pub fn init_tracing(config: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.level))
        // lapin logs every message the broker returns, body included: customer text. The
        // worker reports unroutable outputs itself, without their content.
        .add_directive(QUIET_RETURNS.parse().unwrap_or_default())
        .add_directive(QUIET_DEMUXERS.parse().unwrap_or_default());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second initialisation (tests) keeps the first subscriber.
    let _ = match config.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Files, bytes and chunks done so far, drawn on stderr when it is a terminal.
pub struct Progress {
    /// Hidden when stderr is not a terminal.
    bar: ProgressBar,
    /// Bytes read so far.
    bytes: AtomicU64,
    /// Chunks emitted so far.
    chunks: AtomicU64,
}

impl Progress {
    /// A progress bar, drawn only when `visible`.
    #[must_use]
    pub fn new(visible: bool) -> Self {
        let target = if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        if let Ok(style) = ProgressStyle::with_template("{spinner} {elapsed} {pos} files · {msg}")
        {
            bar.set_style(style);
        }
        bar.enable_steady_tick(Duration::from_millis(120));
        Progress {
            bar,
            bytes: AtomicU64::new(0),
            chunks: AtomicU64::new(0),
        }
    }

    /// Counts one finished file.
    pub fn file_done(&self, bytes: u64, chunks: usize) {
        let bytes = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let chunks = self.chunks.fetch_add(chunks as u64, Ordering::Relaxed) + chunks as u64;
        self.bar.inc(1);
        self.bar
            .set_message(format!("{:.1} MB · {chunks} chunks", bytes as f64 / 1e6));
    }

    /// A wrapper that hides the bar while `write` prints, for interleaved event lines.
    pub fn suspender(&self) -> impl Fn(&mut dyn FnMut()) + Send + 'static {
        let bar = self.bar.clone();
        move |write| bar.suspend(write)
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The stages of the pipeline whose time is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Waiting for an object's bytes, read as a stream.
    Download,
    /// Parsing and decoding bytes to text or facts (text formats, documents, image headers,
    /// media containers).
    Extract,
    /// Cutting text into chunk records.
    Chunk,
    /// A request to an embedding provider.
    Embed,
    /// Waiting for the broker's confirms of published outputs.
    Publish,
}

impl Stage {
    /// Every stage, in the order of their declaration (`stage as usize` is its place).
    pub const ALL: [Stage; 5] = [
        Stage::Download,
        Stage::Extract,
        Stage::Chunk,
        Stage::Embed,
        Stage::Publish,
    ];

    /// The stage's label on `ingestd_stage_duration_seconds`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Stage::Download => "download",
            Stage::Extract => "extract",
            Stage::Chunk => "chunk",
            Stage::Embed => "embed",
            Stage::Publish => "publish",
        }
    }
}

/// Labels of a stage's histogram.
#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
pub struct StageLabel {
    stage: &'static str,
}

/// Time spent in each stage, in the process: one histogram per stage.
pub type StageTimes = prometheus_client::metrics::family::Family<
    StageLabel,
    prometheus_client::metrics::histogram::Histogram,
    fn() -> prometheus_client::metrics::histogram::Histogram,
>;

/// Upper bounds (seconds) of the stage histograms' buckets: a piece read or a small file's
/// chunks take milliseconds, a document or a provider request seconds.
const STAGE_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0, 300.0,
];

fn stage_histogram() -> prometheus_client::metrics::histogram::Histogram {
    prometheus_client::metrics::histogram::Histogram::new(STAGE_BUCKETS)
}

/// The process's stage timings.
pub fn stages() -> &'static StageTimes {
    static STAGES: std::sync::OnceLock<StageTimes> = std::sync::OnceLock::new();
    STAGES.get_or_init(|| StageTimes::new_with_constructor(stage_histogram))
}

/// Records `elapsed` in `stage`.
pub fn timed(stage: Stage, elapsed: Duration) {
    // Each stage's histogram, taken from the family once: no lookup on every piece read.
    static EACH: std::sync::OnceLock<[prometheus_client::metrics::histogram::Histogram; 5]> =
        std::sync::OnceLock::new();
    let each = EACH.get_or_init(|| {
        Stage::ALL.map(|stage| {
            stages().get_or_create_owned(&StageLabel {
                stage: stage.name(),
            })
        })
    });
    each[stage as usize].observe(elapsed.as_secs_f64());
}

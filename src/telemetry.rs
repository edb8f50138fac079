//! Diagnostics: tracing set-up, and the progress bar of one-shot runs.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::{LogConfig, LogFormat};

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

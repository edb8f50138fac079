//! Counters behind `/metrics`, in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::embed::Stats;
use crate::pipeline::{FileReport, Tally};
use crate::transcribe;

/// Upper bounds (seconds) of the job duration histogram's buckets.
const DURATION_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0];

/// What the worker has done since it started, and whether it is ready.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connected and consuming.
    ready: AtomicBool,
    jobs: Mutex<BTreeMap<(String, &'static str), u64>>,
    files: Mutex<BTreeMap<(String, &'static str), u64>>,
    chunks: AtomicU64,
    tokens: AtomicU64,
    bytes_read: AtomicU64,
    in_flight: AtomicI64,
    reconnects: AtomicU64,
    /// Counts per bucket of [`DURATION_BUCKETS`] (not cumulative), then the sum in µs.
    durations: Mutex<([u64; DURATION_BUCKETS.len() + 1], u64)>,
    /// Requests to embedding providers.
    embedding: Arc<Stats>,
    /// Requests to the transcription provider.
    transcription: Arc<transcribe::Stats>,
}

fn bump<K: Ord>(map: &Mutex<BTreeMap<K, u64>>, key: K) {
    let mut map = map
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *map.entry(key).or_default() += 1;
}

impl Metrics {
    /// Metrics that also show the embedding and transcription providers' stats.
    #[must_use]
    pub fn new(embedding: Arc<Stats>, transcription: Arc<transcribe::Stats>) -> Self {
        Metrics {
            embedding,
            transcription,
            ..Metrics::default()
        }
    }

    /// Marks the worker ready (consuming) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether the worker is connected and consuming.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// A connection to the broker was lost and is being made again.
    pub fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// A job started.
    pub fn job_started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A job of `job_type` ended with `outcome` after `elapsed`.
    pub fn job_done(&self, job_type: &str, outcome: &'static str, elapsed: Duration) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        // Types come from messages: keep the label set small and the exposition valid.
        let label = if job_type.len() <= 32
            && job_type
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            job_type.to_owned()
        } else {
            "other".to_owned()
        };
        bump(&self.jobs, (label, outcome));
        let secs = elapsed.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(DURATION_BUCKETS.len());
        let mut durations = self
            .durations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        durations.0[bucket] += 1;
        durations.1 += u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    }

    /// A file was processed.
    pub fn file_done(&self, report: &FileReport) {
        let tally = report.tally();
        if let Tally::Ready { chunks, tokens } = tally {
            self.chunks.fetch_add(chunks, Ordering::Relaxed);
            self.tokens.fetch_add(tokens, Ordering::Relaxed);
        }
        let (media, outcome) = (report.media_label().to_owned(), tally.label());
        self.bytes_read
            .fetch_add(report.bytes_read, Ordering::Relaxed);
        bump(&self.files, (media, outcome));
    }

    /// Everything, in the Prometheus text exposition format.
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut scalar = |name: &str, kind: &str, help: &str, value: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        scalar(
            "ingestd_ready",
            "gauge",
            "1 when connected to the broker and consuming.",
            u8::from(self.is_ready()).to_string(),
        );
        scalar(
            "ingestd_jobs_in_flight",
            "gauge",
            "Jobs being processed.",
            self.in_flight.load(Ordering::Relaxed).to_string(),
        );
        scalar(
            "ingestd_reconnects_total",
            "counter",
            "Broker connections lost and made again.",
            self.reconnects.load(Ordering::Relaxed).to_string(),
        );
        scalar(
            "ingestd_chunks_total",
            "counter",
            "Chunk records published.",
            self.chunks.load(Ordering::Relaxed).to_string(),
        );
        scalar(
            "ingestd_tokens_total",
            "counter",
            "Tokens in published chunk records.",
            self.tokens.load(Ordering::Relaxed).to_string(),
        );
        scalar(
            "ingestd_bytes_read_total",
            "counter",
            "Bytes read from sources.",
            self.bytes_read.load(Ordering::Relaxed).to_string(),
        );
        self.render_providers(&mut out);
        let labelled = |out: &mut String,
                        name: &str,
                        help: &str,
                        label: &str,
                        map: &Mutex<BTreeMap<(String, &'static str), u64>>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let map = map
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for ((first, outcome), count) in map.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{{label}=\"{first}\",outcome=\"{outcome}\"}} {count}"
                );
            }
        };
        labelled(
            &mut out,
            "ingestd_jobs_total",
            "Jobs by type and outcome.",
            "type",
            &self.jobs,
        );
        labelled(
            &mut out,
            "ingestd_files_total",
            "Files by media type and outcome.",
            "media_type",
            &self.files,
        );
        let (counts, sum_us) = *self
            .durations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let name = "ingestd_job_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from delivery to ack.\n# TYPE {name} histogram"
        );
        let mut cumulative = 0;
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += counts[i];
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += counts[DURATION_BUCKETS.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(out, "{name}_sum {}", sum_us as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {cumulative}");
        out
    }

    /// The embedding providers' counters.
    fn render_providers(&self, out: &mut String) {
        let (embedding, transcription) = (&self.embedding, &self.transcription);
        requests(
            out,
            "ingestd_embedding_requests_total",
            "Requests to embedding providers by outcome (retried: failed and tried again; \
             failed: gave up).",
            [&embedding.succeeded, &embedding.retried, &embedding.failed],
        );
        counter(
            out,
            "ingestd_embedding_inputs_total",
            "Chunks embedded.",
            embedding.inputs.load(Ordering::Relaxed),
        );
        requests(
            out,
            "ingestd_transcription_requests_total",
            "Requests to the transcription provider by outcome (ok: a piece transcribed; \
             retried: failed and tried again; failed: gave up).",
            [
                &transcription.succeeded,
                &transcription.retried,
                &transcription.failed,
            ],
        );
        counter(
            out,
            "ingestd_transcription_audio_seconds_total",
            "Seconds of audio transcribed.",
            transcription.audio_ms.load(Ordering::Relaxed) as f64 / 1000.0,
        );
    }
}

/// A provider's requests by outcome: `ok`, `retried`, `failed`, in that order.
fn requests(out: &mut String, name: &str, help: &str, counts: [&AtomicU64; 3]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (outcome, count) in ["ok", "retried", "failed"].into_iter().zip(counts) {
        let _ = writeln!(
            out,
            "{name}{{outcome=\"{outcome}\"}} {}",
            count.load(Ordering::Relaxed)
        );
    }
}

/// A counter without labels.
fn counter(out: &mut String, name: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

//! What the worker has done, behind `/metrics`: a prometheus-client registry, encoded in the
//! Prometheus text format. The providers' request counters and the pipeline's stage timings
//! are read where they are kept, at each scrape.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::embed::Stats;
use crate::pipeline::{FileReport, Tally};
use crate::transcribe;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of the job duration histogram's buckets.
const DURATION_BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    r#type: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FileLabels {
    media_type: &'static str,
    outcome: &'static str,
}

/// What the worker has done since it started, and whether it is ready.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// 1 when connected and consuming.
    ready: Gauge,
    in_flight: Gauge,
    reconnects: Counter,
    chunks: Counter,
    tokens: Counter,
    bytes_read: Counter,
    jobs: Family<JobLabels, Counter>,
    files: Family<FileLabels, Counter>,
    durations: Histogram,
}

impl Metrics {
    /// Metrics that also show the embedding and transcription providers' requests and the
    /// pipeline's stage timings ([`crate::telemetry::stages`]).
    #[must_use]
    pub fn new(embedding: Arc<Stats>, transcription: Arc<transcribe::Stats>) -> Self {
        let mut registry = Registry::default();
        let metrics = Metrics {
            ready: Gauge::default(),
            in_flight: Gauge::default(),
            reconnects: Counter::default(),
            chunks: Counter::default(),
            tokens: Counter::default(),
            bytes_read: Counter::default(),
            jobs: Family::default(),
            files: Family::default(),
            durations: Histogram::new(DURATION_BUCKETS),
            registry: Registry::default(),
        };
        registry.register(
            "ingestd_build",
            "The version and git commit this worker was built from",
            Info::new([
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", env!("INGESTD_GIT_COMMIT")),
            ]),
        );
        let gauges = [
            (
                "ingestd_ready",
                "1 when connected to the broker and consuming",
                &metrics.ready,
            ),
            (
                "ingestd_jobs_in_flight",
                "Jobs being processed",
                &metrics.in_flight,
            ),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge.clone());
        }
        let counters = [
            (
                "ingestd_reconnects",
                "Broker connections lost and made again",
                &metrics.reconnects,
            ),
            ("ingestd_chunks", "Chunk records published", &metrics.chunks),
            (
                "ingestd_tokens",
                "Tokens in published chunk records",
                &metrics.tokens,
            ),
            (
                "ingestd_bytes_read",
                "Bytes read from sources",
                &metrics.bytes_read,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        register_providers(&mut registry, embedding, transcription);
        registry.register(
            "ingestd_jobs",
            "Jobs by type and outcome",
            metrics.jobs.clone(),
        );
        registry.register(
            "ingestd_files",
            "Files by media type and outcome",
            metrics.files.clone(),
        );
        registry.register(
            "ingestd_job_duration_seconds",
            "Time from delivery to ack",
            metrics.durations.clone(),
        );
        registry.register(
            "ingestd_stage_duration_seconds",
            "Time files spent in each stage: download (waiting for bytes read as a stream), \
             extract (parsing and decoding to text or facts), chunk, embed (provider \
             requests), publish (waiting for the broker's confirms)",
            crate::telemetry::stages().clone(),
        );
        Metrics {
            registry,
            ..metrics
        }
    }
    /// Marks the worker ready (consuming) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Whether the worker is connected and consuming.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.ready.get() == 1
    }

    /// A connection to the broker was lost and is being made again.
    pub fn reconnected(&self) {
        self.reconnects.inc();
    }

    /// A job started.
    pub fn job_started(&self) {
        self.in_flight.inc();
    }

    /// A job of `job_type` ended with `outcome` after `elapsed`.
    pub fn job_done(&self, job_type: &str, outcome: &'static str, elapsed: Duration) {
        self.in_flight.dec();
        // Types come from messages: keep the label set small.
        let label = if job_type.len() <= 32
            && job_type
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            job_type.to_owned()
        } else {
            "other".to_owned()
        };
        self.jobs
            .get_or_create(&JobLabels {
                r#type: label,
                outcome,
            })
            .inc();
        self.durations.observe(elapsed.as_secs_f64());
    }

    /// A file was processed.
    pub fn file_done(&self, report: &FileReport) {
        let tally = report.tally();
        if let Tally::Ready { chunks, tokens } = tally {
            self.chunks.inc_by(chunks);
            self.tokens.inc_by(tokens);
        }
        self.bytes_read.inc_by(report.bytes_read);
        let labels = FileLabels {
            media_type: report.media_label(),
            outcome: tally.label(),
        };
        self.files.get_or_create(&labels).inc();
    }

    /// Everything, in the Prometheus text exposition format ([`CONTENT_TYPE`]).
    #[must_use]
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String does not fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The providers' request counters, read from their own stats at each scrape.
fn register_providers(
    registry: &mut Registry,
    embedding: Arc<Stats>,
    transcription: Arc<transcribe::Stats>,
) {
    registry.register(
        "ingestd_embedding_requests",
        "Requests to embedding providers by outcome (retried: failed and tried again; \
             failed: gave up)",
        Read(Arc::clone(&embedding), |s: &Stats, e| {
            outcomes(e, [&s.succeeded, &s.retried, &s.failed])
        }),
    );
    registry.register(
        "ingestd_embedding_inputs",
        "Chunks embedded",
        Read(embedding, |s: &Stats, e| {
            counter(e, &s.inputs.load(Ordering::Relaxed))
        }),
    );
    registry.register(
        "ingestd_transcription_requests",
        "Requests to the transcription provider by outcome (ok: a piece transcribed; \
             retried: failed and tried again; failed: gave up)",
        Read(Arc::clone(&transcription), |s: &transcribe::Stats, e| {
            outcomes(e, [&s.succeeded, &s.retried, &s.failed])
        }),
    );
    registry.register(
        "ingestd_transcription_audio_seconds",
        "Seconds of audio transcribed",
        Read(transcription, |s: &transcribe::Stats, e| {
            #[allow(clippy::cast_precision_loss)] // milliseconds of audio: far below 2^52
            let seconds = s.audio_ms.load(Ordering::Relaxed) as f64 / 1000.0;
            counter(e, &seconds)
        }),
    );
}

type Encoded = Result<(), std::fmt::Error>;

/// A counter kept elsewhere, read at each scrape: the function encodes it out of `T`.
struct Read<T>(Arc<T>, fn(&T, MetricEncoder) -> Encoded);

impl<T> std::fmt::Debug for Read<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Read")
    }
}

impl<T> EncodeMetric for Read<T> {
    fn encode(&self, encoder: MetricEncoder) -> Encoded {
        (self.1)(&self.0, encoder)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Counter
    }
}

/// A counter's value.
fn counter(
    mut encoder: MetricEncoder,
    value: &impl prometheus_client::encoding::EncodeCounterValue,
) -> Encoded {
    encoder.encode_counter::<NoLabelSet, _, u64>(value, None)
}

/// Requests by outcome: `ok`, `retried`, `failed`.
fn outcomes(mut encoder: MetricEncoder, counts: [&AtomicU64; 3]) -> Encoded {
    for (outcome, count) in ["ok", "retried", "failed"].into_iter().zip(counts) {
        encoder
            .encode_family(&[("outcome", outcome)])?
            .encode_counter::<NoLabelSet, _, u64>(&count.load(Ordering::Relaxed), None)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_rendered_under_its_name_in_the_prometheus_text_format() {
        let embedding = Arc::new(Stats::default());
        embedding.retried.fetch_add(2, Ordering::Relaxed);
        let transcription = Arc::new(transcribe::Stats::default());
        transcription.audio_ms.fetch_add(1500, Ordering::Relaxed);
        let metrics = Metrics::new(embedding, transcription);
        metrics.set_ready(true);
        metrics.job_started();
        metrics.job_done("sync_files", "done", Duration::from_millis(300));
        metrics.job_started();
        metrics.job_done("Weird Type!", "failed", Duration::from_secs(7));
        crate::telemetry::timed(crate::telemetry::Stage::Embed, Duration::from_millis(20));
        let text = metrics.render();
        for line in [
            "ingestd_ready 1",
            "ingestd_jobs_in_flight 0",
            "ingestd_reconnects_total 0",
            "ingestd_jobs_total{type=\"sync_files\",outcome=\"done\"} 1",
            "ingestd_jobs_total{type=\"other\",outcome=\"failed\"} 1",
            "ingestd_job_duration_seconds_bucket{le=\"0.5\"} 1",
            "ingestd_job_duration_seconds_count 2",
            "ingestd_embedding_requests_total{outcome=\"retried\"} 2",
            "ingestd_transcription_audio_seconds_total 1.5",
            &format!(
                "ingestd_build_info{{version=\"{}\",commit=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION"),
                env!("INGESTD_GIT_COMMIT")
            ),
            "# TYPE ingestd_stage_duration_seconds histogram",
            "ingestd_stage_duration_seconds_bucket{stage=\"embed\",le=\"0.05\"} ",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert!(!text.contains("# EOF"), "Prometheus text, not OpenMetrics");
        assert!(!text.contains(".."), "a HELP text ends twice: {text}");
    }
}

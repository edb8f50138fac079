//! The one-shot `ingestd sync`: every object of a source through the pipeline, records and
//! events as JSON Lines, a summary at the end. Files are processed concurrently but written in
//! listing order, so the output of two runs over the same input is the same.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::job::{EventKind, FileRef, ProcessedCounts};
use crate::pipeline::{self, FileOutput, Request};
use crate::sink::{JsonlSink, SinkError};
use crate::source::{Listed, Source};
use crate::telemetry::Progress;

/// Totals of one run.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Files by outcome.
    pub counts: ProcessedCounts,
    /// Files by (outcome, media type or format family).
    pub by_kind: BTreeMap<(&'static str, String), u64>,
    /// Bytes read from the source.
    pub bytes_read: u64,
    /// Wall-clock time of the run.
    pub elapsed: Duration,
}

impl Summary {
    /// The process exit code: 0 when no file failed, 3 when some did.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        if self.counts.files_failed == 0 { 0 } else { 3 }
    }

    fn add(&mut self, output: &FileOutput) {
        let media = output
            .outcome
            .file
            .as_ref()
            .and_then(|f| f.media_type)
            .map_or_else(|| "OTHER".to_owned(), |m| format!("{m:?}").to_uppercase());
        let outcome = match output.outcome_kind() {
            EventKind::FileReady {
                chunk_count,
                token_count,
            } => {
                self.counts.files_ready += 1;
                self.counts.chunk_count += *chunk_count as u64;
                self.counts.token_count += *token_count as u64;
                "ready"
            }
            EventKind::FileError { .. } => {
                self.counts.files_failed += 1;
                "failed"
            }
            _ => {
                self.counts.files_skipped += 1;
                "skipped"
            }
        };
        *self.by_kind.entry((outcome, media)).or_default() += 1;
        self.bytes_read += output.bytes_read;
    }

    /// A one-screen summary for people.
    #[must_use]
    pub fn render(&self) -> String {
        let c = &self.counts;
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let mb = self.bytes_read as f64 / 1e6;
        let mut out = format!(
            "ingestd sync: {} files in {:.2} s — {mb:.2} MB read, {:.2} MB/s\n",
            c.files_ready + c.files_failed + c.files_skipped,
            secs,
            mb / secs
        );
        for (outcome, total) in [
            ("ready", c.files_ready),
            ("skipped", c.files_skipped),
            ("failed", c.files_failed),
        ] {
            let detail: Vec<String> = self
                .by_kind
                .iter()
                .filter(|((o, _), _)| *o == outcome)
                .map(|((_, media), n)| format!("{media} {n}"))
                .collect();
            let _ = writeln!(out, "  {outcome:<8} {total:>6}  {}", detail.join(", "));
        }
        let _ = writeln!(
            out,
            "  chunks   {:>6}  tokens {}",
            c.chunk_count, c.token_count
        );
        out
    }
}

/// Runs every object of `source` through the pipeline and writes the results to `sink`.
///
/// # Errors
/// Only when the output cannot be written; file problems are events, not errors.
pub async fn run<S: Source>(
    source: &S,
    request: Arc<Request>,
    concurrency: usize,
    sink: &mut JsonlSink,
    progress: &Progress,
) -> Result<Summary, SinkError> {
    let started = Instant::now();
    let mut summary = Summary::default();
    let outputs = source
        .list()
        .map(|listed| {
            let request = Arc::clone(&request);
            async move {
                match listed {
                    Listed::Object(object) => pipeline::process(source, object, request).await,
                    Listed::Problem {
                        bucket,
                        key,
                        error,
                        skip,
                    } => problem_output(&request, bucket, key, &error, skip),
                }
            }
        })
        .buffered(concurrency.max(1));
    let mut outputs = std::pin::pin!(outputs);
    while let Some(output) = outputs.next().await {
        sink.write_event(&output.started)?;
        sink.write_records(&output.records)?;
        sink.write_event(&output.outcome)?;
        summary.add(&output);
        progress.file_done(output.bytes_read, output.records.len());
    }
    sink.write_event(&request.event(EventKind::AllFilesProcessed(summary.counts), None))?;
    sink.flush()?;
    summary.elapsed = started.elapsed();
    let c = &summary.counts;
    tracing::info!(
        ready = c.files_ready,
        skipped = c.files_skipped,
        failed = c.files_failed,
        chunks = c.chunk_count,
        elapsed_ms = summary.elapsed.as_millis(),
        "sync finished"
    );
    Ok(summary)
}

fn problem_output(
    request: &Request,
    bucket: Option<String>,
    key: String,
    error: &crate::error::FileError,
    skip: bool,
) -> FileOutput {
    let file = FileRef {
        bucket,
        key,
        etag: None,
        media_type: None,
        format: None,
    };
    let kind = if skip {
        EventKind::FilesSkipped {
            reason: crate::error::SkipReason::UnsupportedFormat,
            message: error.message.clone(),
        }
    } else {
        EventKind::FileError {
            error_code: error.code,
            message: error.message.clone(),
            retryable: error.retryable(),
        }
    };
    FileOutput {
        started: request.event(EventKind::FileSyncing {}, Some(file.clone())),
        records: Vec::new(),
        outcome: request.event(kind, Some(file)),
        bytes_read: 0,
    }
}

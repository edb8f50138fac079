//! The one-shot `ingestd sync`: every object of a source through the pipeline, records and
//! events as JSON Lines, a summary at the end. Files are processed concurrently but written in
//! listing order, so the output of two runs over the same input is the same.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc};

use crate::job::{EventKind, FileRef, ProcessedCounts};
use crate::pipeline::{self, Emitted, Emitter, FileReport, Request, Tally};
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

    fn add(&mut self, report: &FileReport) {
        let tally = report.tally();
        match tally {
            Tally::Ready { chunks, tokens } => {
                self.counts.files_ready += 1;
                self.counts.chunk_count += chunks;
                self.counts.token_count += tokens;
            }
            Tally::Failed => self.counts.files_failed += 1,
            Tally::Skipped => self.counts.files_skipped += 1,
        }
        let (outcome, media) = (tally.label(), report.media_label().to_owned());
        *self.by_kind.entry((outcome, media)).or_default() += 1;
        self.bytes_read += report.bytes_read;
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

/// Records a file may have waiting for the writer before its processing pauses.
const RECORDS_IN_FLIGHT: usize = 256;

/// A file being processed, in listing order: its output as it comes, then its tally.
struct InFlight {
    key: String,
    output: mpsc::Receiver<Emitted>,
    task: tokio::task::JoinHandle<FileReport>,
}

/// Runs every object of `source` through the pipeline and writes the results to `sink`.
///
/// Up to `concurrency` files are processed at once and written in listing order; memory is
/// bounded by the concurrency, not by the number or size of the files.
///
/// # Errors
/// Only when the output cannot be written; file problems are events, not errors.
pub async fn run<S: Source + Clone + 'static>(
    source: S,
    request: Arc<Request>,
    concurrency: usize,
    sink: &mut JsonlSink,
    progress: &Progress,
) -> Result<Summary, SinkError> {
    let started = Instant::now();
    let concurrency = concurrency.max(1);
    let mut summary = Summary::default();
    let (queue, mut files) = mpsc::channel::<InFlight>(concurrency);
    let producer = tokio::spawn(start_files(
        source,
        Arc::clone(&request),
        concurrency,
        queue,
    ));
    while let Some(InFlight {
        key,
        mut output,
        task,
    }) = files.recv().await
    {
        let mut records = 0;
        while let Some(item) = output.recv().await {
            match item {
                Emitted::Event(event) => sink.write_event(&event)?,
                Emitted::Record(record) => {
                    records += 1;
                    sink.write_record(&record)?;
                }
            }
        }
        let report = match task.await {
            Ok(report) => report,
            Err(join) => {
                // `process` reports every problem itself; this is a bug, and costs one file.
                let err = crate::error::FileError::permanent(
                    crate::error::ErrorCode::Internal,
                    format!("processing {key} stopped unexpectedly: {join}"),
                );
                let report = FileReport {
                    outcome: request.event(failed(&err), Some(file_ref(None, key))),
                    bytes_read: 0,
                };
                sink.write_event(&report.outcome)?;
                report
            }
        };
        summary.add(&report);
        progress.file_done(report.bytes_read, records);
    }
    // The listing ended (or failed and said so in an event).
    let _ = producer.await;
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

/// Lists `source` and starts each file once one of `concurrency` slots is free, queueing them
/// for the writer in listing order. Stops when the writer goes away.
async fn start_files<S: Source + Clone + 'static>(
    source: S,
    request: Arc<Request>,
    concurrency: usize,
    queue: mpsc::Sender<InFlight>,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut listing = std::pin::pin!(source.list());
    while let Some(listed) = listing.next().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (out, output) = mpsc::channel(RECORDS_IN_FLIGHT);
        let (source, request) = (source.clone(), Arc::clone(&request));
        let key = match &listed {
            Listed::Object(object) => object.key.clone(),
            Listed::Problem { key, .. } => key.clone(),
        };
        let task = tokio::spawn(async move {
            let report = match listed {
                Listed::Object(object) => pipeline::process(&source, object, request, &out).await,
                Listed::Problem {
                    bucket,
                    key,
                    error,
                    skip,
                } => problem(&request, bucket, key, &error, skip, &out).await,
            };
            drop(slot);
            report
        });
        if queue.send(InFlight { key, output, task }).await.is_err() {
            return;
        }
    }
}

fn file_ref(bucket: Option<String>, key: String) -> FileRef {
    FileRef {
        bucket,
        key,
        etag: None,
        media_type: None,
        format: None,
    }
}

fn failed(error: &crate::error::FileError) -> EventKind {
    EventKind::FileError {
        error_code: error.code,
        message: error.message.clone(),
        retryable: error.retryable(),
    }
}

/// A listing entry that cannot be processed: its two events.
async fn problem(
    request: &Request,
    bucket: Option<String>,
    key: String,
    error: &crate::error::FileError,
    skip: bool,
    out: &Emitter,
) -> FileReport {
    let file = file_ref(bucket, key);
    let kind = if skip {
        EventKind::FilesSkipped {
            reason: crate::error::SkipReason::UnsupportedFormat,
            message: error.message.clone(),
        }
    } else {
        failed(error)
    };
    let started = request.event(EventKind::FileSyncing {}, Some(file.clone()));
    let outcome = request.event(kind, Some(file));
    // A closed output has nobody left to tell.
    let _ = out.send(Emitted::Event(Box::new(started))).await;
    let _ = out.send(Emitted::Event(Box::new(outcome.clone()))).await;
    FileReport {
        outcome,
        bytes_read: 0,
    }
}

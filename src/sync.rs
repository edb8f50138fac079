//! The one-shot `ingestd sync`: every object of a source through the pipeline, records and
//! events as JSON Lines, a summary at the end. Files are processed concurrently but written in
//! listing order, so the output of two runs over the same input is the same.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{Semaphore, mpsc};

use crate::job::{EncodedRecord, Event, EventKind, FileRef, ProcessedCounts};
use crate::pipeline::{self, Emitted, Emitter, FileReport, Request, Tally};
use crate::sink::spool::{Spool, Spools, Stream};
use crate::sink::{JsonlSink, SinkError, to_line};
use crate::source::{Listed, Source};
use crate::state::{self, Change, Diff, StateError, Store, Tracker, Verdict};
use crate::telemetry::Progress;

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The output could not be written.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The state store (`--state`) failed.
    #[error("{code}: {0}", code = .0.code())]
    State(#[from] StateError),
}

/// A run with state (`--state`): objects unchanged since the last run are skipped without
/// being read, and objects the last run saw that are gone now are reported deleted.
#[derive(Debug, Clone)]
pub struct Incremental {
    /// The store.
    pub store: Store,
    /// Where the source's objects are remembered ([`state::scope`], or `local`).
    pub scope: String,
    /// The bucket, or the folder's absolute path.
    pub bucket: String,
    /// The prefix listed.
    pub prefix: String,
    /// Whether the listing covers the whole prefix, so that what it lacks was deleted (not
    /// when the target names one object).
    pub deletions: bool,
}

/// State changes written per transaction, after the output they stand for is flushed.
const CHANGES_PER_WRITE: usize = 500;

/// Events of unchanged or deleted objects gathered into one note.
const PER_NOTE: usize = 1000;

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
    /// Operations on the state store (`--state`): queries and batches of writes.
    pub state_operations: Option<u64>,
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
        if c.files_deleted > 0 {
            let _ = writeln!(out, "  deleted  {:>6}", c.files_deleted);
        }
        if let Some(operations) = self.state_operations {
            let _ = writeln!(out, "  state    {operations:>6}  store operations");
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
    /// With state: its chunk ids, and what to remember of it once its output is written.
    tracking: Option<(Tracker, state::Put)>,
}

/// What the writer takes next, in listing order.
enum Queued {
    /// A file.
    File(Box<InFlight>),
    /// Objects reported without being processed: unchanged ones, deleted ones.
    Note {
        events: Vec<Event>,
        skipped: u64,
        deleted: u64,
        changes: Vec<Change>,
    },
    /// The store failed: the run stops.
    Failed(StateError),
}

/// Files (and notes) queued ahead of the one being written, at most. Those behind it keep
/// being processed; their output waits in a spool.
const LOOKAHEAD: usize = 1024;

/// Bytes of waiting output kept in memory over all waiting files; the rest goes to a
/// temporary file.
const SPOOL_MEMORY: usize = 16 << 20;

/// An entry of the writer's queue: a file whose output is being gathered, or a note or
/// failure as queued.
enum Entry {
    File(Box<Waiting>),
    Queued(Queued),
}

/// A file whose output is being gathered.
struct Waiting {
    key: String,
    task: tokio::task::JoinHandle<FileReport>,
    tracking: Option<(Tracker, state::Put)>,
    records: usize,
    /// Its output has ended.
    ended: bool,
    /// Its lines, while another file is being written.
    spool: Spool,
}

/// One file's output, each item tagged with the file's place in the queue; `None` at its end.
fn tagged(
    seq: u64,
    output: mpsc::Receiver<Emitted>,
) -> futures::stream::BoxStream<'static, (u64, Option<Emitted>)> {
    futures::stream::unfold(output, |mut output| async move {
        output.recv().await.map(|item| (item, output))
    })
    .map(move |item| (seq, Some(item)))
    .chain(futures::stream::once(async move { (seq, None) }))
    .boxed()
}

/// Output of the queued files, each item tagged with its file's place in the queue.
type Outputs =
    futures::stream::SelectAll<futures::stream::BoxStream<'static, (u64, Option<Emitted>)>>;

/// A queued file or note as an entry of the writer's queue; a file's output joins `outputs`.
fn admit(queued: Queued, seq: u64, outputs: &mut Outputs) -> Entry {
    match queued {
        Queued::File(file) => {
            let file = *file;
            outputs.push(tagged(seq, file.output));
            Entry::File(Box::new(Waiting {
                key: file.key,
                task: file.task,
                tracking: file.tracking,
                records: 0,
                ended: false,
                spool: Spool::default(),
            }))
        }
        other => Entry::Queued(other),
    }
}

/// Writes files' output in listing order and keeps the run's tallies.
struct Writer<'a> {
    sink: &'a mut JsonlSink,
    store: Option<&'a Store>,
    request: &'a Request,
    progress: &'a Progress,
    summary: &'a mut Summary,
    /// State changes whose output is written but not yet flushed.
    pending: Vec<Change>,
    spools: Spools,
}

impl Writer<'_> {
    /// One item of `file`'s output: written now when the file is `first`, else spooled.
    fn take(
        &mut self,
        file: &mut Waiting,
        first: bool,
        item: Option<Emitted>,
    ) -> Result<(), SinkError> {
        let Some(mut item) = item else {
            file.ended = true;
            return Ok(());
        };
        if let Some((tracker, _)) = &mut file.tracking {
            tracker.see(&mut item);
        }
        let record = match item {
            Emitted::Event(event) if first => return self.sink.write_event(&event),
            Emitted::Event(event) => {
                let line = to_line(&event)?;
                return self.spools.push(&mut file.spool, Stream::Events, line);
            }
            Emitted::Encoded(record) => *record,
            // Records leave the pipeline encoded; one that did not is encoded here.
            Emitted::Record(record) => EncodedRecord::new(*record).map_err(|err| SinkError {
                what: "a line",
                source: err.into(),
            })?,
        };
        file.records += 1;
        if first {
            self.sink.write_line(Stream::Records, record.line())
        } else {
            self.spools
                .push(&mut file.spool, Stream::Records, record.into_line())
        }
    }

    /// Finishes the entry at the head of the queue, its output all written.
    async fn settle(&mut self, entry: Entry) -> Result<(), RunError> {
        match entry {
            Entry::Queued(Queued::Failed(err)) => return Err(err.into()),
            Entry::Queued(Queued::Note {
                events,
                skipped,
                deleted,
                changes,
            }) => {
                for event in &events {
                    self.sink.write_event(event)?;
                }
                self.summary.counts.files_skipped += skipped;
                self.summary.counts.files_deleted += deleted;
                self.pending.extend(changes);
            }
            // Files are queued as `Entry::File`.
            Entry::Queued(Queued::File(_)) => {}
            Entry::File(file) => {
                let Waiting {
                    key,
                    task,
                    tracking,
                    records,
                    ..
                } = *file;
                let report = report_of(task, key, self.request, self.sink).await?;
                if let Some((tracker, put)) = tracking
                    && let Some(put) = tracker.put(
                        &put.scope,
                        &put.bucket,
                        &put.key,
                        put.version,
                        put.size,
                        &put.fingerprint,
                    )
                {
                    self.pending.push(Change::Put(put));
                }
                self.summary.add(&report);
                self.progress.file_done(report.bytes_read, records);
            }
        }
        if self.pending.len() >= CHANGES_PER_WRITE {
            remember(self.store, &mut self.pending, self.sink).await?;
        }
        Ok(())
    }
}

/// Runs every object of `source` through the pipeline and writes the results to `sink`.
///
/// Up to `concurrency` files are processed at once and written in listing order, each file's
/// lines together. Files behind the one being written keep going: their lines wait in a
/// [`Spool`] (in memory up to [`SPOOL_MEMORY`] over all files, then in a temporary file), so
/// memory is bounded by the concurrency, not by the number or size of the files. With `state`,
/// state is written only after the output it stands for is flushed.
///
/// # Errors
/// When the output cannot be written or the state store fails; file problems are events, not
/// errors.
pub async fn run<S: Source + Clone + 'static>(
    source: S,
    request: Arc<Request>,
    concurrency: usize,
    state: Option<Incremental>,
    sink: &mut JsonlSink,
    progress: &Progress,
) -> Result<Summary, RunError> {
    let started = Instant::now();
    let concurrency = concurrency.max(1);
    let mut summary = Summary::default();
    let store = state.as_ref().map(|s| s.store.clone());
    let (queue, mut files) = mpsc::channel::<Queued>(concurrency);
    let producer = tokio::spawn(start_files(
        source,
        Arc::clone(&request),
        concurrency,
        state,
        queue,
    ));
    let mut writer = Writer {
        sink,
        store: store.as_ref(),
        request: &request,
        progress,
        summary: &mut summary,
        pending: Vec::new(),
        spools: Spools::new(SPOOL_MEMORY),
    };
    // Entries in listing order from `first` on; the first is being written, the others spool.
    let mut order: VecDeque<Entry> = VecDeque::new();
    let (mut first, mut listing_done) = (0u64, false);
    let mut outputs = Outputs::new();
    loop {
        while let Some(head) = order.front_mut() {
            if let Entry::File(file) = head {
                writer.spools.drain(&mut file.spool, writer.sink)?;
                if !file.ended {
                    break;
                }
            }
            let Some(head) = order.pop_front() else { break };
            first += 1;
            writer.settle(head).await?;
        }
        if listing_done && order.is_empty() {
            break;
        }
        tokio::select! {
            queued = files.recv(), if !listing_done && order.len() < LOOKAHEAD => {
                let Some(queued) = queued else {
                    listing_done = true;
                    continue;
                };
                let seq = first + order.len() as u64;
                order.push_back(admit(queued, seq, &mut outputs));
            }
            Some((seq, item)) = outputs.next() => {
                let at = usize::try_from(seq - first).unwrap_or(usize::MAX);
                if let Some(Entry::File(file)) = order.get_mut(at) {
                    writer.take(file, at == 0, item)?;
                }
            }
            else => {
                // Unreachable: a file not ended has its output in `outputs`.
                return Err(RunError::Sink(SinkError {
                    what: "the output",
                    source: std::io::Error::other("the writer was left with nothing to wait for"),
                }));
            }
        }
    }
    let Writer {
        mut pending,
        spools,
        ..
    } = writer;
    // The listing ended (or failed and said so in an event).
    let _ = producer.await;
    remember(store.as_ref(), &mut pending, sink).await?;
    sink.write_event(&request.event(EventKind::AllFilesProcessed(summary.counts), None))?;
    sink.flush()?;
    summary.elapsed = started.elapsed();
    summary.state_operations = store.as_ref().map(Store::operations);
    let c = &summary.counts;
    tracing::info!(
        spilled_bytes = spools.spilled(),
        ready = c.files_ready,
        skipped = c.files_skipped,
        failed = c.files_failed,
        deleted = c.files_deleted,
        chunks = c.chunk_count,
        elapsed_ms = summary.elapsed.as_millis(),
        "sync finished"
    );
    Ok(summary)
}

/// The tally of a file's task; a task that stopped unexpectedly (a bug) gets its `FILE_ERROR`.
async fn report_of(
    task: tokio::task::JoinHandle<FileReport>,
    key: String,
    request: &Request,
    sink: &mut JsonlSink,
) -> Result<FileReport, SinkError> {
    match task.await {
        Ok(report) => Ok(report),
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
            Ok(report)
        }
    }
}

/// Flushes the output, then writes the state it stands for.
async fn remember(
    store: Option<&Store>,
    pending: &mut Vec<Change>,
    sink: &mut JsonlSink,
) -> Result<(), RunError> {
    if let Some(store) = store
        && !pending.is_empty()
    {
        sink.flush()?;
        store.apply(std::mem::take(pending)).await?;
    }
    Ok(())
}

/// Lists `source` and starts each file once one of `concurrency` slots is free, queueing them
/// for the writer in listing order. With state, compares the listing with the store on the way.
/// Stops when the writer goes away.
async fn start_files<S: Source + Clone + 'static>(
    source: S,
    request: Arc<Request>,
    concurrency: usize,
    state: Option<Incremental>,
    queue: mpsc::Sender<Queued>,
) {
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut compare = state.map(|state| Compare::new(state, request.fingerprint()));
    let mut listing = std::pin::pin!(source.list());
    while let Some(listed) = listing.next().await {
        let mut tracking = None;
        if let Some(compare) = &mut compare {
            match compare.step(&listed, &request, &queue).await {
                Ok(Some(Next::Skip)) => continue,
                Ok(Some(Next::Process(track))) => tracking = Some(*track),
                Ok(None) => {}
                Err(err) => {
                    let _ = queue.send(Queued::Failed(err)).await;
                    return;
                }
            }
            if !compare.flush(&request, &queue).await {
                return;
            }
        }
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
        let file = InFlight {
            key,
            output,
            task,
            tracking,
        };
        if queue.send(Queued::File(Box::new(file))).await.is_err() {
            return;
        }
    }
    if let Some(compare) = &mut compare {
        // The listing reached its end: whatever the store still has under it is gone.
        if let Err(err) = compare.gone(None, &request, &queue).await {
            let _ = queue.send(Queued::Failed(err)).await;
            return;
        }
        compare.flush(&request, &queue).await;
    }
}

/// What to do with a listed object, the store consulted.
enum Next {
    /// Unchanged: reported, not processed.
    Skip,
    /// Process it, tracking its chunk ids.
    Process(Box<(Tracker, state::Put)>),
}

/// The listing compared with the store.
struct Compare {
    state: Incremental,
    diff: Diff,
    fingerprint: String,
    unchanged: Vec<FileRef>,
}

impl Compare {
    fn new(state: Incremental, fingerprint: String) -> Self {
        let diff = Diff::new(
            state.store.clone(),
            &state.scope,
            &state.bucket,
            &state.prefix,
            None,
        );
        Compare {
            state,
            diff,
            fingerprint,
            unchanged: Vec::new(),
        }
    }

    fn file(&self, key: String) -> FileRef {
        // Local files are named by their path alone.
        let bucket = (self.state.scope != LOCAL_SCOPE).then(|| self.state.bucket.clone());
        file_ref(bucket, key)
    }

    async fn step(
        &mut self,
        listed: &Listed,
        request: &Request,
        queue: &mpsc::Sender<Queued>,
    ) -> Result<Option<Next>, StateError> {
        let object = match listed {
            Listed::Object(object) => object,
            Listed::Problem {
                key, skip: true, ..
            } => {
                // Seen and left alone on purpose (a link not followed): not deleted.
                self.gone(Some(key), request, queue).await?;
                self.diff.verdict(key, "", "").await?;
                return Ok(None);
            }
            Listed::Problem { .. } => {
                // What the listing could not read may still exist.
                self.diff.halt();
                return Ok(None);
            }
        };
        self.gone(Some(&object.key), request, queue).await?;
        let version = state::version_of(object);
        let verdict = self
            .diff
            .verdict(&object.key, &version, &self.fingerprint)
            .await?;
        let old = match verdict {
            Verdict::Unchanged => {
                let mut file = self.file(object.key.clone());
                file.etag.clone_from(&object.etag);
                self.unchanged.push(file);
                if self.unchanged.len() >= PER_NOTE {
                    self.flush(request, queue).await;
                }
                return Ok(Some(Next::Skip));
            }
            Verdict::New => Vec::new(),
            Verdict::Changed => {
                let s = &self.state;
                let found = s.store.object(&s.scope, &s.bucket, &object.key).await?;
                found.map(|(_, ids)| ids).unwrap_or_default()
            }
        };
        let put = state::Put {
            scope: self.state.scope.clone(),
            bucket: self.state.bucket.clone(),
            key: object.key.clone(),
            version,
            size: object.size,
            fingerprint: self.fingerprint.clone(),
            chunk_ids: Vec::new(),
        };
        Ok(Some(Next::Process(Box::new((Tracker::new(old), put)))))
    }

    /// Reports what the store has before `upto` (everything left, at the end) as deleted.
    async fn gone(
        &mut self,
        upto: Option<&str>,
        request: &Request,
        queue: &mpsc::Sender<Queued>,
    ) -> Result<(), StateError> {
        let mut events = Vec::new();
        let mut changes = Vec::new();
        loop {
            let next = self.diff.next_gone(upto).await?;
            let full = events.len() >= PER_NOTE;
            if (next.is_none() || full) && !events.is_empty() {
                self.flush(request, queue).await;
                let deleted = events.len() as u64;
                let note = Queued::Note {
                    events: std::mem::take(&mut events),
                    skipped: 0,
                    deleted,
                    changes: std::mem::take(&mut changes),
                };
                if queue.send(note).await.is_err() {
                    return Ok(());
                }
            }
            let Some(entry) = next else {
                return Ok(());
            };
            if !self.state.deletions {
                continue;
            }
            let file = self.file(entry.key.clone());
            events.push(request.event(EventKind::FileDeleted {}, Some(file)));
            changes.push(Change::Forget {
                scope: self.state.scope.clone(),
                bucket: self.state.bucket.clone(),
                key: entry.key,
            });
        }
    }

    /// Queues the unchanged objects gathered so far as one `FILES_SKIPPED`; false when the
    /// writer is gone.
    async fn flush(&mut self, request: &Request, queue: &mpsc::Sender<Queued>) -> bool {
        if self.unchanged.is_empty() {
            return true;
        }
        let files = std::mem::take(&mut self.unchanged);
        let skipped = files.len() as u64;
        let note = Queued::Note {
            events: vec![request.event(EventKind::unchanged(files), None)],
            skipped,
            deleted: 0,
            changes: Vec::new(),
        };
        queue.send(note).await.is_ok()
    }
}

/// The scope local folders are remembered under; their bucket is the folder's absolute path.
pub const LOCAL_SCOPE: &str = "local";

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
            files: Vec::new(),
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

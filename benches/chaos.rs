//! A fault run with figures: nothing may be lost while workers, the broker, the object store
//! and the embedding provider fail.
//!
//! A local S3 server (s3s-fs in this process, behind the tests' fault proxy) holds a few
//! thousand objects: prose, and the text and document fixtures. A local embedding provider
//! (OpenAI's wire format) fails a share of its requests with 500 or 429. One `sync_files` job
//! for the bucket goes to two worker processes through a RabbitMQ node the run may restart.
//! While they work, as the files settle, the run:
//! * SIGKILLs one worker, the other, then both, starting them again each time;
//! * closes every broker connection (`rabbitmqctl close_all_connections`), twice;
//! * restarts the broker (`rabbitmqctl stop_app`, then `start_app`);
//! * answers every S3 request `503 SlowDown` for two seconds, twice;
//! * resets every open S3 connection and cuts one response in five with a TCP reset for two
//!   seconds, twice.
//!
//! The same objects first go through `ingestd sync` (the one-shot run, no faults). Reported:
//! files settled and whether each settled as in the one-shot run, distinct chunk ids against
//! the one-shot run's, records delivered more than once (and whether every copy is
//! byte-identical), vectors that differ from the one-shot run's, dead letters, and the faults
//! injected. It exits 1 when anything was lost or differs.
//!
//! Run: `scripts/chaos.sh`. It starts a throwaway RabbitMQ node and passes its URL in
//! `INGESTD_CHAOS_AMQP_URL` and a `rabbitmqctl` for it in `INGESTD_CHAOS_CTL`;
//! `INGESTD_CHAOS_OBJECTS` sets the number of prose objects (default 3,000).

mod common;
#[path = "../tests/common/fault.rs"]
#[allow(dead_code)]
mod fault;
#[path = "../tests/common/http.rs"]
#[allow(dead_code)]
mod http;
#[path = "../tests/common/embed.rs"]
#[allow(dead_code)]
mod provider;
#[path = "../tests/common/s3.rs"]
#[allow(dead_code)]
mod s3;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::{Value, json};

use common::{prose, wait_ready};

/// Chunking of the jobs and of the one-shot run.
const CHUNK_SIZE: usize = 512;
const CHUNK_OVERLAP: usize = 50;
/// Longest time without a new outcome or record before the run is declared stuck.
const STUCK: Duration = Duration::from_mins(3);

/// One step of the plan, taken once this share of the files has settled.
#[derive(Clone, Copy, Debug)]
enum Step {
    KillWorker(usize),
    KillBoth,
    CloseConnections,
    RestartBroker,
    SlowDownBurst,
    ResetStore,
}

const PLAN: &[(f64, Step)] = &[
    (0.0, Step::KillWorker(0)),
    (0.08, Step::SlowDownBurst),
    (0.16, Step::CloseConnections),
    (0.24, Step::ResetStore),
    (0.32, Step::RestartBroker),
    (0.42, Step::KillWorker(1)),
    (0.50, Step::SlowDownBurst),
    (0.58, Step::CloseConnections),
    (0.66, Step::ResetStore),
    (0.74, Step::KillBoth),
];

fn main() {
    let (Ok(amqp_url), Ok(ctl)) = (
        std::env::var("INGESTD_CHAOS_AMQP_URL"),
        std::env::var("INGESTD_CHAOS_CTL"),
    ) else {
        eprintln!(
            "chaos: INGESTD_CHAOS_AMQP_URL and INGESTD_CHAOS_CTL are not set. Run scripts/chaos.sh: \
             it starts a throwaway RabbitMQ node for this run, which restarts it."
        );
        std::process::exit(2);
    };
    let prose_objects = std::env::var("INGESTD_CHAOS_OBJECTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3000);
    let started = Instant::now();

    let server = s3::Server::start();
    let (objects, bytes) = fill(&server, prose_objects);
    let store = fault::Proxy::start(server.addr);
    let embedder = provider::Provider::start();
    let dir = tempfile::tempdir().expect("a temporary folder");
    let config = dir.path().join("chaos.toml");
    // Two attempts a batch: some batches fail for good, and their jobs go through the
    // broker's retries.
    std::fs::write(&config, embedder.pipeline_toml()).expect("the configuration");
    println!(
        "chaos: {objects} objects ({prose_objects} of prose and the text and document fixtures), {:.1} MB; \
         2 workers; one sync_files job for the bucket; chunks {CHUNK_SIZE}/{CHUNK_OVERLAP}, embedded",
        bytes as f64 / 1e6
    );

    let expected = one_shot(&server, &config, dir.path());
    println!(
        "  one-shot run: {} files settled, {} chunk ids",
        expected.outcomes.len(),
        expected.records.len()
    );
    assert_eq!(
        expected.outcomes.len(),
        objects,
        "the one-shot run settled every object"
    );

    // The one-shot run's requests are not counted with the faults.
    let one_shot_requests = embedder.seen().len();
    embedder.fail_share(
        20,
        vec![
            provider::Fault::ServerError,
            provider::Fault::RateLimited(Some("1")),
        ],
    );
    let prefix = format!("chaos.{}", std::process::id());
    let mut fleet = Fleet::new(&prefix, &amqp_url, &config, dir.path());
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let (url, prefix, tally, stop) = (
            amqp_url.clone(),
            prefix.clone(),
            Arc::clone(&tally),
            Arc::clone(&stop),
        );
        std::thread::spawn(move || collect(&url, &prefix, &tally, &stop))
    };
    fleet.enqueue(
        &json!({"schema_version": 1, "type": "sync_files", "request_id": "chaos",
        "chunk_size": CHUNK_SIZE, "chunk_overlap": CHUNK_OVERLAP, "embedding_model": "TEST",
        "data_source": {"access_key": s3::ACCESS_KEY, "access_key_secret": s3::SECRET_KEY,
                        "endpoint_url": store.endpoint()},
        "ids": [{"bucket": "chaos"}]}),
    );

    let (mut faults, stuck) = follow_plan(&tally, objects, &mut fleet, &store, &ctl, started);
    let done = !stuck
        && wait_for(&tally, |t| {
            t.settled() >= objects && expected.records.keys().all(|id| t.records.contains_key(id))
        });
    // Copies still on their way are counted too.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let collector_reconnects = collector.join().unwrap_or_default();
    let dead = dead_letters(&amqp_url, &prefix);
    fleet.stop();
    let seen = embedder.seen().split_off(one_shot_requests);
    faults.embedding = seen.iter().filter(|s| s.status >= 400).count();
    faults.embedding_requests = seen.len();
    faults.store = store.faults();

    let tally = lock(&tally);
    let lost = report(&tally, &expected, &faults, &dead);
    println!(
        "  collector reconnects: {collector_reconnects}; took {:.0} s",
        started.elapsed().as_secs_f64()
    );
    if lost || !done {
        println!(
            "chaos: FAILED{}; the workers' logs are kept in {}",
            if done {
                ""
            } else {
                " (the run did not finish)"
            },
            dir.keep().display()
        );
        std::process::exit(1);
    }
    println!("chaos: nothing lost");
}

/// Takes the steps of [`PLAN`] as the files settle: the faults injected, and whether the run
/// got stuck before the plan's end.
fn follow_plan(
    tally: &Mutex<Tally>,
    objects: usize,
    fleet: &mut Fleet,
    store: &fault::Proxy,
    ctl: &str,
    started: Instant,
) -> (Injected, bool) {
    let mut faults = Injected::default();
    for (share, step) in PLAN {
        if !wait_for(tally, |t| t.settled() as f64 >= share * objects as f64) {
            return (faults, true);
        }
        if *share == 0.0 {
            // Into the fan-out of the bucket job.
            std::thread::sleep(Duration::from_millis(400));
        }
        inject(*step, fleet, store, ctl, &mut faults);
        println!(
            "  {:>6.1} s  {step:?} at {} files settled",
            started.elapsed().as_secs_f64(),
            lock(tally).settled()
        );
        let _ = std::io::stdout().flush();
    }
    (faults, false)
}

/// The prose and the fixtures in bucket `chaos`: how many objects, how many bytes.
fn fill(server: &s3::Server, prose_objects: usize) -> (usize, usize) {
    let bucket = server.root.path().join("chaos");
    let mut objects = 0;
    let mut bytes = 0;
    std::fs::create_dir_all(bucket.join("docs")).expect("a folder");
    for i in 0..prose_objects {
        // 1–24 KB each.
        let text = prose(i as u64 ^ 0xc4a0_5000, 1024, 23 * 1024);
        bytes += text.len();
        objects += 1;
        std::fs::write(bucket.join("docs").join(format!("doc-{i:05}.txt")), text)
            .expect("an object");
    }
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    for folder in ["text", "documents"] {
        s3::copy_dir(
            &fixtures.join(folder),
            &bucket.join("fixtures").join(folder),
        );
    }
    for file in walk(&bucket.join("fixtures")) {
        objects += 1;
        bytes += std::fs::metadata(file).map_or(0, |m| m.len() as usize);
    }
    (objects, bytes)
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// What the one-shot run settled, and its records.
struct Expected {
    /// Key → outcome (`FILE_READY`, `FILE_ERROR CODE`, `FILES_SKIPPED REASON`).
    outcomes: BTreeMap<String, String>,
    /// Chunk id → vector.
    records: BTreeMap<String, Value>,
}

fn one_shot(server: &s3::Server, config: &Path, dir: &Path) -> Expected {
    let (out, events) = (
        dir.join("one-shot.jsonl"),
        dir.join("one-shot-events.jsonl"),
    );
    let status = Command::new(env!("CARGO_BIN_EXE_ingestd"))
        .args(["sync", "s3://chaos", "--allow-private-endpoint", "--embed"])
        .args(["--chunk-size", &CHUNK_SIZE.to_string()])
        .args(["--chunk-overlap", &CHUNK_OVERLAP.to_string()])
        .arg("--endpoint-url")
        .arg(server.endpoint())
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(&out)
        .arg("--events")
        .arg(&events)
        .env("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY)
        .env("INGESTD_TEST_EMBEDDING_KEY", provider::API_KEY)
        .env_remove("RUST_LOG")
        .stderr(Stdio::null())
        .status()
        .expect("ingestd sync runs");
    let events = json_lines(&events);
    // Exit 3 means some files failed, as some fixtures do by design; none may fail for a
    // reason that would pass.
    let retryable: Vec<&Value> = events.iter().filter(|e| e["retryable"] == true).collect();
    assert!(
        matches!(status.code(), Some(0 | 3)) && retryable.is_empty(),
        "the one-shot run failed ({status}): {retryable:#?}"
    );
    let mut outcomes = BTreeMap::new();
    for event in events {
        if let Some((key, outcome)) = settled(&event) {
            outcomes.insert(key, outcome);
        }
    }
    let records = json_lines(&out)
        .into_iter()
        .map(|r| (text_of(&r["chunk_id"]), r["embedding"].clone()))
        .collect();
    Expected { outcomes, records }
}

fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .expect("a JSON Lines file")
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

fn text_of(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// A file's key and outcome when `event` settles it; a retryable failure does not.
fn settled(event: &Value) -> Option<(String, String)> {
    let key = event["file"]["key"].as_str()?.to_owned();
    let outcome = match event["event"].as_str()? {
        "FILE_READY" => "FILE_READY".to_owned(),
        "FILE_ERROR" if event["retryable"] != true => {
            format!("FILE_ERROR {}", text_of(&event["error_code"]))
        }
        "FILES_SKIPPED" => format!("FILES_SKIPPED {}", text_of(&event["reason"])),
        _ => return None,
    };
    Some((key, outcome))
}

/// What the collector has seen of the outputs.
#[derive(Default)]
struct Tally {
    /// Key → every settled outcome seen for it, in order.
    outcomes: BTreeMap<String, Vec<String>>,
    /// Retryable `FILE_ERROR`s seen (files the workers gave back for another attempt).
    retryable: BTreeMap<String, usize>,
    /// Chunk id → the record's bytes.
    records: BTreeMap<String, Vec<u8>>,
    /// Records published again by a worker (not redelivered to the collector).
    duplicates: usize,
    /// Ids whose copies differ.
    differing: Vec<String>,
    /// When the last outcome or new record came.
    progress: Option<Instant>,
}

impl Tally {
    fn settled(&self) -> usize {
        self.outcomes.len()
    }

    fn take(&mut self, delivery: &lapin::message::Delivery, prefix: &str) {
        let Ok(message) = serde_json::from_slice::<Value>(&delivery.data) else {
            return;
        };
        if delivery.exchange.as_str() == format!("{prefix}.chunks") {
            let id = text_of(&message["chunk_id"]);
            if let Some(seen) = self.records.get(&id) {
                if !delivery.redelivered {
                    self.duplicates += 1;
                }
                if *seen != delivery.data {
                    self.differing.push(id);
                }
            } else {
                self.records.insert(id, delivery.data.clone());
                self.progress = Some(Instant::now());
            }
        } else if let Some((key, outcome)) = settled(&message) {
            let seen = self.outcomes.entry(key).or_default();
            if seen.is_empty() {
                self.progress = Some(Instant::now());
            }
            if !seen.contains(&outcome) {
                seen.push(outcome);
            }
        } else if message["event"] == "FILE_ERROR" {
            *self
                .retryable
                .entry(text_of(&message["error_code"]))
                .or_default() += 1;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Waits until `until` holds of the tally (true), or nothing has come for [`STUCK`] (false).
fn wait_for(tally: &Mutex<Tally>, until: impl Fn(&Tally) -> bool) -> bool {
    let waiting = Instant::now();
    loop {
        {
            let tally = lock(tally);
            if until(&tally) {
                return true;
            }
            let last = tally.progress.map_or(waiting, |at| at.max(waiting));
            if last.elapsed() > STUCK {
                return false;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Consumes the two output queues into `tally` until `stop`, connecting again whenever the
/// connection is lost (the run closes and restarts the broker). Messages are acknowledged
/// after they are counted, so none is lost to the collector either. Returns its reconnects.
fn collect(url: &str, prefix: &str, tally: &Mutex<Tally>, stop: &AtomicBool) -> usize {
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        return 0;
    };
    let mut reconnects = 0;
    runtime.block_on(async {
        while !stop.load(Ordering::SeqCst) {
            if consume(url, prefix, tally, stop).await.is_err() {
                reconnects += 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    });
    reconnects
}

async fn consume(
    url: &str,
    prefix: &str,
    tally: &Mutex<Tally>,
    stop: &AtomicBool,
) -> Result<(), String> {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .map_err(|e| e.to_string())?;
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    channel
        .basic_qos(1000, BasicQosOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let mut streams = Vec::new();
    for queue in [format!("{prefix}.events"), format!("{prefix}.chunks")] {
        streams.push(
            channel
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    let mut deliveries = futures::stream::select_all(streams);
    while !stop.load(Ordering::SeqCst) {
        let Ok(next) = tokio::time::timeout(Duration::from_millis(200), deliveries.next()).await
        else {
            continue;
        };
        let delivery = next
            .ok_or("the consumers ended")?
            .map_err(|e| e.to_string())?;
        lock(tally).take(&delivery, prefix);
        delivery
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| e.to_string())?;
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(())
}

/// The dead-lettered jobs: their `ingestd-error-code` headers. Panics (it is a benchmark) when
/// the queue cannot be read.
fn dead_letters(url: &str, prefix: &str) -> Vec<String> {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("the broker, for the dead letters");
        let channel = connection.create_channel().await.expect("a channel");
        let mut dead = Vec::new();
        let queue = format!("{prefix}.dead");
        while let Some(message) = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("reading the dead-letter queue")
        {
            let code = message
                .delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("ingestd-error-code").cloned());
            dead.push(format!("{code:?}"));
        }
        let _ = connection.close(200, "done".into()).await;
        dead
    })
}

/// Faults injected, by kind.
#[derive(Default)]
struct Injected {
    killed: usize,
    closes: usize,
    connections_closed: usize,
    restarts: usize,
    slow_down_bursts: usize,
    store_resets: usize,
    store: fault::Faults,
    embedding: usize,
    embedding_requests: usize,
}

fn inject(step: Step, fleet: &mut Fleet, store: &fault::Proxy, ctl: &str, faults: &mut Injected) {
    match step {
        Step::KillWorker(n) => {
            fleet.kill(n);
            faults.killed += 1;
        }
        Step::KillBoth => {
            fleet.kill(0);
            fleet.kill(1);
            faults.killed += 2;
        }
        Step::CloseConnections => {
            let said = rabbitmqctl(ctl, &["close_all_connections", "chaos run"]);
            faults.closes += 1;
            // "Closed N connections"
            faults.connections_closed += said
                .split_whitespace()
                .find_map(|w| w.parse::<usize>().ok())
                .unwrap_or(0);
        }
        Step::RestartBroker => {
            rabbitmqctl(ctl, &["stop_app"]);
            std::thread::sleep(Duration::from_secs(3));
            rabbitmqctl(ctl, &["start_app"]);
            faults.restarts += 1;
        }
        Step::SlowDownBurst => {
            store.slow_down(true);
            std::thread::sleep(Duration::from_secs(2));
            store.slow_down(false);
            faults.slow_down_bursts += 1;
        }
        Step::ResetStore => {
            store.reset_all();
            store.reset_share(5);
            std::thread::sleep(Duration::from_secs(2));
            store.reset_share(0);
            faults.store_resets += 1;
        }
    }
}

/// Runs the node's `rabbitmqctl` with `-q` and `args`; its output. Panics (it is a benchmark)
/// when it fails.
fn rabbitmqctl(ctl: &str, args: &[&str]) -> String {
    let out = Command::new(ctl)
        .arg("-q")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The two workers, started again after each kill.
struct Fleet {
    env: Vec<(String, String)>,
    config: PathBuf,
    logs: PathBuf,
    workers: Vec<Option<Child>>,
    started: usize,
}

impl Fleet {
    fn new(prefix: &str, amqp_url: &str, config: &Path, dir: &Path) -> Fleet {
        let mut env: Vec<(String, String)> = [
            ("JOBS_EXCHANGE", format!("{prefix}.jobs")),
            ("JOBS_QUEUE", format!("{prefix}.jobs")),
            ("CHUNKS_EXCHANGE", format!("{prefix}.chunks")),
            ("EVENTS_EXCHANGE", format!("{prefix}.events")),
            ("DEAD_LETTER_QUEUE", format!("{prefix}.dead")),
            ("CONCURRENCY", "4".to_owned()),
            ("RETRY_DELAYS_SECS", "[1, 2, 3, 5, 8]".to_owned()),
            ("HEARTBEAT_SECS", "2".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("INGESTD__WORKER__{k}"), v))
        .collect();
        env.push(("INGESTD_AMQP_URL".to_owned(), amqp_url.to_owned()));
        env.push((
            "INGESTD_TEST_EMBEDDING_KEY".to_owned(),
            provider::API_KEY.to_owned(),
        ));
        let mut fleet = Fleet {
            env,
            config: config.to_path_buf(),
            logs: dir.to_path_buf(),
            workers: vec![None, None],
            started: 0,
        };
        fleet.start(0);
        fleet.start(1);
        fleet
    }

    fn start(&mut self, n: usize) {
        let listen = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        self.started += 1;
        let log = std::fs::File::create(self.logs.join(format!("worker-{}.log", self.started)))
            .expect("a log file");
        let child = Command::new(env!("CARGO_BIN_EXE_ingestd"))
            .args(["worker", "--allow-private-endpoint", "--config"])
            .arg(&self.config)
            .envs(self.env.iter().cloned())
            .env("INGESTD__WORKER__LISTEN", listen.to_string())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the worker starts");
        wait_ready(listen);
        self.workers[n] = Some(child);
    }

    /// SIGKILLs worker `n` and starts another in its place.
    fn kill(&mut self, n: usize) {
        if let Some(mut child) = self.workers[n].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.start(n);
    }

    /// Publishes `job` with `ingestd enqueue` (confirmed).
    fn enqueue(&self, job: &Value) {
        let path = self.logs.join("job.json");
        std::fs::write(&path, job.to_string()).expect("the job file");
        let status = Command::new(env!("CARGO_BIN_EXE_ingestd"))
            .arg("enqueue")
            .arg(&path)
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().cloned())
            .stdout(Stdio::null())
            .status()
            .expect("ingestd enqueue runs");
        assert!(status.success(), "the job was not published");
    }

    fn stop(&mut self) {
        for child in self.workers.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Prints the figures; true when anything was lost or differs.
fn report(tally: &Tally, expected: &Expected, faults: &Injected, dead: &[String]) -> bool {
    let store = faults.store;
    println!(
        "  faults injected: {} workers SIGKILLed; {} × close_all_connections ({} connections); \
         {} broker restart(s); S3: {} bursts of 503 SlowDown ({} requests), {} rounds of \
         resets ({} connections reset); embedding: {} of {} requests failed (500 or 429)",
        faults.killed,
        faults.closes,
        faults.connections_closed,
        faults.restarts,
        faults.slow_down_bursts,
        store.slow_downs,
        faults.store_resets,
        store.resets,
        faults.embedding,
        faults.embedding_requests
    );
    let mut as_expected = 0;
    let mut otherwise = Vec::new();
    for (key, outcome) in &expected.outcomes {
        match tally.outcomes.get(key).map(Vec::as_slice) {
            Some([only]) if only == outcome => as_expected += 1,
            got => otherwise.push(format!("{key}: {got:?}, one-shot {outcome}")),
        }
    }
    let ready = tally
        .outcomes
        .values()
        .filter(|o| o.first().is_some_and(|o| o == "FILE_READY"))
        .count();
    println!(
        "  files settled: {} of {} ({ready} ready), {as_expected} as in the one-shot run",
        tally.settled(),
        expected.outcomes.len()
    );
    for line in otherwise.iter().take(10) {
        println!("    otherwise: {line}");
    }
    let retried: Vec<String> = tally
        .retryable
        .iter()
        .map(|(code, n)| format!("{n} {code}"))
        .collect();
    println!(
        "  retryable failures on the way (files given back for another attempt): {}",
        if retried.is_empty() {
            "none".to_owned()
        } else {
            retried.join(", ")
        }
    );
    let missing = expected
        .records
        .keys()
        .filter(|id| !tally.records.contains_key(*id))
        .count();
    let unexpected = tally
        .records
        .keys()
        .filter(|id| !expected.records.contains_key(*id))
        .count();
    let vectors_differ = tally
        .records
        .iter()
        .filter(|(id, body)| {
            let vector = serde_json::from_slice::<Value>(body)
                .map(|r| r["embedding"].clone())
                .unwrap_or_default();
            expected.records.get(*id).is_some_and(|v| *v != vector)
        })
        .count();
    println!(
        "  chunk ids: {} distinct, one-shot {}: {missing} missing, {unexpected} unexpected; \
         {vectors_differ} vectors differ from the one-shot run's",
        tally.records.len(),
        expected.records.len()
    );
    println!(
        "  duplicates: {} records published again, {} of them differing from the first copy",
        tally.duplicates,
        tally.differing.len()
    );
    println!("  dead letters: {} {dead:?}", dead.len());
    !otherwise.is_empty()
        || missing > 0
        || unexpected > 0
        || vectors_differ > 0
        || !tally.differing.is_empty()
        || !dead.is_empty()
}

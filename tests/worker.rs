//! `ingestd worker` against the real RabbitMQ (127.0.0.1:5672, guest/guest, started by the test
//! command) and a real S3-compatible server on loopback. Every test uses its own exchange and
//! queue names and deletes them afterwards, so the shared broker is never disturbed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::s3::{ACCESS_KEY, SECRET_KEY, Server};
use common::{fixture, lines};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Value, json};

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const BROKER_ADDR: &str = "127.0.0.1:5672";
/// Longest wait for outputs to arrive.
const PATIENCE: Duration = Duration::from_secs(90);

/// One test's exchange and queue names, deleted when dropped.
struct Names {
    prefix: String,
}

impl Names {
    fn new(test: &str) -> Names {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Names {
            prefix: format!("t.{test}.{}.{nanos}", std::process::id()),
        }
    }
    fn jobs(&self) -> String {
        format!("{}.jobs", self.prefix)
    }
    fn chunks(&self) -> String {
        format!("{}.chunks", self.prefix)
    }
    fn events(&self) -> String {
        format!("{}.events", self.prefix)
    }
    fn dead(&self) -> String {
        format!("{}.jobs.dead", self.prefix)
    }
    /// The worker's configuration, as environment overrides.
    fn env(&self, listen: SocketAddr) -> Vec<(String, String)> {
        [
            ("JOBS_EXCHANGE", self.jobs()),
            ("JOBS_QUEUE", self.jobs()),
            ("CHUNKS_EXCHANGE", self.chunks()),
            ("EVENTS_EXCHANGE", self.events()),
            ("DEAD_LETTER_QUEUE", self.dead()),
            ("RETRY_DELAYS_SECS", "[1]".to_owned()),
            ("SHUTDOWN_GRACE_SECS", "20".to_owned()),
            ("MAX_MESSAGE_BYTES", "65536".to_owned()),
            ("HEARTBEAT_SECS", "2".to_owned()),
            ("LISTEN", listen.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("INGESTD__WORKER__{k}"), v))
        .collect()
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        let names = (self.jobs(), self.chunks(), self.events(), self.dead());
        let waits = format!("{}.wait.1s", self.jobs());
        let Ok(runtime) = tokio::runtime::Runtime::new() else {
            return;
        };
        runtime.block_on(async {
            let Ok(connection) = Connection::connect(BROKER, ConnectionProperties::default()).await
            else {
                return;
            };
            for queue in [&names.0, &names.1, &names.2, &names.3, &waits] {
                if let Ok(channel) = connection.create_channel().await {
                    let _ = channel
                        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                        .await;
                }
            }
            for exchange in [&names.0, &names.1, &names.2] {
                if let Ok(channel) = connection.create_channel().await {
                    let _ = channel
                        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                        .await;
                }
            }
            let _ = connection.close(200, "done".into()).await;
        });
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// A running worker process, killed when dropped; its stderr goes to a file.
struct Worker {
    child: Child,
    health: SocketAddr,
    log: tempfile::NamedTempFile,
    /// The folder it runs in; a `pipeline.toml` there is its configuration.
    _dir: tempfile::TempDir,
}

impl Worker {
    fn start(names: &Names, amqp_url: &str) -> Worker {
        Worker::start_with(names, amqp_url, &[])
    }

    /// Like [`Worker::start`], with more `INGESTD__…` overrides.
    fn start_with(names: &Names, amqp_url: &str, extra: &[(&str, &str)]) -> Worker {
        let worker = Worker::spawn(names, amqp_url, extra);
        assert!(
            worker.wait_ready(true, Duration::from_secs(30)),
            "the worker never became ready: {}",
            worker.log()
        );
        worker
    }

    /// Like [`Worker::start_with`], with `config` as its `pipeline.toml`.
    fn start_configured(
        names: &Names,
        amqp_url: &str,
        extra: &[(&str, &str)],
        config: &str,
    ) -> Worker {
        let worker = Worker::spawn_in(names, amqp_url, extra, Some(config));
        assert!(
            worker.wait_ready(true, Duration::from_secs(30)),
            "the worker never became ready: {}",
            worker.log()
        );
        worker
    }

    /// Starts the process without waiting for it to be ready.
    fn spawn(names: &Names, amqp_url: &str, extra: &[(&str, &str)]) -> Worker {
        Worker::spawn_in(names, amqp_url, extra, None)
    }

    fn spawn_in(
        names: &Names,
        amqp_url: &str,
        extra: &[(&str, &str)],
        config: Option<&str>,
    ) -> Worker {
        let health = free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        if let Some(config) = config {
            std::fs::write(dir.path().join("pipeline.toml"), config).unwrap();
        }
        let child = Command::new(env!("CARGO_BIN_EXE_ingestd"))
            .args(["worker", "--allow-private-endpoint"])
            .current_dir(dir.path())
            .envs(names.env(health))
            .env("INGESTD_AMQP_URL", amqp_url)
            .env("INGESTD__LOG__LEVEL", "info")
            .env_remove("OPENAI_API_KEY")
            .envs(extra.iter().copied())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        Worker {
            child,
            health,
            log,
            _dir: dir,
        }
    }

    /// GET `path` on the health address: (status code, body).
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect_timeout(&self.health, Duration::from_secs(2)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(stream, "GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let status = response.split_whitespace().nth(1)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n")?.1.to_owned();
        Some((status, body))
    }

    fn wait_ready(&self, ready: bool, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            let status = self.get("/readyz").map(|(status, _)| status);
            if status == Some(if ready { 200 } else { 503 }) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; `None` if it is still running after `limit`.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A message taken from a queue: its body and headers.
struct Got {
    body: Vec<u8>,
    headers: BTreeMap<String, String>,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().unwrap()
}

/// Takes everything now in `queue`.
fn drain(queue: &str) -> Vec<Got> {
    runtime().block_on(async {
        let connection = Connection::connect(BROKER, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let mut got = Vec::new();
        while let Some(message) = channel
            .basic_get(queue.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let headers = message
                .delivery
                .properties
                .headers()
                .as_ref()
                .map(|h| {
                    h.inner()
                        .iter()
                        .map(|(k, v)| {
                            let v = match v {
                                AMQPValue::LongString(s) => {
                                    String::from_utf8_lossy(s.as_bytes()).into_owned()
                                }
                                other => format!("{other:?}"),
                            };
                            (k.as_str().to_owned(), v)
                        })
                        .collect()
                })
                .unwrap_or_default();
            got.push(Got {
                body: message.delivery.data,
                headers,
            });
        }
        let _ = connection.close(200, "done".into()).await;
        got
    })
}

/// Collects from `queue` until `done` says the collection is complete, or fails the test.
fn collect_until(queue: &str, what: &str, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
    let start = Instant::now();
    let mut all = Vec::new();
    loop {
        all.extend(drain(queue));
        if done(&all) {
            return all;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "gave up waiting for {what}: have {} messages in {queue}",
            all.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Publishes raw bytes to the jobs exchange with `routing_key`, confirmed.
fn publish_raw(names: &Names, routing_key: &str, body: &[u8]) {
    runtime().block_on(async {
        let connection = Connection::connect(BROKER, ConnectionProperties::default())
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let confirm = channel
            .basic_publish(
                names.jobs().as_str().into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body,
                BasicProperties::default().with_headers(FieldTable::default()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(
            matches!(confirm, lapin::Confirmation::Ack(None)),
            "{confirm:?}"
        );
        let _ = connection.close(200, "done".into()).await;
    });
}

/// `ingestd enqueue -` with `job`: the job id it printed.
fn enqueue(names: &Names, job: &Value) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("job.json");
    std::fs::write(&path, job.to_string()).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ingestd"))
        .args(["enqueue", path.to_str().unwrap()])
        .current_dir(dir.path())
        .envs(names.env(free_port()))
        .env("INGESTD_AMQP_URL", BROKER)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "enqueue failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

fn data_source(server: &Server, secret: &str) -> Value {
    json!({"id": "ds-1", "access_key": ACCESS_KEY, "access_key_secret": secret,
           "endpoint_url": server.endpoint()})
}

/// The files of fixtures/text as a bucket: (server, number of objects).
fn library() -> (Server, usize) {
    let server = Server::start();
    server.bucket_from("library", &fixture("text"));
    let count = walk(&fixture("text"));
    (server, count)
}

/// A bucket of `n` generated text files of about 8 KB, so a sync lasts long enough to be
/// interrupted: (server, n).
fn many(n: usize) -> (Server, usize) {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    for i in 0..n {
        let mut text = String::new();
        for line in 0..100 {
            let _ = writeln!(
                text,
                "File {i}, line {line}: the quick brown fox jumps over the lazy dog."
            );
        }
        std::fs::write(dir.path().join(format!("doc-{i:04}.txt")), text).unwrap();
    }
    server.bucket_from("many", dir.path());
    (server, n)
}

fn walk(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                walk(&e.path())
            } else {
                1
            }
        })
        .sum()
}

fn is_outcome(event: &Value) -> bool {
    ["FILE_READY", "FILE_ERROR", "FILES_SKIPPED"].contains(&event["event"].as_str().unwrap_or(""))
}

/// All events of the test so far, and the outcome event per key once `count` keys have one.
fn outcomes_for(names: &Names, count: usize) -> (Vec<Value>, BTreeMap<String, Value>) {
    let mut events = Vec::new();
    let outcomes = more_outcomes(names, &mut events, count);
    (events, outcomes)
}

/// Adds events from the events queue to `events` until `count` keys have an outcome.
fn more_outcomes(names: &Names, events: &mut Vec<Value>, count: usize) -> BTreeMap<String, Value> {
    let start = Instant::now();
    loop {
        let outcomes: BTreeMap<String, Value> = events
            .iter()
            .filter(|e| is_outcome(e))
            .map(|e| {
                (
                    e["file"]["key"].as_str().unwrap_or("").to_owned(),
                    e.clone(),
                )
            })
            .collect();
        if outcomes.len() >= count {
            return outcomes;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "gave up waiting for {count} outcomes: have {}",
            outcomes.len()
        );
        events.extend(drain(&names.events()).iter().map(Got::json));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The one-shot sync of the same bucket: chunk records by chunk id.
fn one_shot(server: &Server, target: &str) -> BTreeMap<String, Value> {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_ingestd"))
        .args(["sync", target, "--allow-private-endpoint", "--endpoint-url"])
        .arg(server.endpoint())
        .current_dir(dir.path())
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    lines(&output.stdout)
        .into_iter()
        .map(|r| (r["chunk_id"].as_str().unwrap().to_owned(), r))
        .collect()
}

#[test]
fn a_bucket_job_fans_out_and_matches_the_one_shot_sync() {
    let (server, count) = library();
    let names = Names::new("fanout");
    let _worker = Worker::start(&names, BROKER);
    let job_id = enqueue(
        &names,
        &json!({"schema_version": 1, "type": "sync_files", "request_id": "req-1",
                "customer_id": "c@example.com", "data_source": data_source(&server, SECRET_KEY),
                "ids": [{"bucket": "library"}], "tags": {"team": "legal"},
                "skip_embedding_generation": true}),
    );
    assert_eq!(job_id.len(), 32, "a generated job id: {job_id}");
    let (events, outcomes) = outcomes_for(&names, count);
    assert_eq!(outcomes.len(), count);
    for event in &events {
        assert_eq!(event["request_id"], "req-1");
        assert_eq!(event["data_source_id"], "ds-1");
    }
    // Every FILE_SYNCING comes before its file's outcome.
    for key in outcomes.keys() {
        let syncing = events
            .iter()
            .position(|e| e["event"] == "FILE_SYNCING" && e["file"]["key"] == key.as_str());
        let done = events
            .iter()
            .position(|e| is_outcome(e) && e["file"]["key"] == key.as_str());
        assert!(syncing.is_some() && syncing < done, "event order for {key}");
    }
    // The records are the one-shot sync's, byte for byte (apart from the request fields).
    let ready: usize = outcomes
        .values()
        .filter_map(|e| e["chunk_count"].as_u64())
        .sum::<u64>() as usize;
    let records = collect_until(&names.chunks(), "every chunk", |got| got.len() >= ready);
    let expected = one_shot(&server, "s3://library");
    assert_eq!(records.len(), expected.len());
    for record in records.iter().map(Got::json) {
        let id = record["chunk_id"].as_str().unwrap();
        let mut same = expected
            .get(id)
            .unwrap_or_else(|| panic!("unknown chunk {id}"))
            .clone();
        same["request_id"] = json!("req-1");
        same["customer_id"] = json!("c@example.com");
        same["data_source_id"] = json!("ds-1");
        same["tags"] = json!({"team": "legal"});
        assert_eq!(record, same);
    }
    // Nothing was refused.
    assert!(drain(&names.dead()).is_empty());
}

#[test]
fn resync_delete_and_catalog_jobs() {
    let (server, count) = library();
    let names = Names::new("kinds");
    let _worker = Worker::start(&names, BROKER);
    let ds = data_source(&server, SECRET_KEY);
    let key = "formats/guide.md";
    assert!(
        fixture("text").join(key).is_file(),
        "fixture {key} is missing"
    );
    enqueue(
        &names,
        &json!({"schema_version": 1, "type": "resync_file", "data_source": ds, "bucket": "library",
                "key": key, "chunk_size": 64, "chunk_overlap": 8, "skip_embedding_generation": true}),
    );
    let events = collect_until(&names.events(), "the resync outcome", |got| {
        got.iter().map(Got::json).any(|e| is_outcome(&e))
    });
    let ready = events.iter().map(Got::json).find(is_outcome).unwrap();
    assert_eq!(ready["event"], "FILE_READY", "{ready}");
    let chunks = ready["chunk_count"].as_u64().unwrap() as usize;
    let records = collect_until(&names.chunks(), "the resync chunks", |got| {
        got.len() >= chunks
    });
    for record in records.iter().map(Got::json) {
        assert_eq!(record["chunking"]["chunk_size"], 64);
        assert!(record["token_count"].as_u64().unwrap() <= 64);
        assert_eq!(record["file"]["key"], key);
    }

    enqueue(
        &names,
        &json!({"schema_version": 1, "type": "delete_files", "data_source": ds,
                "ids": [{"bucket": "library", "id": "a.txt"}, {"bucket": "library", "id": "b.txt"}]}),
    );
    let deleted = collect_until(&names.events(), "two tombstones", |got| {
        got.iter()
            .filter(|g| g.json()["event"] == "FILE_DELETED")
            .count()
            >= 2
    });
    let keys: BTreeSet<String> = deleted
        .iter()
        .map(Got::json)
        .map(|e| e["file"]["key"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["a.txt".to_owned(), "b.txt".to_owned()])
    );

    enqueue(
        &names,
        &json!({"schema_version": 1, "type": "sync_items", "data_source": ds}),
    );
    let items = collect_until(&names.events(), "the catalog", |got| {
        got.iter()
            .filter(|g| g.json()["item_type"] == "FILE")
            .count()
            >= count
    });
    let items: Vec<Value> = items.iter().map(Got::json).collect();
    assert!(
        items
            .iter()
            .any(|i| i["item_type"] == "BUCKET" && i["bucket"] == "library")
    );
    assert!(items.iter().all(|i| i["data_source_metadata"] == "S3"));
    assert_eq!(
        items.iter().filter(|i| i["item_type"] == "FILE").count(),
        count
    );

    // Good credentials: DATA_SOURCE_READY. Wrong ones: one FILE_ERROR without a file.
    let wrong_secret = "not-the-secret-either";
    enqueue(
        &names,
        &json!({"schema_version": 1, "type": "connect_data_source", "data_source": ds}),
    );
    enqueue(
        &names,
        &json!({"schema_version": 1, "type": "connect_data_source",
                "data_source": data_source(&server, wrong_secret)}),
    );
    let events = collect_until(&names.events(), "both connections", |got| {
        got.iter()
            .map(Got::json)
            .filter(|e| e["event"] == "DATA_SOURCE_READY" || e["event"] == "FILE_ERROR")
            .count()
            >= 2
    });
    let events: Vec<Value> = events.iter().map(Got::json).collect();
    let ready = events
        .iter()
        .find(|e| e["event"] == "DATA_SOURCE_READY")
        .unwrap();
    assert_eq!(ready["data_source_id"], "ds-1");
    let refused = events.iter().find(|e| e["event"] == "FILE_ERROR").unwrap();
    assert_eq!(refused["error_code"], "ACCESS_DENIED", "{refused}");
    assert!(refused["file"].is_null());
    assert!(!refused.to_string().contains(wrong_secret));
}

#[test]
fn enqueue_validates_before_publishing_and_reads_stdin() {
    let names = Names::new("enqueue");
    let run = |job: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ingestd"))
            .args(["enqueue", "-"])
            .envs(names.env(free_port()))
            .env("INGESTD_AMQP_URL", BROKER)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(job.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let bad = run(r#"{"schema_version": 1, "type": "sync_files", "ids": []}"#);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("INVALID_JOB"));
    let good = run(
        r#"{"schema_version": 1, "type": "delete_files", "job_id": "job-7", "data_source": {},
            "ids": [{"bucket": "b", "id": "k"}]}"#,
    );
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&good.stdout).trim(), "job-7");
    // Only the valid job reached the queue, unchanged in meaning.
    let queued = drain(&names.jobs());
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].json()["job_id"], "job-7");
    assert_eq!(queued[0].json()["type"], "delete_files");
}

#[test]
fn bad_messages_are_dead_lettered_with_reasons_and_good_jobs_complete() {
    let (server, _) = library();
    let names = Names::new("poison");
    let worker = Worker::start(&names, BROKER);
    let good = |key: &str| {
        json!({"schema_version": 1, "type": "sync_object", "data_source": data_source(&server, SECRET_KEY),
               "bucket": "library", "key": key, "skip_embedding_generation": true})
        .to_string()
    };
    let secret_in_bad_job = "never-echo-this-secret";
    let mut too_large = good("formats/guide.md");
    too_large.push_str(&" ".repeat(70_000));
    let poison: Vec<(&str, String, &str)> = vec![
        ("sync_files", "this is not json".to_owned(), "MALFORMED_JOB"),
        (
            "sync_files",
            json!({"schema_version": 99, "type": "sync_files"}).to_string(),
            "UNSUPPORTED_SCHEMA_VERSION",
        ),
        (
            "sync_files",
            json!({"schema_version": 1, "type": "explode"}).to_string(),
            "INVALID_JOB",
        ),
        (
            "sync_object",
            json!({"schema_version": 1, "type": "sync_object", "bucket": "library"}).to_string(),
            "INVALID_JOB",
        ),
        (
            "sync_object",
            json!({"schema_version": 1, "type": "sync_object",
            "data_source": {"access_key": "a", "access_key_secret": secret_in_bad_job},
            "bucket": "library", "key": "a.txt", "chunk_size": 100, "chunk_overlap": 100})
            .to_string(),
            "INVALID_JOB",
        ),
        ("sync_object", too_large, "MESSAGE_TOO_LARGE"),
        (
            "update_users",
            json!({"schema_version": 1, "type": "update_users", "customer_ids": ["c"],
            "auto_sync_enabled_sources": "ALL"})
            .to_string(),
            "UNSUPPORTED_JOB",
        ),
    ];
    publish_raw(&names, "sync_object", good("encodings/utf8.txt").as_bytes());
    for (routing_key, body, _) in &poison {
        publish_raw(&names, routing_key, body.as_bytes());
    }
    publish_raw(&names, "sync_object", good("formats/hello.rs").as_bytes());

    let dead = collect_until(&names.dead(), "every bad message", |got| {
        got.len() >= poison.len()
    });
    assert_eq!(dead.len(), poison.len());
    let mut codes: Vec<&str> = dead
        .iter()
        .map(|d| d.headers["ingestd-error-code"].as_str())
        .collect();
    let mut expected: Vec<&str> = poison.iter().map(|(_, _, code)| *code).collect();
    codes.sort_unstable();
    expected.sort_unstable();
    assert_eq!(codes, expected);
    for message in &dead {
        assert!(!message.headers["ingestd-error"].is_empty());
        assert!(!message.headers["ingestd-error"].contains(secret_in_bad_job));
        // The message is parked as it came, so it can be inspected and replayed.
        assert!(
            poison
                .iter()
                .any(|(_, body, _)| body.as_bytes() == message.body.as_slice())
        );
    }
    let (_, outcomes) = outcomes_for(&names, 2);
    assert_eq!(outcomes["encodings/utf8.txt"]["event"], "FILE_READY");
    assert_eq!(outcomes["formats/hello.rs"]["event"], "FILE_READY");
    let log = worker.log();
    assert!(
        !log.contains(secret_in_bad_job) && !log.contains(SECRET_KEY),
        "{log}"
    );
    assert!(log.contains("job dead-lettered"), "{log}");
    let (status, metrics) = worker.get("/metrics").unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("ingestd_jobs_total{type=\"sync_object\",outcome=\"done\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ingestd_files_total{media_type=\"TEXT\",outcome=\"ready\"} 2"),
        "{metrics}"
    );
    assert_built_and_timed(&metrics);
}

/// `/metrics` says what the worker was built from (as git says of this checkout) and has
/// timed each stage a job without embeddings goes through.
fn assert_built_and_timed(metrics: &str) {
    // What it was built from, as git says of this checkout.
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let commit = String::from_utf8(commit.stdout).unwrap();
    let build = format!(
        "ingestd_build_info{{version=\"{}\",commit=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        commit.trim()
    );
    assert!(metrics.contains(&build), "{build} in {metrics}");
    // Each stage the jobs went through was timed.
    for stage in ["download", "extract", "chunk", "publish"] {
        let count = metrics
            .lines()
            .find_map(|line| {
                line.strip_prefix(&format!(
                    "ingestd_stage_duration_seconds_count{{stage=\"{stage}\"}} "
                ))
            })
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(count > 0, "{stage}: {metrics}");
    }
}

#[test]
fn wrong_credentials_and_missing_buckets_are_file_errors_not_retries() {
    let (server, _) = library();
    let names = Names::new("creds");
    let worker = Worker::start(&names, BROKER);
    let wrong_secret = "wrong-secret-must-not-leak";
    enqueue(
        &names,
        &json!({"schema_version": 1, "type": "sync_files", "skip_embedding_generation": true, "data_source": data_source(&server, wrong_secret),
                "ids": [{"bucket": "library", "prefix": "formats/"}]}),
    );
    enqueue(
        &names,
        &json!({"schema_version": 1, "type": "sync_files", "skip_embedding_generation": true, "data_source": data_source(&server, SECRET_KEY),
                "ids": [{"bucket": "no-such-bucket"}, {"bucket": "library", "id": "no/such/key.txt"}]}),
    );
    let events = collect_until(&names.events(), "three errors", |got| {
        got.iter()
            .filter(|g| g.json()["event"] == "FILE_ERROR")
            .count()
            >= 3
    });
    let mut codes: Vec<String> = events
        .iter()
        .map(Got::json)
        .filter(|e| e["event"] == "FILE_ERROR")
        .map(|e| {
            assert_eq!(e["retryable"], false, "{e}");
            e["error_code"].as_str().unwrap().to_owned()
        })
        .collect();
    codes.sort();
    assert_eq!(codes, ["ACCESS_DENIED", "NO_SUCH_BUCKET", "NO_SUCH_KEY"]);
    // Completed, not parked or retried.
    std::thread::sleep(Duration::from_secs(2));
    assert!(drain(&names.dead()).is_empty());
    let (_, metrics) = worker.get("/metrics").unwrap();
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("ingestd_jobs_total") && l.contains("outcome=\"retried\"")),
        "{metrics}"
    );
    for text in [
        worker.log(),
        events
            .iter()
            .map(|g| String::from_utf8_lossy(&g.body).into_owned())
            .collect(),
    ] {
        assert!(!text.contains(wrong_secret) && !text.contains(SECRET_KEY));
    }
}

/// Files a worker reports as ready in `/metrics`.
fn files_ready(worker: &Worker) -> u64 {
    let (_, metrics) = worker.get("/metrics").unwrap();
    metrics
        .lines()
        .filter(|l| l.starts_with("ingestd_files_total{") && l.contains("outcome=\"ready\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn two_workers_split_a_bucket() {
    let (server, count) = many(300);
    let names = Names::new("split");
    let first = Worker::start(&names, BROKER);
    let second = Worker::start(&names, BROKER);
    enqueue(
        &names,
        &json!({"schema_version": 1, "type": "sync_files", "skip_embedding_generation": true, "data_source": data_source(&server, SECRET_KEY),
                "ids": [{"bucket": "many"}]}),
    );
    let (_, outcomes) = outcomes_for(&names, count);
    assert!(outcomes.values().all(|e| e["event"] == "FILE_READY"));
    let (a, b) = (files_ready(&first), files_ready(&second));
    assert!(a > 0 && b > 0, "one worker did everything: {a} and {b}");
    assert_eq!(a + b, count as u64, "each file was synced once");
}

#[test]
fn a_large_listing_continues_in_new_jobs() {
    let (server, count) = library();
    let names = Names::new("batches");
    let worker = Worker::start_with(&names, BROKER, &[("INGESTD__WORKER__FAN_OUT_BATCH", "5")]);
    enqueue(
        &names,
        &json!({"schema_version": 1, "type": "sync_files", "skip_embedding_generation": true, "data_source": data_source(&server, SECRET_KEY),
                "ids": [{"bucket": "library", "prefix": "encodings/"}, {"bucket": "library", "prefix": "formats/"}]}),
    );
    let (events, outcomes) = outcomes_for(&names, count);
    assert_eq!(outcomes.len(), count);
    // Each file once: continuations neither skip nor repeat keys.
    let syncing = events
        .iter()
        .filter(|e| e["event"] == "FILE_SYNCING")
        .count();
    assert_eq!(syncing, count);
    // 23 objects in batches of 5: the first job and four continuations.
    let (_, metrics) = worker.get("/metrics").unwrap();
    let expected = format!(
        "ingestd_jobs_total{{type=\"sync_files\",outcome=\"done\"}} {}",
        count.div_ceil(5)
    );
    assert!(metrics.contains(&expected), "{expected} in {metrics}");
}

#[test]
fn a_job_naming_ten_thousand_objects_completes() {
    let (server, _) = library();
    let names = Names::new("tenk");
    let _worker = Worker::start_with(
        &names,
        BROKER,
        &[
            ("INGESTD__WORKER__MAX_MESSAGE_BYTES", "1048576"),
            ("INGESTD__WORKER__CONCURRENCY", "8"),
        ],
    );
    let mut ids: Vec<Value> = (0..10_000)
        .map(|i| json!({"bucket": "library", "id": format!("gone/{i:05}.txt")}))
        .collect();
    ids.push(json!({"bucket": "library", "id": "formats/guide.md"}));
    let job = json!({"schema_version": 1, "type": "sync_files", "skip_embedding_generation": true, "data_source": data_source(&server, SECRET_KEY),
                     "ids": ids});
    assert!(job.to_string().len() > 400_000, "a large message");
    enqueue(&names, &job);
    let (_, outcomes) = outcomes_for(&names, 10_001);
    assert_eq!(outcomes["formats/guide.md"]["event"], "FILE_READY");
    let missing = outcomes
        .values()
        .filter(|e| e["error_code"] == "NO_SUCH_KEY")
        .count();
    assert_eq!(missing, 10_000);
    assert!(drain(&names.dead()).is_empty());
}

/// A proxy to `upstream` that closes its first `failures` connections unanswered, then
/// forwards; `failures` = `usize::MAX` never forwards.
fn flaky_proxy(upstream: SocketAddr, failures: usize) -> SocketAddr {
    let proxy = common::fault::Proxy::start(upstream);
    proxy.drop_next(failures);
    proxy.addr
}

#[test]
fn transient_failures_wait_and_retry_then_park_when_exhausted() {
    let (server, _) = library();
    let names = Names::new("retry");
    let worker = Worker::start_with(&names, BROKER, &[("INGESTD__S3__MAX_ATTEMPTS", "1")]);
    let job = |endpoint: SocketAddr, key: &str| {
        let mut ds = data_source(&server, SECRET_KEY);
        ds["endpoint_url"] = json!(format!("http://{endpoint}"));
        json!({"schema_version": 1, "type": "sync_files", "skip_embedding_generation": true, "data_source": ds,
               "ids": [{"bucket": "library", "id": key}]})
    };
    // Unreachable for the first attempt, fine for the second.
    enqueue(
        &names,
        &job(flaky_proxy(server.addr, 1), "formats/guide.md"),
    );
    let events = collect_until(&names.events(), "the retried file", |got| {
        got.iter().any(|g| g.json()["event"] == "FILE_READY")
    });
    let events: Vec<Value> = events.iter().map(Got::json).collect();
    let first = events.iter().find(|e| is_outcome(e)).unwrap();
    assert_eq!(first["event"], "FILE_ERROR", "{first}");
    assert_eq!(first["error_code"], "SOURCE_UNAVAILABLE");
    assert_eq!(first["retryable"], true);
    // Never reachable: one retry (retry_delays_secs = [1]), then parked.
    enqueue(
        &names,
        &job(flaky_proxy(server.addr, usize::MAX), "formats/hello.rs"),
    );
    let dead = collect_until(&names.dead(), "the exhausted job", |got| !got.is_empty());
    assert_eq!(dead[0].headers["ingestd-error-code"], "RETRIES_EXHAUSTED");
    assert!(
        dead[0].headers["ingestd-error"].contains("SOURCE_UNAVAILABLE"),
        "{:?}",
        dead[0].headers
    );
    assert_eq!(dead[0].headers["ingestd-job-type"], "sync_files");
    let (_, metrics) = worker.get("/metrics").unwrap();
    assert!(
        metrics.contains("ingestd_jobs_total{type=\"sync_files\",outcome=\"retried\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ingestd_jobs_total{type=\"sync_files\",outcome=\"dead_lettered\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_job_past_its_deadline_is_abandoned_and_retried() {
    let (server, _) = library();
    let names = Names::new("deadline");
    let worker = Worker::start_with(
        &names,
        BROKER,
        &[("INGESTD__WORKER__JOB_TIMEOUT_SECS", "1")],
    );
    // A store that accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for client in silent.incoming() {
            held.push(client);
        }
    });
    let mut ds = data_source(&server, SECRET_KEY);
    ds["endpoint_url"] = json!(format!("http://{endpoint}"));
    enqueue(
        &names,
        &json!({"schema_version": 1, "type": "sync_files", "skip_embedding_generation": true, "data_source": ds,
                "ids": [{"bucket": "library", "id": "formats/guide.md"}]}),
    );
    let dead = collect_until(&names.dead(), "the job that never finished", |got| {
        !got.is_empty()
    });
    assert_eq!(dead[0].headers["ingestd-error-code"], "RETRIES_EXHAUSTED");
    assert!(
        dead[0].headers["ingestd-error"].contains("JOB_TIMEOUT"),
        "{:?}",
        dead[0].headers
    );
    // Each abandoned attempt ended its file with an outcome; only the last says it is final.
    let errors: Vec<Value> = drain(&names.events())
        .iter()
        .map(Got::json)
        .filter(|e| e["event"] == "FILE_ERROR")
        .collect();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().all(|e| e["error_code"] == "LIMIT_EXCEEDED"));
    assert_eq!(errors[0]["retryable"], true);
    assert_eq!(errors[1]["retryable"], false);
    // The worker is free again.
    assert!(worker.wait_ready(true, Duration::from_secs(5)));
    enqueue(
        &names,
        &json!({"schema_version": 1, "type": "sync_files", "skip_embedding_generation": true, "data_source": data_source(&server, SECRET_KEY),
                "ids": [{"bucket": "library", "id": "formats/guide.md"}]}),
    );
    let (_, outcomes) = outcomes_for(&names, 1);
    assert_eq!(outcomes["formats/guide.md"]["event"], "FILE_READY");
}

#[test]
fn a_broker_that_never_answers_does_not_hold_the_worker() {
    let names = Names::new("silent");
    // Accepts connections and never speaks AMQP.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("amqp://guest:guest@{}/%2f", silent.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for client in silent.incoming() {
            held.push(client);
        }
    });
    let mut worker = Worker::spawn(&names, &url, &[]);
    let start = Instant::now();
    while worker.get("/healthz").map(|(status, _)| status) != Some(200) {
        assert!(start.elapsed() < Duration::from_secs(10), "no /healthz");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        worker.wait_ready(false, Duration::from_secs(1)),
        "ready without a broker"
    );
    worker.signal("TERM");
    let status = worker
        .wait_exit(Duration::from_secs(10))
        .expect("SIGTERM was ignored while connecting");
    assert!(status.success(), "{status}: {}", worker.log());
}

#[test]
fn outputs_nobody_receives_are_not_dropped() {
    let (server, _) = library();
    let names = Names::new("unrouted");
    // No queue is bound to the output exchanges: every output is returned by the broker.
    let worker = Worker::start_with(
        &names,
        BROKER,
        &[("INGESTD__WORKER__DECLARE_OUTPUT_QUEUES", "false")],
    );
    enqueue(
        &names,
        &json!({"schema_version": 1, "type": "sync_files", "skip_embedding_generation": true, "data_source": data_source(&server, SECRET_KEY),
                "ids": [{"bucket": "library", "id": "formats/guide.md"}]}),
    );
    let start = Instant::now();
    let mut dead = Vec::new();
    while dead.is_empty() && start.elapsed() < Duration::from_secs(30) {
        dead = drain(&names.dead());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!dead.is_empty(), "nothing parked: {}", worker.log());
    // The returned outputs (customer text) are not logged.
    assert!(
        !worker.log().contains("returned us a message"),
        "{}",
        worker.log()
    );
    assert_eq!(dead[0].headers["ingestd-error-code"], "RETRIES_EXHAUSTED");
    assert!(
        dead[0].headers["ingestd-error"].contains("no queue is bound"),
        "{:?}",
        dead[0].headers
    );
}

/// A TCP proxy to the broker that can cut every connection and refuse new ones.
struct Cutter {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    generation: Arc<std::sync::atomic::AtomicUsize>,
}

impl Cutter {
    fn start() -> Cutter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (up2, generation2) = (Arc::clone(&up), Arc::clone(&generation));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let Ok(upstream) = TcpStream::connect(BROKER_ADDR) else {
                    continue;
                };
                let born = generation2.load(Ordering::SeqCst);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, client),
                ] {
                    let generation = Arc::clone(&generation2);
                    std::thread::spawn(move || {
                        let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            if generation.load(Ordering::SeqCst) != born {
                                break;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = from.shutdown(std::net::Shutdown::Both);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Cutter {
            addr,
            up,
            generation,
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// Cuts every open connection; new ones are refused until `restore`.
    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[test]
fn readiness_follows_the_broker_and_cut_connections_lose_nothing() {
    let (server, count) = many(1500);
    let names = Names::new("cuts");
    let cutter = Cutter::start();
    let worker = Worker::start(&names, &cutter.url());
    enqueue(
        &names,
        &json!({"schema_version": 1, "type": "sync_files", "skip_embedding_generation": true, "data_source": data_source(&server, SECRET_KEY),
                "ids": [{"bucket": "many"}]}),
    );
    // Cut the worker off a few times while the bucket is being synced.
    let mut events = Vec::new();
    let mut done_before_last_cut = 0;
    for round in 1..=3 {
        done_before_last_cut = more_outcomes(&names, &mut events, 20 * round).len();
        cutter.cut();
        assert!(
            worker.wait_ready(false, Duration::from_secs(15)),
            "still ready while cut off"
        );
        cutter.restore();
        assert!(
            worker.wait_ready(true, Duration::from_secs(30)),
            "not ready again: {}",
            worker.log()
        );
    }
    assert!(done_before_last_cut < count, "the cuts came after the sync");
    let outcomes = more_outcomes(&names, &mut events, count);
    assert_eq!(outcomes.len(), count);
    assert!(outcomes.values().all(|e| e["event"] == "FILE_READY"));
    // Duplicates from redelivered jobs are byte-identical records with the same ids.
    let expected = one_shot(&server, "s3://many");
    let records = collect_until(&names.chunks(), "every chunk", |got| {
        let ids: BTreeSet<String> = got
            .iter()
            .map(|g| g.json()["chunk_id"].as_str().unwrap().to_owned())
            .collect();
        ids.len() >= expected.len()
    });
    let mut by_id: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for record in &records {
        let id = record.json()["chunk_id"].as_str().unwrap().to_owned();
        if let Some(seen) = by_id.insert(id.clone(), record.body.clone()) {
            assert_eq!(seen, record.body, "a duplicate of {id} differs");
        }
    }
    assert_eq!(by_id.len(), expected.len());
    let (_, metrics) = worker.get("/metrics").unwrap();
    assert!(!metrics.contains("ingestd_reconnects_total 0"), "{metrics}");
}

#[test]
fn sigterm_finishes_or_requeues_jobs_and_exits_zero_and_sigkill_loses_nothing() {
    let (server, count) = many(1500);
    let names = Names::new("signals");
    let mut first = Worker::start(&names, BROKER);
    enqueue(
        &names,
        &json!({"schema_version": 1, "type": "sync_files", "skip_embedding_generation": true, "data_source": data_source(&server, SECRET_KEY),
                "ids": [{"bucket": "many"}]}),
    );
    let mut by_first = Vec::new();
    more_outcomes(&names, &mut by_first, 20);
    first.signal("TERM");
    let status = first
        .wait_exit(Duration::from_secs(30))
        .expect("still running 30 s after SIGTERM");
    assert!(status.success(), "exit status {status}: {}", first.log());
    assert!(first.log().contains("stopping"), "{}", first.log());
    by_first.extend(drain(&names.events()).iter().map(Got::json));
    let keys = |event: &str| -> BTreeSet<String> {
        by_first
            .iter()
            .filter(|e| {
                if event.is_empty() {
                    is_outcome(e)
                } else {
                    e["event"] == event
                }
            })
            .map(|e| e["file"]["key"].to_string())
            .collect()
    };
    let ended = keys("");
    let finished = ended.len();
    assert!(
        finished > 0 && finished < count,
        "{finished} of {count} files done before SIGTERM"
    );
    // Every file it started, it finished: jobs in flight at SIGTERM were not cut short.
    assert_eq!(keys("FILE_SYNCING"), ended);

    let second = Worker::start(&names, BROKER);
    std::thread::sleep(Duration::from_millis(300));
    second.signal("KILL");
    drop(second);
    let _third = Worker::start(&names, BROKER);
    let (_, outcomes) = outcomes_for(&names, count - finished);
    let all: BTreeSet<String> = ended
        .into_iter()
        .chain(outcomes.values().map(|e| e["file"]["key"].to_string()))
        .collect();
    assert_eq!(all.len(), count, "every file of the bucket was synced");
}

/// Chunk records of `key` among `records`, in chunk order.
fn records_of(records: &[Got], key: &str) -> Vec<Value> {
    let mut of: Vec<Value> = records
        .iter()
        .map(Got::json)
        .filter(|r| r["file"]["key"] == key)
        .collect();
    of.sort_by_key(|r| r["chunk_index"].as_u64());
    of
}

/// A worker whose default embedding model `TEST` is served by `provider`, two attempts per
/// batch.
fn embedding_worker(names: &Names, provider: &common::embed::Provider) -> Worker {
    let config = provider.pipeline_toml();
    Worker::start_configured(
        names,
        BROKER,
        &[("INGESTD_TEST_EMBEDDING_KEY", common::embed::API_KEY)],
        &config,
    )
}

#[test]
fn jobs_embed_unless_they_skip_and_force_embedding_overrides_skip() {
    use common::embed::{DIMENSIONS, Provider, vector};
    let (server, _) = library();
    let provider = Provider::start();
    let names = Names::new("embed");
    let _worker = embedding_worker(&names, &provider);
    let ds = data_source(&server, SECRET_KEY);
    // One job per case, each on a file of its own; `extra` holds the case's options.
    let cases = [
        ("formats/guide.md", json!({}), "embedded"),
        (
            "formats/hello.rs",
            json!({"skip_embedding_generation": true}),
            "skipped",
        ),
        (
            "formats/script.py",
            json!({"embedding_model": "NOPE"}),
            "unconfigured",
        ),
    ];
    for (key, extra, _) in &cases {
        assert!(
            fixture("text").join(key).is_file(),
            "fixture {key} is missing"
        );
        let mut job = json!({"schema_version": 1, "type": "sync_files", "data_source": ds,
                             "ids": [{"bucket": "library", "id": key}], "chunk_size": 64});
        job.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        enqueue(&names, &job);
    }
    // resync_file with force_embedding_generation embeds although the job says skip.
    enqueue(
        &names,
        &json!({"schema_version": 1, "type": "resync_file", "data_source": ds, "bucket": "library",
                "key": "formats/page.html", "chunk_size": 64, "skip_embedding_generation": true,
                "force_embedding_generation": true}),
    );
    let (_, outcomes) = outcomes_for(&names, 4);
    let expect_ready = |key: &str| {
        let outcome = &outcomes[key];
        assert_eq!(outcome["event"], "FILE_READY", "{outcome}");
        outcome["chunk_count"].as_u64().unwrap() as usize
    };
    let (guide, hello, page) = (
        expect_ready("formats/guide.md"),
        expect_ready("formats/hello.rs"),
        expect_ready("formats/page.html"),
    );
    let unconfigured = &outcomes["formats/script.py"];
    assert_eq!(
        unconfigured["error_code"], "EMBEDDING_NOT_CONFIGURED",
        "{unconfigured}"
    );
    assert_eq!(unconfigured["retryable"], false);
    let records = collect_until(&names.chunks(), "every chunk", |got| {
        got.len() >= guide + hello + page
    });
    for key in ["formats/guide.md", "formats/page.html"] {
        let of = records_of(&records, key);
        assert!(!of.is_empty());
        for record in of {
            let text = record["text"].as_str().unwrap();
            let got: Vec<f32> = record["embedding"]
                .as_array()
                .unwrap_or_else(|| panic!("{key} has no vector: {record}"))
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(got, vector(text, DIMENSIONS), "{key}");
            assert_eq!(record["embedding_model"], "TEST");
        }
    }
    for record in records_of(&records, "formats/hello.rs") {
        assert!(record["embedding"].is_null(), "{record}");
    }
    assert!(records_of(&records, "formats/script.py").is_empty());
}

#[test]
fn rate_limited_embeddings_retry_through_the_broker() {
    use common::embed::{API_KEY, Fault, Provider};
    let (server, _) = library();
    let provider = Provider::start();
    let names = Names::new("embed-retry");
    let worker = embedding_worker(&names, &provider);
    let ds = data_source(&server, SECRET_KEY);
    // Rate limited past both attempts: FILE_ERROR (retryable), then the job comes back from
    // the wait queue a second later and succeeds.
    provider.fail_next([Fault::RateLimited(Some("0")), Fault::RateLimited(Some("0"))]);
    let key = "formats/script.py";
    enqueue(
        &names,
        &json!({"schema_version": 1, "type": "sync_files", "data_source": ds, "request_id": "again",
                "ids": [{"bucket": "library", "id": key}], "chunk_size": 64}),
    );
    let events = collect_until(&names.events(), "the retried job's outcome", |got| {
        got.iter()
            .map(Got::json)
            .any(|e| e["request_id"] == "again" && e["event"] == "FILE_READY")
    });
    let outcomes: Vec<Value> = events
        .iter()
        .map(Got::json)
        .filter(|e| e["request_id"] == "again" && is_outcome(e))
        .collect();
    assert_eq!(outcomes.len(), 2, "{outcomes:#?}");
    assert_eq!(
        outcomes[0]["error_code"], "EMBEDDING_RATE_LIMITED",
        "{}",
        outcomes[0]
    );
    assert_eq!(outcomes[0]["retryable"], true);
    let chunks = outcomes[1]["chunk_count"].as_u64().unwrap() as usize;
    let records = collect_until(&names.chunks(), "the retried job's chunks", |got| {
        records_of(got, key).len() >= chunks
    });
    assert!(
        records_of(&records, key)
            .iter()
            .all(|r| r["embedding"].is_array())
    );
    let (_, metrics) = worker.get("/metrics").unwrap();
    assert!(
        metrics.contains("ingestd_embedding_requests_total{outcome=\"retried\"} 1"),
        "{metrics}"
    );
    assert!(!worker.log().contains(API_KEY), "the key was logged");
}

#[test]
fn image_jobs_describe_images_and_recognise_their_text_with_use_ocr() {
    let server = Server::start();
    server.bucket_from("scans", &fixture("media/ocr"));
    let names = Names::new("ocr");
    let _worker = Worker::start(&names, BROKER);
    for (key, ocr) in [("sign.png", true), ("sign.jpg", false)] {
        enqueue(
            &names,
            &json!({"schema_version": 1, "type": "sync_files", "skip_embedding_generation": true,
                    "data_source": data_source(&server, SECRET_KEY), "use_ocr": ocr,
                    "ids": [{"bucket": "scans", "id": key}]}),
        );
    }
    let (_, outcomes) = outcomes_for(&names, 2);
    let chunks: u64 = outcomes
        .values()
        .map(|o| {
            assert_eq!(o["event"], "FILE_READY", "{o}");
            o["chunk_count"].as_u64().unwrap()
        })
        .sum();
    let records = collect_until(&names.chunks(), "the image records", |got| {
        got.len() as u64 >= chunks
    });
    let recognised: String = records_of(&records, "sign.png")
        .iter()
        .map(|r| r["text"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        recognised.contains("Quarterly harbour ledger"),
        "{recognised:?}"
    );
    let described = records_of(&records, "sign.jpg");
    assert_eq!(described.len(), 1);
    assert_eq!(described[0]["text"], "");
    assert_eq!(described[0]["media"]["width"], 900);
    assert!(
        records
            .iter()
            .map(Got::json)
            .all(|r| r["file"]["media_type"] == "IMAGE")
    );
}

#[test]
fn audio_jobs_are_transcribed_with_the_options_of_the_job() {
    use common::transcribe::{API_KEY, Provider};
    let server = Server::start();
    server.bucket_from("recordings", &fixture("audio/speech"));
    let provider = Provider::start();
    let names = Names::new("transcribe");
    let config = format!(
        "[transcription]\nurl = \"{}\"\napi_key_env = \"TRANSCRIBE_KEY\"\nlanguage = \"en\"\n\
         speaker_labels_model = \"diarizer\"\n",
        provider.url()
    );
    let worker = Worker::start_configured(&names, BROKER, &[("TRANSCRIBE_KEY", API_KEY)], &config);
    // The Opus recording is decoded by ffmpeg, fed the object as a second stream from the bucket.
    for (key, labels) in [
        ("speech.mp3", true),
        ("speech.ogg", false),
        ("speech.opus", false),
    ] {
        enqueue(
            &names,
            &json!({"schema_version": 1, "type": "sync_files", "skip_embedding_generation": true,
                    "data_source": data_source(&server, SECRET_KEY), "chunk_size": 12,
                    "chunk_overlap": 0,
                    "file_sync_config": {"include_speaker_labels": labels,
                                         "detect_audio_language": labels},
                    "ids": [{"bucket": "recordings", "id": key}]}),
        );
    }
    let (_, outcomes) = outcomes_for(&names, 3);
    let chunks: u64 = outcomes
        .values()
        .map(|o| {
            assert_eq!(o["event"], "FILE_READY", "{o}");
            o["chunk_count"].as_u64().unwrap()
        })
        .sum();
    let records = collect_until(&names.chunks(), "the transcript records", |got| {
        got.len() as u64 >= chunks
    });
    for (key, prefix) in [
        ("speech.mp3", "Speaker A: Passage 0"),
        ("speech.ogg", "Passage 0"),
        ("speech.opus", "Passage 0"),
    ] {
        let mine = records_of(&records, key);
        assert_eq!(mine.len(), 2, "{key}: {mine:?}");
        assert!(
            mine[0]["text"].as_str().unwrap().starts_with(prefix),
            "{key}: {mine:?}"
        );
        let range = mine[1]["time_range_ms"].as_array().unwrap();
        assert!(
            range[0].as_u64().unwrap() > 5_000,
            "{key}: the second sentence: {range:?}"
        );
        assert_eq!(mine[0]["file"]["media_type"], "AUDIO");
        assert!(mine[0]["media"]["duration_ms"].as_u64().unwrap() > 9_000);
    }
    let seen = provider.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    let models: BTreeSet<&str> = seen.iter().map(|s| s.fields["model"].as_str()).collect();
    assert_eq!(models, BTreeSet::from(["diarizer", "whisper-1"]));
    assert_eq!(
        seen.iter()
            .filter(|s| s.fields.contains_key("language"))
            .count(),
        2
    );
    // Three pieces of about 9.4 s each, all answered at the first attempt.
    let (_, metrics) = worker.get("/metrics").unwrap();
    for line in [
        "ingestd_transcription_requests_total{outcome=\"ok\"} 3",
        "ingestd_transcription_requests_total{outcome=\"retried\"} 0",
        "ingestd_transcription_requests_total{outcome=\"failed\"} 0",
    ] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }
    let seconds: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ingestd_transcription_audio_seconds_total "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no audio seconds in {metrics}"));
    assert!((27.0..30.0).contains(&seconds), "{seconds}");
    assert!(!worker.log().contains(API_KEY), "the key was logged");
}

/// The good document fixtures as the bucket `docs`.
fn documents() -> Server {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture("documents")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    server.bucket_from("docs", dir.path());
    server
}

#[test]
fn document_jobs_and_every_option_do_what_they_say() {
    let server = documents();
    let names = Names::new("docopts");
    let _worker = Worker::start(&names, BROKER);
    let ds = data_source(&server, SECRET_KEY);
    let job = |key: &str, options: Value| {
        let mut job = json!({"schema_version": 1, "type": "sync_object", "data_source": ds,
                             "bucket": "docs", "key": key});
        job.as_object_mut()
            .unwrap()
            .extend(options.as_object().unwrap().clone());
        job
    };
    // set_page_as_boundary: every chunk of the PDF within one page; without it, one chunk
    // reaches from the first page to the last.
    enqueue(
        &names,
        &job(
            "report.pdf",
            json!({"chunk_size": 4000, "skip_embedding_generation": true,
                                               "set_page_as_boundary": true}),
        ),
    );
    // split_rows / max_items_per_chunk: at most two rows per chunk of the workbook.
    enqueue(
        &names,
        &job(
            "budget.xlsx",
            json!({"skip_embedding_generation": true, "max_items_per_chunk": 2,
                                                "file_sync_config": {"split_rows": true}}),
        ),
    );
    // generate_chunks_only: chunks without vectors, although embedding is not skipped (this
    // worker has no provider: without the option the file fails, as the last job shows).
    enqueue(
        &names,
        &job(
            "memo.docx",
            json!({"file_sync_config": {"generate_chunks_only": true}}),
        ),
    );
    enqueue(&names, &job("notes.odt", json!({})));
    let (_, outcomes) = outcomes_for(&names, 4);
    for key in ["report.pdf", "budget.xlsx", "memo.docx"] {
        assert_eq!(
            outcomes[key]["event"], "FILE_READY",
            "{key}: {}",
            outcomes[key]
        );
    }
    assert_eq!(
        outcomes["notes.odt"]["error_code"],
        "EMBEDDING_NOT_CONFIGURED"
    );
    let expected_chunks: u64 = ["report.pdf", "budget.xlsx", "memo.docx"]
        .iter()
        .map(|k| outcomes[*k]["chunk_count"].as_u64().unwrap())
        .sum();
    let records: Vec<Value> = collect_until(&names.chunks(), "the document chunks", |got| {
        got.len() as u64 >= expected_chunks
    })
    .iter()
    .map(Got::json)
    .collect();
    let of = |key: &'static str| records.iter().filter(move |r| r["file"]["key"] == key);
    assert_eq!(of("report.pdf").count(), 3, "one chunk per page");
    for (page, record) in of("report.pdf").enumerate() {
        assert_eq!(record["page"], page + 1);
        assert_eq!(record["last_page"], page + 1);
    }
    assert!(of("budget.xlsx").count() >= 4);
    for record in of("budget.xlsx") {
        let text = record["text"].as_str().unwrap();
        let rows = text.lines().filter(|l| !l.starts_with("Sheet: ")).count();
        assert!((1..=2).contains(&rows), "{text:?}");
        assert_eq!(record["file"]["format"], "xlsx");
    }
    assert!(
        of("memo.docx")
            .all(|r| r["embedding"].is_null() && !r["text"].as_str().unwrap().is_empty())
    );
}

#[test]
fn skip_file_processing_registers_objects_without_reading_them() {
    let server = documents();
    let names = Names::new("docskip");
    let _worker = Worker::start(&names, BROKER);
    let job = |key: &str, listed: Value| {
        let mut job = json!({"schema_version": 1, "type": "sync_object", "bucket": "docs", "key": key,
                             "data_source": data_source(&server, SECRET_KEY),
                             "skip_embedding_generation": true,
                             "file_sync_config": {"skip_file_processing": true}});
        job.as_object_mut()
            .unwrap()
            .extend(listed.as_object().unwrap().clone());
        job
    };
    enqueue(&names, &job("deck.pptx", json!({})));
    // Not even an object that is gone since it was listed is read: the listing is all it takes.
    enqueue(
        &names,
        &job(
            "listed-then-deleted.pdf",
            json!({"size": 123_456, "etag": "\"0123abcd\""}),
        ),
    );
    let (_, outcomes) = outcomes_for(&names, 2);
    let records: Vec<Value> =
        collect_until(&names.chunks(), "the two records", |got| got.len() >= 2)
            .iter()
            .map(Got::json)
            .collect();
    for (key, format) in [("deck.pptx", "pptx"), ("listed-then-deleted.pdf", "pdf")] {
        let outcome = &outcomes[key];
        assert_eq!(outcome["event"], "FILE_READY", "{outcome}");
        assert_eq!(outcome["chunk_count"], 1);
        assert!(
            outcome["message"]
                .as_str()
                .unwrap()
                .contains("skip_file_processing")
        );
        let record = records.iter().find(|r| r["file"]["key"] == key).unwrap();
        assert_eq!(record["text"], "");
        assert_eq!(record["file"]["format"], format);
    }
    let gone = records
        .iter()
        .find(|r| r["file"]["key"] == "listed-then-deleted.pdf")
        .unwrap();
    assert_eq!(gone["file"]["size"], 123_456);
}

#[test]
fn options_that_cannot_be_honoured_are_refused_naming_them() {
    let server = documents();
    let names = Names::new("docrows");
    let _worker = Worker::start(&names, BROKER);
    let job = json!({"schema_version": 1, "type": "sync_object", "bucket": "docs", "key": "budget.xlsx",
                     "data_source": data_source(&server, SECRET_KEY),
                     "skip_embedding_generation": true, "max_items_per_chunk": 0});
    publish_raw(&names, "sync_object", job.to_string().as_bytes());
    let dead = collect_until(&names.dead(), "the refused job", |got| !got.is_empty());
    assert_eq!(dead[0].headers["ingestd-error-code"], "INVALID_JOB");
    assert!(dead[0].headers["ingestd-error"].contains("max_items_per_chunk"));

    // A transcription service other than the configured provider is refused, not ignored;
    // the provider's own name (any case) is accepted.
    let with_service = |service: &str| {
        json!({"schema_version": 1, "type": "sync_object", "bucket": "docs", "key": "plain.eml",
               "data_source": data_source(&server, SECRET_KEY), "skip_embedding_generation": true,
               "file_sync_config": {"transcription_service": service}})
    };
    publish_raw(
        &names,
        "sync_object",
        with_service("deepgram").to_string().as_bytes(),
    );
    enqueue(&names, &with_service("openai"));
    let dead = collect_until(&names.dead(), "the refused service", |got| !got.is_empty());
    assert_eq!(dead[0].headers["ingestd-error-code"], "INVALID_JOB");
    assert!(dead[0].headers["ingestd-error"].contains("transcription_service"));
    let (_, outcomes) = outcomes_for(&names, 1);
    assert_eq!(outcomes["plain.eml"]["event"], "FILE_READY");
}

// ---- State: stored data sources, incremental sync, deletions, auto-sync (PostgreSQL) ----

/// The PostgreSQL server the tests use (127.0.0.1:5432, or `INGESTD_TEST_POSTGRES`).
fn postgres_base() -> String {
    std::env::var("INGESTD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A schema of the test's own, dropped afterwards; `url` reaches it.
struct Pg {
    name: String,
    url: String,
    client: tokio_postgres::Client,
    runtime: tokio::runtime::Runtime,
}

impl Pg {
    fn new(test: &str) -> Pg {
        let runtime = runtime();
        let name = format!("t_{test}_{}", std::process::id());
        let client = runtime.block_on(async {
            let (client, connection) =
                tokio_postgres::connect(&postgres_base(), tokio_postgres::NoTls)
                    .await
                    .unwrap_or_else(|err| {
                        panic!("PostgreSQL at {} is needed: {err}", postgres_base())
                    });
            tokio::spawn(connection);
            client
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS {name} CASCADE; CREATE SCHEMA {name}"
                ))
                .await
                .unwrap();
            client
        });
        let sep = if postgres_base().contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!("{}{sep}options=-csearch_path%3D{name}", postgres_base());
        Pg {
            name,
            url,
            client,
            runtime,
        }
    }

    fn sql(&self, sql: &str) {
        self.runtime
            .block_on(
                self.client
                    .batch_execute(&sql.replace("SCHEMA.", &format!("{}.", self.name))),
            )
            .unwrap();
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        let _ = self.runtime.block_on(
            self.client
                .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.name)),
        );
    }
}

const STATE_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn state_worker(names: &Names, pg: &Pg, extra: &[(&str, &str)]) -> Worker {
    let mut env = vec![
        ("INGESTD_STATE_URL", pg.url.as_str()),
        ("INGESTD_STATE_KEY", STATE_KEY),
        ("INGESTD__STATE__AUTO_SYNC_POLL_SECS", "1"),
    ];
    env.extend_from_slice(extra);
    Worker::start_with(names, BROKER, &env)
}

fn events_of(names: &Names, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let got = collect_until(&names.events(), what, |got| {
        done(&got.iter().map(Got::json).collect::<Vec<_>>())
    });
    got.iter().map(Got::json).collect()
}

fn named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

/// `sync_files` of the whole library bucket, naming the stored data source by id alone.
fn sync_by_id(request_id: &str) -> Value {
    json!({"schema_version": 1, "type": "sync_files", "request_id": request_id,
           "customer_id": "c1", "data_source": {"id": "ds-s"}, "ids": [{"bucket": "library"}],
           "skip_embedding_generation": true})
}

/// Connects the library as data source `ds-s` of customer `c1` and syncs it once by id: the
/// outcomes by key and the records.
fn connect_and_sync(
    names: &Names,
    server: &Server,
    count: usize,
) -> (BTreeMap<String, Value>, Vec<Got>) {
    let mut connect = data_source(server, SECRET_KEY);
    connect["id"] = json!("ds-s");
    enqueue(
        names,
        &json!({"schema_version": 1, "type": "connect_data_source",
                            "customer_id": "c1", "data_source": connect}),
    );
    events_of(names, "DATA_SOURCE_READY", |e| {
        !named(e, "DATA_SOURCE_READY").is_empty()
    });
    enqueue(names, &sync_by_id("r1"));
    let (_, outcomes) = outcomes_for(names, count);
    assert!(
        outcomes.values().all(|e| e["event"] == "FILE_READY"),
        "{outcomes:?}"
    );
    let records = collect_until(&names.chunks(), "the records", |got| {
        got.len() as u64
            >= outcomes
                .values()
                .map(|e| e["chunk_count"].as_u64().unwrap())
                .sum()
    });
    (outcomes, records)
}

#[test]
fn stored_data_sources_sync_incrementally_and_report_deletions() {
    let (server, count) = library();
    let names = Names::new("state");
    let pg = Pg::new("state");
    let _worker = state_worker(&names, &pg, &[]);

    // Named by id before it is stored: refused.
    enqueue(&names, &sync_by_id("r0"));
    let dead = collect_until(&names.dead(), "the refusal", |got| !got.is_empty());
    assert_eq!(dead[0].headers["ingestd-error-code"], "UNKNOWN_DATA_SOURCE");

    // Stored by connect_data_source, then named by id alone.
    let (outcomes, first_records) = connect_and_sync(&names, &server, count);
    // The secret is sealed in the store.
    let secret_in_clear: i64 = pg.runtime.block_on(async {
        pg.client
            .query_one(
                &format!(
                    "SELECT count(*) FROM {}.ingestd_data_sources WHERE position($1::bytea in secret) > 0",
                    pg.name
                ),
                &[&SECRET_KEY.as_bytes()],
            )
            .await
            .unwrap()
            .get(0)
    });
    assert_eq!(secret_in_clear, 0);

    // Again, nothing changed: one FILES_SKIPPED naming every object, and no GET or HEAD.
    let reads = server.counts.reads();
    let run = |request_id: &str| {
        enqueue(&names, &sync_by_id(request_id));
        events_of(&names, request_id, |e| {
            e.iter()
                .any(|e| e["event"] == "FILES_SKIPPED" && e["request_id"] == request_id)
        })
    };
    let events = run("r2");
    let skipped = named(&events, "FILES_SKIPPED");
    assert_eq!(skipped.len(), 1, "{events:?}");
    assert_eq!(skipped[0]["reason"], "UNCHANGED");
    assert_eq!(skipped[0]["files"].as_array().unwrap().len(), count);
    assert!(named(&events, "FILE_SYNCING").is_empty(), "{events:?}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        server.counts.reads(),
        reads,
        "an unchanged re-sync reads no object"
    );
    assert!(
        drain(&names.chunks()).is_empty(),
        "an unchanged re-sync emits no record"
    );

    // One object changed (and shorter), one deleted.
    let mut keys = outcomes.keys().filter(|k| k.starts_with("encodings/"));
    let (changed, deleted) = (keys.next().unwrap().clone(), keys.next().unwrap().clone());
    let bucket = server.root.path().join("library");
    std::fs::write(bucket.join(&changed), "A short replacement.\n").unwrap();
    std::fs::remove_file(bucket.join(&deleted)).unwrap();
    let events = {
        enqueue(&names, &sync_by_id("r3"));
        events_of(&names, "the changed sync", |e| {
            e.iter()
                .any(|e| e["event"] == "FILE_READY" && e["file"]["key"] == changed.as_str())
                && e.iter().any(|e| e["event"] == "FILES_SKIPPED")
        })
    };
    let old_ids: BTreeSet<String> = records_of(&first_records, &changed)
        .iter()
        .map(|r| r["chunk_id"].as_str().unwrap().to_owned())
        .collect();
    let outcome = named(&events, "FILE_READY");
    assert_eq!(outcome.len(), 1, "{events:?}");
    let removed: BTreeSet<String> = outcome[0]["removed_chunk_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    assert!(
        !old_ids.is_empty() && removed == old_ids,
        "{removed:?} vs {old_ids:?}"
    );
    let gone = named(&events, "FILE_DELETED");
    assert_eq!(gone.len(), 1, "{events:?}");
    assert_eq!(gone[0]["file"]["key"], deleted.as_str());
    assert_eq!(gone[0]["file"]["bucket"], "library");
    assert_eq!(
        named(&events, "FILES_SKIPPED")[0]["files"]
            .as_array()
            .unwrap()
            .len(),
        count - 2
    );

    // The deleted object is forgotten: it is not reported twice.
    let events = run("r4");
    assert!(named(&events, "FILE_DELETED").is_empty(), "{events:?}");
    assert_eq!(
        named(&events, "FILES_SKIPPED")[0]["files"]
            .as_array()
            .unwrap()
            .len(),
        count - 1
    );
}

#[test]
fn auto_sync_enqueues_each_due_sync_once_across_workers() {
    let (server, count) = library();
    let names = Names::new("autosync");
    let pg = Pg::new("autosync");
    let _worker = state_worker(&names, &pg, &[]);
    connect_and_sync(&names, &server, count);
    // Auto-sync: bad settings are refused; good ones make the data source due, and of two
    // workers exactly one enqueues its sync.
    let zero = json!({"schema_version": 1, "type": "update_users", "customer_ids": ["c1"],
                      "auto_sync_enabled_sources": ["S3"], "sync_interval_hours": 0});
    publish_raw(&names, "update_users", zero.to_string().as_bytes());
    let dead = collect_until(&names.dead(), "the refusal", |got| !got.is_empty());
    assert_eq!(dead[0].headers["ingestd-error-code"], "INVALID_JOB");
    let too_many: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let job = json!({"schema_version": 1, "type": "update_users", "customer_ids": too_many,
                     "auto_sync_enabled_sources": "ALL"});
    publish_raw(&names, "update_users", job.to_string().as_bytes());
    let dead = collect_until(&names.dead(), "the refusal", |got| !got.is_empty());
    assert_eq!(dead[0].headers["ingestd-error-code"], "INVALID_JOB");
    let _second = state_worker(&names, &pg, &[]);
    enqueue(
        &names,
        &json!({"schema_version": 1, "type": "update_users", "customer_ids": ["c1"],
                            "auto_sync_enabled_sources": "ALL", "sync_interval_hours": 24}),
    );
    std::thread::sleep(Duration::from_secs(3));
    let nothing: Vec<Value> = drain(&names.events()).iter().map(Got::json).collect();
    assert!(nothing.is_empty(), "synced just now, not due: {nothing:?}");
    // A day passes.
    pg.sql("UPDATE SCHEMA.ingestd_data_sources SET sync_base_at = sync_base_at - 86400");
    let mut events = events_of(&names, "the scheduled sync", |e| {
        e.iter().any(|e| e["event"] == "FILES_SKIPPED")
    });
    std::thread::sleep(Duration::from_secs(4));
    events.extend(drain(&names.events()).iter().map(Got::json));
    let scheduled: BTreeSet<&str> = events
        .iter()
        .filter_map(|e| e["request_id"].as_str())
        .collect();
    assert_eq!(scheduled.len(), 1, "one scheduled sync: {scheduled:?}");
    let id = scheduled.into_iter().next().unwrap();
    assert!(id.starts_with("scheduled:ds-s:"), "{id}");
    assert_eq!(named(&events, "FILES_SKIPPED")[0]["customer_id"], "c1");
    assert!(drain(&names.dead()).is_empty());
}

#[test]
fn a_worker_killed_between_records_and_state_reprocesses_the_object_identically() {
    let (server, _) = library();
    let names = Names::new("statekill");
    let pg = Pg::new("statekill");
    let mut worker = state_worker(&names, &pg, &[]);
    let job = json!({"schema_version": 1, "type": "sync_files", "request_id": "k1",
                     "customer_id": "c1", "data_source": data_source(&server, SECRET_KEY),
                     "ids": [{"bucket": "library", "id": "formats/guide.md"}],
                     "skip_embedding_generation": true});
    // Reads pass, writes wait: the worker publishes the records, then blocks writing state.
    let (client, connection) = pg
        .runtime
        .block_on(tokio_postgres::connect(&pg.url, tokio_postgres::NoTls))
        .unwrap();
    pg.runtime.spawn(connection);
    pg.runtime
        .block_on(client.batch_execute("BEGIN; LOCK TABLE ingestd_objects IN EXCLUSIVE MODE"))
        .unwrap();
    enqueue(&names, &job);
    let (_, outcomes) = outcomes_for(&names, 1);
    let count = outcomes["formats/guide.md"]["chunk_count"]
        .as_u64()
        .unwrap() as usize;
    let first = collect_until(&names.chunks(), "the records", |got| got.len() >= count);
    std::thread::sleep(Duration::from_millis(500));
    worker.signal("KILL");
    worker.wait_exit(Duration::from_secs(10)).unwrap();
    pg.runtime.block_on(client.batch_execute("COMMIT")).unwrap();

    // The job comes back to a new worker: the same records again, then the state.
    let _worker = state_worker(&names, &pg, &[]);
    let (_, outcomes) = outcomes_for(&names, 1);
    assert_eq!(outcomes["formats/guide.md"]["event"], "FILE_READY");
    let second = collect_until(&names.chunks(), "the records again", |got| {
        got.len() >= count
    });
    let bodies = |got: &[Got]| got.iter().map(Got::json).collect::<Vec<_>>();
    assert_eq!(
        bodies(&second),
        bodies(&first),
        "at least once, byte-identical"
    );
    let mut again = job.clone();
    again["request_id"] = json!("k2");
    enqueue(&names, &again);
    let events = events_of(&names, "the unchanged report", |e| {
        e.iter().any(|e| e["event"] == "FILES_SKIPPED")
    });
    assert_eq!(named(&events, "FILES_SKIPPED")[0]["reason"], "UNCHANGED");
}

#[test]
fn a_state_store_that_cannot_be_used_keeps_the_worker_unready_or_stops_it() {
    let names = Names::new("statebad");
    // Unreachable: not ready, consuming nothing, trying again.
    let worker = Worker::spawn(
        &names,
        BROKER,
        &[("INGESTD_STATE_URL", "postgres://u@127.0.0.1:9/db")],
    );
    assert!(
        worker.wait_ready(false, Duration::from_secs(10)),
        "{}",
        worker.log()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(worker.get("/readyz").map(|r| r.0), Some(503));
    assert!(
        worker.log().contains("state store unavailable"),
        "{}",
        worker.log()
    );
    drop(worker);
    // Not a store: the worker exits 2 saying why.
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("state.sqlite");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    let mut worker = Worker::spawn(
        &names,
        BROKER,
        &[("INGESTD__STATE__PATH", garbage.to_str().unwrap())],
    );
    let status = worker
        .wait_exit(Duration::from_secs(20))
        .expect("the worker exits");
    assert_eq!(status.code(), Some(2), "{}", worker.log());
    assert!(worker.log().contains("STATE_CORRUPT"), "{}", worker.log());
}

#[test]
fn a_resync_that_fills_the_fan_out_batch_exactly_ends() {
    let (server, count) = library();
    let names = Names::new("statebatch");
    let pg = Pg::new("statebatch");
    let batch = count.to_string();
    let _worker = state_worker(&names, &pg, &[("INGESTD__WORKER__FAN_OUT_BATCH", &batch)]);
    connect_and_sync(&names, &server, count);
    // Every object unchanged fills the batch; the continuation goes on after the last one.
    enqueue(&names, &sync_by_id("r2"));
    let mut events = events_of(&names, "the unchanged report", |e| {
        !named(e, "FILES_SKIPPED").is_empty()
    });
    std::thread::sleep(Duration::from_secs(4));
    events.extend(drain(&names.events()).iter().map(Got::json));
    let skipped: usize = named(&events, "FILES_SKIPPED")
        .iter()
        .map(|e| e["files"].as_array().unwrap().len())
        .sum();
    assert_eq!(
        skipped, count,
        "each object once, and the sync ends: {events:?}"
    );
    assert!(named(&events, "FILE_DELETED").is_empty(), "{events:?}");
}

#[test]
fn a_store_lost_mid_run_retries_the_job_through_the_wait_queue() {
    let (server, _) = library();
    let names = Names::new("statelost");
    let pg = Pg::new("statelost");
    let worker = state_worker(&names, &pg, &[]);
    let job = json!({"schema_version": 1, "type": "sync_files", "request_id": "l1",
                     "customer_id": "c1", "data_source": data_source(&server, SECRET_KEY),
                     "ids": [{"bucket": "library", "id": "formats/guide.md"}],
                     "skip_embedding_generation": true});
    // The store answers, but not with what the worker needs: every state query fails.
    pg.sql("ALTER TABLE SCHEMA.ingestd_objects RENAME TO ingestd_objects_away");
    enqueue(&names, &job);
    let start = Instant::now();
    while !worker.log().contains("job will be retried") {
        assert!(
            start.elapsed() < PATIENCE,
            "never retried: {}",
            worker.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        worker.log().contains("STATE_UNAVAILABLE"),
        "{}",
        worker.log()
    );
    pg.sql("ALTER TABLE SCHEMA.ingestd_objects_away RENAME TO ingestd_objects");
    // Back from the wait queue: processed, and its state written (the next sync skips it).
    let (_, outcomes) = outcomes_for(&names, 1);
    assert_eq!(outcomes["formats/guide.md"]["event"], "FILE_READY");
    assert!(drain(&names.dead()).is_empty());
    let mut again = job.clone();
    again["request_id"] = json!("l2");
    enqueue(&names, &again);
    let events = events_of(&names, "the unchanged report", |e| {
        !named(e, "FILES_SKIPPED").is_empty()
    });
    assert_eq!(named(&events, "FILES_SKIPPED")[0]["reason"], "UNCHANGED");
}

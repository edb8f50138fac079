//! The broker path against the one-shot sync of the same objects, in one run.
//!
//! A local S3 server (s3s-fs in this process) holds 2,000 objects under `prefix/` and 200 more
//! under `single/` (1–16 KB of text each). The workload is one `sync_files` job for the prefix
//! (fanned out into 2,000 `sync_object` jobs) and 200 single-key `sync_files` jobs, published at
//! once to the real RabbitMQ on 127.0.0.1:5672 under names of its own. It runs through one
//! worker process, then two; the same 2,200 objects also go through `ingestd sync`.
//!
//! Reported: wall time from publishing to the last outcome event, jobs/s (the 200 single-key
//! jobs, the prefix job and its 2,000 children), objects/s, p50/p99 latency from a job's
//! publication to its objects' `FILE_READY`, peak RSS per worker, the 2-vs-1 speed-up, and the
//! broker path's time over the one-shot sync's.
//!
//! Workers run `worker.concurrency` = 8, the one-shot's files in flight on 2 cores
//! (`INGESTD_BENCH_CONCURRENCY` changes it).
//!
//! Run: `cargo bench --bench worker` (needs RabbitMQ; `scripts/test.sh` starts it).

mod common;
#[path = "../tests/common/s3.rs"]
#[allow(dead_code)]
mod s3;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Value, json};

use common::{prose, vm_hwm, wait_ready};

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const PREFIX_OBJECTS: usize = 2000;
const SINGLE_OBJECTS: usize = 200;

fn main() {
    let server = s3::Server::start();
    let dir = tempfile::tempdir().expect("temporary folder");
    let mut bytes = 0;
    for (folder, count) in [("prefix", PREFIX_OBJECTS), ("single", SINGLE_OBJECTS)] {
        std::fs::create_dir_all(dir.path().join(folder)).expect("folder");
        for i in 0..count {
            let seed = i as u64 + if folder == "single" { 1 << 32 } else { 0 };
            // 1–16 KB each.
            let text = prose(seed, 1024, 15 * 1024);
            bytes += text.len();
            std::fs::write(
                dir.path().join(folder).join(format!("doc-{i:05}.txt")),
                text,
            )
            .expect("object");
        }
    }
    server.bucket_from("bench", dir.path());
    let objects = PREFIX_OBJECTS + SINGLE_OBJECTS;
    let jobs = SINGLE_OBJECTS + 1 + PREFIX_OBJECTS;
    println!(
        "{objects} objects, {:.1} MB; {jobs} jobs (1 prefix job fanned out to {PREFIX_OBJECTS}, {SINGLE_OBJECTS} single keys)",
        bytes as f64 / 1e6
    );

    let one_shot = {
        let started = Instant::now();
        let status = Command::new(env!("CARGO_BIN_EXE_ingestd"))
            .args([
                "sync",
                "s3://bench",
                "--allow-private-endpoint",
                "--out",
                "/dev/null",
            ])
            .arg("--endpoint-url")
            .arg(server.endpoint())
            .env("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY)
            .stderr(Stdio::null())
            .status()
            .expect("ingestd sync runs");
        assert!(status.success());
        started.elapsed()
    };
    println!(
        "  one-shot ingestd sync      {:>7.2} s  {:>7.1} objects/s",
        one_shot.as_secs_f64(),
        objects as f64 / one_shot.as_secs_f64()
    );

    let mut times = Vec::new();
    for workers in [1, 2] {
        let (took, latencies, peaks) = through_workers(&server, workers, objects);
        let secs = took.as_secs_f64();
        let peaks: Vec<String> = peaks
            .iter()
            .map(|kb| format!("{:.0} MB", *kb as f64 / 1024.0))
            .collect();
        println!(
            "  {workers} worker(s)                {secs:>7.2} s  {:>7.1} objects/s  {:>7.1} jobs/s  latency p50 {:.2} s, p99 {:.2} s  peak RSS {}  ({:.2}× one-shot time)",
            objects as f64 / secs,
            jobs as f64 / secs,
            percentile(&latencies, 50),
            percentile(&latencies, 99),
            peaks.join(", "),
            secs / one_shot.as_secs_f64()
        );
        let _ = std::io::stdout().flush();
        times.push(took);
    }
    println!(
        "  2-vs-1 worker speed-up {:.2}×; broker path over one-shot: {:+.0}% (1 worker)",
        times[0].as_secs_f64() / times[1].as_secs_f64(),
        (times[0].as_secs_f64() / one_shot.as_secs_f64() - 1.0) * 100.0
    );
}

fn percentile(sorted: &[f64], percent: usize) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(sorted.len() - 1) * percent / 100]
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Runs the workload through `workers` processes: wall time, sorted latencies (s), peak RSS (KiB)
/// per worker.
fn through_workers(
    server: &s3::Server,
    workers: usize,
    objects: usize,
) -> (Duration, Vec<f64>, Vec<u64>) {
    let prefix = format!("bench.{}.{workers}", std::process::id());
    let env: Vec<(String, String)> = [
        ("JOBS_EXCHANGE", format!("{prefix}.jobs")),
        ("JOBS_QUEUE", format!("{prefix}.jobs")),
        ("CHUNKS_EXCHANGE", format!("{prefix}.chunks")),
        ("EVENTS_EXCHANGE", format!("{prefix}.events")),
        ("DEAD_LETTER_QUEUE", format!("{prefix}.dead")),
        (
            "CONCURRENCY",
            std::env::var("INGESTD_BENCH_CONCURRENCY").unwrap_or_else(|_| "8".to_owned()),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (format!("INGESTD__WORKER__{k}"), v))
    .collect();
    let mut children: Vec<(Child, SocketAddr)> = (0..workers)
        .map(|_| {
            let listen = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port");
            let child = Command::new(env!("CARGO_BIN_EXE_ingestd"))
                .args(["worker", "--allow-private-endpoint"])
                .envs(env.iter().cloned())
                .env("INGESTD__WORKER__LISTEN", listen.to_string())
                .env("INGESTD_AMQP_URL", BROKER)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("the worker starts");
            (child, listen)
        })
        .collect();
    for (_, listen) in &children {
        wait_ready(*listen);
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let data_source = json!({"access_key": s3::ACCESS_KEY, "access_key_secret": s3::SECRET_KEY,
                             "endpoint_url": server.endpoint()});
    let (took, latencies, peaks) = runtime.block_on(async {
        let connection = Connection::connect(BROKER, ConnectionProperties::default()).await.expect("broker");
        let channel = connection.create_channel().await.expect("channel");
        channel.confirm_select(ConfirmSelectOptions::default()).await.expect("confirms");
        let mut jobs = vec![json!({"schema_version": 1, "type": "sync_files", "request_id": "prefix",
            "skip_embedding_generation": true, "data_source": data_source, "ids": [{"bucket": "bench", "prefix": "prefix/"}]})];
        for i in 0..SINGLE_OBJECTS {
            jobs.push(json!({"schema_version": 1, "type": "sync_files", "request_id": format!("single-{i}"),
                "skip_embedding_generation": true, "data_source": data_source, "ids": [{"bucket": "bench", "id": format!("single/doc-{i:05}.txt")}]}));
        }
        let started = Instant::now();
        let mut published: BTreeMap<String, f64> = BTreeMap::new();
        let mut confirms = Vec::new();
        for job in &jobs {
            let request = job["request_id"].as_str().unwrap_or_default().to_owned();
            published.insert(request, now_ms());
            let body = serde_json::to_vec(job).expect("json");
            confirms.push(
                channel
                    .basic_publish(format!("{prefix}.jobs").into(), "sync_files".into(), BasicPublishOptions::default(), &body, BasicProperties::default())
                    .await
                    .expect("publish"),
            );
        }
        for confirm in confirms {
            confirm.await.expect("confirmed");
        }
        let pids: Vec<u32> = children.iter().map(|(child, _)| child.id()).collect();
        let (mut latencies, peaks) = collect(&channel, &prefix, &published, objects, &pids).await;
        let took = started.elapsed();
        delete_topology(&channel, &prefix).await;
        let _ = connection.close(200, "done".into()).await;
        latencies.sort_by(f64::total_cmp);
        (took, latencies, peaks)
    });
    let cpu: Vec<String> = children
        .iter()
        .map(|(child, _)| format!("{:.2}", cpu_secs(child.id())))
        .collect();
    println!("    worker CPU seconds: {}", cpu.join(", "));
    for (child, _) in &mut children {
        let _ = child.kill();
        let _ = child.wait();
    }
    (took, latencies, peaks)
}

/// Drains the outputs until every object has its `FILE_READY`: latency (s) of each from its job's
/// publication, and the peak RSS (KiB) of each worker meanwhile.
async fn collect(
    channel: &lapin::Channel,
    prefix: &str,
    published: &BTreeMap<String, f64>,
    objects: usize,
    pids: &[u32],
) -> (Vec<f64>, Vec<u64>) {
    let mut latencies = Vec::new();
    let mut peaks = vec![0u64; pids.len()];
    let consume = |queue: String| async move {
        channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume")
    };
    let mut events = consume(format!("{prefix}.events")).await;
    // Chunks are taken as they come, so their queue does not grow.
    let mut chunks = consume(format!("{prefix}.chunks")).await;
    let sink = tokio::spawn(async move { while chunks.next().await.is_some() {} });
    let mut sampled = Instant::now();
    while latencies.len() < objects {
        let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_mins(2), events.next()).await
        else {
            panic!(
                "outputs stopped after {} of {objects} objects",
                latencies.len()
            );
        };
        let event: Value = serde_json::from_slice(&message.data).expect("event json");
        if event["event"] == "FILE_READY" {
            let request = event["request_id"].as_str().unwrap_or_default();
            let emitted =
                humantime::parse_rfc3339(event["emitted_at"].as_str().unwrap_or_default())
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
            latencies.push((emitted - published[request]) / 1000.0);
        } else if ["FILE_ERROR", "FILES_SKIPPED"].contains(&event["event"].as_str().unwrap_or("")) {
            panic!("a file failed in the benchmark: {event}");
        }
        if sampled.elapsed() > Duration::from_millis(20) {
            sampled = Instant::now();
            for (peak, pid) in peaks.iter_mut().zip(pids) {
                *peak = (*peak).max(vm_hwm(*pid));
            }
        }
    }
    for (peak, pid) in peaks.iter_mut().zip(pids) {
        *peak = (*peak).max(vm_hwm(*pid));
    }
    sink.abort();
    (latencies, peaks)
}

async fn delete_topology(channel: &lapin::Channel, prefix: &str) {
    let events = format!("{prefix}.events");
    let chunks = format!("{prefix}.chunks");
    for queue in [
        format!("{prefix}.jobs"),
        events.clone(),
        chunks.clone(),
        format!("{prefix}.dead"),
        format!("{prefix}.jobs.wait.10s"),
        format!("{prefix}.jobs.wait.60s"),
        format!("{prefix}.jobs.wait.300s"),
    ] {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in [format!("{prefix}.jobs"), events, chunks] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// User + system CPU time of a process so far (clock ticks of 10 ms).
fn cpu_secs(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let ticks =
                fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
            Some(ticks as f64 / 100.0)
        })
        .unwrap_or(f64::NAN)
}

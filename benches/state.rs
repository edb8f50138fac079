//! Incremental sync with a state store, on a 10,000-object bucket of the in-process S3 server
//! (s3s-fs, SigV4 on), for SQLite and PostgreSQL in turn:
//!
//! 1. first sync — every object listed, read, chunked, remembered;
//! 2. again, nothing changed — the listing only;
//! 3. again, with 1% of the objects rewritten and 1% deleted.
//!
//! Each is `ingestd sync s3://… --state …` (the release binary, `--out /dev/null`). Reported per
//! phase: seconds, GETs and HEADs answered by the server, store operations per object, peak RSS
//! (VmHWM of the child), and the first sync's time over the unchanged re-sync's. The floor of an
//! unchanged re-sync is the listing itself: one aws-sdk-s3 listing of the bucket is timed in the
//! same run, and the unchanged re-sync is reported against it.
//!
//! Run: `cargo bench --bench state` (or `scripts/bench-state.sh`). PostgreSQL at
//! 127.0.0.1:5432 (or `INGESTD_TEST_POSTGRES`); `INGESTD_BENCH_OBJECTS` changes the count.

mod common;
#[path = "../tests/common/s3.rs"]
#[allow(dead_code)]
mod s3;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{prose, vm_hwm};
use s3::{ACCESS_KEY, Counts, SECRET_KEY};

fn main() {
    let objects: usize = std::env::var("INGESTD_BENCH_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let root = tempfile::tempdir().expect("temporary folder");
    let (addr, counts) = s3::serve_counted(root.path(), ingestd::config::cpu_slots());
    let endpoint = format!("http://{addr}");
    let pg_base = std::env::var("INGESTD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let schema = format!("bench_state_{}", std::process::id());
    let pg_url = format!("{pg_base}?options=-csearch_path%3D{schema}");
    let db = tempfile::tempdir().expect("temporary folder");
    let sqlite = db.path().join("state.sqlite");
    println!("{objects} objects of 1–3 KB; ingestd sync s3://bench --state …\n");
    println!(
        "{:<10} {:<22} {:>8} {:>10} {:>12} {:>10}",
        "store", "phase", "seconds", "GET+HEAD", "store ops/obj", "peak RSS"
    );
    for (name, location) in [
        ("sqlite", sqlite.display().to_string()),
        ("postgres", pg_url),
    ] {
        if name == "postgres" {
            psql(
                &pg_base,
                &format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"),
            );
        }
        let bucket = root.path().join("bench");
        let _ = std::fs::remove_dir_all(&bucket);
        std::fs::create_dir_all(&bucket).expect("bucket folder");
        for i in 0..objects {
            std::fs::write(bucket.join(key(i)), prose(i as u64, 1000, 2000)).expect("object");
        }
        let first = phase(name, "first sync", &endpoint, &location, objects, &counts);
        let unchanged = phase(name, "unchanged", &endpoint, &location, objects, &counts);
        let listing = list_all(&endpoint);
        println!(
            "{name:<10} {:<22} {:>8.2}   (unchanged re-sync / listing: {:.2}×)",
            "listing alone",
            listing.as_secs_f64(),
            unchanged.as_secs_f64() / listing.as_secs_f64()
        );
        for i in (0..objects).step_by(100) {
            std::fs::write(bucket.join(key(i)), prose(i as u64 + 7, 1000, 2000)).expect("object");
            std::fs::remove_file(bucket.join(key(i + 1))).expect("object");
        }
        phase(
            name,
            "1% changed, 1% deleted",
            &endpoint,
            &location,
            objects,
            &counts,
        );
        println!(
            "{name:<10} first / unchanged: {:.0}×\n",
            first.as_secs_f64() / unchanged.as_secs_f64()
        );
        if name == "postgres" {
            psql(&pg_base, &format!("DROP SCHEMA {schema} CASCADE"));
        }
    }
}

fn key(i: usize) -> String {
    format!("doc-{i:05}.txt")
}

/// One `ingestd sync`; prints its line and returns its time.
fn phase(
    store: &str,
    phase: &str,
    endpoint: &str,
    location: &str,
    objects: usize,
    counts: &Counts,
) -> Duration {
    let reads = counts.reads();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ingestd"))
        .args([
            "sync",
            "s3://bench",
            "--allow-private-endpoint",
            "--summary",
        ])
        .args(["--endpoint-url", endpoint, "--state", location])
        .args(["--out", "/dev/null", "--events", "/dev/null"])
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ingestd");
    let mut peak = 0;
    while child.try_wait().expect("waiting").is_none() {
        peak = peak.max(vm_hwm(child.id()));
        std::thread::sleep(Duration::from_millis(5));
    }
    let output = child.wait_with_output().expect("ingestd output");
    let elapsed = started.elapsed();
    let summary = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{summary}");
    let operations: f64 = summary
        .lines()
        .find_map(|l| l.trim().strip_prefix("state"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(f64::NAN);
    println!(
        "{store:<10} {phase:<22} {:>8.2} {:>10} {:>12.3} {:>7} MB",
        elapsed.as_secs_f64(),
        counts.reads() - reads,
        operations / objects as f64,
        peak / 1024
    );
    elapsed
}

/// One listing of the whole bucket with aws-sdk-s3, keys and sizes only: the floor.
fn list_all(endpoint: &str) -> Duration {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let client = common::s3_client(endpoint, ACCESS_KEY, SECRET_KEY);
    let started = Instant::now();
    runtime.block_on(async {
        let mut pages = client
            .list_objects_v2()
            .bucket("bench")
            .into_paginator()
            .send();
        let mut listed = 0;
        while let Some(page) = pages.next().await {
            listed += page.expect("listing").contents().len();
        }
        assert!(listed > 0);
    });
    started.elapsed()
}

fn psql(base: &str, sql: &str) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let (client, connection) = tokio_postgres::connect(base, tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|err| panic!("PostgreSQL at {base}: {err}"));
        tokio::spawn(connection);
        client.batch_execute(sql).await.expect("psql");
    });
}

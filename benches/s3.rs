//! `ingestd sync s3://…` against a local S3 server, beside its floor and a Python peer, in one
//! run.
//!
//! The server is s3s-fs (SigV4 on) inside this process, loaded through PutObject with
//! (a) 2,000 small text objects of 1–64 KB and (b) three 200 MB text objects. For each set:
//!
//! * floor — list + GET every object with aws-sdk-s3, bodies drained, nothing else, with the
//!   as many objects in flight as ingestd (its default, four per core);
//! * ingestd — the release binary, `--out /dev/null`, default chunking (1500 / 20, cl100k);
//! * peer (small set only) — `benches/s3_peer.py`: boto3 listing, sequential GETs, LangChain's
//!   `RecursiveCharacterTextSplitter.from_tiktoken_encoder` with the same size and overlap,
//!   token counts for each chunk, JSON lines to /dev/null.
//!
//! The small set runs twice: on loopback, and through a proxy that adds 20 ms to every
//! response (about S3's time to first byte), where concurrency matters.
//!
//! Reported: objects/s, MB/s, peak RSS (VmHWM of the child process), and ratios.
//!
//! Run: `cargo bench --bench s3`. Needs `python3` with `boto3`, `tiktoken` and
//! `langchain-text-splitters` for the peer (`scripts/bench-s3.sh` installs them); set
//! `INGESTD_BENCH_LARGE_MB` to change the size of the large objects.

mod common;
#[path = "../tests/common/s3.rs"]
#[allow(dead_code)]
mod s3;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt;

use common::{mix, run_sampled};
use s3::{ACCESS_KEY, SECRET_KEY};
const SMALL_OBJECTS: usize = 2000;
const LARGE_OBJECTS: usize = 3;
/// Time to first byte added by the latency proxy, about what S3 and Spaces take.
const LATENCY_MS: u64 = 20;

fn main() {
    let large_mb: usize = std::env::var("INGESTD_BENCH_LARGE_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let root = tempfile::tempdir().expect("temporary folder");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let addr = s3::serve(root.path(), ingestd::config::cpu_slots());
    let endpoint = format!("http://{addr}");
    let direct = client(&endpoint);
    // ingestd's default: four objects in flight per core.
    let concurrency = 4 * ingestd::config::cpu_slots();

    println!("loading the server: {SMALL_OBJECTS} small objects, {LARGE_OBJECTS} × {large_mb} MB");
    let small_bytes = runtime.block_on(load(&direct, "small", SMALL_OBJECTS, |i| {
        1024 + (mix(i as u64) % (63 * 1024)) as usize
    }));
    let large_bytes = runtime.block_on(load(&direct, "large", LARGE_OBJECTS, |_| {
        large_mb * 1_000_000
    }));

    // Loopback answers in microseconds; S3 and Spaces take tens of milliseconds to the first
    // byte. The second small run goes through a proxy that adds that wait to every response.
    let slow = latency_proxy(addr, Duration::from_millis(LATENCY_MS));
    let slow_endpoint = format!("http://{slow}");
    let slow_client = client(&slow_endpoint);
    for (bucket, objects, bytes, with_peer, latency) in [
        ("small", SMALL_OBJECTS, small_bytes, true, 0),
        ("small", SMALL_OBJECTS, small_bytes, true, LATENCY_MS),
        ("large", LARGE_OBJECTS, large_bytes, false, 0),
    ] {
        let (endpoint, client) = if latency == 0 {
            (endpoint.as_str(), &direct)
        } else {
            (slow_endpoint.as_str(), &slow_client)
        };
        println!(
            "\n({bucket}) {objects} objects, {:.1} MB, {concurrency} in flight, {latency} ms added per response",
            bytes as f64 / 1e6
        );
        let started = Instant::now();
        let downloaded = runtime.block_on(download_all(client, bucket, concurrency));
        let floor = started.elapsed();
        assert_eq!(downloaded, bytes, "the floor read every byte");
        report(
            "floor (aws-sdk-s3 download)",
            objects,
            bytes,
            floor,
            None,
            floor,
        );

        let (ours, rss) = run(Command::new(env!("CARGO_BIN_EXE_ingestd"))
            .args([
                "sync",
                &format!("s3://{bucket}"),
                "--allow-private-endpoint",
            ])
            .args([
                "--endpoint-url",
                endpoint,
                "--out",
                "/dev/null",
                "--events",
                "/dev/null",
            ])
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY));
        report("ingestd sync", objects, bytes, ours, Some(rss), floor);

        if with_peer {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/s3_peer.py");
            let tiktoken = tiktoken_cache(root.path());
            let (peer, peer_rss) = run(Command::new("python3")
                .arg(&script)
                .args([endpoint, bucket])
                .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                .env("TIKTOKEN_CACHE_DIR", &tiktoken));
            report(
                "peer (boto3 + LangChain)",
                objects,
                bytes,
                peer,
                Some(peer_rss),
                floor,
            );
            println!(
                "  ingestd / peer speed: {:.1}×",
                peer.as_secs_f64() / ours.as_secs_f64()
            );
        }
        println!(
            "  ingestd / floor speed: {:.2}×",
            floor.as_secs_f64() / ours.as_secs_f64()
        );
    }
}

fn report(
    what: &str,
    objects: usize,
    bytes: usize,
    took: Duration,
    rss: Option<u64>,
    floor: Duration,
) {
    let secs = took.as_secs_f64();
    let rss = rss.map_or_else(String::new, |kb| {
        format!(", peak RSS {:.0} MB", kb as f64 / 1024.0)
    });
    println!(
        "  {what:<28} {secs:>7.2} s  {:>8.1} objects/s  {:>7.1} MB/s  ({:.2}× floor time){rss}",
        objects as f64 / secs,
        bytes as f64 / 1e6 / secs,
        secs / floor.as_secs_f64()
    );
    let _ = std::io::stdout().flush();
}

/// Runs a child to completion, output to /dev/null; its wall time and peak RSS in KiB.
fn run(command: &mut Command) -> (Duration, u64) {
    run_sampled(command.stdout(Stdio::null()).stderr(Stdio::inherit()))
}

/// A TCP proxy to `upstream` that holds back each response (data from the server after a
/// quiet spell) for `latency`, as a distant store's time to first byte.
fn latency_proxy(upstream: SocketAddr, latency: Duration) -> SocketAddr {
    use std::io::Read as _;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let addr = listener.local_addr().expect("proxy address");
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = std::net::TcpStream::connect(upstream) else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (Ok(mut client_in), Ok(mut server_out)) = (client.try_clone(), server.try_clone())
            else {
                continue;
            };
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut client_in, &mut server_out);
            });
            let (mut server_in, mut client_out) = (server, client);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                let mut last = Instant::now();
                while let Ok(n) = server_in.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if last.elapsed() > Duration::from_millis(2) {
                        std::thread::sleep(latency);
                    }
                    if client_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    last = Instant::now();
                }
                let _ = client_out.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    addr
}

/// s3s-fs on a loopback port, on its own thread and runtime.
fn client(endpoint: &str) -> Client {
    common::s3_client(endpoint, ACCESS_KEY, SECRET_KEY)
}

/// Creates `bucket` with `count` prose objects of `size(i)` bytes; returns the total bytes.
async fn load(client: &Client, bucket: &str, count: usize, size: impl Fn(usize) -> usize) -> usize {
    client
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .expect("create bucket");
    let mut total = 0;
    for i in 0..count {
        let text = prose(i as u64, size(i));
        total += text.len();
        client
            .put_object()
            .bucket(bucket)
            .key(format!("doc-{i:05}.txt"))
            .body(ByteStream::from(text.into_bytes()))
            .send()
            .await
            .expect("put object");
    }
    total
}

/// Lists `bucket` and drains every object's body, `concurrency` at a time; returns the bytes.
async fn download_all(client: &Client, bucket: &str, concurrency: usize) -> usize {
    let mut keys = Vec::new();
    let mut pages = client
        .list_objects_v2()
        .bucket(bucket)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.expect("list");
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
    }
    futures::stream::iter(keys)
        .map(|key| async move {
            let mut body = client
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .expect("get")
                .body;
            let mut n = 0;
            while let Some(piece) = body.next().await {
                n += piece.expect("body").len();
            }
            n
        })
        .buffer_unordered(concurrency)
        .fold(0, |total, n| async move { total + n })
        .await
}

/// `len` bytes of English-like text (words from a fixed list, sentences, paragraphs), the same
/// for the same seed.
fn prose(seed: u64, len: usize) -> String {
    const WORDS: &[&str] = &[
        "the",
        "data",
        "of",
        "a",
        "bucket",
        "connector",
        "and",
        "to",
        "in",
        "object",
        "sync",
        "every",
        "file",
        "is",
        "chunk",
        "text",
        "with",
        "token",
        "for",
        "storage",
        "customer",
        "request",
        "on",
        "as",
        "report",
        "quarterly",
        "revenue",
        "growth",
        "team",
        "policy",
        "document",
        "that",
        "was",
        "by",
        "it",
        "are",
        "from",
        "this",
        "be",
        "which",
        "or",
        "have",
        "an",
        "not",
        "their",
        "more",
        "about",
        "search",
        "model",
        "index",
        "2026",
        "Spaces",
        "region",
        "endpoint",
        "latency",
        "retrieval",
        "embedding",
        "summary",
    ];
    let mut text = String::with_capacity(len + 16);
    let mut state = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut words_in_sentence = 0;
    while text.len() < len {
        state = mix(state);
        let word = WORDS[(state % WORDS.len() as u64) as usize];
        if words_in_sentence == 0 {
            let mut chars = word.chars();
            if let Some(first) = chars.next() {
                text.extend(first.to_uppercase());
                text.push_str(chars.as_str());
            }
        } else {
            text.push(' ');
            text.push_str(word);
        }
        words_in_sentence += 1;
        if words_in_sentence > 6 + (state >> 20) % 14 {
            text.push('.');
            text.push(if (state >> 40).is_multiple_of(6) {
                '\n'
            } else {
                ' '
            });
            words_in_sentence = 0;
        }
    }
    text.truncate(len);
    text
}

/// A tiktoken cache holding cl100k_base from the tiktoken-rs sources, so the Python peer runs
/// without reaching openaipublic.blob.core.windows.net (tiktoken checks the file's hash).
fn tiktoken_cache(root: &Path) -> std::path::PathBuf {
    let cache = root.join("tiktoken-cache");
    std::fs::create_dir_all(&cache).expect("cache folder");
    let ranks = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/s3_peer.py");
    let output = Command::new("python3")
        .arg(&ranks)
        .arg("--cache-key")
        .output()
        .expect("python3");
    let key = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let source = cargo_registry_file("tiktoken-rs", "assets/cl100k_base.tiktoken");
    std::fs::copy(&source, cache.join(key)).expect("copy cl100k_base");
    cache
}

/// A file of a dependency's sources in cargo's registry.
fn cargo_registry_file(crate_prefix: &str, path: &str) -> std::path::PathBuf {
    let home = std::env::var("CARGO_HOME").map_or_else(
        |_| Path::new(&std::env::var("HOME").unwrap_or_default()).join(".cargo"),
        std::path::PathBuf::from,
    );
    let registry = home.join("registry/src");
    for index in std::fs::read_dir(&registry)
        .expect("cargo registry")
        .flatten()
    {
        for krate in std::fs::read_dir(index.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = krate.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{crate_prefix}-")) && krate.path().join(path).is_file() {
                return krate.path().join(path);
            }
        }
    }
    panic!(
        "{crate_prefix}/{path} not found under {}",
        registry.display()
    );
}

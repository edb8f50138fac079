//! Shared helpers for the integration tests: run the real binary, read its JSON Lines.

#![allow(dead_code)]

pub mod embed;
pub mod fault;
pub mod http;
pub mod s3;
pub mod transcribe;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fixture path.
pub fn fixture(relative: &str) -> PathBuf {
    root().join("fixtures").join(relative)
}

/// A shell script at `path` that runs `body`, made executable: a stand-in for a program
/// ingestd runs (one that hangs, talks without end, or records that it was started).
pub fn program(path: &Path, body: &str) -> PathBuf {
    std::fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    path.to_path_buf()
}

/// Runs `ingestd` with `args` in `dir` (so no stray `pipeline.toml` is picked up).
pub fn ingestd(dir: &Path, args: &[&str]) -> Output {
    ingestd_with(dir, args, &[])
}

/// Like [`ingestd`], with these environment variables (and no key of the caller's own).
pub fn ingestd_with(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ingestd"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("OPENAI_API_KEY")
        .envs(env.iter().copied())
        .output()
        .expect("running ingestd")
}

/// Fails the test, showing the run's stderr, unless it exited with `code`.
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Parses JSON Lines.
pub fn lines(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(bytes)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The outcome event (not FILE_SYNCING) for `key`.
pub fn outcome<'a>(events: &'a [Value], key: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["file"]["key"] == key && e["event"] != "FILE_SYNCING")
        .unwrap_or_else(|| panic!("no outcome for {key} in {events:#?}"))
}

/// Like [`ingestd`], but a run still going after `limit` is killed and fails the test (for
/// inputs that once made the pipeline wait forever).
pub fn ingestd_within(dir: &Path, args: &[&str], limit: std::time::Duration) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ingestd"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("running ingestd");
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut buf).map(|_| buf)
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut buf).map(|_| buf)
    });
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for ingestd") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("ingestd {args:?} was still running after {limit:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().expect("stdout thread").expect("stdout"),
        stderr: err.join().expect("stderr thread").expect("stderr"),
    }
}

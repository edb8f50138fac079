//! Embeddings through `ingestd sync`, against a local provider that speaks OpenAI's
//! `/v1/embeddings` wire format (tests/common/embed.rs) over real HTTP.

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::embed::{API_KEY, DIMENSIONS, Fault, Provider, vector};
use common::{assert_exit, ingestd_with, lines, outcome};
use serde_json::Value;

/// The variable the test configuration reads the key from.
const KEY_ENV: &str = "INGESTD_TEST_EMBEDDING_KEY";

/// A folder of `files` text files of varied length, none alike.
fn corpus(files: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let words = [
        "harbour", "ledger", "quartz", "meadow", "lantern", "orbit", "velvet", "cinder", "tundra",
        "saffron", "gable", "mosaic",
    ];
    for f in 0..files {
        let mut text = String::new();
        for sentence in 0..(10 + 25 * f) {
            let _ = write!(text, "File {f} sentence {sentence}:");
            for w in 0..9 {
                text.push(' ');
                text.push_str(words[(f * 7 + sentence * 3 + w * 5) % words.len()]);
            }
            text.push_str(if sentence % 6 == 5 { ".\n\n" } else { ". " });
        }
        std::fs::write(dir.path().join(format!("doc-{f}.txt")), text).unwrap();
    }
    dir
}

/// A `pipeline.toml` in `dir` with one provider (`test`) at `provider` tried three times (unless
/// `more`, appended inside the provider's table, says otherwise), and model `TEST` (the default).
fn configure(dir: &Path, provider: &Provider, batch: (usize, usize), more: &str) -> PathBuf {
    let path = dir.join("pipeline.toml");
    let more = if more.contains("max_attempts") {
        more.to_owned()
    } else {
        format!("max_attempts = 3\n{more}")
    };
    let (inputs, tokens) = batch;
    std::fs::write(
        &path,
        format!(
            r#"
[embedding]
default_model = "TEST"
max_batch_inputs = {inputs}
max_batch_tokens = {tokens}
batch_linger_ms = 5

[embedding.providers.test]
url = "{url}"
api_key_env = "{KEY_ENV}"
timeout_secs = 2
max_retry_wait_secs = 5
{more}

[embedding.models.TEST]
provider = "test"
model = "test-embedder"
dimensions = {DIMENSIONS}
max_input_tokens = 1000
"#,
            url = provider.url()
        ),
    )
    .unwrap();
    path
}

/// `ingestd sync <corpus> --embed` from `dir` (where the configuration is) with `key`.
fn sync(
    dir: &Path,
    corpus: &Path,
    key: &str,
    extra: &[&str],
) -> (std::process::Output, Vec<Value>, Vec<Value>) {
    let events = dir.join("events.jsonl");
    let mut args = vec![
        "sync",
        corpus.to_str().unwrap(),
        "--chunk-size",
        "64",
        "--chunk-overlap",
        "8",
        "--events",
        events.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = ingestd_with(
        dir,
        &args,
        &[(KEY_ENV, key), ("INGESTD__LOG__LEVEL", "debug")],
    );
    let events = lines(&std::fs::read(&events).unwrap_or_default());
    let records = lines(&out.stdout);
    (out, records, events)
}

fn as_vector(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a vector: {value}"))
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn every_chunk_leaves_with_the_vector_of_its_own_text_in_bounded_batches() {
    let provider = Provider::start();
    let dir = tempfile::tempdir().unwrap();
    let files = corpus(6);
    let (max_inputs, max_tokens) = (7, 300);
    configure(dir.path(), &provider, (max_inputs, max_tokens), "");

    // Skipped (the one-shot default): no provider called, no vectors.
    let (out, plain, _) = sync(dir.path(), files.path(), API_KEY, &[]);
    assert_exit(&out, 0);
    assert!(
        provider.seen().is_empty(),
        "a skipping run called the provider"
    );
    assert!(
        plain
            .iter()
            .all(|r| r["embedding"].is_null() && r["embedding_model"].is_null())
    );

    let (out, records, events) = sync(dir.path(), files.path(), API_KEY, &["--embed"]);
    assert_exit(&out, 0);
    assert_eq!(records.len(), plain.len(), "the same chunks, with vectors");
    assert!(
        records.len() > 3 * max_inputs,
        "too few chunks to batch: {}",
        records.len()
    );
    for (embedded, skipped) in records.iter().zip(&plain) {
        // Same chunk in the same place: only the two embedding fields differ.
        let mut stripped = embedded.clone();
        stripped["embedding"] = Value::Null;
        stripped["embedding_model"] = Value::Null;
        assert_eq!(&stripped, skipped);
        let text = embedded["text"].as_str().unwrap();
        assert_eq!(
            as_vector(&embedded["embedding"]),
            vector(text, DIMENSIONS),
            "{text}"
        );
        assert_eq!(embedded["embedding_model"], "TEST");
    }
    for f in 0..6 {
        assert_eq!(
            outcome(&events, &format!("doc-{f}.txt"))["event"],
            "FILE_READY"
        );
    }

    // Batches stay within both limits, and every chunk was sent exactly once.
    let tokens: BTreeMap<&str, u64> = records
        .iter()
        .map(|r| {
            (
                r["text"].as_str().unwrap(),
                r["token_count"].as_u64().unwrap(),
            )
        })
        .collect();
    let seen = provider.seen();
    let mut sent: Vec<&str> = Vec::new();
    for request in &seen {
        assert_eq!(request.status, 200);
        assert_eq!(request.model, "test-embedder");
        assert_eq!(request.auth, "bearer");
        assert_eq!(request.encoding_format, "base64");
        assert!(
            request.inputs.len() <= max_inputs,
            "{} inputs",
            request.inputs.len()
        );
        let total: u64 = request.inputs.iter().map(|i| tokens[i.as_str()]).sum();
        assert!(total <= max_tokens as u64, "{total} tokens in one request");
        sent.extend(request.inputs.iter().map(String::as_str));
    }
    let mut expected: Vec<&str> = records
        .iter()
        .map(|r| r["text"].as_str().unwrap())
        .collect();
    sent.sort_unstable();
    expected.sort_unstable();
    assert_eq!(sent, expected);
    // Batches are full, not one chunk each: within twice the fewest requests possible.
    let total: u64 = tokens.values().sum();
    let fewest = records
        .len()
        .div_ceil(max_inputs)
        .max(total.div_ceil(max_tokens as u64) as usize);
    assert!(
        seen.len() <= 2 * fewest,
        "{} requests for {} chunks",
        seen.len(),
        records.len()
    );
}

#[test]
fn transient_failures_are_retried_until_every_chunk_has_its_vector() {
    let provider = Provider::start();
    let dir = tempfile::tempdir().unwrap();
    let files = corpus(3);
    configure(dir.path(), &provider, (64, 100_000), "max_attempts = 4");
    provider.fail_next([
        Fault::RateLimited(Some("1")),
        Fault::ServerError,
        Fault::Slow(Duration::from_secs(3)),
    ]);
    let (out, records, events) = sync(dir.path(), files.path(), API_KEY, &["--embed"]);
    assert_exit(&out, 0);
    assert!(!records.is_empty());
    for record in &records {
        let text = record["text"].as_str().unwrap();
        assert_eq!(as_vector(&record["embedding"]), vector(text, DIMENSIONS));
    }
    assert!(
        events.iter().all(|e| e["event"] != "FILE_ERROR"),
        "{events:#?}"
    );
    let seen = provider.seen();
    let statuses: Vec<u16> = seen.iter().map(|s| s.status).collect();
    assert!(
        statuses.contains(&429) && statuses.contains(&500),
        "{statuses:?}"
    );
    // The request after the 429 waited out its Retry-After of one second.
    let limited = seen.iter().position(|s| s.status == 429).unwrap();
    let next = seen
        .iter()
        .skip(limited + 1)
        .find(|s| s.inputs == seen[limited].inputs)
        .expect("the rate-limited batch was sent again");
    assert!(
        next.at.duration_since(seen[limited].at) >= Duration::from_millis(950),
        "retried {:?} after a Retry-After of 1 s",
        next.at.duration_since(seen[limited].at)
    );
}

#[test]
fn provider_failures_fail_their_files_with_stable_codes() {
    let float = "encoding_format = \"float\"";
    let cases = [
        (
            Fault::RateLimited(Some("0")),
            "EMBEDDING_RATE_LIMITED",
            true,
            "",
        ),
        (Fault::ServerError, "EMBEDDING_UNAVAILABLE", true, ""),
        (
            Fault::Slow(Duration::from_secs(3)),
            "EMBEDDING_UNAVAILABLE",
            true,
            "",
        ),
        (Fault::WrongCount, "EMBEDDING_BAD_RESPONSE", false, ""),
        (Fault::WrongDimensions, "EMBEDDING_BAD_RESPONSE", false, ""),
        (
            Fault::WrongDimensions,
            "EMBEDDING_BAD_RESPONSE",
            false,
            float,
        ),
        (Fault::NotFinite, "EMBEDDING_BAD_RESPONSE", false, ""),
        (Fault::NotFinite, "EMBEDDING_BAD_RESPONSE", false, float),
        (Fault::BadJson, "EMBEDDING_BAD_RESPONSE", false, ""),
    ];
    let files = corpus(2);
    let runs: Vec<_> = cases
        .into_iter()
        .map(|(fault, code, retryable, more)| {
            let files = files.path().to_owned();
            std::thread::spawn(move || {
                let provider = Provider::start();
                let dir = tempfile::tempdir().unwrap();
                configure(dir.path(), &provider, (64, 100_000), more);
                provider.fail_always(Some(fault.clone()));
                let (out, records, events) = sync(dir.path(), &files, API_KEY, &["--embed"]);
                (
                    fault,
                    code,
                    retryable,
                    out,
                    records,
                    events,
                    provider.attempts(),
                )
            })
        })
        .collect();
    for run in runs {
        let (fault, code, retryable, out, records, events, attempts) = run.join().unwrap();
        assert_exit(&out, 3);
        assert!(records.is_empty(), "{fault:?}: chunks left without vectors");
        for f in 0..2 {
            let outcome = outcome(&events, &format!("doc-{f}.txt"));
            assert_eq!(outcome["event"], "FILE_ERROR", "{fault:?}: {outcome}");
            assert_eq!(outcome["error_code"], code, "{fault:?}: {outcome}");
            assert_eq!(outcome["retryable"], retryable, "{fault:?}: {outcome}");
            assert!(
                outcome["message"]
                    .as_str()
                    .unwrap()
                    .contains("test-embedder")
            );
        }
        // Transient failures are tried max_attempts (3) times per batch; bad answers once. (A
        // batch still being retried when another has failed both files is cut short.)
        let expected = if retryable { 3 } else { 1 };
        assert_eq!(
            attempts.iter().max(),
            Some(&expected),
            "{fault:?}: {attempts:?}"
        );
        assert!(
            attempts.iter().all(|&n| n <= expected),
            "{fault:?}: {attempts:?}"
        );
    }
}

#[test]
fn a_wrong_key_is_a_permanent_error_that_never_shows_the_key() {
    let provider = Provider::start();
    let dir = tempfile::tempdir().unwrap();
    let files = corpus(2);
    configure(dir.path(), &provider, (64, 100_000), "");
    let wrong = "sk-wrong-key-that-must-stay-hidden";
    let (out, records, events) = sync(dir.path(), files.path(), wrong, &["--embed"]);
    assert_exit(&out, 3);
    assert!(records.is_empty());
    let outcome = outcome(&events, "doc-0.txt");
    assert_eq!(outcome["error_code"], "EMBEDDING_AUTH", "{outcome}");
    assert_eq!(outcome["retryable"], false);
    let attempts = provider.attempts();
    assert!(
        attempts.iter().all(|&n| n == 1),
        "a refused key was tried again: {attempts:?}"
    );
    assert!(provider.seen().iter().all(|s| s.status == 401));
    let everything = format!(
        "{}{}{events:?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!everything.contains(wrong), "the key was shown");
    assert!(
        !everything.contains("must-stay-hidden"),
        "part of the key was shown"
    );
}

#[test]
fn one_input_the_provider_refuses_fails_only_its_own_file() {
    let provider = Provider::start();
    let dir = tempfile::tempdir().unwrap();
    let files = corpus(5);
    std::fs::write(
        files.path().join("doc-poisoned.txt"),
        "This file holds POISON that the provider refuses.",
    )
    .unwrap();
    let path = configure(dir.path(), &provider, (256, 100_000), "");
    // Long enough that the poisoned chunk shares its batch with the other files' chunks.
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        config.replace("batch_linger_ms = 5", "batch_linger_ms = 300"),
    )
    .unwrap();
    provider.poison("POISON");
    let (out, records, events) = sync(dir.path(), files.path(), API_KEY, &["--embed"]);
    assert_exit(&out, 3);
    let refused = outcome(&events, "doc-poisoned.txt");
    assert_eq!(refused["error_code"], "EMBEDDING_REJECTED", "{refused}");
    assert_eq!(refused["retryable"], false);
    // The provider's refusal is quoted, with the key it echoed blanked out.
    let message = refused["message"].as_str().unwrap();
    assert!(
        message.contains("this input is refused") && message.contains("***"),
        "{message}"
    );
    assert!(!message.contains(API_KEY), "{message}");
    for f in 0..5 {
        assert_eq!(
            outcome(&events, &format!("doc-{f}.txt"))["event"],
            "FILE_READY"
        );
    }
    assert!(
        records
            .iter()
            .all(|r| r["file"]["key"] != "doc-poisoned.txt")
    );
    for record in &records {
        let text = record["text"].as_str().unwrap();
        assert_eq!(as_vector(&record["embedding"]), vector(text, DIMENSIONS));
    }
    // The poisoned chunk shared a batch with others, which was split to find it.
    assert!(
        provider
            .seen()
            .iter()
            .any(|s| s.status == 400 && s.inputs.len() > 1)
    );
}

#[test]
fn embeddings_that_cannot_be_made_are_refused_before_anything_is_written() {
    let provider = Provider::start();
    let dir = tempfile::tempdir().unwrap();
    let files = corpus(1);
    let corpus = files.path().to_str().unwrap();
    // The shipped configuration's OpenAI provider, without OPENAI_API_KEY.
    let out = ingestd_with(dir.path(), &["sync", corpus, "--embed"], &[]);
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("EMBEDDING_NOT_CONFIGURED") && stderr.contains("OPENAI_API_KEY"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());

    configure(dir.path(), &provider, (64, 100_000), "");
    let out = ingestd_with(
        dir.path(),
        &["sync", corpus, "--embedding-model", "NOPE"],
        &[(KEY_ENV, API_KEY)],
    );
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("EMBEDDING_NOT_CONFIGURED") && stderr.contains("TEST"),
        "{stderr}"
    );

    let out = ingestd_with(
        dir.path(),
        &[
            "sync",
            corpus,
            "--embedding-endpoint",
            "ftp://example.com/v1",
        ],
        &[],
    );
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--embedding-endpoint"), "{stderr}");

    // TEST takes 1000 tokens: larger chunks could never be embedded.
    let out = ingestd_with(
        dir.path(),
        &["sync", corpus, "--embed", "--chunk-size", "1500"],
        &[(KEY_ENV, API_KEY)],
    );
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1000"), "{stderr}");
    assert!(provider.seen().is_empty());
}

#[test]
fn any_openai_compatible_endpoint_from_the_command_line() {
    let provider = Provider::start();
    let dir = tempfile::tempdir().unwrap();
    let files = corpus(2);
    let corpus = files.path().to_str().unwrap();
    let url = provider.url();
    // A self-hosted server's own model, without a key: vector length learned from the answer.
    let out = ingestd_with(
        dir.path(),
        &[
            "sync",
            corpus,
            "--embedding-endpoint",
            &url,
            "--embedding-model",
            "BAAI/bge-small-en",
        ],
        &[],
    );
    assert_exit(&out, 0);
    let records = lines(&out.stdout);
    assert!(!records.is_empty());
    for record in &records {
        assert_eq!(record["embedding_model"], "BAAI/bge-small-en");
        assert_eq!(
            as_vector(&record["embedding"]),
            vector(record["text"].as_str().unwrap(), DIMENSIONS)
        );
    }
    assert!(
        provider
            .seen()
            .iter()
            .all(|s| s.auth == "none" && s.model == "BAAI/bge-small-en")
    );

    // Carbon's name for shortened text-embedding-3-small vectors, with OPENAI_API_KEY.
    let before = provider.seen().len();
    let out = ingestd_with(
        dir.path(),
        &[
            "sync",
            corpus,
            "--embedding-endpoint",
            &url,
            "--embedding-model",
            "OPENAI_ADA_SMALL_512",
        ],
        &[("OPENAI_API_KEY", API_KEY)],
    );
    assert_exit(&out, 0);
    for record in lines(&out.stdout) {
        assert_eq!(
            as_vector(&record["embedding"]),
            vector(record["text"].as_str().unwrap(), 512)
        );
    }
    let seen = &provider.seen()[before..];
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|s| s.auth == "bearer"
        && s.model == "text-embedding-3-small"
        && s.dimensions == Some(512)));
}

#[test]
fn azure_deployments_get_the_api_key_header_and_api_version() {
    let provider = Provider::start();
    let dir = tempfile::tempdir().unwrap();
    let files = corpus(1);
    let path = configure(
        dir.path(),
        &provider,
        (64, 100_000),
        "auth = \"api_key\"\napi_version = \"2024-02-01\"\nencoding_format = \"float\"",
    );
    let config = std::fs::read_to_string(&path).unwrap().replace(
        &format!("url = \"{}\"", provider.url()),
        &format!("url = \"http://{}/openai/deployments/ada/\"", provider.addr),
    );
    std::fs::write(&path, config).unwrap();
    let (out, records, _) = sync(dir.path(), files.path(), API_KEY, &["--embed"]);
    assert_exit(&out, 0);
    assert!(records.iter().all(|r| r["embedding"].is_array()));
    let seen = provider.seen();
    assert!(!seen.is_empty());
    for request in seen {
        assert_eq!(
            request.uri,
            "/openai/deployments/ada/embeddings?api-version=2024-02-01"
        );
        assert_eq!(request.auth, "api-key");
        assert_eq!(request.encoding_format, "float");
    }
}

#[test]
fn a_request_refused_whatever_its_inputs_is_not_split_chunk_by_chunk() {
    let provider = Provider::start();
    let dir = tempfile::tempdir().unwrap();
    let files = corpus(3);
    let path = configure(dir.path(), &provider, (256, 100_000), "");
    // One batch for every chunk.
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        config.replace("batch_linger_ms = 5", "batch_linger_ms = 300"),
    )
    .unwrap();
    provider.fail_always(Some(Fault::BadRequest));
    let (out, records, events) = sync(dir.path(), files.path(), API_KEY, &["--embed"]);
    assert_exit(&out, 3);
    assert!(records.is_empty());
    for f in 0..3 {
        let outcome = outcome(&events, &format!("doc-{f}.txt"));
        assert_eq!(outcome["error_code"], "EMBEDDING_REJECTED", "{outcome}");
    }
    let chunks: usize = provider
        .seen()
        .iter()
        .map(|s| s.inputs.len())
        .max()
        .unwrap();
    assert!(
        chunks > 16,
        "{chunks} chunks: too few to tell halving from one by one"
    );
    // Halving down to one chunk and trying each sibling once: about 2·log2(n) requests,
    // where splitting every half would send 2n - 1.
    let requests = provider.seen().len();
    let bound = 2 * (usize::BITS - chunks.leading_zeros()) as usize + 2;
    assert!(requests <= bound, "{requests} requests for {chunks} chunks");
}

//! The documented contract: every JSON example in docs/messages.md, and real output of the
//! binary, validates against the schemas `ingestd schema` prints; jobs in the docs parse.

mod common;

use common::{fixture, ingestd, lines, root};
use serde_json::Value;

fn schema(kind: &str) -> jsonschema::Validator {
    let out = ingestd(&root(), &["schema", kind]);
    assert_eq!(out.status.code(), Some(0));
    let schema: Value = serde_json::from_slice(&out.stdout).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

fn assert_valid(validator: &jsonschema::Validator, value: &Value) {
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{e} at {}", e.instance_path))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}\n{value:#}");
}

/// The ```json blocks of docs/messages.md.
fn doc_examples() -> Vec<Value> {
    let doc = std::fs::read_to_string(root().join("docs/messages.md")).unwrap();
    doc.split("```json")
        .skip(1)
        .map(|block| {
            let body = block.split("```").next().unwrap();
            serde_json::from_str(body).unwrap_or_else(|e| panic!("bad example ({e}): {body}"))
        })
        .collect()
}

#[test]
fn documented_examples_match_the_schemas() {
    let (job, chunk, event) = (schema("job"), schema("chunk"), schema("event"));
    let item = schema("item");
    let examples = doc_examples();
    assert!(examples.len() >= 7);
    for example in &examples {
        if example.get("type").is_some() {
            assert_valid(&job, example);
            let bytes = serde_json::to_vec(example).unwrap();
            ingestd::job::Job::from_json(
                &bytes,
                ingestd::config::ChunkingConfig::default().limits(),
            )
            .unwrap_or_else(|e| panic!("{e}: {example}"));
        } else if example.get("chunk_id").is_some() {
            assert_valid(&chunk, example);
        } else if example.get("item_type").is_some() {
            assert_valid(&item, example);
        } else {
            assert!(
                example.get("event").is_some(),
                "unclassified example {example}"
            );
            assert_valid(&event, example);
        }
    }
}

#[test]
fn schemas_reject_what_the_parser_rejects() {
    let job = schema("job");
    let mut example = doc_examples()
        .into_iter()
        .find(|e| e["type"] == "sync_files")
        .unwrap();
    example["chunk_sise"] = Value::from(10);
    assert!(
        !job.is_valid(&example),
        "unknown top-level field must be invalid"
    );
    let mut example = doc_examples()
        .into_iter()
        .find(|e| e["type"] == "sync_files")
        .unwrap();
    example["data_source"]["endpoint"] = Value::from("x");
    assert!(
        !job.is_valid(&example),
        "unknown nested field must be invalid"
    );
}

#[test]
fn real_output_matches_the_schemas() {
    let (chunk, event) = (schema("chunk"), schema("event"));
    let dir = tempfile::tempdir().unwrap();
    for target in ["text", "bad"] {
        let out = ingestd(
            dir.path(),
            &["sync", fixture(target).to_str().unwrap(), "--tag", "k=v"],
        );
        for record in lines(&out.stdout) {
            assert_valid(&chunk, &record);
        }
        let events = lines(&out.stderr);
        assert!(!events.is_empty());
        for e in &events {
            assert_valid(&event, e);
        }
    }
}

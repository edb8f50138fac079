//! Parsing and validation of job messages.

use super::*;

fn parse(json: &str) -> Result<Job, JobError> {
    Job::from_json(
        json.as_bytes(),
        crate::config::ChunkingConfig::default().limits(),
    )
}

const SYNC_FILES: &str = r#"{"schema_version": 1, "type": "sync_files", "job_id": "j1", "request_id": "req-42",
  "customer_id": "team@example.com",
  "data_source": {"id": "ds-7", "access_key": "DO00KEY", "access_key_secret": "s3cr3t-value",
                  "endpoint_url": "nyc3.digitaloceanspaces.com"},
  "ids": [{"bucket": "docs", "id": "handbook/intro.md"}, {"bucket": "media", "prefix": "2024/"}],
  "tags": {"team": "legal"}, "chunk_size": 1500, "chunk_overlap": 20,
  "skip_embedding_generation": true}"#;

#[test]
fn parses_the_design_example() {
    let job = parse(SYNC_FILES).unwrap();
    let JobKind::SyncFiles(sync) = &job.kind else {
        panic!("wrong kind: {job:?}")
    };
    assert_eq!(sync.ids.len(), 2);
    assert_eq!(sync.options.chunk_size, Some(1500));
    assert!(sync.options.skip_embedding_generation);
    assert_eq!(job.kind.name(), "sync_files");
}

#[test]
fn secrets_never_show_in_debug() {
    let job = parse(SYNC_FILES).unwrap();
    let shown = format!("{job:?}");
    assert!(!shown.contains("s3cr3t-value"), "{shown}");
}

#[test]
fn unknown_fields_are_rejected_with_their_path() {
    let typo = SYNC_FILES.replace("\"chunk_overlap\"", "\"chunk_overlapp\"");
    assert_eq!(
        parse(&typo).unwrap_err(),
        JobError::Invalid("unknown field `chunk_overlapp`".into())
    );
    let nested = SYNC_FILES.replace("\"endpoint_url\"", "\"endpoint\"");
    let err = parse(&nested).unwrap_err().to_string();
    assert!(err.contains("endpoint"), "{err}");
}

#[test]
fn bad_messages_are_classified() {
    assert_eq!(parse("not json").unwrap_err().code(), "MALFORMED_JOB");
    assert_eq!(parse("[1]").unwrap_err().code(), "MALFORMED_JOB");
    let v2 = SYNC_FILES.replace("\"schema_version\": 1", "\"schema_version\": 2");
    assert_eq!(parse(&v2).unwrap_err().code(), "UNSUPPORTED_SCHEMA_VERSION");
    let unknown_type = SYNC_FILES.replace("sync_files", "sync_everything");
    assert_eq!(parse(&unknown_type).unwrap_err().code(), "INVALID_JOB");
    let overlap = SYNC_FILES.replace("\"chunk_overlap\": 20", "\"chunk_overlap\": 1500");
    assert!(
        parse(&overlap)
            .unwrap_err()
            .to_string()
            .contains("chunk_overlap")
    );
    let huge = SYNC_FILES.replace("\"chunk_size\": 1500", "\"chunk_size\": 100000");
    assert!(parse(&huge).unwrap_err().to_string().contains("chunk_size"));
    // Checked against the default size too: overlap 1600 with the default chunk_size 1500.
    let default_size = SYNC_FILES.replace(
        "\"chunk_size\": 1500, \"chunk_overlap\": 20",
        "\"chunk_overlap\": 1600",
    );
    assert!(
        parse(&default_size)
            .unwrap_err()
            .to_string()
            .contains("chunk_overlap")
    );
    let no_ids = SYNC_FILES.replace(
        r#"[{"bucket": "docs", "id": "handbook/intro.md"}, {"bucket": "media", "prefix": "2024/"}]"#,
        "[]",
    );
    assert!(parse(&no_ids).unwrap_err().to_string().contains("ids"));
}

#[test]
fn every_job_type_parses() {
    let ds = r#""data_source": {"id": "ds-7"}"#;
    for body in [
        format!(r#""type": "sync_object", {ds}, "bucket": "b", "key": "k""#),
        format!(
            r#""type": "resync_file", {ds}, "bucket": "b", "key": "k", "chunk_size": 400, "force_embedding_generation": true"#
        ),
        format!(r#""type": "delete_files", {ds}, "ids": [{{"bucket": "b", "id": "k"}}]"#),
        format!(r#""type": "sync_items", {ds}"#),
        format!(r#""type": "connect_data_source", {ds}, "sync_items": true"#),
        r#""type": "update_users", "customer_ids": ["a"], "auto_sync_enabled_sources": "ALL""#
            .to_owned(),
        r#""type": "update_users", "customer_ids": ["a"], "auto_sync_enabled_sources": ["S3"]"#
            .to_owned(),
    ] {
        let json = format!(r#"{{"schema_version": 1, {body}}}"#);
        let job = parse(&json).unwrap_or_else(|err| panic!("{json}: {err}"));
        assert!(json.contains(job.kind.name()));
    }
    let too_many: Vec<String> = (0..=MAX_CUSTOMER_IDS)
        .map(|i| format!("\"c{i}\""))
        .collect();
    let json = format!(
        r#"{{"schema_version": 1, "type": "update_users", "customer_ids": [{}], "auto_sync_enabled_sources": "ALL"}}"#,
        too_many.join(",")
    );
    assert!(
        parse(&json)
            .unwrap_err()
            .to_string()
            .contains("customer_ids")
    );
    let delete_prefix = r#"{"schema_version": 1, "type": "delete_files", "data_source": {}, "ids": [{"bucket": "b", "prefix": "p/"}]}"#;
    assert!(parse(delete_prefix).is_err());
}

#[test]
fn an_encoded_record_is_the_json_the_outputs_wrote_of_it() {
    let pinned = include_str!("../../fixtures/pinned/documents-64-8.jsonl");
    let mut seen = 0;
    for (index, line) in pinned.lines().enumerate() {
        let mut record: ChunkRecord = serde_json::from_str(line).unwrap();
        // Every other one with a vector, as the embedding stage encodes it (a number JSON
        // cannot hold is written as null, as it always was).
        if index % 2 == 1 {
            record.embedding = Some(vec![0.25, -1.5e-7, f32::NAN]);
            record.embedding_model = Some("a-model".to_owned());
        }
        let json = serde_json::to_vec(&record).unwrap();
        let encoded = EncodedRecord::new(record.clone()).unwrap();
        assert_eq!(encoded.json(), json.as_slice());
        assert_eq!(encoded.line(), [json.as_slice(), b"\n"].concat());
        assert_eq!(encoded.chunk_id, record.chunk_id);
        assert_eq!(encoded.media_type, record.file.media_type);
        assert_eq!(encoded.clone().into_line(), encoded.line());
        seen += 1;
    }
    assert!(seen > 1, "{seen} records");
}

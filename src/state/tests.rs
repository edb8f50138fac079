//! The store on real SQLite files and a real PostgreSQL (127.0.0.1:5432, or
//! `INGESTD_TEST_POSTGRES`), each test in its own file or schema.

use base64::Engine as _;

use super::*;
use Verdict::{Changed, New, Unchanged};

fn key(byte: u8) -> String {
    base64::engine::general_purpose::STANDARD.encode([byte; KEY_BYTES])
}

/// The PostgreSQL server tests use (a database any user may create schemas in).
pub(crate) fn postgres_base() -> String {
    std::env::var("INGESTD_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A schema of its own on the test server, dropped on drop.
struct Schema {
    name: String,
}

impl Schema {
    async fn new() -> (Schema, String) {
        let name = format!(
            "t_{}",
            &blake3::hash(format!("{:?}{}", std::thread::current().id(), now_nanos()).as_bytes())
                .to_hex()[..12]
        );
        let (client, connection) = tokio_postgres::connect(&postgres_base(), tokio_postgres::NoTls)
            .await
            .unwrap_or_else(|err| panic!("PostgreSQL at {} is needed: {err}", postgres_base()));
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE SCHEMA {name}"))
            .await
            .unwrap();
        let sep = if postgres_base().contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!("{}{sep}options=-csearch_path%3D{name}", postgres_base());
        (Schema { name }, url)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&postgres_base(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA {name} CASCADE"))
                        .await;
                }
            });
        })
        .join();
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn put(key: &str, version: &str, ids: &[&str]) -> Change {
    Change::Put(Put {
        scope: "ds:1".to_owned(),
        bucket: "b".to_owned(),
        key: key.to_owned(),
        version: version.to_owned(),
        size: 1,
        fingerprint: "fp".to_owned(),
        chunk_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
    })
}

/// Objects, pages in byte order, prefixes, forgetting, and the diff over them.
async fn objects_round_trip(store: &Store) {
    // Byte order: '-' (0x2d) < '/' (0x2f) < 'B' < 'a' < 'é' (0xc3 …).
    let keys = ["a/b", "a-c", "B", "a", "é", "a/a", "z"];
    let changes = keys.iter().map(|k| put(k, "v1", &["x", "y"])).collect();
    store.apply(changes).await.unwrap();
    let all: Vec<String> = store
        .page("ds:1", "b", "", None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    let mut sorted: Vec<String> = keys.iter().map(|k| (*k).to_owned()).collect();
    sorted.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    assert_eq!(all, sorted);
    let under_a: Vec<String> = store
        .page("ds:1", "b", "a/", None)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(under_a, ["a/a", "a/b"]);
    let after: Vec<String> = store
        .page("ds:1", "b", "a", Some("a-c"))
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(after, ["a/a", "a/b"]);
    let (entry, ids) = store.object("ds:1", "b", "a/b").await.unwrap().unwrap();
    assert_eq!(
        (entry.version.as_str(), ids),
        ("v1", vec!["x".to_owned(), "y".to_owned()])
    );
    assert!(store.object("ds:2", "b", "a/b").await.unwrap().is_none());

    // A listing of everything but "a-c" and "é", with "z" changed. It begins after the
    // writes above: what was stored in the millisecond a listing began may be newer than it,
    // and is never reported deleted.
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    let mut diff = Diff::new(store.clone(), "ds:1", "b", "", None);
    let mut gone = Vec::new();
    let mut verdicts = Vec::new();
    for (key, version) in [
        ("B", "v1"),
        ("a", "v1"),
        ("a/a", "v1"),
        ("a/b", "v1"),
        ("new", "v1"),
        ("z", "v2"),
    ] {
        while let Some(entry) = diff.next_gone(Some(key)).await.unwrap() {
            gone.push(entry.key);
        }
        verdicts.push(diff.verdict(key, version, "fp").await.unwrap());
    }
    while let Some(entry) = diff.next_gone(None).await.unwrap() {
        gone.push(entry.key);
    }
    assert_eq!(gone, ["a-c", "é"]);
    assert_eq!(
        verdicts,
        [Unchanged, Unchanged, Unchanged, Unchanged, New, Changed]
    );

    // Another fingerprint changes everything.
    let mut diff = Diff::new(store.clone(), "ds:1", "b", "", None);
    assert_eq!(diff.verdict("B", "v1", "other").await.unwrap(), Changed);

    store
        .apply(vec![Change::Forget {
            scope: "ds:1".to_owned(),
            bucket: "b".to_owned(),
            key: "a-c".to_owned(),
        }])
        .await
        .unwrap();
    assert!(store.object("ds:1", "b", "a-c").await.unwrap().is_none());
}

/// Sealed secrets, the key check, and auto-sync leases.
async fn sources_and_schedule(store: &Store) {
    let source = StoredSource {
        id: "ds-1".to_owned(),
        customer_id: Some("c1".to_owned()),
        endpoint_url: Some("nyc3.digitaloceanspaces.com".to_owned()),
        access_key: "AK".to_owned(),
        secret: Secret::new("the-secret-value"),
    };
    store.put_source(&source).await.unwrap();
    assert_eq!(store.source("ds-1").await.unwrap().unwrap(), source);
    assert!(store.source("ds-2").await.unwrap().is_none());

    // Not due: no sync remembered, no auto-sync.
    assert!(store.claim_due("w1", 60, 10).await.unwrap().is_empty());
    store
        .apply(vec![Change::Synced {
            data_source_id: "ds-1".to_owned(),
            selectors: r#"[{"bucket":"docs","id":null,"prefix":"a/","start_after":"a/x"}]"#
                .to_owned(),
            options: r#"{"chunk_size":500}"#.to_owned(),
        }])
        .await
        .unwrap();
    let settings = |interval_secs| AutoSync {
        customer_ids: vec!["c1".to_owned()],
        enabled: true,
        interval_secs,
        default_interval_secs: 86_400,
    };
    store.put_customers(settings(None)).await.unwrap();
    assert!(
        store.claim_due("w1", 60, 10).await.unwrap().is_empty(),
        "synced just now"
    );
    // An interval of one second: due a second after the sync.
    store.put_customers(settings(Some(1))).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (a, b) = tokio::join!(store.claim_due("w1", 60, 10), store.claim_due("w2", 60, 10));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(
        a.len() + b.len(),
        1,
        "exactly one worker leases it: {a:?} {b:?}"
    );
    let owner = if a.is_empty() { "w2" } else { "w1" };
    let due = a.into_iter().chain(b).next().unwrap();
    assert_eq!(due.data_source_id, "ds-1");
    assert_eq!(due.customer_id.as_deref(), Some("c1"));
    // The start_after of a continuation is not remembered.
    assert_eq!(
        due.selectors,
        r#"[{"bucket":"docs","id":null,"prefix":"a/","start_after":null}]"#
    );
    assert!(
        store.claim_due("w3", 60, 10).await.unwrap().is_empty(),
        "leased"
    );
    store.scheduled("ds-1", "w3").await.unwrap();
    assert!(
        store.claim_due("w3", 60, 10).await.unwrap().is_empty(),
        "not the owner's release"
    );
    store.scheduled("ds-1", owner).await.unwrap();
    // Turned off: not due even once the interval has passed; on again: due.
    store
        .put_customers(AutoSync {
            enabled: false,
            ..settings(None)
        })
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(
        store.claim_due("w3", 60, 10).await.unwrap().is_empty(),
        "auto-sync off"
    );
    store.put_customers(settings(None)).await.unwrap();
    assert_eq!(
        store.claim_due("w3", 1, 10).await.unwrap().len(),
        1,
        "on again, and due"
    );
    assert!(
        store.claim_due("w4", 60, 10).await.unwrap().is_empty(),
        "leased to w3"
    );
    // w3 dies holding it: once its lease has run out, another worker takes it.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(
        store.claim_due("w4", 60, 10).await.unwrap().len(),
        1,
        "lease ran out"
    );
}

#[tokio::test]
async fn an_object_stored_after_the_listing_began_is_not_reported_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let store = Store::open(path.to_str().unwrap(), None).await.unwrap();
    store
        .apply(vec![put("a", "v1", &[]), put("c", "v1", &[])])
        .await
        .unwrap();
    // The listing's page was read before "b" was uploaded; another job then synced "b".
    let mut diff = Diff::new(store.clone(), "ds:1", "b", "", None);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store.apply(vec![put("b", "v1", &[])]).await.unwrap();
    let mut gone = Vec::new();
    for key in ["a", "c"] {
        while let Some(entry) = diff.next_gone(Some(key)).await.unwrap() {
            gone.push(entry.key);
        }
        assert_eq!(diff.verdict(key, "v1", "fp").await.unwrap(), Unchanged);
    }
    while let Some(entry) = diff.next_gone(None).await.unwrap() {
        gone.push(entry.key);
    }
    assert!(gone.is_empty(), "{gone:?}");
    // The next listing without it does report it.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let mut diff = Diff::new(store.clone(), "ds:1", "b", "", None);
    assert_eq!(diff.next_gone(Some("a")).await.unwrap(), None);
    diff.verdict("a", "v1", "fp").await.unwrap();
    let gone = diff.next_gone(Some("c")).await.unwrap().map(|e| e.key);
    assert_eq!(gone.as_deref(), Some("b"));
}

#[tokio::test]
async fn sqlite_keeps_objects_in_byte_order_and_diffs_a_listing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let store = Store::open(path.to_str().unwrap(), None).await.unwrap();
    objects_round_trip(&store).await;
    // WAL mode, and it opens again.
    assert!(dir.path().join("state.sqlite-wal").exists());
    drop(store);
    let again = Store::open(path.to_str().unwrap(), None).await.unwrap();
    assert!(again.object("ds:1", "b", "a/b").await.unwrap().is_some());
}

#[tokio::test]
async fn sqlite_seals_secrets_and_leases_due_syncs_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let location = path.to_str().unwrap();
    let store = Store::open(location, Some(&key(1))).await.unwrap();
    sources_and_schedule(&store).await;
    drop(store);
    let bytes = std::fs::read(&path).unwrap();
    let wal = std::fs::read(dir.path().join("state.sqlite-wal")).unwrap_or_default();
    for file in [&bytes, &wal] {
        assert!(
            !file.windows(16).any(|w| w == b"the-secret-value"),
            "secret in the clear"
        );
    }
    // Another key is refused at open; no key opens, but cannot read secrets.
    let err = Store::open(location, Some(&key(2))).await.unwrap_err();
    assert_eq!(err.code(), "STATE_KEY_WRONG", "{err}");
    let keyless = Store::open(location, None).await.unwrap();
    assert_eq!(
        keyless.source("ds-1").await.unwrap_err().code(),
        "STATE_KEY_MISSING"
    );
}

#[tokio::test]
async fn sqlite_refuses_files_that_are_not_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    let err = Store::open(garbage.to_str().unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "STATE_CORRUPT", "{err}");

    let foreign = dir.path().join("foreign.sqlite");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE invoices (id INTEGER)")
        .unwrap();
    let err = Store::open(foreign.to_str().unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "STATE_CORRUPT", "{err}");
    assert!(err.to_string().contains("something else"), "{err}");

    let newer = dir.path().join("newer.sqlite");
    drop(Store::open(newer.to_str().unwrap(), None).await.unwrap());
    rusqlite::Connection::open(&newer)
        .unwrap()
        .execute_batch("UPDATE ingestd_schema SET version = 99")
        .unwrap();
    let err = Store::open(newer.to_str().unwrap(), None)
        .await
        .unwrap_err();
    assert_eq!(err, StateError::NewerSchema { found: 99 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_objects_in_byte_order_and_diffs_a_listing() {
    let (_schema, url) = Schema::new().await;
    let store = Store::open(&url, None).await.unwrap();
    objects_round_trip(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_seals_secrets_and_leases_due_syncs_once() {
    let (_schema, url) = Schema::new().await;
    // Two replicas starting together migrate once.
    let one = key(1);
    let (a, b) = tokio::join!(Store::open(&url, Some(&one)), Store::open(&url, Some(&one)));
    let (store, _other) = (a.unwrap(), b.unwrap());
    sources_and_schedule(&store).await;
    let err = Store::open(&url, Some(&key(2))).await.unwrap_err();
    assert_eq!(err.code(), "STATE_KEY_WRONG", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_newer_schema_and_reports_an_unreachable_server() {
    let (schema, url) = Schema::new().await;
    drop(Store::open(&url, None).await.unwrap());
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute("UPDATE ingestd_schema SET version = 7")
        .await
        .unwrap();
    let err = Store::open(&url, None).await.unwrap_err();
    assert_eq!(err, StateError::NewerSchema { found: 7 });
    drop(schema);

    // TLS asked for: the test server offers none, or a certificate this machine does not
    // trust; either way no connection is made in the clear.
    let sep = if postgres_base().contains('?') {
        '&'
    } else {
        '?'
    };
    let err = Store::open(&format!("{}{sep}sslmode=require", postgres_base()), None)
        .await
        .unwrap_err();
    assert!(err.retryable() && err.to_string().contains("TLS"), "{err}");

    // Nothing listens on port 9 here: unavailable, so retried, and the URL's password is not told.
    let err = Store::open("postgres://u:pa55word@127.0.0.1:9/db", None)
        .await
        .unwrap_err();
    assert!(err.retryable(), "{err}");
    assert!(!err.to_string().contains("pa55word"), "{err}");
}

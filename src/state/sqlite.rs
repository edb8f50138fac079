//! The SQLite store: one file in WAL mode, one connection, its calls on the blocking pool.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use super::{AutoSync, Change, Due, Entry, SCHEMA_VERSION, StateError, StoredSource};
use crate::job::Secret;

/// Migrations, in order; `MIGRATIONS[n]` takes the schema from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE ingestd_meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
    CREATE TABLE ingestd_objects (
        scope TEXT NOT NULL, bucket TEXT NOT NULL, key TEXT NOT NULL,
        version TEXT NOT NULL, size INTEGER NOT NULL, fingerprint TEXT NOT NULL,
        chunk_ids TEXT NOT NULL, synced_at INTEGER NOT NULL,
        PRIMARY KEY (scope, bucket, key)
    ) WITHOUT ROWID;
    CREATE TABLE ingestd_data_sources (
        id TEXT PRIMARY KEY, customer_id TEXT, endpoint_url TEXT, access_key TEXT NOT NULL,
        secret BLOB NOT NULL, selectors TEXT, options TEXT, sync_base_at INTEGER,
        lease_until INTEGER, lease_owner TEXT, updated_at INTEGER NOT NULL
    );
    CREATE INDEX ingestd_data_sources_customer ON ingestd_data_sources (customer_id);
    CREATE TABLE ingestd_customers (
        customer_id TEXT PRIMARY KEY, auto_sync INTEGER NOT NULL,
        interval_secs INTEGER NOT NULL, updated_at INTEGER NOT NULL
    );
"];

/// One connection to the file; SQLite writes one at a time anyway.
pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens `path` (created when missing), checks it is ingestd's, and migrates it.
    pub fn open(path: &Path) -> Result<SqliteStore, StateError> {
        let mut c = Connection::open(path).map_err(|err| error(&err, path))?;
        c.busy_timeout(Duration::from_secs(10))
            .map_err(|err| error(&err, path))?;
        // A file that is not a database fails here, at the first read.
        c.pragma_update(None, "journal_mode", "WAL")
            .map_err(|err| error(&err, path))?;
        c.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|err| error(&err, path))?;
        migrate(&mut c).map_err(|err| match err {
            Failure::Sql(err) => error(&err, path),
            Failure::State(err) => err,
        })?;
        Ok(SqliteStore {
            connection: Arc::new(Mutex::new(c)),
        })
    }

    /// Runs `work` on the connection, off the async runtime.
    pub async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, Failure> + Send + 'static,
    ) -> Result<T, StateError> {
        let connection = Arc::clone(&self.connection);
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock cannot leave SQLite half-written: use it anyway.
            let mut c = connection
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            work(&mut c).map_err(|err| match err {
                Failure::Sql(err) => error(&err, Path::new("state")),
                Failure::State(err) => err,
            })
        })
        .await
        .map_err(|err| StateError::Unavailable(format!("a state query stopped: {err}")))?
    }
}

/// What a query can fail with.
pub enum Failure {
    /// SQLite's error.
    Sql(rusqlite::Error),
    /// Ours.
    State(StateError),
}

impl From<rusqlite::Error> for Failure {
    fn from(err: rusqlite::Error) -> Self {
        Failure::Sql(err)
    }
}

fn error(err: &rusqlite::Error, path: &Path) -> StateError {
    match err.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StateError::Corrupt(format!(
            "{} is not a SQLite database: {err}",
            path.display()
        )),
        _ => StateError::Unavailable(format!("{}: {err}", path.display())),
    }
}

fn migrate(c: &mut Connection) -> Result<(), Failure> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let ours: bool = tx.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'ingestd_schema'",
        [],
        |r| r.get(0),
    )?;
    let version: i64 = if ours {
        tx.query_row("SELECT version FROM ingestd_schema", [], |r| r.get(0))?
    } else {
        let others: i64 = tx.query_row(
            "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'",
            [],
            |r| r.get(0),
        )?;
        if others > 0 {
            return Err(Failure::State(StateError::Corrupt(
                "the file is a SQLite database of something else (it has no ingestd_schema \
                 table): give ingestd a file of its own"
                    .to_owned(),
            )));
        }
        tx.execute_batch(
            "CREATE TABLE ingestd_schema (version INTEGER NOT NULL);
             INSERT INTO ingestd_schema VALUES (0);",
        )?;
        0
    };
    if version > SCHEMA_VERSION {
        return Err(Failure::State(StateError::NewerSchema { found: version }));
    }
    for (to, sql) in (1_i64..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(version).unwrap_or(0))
    {
        tx.execute_batch(sql)?;
        tx.execute("UPDATE ingestd_schema SET version = ?1", [to])?;
    }
    tx.commit()?;
    Ok(())
}

pub fn meta(c: &mut Connection, name: &str) -> Result<Option<Vec<u8>>, Failure> {
    Ok(c.query_row(
        "SELECT value FROM ingestd_meta WHERE name = ?1",
        [name],
        |r| r.get(0),
    )
    .optional()?)
}

pub fn set_meta(c: &mut Connection, name: &str, value: &[u8]) -> Result<(), Failure> {
    c.execute(
        "INSERT INTO ingestd_meta (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        params![name, value],
    )?;
    Ok(())
}

pub fn object(
    c: &mut Connection,
    scope: &str,
    bucket: &str,
    key: &str,
) -> Result<Option<(Entry, Vec<String>)>, Failure> {
    let found = c
        .query_row(
            "SELECT version, fingerprint, chunk_ids, synced_at FROM ingestd_objects
             WHERE scope = ?1 AND bucket = ?2 AND key = ?3",
            params![scope, bucket, key],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            },
        )
        .optional()?;
    Ok(found.map(|(version, fingerprint, ids, synced_at)| {
        let entry = Entry {
            key: key.to_owned(),
            version,
            fingerprint,
            synced_at,
        };
        (entry, super::diff::split_ids(&ids))
    }))
}

pub fn page(
    c: &mut Connection,
    scope: &str,
    bucket: &str,
    from: &str,
    inclusive: bool,
) -> Result<Vec<Entry>, Failure> {
    let sql = if inclusive {
        "SELECT key, version, fingerprint, synced_at FROM ingestd_objects
         WHERE scope = ?1 AND bucket = ?2 AND key >= ?3 ORDER BY key LIMIT ?4"
    } else {
        "SELECT key, version, fingerprint, synced_at FROM ingestd_objects
         WHERE scope = ?1 AND bucket = ?2 AND key > ?3 ORDER BY key LIMIT ?4"
    };
    let mut statement = c.prepare_cached(sql)?;
    let rows = statement.query_map(params![scope, bucket, from, super::page_limit()], |r| {
        Ok(Entry {
            key: r.get(0)?,
            version: r.get(1)?,
            fingerprint: r.get(2)?,
            synced_at: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn apply(c: &mut Connection, changes: &[Change], now: i64) -> Result<(), Failure> {
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for change in changes {
        match change {
            Change::Put(put) => {
                tx.prepare_cached(
                    "INSERT INTO ingestd_objects
                     (scope, bucket, key, version, size, fingerprint, chunk_ids, synced_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                     ON CONFLICT (scope, bucket, key) DO UPDATE SET version = excluded.version,
                       size = excluded.size, fingerprint = excluded.fingerprint,
                       chunk_ids = excluded.chunk_ids, synced_at = excluded.synced_at",
                )?
                .execute(params![
                    put.scope,
                    put.bucket,
                    put.key,
                    put.version,
                    i64::try_from(put.size).unwrap_or(i64::MAX),
                    put.fingerprint,
                    put.chunk_ids.join(" "),
                    now
                ])?;
            }
            Change::Forget { scope, bucket, key } => {
                tx.prepare_cached(
                    "DELETE FROM ingestd_objects WHERE scope = ?1 AND bucket = ?2 AND key = ?3",
                )?
                .execute(params![scope, bucket, key])?;
            }
            Change::Synced {
                data_source_id,
                selectors,
                options,
            } => {
                let old: Option<Option<String>> = tx
                    .query_row(
                        "SELECT selectors FROM ingestd_data_sources WHERE id = ?1",
                        [data_source_id],
                        |r| r.get(0),
                    )
                    .optional()?;
                let merged = super::diff::merge_selectors(old.flatten().as_deref(), selectors);
                tx.execute(
                    "UPDATE ingestd_data_sources SET selectors = ?2, options = ?3,
                       sync_base_at = ?4 WHERE id = ?1",
                    params![data_source_id, merged, options, now / 1000],
                )?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

pub fn put_source(
    c: &mut Connection,
    source: &StoredSource,
    sealed: &[u8],
    now: i64,
) -> Result<(), Failure> {
    c.execute(
        "INSERT INTO ingestd_data_sources
         (id, customer_id, endpoint_url, access_key, secret, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (id) DO UPDATE SET customer_id = excluded.customer_id,
           endpoint_url = excluded.endpoint_url, access_key = excluded.access_key,
           secret = excluded.secret, updated_at = excluded.updated_at",
        params![
            source.id,
            source.customer_id,
            source.endpoint_url,
            source.access_key,
            sealed,
            now
        ],
    )?;
    Ok(())
}

pub fn source(c: &mut Connection, id: &str) -> Result<Option<(StoredSource, Vec<u8>)>, Failure> {
    Ok(c.query_row(
        "SELECT customer_id, endpoint_url, access_key, secret FROM ingestd_data_sources
         WHERE id = ?1",
        [id],
        |r| {
            let source = StoredSource {
                id: id.to_owned(),
                customer_id: r.get(0)?,
                endpoint_url: r.get(1)?,
                access_key: r.get(2)?,
                secret: Secret::new(String::new()),
            };
            Ok((source, r.get(3)?))
        },
    )
    .optional()?)
}

pub fn put_customers(c: &mut Connection, settings: &AutoSync, now: i64) -> Result<(), Failure> {
    let tx = c.transaction()?;
    for customer in &settings.customer_ids {
        tx.execute(
            "INSERT INTO ingestd_customers (customer_id, auto_sync, interval_secs, updated_at)
             VALUES (?1, ?2, COALESCE(?3, ?4), ?5)
             ON CONFLICT (customer_id) DO UPDATE SET auto_sync = excluded.auto_sync,
               interval_secs = COALESCE(?3, interval_secs), updated_at = excluded.updated_at",
            params![
                customer,
                settings.enabled,
                settings.interval_secs,
                settings.default_interval_secs,
                now
            ],
        )?;
    }
    tx.commit()?;
    Ok(())
}

pub fn claim_due(
    c: &mut Connection,
    owner: &str,
    now: i64,
    lease_secs: i64,
    limit: usize,
) -> Result<Vec<Due>, Failure> {
    let mut statement = c.prepare_cached(
        "UPDATE ingestd_data_sources SET lease_until = ?1 + ?2, lease_owner = ?3
         WHERE id IN (
           SELECT ds.id FROM ingestd_data_sources ds
           JOIN ingestd_customers c ON c.customer_id = ds.customer_id
           WHERE c.auto_sync AND ds.selectors IS NOT NULL
             AND COALESCE(ds.sync_base_at, 0) + c.interval_secs <= ?1
             AND (ds.lease_until IS NULL OR ds.lease_until < ?1)
           ORDER BY ds.id LIMIT ?4)
         RETURNING id, customer_id, selectors, options",
    )?;
    let rows = statement.query_map(
        params![
            now,
            lease_secs,
            owner,
            i64::try_from(limit).unwrap_or(i64::MAX)
        ],
        |r| {
            Ok(Due {
                data_source_id: r.get(0)?,
                customer_id: r.get(1)?,
                selectors: r.get(2)?,
                options: r
                    .get::<_, Option<String>>(3)?
                    .unwrap_or_else(|| "{}".to_owned()),
            })
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn scheduled(c: &mut Connection, id: &str, owner: &str, now: i64) -> Result<(), Failure> {
    c.execute(
        "UPDATE ingestd_data_sources SET sync_base_at = ?3, lease_until = NULL,
           lease_owner = NULL WHERE id = ?1 AND lease_owner = ?2",
        params![id, owner, now],
    )?;
    Ok(())
}

//! The PostgreSQL store, for several replicas: one pipelined connection per process, made
//! again when it is lost. Every write is one statement, so no transaction is held across calls.
//! TLS (rustls, as everywhere else in ingestd) when the URL says `sslmode=require`.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, NoTls, Socket};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{AutoSync, Change, Due, Entry, SCHEMA_VERSION, StateError, StoredSource};
use crate::job::Secret;

/// Migrations, in order; `MIGRATIONS[n]` takes the schema from version `n` to `n + 1`.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE ingestd_meta (name TEXT PRIMARY KEY, value BYTEA NOT NULL);
    CREATE TABLE ingestd_objects (
        scope TEXT NOT NULL, bucket TEXT COLLATE \"C\" NOT NULL, key TEXT COLLATE \"C\" NOT NULL,
        version TEXT NOT NULL, size BIGINT NOT NULL, fingerprint TEXT NOT NULL,
        chunk_ids TEXT NOT NULL, synced_at BIGINT NOT NULL,
        PRIMARY KEY (scope, bucket, key)
    );
    CREATE TABLE ingestd_data_sources (
        id TEXT PRIMARY KEY, customer_id TEXT, endpoint_url TEXT, access_key TEXT NOT NULL,
        secret BYTEA NOT NULL, selectors TEXT, options TEXT, sync_base_at BIGINT,
        lease_until BIGINT, lease_owner TEXT, updated_at BIGINT NOT NULL
    );
    CREATE INDEX ingestd_data_sources_customer ON ingestd_data_sources (customer_id);
    CREATE TABLE ingestd_customers (
        customer_id TEXT PRIMARY KEY, auto_sync BOOLEAN NOT NULL,
        interval_secs BIGINT NOT NULL, updated_at BIGINT NOT NULL
    );
"];

/// Serializes migrations of replicas starting together (`pg_advisory_xact_lock`).
const MIGRATION_LOCK: i64 = 0x0069_6e67_6573_7464;

/// Longest wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to the database, made again when lost.
pub struct PostgresStore {
    url: String,
    client: Mutex<Arc<Client>>,
}

fn unavailable(err: &tokio_postgres::Error) -> StateError {
    // Messages of tokio-postgres never carry the URL's password.
    match err.as_db_error() {
        Some(db) => StateError::Unavailable(format!("postgresql: {}", db.message())),
        None => StateError::Unavailable(format!(
            "postgresql: {err}{}",
            std::error::Error::source(err).map_or_else(String::new, |s| format!(": {s}"))
        )),
    }
}

/// Connects as the URL says: over TLS when it asks for `sslmode=require` (the server's
/// certificate verified against the system's roots, or `SSL_CERT_FILE`), else over plain TCP.
async fn connect(url: &str) -> Result<Client, StateError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|_| StateError::Corrupt("state.url is not a valid postgres:// URL".to_owned()))?;
    // A database that went away without closing the connection is noticed within a minute,
    // not after the system's two hours: statements then fail (and are retried) instead of
    // hanging.
    config
        .keepalives_idle(Duration::from_secs(30))
        .keepalives_interval(Duration::from_secs(10))
        .keepalives_retries(3)
        .tcp_user_timeout(Duration::from_mins(1));
    match config.get_ssl_mode() {
        SslMode::Disable | SslMode::Prefer => connect_with(&config, NoTls).await,
        _ => connect_with(&config, tls()?).await,
    }
}

async fn connect_with<T>(config: &tokio_postgres::Config, tls: T) -> Result<Client, StateError>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect(tls))
        .await
        .map_err(|_| StateError::Unavailable("postgresql: no connection in time".to_owned()))?
        .map_err(|err| unavailable(&err))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::warn!(error = %err, "state store connection lost");
        }
    });
    Ok(client)
}

/// TLS that verifies the server against the system's root certificates (`SSL_CERT_FILE`
/// names others, such as a managed database's own CA).
fn tls() -> Result<MakeRustlsConnect, StateError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        // A certificate rustls cannot use is one root fewer, not a failure.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(StateError::Unavailable(
            "postgresql: sslmode=require, and no root certificates were found to verify the \
             server with (set SSL_CERT_FILE)"
                .to_owned(),
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| StateError::Unavailable(format!("postgresql: TLS: {err}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

impl PostgresStore {
    /// Connects and migrates.
    pub async fn open(url: &str) -> Result<PostgresStore, StateError> {
        let mut client = connect(url).await?;
        migrate(&mut client).await.map_err(|err| match err {
            Failure::Sql(err) => unavailable(&err),
            Failure::State(err) => err,
        })?;
        Ok(PostgresStore {
            url: url.to_owned(),
            client: Mutex::new(Arc::new(client)),
        })
    }

    async fn client(&self) -> Result<Arc<Client>, StateError> {
        let mut client = self.client.lock().await;
        if client.is_closed() {
            *client = Arc::new(connect(&self.url).await?);
        }
        Ok(Arc::clone(&client))
    }

    pub async fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        let c = self.client().await?;
        let row = c
            .query_opt("SELECT value FROM ingestd_meta WHERE name = $1", &[&name])
            .await
            .map_err(|err| unavailable(&err))?;
        Ok(row.map(|r| r.get(0)))
    }

    pub async fn set_meta(&self, name: &str, value: &[u8]) -> Result<(), StateError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO ingestd_meta (name, value) VALUES ($1, $2)
             ON CONFLICT (name) DO NOTHING",
            &[&name, &value],
        )
        .await
        .map_err(|err| unavailable(&err))?;
        Ok(())
    }

    pub async fn object(
        &self,
        scope: &str,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(Entry, Vec<String>)>, StateError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT version, fingerprint, chunk_ids, synced_at FROM ingestd_objects
                 WHERE scope = $1 AND bucket = $2 AND key = $3",
                &[&scope, &bucket, &key],
            )
            .await
            .map_err(|err| unavailable(&err))?;
        Ok(row.map(|r| {
            let entry = Entry {
                key: key.to_owned(),
                version: r.get(0),
                fingerprint: r.get(1),
                synced_at: r.get(3),
            };
            (entry, super::diff::split_ids(r.get(2)))
        }))
    }

    pub async fn page(
        &self,
        scope: &str,
        bucket: &str,
        from: &str,
        inclusive: bool,
    ) -> Result<Vec<Entry>, StateError> {
        let sql = if inclusive {
            "SELECT key, version, fingerprint, synced_at FROM ingestd_objects
             WHERE scope = $1 AND bucket = $2 AND key >= $3 ORDER BY key LIMIT $4"
        } else {
            "SELECT key, version, fingerprint, synced_at FROM ingestd_objects
             WHERE scope = $1 AND bucket = $2 AND key > $3 ORDER BY key LIMIT $4"
        };
        let c = self.client().await?;
        let rows = c
            .query(sql, &[&scope, &bucket, &from, &super::page_limit()])
            .await
            .map_err(|err| unavailable(&err))?;
        Ok(rows
            .iter()
            .map(|r| Entry {
                key: r.get(0),
                version: r.get(1),
                fingerprint: r.get(2),
                synced_at: r.get(3),
            })
            .collect())
    }

    /// Puts in one statement, forgets in another, then each data source's sync.
    pub async fn apply(&self, changes: &[Change], now: i64) -> Result<(), StateError> {
        let c = self.client().await?;
        let sql = |err: tokio_postgres::Error| unavailable(&err);
        // One row per key: a statement may not update the same row twice.
        let mut puts = std::collections::BTreeMap::new();
        let mut forgets: [Vec<&str>; 3] = Default::default();
        for change in changes {
            match change {
                Change::Put(put) => {
                    puts.insert((&put.scope, &put.bucket, &put.key), put);
                }
                Change::Forget { scope, bucket, key } => {
                    forgets[0].push(scope);
                    forgets[1].push(bucket);
                    forgets[2].push(key);
                }
                Change::Synced { .. } => {}
            }
        }
        if !puts.is_empty() {
            let column = |f: fn(&super::Put) -> String| puts.values().map(|p| f(p)).collect();
            let (scopes, buckets, keys): (Vec<String>, Vec<String>, Vec<String>) = (
                column(|p| p.scope.clone()),
                column(|p| p.bucket.clone()),
                column(|p| p.key.clone()),
            );
            let versions: Vec<String> = column(|p| p.version.clone());
            let fingerprints: Vec<String> = column(|p| p.fingerprint.clone());
            let ids: Vec<String> = column(|p| p.chunk_ids.join(" "));
            let sizes: Vec<i64> = puts
                .values()
                .map(|p| i64::try_from(p.size).unwrap_or(i64::MAX))
                .collect();
            c.execute(
                "INSERT INTO ingestd_objects
                 (scope, bucket, key, version, size, fingerprint, chunk_ids, synced_at)
                 SELECT u.*, $8::BIGINT FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[],
                   $4::TEXT[], $5::BIGINT[], $6::TEXT[], $7::TEXT[]) AS u
                 ON CONFLICT (scope, bucket, key) DO UPDATE SET version = excluded.version,
                   size = excluded.size, fingerprint = excluded.fingerprint,
                   chunk_ids = excluded.chunk_ids, synced_at = excluded.synced_at",
                &[
                    &scopes,
                    &buckets,
                    &keys,
                    &versions,
                    &sizes,
                    &fingerprints,
                    &ids,
                    &now,
                ],
            )
            .await
            .map_err(sql)?;
        }
        if !forgets[0].is_empty() {
            c.execute(
                "DELETE FROM ingestd_objects o
                 USING UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[]) AS d(scope, bucket, key)
                 WHERE o.scope = d.scope AND o.bucket = d.bucket AND o.key = d.key",
                &[&forgets[0], &forgets[1], &forgets[2]],
            )
            .await
            .map_err(sql)?;
        }
        for change in changes {
            if let Change::Synced {
                data_source_id,
                selectors,
                options,
            } = change
            {
                let old = c
                    .query_opt(
                        "SELECT selectors FROM ingestd_data_sources WHERE id = $1",
                        &[data_source_id],
                    )
                    .await
                    .map_err(sql)?;
                let old: Option<String> = old.and_then(|r| r.get(0));
                let merged = super::diff::merge_selectors(old.as_deref(), selectors);
                c.execute(
                    "UPDATE ingestd_data_sources SET selectors = $2, options = $3,
                       sync_base_at = $4 WHERE id = $1",
                    &[data_source_id, &merged, options, &(now / 1000)],
                )
                .await
                .map_err(sql)?;
            }
        }
        Ok(())
    }

    pub async fn put_source(
        &self,
        source: &StoredSource,
        sealed: &[u8],
        now: i64,
    ) -> Result<(), StateError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO ingestd_data_sources
             (id, customer_id, endpoint_url, access_key, secret, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO UPDATE SET customer_id = excluded.customer_id,
               endpoint_url = excluded.endpoint_url, access_key = excluded.access_key,
               secret = excluded.secret, updated_at = excluded.updated_at",
            &[
                &source.id,
                &source.customer_id,
                &source.endpoint_url,
                &source.access_key,
                &sealed,
                &now,
            ],
        )
        .await
        .map_err(|err| unavailable(&err))?;
        Ok(())
    }

    pub async fn source(&self, id: &str) -> Result<Option<(StoredSource, Vec<u8>)>, StateError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT customer_id, endpoint_url, access_key, secret FROM ingestd_data_sources
                 WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(|err| unavailable(&err))?;
        Ok(row.map(|r| {
            let source = StoredSource {
                id: id.to_owned(),
                customer_id: r.get(0),
                endpoint_url: r.get(1),
                access_key: r.get(2),
                secret: Secret::new(String::new()),
            };
            (source, r.get(3))
        }))
    }

    pub async fn put_customers(&self, settings: &AutoSync, now: i64) -> Result<(), StateError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO ingestd_customers (customer_id, auto_sync, interval_secs, updated_at)
             SELECT id, $2::BOOLEAN, COALESCE($3::BIGINT, $4::BIGINT), $5::BIGINT
             FROM UNNEST($1::TEXT[]) AS id
             ON CONFLICT (customer_id) DO UPDATE SET auto_sync = excluded.auto_sync,
               interval_secs = COALESCE($3::BIGINT, ingestd_customers.interval_secs),
               updated_at = excluded.updated_at",
            &[
                &settings.customer_ids,
                &settings.enabled,
                &settings.interval_secs,
                &settings.default_interval_secs,
                &now,
            ],
        )
        .await
        .map_err(|err| unavailable(&err))?;
        Ok(())
    }

    pub async fn claim_due(
        &self,
        owner: &str,
        now: i64,
        lease_secs: i64,
        limit: usize,
    ) -> Result<Vec<Due>, StateError> {
        let c = self.client().await?;
        // Replicas skip rows another is leasing right now; the lease outlives a dead replica
        // by at most `lease_secs`.
        let rows = c
            .query(
                "UPDATE ingestd_data_sources d
                 SET lease_until = $1::BIGINT + $2::BIGINT, lease_owner = $3::TEXT
                 FROM (SELECT ds.id FROM ingestd_data_sources ds
                       JOIN ingestd_customers c ON c.customer_id = ds.customer_id
                       WHERE c.auto_sync AND ds.selectors IS NOT NULL
                         AND COALESCE(ds.sync_base_at, 0) + c.interval_secs <= $1
                         AND (ds.lease_until IS NULL OR ds.lease_until < $1)
                       ORDER BY ds.id LIMIT $4 FOR UPDATE OF ds SKIP LOCKED) due
                 WHERE d.id = due.id
                 RETURNING d.id, d.customer_id, d.selectors, d.options",
                &[
                    &now,
                    &lease_secs,
                    &owner,
                    &i64::try_from(limit).unwrap_or(i64::MAX),
                ],
            )
            .await
            .map_err(|err| unavailable(&err))?;
        Ok(rows
            .iter()
            .map(|r| Due {
                data_source_id: r.get(0),
                customer_id: r.get(1),
                selectors: r.get(2),
                options: r
                    .get::<_, Option<String>>(3)
                    .unwrap_or_else(|| "{}".to_owned()),
            })
            .collect())
    }

    pub async fn scheduled(&self, id: &str, owner: &str, now: i64) -> Result<(), StateError> {
        let c = self.client().await?;
        c.execute(
            "UPDATE ingestd_data_sources SET sync_base_at = $3, lease_until = NULL,
               lease_owner = NULL WHERE id = $1 AND lease_owner = $2",
            &[&id, &owner, &now],
        )
        .await
        .map_err(|err| unavailable(&err))?;
        Ok(())
    }
}

enum Failure {
    Sql(tokio_postgres::Error),
    State(StateError),
}

impl From<tokio_postgres::Error> for Failure {
    fn from(err: tokio_postgres::Error) -> Self {
        Failure::Sql(err)
    }
}

async fn migrate(client: &mut Client) -> Result<(), Failure> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS ingestd_schema (version BIGINT NOT NULL)")
        .await?;
    let found = tx
        .query_opt("SELECT version FROM ingestd_schema", &[])
        .await?;
    let version: i64 = if let Some(row) = found {
        row.get(0)
    } else {
        tx.execute("INSERT INTO ingestd_schema VALUES (0)", &[])
            .await?;
        0
    };
    if version > SCHEMA_VERSION {
        // Release the lock at once rather than when the connection is dropped.
        tx.rollback().await?;
        return Err(Failure::State(StateError::NewerSchema { found: version }));
    }
    for (to, sql) in (1_i64..)
        .zip(MIGRATIONS)
        .skip(usize::try_from(version).unwrap_or(0))
    {
        tx.batch_execute(sql).await?;
        tx.execute("UPDATE ingestd_schema SET version = $1", &[&to])
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

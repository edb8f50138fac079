//! What ingestd remembers between jobs: stored data sources (secrets sealed), what each synced
//! object looked like and which chunks it produced, and customers' auto-sync settings.
//!
//! Two backends behind one [`Store`]: a SQLite file (one replica, one-shot `--state`) and
//! PostgreSQL (several replicas). Both keep object keys in byte order, the order S3 lists them
//! in, so a listing is compared with the store by merging two sorted streams ([`Diff`]).

mod diff;
mod postgres;
mod seal;
mod sqlite;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::job::Secret;

pub use diff::{Diff, Tracker, Verdict, version_of};
pub use seal::{KEY_BYTES, Sealer};

/// The schema version this build writes; a store with a newer one is refused.
pub const SCHEMA_VERSION: i64 = 1;

/// The environment variable with the PostgreSQL URL, same as `INGESTD__STATE__URL`.
pub const STATE_URL_ENV: &str = "INGESTD_STATE_URL";

/// `[state]`: where state is kept. Without `path` or `url` there is none: every sync processes
/// every object, and jobs cannot name a stored data source.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// A SQLite file, created on first use.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A `postgres://` URL (it may hold a password, so it is kept as a secret).
    #[serde(default)]
    pub url: Option<Secret>,
    /// The variable holding the base64 key that seals data sources' secrets.
    #[serde(default = "default_key_env")]
    pub key_env: String,
    /// How often each worker looks for data sources due an automatic sync.
    #[serde(default = "default_auto_sync_poll_secs")]
    pub auto_sync_poll_secs: u64,
    /// How long a worker may hold a due data source while it enqueues its sync; a worker that
    /// dies holding one delays that sync by at most this.
    #[serde(default = "default_auto_sync_lease_secs")]
    pub auto_sync_lease_secs: u64,
    /// Hours between automatic syncs when `update_users` does not say (Carbon's 24).
    #[serde(default = "default_sync_interval_hours")]
    pub default_sync_interval_hours: u32,
}

/// `INGESTD_STATE_KEY`.
fn default_key_env() -> String {
    "INGESTD_STATE_KEY".to_owned()
}

/// A minute.
fn default_auto_sync_poll_secs() -> u64 {
    60
}

/// Five minutes.
fn default_auto_sync_lease_secs() -> u64 {
    300
}

/// Carbon's default: a day.
fn default_sync_interval_hours() -> u32 {
    24
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            path: None,
            url: None,
            key_env: default_key_env(),
            auto_sync_poll_secs: default_auto_sync_poll_secs(),
            auto_sync_lease_secs: default_auto_sync_lease_secs(),
            default_sync_interval_hours: default_sync_interval_hours(),
        }
    }
}

impl StateConfig {
    /// The first field that is wrong, and why.
    #[must_use]
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.path.is_some() && self.url.is_some() {
            let why = "give either state.path (SQLite) or state.url (PostgreSQL), not both";
            return Some(("state.path", why.to_owned()));
        }
        if self.auto_sync_poll_secs == 0
            || self.auto_sync_lease_secs == 0
            || self.default_sync_interval_hours == 0
        {
            let why = "auto_sync_poll_secs, auto_sync_lease_secs and default_sync_interval_hours \
                       must be at least 1";
            return Some(("state", why.to_owned()));
        }
        None
    }

    /// Where the store is: the URL when set, else the file; `None` without state.
    #[must_use]
    pub fn location(&self) -> Option<String> {
        match (&self.url, &self.path) {
            (Some(url), _) => Some(url.expose().to_owned()),
            (None, Some(path)) => Some(path.display().to_string()),
            (None, None) => None,
        }
    }
}

/// Why the store could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The store cannot be reached or is busy; trying again later may work.
    #[error("the state store is unavailable: {0}")]
    Unavailable(String),
    /// The file is not a SQLite database, or not ingestd's.
    #[error("the state store is not usable: {0}")]
    Corrupt(String),
    /// Written by a newer ingestd.
    #[error(
        "the state store has schema version {found}; this ingestd reads up to {SCHEMA_VERSION}: upgrade ingestd"
    )]
    NewerSchema {
        /// The store's version.
        found: i64,
    },
    /// Secrets must be sealed or opened and no key is set.
    #[error("{0} is not set: stored data sources need the key their secrets are sealed with")]
    KeyMissing(String),
    /// The key is malformed, or not the one the store was written with.
    #[error("{0}")]
    KeyWrong(String),
}

impl StateError {
    /// A stable code for events, dead-letter reasons and exit messages.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            StateError::Unavailable(_) => "STATE_UNAVAILABLE",
            StateError::Corrupt(_) => "STATE_CORRUPT",
            StateError::NewerSchema { .. } => "STATE_SCHEMA_NEWER",
            StateError::KeyMissing(_) => "STATE_KEY_MISSING",
            StateError::KeyWrong(_) => "STATE_KEY_WRONG",
        }
    }

    /// Whether trying again later may succeed.
    #[must_use]
    pub fn retryable(&self) -> bool {
        matches!(self, StateError::Unavailable(_))
    }
}

/// One stored object, as the diff needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// Its ETag (or, for local files, size and modification time) when it was synced.
    pub version: String,
    /// The options that shaped its records ([`crate::pipeline::Request::fingerprint`]).
    pub fingerprint: String,
    /// When it was stored, in milliseconds since the Unix epoch.
    pub synced_at: i64,
}

/// An object's state after it was synced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Put {
    /// The data source (see [`scope`]).
    pub scope: String,
    /// The bucket (local runs: the folder).
    pub bucket: String,
    /// The key.
    pub key: String,
    /// ETag, or size and modification time.
    pub version: String,
    /// Size in bytes.
    pub size: u64,
    /// The options that shaped its records.
    pub fingerprint: String,
    /// The chunk ids it produced, in order.
    pub chunk_ids: Vec<String>,
}

/// A write, applied only once the outputs it stands for are confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Remember an object as synced.
    Put(Put),
    /// Forget an object (deleted).
    Forget {
        /// The data source.
        scope: String,
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// Remember what a data source was synced with, for automatic syncs.
    Synced {
        /// The stored data source.
        data_source_id: String,
        /// The `ids` of the sync (JSON).
        selectors: String,
        /// Its options (JSON).
        options: String,
    },
}

/// A stored data source, its secret opened.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSource {
    /// Its id.
    pub id: String,
    /// The customer it belongs to.
    pub customer_id: Option<String>,
    /// Its endpoint (none: AWS).
    pub endpoint_url: Option<String>,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret: Secret,
}

/// A data source due an automatic sync, leased to this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// The data source.
    pub data_source_id: String,
    /// Its customer.
    pub customer_id: Option<String>,
    /// The selectors of its syncs (JSON array).
    pub selectors: String,
    /// The options of its last sync (JSON object).
    pub options: String,
}

/// Customers' auto-sync settings from one `update_users`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutoSync {
    /// The customers.
    pub customer_ids: Vec<String>,
    /// Whether their data sources sync automatically.
    pub enabled: bool,
    /// Seconds between syncs; `None` keeps each customer's (or the default for new ones).
    pub interval_secs: Option<i64>,
    /// The interval of customers seen for the first time without one.
    pub default_interval_secs: i64,
}

/// The state store.
#[derive(Clone)]
pub struct Store {
    backend: Arc<Backend>,
    sealer: Option<Arc<Sealer>>,
    ops: Arc<AtomicU64>,
}

enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PostgresStore),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match *self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        };
        f.debug_struct("Store")
            .field("backend", &kind)
            .finish_non_exhaustive()
    }
}

/// Objects read per query when a listing is compared with the store.
pub const PAGE: usize = 1000;

/// [`PAGE`] as SQL wants it.
fn page_limit() -> i64 {
    i64::try_from(PAGE).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens (creating and migrating) the store at `location`: a `postgres://` URL or a file
    /// path. `key` is the base64 sealing key, when set; a store that has sealed secrets with
    /// another key is refused.
    ///
    /// # Errors
    /// [`StateError`] saying what is wrong: unreachable, not a store, too new, wrong key.
    pub async fn open(location: &str, key: Option<&str>) -> Result<Store, StateError> {
        let sealer = key.map(Sealer::from_base64).transpose()?.map(Arc::new);
        let backend =
            if location.starts_with("postgres://") || location.starts_with("postgresql://") {
                Backend::Postgres(postgres::PostgresStore::open(location).await?)
            } else {
                let path = PathBuf::from(location);
                Backend::Sqlite(
                    tokio::task::spawn_blocking(move || sqlite::SqliteStore::open(&path))
                        .await
                        .map_err(|err| StateError::Unavailable(err.to_string()))??,
                )
            };
        let store = Store {
            backend: Arc::new(backend),
            sealer,
            ops: Arc::default(),
        };
        store.check_key().await?;
        Ok(store)
    }

    /// Store operations (queries and batches of writes) so far: for benchmarks and metrics.
    #[must_use]
    pub fn operations(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    fn count(&self) {
        self.ops.fetch_add(1, Ordering::Relaxed);
    }

    /// With a key: the store's key check opens with it (or is written, on first use).
    async fn check_key(&self) -> Result<(), StateError> {
        let Some(key) = &self.sealer else {
            return Ok(());
        };
        if let Some(check) = self.meta("key_check").await? {
            return key.open(&check, b"key-check").map(drop).ok_or_else(|| {
                StateError::KeyWrong(
                    "the sealing key is not the one this state store was written with".to_owned(),
                )
            });
        }
        let check = key.seal(b"ingestd-state-key-check", b"key-check")?;
        self.set_meta("key_check", &check).await?;
        // Another replica may have written its check first, with another key.
        let stored = self.meta("key_check").await?.unwrap_or_default();
        key.open(&stored, b"key-check").map(drop).ok_or_else(|| {
            StateError::KeyWrong(
                "the sealing key is not the one this state store was written with".to_owned(),
            )
        })
    }

    async fn meta(&self, name: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.count();
        match &*self.backend {
            Backend::Sqlite(db) => {
                let name = name.to_owned();
                db.call(move |c| sqlite::meta(c, &name)).await
            }
            Backend::Postgres(db) => db.meta(name).await,
        }
    }

    async fn set_meta(&self, name: &str, value: &[u8]) -> Result<(), StateError> {
        self.count();
        match &*self.backend {
            Backend::Sqlite(db) => {
                let (name, value) = (name.to_owned(), value.to_vec());
                db.call(move |c| sqlite::set_meta(c, &name, &value)).await
            }
            Backend::Postgres(db) => db.set_meta(name, value).await,
        }
    }

    /// The stored object, with the chunk ids it produced.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn object(
        &self,
        scope: &str,
        bucket: &str,
        key: &str,
    ) -> Result<Option<(Entry, Vec<String>)>, StateError> {
        self.count();
        match &*self.backend {
            Backend::Sqlite(db) => {
                let (scope, bucket, key) = (scope.to_owned(), bucket.to_owned(), key.to_owned());
                db.call(move |c| sqlite::object(c, &scope, &bucket, &key))
                    .await
            }
            Backend::Postgres(db) => db.object(scope, bucket, key).await,
        }
    }

    /// Up to [`PAGE`] stored objects of `bucket` whose keys start with `prefix` and come after
    /// `after`, in byte order.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn page(
        &self,
        scope: &str,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
    ) -> Result<Vec<Entry>, StateError> {
        self.count();
        // Keys are compared as bytes; a prefix's keys are those from it to its first
        // non-extension.
        let from = after.map_or(prefix, |after| after.max(prefix)).to_owned();
        let inclusive = after.is_none_or(|after| after < prefix);
        let mut page = match &*self.backend {
            Backend::Sqlite(db) => {
                let (scope, bucket) = (scope.to_owned(), bucket.to_owned());
                db.call(move |c| sqlite::page(c, &scope, &bucket, &from, inclusive))
                    .await?
            }
            Backend::Postgres(db) => db.page(scope, bucket, &from, inclusive).await?,
        };
        if let Some(end) = page.iter().position(|e| !e.key.starts_with(prefix)) {
            page.truncate(end);
        }
        Ok(page)
    }

    /// Applies `changes` (in one transaction where the backend has them).
    ///
    /// # Errors
    /// When the store cannot be written; nothing or some of the changes were applied, and
    /// applying them again is harmless.
    pub async fn apply(&self, changes: Vec<Change>) -> Result<(), StateError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.count();
        // Objects are stamped in milliseconds: a listing leaves alone what was synced after it
        // began (see `Diff`).
        let now = now_millis();
        match &*self.backend {
            Backend::Sqlite(db) => db.call(move |c| sqlite::apply(c, &changes, now)).await,
            Backend::Postgres(db) => db.apply(&changes, now).await,
        }
    }

    /// Stores (or replaces) a data source, its secret sealed.
    ///
    /// # Errors
    /// [`StateError::KeyMissing`] without a key; otherwise when the store cannot be written.
    pub async fn put_source(&self, source: &StoredSource) -> Result<(), StateError> {
        let key = self.sealer(&source.id)?;
        let sealed = key.seal(source.secret.expose().as_bytes(), source.id.as_bytes())?;
        self.count();
        let now = now_secs();
        match &*self.backend {
            Backend::Sqlite(db) => {
                let source = source.clone();
                db.call(move |c| sqlite::put_source(c, &source, &sealed, now))
                    .await
            }
            Backend::Postgres(db) => db.put_source(source, &sealed, now).await,
        }
    }

    /// The data source stored as `id`, its secret opened.
    ///
    /// # Errors
    /// [`StateError::KeyMissing`] or [`StateError::KeyWrong`] when its secret cannot be opened;
    /// otherwise when the store cannot be read.
    pub async fn source(&self, id: &str) -> Result<Option<StoredSource>, StateError> {
        self.count();
        let found = match &*self.backend {
            Backend::Sqlite(db) => {
                let id = id.to_owned();
                db.call(move |c| sqlite::source(c, &id)).await?
            }
            Backend::Postgres(db) => db.source(id).await?,
        };
        let Some((mut source, sealed)) = found else {
            return Ok(None);
        };
        let opened = self
            .sealer(id)?
            .open(&sealed, id.as_bytes())
            .ok_or_else(|| {
                StateError::KeyWrong(format!(
                    "the secret of data source {id} does not open with the sealing key"
                ))
            })?;
        let secret = String::from_utf8(opened).map_err(|_| {
            StateError::Corrupt(format!("the secret of data source {id} is not text"))
        })?;
        source.secret = Secret::new(secret);
        Ok(Some(source))
    }

    fn sealer(&self, id: &str) -> Result<&Sealer, StateError> {
        self.sealer.as_deref().ok_or_else(|| {
            StateError::KeyMissing(format!(
                "the sealing key (data source {id}; see state.key_env)"
            ))
        })
    }

    /// Stores customers' auto-sync settings.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn put_customers(&self, mut settings: AutoSync) -> Result<(), StateError> {
        // One row per customer, however often the job names it.
        settings.customer_ids.sort_unstable();
        settings.customer_ids.dedup();
        self.count();
        let now = now_secs();
        match &*self.backend {
            Backend::Sqlite(db) => {
                db.call(move |c| sqlite::put_customers(c, &settings, now))
                    .await
            }
            Backend::Postgres(db) => db.put_customers(&settings, now).await,
        }
    }

    /// Leases up to `limit` data sources due an automatic sync to `owner` for `lease_secs`.
    /// Another worker sees them again only when the lease runs out unreleased.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn claim_due(
        &self,
        owner: &str,
        lease_secs: i64,
        limit: usize,
    ) -> Result<Vec<Due>, StateError> {
        self.count();
        let now = now_secs();
        match &*self.backend {
            Backend::Sqlite(db) => {
                let owner = owner.to_owned();
                db.call(move |c| sqlite::claim_due(c, &owner, now, lease_secs, limit))
                    .await
            }
            Backend::Postgres(db) => db.claim_due(owner, now, lease_secs, limit).await,
        }
    }

    /// The sync of a leased data source was enqueued: the next is due an interval from now.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn scheduled(&self, data_source_id: &str, owner: &str) -> Result<(), StateError> {
        self.count();
        let now = now_secs();
        match &*self.backend {
            Backend::Sqlite(db) => {
                let (id, owner) = (data_source_id.to_owned(), owner.to_owned());
                db.call(move |c| sqlite::scheduled(c, &id, &owner, now))
                    .await
            }
            Backend::Postgres(db) => db.scheduled(data_source_id, owner, now).await,
        }
    }
}

/// The namespace objects of a data source are remembered under: its id, else the customer and
/// endpoint of inline credentials (bucket names are unique per endpoint).
#[must_use]
pub fn scope(
    data_source_id: Option<&str>,
    customer_id: Option<&str>,
    endpoint: Option<&str>,
) -> String {
    match data_source_id {
        Some(id) => format!("ds:{id}"),
        None => format!(
            "inline:{}@{}",
            customer_id.unwrap_or(""),
            endpoint.unwrap_or("aws")
        ),
    }
}

/// Seconds since the Unix epoch.
#[must_use]
pub fn now_secs() -> i64 {
    now_millis() / 1000
}

/// Milliseconds since the Unix epoch.
#[must_use]
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests;

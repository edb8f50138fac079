//! A listing compared with the store: both in key byte order, merged like two sorted files, so
//! neither is held in memory whole. And the bookkeeping of one object's chunk ids.

use std::collections::VecDeque;

use super::{Entry, PAGE, Put, StateError, Store};
use crate::job::{EventKind, ObjectSelector};
use crate::pipeline::Emitted;

/// What the store says of a listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Never synced (or forgotten).
    New,
    /// Synced before with another version or other options.
    Changed,
    /// Synced before, same version, same options: nothing to do.
    Unchanged,
}

/// The stored objects of one bucket and prefix, read page by page in key order alongside a
/// listing of the same bucket and prefix.
pub struct Diff {
    store: Store,
    scope: String,
    bucket: String,
    prefix: String,
    buffer: VecDeque<Entry>,
    /// The last key read from the store.
    read_to: Option<String>,
    exhausted: bool,
    /// The last key listed: S3 lists in byte order, and the merge relies on it.
    listed_to: Option<String>,
    /// False once the listing went backwards: no deletions are decided after that.
    ordered: bool,
    /// When the comparison began (ms): an object stored since then was synced by a job that saw
    /// it after this listing's pages were read, so its absence from them proves nothing.
    since: i64,
}

impl Diff {
    /// Compares a listing of `bucket` under `prefix` that starts after `after` with the store.
    #[must_use]
    pub fn new(store: Store, scope: &str, bucket: &str, prefix: &str, after: Option<&str>) -> Diff {
        Diff {
            store,
            scope: scope.to_owned(),
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            buffer: VecDeque::new(),
            read_to: after.map(str::to_owned),
            exhausted: false,
            listed_to: after.map(str::to_owned),
            ordered: true,
            since: super::now_millis(),
        }
    }

    async fn fill(&mut self) -> Result<(), StateError> {
        if self.buffer.is_empty() && !self.exhausted {
            let page = self
                .store
                .page(
                    &self.scope,
                    &self.bucket,
                    &self.prefix,
                    self.read_to.as_deref(),
                )
                .await?;
            self.exhausted = page.len() < PAGE;
            self.read_to = page.last().map(|e| e.key.clone()).or(self.read_to.take());
            self.buffer.extend(page);
        }
        Ok(())
    }

    /// The next stored object the listing passed over without seeing — deleted from the
    /// bucket — before `upto` (the key listed now), or anywhere after the last key listed when
    /// `upto` is `None` (the listing ended). Call it until it returns `None`.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn next_gone(&mut self, upto: Option<&str>) -> Result<Option<Entry>, StateError> {
        if let Some(key) = upto
            && self.ordered
            && self.listed_to.as_deref().is_some_and(|last| last >= key)
        {
            tracing::warn!(
                key,
                "the listing is not in key order: no deletions are decided"
            );
            self.ordered = false;
        }
        loop {
            if !self.ordered {
                return Ok(None);
            }
            self.fill().await?;
            let gone = match (self.buffer.front(), upto) {
                (None, _) => return Ok(None),
                (Some(front), Some(key)) if front.key.as_str() >= key => return Ok(None),
                (Some(_), _) => self.buffer.pop_front(),
            };
            match gone {
                Some(entry) if entry.synced_at >= self.since => {}
                gone => return Ok(gone),
            }
        }
    }

    /// Stops deciding deletions: the listing failed, and what it did not list may still exist.
    pub fn halt(&mut self) {
        self.ordered = false;
    }

    /// What the store says of the listed object `key` (call [`Diff::next_gone`] with it first).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn verdict(
        &mut self,
        key: &str,
        version: &str,
        fingerprint: &str,
    ) -> Result<Verdict, StateError> {
        let stored = if self.ordered {
            self.listed_to = Some(key.to_owned());
            self.fill().await?;
            match self.buffer.front() {
                Some(front) if front.key == key => self.buffer.pop_front(),
                _ => None,
            }
        } else {
            let found = self.store.object(&self.scope, &self.bucket, key).await?;
            found.map(|(entry, _)| entry)
        };
        Ok(match stored {
            None => Verdict::New,
            Some(e) if e.version == version && e.fingerprint == fingerprint => Verdict::Unchanged,
            Some(_) => Verdict::Changed,
        })
    }
}

/// One object's chunk ids: those it had, those it has now. Fed every item the pipeline emits
/// for the object; puts the ids it no longer has on its `FILE_READY`.
#[derive(Debug, Default)]
pub struct Tracker {
    old: Vec<String>,
    new: Vec<String>,
    ready: bool,
}

impl Tracker {
    /// For an object that had the chunk ids `old` (none if it is new).
    #[must_use]
    pub fn new(old: Vec<String>) -> Tracker {
        Tracker {
            old,
            new: Vec::new(),
            ready: false,
        }
    }

    /// Notes a record's id; completes `FILE_READY` with `removed_chunk_ids`.
    pub fn see(&mut self, item: &mut Emitted) {
        match item {
            Emitted::Record(record) => self.new.push(record.chunk_id.clone()),
            Emitted::Encoded(record) => self.new.push(record.chunk_id.clone()),
            Emitted::Event(event) => {
                if let EventKind::FileReady {
                    removed_chunk_ids, ..
                } = &mut event.kind
                {
                    let kept: std::collections::HashSet<&str> =
                        self.new.iter().map(String::as_str).collect();
                    *removed_chunk_ids = self
                        .old
                        .iter()
                        .filter(|id| !kept.contains(id.as_str()))
                        .cloned()
                        .collect();
                    self.ready = true;
                }
            }
        }
    }

    /// The object's new state, if it ended `FILE_READY` (failed and skipped files are tried
    /// again at the next sync).
    #[must_use]
    pub fn put(
        self,
        scope: &str,
        bucket: &str,
        key: &str,
        version: String,
        size: u64,
        fingerprint: &str,
    ) -> Option<Put> {
        self.ready.then(|| Put {
            scope: scope.to_owned(),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            version,
            size,
            fingerprint: fingerprint.to_owned(),
            chunk_ids: self.new,
        })
    }
}

/// Chunk ids as stored: separated by spaces.
pub(super) fn split_ids(ids: &str) -> Vec<String> {
    ids.split_ascii_whitespace().map(str::to_owned).collect()
}

/// Selectors a data source keeps for its automatic syncs.
const MAX_SELECTORS: usize = 100;

/// The selectors of `old` and `new` together (JSON arrays of [`ObjectSelector`]), each once,
/// the newest last, at most [`MAX_SELECTORS`]. Unreadable old selectors are replaced.
pub(super) fn merge_selectors(old: Option<&str>, new: &str) -> String {
    let parse = |text: &str| serde_json::from_str::<Vec<ObjectSelector>>(text).unwrap_or_default();
    let mut all: Vec<ObjectSelector> = old.map(parse).unwrap_or_default();
    for mut selector in parse(new) {
        selector.start_after = None;
        all.retain(|s| s != &selector);
        all.push(selector);
    }
    let excess = all.len().saturating_sub(MAX_SELECTORS);
    all.drain(..excess);
    serde_json::to_string(&all).unwrap_or_else(|_| "[]".to_owned())
}

/// The version the store compares: the ETag, else (local files) size and modification time.
#[must_use]
pub fn version_of(object: &crate::source::ObjectMeta) -> String {
    if let Some(etag) = &object.etag {
        return etag.clone();
    }
    let modified = object
        .last_modified
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{}:{modified}", object.size)
}

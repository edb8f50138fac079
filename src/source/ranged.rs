//! Random access to an S3 object for formats that seek (MP4 with its index at the end,
//! ZIP-based documents): reads and seeks are served by ranged GETs through a small cache of
//! blocks, so probing a 2 GB video reads a few MiB, and memory is bounded by the cache.
//!
//! The reader is blocking (`std::io::Read + Seek`, what decoders take) and runs on a blocking
//! thread; each missing block is fetched on the async runtime whose handle it holds.

use bytes::Bytes;
use std::collections::VecDeque;
use std::io::{self, Read, Seek, SeekFrom};

use super::s3::{S3Source, classify, is_precondition_failed, range_starts_at};
use crate::error::{ErrorCode, FileError};

/// Bytes fetched per request.
pub const BLOCK_BYTES: u64 = 1024 * 1024;
/// Blocks kept; the oldest is dropped first.
pub const CACHED_BLOCKS: usize = 8;

/// An S3 object as `Read + Seek`, pinned to one version.
pub struct RangedReader {
    runtime: tokio::runtime::Handle,
    /// The source the object is in: its client, bucket and request rate cap.
    source: S3Source,
    key: String,
    /// Every range is read from this version (`If-Match`).
    etag: Option<String>,
    size: u64,
    pos: u64,
    /// (offset, bytes), most recently used last.
    blocks: VecDeque<(u64, Bytes)>,
    /// Bytes received so far, for tests and metrics.
    fetched: u64,
}

impl std::fmt::Debug for RangedReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangedReader")
            .field("bucket", &self.source.bucket())
            .field("key", &self.key)
            .field("size", &self.size)
            .field("pos", &self.pos)
            .finish_non_exhaustive()
    }
}

impl RangedReader {
    pub(super) fn new(
        runtime: tokio::runtime::Handle,
        source: S3Source,
        key: String,
        etag: Option<String>,
        size: u64,
    ) -> Self {
        RangedReader {
            runtime,
            source,
            key,
            etag,
            size,
            pos: 0,
            blocks: VecDeque::with_capacity(CACHED_BLOCKS),
            fetched: 0,
        }
    }

    /// The object's size.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Bytes received from the store so far.
    #[must_use]
    pub fn bytes_fetched(&self) -> u64 {
        self.fetched
    }

    /// The block starting at `start`, from the cache or the store.
    fn block(&mut self, start: u64) -> Result<Bytes, FileError> {
        if let Some(at) = self.blocks.iter().position(|(offset, _)| *offset == start)
            && let Some(entry) = self.blocks.remove(at)
        {
            let bytes = entry.1.clone();
            self.blocks.push_back(entry);
            return Ok(bytes);
        }
        let end = (start + BLOCK_BYTES).min(self.size);
        let bytes = self.runtime.block_on(self.fetch(start, end))?;
        self.fetched += bytes.len() as u64;
        if self.blocks.len() == CACHED_BLOCKS {
            self.blocks.pop_front();
        }
        self.blocks.push_back((start, bytes.clone()));
        Ok(bytes)
    }

    async fn fetch(&self, start: u64, end: u64) -> Result<Bytes, FileError> {
        let mut request = self
            .source
            .client()
            .get_object()
            .bucket(self.source.bucket())
            .key(&self.key)
            .range(format!("bytes={start}-{}", end - 1));
        if let Some(etag) = &self.etag {
            request = request.if_match(etag);
        }
        self.source.limiter().acquire().await;
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) if is_precondition_failed(&err) => {
                return Err(FileError::transient(
                    ErrorCode::ObjectChanged,
                    format!(
                        "s3://{}/{} was replaced while being read; read it again",
                        self.source.bucket(),
                        self.key
                    ),
                ));
            }
            Err(err) => return Err(classify(&err, "reading", self.source.bucket(), &self.key)),
        };
        if !range_starts_at(response.content_range(), start) {
            return Err(FileError::permanent(
                ErrorCode::ReadFailed,
                format!(
                    "reading s3://{}/{}: the server ignored a range request",
                    self.source.bucket(),
                    self.key
                ),
            ));
        }
        let bytes = response
            .body
            .collect()
            .await
            .map_err(|err| {
                FileError::transient(
                    ErrorCode::SourceUnavailable,
                    format!("reading s3://{}/{}: {err}", self.source.bucket(), self.key),
                )
            })?
            .into_bytes();
        if bytes.len() as u64 != end - start {
            return Err(FileError::transient(
                ErrorCode::SourceUnavailable,
                format!(
                    "reading s3://{}/{}: asked for {} bytes at {start}, got {}",
                    self.source.bucket(),
                    self.key,
                    end - start,
                    bytes.len()
                ),
            ));
        }
        Ok(bytes)
    }
}

impl Read for RangedReader {
    /// Reads from the current position. Errors are [`FileError`]s inside `io::Error`
    /// (`io::Error::get_ref` + `downcast_ref` gives the code back).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let start = self.pos - self.pos % BLOCK_BYTES;
        let block = self.block(start).map_err(io::Error::other)?;
        let from = usize::try_from(self.pos - start).map_err(io::Error::other)?;
        let n = buf.len().min(block.len().saturating_sub(from));
        buf[..n].copy_from_slice(&block[from..from + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RangedReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = seek_target(self.pos, self.size, to)?;
        Ok(self.pos)
    }
}

/// Where `to` lands from `pos` in an object of `len` bytes (past the end is allowed, as for
/// files; before the start is an error).
///
/// # Errors
/// `InvalidInput` for a position before the start.
pub fn seek_target(pos: u64, len: u64, to: SeekFrom) -> io::Result<u64> {
    let target = match to {
        SeekFrom::Start(at) => Some(at),
        SeekFrom::End(delta) => len.checked_add_signed(delta),
        SeekFrom::Current(delta) => pos.checked_add_signed(delta),
    };
    target.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "seek before the start of the object",
        )
    })
}

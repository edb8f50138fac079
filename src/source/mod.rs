//! Where objects come from. A [`Source`] lists objects as a stream (never the whole listing in
//! memory) and opens one object's bytes as a stream: the local filesystem, and S3 or
//! DigitalOcean Spaces (with the endpoint policy and the request rate cap beside it).

mod access;
pub mod endpoint;
mod local;
pub mod ranged;
pub mod rate;
mod s3;

use std::future::Future;
use std::time::SystemTime;

use bytes::Bytes;
use futures::Stream;
use futures::stream::BoxStream;

use crate::error::FileError;

pub use access::{S3Access, S3Config};
pub use local::LocalSource;
pub use ranged::RangedReader;
pub use s3::{BucketMeta, S3ClientSettings, S3Clients, S3Credentials, S3Source};

/// An object's bytes as `Read + Seek`, for formats that seek (media containers). Use it on a
/// blocking thread.
pub trait RandomAccess: std::io::Read + std::io::Seek + Send + Sync {
    /// Bytes fetched from the store so far when it reads ahead (whole blocks of ranged
    /// reads); `None` when only what is read is fetched.
    fn bytes_fetched(&self) -> Option<u64> {
        None
    }
}

impl RandomAccess for std::fs::File {}

impl RandomAccess for std::io::Cursor<Vec<u8>> {}

impl RandomAccess for RangedReader {
    fn bytes_fetched(&self) -> Option<u64> {
        Some(RangedReader::bytes_fetched(self))
    }
}

/// One object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// The bucket; `None` for local files.
    pub bucket: Option<String>,
    /// The key, or the path relative to the folder synced.
    pub key: String,
    /// Size in bytes, as listed.
    pub size: u64,
    /// The version tag (S3 ETag); local files get a content hash once read.
    pub etag: Option<String>,
    /// Last modification.
    pub last_modified: Option<SystemTime>,
    /// Declared content type, with any `charset=` parameter.
    pub content_type: Option<String>,
}

/// An object opened for reading: the version being read and its bytes, as a stream.
pub struct Opened {
    /// The version being read (it can differ from the listing if the object was replaced).
    pub etag: Option<String>,
    /// The content type the source declares, with any `charset=`.
    pub content_type: Option<String>,
    /// The bytes in order. A source resumes broken transfers itself; an item that is an error
    /// ends the stream.
    pub body: BoxStream<'static, Result<Bytes, FileError>>,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("etag", &self.etag)
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}

/// One entry of a listing: an object, or a problem with one entry that does not stop the rest.
#[derive(Debug, Clone, PartialEq)]
pub enum Listed {
    /// An object to process.
    Object(ObjectMeta),
    /// An entry that cannot be processed (unreadable, a symlink loop, not a regular file).
    Problem {
        /// The bucket, for object stores.
        bucket: Option<String>,
        /// The key or relative path of the entry (the prefix, when a whole listing failed).
        key: String,
        /// What is wrong, classified.
        error: FileError,
        /// Whether to report it as skipped rather than failed.
        skip: bool,
    },
}

/// How records describe the source (`data_source_metadata`, `file_metadata`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// The local filesystem (one-shot mode).
    Local,
    /// Amazon S3 or another S3-compatible store.
    S3,
    /// DigitalOcean Spaces.
    Spaces,
}

impl SourceKind {
    /// `data_source_metadata` on records.
    #[must_use]
    pub fn data_source_metadata(self) -> &'static str {
        match self {
            SourceKind::Local => "Local",
            SourceKind::S3 => "S3",
            SourceKind::Spaces => "DigitalOcean Space",
        }
    }

    /// `file_metadata` on catalog items of buckets.
    #[must_use]
    pub fn bucket_metadata(self) -> &'static str {
        match self {
            SourceKind::Local => "Local Folder",
            SourceKind::S3 => "S3 Bucket",
            SourceKind::Spaces => "DigitalOcean Space Bucket",
        }
    }

    /// `file_metadata` on records of objects.
    #[must_use]
    pub fn file_metadata(self) -> &'static str {
        match self {
            SourceKind::Local => "Local File",
            SourceKind::S3 => "S3 File",
            SourceKind::Spaces => "DigitalOcean Space File",
        }
    }
}

/// The source of a one-shot run: a closed set, dispatched with `match`.
#[derive(Debug, Clone)]
pub enum AnySource {
    /// A local file or folder.
    Local(LocalSource),
    /// An S3 or Spaces bucket or prefix.
    S3(S3Source),
}

impl Source for AnySource {
    fn kind(&self) -> SourceKind {
        match self {
            AnySource::Local(s) => s.kind(),
            AnySource::S3(s) => s.kind(),
        }
    }

    fn list(&self) -> impl Stream<Item = Listed> + Send + 'static {
        match self {
            AnySource::Local(s) => futures::future::Either::Left(s.list()),
            AnySource::S3(s) => futures::future::Either::Right(s.list()),
        }
    }

    async fn open(&self, object: &ObjectMeta) -> Result<Opened, FileError> {
        match self {
            AnySource::Local(s) => s.open(object).await,
            AnySource::S3(s) => s.open(object).await,
        }
    }

    fn random_access(&self, object: &ObjectMeta) -> Result<Box<dyn RandomAccess>, FileError> {
        match self {
            AnySource::Local(s) => s.random_access(object),
            AnySource::S3(s) => Source::random_access(s, object),
        }
    }
}

/// A place objects are listed and read from.
pub trait Source: Send + Sync {
    /// How records describe this source.
    fn kind(&self) -> SourceKind;

    /// Every object under the source's root, in a stable order, as a stream.
    fn list(&self) -> impl Stream<Item = Listed> + Send + 'static;

    /// Opens `object` for reading. Memory stays bounded whatever the object's size: the caller
    /// decides how much of the stream to keep.
    ///
    /// # Errors
    /// `READ_FAILED` (or the source's own codes) when the object cannot be opened.
    fn open(&self, object: &ObjectMeta) -> impl Future<Output = Result<Opened, FileError>> + Send;

    /// `object` as `Read + Seek`, reading only what is asked for (ranged GETs in object
    /// stores), so a large video is described without being downloaded. Call it on the async
    /// runtime; read it on a blocking thread.
    ///
    /// # Errors
    /// When the object cannot be opened for reading.
    fn random_access(&self, object: &ObjectMeta) -> Result<Box<dyn RandomAccess>, FileError>;
}

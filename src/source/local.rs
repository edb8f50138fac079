//! The local filesystem: one file, or a folder walked recursively in name order.

use std::path::{Path, PathBuf};

use futures::{Stream, StreamExt};
use tokio::io::AsyncReadExt;

use bytes::{Bytes, BytesMut};

use super::{Listed, ObjectMeta, Opened, Source, SourceKind};
use crate::error::{ErrorCode, FileError};

/// Reads a file or a folder tree.
#[derive(Debug, Clone)]
pub struct LocalSource {
    /// The file or folder given on the command line.
    root: PathBuf,
    /// Follow symbolic links (walkdir detects loops).
    follow_symlinks: bool,
    /// The root is a file, not a folder (looked at once, not for every object).
    single_file: bool,
}

impl LocalSource {
    /// A source rooted at `root`.
    ///
    /// # Errors
    /// When `root` does not exist or cannot be inspected.
    pub fn new(root: impl Into<PathBuf>, follow_symlinks: bool) -> std::io::Result<Self> {
        let root = root.into();
        let single_file = std::fs::metadata(&root)?.is_file();
        Ok(LocalSource {
            root,
            follow_symlinks,
            single_file,
        })
    }

    fn path_of(&self, key: &str) -> PathBuf {
        if self.single_file {
            self.root.clone()
        } else {
            self.root.join(key)
        }
    }
}

impl Source for LocalSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Local
    }

    fn list(&self) -> impl Stream<Item = Listed> + Send + 'static {
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<Listed>>(LISTED_BATCHES);
        let (root, follow, single_file) =
            (self.root.clone(), self.follow_symlinks, self.single_file);
        // walkdir is blocking; it feeds a bounded channel so the listing is never all in memory.
        // Entries go in batches: one at a time, the walking thread slept and was woken for
        // every file taken once the channel was full (a sync of 3,168 files on two cores:
        // 6,941 context switches, 1,512 with batches). A batch goes when full, or at once when
        // the reader has taken all there was, so the first files of a slow folder do not wait
        // for a batch to fill.
        let name = root.display().to_string();
        let walker = tokio::task::spawn_blocking(move || {
            let mut batch = Vec::with_capacity(LISTED_BATCH);
            walk(&root, follow, single_file, |item| {
                batch.push(item);
                if batch.len() < LISTED_BATCH && tx.capacity() < tx.max_capacity() {
                    return true;
                }
                let full = std::mem::replace(&mut batch, Vec::with_capacity(LISTED_BATCH));
                tx.blocking_send(full).is_ok()
            });
            if !batch.is_empty() {
                let _ = tx.blocking_send(batch);
            }
        });
        let batches = futures::stream::unfold((rx, Some(walker)), move |(mut rx, walker)| {
            let name = name.clone();
            async move {
                if let Some(batch) = rx.recv().await {
                    return Some((batch, (rx, walker)));
                }
                // A walk that stopped early is not the end of the folder: say so.
                let stopped = walker?.await.err()?;
                let item = problem(name, &format!("the folder walk stopped: {stopped}"), false);
                Some((vec![item], (rx, None)))
            }
        });
        batches.flat_map(futures::stream::iter)
    }

    fn random_access(
        &self,
        object: &ObjectMeta,
    ) -> Result<Box<dyn super::RandomAccess>, FileError> {
        let file = std::fs::File::open(self.path_of(&object.key)).map_err(|err| {
            FileError::permanent(
                ErrorCode::ReadFailed,
                format!("reading {}: {err}", object.key),
            )
        })?;
        Ok(Box::new(file))
    }

    async fn open(&self, object: &ObjectMeta) -> Result<Opened, FileError> {
        let path = self.path_of(&object.key);
        let key = object.key.clone();
        let failed = move |err: std::io::Error| {
            FileError::permanent(ErrorCode::ReadFailed, format!("reading {key}: {err}"))
        };
        // Local files have no version tag: a hash of the content is one, stable across copies
        // and runs, and known before the first record leaves. A file of up to 1 MiB is hashed
        // and read in one pass: on this task when it was listed at most 64 KiB (most files;
        // each hand-off to a blocking thread costs more than such a read), else on a blocking
        // thread.
        let hashed = path.clone();
        let size = object.size;
        let read = if size <= READ_HERE {
            read_small(&hashed, size)
        } else {
            tokio::task::spawn_blocking(move || read_small(&hashed, size))
                .await
                .map_err(|err| std::io::Error::other(err.to_string()))
                .and_then(|read| read)
        };
        let (etag, whole) = read.map_err(&failed)?;
        if let Some(bytes) = whole {
            let body = futures::stream::iter([Ok(Bytes::from(bytes))]);
            return Ok(Opened {
                etag: Some(etag),
                content_type: None,
                body: Box::pin(body),
            });
        }
        let file = tokio::fs::File::open(&path).await.map_err(&failed)?;
        let body = futures::stream::try_unfold((file, failed), |(mut file, failed)| async move {
            let mut buffer = BytesMut::with_capacity(READ_BUFFER);
            match file.read_buf(&mut buffer).await {
                Ok(0) => Ok(None),
                Ok(_) => Ok(Some((buffer.freeze(), (file, failed)))),
                Err(err) => Err(failed(err)),
            }
        });
        Ok(Opened {
            etag: Some(etag),
            content_type: None,
            body: Box::pin(body),
        })
    }
}

/// Entries of a folder listed per batch, and batches read ahead at most.
const LISTED_BATCH: usize = 64;
const LISTED_BATCHES: usize = 4;

/// Bytes read from a local file at a time. Each read is a hand-off to a blocking thread and
/// back; at 1 MiB a 200 MB file makes 200 of them, not the 800 of 256 KiB reads (measured: the
/// two-core stream of such a file about a tenth faster, one core the same).
const READ_BUFFER: usize = 1024 * 1024;

/// Files up to this size (as listed) are read on the file's task: a blocking thread would cost
/// two wake-ups across cores, more than the read.
const READ_HERE: u64 = 64 * 1024;

/// Files up to this size are read whole, in the same pass as their hash.
const READ_WHOLE: usize = 1024 * 1024;

/// The content ETag of the file at `path`, and its bytes when it is at most [`READ_WHOLE`]
/// long (else it is hashed through, and read again as a stream). `listed` is its size as
/// listed: room for that is made at once, so a small file takes one read and one at its end
/// (growing from nothing took nine for a 7 KB file).
fn read_small(path: &Path, listed: u64) -> std::io::Result<(String, Option<Vec<u8>>)> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let room = usize::try_from(listed).map_or(READ_WHOLE, |n| n.min(READ_WHOLE)) + 1;
    let mut bytes = Vec::with_capacity(room);
    (&mut file)
        .take(READ_WHOLE as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() <= READ_WHOLE {
        return Ok((etag_of(&blake3::hash(&bytes)), Some(bytes)));
    }
    let mut hasher = blake3::Hasher::new();
    hasher.update(&bytes);
    hasher.update_reader(file)?;
    Ok((etag_of(&hasher.finalize()), None))
}

/// `"<first 128 bits of the BLAKE3 hash>"`, quoted like an S3 ETag.
fn etag_of(hash: &blake3::Hash) -> String {
    format!("\"{}\"", &hash.to_hex()[..32])
}

/// Walks `root` (a file when `single_file`), calling `emit` for each entry until it returns
/// false.
fn walk(root: &Path, follow: bool, single_file: bool, mut emit: impl FnMut(Listed) -> bool) {
    // Keys come out in byte order, as S3 lists them (the state store merges a listing with
    // what it remembers in that order): a folder sorts as its name and a `/`.
    let walker = walkdir::WalkDir::new(root)
        .follow_links(follow)
        .sort_by(|a, b| order_key(a).cmp(&order_key(b)));
    for entry in walker {
        let item = match entry {
            Ok(entry) if entry.file_type().is_dir() => continue,
            Ok(entry) => {
                let key = key_of(root, entry.path(), single_file);
                if entry.file_type().is_file() {
                    match entry.metadata() {
                        Ok(meta) => Listed::Object(ObjectMeta {
                            bucket: None,
                            key,
                            size: meta.len(),
                            etag: None,
                            last_modified: meta.modified().ok(),
                            content_type: None,
                        }),
                        Err(err) => problem(key, &format!("reading metadata: {err}"), false),
                    }
                } else if entry.file_type().is_symlink() {
                    // Only reached when links are not followed.
                    problem(
                        key,
                        "symbolic link not followed (sync.follow_symlinks = false)",
                        true,
                    )
                } else {
                    problem(key, "not a regular file (device, socket or pipe)", true)
                }
            }
            Err(err) => {
                let key = err.path().map_or_else(
                    || root.display().to_string(),
                    |p| key_of(root, p, single_file),
                );
                let message = if let Some(ancestor) = err.loop_ancestor() {
                    format!(
                        "symbolic link loop back to {}",
                        key_of(root, ancestor, single_file)
                    )
                } else {
                    err.io_error()
                        .map_or_else(|| err.to_string(), ToString::to_string)
                };
                problem(key, &message, false)
            }
        };
        if !emit(item) {
            return;
        }
    }
}

/// A folder entry's name as it sorts among the keys: a folder's with a `/` after it.
fn order_key(entry: &walkdir::DirEntry) -> Vec<u8> {
    let mut key = entry
        .file_name()
        .to_string_lossy()
        .into_owned()
        .into_bytes();
    if entry.file_type().is_dir() {
        key.push(b'/');
    }
    key
}

fn problem(key: String, message: &str, skip: bool) -> Listed {
    let code = if skip {
        ErrorCode::UnsupportedFormat
    } else {
        ErrorCode::ReadFailed
    };
    let error = FileError::permanent(code, format!("{key}: {message}"));
    Listed::Problem {
        bucket: None,
        key,
        error,
        skip,
    }
}

/// The key of `path`: relative to the folder synced, `/`-separated; a single file's own name.
fn key_of(root: &Path, path: &Path, single_file: bool) -> String {
    let relative = if single_file {
        path.file_name()
            .map_or_else(|| path.to_path_buf(), PathBuf::from)
    } else {
        path.strip_prefix(root)
            .map_or_else(|_| path.to_path_buf(), Path::to_path_buf)
    };
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that differ everywhere.
    fn bytes(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()[0]
            })
            .collect()
    }

    /// Listed in batches, a folder of many files still comes out whole, in byte order, and
    /// the walk stops when the reader does.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_folder_of_many_files_is_listed_whole_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut names: Vec<String> = (0..1000)
            .map(|i| format!("f{}.txt", i * 7919 % 1000))
            .collect();
        names.push("sub/inner.txt".to_owned());
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        for name in &names {
            std::fs::write(dir.path().join(name), name).unwrap();
        }
        names.sort();
        let source = LocalSource::new(dir.path(), false).unwrap();
        let listed: Vec<String> = source
            .list()
            .map(|listed| match listed {
                Listed::Object(object) => object.key,
                Listed::Problem { key, .. } => panic!("{key} was a problem"),
            })
            .collect()
            .await;
        assert_eq!(listed, names);
        let first: Vec<Listed> = source.list().take(3).collect().await;
        assert_eq!(first.len(), 3);
        // Read only once the walk of a folder that fits in the channel is over: its last
        // batch, not full, was held while the reader had not taken the ones before, and must
        // still come.
        let small = tempfile::tempdir().unwrap();
        for i in 0..100 {
            std::fs::write(small.path().join(format!("{i:03}")), "x").unwrap();
        }
        let listing = LocalSource::new(small.path(), false).unwrap().list();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert_eq!(listing.count().await, 100);
    }

    #[test]
    fn small_files_are_read_whole_and_large_ones_hashed_through() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        for len in [0, 7_000, READ_WHOLE, READ_WHOLE + 1, 3 * READ_WHOLE + 5] {
            let content = bytes(len);
            std::fs::write(&path, &content).unwrap();
            // Listed sizes that are wrong (the file changed since) only cost reads.
            for listed in [len as u64, 0, u64::MAX] {
                let (etag, whole) = read_small(&path, listed).unwrap();
                assert_eq!(etag, etag_of(&blake3::hash(&content)), "{len} bytes");
                assert_eq!(whole.is_some(), len <= READ_WHOLE);
                if let Some(whole) = whole {
                    assert!(whole == content);
                }
            }
        }
    }
}

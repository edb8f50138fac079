//! The local filesystem: one file, or a folder walked recursively in name order.

use std::path::{Path, PathBuf};

use futures::Stream;
use tokio::io::AsyncReadExt;

use super::{Fetched, Listed, ObjectMeta, Source, SourceKind};
use crate::error::{ErrorCode, FileError};

/// Reads a file or a folder tree.
#[derive(Debug, Clone)]
pub struct LocalSource {
    /// The file or folder given on the command line.
    root: PathBuf,
    /// Follow symbolic links (walkdir detects loops).
    follow_symlinks: bool,
}

impl LocalSource {
    /// A source rooted at `root`.
    ///
    /// # Errors
    /// When `root` does not exist or cannot be inspected.
    pub fn new(root: impl Into<PathBuf>, follow_symlinks: bool) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::metadata(&root)?;
        Ok(LocalSource {
            root,
            follow_symlinks,
        })
    }

    fn path_of(&self, key: &str) -> PathBuf {
        if self.root.is_file() {
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
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let (root, follow) = (self.root.clone(), self.follow_symlinks);
        // walkdir is blocking; it feeds a bounded channel so the listing is never all in memory.
        tokio::task::spawn_blocking(move || {
            walk(&root, follow, |item| tx.blocking_send(item).is_ok());
        });
        futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
    }

    async fn read(&self, object: &ObjectMeta, max_bytes: u64) -> Result<Fetched, FileError> {
        let path = self.path_of(&object.key);
        let failed = |err: std::io::Error| {
            FileError::permanent(
                ErrorCode::ReadFailed,
                format!("reading {}: {err}", object.key),
            )
        };
        let file = tokio::fs::File::open(&path).await.map_err(failed)?;
        let mut bytes =
            Vec::with_capacity(usize::try_from(object.size.min(max_bytes)).unwrap_or(0));
        file.take(max_bytes.saturating_add(1))
            .read_to_end(&mut bytes)
            .await
            .map_err(failed)?;
        if bytes.len() as u64 > max_bytes {
            return Err(FileError::permanent(
                ErrorCode::TooLarge,
                format!(
                    "{} grew past {max_bytes} bytes while being read",
                    object.key
                ),
            ));
        }
        Ok(Fetched {
            bytes,
            etag: None,
            content_type: None,
        })
    }
}

/// Walks `root`, calling `emit` for each entry until it returns false.
fn walk(root: &Path, follow: bool, mut emit: impl FnMut(Listed) -> bool) {
    let single_file = root.is_file();
    let walker = walkdir::WalkDir::new(root)
        .follow_links(follow)
        .sort_by_file_name();
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

//! An object served to one child process over HTTP on the loopback interface, so ffprobe can
//! seek it with ranged requests: a container whose index is at its end (a MOV), or whose length
//! is read from its last timestamps (an MPEG stream), is described from a few ranged reads of
//! the store instead of a pipe that cannot seek or a whole download.
//!
//! Only the one path with a random token is served, only to requests from this machine, and
//! only while the [`Served`] lives. The token is on the child's command line, which other
//! users of the machine may be able to read (`/proc/PID/cmdline`): where they could, mount
//! `/proc` with `hidepid=2` or run the worker in its own container.

use std::io::{self, Read, Seek, SeekFrom};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::{ErrorCode, FileError};

/// Bytes read from the object for one piece of a response.
const PIECE: u64 = 64 * 1024;

/// A connection's send buffer: what is read ahead of the child is at most about this, and a
/// piece.
const SEND_BUFFER: usize = 64 * 1024;

type Body = BoxBody<Bytes, io::Error>;

/// Something served: its bytes, shared by the requests of one child.
type Object = Arc<Mutex<Box<dyn ReadSeek>>>;

/// The first read of the object that failed.
type Failure = Arc<Mutex<Option<FileError>>>;

/// `Read + Seek` that can move to a blocking thread.
pub trait ReadSeek: Read + Seek + Send {}

impl<T: Read + Seek + Send> ReadSeek for T {}

/// An object being served; it stops being served when dropped.
#[derive(Debug)]
pub struct Served {
    url: String,
    server: JoinHandle<()>,
    failure: Failure,
}

impl Served {
    /// Serves `object` (`len` bytes) on a free port of 127.0.0.1.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start(object: impl ReadSeek + 'static, len: u64) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let port = listener.local_addr()?.port();
        let token = token();
        let url = format!("http://127.0.0.1:{port}/{token}");
        let object: Object = Arc::new(Mutex::new(Box::new(object)));
        let failure = Failure::default();
        let failed = Arc::clone(&failure);
        let path = format!("/{token}");
        // The connections belong to the server's task: when it is aborted, they end too.
        let server = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let accepted = tokio::select! {
                    accepted = listener.accept() => accepted,
                    Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                };
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors and the like, for a moment.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                };
                // What the socket holds beyond what the child took is read from the source
                // too (and counted in its budget): keep that small.
                let _ = socket2::SockRef::from(&stream).set_send_buffer_size(SEND_BUFFER);
                let (object, path) = (Arc::clone(&object), path.clone());
                let failed = Arc::clone(&failed);
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let answer = answer(&request, &path, &object, len, &failed);
                        async move { Ok::<_, io::Error>(answer) }
                    });
                    // A child that hangs up mid-response (it seeks elsewhere) is normal.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Served {
            url,
            server,
            failure,
        })
    }

    /// Where the object is served.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The first read of the object that failed (the child then saw a broken transfer): the
    /// source's own error when it gave one.
    #[must_use]
    pub fn failure(&self) -> Option<FileError> {
        self.failure.lock().ok()?.clone()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A token nobody else on the machine can guess: the path is the only thing served.
fn token() -> String {
    let mut seed = [0u8; 32];
    // Without the system's randomness, the time and the process still make it unique.
    if getrandom::fill(&mut seed).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        seed[..16].copy_from_slice(&now.to_le_bytes());
        seed[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    }
    blake3::hash(&seed).to_hex()[..32].to_owned()
}

/// The answer to one request: the range asked for (all of it without a `Range`), read from
/// `object` piece by piece as the child takes it.
fn answer(
    request: &Request<Incoming>,
    path: &str,
    object: &Object,
    len: u64,
    failed: &Failure,
) -> Response<Body> {
    let status = |status: StatusCode| {
        let mut response = Response::new(Empty::new().map_err(|never| match never {}).boxed());
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != path {
        return status(StatusCode::NOT_FOUND);
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    let range = request
        .headers()
        .get(RANGE)
        .and_then(|value| value.to_str().ok());
    let (start, end, partial) = match range.map(|r| parse_range(r, len)) {
        None => (0, len, false),
        Some(Some((start, end))) => (start, end, true),
        Some(None) => {
            let mut refused = status(StatusCode::RANGE_NOT_SATISFIABLE);
            if let Ok(value) = format!("bytes */{len}").parse() {
                refused.headers_mut().insert(CONTENT_RANGE, value);
            }
            return refused;
        }
    };
    let body = if request.method() == Method::HEAD {
        Empty::new().map_err(|never| match never {}).boxed()
    } else {
        pieces(Arc::clone(object), start, end, Arc::clone(failed))
    };
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    let mut set = |name, value: String| {
        if let Ok(value) = value.parse() {
            headers.insert(name, value);
        }
    };
    set(ACCEPT_RANGES, "bytes".to_owned());
    set(CONTENT_TYPE, "application/octet-stream".to_owned());
    set(CONTENT_LENGTH, (end - start).to_string());
    if partial {
        set(
            CONTENT_RANGE,
            format!("bytes {start}-{}/{len}", end.saturating_sub(1)),
        );
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    response
}

/// `bytes=START-`, `bytes=START-END` (inclusive) or `bytes=-SUFFIX` as `start..end`; `None`
/// when it cannot be satisfied.
fn parse_range(range: &str, len: u64) -> Option<(u64, u64)> {
    let spec = range.trim().strip_prefix("bytes=")?;
    // One range only: ffmpeg never asks for more.
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    let (start, end) = if first.is_empty() {
        let suffix: u64 = last.parse().ok()?;
        (len.saturating_sub(suffix), len)
    } else {
        let start: u64 = first.parse().ok()?;
        let end = if last.is_empty() {
            len
        } else {
            last.parse::<u64>().ok()?.saturating_add(1).min(len)
        };
        (start, end)
    };
    (start < end).then_some((start, end))
}

/// `start..end` of `object`, read on blocking threads a piece at a time as it is sent; a read
/// that fails is kept in `failed`.
fn pieces(object: Object, start: u64, end: u64, failed: Failure) -> Body {
    let stream = futures::stream::unfold(start, move |at| {
        let (object, failed) = (Arc::clone(&object), Arc::clone(&failed));
        async move {
            if at >= end {
                return None;
            }
            let want = usize::try_from((end - at).min(PIECE)).unwrap_or(0);
            let read = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
                let mut object = object
                    .lock()
                    .map_err(|_| io::Error::other("a read of the object crashed"))?;
                object.seek(SeekFrom::Start(at))?;
                let mut piece = vec![0; want];
                let mut filled = 0;
                while filled < want {
                    match object.read(&mut piece[filled..])? {
                        0 => break,
                        n => filled += n,
                    }
                }
                piece.truncate(filled);
                Ok(piece)
            })
            .await
            .unwrap_or_else(|err| Err(io::Error::other(err.to_string())));
            match read {
                Ok(piece) if !piece.is_empty() => {
                    let next = at + piece.len() as u64;
                    Some((Ok(Frame::data(Bytes::from(piece))), next))
                }
                // The object ended early, or a read failed: the response is cut short and the
                // child sees a broken transfer.
                Ok(_) => {
                    let err = io::Error::other(format!("the object ended before byte {end}"));
                    keep(&failed, &err);
                    Some((Err(err), end))
                }
                Err(err) => {
                    keep(&failed, &err);
                    Some((Err(err), end))
                }
            }
        }
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// Keeps the first failed read: the source's error when it is one, else `READ_FAILED`.
fn keep(failed: &Failure, err: &io::Error) {
    let Ok(mut failed) = failed.lock() else {
        return;
    };
    if failed.is_none() {
        let source = err.get_ref().and_then(|e| e.downcast_ref::<FileError>());
        *failed = Some(source.cloned().unwrap_or_else(|| {
            FileError::permanent(ErrorCode::ReadFailed, format!("reading the object: {err}"))
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_http_means_them() {
        assert_eq!(parse_range("bytes=0-", 10), Some((0, 10)));
        assert_eq!(parse_range("bytes=2-4", 10), Some((2, 5)));
        assert_eq!(parse_range("bytes=8-99", 10), Some((8, 10)));
        assert_eq!(parse_range("bytes=-3", 10), Some((7, 10)));
        assert_eq!(parse_range("bytes=10-", 10), None);
        assert_eq!(parse_range("bytes=5-2", 10), None);
        assert_eq!(parse_range("items=0-1", 10), None);
    }
}

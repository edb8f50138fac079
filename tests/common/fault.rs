//! A fault proxy in front of a server on loopback. It forwards TCP connections and, on
//! command, injects the faults object stores and networks produce:
//! * connections closed unanswered;
//! * `503 SlowDown` answers, as S3 and Spaces throttle;
//! * responses cut off midway by a TCP reset;
//! * every open connection reset at once.
//!
//! Requests are read up to their end (head, and a body of `Content-Length`), so a fault lands
//! between requests on a kept-alive connection as well as on a new one.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// How often a forwarding thread looks up from a read to see whether it must stop.
const TICK: Duration = Duration::from_millis(100);

const SLOW_DOWN_BODY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";

/// Faults injected so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Connections closed before a byte was read.
    pub dropped: u64,
    /// Requests answered `503 SlowDown`.
    pub slow_downs: u64,
    /// Connections reset (responses cut midway, and every open one at [`Proxy::reset_all`]).
    pub resets: u64,
}

#[derive(Default)]
struct State {
    drop_next: AtomicUsize,
    slow_down_next: AtomicUsize,
    slow_down: AtomicBool,
    reset_every: AtomicUsize,
    generation: AtomicUsize,
    requests: AtomicUsize,
    dropped: AtomicU64,
    slow_downs: AtomicU64,
    resets: AtomicU64,
}

/// A running proxy.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Proxy {
    /// Starts forwarding a loopback port to `upstream`, from threads of its own.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if take_one(&shared.drop_next) {
                    shared.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let state = Arc::clone(&shared);
                std::thread::spawn(move || forward(&state, client, server));
            }
        });
        Proxy { addr, state }
    }

    /// `http://` and the address.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes the next `n` connections unanswered (`usize::MAX`: every one).
    pub fn drop_next(&self, n: usize) {
        self.state.drop_next.store(n, Ordering::SeqCst);
    }

    /// Answers the next `n` requests `503 SlowDown` (`usize::MAX`: every one).
    pub fn slow_down_next(&self, n: usize) {
        self.state.slow_down_next.store(n, Ordering::SeqCst);
    }

    /// Answers every request `503 SlowDown` while `on`: a burst of throttling.
    pub fn slow_down(&self, on: bool) {
        self.state.slow_down.store(on, Ordering::SeqCst);
    }

    /// Cuts the response to one request in `every` with a reset after part of it was sent;
    /// 0 stops.
    pub fn reset_share(&self, every: usize) {
        self.state.reset_every.store(every, Ordering::SeqCst);
    }

    /// Resets every open connection.
    pub fn reset_all(&self) {
        self.state.generation.fetch_add(1, Ordering::SeqCst);
    }

    pub fn faults(&self) -> Faults {
        Faults {
            dropped: self.state.dropped.load(Ordering::Relaxed),
            slow_downs: self.state.slow_downs.load(Ordering::Relaxed),
            resets: self.state.resets.load(Ordering::Relaxed),
        }
    }
}

/// Takes one from a countdown; false once it is at 0.
fn take_one(count: &AtomicUsize) -> bool {
    count
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
            0 => None,
            usize::MAX => Some(usize::MAX),
            n => Some(n - 1),
        })
        .is_ok()
}

/// One forwarded connection, seen by its two threads.
struct Link {
    client: TcpStream,
    server: TcpStream,
    born: usize,
    /// The response now on its way is to be cut.
    doomed: AtomicBool,
    /// The connection is over; the other thread stops.
    over: AtomicBool,
}

impl Link {
    fn live(&self, state: &State) -> bool {
        !self.over.load(Ordering::SeqCst) && state.generation.load(Ordering::SeqCst) == self.born
    }

    /// Ends the connection with a reset for the client (once, counted).
    fn reset(&self, state: &State) {
        if !self.over.swap(true, Ordering::SeqCst) {
            state.resets.fetch_add(1, Ordering::Relaxed);
            // With a zero linger the last close of the socket sends RST, not FIN.
            let _ = socket2::SockRef::from(&self.client).set_linger(Some(Duration::ZERO));
            let _ = self.server.shutdown(Shutdown::Both);
        }
    }

    /// Ends the connection quietly.
    fn close(&self) {
        self.over.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }
}

fn forward(state: &Arc<State>, client: TcpStream, server: TcpStream) {
    let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    for stream in [&client, &server] {
        let _ = stream.set_read_timeout(Some(TICK));
        let _ = stream.set_nodelay(true);
    }
    let link = Arc::new(Link {
        client,
        server,
        born: state.generation.load(Ordering::SeqCst),
        doomed: AtomicBool::new(false),
        over: AtomicBool::new(false),
    });
    let back = {
        let (state, link) = (Arc::clone(state), Arc::clone(&link));
        std::thread::spawn(move || responses(&state, &link, &server2, client2))
    };
    requests(state, &link);
    let _ = back.join();
}

/// Reads `from` into `buf`: `Some(0)` at its end, `None` once the link is over or reset.
fn read_live(state: &State, link: &Link, mut from: &TcpStream, buf: &mut [u8]) -> Option<usize> {
    loop {
        if !link.live(state) {
            if !link.over.load(Ordering::SeqCst) {
                link.reset(state);
            }
            return None;
        }
        match from.read(buf) {
            Ok(n) => return Some(n),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return Some(0),
        }
    }
}

/// Client to server, one request at a time: each whole head is where a fault may land.
fn requests(state: &State, link: &Link) {
    let mut buf = vec![0u8; 64 * 1024];
    // Bytes from the client not forwarded yet, and how much of a body is still to come.
    let mut pending: Vec<u8> = Vec::new();
    let mut body_left = 0usize;
    loop {
        let Some(n) = read_live(state, link, &link.client, &mut buf) else {
            return;
        };
        if n == 0 {
            let _ = link.server.shutdown(Shutdown::Write);
            return;
        }
        pending.extend_from_slice(&buf[..n]);
        loop {
            if body_left > 0 {
                let take = body_left.min(pending.len());
                if (&link.server).write_all(&pending[..take]).is_err() {
                    return link.close();
                }
                pending.drain(..take);
                body_left -= take;
                if pending.is_empty() {
                    break;
                }
            }
            let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                break;
            };
            let head: Vec<u8> = pending.drain(..end + 4).collect();
            if state.slow_down.load(Ordering::SeqCst) || take_one(&state.slow_down_next) {
                state.slow_downs.fetch_add(1, Ordering::Relaxed);
                let _ = write!(
                    &link.client,
                    "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{SLOW_DOWN_BODY}",
                    SLOW_DOWN_BODY.len()
                );
                return link.close();
            }
            let every = state.reset_every.load(Ordering::SeqCst);
            let nth = state.requests.fetch_add(1, Ordering::SeqCst) + 1;
            if every > 0 && nth.is_multiple_of(every) {
                link.doomed.store(true, Ordering::SeqCst);
            }
            body_left = content_length(&head);
            if (&link.server).write_all(&head).is_err() {
                return link.close();
            }
        }
    }
}

/// Server to client; a doomed response is cut after half of its first read.
fn responses(state: &State, link: &Link, server: &TcpStream, mut client: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let Some(n) = read_live(state, link, server, &mut buf) else {
            return;
        };
        if n == 0 {
            let _ = client.shutdown(Shutdown::Write);
            return;
        }
        if link.doomed.swap(false, Ordering::SeqCst) {
            let _ = client.write_all(&buf[..n / 2]);
            return link.reset(state);
        }
        if client.write_all(&buf[..n]).is_err() {
            return link.close();
        }
    }
}

/// The `Content-Length` of a request head, 0 when it has none.
fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .unwrap_or(0)
}

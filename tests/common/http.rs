//! A small HTTP server for the third-party APIs the tests stand in for (embedding and
//! transcription providers): each connection served by a handler on a runtime of its own.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;

/// Serves `handler` on a loopback port, on a thread of its own; returns the address.
pub fn serve<H>(handler: H) -> SocketAddr
where
    H: Fn(Request<Incoming>) -> BoxFuture<'static, Response<Full<Bytes>>> + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("the server's runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("a loopback port");
            tx.send(listener.local_addr().expect("its address"))
                .expect("reporting the address");
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let _ = socket.set_nodelay(true);
                let handler = Arc::clone(&handler);
                let service = hyper::service::service_fn(move |request| {
                    let reply = handler(request);
                    async move { Ok::<_, Infallible>(reply.await) }
                });
                let connection = http
                    .serve_connection(TokioIo::new(socket), service)
                    .into_owned();
                tokio::spawn(connection);
            }
        });
    });
    rx.recv().expect("the server's address")
}

/// A lock that a panicking test thread does not poison for the others.
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

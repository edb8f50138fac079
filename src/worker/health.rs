//! `/healthz` (the process answers), `/readyz` (connected to the broker and consuming) and
//! `/metrics`, served by hyper over HTTP/1.1 for probes and scrapers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use super::metrics::{self, Metrics};

/// Time a client gets to send its request and read the answer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors and the like: try again shortly.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = answer(&request, &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            // One request a connection: probes and scrapers open one each time.
            let connection = hyper::server::conn::http1::Builder::new()
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
        });
    }
}

/// The answer to one request.
fn answer<B>(request: &Request<B>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(content_type),
        );
        response
    };
    let plain = "text/plain; charset=utf-8";
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            plain,
            "method not allowed\n".to_owned(),
        );
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, plain, "ok\n".to_owned()),
        "/readyz" if metrics.is_ready() => text(StatusCode::OK, plain, "ready\n".to_owned()),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            plain,
            "not connected to the broker\n".to_owned(),
        ),
        "/metrics" => text(StatusCode::OK, metrics::CONTENT_TYPE, metrics.render()),
        _ => text(StatusCode::NOT_FOUND, plain, "not found\n".to_owned()),
    }
}

//! The axum gateway of the `axum_gateway` example: `POST /forward` sends the HTTP
//! body to an anet backend and answers with the backend's response; with
//! [`with_metrics`], `GET /metrics` serves the gateway's HTTP metrics and anet's
//! from one Prometheus recorder.

use std::time::Duration;

use anet::{Error, client::Balancer};
use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::StatusCode,
    routing::{get, post},
};
use metrics_exporter_prometheus::PrometheusHandle;
use tower::{ServiceBuilder, ServiceExt, limit::ConcurrencyLimit, timeout::Timeout};

/// The backend stack kept in the app state: a deadline over a concurrency limit
/// over anet's balanced pool. Cloning it is cheap.
pub type Backend = Timeout<ConcurrencyLimit<Balancer>>;

/// Builds the stack from a client's balancer.
pub fn backend(balancer: Balancer, timeout: Duration, limit: usize) -> Backend {
    ServiceBuilder::new()
        .timeout(timeout)
        .concurrency_limit(limit)
        .service(balancer)
}

/// The router: `POST /forward`.
pub fn router(backend: Backend) -> Router {
    Router::new()
        .route("/forward", post(forward))
        .with_state(backend)
}

/// Adds `GET /metrics`: Prometheus text from `handle`'s recorder, which holds
/// the gateway's `gateway_http_requests` and anet's `anet_client_*` alike.
pub fn with_metrics(router: Router, handle: PrometheusHandle) -> Router {
    router.route("/metrics", get(move || std::future::ready(handle.render())))
}

async fn forward(State(backend): State<Backend>, body: Bytes) -> (StatusCode, Bytes) {
    let answer = match backend.oneshot(body).await {
        Ok(response) => (StatusCode::OK, response),
        Err(e) => error_response(Error::from_boxed(e)),
    };
    // The HTTP side, next to anet's own metrics (a no-op without a recorder).
    metrics::counter!("gateway_http_requests", "status" => answer.0.as_u16().to_string())
        .increment(1);
    answer
}

/// The HTTP answer for a failed backend request: the status of anet's one
/// mapping ([`anet::status`]: 504 for a timeout, 503 when no backend can take
/// it, 502 when the backend failed, ...) and `KIND: error` as the body.
pub fn error_response(e: Error) -> (StatusCode, Bytes) {
    let body = match std::error::Error::source(&e) {
        Some(cause) => format!("{}: {e}: {cause}\n", e.kind()),
        None => format!("{}: {e}\n", e.kind()),
    };
    (e.http_status(), Bytes::from(body))
}

/// Sends `POST /forward` with `body` to `addr` over a plain TCP socket (HTTP/1.1,
/// `Connection: close`) and returns the status code and body.
pub async fn post_forward(
    addr: std::net::SocketAddr,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    http(addr, "POST", "/forward", body).await
}

/// Sends `GET path` to `addr` (as [`post_forward`] does) and returns the status
/// code and body.
pub async fn get_path(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    http(addr, "GET", path, b"").await
}

async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header end"))?;
    let status_line = String::from_utf8_lossy(&raw[..split]);
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    Ok((status, raw[split + 4..].to_vec()))
}

//! The axum gateway of the `axum_gateway` example: `POST /forward` sends the HTTP
//! body to an anet backend and answers with the backend's response.

use std::time::Duration;

use anet::{Error, client::Balancer};
use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
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

async fn forward(State(backend): State<Backend>, body: Bytes) -> (StatusCode, Bytes) {
    match backend.oneshot(body).await {
        Ok(response) => (StatusCode::OK, response),
        Err(e) => error_response(Error::from_boxed(e)),
    }
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST /forward HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
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

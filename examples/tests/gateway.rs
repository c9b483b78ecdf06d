//! The axum gateway of the `axum_gateway` example, called over HTTP.

use std::{convert::Infallible, time::Duration};

use anet::{
    client::Client,
    server::{Request, Server},
};
use anet_examples::gateway;
use bytes::Bytes;
use tower::service_fn;

/// Serves the gateway on `127.0.0.1:0` in front of `backend`; returns its address.
async fn serve_gateway(backend: std::net::SocketAddr, timeout: Duration) -> std::net::SocketAddr {
    let client = Client::builder().endpoint(backend).build();
    let app = gateway::router(gateway::backend(client.balancer(), timeout, 64));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bodies_are_forwarded_to_the_anet_backend_and_back() {
    let backend = Server::builder()
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let backend_addr = backend.local_addr();
    tokio::spawn(backend.serve(service_fn(|req: Request| async move {
        Ok::<_, Infallible>(Bytes::from(req.payload().to_ascii_uppercase()))
    })));
    let addr = serve_gateway(backend_addr, Duration::from_secs(2)).await;

    for body in ["hello", "payment 42", ""] {
        let (status, reply) = gateway::post_forward(addr, body.as_bytes())
            .await
            .expect("http");
        assert_eq!(status, 200);
        assert_eq!(reply, body.to_ascii_uppercase().as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_backend_is_a_503_not_a_hang() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let addr = serve_gateway(closed, Duration::from_secs(5)).await;
    let (status, _) = tokio::time::timeout(
        Duration::from_secs(4),
        gateway::post_forward(addr, b"anyone?"),
    )
    .await
    .expect("answers before the deadline")
    .expect("http");
    assert_eq!(status, 503);
}

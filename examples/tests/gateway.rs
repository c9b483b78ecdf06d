//! The axum gateway of the `axum_gateway` example, called over HTTP.

use std::{convert::Infallible, time::Duration};

use anet::{
    Error, Kind,
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

/// An anet backend on `127.0.0.1:0` answering each request with `answer`
/// (called on its payload); returns its address.
async fn backend(answer: fn(Bytes) -> Option<Bytes>) -> std::net::SocketAddr {
    let server = Server::builder()
        .bind(([127, 0, 0, 1], 0).into())
        .await
        .expect("bind");
    let addr = server.local_addr();
    tokio::spawn(server.serve(service_fn(move |req: Request| async move {
        match answer(req.into_payload()) {
            Some(reply) => Ok::<_, Infallible>(reply),
            None => std::future::pending().await,
        }
    })));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bodies_are_forwarded_to_the_anet_backend_and_back() {
    let backend_addr = backend(|body| Some(Bytes::from(body.to_ascii_uppercase()))).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_maximum_frame_is_a_400() {
    let backend_addr = backend(Some).await;
    let addr = serve_gateway(backend_addr, Duration::from_secs(2)).await;
    let (status, body) = gateway::post_forward(addr, &vec![b'x'; 70_000])
        .await
        .expect("http");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(body.starts_with(b"invalid_request: "), "{body:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_answering_is_a_504_at_the_deadline() {
    // It never answers.
    let backend_addr = backend(|_| None).await;
    let addr = serve_gateway(backend_addr, Duration::from_millis(300)).await;
    let (status, _) =
        tokio::time::timeout(Duration::from_secs(10), gateway::post_forward(addr, b"x"))
            .await
            .expect("answers")
            .expect("http");
    assert_eq!(status, 504);
}

/// The gateway answers every kind with anet's one mapping
/// (`Kind::http_status`, whose documented table anet's own tests check), the
/// kind and its cause in the body.
#[test]
fn every_error_kind_has_its_documented_http_status() {
    for &kind in Kind::all() {
        let (status, body) = gateway::error_response(Error::with_source(kind, "why"));
        assert_eq!(status, kind.http_status(), "{kind}");
        assert!(body.starts_with(format!("{kind}: ").as_bytes()), "{body:?}");
        assert!(body.ends_with(b": why\n"), "{body:?}");
    }
}

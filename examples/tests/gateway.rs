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

/// `GET /metrics` shows the gateway's HTTP counts and anet's client and server
/// metrics on one page, from one recorder (the only test here that installs
/// one: a process has one global recorder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_page_has_the_http_and_the_anet_metrics_from_one_recorder() {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the test's recorder");
    let backend = Server::builder()
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let backend_addr = backend.local_addr();
    tokio::spawn(backend.serve(service_fn(|req: Request| async move {
        Ok::<_, Infallible>(req.into_payload())
    })));
    let client = Client::builder().endpoint(backend_addr).build();
    let app = gateway::with_metrics(
        gateway::router(gateway::backend(
            client.balancer(),
            Duration::from_secs(2),
            64,
        )),
        handle,
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    for _ in 0..3 {
        let (status, _) = gateway::post_forward(addr, b"ping").await.expect("http");
        assert_eq!(status, 200);
    }
    let (status, page) = gateway::get_path(addr, "/metrics").await.expect("http");
    assert_eq!(status, 200);
    let page = String::from_utf8_lossy(&page);
    let endpoint = format!(r#"endpoint="{backend_addr}""#);
    // This client's series are its own (labelled by its backend) ...
    for series in [
        format!(r#"anet_client_requests{{{endpoint},outcome="ok"}} 3"#),
        format!(r#"anet_client_in_flight{{{endpoint}}} 0"#),
        format!(r#"anet_client_connections{{{endpoint},state="live"}} 1"#),
    ] {
        assert!(page.contains(&series), "no {series} in:\n{page}");
    }
    assert!(page.contains("anet_client_request_duration"), "{page}");
    // ... the others count the whole process (other tests run beside this one).
    for series in [
        r#"gateway_http_requests{status="200"}"#,
        r#"anet_server_requests{outcome="ok"}"#,
        "anet_client_connects",
    ] {
        let value = page
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{page}"));
        assert!(value >= 1.0, "{series} {value}");
    }
}

//! axum compositions as users write them around an anet client: a handler
//! holding a `Client` in `State` that answers anet's errors as HTTP statuses,
//! and axum's `HandleErrorLayer` mapping the errors of a tower stack — anet's
//! own, and tower's `Elapsed` classified by `Error::from_boxed` — to statuses.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use anet::{
    BoxError, Error,
    client::Client,
    server::{Request, Server},
};
use anet_examples::gateway;
use axum::{
    Router, error_handling::HandleErrorLayer, extract::State, http::StatusCode, routing::post,
};
use bytes::Bytes;
use tower::{ServiceBuilder, service_fn};

/// An anet backend echoing every payload except `hold`, which it never answers.
async fn backend() -> SocketAddr {
    let server = Server::builder()
        .bind(([127, 0, 0, 1], 0).into())
        .await
        .expect("bind");
    let addr = server.local_addr();
    tokio::spawn(server.serve(service_fn(|req: Request| async move {
        if req.payload() == "hold" {
            std::future::pending::<()>().await;
        }
        Ok::<_, Infallible>(req.into_payload())
    })));
    addr
}

/// A client of a fresh backend with `timeout` per request, connected: the
/// dial is charged neither to the first request's deadline nor to a tower
/// timeout above it.
async fn connected_client(timeout: Duration) -> Client {
    let client = Client::builder()
        .endpoint(backend().await)
        .request_timeout(timeout)
        .build();
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .expect("connected");
    client
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// The handler a user writes first: the client from the state, its error as
/// the HTTP status anet maps its kind to.
async fn forward(State(client): State<Client>, body: Bytes) -> Result<Bytes, (StatusCode, String)> {
    client
        .call(body)
        .await
        .map_err(|e| (e.http_status(), e.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_holding_a_client_in_state_answers_anet_errors_as_statuses() {
    let client = connected_client(Duration::from_millis(300)).await;
    let app = Router::new()
        .route("/forward", post(forward))
        .with_state(client);
    let addr = serve(app).await;

    let (status, body) = gateway::post_forward(addr, b"hello").await.expect("http");
    assert_eq!((status, body.as_slice()), (200, &b"hello"[..]));
    let (status, _) = gateway::post_forward(addr, &[b'x'; 70_000])
        .await
        .expect("http");
    assert_eq!(status, 400, "over the maximum frame");
    let (status, body) = gateway::post_forward(addr, b"hold").await.expect("http");
    assert_eq!(status, 504, "{}", String::from_utf8_lossy(&body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_error_layer_maps_tower_and_anet_errors_to_statuses() {
    let client = connected_client(Duration::from_secs(10)).await;
    // A tower timeout shorter than the client's deadline: its `Elapsed` is
    // what `HandleErrorLayer` sees, and anet classifies it as a timeout.
    let app = Router::new()
        .route("/forward", post(forward))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|e: BoxError| async move {
                    Error::from_boxed(e).http_status()
                }))
                .timeout(Duration::from_millis(500)),
        )
        .with_state(client.clone());
    let addr = serve(app).await;
    let (status, _) = gateway::post_forward(addr, b"hold").await.expect("http");
    assert_eq!(status, 504, "tower's Elapsed is a gateway timeout");
    let (status, body) = gateway::post_forward(addr, b"ok").await.expect("http");
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));

    // A route whose service is an anet stack: `HandleErrorLayer` takes the
    // anet `Error` itself.
    let stack = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|e: Error| async move {
            (e.http_status(), e.kind().to_string())
        }))
        .service(service_fn(move |req: axum::extract::Request| {
            let client = client.clone();
            async move {
                let body = axum::body::to_bytes(req.into_body(), 1 << 20)
                    .await
                    .map_err(|e| Error::with_source(anet::Kind::InvalidRequest, e))?;
                client.call(body).await.map(axum::body::Body::from)
            }
        }));
    let addr = serve(Router::new().route_service("/forward", stack)).await;
    let (status, body) = gateway::post_forward(addr, b"raw").await.expect("http");
    assert_eq!((status, body.as_slice()), (200, &b"raw"[..]));
    let (status, body) = gateway::post_forward(addr, &[b'x'; 70_000])
        .await
        .expect("http");
    assert_eq!((status, body.as_slice()), (400, &b"invalid_request"[..]));
}

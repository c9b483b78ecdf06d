//! An axum app whose handler forwards the HTTP body to an anet backend through a
//! `ServiceBuilder` stack (timeout + concurrency limit + anet's balancer) held in
//! the app state.
//!
//! `GET /metrics` serves the gateway's HTTP metrics and anet's (feature
//! `metrics`) from one Prometheus recorder, installed before the client is built.
//!
//! Run: `cargo run --example axum_gateway` — it starts an upper-casing anet
//! backend and the gateway, checks itself with one HTTP request and a scrape,
//! then serves until Ctrl-C (try `curl -d hello http://ADDR/forward` and
//! `curl http://ADDR/metrics`). With `--check` it exits after the self-check.

use std::{convert::Infallible, time::Duration};

use anet::{
    client::Client,
    server::{Request, Server},
};
use anet_examples::gateway;
use bytes::Bytes;
use tower::service_fn;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let check_only = std::env::args().any(|a| a == "--check");
    // First: anet registers its handles when clients and servers are built.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;

    // The binary backend: upper-cases every payload.
    let backend = Server::builder().bind("127.0.0.1:0".parse()?).await?;
    let backend_addr = backend.local_addr();
    tokio::spawn(backend.serve(service_fn(|req: Request| async move {
        Ok::<_, Infallible>(Bytes::from(req.payload().to_ascii_uppercase()))
    })));

    // The gateway: axum with the anet stack in its state.
    let client = Client::builder().endpoint(backend_addr).build();
    let stack = gateway::backend(client.balancer(), Duration::from_secs(1), 1024);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!("gateway on http://{addr} (try: curl -d hello http://{addr}/forward)");
    let app = gateway::with_metrics(gateway::router(stack), metrics);
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });

    let (status, body) = gateway::post_forward(addr, b"hello from http").await?;
    println!(
        "POST /forward \"hello from http\" -> {status} {:?}",
        String::from_utf8_lossy(&body)
    );
    anyhow::ensure!(
        status == 200 && body == b"HELLO FROM HTTP",
        "self-check failed"
    );
    let (status, page) = gateway::get_path(addr, "/metrics").await?;
    let page = String::from_utf8_lossy(&page);
    for series in [
        "gateway_http_requests{status=\"200\"} 1",
        "anet_server_requests{outcome=\"ok\"} 1",
    ] {
        anyhow::ensure!(
            status == 200 && page.contains(series),
            "no {series} in /metrics"
        );
    }
    println!("GET /metrics -> {status}, with gateway_http_requests and anet_* on one page");

    if !check_only {
        tokio::signal::ctrl_c().await?;
    }
    serving.abort();
    Ok(())
}

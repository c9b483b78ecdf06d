//! Balancing: three backends, traffic spread by power of two choices; one backend
//! removed at run time drains and gets nothing more.
//!
//! Run: `cargo run --example balance`

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use anet::{
    client::Client,
    server::{Request, Server},
};
use bytes::Bytes;
use tower::service_fn;

/// Starts a backend that counts what it serves.
async fn backend() -> anyhow::Result<(SocketAddr, Arc<AtomicU64>)> {
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    let server = Server::builder().bind("127.0.0.1:0".parse()?).await?;
    let addr = server.local_addr();
    tokio::spawn(server.serve(service_fn(move |req: Request| {
        counter.fetch_add(1, Ordering::Relaxed);
        async move { Ok::<_, Infallible>(req.into_payload()) }
    })));
    Ok((addr, served))
}

async fn traffic(client: &Client, n: usize) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..32 {
        let client = client.clone();
        tasks.spawn(async move {
            for i in 0..n / 32 {
                client.call(Bytes::from(format!("{worker}-{i}"))).await?;
            }
            Ok::<_, anet::Error>(())
        });
    }
    for r in tasks.join_all().await {
        r?;
    }
    Ok(())
}

fn show(label: &str, backends: &[(SocketAddr, Arc<AtomicU64>)]) {
    let counts: Vec<String> = backends
        .iter()
        .map(|(addr, n)| format!("{addr}: {}", n.load(Ordering::Relaxed)))
        .collect();
    println!("{label:<28} {}", counts.join("  "));
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let backends = vec![backend().await?, backend().await?, backend().await?];
    let client = Client::builder()
        .endpoints(backends.iter().map(|(addr, _)| *addr))
        .build();

    traffic(&client, 30_000).await?;
    show("after 30000 requests:", &backends);

    let removed = backends[2].0;
    client.endpoints().remove(removed);
    println!("removed {removed}");
    let before = backends[2].1.load(Ordering::Relaxed);
    traffic(&client, 30_000).await?;
    show("after 30000 more:", &backends);
    println!(
        "the removed backend served {} requests after removal",
        backends[2].1.load(Ordering::Relaxed) - before
    );
    for stats in client.stats().endpoints {
        println!(
            "endpoint {} up={} connections={} requests={}",
            stats.addr, stats.up, stats.connections, stats.requests
        );
    }
    Ok(())
}

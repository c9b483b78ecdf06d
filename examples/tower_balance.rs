//! tower's own balancer over anet's pools: `tower::balance::p2c::Balance` over a
//! `Discover` (here a fixed `ServiceList`) of per-address [`Pool`]s made by
//! [`MakePool`], shared behind tower's `Buffer`. Three backends; one is killed
//! (traffic moves to the other two, no request lost), then restarted on the
//! same port (its pool reconnects after its backoff and traffic comes back).
//! The pools are never evicted: a pool that is down is only pending.
//!
//! Run: `cargo run --example tower_balance`

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anet::{
    BoxError,
    client::{Backoff, Connector, MakePool, Pool, PoolConfig},
    server::{Request, Server},
};
use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::StreamExt;
use tower::{ServiceExt, balance::p2c::Balance, buffer::Buffer, discover::ServiceList, service_fn};

/// A backend that counts what it serves; abort its task to kill it.
struct Backend {
    addr: SocketAddr,
    served: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Backend {
    /// Starts a backend on `addr` (`127.0.0.1:0` for any port), counting into
    /// `served`.
    async fn start(addr: SocketAddr, served: Arc<AtomicU64>) -> anyhow::Result<Backend> {
        // A restart may find the old socket still closing: try for a while.
        let mut tries = 0;
        let server = loop {
            match Server::builder().bind(addr).await {
                Ok(server) => break server,
                Err(_) if tries < 50 => tries += 1,
                Err(e) => return Err(e).context("bind"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let addr = server.local_addr();
        let counter = served.clone();
        let task = tokio::spawn(server.serve(service_fn(move |req: Request| {
            counter.fetch_add(1, Ordering::Relaxed);
            async move { Ok::<_, Infallible>(req.into_payload()) }
        })));
        Ok(Backend { addr, served, task })
    }

    fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }
}

type Shared =
    Buffer<Bytes, <Balance<ServiceList<Vec<Pool>>, Bytes> as tower::Service<Bytes>>::Future>;

/// Sends `n` requests, 32 at a time; returns how many failed.
async fn traffic(balance: &Shared, n: usize) -> usize {
    let results: Vec<Result<Bytes, BoxError>> = futures_util::stream::iter(0..n)
        .map(|i| balance.clone().oneshot(Bytes::from(format!("request {i}"))))
        .buffer_unordered(32)
        .collect()
        .await;
    results.iter().filter(|r| r.is_err()).count()
}

fn show(label: &str, backends: &[Backend]) {
    let counts: Vec<String> = backends
        .iter()
        .map(|b| format!("{}: {:>5}", b.addr, b.served()))
        .collect();
    println!("{label:<34} {}", counts.join("  "));
}

/// Waits up to 10 s for `cond`.
async fn until(what: &str, cond: impl Fn() -> bool) -> anyhow::Result<()> {
    for _ in 0..1000 {
        if cond() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("timed out waiting until {what}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let mut backends = Vec::new();
    for _ in 0..3 {
        backends.push(Backend::start(any, Arc::default()).await?);
    }

    // One pool per address, from tower's MakeService for pools.
    let make = MakePool::new(Connector::new()).pool_config(
        PoolConfig::new().backoff(
            Backoff::new()
                .base(Duration::from_millis(50))
                .max(Duration::from_millis(500)),
        ),
    );
    let mut pools = Vec::new();
    for backend in &backends {
        pools.push(make.clone().oneshot(backend.addr).await?);
    }
    let killed = pools[1].clone(); // a handle to watch its pool
    let balance: Shared = Buffer::new(Balance::new(ServiceList::new(pools)), 256);

    let failed = traffic(&balance, 3000).await;
    show("3000 requests:", &backends);
    if failed > 0 {
        bail!("{failed} requests failed with every backend up");
    }

    backends[1].task.abort();
    println!("killed {}", backends[1].addr);
    until("its pool is down", || !killed.is_up()).await?;
    let before = backends[1].served();
    let failed = traffic(&balance, 3000).await;
    show("3000 more, one backend down:", &backends);
    if backends[1].served() != before {
        bail!("the killed backend served requests");
    }
    println!("  failed: {failed}; the down pool stays in the balancer, pending");

    let restarted = Backend::start(backends[1].addr, backends[1].served.clone()).await?;
    backends[1] = restarted;
    println!("restarted {}", backends[1].addr);
    until("its pool is up again", || killed.is_up()).await?;
    let before = backends[1].served();
    let failed = traffic(&balance, 3000).await;
    show("3000 more, after the restart:", &backends);
    if backends[1].served() == before || failed > 0 {
        bail!("traffic did not come back ({failed} failed)");
    }
    println!(
        "pool of {}: {} reconnect(s)",
        killed.addr(),
        killed.stats().reconnects
    );
    Ok(())
}

//! Loopback throughput, 64-byte payloads, closed loop, client and server each on
//! their own current-thread runtime and OS thread:
//!
//! 1. one anet `Connection` at concurrency 1, 16 and 256 against a minimal TCP
//!    echo server (`raw`);
//! 2. the anet `Server` (echo service) beside `raw`, driven by the same client at
//!    concurrency 256.
//!
//! Run: `cargo bench -p anet-tests --bench loopback` (set `ANET_BENCH_SECS` to
//! change the 2 s per point). It lives beside the tests so that it shares their
//! echo servers ([`anet_tests::servers`]). The cross-peer comparison lives in
//! `crates/anet-bench`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anet::{
    client::{ConnectionConfig, Connector},
    server::Server,
};
use anet_tests::servers::{anet_echo_on_own_thread, raw_echo_on_own_thread};
use bytes::Bytes;
use tower::{Service, ServiceExt};

fn main() {
    let secs: f64 = std::env::var("ANET_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0);
    let addr = raw_echo_on_own_thread();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    println!("one anet connection vs raw TCP echo, 64 B payloads, {secs} s per point");
    println!("{:>12} {:>14}", "concurrency", "req/s");
    for concurrency in [1usize, 16, 256] {
        let rps = rt.block_on(run(addr, concurrency, Duration::from_secs_f64(secs)));
        println!("{concurrency:>12} {rps:>14.0}");
    }

    let anet = anet_echo_on_own_thread(Server::builder());
    println!();
    println!("servers at concurrency 256 (one anet connection as the client)");
    println!("{:>12} {:>14} {:>8}", "server", "req/s", "ratio");
    let mut raw_rps = Vec::new();
    let mut anet_rps = Vec::new();
    // Alternate the two servers three times so drift hits both alike.
    for _ in 0..3 {
        raw_rps.push(rt.block_on(run(addr, 256, Duration::from_secs_f64(secs))));
        anet_rps.push(rt.block_on(run(anet, 256, Duration::from_secs_f64(secs))));
    }
    let (raw, anet) = (median(&mut raw_rps), median(&mut anet_rps));
    println!("{:>12} {raw:>14.0} {:>8.2}", "raw", 1.0);
    println!("{:>12} {anet:>14.0} {:>8.2}", "anet", anet / raw);
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

async fn run(addr: SocketAddr, concurrency: usize, duration: Duration) -> f64 {
    let conn = Connector::new()
        .connection_config(ConnectionConfig::new().max_in_flight(1024))
        .connect(addr)
        .await
        .expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let payload = Bytes::from(vec![0x5a; 64]);
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (mut conn, stop, done, payload) =
            (conn.clone(), stop.clone(), done.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let response = conn
                    .ready()
                    .await
                    .expect("ready")
                    .call(payload.clone())
                    .await
                    .expect("response");
                assert_eq!(response.len(), 64);
                n += 1;
            }
            done.fetch_add(n, Ordering::Relaxed);
        }));
    }
    let start = tokio::time::Instant::now();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("task");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

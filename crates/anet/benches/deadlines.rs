//! The cost of expiring staggered deadlines: `n` requests to a server that never
//! answers, written one per millisecond, each with a 10 s deadline, so that the
//! deadlines pass one per millisecond while up to `n` requests wait. A driver
//! that scanned its whole table whenever the earliest deadline passed did
//! O(n) work per deadline (O(n²) in all); expiring from an ordered queue looks
//! only at the deadlines that are due.
//!
//! Time is paused (the clock jumps to the next timer whenever the runtime is
//! idle) and the transport is an in-memory pipe, so what is measured is the CPU
//! work of the whole scenario, not its seconds of virtual time.
//!
//! Run: `cargo bench -p anet --bench deadlines`.
#![allow(missing_docs)] // criterion's macros generate undocumented items

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use anet::{
    Kind,
    client::{Client, RetryPolicy},
};
use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::AsyncReadExt;
use tower::service_fn;

/// Makes `n` requests one millisecond apart to a server that reads and never
/// answers; every one ends with a timeout.
async fn staggered(n: usize) {
    let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let client = Client::builder()
        .endpoint(addr)
        .connections_per_endpoint(1, 1)
        .max_in_flight(n)
        .request_timeout(Duration::from_secs(10))
        .retry(RetryPolicy::new(0))
        .connector(service_fn(|_: SocketAddr| async {
            let (client, mut server) = tokio::io::duplex(1 << 20);
            tokio::spawn(async move {
                let mut sink = vec![0; 64 * 1024];
                while matches!(server.read(&mut sink).await, Ok(n) if n > 0) {}
            });
            Ok::<_, Infallible>(client)
        }))
        .build();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..n {
        let client = client.clone();
        calls.spawn(async move { client.call(Bytes::from_static(b"ping")).await });
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    while let Some(result) = calls.join_next().await {
        let err = result.expect("no panic").expect_err("never answered");
        assert_eq!(err.kind(), Kind::Timeout);
    }
    client.close();
}

fn deadlines(c: &mut Criterion) {
    let mut group = c.benchmark_group("staggered_deadlines");
    group.sample_size(10);
    for n in [512usize, 4096] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            b.iter(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .start_paused(true)
                    .build()
                    .expect("runtime")
                    .block_on(staggered(n));
            });
        });
    }
    group.finish();
}

criterion_group!(benches, deadlines);
criterion_main!(benches);

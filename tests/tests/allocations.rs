//! Heap allocations per request on the client path, counted on the client's own
//! thread while a separate thread runs the echo server.
//!
//! The target (DESIGN.md §7) is at most 2 allocations per request beyond the
//! caller's own request bytes; this test uses static payloads, so everything it
//! counts belongs to anet (plus the test's own loop, which allocates nothing).

use std::time::Duration;

use anet::client::{Client, ConnectionConfig, Connector};
use bytes::Bytes;
use tower::{Service, ServiceExt};

const WARMUP: usize = 20_000;
const MEASURED: usize = 50_000;
const CONCURRENCY: usize = 16;

/// Starts the echo server on its own thread and runtime, so that its allocations
/// are not counted.
fn echo_on_own_thread() -> std::net::SocketAddr {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let server_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let server = anet_tests::start_echo().await;
            addr_tx.send(server.addr).expect("send addr");
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
    });
    drop(server_thread);
    addr_rx.recv().expect("server address")
}

#[test]
fn connection_path_allocates_at_most_two_times_per_request() {
    let addr = echo_on_own_thread();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let conn = rt.block_on(async {
        Connector::new()
            .connection_config(ConnectionConfig::new())
            .connect(addr)
            .await
            .expect("connect")
    });
    let run = |n: usize| {
        rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..CONCURRENCY {
                let mut conn = conn.clone();
                tasks.push(tokio::spawn(async move {
                    for _ in 0..n / CONCURRENCY {
                        let response = conn
                            .ready()
                            .await
                            .expect("ready")
                            .call(Bytes::from_static(b"0123456789abcdef0123456789abcdef"))
                            .await
                            .expect("response");
                        assert_eq!(response.len(), 32);
                    }
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
        })
    };
    run(WARMUP);
    let info = allocation_counter::measure(|| run(MEASURED));
    // The spawns and their join handles of one run are fixed overhead.
    let per_request = info.count_total as f64 / MEASURED as f64;
    println!(
        "client allocations per request: {per_request:.3} ({} over {MEASURED} requests)",
        info.count_total
    );
    assert!(
        per_request <= 2.0,
        "{per_request:.3} allocations per request exceeds the budget of 2"
    );
}

#[test]
fn full_client_stack_allocates_at_most_two_times_per_request() {
    let addr = echo_on_own_thread();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let client = rt.block_on(async {
        let client = Client::builder()
            .endpoint(addr)
            .concurrency_limit(Some(1024))
            .build();
        client
            .call(Bytes::from_static(b"warm"))
            .await
            .expect("connected");
        client
    });
    let run = |n: usize| {
        rt.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..CONCURRENCY {
                let client = client.clone();
                tasks.push(tokio::spawn(async move {
                    for _ in 0..n / CONCURRENCY {
                        let response = client
                            .call(Bytes::from_static(b"0123456789abcdef0123456789abcdef"))
                            .await
                            .expect("response");
                        assert_eq!(response.len(), 32);
                    }
                }));
            }
            for t in tasks {
                t.await.expect("task");
            }
        })
    };
    run(WARMUP);
    let info = allocation_counter::measure(|| run(MEASURED));
    let per_request = info.count_total as f64 / MEASURED as f64;
    println!(
        "full stack allocations per request: {per_request:.3} ({} over {MEASURED} requests)",
        info.count_total
    );
    assert!(
        per_request <= 2.0,
        "{per_request:.3} allocations per request exceeds the budget of 2"
    );
}

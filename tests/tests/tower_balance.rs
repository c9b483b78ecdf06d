//! tower's own balancers over anet's per-address pools: `p2c::Balance` over a
//! `Discover` of [`Pool`]s survives a killed endpoint (traffic moves, and comes
//! back after the restart), `MakeBalance` over [`MakePool`] works, and a pool
//! that is down is pending, never failed (tower's p2c would evict it for good).

use anet_tests::{not_ready_within, ready_call};
use std::{net::SocketAddr, time::Duration};

use anet::{
    BoxError, Kind,
    client::{Backoff, Connector, MakePool, Pool, PoolConfig},
    server::Server,
};
use anet_tests::{ManualServer, RunningServer, echo, eventually, restart_server, start_server};
use bytes::Bytes;
use futures_util::StreamExt;
use tower::{
    Service, ServiceExt,
    balance::p2c::{Balance, MakeBalance},
    buffer::Buffer,
    discover::ServiceList,
};

const WAIT: Duration = Duration::from_secs(10);

fn make_pool() -> MakePool {
    MakePool::new(Connector::new()).pool_config(
        PoolConfig::new().backoff(
            Backoff::new()
                .base(Duration::from_millis(50))
                .max(Duration::from_millis(200)),
        ),
    )
}

type Shared = Buffer<Bytes, <Balance<ServiceList<Vec<Pool>>, Bytes> as Service<Bytes>>::Future>;

/// Sends `n` requests, 16 at a time (from this task: the futures of tower's
/// `Balance` are not provably `Send` to the compiler inside a spawned task);
/// returns how many failed.
async fn burst(balance: &Shared, n: usize) -> usize {
    let results: Vec<Result<(), BoxError>> = futures_util::stream::iter(0..n)
        .map(|i| {
            let balance = balance.clone();
            async move {
                let payload = Bytes::from(format!("{i}"));
                let reply = balance.oneshot(payload.clone()).await?;
                assert_eq!(reply, payload, "answered with its own payload");
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    results.iter().filter(|r| r.is_err()).count()
}

fn requests(server: &RunningServer) -> u64 {
    server.stats.snapshot().requests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn towers_p2c_over_pools_moves_traffic_off_a_killed_endpoint_and_back_after_its_restart() {
    let a = start_server(Server::builder(), echo()).await;
    let b = start_server(Server::builder(), echo()).await;
    let c = start_server(Server::builder(), echo()).await;
    let killed: SocketAddr = b.addr;
    let mut pools = Vec::new();
    for addr in [a.addr, b.addr, c.addr] {
        pools.push(make_pool().oneshot(addr).await.expect("pool"));
    }
    let watch = pools[1].clone();
    let balance = Buffer::new(Balance::new(ServiceList::new(pools)), 64);

    assert_eq!(burst(&balance, 600).await, 0);
    assert!(requests(&a) > 0 && requests(&b) > 0 && requests(&c) > 0);

    drop(b); // killed: its tasks are aborted and its sockets closed
    assert!(
        eventually(WAIT, || !watch.is_up()).await,
        "the killed pool is down"
    );
    // Nothing was in flight when it died, and a down pool is only pending:
    // every request goes to the others, and the balancer keeps the pool.
    let before = watch.stats().requests;
    assert_eq!(burst(&balance, 600).await, 0, "traffic moved");
    assert_eq!(watch.stats().requests, before, "none to the down pool");

    let b = restart_server(killed, echo()).await;
    assert!(
        eventually(WAIT, || watch.is_up()).await,
        "the pool reconnected after its backoff"
    );
    let mut rounds = 0;
    while requests(&b) == 0 && rounds < 50 {
        assert_eq!(burst(&balance, 100).await, 0);
        rounds += 1;
    }
    assert!(
        requests(&b) > 0,
        "traffic came back to the restarted endpoint"
    );
    assert!(watch.stats().reconnects >= 1, "{:?}", watch.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_balance_over_make_pool_balances_a_set_of_addresses() {
    let a = start_server(Server::builder(), echo()).await;
    let b = start_server(Server::builder(), echo()).await;
    // A MakeService from a set of addresses to a Discover of pools, for
    // tower's MakeBalance.
    let make_discover = tower::service_fn(|addrs: Vec<SocketAddr>| async move {
        let mut pools = Vec::new();
        for addr in addrs {
            pools.push(make_pool().oneshot(addr).await?);
        }
        Ok::<_, anet::Error>(ServiceList::new(pools))
    });
    let balance = MakeBalance::<_, Bytes>::new(make_discover)
        .oneshot(vec![a.addr, b.addr])
        .await
        .expect("balancer");
    let balance = Buffer::new(balance, 32);
    let results: Vec<Result<Bytes, BoxError>> = futures_util::stream::iter(0..200)
        .map(|i| balance.clone().oneshot(Bytes::from(format!("{i}"))))
        .buffer_unordered(16)
        .collect()
        .await;
    for result in results {
        result.expect("answered");
    }
    assert!(
        requests(&a) > 0 && requests(&b) > 0,
        "both addresses served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_that_cannot_connect_is_pending_not_failed_until_closed() {
    let closed = anet_tests::clients::closed_port();
    let mut pool = make_pool().oneshot(closed).await.expect("pool");
    assert!(
        not_ready_within(&mut pool, Duration::from_millis(500)).await,
        "pending while it backs off, not an error that would evict it"
    );
    assert!(pool.stats().failed_dials >= 1, "{:?}", pool.stats());

    // Closing is the one error, and it wakes a waiting handle.
    let mut waiting = pool.clone();
    let waiter = tokio::spawn(async move { waiting.ready().await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    pool.close();
    let error = tokio::time::timeout(WAIT, waiter)
        .await
        .expect("woken by close")
        .expect("task")
        .expect_err("closed");
    assert_eq!(error.kind(), Kind::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_reservation_dropped_unused_returns_its_unit_and_the_last_handle_closes_the_pool() {
    let mut server = ManualServer::bind().await;
    let mut pool = Pool::new(server.addr, Connector::new(), PoolConfig::new());
    let mut conn = server.accept().await;
    tokio::time::timeout(WAIT, pool.ready())
        .await
        .expect("up")
        .expect("ready");
    assert_eq!(pool.stats().in_flight, 1, "ready means a unit is held");
    let other = pool.clone();
    assert_eq!(other.stats().in_flight, 1, "clones share the pool");
    drop(pool);
    assert_eq!(other.stats().in_flight, 0, "the unit came back");

    // A call on it is written and answered.
    let mut other = other;
    let call = tokio::spawn(ready_call(&mut other, b"ping").await);
    let frame = conn.recv().await;
    conn.reply(&frame, b"pong").await;
    assert_eq!(call.await.expect("task").expect("answered"), "pong");

    drop(other);
    assert!(
        conn.client_closed(WAIT).await,
        "the last handle's drop closed the connection"
    );
}

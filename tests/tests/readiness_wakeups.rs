//! Honest readiness keeps its promises: a waiting handle is woken by room on
//! any connection (of its pool, or of any endpoint of its balancer), a "no
//! endpoint" verdict is looked at again, and nothing is written after close.

use anet_tests::ready_call;
use std::time::Duration;

use anet::{
    Kind,
    client::{Client, ConnectionConfig, Connector, Pool, PoolConfig},
};
use anet_tests::{Action, echo, eventually, restart_server, start_scripted};
use bytes::Bytes;
use tower::{Service, ServiceExt};

const WAIT: Duration = Duration::from_secs(10);

fn script(frame: &anet_proto::Frame) -> Action {
    let payload = &frame.payload;
    if payload.as_ref() == b"hang" {
        Action::Ignore
    } else {
        Action::Echo(Duration::from_millis(200))
    }
}

/// A Pool handle pending because every window was full must be woken when
/// room appears on *any* of the pool's connections, not only on the one it
/// queued on: here the one it queued on holds a request that is never
/// answered (no deadline under a bare Pool), so it waits forever while the
/// other connection sits idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_pool_is_woken_by_room_on_its_other_connection() {
    let server = start_scripted(|_, frame| script(frame)).await;
    let connector = Connector::new()
        .connection_config(ConnectionConfig::new().max_in_flight(1).held_tag_limit(4));
    let pool = Pool::new(
        server.addr,
        connector,
        PoolConfig::new().min_connections(2).max_connections(2),
    );
    assert!(eventually(WAIT, || pool.is_up() && pool.stats().connections == 2).await);

    // One connection gets a request that is never answered; the other one
    // gets a request answered after 200 ms.
    let mut hang = pool.clone();
    let _hung = ready_call(&mut hang, b"hang").await;
    let mut slow = pool.clone();
    let slow = ready_call(&mut slow, b"slow").await;
    assert_eq!(pool.stats().in_flight, 2, "both windows full");

    let mut waiter = pool.clone();
    let waiting = tokio::spawn(async move {
        waiter.ready().await.expect("ready");
        waiter
    });
    // Its answer frees the unit of the other connection (the waiter may take
    // it at once).
    assert_eq!(slow.await.expect("answered"), "slow");
    tokio::time::timeout(Duration::from_secs(3), waiting)
        .await
        .expect("woken: the pool has room on its second connection")
        .expect("task");
}

/// The same for the Balancer: a handle pending while both endpoints' windows
/// are full waits only on the connection it picked; room on the other
/// endpoint never wakes it. The pick among two equally full endpoints is
/// random, so several rounds are run: the handle must be woken every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_balancer_is_woken_by_room_on_the_other_endpoint() {
    let a = start_scripted(|_, frame| script(frame)).await;
    let b = start_scripted(|_, frame| script(frame)).await;
    let client = Client::builder()
        .endpoint(a.addr)
        .endpoint(b.addr)
        .connections_per_endpoint(1, 1)
        .connection(ConnectionConfig::new().max_in_flight(1).held_tag_limit(4))
        .build();
    assert!(
        eventually(WAIT, || client.stats().endpoints.iter().all(|e| e.up)).await,
        "both up"
    );
    // One endpoint's only window is taken for good.
    let mut hang = client.balancer();
    let _hung = ready_call(&mut hang, b"hang").await;

    for round in 0..10 {
        // The other endpoint (less loaded) takes a request answered in 200 ms.
        let mut slow = client.balancer();
        let slow = ready_call(&mut slow, b"slow").await;
        let mut waiter = client.balancer();
        let waiting = tokio::spawn(async move {
            waiter.ready().await.expect("ready");
            waiter
        });
        assert_eq!(slow.await.expect("answered"), "slow");
        let waiter = tokio::time::timeout(Duration::from_secs(3), waiting)
            .await
            .unwrap_or_else(|_| {
                panic!("round {round}: not woken though the other endpoint has room")
            })
            .expect("task");
        drop(waiter); // its unit goes back
    }
}

/// A Balancer that found no endpoint up is ready with "the next call fails
/// Unavailable" — and stays so: once an endpoint is up, poll_ready still says
/// ready without holding room, and the call fails Unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancer_ready_with_unavailable_does_not_stay_stale_once_an_endpoint_is_up() {
    let addr = anet_tests::clients::closed_port();
    let client = Client::builder()
        .endpoint(addr)
        .connect_timeout(Duration::from_millis(100))
        .build();
    let mut balancer = client.balancer();
    balancer
        .ready()
        .await
        .expect("ready: the next call fails Unavailable");

    let _server = restart_server(addr, echo()).await;
    assert!(
        eventually(WAIT, || client.stats().endpoints.iter().all(|e| e.up)).await,
        "the endpoint came up"
    );
    // Ready again: a tower user expects this to mean "holds room" now.
    balancer.ready().await.expect("ready");
    let reply = balancer.call(Bytes::from_static(b"ping")).await;
    match reply {
        Ok(reply) => assert_eq!(reply, "ping"),
        Err(e) => {
            assert_ne!(e.kind(), Kind::Unavailable, "a stale verdict: {e}");
            panic!("{e}");
        }
    }
}

/// Invariant 6: closing stops new requests. A handle that reserved before
/// `close()` still sends its call (the held unit bypasses the closed check),
/// until the maintenance task gets round to draining the connections.
#[tokio::test(flavor = "current_thread")]
async fn a_call_on_a_reservation_made_before_close_is_refused() {
    let server = anet_tests::start_server(anet::server::Server::builder(), echo()).await;
    let client = Client::builder().endpoint(server.addr).build();
    client.call(Bytes::from_static(b"warm")).await.expect("up");
    let mut balancer = client.balancer();
    balancer.ready().await.expect("ready");
    client.close();
    refused_as_closed(&mut balancer, "").await;

    let pool = Pool::new(server.addr, Connector::new(), PoolConfig::new());
    let mut handle = pool.clone();
    handle.ready().await.expect("ready");
    pool.close();
    refused_as_closed(&mut handle, "pool: ").await;
}

/// Calls `service` (already ready) and asserts that the call is refused as
/// [`Kind::Closed`], not written (`what` names the service in the message).
async fn refused_as_closed<S>(service: &mut S, what: &str)
where
    S: Service<Bytes, Response = Bytes, Error = anet::Error>,
{
    let result = service.call(Bytes::from_static(b"after close")).await;
    assert_eq!(
        result.as_ref().map_err(anet::Error::kind).err(),
        Some(Kind::Closed),
        "{what}written after close: {result:?}"
    );
}

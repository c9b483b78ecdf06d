//! Honest readiness of the [`Balancer`]: `poll_ready` is ready only when it holds
//! a unit of a connection's window, so tower's `LoadShed`, `Buffer` and
//! `ConcurrencyLimit` over it see backpressure; a reservation dropped unused
//! gives its unit back; a waiting handle is woken when room appears.

use std::{sync::atomic::Ordering, time::Duration};

use anet::{
    BoxError, Kind,
    client::{Balancer, Client, ConnectionConfig},
    server::Server,
};
use anet_tests::{
    Action, ManualServer, echo, eventually, not_ready_within, start_scripted, start_server,
};
use bytes::Bytes;
use tower::{Service, ServiceBuilder, ServiceExt, load_shed::LoadShed};

const WAIT: Duration = Duration::from_secs(10);

/// One connection with room for one request in flight (and room for held
/// tags, so a timed-out request does not retire it).
fn one_slot_client(addr: std::net::SocketAddr) -> Client {
    Client::builder()
        .endpoint(addr)
        .connections_per_endpoint(1, 1)
        .connection(ConnectionConfig::new().max_in_flight(1).held_tag_limit(4))
        .build()
}

async fn send(mut balancer: Balancer, payload: &'static [u8]) -> Result<Bytes, anet::Error> {
    balancer
        .ready()
        .await?
        .call(Bytes::from_static(payload))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_shed_over_the_balancer_sheds_at_once_when_every_window_is_full_and_stops_when_room_returns()
 {
    let mut server = ManualServer::bind().await;
    let client = one_slot_client(server.addr);
    let first = tokio::spawn(send(client.balancer(), b"first"));
    let mut conn = server.accept().await;
    let held = conn.recv().await; // the only window is full now

    let mut shed = LoadShed::new(client.balancer());
    let started = tokio::time::Instant::now();
    let error = tokio::time::timeout(WAIT, async {
        shed.ready()
            .await?
            .call(Bytes::from_static(b"second"))
            .await
    })
    .await
    .expect("shed at once, not left waiting for room")
    .expect_err("shed");
    let elapsed = started.elapsed();
    assert!(
        error
            .downcast_ref::<tower::load_shed::error::Overloaded>()
            .is_some(),
        "{error}"
    );
    // Room returns only when the test answers below, so a load shed that
    // waited for room would run into `WAIT`; any bound well under it shows
    // the shed came at once. 2 s, not 100 ms: a starved machine can hold this
    // task that long between two steps.
    assert!(elapsed < Duration::from_secs(2), "shed after {elapsed:?}");

    // Room returns: the next request goes through.
    conn.reply(&held, b"first").await;
    assert_eq!(first.await.expect("task").expect("first"), "first");
    let server_side = tokio::spawn(async move {
        let frame = conn.recv().await;
        conn.reply(&frame, b"third").await;
        conn
    });
    let reply = tokio::time::timeout(WAIT, async {
        shed.ready().await?.call(Bytes::from_static(b"third")).await
    })
    .await
    .expect("answered")
    .expect("not shed once there is room");
    assert_eq!(reply, "third");
    let _conn = server_side.await.expect("server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancer_is_pending_while_every_window_is_full_and_woken_when_room_appears() {
    let mut server = ManualServer::bind().await;
    let client = one_slot_client(server.addr);
    let first = tokio::spawn(send(client.balancer(), b"first"));
    let mut conn = server.accept().await;
    let held = conn.recv().await;

    let mut waiting = client.balancer();
    assert!(
        not_ready_within(&mut waiting, Duration::from_millis(200)).await,
        "not ready while the only window is full"
    );
    let ready = tokio::spawn(async move {
        waiting.ready().await.expect("ready");
        waiting
    });
    conn.reply(&held, b"first").await;
    first.await.expect("task").expect("first");
    let mut waiting = tokio::time::timeout(WAIT, ready)
        .await
        .expect("woken when the response freed the window")
        .expect("task");
    // It holds the unit: ready again at once, and its call is written.
    waiting.ready().await.expect("still ready");
    let call = tokio::spawn(waiting.call(Bytes::from_static(b"second")));
    let frame = conn.recv().await;
    assert_eq!(frame.payload, "second");
    conn.reply(&frame, b"second").await;
    assert_eq!(call.await.expect("task").expect("second"), "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_dropped_without_a_call_gives_its_unit_back() {
    let server = start_server(Server::builder(), echo()).await;
    let client = Client::builder()
        .endpoint(server.addr)
        .connections_per_endpoint(1, 1)
        .connection(ConnectionConfig::new().max_in_flight(4).held_tag_limit(8))
        .build();
    client.call(Bytes::from_static(b"warm")).await.expect("ok");
    // The driver gives units back once per pass, a moment after the answer.
    assert!(eventually(WAIT, || client.stats().in_flight() == 0).await);

    // Four handles reserve the whole window; a fifth waits.
    let mut holders = Vec::new();
    for _ in 0..4 {
        let mut balancer = client.balancer();
        balancer.ready().await.expect("ready");
        holders.push(balancer);
    }
    assert_eq!(
        client.stats().in_flight(),
        4,
        "each ready handle holds a unit"
    );
    let mut fifth = client.balancer();
    assert!(
        not_ready_within(&mut fifth, Duration::from_millis(100)).await,
        "the window is reserved"
    );

    // Dropped unused: every unit comes back, and the window serves again.
    drop(holders);
    tokio::time::timeout(WAIT, fifth.ready())
        .await
        .expect("room came back")
        .expect("ready");
    drop(fifth);
    assert_eq!(client.stats().in_flight(), 0, "full capacity again");
    let calls: Vec<_> = (0..4)
        .map(|_| tokio::spawn(send(client.balancer(), b"again")))
        .collect();
    for call in calls {
        assert_eq!(call.await.expect("task").expect("ok"), "again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffer_and_concurrency_limit_over_the_balancer_serve_every_request() {
    let server = start_scripted(|_, _| Action::Echo(Duration::from_millis(2))).await;
    let client = Client::builder().endpoint(server.addr).build();
    let stack = ServiceBuilder::new()
        .buffer(64)
        .concurrency_limit(4)
        .service(client.balancer());
    let calls: Vec<_> = (0..64u32)
        .map(|i| {
            let stack = stack.clone();
            tokio::spawn(async move {
                let payload = Bytes::from(i.to_be_bytes().to_vec());
                let reply = stack.oneshot(payload.clone()).await?;
                assert_eq!(reply, payload);
                Ok::<_, BoxError>(())
            })
        })
        .collect();
    for call in calls {
        call.await.expect("task").expect("answered");
    }
    let peak = server.counters.max_in_flight.load(Ordering::SeqCst);
    assert!(peak <= 4, "the limit held at the server: {peak}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_endpoint_up_the_balancer_is_ready_and_its_calls_fail_unavailable_so_a_buffer_survives()
 {
    // A port nobody listens on.
    let closed = anet_tests::clients::closed_port();
    let client = Client::builder()
        .endpoint(closed)
        .connect_timeout(Duration::from_millis(200))
        .build();
    let buffered = tower::buffer::Buffer::new(client.balancer(), 8);
    // A loaded machine delays the caller, not the verdict: excuse the
    // runtime's own lag (a hang still runs into `WAIT`).
    let lag = anet_tests::LagProbe::start();
    for _ in 0..3 {
        let lag_before = lag.total();
        let started = tokio::time::Instant::now();
        let error = tokio::time::timeout(WAIT, buffered.clone().oneshot(Bytes::from_static(b"x")))
            .await
            .expect("fails, never hangs")
            .expect_err("nowhere to go");
        let error = anet::Error::from_boxed(error);
        assert_eq!(error.kind(), Kind::Unavailable, "{error}");
        let excused = lag.total() - lag_before;
        assert!(
            started.elapsed() < Duration::from_secs(2) + excused,
            "{:?} ({excused:?} of runtime lag)",
            started.elapsed()
        );
    }
}

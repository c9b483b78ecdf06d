//! The client connection lifecycle: handshake, heartbeat, maximum age, idle
//! shrink, warm-up, response classifier, and failover groups.
//!
//! Timing tests run on paused time over in-memory pipes
//! ([`anet_tests::MemoryConnector`]); warm-up and failover run over real
//! loopback TCP with generous real-time bounds.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anet::{
    Kind,
    client::{
        Backoff, Classification, Client, ClientBuilder, Connection, EndpointState, Heartbeat,
        PoolConfig, RetryPolicy,
    },
    server::{Request, Server},
};
use anet_proto::{Frame, FrameCodec};
use anet_tests::clients::echo_for;
use anet_tests::{
    Handler, MemoryConnector, encode, eventually, memory_addr, restart_server, spawn_writer,
    start_server,
};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::{io::DuplexStream, time::Instant};
use tokio_util::codec::FramedRead;
use tower::{Service, ServiceExt, service_fn};

/// What one in-memory connection does with a request: the reply's payload,
/// or `None` to stay silent (the connection stays open).
type Answer = Arc<dyn Fn(usize, &Frame) -> Option<Bytes> + Send + Sync>;

/// A backend over in-memory pipes: `answer(connection, frame)` for each
/// request, connections numbered from 0; records every payload it reads.
#[derive(Clone)]
struct Backend {
    connector: MemoryConnector,
    seen: Arc<Mutex<Vec<(usize, Bytes)>>>,
}

impl Backend {
    /// Echoes every request but `request`, which it answers with `reply`.
    fn echo_except(request: &'static str, reply: &'static [u8]) -> Backend {
        Backend::new(move |_, frame| {
            Some(if frame.payload == request {
                Bytes::from_static(reply)
            } else {
                frame.payload.clone()
            })
        })
    }

    fn new(answer: impl Fn(usize, &Frame) -> Option<Bytes> + Send + Sync + 'static) -> Backend {
        let answer: Answer = Arc::new(answer);
        let seen: Arc<Mutex<Vec<(usize, Bytes)>>> = Arc::default();
        let next = Arc::new(AtomicUsize::new(0));
        let connector = MemoryConnector::new({
            let seen = seen.clone();
            move |io: DuplexStream| {
                let conn = next.fetch_add(1, Ordering::SeqCst);
                serve(io, conn, answer.clone(), seen.clone())
            }
        });
        Backend { connector, seen }
    }

    /// An echo backend.
    fn echo() -> Backend {
        Backend::new(|_, frame| Some(frame.payload.clone()))
    }

    /// The payloads read, in order.
    fn payloads(&self) -> Vec<Bytes> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, p)| p.clone())
            .collect()
    }

    fn count(&self, payload: &[u8]) -> usize {
        self.payloads().iter().filter(|p| p[..] == *payload).count()
    }

    fn builder(&self) -> ClientBuilder {
        Client::builder()
            .endpoint(memory_addr())
            .connector(self.connector.clone())
    }
}

async fn serve(
    io: DuplexStream,
    conn: usize,
    answer: Answer,
    seen: Arc<Mutex<Vec<(usize, Bytes)>>>,
) {
    let (read, write) = tokio::io::split(io);
    let (tx, writer) = spawn_writer(write);
    let mut frames = FramedRead::new(read, FrameCodec::new());
    while let Some(Ok(frame)) = frames.next().await {
        seen.lock().unwrap().push((conn, frame.payload.clone()));
        if let Some(reply) = answer(conn, &frame) {
            let _ = tx.send(Some(encode(&frame.tag, &reply)));
        }
    }
    let _ = tx.send(None);
    let _ = writer.await;
}

fn fast_backoff() -> Backoff {
    Backoff::new()
        .base(Duration::from_millis(100))
        .max(Duration::from_millis(400))
}

/// An error and its sources, as one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

async fn call(client: &Client, payload: &'static [u8]) -> Result<Bytes, anet::Error> {
    client.call(Bytes::from_static(payload)).await
}

// ---------------------------------------------------------------- handshake

#[tokio::test(start_paused = true)]
async fn the_handshake_is_the_first_request_on_every_connection() {
    let backend = Backend::echo();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let h = handshakes.clone();
    let client = backend
        .builder()
        .handshake(move |mut conn: Connection| {
            let h = h.clone();
            async move {
                let reply = conn
                    .ready()
                    .await?
                    .call(Bytes::from_static(b"LOGON"))
                    .await?;
                h.fetch_add(1, Ordering::SeqCst);
                if reply == "LOGON" {
                    Ok(())
                } else {
                    Err(anet::BoxError::from("refused"))
                }
            }
        })
        .build();
    assert_eq!(call(&client, b"one").await.expect("call"), "one");
    assert_eq!(call(&client, b"two").await.expect("call"), "two");
    assert_eq!(handshakes.load(Ordering::SeqCst), 1);
    assert_eq!(backend.payloads(), ["LOGON", "one", "two"]);
    let stats = client.stats();
    assert_eq!(stats.endpoints[0].handshake_failures, 0);
    assert_eq!(stats.endpoints[0].state, EndpointState::Up);
}

#[tokio::test(start_paused = true)]
async fn a_failed_handshake_is_a_failed_dial_and_its_connection_gets_no_traffic() {
    // The device refuses the logon.
    let backend = Backend::echo_except("LOGON", b"DENIED");
    let client = backend
        .builder()
        .backoff(fast_backoff())
        .retry(RetryPolicy::new(0))
        .handshake(|mut conn: Connection| async move {
            let reply = conn
                .ready()
                .await?
                .call(Bytes::from_static(b"LOGON"))
                .await?;
            if reply == "LOGON" {
                Ok(())
            } else {
                Err(anet::BoxError::from(format!("logon answered {reply:?}")))
            }
        })
        .build();
    let err = call(&client, b"payment")
        .await
        .expect_err("no connection passed its handshake");
    assert!(
        matches!(err.kind(), Kind::Unavailable | Kind::Timeout),
        "{err:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = client.stats().endpoints[0].clone();
    assert!(!stats.up);
    assert_eq!(stats.state, EndpointState::Down, "{stats:?}");
    assert!(stats.down_since.is_some());
    assert!(stats.handshake_failures >= 2, "{stats:?}");
    assert_eq!(stats.failed_dials, stats.handshake_failures);
    let last = stats.last_error.expect("last error");
    assert_eq!(last.kind(), Kind::Connect);
    assert!(chain(&last).contains("DENIED"), "{}", chain(&last));
    // Backed off: a few dials in 2 s, not one per millisecond.
    let dials = backend.connector.dials.load(Ordering::SeqCst);
    assert!((2..=15).contains(&dials), "{dials} dials");
    // Only logons reached the device.
    assert!(backend.payloads().iter().all(|p| p == "LOGON"));
}

#[tokio::test(start_paused = true)]
async fn a_handshake_that_never_answers_times_out_as_a_failed_dial() {
    let backend = Backend::new(|_, _| None);
    let client = backend
        .builder()
        .backoff(fast_backoff())
        .connect_timeout(Duration::from_millis(300))
        .handshake(|mut conn: Connection| async move {
            conn.ready()
                .await?
                .call(Bytes::from_static(b"LOGON"))
                .await?;
            Ok::<_, anet::Error>(())
        })
        .build();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stats = client.stats().endpoints[0].clone();
    assert!(stats.handshake_failures >= 2, "{stats:?}");
    assert!(!stats.up);
}

// ---------------------------------------------------------------- heartbeat

#[tokio::test(start_paused = true)]
async fn heartbeats_go_only_to_an_idle_connection() {
    let backend = Backend::echo();
    let client = backend
        .builder()
        .heartbeat(Heartbeat::new(Duration::from_secs(1), "HB"))
        .build();
    // Busy for 5 s: a request every 100 ms.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        call(&client, b"work").await.expect("call");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(backend.count(b"HB"), 0, "a busy connection got a heartbeat");
    // Idle for 3.6 s: one heartbeat per idle interval (sampled every quarter).
    tokio::time::sleep(Duration::from_millis(3600)).await;
    let beats = backend.count(b"HB");
    assert!((2..=3).contains(&beats), "{beats} heartbeats in 3.6 s idle");
    let stats = client.stats().endpoints[0].clone();
    assert_eq!(stats.heartbeat_misses, 0);
    assert_eq!(backend.connector.dials.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_misses_its_heartbeat_and_is_replaced() {
    // The first connection answers one request, then goes silent without
    // closing (a half-open connection); later ones answer everything.
    let answered = Arc::new(AtomicUsize::new(0));
    let a = answered.clone();
    let backend = Backend::new(move |conn, frame| {
        if conn == 0 && a.fetch_add(1, Ordering::SeqCst) >= 1 {
            return None;
        }
        Some(frame.payload.clone())
    });
    let client = backend
        .builder()
        .heartbeat(Heartbeat::new(Duration::from_secs(1), "HB").timeout(Duration::from_millis(500)))
        .build();
    assert_eq!(call(&client, b"one").await.expect("call"), "one");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stats = client.stats().endpoints[0].clone();
    assert_eq!(stats.heartbeat_misses, 1, "{stats:?}");
    assert_eq!(backend.connector.dials.load(Ordering::SeqCst), 2);
    assert_eq!(
        stats.last_error.expect("last error").kind(),
        Kind::ConnectionLost
    );
    // The replacement serves.
    assert_eq!(call(&client, b"two").await.expect("call"), "two");
    assert!(stats.up);
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_reply_that_fails_its_check_retires_the_connection() {
    let backend = Backend::echo_except("HB", b"HB99");
    let client = backend
        .builder()
        .heartbeat(Heartbeat::new(Duration::from_secs(1), "HB").check(|r| r == "HB00"))
        .build();
    call(&client, b"one").await.expect("call");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let stats = client.stats().endpoints[0].clone();
    assert!(stats.heartbeat_misses >= 1, "{stats:?}");
    assert!(backend.connector.dials.load(Ordering::SeqCst) >= 2);
}

// ---------------------------------------------------------------- max age, idle shrink

#[tokio::test(start_paused = true)]
async fn connections_past_their_max_age_retire_without_failing_a_request() {
    let backend = Backend::new(|_, frame| Some(frame.payload.clone()));
    let client = backend
        .builder()
        .connections_per_endpoint(2, 4)
        .max_connection_age(Some(Duration::from_secs(1)))
        .retry(RetryPolicy::new(0))
        .build();
    client
        .wait_connected(Duration::from_secs(1))
        .await
        .expect("warm");
    let total = echo_for(
        &client,
        8,
        Duration::from_secs(5),
        Duration::from_millis(10),
    )
    .await;
    assert!(total > 1000, "{total}");
    let stats = client.stats().endpoints[0].clone();
    assert!(stats.retired >= 6, "{stats:?}");
    assert_eq!(stats.errors.total(), 0);
    assert!(backend.connector.dials.load(Ordering::SeqCst) >= 8);
    assert!(stats.connections >= 2);
}

#[tokio::test(start_paused = true)]
async fn a_pool_that_grew_under_load_shrinks_to_its_minimum_when_idle() {
    let slow =
        MemoryConnector::new(|io| serve_slow(io, Arc::new(|_, f: &Frame| Some(f.payload.clone()))));
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(slow.clone())
        .max_in_flight(4)
        .connections_per_endpoint(1, 4)
        .idle_timeout(Some(Duration::from_secs(2)))
        .build();
    let mut calls = tokio::task::JoinSet::new();
    for round in 0..20 {
        for i in 0..16 {
            let client = client.clone();
            calls.spawn(async move { client.call(Bytes::from(format!("{round}-{i}"))).await });
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    while let Some(r) = calls.join_next().await {
        r.expect("task").expect("call");
    }
    let grown = client.stats().endpoints[0].connections;
    assert!(grown >= 3, "the pool grew to {grown}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stats = client.stats().endpoints[0].clone();
    assert_eq!(stats.connections, 1, "{stats:?}");
    assert_eq!(stats.retired as usize, grown - 1);
    assert!(stats.up);
    call(&client, b"still").await.expect("call");
}

/// Answers every request 50 ms later.
async fn serve_slow(io: DuplexStream, answer: Answer) {
    let (read, write) = tokio::io::split(io);
    let (tx, writer) = spawn_writer(write);
    let mut frames = FramedRead::new(read, FrameCodec::new());
    while let Some(Ok(frame)) = frames.next().await {
        if let Some(reply) = answer(0, &frame) {
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = tx.send(Some(encode(&frame.tag, &reply)));
            });
        }
    }
    let _ = tx.send(None);
    let _ = writer.await;
}

// ---------------------------------------------------------------- classifier

fn hsm_error(reply: &Bytes) -> Classification {
    if reply.starts_with(b"ER") {
        Classification::EndpointFailure
    } else if reply.starts_with(b"RESET") {
        Classification::ConnectionFailure
    } else {
        Classification::Success
    }
}

#[tokio::test(start_paused = true)]
async fn replies_classified_as_endpoint_failures_mark_it_down_while_the_connection_stays() {
    let backend = Backend::echo_except("bad", b"ER15");
    let client = backend
        .builder()
        .pool(
            PoolConfig::new()
                .failure_threshold(3)
                .backoff(fast_backoff())
                .probation(Duration::from_secs(2)),
        )
        .retry(RetryPolicy::new(0))
        .classify(hsm_error)
        .build();
    // A success between failures ends the streak.
    for payload in [&b"bad"[..], b"bad", b"ok", b"bad", b"bad"] {
        let reply = client
            .call(Bytes::from_static(payload))
            .await
            .expect("delivered");
        assert_eq!(reply, if payload == b"ok" { "ok" } else { "ER15" });
    }
    tokio::task::yield_now().await;
    assert!(client.stats().endpoints[0].up);
    // The third in a row: the caller still gets the reply; the endpoint goes down.
    assert_eq!(call(&client, b"bad").await.expect("delivered"), "ER15");
    assert!(
        eventually(Duration::from_secs(1), || !client.stats().endpoints[0].up).await,
        "marked down"
    );
    let stats = client.stats().endpoints[0].clone();
    assert_eq!(stats.classified_failures, 5);
    assert_eq!(stats.connections, 1, "its connection stays");
    assert_eq!(stats.state, EndpointState::Down);
    let err = call(&client, b"ok").await.expect_err("down");
    assert_eq!(err.kind(), Kind::Unavailable);
    // After the backoff it is back on probation, on the same connection.
    assert!(eventually(Duration::from_secs(2), || client.stats().endpoints[0].up).await);
    assert!(client.stats().endpoints[0].on_probation);
    assert_eq!(call(&client, b"ok").await.expect("back"), "ok");
    // On probation a single failure takes it down again.
    assert_eq!(call(&client, b"bad").await.expect("delivered"), "ER15");
    assert!(eventually(Duration::from_secs(1), || !client.stats().endpoints[0].up).await);
    assert_eq!(backend.connector.dials.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_reply_classified_as_a_connection_failure_retires_the_connection() {
    let backend = Backend::echo_except("desync", b"RESET");
    let client = backend.builder().classify(hsm_error).build();
    assert_eq!(call(&client, b"one").await.expect("call"), "one");
    assert_eq!(call(&client, b"desync").await.expect("delivered"), "RESET");
    assert!(
        eventually(Duration::from_secs(1), || backend
            .connector
            .dials
            .load(Ordering::SeqCst)
            == 2)
        .await
    );
    assert_eq!(call(&client, b"two").await.expect("call"), "two");
    let stats = client.stats().endpoints[0].clone();
    assert_eq!(stats.classified_connection_failures, 1);
    assert_eq!(stats.classified_failures, 0);
    assert!(stats.up);
}

#[tokio::test(start_paused = true)]
async fn without_a_classifier_every_reply_is_a_success() {
    let backend = Backend::new(|_, _| Some(Bytes::from_static(b"ER15")));
    let client = backend.builder().build();
    for _ in 0..10 {
        assert_eq!(call(&client, b"x").await.expect("call"), "ER15");
    }
    let stats = client.stats().endpoints[0].clone();
    assert!(stats.up);
    assert_eq!(stats.classified_failures, 0);
}

// ---------------------------------------------------------------- warm-up (real TCP)

fn named(name: &'static str) -> impl Handler {
    service_fn(move |_req: Request| async move {
        Ok::<_, Infallible>(Bytes::from_static(name.as_bytes()))
    })
}

#[tokio::test]
async fn wait_connected_returns_once_every_endpoint_has_its_minimum() {
    let a = start_server(Server::builder(), named("A")).await;
    let b = start_server(Server::builder(), named("B")).await;
    let client = Client::builder()
        .endpoint(a.addr)
        .endpoint(b.addr)
        .connections_per_endpoint(3, 4)
        .build();
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .expect("connected");
    let stats = client.stats();
    for e in &stats.endpoints {
        assert!(e.up);
        assert_eq!(e.connections, 3, "{e:?}");
        assert_eq!(e.state, EndpointState::Up);
    }
}

#[tokio::test]
async fn wait_connected_times_out_naming_the_endpoint_that_is_down() {
    // A port with nothing behind it.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let client = Client::builder().endpoint(dead).build();
    let start = Instant::now();
    let err = client
        .wait_connected(Duration::from_millis(300))
        .await
        .expect_err("nothing listens");
    assert_eq!(err.kind(), Kind::Timeout);
    assert!(format!("{err:?}").contains(&dead.to_string()), "{err:?}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

// ---------------------------------------------------------------- failover groups (real TCP)

#[tokio::test]
async fn the_standby_takes_traffic_while_the_primary_is_dead_and_gives_it_back_after_probation() {
    let primary = start_server(Server::builder(), named("A")).await;
    let standby = start_server(Server::builder(), named("B")).await;
    let primary_addr = primary.addr;
    let probation = Duration::from_millis(500);
    let client = Client::builder()
        .endpoint(primary_addr)
        .endpoint_with_priority(standby.addr, 1)
        .pool(
            PoolConfig::new()
                .backoff(
                    Backoff::new()
                        .base(Duration::from_millis(20))
                        .max(Duration::from_millis(100)),
                )
                .probation(probation),
        )
        .build();
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .expect("both connected");
    for _ in 0..50 {
        assert_eq!(
            call(&client, b"x").await.expect("call"),
            "A",
            "primary first"
        );
    }

    // Kill the primary: only requests in flight on it may fail.
    drop(primary);
    let mut failures = Vec::new();
    let mut standby_replies = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while standby_replies < 50 && Instant::now() < deadline {
        match call(&client, b"x").await {
            Ok(reply) => {
                if reply == "B" {
                    standby_replies += 1;
                } else {
                    assert_eq!(standby_replies, 0, "back to a dead primary");
                }
            }
            Err(e) => failures.push(e.kind()),
        }
    }
    assert_eq!(standby_replies, 50, "the standby took over");
    assert!(
        failures.len() <= 1,
        "only the request in flight may fail: {failures:?}"
    );
    assert!(
        failures.iter().all(|k| *k == Kind::ConnectionLost),
        "{failures:?}"
    );
    let stats = client.stats();
    assert!(!stats.endpoint(primary_addr).expect("primary").up);
    assert!(
        stats
            .endpoint(primary_addr)
            .expect("primary")
            .down_since
            .is_some()
    );

    // Restart it: traffic returns once its probation has passed, not before.
    let restarted = restart_server(primary_addr, named("A")).await;
    assert!(
        eventually(Duration::from_secs(20), || client
            .stats()
            .endpoint(primary_addr)
            .is_some_and(|e| e.up))
        .await,
        "primary reconnected"
    );
    let up_at = Instant::now();
    let mut first_a = None;
    let deadline = up_at + Duration::from_secs(20);
    while Instant::now() < deadline {
        let reply = call(&client, b"x")
            .await
            .expect("no failures on the way back");
        if reply == "A" {
            // Routed to the primary only once its probation had passed (it
            // goes back on probation only after a failure): read after the
            // reply, so the check holds however late this task runs.
            let stats = client.stats();
            let primary = stats.endpoint(primary_addr).expect("primary");
            assert!(!primary.on_probation, "traffic returned during probation");
            first_a = Some(up_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first_a.expect("traffic returned to the primary");
    for _ in 0..50 {
        assert_eq!(call(&client, b"x").await.expect("call"), "A");
    }
    drop(restarted);
}

#[tokio::test]
async fn one_group_of_endpoints_balances_as_before() {
    let a = start_server(Server::builder(), named("A")).await;
    let b = start_server(Server::builder(), named("B")).await;
    let client = Client::builder()
        .endpoint_with_priority(a.addr, 2)
        .endpoint_with_priority(b.addr, 2)
        .build();
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .expect("connected");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        seen.insert(call(&client, b"x").await.expect("call"));
    }
    assert_eq!(seen.len(), 2, "both endpoints of the group serve");
    assert!(client.stats().endpoints.iter().all(|e| e.priority == 2));
}

// ---------------------------------------------------------------- MakePool (real TCP)

#[tokio::test]
async fn pools_made_by_make_pool_run_the_same_handshake() {
    let seen: Arc<Mutex<Vec<Bytes>>> = Arc::default();
    let s = seen.clone();
    let server = start_server(
        Server::builder(),
        service_fn(move |req: Request| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push(req.payload().clone());
                Ok::<_, Infallible>(req.into_payload())
            }
        }),
    )
    .await;
    let make = anet::client::MakePool::new(anet::client::Connector::new()).lifecycle(
        anet::client::Lifecycle::new().handshake(|mut conn: Connection| async move {
            conn.ready()
                .await?
                .call(Bytes::from_static(b"LOGON"))
                .await?;
            Ok::<_, anet::Error>(())
        }),
    );
    let pool = make.oneshot(server.addr).await.expect("pool");
    let reply = pool
        .oneshot(Bytes::from_static(b"work"))
        .await
        .expect("call");
    assert_eq!(reply, "work");
    assert_eq!(*seen.lock().unwrap(), ["LOGON", "work"]);
}

// ---------------------------------------------------------------- heartbeat and age over real TCP

#[tokio::test]
async fn over_tcp_a_peer_that_stops_answering_without_closing_is_found_and_replaced() {
    let mut server = anet_tests::ManualServer::bind().await;
    let client = Client::builder()
        .endpoint(server.addr)
        .connection(anet::client::ConnectionConfig::new().close_grace(Duration::from_millis(300)))
        .heartbeat(
            Heartbeat::new(Duration::from_millis(200), "HB").timeout(Duration::from_millis(200)),
        )
        .build();
    let mut first = server.accept().await;
    let answered = tokio::spawn({
        let client = client.clone();
        async move { client.call(Bytes::from_static(b"one")).await }
    });
    let frame = first.recv().await;
    assert_eq!(frame.payload, "one");
    first.reply(&frame, b"one").await;
    assert_eq!(answered.await.expect("join").expect("call"), "one");
    // Now silent: read heartbeats, answer none, keep the socket open.
    let mut heartbeats = 0;
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(Ok(frame)) = first.frames_next().await {
            assert_eq!(frame.payload, "HB");
            heartbeats += 1;
        }
    })
    .await;
    assert!(closed.is_ok(), "the client closed the silent connection");
    assert_eq!(heartbeats, 1, "one missed heartbeat is enough");
    // A replacement is dialed and serves.
    let mut second = server.accept().await;
    let answered = tokio::spawn({
        let client = client.clone();
        async move { client.call(Bytes::from_static(b"two")).await }
    });
    let frame = second.recv().await;
    second.reply(&frame, b"two").await;
    assert_eq!(answered.await.expect("join").expect("call"), "two");
    assert_eq!(client.stats().endpoints[0].heartbeat_misses, 1);
}

#[tokio::test]
async fn over_tcp_connections_retire_at_their_max_age_without_failing_requests() {
    let server = start_server(Server::builder(), anet_tests::echo()).await;
    let client = Client::builder()
        .endpoint(server.addr)
        .connections_per_endpoint(2, 4)
        .max_connection_age(Some(Duration::from_millis(300)))
        .retry(RetryPolicy::new(0))
        .build();
    client
        .wait_connected(Duration::from_secs(10))
        .await
        .expect("connected");
    echo_for(&client, 16, Duration::from_secs(2), Duration::ZERO).await;
    let stats = client.stats().endpoints[0].clone();
    assert!(stats.retired >= 3, "{stats:?}");
    assert_eq!(stats.errors.total(), 0, "{stats:?}");
}

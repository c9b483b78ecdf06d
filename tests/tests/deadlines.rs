//! Deadlines and timeouts of client requests: failing fast with every endpoint
//! down, waiting for room, stalled servers, quarantine, retries under one
//! deadline, and every duration setter at zero and at its maximum. Tests of
//! exact bounds run on paused time over in-memory pipes
//! ([`anet_tests::MemoryConnector`]).

use anet_tests::clients::assert_times_out_at;
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use anet::{
    Kind,
    client::{Backoff, Client, ConnectionConfig, PoolConfig, RetryPolicy},
    server::{Request, Server},
};
use anet_tests::clients::{NO_BACKOFF, closed_port};
use anet_tests::{Action, MemoryConnector, eventually, memory_addr, memory_scripted, start_server};
use bytes::Bytes;
use tower::service_fn;

const WAIT: Duration = Duration::from_secs(20);

/// Paused time: every dial is refused at once, so any time that passes is time
/// the client chose to wait.
#[tokio::test(start_paused = true)]
async fn with_every_endpoint_down_requests_fail_fast_not_at_the_request_timeout() {
    let refuse = service_fn(|_: SocketAddr| async {
        Err::<tokio::io::DuplexStream, _>(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        ))
    });
    let client = Client::builder()
        .endpoints([closed_port(), closed_port()])
        .connector(refuse)
        .connect_timeout(Duration::from_millis(500))
        .request_timeout(Duration::from_secs(30))
        .build();
    for _ in 0..20 {
        let started = tokio::time::Instant::now();
        let err = tokio::time::timeout(
            Duration::from_secs(5),
            client.call(Bytes::from_static(b"x")),
        )
        .await
        .expect("no hang")
        .expect_err("down");
        assert!(
            matches!(err.kind(), Kind::Unavailable | Kind::Connect),
            "{err:?}"
        );
        assert!(err.is_unsent());
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "within the connect timeout: {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_for_room_times_out_at_its_deadline_and_is_never_written() {
    // One connection with room for one request; the server holds it for 600 ms.
    let (connector, counters) = memory_scripted(|_, frame| {
        if frame.payload == "first" {
            Action::Echo(Duration::from_millis(600))
        } else {
            Action::Echo(Duration::ZERO)
        }
    });
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(connector)
        .connections_per_endpoint(1, 1)
        // Room for held tags too: the first request's timeout must not retire
        // the connection (one held tag of a limit of one would).
        .connection(ConnectionConfig::new().max_in_flight(1).held_tag_limit(4))
        .request_timeout(Duration::from_millis(200))
        .retry(RetryPolicy::new(0))
        .build();
    client.call(Bytes::from_static(b"warm")).await.expect("ok");
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.call(Bytes::from_static(b"first")).await }
    });
    assert!(eventually(WAIT, || counters.requests.load(Ordering::SeqCst) == 2).await);
    // Paused time: exactly the 200 ms deadline, not the 600 ms wait for room.
    assert_times_out_at(&client, b"second", 200, 20).await;
    let _ = first.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        counters.requests.load(Ordering::SeqCst),
        2,
        "the timed-out request was never written"
    );
}

#[tokio::test(start_paused = true)]
async fn requests_stuck_behind_a_server_that_never_reads_end_at_their_deadline() {
    // Accepts and never reads: once the pipe fills, writes block and requests
    // queue inside the connection, unwritten.
    let never_reads = MemoryConnector::new(|io| async move {
        std::future::pending::<()>().await;
        drop(io);
    });
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(never_reads)
        .connections_per_endpoint(1, 1)
        .request_timeout(Duration::from_millis(300))
        .retry(RetryPolicy::new(0))
        .build();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..150u8 {
        let client = client.clone();
        calls.spawn(async move {
            let started = tokio::time::Instant::now();
            let result = client.call(Bytes::from(vec![i; 60_000])).await;
            (
                started.elapsed(),
                result.map_err(|e| (e.kind(), e.is_unsent())),
            )
        });
    }
    let results = tokio::time::timeout(WAIT, calls.join_all())
        .await
        .expect("no call hangs");
    let mut unsent = 0;
    for (elapsed, result) in &results {
        assert!(
            *elapsed <= Duration::from_millis(310),
            "{elapsed:?} {result:?}"
        );
        let Err((kind, was_unsent)) = result else {
            panic!("nothing can be answered: {result:?}");
        };
        assert_eq!(*kind, Kind::Timeout);
        unsent += usize::from(*was_unsent);
    }
    assert!(
        unsent > 0,
        "requests queued behind the blocked write were never written"
    );
}

#[tokio::test(start_paused = true)]
async fn requests_timed_out_by_the_connection_give_their_capacity_back_after_quarantine() {
    let (connector, counters) = memory_scripted(|_, _| Action::Ignore);
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(connector)
        .connections_per_endpoint(1, 1)
        .connection(
            ConnectionConfig::new()
                .max_in_flight(64)
                .quarantine(Duration::from_millis(100))
                .held_tag_limit(16_384),
        )
        .request_timeout(Duration::from_millis(30))
        .retry(RetryPolicy::new(0))
        .build();
    let mut calls = tokio::task::JoinSet::new();
    for w in 0..64 {
        let client = client.clone();
        calls.spawn(async move {
            let mut kinds = Vec::new();
            for i in 0..16 {
                let started = tokio::time::Instant::now();
                let err = client
                    .call(Bytes::from(format!("{w}-{i}")))
                    .await
                    .expect_err("never answered");
                assert!(
                    started.elapsed() <= Duration::from_millis(40),
                    "{:?}",
                    started.elapsed()
                );
                kinds.push(err.kind());
            }
            kinds
        });
    }
    let kinds: Vec<Kind> = tokio::time::timeout(WAIT, calls.join_all())
        .await
        .expect("no call hangs")
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(kinds.len(), 1024);
    assert!(kinds.iter().all(|k| *k == Kind::Timeout), "{kinds:?}");
    // Quarantined tags held the window while their late responses might come;
    // once the quarantine passes the window is whole again.
    assert!(
        eventually(WAIT, || client.stats().in_flight() == 0).await,
        "{:?}",
        client.stats()
    );
    assert!(counters.requests.load(Ordering::SeqCst) > 0);
}

/// A retry keeps the call's deadline: the server reads each request, holds it for
/// 1 s and drops the connection. With a 1.5 s deadline the second attempt must end
/// with a timeout at 1.5 s, not run for another second (as it would if each retry
/// started a deadline of its own).
#[tokio::test(start_paused = true)]
async fn a_retried_request_keeps_the_deadline_of_its_call() {
    let hold = Duration::from_secs(1);
    let server = MemoryConnector::new(move |mut io| async move {
        let codec = anet_proto::FrameCodec::new();
        let _request = anet_proto::read_frame(&mut io, &codec).await;
        tokio::time::sleep(hold).await;
        drop(io);
    });
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(server.clone())
        .request_timeout(Duration::from_millis(1500))
        .retry(RetryPolicy::new(5).idempotent(true))
        // Each connection ends unanswered (a failed dial); without a backoff
        // the retries redial at once instead of failing `Unavailable`.
        .backoff(NO_BACKOFF)
        .build();
    assert_times_out_at(&client, b"held", 1500, 10).await;
    assert!(server.dials.load(Ordering::SeqCst) >= 2, "it was retried");
}

/// Durations too large to add to the clock (`Duration::MAX`, "no limit") for
/// every timeout of the client and the server mean no limit, not a panic in a
/// driver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_timeouts_work() {
    let forever = Some(Duration::MAX);
    let config = Server::builder()
        .idle_timeout(forever)
        .read_timeout(forever)
        .write_timeout(forever)
        .shutdown_grace(Duration::MAX);
    let echo = service_fn(|r: Request| async move { Ok::<_, Infallible>(r.into_payload()) });
    let server = start_server(config, echo).await;
    for limited in [false, true] {
        let mut builder = Client::builder()
            .endpoint(server.addr)
            .request_timeout(Duration::MAX)
            .connect_timeout(Duration::MAX)
            .connection(
                ConnectionConfig::new()
                    .quarantine(Duration::MAX)
                    .close_grace(Duration::MAX)
                    .read_timeout(forever),
            );
        if limited {
            builder = builder.concurrency_limit(Some(8));
        }
        let client = builder.build();
        for _ in 0..3 {
            let reply = tokio::time::timeout(WAIT, client.call(Bytes::from_static(b"forever")))
                .await
                .expect("answered")
                .expect("no error");
            assert_eq!(reply, "forever");
        }
        // An abandoned request goes into (unbounded) quarantine without trouble.
        drop(client.call(Bytes::from_static(b"dropped")));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            client.call(Bytes::from_static(b"again")).await.expect("ok"),
            "again"
        );
    }
}

/// Sends two requests and checks that each ends (a response or a typed error)
/// within the test's wait; then closes the client, which must finish too.
async fn two_requests_end_and_the_client_closes(client: Client, case: &str) {
    for payload in [&b"first"[..], b"second"] {
        let payload = Bytes::from_static(payload);
        match tokio::time::timeout(WAIT, client.call(payload.clone())).await {
            Err(_) => panic!("{case}: request did not end"),
            Ok(Ok(reply)) => assert_eq!(reply, payload, "{case}"),
            Ok(Err(_typed)) => {}
        }
    }
    client.close();
    tokio::time::timeout(WAIT, client.closed())
        .await
        .unwrap_or_else(|_| panic!("{case}: client did not close"));
}

/// Every public setter that takes a `Duration`, on the client and on the server,
/// given `Duration::ZERO` and `Duration::MAX`: requests still end with a response
/// or a typed error, shutdown still finishes, and nothing panics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_duration_setter_takes_zero_and_max_and_requests_still_end() {
    use anet::client::{ClientBuilder, Connector, RetryBudget};

    type ClientSetter = fn(ClientBuilder, Duration, SocketAddr) -> ClientBuilder;
    let client_setters: [(&str, ClientSetter); 12] = [
        ("request_timeout", |b, d, _| b.request_timeout(d)),
        ("connect_timeout", |b, d, _| b.connect_timeout(d)),
        ("keepalive", |b, d, _| b.keepalive(Some(d))),
        ("dns interval", |b, d, addr| {
            b.dns("backend.test:1500", d).resolver(
                move |_: &str| -> anet::client::future::ResolveFuture {
                    Box::pin(async move { Ok(vec![addr]) })
                },
            )
        }),
        // A zero period is a documented panic (no rate is "1 per 0 s"); the
        // smallest valid one stands in for it.
        ("rate_limit", |b, d, _| {
            b.rate_limit(1, d.max(Duration::from_nanos(1)))
        }),
        ("backoff", |b, d, _| {
            b.backoff(Backoff::new().base(d).max(d))
        }),
        ("pool probation and backoff", |b, d, _| {
            b.pool(
                PoolConfig::new()
                    .probation(d)
                    .backoff(Backoff::new().base(d).max(d)),
            )
        }),
        ("quarantine", |b, d, _| {
            b.connection(ConnectionConfig::new().quarantine(d))
        }),
        ("close_grace", |b, d, _| {
            b.connection(ConnectionConfig::new().close_grace(d))
        }),
        ("connection read_timeout", |b, d, _| {
            b.connection(ConnectionConfig::new().read_timeout(Some(d)))
        }),
        ("retry budget ttl", |b, d, _| {
            b.retry(RetryPolicy::default().budget(Arc::new(RetryBudget::new(d, 10, 0.2))))
        }),
        ("request_timeout with a limit", |b, d, _| {
            b.request_timeout(d).concurrency_limit(Some(4))
        }),
    ];
    type ServerSetter = fn(anet::server::Builder, Duration) -> anet::server::Builder;
    let server_setters: [(&str, ServerSetter); 4] = [
        ("idle_timeout", |b, d| b.idle_timeout(Some(d))),
        ("read_timeout", |b, d| b.read_timeout(Some(d))),
        ("write_timeout", |b, d| b.write_timeout(Some(d))),
        ("shutdown_grace", |b, d| b.shutdown_grace(d)),
    ];

    let echo = service_fn(|r: Request| async move { Ok::<_, Infallible>(r.into_payload()) });
    let server = start_server(Server::builder(), echo).await;
    for d in [Duration::ZERO, Duration::MAX] {
        for (name, set) in client_setters {
            let case = format!("client {name} = {d:?}");
            let builder = Client::builder();
            let builder = if name == "dns interval" {
                builder
            } else {
                builder.endpoint(server.addr)
            };
            let client = set(builder, d, server.addr).build();
            two_requests_end_and_the_client_closes(client, &case).await;
        }
        let connector = Connector::new().connect_timeout(d).keepalive(Some(d));
        let connected = tokio::time::timeout(WAIT, connector.connect(server.addr)).await;
        assert!(connected.is_ok(), "connector {d:?}: connect did not end");

        for (name, set) in server_setters {
            let case = format!("server {name} = {d:?}");
            let mut server = start_server(set(Server::builder(), d), echo).await;
            let client = Client::builder().endpoint(server.addr).build();
            two_requests_end_and_the_client_closes(client, &case).await;
            let stopped = tokio::time::timeout(WAIT, server.shutdown()).await;
            assert!(
                matches!(stopped, Ok(Ok(Ok(())))),
                "{case}: server did not shut down: {stopped:?}"
            );
        }
    }
}

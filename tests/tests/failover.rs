//! The client across a failing backend over real loopback TCP: a killed server
//! fails only its in-flight requests, idempotent ones are retried elsewhere, a
//! down endpoint is skipped and rejoins, redials and replaced connections,
//! transparent retries of unsent requests.

use anet_tests::clients::{call_all_ok, spawn_load};
use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use anet::{
    Kind,
    client::{Client, ClientBuilder, ConnectionConfig, PoolConfig, RetryPolicy},
    server::Server,
};
use anet_tests::clients::{
    NO_BACKOFF, closed_port, delayed_echo_server as echo_server, fast_backoff,
};
use anet_tests::{Action, MemoryConnector, eventually, memory_addr, start_scripted};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower::service_fn;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_fails_only_its_in_flight_requests_and_comes_back_on_the_same_port() {
    let a = echo_server(Duration::from_millis(1), None).await;
    let b = echo_server(Duration::from_millis(1), None).await;
    let c = echo_server(Duration::from_millis(1), None).await;
    let killed_addr = b.addr;
    let client = Client::builder()
        .endpoints([a.addr, b.addr, c.addr])
        .backoff(fast_backoff())
        .build();
    let (stop, run) = spawn_load(&client, 32);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = client
        .stats()
        .endpoint(killed_addr)
        .expect("endpoint")
        .requests;
    assert!(before > 0, "the doomed server had traffic");
    drop(b); // killed: its tasks are aborted and its sockets closed
    assert!(
        eventually(WAIT, || !client
            .stats()
            .endpoint(killed_addr)
            .expect("endpoint")
            .up)
        .await,
        "killed endpoint marked down"
    );
    let after_kill = client
        .stats()
        .endpoint(killed_addr)
        .expect("endpoint")
        .requests;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        client
            .stats()
            .endpoint(killed_addr)
            .expect("endpoint")
            .requests,
        after_kill,
        "no traffic to a down endpoint"
    );

    // The backend restarts on the same port: reconnected after backoff, used again.
    let b2 = echo_server(Duration::from_millis(1), Some(killed_addr)).await;
    assert!(
        eventually(WAIT, || b2.stats.snapshot().requests > 100).await,
        "restarted server receives traffic again"
    );
    stop.store(true, Ordering::Relaxed);
    let (ok, errors, mismatches) = run.await.expect("load");
    assert_eq!(mismatches, 0);
    assert!(ok > 1000, "traffic kept flowing: {ok}");
    for kind in &errors {
        assert_eq!(
            *kind,
            Kind::ConnectionLost,
            "only in-flight requests fail: {errors:?}"
        );
    }
    assert!(
        errors.len() <= 32,
        "at most one in-flight request per caller failed"
    );
    let stats = client.stats();
    assert!(
        stats.endpoint(killed_addr).expect("endpoint").reconnects >= 1,
        "{stats:?}"
    );
    assert!(a.stats.snapshot().requests > 0 && c.stats.snapshot().requests > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_lost_with_a_killed_server_are_retried_elsewhere() {
    let a = echo_server(Duration::from_millis(2), None).await;
    let b = echo_server(Duration::from_millis(2), None).await;
    let client = Client::builder()
        .endpoints([a.addr, b.addr])
        .retry(RetryPolicy::new(3).idempotent(true))
        .backoff(fast_backoff())
        .build();
    let (stop, run) = spawn_load(&client, 32);
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, errors, mismatches) = run.await.expect("load");
    assert_eq!(mismatches, 0);
    assert!(
        errors.is_empty(),
        "every lost request was retried: {errors:?}"
    );
    assert!(ok > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_endpoint_is_skipped_and_rejoins_after_its_backoff() {
    let a = echo_server(Duration::ZERO, None).await;
    let dead = closed_port();
    let client = Client::builder()
        .endpoints([a.addr, dead])
        .backoff(fast_backoff())
        .build();
    for i in 0..100 {
        client
            .call(Bytes::from(format!("{i}")))
            .await
            .expect("a down endpoint is skipped");
    }
    let stats = client.stats();
    let dead_stats = stats.endpoint(dead).expect("still known");
    assert!(!dead_stats.up);
    assert!(dead_stats.connect_failures >= 1);
    assert_eq!(dead_stats.requests, 0);
    // It answers again: it rejoins (no permanent eviction).
    let revived = echo_server(Duration::ZERO, Some(dead)).await;
    assert!(eventually(WAIT, || client.stats().endpoint(dead).is_some_and(|e| e.up)).await);
    for i in 0..200 {
        client.call(Bytes::from(format!("{i}"))).await.expect("ok");
    }
    assert!(
        revived.stats.snapshot().requests > 0,
        "traffic reaches the revived endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_grows_under_load_up_to_its_maximum() {
    // 300 requests of 100 ms over windows of 8: callers that queued on the
    // first connection's full window keep asking for more connections (each
    // time they find it full), not only the first time: the pool reaches its
    // maximum even when every request was issued before the second connection.
    let server = echo_server(Duration::from_millis(100), None).await;
    let client = Client::builder()
        .endpoint(server.addr)
        .connections_per_endpoint(1, 3)
        .connection(ConnectionConfig::new().max_in_flight(8))
        .pool(PoolConfig::new().min_connections(1).max_connections(3))
        .request_timeout(Duration::from_secs(30))
        .build();
    call_all_ok(&client, 300).await;
    let stats = client.stats();
    assert_eq!(stats.connections(), 3, "{stats:?}");
    assert_eq!(server.stats.snapshot().connections_accepted, 3);
}

/// The same growth on paused time over in-memory pipes, where the order is
/// fixed: the first connection comes, then all 300 requests route (8 are sent,
/// 292 queue on its full window) before the pool dials the second. The
/// queued requests must hear of each new connection (and route again), or the
/// pool stops at two connections, the second one idle.
#[tokio::test(start_paused = true)]
async fn requests_queued_before_the_pool_grew_move_to_the_new_connections() {
    let server = MemoryConnector::new(move |io| async move {
        let service = service_fn(|req: anet::server::Request| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, std::convert::Infallible>(req.into_payload())
        });
        Server::builder().serve_connection(io, None, service).await;
    });
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(server.clone())
        .connection(ConnectionConfig::new().max_in_flight(8))
        .pool(PoolConfig::new().min_connections(1).max_connections(3))
        .request_timeout(Duration::from_secs(30))
        .build();
    let started = tokio::time::Instant::now();
    call_all_ok(&client, 300).await;
    let stats = client.stats();
    assert_eq!(stats.connections(), 3, "{stats:?}");
    assert_eq!(server.dials.load(Ordering::SeqCst), 3);
    // 300 requests of 100 ms, 8 at a time per connection: 38 rounds on one
    // connection, 13 on three (paused time: exact but for the rounds run
    // before the pool grew).
    assert!(
        started.elapsed() < Duration::from_millis(1_600),
        "the new connections carried their share: {:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_connection_closed_by_the_server_is_replaced_at_once() {
    let server = MemoryConnector::new(move |io| async move {
        Server::builder()
            .on_error(anet::server::OnError::Close)
            .serve_connection(io, None, anet_tests::fails_on_fail())
            .await;
    });
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(server.clone())
        .retry(RetryPolicy::new(0))
        .build();
    for round in 0..50 {
        assert_eq!(
            client.call(Bytes::from_static(b"ok")).await.expect("ok"),
            "ok"
        );
        let err = client
            .call(Bytes::from_static(b"fail"))
            .await
            .expect_err("closed");
        assert_eq!(err.kind(), Kind::ConnectionLost, "round {round}");
        let started = tokio::time::Instant::now();
        let reply = client.call(Bytes::from_static(b"again")).await;
        assert_eq!(
            reply.expect("replacement connection"),
            "again",
            "round {round}"
        );
        // Paused time: no backoff before the replacement (the default's base
        // is 100 ms).
        assert!(
            started.elapsed() < Duration::from_millis(50),
            "round {round}: {:?}",
            started.elapsed()
        );
    }
    assert_eq!(
        server.dials.load(Ordering::SeqCst),
        51,
        "one replacement per round"
    );
}

/// While an endpoint's only connection is being replaced, requests wait for the
/// new one: none fails `Unavailable` (the pool announces the redial before it
/// withdraws the endpoint, and the balancer must read the two flags so that it
/// never sees neither).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_during_a_redial_wait_for_it_and_never_fail_unavailable() {
    const PER_CONNECTION: usize = 20;
    const REDIALS: usize = 1000;
    let server = start_scripted(|n, _| {
        if n % PER_CONNECTION == PER_CONNECTION - 1 {
            Action::Close
        } else {
            Action::Echo(Duration::ZERO)
        }
    })
    .await;
    let client = Client::builder()
        .endpoint(server.addr)
        .connections_per_endpoint(1, 1)
        .request_timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(10))
        .pool(
            PoolConfig::new()
                .min_connections(1)
                .max_connections(1)
                // Every close counts as a failure; the endpoint must not be
                // marked down for them (that would be a fair `Unavailable`).
                .failure_threshold(u32::MAX)
                .backoff(fast_backoff()),
        )
        .build();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16 {
        let (client, counters) = (client.clone(), server.counters.clone());
        tasks.spawn(async move {
            let mut unavailable = 0;
            let mut n = 0u64;
            while counters.connections.load(Ordering::SeqCst) < REDIALS {
                let payload = Bytes::from(format!("w{w}-{n}"));
                n += 1;
                match client.call(payload.clone()).await {
                    Ok(reply) => assert_eq!(reply, payload),
                    Err(e) if e.kind() == Kind::Unavailable => unavailable += 1,
                    Err(_) => {} // lost with its connection: not the point here
                }
            }
            unavailable
        });
    }
    let unavailable: usize = tokio::time::timeout(Duration::from_secs(120), tasks.join_all())
        .await
        .expect("the load ends")
        .into_iter()
        .sum();
    assert_eq!(unavailable, 0, "requests failed Unavailable during redials");
}

/// A transport whose writes never complete and whose reads fail after a delay:
/// requests queue behind the first one and are never written.
struct StallThenFail {
    fail_at: Pin<Box<tokio::time::Sleep>>,
}

enum TestIo {
    Stall(StallThenFail),
    Tcp(tokio::net::TcpStream),
}

impl AsyncRead for TestIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            TestIo::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            TestIo::Stall(s) => match s.fail_at.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into())),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for TestIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            TestIo::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            TestIo::Stall(_) => Poll::Pending,
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            TestIo::Tcp(s) => Pin::new(s).poll_flush(cx),
            TestIo::Stall(_) => Poll::Pending,
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            TestIo::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            TestIo::Stall(_) => Poll::Ready(Ok(())),
        }
    }
}

use std::future::Future;

fn stall_first_connector(
    dials: Arc<AtomicUsize>,
) -> impl tower::Service<
    SocketAddr,
    Response = TestIo,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<TestIo>> + Send,
> + Clone
+ Send
+ Sync
+ 'static {
    service_fn(move |addr: SocketAddr| {
        let n = dials.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                Ok(TestIo::Stall(StallThenFail {
                    fail_at: Box::pin(tokio::time::sleep(Duration::from_millis(300))),
                }))
            } else {
                Ok(TestIo::Tcp(tokio::net::TcpStream::connect(addr).await?))
            }
        }
    })
}

/// Against an echo server, a client of one connection (write buffer 1) whose
/// first dial stalls, configured further by `configure`: sends `first`, then
/// `second` 50 ms later; returns the first's error and the second's outcome.
async fn first_and_second(
    configure: impl FnOnce(ClientBuilder) -> ClientBuilder,
) -> (anet::Error, Result<Bytes, anet::Error>) {
    let server = echo_server(Duration::ZERO, None).await;
    let client = configure(
        Client::builder()
            .endpoint(server.addr)
            .connections_per_endpoint(1, 1)
            .connection(ConnectionConfig::new().write_buffer(1))
            .connector(stall_first_connector(Arc::default())),
    )
    .build();
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.call(Bytes::from_static(b"first")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = client.call(Bytes::from_static(b"second")).await;
    (
        first.await.expect("join").expect_err("written, then lost"),
        second,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_sent_failure_is_retried_transparently() {
    let (first, second) = first_and_second(|client| {
        // The stalled connection never answered: a failed dial, which would
        // back off; no backoff here, so the retry finds the replacement.
        client.backoff(NO_BACKOFF)
    })
    .await;
    assert_eq!(first.kind(), Kind::ConnectionLost);
    assert_eq!(second.expect("retried on a new connection"), "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retries_the_same_failure_is_not_sent() {
    let (first, second) = first_and_second(|client| client.retry(RetryPolicy::new(0))).await;
    assert_eq!(first.kind(), Kind::ConnectionLost);
    let second = second.expect_err("not retried");
    assert_eq!(second.kind(), Kind::NotSent);
    assert!(second.is_unsent());
}

/// Through the limit layers an attempt fails with its error alone (the
/// request does not come back with it): the call keeps its own copy, so the
/// unsent request is still retried, and the written one still is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_sent_failure_is_retried_through_the_limit_layers() {
    let limits: [fn(ClientBuilder) -> ClientBuilder; 2] = [
        |client| client.concurrency_limit(Some(64)),
        |client| client.rate_limit(1_000_000, Duration::from_secs(1)),
    ];
    for limit in limits {
        let (first, second) = first_and_second(|client| limit(client.backoff(NO_BACKOFF))).await;
        assert_eq!(first.kind(), Kind::ConnectionLost, "written: not resent");
        assert_eq!(second.expect("retried on a new connection"), "second");
    }
}

/// A request queued on a full connection that closes picks again, up to
/// three times; the fourth close fails it `NotSent` and gives the request back
/// with the failure, so the client's retry resends it without a copy of its
/// own (none is kept for a non-idempotent policy without limit layers).
///
/// In-memory pipes, paused time. Window 1. Connections 1 to 4 answer their
/// first request (which proves them: each is replaced at once), hold the
/// second one and close after a second; connection 5 echoes everything. Of
/// 12 concurrent calls, one is answered and one is lost (written) per closed
/// connection; the other four queue through all four closes, pick again
/// three times, fail unsent the fourth, and are answered on connection 5
/// after their retry.
#[tokio::test(start_paused = true)]
async fn a_request_that_ran_out_of_repicks_is_given_back_for_its_retry() {
    use futures_util::{SinkExt, StreamExt};
    const DOOMED: usize = 4;
    const CALLS: usize = 12;
    let dialed = Arc::new(AtomicUsize::new(0));
    let server = MemoryConnector::new({
        let dialed = dialed.clone();
        move |io| {
            let n = dialed.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut framed = tokio_util::codec::Framed::new(io, anet_proto::FrameCodec::new());
                let close_at = tokio::time::Instant::now() + Duration::from_secs(1);
                let serve = async {
                    let mut seen = 0;
                    while let Some(Ok(frame)) = framed.next().await {
                        seen += 1;
                        // Connections that will close answer only their first.
                        if n >= DOOMED || seen == 1 {
                            let _ = framed.send(frame).await;
                        }
                    }
                };
                if n < DOOMED {
                    tokio::select! {
                        () = serve => {}
                        () = tokio::time::sleep_until(close_at) => {}
                    }
                } else {
                    serve.await;
                }
            }
        }
    });
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(server.clone())
        .connection(ConnectionConfig::new().max_in_flight(1))
        .pool(PoolConfig::new().min_connections(1).max_connections(1))
        // Long enough that only the closes end a wait.
        .connect_timeout(Duration::from_secs(60))
        .request_timeout(Duration::from_secs(60))
        .build();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..CALLS {
        let client = client.clone();
        calls.spawn(async move {
            let payload = Bytes::from(format!("call-{i}"));
            (payload.clone(), client.call(payload).await)
        });
    }
    let (mut ok, mut lost) = (0, 0);
    for (payload, result) in calls.join_all().await {
        match result {
            Ok(reply) => {
                assert_eq!(reply, payload);
                ok += 1;
            }
            Err(e) if e.kind() == Kind::ConnectionLost => lost += 1,
            Err(e) => panic!("{payload:?} failed: {e:?}"),
        }
    }
    assert_eq!(dialed.load(Ordering::SeqCst), DOOMED + 1);
    assert_eq!(lost, DOOMED, "one written and lost per closed connection");
    assert_eq!(ok, CALLS - DOOMED);
}

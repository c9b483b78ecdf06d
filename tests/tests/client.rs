//! The client stack over real loopback TCP: balancing, failover, reconnection,
//! run-time endpoints, DNS, limits, deadlines, retries and close. Tests of
//! timeouts and backoff run on paused time over in-memory pipes
//! ([`anet_tests::MemoryConnector`]), so their bounds are exact.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use anet::{
    Kind,
    client::{Backoff, Client, ConnectionConfig, PoolConfig, RetryPolicy},
    server::{Request, Server},
};
use anet_tests::{
    Action, MemoryConnector, RunningServer, eventually, memory_addr, memory_scripted,
    restart_server, start_scripted, start_server,
};
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower::{Service, ServiceExt, service_fn};

const WAIT: Duration = Duration::from_secs(20);

/// An anet echo server that answers after `delay`, counting requests.
async fn echo_server(delay: Duration, addr: Option<SocketAddr>) -> RunningServer {
    let service = service_fn(move |req: Request| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, Infallible>(req.into_payload())
    });
    match addr {
        None => start_server(Server::builder(), service).await,
        // Rebind the same port (a restarted backend).
        Some(addr) => restart_server(addr, service).await,
    }
}

/// Redial at once, even after a connection that never answered.
const NO_BACKOFF: Backoff = Backoff::new().base(Duration::ZERO).max(Duration::ZERO);

fn fast_backoff() -> Backoff {
    Backoff::new()
        .base(Duration::from_millis(50))
        .max(Duration::from_millis(200))
}

/// Runs `workers` callers until `stop` is set; returns (ok, errors by kind,
/// mismatches).
async fn load(client: &Client, workers: usize, stop: Arc<AtomicBool>) -> (usize, Vec<Kind>, usize) {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let client = client.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let (mut ok, mut errors, mut mismatches) = (0, Vec::new(), 0);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let payload = format!("w{w}-n{n}");
                n += 1;
                match client.call(Bytes::from(payload.clone())).await {
                    Ok(r) if r == payload.as_bytes() => ok += 1,
                    Ok(_) => mismatches += 1,
                    Err(e) => errors.push(e.kind()),
                }
            }
            (ok, errors, mismatches)
        });
    }
    let mut total = (0, Vec::new(), 0);
    for (ok, errors, mismatches) in tasks.join_all().await {
        total.0 += ok;
        total.1.extend(errors);
        total.2 += mismatches;
    }
    total
}

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
    let stop = Arc::new(AtomicBool::new(false));
    let run = tokio::spawn({
        let (client, stop) = (client.clone(), stop.clone());
        async move { load(&client, 32, stop).await }
    });
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
    let stop = Arc::new(AtomicBool::new(false));
    let run = tokio::spawn({
        let (client, stop) = (client.clone(), stop.clone());
        async move { load(&client, 32, stop).await }
    });
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
async fn an_endpoint_added_at_run_time_gets_traffic_and_a_removed_one_drains() {
    let a = echo_server(Duration::ZERO, None).await;
    let b = echo_server(Duration::from_millis(200), None).await;
    let client = Client::builder().endpoint(a.addr).build();
    assert_eq!(
        client.call(Bytes::from_static(b"one")).await.expect("ok"),
        "one"
    );

    let endpoints = client.endpoints();
    assert!(endpoints.add(b.addr));
    assert!(!endpoints.add(b.addr), "already present");
    assert!(
        eventually(WAIT, || client
            .stats()
            .endpoint(b.addr)
            .is_some_and(|e| e.up))
        .await
    );
    // Slow requests land on b; remove it while they are in flight.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..50 {
        let client = client.clone();
        calls.spawn(async move { client.call(Bytes::from(format!("{i}"))).await });
    }
    assert!(eventually(WAIT, || b.stats.snapshot().requests > 0).await);
    assert!(endpoints.remove(b.addr));
    for result in calls.join_all().await {
        result.expect("in-flight requests on the removed endpoint finish");
    }
    let seen_by_b = b.stats.snapshot().requests;
    for i in 0..200 {
        client
            .call(Bytes::from(format!("after-{i}")))
            .await
            .expect("ok");
    }
    assert_eq!(
        b.stats.snapshot().requests,
        seen_by_b,
        "removed endpoint gets no new requests"
    );
    assert_eq!(endpoints.list(), vec![a.addr]);
    assert!(
        eventually(WAIT, || b.stats.snapshot().connections_open == 0).await,
        "its connections close after draining"
    );
}

fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

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
async fn the_concurrency_limit_holds_at_the_server() {
    let server = start_scripted(|_, _| Action::Echo(Duration::from_millis(5))).await;
    let client = Client::builder()
        .endpoint(server.addr)
        .concurrency_limit(Some(8))
        .connections_per_endpoint(2, 4)
        .build();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..400 {
        let client = client.clone();
        calls.spawn(async move { client.call(Bytes::from(format!("{i}"))).await });
    }
    for r in calls.join_all().await {
        r.expect("ok");
    }
    let peak = server.counters.max_in_flight.load(Ordering::SeqCst);
    assert!(peak <= 8, "server saw {peak} in flight");
    assert!(peak >= 4, "the limit was actually reached: {peak}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_shedding_fails_fast_with_overloaded_at_the_limit() {
    let server = start_scripted(|_, _| Action::Echo(Duration::from_millis(300))).await;
    let client = Client::builder()
        .endpoint(server.addr)
        .concurrency_limit(Some(2))
        .load_shed(true)
        .build();
    client.call(Bytes::from_static(b"warm")).await.expect("ok");
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..10 {
        let client = client.clone();
        calls.spawn(async move { client.call(Bytes::from(format!("{i}"))).await });
    }
    let results = calls.join_all().await;
    let shed = results
        .iter()
        .filter(|r| r.as_ref().is_err_and(|e| e.kind() == Kind::Overloaded))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok + shed, 10, "{results:?}");
    assert!(shed >= 6 && ok >= 1, "ok {ok}, shed {shed}");
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
    let started = tokio::time::Instant::now();
    let err = client
        .call(Bytes::from_static(b"second"))
        .await
        .expect_err("times out");
    assert_eq!(err.kind(), Kind::Timeout);
    // Paused time: exactly the 200 ms deadline, not the 600 ms wait for room.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_millis(220),
        "{elapsed:?}"
    );
    let _ = first.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        counters.requests.load(Ordering::SeqCst),
        2,
        "the timed-out request was never written"
    );
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

async fn first_and_second(client: &Client) -> (anet::Error, Result<Bytes, anet::Error>) {
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
    let server = echo_server(Duration::ZERO, None).await;
    let client = Client::builder()
        .endpoint(server.addr)
        .connections_per_endpoint(1, 1)
        .connection(ConnectionConfig::new().write_buffer(1))
        .connector(stall_first_connector(Arc::default()))
        // The stalled connection never answered: a failed dial, which would
        // back off; no backoff here, so the retry finds the replacement.
        .backoff(NO_BACKOFF)
        .build();
    let (first, second) = first_and_second(&client).await;
    assert_eq!(first.kind(), Kind::ConnectionLost);
    assert_eq!(second.expect("retried on a new connection"), "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_retries_the_same_failure_is_not_sent() {
    let server = echo_server(Duration::ZERO, None).await;
    let client = Client::builder()
        .endpoint(server.addr)
        .connections_per_endpoint(1, 1)
        .connection(ConnectionConfig::new().write_buffer(1))
        .connector(stall_first_connector(Arc::default()))
        .retry(RetryPolicy::new(0))
        .build();
    let (first, second) = first_and_second(&client).await;
    assert_eq!(first.kind(), Kind::ConnectionLost);
    let second = second.expect_err("not retried");
    assert_eq!(second.kind(), Kind::NotSent);
    assert!(second.is_unsent());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_follows_a_changing_answer() {
    let a = echo_server(Duration::ZERO, None).await;
    let b = echo_server(Duration::ZERO, None).await;
    let answer = Arc::new(Mutex::new(vec![a.addr]));
    let resolver = {
        let answer = answer.clone();
        move |_target: &str| -> anet::client::future::ResolveFuture {
            let addrs = answer.lock().expect("lock").clone();
            Box::pin(async move { Ok(addrs) })
        }
    };
    let client = Client::builder()
        .dns("backend.test:1500", Duration::from_millis(50))
        .resolver(resolver)
        .build();
    client
        .call(Bytes::from_static(b"a"))
        .await
        .expect("resolved to a");
    *answer.lock().expect("lock") = vec![b.addr];
    assert!(eventually(WAIT, || client.endpoints().list() == vec![b.addr]).await);
    let before = a.stats.snapshot().requests;
    for i in 0..50 {
        client.call(Bytes::from(format!("{i}"))).await.expect("ok");
    }
    assert_eq!(a.stats.snapshot().requests, before);
    assert!(b.stats.snapshot().requests >= 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_resolves_localhost_with_the_system_resolver() {
    let a = echo_server(Duration::ZERO, None).await;
    let client = Client::builder()
        .dns(
            format!("localhost:{}", a.addr.port()),
            Duration::from_secs(60),
        )
        .build();
    // localhost may also resolve to ::1, where nothing listens: that endpoint is
    // simply down.
    let reply = client.call(Bytes::from_static(b"dns")).await.expect("ok");
    assert_eq!(reply, "dns");
    assert!(client.endpoints().list().contains(&a.addr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_discover_stream_drives_the_endpoints() {
    use tower::discover::Change;
    let a = echo_server(Duration::ZERO, None).await;
    let (tx, rx) =
        tokio::sync::mpsc::unbounded_channel::<Result<Change<u32, SocketAddr>, Infallible>>();
    let discover =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let client = Client::builder().build_with_discover(Box::pin(discover));
    tx.send(Ok(Change::Insert(1, a.addr))).expect("send");
    client
        .call(Bytes::from_static(b"hi"))
        .await
        .expect("routed to a");
    tx.send(Ok(Change::Remove(1))).expect("send");
    assert!(eventually(WAIT, || client.endpoints().list().is_empty()).await);
    let err = client
        .call(Bytes::from_static(b"none"))
        .await
        .expect_err("no endpoint");
    assert_eq!(err.kind(), Kind::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_finishes_in_flight_requests_refuses_new_ones_and_releases_connections() {
    let server = echo_server(Duration::from_millis(200), None).await;
    let client = Client::builder()
        .endpoint(server.addr)
        .connections_per_endpoint(2, 2)
        .build();
    client.call(Bytes::from_static(b"warm")).await.expect("ok");
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.call(Bytes::from_static(b"in flight")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.close();
    let err = client
        .call(Bytes::from_static(b"late"))
        .await
        .expect_err("closed");
    assert_eq!(err.kind(), Kind::Closed);
    assert_eq!(
        in_flight.await.expect("join").expect("finished"),
        "in flight"
    );
    tokio::time::timeout(WAIT, client.closed())
        .await
        .expect("closed");
    assert_eq!(client.stats().connections(), 0);
    assert!(eventually(WAIT, || server.stats.snapshot().connections_open == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_grows_under_load_up_to_its_maximum() {
    let server = echo_server(Duration::from_millis(20), None).await;
    let client = Client::builder()
        .endpoint(server.addr)
        .connections_per_endpoint(1, 3)
        .connection(ConnectionConfig::new().max_in_flight(8))
        .pool(PoolConfig::new().min_connections(1).max_connections(3))
        .build();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..300 {
        let client = client.clone();
        calls.spawn(async move { client.call(Bytes::from(format!("{i}"))).await });
    }
    for r in calls.join_all().await {
        r.expect("ok");
    }
    let stats = client.stats();
    assert_eq!(stats.connections(), 3, "{stats:?}");
    assert_eq!(server.stats.snapshot().connections_accepted, 3);
}

#[tokio::test(start_paused = true)]
async fn a_connection_closed_by_the_server_is_replaced_at_once() {
    let failing = service_fn(|req: Request| async move {
        if req.payload() == "fail" {
            Err("refused")
        } else {
            Ok(req.into_payload())
        }
    });
    let server = MemoryConnector::new(move |io| async move {
        Server::builder()
            .on_error(anet::server::OnError::Close)
            .serve_connection(io, None, failing)
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

#[tokio::test(start_paused = true)]
async fn the_rate_limit_is_shared_by_every_clone() {
    let (connector, counters) = memory_scripted(|_, _| Action::Echo(Duration::ZERO));
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(connector)
        .rate_limit(50, Duration::from_secs(1))
        .request_timeout(Duration::from_secs(10))
        .build();
    let started = tokio::time::Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..100 {
        let client = client.clone();
        calls.spawn(async move { client.call(Bytes::from(format!("{i}"))).await });
    }
    for r in calls.join_all().await {
        r.expect("ok");
    }
    // A burst of 50, then 50 more at 50 per second (paused time: exactly).
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(980) && elapsed < Duration::from_millis(1100),
        "{elapsed:?}"
    );
    assert_eq!(counters.requests.load(Ordering::SeqCst), 100);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_covers_waiting_for_the_concurrency_limit() {
    // Each request takes 200 ms, within the 300 ms deadline; with a limit of one,
    // the sixth caller would wait a second for its turn: its own deadline must end
    // the wait instead.
    let (connector, _) = memory_scripted(|_, _| Action::Echo(Duration::from_millis(200)));
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(connector)
        .concurrency_limit(Some(1))
        .request_timeout(Duration::from_millis(300))
        .build();
    client
        .call(Bytes::from_static(b"warm"))
        .await
        .expect("warm-up takes 200 ms of 300");
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..6 {
        let client = client.clone();
        calls.spawn(async move {
            let started = tokio::time::Instant::now();
            let result = client.call(Bytes::from(format!("{i}"))).await;
            (started.elapsed(), result.map_err(|e| e.kind()))
        });
    }
    let results = calls.join_all().await;
    for (elapsed, result) in &results {
        assert!(
            *elapsed <= Duration::from_millis(310),
            "every caller ends near its own deadline: {elapsed:?} {result:?}"
        );
    }
    assert!(
        results.iter().any(|(_, r)| *r == Err(Kind::Timeout)),
        "queued callers time out: {results:?}"
    );
}

/// With limits configured, a request past them that the server never answers
/// still ends at its deadline (enforced below the layers, by the connection).
#[tokio::test(start_paused = true)]
async fn a_limited_client_request_to_a_silent_server_ends_at_its_deadline() {
    let (connector, _) = memory_scripted(|_, _| Action::Ignore);
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(connector)
        .concurrency_limit(Some(4))
        .rate_limit(1000, Duration::from_secs(1))
        .request_timeout(Duration::from_millis(300))
        .retry(RetryPolicy::new(0))
        .build();
    let started = tokio::time::Instant::now();
    let err = client
        .call(Bytes::from_static(b"silence"))
        .await
        .expect_err("never answered");
    let elapsed = started.elapsed();
    assert_eq!(err.kind(), Kind::Timeout, "{err}");
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed <= Duration::from_millis(310),
        "{elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_client_handle_closes_its_connections() {
    let server = echo_server(Duration::ZERO, None).await;
    let client = Client::builder()
        .endpoint(server.addr)
        .connections_per_endpoint(2, 2)
        .build();
    let clone = client.clone();
    client.call(Bytes::from_static(b"hi")).await.expect("ok");
    assert!(eventually(WAIT, || server.stats.snapshot().connections_open == 2).await);
    drop(client);
    // A clone still holds the pools open.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.stats.snapshot().connections_open, 2);
    clone.call(Bytes::from_static(b"still")).await.expect("ok");
    drop(clone);
    assert!(
        eventually(WAIT, || server.stats.snapshot().connections_open == 0).await,
        "connections closed once no handle is left"
    );
}

/// Requests already sent when the last handle goes still get their responses
/// (the close lets them finish within the grace), whether made through the
/// client or through its bare balancer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_when_the_last_handle_drops_are_answered() {
    let server = echo_server(Duration::from_millis(300), None).await;
    let client = Client::builder().endpoint(server.addr).build();
    client.call(Bytes::from_static(b"warm")).await.expect("ok");
    let mut balancer = client.balancer();
    let through_balancer = balancer
        .ready()
        .await
        .expect("ready")
        .call(Bytes::from_static(b"balancer"));
    let through_client = client.call(Bytes::from_static(b"client"));
    drop(balancer);
    drop(client);
    let (a, b) = tokio::join!(through_balancer, through_client);
    assert_eq!(a.expect("answered"), "balancer");
    assert_eq!(b.expect("answered"), "client");
    assert!(
        eventually(WAIT, || server.stats.snapshot().connections_open == 0).await,
        "connections closed once no handle is left"
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
    let start = tokio::time::Instant::now();
    let error = client
        .call(Bytes::from_static(b"held"))
        .await
        .expect_err("the server never answers");
    let elapsed = start.elapsed();
    assert_eq!(error.kind(), Kind::Timeout, "{error}");
    assert!(
        elapsed >= Duration::from_millis(1500) && elapsed <= Duration::from_millis(1510),
        "ended after {elapsed:?}"
    );
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

/// A resolver that never answers must not keep a closed client open.
#[tokio::test(start_paused = true)]
async fn close_finishes_while_a_dns_resolution_hangs() {
    let resolver =
        |_: &str| -> anet::client::future::ResolveFuture { Box::pin(std::future::pending()) };
    let client = Client::builder()
        .dns("backend.test:1500", Duration::from_secs(1))
        .resolver(resolver)
        .build();
    // The request waits for the first answer, up to the connect timeout.
    let err = client
        .call(Bytes::from_static(b"x"))
        .await
        .expect_err("nothing resolved");
    assert_eq!(err.kind(), Kind::Unavailable);
    client.close();
    tokio::time::timeout(Duration::from_secs(10), client.closed())
        .await
        .expect("closed while the resolver hangs");
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

/// An address wanted by several owners (the static list or the `Endpoints`
/// handle, a DNS source, each key of a `Discover`) stays an endpoint until the
/// last of them lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_stays_until_every_source_that_lists_it_lets_go() {
    use tower::discover::Change;
    let [fixed, dns_only, shared, keyed, sentinel] = std::array::from_fn(|_| closed_port());
    let answer = Arc::new(Mutex::new(vec![fixed, dns_only, shared]));
    let resolver = {
        let answer = answer.clone();
        move |_: &str| -> anet::client::future::ResolveFuture {
            let addrs = answer.lock().expect("lock").clone();
            Box::pin(async move { Ok(addrs) })
        }
    };
    let (tx, rx) =
        tokio::sync::mpsc::unbounded_channel::<Result<Change<u32, SocketAddr>, Infallible>>();
    let discover =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let client = Client::builder()
        .endpoint(fixed)
        .dns("backend.test:1500", Duration::from_millis(10))
        .resolver(resolver)
        .build_with_discover(Box::pin(discover));
    let endpoints = client.endpoints();
    let listed = |addr| endpoints.list().contains(&addr);
    assert!(eventually(WAIT, || listed(shared)).await, "resolved");

    // Changes are applied in order: a sentinel inserted (or resolved) after a
    // change, once listed, shows that the change has been applied.
    let discover_sync = async |tx: &tokio::sync::mpsc::UnboundedSender<_>| {
        tx.send(Ok(Change::Insert(100, sentinel))).expect("send");
        assert!(eventually(WAIT, || endpoints.list().contains(&sentinel)).await);
        tx.send(Ok(Change::Remove(100))).expect("send");
        assert!(eventually(WAIT, || !endpoints.list().contains(&sentinel)).await);
    };

    // Two Discover keys on one address: removing one key keeps it.
    tx.send(Ok(Change::Insert(1, keyed))).expect("send");
    tx.send(Ok(Change::Insert(2, keyed))).expect("send");
    tx.send(Ok(Change::Remove(1))).expect("send");
    discover_sync(&tx).await;
    assert!(listed(keyed), "key 2 still lists it");
    tx.send(Ok(Change::Remove(2))).expect("send");
    assert!(eventually(WAIT, || !listed(keyed)).await, "last key gone");

    // A Discover key and DNS on one address: the key's removal keeps it.
    tx.send(Ok(Change::Insert(3, shared))).expect("send");
    tx.send(Ok(Change::Remove(3))).expect("send");
    discover_sync(&tx).await;
    assert!(listed(shared), "DNS still lists it");

    // The handle's remove of an address only DNS added: not its to remove.
    assert!(!endpoints.remove(dns_only), "the handle never added it");
    assert!(listed(dns_only));
    // The handle adds it too; then DNS drops it (and `fixed`, also static).
    assert!(endpoints.add(dns_only));
    assert!(!endpoints.add(dns_only), "already the handle's");
    *answer.lock().expect("lock") = vec![shared, sentinel];
    assert!(eventually(WAIT, || listed(sentinel)).await);
    // The next answer is applied only after the previous one was, entirely.
    *answer.lock().expect("lock") = vec![shared];
    assert!(eventually(WAIT, || !listed(sentinel)).await);
    assert!(listed(fixed), "static: stays when DNS drops it");
    assert!(
        listed(dns_only),
        "added by the handle: stays when DNS drops it"
    );

    // Once the last owner lets go, the endpoint goes.
    assert!(endpoints.remove(fixed));
    assert!(endpoints.remove(dns_only));
    assert!(!listed(fixed) && !listed(dns_only));
    // DNS still lists `shared`; a key on it and the handle come and go.
    tx.send(Ok(Change::Insert(4, shared))).expect("send");
    assert!(endpoints.add(shared));
    assert!(endpoints.remove(shared));
    tx.send(Ok(Change::Remove(4))).expect("send");
    discover_sync(&tx).await;
    assert!(listed(shared), "DNS still lists it");
    *answer.lock().expect("lock") = vec![sentinel];
    assert!(
        eventually(WAIT, || !listed(shared)).await,
        "DNS let go last"
    );
    assert_eq!(endpoints.list(), vec![sentinel]);
}

/// A connection that drains (its endpoint removed, or the client closing) is
/// still counted, with its request in flight, until it has closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_connection_stays_in_the_stats_until_it_has_closed() {
    for close_client in [false, true] {
        let mut server = anet_tests::ManualServer::bind().await;
        let addr = server.addr;
        let client = Client::builder()
            .endpoint(addr)
            .request_timeout(WAIT)
            .connection(ConnectionConfig::new().close_grace(WAIT))
            .build();
        let call = tokio::spawn({
            let client = client.clone();
            async move { client.call(Bytes::from_static(b"held")).await }
        });
        let mut conn = server.accept().await;
        let held = conn.recv().await;
        let counted = |connections, in_flight| {
            client
                .stats()
                .endpoint(addr)
                .is_some_and(|e| e.connections == connections && e.in_flight == in_flight)
        };
        assert!(
            eventually(WAIT, || counted(1, 1)).await,
            "{:?}",
            client.stats()
        );
        if close_client {
            client.close();
        } else {
            assert!(client.endpoints().remove(addr));
        }
        // Draining: the request is still in flight, on a connection still open.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(
                counted(1, 1),
                "close_client={close_client}: {:?}",
                client.stats()
            );
        }
        conn.reply(&held, b"released").await;
        assert_eq!(call.await.expect("join").expect("answered"), "released");
        assert!(
            eventually(WAIT, || client
                .stats()
                .endpoint(addr)
                .is_none_or(|e| e.connections == 0 && e.in_flight == 0))
            .await,
            "close_client={close_client}: {:?}",
            client.stats()
        );
        assert!(conn.client_closed(WAIT).await);
    }
}

//! The connection lifecycle under faults: user hooks that panic (classifier,
//! handshake, heartbeat check, a transport), requests racing a retirement,
//! heartbeats beside the idle timeout, and the backoff of a failover primary
//! that fails at application level. Paused time over in-memory pipes, as in
//! `lifecycle.rs`.

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

use anet::client::Heartbeat;
use anet::{
    Kind,
    client::{Backoff, Classification, Client, ConnectionConfig, PoolConfig, RetryPolicy},
};
use anet_proto::{Frame, FrameCodec};
use anet_tests::{MemoryConnector, encode, memory_addr, spawn_writer};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio_util::codec::FramedRead;
use tower::{Service, ServiceExt};

type Answer = Arc<dyn Fn(&Frame) -> Option<Bytes> + Send + Sync>;

/// Answers each request with `answer(frame)`, or never (`None`); a request
/// whose payload starts with `slow` is answered 50 ms later.
async fn serve(io: DuplexStream, answer: Answer) {
    let (read, write) = tokio::io::split(io);
    let (tx, writer) = spawn_writer(write);
    let mut frames = FramedRead::new(read, FrameCodec::new());
    while let Some(Ok(frame)) = frames.next().await {
        if let Some(reply) = answer(&frame) {
            let reply = encode(&frame.tag, &reply);
            if frame.payload.starts_with(b"slow") {
                let tx = tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let _ = tx.send(Some(reply));
                });
            } else {
                let _ = tx.send(Some(reply));
            }
        }
    }
    let _ = tx.send(None);
    let _ = writer.await;
}

fn backend(answer: impl Fn(&Frame) -> Option<Bytes> + Send + Sync + 'static) -> MemoryConnector {
    let answer: Answer = Arc::new(answer);
    MemoryConnector::new(move |io| serve(io, answer.clone()))
}

/// A connector whose backend depends on the address dialled.
#[derive(Clone)]
struct ByAddr(Arc<dyn Fn(SocketAddr) -> Answer + Send + Sync>);

impl Service<SocketAddr> for ByAddr {
    type Response = DuplexStream;
    type Error = std::io::Error;
    type Future = std::future::Ready<std::io::Result<DuplexStream>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, addr: SocketAddr) -> Self::Future {
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve(server, (self.0)(addr)));
        std::future::ready(Ok(client))
    }
}

fn classify(reply: &Bytes) -> Classification {
    if reply.starts_with(b"ER") {
        Classification::EndpointFailure
    } else if reply.starts_with(b"RESET") {
        Classification::ConnectionFailure
    } else {
        Classification::Success
    }
}

/// A user classifier that panics on one odd reply runs inside the connection
/// driver: the panic is caught (the reply counts as a success), so the driver
/// does not die leaving a dead connection listed as live (every later request
/// routed to it would fail `Closed`, and `Client::closed` would hang).
#[tokio::test(start_paused = true)]
async fn a_panicking_classifier_does_not_leave_a_dead_connection_in_the_pool() {
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(backend(|f| Some(f.payload.clone())))
        .classify(|reply| {
            assert!(reply != "boom", "user classifier bug");
            Classification::Success
        })
        .build();
    assert_eq!(
        client.call(Bytes::from_static(b"one")).await.expect("call"),
        "one"
    );
    let _ = client.call(Bytes::from_static(b"boom")).await;
    let mut last = None;
    for _ in 0..50 {
        match client.call(Bytes::from_static(b"two")).await {
            Ok(reply) => {
                assert_eq!(reply, "two");
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        last.is_none(),
        "5 s after the panic requests still fail: {last:?}"
    );
    client.close();
    tokio::time::timeout(Duration::from_secs(10), client.closed())
        .await
        .expect("client.closed() returns");
}

/// A handshake that panics (a bug on one odd logon reply) runs on the
/// endpoint's maintenance task: the panic is a failed handshake (a failed
/// dial), not the end of the task, so the endpoint is dialled again.
#[tokio::test(start_paused = true)]
async fn a_panicking_handshake_is_a_failed_dial_not_the_end_of_the_endpoint() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(backend(|f| Some(f.payload.clone())))
        .backoff(
            Backoff::new()
                .base(Duration::from_millis(100))
                .max(Duration::from_millis(400)),
        )
        .handshake(move |_conn| {
            let first = a.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                assert!(!first, "handshake bug on the first logon");
                Ok::<_, anet::Error>(())
            }
        })
        .build();
    let mut last = None;
    for _ in 0..50 {
        match client.call(Bytes::from_static(b"x")).await {
            Ok(_) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        last.is_none(),
        "{} handshakes; still failing: {last:?}",
        attempts.load(Ordering::SeqCst)
    );
}

/// A request whose unit was reserved (Balancer::poll_ready) on a connection
/// that a `ConnectionFailure` reply then retires was never written: it fails
/// `NotSent` (retryable), not `Closed` (which reads as "the client was
/// closed"), as with the other retirements (age, idle, heartbeat).
#[tokio::test(start_paused = true)]
async fn a_request_racing_a_classified_retirement_fails_retryable_not_closed() {
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(backend(|f| match &f.payload[..] {
            b"hang" => None,
            b"desync" => Some(Bytes::from_static(b"RESET")),
            _ => Some(f.payload.clone()),
        }))
        .connections_per_endpoint(1, 1)
        .connection(ConnectionConfig::new().close_grace(Duration::from_secs(5)))
        .classify(classify)
        .build();
    client
        .wait_connected(Duration::from_secs(1))
        .await
        .expect("warm");
    // Keeps the retired connection draining (in the pool's list) for a while.
    let hang = tokio::spawn({
        let client = client.clone();
        async move { client.call(Bytes::from_static(b"hang")).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut balancer = client.balancer();
    balancer.ready().await.expect("reserved");
    assert_eq!(
        client
            .call(Bytes::from_static(b"desync"))
            .await
            .expect("reply"),
        "RESET"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    let err = balancer
        .call(Bytes::from_static(b"x"))
        .await
        .expect_err("its connection retired");
    assert!(err.is_unsent(), "{err:?}");
    assert!(
        RetryPolicy::default().is_retryable(&err),
        "not retryable: {err:?}"
    );
    hang.abort();
}

/// Failover groups: a primary whose replies are all classified as endpoint
/// failures. On probation it gets no traffic (the standby is preferred), so
/// its probation "passes" on the clock alone; that must not reset the
/// escalation (the primary would get real requests every backoff base +
/// probation, for ever): it backs off exponentially until it answers.
#[tokio::test(start_paused = true)]
async fn a_primary_failing_at_application_level_is_backed_off_exponentially() {
    let primary: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let standby: SocketAddr = "127.0.0.1:2".parse().unwrap();
    let connector = ByAddr(Arc::new(move |addr| -> Answer {
        if addr == primary {
            Arc::new(|_| Some(Bytes::from_static(b"ER15")))
        } else {
            Arc::new(|f| Some(f.payload.clone()))
        }
    }));
    let client = Client::builder()
        .endpoint(primary)
        .endpoint_with_priority(standby, 1)
        .connector(connector)
        .retry(RetryPolicy::new(0))
        .pool(
            PoolConfig::new()
                .failure_threshold(1)
                .backoff(
                    Backoff::new()
                        .base(Duration::from_millis(50))
                        .max(Duration::from_secs(60)),
                )
                .probation(Duration::from_millis(100)),
        )
        .classify(classify)
        .build();
    client
        .wait_connected(Duration::from_secs(1))
        .await
        .expect("warm");
    let mut errors = 0;
    let start = tokio::time::Instant::now();
    while start.elapsed() < Duration::from_secs(6) {
        let reply = client.call(Bytes::from_static(b"x")).await.expect("reply");
        if reply == "ER15" {
            errors += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Exponential from 50 ms: about 7 trips in 6 s. Constant: about 40.
    assert!(
        errors <= 12,
        "{errors} requests sent to the failing primary in 6 s"
    );
}

/// A request whose unit was reserved on a connection that then retires at its
/// maximum age fails `NotSent`, so it is retried (the same race as above, for
/// the pool's own retirements: age, idle, heartbeat).
#[tokio::test(start_paused = true)]
async fn a_request_racing_a_max_age_retirement_fails_not_sent() {
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(backend(|f| match &f.payload[..] {
            b"hang" => None,
            _ => Some(f.payload.clone()),
        }))
        .connections_per_endpoint(1, 1)
        .connection(ConnectionConfig::new().close_grace(Duration::from_secs(5)))
        .max_connection_age(Some(Duration::from_secs(1)))
        .build();
    client
        .wait_connected(Duration::from_secs(1))
        .await
        .expect("warm");
    let hang = tokio::spawn({
        let client = client.clone();
        async move { client.call(Bytes::from_static(b"hang")).await }
    });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut balancer = client.balancer();
    balancer.ready().await.expect("reserved");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(
        client.stats().endpoints[0].retired >= 1,
        "{:?}",
        client.stats()
    );
    let err = balancer
        .call(Bytes::from_static(b"x"))
        .await
        .expect_err("its connection retired");
    assert_eq!(err.kind(), Kind::NotSent, "{err:?}");
    assert!(RetryPolicy::default().is_retryable(&err), "{err:?}");
    hang.abort();
}

/// A transport that panics when asked to write `boom` (a stand-in for any bug
/// that panics inside the connection driver).
struct Boom(DuplexStream);

impl AsyncRead for Boom {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Boom {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        assert!(
            !buf.windows(4).any(|w| w == b"boom"),
            "transport bug on boom"
        );
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Dials echo backends behind a [`Boom`] transport.
#[derive(Clone)]
struct BoomConnector(Arc<AtomicUsize>);

impl Service<SocketAddr> for BoomConnector {
    type Response = Boom;
    type Error = std::io::Error;
    type Future = std::future::Ready<std::io::Result<Boom>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: SocketAddr) -> Self::Future {
        self.0.fetch_add(1, Ordering::SeqCst);
        let (client, server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(serve(server, Arc::new(|f| Some(f.payload.clone()))));
        std::future::ready(Ok(Boom(client)))
    }
}

/// Any panic inside a connection driver (here the transport's) fails the
/// requests it held, marks the connection done and refusing, and the pool
/// replaces it: nothing hangs, and later requests are served.
#[tokio::test(start_paused = true)]
async fn a_panicking_driver_fails_its_requests_and_its_connection_is_replaced() {
    let dials = Arc::new(AtomicUsize::new(0));
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(BoomConnector(dials.clone()))
        .retry(RetryPolicy::new(0))
        .build();
    assert_eq!(
        client.call(Bytes::from_static(b"one")).await.expect("call"),
        "one"
    );
    let err = tokio::time::timeout(
        Duration::from_secs(5),
        client.call(Bytes::from_static(b"boom")),
    )
    .await
    .expect("the request held by the panicked driver ends")
    .expect_err("its driver panicked");
    assert_eq!(err.kind(), Kind::ConnectionLost, "{err:?}");
    let mut served = false;
    for _ in 0..50 {
        if client.call(Bytes::from_static(b"two")).await.is_ok() {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "{:?}", client.stats());
    assert_eq!(dials.load(Ordering::SeqCst), 2);
    client.close();
    tokio::time::timeout(Duration::from_secs(10), client.closed())
        .await
        .expect("client.closed() returns");
}

/// A heartbeat check that panics is a heartbeat miss: the connection is
/// replaced, and the watcher goes on (the replacement still gets heartbeats).
#[tokio::test(start_paused = true)]
async fn a_panicking_heartbeat_check_is_a_miss() {
    let beats = Arc::new(AtomicUsize::new(0));
    let b = beats.clone();
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(backend(move |f| {
            if f.payload == "HB" {
                b.fetch_add(1, Ordering::SeqCst);
            }
            Some(f.payload.clone())
        }))
        .heartbeat(Heartbeat::new(Duration::from_secs(1), "HB").check(|reply| {
            assert!(reply != "HB", "heartbeat check bug");
            true
        }))
        .build();
    client
        .wait_connected(Duration::from_secs(1))
        .await
        .expect("warm");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stats = client.stats().endpoints[0].clone();
    assert!(stats.heartbeat_misses >= 2, "{stats:?}");
    assert!(beats.load(Ordering::SeqCst) >= 2);
    assert_eq!(
        client.call(Bytes::from_static(b"x")).await.expect("call"),
        "x"
    );
}

/// A request still in flight when a heartbeat-missed connection's close grace
/// ends may have reached the server: it fails `ConnectionLost`, not `Closed`
/// (which reads as "the client was closed").
#[tokio::test(start_paused = true)]
async fn a_request_left_on_a_heartbeat_missed_connection_fails_connection_lost() {
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(backend(|f| match &f.payload[..] {
            b"HB" | b"hang" => None,
            _ => Some(f.payload.clone()),
        }))
        .connection(ConnectionConfig::new().close_grace(Duration::from_secs(1)))
        .heartbeat(Heartbeat::new(Duration::from_secs(1), "HB").timeout(Duration::from_secs(1)))
        .retry(RetryPolicy::new(0))
        .request_timeout(Duration::from_secs(30))
        .build();
    client
        .wait_connected(Duration::from_secs(1))
        .await
        .expect("warm");
    // Idle: the heartbeat goes out between 1 and 1.25 s; sent after it, this
    // request is in flight when the heartbeat misses.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = client
        .call(Bytes::from_static(b"hang"))
        .await
        .expect_err("its connection retired");
    assert_eq!(err.kind(), Kind::ConnectionLost, "{err:?}");
    let stats = client.stats().endpoints[0].clone();
    assert_eq!(stats.heartbeat_misses, 1, "{stats:?}");
}

/// Heartbeats are not callers' activity: a connection beyond the minimum that
/// only gets heartbeats still retires at the idle timeout.
#[tokio::test(start_paused = true)]
async fn heartbeats_do_not_keep_an_idle_connection_from_retiring() {
    let beats = Arc::new(AtomicUsize::new(0));
    let b = beats.clone();
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(backend(move |f| {
            if f.payload == "HB" {
                b.fetch_add(1, Ordering::SeqCst);
            }
            Some(f.payload.clone())
        }))
        .max_in_flight(1)
        .connections_per_endpoint(1, 2)
        .heartbeat(Heartbeat::new(Duration::from_millis(200), "HB"))
        .idle_timeout(Some(Duration::from_secs(2)))
        .build();
    client
        .wait_connected(Duration::from_secs(1))
        .await
        .expect("warm");
    // Slow requests two at a time: the pool grows to its maximum.
    for _ in 0..20 {
        let (a, b) = tokio::join!(
            client.call(Bytes::from_static(b"slow-a")),
            client.call(Bytes::from_static(b"slow-b")),
        );
        a.expect("call");
        b.expect("call");
        if client.stats().endpoints[0].connections == 2 {
            break;
        }
    }
    assert_eq!(client.stats().endpoints[0].connections, 2, "the pool grew");
    let before = beats.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let stats = client.stats().endpoints[0].clone();
    assert!(
        beats.load(Ordering::SeqCst) >= before + 10,
        "heartbeats went out while idle"
    );
    assert_eq!(stats.connections, 1, "{stats:?}");
    assert_eq!(stats.retired, 1, "{stats:?}");
    assert_eq!(stats.heartbeat_misses, 0, "{stats:?}");
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// A request on a connection whose driver's runtime shuts down, dropping the
/// driver task without a panic, fails as `ConnectionLost`; the caller,
/// waiting on another runtime, does not hang.
#[test]
fn a_driver_dropped_with_its_runtime_fails_the_request_it_held() {
    let caller = current_thread();
    let driver = current_thread();
    let (client_io, _server_io) = tokio::io::duplex(4096);
    let (conn, mut response) = driver.block_on(async {
        let mut conn = anet::client::Connection::new(client_io, ConnectionConfig::new());
        let response = conn
            .ready()
            .await
            .expect("ready")
            .call(Bytes::from_static(b"never answered"));
        // The driver takes and writes it; the silent peer never answers.
        tokio::time::sleep(Duration::from_millis(20)).await;
        (conn, response)
    });
    caller.block_on(async {
        let polled = tokio::time::timeout(Duration::from_millis(20), &mut response).await;
        assert!(polled.is_err(), "waiting: {polled:?}");
    });
    drop(driver);
    let err = caller
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), response).await })
        .expect("the request ends")
        .expect_err("its driver is gone");
    assert_eq!(err.kind(), Kind::ConnectionLost, "{err:?}");
    drop(conn);
}

/// Likewise when the driver task is dropped before it ever ran: the request
/// was queued but never taken.
#[test]
fn a_driver_dropped_before_it_ran_fails_the_request_queued_for_it() {
    let caller = current_thread();
    let driver = current_thread();
    let (client_io, _server_io) = tokio::io::duplex(4096);
    let mut conn = {
        let _entered = driver.enter();
        anet::client::Connection::new(client_io, ConnectionConfig::new())
    };
    caller
        .block_on(async { conn.ready().await.map(|_| ()) })
        .expect("ready");
    let response = conn.call(Bytes::from_static(b"never taken"));
    drop(driver);
    let err = caller
        .block_on(async { tokio::time::timeout(Duration::from_secs(5), response).await })
        .expect("the request ends")
        .expect_err("its driver is gone");
    assert_eq!(err.kind(), Kind::ConnectionLost, "{err:?}");
}

//! Review of the connection lifecycle (branch i14): failing tests for the bugs
//! found. Paused time over in-memory pipes, as in `lifecycle.rs`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use anet::{
    Kind,
    client::{Backoff, Classification, Client, ConnectionConfig, PoolConfig, RetryPolicy},
};
use anet_proto::{Frame, FrameCodec};
use anet_tests::{MemoryConnector, encode, memory_addr, spawn_writer};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::DuplexStream;
use tokio_util::codec::FramedRead;
use tower::{Service, ServiceExt};

type Answer = Arc<dyn Fn(&Frame) -> Option<Bytes> + Send + Sync>;

/// Answers each request with `answer(frame)`, or never (`None`).
async fn serve(io: DuplexStream, answer: Answer) {
    let (read, write) = tokio::io::split(io);
    let (tx, writer) = spawn_writer(write);
    let mut frames = FramedRead::new(read, FrameCodec::new());
    while let Some(Ok(frame)) = frames.next().await {
        if let Some(reply) = answer(&frame) {
            let _ = tx.send(Some(encode(&frame.tag, &reply)));
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
/// driver: the driver task dies without refusing its window or marking itself
/// done, so the pool keeps the dead connection as live (never replaced) and
/// every later request is routed to it and fails (`Closed`, not retried).
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
/// endpoint's maintenance task and kills it: the endpoint is never dialled
/// again, though the next handshake would succeed.
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
/// that a `ConnectionFailure` reply then retires fails with `Closed`: never
/// written, yet not retryable, and it reads as "the client was closed". The
/// other retirements (age, idle, heartbeat) refuse with `NotSent`.
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
/// probation "passes" on the clock alone and resets the escalation: the
/// primary is handed real requests again every backoff-base + probation, for
/// ever, instead of backing off exponentially.
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

/// Regression guard (passes today): a request whose unit was reserved on a
/// connection that then retires at its maximum age fails `NotSent`, so it is
/// retried. Without it, refusing retirements as `Closed` (the bug above, for
/// age/idle/heartbeat) went unnoticed by `lifecycle.rs`.
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

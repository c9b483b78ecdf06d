//! Server admission over real loopback TCP: connections that send nothing, or
//! stopped sending, must not lock other clients out. Covers the first-frame
//! timeout, eviction of idle connections at `max_connections`, and the
//! per-peer limit.
//!
//! Real time with short settings and generous margins (a loaded 2-core machine):
//! each bound below is several times what an idle machine needs.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
    time::Duration,
};

use anet::{
    client::Connector,
    server::{Request, Server},
};
use anet_proto::{Frame, Tag};
use anet_tests::{Handler, RawClient, echo, eventually, start_server};
use bytes::Bytes;
use futures_util::SinkExt;
use tokio::{net::TcpSocket, sync::Semaphore, time::Instant};
use tower::{Service, ServiceExt, service_fn};

const WAIT: Duration = Duration::from_secs(10);
const LIMIT: usize = 32;

/// A server of `limit` connections that may evict one idle for 100 ms.
fn evicting(limit: usize) -> anet::server::Builder {
    Server::builder()
        .max_connections(limit)
        .evict_idle_after(Some(Duration::from_millis(100)))
}

/// Waits past the minimum idle age, then asserts that a newcomer to `addr`
/// is closed (`why`: what the test expects of it).
async fn newcomer_refused_past_idle_age(addr: SocketAddr, why: &str) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut newcomer = RawClient::connect(addr).await;
    assert!(newcomer.closed_within(WAIT).await, "{why}");
}

/// Asserts that the server's serve future completes without error.
async fn completes(serving: tokio::task::JoinHandle<std::io::Result<()>>) {
    tokio::time::timeout(WAIT, serving)
        .await
        .expect("server future completes")
        .expect("join")
        .expect("serve");
}

/// Waits until the counters of `server` meet `cond`.
async fn wait_stats(
    server: &anet_tests::RunningServer,
    cond: impl Fn(&anet::server::ServerStats) -> bool,
) {
    assert!(
        eventually(WAIT, || cond(&server.stats.snapshot())).await,
        "{:?}",
        server.stats.snapshot()
    );
}

/// Waits until `active` connections of `server` are busy with a request.
async fn wait_active(server: &anet_tests::RunningServer, active: u64) {
    wait_stats(server, |s| s.connections_active == active).await;
}

/// Asserts how many connections `server` evicted and rejected; returns its
/// counters for more checks.
fn evicted_rejected(
    server: &anet_tests::RunningServer,
    evicted: u64,
    rejected: u64,
) -> anet::server::ServerStats {
    let stats = server.stats.snapshot();
    assert_eq!(stats.connections_evicted, evicted, "{stats:?}");
    assert_eq!(stats.connections_rejected, rejected, "{stats:?}");
    stats
}

/// Echoes, except that a request `hold` waits until `gate` gives it a permit.
fn echo_or_hold(gate: Arc<Semaphore>) -> impl Handler {
    service_fn(move |req: Request| {
        let gate = gate.clone();
        async move {
            if req.payload() == "hold" {
                let _permit = gate.acquire().await;
            }
            Ok::<_, Infallible>(req.into_payload())
        }
    })
}

/// Sends one request with the anet client (a fresh connection); the reply or
/// the error's text.
async fn call_once(addr: SocketAddr, payload: &'static [u8]) -> Result<Bytes, String> {
    let mut conn = Connector::new()
        .connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let ready = conn.ready().await.map_err(|e| e.to_string())?;
    ready
        .call(Bytes::from_static(payload))
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_full_of_silent_connections_serves_a_real_client_within_a_second_and_closes_them_at_the_first_frame_timeout()
 {
    let first_frame = Duration::from_secs(3);
    let config = Server::builder()
        .max_connections(LIMIT)
        .first_frame_timeout(Some(first_frame));
    let server = start_server(config, echo()).await;
    let filled = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..LIMIT {
        silent.push(RawClient::connect(server.addr).await);
    }
    wait_stats(&server, |s| s.connections_open == LIMIT as u64).await;
    // `open` counts a connection a moment before its handler says it is
    // admitted: wait for the state too.
    wait_stats(&server, |s| s.connections_new == LIMIT as u64).await;
    // Past the default minimum idle age (1 s), a silent connection makes room.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Within a second beyond the runtime's own lag (a starved machine delays
    // the client and the server alike); a newcomer left waiting for a slot
    // would wait for the first-frame timeout (3 s) or `WAIT`.
    let lag = anet_tests::LagProbe::start();
    let asked = Instant::now();
    let reply = tokio::time::timeout(WAIT, call_once(server.addr, b"hello"))
        .await
        .expect("served, not left waiting");
    assert_eq!(reply.as_deref(), Ok(&b"hello"[..]));
    let excused = lag.total();
    assert!(
        asked.elapsed() < Duration::from_secs(1) + excused,
        "served after {:?} ({excused:?} of runtime lag)",
        asked.elapsed()
    );
    evicted_rejected(&server, 1, 0);
    // The others are closed by the first-frame timeout: not before it, and well
    // before the idle (5 min) or read timeouts.
    for conn in silent.iter_mut() {
        assert!(conn.closed_within(WAIT).await, "silent connection closed");
    }
    let closed_after = filled.elapsed();
    assert!(
        closed_after >= first_frame - Duration::from_millis(100),
        "{closed_after:?}"
    );
    assert!(closed_after < first_frame + WAIT, "{closed_after:?}");
    let stats = server.stats.snapshot();
    assert_eq!(stats.first_frame_timeouts, LIMIT as u64 - 1, "{stats:?}");
    assert_eq!(stats.timeouts, LIMIT as u64 - 1, "{stats:?}");
    assert!(eventually(WAIT, || server.stats.snapshot().connections_new == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_limit_a_newcomer_evicts_the_longest_idle_connection_and_busy_ones_are_never_evicted()
 {
    let min_idle = Duration::from_millis(300);
    let gate = Arc::new(Semaphore::new(0));
    let config = Server::builder()
        .max_connections(LIMIT)
        .evict_idle_after(Some(min_idle));
    let server = start_server(config, echo_or_hold(gate.clone())).await;
    // 8 busy connections (a request held by the service), then 24 that each
    // completed one request, a few milliseconds apart so their idle ages differ.
    let mut busy = Vec::new();
    for i in 0..8 {
        let mut conn = RawClient::connect(server.addr).await;
        conn.send(i, b"hold").await;
        busy.push(conn);
    }
    let mut idle = Vec::new();
    for i in 0..(LIMIT as u32 - 8) {
        let mut conn = RawClient::connect(server.addr).await;
        conn.send(i, b"once").await;
        assert_eq!(conn.recv(WAIT).await.expect("answered").payload, "once");
        idle.push(conn);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        eventually(WAIT, || {
            let s = server.stats.snapshot();
            s.connections_active == 8 && s.connections_idle == LIMIT as u64 - 8
        })
        .await,
        "{:?}",
        server.stats.snapshot()
    );
    tokio::time::sleep(min_idle + Duration::from_millis(100)).await;

    // The first newcomer takes the place of the longest-idle connection.
    let mut newcomers = Vec::new();
    let mut first = RawClient::connect(server.addr).await;
    first.send(1, b"new").await;
    assert_eq!(first.recv(WAIT).await.expect("served").payload, "new");
    newcomers.push(first);
    assert!(idle[0].closed_within(WAIT).await, "longest idle evicted");
    for conn in idle[1..].iter_mut() {
        assert!(
            !conn.closed_within(Duration::from_millis(5)).await,
            "only one evicted"
        );
    }
    // Every further newcomer evicts the next idle one, never a busy one.
    for i in 1..(LIMIT as u32 - 8) {
        let mut conn = RawClient::connect(server.addr).await;
        conn.send(i, b"new").await;
        assert_eq!(conn.recv(WAIT).await.expect("served").payload, "new");
        newcomers.push(conn);
        assert!(
            idle[i as usize].closed_within(WAIT).await,
            "idle {i} evicted"
        );
    }
    evicted_rejected(&server, LIMIT as u64 - 8, 0);
    wait_stats(&server, |s| s.connections_open == LIMIT as u64).await;
    // The busy connections were never touched: released, each gets its answer.
    gate.add_permits(8);
    for conn in busy.iter_mut() {
        assert_eq!(conn.recv(WAIT).await.expect("answered").payload, "hold");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_full_of_busy_connections_refuses_the_newcomer_and_evicts_none() {
    let gate = Arc::new(Semaphore::new(0));
    let config = evicting(LIMIT);
    let server = start_server(config, echo_or_hold(gate.clone())).await;
    let mut busy = Vec::new();
    for i in 0..LIMIT as u32 {
        let mut conn = RawClient::connect(server.addr).await;
        conn.send(i, b"hold").await;
        busy.push(conn);
    }
    wait_active(&server, LIMIT as u64).await;
    // Busy for longer than the minimum idle age: still not evictable.
    newcomer_refused_past_idle_age(server.addr, "refused").await;
    evicted_rejected(&server, 0, 1);
    gate.add_permits(LIMIT);
    for conn in busy.iter_mut() {
        assert_eq!(conn.recv(WAIT).await.expect("answered").payload, "hold");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_first_frame_is_closed_at_the_first_frame_timeout_not_the_idle_timeout() {
    let first_frame = Duration::from_secs(3);
    let config = Server::builder()
        .first_frame_timeout(Some(first_frame))
        .read_timeout(Some(Duration::from_secs(60)))
        .idle_timeout(Some(Duration::from_secs(60)));
    let server = start_server(config, echo()).await;
    let mut slow = RawClient::connect(server.addr).await;
    let started = Instant::now();
    slow.send_raw(&[0x00, 0x40]).await; // announces 64 bytes
    // One byte a second: never silent for long, never finishing the frame.
    let mut closed = false;
    while started.elapsed() < first_frame + WAIT {
        if slow.framed.get_mut().try_write(&[0]).is_err()
            || slow.closed_within(Duration::from_secs(1)).await
        {
            closed = true;
            break;
        }
    }
    let elapsed = started.elapsed();
    assert!(closed, "trickle closed");
    assert!(
        elapsed >= first_frame - Duration::from_millis(100),
        "{elapsed:?}"
    );
    let stats = server.stats.snapshot();
    assert_eq!(stats.first_frame_timeouts, 1, "{stats:?}");
    assert_eq!(stats.timeouts, 1, "{stats:?}");
}

/// Connects to `addr` from the loopback address `from` (any 127.x.y.z).
async fn connect_from(from: [u8; 4], addr: SocketAddr) -> RawClient {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("bind loopback alias");
    let stream = socket.connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    RawClient {
        framed: tokio_util::codec::Framed::new(stream, anet_proto::FrameCodec::new()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_peer_limit_refuses_connections_past_it_from_one_address_only() {
    let config = Server::builder()
        .max_connections(LIMIT)
        .max_connections_per_peer(Some(4));
    let server = start_server(config, echo()).await;
    let mut first = Vec::new();
    for i in 0..4 {
        let mut conn = connect_from([127, 0, 0, 1], server.addr).await;
        conn.send(i, b"one").await;
        assert_eq!(conn.recv(WAIT).await.expect("served").payload, "one");
        first.push(conn);
    }
    let mut fifth = connect_from([127, 0, 0, 1], server.addr).await;
    assert!(
        fifth.closed_within(WAIT).await,
        "fifth from one address refused"
    );
    let stats = server.stats.snapshot();
    assert_eq!(stats.connections_rejected, 1, "{stats:?}");
    assert_eq!(stats.connections_rejected_per_peer, 1, "{stats:?}");
    assert_eq!(stats.connections_evicted, 0, "{stats:?}");
    // Another address has its own allowance.
    let mut other = connect_from([127, 0, 0, 2], server.addr).await;
    other.send(9, b"other").await;
    assert_eq!(other.recv(WAIT).await.expect("served").payload, "other");
    // Once one of the four leaves, the address may connect again.
    drop(first.pop());
    assert!(eventually(WAIT, || server.stats.snapshot().connections_open == 4).await);
    let mut again = connect_from([127, 0, 0, 1], server.addr).await;
    again.send(10, b"again").await;
    assert_eq!(again.recv(WAIT).await.expect("served").payload, "again");
}

/// Echo whose readiness a test can pause, as a limit shared by every
/// connection would.
#[derive(Clone, Debug, Default)]
struct Gated(Arc<Mutex<(bool, Vec<Waker>)>>);

impl Gated {
    fn paused() -> Gated {
        let gated = Gated::default();
        gated.pause(true);
        gated
    }

    fn pause(&self, paused: bool) {
        let mut state = self.0.lock().expect("gate lock");
        state.0 = paused;
        if !paused {
            for waker in state.1.drain(..) {
                waker.wake();
            }
        }
    }
}

impl Service<Request> for Gated {
    type Response = Bytes;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Bytes, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        let mut state = self.0.lock().expect("gate lock");
        if state.0 {
            state.1.push(cx.waker().clone());
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, req: Request) -> Self::Future {
        std::future::ready(Ok(req.into_payload()))
    }
}

/// Sends two frames in one write.
async fn send_two(conn: &mut RawClient, first: (u32, &'static [u8]), second: (u32, &'static [u8])) {
    for (tag, payload) in [first, second] {
        conn.framed
            .feed(Frame::new(Tag::from_u32(tag), Bytes::from_static(payload)))
            .await
            .expect("feed");
    }
    SinkExt::<Frame>::flush(&mut conn.framed)
        .await
        .expect("flush");
}

/// Where the third request of [`leave_a_request_waiting`] waits for the service.
#[derive(Clone, Copy, Debug)]
enum Waiting {
    /// Sent with the second in one write: the server has read it into its buffer.
    InBuffer,
    /// Sent once the second was answered: the server, waiting for the service,
    /// reads nothing more, so it stays in the socket.
    InSocket,
}

/// Connects and has `one` answered; pauses the service; has `two` answered
/// (it uses the readiness already granted); leaves `three` waiting for the
/// service, where `waiting` says.
async fn leave_a_request_waiting(addr: SocketAddr, gate: &Gated, waiting: Waiting) -> RawClient {
    let mut conn = RawClient::connect(addr).await;
    conn.send(1, b"one").await;
    assert_eq!(conn.recv(WAIT).await.expect("one").payload, "one");
    gate.pause(true);
    match waiting {
        Waiting::InBuffer => {
            send_two(&mut conn, (2, b"two"), (3, b"three")).await;
            assert_eq!(conn.recv(WAIT).await.expect("two").payload, "two");
        }
        Waiting::InSocket => {
            conn.send(2, b"two").await;
            assert_eq!(conn.recv(WAIT).await.expect("two").payload, "two");
            conn.send(3, b"three").await;
        }
    }
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_holding_a_received_request_is_busy_not_evicted_and_the_request_is_answered() {
    let gate = Gated::default();
    let config = evicting(1);
    let server = start_server(config, gate.clone()).await;
    let mut conn = leave_a_request_waiting(server.addr, &gate, Waiting::InBuffer).await;
    wait_active(&server, 1).await;
    newcomer_refused_past_idle_age(server.addr, "newcomer refused").await;
    evicted_rejected(&server, 0, 1);
    gate.pause(false);
    assert_eq!(conn.recv(WAIT).await.expect("three").payload, "three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_connection_answers_the_request_waiting_in_its_socket_before_it_closes() {
    let gate = Gated::default();
    let config = evicting(1);
    let server = start_server(config, gate.clone()).await;
    let mut conn = leave_a_request_waiting(server.addr, &gate, Waiting::InSocket).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _newcomer = RawClient::connect(server.addr).await;
    assert!(
        eventually(WAIT, || server.stats.snapshot().connections_evicted == 1).await,
        "{:?}",
        server.stats.snapshot()
    );
    gate.pause(false);
    assert_eq!(conn.recv(WAIT).await.expect("three").payload, "three");
    assert!(conn.closed_within(WAIT).await, "evicted connection closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_the_requests_already_received_while_the_service_was_not_ready() {
    let gate = Gated::default();
    let mut server = start_server(Server::builder(), gate.clone()).await;
    let mut conn = leave_a_request_waiting(server.addr, &gate, Waiting::InBuffer).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let serving = server.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.pause(false);
    assert_eq!(conn.recv(WAIT).await.expect("three").payload, "three");
    assert!(conn.closed_within(WAIT).await, "closed after the drain");
    completes(serving).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_frame_waiting_for_the_service_is_not_closed_by_the_first_frame_timeout() {
    let gate = Gated::paused();
    let first_frame = Duration::from_millis(300);
    let config = Server::builder().first_frame_timeout(Some(first_frame));
    let server = start_server(config, gate.clone()).await;
    let mut conn = RawClient::connect(server.addr).await;
    conn.send(1, b"one").await;
    // Three first-frame timeouts while the server, not the client, waits.
    assert!(
        !conn.closed_within(first_frame * 3).await,
        "closed as if silent: {:?}",
        server.stats.snapshot()
    );
    gate.pause(false);
    assert_eq!(conn.recv(WAIT).await.expect("one").payload, "one");
    let stats = server.stats.snapshot();
    assert_eq!(stats.first_frame_timeouts, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_limit_a_silent_connection_is_evicted_before_a_longer_idle_real_one() {
    let config = evicting(2);
    let server = start_server(config, echo()).await;
    let mut real = RawClient::connect(server.addr).await;
    real.send(1, b"hi").await;
    assert_eq!(real.recv(WAIT).await.expect("hi").payload, "hi");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Idle for less time than `real`, but it never sent a frame.
    let mut silent = RawClient::connect(server.addr).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut newcomer = RawClient::connect(server.addr).await;
    assert!(silent.closed_within(WAIT).await, "silent evicted");
    newcomer.send(2, b"new").await;
    assert_eq!(newcomer.recv(WAIT).await.expect("new").payload, "new");
    real.send(3, b"still").await;
    assert_eq!(real.recv(WAIT).await.expect("kept").payload, "still");
    let stats = server.stats.snapshot();
    assert_eq!(stats.connections_evicted, 1, "{stats:?}");
}

/// The counts by state add up to the open connections.
fn states_add_up(stats: &anet::server::ServerStats) -> bool {
    stats.connections_new + stats.connections_active + stats.connections_idle
        == stats.connections_open
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counts_by_state_follow_connections_that_close_during_the_shutdown_drain() {
    let gate = Arc::new(Semaphore::new(0));
    let config = Server::builder().shutdown_grace(Duration::from_secs(60));
    let mut server = start_server(config, echo_or_hold(gate.clone())).await;
    let mut busy = RawClient::connect(server.addr).await;
    busy.send(1, b"hold").await;
    let mut idle = Vec::new();
    for i in 0..5 {
        let mut conn = RawClient::connect(server.addr).await;
        conn.send(i, b"x").await;
        assert_eq!(conn.recv(WAIT).await.expect("x").payload, "x");
        idle.push(conn);
    }
    assert!(eventually(WAIT, || server.stats.snapshot().connections_idle == 5).await);
    let serving = server.shutdown();
    for conn in idle.iter_mut() {
        assert!(
            conn.closed_within(WAIT).await,
            "idle closed by the shutdown"
        );
    }
    assert!(
        eventually(WAIT, || {
            let s = server.stats.snapshot();
            s.connections_open == 1 && s.connections_active == 1 && states_add_up(&s)
        })
        .await,
        "{:?}",
        server.stats.snapshot()
    );
    gate.add_permits(1);
    assert_eq!(busy.recv(WAIT).await.expect("answered").payload, "hold");
    completes(serving).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counts_by_state_are_zero_once_the_serve_future_is_dropped() {
    let mut server = start_server(Server::builder(), echo()).await;
    let mut conns = Vec::new();
    for i in 0..3 {
        let mut conn = RawClient::connect(server.addr).await;
        conn.send(i, b"x").await;
        assert_eq!(conn.recv(WAIT).await.expect("x").payload, "x");
        conns.push(conn);
    }
    conns.push(RawClient::connect(server.addr).await);
    assert!(eventually(WAIT, || server.stats.snapshot().connections_open == 4).await);
    server.task.take().expect("serving").abort();
    for conn in conns.iter_mut() {
        assert!(conn.closed_within(WAIT).await, "closed with the server");
    }
    assert!(
        eventually(WAIT, || {
            let s = server.stats.snapshot();
            s.connections_open == 0 && states_add_up(&s)
        })
        .await,
        "{:?}",
        server.stats.snapshot()
    );
}

/// Makes a [`Gated`] (open) service per connection; its readiness fails once,
/// on its `fail_on`-th check.
#[derive(Clone, Debug)]
struct FailsOnce {
    checks: Arc<std::sync::atomic::AtomicUsize>,
    fail_on: usize,
}

impl Service<SocketAddr> for FailsOnce {
    type Response = Gated;
    type Error = anet::BoxError;
    type Future = std::future::Ready<Result<Gated, anet::BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), anet::BoxError>> {
        let check = self
            .checks
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        if check == self.fail_on {
            Poll::Ready(Err("make-service not ready".into()))
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, _peer: SocketAddr) -> Self::Future {
        std::future::ready(Ok(Gated::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_make_service_error_at_the_limit_evicts_nothing() {
    let config = evicting(1);
    let server = anet_tests::bind_local(config).await;
    let addr = server.local_addr();
    let stats = server.stats();
    // The accept loop checks readiness once before each accept: the first
    // connection is made, the second meets the error.
    let make = FailsOnce {
        checks: Arc::default(),
        fail_on: 2,
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_make_with_shutdown(make, async {
        let _ = stopped.await;
    }));
    let mut idle = RawClient::connect(addr).await;
    idle.send(1, b"one").await;
    assert_eq!(idle.recv(WAIT).await.expect("one").payload, "one");
    newcomer_refused_past_idle_age(addr, "no service for it").await;
    assert!(
        !idle.closed_within(Duration::from_millis(200)).await,
        "idle connection evicted for nothing: {:?}",
        stats.snapshot()
    );
    assert_eq!(stats.snapshot().connections_evicted, 0);
    idle.send(2, b"two").await;
    assert_eq!(idle.recv(WAIT).await.expect("two").payload, "two");
    let _ = stop.send(());
    let _ = tokio::time::timeout(WAIT, serving).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_that_evicted_but_got_no_slot_within_the_wait_is_closed_and_counted() {
    let gate = Gated::default();
    // The wait for a slot is bounded by the first-frame timeout.
    let config = evicting(1).first_frame_timeout(Some(Duration::from_millis(300)));
    let server = start_server(config, gate.clone()).await;
    // `three` waits in the socket; the evicted connection will answer it once
    // the service is ready, which takes longer than the newcomer's wait.
    let mut conn = leave_a_request_waiting(server.addr, &gate, Waiting::InSocket).await;
    newcomer_refused_past_idle_age(server.addr, "no slot in time").await;
    let stats = evicted_rejected(&server, 1, 1);
    assert_eq!(stats.connections_rejected_after_wait, 1, "{stats:?}");
    gate.pause(false);
    assert_eq!(conn.recv(WAIT).await.expect("three").payload, "three");
    assert!(conn.closed_within(WAIT).await, "evicted connection closed");
}

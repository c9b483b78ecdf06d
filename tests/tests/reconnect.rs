//! Reconnect discipline: a backend that accepts connections and drops them (an
//! overloaded switch, a misconfigured HSM port, a load balancer with no healthy
//! target) must not be hammered, while a backend that answers and then closes
//! its connections is served at full speed.
//!
//! The timing tests run on paused time over in-memory pipes
//! ([`anet_tests::MemoryConnector`]), so "no waiting" and "within the backoff"
//! are exact; one test per behaviour also runs over real loopback TCP with
//! generous real-time bounds.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anet::{
    Kind,
    client::{Backoff, Client, ConnectionConfig},
};
use anet_proto::FrameCodec;
use anet_tests::{MemoryConnector, encode, memory_addr, spawn_writer};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    task::JoinSet,
    time::Instant,
};
use tokio_util::codec::FramedRead;

/// What a test backend does with each connection it accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Closes it at once, before reading anything.
    CloseAtOnce,
    /// Echoes every request.
    Echo,
    /// Echoes this many requests, then closes.
    EchoThenClose(usize),
    /// Reads every request, answers none.
    Silent,
    /// Echoes every request but one in `n` (that one is never answered).
    DropOneIn(u64),
    /// Echoes every request on the first connection; closes every later one
    /// at once (a backend at its connection limit).
    EchoFirstOnly,
}

/// A backend whose mode the test can switch; counts connections.
#[derive(Clone, Debug)]
struct Backend {
    mode: Arc<Mutex<Mode>>,
    connections: Arc<AtomicUsize>,
    /// The same count, to wait on.
    accepted: Arc<tokio::sync::watch::Sender<usize>>,
}

/// A backend in `mode` over in-memory pipes, its connector, and a client
/// builder that dials it (through a clone of the connector).
fn in_memory(mode: Mode) -> (Backend, MemoryConnector, anet::client::ClientBuilder) {
    let backend = Backend::new(mode);
    let connector = backend.memory();
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(connector.clone());
    (backend, connector, client)
}

impl Backend {
    fn new(mode: Mode) -> Backend {
        Backend {
            mode: Arc::new(Mutex::new(mode)),
            connections: Arc::default(),
            accepted: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock().expect("mode") = mode;
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Serves one accepted connection in the current mode.
    async fn serve<T>(self, io: T)
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let n = self.connections.fetch_add(1, Ordering::SeqCst) + 1;
        self.accepted.send_replace(n);
        let mode = match *self.mode.lock().expect("mode") {
            Mode::EchoFirstOnly if n == 1 => Mode::Echo,
            Mode::EchoFirstOnly => Mode::CloseAtOnce,
            mode => mode,
        };
        if mode == Mode::CloseAtOnce {
            // Paused time only moves while every task is idle; a client that
            // redials at once would keep it still for ever. Past this many
            // connections (far more than the test allows) each close waits a
            // millisecond, so the test ends and reports the count.
            if n > CEILING {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            return;
        }
        let (read, write) = tokio::io::split(io);
        let (tx, writer) = spawn_writer(write);
        let mut frames = FramedRead::new(read, FrameCodec::new());
        let mut answered = 0;
        let mut seen = 0u64;
        while let Some(Ok(frame)) = frames.next().await {
            seen += 1;
            match mode {
                Mode::Silent => continue,
                Mode::DropOneIn(k) if seen % k == 0 => continue,
                _ => {}
            }
            let _ = tx.send(Some(encode(&frame.tag, &frame.payload)));
            answered += 1;
            if mode == Mode::EchoThenClose(answered) {
                break;
            }
        }
        // Close gracefully: the answers, then end of stream; what the client
        // sent meanwhile is read and dropped (closing with it unread would
        // reset the connection, and a reset can discard the answers before
        // the client reads them).
        let _ = tx.send(None);
        let _ = writer.await;
        while let Some(Ok(_)) = frames.next().await {}
    }

    /// A connector that serves every dial in memory.
    fn memory(&self) -> MemoryConnector {
        let backend = self.clone();
        MemoryConnector::new(move |io| backend.clone().serve(io))
    }

    /// Listens on `127.0.0.1:0`; the server stops when the handle is dropped.
    async fn tcp(&self) -> (SocketAddr, AbortOnDrop) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let backend = self.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                stream.set_nodelay(true).ok();
                conns.spawn(backend.clone().serve(stream));
                while conns.try_join_next().is_some() {}
            }
        });
        (addr, AbortOnDrop(task))
    }
}

/// Dials past which a close-at-once backend slows down (see [`Backend::serve`]).
const CEILING: usize = 1000;

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the callers saw.
#[derive(Debug, Default)]
struct Seen {
    ok: usize,
    errors: Vec<Kind>,
    /// The longest time a failed call took.
    slowest_error: Duration,
    /// When the first answer arrived.
    first_ok: Option<Instant>,
}

/// Runs `callers` tasks calling in a loop until `stop`; each failure is
/// followed by a millisecond's pause (so that, on paused time, the clock can
/// move while the endpoint is down).
fn callers(client: &Client, callers: usize, stop: Arc<AtomicBool>) -> JoinSet<Seen> {
    callers_notifying(client, callers, stop, Arc::default())
}

/// [`callers`], notifying `answered` at each answer.
fn callers_notifying(
    client: &Client,
    callers: usize,
    stop: Arc<AtomicBool>,
    answered: Arc<tokio::sync::Notify>,
) -> JoinSet<Seen> {
    let mut tasks = JoinSet::new();
    for w in 0..callers {
        let (client, stop, answered) = (client.clone(), stop.clone(), answered.clone());
        tasks.spawn(async move {
            let mut seen = Seen::default();
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let payload = Bytes::from(format!("w{w}-{n}"));
                let started = Instant::now();
                let Ok(result) =
                    tokio::time::timeout(Duration::from_secs(10), client.call(payload.clone()))
                        .await
                else {
                    panic!("a call hung: w{w}-{n}");
                };
                match result {
                    Ok(reply) => {
                        assert_eq!(reply, payload, "misdelivered");
                        seen.ok += 1;
                        seen.first_ok.get_or_insert_with(Instant::now);
                        answered.notify_one();
                    }
                    Err(e) => {
                        seen.errors.push(e.kind());
                        seen.slowest_error = seen.slowest_error.max(started.elapsed());
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            seen
        });
    }
    tasks
}

async fn join(tasks: JoinSet<Seen>) -> Seen {
    let mut total = Seen::default();
    for seen in tasks.join_all().await {
        total.ok += seen.ok;
        total.errors.extend(seen.errors);
        total.slowest_error = total.slowest_error.max(seen.slowest_error);
        total.first_ok = match (total.first_ok, seen.first_ok) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    total
}

fn count(errors: &[Kind], kind: Kind) -> usize {
    errors.iter().filter(|k| **k == kind).count()
}

/// Fails unless every error is one a caller gets at once while its backend is
/// backing off (never a timeout).
fn assert_fail_fast_kinds(errors: &[Kind]) {
    for kind in errors {
        assert!(
            matches!(
                kind,
                Kind::Unavailable | Kind::NotSent | Kind::ConnectionLost
            ),
            "{kind:?}"
        );
    }
}

/// [`PoolConfig::settle`](anet::client::PoolConfig::settle)'s default.
const SETTLE: Duration = Duration::from_secs(1);

/// The cap of [`BACKOFF`].
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A backoff whose cap is reached within the test's five seconds.
const BACKOFF: Backoff = Backoff::new()
    .base(Duration::from_millis(100))
    .max(BACKOFF_MAX);

/// Paused time: a backend that accepts every connection and closes it at once
/// gets a few connections a second (the backoff grows to its cap), callers fail
/// fast with typed errors meanwhile, and once the backend answers, traffic
/// resumes within the backoff's current delay.
#[tokio::test(start_paused = true)]
async fn a_backend_that_accepts_and_closes_at_once_is_redialled_with_backoff_not_hammered() {
    let (backend, connector, client) = in_memory(Mode::CloseAtOnce);
    let client = client.backoff(BACKOFF).build();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(tokio::sync::Notify::new());
    let tasks = callers_notifying(&client, 16, stop.clone(), answered.clone());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let dials = connector.dials.load(Ordering::SeqCst);
    let stats = client.stats();
    let endpoint = stats.endpoint(memory_addr()).expect("endpoint").clone();
    println!("accept-and-close, 5 s: {dials} connections; {endpoint:?}");
    // 100 ms doubling to 1 s, jittered: at most 0.05 + 0.1 + 0.2 + 0.4 + 0.5 s
    // before the cap, then one dial at least every 0.5 s: under 20.
    assert!(dials <= 20, "{dials} connections in 5 s");
    assert!(!endpoint.up);
    assert_eq!(endpoint.dials, dials as u64);
    assert_eq!(
        endpoint.failed_dials, dials as u64,
        "each one a failed dial"
    );
    assert!(endpoint.backoff >= BACKOFF_MAX / 2 && endpoint.backoff <= BACKOFF_MAX);

    // The backend answers again: traffic resumes within the current backoff.
    let switched = Instant::now();
    let current = endpoint.backoff;
    backend.set(Mode::Echo);
    // (Not a sleep: paused time stands still while the callers are answered.)
    tokio::time::timeout(
        BACKOFF_MAX + Duration::from_millis(100),
        answered.notified(),
    )
    .await
    .expect("traffic resumed within the backoff's cap");
    stop.store(true, Ordering::SeqCst);
    let seen = join(tasks).await;
    let resumed = seen.first_ok.expect("traffic resumed") - switched;
    assert!(
        resumed <= current + Duration::from_millis(2),
        "resumed {resumed:?} after the switch; the backoff was {current:?}"
    );
    // Proven again: the backoff is over (the pool looks once the new
    // connection has settled, at the latest).
    tokio::time::sleep(SETTLE + Duration::from_millis(10)).await;
    let stats = client.stats();
    let endpoint = stats.endpoint(memory_addr()).expect("endpoint");
    assert!(endpoint.up);
    assert_eq!(endpoint.backoff, Duration::ZERO);
    // Typed errors throughout, each at once: never a wait for the backoff.
    assert!(!seen.errors.is_empty());
    assert_fail_fast_kinds(&seen.errors);
    assert!(
        seen.slowest_error < Duration::from_millis(5),
        "a failed call took {:?}",
        seen.slowest_error
    );
}

/// The same backend over real loopback TCP, in real time: a few dozen
/// connections in five seconds at most (bounds generous for a loaded machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_backend_that_accepts_and_closes_at_once_gets_a_few_dozen_connections_in_five_seconds()
 {
    let backend = Backend::new(Mode::CloseAtOnce);
    let (addr, _server) = backend.tcp().await;
    let client = Client::builder().endpoint(addr).backoff(BACKOFF).build();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = callers(&client, 16, stop.clone());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let connections = backend.connections();
    println!("TCP accept-and-close, 5 s: {connections} connections");
    assert!(connections <= 36, "{connections} connections in 5 s");

    backend.set(Mode::Echo);
    let switched = Instant::now();
    let resumed = anet_tests::eventually(Duration::from_secs(10), || {
        client.stats().endpoint(addr).is_some_and(|e| e.up)
    })
    .await;
    assert!(resumed, "the endpoint came back");
    // Within the capped backoff, plus a generous margin for a loaded machine.
    assert!(switched.elapsed() < BACKOFF_MAX + Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let seen = join(tasks).await;
    assert!(seen.ok > 0);
    assert!(!seen.errors.is_empty());
    assert_fail_fast_kinds(&seen.errors);
}

/// Paused time: each connection answers five requests and then closes. Those
/// connections proved themselves; they are replaced at once, so the clock
/// never moves (no backoff), no request fails `Unavailable`, and the only
/// failures are requests in flight when a connection closed.
#[tokio::test(start_paused = true)]
async fn connections_that_answered_before_the_server_closed_them_are_replaced_at_once() {
    const CONNECTIONS: usize = 300;
    let (backend, _connector, client) = in_memory(Mode::EchoThenClose(5));
    let client = client.build();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = callers(&client, 16, stop.clone());
    // Paused time moves only while every task waits: were a replacement put
    // off by a backoff (50 ms at least), this would time out.
    let mut accepted = backend.accepted.subscribe();
    let reached = tokio::time::timeout(
        Duration::from_millis(50),
        accepted.wait_for(|n| *n >= CONNECTIONS),
    )
    .await
    .is_ok_and(|r| r.is_ok()); // (the borrow it returns would block the backend)
    assert!(
        reached,
        "the clock moved: a backoff after {} connections",
        backend.connections()
    );
    stop.store(true, Ordering::SeqCst);
    let seen = join(tasks).await;
    let stats = client.stats();
    let endpoint = stats.endpoint(memory_addr()).expect("endpoint");
    println!("answer-then-close: {seen:?} {endpoint:?}");
    assert_eq!(
        count(&seen.errors, Kind::Unavailable),
        0,
        "{:?}",
        seen.errors
    );
    // Only requests in flight when their connection closed: at most one per
    // caller per close.
    for kind in &seen.errors {
        assert!(
            matches!(kind, Kind::ConnectionLost | Kind::NotSent),
            "{kind:?}"
        );
    }
    assert!(seen.errors.len() <= 16 * backend.connections());
    assert!(seen.ok >= 4 * CONNECTIONS, "{} answers", seen.ok);
    assert_eq!(endpoint.failed_dials, 0);
    assert_eq!(endpoint.backoff, Duration::ZERO);
}

/// The same over real loopback TCP: the endpoint is never marked down and no
/// request fails `Unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_backend_that_answers_then_closes_is_never_marked_down() {
    let backend = Backend::new(Mode::EchoThenClose(5));
    let (addr, _server) = backend.tcp().await;
    let client = Client::builder().endpoint(addr).build();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = callers(&client, 16, stop.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while backend.connections() < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let seen = join(tasks).await;
    assert!(backend.connections() >= 200, "{}", backend.connections());
    let stats = client.stats();
    assert_eq!(
        count(&seen.errors, Kind::Unavailable),
        0,
        "{:?}",
        stats.endpoint(addr)
    );
    assert!(seen.ok >= 4 * 200, "{} answers", seen.ok);
    let stats = client.stats();
    assert_eq!(stats.endpoint(addr).expect("endpoint").failed_dials, 0);
}

/// Paused time: a backend that reads requests and never answers. Each
/// connection retires once its callers gave up on a window's worth of requests
/// (their tags stay held); a connection retired before it answered anything
/// counts as a failed dial, so replacements back off.
#[tokio::test(start_paused = true)]
async fn connections_retired_before_they_answered_anything_are_replaced_with_backoff() {
    let (_backend, connector, client) = in_memory(Mode::Silent);
    let client = client
        .connection(
            ConnectionConfig::new()
                .max_in_flight(8)
                .quarantine(Duration::from_millis(20))
                .close_grace(Duration::from_millis(20)),
        )
        .request_timeout(Duration::from_millis(20))
        .backoff(BACKOFF)
        .build();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = callers(&client, 16, stop.clone());
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.store(true, Ordering::SeqCst);
    let seen = join(tasks).await;
    let dials = connector.dials.load(Ordering::SeqCst);
    println!("never-answering backend, 5 s: {dials} connections");
    assert!(dials <= 20, "{dials} connections in 5 s");
    assert_eq!(seen.ok, 0);
    let stats = client.stats();
    let endpoint = stats.endpoint(memory_addr()).expect("endpoint");
    assert!(endpoint.failed_dials >= 3, "{endpoint:?}");
}

/// Paused time, after a chaos soak's finding: a small window (50) and a backend
/// that never answers one request in twelve (8%). Connections retire often, but
/// each answered many requests: every retirement is replaced at once and the
/// endpoint is never marked down, so no caller sees `Unavailable`.
#[tokio::test(start_paused = true)]
async fn frequent_retirements_of_connections_that_answer_never_mark_the_endpoint_down() {
    let (_backend, connector, client) = in_memory(Mode::DropOneIn(12));
    let client = client
        .connection(ConnectionConfig::new().max_in_flight(50))
        .request_timeout(Duration::from_millis(300))
        .build();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = callers(&client, 64, stop.clone());
    let started = Instant::now();
    let mut down = 0;
    while started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(1)).await;
        let stats = client.stats();
        if !stats.endpoint(memory_addr()).is_some_and(|e| e.up) {
            down += 1;
        }
    }
    stop.store(true, Ordering::SeqCst);
    let seen = join(tasks).await;
    let dials = connector.dials.load(Ordering::SeqCst);
    println!(
        "8% dropped, window 50, 5 s: {dials} connections, {} ok, {} errors",
        seen.ok,
        seen.errors.len()
    );
    assert!(dials >= 5, "connections retired: {dials} dials");
    assert_eq!(count(&seen.errors, Kind::Unavailable), 0);
    for kind in &seen.errors {
        assert!(
            matches!(kind, Kind::Timeout | Kind::ConnectionLost),
            "{kind:?}"
        );
    }
    assert!(seen.ok > 5 * seen.errors.len());
    // A replacement dial takes no time here; the endpoint is down only for
    // the instant between a retirement and its replacement, if ever.
    assert!(down <= 5, "seen down {down} times");
    let stats = client.stats();
    assert_eq!(
        stats
            .endpoint(memory_addr())
            .expect("endpoint")
            .failed_dials,
        0
    );
}

/// Over loopback TCP: a backend at its connection limit serves the first
/// connection and closes every later one at once. The pool's extra dials fail
/// (and back off), but the endpoint keeps serving through its answering
/// connection: it is never taken out of routing, and no request fails
/// `Unavailable`. (Before, three refused extra dials marked it down.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_dials_refused_beside_an_answering_connection_never_mark_the_endpoint_down() {
    let backend = Backend::new(Mode::EchoFirstOnly);
    let (addr, _server) = backend.tcp().await;
    // A small window, so that the pool wants more connections under load.
    let client = Client::builder().endpoint(addr).max_in_flight(2).build();
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = callers(&client, 16, stop.clone());
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, Ordering::SeqCst);
    let seen = join(tasks).await;
    let stats = client.stats();
    let endpoint = stats.endpoint(addr).expect("endpoint");
    assert!(
        endpoint.failed_dials > 0,
        "extra dials were refused: {endpoint:?}"
    );
    assert_eq!(count(&seen.errors, Kind::Unavailable), 0, "{endpoint:?}");
    assert!(endpoint.up, "{endpoint:?}");
    assert!(seen.ok > 1000, "{} answers; {endpoint:?}", seen.ok);
    assert!(
        backend.connections() < 40,
        "extra dials backed off: {} connections",
        backend.connections()
    );
}

//! Helpers for anet's integration tests: small, real servers on `127.0.0.1:0`.
//!
//! * [`start_scripted`]: a server whose behaviour per request is a closure
//!   (echo, delay, ignore, close, send raw bytes), for reordering and fault tests.
//! * [`ManualServer`]: one accepted connection that the test drives by hand,
//!   reading each request frame and writing any bytes it likes back.
//! * [`Rng`]: a tiny deterministic generator, so failures replay.
//! * [`MemoryConnector`] and [`memory_scripted`]: the same servers over in-memory
//!   pipes, for tests of timeouts and backoff on paused time
//!   (`#[tokio::test(start_paused = true)]`), where real sockets would race the
//!   auto-advancing clock.
//! * [`servers`]: echo servers on their own thread, for benchmarks and the
//!   allocation test.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use anet_proto::{Frame, FrameCodec};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_util::codec::{Encoder, FramedRead};

pub mod clients;
pub mod servers;

/// What a scripted server does with one request.
#[derive(Clone, Debug)]
pub enum Action {
    /// Echo the request (same tag, same payload) after the delay.
    Echo(Duration),
    /// Answer with this payload under the request's tag, after the delay.
    Reply(Duration, Bytes),
    /// Never answer.
    Ignore,
    /// Close the connection now.
    Close,
    /// Write these raw bytes (anything, valid or not) after the delay.
    Raw(Duration, Bytes),
}

/// Counters of a scripted server.
#[derive(Debug, Default)]
pub struct ServerCounters {
    /// Requests read, over all connections.
    pub requests: AtomicUsize,
    /// Requests read and not yet answered or ignored.
    pub in_flight: AtomicUsize,
    /// The most `in_flight` ever was.
    pub max_in_flight: AtomicUsize,
    /// Connections accepted.
    pub connections: AtomicUsize,
}

/// A running scripted server.
#[derive(Debug)]
pub struct Scripted {
    /// Where it listens.
    pub addr: SocketAddr,
    /// What it has seen.
    pub counters: Arc<ServerCounters>,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    /// Stops accepting; connections already open stay until their peer leaves.
    pub fn stop_accepting(&self) {
        self.task.abort();
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a server on `127.0.0.1:0` that treats request number `n` (counted over
/// all connections, from 0) as `script(n, &frame)` says.
pub async fn start_scripted<F>(script: F) -> Scripted
where
    F: Fn(usize, &Frame) -> Action + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counters = Arc::new(ServerCounters::default());
    let script = Arc::new(script);
    let c = counters.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            c.connections.fetch_add(1, Ordering::SeqCst);
            stream.set_nodelay(true).ok();
            conns.spawn(serve_scripted(stream, script.clone(), c.clone()));
        }
    });
    Scripted {
        addr,
        counters,
        task,
    }
}

async fn serve_scripted<T, F>(stream: T, script: Arc<F>, counters: Arc<ServerCounters>)
where
    T: AsyncRead + AsyncWrite + Send + 'static,
    F: Fn(usize, &Frame) -> Action + Send + Sync + 'static + ?Sized,
{
    let (read, write) = tokio::io::split(stream);
    let (tx, writer) = spawn_writer(write);
    let mut frames = FramedRead::new(read, FrameCodec::new());
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(Ok(frame)) = frames.next().await {
        let n = counters.requests.fetch_add(1, Ordering::SeqCst);
        let now = counters.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        counters.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let action = script(n, &frame);
        let (delay, bytes) = match action {
            Action::Echo(d) => (d, encode(&frame.tag, &frame.payload)),
            Action::Reply(d, payload) => (d, encode(&frame.tag, &payload)),
            Action::Raw(d, bytes) => (d, bytes),
            Action::Ignore => {
                counters.in_flight.fetch_sub(1, Ordering::SeqCst);
                continue;
            }
            Action::Close => break,
        };
        let tx = tx.clone();
        let counters = counters.clone();
        if delay.is_zero() {
            counters.in_flight.fetch_sub(1, Ordering::SeqCst);
            let _ = tx.send(Some(bytes));
        } else {
            tasks.spawn(async move {
                tokio::time::sleep(delay).await;
                counters.in_flight.fetch_sub(1, Ordering::SeqCst);
                let _ = tx.send(Some(bytes));
            });
        }
    }
    // Closing: stop the writer now (pending delayed replies are abandoned).
    tasks.abort_all();
    let _ = tx.send(None);
    let _ = writer.await;
}

/// A task that writes what it is sent, in order, until it gets `None` (then it
/// closes the sending side) or the peer stops reading; for servers whose replies
/// come from several tasks in completion order.
pub fn spawn_writer<W>(
    mut write: W,
) -> (
    mpsc::UnboundedSender<Option<Bytes>>,
    tokio::task::JoinHandle<()>,
)
where
    W: AsyncWrite + Send + Unpin + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<Option<Bytes>>();
    let writer = tokio::spawn(async move {
        while let Some(Some(bytes)) = rx.recv().await {
            if write.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = write.shutdown().await;
    });
    (tx, writer)
}

/// Capacity of each in-memory pipe a [`MemoryConnector`] makes, per direction.
pub const MEMORY_PIPE: usize = 64 * 1024;

/// A connector (`Service<SocketAddr>`, for `ClientBuilder::connector`) whose every
/// dial makes an in-memory pipe and spawns `serve` on its server end: a backend
/// that needs no socket, so timeouts and backoff can be tested on paused time.
/// The address is ignored; counts dials.
#[derive(Clone)]
pub struct MemoryConnector {
    serve: Arc<dyn Fn(DuplexStream) -> BoxFuture + Send + Sync>,
    /// Dials so far.
    pub dials: Arc<AtomicUsize>,
}

type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl MemoryConnector {
    /// Serves each dialled pipe with `serve(server_end)`.
    pub fn new<F, Fut>(serve: F) -> MemoryConnector
    where
        F: Fn(DuplexStream) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        MemoryConnector {
            serve: Arc::new(move |io| Box::pin(serve(io))),
            dials: Arc::default(),
        }
    }
}

impl std::fmt::Debug for MemoryConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryConnector")
            .field("dials", &self.dials)
            .finish_non_exhaustive()
    }
}

impl tower::Service<SocketAddr> for MemoryConnector {
    type Response = DuplexStream;
    type Error = std::io::Error;
    type Future = std::future::Ready<std::io::Result<DuplexStream>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _addr: SocketAddr) -> Self::Future {
        self.dials.fetch_add(1, Ordering::SeqCst);
        let (client, server) = tokio::io::duplex(MEMORY_PIPE);
        tokio::spawn((self.serve)(server));
        std::future::ready(Ok(client))
    }
}

/// A scripted server (see [`start_scripted`]) behind a [`MemoryConnector`]: the
/// connector for the client, and the server's counters.
pub fn memory_scripted<F>(script: F) -> (MemoryConnector, Arc<ServerCounters>)
where
    F: Fn(usize, &Frame) -> Action + Send + Sync + 'static,
{
    let counters = Arc::new(ServerCounters::default());
    let script = Arc::new(script);
    let c = counters.clone();
    let connector = MemoryConnector::new(move |io| {
        c.connections.fetch_add(1, Ordering::SeqCst);
        serve_scripted(io, script.clone(), c.clone())
    });
    (connector, counters)
}

/// An address for clients whose connector ignores it ([`MemoryConnector`]).
pub fn memory_addr() -> SocketAddr {
    "127.0.0.1:1".parse().expect("addr")
}

/// Encodes one frame with the default codec.
pub fn encode(tag: &anet_proto::Tag, payload: &[u8]) -> Bytes {
    encode_with(&FrameCodec::new(), tag, payload)
}

/// Encodes one frame with `codec`.
pub fn encode_with(codec: &FrameCodec, tag: &anet_proto::Tag, payload: &[u8]) -> Bytes {
    let mut buf = BytesMut::new();
    codec
        .clone()
        .encode(anet_proto::FrameRef { tag: *tag, payload }, &mut buf)
        .expect("encode");
    buf.freeze()
}

/// Starts an echo server (every request answered at once).
pub async fn start_echo() -> Scripted {
    start_scripted(|_, _| Action::Echo(Duration::ZERO)).await
}

/// A server that accepts one connection and lets the test drive it.
#[derive(Debug)]
pub struct ManualServer {
    /// Where it listens.
    pub addr: SocketAddr,
    listener: Option<TcpListener>,
}

/// The accepted side of a [`ManualServer`].
#[derive(Debug)]
pub struct ManualConn {
    frames: FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
    /// Encodes replies in the connection's frame format.
    codec: FrameCodec,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl ManualServer {
    /// Binds `127.0.0.1:0`.
    pub async fn bind() -> ManualServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        ManualServer {
            addr: listener.local_addr().expect("addr"),
            listener: Some(listener),
        }
    }

    /// Accepts the next connection.
    pub async fn accept(&mut self) -> ManualConn {
        self.accept_with(FrameCodec::new()).await
    }

    /// Accepts the next connection, reading its requests with `codec` (e.g. one
    /// with an ASCII tag).
    pub async fn accept_with(&mut self, codec: FrameCodec) -> ManualConn {
        let (stream, _) = self
            .listener
            .as_ref()
            .expect("listener")
            .accept()
            .await
            .expect("accept");
        let (read, write) = stream.into_split();
        ManualConn {
            frames: FramedRead::new(read, codec.clone()),
            codec,
            write,
        }
    }
}

impl ManualConn {
    /// The next request frame (panics after 10 s, or when the client closed).
    pub async fn recv(&mut self) -> Frame {
        tokio::time::timeout(Duration::from_secs(10), self.frames.next())
            .await
            .expect("request within 10 s")
            .expect("connection open")
            .expect("valid frame")
    }

    /// The next frame as read: `None` once the client closed.
    pub async fn frames_next(&mut self) -> Option<Result<Frame, anet_proto::FrameError>> {
        self.frames.next().await
    }

    /// Whether the client closed its side (waits up to `within`).
    pub async fn client_closed(&mut self, within: Duration) -> bool {
        matches!(
            tokio::time::timeout(within, self.frames.next()).await,
            Ok(None) | Ok(Some(Err(_)))
        )
    }

    /// Writes raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.write.write_all(bytes).await.expect("write");
    }

    /// Answers `frame` with `payload` under its tag.
    pub async fn reply(&mut self, frame: &Frame, payload: &[u8]) {
        let bytes = encode_with(&self.codec, &frame.tag, payload);
        self.send_raw(&bytes).await;
    }
}

/// A small deterministic xorshift generator.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is replaced by a fixed constant).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Resident set size of this process in bytes (Linux), for memory-bound checks.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Waits (real time) until `cond` holds, checking every 10 ms; false after `limit`.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How late the current runtime runs a task that is due: a probe task sleeps
/// [`LagProbe::TICK`] in a loop and adds up how much later than asked it woke
/// each time.
///
/// A test that bounds the wall-clock time of a call (a request must end
/// within its deadline plus some slack) can excuse the lag the probe saw
/// during that call: on a starved machine (every core taken by builds) or a
/// saturated runtime, a task whose timer fired may wait long before it runs,
/// which says nothing about the code under test. The probe takes the same
/// path as a caller woken by a timer (timer, run queue, worker thread), so a
/// call late because the runtime was late is excused, while a call late
/// because the code ignored its deadline is not (the probe then runs on
/// time). Dropping it stops the probe.
#[derive(Debug)]
pub struct LagProbe {
    total_ns: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl LagProbe {
    /// How often the probe asks to wake.
    pub const TICK: Duration = Duration::from_millis(10);

    /// Starts the probe on the current runtime.
    pub fn start() -> LagProbe {
        let total_ns = Arc::new(AtomicU64::new(0));
        let total = total_ns.clone();
        let task = tokio::spawn(async move {
            loop {
                let asked = tokio::time::Instant::now() + Self::TICK;
                tokio::time::sleep_until(asked).await;
                let late = tokio::time::Instant::now().saturating_duration_since(asked);
                let late = u64::try_from(late.as_nanos()).unwrap_or(u64::MAX);
                total.fetch_add(late, Ordering::Relaxed);
            }
        });
        LagProbe { total_ns, task }
    }

    /// The lateness seen so far, added up over every tick: the difference of
    /// two readings is the lag seen between them.
    pub fn total(&self) -> Duration {
        Duration::from_nanos(self.total_ns.load(Ordering::Relaxed))
    }
}

impl Drop for LagProbe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running anet [`Server`](anet::server::Server) for tests, shut down on drop.
#[derive(Debug)]
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its counters.
    pub stats: anet::server::StatsHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    /// The serving task; completes after shutdown.
    pub task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl RunningServer {
    /// Wraps a server the test started itself.
    pub fn from_parts(
        addr: SocketAddr,
        stats: anet::server::StatsHandle,
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<std::io::Result<()>>,
    ) -> RunningServer {
        RunningServer {
            addr,
            stats,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Starts graceful shutdown and returns the serving task to await.
    pub fn shutdown(&mut self) -> tokio::task::JoinHandle<std::io::Result<()>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().expect("server task")
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// A request handler as the test servers take it: a cloneable service of
/// [`Request`](anet::server::Request)s answering [`Bytes`], never failing.
pub trait Handler:
    tower::Service<
        anet::server::Request,
        Response = Bytes,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> Handler for S where
    S: Clone
        + Send
        + 'static
        + tower::Service<
            anet::server::Request,
            Response = Bytes,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        >
{
}

/// An echo service for an anet server: each request's payload is its answer.
pub fn echo() -> impl Handler {
    tower::service_fn(|req: anet::server::Request| async move {
        Ok::<_, std::convert::Infallible>(req.into_payload())
    })
}

/// A service that fails a request whose payload is `fail` (an error the
/// server's `OnError` policy acts on) and echoes any other.
pub fn fails_on_fail() -> impl tower::Service<
    anet::server::Request,
    Response = Bytes,
    Error = &'static str,
    Future: Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|req: anet::server::Request| async move {
        if req.payload() == "fail" {
            Err("refused")
        } else {
            Ok(req.into_payload())
        }
    })
}

/// Binds an anet server with `config` on `127.0.0.1:0` (any free port).
pub async fn bind_local(config: anet::server::Builder) -> anet::server::Server {
    config
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind")
}

/// Starts an anet server on `127.0.0.1:0` with `config`, serving `service`.
pub async fn start_server<S>(config: anet::server::Builder, service: S) -> RunningServer
where
    S: tower::Service<anet::server::Request, Response = Bytes> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<anet::BoxError>,
{
    let server = bind_local(config).await;
    let addr = server.local_addr();
    let stats = server.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve_with_shutdown(service, async {
        let _ = stopped.await;
    }));
    RunningServer {
        addr,
        stats,
        stop: Some(stop),
        task: Some(task),
    }
}

/// Starts an anet server on `addr` again (a restarted backend on the same
/// port), retrying the bind while the old socket lingers.
pub async fn restart_server<S>(addr: SocketAddr, service: S) -> RunningServer
where
    S: tower::Service<anet::server::Request, Response = Bytes> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<anet::BoxError>,
{
    let mut listener = None;
    for _ in 0..100 {
        if let Ok(l) = TcpListener::bind(addr).await {
            listener = Some(l);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listener = listener.unwrap_or_else(|| panic!("could not rebind {addr}"));
    let server = anet::server::Server::builder()
        .listener(listener)
        .expect("server");
    let stats = server.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve_with_shutdown(service, async {
        let _ = stopped.await;
    }));
    RunningServer::from_parts(addr, stats, stop, task)
}

/// A raw client socket speaking frames by hand (no anet client involved).
#[derive(Debug)]
pub struct RawClient {
    /// The framed socket.
    pub framed: tokio_util::codec::Framed<TcpStream, FrameCodec>,
}

impl RawClient {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        RawClient {
            framed: tokio_util::codec::Framed::new(stream, FrameCodec::new()),
        }
    }

    /// Sends one frame.
    pub async fn send(&mut self, tag: u32, payload: &[u8]) {
        use futures_util::SinkExt;
        self.framed
            .send(Frame::new(
                anet_proto::Tag::from_u32(tag),
                Bytes::copy_from_slice(payload),
            ))
            .await
            .expect("send");
    }

    /// Writes raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.framed.get_mut().write_all(bytes).await.expect("write");
    }

    /// The next frame, `None` when the server closed, or panics after `within`.
    pub async fn recv(&mut self, within: Duration) -> Option<Frame> {
        match tokio::time::timeout(within, self.framed.next()).await {
            Ok(Some(Ok(frame))) => Some(frame),
            Ok(Some(Err(_))) | Ok(None) => None,
            Err(_) => panic!("no frame within {within:?}"),
        }
    }

    /// Waits up to `within` for the server to close the connection; true if it did.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.framed.next()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }
}

/// Waits until `service` is ready, then starts a call with `payload`; the
/// returned future is the call's answer.
pub async fn ready_call<S>(service: &mut S, payload: &'static [u8]) -> S::Future
where
    S: tower::Service<Bytes>,
    S::Error: std::fmt::Debug,
{
    use tower::ServiceExt;
    service
        .ready()
        .await
        .expect("ready")
        .call(Bytes::from_static(payload))
}

/// Whether `service` is still not ready after `within`: a readiness check
/// that must wait (for a free slot, a window, a connection).
pub async fn not_ready_within<S>(service: &mut S, within: Duration) -> bool
where
    S: tower::Service<Bytes>,
{
    use tower::ServiceExt;
    tokio::time::timeout(within, service.ready()).await.is_err()
}

//! The server-wide budget under floods at a slow handler, with the process's
//! resident memory sampled throughout: small frames pipelined from 300
//! connections (the memory outside the budget: read and write buffers), then
//! maximum-size frames from 1,000 connections, then 16, then the return
//! towards the baseline. One test function, so that nothing else in this
//! process allocates while it measures.
//!
//! The flooders run in a child process (this test binary again, running the
//! ignored `flooder` test), so that the resident memory measured here is the
//! server's alone, as it would be in production. They write every frame from
//! one shared buffer and read the answers into a small buffer each.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anet::{
    client::Connector,
    server::{Request, Server, StatsHandle},
};
use anet_proto::Tag;
use anet_tests::{RunningServer, encode, eventually, rss_bytes};
use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    time::Instant,
};
use tower::{Service, ServiceExt, service_fn};

const MIB: u64 = 1024 * 1024;
/// The largest payload of a default frame (65,535-byte body less the 4-byte tag).
const MAX_PAYLOAD: usize = 65_531;
/// How long the handler takes for every request (a proxy before a busy HSM).
const HANDLER: Duration = Duration::from_secs(1);
/// How long it takes for small requests starting with [`QUICK`] (so that the
/// small-frame flood, limited by the 10,000 requests of the budget, is short).
const QUICK_HANDLER: Duration = Duration::from_millis(20);
const QUICK: u8 = b'q';
/// Connections and frames of the small-frame flood: each connection pipelines
/// its frames at once, 100-byte payloads (about 62 KiB: enough to grow its
/// read buffer to the most).
const SMALL_CONNS: usize = 300;
const SMALL_FRAMES: usize = 600;
const SMALL_PAYLOAD: usize = 100;
/// Memory outside the budget per connection (see
/// `server::Builder::max_in_flight_bytes`): a 64 KiB read buffer and 16 KiB of
/// write buffer.
const PER_CONNECTION: u64 = 80 * 1024;
/// Slack for measurements of resident memory (allocator, task and timer state
/// of 10,000 requests in flight, sampling).
const SLACK: u64 = 24 * MIB;
/// Resident memory growth the floods must stay under (default 64 MiB budget).
const BOUND: u64 = 100 * MIB;
/// Socket buffers of the flooders and the server's accepted sockets: small, so
/// that the kernel's memory (not counted in RSS, but real) stays modest.
const SOCKET_BUFFER: u32 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_max_frames_at_a_slow_handler_stay_within_the_budget() {
    let server = start_slow_echo().await;
    let peak = Peak::start(server.stats.clone());
    let base = peak.baseline;

    // Small frames pipelined from many connections: the budget's bytes stay
    // small (10,000 requests of 104 bytes); what grows is the memory outside
    // it, bounded per connection.
    let (sent, answered) =
        flood_from_child(server.addr, SMALL_CONNS, SMALL_FRAMES, SMALL_PAYLOAD, 60).await;
    let grown_small = peak.take().saturating_sub(base);
    let budget_small = peak.budget.swap(0, Ordering::Relaxed);
    println!(
        "{SMALL_CONNS} connections x {SMALL_FRAMES} small frames: sent {sent}, answered \
         {answered}; peak RSS growth {} MiB; budget in use at most {} KiB",
        grown_small / MIB,
        budget_small / 1024
    );
    assert_eq!(sent, (SMALL_CONNS * SMALL_FRAMES) as u64);
    assert_eq!(answered, sent, "every request read is answered");
    let bound_small = budget_small + SMALL_CONNS as u64 * PER_CONNECTION + SLACK;
    assert!(
        grown_small <= bound_small,
        "RSS grew {} MiB, over the budget used plus {} KiB per connection ({} MiB)",
        grown_small / MIB,
        PER_CONNECTION / 1024,
        bound_small / MIB
    );

    // 1,000 connections flooding for 6 s, and a well-behaved client meanwhile.
    let flooding = tokio::spawn(flood_from_child(server.addr, 1000, 300, MAX_PAYLOAD, 6));
    assert!(
        eventually(Duration::from_secs(20), || server
            .stats
            .snapshot()
            .budget_bytes_in_use
            >= 48 * MIB)
        .await,
        "the flood fills the budget: {:?}",
        server.stats.snapshot()
    );
    let mut conn = Connector::new()
        .connect(server.addr)
        .await
        .expect("connect");
    let mut slowest = Duration::ZERO;
    for i in 0..3u8 {
        let started = Instant::now();
        // Answered in about 2 s (the handler takes 1 s); 20 s leaves a loaded
        // machine room, while a client starved behind 1,000 flooders for the
        // whole flood (6 s of sending, then their backlog) would miss it.
        let reply = tokio::time::timeout(Duration::from_secs(20), async {
            conn.ready().await?.call(Bytes::from(vec![i; 16])).await
        })
        .await
        .expect("a well-behaved client is answered within its 20 s deadline")
        .expect("answered");
        assert_eq!(reply, vec![i; 16]);
        slowest = slowest.max(started.elapsed());
    }
    drop(conn);
    let (sent, answered) = flooding.await.expect("flood");
    assert!(
        sent >= 1000,
        "every connection sent a frame at least: {sent}"
    );
    let grown_1000 = peak.take().saturating_sub(base);
    let stats = server.stats.snapshot();
    println!(
        "1,000 connections: sent {sent} frames, answered {answered}; peak RSS growth {} MiB; \
         well-behaved client's slowest answer {slowest:?} (handler {HANDLER:?}); {stats:?}",
        grown_1000 / MIB
    );
    println!(
        "budget in use at most {} MiB",
        peak.budget.load(Ordering::Relaxed) / MIB
    );
    assert_eq!(answered, sent, "every request read is answered");
    assert!(grown_1000 <= BOUND, "RSS grew {} MiB", grown_1000 / MIB);

    // 16 connections x 300 frames of 64 KiB (300 MiB offered at once).
    let (sent, answered) = flood_from_child(server.addr, 16, 300, MAX_PAYLOAD, 60).await;
    let grown_16 = peak.take().saturating_sub(base);
    let stats = server.stats.snapshot();
    println!(
        "16 connections: sent {sent} frames, answered {answered}; peak RSS growth {} MiB; \
         throttled {:?}",
        grown_16 / MIB,
        stats.throttled
    );
    assert_eq!(sent, 16 * 300);
    assert_eq!(answered, sent, "every request read is answered");
    assert!(
        stats.throttled > Duration::ZERO,
        "the budget was reached: {stats:?}"
    );
    assert!(grown_16 <= BOUND, "RSS grew {} MiB", grown_16 / MIB);

    // Everything answered and closed: the server holds nothing of the budget
    // and no connection. The allocator (glibc) keeps the freed 64 KiB chunks
    // in its heap for reuse rather than returning them, so resident memory
    // stays near its peak; it must not grow further once the floods end (the
    // 16-connection flood above already ran on the memory the 1,000 left).
    assert!(
        eventually(Duration::from_secs(20), || {
            let s = server.stats.snapshot();
            s.connections_open == 0 && s.budget_bytes_in_use == 0 && s.budget_requests_in_use == 0
        })
        .await,
        "{:?}",
        server.stats.snapshot()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_bytes().expect("rss").saturating_sub(base);
    let peak_growth = grown_16.max(grown_1000).max(grown_small);
    println!(
        "after the floods: RSS {} MiB over the baseline (peak growth {} MiB)",
        after / MIB,
        peak_growth / MIB
    );
    // Resident memory may drift a little (allocator bookkeeping, lazily
    // touched pages) but not grow by anything like a flood's worth.
    assert!(
        after <= peak_growth + SLACK,
        "memory grew after the floods: {} MiB over the baseline after a peak of {} MiB",
        after / MIB,
        peak_growth / MIB
    );
    peak.stop();
}

/// Runs [`flood`] in a child process (see the module docs) and returns its
/// totals.
async fn flood_from_child(
    addr: SocketAddr,
    conns: usize,
    frames: usize,
    payload: usize,
    secs: u64,
) -> (u64, u64) {
    let exe = std::env::current_exe().expect("test binary");
    let spec = format!("{addr} {conns} {frames} {payload} {secs}");
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .args(["flooder", "--exact", "--ignored", "--nocapture"])
            .env(FLOOD_ENV, spec)
            .output()
    })
    .await
    .expect("join")
    .expect("run the flooder");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "flooder failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("FLOOD "))
        .expect("the flooder's totals");
    let mut totals = line.split(' ').map(|n| n.parse::<u64>().expect("number"));
    (
        totals.next().expect("sent"),
        totals.next().expect("answered"),
    )
}

/// Where the child process finds what to flood: `addr conns frames payload
/// secs`.
const FLOOD_ENV: &str = "ANET_TEST_FLOOD";

/// The flooding client, run in a child process by the test above; does
/// nothing when run by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by floods_of_max_frames_at_a_slow_handler_stay_within_the_budget"]
async fn flooder() {
    let Ok(spec) = std::env::var(FLOOD_ENV) else {
        return;
    };
    let mut args = spec.split(' ');
    let addr: SocketAddr = args.next().expect("addr").parse().expect("addr");
    let mut number = || -> u64 { args.next().expect("arg").parse().expect("number") };
    let (conns, frames, payload, secs) = (number(), number(), number(), number());
    let stop_at = Instant::now() + Duration::from_secs(secs);
    let (sent, answered) = tokio::time::timeout(
        Duration::from_secs(secs + 60),
        flood(
            addr,
            conns as usize,
            frames as usize,
            payload as usize,
            stop_at,
        ),
    )
    .await
    .expect("the flood ends");
    println!("FLOOD {sent} {answered}");
}

/// A TCP socket with [`SOCKET_BUFFER`]-byte kernel buffers (so the kernel
/// holds little of a flood and the server's own memory shows).
fn small_buffered_socket() -> tokio::net::TcpSocket {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(SOCKET_BUFFER)
        .expect("SO_RCVBUF");
    socket
        .set_send_buffer_size(SOCKET_BUFFER)
        .expect("SO_SNDBUF");
    socket
}

/// An echo server with default settings whose handler takes [`HANDLER`], on a
/// listener whose accepted sockets have small buffers.
async fn start_slow_echo() -> RunningServer {
    let socket = small_buffered_socket();
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(4096).expect("listen");
    let server = Server::builder().listener(listener).expect("server");
    let addr = server.local_addr();
    let stats = server.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let slow = service_fn(|req: Request| async move {
        let quick = req.payload().first() == Some(&QUICK);
        tokio::time::sleep(if quick { QUICK_HANDLER } else { HANDLER }).await;
        Ok::<_, Infallible>(req.into_payload())
    });
    let task = tokio::spawn(server.serve_with_shutdown(slow, async {
        let _ = stopped.await;
    }));
    RunningServer::from_parts(addr, stats, stop, task)
}

/// `conns` connections each writing up to `frames` frames of `payload` bytes
/// (stopping at `stop_at`), then reading every answer; the frames sent and the
/// answers received, in total. Maximum-size frames go one write each; small
/// frames (for the quick handler) all at once.
async fn flood(
    addr: SocketAddr,
    conns: usize,
    frames: usize,
    payload: usize,
    stop_at: Instant,
) -> (u64, u64) {
    let (fill, batch) = if payload < 1024 {
        (QUICK, frames)
    } else {
        (0x5a, 1)
    };
    let one = encode(&Tag::from_u32(7), &vec![fill; payload]);
    let frame_len = one.len() as u64;
    let frame = Bytes::from(one.repeat(batch));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let frame = frame.clone();
        tasks.spawn(async move {
            let stream = small_buffered_socket()
                .connect(addr)
                .await
                .expect("connect");
            let (mut rd, mut wr) = stream.into_split();
            let writing = async move {
                let mut sent = 0u64;
                while sent < frames as u64 && Instant::now() < stop_at {
                    wr.write_all(&frame).await.expect("write");
                    sent += batch as u64;
                }
                wr.shutdown().await.expect("shutdown");
                sent
            };
            let reading = async move {
                let mut buf = [0u8; 2 * 1024];
                let mut received = 0u64;
                loop {
                    match rd.read(&mut buf).await {
                        Ok(0) | Err(_) => break received,
                        Ok(n) => received += n as u64,
                    }
                }
            };
            let (sent, received) = tokio::join!(writing, reading);
            (sent, received / frame_len)
        });
    }
    let mut totals = (0, 0);
    while let Some(done) = tasks.join_next().await {
        let (sent, answered) = done.expect("flooder");
        totals.0 += sent;
        totals.1 += answered;
    }
    totals
}

/// The highest resident memory (and budget in use) seen, sampled every 5 ms on
/// a thread of its own.
struct Peak {
    baseline: u64,
    max: Arc<AtomicU64>,
    budget: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Peak {
    fn start(stats: StatsHandle) -> Peak {
        let baseline = rss_bytes().expect("rss");
        let max = Arc::new(AtomicU64::new(baseline));
        let budget = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, b, s) = (max.clone(), budget.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(rss) = rss_bytes() {
                    m.fetch_max(rss, Ordering::Relaxed);
                }
                b.fetch_max(stats.snapshot().budget_bytes_in_use, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Peak {
            baseline,
            max,
            budget,
            stop,
        }
    }

    /// The peak since the last call.
    fn take(&self) -> u64 {
        let now = rss_bytes().expect("rss");
        self.max.swap(now, Ordering::Relaxed).max(now)
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

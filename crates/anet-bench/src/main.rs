//! Side-by-side benchmark of anet against the floor and its peers, in one run.
//!
//! ```text
//! cargo run --release -p anet-bench -- [--duration 5] [--rounds 3]
//!     [--concurrency 1,16,256] [--size 64] [--threads 2] [--json] [--plot FILE.svg]
//! cargo run --release -p anet-bench -- --balancing [--balance-concurrency 64]
//! ```
//!
//! `--balancing` runs the balancing scenario instead (three backends, one of
//! them slow: in-flight against latency-aware load, see `balancing.rs`).
//!
//! The row `anet-stack-info` (a `tracing` subscriber at `INFO`) and the flag
//! `--recorder` (a Prometheus recorder installed for the whole run; feature
//! `metrics`, on by default) measure the cost of observability against
//! `anet-stack`.
//!
//! After the rounds, the idle-connection memory of each server is measured
//! (see the `idle` module): `--idle-connections` clients (5000 by default; 0
//! skips it) each send one request and stay connected, and the growth of the
//! server's resident set per connection is printed and reported in the JSON
//! as `server_idle_kib_per_connection: {"raw": KiB, "anet": KiB}` (null when
//! skipped, or when it failed: each process needs an open file per
//! connection, so an open-files limit below them skips it with a warning).
//!
//! Every client runs closed-loop on loopback against two servers (`raw`, a plain
//! TCP echo, and the anet `Server`), each server on its own thread with a
//! current-thread runtime. Every response is checked against its request; a
//! mismatch aborts the run. The whole set is measured `--rounds` times, one
//! client after the other, and each figure reported is the median over the
//! rounds; a ratio is the median of the ratios to `floor` on the same server at
//! the same concurrency within each round.

// Each client names its own future type where it can (no boxing, a concrete
// type the compiler can see is `Send`).
#![allow(refining_impl_trait)]

use std::{
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anet::client::{Client, ConnectionConfig, Connector};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use tokio::time::Instant;
use tower::ServiceExt;

mod balancing;
mod floor;
mod idle;
mod plot;
mod sequential;
mod servers;
mod tokio_tower_peer;
mod variants;
mod wire_floor;

/// Command-line options.
#[derive(Debug, Parser)]
#[command(name = "anet-bench", about = "anet against the floor and its peers")]
struct Args {
    /// Seconds measured per point (after a short warm-up).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Times the whole set is measured; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrency levels (callers, each with one request in flight).
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    concurrency: Vec<usize>,
    /// Payload bytes (at least 16).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Client runtime worker threads; 1 means a current-thread runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Only these clients (default: all).
    #[arg(long, value_delimiter = ',')]
    clients: Vec<String>,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
    /// Draw throughput and p99 latency against concurrency for every client
    /// row into this SVG file.
    #[arg(long, value_name = "FILE")]
    plot: Option<std::path::PathBuf>,
    /// Install a metrics recorder (anet's metrics, feature `metrics`) for the
    /// whole run: every anet client and server records into it. `prometheus`
    /// (the default) keeps every histogram sample until its upkeep; `buckets`
    /// aggregates as it records.
    #[arg(long, value_name = "KIND", num_args = 0..=1, default_missing_value = "prometheus")]
    recorder: Option<variants::RecorderKind>,
    /// Run the balancing scenario (two fast backends and a slow one) instead
    /// of the client set.
    #[arg(long)]
    balancing: bool,
    /// Callers of the balancing scenario.
    #[arg(long, default_value_t = 64)]
    balance_concurrency: usize,
    /// Connections for the idle-server memory measurement (each sends one
    /// request and stays open); 0 skips it.
    #[arg(long, default_value_t = 5000)]
    idle_connections: usize,
    /// Internal: run only the server KIND (`raw` or `anet`) for the idle
    /// memory measurement, until standard input closes.
    #[arg(long, hide = true, value_name = "KIND")]
    idle_server: Option<String>,
    /// Instead of timed points: each client (`floor`, `anet-mux`, `anet-stack`) sends
    /// this many requests to one server (`--server`, raw by default), with the
    /// first concurrency level, then the program exits. For instruction counts:
    /// run it under callgrind with two counts and divide the difference by the
    /// difference of counts.
    #[arg(long, value_name = "N")]
    requests: Option<u64>,
    /// The server `--requests` sends to: `raw` (bytes straight back) or `anet`
    /// (the anet `Server` with an echo service). The difference between the
    /// two, in instructions per request, is the anet server's cost.
    #[arg(long, value_enum, default_value_t = ServerKind::Raw, requires = "requests")]
    server: ServerKind,
}

/// The echo server `--requests` sends to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ServerKind {
    /// A plain TCP echo: whatever bytes arrive go straight back.
    Raw,
    /// The anet `Server` with an echo service.
    Anet,
}

const CLIENTS: [&str; 11] = [
    "floor",
    "wire-floor",
    "anet-mux",
    "anet-balancer",
    "anet-buffer",
    "tower-p2c",
    "anet-timeout",
    "anet-stack",
    "anet-stack-info",
    "tokio-tower",
    "sequential",
];

/// One measured point.
#[derive(Debug, Clone)]
struct Point {
    client: &'static str,
    server: &'static str,
    concurrency: usize,
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    /// Processor time of the whole process (client, server, every thread) per
    /// request over the measured window, in nanoseconds: what a request costs,
    /// however busy the machine is with other work.
    cpu_ns: f64,
}

/// A client under test; each clone is one caller's handle. The future is an
/// associated type with an explicit `Send` bound (not an `async` block), so every
/// client's own future is measured as it is, without boxing.
trait Call: Clone + Send + 'static {
    fn call(
        &mut self,
        worker: usize,
        payload: Bytes,
    ) -> impl Future<Output = Result<Bytes, String>> + Send + '_;
}

type Mapped<F, E> = futures_util::future::Map<F, fn(Result<Bytes, E>) -> Result<Bytes, String>>;

fn stringify<E: std::fmt::Display>(r: Result<Bytes, E>) -> Result<Bytes, String> {
    r.map_err(|e| e.to_string())
}

impl Call for floor::Floor {
    fn call(&mut self, _worker: usize, payload: Bytes) -> floor::FloorCall {
        floor::Floor::call(self, payload)
    }
}

/// Each caller keeps its own handle and does `poll_ready` then `call`, as a user
/// of the `Service` would; no clone per request.
impl Call for anet::client::Connection {
    async fn call(&mut self, _worker: usize, payload: Bytes) -> Result<Bytes, String> {
        let ready = self.ready().await.map_err(|e| e.to_string())?;
        tower::Service::call(ready, payload)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The bare balanced pool (no layers), each caller with its own handle.
impl Call for anet::client::Balancer {
    async fn call(&mut self, _worker: usize, payload: Bytes) -> Result<Bytes, String> {
        let ready = self.ready().await.map_err(|e| e.to_string())?;
        tower::Service::call(ready, payload)
            .await
            .map_err(|e| e.to_string())
    }
}

/// tower's `Buffer` over a service: over the balanced pool (`anet-buffer`, the
/// sharing mechanism the client does not use: a worker task and a channel hop
/// per request), and over tower's own p2c `Balance` of anet's per-address pools
/// (`tower-p2c`, which needs it to be shared between tasks).
impl<F, E> Call for tower::buffer::Buffer<Bytes, F>
where
    F: Future<Output = Result<Bytes, E>> + Send + 'static,
    E: Into<anet::BoxError> + Send + Sync + 'static,
{
    async fn call(&mut self, _worker: usize, payload: Bytes) -> Result<Bytes, String> {
        let ready = self.ready().await.map_err(|e| e.to_string())?;
        tower::Service::call(ready, payload)
            .await
            .map_err(|e| e.to_string())
    }
}

/// The `tower-p2c` row's service.
type TowerP2c = tower::buffer::Buffer<
    Bytes,
    <tower::balance::p2c::Balance<tower::discover::ServiceList<Vec<anet::client::Pool>>, Bytes> as tower::Service<Bytes>>::Future,
>;

/// tower's `Timeout` over the balanced pool: the cost of a per-request timer.
impl Call for tower::timeout::Timeout<anet::client::Balancer> {
    async fn call(&mut self, _worker: usize, payload: Bytes) -> Result<Bytes, String> {
        let ready = self.ready().await.map_err(|e| e.to_string())?;
        tower::Service::call(ready, payload)
            .await
            .map_err(|e| e.to_string())
    }
}

impl Call for Client {
    fn call(
        &mut self,
        _worker: usize,
        payload: Bytes,
    ) -> Mapped<anet::client::future::CallFuture, anet::Error> {
        use futures_util::FutureExt;
        Client::call(self, payload).map(stringify as fn(_) -> _)
    }
}

impl Call for tokio_tower_peer::TokioTower {
    fn call(&mut self, _worker: usize, payload: Bytes) -> tokio_tower_peer::TokioTowerCall {
        tokio_tower_peer::TokioTower::call(self, payload)
    }
}

impl Call for sequential::Pool {
    fn call(
        &mut self,
        worker: usize,
        payload: Bytes,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Bytes, String>> + Send>> {
        Box::pin(sequential::Pool::call(self, worker, payload))
    }
}

fn payload(worker: usize, seq: u64, size: usize) -> Bytes {
    let mut bytes = vec![b'.'; size.max(16)];
    bytes[..8].copy_from_slice(&(worker as u64).to_be_bytes());
    bytes[8..16].copy_from_slice(&seq.to_be_bytes());
    Bytes::from(bytes)
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    runtime_with(threads, None)
}

/// The client runtime; with `dispatch`, every worker thread has it as its
/// `tracing` subscriber.
fn runtime_with(threads: usize, dispatch: Option<tracing::Dispatch>) -> tokio::runtime::Runtime {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    if let Some(dispatch) = dispatch {
        builder.on_thread_start(move || {
            // Kept for the thread's life: it ends with the runtime.
            std::mem::forget(tracing::dispatcher::set_default(&dispatch));
        });
    }
    builder.enable_all().build().expect("client runtime")
}

/// Runs `name` against `addr` at `concurrency`; a mismatch is an error.
fn measure(
    name: &'static str,
    server: &'static str,
    addr: SocketAddr,
    concurrency: usize,
    args: &Args,
) -> anyhow::Result<Point> {
    let dispatch = (name == "anet-stack-info").then(variants::info_subscriber);
    // The thread that blocks on the runtime (a current-thread runtime's only one).
    let _subscriber = dispatch.as_ref().map(tracing::dispatcher::set_default);
    let rt = runtime_with(args.threads, dispatch);
    let duration = Duration::from_secs_f64(args.duration);
    let warmup = Duration::from_millis(300);
    let (count, hist, elapsed) = rt.block_on(async {
        if name == "wire-floor" {
            let _ = wire_floor::run(addr, concurrency, args.size, Instant::now() + warmup).await;
            let start = Instant::now();
            let (count, hist) = wire_floor::run(addr, concurrency, args.size, start + duration)
                .await
                .map_err(anyhow::Error::msg)?;
            return Ok::<_, anyhow::Error>((count, hist, start.elapsed()));
        }
        match name {
            "floor" => {
                run_callers(
                    floor::Floor::connect(addr).await,
                    concurrency,
                    args.size,
                    warmup,
                    duration,
                )
                .await
            }
            "anet-mux" => {
                run_callers(mux(addr).await?, concurrency, args.size, warmup, duration).await
            }
            "anet-balancer" | "anet-buffer" | "anet-timeout" => {
                let client = Client::builder().endpoint(addr).build();
                client.call(Bytes::from_static(b"warm")).await?;
                if name == "anet-balancer" {
                    run_callers(client.balancer(), concurrency, args.size, warmup, duration).await
                } else if name == "anet-buffer" {
                    let shared = tower::buffer::Buffer::new(client.balancer(), 1024);
                    run_callers(shared, concurrency, args.size, warmup, duration).await
                } else {
                    let timed =
                        tower::timeout::Timeout::new(client.balancer(), Duration::from_secs(2));
                    run_callers(timed, concurrency, args.size, warmup, duration).await
                }
            }
            "tower-p2c" => {
                let mut pool = anet::client::MakePool::new(Connector::new())
                    .oneshot(addr)
                    .await?;
                pool.ready().await?; // connected before the clock starts
                let balance =
                    tower::balance::p2c::Balance::new(tower::discover::ServiceList::new(vec![
                        pool,
                    ]));
                let shared: TowerP2c = tower::buffer::Buffer::new(balance, 1024);
                run_callers(shared, concurrency, args.size, warmup, duration).await
            }
            "anet-stack" | "anet-stack-info" => {
                run_callers(stack(addr).await?, concurrency, args.size, warmup, duration).await
            }
            "tokio-tower" => {
                let peer = tokio_tower_peer::TokioTower::connect(addr).await;
                run_callers(peer, concurrency, args.size, warmup, duration).await
            }
            "sequential" => {
                let pool = sequential::Pool::connect(addr, concurrency).await;
                run_callers(pool, concurrency, args.size, warmup, duration).await
            }
            other => anyhow::bail!("unknown client {other}"),
        }
    })?;
    Ok(Point {
        client: name,
        server,
        concurrency,
        rps: count as f64 / elapsed.as_secs_f64(),
        p50_us: hist.value_at_quantile(0.5),
        p99_us: hist.value_at_quantile(0.99),
        cpu_ns: WINDOW_CPU_NS.swap(0, Ordering::Relaxed) as f64 / count.max(1) as f64,
    })
}

/// `--requests N`: each chosen client sends `n` requests to the server
/// `--server` names.
fn fixed_requests(args: &Args, n: u64) -> anyhow::Result<()> {
    let addr = match args.server {
        ServerKind::Raw => servers::raw(),
        ServerKind::Anet => servers::anet(),
    };
    let concurrency = args.concurrency.first().copied().unwrap_or(256).max(1);
    let rt = runtime(args.threads);
    for client in &args.clients {
        rt.block_on(async {
            match client.as_str() {
                "floor" => {
                    send_n(floor::Floor::connect(addr).await, concurrency, args.size, n).await
                }
                "anet-mux" => send_n(mux(addr).await?, concurrency, args.size, n).await,
                "anet-stack" => send_n(stack(addr).await?, concurrency, args.size, n).await,
                other => {
                    anyhow::bail!("--requests runs floor, anet-mux or anet-stack, not {other}")
                }
            }
        })?;
        let server = match args.server {
            ServerKind::Raw => "raw",
            ServerKind::Anet => "anet",
        };
        eprintln!("{client}: {n} requests sent to the {server} server");
    }
    Ok(())
}

/// The `anet-mux` client: one connection, room for 1024 requests in flight.
async fn mux(addr: SocketAddr) -> anyhow::Result<anet::client::Connection> {
    Ok(Connector::new()
        .connection_config(ConnectionConfig::new().max_in_flight(1024))
        .connect(addr)
        .await?)
}

/// The `anet-stack` client: `Client::builder()` with defaults, connected (one
/// request answered) before the clock starts.
async fn stack(addr: SocketAddr) -> anyhow::Result<Client> {
    let client = Client::builder().endpoint(addr).build();
    client.call(Bytes::from_static(b"warm")).await?;
    Ok(client)
}

/// `concurrency` callers send `n` requests in all.
async fn send_n<C: Call>(caller: C, concurrency: usize, size: usize, n: u64) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let mut caller = caller.clone();
        let mine = n / concurrency as u64 + u64::from((worker as u64) < n % concurrency as u64);
        tasks.spawn(async move {
            for seq in 0..mine {
                let request = payload(worker, seq, size);
                let response = caller.call(worker, request.clone()).await?;
                if response != request {
                    return Err("response does not match its request".to_owned());
                }
            }
            Ok::<_, String>(())
        });
    }
    for result in tasks.join_all().await {
        result.map_err(anyhow::Error::msg)?;
    }
    Ok(())
}

/// The processor time of the last measured window (see [`Point::cpu_ns`]).
static WINDOW_CPU_NS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Processor time used so far by the threads of this process that are alive,
/// in nanoseconds (Linux `schedstat`; 0 elsewhere).
fn process_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok())
        .filter_map(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// Closed loop: `concurrency` callers, each sending its next request when the
/// previous response arrived; counts only during the measured window.
async fn run_callers<C: Call>(
    caller: C,
    concurrency: usize,
    size: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<(u64, Histogram<u64>, Duration)> {
    {
        let measuring = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..concurrency {
            let (mut caller, measuring, stop) = (caller.clone(), measuring.clone(), stop.clone());
            tasks.spawn(async move {
                let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
                let mut count = 0u64;
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let request = payload(worker, seq, size);
                    let sent = Instant::now();
                    let response = caller.call(worker, request.clone()).await?;
                    if response != request {
                        return Err("response does not match its request".to_owned());
                    }
                    if measuring.load(Ordering::Relaxed) {
                        count += 1;
                        let _ = hist.record(sent.elapsed().as_micros().max(1) as u64);
                    }
                }
                Ok::<_, String>((count, hist))
            });
        }
        tokio::time::sleep(warmup).await;
        measuring.store(true, Ordering::Relaxed);
        let start = Instant::now();
        let cpu_start = process_cpu_ns();
        tokio::time::sleep(duration).await;
        measuring.store(false, Ordering::Relaxed);
        let elapsed = start.elapsed();
        WINDOW_CPU_NS.store(
            process_cpu_ns().saturating_sub(cpu_start),
            Ordering::Relaxed,
        );
        stop.store(true, Ordering::Relaxed);
        let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
        let mut count = 0;
        for result in tasks.join_all().await {
            let (n, h) = result.map_err(anyhow::Error::msg)?;
            count += n;
            total.add(&h).expect("same bounds");
        }
        Ok((count, total, elapsed))
    }
}

/// Heap allocations per request through the default client stack, counted on a
/// current-thread runtime (so on one thread) against `addr`: the difference
/// between a run of `2 * N` requests and one of `N`, over `N`, so that the
/// fixed cost of a run (spawning its callers) is not counted per request.
fn stack_allocations(addr: SocketAddr, size: usize) -> f64 {
    const N: usize = 50_000;
    const CALLERS: usize = 256;
    let rt = runtime(1);
    let client = rt.block_on(async {
        let client = Client::builder().endpoint(addr).build();
        client
            .call(Bytes::from_static(b"warm"))
            .await
            .expect("connected");
        client
    });
    let request = Bytes::from(vec![b'.'; size.max(16)]);
    let run = |n: usize| {
        rt.block_on(async {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..CALLERS {
                let (client, request) = (client.clone(), request.clone());
                tasks.spawn(async move {
                    for _ in 0..n / CALLERS {
                        client.call(request.clone()).await.expect("response");
                    }
                });
            }
            tasks.join_all().await;
        })
    };
    run(N);
    let once = allocation_counter::measure(|| run(N)).count_total;
    let twice = allocation_counter::measure(|| run(2 * N)).count_total;
    twice.saturating_sub(once) as f64 / N as f64
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The median of the values present, if any.
fn median_opt(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let v: Vec<f64> = values.flatten().collect();
    (!v.is_empty()).then(|| median(v.into_iter()))
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.balancing {
        return balancing::run(&args);
    }
    if let Some(n) = args.requests {
        return fixed_requests(&args, n);
    }
    if let Some(kind) = &args.idle_server {
        return idle::serve(kind);
    }
    // Before the servers start: their connections register their handles.
    if let Some(kind) = args.recorder {
        variants::install_recorder(kind)?;
    }
    let clients: Vec<&'static str> = CLIENTS
        .iter()
        .copied()
        .filter(|c| args.clients.is_empty() || args.clients.iter().any(|a| a == c))
        .collect();
    let servers = [("raw", servers::raw()), ("anet", servers::anet())];
    let flavour = if args.threads <= 1 {
        "current-thread".to_owned()
    } else {
        format!("multi-thread ({} workers)", args.threads)
    };
    eprintln!(
        "anet-bench: {} B payloads, {} s per point, client runtime {flavour}, {} cores",
        args.size.max(16),
        args.duration,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let rounds = args.rounds.max(1);
    // rounds[r] holds every point of round r, in the same order each round.
    let mut measured: Vec<Vec<Point>> = Vec::with_capacity(rounds);
    for round in 1..=rounds {
        let mut points = Vec::new();
        for &(server, addr) in &servers {
            for &concurrency in &args.concurrency {
                for &client in &clients {
                    let point = measure(client, server, addr, concurrency, &args)?;
                    eprintln!(
                        "  round {round}/{rounds} {server:>4} c={concurrency:<4} {client:<18} {:>10.0} req/s  p50 {:>6} us  p99 {:>6} us  cpu {:>6.0} ns/req",
                        point.rps, point.p50_us, point.p99_us, point.cpu_ns
                    );
                    points.push(point);
                }
            }
        }
        measured.push(points);
    }
    let allocs = stack_allocations(servers[0].1, args.size);
    let rss = peak_rss_mb();
    // Resident KiB per idle connection, by server (after the throughput
    // rounds, so it does not disturb them; it runs in a child process). A
    // failure (say, an open-files limit below the connections) skips it with
    // a warning rather than losing the rounds' results.
    let idle_kib: Vec<(&str, f64)> = if args.idle_connections == 0 {
        Vec::new()
    } else {
        ["raw", "anet"]
            .into_iter()
            .map(|kind| Ok((kind, idle::kib_per_connection(kind, args.idle_connections)?)))
            .collect::<anyhow::Result<_>>()
            .unwrap_or_else(|e: anyhow::Error| {
                eprintln!(
                    "warning: idle-connection memory not measured: {e:#} (each process needs \
                     an open file per connection: raise `ulimit -n` above {} or lower \
                     --idle-connections)",
                    args.idle_connections
                );
                Vec::new()
            })
    };

    println!(
        "{:<18} {:>6} {:>6} {:>12} {:>8} {:>8} {:>9}",
        "client", "server", "conc", "req/s", "p50 us", "p99 us", "vs floor"
    );
    let mut results = Vec::new();
    let mut rows = Vec::new();
    for (i, p) in measured[0].iter().enumerate() {
        let across = |f: &dyn Fn(&Point) -> f64| median(measured.iter().map(|r| f(&r[i])));
        let ratio = median_opt(measured.iter().map(|round| {
            round
                .iter()
                .find(|f| {
                    f.client == "floor" && f.server == p.server && f.concurrency == p.concurrency
                })
                .map(|f| round[i].rps / f.rps)
        }));
        let (rps, p50, p99) = (
            across(&|q| q.rps),
            across(&|q| q.p50_us as f64),
            across(&|q| q.p99_us as f64),
        );
        rows.push(plot::Row {
            client: p.client,
            server: p.server,
            concurrency: p.concurrency,
            rps,
            p99_us: p99,
        });
        println!(
            "{:<18} {:>6} {:>6} {:>12.0} {:>8.0} {:>8.0} {:>9}",
            p.client,
            p.server,
            p.concurrency,
            rps,
            p50,
            p99,
            ratio.map_or("-".to_owned(), |r| format!("{r:.2}"))
        );
        results.push(serde_json::json!({
            "client": p.client,
            "server": p.server,
            "concurrency": p.concurrency,
            "rps": rps,
            "p50_us": p50.round() as u64,
            "p99_us": p99.round() as u64,
            "ratio_vs_floor": ratio,
        }));
    }
    if let Some(path) = &args.plot {
        plot::draw(path, &rows)?;
        eprintln!("chart in {}", path.display());
    }
    println!("anet-stack heap allocations per request: {allocs:.3}");
    if let Some(totals) = variants::recorded() {
        println!("{totals}");
    }
    println!("peak RSS of the benchmark process: {rss:.1} MiB");
    for (kind, kib) in &idle_kib {
        println!(
            "{kind} server resident memory per idle connection ({} connections, one request each): {kib:.2} KiB",
            args.idle_connections
        );
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "results": results,
                "allocs_per_request": allocs,
                "peak_rss_mb": rss,
                // {"raw": KiB, "anet": KiB}; null with --idle-connections 0 or
                // when the measurement failed (a warning says why).
                "server_idle_kib_per_connection": (!idle_kib.is_empty()).then(|| {
                    idle_kib
                        .iter()
                        .map(|(kind, kib)| ((*kind).to_owned(), serde_json::json!(kib)))
                        .collect::<serde_json::Map<_, _>>()
                }),
                "idle_connections": args.idle_connections,
                "threads": args.threads,
                "rounds": rounds,
            })
        );
    }
    Ok(())
}

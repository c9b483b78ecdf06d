//! `anet bench`: closed-loop load through the full client stack.
//!
//! Each caller sends one request at a time; every payload carries a unique
//! sequence number and every response must equal its request, or it counts as a
//! mismatch (a misdelivery). Errors are counted by kind and do not stop the run.
//! Once the `--connect` names are resolved (each within min(timeout, 5 s)), the
//! run ends within `duration + timeout + 2 s` whatever the server does.

use std::{
    convert::Infallible,
    io::IsTerminal,
    net::SocketAddr,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use anet::{
    Kind,
    client::{ConnectionConfig, ErrorCounts},
    server::{Request, Server},
};
use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use tokio::time::Instant;
use tower::service_fn;

use crate::{
    BenchArgs,
    common::{self, Target},
};

/// Extra time allowed after `duration + timeout` before stragglers are abandoned.
const GRACE: Duration = Duration::from_secs(2);
/// Payloads are at least this long, so a sequence number fits and in-flight
/// requests never share a payload.
pub(crate) const MIN_SIZE: usize = 8;

/// What one caller saw.
struct Tally {
    latency_us: Histogram<u64>,
    ok: u64,
    mismatches: u64,
    errors: ErrorCounts,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            ok: 0,
            mismatches: 0,
            errors: ErrorCounts::default(),
        }
    }

    fn merge(&mut self, other: &Tally) {
        let _ = self.latency_us.add(&other.latency_us);
        self.ok += other.ok;
        self.mismatches += other.mismatches;
        self.errors.merge(&other.errors);
    }

    fn requests(&self) -> u64 {
        self.ok + self.mismatches + self.errors.total()
    }
}

/// The payload of request `seq`: its decimal digits, padded with `.` to `size`.
fn payload(seq: u64, size: usize) -> Bytes {
    let digits = format!("{seq:0width$}", width = MIN_SIZE);
    let mut bytes = digits.into_bytes();
    if bytes.len() < size {
        bytes.resize(size, b'.');
    }
    Bytes::from(bytes)
}

/// Most client runtime worker threads `--threads` takes.
pub(crate) const MAX_CLIENT_THREADS: usize = 1024;

/// The client runtime's worker threads: `--threads`, or by default the cores
/// left beside the embedded echo server's thread (at least 1), or every core
/// with `--connect`.
pub(crate) fn client_threads(args: &BenchArgs) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match args.threads {
        Some(n) => n.clamp(1, MAX_CLIENT_THREADS),
        None if args.connect.is_empty() => cores.saturating_sub(1).max(1),
        None => cores,
    }
}

/// The client's runtime: current-thread for one thread, else multi-thread
/// with `threads` workers.
pub(crate) fn client_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder.enable_all().build()
}

/// How the run is laid out on threads, for the report.
fn setup(threads: usize, embedded: bool) -> String {
    let client = if threads <= 1 {
        "client runtime current-thread (1 thread)".to_owned()
    } else {
        format!("client runtime multi-thread ({threads} workers)")
    };
    let server = if embedded {
        "embedded echo server on its own thread (current-thread runtime)"
    } else {
        "external server"
    };
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{client}; {server}; {cores} cores")
}

/// Starts the embedded echo server on an OS thread of its own with a
/// current-thread runtime, so client and server never compete for one
/// runtime's workers (a shared runtime made runs of one binary bimodal).
/// Sending on (or dropping) the returned sender stops it.
fn embedded_echo(
    frame: anet_proto::Builder,
) -> anyhow::Result<(SocketAddr, tokio::sync::oneshot::Sender<()>)> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (bound, addr) = std::sync::mpsc::channel::<anyhow::Result<SocketAddr>>();
    std::thread::Builder::new()
        .name("anet-bench-echo".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = bound.send(Err(e.into()));
                    return;
                }
            };
            runtime.block_on(async move {
                let server = match Server::builder()
                    .frame(frame)
                    .bind("127.0.0.1:0".parse().expect("loopback address"))
                    .await
                {
                    Ok(server) => server,
                    Err(e) => {
                        let _ = bound.send(Err(e.into()));
                        return;
                    }
                };
                let _ = bound.send(Ok(server.local_addr()));
                let echo =
                    service_fn(
                        |req: Request| async move { Ok::<_, Infallible>(req.into_payload()) },
                    );
                let _ = server
                    .serve_with_shutdown(echo, async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        })
        .context("cannot start the embedded echo server's thread")?;
    let addr = addr
        .recv()
        .context("the embedded echo server's thread ended")??;
    Ok((addr, stop))
}

pub(crate) async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    // Before the client is built: its per-endpoint handles come from it.
    let endpoints = crate::metrics::install_bench(args.metrics)?;
    let mut embedded = None;
    let targets = if args.connect.is_empty() {
        let frame = args.frame.builder().max_frame_length(args.max_frame);
        let (addr, stop) = embedded_echo(frame)?;
        embedded = Some(stop);
        eprintln!("embedded echo server on {addr}");
        vec![Target::Addr(addr)]
    } else {
        args.connect.clone()
    };
    let timeout = common::timeout(args.timeout, args.timeout_ms, Duration::from_secs(1))
        .max(Duration::from_millis(1));
    let mut config =
        ConnectionConfig::new().frame(args.frame.builder().max_frame_length(args.max_frame));
    if let Some(n) = args.max_in_flight {
        config = config.max_in_flight(n);
    }
    config
        .validate()
        .context("invalid frame or --max-in-flight options")?;
    let limit = common::lookup_limit(timeout);
    let mut builder = common::client_builder(&targets, Some(args.resolve_every), limit)
        .await?
        .connection(config)
        .request_timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(1)));
    if let Some(n) = args.connections_per_endpoint {
        builder = builder.connections_per_endpoint(n, n);
    }
    let client = builder.build();
    let threads = client_threads(&args);
    let is_embedded = embedded.is_some();
    let setup = setup(threads, is_embedded);
    let size = args.size.max(MIN_SIZE);
    let concurrency = args.concurrency.max(1);

    let started = Instant::now();
    let stop_at = started + args.duration;
    let seq = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(args.duration, done.clone());
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, seq, done) = (client.clone(), seq.clone(), done.clone());
        workers.spawn(async move {
            let mut tally = Tally::new();
            while Instant::now() < stop_at {
                let request = payload(seq.fetch_add(1, Relaxed), size);
                let sent = Instant::now();
                match client.call(request.clone()).await {
                    Ok(response) if response == request => {
                        tally.ok += 1;
                        let us = sent.elapsed().as_micros().max(1) as u64;
                        let _ = tally.latency_us.record(us.min(60_000_000));
                    }
                    Ok(_) => tally.mismatches += 1,
                    Err(e) => tally.errors.record(e.kind()),
                }
                done.fetch_add(1, Relaxed);
            }
            tally
        });
    }

    let mut total = Tally::new();
    let hard_stop = stop_at + timeout + GRACE;
    let mut abandoned = 0;
    loop {
        match tokio::time::timeout_at(hard_stop, workers.join_next()).await {
            Ok(Some(Ok(tally))) => total.merge(&tally),
            Ok(Some(Err(e))) => anyhow::bail!("a load task failed: {e}"),
            Ok(None) => break,
            Err(_) => {
                abandoned = workers.len();
                workers.abort_all();
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    progress.finish();
    client.close();
    if let Some(stop) = embedded {
        let _ = stop.send(());
    }
    if abandoned > 0 {
        eprintln!("warning: {abandoned} callers still waiting at the hard stop were abandoned");
    }

    let mut report = Report::new(&total, elapsed);
    report.endpoints = EndpointLine::all(&endpoints);
    report.client_threads = threads;
    report.embedded_server = is_embedded;
    report.print_text(&targets, concurrency, size, &setup);
    if let Some(path) = &args.histogram {
        crate::chart::latency(
            path,
            &total.latency_us,
            &format!("anet bench, concurrency {concurrency}, {size} B"),
        )
        .with_context(|| format!("cannot draw {}", path.display()))?;
        eprintln!("latency histogram in {}", path.display());
    }
    if args.json {
        println!("{}", report.json());
    }
    Ok(if total.mismatches == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// One endpoint's share of a run, from the client's metrics.
struct EndpointLine {
    /// The endpoint's address; `none` for requests that failed before reaching one.
    address: String,
    requests: u64,
    ok: u64,
    /// By error kind, only those that happened.
    errors: Vec<(String, u64)>,
    p50_us: u64,
    p99_us: u64,
}

impl EndpointLine {
    fn all(endpoints: &crate::metrics::Endpoints) -> Vec<EndpointLine> {
        endpoints
            .snapshot()
            .into_iter()
            .map(|(address, tally)| {
                let outcomes = tally.outcomes();
                let ok = outcomes
                    .iter()
                    .filter(|(o, _)| o == "ok")
                    .map(|(_, n)| n)
                    .sum();
                let errors: Vec<(String, u64)> = outcomes
                    .into_iter()
                    .filter(|(o, n)| o != "ok" && *n > 0)
                    .collect();
                EndpointLine {
                    address,
                    requests: ok + errors.iter().map(|(_, n)| n).sum::<u64>(),
                    ok,
                    errors,
                    p50_us: tally.latency.quantile(0.5),
                    p99_us: tally.latency.quantile(0.99),
                }
            })
            .filter(|line| line.requests > 0)
            .collect()
    }

    fn json(&self) -> serde_json::Value {
        let errors: serde_json::Map<String, serde_json::Value> = self
            .errors
            .iter()
            .map(|(kind, n)| (kind.clone(), (*n).into()))
            .collect();
        serde_json::json!({
            "address": self.address,
            "requests": self.requests,
            "ok": self.ok,
            "errors": errors,
            "latency_us": { "p50": self.p50_us, "p99": self.p99_us },
        })
    }
}

/// Final numbers of a run.
struct Report<'a> {
    tally: &'a Tally,
    duration_s: f64,
    rps: f64,
    /// Per endpoint (attempts: a retried request counts at each endpoint it tried).
    endpoints: Vec<EndpointLine>,
    /// The client runtime's worker threads (1: current-thread).
    client_threads: usize,
    /// Whether the server was the embedded one (on its own thread).
    embedded_server: bool,
}

impl<'a> Report<'a> {
    fn new(tally: &'a Tally, elapsed: Duration) -> Report<'a> {
        let duration_s = elapsed.as_secs_f64();
        Report {
            tally,
            duration_s,
            rps: tally.requests() as f64 / duration_s.max(1e-9),
            endpoints: Vec::new(),
            client_threads: 1,
            embedded_server: false,
        }
    }

    fn quantile(&self, q: f64) -> u64 {
        if self.tally.latency_us.is_empty() {
            0
        } else {
            self.tally.latency_us.value_at_quantile(q)
        }
    }

    fn print_text(&self, targets: &[Target], concurrency: usize, size: usize, setup: &str) {
        let t = self.tally;
        let targets: Vec<String> = targets.iter().map(ToString::to_string).collect();
        println!(
            "anet bench: {} | concurrency {concurrency} | {size} B payloads | {:.2} s",
            targets.join(", "),
            self.duration_s
        );
        println!("setup        {setup}");
        println!("requests     {}", t.requests());
        println!("ok           {}", t.ok);
        println!("mismatches   {}", t.mismatches);
        println!("errors       {}", t.errors.total());
        for (kind, n) in t.errors.iter() {
            println!("  {:<16} {n}", kind.as_str());
        }
        println!("throughput   {:.0} req/s", self.rps);
        println!(
            "latency (us) p50 {} | p90 {} | p99 {} | p99.9 {} | max {}",
            self.quantile(0.5),
            self.quantile(0.9),
            self.quantile(0.99),
            self.quantile(0.999),
            t.latency_us.max()
        );
        if !self.endpoints.is_empty() {
            println!("endpoints");
        }
        for e in &self.endpoints {
            let errors: Vec<String> = e.errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
            println!(
                "  {:<22} requests {} | ok {} | errors {}{} | p50 {} us | p99 {} us",
                e.address,
                e.requests,
                e.ok,
                e.requests - e.ok,
                if errors.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", errors.join(", "))
                },
                e.p50_us,
                e.p99_us
            );
        }
    }

    fn json(&self) -> serde_json::Value {
        let t = self.tally;
        let mut errors = serde_json::Map::new();
        for &kind in Kind::all() {
            let n = t.errors.get(kind);
            let always = !matches!(
                kind,
                Kind::InvalidRequest | Kind::InvalidConfig | Kind::Other
            );
            if always || n > 0 {
                errors.insert(kind.as_str().to_owned(), n.into());
            }
        }
        serde_json::json!({
            "requests": t.requests(),
            "ok": t.ok,
            "errors": errors,
            "mismatches": t.mismatches,
            "duration_s": self.duration_s,
            "rps": self.rps,
            "latency_us": {
                "p50": self.quantile(0.5),
                "p90": self.quantile(0.9),
                "p99": self.quantile(0.99),
                "p999": self.quantile(0.999),
                "max": t.latency_us.max(),
            },
            "endpoints": self.endpoints.iter().map(EndpointLine::json).collect::<Vec<_>>(),
            "setup": {
                "client_threads": self.client_threads,
                "embedded_server": self.embedded_server,
            },
        })
    }
}

/// A progress bar on stderr when it is a terminal; nothing otherwise.
struct Progress {
    bar: indicatif::ProgressBar,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    fn start(duration: Duration, done: Arc<AtomicU64>) -> Progress {
        if !std::io::stderr().is_terminal() {
            return Progress {
                bar: indicatif::ProgressBar::hidden(),
                ticker: None,
            };
        }
        let bar = indicatif::ProgressBar::new(duration.as_millis() as u64);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{bar:40} {elapsed}/{duration} {msg}")
        {
            bar.set_style(style);
        }
        let ticking = bar.clone();
        let started = Instant::now();
        let ticker = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let elapsed = started.elapsed();
                let n = done.load(Relaxed);
                ticking.set_position(elapsed.as_millis() as u64);
                ticking.set_message(format!(
                    "{n} requests, {:.0} req/s",
                    n as f64 / elapsed.as_secs_f64()
                ));
            }
        });
        Progress {
            bar,
            ticker: Some(ticker),
        }
    }

    fn finish(self) {
        if let Some(t) = self.ticker {
            t.abort();
        }
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_unique_and_padded() {
        assert_eq!(payload(42, 12), "00000042....");
        assert_eq!(payload(123_456_789, 8), "123456789");
        assert_ne!(payload(1, 64), payload(2, 64));
        assert_eq!(payload(7, 64).len(), 64);
    }

    #[test]
    fn json_report_has_the_documented_keys() {
        let mut t = Tally::new();
        t.ok = 3;
        t.errors.record(Kind::Timeout);
        t.errors.record(Kind::Timeout);
        let _ = t.latency_us.record(100);
        let report = Report::new(&t, Duration::from_secs(1));
        let json = report.json();
        assert_eq!(json["requests"], 5);
        assert_eq!(json["ok"], 3);
        assert_eq!(json["errors"]["timeout"], 2);
        assert_eq!(json["errors"]["connection_lost"], 0);
        assert!(json["errors"].get("other").is_none());
        assert_eq!(json["mismatches"], 0);
        assert_eq!(json["latency_us"]["p50"], 100);
        assert!(json["rps"].as_f64().is_some());
        assert_eq!(json["endpoints"], serde_json::json!([]));
        assert_eq!(json["setup"]["client_threads"], 1);
        assert_eq!(json["setup"]["embedded_server"], false);
    }
}

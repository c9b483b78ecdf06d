//! Chaos soak: three servers that reorder, answer late, never answer, send unknown
//! tags, duplicate responses, malformed frames, drop connections and restart,
//! while 64 callers verify every response through the full client stack.
//!
//! Runs twice, with Go anet's 4-byte binary tags and with 2-digit ASCII tags
//! (100 values: tags wrap constantly, and the held late answers retire
//! connections often). Each runs 20 s by default; set `ANET_SOAK_SECS` for
//! longer. At the end:
//! misdelivered = 0, every request ended within its deadline plus slack (plus
//! whatever lag the runtime itself showed meanwhile, see [`LagProbe`]),
//! nothing is left in flight, and every endpoint serves again once the chaos
//! stops.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use anet::client::{Backoff, Client, ConnectionConfig};
use anet_proto::{Builder, FrameCodec, Tag, TagFormat};
use anet_tests::{LagProbe, Rng, encode_with, eventually};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::{net::TcpListener, task::JoinSet, time::Instant};
use tokio_util::codec::FramedRead;

const TIMEOUT: Duration = Duration::from_millis(300);
/// How far past its deadline a call may end, beyond the runtime's own lag:
/// less than one more deadline's worth would hide nothing (a retry that
/// restarted the deadline, or a deadline applied twice, ends 300 ms or more
/// late and stays caught only while the slack is below a few deadlines), and
/// the lag excuse below takes the scheduling noise of a loaded machine.
const SLACK: Duration = Duration::from_secs(1);
/// The most runtime lag one call may be excused: a runtime stalled longer
/// than this (the code under test blocking its threads, say) fails the test
/// rather than excusing itself.
const MAX_EXCUSED_LAG: Duration = Duration::from_secs(10);
/// How long the callers get to finish once told to stop. A call that hangs
/// never finishes, so any bound catches it; this one is far beyond the
/// deadline so that a starved machine (the soak saw its callers finish late
/// while parallel builds took both cores) does not fail it.
const FINISH: Duration = Duration::from_secs(60);

/// One chaos server, restartable on the same port.
struct ChaosServer {
    addr: SocketAddr,
    frame: Builder,
    calm: Arc<AtomicBool>,
    seed: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ChaosServer {
    async fn start(frame: Builder, calm: Arc<AtomicBool>, seed: u64) -> ChaosServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut server = ChaosServer {
            addr,
            frame,
            calm,
            seed: Arc::new(AtomicU64::new(seed)),
            task: None,
        };
        server.task = Some(server.serve(listener));
        server
    }

    /// Kills the server: its listener and every connection close at once.
    fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    async fn restart(&mut self) {
        self.kill();
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.task = Some(self.serve(listener));
    }

    fn serve(&self, listener: TcpListener) -> tokio::task::JoinHandle<()> {
        let (calm, seed, frame) = (self.calm.clone(), self.seed.clone(), self.frame);
        tokio::spawn(async move {
            let mut conns = JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let rng = Rng::new(seed.fetch_add(1, Ordering::Relaxed));
                conns.spawn(chaos_connection(
                    stream,
                    frame.new_codec(),
                    rng,
                    calm.clone(),
                ));
            }
        })
    }
}

impl Drop for ChaosServer {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn chaos_connection(
    stream: tokio::net::TcpStream,
    codec: FrameCodec,
    mut rng: Rng,
    calm: Arc<AtomicBool>,
) {
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let (tx, writer) = anet_tests::spawn_writer(write);
    let mut frames = FramedRead::new(read, codec.clone());
    let mut delayed = JoinSet::new();
    let width = codec.config().get_tag_format().width();
    while let Some(Ok(frame)) = frames.next().await {
        let echo = encode_with(&codec, &frame.tag, &frame.payload);
        let roll = if calm.load(Ordering::Relaxed) {
            0
        } else {
            rng.below(1000)
        };
        let (delay, bytes) = match roll {
            0..800 => (Duration::from_micros(rng.below(5000)), echo),
            800..850 => (TIMEOUT + Duration::from_millis(100), echo),
            850..880 => continue, // never answered
            880..930 => {
                // A tag the client cannot have issued: random bytes for a
                // binary tag (a 1 in 2^32 chance of naming one in use), letters
                // for an ASCII tag. A forged tag that names a request in flight
                // is indistinguishable from its answer, for any client.
                let ascii = codec.config().get_tag_format().is_ascii();
                let bytes: Vec<u8> = (0..width)
                    .map(|_| {
                        let r = rng.next_u64() as u8;
                        if ascii { b'a' + r % 26 } else { r }
                    })
                    .collect();
                let tag = Tag::from_slice(&bytes).expect("tag width");
                let forged = encode_with(&codec, &tag, b"forged");
                (
                    Duration::ZERO,
                    Bytes::from([&forged[..], &echo[..]].concat()),
                )
            }
            930..990 => (Duration::ZERO, Bytes::from([&echo[..], &echo[..]].concat())),
            990..993 => (
                Duration::ZERO,
                // A body shorter than any tag: a protocol error.
                Bytes::from_static(&[0x00, 0x01, 0xde]),
            ),
            993..995 => break, // drop the connection
            _ => (Duration::ZERO, echo),
        };
        let tx = tx.clone();
        if delay.is_zero() {
            let _ = tx.send(Some(bytes));
        } else {
            delayed.spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = tx.send(Some(bytes));
            });
        }
    }
    delayed.abort_all();
    let _ = tx.send(None);
    let _ = writer.await;
}

#[derive(Default, Debug)]
struct Counts {
    ok: u64,
    misdelivered: u64,
    over_deadline: u64,
    // The most runtime lag one call was excused.
    max_excused: Duration,
    errors: BTreeMap<&'static str, u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_never_misdelivers_and_never_hangs() {
    soak(TagFormat::BINARY_U32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_with_two_digit_ascii_tags_never_misdelivers_and_never_hangs() {
    soak(TagFormat::ascii(2)).await;
}

async fn soak(format: TagFormat) {
    let secs: u64 = std::env::var("ANET_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let frame = Builder::new().tag_format(format);
    let calm = Arc::new(AtomicBool::new(false));
    let mut servers = Vec::new();
    for seed in [11, 22, 33] {
        servers.push(ChaosServer::start(frame, calm.clone(), seed).await);
    }
    let client = Client::builder()
        .endpoints(servers.iter().map(|s| s.addr))
        .connection(ConnectionConfig::new().frame(frame))
        .request_timeout(TIMEOUT)
        .connect_timeout(Duration::from_millis(200))
        .backoff(
            Backoff::new()
                .base(Duration::from_millis(20))
                .max(Duration::from_millis(200)),
        )
        .build();

    let stop = Arc::new(AtomicBool::new(false));
    // The runtime's own lateness: a call is late only beyond what the probe saw
    // meanwhile (a loaded machine delays a woken caller, not the deadline).
    let lag = Arc::new(LagProbe::start());
    let mut workers = JoinSet::new();
    for w in 0..64u64 {
        let (client, stop, lag) = (client.clone(), stop.clone(), lag.clone());
        workers.spawn(async move {
            let mut counts = Counts::default();
            let mut rng = Rng::new(1000 + w);
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let pad = "z".repeat(rng.below(200) as usize);
                let payload = format!("w{w}-s{seq}-{pad}");
                let lag_before = lag.total();
                let started = Instant::now();
                let result = client.call(Bytes::from(payload.clone())).await;
                let elapsed = started.elapsed();
                let excused = (lag.total() - lag_before).min(MAX_EXCUSED_LAG);
                counts.max_excused = counts.max_excused.max(excused);
                if elapsed > TIMEOUT + SLACK + excused {
                    counts.over_deadline += 1;
                    println!(
                        "w{w}: a call ended after {elapsed:?} ({excused:?} of runtime lag excused): {:?}",
                        result.as_ref().map(|_| ()).map_err(|e| e.kind())
                    );
                }
                match result {
                    Ok(r) if r == payload.as_bytes() => counts.ok += 1,
                    Ok(_) => counts.misdelivered += 1,
                    Err(e) => *counts.errors.entry(e.kind().as_str()).or_default() += 1,
                }
                if counts.errors.values().sum::<u64>() % 64 == 63 {
                    // Keep a failing storm from spinning: a short breath.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            counts
        });
    }

    // Restart one server every two seconds while the load runs.
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut restarts = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2).min(deadline - Instant::now())).await;
        let victim = restarts % servers.len();
        servers[victim].kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        servers[victim].restart().await;
        restarts += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let results = tokio::time::timeout(FINISH, workers.join_all())
        .await
        .expect("every caller finished: no request hung");
    let mut total = Counts::default();
    for c in results {
        total.ok += c.ok;
        total.misdelivered += c.misdelivered;
        total.over_deadline += c.over_deadline;
        total.max_excused = total.max_excused.max(c.max_excused);
        for (k, n) in c.errors {
            *total.errors.entry(k).or_default() += n;
        }
    }
    let stats = client.stats();
    println!(
        "chaos soak {format:?} {secs} s: ok {}, misdelivered {}, over deadline {}, runtime lag {:?} (at most {:?} excused in one call), errors {:?}, restarts {restarts}, endpoints {:?}",
        total.ok,
        total.misdelivered,
        total.over_deadline,
        lag.total(),
        total.max_excused,
        total.errors,
        stats
            .endpoints
            .iter()
            .map(|e| (e.addr.port(), e.requests, e.reconnects))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        total.misdelivered, 0,
        "a response reached the wrong request"
    );
    assert_eq!(total.over_deadline, 0, "a request outlived its deadline");
    assert!(total.ok > 1000, "traffic flowed: {}", total.ok);

    // Nothing left in flight.
    assert!(
        // Generous: the quarantine (2 s) passes well within; a leak never does.
        eventually(Duration::from_secs(30), || client.stats().in_flight() == 0).await,
        "{:?}",
        client.stats()
    );
    // Calm again: every endpoint recovers and serves.
    calm.store(true, Ordering::Relaxed);
    for s in &mut servers {
        s.restart().await; // fresh connections, all calm
    }
    assert!(
        eventually(Duration::from_secs(30), || {
            let stats = client.stats();
            stats.endpoints.iter().all(|e| e.up && e.connections > 0)
        })
        .await,
        "every endpoint recovered: {:?}",
        client.stats()
    );
    let before = requests_per_endpoint(&client);
    for i in 0..600 {
        let payload = format!("calm-{i}");
        let reply = client
            .call(Bytes::from(payload.clone()))
            .await
            .expect("calm request");
        assert_eq!(reply, payload.as_bytes());
    }
    let after = requests_per_endpoint(&client);
    assert!(
        before.iter().zip(&after).all(|(b, a)| a > b),
        "traffic reaches every endpoint again: {before:?} -> {after:?}"
    );
}

/// The requests each endpoint of `client` has carried so far.
fn requests_per_endpoint(client: &Client) -> Vec<u64> {
    client
        .stats()
        .endpoints
        .iter()
        .map(|e| e.requests)
        .collect()
}

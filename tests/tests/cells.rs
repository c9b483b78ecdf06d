//! The connection's reused answer cells under stress, over real loopback TCP:
//! many callers on a two-worker runtime, each request with a unique payload,
//! given up at random points (before it is written, in flight, after its
//! answer came), polled from one task and finished on another, and more
//! futures held unread than the connection has cells (so some get a cell of
//! their own). Every answer must be its own request's (invariant 1), every
//! call must end (invariant 2), and the window must come back whole once the
//! late answers are in (invariant 3).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anet::client::{Connection, ConnectionConfig, Connector, future::ConnectionFuture};
use anet_tests::{Action, Rng, eventually, start_scripted};
use bytes::Bytes;
use tower::{Service, ServiceExt};

/// How long the callers keep going.
const LOAD: Duration = Duration::from_secs(4);
/// Longest any single call may take before it counts as hung.
const HANG: Duration = Duration::from_secs(10);
const CALLERS: u64 = 24;
const WINDOW: usize = 8;

/// What went wrong, counted over all callers.
#[derive(Default)]
struct Tally {
    answered: AtomicU64,
    given_up: AtomicU64,
    wrong: AtomicU64,
    failed: AtomicU64,
    hung: AtomicU64,
}

impl Tally {
    /// Checks one finished call.
    fn check(&self, result: Result<Bytes, anet::Error>, payload: &Bytes) {
        match result {
            Ok(answer) if answer == *payload => self.answered.fetch_add(1, Ordering::Relaxed),
            Ok(answer) => {
                eprintln!("misdelivered: {payload:?} got {answer:?}");
                self.wrong.fetch_add(1, Ordering::Relaxed)
            }
            Err(error) => {
                eprintln!("failed: {payload:?}: {error:?}");
                self.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }

    /// Waits (bounded) for a call and checks it.
    async fn finish(&self, future: ConnectionFuture, payload: &Bytes) {
        match tokio::time::timeout(HANG, future).await {
            Ok(result) => self.check(result, payload),
            Err(_) => {
                eprintln!("hung: {payload:?}");
                self.hung.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

async fn caller(mut conn: Connection, id: u64, tally: Arc<Tally>) {
    let mut rng = Rng::new(0x5eed_0000 + id);
    let start = tokio::time::Instant::now();
    let mut held: Vec<(ConnectionFuture, Bytes)> = Vec::new();
    let mut n = 0u64;
    while start.elapsed() < LOAD {
        n += 1;
        let payload = Bytes::from(format!("caller-{id:02}-request-{n:08}"));
        let mut future = conn.ready().await.expect("ready").call(payload.clone());
        match rng.below(8) {
            // Given up at once (most likely before it is written).
            0 => {
                drop(future);
                tally.given_up.fetch_add(1, Ordering::Relaxed);
            }
            // Polled once (a waker stored), then given up.
            1 => {
                match tokio::time::timeout(Duration::ZERO, &mut future).await {
                    Ok(result) => tally.check(result, &payload),
                    Err(_) => {
                        tally.given_up.fetch_add(1, Ordering::Relaxed);
                    }
                }
                drop(future);
            }
            // Given up after a short while, maybe in flight.
            2 => {
                let wait = Duration::from_micros(rng.below(1500));
                match tokio::time::timeout(wait, &mut future).await {
                    Ok(result) => tally.check(result, &payload),
                    Err(_) => {
                        tally.given_up.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            // Polled here, then finished on another task (another waker,
            // maybe another thread).
            3 => match tokio::time::timeout(Duration::ZERO, &mut future).await {
                Ok(result) => tally.check(result, &payload),
                Err(_) => {
                    let tally = tally.clone();
                    tokio::spawn(async move { tally.finish(future, &payload).await })
                        .await
                        .expect("the other task");
                }
            },
            // Held unread while more calls are made: with every caller
            // holding some, there are more unread futures than cells.
            4 | 5 => {
                held.push((future, payload));
                if held.len() >= 6 {
                    // Read in a random order; some dropped unread.
                    while !held.is_empty() {
                        let (future, payload) =
                            held.swap_remove(rng.below(held.len() as u64) as usize);
                        if rng.below(4) == 0 {
                            drop(future);
                            tally.given_up.fetch_add(1, Ordering::Relaxed);
                        } else {
                            tally.finish(future, &payload).await;
                        }
                    }
                }
            }
            // Waited for.
            _ => tally.finish(future, &payload).await,
        }
    }
    for (future, payload) in held {
        tally.finish(future, &payload).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_cells_under_random_cancellation_never_misdeliver_hang_or_leak() {
    // A quarter of the answers are delayed up to 2 ms, so answers overtake
    // each other and many come after their caller left (and its cell was
    // taken by the next call).
    let server = start_scripted(|n, _| {
        let mut rng = Rng::new(n as u64 + 1);
        let delay = if rng.below(4) == 0 {
            rng.below(2000)
        } else {
            0
        };
        Action::Echo(Duration::from_micros(delay))
    })
    .await;
    let conn = Connector::new()
        // Held tags far above the window: abandoned requests (at most the
        // window of them, answered within 2 ms) must never retire the
        // connection while the test runs.
        .connection_config(
            ConnectionConfig::new()
                .max_in_flight(WINDOW)
                .held_tag_limit(64 * WINDOW),
        )
        .connect(server.addr)
        .await
        .expect("connect");
    let tally = Arc::new(Tally::default());
    let mut callers = tokio::task::JoinSet::new();
    for id in 0..CALLERS {
        callers.spawn(caller(conn.clone(), id, tally.clone()));
    }
    tokio::time::timeout(LOAD + 4 * HANG, callers.join_all())
        .await
        .expect("every caller ends");

    let answered = tally.answered.load(Ordering::Relaxed);
    let given_up = tally.given_up.load(Ordering::Relaxed);
    eprintln!("answered {answered}, given up {given_up}");
    assert_eq!(
        tally.wrong.load(Ordering::Relaxed),
        0,
        "misdelivered answers"
    );
    assert_eq!(tally.hung.load(Ordering::Relaxed), 0, "hung calls");
    assert_eq!(tally.failed.load(Ordering::Relaxed), 0, "failed calls");
    assert!(answered > 0 && given_up > 0, "{answered} {given_up}");

    // Every late answer arrives (the server echoes all): the window comes
    // back whole, nothing stays in flight or quarantined.
    let drained = eventually(HANG, || {
        let stats = conn.stats();
        stats.in_flight == 0 && stats.quarantined == 0 && stats.held_tags == 0
    })
    .await;
    assert!(drained, "{:?}", conn.stats());
    let mut conn = conn;
    let last = Bytes::from_static(b"last");
    let mut futures = Vec::new();
    for _ in 0..WINDOW {
        futures.push(
            tokio::time::timeout(HANG, conn.ready())
                .await
                .expect("the whole window is free")
                .expect("ready")
                .call(last.clone()),
        );
    }
    for future in futures {
        assert_eq!(future.await.expect("answered"), last);
    }
}

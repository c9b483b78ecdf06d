//! Helpers of the client tests: a delayed echo server, backoffs, a load loop.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anet::{
    Kind,
    client::{Backoff, Client},
    server::{Request, Server},
};
use bytes::Bytes;
use tower::service_fn;

use crate::{RunningServer, restart_server, start_server};

/// An anet echo server that answers after `delay`, counting requests.
pub async fn delayed_echo_server(delay: Duration, addr: Option<SocketAddr>) -> RunningServer {
    let service = service_fn(move |req: Request| async move {
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, Infallible>(req.into_payload())
    });
    match addr {
        None => start_server(Server::builder(), service).await,
        // Rebind the same port (a restarted backend).
        Some(addr) => restart_server(addr, service).await,
    }
}

/// Redial at once, even after a connection that never answered.
pub const NO_BACKOFF: Backoff = Backoff::new().base(Duration::ZERO).max(Duration::ZERO);

/// A quick backoff for tests: 50 ms doubling to 200 ms.
pub fn fast_backoff() -> Backoff {
    Backoff::new()
        .base(Duration::from_millis(50))
        .max(Duration::from_millis(200))
}

/// What [`load`] counted: calls answered with their payload, errors by kind,
/// calls answered with another payload.
pub type LoadResult = (usize, Vec<Kind>, usize);

/// Runs `workers` callers until `stop` is set; returns (ok, errors by kind,
/// mismatches).
pub async fn load(client: &Client, workers: usize, stop: Arc<AtomicBool>) -> LoadResult {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let client = client.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            let (mut ok, mut errors, mut mismatches) = (0, Vec::new(), 0);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let payload = format!("w{w}-n{n}");
                n += 1;
                match client.call(Bytes::from(payload.clone())).await {
                    Ok(r) if r == payload.as_bytes() => ok += 1,
                    Ok(_) => mismatches += 1,
                    Err(e) => errors.push(e.kind()),
                }
            }
            (ok, errors, mismatches)
        });
    }
    let mut total = (0, Vec::new(), 0);
    for (ok, errors, mismatches) in tasks.join_all().await {
        total.0 += ok;
        total.1.extend(errors);
        total.2 += mismatches;
    }
    total
}

/// A loopback address where nothing listens.
pub fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

/// Runs `workers` callers for `length` (Tokio time, so paused time works),
/// each sending its own numbered payloads and asserting that every call
/// succeeds with its payload echoed; a caller waits `pause` between calls.
/// Returns how many calls were made in all.
pub async fn echo_for(client: &Client, workers: usize, length: Duration, pause: Duration) -> u64 {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let client = client.clone();
        tasks.spawn(async move {
            let start = tokio::time::Instant::now();
            let mut n = 0u64;
            while start.elapsed() < length {
                let payload = Bytes::from(format!("{w}-{n}"));
                let reply = client
                    .call(payload.clone())
                    .await
                    .expect("no request fails");
                assert_eq!(reply, payload);
                n += 1;
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
            }
            n
        });
    }
    tasks.join_all().await.into_iter().sum()
}

/// Sends `n` concurrent calls (payloads `0`, `1`, …) and asserts each one
/// succeeds.
pub async fn call_all_ok(client: &Client, n: usize) {
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = client.clone();
        calls.spawn(async move { client.call(Bytes::from(format!("{i}"))).await });
    }
    for r in calls.join_all().await {
        r.expect("ok");
    }
}

/// Calls once with `payload` and asserts that the call fails
/// [`Kind::Timeout`] at `deadline_ms` (Tokio time: exact under paused time),
/// or at most `slack_ms` after it.
pub async fn assert_times_out_at(
    client: &Client,
    payload: &'static [u8],
    deadline_ms: u64,
    slack_ms: u64,
) {
    let deadline = Duration::from_millis(deadline_ms);
    let slack = Duration::from_millis(slack_ms);
    let started = tokio::time::Instant::now();
    let err = client
        .call(Bytes::from_static(payload))
        .await
        .expect_err("the call never completes");
    let elapsed = started.elapsed();
    assert_eq!(err.kind(), Kind::Timeout, "{err}");
    assert!(
        elapsed >= deadline && elapsed <= deadline + slack,
        "ended after {elapsed:?}, not at the deadline {deadline:?}"
    );
}

/// Starts [`load`] with `workers` callers in a task; set the returned flag to
/// stop it, then await the task for its result.
pub fn spawn_load(
    client: &Client,
    workers: usize,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<LoadResult>) {
    let stop = Arc::new(AtomicBool::new(false));
    let run = tokio::spawn({
        let (client, stop) = (client.clone(), stop.clone());
        async move { load(&client, workers, stop).await }
    });
    (stop, run)
}

//! The client's limit layers: concurrency limit, load shedding, a rate limit
//! shared by clones, and the deadline over the wait for them.

use anet_tests::clients::{assert_times_out_at, call_all_ok};
use std::{sync::atomic::Ordering, time::Duration};

use anet::{
    Kind,
    client::{Client, ClientBuilder, RetryPolicy},
};
use anet_tests::{Action, memory_addr, memory_scripted, start_scripted};
use bytes::Bytes;

/// An echo server answering after `delay_ms`, and a client builder for it
/// with a concurrency limit of `limit`.
async fn limited_echo(delay_ms: u64, limit: usize) -> (anet_tests::Scripted, ClientBuilder) {
    let server = start_scripted(move |_, _| Action::Echo(Duration::from_millis(delay_ms))).await;
    let client = Client::builder()
        .endpoint(server.addr)
        .concurrency_limit(Some(limit));
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_concurrency_limit_holds_at_the_server() {
    let (server, client) = limited_echo(5, 8).await;
    let client = client.connections_per_endpoint(2, 4).build();
    call_all_ok(&client, 400).await;
    let peak = server.counters.max_in_flight.load(Ordering::SeqCst);
    assert!(peak <= 8, "server saw {peak} in flight");
    assert!(peak >= 4, "the limit was actually reached: {peak}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_shedding_fails_fast_with_overloaded_at_the_limit() {
    let (_server, client) = limited_echo(300, 2).await;
    let client = client.load_shed(true).build();
    client.call(Bytes::from_static(b"warm")).await.expect("ok");
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..10 {
        let client = client.clone();
        calls.spawn(async move { client.call(Bytes::from(format!("{i}"))).await });
    }
    let results = calls.join_all().await;
    let shed = results
        .iter()
        .filter(|r| r.as_ref().is_err_and(|e| e.kind() == Kind::Overloaded))
        .count();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok + shed, 10, "{results:?}");
    assert!(shed >= 6 && ok >= 1, "ok {ok}, shed {shed}");
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_is_shared_by_every_clone() {
    let (connector, counters) = memory_scripted(|_, _| Action::Echo(Duration::ZERO));
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(connector)
        .rate_limit(50, Duration::from_secs(1))
        .request_timeout(Duration::from_secs(10))
        .build();
    let started = tokio::time::Instant::now();
    call_all_ok(&client, 100).await;
    // A burst of 50, then 50 more at 50 per second (paused time: exactly).
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(980) && elapsed < Duration::from_millis(1100),
        "{elapsed:?}"
    );
    assert_eq!(counters.requests.load(Ordering::SeqCst), 100);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_covers_waiting_for_the_concurrency_limit() {
    // Each request takes 200 ms, within the 300 ms deadline; with a limit of one,
    // the sixth caller would wait a second for its turn: its own deadline must end
    // the wait instead.
    let (connector, _) = memory_scripted(|_, _| Action::Echo(Duration::from_millis(200)));
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(connector)
        .concurrency_limit(Some(1))
        .request_timeout(Duration::from_millis(300))
        .build();
    client
        .call(Bytes::from_static(b"warm"))
        .await
        .expect("warm-up takes 200 ms of 300");
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..6 {
        let client = client.clone();
        calls.spawn(async move {
            let started = tokio::time::Instant::now();
            let result = client.call(Bytes::from(format!("{i}"))).await;
            (started.elapsed(), result.map_err(|e| e.kind()))
        });
    }
    let results = calls.join_all().await;
    for (elapsed, result) in &results {
        assert!(
            *elapsed <= Duration::from_millis(310),
            "every caller ends near its own deadline: {elapsed:?} {result:?}"
        );
    }
    assert!(
        results.iter().any(|(_, r)| *r == Err(Kind::Timeout)),
        "queued callers time out: {results:?}"
    );
}

/// With limits configured, a request past them that the server never answers
/// still ends at its deadline (enforced below the layers, by the connection).
#[tokio::test(start_paused = true)]
async fn a_limited_client_request_to_a_silent_server_ends_at_its_deadline() {
    let (connector, _) = memory_scripted(|_, _| Action::Ignore);
    let client = Client::builder()
        .endpoint(memory_addr())
        .connector(connector)
        .concurrency_limit(Some(4))
        .rate_limit(1000, Duration::from_secs(1))
        .request_timeout(Duration::from_millis(300))
        .retry(RetryPolicy::new(0))
        .build();
    assert_times_out_at(&client, b"silence", 300, 10).await;
}

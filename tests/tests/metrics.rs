//! anet's metrics (feature `metrics`) as a recorder sees them: names, labels
//! and values, for the client and the server, over real loopback TCP.
//!
//! Each test runs on a current-thread runtime with a thread-local recorder, so
//! the tests of this file do not see each other's metrics.

use std::time::Duration;

use anet::{
    Kind,
    client::{Client, RetryPolicy},
    server::{Request, Server},
};
use anet_proto::Tag;
use anet_tests::{Action, encode, start_scripted};
use bytes::Bytes;
use metrics_util::{
    CompositeKey, MetricKind,
    debugging::{DebugValue, DebuggingRecorder, Snapshotter},
};
use tower::service_fn;

/// Runs `test` on a current-thread runtime (every task on this thread) with
/// a fresh recorder; returns its snapshotter.
fn recorded<F: std::future::Future<Output = ()>>(
    test: impl FnOnce(Snapshotter) -> F,
) -> Snapshotter {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(test(recorder.snapshotter()));
    snapshotter
}

/// The recorded metrics, as `(kind, name, sorted labels, value)`.
type Sample = (MetricKind, String, Vec<(String, String)>, DebugValue);

fn samples(snapshotter: &Snapshotter) -> Vec<Sample> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value): (CompositeKey, _, _, DebugValue)| {
            let (kind, key) = key.into_parts();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            (kind, key.name().to_owned(), labels, value)
        })
        .collect()
}

/// The value of the metric `name` with exactly `labels`.
fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a DebugValue> {
    let mut want: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    want.sort();
    samples
        .iter()
        .find(|(_, n, l, _)| n == name && *l == want)
        .map(|(_, _, _, v)| v)
}

fn counter(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> u64 {
    match find(samples, name, labels) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} {labels:?}: {other:?} in {samples:#?}"),
    }
}

fn gauge(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    match find(samples, name, labels) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("{name} {labels:?}: {other:?} in {samples:#?}"),
    }
}

fn histogram_len(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> usize {
    match find(samples, name, labels) {
        Some(DebugValue::Histogram(v)) => v.len(),
        other => panic!("{name} {labels:?}: {other:?} in {samples:#?}"),
    }
}

fn histogram_values(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    match find(samples, name, labels) {
        Some(DebugValue::Histogram(v)) => v.iter().map(|x| x.into_inner()).collect(),
        other => panic!("{name} {labels:?}: {other:?} in {samples:#?}"),
    }
}

/// Asserts every value lies in `low..high` (seconds).
fn all_within(values: &[f64], low: f64, high: f64, what: &str) {
    assert!(
        values.iter().all(|v| (low..high).contains(v)),
        "{what}: {values:?} not all in {low}..{high}"
    );
}

#[test]
fn durations_are_the_time_requests_took_on_client_and_server() {
    // The client's durations run from the driver pass that wrote a request
    // to the pass that read its answer (or failed it); the server's from the
    // read batch to the publication before the flush. Both are measured with
    // clock readings shared by a batch: never less than the time the request
    // really took.
    let mut endpoint = String::new();
    let mut server_addr = String::new();
    let snapshotter = recorded(|_| async {
        // A scripted server that answers after 50 ms, "slow" never.
        let scripted = start_scripted(|_, frame| match &frame.payload[..] {
            b"slow" => Action::Ignore,
            _ => Action::Echo(Duration::from_millis(50)),
        })
        .await;
        endpoint = scripted.addr.to_string();
        let client = Client::builder()
            .endpoint(scripted.addr)
            .request_timeout(Duration::from_millis(150))
            .retry(RetryPolicy::new(0))
            .build();
        let calls = (0..4).map(|_| client.call(Bytes::from_static(b"hi")));
        for answer in futures_util::future::join_all(calls).await {
            answer.expect("echo");
        }
        client.call(Bytes::from_static(b"hi")).await.expect("echo");
        let slow = client.call(Bytes::from_static(b"slow")).await;
        assert_eq!(slow.expect_err("ignored").kind(), Kind::Timeout);
        client.close();

        // An anet server whose handler takes 40 ms, but not for "now".
        let server = Server::builder()
            .bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        server_addr = server.local_addr().to_string();
        let addr = server.local_addr();
        tokio::spawn(server.serve(service_fn(|req: Request| async move {
            if req.payload().as_ref() != b"now" {
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            Ok::<_, std::convert::Infallible>(req.into_payload())
        })));
        let client = Client::builder().endpoint(addr).build();
        let calls = (0..3).map(|_| client.call(Bytes::from_static(b"wait")));
        for answer in futures_util::future::join_all(calls).await {
            answer.expect("echo");
        }
        client
            .call(Bytes::from_static(b"wait"))
            .await
            .expect("echo");
        client.call(Bytes::from_static(b"now")).await.expect("echo");
        client.close();
    });
    let s = samples(&snapshotter);
    let ok = [("endpoint", endpoint.as_str()), ("outcome", "ok")];
    let client_ok = histogram_values(&s, "anet_client_request_duration", &ok);
    assert_eq!(client_ok.len(), 5, "{client_ok:?}");
    all_within(&client_ok, 0.05, 5.0, "client ok durations");
    let timeout = [("endpoint", endpoint.as_str()), ("outcome", "timeout")];
    let client_timeout = histogram_values(&s, "anet_client_request_duration", &timeout);
    assert_eq!(client_timeout.len(), 1, "{client_timeout:?}");
    all_within(&client_timeout, 0.15, 5.0, "client timeout duration");
    let server_ok = histogram_values(&s, "anet_server_request_duration", &[("outcome", "ok")]);
    assert_eq!(server_ok.len(), 5, "{server_ok:?}");
    let mut waited: Vec<f64> = server_ok.clone();
    waited.sort_by(f64::total_cmp);
    // The one answered at once took less than the handler's sleep, the four
    // others at least that.
    all_within(
        &waited[..1],
        0.0,
        0.04,
        "server duration of an immediate answer",
    );
    all_within(
        &waited[1..],
        0.04,
        5.0,
        "server durations of 40 ms handlers",
    );
    // The anet client saw its own answers at least as late as the server
    // produced them.
    let other = [("endpoint", server_addr.as_str()), ("outcome", "ok")];
    let client_of_server = histogram_values(&s, "anet_client_request_duration", &other);
    assert_eq!(client_of_server.len(), 5);
    let mut seen = client_of_server.clone();
    seen.sort_by(f64::total_cmp);
    all_within(&seen[1..], 0.04, 5.0, "client durations of 40 ms handlers");
}

#[test]
fn an_answer_read_with_the_end_of_its_connection_is_counted() {
    // A peer that echoes the first request's bytes (one whole frame: same
    // tag, same payload) and closes at once: the driver reads the answer and
    // the end of the stream in one pass, and must still record the answer.
    let mut endpoint = String::new();
    let snapshotter = recorded(|_| async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        endpoint = listener.local_addr().expect("addr").to_string();
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut frame = [0u8; 64];
            let n = tokio::io::AsyncReadExt::read(&mut socket, &mut frame)
                .await
                .expect("read");
            tokio::io::AsyncWriteExt::write_all(&mut socket, &frame[..n])
                .await
                .expect("write");
        });
        let client = Client::builder()
            .endpoint(addr)
            .retry(RetryPolicy::new(0))
            .build();
        let answer = client.call(Bytes::from_static(b"once")).await;
        assert_eq!(answer.expect("echo"), Bytes::from_static(b"once"));
        // The driver has gone by the time the pool sees the connection closed.
        let gone = anet_tests::eventually(Duration::from_secs(5), || {
            client.stats().endpoints.iter().all(|e| e.connections == 0)
        })
        .await;
        assert!(gone, "the connection was not closed");
        client.close();
    });
    let s = samples(&snapshotter);
    let ok = [("endpoint", endpoint.as_str()), ("outcome", "ok")];
    assert_eq!(counter(&s, "anet_client_requests", &ok), 1);
    assert_eq!(histogram_len(&s, "anet_client_request_duration", &ok), 1);
}

#[test]
fn client_metrics_count_requests_by_endpoint_and_outcome_with_durations() {
    let mut endpoint = String::new();
    let snapshotter = recorded(|_| async {
        // Echoes, except that "slow" is never answered and "forge" is followed
        // by an answer under a tag the client never used.
        let server = start_scripted(|_, frame| match &frame.payload[..] {
            b"slow" => Action::Ignore,
            b"forge" => Action::Raw(
                Duration::ZERO,
                encode(&Tag::from_u32(0xdead_0001), b"forged"),
            ),
            _ => Action::Echo(Duration::ZERO),
        })
        .await;
        endpoint = server.addr.to_string();
        let client = Client::builder()
            .endpoint(server.addr)
            .request_timeout(Duration::from_millis(200))
            .retry(RetryPolicy::new(0))
            .build();
        for _ in 0..5 {
            client.call(Bytes::from_static(b"hi")).await.expect("echo");
        }
        let slow = client.call(Bytes::from_static(b"slow")).await;
        assert_eq!(slow.expect_err("ignored").kind(), Kind::Timeout);
        // Answered only under a forged tag: it times out too.
        let forge = client.call(Bytes::from_static(b"forge")).await;
        assert_eq!(forge.expect_err("not answered").kind(), Kind::Timeout);
        // The driver publishes the unknown answer with its next batch.
        client.call(Bytes::from_static(b"hi")).await.expect("echo");
        client.close();
        let unreachable = client.call(Bytes::from_static(b"late")).await;
        assert_eq!(unreachable.expect_err("closed").kind(), Kind::Closed);
    });
    let s = samples(&snapshotter);
    let e = endpoint.as_str();
    assert_eq!(
        counter(
            &s,
            "anet_client_requests",
            &[("endpoint", e), ("outcome", "ok")]
        ),
        6
    );
    assert_eq!(
        counter(
            &s,
            "anet_client_requests",
            &[("endpoint", e), ("outcome", "timeout")]
        ),
        2
    );
    assert_eq!(
        histogram_len(
            &s,
            "anet_client_request_duration",
            &[("endpoint", e), ("outcome", "ok")]
        ),
        6
    );
    let timeouts = histogram_len(
        &s,
        "anet_client_request_duration",
        &[("endpoint", e), ("outcome", "timeout")],
    );
    assert_eq!(timeouts, 2);
    // Nothing else under this endpoint.
    let all: u64 = s
        .iter()
        .filter(|(_, n, l, _)| {
            n == "anet_client_requests" && l.iter().any(|(k, v)| k == "endpoint" && v == e)
        })
        .map(|(_, _, _, v)| {
            if let DebugValue::Counter(n) = v {
                *n
            } else {
                0
            }
        })
        .sum();
    assert_eq!(all, 8, "{s:#?}");
    // A call after close reached no endpoint.
    assert_eq!(
        counter(
            &s,
            "anet_client_requests",
            &[("endpoint", "none"), ("outcome", "closed")]
        ),
        1
    );
    assert_eq!(gauge(&s, "anet_client_in_flight", &[("endpoint", e)]), 0.0);
    assert_eq!(counter(&s, "anet_client_connects", &[]), 1);
    assert!(
        counter(&s, "anet_client_unknown_responses", &[]) >= 1,
        "{s:#?}"
    );
    // Label values are bounded: no tag or payload ever appears.
    for (_, name, labels, _) in &s {
        for (key, _) in labels {
            assert!(
                ["endpoint", "outcome", "state"].contains(&key.as_str()),
                "{name} {key}"
            );
        }
    }
}

#[test]
fn server_metrics_count_requests_by_outcome_connections_and_protocol_errors() {
    recorded(|snapshotter| async move {
        let server = Server::builder()
            .bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = server.local_addr();
        let service = service_fn(|req: Request| async move {
            match req.payload().as_ref() {
                b"fail" => Err("refused"),
                _ => Ok::<_, &str>(req.into_payload()),
            }
        });
        tokio::spawn(server.serve(service));
        let client = Client::builder()
            .endpoint(addr)
            .retry(RetryPolicy::new(0))
            .build();
        for _ in 0..3 {
            client.call(Bytes::from_static(b"hi")).await.expect("echo");
        }
        // A service error: no answer (the default keeps the connection open).
        let failed = tokio::time::timeout(
            Duration::from_millis(300),
            client.call(Bytes::from_static(b"fail")),
        )
        .await;
        assert!(!matches!(failed, Ok(Ok(_))), "{failed:?}");
        // A peer that breaks the protocol: a frame shorter than its tag.
        let mut raw = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut raw, &[0, 1, 0xff])
            .await
            .expect("write");
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_to_end(&mut raw, &mut rest),
        )
        .await;
        // One snapshot (it drains what it reads), while the client's
        // connection is open and the broken one has closed.
        let s = samples(&snapshotter);
        assert_eq!(counter(&s, "anet_server_requests", &[("outcome", "ok")]), 3);
        assert_eq!(
            counter(&s, "anet_server_requests", &[("outcome", "error")]),
            1
        );
        assert_eq!(
            histogram_len(&s, "anet_server_request_duration", &[("outcome", "ok")]),
            3
        );
        assert_eq!(counter(&s, "anet_server_protocol_errors", &[]), 1);
        assert_eq!(gauge(&s, "anet_server_in_flight", &[]), 0.0);
        assert_eq!(gauge(&s, "anet_server_connections", &[]), 1.0);
        let endpoint = addr.to_string();
        let live = [("endpoint", endpoint.as_str()), ("state", "live")];
        assert_eq!(gauge(&s, "anet_client_connections", &live), 1.0);
        client.close();
    });
}

#[test]
fn server_series_exist_before_their_first_event_and_refusals_are_counted() {
    recorded(|snapshotter| async move {
        let server = Server::builder()
            .max_connections_per_peer(Some(1))
            .bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = server.local_addr();
        let stats = server.stats();
        let service = service_fn(|req: Request| async move { Ok::<_, &str>(req.into_payload()) });
        tokio::spawn(server.serve(service));
        // Wait until the server runs (it registers its series when it starts).
        let first = tokio::net::TcpStream::connect(addr).await.expect("connect");
        anet_tests::eventually(Duration::from_secs(10), || {
            stats.snapshot().connections_open == 1
        })
        .await;
        let s = samples(&snapshotter);
        assert_eq!(counter(&s, "anet_server_rejected_connections", &[]), 0);
        assert_eq!(counter(&s, "anet_server_protocol_errors", &[]), 0);
        assert_eq!(gauge(&s, "anet_server_connections", &[]), 1.0);
        // A second connection from the same peer is refused: closed unserved.
        let mut second = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read_to_end(&mut second, &mut rest),
        )
        .await;
        assert!(read.is_ok(), "the refused connection was not closed");
        anet_tests::eventually(Duration::from_secs(10), || {
            stats.snapshot().connections_rejected == 1
        })
        .await;
        let s = samples(&snapshotter);
        assert_eq!(counter(&s, "anet_server_rejected_connections", &[]), 1);
        // A snapshot drains what it reads: this one holds the changes since the
        // last one, and the refused connection was never counted open.
        assert_eq!(gauge(&s, "anet_server_connections", &[]), 0.0);
        drop(first);
    });
}

#[test]
fn serve_connection_counts_its_connection_while_it_is_served() {
    recorded(|snapshotter| async move {
        let (client_io, server_io) = tokio::io::duplex(4096);
        let service = service_fn(|req: Request| async move { Ok::<_, &str>(req.into_payload()) });
        let served = tokio::spawn(async move {
            Server::builder()
                .serve_connection(server_io, None, service)
                .await
        });
        let mut client_io = client_io;
        // One request (tag 7, payload "hi"), and its answer.
        let frame = encode(&Tag::from_u32(7), b"hi");
        tokio::io::AsyncWriteExt::write_all(&mut client_io, &frame)
            .await
            .expect("write");
        let mut answer = vec![0; frame.len()];
        tokio::io::AsyncReadExt::read_exact(&mut client_io, &mut answer)
            .await
            .expect("answer");
        assert_eq!(answer, frame);
        let s = samples(&snapshotter);
        assert_eq!(gauge(&s, "anet_server_connections", &[]), 1.0);
        drop(client_io);
        tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("serve_connection ends when its peer goes")
            .expect("join");
        // A snapshot drains what it reads: the change since the last one.
        let s = samples(&snapshotter);
        assert_eq!(gauge(&s, "anet_server_connections", &[]), -1.0);
    });
}

#[test]
fn client_series_of_rare_events_exist_before_their_first_event() {
    recorded(|snapshotter| async move {
        let server = start_scripted(|_, _| Action::Echo(Duration::ZERO)).await;
        let client = Client::builder().endpoint(server.addr).build();
        let s = samples(&snapshotter);
        for name in [
            "anet_client_connects",
            "anet_client_connect_failures",
            "anet_client_retries",
            "anet_client_unknown_responses",
        ] {
            assert_eq!(counter(&s, name, &[]), 0, "{name}");
        }
        assert_eq!(gauge(&s, "anet_client_held_tags", &[]), 0.0);
        client.close();
    });
}

#[test]
fn the_in_flight_gauge_counts_requests_waiting_on_the_endpoint() {
    recorded(|snapshotter| async move {
        let server = start_scripted(|_, frame| match &frame.payload[..] {
            b"slow" => Action::Ignore,
            _ => Action::Echo(Duration::ZERO),
        })
        .await;
        let endpoint = server.addr.to_string();
        let e = endpoint.as_str();
        let client = Client::builder()
            .endpoint(server.addr)
            .request_timeout(Duration::from_millis(500))
            .retry(RetryPolicy::new(0))
            .build();
        client.call(Bytes::from_static(b"hi")).await.expect("echo");
        let _ = samples(&snapshotter);
        let slow: Vec<_> = (0..3)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.call(Bytes::from_static(b"slow")).await })
            })
            .collect();
        anet_tests::eventually(Duration::from_secs(5), || {
            client
                .stats()
                .endpoints
                .iter()
                .map(|e| e.in_flight)
                .sum::<usize>()
                == 3
        })
        .await;
        // The driver publishes at the end of the pass that wrote them.
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A snapshot drains what it reads: the change since the last one.
        let s = samples(&snapshotter);
        assert_eq!(gauge(&s, "anet_client_in_flight", &[("endpoint", e)]), 3.0);
        for call in slow {
            let err = call.await.expect("join").expect_err("ignored");
            assert_eq!(err.kind(), Kind::Timeout);
        }
        // The next pass publishes that they left.
        client.call(Bytes::from_static(b"hi")).await.expect("echo");
        let s = samples(&snapshotter);
        assert_eq!(gauge(&s, "anet_client_in_flight", &[("endpoint", e)]), -3.0);
        client.close();
    });
}

#[test]
fn the_in_flight_gauge_drops_the_share_of_a_driver_aborted_with_its_runtime() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (endpoint, client) = rt.block_on(async {
        let server = start_scripted(|_, frame| match &frame.payload[..] {
            b"slow" => Action::Ignore,
            _ => Action::Echo(Duration::ZERO),
        })
        .await;
        let client = Client::builder()
            .endpoint(server.addr)
            .retry(RetryPolicy::new(0))
            .build();
        client.call(Bytes::from_static(b"hi")).await.expect("echo");
        for _ in 0..2 {
            let client = client.clone();
            tokio::spawn(async move { client.call(Bytes::from_static(b"slow")).await });
        }
        anet_tests::eventually(Duration::from_secs(5), || {
            client
                .stats()
                .endpoints
                .iter()
                .map(|e| e.in_flight)
                .sum::<usize>()
                == 2
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        (server.addr.to_string(), client)
    });
    // Every task goes with the runtime, the connection's driver too, in the
    // middle of its two requests: its share of the gauge must go with it.
    drop(rt);
    std::mem::forget(client);
    let s = samples(&snapshotter);
    assert_eq!(
        gauge(
            &s,
            "anet_client_in_flight",
            &[("endpoint", endpoint.as_str())]
        ),
        0.0
    );
}

#[test]
fn heartbeats_are_not_counted_as_requests() {
    // The pool's heartbeats on an idle connection are its own, not callers'
    // requests: `anet_client_requests` counts only the one call made.
    let mut endpoint = String::new();
    let beats = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let snapshotter = recorded(|_| async {
        let b = beats.clone();
        let server = start_scripted(move |_, frame| {
            if &frame.payload[..] == b"HB" {
                b.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            Action::Echo(Duration::ZERO)
        })
        .await;
        endpoint = server.addr.to_string();
        let client = Client::builder()
            .endpoint(server.addr)
            .heartbeat(anet::client::Heartbeat::new(
                Duration::from_millis(40),
                "HB",
            ))
            .retry(RetryPolicy::new(0))
            .build();
        client.call(Bytes::from_static(b"hi")).await.expect("echo");
        let beaten = anet_tests::eventually(Duration::from_secs(5), || {
            beats.load(std::sync::atomic::Ordering::SeqCst) >= 3
        })
        .await;
        assert!(beaten, "no heartbeats");
        // Their answers are read (and would be published) by now.
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.close();
    });
    let s = samples(&snapshotter);
    let ok = [("endpoint", endpoint.as_str()), ("outcome", "ok")];
    assert_eq!(counter(&s, "anet_client_requests", &ok), 1, "{s:#?}");
    assert_eq!(histogram_len(&s, "anet_client_request_duration", &ok), 1);
}

#[test]
fn a_bare_pool_counts_the_errors_it_times() {
    // A `Pool` used as a tower service without the balancer: a request lost
    // with its connection is counted under its outcome, as its duration is.
    let mut endpoint = String::new();
    let snapshotter = recorded(|_| async {
        let mut server = anet_tests::ManualServer::bind().await;
        endpoint = server.addr.to_string();
        let mut pool = anet::client::Pool::new(
            server.addr,
            anet::client::Connector::new(),
            anet::client::PoolConfig::new(),
        );
        let mut conn = server.accept().await;
        let answer = anet_tests::ready_call(&mut pool, b"lost").await;
        let _ = conn.recv().await;
        drop(conn);
        let error = answer.await.expect_err("connection closed");
        assert_eq!(error.kind(), Kind::ConnectionLost);
        drop(pool);
    });
    let s = samples(&snapshotter);
    let lost = [
        ("endpoint", endpoint.as_str()),
        ("outcome", "connection_lost"),
    ];
    assert_eq!(
        histogram_len(&s, "anet_client_request_duration", &lost),
        1,
        "{s:#?}"
    );
    assert_eq!(counter(&s, "anet_client_requests", &lost), 1, "{s:#?}");
}

#[test]
fn a_request_whose_caller_left_has_no_error_duration() {
    // A caller gives up (its future dropped) while its request waits; the
    // connection is then lost. Nobody receives that error, so it is neither
    // counted nor timed (a duration without a count would skew the error
    // histogram against the counter).
    let mut endpoint = String::new();
    let snapshotter = recorded(|_| async {
        let mut server = anet_tests::ManualServer::bind().await;
        endpoint = server.addr.to_string();
        let client = Client::builder()
            .endpoint(server.addr)
            .retry(RetryPolicy::new(0))
            .build();
        let accepted = tokio::spawn(async move {
            let mut conn = server.accept().await;
            let _ = conn.recv().await;
            conn
        });
        let gave_up = tokio::time::timeout(
            Duration::from_millis(50),
            client.call(Bytes::from_static(b"x")),
        )
        .await;
        assert!(gave_up.is_err(), "answered");
        // Lost well before the driver's sweep notices the caller left.
        drop(accepted.await.expect("accepted"));
        let gone = anet_tests::eventually(Duration::from_secs(5), || {
            client.stats().endpoints.iter().all(|e| e.connections == 0)
                || client.stats().endpoints[0].last_error.is_some()
        })
        .await;
        assert!(gone, "the connection was not lost");
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.close();
    });
    let s = samples(&snapshotter);
    let lost = [
        ("endpoint", endpoint.as_str()),
        ("outcome", "connection_lost"),
    ];
    assert_eq!(find(&s, "anet_client_requests", &lost), None, "{s:#?}");
    assert_eq!(
        find(&s, "anet_client_request_duration", &lost),
        None,
        "{s:#?}"
    );
}

//! The multiplexed connection over real loopback TCP (and, for the timing
//! tests, in-memory pipes on paused time): correctness under reordering,
//! failure, cancellation, quarantine, hostile frames and backpressure.

use anet_tests::{not_ready_within, ready_call};
use std::{sync::atomic::Ordering, time::Duration};

use anet::{
    Error, Kind,
    client::{Connection, ConnectionConfig, Connector},
};
use anet_proto::Tag;
use anet_tests::{Action, ManualServer, Rng, encode, eventually, start_echo, start_scripted};
use bytes::Bytes;
use tower::{Service, ServiceExt};

const LIMIT: Duration = Duration::from_secs(20);

async fn connect(addr: std::net::SocketAddr, config: ConnectionConfig) -> Connection {
    Connector::new()
        .connection_config(config)
        .connect(addr)
        .await
        .expect("connect")
}

async fn request(conn: &mut Connection, payload: impl Into<Bytes>) -> Result<Bytes, Error> {
    conn.ready().await?.call(payload.into()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordering_server_never_misdelivers_10k_requests_at_concurrency_512() {
    // Each reply is delayed 0..3 ms at random, so replies overtake each other.
    let server = start_scripted(|n, _| {
        let mut rng = Rng::new(n as u64 + 1);
        Action::Echo(Duration::from_micros(rng.below(3000)))
    })
    .await;
    let conn = connect(server.addr, ConnectionConfig::new().max_in_flight(512)).await;
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..512u64 {
        let mut conn = conn.clone();
        tasks.spawn(async move {
            let mut mismatches = 0;
            let mut n = worker;
            while n < 10_000 {
                let payload = format!("request-{n:08}-{}", "x".repeat((n % 64) as usize));
                let response = request(&mut conn, payload.clone()).await.expect("response");
                if response != payload.as_bytes() {
                    mismatches += 1;
                }
                n += 512;
            }
            mismatches
        });
    }
    let mismatches: usize = tokio::time::timeout(LIMIT, tasks.join_all())
        .await
        .expect("all requests end")
        .into_iter()
        .sum();
    assert_eq!(mismatches, 0);
    let stats = conn.stats();
    assert_eq!(server.counters.requests.load(Ordering::SeqCst), 10_000);
    assert!(
        server.counters.max_in_flight.load(Ordering::SeqCst) > 64,
        "requests were really concurrent"
    );
    assert!(
        eventually(LIMIT, || conn.stats().responses == 10_000).await,
        "{stats:?}"
    );
    assert_eq!(conn.stats().unknown_tags, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_closing_mid_flight_fails_every_waiting_request_with_connection_lost() {
    // Hold the first 50 requests, then close on the 51st... which never comes:
    // close after reading 50 instead.
    let server = start_scripted(|n, _| {
        if n < 49 {
            Action::Ignore
        } else {
            Action::Close
        }
    })
    .await;
    let conn = connect(server.addr, ConnectionConfig::new()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let mut conn = conn.clone();
        tasks.spawn(async move { request(&mut conn, format!("r{i}")).await });
    }
    let results = tokio::time::timeout(Duration::from_secs(10), tasks.join_all())
        .await
        .expect("no request hangs");
    for result in results {
        let err = result.expect_err("server closed");
        assert_eq!(err.kind(), Kind::ConnectionLost, "{err:?}");
        assert!(!err.is_unsent());
    }
    // The broken connection refuses new work so its owner replaces it.
    let mut conn = conn;
    let err = conn
        .ready()
        .await
        .expect_err("broken connection is not ready");
    assert!(err.is_unsent());
    assert!(conn.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_dropped_futures_leave_full_capacity_after_late_responses() {
    // Every reply comes 100 ms late; callers give up after 1 ms (a margin that
    // holds on a loaded machine: a caller must not see its reply first).
    let server = start_scripted(|_, _| Action::Echo(Duration::from_millis(100))).await;
    // Late responses free every slot well before the 30 s quarantine.
    let conn = abandon_10k_until_idle(server.addr, Duration::from_secs(30)).await;
    let stats = conn.stats();
    assert_eq!(stats.responses, 0, "no late response delivered");
    assert_eq!(stats.late + stats.abandoned_unwritten, 10_000, "{stats:?}");
    assert_full_capacity(&conn).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_dropped_futures_to_a_silent_server_free_capacity_after_quarantine() {
    let server = start_scripted(|_, _| Action::Ignore).await;
    let conn = abandon_10k_until_idle(server.addr, Duration::from_millis(100)).await;
    let written = conn.stats().written;
    assert!(written > 0);
    assert_eq!(
        server.counters.requests.load(Ordering::SeqCst) as u64,
        written,
        "only written requests reached the server"
    );
    assert_eq!(conn.stats().quarantined, 0);
    // The whole window is usable again at once.
    reserve_whole_window(&conn).await;
}

/// Sends `n` requests one after the other, giving up on each after 5 ms.
async fn abandon_after_5ms(conn: &mut Connection, n: usize) {
    for i in 0..n {
        let fut = conn
            .ready()
            .await
            .expect("ready")
            .call(Bytes::from(format!("{i}")));
        let _ = tokio::time::timeout(Duration::from_millis(5), fut).await;
    }
}

/// Connects with a 512 window and `quarantine`, abandons 10,000 requests after
/// 1 ms each ([`abandon_10k`]) and waits until the window is free again.
async fn abandon_10k_until_idle(addr: std::net::SocketAddr, quarantine: Duration) -> Connection {
    let config = ConnectionConfig::new()
        .max_in_flight(512)
        .quarantine(quarantine)
        .held_tag_limit(16_384);
    let conn = connect(addr, config).await;
    abandon_10k(&conn, Duration::from_millis(1)).await;
    wait_until_idle(&conn).await;
    conn
}

/// Sends 10,000 requests from 100 concurrent callers, each of which gives up
/// after `patience`, and checks every caller returns at once.
async fn abandon_10k(conn: &Connection, patience: Duration) {
    // "At once" within 1 s beyond the runtime's own lag: 100 callers on a
    // starved machine may each wait that long for their turn, while a caller
    // left waiting for its (never coming) reply would never return.
    let lag = std::sync::Arc::new(anet_tests::LagProbe::start());
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..100 {
        let mut conn = conn.clone();
        let lag = lag.clone();
        tasks.spawn(async move {
            for i in 0..100 {
                let payload = Bytes::from(format!("{worker}-{i}"));
                let fut = conn.ready().await.expect("ready").call(payload);
                let lag_before = lag.total();
                let gave_up = tokio::time::Instant::now();
                let result = tokio::time::timeout(patience, fut).await;
                assert!(result.is_err(), "no reply comes that fast");
                let excused = lag.total() - lag_before;
                assert!(
                    gave_up.elapsed() < Duration::from_secs(1) + excused,
                    "caller returns at once: {:?} ({excused:?} of runtime lag)",
                    gave_up.elapsed()
                );
            }
        });
    }
    tokio::time::timeout(LIMIT, tasks.join_all())
        .await
        .expect("abandoning never blocks for long");
}

/// Waits until nothing holds the connection's window (in flight or quarantined),
/// as the driver's published counters show too (they follow the window by up
/// to one pass of the driver).
async fn wait_until_idle(conn: &Connection) {
    assert!(
        eventually(LIMIT, || {
            let stats = conn.stats();
            stats.in_flight == 0 && stats.quarantined == 0
        })
        .await,
        "{:?}",
        conn.stats()
    );
}

/// Reserves every unit of the window at once (each on its own handle), failing
/// if any is not free within a second.
async fn reserve_whole_window(conn: &Connection) -> Vec<Connection> {
    let mut reserved = Vec::with_capacity(conn.max_in_flight());
    for _ in 0..conn.max_in_flight() {
        let mut c = conn.clone();
        tokio::time::timeout(Duration::from_secs(1), c.ready())
            .await
            .expect("window has room")
            .expect("ready");
        reserved.push(c);
    }
    reserved
}

/// Proves the connection takes `max_in_flight` concurrent requests again, by
/// sending that many to an echo server.
async fn assert_full_capacity(conn: &Connection) {
    let mut ready = reserve_whole_window(conn).await;
    let futures: Vec<_> = ready
        .iter_mut()
        .enumerate()
        .map(|(i, c)| c.call(Bytes::from(format!("again-{i}"))))
        .collect();
    for (i, fut) in futures.into_iter().enumerate() {
        assert_eq!(
            fut.await.expect("answered"),
            format!("again-{i}").as_bytes()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_response_after_its_quarantine_is_dropped_not_delivered() {
    let mut server = ManualServer::bind().await;
    // A window of one request; the first one's tag stays held after its
    // quarantine, so the second request gets another.
    let config = ConnectionConfig::new()
        .max_in_flight(1)
        .quarantine(Duration::from_millis(50))
        .held_tag_limit(2);
    let addr = server.addr;
    let (conn, mut peer) = tokio::join!(connect(addr, config), server.accept());

    let mut timed = tower::ServiceBuilder::new()
        .timeout(Duration::from_millis(100))
        .service(conn.clone());
    let first = ready_call(&mut timed, b"first").await;
    let old = peer.recv().await;
    assert_eq!(old.payload, "first");
    let err = first.await.expect_err("times out");
    assert_eq!(Error::from_boxed(err).kind(), Kind::Timeout);

    // After the quarantine the window unit is back; the tag is still held.
    wait_until_idle(&conn).await;
    let mut conn2 = conn.clone();
    let second = ready_call(&mut conn2, b"second").await;
    let new = peer.recv().await;
    assert_ne!(old.tag, new.tag, "a held tag is not issued again");

    // The old response arrives now: it must not complete the second request.
    peer.reply(&old, b"first").await;
    assert!(eventually(LIMIT, || conn.stats().late == 1).await);
    assert_eq!(conn.stats().held_tags, 0, "the late answer freed its tag");
    peer.reply(&new, b"second").await;
    assert_eq!(second.await.expect("answered"), "second");
    assert!(eventually(LIMIT, || conn.stats().responses == 1).await);
}

/// A dropped request gives its answer's cell back at once, and the next call
/// on the connection takes that very cell while the driver still holds the
/// dropped request (written, unanswered, not yet swept into quarantine). Its
/// late answer must be dropped, never written into the next caller's cell.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_answer_never_reaches_the_next_occupant_of_its_cell() {
    let mut server = ManualServer::bind().await;
    let config = ConnectionConfig::new().max_in_flight(2);
    let addr = server.addr;
    let (mut conn, mut peer) = tokio::join!(connect(addr, config), server.accept());

    for round in 0..50 {
        let dropped = ready_call(&mut conn, b"dropped").await;
        let old = peer.recv().await;
        assert_eq!(old.payload, "dropped");
        drop(dropped);
        let next = ready_call(&mut conn, b"next").await;
        let new = peer.recv().await;
        assert_eq!(new.payload, "next");
        // The dropped request's answer first, then the next one's.
        peer.reply(&old, b"answer to the dropped request").await;
        peer.reply(&new, b"answer to the next request").await;
        assert_eq!(
            next.await.expect("answered"),
            "answer to the next request",
            "round {round}"
        );
    }
    // (The driver publishes its counters at the end of a pass.)
    let counted = eventually(LIMIT, || {
        let stats = conn.stats();
        stats.late == 50 && stats.responses == 50
    })
    .await;
    assert!(counted, "{:?}", conn.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantined_tags_count_against_the_window() {
    let server = start_scripted(|_, _| Action::Ignore).await;
    let config = ConnectionConfig::new()
        .max_in_flight(8)
        // Long beside the 150 ms look below, so a slow abandon on a loaded
        // machine cannot let the quarantine pass before it.
        .quarantine(Duration::from_secs(2))
        .held_tag_limit(64);
    let mut conn = connect(server.addr, config).await;
    abandon_after_5ms(&mut conn, 8).await;
    // All 8 are abandoned but quarantined: the 9th must wait.
    let waited = tokio::time::timeout(Duration::from_millis(150), conn.ready()).await;
    assert!(waited.is_err(), "quarantined tags still occupy the window");
    assert_eq!(server.counters.requests.load(Ordering::SeqCst), 8);
    // Once the quarantine passes, the window opens again.
    tokio::time::timeout(Duration::from_secs(5), conn.ready())
        .await
        .expect("window reopens after quarantine")
        .expect("ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_window_abandoned_unanswered_retires_the_connection() {
    let server = start_scripted(|_, _| Action::Ignore).await;
    let config = ConnectionConfig::new()
        .max_in_flight(4)
        .quarantine(Duration::from_secs(30))
        .close_grace(Duration::from_millis(200));
    let mut conn = connect(server.addr, config).await;
    abandon_after_5ms(&mut conn, 4).await;
    let err = tokio::time::timeout(Duration::from_secs(30), conn.ready())
        .await
        .expect("a retired connection fails readiness instead of hanging")
        .expect_err("retired");
    // Refused as never written (a planned retirement: a pool does not count it
    // as a failure of the peer, and a request that raced it is retried).
    assert_eq!(err.kind(), Kind::NotSent);
    assert!(err.is_unsent());
    let why = std::error::Error::source(&err).map(ToString::to_string);
    assert!(
        why.as_deref().is_some_and(|w| w.contains("retired")),
        "{why:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("driver finishes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tags_are_dropped_and_counted_and_the_connection_keeps_working() {
    let mut server = ManualServer::bind().await;
    let addr = server.addr;
    let (mut conn, mut peer) =
        tokio::join!(connect(addr, ConnectionConfig::new()), server.accept());
    let fut = ready_call(&mut conn, b"real").await;
    let req = peer.recv().await;
    let mut flood = Vec::new();
    for i in 0..1000u32 {
        flood.extend_from_slice(&encode(&Tag::from_u32(0xdead_0000 + i), b"forged"));
    }
    peer.send_raw(&flood).await;
    peer.reply(&req, b"real").await;
    assert_eq!(fut.await.expect("answered"), "real");
    assert!(eventually(LIMIT, || conn.stats().unknown_tags == 1000).await);
    assert_eq!(request_via(&mut conn, &mut peer, b"after").await, "after");
}

async fn request_via(
    conn: &mut Connection,
    peer: &mut anet_tests::ManualConn,
    payload: &'static [u8],
) -> Bytes {
    let fut = conn
        .ready()
        .await
        .expect("ready")
        .call(Bytes::from_static(payload));
    let req = peer.recv().await;
    peer.reply(&req, &req.payload.clone()).await;
    fut.await.expect("answered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_shorter_than_the_tag_closes_the_connection_with_protocol_errors() {
    let mut server = ManualServer::bind().await;
    let addr = server.addr;
    let (conn, mut peer) = tokio::join!(connect(addr, ConnectionConfig::new()), server.accept());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..5 {
        let mut c = conn.clone();
        tasks.spawn(async move { request(&mut c, format!("{i}")).await });
    }
    for _ in 0..5 {
        peer.recv().await;
    }
    peer.send_raw(&[0x00, 0x02, 0xab, 0xcd]).await;
    let results = tokio::time::timeout(Duration::from_secs(10), tasks.join_all())
        .await
        .expect("no hang");
    for r in results {
        assert_eq!(r.expect_err("protocol").kind(), Kind::Protocol);
    }
    assert!(peer.client_closed(Duration::from_secs(5)).await);
    let mut conn = conn;
    assert!(conn.ready().await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_length_closes_the_connection_with_protocol_errors() {
    let mut server = ManualServer::bind().await;
    let addr = server.addr;
    let config =
        ConnectionConfig::new().frame(anet_proto::FrameCodec::builder().max_frame_length(1024));
    let (mut conn, mut peer) = tokio::join!(connect(addr, config), server.accept());
    let fut = ready_call(&mut conn, b"x").await;
    peer.recv().await;
    peer.send_raw(&[0xff, 0xff, 0, 0, 0, 0]).await;
    let err = tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("no hang")
        .expect_err("protocol");
    assert_eq!(err.kind(), Kind::Protocol, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifth_poll_ready_waits_for_a_response_when_max_in_flight_is_4() {
    let config = ConnectionConfig::new().max_in_flight(4);
    let mut server = ManualServer::bind().await;
    let addr = server.addr;
    let (conn, mut peer) = tokio::join!(connect(addr, config), server.accept());
    let mut futures = Vec::new();
    for i in 0..4 {
        let mut c = conn.clone();
        futures.push(
            c.ready()
                .await
                .expect("ready")
                .call(Bytes::from(format!("{i}"))),
        );
    }
    let mut first = None;
    for _ in 0..4 {
        let req = peer.recv().await;
        first.get_or_insert(req);
    }
    let mut fifth = conn.clone();
    assert!(
        not_ready_within(&mut fifth, Duration::from_millis(200)).await,
        "fifth request must wait"
    );
    let first = first.expect("a request");
    peer.reply(&first, &first.payload.clone()).await;
    tokio::time::timeout(Duration::from_secs(5), fifth.ready())
        .await
        .expect("ready after a response")
        .expect("ready");
    drop(futures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_lets_in_flight_requests_finish_and_refuses_new_ones() {
    let server = start_scripted(|_, _| Action::Echo(Duration::from_millis(100))).await;
    let mut conn = connect(server.addr, ConnectionConfig::new()).await;
    let fut = ready_call(&mut conn, b"in flight").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    conn.close();
    let err = conn.ready().await.expect_err("closed");
    assert_eq!(err.kind(), Kind::Closed);
    assert!(err.is_unsent());
    assert_eq!(fut.await.expect("finished within grace"), "in flight");
    tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .expect("driver done");
}

/// Paused time, over an in-memory pipe whose server end never answers.
#[tokio::test(start_paused = true)]
async fn close_fails_requests_still_waiting_after_the_grace_with_closed() {
    let (client_io, _silent_server) = tokio::io::duplex(64 * 1024);
    let config = ConnectionConfig::new().close_grace(Duration::from_millis(200));
    let mut conn = Connection::new(client_io, config);
    let fut = ready_call(&mut conn, b"never").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = tokio::time::Instant::now();
    drop(conn); // the last handle: closes gracefully
    let err = tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .expect("no hang")
        .expect_err("grace elapsed");
    assert_eq!(err.kind(), Kind::Closed);
    assert!(!err.is_unsent(), "it was written");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed <= Duration::from_millis(210),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn queued_requests_fail_as_not_sent_when_the_transport_dies_first() {
    // An in-memory transport with a tiny pipe nobody reads: writes stall, so later
    // requests stay queued, unwritten.
    let (client_io, server_io) = tokio::io::duplex(16);
    let config = ConnectionConfig::new().write_buffer(1);
    let conn = Connection::new(client_io, config);
    let mut futures = Vec::new();
    for i in 0..20 {
        let mut c = conn.clone();
        futures.push(
            c.ready()
                .await
                .expect("ready")
                .call(Bytes::from(vec![i as u8; 64])),
        );
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(server_io);
    let mut not_sent = 0;
    for fut in futures {
        let err = tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .expect("no hang")
            .expect_err("transport died");
        match err.kind() {
            Kind::NotSent => {
                assert!(err.is_unsent());
                not_sent += 1;
            }
            Kind::ConnectionLost => assert!(!err.is_unsent()),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        not_sent >= 15,
        "most requests were never written: {not_sent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_request_is_refused_without_touching_the_connection() {
    let server = start_echo().await;
    let mut conn = connect(server.addr, ConnectionConfig::new()).await;
    let err = request(&mut conn, vec![0u8; 70_000])
        .await
        .expect_err("too large");
    assert_eq!(err.kind(), Kind::InvalidRequest);
    assert!(err.is_unsent());
    assert_eq!(request(&mut conn, "ok").await.expect("still works"), "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_closed_port_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let err = Connector::new().connect(addr).await.expect_err("refused");
    assert_eq!(err.kind(), Kind::Connect);
    assert!(err.is_unsent());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ascii_header_tags_work_end_to_end() {
    use anet_proto::{FrameCodec, TagFormat};
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let frame = FrameCodec::builder().tag_format(TagFormat::ascii(4));
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let mut framed = frame.new_framed(stream);
        while let Some(Ok(mut f)) = framed.next().await {
            assert!(f.tag.as_bytes().iter().all(u8::is_ascii_digit));
            f.payload = Bytes::from([&f.payload[..], b"-ok"].concat());
            framed.send(f).await.expect("send");
        }
    });
    let config = ConnectionConfig::new().frame(frame).max_in_flight(64);
    let conn = connect(addr, config).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..500 {
        let mut c = conn.clone();
        tasks.spawn(async move {
            let r = request(&mut c, format!("NC{i}")).await.expect("answered");
            assert_eq!(r, format!("NC{i}-ok").as_bytes());
        });
    }
    tokio::time::timeout(LIMIT, tasks.join_all())
        .await
        .expect("done");
}

/// Requests that end without being written (dropped before the driver took
/// them, or refused as oversize), and room reserved by `poll_ready` on a handle
/// dropped without a call, give their unit of the window back: with a window of
/// 4, a thousand of them in a row never leave the connection full.
#[tokio::test(flavor = "current_thread")]
async fn requests_ended_unwritten_give_their_window_back() {
    let server = start_echo().await;
    let conn = connect(server.addr, ConnectionConfig::new().max_in_flight(4)).await;
    for i in 0..1200 {
        let mut handle = conn.clone();
        let ready = tokio::time::timeout(Duration::from_secs(5), handle.ready())
            .await
            .unwrap_or_else(|_| panic!("window leaked after {i} unwritten requests"))
            .expect("ready");
        match i % 3 {
            // Dropped before the driver ran (this runtime has one thread).
            0 => drop(ready.call(Bytes::from_static(b"never written"))),
            1 => {
                let err = ready
                    .call(Bytes::from(vec![0u8; 70_000]))
                    .await
                    .expect_err("too large");
                assert_eq!(err.kind(), Kind::InvalidRequest);
            }
            // Reserved, then the handle goes without calling.
            _ => drop(handle),
        }
        if i % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    wait_until_idle(&conn).await;
    let stats = conn.stats();
    assert_eq!(stats.abandoned_unwritten, 400, "{stats:?}");
    assert_eq!(stats.written, 0, "{stats:?}");
    assert_full_capacity(&conn).await;
}

/// A response whose length header arrives and whose body never does stalls the
/// connection: the read timeout closes it, failing the waiting request, even
/// though the header left nothing in the read buffer.
/// Paused time, over an in-memory pipe.
#[tokio::test(start_paused = true)]
async fn a_response_stalled_right_after_its_length_header_hits_the_read_timeout() {
    let (client_io, mut peer) = tokio::io::duplex(64 * 1024);
    let config = ConnectionConfig::new().read_timeout(Some(Duration::from_millis(300)));
    let mut conn = Connection::new(client_io, config);
    let serve = tokio::spawn(async move {
        let codec = anet_proto::FrameCodec::new();
        let _request = anet_proto::read_frame(&mut peer, &codec).await;
        // A 9-byte frame is announced; nothing more is ever sent.
        tokio::io::AsyncWriteExt::write_all(&mut peer, &[0x00, 0x09])
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(peer);
    });
    let started = tokio::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(5), request(&mut conn, "stalled"))
        .await
        .expect("the read timeout ends the request")
        .expect_err("no response");
    // The connection is given up as stalled: its requests are lost with it.
    assert_eq!(err.kind(), Kind::ConnectionLost, "{err}");
    assert!(!err.is_unsent());
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed <= Duration::from_millis(310),
        "{elapsed:?}"
    );
    assert!(conn.is_closed());
    serve.abort();
}

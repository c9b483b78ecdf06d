//! The anet server over real loopback TCP: concurrency, isolation of bad
//! connections, timeouts, limits, shutdown and panics.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anet::server::{Builder, OnError, Request, Server};
use anet_proto::Tag;
use anet_tests::{Handler, RawClient, Rng, echo, start_server};
use bytes::Bytes;
use tower::service_fn;

/// A handler that sleeps 0..2 ms at random (seeded by the payload) and answers
/// "re:" + payload.
fn random_delay() -> impl Handler {
    service_fn(|req: Request| async move {
        let seed = req
            .payload()
            .iter()
            .fold(7u64, |a, &b| a * 31 + u64::from(b));
        let delay = Rng::new(seed).below(2000);
        tokio::time::sleep(Duration::from_micros(delay)).await;
        Ok::<_, Infallible>(Bytes::from([b"re:", &req.payload()[..]].concat()))
    })
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_anet_client_bytes_get_byte_exact_echo() {
    let server = start_server(Server::builder(), echo()).await;
    let mut client = RawClient::connect(server.addr).await;
    client
        .send_raw(&[
            0x00, 0x09, 0x01, 0x02, 0x03, 0x04, b'h', b'e', b'l', b'l', b'o',
        ])
        .await;
    let mut buf = [0u8; 11];
    tokio::io::AsyncReadExt::read_exact(client.framed.get_mut(), &mut buf)
        .await
        .expect("read");
    assert_eq!(
        buf,
        [
            0x00, 0x09, 0x01, 0x02, 0x03, 0x04, b'h', b'e', b'l', b'l', b'o'
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_pipelined_requests_on_8_connections_come_back_out_of_order_each_with_its_payload()
 {
    let server = start_server(Server::builder(), random_delay()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for conn in 0..8u32 {
        let addr = server.addr;
        tasks.spawn(async move {
            let mut client = RawClient::connect(addr).await;
            let (mut sink, mut stream) = futures_util::StreamExt::split(client.framed);
            let writer = tokio::spawn(async move {
                use futures_util::SinkExt;
                for i in 0..1250u32 {
                    let tag = conn * 100_000 + i;
                    let frame = anet_proto::Frame::new(
                        anet_proto::Tag::from_u32(tag),
                        format!("c{conn}-r{i}"),
                    );
                    sink.feed(frame).await.expect("send");
                }
                sink.flush().await.expect("flush");
                sink
            });
            let mut order = Vec::new();
            for _ in 0..1250 {
                let frame = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut stream))
                    .await
                    .expect("response in time")
                    .expect("open")
                    .expect("valid");
                let tag = u32::from_be_bytes(frame.tag.as_bytes().try_into().expect("4 bytes"));
                let i = tag - conn * 100_000;
                assert_eq!(
                    frame.payload,
                    format!("re:c{conn}-r{i}").as_bytes(),
                    "tag {tag}"
                );
                order.push(i);
            }
            let _sink = writer.await.expect("writer");
            client = RawClient {
                framed: _sink.reunite(stream).expect("reunite"),
            };
            drop(client);
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(
                sorted,
                (0..1250).collect::<Vec<_>>(),
                "every tag answered once"
            );
            order != sorted
        });
    }
    let reordered = tasks.join_all().await;
    assert!(
        reordered.iter().any(|r| *r),
        "responses came back out of order"
    );
    assert_eq!(server.stats.snapshot().requests, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_frame_closes_only_its_own_connection() {
    let server = start_server(Server::builder(), echo()).await;
    let mut good = RawClient::connect(server.addr).await;
    let mut bad = RawClient::connect(server.addr).await;
    good.send(1, b"before").await;
    assert_eq!(good.recv(WAIT).await.expect("answer").payload, "before");
    bad.send_raw(&[0x00, 0x02, 0xab, 0xcd]).await;
    assert!(bad.closed_within(WAIT).await, "bad connection closed");
    good.send(2, b"after").await;
    assert_eq!(good.recv(WAIT).await.expect("answer").payload, "after");
    assert_eq!(server.stats.snapshot().protocol_errors, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_length_closes_only_its_own_connection() {
    let config = Server::builder().frame(anet_proto::FrameCodec::builder().max_frame_length(1000));
    let server = start_server(config, echo()).await;
    let mut good = RawClient::connect(server.addr).await;
    let mut bad = RawClient::connect(server.addr).await;
    bad.send_raw(&[0x03, 0xe9, 0, 0, 0, 1]).await; // 1001 > 1000
    assert!(bad.closed_within(WAIT).await, "bad connection closed");
    good.send(2, b"still here").await;
    assert_eq!(good.recv(WAIT).await.expect("answer").payload, "still here");
}

/// Requests answered earlier in the same read leave room to reuse for the
/// next frame's charge: that shortcut must still refuse a frame over the
/// maximum (here 20 bytes against 16, after frames of 8 and 16 answered in
/// the same read, which leave 24 bytes of room).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_frame_after_answered_ones_in_the_same_read_is_refused() {
    let config = Server::builder().frame(anet_proto::FrameCodec::builder().max_frame_length(16));
    let server = start_server(config, echo()).await;
    let mut client = RawClient::connect(server.addr).await;
    let mut bytes = Vec::new();
    for (tag, payload) in [
        (1u32, &b"four"[..]),
        (2, b"twelve bytes"),
        (3, b"sixteen bytes..!"),
    ] {
        bytes.extend_from_slice(&(4 + payload.len() as u16).to_be_bytes());
        bytes.extend_from_slice(&tag.to_be_bytes());
        bytes.extend_from_slice(payload);
    }
    client.send_raw(&bytes).await;
    // The connection closes on the protocol error (the answers of the same
    // read may or may not be flushed first); the oversize frame is never
    // served.
    while let Some(frame) = client.recv(WAIT).await {
        assert_ne!(
            frame.payload, "sixteen bytes..!",
            "the oversize frame was served"
        );
    }
    assert_eq!(server.stats.snapshot().protocol_errors, 1);
}

/// Sends `bytes` (the start of a frame) and stays silent: the server must close
/// the connection on its 300 ms read timeout, not before.
async fn assert_stalled_frame_closed(bytes: &[u8]) {
    let config = Server::builder()
        .read_timeout(Some(Duration::from_millis(300)))
        .idle_timeout(None);
    let server = start_server(config, echo()).await;
    let mut slow = RawClient::connect(server.addr).await;
    let started = tokio::time::Instant::now();
    slow.send_raw(bytes).await;
    assert!(slow.closed_within(WAIT).await, "stalled frame closed");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before the timeout"
    );
    assert_eq!(server.stats.snapshot().timeouts, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_frame_then_silence_is_closed_after_the_read_timeout() {
    assert_stalled_frame_closed(&[0x00, 0x20, 0, 0]).await; // announces 32 bytes, sends 2
}

/// Only a length header, then silence: the server is inside a frame although
/// no byte of it is buffered, so the read timeout (not the idle timeout) applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_length_header_then_silence_is_closed_after_the_read_timeout() {
    assert_stalled_frame_closed(&[0x00, 0x20]).await; // announces 32 bytes, sends none
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_frame_is_closed_after_the_read_timeout() {
    let config = Server::builder()
        .read_timeout(Some(Duration::from_millis(400)))
        .idle_timeout(None);
    let server = start_server(config, echo()).await;
    let mut slow = RawClient::connect(server.addr).await;
    slow.send_raw(&[0x00, 0x40]).await;
    let started = tokio::time::Instant::now();
    // One byte every 50 ms: never silent for long, never finishing the frame.
    for _ in 0..40 {
        if slow.framed.get_mut().try_write(&[0]).is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    assert!(slow.closed_within(WAIT).await, "trickle closed");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let config = Server::builder().idle_timeout(Some(Duration::from_millis(300)));
    let server = start_server(config, echo()).await;
    let mut idle = RawClient::connect(server.addr).await;
    idle.send(1, b"once").await;
    assert!(idle.recv(WAIT).await.is_some());
    let started = tokio::time::Instant::now();
    assert!(idle.closed_within(WAIT).await, "idle connection closed");
    assert!(started.elapsed() >= Duration::from_millis(250));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_connection_is_not_closed_by_the_idle_timeout() {
    let config = Server::builder().idle_timeout(Some(Duration::from_millis(200)));
    let slow = service_fn(|req: Request| async move {
        tokio::time::sleep(Duration::from_millis(600)).await;
        Ok::<_, Infallible>(req.into_payload())
    });
    let server = start_server(config, slow).await;
    let mut client = RawClient::connect(server.addr).await;
    client.send(1, b"slow").await;
    assert_eq!(client.recv(WAIT).await.expect("answered").payload, "slow");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_under_200_attempts() {
    // The refusal path: no eviction, however long 200 connects take on a loaded
    // machine (eviction has its own tests in `admission.rs`).
    let config = Server::builder().max_connections(10).evict_idle_after(None);
    let server = start_server(config, echo()).await;
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(RawClient::connect(server.addr).await);
    }
    let mut served = 0;
    for (i, client) in clients.iter_mut().enumerate() {
        client.send(i as u32, b"hi").await;
    }
    for client in clients.iter_mut() {
        if client.recv(WAIT).await.is_some() {
            served += 1;
        }
    }
    let stats = server.stats.snapshot();
    assert_eq!(served, 10, "{stats:?}");
    assert_eq!(stats.connections_open, 10);
    assert_eq!(stats.connections_rejected, 190);
    // Once served connections leave, new ones are admitted again.
    drop(clients);
    assert!(anet_tests::eventually(WAIT, || server.stats.snapshot().connections_open == 0).await);
    let mut late = RawClient::connect(server.addr).await;
    late.send(1, b"room again").await;
    assert_eq!(late.recv(WAIT).await.expect("served").payload, "room again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_requests_in_flight_refuses_new_connections_and_completes() {
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let slow = service_fn(move |req: Request| {
        s.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, Infallible>(req.into_payload())
        }
    });
    let config = Server::builder().shutdown_grace(Duration::from_secs(5));
    let mut server = start_server(config, slow).await;
    let mut client = RawClient::connect(server.addr).await;
    for i in 0..10 {
        client.send(i, format!("r{i}").as_bytes()).await;
    }
    assert!(anet_tests::eventually(WAIT, || started.load(Ordering::SeqCst) == 10).await);
    let t0 = tokio::time::Instant::now();
    let serving = server.shutdown();
    for _ in 0..10 {
        let frame = client.recv(WAIT).await.expect("in-flight request answered");
        assert!(frame.payload.starts_with(b"r"));
    }
    tokio::time::timeout(WAIT, serving)
        .await
        .expect("server future completes")
        .expect("join")
        .expect("serve");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "well within the grace"
    );
    assert!(client.closed_within(WAIT).await);
    assert!(
        tokio::net::TcpStream::connect(server.addr).await.is_err(),
        "new connections refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_still_busy_after_the_grace() {
    let stuck = service_fn(|_req: Request| async move {
        std::future::pending::<()>().await;
        Ok::<_, Infallible>(Bytes::new())
    });
    let config = Server::builder().shutdown_grace(Duration::from_millis(300));
    let mut server = start_server(config, stuck).await;
    let mut client = RawClient::connect(server.addr).await;
    client.send(1, b"forever").await;
    assert!(anet_tests::eventually(WAIT, || server.stats.snapshot().requests == 1).await);
    let t0 = tokio::time::Instant::now();
    tokio::time::timeout(WAIT, server.shutdown())
        .await
        .expect("completes after the grace")
        .expect("join")
        .expect("serve");
    assert!(t0.elapsed() >= Duration::from_millis(250));
    assert!(client.closed_within(WAIT).await);
}

fn panicky() -> impl Handler {
    service_fn(|req: Request| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if req.payload() == "panic" {
            panic!("handler bug");
        }
        Ok::<_, Infallible>(req.into_payload())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_affects_only_its_own_request() {
    let server = start_server(Server::builder(), panicky()).await;
    let mut a = RawClient::connect(server.addr).await;
    let mut b = RawClient::connect(server.addr).await;
    a.send(1, b"one").await;
    a.send(2, b"panic").await;
    a.send(3, b"three").await;
    b.send(9, b"other").await;
    let mut tags = vec![
        a.recv(WAIT).await.expect("answer"),
        a.recv(WAIT).await.expect("answer"),
    ]
    .into_iter()
    .map(|f| f.tag)
    .collect::<Vec<_>>();
    tags.sort();
    assert_eq!(
        tags,
        [anet_proto::Tag::from_u32(1), anet_proto::Tag::from_u32(3)]
    );
    assert_eq!(b.recv(WAIT).await.expect("answer").payload, "other");
    // The connection is still served after the panic.
    a.send(4, b"four").await;
    assert_eq!(a.recv(WAIT).await.expect("answer").payload, "four");
    assert_eq!(server.stats.snapshot().panics, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_error_close_closes_the_connection_of_a_failed_request() {
    let failing = anet_tests::fails_on_fail();
    let config = Server::builder().on_error(OnError::Close);
    let server = start_server(config, failing).await;
    let mut a = RawClient::connect(server.addr).await;
    a.send(1, b"ok").await;
    assert_eq!(a.recv(WAIT).await.expect("answer").payload, "ok");
    a.send(2, b"fail").await;
    assert!(a.closed_within(WAIT).await);
    assert_eq!(server.stats.snapshot().service_errors, 1);
    let mut b = RawClient::connect(server.addr).await;
    b.send(3, b"fine").await;
    assert_eq!(b.recv(WAIT).await.expect("answer").payload, "fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_limit_per_connection_stops_reading() {
    let current = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (c, p) = (current.clone(), peak.clone());
    let slow = service_fn(move |req: Request| {
        let (c, p) = (c.clone(), p.clone());
        async move {
            let now = c.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(50)).await;
            c.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, Infallible>(req.into_payload())
        }
    });
    let config = Server::builder().max_in_flight_per_connection(4);
    let server = start_server(config, slow).await;
    let mut client = RawClient::connect(server.addr).await;
    for i in 0..20 {
        client.send(i, b"x").await;
    }
    for _ in 0..20 {
        client.recv(WAIT).await.expect("answered");
    }
    assert_eq!(peak.load(Ordering::SeqCst), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_after_the_write_timeout() {
    let big =
        service_fn(
            |_req: Request| async move { Ok::<_, Infallible>(Bytes::from(vec![0u8; 60_000])) },
        );
    let config = Server::builder()
        .write_timeout(Some(Duration::from_millis(300)))
        .max_in_flight_per_connection(1024);
    let server = start_server(config, big).await;
    let mut client = RawClient::connect(server.addr).await;
    // Ask for far more than socket buffers hold, and never read.
    for i in 0..400 {
        client.send(i, b"give").await;
    }
    assert!(
        anet_tests::eventually(WAIT, || server.stats.snapshot().timeouts == 1).await,
        "{:?}",
        server.stats.snapshot()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_connection_serves_any_transport() {
    let (client_io, server_io) = tokio::io::duplex(1024);
    tokio::spawn(async move {
        Builder::new()
            .serve_connection(server_io, None, echo())
            .await;
    });
    let mut framed = anet_proto::FrameCodec::builder().new_framed(client_io);
    use futures_util::{SinkExt, StreamExt};
    framed
        .send(anet_proto::Frame::new(
            anet_proto::Tag::from_u32(5),
            "duplex",
        ))
        .await
        .expect("send");
    let frame = framed.next().await.expect("open").expect("valid");
    assert_eq!(frame.tag, anet_proto::Tag::from_u32(5));
    assert_eq!(frame.payload, "duplex");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_make_service_gives_each_connection_its_own_service() {
    // Each connection's service numbers that connection's requests from 1.
    let make = service_fn(|peer: std::net::SocketAddr| async move {
        let seen = Arc::new(AtomicUsize::new(0));
        Ok::<_, Infallible>(service_fn(move |req: Request| {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            assert_eq!(req.peer_addr(), Some(peer));
            async move { Ok::<_, Infallible>(Bytes::from(format!("{n}"))) }
        }))
    });
    let server = anet_tests::bind_local(Server::builder()).await;
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_make_with_shutdown(make, async {
        let _ = stopped.await;
    }));
    let mut a = RawClient::connect(addr).await;
    let mut b = RawClient::connect(addr).await;
    for expected in ["1", "2", "3"] {
        a.send(1, b"x").await;
        assert_eq!(a.recv(WAIT).await.expect("answer").payload, expected);
    }
    b.send(1, b"x").await;
    assert_eq!(b.recv(WAIT).await.expect("answer").payload, "1");
    let _ = stop.send(());
    serving.await.expect("join").expect("serve");
}

/// A client that sends its requests and then closes its sending side (as `nc -N`
/// or a batch tool does) still gets every answer before the server closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_after_its_requests_gets_every_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let slow = service_fn(|req: Request| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, Infallible>(req.into_payload())
    });
    let server = start_server(Server::builder(), slow).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let mut sent = Vec::new();
    for tag in 0u32..3 {
        let payload = format!("req-{tag}");
        let body_len = (4 + payload.len()) as u16;
        sent.extend_from_slice(&body_len.to_be_bytes());
        sent.extend_from_slice(&tag.to_be_bytes());
        sent.extend_from_slice(payload.as_bytes());
    }
    stream.write_all(&sent).await.expect("write");
    stream.shutdown().await.expect("half-close");
    let mut received = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut received))
        .await
        .expect("server closes after answering")
        .expect("read");
    // Same bytes (tags and payloads), possibly in another order: compare sorted frames.
    let frames = |mut bytes: &[u8]| {
        let mut out = Vec::new();
        while bytes.len() >= 2 {
            let len = u16::from_be_bytes([bytes[0], bytes[1]]) as usize;
            out.push(bytes[2..2 + len].to_vec());
            bytes = &bytes[2 + len..];
        }
        out.sort();
        out
    };
    assert_eq!(frames(&received), frames(&sent));
}

/// A MakeService that makes one service and is never ready again.
#[derive(Clone, Default)]
struct ReadyOnce {
    made: Arc<AtomicUsize>,
}

impl tower::Service<std::net::SocketAddr> for ReadyOnce {
    type Response = tower::util::BoxCloneSyncService<Request, Bytes, Infallible>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        if self.made.load(Ordering::SeqCst) == 0 {
            std::task::Poll::Ready(Ok(()))
        } else {
            std::task::Poll::Pending // and never woken
        }
    }

    fn call(&mut self, _peer: std::net::SocketAddr) -> Self::Future {
        self.made.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(tower::util::BoxCloneSyncService::new(echo())))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_within_its_grace_while_the_make_service_is_never_ready() {
    let server = Server::builder()
        .shutdown_grace(Duration::from_millis(500))
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(
        server.serve_make_with_shutdown(ReadyOnce::default(), async {
            let _ = stopped.await;
        }),
    );
    let mut served = RawClient::connect(addr).await;
    served.send(1, b"first").await;
    assert_eq!(served.recv(WAIT).await.expect("answer").payload, "first");
    // The next connection finds the make service not ready, for good.
    let _waiting = RawClient::connect(addr).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Connections already made are still served meanwhile.
    served.send(2, b"second").await;
    assert_eq!(served.recv(WAIT).await.expect("answer").payload, "second");
    let _ = stop.send(());
    let started = tokio::time::Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(10), serving).await;
    assert!(
        matches!(stopped, Ok(Ok(Ok(())))),
        "serve returned after the shutdown signal: {stopped:?}"
    );
    // The grace (0.5 s) plus a wide margin for a loaded machine.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Default widths (2-byte length, 4-byte binary tag): frames of every size
/// around the reader's thresholds (empty payloads, 1 KiB direct bodies, the
/// 4 KiB scratch and buffer), back to back and written in irregular chunks,
/// so that reads end anywhere: several whole frames and a partial one in one
/// read, frames taken by the cursor from the read buffer after a partial one
/// was kept. Each answer carries its own tag and payload, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_of_every_size_written_in_irregular_chunks_are_each_answered_once() {
    let sizes = [
        0usize, 1, 2, 3, 100, 1015, 1016, 1017, 1020, 1021, 4090, 4092, 4096, 5000, 0, 20_000, 7,
        65_531, 0, 12,
    ];
    let chunks = [1usize, 2, 3, 5, 700, 4095, 4097, 13, 6, 1021, 9000];
    for rotation in 0..3 {
        let server = start_server(Server::builder(), echo()).await;
        let mut client = RawClient::connect(server.addr).await;
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            let tag = (rotation << 16 | i) as u32;
            let payload: Vec<u8> = (0..*size).map(|j| (j * 13 + i) as u8).collect();
            stream.extend_from_slice(&anet_tests::encode(&Tag::from_u32(tag), &payload));
            expected.push((tag, payload));
        }
        let mut at = 0;
        for chunk in chunks.iter().cycle().skip(rotation) {
            let end = (at + chunk).min(stream.len());
            client.send_raw(&stream[at..end]).await;
            at = end;
            if at == stream.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut answered = Vec::new();
        for _ in 0..sizes.len() {
            let frame = client.recv(WAIT).await.expect("answer");
            let tag = u32::from_be_bytes(frame.tag.as_bytes().try_into().expect("4-byte tag"));
            answered.push((tag, frame.payload.to_vec()));
        }
        answered.sort();
        assert_eq!(answered, expected, "rotation {rotation}");
        let stats = server.stats.snapshot();
        assert_eq!(stats.protocol_errors, 0, "{stats:?}");
    }
}

/// Tags are opaque to the server: two requests in flight under one tag (a
/// client reusing it too early) are each served and each answered under it, in
/// completion order (the slow one, sent first, is answered last).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sharing_a_tag_in_flight_are_each_answered_under_it_in_completion_order() {
    let slow_first = service_fn(|req: Request| async move {
        if req.payload() == "slow" {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok::<_, Infallible>(req.into_payload())
    });
    let server = start_server(Server::builder(), slow_first).await;
    let mut client = RawClient::connect(server.addr).await;
    client.send(7, b"slow").await;
    client.send(7, b"fast").await;
    client.send(7, b"").await;
    let mut answers = Vec::new();
    for _ in 0..3 {
        let frame = client.recv(WAIT).await.expect("answer");
        assert_eq!(frame.tag, Tag::from_u32(7));
        answers.push(frame.payload);
    }
    assert_eq!(answers.last().expect("three"), "slow", "{answers:?}");
    answers.sort();
    assert_eq!(answers, ["", "fast", "slow"]);
}

//! The server-wide budget over real loopback TCP: a full budget stops reading
//! and answers everything it read; a client holding nothing is answered while
//! others flood; a payload held by a handler keeps only its own bytes alive.
//! (Resident memory under floods: `memory_budget.rs`.)

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use anet::{
    client::Connector,
    server::{Request, Server},
};
use anet_proto::Tag;
use anet_tests::{RawClient, encode, start_server};
use bytes::{Bytes, BytesMut};
use tokio::{io::AsyncWriteExt, time::Instant};
use tower::{Service, ServiceExt, service_fn};

/// Answers every request after `delay`, echoing it.
fn slow_echo(
    delay: Duration,
) -> impl Service<
    Request,
    Response = Bytes,
    Error = Infallible,
    Future = impl Future<Output = Result<Bytes, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |req: Request| async move {
        tokio::time::sleep(delay).await;
        Ok::<_, Infallible>(req.into_payload())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_budget_stops_reading_and_answers_every_request() {
    const BUDGET: usize = 8 * 1024;
    const REQUESTS: u32 = 50;
    let config = Server::builder()
        .frame(anet_proto::Builder::new().max_frame_length(BUDGET))
        .max_in_flight_bytes(BUDGET)
        .max_in_flight_requests(6);
    let server = start_server(config, slow_echo(Duration::from_millis(50))).await;
    let stats = server.stats.clone();
    let sampling = tokio::spawn(async move {
        let (mut bytes, mut requests) = (0, 0);
        for _ in 0..400 {
            let s = stats.snapshot();
            bytes = s.budget_bytes_in_use.max(bytes);
            requests = s.budget_requests_in_use.max(requests);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (bytes, requests)
    });
    // Four connections each pipeline 50 requests of 1 KB at once.
    let mut clients = Vec::new();
    for c in 0..4u32 {
        let mut client = RawClient::connect(server.addr).await;
        let mut all = BytesMut::new();
        for i in 0..REQUESTS {
            all.extend_from_slice(&encode(&Tag::from_u32(c << 16 | i), &[c as u8; 1000]));
        }
        client.send_raw(&all).await;
        clients.push(client);
    }
    for (c, client) in clients.iter_mut().enumerate() {
        let mut tags = Vec::new();
        for _ in 0..REQUESTS {
            let frame = client
                .recv(Duration::from_secs(20))
                .await
                .expect("every request read is answered");
            assert_eq!(frame.payload, vec![c as u8; 1000]);
            tags.push(frame.tag);
        }
        assert_eq!(tags.len(), REQUESTS as usize);
    }
    let stats = server.stats.snapshot();
    assert_eq!(stats.requests, 4 * u64::from(REQUESTS));
    assert_eq!(stats.responses, stats.requests);
    assert!(stats.throttled > Duration::ZERO, "{stats:?}");
    let (bytes, requests) = sampling.await.expect("sampling");
    println!("budget in use at most {bytes} B, {requests} requests; {stats:?}");
    assert!(requests <= 6, "{requests} requests held with a limit of 6");
    assert!(
        bytes <= BUDGET as u64,
        "{bytes} B held with a budget of {BUDGET}"
    );
    assert!(
        anet_tests::eventually(Duration::from_secs(5), || {
            let s = server.stats.snapshot();
            s.budget_bytes_in_use == 0 && s.budget_requests_in_use == 0
        })
        .await
    );
}

/// Eighty connections keep a budget of eight maximum-size frames full at a
/// slow handler; a client that sends one small request at a time still gets
/// each answer within its deadline, because a connection holding nothing is
/// served before connections that hold some when room frees. Served in arrival
/// order, it would wait behind the eighty (80 / 8 rounds of 200 ms: 2 s).
///
/// The client starts once every flooder has been served (and so holds some
/// budget while it waits for more); a client arriving in the same instant as
/// the flooders is served in its turn among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holding_nothing_is_answered_while_others_flood() {
    const FLOODERS: u64 = 80;
    const HANDLER: Duration = Duration::from_millis(200);
    const DEADLINE: Duration = Duration::from_secs(1);
    let config = Server::builder().max_in_flight_bytes(8 * 65_535);
    let server = start_server(config, slow_echo(HANDLER)).await;
    let stop_at = Instant::now() + Duration::from_secs(6);
    let frame = encode(&Tag::from_u32(1), &vec![0x33; 65_531]);
    let mut flooders = tokio::task::JoinSet::new();
    for _ in 0..FLOODERS {
        let frame = frame.clone();
        let addr = server.addr;
        flooders.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (mut rd, mut wr) = stream.into_split();
            let reading = tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = tokio::io::AsyncReadExt::read(&mut rd, &mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
            while Instant::now() < stop_at {
                if wr.write_all(&frame).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
            let _ = reading.await;
        });
    }
    assert!(
        anet_tests::eventually(Duration::from_secs(10), || server
            .stats
            .snapshot()
            .responses
            >= FLOODERS + 8)
        .await
    );
    assert!(server.stats.snapshot().throttled > Duration::ZERO);
    let mut conn = Connector::new()
        .connect(server.addr)
        .await
        .expect("connect");
    let mut slowest = Duration::ZERO;
    for i in 0..5u8 {
        let started = Instant::now();
        let reply = tokio::time::timeout(DEADLINE, async {
            conn.ready().await?.call(Bytes::from(vec![i; 8])).await
        })
        .await
        .unwrap_or_else(|_| panic!("request {i} not answered within {DEADLINE:?}"))
        .expect("answered");
        assert_eq!(reply, vec![i; 8]);
        slowest = slowest.max(started.elapsed());
    }
    println!(
        "slowest answer {slowest:?} (handler {HANDLER:?}); {:?}",
        server.stats.snapshot()
    );
    // The flooders' queued frames would take the server a while to answer:
    // stop them here.
    flooders.abort_all();
}

/// Payloads of three sizes; the handler keeps every fourth one and answers all
/// at once. Dropping the kept payloads frees what they kept alive: their own
/// bytes, not the read buffers they were read into.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_payload_keeps_only_its_own_bytes_alive() {
    for size in [100, 3_000, 65_531] {
        let kept: Arc<Mutex<Vec<Bytes>>> = Arc::default();
        let keep = kept.clone();
        let service = service_fn(move |req: Request| {
            let keep = keep.clone();
            async move {
                let payload = req.into_payload();
                if payload[0] == 0 {
                    keep.lock().expect("lock").push(payload);
                }
                Ok::<_, Infallible>(Bytes::new())
            }
        });
        let server = start_server(Server::builder(), service).await;
        let mut client = RawClient::connect(server.addr).await;
        let mut all = BytesMut::new();
        for i in 0..200u32 {
            let mut payload = vec![1u8; size];
            payload[0] = (i % 4) as u8;
            all.extend_from_slice(&encode(&Tag::from_u32(i), &payload));
        }
        client.send_raw(&all).await;
        for _ in 0..200 {
            client.recv(Duration::from_secs(10)).await.expect("answer");
        }
        // Close the connection, so that only the kept payloads keep anything
        // of it alive.
        drop(client);
        assert!(
            anet_tests::eventually(Duration::from_secs(5), || server
                .stats
                .snapshot()
                .connections_open
                == 0)
            .await
        );
        let mut kept = std::mem::take(&mut *kept.lock().expect("lock"));
        assert_eq!(kept.len(), 50);
        let payload_bytes = (kept.len() * size) as i64;
        let info = allocation_counter::measure(|| {
            for payload in kept.drain(..) {
                drop(payload);
            }
        });
        let freed = -info.bytes_current;
        let ratio = freed as f64 / payload_bytes as f64;
        println!(
            "{size}-byte payloads: 50 held kept {freed} B alive for {payload_bytes} B \
             (ratio {ratio:.3})"
        );
        assert!(
            ratio <= 1.25,
            "{size}-byte payloads kept {freed} B alive for {payload_bytes} B"
        );
    }
}

/// A client that pipelines requests and reads no answer: the answers pile up
/// in its connection's write buffer (payloads over 4 KiB: charged until
/// written), and once the kernel's socket buffers are full the server holds
/// them. Room freed by an answer must cover that answer's bytes, not be taken
/// again by the next request: the budget in use stays within its limit (plus
/// the one response over its request's charge), not up to the 256 KiB a
/// connection may buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_a_client_does_not_read_stay_within_the_budget() {
    const BUDGET: u64 = 16 * 1024;
    const PAYLOAD: usize = 5000;
    const FRAMES: u32 = 2000;
    let socket = small_buffered_socket();
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(16).expect("listen");
    let server = Server::builder()
        .frame(anet_proto::Builder::new().max_frame_length(8 * 1024))
        .max_in_flight_bytes(BUDGET as usize)
        .listener(listener)
        .expect("server");
    let addr = server.local_addr();
    let stats = server.stats();
    let serving = tokio::spawn(server.serve(anet_tests::echo()));
    let mut stream = small_buffered_socket()
        .connect(addr)
        .await
        .expect("connect");
    let frame = encode(&Tag::from_u32(7), &[0x42; PAYLOAD]);
    let writing = tokio::spawn(async move {
        for _ in 0..FRAMES {
            if stream.write_all(&frame).await.is_err() {
                break;
            }
        }
        // Keeps the connection open, reading nothing.
        std::future::pending::<()>().await;
    });
    // Until the server stops reading (its socket's buffers full both ways).
    let mut peak = 0;
    let mut last = (u64::MAX, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && last.1.elapsed() < Duration::from_millis(500) {
        let s = stats.snapshot();
        peak = peak.max(s.budget_bytes_in_use);
        if s.requests != last.0 {
            last = (s.requests, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let s = stats.snapshot();
    println!("budget in use at most {peak} B, now {s:?}");
    assert!(
        s.requests < u64::from(FRAMES),
        "the server stopped reading: {s:?}"
    );
    let bound = BUDGET + PAYLOAD as u64 + 16;
    assert!(
        s.budget_bytes_in_use <= bound,
        "{} B held with a budget of {BUDGET}: {s:?}",
        s.budget_bytes_in_use
    );
    assert!(
        peak <= bound,
        "{peak} B held at most with a budget of {BUDGET}"
    );
    writing.abort();
    serving.abort();
}

/// A TCP socket with 64 KiB kernel buffers (so that a client reading nothing
/// soon leaves the server holding its answers).
fn small_buffered_socket() -> tokio::net::TcpSocket {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
    socket.set_send_buffer_size(64 * 1024).expect("SO_SNDBUF");
    socket
}

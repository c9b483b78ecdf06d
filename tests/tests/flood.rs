//! Floods, with the process's resident memory measured before and after: memory
//! stays bounded whatever a peer sends. One test function, so that nothing else in
//! this process allocates while it measures.

use anet_tests::ready_call;
use std::{convert::Infallible, time::Duration};

use anet::{
    client::{ConnectionConfig, Connector},
    server::{Request, Server},
};
use anet_proto::Tag;
use anet_tests::{ManualServer, encode, eventually, rss_bytes, start_server};
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tower::service_fn;

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_leave_memory_bounded() {
    unknown_tag_flood_to_a_client().await;
    requests_from_a_client_that_never_reads().await;
}

/// 200,000 frames of 1 KB with tags nobody sent (200 MB) at a client connection.
async fn unknown_tag_flood_to_a_client() {
    let mut server = ManualServer::bind().await;
    let addr = server.addr;
    let (mut conn, mut peer) = tokio::join!(
        async {
            Connector::new()
                .connection_config(ConnectionConfig::new())
                .connect(addr)
                .await
                .expect("connect")
        },
        server.accept()
    );
    let before = rss_bytes().expect("rss");
    let mut chunk = BytesMut::new();
    let filler = vec![0x42u8; 1000];
    for i in 0..1000u32 {
        chunk.extend_from_slice(&encode(&Tag::from_u32(0xf000_0000 | i), &filler));
    }
    for _ in 0..200 {
        peer.send_raw(&chunk).await;
    }
    assert!(
        eventually(Duration::from_secs(30), || conn.stats().unknown_tags
            == 200_000)
        .await,
        "{:?}",
        conn.stats()
    );
    let after = rss_bytes().expect("rss");
    let grown = after.saturating_sub(before);
    println!(
        "unknown-tag flood: 200 MB received, RSS grew {} MiB",
        grown / MIB
    );
    assert!(grown < 48 * MIB, "RSS grew {} MiB", grown / MIB);
    // The connection still works.
    let fut = ready_call(&mut conn, b"still").await;
    let req = peer.recv().await;
    peer.reply(&req, b"still").await;
    assert_eq!(fut.await.expect("answered"), "still");
}

/// A client writes 100 MB of requests and never reads a response: the server
/// must stop reading rather than buffer the responses. A server that kept reading
/// would serve all 100,000 requests; one that stops can have served at most what
/// its window, its response buffer and the two socket buffers between it and the
/// client hold.
async fn requests_from_a_client_that_never_reads() {
    /// The server's per-connection window.
    const IN_FLIGHT: usize = 1024;
    /// Unflushed response bytes past which a server connection stops reading
    /// (`WRITE_BUFFER_LIMIT` in `anet::server`); it checks before each frame, so
    /// one more frame can land on top.
    const SERVER_WRITE_BUFFER: u64 = 256 * 1024;
    /// Requested receive buffer of the client socket. Setting it turns off the
    /// kernel's autotuning (here up to `tcp_rmem` max, 32 MiB on some hosts),
    /// which would otherwise make the bound below too loose to mean anything.
    const CLIENT_RECV_BUFFER: u32 = 64 * 1024;
    const REQUESTS: u64 = 100_000;

    let echo = service_fn(|req: Request| async move { Ok::<_, Infallible>(req.into_payload()) });
    let config = Server::builder()
        .write_timeout(None)
        .max_in_flight_per_connection(IN_FLIGHT);
    let server = start_server(config, echo).await;
    let before = rss_bytes().expect("rss");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(CLIENT_RECV_BUFFER)
        .expect("SO_RCVBUF");
    // What the kernel granted (Linux doubles the request for its bookkeeping).
    let client_recv_buffer = u64::from(socket.recv_buffer_size().expect("SO_RCVBUF"));
    let mut stream = socket.connect(server.addr).await.expect("connect");
    let mut chunk = BytesMut::new();
    let payload = vec![0x17u8; 1000];
    for i in 0..1000u32 {
        chunk.extend_from_slice(&encode(&Tag::from_u32(i), &payload));
    }
    let frame_len = (chunk.len() / 1000) as u64;
    // Write until TCP pushes back for good (the server stopped reading), or 100 MB.
    let mut written = 0u64;
    for _ in 0..REQUESTS / 1000 {
        match tokio::time::timeout(Duration::from_secs(2), stream.write_all(&chunk)).await {
            Ok(Ok(())) => written += chunk.len() as u64,
            Ok(Err(_)) | Err(_) => break,
        }
    }
    // Let the server finish whatever its receive buffer still holds.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let served = server.stats.snapshot().requests;
    let after = rss_bytes().expect("rss");
    let grown = after.saturating_sub(before);

    // The server's send buffer autotunes up to `tcp_wmem` max; responses in
    // flight on loopback sit there or in the client's receive buffer.
    let server_send_buffer = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse::<u64>().ok())
        .expect("tcp_wmem");
    let buffered = SERVER_WRITE_BUFFER / frame_len
        + 1
        + (server_send_buffer + client_recv_buffer).div_ceil(frame_len);
    // Margin: half as much again, for kernel accounting we do not model.
    let bound = (IN_FLIGHT as u64 + buffered) * 3 / 2;
    println!(
        "non-reading client: wrote {} MiB, server read {served} requests (bound {bound}), \
         RSS grew {} MiB",
        written / MIB,
        grown / MIB
    );
    assert!(
        bound < REQUESTS / 2,
        "socket buffers this large ({server_send_buffer} B) leave the bound {bound} too \
         close to the {REQUESTS} requests sent to tell anything"
    );
    assert!(
        served <= bound,
        "the server kept reading a client that reads no responses: served {served} > {bound}"
    );
    assert!(grown < 48 * MIB, "RSS grew {} MiB", grown / MIB);
}

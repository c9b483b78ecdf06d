//! Floods, with the process's resident memory measured before and after: memory
//! stays bounded whatever a peer sends. One test function, so that nothing else in
//! this process allocates while it measures.

use std::{convert::Infallible, time::Duration};

use anet::{
    client::{ConnectionConfig, Connector},
    server::{Request, Server},
};
use anet_proto::Tag;
use anet_tests::{ManualServer, encode, eventually, rss_bytes, start_server};
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tower::{Service, ServiceExt, service_fn};

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
    let fut = conn
        .ready()
        .await
        .expect("ready")
        .call(Bytes::from_static(b"still"));
    let req = peer.recv().await;
    peer.reply(&req, b"still").await;
    assert_eq!(fut.await.expect("answered"), "still");
}

/// A client writes 100 MB of requests and never reads a response: the server
/// must stop reading rather than buffer the responses.
async fn requests_from_a_client_that_never_reads() {
    let echo = service_fn(|req: Request| async move { Ok::<_, Infallible>(req.into_payload()) });
    let config = Server::builder()
        .write_timeout(None)
        .max_in_flight_per_connection(1024);
    let server = start_server(config, echo).await;
    let before = rss_bytes().expect("rss");
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let mut chunk = BytesMut::new();
    let payload = vec![0x17u8; 1000];
    for i in 0..1000u32 {
        chunk.extend_from_slice(&encode(&Tag::from_u32(i), &payload));
    }
    // Write until TCP pushes back for good (the server stopped reading), or 100 MB.
    let mut written = 0u64;
    for _ in 0..100 {
        match tokio::time::timeout(Duration::from_secs(2), stream.write_all(&chunk)).await {
            Ok(Ok(())) => written += chunk.len() as u64,
            Ok(Err(_)) | Err(_) => break,
        }
    }
    let served = server.stats.snapshot().requests;
    let after = rss_bytes().expect("rss");
    let grown = after.saturating_sub(before);
    println!(
        "non-reading client: wrote {} MiB, server read {served} requests, RSS grew {} MiB",
        written / MIB,
        grown / MIB
    );
    assert!(served < 100_000, "the server stopped reading: {served}");
    assert!(grown < 48 * MIB, "RSS grew {} MiB", grown / MIB);
}

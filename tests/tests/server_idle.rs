//! A served connection that goes idle gives back its read buffer at once (the
//! next reads go through a scratch on the stack until bytes must be kept), and
//! its write buffer and call slots after 500 ms: requests that arrive around
//! those moments, whole, split or larger than the scratch, are all answered.

use std::time::Duration;

use anet::server::Server;
use anet_proto::Tag;
use anet_tests::{RawClient, echo, encode, start_server};
use tokio::io::AsyncWriteExt;

const WITHIN: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_request_trickled_byte_by_byte_to_an_idle_connection_is_answered() {
    let server = start_server(Server::builder(), echo()).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    for tag in 0..3u32 {
        // Idle between requests: the read buffer is released each time.
        let frame = encode(&Tag::from_u32(tag), b"split across many reads");
        for byte in frame.iter() {
            stream.write_all(&[*byte]).await.expect("write");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut response = vec![0; frame.len()];
        tokio::time::timeout(
            WITHIN,
            tokio::io::AsyncReadExt::read_exact(&mut stream, &mut response),
        )
        .await
        .expect("answered in time")
        .expect("read");
        assert_eq!(response, frame);
    }
}

#[tokio::test]
async fn a_burst_larger_than_the_scratch_is_answered_whole() {
    let server = start_server(Server::builder(), echo()).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    // 300 frames of 100-byte payloads (about 31 KiB in one write): the first
    // read fills the 4 KiB scratch and ends inside a frame, whose start moves to
    // the read buffer.
    let mut burst = Vec::new();
    let mut expected = Vec::new();
    for tag in 0..300u32 {
        let payload = [tag as u8; 100];
        burst.extend_from_slice(&encode(&Tag::from_u32(tag), &payload));
        expected.push((Tag::from_u32(tag).as_bytes().to_vec(), payload.to_vec()));
    }
    stream.write_all(&burst).await.expect("write");
    let mut client = RawClient {
        framed: tokio_util::codec::Framed::new(stream, anet_proto::FrameCodec::new()),
    };
    let mut answered = Vec::new();
    for _ in 0..300 {
        let frame = client.recv(WITHIN).await.expect("response");
        answered.push((frame.tag.as_bytes().to_vec(), frame.payload.to_vec()));
    }
    answered.sort();
    assert_eq!(answered, expected);
}

#[tokio::test]
async fn a_connection_idle_past_the_release_serves_large_and_pending_requests_again() {
    // Each call is pending once: it needs a slot among the calls in flight.
    let yielding = tower::service_fn(|req: anet::server::Request| async move {
        tokio::task::yield_now().await;
        Ok::<_, std::convert::Infallible>(req.into_payload())
    });
    let server = start_server(Server::builder(), yielding).await;
    let mut client = RawClient::connect(server.addr).await;
    // A body over 1 KiB is read into its own buffer; before and after the
    // write buffer and slots are freed (500 ms idle).
    let large = vec![7u8; 5000];
    for round in 0..2u32 {
        client.send(round, &large).await;
        let frame = client.recv(WITHIN).await.expect("response");
        assert_eq!(frame.payload.len(), large.len());
        client.send(100 + round, b"small").await;
        let frame = client.recv(WITHIN).await.expect("response");
        assert_eq!(&frame.payload[..], b"small");
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
}

//! Hostile peers: each protection has a test that fails without it.

use anet_tests::clients::assert_times_out_at;
use std::{convert::Infallible, sync::atomic::Ordering, time::Duration};

use anet::{
    client::{Client, ConnectionConfig, RetryPolicy},
    server::{Request, Server},
};
use anet_tests::{MemoryConnector, RawClient, eventually, memory_addr, rss_bytes, start_server};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::FramedRead;
use tower::service_fn;

const WAIT: Duration = Duration::from_secs(20);

/// A server behind in-memory pipes that answers every request by announcing a
/// 65535-byte frame and then trickling it, one byte every `every`. Its connector
/// counts the connections made.
fn trickling_server(every: Duration) -> MemoryConnector {
    MemoryConnector::new(move |io| async move {
        let (read, mut write) = tokio::io::split(io);
        let mut frames = FramedRead::new(read, anet_proto::FrameCodec::new());
        let Some(Ok(frame)) = frames.next().await else {
            return;
        };
        let mut head = vec![0xff, 0xff];
        head.extend_from_slice(frame.tag.as_bytes());
        if write.write_all(&head).await.is_err() {
            return;
        }
        for _ in 0..65_531 {
            tokio::time::sleep(every).await;
            if write.write_all(b"x").await.is_err() {
                return;
            }
        }
    })
}

/// Paused time, over in-memory pipes.
#[tokio::test(start_paused = true)]
async fn a_trickled_response_times_out_and_its_connection_is_replaced() {
    let server = trickling_server(Duration::from_millis(200));
    let addr = memory_addr();
    let client = Client::builder()
        .endpoint(addr)
        .connector(server.clone())
        .request_timeout(Duration::from_millis(500))
        .retry(RetryPolicy::new(0))
        .connection(ConnectionConfig::new().read_timeout(Some(Duration::from_secs(1))))
        .build();
    assert_times_out_at(&client, b"hello", 500, 10).await;
    // The stalled connection is closed after the read timeout and redialed.
    assert!(
        eventually(WAIT, || server.dials.load(Ordering::SeqCst) >= 2).await,
        "stalled connection replaced"
    );
    assert!(
        eventually(WAIT, || client
            .stats()
            .endpoint(addr)
            .is_some_and(|e| e.reconnects >= 1))
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_with_partial_frames_are_limited_and_timed_out() {
    let echo = service_fn(|req: Request| async move { Ok::<_, Infallible>(req.into_payload()) });
    let config = Server::builder()
        .max_connections(100)
        .read_timeout(Some(Duration::from_millis(500)));
    let server = start_server(config, echo).await;
    let before = rss_bytes().expect("rss");
    let mut clients = Vec::new();
    let mut peak = 0;
    for _ in 0..1000 {
        let mut c = RawClient::connect(server.addr).await;
        // Announce 1000 bytes, send 6: a frame that never completes.
        c.send_raw(&[0x03, 0xe8, 0, 0, 0, 1, 2, 3]).await;
        clients.push(c);
        peak = peak.max(server.stats.snapshot().connections_open);
    }
    assert!(peak <= 100, "connection limit held: {peak}");
    let stats = server.stats.snapshot();
    assert!(stats.connections_rejected >= 850, "{stats:?}");
    assert!(
        eventually(WAIT, || server.stats.snapshot().connections_open == 0).await,
        "partial frames closed by the read timeout"
    );
    assert!(server.stats.snapshot().timeouts >= 100);
    let grown = rss_bytes().expect("rss").saturating_sub(before);
    assert!(grown < 64 * 1024 * 1024, "RSS grew {} MiB", grown >> 20);
    drop(clients);
    // A well-behaved client is served afterwards.
    let mut good = RawClient::connect(server.addr).await;
    good.send(7, b"fine").await;
    assert_eq!(good.recv(WAIT).await.expect("served").payload, "fine");
}

/// A device that speaks first: a frame (a greeting, an unsolicited status
/// message) already waiting on a fresh connection carries the tag the first
/// request will get ("0000"). It left the device before the request existed, so
/// it cannot be that request's answer: it is dropped and counted, and the
/// request gets the answer the device gives it. Paused time, in-memory pipe.
#[tokio::test(start_paused = true)]
async fn a_frame_that_arrived_before_its_request_was_written_is_not_its_answer() {
    use anet::client::Connection;
    use anet_proto::{Builder, Tag, TagFormat};
    use anet_tests::encode_with;
    use tower::{Service, ServiceExt};

    let frame = Builder::new().tag_format(TagFormat::ascii(4));
    let codec = frame.new_codec();
    let (client_io, mut server_io) = tokio::io::duplex(1 << 16);
    let greeting = Tag::from_slice(b"0000").expect("tag");
    server_io
        .write_all(&encode_with(&codec, &greeting, b"unsolicited"))
        .await
        .expect("write");
    let mut conn = Connection::new(client_io, ConnectionConfig::new().frame(frame));
    let fut = conn
        .ready()
        .await
        .expect("ready")
        .call(bytes::Bytes::from_static(b"request"));
    answer_the_first_request(&mut server_io, &codec, &greeting, fut, &conn).await;
}

/// The same while the request is still in the client's write buffer: the
/// device does not read (a pipe of 16 bytes holds a part of the request), and
/// sends an unsolicited frame under the tag that request took. The request's
/// bytes are not all on the wire yet, so that frame cannot be its answer.
#[tokio::test(start_paused = true)]
async fn a_frame_that_arrives_while_its_request_is_still_unwritten_is_not_its_answer() {
    use anet::client::Connection;
    use anet_proto::{Builder, Tag, TagFormat};
    use anet_tests::encode_with;
    use tower::{Service, ServiceExt};

    let frame = Builder::new().tag_format(TagFormat::ascii(4));
    let codec = frame.new_codec();
    let (client_io, mut server_io) = tokio::io::duplex(16);
    let mut conn = Connection::new(client_io, ConnectionConfig::new().frame(frame));
    let fut = conn
        .ready()
        .await
        .expect("ready")
        .call(bytes::Bytes::from(vec![b'r'; 100]));
    // The driver writes the first 16 bytes and waits for room.
    tokio::time::sleep(Duration::from_millis(1)).await;
    let tag = Tag::from_slice(b"0000").expect("tag");
    server_io
        .write_all(&encode_with(&codec, &tag, b"hi"))
        .await
        .expect("write");
    // The driver reads it while the rest of the request still waits.
    tokio::time::sleep(Duration::from_millis(1)).await;
    answer_the_first_request(&mut server_io, &codec, &tag, fut, &conn).await;
}

/// The device's side after an early frame under `tag`: it reads the first
/// request (which took `tag`) and answers it; the request gets that answer,
/// and the early frame was counted as the one unknown tag.
async fn answer_the_first_request(
    server_io: &mut tokio::io::DuplexStream,
    codec: &anet_proto::FrameCodec,
    tag: &anet_proto::Tag,
    fut: anet::client::future::ConnectionFuture,
    conn: &anet::client::Connection,
) {
    use anet_tests::encode_with;

    let request = anet_proto::read_frame(&mut *server_io, codec)
        .await
        .expect("read")
        .expect("frame");
    assert_eq!(&request.tag, tag, "the first request takes the first tag");
    server_io
        .write_all(&encode_with(codec, &request.tag, b"answer"))
        .await
        .expect("write");
    let answer = tokio::time::timeout(WAIT, fut).await.expect("no hang");
    assert_eq!(answer.expect("answered"), "answer");
    assert_eq!(conn.stats().unknown_tags, 1, "{:?}", conn.stats());
}

/// A device on 2-digit ASCII tags answers under tags that are not digits, or
/// digits the client never issued: each such frame is dropped and counted, and
/// the request still gets its own answer. Paused time, in-memory pipe.
#[tokio::test(start_paused = true)]
async fn ascii_tags_that_are_not_digits_or_never_issued_are_dropped_and_counted() {
    use anet::client::Connection;
    use anet_proto::{Builder, Tag, TagFormat};
    use anet_tests::encode_with;
    use tower::{Service, ServiceExt};

    let frame = Builder::new().tag_format(TagFormat::ascii(2));
    let codec = frame.new_codec();
    let (client_io, mut server_io) = tokio::io::duplex(1 << 16);
    let mut conn = Connection::new(client_io, ConnectionConfig::new().frame(frame));
    let fut = conn
        .ready()
        .await
        .expect("ready")
        .call(bytes::Bytes::from_static(b"request"));
    let request = anet_proto::read_frame(&mut server_io, &codec)
        .await
        .expect("read")
        .expect("frame");
    let forged: [&[u8; 2]; 7] = [b"0A", b" 0", b"+0", b"-0", b"\x000", b"99", b"01"];
    for tag in forged {
        let tag = Tag::from_slice(tag).expect("tag");
        assert_ne!(tag, request.tag);
        server_io
            .write_all(&encode_with(&codec, &tag, b"forged"))
            .await
            .expect("write");
    }
    server_io
        .write_all(&encode_with(&codec, &request.tag, b"answer"))
        .await
        .expect("write");
    let answer = tokio::time::timeout(WAIT, fut).await.expect("no hang");
    assert_eq!(answer.expect("answered"), "answer");
    assert_eq!(conn.stats().unknown_tags, 7, "{:?}", conn.stats());
}

/// A transport with the peer inside it: each write accepts at most `chunk`
/// bytes and the write after it is blocked (woken at once); the moment a
/// request's last byte is accepted, its answer (the request's payload under
/// its tag) is readable, before the write call returns.
struct InlineEchoPeer {
    codec: anet_proto::FrameCodec,
    chunk: usize,
    blocked_next: bool,
    received: bytes::BytesMut,
    to_client: bytes::BytesMut,
    read_waker: Option<std::task::Waker>,
}

impl tokio::io::AsyncRead for InlineEchoPeer {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.to_client.is_empty() {
            self.read_waker = Some(cx.waker().clone());
            return std::task::Poll::Pending;
        }
        let n = self.to_client.len().min(buf.remaining());
        buf.put_slice(&self.to_client.split_to(n));
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for InlineEchoPeer {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use tokio_util::codec::Decoder;
        if std::mem::take(&mut self.blocked_next) {
            cx.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        let n = buf.len().min(self.chunk);
        self.received.extend_from_slice(&buf[..n]);
        self.blocked_next = true;
        let this = &mut *self;
        while let Some(frame) = this
            .codec
            .decode(&mut this.received)
            .expect("request frame")
        {
            let answer = anet_tests::encode_with(&this.codec, &frame.tag, &frame.payload);
            this.to_client.extend_from_slice(&answer);
        }
        if !this.to_client.is_empty() {
            if let Some(waker) = this.read_waker.take() {
                waker.wake();
            }
        }
        std::task::Poll::Ready(Ok(n))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// The other side of dropping frames for unwritten requests: an answer the
/// peer gives the instant a request's last byte is written (in a write that
/// the next one, blocked, follows; with other requests still partly
/// unwritten) is that request's, and is delivered. Writes of 1, 7 and 64
/// bytes, requests of many sizes queued together: every one gets its own
/// answer, none is dropped as unknown.
#[tokio::test]
async fn an_answer_given_as_soon_as_its_request_is_written_is_delivered_under_partial_writes() {
    use anet::client::Connection;
    use tower::{Service, ServiceExt};

    for chunk in [1, 7, 64] {
        let peer = InlineEchoPeer {
            codec: anet_proto::FrameCodec::new(),
            chunk,
            blocked_next: false,
            received: bytes::BytesMut::new(),
            to_client: bytes::BytesMut::new(),
            read_waker: None,
        };
        let mut conn = Connection::new(peer, ConnectionConfig::new());
        let mut calls = Vec::new();
        for i in 0..40usize {
            let payload = bytes::Bytes::from(vec![i as u8; (i * 37) % 150]);
            let fut = conn.ready().await.expect("ready").call(payload.clone());
            calls.push(async move { (payload, fut.await) });
        }
        let answers = tokio::time::timeout(WAIT, futures_util::future::join_all(calls))
            .await
            .expect("no hang");
        for (payload, answer) in answers {
            assert_eq!(answer.expect("answered"), payload, "chunk {chunk}");
        }
        let stats = conn.stats();
        assert_eq!(stats.unknown_tags, 0, "chunk {chunk}: {stats:?}");
    }
}

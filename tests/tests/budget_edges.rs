//! Edge cases of the server-wide budget: timeouts around the budget wait,
//! framing through the reader/writer at every size threshold, and leaks after
//! errors and resets.

use std::{
    convert::Infallible,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use anet::server::{OnError, Request, Server};
use anet_proto::{Builder as FrameBuilder, Tag, TagFormat};
use anet_tests::{RawClient, encode, start_server};
use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tower::service_fn;

/// A client whose first frame had to wait for the budget longer than the
/// first-frame timeout, and whose body is still arriving when the budget is
/// granted, is not closed: the first-frame timeout pauses while waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_frame_timeout_pauses_while_waiting_for_the_budget() {
    let config = Server::builder()
        .frame(FrameBuilder::new().max_frame_length(1000))
        .max_in_flight_bytes(1000)
        .first_frame_timeout(Some(Duration::from_secs(1)));
    let service = service_fn(|req: Request| async move {
        let payload = req.into_payload();
        if payload[0] == b'A' {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        Ok::<_, Infallible>(payload)
    });
    let server = start_server(config, service).await;
    // A fills the budget (900 of 1000 bytes) for 2 s.
    let mut a = RawClient::connect(server.addr).await;
    a.send(1, &[b'A'; 896]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // B sends the head of a 600-byte frame at once: its length is read and it
    // waits for the budget.
    let mut b = RawClient::connect(server.addr).await;
    let frame = encode(&Tag::from_u32(2), &[b'B'; 596]);
    b.send_raw(&frame[..102]).await;
    // A is answered: B is granted the budget and reads the rest as it comes,
    // 300 ms later (well within the 1 s it never used).
    assert!(a.recv(Duration::from_secs(5)).await.is_some());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = b.framed.get_mut().try_write(&frame[102..]);
    let answer = b.recv(Duration::from_secs(5)).await;
    let stats = server.stats.snapshot();
    assert!(
        answer.is_some(),
        "B was closed after waiting for the budget; first-frame timeouts: {}",
        stats.first_frame_timeouts
    );
}

/// Reads one byte per call and writes at most 3 bytes per call (vectored
/// writes too), echoing frames in through `input` and collecting `output`.
struct Trickle {
    input: Bytes,
    output: Vec<u8>,
    flip: bool,
}

impl AsyncRead for Trickle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Alternate Pending and one byte, so every byte boundary is a wake-up.
        self.flip = !self.flip;
        if self.flip {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if !self.input.is_empty() {
            let b = self.input.split_to(1);
            buf.put_slice(&b);
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(3);
        self.output.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut left = 3;
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(left);
            self.output.extend_from_slice(&b[..take]);
            n += take;
            left -= take;
            if left == 0 {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// 4-byte lengths, 6-digit ASCII tags, bodies around every size threshold of
/// the reader (1 KiB direct bodies, 4 KiB buffer) and writer (4 KiB copy),
/// split at every byte; responses partially written 3 bytes at a time.
#[tokio::test]
async fn frames_split_at_every_byte_with_partial_vectored_writes() {
    let frame = FrameBuilder::new()
        .length_width(4)
        .max_frame_length(24 * 1024)
        .tag_format(TagFormat::ascii(6));
    let codec = frame.new_codec();
    let sizes = [
        0usize, 1, 100, 1017, 1018, 1019, 1030, 4090, 4096, 4097, 5000, 20_000, 3,
    ];
    let mut input = BytesMut::new();
    let mut expected = BytesMut::new();
    for (i, size) in sizes.iter().enumerate() {
        let tag = Tag::from_slice(format!("{:06}", i).as_bytes()).expect("tag");
        let payload: Vec<u8> = (0..*size).map(|j| (j * 7 + i) as u8).collect();
        codec
            .encode_parts(&tag, &payload, &mut input)
            .expect("encode");
        codec
            .encode_parts(&tag, &payload, &mut expected)
            .expect("encode");
    }
    let mut io = Trickle {
        input: input.freeze(),
        output: Vec::new(),
        flip: false,
    };
    let service = service_fn(|req: Request| async move { Ok::<_, Infallible>(req.into_payload()) });
    tokio::time::timeout(
        Duration::from_secs(60),
        Server::builder()
            .frame(frame)
            .max_in_flight_bytes(24 * 1024)
            .serve_connection(&mut io, None, service),
    )
    .await
    .expect("served");
    assert_eq!(io.output.len(), expected.len());
    assert!(
        io.output == expected[..],
        "responses differ from the requests echoed in order"
    );
}

/// Errors, panics, OnError::Close, resets mid-frame and while waiting for the
/// budget, unread responses: the budget returns to zero afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_returns_to_zero_after_errors_and_resets() {
    let config = Server::builder()
        // One maximum frame: the least a budget can be.
        .max_in_flight_bytes(65_535)
        .on_error(OnError::Close)
        .write_timeout(Some(Duration::from_millis(500)));
    let service = service_fn(|req: Request| async move {
        let payload = req.into_payload();
        match payload.first() {
            Some(b'E') => Err::<Bytes, anet::BoxError>("failed".into()),
            Some(b'P') => panic!("handler panics"),
            Some(b'S') => {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Ok(payload)
            }
            Some(b'L') => Ok(Bytes::from(vec![7u8; 60_000])),
            _ => Ok(payload),
        }
    });
    let server = start_server(config, service).await;
    let mut tasks = tokio::task::JoinSet::new();
    for round in 0..20u32 {
        let addr = server.addr;
        tasks.spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            stream.set_zero_linger().ok();
            let mut c = RawClient {
                framed: tokio_util::codec::Framed::new(stream, anet_proto::FrameCodec::new()),
            };
            let mut all = BytesMut::new();
            for i in 0..30u32 {
                let kind = [b'S', b'S', b'L', b'x', b'S'][(i % 5) as usize];
                all.extend_from_slice(&encode(&Tag::from_u32(i), &[kind; 3000]));
            }
            match round % 4 {
                0 => all.extend_from_slice(&encode(&Tag::from_u32(99), b"E")),
                1 => all.extend_from_slice(&encode(&Tag::from_u32(99), b"P")),
                _ => {}
            }
            // A frame cut in the middle, then a reset (linger 0) without
            // reading anything.
            let tail = encode(&Tag::from_u32(100), &[b'x'; 5000]);
            all.put_slice(&tail[..2500]);
            let _ = c.framed.get_mut().try_write(&all);
            tokio::time::sleep(Duration::from_millis(50 * u64::from(round % 3))).await;
            drop(c);
        });
    }
    while tasks.join_next().await.is_some() {}
    let settled = anet_tests::eventually(Duration::from_secs(10), || {
        let s = server.stats.snapshot();
        s.connections_open == 0 && s.budget_bytes_in_use == 0 && s.budget_requests_in_use == 0
    })
    .await;
    assert!(settled, "{:?}", server.stats.snapshot());
}

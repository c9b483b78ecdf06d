//! The client's receive path against arbitrary server bytes: a `Connection` over an
//! in-memory pipe with requests in flight receives the fuzz input as the server's
//! output, then the server goes away. Every request must end (a response or a
//! typed error), nothing may panic, and a response may only be the one its tag
//! earned.
//!
//! The oracle: the server side reads the request frames the client wrote, so it
//! knows which tag each request (each with a distinct payload) carried; the input
//! is parsed with the same codec, up to its first decode error or incomplete frame,
//! so it knows which whole frames the client can have seen. Then:
//!
//! * a request whose tag some frame named gets exactly the payload of the FIRST such
//!   frame (the response frees the tag; later duplicates are dropped);
//! * a request whose tag no frame named fails, with `Protocol` when the input broke
//!   the frame format and `ConnectionLost` otherwise (frames after the first bad
//!   one are never delivered);
//! * no request hangs: the server closes the pipe, so the connection must end.
//!
//! The first input byte picks the frame settings (length width, maximum body, tag
//! format), so the oracle covers small and ASCII tag spaces too.
#![no_main]

use std::time::Duration;

use anet::client::{Connection, ConnectionConfig};
use anet_proto::{Builder as FrameBuilder, Frame, TagFormat, read_frame};
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Decoder;
use tower::{Service, ServiceExt};

/// Requests in flight when the input arrives; every tag format below has room for
/// all of them in the window.
const REQUESTS: u8 = 8;

/// How the input ended, as the client's decoder sees it.
#[derive(Debug, PartialEq)]
enum InputEnd {
    /// At a frame boundary, or inside a frame: the connection is lost at EOF.
    Eof,
    /// At a length the codec rejects: the connection fails with `Protocol`.
    BadFrame,
}

/// Frame settings chosen by the input's first byte.
fn frame_settings(config: u8) -> FrameBuilder {
    let format = match config & 3 {
        0 => TagFormat::BINARY_U32,
        1 => TagFormat::binary(1),
        2 => TagFormat::ascii(2),
        _ => TagFormat::ascii(4),
    };
    let width = if config & 4 == 0 { 2 } else { 4 };
    let max = if config & 8 == 0 { 65535 } else { 64 };
    FrameBuilder::new()
        .length_width(width)
        .max_frame_length(max)
        .tag_format(format)
}

/// The whole frames of `input` before its first decode error or incomplete frame,
/// and how it ended.
fn parse_input(settings: FrameBuilder, input: &[u8]) -> (Vec<Frame>, InputEnd) {
    let mut codec = settings.new_codec();
    let mut buf = BytesMut::from(input);
    let mut frames = Vec::new();
    loop {
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return (frames, InputEnd::Eof),
            Err(e) => {
                assert!(e.is_protocol(), "a slice decodes without I/O errors: {e}");
                return (frames, InputEnd::BadFrame);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&config, input)) = data.split_first() else {
        return;
    };
    let settings = frame_settings(config);
    let (frames, end) = parse_input(settings, input);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client_io, mut server_io) = tokio::io::duplex(1 << 16);
        let conn_config = ConnectionConfig::new()
            .frame(settings)
            .max_in_flight(usize::from(REQUESTS))
            .quarantine(Duration::from_millis(50));
        let conn = Connection::new(client_io, conn_config);
        let mut calls = Vec::new();
        for i in 0..REQUESTS {
            let mut c = conn.clone();
            calls.push(tokio::spawn(async move {
                let ready = c.ready().await?;
                ready.call(Bytes::from(vec![i; 3])).await
            }));
        }

        // The server reads every request before it answers, so each one is in the
        // client's table when the input arrives: which tag went with which request
        // is then known, not a race.
        let codec = settings.new_codec();
        let mut tags = Vec::new();
        for _ in 0..REQUESTS {
            let frame =
                tokio::time::timeout(Duration::from_secs(30), read_frame(&mut server_io, &codec))
                    .await
                    .expect("the client writes every request")
                    .expect("the client writes valid frames")
                    .expect("the client writes every request before the pipe ends");
            let i = frame.payload[0];
            assert!(i < REQUESTS && frame.payload[..] == [i; 3], "{frame:?}");
            tags.push((i, frame.tag));
        }
        for (n, (i, tag)) in tags.iter().enumerate() {
            assert!(
                tags[..n].iter().all(|(j, t)| j != i && t != tag),
                "two requests in flight on one wire tag or one request written twice: {tags:?}"
            );
        }

        let _ = server_io.write_all(input).await;
        drop(server_io);

        for (i, call) in calls.into_iter().enumerate() {
            let result = tokio::time::timeout(Duration::from_secs(30), call)
                .await
                .unwrap_or_else(|_| panic!("request {i} hung after the server went away"))
                .expect("no panic");
            let (_, tag) = tags
                .iter()
                .find(|(j, _)| usize::from(*j) == i)
                .expect("every request was written");
            let earned = frames.iter().find(|f| f.tag == *tag);
            match (earned, result) {
                (Some(frame), Ok(bytes)) => assert_eq!(
                    bytes, frame.payload,
                    "request {i} (tag {tag:?}) got bytes other than its first response"
                ),
                (Some(frame), Err(e)) => panic!(
                    "request {i} (tag {tag:?}) failed with {e:?} although a whole response \
                     for it ({frame:?}) arrived before anything broke"
                ),
                (None, Ok(bytes)) => panic!(
                    "request {i} (tag {tag:?}) got {bytes:?} although no frame named its tag"
                ),
                (None, Err(e)) => {
                    let expected = match end {
                        InputEnd::Eof => anet::Kind::ConnectionLost,
                        InputEnd::BadFrame => anet::Kind::Protocol,
                    };
                    assert_eq!(
                        e.kind(),
                        expected,
                        "request {i}: {e:?} after input end {end:?}"
                    );
                }
            }
        }
        tokio::time::timeout(Duration::from_secs(30), conn.closed())
            .await
            .expect("the connection ends once the server is gone");
    });
});

//! Byte-level splits of requests read through the server's stack scratch (an
//! idle connection holds no read buffer): every split point, 4-byte lengths,
//! ASCII tags, frames ending on or straddling the scratch's end, the largest
//! frame, and malformed or truncated frames closing with a typed error.

use std::time::Duration;

use anet::server::Server;
use anet_proto::{Builder as FrameBuilder, FrameCodec, Tag, TagFormat};
use anet_tests::{echo, encode_with};
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio_util::codec::Framed;

const WITHIN: Duration = Duration::from_secs(10);

/// A connection served by `config` over an in-memory pipe; the client's end.
fn serve(config: FrameBuilder) -> (DuplexStream, tokio::task::JoinHandle<()>) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let task = tokio::spawn(async move {
        Server::builder()
            .frame(config)
            .serve_connection(server, None, echo())
            .await;
    });
    (client, task)
}

/// Lets the server read what was written so far (a separate read).
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

async fn expect_echoes(client: &mut DuplexStream, codec: &FrameCodec, frames: &[(Tag, Vec<u8>)]) {
    let mut framed = Framed::new(client, codec.clone());
    let mut got = Vec::new();
    for _ in frames {
        let frame = tokio::time::timeout(WITHIN, framed.next())
            .await
            .expect("answered in time")
            .expect("a response")
            .expect("well formed");
        got.push((frame.tag, frame.payload.to_vec()));
    }
    let mut want = frames.to_vec();
    got.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    want.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    assert_eq!(got, want);
}

#[tokio::test]
async fn two_frames_split_at_every_byte_with_four_byte_lengths_and_ascii_tags_are_answered() {
    let config = FrameBuilder::new()
        .length_width(4)
        .tag_format(TagFormat::ascii(6));
    let codec = config.new_codec();
    let frames = vec![
        (Tag::from_slice(b"000001").unwrap(), b"small".to_vec()),
        (Tag::from_slice(b"000002").unwrap(), vec![9u8; 1500]),
        (Tag::from_slice(b"000003").unwrap(), Vec::new()),
    ];
    let mut bytes = Vec::new();
    for (tag, payload) in &frames {
        bytes.extend_from_slice(&encode_with(&codec, tag, payload));
    }
    let (mut client, _task) = serve(config);
    for split in 0..=bytes.len() {
        client.write_all(&bytes[..split]).await.unwrap();
        settle().await;
        client.write_all(&bytes[split..]).await.unwrap();
        expect_echoes(&mut client, &codec, &frames).await;
    }
}

#[tokio::test]
async fn frames_ending_on_or_straddling_the_scratch_end_are_answered() {
    let codec = FrameCodec::new();
    // 6-byte header + payload; the burst's length puts a frame boundary, a
    // length field or a tag at byte 4096.
    for shift in 0..12usize {
        let mut frames = Vec::new();
        let mut bytes = Vec::new();
        let mut tag = 0u32;
        while bytes.len() < 4096 - 100 {
            let payload = vec![tag as u8; 94];
            bytes.extend_from_slice(&encode_with(&codec, &Tag::from_u32(tag), &payload));
            frames.push((Tag::from_u32(tag), payload));
            tag += 1;
        }
        let fill = 4096 - bytes.len() + shift - 6;
        let payload = vec![0xAA; fill];
        bytes.extend_from_slice(&encode_with(&codec, &Tag::from_u32(tag), &payload));
        frames.push((Tag::from_u32(tag), payload));
        tag += 1;
        for _ in 0..3 {
            let payload = vec![tag as u8; 30];
            bytes.extend_from_slice(&encode_with(&codec, &Tag::from_u32(tag), &payload));
            frames.push((Tag::from_u32(tag), payload));
            tag += 1;
        }
        let (mut client, _task) = serve(FrameBuilder::new());
        client.write_all(&bytes).await.unwrap();
        expect_echoes(&mut client, &codec, &frames).await;
    }
}

#[tokio::test]
async fn the_largest_frame_split_anywhere_is_answered() {
    let codec = FrameCodec::new();
    let payload = vec![5u8; 65535 - 4];
    let bytes = encode_with(&codec, &Tag::from_u32(1), &payload);
    let (mut client, _task) = serve(FrameBuilder::new());
    for split in [0, 1, 2, 3, 6, 100, 4096, 4097, 60000, bytes.len() - 1] {
        client.write_all(&bytes[..split]).await.unwrap();
        settle().await;
        client.write_all(&bytes[split..]).await.unwrap();
        expect_echoes(&mut client, &codec, &[(Tag::from_u32(1), payload.clone())]).await;
    }
}

async fn closes(bytes: &[u8]) {
    let (mut client, task) = serve(FrameBuilder::new());
    client.write_all(bytes).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(WITHIN, client.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .expect("read");
    tokio::time::timeout(WITHIN, task)
        .await
        .expect("ends")
        .expect("no panic");
}

#[tokio::test]
async fn malformed_frames_read_through_the_scratch_close_the_connection() {
    // Zero-length body, body shorter than the tag, after a good frame.
    let good = encode_with(&FrameCodec::new(), &Tag::from_u32(1), b"ok");
    for bad in [&[0u8, 0][..], &[0, 3, 1, 2, 3][..], &[0, 1, 9][..]] {
        closes(bad).await;
        let mut both = good.to_vec();
        both.extend_from_slice(bad);
        closes(&both).await;
    }
}

#[tokio::test]
async fn input_ending_inside_a_frame_closes_the_connection() {
    let frame = encode_with(&FrameCodec::new(), &Tag::from_u32(1), &[1u8; 2000]);
    for cut in [1, 2, 5, 6, 100, 1999] {
        let (mut client, task) = serve(FrameBuilder::new());
        client.write_all(&frame[..cut]).await.unwrap();
        client.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(WITHIN, client.read_to_end(&mut rest))
            .await
            .expect("closed in time")
            .expect("read");
        assert!(rest.is_empty());
        tokio::time::timeout(WITHIN, task)
            .await
            .expect("ends")
            .expect("no panic");
    }
}

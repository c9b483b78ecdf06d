//! Byte-exact vectors (Go anet compatibility), split-read proptests and hostile input.

use anet_proto::{
    Frame, FrameCodec, FrameError, FrameRef, Tag, TagFormat, read_frame, write_frame,
};
use bytes::{BufMut, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

fn encode_all(codec: &mut FrameCodec, frames: &[Frame]) -> BytesMut {
    let mut buf = BytesMut::new();
    for f in frames {
        codec.encode(f, &mut buf).expect("encode");
    }
    buf
}

#[test]
fn encode_matches_go_anet_vector() {
    let mut codec = FrameCodec::new();
    let buf = encode_all(
        &mut codec,
        &[Frame::new(Tag::from_u32(0x0102_0304), "hello")],
    );
    assert_eq!(
        &buf[..],
        &[
            0x00, 0x09, 0x01, 0x02, 0x03, 0x04, 0x68, 0x65, 0x6c, 0x6c, 0x6f
        ]
    );
}

#[test]
fn decode_go_anet_vector() {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::from(
        &[
            0x00, 0x09, 0x01, 0x02, 0x03, 0x04, b'h', b'e', b'l', b'l', b'o',
        ][..],
    );
    let frame = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(frame, Frame::new(Tag::from_u32(0x0102_0304), "hello"));
    assert!(buf.is_empty());
    assert!(codec.decode(&mut buf).unwrap().is_none());
}

#[test]
fn empty_payload_round_trips() {
    let mut codec = FrameCodec::new();
    let mut buf = encode_all(&mut codec, &[Frame::new(Tag::from_u32(7), "")]);
    assert_eq!(&buf[..], &[0x00, 0x04, 0, 0, 0, 7]);
    let frame = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(frame.tag, Tag::from_u32(7));
    assert!(frame.payload.is_empty());
}

#[test]
fn maximum_body_of_65535_round_trips_and_one_more_is_refused() {
    let mut codec = FrameCodec::new();
    let payload = vec![0x42u8; 65535 - 4];
    let mut buf = encode_all(&mut codec, &[Frame::new(Tag::from_u32(1), payload.clone())]);
    assert_eq!(&buf[..2], &[0xff, 0xff]);
    assert_eq!(buf.len(), 2 + 65535);
    let frame = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(&frame.payload[..], &payload[..]);

    let too_big = Frame::new(Tag::from_u32(1), vec![0u8; 65535 - 3]);
    let err = codec.encode(too_big, &mut BytesMut::new()).unwrap_err();
    assert!(matches!(
        err,
        FrameError::FrameTooLarge {
            len: 65536,
            max: 65535
        }
    ));
}

#[test]
fn four_byte_length_mode_round_trips_large_frames() {
    let mut codec = FrameCodec::builder()
        .length_width(4)
        .max_frame_length(1 << 20)
        .new_codec();
    let payload = vec![7u8; 100_000];
    let mut buf = encode_all(&mut codec, &[Frame::new(Tag::from_u32(9), payload.clone())]);
    assert_eq!(&buf[..4], &(100_004u32).to_be_bytes());
    let frame = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(frame.tag, Tag::from_u32(9));
    assert_eq!(frame.payload.len(), 100_000);

    let mut small = FrameCodec::builder().length_width(4).new_codec();
    let mut buf = encode_all(
        &mut small,
        &[Frame::new(Tag::from_u32(0x0102_0304), "hello")],
    );
    assert_eq!(&buf[..], b"\x00\x00\x00\x09\x01\x02\x03\x04hello");
    assert_eq!(small.decode(&mut buf).unwrap().unwrap().payload, "hello");
}

#[test]
fn ascii_header_format_round_trips() {
    let mut codec = FrameCodec::builder()
        .tag_format(TagFormat::ascii(4))
        .new_codec();
    let tag = TagFormat::ascii(4).encode_id(12);
    let mut buf = encode_all(&mut codec, &[Frame::new(tag, "NC")]);
    assert_eq!(&buf[..], b"\x00\x060012NC");
    let frame = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(frame.tag.as_bytes(), b"0012");
    assert_eq!(frame.payload, "NC");
}

#[test]
fn encode_rejects_tag_of_wrong_width() {
    let mut codec = FrameCodec::new();
    let tag = Tag::from_slice(b"ab").unwrap();
    let err = codec
        .encode(FrameRef { tag, payload: b"x" }, &mut BytesMut::new())
        .unwrap_err();
    assert!(matches!(
        err,
        FrameError::TagWidth {
            len: 2,
            expected: 4
        }
    ));
}

#[test]
fn decode_rejects_oversize_length_without_reserving() {
    let mut codec = FrameCodec::builder().max_frame_length(100).new_codec();
    let mut buf = BytesMut::from(&[0x00, 0x65][..]);
    let cap_before = buf.capacity();
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(matches!(
        err,
        FrameError::FrameTooLarge { len: 101, max: 100 }
    ));
    assert!(err.is_protocol());
    assert_eq!(buf.capacity(), cap_before);
}

#[test]
fn decode_rejects_body_shorter_than_tag() {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::from(&[0x00, 0x03, 1, 2, 3][..]);
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(matches!(err, FrameError::FrameTooShort { len: 3, min: 4 }));
}

#[test]
fn decode_eof_inside_a_frame_is_unexpected_eof() {
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::from(&[0x00, 0x09, 1, 2][..]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    let err = codec.decode_eof(&mut buf).unwrap_err();
    match err {
        FrameError::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
        other => panic!("unexpected {other:?}"),
    }
    let mut clean = FrameCodec::new();
    assert!(clean.decode_eof(&mut BytesMut::new()).unwrap().is_none());
}

#[test]
fn decoded_payload_shares_the_read_buffer() {
    let mut codec = FrameCodec::new();
    let mut buf = encode_all(
        &mut codec,
        &[
            Frame::new(Tag::from_u32(1), "aaaa"),
            Frame::new(Tag::from_u32(2), "bbbb"),
        ],
    );
    let base = buf.as_ptr() as usize;
    let first = codec.decode(&mut buf).unwrap().unwrap();
    let second = codec.decode(&mut buf).unwrap().unwrap();
    // Payloads point into the original allocation: no copy per frame.
    assert_eq!(first.payload.as_ptr() as usize, base + 6);
    assert_eq!(second.payload.as_ptr() as usize, base + 16);
}

#[tokio::test]
async fn write_and_read_helpers_round_trip_over_a_stream() {
    let codec = FrameCodec::new();
    let (mut a, mut b) = tokio::io::duplex(64);
    let writer = tokio::spawn(async move {
        let codec = FrameCodec::new();
        for i in 0..3u32 {
            let payload = vec![i as u8; 100];
            write_frame(
                &mut a,
                &codec,
                FrameRef {
                    tag: Tag::from_u32(i),
                    payload: &payload,
                },
            )
            .await
            .unwrap();
        }
    });
    for i in 0..3u32 {
        let frame = read_frame(&mut b, &codec).await.unwrap().unwrap();
        assert_eq!(frame.tag, Tag::from_u32(i));
        assert_eq!(&frame.payload[..], &vec![i as u8; 100][..]);
    }
    writer.await.unwrap();
    assert!(read_frame(&mut b, &codec).await.unwrap().is_none());
}

#[tokio::test]
async fn read_helper_reports_limits_and_truncation() {
    let codec = FrameCodec::builder().max_frame_length(10).new_codec();
    let mut oversize: &[u8] = &[0x00, 0x0b, 0, 0, 0, 0];
    assert!(matches!(
        read_frame(&mut oversize, &codec).await,
        Err(FrameError::FrameTooLarge { len: 11, max: 10 })
    ));
    let mut short: &[u8] = &[0x00, 0x02, 0, 0];
    assert!(matches!(
        read_frame(&mut short, &codec).await,
        Err(FrameError::FrameTooShort { len: 2, min: 4 })
    ));
    let mut truncated: &[u8] = &[0x00, 0x08, 0, 0, 0, 1, b'x'];
    match read_frame(&mut truncated, &codec).await {
        Err(FrameError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
        other => panic!("unexpected {other:?}"),
    }
    let mut half_head: &[u8] = &[0x00];
    assert!(matches!(
        read_frame(&mut half_head, &codec).await,
        Err(FrameError::Io(_))
    ));
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    (any::<u32>(), proptest::collection::vec(any::<u8>(), 0..300))
        .prop_map(|(tag, payload)| Frame::new(Tag::from_u32(tag), payload))
}

proptest! {
    #[test]
    fn frames_survive_arbitrary_read_boundaries(
        frames in proptest::collection::vec(arb_frame(), 0..20),
        cuts in proptest::collection::vec(1usize..64, 1..50),
        one_at_a_time in any::<bool>(),
    ) {
        let mut codec = FrameCodec::new();
        let wire = encode_all(&mut codec, &frames).freeze();
        let mut src = BytesMut::new();
        let mut decoded = Vec::new();
        let mut pos = 0;
        let mut cut = cuts.iter().cycle();
        while pos < wire.len() {
            let step = if one_at_a_time { 1 } else { *cut.next().unwrap() };
            let end = (pos + step).min(wire.len());
            src.put_slice(&wire[pos..end]);
            pos = end;
            while let Some(frame) = codec.decode(&mut src).unwrap() {
                decoded.push(frame);
            }
        }
        prop_assert!(codec.decode_eof(&mut src).unwrap().is_none());
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        max in 0usize..70_000,
        width in prop_oneof![Just(2usize), Just(4usize)],
        ascii in any::<bool>(),
    ) {
        let format = if ascii { TagFormat::ascii(6) } else { TagFormat::BINARY_U32 };
        let mut codec = FrameCodec::builder()
            .length_width(width)
            .max_frame_length(max)
            .tag_format(format)
            .new_codec();
        let mut src = BytesMut::from(&bytes[..]);
        loop {
            let before = src.len();
            match codec.decode(&mut src) {
                Ok(Some(frame)) => {
                    prop_assert_eq!(frame.tag.len(), format.width());
                    prop_assert!(frame.payload.len() + format.width() <= codec.config().max_body());
                }
                Ok(None) => break,
                Err(FrameError::FrameTooLarge { len, max }) => {
                    prop_assert!(len > max);
                    break;
                }
                Err(FrameError::FrameTooShort { len, min }) => {
                    prop_assert!(len < min);
                    break;
                }
                Err(other) => prop_assert!(false, "unexpected error {other:?}"),
            }
            prop_assert!(src.len() < before);
        }
    }

    #[test]
    fn announced_lengths_are_classified(len in 0u32..=u16::MAX as u32, max in 4usize..70_000) {
        let mut codec = FrameCodec::builder().max_frame_length(max).new_codec();
        let mut src = BytesMut::new();
        src.put_u16(len as u16);
        let result = codec.decode(&mut src);
        let len = len as usize;
        let max = max.min(65535);
        if len > max {
            prop_assert!(
                matches!(result, Err(FrameError::FrameTooLarge { len: l, max: m }) if l == len && m == max),
                "expected FrameTooLarge"
            );
        } else if len < 4 {
            prop_assert!(
                matches!(result, Err(FrameError::FrameTooShort { len: l, min: 4 }) if l == len),
                "expected FrameTooShort"
            );
        } else {
            prop_assert!(matches!(result, Ok(None)));
        }
    }
}

//! The frame decoder against arbitrary bytes, under every configuration: it never
//! panics, never loops, and every frame it yields respects the limits.
#![no_main]

use anet_proto::{FrameCodec, FrameError, TagFormat};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&config, rest)) = data.split_first() else { return };
    let width = if config & 1 == 0 { 2 } else { 4 };
    let format = match (config >> 1) & 3 {
        0 => TagFormat::BINARY_U32,
        1 => TagFormat::binary(1 + (config as usize >> 3) % 8),
        _ => TagFormat::ascii(1 + (config as usize >> 3) % 16),
    };
    let max = 1 + usize::from(config) * 97;
    let mut codec = FrameCodec::builder()
        .length_width(width)
        .max_frame_length(max)
        .tag_format(format)
        .new_codec();
    // Feed in two pieces to exercise the resumable state machine.
    let split = rest.len() / 2;
    let mut buf = BytesMut::from(&rest[..split]);
    for piece in [&rest[split..], &[][..]] {
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert_eq!(frame.tag.len(), format.width());
                    assert!(frame.payload.len() + format.width() <= codec.config().max_body());
                    assert!(buf.len() < before);
                }
                Ok(None) => break,
                Err(FrameError::FrameTooLarge { len, max }) => {
                    assert!(len > max);
                    return;
                }
                Err(FrameError::FrameTooShort { len, min }) => {
                    assert!(len < min);
                    return;
                }
                Err(e) => panic!("unexpected decode error {e:?}"),
            }
        }
        buf.extend_from_slice(piece);
    }
    let _ = codec.decode_eof(&mut buf);
});

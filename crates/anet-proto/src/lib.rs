//! The wire format of [anet]: length-prefixed, tag-multiplexed frames, byte for
//! byte compatible with the Go library `andrei-cloud/anet`.
//!
//! This crate is the format and nothing else: [`Frame`], [`Tag`], [`TagFormat`],
//! a [`FrameCodec`] for [`tokio_util::codec`], and two plain helpers
//! ([`write_frame`], [`read_frame`]) for code that does not use `Framed`.
//!
//! # The frame
//!
//! ```text
//! +----------------+---------------------+---------------------------+
//! | length (u16 BE)| tag (4 bytes, BE)   | payload (length - 4 bytes)|
//! +----------------+---------------------+---------------------------+
//!   2 bytes          \_______________ body: `length` bytes ________/
//! ```
//!
//! * `length` counts the body (tag + payload), not itself. It is 2 bytes by default
//!   (so a body is at most 65535 bytes) or 4 bytes when configured.
//! * `tag` is chosen by the client; the server echoes it at the start of its
//!   response, and responses may come back in any order. It is 4 binary bytes by
//!   default, or N ASCII characters ([`TagFormat::ascii`]) as HSM headers use.
//! * A body shorter than the tag, or a length over the maximum, is a protocol error
//!   ([`FrameError::FrameTooShort`], [`FrameError::FrameTooLarge`]).
//!
//! # Example
//!
//! ```
//! use anet_proto::{Frame, FrameCodec, Tag};
//! use bytes::BytesMut;
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! let mut codec = FrameCodec::new();
//! let mut buf = BytesMut::new();
//! codec.encode(Frame::new(Tag::from_u32(0x0102_0304), "hello"), &mut buf)?;
//! assert_eq!(&buf[..], b"\x00\x09\x01\x02\x03\x04hello");
//!
//! let frame = codec.decode(&mut buf)?.expect("a whole frame");
//! assert_eq!(frame.tag, Tag::from_u32(0x0102_0304));
//! assert_eq!(&frame.payload[..], b"hello");
//! # Ok::<(), anet_proto::FrameError>(())
//! ```
//!
//! With a socket, wrap it: `FrameCodec::builder().new_framed(stream)` gives a
//! `Stream` of [`Frame`]s and a `Sink` of frames.
//!
//! [anet]: https://docs.rs/anet

#![forbid(unsafe_code)]

mod codec;
mod error;
mod frame;
mod io;
mod tag;

pub use codec::{Builder, DEFAULT_MAX_FRAME_LENGTH, FrameCodec};
pub use error::FrameError;
pub use frame::{Frame, FrameRef};
pub use io::{read_frame, write_frame};
pub use tag::{MAX_TAG_LEN, Tag, TagFormat};

//! One frame: a tag and its payload.

use bytes::Bytes;

use crate::Tag;

/// A decoded (or to-be-encoded) frame: the tag and the payload that follows it.
///
/// When decoded by [`FrameCodec`](crate::FrameCodec), `payload` is a slice of the
/// read buffer, shared rather than copied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The request tag, echoed by the server in its response.
    pub tag: Tag,
    /// The user's bytes; may be empty.
    pub payload: Bytes,
}

impl Frame {
    /// A frame from a tag and anything that converts into [`Bytes`].
    pub fn new(tag: Tag, payload: impl Into<Bytes>) -> Frame {
        Frame {
            tag,
            payload: payload.into(),
        }
    }

    /// This frame borrowed as a [`FrameRef`].
    pub fn as_ref(&self) -> FrameRef<'_> {
        FrameRef {
            tag: self.tag,
            payload: &self.payload,
        }
    }
}

/// A frame whose payload is borrowed: encode from any byte slice without first
/// building a [`Bytes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRef<'a> {
    /// The request tag.
    pub tag: Tag,
    /// The payload bytes.
    pub payload: &'a [u8],
}

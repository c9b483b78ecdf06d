//! [`FrameCodec`] and its [`Builder`].

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{Decoder, Encoder, Framed};

use crate::{Frame, FrameError, FrameRef, Tag, TagFormat};

/// The largest body a 2-byte length field can describe, and the default maximum.
pub const DEFAULT_MAX_FRAME_LENGTH: usize = u16::MAX as usize;

/// Encodes and decodes anet frames for [`tokio_util::codec`].
///
/// Build one with [`FrameCodec::new`] (Go anet defaults) or [`FrameCodec::builder`].
/// The decoder is a two-state machine (`Head`, then `Body(len)`); a length over the
/// maximum or under the tag width is an error before any buffer is reserved for the
/// body. Decoded payloads are slices of the read buffer, never copied.
#[derive(Clone, Debug)]
pub struct FrameCodec {
    /// The settings this codec was built with.
    config: Builder,
    /// Where the decoder is inside the current frame.
    state: DecodeState,
}

#[derive(Clone, Copy, Debug)]
enum DecodeState {
    /// Waiting for the length field.
    Head,
    /// The length field has been consumed; waiting for a body of this many bytes.
    Body(usize),
}

impl FrameCodec {
    /// A codec with Go anet's defaults: 2-byte big-endian length, 4-byte binary tag,
    /// bodies up to 65535 bytes.
    pub fn new() -> FrameCodec {
        Builder::new().new_codec()
    }

    /// A builder to configure the length width, maximum body and tag format.
    pub const fn builder() -> Builder {
        Builder::new()
    }

    /// The settings this codec uses.
    pub fn config(&self) -> &Builder {
        &self.config
    }

    /// Whether decoding is inside a frame: its length has been read and its body
    /// is still awaited. The length is consumed from the buffer when it is read,
    /// so the read buffer can be empty in the middle of a frame; a read timeout
    /// for stalled frames should check this too.
    ///
    /// ```
    /// use anet_proto::FrameCodec;
    /// use bytes::BytesMut;
    /// use tokio_util::codec::Decoder;
    ///
    /// let mut codec = FrameCodec::new();
    /// let mut buf = BytesMut::from(&[0x00, 0x09][..]); // a 9-byte frame announced
    /// assert!(codec.decode(&mut buf).unwrap().is_none());
    /// assert!(buf.is_empty());
    /// assert!(codec.is_mid_frame());
    /// ```
    pub fn is_mid_frame(&self) -> bool {
        matches!(self.state, DecodeState::Body(_))
    }

    /// Appends one encoded frame (length, tag, payload) to `dst`, reserving the
    /// space once.
    ///
    /// # Errors
    ///
    /// [`FrameError::TagWidth`] when the tag does not have the configured width,
    /// [`FrameError::FrameTooLarge`] when tag + payload exceed the maximum.
    pub fn encode_parts(
        &self,
        tag: &Tag,
        payload: &[u8],
        dst: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let tag_len = self.config.tag_format.width();
        if tag.len() != tag_len {
            return Err(FrameError::TagWidth {
                len: tag.len(),
                expected: tag_len,
            });
        }
        let body = tag_len + payload.len();
        let max = self.config.max_body();
        if body > max {
            return Err(FrameError::FrameTooLarge { len: body, max });
        }
        let width = self.config.length_width as usize;
        dst.reserve(width + body);
        // `body <= max`, and `max` fits the length field by construction.
        dst.put_uint(body as u64, width);
        dst.put_slice(tag.as_bytes());
        dst.put_slice(payload);
        Ok(())
    }

    /// Checks a body length read from a length field against the limits.
    pub(crate) fn check_body_len(&self, len: usize) -> Result<(), FrameError> {
        let max = self.config.max_body();
        if len > max {
            return Err(FrameError::FrameTooLarge { len, max });
        }
        let min = self.config.tag_format.width();
        if len < min {
            return Err(FrameError::FrameTooShort { len, min });
        }
        Ok(())
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new()
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let len = match self.state {
            DecodeState::Head => {
                let width = self.config.length_width as usize;
                if src.len() < width {
                    return Ok(None);
                }
                let len = (&src[..width]).get_uint(width) as usize;
                self.check_body_len(len)?;
                src.advance(width);
                // Reserve the whole body ahead, so it arrives without regrowing.
                if src.len() < len {
                    src.reserve(len - src.len());
                }
                self.state = DecodeState::Body(len);
                len
            }
            DecodeState::Body(len) => len,
        };
        if src.len() < len {
            return Ok(None);
        }
        let tag_len = self.config.tag_format.width();
        let tag = Tag::from_slice(&src[..tag_len]).expect("tag width is at most MAX_TAG_LEN");
        src.advance(tag_len);
        let payload = src.split_to(len - tag_len).freeze();
        self.state = DecodeState::Head;
        Ok(Some(Frame { tag, payload }))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match self.decode(buf)? {
            Some(frame) => Ok(Some(frame)),
            None if buf.is_empty() && matches!(self.state, DecodeState::Head) => Ok(None),
            None => Err(FrameError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "stream ended inside a frame",
            ))),
        }
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_parts(&frame.tag, &frame.payload, dst)
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_parts(&frame.tag, &frame.payload, dst)
    }
}

impl Encoder<FrameRef<'_>> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: FrameRef<'_>, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode_parts(&frame.tag, frame.payload, dst)
    }
}

/// Settings for a [`FrameCodec`]; `Copy`, so one value can configure many
/// connections.
///
/// ```
/// use anet_proto::{FrameCodec, TagFormat};
///
/// // payShield-style: 2-byte length, 4 ASCII digits of header.
/// let codec = FrameCodec::builder()
///     .tag_format(TagFormat::ascii(4))
///     .new_codec();
/// assert_eq!(codec.config().max_body(), 65535);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Builder {
    /// Bytes in the length field: 2 or 4.
    length_width: u8,
    /// The largest body accepted or produced, before clamping to the length width.
    max_frame_length: usize,
    /// Layout of the tag at the start of the body.
    tag_format: TagFormat,
}

impl Builder {
    /// The default settings: 2-byte length, 65535-byte maximum body, 4-byte binary tag.
    pub const fn new() -> Builder {
        Builder {
            length_width: 2,
            max_frame_length: DEFAULT_MAX_FRAME_LENGTH,
            tag_format: TagFormat::BINARY_U32,
        }
    }

    /// Width of the big-endian length field in bytes: 2 (default) or 4.
    /// Applies to encoding and decoding.
    ///
    /// # Panics
    ///
    /// When `width` is neither 2 nor 4.
    pub const fn length_width(mut self, width: usize) -> Builder {
        assert!(width == 2 || width == 4, "length width must be 2 or 4");
        self.length_width = width as u8;
        self
    }

    /// The largest frame body (tag + payload) in bytes. Default: 65535. Applies to
    /// both directions: the encoder refuses a larger frame and the decoder treats a
    /// larger announced length as a protocol error. A value beyond what the length
    /// field can express is clamped to it (65535 for a 2-byte field).
    pub const fn max_frame_length(mut self, max: usize) -> Builder {
        self.max_frame_length = max;
        self
    }

    /// The tag layout. Default: [`TagFormat::BINARY_U32`] (4-byte big-endian, Go
    /// anet compatible). Applies to encoding and decoding.
    pub const fn tag_format(mut self, format: TagFormat) -> Builder {
        self.tag_format = format;
        self
    }

    /// The configured length-field width.
    pub const fn get_length_width(&self) -> usize {
        self.length_width as usize
    }

    /// The configured tag format.
    pub const fn get_tag_format(&self) -> TagFormat {
        self.tag_format
    }

    /// The effective maximum body length: the configured maximum, clamped to what
    /// the length field can express.
    pub const fn max_body(&self) -> usize {
        let field_max = if self.length_width == 2 {
            u16::MAX as usize
        } else {
            u32::MAX as usize
        };
        if self.max_frame_length < field_max {
            self.max_frame_length
        } else {
            field_max
        }
    }

    /// The largest payload a frame can carry: the maximum body less the tag.
    pub const fn max_payload(&self) -> usize {
        self.max_body().saturating_sub(self.tag_format.width())
    }

    /// A codec with these settings.
    pub fn new_codec(&self) -> FrameCodec {
        FrameCodec {
            config: *self,
            state: DecodeState::Head,
        }
    }

    /// `io` framed with a codec of these settings.
    pub fn new_framed<T: AsyncRead + AsyncWrite>(&self, io: T) -> Framed<T, FrameCodec> {
        Framed::new(io, self.new_codec())
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

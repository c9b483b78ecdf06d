//! Reading and writing single frames on any async byte stream, without `Framed`
//! (the equivalent of Go anet's `Write` and `Read`).

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{Frame, FrameCodec, FrameError, FrameRef, Tag};

/// Writes one frame to `io` and flushes it.
///
/// The frame is encoded into one buffer first, so it leaves in a single write when
/// the stream allows.
///
/// # Errors
///
/// The encoder's errors ([`FrameError::FrameTooLarge`], [`FrameError::TagWidth`])
/// before anything is written, or [`FrameError::Io`].
///
/// # Cancellation safety
///
/// Not cancellation safe: dropping the future part-way may leave half a frame on
/// the stream.
pub async fn write_frame<W>(
    io: &mut W,
    codec: &FrameCodec,
    frame: FrameRef<'_>,
) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = BytesMut::new();
    codec.encode_parts(&frame.tag, frame.payload, &mut buf)?;
    io.write_all(&buf).await?;
    io.flush().await?;
    Ok(())
}

/// Reads one frame from `io`.
///
/// Returns `Ok(None)` when the stream ends cleanly between frames.
///
/// # Errors
///
/// [`FrameError::FrameTooLarge`] or [`FrameError::FrameTooShort`] as soon as the
/// length field is read (nothing is allocated for such a body);
/// [`FrameError::Io`] with `UnexpectedEof` when the stream ends inside a frame.
///
/// # Cancellation safety
///
/// Not cancellation safe: dropping the future part-way loses the bytes read so far.
pub async fn read_frame<R>(io: &mut R, codec: &FrameCodec) -> Result<Option<Frame>, FrameError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let width = codec.config().get_length_width();
    let mut head = [0u8; 4];
    let mut filled = 0;
    while filled < width {
        let n = io.read(&mut head[filled..width]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(unexpected_eof());
        }
        filled += n;
    }
    let len = (&head[..width]).get_uint(width) as usize;
    codec.check_body_len(len)?;
    let mut body = BytesMut::zeroed(len);
    io.read_exact(&mut body).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            unexpected_eof()
        } else {
            FrameError::Io(e)
        }
    })?;
    let tag_len = codec.config().get_tag_format().width();
    let tag = Tag::from_slice(&body[..tag_len]).expect("tag width is at most MAX_TAG_LEN");
    body.advance(tag_len);
    Ok(Some(Frame {
        tag,
        payload: body.freeze(),
    }))
}

fn unexpected_eof() -> FrameError {
    FrameError::Io(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "stream ended inside a frame",
    ))
}

//! The driver's side of the transport: the read and write buffers, framing
//! (the codec and the tag format), and the read-stall clock.

use std::{
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use anet_proto::{Frame, FrameCodec, FrameError, TagFormat};
use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::Instant,
};
use tokio_util::{
    codec::Decoder,
    io::{poll_read_buf, poll_write_buf},
};

use crate::{Error, Kind, client::connection::ConnectionConfig, time::later};

/// Initial capacity of the read and write buffers.
const BUFFER_CAPACITY: usize = 64 * 1024;

/// Room made in the read buffer before a read, so reads are never tiny.
const MIN_READ: usize = 4 * 1024;

/// The transport with its buffers: requests are encoded into one write buffer
/// and flushed together; responses are decoded from one read buffer and split
/// off it (no copy).
pub(super) struct Wire<T> {
    io: T,
    /// Bytes read and not yet decoded; decoded payloads are split off it (no copy).
    read_buf: BytesMut,
    /// Encoded requests not yet written.
    write_buf: BytesMut,
    /// Encodes requests straight into the write buffer.
    encoder: FrameCodec,
    /// Decodes responses (it keeps the state of a frame in progress).
    decoder: FrameCodec,
    /// Turns table slot ids into tags and back.
    tags: TagFormat,
    /// Encoded bytes past which the buffer is flushed before encoding more.
    write_limit: usize,
    /// The write buffer holds frames not yet flushed.
    pub(super) dirty: bool,
    /// Bytes written to the transport since the connection began: with the
    /// write buffer's length, where each encoded request ends in the stream.
    written: u64,
    /// How long a started response frame may take to complete.
    read_timeout: Option<Duration>,
    /// When the incomplete frame at the end of the read buffer started (reset
    /// whenever a frame completes).
    partial_since: Option<Instant>,
}

impl<T> Wire<T>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    pub(super) fn new(io: T, config: &ConnectionConfig) -> Wire<T> {
        let encoder = config.frame.new_codec();
        Wire {
            io,
            read_buf: BytesMut::with_capacity(BUFFER_CAPACITY),
            write_buf: BytesMut::with_capacity(BUFFER_CAPACITY),
            decoder: encoder.clone(),
            encoder,
            tags: config.frame.get_tag_format(),
            write_limit: config.write_buffer.max(1),
            dirty: false,
            written: 0,
            read_timeout: config.read_timeout,
            partial_since: None,
        }
    }

    /// The tag format (how many slot ids it can number).
    pub(super) fn tags(&self) -> TagFormat {
        self.tags
    }

    /// The write buffer has reached its limit: flush before encoding more.
    #[inline]
    pub(super) fn is_full(&self) -> bool {
        self.write_buf.len() >= self.write_limit
    }

    /// Encodes the request of table slot `id` into the write buffer.
    #[inline]
    pub(super) fn encode(&mut self, id: u64, payload: &Bytes) -> Result<(), FrameError> {
        let tag = self.tags.encode_id(id);
        self.encoder
            .encode_parts(&tag, payload, &mut self.write_buf)?;
        self.dirty = true;
        Ok(())
    }

    /// Where the bytes encoded so far end in the outgoing stream (a request
    /// just encoded ends here).
    #[inline]
    pub(super) fn encoded_end(&self) -> u64 {
        self.written + self.write_buf.len() as u64
    }

    /// Bytes written to the transport so far, or `None` when every encoded
    /// byte has been.
    #[inline]
    pub(super) fn written_if_pending(&self) -> Option<u64> {
        (!self.write_buf.is_empty()).then_some(self.written)
    }

    /// Writes the whole write buffer, then flushes the transport.
    pub(super) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        while !self.write_buf.is_empty() {
            let n = ready!(poll_write_buf(
                Pin::new(&mut self.io),
                cx,
                &mut self.write_buf
            ))?;
            self.written += n as u64;
            if n == 0 {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "transport accepted no bytes",
                )
                .into()));
            }
        }
        ready!(Pin::new(&mut self.io).poll_flush(cx))?;
        self.dirty = false;
        Poll::Ready(Ok(()))
    }

    /// Decodes every response that is ready, handing each to `on_frame` with
    /// the table slot id its tag names (`None`: not a tag this connection
    /// issues), and reads until the transport has nothing more. `Ok(true)` when a frame
    /// was decoded; the error is the connection's failure.
    #[inline]
    pub(super) fn poll_read(
        &mut self,
        cx: &mut Context<'_>,
        mut on_frame: impl FnMut(Option<u64>, Frame),
    ) -> Result<bool, Error> {
        let mut completed = false;
        let result = loop {
            match self.decoder.decode(&mut self.read_buf) {
                Ok(Some(frame)) => {
                    completed = true;
                    on_frame(self.tags.decode_id(&frame.tag), frame);
                    continue;
                }
                Ok(None) => {}
                Err(e) if e.is_protocol() => {
                    tracing::warn!(error = %e, "peer broke the protocol; closing connection");
                    break Err(Error::with_source(Kind::Protocol, e));
                }
                Err(e) => break Err(lost(e)),
            }
            if self.read_buf.capacity() - self.read_buf.len() < MIN_READ {
                self.read_buf.reserve(MIN_READ);
            }
            match poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read_buf) {
                Poll::Ready(Ok(0)) => {
                    let why = if self.mid_frame() {
                        "connection closed by peer inside a response"
                    } else {
                        "connection closed by peer"
                    };
                    break Err(Error::with_source(Kind::ConnectionLost, why));
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => break Err(lost(e.into())),
                Poll::Pending => break Ok(completed),
            }
        };
        if self.read_timeout.is_some() {
            if !self.mid_frame() {
                self.partial_since = None;
            } else if completed || self.partial_since.is_none() {
                self.partial_since = Some(Instant::now());
            }
        }
        result
    }

    /// When the response frame in progress has stalled past the read timeout.
    #[inline]
    pub(super) fn stall_deadline(&self) -> Option<Instant> {
        self.read_timeout
            .zip(self.partial_since)
            .map(|(t, s)| later(s, t))
    }

    /// A response has started arriving and is not complete (its length may
    /// already be consumed from the buffer).
    fn mid_frame(&self) -> bool {
        !self.read_buf.is_empty() || self.decoder.is_mid_frame()
    }
}

/// The transport failed.
pub(super) fn lost(e: FrameError) -> Error {
    Error::with_source(Kind::ConnectionLost, e)
}

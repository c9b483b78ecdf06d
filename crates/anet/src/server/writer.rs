//! The write half of a served connection: responses queued in order, small
//! ones copied into one buffer (many per write), large payloads written from
//! their own `Bytes` without a copy.

use std::{
    collections::VecDeque,
    io::{self, IoSlice},
    pin::Pin,
    task::{Context, Poll, ready},
};

use anet_proto::{FrameCodec, FrameError, MAX_TAG_LEN, Tag};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWrite;

/// Payloads over this many bytes are queued as they are rather than copied.
const COPY_MAX: usize = 4 * 1024;
/// Buffer capacity kept once everything is written; a larger buffer (grown by
/// many responses) is freed, so idle connections hold little.
const KEEP: usize = 16 * 1024;
/// The most a freed buffer is allocated with again at once (see
/// `Writer::last_flush`).
const MAX_LAST_FLUSH: usize = 64 * 1024;
/// Slices handed to one vectored write at most.
const MAX_SLICES: usize = 16;

/// Responses not yet written, in order: `segments`, then `buf[written..]`.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    /// Small responses and the headers of large ones. Never advanced (the
    /// written prefix is counted by `written`), so its capacity is its
    /// allocation; cleared once everything is written.
    buf: BytesMut,
    written: usize,
    /// Earlier bytes queued before `buf`: staged small responses and large
    /// payloads.
    segments: VecDeque<Bytes>,
    segment_bytes: usize,
    /// What the buffer held at its last flush: the room a freed buffer is
    /// allocated with again, so that a burst like the last one grows it once
    /// rather than doubling it from a frame's size (with a copy each time).
    last_flush: usize,
}

impl Writer {
    /// Bytes waiting to be written.
    pub(crate) fn unwritten(&self) -> usize {
        self.segment_bytes + self.buf.len() - self.written
    }

    /// Memory to charge to the server-wide budget: the queued segments, and
    /// the buffer's allocation once it has grown past what every connection
    /// keeps.
    pub(crate) fn charge(&self) -> u64 {
        let capacity = self.buf.capacity();
        let buffer = if capacity > KEEP { capacity } else { 0 };
        (self.segment_bytes + buffer) as u64
    }

    /// Queues one response frame.
    #[inline]
    pub(crate) fn push(
        &mut self,
        encoder: &FrameCodec,
        tag: &Tag,
        payload: Bytes,
    ) -> Result<(), FrameError> {
        let config = encoder.config();
        let tag_len = config.get_tag_format().width();
        if tag.len() != tag_len {
            // The encoder reports the tag width error.
            return encoder.encode_parts(tag, &[], &mut BytesMut::new());
        }
        let body = tag_len + payload.len();
        let max = config.max_body();
        if body > max {
            return Err(FrameError::FrameTooLarge { len: body, max });
        }
        // The length field and the tag, written as one slice.
        let mut head = [0; 8 + MAX_TAG_LEN];
        let width = config.get_length_width();
        match width {
            // `body <= max`, and `max` fits the length field by construction.
            2 => head[..2].copy_from_slice(&(body as u16).to_be_bytes()),
            4 => head[..4].copy_from_slice(&(body as u32).to_be_bytes()),
            _ => head[..width].copy_from_slice(&(body as u64).to_be_bytes()[8 - width..]),
        }
        match tag.as_bytes().first_chunk::<4>() {
            Some(word) if tag_len == 4 => head[width..width + 4].copy_from_slice(word),
            _ => head[width..width + tag_len].copy_from_slice(tag.as_bytes()),
        }
        let head_len = width + tag_len;
        if payload.len() <= COPY_MAX {
            let need = head_len + payload.len();
            if self.buf.capacity() == 0 {
                self.buf.reserve(need.max(self.last_flush));
            }
            self.buf.reserve(need);
            match head.first_chunk::<6>() {
                // The default widths (2 and 4): a copy of known size.
                Some(six) if head_len == 6 => self.buf.extend_from_slice(six),
                _ => self.buf.extend_from_slice(&head[..head_len]),
            }
            self.buf.extend_from_slice(&payload);
            return Ok(());
        }
        let head = &head[..head_len];
        self.buf.extend_from_slice(head);
        let staged = Bytes::copy_from_slice(&self.buf[self.written..]);
        self.buf.clear();
        self.written = 0;
        self.segment_bytes += staged.len() + payload.len();
        self.segments.push_back(staged);
        self.segments.push_back(payload);
        Ok(())
    }

    /// Writes everything queued and flushes `io`.
    pub(crate) fn poll_flush<T: AsyncWrite + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), FrameError>> {
        while self.unwritten() > 0 {
            let n = if self.segments.is_empty() {
                ready!(Pin::new(&mut *io).poll_write(cx, &self.buf[self.written..]))?
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let mut count = 0;
                for segment in self.segments.iter().take(MAX_SLICES - 1) {
                    slices[count] = IoSlice::new(segment);
                    count += 1;
                }
                if count == self.segments.len() && self.written < self.buf.len() {
                    slices[count] = IoSlice::new(&self.buf[self.written..]);
                    count += 1;
                }
                ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?
            };
            if n == 0 {
                return Poll::Ready(Err(FrameError::Io(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "failed to write responses",
                ))));
            }
            self.consume(n);
        }
        self.last_flush = self.buf.len().min(MAX_LAST_FLUSH);
        self.buf.clear();
        self.written = 0;
        if self.buf.capacity() > KEEP {
            self.buf = BytesMut::new();
        }
        ready!(Pin::new(io).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    /// Holds an allocation [`release`](Self::release) would free.
    pub(crate) fn holds_buffer(&self) -> bool {
        self.buf.capacity() > 0 || self.segments.capacity() > 0
    }

    /// With nothing left to write, frees the buffer and the queue (the
    /// connection is idle).
    pub(crate) fn release(&mut self) {
        if self.unwritten() > 0 {
            return;
        }
        self.buf = BytesMut::new();
        self.written = 0;
        self.segments = VecDeque::new();
        self.last_flush = 0;
    }

    /// Drops `n` written bytes from the front.
    fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.segments.front_mut() else {
                self.written += n;
                return;
            };
            let take = n.min(front.len());
            front.advance(take);
            self.segment_bytes -= take;
            n -= take;
            if front.is_empty() {
                self.segments.pop_front();
            }
        }
    }
}

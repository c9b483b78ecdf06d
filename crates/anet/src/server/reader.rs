//! Reading request frames under the server-wide budget.
//!
//! ```text
//!  length ──► budget (Lease::poll_acquire) ──► body
//!             pending: stop reading            small, whole in the buffer: copied out
//!                                              large (> 1 KiB): read into its own buffer
//!                                              of the body's exact size
//! ```
//!
//! The read buffer is never shared with a payload, so a request held by a slow
//! handler keeps only its own bytes alive. It is allocated only when needed:
//! while it is released (as it is on a new connection, and again whenever the
//! connection goes idle holding no input, see [`Reader::release`]), a read goes
//! into a [`Scratch`] on the caller's stack, the whole frames in it are taken
//! from there, and only what is left (a partial frame, or frames the
//! connection cannot start yet) is moved into the read buffer. So an idle
//! connection holds no read buffer, and one that receives whole frames (one
//! request at a time, or a burst that fits the scratch) never allocates one.
//!
//! Once allocated, it starts at 4 KiB, doubles (up to 64 KiB) when a read fills
//! it with small frames, and shrinks when its connection waits for the budget:
//! to 4 KiB, or to the size of the small requests already received in it (not
//! charged until their turn; up to 64 KiB), so a waiting connection keeps no
//! empty room.

use std::{
    io,
    mem::MaybeUninit,
    pin::Pin,
    task::{Context, Poll, ready},
};

use anet_proto::{Builder as FrameBuilder, Frame, FrameError, Tag};
use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::io::poll_read_buf;

use super::budget::Lease;

/// The read buffer's size to start with, and again once its connection waits
/// for the budget.
pub(crate) const READ_BUFFER: usize = 4 * 1024;
/// The most the read buffer grows to while reads fill it with small frames
/// (many requests pipelined at once: fewer reads).
pub(crate) const MAX_READ_BUFFER: usize = 64 * 1024;
/// Bodies over this many bytes not yet whole in the read buffer are read into
/// their own buffer of exact size.
const DIRECT_BODY: usize = 1024;
/// Room a waiting connection's read buffer may keep beyond what it holds (or
/// 4 KiB), so that it is not copied again at every wake-up.
const SHRINK_SLACK: usize = 2 * 1024;
/// Spare room in the read buffer below which it is compacted before a read.
const MIN_SPARE: usize = 512;
/// The size of a [`Scratch`]: what one read takes while the read buffer is
/// released.
pub(crate) const SCRATCH: usize = 4 * 1024;

/// Stack room for a [`Scratch`], left uninitialised (nothing to zero).
pub(crate) type ScratchStorage = [MaybeUninit<u8>; SCRATCH];

/// An empty [`ScratchStorage`].
pub(crate) const fn scratch_storage() -> ScratchStorage {
    [MaybeUninit::uninit(); SCRATCH]
}

/// Bytes read while the read buffer is released, on the caller's stack: they
/// live for one pass of the caller, which hands what is left to
/// [`Reader::spill`] before it returns.
#[derive(Debug)]
pub(crate) struct Scratch<'a> {
    /// The bytes read (`filled`), of which `start..` are not consumed.
    buf: ReadBuf<'a>,
    start: usize,
}

impl<'a> Scratch<'a> {
    pub(crate) fn new(storage: &'a mut ScratchStorage) -> Scratch<'a> {
        Scratch {
            buf: ReadBuf::uninit(storage),
            start: 0,
        }
    }

    #[inline]
    fn data(&self) -> &[u8] {
        &self.buf.filled()[self.start..]
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.start == self.buf.filled().len()
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }
}

/// The read half of a served connection's framing.
#[derive(Debug)]
pub(crate) struct Reader {
    /// Bytes received and not consumed yet; no allocation while released
    /// (empty, no capacity): reads then go into the caller's [`Scratch`].
    buf: BytesMut,
    /// Bytes at the front of `buf` already consumed: frames are taken by
    /// moving this cursor, and `buf` is advanced past them once, before it
    /// is read into or resized (or cleared when all of it is consumed).
    pos: usize,
    /// The body length of the frame being read, once its length field is
    /// consumed.
    body_len: Option<usize>,
    /// The budget for that body has been taken.
    granted: bool,
    /// A large body being read straight into its own buffer.
    body: Option<BytesMut>,
    length_width: usize,
    max_body: usize,
    tag_len: usize,
    /// The size the buffer is kept at now.
    target: usize,
    /// The last read filled the buffer's free room.
    filled: bool,
}

impl Reader {
    pub(crate) fn new(frame: &FrameBuilder) -> Reader {
        Reader {
            buf: BytesMut::new(),
            pos: 0,
            body_len: None,
            granted: false,
            body: None,
            length_width: frame.get_length_width(),
            max_body: frame.max_body(),
            tag_len: frame.get_tag_format().width(),
            target: READ_BUFFER,
            filled: false,
        }
    }

    /// A frame has started arriving and is not complete.
    pub(crate) fn mid_frame(&self) -> bool {
        self.buf.len() > self.pos || self.body_len.is_some()
    }

    /// Holds bytes of a request (in the buffer or a length read).
    pub(crate) fn holds_input(&self) -> bool {
        self.mid_frame()
    }

    /// Waiting for the budget for a frame whose length has been read.
    pub(crate) fn awaits_budget(&self) -> bool {
        self.body_len.is_some() && !self.granted
    }

    /// The next frame, taking the budget for it first. With `socket` false,
    /// nothing is read from `io` and `Ready(Ok(None))` means no whole frame is
    /// left in the buffer; otherwise `Ready(Ok(None))` is the end of input.
    ///
    /// Bytes may be left in `scratch`: the caller hands them to
    /// [`spill`](Self::spill) before it returns.
    ///
    /// The frame's charge (its body length) is the caller's to give back.
    #[inline]
    pub(crate) fn poll_frame<T: AsyncRead + Unpin>(
        &mut self,
        io: &mut T,
        lease: &mut Lease,
        cx: &mut Context<'_>,
        socket: bool,
        scratch: &mut Scratch<'_>,
    ) -> Poll<Result<Option<Frame>, FrameError>> {
        if let Some(frame) = self.next_whole(lease, scratch) {
            return Poll::Ready(Ok(Some(frame)));
        }
        self.poll_frame_at_length(io, lease, cx, socket, scratch)
    }

    /// The common case of [`poll_frame`](Self::poll_frame), kept small enough
    /// to inline: a small frame whole in the input, charged without a wait
    /// (see [`Lease::try_take`]). `None` leaves everything as it was, for the
    /// general path.
    #[inline]
    fn next_whole(&mut self, lease: &mut Lease, scratch: &mut Scratch<'_>) -> Option<Frame> {
        if self.body_len.is_some() {
            return None;
        }
        let width = self.length_width;
        let input = self.input(scratch);
        let len = (&input.get(..width)?[..]).get_uint(width) as usize;
        if len > DIRECT_BODY || len > self.max_body || len < self.tag_len {
            // Large, or an error the general path reports.
            return None;
        }
        let body = input.get(width..width + len)?;
        if !lease.try_take(len as u64) {
            return None;
        }
        let tag = self.tag(body);
        let payload = self.payload(body);
        if std::mem::take(&mut self.filled) {
            // A read filled the buffer with small frames: read more at once.
            self.target = (self.target * 2).min(MAX_READ_BUFFER);
        }
        self.consume(scratch, width + len);
        Some(Frame::new(tag, payload))
    }

    /// [`poll_frame`](Self::poll_frame) past its common case.
    fn poll_frame_at_length<T: AsyncRead + Unpin>(
        &mut self,
        io: &mut T,
        lease: &mut Lease,
        cx: &mut Context<'_>,
        socket: bool,
        scratch: &mut Scratch<'_>,
    ) -> Poll<Result<Option<Frame>, FrameError>> {
        loop {
            let len = match self.body_len {
                Some(len) => len,
                None => {
                    let width = self.length_width;
                    let input = self.input(scratch);
                    if input.len() < width {
                        if !socket {
                            return Poll::Ready(Ok(None));
                        }
                        if ready!(self.fill(io, cx, scratch))? == 0 {
                            return Poll::Ready(if self.input(scratch).is_empty() {
                                Ok(None)
                            } else {
                                Err(eof())
                            });
                        }
                        continue;
                    }
                    let len = (&input[..width]).get_uint(width) as usize;
                    self.check_body_len(len)?;
                    if std::mem::take(&mut self.filled) && len <= DIRECT_BODY {
                        // A read filled the buffer with small frames: read
                        // more at once.
                        self.target = (self.target * 2).min(MAX_READ_BUFFER);
                    }
                    self.consume(scratch, width);
                    self.body_len = Some(len);
                    self.granted = false;
                    len
                }
            };
            if !self.granted {
                if lease.poll_acquire(len as u64, cx).is_pending() {
                    self.spill(scratch);
                    self.shrink();
                    return Poll::Pending;
                }
                self.granted = true;
            }
            if let Some(body) = &mut self.body {
                if body.len() < len {
                    if !socket {
                        return Poll::Ready(Ok(None));
                    }
                    if ready!(poll_read_buf(Pin::new(&mut *io), cx, body))? == 0 {
                        return Poll::Ready(Err(eof()));
                    }
                    continue;
                }
                let mut body = self.body.take().expect("body is some");
                let tag = self.tag(&body);
                body.advance(self.tag_len);
                return Poll::Ready(Ok(Some(self.done(tag, body.freeze()))));
            }
            let input = self.input(scratch);
            if input.len() >= len {
                let tag = self.tag(input);
                let payload = self.payload(&input[..len]);
                self.consume(scratch, len);
                return Poll::Ready(Ok(Some(self.done(tag, payload))));
            }
            if !socket {
                return Poll::Ready(Ok(None));
            }
            if len > DIRECT_BODY {
                let mut body = BytesMut::with_capacity(len);
                body.extend_from_slice(input);
                let n = input.len();
                self.consume(scratch, n);
                self.body = Some(body);
                continue;
            }
            if ready!(self.fill(io, cx, scratch))? == 0 {
                return Poll::Ready(Err(eof()));
            }
        }
    }

    /// The bytes received and not consumed: in `scratch` if it holds any (the
    /// buffer is then empty), else in the buffer.
    #[inline]
    fn input<'s>(&'s self, scratch: &'s Scratch<'_>) -> &'s [u8] {
        if scratch.is_empty() {
            &self.buf[self.pos..]
        } else {
            scratch.data()
        }
    }

    /// Consumes `n` bytes of [`input`](Self::input).
    #[inline]
    fn consume(&mut self, scratch: &mut Scratch<'_>, n: usize) {
        if scratch.is_empty() {
            self.pos += n;
            if self.pos == self.buf.len() {
                self.buf.clear();
                self.pos = 0;
            }
        } else {
            scratch.start += n;
        }
    }

    /// Moves what `scratch` still holds into the buffer (allocating it), so
    /// that it outlives the caller's pass.
    pub(crate) fn spill(&mut self, scratch: &mut Scratch<'_>) {
        if scratch.is_empty() {
            return;
        }
        self.settle();
        let data = scratch.data();
        self.buf.reserve(self.target.max(data.len()));
        self.buf.extend_from_slice(data);
        scratch.clear();
    }

    /// Frees the read buffer when it holds nothing and no frame is under way
    /// (the connection waits for input): reads go into the caller's scratch
    /// until bytes must be kept again.
    pub(crate) fn release(&mut self) {
        if self.buf.capacity() > 0 && !self.mid_frame() && self.body.is_none() {
            self.buf = BytesMut::new();
            self.pos = 0;
            self.target = READ_BUFFER;
        }
    }

    /// When a close is asked: one last read into the buffer (none while a
    /// large body is being read: it completes only from the socket, which is
    /// read no more).
    pub(crate) fn read_last<T: AsyncRead + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<Result<usize, FrameError>> {
        if self.body.is_some() {
            return Poll::Ready(Ok(0));
        }
        self.fill_buffer(io, cx)
    }

    /// One read from the socket; the bytes read. Into `scratch` while the
    /// buffer is released and `scratch` holds nothing; else into the buffer
    /// (after moving there what `scratch` holds: the frame it starts needs
    /// these bytes).
    fn fill<T: AsyncRead + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
        scratch: &mut Scratch<'_>,
    ) -> Poll<Result<usize, FrameError>> {
        if scratch.is_empty() && self.buf.capacity() == 0 {
            scratch.clear();
            ready!(Pin::new(io).poll_read(cx, &mut scratch.buf))?;
            let n = scratch.buf.filled().len();
            self.filled = n == SCRATCH;
            return Poll::Ready(Ok(n));
        }
        self.spill(scratch);
        self.fill_buffer(io, cx)
    }

    /// One read from the socket into the buffer; the bytes read.
    fn fill_buffer<T: AsyncRead + Unpin>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<Result<usize, FrameError>> {
        self.settle();
        if self.buf.capacity() - self.buf.len() < MIN_SPARE || self.buf.capacity() < self.target {
            // What is left is at most a length field or a small body: this
            // moves it to the front rather than growing the buffer (unless
            // the target grew).
            self.buf.reserve(self.target.saturating_sub(self.buf.len()));
        }
        let room = self.buf.capacity() - self.buf.len();
        let n = ready!(poll_read_buf(Pin::new(io), cx, &mut self.buf))?;
        self.filled = n == room;
        Poll::Ready(Ok(n))
    }

    /// Back to a small buffer while the connection waits for the budget: 4 KiB,
    /// or just the size of what it holds (received requests not charged yet)
    /// when that is more; never more than [`SHRINK_SLACK`] above that.
    fn shrink(&mut self) {
        self.settle();
        self.target = READ_BUFFER;
        let size = self.buf.len().max(READ_BUFFER);
        if self.buf.capacity() > size + SHRINK_SLACK {
            let mut small = BytesMut::with_capacity(size);
            small.extend_from_slice(&self.buf);
            self.buf = small;
        }
    }

    /// Drops the consumed bytes from the front of the buffer.
    fn settle(&mut self) {
        if self.pos > 0 {
            self.buf.advance(self.pos);
            self.pos = 0;
        }
    }

    /// A copy of `body`'s payload (what follows its tag), from a box: one
    /// allocation of the exact size (what `copy_from_slice` does, with fewer
    /// steps), so that a kept payload does not pin the read buffer.
    #[inline]
    fn payload(&self, body: &[u8]) -> Bytes {
        Bytes::from(Box::<[u8]>::from(&body[self.tag_len..]))
    }

    #[inline]
    fn tag(&self, body: &[u8]) -> Tag {
        if let Some(&word) = body.first_chunk::<4>().filter(|_| self.tag_len == 4) {
            // The default width, without a copy of unknown length.
            return Tag::from_u32(u32::from_be_bytes(word));
        }
        Tag::from_slice(&body[..self.tag_len]).expect("tag width is at most MAX_TAG_LEN")
    }

    fn done(&mut self, tag: Tag, payload: Bytes) -> Frame {
        self.body_len = None;
        self.granted = false;
        Frame::new(tag, payload)
    }

    fn check_body_len(&self, len: usize) -> Result<(), FrameError> {
        if len > self.max_body {
            return Err(FrameError::FrameTooLarge {
                len,
                max: self.max_body,
            });
        }
        if len < self.tag_len {
            return Err(FrameError::FrameTooShort {
                len,
                min: self.tag_len,
            });
        }
        Ok(())
    }
}

fn eof() -> FrameError {
    FrameError::Io(io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "stream ended inside a frame",
    ))
}

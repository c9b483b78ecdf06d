//! Serving one connection: read frames, call the service concurrently, write
//! responses in completion order.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use anet_proto::{Frame, FrameCodec, FrameError, Tag};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    time::{Instant, Sleep},
};
use tokio_util::sync::WaitForCancellationFutureOwned;
use tower::Service;

use super::{
    Builder, OnError, Request,
    admission::Activity,
    budget::Lease,
    call::{Call, Observed, Outcome},
    calls::CallSet,
    reader::{Reader, Scratch, scratch_storage},
    stats::Counters,
    writer::Writer,
};
use crate::time::later;
use crate::{BoxError, observe};

/// Unflushed response bytes past which a connection stops reading requests.
const WRITE_BUFFER_LIMIT: usize = 256 * 1024;

/// The name of the first-frame timeout in logs.
const FIRST_FRAME: &str = "first frame";

/// How long a connection stays idle before it frees its write buffer and call
/// slots.
const RELEASE_AFTER: Duration = Duration::from_millis(500);
/// The name of that deadline among the timeouts (it closes nothing).
const RELEASE: &str = "release";

/// Why a connection ended.
#[derive(Debug)]
enum Exit {
    /// Finished cleanly: input done and answered, or closed on a service error.
    Done,
    Io(FrameError),
    Protocol(FrameError),
    Timeout(&'static str),
    ServiceFailed(BoxError),
}

impl Exit {
    fn from_frame_error(e: FrameError) -> Exit {
        if e.is_protocol() {
            Exit::Protocol(e)
        } else {
            Exit::Io(e)
        }
    }
}

/// Why a call ended without a response to write.
enum Failure<E> {
    /// The response does not fit a frame (too large).
    Unframed(FrameError),
    /// The service failed the request.
    Service(E),
    /// The handler panicked (the panic's message).
    Panicked(String),
}

/// How the last pass of reading ended, for the read timeout.
#[derive(Debug, Default)]
struct Reading {
    /// Stopped by the window, the write buffer, the service or the budget.
    paused: bool,
    /// At least one frame completed.
    completed: bool,
}

#[derive(Debug, Default)]
struct Unpublished {
    requests: u64,
    responses: u64,
}

/// The state of one served connection.
pub(crate) struct Handler<T, S>
where
    S: Service<Request>,
{
    io: T,
    /// Reads request frames, taking the server-wide budget for each.
    reader: Reader,
    /// Responses not yet written to the socket.
    writer: Writer,
    /// What this connection holds of the server-wide budget.
    lease: Lease,
    /// Encodes responses straight into the write buffer.
    encoder: FrameCodec,
    /// The tag width, to know a request's charge (its body) from its payload.
    tag_len: u64,
    service: S,
    /// `poll_ready` said yes and no request has used it yet.
    service_ready: bool,
    /// The calls in flight, in reusable slots (no allocation per call).
    calls: CallSet<Call<S::Future>>,
    peer: Option<SocketAddr>,
    /// Shared by the server's connections (one pointer each).
    config: Arc<Builder>,
    counters: Arc<Counters>,
    /// Completes when the server shuts down or the accept loop evicts this
    /// connection.
    shutdown: Pin<Box<WaitForCancellationFutureOwned>>,
    /// A close was asked (shutdown or eviction): read nothing more from the
    /// socket, start the requests already received, finish what is in flight.
    draining: bool,
    /// While draining: a request read (and charged) but not started yet (the
    /// service was not ready). Unused otherwise.
    received: Option<Box<Frame>>,
    /// No more requests will be started (the peer closed its sending side, or
    /// draining started every request it had received): finish what is in
    /// flight.
    input_done: bool,
    /// A service error asked for the connection to close after flushing.
    closing: bool,
    /// Finished calls were left unpolled because the write buffer was full.
    calls_blocked: bool,
    dirty: bool,
    timer: Pin<Box<Sleep>>,
    timer_deadline: Option<Instant>,
    last_active: Instant,
    /// Request and response counts not yet added to the shared counters; published
    /// once per wake-up rather than once per request.
    unpublished: Unpublished,
    partial_since: Option<Instant>,
    /// How the last pass of reading ended.
    reading: Reading,
    write_blocked_since: Option<Instant>,
    /// When the handler started: the first-frame timeout counts from here
    /// (moved later by the time spent waiting for the budget).
    started: Instant,
    /// Since when the first frame waits for the server-wide budget.
    first_frame_paused_since: Option<Instant>,
    /// A complete frame has been read (the first-frame timeout no longer applies).
    framed_once: bool,
    /// Shared with the accept loop, which evicts idle connections at the limit.
    activity: Arc<Activity>,
    /// The word last stored in `activity`, so it is stored only when it changes.
    published_activity: u64,
    /// Metric handles (feature `metrics`).
    metrics: observe::ServerMetrics,
}

impl<T, S> Handler<T, S>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request, Response = bytes::Bytes>,
    S::Error: Into<BoxError>,
{
    pub(crate) fn new(
        io: T,
        peer: Option<SocketAddr>,
        service: S,
        config: Arc<Builder>,
        counters: Arc<Counters>,
        activity: Arc<Activity>,
        shutdown: WaitForCancellationFutureOwned,
    ) -> Self {
        let encoder = config.frame.new_codec();
        let now = Instant::now();
        Handler {
            io,
            reader: Reader::new(&config.frame),
            writer: Writer::default(),
            lease: Lease::new(counters.clone()),
            tag_len: config.frame.get_tag_format().width() as u64,
            encoder,
            service,
            service_ready: false,
            calls: CallSet::new(),
            peer,
            config,
            counters,
            shutdown: Box::pin(shutdown),
            draining: false,
            received: None,
            input_done: false,
            closing: false,
            calls_blocked: false,
            dirty: false,
            timer: Box::pin(tokio::time::sleep_until(now)),
            timer_deadline: None,
            last_active: now,
            unpublished: Unpublished::default(),
            partial_since: None,
            reading: Reading::default(),
            write_blocked_since: None,
            started: now,
            first_frame_paused_since: None,
            framed_once: false,
            published_activity: {
                let word = activity.encode(false, false, now);
                activity.store(word);
                word
            },
            activity,
            metrics: observe::ServerMetrics::new(),
        }
    }

    /// Serves the connection until it ends.
    ///
    /// A hand-polled future holding the handler once (an `async fn` taking
    /// `self` would hold it twice: as its argument and as its local), so an
    /// idle connection's task stays small.
    pub(crate) fn run(mut self) -> impl Future<Output = ()> {
        let mut closing = false;
        std::future::poll_fn(move |cx| {
            if !closing {
                let exit = ready!(self.poll_drive(cx));
                self.log_exit(&exit);
                if !matches!(exit, Exit::Done) {
                    return Poll::Ready(());
                }
                // Best effort: tell the peer we are done writing, within a
                // second.
                closing = true;
                self.timer
                    .as_mut()
                    .reset(Instant::now() + Duration::from_secs(1));
            }
            if Pin::new(&mut self.io).poll_shutdown(cx).is_ready()
                || self.timer.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(());
            }
            Poll::Pending
        })
    }

    /// Logs and counts why the connection ended.
    fn log_exit(&self, exit: &Exit) {
        let peer = self.peer;
        match exit {
            Exit::Done => tracing::debug!(?peer, "connection done"),
            Exit::Io(e) => tracing::debug!(?peer, error = %e, "connection i/o ended"),
            Exit::Protocol(e) => {
                Counters::add(&self.counters.protocol_errors, 1);
                crate::observe::server_protocol_error();
                tracing::warn!(?peer, error = %e, "client broke the protocol; closing connection");
            }
            Exit::Timeout(which) => {
                Counters::add(&self.counters.timeouts, 1);
                if *which == FIRST_FRAME {
                    Counters::add(&self.counters.first_frame_timeouts, 1);
                }
                tracing::info!(?peer, timeout = which, "closing connection");
            }
            Exit::ServiceFailed(e) => {
                tracing::warn!(?peer, error = %e, "service failed readiness; closing connection");
            }
        }
    }

    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<Exit> {
        let poll = self.poll_work(cx);
        self.publish();
        self.publish_activity();
        poll
    }

    /// Adds the batched request and response counts to the shared counters. Called
    /// before responses are flushed too, so a client never sees a response before
    /// the server's stats count it.
    fn publish(&mut self) {
        let counts = std::mem::take(&mut self.unpublished);
        Counters::add(&self.counters.requests, counts.requests);
        Counters::add(&self.counters.responses, counts.responses);
        self.lease.sync();
        self.metrics.publish(self.calls.len());
    }

    /// Tells the accept loop whether this connection is busy and when it was
    /// last active: one relaxed store per wake-up at most, none when unchanged.
    ///
    /// Busy means requests in flight, responses not yet written, or bytes
    /// received that wait for the service's readiness (perhaps a whole request:
    /// evicting the connection would drop it).
    fn publish_activity(&mut self) {
        let busy = !self.calls.is_empty() || self.dirty || self.holds_input();
        let word = self
            .activity
            .encode(busy, self.framed_once, self.last_active);
        if word != self.published_activity {
            self.activity.store(word);
            self.published_activity = word;
        }
    }

    /// Received bytes wait while the service is not ready (the reading stopped
    /// at the readiness check, not at the end of what was received).
    fn holds_input(&self) -> bool {
        (!self.service_ready || self.reader.awaits_budget()) && self.reader.holds_input()
    }

    fn poll_work(&mut self, cx: &mut Context<'_>) -> Poll<Exit> {
        loop {
            let mut progress = false;
            if !self.draining && self.shutdown.as_mut().poll(cx).is_ready() {
                self.draining = true;
                if let Err(exit) = self.read_last(cx) {
                    return Poll::Ready(exit);
                }
            }
            self.poll_calls(cx, &mut progress);
            if self.dirty {
                self.publish();
                match self.poll_flush(cx) {
                    Poll::Ready(Ok(())) => {
                        self.dirty = false;
                        self.write_blocked_since = None;
                        // Finished calls left unpolled for room: their wake-ups
                        // are spent, so look at them again now.
                        if std::mem::take(&mut self.calls_blocked) {
                            progress = true;
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Exit::Io(e)),
                    Poll::Pending => {
                        self.write_blocked_since.get_or_insert_with(Instant::now);
                    }
                }
            }
            if self.closing && !self.dirty {
                return Poll::Ready(Exit::Done);
            }
            if let Err(exit) = self.poll_requests(cx, &mut progress) {
                return Poll::Ready(exit);
            }
            if self.input_done && self.calls.is_empty() && !self.dirty {
                return Poll::Ready(Exit::Done);
            }
            if progress {
                self.last_active = Instant::now();
                continue;
            }
            if let Some(exit) = self.poll_timer(cx) {
                return Poll::Ready(exit);
            }
            self.release_if_idle();
            return Poll::Pending;
        }
    }

    /// Writes the responses of finished calls into the write buffer, until it
    /// holds `WRITE_BUFFER_LIMIT` (finished calls keep their charge until
    /// then, so unwritten responses stay within the budget).
    fn poll_calls(&mut self, cx: &mut Context<'_>, progress: &mut bool) {
        loop {
            if self.writer.unwritten() >= WRITE_BUFFER_LIMIT {
                self.calls_blocked = true;
                return;
            }
            let Poll::Ready(Some((tag, charge, outcome, observed))) = self.calls.poll_next(cx)
            else {
                return;
            };
            *progress = true;
            self.complete(tag, charge, outcome, observed);
            if self.closing {
                return;
            }
        }
    }

    /// Writes a finished call's response, or applies the error policy.
    #[inline]
    fn complete(&mut self, tag: Tag, charge: u64, outcome: Outcome<S::Error>, observed: Observed) {
        let _entered = observed.enter();
        self.lease.answered(charge);
        let failure = match outcome {
            Outcome::Response(payload) => match self.writer.push(&self.encoder, &tag, payload) {
                Ok(()) => {
                    self.lease.set_write_buffer(self.writer.charge());
                    self.dirty = true;
                    self.unpublished.responses += 1;
                    observed.finish_ok(&mut self.metrics);
                    return;
                }
                Err(e) => Failure::Unframed(e),
            },
            Outcome::Failed(e) => Failure::Service(e),
            Outcome::Panicked(message) => Failure::Panicked(message),
        };
        self.fail(tag, failure, &observed);
    }

    /// A call that ended without a response to write: counts and logs it
    /// (inside its span, entered by the caller) and applies the error policy.
    #[cold]
    fn fail(&mut self, tag: Tag, failure: Failure<S::Error>, observed: &Observed) {
        match failure {
            Failure::Unframed(e) => {
                Counters::add(&self.counters.service_errors, 1);
                tracing::warn!(peer = ?self.peer, ?tag, error = %e, "response cannot be framed; dropped");
                observed.finish(&mut self.metrics, "error");
            }
            Failure::Service(e) => {
                Counters::add(&self.counters.service_errors, 1);
                let e: BoxError = e.into();
                tracing::warn!(peer = ?self.peer, ?tag, error = %e, "service failed a request");
                observed.finish(&mut self.metrics, "error");
            }
            Failure::Panicked(message) => {
                Counters::add(&self.counters.panics, 1);
                tracing::error!(peer = ?self.peer, ?tag, panic = %message, "request handler panicked");
                observed.finish(&mut self.metrics, "panic");
            }
        }
        if self.config.on_error == OnError::Close {
            self.closing = true;
            // Requests still being served are dropped with the connection.
            self.calls.clear();
        }
    }

    /// Reads requests and starts their calls while the window and the service
    /// allow.
    fn poll_requests(&mut self, cx: &mut Context<'_>, progress: &mut bool) -> Result<(), Exit> {
        if self.input_done || self.closing {
            self.partial_since = None;
            return Ok(());
        }
        // While the read buffer is released, reads land here; what is left
        // of them moves to the read buffer before this returns.
        let mut storage = scratch_storage();
        let mut scratch = Scratch::new(&mut storage);
        let result = if self.draining {
            self.partial_since = None;
            self.poll_received(cx, progress, &mut scratch)
        } else {
            self.read_requests(cx, progress, &mut scratch)
        };
        self.reader.spill(&mut scratch);
        if result.is_ok() && !self.draining {
            self.time_partial_frame();
        }
        result
    }

    /// [`poll_requests`](Self::poll_requests) while serving.
    fn read_requests(
        &mut self,
        cx: &mut Context<'_>,
        progress: &mut bool,
        scratch: &mut Scratch<'_>,
    ) -> Result<(), Exit> {
        let mut completed = false;
        let mut paused = false;
        loop {
            // Responses the client is not reading pile up in the write buffer:
            // stop reading requests until it drains, so memory stays bounded.
            if self.calls.len() >= self.config.max_in_flight_per_connection.max(1)
                || self.writer.unwritten() >= WRITE_BUFFER_LIMIT
            {
                paused = true;
                break;
            }
            if !self.service_ready {
                match self.service.poll_ready(cx) {
                    Poll::Ready(Ok(())) => self.service_ready = true,
                    Poll::Ready(Err(e)) => return Err(Exit::ServiceFailed(e.into())),
                    Poll::Pending => {
                        paused = true;
                        break;
                    }
                }
            }
            match self
                .reader
                .poll_frame(&mut self.io, &mut self.lease, cx, true, scratch)
            {
                Poll::Ready(Ok(Some(frame))) => {
                    *progress = true;
                    completed = true;
                    self.start(frame);
                    if self.closing {
                        return Ok(());
                    }
                }
                Poll::Ready(Err(e)) => return Err(Exit::from_frame_error(e)),
                Poll::Ready(Ok(None)) => {
                    self.input_done = true;
                    break;
                }
                Poll::Pending => {
                    // Waiting for the server-wide budget: not reading, like a
                    // full window.
                    paused = self.reader.awaits_budget();
                    break;
                }
            }
        }
        self.reading = Reading { paused, completed };
        Ok(())
    }

    /// The read timeout runs while a started frame is incomplete and we are
    /// reading; it restarts whenever a frame completes. After the scratch is
    /// spilled: a partial frame is then in the read buffer.
    fn time_partial_frame(&mut self) {
        let Reading { paused, completed } = std::mem::take(&mut self.reading);
        if paused || !self.mid_frame() {
            self.partial_since = None;
        } else if completed || self.partial_since.is_none() {
            self.partial_since = Some(Instant::now());
        }
    }

    /// Calls the service (which said it is ready) with one request.
    #[inline]
    fn start(&mut self, frame: Frame) {
        self.framed_once = true;
        self.service_ready = false;
        self.unpublished.requests += 1;
        let charge = frame.payload.len() as u64 + self.tag_len;
        let request = Request::new(frame.payload, self.peer);
        let service = &mut self.service;
        let observed = Observed::start(&mut self.metrics, self.peer);
        let call = Call::start(frame.tag, charge, observed, || service.call(request));
        // Polled once in its slot: a handler that answers at once (the common
        // case) is done here.
        if let Some((tag, charge, outcome, observed)) = self.calls.push(call) {
            self.complete(tag, charge, outcome, observed);
        }
    }

    /// When a close is asked: one last read, whatever the service's readiness,
    /// so that a request that reached the socket before the close is answered
    /// rather than lost. What it reads waits in the read buffer.
    fn read_last(&mut self, cx: &mut Context<'_>) -> Result<(), Exit> {
        if self.input_done || self.closing {
            return Ok(());
        }
        match self.reader.read_last(&mut self.io, cx) {
            Poll::Ready(Err(e)) => Err(Exit::from_frame_error(e)),
            Poll::Ready(Ok(_)) | Poll::Pending => Ok(()),
        }
    }

    /// Writes the queued responses to the socket and charges what is left.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), FrameError>> {
        let result = self.writer.poll_flush(&mut self.io, cx);
        self.lease.set_write_buffer(self.writer.charge());
        result
    }

    /// While draining: starts the requests already received (read by
    /// [`read_last`](Self::read_last) or complete in the read buffer) as the
    /// window and the service allow, reading nothing more from the socket.
    /// Input is done once none is left.
    fn poll_received(
        &mut self,
        cx: &mut Context<'_>,
        progress: &mut bool,
        scratch: &mut Scratch<'_>,
    ) -> Result<(), Exit> {
        loop {
            if self.calls.len() >= self.config.max_in_flight_per_connection.max(1)
                || self.writer.unwritten() >= WRITE_BUFFER_LIMIT
            {
                return Ok(());
            }
            let frame = match self.received.take() {
                Some(frame) => *frame,
                None => {
                    // From the buffer only: nothing more is read from the socket.
                    match self
                        .reader
                        .poll_frame(&mut self.io, &mut self.lease, cx, false, scratch)
                    {
                        Poll::Ready(Ok(Some(frame))) => frame,
                        Poll::Ready(Ok(None)) => {
                            self.input_done = true;
                            return Ok(());
                        }
                        Poll::Ready(Err(e)) => return Err(Exit::from_frame_error(e)),
                        Poll::Pending => return Ok(()),
                    }
                }
            };
            if !self.service_ready {
                match self.service.poll_ready(cx) {
                    Poll::Ready(Ok(())) => self.service_ready = true,
                    Poll::Ready(Err(e)) => return Err(Exit::ServiceFailed(e.into())),
                    Poll::Pending => {
                        self.received = Some(Box::new(frame));
                        return Ok(());
                    }
                }
            }
            *progress = true;
            self.start(frame);
            if self.closing {
                return Ok(());
            }
        }
    }

    /// Nothing in flight, nothing to write, nothing received: the connection
    /// waits for input.
    fn idle(&self) -> bool {
        self.calls.is_empty() && !self.dirty && !self.reader.holds_input()
    }

    /// Gives back the read buffer as soon as the connection waits for input
    /// (this costs a busy connection nothing: whole frames are then read
    /// through a scratch on the stack).
    fn release_if_idle(&mut self) {
        if self.idle() {
            self.reader.release();
        }
    }

    /// The connection has been idle for [`RELEASE_AFTER`]: frees the write
    /// buffer and the call slots too (kept until then, so that requests
    /// arriving in bursts reuse them).
    fn release_spare(&mut self) {
        if self.idle() {
            self.writer.release();
            self.calls.shrink();
            self.metrics.release();
        }
    }

    /// A frame has started arriving and is not complete (its length may already
    /// be consumed from the buffer).
    fn mid_frame(&self) -> bool {
        self.reader.mid_frame()
    }

    /// Runs the first-frame, idle, read and write timeouts, and the release of
    /// an idle connection's spare memory.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Option<Exit> {
        if !self.framed_once {
            // The first-frame timeout pauses while the budget is full: the
            // wait does not count against the client.
            if self.reader.awaits_budget() {
                self.first_frame_paused_since
                    .get_or_insert_with(Instant::now);
            } else if let Some(since) = self.first_frame_paused_since.take() {
                self.started += since.elapsed();
            }
        }
        loop {
            // Not while the service is not ready or the budget is full: the
            // server is not reading then, and a first frame may be waiting in
            // the buffer or socket.
            let first = self
                .config
                .first_frame_timeout
                .filter(|_| !self.framed_once && self.service_ready && !self.reader.awaits_budget())
                .map(|t| (later(self.started, t), FIRST_FRAME));
            let idle = self
                .config
                .idle_timeout
                .filter(|_| self.calls.is_empty() && !self.mid_frame())
                .map(|t| (later(self.last_active, t), "idle"));
            let read = self
                .config
                .read_timeout
                .zip(self.partial_since)
                .map(|(t, since)| (later(since, t), "read"));
            let write = self
                .config
                .write_timeout
                .zip(self.write_blocked_since)
                .map(|(t, since)| (later(since, t), "write"));
            let release = (self.idle() && (self.calls.holds_slots() || self.writer.holds_buffer()))
                .then(|| (later(self.last_active, RELEASE_AFTER), RELEASE));
            let (deadline, which) = [first, idle, read, write, release]
                .into_iter()
                .flatten()
                .min()?;
            // A timer armed no later than needed stays: when it fires, the real
            // deadline is checked again. This keeps activity from resetting it.
            if self.timer_deadline.is_none_or(|armed| armed > deadline) {
                self.timer.as_mut().reset(deadline);
                self.timer_deadline = Some(deadline);
            }
            if self.timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            self.timer_deadline = None;
            if Instant::now() >= deadline {
                if which == RELEASE {
                    self.release_spare();
                    continue;
                }
                return Some(Exit::Timeout(which));
            }
        }
    }
}

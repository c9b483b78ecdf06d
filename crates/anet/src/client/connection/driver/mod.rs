//! The task that owns a connection's transport and its table of waiting requests.
//!
//! One loop, no locks: read every response that is ready and complete its
//! request; take queued requests, give each a slot in the [`Table`], encode it
//! into the write buffer; flush once the queue is empty (or the buffer is full);
//! run the timers (abandoned-request sweep, quarantine, close grace). Reading
//! comes first so that a frame that arrived before a request was taken from
//! the queue never meets that request (one that arrives between the read and
//! the write cannot be told from an answer).
//!
//! * [`wire`]: the transport, its read and write buffers, and framing.
//! * [`timers`]: the clock and the one timer every deadline shares.
//! * here: the loop, the queue of requests, closing and failing.

mod timers;
mod wire;

use std::{
    collections::VecDeque,
    sync::{Arc, atomic::Ordering::Relaxed},
    task::{Context, Poll},
    time::Duration,
};

use anet_proto::Frame;
use bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::mpsc,
    time::Instant,
};

use super::{
    ConnectionConfig,
    cells::Cells,
    config::Layout,
    handle::not_sent,
    reply::Reply,
    shared::{ReplyHook, Shared, Verdict},
    table::{Matched, Table},
    unit::Unit,
};
use crate::client::deadline::Deadline;
use crate::client::latency::{Estimator, since};
use crate::time::later;
use crate::{Error, Kind, observe};
use timers::Timers;
use wire::{Wire, lost};

/// A quarantine at least this long never ends in practice.
const ENDLESS_QUARANTINE: Duration = Duration::from_secs(365 * 86_400);

/// What a handle sends the driver.
#[derive(Debug)]
pub(super) enum Message {
    /// A request to write.
    Request(Request),
    /// Close gracefully.
    Close,
    /// Close gracefully for the owner (age, idle, a heartbeat miss): requests
    /// still unanswered when the grace ends fail as `ConnectionLost`.
    Retire(&'static str),
}

/// Refuses the connection and marks it done if the driver task ends by a
/// panic; the handles then fail their requests (see [`CellsGuard`]; a
/// request queued after it is `NotSent`) and the owner replaces the
/// connection.
struct PanicGuard(Arc<Shared>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("connection driver panicked; connection closed");
            self.0.refuse(Error::with_source(
                Kind::ConnectionLost,
                "connection driver panicked",
            ));
            self.0.mark_done();
            self.0.wake_owner();
        }
    }
}

/// Closes the connection's answer cells when the driver goes, however it
/// goes (finished, panicked, its task aborted — even before its first
/// poll): a response future it left unanswered (only after a panic or an
/// abort; it answers every request it takes otherwise) then fails as
/// `ConnectionLost` instead of waiting forever.
struct CellsGuard(Arc<Cells>);

impl Drop for CellsGuard {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Withdraws what the connection added to the client's gauges (its share of
/// its endpoint's in-flight gauge, its held tags) when the driver goes, however
/// it goes (finished, panicked, its task aborted or dropped with its runtime):
/// the gauges then never keep the counts of a driver that is gone. The stats
/// keep the last counts.
struct GaugesGuard(Arc<Shared>);

impl Drop for GaugesGuard {
    fn drop(&mut self) {
        let c = &self.0.counters;
        crate::observe::connection_published(0, c.held.load(Relaxed), 0);
        if let Some(metrics) = self.0.metrics.get() {
            metrics.in_flight(c.in_flight.swap(0, Relaxed), 0);
        }
    }
}

/// One request on its way to the driver.
#[derive(Debug)]
pub(super) struct Request {
    pub(super) payload: Bytes,
    /// Where the answer goes, with the request's deadline: past it the request
    /// is not written, and once written it fails with a timeout. A relative
    /// deadline is fixed when the driver takes the request from the queue (the
    /// clock is read once per pass, not per request).
    pub(super) reply: Reply,
    /// The request's unit of the window, taken by the handle: it travels with
    /// the request into its table slot, and wherever the request ends, dropping
    /// it gives the unit back.
    pub(super) unit: Unit,
}

/// Why the driver loop ended.
#[derive(Debug)]
enum Exit {
    /// Closing finished: nothing left in flight.
    Drained,
    /// Closing ran out of grace; the error fails what is left.
    GraceElapsed(Error),
    /// The transport failed or the peer broke the protocol.
    Failed(Error),
}

/// A close in progress (requested, or a retirement): requests already queued
/// are still written, and answers awaited until `deadline`.
#[derive(Debug)]
struct Drain {
    deadline: Instant,
    /// The error for requests still waiting when the grace ends.
    leftover: Error,
}

pub(super) struct Driver<T> {
    /// The transport, its buffers and framing.
    wire: Wire<T>,
    rx: mpsc::UnboundedReceiver<Message>,
    /// False once the queue has ended (closed and emptied).
    rx_open: bool,
    table: Table,
    shared: Arc<Shared>,
    quarantine: Duration,
    /// Held tags at which the connection retires.
    held_limit: usize,
    close_grace: Duration,
    /// The clock, the sweep and the one timer.
    timers: Timers,
    drain: Option<Drain>,
    /// Requests taken out of the channel while writes were blocked, so that their
    /// deadlines are seen; written before the channel's next ones.
    backlog: VecDeque<Request>,
    /// The earliest deadline in the backlog (may be earlier than the true one;
    /// the check then finds nothing and moves it on). Written requests' deadlines
    /// are the table's.
    backlog_earliest: Option<Instant>,
    /// Requests encoded and not yet wholly written, oldest first: each one's
    /// occupancy sequence number and where its bytes end in the outgoing
    /// stream. A frame that names one of them cannot be its answer (the peer
    /// has not received it), so it is dropped as unknown.
    unwritten: VecDeque<(u64, u64)>,
    counts: LocalCounts,
    /// The response-time estimate for the balancer, when the owner asked for
    /// one (see `ConnectionConfig::latency`).
    latency: Option<Estimator>,
    /// What send stamps count from (nanoseconds since).
    anchor: Instant,
    /// The answers of this pass, for the endpoint's metrics.
    answers: observe::Answers,
    /// Held until the driver is done with every request it took.
    cells_guard: CellsGuard,
    /// Withdraws its counts from the client's gauges when it goes.
    _gauges_guard: GaugesGuard,
}

/// Counters kept by the driver and published to [`Shared`] once per wake-up.
#[derive(Debug, Default)]
struct LocalCounts {
    written: u64,
    responses: u64,
    late: u64,
    unknown: u64,
    abandoned_unwritten: u64,
}

impl<T> Driver<T>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    pub(super) fn new(
        io: T,
        config: ConnectionConfig,
        rx: mpsc::UnboundedReceiver<Message>,
        shared: Arc<Shared>,
        layout: Layout,
    ) -> Driver<T> {
        let wire = Wire::new(io, &config);
        let cells_guard = CellsGuard(shared.cells.clone());
        let gauges_guard = GaugesGuard(shared.clone());
        let anchor = Instant::now();
        Driver {
            table: Table::new(layout, wire.tags().id_space()),
            wire,
            rx,
            rx_open: true,
            shared,
            quarantine: config.quarantine,
            held_limit: layout.held_limit,
            close_grace: config.close_grace,
            timers: Timers::new(config.quarantine),
            drain: None,
            backlog: VecDeque::new(),
            backlog_earliest: None,
            unwritten: VecDeque::new(),
            counts: LocalCounts::default(),
            latency: config.latency.map(|config| Estimator::new(config, anchor)),
            anchor,
            answers: observe::Answers::default(),
            cells_guard,
            _gauges_guard: gauges_guard,
        }
    }

    /// Drives the connection until it is closed or fails.
    pub(super) async fn run(mut self) {
        tracing::debug!("connection driver started");
        // Should the task end by a panic (a bug), the connection must not stay
        // listed as live: the guard refuses it and marks it done on the way out.
        let _guard = PanicGuard(self.shared.clone());
        let exit = std::future::poll_fn(|cx| self.poll_drive(cx)).await;
        self.finish(exit);
        // The transport and the table go now; the queue is closed. A handle
        // may be inside `send` (its message counted, not yet pushed): `recv`
        // waits for such a message and returns `None` only once none is left,
        // so every request ever queued is answered.
        let Driver {
            mut rx,
            shared,
            cells_guard,
            ..
        } = self;
        while let Some(message) = rx.recv().await {
            if let Message::Request(mut request) = message {
                // Fixed, so that a retry keeps the call's deadline.
                request.reply.deadline.fix(Instant::now);
                request
                    .reply
                    .fail_unwritten(&shared.cells, not_sent(&shared), request.payload);
            }
        }
        shared.mark_done();
        drop(cells_guard);
    }

    /// Gives the units freed this pass back to the window, and tells the
    /// pool's waiting handles when some are left over for them.
    fn return_units(&mut self) {
        if self.table.return_units() {
            if let Some(room) = self.shared.room.get() {
                room.freed(&self.shared.semaphore);
            }
        }
    }

    fn poll_drive(&mut self, cx: &mut Context<'_>) -> Poll<Exit> {
        self.timers.new_pass();
        loop {
            let mut progress = false;
            // Read before taking new requests: a frame already received (a
            // greeting, an unsolicited message, a forged answer) left the peer
            // before those requests were written, so it must meet the table as
            // it was, never a request that takes its tag value in this pass.
            let (table, counts) = (&mut self.table, &mut self.counts);
            let (latency, answers) = (&mut self.latency, &mut self.answers);
            let (hook, cells) = (self.shared.hook.get(), &*self.shared.cells);
            let timed = self.shared.metrics.get().is_some_and(|m| m.timed());
            let unwritten_from =
                settle_unwritten(&mut self.unwritten, self.wire.written_if_pending());
            let mut retire = false;
            match self.wire.poll_read(cx, |id, frame| {
                let seen = Seen {
                    counts,
                    latency: latency.as_mut(),
                    answers,
                    timed,
                };
                let id =
                    id.filter(|&id| unwritten_from.is_none_or(|from| !table.is_from(id, from)));
                retire |= dispatch(table, cells, seen, hook, id, frame);
            }) {
                Ok(read) => progress |= read,
                Err(error) => return Poll::Ready(Exit::Failed(error)),
            }
            if retire {
                self.retire_classified();
            }
            self.return_units();
            if let Err(exit) = self.poll_intake(cx, &mut progress) {
                return Poll::Ready(exit);
            }
            if self.wire.dirty {
                if let Poll::Ready(Err(e)) = self.wire.poll_flush(cx) {
                    return Poll::Ready(Exit::Failed(lost(e)));
                }
            }
            if let Some(exit) = self.poll_timer(cx) {
                return Poll::Ready(exit);
            }
            if self.drain.is_some()
                && !self.rx_open
                && self.backlog.is_empty()
                && self.table.waiting() == 0
                && !self.wire.dirty
            {
                return Poll::Ready(Exit::Drained);
            }
            if !progress {
                // A decay the fold schedules must arm the timer, which was
                // polled before it (with no other deadline left, nothing else
                // would wake the driver to arm it).
                if self.fold_latency() {
                    if let Some(exit) = self.poll_timer(cx) {
                        return Poll::Ready(exit);
                    }
                }
                self.publish();
                return Poll::Pending;
            }
        }
    }

    /// Takes queued requests and encodes them until the queue is empty or the write
    /// buffer is full and cannot be flushed yet.
    fn poll_intake(&mut self, cx: &mut Context<'_>, progress: &mut bool) -> Result<(), Exit> {
        while self.rx_open || !self.backlog.is_empty() {
            if self.wire.is_full() {
                match self.wire.poll_flush(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return Err(Exit::Failed(lost(e))),
                    Poll::Pending => {
                        // Writes are blocked: keep taking requests from the queue
                        // so their deadlines are fixed and watched while they wait.
                        self.queue_blocked(cx, progress);
                        return Ok(());
                    }
                }
            }
            if let Some(request) = self.backlog.pop_front() {
                *progress = true;
                self.write_request(request);
                continue;
            }
            let message = match self.next_message(cx) {
                Poll::Ready(Some(message)) => message,
                Poll::Ready(None) => {
                    self.rx_open = false;
                    // Every handle is gone (or the queue was closed for draining).
                    self.close_requested();
                    return Ok(());
                }
                Poll::Pending => return Ok(()),
            };
            *progress = true;
            match message {
                Message::Request(request) => self.write_request(request),
                Message::Close => self.close_requested(),
                Message::Retire(why) => self.retire_requested(why),
            }
        }
        Ok(())
    }

    /// The next queued message. `try_recv` first: it takes a whole batch without
    /// spending the task's cooperative budget one message at a time (which
    /// would split a batch into several writes); `poll_recv` only once the queue
    /// looks empty, to be woken by the next message.
    fn next_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        match self.rx.try_recv() {
            Ok(message) => Poll::Ready(Some(message)),
            Err(mpsc::error::TryRecvError::Disconnected) => Poll::Ready(None),
            Err(mpsc::error::TryRecvError::Empty) => self.rx.poll_recv(cx),
        }
    }

    /// Moves queued requests into the backlog while writes are blocked.
    fn queue_blocked(&mut self, cx: &mut Context<'_>, progress: &mut bool) {
        while self.rx_open {
            match self.next_message(cx) {
                Poll::Ready(Some(Message::Request(mut request))) => {
                    *progress = true;
                    self.fix_deadline(&mut request);
                    if let Some(deadline) = request.reply.deadline.instant() {
                        self.backlog_earliest =
                            Some(self.backlog_earliest.map_or(deadline, |e| e.min(deadline)));
                    }
                    self.backlog.push_back(request);
                }
                Poll::Ready(Some(Message::Close)) => {
                    *progress = true;
                    self.close_requested();
                }
                Poll::Ready(Some(Message::Retire(why))) => {
                    *progress = true;
                    self.retire_requested(why);
                }
                Poll::Ready(None) => {
                    self.rx_open = false;
                    self.close_requested();
                }
                Poll::Pending => return,
            }
        }
    }

    /// Fixes a relative deadline of a request taken from the queue (the clock is
    /// read once per pass).
    #[inline]
    fn fix_deadline(&mut self, request: &mut Request) {
        if let Deadline::After(timeout) = request.reply.deadline {
            request.reply.deadline = Deadline::At(self.timers.after(timeout));
        }
    }

    /// Writes a request into the write buffer, or ends it unwritten (its unit
    /// of the window goes back as it is dropped).
    fn write_request(&mut self, mut request: Request) {
        self.fix_deadline(&mut request);
        let Request {
            payload,
            mut reply,
            unit,
        } = request;
        if reply.is_closed(&self.shared.cells) {
            // The caller gave up (dropped or timed out) before the request was
            // written: it is never written.
            self.counts.abandoned_unwritten += 1;
            return;
        }
        if reply
            .deadline
            .instant()
            .is_some_and(|d| d <= self.timers.clock())
        {
            // Its deadline passed while it queued: never written.
            reply.fail_unwritten(&self.shared.cells, overdue(true), payload);
            return;
        }
        // Stamped with the pass's clock (one stamp per pass, no clock read per
        // request) when the latency estimate or the metrics' durations need
        // it. A request written before the owner shared its metrics (a
        // handshake's) is not recorded, even if answered after.
        let metrics = self.shared.metrics.get();
        reply.metered &= metrics.is_some();
        let stamped = self.latency.is_some() || metrics.is_some_and(|m| m.timed());
        let anchor = self.anchor;
        let sent = stamped.then(|| self.timers.stamp(|now| since(anchor, now)));
        // The slot now holds the request's window unit (and, until the request
        // is answered or the connection closes, its tag value).
        let id = match self.table.insert(reply, unit, sent) {
            Ok(id) => id,
            Err((reply, _unit)) => {
                // Only a closing connection (whose held tags may exceed their
                // limit while it drains) can run out of slots.
                reply.fail_unwritten(
                    &self.shared.cells,
                    Error::with_source(Kind::NotSent, "no free tag on the connection"),
                    payload,
                );
                return;
            }
        };
        match self.wire.encode(id, &payload) {
            Ok(()) => {
                self.unwritten
                    .push_back((self.table.last_seq(), self.wire.encoded_end()));
                self.counts.written += 1;
                self.timers.request_written();
                tracing::trace!(id, len = payload.len(), "request written");
            }
            Err(e) => {
                if let Some(reply) = self.table.remove(id) {
                    reply.fail(
                        &self.shared.cells,
                        Error::with_source(Kind::InvalidRequest, e),
                    );
                }
            }
        }
    }

    /// Runs the timers: abandoned-request sweep, request deadlines, quarantine
    /// expiry, close grace, read stall.
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> Option<Exit> {
        loop {
            let stall = self.wire.stall_deadline();
            let now = self.timers.poll_fired(
                cx,
                [
                    self.table.next_due(),
                    self.drain.as_ref().map(|d| d.deadline),
                    stall,
                    self.backlog_earliest,
                    self.latency.as_ref().and_then(Estimator::next_decay),
                ],
            )?;
            if stall.is_some_and(|t| t <= now) {
                tracing::warn!("response frame stalled past the read timeout; closing connection");
                return Some(Exit::Failed(Error::with_source(
                    Kind::ConnectionLost,
                    "response frame stalled past the read timeout",
                )));
            }
            if let Some(drain) = &self.drain {
                if drain.deadline <= now {
                    return Some(Exit::GraceElapsed(drain.leftover.clone()));
                }
            }
            if self.timers.sweep_due(now) {
                self.sweep(now);
            }
            if let Some(latency) = &mut self.latency {
                if latency.next_decay().is_some_and(|t| t <= now) {
                    latency.decay(now, &self.shared.rtt_ns);
                }
            }
            self.expire_deadlines(now);
            self.table.expire_quarantine(now);
            self.return_units();
            self.retire_if_held_too_many();
        }
    }

    /// Fails the requests whose deadline has passed: those in the backlog (where
    /// `poll_intake` moves queued requests while writes are blocked) are never
    /// written; written ones fail with a timeout and their tags are quarantined.
    fn expire_deadlines(&mut self, now: Instant) {
        if self.backlog_earliest.is_some_and(|t| t <= now) {
            let mut earliest: Option<Instant> = None;
            let mut kept = VecDeque::with_capacity(self.backlog.len());
            for request in self.backlog.drain(..) {
                match request.reply.deadline.instant() {
                    _ if request.reply.is_closed(&self.shared.cells) => {
                        self.counts.abandoned_unwritten += 1
                    }
                    Some(deadline) if deadline <= now => {
                        request.reply.fail_unwritten(
                            &self.shared.cells,
                            overdue(true),
                            request.payload,
                        );
                    }
                    deadline => {
                        if let Some(d) = deadline {
                            earliest = Some(earliest.map_or(d, |e| e.min(d)));
                        }
                        kept.push_back(request);
                    }
                }
            }
            self.backlog = kept;
            self.backlog_earliest = earliest;
        }
        let mut expired = Vec::new();
        self.table
            .expire_deadlines(now, later(now, self.quarantine), &mut expired);
        if let Some(latency) = &mut self.latency {
            for _ in &expired {
                latency.failed();
            }
        }
        for (reply, sent) in expired {
            self.fail_written(reply, sent, overdue(false), now);
        }
    }

    /// Moves requests whose callers gave up into quarantine.
    fn sweep(&mut self, now: Instant) {
        let moved = self
            .table
            .quarantine_abandoned(&self.shared.cells, later(now, self.quarantine));
        if moved > 0 {
            tracing::debug!(moved, "abandoned requests quarantined");
        }
        self.timers.swept(now, self.table.waiting() > 0);
    }

    /// Retires the connection when it holds as many tags as its limit allows for
    /// requests that were abandoned and never answered: it takes no new
    /// requests, writes and answers what it accepted within the close grace,
    /// and closes, which is what makes those late answers impossible. Its owner
    /// replaces it.
    ///
    /// With an endless quarantine it retires too when its whole window is
    /// quarantined: it could never take another request. (With a finite one,
    /// a full window waits for the quarantine: that is the backpressure.)
    fn retire_if_held_too_many(&mut self) {
        let held = self.table.held_tags();
        let stuck =
            self.quarantine >= ENDLESS_QUARANTINE && self.table.quarantined() >= self.shared.window;
        if (held < self.held_limit && !stuck) || self.drain.is_some() {
            return;
        }
        tracing::warn!(
            held,
            "tags held for requests never answered reached the limit; retiring connection"
        );
        let why = format!("connection retired: {held} requests written and never answered");
        // New requests are refused as `NotSent` (never written: a request that
        // raced the retirement is retried elsewhere, as with any retirement the
        // owner asks for); requests still unanswered when the grace ends may
        // have reached the server: `ConnectionLost`.
        self.begin_drain(
            Error::with_source(Kind::NotSent, why.clone()),
            Error::with_source(Kind::ConnectionLost, why),
        );
    }

    /// The owner's response classifier said a reply was a connection-level
    /// failure: retire (refuse new requests as `NotSent`, so that one racing
    /// the retirement is retried elsewhere; finish the rest within the close
    /// grace, then fail what is left as `ConnectionLost`; close).
    fn retire_classified(&mut self) {
        if self.drain.is_some() {
            return;
        }
        tracing::warn!("reply classified as a connection failure; retiring connection");
        let why = "connection retired: a reply was classified as a connection failure";
        self.begin_drain(
            Error::with_source(Kind::NotSent, why),
            Error::with_source(Kind::ConnectionLost, why),
        );
    }

    /// A close asked for by a handle (or by the last handle going away).
    fn close_requested(&mut self) {
        self.begin_drain(Error::new(Kind::Closed), Error::new(Kind::Closed));
    }

    /// A retirement asked for by the owner (age, idle, a heartbeat miss): new
    /// requests are refused as `NotSent` (the handle already did so); those
    /// still unanswered when the grace ends may have reached the server:
    /// `ConnectionLost`.
    fn retire_requested(&mut self, why: &'static str) {
        let why = format!("connection retired: {why}");
        self.begin_drain(
            Error::with_source(Kind::NotSent, why.clone()),
            Error::with_source(Kind::ConnectionLost, why),
        );
    }

    /// Stops taking requests (refusing them with `reason`) and starts the close
    /// grace; `leftover` fails what is still waiting when it ends.
    fn begin_drain(&mut self, reason: Error, leftover: Error) {
        if self.drain.is_some() {
            return;
        }
        // Counters first: whoever sees the refusal sees what it answered.
        self.publish();
        self.shared.refuse(reason);
        self.shared.wake_owner();
        self.rx.close();
        self.drain = Some(Drain {
            deadline: later(Instant::now(), self.close_grace),
            leftover,
        });
        tracing::debug!(waiting = self.table.waiting(), "connection closing");
    }

    /// Folds the responses and failures of this pass into the latency
    /// estimate and publishes it (one clock reading per pass, shared with the
    /// deadlines). Whether that scheduled a decay the timer does not know of.
    fn fold_latency(&mut self) -> bool {
        let Some(latency) = &mut self.latency else {
            return false;
        };
        if !latency.has_pass() {
            return false;
        }
        let scheduled = latency.next_decay();
        latency.fold(self.timers.clock(), &self.shared.rtt_ns);
        latency.next_decay() != scheduled
    }

    /// Records the pass's answers for the endpoint's metrics: one counter
    /// update, and their durations ending now (one clock reading).
    fn record_answers(&mut self) {
        if self.answers.is_empty() {
            return;
        }
        match self.shared.metrics.get() {
            Some(metrics) => {
                let anchor = self.anchor;
                self.answers
                    .record(metrics, || since(anchor, Instant::now()));
            }
            None => self.answers.clear(),
        }
    }

    /// Fails a written request (sent at stamp `sent`, if stamped) with
    /// `error`, and records how long it took, ending at `now`: only when its
    /// caller receives the failure (and so counts it), and it is metered.
    fn fail_written(&self, reply: Reply, sent: Option<u64>, error: Error, now: Instant) {
        let sent = sent.filter(|_| reply.metered);
        let kind = error.kind();
        if !reply.fail(&self.shared.cells, error) {
            return;
        }
        if let (Some(metrics), Some(sent)) = (self.shared.metrics.get(), sent) {
            let elapsed = since(self.anchor, now).saturating_sub(sent);
            metrics.failed_after(kind, Duration::from_nanos(elapsed));
        }
    }

    /// Publishes the local counters for `Connection::stats`, and the pass's
    /// answers for the endpoint's metrics (every path out of a pass publishes,
    /// so no answer is left unrecorded).
    fn publish(&mut self) {
        self.record_answers();
        let c = &self.shared.counters;
        c.written.store(self.counts.written, Relaxed);
        c.responses.store(self.counts.responses, Relaxed);
        c.late.store(self.counts.late, Relaxed);
        c.abandoned_unwritten
            .store(self.counts.abandoned_unwritten, Relaxed);
        c.quarantined.store(self.table.quarantined(), Relaxed);
        if cfg!(feature = "metrics") {
            let (unknown, held) = (self.counts.unknown, self.table.held_tags());
            let unknown_before = c.unknown.swap(unknown, Relaxed);
            let held_before = c.held.swap(held, Relaxed);
            crate::observe::connection_published(
                unknown.saturating_sub(unknown_before),
                held_before,
                held,
            );
            if let Some(metrics) = self.shared.metrics.get() {
                let in_flight = self.table.waiting() + self.backlog.len();
                metrics.in_flight(c.in_flight.swap(in_flight, Relaxed), in_flight);
            }
        } else {
            c.unknown.store(self.counts.unknown, Relaxed);
            c.held.store(self.table.held_tags(), Relaxed);
        }
    }

    /// Fails whatever is left and closes the queue (`run` then fails what is
    /// still in it and marks the connection done).
    fn finish(&mut self, exit: Exit) {
        let error = match exit {
            Exit::Drained => {
                tracing::info!("connection closed");
                Error::new(Kind::Closed)
            }
            Exit::GraceElapsed(error) => {
                tracing::warn!(
                    waiting = self.table.waiting(),
                    "close grace elapsed; failing requests still waiting"
                );
                error
            }
            Exit::Failed(error) => {
                tracing::warn!(
                    error = %error,
                    source = ?std::error::Error::source(&error).map(ToString::to_string),
                    waiting = self.table.waiting(),
                    "connection failed"
                );
                error
            }
        };
        // Counters first: whoever sees the refusal sees what it answered.
        self.publish();
        self.shared.refuse(error.clone());
        self.shared.wake_owner();
        let now = Instant::now();
        for (reply, sent) in self.table.drain_waiting() {
            self.fail_written(reply, sent, error.clone(), now);
        }
        self.table.return_units();
        self.rx.close();
        for request in std::mem::take(&mut self.backlog) {
            request.reply.fail_unwritten(
                &self.shared.cells,
                not_sent(&self.shared),
                request.payload,
            );
        }
        // Its counts leave the gauges when the driver is dropped (`GaugesGuard`).
        self.publish();
    }
}

/// The error of a request whose call deadline passed in the connection:
/// `unwritten` when it was never written.
fn overdue(unwritten: bool) -> Error {
    let error = Error::with_source(Kind::Timeout, "request deadline passed");
    if unwritten { error.unsent() } else { error }
}

/// What a pass's responses are counted into.
struct Seen<'a> {
    counts: &'a mut LocalCounts,
    latency: Option<&'a mut Estimator>,
    answers: &'a mut observe::Answers,
    /// Whether the metrics measure durations (answers then keep their stamps).
    timed: bool,
}

/// Forgets the requests whose bytes have all been written (`written`: bytes
/// written so far, `None` when every encoded byte has been); returns the oldest
/// remaining one's occupancy sequence number (`None` when none remains).
#[inline]
fn settle_unwritten(unwritten: &mut VecDeque<(u64, u64)>, written: Option<u64>) -> Option<u64> {
    let Some(written) = written else {
        unwritten.clear();
        return None;
    };
    while unwritten.front().is_some_and(|&(_, end)| end <= written) {
        unwritten.pop_front();
    }
    unwritten.front().map(|&(seq, _)| seq)
}

/// Completes the request a response answers (or counts it as late or
/// unknown); true when the owner's hook says the reply retires the connection.
#[inline]
fn dispatch(
    table: &mut Table,
    cells: &Cells,
    seen: Seen<'_>,
    hook: Option<&ReplyHook>,
    id: Option<u64>,
    frame: Frame,
) -> bool {
    let Seen {
        counts,
        latency,
        answers,
        timed,
    } = seen;
    let matched = match id {
        Some(id) => table.take(id),
        None => Matched::Unknown,
    };
    let mut retire = false;
    match matched {
        Matched::Waiting(reply, sent) => {
            let metered = reply.metered;
            let verdict = hook.map_or(Verdict::Success, |hook| run_hook(hook, &frame.payload));
            retire = verdict == Verdict::Retire;
            if let Some(latency) = latency {
                if verdict != Verdict::Success {
                    latency.failed();
                } else if let Some(sent) = sent {
                    latency.answered(sent);
                }
            }
            if reply.succeed(cells, frame.payload) {
                counts.responses += 1;
                if metered {
                    answers.answered(sent.filter(|_| timed));
                }
            } else {
                // Abandoned after the last sweep: the late response is dropped.
                counts.late += 1;
            }
        }
        Matched::Late => counts.late += 1,
        Matched::Unknown => {
            counts.unknown += 1;
            tracing::trace!(tag = ?frame.tag, "response with unknown tag dropped");
        }
    }
    retire
}

/// Runs the owner's hook on a reply. A panic in it (a bug in a user
/// classifier) is logged and the reply counts as a success: it must not end
/// the driver, whose requests would then be left without an answer.
fn run_hook(hook: &ReplyHook, payload: &Bytes) -> Verdict {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (hook.0)(payload))) {
        Ok(verdict) => verdict,
        Err(panic) => {
            tracing::error!(
                panic = panic_message(&panic),
                "response classifier panicked; reply counted as a success"
            );
            Verdict::Success
        }
    }
}

/// The message of a caught panic, when it has one.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use std::{future::poll_fn, sync::Arc};

    use bytes::Bytes;
    use tokio::sync::{Semaphore, mpsc};

    use super::{Driver, Request};
    use crate::Kind;
    use crate::client::{
        ConnectionConfig,
        connection::{ConnectionFuture, reply::Reply, shared::Shared},
        deadline::Deadline,
    };

    /// A request that reaches the driver when every slot of the tag table is
    /// taken fails `NotSent` (never written) and its failure gives the payload
    /// back, so the client's retry resends it without a copy of its own.
    ///
    /// Only a draining connection can get there: its held tags are past their
    /// limit (several requests timed out in one pass) and a request accepted
    /// just before the retirement, on a unit the same pass gave back, is
    /// written after it. That interleaving needs another thread to take the
    /// unit between the pass's two steps, so this test builds the table state
    /// itself: every slot held by a request written and never answered
    /// (more than the window: their units come from a semaphore of their own,
    /// as units given back and taken again would), then one more request.
    #[tokio::test]
    async fn a_request_finding_no_free_tag_fails_not_sent_with_its_payload_back() {
        let config = ConnectionConfig::new().max_in_flight(1).held_tag_limit(1);
        let layout = config.layout().expect("valid configuration");
        let shared = Arc::new(Shared::new(layout.window));
        let (_tx, rx) = mpsc::unbounded_channel();
        let (io, _server) = tokio::io::duplex(4096);
        let mut driver = Driver::new(io, config, rx, shared.clone(), layout);
        let units = Arc::new(Semaphore::new(layout.slots + 1));
        let request = |payload: &'static [u8]| {
            let (claim, slot) = shared.cells.claim();
            let request = Request {
                payload: Bytes::from(payload.to_vec()),
                reply: Reply::new(slot, Deadline::Never),
                unit: units.clone().try_acquire_owned().expect("a unit"),
            };
            (request, ConnectionFuture::waiting(claim))
        };
        let mut written = Vec::new();
        for _ in 0..layout.slots {
            let (held, future) = request(b"never answered");
            driver.write_request(held);
            written.push(future);
        }
        assert_eq!(
            driver.counts.written, layout.slots as u64,
            "every slot taken"
        );

        let (late, mut future) = request(b"no tag left");
        driver.write_request(late);
        let failure = poll_fn(|cx| future.poll_answer(cx))
            .await
            .expect_err("no tag to write it under");
        assert_eq!(failure.error.kind(), Kind::NotSent, "{:?}", failure.error);
        assert!(failure.error.is_unsent());
        assert_eq!(failure.request.as_deref(), Some(&b"no tag left"[..]));
        assert_eq!(
            driver.counts.written, layout.slots as u64,
            "nothing more written"
        );
        drop(written);
    }
}

//! The cheap, cloneable handle to a multiplexed connection.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::mpsc,
};
use tokio_util::sync::PollSemaphore;
use tower::{Service, load::Load};

use super::{
    ConnectionConfig, ConnectionFuture, ConnectionStats,
    driver::{Driver, Message, Request},
    reply::Reply,
    shared::Shared,
    unit::Unit,
};
use crate::{
    Error, Kind,
    client::{deadline::Deadline, room::Room},
};

/// A handle to one multiplexed connection: many tagged requests in flight over one
/// transport, owned by a driver task.
///
/// `Clone` is cheap; every clone feeds the same driver. As a [`tower::Service`],
/// `poll_ready` is ready only while the connection has room for another request in
/// flight, and fails once the connection is broken or closed, so an owner (a pool,
/// a balancer) knows to replace it. [`Load`] reports the requests in flight.
///
/// The connection closes gracefully when [`close`](Connection::close) is called or
/// the last handle is dropped: requests already accepted are written, responses are
/// awaited for the close grace, the rest fail with [`Kind::Closed`].
///
/// ```text
///  callers ──call──► handle ──queue──► driver ──frames──► socket
///     ▲                                  │  tag = slot + generation
///     └──────── response future ◄────────┘◄──frames── socket (any order)
/// ```
///
/// * `poll_ready` reserves a slot of the window (`max_in_flight`); it is pending
///   while the window is full and fails once the connection is broken or closed.
/// * The driver tags each request with its slot and the slot's generation, encodes
///   queued requests into one buffer and flushes when the queue is empty, and
///   completes each response's request in O(1).
/// * A dropped or timed-out request returns at once. Its unit of the window stays
///   taken until its late response arrives or its quarantine ends; its **tag value**
///   stays held until the late response arrives or the connection closes, so it is
///   never issued to another request meanwhile, whatever the tag format. A late
///   response is dropped, never delivered to anyone. A frame the driver reads
///   before a request's bytes are all written is never that request's answer:
///   it is dropped and counted as an unknown tag. The driver reads what has
///   arrived before it takes queued requests, so this covers a frame (a
///   greeting, an unsolicited message) that came in while the request was
///   queued, and one that names a request still in the write buffer. A frame
///   that comes in once the request's bytes are out carries nothing that tells
///   it from the answer, whenever the peer sent it: a greeting still on its way
///   when the first request is written can reach that request. A device that
///   speaks first should have its greeting read off the transport before the
///   transport is handed to the connection (before [`Connection::new`], or in
///   the [connector](crate::client::ClientBuilder::connector)). By the same
///   rule, a peer that answers a request before it has read all of it (a
///   rejection on the header alone) has that answer dropped while the rest of
///   the request is still being written; the request then ends at its
///   deadline, or with the connection. When the held
///   tags reach the
///   [held-tag limit](super::ConnectionConfig::held_tag_limit) the connection retires:
///   it refuses new requests, finishes the rest within its close grace and closes.
/// * Every request carries its unit of the window as a value; wherever the request
///   ends, dropping the value gives the unit back.
/// * A transport failure fails every waiting request at once with
///   [`Kind::ConnectionLost`](crate::Kind::ConnectionLost); requests not yet written
///   fail with [`Kind::NotSent`](crate::Kind::NotSent), safe to retry.
/// * **Memory a server can make a client hold** is bounded by the
///   configuration, whatever it sends: per connection, a read buffer of 64 KiB
///   (or, while a frame arrives, room for that frame's body, reserved when its
///   length is read: at most the frame maximum; a longer length is a protocol
///   error before anything is reserved, and a frame that does not complete
///   within the [read timeout](ConnectionConfig::read_timeout) fails the
///   connection), and the responses of at most `max_in_flight` waiting
///   requests. A response whose tag matches no waiting request (a flood of
///   unknown tags) is dropped and counted, never kept. A response is a slice of
///   the read buffer, not a copy: while the caller keeps it, it keeps alive the
///   buffer chunk it was read into (at most 64 KiB, or its own frame when
///   larger); copy it (`Bytes::copy_from_slice`) to keep many small responses
///   for long.
///
/// # Example
///
/// ```
/// use anet::client::{Connection, ConnectionConfig};
/// use anet_proto::{FrameCodec, read_frame, write_frame};
/// use bytes::Bytes;
/// use tower::{Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), anet::Error> {
/// // An in-memory echo server on the other end of a duplex pipe.
/// let (client_io, mut server_io) = tokio::io::duplex(4096);
/// tokio::spawn(async move {
///     let codec = FrameCodec::new();
///     while let Ok(Some(frame)) = read_frame(&mut server_io, &codec).await {
///         write_frame(&mut server_io, &codec, frame.as_ref()).await.unwrap();
///     }
/// });
///
/// let mut conn = Connection::new(client_io, ConnectionConfig::new());
/// let response = conn.ready().await?.call(Bytes::from_static(b"ping")).await?;
/// assert_eq!(response, "ping");
/// # Ok(())
/// # }
/// ```
pub struct Connection {
    tx: mpsc::UnboundedSender<Message>,
    /// Waits for room when the window is full.
    semaphore: PollSemaphore,
    /// `semaphore` has an acquire pending: keep polling it (it holds a place in
    /// the queue) rather than trying the window directly.
    acquiring: bool,
    /// The unit of the window `poll_ready` took for the next `call` (given back
    /// when dropped, e.g. with the handle).
    reserved: Option<Unit>,
    shared: Arc<Shared>,
    /// Largest payload the frame format can carry, checked before queueing.
    max_payload: usize,
}

impl Connection {
    /// Spawns the driver for `io` on the current tokio runtime and returns a handle.
    ///
    /// `io` is any byte stream: a `TcpStream`, a Unix socket, a TLS stream, an
    /// in-memory duplex.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime, or when `config` is invalid (see
    /// [`ConnectionConfig::validate`]; [`try_new`](Connection::try_new) returns
    /// the error instead).
    pub fn new<T>(io: T, config: ConnectionConfig) -> Connection
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        config.assert_valid();
        Connection::try_new(io, config).expect("configuration validated above")
    }

    /// Like [`new`](Connection::new), but an invalid `config` is an error.
    ///
    /// # Errors
    ///
    /// [`Kind::InvalidConfig`] when `config` cannot keep the tag invariant
    /// (see [`ConnectionConfig::validate`]).
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub fn try_new<T>(io: T, config: ConnectionConfig) -> Result<Connection, Error>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let layout = config.layout()?;
        let shared = Arc::new(Shared::new(layout.window));
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = Driver::new(io, config, rx, shared.clone(), layout);
        tokio::spawn(driver.run());
        Ok(Connection {
            tx,
            semaphore: PollSemaphore::new(shared.semaphore.clone()),
            acquiring: false,
            reserved: None,
            shared,
            max_payload: config.frame.max_payload(),
        })
    }

    /// Starts a graceful close: new requests are refused with [`Kind::Closed`],
    /// accepted ones are written and awaited for the close grace.
    pub fn close(&self) {
        self.shared.refuse(Error::new(Kind::Closed));
        let _ = self.tx.send(Message::Close);
    }

    /// Closes a connection its owner stops using while the client stays open
    /// (its endpoint was removed): like [`close`](Self::close), but new
    /// requests are refused as [`Kind::NotSent`], so a request that raced the
    /// removal (routed on a snapshot of the connections taken just before) is
    /// retried elsewhere rather than failed as if the client had closed.
    /// Accepted requests are written and awaited for the close grace; those
    /// still waiting then fail with [`Kind::Closed`], as with `close`.
    pub(crate) fn close_unused(&self, why: &'static str) {
        self.shared.refuse(Error::with_source(
            Kind::NotSent,
            format!("connection closed: {why}"),
        ));
        let _ = self.tx.send(Message::Close);
    }

    /// Retires a working connection for its owner (age, idle, a heartbeat
    /// miss): like [`close`](Self::close), but new requests are refused as
    /// [`Kind::NotSent`], so a request that raced the retirement is retried
    /// elsewhere rather than failed as if the client had closed, and those
    /// still unanswered when the close grace ends fail as
    /// [`Kind::ConnectionLost`] (they may have reached the server).
    pub(crate) fn retire(&self, why: &'static str) {
        self.shared.refuse(Error::with_source(
            Kind::NotSent,
            format!("connection retired: {why}"),
        ));
        let _ = self.tx.send(Message::Retire(why));
    }

    /// Waits until the driver has finished: every request answered or failed, the
    /// transport dropped.
    pub async fn closed(&self) {
        self.shared.wait_done().await
    }

    /// Joins this connection to its pool's [`Room`]: the driver then wakes
    /// the pool's handles waiting for room when it has units to spare.
    pub(crate) fn share_room(&self, room: Arc<Room>) {
        let _ = self.shared.room.set(room);
    }

    /// Has the driver record its requests (answered, their durations, in
    /// flight) for its endpoint (once; later calls do nothing).
    pub(crate) fn share_metrics(&self, metrics: crate::observe::ConnectionMetrics) {
        let _ = self.shared.metrics.set(metrics);
    }

    /// Whether the driver has finished: every request answered or failed, the
    /// transport dropped (`closed` would not wait).
    pub(crate) fn is_finished(&self) -> bool {
        self.shared.is_done()
    }

    /// Whether the connection refuses new requests (closing, closed or broken).
    pub fn is_closed(&self) -> bool {
        self.shared.is_refusing()
    }

    /// Why the connection refuses requests, once it does: [`Kind::Closed`] after a
    /// requested close, [`Kind::NotSent`] after a retirement (its owner's, or
    /// too many held tags), otherwise the failure (`ConnectionLost`, `Protocol`).
    pub fn close_reason(&self) -> Option<Error> {
        self.shared.is_refusing().then(|| self.shared.reason())
    }

    /// Whether `other` is a handle on the same connection.
    pub(crate) fn same(&self, other: &Connection) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// The driver's response-time estimate in nanoseconds; 0 while it has
    /// none (or the connection does not measure latency).
    #[inline]
    pub(crate) fn rtt_estimate_ns(&self) -> u64 {
        self.shared
            .rtt_ns
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Installs the owner's look at each reply (once; later calls do nothing).
    pub(crate) fn set_reply_hook(&self, hook: super::ReplyHook) {
        let _ = self.shared.hook.set(hook);
    }

    /// Has the driver wake `wake` when it starts refusing requests on its
    /// own (once; later calls do nothing).
    pub(crate) fn set_owner_wake(&self, wake: Arc<tokio::sync::Notify>) {
        let _ = self.shared.owner_wake.set(wake);
    }

    /// When the connection was made.
    pub(crate) fn opened_at(&self) -> tokio::time::Instant {
        self.shared.opened
    }

    /// The window in use (`max_in_flight`).
    pub fn max_in_flight(&self) -> usize {
        self.shared.window
    }

    /// A snapshot of the connection's counters.
    pub fn stats(&self) -> ConnectionStats {
        ConnectionStats::read(&self.shared)
    }
}

impl Clone for Connection {
    fn clone(&self) -> Self {
        Connection {
            tx: self.tx.clone(),
            semaphore: self.semaphore.clone(),
            acquiring: false,
            reserved: None,
            shared: self.shared.clone(),
            max_payload: self.max_payload,
        }
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("in_flight", &self.shared.in_flight())
            .field("max_in_flight", &self.shared.window)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Service<Bytes> for Connection {
    type Response = Bytes;
    type Error = Error;
    type Future = ConnectionFuture;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.reserved.is_some() {
            return Poll::Ready(Ok(()));
        }
        // Room now: take it without joining the queue.
        if !self.acquiring {
            if let Some(unit) = self.shared.try_take_unit() {
                self.reserved = Some(unit);
                return Poll::Ready(Ok(()));
            }
        }
        match self.semaphore.poll_acquire(cx) {
            Poll::Ready(Some(unit)) => {
                self.acquiring = false;
                self.reserved = Some(unit);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(None) => {
                self.acquiring = false;
                Poll::Ready(Err(self.shared.reason().unsent()))
            }
            Poll::Pending => {
                self.acquiring = true;
                Poll::Pending
            }
        }
    }

    #[inline]
    fn call(&mut self, payload: Bytes) -> ConnectionFuture {
        self.call_until(payload, Deadline::Never)
    }
}

impl Connection {
    /// Sends `payload` at once if the window has room, without a `poll_ready` and
    /// without cloning the handle; gives the payload back when the window is full
    /// or the connection refuses requests. Past `deadline` the driver does not
    /// write it, or fails it with [`Kind::Timeout`] if it was written.
    pub(crate) fn try_call(
        &self,
        payload: Bytes,
        deadline: Deadline,
    ) -> Result<ConnectionFuture, Bytes> {
        if let Some(error) = self.oversize(&payload) {
            return Ok(ConnectionFuture::failed(error));
        }
        match self.shared.try_take_unit() {
            Some(unit) => Ok(self.send(payload, deadline, unit)),
            None => Err(payload),
        }
    }

    /// A unit of the window, if one is free now (for a caller that reserves
    /// before it has the request; see [`send_reserved`](Self::send_reserved)).
    #[inline]
    pub(crate) fn try_take_unit(&self) -> Option<Unit> {
        self.shared.try_take_unit()
    }

    /// The unit `poll_ready` reserved, taken out of this handle.
    pub(crate) fn take_reserved(&mut self) -> Option<Unit> {
        self.reserved.take()
    }

    /// Whether `unit` is a unit of this connection's window.
    #[inline]
    pub(crate) fn owns(&self, unit: &Unit) -> bool {
        Arc::ptr_eq(unit.semaphore(), &self.shared.semaphore)
    }

    /// Sends `payload` on a unit of this connection's window taken earlier.
    #[inline]
    pub(crate) fn send_reserved(
        &self,
        unit: Unit,
        payload: Bytes,
        deadline: Deadline,
    ) -> ConnectionFuture {
        debug_assert!(self.owns(&unit), "a unit of another connection");
        if let Some(error) = self.oversize(&payload) {
            return ConnectionFuture::failed(error);
        }
        self.send(payload, deadline, unit)
    }

    /// `call` with a deadline, after `poll_ready` reported ready.
    #[inline]
    pub(crate) fn call_until(&mut self, payload: Bytes, deadline: Deadline) -> ConnectionFuture {
        self.call_reserved(payload, deadline, true)
    }

    #[inline]
    fn oversize(&self, payload: &Bytes) -> Option<Error> {
        (payload.len() > self.max_payload).then(|| too_large(payload.len(), self.max_payload))
    }

    /// `call` for the pool's own requests (heartbeats), which its endpoint's
    /// metrics do not count, after `poll_ready` reported ready.
    pub(crate) fn call_unmetered(&mut self, payload: Bytes) -> ConnectionFuture {
        self.call_reserved(payload, Deadline::Never, false)
    }

    /// Sends on the unit `poll_ready` reserved, `metered` or not.
    #[inline]
    fn call_reserved(
        &mut self,
        payload: Bytes,
        deadline: Deadline,
        metered: bool,
    ) -> ConnectionFuture {
        let unit = self
            .reserved
            .take()
            .expect("Connection::call without poll_ready reporting ready");
        if let Some(error) = self.oversize(&payload) {
            return ConnectionFuture::failed(error);
        }
        self.send_as(payload, deadline, unit, metered)
    }

    /// Queues a request holding one unit of the window.
    #[inline]
    fn send(&self, payload: Bytes, deadline: Deadline, unit: Unit) -> ConnectionFuture {
        self.send_as(payload, deadline, unit, true)
    }

    /// Queues a request holding one unit of the window, `metered` or not.
    #[inline]
    fn send_as(
        &self,
        payload: Bytes,
        deadline: Deadline,
        unit: Unit,
        metered: bool,
    ) -> ConnectionFuture {
        let (claim, slot) = self.shared.cells.claim();
        let mut reply = Reply::new(slot, deadline);
        reply.metered = metered;
        let request = Request {
            payload,
            reply,
            unit,
        };
        match self.tx.send(Message::Request(request)) {
            Ok(()) => ConnectionFuture::waiting(claim),
            // The driver has finished (the window is closed): never written.
            Err(mpsc::error::SendError(message)) => match message {
                Message::Request(request) => {
                    ConnectionFuture::unsent(not_sent(&self.shared), request.payload)
                }
                _ => ConnectionFuture::failed(not_sent(&self.shared)),
            },
        }
    }
}

/// The error for a payload of `len` bytes over the connection's `max`.
#[cold]
fn too_large(len: usize, max: usize) -> Error {
    Error::with_source(
        Kind::InvalidRequest,
        format!("payload of {len} bytes exceeds the maximum of {max}"),
    )
}

/// The error for a request that reached the handle after the driver stopped.
pub(super) fn not_sent(shared: &Shared) -> Error {
    let reason = shared.reason();
    match reason.kind() {
        Kind::Closed => reason.unsent(),
        _ => Error::with_source(Kind::NotSent, reason),
    }
}

impl Load for Connection {
    type Metric = usize;

    fn load(&self) -> usize {
        self.shared.in_flight()
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use bytes::Bytes;
    use tower::Service;

    use super::Connection;
    use crate::{Kind, client::ConnectionConfig};

    /// A unit reserved before the connection retired, used after its driver
    /// stopped: the queue refuses the request, which was never written, and
    /// its failure gives the payload back (the client retries it from there,
    /// keeping no copy of its own).
    #[tokio::test]
    async fn a_request_the_stopped_driver_never_took_comes_back_with_its_failure() {
        let (io, _server) = tokio::io::duplex(4096);
        let conn = Connection::new(io, ConnectionConfig::new());
        let mut reserved = conn.clone();
        poll_fn(|cx| reserved.poll_ready(cx))
            .await
            .expect("room in the window");
        conn.retire("test");
        conn.closed().await;
        let mut future = reserved.call(Bytes::from(b"again".to_vec()));
        let failure = poll_fn(|cx| future.poll_answer(cx))
            .await
            .expect_err("never written");
        assert_eq!(failure.error.kind(), Kind::NotSent, "{:?}", failure.error);
        assert!(failure.error.is_unsent());
        assert_eq!(failure.request.as_deref(), Some(&b"again"[..]));
    }

    /// A connection that retires from its timer (the sweep quarantined two
    /// abandoned requests, reaching its held-tag limit), with nothing left
    /// waiting, closes at once, not when its close grace runs out.
    #[tokio::test(start_paused = true)]
    async fn a_retirement_the_timer_begins_with_nothing_waiting_closes_at_once() {
        let (io, _server) = tokio::io::duplex(4096);
        let grace = std::time::Duration::from_secs(600);
        let config = ConnectionConfig::new()
            .max_in_flight(2)
            .held_tag_limit(2)
            .close_grace(grace);
        let mut conn = Connection::new(io, config);
        for _ in 0..2 {
            poll_fn(|cx| conn.poll_ready(cx)).await.expect("room");
            let future = conn.call(Bytes::from_static(b"never answered"));
            // Written before it is abandoned, so that its tag is held.
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            drop(future);
        }
        let started = tokio::time::Instant::now();
        conn.closed().await;
        let reason = conn.close_reason().expect("closed");
        assert_eq!(reason.kind(), Kind::NotSent, "{reason:?}");
        assert!(
            format!("{reason:?}").contains("never answered"),
            "{reason:?}"
        );
        assert!(
            started.elapsed() < grace / 2,
            "closed after {:?}, the grace being {grace:?}",
            started.elapsed()
        );
    }
}

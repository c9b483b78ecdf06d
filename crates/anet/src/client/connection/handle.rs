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
    ConnectionConfig, ConnectionStats, ResponseFuture,
    driver::{Driver, Message, Request},
    reply::Reply,
    shared::Shared,
};
use crate::{Error, Kind, client::deadline::Deadline};

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
pub struct Connection {
    tx: mpsc::UnboundedSender<Message>,
    /// Waits for room when the window is full.
    semaphore: PollSemaphore,
    /// `semaphore` has an acquire pending: keep polling it (it holds a place in
    /// the queue) rather than trying the window directly.
    acquiring: bool,
    /// `poll_ready` took (and forgot) a unit of the window for the next `call`;
    /// given back if the handle is dropped first.
    reserved: bool,
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
    /// When called outside a tokio runtime.
    pub fn new<T>(io: T, config: ConnectionConfig) -> Connection
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let window = config.window();
        let shared = Arc::new(Shared::new(window));
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = Driver::new(io, config, rx, shared.clone());
        tokio::spawn(driver.run());
        Connection {
            tx,
            semaphore: PollSemaphore::new(shared.semaphore.clone()),
            acquiring: false,
            reserved: false,
            shared,
            max_payload: config.frame.max_payload(),
        }
    }

    /// Starts a graceful close: new requests are refused with [`Kind::Closed`],
    /// accepted ones are written and awaited for the close grace.
    pub fn close(&self) {
        self.shared.refuse(Error::new(Kind::Closed));
        let _ = self.tx.send(Message::Close);
    }

    /// Waits until the driver has finished: every request answered or failed, the
    /// transport dropped.
    pub async fn closed(&self) {
        self.shared.wait_done().await
    }

    /// Whether the connection refuses new requests (closing, closed or broken).
    pub fn is_closed(&self) -> bool {
        self.shared.is_refusing()
    }

    /// Why the connection refuses requests, once it does: [`Kind::Closed`] after a
    /// requested close, otherwise the failure (`ConnectionLost`, `Protocol`).
    pub fn close_reason(&self) -> Option<Error> {
        self.shared.is_refusing().then(|| self.shared.reason())
    }

    /// The window actually in use (`max_in_flight`, clamped to the tag space).
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
            reserved: false,
            shared: self.shared.clone(),
            max_payload: self.max_payload,
        }
    }
}

impl Drop for Connection {
    /// A unit of the window reserved by `poll_ready` and never used goes back.
    fn drop(&mut self) {
        if self.reserved {
            self.shared.semaphore.add_permits(1);
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
    type Future = ResponseFuture;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.reserved {
            return Poll::Ready(Ok(()));
        }
        // Room now: take it without the queue (and without a permit object).
        if !self.acquiring {
            if let Ok(permit) = self.shared.semaphore.try_acquire() {
                permit.forget();
                self.reserved = true;
                return Poll::Ready(Ok(()));
            }
        }
        match self.semaphore.poll_acquire(cx) {
            Poll::Ready(Some(permit)) => {
                permit.forget();
                self.acquiring = false;
                self.reserved = true;
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
    fn call(&mut self, payload: Bytes) -> ResponseFuture {
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
    ) -> Result<ResponseFuture, Bytes> {
        if let Some(error) = self.oversize(&payload) {
            return Ok(ResponseFuture::failed(error));
        }
        match self.shared.semaphore.try_acquire() {
            Ok(permit) => {
                // The unit of window now travels with the request; the driver
                // gives it back when the request's slot frees.
                permit.forget();
                Ok(self.send(payload, deadline))
            }
            Err(_) => Err(payload),
        }
    }

    /// `call` with a deadline, after `poll_ready` reported ready.
    #[inline]
    pub(crate) fn call_until(&mut self, payload: Bytes, deadline: Deadline) -> ResponseFuture {
        assert!(
            std::mem::take(&mut self.reserved),
            "Connection::call without poll_ready reporting ready"
        );
        if let Some(error) = self.oversize(&payload) {
            self.shared.semaphore.add_permits(1);
            return ResponseFuture::failed(error);
        }
        self.send(payload, deadline)
    }

    fn oversize(&self, payload: &Bytes) -> Option<Error> {
        (payload.len() > self.max_payload).then(|| {
            Error::with_source(
                Kind::InvalidRequest,
                format!(
                    "payload of {} bytes exceeds the maximum of {}",
                    payload.len(),
                    self.max_payload
                ),
            )
        })
    }

    /// Queues a request holding one (forgotten) unit of the window.
    fn send(&self, payload: Bytes, deadline: Deadline) -> ResponseFuture {
        let (reply, rx) = Reply::channel(deadline);
        let request = Request { payload, reply };
        match self.tx.send(Message::Request(request)) {
            Ok(()) => ResponseFuture::waiting(rx),
            // The driver has finished (the window is closed): never written.
            Err(_) => ResponseFuture::failed(not_sent(&self.shared)),
        }
    }
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

//! Settings of a [`Server`](super::Server).

use std::time::Duration;

use anet_proto::Builder as FrameBuilder;

/// What the server puts on the wire when the service fails a request (returns an
/// error or panics).
///
/// The protocol has no error frame, so the choice is between silence and closing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnError {
    /// Send nothing for that request; the connection and its other requests carry
    /// on. The client sees its own timeout for that request. The default.
    #[default]
    NoResponse,
    /// Close the connection once the responses already produced are written; the
    /// client fails the connection's waiting requests at once
    /// (`ConnectionLost`).
    Close,
}

/// Settings of a [`Server`](super::Server), and the way to start one: `Copy`,
/// setters by value, then [`bind`](Builder::bind) or [`listener`](Builder::listener).
#[derive(Clone, Copy, Debug)]
pub struct Builder {
    pub(crate) frame: FrameBuilder,
    pub(crate) max_connections: usize,
    pub(crate) max_in_flight_per_connection: usize,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) read_timeout: Option<Duration>,
    pub(crate) write_timeout: Option<Duration>,
    pub(crate) shutdown_grace: Duration,
    pub(crate) on_error: OnError,
    pub(crate) nodelay: bool,
}

impl Builder {
    /// The defaults: Go anet framing, 1024 connections, 256 requests in flight per
    /// connection, 5 min idle timeout, 10 s read and write timeouts, 10 s shutdown
    /// grace, [`OnError::NoResponse`], `TCP_NODELAY` on.
    pub const fn new() -> Builder {
        Builder {
            frame: FrameBuilder::new(),
            max_connections: 1024,
            max_in_flight_per_connection: 256,
            idle_timeout: Some(Duration::from_secs(300)),
            read_timeout: Some(Duration::from_secs(10)),
            write_timeout: Some(Duration::from_secs(10)),
            shutdown_grace: Duration::from_secs(10),
            on_error: OnError::NoResponse,
            nodelay: true,
        }
    }

    /// The frame format (length width, maximum frame, tag width). Default: Go anet
    /// compatible. A request over the maximum is a protocol error that closes its
    /// connection; a response over it is dropped and counted as an error.
    pub const fn frame(mut self, frame: FrameBuilder) -> Self {
        self.frame = frame;
        self
    }

    /// Most connections open at once. Default: 1024. A connection accepted past the
    /// limit is closed at once (the client sees the connection closed) and counted
    /// as rejected.
    pub const fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Most requests of one connection being served at once. Default: 256. At the
    /// limit (or while the service is not ready, or while 256 KiB of responses wait
    /// for a client that does not read) the server stops reading that connection,
    /// so TCP backpressure reaches the client.
    pub const fn max_in_flight_per_connection(mut self, n: usize) -> Self {
        self.max_in_flight_per_connection = n;
        self
    }

    /// Close a connection that has had nothing in flight and sent nothing for this
    /// long. Default: 5 min. `None` keeps idle connections forever.
    pub const fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Close a connection whose started frame does not complete within this long
    /// (slow or stalled senders). Default: 10 s. `None` disables the check.
    pub const fn read_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// Close a connection whose responses cannot be written for this long (a
    /// client that does not read). Default: 10 s. `None` disables the check.
    pub const fn write_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// How long a graceful shutdown waits for requests in flight before closing
    /// their connections. Default: 10 s.
    pub const fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// The wire behaviour when the service fails or panics. Default:
    /// [`OnError::NoResponse`].
    pub const fn on_error(mut self, on_error: OnError) -> Self {
        self.on_error = on_error;
        self
    }

    /// Whether accepted sockets get `TCP_NODELAY`. Default: true.
    pub const fn nodelay(mut self, nodelay: bool) -> Self {
        self.nodelay = nodelay;
        self
    }
}

impl Default for Builder {
    fn default() -> Self {
        Builder::new()
    }
}

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
#[must_use = "a builder does nothing until a server is bound"]
pub struct Builder {
    pub(crate) frame: FrameBuilder,
    pub(crate) max_connections: usize,
    pub(crate) max_in_flight_per_connection: usize,
    pub(crate) max_in_flight_bytes: usize,
    pub(crate) max_in_flight_requests: usize,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) first_frame_timeout: Option<Duration>,
    pub(crate) evict_idle_after: Option<Duration>,
    pub(crate) max_connections_per_peer: Option<usize>,
    pub(crate) read_timeout: Option<Duration>,
    pub(crate) write_timeout: Option<Duration>,
    pub(crate) shutdown_grace: Duration,
    pub(crate) on_error: OnError,
    pub(crate) nodelay: bool,
}

impl Builder {
    /// The defaults:
    ///
    /// | setting | default |
    /// |---|---|
    /// | [`frame`](Builder::frame) | Go anet framing (2-byte length, 4-byte tag, 65535-byte body) |
    /// | [`max_connections`](Builder::max_connections) | 1024 |
    /// | [`evict_idle_after`](Builder::evict_idle_after) | 1 s (at the limit, an idle connection older than this makes room) |
    /// | [`max_connections_per_peer`](Builder::max_connections_per_peer) | none |
    /// | [`max_in_flight_per_connection`](Builder::max_in_flight_per_connection) | 256 |
    /// | [`max_in_flight_bytes`](Builder::max_in_flight_bytes) | 64 MiB, server-wide |
    /// | [`max_in_flight_requests`](Builder::max_in_flight_requests) | 10,000, server-wide |
    /// | [`first_frame_timeout`](Builder::first_frame_timeout) | 10 s |
    /// | [`idle_timeout`](Builder::idle_timeout) | 5 min |
    /// | [`read_timeout`](Builder::read_timeout) | 10 s |
    /// | [`write_timeout`](Builder::write_timeout) | 10 s |
    /// | [`shutdown_grace`](Builder::shutdown_grace) | 10 s |
    /// | [`on_error`](Builder::on_error) | [`OnError::NoResponse`] |
    /// | [`nodelay`](Builder::nodelay) | on |
    pub const fn new() -> Builder {
        Builder {
            frame: FrameBuilder::new(),
            max_connections: 1024,
            max_in_flight_per_connection: 256,
            max_in_flight_bytes: 64 * 1024 * 1024,
            max_in_flight_requests: 10_000,
            idle_timeout: Some(Duration::from_secs(300)),
            first_frame_timeout: Some(Duration::from_secs(10)),
            evict_idle_after: Some(Duration::from_secs(1)),
            max_connections_per_peer: None,
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

    /// Most connections open at once. Default: 1024. A connection accepted at the
    /// limit first tries to take the place of an idle one (see
    /// [`evict_idle_after`](Builder::evict_idle_after)); when no connection can
    /// make room (every one has requests in flight or was active too recently),
    /// the new connection is closed at once (the client sees the connection
    /// closed) and counted as rejected.
    ///
    /// A newcomer that evicted a connection waits for its slot while the
    /// evicted connection answers what it had received and closes: at most the
    /// [`first_frame_timeout`](Builder::first_frame_timeout) (10 s when that is
    /// off). A newcomer still without a slot then is closed and counted as
    /// rejected (and as rejected after the wait; its eviction stays counted).
    /// Meanwhile the open sockets (served connections plus waiting newcomers)
    /// can briefly reach up to twice `max_connections`; the connections served
    /// at once never exceed it.
    pub const fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Reclaiming idle slots at the connection limit. Default: 1 s. When a
    /// connection arrives while `max_connections` are open, the server closes
    /// one idle connection (nothing in flight, no response waiting to be
    /// written, idle for at least this long) and admits the newcomer in its
    /// place; the eviction is counted and logged. Silent connections (that have
    /// not completed a frame yet; idle since they were accepted, a frame still
    /// arriving is not activity) go first, the one open longest first; then the
    /// connection idle longest. A connection holding received bytes that wait
    /// for the service's readiness counts as busy.
    ///
    /// An evicted connection reads nothing new but answers what it already
    /// received (requests in flight, frames in its read buffer, and what one
    /// last read of its socket finds) before it closes. A request still in
    /// transit when an idle connection is evicted (its client had not seen the
    /// close yet) can fail with `ConnectionLost`, as with the idle timeout: a
    /// client retries it only if it is idempotent. `None` never evicts: at the
    /// limit new connections are refused.
    pub const fn evict_idle_after(mut self, min_idle: Option<Duration>) -> Self {
        self.evict_idle_after = min_idle;
        self
    }

    /// Most connections open at once from one remote IP address. Default: none
    /// (no per-peer limit). A connection past it is closed at once and counted
    /// as rejected (and as rejected per peer); it does not evict anything.
    pub const fn max_connections_per_peer(mut self, n: Option<usize>) -> Self {
        self.max_connections_per_peer = n;
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

    /// Most request bytes the whole server holds for unanswered requests, all
    /// connections together. Default: 64 MiB. Never less than one maximum
    /// frame body ([`frame`](Builder::frame)): a smaller value is raised to it
    /// when the server is built, so that every frame fits once the others are
    /// answered.
    ///
    /// A request is charged its body (tag and payload) when its length field is
    /// read, before its body is read or allocated, and keeps the charge until
    /// its answer is produced (or the service fails it). When a request does
    /// not fit, its connection stops reading (TCP backpressure reaches the
    /// client) until answers free room: nothing read is ever dropped or failed
    /// for it. Waiting connections are served in order, so a large frame at
    /// the head of a queue waits until its size is free, and those behind it
    /// wait with it.
    ///
    /// Responses not yet written to the socket are charged when they are
    /// large: a response payload over 4 KiB is charged until written, and so
    /// is the whole write buffer of small responses once it has grown past
    /// 16 KiB. Below that (payloads up to 4 KiB, copied into a write buffer of
    /// up to 16 KiB) nothing is charged: each connection may hold up to 16 KiB
    /// of small responses outside the budget. A client that reads nothing
    /// keeps its share until the write timeout closes it.
    ///
    /// Fairness: when room frees, connections that held nothing when they
    /// started waiting go first, before connections that already hold
    /// requests, so one client flooding from many connections does not lock
    /// out a client that sends one request at a time (connections that all
    /// start waiting holding nothing, as many arriving at once, are served in
    /// turn). While both kinds wait, one grant in four goes to a connection
    /// holding requests, so a stream of newcomers cannot starve them.
    ///
    /// Memory outside the budget, per open connection: a read buffer of
    /// 4 KiB, growing up to 64 KiB while reads fill it with small pipelined
    /// requests (those received but not yet charged stay in it while the
    /// connection waits; otherwise it shrinks back to 4 KiB), plus up to
    /// 16 KiB of write buffer. The server's memory is thus at most about this
    /// budget plus 80 KiB per open connection (with the defaults, 64 MiB +
    /// 1,024 × 80 KiB = 144 MiB), plus the services' own state. Request
    /// payloads are copied out of the read buffer (or read into a buffer of
    /// their exact size), so a payload held by a slow handler keeps only its
    /// own bytes alive. Requests a service keeps beyond their answer are the
    /// service's to bound. Applications that serve as a proxy (slow handlers
    /// by nature) inherit this setting from their server `Builder`.
    pub const fn max_in_flight_bytes(mut self, bytes: usize) -> Self {
        self.max_in_flight_bytes = bytes;
        self
    }

    /// Most unanswered requests the whole server holds, all connections
    /// together. Default: 10,000 (as the Go library caps its handlers). At the
    /// limit connections stop reading, as for
    /// [`max_in_flight_bytes`](Builder::max_in_flight_bytes). Values are
    /// capped at 2^20 - 1; 0 counts as 1.
    pub const fn max_in_flight_requests(mut self, n: usize) -> Self {
        self.max_in_flight_requests = n;
        self
    }

    /// Close a connection that has had nothing in flight and sent nothing for this
    /// long. Default: 5 min. `None` keeps idle connections forever.
    pub const fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Close a connection that has not delivered a complete first frame within
    /// this long of being admitted (silent or trickling newcomers), whatever the
    /// idle and read timeouts say. Default: 10 s. Counted as a timeout and as a
    /// first-frame timeout. It pauses while the connection waits for the
    /// server-wide budget (the time waited does not count: the deadline moves
    /// later by it). It does not fire while the service is not ready (the
    /// server is not reading then, and the first frame may be waiting for it),
    /// but that time counts: a connection that has not framed when readiness
    /// returns is closed at once if the timeout has passed meanwhile. `None`
    /// disables the check.
    pub const fn first_frame_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.first_frame_timeout = timeout;
        self
    }

    /// Close a connection whose started frame does not complete within this long
    /// (slow or stalled senders). Default: 10 s. `None` disables the check. It
    /// does not run while the connection waits for the server-wide budget (the
    /// server is not reading then).
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

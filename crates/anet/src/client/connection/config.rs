//! Settings of one multiplexed connection.

use std::time::Duration;

use anet_proto::Builder as FrameBuilder;

/// Settings of a multiplexed [`Connection`](super::Connection). `Copy`; setters
/// take and return it by value.
///
/// ```
/// use std::time::Duration;
/// use anet::client::ConnectionConfig;
///
/// let config = ConnectionConfig::new()
///     .max_in_flight(128)
///     .quarantine(Duration::from_secs(5));
/// assert_eq!(config.get_max_in_flight(), 128);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct ConnectionConfig {
    pub(crate) frame: FrameBuilder,
    pub(crate) max_in_flight: usize,
    pub(crate) quarantine: Duration,
    pub(crate) quarantine_limit: Option<usize>,
    pub(crate) close_grace: Duration,
    pub(crate) write_buffer: usize,
    pub(crate) read_timeout: Option<Duration>,
}

impl ConnectionConfig {
    /// The defaults: Go anet framing, 512 requests in flight, 2 s quarantine, the
    /// connection declared unhealthy when its whole window is quarantined, 5 s close
    /// grace, 64 KiB write coalescing, 10 s read timeout for a started frame.
    pub const fn new() -> ConnectionConfig {
        ConnectionConfig {
            frame: FrameBuilder::new(),
            max_in_flight: 512,
            quarantine: Duration::from_secs(2),
            quarantine_limit: Some(usize::MAX),
            close_grace: Duration::from_secs(5),
            write_buffer: 64 * 1024,
            read_timeout: Some(Duration::from_secs(10)),
        }
    }

    /// The frame format: length width, maximum frame, tag format. Default:
    /// [`anet_proto::Builder::new`] (Go anet compatible).
    pub const fn frame(mut self, frame: FrameBuilder) -> Self {
        self.frame = frame;
        self
    }

    /// The most requests in flight on the connection at once, quarantined tags
    /// included. Default: 512. While the window is full, `poll_ready` is pending.
    ///
    /// Clamped to the tag format's space when the connection is made, so that every
    /// slot keeps at least two generations: an ASCII tag of 2 digits (100 tags)
    /// allows 32 in flight, of 4 digits 4096.
    pub const fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// How long the tag of an abandoned request (dropped or timed out) stays
    /// reserved, still counting against `max_in_flight`, when its late response
    /// does not arrive. Default: 2 s. Abandonment is noticed within a quarter of
    /// this period, so a tag is held for at most 1.25 times it.
    pub const fn quarantine(mut self, period: Duration) -> Self {
        self.quarantine = period;
        self
    }

    /// When this many tags are quarantined at once, the connection is declared
    /// unhealthy: it refuses new requests (`poll_ready` fails with
    /// `ConnectionLost`, so its owner replaces it) and drains the rest. Default:
    /// the whole window (`max_in_flight`). `None` disables the check.
    pub const fn quarantine_limit(mut self, limit: Option<usize>) -> Self {
        self.quarantine_limit = limit;
        self
    }

    /// How long closing waits for in-flight responses before failing the rest
    /// with `Closed`. Default: 5 s.
    pub const fn close_grace(mut self, grace: Duration) -> Self {
        self.close_grace = grace;
        self
    }

    /// Bytes of encoded requests buffered before a write is forced. Requests that
    /// queue up together leave in one write; the buffer is always flushed when the
    /// queue is drained. Default: 64 KiB.
    pub const fn write_buffer(mut self, bytes: usize) -> Self {
        self.write_buffer = bytes;
        self
    }

    /// Fail the connection (`ConnectionLost`, so it is replaced) when a response
    /// frame has started arriving but does not complete within this long: a peer
    /// that announces a large frame and trickles it. Default: 10 s. `None`
    /// disables the check.
    pub const fn read_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.read_timeout = timeout;
        self
    }

    /// The frame format.
    pub const fn get_frame(&self) -> FrameBuilder {
        self.frame
    }

    /// The configured window (before clamping to the tag space).
    pub const fn get_max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    /// The window actually used: at least 1, and small enough that its slot table
    /// (the window rounded up to a power of two) gives every slot at least two
    /// generations in the tag space; at most 2^31.
    pub(crate) fn window(&self) -> usize {
        let space = self.frame.get_tag_format().id_space();
        // The largest power of two p with 2p <= space (at least 1).
        let half = (space / 2).max(1);
        let cap = (1u64 << (63 - half.leading_zeros())).min(1 << 31);
        (self.max_in_flight as u64).clamp(1, cap) as usize
    }

    /// The quarantine limit resolved against the window.
    pub(crate) fn resolved_quarantine_limit(&self) -> usize {
        match self.quarantine_limit {
            Some(limit) => limit.clamp(1, self.window()),
            None => usize::MAX,
        }
    }
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig::new()
    }
}

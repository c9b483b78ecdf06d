//! Settings of one multiplexed connection.

use std::time::Duration;

use anet_proto::Builder as FrameBuilder;

use crate::{Error, Kind};

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
/// assert_eq!(config.effective_max_in_flight(), 128);
/// assert!(config.validate().is_ok());
/// ```
///
/// # Tags and the window
///
/// A connection never issues a tag value while an earlier request that carried
/// the same value was written and is still unanswered (its caller may have given
/// up, but the server may still answer it). So the tag space must hold the
/// window (`max_in_flight`) *plus* the tags held for abandoned requests
/// ([`held_tag_limit`](Self::held_tag_limit)); when the held tags reach their
/// limit, the connection retires (takes no new requests, finishes the rest
/// within the close grace, closes) and its owner replaces it. A configuration
/// whose window and held-tag limit do not fit in the tag space is refused by
/// [`validate`](Self::validate) (and by everything that builds connections from
/// it) instead of being clamped.
#[derive(Clone, Copy, Debug)]
#[must_use = "a configuration does nothing until it is used"]
pub struct ConnectionConfig {
    pub(crate) frame: FrameBuilder,
    /// `None`: the default, 512 or half the tag space when that is smaller.
    max_in_flight: Option<usize>,
    pub(crate) quarantine: Duration,
    /// `None`: the default, the window or what the tag space leaves beside it.
    held_tag_limit: Option<usize>,
    pub(crate) close_grace: Duration,
    pub(crate) write_buffer: usize,
    pub(crate) read_timeout: Option<Duration>,
    /// Keep a peak-EWMA response-time estimate for the balancer (set by the
    /// client builder from its [`LoadMeasure`](crate::client::LoadMeasure);
    /// `None` for a connection made on its own).
    pub(crate) latency: Option<crate::client::PeakEwmaConfig>,
}

/// The default window when the tag space allows it.
const DEFAULT_MAX_IN_FLIGHT: usize = 512;

/// The largest window, and the largest held-tag limit: far beyond what one
/// connection needs, and small enough that the table (allocated up front)
/// stays within a few hundred MiB.
pub(crate) const MAX_WINDOW: usize = 1 << 20;

/// A configuration resolved against its tag space: how many requests may be in
/// flight, how many tags may be held, and how many tag-table slots hold both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Window units: requests queued, waiting or quarantined at once.
    pub(crate) window: usize,
    /// Tags of abandoned, unanswered requests at which the connection retires.
    pub(crate) held_limit: usize,
    /// Table slots: at least `window + held_limit`, and at most the tag space.
    pub(crate) slots: usize,
}

impl ConnectionConfig {
    /// The defaults: Go anet framing, 512 requests in flight (or half the tag
    /// space when that is smaller), 2 s quarantine, a held-tag limit equal to the
    /// window (or what the tag space leaves beside it), 5 s close grace, 64 KiB
    /// write coalescing, 10 s read timeout for a started frame.
    pub const fn new() -> ConnectionConfig {
        ConnectionConfig {
            frame: FrameBuilder::new(),
            max_in_flight: None,
            quarantine: Duration::from_secs(2),
            held_tag_limit: None,
            close_grace: Duration::from_secs(5),
            write_buffer: 64 * 1024,
            read_timeout: Some(Duration::from_secs(10)),
            latency: None,
        }
    }

    /// The frame format: length width, maximum frame, tag format. Default:
    /// [`anet_proto::Builder::new`] (Go anet compatible).
    pub const fn frame(mut self, frame: FrameBuilder) -> Self {
        self.frame = frame;
        self
    }

    /// The most requests in flight on the connection at once, quarantined tags
    /// included. Default: 512, or half the tag format's space when that is
    /// smaller (an ASCII tag of 2 digits: 50). While the window is full,
    /// `poll_ready` is pending. At most 2^20.
    ///
    /// The window plus the [held-tag limit](Self::held_tag_limit) must fit in
    /// the tag space (an ASCII tag of 4 digits has 10,000 values); otherwise
    /// the configuration is refused (see [`validate`](Self::validate)).
    pub const fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = Some(n);
        self
    }

    /// How long an abandoned request (dropped or timed out after it was written)
    /// keeps its unit of the window when its late response does not arrive, so
    /// that a slow server is not handed more work than the window allows.
    /// Default: 2 s. Abandonment is noticed within a quarter of this period (at
    /// most a second), so a unit is held for at most 1.25 times it.
    ///
    /// The request's *tag value* stays held after the quarantine, until the
    /// late response arrives or the connection closes (see
    /// [`held_tag_limit`](Self::held_tag_limit)).
    pub const fn quarantine(mut self, period: Duration) -> Self {
        self.quarantine = period;
        self
    }

    /// How many tag values the connection may hold for abandoned requests that
    /// were written and never answered (quarantined or past their quarantine).
    /// When this many are held, the connection retires: it refuses new requests
    /// (`poll_ready` fails with `NotSent`, so its owner replaces it and a request
    /// that raced the retirement is retried elsewhere),
    /// writes what it already accepted, waits for answers within the close
    /// grace, and closes, which ends every hold. Default: the window, or what
    /// the tag space leaves beside it when that is less. At least 1, at most
    /// 2^20.
    ///
    /// With an endless [quarantine](Self::quarantine) (a year or more, e.g.
    /// `Duration::MAX`) the connection also retires when its whole window is
    /// quarantined, since it could never take another request.
    pub const fn held_tag_limit(mut self, limit: usize) -> Self {
        self.held_tag_limit = Some(limit);
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

    /// The window in effect: the configured
    /// [`max_in_flight`](Self::max_in_flight), or the default for the tag format.
    /// (Setters are named after the setting; what a configuration resolves to
    /// is read with `effective_*`.)
    pub const fn effective_max_in_flight(&self) -> usize {
        match self.max_in_flight {
            Some(n) => n,
            None => default_window(self.frame.get_tag_format().id_space()),
        }
    }

    /// The held-tag limit in effect: the configured
    /// [`held_tag_limit`](Self::held_tag_limit), or the default for the window and
    /// tag format.
    pub const fn effective_held_tag_limit(&self) -> usize {
        match self.held_tag_limit {
            Some(n) => n,
            None => {
                let space = self.frame.get_tag_format().id_space();
                let window = self.effective_max_in_flight() as u64;
                let left = space.saturating_sub(window);
                let limit = if left < window { left } else { window };
                if limit == 0 { 1 } else { limit as usize }
            }
        }
    }

    /// Checks that the configuration can keep its promises: a window and a
    /// held-tag limit between 1 and 2^20 whose sum fits in the tag space.
    ///
    /// What no configuration can do: tell a server's *repeat* of an answer
    /// (sent again after the request was answered) from the answer to a later
    /// request that carries the same tag value. Free tags are reused oldest
    /// first, each time with the slot's next generation, so a value comes back
    /// only after about as many requests as the tag space holds, less the
    /// held tags (some 10,000 for a 4-digit ASCII tag, 4 billion for the
    /// default binary tag); a repeat that arrives before then is dropped.
    ///
    /// # Errors
    ///
    /// [`Kind::InvalidConfig`](crate::Kind::InvalidConfig), saying which
    /// setting to change.
    ///
    /// ```
    /// use anet::client::ConnectionConfig;
    /// use anet_proto::{Builder, TagFormat};
    ///
    /// let hsm = ConnectionConfig::new().frame(Builder::new().tag_format(TagFormat::ascii(2)));
    /// assert!(hsm.validate().is_ok()); // 50 in flight, 50 held
    /// assert!(hsm.max_in_flight(64).validate().is_ok()); // 64 in flight, 36 held
    /// assert!(hsm.max_in_flight(64).held_tag_limit(50).validate().is_err()); // 114 > 100 tags
    /// assert!(hsm.max_in_flight(100).validate().is_err()); // no tag left to hold
    /// ```
    pub fn validate(&self) -> Result<(), Error> {
        self.layout().map(|_| ())
    }

    /// Panics with the reason when the configuration is invalid.
    pub(crate) fn assert_valid(&self) {
        if let Err(e) = self.layout() {
            let why = std::error::Error::source(&e).map(ToString::to_string);
            panic!(
                "invalid connection configuration: {}",
                why.unwrap_or_default()
            );
        }
    }

    /// The window, held-tag limit and table size, or why they cannot be kept.
    pub(crate) fn layout(&self) -> Result<Layout, Error> {
        let format = self.frame.get_tag_format();
        let space = format.id_space();
        let window = self.effective_max_in_flight();
        let held_limit = self.effective_held_tag_limit();
        let invalid = |why: String| Err(Error::with_source(Kind::InvalidConfig, why));
        if window == 0 {
            return invalid("max_in_flight must be at least 1".into());
        }
        if window > MAX_WINDOW {
            return invalid(format!("max_in_flight {window} exceeds {MAX_WINDOW}"));
        }
        if held_limit == 0 {
            return invalid("held_tag_limit must be at least 1".into());
        }
        if held_limit > MAX_WINDOW {
            return invalid(format!("held_tag_limit {held_limit} exceeds {MAX_WINDOW}"));
        }
        let needed = (window + held_limit) as u64;
        if needed > space {
            return invalid(format!(
                "max_in_flight {window} plus held_tag_limit {held_limit} needs {needed} \
                 distinct tags, but the tag format {format:?} has only {space}: lower them \
                 or use a wider tag"
            ));
        }
        // A power of two when the space allows (the tag splits with a mask and a
        // shift); otherwise exactly what is needed.
        let pow2 = needed.next_power_of_two();
        let slots = if pow2 <= space { pow2 } else { needed } as usize;
        Ok(Layout {
            window,
            held_limit,
            slots,
        })
    }
}

/// 512, or half the tag space when that is smaller (at least 1).
const fn default_window(space: u64) -> usize {
    let half = space / 2;
    if half < DEFAULT_MAX_IN_FLIGHT as u64 {
        if half == 0 { 1 } else { half as usize }
    } else {
        DEFAULT_MAX_IN_FLIGHT
    }
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig::new()
    }
}

//! State shared between a connection's handles and its driver task.

use std::sync::{
    Arc, OnceLock,
    atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
};

use tokio::{
    sync::{Notify, Semaphore},
    time::Instant,
};

use bytes::Bytes;

use super::{cells::Cells, unit::Unit};
use crate::client::room::Room;
use crate::{Error, Kind};

/// Looks at every reply delivered on a pooled connection (its owner's response
/// classifier) and says what it was. Installed once, after the connection's
/// handshake, so handshake replies are not seen.
#[derive(Clone)]
pub(crate) struct ReplyHook(pub(crate) Arc<dyn Fn(&Bytes) -> Verdict + Send + Sync>);

/// What a connection's owner made of a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A success.
    Success,
    /// A failure of the endpoint: counts against its latency estimate.
    Failure,
    /// A failure of the connection: it retires (and the reply counts against
    /// its latency estimate).
    Retire,
}

impl std::fmt::Debug for ReplyHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplyHook")
    }
}

/// What the handles and the driver of one connection share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// One permit per request in flight (quarantined tags included): the window.
    pub(crate) semaphore: Arc<Semaphore>,
    /// The window size, to turn available permits into a load.
    pub(crate) window: usize,
    /// Where answers wait for their response futures (reused, so a request
    /// allocates nothing for its answer).
    pub(crate) cells: Arc<Cells>,
    /// Why the connection stopped taking requests; set once.
    reason: OnceLock<Error>,
    /// Set when the driver has finished.
    done: AtomicBool,
    /// Wakes `Connection::closed` waiters.
    done_notify: Notify,
    /// Counters the driver publishes (it is their only writer).
    pub(crate) counters: Counters,
    /// When the connection was made (its owner judges a short-lived one).
    pub(crate) opened: Instant,
    /// The room of the pool this connection belongs to: the driver tells it
    /// when units it gives back are left over.
    pub(crate) room: OnceLock<Arc<Room>>,
    /// The owner's look at each reply, if it has one (read once per driver
    /// pass: one atomic load when unset).
    pub(crate) hook: OnceLock<ReplyHook>,
    /// Woken when the driver starts refusing requests on its own (a
    /// retirement, a failure), so that the owner replaces the connection.
    pub(crate) owner_wake: OnceLock<Arc<Notify>>,
    /// What the driver records for its endpoint (feature `metrics`), once
    /// its owner gives it that.
    pub(crate) metrics: OnceLock<crate::observe::ConnectionMetrics>,
    /// The driver's peak-EWMA response-time estimate in nanoseconds, for the
    /// balancer; 0 while it has none (or does not measure).
    pub(crate) rtt_ns: AtomicU64,
}

/// Counters the driver publishes for [`ConnectionStats`](super::ConnectionStats).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) written: AtomicU64,
    pub(crate) responses: AtomicU64,
    pub(crate) late: AtomicU64,
    pub(crate) unknown: AtomicU64,
    pub(crate) abandoned_unwritten: AtomicU64,
    pub(crate) quarantined: AtomicUsize,
    pub(crate) held: AtomicUsize,
    /// Requests taken and not yet answered at the last publication to the
    /// in-flight gauge (only while it has a share of one).
    pub(crate) in_flight: AtomicUsize,
}

impl Shared {
    pub(crate) fn new(window: usize) -> Shared {
        Shared {
            semaphore: Arc::new(Semaphore::new(window)),
            window,
            cells: Arc::new(Cells::new(window.saturating_mul(2))),
            reason: OnceLock::new(),
            done: AtomicBool::new(false),
            done_notify: Notify::new(),
            counters: Counters::default(),
            opened: Instant::now(),
            room: OnceLock::new(),
            metrics: OnceLock::new(),
            hook: OnceLock::new(),
            owner_wake: OnceLock::new(),
            rtt_ns: AtomicU64::new(0),
        }
    }

    /// Takes a unit of the window if one is free now.
    #[inline]
    pub(crate) fn try_take_unit(&self) -> Option<Unit> {
        self.semaphore.clone().try_acquire_owned().ok()
    }

    /// Stops new requests: records why (the first reason wins) and closes the
    /// window so every pending and future `poll_ready` fails.
    pub(crate) fn refuse(&self, reason: Error) {
        let _ = self.reason.set(reason);
        self.semaphore.close();
    }

    /// Why the connection refuses requests (for `poll_ready` errors).
    pub(crate) fn reason(&self) -> Error {
        self.reason
            .get()
            .cloned()
            .unwrap_or_else(|| Error::new(Kind::Closed))
    }

    /// Wakes the owner, if it asked to be (see `owner_wake`).
    pub(crate) fn wake_owner(&self) {
        if let Some(wake) = self.owner_wake.get() {
            wake.notify_one();
        }
    }

    /// Whether the connection stopped taking requests.
    pub(crate) fn is_refusing(&self) -> bool {
        self.semaphore.is_closed()
    }

    pub(crate) fn mark_done(&self) {
        self.done.store(true, Relaxed);
        self.done_notify.notify_waiters();
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done.load(Relaxed)
    }

    pub(crate) async fn wait_done(&self) {
        loop {
            let notified = self.done_notify.notified();
            if self.is_done() {
                return;
            }
            notified.await;
        }
    }

    /// Requests in flight, quarantined tags and reserved permits included.
    pub(crate) fn in_flight(&self) -> usize {
        if self.semaphore.is_closed() && self.is_done() {
            return 0;
        }
        self.window
            .saturating_sub(self.semaphore.available_permits())
    }
}

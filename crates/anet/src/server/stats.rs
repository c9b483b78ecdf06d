//! Server counters and their snapshot.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering::Relaxed},
};

/// Counters shared by the accept loop and the connection handlers.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) open: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) responses: AtomicU64,
    pub(crate) service_errors: AtomicU64,
    pub(crate) panics: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) timeouts: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Relaxed);
        }
    }
}

/// A handle to read a server's counters at any time, also while it serves.
#[derive(Clone, Debug)]
pub struct StatsHandle {
    pub(crate) counters: Arc<Counters>,
}

impl StatsHandle {
    /// The counters now.
    pub fn snapshot(&self) -> ServerStats {
        let c = &self.counters;
        ServerStats {
            connections_open: c.open.load(Relaxed),
            connections_accepted: c.accepted.load(Relaxed),
            connections_rejected: c.rejected.load(Relaxed),
            requests: c.requests.load(Relaxed),
            responses: c.responses.load(Relaxed),
            service_errors: c.service_errors.load(Relaxed),
            panics: c.panics.load(Relaxed),
            protocol_errors: c.protocol_errors.load(Relaxed),
            timeouts: c.timeouts.load(Relaxed),
        }
    }
}

/// A snapshot of a server's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Connections being served now.
    pub connections_open: u64,
    /// Connections accepted and served, in total.
    pub connections_accepted: u64,
    /// Connections closed at once because `max_connections` were open.
    pub connections_rejected: u64,
    /// Requests read.
    pub requests: u64,
    /// Responses written (buffered for writing).
    pub responses: u64,
    /// Requests the service failed (or whose response was over the maximum).
    pub service_errors: u64,
    /// Requests whose handler panicked.
    pub panics: u64,
    /// Connections closed for a protocol violation (bad length, short frame).
    pub protocol_errors: u64,
    /// Connections closed by the idle, read or write timeout.
    pub timeouts: u64,
}

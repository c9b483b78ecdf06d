//! Server counters and their snapshot.

use std::{
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use super::{Builder, admission::Registry, budget::Budget};

/// Counters shared by the accept loop and the connection handlers.
#[derive(Debug)]
pub(crate) struct Counters {
    /// The server-wide budget for unanswered requests (shared here because
    /// every handler holds these counters already).
    pub(crate) budget: Budget,
    pub(crate) open: AtomicU64,
    pub(crate) accepted: AtomicU64,
    pub(crate) rejected: AtomicU64,
    pub(crate) rejected_per_peer: AtomicU64,
    pub(crate) rejected_after_wait: AtomicU64,
    pub(crate) evicted: AtomicU64,
    pub(crate) first_frame_timeouts: AtomicU64,
    /// The connections of a serving server (none for `serve_connection`): read
    /// for the counts by state. Locked on accept, on close and by snapshots,
    /// never per request.
    pub(crate) registry: Mutex<Option<Registry>>,
    pub(crate) requests: AtomicU64,
    pub(crate) responses: AtomicU64,
    pub(crate) service_errors: AtomicU64,
    pub(crate) panics: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) timeouts: AtomicU64,
}

impl Counters {
    pub(crate) fn new(config: &Builder) -> Counters {
        Counters {
            // Never below one maximum frame: a frame must fit when nothing
            // else is held (see `Builder::max_in_flight_bytes`).
            budget: Budget::new(
                config.max_in_flight_bytes.max(config.frame.max_body()),
                config.max_in_flight_requests,
            ),
            open: AtomicU64::default(),
            accepted: AtomicU64::default(),
            rejected: AtomicU64::default(),
            rejected_per_peer: AtomicU64::default(),
            rejected_after_wait: AtomicU64::default(),
            evicted: AtomicU64::default(),
            first_frame_timeouts: AtomicU64::default(),
            registry: Mutex::default(),
            requests: AtomicU64::default(),
            responses: AtomicU64::default(),
            service_errors: AtomicU64::default(),
            panics: AtomicU64::default(),
            protocol_errors: AtomicU64::default(),
            timeouts: AtomicU64::default(),
        }
    }

    /// A connection refused (closed without being served).
    pub(crate) fn reject(&self) {
        Counters::add(&self.rejected, 1);
        crate::observe::server_rejected();
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        if n != 0 {
            counter.fetch_add(n, Relaxed);
        }
    }

    /// The registry, also after a panic elsewhere while it was locked (its
    /// counts stay usable).
    pub(crate) fn registry(&self) -> MutexGuard<'_, Option<Registry>> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A handle to read a server's counters at any time, also while it serves.
#[derive(Clone, Debug)]
pub struct StatsHandle {
    pub(crate) counters: Arc<Counters>,
}

impl StatsHandle {
    /// The counters now. The counts by state walk the open connections under a
    /// short lock the accept loop also takes: cheap for a dashboard, not meant
    /// for every request.
    pub fn snapshot(&self) -> ServerStats {
        let c = &self.counters;
        let (new, active, idle) = c
            .registry()
            .as_ref()
            .map_or((0, 0, 0), Registry::count_states);
        let (budget_bytes, budget_requests) = c.budget.in_use();
        ServerStats {
            budget_bytes_in_use: budget_bytes,
            budget_requests_in_use: budget_requests,
            throttled: Duration::from_nanos(c.budget.throttled_nanos()),
            connections_open: c.open.load(Relaxed),
            connections_accepted: c.accepted.load(Relaxed),
            connections_rejected: c.rejected.load(Relaxed),
            connections_rejected_per_peer: c.rejected_per_peer.load(Relaxed),
            connections_rejected_after_wait: c.rejected_after_wait.load(Relaxed),
            connections_evicted: c.evicted.load(Relaxed),
            connections_new: new,
            connections_active: active,
            connections_idle: idle,
            first_frame_timeouts: c.first_frame_timeouts.load(Relaxed),
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
    /// Connections closed without being served: at once on accept, because
    /// `max_connections` were open and none could be evicted, or the peer was at
    /// its per-peer limit; or after evicting a connection, when no slot freed
    /// within the wait (see `Builder::max_connections`).
    pub connections_rejected: u64,
    /// Of `connections_rejected`, those refused by the per-peer limit.
    pub connections_rejected_per_peer: u64,
    /// Of `connections_rejected`, those that evicted a connection but got no
    /// slot within the wait (also counted in `connections_evicted`).
    pub connections_rejected_after_wait: u64,
    /// Idle connections asked to close to make room for a new one at
    /// `max_connections`.
    pub connections_evicted: u64,
    /// Connections open now that have not completed a frame yet.
    pub connections_new: u64,
    /// Connections open now with requests in flight (or responses being
    /// written).
    pub connections_active: u64,
    /// Connections open now, past their first frame, with nothing in flight.
    pub connections_idle: u64,
    /// Connections closed because no complete first frame arrived within the
    /// first-frame timeout (also counted in `timeouts`).
    pub first_frame_timeouts: u64,
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
    /// Connections closed by the first-frame, idle, read or write timeout.
    pub timeouts: u64,
    /// Bytes of the server-wide budget in use now (see
    /// `Builder::max_in_flight_bytes`): bodies of requests read and not yet
    /// answered, plus responses not yet written to their sockets.
    pub budget_bytes_in_use: u64,
    /// Requests of the server-wide budget in use now (see
    /// `Builder::max_in_flight_requests`): read and not yet answered.
    pub budget_requests_in_use: u64,
    /// Time connections have spent not reading because the budget was full,
    /// summed over connections (two connections throttled for one second add
    /// two seconds), in total.
    pub throttled: Duration,
}

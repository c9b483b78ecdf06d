//! A snapshot of one connection's counters.

use std::sync::atomic::Ordering::Relaxed;

use super::shared::Shared;

/// Counters of one [`Connection`](super::Connection), read without locking.
///
/// The driver publishes them each time it goes idle, so a snapshot may trail the
/// connection by one batch of work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Window slots in use: requests queued or awaiting a response, quarantined
    /// tags, and slots reserved by `poll_ready`.
    pub in_flight: usize,
    /// Tags held for abandoned requests until their late response or the end of
    /// their quarantine.
    pub quarantined: usize,
    /// Tag values held for requests that were written, abandoned and never
    /// answered (quarantined ones included); the connection retires when they
    /// reach its held-tag limit.
    pub held_tags: usize,
    /// Requests written to the transport.
    pub written: u64,
    /// Responses delivered to their callers.
    pub responses: u64,
    /// Responses that arrived after their caller gave up; dropped.
    pub late: u64,
    /// Responses whose tag matched no request (unknown, or of an earlier
    /// occupant of a reused slot); dropped.
    pub unknown_tags: u64,
    /// Requests abandoned before they were written; never written.
    pub abandoned_unwritten: u64,
}

impl ConnectionStats {
    pub(super) fn read(shared: &Shared) -> ConnectionStats {
        let c = &shared.counters;
        ConnectionStats {
            in_flight: shared.in_flight(),
            quarantined: c.quarantined.load(Relaxed),
            held_tags: c.held.load(Relaxed),
            written: c.written.load(Relaxed),
            responses: c.responses.load(Relaxed),
            late: c.late.load(Relaxed),
            unknown_tags: c.unknown.load(Relaxed),
            abandoned_unwritten: c.abandoned_unwritten.load(Relaxed),
        }
    }
}

//! The deadline of a client call, on its way down to the connection.
//!
//! Reading the clock costs about as much as a tenth of a whole request on the
//! fast path, so a [`Client`](super::Client) call does not read it: its request
//! carries its timeout ([`Deadline::After`]) and the first place that reads the
//! clock anyway fixes the instant. That is the connection's driver, which reads
//! the clock once per batch of requests it takes from its queue (normally
//! microseconds after the call), or the balancer when the request has to wait
//! for an endpoint or for room on a connection. From then on the deadline is an
//! instant ([`Deadline::At`]): the driver never writes a request whose deadline
//! has passed and fails a written one whose deadline passes, from one timer of
//! its own; a failed attempt reports its instant back, so a retry keeps it.
//!
//! With a concurrency or rate limit configured the call needs a timer of its own
//! anyway (the limits wait in `poll_ready`), so it fixes the instant at once and
//! hands it through the layers in a task-local set around its call into them.

use std::time::Duration;

use tokio::time::Instant;

use crate::time::later;

/// When a request must be answered by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// No deadline (a bare connection or balancer call outside a client).
    #[default]
    Never,
    /// This instant.
    At(Instant),
    /// This long after the first clock reading on the request's path.
    After(Duration),
}

impl Deadline {
    /// The instant, fixing it from `now` if it is still relative.
    #[inline]
    pub(crate) fn fix(&mut self, now: impl FnOnce() -> Instant) -> Option<Instant> {
        match *self {
            Deadline::Never => None,
            Deadline::At(at) => Some(at),
            Deadline::After(timeout) => {
                let at = later(now(), timeout);
                *self = Deadline::At(at);
                Some(at)
            }
        }
    }

    /// The instant, if fixed.
    #[inline]
    pub(crate) fn instant(self) -> Option<Instant> {
        match self {
            Deadline::At(at) => Some(at),
            Deadline::Never | Deadline::After(_) => None,
        }
    }
}

tokio::task_local! {
    static DEADLINE: Instant;
}

/// The deadline of the call being made through the layers, if any.
#[inline]
pub(crate) fn current() -> Deadline {
    DEADLINE.try_with(|d| Deadline::At(*d)).unwrap_or_default()
}

/// Runs `f` (a call into the layers) with `deadline` as the current call's deadline.
#[inline]
pub(crate) fn scope<R>(deadline: Instant, f: impl FnOnce() -> R) -> R {
    DEADLINE.sync_scope(deadline, f)
}

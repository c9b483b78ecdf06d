//! The deadline of the client call being polled, visible to the layers below it
//! without changing the request type.
//!
//! [`Client`](super::Client)'s call future sets it around each poll of its inner
//! future. The balancer bounds its own waits (for an endpoint, for room on a
//! connection) by it, and a [`Connection`](super::Connection) hands it to its driver
//! with the request: the driver never writes a request whose deadline has passed
//! and fails a written one whose deadline passes, from one timer of its own. So a
//! call needs no timer of its own on its fast path.

use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// The deadline of the call being polled, if any.
pub(crate) fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// Runs `f` (a poll) with `deadline` as the current call's deadline.
pub(crate) fn scope<R>(deadline: Instant, f: impl FnOnce() -> R) -> R {
    DEADLINE.sync_scope(deadline, f)
}

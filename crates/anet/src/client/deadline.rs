//! The deadline of a client call, handed to the balancer through the limit layers
//! without changing the request type.
//!
//! A [`Client`](super::Client) with no limit configured gives its balancer the
//! deadline directly. With limits, its call future sets this task-local around the
//! call into the layers, where the [`Balancer`](super::Balancer) takes it. The
//! balancer bounds its own waits (for an endpoint, for room on a connection) by it
//! and hands it to the connection's driver with the request: the driver never
//! writes a request whose deadline has passed and fails a written one whose
//! deadline passes, from one timer of its own. So a call needs no timer of its own
//! on its fast path.

use tokio::time::Instant;

tokio::task_local! {
    static DEADLINE: Instant;
}

/// The deadline of the call being polled, if any.
pub(crate) fn current() -> Option<Instant> {
    DEADLINE.try_with(|d| *d).ok()
}

/// Runs `f` (a call into the layers) with `deadline` as the current call's deadline.
pub(crate) fn scope<R>(deadline: Instant, f: impl FnOnce() -> R) -> R {
    DEADLINE.sync_scope(deadline, f)
}

//! Where a request's answer goes, with the deadline the request runs under.

use bytes::Bytes;
use tokio::time::Instant;

use super::cells::Slot;
use crate::{Error, Kind, client::deadline::Deadline};

/// What a request's response future receives (the failure boxed: it is rare,
/// and the answer stays as small as a plain `Result<Bytes, Error>`).
pub(crate) type Answer = Result<Bytes, Box<Failure>>;

/// A failed request: the error, and the deadline it ran under once the driver
/// fixed it (so a retry keeps the call's deadline instead of starting a new one).
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: Error,
    pub(crate) deadline: Option<Instant>,
}

/// The sending side of one request's answer: its response future's cell.
///
/// Dropped unanswered (the driver's task aborted or panicked), it fails the
/// request with [`Kind::ConnectionLost`], so that no future waits forever.
#[derive(Debug)]
pub(crate) struct Reply {
    /// `None` once answered.
    slot: Option<Slot>,
    /// The request's deadline (a relative one is fixed to an instant by the
    /// driver when it takes the request).
    pub(crate) deadline: Deadline,
}

impl Reply {
    /// The reply for a request with `deadline`, answered into `slot`.
    #[inline]
    pub(crate) fn new(slot: Slot, deadline: Deadline) -> Reply {
        Reply {
            slot: Some(slot),
            deadline,
        }
    }

    /// Delivers the response; false if the caller is gone.
    #[inline]
    pub(crate) fn succeed(mut self, payload: Bytes) -> bool {
        self.slot.take().is_some_and(|slot| slot.fill(Ok(payload)))
    }

    /// Fails the request with `error`.
    #[inline]
    pub(crate) fn fail(mut self, error: Error) {
        if let Some(slot) = self.slot.take() {
            let deadline = self.deadline.instant();
            slot.fill(Err(Box::new(Failure { error, deadline })));
        }
    }

    /// The caller dropped its response future.
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.slot.as_ref().is_none_or(Slot::is_closed)
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            // The driver answers every request it takes; it drops one
            // unanswered only when its task ends abnormally.
            if !slot.is_closed() {
                slot.fill(Err(Box::new(Failure {
                    error: Error::with_source(Kind::ConnectionLost, "connection driver stopped"),
                    deadline: None,
                })));
            }
        }
    }
}

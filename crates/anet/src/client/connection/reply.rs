//! Where a request's answer goes, with the deadline the request runs under.

use bytes::Bytes;
use tokio::time::Instant;

use super::cells::{Cells, Slot};
use crate::{Error, client::deadline::Deadline};

/// What a request's response future receives (the failure boxed: it is rare,
/// and the answer stays as small as a plain `Result<Bytes, Error>`).
pub(crate) type Answer = Result<Bytes, Box<Failure>>;

/// A failed request: the error, the deadline it ran under once the driver
/// fixed it (so a retry keeps the call's deadline instead of starting a new
/// one), and the request itself when it was never written (so a retry needs no
/// copy of it kept beforehand).
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) error: Error,
    pub(crate) deadline: Option<Instant>,
    pub(crate) request: Option<Bytes>,
}

/// The sending side of one request's answer: its response future's cell.
///
/// Its methods take the cells of the connection whose handle made it (the
/// driver's own). Should the driver end without answering it (its task
/// panicked or was aborted), [`Cells::close`] fails the future; a reply whose
/// cell is one of its own fails it when dropped.
#[derive(Debug)]
pub(crate) struct Reply {
    /// `None` once answered.
    slot: Option<Slot>,
    /// The request's deadline (a relative one is fixed to an instant by the
    /// driver when it takes the request).
    pub(crate) deadline: Deadline,
    /// Whether the driver records the request in its endpoint's metrics: a
    /// caller's request, not the pool's own (a heartbeat, a handshake).
    pub(crate) metered: bool,
}

impl Reply {
    /// The reply for a request with `deadline`, answered into `slot`.
    #[inline]
    pub(crate) fn new(slot: Slot, deadline: Deadline) -> Reply {
        Reply {
            slot: Some(slot),
            deadline,
            metered: true,
        }
    }

    /// Delivers the response; false if the caller is gone.
    #[inline]
    pub(crate) fn succeed(mut self, cells: &Cells, payload: Bytes) -> bool {
        self.slot
            .take()
            .is_some_and(|slot| slot.fill(cells, Ok(payload)))
    }

    /// Fails the request with `error`; false if the caller is gone.
    #[inline]
    pub(crate) fn fail(self, cells: &Cells, error: Error) -> bool {
        self.fail_with(cells, error, None)
    }

    /// Fails a request that was never written with `error`, giving its
    /// payload back; false if the caller is gone.
    pub(crate) fn fail_unwritten(self, cells: &Cells, error: Error, payload: Bytes) -> bool {
        self.fail_with(cells, error, Some(payload))
    }

    fn fail_with(mut self, cells: &Cells, error: Error, request: Option<Bytes>) -> bool {
        self.slot.take().is_some_and(|slot| {
            let deadline = self.deadline.instant();
            slot.fill(
                cells,
                Err(Box::new(Failure {
                    error,
                    deadline,
                    request,
                })),
            )
        })
    }

    /// The caller dropped its response future.
    #[inline]
    pub(crate) fn is_closed(&self, cells: &Cells) -> bool {
        self.slot.as_ref().is_none_or(|slot| slot.is_closed(cells))
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(slot) = &self.slot {
            slot.abandon();
        }
    }
}

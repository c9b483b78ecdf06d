//! Units of a connection's window, returned by ownership.
//!
//! Each request holds one [`Unit`] from the moment a handle takes it (in
//! `poll_ready` or `try_call`) until the request is answered, fails, or its
//! quarantine ends. The unit is a value: wherever the request ends — answered,
//! failed unwritten, dropped with a closed queue, swept out with the table —
//! dropping it gives the unit back. Nothing counts exits by hand.
//!
//! On the hot path the driver frees many units per pass; [`Returns`] merges
//! them and gives them back in one batch (one semaphore update instead of one
//! per response).

use tokio::sync::OwnedSemaphorePermit;

/// One unit of the window; dropping it gives it back.
pub(crate) type Unit = OwnedSemaphorePermit;

/// Units freed during one pass of the driver, given back together.
#[derive(Debug, Default)]
pub(super) struct Returns(Option<OwnedSemaphorePermit>);

impl Returns {
    /// Keeps `unit` until the next [`flush`](Self::flush) (or until dropped).
    #[inline]
    pub(super) fn push(&mut self, unit: Unit) {
        match &mut self.0 {
            Some(all) => all.merge(unit),
            None => self.0 = Some(unit),
        }
    }

    /// Gives every unit kept so far back to the window; true if there were
    /// any.
    #[inline]
    pub(super) fn flush(&mut self) -> bool {
        self.0.take().is_some()
    }
}

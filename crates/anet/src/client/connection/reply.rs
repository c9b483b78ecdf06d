//! Where a request's answer goes, with the deadline the request runs under.

use bytes::Bytes;
use tokio::{sync::oneshot, time::Instant};

use crate::{Error, client::deadline::Deadline};

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

/// The sending side of one request's answer.
#[derive(Debug)]
pub(crate) struct Reply {
    tx: oneshot::Sender<Answer>,
    /// The request's deadline (a relative one is fixed to an instant by the
    /// driver when it takes the request).
    pub(crate) deadline: Deadline,
}

impl Reply {
    /// A reply channel for a request with `deadline`.
    #[inline]
    pub(crate) fn channel(deadline: Deadline) -> (Reply, oneshot::Receiver<Answer>) {
        let (tx, rx) = oneshot::channel();
        (Reply { tx, deadline }, rx)
    }

    /// Delivers the response; false if the caller is gone.
    #[inline]
    pub(crate) fn succeed(self, payload: Bytes) -> bool {
        self.tx.send(Ok(payload)).is_ok()
    }

    /// Fails the request with `error`.
    #[inline]
    pub(crate) fn fail(self, error: Error) {
        let deadline = self.deadline.instant();
        let _ = self.tx.send(Err(Box::new(Failure { error, deadline })));
    }

    /// The caller dropped its response future.
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

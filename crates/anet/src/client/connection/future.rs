//! The future a [`Connection`](super::Connection) call returns.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;

use super::{cells::Claim, reply::Failure};
use crate::Error;

/// The response to one request on a [`Connection`](super::Connection).
///
/// # Cancellation safety
///
/// Dropping it abandons the request at once: if it was not yet written it is never
/// written; if it was, its unit of the window stays taken until the late response
/// arrives or the quarantine ends, its tag is not issued again until the late
/// response arrives or the connection closes, and the late response is dropped,
/// never delivered elsewhere.
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct ConnectionFuture {
    state: State,
}

#[derive(Debug)]
enum State {
    /// Its answer's cell, until the answer is taken.
    Waiting(Claim),
    /// Failed before it reached the driver (boxed: the rare case stays small).
    Failed(Option<Box<Failure>>),
}

impl ConnectionFuture {
    pub(crate) fn waiting(claim: Claim) -> ConnectionFuture {
        ConnectionFuture {
            state: State::Waiting(claim),
        }
    }

    pub(crate) fn failed(error: Error) -> ConnectionFuture {
        ConnectionFuture::failing(error, None)
    }

    /// A request that failed before it reached the driver, its payload given
    /// back (for a retry).
    pub(crate) fn unsent(error: Error, payload: Bytes) -> ConnectionFuture {
        ConnectionFuture::failing(error, Some(payload))
    }

    fn failing(error: Error, request: Option<Bytes>) -> ConnectionFuture {
        ConnectionFuture {
            state: State::Failed(Some(Box::new(Failure {
                error,
                deadline: None,
                request,
            }))),
        }
    }

    /// Like `poll`, with the deadline the driver ran a failed request under
    /// (and the request, if it was never written). The failure stays boxed:
    /// the answer that callers pass up stays two words and a tag.
    #[inline]
    pub(crate) fn poll_answer(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Bytes, Box<Failure>>> {
        match &mut self.state {
            // A request the driver drops unanswered (its task aborted) is
            // answered `ConnectionLost` by its reply's drop.
            State::Waiting(claim) => claim.poll_answer(cx),
            State::Failed(failure) => Poll::Ready(Err(failure
                .take()
                .expect("ConnectionFuture polled after completion"))),
        }
    }
}

impl Future for ConnectionFuture {
    type Output = Result<Bytes, Error>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_answer(cx).map_err(|failure| failure.error)
    }
}

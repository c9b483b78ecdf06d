//! The future a [`Connection`](super::Connection) call returns.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::reply::{Answer, Failure};
use crate::{Error, Kind};

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
    Waiting(oneshot::Receiver<Answer>),
    Failed(Option<Error>),
}

impl ConnectionFuture {
    pub(crate) fn waiting(rx: oneshot::Receiver<Answer>) -> ConnectionFuture {
        ConnectionFuture {
            state: State::Waiting(rx),
        }
    }

    pub(crate) fn failed(error: Error) -> ConnectionFuture {
        ConnectionFuture {
            state: State::Failed(Some(error)),
        }
    }

    /// Like `poll`, with the deadline the driver ran a failed request under.
    #[inline]
    pub(crate) fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Result<Bytes, Failure>> {
        match &mut self.state {
            State::Waiting(rx) => Poll::Ready(match ready!(Pin::new(rx).poll(cx)) {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(failure)) => Err(*failure),
                // The driver always answers before dropping a request; it can
                // only vanish without answering when its task was aborted.
                Err(_) => Err(Failure {
                    error: Error::with_source(Kind::ConnectionLost, "connection driver stopped"),
                    deadline: None,
                }),
            }),
            State::Failed(error) => Poll::Ready(Err(Failure {
                error: error
                    .take()
                    .expect("ConnectionFuture polled after completion"),
                deadline: None,
            })),
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

//! The future a [`Connection`](super::Connection) call returns.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::{Error, Kind};

/// The response to one request on a [`Connection`](super::Connection).
///
/// # Cancellation safety
///
/// Dropping it abandons the request at once: if it was not yet written it is never
/// written; if it was, its tag stays reserved until the late response arrives or the
/// quarantine ends, and the late response is dropped, never delivered elsewhere.
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct ResponseFuture {
    state: State,
}

#[derive(Debug)]
enum State {
    Waiting(oneshot::Receiver<Result<Bytes, Error>>),
    Failed(Option<Error>),
}

impl ResponseFuture {
    pub(crate) fn waiting(rx: oneshot::Receiver<Result<Bytes, Error>>) -> ResponseFuture {
        ResponseFuture {
            state: State::Waiting(rx),
        }
    }

    pub(crate) fn failed(error: Error) -> ResponseFuture {
        ResponseFuture {
            state: State::Failed(Some(error)),
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Bytes, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            State::Waiting(rx) => Poll::Ready(match ready!(Pin::new(rx).poll(cx)) {
                Ok(result) => result,
                // The driver always answers before dropping a request; it can only
                // vanish without answering when its task was aborted.
                Err(_) => Err(Error::with_source(
                    Kind::ConnectionLost,
                    "connection driver stopped",
                )),
            }),
            State::Failed(error) => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

//! One service call in flight on a server connection, with panics caught.

use std::{
    any::Any,
    future::Future,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    task::{Context, Poll},
};

use anet_proto::Tag;
use bytes::Bytes;
use pin_project_lite::pin_project;

/// How a call ended.
#[derive(Debug)]
pub(crate) enum Outcome<E> {
    Response(Bytes),
    Failed(E),
    Panicked(String),
}

pin_project! {
    /// The service's future, remembering the tag to echo and catching a panic in
    /// the handler so that only this request is affected.
    pub(crate) struct Call<F> {
        tag: Tag,
        // The request's charge on the server-wide budget, given back when the
        // call ends.
        charge: u64,
        #[pin]
        state: CallState<F>,
    }
}

pin_project! {
    #[project = CallStateProj]
    pub(crate) enum CallState<F> {
        Running { #[pin] future: F },
        // `Service::call` itself panicked.
        Panicked { message: Option<String> },
    }
}

impl<F> Call<F> {
    /// Runs `call` for a request charged `charge` bytes, catching a panic of the call itself.
    pub(crate) fn start(tag: Tag, charge: u64, call: impl FnOnce() -> F) -> Call<F> {
        let state = match catch_unwind(AssertUnwindSafe(call)) {
            Ok(future) => CallState::Running { future },
            Err(panic) => CallState::Panicked {
                message: Some(panic_message(&*panic)),
            },
        };
        Call { tag, charge, state }
    }
}

impl<F, E> Future for Call<F>
where
    F: Future<Output = Result<Bytes, E>>,
{
    type Output = (Tag, u64, Outcome<E>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = match this.state.project() {
            CallStateProj::Running { future } => {
                match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(Poll::Pending) => return Poll::Pending,
                    Ok(Poll::Ready(Ok(bytes))) => Outcome::Response(bytes),
                    Ok(Poll::Ready(Err(e))) => Outcome::Failed(e),
                    Err(panic) => Outcome::Panicked(panic_message(&*panic)),
                }
            }
            CallStateProj::Panicked { message } => {
                Outcome::Panicked(message.take().unwrap_or_default())
            }
        };
        Poll::Ready((*this.tag, *this.charge, outcome))
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

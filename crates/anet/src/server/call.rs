//! One service call in flight on a server connection, with panics caught.

use std::{
    any::Any,
    future::Future,
    net::SocketAddr,
    panic::{AssertUnwindSafe, catch_unwind},
    pin::Pin,
    task::{Context, Poll},
};

use anet_proto::Tag;
use bytes::Bytes;
use pin_project_lite::pin_project;

use crate::observe;

/// How a call ended.
#[derive(Debug)]
pub(crate) enum Outcome<E> {
    Response(Bytes),
    Failed(E),
    Panicked(String),
}

/// A request's span at `DEBUG` (`anet.request`: peer, outcome) and its
/// metrics' start (feature `metrics`).
#[derive(Debug)]
pub(crate) struct Observed {
    /// `None` below `DEBUG`; boxed, so that a call carries one word for it
    /// (calls and their outputs are moved a few times per request).
    span: Option<Box<tracing::Span>>,
    started: observe::Started,
}

impl Observed {
    /// A request read from `peer`.
    #[inline]
    pub(crate) fn start(
        metrics: &mut observe::ServerMetrics,
        peer: Option<SocketAddr>,
    ) -> Observed {
        // Not built below DEBUG (see the client's call span).
        let span = tracing::level_enabled!(tracing::Level::DEBUG).then(|| {
            Box::new(tracing::debug_span!(
                "anet.request",
                peer = ?peer,
                outcome = tracing::field::Empty
            ))
        });
        Observed {
            span,
            started: metrics.started(),
        }
    }

    /// Enters the request's span, if it has one.
    #[inline]
    pub(crate) fn enter(&self) -> Option<tracing::span::Entered<'_>> {
        self.span.as_deref().map(tracing::Span::enter)
    }

    /// The request was answered.
    #[inline]
    pub(crate) fn finish_ok(&self, metrics: &mut observe::ServerMetrics) {
        metrics.finished_ok(&self.started);
        self.record("ok");
    }

    /// The request failed: `error` or `panic`.
    pub(crate) fn finish(&self, metrics: &mut observe::ServerMetrics, outcome: &'static str) {
        metrics.finished(&self.started, outcome);
        self.record(outcome);
    }

    #[inline]
    fn record(&self, outcome: &'static str) {
        if let Some(span) = &self.span {
            span.record("outcome", outcome);
        }
    }
}

pin_project! {
    /// The service's future, remembering the tag to echo and catching a panic in
    /// the handler so that only this request is affected.
    pub(crate) struct Call<F> {
        tag: Tag,
        // The request's charge on the server-wide budget, given back when the
        // call ends.
        charge: u64,
        // Taken when the call ends.
        observed: Option<Observed>,
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
    /// Runs `call` for a request charged `charge` bytes, catching a panic of
    /// the call itself.
    #[inline]
    pub(crate) fn start(
        tag: Tag,
        charge: u64,
        observed: Observed,
        call: impl FnOnce() -> F,
    ) -> Call<F> {
        let entered = observed.enter();
        let state = match catch_unwind(AssertUnwindSafe(call)) {
            Ok(future) => CallState::Running { future },
            Err(panic) => CallState::Panicked {
                message: Some(panic_message(&*panic)),
            },
        };
        drop(entered);
        Call {
            tag,
            charge,
            observed: Some(observed),
            state,
        }
    }
}

impl<F, E> Future for Call<F>
where
    F: Future<Output = Result<Bytes, E>>,
{
    type Output = (Tag, u64, Outcome<E>, Observed);

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = match this.state.project() {
            CallStateProj::Running { future } => {
                let _entered = this
                    .observed
                    .as_ref()
                    .expect("polled after completion")
                    .enter();
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
        let observed = this.observed.take().expect("polled after completion");
        Poll::Ready((*this.tag, *this.charge, outcome, observed))
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

//! The future of a [`Client`](super::Client) call: the limits, the route, the
//! retries, all under the call's deadline.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::{
    client::{Shared, Stack},
    connection::Failure,
    deadline::{self, Deadline},
    future::BalanceFuture,
    lanes::{Lane, Lanes},
};
use crate::time::later;
use crate::{Error, Kind, observe};

/// A call's span at `DEBUG` (`anet.call`: endpoint, attempt, outcome,
/// latency_us), and when it started.
/// `None` unless the span is enabled (below `DEBUG`, or at `DEBUG` for other
/// targets only): then nothing is allocated, entered or dropped per call (a
/// disabled span would cost a box, and still an enter, an exit and a drop),
/// and the call's future carries one word for it, not a span and an instant.
struct CallSpan(Option<Box<Traced>>);

/// What a traced call keeps.
struct Traced {
    span: tracing::Span,
    started: Instant,
}

impl CallSpan {
    #[inline]
    fn new() -> CallSpan {
        use tracing::field::Empty;
        // One load of the global level hint first: below DEBUG (or with no
        // subscriber) no span is built, so nothing reaches `tracing`'s `log`
        // fallback (tower's default features turn it on).
        if !tracing::level_enabled!(tracing::Level::DEBUG) {
            return CallSpan(None);
        }
        let span = tracing::debug_span!(
            "anet.call",
            endpoint = Empty,
            attempt = Empty,
            outcome = Empty,
            latency_us = Empty
        );
        // Enabled for some target but not this one (`RUST_LOG=info,app=debug`):
        // a disabled span records nothing, so keep none (no box per call).
        if span.is_disabled() {
            return CallSpan(None);
        }
        CallSpan(Some(Box::new(Traced {
            span,
            started: Instant::now(),
        })))
    }

    /// The span, if the call has one.
    #[inline]
    fn span(&self) -> Option<&tracing::Span> {
        self.0.as_ref().map(|traced| &traced.span)
    }

    /// The call ended after `attempts` retries (the endpoint was recorded by the
    /// attempt that reached one).
    #[inline]
    fn finish(&self, outcome: Result<(), Kind>, retries: usize) {
        if let Some(Traced { span, started }) = self.0.as_deref() {
            span.record("attempt", retries + 1);
            span.record("outcome", outcome.err().map_or("ok", |k| k.as_str()));
            let latency = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            span.record("latency_us", latency);
        }
    }
}

pin_project! {
    /// The future of a [`Client`] call: waits for the limits, routes, sends and
    /// awaits the response, retrying what the policy allows, all under the
    /// request's deadline.
    ///
    /// The deadline is enforced where the request waits: by the balancer while it
    /// waits for an endpoint or for room, by the connection's driver once queued or
    /// written (so the common path registers no timer per request), and by a timer
    /// of the call's own only while it waits for a concurrency or rate limit.
    ///
    /// # Cancellation safety
    ///
    /// Dropping it abandons the request: never written if it was not yet;
    /// otherwise its late response is dropped.
    #[must_use = "futures do nothing unless polled"]
    pub struct CallFuture {
        #[pin]
        attempt: Attempt,
        // The request again, for a retry its failure cannot give it back for
        // (an idempotent policy's, or through the limit layers): a reference
        // count, not a copy. A request never written comes back with its failure.
        retained: Option<Bytes>,
        retries_left: usize,
        // The registry (for a retry), the retry policy, the timeout.
        shared: Lane<Shared>,
        // Relative until something on the path reads the clock; the instant a
        // failed attempt reports is kept for the retries.
        deadline: Deadline,
        // The call's `DEBUG` span (disabled, and no clock read, without a
        // subscriber that wants it).
        span: CallSpan,
    }
}

pin_project! {
    /// The attempt under way.
    #[project = AttemptProj]
    enum Attempt {
        /// No limit configured: straight to the balancer, with the deadline.
        Direct { #[pin] future: BalanceFuture },
        /// Through the limit layers (boxed: larger, and only with limits).
        Layered { layered: Pin<Box<Layered>> },
    }
}

pin_project! {
    /// An attempt through this call's copy of the limit layers, which wait in
    /// `poll_ready` where no lower layer sees the deadline: so it has a timer,
    /// polled (registered) only while the layers are not ready.
    struct Layered {
        layers: Stack,
        request: Option<Bytes>,
        // `None` while waiting for the layers to be ready.
        #[pin]
        future: Option<<Stack as Service<Bytes>>::Future>,
        // Set to the call's deadline.
        #[pin]
        timer: Sleep,
    }
}

impl CallFuture {
    /// Starts a call: straight to the balancer without limits (routed now),
    /// through this call's copy of `layers` with them.
    pub(crate) fn start(
        layers: Option<&Stack>,
        shared: &Lanes<Shared>,
        request: Bytes,
    ) -> CallFuture {
        let retries_left = shared.retry.max_retries();
        // Kept for a retry only when there may be one (a reference count).
        // A copy for the retries only where a failure may not give the request
        // back: an idempotent policy resends written requests, and the limit
        // layers fail with errors alone. Otherwise only a request never written
        // is retried, and its failure returns it (a `Bytes` made from a `Vec`
        // allocates when first cloned: no copy, no allocation).
        let keeps_copy = layers.is_some() || shared.retry.resends_written();
        let retained = (retries_left > 0 && keeps_copy).then(|| request.clone());
        let (attempt, deadline) = match layers {
            // The clock is read where it is read anyway (see `deadline`).
            None => {
                let deadline = Deadline::After(shared.timeout);
                let future = BalanceFuture::start(&shared.registry, request, deadline);
                (Attempt::Direct { future }, deadline)
            }
            Some(layers) => {
                let at = later(Instant::now(), shared.timeout);
                let layered = Layered::boxed(layers.clone(), request, at);
                (Attempt::Layered { layered }, Deadline::At(at))
            }
        };
        CallFuture {
            attempt,
            retained,
            retries_left,
            shared: shared.here(),
            deadline,
            span: CallSpan::new(),
        }
    }
}

impl Layered {
    fn boxed(layers: Stack, request: Bytes, deadline: Instant) -> Pin<Box<Layered>> {
        Box::pin(Layered {
            layers,
            request: Some(request),
            future: None,
            timer: tokio::time::sleep_until(deadline),
        })
    }

    /// Ready, then call (under the deadline, which the balancer takes from
    /// there), then the response; or the deadline.
    fn poll_attempt(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Bytes, Error>> {
        let mut this = self.project();
        if let Poll::Ready(result) = poll_layers(
            this.layers,
            this.request,
            this.future.as_mut(),
            this.timer.deadline(),
            cx,
        ) {
            return Poll::Ready(result);
        }
        if this.future.is_some() {
            // Past the layers: the balancer and the connection hold the
            // deadline now, so the timer is never registered on this path.
            return Poll::Pending;
        }
        ready!(this.timer.poll(cx));
        Poll::Ready(Err(Error::with_source(
            Kind::Timeout,
            "request deadline passed",
        )))
    }

    /// Another attempt of `request` through the same layers.
    fn retry(self: Pin<&mut Self>, request: Bytes) {
        let mut this = self.project();
        *this.request = Some(request);
        this.future.set(None);
    }
}

impl fmt::Debug for CallFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallFuture")
            .field("deadline", &self.deadline)
            .field("span", &self.span.span())
            .finish_non_exhaustive()
    }
}

impl Future for CallFuture {
    type Output = Result<Bytes, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.span().map(tracing::Span::enter);
        loop {
            // The request, when the failed attempt gives it back (never written).
            let mut given_back = None;
            let result = match this.attempt.as_mut().project() {
                AttemptProj::Direct { future } => match ready!(future.poll_answer(cx)) {
                    Ok(response) => Ok(response),
                    Err(failure) => {
                        let Failure {
                            error,
                            deadline,
                            request,
                        } = *failure;
                        if let Some(at) = deadline {
                            *this.deadline = Deadline::At(at);
                        }
                        given_back = request;
                        Err(error)
                    }
                },
                AttemptProj::Layered { layered } => ready!(layered.as_mut().poll_attempt(cx)),
            };
            let error = match result {
                Ok(response) => {
                    this.shared.retry.deposit();
                    this.span
                        .finish(Ok(()), this.shared.retry.max_retries() - *this.retries_left);
                    return Poll::Ready(Ok(response));
                }
                Err(error) => error,
            };
            let attempts = this.shared.retry.max_retries() - *this.retries_left;
            // Nothing to resend (a written request, no copy kept: the policy
            // would not resend it anyway): no retry, and no budget spent.
            let resend = given_back.or_else(|| this.retained.clone());
            let Some(request) = resend.filter(|_| *this.retries_left > 0) else {
                this.span.finish(Err(error.kind()), attempts);
                return Poll::Ready(Err(error));
            };
            // No retry once the call's deadline has passed (checked first: a
            // retry that cannot happen spends no budget).
            let now = Instant::now();
            if this.deadline.fix(|| now).is_some_and(|at| at <= now)
                || !this.shared.retry.allows(&error)
            {
                this.span.finish(Err(error.kind()), attempts);
                return Poll::Ready(Err(error));
            }
            observe::retry();
            *this.retries_left -= 1;
            tracing::debug!(error = %error, left = *this.retries_left, "retrying request");
            if *this.retries_left == 0 {
                // The last retry: the copy is no longer needed.
                *this.retained = None;
            }
            match this.attempt.as_mut().project() {
                AttemptProj::Direct { .. } => {
                    let future =
                        BalanceFuture::start(&this.shared.registry, request, *this.deadline);
                    this.attempt.set(Attempt::Direct { future });
                }
                AttemptProj::Layered { layered } => layered.as_mut().retry(request),
            }
        }
    }
}

/// One poll of an attempt through the limit layers: ready, then call, then the
/// response.
fn poll_layers(
    layers: &mut Stack,
    request: &mut Option<Bytes>,
    mut future: Pin<&mut Option<<Stack as Service<Bytes>>::Future>>,
    deadline: Instant,
    cx: &mut Context<'_>,
) -> Poll<Result<Bytes, Error>> {
    if future.is_none() {
        if let Err(e) = ready!(layers.poll_ready(cx)) {
            return Poll::Ready(Err(Error::from_boxed(e)));
        }
        let request = request.take().expect("request taken once per attempt");
        future.set(Some(deadline::scope(deadline, || layers.call(request))));
    }
    let future = future.as_pin_mut().expect("set above");
    future.poll(cx).map_err(Error::from_boxed)
}

//! The future a [`Balancer`](super::Balancer) call returns, and its slow path:
//! a request that could not be sent at once waits for an endpoint or for room.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use pin_project_lite::pin_project;
use tokio::{
    sync::futures::OwnedNotified,
    time::{Instant, Sleep},
};
use tower::Service;

use super::route::{Routed, route};
use crate::client::{
    Connection,
    connection::{ConnectionFuture, Failure},
    deadline::Deadline,
    lanes::Lane,
    pool::Endpoint,
    registry::Registry,
    room::Waiter,
};
use crate::time::later;
use crate::{Error, Kind, observe};

/// Re-picks allowed when a chosen connection turns out broken.
const MAX_REPICKS: u8 = 3;

pin_project! {
    /// The response future of [`Balancer`](super::Balancer): send (or
    /// route, wait for room, send), then await the response.
    ///
    /// # Cancellation safety
    ///
    /// Dropping it before the request is written means it is never written;
    /// afterwards, the connection's quarantine rules apply.
    #[must_use = "futures do nothing unless polled"]
    pub struct BalanceFuture {
        // The call's deadline: bounds the waits here (fixed to an instant when a
        // wait starts), and goes with the request to the connection.
        deadline: Deadline,
        #[pin]
        state: State,
    }
}

impl std::fmt::Debug for BalanceFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BalanceFuture").finish_non_exhaustive()
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        /// On a connection: awaiting the response.
        Sent {
            // Where the request went, to count its failure.
            endpoint: Lane<Endpoint>,
            #[pin]
            future: ConnectionFuture,
        },
        /// Not sent yet: waiting for an endpoint or for room. The slow path,
        /// boxed so that the common future stays small.
        Waiting { wait: Pin<Box<Wait>> },
        Failed { error: Option<Error> },
    }
}

impl State {
    /// On a connection of `endpoint`.
    #[inline]
    fn sent(endpoint: Lane<Endpoint>, future: ConnectionFuture) -> State {
        State::Sent { endpoint, future }
    }
}

impl BalanceFuture {
    /// Routes `request` now; only a request that cannot be sent at once keeps a
    /// handle on the registry, to wait and route again when polled.
    pub(crate) fn start(
        registry: &Arc<Registry>,
        request: Bytes,
        deadline: Deadline,
    ) -> BalanceFuture {
        let state = if registry.is_closed() {
            State::Failed {
                error: Some(Error::new(Kind::Closed).unsent()),
            }
        } else {
            match route(registry, request, deadline) {
                Routed::Sent(endpoint, future) => State::sent(endpoint, future),
                Routed::Full(back, endpoint, conn) => State::Waiting {
                    wait: Wait::boxed(registry, back, Stage::ready(endpoint, conn)),
                },
                // Polling decides whether to wait for an endpoint or fail.
                Routed::Nowhere(back, _) => State::Waiting {
                    wait: Wait::boxed(registry, back, Stage::Pick),
                },
            }
        };
        BalanceFuture { deadline, state }
    }

    /// A request already on a connection of `endpoint`.
    pub(crate) fn sent(
        endpoint: Lane<Endpoint>,
        future: ConnectionFuture,
        deadline: Deadline,
    ) -> BalanceFuture {
        BalanceFuture {
            deadline,
            state: State::sent(endpoint, future),
        }
    }

    /// A request that fails with `error`, unsent.
    pub(crate) fn failed(error: Error, deadline: Deadline) -> BalanceFuture {
        BalanceFuture {
            deadline,
            state: State::Failed { error: Some(error) },
        }
    }

    /// Like `poll`, with the instant the request's deadline was fixed to, if it
    /// was: a retry keeps it.
    pub(crate) fn poll_answer(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Bytes, Box<Failure>>> {
        let mut this = self.project();
        loop {
            // An unsent request's payload, given back with its failure.
            let mut request = None;
            let error = match this.state.as_mut().project() {
                StateProj::Sent { endpoint, future } => {
                    let answer = ready!(future.get_mut().poll_answer(cx));
                    if tracing::level_enabled!(tracing::Level::DEBUG) {
                        // The call's span, if it has one, learns where it went.
                        tracing::Span::current()
                            .record("endpoint", tracing::field::display(endpoint.addr));
                    }
                    // Answers are counted (and timed) by the connection.
                    return Poll::Ready(answer.map_err(|mut failure| {
                        endpoint.metrics.failed(failure.error.kind());
                        endpoint.record(&failure.error);
                        failure.deadline = failure.deadline.or(this.deadline.instant());
                        failure
                    }));
                }
                StateProj::Waiting { wait } => {
                    match ready!(wait.as_mut().poll_send(cx, this.deadline)) {
                        Ok((endpoint, future)) => {
                            this.state.set(State::sent(endpoint, future));
                            continue;
                        }
                        Err(error) => {
                            request = wait.as_mut().project().request.take();
                            error
                        }
                    }
                }
                StateProj::Failed { error } => error.take().expect("polled after completion"),
            };
            observe::unrouted(error.kind());
            return Poll::Ready(Err(Box::new(Failure {
                error,
                deadline: this.deadline.instant(),
                request,
            })));
        }
    }
}

impl Future for BalanceFuture {
    type Output = Result<Bytes, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_answer(cx).map_err(|failure| failure.error)
    }
}

pin_project! {
    /// A request that could not be sent at once.
    struct Wait {
        registry: Arc<Registry>,
        request: Option<Bytes>,
        repicks: u8,
        // How long to wait for an endpoint's first connection, from the first wait.
        wait_until: Option<Instant>,
        // While it queues on a full connection: a new connection, a change of
        // the endpoints, or room left over on another connection (the pool's
        // room) sends it to route again. Without it a request queued before
        // the pool grew would stay on its full connection, the new one idle.
        #[pin]
        changed: Option<OwnedNotified>,
        // Counted among the room's waiters while it listens.
        waiter: Option<Waiter>,
        #[pin]
        stage: Stage,
    }
}

pin_project! {
    #[project = StageProj]
    enum Stage {
        /// Route (again).
        Pick,
        /// No endpoint can take it yet, but one may soon.
        WaitUp {
            #[pin]
            notified: OwnedNotified,
            #[pin]
            sleep: Sleep,
        },
        /// Every candidate connection is full: wait for room on this one.
        Ready {
            endpoint: Lane<Endpoint>,
            conn: Connection,
            // Armed when the wait for room starts, to the call's deadline.
            #[pin]
            deadline: Option<Sleep>,
        },
    }
}

impl Stage {
    fn ready(endpoint: Lane<Endpoint>, conn: Connection) -> Stage {
        Stage::Ready {
            endpoint,
            conn,
            deadline: None,
        }
    }
}

impl Wait {
    fn boxed(registry: &Arc<Registry>, request: Bytes, stage: Stage) -> Pin<Box<Wait>> {
        Box::pin(Wait {
            registry: registry.clone(),
            request: Some(request),
            repicks: 0,
            wait_until: None,
            changed: None,
            waiter: None,
            stage,
        })
    }

    /// Waits until the request is on a connection (fixing `deadline` when a wait
    /// starts), or fails, the request then still in `request` (to give back).
    fn poll_send(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        deadline: &mut Deadline,
    ) -> Poll<Result<(Lane<Endpoint>, ConnectionFuture), Error>> {
        let mut this = self.project();
        loop {
            match this.stage.as_mut().project() {
                StageProj::Pick => {
                    let registry = &*this.registry;
                    if registry.is_closed() {
                        return Poll::Ready(Err(Error::new(Kind::Closed).unsent()));
                    }
                    let mut request = this.request.take().expect("request taken once");
                    let mut notified = None;
                    loop {
                        match route(registry, request, *deadline) {
                            Routed::Sent(endpoint, future) => {
                                return Poll::Ready(Ok((endpoint, future)));
                            }
                            Routed::Full(back, endpoint, conn) => {
                                *this.request = Some(back);
                                this.stage.set(Stage::ready(endpoint, conn));
                            }
                            Routed::Nowhere(back, false) => {
                                *this.request = Some(back);
                                return Poll::Ready(Err(Error::with_source(
                                    Kind::Unavailable,
                                    "no endpoint is up",
                                )));
                            }
                            Routed::Nowhere(back, true) => match notified.take() {
                                // Register for endpoint changes, then look once
                                // more, so a change in between is not missed.
                                None => {
                                    notified = Some(registry.pool.changed.clone().notified_owned());
                                    request = back;
                                    continue;
                                }
                                Some(notified) => {
                                    *this.request = Some(back);
                                    let mut until = *this.wait_until.get_or_insert_with(|| {
                                        later(Instant::now(), registry.pending_wait)
                                    });
                                    if let Some(call) = deadline.fix(Instant::now) {
                                        until = until.min(call);
                                    }
                                    this.stage.set(Stage::WaitUp {
                                        notified,
                                        sleep: tokio::time::sleep_until(until),
                                    });
                                }
                            },
                        }
                        break;
                    }
                }
                StageProj::WaitUp { notified, sleep } => {
                    if notified.poll(cx).is_ready() {
                        this.stage.set(Stage::Pick);
                        continue;
                    }
                    ready!(sleep.poll(cx));
                    if deadline.instant().is_some_and(|d| d <= Instant::now()) {
                        return Poll::Ready(Err(Error::with_source(
                            Kind::Timeout,
                            "request deadline passed waiting for an endpoint",
                        )
                        .unsent()));
                    }
                    return Poll::Ready(Err(Error::with_source(
                        Kind::Unavailable,
                        "no endpoint connected within the connect timeout",
                    )));
                }
                StageProj::Ready {
                    endpoint,
                    conn,
                    deadline: mut timer,
                } => match conn.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let request = this.request.take().expect("request taken once");
                        let future = conn.call_until(request, *deadline);
                        return Poll::Ready(Ok((endpoint.clone(), future)));
                    }
                    Poll::Ready(Err(error)) => {
                        endpoint.signal_broken();
                        *this.repicks += 1;
                        if *this.repicks > MAX_REPICKS {
                            return Poll::Ready(Err(Error::with_source(Kind::NotSent, error)));
                        }
                        this.stage.set(Stage::Pick);
                    }
                    Poll::Pending => {
                        // Each time it is found full (one swap; the pool is
                        // woken only when no demand is pending): a caller that
                        // queued before a new connection came keeps asking for
                        // the next one while the windows stay full.
                        endpoint.signal_demand();
                        if timer.is_none() {
                            if let Some(at) = deadline.fix(Instant::now) {
                                timer.set(Some(tokio::time::sleep_until(at)));
                            }
                        }
                        if let Some(sleep) = timer.as_pin_mut() {
                            if sleep.poll(cx).is_ready() {
                                return Poll::Ready(Err(Error::with_source(
                                    Kind::Timeout,
                                    "request deadline passed waiting for room on a connection",
                                )
                                .unsent()));
                            }
                        }
                        match this.changed.as_mut().as_pin_mut() {
                            // Not listening yet: listen, then route once more,
                            // so that a connection added in between is not
                            // missed.
                            None => {
                                let room = &this.registry.pool.room;
                                this.changed.set(Some(room.listen()));
                                *this.waiter = Some(room.enter());
                            }
                            Some(changed) => {
                                if changed.poll(cx).is_pending() {
                                    return Poll::Pending;
                                }
                                // Something changed: route again (and listen
                                // anew if still full).
                                this.changed.set(None);
                                *this.waiter = None;
                            }
                        }
                        this.stage.set(Stage::Pick);
                    }
                },
            }
        }
    }
}

//! [`Client`]: the whole stack behind one cheap, cloneable handle.

use std::{
    fmt,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::{
    Service,
    limit::ConcurrencyLimit,
    load_shed::LoadShed,
    util::{Either, MapErr},
};

use super::{
    Balancer, ClientBuilder, EndpointStats, Endpoints, RateLimit, RetryPolicy,
    balance::Registry,
    deadline::{self, Deadline},
    future::BalanceFuture,
};
use crate::time::later;
use crate::{BoxError, Error, Kind};

type Base = MapErr<Balancer, fn(Error) -> BoxError>;
type Limited = Either<ConcurrencyLimit<Base>, Base>;
type Rated = Either<RateLimit<Limited>, Limited>;
/// The concrete layer stack under the call future (which does the deadline and
/// the retries itself): no boxing per request.
pub(crate) type Stack = Either<LoadShed<Rated>, Rated>;

pub(crate) fn into_box(error: Error) -> BoxError {
    Box::new(error)
}

/// An anet client: balanced, pooled, multiplexed connections to one or more
/// endpoints, behind a deadline and retry and limit layers.
///
/// `Clone` is cheap (a few reference counts) and every clone shares the same
/// pools, so keep one in your app state and clone it into tasks. There is no
/// worker task between the caller and the connection: routing happens in the
/// caller's task. When the last handle (clients, balancers, endpoint handles and
/// client calls in flight) is dropped, the client closes as if
/// [`close`](Client::close) had been called: requests already written still get
/// their responses within the connection close grace.
///
/// ```
/// use anet::{client::Client, server::{Request, Server}};
/// use bytes::Bytes;
/// use tower::service_fn;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let server = Server::builder().bind("127.0.0.1:0".parse()?).await?;
/// # let addr = server.local_addr();
/// # tokio::spawn(server.serve(service_fn(|r: Request| async move {
/// #     Ok::<_, std::convert::Infallible>(r.into_payload())
/// # })));
/// let client = Client::builder().endpoint(addr).build();
/// let reply = client.call(Bytes::from_static(b"ping")).await?;
/// assert_eq!(reply, "ping");
/// client.close();
/// client.closed().await;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    /// The limit layers over the balancer; `None` when no limit is configured
    /// (calls then go to the balancer directly).
    pub(crate) layers: Option<Stack>,
    pub(crate) shared: Arc<Shared>,
}

/// What every handle and call of one client shares (one reference count per call).
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) registry: Arc<Registry>,
    /// The deadline of each request, over its whole path.
    pub(crate) timeout: Duration,
    /// Which failures are retried, how often, within which budget.
    pub(crate) retry: RetryPolicy,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.shared.registry.addrs())
            .field("closed", &self.shared.registry.is_closed())
            .finish()
    }
}

impl Client {
    /// A builder with documented defaults.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::new()
    }

    /// Sends one request and waits for its response.
    ///
    /// # Errors
    ///
    /// An [`Error`] whose [`kind`](Error::kind) says what failed, and
    /// [`is_unsent`](Error::is_unsent) whether the request may have reached the
    /// server.
    ///
    /// # Cancellation safety
    ///
    /// Dropping the future abandons the request: never written if it was not yet;
    /// otherwise its late response is dropped.
    pub fn call(&self, request: Bytes) -> CallFuture {
        let shared = &self.shared;
        let retries_left = shared.retry.max_retries();
        // Kept for a retry only when there may be one (a reference count).
        let retained = (retries_left > 0).then(|| request.clone());
        let (attempt, deadline) = match &self.layers {
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
            shared: shared.clone(),
            deadline,
        }
    }

    /// A handle to add and remove endpoints at run time.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            registry: self.shared.registry.clone(),
        }
    }

    /// The balanced pool without this client's layers, to build your own
    /// `ServiceBuilder` stack on (your own retry policy, rate limit, ...).
    pub fn balancer(&self) -> Balancer {
        Balancer {
            registry: self.shared.registry.clone(),
        }
    }

    /// A snapshot of every endpoint.
    pub fn stats(&self) -> ClientStats {
        ClientStats {
            endpoints: self.shared.registry.stats(),
        }
    }

    /// Closes the client: new requests fail with
    /// [`Kind::Closed`](crate::Kind::Closed); requests in flight finish within the
    /// connection close grace; then connections close.
    pub fn close(&self) {
        self.shared.registry.close();
    }

    /// Waits until a closed client has no connection and no task left.
    pub async fn closed(&self) {
        self.shared.registry.tracker.wait().await;
    }
}

// Compile-time check: handles can be shared across tasks and threads.
const _: fn() = || {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Client>();
    check::<Balancer>();
};

/// A snapshot of a client's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientStats {
    /// One entry per endpoint, then one per removed endpoint whose connections
    /// are still draining (`up: false`), until they have closed.
    pub endpoints: Vec<EndpointStats>,
}

impl ClientStats {
    /// The entry of `addr` (the current endpoint's, if it was removed and added
    /// again while draining).
    pub fn endpoint(&self, addr: SocketAddr) -> Option<&EndpointStats> {
        self.endpoints.iter().find(|e| e.addr == addr)
    }

    /// Live connections over all endpoints.
    pub fn connections(&self) -> usize {
        self.endpoints.iter().map(|e| e.connections).sum()
    }

    /// Requests in flight over all endpoints.
    pub fn in_flight(&self) -> usize {
        self.endpoints.iter().map(|e| e.in_flight).sum()
    }
}

impl Service<Bytes> for Client {
    type Response = Bytes;
    type Error = Error;
    type Future = CallFuture;

    /// Ready while the client is open: waiting for a limit, an endpoint or room
    /// on a connection happens inside the response future, under its deadline.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.shared.registry.is_closed() {
            return Poll::Ready(Err(Error::new(Kind::Closed).unsent()));
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Bytes) -> CallFuture {
        Client::call(self, request)
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
        // The request again, for a retry (a reference count, not a copy).
        retained: Option<Bytes>,
        retries_left: usize,
        // The registry (for a retry), the retry policy, the timeout.
        shared: Arc<Shared>,
        // Relative until something on the path reads the clock; the instant a
        // failed attempt reports is kept for the retries.
        deadline: Deadline,
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
            .finish_non_exhaustive()
    }
}

impl Future for CallFuture {
    type Output = Result<Bytes, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let result = match this.attempt.as_mut().project() {
                AttemptProj::Direct { future } => match ready!(future.poll_answer(cx)) {
                    Ok(response) => Ok(response),
                    Err(failure) => {
                        if let Some(at) = failure.deadline {
                            *this.deadline = Deadline::At(at);
                        }
                        Err(failure.error)
                    }
                },
                AttemptProj::Layered { layered } => ready!(layered.as_mut().poll_attempt(cx)),
            };
            let error = match result {
                Ok(response) => {
                    this.shared.retry.deposit();
                    return Poll::Ready(Ok(response));
                }
                Err(error) => error,
            };
            if *this.retries_left == 0 || !this.shared.retry.allows(&error) {
                return Poll::Ready(Err(error));
            }
            // No retry once the call's deadline has passed.
            let now = Instant::now();
            if this.deadline.fix(|| now).is_some_and(|at| at <= now) {
                return Poll::Ready(Err(error));
            }
            *this.retries_left -= 1;
            tracing::debug!(error = %error, left = *this.retries_left, "retrying request");
            let request = if *this.retries_left > 0 {
                this.retained.clone()
            } else {
                this.retained.take()
            }
            .expect("the request is retained while retries are left");
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

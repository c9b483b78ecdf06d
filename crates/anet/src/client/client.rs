//! [`Client`]: the whole stack behind one cheap, cloneable handle.

use std::{
    fmt,
    net::SocketAddr,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use tower::{
    Service,
    limit::ConcurrencyLimit,
    load_shed::LoadShed,
    util::{Either, MapErr},
};

use super::{
    Balancer, ClientBuilder, EndpointStats, Endpoints, RateLimit, RetryPolicy, call::CallFuture,
    lanes::Lanes, registry::Registry,
};
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
///
/// # In a tower stack
///
/// A `Client` is a `tower::Service<Bytes>` that is `Clone + Send + Sync +
/// 'static` (an axum `State`, a field of a tonic service, a
/// `BoxCloneSyncService`), with [`Error`] as its error. Layers that box their
/// errors (tower's `Timeout`, `Buffer`, `Filter`, `LoadShed`) give a
/// [`BoxError`]: downcast it to [`Error`] (except where a layer wraps it: a
/// `Buffer` whose service failed, e.g. a closed client, answers its own
/// `ServiceError` with the anet error as its source), or classify it with
/// [`Error::from_boxed`], which reads that wrapper too, and tower's own
/// `Elapsed` and `Overloaded` (kept as the source, so they stay told apart
/// from anet's own timeout). tower's `Either` (what `option_layer` builds) needs one error
/// type on both sides: box the client's first.
///
/// ```
/// use std::time::Duration;
///
/// use anet::{BoxError, Error, Kind, client::Client};
/// use bytes::Bytes;
/// use tower::{
///     ServiceBuilder, ServiceExt, timeout::{TimeoutLayer, error::Elapsed},
///     util::BoxCloneSyncService,
/// };
/// # use anet::server::{Request, Server};
///
/// /// The backend of an app: erased, cheap to clone, shared by tasks.
/// type Backend = BoxCloneSyncService<Bytes, Bytes, BoxError>;
///
/// fn backend(client: Client, timeout: Option<Duration>) -> Backend {
///     BoxCloneSyncService::new(
///         ServiceBuilder::new()
///             .option_layer(timeout.map(TimeoutLayer::new))
///             .map_err(BoxError::from)
///             .service(client),
///     )
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// # let server = Server::builder().bind("127.0.0.1:0".parse()?).await?;
/// # let addr = server.local_addr();
/// # tokio::spawn(server.serve(tower::service_fn(|r: Request| async move {
/// #     if r.payload() == "slow" { tokio::time::sleep(Duration::from_secs(30)).await; }
/// #     Ok::<_, std::convert::Infallible>(r.into_payload())
/// # })));
/// let client = Client::builder()
///     .endpoint(addr)
///     .request_timeout(Duration::from_millis(500))
///     .build();
/// # client.wait_connected(Duration::from_secs(5)).await?;
/// let ping = Bytes::from_static(b"ping");
/// assert_eq!(backend(client.clone(), None).oneshot(ping).await?, "ping");
///
/// // The client's own deadline: an anet `Error` inside the box.
/// let slow = Bytes::from_static(b"slow");
/// let err = backend(client.clone(), None).oneshot(slow.clone()).await.unwrap_err();
/// assert_eq!(err.downcast_ref::<Error>().map(Error::kind), Some(Kind::Timeout));
///
/// // tower's shorter timeout: its `Elapsed`, a timeout all the same.
/// let err = backend(client, Some(Duration::from_millis(10))).oneshot(slow).await.unwrap_err();
/// assert!(err.is::<Elapsed>());
/// assert_eq!(Error::from_boxed(err).kind(), Kind::Timeout);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    /// The limit layers over the balancer; `None` when no limit is configured
    /// (calls then go to the balancer directly).
    pub(crate) layers: Option<Stack>,
    pub(crate) shared: Arc<Lanes<Shared>>,
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
        CallFuture::start(self.layers.as_ref(), &self.shared, request)
    }

    /// A handle to add and remove endpoints at run time.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            registry: self.shared.registry.clone(),
        }
    }

    /// The balanced pool without this client's layers, to build your own
    /// `ServiceBuilder` stack on (your own retry policy, rate limit, ...). Its
    /// `poll_ready` is honest: ready only when it holds room on a connection
    /// (see [`Balancer`]).
    pub fn balancer(&self) -> Balancer {
        Balancer::new(self.shared.registry.clone())
    }

    /// Waits until every endpoint is up with its minimum connections (each
    /// handshake done), so that the first request does not pay for a dial:
    /// a warm-up before taking traffic. Pools dial their minimum connections
    /// as soon as the client is built; this only waits for them. An empty
    /// client (a DNS or `Discover` source that has not answered yet) waits
    /// for endpoints to appear.
    ///
    /// # Errors
    ///
    /// [`Kind::Timeout`] when they are not all connected within `timeout`
    /// (the error names those that are not: a standby that is down keeps this
    /// from succeeding, while the client serves requests all the same);
    /// [`Kind::Closed`] once the client is closed.
    ///
    /// ```
    /// # use anet::{client::Client, server::{Request, Server}};
    /// # use std::time::Duration;
    /// # use tower::service_fn;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let server = Server::builder().bind("127.0.0.1:0".parse()?).await?;
    /// # let addr = server.local_addr();
    /// # tokio::spawn(server.serve(service_fn(|r: Request| async move {
    /// #     Ok::<_, std::convert::Infallible>(r.into_payload())
    /// # })));
    /// let client = Client::builder().endpoint(addr).build();
    /// client.wait_connected(Duration::from_secs(5)).await?;
    /// assert!(client.stats().endpoints[0].up);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), Error> {
        let registry = &self.shared.registry;
        let min = registry.pool.config.min_connections.max(1);
        let waited = tokio::time::timeout(timeout, async {
            loop {
                let changed = registry.pool.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if registry.is_closed() {
                    return Err(Error::new(Kind::Closed));
                }
                if registry.all_connected(min) {
                    return Ok(());
                }
                changed.await;
            }
        })
        .await;
        match waited {
            Ok(result) => result,
            Err(_) => {
                let waiting: Vec<String> = registry
                    .stats()
                    .iter()
                    .filter(|e| !e.up || e.connections < min)
                    .map(|e| e.addr.to_string())
                    .collect();
                Err(Error::with_source(
                    Kind::Timeout,
                    format!(
                        "endpoints not connected within {timeout:?}: [{}]",
                        waiting.join(", ")
                    ),
                ))
            }
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
#[derive(Clone, Debug, Default)]
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

    /// Ready while the client is open (`Err` with [`Kind::Closed`] once
    /// closed); it reserves nothing. Waiting for a limit, an endpoint or room on
    /// a connection happens inside the [`CallFuture`], under the request's
    /// deadline: the deadline covers the whole path, which a wait in
    /// `poll_ready` would escape (tower's `Timeout`, for one, covers only the
    /// response future). A `LoadShed` over a `Client` therefore never sheds;
    /// configure [`load_shed`](super::ClientBuilder::load_shed) (it sheds at the
    /// client's limits), or build your stack on [`Client::balancer`], whose
    /// `poll_ready` is pending while every connection window is full.
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

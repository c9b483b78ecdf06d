//! [`ClientBuilder`]: endpoints, pools, layers, all with documented defaults.

use std::{fmt, net::SocketAddr, sync::Arc, time::Duration};

use tokio::io::{AsyncRead, AsyncWrite};
use tower::{
    BoxError as TowerBoxError, Service, ServiceBuilder, discover::Discover,
    limit::ConcurrencyLimitLayer, load_shed::LoadShedLayer,
};

use bytes::Bytes;

use super::{
    Backoff, Balancer, Client, Connection, ConnectionConfig, Connector, Heartbeat, Lifecycle,
    LoadMeasure, PoolConfig, RateLimitLayer, RetryPolicy,
    client::{Shared, into_box},
    dial::Dialer,
    discover::{DnsSource, Resolve, SystemResolver, spawn_discover, spawn_dns},
    lanes::Lanes,
    pool::PoolContext,
    registry::Registry,
};
use crate::BoxError;

/// Builds a [`Client`]: where the endpoints are, how each is pooled, and the
/// layers every request passes through.
///
/// ```text
/// Client ─► deadline ─► retry ─► load shed? ─► rate limit? ─► concurrency limit? ─► Balancer (p2c)
///            (whole path: limits, routing, retries, response)             └─► pool per endpoint
/// ```
///
/// | setting | default |
/// |---|---|
/// | connections per endpoint | min 1, max 4 |
/// | requests in flight per connection | 512 |
/// | connect timeout | 1 s |
/// | request timeout (queueing, readiness, retries and response) | 2 s |
/// | concurrency limit | none (the connection windows bound what is in flight) |
/// | rate limit | none |
/// | load shedding | off |
/// | retry | [`RetryPolicy::default`]: 2 retries of unsent requests, within a budget |
/// | TCP | `TCP_NODELAY` on, keepalive off |
/// | reconnect backoff | 100 ms doubling to 10 s, jittered |
/// | failed dial | refused or timed out, or a connection that ended before it answered a request (or, idle, within 1 s): backs off ([`PoolConfig::settle`]) |
/// | failure threshold / probation | 3 consecutive failed dials mark an endpoint down; 10 s probation |
/// | handshake ([`handshake`](Self::handshake)) | none; when set, bounded by the connect timeout ([`Lifecycle::handshake_timeout`]) |
/// | heartbeat ([`heartbeat`](Self::heartbeat)) | none; when set, its reply timeout is the interval |
/// | maximum connection age ([`max_connection_age`](Self::max_connection_age)) | none; when set, jittered down by up to 10% |
/// | idle shrink ([`idle_timeout`](Self::idle_timeout)) | none (a pool keeps what it grew to) |
/// | response classifier ([`classify`](Self::classify)) | none: every reply is a success |
/// | endpoint priority ([`endpoint_with_priority`](Self::endpoint_with_priority)) | 0 for every endpoint: one group |
/// | balancer load ([`balance_load`](Self::balance_load)) | peak-EWMA response time × (in flight + 1); decay 10 s, failure penalty 100 ms |
/// | warm-up | pools dial their minimum connections at `build`; [`Client::wait_connected`] waits for them |
///
/// ```no_run
/// use std::time::Duration;
/// use anet::client::Client;
/// use bytes::Bytes;
///
/// # async fn f() -> Result<(), anet::Error> {
/// let client = Client::builder()
///     .endpoint("10.0.0.1:1500".parse().unwrap())
///     .endpoint("10.0.0.2:1500".parse().unwrap())
///     .request_timeout(Duration::from_millis(500))
///     .concurrency_limit(Some(1000))
///     .build();
/// let reply = client.call(Bytes::from_static(b"NC")).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct ClientBuilder {
    /// Static endpoints and their failover priorities.
    endpoints: Vec<(SocketAddr, u32)>,
    dns: Option<(String, Duration)>,
    resolver: Option<Arc<dyn Resolve>>,
    /// Dials TCP endpoints, and holds the connect timeout and connection
    /// settings a user connector's connections get too.
    connector: Connector,
    pool: PoolConfig,
    request_timeout: Duration,
    concurrency_limit: Option<usize>,
    rate_limit: Option<(u64, Duration)>,
    load_shed: bool,
    retry: RetryPolicy,
    /// A user connector, made into a dialer at build time with the final settings.
    custom_dialer: Option<MakeDialer>,
    /// Handshake, heartbeat, response classifier.
    lifecycle: Lifecycle,
    /// How the balancer weighs endpoints.
    balance_load: LoadMeasure,
}

type MakeDialer = Arc<dyn Fn(Connector) -> Dialer + Send + Sync>;

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("endpoints", &self.endpoints)
            .field("dns", &self.dns)
            .field("connector", &self.connector)
            .field("pool", &self.pool)
            .field("request_timeout", &self.request_timeout)
            .field("concurrency_limit", &self.concurrency_limit)
            .field("rate_limit", &self.rate_limit)
            .field("load_shed", &self.load_shed)
            .field("retry", &self.retry)
            .field("lifecycle", &self.lifecycle)
            .field("balance_load", &self.balance_load)
            .finish_non_exhaustive()
    }
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder::new()
    }
}

impl ClientBuilder {
    /// A builder with the defaults in the table above and no endpoints.
    pub fn new() -> ClientBuilder {
        ClientBuilder {
            endpoints: Vec::new(),
            dns: None,
            resolver: None,
            connector: Connector::new(),
            pool: PoolConfig::new(),
            request_timeout: Duration::from_secs(2),
            concurrency_limit: None,
            rate_limit: None,
            load_shed: false,
            retry: RetryPolicy::default(),
            custom_dialer: None,
            lifecycle: Lifecycle::new(),
            balance_load: LoadMeasure::peak_ewma(),
        }
    }

    /// Adds a static endpoint (priority 0, the first failover group).
    pub fn endpoint(mut self, addr: SocketAddr) -> Self {
        self.endpoints.push((addr, 0));
        self
    }

    /// Adds static endpoints (priority 0).
    pub fn endpoints(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.endpoints.extend(addrs.into_iter().map(|a| (a, 0)));
        self
    }

    /// Adds a static endpoint in failover group `priority`: **lower numbers
    /// come first** (as in DNS SRV records); [`endpoint`](Self::endpoint) is
    /// priority 0. Traffic goes to the first group that has an endpoint up and
    /// past its probation, balanced (p2c) within that group; a group further
    /// back takes it only while no better group has one. When a better
    /// endpoint comes back, it gets the traffic again once its
    /// [probation](PoolConfig::probation) has passed without a failure (no
    /// flapping back to a device that only just answered); meanwhile it stays
    /// connected. Only when no group has an endpoint past probation does an
    /// endpoint on probation take traffic, best group first.
    ///
    /// The common active/standby HSM pair:
    ///
    /// ```no_run
    /// use anet::client::Client;
    ///
    /// # async fn f() {
    /// let client = Client::builder()
    ///     .endpoint("10.0.0.1:1500".parse().unwrap()) // primary
    ///     .endpoint_with_priority("10.0.0.2:1500".parse().unwrap(), 1) // standby
    ///     .build();
    /// # }
    /// ```
    ///
    /// Requests already in flight on an endpoint that fails are not moved:
    /// they fail with the connection (the retry policy retries what was never
    /// written). Endpoints from [`dns`](Self::dns) or a `Discover` have
    /// priority 0. Default: every endpoint 0 (one group; routing then pays
    /// nothing for groups).
    pub fn endpoint_with_priority(mut self, addr: SocketAddr, priority: u32) -> Self {
        self.endpoints.push((addr, priority));
        self
    }

    /// Resolves `target` (`host:port`) now and every `every`, and follows the
    /// answer: new addresses become endpoints, vanished ones are drained (unless
    /// the static list or another source still lists them). A failed
    /// resolution keeps the current endpoints. Scales past one backend machine (a
    /// headless service, a DNS round robin).
    pub fn dns(mut self, target: impl Into<String>, every: Duration) -> Self {
        self.dns = Some((target.into(), every));
        self
    }

    /// The resolver for [`dns`](Self::dns). Default: [`SystemResolver`].
    pub fn resolver(mut self, resolver: impl Resolve) -> Self {
        self.resolver = Some(Arc::new(resolver));
        self
    }

    /// Settings of every connection (window, quarantine, frame format).
    /// Default: [`ConnectionConfig::new`].
    pub fn connection(mut self, config: ConnectionConfig) -> Self {
        self.connector = self.connector.connection_config(config);
        self
    }

    /// Requests in flight per connection. Default: 512.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.connector.config = self.connector.config.max_in_flight(n);
        self
    }

    /// Connections per endpoint: kept open (`min`) and grown to under load (`max`).
    /// Default: 1 and 4.
    pub fn connections_per_endpoint(mut self, min: usize, max: usize) -> Self {
        self.pool.min_connections = min.max(1);
        self.pool.max_connections = max.max(self.pool.min_connections);
        self
    }

    /// Pool and health settings (failure threshold, backoff, probation).
    /// Default: [`PoolConfig::new`].
    pub fn pool(mut self, pool: PoolConfig) -> Self {
        self.pool = pool;
        self
    }

    /// Reconnect backoff. Default: [`Backoff::new`].
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.pool.backoff = backoff;
        self
    }

    /// How long a connect may take; also how long a request waits for an endpoint
    /// that is making its first connection. Default: 1 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connector = self.connector.connect_timeout(timeout);
        self
    }

    /// `TCP_NODELAY` on new connections. Default: true.
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        self.connector = self.connector.nodelay(nodelay);
        self
    }

    /// TCP keepalive idle time. Default: `None` (off).
    pub fn keepalive(mut self, idle: Option<Duration>) -> Self {
        self.connector = self.connector.keepalive(idle);
        self
    }

    /// The deadline of a request over its whole path: waiting for a permit, an
    /// endpoint and room on a connection, every retry, and the response. A request
    /// whose deadline passes before it is written is never written. Default: 2 s.
    ///
    /// Without a concurrency or rate limit the clock is not read per call: the
    /// deadline runs from when the request's connection takes it from its queue
    /// (normally microseconds after the call), or from when the request starts
    /// waiting for an endpoint or for room, whichever comes first. With a limit it
    /// runs from the call.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Most requests in flight through this client at once (callers beyond it
    /// wait, within their deadline). Default: `None`.
    pub fn concurrency_limit(mut self, limit: Option<usize>) -> Self {
        self.concurrency_limit = limit;
        self
    }

    /// At most `num` requests per `per` through this client (all clones share the
    /// budget); callers beyond it wait, within their deadline. Default: none.
    ///
    /// # Panics
    ///
    /// When `num` is 0 or `per` is zero.
    pub fn rate_limit(mut self, num: u64, per: Duration) -> Self {
        assert!(num > 0 && !per.is_zero(), "rate must be positive");
        self.rate_limit = Some((num, per));
        self
    }

    /// Fail requests at once with [`Kind::Overloaded`](crate::Kind::Overloaded)
    /// instead of waiting when the concurrency or rate limit is reached. Default:
    /// false.
    pub fn load_shed(mut self, shed: bool) -> Self {
        self.load_shed = shed;
        self
    }

    /// The retry policy. Default: [`RetryPolicy::default`]. Use
    /// `RetryPolicy::new(0)` to turn retries off.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The connection lifecycle: handshake, heartbeat, response classifier
    /// (replacing any set before). Default: [`Lifecycle::new`] (none).
    pub fn lifecycle(mut self, lifecycle: Lifecycle) -> Self {
        self.lifecycle = lifecycle;
        self
    }

    /// A step run on every new connection before it takes traffic (a logon, an
    /// `NC`): see [`Lifecycle::handshake`]. A failure is a failed dial
    /// (backoff, failure accrual). Bounded by the connect timeout unless
    /// [`Lifecycle::handshake_timeout`] says otherwise. Default: none.
    pub fn handshake<F, Fut, E>(mut self, f: F) -> Self
    where
        F: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.lifecycle = self.lifecycle.handshake(f);
        self
    }

    /// Heartbeats on idle connections; a miss retires the connection: see
    /// [`Heartbeat`]. Default: none.
    pub fn heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.lifecycle = self.lifecycle.heartbeat(heartbeat);
        self
    }

    /// A response classifier: see [`Lifecycle::classify`] and
    /// [`Classification`](super::Classification). Default: none (every reply
    /// is a success).
    pub fn classify<F>(mut self, f: F) -> Self
    where
        F: Fn(&Bytes) -> super::Classification + Send + Sync + 'static,
    {
        self.lifecycle = self.lifecycle.classify(f);
        self
    }

    /// Connections older than this retire gracefully (replacement first): see
    /// [`PoolConfig::max_connection_age`]. Default: `None`.
    pub fn max_connection_age(mut self, age: Option<Duration>) -> Self {
        self.pool = self.pool.max_connection_age(age);
        self
    }

    /// Connections idle this long retire while the pool has more than its
    /// minimum: see [`PoolConfig::idle_timeout`]. Default: `None`.
    pub fn idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.pool = self.pool.idle_timeout(idle);
        self
    }

    /// Dial endpoints with your own connector (TLS, Unix socket, a proxy hop): any
    /// `Service<SocketAddr>` that returns a byte stream. The connect timeout and the
    /// connection settings still apply. Default: TCP.
    pub fn connector<M, T>(mut self, make: M) -> Self
    where
        M: Service<SocketAddr, Response = T> + Clone + Send + Sync + 'static,
        M::Future: Send + 'static,
        M::Error: Into<BoxError>,
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        self.custom_dialer = Some(Arc::new(move |connector| {
            Dialer::custom(make.clone(), connector)
        }));
        self
    }

    /// How the balancer weighs the two endpoints it draws for each request:
    /// [`LoadMeasure::PeakEwma`] (a peak-sensitive moving average of each
    /// endpoint's response time, times its requests in flight plus one: a
    /// backend that is merely slow is avoided, not only one that queues) or
    /// [`LoadMeasure::InFlight`] (requests in flight alone). Applies to the
    /// client's connections whatever [`connection`](Self::connection) sets.
    /// Default: [`LoadMeasure::peak_ewma`].
    pub fn balance_load(mut self, measure: LoadMeasure) -> Self {
        self.balance_load = measure;
        self
    }

    /// Builds the client and starts connecting to its endpoints.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime, or when the connection settings
    /// cannot keep anet's tag invariant (a window and held-tag limit that do not
    /// fit in the tag format; check first with [`ConnectionConfig::validate`]).
    pub fn build(self) -> Client {
        let (client, _) = self.build_registry();
        client
    }

    /// Builds the client with endpoints coming from a tower `Discover` of
    /// addresses (besides any static ones): `Insert(key, addr)` adds, `Remove(key)`
    /// drains, unless another key, the static list or a DNS source still lists
    /// the address.
    ///
    /// # Panics
    ///
    /// As [`build`](Self::build).
    pub fn build_with_discover<D>(self, discover: D) -> Client
    where
        D: Discover<Service = SocketAddr> + Send + 'static,
        D::Key: std::hash::Hash + Eq + Send,
        D::Error: Into<BoxError>,
    {
        let (client, registry) = self.build_registry();
        spawn_discover(&registry, discover);
        client
    }

    fn build_registry(mut self) -> (Client, Arc<Registry>) {
        self.connector.config.assert_valid();
        self.connector.config.latency = match self.balance_load {
            LoadMeasure::PeakEwma(config) => Some(config),
            LoadMeasure::InFlight => None,
        };
        let dialer = match &self.custom_dialer {
            Some(make) => make(self.connector),
            None => Dialer::tcp(self.connector),
        };
        // A request may wait for an endpoint's first connection: its connect
        // and its handshake.
        let mut pending_wait = self.connector.connect_timeout;
        if self.lifecycle.handshake.is_some() {
            pending_wait = pending_wait.saturating_add(
                self.lifecycle
                    .effective_handshake_timeout(self.connector.connect_timeout),
            );
        }
        let pool = PoolContext::new(self.pool, dialer, self.lifecycle);
        let registry = Registry::new(pool, pending_wait);
        crate::observe::client_started();
        for (addr, priority) in self.endpoints {
            registry.add_by_user(addr, priority);
        }
        if let Some((target, every)) = self.dns {
            let resolver = self.resolver.unwrap_or_else(|| Arc::new(SystemResolver));
            spawn_dns(
                &registry,
                DnsSource {
                    target,
                    every,
                    resolver,
                },
            );
        }
        let balancer = Balancer::routing_in_call(registry.clone());
        // The deadline and the retries are done by the client's call future, not
        // by tower's `Timeout` and `Retry` layers: `Timeout` covers only the
        // response future (not a limit's wait in `poll_ready`), and `Retry` clones
        // the whole service per call; the call future needs one copy and no timer
        // on its fast path.
        let stack = ServiceBuilder::new()
            .option_layer(self.load_shed.then(LoadShedLayer::new))
            .option_layer(
                self.rate_limit
                    .map(|(num, per)| RateLimitLayer::new(num, per)),
            )
            .option_layer(self.concurrency_limit.map(ConcurrencyLimitLayer::new))
            .map_err(into_box as fn(crate::Error) -> TowerBoxError)
            .service(balancer);
        // Without a limit the layers do nothing but forward: calls then go to the
        // balancer directly.
        let limited = self.concurrency_limit.is_some() || self.rate_limit.is_some();
        (
            Client {
                layers: limited.then_some(stack),
                shared: Arc::new(Lanes::new(Shared {
                    registry: registry.clone(),
                    timeout: self.request_timeout,
                    retry: self.retry,
                })),
            },
            registry,
        )
    }
}

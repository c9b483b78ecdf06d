//! The accept loop: limits, per-connection handlers, graceful shutdown.

use std::{future::Future, io, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
    task::{self, JoinSet},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::{
    Builder, Request, StatsHandle,
    admission::{Activity, Registry},
    connection::Handler,
    stats::Counters,
};
use crate::BoxError;

/// An anet server: accepts connections and serves a tower `Service` on each.
///
/// Each connection reads frames, calls the service concurrently (up to
/// `max_in_flight_per_connection`), and writes each response with its request's
/// tag as soon as it is ready (completion order). Limits, timeouts and the wire
/// behaviour on errors are set on the [`Builder`].
///
/// Tags are opaque bytes to the server: it never checks them. Requests that
/// share a tag while in flight (a client that reuses one too early) are each
/// served and each answered under that tag, in completion order; telling those
/// answers apart is the client's business.
///
/// ```
/// use anet::server::{Request, Server};
/// use bytes::Bytes;
/// use tower::service_fn;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let server = Server::builder().bind("127.0.0.1:0".parse().unwrap()).await?;
/// println!("listening on {}", server.local_addr());
/// let echo = service_fn(|req: Request| async move {
///     Ok::<_, std::convert::Infallible>(req.into_payload())
/// });
/// // Serve until the shutdown future completes (here: at once).
/// server.serve_with_shutdown(echo, async {}).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    config: Builder,
    counters: Arc<Counters>,
}

impl Server {
    /// Settings with their defaults; finish with [`Builder::bind`] or
    /// [`Builder::listener`].
    pub const fn builder() -> Builder {
        Builder::new()
    }

    pub(crate) fn new(listener: TcpListener, config: Builder) -> io::Result<Server> {
        Ok(Server {
            local_addr: listener.local_addr()?,
            listener,
            config,
            counters: Arc::new(Counters::new(&config)),
        })
    }

    /// The address the server listens on (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A handle to read the server's counters while it serves.
    pub fn stats(&self) -> StatsHandle {
        StatsHandle {
            counters: self.counters.clone(),
        }
    }

    /// Serves `service` (cloned for each connection) until the process ends.
    ///
    /// # Errors
    ///
    /// None in practice: accept errors are logged and retried.
    pub async fn serve<S>(self, service: S) -> io::Result<()>
    where
        S: Service<Request, Response = bytes::Bytes> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
    {
        self.serve_with_shutdown(service, std::future::pending())
            .await
    }

    /// Serves `service` until `signal` completes, then shuts down gracefully: stops
    /// accepting (new connections are refused), stops reading new requests,
    /// answers the requests in flight and those already received (in a read
    /// buffer, or in the socket for one last read), and closes; connections still busy after the
    /// shutdown grace are closed with their requests unanswered. Returns when every
    /// connection is closed.
    ///
    /// # Errors
    ///
    /// None in practice: accept errors are logged and retried.
    pub async fn serve_with_shutdown<S, F>(self, service: S, signal: F) -> io::Result<()>
    where
        S: Service<Request, Response = bytes::Bytes> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        F: Future<Output = ()> + Send,
    {
        self.serve_make_with_shutdown(tower::make::Shared::new(service), signal)
            .await
    }

    /// Like [`serve_with_shutdown`](Self::serve_with_shutdown), but makes a service
    /// for each connection from `make` (a MakeService given the peer address), for
    /// per-connection state. A connection whose service cannot be made is closed
    /// and the error logged. New connections are accepted only while `make` is
    /// ready (they wait in the listen backlog meanwhile); the shutdown signal is
    /// heard even while it is not.
    ///
    /// # Errors
    ///
    /// None in practice: accept errors are logged and retried.
    pub async fn serve_make_with_shutdown<M, S, F>(self, mut make: M, signal: F) -> io::Result<()>
    where
        M: Service<SocketAddr, Response = S> + Send + 'static,
        M::Future: Send + 'static,
        M::Error: Into<BoxError>,
        S: Service<Request, Response = bytes::Bytes> + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        F: Future<Output = ()> + Send,
    {
        let Server {
            listener,
            local_addr,
            config,
            counters,
        } = self;
        let shutdown = CancellationToken::new();
        let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
        let mut connections = JoinSet::new();
        let epoch = {
            let registry = Registry::new(config.max_connections_per_peer);
            let epoch = registry.epoch();
            *counters.registry() = Some(registry);
            epoch
        };
        // Also when this future is dropped: no stale counts by state.
        let _registry = RegistryGuard(counters.clone());
        crate::observe::server_started();
        // How long a newcomer that evicted an idle connection waits for its slot
        // (the evicted connection first answers what it had received). See
        // `Builder::max_connections`.
        let admit_wait = config
            .first_frame_timeout
            .unwrap_or(Duration::from_secs(10));
        // One copy for every connection's handler.
        let shared_config = Arc::new(config);
        let mut pressure = Pressure::default();
        tracing::info!(%local_addr, "serving");
        tokio::pin!(signal);
        loop {
            tokio::select! {
                () = &mut signal => break,
                // Accept only once the MakeService is ready (backpressure: the
                // backlog holds new connections meanwhile), and wait for it here,
                // where the shutdown signal and finished connections still get
                // their turn.
                (ready, accepted) = async {
                    let ready = std::future::poll_fn(|cx| make.poll_ready(cx)).await;
                    (ready, listener.accept().await)
                } => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Out of file descriptors and the like: back off a little.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                    // Before admission: a connection that gets no service
                    // must not evict anyone.
                    if let Err(e) = ready {
                        let e: BoxError = e.into();
                        tracing::error!(error = %e, "make-service failed; closing connection");
                        continue;
                    }
                    let Some(slot) = admit(&config, &counters, &slots, peer, &mut pressure) else {
                        drop(stream);
                        continue;
                    };
                    if config.nodelay {
                        let _ = stream.set_nodelay(true);
                    }
                    let making = make.call(peer);
                    let close = shutdown.child_token();
                    let activity = Arc::new(Activity::new(epoch));
                    let task = {
                        let (counters, activity, close, slots, config) = (
                            counters.clone(),
                            activity.clone(),
                            close.clone(),
                            slots.clone(),
                            shared_config.clone(),
                        );
                        async move {
                            let slot = match slot {
                                Slot::Held(slot) => slot,
                                // Room is being made: wait for the evicted
                                // connection to close.
                                Slot::Evicting => tokio::select! {
                                    () = close.cancelled() => return,
                                    acquired = tokio::time::timeout(admit_wait, slots.acquire_owned()) => {
                                        let Ok(Ok(slot)) = acquired else {
                                            // Counted as evicted (by admit) and
                                            // as rejected.
                                            counters.reject();
                                            Counters::add(&counters.rejected_after_wait, 1);
                                            tracing::debug!(%peer, "no room made in time; closing new connection");
                                            return;
                                        };
                                        slot
                                    }
                                },
                            };
                            let open = OpenGuard::new(counters.clone());
                            let made: Result<S, BoxError> = making.await.map_err(Into::into);
                            match made {
                                Ok(service) => {
                                    Handler::new(
                                        stream,
                                        Some(peer),
                                        service,
                                        config,
                                        counters,
                                        activity,
                                        close.cancelled_owned(),
                                    )
                                    .run()
                                    .await;
                                }
                                Err(e) => {
                                    tracing::error!(%peer, error = %e, "making the connection's service failed");
                                }
                            }
                            // Uncounted before the slot frees, so `open` never
                            // exceeds the limit while a waiting newcomer takes it.
                            drop(open);
                            drop(slot);
                        }
                    };
                    let id = connections.spawn(task).id();
                    if let Some(registry) = counters.registry().as_mut() {
                        registry.insert(id, activity, close, peer.ip());
                    }
                }
                Some(joined) = connections.join_next_with_id(), if !connections.is_empty() => {
                    forget(&counters, joined);
                }
            }
        }
        drop(listener);
        tracing::info!(
            open = connections.len(),
            "shutting down: no longer accepting, draining connections"
        );
        shutdown.cancel();
        let drained = tokio::time::timeout(config.shutdown_grace, async {
            while let Some(joined) = connections.join_next_with_id().await {
                forget(&counters, joined);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                open = connections.len(),
                "shutdown grace elapsed; closing busy connections"
            );
            connections.shutdown().await;
        }
        tracing::info!("server stopped");
        Ok(())
    }
}

impl Builder {
    /// Binds a TCP listener on `addr` and returns the server.
    ///
    /// # Errors
    ///
    /// When the address cannot be bound.
    pub async fn bind(self, addr: SocketAddr) -> io::Result<Server> {
        Server::new(TcpListener::bind(addr).await?, self)
    }

    /// A server on an already bound listener.
    ///
    /// # Errors
    ///
    /// When the listener's local address cannot be read.
    pub fn listener(self, listener: TcpListener) -> io::Result<Server> {
        Server::new(listener, self)
    }

    /// Serves one already-accepted connection of any kind (a Unix socket, a TLS
    /// stream) with these settings, until the peer leaves or a limit closes it.
    /// Connection limits and shutdown are then the caller's business, and so is
    /// memory across connections: the budget of
    /// [`max_in_flight_bytes`](Builder::max_in_flight_bytes) and
    /// [`max_in_flight_requests`](Builder::max_in_flight_requests) applies to
    /// this connection alone (a `Builder` is a plain `Copy` value and shares
    /// nothing between calls).
    pub async fn serve_connection<T, S>(&self, io: T, peer: Option<SocketAddr>, service: S)
    where
        T: AsyncRead + AsyncWrite + Unpin,
        S: Service<Request, Response = bytes::Bytes>,
        S::Error: Into<BoxError>,
    {
        let never = CancellationToken::new().cancelled_owned();
        let activity = Arc::new(Activity::new(Instant::now()));
        let counters = Arc::new(Counters::new(self));
        // Counted in `anet_server_connections` like an accepted connection.
        let _open = OpenGuard::new(counters.clone());
        Handler::new(
            io,
            peer,
            service,
            Arc::new(*self),
            counters,
            activity,
            never,
        )
        .run()
        .await
    }
}

/// A new connection's claim to a slot.
enum Slot {
    /// A free slot, taken.
    Held(OwnedSemaphorePermit),
    /// None was free; an idle connection was asked to close to free one.
    Evicting,
}

/// Decides whether a new connection from `peer` is served: takes a free slot,
/// or evicts an idle connection to make one, or refuses (counted).
///
/// Each eviction or refusal is logged at debug (a flood would otherwise log
/// a line per connection); `pressure` adds a warning with the totals at most
/// every [`PRESSURE_LOG_EVERY`].
fn admit(
    config: &Builder,
    counters: &Counters,
    slots: &Arc<Semaphore>,
    peer: SocketAddr,
    pressure: &mut Pressure,
) -> Option<Slot> {
    let mut registry = counters.registry();
    let registry = registry.as_mut()?;
    if registry.peer_full(peer.ip()) {
        counters.reject();
        Counters::add(&counters.rejected_per_peer, 1);
        tracing::debug!(%peer, "per-peer connection limit reached; closing new connection");
        pressure.log(counters);
        return None;
    }
    if let Ok(slot) = slots.clone().try_acquire_owned() {
        return Some(Slot::Held(slot));
    }
    let evicted = config
        .evict_idle_after
        .and_then(|min_idle| registry.evict_idle(min_idle));
    match evicted {
        Some(evicted) => {
            Counters::add(&counters.evicted, 1);
            tracing::debug!(
                %peer,
                evicted_peer = %evicted.peer,
                idle_ms = evicted.idle.as_millis() as u64,
                never_framed = !evicted.framed,
                "connection limit reached; evicting an idle connection"
            );
            pressure.log(counters);
            Some(Slot::Evicting)
        }
        None => {
            counters.reject();
            tracing::debug!(%peer, "connection limit reached and every connection busy or recent; closing new connection");
            pressure.log(counters);
            None
        }
    }
}

/// The shortest time between two warnings about admission pressure.
const PRESSURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// Rate-limits the warning about evictions and refusals (the accept loop's).
#[derive(Debug, Default)]
struct Pressure {
    /// No warning before this instant.
    quiet_until: Option<Instant>,
}

impl Pressure {
    /// Warns with the totals so far, unless a warning went out less than
    /// [`PRESSURE_LOG_EVERY`] ago.
    fn log(&mut self, counters: &Counters) {
        let now = Instant::now();
        if self.quiet_until.is_some_and(|until| now < until) {
            return;
        }
        self.quiet_until = Some(now + PRESSURE_LOG_EVERY);
        let total = |counter: &std::sync::atomic::AtomicU64| {
            counter.load(std::sync::atomic::Ordering::Relaxed)
        };
        tracing::warn!(
            evicted = total(&counters.evicted),
            rejected = total(&counters.rejected),
            rejected_per_peer = total(&counters.rejected_per_peer),
            "connection limits reached: evicting idle connections or refusing new ones (totals; logged at most every 10 s, each event at debug)"
        );
    }
}

/// Removes a finished connection task from the registry.
fn forget(counters: &Counters, joined: Result<(task::Id, ()), task::JoinError>) {
    let id = match joined {
        Ok((id, ())) => id,
        Err(e) => {
            if e.is_panic() {
                tracing::error!("connection task panicked");
            }
            e.id()
        }
    };
    if let Some(registry) = counters.registry().as_mut() {
        registry.remove(id);
    }
}

/// Clears the registry when serving ends, also when the serve future is
/// dropped (its connection tasks are aborted with it): the counts by state
/// then read zero.
struct RegistryGuard(Arc<Counters>);

impl Drop for RegistryGuard {
    fn drop(&mut self) {
        *self.0.registry() = None;
    }
}

/// Counts an open connection for as long as it lives (also when aborted).
struct OpenGuard(Arc<Counters>);

impl OpenGuard {
    fn new(counters: Arc<Counters>) -> OpenGuard {
        Counters::add(&counters.accepted, 1);
        Counters::add(&counters.open, 1);
        crate::observe::server_connections(1.0);
        OpenGuard(counters)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        crate::observe::server_connections(-1.0);
    }
}

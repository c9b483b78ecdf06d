//! One address's pool as a tower service: [`Pool`], and [`MakePool`], the
//! `MakeService<SocketAddr>` that builds one per address, so that tower's own
//! balancers (`p2c::Balance` over a `Discover` of pools, `MakeBalance`) run
//! over anet's pools unchanged.
//!
//! A [`Pool`] is a handle on the same endpoint a [`Balancer`](super::Balancer)
//! routes to: the same connections, maintenance task (reconnect discipline,
//! backoff, failure accrual, probation; see [`PoolConfig`]) and reservation of
//! window units. The balancer keeps its endpoints in its registry; a pool
//! keeps its own, alive while any handle is.
//!
//! # Example: tower's p2c over anet's pools
//!
//! ```
//! use anet::client::{Connector, MakePool};
//! use anet::server::{Request, Server};
//! use bytes::Bytes;
//! use tower::{ServiceExt, balance::p2c::Balance, discover::ServiceList, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! # let mut addrs = Vec::new();
//! # for _ in 0..2 {
//! #     let server = Server::builder().bind("127.0.0.1:0".parse()?).await?;
//! #     addrs.push(server.local_addr());
//! #     tokio::spawn(server.serve(service_fn(|r: Request| async move {
//! #         Ok::<_, std::convert::Infallible>(r.into_payload())
//! #     })));
//! # }
//! let make = MakePool::new(Connector::new());
//! let mut pools = Vec::new();
//! for addr in addrs {
//!     pools.push(make.clone().oneshot(addr).await?);
//! }
//! let balance = Balance::new(ServiceList::new(pools));
//! let reply = balance.oneshot(Bytes::from_static(b"ping")).await?;
//! assert_eq!(reply, "ping");
//! # Ok(())
//! # }
//! ```

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use pin_project_lite::pin_project;
use tokio_util::sync::CancellationToken;
use tower::{Service, load::Load};
use tracing::Instrument;

use super::{
    Connector, Lifecycle, PoolConfig,
    connection::ConnectionFuture,
    deadline,
    dial::Dialer,
    lanes::{Lane, Lanes},
    pool::{Endpoint, EndpointStats, PoolContext, Reserve, maintain},
    readiness::{Absent, Picked, Readiness, Taken},
    room::Room,
};
use crate::{Error, Kind};

/// One address's pool of multiplexed connections as a tower service:
/// `Service<Bytes> + Load + Clone`, for tower's balancers (or your own).
///
/// It keeps between [`min_connections`](PoolConfig::min_connections) and
/// [`max_connections`](PoolConfig::max_connections) connections, grows when
/// every window is nearly full, and redials with backoff, failure accrual and
/// probation ([`PoolConfig`]). [`Load`] is the window units in use over its
/// connections (requests in flight and quarantined tags).
///
/// # Readiness
///
/// `poll_ready` is ready only once it holds a unit of the window of its
/// least-loaded connection; `call` sends on it. Otherwise it is `Pending`, and
/// woken when room appears or the pool changes:
///
/// * every window full: it waits in that connection's queue, and the pool is
///   told to grow;
/// * down (connecting, backing off after failed dials, on probation's first
///   failure): it waits until the pool is up again. It never fails for this:
///   tower's p2c evicts a service for good when its `poll_ready` errs, and a
///   pool is never evicted;
/// * closed ([`close`](Pool::close)): `Err` with [`Kind::Closed`], the only
///   error.
///
/// So a lone pool whose backend never comes back is pending for good: bound
/// the wait yourself if you drive one directly (tower's `Timeout` covers the
/// response future, not `poll_ready`). Under a balancer the other pools take
/// the traffic meanwhile.
///
/// A unit reserved and not used goes back when the handle is dropped. A `call`
/// without `poll_ready` sends at once when a connection has room, and
/// otherwise fails unsent: [`Kind::Unavailable`] when the pool is down,
/// [`Kind::Overloaded`] when every window is full.
///
/// # Lifetime
///
/// `Clone` is cheap; clones share the pool, each with its own reservation.
/// When the last handle is dropped (or [`close`](Pool::close) is called) the
/// pool stops: its connections refuse new requests, finish those in flight
/// within their close grace, and close; its maintenance task then ends.
#[derive(Debug)]
pub struct Pool {
    shared: Arc<Shared>,
    /// What this handle reserved for its next call.
    readiness: Readiness,
}

/// What every handle of one pool shares.
#[derive(Debug)]
struct Shared {
    endpoint: Lanes<Endpoint>,
    /// Wakes waiting handles when the pool comes up or goes down, gets a
    /// connection, or a connection has units to spare.
    room: Arc<Room>,
    /// Stops the maintenance task.
    shutdown: CancellationToken,
}

impl Drop for Shared {
    /// The last handle is gone: stop the pool (its connections drain).
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Pool {
    /// Starts a pool for `addr`, dialing with `connector` (whose connection
    /// settings and connect timeout apply) under `config`.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub fn new(addr: SocketAddr, connector: Connector, config: PoolConfig) -> Pool {
        Pool::start(addr, Dialer::tcp(connector), config, Lifecycle::new())
    }

    fn start(addr: SocketAddr, dialer: Dialer, config: PoolConfig, lifecycle: Lifecycle) -> Pool {
        let endpoint = Lanes::new(Endpoint::new(addr, 0));
        let cx = PoolContext::new(config, dialer, lifecycle);
        let shared = Arc::new(Shared {
            endpoint: endpoint.clone(),
            room: cx.room.clone(),
            shutdown: cx.shutdown.clone(),
        });
        let span = tracing::info_span!("anet.pool", %addr);
        tokio::spawn(maintain(endpoint.arc().clone(), cx).instrument(span));
        Pool {
            shared,
            readiness: Readiness::default(),
        }
    }

    /// The address it connects to.
    pub fn addr(&self) -> SocketAddr {
        self.shared.endpoint.addr
    }

    /// Whether it routes requests now: it has a live connection and is not
    /// backing off.
    pub fn is_up(&self) -> bool {
        self.shared.endpoint.is_up()
    }

    /// A snapshot of its connections and counters.
    pub fn stats(&self) -> EndpointStats {
        self.shared.endpoint.stats()
    }

    /// Stops the pool for every handle: new requests fail with
    /// [`Kind::Closed`], requests in flight finish within the connection
    /// close grace, then its connections close.
    pub fn close(&self) {
        self.shared.shutdown.cancel();
    }

    /// Whether it has been closed.
    pub fn is_closed(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }

    /// Whether it is stopped: closed, and every connection finished.
    pub fn is_stopped(&self) -> bool {
        self.shared.endpoint.is_stopped()
    }
}

impl Drop for Pool {
    /// A unit reserved and not used goes back, and handles waiting for room
    /// hear of it.
    fn drop(&mut self) {
        self.readiness.release(&self.shared.room);
    }
}

impl Clone for Pool {
    /// Another handle on the same pool, holding no reservation.
    fn clone(&self) -> Self {
        Pool {
            shared: self.shared.clone(),
            readiness: Readiness::default(),
        }
    }
}

/// The pool's one endpoint: reserve on it when it is up, otherwise wait.
fn pick(endpoint: &Lanes<Endpoint>) -> Picked {
    if !endpoint.is_up() {
        return Picked::Nowhere(Absent::Wait);
    }
    match endpoint.reserve() {
        Reserve::Held(unit) => Picked::Held(endpoint.here(), unit),
        Reserve::Full(conn) => Picked::Full(endpoint.here(), conn),
        Reserve::Empty => {
            // Marked up but no live connection: its task has not noticed yet.
            endpoint.signal_broken();
            Picked::Nowhere(Absent::Wait)
        }
    }
}

impl Service<Bytes> for Pool {
    type Response = Bytes;
    type Error = Error;
    type Future = PoolFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let shared = &self.shared;
        if shared.shutdown.is_cancelled() {
            self.readiness.release(&shared.room);
            return Poll::Ready(Err(Error::new(Kind::Closed).unsent()));
        }
        ready!(
            self.readiness
                .poll_ready(cx, &shared.room, || pick(&shared.endpoint))
        );
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Bytes) -> PoolFuture {
        let deadline = deadline::current();
        let endpoint = &self.shared.endpoint;
        match self.readiness.take() {
            // Closed since the reservation: nothing new is written.
            Taken::Held(..) if self.shared.shutdown.is_cancelled() => {
                PoolFuture::failed(Error::new(Kind::Closed).unsent())
            }
            Taken::Held(endpoint, unit) => {
                let future = endpoint.send_reserved(unit, request, deadline);
                PoolFuture::sent(endpoint, future)
            }
            Taken::Unavailable(error) => PoolFuture::failed(error),
            Taken::Nothing if self.shared.shutdown.is_cancelled() => {
                PoolFuture::failed(Error::new(Kind::Closed).unsent())
            }
            Taken::Nothing if !endpoint.is_up() => PoolFuture::failed(Error::with_source(
                Kind::Unavailable,
                format!("the pool of {} is down", endpoint.addr),
            )),
            Taken::Nothing => match endpoint.dispatch(request, deadline) {
                Ok(future) => PoolFuture::sent(endpoint.here(), future),
                Err((_, Some(_))) => {
                    endpoint.signal_demand();
                    PoolFuture::failed(
                        Error::with_source(
                            Kind::Overloaded,
                            "every connection of the pool is full (call poll_ready first to wait for room)",
                        )
                        .unsent(),
                    )
                }
                Err((_, None)) => {
                    endpoint.signal_broken();
                    PoolFuture::failed(Error::with_source(
                        Kind::Unavailable,
                        format!("the pool of {} has no live connection", endpoint.addr),
                    ))
                }
            },
        }
    }
}

impl Load for Pool {
    type Metric = usize;

    /// Window units in use over its live connections.
    fn load(&self) -> usize {
        self.shared.endpoint.load()
    }
}

pin_project! {
    /// The response future of a [`Pool`] call.
    ///
    /// # Cancellation safety
    ///
    /// As the connection's: dropping it before the request is written means it
    /// is never written; afterwards the connection's quarantine rules apply.
    #[must_use = "futures do nothing unless polled"]
    #[derive(Debug)]
    pub struct PoolFuture {
        // Where the request went, to count its failure.
        endpoint: Option<Lane<Endpoint>>,
        future: ConnectionFuture,
    }
}

impl PoolFuture {
    fn sent(endpoint: Lane<Endpoint>, future: ConnectionFuture) -> PoolFuture {
        PoolFuture {
            endpoint: Some(endpoint),
            future,
        }
    }

    fn failed(error: Error) -> PoolFuture {
        PoolFuture {
            endpoint: None,
            future: ConnectionFuture::failed(error),
        }
    }
}

impl Future for PoolFuture {
    type Output = Result<Bytes, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let answer = ready!(this.future.poll_answer(cx));
        Poll::Ready(answer.map_err(|failure| {
            if let Some(endpoint) = this.endpoint {
                // Its answers are counted (and timed) by the connection.
                endpoint.metrics.failed(failure.error.kind());
                endpoint.record(&failure.error);
            }
            failure.error
        }))
    }
}

/// Builds a [`Pool`] per address: tower's `MakeService<SocketAddr>` for
/// [`Pool`]s (the factory of the Go library), for a `Discover` that turns
/// addresses into services, or tower's `MakeBalance`.
///
/// Every pool it makes dials with the same [`Connector`] under the same
/// [`PoolConfig`]; cloning it is cheap. It is always ready and never fails.
#[derive(Clone, Debug)]
#[must_use]
pub struct MakePool {
    dialer: Dialer,
    config: PoolConfig,
    lifecycle: Lifecycle,
}

impl MakePool {
    /// Pools that dial with `connector` (its connection settings and connect
    /// timeout apply), under [`PoolConfig::new`].
    pub fn new(connector: Connector) -> MakePool {
        MakePool {
            dialer: Dialer::tcp(connector),
            config: PoolConfig::new(),
            lifecycle: Lifecycle::new(),
        }
    }

    /// The pools' connection lifecycle: handshake, heartbeat, response
    /// classifier. Default: [`Lifecycle::new`] (none).
    pub fn lifecycle(mut self, lifecycle: Lifecycle) -> MakePool {
        self.lifecycle = lifecycle;
        self
    }

    /// The pools' settings. Default: [`PoolConfig::new`].
    pub fn pool_config(mut self, config: PoolConfig) -> MakePool {
        self.config = config;
        self
    }
}

impl Service<SocketAddr> for MakePool {
    type Response = Pool;
    type Error = Error;
    type Future = MakePoolFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    /// Starts the pool (it connects in the background; its `poll_ready` is
    /// pending until it is up).
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    fn call(&mut self, addr: SocketAddr) -> MakePoolFuture {
        MakePoolFuture {
            pool: Some(Pool::start(
                addr,
                self.dialer.clone(),
                self.config,
                self.lifecycle.clone(),
            )),
        }
    }
}

/// The future [`MakePool`] returns: ready at once with the new [`Pool`].
#[derive(Debug)]
#[must_use = "futures do nothing unless polled"]
pub struct MakePoolFuture {
    pool: Option<Pool>,
}

impl Future for MakePoolFuture {
    type Output = Result<Pool, Error>;

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(self
            .pool
            .take()
            .expect("MakePoolFuture polled after completion")))
    }
}

#[cfg(test)]
mod tests {
    use std::{future::poll_fn, task::Poll, time::Duration};

    use tower::{Service, ServiceExt};

    use super::Pool;
    use crate::client::{Connector, PoolConfig};

    /// A pool whose only connection has started refusing requests (retired:
    /// a heartbeat miss or an age limit does this) while still listed: the
    /// maintenance task prunes it only when it next runs, which on a
    /// current-thread runtime is not before this task yields. `poll_ready`
    /// must find no connection (`Reserve::Empty`) and wait, not take the
    /// closed connection as a full one to queue on: its queue fails at once,
    /// the handle picks again, finds it again, and spins inside one poll,
    /// never yielding to the task that would prune it. The poll runs on its
    /// own thread so that a spin fails the test instead of hanging it.
    #[test]
    fn poll_ready_waits_when_the_lone_connection_closed_while_still_listed() {
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async {
                let addr = crate::client::pool::holding_listener().await;
                let mut pool = Pool::new(addr, Connector::new(), PoolConfig::new());
                let endpoint = pool.shared.endpoint.clone();
                for _ in 0..2_000 {
                    if endpoint.is_up() && endpoint.live() == 1 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let listed = endpoint.listed();
                let [conn] = &listed[..] else {
                    panic!("one listed connection: {listed:?}");
                };
                conn.retire("test");
                assert!(conn.is_closed() && endpoint.is_up());
                let first = poll_fn(|cx| Poll::Ready(pool.poll_ready(cx))).await;
                assert!(first.is_pending(), "{first:?}");
                // Once the pool has replaced it, the handle is ready.
                tokio::time::timeout(Duration::from_secs(10), pool.ready())
                    .await
                    .expect("a replacement connection")
                    .expect("ready");
            });
            let _ = done.send(());
        });
        match finished.recv_timeout(Duration::from_secs(30)) {
            Ok(()) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the pool's thread panicked (see above)")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                panic!("poll_ready spun on the closed connection (no answer in 30 s)")
            }
        }
    }
}

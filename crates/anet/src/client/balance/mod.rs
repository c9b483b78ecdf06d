//! Power-of-two-choices balancing over the endpoints' pools, shared without a
//! lock-holding worker task.
//!
//! tower's `p2c::Balance` needs `&mut self`, so sharing it between tasks takes a
//! `Buffer` (a task hop and an allocation per request). [`Balancer`] runs the same
//! algorithm — pick two endpoints at random, send to the less loaded — over state
//! that every clone shares through atomics, so the caller's own task does the
//! routing. The load is the client's
//! [`LoadMeasure`](super::LoadMeasure): by default a peak-EWMA of each
//! endpoint's response time times its requests in flight plus one (so a backend
//! that is merely slow is avoided too), or requests in flight alone. With failover groups (endpoints of more than one
//! [priority](super::ClientBuilder::endpoint_with_priority)) the choice is made
//! within the first group that has an endpoint up and past its probation; with
//! one group (the default) routing is exactly the plain p2c.
//!
//! * `route.rs`: the choice itself, used to send at once or to reserve.
//! * `future.rs`: the response future, and the wait of a request that could not
//!   be sent at once.

mod future;
mod route;

use std::{
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use tower::{Service, load::Load};

pub use future::BalanceFuture;

use super::{
    deadline,
    readiness::{Readiness, Taken},
    registry::Registry,
};
use crate::{Error, Kind};

/// The balanced pools as a tower `Service<Bytes>`: the bottom of a client
/// stack, public so that users can build their own `ServiceBuilder` stack on it.
///
/// Cheap to clone; every clone routes over the same endpoints, and each clone
/// has its own readiness (like a [`Connection`](super::Connection) handle).
///
/// # Readiness
///
/// `poll_ready` does the routing, as tower's balancers do: it picks an
/// endpoint by power of two choices (three candidates when there are three or
/// more endpoints) and reserves a unit of the window of its
/// least-loaded connection, and is ready only once it holds that unit; `call`
/// sends on it at once. So tower's `LoadShed`, `Buffer`, `ConcurrencyLimit`
/// and a p2c over several balancers (a `Balancer` is [`Load`]) see the
/// backpressure:
///
/// * every window full: `Pending`, queued for a unit on one connection, and
///   woken when it gets that unit, when another connection of any endpoint has
///   a unit nobody queued for, or when the endpoints change (one up or down, a
///   new connection); the endpoint is told to grow its pool;
/// * no endpoint up: `Ready`, and the next `call` fails at once with
///   [`Kind::Unavailable`]; while an endpoint's first connect is under way (or a
///   discovery source has not answered yet), `Pending` for up to the connect
///   timeout first. Not an `Err`: tower's `Buffer` takes an error from
///   `poll_ready` as the end of its service, and its p2c evicts for good;
/// * closed: `Err` with [`Kind::Closed`].
///
/// A reserved unit not used by a `call` goes back to its connection when the
/// handle is dropped. A `call` without a `poll_ready` before it still works: the
/// request is routed in `call`, and waits in its future for an endpoint or for
/// room.
///
/// Under a [`Client`](super::Client) call (through its limit layers), the
/// request keeps that call's deadline; otherwise it has none of its own: a
/// `Timeout` layer covers the response future, not `poll_ready`.
///
/// # Load shedding
///
/// A `LoadShed` over a balancer sheds (tower's `Overloaded`, which
/// [`Error::from_boxed`](crate::Error::from_boxed) reads as
/// [`Kind::Overloaded`]) whenever `poll_ready` is pending: when every window
/// is full, and also **while the first connections are still being dialled**
/// just after the client is built. Warm up with
/// [`Client::wait_connected`](super::Client::wait_connected) before taking
/// traffic, or the first requests are shed:
///
/// ```
/// use std::time::Duration;
///
/// use anet::{Error, Kind, client::Client};
/// use bytes::Bytes;
/// use tower::{ServiceBuilder, ServiceExt};
/// # use anet::server::{Request, Server};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// # let server = Server::builder().bind("127.0.0.1:0".parse()?).await?;
/// # let addr = server.local_addr();
/// # tokio::spawn(server.serve(tower::service_fn(|r: Request| async move {
/// #     Ok::<_, std::convert::Infallible>(r.into_payload())
/// # })));
/// let client = Client::builder().endpoint(addr).build();
/// client.wait_connected(Duration::from_secs(5)).await?;
///
/// let stack = ServiceBuilder::new()
///     .load_shed()
///     .concurrency_limit(64)
///     .timeout(Duration::from_millis(500))
///     .service(client.balancer());
/// match stack.oneshot(Bytes::from_static(b"ping")).await {
///     Ok(reply) => assert_eq!(reply, "ping"),
///     // Shed, timed out, or anet's own error: one classification.
///     Err(e) => match Error::from_boxed(e).kind() {
///         Kind::Overloaded => { /* every window was full: answer 429 */ }
///         kind => panic!("{kind}"),
///     },
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Balancer {
    registry: Arc<Registry>,
    /// What this handle reserved for its next call.
    readiness: Readiness,
    /// `poll_ready` reserves (the public balancer); otherwise it is ready while
    /// the client is open and every call routes itself (under a client's
    /// limit layers, whose wait the call's deadline covers, and whose load
    /// shedding is documented to shed at the limits only).
    reserve: bool,
}

impl Balancer {
    /// The public balancer: `poll_ready` reserves.
    pub(crate) fn new(registry: Arc<Registry>) -> Balancer {
        Balancer {
            registry,
            readiness: Readiness::default(),
            reserve: true,
        }
    }

    /// The balancer under a client's limit layers: `poll_ready` is ready while
    /// the client is open and every call routes itself, as
    /// [`Client::poll_ready`](super::Client) documents.
    pub(crate) fn routing_in_call(registry: Arc<Registry>) -> Balancer {
        Balancer {
            registry,
            readiness: Readiness::default(),
            reserve: false,
        }
    }
}

impl Clone for Balancer {
    /// Another handle on the same endpoints, holding no reservation.
    fn clone(&self) -> Self {
        Balancer {
            registry: self.registry.clone(),
            readiness: Readiness::default(),
            reserve: self.reserve,
        }
    }
}

impl Load for Balancer {
    type Metric = usize;

    /// Window units in use over every endpoint's live connections (requests
    /// in flight, quarantined tags, and units reserved by ready handles, this
    /// one's included): the same measure as [`Pool`](super::Pool)'s, summed.
    /// So tower's own `p2c::Balance` can balance over whole balancers — one
    /// per cluster or data centre, each balancing over its own endpoints.
    ///
    /// With no endpoint up, the load is `usize::MAX`: such a balancer is
    /// *ready* (its next call fails at once with [`Kind::Unavailable`], so a
    /// caller never hangs on it), and with nothing in flight it would
    /// otherwise look the least loaded, so a p2c over balancers would send
    /// every request to the cluster that is down. At `usize::MAX` it is
    /// chosen only when the other candidate is not ready either.
    ///
    ///
    /// ```
    /// use anet::client::{Balancer, Client};
    /// use tower::{Service, ServiceExt, balance::p2c::Balance, discover::ServiceList};
    /// # use anet::server::{Request, Server};
    /// # use bytes::Bytes;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// # let mut addrs = Vec::new();
    /// # for _ in 0..2 {
    /// #     let server = Server::builder().bind("127.0.0.1:0".parse()?).await?;
    /// #     addrs.push(server.local_addr());
    /// #     tokio::spawn(server.serve(tower::service_fn(|r: Request| async move {
    /// #         Ok::<_, std::convert::Infallible>(r.into_payload())
    /// #     })));
    /// # }
    /// # let (east, west) = (addrs[0], addrs[1]);
    /// let clusters: Vec<Balancer> = [east, west]
    ///     .into_iter()
    ///     .map(|addr| Client::builder().endpoint(addr).build().balancer())
    ///     .collect();
    /// let mut both = Balance::new(ServiceList::new(clusters));
    /// let reply = both.ready().await?.call(Bytes::from_static(b"ping")).await?;
    /// assert_eq!(reply, "ping");
    /// # Ok(())
    /// # }
    /// ```
    fn load(&self) -> usize {
        let endpoints = self.registry.endpoints();
        if !endpoints.iter().any(|e| e.is_up()) {
            return usize::MAX;
        }
        endpoints.iter().map(|e| e.load()).sum()
    }
}

impl Drop for Balancer {
    /// A unit reserved and not used goes back, and handles waiting for room
    /// hear of it.
    fn drop(&mut self) {
        self.readiness.release(&self.registry.pool.room);
    }
}

impl Service<Bytes> for Balancer {
    type Response = Bytes;
    type Error = Error;
    type Future = BalanceFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        let registry = &self.registry;
        if registry.is_closed() {
            self.readiness.release(&registry.pool.room);
            return Poll::Ready(Err(Error::new(Kind::Closed).unsent()));
        }
        if !self.reserve {
            return Poll::Ready(Ok(()));
        }
        ready!(
            self.readiness
                .poll_ready(cx, &registry.pool.room, || route::pick(registry))
        );
        Poll::Ready(Ok(()))
    }

    /// Sends on the unit `poll_ready` reserved; without one, routes here: when
    /// a connection has room the request is on its way before the future is
    /// first polled.
    fn call(&mut self, request: Bytes) -> BalanceFuture {
        let deadline = deadline::current();
        match self.readiness.take() {
            // Closed since the reservation: nothing new is written.
            Taken::Held(..) if self.registry.is_closed() => {
                BalanceFuture::failed(Error::new(Kind::Closed).unsent(), deadline)
            }
            Taken::Held(endpoint, unit) => {
                let future = endpoint.send_reserved(unit, request, deadline);
                BalanceFuture::sent(endpoint, future, deadline)
            }
            Taken::Unavailable(error) => BalanceFuture::failed(error, deadline),
            Taken::Nothing => BalanceFuture::start(&self.registry, request, deadline),
        }
    }
}

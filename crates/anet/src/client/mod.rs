//! The client side.
//!
//! ```text
//! Client (Clone) ─► deadline ─► retry ─► load shed? ─► rate limit? ─► concurrency limit?
//!   └─► Balancer: power of two choices over endpoints, load = requests in flight
//!        └─► per-endpoint pool of multiplexed connections (min..max, backoff,
//!            failure accrual, probation)
//!             └─► Connection: one socket, many tagged requests in flight
//! ```
//!
//! * [`Client`] and [`ClientBuilder`]: the whole stack with documented defaults.
//! * [`Balancer`]: the balanced pools as a `tower::Service<Bytes>`, to build your
//!   own stack on; [`Endpoints`] adds and removes endpoints at run time.
//! * [`Pool`]: one address's pool as a `tower::Service<Bytes>` with `Load`, and
//!   [`MakePool`], which makes one per address: tower's own balancers over
//!   anet's pools.
//! * [`Connection`]: one multiplexed connection; [`Connector`] dials one over TCP.
//! * [`Lifecycle`], [`Heartbeat`], [`Classification`]: a handshake on every new
//!   connection, heartbeats on idle ones, a response classifier; with
//!   [`PoolConfig::max_connection_age`] and [`PoolConfig::idle_timeout`], the
//!   life of a pooled connection. Failover groups:
//!   [`ClientBuilder::endpoint_with_priority`].
//! * [`RetryPolicy`]: retries only what is safe to retry.
//! * [`future`]: the futures the services above return.
//!
//! Every type has one path: `anet::client::Name`, or `anet::client::future::Name`
//! for futures.

mod backoff;
mod balance;
mod builder;
mod call;
#[allow(clippy::module_inception)]
mod client;
mod connect;
mod connection;
mod deadline;
mod dial;
mod discover;
pub mod future;
mod lanes;
mod latency;
mod lifecycle;
mod pool;
mod pool_service;
mod rate_limit;
mod readiness;
mod registry;
mod retry;
mod room;

pub use backoff::Backoff;
pub use balance::Balancer;
pub use builder::ClientBuilder;
pub use client::{Client, ClientStats};
pub use connect::Connector;
pub use connection::{Connection, ConnectionConfig, ConnectionStats};
pub use discover::{Resolve, SystemResolver};
pub use latency::{LoadMeasure, PeakEwmaConfig};
pub use lifecycle::{Classification, Heartbeat, Lifecycle};
pub use pool::{EndpointState, EndpointStats, ErrorCounts, PoolConfig};
pub use pool_service::{MakePool, Pool};
pub use rate_limit::{RateLimit, RateLimitLayer};
pub use registry::Endpoints;
pub use retry::{RetryBudget, RetryPolicy};

//! The client side: multiplexed connections and the connector that dials them.
//!
//! * [`Connection`]: one transport, many tagged requests in flight, as a
//!   `tower::Service<Bytes>` with [`tower::load::Load`].
//! * [`Connector`]: a `Service<SocketAddr>` that dials TCP and returns a
//!   [`Connection`].

mod connect;
pub mod connection;

pub use connect::{ConnectFuture, Connector};
pub use connection::{Connection, ConnectionConfig, ConnectionStats, ResponseFuture};

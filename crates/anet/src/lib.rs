//! anet: a fast, safe tower client and server for length-prefixed,
//! tag-multiplexed TCP protocols — HSMs (Thales payShield host protocol), payment
//! switches, in-house RPC that tags its requests. Wire-compatible with the Go
//! library `andrei-cloud/anet`; the format itself lives in [`anet_proto`].
//!
//! * [`client`]: a multiplexed [`Connection`](client::Connection) (many requests in
//!   flight on one socket, as a `tower::Service<Bytes>`) and a TCP
//!   [`Connector`](client::Connector).
//! * [`server`]: a [`Server`](server::Server) that serves a tower `Service` over the
//!   protocol, with limits, backpressure and graceful shutdown.
//! * [`Error`]: one error type with a [`Kind`] to match on.
//!
//! # Example
//!
//! ```no_run
//! use anet::client::Connector;
//! use bytes::Bytes;
//! use tower::{Service, ServiceExt};
//!
//! # async fn f() -> Result<(), anet::Error> {
//! let mut conn = Connector::new().connect("127.0.0.1:7878".parse().unwrap()).await?;
//! let reply = conn.ready().await?.call(Bytes::from_static(b"hello")).await?;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

#[cfg(feature = "client")]
pub mod client;
mod error;
#[cfg(feature = "server")]
pub mod server;

pub use anet_proto;
pub use error::{BoxError, Error, Kind};

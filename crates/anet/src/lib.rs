//! anet: a fast, safe tower client and server for length-prefixed,
//! tag-multiplexed TCP protocols — HSMs (Thales payShield host protocol), payment
//! switches, in-house RPC that tags its requests. Wire-compatible with the Go
//! library `andrei-cloud/anet`; the format itself lives in [`anet_proto`].
//!
//! * [`client`]: [`Client`](client::Client) — pooled, balanced, multiplexed
//!   connections behind a deadline, retries and limits, built with
//!   [`ClientBuilder`](client::ClientBuilder) — and every piece of it:
//!   [`Connection`](client::Connection) (many requests in flight on one socket, as a
//!   `tower::Service<Bytes>`), [`Connector`](client::Connector),
//!   [`Balancer`](client::Balancer), [`RetryPolicy`](client::RetryPolicy).
//! * [`server`]: a [`Server`](server::Server) that serves a tower `Service` over the
//!   protocol, with limits, backpressure and graceful shutdown.
//! * [`Error`]: one error type with a [`Kind`] to match on, and
//!   [`is_unsent`](Error::is_unsent) to tell whether a retry is safe.
//! * [`architecture`]: how it works inside — the request path, the tag
//!   lifecycle, window capacity, and the test that guards each invariant.
//! * `status` (features `http`, `tonic`): error kinds as the HTTP statuses and
//!   gRPC codes a gateway answers its own callers with.
//!
//! # Example
//!
//! A server that upper-cases payloads, and a client calling it:
//!
//! ```
//! use std::time::Duration;
//!
//! use anet::{client::Client, server::{Request, Server}};
//! use bytes::Bytes;
//! use tower::service_fn;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder().bind("127.0.0.1:0".parse()?).await?;
//! let addr = server.local_addr();
//! tokio::spawn(server.serve(service_fn(|req: Request| async move {
//!     Ok::<_, std::convert::Infallible>(Bytes::from(req.payload().to_ascii_uppercase()))
//! })));
//!
//! let client = Client::builder()
//!     .endpoint(addr)
//!     .request_timeout(Duration::from_millis(500))
//!     .build();
//! let reply = client.call(Bytes::from_static(b"hello")).await?;
//! assert_eq!(reply, "HELLO");
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod architecture;
mod assertions;
#[cfg(feature = "client")]
pub mod client;
mod error;
mod observe;
#[cfg(feature = "server")]
pub mod server;
#[cfg(any(feature = "http", feature = "tonic"))]
pub mod status;
#[cfg(any(feature = "client", feature = "server"))]
mod time;

pub use anet_proto;
pub use error::{BoxError, Error, Kind};

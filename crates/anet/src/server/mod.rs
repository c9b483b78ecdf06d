//! The server side: serve a tower `Service` over the anet protocol.
//!
//! ```text
//!  accept ──► per connection: read frames ──► service.call (concurrent, up to
//!             max_in_flight_per_connection; at the limit, stop reading)
//!                     responses in completion order, tag echoed ◄──┘
//! ```
//!
//! * **Limits**: `max_connections`, `max_in_flight_per_connection` (backpressure
//!   through TCP), maximum frame length, first-frame / idle / read (slowloris) /
//!   write timeouts, and optionally `max_connections_per_peer`.
//! * **Memory budget**: a server-wide budget for unanswered requests,
//!   [`max_in_flight_bytes`](Builder::max_in_flight_bytes) (64 MiB) and
//!   [`max_in_flight_requests`](Builder::max_in_flight_requests) (10,000): at
//!   the limit connections stop reading until answers free room (nothing read
//!   is dropped), connections holding nothing first. A request's memory is its
//!   own payload (copied out of a small read buffer, or read into a buffer of
//!   its exact size), so a slow handler keeps only what it holds alive.
//! * **Admission**: connections that send nothing cannot lock others out. A
//!   connection must deliver a complete first frame within the first-frame
//!   timeout (10 s). At `max_connections` a newcomer evicts an idle connection
//!   (nothing in flight, idle at least
//!   [`evict_idle_after`](Builder::evict_idle_after), 1 s; silent connections
//!   first, then the one idle longest) instead of being refused; it is
//!   refused (closed at once, counted) only when every connection is busy or
//!   too recent. An evicted connection answers what it already received. See the defaults table on [`Builder::new`].
//! * **Errors**: a service error or a handler panic affects only its own request;
//!   the wire behaviour is [`OnError`]: no response (default) or close the
//!   connection. A protocol violation (short frame, oversize length) closes only
//!   the connection that sent it.
//! * **Shutdown**: [`Server::serve_with_shutdown`] stops accepting, answers the
//!   requests in flight within the grace period, then closes.
//! * **Stats**: [`Server::stats`] gives a [`StatsHandle`] to read
//!   [`ServerStats`] at any time: connections by state (new, active, idle),
//!   evictions, refusals, first-frame and other timeouts, requests, errors,
//!   the budget in use and the time connections spent throttled.
//!
//! # Example
//!
//! An echo server, and a client talking to it:
//!
//! ```
//! use anet::{client::Connector, server::{Request, Server}};
//! use bytes::Bytes;
//! use tower::{Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let server = Server::builder()
//!     .max_in_flight_per_connection(64)
//!     .bind("127.0.0.1:0".parse()?)
//!     .await?;
//! let addr = server.local_addr();
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let serving = tokio::spawn(server.serve_with_shutdown(
//!     service_fn(|req: Request| async move {
//!         Ok::<_, std::convert::Infallible>(req.into_payload())
//!     }),
//!     async { let _ = stopped.await; },
//! ));
//!
//! let mut conn = Connector::new().connect(addr).await?;
//! let reply = conn.ready().await?.call(Bytes::from_static(b"hello")).await?;
//! assert_eq!(reply, "hello");
//!
//! stop.send(()).ok();
//! serving.await??;
//! # Ok(())
//! # }
//! ```

mod admission;
mod budget;
mod call;
mod calls;
mod config;
mod connection;
mod reader;
mod request;
#[allow(clippy::module_inception)]
mod server;
mod stats;
mod writer;

pub use config::{Builder, OnError};
pub use request::Request;
pub use server::Server;
pub use stats::{ServerStats, StatsHandle};

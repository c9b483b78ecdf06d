//! One multiplexed connection: many tagged requests in flight over one transport.
//!
//! A [`Connection`] is a cheap, cloneable handle implementing
//! `tower::Service<Bytes, Response = Bytes>`; a driver task owns the transport and
//! the table of waiting requests.
//!
//! ```text
//!  callers ──call──► handle ──queue──► driver ──frames──► socket
//!     ▲                                  │  tag = slot + generation
//!     └──────── response future ◄────────┘◄──frames── socket (any order)
//! ```
//!
//! * `poll_ready` reserves a slot of the window (`max_in_flight`); it is pending
//!   while the window is full and fails once the connection is broken or closed.
//! * The driver tags each request with its slot and the slot's generation, encodes
//!   queued requests into one buffer and flushes when the queue is empty, and
//!   completes each response's request in O(1).
//! * A dropped or timed-out request returns at once. Its unit of the window stays
//!   taken until its late response arrives or its quarantine ends; its **tag value**
//!   stays held until the late response arrives or the connection closes, so it is
//!   never issued to another request meanwhile, whatever the tag format. A late
//!   response is dropped, never delivered to anyone. When the held tags reach the
//!   [held-tag limit](ConnectionConfig::held_tag_limit) the connection retires:
//!   it refuses new requests, finishes the rest within its close grace and closes.
//! * Every request carries its unit of the window as a value; wherever the request
//!   ends, dropping the value gives the unit back.
//! * A transport failure fails every waiting request at once with
//!   [`Kind::ConnectionLost`](crate::Kind::ConnectionLost); requests not yet written
//!   fail with [`Kind::NotSent`](crate::Kind::NotSent), safe to retry.
//! * **Memory a server can make a client hold** is bounded by the
//!   configuration, whatever it sends: per connection, a read buffer of 64 KiB
//!   (or, while a frame arrives, room for that frame's body, reserved when its
//!   length is read: at most the frame maximum; a longer length is a protocol
//!   error before anything is reserved, and a frame that does not complete
//!   within the [read timeout](ConnectionConfig::read_timeout) fails the
//!   connection), and the responses of at most `max_in_flight` waiting
//!   requests. A response whose tag matches no waiting request (a flood of
//!   unknown tags) is dropped and counted, never kept. A response is a slice of
//!   the read buffer, not a copy: while the caller keeps it, it keeps alive the
//!   buffer chunk it was read into (at most 64 KiB, or its own frame when
//!   larger); copy it (`Bytes::copy_from_slice`) to keep many small responses
//!   for long.
//!
//! # Example
//!
//! ```
//! use anet::client::{Connection, ConnectionConfig};
//! use anet_proto::{FrameCodec, read_frame, write_frame};
//! use bytes::Bytes;
//! use tower::{Service, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), anet::Error> {
//! // An in-memory echo server on the other end of a duplex pipe.
//! let (client_io, mut server_io) = tokio::io::duplex(4096);
//! tokio::spawn(async move {
//!     let codec = FrameCodec::new();
//!     while let Ok(Some(frame)) = read_frame(&mut server_io, &codec).await {
//!         write_frame(&mut server_io, &codec, frame.as_ref()).await.unwrap();
//!     }
//! });
//!
//! let mut conn = Connection::new(client_io, ConnectionConfig::new());
//! let response = conn.ready().await?.call(Bytes::from_static(b"ping")).await?;
//! assert_eq!(response, "ping");
//! # Ok(())
//! # }
//! ```

mod config;
mod driver;
mod due;
mod future;
mod handle;
mod reply;
mod shared;
mod stats;
mod table;
mod unit;

pub use config::ConnectionConfig;
pub use future::ResponseFuture;
pub use handle::Connection;
pub use stats::ConnectionStats;

pub(crate) use reply::Failure;

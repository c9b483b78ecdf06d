//! The two servers every client is measured against, each on its own OS thread
//! with a current-thread runtime (the echo servers of `anet_tests::servers`):
//! `raw` (the least a server can do) and the anet `Server` with an echo service.

use std::net::SocketAddr;

use anet::server::Server;
use anet_tests::servers::{anet_echo_on_own_thread, raw_echo_on_own_thread};

/// A neutral echo server: whatever bytes arrive go straight back.
pub(crate) fn raw() -> SocketAddr {
    raw_echo_on_own_thread()
}

/// The anet `Server` with an echo service, room for 1024 requests in flight per
/// connection, and otherwise default settings.
pub(crate) fn anet() -> SocketAddr {
    anet_echo_on_own_thread(Server::builder().max_in_flight_per_connection(1024))
}

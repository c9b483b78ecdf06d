//! Runnable examples of anet; run one with `cargo run --example NAME`:
//!
//! | example | shows |
//! |---|---|
//! | `echo` | server + client, five concurrent requests (Go anet's README example) |
//! | `axum_gateway` | an axum handler forwarding HTTP bodies through a `ServiceBuilder` stack |
//! | `tonic_gateway` | a gRPC method forwarding commands through a shared `Client`, errors as gRPC statuses |
//! | `custom_retry` | a user-written retry `Policy` layered on the balancer |
//! | `balance` | three backends, one removed at run time, traffic per backend |
//! | `tls` | server and client over TLS (rustls, a certificate made at run time) |
//! | `tower_balance` | tower's p2c `Balance` over anet's per-address pools: a backend killed and restarted |
//! | `hsm_header` | payShield-style ASCII header tags on both sides |
//! | `frames` | the wire format by hand with `read_frame` / `write_frame` |
//!
//! This library holds the pieces of the examples that tests call too.

pub mod gateway;
pub mod grpc;

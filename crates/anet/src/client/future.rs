//! The futures of the client's services, nameable for your own stacks (as
//! `tower::limit::concurrency::future`, ...).
//!
//! | future | returned by |
//! |---|---|
//! | [`CallFuture`] | [`Client::call`](super::Client::call) and `Client`'s `Service::call` |
//! | [`BalanceFuture`] | [`Balancer`](super::Balancer)'s `Service::call` |
//! | [`PoolFuture`] | [`Pool`](super::Pool)'s `Service::call` |
//! | [`MakePoolFuture`] | [`MakePool`](super::MakePool)'s `Service::call` |
//! | [`ConnectionFuture`] | [`Connection`](super::Connection)'s `Service::call` |
//! | [`ConnectFuture`] | [`Connector`](super::Connector)'s `Service::call` |
//! | [`ResolveFuture`] | [`Resolve::resolve`](super::Resolve::resolve) |
//!
//! Every one of them is `Send` (and `Sync` where its contents allow), so it can
//! be spawned or held across `.await` in a multi-threaded runtime.

pub use super::balance::BalanceFuture;
pub use super::call::CallFuture;
pub use super::connect::ConnectFuture;
pub use super::connection::ConnectionFuture;
pub use super::discover::ResolveFuture;
pub use super::pool_service::{MakePoolFuture, PoolFuture};

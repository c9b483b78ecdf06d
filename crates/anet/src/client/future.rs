//! The futures the client's services return, each named after its service.

pub use super::balance::BalanceFuture;
pub use super::call::CallFuture;
pub use super::connect::ConnectFuture;
pub use super::connection::ResponseFuture as ConnectionFuture;
pub use super::discover::ResolveFuture;
pub use super::pool_service::{MakePoolFuture, PoolFuture};

//! One multiplexed connection: many tagged requests in flight over one transport.
//! The public face is [`Connection`] (its docs tell the whole story); the driver
//! task owns the transport and the table of waiting requests.

mod cells;
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
pub use future::ConnectionFuture;
pub use handle::Connection;
pub use stats::ConnectionStats;

pub(crate) use driver::panic_message;
pub(crate) use reply::Failure;
pub(crate) use shared::{ReplyHook, Verdict};
pub(crate) use unit::Unit;

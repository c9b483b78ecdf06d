//! Turning an address into a [`Connection`]: TCP by default, or any transport a
//! user's connector makes (TLS, Unix socket, a proxy hop).

use std::{fmt, future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use tokio::io::{AsyncRead, AsyncWrite};
use tower::{Service, ServiceExt};

use super::{Connection, ConnectionConfig, Connector};
use crate::{BoxError, Error, Kind};

type DialFuture = Pin<Box<dyn Future<Output = Result<Connection, Error>> + Send>>;

/// A type-erased way to dial an address into a ready [`Connection`]; cloned into
/// every endpoint's pool.
#[derive(Clone)]
pub(crate) struct Dialer {
    dial: Arc<dyn Fn(SocketAddr) -> DialFuture + Send + Sync>,
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dialer").finish_non_exhaustive()
    }
}

impl Dialer {
    /// Dials with anet's TCP [`Connector`].
    pub(crate) fn tcp(connector: Connector) -> Dialer {
        Dialer {
            dial: Arc::new(move |addr| Box::pin(async move { connector.connect(addr).await })),
        }
    }

    /// Dials with a user connector: any `Service<SocketAddr>` returning a byte
    /// stream, wrapped with the connect timeout and the connection settings.
    pub(crate) fn custom<M, T>(make: M, config: ConnectionConfig, timeout: Duration) -> Dialer
    where
        M: Service<SocketAddr, Response = T> + Clone + Send + Sync + 'static,
        M::Future: Send + 'static,
        M::Error: Into<BoxError>,
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Dialer {
            dial: Arc::new(move |addr| {
                let make = make.clone();
                Box::pin(async move {
                    let io = tokio::time::timeout(timeout, make.oneshot(addr))
                        .await
                        .map_err(|_| {
                            Error::with_source(
                                Kind::Connect,
                                format!("connect to {addr} timed out after {timeout:?}"),
                            )
                        })?
                        .map_err(|e| Error::with_source(Kind::Connect, e))?;
                    tracing::info!(%addr, "connected");
                    Connection::try_new(io, config)
                })
            }),
        }
    }

    pub(crate) fn dial(&self, addr: SocketAddr) -> DialFuture {
        (self.dial)(addr)
    }
}

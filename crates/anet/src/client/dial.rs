//! Turning an address into a [`Connection`]: TCP by default, or any transport a
//! user's connector makes (TLS, Unix socket, a proxy hop).

use std::{fmt, future::Future, net::SocketAddr, pin::Pin, sync::Arc, time::Duration};

use tokio::io::{AsyncRead, AsyncWrite};
use tower::{Service, ServiceExt};

use super::{Connection, Connector};
use crate::{BoxError, Error};

type DialFuture = Pin<Box<dyn Future<Output = Result<Connection, Error>> + Send>>;

/// A type-erased way to dial an address into a ready [`Connection`]; cloned into
/// every endpoint's pool.
#[derive(Clone)]
pub(crate) struct Dialer {
    dial: Arc<dyn Fn(SocketAddr) -> DialFuture + Send + Sync>,
    /// The connector's connect timeout (the default handshake timeout).
    connect_timeout: Duration,
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
            connect_timeout: connector.connect_timeout,
        }
    }

    /// Dials with a user connector: any `Service<SocketAddr>` that returns a byte
    /// stream, within `connector`'s timeout and with its connection settings.
    pub(crate) fn custom<M, T>(make: M, connector: Connector) -> Dialer
    where
        M: Service<SocketAddr, Response = T> + Clone + Send + Sync + 'static,
        M::Future: Send + 'static,
        M::Error: Into<BoxError>,
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Dialer {
            dial: Arc::new(move |addr| {
                let make = make.clone();
                Box::pin(async move { connector.connect_over(addr, make.oneshot(addr)).await })
            }),
            connect_timeout: connector.connect_timeout,
        }
    }

    /// The connect timeout dials run under.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    pub(crate) fn dial(&self, addr: SocketAddr) -> DialFuture {
        let dial = (self.dial)(addr);
        if cfg!(feature = "metrics") {
            Box::pin(async move {
                let dialed = dial.await;
                crate::observe::dialed(dialed.is_ok());
                dialed
            })
        } else {
            dial
        }
    }
}

//! Dialing TCP and wrapping the stream in a [`Connection`].

use std::{
    fmt,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};
use tower::Service;

use super::{Connection, ConnectionConfig};
use crate::{BoxError, Error, Kind};

/// A `Service<SocketAddr>` that dials TCP and returns a ready [`Connection`]: the
/// MakeService for one address.
///
/// Each call connects within the connect timeout, sets `TCP_NODELAY` (and TCP
/// keepalive when configured), spawns the connection's driver and hands back its
/// handle. Failures are [`Kind::Connect`] errors.
///
/// ```no_run
/// use anet::client::Connector;
/// use std::time::Duration;
/// use tower::{Service, ServiceExt};
///
/// # async fn f() -> Result<(), anet::Error> {
/// let mut connector = Connector::new().connect_timeout(Duration::from_millis(500));
/// let conn = connector.ready().await?.call("127.0.0.1:7878".parse().unwrap()).await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug)]
#[must_use = "a connector does nothing until it dials"]
pub struct Connector {
    pub(crate) config: ConnectionConfig,
    pub(crate) connect_timeout: Duration,
    nodelay: bool,
    keepalive: Option<Duration>,
}

impl Connector {
    /// A connector with the default [`ConnectionConfig`], a 1 s connect timeout,
    /// `TCP_NODELAY` on and keepalive off.
    pub const fn new() -> Connector {
        Connector {
            config: ConnectionConfig::new(),
            connect_timeout: Duration::from_secs(1),
            nodelay: true,
            keepalive: None,
        }
    }

    /// Settings of the connections it makes. Default: [`ConnectionConfig::new`].
    pub const fn connection_config(mut self, config: ConnectionConfig) -> Self {
        self.config = config;
        self
    }

    /// How long a connect may take. Default: 1 s.
    pub const fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Whether to set `TCP_NODELAY`. Default: true (requests are coalesced by the
    /// driver already; Nagle would only add latency).
    pub const fn nodelay(mut self, nodelay: bool) -> Self {
        self.nodelay = nodelay;
        self
    }

    /// TCP keepalive idle time, or `None` for the OS default (off). Default: `None`.
    pub const fn keepalive(mut self, idle: Option<Duration>) -> Self {
        self.keepalive = idle;
        self
    }

    /// Dials `addr` and returns a connection.
    ///
    /// # Errors
    ///
    /// [`Kind::Connect`] when the connect fails or times out;
    /// [`Kind::InvalidConfig`] when the connection settings are invalid (see
    /// [`ConnectionConfig::validate`]), before dialing.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Connection, Error> {
        self.config.validate()?;
        let stream = self.within_timeout(addr, TcpStream::connect(addr)).await?;
        self.configure(&stream)
            .map_err(|e| Error::with_source(Kind::Connect, e))?;
        tracing::info!(%addr, "connected");
        Connection::try_new(stream, self.config)
    }

    /// Makes a connection over whatever `dial` (a user's connect to `addr`)
    /// returns, within the connect timeout and with these connection settings.
    pub(crate) async fn connect_over<T, E>(
        &self,
        addr: SocketAddr,
        dial: impl Future<Output = Result<T, E>>,
    ) -> Result<Connection, Error>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        E: Into<BoxError>,
    {
        let io = self.within_timeout(addr, dial).await?;
        tracing::info!(%addr, "connected");
        Connection::try_new(io, self.config)
    }

    /// Awaits `dial`, a connect to `addr`, within the connect timeout: the one
    /// place a connect is timed. Failures are [`Kind::Connect`] errors.
    async fn within_timeout<T, E: Into<BoxError>>(
        &self,
        addr: SocketAddr,
        dial: impl Future<Output = Result<T, E>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.connect_timeout, dial).await {
            Ok(Ok(io)) => Ok(io),
            Ok(Err(e)) => {
                let e: BoxError = e.into();
                tracing::warn!(%addr, error = %e, "connect failed");
                Err(Error::with_source(Kind::Connect, e))
            }
            Err(_) => {
                tracing::warn!(%addr, timeout = ?self.connect_timeout, "connect timed out");
                Err(Error::with_source(
                    Kind::Connect,
                    format!(
                        "connect to {addr} timed out after {:?}",
                        self.connect_timeout
                    ),
                ))
            }
        }
    }

    fn configure(&self, stream: &TcpStream) -> std::io::Result<()> {
        stream.set_nodelay(self.nodelay)?;
        if let Some(idle) = self.keepalive {
            let keepalive = socket2::TcpKeepalive::new().with_time(idle);
            socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)?;
        }
        Ok(())
    }
}

impl Default for Connector {
    fn default() -> Self {
        Connector::new()
    }
}

impl Service<SocketAddr> for Connector {
    type Response = Connection;
    type Error = Error;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, addr: SocketAddr) -> ConnectFuture {
        let connector = *self;
        ConnectFuture {
            inner: Box::pin(async move { connector.connect(addr).await }),
        }
    }
}

/// The future of [`Connector::call`]: a connection, or a [`Kind::Connect`] error.
#[must_use = "futures do nothing unless polled"]
pub struct ConnectFuture {
    // Boxed: dialing is off the request path, once per connection.
    inner: Pin<Box<dyn Future<Output = Result<Connection, Error>> + Send>>,
}

impl fmt::Debug for ConnectFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectFuture").finish_non_exhaustive()
    }
}

impl Future for ConnectFuture {
    type Output = Result<Connection, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

//! What happens to a pooled connection between its dial and its close: a
//! handshake before it takes traffic, heartbeats while it is idle, and a look
//! at every reply (the response classifier). [`Lifecycle`] holds them; the
//! pool ([`ClientBuilder`](super::ClientBuilder) or [`MakePool`](super::MakePool))
//! runs them. Everything here is off by default: without it, anet writes only
//! what its callers send.
//!
//! Connection age and idle shrink are [`PoolConfig`](super::PoolConfig)
//! settings ([`max_connection_age`](super::PoolConfig::max_connection_age),
//! [`idle_timeout`](super::PoolConfig::idle_timeout)).
//!
//! ```
//! use std::time::Duration;
//! use anet::client::{Classification, Heartbeat, Lifecycle};
//! use bytes::Bytes;
//! use tower::{Service, ServiceExt};
//!
//! // A payShield-style host: `NC` (diagnostics) as logon and as heartbeat;
//! // an answer whose error code is not `00` counts against the endpoint.
//! let lifecycle = Lifecycle::new()
//!     .handshake(|mut conn: anet::client::Connection| async move {
//!         let reply = conn.ready().await?.call(Bytes::from_static(b"NC")).await?;
//!         if reply.starts_with(b"ND00") { Ok(()) } else { Err(anet::BoxError::from("logon refused")) }
//!     })
//!     .heartbeat(
//!         Heartbeat::new(Duration::from_secs(30), Bytes::from_static(b"NC"))
//!             .check(|reply| reply.starts_with(b"ND00")),
//!     )
//!     .classify(|reply| match reply.get(2..4) {
//!         Some(b"00") | None => Classification::Success,
//!         Some(_) => Classification::EndpointFailure,
//!     });
//! # let _: Lifecycle = lifecycle;
//! # let _: Result<(), anet::BoxError> = Ok(());
//! ```

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::time::Instant;
use tower::{Service, ServiceExt};

use super::Connection;
use crate::BoxError;
use crate::time::later;

type HandshakeFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;
type HandshakeFn = Arc<dyn Fn(Connection) -> HandshakeFuture + Send + Sync>;
pub(crate) type Classifier = Arc<dyn Fn(&Bytes) -> Classification + Send + Sync>;
type Check = Arc<dyn Fn(&Bytes) -> bool + Send + Sync>;

/// What a [response classifier](Lifecycle::classify) makes of a reply.
///
/// The caller gets the reply in every case: the classification is about the
/// endpoint's and the connection's health, not about this request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Classification {
    /// A healthy reply (the default for every reply). Ends a streak of
    /// endpoint failures.
    Success,
    /// An application-level failure (an HSM error code, a switch's
    /// decline-because-down): counts toward the endpoint's failure accrual
    /// while the connection stays up. [`failure_threshold`](super::PoolConfig::failure_threshold)
    /// consecutive ones (or one on probation) mark the endpoint down for a
    /// backoff, then it comes back on probation with the connections it has.
    EndpointFailure,
    /// The connection is no longer fit (a desynchronised session, a device that
    /// says it must reconnect): it retires (refuses new requests, finishes
    /// those in flight within its close grace, closes) and is replaced.
    ConnectionFailure,
}

/// The connection lifecycle of a pool: a handshake on every new connection,
/// heartbeats on idle ones, and a response classifier. `Clone`; setters take
/// and return it by value. Default: none of them (nothing is written that
/// callers did not send, and every reply is a success).
///
/// Used by [`ClientBuilder::lifecycle`](super::ClientBuilder::lifecycle) (or its
/// shortcuts) and [`MakePool::lifecycle`](super::MakePool::lifecycle).
#[derive(Clone, Default)]
#[must_use = "a configuration does nothing until it is used"]
pub struct Lifecycle {
    pub(crate) handshake: Option<HandshakeFn>,
    /// `None`: the connect timeout.
    pub(crate) handshake_timeout: Option<Duration>,
    pub(crate) heartbeat: Option<Heartbeat>,
    pub(crate) classifier: Option<Classifier>,
}

impl fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifecycle")
            .field("handshake", &self.handshake.is_some())
            .field("handshake_timeout", &self.handshake_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("classifier", &self.classifier.is_some())
            .finish()
    }
}

impl Lifecycle {
    /// No handshake, no heartbeat, every reply a success.
    pub fn new() -> Lifecycle {
        Lifecycle::default()
    }

    /// A step run on every new connection before it takes traffic: send a
    /// logon or a diagnostic and check the reply. It gets a handle on the
    /// connection (send on it as on any [`Connection`]); `Ok` puts the
    /// connection in the pool, `Err` (or the [timeout](Self::handshake_timeout),
    /// or a panic) closes it and counts as a failed dial: the endpoint backs off, and
    /// the failure counts toward marking it down, like a refused connect.
    /// Its replies are not seen by the [classifier](Self::classify), and a
    /// connection whose handshake was answered counts as proven (see
    /// [`PoolConfig::settle`](super::PoolConfig::settle)). Default: none.
    pub fn handshake<F, Fut, E>(mut self, f: F) -> Self
    where
        F: Fn(Connection) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.handshake = Some(Arc::new(move |conn| {
            let fut = f(conn);
            Box::pin(async move { fut.await.map_err(Into::into) })
        }));
        self
    }

    /// The handshake as a tower `Service<Connection>` (cloned for each
    /// connection), otherwise as [`handshake`](Self::handshake).
    pub fn handshake_service<S>(self, service: S) -> Self
    where
        S: Service<Connection, Response = ()> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
    {
        self.handshake(move |conn| service.clone().oneshot(conn))
    }

    /// How long the handshake may take before it counts as failed. Default:
    /// the connect timeout.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = Some(timeout);
        self
    }

    /// Heartbeats on idle connections. Default: none.
    pub fn heartbeat(mut self, heartbeat: Heartbeat) -> Self {
        self.heartbeat = Some(heartbeat);
        self
    }

    /// A look at every reply delivered on the pool's connections (handshake
    /// replies excepted, heartbeat replies included): see [`Classification`].
    /// It runs on the connection's task for each reply, so keep it cheap (a
    /// few byte compares). The caller gets the reply whatever it says; if it
    /// panics, the panic is logged and the reply counts as a success.
    /// Default: none (every reply is a success).
    pub fn classify<F>(mut self, f: F) -> Self
    where
        F: Fn(&Bytes) -> Classification + Send + Sync + 'static,
    {
        self.classifier = Some(Arc::new(f));
        self
    }

    /// The handshake timeout in effect under `connect_timeout`.
    pub(crate) fn effective_handshake_timeout(&self, connect_timeout: Duration) -> Duration {
        self.handshake_timeout.unwrap_or(connect_timeout)
    }
}

/// A heartbeat: once a connection has been idle for `interval` (nothing
/// written by callers and nothing in flight), the pool sends `payload` on it,
/// as a real tagged request, and checks the reply. A reply that fails the
/// [check](Self::check), or none within the [timeout](Self::timeout), is a
/// heartbeat miss: the connection is retired (it refuses new requests as
/// [`Kind::NotSent`](crate::Kind::NotSent), retried elsewhere; what is in
/// flight may finish within its close grace, and what is still in flight when
/// the grace ends fails with [`Kind::ConnectionLost`](crate::Kind::ConnectionLost))
/// and replaced. A check that panics counts as a miss. This is how a
/// half-open TCP connection (a peer gone without a FIN, a firewall that
/// dropped the flow) is found when TCP keepalive is off or too slow.
///
/// A busy connection gets no heartbeat: its callers' replies show it is
/// alive (and their deadlines catch a silent peer; see
/// [`held_tag_limit`](super::ConnectionConfig::held_tag_limit)).
///
/// ```
/// use std::time::Duration;
/// use anet::client::Heartbeat;
///
/// let beat = Heartbeat::new(Duration::from_secs(30), "NC")
///     .timeout(Duration::from_secs(2))
///     .check(|reply| reply.starts_with(b"ND00"));
/// # let _ = beat;
/// ```
#[derive(Clone)]
#[must_use = "a configuration does nothing until it is used"]
pub struct Heartbeat {
    pub(crate) interval: Duration,
    pub(crate) payload: Bytes,
    /// `None`: the interval.
    pub(crate) timeout: Option<Duration>,
    pub(crate) check: Option<Check>,
}

impl fmt::Debug for Heartbeat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Heartbeat")
            .field("interval", &self.interval)
            .field("payload", &self.payload)
            .field("timeout", &self.timeout)
            .field("check", &self.check.is_some())
            .finish()
    }
}

impl Heartbeat {
    /// Sends `payload` on a connection idle for `interval` (at least 1 ms).
    pub fn new(interval: Duration, payload: impl Into<Bytes>) -> Heartbeat {
        Heartbeat {
            interval: interval.max(Duration::from_millis(1)),
            payload: payload.into(),
            timeout: None,
            check: None,
        }
    }

    /// How long to wait for the reply. Default: the interval.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Whether a reply is healthy. Default: any reply is.
    pub fn check<F>(mut self, f: F) -> Self
    where
        F: Fn(&Bytes) -> bool + Send + Sync + 'static,
    {
        self.check = Some(Arc::new(f));
        self
    }

    /// Sends one heartbeat on `conn`: `Err` says why it missed.
    pub(crate) async fn beat(&self, conn: &Connection) -> Result<(), String> {
        let mut conn = conn.clone();
        let timeout = self.timeout.unwrap_or(self.interval);
        let sent = tokio::time::timeout(timeout, async {
            conn.ready().await?;
            // Not a caller's request: not in the endpoint's metrics.
            conn.call_unmetered(self.payload.clone()).await
        })
        .await;
        match sent {
            Err(_) => Err(format!("no reply within {timeout:?}")),
            Ok(Err(error)) => Err(error.to_string()),
            // A panicking check (a bug) is a miss, not the end of the watcher.
            Ok(Ok(reply)) => match &self.check {
                Some(check) => match super::pool::catch_unwind(|| check(&reply)) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(format!("reply {reply:?} failed the check")),
                    Err(panic) => Err(format!("the check panicked on reply {reply:?}: {panic}")),
                },
                None => Ok(()),
            },
        }
    }
}

/// Why the pool retires a connection that is still working.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Retire {
    /// Older than the maximum age: replaced first, then drained.
    MaxAge,
    /// Idle past the idle timeout while the pool has more than its minimum.
    Idle,
}

impl Retire {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Retire::MaxAge => "max_age",
            Retire::Idle => "idle",
        }
    }
}

/// The age at which a connection opened at `opened` retires: `max_age` less
/// up to a tenth of it, at random, so that connections made together do not
/// all retire together.
pub(crate) fn age_limit(opened: Instant, max_age: Duration) -> Instant {
    let tenth = u64::try_from((max_age / 10).as_nanos()).unwrap_or(u64::MAX);
    let jitter = Duration::from_nanos(fastrand::u64(0..=tenth));
    later(opened, max_age.saturating_sub(jitter))
}

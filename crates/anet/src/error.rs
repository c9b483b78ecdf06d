//! The one error type of anet, and the classification of tower's boxed errors.

use std::{error::Error as StdError, fmt, sync::Arc};

/// The error type tower layers pass around: anything, boxed.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// What kind of failure an [`Error`] is; match on it to decide what to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// The request's deadline passed before its response arrived. The request may
    /// have reached the server.
    Timeout,
    /// The connection failed while the request was written or awaiting its
    /// response. The request may have reached the server.
    ConnectionLost,
    /// The request was never written to any connection: always safe to retry.
    NotSent,
    /// Establishing a connection failed (refused, unreachable, connect timeout).
    Connect,
    /// The peer broke the wire protocol (a frame shorter than the tag, or longer
    /// than the maximum); the connection was closed.
    Protocol,
    /// A limit rejected the request (load shedding, a full queue).
    Overloaded,
    /// No endpoint could take the request.
    Unavailable,
    /// The client, connection or server was closed.
    Closed,
    /// The request cannot be sent as given, e.g. its payload exceeds the maximum
    /// frame length.
    InvalidRequest,
    /// A configuration that cannot keep anet's guarantees, e.g. a window larger
    /// than the tag format can number; refused when the client or connection is
    /// built.
    InvalidConfig,
    /// A failure that fits no other kind; see the source.
    Other,
}

impl Kind {
    /// The kind's name in `snake_case`, as used in reports and JSON
    /// (`"connection_lost"`, `"not_sent"`, ...).
    pub const fn as_str(&self) -> &'static str {
        match self {
            Kind::Timeout => "timeout",
            Kind::ConnectionLost => "connection_lost",
            Kind::NotSent => "not_sent",
            Kind::Connect => "connect",
            Kind::Protocol => "protocol",
            Kind::Overloaded => "overloaded",
            Kind::Unavailable => "unavailable",
            Kind::Closed => "closed",
            Kind::InvalidRequest => "invalid_request",
            Kind::InvalidConfig => "invalid_config",
            Kind::Other => "other",
        }
    }

    /// Every kind, in declaration order. A slice, not an array: later versions
    /// may add kinds (the enum is `#[non_exhaustive]`).
    ///
    /// ```
    /// use anet::Kind;
    ///
    /// assert!(Kind::all().contains(&Kind::NotSent));
    /// let names: Vec<&str> = Kind::all().iter().map(Kind::as_str).collect();
    /// assert_eq!(names[0], "timeout");
    /// ```
    pub const fn all() -> &'static [Kind] {
        &KINDS
    }

    /// The number of kinds (the length of per-kind counters).
    #[cfg(feature = "client")]
    pub(crate) const COUNT: usize = KINDS.len();

    /// The kind's position in [`Kind::all`] (the per-kind counters).
    #[cfg(feature = "client")]
    pub(crate) const fn index(&self) -> usize {
        *self as usize
    }

    /// Whether a request failing with this kind is known never to have been written
    /// (so retrying cannot duplicate it), unless the error says otherwise.
    const fn default_unsent(&self) -> bool {
        matches!(
            self,
            Kind::NotSent
                | Kind::Connect
                | Kind::Overloaded
                | Kind::Unavailable
                | Kind::InvalidRequest
                | Kind::InvalidConfig
        )
    }

    fn describe(&self) -> &'static str {
        match self {
            Kind::Timeout => "request timed out",
            Kind::ConnectionLost => "connection lost",
            Kind::NotSent => "request not sent",
            Kind::Connect => "connect failed",
            Kind::Protocol => "protocol violation",
            Kind::Overloaded => "overloaded",
            Kind::Unavailable => "no endpoint available",
            Kind::Closed => "closed",
            Kind::InvalidRequest => "invalid request",
            Kind::InvalidConfig => "invalid configuration",
            Kind::Other => "request failed",
        }
    }
}

/// Every kind, in declaration order (so `kind as usize` is its index).
const KINDS: [Kind; 11] = [
    Kind::Timeout,
    Kind::ConnectionLost,
    Kind::NotSent,
    Kind::Connect,
    Kind::Protocol,
    Kind::Overloaded,
    Kind::Unavailable,
    Kind::Closed,
    Kind::InvalidRequest,
    Kind::InvalidConfig,
    Kind::Other,
];

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error of every anet service: a [`Kind`] to match on, whether the request
/// may have been written, and an optional source.
///
/// Cheap to clone (the source is shared), so one connection failure can fail many
/// requests with the same cause.
///
/// ```
/// use anet::{Error, Kind};
///
/// fn should_retry(err: &Error, idempotent: bool) -> bool {
///     err.is_unsent() || (idempotent && matches!(err.kind(), Kind::ConnectionLost | Kind::Timeout))
/// }
/// ```
#[derive(Clone)]
pub struct Error {
    kind: Kind,
    /// `true` when the request is known never to have been written.
    unsent: bool,
    source: Option<Arc<dyn StdError + Send + Sync>>,
}

impl Error {
    /// An error of `kind` with no source.
    pub fn new(kind: Kind) -> Error {
        Error {
            kind,
            unsent: kind.default_unsent(),
            source: None,
        }
    }

    /// An error of `kind` caused by `source`.
    pub fn with_source(kind: Kind, source: impl Into<BoxError>) -> Error {
        Error {
            kind,
            unsent: kind.default_unsent(),
            source: Some(Arc::from(source.into())),
        }
    }

    /// A failure of `kind`, caused by `source`, of a request that was **never
    /// written** to any connection: retrying it cannot make the server see it
    /// twice, whatever the kind ([`is_unsent`](Self::is_unsent) is `true`).
    ///
    /// For custom layers that refuse a request before it reaches the wire, so
    /// that a retry policy may retry it. [`RetryPolicy`](crate::client::RetryPolicy)
    /// retries unsent `NotSent`, `Connect`, `ConnectionLost`, `Protocol` and
    /// `Other` failures; never `Timeout`, `Unavailable`, `Overloaded`, `Closed`
    /// or the invalid kinds, which a retry cannot help, unsent or not.
    ///
    /// ```
    /// use anet::{Error, Kind};
    ///
    /// // A layer refusing a request while its circuit is open: nothing was written.
    /// let err = Error::not_sent(Kind::Other, "circuit open");
    /// assert!(err.is_unsent());
    /// assert_eq!(err.kind(), Kind::Other);
    /// ```
    pub fn not_sent(kind: Kind, source: impl Into<BoxError>) -> Error {
        Error::with_source(kind, source).unsent()
    }

    /// A failure of `kind`, caused by `source`, of a request that **may have been
    /// written**: the server may have seen it ([`is_unsent`](Self::is_unsent) is
    /// `false`, whatever the kind), so only idempotent requests may be retried.
    ///
    /// For custom layers that fail after handing the request on.
    /// [`RetryPolicy`](crate::client::RetryPolicy) retries such a failure only
    /// when the request is declared idempotent.
    ///
    /// ```
    /// use anet::{Error, Kind};
    ///
    /// // Even a kind that is unsent by default is not, when the request went out.
    /// let err = Error::maybe_sent(Kind::Overloaded, "peer refused after reading it");
    /// assert!(!err.is_unsent());
    /// ```
    pub fn maybe_sent(kind: Kind, source: impl Into<BoxError>) -> Error {
        Error {
            unsent: false,
            ..Error::with_source(kind, source)
        }
    }

    /// Marks the error as one whose request was never written, whatever its kind
    /// (e.g. `Closed` before the request reached a connection).
    #[cfg_attr(not(feature = "client"), allow(dead_code))]
    pub(crate) fn unsent(mut self) -> Error {
        self.unsent = true;
        self
    }

    /// The kind of failure.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Whether the request is known never to have been written to a connection, so
    /// that retrying it cannot make the server see it twice.
    ///
    /// `false` means the request may have reached the server: retry only requests
    /// the caller knows to be idempotent.
    pub fn is_unsent(&self) -> bool {
        self.unsent
    }

    /// Turns the boxed error a tower stack returns into an anet [`Error`],
    /// classifying tower's own errors: `Elapsed` is [`Kind::Timeout`], `Overloaded`
    /// is [`Kind::Overloaded`]; an anet `Error` inside is returned as it is; anything
    /// else is [`Kind::Other`] with the original as source.
    ///
    /// tower's `Elapsed` and `Overloaded` stay the [`source`](StdError::source)
    /// of the result, so a caller can still tell a tower layer's timeout from
    /// anet's own deadline (a wrapper such as a `Buffer`'s `ServiceError` is
    /// not kept: the anet error inside is returned):
    ///
    /// ```
    /// use anet::{BoxError, Error, Kind};
    /// use tower::timeout::error::Elapsed;
    ///
    /// let ours: BoxError = Box::new(Error::new(Kind::Timeout));
    /// let towers: BoxError = Box::new(Elapsed::new());
    /// for (boxed, from_tower) in [(ours, false), (towers, true)] {
    ///     let err = Error::from_boxed(boxed);
    ///     assert_eq!(err.kind(), Kind::Timeout);
    ///     let source = std::error::Error::source(&err);
    ///     assert_eq!(source.is_some_and(|s| s.is::<Elapsed>()), from_tower);
    /// }
    /// ```
    pub fn from_boxed(err: BoxError) -> Error {
        let err = match err.downcast::<Error>() {
            Ok(e) => return *e,
            Err(e) => e,
        };
        if err.is::<tower::timeout::error::Elapsed>() {
            return Error::with_source(Kind::Timeout, err);
        }
        if err.is::<tower::load_shed::error::Overloaded>() {
            return Error::with_source(Kind::Overloaded, err);
        }
        if let Some(inner) = wrapped(&*err) {
            return inner.clone();
        }
        Error::with_source(Kind::Other, err)
    }
}

/// An anet [`Error`] that a layer such as tower's `Buffer` wraps: the direct
/// source of `err`. Only one level: a deeper anet error is a cause of something
/// the layer decided, which may have reached the server whatever the cause says.
fn wrapped<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a Error> {
    err.source().and_then(|s| s.downcast_ref::<Error>())
}

/// What a retry policy needs to know about an error: its kind and whether the
/// request was unsent. Reads the error as [`Error::from_boxed`] does: an anet
/// [`Error`] itself or one level down (layers such as `Buffer` wrap it), tower's
/// `Elapsed` (a timeout: the request may have been written) and `Overloaded`
/// (shed before it was sent); `None` for anything else.
#[cfg(feature = "client")]
pub(crate) fn classify(err: &(dyn StdError + 'static)) -> Option<(Kind, bool)> {
    if err.is::<tower::timeout::error::Elapsed>() {
        return Some((Kind::Timeout, false));
    }
    if err.is::<tower::load_shed::error::Overloaded>() {
        return Some((Kind::Overloaded, true));
    }
    err.downcast_ref::<Error>()
        .or_else(|| wrapped(err))
        .map(|ours| (ours.kind, ours.unsent))
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("unsent", &self.unsent);
        if let Some(src) = &self.source {
            d.field("source", src);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind.describe())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

impl From<Kind> for Error {
    fn from(kind: Kind) -> Self {
        Error::new(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tower_errors_are_classified() {
        let elapsed: BoxError = Box::new(tower::timeout::error::Elapsed::new());
        assert_eq!(Error::from_boxed(elapsed).kind(), Kind::Timeout);
        let shed: BoxError = Box::new(tower::load_shed::error::Overloaded::new());
        let e = Error::from_boxed(shed);
        assert_eq!(e.kind(), Kind::Overloaded);
        assert!(e.is_unsent());
        let ours: BoxError = Box::new(Error::new(Kind::NotSent));
        assert_eq!(Error::from_boxed(ours).kind(), Kind::NotSent);
        let other: BoxError = "boom".into();
        let e = Error::from_boxed(other);
        assert_eq!(e.kind(), Kind::Other);
        assert_eq!(e.source().unwrap().to_string(), "boom");
    }

    #[test]
    fn unsent_follows_kind_unless_marked() {
        assert!(Error::new(Kind::NotSent).is_unsent());
        assert!(!Error::new(Kind::ConnectionLost).is_unsent());
        assert!(!Error::new(Kind::Closed).is_unsent());
        assert!(Error::new(Kind::Closed).unsent().is_unsent());
        assert_eq!(Error::new(Kind::Timeout).to_string(), "request timed out");
        assert_eq!(Kind::ConnectionLost.as_str(), "connection_lost");
    }

    #[cfg(feature = "client")]
    #[test]
    fn classify_finds_an_anet_error_wrapped_by_a_layer() {
        /// A layer's wrapper (as tower's `Buffer` wraps its inner error).
        #[derive(Debug)]
        struct Wrapped<E>(E);
        impl<E> fmt::Display for Wrapped<E> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl<E: StdError + 'static> StdError for Wrapped<E> {
            fn source(&self) -> Option<&(dyn StdError + 'static)> {
                Some(&self.0)
            }
        }
        let inner = Error::not_sent(Kind::ConnectionLost, "reset before write");
        assert_eq!(
            classify(&Wrapped(inner.clone())),
            Some((Kind::ConnectionLost, true))
        );
        // Two levels down it is a cause of the layer's own failure, which may
        // have reached the server: neither reading trusts it, and both agree.
        let deep = Wrapped(Wrapped(inner));
        assert_eq!(classify(&deep), None);
        let boxed = Error::from_boxed(Box::new(deep));
        assert_eq!((boxed.kind(), boxed.is_unsent()), (Kind::Other, false));
        let elapsed = tower::timeout::error::Elapsed::new();
        assert_eq!(classify(&elapsed), Some((Kind::Timeout, false)));
        assert_eq!(classify(&std::io::Error::other("boom")), None);
    }

    #[test]
    fn every_kind_is_listed_at_its_index() {
        for (i, kind) in Kind::all().iter().enumerate() {
            assert_eq!(*kind as usize, i, "{kind}");
        }
    }
}

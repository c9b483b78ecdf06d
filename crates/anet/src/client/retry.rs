//! The default retry policy: honest about what may have reached the server.

use std::{
    future,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;
use tower::retry::{Policy, budget::Budget};

use super::lanes::Striped;
use crate::{Error, Kind};
use sealed::Classify;

/// Retries a request only when doing so cannot make the server see it twice —
/// unless the caller declares requests idempotent.
///
/// * Always retried (the request was never written): [`Kind::NotSent`],
///   [`Kind::Connect`]; and [`Kind::ConnectionLost`], [`Kind::Protocol`] or
///   [`Kind::Other`] errors that say they were never written
///   ([`Error::not_sent`], for custom layers and connectors).
/// * Retried only when [`idempotent`](RetryPolicy::idempotent): [`Kind::ConnectionLost`],
///   [`Kind::Protocol`] and [`Kind::Timeout`] (the request may have been executed).
/// * Never retried: everything else (a retry cannot help an `Unavailable` that
///   already waited, an `Overloaded`, an `InvalidRequest` or a `Closed`).
///
/// Retries draw on a [`RetryBudget`] (by default: retries may add 20% to the
/// successful requests, plus 10 per second), so a failing backend is not hammered.
///
/// # In your own stack
///
/// It is a `tower::retry::Policy` over anet's [`Error`] (what [`Balancer`](super::Balancer),
/// [`Client`](super::Client) and [`Connection`](super::Connection) return) and over
/// [`BoxError`](crate::BoxError) (what tower's `Timeout`, `Buffer` and `LoadShed` return), so it
/// sits directly on any of them, with or without a timeout on either side:
///
/// ```
/// use std::time::Duration;
///
/// use anet::client::{Client, Connector, RetryPolicy};
/// use anet::server::{Request, Server};
/// use bytes::Bytes;
/// use tower::{Service, ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// # let server = Server::builder().bind("127.0.0.1:0".parse()?).await?;
/// # let addr = server.local_addr();
/// # tokio::spawn(server.serve(service_fn(|req: Request| async move {
/// #     Ok::<_, std::convert::Infallible>(req.into_payload())
/// # })));
/// let client = Client::builder().endpoint(addr).build();
/// let ping = Bytes::from_static(b"ping");
///
/// // Over the balancer, the client, or one connection (errors: `anet::Error`).
/// let mut balanced = ServiceBuilder::new()
///     .retry(RetryPolicy::default())
///     .service(client.balancer());
/// assert_eq!(balanced.ready().await?.call(ping.clone()).await?, "ping");
///
/// let mut whole = ServiceBuilder::new()
///     .retry(RetryPolicy::default().idempotent(true))
///     .service(client.clone());
/// assert_eq!(whole.ready().await?.call(ping.clone()).await?, "ping");
///
/// let connection = Connector::new().connect(addr).await?;
/// let mut single = ServiceBuilder::new()
///     .retry(RetryPolicy::default())
///     .service(connection);
/// assert_eq!(single.ready().await?.call(ping.clone()).await?, "ping");
///
/// // With a timeout per attempt (errors: `BoxError`), or over the retries.
/// let mut per_attempt = ServiceBuilder::new()
///     .retry(RetryPolicy::default())
///     .timeout(Duration::from_millis(500))
///     .service(client.balancer());
/// assert_eq!(per_attempt.ready().await?.call(ping.clone()).await?, "ping");
///
/// let mut overall = ServiceBuilder::new()
///     .timeout(Duration::from_secs(1))
///     .retry(RetryPolicy::default())
///     .service(client.balancer());
/// assert_eq!(overall.ready().await?.call(ping).await?, "ping");
/// # Ok(())
/// # }
/// ```
///
/// A [`Client`](super::Client) retries with its own policy already
/// ([`ClientBuilder::retry`](super::ClientBuilder::retry)); a `Retry` over it adds
/// attempts on top, each under a fresh deadline.
///
/// # Writing your own
///
/// Any `tower::retry::Policy` can sit on a [`Balancer`](super::Balancer); over a
/// boxed error, classify it with [`Error::from_boxed`] or by downcasting to
/// [`Error`]:
///
/// ```
/// use anet::{BoxError, Error, Kind};
/// use bytes::Bytes;
/// use std::future;
/// use tower::retry::Policy;
///
/// /// Retries anything unsent, up to `left` times.
/// #[derive(Clone)]
/// struct UnsentOnly { left: usize }
///
/// impl Policy<Bytes, Bytes, BoxError> for UnsentOnly {
///     type Future = future::Ready<()>;
///     fn retry(&mut self, _: &mut Bytes, result: &mut Result<Bytes, BoxError>) -> Option<Self::Future> {
///         let unsent = match result {
///             Err(e) => e.downcast_ref::<Error>().is_some_and(Error::is_unsent),
///             Ok(_) => false,
///         };
///         (unsent && self.left > 0).then(|| { self.left -= 1; future::ready(()) })
///     }
///     fn clone_request(&mut self, req: &Bytes) -> Option<Bytes> {
///         Some(req.clone())
///     }
/// }
/// ```
#[derive(Clone, Debug)]
#[must_use = "a policy does nothing until it is given to a client or a `Retry` layer"]
pub struct RetryPolicy {
    attempts_left: usize,
    idempotent: bool,
    budget: Arc<RetryBudget>,
}

impl RetryPolicy {
    /// At most `max_retries` retries per request, not idempotent, default budget.
    pub fn new(max_retries: usize) -> RetryPolicy {
        RetryPolicy {
            attempts_left: max_retries,
            idempotent: false,
            budget: Arc::new(RetryBudget::new(Duration::from_secs(10), 10, 0.2)),
        }
    }

    /// Declares every request idempotent, so failures after the request may have
    /// been written are retried too. Default: false.
    pub fn idempotent(mut self, idempotent: bool) -> RetryPolicy {
        self.idempotent = idempotent;
        self
    }

    /// Replaces the retry budget (shared by every clone of the policy).
    pub fn budget(mut self, budget: Arc<RetryBudget>) -> RetryPolicy {
        self.budget = budget;
        self
    }

    /// How many retries a request may have.
    pub(crate) fn max_retries(&self) -> usize {
        self.attempts_left
    }

    /// Whether it may resend a request that was written (declared idempotent):
    /// then a caller keeps a copy of each request for its retries.
    pub(crate) fn resends_written(&self) -> bool {
        self.idempotent && self.attempts_left > 0
    }

    /// Counts a success for the budget.
    pub(crate) fn deposit(&self) {
        self.budget.deposit();
    }

    /// Whether `error` may be retried now: retryable, and the budget allows.
    pub(crate) fn allows(&self, error: &Error) -> bool {
        self.is_retryable(error) && self.budget.withdraw()
    }

    /// Whether a request failing with `error` should be retried by this policy
    /// (attempts and budget aside).
    pub fn is_retryable(&self, error: &Error) -> bool {
        self.retries(error.kind(), error.is_unsent())
    }

    /// The rule, on an error's kind and whether its request was unsent. A
    /// request that may have reached the server is retried only when the caller
    /// declared it idempotent, whatever the kind (`Error::maybe_sent`).
    fn retries(&self, kind: Kind, unsent: bool) -> bool {
        match kind {
            // Unsent by default; a custom layer may say otherwise.
            Kind::NotSent | Kind::Connect => unsent || self.idempotent,
            // Maybe sent by default; a custom transport may say it was not.
            Kind::ConnectionLost | Kind::Protocol => unsent || self.idempotent,
            // The deadline spans every retry: only a new request could help.
            Kind::Timeout => self.idempotent,
            // A custom layer's failure: retried when it says the request was
            // never written.
            Kind::Other => unsent,
            // A retry cannot help these (or a kind added later).
            _ => false,
        }
    }

    /// The decision of [`Policy::retry`] once the error is classified.
    fn decide(&mut self, outcome: Result<(), Option<(Kind, bool)>>) -> Option<future::Ready<()>> {
        match outcome {
            Ok(()) => {
                self.budget.deposit();
                None
            }
            Err(class) => {
                let retryable = class.is_some_and(|(kind, unsent)| self.retries(kind, unsent));
                if retryable && self.attempts_left > 0 && self.budget.withdraw() {
                    self.attempts_left -= 1;
                    tracing::debug!(kind = ?class.map(|c| c.0), left = self.attempts_left, "retrying request");
                    Some(future::ready(()))
                } else {
                    None
                }
            }
        }
    }
}

impl Default for RetryPolicy {
    /// Two retries, not idempotent.
    fn default() -> Self {
        RetryPolicy::new(2)
    }
}

/// Over anet's own services ([`Balancer`](super::Balancer), [`Client`](super::Client),
/// [`Connection`](super::Connection)), whose error is an [`Error`], and over stacks
/// that box their errors (tower's `Timeout`, `Buffer`, `LoadShed`, ...), whose error
/// is a [`BoxError`](crate::BoxError): there an anet [`Error`] anywhere in the source chain is
/// classified as above, tower's `Elapsed` as [`Kind::Timeout`] and `Overloaded` as
/// [`Kind::Overloaded`]; any other error is not retried.
///
/// Any request type that is `Clone` (a retry sends a copy), so the policy also
/// sits above layers that change the request, such as a `map_request` from the
/// application's own type to `Bytes`. tower's `Retry` takes that copy before
/// the first attempt, for every request, retried or not: a request type that
/// is costly to clone pays it each time (`Bytes` only bumps a count).
///
/// Above a [`Client`](super::Client), each attempt is a new client call with a
/// deadline of its own: the whole retried call may take up to (retries + 1) ×
/// the client's deadline. Put a `timeout` above the `retry` to bound the whole.
impl<Req: Clone, Res, E: Classify> Policy<Req, Res, E> for RetryPolicy {
    type Future = future::Ready<()>;

    fn retry(&mut self, _request: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        self.decide(match result {
            Ok(_) => Ok(()),
            Err(error) => Err(error.classify()),
        })
    }

    fn clone_request(&mut self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }
}

/// The errors [`RetryPolicy`] can judge; sealed: implemented for
/// [`Error`](crate::Error) and [`BoxError`](crate::BoxError) only.
mod sealed {
    use crate::{BoxError, Error, Kind, error::classify};

    /// An error's kind and whether its request was unsent, if it can tell.
    pub trait Classify {
        /// `None`: not an error anet knows (never retried).
        fn classify(&self) -> Option<(Kind, bool)>;
    }

    impl Classify for Error {
        fn classify(&self) -> Option<(Kind, bool)> {
            Some((self.kind(), self.is_unsent()))
        }
    }

    impl Classify for BoxError {
        fn classify(&self) -> Option<(Kind, bool)> {
            classify(self.as_ref())
        }
    }
}

/// A retry budget that costs one relaxed counter increment per successful request
/// and reads the clock only when a retry is asked for.
///
/// Within each window of `ttl`, retries are allowed up to `min_per_sec · ttl`
/// plus `retry_ratio` times the successes of the current and previous window.
/// (tower's `TpsBudget` has the same intent but reads the clock on every deposit,
/// which showed in the request-path profile.)
#[derive(Debug)]
pub struct RetryBudget {
    ttl: Duration,
    reserve: u64,
    ratio: f64,
    /// Successes, counted per lane of threads (every request adds one).
    deposits: Striped,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    /// Deposits counted when the window started (the rest are this window's).
    deposits_at_start: u64,
    /// Deposits of the previous window.
    previous: u64,
    withdrawn: u64,
}

impl RetryBudget {
    /// Retries may add `retry_ratio` of the successful requests of the last `ttl`
    /// (two windows), plus `min_per_sec` per second.
    pub fn new(ttl: Duration, min_per_sec: u32, retry_ratio: f32) -> RetryBudget {
        let ttl = ttl.max(Duration::from_millis(100));
        RetryBudget {
            ttl,
            reserve: (f64::from(min_per_sec) * ttl.as_secs_f64()).ceil() as u64,
            ratio: f64::from(retry_ratio.max(0.0)),
            deposits: Striped::new(),
            window: Mutex::new(Window {
                started: Instant::now(),
                deposits_at_start: 0,
                previous: 0,
                withdrawn: 0,
            }),
        }
    }
}

impl Budget for RetryBudget {
    fn deposit(&self) {
        self.deposits.increment();
    }

    fn withdraw(&self) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let deposits = self.deposits.sum();
        let now = Instant::now();
        if now.duration_since(w.started) >= self.ttl {
            w.previous = deposits - w.deposits_at_start;
            w.deposits_at_start = deposits;
            w.started = now;
            w.withdrawn = 0;
        }
        let earned = (deposits - w.deposits_at_start) + w.previous;
        let allowed = self.reserve + (earned as f64 * self.ratio) as u64;
        if w.withdrawn < allowed {
            w.withdrawn += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn budget_allows_the_reserve_plus_a_share_of_successes_per_window() {
        let budget = RetryBudget::new(Duration::from_secs(1), 2, 0.5);
        assert!(budget.withdraw());
        assert!(budget.withdraw());
        assert!(!budget.withdraw(), "reserve of 2 spent");
        for _ in 0..10 {
            budget.deposit();
        }
        let extra = (0..10).filter(|_| budget.withdraw()).count();
        assert_eq!(extra, 5, "half of 10 successes");
        tokio::time::advance(Duration::from_secs(1)).await;
        // New window: the reserve again, plus half of the previous window's
        // successes.
        let next = (0..20).filter(|_| budget.withdraw()).count();
        assert_eq!(next, 2 + 5);
    }
}

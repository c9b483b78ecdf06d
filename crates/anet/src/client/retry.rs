//! The default retry policy: honest about what may have reached the server.

use std::{future, sync::Arc, time::Duration};

use bytes::Bytes;
use tower::retry::{
    Policy,
    budget::{Budget, TpsBudget},
};

use crate::{BoxError, Error, Kind};

/// Retries a request only when doing so cannot make the server see it twice —
/// unless the caller declares requests idempotent.
///
/// * Always retried (the request was never written): [`Kind::NotSent`],
///   [`Kind::Connect`].
/// * Retried only when [`idempotent`](RetryPolicy::idempotent): [`Kind::ConnectionLost`],
///   [`Kind::Protocol`] and [`Kind::Timeout`] (the request may have been executed).
/// * Never retried: everything else (a retry cannot help an `Unavailable` that
///   already waited, an `Overloaded`, an `InvalidRequest` or a `Closed`).
///
/// Retries draw on a [`TpsBudget`] (by default: retries may add 20% to the request
/// rate, plus 10 per second), so a failing backend is not hammered.
///
/// # Writing your own
///
/// Any `tower::retry::Policy<Bytes, Bytes, BoxError>` can sit on a
/// [`Balancer`](super::Balancer); classify the error with
/// [`Error::from_boxed`] or by downcasting to [`Error`]:
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
pub struct RetryPolicy {
    attempts_left: usize,
    idempotent: bool,
    budget: Arc<TpsBudget>,
}

impl RetryPolicy {
    /// At most `max_retries` retries per request, not idempotent, default budget.
    pub fn new(max_retries: usize) -> RetryPolicy {
        RetryPolicy {
            attempts_left: max_retries,
            idempotent: false,
            budget: Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2)),
        }
    }

    /// Declares every request idempotent, so failures after the request may have
    /// been written are retried too. Default: false.
    pub fn idempotent(mut self, idempotent: bool) -> RetryPolicy {
        self.idempotent = idempotent;
        self
    }

    /// Replaces the retry budget (shared by every clone of the policy).
    pub fn budget(mut self, budget: Arc<TpsBudget>) -> RetryPolicy {
        self.budget = budget;
        self
    }

    /// Whether a request failing with `error` should be retried by this policy
    /// (attempts and budget aside).
    pub fn is_retryable(&self, error: &Error) -> bool {
        match error.kind() {
            Kind::NotSent | Kind::Connect => true,
            Kind::ConnectionLost | Kind::Protocol | Kind::Timeout => self.idempotent,
            _ => false,
        }
    }
}

impl Default for RetryPolicy {
    /// Two retries, not idempotent.
    fn default() -> Self {
        RetryPolicy::new(2)
    }
}

impl Policy<Bytes, Bytes, BoxError> for RetryPolicy {
    type Future = future::Ready<()>;

    fn retry(
        &mut self,
        _request: &mut Bytes,
        result: &mut Result<Bytes, BoxError>,
    ) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                self.budget.deposit();
                None
            }
            Err(error) => {
                let retryable = error
                    .downcast_ref::<Error>()
                    .is_some_and(|e| self.is_retryable(e));
                if retryable && self.attempts_left > 0 && self.budget.withdraw() {
                    self.attempts_left -= 1;
                    tracing::debug!(error = %error, left = self.attempts_left, "retrying request");
                    Some(future::ready(()))
                } else {
                    None
                }
            }
        }
    }

    fn clone_request(&mut self, request: &Bytes) -> Option<Bytes> {
        Some(request.clone())
    }
}

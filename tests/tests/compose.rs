//! anet's pieces in a user's own tower stack: `RetryPolicy` directly over the
//! balancer, the client and one connection, with and without a timeout, and the
//! public error constructors that let a custom layer take part in honest retries.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    task::{Context, Poll},
    time::Duration,
};

use anet::{
    Error, Kind,
    client::{Client, Connector, RetryPolicy},
    server::Server,
};
use anet_tests::{RunningServer, echo, start_server};
use bytes::Bytes;
use tower::{Service, ServiceBuilder, ServiceExt};

async fn server() -> RunningServer {
    start_server(Server::builder(), echo()).await
}

/// An echo server and a client of it.
async fn echo_client() -> (RunningServer, Client) {
    let server = server().await;
    let client = Client::builder().endpoint(server.addr).build();
    (server, client)
}

/// A custom layer in front of an anet service: fails the first `failures` calls
/// with `error` (without calling the inner service) and counts every call.
#[derive(Clone)]
struct FailFirst<S> {
    inner: S,
    failures: usize,
    error: Error,
    calls: Arc<AtomicUsize>,
}

impl<S> FailFirst<S> {
    fn new(inner: S, failures: usize, error: Error) -> FailFirst<S> {
        FailFirst {
            inner,
            failures,
            error,
            calls: Arc::default(),
        }
    }
}

impl<S> Service<Bytes> for FailFirst<S>
where
    S: Service<Bytes, Response = Bytes, Error = Error>,
    S::Future: Send + 'static,
{
    type Response = Bytes;
    type Error = Error;
    type Future = futures_util::future::BoxFuture<'static, Result<Bytes, Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Bytes) -> Self::Future {
        let n = self.calls.fetch_add(1, SeqCst);
        if n < self.failures {
            let error = self.error.clone();
            return Box::pin(async move { Err(error) });
        }
        Box::pin(self.inner.call(request))
    }
}

/// Calls `svc` once with `payload`.
async fn call_once<S>(mut svc: S, payload: &'static [u8]) -> Result<Bytes, S::Error>
where
    S: Service<Bytes, Response = Bytes>,
{
    svc.ready().await?.call(Bytes::from_static(payload)).await
}

#[tokio::test]
async fn retry_policy_sits_directly_on_the_balancer_and_retries_an_unsent_failure() {
    let (_server, client) = echo_client().await;
    let unsent = Error::not_sent(Kind::Other, "circuit open");
    let failing = FailFirst::new(client.balancer(), 2, unsent);
    let calls = failing.calls.clone();
    let retry = ServiceBuilder::new().retry(RetryPolicy::new(2));
    assert_eq!(call_once(retry.service(failing), b"a").await.unwrap(), "a");
    assert_eq!(
        calls.load(SeqCst),
        3,
        "two unsent failures retried, then sent"
    );
}

#[tokio::test]
async fn retry_policy_does_not_retry_a_maybe_sent_failure_unless_idempotent() {
    let (_server, client) = echo_client().await;
    let lost = Error::maybe_sent(Kind::ConnectionLost, "reset after write");
    for (policy, calls_made, answered) in [
        (RetryPolicy::new(2), 1, false),
        (RetryPolicy::new(2).idempotent(true), 2, true),
    ] {
        let failing = FailFirst::new(client.clone(), 1, lost.clone());
        let calls = failing.calls.clone();
        let svc = ServiceBuilder::new().retry(policy).service(failing);
        let result = call_once(svc, b"b").await;
        assert_eq!(
            calls.load(SeqCst),
            calls_made,
            "retried only when idempotent"
        );
        match result {
            Ok(reply) => assert!(answered && reply == "b"),
            Err(e) => assert!(!answered && e.kind() == Kind::ConnectionLost),
        }
    }
}

#[tokio::test]
async fn retry_policy_classifies_boxed_errors_under_a_timeout_in_either_order() {
    let (_server, client) = echo_client().await;
    let unsent = || FailFirst::new(client.balancer(), 1, Error::new(Kind::NotSent));
    let timeout = Duration::from_secs(2);

    // Retry over Timeout: the policy sees a `BoxError` holding an anet `Error`.
    let failing = unsent();
    let calls = failing.calls.clone();
    let svc = ServiceBuilder::new()
        .retry(RetryPolicy::new(1))
        .timeout(timeout)
        .service(failing);
    assert_eq!(call_once(svc, b"c").await.unwrap(), "c");
    assert_eq!(calls.load(SeqCst), 2);

    // Timeout over Retry: the policy sees the anet `Error` itself.
    let failing = unsent();
    let calls = failing.calls.clone();
    let svc = ServiceBuilder::new()
        .timeout(timeout)
        .retry(RetryPolicy::new(1))
        .service(failing);
    assert_eq!(call_once(svc, b"d").await.unwrap(), "d");
    assert_eq!(calls.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn an_elapsed_attempt_is_retried_only_when_idempotent() {
    for (policy, attempts) in [
        (RetryPolicy::new(2), 1),
        (RetryPolicy::new(2).idempotent(true), 3),
    ] {
        // A service that never answers: every attempt ends in tower's `Elapsed`.
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let never = tower::service_fn(move |_: Bytes| {
            counted.fetch_add(1, SeqCst);
            std::future::pending::<Result<Bytes, Error>>()
        });
        let svc = ServiceBuilder::new()
            .retry(policy)
            .timeout(Duration::from_millis(10))
            .service(never);
        let err = call_once(svc, b"").await.unwrap_err();
        assert_eq!(Error::from_boxed(err).kind(), Kind::Timeout);
        assert_eq!(
            calls.load(SeqCst),
            attempts,
            "a timed-out request may have been sent: retried only when idempotent"
        );
    }
}

#[tokio::test]
async fn retry_policy_sits_directly_on_one_connection() {
    let server = server().await;
    let connection = Connector::new().connect(server.addr).await.unwrap();
    let svc = ServiceBuilder::new()
        .retry(RetryPolicy::default())
        .service(connection);
    assert_eq!(call_once(svc, b"e").await.unwrap(), "e");
}

/// Invariant 5 and `Error::maybe_sent`'s contract: an error that says its
/// request may have reached the server is retried only when the caller
/// declared the request idempotent, **whatever its kind** — also the kinds
/// that are unsent by default (`NotSent`, `Connect`).
#[test]
fn a_maybe_sent_error_of_any_kind_is_not_retried_unless_idempotent() {
    let policy = RetryPolicy::new(2);
    let retried: Vec<Kind> = Kind::all()
        .iter()
        .copied()
        .filter(|&kind| policy.is_retryable(&Error::maybe_sent(kind, "handed on")))
        .collect();
    assert!(
        retried.is_empty(),
        "maybe-sent errors retried without idempotency: {retried:?}"
    );
}

/// The same through `tower::retry::Retry`: a custom layer
/// that says its request may have been written (a proxy hop that forwarded
/// the request and then failed to reach the upstream) must not be called again
/// by a non-idempotent policy.
#[tokio::test]
async fn a_maybe_sent_connect_failure_from_a_layer_is_not_retried_unless_idempotent() {
    let (_server, client) = echo_client().await;
    let forwarded = Error::maybe_sent(Kind::Connect, "proxy forwarded it, upstream unreachable");
    let failing = FailFirst::new(client.balancer(), 1, forwarded);
    let calls = failing.calls.clone();
    let svc = ServiceBuilder::new()
        .retry(RetryPolicy::new(2))
        .service(failing);
    let result = call_once(svc, b"f").await;
    assert_eq!(
        calls.load(SeqCst),
        1,
        "a maybe-sent request was sent again by a non-idempotent policy"
    );
    assert_eq!(result.unwrap_err().kind(), Kind::Connect);
}

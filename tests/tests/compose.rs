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

#[tokio::test]
async fn retry_policy_sits_directly_on_the_balancer_and_retries_an_unsent_failure() {
    let server = server().await;
    let client = Client::builder().endpoint(server.addr).build();
    let failing = FailFirst::new(
        client.balancer(),
        2,
        Error::not_sent(Kind::Other, "circuit open"),
    );
    let calls = failing.calls.clone();
    let mut svc = ServiceBuilder::new()
        .retry(RetryPolicy::new(2))
        .service(failing);
    let reply = svc
        .ready()
        .await
        .unwrap()
        .call(Bytes::from_static(b"a"))
        .await;
    assert_eq!(reply.unwrap(), "a");
    assert_eq!(
        calls.load(SeqCst),
        3,
        "two unsent failures retried, then sent"
    );
}

#[tokio::test]
async fn retry_policy_does_not_retry_a_maybe_sent_failure_unless_idempotent() {
    let server = server().await;
    let client = Client::builder().endpoint(server.addr).build();
    let lost = Error::maybe_sent(Kind::ConnectionLost, "reset after write");

    let failing = FailFirst::new(client.clone(), 1, lost.clone());
    let calls = failing.calls.clone();
    let mut svc = ServiceBuilder::new()
        .retry(RetryPolicy::new(2))
        .service(failing);
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Bytes::from_static(b"a"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Kind::ConnectionLost);
    assert_eq!(calls.load(SeqCst), 1, "a maybe-sent request is not retried");

    let failing = FailFirst::new(client, 1, lost);
    let calls = failing.calls.clone();
    let mut svc = ServiceBuilder::new()
        .retry(RetryPolicy::new(2).idempotent(true))
        .service(failing);
    let reply = svc
        .ready()
        .await
        .unwrap()
        .call(Bytes::from_static(b"b"))
        .await;
    assert_eq!(reply.unwrap(), "b");
    assert_eq!(calls.load(SeqCst), 2, "idempotent: retried once");
}

#[tokio::test]
async fn retry_policy_classifies_boxed_errors_under_a_timeout_in_either_order() {
    let server = server().await;
    let client = Client::builder().endpoint(server.addr).build();

    // Retry over Timeout: the policy sees a `BoxError` holding an anet `Error`.
    let failing = FailFirst::new(
        client.balancer(),
        1,
        Error::not_sent(Kind::NotSent, "not written"),
    );
    let calls = failing.calls.clone();
    let mut svc = ServiceBuilder::new()
        .retry(RetryPolicy::new(1))
        .timeout(Duration::from_secs(2))
        .service(failing);
    let reply = svc
        .ready()
        .await
        .unwrap()
        .call(Bytes::from_static(b"c"))
        .await;
    assert_eq!(reply.unwrap(), "c");
    assert_eq!(calls.load(SeqCst), 2);

    // Timeout over Retry.
    let failing = FailFirst::new(client.balancer(), 1, Error::new(Kind::NotSent));
    let calls = failing.calls.clone();
    let mut svc = ServiceBuilder::new()
        .timeout(Duration::from_secs(2))
        .retry(RetryPolicy::new(1))
        .service(failing);
    let reply = svc
        .ready()
        .await
        .unwrap()
        .call(Bytes::from_static(b"d"))
        .await;
    assert_eq!(reply.unwrap(), "d");
    assert_eq!(calls.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn an_elapsed_attempt_is_retried_only_when_idempotent() {
    // A service that never answers: every attempt ends in tower's `Elapsed`.
    let never = tower::service_fn(|_: Bytes| std::future::pending::<Result<Bytes, Error>>());
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = {
        let calls = calls.clone();
        tower::util::MapRequestLayer::new(move |req: Bytes| {
            calls.fetch_add(1, SeqCst);
            req
        })
    };
    let mut svc = ServiceBuilder::new()
        .retry(RetryPolicy::new(2))
        .timeout(Duration::from_millis(10))
        .layer(counted.clone())
        .service(never);
    let err = svc
        .ready()
        .await
        .unwrap()
        .call(Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(Error::from_boxed(err).kind(), Kind::Timeout);
    assert_eq!(
        calls.load(SeqCst),
        1,
        "a timed-out request may have been sent"
    );

    calls.store(0, SeqCst);
    let mut svc = ServiceBuilder::new()
        .retry(RetryPolicy::new(2).idempotent(true))
        .timeout(Duration::from_millis(10))
        .layer(counted)
        .service(never);
    let _ = svc
        .ready()
        .await
        .unwrap()
        .call(Bytes::new())
        .await
        .unwrap_err();
    assert_eq!(calls.load(SeqCst), 3, "idempotent: two retries");
}

#[tokio::test]
async fn retry_policy_sits_directly_on_one_connection() {
    let server = server().await;
    let connection = Connector::new().connect(server.addr).await.unwrap();
    let mut svc = ServiceBuilder::new()
        .retry(RetryPolicy::default())
        .service(connection);
    let reply = svc
        .ready()
        .await
        .unwrap()
        .call(Bytes::from_static(b"e"))
        .await;
    assert_eq!(reply.unwrap(), "e");
}

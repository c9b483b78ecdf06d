//! A rate limit shared by every clone of a service.
//!
//! tower's `RateLimit` keeps its budget in each service value, so every clone of a
//! cloned-per-request client would get a fresh budget. This one keeps a token
//! bucket behind an `Arc`, shared by all clones.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::{Instant, Sleep};
use tower::{Layer, Service};

use crate::time::later;

/// A token bucket: `num` requests per `per`, with bursts up to `num`.
#[derive(Debug)]
struct Bucket {
    capacity: f64,
    /// Tokens per second.
    rate: f64,
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    /// Takes a token, or says when the next one will be there.
    fn take(&mut self, now: Instant) -> Result<(), Instant> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            // A rate of `num` per `Duration::MAX` waits longer than a `Duration`
            // holds: saturate (about thirty years) instead of panicking.
            let wait = Duration::try_from_secs_f64((1.0 - self.tokens) / self.rate)
                .unwrap_or(Duration::MAX);
            Err(later(now, wait))
        }
    }
}

/// Applies [`RateLimit`] to services; every service it makes (and every clone of
/// them) shares one budget.
#[derive(Clone)]
pub struct RateLimitLayer {
    bucket: Arc<Mutex<Bucket>>,
}

impl RateLimitLayer {
    /// At most `num` requests per `per`, in bursts of at most `num`.
    ///
    /// # Panics
    ///
    /// When `num` is 0 or `per` is zero.
    pub fn new(num: u64, per: Duration) -> RateLimitLayer {
        assert!(num > 0 && !per.is_zero(), "rate must be positive");
        RateLimitLayer {
            bucket: Arc::new(Mutex::new(Bucket {
                capacity: num as f64,
                rate: num as f64 / per.as_secs_f64(),
                tokens: num as f64,
                refilled: Instant::now(),
            })),
        }
    }
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer").finish_non_exhaustive()
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> RateLimit<S> {
        RateLimit {
            inner,
            bucket: self.bucket.clone(),
            sleep: None,
            reserved: false,
        }
    }
}

/// Holds requests back (in `poll_ready`) beyond a rate shared by all clones.
///
/// tower's `RateLimit` keeps its budget in each service value, so every clone of
/// a cloned-per-request client would get a fresh budget; this one keeps a token
/// bucket behind an `Arc`, shared by all clones (made by [`RateLimitLayer`]).
pub struct RateLimit<S> {
    inner: S,
    bucket: Arc<Mutex<Bucket>>,
    /// Set only while this clone waits for a token.
    sleep: Option<Pin<Box<Sleep>>>,
    /// A token is taken for the next `call`.
    reserved: bool,
}

impl<S: Clone> Clone for RateLimit<S> {
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            bucket: self.bucket.clone(),
            sleep: None,
            reserved: false,
        }
    }
}

impl<S> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("reserved", &self.reserved)
            .finish_non_exhaustive()
    }
}

impl<S> RateLimit<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, unwrapped.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, Request> Service<Request> for RateLimit<S>
where
    S: Service<Request>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        while !self.reserved {
            if let Some(sleep) = &mut self.sleep {
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
            let taken = self
                .bucket
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(Instant::now());
            match taken {
                Ok(()) => {
                    self.reserved = true;
                    self.sleep = None;
                }
                Err(at) => match &mut self.sleep {
                    Some(sleep) => sleep.as_mut().reset(at),
                    None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
                },
            }
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> S::Future {
        assert!(
            self.reserved,
            "RateLimit::call without poll_ready reporting ready"
        );
        self.reserved = false;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::{ServiceExt, service_fn};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_rate_per_duration_max_waits_instead_of_panicking() {
        let layer = RateLimitLayer::new(1, Duration::MAX);
        let mut service = layer.layer(service_fn(|x: u32| async move { Ok::<_, Infallible>(x) }));
        assert_eq!(service.ready().await.expect("ready").call(1).await, Ok(1));
        let second = tokio::time::timeout(Duration::from_secs(3600), service.ready()).await;
        assert!(second.is_err(), "the second request waits for its token");
    }

    #[tokio::test(start_paused = true)]
    async fn clones_share_one_budget() {
        let layer = RateLimitLayer::new(10, Duration::from_secs(1));
        let service = layer.layer(service_fn(|x: u32| async move { Ok::<_, Infallible>(x) }));
        let started = Instant::now();
        // 30 calls, each through a fresh clone: a burst of 10, then 10 per second.
        for i in 0..30 {
            assert_eq!(service.clone().oneshot(i).await, Ok(i));
        }
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(1990), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(2100), "{elapsed:?}");
    }
}

//! Exponential backoff with full jitter, for reconnecting and probing endpoints.

use std::time::Duration;

/// Exponential backoff settings: the `n`-th consecutive failure waits a random
/// time in `[base·2ⁿ / 2, base·2ⁿ]`, capped at `max`. `Copy`; setters take and
/// return it by value.
///
/// ```
/// use std::time::Duration;
/// use anet::client::Backoff;
///
/// let backoff = Backoff::new()
///     .base(Duration::from_millis(50))
///     .max(Duration::from_secs(2));
/// assert!(backoff.delay(1) <= Duration::from_millis(50));
/// assert!(backoff.delay(30) <= Duration::from_secs(2));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a configuration does nothing until it is used"]
pub struct Backoff {
    /// The wait after the first failure (upper bound).
    base: Duration,
    /// The longest wait.
    max: Duration,
}

impl Backoff {
    /// 100 ms doubling up to 10 s.
    pub const fn new() -> Backoff {
        Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }

    /// The wait after the first failure (the upper bound of its jitter); each
    /// further failure doubles it. Default: 100 ms.
    pub const fn base(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// The longest wait. Default: 10 s.
    pub const fn max(mut self, max: Duration) -> Self {
        self.max = max;
        self
    }

    /// The wait after `failures` consecutive failures (1 for the first), jittered
    /// so that many clients do not reconnect in lockstep.
    #[must_use]
    pub fn delay(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(30);
        let ceiling = self.base.saturating_mul(1 << exp).min(self.max);
        let half = ceiling / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(fastrand::u64(0..=nanos))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_within_jitter_bounds_and_cap() {
        let b = Backoff::new()
            .base(Duration::from_millis(100))
            .max(Duration::from_secs(1));
        for _ in 0..100 {
            let d1 = b.delay(1);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100));
            let d3 = b.delay(3);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400));
            let d20 = b.delay(20);
            assert!(d20 >= Duration::from_millis(500) && d20 <= Duration::from_secs(1));
        }
        assert!(b.delay(u32::MAX) <= Duration::from_secs(1));
    }
}

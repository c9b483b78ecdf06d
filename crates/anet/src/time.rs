//! Instants computed from configured durations, which may be as large as
//! `Duration::MAX` ("no limit"): adding those to the clock must not panic.

use std::time::Duration;

use tokio::time::Instant;

/// `at + duration`, or about thirty years after `at` when that overflows (the
/// same horizon tokio uses for a sleep without end).
pub(crate) fn later(at: Instant, duration: Duration) -> Instant {
    at.checked_add(duration)
        .unwrap_or_else(|| at + Duration::from_secs(86_400 * 365 * 30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saturates_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(
            later(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
        assert!(later(now, Duration::MAX) > now + Duration::from_secs(86_400 * 365));
    }
}

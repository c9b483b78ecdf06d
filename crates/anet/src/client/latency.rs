//! Latency-aware load: a peak-sensitive moving average of each connection's
//! response time, combined with its requests in flight.
//!
//! Requests in flight are a good signal for a backend that queues, but a
//! backend that is merely slow (a degraded HSM, a switch in a GC pause) keeps
//! few requests in flight and would still be picked; every pick then parks a
//! caller for its whole latency. So, as Finagle, Linkerd and tower's
//! `PeakEwma` do, the balancer compares `estimate × (in flight + 1)`:
//!
//! * **peak-sensitive**: a response slower than the estimate sets it at once;
//!   faster ones pull it down as a moving average in which the old estimate
//!   weighs `exp(-elapsed / decay - answers / 16)`: by time, as tower's, and
//!   by the answers since, so that a busy endpoint forgets a peak (a stall of
//!   the client's own threads) within a few dozen answers;
//! * **decaying**: with no response at all, the estimate decays towards zero
//!   with the same time constant, so a backend that was slow is tried again
//!   once its estimate falls below what the others cost, and gets its traffic
//!   back when it answers fast;
//! * **failures count**: a request that times out, or a reply the
//!   [classifier](super::ClientBuilder::classify) calls a failure, counts as a
//!   response that took at least the [failure
//!   penalty](PeakEwmaConfig::failure_penalty) and twice the estimate its
//!   answers gave, so a backend that fails fast does not look fast (failures
//!   in a row do not compound: a brief outage of every backend must not
//!   leave some of them without traffic for minutes after it);
//! * **neutral start**: a connection with no estimate yet (new, or replacing
//!   one that was lost) is compared by requests in flight alone against the
//!   other candidate (as if it had that one's estimate): it gets its fair
//!   share at once, neither starved by a guessed default that is too high nor
//!   flooded by one that is too low.
//!
//! The cost on the request path is one more atomic load per connection of the
//! two candidates. The connection's driver (the estimate's only writer) stamps
//! each request it writes with the clock reading of its pass and folds the
//! responses of a pass into the estimate once, so no clock is read per
//! request and no lock is taken.

use std::{
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use tokio::time::Instant;

use crate::time::later;

/// How the balancer measures an endpoint's load, to choose the less loaded of
/// its two random candidates: see [`ClientBuilder::balance_load`].
///
/// [`ClientBuilder::balance_load`]: super::ClientBuilder::balance_load
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum LoadMeasure {
    /// Window units in use (requests in flight and quarantined tags), as
    /// tower's `PendingRequests`.
    InFlight,
    /// A peak-sensitive moving average of the response time, times the
    /// requests in flight plus one, as tower's `PeakEwma`: see
    /// [`PeakEwmaConfig`]. The default.
    PeakEwma(PeakEwmaConfig),
}

impl LoadMeasure {
    /// [`LoadMeasure::PeakEwma`] with the defaults of [`PeakEwmaConfig::new`].
    pub const fn peak_ewma() -> LoadMeasure {
        LoadMeasure::PeakEwma(PeakEwmaConfig::new())
    }
}

impl Default for LoadMeasure {
    /// Peak-EWMA with its defaults (it wins the `anet-bench` balancing
    /// scenario, see the README).
    fn default() -> Self {
        LoadMeasure::peak_ewma()
    }
}

/// Settings of the peak-EWMA load (see [`LoadMeasure::PeakEwma`]). `Copy`;
/// setters take and return it by value.
///
/// ```
/// use std::time::Duration;
/// use anet::client::{Client, LoadMeasure, PeakEwmaConfig};
///
/// let measure = LoadMeasure::PeakEwma(
///     PeakEwmaConfig::new()
///         .decay(Duration::from_secs(5))
///         .failure_penalty(Duration::from_millis(250)),
/// );
/// let builder = Client::builder().balance_load(measure);
/// # let _ = builder;
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[must_use = "a configuration does nothing until it is used"]
pub struct PeakEwmaConfig {
    pub(crate) decay: Duration,
    pub(crate) failure_penalty: Duration,
}

impl PeakEwmaConfig {
    /// The defaults listed on each setter.
    pub const fn new() -> PeakEwmaConfig {
        PeakEwmaConfig {
            decay: Duration::from_secs(10),
            failure_penalty: Duration::from_millis(100),
        }
    }

    /// The time constant of the moving average: the old estimate weighs
    /// `exp(-elapsed / decay)` of the time since its last update (times
    /// `exp(-answers / 16)` of the answers since), and an estimate no response
    /// updates falls by `exp(-elapsed / decay)`. Shorter
    /// forgets a slow spell sooner (and tries a slow backend again sooner);
    /// longer smooths more. At least 1 ms. Default: 10 s (as Finagle and
    /// Linkerd).
    pub const fn decay(mut self, decay: Duration) -> Self {
        self.decay = if decay.as_nanos() < 1_000_000 {
            Duration::from_millis(1)
        } else {
            decay
        };
        self
    }

    /// What a failed request (a timeout, or a reply the classifier calls a
    /// failure) counts as: a response that took this long, or twice the
    /// estimate its answers gave when that is more (failures in a row do not
    /// compound). Default: 100 ms.
    pub const fn failure_penalty(mut self, penalty: Duration) -> Self {
        self.failure_penalty = penalty;
        self
    }
}

impl Default for PeakEwmaConfig {
    fn default() -> Self {
        PeakEwmaConfig::new()
    }
}

/// The largest estimate, in nanoseconds (a minute): it must stay a number
/// that decays back in finite time.
const MAX_ESTIMATE_NS: f64 = 60e9;

/// Responses that shrink the old estimate's weight by `e`, beside the time
/// decay. Time alone (tower's `PeakEwma`) keeps a busy endpoint's peak for as
/// long as an idle one's, whatever it has answered since: a stall of the
/// client's own threads (a descheduled runtime worker) then makes every busy
/// endpoint look slow for seconds, and an idle slow one look cheap. Measured
/// on a loaded 2-core machine: estimates of 0.2 ms backends at 125-227 ms
/// after 2 s. With the answers counted too, a busy endpoint forgets a peak
/// within a few dozen fast answers; one without traffic keeps its estimate
/// until the time decay brings it down.
const RESPONSES_PER_E: f64 = 16.0;

/// Below this (in nanoseconds) an idle estimate stops decaying: it is already
/// less than any loopback round trip.
const DECAY_FLOOR_NS: f64 = 1_000.0;

/// An endpoint's load as the balancer compares it (see [`Cost::below`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Cost {
    /// Window units in use over its live connections.
    pub(crate) in_flight: usize,
    /// The highest response-time estimate of its live connections, in
    /// nanoseconds; 0 when none has one (new, or the measure is in-flight).
    pub(crate) rtt_ns: u64,
}

impl Cost {
    /// Adds a connection with `in_flight` units in use and estimate `rtt_ns`.
    #[inline]
    pub(crate) fn add(&mut self, in_flight: usize, rtt_ns: u64) {
        self.in_flight += in_flight;
        self.rtt_ns = self.rtt_ns.max(rtt_ns);
    }

    /// Whether `self` is less loaded than `other`: `estimate × (in flight + 1)`
    /// when both have an estimate; requests in flight alone when either has
    /// none (a new endpoint is taken to cost what the other does, so it gets
    /// its fair share at once).
    #[inline]
    pub(crate) fn below(&self, other: &Cost) -> bool {
        if self.rtt_ns == 0 || other.rtt_ns == 0 {
            return self.in_flight < other.in_flight;
        }
        let weigh = |c: &Cost| u128::from(c.rtt_ns) * (c.in_flight as u128 + 1);
        weigh(self) < weigh(other)
    }
}

/// One connection's peak-EWMA estimate, kept by its driver (the only writer)
/// and published in an atomic for the balancer.
#[derive(Debug)]
pub(crate) struct Estimator {
    /// The decay time constant, in nanoseconds.
    decay_ns: f64,
    /// What a failure counts as at least, in nanoseconds.
    penalty_ns: f64,
    /// How often an estimate no response updates is decayed.
    tick: Duration,
    /// The clock all stamps count from (nanoseconds since it).
    anchor: Instant,
    /// The estimate in nanoseconds; 0 until the first response or failure.
    estimate_ns: f64,
    /// The same moving average of the answers alone, without the failures
    /// (0 before the first answer): a failure counts as twice this, not twice
    /// an estimate earlier failures raised, so that failures do not compound.
    answered_ns: f64,
    /// When the estimate was last updated (nanoseconds since `anchor`).
    updated_ns: u64,
    /// When the estimate is next decayed, while it is above the floor.
    next_decay: Option<Instant>,
    /// The responses and failures of this pass, folded in once.
    pass: Pass,
}

/// Responses and failures seen in one driver pass: the response times follow
/// from their send stamps and the pass's one clock reading.
#[derive(Debug, Default)]
struct Pass {
    answered: u64,
    /// Sum of the send stamps of the answered requests.
    sent_sum: u128,
    /// The earliest send stamp: the slowest response of the pass.
    sent_min: u64,
    failed: u64,
}

impl Estimator {
    pub(crate) fn new(config: PeakEwmaConfig, anchor: Instant) -> Estimator {
        let decay_ns = duration_ns(config.decay).max(1.0);
        Estimator {
            decay_ns,
            penalty_ns: duration_ns(config.failure_penalty),
            tick: (config.decay / 8).max(Duration::from_millis(1)),
            anchor,
            estimate_ns: 0.0,
            answered_ns: 0.0,
            updated_ns: 0,
            next_decay: None,
            pass: Pass::default(),
        }
    }

    /// The stamp of a request written at `now` (the driver stamps with
    /// [`since`] from the anchor it gave the estimator).
    #[cfg(test)]
    pub(crate) fn stamp(&self, now: Instant) -> u64 {
        since(self.anchor, now)
    }

    /// A request sent at stamp `sent` was answered in this pass.
    #[inline]
    pub(crate) fn answered(&mut self, sent: u64) {
        let pass = &mut self.pass;
        pass.sent_min = if pass.answered == 0 {
            sent
        } else {
            pass.sent_min.min(sent)
        };
        pass.answered += 1;
        pass.sent_sum += u128::from(sent);
    }

    /// A request failed in this pass (timed out, or its reply was classified
    /// as a failure).
    #[inline]
    pub(crate) fn failed(&mut self) {
        self.pass.failed += 1;
    }

    /// Whether this pass saw responses or failures to fold in.
    #[inline]
    pub(crate) fn has_pass(&self) -> bool {
        self.pass.answered != 0 || self.pass.failed != 0
    }

    /// Folds this pass's responses and failures in at `now` and publishes the
    /// estimate.
    pub(crate) fn fold(&mut self, now: Instant, published: &AtomicU64) {
        let pass = std::mem::take(&mut self.pass);
        let now_ns = since(self.anchor, now);
        let weight = self.weight(now_ns, pass.answered);
        let mut peak = 0.0_f64;
        let mut mean = None;
        if pass.answered != 0 {
            peak = now_ns.saturating_sub(pass.sent_min) as f64;
            let mean_sent = (pass.sent_sum / u128::from(pass.answered)) as u64;
            let m = now_ns.saturating_sub(mean_sent) as f64;
            mean = Some(m);
            self.answered_ns = blend(self.answered_ns, peak, m, weight).clamp(1.0, MAX_ESTIMATE_NS);
        }
        if pass.failed != 0 {
            peak = peak.max(self.penalty_ns).max(2.0 * self.answered_ns);
        }
        let next = blend(self.estimate_ns, peak, mean.unwrap_or(peak), weight);
        self.set(next, now_ns, now, published);
    }

    /// When the estimate is next decayed (`None` while it is at the floor or
    /// has not been set).
    #[inline]
    pub(crate) fn next_decay(&self) -> Option<Instant> {
        self.next_decay
    }

    /// Decays the estimate if no response has updated it for a tick;
    /// otherwise schedules the next decay a tick after that update.
    pub(crate) fn decay(&mut self, now: Instant, published: &AtomicU64) {
        let now_ns = since(self.anchor, now);
        let tick_ns = duration_ns(self.tick) as u64;
        if now_ns.saturating_sub(self.updated_ns) < tick_ns {
            let at = self.anchor + Duration::from_nanos(self.updated_ns);
            self.next_decay = Some(later(at, self.tick));
            return;
        }
        let weight = self.weight(now_ns, 0);
        let next = self.estimate_ns * weight;
        self.answered_ns *= weight;
        self.next_decay = None;
        self.set(next, now_ns, now, published);
    }

    /// The weight of the old estimate after the time since its update and
    /// `responses` more answers: `exp(-elapsed / decay - responses / 16)`.
    #[inline]
    fn weight(&self, now_ns: u64, responses: u64) -> f64 {
        let elapsed = now_ns.saturating_sub(self.updated_ns) as f64;
        (-elapsed / self.decay_ns - responses as f64 / RESPONSES_PER_E).exp()
    }

    fn set(&mut self, estimate: f64, now_ns: u64, now: Instant, published: &AtomicU64) {
        // Never 0 once set: 0 means "no estimate yet" to the balancer.
        self.estimate_ns = estimate.clamp(1.0, MAX_ESTIMATE_NS);
        self.updated_ns = now_ns;
        // A decay already scheduled stays (it moves itself on when it finds a
        // recent update), so the driver's timer is not reset on every pass.
        self.next_decay = if self.estimate_ns > DECAY_FLOOR_NS {
            self.next_decay.or_else(|| Some(later(now, self.tick)))
        } else {
            None
        };
        published.store(self.estimate_ns as u64, Relaxed);
    }
}

/// The peak-sensitive average: `old` (0: none yet) becomes `peak` when that
/// is higher (or the pass's `mean` when that is, with no estimate yet), and
/// otherwise moves towards `mean` by `1 - weight`.
#[inline]
fn blend(old: f64, peak: f64, mean: f64, weight: f64) -> f64 {
    if old == 0.0 || peak > old {
        peak.max(mean)
    } else {
        old * weight + mean * (1.0 - weight)
    }
}

/// Nanoseconds from `anchor` to `now` (0 before it).
#[inline]
pub(crate) fn since(anchor: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(anchor).as_nanos()).unwrap_or(u64::MAX)
}

fn duration_ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn estimator(decay: Duration) -> (Estimator, Instant, AtomicU64) {
        let anchor = Instant::now();
        let config = PeakEwmaConfig::new().decay(decay);
        (Estimator::new(config, anchor), anchor, AtomicU64::new(0))
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_response_sets_the_estimate_at_once() {
        let (mut e, anchor, out) = estimator(Duration::from_secs(10));
        e.answered(e.stamp(anchor));
        e.fold(anchor + Duration::from_millis(1), &out);
        assert_eq!(out.load(Relaxed), MS);
        e.answered(e.stamp(anchor + Duration::from_millis(1)));
        e.fold(anchor + Duration::from_millis(51), &out);
        assert_eq!(out.load(Relaxed), 50 * MS, "a peak is taken whole");
    }

    #[tokio::test(start_paused = true)]
    async fn fast_responses_pull_the_estimate_down_with_time() {
        let (mut e, anchor, out) = estimator(Duration::from_secs(1));
        e.answered(e.stamp(anchor));
        e.fold(anchor + Duration::from_millis(50), &out);
        // One fast response a second later: weight exp(-1 - 1/16) on the
        // old 50 ms.
        let t = anchor + Duration::from_millis(1050);
        e.answered(e.stamp(t - Duration::from_millis(1)));
        e.fold(t, &out);
        let w = (-1.0_f64 - 1.0 / 16.0).exp();
        let expected = 50.0 * w + 1.0 * (1.0 - w);
        let got = out.load(Relaxed) as f64 / MS as f64;
        assert!((got - expected).abs() < 0.01, "{got} vs {expected}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_endpoint_forgets_a_peak_within_a_few_dozen_answers() {
        let (mut e, anchor, out) = estimator(Duration::from_secs(10));
        // A 200 ms stall, then 64 answers of 0.2 ms within the next 10 ms.
        e.answered(e.stamp(anchor));
        e.fold(anchor + Duration::from_millis(200), &out);
        for i in 0..8 {
            let t = anchor + Duration::from_millis(201 + i);
            for _ in 0..8 {
                e.answered(e.stamp(t - Duration::from_micros(200)));
            }
            e.fold(t, &out);
        }
        let got = out.load(Relaxed) as f64 / MS as f64;
        assert!(got < 0.2 + 200.0 * (-4.0_f64).exp(), "still {got} ms");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_estimate_decays_by_the_time_elapsed() {
        let (mut e, anchor, out) = estimator(Duration::from_secs(1));
        e.answered(e.stamp(anchor));
        e.fold(anchor + Duration::from_millis(40), &out);
        let due = e.next_decay().expect("a decay is scheduled");
        assert_eq!(due, anchor + Duration::from_millis(40 + 125));
        let t = anchor + Duration::from_millis(40 + 2000);
        e.decay(t, &out);
        let expected = 40.0 * (-2.0_f64).exp();
        let got = out.load(Relaxed) as f64 / MS as f64;
        assert!((got - expected).abs() < 0.01, "{got} vs {expected}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_counts_as_at_least_the_penalty_and_twice_the_estimate() {
        let (mut e, anchor, out) = estimator(Duration::from_secs(10));
        e.failed();
        e.fold(anchor, &out);
        assert_eq!(out.load(Relaxed), 100 * MS, "a fast failure is not fast");
        e.failed();
        e.fold(anchor + Duration::from_millis(1), &out);
        assert_eq!(
            out.load(Relaxed),
            100 * MS,
            "failures in a row do not compound"
        );
        // Answers of 80 ms: a failure then counts as 160 ms.
        let (mut e, anchor, out) = estimator(Duration::from_secs(10));
        let t = anchor + Duration::from_millis(80);
        e.answered(e.stamp(t - Duration::from_millis(80)));
        e.fold(t, &out);
        assert_eq!(out.load(Relaxed), 80 * MS);
        for i in 1..=3 {
            e.failed();
            e.fold(t + Duration::from_millis(i), &out);
            assert_eq!(out.load(Relaxed), 160 * MS, "failure {i}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failures_between_answers_do_not_compound() {
        // Every other pass fails; the answers between take 5 ms. Each failure
        // counts as the 100 ms penalty (twice 5 ms is less), however many
        // come in turn: the penalty's own trace in the estimate must not be
        // doubled by the next failure.
        let (mut e, anchor, out) = estimator(Duration::from_secs(10));
        let mut t = anchor;
        for i in 0..40 {
            t += Duration::from_millis(5);
            if i % 2 == 0 {
                e.failed();
            } else {
                e.answered(e.stamp(t - Duration::from_millis(5)));
            }
            e.fold(t, &out);
            let got = out.load(Relaxed);
            assert!(got <= 100 * MS, "pass {i}: {} ms", got / MS);
        }
    }

    #[test]
    fn an_endpoint_without_an_estimate_is_compared_by_in_flight_alone() {
        let new = Cost {
            in_flight: 3,
            rtt_ns: 0,
        };
        let slow = Cost {
            in_flight: 4,
            rtt_ns: 50 * MS,
        };
        let fast = Cost {
            in_flight: 20,
            rtt_ns: MS / 10,
        };
        assert!(new.below(&slow));
        assert!(!slow.below(&new));
        assert!(fast.below(&slow), "20 in flight at 0.1 ms beat 4 at 50 ms");
        assert!(!new.below(&Cost {
            in_flight: 3,
            ..fast
        }));
    }
}

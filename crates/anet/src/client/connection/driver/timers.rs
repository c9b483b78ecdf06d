//! The driver's clock and its one timer: the abandoned-request sweep and
//! whichever deadline comes first (request deadlines, quarantine expiry, the
//! close grace, a read stall).

use std::{future::Future, pin::Pin, task::Context, time::Duration};

use tokio::time::{Instant, Sleep};

use crate::time::later;

/// Bounds on how often waiting requests are checked for abandonment (a quarter
/// of the quarantine in between).
const MIN_SWEEP: Duration = Duration::from_millis(1);
const MAX_SWEEP: Duration = Duration::from_secs(1);

/// One `Sleep` for every deadline of the connection, and the clock read once
/// per pass.
pub(super) struct Timers {
    /// The one timer, set to the earliest deadline.
    timer: Pin<Box<Sleep>>,
    /// What `timer` is set to.
    armed: Option<Instant>,
    /// When waiting requests are next checked for abandonment (only while
    /// some are waiting).
    next_sweep: Option<Instant>,
    /// How often waiting requests are checked for abandonment.
    sweep_every: Duration,
    /// The clock read once per pass, when a deadline needs it.
    now: Option<Instant>,
    /// This pass's instant for a relative deadline (a timeout, the same for
    /// every request of a client): one addition per pass, not per request.
    after: Option<(Duration, Instant)>,
    /// This pass's latency stamp (the same for every request it writes).
    stamp: Option<u64>,
}

impl Timers {
    /// Timers for a connection whose abandoned requests are quarantined for
    /// `quarantine`.
    pub(super) fn new(quarantine: Duration) -> Timers {
        Timers {
            timer: Box::pin(tokio::time::sleep_until(Instant::now())),
            armed: None,
            next_sweep: None,
            sweep_every: (quarantine / 4).clamp(MIN_SWEEP, MAX_SWEEP),
            now: None,
            after: None,
            stamp: None,
        }
    }

    /// Forgets the clock reading of the last pass.
    #[inline]
    pub(super) fn new_pass(&mut self) {
        self.now = None;
        self.after = None;
        self.stamp = None;
    }

    /// The time of this pass, read at most once per pass.
    #[inline]
    pub(super) fn clock(&mut self) -> Instant {
        *self.now.get_or_insert_with(Instant::now)
    }

    /// The instant `timeout` after this pass's clock.
    #[inline]
    pub(super) fn after(&mut self, timeout: Duration) -> Instant {
        match self.after {
            Some((of, at)) if of == timeout => at,
            _ => {
                let at = later(self.clock(), timeout);
                self.after = Some((timeout, at));
                at
            }
        }
    }

    /// This pass's latency stamp, made by `make` from the pass's clock once.
    #[inline]
    pub(super) fn stamp(&mut self, make: impl FnOnce(Instant) -> u64) -> u64 {
        match self.stamp {
            Some(stamp) => stamp,
            None => {
                let stamp = make(self.clock());
                self.stamp = Some(stamp);
                stamp
            }
        }
    }

    /// A request was written: make sure a sweep is scheduled.
    #[inline]
    pub(super) fn request_written(&mut self) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(later(Instant::now(), self.sweep_every));
        }
    }

    /// Whether the sweep is due at `now`.
    pub(super) fn sweep_due(&self, now: Instant) -> bool {
        self.next_sweep.is_some_and(|t| t <= now)
    }

    /// A sweep ran at `now`: the next one, while requests are still waiting.
    pub(super) fn swept(&mut self, now: Instant, still_waiting: bool) {
        self.next_sweep = still_waiting.then(|| later(now, self.sweep_every));
    }

    /// Sets the timer to the earliest of the sweep and `deadlines` and polls
    /// it: the time when it has fired, `None` when there is no deadline or it
    /// has not fired (the task is then woken when it does).
    pub(super) fn poll_fired(
        &mut self,
        cx: &mut Context<'_>,
        deadlines: impl IntoIterator<Item = Option<Instant>>,
    ) -> Option<Instant> {
        let deadline = deadlines
            .into_iter()
            .chain([self.next_sweep])
            .flatten()
            .min()?;
        if self.armed != Some(deadline) {
            self.timer.as_mut().reset(deadline);
            self.armed = Some(deadline);
        }
        if self.timer.as_mut().poll(cx).is_pending() {
            return None;
        }
        Some(Instant::now())
    }
}

//! The server-wide budget for unanswered requests: bytes and requests held by
//! every connection together, with backpressure (stop reading) at the limit.
//!
//! ```text
//!  connection ── length read ──► Lease::poll_acquire(body bytes, 1 request)
//!      fits (and nobody waits) ─► one CAS on the shared word, read the body
//!      does not fit ────────────► queue: `light` (holds nothing) before `heavy`;
//!                                 stop reading; woken when a release grants it
//! ```
//!
//! A connection charges a request's body when it reads its length (before the
//! body is read or allocated), keeps the charge until the request is answered,
//! and charges its unwritten response bytes until they reach the socket.
//! Changes other than acquisitions are batched per wake-up of the connection
//! ([`Lease::sync`]); the shared word is touched once per request to acquire and
//! once per wake-up to release. A request that fits in what its connection
//! still has charged (room freed by answers since the last sync) while nobody
//! waits takes that room again without touching the shared word.
//!
//! Fairness: a connection that holds nothing queues in `light`, which is served
//! before `heavy` whenever room frees, so a well-behaved client waits for the
//! next release, not behind every greedy connection's next request. While both
//! queues wait, every [`HEAVY_EVERY`]th grant goes to `heavy`, so connections
//! already holding requests are not starved by a stream of newcomers.
//!
//! A waiter's state (idle, queued, granted) is one atomic, changed from queued
//! only under the queue lock: nobody can see a waiter between two states.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
};

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

/// Bits of the shared word that count bytes; the rest count requests.
const BYTE_BITS: u32 = 44;
const BYTE_MASK: u64 = (1 << BYTE_BITS) - 1;
/// The largest request limit the packed word can count.
const MAX_REQUESTS: u64 = (1 << (64 - BYTE_BITS)) - 1;

/// While both queues wait, one grant in this many goes to `heavy`.
const HEAVY_EVERY: u32 = 4;

/// A waiter in no queue and holding no grant.
const IDLE: u8 = 0;
/// A waiter in a queue (`light` or `heavy`).
const QUEUED: u8 = 1;
/// A waiter taken off its queue with `need` charged for it, not yet taken by
/// its connection.
const GRANTED: u8 = 2;

fn pack(bytes: u64, requests: u64) -> u64 {
    (requests << BYTE_BITS) | bytes
}

fn unpack(word: u64) -> (u64, u64) {
    (word & BYTE_MASK, word >> BYTE_BITS)
}

/// The shared budget of one server.
#[derive(Debug)]
pub(crate) struct Budget {
    max_bytes: u64,
    max_requests: u64,
    /// Bytes and requests in use, packed so that one CAS takes both.
    used: AtomicU64,
    /// Connections in the queues; a release looks at the queues only when some
    /// wait, so the lock stays off the path of an unthrottled server.
    waiting: AtomicUsize,
    queues: Mutex<Queues>,
    /// Nanoseconds connections have spent waiting for the budget, summed.
    throttled_nanos: AtomicU64,
}

#[derive(Debug, Default)]
struct Queues {
    /// Connections that held nothing when they queued: served first.
    light: VecDeque<Arc<Waiter>>,
    heavy: VecDeque<Arc<Waiter>>,
    /// Grants in a row to `light` while `heavy` waited.
    light_streak: u32,
}

/// One connection's place in the queues.
#[derive(Debug, Default)]
struct Waiter {
    /// Bytes it asks for (with one request). Written under the queue lock.
    need: AtomicU64,
    /// [`IDLE`], [`QUEUED`] or [`GRANTED`]. Into and out of `QUEUED` only under
    /// the queue lock; `GRANTED` to `IDLE` by its connection (taking the grant).
    state: AtomicU8,
    waker: AtomicWaker,
}

impl Budget {
    /// A budget of `max_bytes` bytes and `max_requests` requests (at least 1 of
    /// each; requests at most 2^20 - 1).
    pub(crate) fn new(max_bytes: usize, max_requests: usize) -> Budget {
        Budget {
            max_bytes: (max_bytes as u64).clamp(1, BYTE_MASK),
            max_requests: (max_requests as u64).clamp(1, MAX_REQUESTS),
            used: AtomicU64::new(0),
            waiting: AtomicUsize::new(0),
            queues: Mutex::default(),
            throttled_nanos: AtomicU64::new(0),
        }
    }

    /// Bytes and requests in use now.
    pub(crate) fn in_use(&self) -> (u64, u64) {
        unpack(self.used.load(Ordering::Relaxed))
    }

    /// Connection-nanoseconds spent waiting for the budget so far.
    pub(crate) fn throttled_nanos(&self) -> u64 {
        self.throttled_nanos.load(Ordering::Relaxed)
    }

    /// Takes `bytes` and one request if they fit. Anything fits when nothing is
    /// in use, so a frame larger than the whole budget is served alone rather
    /// than never.
    fn try_acquire(&self, bytes: u64) -> bool {
        let mut current = self.used.load(Ordering::SeqCst);
        loop {
            let (used_bytes, used_requests) = unpack(current);
            let fits = current == 0
                || (used_bytes.saturating_add(bytes) <= self.max_bytes
                    && used_requests < self.max_requests);
            if !fits {
                return false;
            }
            match self.used.compare_exchange_weak(
                current,
                current + pack(bytes, 1),
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
    }

    /// Charges bytes that cannot wait (responses already produced).
    fn force(&self, bytes: u64) {
        self.used.fetch_add(pack(bytes, 0), Ordering::SeqCst);
    }

    /// Gives back what was charged and grants the freed room to waiters.
    fn release(&self, bytes: u64, requests: u64) {
        self.used.fetch_sub(pack(bytes, requests), Ordering::SeqCst);
        if self.waiting.load(Ordering::SeqCst) > 0 {
            self.grant(&mut self.queues());
        }
    }

    fn queues(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Grants room to the waiters in order (`light` first, but `heavy` at
    /// least once every [`HEAVY_EVERY`] grants) while it fits.
    fn grant(&self, queues: &mut Queues) {
        loop {
            let heavy_turn = queues.light.is_empty()
                || (!queues.heavy.is_empty() && queues.light_streak + 1 >= HEAVY_EVERY);
            let queue = if heavy_turn {
                &mut queues.heavy
            } else {
                &mut queues.light
            };
            let Some(front) = queue.front() else { return };
            if !self.try_acquire(front.need.load(Ordering::Relaxed)) {
                return;
            }
            let waiter = queue.pop_front().expect("front exists");
            if heavy_turn {
                queues.light_streak = 0;
            } else if !queues.heavy.is_empty() {
                queues.light_streak += 1;
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            // One store: from queued to granted, never in between.
            waiter.state.store(GRANTED, Ordering::SeqCst);
            waiter.waker.wake();
        }
    }
}

/// What one connection holds of the budget: returned in full when dropped.
#[derive(Debug)]
pub(crate) struct Lease {
    counters: Arc<super::stats::Counters>,
    waiter: Arc<Waiter>,
    /// Charged to the shared word for this connection.
    charged_bytes: u64,
    charged_requests: u64,
    /// What this connection holds now (request bodies, write buffer, requests);
    /// the shared word catches up in `sync`.
    request_bytes: u64,
    write_bytes: u64,
    requests: u64,
    /// Since when this connection waits for the budget.
    throttled_since: Option<Instant>,
}

impl Lease {
    pub(crate) fn new(counters: Arc<super::stats::Counters>) -> Lease {
        Lease {
            counters,
            waiter: Arc::default(),
            charged_bytes: 0,
            charged_requests: 0,
            request_bytes: 0,
            write_bytes: 0,
            requests: 0,
            throttled_since: None,
        }
    }

    fn budget(&self) -> &Budget {
        &self.counters.budget
    }

    /// Takes `bytes` and one request for a request about to be read. Pending
    /// (and woken by the release that grants it) while the budget is full.
    /// Call again with the same `bytes` until ready.
    #[inline]
    pub(crate) fn poll_acquire(&mut self, bytes: u64, cx: &mut Context<'_>) -> Poll<()> {
        // Room freed by answers since the last sync is still charged to this
        // connection: with nobody waiting for it, giving it back and taking
        // it again would change nothing but cost a CAS on the shared word.
        // Only room the write buffer has not taken since: an answer's bytes
        // move from its request to the write buffer, and room reused while
        // they sit there uncharged would let a connection hold its whole
        // write buffer (256 KiB) beyond the budget. Not while queued or
        // granted (`IDLE` otherwise: not throttled).
        if self.try_reuse(bytes) {
            return Poll::Ready(());
        }
        self.poll_acquire_shared(bytes, cx)
    }

    /// Takes `bytes` and one request out of room answered since the last
    /// sync and not taken by the write buffer, if it holds that much and
    /// nobody waits: see
    /// [`poll_acquire`](Self::poll_acquire), of which this is the first step.
    #[inline]
    pub(crate) fn try_reuse(&mut self, bytes: u64) -> bool {
        if self.requests < self.charged_requests
            && self.bytes() + bytes <= self.charged_bytes
            && self.waiter.state.load(Ordering::SeqCst) == IDLE
            && self.budget().waiting.load(Ordering::SeqCst) == 0
        {
            debug_assert!(self.throttled_since.is_none());
            self.request_bytes += bytes;
            self.requests += 1;
            return true;
        }
        false
    }

    /// Takes `bytes` and one request now if that needs no wait: room answered
    /// since the last sync ([`try_reuse`](Self::try_reuse)), or else the
    /// shared word while nobody waits (the first step of the shared path).
    /// False leaves everything as it was, for [`poll_acquire`](Self::poll_acquire).
    #[inline]
    pub(crate) fn try_take(&mut self, bytes: u64) -> bool {
        if self.try_reuse(bytes) {
            return true;
        }
        // Only this connection moves its waiter out of `IDLE`.
        if self.waiter.state.load(Ordering::SeqCst) == IDLE
            && self.budget().waiting.load(Ordering::SeqCst) == 0
            && self.budget().try_acquire(bytes)
        {
            self.took(bytes);
            self.end_throttle();
            return true;
        }
        false
    }

    /// [`poll_acquire`](Self::poll_acquire) from the shared word or the queue.
    fn poll_acquire_shared(&mut self, bytes: u64, cx: &mut Context<'_>) -> Poll<()> {
        if self.waiter.state.load(Ordering::SeqCst) == IDLE {
            // Only this connection moves its waiter out of `IDLE`: it stays so.
            if self.budget().waiting.load(Ordering::SeqCst) == 0 && self.budget().try_acquire(bytes)
            {
                self.took(bytes);
                self.end_throttle();
                return Poll::Ready(());
            }
            // Give back what was freed first: the grant may be our own.
            self.sync();
            let light = self.bytes() == 0 && self.requests == 0;
            self.waiter.waker.register(cx.waker());
            let budget = &self.counters.budget;
            let mut queues = budget.queues();
            self.waiter.need.store(bytes, Ordering::Relaxed);
            self.waiter.state.store(QUEUED, Ordering::SeqCst);
            if light {
                queues.light.push_back(self.waiter.clone());
            } else {
                queues.heavy.push_back(self.waiter.clone());
            }
            budget.waiting.fetch_add(1, Ordering::SeqCst);
            budget.grant(&mut queues);
            drop(queues);
            self.throttled_since.get_or_insert_with(Instant::now);
        } else {
            self.waiter.waker.register(cx.waker());
        }
        // Registered before looking: a grant after this look wakes us.
        if self
            .waiter
            .state
            .compare_exchange(GRANTED, IDLE, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.took(bytes);
            self.end_throttle();
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Records a request's charge, already made on the shared word.
    fn took(&mut self, bytes: u64) {
        self.charged_bytes += bytes;
        self.charged_requests += 1;
        self.request_bytes += bytes;
        self.requests += 1;
    }

    fn bytes(&self) -> u64 {
        self.request_bytes + self.write_bytes
    }

    fn end_throttle(&mut self) {
        if let Some(since) = self.throttled_since.take() {
            let nanos = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.budget()
                .throttled_nanos
                .fetch_add(nanos, Ordering::Relaxed);
        }
    }

    /// A request holding `bytes` was answered (or failed).
    pub(crate) fn answered(&mut self, bytes: u64) {
        self.request_bytes -= bytes;
        self.requests -= 1;
    }

    /// The write buffer's memory to charge now (responses not yet written).
    pub(crate) fn set_write_buffer(&mut self, bytes: u64) {
        self.write_bytes = bytes;
    }

    /// Brings the shared word up to date with what this connection holds.
    pub(crate) fn sync(&mut self) {
        let held = self.bytes();
        if held > self.charged_bytes {
            self.budget().force(held - self.charged_bytes);
            self.charged_bytes = held;
        }
        if held < self.charged_bytes || self.requests < self.charged_requests {
            let bytes = self.charged_bytes - held;
            let requests = self.charged_requests - self.requests;
            self.charged_bytes = held;
            self.charged_requests = self.requests;
            self.budget().release(bytes, requests);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let budget = &self.counters.budget;
        if self.waiter.state.load(Ordering::SeqCst) != IDLE {
            // Under the lock a queued waiter stays queued until we remove it,
            // and a granted one stays granted (only we take a grant).
            let mut queues = budget.queues();
            match self.waiter.state.swap(IDLE, Ordering::SeqCst) {
                QUEUED => {
                    queues.light.retain(|w| !Arc::ptr_eq(w, &self.waiter));
                    queues.heavy.retain(|w| !Arc::ptr_eq(w, &self.waiter));
                    budget.waiting.fetch_sub(1, Ordering::SeqCst);
                }
                GRANTED => {
                    self.charged_bytes += self.waiter.need.load(Ordering::Relaxed);
                    self.charged_requests += 1;
                }
                _ => {}
            }
        }
        self.end_throttle();
        self.request_bytes = 0;
        self.write_bytes = 0;
        self.requests = 0;
        self.sync();
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::AtomicUsize,
        task::{Wake, Waker},
    };

    use super::*;
    use crate::server::{Builder, stats::Counters};

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Flag(AtomicUsize);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Conn {
        lease: Lease,
        flag: Arc<Flag>,
        waker: Waker,
    }

    impl Conn {
        fn new(counters: &Arc<Counters>) -> Conn {
            let flag = Arc::new(Flag::default());
            Conn {
                lease: Lease::new(counters.clone()),
                waker: Waker::from(flag.clone()),
                flag,
            }
        }

        fn acquire(&mut self, bytes: u64) -> Poll<()> {
            self.lease
                .poll_acquire(bytes, &mut Context::from_waker(&self.waker))
        }

        fn woken(&self) -> usize {
            self.flag.0.load(Ordering::SeqCst)
        }

        fn answer(&mut self, bytes: u64) {
            self.lease.answered(bytes);
            self.lease.sync();
        }
    }

    /// A budget of `bytes` with frames of at most `bytes` (the budget is never
    /// below one maximum frame).
    fn counters(bytes: usize, requests: usize) -> Arc<Counters> {
        let config = Builder::new()
            .frame(anet_proto::Builder::new().max_frame_length(bytes))
            .max_in_flight_bytes(bytes)
            .max_in_flight_requests(requests);
        Arc::new(Counters::new(&config))
    }

    #[test]
    fn a_waiting_connection_is_woken_when_room_frees() {
        let counters = counters(100, 100);
        let (mut a, mut b) = (Conn::new(&counters), Conn::new(&counters));
        assert!(a.acquire(80).is_ready());
        assert!(b.acquire(50).is_pending());
        assert!(b.acquire(50).is_pending(), "polling again changes nothing");
        assert_eq!(b.woken(), 0);
        a.answer(80);
        assert_eq!(b.woken(), 1, "the release wakes the waiter");
        assert!(b.acquire(50).is_ready());
        assert_eq!(counters.budget.in_use(), (50, 1));
        assert!(counters.budget.throttled_nanos() > 0);
    }

    #[test]
    fn room_answered_since_the_last_sync_is_taken_again_without_the_shared_word_unless_someone_waits()
     {
        let counters = counters(100, 100);
        let (mut a, mut b) = (Conn::new(&counters), Conn::new(&counters));
        assert!(a.acquire(40).is_ready());
        a.lease.answered(40);
        // Still charged (no sync yet): the next request of that size or less
        // reuses the charge.
        assert!(a.acquire(30).is_ready());
        assert_eq!(counters.budget.in_use(), (40, 1));
        a.lease.sync();
        assert_eq!(counters.budget.in_use(), (30, 1), "the unused 10 go back");
        // Larger than what is left charged: from the shared word.
        a.lease.answered(30);
        assert!(a.acquire(50).is_ready());
        assert_eq!(counters.budget.in_use(), (80, 2));
        a.lease.sync();
        assert_eq!(counters.budget.in_use(), (50, 1));
        // With a waiter, answered room is not kept back from it.
        assert!(b.acquire(60).is_pending());
        a.lease.answered(50);
        assert!(a.acquire(50).is_pending(), "queued behind the waiter");
        assert_eq!(b.woken(), 1, "the answered room went to the waiter");
        assert!(b.acquire(60).is_ready());
        assert_eq!(counters.budget.in_use(), (60, 1));
        b.answer(60);
        assert!(a.acquire(50).is_ready());
        a.answer(50);
        assert_eq!(counters.budget.in_use(), (0, 0));
    }

    #[test]
    fn room_the_write_buffer_took_since_the_last_sync_is_not_reused() {
        let counters = counters(100, 100);
        let mut a = Conn::new(&counters);
        assert!(a.acquire(40).is_ready());
        a.lease.answered(40);
        a.lease.set_write_buffer(30);
        // 10 of the 40 answered are free: not enough, from the shared word.
        assert!(a.acquire(40).is_ready());
        assert_eq!(counters.budget.in_use(), (80, 2), "taken from the word");
        a.lease.sync();
        assert_eq!(
            counters.budget.in_use(),
            (70, 1),
            "the write buffer charged"
        );
        a.lease.answered(40);
        a.lease.set_write_buffer(30);
        assert!(a.acquire(40).is_ready(), "40 free of 70 charged: reused");
        assert_eq!(counters.budget.in_use(), (70, 1));
        a.lease.sync();
        assert_eq!(counters.budget.in_use(), (70, 1));
        a.lease.answered(40);
        a.lease.set_write_buffer(0);
        a.lease.sync();
        assert_eq!(counters.budget.in_use(), (0, 0));
    }

    #[test]
    fn the_request_limit_throttles_too() {
        let counters = counters(1000, 1);
        let (mut a, mut b) = (Conn::new(&counters), Conn::new(&counters));
        assert!(a.acquire(1).is_ready());
        assert!(b.acquire(1).is_pending());
        a.answer(1);
        assert!(b.acquire(1).is_ready());
    }

    #[test]
    fn connections_holding_nothing_are_served_before_those_holding_some() {
        let counters = counters(100, 100);
        let (mut big, mut greedy, mut newcomer) = (
            Conn::new(&counters),
            Conn::new(&counters),
            Conn::new(&counters),
        );
        assert!(big.acquire(60).is_ready());
        assert!(greedy.acquire(30).is_ready());
        // The greedy connection queues first, holding 30.
        assert!(greedy.acquire(50).is_pending());
        assert!(newcomer.acquire(50).is_pending());
        big.answer(60);
        assert_eq!(newcomer.woken(), 1);
        assert_eq!(greedy.woken(), 0);
        assert!(newcomer.acquire(50).is_ready());
        assert!(greedy.acquire(50).is_pending());
        newcomer.answer(50);
        assert!(greedy.acquire(50).is_ready());
    }

    #[test]
    fn a_budget_below_one_maximum_frame_is_raised_to_one() {
        let config = Builder::new().max_in_flight_bytes(10);
        let counters = Arc::new(Counters::new(&config));
        assert_eq!(counters.budget.max_bytes, 65_535);
        let (mut a, mut b) = (Conn::new(&counters), Conn::new(&counters));
        assert!(a.acquire(65_535).is_ready());
        assert!(b.acquire(1).is_pending());
        a.answer(65_535);
        assert!(b.acquire(1).is_ready());
    }

    #[test]
    fn connections_holding_some_are_served_at_least_once_every_four_grants() {
        let counters = counters(100, 100);
        let mut holder = Conn::new(&counters);
        let mut greedy = Conn::new(&counters);
        for _ in 0..9 {
            assert!(holder.acquire(10).is_ready());
        }
        assert!(greedy.acquire(10).is_ready());
        // The greedy connection waits holding 10, behind it a stream of
        // newcomers holding nothing.
        assert!(greedy.acquire(10).is_pending());
        let mut newcomers: Vec<Conn> = (0..6).map(|_| Conn::new(&counters)).collect();
        for n in &mut newcomers {
            assert!(n.acquire(10).is_pending());
        }
        // The holder frees room for one grant at a time.
        let mut served = Vec::new();
        for _ in 0..4 {
            holder.answer(10);
            if greedy.woken() > 0 {
                assert!(greedy.acquire(10).is_ready());
                served.push("greedy");
                break;
            }
            let granted: Vec<_> = newcomers.iter().map(Conn::woken).collect();
            assert_eq!(granted.iter().sum::<usize>(), served.len() + 1);
            served.push("newcomer");
        }
        assert_eq!(served, ["newcomer", "newcomer", "newcomer", "greedy"]);
    }

    #[test]
    fn a_connection_dropped_while_waiting_leaves_nothing_behind() {
        let counters = counters(100, 100);
        let (mut a, mut b, mut c) = (
            Conn::new(&counters),
            Conn::new(&counters),
            Conn::new(&counters),
        );
        assert!(a.acquire(100).is_ready());
        assert!(b.acquire(100).is_pending());
        assert!(c.acquire(100).is_pending());
        // b is granted the room a frees, then closes before taking it: the
        // grant goes on to c.
        a.answer(100);
        assert_eq!(b.woken(), 1);
        drop(b);
        assert_eq!(c.woken(), 1);
        assert!(c.acquire(100).is_ready());
        drop(c);
        drop(a);
        assert_eq!(counters.budget.in_use(), (0, 0));
        assert_eq!(counters.budget.waiting.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn unwritten_responses_are_charged_until_written() {
        let counters = counters(100, 100);
        let (mut a, mut b) = (Conn::new(&counters), Conn::new(&counters));
        assert!(a.acquire(40).is_ready());
        a.lease.answered(40);
        a.lease.set_write_buffer(90);
        a.lease.sync();
        assert_eq!(counters.budget.in_use(), (90, 0));
        assert!(b.acquire(20).is_pending());
        a.lease.set_write_buffer(0);
        a.lease.sync();
        assert!(b.acquire(20).is_ready());
    }
}

/// A grant racing its waiter's close, over real threads: whatever the
/// interleaving, everything granted is given back (a waiter must never be seen
/// between "queued" and "granted").
#[cfg(test)]
mod race_tests {
    use std::{
        sync::atomic::AtomicBool,
        task::{Wake, Waker},
    };

    use super::*;
    use crate::server::{Builder, stats::Counters};

    /// Rounds of the race; without one atomic state for the waiter a leak
    /// showed within the first 20,000 (50,000 take under a second alone).
    const ROUNDS: u64 = 50_000;
    /// The race stops after this long even short of [`ROUNDS`] (threads
    /// starved for cores by other tests run few rounds).
    const MAX_TIME: std::time::Duration = std::time::Duration::from_secs(3);

    struct Noop;
    impl Wake for Noop {
        fn wake(self: Arc<Self>) {}
    }

    fn spin_until(flag: &AtomicU64, value: u64) {
        spin_while(|| flag.load(Ordering::Acquire) < value);
    }

    /// Spins while `cond` holds, yielding the core now and then (the other
    /// thread may be waiting for it).
    fn spin_while(mut cond: impl FnMut() -> bool) {
        let mut spins = 0u32;
        while cond() {
            spins = spins.wrapping_add(1);
            if spins % 128 == 0 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    #[test]
    fn a_grant_racing_a_closing_waiter_is_given_back() {
        let config = Builder::new()
            .frame(anet_proto::Builder::new().max_frame_length(100))
            .max_in_flight_bytes(100)
            .max_in_flight_requests(100);
        let counters = Arc::new(Counters::new(&config));
        let waker = Waker::from(Arc::new(Noop));
        let step = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let holder = {
            let (counters, step, stop, waker) =
                (counters.clone(), step.clone(), stop.clone(), waker.clone());
            std::thread::spawn(move || {
                let mut a = Lease::new(counters.clone());
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Hold the whole budget, then let the waiter queue.
                    while a
                        .poll_acquire(100, &mut Context::from_waker(&waker))
                        .is_pending()
                    {}
                    step.store(3 * round + 1, Ordering::Release);
                    spin_until(&step, 3 * round + 2);
                    // Release (grants the waiter) while it closes.
                    a.answered(100);
                    a.sync();
                    spin_until(&step, 3 * round + 3);
                    round += 1;
                }
            })
        };
        let mut leaked = None;
        let deadline = Instant::now() + MAX_TIME;
        for round in 0..ROUNDS {
            spin_until(&step, 3 * round + 1);
            let mut b = Lease::new(counters.clone());
            assert!(
                b.poll_acquire(60, &mut Context::from_waker(&waker))
                    .is_pending()
            );
            step.store(3 * round + 2, Ordering::Release);
            // Spin a varying few iterations to land in the grant.
            for _ in 0..(round % 64) {
                std::hint::spin_loop();
            }
            drop(b);
            // Wait for the holder's release to finish, then everything is
            // given back.
            spin_while(|| counters.budget.in_use().0 == 100);
            let mut spins = 0;
            spin_while(|| {
                spins += 1;
                counters.budget.in_use() != (0, 0) && spins < 100_000
            });
            if counters.budget.in_use() != (0, 0) {
                leaked = Some((round, counters.budget.in_use()));
                break;
            }
            let last = round + 1 == ROUNDS || Instant::now() >= deadline;
            if last {
                stop.store(true, Ordering::Relaxed);
            }
            step.store(3 * round + 3, Ordering::Release);
            if last {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
        step.store(u64::MAX, Ordering::Release);
        let _ = holder.join();
        assert_eq!(leaked, None, "a grant was leaked (round, in use)");
        assert_eq!(counters.budget.waiting.load(Ordering::SeqCst), 0);
    }
}

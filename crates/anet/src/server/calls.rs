//! The calls in flight on one connection: a slab of reusable pinned slots, each
//! with its own waker, so that only woken calls are polled and a call costs no
//! allocation once its slot exists.
//!
//! ```text
//!  slots:  [ Box<Option<call>> + waker ] [ ... ] [ ... ]   at most the window
//!  a call's waker ──► pushes its slot's index on `woken` ──► wakes the task
//!  poll_next: takes the woken indices, polls those calls, frees finished slots
//! ```
//!
//! A slot (a pinned box and its waker's `Arc`) is allocated the first time the
//! connection needs that many calls at once, then refilled in place with
//! `Pin::set` for every later call. [`CallSet::shrink`] gives them all back
//! once the connection has been idle for a while.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, Wake, Waker},
};

/// Slot indices woken since the task last looked, and the task to wake.
#[derive(Debug, Default)]
struct Woken {
    state: Mutex<WokenState>,
    /// `indices` may hold something: read without the lock, so that a set
    /// with no call in flight drops stale indices without locking every time.
    any: AtomicBool,
}

#[derive(Debug, Default)]
struct WokenState {
    /// Indices of slots whose calls asked to be polled.
    indices: Vec<usize>,
    /// The connection's task, woken when `indices` stops being empty.
    task: Option<Waker>,
}

impl Woken {
    fn lock(&self) -> MutexGuard<'_, WokenState> {
        // Nothing that holds the lock can panic midway (a push and a swap).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The waker of one slot: queues its index once until the slot is polled.
#[derive(Debug)]
struct SlotWaker {
    index: usize,
    /// Already on the woken list (cleared just before the slot is polled).
    queued: AtomicBool,
    woken: Arc<Woken>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let task = {
            let mut state = self.woken.lock();
            state.indices.push(self.index);
            // The task drains the whole list: wake it for the first index only.
            if state.indices.len() == 1 {
                self.woken.any.store(true, Ordering::Relaxed);
                state.task.clone()
            } else {
                None
            }
        };
        if let Some(task) = task {
            task.wake();
        }
    }
}

/// One reusable place for a call.
struct Slot<F> {
    /// Allocated once, refilled with `Pin::set`; `None` while free.
    call: Pin<Box<Option<F>>>,
    waker: Waker,
    state: Arc<SlotWaker>,
}

/// The calls in flight on a connection, polled when woken, finished in
/// completion order.
pub(crate) struct CallSet<F> {
    slots: Vec<Slot<F>>,
    /// Indices of free slots.
    free: Vec<usize>,
    /// Woken slots taken from `woken` and not polled yet (from `next` on).
    polling: Vec<usize>,
    next: usize,
    woken: Arc<Woken>,
    /// Calls in flight.
    len: usize,
}

impl<F> fmt::Debug for CallSet<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallSet")
            .field("len", &self.len)
            .field("slots", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl<F: Future> CallSet<F> {
    pub(crate) fn new() -> CallSet<F> {
        CallSet {
            slots: Vec::new(),
            free: Vec::new(),
            polling: Vec::new(),
            next: 0,
            woken: Arc::new(Woken::default()),
            len: 0,
        }
    }

    /// Calls in flight.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Starts `call` in a free slot (a new one if none is free) and polls it
    /// once with the slot's waker: its output if it finished at once.
    #[inline]
    pub(crate) fn push(&mut self, call: F) -> Option<F::Output> {
        let index = match self.free.pop() {
            Some(index) => index,
            None => self.grow(),
        };
        self.len += 1;
        let slot = &mut self.slots[index];
        slot.call.as_mut().set(Some(call));
        self.poll_slot(index, true)
    }

    /// The next finished call's output; `Ready(None)` when none is in flight,
    /// `Pending` (the task woken later) when none of them has finished.
    ///
    /// Takes the woken list at most once per call: a call that wakes itself
    /// while polled is polled again at the task's next turn (the waker has
    /// woken the task), not in a loop here.
    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<F::Output>> {
        let mut refilled = false;
        loop {
            if self.next == self.polling.len() {
                self.polling.clear();
                self.next = 0;
                if self.len == 0 {
                    self.drop_stale();
                    return Poll::Ready(None);
                }
                if refilled {
                    // Any call woken since the list was taken has woken the
                    // task (the list went from empty to not).
                    return Poll::Pending;
                }
                refilled = true;
                {
                    let mut state = self.woken.lock();
                    if !state.task.as_ref().is_some_and(|t| t.will_wake(cx.waker())) {
                        state.task = Some(cx.waker().clone());
                    }
                    // Both lists keep their capacity: no allocation once warm.
                    std::mem::swap(&mut state.indices, &mut self.polling);
                    self.woken.any.store(false, Ordering::Relaxed);
                }
                if self.polling.is_empty() {
                    return Poll::Pending;
                }
            }
            let index = self.polling[self.next];
            self.next += 1;
            if let Some(output) = self.poll_slot(index, false) {
                return Poll::Ready(Some(output));
            }
        }
    }

    /// Drops every call in flight; the slots stay for later calls.
    pub(crate) fn clear(&mut self) {
        self.free.clear();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            slot.call.as_mut().set(None);
            self.free.push(index);
        }
        self.polling.clear();
        self.next = 0;
        self.len = 0;
    }

    /// Holds slots [`shrink`](Self::shrink) would free.
    pub(crate) fn holds_slots(&self) -> bool {
        !self.slots.is_empty()
    }

    /// With no call in flight, frees every slot and list (the connection is
    /// idle; the next calls allocate their slots again).
    pub(crate) fn shrink(&mut self) {
        if self.len > 0 {
            return;
        }
        self.slots = Vec::new();
        self.free = Vec::new();
        self.polling = Vec::new();
        self.next = 0;
        self.woken.lock().indices = Vec::new();
        self.woken.any.store(false, Ordering::Relaxed);
    }

    /// With no call in flight, every index on the woken list names a free
    /// slot (a late wake-up, or a call that woke itself as it finished):
    /// drops them. Without this, a connection whose calls all finish at their
    /// first poll never takes the list, and it grows with every request.
    fn drop_stale(&mut self) {
        if self.woken.any.load(Ordering::Relaxed) {
            let mut state = self.woken.lock();
            state.indices.clear();
            self.woken.any.store(false, Ordering::Relaxed);
        }
    }

    /// A new slot; its index.
    fn grow(&mut self) -> usize {
        let index = self.slots.len();
        let state = Arc::new(SlotWaker {
            index,
            queued: AtomicBool::new(false),
            woken: self.woken.clone(),
        });
        self.slots.push(Slot {
            call: Box::pin(None),
            waker: Waker::from(state.clone()),
            state,
        });
        index
    }

    /// Polls the call in slot `index` (if any: a late wake-up may name a
    /// freed or dropped slot), `new` when [`push`](Self::push) just put it
    /// there; frees the slot when it finished.
    fn poll_slot(&mut self, index: usize, new: bool) -> Option<F::Output> {
        let slot = self.slots.get_mut(index)?;
        let call = slot.call.as_mut().as_pin_mut()?;
        // Cleared first: a wake-up during the poll queues the slot again. A
        // swap, not a store: when it reads a waker's `true` it acquires what
        // that waker published before waking (say, the response the call is
        // about to look for). A plain store lets the call's first read pass
        // it (store-load reordering, x86 included) and miss an event whose
        // wake-up saw `queued` still set and queued nothing: a lost wake-up.
        //
        // A new call's flag is usually clear (its slot's last call finished
        // at its first poll): read first, it needs no store then, and any
        // wake-up after that read swaps it from clear and queues the slot.
        let queued = &slot.state.queued;
        if !new || queued.load(Ordering::Acquire) {
            queued.swap(false, Ordering::AcqRel);
        }
        let output = match call.poll(&mut Context::from_waker(&slot.waker)) {
            Poll::Ready(output) => output,
            Poll::Pending => return None,
        };
        slot.call.as_mut().set(None);
        self.free.push(index);
        self.len -= 1;
        Some(output)
    }
}

#[cfg(test)]
mod tests {
    use std::task::Poll;

    use super::*;

    /// Ready once `flag` is set; registers its waker in `waker`.
    struct Gate {
        open: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
        value: u32,
    }

    impl Future for Gate {
        type Output = u32;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            if self.open.load(Ordering::Acquire) {
                return Poll::Ready(self.value);
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    fn gate(value: u32) -> (Gate, Arc<AtomicBool>, Arc<Mutex<Option<Waker>>>) {
        let open = Arc::new(AtomicBool::new(false));
        let waker = Arc::new(Mutex::new(None));
        (
            Gate {
                open: open.clone(),
                waker: waker.clone(),
                value,
            },
            open,
            waker,
        )
    }

    fn open(open: &AtomicBool, waker: &Mutex<Option<Waker>>) {
        open.store(true, Ordering::Release);
        waker.lock().unwrap().take().expect("registered").wake();
    }

    #[test]
    fn finished_calls_come_out_in_completion_order_and_slots_are_reused() {
        let mut set = CallSet::new();
        let (a, a_open, a_waker) = gate(1);
        let (b, b_open, b_waker) = gate(2);
        assert!(set.push(a).is_none());
        assert!(set.push(b).is_none());
        assert_eq!(set.len(), 2);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(set.poll_next(&mut cx).is_pending());
        open(&b_open, &b_waker);
        assert_eq!(set.poll_next(&mut cx), Poll::Ready(Some(2)));
        open(&a_open, &a_waker);
        assert_eq!(set.poll_next(&mut cx), Poll::Ready(Some(1)));
        assert_eq!(set.poll_next(&mut cx), Poll::Ready(None));
        // Both slots are free: two more calls need no new slot.
        let (c, _, _) = gate(3);
        let (d, _, _) = gate(4);
        assert!(set.push(c).is_none());
        assert!(set.push(d).is_none());
        assert_eq!(set.slots.len(), 2);
    }

    /// Pending forever, waking itself at every poll; counts its polls.
    struct Spinner(Arc<std::sync::atomic::AtomicUsize>);

    impl Future for Spinner {
        type Output = u32;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            self.0.fetch_add(1, Ordering::Relaxed);
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    #[test]
    fn a_call_that_wakes_itself_is_polled_once_per_turn_not_in_a_loop() {
        let polls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut set = CallSet::new();
        assert!(set.push(Spinner(polls.clone())).is_none());
        let mut cx = Context::from_waker(Waker::noop());
        for turn in 1..=3 {
            assert!(set.poll_next(&mut cx).is_pending());
            // The poll in `push`, then one per turn.
            assert_eq!(polls.load(Ordering::Relaxed), 1 + turn);
        }
    }

    /// Wakes itself as it finishes, at its first poll.
    struct WakeAndFinish;

    impl Future for WakeAndFinish {
        type Output = u32;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            cx.waker().wake_by_ref();
            Poll::Ready(1)
        }
    }

    #[test]
    fn wake_ups_of_calls_that_finished_at_once_do_not_pile_up() {
        let mut set = CallSet::new();
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..100 {
            assert_eq!(set.push(WakeAndFinish), Some(1));
            assert_eq!(set.poll_next(&mut cx), Poll::Ready(None));
        }
        assert!(set.woken.lock().indices.is_empty());
    }

    #[test]
    fn a_call_ready_at_once_is_returned_by_push() {
        let mut set = CallSet::new();
        assert_eq!(set.push(std::future::ready(7)), Some(7));
        assert!(set.is_empty());
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(set.poll_next(&mut cx), Poll::Ready(None));
    }

    #[test]
    fn only_woken_calls_are_polled_and_shrink_frees_the_slots() {
        let mut set = CallSet::new();
        let gates: Vec<_> = (0..4).map(gate).collect();
        let mut handles = Vec::new();
        for (g, open, waker) in gates {
            assert!(set.push(g).is_none());
            handles.push((open, waker));
        }
        let mut cx = Context::from_waker(Waker::noop());
        assert!(set.poll_next(&mut cx).is_pending());
        open(&handles[3].0, &handles[3].1);
        assert_eq!(set.poll_next(&mut cx), Poll::Ready(Some(3)));
        assert!(set.poll_next(&mut cx).is_pending());
        set.clear();
        assert!(set.is_empty());
        set.shrink();
        assert!(!set.holds_slots());
        let (ready, is_open, _) = gate(9);
        is_open.store(true, Ordering::Release);
        assert_eq!(set.push(ready), Some(9));
        // A late wake-up from a dropped slot's waker is ignored.
        handles[2]
            .1
            .lock()
            .unwrap()
            .take()
            .expect("registered")
            .wake();
        assert_eq!(set.poll_next(&mut cx), Poll::Ready(None));
    }
}

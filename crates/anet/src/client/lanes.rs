//! Handles on a shared value, one per lane of threads, so that the threads of
//! a multi-thread runtime do not all take and drop one reference count on
//! every request.
//!
//! A request holds a handle on the client (for its retries) and on the
//! endpoint it went to (to count its failure). With one `Arc` each, every
//! clone and every drop on one worker takes the count's cache line away from
//! the other workers: on this project's 2-core machine, five such updates
//! added to each request of a bare connection (two workers, 256 callers)
//! cost it between a quarter and nearly half of its throughput. [`Lanes`] keeps one
//! handle per lane, each with a count of its own on a cache line of its own,
//! and a thread clones the handle of its lane ([`Lanes::here`]). Threads are
//! numbered in the order they first take a handle, and there are twice as
//! many lanes as processors, so the workers of a runtime mostly have lanes of
//! their own; two that share one only contend as they did before (threads of
//! a blocking pool also take numbers).
//!
//! [`Striped`] is the same idea for a counter that every request adds to (the
//! retry budget's successes): one count per lane, summed when read.

use std::{
    cell::Cell,
    fmt,
    ops::Deref,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
};

/// Lanes per value: a power of two, twice the processors (so that threads
/// that are not workers seldom share a lane with one), from 4 to 64.
fn lane_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        let processors = std::thread::available_parallelism().map_or(1, usize::from);
        (processors * 2).next_power_of_two().clamp(4, 64)
    })
}

/// This thread's number (given when it first asks).
#[inline]
fn thread_number() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static NUMBER: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    // A `Cell<usize>` has no destructor, so the key is never torn down;
    // `try_with` still keeps a thread that is ending on lane 0 rather than
    // panicking.
    NUMBER
        .try_with(|number| {
            let n = number.get();
            if n != usize::MAX {
                return n;
            }
            let n = NEXT.fetch_add(1, Relaxed) & (usize::MAX >> 1);
            number.set(n);
            n
        })
        .unwrap_or(0)
}

/// A value on a cache line (two, for processors that fetch lines in pairs)
/// of its own.
#[repr(align(128))]
#[derive(Debug, Default)]
pub(crate) struct Padded<T>(pub(crate) T);

/// A shared value with a handle per lane of threads.
pub(crate) struct Lanes<T> {
    value: Arc<T>,
    /// `lane_count()` handles, each in an allocation of its own.
    lanes: Box<[Lane<T>]>,
}

/// A handle on a value of [`Lanes`]: keeps the value alive, derefs to it.
/// Cloning it updates its lane's count only.
pub(crate) struct Lane<T>(Arc<Padded<Arc<T>>>);

impl<T> Lanes<T> {
    /// `value`, with a handle per lane.
    pub(crate) fn new(value: T) -> Lanes<T> {
        let value = Arc::new(value);
        let lanes = (0..lane_count())
            .map(|_| Lane(Arc::new(Padded(value.clone()))))
            .collect();
        Lanes { value, lanes }
    }

    /// A handle from this thread's lane.
    #[inline]
    pub(crate) fn here(&self) -> Lane<T> {
        // The lane count is a power of two.
        self.lanes[thread_number() & (self.lanes.len() - 1)].clone()
    }

    /// The value's own `Arc` (for holders that live long: no lane needed).
    pub(crate) fn arc(&self) -> &Arc<T> {
        &self.value
    }
}

impl<T> Deref for Lanes<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> Deref for Lane<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &(self.0).0
    }
}

impl<T> Clone for Lanes<T> {
    /// The same value and the same lanes.
    fn clone(&self) -> Lanes<T> {
        Lanes {
            value: self.value.clone(),
            lanes: self.lanes.clone(),
        }
    }
}

impl<T> Clone for Lane<T> {
    #[inline]
    fn clone(&self) -> Lane<T> {
        Lane(self.0.clone())
    }
}

impl<T: fmt::Debug> fmt::Debug for Lanes<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

impl<T: fmt::Debug> fmt::Debug for Lane<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        (**self).fmt(f)
    }
}

/// A counter that many threads add to, one count per lane; reading sums them.
pub(crate) struct Striped {
    counts: Box<[Padded<AtomicU64>]>,
}

impl Striped {
    pub(crate) fn new() -> Striped {
        Striped {
            counts: (0..lane_count())
                .map(|_| Padded(AtomicU64::new(0)))
                .collect(),
        }
    }

    /// Adds one (to this thread's lane).
    #[inline]
    pub(crate) fn increment(&self) {
        self.counts[thread_number() & (self.counts.len() - 1)]
            .0
            .fetch_add(1, Relaxed);
    }

    /// The sum of every lane (each read once: additions made meanwhile may
    /// be seen or not, as with one counter).
    pub(crate) fn sum(&self) -> u64 {
        self.counts
            .iter()
            .fold(0u64, |sum, count| sum.wrapping_add(count.0.load(Relaxed)))
    }
}

impl fmt::Debug for Striped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Striped").field(&self.sum()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_lane_and_other_threads_take_others() {
        let lanes = Lanes::new(7u32);
        let mine = lanes.here();
        assert!(
            Arc::ptr_eq(&mine.0, &lanes.here().0),
            "same thread, same lane"
        );
        assert_eq!(*mine, 7);
        let others: Vec<_> = (0..lane_count())
            .map(|_| {
                let lanes = &lanes;
                std::thread::scope(|s| s.spawn(|| lanes.here()).join().expect("thread"))
            })
            .collect();
        // Consecutive threads take consecutive lanes: all of them in turn
        // (unless other tests take numbers in between).
        let distinct = others
            .iter()
            .filter(|a| !Arc::ptr_eq(&a.0, &mine.0))
            .count();
        assert!(distinct >= 1, "every thread took this thread's lane");
        for lane in &others {
            assert_eq!(**lane, 7);
        }
    }

    #[test]
    fn the_value_lives_while_a_lane_handle_does() {
        let value = Arc::new(());
        let lanes = Lanes::new(value.clone());
        let handle = lanes.here();
        drop(lanes);
        assert_eq!(Arc::strong_count(&value), 2, "kept by the handle");
        drop(handle);
        assert_eq!(Arc::strong_count(&value), 1, "freed with the last handle");
    }

    #[test]
    fn striped_counts_sum_every_lane() {
        let counter = Striped::new();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        counter.increment();
                    }
                });
            }
        });
        counter.increment();
        assert_eq!(counter.sum(), 4001);
    }
}

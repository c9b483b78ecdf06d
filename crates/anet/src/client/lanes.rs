//! Per-thread lanes for what every call of a client writes: a reference count
//! or a counter that all threads bump on every request moves its cache line
//! between the cores of a multi-thread runtime twice per request. Each thread
//! gets a lane (a small number, given round-robin at its first call), and the
//! state a call writes is kept once per lane, each copy on cache lines of its
//! own: threads on different lanes share no written line.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// How many lanes (copies): enough that the worker threads of a runtime on a
/// small machine get one each; threads beyond it share, which is only slower.
pub(crate) const LANES: usize = 8;

/// This thread's lane, below [`LANES`].
#[inline]
pub(crate) fn current() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static LANE: usize = NEXT.fetch_add(1, Relaxed) % LANES;
    }
    LANE.with(|lane| *lane)
}

/// A value alone on its cache lines (128 bytes: two lines, as the adjacent-line
/// prefetcher of x86 pulls lines in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_lane_and_threads_spread_over_the_lanes() {
        let mine = current();
        assert_eq!(mine, current());
        let others: Vec<usize> = (0..LANES)
            .map(|_| std::thread::spawn(current).join().expect("thread"))
            .collect();
        assert!(others.iter().all(|&lane| lane < LANES));
        // Given round-robin: consecutive threads take different lanes (the
        // other tests of this binary may take some in between).
        let distinct: std::collections::HashSet<_> = others.iter().collect();
        assert!(distinct.len() > 1, "{others:?}");
        assert_eq!(std::mem::align_of::<Padded<u8>>(), 128);
    }
}

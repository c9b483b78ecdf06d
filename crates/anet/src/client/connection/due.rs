//! Timed entries of the tag table (request deadlines, quarantine ends), yielded in
//! the order they come due.
//!
//! An entry names one occupancy of a table slot (its index and the occupancy's
//! sequence number). Entries are never removed early: when a request is answered
//! its entries stay, and the table skips them as stale when they come due (the
//! sequence number no longer matches). So a response costs nothing here, and only
//! the entries that are due are ever looked at — no scan of the whole table.
//!
//! Most entries arrive in the order they come due (one timeout per client, a
//! monotonic clock): those go to a FIFO in O(1); the rest go to a heap. The table
//! compacts a queue (drops stale entries) when it grows past a bound tied to the
//! table's size, so its memory stays bounded whatever the traffic.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
};

use tokio::time::Instant;

/// One timed entry: at `at`, occupancy `seq` of slot `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Due {
    pub(super) at: Instant,
    pub(super) seq: u64,
    pub(super) index: u32,
}

/// Entries in the order they come due.
#[derive(Debug, Default)]
pub(super) struct DueQueue {
    /// Entries pushed in non-decreasing order of `at` (the common case).
    in_order: VecDeque<Due>,
    /// Entries that arrived earlier than the FIFO's last one.
    out_of_order: BinaryHeap<Reverse<Due>>,
}

impl DueQueue {
    pub(super) fn push(&mut self, due: Due) {
        match self.in_order.back() {
            Some(last) if last.at > due.at => self.out_of_order.push(Reverse(due)),
            _ => self.in_order.push_back(due),
        }
    }

    /// When the earliest entry comes due (it may be stale).
    pub(super) fn next(&self) -> Option<Instant> {
        let a = self.in_order.front().map(|d| d.at);
        let b = self.out_of_order.peek().map(|Reverse(d)| d.at);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes the earliest entry if it is due at or before `now`.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Due> {
        let a = self.in_order.front().map(|d| d.at).filter(|&at| at <= now);
        let b = self
            .out_of_order
            .peek()
            .map(|Reverse(d)| d.at)
            .filter(|&at| at <= now);
        match (a, b) {
            (Some(a), Some(b)) if b < a => self.out_of_order.pop().map(|Reverse(d)| d),
            (Some(_), _) => self.in_order.pop_front(),
            (None, Some(_)) => self.out_of_order.pop().map(|Reverse(d)| d),
            (None, None) => None,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.in_order.len() + self.out_of_order.len()
    }

    /// Keeps only the entries `keep` accepts (the live ones).
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Due) -> bool) {
        self.in_order.retain(&mut keep);
        self.out_of_order.retain(|Reverse(d)| keep(d));
    }

    pub(super) fn clear(&mut self) {
        self.in_order.clear();
        self.out_of_order.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn due(at: Instant, seq: u64) -> Due {
        Due { at, seq, index: 0 }
    }

    #[test]
    fn entries_come_out_in_due_order_whatever_order_they_went_in() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut q = DueQueue::default();
        for (offset, seq) in [(5, 0), (7, 1), (3, 2), (9, 3), (1, 4), (7, 5)] {
            q.push(due(t0 + ms(offset), seq));
        }
        assert_eq!(q.next(), Some(t0 + ms(1)));
        assert_eq!(q.pop_due(t0), None, "nothing is due yet");
        let mut order = Vec::new();
        while let Some(d) = q.pop_due(t0 + ms(100)) {
            order.push(d.seq);
        }
        assert_eq!(order, [4, 2, 0, 1, 5, 3]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn only_entries_due_by_now_are_taken() {
        let t0 = Instant::now();
        let mut q = DueQueue::default();
        q.push(due(t0 + Duration::from_millis(10), 0));
        q.push(due(t0 + Duration::from_millis(20), 1));
        assert_eq!(
            q.pop_due(t0 + Duration::from_millis(15)).map(|d| d.seq),
            Some(0)
        );
        assert_eq!(q.pop_due(t0 + Duration::from_millis(15)), None);
        assert_eq!(q.next(), Some(t0 + Duration::from_millis(20)));
    }

    #[test]
    fn retain_drops_what_the_predicate_rejects_in_both_halves() {
        let t0 = Instant::now();
        let mut q = DueQueue::default();
        q.push(due(t0 + Duration::from_millis(5), 0));
        q.push(due(t0 + Duration::from_millis(1), 1)); // out of order
        q.push(due(t0 + Duration::from_millis(6), 2));
        q.retain(|d| d.seq != 1);
        assert_eq!(q.len(), 2);
        assert_eq!(q.next(), Some(t0 + Duration::from_millis(5)));
    }
}

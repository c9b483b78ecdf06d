//! The table of requests written on a connection and awaiting their response.
//!
//! A fixed array of slots (a power of two at least as large as the window). A
//! request's tag encodes its slot and the slot's generation:
//! `id = generation << bits | index`, so a response finds its request in O(1) with
//! a mask and a shift, and a late response for an earlier occupant of the slot
//! (older generation) is recognised and dropped instead of being delivered to the
//! new one.
//!
//! Free slots are reused in FIFO order, so a slot rests as long as possible
//! between occupants, and its generation advances on every reuse; with the
//! default 4-byte tag and 512 slots a slot must be reused 8 million times
//! before a generation repeats.

use std::collections::VecDeque;

use tokio::time::Instant;

use super::reply::Reply;

/// The table of waiting and quarantined requests.
#[derive(Debug)]
pub(crate) struct Table {
    slots: Vec<Slot>,
    /// Free slot indices, oldest-freed first.
    free: VecDeque<u32>,
    /// Quarantined slots in the order their quarantine ends. Quarantine has one
    /// duration, so this order is also the order they were quarantined in.
    quarantine: VecDeque<(Instant, u32, u64)>,
    /// `log2` of the number of slots.
    bits: u32,
    /// Generations per slot: `tag space >> bits`.
    generations: u64,
    waiting: usize,
    quarantined: usize,
    /// Slots freed since the driver last returned their window permits (it
    /// returns them in one batch rather than one per response).
    released: usize,
}

#[derive(Debug)]
struct Slot {
    generation: u64,
    state: State,
}

#[derive(Debug)]
enum State {
    Free,
    /// Written; the caller awaits the response until its deadline (in the
    /// reply), if any.
    Waiting(Reply),
    /// The caller gave up; the tag stays reserved (holding its window slot) until
    /// the late response arrives or the quarantine ends.
    Quarantined,
}

/// What a response's tag matched.
#[derive(Debug)]
pub(crate) enum Matched {
    /// A waiting request: deliver to it.
    Waiting(Reply),
    /// A request whose caller gave up: the late response is dropped.
    Late,
    /// Nothing: unknown tag, stale generation, or a free slot.
    Unknown,
}

impl Table {
    /// A table for a window of `window` requests in a tag space of `space` ids:
    /// `window` rounded up to a power of two slots.
    ///
    /// # Panics
    ///
    /// When `window` is 0, exceeds 2^31, or its rounded slot count exceeds
    /// `space`; the connection configuration checks these first.
    pub(crate) fn new(window: usize, space: u64) -> Table {
        assert!(window > 0 && window <= 1 << 31, "slot count out of range");
        let len = window.next_power_of_two();
        let bits = len.trailing_zeros();
        assert!(len as u64 <= space, "more slots than tags");
        Table {
            slots: (0..len)
                .map(|_| Slot {
                    generation: 0,
                    state: State::Free,
                })
                .collect(),
            free: (0..len as u32).collect(),
            quarantine: VecDeque::new(),
            bits,
            generations: space >> bits,
            waiting: 0,
            quarantined: 0,
            released: 0,
        }
    }

    /// Requests awaiting a response.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Tags reserved for requests whose caller gave up.
    pub(crate) fn quarantined(&self) -> usize {
        self.quarantined
    }

    /// Reserves a slot for a request and returns its id (to encode as the tag), or
    /// gives the reply back when no slot is free. The slot holds one window
    /// permit until it is freed (see [`take_released`](Self::take_released)).
    pub(crate) fn insert(&mut self, reply: Reply) -> Result<u64, Reply> {
        let Some(index) = self.free.pop_front() else {
            return Err(reply);
        };
        let slot = &mut self.slots[index as usize];
        slot.state = State::Waiting(reply);
        self.waiting += 1;
        Ok(slot.generation << self.bits | u64::from(index))
    }

    /// Releases the slot of `id` after its request could not be written.
    pub(crate) fn remove(&mut self, id: u64) -> Option<Reply> {
        match self.take(id) {
            Matched::Waiting(reply) => Some(reply),
            _ => None,
        }
    }

    /// Finds and frees the slot a response's id names.
    pub(crate) fn take(&mut self, id: u64) -> Matched {
        let index = (id & ((1 << self.bits) - 1)) as usize;
        let generation = id >> self.bits;
        let slot = &mut self.slots[index];
        if generation != slot.generation {
            return Matched::Unknown;
        }
        let matched = match std::mem::replace(&mut slot.state, State::Free) {
            State::Free => return Matched::Unknown,
            State::Waiting(reply) => {
                self.waiting -= 1;
                Matched::Waiting(reply)
            }
            State::Quarantined => {
                self.quarantined -= 1;
                Matched::Late
            }
        };
        self.release(index as u32);
        matched
    }

    /// Moves every waiting request whose caller has gone into quarantine until
    /// `until`. Returns how many moved.
    pub(crate) fn quarantine_abandoned(&mut self, until: Instant) -> usize {
        let mut moved = 0;
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let abandoned = matches!(&slot.state, State::Waiting(reply) if reply.is_closed());
            if abandoned {
                slot.state = State::Quarantined;
                self.quarantine
                    .push_back((until, index as u32, slot.generation));
                moved += 1;
            }
        }
        self.waiting -= moved;
        self.quarantined += moved;
        moved
    }

    /// Takes the replies of waiting requests whose deadline is at or before `now`
    /// (to fail them with a timeout) and quarantines their tags until `until`,
    /// since their responses may still come. Returns the earliest deadline left.
    pub(crate) fn expire_deadlines(
        &mut self,
        now: Instant,
        until: Instant,
        expired: &mut Vec<Reply>,
    ) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let State::Waiting(reply) = &slot.state else {
                continue;
            };
            let Some(deadline) = reply.deadline.instant() else {
                continue;
            };
            if deadline > now {
                earliest = Some(earliest.map_or(deadline, |e| e.min(deadline)));
                continue;
            }
            if let State::Waiting(reply) = std::mem::replace(&mut slot.state, State::Quarantined) {
                expired.push(reply);
            }
            self.quarantine
                .push_back((until, index as u32, slot.generation));
            self.waiting -= 1;
            self.quarantined += 1;
        }
        earliest
    }

    /// Frees quarantined slots whose quarantine ended at or before `now`; returns
    /// when the next one ends.
    pub(crate) fn expire_quarantine(&mut self, now: Instant) -> Option<Instant> {
        while let Some(&(until, index, generation)) = self.quarantine.front() {
            if until > now {
                return Some(until);
            }
            self.quarantine.pop_front();
            let slot = &mut self.slots[index as usize];
            // The late response may have freed (and reuse refilled) the slot already.
            if slot.generation == generation && matches!(slot.state, State::Quarantined) {
                slot.state = State::Free;
                self.quarantined -= 1;
                self.release(index);
            }
        }
        None
    }

    /// Takes every waiting request out of the table (to fail them) and frees all
    /// slots.
    pub(crate) fn drain_waiting(&mut self) -> Vec<Reply> {
        let mut replies = Vec::with_capacity(self.waiting);
        for (index, slot) in self.slots.iter_mut().enumerate() {
            match std::mem::replace(&mut slot.state, State::Free) {
                State::Free => continue,
                State::Waiting(reply) => replies.push(reply),
                State::Quarantined => {}
            }
            self.released += 1;
            slot.generation = next_generation(slot.generation, self.generations);
            self.free.push_back(index as u32);
        }
        self.waiting = 0;
        self.quarantined = 0;
        self.quarantine.clear();
        replies
    }

    /// How many slots were freed since the last call: window permits to return.
    pub(crate) fn take_released(&mut self) -> usize {
        std::mem::take(&mut self.released)
    }

    fn release(&mut self, index: u32) {
        self.released += 1;
        let slot = &mut self.slots[index as usize];
        slot.generation = next_generation(slot.generation, self.generations);
        self.free.push_back(index);
    }
}

fn next_generation(generation: u64, generations: u64) -> u64 {
    if generation + 1 >= generations {
        0
    } else {
        generation + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::deadline::Deadline;

    fn reply(
        deadline: Option<Instant>,
    ) -> (
        Reply,
        tokio::sync::oneshot::Receiver<super::super::reply::Answer>,
    ) {
        Reply::channel(deadline.map_or(Deadline::Never, Deadline::At))
    }

    fn insert(table: &mut Table) -> u64 {
        table.insert(reply(None).0).expect("free slot")
    }

    #[test]
    fn response_after_reuse_is_not_delivered_to_new_occupant() {
        let mut table = Table::new(1, 1 << 32);
        let (tx, rx) = reply(None);
        let old = table.insert(tx).unwrap();
        drop(rx);
        let now = Instant::now();
        assert_eq!(table.quarantine_abandoned(now), 1);
        assert_eq!(table.expire_quarantine(now), None);
        let (tx, _rx) = reply(None);
        let new = table.insert(tx).unwrap();
        // Same slot (the only one), next generation.
        assert_eq!(new, old + 1);
        assert!(matches!(table.take(old), Matched::Unknown));
        assert!(matches!(table.take(new), Matched::Waiting(_)));
    }

    #[test]
    fn free_slots_are_reused_oldest_first() {
        let mut table = Table::new(3, 1 << 32);
        let ids: Vec<u64> = (0..3).map(|_| insert(&mut table)).collect();
        assert_eq!(ids, [0, 1, 2]);
        table.take(1);
        table.take(0);
        // A window of 3 gets 4 slots. Slot 3 was never used, then slot 1 and slot 0
        // were freed in that order: reuse is oldest-freed first, and a reused slot
        // carries the next generation (with 4 slots, generation 1 adds 4).
        assert_eq!(insert(&mut table), 3);
        assert_eq!(insert(&mut table), 4 + 1);
        assert_eq!(insert(&mut table), 4);
        assert!(table.insert(reply(None).0).is_err());
    }

    #[test]
    fn generations_wrap_within_a_small_tag_space() {
        // 10 ids, 4 slots: 2 generations per slot, ids 0..8 used.
        let mut table = Table::new(3, 10);
        for _ in 0..20 {
            let id = insert(&mut table);
            assert!(id < 8, "id {id} outside the tag space");
            table.take(id);
        }
    }

    #[test]
    fn quarantine_holds_the_window_slot_until_it_ends() {
        let mut table = Table::new(1, 100);
        let (tx, rx) = reply(None);
        table.insert(tx).unwrap();
        drop(rx);
        let start = Instant::now();
        let until = start + std::time::Duration::from_secs(1);
        table.quarantine_abandoned(until);
        assert_eq!(table.take_released(), 0);
        assert_eq!(table.expire_quarantine(start), Some(until));
        assert_eq!(table.take_released(), 0, "still quarantined");
        assert_eq!(table.expire_quarantine(until), None);
        assert_eq!(table.take_released(), 1);
        assert_eq!(table.quarantined(), 0);
    }

    #[test]
    fn overdue_requests_are_taken_and_quarantined() {
        let mut table = Table::new(4, 1 << 32);
        let now = Instant::now();
        let soon = now + std::time::Duration::from_millis(10);
        let later = now + std::time::Duration::from_secs(1);
        let overdue = table.insert(reply(Some(now)).0).unwrap();
        let _pending = table.insert(reply(Some(later)).0).unwrap();
        let _none = table.insert(reply(None).0).unwrap();
        let mut expired = Vec::new();
        let earliest = table.expire_deadlines(now, soon, &mut expired);
        assert_eq!(expired.len(), 1);
        assert_eq!(earliest, Some(later));
        assert_eq!(table.waiting(), 2);
        assert_eq!(table.quarantined(), 1);
        // Its late response is dropped, not delivered.
        assert!(matches!(table.take(overdue), Matched::Late));
    }

    #[test]
    fn every_freed_slot_is_released_exactly_once() {
        let mut table = Table::new(4, 1 << 32);
        let ids: Vec<u64> = (0..4).map(|_| insert(&mut table)).collect();
        table.take(ids[0]);
        table.take(ids[0]); // a duplicate response frees nothing more
        assert_eq!(table.take_released(), 1);
        assert_eq!(table.drain_waiting().len(), 3);
        assert_eq!(table.take_released(), 3);
    }
}

//! The table of requests written on a connection and of the tag values still
//! held for them.
//!
//! A fixed array of slots, at least as many as the window plus the held-tag
//! limit (see [`Layout`]). A request's tag encodes its slot and the slot's
//! generation: `id = generation * slots + index` (a shift and a mask when the
//! slot count is a power of two), so a response finds its request in O(1).
//!
//! **The tag invariant.** A slot is reused only once the request that last
//! occupied it was answered (or never written): a request whose caller gave up
//! keeps its slot — and so its tag value — until its late response arrives or
//! the connection closes. Its quarantine only decides how long it also keeps its
//! unit of the window. So no tag value is ever issued while an earlier request
//! that carried it may still be answered, however small the tag space.
//!
//! Free slots are reused oldest-freed first, each time with the slot's next
//! generation, so a tag value comes back only after about as many requests as
//! the tag space holds: a server's stale repeat of an answer it already gave is
//! dropped (no slot holds that value) unless it comes later than that, when no
//! client could tell it from the answer to the value's new request.
//!
//! Held slots are bounded: the driver retires the connection when
//! [`held_tags`](Table::held_tags) reaches the held-tag limit, and the table has
//! room for a full window beside that many.
//!
//! Deadlines and quarantine ends live in [`DueQueue`]s, so expiring them looks
//! only at the entries that are due.

use std::collections::VecDeque;

use tokio::time::Instant;

use super::{
    cells::Cells,
    config::Layout,
    due::{Due, DueQueue},
    reply::Reply,
    unit::{Returns, Unit},
};

/// The table of waiting, quarantined and held requests.
#[derive(Debug)]
pub(crate) struct Table {
    slots: Vec<Slot>,
    /// Free slot indices, oldest-freed first.
    free: VecDeque<u32>,
    ids: Ids,
    /// The sequence number of the next occupancy (names it in the due queues).
    next_seq: u64,
    waiting: usize,
    /// Abandoned requests holding their tag and their unit of the window.
    quarantined: usize,
    /// Abandoned requests past their quarantine: holding their tag only.
    expired: usize,
    /// Deadlines of waiting requests.
    deadlines: DueQueue,
    /// Quarantine ends of quarantined requests.
    quarantine: DueQueue,
    /// A due queue is compacted when it grows past this (stale entries then
    /// outnumber live ones, which are at most one per slot).
    compact_at: usize,
    /// Units of the window freed since the driver last gave them back.
    returns: Returns,
}

#[derive(Debug)]
struct Slot {
    generation: u64,
    /// The current (or last) occupancy's sequence number.
    seq: u64,
    state: State,
}

#[derive(Debug)]
enum State {
    Free,
    /// Written; the caller awaits the response (until the reply's deadline, if
    /// any). Holds its unit of the window, and when it was sent if the
    /// connection measures its latency.
    Waiting {
        reply: Reply,
        unit: Unit,
        sent: Option<u64>,
    },
    /// The caller gave up; the tag and the unit stay held until the late
    /// response arrives or (the unit only) the quarantine ends.
    Quarantined(Unit),
    /// The quarantine ended without a response: the unit went back to the
    /// window, the tag stays held until the late response or the close.
    Expired,
}

/// How tag ids map to slots and generations.
#[derive(Clone, Copy, Debug)]
struct Ids {
    slots: u64,
    /// `log2(slots)` when `slots` is a power of two.
    shift: Option<u32>,
    /// Generations per slot: `tag space / slots` (at least 1).
    generations: u64,
}

impl Ids {
    #[inline]
    fn id(&self, index: u32, generation: u64) -> u64 {
        match self.shift {
            Some(bits) => generation << bits | u64::from(index),
            None => generation * self.slots + u64::from(index),
        }
    }

    /// The slot index and generation an id names (the generation may be out of
    /// range for an id the table never issued).
    #[inline]
    fn split(&self, id: u64) -> (usize, u64) {
        match self.shift {
            Some(bits) => ((id & (self.slots - 1)) as usize, id >> bits),
            None => ((id % self.slots) as usize, id / self.slots),
        }
    }

    #[inline]
    fn next_generation(&self, generation: u64) -> u64 {
        if generation + 1 >= self.generations {
            0
        } else {
            generation + 1
        }
    }
}

/// What a response's tag matched.
#[derive(Debug)]
pub(crate) enum Matched {
    /// A waiting request: deliver to it (with its send stamp, if any).
    Waiting(Reply, Option<u64>),
    /// A request whose caller gave up: the late response is dropped, the tag
    /// is free again.
    Late,
    /// Nothing: unknown tag, stale generation, or a free slot.
    Unknown,
}

impl Table {
    /// A table for `layout` in a tag space of `space` ids.
    ///
    /// # Panics
    ///
    /// When the layout has no slots, more than `u32::MAX`, or more than
    /// `space`; [`ConnectionConfig::layout`](super::ConnectionConfig) refuses
    /// those first.
    pub(crate) fn new(layout: Layout, space: u64) -> Table {
        let len = layout.slots;
        assert!(
            len > 0 && len <= u32::MAX as usize,
            "slot count out of range"
        );
        assert!(len as u64 <= space, "more slots than tags");
        let slots = len as u64;
        Table {
            slots: (0..len)
                .map(|_| Slot {
                    generation: 0,
                    seq: 0,
                    state: State::Free,
                })
                .collect(),
            free: (0..len as u32).collect(),
            ids: Ids {
                slots,
                shift: slots.is_power_of_two().then(|| slots.trailing_zeros()),
                generations: (space / slots).max(1),
            },
            next_seq: 1,
            waiting: 0,
            quarantined: 0,
            expired: 0,
            deadlines: DueQueue::default(),
            quarantine: DueQueue::default(),
            compact_at: 2 * len + 64,
            returns: Returns::default(),
        }
    }

    /// Requests awaiting a response.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting
    }

    /// Abandoned requests whose tag still holds a unit of the window.
    pub(crate) fn quarantined(&self) -> usize {
        self.quarantined
    }

    /// Tag values held for abandoned requests that were written and never
    /// answered: quarantined ones and those past their quarantine.
    pub(crate) fn held_tags(&self) -> usize {
        self.quarantined + self.expired
    }

    /// Reserves a slot for a request holding `unit` (sent at stamp `sent`, if
    /// the connection measures latency) and returns its id (to encode as the
    /// tag), or gives both back when no slot is free.
    #[inline]
    pub(crate) fn insert(
        &mut self,
        reply: Reply,
        unit: Unit,
        sent: Option<u64>,
    ) -> Result<u64, (Reply, Unit)> {
        let Some(index) = self.free.pop_front() else {
            return Err((reply, unit));
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(at) = reply.deadline.instant() {
            if self.deadlines.len() >= self.compact_at {
                let slots = &self.slots;
                self.deadlines.retain(|d| is_waiting(slots, d));
            }
            self.deadlines.push(Due { at, seq, index });
        }
        let slot = &mut self.slots[index as usize];
        slot.seq = seq;
        slot.state = State::Waiting { reply, unit, sent };
        self.waiting += 1;
        Ok(self.ids.id(index, slot.generation))
    }

    /// The sequence number of the occupancy the last [`insert`](Self::insert)
    /// made (sequence numbers grow with each insert).
    #[inline]
    pub(crate) fn last_seq(&self) -> u64 {
        self.next_seq.wrapping_sub(1)
    }

    /// Whether `id` names an occupied slot whose occupancy began at or after
    /// sequence number `from` (a request not yet wholly written, when `from` is
    /// the oldest such request's).
    pub(crate) fn is_from(&self, id: u64, from: u64) -> bool {
        let (index, generation) = self.ids.split(id);
        self.slots.get(index).is_some_and(|slot| {
            slot.generation == generation && slot.seq >= from && !matches!(slot.state, State::Free)
        })
    }

    /// Releases the slot of `id` after its request could not be written.
    pub(crate) fn remove(&mut self, id: u64) -> Option<Reply> {
        match self.take(id) {
            Matched::Waiting(reply, _) => Some(reply),
            _ => None,
        }
    }

    /// Finds and frees the slot a response's id names.
    #[inline]
    pub(crate) fn take(&mut self, id: u64) -> Matched {
        let (index, generation) = self.ids.split(id);
        let Some(slot) = self.slots.get_mut(index) else {
            return Matched::Unknown;
        };
        if generation != slot.generation {
            return Matched::Unknown;
        }
        let matched = match std::mem::replace(&mut slot.state, State::Free) {
            State::Free => return Matched::Unknown,
            State::Waiting { reply, unit, sent } => {
                self.waiting -= 1;
                self.returns.push(unit);
                Matched::Waiting(reply, sent)
            }
            State::Quarantined(unit) => {
                self.quarantined -= 1;
                self.returns.push(unit);
                Matched::Late
            }
            State::Expired => {
                self.expired -= 1;
                Matched::Late
            }
        };
        slot.generation = self.ids.next_generation(slot.generation);
        self.free.push_back(index as u32);
        matched
    }

    /// Moves every waiting request whose caller has gone into quarantine until
    /// `until`. Returns how many moved.
    pub(crate) fn quarantine_abandoned(&mut self, cells: &Cells, until: Instant) -> usize {
        let mut moved = 0;
        for (index, slot) in self.slots.iter_mut().enumerate() {
            let abandoned =
                matches!(&slot.state, State::Waiting { reply, .. } if reply.is_closed(cells));
            if !abandoned {
                continue;
            }
            if let State::Waiting { unit, .. } = std::mem::replace(&mut slot.state, State::Free) {
                slot.state = State::Quarantined(unit);
            }
            self.quarantine.push(Due {
                at: until,
                seq: slot.seq,
                index: index as u32,
            });
            moved += 1;
        }
        self.waiting -= moved;
        self.quarantined += moved;
        self.compact_quarantine();
        moved
    }

    /// Takes the replies of waiting requests whose deadline is at or before
    /// `now` (to fail them with a timeout), with their send stamps, and
    /// quarantines their tags until `until`, since their responses may still
    /// come.
    pub(crate) fn expire_deadlines(
        &mut self,
        now: Instant,
        until: Instant,
        expired: &mut Vec<(Reply, Option<u64>)>,
    ) {
        while let Some(due) = self.deadlines.pop_due(now) {
            if !is_waiting(&self.slots, &due) {
                continue; // answered (or abandoned) since
            }
            let slot = &mut self.slots[due.index as usize];
            if let State::Waiting { reply, unit, sent } =
                std::mem::replace(&mut slot.state, State::Free)
            {
                slot.state = State::Quarantined(unit);
                expired.push((reply, sent));
            }
            self.quarantine.push(Due {
                at: until,
                seq: due.seq,
                index: due.index,
            });
            self.waiting -= 1;
            self.quarantined += 1;
        }
        self.compact_quarantine();
    }

    /// Ends the quarantines due at or before `now`: their units go back to the
    /// window; their tags stay held.
    pub(crate) fn expire_quarantine(&mut self, now: Instant) {
        while let Some(due) = self.quarantine.pop_due(now) {
            let slot = &mut self.slots[due.index as usize];
            if slot.seq != due.seq || !matches!(slot.state, State::Quarantined(_)) {
                continue; // the late response came first
            }
            if let State::Quarantined(unit) = std::mem::replace(&mut slot.state, State::Expired) {
                self.returns.push(unit);
            }
            self.quarantined -= 1;
            self.expired += 1;
        }
    }

    /// When the next deadline or quarantine comes due (possibly for an entry
    /// that turns out stale: expiring then finds nothing and moves on).
    pub(crate) fn next_due(&self) -> Option<Instant> {
        match (self.deadlines.next(), self.quarantine.next()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Takes every waiting request out of the table (to fail them), with
    /// their send stamps, and frees all slots, held ones included: the
    /// connection is closing, so no late response can reach a later request
    /// on it.
    pub(crate) fn drain_waiting(&mut self) -> Vec<(Reply, Option<u64>)> {
        let mut replies = Vec::with_capacity(self.waiting);
        for (index, slot) in self.slots.iter_mut().enumerate() {
            match std::mem::replace(&mut slot.state, State::Free) {
                State::Free => continue,
                State::Waiting { reply, unit, sent } => {
                    replies.push((reply, sent));
                    self.returns.push(unit);
                }
                State::Quarantined(unit) => self.returns.push(unit),
                State::Expired => {}
            }
            slot.generation = self.ids.next_generation(slot.generation);
            self.free.push_back(index as u32);
        }
        self.waiting = 0;
        self.quarantined = 0;
        self.expired = 0;
        self.deadlines.clear();
        self.quarantine.clear();
        replies
    }

    /// Gives the units of the window freed since the last call back; true if
    /// there were any.
    pub(crate) fn return_units(&mut self) -> bool {
        self.returns.flush()
    }

    fn compact_quarantine(&mut self) {
        if self.quarantine.len() > self.compact_at {
            let slots = &self.slots;
            self.quarantine.retain(|d| {
                let slot = &slots[d.index as usize];
                slot.seq == d.seq && matches!(slot.state, State::Quarantined(_))
            });
        }
    }

    /// Entries in the due queues (bounded by the table's size).
    #[cfg(test)]
    fn due_entries(&self) -> usize {
        self.deadlines.len() + self.quarantine.len()
    }
}

/// Whether `due` names a request still waiting in its slot.
fn is_waiting(slots: &[Slot], due: &Due) -> bool {
    let slot = &slots[due.index as usize];
    slot.seq == due.seq && matches!(slot.state, State::Waiting { .. })
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use tokio::sync::Semaphore;

    use super::*;
    use crate::client::{ConnectionConfig, connection::cells::Claim, deadline::Deadline};
    use anet_proto::{Builder, TagFormat};

    /// A table as a connection would build it, with its window.
    struct Fixture {
        table: Table,
        window: Arc<Semaphore>,
        cells: Arc<Cells>,
        layout: Layout,
    }

    impl Fixture {
        fn new(config: ConnectionConfig) -> Fixture {
            let layout = config.layout().expect("valid configuration");
            let space = config.frame.get_tag_format().id_space();
            Fixture {
                table: Table::new(layout, space),
                window: Arc::new(Semaphore::new(layout.window)),
                cells: Arc::new(Cells::new(2 * layout.window)),
                layout,
            }
        }

        fn with(format: TagFormat, window: usize, held: usize) -> Fixture {
            Fixture::new(
                ConnectionConfig::new()
                    .frame(Builder::new().tag_format(format))
                    .max_in_flight(window)
                    .held_tag_limit(held),
            )
        }

        fn insert_until(&mut self, deadline: Option<Instant>) -> (u64, Claim) {
            let unit = self
                .window
                .clone()
                .try_acquire_owned()
                .expect("window room");
            let (claim, slot) = self.cells.claim();
            let reply = Reply::new(slot, deadline.map_or(Deadline::Never, Deadline::At));
            let id = self.table.insert(reply, unit, None).expect("free slot");
            (id, claim)
        }

        fn insert(&mut self) -> u64 {
            self.insert_until(None).0
        }

        /// Window units free once the freed ones are given back.
        fn room(&mut self) -> usize {
            let _ = self.table.return_units();
            self.window.available_permits()
        }
    }

    #[test]
    fn response_after_reuse_is_not_delivered_to_new_occupant() {
        let mut f = Fixture::with(TagFormat::BINARY_U32, 1, 1);
        let old = f.insert();
        assert!(matches!(f.table.take(old), Matched::Waiting(..)));
        f.room();
        // Slot 0 of 2 was freed after slot 1 (never used); slot 1 comes first.
        let first = f.insert();
        assert!(matches!(f.table.take(first), Matched::Waiting(..)));
        f.room();
        let new = f.insert();
        assert_eq!(new, old + 2, "same slot, next generation");
        assert!(matches!(f.table.take(old), Matched::Unknown));
        assert!(matches!(f.table.take(new), Matched::Waiting(..)));
    }

    #[test]
    fn free_slots_are_reused_oldest_first() {
        // A window of 3 and 1 held tag: 4 slots.
        let mut f = Fixture::with(TagFormat::BINARY_U32, 3, 1);
        let ids: Vec<u64> = (0..3).map(|_| f.insert()).collect();
        assert_eq!(ids, [0, 1, 2]);
        f.table.take(1);
        f.table.take(0);
        f.room();
        // Slot 3 was never used, then slot 1 and slot 0 were freed in that order:
        // reuse is oldest-freed first, and a reused slot carries the next
        // generation (with 4 slots, generation 1 adds 4).
        assert_eq!(f.insert(), 3);
        assert_eq!(f.insert(), 4 + 1);
        f.table.take(2);
        f.room();
        assert_eq!(f.insert(), 4);
    }

    #[test]
    fn slot_counts_that_are_not_powers_of_two_use_the_whole_tag_space() {
        // ascii(1): 10 tags, 5 in flight + 5 held = 10 slots, one generation.
        let mut f = Fixture::new(
            ConnectionConfig::new().frame(Builder::new().tag_format(TagFormat::ascii(1))),
        );
        assert_eq!(f.layout.slots, 10);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..40 {
            let id = f.insert();
            assert!(id < 10, "id {id} outside the tag space");
            seen.insert(id);
            assert!(matches!(f.table.take(id), Matched::Waiting(..)));
            f.room();
        }
        assert_eq!(seen.len(), 10, "every tag is used in turn");
    }

    #[test]
    fn a_held_tag_is_never_issued_again_until_its_late_answer() {
        // ascii(2): 100 tags; 4 in flight, 4 held; 8 slots of 12 generations.
        let mut f = Fixture::with(TagFormat::ascii(2), 4, 4);
        let now = Instant::now();
        let (held, rx) = f.insert_until(None);
        drop(rx);
        assert_eq!(f.table.quarantine_abandoned(&f.cells, now), 1);
        f.table.expire_quarantine(now);
        assert_eq!(f.table.held_tags(), 1);
        assert_eq!(f.room(), 4, "the quarantine's end gave the unit back");
        // Far more requests than the tag space, answered one by one: the held
        // value never comes back while it is held.
        for _ in 0..10_000 {
            let id = f.insert();
            assert_ne!(id, held, "a held tag was issued again");
            assert!(matches!(f.table.take(id), Matched::Waiting(..)));
            f.room();
        }
        assert!(matches!(f.table.take(held), Matched::Late));
        assert_eq!(f.table.held_tags(), 0);
        let reissued = (0..100).map(|_| {
            let id = f.insert();
            f.table.take(id);
            f.room();
            id
        });
        assert!(
            reissued.into_iter().any(|id| id == held),
            "once answered, the value is free again"
        );
    }

    #[test]
    fn quarantine_holds_the_window_unit_until_it_ends() {
        let mut f = Fixture::with(TagFormat::BINARY_U32, 1, 1);
        let (_, rx) = f.insert_until(None);
        drop(rx);
        let start = Instant::now();
        let until = start + Duration::from_secs(1);
        f.table.quarantine_abandoned(&f.cells, until);
        assert_eq!(f.room(), 0);
        f.table.expire_quarantine(start);
        assert_eq!(f.table.next_due(), Some(until));
        assert_eq!(f.room(), 0, "still quarantined");
        f.table.expire_quarantine(until);
        assert_eq!(f.room(), 1);
        assert_eq!(f.table.quarantined(), 0);
        assert_eq!(f.table.held_tags(), 1, "the tag value stays held");
    }

    #[test]
    fn overdue_requests_are_taken_and_quarantined() {
        let mut f = Fixture::with(TagFormat::BINARY_U32, 4, 4);
        let now = Instant::now();
        let soon = now + Duration::from_millis(10);
        let later = now + Duration::from_secs(1);
        let (overdue, _rx1) = f.insert_until(Some(now));
        let (_pending, _rx2) = f.insert_until(Some(later));
        let (_none, _rx3) = f.insert_until(None);
        let mut expired = Vec::new();
        f.table.expire_deadlines(now, soon, &mut expired);
        assert_eq!(expired.len(), 1);
        assert_eq!(f.table.next_due(), Some(soon));
        assert_eq!(f.table.waiting(), 2);
        assert_eq!(f.table.quarantined(), 1);
        // Its late response is dropped, not delivered.
        assert!(matches!(f.table.take(overdue), Matched::Late));
        assert_eq!(f.room(), 2);
    }

    #[test]
    fn expiring_deadlines_looks_only_at_due_entries_and_skips_answered_ones() {
        let mut f = Fixture::with(TagFormat::BINARY_U32, 64, 64);
        let now = Instant::now();
        let mut ids = Vec::new();
        for i in 0..64u64 {
            let (id, rx) = f.insert_until(Some(now + Duration::from_millis(i)));
            ids.push((id, rx));
        }
        // The first ten are answered before their deadlines.
        for (id, _) in &ids[..10] {
            assert!(matches!(f.table.take(*id), Matched::Waiting(..)));
        }
        let mut expired = Vec::new();
        f.table
            .expire_deadlines(now + Duration::from_millis(19), now, &mut expired);
        assert_eq!(expired.len(), 10, "deadlines 10..=19 ms");
        assert_eq!(f.table.waiting(), 44);
    }

    #[test]
    fn every_freed_unit_goes_back_exactly_once() {
        let mut f = Fixture::with(TagFormat::BINARY_U32, 4, 4);
        let ids: Vec<u64> = (0..4).map(|_| f.insert()).collect();
        f.table.take(ids[0]);
        f.table.take(ids[0]); // a duplicate response frees nothing more
        assert_eq!(f.room(), 1);
        assert_eq!(f.table.drain_waiting().len(), 3);
        assert_eq!(f.room(), 4);
    }

    #[test]
    fn due_queues_stay_bounded_whatever_the_answers_and_the_quarantine() {
        let mut f = Fixture::with(TagFormat::BINARY_U32, 8, 8);
        let now = Instant::now();
        let forever = now + Duration::from_secs(86_400 * 365);
        for round in 0..10_000u64 {
            // A request with a far deadline, answered at once.
            let (id, _rx) = f.insert_until(Some(forever));
            f.table.take(id);
            // A request abandoned into a quarantine without end, then answered late.
            let (id, rx) = f.insert_until(Some(forever));
            drop(rx);
            f.table.quarantine_abandoned(&f.cells, forever);
            assert!(matches!(f.table.take(id), Matched::Late), "round {round}");
            f.room();
        }
        let bound = 2 * (2 * f.layout.slots + 64);
        assert!(
            f.table.due_entries() <= bound,
            "{} due entries for {} slots",
            f.table.due_entries(),
            f.layout.slots
        );
    }
}

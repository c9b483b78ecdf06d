//! Where answers wait for their callers: cells the connection owns, reused
//! from one request to the next, so that a request allocates nothing for its
//! answer.
//!
//! Each call claims a [`Cell`] for its response future (a [`Claim`]) and hands
//! the driver the other side (a [`Reply`](super::reply::Reply)). The driver
//! writes the answer into the cell and wakes the future; the future takes it.
//!
//! **A cell follows its future, not the request's unit of the window.** The
//! future gives its cell back when it takes the answer or is dropped — by
//! ownership: dropping the [`Claim`] gives it back. A cancelled request's cell
//! is therefore free at once, while its unit and tag stay held in the table;
//! the next call may claim the same cell while the driver still holds the
//! cancelled request's reply.
//!
//! **No answer reaches the wrong occupant.** Each claim of a cell is a new
//! *occupancy*, named by the cell's occupant number: odd while claimed, even
//! while free, advanced at every claim and every release (the release under
//! the cell's lock). A reply remembers the occupancy it was made for and
//! writes only while the cell still holds that occupancy, checked under the
//! same lock; a late answer for a cancelled request finds a newer number and
//! is dropped (the reply reports the caller gone). A claim moves the number
//! from even to odd by compare-and-swap, so even a corrupted free list could
//! not hand one occupied cell to two callers.
//!
//! **Bounded, and allocated as used.** A connection has room for twice its
//! window of cells (a future holds its cell from the call until it reads the
//! answer, a little longer than its unit), made 64 at a time when first
//! needed. Should a caller hold more unread futures than that, further calls
//! get a cell of their own on the heap (freed with the future): nothing blocks
//! and nothing grows without bound.

use std::{
    fmt,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock, PoisonError,
        atomic::{
            AtomicU32, AtomicU64,
            Ordering::{AcqRel, Acquire, Relaxed, Release},
        },
    },
    task::{Context, Poll, Waker},
};

use super::reply::Answer;

/// Cells made together when first needed.
const CHUNK: usize = 64;

/// No cell (the end of the free list).
const NIL: u32 = u32::MAX;

/// The answer cells of one connection.
pub(crate) struct Cells {
    /// `capacity / CHUNK` chunks, each made when its first cell is needed.
    chunks: Box<[OnceLock<Box<[Cell]>>]>,
    /// Cells the chunks hold in all.
    capacity: u32,
    /// Cells handed out at least once: the next never-used one.
    fresh: AtomicU32,
    /// The free list, a stack of cell indices linked through [`Cell::next`]:
    /// the low 32 bits name the top cell (or [`NIL`]), the high 32 bits count
    /// changes so that a pop racing a pop and a push of the same cell fails
    /// its compare-and-swap instead of linking a stale successor.
    free: AtomicU64,
}

/// One answer's place.
pub(crate) struct Cell {
    /// The occupancy: odd while a future holds the cell, even while it is free.
    occupant: AtomicU64,
    /// The next free cell while this one is free.
    next: AtomicU32,
    state: Mutex<State>,
}

#[derive(Debug)]
enum State {
    /// No answer yet, and no future waiting (or the cell is free).
    Empty,
    /// No answer yet; wake this when it comes.
    Waiting(Waker),
    /// The answer, until the future takes it.
    Answered(Answer),
}

/// Where a cell lives: among the connection's cells, or on its own when they
/// were all taken.
enum Home {
    Shared(Arc<Cells>, u32),
    Own(Arc<Cell>),
}

/// A response future's hold on its cell; dropping it gives the cell back.
pub(crate) struct Claim {
    /// `None` once the answer was taken (and the cell given back).
    home: Option<Home>,
    occupant: u64,
}

/// The driver's side of a claimed cell: where to write the answer.
pub(crate) struct Slot {
    home: Home,
    occupant: u64,
}

impl Cell {
    fn new(occupant: u64) -> Cell {
        Cell {
            occupant: AtomicU64::new(occupant),
            next: AtomicU32::new(NIL),
            state: Mutex::new(State::Empty),
        }
    }

    /// The state, locked. Nothing panics while the lock is held, but a
    /// poisoned lock would still hold a consistent state: use it.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Cells {
    /// Room for `capacity` cells (rounded up to whole chunks), none made yet.
    pub(crate) fn new(capacity: usize) -> Cells {
        let chunks = capacity
            .div_ceil(CHUNK)
            .clamp(1, (NIL as usize - 1) / CHUNK);
        Cells {
            chunks: (0..chunks).map(|_| OnceLock::new()).collect(),
            capacity: (chunks * CHUNK) as u32,
            fresh: AtomicU32::new(0),
            free: AtomicU64::new(u64::from(NIL)),
        }
    }

    /// Claims a free cell for a new request: the future's side and the
    /// driver's side of it.
    #[inline]
    pub(crate) fn claim(self: &Arc<Cells>) -> (Claim, Slot) {
        let (home, occupant) = self.take().unwrap_or_else(|| {
            // Every cell is held (by futures not yet read): one of its own.
            (Home::Own(Arc::new(Cell::new(1))), 1)
        });
        let slot = Slot {
            home: home.clone(),
            occupant,
        };
        (
            Claim {
                home: Some(home),
                occupant,
            },
            slot,
        )
    }

    /// A free cell, moved to its next occupancy.
    #[inline]
    fn take(self: &Arc<Cells>) -> Option<(Home, u64)> {
        loop {
            let index = self.pop().or_else(|| self.make())?;
            let cell = self.cell(index);
            let free = cell.occupant.load(Acquire);
            // A free cell's number is even; only a claim makes it odd.
            if free % 2 == 0
                && cell
                    .occupant
                    .compare_exchange(free, free + 1, AcqRel, Acquire)
                    .is_ok()
            {
                return Some((Home::Shared(self.clone(), index), free + 1));
            }
            // Held by someone (impossible unless the free list was
            // corrupted): never share it; leave it out and try another.
            debug_assert!(false, "a held cell was on the free list");
        }
    }

    /// Pops the free list.
    #[inline]
    fn pop(&self) -> Option<u32> {
        let mut head = self.free.load(Acquire);
        loop {
            let index = head as u32;
            if index == NIL {
                return None;
            }
            let next = self.cell(index).next.load(Relaxed);
            let new = bump(head) | u64::from(next);
            match self.free.compare_exchange_weak(head, new, Acquire, Acquire) {
                Ok(_) => return Some(index),
                Err(now) => head = now,
            }
        }
    }

    /// Pushes a free cell onto the free list.
    #[inline]
    fn push(&self, index: u32) {
        let cell = self.cell(index);
        let mut head = self.free.load(Relaxed);
        loop {
            cell.next.store(head as u32, Relaxed);
            let new = bump(head) | u64::from(index);
            match self.free.compare_exchange_weak(head, new, Release, Relaxed) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// A cell never handed out before, making its chunk if needed; `None`
    /// when all have been.
    #[cold]
    fn make(&self) -> Option<u32> {
        let capacity = self.capacity;
        let index = self
            .fresh
            .fetch_update(Relaxed, Relaxed, |n| (n < capacity).then_some(n + 1))
            .ok()?;
        self.chunks[index as usize / CHUNK]
            .get_or_init(|| (0..CHUNK).map(|_| Cell::new(0)).collect());
        Some(index)
    }

    /// The cell `index` names (handed out at least once, so its chunk exists).
    #[inline]
    fn cell(&self, index: u32) -> &Cell {
        let index = index as usize;
        let chunk = self.chunks[index / CHUNK]
            .get()
            .expect("a handed-out cell's chunk exists");
        &chunk[index % CHUNK]
    }

    /// Cells made so far (for tests).
    #[cfg(test)]
    pub(crate) fn made(&self) -> u32 {
        self.fresh.load(Relaxed)
    }
}

/// The free list's head with its change count advanced and no cell named.
#[inline]
fn bump(head: u64) -> u64 {
    ((head >> 32).wrapping_add(1)) << 32
}

impl Home {
    #[inline]
    fn cell(&self) -> &Cell {
        match self {
            Home::Shared(cells, index) => cells.cell(*index),
            Home::Own(cell) => cell,
        }
    }
}

impl Clone for Home {
    #[inline]
    fn clone(&self) -> Home {
        match self {
            Home::Shared(cells, index) => Home::Shared(cells.clone(), *index),
            Home::Own(cell) => Home::Own(cell.clone()),
        }
    }
}

impl Claim {
    /// The answer, once the driver has written it; the cell is then given
    /// back.
    ///
    /// # Panics
    ///
    /// When polled again after it returned the answer.
    #[inline]
    pub(crate) fn poll_answer(&mut self, cx: &mut Context<'_>) -> Poll<Answer> {
        let home = self
            .home
            .as_ref()
            .expect("ConnectionFuture polled after completion");
        let cell = home.cell();
        let mut state = cell.lock();
        match std::mem::replace(&mut *state, State::Empty) {
            State::Answered(answer) => {
                // Released under the lock: from now on no reply of this
                // occupancy can write here.
                cell.occupant.store(self.occupant + 1, Release);
                drop(state);
                self.give_back();
                Poll::Ready(answer)
            }
            State::Waiting(waker) if waker.will_wake(cx.waker()) => {
                *state = State::Waiting(waker);
                Poll::Pending
            }
            State::Waiting(_) | State::Empty => {
                *state = State::Waiting(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Puts the (released) cell back on its free list.
    #[inline]
    fn give_back(&mut self) {
        if let Some(Home::Shared(cells, index)) = self.home.take() {
            cells.push(index);
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let Some(home) = &self.home else {
            return; // answered and given back
        };
        // The caller gave up: end the occupancy (the driver's reply sees it
        // gone), and drop what the cell held after unlocking.
        let cell = home.cell();
        let mut state = cell.lock();
        let held = std::mem::replace(&mut *state, State::Empty);
        cell.occupant.store(self.occupant + 1, Release);
        drop(state);
        drop(held);
        self.give_back();
    }
}

impl Slot {
    /// Whether the future gave its cell up (dropped before an answer).
    #[inline]
    pub(crate) fn is_closed(&self) -> bool {
        self.home.cell().occupant.load(Acquire) != self.occupant
    }

    /// Writes the answer and wakes the future; false (and the answer dropped)
    /// if the future is gone.
    #[inline]
    pub(crate) fn fill(&self, answer: Answer) -> bool {
        let cell = self.home.cell();
        let mut state = cell.lock();
        if cell.occupant.load(Relaxed) != self.occupant {
            return false;
        }
        match std::mem::replace(&mut *state, State::Answered(answer)) {
            State::Waiting(waker) => {
                drop(state);
                waker.wake();
            }
            State::Empty => {}
            // One slot per occupancy, and a slot fills once: never here.
            State::Answered(_) => debug_assert!(false, "a cell answered twice"),
        }
        true
    }
}

impl fmt::Debug for Cells {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cells")
            .field("capacity", &self.capacity)
            .field("made", &self.fresh.load(Relaxed))
            .finish()
    }
}

impl fmt::Debug for Home {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Home::Shared(_, index) => write!(f, "Shared({index})"),
            Home::Own(_) => f.write_str("Own"),
        }
    }
}

impl fmt::Debug for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claim")
            .field("home", &self.home)
            .field("occupant", &self.occupant)
            .finish()
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("home", &self.home)
            .field("occupant", &self.occupant)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use bytes::Bytes;

    use super::*;
    use crate::Kind;
    use crate::client::{connection::reply::Reply, deadline::Deadline};

    fn poll(claim: &mut Claim) -> Poll<Answer> {
        claim.poll_answer(&mut Context::from_waker(Waker::noop()))
    }

    fn payload(answer: Poll<Answer>) -> Bytes {
        match answer {
            Poll::Ready(Ok(payload)) => payload,
            other => panic!("expected an answer, got {other:?}"),
        }
    }

    fn index(claim: &Claim) -> Option<u32> {
        match claim.home {
            Some(Home::Shared(_, index)) => Some(index),
            _ => None,
        }
    }

    #[test]
    fn a_late_answer_for_a_dropped_future_never_reaches_the_next_occupant() {
        let cells = Arc::new(Cells::new(64));
        let (first, stale) = cells.claim();
        let first_index = index(&first);
        drop(first);
        assert!(stale.is_closed(), "the driver sees the caller gone");
        let (mut next, fresh) = cells.claim();
        assert_eq!(index(&next), first_index, "the same cell, reused at once");
        assert!(!fresh.is_closed());
        // The cancelled request's answer comes after the cell changed hands.
        assert!(!stale.fill(Ok(Bytes::from_static(b"stale"))));
        assert!(poll(&mut next).is_pending(), "nothing for the new occupant");
        assert!(fresh.fill(Ok(Bytes::from_static(b"fresh"))));
        assert_eq!(payload(poll(&mut next)), "fresh");
        // And after this occupancy ended too, neither reply can write.
        assert!(!stale.fill(Ok(Bytes::from_static(b"stale"))));
        assert!(!fresh.fill(Ok(Bytes::from_static(b"again"))));
    }

    #[test]
    fn an_answer_taken_gives_the_cell_back_and_a_late_duplicate_is_refused() {
        let cells = Arc::new(Cells::new(64));
        let (mut claim, slot) = cells.claim();
        let first = index(&claim);
        assert!(poll(&mut claim).is_pending());
        assert!(slot.fill(Ok(Bytes::from_static(b"one"))));
        assert_eq!(payload(poll(&mut claim)), "one");
        assert!(slot.is_closed(), "the occupancy ended with the answer");
        let (again, _) = cells.claim();
        assert_eq!(index(&again), first);
        assert_eq!(cells.made(), 1, "one cell serves one caller at a time");
    }

    #[test]
    fn a_reply_dropped_unanswered_fails_its_future_as_connection_lost() {
        let cells = Arc::new(Cells::new(64));
        let (mut claim, slot) = cells.claim();
        drop(Reply::new(slot, Deadline::Never));
        match poll(&mut claim) {
            Poll::Ready(Err(failure)) => assert_eq!(failure.error.kind(), Kind::ConnectionLost),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn cells_run_out_into_cells_of_their_own_and_come_back() {
        let cells = Arc::new(Cells::new(64));
        let claims: Vec<(Claim, Slot)> = (0..65).map(|_| cells.claim()).collect();
        assert_eq!(cells.made(), 64);
        assert!(index(&claims[63].0).is_some());
        assert!(index(&claims[64].0).is_none(), "the 65th has its own cell");
        for (i, (_, slot)) in claims.iter().enumerate() {
            assert!(slot.fill(Ok(Bytes::from(i.to_string()))));
        }
        for (i, (mut claim, _)) in claims.into_iter().enumerate() {
            assert_eq!(payload(poll(&mut claim)), i.to_string());
        }
        let (claim, _) = cells.claim();
        assert!(index(&claim).is_some(), "shared cells are free again");
        assert_eq!(cells.made(), 64);
    }

    #[test]
    fn claims_racing_on_threads_each_get_their_own_answer() {
        let cells = Arc::new(Cells::new(64));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let cells = cells.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u64 {
                        let (mut claim, slot) = cells.claim();
                        let (dropped, stale) = cells.claim();
                        drop(dropped);
                        assert!(!stale.fill(Ok(Bytes::from_static(b"stale"))));
                        let mine = Bytes::from((t << 32 | i).to_be_bytes().to_vec());
                        assert!(slot.fill(Ok(mine.clone())));
                        assert_eq!(payload(poll(&mut claim)), mine);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("no misdelivery");
        }
        assert!(cells.made() <= 8, "{} cells for 8 at a time", cells.made());
    }
}

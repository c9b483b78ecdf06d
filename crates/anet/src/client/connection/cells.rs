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
//! not hand one occupied cell to two callers (a claim that meets a held cell
//! there takes a cell of its own instead).
//!
//! **Nothing waits forever.** The driver answers every request it takes;
//! should it end without doing so (its task panicked or was aborted, even
//! before it first ran), a guard it holds closes the cells as it goes, and
//! every future still without an answer then fails with
//! [`Kind::ConnectionLost`]. (The driver names a cell by index, resolved
//! against its connection's cells, so a request costs no reference count
//! for it; only a cell made on its own is reached through its reply, whose
//! drop fails it.)
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
            AtomicBool, AtomicU32, AtomicU64,
            Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst},
        },
    },
    task::{Context, Poll, Waker},
};

use super::reply::{Answer, Failure};
use crate::client::lanes::Padded;
use crate::{Error, Kind};

/// Cells made together when first needed.
const CHUNK: usize = 64;

/// Cells made together (a fixed size: indexing into it needs no bounds check).
type Chunk = [Cell; CHUNK];

/// Bits of the free list's head that name its top cell; the rest (42) count
/// changes. A connection has at most twice its largest window (2^20) of
/// cells, so 22 bits name them all; the 42-bit count comes round after 2^42
/// pops and pushes, 25 days at a million requests a second (two changes
/// each), where 32 bits would take 36 minutes.
const INDEX_BITS: u32 = 22;

/// The index bits of the free list's head.
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;

/// No cell (the end of the free list).
const NIL: u32 = INDEX_MASK as u32;

// Every cell of the largest window has an index below `NIL`.
const _: () = assert!(2 * super::config::MAX_WINDOW < NIL as usize);

/// The answer cells of one connection.
pub(crate) struct Cells {
    /// `capacity / CHUNK` chunks, each made when its first cell is needed.
    chunks: Box<[OnceLock<Box<Chunk>>]>,
    /// Cells the chunks hold in all.
    capacity: u32,
    /// Cells handed out at least once: the next never-used one.
    fresh: AtomicU32,
    /// The free list, a stack of cell indices linked through [`Cell::next`]:
    /// the low [`INDEX_BITS`] bits name the top cell (or [`NIL`]), the high
    /// bits count changes so that a pop racing a pop and a push of the same
    /// cell fails its compare-and-swap instead of linking a stale successor.
    /// Every claim and every release updates it: on a cache line of its own,
    /// away from the fields every request only reads.
    free: Padded<AtomicU64>,
    /// Set when the driver has ended: no answer will come any more, and a
    /// future still without one fails.
    closed: AtomicBool,
    /// Set once the free list was found to name a held cell (reported once).
    corrupt: AtomicBool,
}

/// One answer's place, on cache lines of its own: the callers and the driver
/// of neighbouring cells, often on different threads, do not take each
/// other's lines.
#[repr(align(128))]
pub(crate) struct Cell {
    /// The occupancy: odd while a future holds the cell, even while it is free.
    occupant: AtomicU64,
    /// The next free cell while this one is free.
    next: AtomicU32,
    state: Mutex<State>,
}

/// What a cell holds for its occupancy.
#[derive(Debug, Default)]
struct State {
    /// The answer, until the future takes it.
    answer: Option<Answer>,
    /// The future waiting for the answer, if it was polled before it came.
    waker: Option<Waker>,
}

/// Where a future's cell lives: among its connection's cells, or on its own
/// when they were all taken.
enum Home {
    Shared(Arc<Cells>, u32),
    Own(Arc<Cell>),
}

/// Where a reply's cell lives: the driver names a shared cell by index
/// (resolved against its own connection's cells: no reference count per
/// request), a cell of its own by reference.
enum Place {
    Shared(u32),
    Own(Arc<Cell>),
}

/// A response future's hold on its cell; dropping it gives the cell back.
pub(crate) struct Claim {
    /// `None` once the answer was taken (and the cell given back).
    home: Option<Home>,
    occupant: u64,
}

/// The driver's side of a claimed cell: where to write the answer. Its
/// methods take the cells of the connection whose handle made it.
pub(crate) struct Slot {
    place: Place,
    occupant: u64,
}

impl Cell {
    fn new(occupant: u64) -> Cell {
        Cell {
            occupant: AtomicU64::new(occupant),
            next: AtomicU32::new(NIL),
            state: Mutex::new(State::default()),
        }
    }

    /// The state, locked. Nothing panics while the lock is held, but a
    /// poisoned lock would still hold a consistent state: use it.
    #[inline]
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the answer of `occupant` and wakes its future; false (and the
    /// answer dropped) if the cell has moved on to another occupancy.
    #[inline]
    fn fill(&self, occupant: u64, answer: Answer) -> bool {
        let mut state = self.lock();
        if self.occupant.load(Relaxed) != occupant {
            return false;
        }
        // One slot per occupancy, and a slot fills once.
        debug_assert!(state.answer.is_none(), "a cell answered twice");
        state.answer = Some(answer);
        if let Some(waker) = state.waker.take() {
            drop(state);
            waker.wake();
        }
        true
    }
}

impl Cells {
    /// Room for `capacity` cells (rounded up to whole chunks), none made yet.
    pub(crate) fn new(capacity: usize) -> Cells {
        let chunks = capacity.div_ceil(CHUNK).clamp(1, NIL as usize / CHUNK);
        Cells {
            chunks: (0..chunks).map(|_| OnceLock::new()).collect(),
            capacity: (chunks * CHUNK) as u32,
            fresh: AtomicU32::new(0),
            free: Padded(AtomicU64::new(u64::from(NIL))),
            closed: AtomicBool::new(false),
            corrupt: AtomicBool::new(false),
        }
    }

    /// Claims a free cell for a new request: the future's side and the
    /// driver's side of it.
    #[inline]
    pub(crate) fn claim(self: &Arc<Cells>) -> (Claim, Slot) {
        match self.take() {
            Some((index, occupant)) => (
                Claim {
                    home: Some(Home::Shared(self.clone(), index)),
                    occupant,
                },
                Slot {
                    place: Place::Shared(index),
                    occupant,
                },
            ),
            None => {
                // Every cell is held (by futures not yet read): one of its own.
                let cell = Arc::new(Cell::new(1));
                (
                    Claim {
                        home: Some(Home::Own(cell.clone())),
                        occupant: 1,
                    },
                    Slot {
                        place: Place::Own(cell),
                        occupant: 1,
                    },
                )
            }
        }
    }

    /// A free cell, moved to its next occupancy; `None` when there is none.
    #[inline]
    fn take(&self) -> Option<(u32, u64)> {
        let (index, cell) = match self.pop() {
            Some(popped) => popped,
            None => {
                let index = self.make()?;
                (index, self.cell(index))
            }
        };
        // A free cell's number is even; only a claim makes it odd, by
        // compare-and-swap, so that should a corrupted free list hand one
        // cell to two claims at once, only one of them takes it.
        let free = cell.occupant.load(Acquire);
        if free % 2 == 0
            && cell
                .occupant
                .compare_exchange(free, free + 1, AcqRel, Acquire)
                .is_ok()
        {
            return Some((index, free + 1));
        }
        // Held (impossible unless the free list was corrupted): never share
        // it, and do not pop on (a corrupted list may link a held cell to
        // itself): this claim takes a cell of its own. The popped cell goes
        // back on the list when its holder gives it back.
        self.report_corruption();
        None
    }

    /// Says once that the free list was found corrupted.
    #[cold]
    fn report_corruption(&self) {
        if !self.corrupt.swap(true, Relaxed) {
            tracing::error!(
                "answer cells: the free list named a held cell; \
                 claims that meet it take cells of their own"
            );
        }
    }

    /// Pops the free list: the top cell's index, and the cell.
    #[inline]
    fn pop(&self) -> Option<(u32, &Cell)> {
        let mut head = self.free.0.load(Acquire);
        loop {
            let index = (head & INDEX_MASK) as u32;
            if index == NIL {
                return None;
            }
            let cell = self.cell(index);
            let next = cell.next.load(Relaxed);
            let new = bump(head) | u64::from(next);
            match self
                .free
                .0
                .compare_exchange_weak(head, new, Acquire, Acquire)
            {
                Ok(_) => return Some((index, cell)),
                Err(now) => head = now,
            }
        }
    }

    /// Pushes a free cell, `cell` at `index`, onto the free list.
    #[inline]
    fn push(&self, index: u32, cell: &Cell) {
        let mut head = self.free.0.load(Relaxed);
        loop {
            cell.next.store((head & INDEX_MASK) as u32, Relaxed);
            let new = bump(head) | u64::from(index);
            match self
                .free
                .0
                .compare_exchange_weak(head, new, Release, Relaxed)
            {
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
            .get_or_init(|| Box::new(std::array::from_fn(|_| Cell::new(0))));
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

    /// The driver has ended (however: finished, panicked, its task
    /// aborted): every future still without an answer fails with
    /// [`Kind::ConnectionLost`] when it is next polled, and those waiting
    /// are woken for it. (The driver answers every request it takes before
    /// it finishes; this is for an abnormal end.)
    pub(crate) fn close(&self) {
        // Before the locks below: a future that polls after one of them sees it.
        self.closed.store(true, SeqCst);
        // Chunks being made now hold no waiting future yet (a future that
        // claims a cell there sees `closed` when it polls).
        for cell in self
            .chunks
            .iter()
            .filter_map(OnceLock::get)
            .flat_map(|c| c.iter())
        {
            let waker = cell.lock().waker.take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
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
    // The count's top bit shifts out as it comes round.
    ((head >> INDEX_BITS) + 1) << INDEX_BITS
}

/// The answer of a request whose driver ended without answering it.
fn driver_stopped() -> Answer {
    Err(Box::new(Failure {
        error: Error::with_source(Kind::ConnectionLost, "connection driver stopped"),
        deadline: None,
        request: None,
    }))
}

impl Home {
    #[inline]
    fn cell(&self) -> &Cell {
        match self {
            Home::Shared(cells, index) => cells.cell(*index),
            Home::Own(cell) => cell,
        }
    }

    /// Puts `cell`, this home's cell, released, back on its free list (a cell
    /// of its own is freed with its last reference instead).
    #[inline]
    fn give_back(&self, cell: &Cell) {
        if let Home::Shared(cells, index) = self {
            cells.push(*index, cell);
        }
    }

    /// Whether the driver has ended (a cell of its own is answered by its
    /// reply's drop instead).
    #[inline]
    fn is_closed(&self) -> bool {
        match self {
            Home::Shared(cells, _) => cells.closed.load(SeqCst),
            Home::Own(_) => false,
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
        let answer = match state.answer.take() {
            Some(answer) => answer,
            None if home.is_closed() => driver_stopped(),
            None => {
                match &state.waker {
                    Some(waker) if waker.will_wake(cx.waker()) => {}
                    _ => state.waker = Some(cx.waker().clone()),
                }
                return Poll::Pending;
            }
        };
        // Released under the lock: from now on no reply of this occupancy
        // can write here.
        let waker = state.waker.take();
        cell.occupant.store(self.occupant + 1, Release);
        drop(state);
        drop(waker);
        home.give_back(cell);
        self.home = None;
        Poll::Ready(answer)
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
        let held = std::mem::take(&mut *state);
        cell.occupant.store(self.occupant + 1, Release);
        drop(state);
        drop(held);
        home.give_back(cell);
    }
}

impl Slot {
    #[inline]
    fn cell<'a>(&'a self, cells: &'a Cells) -> &'a Cell {
        match &self.place {
            Place::Shared(index) => cells.cell(*index),
            Place::Own(cell) => cell,
        }
    }

    /// Whether the future gave its cell up (dropped before an answer).
    #[inline]
    pub(crate) fn is_closed(&self, cells: &Cells) -> bool {
        self.cell(cells).occupant.load(Acquire) != self.occupant
    }

    /// Writes the answer and wakes the future; false (and the answer dropped)
    /// if the future is gone.
    #[inline]
    pub(crate) fn fill(&self, cells: &Cells, answer: Answer) -> bool {
        self.cell(cells).fill(self.occupant, answer)
    }

    /// Fails the future as [`Kind::ConnectionLost`] if its cell is one of its
    /// own and it still waits (for a reply dropped unanswered; a shared cell
    /// is failed by [`Cells::close`] instead).
    pub(crate) fn abandon(&self) {
        if let Place::Own(cell) = &self.place {
            cell.fill(self.occupant, driver_stopped());
        }
    }
}

impl fmt::Debug for Cells {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cells")
            .field("capacity", &self.capacity)
            .field("made", &self.fresh.load(Relaxed))
            .field("closed", &self.closed.load(Relaxed))
            .finish()
    }
}

impl fmt::Debug for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let home = match &self.home {
            Some(Home::Shared(_, index)) => format!("Shared({index})"),
            Some(Home::Own(_)) => "Own".to_owned(),
            None => "Given back".to_owned(),
        };
        f.debug_struct("Claim")
            .field("home", &home)
            .field("occupant", &self.occupant)
            .finish()
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Slot");
        match &self.place {
            Place::Shared(index) => d.field("shared", index),
            Place::Own(_) => d.field("own", &true),
        };
        d.field("occupant", &self.occupant).finish()
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
        assert!(stale.is_closed(&cells), "the driver sees the caller gone");
        let (mut next, fresh) = cells.claim();
        assert_eq!(index(&next), first_index, "the same cell, reused at once");
        assert!(!fresh.is_closed(&cells));
        // The cancelled request's answer comes after the cell changed hands.
        assert!(!stale.fill(&cells, Ok(Bytes::from_static(b"stale"))));
        assert!(poll(&mut next).is_pending(), "nothing for the new occupant");
        assert!(fresh.fill(&cells, Ok(Bytes::from_static(b"fresh"))));
        assert_eq!(payload(poll(&mut next)), "fresh");
        // And after this occupancy ended too, neither reply can write.
        assert!(!stale.fill(&cells, Ok(Bytes::from_static(b"stale"))));
        assert!(!fresh.fill(&cells, Ok(Bytes::from_static(b"again"))));
    }

    #[test]
    fn an_answer_taken_gives_the_cell_back_and_a_late_duplicate_is_refused() {
        let cells = Arc::new(Cells::new(64));
        let (mut claim, slot) = cells.claim();
        let first = index(&claim);
        assert!(poll(&mut claim).is_pending());
        assert!(slot.fill(&cells, Ok(Bytes::from_static(b"one"))));
        assert_eq!(payload(poll(&mut claim)), "one");
        assert!(
            slot.is_closed(&cells),
            "the occupancy ended with the answer"
        );
        let (again, _) = cells.claim();
        assert_eq!(index(&again), first);
        assert_eq!(cells.made(), 1, "one cell serves one caller at a time");
    }

    fn lost(answer: Poll<Answer>) {
        match answer {
            Poll::Ready(Err(failure)) => assert_eq!(failure.error.kind(), Kind::ConnectionLost),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn closing_fails_every_future_left_without_an_answer_and_keeps_answers() {
        let cells = Arc::new(Cells::new(64));
        let (mut waiting, _) = cells.claim();
        let (mut answered, slot) = cells.claim();
        assert!(poll(&mut waiting).is_pending());
        assert!(slot.fill(&cells, Ok(Bytes::from_static(b"kept"))));
        // The driver went without answering `waiting` (its task aborted).
        cells.close();
        lost(poll(&mut waiting));
        assert_eq!(payload(poll(&mut answered)), "kept");
    }

    #[test]
    fn closing_while_threads_make_cells_leaves_no_future_waiting() {
        for _ in 0..20 {
            let cells = Arc::new(Cells::new(1024));
            let claimers: Vec<_> = (0..2)
                .map(|_| {
                    let cells = cells.clone();
                    std::thread::spawn(move || {
                        // Those still waiting (the others saw the close).
                        (0..300)
                            .filter_map(|_| {
                                let (mut claim, _slot) = cells.claim();
                                match poll(&mut claim) {
                                    Poll::Pending => Some(claim),
                                    answer => {
                                        lost(answer);
                                        None
                                    }
                                }
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            cells.close();
            for claimer in claimers {
                for mut claim in claimer.join().expect("claims") {
                    lost(poll(&mut claim));
                }
            }
        }
    }

    #[test]
    fn a_reply_with_a_cell_of_its_own_dropped_unanswered_fails_its_future() {
        let cells = Arc::new(Cells::new(64));
        let mut claims: Vec<(Claim, Slot)> = (0..65).map(|_| cells.claim()).collect();
        let (mut own, slot) = claims.pop().expect("65 claims");
        assert!(index(&own).is_none());
        drop(Reply::new(slot, Deadline::Never));
        lost(poll(&mut own));
    }

    #[test]
    fn cells_run_out_into_cells_of_their_own_and_come_back() {
        let cells = Arc::new(Cells::new(64));
        let claims: Vec<(Claim, Slot)> = (0..65).map(|_| cells.claim()).collect();
        assert_eq!(cells.made(), 64);
        assert!(index(&claims[63].0).is_some());
        assert!(index(&claims[64].0).is_none(), "the 65th has its own cell");
        for (i, (_, slot)) in claims.iter().enumerate() {
            assert!(slot.fill(&cells, Ok(Bytes::from(i.to_string()))));
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
                        assert!(!stale.fill(&cells, Ok(Bytes::from_static(b"stale"))));
                        let mine = Bytes::from((t << 32 | i).to_be_bytes().to_vec());
                        assert!(slot.fill(&cells, Ok(mine.clone())));
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

    /// `head` as it reads after `changes` more pops and pushes that leave
    /// the same cell on top (the change count advanced, wrapping as it does).
    fn after_changes(head: u64, changes: u64) -> u64 {
        let one = bump(0);
        let index = head & (one - 1);
        (head & !(one - 1)).wrapping_add(one.wrapping_mul(changes)) | index
    }

    /// The ABA the change count guards against: a pop reads the head and
    /// its successor, stalls, and meanwhile the top cell is claimed, its
    /// successor claimed (held), and the top cell given back. The stalled
    /// pop's swap must fail, or the free list would name a held cell. At a
    /// million requests a second a connection makes two million changes a
    /// second: 2^32 of them pass in about 36 minutes, which a 32-bit count
    /// could not tell from none (the count has 42 bits: 25 days).
    #[test]
    fn a_pop_stalled_over_two_to_the_32_changes_cannot_link_a_held_cell() {
        let cells = Arc::new(Cells::new(64));
        // Three cells made and given back: the free list is 2, 1, 0.
        drop((0..3).map(|_| cells.claim()).collect::<Vec<_>>());
        // The stalled pop: the head, and the top's successor.
        let stale = cells.free.0.load(SeqCst);
        let top = (stale & (bump(0) - 1)) as u32;
        let successor = cells.cell(top).next.load(SeqCst);
        // Meanwhile the top and its successor are claimed; the top comes back.
        let (top_claim, _) = cells.claim();
        let (held, _) = cells.claim();
        assert_eq!(index(&top_claim), Some(top));
        assert_eq!(index(&held), Some(successor));
        drop(top_claim);
        // ... and 2^32 changes pass in all before the stalled pop goes on.
        let now = cells.free.0.load(SeqCst);
        cells
            .free
            .0
            .store(after_changes(now, (1 << 32) - 3), SeqCst);
        let swapped = cells
            .free
            .0
            .compare_exchange(stale, bump(stale) | u64::from(successor), SeqCst, SeqCst)
            .is_ok();
        assert!(
            !swapped,
            "a pop stalled over 2^32 changes put held cell {successor} on the free list"
        );
        drop(held);
    }

    /// Should the free list ever be corrupted (a stalled pop's swap
    /// succeeding after its change count came round), it may name a held
    /// cell, even link a cell to itself. A claim that pops a held cell must
    /// neither share it nor keep popping (a self-linked held cell would
    /// spin the caller's thread for ever): it takes a cell of its own.
    #[test]
    fn a_claim_that_pops_a_held_cell_from_a_corrupted_free_list_takes_its_own() {
        let cells = Arc::new(Cells::new(64));
        drop(cells.claim());
        // Cell 0 is free and on the list; pushed again, it links to itself.
        cells.push(0, cells.cell(0));
        let (first, _) = cells.claim();
        assert_eq!(index(&first), Some(0));
        // The list still names cell 0, now held.
        let (tx, rx) = std::sync::mpsc::channel();
        let claimer = {
            let cells = cells.clone();
            std::thread::spawn(move || {
                let (second, slot) = cells.claim();
                let _ = tx.send(index(&second));
                (second, slot)
            })
        };
        let second = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the claim ends (it spun on the held cell)");
        assert_ne!(second, Some(0), "one cell handed to two futures");
        let (mut second, slot) = claimer.join().expect("claimed");
        assert!(slot.fill(&cells, Ok(Bytes::from_static(b"second"))));
        assert_eq!(payload(poll(&mut second)), "second");
        drop(first);
    }
}

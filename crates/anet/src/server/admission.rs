//! Admission at the connection limit: what the accept loop knows about each
//! connection, the per-peer counts, and the choice of an idle connection to
//! evict when a newcomer arrives at `max_connections`.
//!
//! Each handler publishes one word (busy, framed, last activity in
//! milliseconds) at most once per wake-up, with a relaxed store and only when it
//! changed; the accept loop reads the words when it needs a victim and the stats
//! snapshot reads them to count connections by state. Nothing here takes a lock
//! on the request path.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use tokio::{task, time::Instant};
use tokio_util::sync::CancellationToken;

/// Requests in flight or responses not yet written.
const BUSY: u64 = 1 << 63;
/// At least one complete frame was read.
const FRAMED: u64 = 1 << 62;
/// The connection holds a slot and its handler runs (not waiting for room).
const ADMITTED: u64 = 1 << 61;
/// The low bits: last activity, in milliseconds since the server's epoch.
const MILLIS: u64 = ADMITTED - 1;

/// One connection's activity, written by its handler, read by the accept loop.
#[derive(Debug)]
pub(crate) struct Activity {
    /// The instant millisecond 0 stands for (the server's start).
    epoch: Instant,
    word: AtomicU64,
}

impl Activity {
    /// A connection accepted now, not admitted yet.
    pub(crate) fn new(epoch: Instant) -> Activity {
        let activity = Activity {
            epoch,
            word: AtomicU64::new(0),
        };
        activity
            .word
            .store(activity.millis(Instant::now()), Relaxed);
        activity
    }

    fn millis(&self, at: Instant) -> u64 {
        let ms = at.saturating_duration_since(self.epoch).as_millis();
        u64::try_from(ms).unwrap_or(MILLIS).min(MILLIS)
    }

    /// The word for an admitted connection in this state.
    pub(crate) fn encode(&self, busy: bool, framed: bool, last_active: Instant) -> u64 {
        let mut word = ADMITTED | self.millis(last_active);
        if busy {
            word |= BUSY;
        }
        if framed {
            word |= FRAMED;
        }
        word
    }

    /// Publishes `word` (from [`encode`](Self::encode)).
    pub(crate) fn store(&self, word: u64) {
        self.word.store(word, Relaxed);
    }

    fn load(&self) -> u64 {
        self.word.load(Relaxed)
    }
}

/// A connection's state, as the stats count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    /// No complete frame yet.
    New,
    /// Requests in flight (or responses being written).
    Active,
    /// Past its first frame, nothing in flight.
    Idle,
}

fn state(word: u64) -> Option<State> {
    if word & ADMITTED == 0 {
        None
    } else if word & BUSY != 0 {
        Some(State::Active)
    } else if word & FRAMED == 0 {
        Some(State::New)
    } else {
        Some(State::Idle)
    }
}

/// What the accept loop keeps for one connection task.
#[derive(Debug)]
struct Entry {
    activity: Arc<Activity>,
    /// Cancelled to ask the handler to close (it answers what is in flight).
    close: CancellationToken,
    peer: IpAddr,
    /// Already asked to close; not a candidate again.
    evicted: bool,
}

/// An evicted connection, for the log.
#[derive(Debug)]
pub(crate) struct Evicted {
    pub(crate) peer: IpAddr,
    pub(crate) idle: Duration,
    pub(crate) framed: bool,
}

/// The connections of one server, by task.
#[derive(Debug)]
pub(crate) struct Registry {
    epoch: Instant,
    conns: HashMap<task::Id, Entry>,
    /// Connections per remote address (kept only with a per-peer limit).
    peers: HashMap<IpAddr, usize>,
    max_per_peer: Option<usize>,
}

impl Registry {
    pub(crate) fn new(max_per_peer: Option<usize>) -> Registry {
        Registry {
            epoch: Instant::now(),
            conns: HashMap::new(),
            peers: HashMap::new(),
            max_per_peer,
        }
    }

    pub(crate) fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Whether `peer` already has its most connections.
    pub(crate) fn peer_full(&self, peer: IpAddr) -> bool {
        self.max_per_peer
            .is_some_and(|max| self.peers.get(&peer).copied().unwrap_or(0) >= max)
    }

    pub(crate) fn insert(
        &mut self,
        id: task::Id,
        activity: Arc<Activity>,
        close: CancellationToken,
        peer: IpAddr,
    ) {
        if self.max_per_peer.is_some() {
            *self.peers.entry(peer).or_insert(0) += 1;
        }
        self.conns.insert(
            id,
            Entry {
                activity,
                close,
                peer,
                evicted: false,
            },
        );
    }

    pub(crate) fn remove(&mut self, id: task::Id) {
        let Some(entry) = self.conns.remove(&id) else {
            return;
        };
        if let Some(n) = self.peers.get_mut(&entry.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.peers.remove(&entry.peer);
            }
        }
    }

    /// Asks one connection that can make room (admitted, nothing in flight,
    /// idle for at least `min_idle`, not already evicted) to close, and says
    /// which: a silent one (never completed a frame) first, open longest; else
    /// the one idle longest.
    pub(crate) fn evict_idle(&mut self, min_idle: Duration) -> Option<Evicted> {
        let now = Instant::now();
        let min_idle = u64::try_from(min_idle.as_millis()).unwrap_or(u64::MAX);
        let now_ms = now
            .saturating_duration_since(self.epoch)
            .as_millis()
            .min(u128::from(MILLIS)) as u64;
        let (_, entry, word) = self
            .conns
            .iter_mut()
            .filter(|(_, e)| !e.evicted)
            .filter_map(|(id, e)| {
                let word = e.activity.load();
                let idle = word & ADMITTED != 0 && word & BUSY == 0;
                let age = now_ms.saturating_sub(word & MILLIS);
                let silent = word & FRAMED == 0;
                (idle && age >= min_idle).then_some(((silent, age), id, e, word))
            })
            .max_by_key(|(rank, _, _, _)| *rank)
            .map(|(_, id, e, word)| (id, e, word))?;
        entry.evicted = true;
        entry.close.cancel();
        Some(Evicted {
            peer: entry.peer,
            idle: Duration::from_millis(now_ms.saturating_sub(word & MILLIS)),
            framed: word & FRAMED != 0,
        })
    }

    /// Admitted connections by state: (new, active, idle).
    pub(crate) fn count_states(&self) -> (u64, u64, u64) {
        let mut counts = (0, 0, 0);
        for entry in self.conns.values() {
            match state(entry.activity.load()) {
                Some(State::New) => counts.0 += 1,
                Some(State::Active) => counts.1 += 1,
                Some(State::Idle) => counts.2 += 1,
                None => {}
            }
        }
        counts
    }
}

//! One endpoint: its pool of multiplexed connections and its health.
//!
//! Each endpoint has a maintenance task that owns the decisions (dial, replace,
//! back off, mark down, probation) and publishes a few atomics that the balancer
//! reads on the request path (one state word: `up`, `pending`) plus the list of
//! live connections, read as a snapshot without a lock and replaced whole by
//! the task (whose windows give the endpoint's load).
//!
//! # Reconnect discipline
//!
//! A connection must prove itself before the pool trusts the backend again: it
//! is *proven* once it has answered a request (a late answer counts), or once it
//! has stayed open for the [settle time](PoolConfig::settle) without a request
//! written to it. A connection that ends before it is proven — closed or reset
//! by the peer, a protocol error, or retired by the client — counts as a
//! **failed dial**, exactly like a refused connect: the next dial waits
//! [`Backoff::delay`] of the consecutive failures (jittered, capped at
//! [`Backoff::max`]), and no connection is dialled meanwhile. So a backend that
//! accepts every connection and drops it at once gets a few connections a
//! second at first and one per `Backoff::max` after that, not thousands.
//! A proven connection that ends (the server closes it after answering, or
//! retires it after tags were held) is healthy: it is replaced at once and
//! ends the streak of failures. A retirement needs callers to have given up
//! on requests (their deadline), so it cannot come faster than the request
//! deadline; it backs off only when the retired connection never answered.
//!
//! An endpoint is marked down (not routed to until its backoff ends) when it
//! has no live connection, when the failures reach
//! [`failure_threshold`](PoolConfig::failure_threshold), or at the first
//! failure of its probation — but never while one of its live connections has
//! proven itself: beside an answering connection a failed dial only puts off
//! growth (a backend at its connection limit refuses the extra ones). Requests never wait for a backoff: with nowhere to go
//! they fail at once, [`Kind::Unavailable`] (or [`Kind::NotSent`] when their
//! connection ended before writing them, which the retry layer retries).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{
            AtomicBool, AtomicU8, AtomicU32, AtomicU64,
            Ordering::{AcqRel, Acquire, Relaxed, Release},
        },
    },
    task::Poll,
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::{sync::Notify, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;

use bytes::Bytes;

use super::connection::panic_message;
use super::{
    Backoff, Classification, Connection, Heartbeat, Lifecycle,
    connection::{ConnectionFuture, ReplyHook, Unit, Verdict},
    deadline::Deadline,
    dial::Dialer,
    lifecycle::{Classifier, Retire, age_limit},
    room::Room,
};
use crate::time::later;
use crate::{Error, Kind, observe};

/// How each endpoint's pool behaves. `Copy`; setters take and return it by
/// value.
///
/// Reconnect discipline: a connection is proven once it answers a request, or
/// once it stays open for [`settle`](Self::settle) with nothing written. One
/// that ends before that (closed or reset by the peer, a protocol error, or
/// retired by the client) is a failed dial, like a refused connect: the next
/// dial waits [`Backoff::delay`] of the consecutive failures, and requests
/// fail at once meanwhile ([`Kind::Unavailable`], or [`Kind::NotSent`], which
/// is retried). A proven connection that ends is replaced at once.
///
/// ```
/// use std::time::Duration;
/// use anet::client::{Backoff, PoolConfig};
///
/// let pool = PoolConfig::new()
///     .max_connections(8)
///     .backoff(Backoff::new().max(Duration::from_secs(2)))
///     .probation(Duration::from_secs(5));
/// # let _ = pool;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "a configuration does nothing until it is used"]
pub struct PoolConfig {
    /// Connections kept open even when idle.
    pub(crate) min_connections: usize,
    /// Most connections per endpoint.
    pub(crate) max_connections: usize,
    /// Consecutive failed dials that mark an endpoint down.
    pub(crate) failure_threshold: u32,
    /// Waits between reconnect attempts.
    pub(crate) backoff: Backoff,
    /// How long a returning endpoint stays on probation.
    pub(crate) probation: Duration,
    /// How long an idle connection must stay open to count as proven.
    pub(crate) settle: Duration,
    /// Connections older than this retire (replaced first, then drained).
    pub(crate) max_connection_age: Option<Duration>,
    /// Connections beyond the minimum idle this long retire.
    pub(crate) idle_timeout: Option<Duration>,
}

impl PoolConfig {
    /// The defaults listed on each setter.
    pub const fn new() -> PoolConfig {
        PoolConfig {
            min_connections: 1,
            max_connections: 4,
            failure_threshold: 3,
            backoff: Backoff::new(),
            probation: Duration::from_secs(10),
            settle: Duration::from_secs(1),
            max_connection_age: None,
            idle_timeout: None,
        }
    }

    /// Connections kept open even when idle (at least 1). Default: 1.
    pub const fn min_connections(mut self, n: usize) -> Self {
        self.min_connections = if n == 0 { 1 } else { n };
        self
    }

    /// Most connections per endpoint; another is added when every open one is
    /// at least three-quarters full. Never below
    /// [`min_connections`](Self::min_connections) when the pool runs. Default: 4.
    pub const fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Consecutive failed dials (refused, timed out, or connections that ended
    /// before they were proven; see [`settle`](Self::settle)) that mark an
    /// endpoint down even while it has live connections, as long as none of
    /// them has proven itself (beside one that is answering, failed dials only
    /// put off growth). Default: 3. An endpoint with no live connection is
    /// never routed to, whatever this says.
    pub const fn failure_threshold(mut self, n: u32) -> Self {
        self.failure_threshold = n;
        self
    }

    /// Waits between reconnect attempts. Default: [`Backoff::new`].
    pub const fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// After coming back, how long an endpoint stays on probation, during which
    /// a single failure marks it down again. Each time replies classified as
    /// its failures mark it down, the backoff grows ([`Backoff::delay`] of the
    /// count); the count starts again only once the endpoint has passed its
    /// probation and had a reply classified as a success since it came back
    /// (a caller's or a heartbeat's), not when the probation's time runs out
    /// alone: a standby failover group keeps the traffic during a primary's
    /// probation, so the primary may not have been tried at all.
    /// Default: 10 s.
    pub const fn probation(mut self, period: Duration) -> Self {
        self.probation = period;
        self
    }

    /// How long a connection must stay open, with no request written to it,
    /// to count as proven without answering one. A connection that ends
    /// before it answered anything counts as a failed dial if it ended within
    /// this time or had requests written to it. Default: 1 s.
    pub const fn settle(mut self, period: Duration) -> Self {
        self.settle = period;
        self
    }
}

impl PoolConfig {
    /// Connections older than this retire gracefully: the pool dials the
    /// replacement first (when the retirement would leave it below its
    /// minimum), then the old connection refuses new requests (as
    /// [`Kind::NotSent`], so one that raced the retirement is retried
    /// elsewhere) and finishes those in flight within its
    /// [close grace](super::ConnectionConfig::close_grace). Requests answered
    /// within the grace do not fail; any still in flight when it ends fail
    /// with [`Kind::ConnectionLost`] (they may have reached the server:
    /// retried only when idempotent). Each connection's limit is drawn between 90% and 100% of `age`, so
    /// that connections made together do not retire together. For devices
    /// and middleboxes that drop long-lived sessions, and to rebalance after a
    /// backend was added behind a virtual address. Default: `None` (no limit).
    pub const fn max_connection_age(mut self, age: Option<Duration>) -> Self {
        self.max_connection_age = age;
        self
    }

    /// A connection idle this long (nothing written by callers and nothing in
    /// flight; heartbeats do not count) retires while the pool has more than
    /// [`min_connections`](Self::min_connections): a pool that grew under load
    /// shrinks back to its minimum. Default: `None` (a pool never shrinks).
    pub const fn idle_timeout(mut self, idle: Option<Duration>) -> Self {
        self.idle_timeout = idle;
        self
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig::new()
    }
}

/// Endpoint state bit: routable (has a live connection and is not marked down).
const UP: u8 = 1;
/// Endpoint state bit: a dial is under way while the endpoint is not in
/// penalty; requests with nowhere else to go may wait for it (up to the connect
/// timeout).
const PENDING: u8 = 2;
/// Endpoint state bit: on probation after coming back; a failover group does
/// not take traffic back from a lower one until its probation has passed.
const PROBATION: u8 = 4;

/// What an endpoint is doing, as its stats show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EndpointState {
    /// Routable: it has a live connection and is not marked down.
    Up,
    /// Not routable yet: a dial (and its handshake) is under way.
    Connecting,
    /// Not routable: backing off after failed dials or failures classified
    /// as the endpoint's, or removed.
    Down,
}

/// Counts of an endpoint's replies classified as failures, shared with the
/// reply hook of each of its connections (no reference back to the endpoint).
#[derive(Debug, Default)]
pub(crate) struct AppHealth {
    /// Consecutive replies classified as endpoint failures.
    streak: AtomicU32,
    /// Replies classified as endpoint failures, in all.
    failures: AtomicU64,
    /// Replies classified as connection failures (each retired its connection).
    connection_failures: AtomicU64,
    /// A reply was classified as a success since the endpoint last came back
    /// from being marked down (a caller's reply or a heartbeat's): only then
    /// does the escalation of its backoffs start again from the base.
    answered: AtomicBool,
}

/// What the balancer and the maintenance task share about one endpoint.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) addr: SocketAddr,
    /// Failover group: 0 is the first choice, higher numbers stand by.
    pub(crate) priority: u32,
    /// Live connections; written by the maintenance task, read per request
    /// as a snapshot without a lock (no shared counter bounces between the
    /// threads of a multi-thread runtime). Replaced whole, only with
    /// `draining` locked, so a reader holding that lock sees both lists agree.
    conns: ArcSwap<Vec<Connection>>,
    /// Connections that refuse new requests but have not finished (requests
    /// still in flight): off the request path, still in the stats.
    draining: Mutex<Vec<Connection>>,
    /// The maintenance task has ended: every connection has finished.
    stopped: AtomicBool,
    /// [`UP`] and [`PENDING`], in one word: a request deciding whether to wait
    /// reads both at once, so it never sees the moment between the pool
    /// announcing a redial and withdrawing `up` (or the reverse) as "neither".
    state: AtomicU8,
    /// Removed from the client: drain and stop.
    removed: AtomicBool,
    /// A request found every connection full.
    demand: AtomicBool,
    /// Wakes the maintenance task (demand, a broken connection, removal, a
    /// classified failure, a retirement).
    wake: Arc<Notify>,
    /// Connections their keepers ask to retire (age, idle), for the
    /// maintenance task to decide on.
    retiring: Mutex<Vec<(Connection, Retire)>>,
    /// Replies classified as failures.
    health: Arc<AppHealth>,
    handshake_failures: AtomicU64,
    heartbeat_misses: AtomicU64,
    /// Connections retired by the pool while working (age, idle).
    retired: AtomicU64,
    /// Since when it has not been routable (after it was, or after a failed dial).
    down_since: Mutex<Option<Instant>>,
    /// The latest failure seen: a dial, a handshake, a heartbeat, a lost connection.
    last_error: Mutex<Option<Error>>,
    /// Requests written on connections that have since closed (live ones report
    /// their own count).
    retired_written: AtomicU64,
    pub(crate) errors: [AtomicU64; Kind::COUNT],
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
    dials: AtomicU64,
    failed_dials: AtomicU64,
    /// The current backoff delay in nanoseconds; 0 when not backing off.
    backoff_nanos: AtomicU64,
    /// Its metric handles (feature `metrics`).
    pub(crate) metrics: observe::EndpointMetrics,
}

impl Endpoint {
    pub(crate) fn new(addr: SocketAddr, priority: u32) -> Endpoint {
        Endpoint {
            addr,
            priority,
            conns: ArcSwap::from_pointee(Vec::new()),
            draining: Mutex::new(Vec::new()),
            stopped: AtomicBool::new(false),
            state: AtomicU8::new(PENDING), // the first dial starts at once
            removed: AtomicBool::new(false),
            demand: AtomicBool::new(false),
            wake: Arc::default(),
            retiring: Mutex::default(),
            health: Arc::default(),
            handshake_failures: AtomicU64::new(0),
            heartbeat_misses: AtomicU64::new(0),
            retired: AtomicU64::new(0),
            down_since: Mutex::default(),
            last_error: Mutex::default(),
            retired_written: AtomicU64::new(0),
            errors: Default::default(),
            reconnects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            dials: AtomicU64::new(0),
            failed_dials: AtomicU64::new(0),
            backoff_nanos: AtomicU64::new(0),
            metrics: observe::EndpointMetrics::new(addr),
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        self.state.load(Acquire) & UP != 0
    }

    /// Up and past its probation: a failover group with such an endpoint
    /// takes the traffic.
    #[inline]
    pub(crate) fn is_preferred(&self) -> bool {
        self.state.load(Acquire) & (UP | PROBATION) == UP
    }

    /// Up, or about to be (a dial is under way): a request with nowhere else to
    /// go may wait for it. One read of both bits (see `state`).
    pub(crate) fn may_come_up(&self) -> bool {
        self.state.load(Acquire) & (UP | PENDING) != 0
    }

    /// Sets or clears `bit`; true if that changed it.
    fn set(&self, bit: u8, on: bool) -> bool {
        let before = if on {
            self.state.fetch_or(bit, AcqRel)
        } else {
            self.state.fetch_and(!bit, AcqRel)
        };
        (before & bit != 0) != on
    }

    /// Window slots in use over its live connections: requests in flight and
    /// tags still quarantined (a slow backend keeps them longer).
    pub(crate) fn load(&self) -> usize {
        self.conns.load().iter().map(tower::load::Load::load).sum()
    }

    /// Its load as the balancer compares it: window slots in use over its
    /// live connections, and their highest response-time estimate (see
    /// [`Cost::below`](super::latency::Cost::below)).
    #[inline]
    pub(crate) fn cost(&self) -> super::latency::Cost {
        let conns = self.conns.load();
        let mut cost = super::latency::Cost::default();
        for conn in conns.iter() {
            cost.add(tower::load::Load::load(conn), conn.rtt_estimate_ns());
        }
        cost
    }

    /// Sends on the live connection with the fewest requests in flight, if it
    /// has room, without cloning its handle (the common case, on the request path).
    /// Otherwise gives the payload back with that connection to wait on, or with
    /// `None` when there is no live connection.
    pub(crate) fn dispatch(
        &self,
        payload: Bytes,
        deadline: Deadline,
    ) -> Result<ConnectionFuture, (Bytes, Option<Connection>)> {
        let conns = self.conns.load();
        let Some(conn) = least_loaded(&conns) else {
            return Err((payload, None));
        };
        match conn.try_call(payload, deadline) {
            Ok(future) => Ok(future),
            // Closed since it was listed (or, alone, found closed only now).
            Err(payload) if conn.is_closed() => Err((payload, None)),
            Err(payload) => Err((payload, Some(conn.clone()))),
        }
    }

    /// Takes a unit of the window of the live connection with the fewest
    /// requests in flight; or gives that connection, full, to wait on; or
    /// nothing when there is no live connection.
    pub(crate) fn reserve(&self) -> Reserve {
        let conns = self.conns.load();
        let Some(conn) = least_loaded(&conns) else {
            return Reserve::Empty;
        };
        match conn.try_take_unit() {
            Some(unit) => Reserve::Held(unit),
            // Closed since it was listed (or, alone, found closed only now).
            None if conn.is_closed() => Reserve::Empty,
            None => Reserve::Full(conn.clone()),
        }
    }

    /// Sends on the connection whose window `unit` belongs to (no handle is
    /// cloned between the reservation and the call). A connection no longer
    /// listed has closed: the request fails unsent.
    pub(crate) fn send_reserved(
        &self,
        unit: Unit,
        payload: Bytes,
        deadline: Deadline,
    ) -> ConnectionFuture {
        match self.conns.load().iter().find(|c| c.owns(&unit)) {
            Some(conn) => conn.send_reserved(unit, payload, deadline),
            None => ConnectionFuture::failed(Error::with_source(
                Kind::NotSent,
                "the connection closed between poll_ready and call",
            )),
        }
    }

    /// A request found its connection full: the pool may grow.
    pub(crate) fn signal_demand(&self) {
        if !self.demand.swap(true, Relaxed) {
            self.wake.notify_one();
        }
    }

    /// A request found a connection broken: prune it now.
    pub(crate) fn signal_broken(&self) {
        self.wake.notify_one();
    }

    pub(crate) fn remove(&self) {
        self.removed.store(true, Relaxed);
        self.set(UP, false);
        self.wake.notify_one();
    }

    /// Counts a failed request; a broken connection is pruned at once.
    pub(crate) fn record(&self, error: &Error) {
        self.errors[error.kind().index()].fetch_add(1, Relaxed);
        if matches!(error.kind(), Kind::ConnectionLost | Kind::Protocol) {
            self.signal_broken();
        }
    }

    /// Whether its maintenance task has ended (after its connections finished).
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Acquire)
    }

    pub(crate) fn stats(&self) -> EndpointStats {
        // `draining` first: the live list is replaced only under it, so the
        // two agree (no connection counted twice or missed).
        let draining = self.draining();
        let conns = self.conns.load();
        // Live or draining: every connection that has not finished.
        let all = || conns.iter().chain(draining.iter());
        let state = self.state.load(Acquire);
        EndpointStats {
            addr: self.addr,
            priority: self.priority,
            up: state & UP != 0,
            state: if state & UP != 0 {
                EndpointState::Up
            } else if state & PENDING != 0 {
                EndpointState::Connecting
            } else {
                EndpointState::Down
            },
            on_probation: state & PROBATION != 0,
            down_since: *lock(&self.down_since),
            last_error: lock(&self.last_error).clone(),
            handshake_failures: self.handshake_failures.load(Relaxed),
            heartbeat_misses: self.heartbeat_misses.load(Relaxed),
            retired: self.retired.load(Relaxed),
            classified_failures: self.health.failures.load(Relaxed),
            classified_connection_failures: self.health.connection_failures.load(Relaxed),
            connections: all().filter(|c| !c.is_finished()).count(),
            in_flight: all().map(tower::load::Load::load).sum(),
            requests: self.retired_written.load(Relaxed)
                + all().map(|c| c.stats().written).sum::<u64>(),
            latency: Some(self.cost().rtt_ns)
                .filter(|&ns| ns != 0)
                .map(Duration::from_nanos),
            errors: ErrorCounts(std::array::from_fn(|i| self.errors[i].load(Relaxed))),
            reconnects: self.reconnects.load(Relaxed),
            connect_failures: self.connect_failures.load(Relaxed),
            dials: self.dials.load(Relaxed),
            failed_dials: self.failed_dials.load(Relaxed),
            backoff: Duration::from_nanos(self.backoff_nanos.load(Relaxed)),
        }
    }

    fn take_retiring(&self) -> Vec<(Connection, Retire)> {
        std::mem::take(&mut *lock(&self.retiring))
    }

    /// A keeper asks for `conn` to retire; the maintenance task decides.
    fn retire(&self, conn: &Connection, why: Retire) {
        lock(&self.retiring).push((conn.clone(), why));
        self.wake.notify_one();
    }

    /// A heartbeat on `conn` missed: retire it at once (it is presumed dead)
    /// and have it replaced.
    fn heartbeat_missed(&self, conn: &Connection, why: String) {
        self.heartbeat_misses.fetch_add(1, Relaxed);
        tracing::warn!(
            reason = %why,
            age = ?conn.opened_at().elapsed(),
            "heartbeat missed; retiring connection"
        );
        self.set_last_error(Error::with_source(
            Kind::ConnectionLost,
            format!("heartbeat missed: {why}"),
        ));
        conn.retire("heartbeat missed");
        self.wake.notify_one();
    }

    fn set_last_error(&self, error: Error) {
        *lock(&self.last_error) = Some(error);
    }

    /// The hook each connection calls on its replies: the user's classifier,
    /// counted here; [`Verdict::Retire`] retires the connection.
    fn reply_hook(&self, classify: Classifier) -> ReplyHook {
        let health = self.health.clone();
        let wake = self.wake.clone();
        ReplyHook(Arc::new(move |reply| match classify(reply) {
            Classification::Success => {
                if health.streak.load(Relaxed) != 0 {
                    health.streak.store(0, Relaxed);
                }
                if !health.answered.load(Relaxed) {
                    health.answered.store(true, Relaxed);
                }
                Verdict::Success
            }
            Classification::EndpointFailure => {
                health.failures.fetch_add(1, Relaxed);
                health.streak.fetch_add(1, Relaxed);
                wake.notify_one();
                Verdict::Failure
            }
            Classification::ConnectionFailure => {
                health.connection_failures.fetch_add(1, Relaxed);
                // The driver retires the connection and then wakes the
                // maintenance task (see `Connection::set_owner_wake`), which
                // dials the replacement at once.
                Verdict::Retire
            }
        }))
    }

    fn draining(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.draining.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves closed connections from the live list to the draining one, and
    /// forgets draining ones that have finished; returns how many stay live and
    /// the ones moved.
    fn prune(&self) -> (usize, Vec<Connection>) {
        let mut draining = self.draining();
        let current = self.conns.load_full();
        let mut ended = Vec::new();
        let mut live = Vec::with_capacity(current.len());
        for c in current.iter() {
            if c.is_closed() {
                draining.push(c.clone());
                ended.push(c.clone());
            } else {
                live.push(c.clone());
            }
        }
        let count = live.len();
        if !ended.is_empty() {
            self.conns.store(Arc::new(live));
        }
        self.forget_finished(&mut draining);
        self.metrics.connections(count, draining.len());
        (count, ended)
    }

    /// Whether a live connection opened after `since` has proven itself.
    fn proven_since(&self, since: Instant, now: Instant, settle: Duration) -> bool {
        self.conns
            .load()
            .iter()
            .any(|c| c.opened_at() > since && is_proven(c, now, settle))
    }

    /// Whether a live connection has proven itself (it is serving).
    fn serving(&self, now: Instant, settle: Duration) -> bool {
        self.conns
            .load()
            .iter()
            .any(|c| !c.is_closed() && is_proven(c, now, settle))
    }

    fn set_backoff(&self, delay: Duration) {
        let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        self.backoff_nanos.store(nanos, Relaxed);
    }

    /// Drops finished connections from `draining`, keeping their count of
    /// written requests.
    fn forget_finished(&self, draining: &mut Vec<Connection>) {
        draining.retain(|c| {
            let finished = c.is_finished();
            if finished {
                self.retired_written.fetch_add(c.stats().written, Relaxed);
            }
            !finished
        });
    }

    /// The listed connections, as a routing snapshot shows them (tests).
    #[cfg(test)]
    pub(crate) fn listed(&self) -> Vec<Connection> {
        self.conns.load().to_vec()
    }

    /// Live connections (not refusing requests).
    pub(crate) fn live(&self) -> usize {
        self.conns.load().iter().filter(|c| !c.is_closed()).count()
    }

    fn all_busy(&self) -> bool {
        self.conns.load().iter().all(|c| {
            let load = tower::load::Load::load(c);
            load * 4 >= c.max_in_flight() * 3
        })
    }

    fn push(&self, conn: Connection) {
        let draining = self.draining();
        let mut next: Vec<_> = self.conns.load().iter().cloned().collect();
        next.push(conn);
        self.metrics.connections(next.len(), draining.len());
        self.conns.store(Arc::new(next));
    }

    /// Moves every live connection to the draining list; returns them all. A
    /// request routed on a snapshot taken just before is then in flight on a
    /// connection that drains (or, once it has closed, refused unsent:
    /// `NotSent` when the endpoint was removed, `Closed` when the client was).
    fn drain_all(&self) -> Vec<Connection> {
        let mut draining = self.draining();
        let live = self.conns.swap(Arc::new(Vec::new()));
        draining.extend(live.iter().cloned());
        self.metrics.connections(0, draining.len());
        draining.clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What [`Endpoint::reserve`] found.
#[derive(Debug)]
pub(crate) enum Reserve {
    /// A unit of the window of one of its connections.
    Held(Unit),
    /// Every live connection is full; this one has the fewest in flight.
    Full(Connection),
    /// No live connection.
    Empty,
}

/// Whether `conn` has proven itself (see the module docs): it answered a
/// request, or it has stayed open for `settle` with no request written.
fn is_proven(conn: &Connection, now: Instant, settle: Duration) -> bool {
    let stats = conn.stats();
    stats.responses + stats.late > 0
        || (stats.written == 0 && now.saturating_duration_since(conn.opened_at()) >= settle)
}

/// Counts of failed requests by [`Kind`]: an endpoint's in its stats, or your
/// own tally.
///
/// ```
/// use anet::{Kind, client::ErrorCounts};
///
/// let mut counts = ErrorCounts::default();
/// counts.record(Kind::Timeout);
/// counts.merge(&counts.clone());
/// assert_eq!(counts.get(Kind::Timeout), 2);
/// assert_eq!(counts.total(), 2);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorCounts([u64; Kind::COUNT]);

impl ErrorCounts {
    /// Failures of this kind.
    pub fn get(&self, kind: Kind) -> u64 {
        self.0[kind.index()]
    }

    /// All failures.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The non-zero counts, by kind.
    pub fn iter(&self) -> impl Iterator<Item = (Kind, u64)> + '_ {
        Kind::all()
            .iter()
            .map(|k| (*k, self.get(*k)))
            .filter(|(_, n)| *n > 0)
    }

    /// Counts one failure of `kind`.
    pub fn record(&mut self, kind: Kind) {
        self.0[kind.index()] += 1;
    }

    /// Adds `other`'s counts to these.
    pub fn merge(&mut self, other: &ErrorCounts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }
}

/// A snapshot of one endpoint.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EndpointStats {
    /// The endpoint's address.
    pub addr: SocketAddr,
    /// Its failover group: 0 first, higher numbers stand by (see
    /// [`ClientBuilder::endpoint_with_priority`](super::ClientBuilder::endpoint_with_priority)).
    pub priority: u32,
    /// Whether requests are routed to it now (`state` is [`EndpointState::Up`]).
    pub up: bool,
    /// Up, connecting or down.
    pub state: EndpointState,
    /// Whether it is on probation after coming back (a single failure marks
    /// it down again; a better failover group does not take traffic back yet).
    pub on_probation: bool,
    /// Since when it has not been routable: after it went down, or after its
    /// first failed dial. `None` while up, and while making its first connection.
    pub down_since: Option<Instant>,
    /// The latest failure: a dial, a handshake, a heartbeat, a lost connection,
    /// a run of replies classified as failures. Kept after it comes back.
    pub last_error: Option<Error>,
    /// Handshakes that failed or timed out (each is also a failed dial).
    pub handshake_failures: u64,
    /// Heartbeats that missed (each retired its connection).
    pub heartbeat_misses: u64,
    /// Working connections the pool retired: past their maximum age, or idle
    /// beyond the minimum.
    pub retired: u64,
    /// Replies the classifier marked [`Classification::EndpointFailure`].
    pub classified_failures: u64,
    /// Replies the classifier marked [`Classification::ConnectionFailure`].
    pub classified_connection_failures: u64,
    /// Open connections: live ones, and those draining (closing, with requests
    /// still in flight) until they have closed.
    pub connections: usize,
    /// Window slots in use on its connections (draining ones included):
    /// requests in flight, plus tags quarantined after their callers gave up.
    pub in_flight: usize,
    /// Requests written to its connections.
    pub requests: u64,
    /// Of those, failures by kind.
    pub errors: ErrorCounts,
    /// Its peak-EWMA response-time estimate, as the balancer weighs it (the
    /// highest of its live connections'); `None` before the first answer, or
    /// with [`LoadMeasure::InFlight`](super::LoadMeasure::InFlight).
    pub latency: Option<Duration>,
    /// Connections re-established after one was lost.
    pub reconnects: u64,
    /// Dial attempts that failed to connect.
    pub connect_failures: u64,
    /// Dial attempts, successful or not.
    pub dials: u64,
    /// Failed dials: those that failed to connect, plus connections that
    /// ended before they were proven (see [`PoolConfig::settle`]). Each one
    /// backs the endpoint off.
    pub failed_dials: u64,
    /// The current backoff: the wait chosen after the latest failed dial, or
    /// zero once a connection has proven itself again.
    pub backoff: Duration,
}

/// What the maintenance task needs from the client.
#[derive(Clone, Debug)]
pub(crate) struct PoolContext {
    pub(crate) config: PoolConfig,
    pub(crate) dialer: Dialer,
    /// Handshake, heartbeat, classifier.
    pub(crate) lifecycle: Lifecycle,
    /// Notified whenever an endpoint's `up` or `pending` changes.
    pub(crate) changed: Arc<Notify>,
    /// Wakes the handles waiting for room (through `changed`) when a
    /// connection has units to spare.
    pub(crate) room: Arc<Room>,
    pub(crate) shutdown: CancellationToken,
}

impl PoolContext {
    /// A context for the pools of one balancer (or one lone pool).
    pub(crate) fn new(config: PoolConfig, dialer: Dialer, lifecycle: Lifecycle) -> PoolContext {
        let changed = Arc::new(Notify::new());
        PoolContext {
            config,
            dialer,
            lifecycle,
            room: Room::new(changed.clone()),
            changed,
            shutdown: CancellationToken::new(),
        }
    }
}

/// The live connection with the fewest requests in flight; ties go to a
/// random one, so that handles waiting for room spread over the connections
/// instead of queueing on the first. A lone connection is returned as it is:
/// the caller learns that it closed when it asks for a unit of its window
/// (reading the window first, then updating it, would take its cache line
/// from the other threads twice per request).
fn least_loaded(conns: &[Connection]) -> Option<&Connection> {
    let n = conns.len();
    match conns {
        [] => return None,
        [only] => return Some(only),
        _ => {}
    }
    let start = fastrand::usize(..n);
    (0..n)
        .map(|i| &conns[(start + i) % n])
        .filter(|c| !c.is_closed())
        .min_by_key(|c| tower::load::Load::load(*c))
}

/// Keeps one endpoint's pool: dials up to `min` (and up to `max` under demand),
/// runs each new connection's handshake, replaces lost connections, backs off
/// after failed dials (refused, handshake failed, or ended before proven),
/// retires aged and idle connections, marks the endpoint down (failed dials,
/// replies classified as its failures) and up.
pub(crate) async fn maintain(endpoint: Arc<Endpoint>, cx: PoolContext) {
    let config = cx.config;
    let min = config.min_connections.max(1);
    let max = config.max_connections.max(min);
    let mut watchers: JoinSet<()> = JoinSet::new();
    // Consecutive failed dials, and when the latest was.
    let mut failures: u32 = 0;
    let mut last_failure = Instant::now();
    // No dial before this instant.
    let mut backoff_until: Option<Instant> = None;
    // Not routed to until the backoff ends.
    let mut down = false;
    let mut probation_until: Option<Instant> = None;
    // Times the endpoint was marked down for replies classified as its
    // failures, since it last answered (a reply classified as a success)
    // after a probation. Not reset by the probation's clock alone: a standby
    // group keeps the traffic during a primary's probation, so a primary
    // failing at application level would "pass" it without being tried.
    let mut app_trips: u32 = 0;
    // While failures are counted: when the newest connection will have settled
    // (a wake-up to see whether it proved itself).
    let mut settle_at: Option<Instant> = None;
    // Connections lost and not yet replaced (for the reconnect count).
    let mut to_replace: usize = 0;
    // Connections past their maximum age, kept until a replacement is up.
    let mut aged: Vec<Connection> = Vec::new();

    loop {
        if endpoint.removed.load(Relaxed) || cx.shutdown.is_cancelled() {
            break;
        }
        let now = Instant::now();
        if backoff_until.is_some_and(|t| now >= t) {
            backoff_until = None;
            if std::mem::take(&mut down) {
                probation_until = Some(later(now, config.probation));
                set_bit(&endpoint, &cx, PROBATION, true);
                // Replies classified while it was down (requests in flight
                // then) do not count against its probation, nor for it.
                endpoint.health.streak.store(0, Relaxed);
                endpoint.health.answered.store(false, Relaxed);
            }
        }
        if probation_until.is_some_and(|t| now >= t) {
            probation_until = None;
            if set_bit(&endpoint, &cx, PROBATION, false) {
                tracing::info!("endpoint passed its probation");
            }
        }
        // Past its probation and answering: the next trip backs off from the
        // base again.
        if app_trips > 0
            && probation_until.is_none()
            && !down
            && endpoint.health.answered.load(Relaxed)
        {
            tracing::debug!(
                app_trips,
                "endpoint answering after its probation; escalation reset"
            );
            app_trips = 0;
        }
        if settle_at.is_some_and(|t| now >= t) {
            settle_at = None;
        }
        let (mut live, ended) = endpoint.prune();
        to_replace += ended.len();
        // A connection made since the latest failure proved itself: the
        // streak is over.
        if failures > 0 && endpoint.proven_since(last_failure, now, config.settle) {
            tracing::info!(failures, "endpoint answering again; backoff reset");
            failures = 0;
            settle_at = None;
            endpoint.set_backoff(Duration::ZERO);
        }
        for conn in &ended {
            let reason = conn
                .close_reason()
                .unwrap_or_else(|| Error::new(Kind::Closed));
            if !matches!(reason.kind(), Kind::Closed | Kind::NotSent) {
                endpoint.set_last_error(reason.clone());
            }
            if is_proven(conn, now, config.settle) {
                if failures > 0 {
                    failures = 0;
                    endpoint.set_backoff(Duration::ZERO);
                }
                tracing::debug!(%reason, "connection ended; replacing it");
                continue;
            }
            // Ended before it answered anything: a failed dial.
            failures = failures.saturating_add(1);
            last_failure = now;
            endpoint.failed_dials.fetch_add(1, Relaxed);
            let delay = config.backoff.delay(failures);
            backoff_until = Some(later(now, delay));
            endpoint.set_backoff(delay);
            let on_probation = probation_until.is_some_and(|t| now < t);
            // Beside a live connection that is answering, a failed dial only
            // puts off growth (a backend at its connection limit refuses the
            // extra ones); it never takes the endpoint out of routing.
            down |= !endpoint.serving(now, config.settle)
                && (live == 0 || on_probation || failures >= config.failure_threshold.max(1));
            tracing::warn!(
                %reason,
                source = ?std::error::Error::source(&reason).map(ToString::to_string),
                age = ?now.saturating_duration_since(conn.opened_at()),
                failures,
                ?delay,
                down,
                "connection ended before it answered a request; counted as a failed dial, backing off"
            );
        }
        // Replies classified as the endpoint's failures: enough in a row (or
        // one on probation) mark it down for a backoff; its connections stay.
        let streak = endpoint.health.streak.load(Relaxed);
        if streak > 0 && !down {
            let on_probation = probation_until.is_some_and(|t| now < t);
            if on_probation || streak >= config.failure_threshold.max(1) {
                endpoint.health.streak.store(0, Relaxed);
                app_trips = app_trips.saturating_add(1);
                let delay = config.backoff.delay(app_trips);
                let until = later(now, delay);
                backoff_until = Some(backoff_until.map_or(until, |t| t.max(until)));
                endpoint.set_backoff(delay);
                down = true;
                endpoint.set_last_error(Error::with_source(
                    Kind::Other,
                    format!("{streak} consecutive replies classified as endpoint failures"),
                ));
                tracing::warn!(
                    streak,
                    on_probation,
                    ?delay,
                    "replies classified as endpoint failures; endpoint marked down"
                );
            }
        }
        // Retirements the keepers asked for.
        for (conn, why) in endpoint.take_retiring() {
            if conn.is_closed() {
                continue;
            }
            match why {
                Retire::MaxAge => {
                    if !aged.iter().any(|c| c.same(&conn)) {
                        aged.push(conn);
                    }
                }
                Retire::Idle => {
                    if live.saturating_sub(aged.len()) > min {
                        retire_now(&endpoint, &conn, why);
                        live -= 1;
                    }
                }
            }
        }
        aged.retain(|c| !c.is_closed());
        // Aged connections go once the others keep the minimum (a replacement
        // is dialed first otherwise); while the endpoint backs off they stay.
        if !aged.is_empty() && live.saturating_sub(aged.len()) >= min {
            for conn in aged.drain(..) {
                retire_now(&endpoint, &conn, Retire::MaxAge);
                live -= 1;
            }
        }
        let in_backoff = backoff_until.is_some_and(|t| now < t);
        let demand = endpoint.demand.swap(false, Relaxed);
        let want =
            live.saturating_sub(aged.len()) < min || (demand && live < max && endpoint.all_busy());
        let dial_now = want && !in_backoff;
        // Announce the dial before withdrawing `up`, so that a request never sees
        // "down and not dialing" while a replacement is about to be dialed.
        if dial_now {
            set_pending(&endpoint, &cx, true);
        }
        set_up(&endpoint, &cx, live > 0 && !down);
        if !dial_now {
            // After `up` (see above); pending only while a dial is under way.
            set_pending(&endpoint, &cx, false);
        }

        if dial_now {
            endpoint.dials.fetch_add(1, Relaxed);
            let dialed = tokio::select! {
                r = establish(&endpoint, &cx) => r,
                () = cx.shutdown.cancelled() => break,
            };
            match dialed {
                Ok(conn) => {
                    conn.share_room(cx.room.clone());
                    conn.share_metrics(endpoint.metrics.connection());
                    watchers.spawn(keep(
                        conn.clone(),
                        endpoint.clone(),
                        cx.lifecycle.heartbeat.clone(),
                        config.max_connection_age,
                        config.idle_timeout,
                    ));
                    endpoint.push(conn);
                    // Room for whoever waits on this endpoint's full windows.
                    cx.changed.notify_waiters();
                    if to_replace > 0 {
                        to_replace -= 1;
                        endpoint.reconnects.fetch_add(1, Relaxed);
                    }
                    if probation_until.is_some_and(|t| Instant::now() < t) {
                        tracing::info!("endpoint reconnected, on probation");
                    }
                    // The failures stop counting once this connection proves
                    // itself, not now: a backend may accept and drop at once.
                    if failures > 0 {
                        settle_at = Some(later(Instant::now(), config.settle));
                    }
                    set_up(&endpoint, &cx, !down);
                    // Marked down, its backoff over: the next pass brings it
                    // back (on probation) and marks it up. Until then it stays
                    // pending, so a request never sees it neither up nor
                    // pending meanwhile (it would fail `Unavailable`).
                    let back = down && backoff_until.is_some_and(|t| Instant::now() >= t);
                    if !back {
                        set_pending(&endpoint, &cx, false);
                    }
                }
                Err((error, handshake)) => {
                    if handshake {
                        endpoint.handshake_failures.fetch_add(1, Relaxed);
                    } else {
                        endpoint.connect_failures.fetch_add(1, Relaxed);
                    }
                    endpoint.failed_dials.fetch_add(1, Relaxed);
                    failures = failures.saturating_add(1);
                    let now = Instant::now();
                    last_failure = now;
                    let delay = config.backoff.delay(failures);
                    backoff_until = Some(later(now, delay));
                    endpoint.set_backoff(delay);
                    let on_probation = probation_until.is_some_and(|t| now < t);
                    let live = endpoint.live();
                    down |= !endpoint.serving(now, config.settle)
                        && (live == 0
                            || on_probation
                            || failures >= config.failure_threshold.max(1));
                    if handshake {
                        tracing::warn!(%error, failures, ?delay, down, "handshake failed; backing off");
                    } else {
                        tracing::warn!(%error, failures, ?delay, down, "dial failed; backing off");
                    }
                    endpoint.set_last_error(error);
                    set_up(&endpoint, &cx, live > 0 && !down);
                    if !endpoint.is_up() {
                        lock(&endpoint.down_since).get_or_insert(now);
                    }
                    set_pending(&endpoint, &cx, false);
                }
            }
            continue;
        }

        let wake_at = [
            backoff_until.filter(|_| want || down),
            settle_at,
            probation_until,
        ]
        .into_iter()
        .flatten()
        .min();
        tokio::select! {
            () = endpoint.wake.notified() => {}
            Some(_) = watchers.join_next(), if !watchers.is_empty() => {}
            () = sleep_until_opt(wake_at) => {}
            () = cx.shutdown.cancelled() => break,
        }
    }

    // Removed or shutting down: stop routing here, let in-flight requests finish.
    set_up(&endpoint, &cx, false);
    endpoint.set(PENDING, false);
    cx.changed.notify_waiters();
    // They stay in the stats until they have finished.
    let conns = endpoint.drain_all();
    // A request routed on a snapshot taken before `drain_all` may still reach
    // one of them once it refuses requests: removed from an open client, it
    // is refused as `NotSent` (retried on another endpoint); only the
    // client's own close refuses it as `Closed`.
    let removed = !cx.shutdown.is_cancelled();
    for conn in &conns {
        if removed {
            conn.close_unused("endpoint removed");
        } else {
            conn.close();
        }
    }
    for conn in &conns {
        conn.closed().await;
    }
    endpoint.forget_finished(&mut endpoint.draining());
    endpoint.metrics.connections(0, 0);
    endpoint.stopped.store(true, Release);
    tracing::debug!("endpoint stopped");
}

/// Dials a connection and runs the handshake on it; the reply hook goes on
/// afterwards, so the classifier never sees handshake replies. The error says
/// whether the handshake (not the connect) failed.
async fn establish(endpoint: &Endpoint, cx: &PoolContext) -> Result<Connection, (Error, bool)> {
    let conn = cx
        .dialer
        .dial(endpoint.addr)
        .await
        .map_err(|e| (e, false))?;
    if let Some(handshake) = &cx.lifecycle.handshake {
        let limit = cx
            .lifecycle
            .effective_handshake_timeout(cx.dialer.connect_timeout());
        // A panic in the handshake (a bug on some odd logon reply) is a
        // failed handshake: it must not end this endpoint's maintenance.
        let run = async {
            let mut fut = catch_unwind(|| handshake(conn.clone()))?;
            std::future::poll_fn(|cx| match catch_unwind(|| fut.as_mut().poll(cx)) {
                Ok(Poll::Ready(done)) => Poll::Ready(Ok(done)),
                Ok(Poll::Pending) => Poll::Pending,
                Err(panic) => Poll::Ready(Err(panic)),
            })
            .await
        };
        let failed = match tokio::time::timeout(limit, run).await {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(e))) => Some(Error::with_source(Kind::Connect, HandshakeFailed(e))),
            Ok(Err(panic)) => Some(Error::with_source(
                Kind::Connect,
                format!("handshake panicked: {panic}"),
            )),
            Err(_) => Some(Error::with_source(
                Kind::Connect,
                format!("handshake timed out after {limit:?}"),
            )),
        };
        if let Some(error) = failed {
            conn.close();
            return Err((error, true));
        }
        tracing::debug!("handshake done");
    }
    if let Some(classify) = &cx.lifecycle.classifier {
        conn.set_reply_hook(endpoint.reply_hook(classify.clone()));
    }
    // A retirement decided by the connection itself (a reply classified as a
    // connection failure, too many tags held) wakes the maintenance task, so
    // that the replacement is dialed at once.
    conn.set_owner_wake(endpoint.wake.clone());
    Ok(conn)
}

/// Runs `f`, turning a panic into its message (user code: a handshake, a
/// heartbeat check).
pub(crate) fn catch_unwind<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .map_err(|panic| panic_message(&*panic).to_owned())
}

/// A handshake's own error, as the source of the `Connect` error it becomes.
#[derive(Debug)]
struct HandshakeFailed(crate::BoxError);

impl std::fmt::Display for HandshakeFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "handshake failed: {}", self.0)
    }
}

impl std::error::Error for HandshakeFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Retires a working connection: it refuses new requests and finishes those
/// in flight within its close grace.
fn retire_now(endpoint: &Endpoint, conn: &Connection, why: Retire) {
    endpoint.retired.fetch_add(1, Relaxed);
    tracing::info!(
        reason = why.as_str(),
        age = ?conn.opened_at().elapsed(),
        "retiring connection"
    );
    conn.retire(why.as_str());
}

/// Watches one connection until it has finished: its heartbeats while it is
/// idle, and its age and idleness, which it reports to the maintenance task.
/// Without any of them it only waits.
async fn keep(
    conn: Connection,
    endpoint: Arc<Endpoint>,
    heartbeat: Option<Heartbeat>,
    max_age: Option<Duration>,
    idle_timeout: Option<Duration>,
) {
    if heartbeat.is_none() && max_age.is_none() && idle_timeout.is_none() {
        conn.closed().await;
        return;
    }
    let mut age_at = max_age.map(|age| age_limit(conn.opened_at(), age));
    // Idleness is sampled four times per period, so a heartbeat goes out
    // after between 1 and 1.25 intervals of idleness.
    let period = [heartbeat.as_ref().map(|h| h.interval), idle_timeout]
        .into_iter()
        .flatten()
        .min()
        .map(|d| (d / 4).max(Duration::from_millis(1)));
    // Requests written by heartbeats, which are not the callers' activity.
    let mut beats: u64 = 0;
    let mut seen = conn.stats().written;
    let mut active_at = Instant::now();
    let mut beat_at = active_at;
    let mut asked_idle = false;
    loop {
        let next = [age_at, period.map(|p| later(Instant::now(), p))]
            .into_iter()
            .flatten()
            .min();
        tokio::select! {
            () = conn.closed() => return,
            () = sleep_until_opt(next) => {}
        }
        if conn.is_closed() {
            conn.closed().await;
            return;
        }
        let now = Instant::now();
        if age_at.is_some_and(|t| now >= t) {
            age_at = None;
            endpoint.retire(&conn, Retire::MaxAge);
        }
        let stats = conn.stats();
        let written = stats.written.saturating_sub(beats);
        if written != seen || stats.in_flight > 0 {
            seen = written;
            active_at = now;
            asked_idle = false;
        }
        if let Some(heartbeat) = &heartbeat {
            let idle_from = active_at.max(beat_at);
            if now.saturating_duration_since(idle_from) >= heartbeat.interval {
                match heartbeat.beat(&conn).await {
                    Ok(()) => {
                        beats += 1;
                        beat_at = Instant::now();
                        tracing::trace!("heartbeat answered");
                    }
                    // Closed meanwhile (retired, or the pool stopped): not a miss.
                    Err(_) if conn.is_closed() => {}
                    Err(why) => endpoint.heartbeat_missed(&conn, why),
                }
                continue;
            }
        }
        if let Some(idle) = idle_timeout {
            if !asked_idle && now.saturating_duration_since(active_at) >= idle {
                asked_idle = true;
                endpoint.retire(&conn, Retire::Idle);
            }
        }
    }
}

/// Sets or clears a state bit other than `UP`/`PENDING`; true if that changed it.
fn set_bit(endpoint: &Endpoint, cx: &PoolContext, bit: u8, on: bool) -> bool {
    let changed = endpoint.set(bit, on);
    if changed {
        cx.changed.notify_waiters();
    }
    changed
}

fn set_pending(endpoint: &Endpoint, cx: &PoolContext, pending: bool) {
    if endpoint.set(PENDING, pending) {
        cx.changed.notify_waiters();
    }
}

fn set_up(endpoint: &Endpoint, cx: &PoolContext, up: bool) {
    if endpoint.set(UP, up) {
        let mut since = lock(&endpoint.down_since);
        if up {
            *since = None;
            tracing::info!("endpoint up");
        } else {
            since.get_or_insert_with(Instant::now);
            tracing::info!("endpoint down");
        }
        drop(since);
        cx.changed.notify_waiters();
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// A loopback listener that accepts connections and holds them open, never
/// reading or writing (for tests of pools over live connections).
#[cfg(test)]
pub(crate) async fn holding_listener() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    addr
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::client::Connector;

    /// Runs one endpoint's pool against a loopback listener that accepts and
    /// holds its connections; returns it once it has a live connection.
    async fn running_endpoint(cx: &PoolContext) -> Arc<Endpoint> {
        let addr = holding_listener().await;
        let endpoint = Arc::new(Endpoint::new(addr, 0));
        tokio::spawn(maintain(endpoint.clone(), cx.clone()));
        for _ in 0..2_000 {
            if endpoint.live() > 0 {
                return endpoint;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("no connection to {addr}");
    }

    /// A running endpoint, one of its live connections as a routing snapshot
    /// shows it, and a unit of that connection's window taken from it.
    async fn holding_a_unit() -> (PoolContext, Arc<Endpoint>, Connection, Unit) {
        let cx = PoolContext::new(
            PoolConfig::new(),
            Dialer::tcp(Connector::new()),
            Lifecycle::new(),
        );
        let endpoint = running_endpoint(&cx).await;
        let conn = endpoint
            .conns
            .load()
            .first()
            .expect("a live connection")
            .clone();
        let unit = conn.try_take_unit().expect("room in the window");
        (cx, endpoint, conn, unit)
    }

    /// A request routed on a snapshot of the live connections taken just
    /// before its endpoint was removed: it picked a connection and took a
    /// unit of its window, then the pool drained and closed that connection,
    /// and only then does the request reach it. It was never written and the
    /// client is open, so it must fail as `NotSent` (the retry layer sends it
    /// elsewhere), not as `Closed` (never retried: the client's own close).
    #[tokio::test]
    async fn a_request_racing_its_endpoints_removal_fails_not_sent() {
        let (cx, endpoint, conn, unit) = holding_a_unit().await;

        endpoint.remove();
        tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("the removed endpoint's connection finishes");

        let error = conn
            .send_reserved(unit, Bytes::from_static(b"late"), Deadline::Never)
            .await
            .expect_err("the connection has closed");
        assert_eq!(error.kind(), Kind::NotSent, "{error:?}");
        assert!(error.is_unsent());
        cx.shutdown.cancel();
    }

    /// The same race with the client closing: the request fails `Closed`.
    #[tokio::test]
    async fn a_request_racing_the_clients_close_fails_closed() {
        let (cx, _endpoint, conn, unit) = holding_a_unit().await;

        cx.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), conn.closed())
            .await
            .expect("the connection finishes");

        let error = conn
            .send_reserved(unit, Bytes::from_static(b"late"), Deadline::Never)
            .await
            .expect_err("the connection has closed");
        assert_eq!(error.kind(), Kind::Closed, "{error:?}");
        assert!(error.is_unsent());
    }

    /// The maintenance task moves "up" to "pending" when it redials a lost
    /// connection, and back when the dial succeeds; a request reading the two
    /// flags meanwhile must never see neither (it would fail `Unavailable`
    /// instead of waiting for the dial).
    #[test]
    fn a_redialing_endpoint_is_never_seen_neither_up_nor_pending() {
        let cx = PoolContext::new(
            PoolConfig::new(),
            Dialer::tcp(Connector::new()),
            Lifecycle::new(),
        );
        let endpoint = Arc::new(Endpoint::new("127.0.0.1:9".parse().expect("addr"), 0));
        set_up(&endpoint, &cx, true);
        set_pending(&endpoint, &cx, false);
        let stop = Arc::new(AtomicBool::new(false));
        let reader = std::thread::spawn({
            let (endpoint, stop) = (endpoint.clone(), stop.clone());
            move || {
                let mut reads = 0u64;
                while !stop.load(Relaxed) {
                    assert!(endpoint.may_come_up(), "seen neither after {reads} reads");
                    reads += 1;
                }
            }
        });
        for _ in 0..2_000_000 {
            // A connection lost: announce the redial, then withdraw `up`.
            set_pending(&endpoint, &cx, true);
            set_up(&endpoint, &cx, false);
            // The dial succeeded: `up` again, then no longer pending.
            set_up(&endpoint, &cx, true);
            set_pending(&endpoint, &cx, false);
            if reader.is_finished() {
                break;
            }
        }
        stop.store(true, Relaxed);
        reader.join().expect("never neither");
    }
}

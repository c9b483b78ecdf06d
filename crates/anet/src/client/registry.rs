//! The endpoint registry: the set of endpoints a client balances over, who
//! owns each address (the user, each DNS source, each `Discover` key), and
//! closing them all. The [`Balancer`](super::Balancer) routes over it;
//! [`discover`](super::discover) feeds it.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::{
    lanes::Lanes,
    pool::{Endpoint, EndpointStats, PoolContext, maintain},
};

/// The set of endpoints a client balances over, and their pools.
#[derive(Debug)]
pub(crate) struct Registry {
    /// The routable set, replaced whole on every change (changes are rare).
    /// Requests read a snapshot without a lock (no shared counter bounces
    /// between the threads of a multi-thread runtime); changes are made under
    /// `owners`, so they never race each other.
    endpoints: ArcSwap<Vec<Lanes<Endpoint>>>,
    /// Removed endpoints whose connections are still draining: in the stats
    /// until they have finished.
    retired: Mutex<Vec<Arc<Endpoint>>>,
    /// Who wants each address; an endpoint lives while anyone does. Taken
    /// before `endpoints` when both are.
    owners: Mutex<Owners>,
    pub(crate) pool: PoolContext,
    pub(crate) tracker: TaskTracker,
    closed: AtomicBool,
    /// A discovery source has not produced its first answer yet: requests with
    /// nowhere to go may wait for it (up to the connect timeout).
    discovering: AtomicUsize,
    /// How long a request waits for an endpoint whose first connect is under way.
    pub(crate) pending_wait: Duration,
}

/// A snapshot of the routable endpoints (held briefly: it keeps the set it
/// was taken from alive).
pub(crate) type Snapshot = arc_swap::Guard<Arc<Vec<Lanes<Endpoint>>>>;

/// The owners of each address: the user (the static list and the [`Endpoints`]
/// handle, together one owner), each DNS source and each `Discover` key.
#[derive(Debug, Default)]
struct Owners {
    /// Owners per address present; an address leaves when its count reaches 0.
    count: HashMap<SocketAddr, usize>,
    /// The addresses the user owns.
    user: HashSet<SocketAddr>,
}

impl Registry {
    pub(crate) fn new(pool: PoolContext, pending_wait: Duration) -> Arc<Registry> {
        Arc::new(Registry {
            endpoints: ArcSwap::from_pointee(Vec::new()),
            owners: Mutex::default(),
            retired: Mutex::default(),
            pool,
            tracker: TaskTracker::new(),
            closed: AtomicBool::new(false),
            discovering: AtomicUsize::new(0),
            pending_wait,
        })
    }

    fn read(&self) -> Snapshot {
        self.endpoints.load()
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, Owners> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more owner (a DNS source, a `Discover` key) wants `addr`: the first
    /// one adds the endpoint. False if the client is closed.
    pub(crate) fn acquire(&self, addr: SocketAddr) -> bool {
        Self::acquire_in(&mut self.owners(), self, addr, 0)
    }

    /// An owner of `addr` lets go: the last one removes the endpoint.
    pub(crate) fn release(&self, addr: SocketAddr) {
        Self::release_in(&mut self.owners(), self, addr);
    }

    /// The user wants `addr` (a static endpoint, [`Endpoints::add`]); false if
    /// they already did or the client is closed.
    pub(crate) fn add_by_user(&self, addr: SocketAddr, priority: u32) -> bool {
        let mut owners = self.owners();
        if owners.user.contains(&addr) || !Self::acquire_in(&mut owners, self, addr, priority) {
            return false;
        }
        owners.user.insert(addr)
    }

    /// The user lets go of `addr` ([`Endpoints::remove`]); false if they did
    /// not want it.
    pub(crate) fn remove_by_user(&self, addr: SocketAddr) -> bool {
        let mut owners = self.owners();
        if !owners.user.remove(&addr) {
            return false;
        }
        Self::release_in(&mut owners, self, addr);
        true
    }

    fn acquire_in(
        owners: &mut Owners,
        registry: &Registry,
        addr: SocketAddr,
        priority: u32,
    ) -> bool {
        if registry.is_closed() {
            return false;
        }
        let count = owners.count.entry(addr).or_insert(0);
        *count += 1;
        if *count == 1 {
            registry.add(addr, priority);
        }
        true
    }

    fn release_in(owners: &mut Owners, registry: &Registry, addr: SocketAddr) {
        let Some(count) = owners.count.get_mut(&addr) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            owners.count.remove(&addr);
            registry.remove(addr);
        }
    }

    /// Adds an endpoint and starts its pool; false if it is already present.
    /// The set stays ordered by priority (then by arrival). Called with
    /// `owners` held (see `endpoints`).
    fn add(&self, addr: SocketAddr, priority: u32) -> bool {
        if self.closed.load(Relaxed) {
            return false;
        }
        let current = self.endpoints.load_full();
        if current.iter().any(|e| e.addr == addr) {
            return false;
        }
        let endpoint = Lanes::new(Endpoint::new(addr, priority));
        let mut next: Vec<_> = current.iter().cloned().collect();
        let at = next.partition_point(|e| e.priority <= priority);
        next.insert(at, endpoint.clone());
        self.endpoints.store(Arc::new(next));
        let span = tracing::info_span!("anet.endpoint", %addr);
        self.tracker
            .spawn(maintain(endpoint.arc().clone(), self.pool.clone()).instrument(span));
        self.pool.changed.notify_waiters();
        tracing::info!(%addr, "endpoint added");
        true
    }

    /// Removes an endpoint: no new requests go to it, its connections drain and
    /// close. False if it was not present. Called with `owners` held (see
    /// `endpoints`). A request routed on a snapshot taken just before may
    /// still reach it: it is then in flight on a connection that drains (or,
    /// once that has closed, refused as `NotSent`, which the retry layer
    /// sends elsewhere), as on any draining connection.
    fn remove(&self, addr: SocketAddr) -> bool {
        let current = self.endpoints.load_full();
        let Some(endpoint) = current.iter().find(|e| e.addr == addr).cloned() else {
            return false;
        };
        let next: Vec<_> = current.iter().filter(|e| e.addr != addr).cloned().collect();
        self.endpoints.store(Arc::new(next));
        endpoint.remove();
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|e| !e.is_stopped());
        retired.push(endpoint.arc().clone());
        tracing::info!(%addr, "endpoint removed");
        true
    }

    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.read().iter().map(|e| e.addr).collect()
    }

    /// The endpoints, then the removed ones still draining.
    pub(crate) fn stats(&self) -> Vec<EndpointStats> {
        let mut stats: Vec<_> = self.read().iter().map(|e| e.stats()).collect();
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|e| !e.is_stopped());
        stats.extend(retired.iter().map(|e| e.stats()));
        stats
    }

    pub(crate) fn close(&self) {
        if !self.closed.swap(true, Relaxed) {
            self.pool.shutdown.cancel();
            self.tracker.close();
            self.pool.changed.notify_waiters();
        }
    }

    /// A discovery source starts: until it answers, requests may wait for it.
    pub(crate) fn discovery_started(&self) {
        self.discovering.fetch_add(1, Relaxed);
    }

    /// A discovery source gave its first answer (or ended).
    pub(crate) fn discovery_answered(&self) {
        self.discovering.fetch_sub(1, Relaxed);
        self.pool.changed.notify_waiters();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }

    /// The routable endpoints now: a snapshot, read without a lock.
    pub(crate) fn endpoints(&self) -> Snapshot {
        self.read()
    }

    /// Whether there are endpoints, every one up with at least `min` live
    /// connections, and no discovery source still to answer.
    pub(crate) fn all_connected(&self, min: usize) -> bool {
        let endpoints = self.read();
        !self.is_discovering()
            && !endpoints.is_empty()
            && endpoints.iter().all(|e| e.is_up() && e.live() >= min)
    }

    /// Whether a discovery source has yet to give its first answer.
    pub(crate) fn is_discovering(&self) -> bool {
        self.discovering.load(Relaxed) > 0
    }
}

impl Drop for Registry {
    /// The last handle (client, balancer, endpoints handle or client call) is
    /// gone: stop the pools, so their connections close instead of leaking.
    fn drop(&mut self) {
        self.close();
    }
}

/// A handle to add and remove endpoints of a running client.
///
/// A removed endpoint gets no request routed after [`remove`](Self::remove)
/// returns; the requests in flight on it finish (within the connection close
/// grace) and its connections close. Routing reads the endpoints without a
/// lock, so a request routed at the very moment of the removal may still go
/// there: it is then in flight like the others, or, if the connections have
/// already closed, it fails [`Kind::NotSent`](crate::Kind::NotSent), which the
/// client's retry layer sends to another endpoint.
///
/// An address can have several owners: this handle together with the builder's
/// static endpoints, each DNS source, each key of a `Discover`. It stays an
/// endpoint until the last of them lets go: removing here an address that DNS
/// still resolves to keeps it (and the handle cannot remove what only a
/// discovery source added).
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub(crate) registry: Arc<Registry>,
}

impl Endpoints {
    /// Adds an endpoint and starts connecting to it (if no discovery source has
    /// already). Returns false if this handle or the builder had already added
    /// it, or the client is closed.
    pub fn add(&self, addr: SocketAddr) -> bool {
        self.registry.add_by_user(addr, 0)
    }

    /// Adds an endpoint in failover group `priority` (0 first; see
    /// [`ClientBuilder::endpoint_with_priority`](super::ClientBuilder::endpoint_with_priority)).
    /// Returns false as [`add`](Self::add) does; an address already present
    /// keeps the priority it has.
    pub fn add_with_priority(&self, addr: SocketAddr, priority: u32) -> bool {
        self.registry.add_by_user(addr, priority)
    }

    /// Removes an endpoint added by this handle or the builder, and drains it
    /// unless a discovery source still lists it. Returns false if neither had
    /// added it.
    pub fn remove(&self, addr: SocketAddr) -> bool {
        self.registry.remove_by_user(addr)
    }

    /// The endpoints now.
    pub fn list(&self) -> Vec<SocketAddr> {
        self.registry.addrs()
    }
}

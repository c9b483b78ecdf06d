//! Power-of-two-choices balancing over the endpoints' pools, shared without a
//! lock-holding worker task.
//!
//! tower's `p2c::Balance` needs `&mut self`, so sharing it between tasks takes a
//! `Buffer` (a task hop and an allocation per request). [`Balancer`] runs the same
//! algorithm — pick two endpoints at random, send to the one with fewer requests in
//! flight — over state that every clone shares through atomics, so the caller's own
//! task does the routing.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use bytes::Bytes;
use pin_project_lite::pin_project;
use tokio::{
    sync::futures::OwnedNotified,
    time::{Instant, Sleep},
};
use tokio_util::task::TaskTracker;
use tower::Service;
use tracing::Instrument;

use super::{
    Connection,
    connection::{ConnectionFuture, Failure},
    deadline::{self, Deadline},
    pool::{Endpoint, EndpointStats, PoolContext, maintain},
};
use crate::time::later;
use crate::{Error, Kind};

/// The set of endpoints a client balances over, and their pools.
#[derive(Debug)]
pub(crate) struct Registry {
    /// The routable set, replaced whole on every change (changes are rare).
    endpoints: RwLock<Arc<[Arc<Endpoint>]>>,
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
    pending_wait: Duration,
}

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
            endpoints: RwLock::new(Arc::from(Vec::new())),
            owners: Mutex::default(),
            retired: Mutex::default(),
            pool,
            tracker: TaskTracker::new(),
            closed: AtomicBool::new(false),
            discovering: AtomicUsize::new(0),
            pending_wait,
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Arc<[Arc<Endpoint>]>> {
        self.endpoints.read().unwrap_or_else(|p| p.into_inner())
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, Owners> {
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more owner (a DNS source, a `Discover` key) wants `addr`: the first
    /// one adds the endpoint. False if the client is closed.
    pub(crate) fn acquire(&self, addr: SocketAddr) -> bool {
        Self::acquire_in(&mut self.owners(), self, addr)
    }

    /// An owner of `addr` lets go: the last one removes the endpoint.
    pub(crate) fn release(&self, addr: SocketAddr) {
        Self::release_in(&mut self.owners(), self, addr);
    }

    /// The user wants `addr` (a static endpoint, [`Endpoints::add`]); false if
    /// they already did or the client is closed.
    pub(crate) fn add_by_user(&self, addr: SocketAddr) -> bool {
        let mut owners = self.owners();
        if owners.user.contains(&addr) || !Self::acquire_in(&mut owners, self, addr) {
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

    fn acquire_in(owners: &mut Owners, registry: &Registry, addr: SocketAddr) -> bool {
        if registry.is_closed() {
            return false;
        }
        let count = owners.count.entry(addr).or_insert(0);
        *count += 1;
        if *count == 1 {
            registry.add(addr);
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
    fn add(&self, addr: SocketAddr) -> bool {
        if self.closed.load(Relaxed) {
            return false;
        }
        let mut guard = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
        if guard.iter().any(|e| e.addr == addr) {
            return false;
        }
        let endpoint = Arc::new(Endpoint::new(addr));
        let mut next: Vec<_> = guard.iter().cloned().collect();
        next.push(endpoint.clone());
        *guard = Arc::from(next);
        drop(guard);
        let span = tracing::info_span!("anet.endpoint", %addr);
        self.tracker
            .spawn(maintain(endpoint, self.pool.clone()).instrument(span));
        self.pool.changed.notify_waiters();
        tracing::info!(%addr, "endpoint added");
        true
    }

    /// Removes an endpoint: no new requests go to it, its connections drain and
    /// close. False if it was not present.
    fn remove(&self, addr: SocketAddr) -> bool {
        let mut guard = self.endpoints.write().unwrap_or_else(|p| p.into_inner());
        let Some(endpoint) = guard.iter().find(|e| e.addr == addr).cloned() else {
            return false;
        };
        let next: Vec<_> = guard.iter().filter(|e| e.addr != addr).cloned().collect();
        *guard = Arc::from(next);
        drop(guard);
        endpoint.remove();
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|e| !e.is_stopped());
        retired.push(endpoint);
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

    /// Chooses an endpoint by power of two choices and sends on its least-loaded
    /// connection when it has room.
    fn route(&self, payload: Bytes, deadline: Deadline) -> Routed {
        let endpoints = self.read();
        let n = endpoints.len();
        let mut payload = payload;
        if n > 0 {
            let a = fastrand::usize(..n);
            let b = if n > 1 {
                let b = fastrand::usize(..n - 1);
                if b >= a { b + 1 } else { b }
            } else {
                a
            };
            let (first, second) = (&endpoints[a], &endpoints[b]);
            let pair = [first, second];
            let candidates: &[&Arc<Endpoint>] = if a == b {
                &pair[..1]
            } else if first.is_up() && second.is_up() && second.load() < first.load() {
                &[second, first]
            } else {
                &pair
            };
            let mut full = None;
            for endpoint in candidates.iter().filter(|e| e.is_up()) {
                match endpoint.dispatch(payload, deadline) {
                    Ok(future) => return Routed::Sent((*endpoint).clone(), future),
                    Err((back, Some(conn))) => {
                        payload = back;
                        full.get_or_insert_with(|| ((*endpoint).clone(), conn));
                    }
                    Err((back, None)) => {
                        payload = back;
                        // Marked up but no live connection: its pool has not
                        // noticed yet.
                        endpoint.signal_broken();
                    }
                }
            }
            if let Some((endpoint, conn)) = full {
                return Routed::Full(payload, endpoint, conn);
            }
            // Both choices were down: take any endpoint that is up, from a random
            // starting point so the load still spreads.
            let start = fastrand::usize(..n);
            for i in 0..n {
                let endpoint = &endpoints[(start + i) % n];
                if !endpoint.is_up() {
                    continue;
                }
                match endpoint.dispatch(payload, deadline) {
                    Ok(future) => return Routed::Sent(endpoint.clone(), future),
                    Err((back, Some(conn))) => return Routed::Full(back, endpoint.clone(), conn),
                    Err((back, None)) => payload = back,
                }
            }
        }
        // Worth waiting when a discovery or a dial is under way, or when an
        // endpoint marked up has just lost its connections (its pool is about to
        // redial or mark it down).
        let wait = self.discovering.load(Relaxed) > 0 || endpoints.iter().any(|e| e.may_come_up());
        Routed::Nowhere(payload, wait)
    }
}

impl Drop for Registry {
    /// The last handle (client, balancer, endpoints handle or client call) is
    /// gone: stop the pools, so their connections close instead of leaking.
    fn drop(&mut self) {
        self.close();
    }
}

/// Where [`Registry::route`] got a request.
enum Routed {
    /// Sent on a connection of this endpoint.
    Sent(Arc<Endpoint>, ConnectionFuture),
    /// Every candidate connection is full: wait for room on this one.
    Full(Bytes, Arc<Endpoint>, Connection),
    /// No endpoint can take it; `true` if one may soon.
    Nowhere(Bytes, bool),
}

/// The balanced pool as a tower `Service<Bytes>`: the bottom of a client stack,
/// public so that users can build their own `ServiceBuilder` stack on it.
///
/// Cheap to clone; every clone routes over the same endpoints. `poll_ready` is
/// ready while the client is open: waiting for an endpoint or for room on a
/// connection happens inside the response future, so a `Timeout` around it covers
/// that wait too. A request that cannot be routed fails with
/// [`Kind::Unavailable`] at once when every endpoint is down, or after the connect
/// timeout while an endpoint is making its first connection.
#[derive(Clone, Debug)]
pub struct Balancer {
    pub(crate) registry: Arc<Registry>,
}

impl Service<Bytes> for Balancer {
    type Response = Bytes;
    type Error = Error;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.registry.is_closed() {
            return Poll::Ready(Err(Error::new(Kind::Closed).unsent()));
        }
        Poll::Ready(Ok(()))
    }

    /// Under a [`Client`](super::Client) call (through its limit layers), the
    /// request keeps that call's deadline; otherwise it has none of its own.
    ///
    /// The request is routed at once, here: when a connection has room it is on
    /// its way before the future is first polled.
    fn call(&mut self, request: Bytes) -> ResponseFuture {
        ResponseFuture::start(&self.registry, request, deadline::current())
    }
}

/// Re-picks allowed when a chosen connection turns out broken.
const MAX_REPICKS: u8 = 3;

pin_project! {
    /// The response future of [`Balancer`]: route, wait for room, send, await.
    ///
    /// # Cancellation safety
    ///
    /// Dropping it before the request is written means it is never written;
    /// afterwards, the connection's quarantine rules apply.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture {
        // The call's deadline: bounds the waits here (fixed to an instant when a
        // wait starts), and goes with the request to the connection.
        deadline: Deadline,
        #[pin]
        state: State,
    }
}

impl std::fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pin_project! {
    #[project = StateProj]
    enum State {
        /// On a connection: awaiting the response.
        Sent {
            // Where the request went, to count its failure.
            endpoint: Arc<Endpoint>,
            #[pin]
            future: ConnectionFuture,
        },
        /// Not sent yet: waiting for an endpoint or for room. The slow path,
        /// boxed so that the common future stays small.
        Waiting { wait: Pin<Box<Wait>> },
        Failed { error: Option<Error> },
    }
}

impl ResponseFuture {
    /// Routes `request` now; only a request that cannot be sent at once keeps a
    /// handle on the registry, to wait and route again when polled.
    pub(crate) fn start(
        registry: &Arc<Registry>,
        request: Bytes,
        deadline: Deadline,
    ) -> ResponseFuture {
        let state = if registry.is_closed() {
            State::Failed {
                error: Some(Error::new(Kind::Closed).unsent()),
            }
        } else {
            match registry.route(request, deadline) {
                Routed::Sent(endpoint, future) => State::Sent { endpoint, future },
                Routed::Full(back, endpoint, conn) => State::Waiting {
                    wait: Wait::boxed(registry, back, Stage::ready(endpoint, conn)),
                },
                // Polling decides whether to wait for an endpoint or fail.
                Routed::Nowhere(back, _) => State::Waiting {
                    wait: Wait::boxed(registry, back, Stage::Pick),
                },
            }
        };
        ResponseFuture { deadline, state }
    }

    /// Like `poll`, with the instant the request's deadline was fixed to, if it
    /// was: a retry keeps it.
    pub(crate) fn poll_answer(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Bytes, Failure>> {
        let mut this = self.project();
        loop {
            let error = match this.state.as_mut().project() {
                StateProj::Sent { endpoint, future } => {
                    let answer = ready!(future.get_mut().poll_answer(cx));
                    return Poll::Ready(answer.map_err(|mut failure| {
                        endpoint.record(&failure.error);
                        failure.deadline = failure.deadline.or(this.deadline.instant());
                        failure
                    }));
                }
                StateProj::Waiting { wait } => {
                    match ready!(wait.as_mut().poll_send(cx, this.deadline)) {
                        Ok((endpoint, future)) => {
                            this.state.set(State::Sent { endpoint, future });
                            continue;
                        }
                        Err(error) => error,
                    }
                }
                StateProj::Failed { error } => error.take().expect("polled after completion"),
            };
            return Poll::Ready(Err(Failure {
                error,
                deadline: this.deadline.instant(),
            }));
        }
    }
}

impl Future for ResponseFuture {
    type Output = Result<Bytes, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.poll_answer(cx).map_err(|failure| failure.error)
    }
}

pin_project! {
    /// A request that could not be sent at once.
    struct Wait {
        registry: Arc<Registry>,
        request: Option<Bytes>,
        repicks: u8,
        // How long to wait for an endpoint's first connection, from the first wait.
        wait_until: Option<Instant>,
        #[pin]
        stage: Stage,
    }
}

pin_project! {
    #[project = StageProj]
    enum Stage {
        /// Route (again).
        Pick,
        /// No endpoint can take it yet, but one may soon.
        WaitUp {
            #[pin]
            notified: OwnedNotified,
            #[pin]
            sleep: Sleep,
        },
        /// Every candidate connection is full: wait for room on this one.
        Ready {
            endpoint: Arc<Endpoint>,
            conn: Connection,
            signalled: bool,
            // Armed when the wait for room starts, to the call's deadline.
            #[pin]
            deadline: Option<Sleep>,
        },
    }
}

impl Stage {
    fn ready(endpoint: Arc<Endpoint>, conn: Connection) -> Stage {
        Stage::Ready {
            endpoint,
            conn,
            signalled: false,
            deadline: None,
        }
    }
}

impl Wait {
    fn boxed(registry: &Arc<Registry>, request: Bytes, stage: Stage) -> Pin<Box<Wait>> {
        Box::pin(Wait {
            registry: registry.clone(),
            request: Some(request),
            repicks: 0,
            wait_until: None,
            stage,
        })
    }

    /// Waits until the request is on a connection (fixing `deadline` when a wait
    /// starts), or fails.
    fn poll_send(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        deadline: &mut Deadline,
    ) -> Poll<Result<(Arc<Endpoint>, ConnectionFuture), Error>> {
        let mut this = self.project();
        loop {
            match this.stage.as_mut().project() {
                StageProj::Pick => {
                    let registry = &*this.registry;
                    if registry.is_closed() {
                        return Poll::Ready(Err(Error::new(Kind::Closed).unsent()));
                    }
                    let mut request = this.request.take().expect("request taken once");
                    let mut notified = None;
                    loop {
                        match registry.route(request, *deadline) {
                            Routed::Sent(endpoint, future) => {
                                return Poll::Ready(Ok((endpoint, future)));
                            }
                            Routed::Full(back, endpoint, conn) => {
                                *this.request = Some(back);
                                this.stage.set(Stage::ready(endpoint, conn));
                            }
                            Routed::Nowhere(_, false) => {
                                return Poll::Ready(Err(Error::with_source(
                                    Kind::Unavailable,
                                    "no endpoint is up",
                                )));
                            }
                            Routed::Nowhere(back, true) => match notified.take() {
                                // Register for endpoint changes, then look once
                                // more, so a change in between is not missed.
                                None => {
                                    notified = Some(registry.pool.changed.clone().notified_owned());
                                    request = back;
                                    continue;
                                }
                                Some(notified) => {
                                    *this.request = Some(back);
                                    let mut until = *this.wait_until.get_or_insert_with(|| {
                                        later(Instant::now(), registry.pending_wait)
                                    });
                                    if let Some(call) = deadline.fix(Instant::now) {
                                        until = until.min(call);
                                    }
                                    this.stage.set(Stage::WaitUp {
                                        notified,
                                        sleep: tokio::time::sleep_until(until),
                                    });
                                }
                            },
                        }
                        break;
                    }
                }
                StageProj::WaitUp { notified, sleep } => {
                    if notified.poll(cx).is_ready() {
                        this.stage.set(Stage::Pick);
                        continue;
                    }
                    ready!(sleep.poll(cx));
                    if deadline.instant().is_some_and(|d| d <= Instant::now()) {
                        return Poll::Ready(Err(Error::with_source(
                            Kind::Timeout,
                            "request deadline passed waiting for an endpoint",
                        )
                        .unsent()));
                    }
                    return Poll::Ready(Err(Error::with_source(
                        Kind::Unavailable,
                        "no endpoint connected within the connect timeout",
                    )));
                }
                StageProj::Ready {
                    endpoint,
                    conn,
                    signalled,
                    deadline: mut timer,
                } => match conn.poll_ready(cx) {
                    Poll::Ready(Ok(())) => {
                        let request = this.request.take().expect("request taken once");
                        let future = conn.call_until(request, *deadline);
                        return Poll::Ready(Ok((endpoint.clone(), future)));
                    }
                    Poll::Ready(Err(error)) => {
                        endpoint.signal_broken();
                        *this.repicks += 1;
                        if *this.repicks > MAX_REPICKS {
                            return Poll::Ready(Err(Error::with_source(Kind::NotSent, error)));
                        }
                        this.stage.set(Stage::Pick);
                    }
                    Poll::Pending => {
                        if !*signalled {
                            *signalled = true;
                            endpoint.signal_demand();
                        }
                        if timer.is_none() {
                            if let Some(at) = deadline.fix(Instant::now) {
                                timer.set(Some(tokio::time::sleep_until(at)));
                            }
                        }
                        if let Some(sleep) = timer.as_pin_mut() {
                            if sleep.poll(cx).is_ready() {
                                return Poll::Ready(Err(Error::with_source(
                                    Kind::Timeout,
                                    "request deadline passed waiting for room on a connection",
                                )
                                .unsent()));
                            }
                        }
                        return Poll::Pending;
                    }
                },
            }
        }
    }
}

/// A handle to add and remove endpoints of a running client.
///
/// A removed endpoint gets no new requests; the requests in flight on it finish
/// (within the connection close grace) and its connections close.
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
        self.registry.add_by_user(addr)
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

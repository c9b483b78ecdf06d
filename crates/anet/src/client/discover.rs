//! Where a client's endpoints come from at run time: a DNS name re-resolved on an
//! interval, or any tower `Discover` of addresses.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    future::Future,
    hash::Hash,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use tower::discover::{Change, Discover};

use super::registry::Registry;
use crate::BoxError;

/// The future a [`Resolve`] returns.
pub type ResolveFuture = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// Turns a `host:port` target into addresses. The default is the system resolver
/// ([`SystemResolver`]); tests and service meshes plug in their own.
///
/// Any `Fn(&str) -> ResolveFuture` closure is a resolver.
pub trait Resolve: Send + Sync + 'static {
    /// Resolves `target` (`host:port`).
    fn resolve(&self, target: &str) -> ResolveFuture;
}

impl<F> Resolve for F
where
    F: Fn(&str) -> ResolveFuture + Send + Sync + 'static,
{
    fn resolve(&self, target: &str) -> ResolveFuture {
        self(target)
    }
}

/// The operating system's resolver (`tokio::net::lookup_host`).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, target: &str) -> ResolveFuture {
        let target = target.to_owned();
        Box::pin(async move { Ok(tokio::net::lookup_host(target).await?.collect()) })
    }
}

/// A DNS-driven endpoint source: a target and how often to re-resolve it.
#[derive(Clone)]
pub(crate) struct DnsSource {
    pub(crate) target: String,
    pub(crate) every: Duration,
    pub(crate) resolver: Arc<dyn Resolve>,
}

impl fmt::Debug for DnsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsSource")
            .field("target", &self.target)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

/// Re-resolves the target on its interval and makes the endpoint set follow it.
/// A failed or empty resolution keeps the current set.
pub(crate) fn spawn_dns(registry: &Arc<Registry>, source: DnsSource) {
    let registry_ref = Arc::downgrade(registry);
    let shutdown = registry.pool.shutdown.clone();
    registry.discovery_started();
    registry.tracker.spawn(async move {
        let mut current: HashSet<SocketAddr> = HashSet::new();
        let mut first = true;
        loop {
            // A resolver that never answers must not hold up shutdown, nor keep
            // the registry alive (its last handle's drop is what closes it).
            let resolved = tokio::select! {
                r = source.resolver.resolve(&source.target) => r,
                () = shutdown.cancelled() => return,
            };
            let Some(registry) = registry_ref.upgrade() else {
                return;
            };
            match resolved {
                Ok(addrs) if !addrs.is_empty() => {
                    let next: HashSet<SocketAddr> = addrs.into_iter().collect();
                    for addr in next.difference(&current) {
                        registry.acquire(*addr);
                    }
                    for addr in current.difference(&next) {
                        registry.release(*addr);
                    }
                    current = next;
                }
                Ok(_) => {
                    tracing::warn!(target = %source.target, "resolved to no address; keeping endpoints");
                }
                Err(error) => {
                    tracing::warn!(target = %source.target, %error, "resolve failed; keeping endpoints");
                }
            }
            if std::mem::take(&mut first) {
                registry.discovery_answered();
            }
            drop(registry);
            tokio::select! {
                () = tokio::time::sleep(source.every) => {}
                () = shutdown.cancelled() => return,
            }
        }
    });
}

/// Follows a user's `Discover` of addresses: `Insert(key, addr)` adds the address,
/// `Remove(key)` removes the address inserted under that key.
pub(crate) fn spawn_discover<D>(registry: &Arc<Registry>, discover: D)
where
    D: Discover<Service = SocketAddr> + Send + 'static,
    D::Key: Hash + Eq + Send,
    D::Error: Into<BoxError>,
{
    let registry_ref = Arc::downgrade(registry);
    let shutdown = registry.pool.shutdown.clone();
    registry.discovery_started();
    let answered = AnsweredOnce(Some(registry_ref.clone()));
    registry.tracker.spawn(async move {
        let mut answered = answered;
        let mut discover = std::pin::pin!(discover);
        let mut keys: HashMap<D::Key, SocketAddr> = HashMap::new();
        loop {
            let change = tokio::select! {
                c = std::future::poll_fn(|cx| discover.as_mut().poll_discover(cx)) => c,
                () = shutdown.cancelled() => return,
            };
            let Some(registry) = registry_ref.upgrade() else {
                return;
            };
            match change {
                // Each key owns its address (another key, a DNS source or the
                // static list may own the same one).
                Some(Ok(Change::Insert(key, addr))) => {
                    match keys.insert(key, addr) {
                        Some(old) if old == addr => {}
                        Some(old) => {
                            registry.acquire(addr);
                            registry.release(old);
                        }
                        None => {
                            registry.acquire(addr);
                        }
                    }
                    answered.answer();
                }
                Some(Ok(Change::Remove(key))) => {
                    if let Some(addr) = keys.remove(&key) {
                        registry.release(addr);
                    }
                }
                Some(Err(error)) => {
                    let error: BoxError = error.into();
                    tracing::warn!(%error, "endpoint discovery failed; stopping discovery");
                    return;
                }
                None => return,
            }
        }
    });
}

/// Marks a discovery source answered once: at its first insert, or when it ends.
struct AnsweredOnce(Option<std::sync::Weak<Registry>>);

impl AnsweredOnce {
    fn answer(&mut self) {
        if let Some(registry) = self.0.take().and_then(|r| r.upgrade()) {
            registry.discovery_answered();
        }
    }
}

impl Drop for AnsweredOnce {
    fn drop(&mut self) {
        self.answer();
    }
}

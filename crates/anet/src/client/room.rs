//! Waking the handles that wait for room when room appears on a connection
//! other than the one they queued on.
//!
//! A [`Balancer`](super::Balancer) or [`Pool`](super::Pool) handle whose
//! candidate windows are all full queues for a unit on one connection. If that
//! connection stays stuck (a backend that stopped answering) while another
//! connection — of the same pool or of another endpoint — frees units nobody
//! queued for, the handle must hear of it. The driver of every connection of a
//! pool (or of a balancer's registry) shares one [`Room`]: after it gives units
//! back, and only while some handle waits, it checks whether units are left
//! over on its window and, if so, wakes the waiting handles to pick again.
//!
//! The fast path pays one fence and one relaxed load per driver pass that gave
//! units back; nothing per request.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering, fence},
};

use tokio::sync::{Notify, Semaphore, futures::OwnedNotified};

/// Shared by the connections of one pool (or one balancer's endpoints) and
/// the handles that wait for room on them.
#[derive(Debug)]
pub(crate) struct Room {
    /// Handles waiting for room now.
    waiters: AtomicUsize,
    /// The notification every waiting handle listens to: it picks again when
    /// woken (also the endpoints' change notification).
    wake: Arc<Notify>,
}

/// One waiting handle, counted while it lives.
#[derive(Debug)]
pub(crate) struct Waiter(Arc<Room>);

impl Room {
    /// A room whose waiters listen to `wake`.
    pub(crate) fn new(wake: Arc<Notify>) -> Arc<Room> {
        Arc::new(Room {
            waiters: AtomicUsize::new(0),
            wake,
        })
    }

    /// Listens to the wake-up (and to every change of the endpoints). Take it
    /// before [`enter`](Self::enter) and the last look for room.
    pub(crate) fn listen(&self) -> OwnedNotified {
        self.wake.clone().notified_owned()
    }

    /// A handle starts to wait. Call it before the last look for room (with the
    /// handle already listening to the wake-up), so that units freed between
    /// that look and the wait are not missed.
    pub(crate) fn enter(self: &Arc<Self>) -> Waiter {
        self.waiters.fetch_add(1, Ordering::Relaxed);
        // Pairs with the fence in `freed`: either the driver sees this waiter,
        // or the handle's next look sees the units the driver gave back.
        fence(Ordering::SeqCst);
        Waiter(self.clone())
    }

    /// The driver of a connection has just given units back to `window`:
    /// wakes the waiting handles if some of them are left over (no handle
    /// queued on this connection took them).
    pub(crate) fn freed(&self, window: &Semaphore) {
        if self.anyone_waits() && window.available_permits() > 0 {
            self.wake.notify_waiters();
        }
    }

    /// A reserved unit went back unused: wake the waiting handles to pick
    /// again.
    pub(crate) fn returned(&self) {
        if self.anyone_waits() {
            self.wake.notify_waiters();
        }
    }

    /// Whether a handle waits, read after the units given back are visible.
    fn anyone_waits(&self) -> bool {
        // Pairs with the fence in `enter`.
        fence(Ordering::SeqCst);
        self.waiters.load(Ordering::Relaxed) > 0
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::Relaxed);
    }
}

//! What a [`Balancer`](super::Balancer) or [`Pool`](super::Pool) handle holds
//! between `poll_ready` and `call`: a unit of one connection's window, or the
//! wait for one.
//!
//! `poll_ready` is ready only once the handle holds a unit of a connection's
//! window (the value whose drop gives it back), so `call` sends at once on that
//! connection and a handle dropped unused gives the unit back. When every
//! candidate window is full it waits in one connection's queue for a unit, and
//! at the same time for any change of the endpoints (one up or down, a new
//! connection) or units left over on another connection ([`Room`]): whichever
//! comes first wakes it.

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use pin_project_lite::pin_project;
use tokio::{
    sync::futures::OwnedNotified,
    time::{Instant, Sleep},
};
use tower::Service;

use super::{
    Connection,
    connection::Unit,
    lanes::Lane,
    pool::Endpoint,
    room::{Room, Waiter},
};
use crate::time::later;
use crate::{Error, Kind};

/// What a pick over one or more endpoints found.
#[derive(Debug)]
pub(crate) enum Picked {
    /// A unit of the window of one of this endpoint's connections.
    Held(Lane<Endpoint>, Unit),
    /// Every candidate window is full: wait for room on this connection.
    Full(Lane<Endpoint>, Connection),
    /// No endpoint can take a request now.
    Nowhere(Absent),
}

/// What to do when no endpoint can take a request.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Absent {
    /// Be ready and fail the next call with [`Kind::Unavailable`].
    Fail,
    /// Wait for an endpoint to come up for at most this long (counted from the
    /// first wait), then fail the next call with [`Kind::Unavailable`].
    WaitFor(Duration),
    /// Wait until an endpoint comes up.
    Wait,
}

/// The readiness of one handle.
#[derive(Debug, Default)]
pub(crate) struct Readiness {
    state: State,
    /// When a bounded wait for an endpoint ends (kept across re-picks).
    wait_until: Option<Instant>,
}

#[derive(Debug, Default)]
enum State {
    /// Nothing held: the next `poll_ready` picks.
    #[default]
    Idle,
    /// A unit of the window of one of `endpoint`'s connections is held for
    /// the next call.
    Held {
        endpoint: Lane<Endpoint>,
        unit: Unit,
    },
    /// Waiting for room or for an endpoint (the slow path, boxed).
    Waiting(Pin<Box<Waiting>>),
    /// No endpoint could take a request: the next call fails with this.
    Unavailable(Error),
}

pin_project! {
    /// A handle waiting for room or for an endpoint.
    #[derive(Debug)]
    struct Waiting {
        // Any change of the endpoints, or room left over on some connection:
        // pick again.
        #[pin]
        changed: OwnedNotified,
        // Counted among the room's waiters while it waits.
        waiter: Waiter,
        // The connection whose queue it waits in, if any.
        room: Option<(Lane<Endpoint>, Connection)>,
        // The end of a bounded wait for an endpoint.
        #[pin]
        until: Option<Sleep>,
    }
}

/// What `call` gets from [`Readiness::take`].
#[derive(Debug)]
pub(crate) enum Taken {
    /// Send with this unit, on its connection.
    Held(Lane<Endpoint>, Unit),
    /// Fail the call at once.
    Unavailable(Error),
    /// `poll_ready` was not called (or not ready): route the call itself.
    Nothing,
}

impl Readiness {
    /// Ready once a unit is held (or no endpoint can take a request and the
    /// next call is to fail). `pick` chooses and reserves; `room` wakes a
    /// waiting handle whenever an endpoint comes up or goes down, gets a new
    /// connection, or a connection has units no handle queued for.
    pub(crate) fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        room: &Arc<Room>,
        mut pick: impl FnMut() -> Picked,
    ) -> Poll<()> {
        loop {
            match &mut self.state {
                State::Held { unit, .. } => {
                    // A connection that broke since: give the unit back, pick again.
                    if unit.semaphore().is_closed() {
                        self.state = State::Idle;
                        continue;
                    }
                    return Poll::Ready(());
                }
                // The verdict holds only while nothing changed: look again.
                State::Unavailable(_) => match pick() {
                    Picked::Held(endpoint, unit) => {
                        self.wait_until = None;
                        self.state = State::Held { endpoint, unit };
                        return Poll::Ready(());
                    }
                    // Up again, but full: wait for room.
                    Picked::Full(..) => self.state = State::Idle,
                    Picked::Nowhere(_) => return Poll::Ready(()),
                },
                State::Idle => {
                    let picked = match pick() {
                        Picked::Held(endpoint, unit) => Picked::Held(endpoint, unit),
                        // Register for changes and room, then look once more, so
                        // that a change in between is not missed.
                        _ => {
                            let notified = room.listen();
                            let waiter = room.enter();
                            self.wait_on(pick(), notified, waiter)
                        }
                    };
                    if let Picked::Held(endpoint, unit) = picked {
                        self.wait_until = None;
                        self.state = State::Held { endpoint, unit };
                        return Poll::Ready(());
                    }
                    if matches!(self.state, State::Unavailable(_)) {
                        return Poll::Ready(());
                    }
                }
                State::Waiting(waiting) => {
                    let waiting = waiting.as_mut().project();
                    if waiting.changed.poll(cx).is_ready() {
                        self.state = State::Idle;
                        continue;
                    }
                    if let Some((endpoint, conn)) = waiting.room {
                        match conn.poll_ready(cx) {
                            Poll::Ready(Ok(())) => {
                                let unit = conn.take_reserved().expect("reserved when ready");
                                let endpoint = endpoint.clone();
                                self.wait_until = None;
                                self.state = State::Held { endpoint, unit };
                                return Poll::Ready(());
                            }
                            Poll::Ready(Err(_)) => {
                                // Broken: its pool prunes it; pick again.
                                endpoint.signal_broken();
                                self.state = State::Idle;
                                continue;
                            }
                            Poll::Pending => {
                                // Each time it is found full, not only the
                                // first (see `BalanceFuture`).
                                endpoint.signal_demand();
                            }
                        }
                    }
                    if let Some(sleep) = waiting.until.as_pin_mut() {
                        if sleep.poll(cx).is_ready() {
                            self.wait_until = None;
                            self.state = State::Unavailable(Error::with_source(
                                Kind::Unavailable,
                                "no endpoint connected within the connect timeout",
                            ));
                            return Poll::Ready(());
                        }
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Sets the state for a second pick, made after registering `notified`;
    /// gives back a held unit for the caller to keep.
    fn wait_on(&mut self, picked: Picked, changed: OwnedNotified, waiter: Waiter) -> Picked {
        let (room, until) = match picked {
            Picked::Held(..) => return picked,
            Picked::Full(endpoint, conn) => (Some((endpoint, conn)), None),
            Picked::Nowhere(Absent::Fail) => {
                self.wait_until = None;
                self.state =
                    State::Unavailable(Error::with_source(Kind::Unavailable, "no endpoint is up"));
                return Picked::Nowhere(Absent::Fail);
            }
            Picked::Nowhere(Absent::WaitFor(wait)) => {
                let until = *self
                    .wait_until
                    .get_or_insert_with(|| later(Instant::now(), wait));
                (None, Some(tokio::time::sleep_until(until)))
            }
            Picked::Nowhere(Absent::Wait) => (None, None),
        };
        self.state = State::Waiting(Box::pin(Waiting {
            changed,
            waiter,
            room,
            until,
        }));
        Picked::Nowhere(Absent::Wait)
    }

    /// Gives back a unit held for a call that will not come (the handle is
    /// dropped or its service closed), waking the handles waiting for room.
    pub(crate) fn release(&mut self, room: &Room) {
        let held = matches!(self.state, State::Held { .. });
        self.state = State::Idle;
        if held {
            room.returned();
        }
    }

    /// What the next call uses; the handle is idle afterwards.
    pub(crate) fn take(&mut self) -> Taken {
        match std::mem::take(&mut self.state) {
            State::Held { endpoint, unit } => Taken::Held(endpoint, unit),
            State::Unavailable(error) => Taken::Unavailable(error),
            State::Idle | State::Waiting(_) => Taken::Nothing,
        }
    }
}

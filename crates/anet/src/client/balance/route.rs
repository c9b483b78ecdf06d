//! Power of two choices over the registry's endpoints: one choice, used two
//! ways. [`route`] sends a request at once where a connection has room (a call
//! without `poll_ready`, and every [`Client`](crate::client::Client) call);
//! [`pick`] reserves a unit of a window for the next call (`poll_ready`).

use bytes::Bytes;

use crate::client::{
    Connection,
    connection::ConnectionFuture,
    deadline::Deadline,
    lanes::{Lane, Lanes},
    latency::Cost,
    pool::{Endpoint, Reserve},
    readiness::{Absent, Picked},
    registry::Registry,
};

/// What one endpoint did with the attempt.
enum Attempt<T> {
    /// Done: sent, or reserved.
    Done(T),
    /// Every live connection is full; this one has the fewest in flight.
    Full(Connection),
    /// No live connection.
    Empty,
}

/// Where the choice ended.
enum Choice<T> {
    Done(Lane<Endpoint>, T),
    /// Every candidate is full: wait for room on this connection.
    Full(Lane<Endpoint>, Connection),
    /// No endpoint is up; `true` if one may soon (a dial or a discovery is
    /// under way, or an endpoint marked up has just lost its connections).
    Nowhere(bool),
}

/// Picks two or three endpoints at random and tries those up, the less loaded
/// first; when all are down, any endpoint that is up, from a random start.
/// With failover groups, the same within the first group that can take it.
fn choose<T>(registry: &Registry, attempt: impl FnMut(&Endpoint) -> Attempt<T>) -> Choice<T> {
    choose_from(registry, &registry.endpoints(), attempt)
}

/// [`choose`] over a snapshot already taken.
fn choose_from<T>(
    registry: &Registry,
    endpoints: &[Lanes<Endpoint>],
    mut attempt: impl FnMut(&Endpoint) -> Attempt<T>,
) -> Choice<T> {
    let chosen = if is_grouped(endpoints) {
        choose_grouped(endpoints, &mut attempt)
    } else {
        choose_in(endpoints, &mut attempt)
    };
    match chosen {
        Some(choice) => choice,
        None => {
            Choice::Nowhere(registry.is_discovering() || endpoints.iter().any(|e| e.may_come_up()))
        }
    }
}

/// Whether `endpoints` (ordered by priority) form more than one failover
/// group. Read from the set itself (two loads), never from a flag stored
/// beside it, so a request never sees a new set with the old answer. In the
/// common single-group case routing then ignores groups altogether.
#[inline]
fn is_grouped(endpoints: &[Lanes<Endpoint>]) -> bool {
    endpoints
        .first()
        .zip(endpoints.last())
        .is_some_and(|(a, b)| a.priority != b.priority)
}

/// Failover groups (the endpoints are ordered by priority): the first group
/// with an endpoint up and past its probation; failing that, the first with
/// an endpoint up at all.
fn choose_grouped<T>(
    endpoints: &[Lanes<Endpoint>],
    attempt: &mut impl FnMut(&Endpoint) -> Attempt<T>,
) -> Option<Choice<T>> {
    for settled in [true, false] {
        let mut rest = endpoints;
        while let Some(first) = rest.first() {
            let len = rest
                .iter()
                .position(|e| e.priority != first.priority)
                .unwrap_or(rest.len());
            let (group, after) = rest.split_at(len);
            rest = after;
            let eligible = if settled {
                group.iter().any(|e| e.is_preferred())
            } else {
                group.iter().any(|e| e.is_up())
            };
            if eligible {
                if let Some(choice) = choose_in(group, attempt) {
                    return Some(choice);
                }
            }
        }
    }
    None
}

/// Power of choices over `endpoints`: two distinct candidates, three when there
/// are three or more (so that one slow endpoint among few does not make a third
/// of the picks a coin toss between the others); the least loaded first.
/// `None` when none of them is up.
fn choose_in<T>(
    endpoints: &[Lanes<Endpoint>],
    attempt: &mut impl FnMut(&Endpoint) -> Attempt<T>,
) -> Option<Choice<T>> {
    let n = endpoints.len();
    if n == 0 {
        return None;
    }
    let (picks, count) = distinct_picks(n);
    let mut chosen = picks.map(|i| &endpoints[i]);
    let candidates = &mut chosen[..count];
    if candidates.len() > 1 {
        // Down candidates last (they are skipped below), so that one down
        // among three does not leave the two up ones in random order.
        let mut keys = [(false, Cost::default()); 3];
        for (key, e) in keys.iter_mut().zip(candidates.iter()) {
            if e.is_up() {
                *key = (true, e.cost());
            }
        }
        // Up before down, then the cheaper first.
        let before = |a: &(bool, Cost), b: &(bool, Cost)| a.0 && (!b.0 || a.1.below(&b.1));
        // Insertion sort of two or three by cost (ties keep the random order).
        for i in 1..candidates.len() {
            let mut j = i;
            while j > 0 && before(&keys[j], &keys[j - 1]) {
                keys.swap(j, j - 1);
                candidates.swap(j, j - 1);
                j -= 1;
            }
        }
    }
    let mut full = None;
    for endpoint in candidates.iter().filter(|e| e.is_up()) {
        match attempt(endpoint) {
            Attempt::Done(done) => return Some(Choice::Done(endpoint.here(), done)),
            Attempt::Full(conn) => {
                full.get_or_insert_with(|| (endpoint.here(), conn));
            }
            // Marked up but no live connection: its pool has not noticed yet.
            Attempt::Empty => endpoint.signal_broken(),
        }
    }
    if let Some((endpoint, conn)) = full {
        return Some(Choice::Full(endpoint, conn));
    }
    // Both choices were down: take any endpoint that is up, from a random
    // starting point so the load still spreads.
    let start = fastrand::usize(..n);
    for i in 0..n {
        let endpoint = &endpoints[(start + i) % n];
        if !endpoint.is_up() {
            continue;
        }
        match attempt(endpoint) {
            Attempt::Done(done) => return Some(Choice::Done(endpoint.here(), done)),
            Attempt::Full(conn) => return Some(Choice::Full(endpoint.here(), conn)),
            Attempt::Empty => {}
        }
    }
    None
}

/// Where [`route`] got a request.
pub(super) enum Routed {
    /// Sent on a connection of this endpoint.
    Sent(Lane<Endpoint>, ConnectionFuture),
    /// Every candidate connection is full: wait for room on this one.
    Full(Bytes, Lane<Endpoint>, Connection),
    /// No endpoint can take it; `true` if one may soon.
    Nowhere(Bytes, bool),
}

/// Sends `payload` on the chosen endpoint's least-loaded connection when it
/// has room (no handle cloned on this path).
pub(super) fn route(registry: &Registry, payload: Bytes, deadline: Deadline) -> Routed {
    let endpoints = registry.endpoints();
    // One endpoint (the common case), up, with a live connection: there is
    // nothing to choose. Anything else takes the general path below, which
    // looks at it again (and says whether to wait).
    let payload = match &endpoints[..] {
        [only] if only.is_up() => match only.dispatch(payload, deadline) {
            Ok(future) => return Routed::Sent(only.here(), future),
            Err((back, Some(conn))) => return Routed::Full(back, only.here(), conn),
            Err((back, None)) => back,
        },
        _ => payload,
    };
    let mut payload = Some(payload);
    let choice = choose_from(registry, &endpoints, |endpoint| {
        let request = payload
            .take()
            .expect("the payload is given back on failure");
        match endpoint.dispatch(request, deadline) {
            Ok(future) => Attempt::Done(future),
            Err((back, conn)) => {
                payload = Some(back);
                conn.map_or(Attempt::Empty, Attempt::Full)
            }
        }
    });
    let mut back = || payload.take().expect("not sent, so given back");
    match choice {
        Choice::Done(endpoint, future) => Routed::Sent(endpoint, future),
        Choice::Full(endpoint, conn) => Routed::Full(back(), endpoint, conn),
        Choice::Nowhere(wait) => Routed::Nowhere(back(), wait),
    }
}

/// Reserves a unit of the chosen endpoint's least-loaded connection.
pub(super) fn pick(registry: &Registry) -> Picked {
    let choice = choose(registry, |endpoint| match endpoint.reserve() {
        Reserve::Held(unit) => Attempt::Done(unit),
        Reserve::Full(conn) => Attempt::Full(conn),
        Reserve::Empty => Attempt::Empty,
    });
    match choice {
        Choice::Done(endpoint, unit) => Picked::Held(endpoint, unit),
        Choice::Full(endpoint, conn) => Picked::Full(endpoint, conn),
        Choice::Nowhere(true) => Picked::Nowhere(Absent::WaitFor(registry.pending_wait)),
        Choice::Nowhere(false) => Picked::Nowhere(Absent::Fail),
    }
}

/// Up to three distinct indices below `n` (`n >= 1`), drawn at random, and
/// how many there are: one for one endpoint, two for two, three otherwise.
#[inline]
fn distinct_picks(n: usize) -> ([usize; 3], usize) {
    if n == 1 {
        // One endpoint (the common case): no draw.
        return ([0; 3], 1);
    }
    let a = fastrand::usize(..n);
    let b = (a + 1 + fastrand::usize(..n - 1)) % n;
    if n == 2 {
        return ([a, b, b], 2);
    }
    let mut c = fastrand::usize(..n - 2);
    // The (n - 2) indices other than a and b, in order.
    for skip in [a.min(b), a.max(b)] {
        if c >= skip {
            c += 1;
        }
    }
    ([a, b, c], 3)
}

#[cfg(test)]
mod tests {
    use super::distinct_picks;

    #[test]
    fn picks_are_distinct_in_range_and_cover_every_index() {
        for n in 1..8 {
            let mut seen = vec![0usize; n];
            for _ in 0..2_000 {
                let (picks, count) = distinct_picks(n);
                assert_eq!(count, n.min(3));
                let picks = &picks[..count];
                for (i, p) in picks.iter().enumerate() {
                    assert!(*p < n, "{picks:?} for {n}");
                    assert!(!picks[..i].contains(p), "{picks:?} repeats for {n}");
                    seen[*p] += 1;
                }
            }
            // Every index is drawn, about as often as the others.
            let expected = 2_000 * n.min(3) / n;
            for (i, times) in seen.iter().enumerate() {
                assert!(
                    *times > expected / 2 && *times < expected * 3 / 2,
                    "index {i} of {n} drawn {times} times, about {expected} expected"
                );
            }
        }
    }
}

//! The recording points of metrics (feature `metrics`) and request spans, in
//! one place: the request path calls these hooks, and with the feature off they
//! are empty and their types have no size.
//!
//! Metric names are the Prometheus rendering (the README lists them with their
//! types and labels). Label values are bounded: an endpoint's address (bounded
//! by configuration), an outcome (`ok` or [`Kind::as_str`](crate::Kind::as_str)
//! on the client; `ok`, `error`, `panic` on the server), a connection state.
//!
//! Handles are registered once (per endpoint, per server connection) with the
//! recorder installed at that moment, so the recorder must be installed before
//! clients and servers are built (the `metrics` convention). Durations are
//! measured (two clock reads per request) only when that recorder is not
//! zero-sized: `metrics`' no-op recorder is, every recorder that keeps values
//! holds state. So with the feature compiled in and no recorder, a request
//! costs a few checks of empty handles, no clock read and no allocation.
//!
//! The server's request counter and in-flight gauge are published once per
//! wake-up of a connection, like its stats; the duration histogram records
//! each request.

#![allow(dead_code, unreachable_pub)]

// Durations are wall-clock measures for dashboards, not deadlines: std's clock
// (tokio's checks for paused time first, which costs on every read when
// `test-util` is compiled in; paused-time tests have no use for durations).
#[cfg(feature = "metrics")]
#[allow(clippy::disallowed_types)]
mod on {
    use std::{net::SocketAddr, sync::Arc, time::Instant};

    use metrics::{Counter, Gauge, Histogram, SharedString, counter, gauge, histogram};

    use crate::Kind;

    /// Whether the recorder in place keeps values (see the module docs).
    fn recording() -> bool {
        metrics::with_recorder(|recorder| std::mem::size_of_val(recorder) != 0)
    }

    /// Client request counter (labels `endpoint`, `outcome`).
    pub(crate) const CLIENT_REQUESTS: &str = "anet_client_requests";
    /// Client request duration histogram in seconds (labels `endpoint`, `outcome`).
    pub(crate) const CLIENT_REQUEST_DURATION: &str = "anet_client_request_duration";

    /// An endpoint's handles, registered when the endpoint is created.
    #[derive(Debug)]
    pub(crate) struct EndpointMetrics {
        endpoint: SharedString,
        ok: Counter,
        ok_duration: Histogram,
        in_flight: Gauge,
        live: Gauge,
        draining: Gauge,
        // Durations are measured (a recorder keeps them).
        timed: bool,
    }

    impl EndpointMetrics {
        pub(crate) fn new(addr: SocketAddr) -> EndpointMetrics {
            let endpoint = SharedString::from(Arc::<str>::from(addr.to_string()));
            let e = || endpoint.clone();
            EndpointMetrics {
                ok: counter!(CLIENT_REQUESTS, "endpoint" => e(), "outcome" => "ok"),
                ok_duration: histogram!(CLIENT_REQUEST_DURATION, "endpoint" => e(), "outcome" => "ok"),
                in_flight: gauge!("anet_client_in_flight", "endpoint" => e()),
                live: gauge!("anet_client_connections", "endpoint" => e(), "state" => "live"),
                draining: gauge!("anet_client_connections", "endpoint" => e(), "state" => "draining"),
                endpoint,
                timed: recording(),
            }
        }

        /// The endpoint's connections by state, set by its maintenance task.
        pub(crate) fn connections(&self, live: usize, draining: usize) {
            self.live.set(live as f64);
            self.draining.set(draining as f64);
        }

        /// A request is on one of this endpoint's connections.
        #[inline]
        pub(crate) fn sent(&self) -> Attempt {
            Attempt {
                started: self.timed.then(Instant::now),
            }
        }

        /// A connection's share of the endpoint's in-flight gauge.
        pub(crate) fn in_flight_share(&self) -> InFlightShare {
            InFlightShare(self.in_flight.clone())
        }
    }

    /// A connection's share of its endpoint's `anet_client_in_flight` gauge:
    /// its driver publishes the change in its requests taken and not yet
    /// answered once per pass (not two updates per request).
    #[derive(Debug, Clone)]
    pub(crate) struct InFlightShare(Gauge);

    impl InFlightShare {
        /// The connection had `before` requests in flight at its last
        /// publication and has `now`.
        #[inline]
        pub(crate) fn publish(&self, before: usize, now: usize) {
            if before != now {
                self.0.increment(now as f64 - before as f64);
            }
        }
    }

    /// A request on an endpoint's connection, timed when a recorder is installed.
    #[derive(Debug)]
    pub(crate) struct Attempt {
        started: Option<Instant>,
    }

    impl Attempt {
        /// The request has its answer: `Ok(())` or the error's kind.
        #[inline]
        pub(crate) fn finish(&self, endpoint: &EndpointMetrics, outcome: Result<(), Kind>) {
            let elapsed = self.started.map(|at| at.elapsed());
            match outcome {
                Ok(()) => {
                    endpoint.ok.increment(1);
                    if let Some(elapsed) = elapsed {
                        endpoint.ok_duration.record(elapsed);
                    }
                }
                // Errors are rare: their handles are looked up when they happen.
                Err(kind) => {
                    let (e, outcome) = (endpoint.endpoint.clone(), kind.as_str());
                    counter!(CLIENT_REQUESTS, "endpoint" => e.clone(), "outcome" => outcome)
                        .increment(1);
                    if let Some(elapsed) = elapsed {
                        histogram!(CLIENT_REQUEST_DURATION, "endpoint" => e, "outcome" => outcome)
                            .record(elapsed);
                    }
                }
            }
        }
    }

    /// A client request that failed before reaching any endpoint.
    pub(crate) fn unrouted(kind: Kind) {
        counter!(CLIENT_REQUESTS, "endpoint" => "none", "outcome" => kind.as_str()).increment(1);
    }

    /// A call is retried.
    pub(crate) fn retry() {
        counter!("anet_client_retries").increment(1);
    }

    /// A dial ended: connected or failed.
    pub(crate) fn dialed(ok: bool) {
        if ok {
            counter!("anet_client_connects").increment(1);
        } else {
            counter!("anet_client_connect_failures").increment(1);
        }
    }

    /// A connection driver published its counters: the changes since its last
    /// publication.
    pub(crate) fn connection_published(new_unknown: u64, held_before: usize, held_now: usize) {
        if new_unknown > 0 {
            counter!("anet_client_unknown_responses").increment(new_unknown);
        }
        if held_before != held_now {
            gauge!("anet_client_held_tags").increment(held_now as f64 - held_before as f64);
        }
    }

    /// A server connection's handles, registered when it is accepted, and
    /// what it has not published yet.
    #[derive(Debug)]
    pub(crate) struct ServerMetrics {
        ok: Counter,
        ok_duration: Histogram,
        in_flight: Gauge,
        timed: bool,
        /// Requests answered `ok` since the last publication.
        ok_unpublished: u64,
        /// The connection's share of the in-flight gauge.
        in_flight_published: usize,
    }

    impl ServerMetrics {
        pub(crate) fn new() -> ServerMetrics {
            ServerMetrics {
                ok: counter!("anet_server_requests", "outcome" => "ok"),
                ok_duration: histogram!("anet_server_request_duration", "outcome" => "ok"),
                in_flight: gauge!("anet_server_in_flight"),
                timed: recording(),
                ok_unpublished: 0,
                in_flight_published: 0,
            }
        }

        /// A request read.
        #[inline]
        pub(crate) fn started(&self) -> Started {
            Started(self.timed.then(Instant::now))
        }

        /// A request finished: `ok`, `error` (the service failed it, or its
        /// response could not be framed) or `panic`.
        #[inline]
        pub(crate) fn finished(&mut self, started: &Started, outcome: &'static str) {
            let elapsed = started.0.map(|at| at.elapsed());
            if outcome == "ok" {
                self.ok_unpublished += 1;
                if let Some(elapsed) = elapsed {
                    self.ok_duration.record(elapsed);
                }
            } else {
                counter!("anet_server_requests", "outcome" => outcome).increment(1);
                if let Some(elapsed) = elapsed {
                    histogram!("anet_server_request_duration", "outcome" => outcome)
                        .record(elapsed);
                }
            }
        }

        /// Once per wake-up of the connection: the requests answered, and
        /// the ones in flight now.
        #[inline]
        pub(crate) fn publish(&mut self, in_flight: usize) {
            if self.ok_unpublished > 0 {
                self.ok.increment(std::mem::take(&mut self.ok_unpublished));
            }
            if in_flight != self.in_flight_published {
                self.in_flight
                    .increment(in_flight as f64 - self.in_flight_published as f64);
                self.in_flight_published = in_flight;
            }
        }
    }

    impl Drop for ServerMetrics {
        /// The connection has ended: what it had in flight is gone.
        fn drop(&mut self) {
            self.publish(0);
        }
    }

    /// When a server request started (if durations are measured).
    #[derive(Debug, Clone, Copy)]
    pub(crate) struct Started(Option<Instant>);

    /// A client is built: its series that count rare events exist from now on
    /// (at zero), so a dashboard sees them before the first event.
    pub(crate) fn client_started() {
        counter!("anet_client_connects").increment(0);
        counter!("anet_client_connect_failures").increment(0);
        counter!("anet_client_retries").increment(0);
        counter!("anet_client_unknown_responses").increment(0);
        gauge!("anet_client_held_tags").increment(0.0);
    }

    /// A server starts serving: its series that count rare events exist from
    /// now on (at zero), so a dashboard sees them before the first event.
    pub(crate) fn server_started() {
        gauge!("anet_server_connections").increment(0.0);
        gauge!("anet_server_in_flight").increment(0.0);
        counter!("anet_server_rejected_connections").increment(0);
        counter!("anet_server_protocol_errors").increment(0);
    }

    /// A server connection opened (`1.0`) or closed (`-1.0`).
    pub(crate) fn server_connections(delta: f64) {
        gauge!("anet_server_connections").increment(delta);
    }

    /// A connection refused at accept.
    pub(crate) fn server_rejected() {
        counter!("anet_server_rejected_connections").increment(1);
    }

    /// A connection closed for a protocol violation.
    pub(crate) fn server_protocol_error() {
        counter!("anet_server_protocol_errors").increment(1);
    }
}

#[cfg(not(feature = "metrics"))]
mod on {
    use std::net::SocketAddr;

    use crate::Kind;

    #[derive(Debug)]
    pub(crate) struct EndpointMetrics;

    impl EndpointMetrics {
        #[inline(always)]
        pub(crate) fn new(_: SocketAddr) -> EndpointMetrics {
            EndpointMetrics
        }
        #[inline(always)]
        pub(crate) fn connections(&self, _: usize, _: usize) {}
        #[inline(always)]
        pub(crate) fn sent(&self) -> Attempt {
            Attempt
        }
        #[inline(always)]
        pub(crate) fn in_flight_share(&self) -> InFlightShare {
            InFlightShare
        }
    }

    #[derive(Debug, Clone)]
    pub(crate) struct InFlightShare;

    impl InFlightShare {
        #[inline(always)]
        pub(crate) fn publish(&self, _: usize, _: usize) {}
    }

    #[derive(Debug)]
    pub(crate) struct Attempt;

    impl Attempt {
        #[inline(always)]
        pub(crate) fn finish(&self, _: &EndpointMetrics, _: Result<(), Kind>) {}
    }

    #[inline(always)]
    pub(crate) fn unrouted(_: Kind) {}
    #[inline(always)]
    pub(crate) fn retry() {}
    #[inline(always)]
    pub(crate) fn dialed(_: bool) {}
    #[inline(always)]
    pub(crate) fn connection_published(_: u64, _: usize, _: usize) {}

    #[derive(Debug)]
    pub(crate) struct ServerMetrics;

    impl ServerMetrics {
        #[inline(always)]
        pub(crate) fn new() -> ServerMetrics {
            ServerMetrics
        }
        #[inline(always)]
        pub(crate) fn started(&self) -> Started {
            Started
        }
        #[inline(always)]
        pub(crate) fn finished(&mut self, _: &Started, _: &'static str) {}
        #[inline(always)]
        pub(crate) fn publish(&mut self, _: usize) {}
    }

    #[derive(Debug)]
    pub(crate) struct Started;

    #[inline(always)]
    pub(crate) fn client_started() {}
    #[inline(always)]
    pub(crate) fn server_started() {}
    #[inline(always)]
    pub(crate) fn server_connections(_: f64) {}
    #[inline(always)]
    pub(crate) fn server_rejected() {}
    #[inline(always)]
    pub(crate) fn server_protocol_error() {}
}

pub(crate) use on::*;

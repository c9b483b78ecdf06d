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
//! measured only when that recorder is not zero-sized: `metrics`' no-op
//! recorder is, every recorder that keeps values holds state. So with the
//! feature compiled in and no recorder, a request costs a few checks of empty
//! handles, no clock read and no allocation.
//!
//! Nothing is recorded per request on the hot path. A client connection's
//! driver counts the requests it answers, and times them with the clock
//! readings it takes once per pass (a request carries the reading of the pass
//! that wrote it; the pass that reads its answer ends it), publishing counts
//! and durations once per pass. A server connection does the same once per
//! wake-up: the requests of one read batch share a clock reading, and their
//! durations end when the connection publishes, before it flushes their
//! responses. Requests that ended together took the same time, so they go to
//! the histogram as one `record_many`. Errors are rare and recorded as they
//! happen.

#![allow(dead_code, unreachable_pub)]

// A server connection's durations are wall-clock measures for dashboards, not
// deadlines: std's clock (tokio's checks for paused time first, which costs on
// every read when `test-util` is compiled in). A client connection's come from
// its driver's clock, which is tokio's (it is read once per pass anyway).
#[cfg(feature = "metrics")]
#[allow(clippy::disallowed_types)]
mod on {
    use std::{
        net::SocketAddr,
        sync::Arc,
        time::{Duration, Instant},
    };

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
        handles: Arc<Handles>,
        live: Gauge,
        draining: Gauge,
    }

    /// The handles an endpoint's connections record into.
    #[derive(Debug)]
    struct Handles {
        endpoint: SharedString,
        ok: Counter,
        ok_duration: Histogram,
        in_flight: Gauge,
        // Durations are measured (a recorder keeps them).
        timed: bool,
    }

    impl EndpointMetrics {
        pub(crate) fn new(addr: SocketAddr) -> EndpointMetrics {
            let endpoint = SharedString::from(Arc::<str>::from(addr.to_string()));
            let e = || endpoint.clone();
            EndpointMetrics {
                live: gauge!("anet_client_connections", "endpoint" => e(), "state" => "live"),
                draining: gauge!("anet_client_connections", "endpoint" => e(), "state" => "draining"),
                handles: Arc::new(Handles {
                    ok: counter!(CLIENT_REQUESTS, "endpoint" => e(), "outcome" => "ok"),
                    ok_duration: histogram!(CLIENT_REQUEST_DURATION, "endpoint" => e(), "outcome" => "ok"),
                    in_flight: gauge!("anet_client_in_flight", "endpoint" => e()),
                    timed: recording(),
                    endpoint,
                }),
            }
        }

        /// The endpoint's connections by state, set by its maintenance task.
        pub(crate) fn connections(&self, live: usize, draining: usize) {
            self.live.set(live as f64);
            self.draining.set(draining as f64);
        }

        /// A request sent on one of this endpoint's connections failed with
        /// `kind` (its connection records its duration, if it has one).
        /// Errors are rare: their handles are looked up when they happen.
        pub(crate) fn failed(&self, kind: Kind) {
            let endpoint = self.handles.endpoint.clone();
            counter!(CLIENT_REQUESTS, "endpoint" => endpoint, "outcome" => kind.as_str())
                .increment(1);
        }

        /// What one of the endpoint's connections records into.
        pub(crate) fn connection(&self) -> ConnectionMetrics {
            ConnectionMetrics(self.handles.clone())
        }
    }

    /// What a connection's driver records for its endpoint: the requests it
    /// answered (`anet_client_requests` with outcome `ok`) and how long they
    /// took, the requests it has in flight, and the durations of those it
    /// failed after writing them. Published once per driver pass.
    #[derive(Debug, Clone)]
    pub(crate) struct ConnectionMetrics(Arc<Handles>);

    impl ConnectionMetrics {
        /// Whether durations are measured (the driver then stamps requests).
        #[inline]
        pub(crate) fn timed(&self) -> bool {
            self.0.timed
        }

        /// The connection had `before` requests in flight at its last
        /// publication and has `now`.
        #[inline]
        pub(crate) fn in_flight(&self, before: usize, now: usize) {
            if before != now {
                self.0.in_flight.increment(now as f64 - before as f64);
            }
        }

        /// A written request failed with `kind` after `elapsed`.
        pub(crate) fn failed_after(&self, kind: Kind, elapsed: Duration) {
            let endpoint = self.0.endpoint.clone();
            histogram!(CLIENT_REQUEST_DURATION, "endpoint" => endpoint, "outcome" => kind.as_str())
                .record(elapsed);
        }
    }

    /// The answers of one driver pass, recorded when the pass ends: one
    /// counter update and, when durations are measured, one clock reading for
    /// the lot (requests carry the clock reading of the pass that wrote them).
    #[derive(Debug, Default)]
    pub(crate) struct Answers {
        count: u64,
        /// Send stamps (nanoseconds since the driver's anchor) of the
        /// answered requests, when durations are measured.
        sent: Vec<u64>,
    }

    impl Answers {
        /// A request sent at stamp `sent` (if stamped) was answered.
        #[inline]
        pub(crate) fn answered(&mut self, sent: Option<u64>) {
            self.count += 1;
            if let Some(sent) = sent {
                self.sent.push(sent);
            }
        }

        /// Whether the pass had answers to record.
        #[inline]
        pub(crate) fn is_empty(&self) -> bool {
            self.count == 0
        }

        /// Records the pass's answers for `metrics`, their durations ending
        /// at stamp `now` (read only if some were stamped).
        pub(crate) fn record(&mut self, metrics: &ConnectionMetrics, now: impl FnOnce() -> u64) {
            metrics.0.ok.increment(std::mem::take(&mut self.count));
            if self.sent.is_empty() {
                return;
            }
            let now = now();
            // Requests written in the same pass and answered in the same pass
            // took the same time: one sample of many.
            let mut run = (self.sent[0], 0);
            for &sent in &self.sent {
                if sent != run.0 {
                    record_run(metrics, now, run);
                    run = (sent, 0);
                }
                run.1 += 1;
            }
            record_run(metrics, now, run);
            self.sent.clear();
            // A burst must not keep its buffer for good.
            if self.sent.capacity() > 4096 {
                self.sent.shrink_to(256);
            }
        }

        /// Forgets what was not recorded (a driver without metrics).
        pub(crate) fn clear(&mut self) {
            self.count = 0;
            self.sent.clear();
        }
    }

    fn record_run(metrics: &ConnectionMetrics, now: u64, (sent, count): (u64, usize)) {
        let seconds = now.saturating_sub(sent) as f64 * 1e-9;
        metrics.0.ok_duration.record_many(seconds, count);
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
        /// The clock reading shared by the requests started since the last
        /// publication (read at the first of them).
        batch_started: Option<Instant>,
        /// When the requests answered `ok` since the last publication
        /// started (when durations are measured).
        ok_started: Vec<Instant>,
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
                batch_started: None,
                ok_started: Vec::new(),
            }
        }

        /// A request read: it shares the clock reading of the requests read
        /// since the last publication (one reading per batch, not per
        /// request; its duration counts from the batch's start).
        #[inline]
        pub(crate) fn started(&mut self) -> Started {
            if !self.timed {
                return Started(None);
            }
            Started(Some(*self.batch_started.get_or_insert_with(Instant::now)))
        }

        /// A request was answered: its duration ends at the next publication
        /// (which reads the clock once for all of them).
        #[inline(always)]
        pub(crate) fn finished_ok(&mut self, started: &Started) {
            self.ok_unpublished += 1;
            if let Some(at) = started.0 {
                self.ok_started.push(at);
            }
        }

        /// A request failed: `error` (the service failed it, or its response
        /// could not be framed) or `panic`.
        #[cold]
        pub(crate) fn finished(&mut self, started: &Started, outcome: &'static str) {
            counter!("anet_server_requests", "outcome" => outcome).increment(1);
            if let Some(at) = started.0 {
                histogram!("anet_server_request_duration", "outcome" => outcome)
                    .record(at.elapsed());
            }
        }

        /// Before responses are flushed and once per wake-up of the
        /// connection: the requests answered, their durations, and the ones
        /// in flight now.
        #[inline]
        pub(crate) fn publish(&mut self, in_flight: usize) {
            if self.ok_unpublished > 0 {
                self.ok.increment(std::mem::take(&mut self.ok_unpublished));
            }
            if !self.ok_started.is_empty() {
                self.record_durations();
            }
            self.batch_started = None;
            if in_flight != self.in_flight_published {
                self.in_flight
                    .increment(in_flight as f64 - self.in_flight_published as f64);
                self.in_flight_published = in_flight;
            }
        }

        /// Records the `ok` durations ending now: requests that started in the
        /// same batch took the same time, one sample of many.
        fn record_durations(&mut self) {
            let now = Instant::now();
            let mut run = (self.ok_started[0], 0);
            for &at in &self.ok_started {
                if at != run.0 {
                    self.ok_duration
                        .record_many(now.saturating_duration_since(run.0), run.1);
                    run = (at, 0);
                }
                run.1 += 1;
            }
            self.ok_duration
                .record_many(now.saturating_duration_since(run.0), run.1);
            self.ok_started.clear();
        }

        /// The connection is idle: frees what its bursts grew.
        pub(crate) fn release(&mut self) {
            self.ok_started = Vec::new();
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
    use std::{net::SocketAddr, time::Duration};

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
        pub(crate) fn failed(&self, _: Kind) {}
        #[inline(always)]
        pub(crate) fn connection(&self) -> ConnectionMetrics {
            ConnectionMetrics
        }
    }

    #[derive(Debug, Clone)]
    pub(crate) struct ConnectionMetrics;

    impl ConnectionMetrics {
        #[inline(always)]
        pub(crate) fn timed(&self) -> bool {
            false
        }
        #[inline(always)]
        pub(crate) fn in_flight(&self, _: usize, _: usize) {}
        #[inline(always)]
        pub(crate) fn failed_after(&self, _: Kind, _: Duration) {}
    }

    // Braces: built with `default()` like the real one (not a unit struct).
    #[derive(Debug, Default)]
    pub(crate) struct Answers {}

    impl Answers {
        #[inline(always)]
        pub(crate) fn answered(&mut self, _: Option<u64>) {}
        #[inline(always)]
        pub(crate) fn is_empty(&self) -> bool {
            true
        }
        #[inline(always)]
        pub(crate) fn record(&mut self, _: &ConnectionMetrics, _: impl FnOnce() -> u64) {}
        #[inline(always)]
        pub(crate) fn clear(&mut self) {}
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
        pub(crate) fn started(&mut self) -> Started {
            Started
        }
        #[inline(always)]
        pub(crate) fn finished_ok(&mut self, _: &Started) {}
        #[inline(always)]
        pub(crate) fn finished(&mut self, _: &Started, _: &'static str) {}
        #[inline(always)]
        pub(crate) fn publish(&mut self, _: usize) {}
        #[inline(always)]
        pub(crate) fn release(&mut self) {}
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

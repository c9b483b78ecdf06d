//! `--metrics ADDR`: anet's metrics as Prometheus text at `http://ADDR/metrics`
//! for as long as the command runs; and the recorder `anet bench` reads its
//! per-endpoint report from.
//!
//! Only one recorder can be installed in a process: [`serve`] installs the
//! Prometheus one alone; [`install_bench`] installs a tee that keeps the
//! per-endpoint tallies and forwards everything to the Prometheus one when
//! `--metrics` is given too.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
};

use anyhow::Context as _;
use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

/// Histogram buckets for the durations, in seconds (50 µs to 10 s).
const BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// The Prometheus recorder, with its HTTP listener on `addr` spawned on the
/// current runtime.
fn prometheus(addr: SocketAddr) -> anyhow::Result<PrometheusRecorder> {
    let (recorder, exporter) = PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(BUCKETS)
        .context("histogram buckets")?
        .build()
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    tokio::spawn(async move {
        if let Err(e) = exporter.await {
            eprintln!("error: the metrics endpoint stopped: {e:?}");
        }
    });
    Ok(recorder)
}

/// Serves anet's metrics as Prometheus text at `http://addr/metrics` until the
/// process ends. Call it once, inside the runtime, before building clients and
/// servers (their handles are registered when they are built).
pub(crate) fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let recorder = prometheus(addr)?;
    metrics::set_global_recorder(recorder).context("a metrics recorder is already installed")?;
    eprintln!("metrics on http://{addr}/metrics");
    Ok(())
}

/// Installs the recorder of `anet bench`'s per-endpoint report, forwarding to
/// the Prometheus one on `addr` if given.
pub(crate) fn install_bench(addr: Option<SocketAddr>) -> anyhow::Result<Arc<Endpoints>> {
    let inner = addr.map(prometheus).transpose()?;
    let endpoints = Arc::new(Endpoints::default());
    let tee = Tee {
        inner,
        endpoints: endpoints.clone(),
    };
    metrics::set_global_recorder(tee).context("a metrics recorder is already installed")?;
    if let Some(addr) = addr {
        eprintln!("metrics on http://{addr}/metrics");
    }
    Ok(endpoints)
}

/// Per endpoint: requests by outcome and their latency, from
/// `anet_client_requests` and `anet_client_request_duration`.
#[derive(Debug, Default)]
pub(crate) struct Endpoints {
    map: Mutex<BTreeMap<String, Arc<EndpointTally>>>,
}

impl Endpoints {
    fn get(&self, endpoint: &str) -> Arc<EndpointTally> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(endpoint.to_owned()).or_default().clone()
    }

    /// The endpoints seen, by address.
    pub(crate) fn snapshot(&self) -> Vec<(String, Arc<EndpointTally>)> {
        let map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

/// One endpoint's requests by outcome, and their latency.
#[derive(Debug, Default)]
pub(crate) struct EndpointTally {
    outcomes: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    pub(crate) latency: Arc<Buckets>,
}

impl EndpointTally {
    fn outcome(&self, outcome: &str) -> Arc<AtomicU64> {
        let mut map = self.outcomes.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(outcome.to_owned()).or_default().clone()
    }

    /// Requests by outcome (`ok` or an error kind).
    pub(crate) fn outcomes(&self) -> Vec<(String, u64)> {
        let map = self.outcomes.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter()
            .map(|(k, v)| (k.clone(), v.load(Relaxed)))
            .collect()
    }
}

/// A lock-free latency histogram in microseconds: 32 buckets per power of
/// two (under 1.6 % error), enough for p50/p99 per endpoint.
#[derive(Debug)]
pub(crate) struct Buckets {
    counts: Box<[AtomicU64]>,
}

/// Sub-buckets per power of two, as a power of two.
const SUB_BITS: u32 = 5;
const SUB: usize = 1 << SUB_BITS;

impl Default for Buckets {
    fn default() -> Buckets {
        Buckets {
            counts: (0..(64 - SUB_BITS as usize + 1) * SUB)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }
}

impl Buckets {
    fn index(us: u64) -> usize {
        if us < SUB as u64 {
            return us as usize;
        }
        let shift = 63 - us.leading_zeros() - SUB_BITS;
        let top = (us >> shift) as usize - SUB;
        (shift as usize + 1) * SUB + top
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> u64 {
        if i < SUB {
            return i as u64;
        }
        let shift = (i / SUB - 1) as u32;
        let low = ((SUB + i % SUB) as u64) << shift;
        low + (1u64 << shift) / 2
    }

    pub(crate) fn record(&self, us: u64) {
        self.record_n(us, 1);
    }

    /// Records `us` `n` times.
    pub(crate) fn record_n(&self, us: u64, n: u64) {
        self.counts[Self::index(us)].fetch_add(n, Relaxed);
    }

    /// The value at quantile `q` (0 when empty).
    pub(crate) fn quantile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (i, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Self::value(i);
            }
        }
        0
    }
}

/// The recorder of `anet bench`: tallies the client's per-endpoint requests
/// and latencies, and forwards everything to Prometheus when it is served.
#[derive(Debug)]
struct Tee {
    inner: Option<PrometheusRecorder>,
    endpoints: Arc<Endpoints>,
}

impl Tee {
    /// The endpoint and outcome labels of `key`, if it is one of the two
    /// per-endpoint client metrics named `name`.
    fn labels(key: &Key, name: &str) -> Option<(String, String)> {
        if key.name() != name {
            return None;
        }
        let label = |k: &str| {
            key.labels()
                .find(|l| l.key() == k)
                .map(|l| l.value().to_owned())
        };
        Some((label("endpoint")?, label("outcome")?))
    }
}

/// A counter of the tee: the tally, and Prometheus's.
struct TeeCounter(Arc<AtomicU64>, Counter);

impl CounterFn for TeeCounter {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Relaxed);
        self.1.increment(value);
    }

    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Relaxed);
        self.1.absolute(value);
    }
}

/// A duration histogram of the tee: the endpoint's buckets, and Prometheus's.
struct TeeHistogram(Arc<Buckets>, Histogram);

impl HistogramFn for TeeHistogram {
    fn record(&self, seconds: f64) {
        self.0.record((seconds * 1e6).max(1.0) as u64);
        self.1.record(seconds);
    }

    /// anet records the requests that ended together as one sample of many:
    /// one bucket update here.
    fn record_many(&self, seconds: f64, count: usize) {
        self.0
            .record_n((seconds * 1e6).max(1.0) as u64, count as u64);
        self.1.record_many(seconds, count);
    }
}

impl Recorder for Tee {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        if let Some(inner) = &self.inner {
            inner.describe_counter(key, unit, description);
        }
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        if let Some(inner) = &self.inner {
            inner.describe_gauge(key, unit, description);
        }
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        if let Some(inner) = &self.inner {
            inner.describe_histogram(key, unit, description);
        }
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        let inner = self
            .inner
            .as_ref()
            .map_or_else(Counter::noop, |r| r.register_counter(key, metadata));
        match Self::labels(key, "anet_client_requests") {
            Some((endpoint, outcome)) => {
                let count = self.endpoints.get(&endpoint).outcome(&outcome);
                Counter::from_arc(Arc::new(TeeCounter(count, inner)))
            }
            None => inner,
        }
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.inner
            .as_ref()
            .map_or_else(Gauge::noop, |r| r.register_gauge(key, metadata))
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        let inner = self
            .inner
            .as_ref()
            .map_or_else(Histogram::noop, |r| r.register_histogram(key, metadata));
        match Self::labels(key, "anet_client_request_duration") {
            Some((endpoint, _)) => {
                let buckets = self.endpoints.get(&endpoint).latency.clone();
                Histogram::from_arc(Arc::new(TeeHistogram(buckets, inner)))
            }
            None => inner,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_give_quantiles_within_two_percent() {
        let b = Buckets::default();
        for us in 1..=10_000 {
            b.record(us);
        }
        for (q, want) in [(0.5, 5_000.0), (0.99, 9_900.0), (0.01, 100.0)] {
            let got = b.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.02, "q{q}: {got} vs {want}");
        }
        assert_eq!(Buckets::default().quantile(0.5), 0);
        // The largest values have a bucket too.
        b.record(u64::MAX);
        assert!(b.quantile(1.0) > 1 << 62);
    }
}

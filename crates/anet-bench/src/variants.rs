//! What measures observability's cost: the `anet-stack-info` row (a `tracing`
//! subscriber at `INFO` on every thread of the client runtime, so the `DEBUG`
//! spans are off) and `--recorder` (a recorder installed for the whole run, so
//! every anet client and server records into it): `prometheus`, the
//! `metrics-exporter-prometheus` recorder, which keeps every histogram sample
//! until its upkeep; or `buckets`, one that aggregates as it records (counters,
//! and histograms as a count, a sum and log-scale buckets, as exporters built on
//! bucket counters do), which shows what anet's own recording costs.

use tracing::Dispatch;

/// A `tracing` subscriber at `INFO` that writes nowhere (the cost measured is
/// the filtering, not the writing).
pub(crate) fn info_subscriber() -> Dispatch {
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::sink)
        .finish();
    Dispatch::new(subscriber)
}

/// The recorder `--recorder` installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RecorderKind {
    /// `metrics-exporter-prometheus` (every histogram sample kept until the
    /// upkeep, every 5 s).
    Prometheus,
    /// A recorder that aggregates as it records.
    Buckets,
}

/// Installs the recorder of `--recorder` for the whole run.
#[cfg(feature = "metrics")]
pub(crate) fn install_recorder(kind: RecorderKind) -> anyhow::Result<()> {
    match kind {
        RecorderKind::Prometheus => install_prometheus(),
        RecorderKind::Buckets => {
            let recorder = std::sync::Arc::new(buckets::Aggregating::default());
            let _ = buckets::INSTALLED.set(recorder.clone());
            metrics::set_global_recorder(recorder)?;
            Ok(())
        }
    }
}

/// Installs a Prometheus recorder for the whole run, with its upkeep every
/// 5 s as the exporter's own install does.
#[cfg(feature = "metrics")]
fn install_prometheus() -> anyhow::Result<()> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[0.0001, 0.001, 0.01, 0.1, 1.0])?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)?;
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(5));
            handle.run_upkeep();
        }
    });
    Ok(())
}

/// What the `buckets` recorder counted over the run, summed over labels
/// (`None` when it is not installed).
#[cfg(feature = "metrics")]
pub(crate) fn recorded() -> Option<String> {
    let recorder = buckets::INSTALLED.get()?;
    Some(format!(
        "buckets recorder: anet_client_requests {}, anet_client_request_duration samples {}, \
         anet_server_requests {}, anet_server_request_duration samples {}",
        recorder.counter_total("anet_client_requests"),
        recorder.samples("anet_client_request_duration"),
        recorder.counter_total("anet_server_requests"),
        recorder.samples("anet_server_request_duration"),
    ))
}

/// Without the feature nothing is recorded.
#[cfg(not(feature = "metrics"))]
pub(crate) fn recorded() -> Option<String> {
    None
}

/// Without the feature there is nothing to record into.
#[cfg(not(feature = "metrics"))]
pub(crate) fn install_recorder(_: RecorderKind) -> anyhow::Result<()> {
    anyhow::bail!("--recorder needs anet-bench's feature `metrics` (on by default)")
}

/// The `buckets` recorder.
#[cfg(feature = "metrics")]
mod buckets {
    use std::{
        collections::HashMap,
        sync::{
            Arc, Mutex, OnceLock, PoisonError,
            atomic::{AtomicU64, Ordering::Relaxed},
        },
    };

    use metrics::{
        Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString,
        Unit,
    };

    /// Counters and gauges are atomics; histograms aggregate as they record.
    /// One handle per key, however often a key is registered.
    #[derive(Debug, Default)]
    pub(crate) struct Aggregating {
        counters: Mutex<HashMap<Key, Arc<AtomicU64>>>,
        gauges: Mutex<HashMap<Key, Arc<AtomicU64>>>,
        histograms: Mutex<HashMap<Key, Arc<Buckets>>>,
    }

    /// The recorder installed, to read its totals at the end.
    pub(crate) static INSTALLED: OnceLock<Arc<Aggregating>> = OnceLock::new();

    impl Aggregating {
        /// The sum of the counters named `name`, over their labels.
        pub(crate) fn counter_total(&self, name: &str) -> u64 {
            let map = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
            map.iter()
                .filter(|(key, _)| key.name() == name)
                .map(|(_, counter)| counter.load(Relaxed))
                .sum()
        }

        /// The samples of the histograms named `name`, over their labels.
        pub(crate) fn samples(&self, name: &str) -> u64 {
            let map = self
                .histograms
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            map.iter()
                .filter(|(key, _)| key.name() == name)
                .map(|(_, histogram)| histogram.count.load(Relaxed))
                .sum()
        }
    }

    fn handle<T: Default>(map: &Mutex<HashMap<Key, Arc<T>>>, key: &Key) -> Arc<T> {
        let mut map = map.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(key.clone()).or_default().clone()
    }

    impl Recorder for Aggregating {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(handle(&self.counters, key))
        }

        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(handle(&self.gauges, key))
        }

        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(handle(&self.histograms, key))
        }
    }

    /// A histogram of seconds: a count, a sum (in nanoseconds) and one bucket
    /// per power of two of nanoseconds.
    #[derive(Debug)]
    pub(crate) struct Buckets {
        count: AtomicU64,
        sum_ns: AtomicU64,
        buckets: [AtomicU64; 64],
    }

    impl Default for Buckets {
        fn default() -> Buckets {
            Buckets {
                count: AtomicU64::new(0),
                sum_ns: AtomicU64::new(0),
                buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            }
        }
    }

    impl HistogramFn for Buckets {
        fn record(&self, seconds: f64) {
            self.record_many(seconds, 1);
        }

        fn record_many(&self, seconds: f64, count: usize) {
            let ns = (seconds.max(0.0) * 1e9) as u64;
            let n = count as u64;
            self.count.fetch_add(n, Relaxed);
            self.sum_ns.fetch_add(ns.saturating_mul(n), Relaxed);
            self.buckets[63 - ns.max(1).leading_zeros() as usize].fetch_add(n, Relaxed);
        }
    }
}

//! The `anet-stack` rows that measure observability's cost: `anet-stack-info`
//! (a `tracing` subscriber at `INFO` on every thread of the client runtime, so
//! the `DEBUG` spans are off) and `anet-stack-metrics` (a Prometheus recorder
//! installed while the row's client connects, so its handles and those of the
//! anet server's connections record).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

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

/// Whether the global recorder hands out real handles: only while a
/// `anet-stack-metrics` row sets up its client.
static RECORDING: AtomicBool = AtomicBool::new(false);

/// Turns recording on (for the handles registered from now) or off.
pub(crate) fn set_recording(on: bool) {
    RECORDING.store(on, Relaxed);
}

/// Installs the switchable Prometheus recorder (once, at start).
#[cfg(feature = "metrics")]
pub(crate) fn install_recorder() {
    let inner = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[0.0001, 0.001, 0.01, 0.1, 1.0])
        .expect("buckets")
        .build_recorder();
    metrics::set_global_recorder(Switch { inner }).expect("the only recorder");
}

/// Without the feature there is nothing to record: the row measures the plain
/// stack.
#[cfg(not(feature = "metrics"))]
pub(crate) fn install_recorder() {}

/// Prometheus's handles while recording, no-op handles otherwise.
#[cfg(feature = "metrics")]
#[derive(Debug)]
struct Switch {
    inner: metrics_exporter_prometheus::PrometheusRecorder,
}

#[cfg(feature = "metrics")]
impl metrics::Recorder for Switch {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }

    fn register_counter(
        &self,
        key: &metrics::Key,
        meta: &metrics::Metadata<'_>,
    ) -> metrics::Counter {
        if RECORDING.load(Relaxed) {
            self.inner.register_counter(key, meta)
        } else {
            metrics::Counter::noop()
        }
    }

    fn register_gauge(&self, key: &metrics::Key, meta: &metrics::Metadata<'_>) -> metrics::Gauge {
        if RECORDING.load(Relaxed) {
            self.inner.register_gauge(key, meta)
        } else {
            metrics::Gauge::noop()
        }
    }

    fn register_histogram(
        &self,
        key: &metrics::Key,
        meta: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        if RECORDING.load(Relaxed) {
            self.inner.register_histogram(key, meta)
        } else {
            metrics::Histogram::noop()
        }
    }
}

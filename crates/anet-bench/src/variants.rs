//! What measures observability's cost: the `anet-stack-info` row (a `tracing`
//! subscriber at `INFO` on every thread of the client runtime, so the `DEBUG`
//! spans are off) and `--recorder` (a Prometheus recorder installed for the
//! whole run, so every anet client and server records into it).

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

/// Installs a Prometheus recorder for the whole run (`--recorder`), with its
/// upkeep every 5 s as the exporter's own install does.
#[cfg(feature = "metrics")]
pub(crate) fn install_recorder() -> anyhow::Result<()> {
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

/// Without the feature there is nothing to record into.
#[cfg(not(feature = "metrics"))]
pub(crate) fn install_recorder() -> anyhow::Result<()> {
    anyhow::bail!("--recorder needs anet-bench's feature `metrics` (on by default)")
}

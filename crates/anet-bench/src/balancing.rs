//! The balancing scenario (`--balancing`): three loopback anet echo servers,
//! two fast and one that answers every request after a delay (50 ms, then
//! 5 ms: a degraded HSM, a switch in a GC pause), each on its own thread.
//!
//! In one run, `--rounds` times, at `--balance-concurrency` callers:
//!
//! * `two-fast`: a client of the two fast servers only (the baseline);
//! * `in-flight`: a client of all three, [`LoadMeasure::InFlight`];
//! * `peak-ewma`: a client of all three, [`LoadMeasure::peak_ewma`];
//! * `equal/in-flight` and `equal/peak-ewma`: three fast servers, to show
//!   what latency-aware balancing costs when there is nothing to avoid.
//!
//! Each figure is the median over the rounds; `vs base` is the median of the
//! per-round ratios to the baseline (`two-fast`; `in-flight` for the equal
//! rows), and `to slow` the share of requests written to the third endpoint.
//! With `ANET_BENCH_DEBUG` set, each row also prints every endpoint's
//! requests and latency estimate ([`EndpointStats::latency`]).
//!
//! [`EndpointStats::latency`]: anet::client::EndpointStats::latency

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use anet::{
    client::{Client, LoadMeasure},
    server::{Request, Server},
};
use anet_tests::servers::{anet_echo_on_own_thread, on_own_thread};
use bytes::Bytes;

use crate::{Args, median, run_callers, runtime};

/// One measured row.
#[derive(Debug, Clone)]
struct Row {
    scenario: String,
    client: &'static str,
    rps: f64,
    p99_us: u64,
    p999_us: u64,
    /// Share of the requests written to the last endpoint (the slow one),
    /// warm-up included.
    last_share: f64,
}

/// An anet echo server that answers every request after `delay`.
fn delayed(delay: Duration) -> SocketAddr {
    on_own_thread("anet-delayed", move |tx| async move {
        let server =
            anet_tests::bind_local(Server::builder().max_in_flight_per_connection(1024)).await;
        tx.send(server.local_addr()).expect("send");
        let service = tower::service_fn(move |request: Request| async move {
            tokio::time::sleep(delay).await;
            Ok::<Bytes, Infallible>(request.into_payload())
        });
        let _ = server.serve(service).await;
    })
}

fn fast() -> SocketAddr {
    anet_echo_on_own_thread(Server::builder().max_in_flight_per_connection(1024))
}

/// Runs a client of `endpoints` with `measure`.
fn measure(
    scenario: &str,
    client: &'static str,
    endpoints: &[SocketAddr],
    measure: LoadMeasure,
    args: &Args,
) -> anyhow::Result<Row> {
    let rt = runtime(args.threads);
    let duration = Duration::from_secs_f64(args.duration);
    // Long enough for the slow server's first answers to come back.
    let warmup = Duration::from_millis(500);
    let last = *endpoints.last().expect("an endpoint");
    let (count, hist, elapsed, last_share) = rt.block_on(async {
        let client = Client::builder()
            .endpoints(endpoints.iter().copied())
            .balance_load(measure)
            .build();
        client.wait_connected(Duration::from_secs(5)).await?;
        let (count, hist, elapsed) = run_callers(
            client.clone(),
            args.balance_concurrency,
            args.size,
            warmup,
            duration,
        )
        .await?;
        let stats = client.stats();
        let total: u64 = stats.endpoints.iter().map(|e| e.requests).sum();
        let to_last = stats.endpoint(last).map_or(0, |e| e.requests);
        let share = to_last as f64 / total.max(1) as f64;
        if std::env::var_os("ANET_BENCH_DEBUG").is_some() {
            for e in &stats.endpoints {
                eprintln!(
                    "    {} requests {} latency {:?}",
                    e.addr, e.requests, e.latency
                );
            }
        }
        Ok::<_, anyhow::Error>((count, hist, elapsed, share))
    })?;
    Ok(Row {
        scenario: scenario.to_owned(),
        client,
        rps: count as f64 / elapsed.as_secs_f64(),
        p99_us: hist.value_at_quantile(0.99),
        p999_us: hist.value_at_quantile(0.999),
        last_share,
    })
}

/// Runs the scenario, prints its table (and one JSON object as the last line
/// with `--json`).
pub(crate) fn run(args: &Args) -> anyhow::Result<()> {
    let fast = [fast(), fast(), fast()];
    let slow = [
        ("slow 50 ms", delayed(Duration::from_millis(50))),
        ("slow 5 ms", delayed(Duration::from_millis(5))),
    ];
    eprintln!(
        "anet-bench --balancing: {} callers, {} B payloads, {} s per row, {} rounds",
        args.balance_concurrency,
        args.size.max(16),
        args.duration,
        args.rounds.max(1)
    );
    // rounds[r] holds the rows of round r, in the same order each round.
    let mut rounds: Vec<Vec<Row>> = Vec::new();
    for round in 1..=args.rounds.max(1) {
        let mut rows = Vec::new();
        for (scenario, slow) in slow {
            let three = [fast[0], fast[1], slow];
            rows.push(measure(
                scenario,
                "two-fast",
                &fast[..2],
                LoadMeasure::InFlight,
                args,
            )?);
            rows.push(measure(
                scenario,
                "in-flight",
                &three,
                LoadMeasure::InFlight,
                args,
            )?);
            rows.push(measure(
                scenario,
                "peak-ewma",
                &three,
                LoadMeasure::peak_ewma(),
                args,
            )?);
        }
        rows.push(measure(
            "equal",
            "in-flight",
            &fast,
            LoadMeasure::InFlight,
            args,
        )?);
        rows.push(measure(
            "equal",
            "peak-ewma",
            &fast,
            LoadMeasure::peak_ewma(),
            args,
        )?);
        for row in &rows {
            eprintln!(
                "  round {round} {:<11} {:<10} {:>10.0} req/s  p99 {:>6} us  p999 {:>6} us  last {:.4}",
                row.scenario, row.client, row.rps, row.p99_us, row.p999_us, row.last_share
            );
        }
        rounds.push(rows);
    }
    println!(
        "{:<11} {:<10} {:>10} {:>8} {:>8} {:>8} {:>12} {:>10}",
        "scenario", "load", "req/s", "p99 us", "p999 us", "vs base", "p99 vs base", "to slow"
    );
    let mut json = Vec::new();
    for (i, row) in rounds[0].iter().enumerate() {
        let base = if row.scenario == "equal" {
            "in-flight"
        } else {
            "two-fast"
        };
        let base_index = rounds[0]
            .iter()
            .position(|r| r.scenario == row.scenario && r.client == base)
            .expect("the baseline row");
        let across = |f: &dyn Fn(&Row) -> f64| median(rounds.iter().map(|r| f(&r[i])));
        let ratio = |f: &dyn Fn(&Row) -> f64| {
            median(rounds.iter().map(|r| f(&r[i]) / f(&r[base_index]).max(1.0)))
        };
        let (rps, p99, p999) = (
            across(&|r| r.rps),
            across(&|r| r.p99_us as f64),
            across(&|r| r.p999_us as f64),
        );
        let (rps_ratio, p99_ratio) = (ratio(&|r| r.rps), ratio(&|r| r.p99_us as f64));
        // The share sent to the slow server (the third endpoint; for the
        // baseline, the second fast one).
        let share = across(&|r| r.last_share);
        println!(
            "{:<11} {:<10} {:>10.0} {:>8.0} {:>8.0} {:>8.2} {:>12.2} {:>9.2}%",
            row.scenario,
            row.client,
            rps,
            p99,
            p999,
            rps_ratio,
            p99_ratio,
            100.0 * share
        );
        json.push(serde_json::json!({
            "scenario": row.scenario,
            "load": row.client,
            "baseline": base,
            "rps": rps,
            "p99_us": p99.round() as u64,
            "p999_us": p999.round() as u64,
            "rps_vs_baseline": rps_ratio,
            "p99_vs_baseline": p99_ratio,
            "last_endpoint_share": share,
        }));
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "balancing": json,
                "concurrency": args.balance_concurrency,
                "threads": args.threads,
                "rounds": rounds.len(),
            })
        );
    }
    Ok(())
}

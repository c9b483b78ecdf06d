//! `anet bench --histogram FILE.svg`: the latency distribution of a run.

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;

/// Bars drawn between the lowest latency and the p99.9.
const BARS: u64 = 60;

/// Draws `latency_us` (microseconds) as a bar chart of request counts, up to
/// its p99.9 (the tail beyond is summed into the last bar), with the p50 and
/// p99 marked.
pub(crate) fn latency(path: &Path, latency_us: &Histogram<u64>, title: &str) -> anyhow::Result<()> {
    let (low, high) = if latency_us.is_empty() {
        (0, 1)
    } else {
        (
            latency_us.min(),
            latency_us
                .value_at_quantile(0.999)
                .max(latency_us.min() + 1),
        )
    };
    let step = (high - low).div_ceil(BARS).max(1);
    let mut bars = vec![0u64; BARS as usize];
    for v in latency_us.iter_recorded() {
        let i = ((v.value_iterated_to().saturating_sub(low)) / step).min(BARS - 1);
        bars[i as usize] += v.count_at_value();
    }
    let top = bars.iter().copied().max().unwrap_or(0).max(1);
    let x_end = low + step * BARS;

    let root = SVGBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(low..x_end, 0..top + top / 10)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("latency (µs)")
        .y_desc("requests")
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, &n)| {
        let x0 = low + step * i as u64;
        Rectangle::new([(x0, 0), (x0 + step, n)], BLUE.mix(0.6).filled())
    }))?;
    if !latency_us.is_empty() {
        for (q, name, color) in [(0.5, "p50", GREEN), (0.99, "p99", RED)] {
            let x = latency_us.value_at_quantile(q).min(x_end);
            chart
                .draw_series(LineSeries::new([(x, 0), (x, top)], color.stroke_width(2)))?
                .label(format!("{name} {x} µs"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

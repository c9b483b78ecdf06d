//! `--plot FILE.svg`: throughput and p99 latency against concurrency for every
//! client row, one row of two charts per server.

use std::path::Path;

use plotters::prelude::*;

/// One point of a line: a client on a server at a concurrency.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) client: &'static str,
    pub(crate) server: &'static str,
    pub(crate) concurrency: usize,
    pub(crate) rps: f64,
    pub(crate) p99_us: f64,
}

/// Draws `rows` into `path`.
pub(crate) fn draw(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let mut servers: Vec<&str> = rows.iter().map(|r| r.server).collect();
    servers.dedup();
    let mut clients: Vec<&str> = Vec::new();
    for r in rows {
        if !clients.contains(&r.client) {
            clients.push(r.client);
        }
    }
    let (c_min, c_max) = rows.iter().fold((usize::MAX, 1), |(lo, hi), r| {
        (lo.min(r.concurrency), hi.max(r.concurrency))
    });
    let x_range = (c_min.max(1) as f64 * 0.8)..(c_max as f64 * 1.25);
    let rps_max = rows.iter().map(|r| r.rps).fold(1.0, f64::max) * 1.1;
    let p99_max = rows.iter().map(|r| r.p99_us).fold(1.0, f64::max) * 1.1;

    let root = SVGBackend::new(path, (1200, 450 * servers.len().max(1) as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let panels = root.split_evenly((servers.len().max(1), 2));
    for (i, server) in servers.iter().enumerate() {
        for (j, (what, max)) in [
            ("throughput (req/s)", rps_max),
            ("p99 latency (µs)", p99_max),
        ]
        .into_iter()
        .enumerate()
        {
            let area = &panels[i * 2 + j];
            let mut chart = ChartBuilder::on(area)
                .caption(format!("{what}, {server} server"), ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(70)
                .build_cartesian_2d(x_range.clone().log_scale(), (1.0..max).log_scale())?;
            chart
                .configure_mesh()
                .x_desc("concurrency")
                .y_label_formatter(&|v| format!("{v:.0}"))
                .draw()?;
            for (k, client) in clients.iter().enumerate() {
                let color = Palette99::pick(k).to_rgba();
                let mut line: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| r.server == *server && r.client == *client)
                    .map(|r| {
                        let y = if j == 0 { r.rps } else { r.p99_us };
                        (r.concurrency as f64, y.max(1.0))
                    })
                    .collect();
                line.sort_by(|a, b| a.0.total_cmp(&b.0));
                chart
                    .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
                    .label(*client)
                    .legend(move |(x, y)| {
                        PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                    });
                chart.draw_series(line.into_iter().map(|p| Circle::new(p, 3, color.filled())))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 12))
                .draw()?;
        }
    }
    root.present()?;
    Ok(())
}

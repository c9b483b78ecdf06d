//! `anet echo`: the anet server with an echo service.

use std::{convert::Infallible, io::Write, process::ExitCode, time::Duration};

use anet::server::{Request, Server};
use tower::service_fn;

use crate::{EchoArgs, OptionalDuration, common};

/// A timeout given as a duration (`off`/`0s` = never) or, in the older spelling,
/// in milliseconds (0 = never); `default` when neither is given.
fn optional(
    duration: Option<OptionalDuration>,
    ms: Option<u64>,
    default: Duration,
) -> Option<Duration> {
    match (duration, ms) {
        (Some(OptionalDuration(d)), _) => d,
        (None, Some(ms)) => Some(Duration::from_millis(ms)),
        (None, None) => Some(default),
    }
    .filter(|d| !d.is_zero())
}

pub(crate) async fn run(args: EchoArgs) -> anyhow::Result<ExitCode> {
    common::init_logging();
    if let Some(addr) = args.metrics {
        crate::metrics::serve(addr)?;
    }
    let builder = Server::builder()
        .max_connections(args.max_connections)
        .first_frame_timeout(args.first_frame_timeout.0.filter(|t| !t.is_zero()))
        .evict_idle_after(args.evict_idle_after.0)
        .max_connections_per_peer(args.max_connections_per_peer)
        .max_in_flight_per_connection(args.max_in_flight)
        .max_in_flight_bytes(args.max_in_flight_bytes)
        .max_in_flight_requests(args.max_in_flight_requests)
        .shutdown_grace(common::SHUTDOWN_GRACE)
        .frame(args.frame.builder().max_frame_length(args.max_frame))
        .idle_timeout(optional(
            args.idle_timeout,
            args.idle_timeout_ms,
            Duration::from_secs(300),
        ))
        .read_timeout(optional(
            args.read_timeout,
            args.read_timeout_ms,
            Duration::from_secs(10),
        ));
    let server = common::bind(builder, &args.listen).await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {}", server.local_addr())?;
    stdout.flush()?;
    let echo = service_fn(|req: Request| async move { Ok::<_, Infallible>(req.into_payload()) });
    server
        .serve_with_shutdown(echo, common::shutdown_signal())
        .await?;
    Ok(ExitCode::SUCCESS)
}

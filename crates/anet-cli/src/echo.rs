//! `anet echo`: the anet server with an echo service.

use std::{convert::Infallible, io::Write, process::ExitCode, time::Duration};

use anet::server::{Request, Server};
use tower::service_fn;

use crate::EchoArgs;

fn optional(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

pub(crate) async fn run(args: EchoArgs) -> anyhow::Result<ExitCode> {
    let server = Server::builder()
        .max_connections(args.max_connections)
        .first_frame_timeout(args.first_frame_timeout.0.filter(|t| !t.is_zero()))
        .evict_idle_after(args.evict_idle_after.0)
        .max_connections_per_peer(args.max_connections_per_peer)
        .max_in_flight_per_connection(args.max_in_flight)
        .max_in_flight_bytes(args.max_in_flight_bytes)
        .max_in_flight_requests(args.max_in_flight_requests)
        .frame(anet_proto::FrameCodec::builder().max_frame_length(args.max_frame))
        .idle_timeout(optional(args.idle_timeout_ms))
        .read_timeout(optional(args.read_timeout_ms))
        .bind(args.listen)
        .await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {}", server.local_addr())?;
    stdout.flush()?;
    let echo = service_fn(|req: Request| async move { Ok::<_, Infallible>(req.into_payload()) });
    server
        .serve_with_shutdown(echo, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(ExitCode::SUCCESS)
}

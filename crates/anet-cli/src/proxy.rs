//! `anet proxy`: a connection concentrator.
//!
//! An anet server faces the clients: any number of connections, each with its own
//! tag space, their tags echoed as they came. Its service forwards each request's
//! payload through one shared anet client (pooled, balanced backend connections
//! numbered with the proxy's own tags) and answers with the backend's reply. So
//! tags that collide across client connections never meet on a backend
//! connection, and many application instances share the few sockets an HSM
//! allows.
//!
//! A request that fails (no backend, the backend's connection lost, the
//! `--timeout` deadline) is answered as `--on-error` says: nothing (the client's
//! own deadline applies) or the client's connection closed.

use std::{io::Write, process::ExitCode, time::Duration};

use anet::{
    client::ConnectionConfig,
    server::{OnError, Request, Server},
};
use anyhow::Context as _;
use tower::service_fn;

use crate::{ProxyArgs, ProxyOnError, common};

/// The longest a closing proxy waits for its backend connections to close.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

pub(crate) async fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    if let Some(addr) = args.metrics {
        crate::metrics::serve(addr)?;
    }
    let timeout = common::timeout(args.timeout, args.timeout_ms, Duration::from_secs(2))
        .max(Duration::from_millis(1));
    let front = args.frame.builder().max_frame_length(args.max_frame);
    let back = anet_proto::Builder::new()
        .tag_format(args.backend_tag.unwrap_or(args.frame.tag))
        .length_width(args.backend_length_width.unwrap_or(args.frame.length_width))
        .max_frame_length(args.max_frame);
    let mut config = ConnectionConfig::new().frame(back);
    if let Some(n) = args.backend_max_in_flight {
        config = config.max_in_flight(n);
    }
    config
        .validate()
        .context("invalid backend frame or --backend-max-in-flight options")?;
    let mut client = common::client_builder(&args.connect, Some(args.resolve_every))
        .await?
        .connection(config)
        .request_timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(1)));
    if let Some(n) = args.connections_per_endpoint {
        client = client.connections_per_endpoint(n, n);
    }
    let client = client.build();

    let on_error = match args.on_error {
        ProxyOnError::NoResponse => OnError::NoResponse,
        ProxyOnError::Close => OnError::Close,
    };
    let server = Server::builder()
        .frame(front)
        .max_connections(args.max_connections)
        .max_in_flight_per_connection(args.max_in_flight)
        .on_error(on_error);
    let server = common::bind(server, &args.listen).await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {}", server.local_addr())?;
    stdout.flush()?;

    let backends = client.clone();
    let forward = service_fn(move |req: Request| backends.call(req.into_payload()));
    server
        .serve_with_shutdown(forward, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    // Every client connection is closed and its requests answered or given up:
    // close the backend side too.
    client.close();
    let _ = tokio::time::timeout(CLOSE_WAIT, client.closed()).await;
    Ok(ExitCode::SUCCESS)
}

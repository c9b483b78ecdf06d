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
//!
//! Both sides carry the same largest payload (see [`matched_frames`]): a request
//! too large for a backend frame is refused as a protocol error on the client's
//! connection, never dropped inside the proxy. Warnings go to stderr, and one
//! stats line on exit.

use std::{
    io::Write,
    process::ExitCode,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use anet::{
    client::{ConnectionConfig, ErrorCounts},
    server::{OnError, Request, Server},
};
use anet_proto::Builder as FrameBuilder;
use anyhow::Context as _;
use tower::service_fn;

use crate::{ProxyArgs, ProxyOnError, common};

/// The longest a closing proxy waits for its backend connections to close.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// The client-side and backend frame settings with their maximum bodies lowered
/// so that both carry the same largest payload: every request a client frame
/// can carry fits a backend frame, and every answer a backend frame can carry
/// fits a client frame. (A client frame beyond the front maximum is then a
/// protocol error that closes its connection, instead of a request that fails
/// inside the proxy.)
fn matched_frames(front: FrameBuilder, back: FrameBuilder) -> (FrameBuilder, FrameBuilder) {
    let payload = front.max_payload().min(back.max_payload());
    (
        front.max_frame_length(payload + front.get_tag_format().width()),
        back.max_frame_length(payload + back.get_tag_format().width()),
    )
}

/// What the proxy forwarded, reported on exit.
#[derive(Debug, Default)]
struct Stats {
    /// Requests forwarded.
    requests: AtomicU64,
    /// Failed requests, by kind.
    errors: Mutex<ErrorCounts>,
}

impl Stats {
    /// One line: requests, answers, failures by kind.
    fn line(&self) -> String {
        let requests = self.requests.load(Relaxed);
        let errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        let mut line = format!(
            "anet proxy: {requests} requests, {} answered, {} failed",
            requests.saturating_sub(errors.total()),
            errors.total()
        );
        let kinds: Vec<String> = errors.iter().map(|(k, n)| format!("{k} {n}")).collect();
        if !kinds.is_empty() {
            line.push_str(&format!(" ({})", kinds.join(", ")));
        }
        line
    }
}

pub(crate) async fn run(args: ProxyArgs) -> anyhow::Result<ExitCode> {
    common::init_logging();
    if let Some(addr) = args.metrics {
        crate::metrics::serve(addr)?;
    }
    let timeout = common::timeout(args.timeout, args.timeout_ms, Duration::from_secs(2));
    let (front, back) = matched_frames(
        args.frame.builder().max_frame_length(args.max_frame),
        FrameBuilder::new()
            .tag_format(args.backend_tag.unwrap_or(args.frame.tag))
            .length_width(args.backend_length_width.unwrap_or(args.frame.length_width))
            .max_frame_length(args.max_frame),
    );
    let asked = args.frame.builder().max_frame_length(args.max_frame);
    if front.max_body() < asked.max_body() {
        tracing::warn!(
            max_frame = front.max_body(),
            max_payload = front.max_payload(),
            "client-side --max-frame lowered to what a backend frame carries"
        );
    }
    let mut config = ConnectionConfig::new().frame(back);
    if let Some(n) = args.backend_max_in_flight {
        config = config.max_in_flight(n);
    }
    config
        .validate()
        .context("invalid backend frame or --backend-max-in-flight options")?;
    let limit = common::lookup_limit(timeout);
    let mut client = common::client_builder(&args.connect, Some(args.resolve_every), limit)
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
        .evict_idle_after(args.evict_idle_after.0)
        .max_in_flight_per_connection(args.max_in_flight)
        .max_in_flight_bytes(args.max_in_flight_bytes)
        .max_in_flight_requests(args.max_in_flight_requests)
        .shutdown_grace(common::SHUTDOWN_GRACE)
        .on_error(on_error);
    let server = common::bind(server, &args.listen).await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on {}", server.local_addr())?;
    stdout.flush()?;

    let stats = Arc::new(Stats::default());
    let backends = client.clone();
    let counted = stats.clone();
    let forward = service_fn(move |req: Request| {
        let call = backends.call(req.into_payload());
        let stats = counted.clone();
        async move {
            stats.requests.fetch_add(1, Relaxed);
            let result = call.await;
            if let Err(e) = &result {
                // The server logs the failure itself ("service failed a request").
                stats
                    .errors
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .record(e.kind());
            }
            result
        }
    });
    let served = server
        .serve_with_shutdown(forward, common::shutdown_signal())
        .await;
    // Every client connection is closed and its requests answered or given up:
    // close the backend side too.
    client.close();
    let _ = tokio::time::timeout(CLOSE_WAIT, client.closed()).await;
    eprintln!("{}", stats.line());
    served?;
    Ok(ExitCode::SUCCESS)
}

//! A user-written retry `Policy` layered on anet's balancer: retry reads (payloads
//! starting with `READ`, which are idempotent) after any failure, and anything
//! after a failure that proves it was never written; never retry other writes
//! that may have reached the server.
//!
//! Run: `cargo run --example custom_retry`

use std::{
    future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use anet::{
    Error, Kind,
    client::Client,
    server::{Builder, OnError, Request, Server},
};
use bytes::Bytes;
use tower::{Service, ServiceBuilder, ServiceExt, retry::Policy, service_fn};

/// Retries reads up to `left` times; writes only when unsent.
#[derive(Clone, Debug)]
struct ReadsAreIdempotent {
    left: usize,
}

impl Policy<Bytes, Bytes, Error> for ReadsAreIdempotent {
    type Future = future::Ready<()>;

    fn retry(
        &mut self,
        req: &mut Bytes,
        result: &mut Result<Bytes, Error>,
    ) -> Option<Self::Future> {
        let Err(error) = result else { return None };
        let is_read = req.starts_with(b"READ");
        let safe = error.is_unsent() && error.kind() != Kind::Unavailable;
        if self.left > 0 && (safe || is_read) {
            self.left -= 1;
            println!(
                "  retrying {:?} after {}",
                String::from_utf8_lossy(req),
                error.kind()
            );
            Some(future::ready(()))
        } else {
            None
        }
    }

    fn clone_request(&mut self, req: &Bytes) -> Option<Bytes> {
        Some(req.clone())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs with RUST_LOG=anet=debug.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    // A flaky backend: every third request fails, and the server closes that
    // connection (OnError::Close), so the client sees ConnectionLost.
    let count = Arc::new(AtomicUsize::new(0));
    let flaky = service_fn(move |req: Request| {
        let n = count.fetch_add(1, Ordering::SeqCst);
        async move {
            if n % 3 == 1 {
                Err("simulated backend fault")
            } else {
                Ok(req.into_payload())
            }
        }
    });
    let server: Server = Builder::new()
        .on_error(OnError::Close)
        .bind("127.0.0.1:0".parse()?)
        .await?;
    let addr = server.local_addr();
    tokio::spawn(server.serve(flaky));

    let client = Client::builder().endpoint(addr).build();
    let mut stack = ServiceBuilder::new()
        .retry(ReadsAreIdempotent { left: 3 })
        .service(client.balancer());

    for request in [
        "READ balance",
        "WRITE debit 10",
        "READ balance",
        "WRITE debit 20",
        "READ history",
        "READ limits",
    ] {
        let result = stack
            .ready()
            .await?
            .call(Bytes::from_static(request.as_bytes()))
            .await;
        match result {
            Ok(reply) => println!("{request:<16} -> ok {:?}", String::from_utf8_lossy(&reply)),
            Err(e) => println!(
                "{request:<16} -> failed: {} (unsent: {})",
                e.kind(),
                e.is_unsent()
            ),
        }
    }
    Ok(())
}

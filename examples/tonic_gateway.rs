//! A tonic gRPC service whose unary method forwards a command to a binary backend
//! through a shared `anet::client::Client`, with anet's errors as gRPC statuses.
//!
//! Run: `cargo run --example tonic_gateway` — it starts an upper-casing anet
//! backend and the gateway, checks itself with one gRPC call, then serves until
//! Ctrl-C. With `--check` it also starts a backend that never answers and points a
//! second gateway at a port where nothing listens, makes real gRPC calls through a
//! tonic client, and exits 0 only if every outcome is the documented one:
//!
//! | call | outcome |
//! |---|---|
//! | `Forward("nc")` to the working backend | `NC` |
//! | a command over the maximum frame (70,000 bytes) | `INVALID_ARGUMENT` |
//! | to the backend that stops answering | `DEADLINE_EXCEEDED` after the 300 ms request deadline |
//! | to the backend that is down | `UNAVAILABLE` |

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use anet::{
    client::Client,
    server::{Request, Server},
};
use anet_examples::grpc;
use bytes::Bytes;
use tonic::Code;
use tower::service_fn;

/// The deadline of every backend request made through the gateways.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let check = std::env::args().any(|a| a == "--check");

    let backend = upper_casing_backend().await?;
    let (addr, _gateway) = grpc::serve(client(backend)).await?;
    println!("gateway on {addr} (gRPC: anet.gateway.Gateway/Forward)");

    let reply = grpc::forward(addr, b"nc").await;
    println!(
        "Forward(\"nc\") -> {:?}",
        reply.as_deref().map(String::from_utf8_lossy)
    );
    anyhow::ensure!(matches!(reply.as_deref(), Ok(b"NC")), "self-check failed");

    if !check {
        tokio::signal::ctrl_c().await?;
        return Ok(());
    }

    let oversized = grpc::forward(addr, &vec![b'x'; 70_000]).await;
    expect(
        "a command over the maximum frame",
        oversized,
        Code::InvalidArgument,
    )?;

    let (silent_addr, _silent) = grpc::serve(client(silent_backend().await?)).await?;
    let started = tokio::time::Instant::now();
    let silent = grpc::forward(silent_addr, b"nc").await;
    expect(
        "a backend that stops answering",
        silent,
        Code::DeadlineExceeded,
    )?;
    let waited = started.elapsed();
    anyhow::ensure!(
        waited >= REQUEST_TIMEOUT && waited < Duration::from_secs(3),
        "the deadline took {waited:?}"
    );

    let (down_addr, _down) = grpc::serve(client(closed_port()?)).await?;
    let down = grpc::forward(down_addr, b"nc").await;
    expect("a backend that is down", down, Code::Unavailable)?;

    println!("check ok");
    Ok(())
}

/// A client of one backend with the example's request deadline.
fn client(backend: SocketAddr) -> Client {
    Client::builder()
        .endpoint(backend)
        .request_timeout(REQUEST_TIMEOUT)
        .build()
}

/// Prints the outcome and fails unless it is the status `code`.
fn expect(what: &str, outcome: Result<Vec<u8>, tonic::Status>, code: Code) -> anyhow::Result<()> {
    match outcome {
        Err(status) if status.code() == code => {
            println!("{what} -> {:?}: {}", status.code(), status.message());
            Ok(())
        }
        other => anyhow::bail!("{what}: expected {code:?}, got {other:?}"),
    }
}

/// An anet backend that upper-cases every payload.
async fn upper_casing_backend() -> anyhow::Result<SocketAddr> {
    let server = Server::builder().bind("127.0.0.1:0".parse()?).await?;
    let addr = server.local_addr();
    tokio::spawn(server.serve(service_fn(|req: Request| async move {
        Ok::<_, Infallible>(Bytes::from(req.payload().to_ascii_uppercase()))
    })));
    Ok(addr)
}

/// An anet backend that reads requests and never answers them.
async fn silent_backend() -> anyhow::Result<SocketAddr> {
    let server = Server::builder().bind("127.0.0.1:0".parse()?).await?;
    let addr = server.local_addr();
    tokio::spawn(server.serve(service_fn(|_: Request| {
        std::future::pending::<Result<Bytes, Infallible>>()
    })));
    Ok(addr)
}

/// A loopback port where nothing listens.
fn closed_port() -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()
}

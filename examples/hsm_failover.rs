//! An active/standby HSM pair behind one client, with the connection lifecycle
//! an operator expects: every new connection sends `NC` (diagnostics) and
//! checks the answer before it takes traffic; idle connections send `NC` as a
//! heartbeat; an answer carrying an error code counts against the device; the
//! standby takes the traffic while the primary is gone, and gives it back once
//! the primary has come back and passed its probation.
//!
//! Run: `cargo run --example hsm_failover` (it checks itself and exits non-zero
//! on a surprise).

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use anet::client::{
    Backoff, Classification, Client, Connection, EndpointStats, Heartbeat, PoolConfig,
};
use anet::server::{Request, Server};
use bytes::Bytes;
use tokio::{net::TcpListener, task::JoinHandle};
use tower::{Service, ServiceExt, service_fn};

/// A toy HSM named `name`: `NC` answers `ND00` + its name; `A0` (generate a
/// key) answers `A100` + its name; anything else error 68 (command disabled).
fn hsm(
    name: &'static str,
) -> impl Service<Request, Response = Bytes, Error = Infallible, Future = impl Send>
+ Clone
+ Send
+ 'static {
    service_fn(move |req: Request| async move {
        let reply = match req.payload().get(..2) {
            Some(b"NC") => format!("ND00{name}"),
            Some(b"A0") => format!("A100{name}"),
            _ => "ZZ68".to_owned(),
        };
        Ok::<_, Infallible>(Bytes::from(reply))
    })
}

/// Starts a device on `addr` (port 0 for any); the task serves until aborted,
/// which kills the device and its connections.
async fn start(
    name: &'static str,
    addr: SocketAddr,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let mut tries = 0;
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if tries < 100 => {
                tries += 1;
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let server = Server::builder().listener(listener)?;
    let addr = server.local_addr();
    let task = tokio::spawn(async move {
        let _ = server.serve(hsm(name)).await;
    });
    Ok((addr, task))
}

/// Which device answered a key generation.
async fn generate(client: &Client) -> anyhow::Result<String> {
    let reply = client.call(Bytes::from_static(b"A0")).await?;
    Ok(String::from_utf8_lossy(&reply[4..]).into_owned())
}

fn line(e: &EndpointStats) -> String {
    format!(
        "{} priority {} {:?}{} connections {} handshake failures {} last error {}",
        e.addr,
        e.priority,
        e.state,
        if e.on_probation { " (probation)" } else { "" },
        e.connections,
        e.handshake_failures,
        e.last_error
            .as_ref()
            .map_or("-".to_owned(), ToString::to_string),
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let (primary, primary_task) = start("primary", any).await?;
    let (standby, _standby_task) = start("standby", any).await?;

    let probation = Duration::from_millis(800);
    let client = Client::builder()
        .endpoint(primary)
        .endpoint_with_priority(standby, 1)
        .pool(
            PoolConfig::new()
                .backoff(
                    Backoff::new()
                        .base(Duration::from_millis(50))
                        .max(Duration::from_millis(200)),
                )
                .probation(probation),
        )
        .handshake(|mut conn: Connection| async move {
            let reply = conn.ready().await?.call(Bytes::from_static(b"NC")).await?;
            if reply.starts_with(b"ND00") {
                Ok(())
            } else {
                Err(anet::BoxError::from(format!(
                    "diagnostics answered {reply:?}"
                )))
            }
        })
        .heartbeat(
            Heartbeat::new(Duration::from_secs(5), Bytes::from_static(b"NC"))
                .check(|reply| reply.starts_with(b"ND00")),
        )
        .classify(|reply| match reply.get(2..4) {
            Some(b"00") => Classification::Success,
            _ => Classification::EndpointFailure,
        })
        .build();
    client.wait_connected(Duration::from_secs(5)).await?;
    for e in &client.stats().endpoints {
        println!("ready: {}", line(e));
    }

    let who = generate(&client).await?;
    println!("A0 answered by {who}");
    anyhow::ensure!(who == "primary", "the primary serves first");

    println!("killing the primary");
    primary_task.abort();
    let mut who = String::new();
    for _ in 0..100 {
        // A request in flight when the device died may fail; later ones go
        // to the standby.
        if let Ok(w) = generate(&client).await {
            who = w;
            if who == "standby" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("A0 answered by {who}");
    anyhow::ensure!(who == "standby", "the standby took over");
    for e in &client.stats().endpoints {
        println!("failed over: {}", line(e));
    }

    println!("restarting the primary");
    let (_, _primary_task) = start("primary", primary).await?;
    let mut back = false;
    for _ in 0..500 {
        if generate(&client).await? == "primary" {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    anyhow::ensure!(back, "traffic returned to the primary");
    println!("A0 answered by primary again (after its {probation:?} probation)");
    for e in &client.stats().endpoints {
        println!("back: {}", line(e));
    }
    client.close();
    client.closed().await;
    Ok(())
}

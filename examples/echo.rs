//! The Go anet README's example, in Rust: an embedded echo server, a client, and
//! five concurrent requests with 2-second timeouts, each response printed.
//!
//! Run: `cargo run --example echo`

use std::{convert::Infallible, time::Duration};

use anet::{
    client::Client,
    server::{Request, Server},
};
use bytes::Bytes;
use tower::service_fn;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // The server: every payload comes back unchanged, under its request's tag.
    let server = Server::builder().bind("127.0.0.1:0".parse()?).await?;
    let addr = server.local_addr();
    let echo = service_fn(|req: Request| async move { Ok::<_, Infallible>(req.into_payload()) });
    tokio::spawn(server.serve(echo));

    // The client: pooled, multiplexed connections with a 2 s deadline per request.
    let client = Client::builder()
        .endpoint(addr)
        .request_timeout(Duration::from_secs(2))
        .build();

    let messages = ["hello", "world", "anet test", "concurrent", "request"];
    let mut tasks = tokio::task::JoinSet::new();
    for (i, message) in messages.into_iter().enumerate() {
        let client = client.clone();
        tasks.spawn(async move {
            let response = client.call(Bytes::from_static(message.as_bytes())).await;
            (i, message, response)
        });
    }
    let mut results = tasks.join_all().await;
    results.sort_by_key(|(i, _, _)| *i);
    for (i, message, response) in results {
        let response = response?;
        println!(
            "request {} {:?} -> response {:?}",
            i + 1,
            message,
            String::from_utf8_lossy(&response)
        );
    }
    client.close();
    client.closed().await;
    Ok(())
}

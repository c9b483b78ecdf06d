//! A payShield-style host protocol: 2-byte length, then a 4-character ASCII header
//! that the HSM echoes, then the command. Both the server and the client are
//! configured with `TagFormat::ascii(4)`; the client numbers its requests `0000`,
//! `0001`, ... in the header, the server echoes whatever header it got.
//!
//! Run: `cargo run --example hsm_header`

use std::convert::Infallible;

use anet::{
    client::{Client, ConnectionConfig},
    server::{Request, Server},
};
use anet_proto::{FrameCodec, TagFormat};
use bytes::Bytes;
use tower::service_fn;

/// A toy HSM: answers `NC` (diagnostics) with `ND00` + a fake firmware version,
/// anything else with error code 68 (command disabled).
async fn hsm(req: Request) -> Result<Bytes, Infallible> {
    let command = req.payload();
    let reply = if command.starts_with(b"NC") {
        Bytes::from_static(b"ND000000000000000000001234-0000")
    } else {
        let mut reply = command.get(..2).unwrap_or(b"??").to_vec();
        reply[1] = reply[1].wrapping_add(1);
        reply.extend_from_slice(b"68");
        Bytes::from(reply)
    };
    Ok(reply)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let frame = FrameCodec::builder().tag_format(TagFormat::ascii(4));

    let server = Server::builder()
        .frame(frame)
        .bind("127.0.0.1:0".parse()?)
        .await?;
    let addr = server.local_addr();
    tokio::spawn(server.serve(service_fn(hsm)));

    let client = Client::builder()
        .endpoint(addr)
        // 4 digits give 10,000 headers: the window must leave room for generations.
        .connection(ConnectionConfig::new().frame(frame).max_in_flight(64))
        .build();

    for command in ["NC", "A0", "NC"] {
        let reply = client.call(Bytes::from_static(command.as_bytes())).await?;
        println!("{command} -> {}", String::from_utf8_lossy(&reply));
    }
    Ok(())
}

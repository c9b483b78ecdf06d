//! The wire format by hand: a tiny TCP echo server and client that use only
//! `anet_proto::{read_frame, write_frame}`, the equivalent of Go anet's `Read` and
//! `Write`.
//!
//! Run: `cargo run --example frames`

use anet_proto::{FrameCodec, FrameRef, Tag, read_frame, write_frame};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;

    // Server: echo every frame back with its tag.
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await?;
        let codec = FrameCodec::new();
        while let Some(frame) = read_frame(&mut stream, &codec).await? {
            write_frame(&mut stream, &codec, frame.as_ref()).await?;
        }
        Ok::<_, anet_proto::FrameError>(())
    });

    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let codec = FrameCodec::new();
    for (i, text) in ["hello", "world"].iter().enumerate() {
        let tag = Tag::from_u32(i as u32 + 1);
        write_frame(
            &mut stream,
            &codec,
            FrameRef {
                tag,
                payload: text.as_bytes(),
            },
        )
        .await?;
        let reply = read_frame(&mut stream, &codec)
            .await?
            .ok_or("server closed")?;
        println!(
            "{:?} -> {}",
            reply.tag,
            String::from_utf8_lossy(&reply.payload)
        );
    }
    Ok(())
}

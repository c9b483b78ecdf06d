//! `wire-floor`: the same socket driven without any per-call future. One task
//! keeps `concurrency` requests in flight: as each batch of responses is read, it
//! checks them and writes the next request under each freed tag, all in one
//! write. The syscall and wire limit of this machine, for information.

use std::net::SocketAddr;

use anet_proto::{FrameCodec, Tag};
use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::Instant,
};
use tokio_util::codec::Decoder;

/// Runs until `stop_at`; returns requests completed and their latency.
pub(crate) async fn run(
    addr: SocketAddr,
    concurrency: usize,
    size: usize,
    stop_at: Instant,
) -> Result<(u64, Histogram<u64>), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let codec = FrameCodec::new();
    let mut decoder = FrameCodec::new();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut expected = vec![0u64; concurrency];
    let mut sent_at = vec![Instant::now(); concurrency];
    let mut seq = 0u64;
    let mut payload = vec![b'.'; size.max(8)];
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut encode = |tag: usize, seq: &mut u64, expected: &mut [u64], out: &mut BytesMut| {
        *seq += 1;
        expected[tag] = *seq;
        payload[..8].copy_from_slice(&seq.to_be_bytes());
        codec
            .encode_parts(&Tag::from_u32(tag as u32), &payload, out)
            .expect("encode");
    };
    for (tag, sent) in sent_at.iter_mut().enumerate() {
        *sent = Instant::now();
        encode(tag, &mut seq, &mut expected, &mut out);
    }
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    out.clear();
    let mut inbuf = BytesMut::with_capacity(64 * 1024);
    let mut done = 0u64;
    let mut outstanding = concurrency;
    while outstanding > 0 {
        if stream
            .read_buf(&mut inbuf)
            .await
            .map_err(|e| e.to_string())?
            == 0
        {
            return Err("server closed".into());
        }
        let now = Instant::now();
        while let Some(frame) = decoder.decode(&mut inbuf).map_err(|e| e.to_string())? {
            let tag =
                u32::from_be_bytes(frame.tag.as_bytes().try_into().expect("4 bytes")) as usize;
            let mut p = &frame.payload[..];
            if tag >= concurrency || p.len() < 8 || p.get_u64() != expected[tag] {
                return Err(format!("mismatch on tag {tag}"));
            }
            done += 1;
            let us = now.duration_since(sent_at[tag]).as_micros().max(1) as u64;
            let _ = hist.record(us);
            if now < stop_at {
                sent_at[tag] = now;
                encode(tag, &mut seq, &mut expected, &mut out);
            } else {
                outstanding -= 1;
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await.map_err(|e| e.to_string())?;
            out.clear();
        }
    }
    Ok((done, hist))
}

//! `sequential`: the Go anet broker's model — a pool of connections, each with one
//! request in flight at a time. Sized for its best result in a closed loop: one
//! connection per caller, so no caller ever queues for a connection.

use std::{net::SocketAddr, sync::Arc};

use anet_proto::{FrameCodec, Tag};
use bytes::{Buf, Bytes, BytesMut};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Mutex,
};

/// One connection per caller.
#[derive(Clone)]
pub(crate) struct Pool {
    conns: Arc<Vec<Arc<Mutex<TcpStream>>>>,
}

impl Pool {
    pub(crate) async fn connect(addr: SocketAddr, size: usize) -> Pool {
        let mut conns = Vec::with_capacity(size);
        for _ in 0..size.max(1) {
            let stream = TcpStream::connect(addr).await.expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            conns.push(Arc::new(Mutex::new(stream)));
        }
        Pool {
            conns: Arc::new(conns),
        }
    }

    pub(crate) fn call(
        &self,
        worker: usize,
        payload: Bytes,
    ) -> impl std::future::Future<Output = Result<Bytes, String>> + Send + 'static {
        let conn = self.conns[worker % self.conns.len()].clone();
        roundtrip(conn, payload)
    }
}

/// Writes one frame and reads one back on the caller's own connection.
async fn roundtrip(conn: Arc<Mutex<TcpStream>>, payload: Bytes) -> Result<Bytes, String> {
    let mut out = BytesMut::with_capacity(6 + payload.len());
    FrameCodec::new()
        .encode_parts(&Tag::from_u32(1), &payload, &mut out)
        .map_err(|e| e.to_string())?;
    let mut stream = conn.lock().await;
    stream.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut head = [0u8; 2];
    stream
        .read_exact(&mut head)
        .await
        .map_err(|e| e.to_string())?;
    let len = usize::from(u16::from_be_bytes(head));
    let mut body = BytesMut::zeroed(len);
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    if len < 4 {
        return Err("short frame".into());
    }
    body.advance(4);
    Ok(body.freeze())
}

//! `floor`: the least-overhead correct client with anet's calling model, written
//! by hand with no tower. Each caller awaits its own oneshot; one writer task per
//! connection assigns tags from a free list and writes every queued request in one
//! buffer; one reader task completes requests through a tag-indexed table.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anet_proto::{FrameCodec, Tag};
use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::{mpsc, oneshot},
};
use tokio_util::codec::Decoder;

type Waiter = oneshot::Sender<Bytes>;

/// Tag-indexed table of waiting callers.
#[derive(Default)]
struct Table {
    slots: Vec<Option<Waiter>>,
    free: Vec<u32>,
}

/// A floor client over one connection.
#[derive(Clone)]
pub(crate) struct Floor {
    tx: mpsc::UnboundedSender<(Bytes, Waiter)>,
}

impl Floor {
    pub(crate) async fn connect(addr: SocketAddr) -> Floor {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (read, mut write) = stream.into_split();
        let table = Arc::new(Mutex::new(Table::default()));
        let (tx, mut rx) = mpsc::unbounded_channel::<(Bytes, Waiter)>();
        let codec = FrameCodec::new();
        let writer_table = table.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 * 1024);
            while let Some(first) = rx.recv().await {
                let mut next = Some(first);
                {
                    let mut t = writer_table.lock().expect("table");
                    while let Some((payload, waiter)) = next.take().or_else(|| rx.try_recv().ok()) {
                        let tag = match t.free.pop() {
                            Some(tag) => {
                                t.slots[tag as usize] = Some(waiter);
                                tag
                            }
                            None => {
                                t.slots.push(Some(waiter));
                                (t.slots.len() - 1) as u32
                            }
                        };
                        codec
                            .encode_parts(&Tag::from_u32(tag), &payload, &mut buf)
                            .expect("encode");
                        if buf.len() >= 64 * 1024 {
                            break;
                        }
                    }
                }
                if write.write_all(&buf).await.is_err() {
                    return;
                }
                buf.clear();
            }
        });
        tokio::spawn(async move {
            // Read whatever arrived, decode every frame in it, and complete them
            // all under one lock.
            let mut read = read;
            let mut decoder = FrameCodec::new();
            let mut inbuf = BytesMut::with_capacity(64 * 1024);
            let mut ready = Vec::with_capacity(1024);
            loop {
                match read.read_buf(&mut inbuf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                while let Ok(Some(frame)) = decoder.decode(&mut inbuf) {
                    ready.push(frame);
                }
                let mut t = table.lock().expect("table");
                let waiters: Vec<_> = ready
                    .drain(..)
                    .filter_map(|frame| {
                        let tag = u32::from_be_bytes(frame.tag.as_bytes().try_into().ok()?);
                        let waiter = t.slots.get_mut(tag as usize).and_then(Option::take)?;
                        t.free.push(tag);
                        Some((waiter, frame.payload))
                    })
                    .collect();
                drop(t);
                for (waiter, payload) in waiters {
                    let _ = waiter.send(payload);
                }
            }
        });
        Floor { tx }
    }

    pub(crate) fn call(&self, payload: Bytes) -> FloorCall {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send((payload, tx));
        FloorCall { rx }
    }
}

/// The floor's per-call future: the caller's oneshot.
pub(crate) struct FloorCall {
    rx: oneshot::Receiver<Bytes>,
}

impl std::future::Future for FloorCall {
    type Output = Result<Bytes, String>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.map_err(|_| "connection lost".to_owned()))
    }
}

//! `tokio-tower`: tokio-tower's multiplex client over the same protocol, shared
//! between callers through a tower `Buffer` (the nearest Rust peer).

use std::{net::SocketAddr, pin::Pin};

use anet_proto::{Frame, FrameCodec, Tag};
use bytes::Bytes;
use tokio::net::TcpStream;
use tokio_tower::multiplex::{Client, MultiplexTransport, TagStore};
use tower::{BoxError, Service, ServiceExt, buffer::Buffer};

/// Numbers requests with a wrapping counter.
pub(crate) struct Tagger(u32);

impl TagStore<Frame, Frame> for Tagger {
    type Tag = u32;

    fn assign_tag(mut self: Pin<&mut Self>, request: &mut Frame) -> u32 {
        self.0 = self.0.wrapping_add(1);
        request.tag = Tag::from_u32(self.0);
        self.0
    }

    fn finish_tag(self: Pin<&mut Self>, response: &Frame) -> u32 {
        u32::from_be_bytes(response.tag.as_bytes().try_into().unwrap_or_default())
    }
}

type Peer = Buffer<
    Frame,
    <Client<
        MultiplexTransport<tokio_util::codec::Framed<TcpStream, FrameCodec>, Tagger>,
        BoxError,
        Frame,
    > as Service<Frame>>::Future,
>;

/// The future of one tokio-tower call.
pub(crate) type TokioTowerCall = futures_util::future::Map<
    tower::util::Oneshot<Peer, Frame>,
    fn(Result<Frame, BoxError>) -> Result<Bytes, String>,
>;

fn unframe(r: Result<Frame, BoxError>) -> Result<Bytes, String> {
    r.map(|f| f.payload).map_err(|e| e.to_string())
}

/// tokio-tower behind a `Buffer`.
#[derive(Clone)]
pub(crate) struct TokioTower {
    service: Peer,
}

impl TokioTower {
    pub(crate) async fn connect(addr: SocketAddr) -> TokioTower {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let framed = FrameCodec::builder().new_framed(stream);
        let transport = MultiplexTransport::new(framed, Tagger(0));
        let client: Client<_, BoxError, Frame> = Client::new(transport);
        TokioTower {
            service: Buffer::new(client, 1024),
        }
    }

    /// A named future (not an `async fn`), so that its `Send`-ness does not trip
    /// the compiler's higher-ranked lifetime inference.
    pub(crate) fn call(&self, payload: Bytes) -> TokioTowerCall {
        use futures_util::FutureExt;
        let frame = Frame::new(Tag::from_u32(0), payload);
        self.service
            .clone()
            .oneshot(frame)
            .map(unframe as fn(_) -> _)
    }
}

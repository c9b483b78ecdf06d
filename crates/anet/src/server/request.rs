//! What a server's service receives.

use std::net::SocketAddr;

use bytes::Bytes;

/// One request as the server's service sees it: the payload (the frame body after
/// the tag, shared with the read buffer, not copied) and where it came from. The
/// tag is kept by the server and echoed on the response.
#[derive(Clone, Debug)]
pub struct Request {
    payload: Bytes,
    peer: Option<SocketAddr>,
}

impl Request {
    /// A request carrying `payload` from `peer` (for testing services directly).
    pub fn new(payload: Bytes, peer: Option<SocketAddr>) -> Request {
        Request { payload, peer }
    }

    /// The request payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The payload, owned.
    pub fn into_payload(self) -> Bytes {
        self.payload
    }

    /// The client's address, when the connection is TCP.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }
}

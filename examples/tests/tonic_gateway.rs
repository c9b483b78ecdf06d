//! The tonic gateway of the `tonic_gateway` example, called by a real gRPC client
//! over loopback: every outcome is the documented status.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use anet::{
    Error, Kind,
    client::Client,
    server::{Request, Server},
};
use anet_examples::grpc;
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tower::service_fn;

/// A gateway in front of `backend`, with a 300 ms request deadline.
async fn gateway(backend: SocketAddr) -> SocketAddr {
    let client = Client::builder()
        .endpoint(backend)
        .request_timeout(Duration::from_millis(300))
        .build();
    grpc::serve(client).await.expect("serve").0
}

/// An anet backend that answers with `answer`.
async fn backend<F, Fut>(answer: F) -> SocketAddr
where
    F: FnMut(Request) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Bytes, Infallible>> + Send + 'static,
{
    let server = Server::builder()
        .bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let addr = server.local_addr();
    tokio::spawn(server.serve(service_fn(answer)));
    addr
}

/// A raw TCP backend: for each connection, reads one chunk, then does `then`.
async fn raw_backend(then: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                if socket.read(&mut buf).await.unwrap_or(0) > 0 {
                    let _ = socket.write_all(then).await;
                }
                // Dropped: the connection closes.
            });
        }
    });
    addr
}

/// Calls the gateway, bounded in time, and returns the status code.
async fn code_of(addr: SocketAddr, command: &[u8]) -> Code {
    let outcome = tokio::time::timeout(Duration::from_secs(10), grpc::forward(addr, command))
        .await
        .expect("the gateway answers");
    match outcome {
        Ok(reply) => panic!("expected a failure, got {reply:?}"),
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_is_forwarded_and_its_reply_returned() {
    let addr = gateway(
        backend(|req: Request| async move { Ok(Bytes::from(req.payload().to_ascii_uppercase())) })
            .await,
    )
    .await;
    for command in [&b"nc"[..], b"payment 42", b""] {
        let reply = grpc::forward(addr, command).await.expect("a reply");
        assert_eq!(reply, command.to_ascii_uppercase());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_over_the_maximum_frame_is_invalid_argument() {
    let addr = gateway(backend(|req: Request| async move { Ok(req.into_payload()) }).await).await;
    assert_eq!(
        code_of(addr, &vec![b'x'; 70_000]).await,
        Code::InvalidArgument
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_answering_is_deadline_exceeded() {
    let addr =
        gateway(backend(|_: Request| std::future::pending::<Result<Bytes, Infallible>>()).await)
            .await;
    assert_eq!(code_of(addr, b"nc").await, Code::DeadlineExceeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_is_down_is_unavailable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    assert_eq!(
        code_of(gateway(closed).await, b"nc").await,
        Code::Unavailable
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_breaks_the_protocol_is_internal() {
    // A frame whose body (1 byte) is shorter than the 4-byte tag.
    let addr = gateway(raw_backend(&[0x00, 0x01, 0xff]).await).await;
    assert_eq!(code_of(addr, b"nc").await, Code::Internal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_drops_the_connection_mid_request_is_unavailable() {
    let addr = gateway(raw_backend(&[]).await).await;
    assert_eq!(code_of(addr, b"nc").await, Code::Unavailable);
}

/// The gateway's method answers every kind with anet's one mapping
/// (`From<anet::Error> for tonic::Status`, `Kind::grpc_code`, whose documented
/// table anet's own tests check), the cause in the message.
#[test]
fn every_error_kind_has_its_documented_grpc_code() {
    for &kind in Kind::all() {
        let status = tonic::Status::from(Error::with_source(kind, "why"));
        assert_eq!(status.code(), kind.grpc_code(), "{kind}");
        assert!(status.message().ends_with(": why"), "{status:?}");
    }
}

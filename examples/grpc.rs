//! The tonic gateway of the `tonic_gateway` example: the gRPC method
//! `anet.gateway.Gateway/Forward` sends its command to a binary backend through a
//! shared [`anet::client::Client`] and returns the reply; a failure becomes the
//! gRPC status of [`anet::status`] (`From<anet::Error> for tonic::Status`).

use std::{net::SocketAddr, time::Duration};

use anet::client::Client;
use tonic::{Request, Response, Status, transport::server::TcpIncoming};
use tower::{ServiceBuilder, limit::GlobalConcurrencyLimitLayer};

/// The code generated from `proto/gateway.proto` (by `build.rs`, with protox).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("anet.gateway");
}

use proto::{
    ForwardReply, ForwardRequest,
    gateway_client::GatewayClient,
    gateway_server::{Gateway, GatewayServer},
};

/// The gRPC service: one shared anet client (cheap to clone, safe to share).
#[derive(Clone, Debug)]
pub struct Forwarder {
    client: Client,
}

impl Forwarder {
    /// A forwarder over `client`.
    pub fn new(client: Client) -> Forwarder {
        Forwarder { client }
    }
}

#[tonic::async_trait]
impl Gateway for Forwarder {
    async fn forward(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardReply>, Status> {
        let reply = self.client.call(request.into_inner().command).await?;
        Ok(Response::new(ForwardReply { reply }))
    }
}

/// Requests the gateway serves at once, over all its HTTP/2 connections; past
/// that they wait in tonic's server (and each request's anet deadline still
/// applies once it reaches the client).
pub const GATEWAY_CONCURRENCY: usize = 1024;

/// Serves the gateway on a fresh `127.0.0.1` port in front of `client`, until
/// the returned task is aborted or the process ends; returns its address.
///
/// The gateway's own tower stack sits in front of the method: tonic's
/// per-connection concurrency limit with load shedding (a connection past 64
/// requests in flight is answered `RESOURCE_EXHAUSTED` at once), a global
/// concurrency limit, and a 5 s handler timeout as a last resort behind anet's
/// own request deadline.
pub async fn serve(client: Client) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let incoming = TcpIncoming::bind("127.0.0.1:0".parse().expect("a valid address"))?;
    let addr = incoming.local_addr()?;
    let router = tonic::transport::Server::builder()
        .concurrency_limit_per_connection(64)
        .load_shed(true)
        .timeout(Duration::from_secs(5))
        .layer(ServiceBuilder::new().layer(GlobalConcurrencyLimitLayer::new(GATEWAY_CONCURRENCY)))
        .add_service(GatewayServer::new(Forwarder::new(client)));
    let task = tokio::spawn(async move {
        if let Err(e) = router.serve_with_incoming(incoming).await {
            eprintln!("gateway stopped: {e}");
        }
    });
    Ok((addr, task))
}

/// Calls `Forward` on the gateway at `addr` with `command`, as a gRPC client
/// would; returns the reply or the status.
pub async fn forward(addr: SocketAddr, command: &[u8]) -> Result<Vec<u8>, Status> {
    let mut client = GatewayClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| Status::unavailable(format!("gateway unreachable: {e}")))?;
    let reply = client
        .forward(ForwardRequest {
            command: command.to_vec().into(),
        })
        .await?;
    Ok(reply.into_inner().reply.to_vec())
}

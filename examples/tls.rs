//! anet over TLS: a server behind a rustls acceptor (each accepted TLS stream is
//! served with `Builder::serve_connection`) and a client whose connector dials TCP
//! and then does the TLS handshake (`ClientBuilder::connector`).
//!
//! The certificate is self-signed and made at run time (rcgen); the crypto
//! provider is ring. payShield and most switches accept TLS host connections the
//! same way: trust the device's CA, name the device as the server name.
//!
//! Run: `cargo run --example tls`. It sends five requests over TLS, then shows
//! that a client which does not trust the server's certificate gets no
//! connection (its requests fail `unavailable` or `connect`, never a hang), and
//! exits 0 only if both turn out as described.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anet::{
    Kind,
    client::Client,
    server::{Request, Server},
};
use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{
    TlsAcceptor, TlsConnector,
    rustls::{
        ClientConfig, RootCertStore, ServerConfig,
        crypto::{CryptoProvider, ring},
        pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName},
    },
};
use tower::service_fn;

/// The name in the server's certificate, and the one the client checks.
const SERVER_NAME: &str = "hsm.local";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let provider = Arc::new(ring::default_provider());

    // A self-signed certificate for the server.
    let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])?;
    let cert = certified.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        certified.signing_key.serialize_der(),
    ));

    let addr = serve_tls(provider.clone(), cert.clone(), key).await?;
    println!("anet server on {addr} behind TLS ({SERVER_NAME})");

    // A client that trusts the certificate.
    let client = tls_client(provider.clone(), addr, cert)?;
    for i in 0..5 {
        let request = Bytes::from(format!("request {i}"));
        let response = client.call(request.clone()).await?;
        println!(
            "request {:?} -> response {:?}",
            String::from_utf8_lossy(&request),
            String::from_utf8_lossy(&response)
        );
        anyhow::ensure!(response == request.to_ascii_uppercase(), "wrong response");
    }

    // A client that trusts another certificate: the handshake fails, so the
    // endpoint never comes up and requests fail fast.
    let stranger = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])?;
    let untrusting = tls_client(provider, addr, stranger.cert.der().clone())?;
    let outcome = tokio::time::timeout(
        Duration::from_secs(5),
        untrusting.call(Bytes::from_static(b"hello")),
    )
    .await?;
    match outcome {
        Err(e) if matches!(e.kind(), Kind::Unavailable | Kind::Connect) => {
            println!(
                "a client that does not trust the certificate -> {}: {e}",
                e.kind()
            );
        }
        other => anyhow::bail!("an untrusted server was used: {other:?}"),
    }
    Ok(())
}

/// Accepts TCP on a fresh loopback port, does the TLS handshake, and serves each
/// TLS stream with an upper-casing anet service.
async fn serve_tls(
    provider: Arc<CryptoProvider>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> anyhow::Result<SocketAddr> {
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // The server's limits and timeouts, applied to every TLS connection.
    let settings = Server::builder().first_frame_timeout(Some(Duration::from_secs(10)));
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A handshake that fails or stalls ends only this connection.
                let handshake = tokio::time::timeout(Duration::from_secs(5), acceptor.accept(tcp));
                let Ok(Ok(tls)) = handshake.await else { return };
                let service = service_fn(|req: Request| async move {
                    Ok::<_, Infallible>(Bytes::from(req.payload().to_ascii_uppercase()))
                });
                settings.serve_connection(tls, Some(peer), service).await;
            });
        }
    });
    Ok(addr)
}

/// A client of `addr` whose connections are TLS, trusting only `root`.
fn tls_client(
    provider: Arc<CryptoProvider>,
    addr: SocketAddr,
    root: CertificateDer<'static>,
) -> anyhow::Result<Client> {
    let mut roots = RootCertStore::empty();
    roots.add(root)?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(SERVER_NAME)?;
    // The connect timeout of the client bounds this whole step (TCP and TLS).
    let dial = service_fn(move |addr: SocketAddr| {
        let (connector, name) = (connector.clone(), name.clone());
        async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            connector.connect(name, tcp).await
        }
    });
    Ok(Client::builder()
        .endpoint(addr)
        .request_timeout(Duration::from_secs(2))
        .connector(dial)
        .build())
}

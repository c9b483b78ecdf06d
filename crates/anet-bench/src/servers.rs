//! The two servers every client is measured against, each on its own OS thread
//! with a current-thread runtime: `raw` (the least a server can do) and the anet
//! `Server` with an echo service.

use std::{convert::Infallible, net::SocketAddr};

use anet::server::{Request, Server};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};
use tower::service_fn;

fn on_own_thread<F, Fut>(name: &str, start: F) -> SocketAddr
where
    F: FnOnce(std::sync::mpsc::Sender<SocketAddr>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("server runtime");
            rt.block_on(start(tx));
        })
        .expect("server thread");
    rx.recv().expect("server address")
}

/// A neutral echo server: whatever bytes arrive go straight back. An echoed anet
/// frame is byte for byte the request frame, so this is a correct anet echo server
/// that does no framing work at all.
pub(crate) fn raw() -> SocketAddr {
    on_own_thread("raw-server", |tx| async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        tx.send(listener.local_addr().expect("addr")).expect("send");
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    })
}

/// The anet `Server` with an echo service and default settings.
pub(crate) fn anet() -> SocketAddr {
    on_own_thread("anet-server", |tx| async move {
        let server = Server::builder()
            .max_in_flight_per_connection(1024)
            .bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        tx.send(server.local_addr()).expect("send");
        let echo =
            service_fn(|req: Request| async move { Ok::<_, Infallible>(req.into_payload()) });
        let _ = server.serve(echo).await;
    })
}

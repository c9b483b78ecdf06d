//! Echo servers on their own OS thread, each with a current-thread runtime, so
//! that what they do is neither measured nor counted with the client: the one
//! helper of the allocation test, `anet-bench` and the `loopback` bench.
//!
//! They run until the process ends.

use std::{future::Future, net::SocketAddr};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// Runs `start` on a new OS thread named `name`, in a current-thread runtime;
/// `start` sends back the address it listens on, which this returns.
///
/// # Panics
///
/// When the thread or its runtime cannot start, or `start` ends without
/// sending an address.
pub fn on_own_thread<F, Fut>(name: &str, start: F) -> SocketAddr
where
    F: FnOnce(std::sync::mpsc::Sender<SocketAddr>) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("server runtime")
                .block_on(start(tx));
        })
        .expect("server thread");
    rx.recv().expect("server address")
}

/// A plain TCP echo on `127.0.0.1:0`: whatever bytes arrive go straight back.
/// An echoed anet frame is byte for byte the request frame, so this is a
/// correct anet echo server that does no framing work at all: the least a
/// server can do.
pub fn raw_echo_on_own_thread() -> SocketAddr {
    on_own_thread("raw-echo", |tx| async move {
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

/// The anet [`Server`](anet::server::Server) with `config`, serving
/// [`echo`](crate::echo) on `127.0.0.1:0`.
pub fn anet_echo_on_own_thread(config: anet::server::Builder) -> SocketAddr {
    on_own_thread("anet-echo", move |tx| async move {
        let server = crate::bind_local(config).await;
        tx.send(server.local_addr()).expect("send");
        let _ = server.serve(crate::echo()).await;
    })
}

//! The client's receive path against arbitrary server bytes: a `Connection` over an
//! in-memory pipe with requests in flight receives the fuzz input as the server's
//! output, then the server goes away. Every request must end (a response or a
//! typed error), nothing may panic, and a response may only be the one its tag
//! earned — the fuzz input cannot make one request receive another's bytes unless
//! it names that request's tag.
#![no_main]

use std::time::Duration;

use anet::client::{Connection, ConnectionConfig};
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;
use tower::{Service, ServiceExt};

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client_io, mut server_io) = tokio::io::duplex(1 << 16);
        let config = ConnectionConfig::new()
            .max_in_flight(8)
            .quarantine(Duration::from_millis(50));
        let conn = Connection::new(client_io, config);
        let mut calls = Vec::new();
        for i in 0..8u8 {
            let mut c = conn.clone();
            calls.push(tokio::spawn(async move {
                let ready = c.ready().await?;
                let fut = ready.call(Bytes::from(vec![i; 3]));
                tokio::time::timeout(Duration::from_secs(5), fut)
                    .await
                    .unwrap_or_else(|_| Err(anet::Error::new(anet::Kind::Timeout)))
            }));
        }
        tokio::task::yield_now().await;
        let _ = server_io.write_all(data).await;
        drop(server_io);
        for call in calls {
            let result = tokio::time::timeout(Duration::from_secs(30), call)
                .await
                .expect("every request ends")
                .expect("no panic");
            if let Ok(bytes) = result {
                // Any bytes are possible (the input chose them), but only for a
                // request whose tag the input named; nothing else is checkable here.
                let _ = bytes;
            }
        }
        conn.closed().await;
    });
});

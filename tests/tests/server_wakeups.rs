//! Calls completed from other threads while the connection reuses their slots:
//! every request is answered (no wake-up lost, none misdelivered).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use anet::server::{Request, Server};
use anet_tests::{RawClient, start_server};
use bytes::Bytes;

const WITHIN: Duration = Duration::from_secs(10);

/// Waits for its answer from the completer thread, waking itself at its
/// first poll as well (so that its slot is often queued when the answer's
/// wake-up comes).
struct Answer {
    rx: tokio::sync::oneshot::Receiver<Bytes>,
    polled: bool,
}

impl Future for Answer {
    type Output = Result<Bytes, std::convert::Infallible>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let poll = Pin::new(&mut self.rx).poll(cx);
        if !std::mem::replace(&mut self.polled, true) {
            cx.waker().wake_by_ref();
        }
        match poll {
            Poll::Ready(answer) => Poll::Ready(Ok(answer.expect("completer alive"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_answered_from_another_thread_are_all_delivered() {
    let (work_tx, work_rx) =
        std::sync::mpsc::channel::<(tokio::sync::oneshot::Sender<Bytes>, Bytes)>();
    std::thread::spawn(move || {
        let mut n = 0u32;
        while let Ok((tx, payload)) = work_rx.recv() {
            n = n.wrapping_add(1);
            if n % 7 == 0 {
                std::thread::yield_now();
            }
            let _ = tx.send(payload);
        }
    });
    let service = tower::service_fn(move |req: Request| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        work_tx
            .send((tx, req.into_payload()))
            .expect("completer alive");
        Answer { rx, polled: false }
    });
    let server = start_server(Server::builder(), service).await;
    let mut client = RawClient::connect(server.addr).await;
    const WINDOW: u32 = 128;
    const TOTAL: u32 = 30_000;
    let mut sent = 0u32;
    let mut answered = 0u32;
    while answered < TOTAL {
        while sent < TOTAL && sent - answered < WINDOW {
            client.send(sent, &sent.to_be_bytes()).await;
            sent += 1;
        }
        let frame = client
            .recv(WITHIN)
            .await
            .unwrap_or_else(|| panic!("no answer after {answered} of {TOTAL}"));
        assert_eq!(frame.tag.as_bytes(), &frame.payload[..], "misdelivered");
        answered += 1;
    }
}

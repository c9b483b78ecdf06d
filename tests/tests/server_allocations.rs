//! Heap allocations per request on the server side, counted on the server's
//! own thread (the counter is per thread) while a plain blocking client on
//! another thread sends the requests.
//!
//! The budget is one allocation per request: the copy of each small payload out
//! of the read buffer, which is what lets a payload keep only its own bytes alive
//! (the memory budget's guarantee). The call itself (its future, its place among
//! the calls in flight) must allocate nothing once the connection is warm.
//!
//! Each figure is a slope: the allocations of a connection serving `LONG`
//! requests minus those of one serving `SHORT`, over the difference, so the
//! per-connection setup (buffers, the first slots) cancels out.
//!
//! The last test counts the heap bytes an idle connection keeps after it has
//! served a request (the same per-thread counter): the read buffer, the write
//! buffer and the call slots must have been given back.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use anet::server::{Request, Server};
use anet_tests::{Handler, echo};
use bytes::Bytes;
use tower::service_fn;

const SHORT: usize = 5_000;
const LONG: usize = 25_000;
const PAYLOAD: &[u8] = b"0123456789abcdef0123456789abcdef";

/// The allocations on this thread while `service` serves one connection of
/// `requests` requests, sent `window` at a time by a client on another thread.
fn allocations_for<S: Handler>(service: S, requests: usize, window: usize) -> u64 {
    measure_connection(service, requests, window).count_total
}

/// What the server's thread allocated while `service` served one connection
/// of `requests` requests, sent `window` at a time by a client on another
/// thread.
fn measure_connection<S: Handler>(
    service: S,
    requests: usize,
    window: usize,
) -> allocation_counter::AllocationInfo {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let client = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let mut batch = Vec::new();
        for tag in 0..window as u32 {
            batch.extend_from_slice(&((4 + PAYLOAD.len()) as u16).to_be_bytes());
            batch.extend_from_slice(&tag.to_be_bytes());
            batch.extend_from_slice(PAYLOAD);
        }
        let mut responses = vec![0; batch.len()];
        for _ in 0..requests / window {
            stream.write_all(&batch).expect("write");
            stream.read_exact(&mut responses).expect("read");
            // In completion order: compare as sets of (equal-sized) frames.
            let mut frames: Vec<&[u8]> = responses.chunks(6 + PAYLOAD.len()).collect();
            frames.sort();
            let mut sent: Vec<&[u8]> = batch.chunks(6 + PAYLOAD.len()).collect();
            sent.sort();
            assert_eq!(frames, sent, "responses do not echo the requests");
        }
    });
    let info = allocation_counter::measure(|| {
        rt.block_on(async {
            let (stream, peer) = listener.accept().await.expect("accept");
            Server::builder()
                .serve_connection(stream, Some(peer), service)
                .await;
        })
    });
    client.join().expect("client");
    info
}

fn per_request<S: Handler>(what: &str, service: S, window: usize) -> f64 {
    let short = allocations_for(service.clone(), SHORT, window);
    let long = allocations_for(service, LONG, window);
    let per_request = long.saturating_sub(short) as f64 / (LONG - SHORT) as f64;
    println!("{what}, {window} at a time: {per_request:.4} allocations per request");
    per_request
}

/// An echo whose answer is ready only after one yield to the runtime: each
/// call is pending once and must be kept among the calls in flight.
fn yielding_echo() -> impl Handler {
    service_fn(|req: Request| async move {
        tokio::task::yield_now().await;
        Ok::<Bytes, std::convert::Infallible>(req.into_payload())
    })
}

#[test]
fn a_handler_that_answers_at_once_costs_at_most_one_allocation_per_request() {
    for window in [1, 32] {
        let n = per_request("echo", echo(), window);
        assert!(n <= 1.0, "{n:.4} allocations per request (window {window})");
    }
}

#[test]
fn a_pending_handler_costs_at_most_one_allocation_per_request() {
    for window in [1, 32] {
        let n = per_request("yielding echo", yielding_echo(), window);
        assert!(n <= 1.0, "{n:.4} allocations per request (window {window})");
    }
}

/// An echo whose future wakes its own task as it answers, at its first poll
/// (legal, if unusual; a late wake-up of a finished call is the same): the
/// wake-up names a call slot that is free by the time the connection looks.
fn self_waking_echo() -> impl Handler {
    service_fn(|req: Request| {
        let mut payload = Some(req.into_payload());
        std::future::poll_fn(move |cx| {
            cx.waker().wake_by_ref();
            std::task::Poll::Ready(Ok::<Bytes, std::convert::Infallible>(
                payload.take().expect("polled once"),
            ))
        })
    })
}

#[test]
fn wake_ups_left_by_finished_calls_do_not_pile_up_on_a_busy_connection() {
    for window in [1, 32] {
        let short = measure_connection(self_waking_echo(), SHORT, window).bytes_max;
        let long = measure_connection(self_waking_echo(), LONG, window).bytes_max;
        let growth = long.saturating_sub(short);
        println!("self-waking echo, {window} at a time: peak heap {short} -> {long} bytes");
        // The peak must not depend on how many requests the connection served.
        assert!(
            growth < 16 * 1024,
            "peak heap grew by {growth} bytes from {SHORT} to {LONG} requests (window {window})"
        );
    }
}

const IDLE_CONNECTIONS: usize = 200;
/// Heap bytes an idle connection may keep (its task with the handler's state,
/// its registration, timer, shutdown signal and service); a 4 KiB read buffer
/// alone would exceed it.
const IDLE_HEAP_BUDGET: u64 = 2560;

#[test]
fn an_idle_connection_keeps_no_buffers_after_serving_a_request() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let server = rt.block_on(anet_tests::bind_local(Server::builder()));
    let addr = server.local_addr();
    let (served_tx, served_rx) = tokio::sync::oneshot::channel();
    let (close_tx, close_rx) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        let mut streams = Vec::new();
        for tag in 0..IDLE_CONNECTIONS as u32 {
            let mut stream = TcpStream::connect(addr).expect("connect");
            let mut frame = Vec::new();
            frame.extend_from_slice(&((4 + PAYLOAD.len()) as u16).to_be_bytes());
            frame.extend_from_slice(&tag.to_be_bytes());
            frame.extend_from_slice(PAYLOAD);
            stream.write_all(&frame).expect("write");
            let mut response = vec![0; frame.len()];
            stream.read_exact(&mut response).expect("read");
            assert_eq!(response, frame);
            streams.push(stream);
        }
        served_tx.send(()).expect("served");
        // Connected until the count is taken.
        let _ = close_rx.recv();
        drop(streams);
    });
    let info = allocation_counter::measure(|| {
        rt.block_on(async {
            tokio::spawn(server.serve(echo()));
            served_rx.await.expect("served");
            // Well past the 500 ms after which an idle connection frees its
            // spare memory.
            tokio::time::sleep(Duration::from_secs(2)).await;
        })
    });
    close_tx.send(()).expect("close");
    client.join().expect("client");
    let per_connection = info.bytes_current as f64 / IDLE_CONNECTIONS as f64;
    println!("heap bytes kept per idle connection: {per_connection:.0}");
    assert!(
        per_connection <= IDLE_HEAP_BUDGET as f64,
        "{per_connection:.0} heap bytes per idle connection exceeds {IDLE_HEAP_BUDGET}"
    );
}

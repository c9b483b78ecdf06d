//! Closing a client: in-flight requests finish within the grace, new ones are
//! refused, and dropping the last handle closes its connections.

use anet_tests::ready_call;
use std::time::Duration;

use anet::{Kind, client::Client};
use anet_tests::clients::delayed_echo_server as echo_server;
use anet_tests::eventually;
use bytes::Bytes;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_finishes_in_flight_requests_refuses_new_ones_and_releases_connections() {
    let server = echo_server(Duration::from_millis(200), None).await;
    let client = Client::builder()
        .endpoint(server.addr)
        .connections_per_endpoint(2, 2)
        .build();
    client.call(Bytes::from_static(b"warm")).await.expect("ok");
    let in_flight = tokio::spawn({
        let client = client.clone();
        async move { client.call(Bytes::from_static(b"in flight")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.close();
    let err = client
        .call(Bytes::from_static(b"late"))
        .await
        .expect_err("closed");
    assert_eq!(err.kind(), Kind::Closed);
    assert_eq!(
        in_flight.await.expect("join").expect("finished"),
        "in flight"
    );
    tokio::time::timeout(WAIT, client.closed())
        .await
        .expect("closed");
    assert_eq!(client.stats().connections(), 0);
    assert!(eventually(WAIT, || server.stats.snapshot().connections_open == 0).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_client_handle_closes_its_connections() {
    let server = echo_server(Duration::ZERO, None).await;
    let client = Client::builder()
        .endpoint(server.addr)
        .connections_per_endpoint(2, 2)
        .build();
    let clone = client.clone();
    client.call(Bytes::from_static(b"hi")).await.expect("ok");
    assert!(eventually(WAIT, || server.stats.snapshot().connections_open == 2).await);
    drop(client);
    // A clone still holds the pools open.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.stats.snapshot().connections_open, 2);
    clone.call(Bytes::from_static(b"still")).await.expect("ok");
    drop(clone);
    assert!(
        eventually(WAIT, || server.stats.snapshot().connections_open == 0).await,
        "connections closed once no handle is left"
    );
}

/// Requests already sent when the last handle goes still get their responses
/// (the close lets them finish within the grace), whether made through the
/// client or through its bare balancer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_when_the_last_handle_drops_are_answered() {
    let server = echo_server(Duration::from_millis(300), None).await;
    let client = Client::builder().endpoint(server.addr).build();
    client.call(Bytes::from_static(b"warm")).await.expect("ok");
    let mut balancer = client.balancer();
    let through_balancer = ready_call(&mut balancer, b"balancer").await;
    let through_client = client.call(Bytes::from_static(b"client"));
    drop(balancer);
    drop(client);
    let (a, b) = tokio::join!(through_balancer, through_client);
    assert_eq!(a.expect("answered"), "balancer");
    assert_eq!(b.expect("answered"), "client");
    assert!(
        eventually(WAIT, || server.stats.snapshot().connections_open == 0).await,
        "connections closed once no handle is left"
    );
}

//! Resource hygiene: closing a client and a server gives back every socket and
//! ends every task they spawned. Its own test binary, so that no other test opens
//! descriptors or spawns tasks meanwhile.

use anet_tests::clients::call_all_ok;
use std::{convert::Infallible, time::Duration};

use anet::{
    client::Client,
    server::{Request, Server},
};
use anet_tests::{eventually, start_server};
use tower::service_fn;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_a_client_and_a_server_leaks_no_socket_or_task() {
    let fds = || {
        std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count())
            .unwrap_or(0)
    };
    // Tasks alive on this test's runtime (the test body itself is not one).
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    // Warm up the runtime's own descriptors first.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let baseline = fds();
    let baseline_tasks = tasks();
    let echo = service_fn(|req: Request| async move { Ok::<_, Infallible>(req.into_payload()) });
    let mut server = start_server(Server::builder(), echo).await;
    let client = Client::builder()
        .endpoint(server.addr)
        .connections_per_endpoint(3, 3)
        .build();
    call_all_ok(&client, 2000).await;
    assert!(fds() > baseline, "sockets were open");
    // At least the server's accept loop, its three connections and the client's
    // three connection drivers.
    assert!(
        tasks() >= baseline_tasks + 7,
        "tasks were running: {}",
        tasks()
    );
    client.close();
    tokio::time::timeout(WAIT, client.closed())
        .await
        .expect("client closed");
    assert_eq!(client.stats().connections(), 0);
    assert!(eventually(WAIT, || server.stats.snapshot().connections_open == 0).await);
    server.shutdown().await.expect("join").expect("serve");
    assert!(
        eventually(WAIT, || fds() <= baseline).await,
        "descriptors back to baseline: {} > {baseline}",
        fds()
    );
    // Tasks end a little after the sockets they own close: poll, with a
    // generous limit.
    assert!(
        eventually(WAIT, || tasks() <= baseline_tasks).await,
        "tasks back to baseline: {} > {baseline_tasks}",
        tasks()
    );
}

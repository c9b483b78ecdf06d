//! Endpoints that change at run time: the `Endpoints` handle, DNS discovery, a
//! user's `Discover` stream, several owners of one address, draining
//! connections in the stats.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anet::{
    Kind,
    client::{Client, ConnectionConfig},
};
use anet_tests::clients::{closed_port, delayed_echo_server as echo_server};
use anet_tests::eventually;
use bytes::Bytes;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_added_at_run_time_gets_traffic_and_a_removed_one_drains() {
    let a = echo_server(Duration::ZERO, None).await;
    let b = echo_server(Duration::from_millis(200), None).await;
    let client = Client::builder().endpoint(a.addr).build();
    assert_eq!(
        client.call(Bytes::from_static(b"one")).await.expect("ok"),
        "one"
    );

    let endpoints = client.endpoints();
    assert!(endpoints.add(b.addr));
    assert!(!endpoints.add(b.addr), "already present");
    assert!(
        eventually(WAIT, || client
            .stats()
            .endpoint(b.addr)
            .is_some_and(|e| e.up))
        .await
    );
    // Slow requests land on b; remove it while they are in flight.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..50 {
        let client = client.clone();
        calls.spawn(async move { client.call(Bytes::from(format!("{i}"))).await });
    }
    assert!(eventually(WAIT, || b.stats.snapshot().requests > 0).await);
    assert!(endpoints.remove(b.addr));
    for result in calls.join_all().await {
        result.expect("in-flight requests on the removed endpoint finish");
    }
    let seen_by_b = b.stats.snapshot().requests;
    for i in 0..200 {
        client
            .call(Bytes::from(format!("after-{i}")))
            .await
            .expect("ok");
    }
    assert_eq!(
        b.stats.snapshot().requests,
        seen_by_b,
        "removed endpoint gets no new requests"
    );
    assert_eq!(endpoints.list(), vec![a.addr]);
    assert!(
        eventually(WAIT, || b.stats.snapshot().connections_open == 0).await,
        "its connections close after draining"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_follows_a_changing_answer() {
    let a = echo_server(Duration::ZERO, None).await;
    let b = echo_server(Duration::ZERO, None).await;
    let answer = Arc::new(Mutex::new(vec![a.addr]));
    let resolver = {
        let answer = answer.clone();
        move |_target: &str| -> anet::client::future::ResolveFuture {
            let addrs = answer.lock().expect("lock").clone();
            Box::pin(async move { Ok(addrs) })
        }
    };
    let client = Client::builder()
        .dns("backend.test:1500", Duration::from_millis(50))
        .resolver(resolver)
        .build();
    client
        .call(Bytes::from_static(b"a"))
        .await
        .expect("resolved to a");
    *answer.lock().expect("lock") = vec![b.addr];
    assert!(eventually(WAIT, || client.endpoints().list() == vec![b.addr]).await);
    let before = a.stats.snapshot().requests;
    for i in 0..50 {
        client.call(Bytes::from(format!("{i}"))).await.expect("ok");
    }
    assert_eq!(a.stats.snapshot().requests, before);
    assert!(b.stats.snapshot().requests >= 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_discovery_resolves_localhost_with_the_system_resolver() {
    let a = echo_server(Duration::ZERO, None).await;
    let client = Client::builder()
        .dns(
            format!("localhost:{}", a.addr.port()),
            Duration::from_secs(60),
        )
        .build();
    // localhost may also resolve to ::1, where nothing listens: that endpoint is
    // simply down.
    let reply = client.call(Bytes::from_static(b"dns")).await.expect("ok");
    assert_eq!(reply, "dns");
    assert!(client.endpoints().list().contains(&a.addr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_discover_stream_drives_the_endpoints() {
    use tower::discover::Change;
    let a = echo_server(Duration::ZERO, None).await;
    let (tx, rx) =
        tokio::sync::mpsc::unbounded_channel::<Result<Change<u32, SocketAddr>, Infallible>>();
    let discover =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let client = Client::builder().build_with_discover(Box::pin(discover));
    tx.send(Ok(Change::Insert(1, a.addr))).expect("send");
    client
        .call(Bytes::from_static(b"hi"))
        .await
        .expect("routed to a");
    tx.send(Ok(Change::Remove(1))).expect("send");
    assert!(eventually(WAIT, || client.endpoints().list().is_empty()).await);
    let err = client
        .call(Bytes::from_static(b"none"))
        .await
        .expect_err("no endpoint");
    assert_eq!(err.kind(), Kind::Unavailable);
}

/// A resolver that never answers must not keep a closed client open.
#[tokio::test(start_paused = true)]
async fn close_finishes_while_a_dns_resolution_hangs() {
    let resolver =
        |_: &str| -> anet::client::future::ResolveFuture { Box::pin(std::future::pending()) };
    let client = Client::builder()
        .dns("backend.test:1500", Duration::from_secs(1))
        .resolver(resolver)
        .build();
    // The request waits for the first answer, up to the connect timeout.
    let err = client
        .call(Bytes::from_static(b"x"))
        .await
        .expect_err("nothing resolved");
    assert_eq!(err.kind(), Kind::Unavailable);
    client.close();
    tokio::time::timeout(Duration::from_secs(10), client.closed())
        .await
        .expect("closed while the resolver hangs");
}

/// An address wanted by several owners (the static list or the `Endpoints`
/// handle, a DNS source, each key of a `Discover`) stays an endpoint until the
/// last of them lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_stays_until_every_source_that_lists_it_lets_go() {
    use tower::discover::Change;
    let [fixed, dns_only, shared, keyed, sentinel] = std::array::from_fn(|_| closed_port());
    let answer = Arc::new(Mutex::new(vec![fixed, dns_only, shared]));
    let resolver = {
        let answer = answer.clone();
        move |_: &str| -> anet::client::future::ResolveFuture {
            let addrs = answer.lock().expect("lock").clone();
            Box::pin(async move { Ok(addrs) })
        }
    };
    let (tx, rx) =
        tokio::sync::mpsc::unbounded_channel::<Result<Change<u32, SocketAddr>, Infallible>>();
    let discover =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let client = Client::builder()
        .endpoint(fixed)
        .dns("backend.test:1500", Duration::from_millis(10))
        .resolver(resolver)
        .build_with_discover(Box::pin(discover));
    let endpoints = client.endpoints();
    let listed = |addr| endpoints.list().contains(&addr);
    assert!(eventually(WAIT, || listed(shared)).await, "resolved");

    // Changes are applied in order: a sentinel inserted (or resolved) after a
    // change, once listed, shows that the change has been applied.
    let discover_sync = async |tx: &tokio::sync::mpsc::UnboundedSender<_>| {
        tx.send(Ok(Change::Insert(100, sentinel))).expect("send");
        assert!(eventually(WAIT, || endpoints.list().contains(&sentinel)).await);
        tx.send(Ok(Change::Remove(100))).expect("send");
        assert!(eventually(WAIT, || !endpoints.list().contains(&sentinel)).await);
    };

    // Two Discover keys on one address: removing one key keeps it.
    tx.send(Ok(Change::Insert(1, keyed))).expect("send");
    tx.send(Ok(Change::Insert(2, keyed))).expect("send");
    tx.send(Ok(Change::Remove(1))).expect("send");
    discover_sync(&tx).await;
    assert!(listed(keyed), "key 2 still lists it");
    tx.send(Ok(Change::Remove(2))).expect("send");
    assert!(eventually(WAIT, || !listed(keyed)).await, "last key gone");

    // A Discover key and DNS on one address: the key's removal keeps it.
    tx.send(Ok(Change::Insert(3, shared))).expect("send");
    tx.send(Ok(Change::Remove(3))).expect("send");
    discover_sync(&tx).await;
    assert!(listed(shared), "DNS still lists it");

    // The handle's remove of an address only DNS added: not its to remove.
    assert!(!endpoints.remove(dns_only), "the handle never added it");
    assert!(listed(dns_only));
    // The handle adds it too; then DNS drops it (and `fixed`, also static).
    assert!(endpoints.add(dns_only));
    assert!(!endpoints.add(dns_only), "already the handle's");
    *answer.lock().expect("lock") = vec![shared, sentinel];
    assert!(eventually(WAIT, || listed(sentinel)).await);
    // The next answer is applied only after the previous one was, entirely.
    *answer.lock().expect("lock") = vec![shared];
    assert!(eventually(WAIT, || !listed(sentinel)).await);
    assert!(listed(fixed), "static: stays when DNS drops it");
    assert!(
        listed(dns_only),
        "added by the handle: stays when DNS drops it"
    );

    // Once the last owner lets go, the endpoint goes.
    assert!(endpoints.remove(fixed));
    assert!(endpoints.remove(dns_only));
    assert!(!listed(fixed) && !listed(dns_only));
    // DNS still lists `shared`; a key on it and the handle come and go.
    tx.send(Ok(Change::Insert(4, shared))).expect("send");
    assert!(endpoints.add(shared));
    assert!(endpoints.remove(shared));
    tx.send(Ok(Change::Remove(4))).expect("send");
    discover_sync(&tx).await;
    assert!(listed(shared), "DNS still lists it");
    *answer.lock().expect("lock") = vec![sentinel];
    assert!(
        eventually(WAIT, || !listed(shared)).await,
        "DNS let go last"
    );
    assert_eq!(endpoints.list(), vec![sentinel]);
}

/// A connection that drains (its endpoint removed, or the client closing) is
/// still counted, with its request in flight, until it has closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_connection_stays_in_the_stats_until_it_has_closed() {
    for close_client in [false, true] {
        let mut server = anet_tests::ManualServer::bind().await;
        let addr = server.addr;
        let client = Client::builder()
            .endpoint(addr)
            .request_timeout(WAIT)
            .connection(ConnectionConfig::new().close_grace(WAIT))
            .build();
        let call = tokio::spawn({
            let client = client.clone();
            async move { client.call(Bytes::from_static(b"held")).await }
        });
        let mut conn = server.accept().await;
        let held = conn.recv().await;
        let counted = |connections, in_flight| {
            client
                .stats()
                .endpoint(addr)
                .is_some_and(|e| e.connections == connections && e.in_flight == in_flight)
        };
        assert!(
            eventually(WAIT, || counted(1, 1)).await,
            "{:?}",
            client.stats()
        );
        if close_client {
            client.close();
        } else {
            assert!(client.endpoints().remove(addr));
        }
        // Draining: the request is still in flight, on a connection still open.
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(
                counted(1, 1),
                "close_client={close_client}: {:?}",
                client.stats()
            );
        }
        conn.reply(&held, b"released").await;
        assert_eq!(call.await.expect("join").expect("answered"), "released");
        assert!(
            eventually(WAIT, || client
                .stats()
                .endpoint(addr)
                .is_none_or(|e| e.connections == 0 && e.in_flight == 0))
            .await,
            "close_client={close_client}: {:?}",
            client.stats()
        );
        assert!(conn.client_closed(WAIT).await);
    }
}

/// Requests route on snapshots of the endpoint set and of each endpoint's
/// connections, read without a lock: endpoints added and removed over and over
/// while callers on two worker threads send must never cost a request, hand it
/// another's response, or leave a removed endpoint's connections open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_churning_under_load_from_two_threads_lose_and_misdeliver_nothing() {
    let a = echo_server(Duration::ZERO, None).await;
    let b = echo_server(Duration::ZERO, None).await;
    let c = echo_server(Duration::ZERO, None).await;
    let client = Client::builder().endpoint(a.addr).build();
    client.wait_connected(WAIT).await.expect("a is up");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..32 {
        let (client, stop) = (client.clone(), stop.clone());
        callers.spawn(async move {
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let request = Bytes::from(format!("{caller}-{sent}"));
                let response = client.call(request.clone()).await;
                assert_eq!(response.expect("every request is answered"), request);
                sent += 1;
            }
            sent
        });
    }
    let endpoints = client.endpoints();
    for round in 0..20 {
        let extra = if round % 2 == 0 { b.addr } else { c.addr };
        assert!(endpoints.add(extra));
        tokio::time::sleep(Duration::from_millis(15)).await;
        assert!(endpoints.remove(extra));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent: u64 = callers.join_all().await.into_iter().sum();
    assert!(sent > 0);
    assert!(
        b.stats.snapshot().requests + c.stats.snapshot().requests > 0,
        "the added endpoints took traffic while they were listed"
    );
    assert_eq!(endpoints.list(), vec![a.addr]);
    assert!(
        eventually(WAIT, || b.stats.snapshot().connections_open == 0
            && c.stats.snapshot().connections_open == 0)
        .await,
        "the removed endpoints' connections close"
    );
    assert!(
        eventually(WAIT, || client.stats().endpoints.len() == 1).await,
        "drained endpoints leave the stats"
    );
}

/// Endpoints removed over and over, 150 times in quick succession, while 64
/// callers on two worker threads send: a request routed on a snapshot taken
/// just before a removal reaches a connection the pool has already closed,
/// and must be refused as `NotSent` (retried on the endpoint that stays), not
/// as `Closed` (never retried). Before the fix, most runs lost a request so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_racing_endpoint_removals_are_retried_not_failed_closed() {
    let a = echo_server(Duration::ZERO, None).await;
    let b = echo_server(Duration::ZERO, None).await;
    let c = echo_server(Duration::ZERO, None).await;
    let client = Client::builder().endpoint(a.addr).build();
    client.wait_connected(WAIT).await.expect("a is up");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..64 {
        let (client, stop) = (client.clone(), stop.clone());
        callers.spawn(async move {
            let mut errors = Vec::new();
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let request = Bytes::from(format!("{caller}-{sent}"));
                match client.call(request.clone()).await {
                    Ok(response) => assert_eq!(response, request, "misdelivered"),
                    Err(error) => errors.push(error),
                }
                sent += 1;
            }
            errors
        });
    }
    let endpoints = client.endpoints();
    for round in 0..150 {
        let extra = if round % 2 == 0 { b.addr } else { c.addr };
        assert!(endpoints.add(extra));
        tokio::time::sleep(Duration::from_millis(4)).await;
        assert!(endpoints.remove(extra));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let errors: Vec<_> = callers.join_all().await.into_iter().flatten().collect();
    assert!(errors.is_empty(), "{} failed: {errors:?}", errors.len());
}

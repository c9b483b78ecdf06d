//! The tower compositions a user writes first, over real loopback TCP: each
//! must compile as written and behave as a tower user expects — readiness that
//! sheds instead of queueing, errors that downcast to [`anet::Error`] (and
//! tower's own `Elapsed`/`Overloaded` told apart from anet's), type erasure,
//! streams of calls, routing, filtering, optional layers, hedging and tower's
//! p2c over whole balancers.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use anet::{
    BoxError, Error, Kind,
    client::{Balancer, Client, ConnectionConfig, RetryPolicy},
};
use anet_tests::{Action, Scripted, eventually, start_scripted};
use bytes::Bytes;
use futures_util::StreamExt;
use tower::{
    Service, ServiceBuilder, ServiceExt,
    load_shed::error::Overloaded,
    timeout::{TimeoutLayer, error::Elapsed},
    util::{BoxCloneService, BoxCloneSyncService, BoxService},
};

const WAIT: Duration = Duration::from_secs(10);

/// A server that never answers a payload starting with `hold` and echoes
/// everything else at once.
async fn holding_server() -> Scripted {
    start_scripted(|_, frame| {
        if frame.payload.starts_with(b"hold") {
            Action::Ignore
        } else {
            Action::Echo(Duration::ZERO)
        }
    })
    .await
}

/// One connection with room for one request in flight, connected: a
/// `LoadShed` over the balancer sheds while the first connection is dialled
/// (the balancer is honestly pending then), so warm up first.
async fn one_slot_client(server: &Scripted) -> Client {
    let client = Client::builder()
        .endpoint(server.addr)
        .connections_per_endpoint(1, 1)
        .connection(ConnectionConfig::new().max_in_flight(1).held_tag_limit(4))
        .build();
    client.wait_connected(WAIT).await.expect("connected");
    client
}

/// Starts `svc.oneshot("hold")` in a task and waits until the server holds it.
async fn hold<S>(server: &Scripted, svc: S) -> tokio::task::JoinHandle<Result<Bytes, S::Error>>
where
    S: Service<Bytes, Response = Bytes> + Send + 'static,
    S::Error: Send + 'static,
    S::Future: Send,
{
    let before = server.counters.requests.load(SeqCst);
    let task = tokio::spawn(svc.oneshot(Bytes::from_static(b"hold")));
    assert!(
        eventually(WAIT, || server.counters.requests.load(SeqCst) > before).await,
        "the held request reached the server"
    );
    task
}

fn bytes(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

// ---- limits and readiness ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_shed_concurrency_limit_and_timeout_over_the_balancer_shed_when_every_window_is_full()
{
    let server = holding_server().await;
    let client = one_slot_client(&server).await;
    let stack = ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(8)
        .timeout(WAIT)
        .service(client.balancer());
    let held = hold(&server, stack.clone()).await;

    // `Overloaded` is what `LoadShed` returns instead of waiting: no clock
    // needed to tell "shed" from "queued".
    let error = tokio::time::timeout(WAIT, stack.clone().oneshot(bytes("next")))
        .await
        .expect("shed at once, not queued")
        .expect_err("every window is full");
    assert!(error.is::<Overloaded>(), "{error}");
    assert_eq!(Error::from_boxed(error).kind(), Kind::Overloaded);
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_shed_over_a_concurrency_limit_over_the_client_sheds_at_the_limit() {
    let server = holding_server().await;
    let client = Client::builder().endpoint(server.addr).build();
    let stack = ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(1)
        .service(client.clone());
    let held = hold(&server, stack.clone()).await;
    let error = tokio::time::timeout(WAIT, stack.clone().oneshot(bytes("next")))
        .await
        .expect("shed at once")
        .expect_err("the limit is taken");
    assert!(error.is::<Overloaded>(), "{error}");
    held.abort();
    let _ = held.await;
    // The limit's permit came back with the aborted call.
    let reply = tokio::time::timeout(WAIT, stack.oneshot(bytes("again")))
        .await
        .expect("answered")
        .expect("permit returned");
    assert_eq!(reply, "again");
}

/// Documented at `Client::poll_ready`: the client is ready while open and its
/// calls wait for room under their own deadline, so a bare `LoadShed` over it
/// never sheds (shedding belongs over the balancer, or at the client's limits).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_shed_directly_over_the_client_never_sheds_and_the_wait_keeps_the_deadline() {
    let server = holding_server().await;
    let client = Client::builder()
        .endpoint(server.addr)
        .connections_per_endpoint(1, 1)
        .connection(ConnectionConfig::new().max_in_flight(1).held_tag_limit(4))
        .request_timeout(Duration::from_millis(300))
        .build();
    client.wait_connected(WAIT).await.expect("connected");
    let shed = ServiceBuilder::new().load_shed().service(client.clone());
    let held = hold(&server, shed.clone()).await;
    let error = tokio::time::timeout(WAIT, shed.oneshot(bytes("next")))
        .await
        .expect("ends at the deadline")
        .expect_err("no room within the deadline");
    assert!(!error.is::<Overloaded>(), "{error}");
    assert_eq!(Error::from_boxed(error).kind(), Kind::Timeout);
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffer_in_front_of_load_shed_over_the_balancer_is_shared_by_tasks_and_sheds() {
    let server = holding_server().await;
    let client = one_slot_client(&server).await;
    let stack = ServiceBuilder::new()
        .buffer(16)
        .load_shed()
        .service(client.balancer());
    let held = hold(&server, stack.clone()).await;
    let tasks: Vec<_> = (0..4)
        .map(|_| tokio::spawn(stack.clone().oneshot(bytes("next"))))
        .collect();
    for task in tasks {
        let error = tokio::time::timeout(WAIT, task)
            .await
            .expect("shed, not queued")
            .expect("task")
            .expect_err("shed");
        assert_eq!(Error::from_boxed(error).kind(), Kind::Overloaded);
    }
    held.abort();
}

// ---- type erasure, oneshot, streams ---------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boxed_clone_services_erase_the_client_the_balancer_and_a_layered_stack() {
    let server = holding_server().await;
    let client = Client::builder().endpoint(server.addr).build();

    /// App state as users write it: an erased backend, shared by tasks.
    #[derive(Clone)]
    struct AppState {
        backend: BoxCloneSyncService<Bytes, Bytes, Error>,
    }
    let state = AppState {
        backend: BoxCloneSyncService::new(client.clone()),
    };
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let state = state.clone();
            tokio::spawn(async move { state.backend.oneshot(bytes("sync")).await })
        })
        .collect();
    for task in tasks {
        assert_eq!(task.await.expect("task").expect("reply"), "sync");
    }

    let balanced: BoxCloneService<Bytes, Bytes, Error> = BoxCloneService::new(client.balancer());
    assert_eq!(balanced.oneshot(bytes("clone")).await.unwrap(), "clone");

    let layered: BoxCloneSyncService<Bytes, Bytes, BoxError> = BoxCloneSyncService::new(
        ServiceBuilder::new()
            .timeout(WAIT)
            .concurrency_limit(4)
            .service(client.balancer()),
    );
    assert_eq!(layered.oneshot(bytes("layered")).await.unwrap(), "layered");

    let once: BoxService<Bytes, Bytes, Error> = BoxService::new(client.clone());
    assert_eq!(once.oneshot(bytes("box")).await.unwrap(), "box");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_all_streams_requests_through_the_client_and_the_balancer() {
    let server = holding_server().await;
    let client = Client::builder().endpoint(server.addr).build();
    let requests = || futures_util::stream::iter((0..100u32).map(|i| Bytes::from(i.to_string())));

    let ordered: Vec<Bytes> = client
        .clone()
        .call_all(requests())
        .map(|r| r.expect("reply"))
        .collect()
        .await;
    let expected: Vec<Bytes> = (0..100u32).map(|i| Bytes::from(i.to_string())).collect();
    assert_eq!(ordered, expected, "in request order");

    let mut unordered: Vec<Bytes> = client
        .balancer()
        .call_all(requests())
        .unordered()
        .map(|r| r.expect("reply"))
        .collect()
        .await;
    unordered.sort_by_key(|b| std::str::from_utf8(b).unwrap().parse::<u32>().unwrap());
    assert_eq!(unordered, expected);
}

// ---- mapping, routing, filtering, optional layers --------------------------

/// An application's own error, as `map_err` produces it.
#[derive(Debug, PartialEq)]
enum AppError {
    Backend(Kind),
}

impl From<Error> for AppError {
    fn from(e: Error) -> AppError {
        AppError::Backend(e.kind())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_request_map_response_and_map_err_turn_the_client_into_an_app_service() {
    let server = holding_server().await;
    let client = Client::builder().endpoint(server.addr).build();
    let app = ServiceBuilder::new()
        .map_err(AppError::from)
        .map_response(|b: Bytes| String::from_utf8_lossy(&b).into_owned())
        .map_request(|s: String| Bytes::from(s))
        .service(client);
    assert_eq!(app.clone().oneshot("hi".to_owned()).await.unwrap(), "hi");
    let too_big = "x".repeat(70_000);
    assert_eq!(
        app.oneshot(too_big).await.unwrap_err(),
        AppError::Backend(Kind::InvalidRequest)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_policy_sits_above_a_map_request() {
    let server = holding_server().await;
    let client = Client::builder().endpoint(server.addr).build();
    // The first call is refused before the wire (a custom layer's circuit).
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let flaky = tower::service_fn(move |req: Bytes| {
        let first = counted.fetch_add(1, SeqCst) == 0;
        let client = client.clone();
        async move {
            if first {
                return Err(Error::not_sent(Kind::Other, "circuit open"));
            }
            client.call(req).await
        }
    });
    let svc = ServiceBuilder::new()
        .retry(RetryPolicy::new(2))
        .map_request(|s: String| Bytes::from(s))
        .service(flaky);
    assert_eq!(svc.oneshot("retried".to_owned()).await.unwrap(), "retried");
    assert_eq!(calls.load(SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steer_routes_each_request_to_one_of_two_clients() {
    let a = start_scripted(|_, _| Action::Reply(Duration::ZERO, bytes("from a"))).await;
    let b = start_scripted(|_, _| Action::Reply(Duration::ZERO, bytes("from b"))).await;
    let clients = vec![
        Client::builder().endpoint(a.addr).build(),
        Client::builder().endpoint(b.addr).build(),
    ];
    let steer = tower::steer::Steer::new(clients, |req: &Bytes, _: &[Client]| {
        usize::from(!req.starts_with(b"a"))
    });
    assert_eq!(steer.clone().oneshot(bytes("a1")).await.unwrap(), "from a");
    assert_eq!(steer.clone().oneshot(bytes("b1")).await.unwrap(), "from b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_rejects_before_the_client_and_lets_anet_errors_through_boxed() {
    let server = holding_server().await;
    let client = Client::builder().endpoint(server.addr).build();
    let svc = ServiceBuilder::new()
        .filter(|req: Bytes| {
            if req.is_empty() {
                Err("empty request")
            } else {
                Ok(req)
            }
        })
        .service(client);
    assert_eq!(svc.clone().oneshot(bytes("ok")).await.unwrap(), "ok");
    let rejected = svc.clone().oneshot(Bytes::new()).await.unwrap_err();
    assert!(rejected.downcast_ref::<Error>().is_none());
    assert_eq!(rejected.to_string(), "empty request");
    let too_big = svc.oneshot(Bytes::from(vec![0; 70_000])).await.unwrap_err();
    let anet = too_big.downcast_ref::<Error>().expect("an anet::Error");
    assert_eq!(anet.kind(), Kind::InvalidRequest);
}

/// A stack whose timeout layer is optional, as `option_layer` builds it. tower's
/// `Either` needs one error type on both sides: the client's is boxed first.
fn with_optional_timeout(
    client: Client,
    timeout: Option<Duration>,
) -> impl Service<Bytes, Response = Bytes, Error = BoxError> + Clone {
    ServiceBuilder::new()
        .option_layer(timeout.map(TimeoutLayer::new))
        .map_err(BoxError::from)
        .service(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_timeout_layer_and_the_clients_own_deadline_are_told_apart() {
    let server = holding_server().await;
    let client = Client::builder()
        .endpoint(server.addr)
        // Far from the tower layer's 50 ms, so that a stalled runtime still
        // sees tower's timeout first.
        .request_timeout(Duration::from_secs(1))
        .build();

    // Present: tower's `Elapsed`, classified as a timeout.
    let svc = with_optional_timeout(client.clone(), Some(Duration::from_millis(50)));
    let error = svc.oneshot(bytes("hold")).await.unwrap_err();
    assert!(error.is::<Elapsed>(), "{error:?}");
    assert!(error.downcast_ref::<Error>().is_none());
    let classified = Error::from_boxed(error);
    assert_eq!(classified.kind(), Kind::Timeout);
    assert!(
        std::error::Error::source(&classified).is_some_and(|s| s.is::<Elapsed>()),
        "tower's layer stays visible as the source"
    );

    // Absent: the client's own deadline, an anet `Error`.
    let svc = with_optional_timeout(client.clone(), None);
    let error = svc.oneshot(bytes("hold")).await.unwrap_err();
    assert!(!error.is::<Elapsed>());
    let anet = error.downcast_ref::<Error>().expect("an anet::Error");
    assert_eq!(anet.kind(), Kind::Timeout);

    // Both ways, an answer passes through.
    let svc = with_optional_timeout(client, Some(WAIT));
    assert_eq!(svc.oneshot(bytes("fine")).await.unwrap(), "fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buffer_over_a_closed_balancer_fails_with_closed_through_its_wrapper() {
    let server = holding_server().await;
    let client = Client::builder().endpoint(server.addr).build();
    let buffered = ServiceBuilder::new().buffer(4).service(client.balancer());
    assert_eq!(buffered.clone().oneshot(bytes("x")).await.unwrap(), "x");
    client.close();
    for _ in 0..3 {
        let error = tokio::time::timeout(WAIT, buffered.clone().oneshot(bytes("y")))
            .await
            .expect("fails, never hangs")
            .expect_err("closed");
        // Not the anet error itself (as the `Client` docs say): the
        // buffer's own, with it as the source.
        assert!(error.downcast_ref::<Error>().is_none(), "{error:?}");
        assert_eq!(Error::from_boxed(error).kind(), Kind::Closed);
    }
}

// ---- hedging and balancing over balancers ----------------------------------

/// Hedge only what the caller declared idempotent (here: everything).
#[derive(Clone)]
struct Idempotent;

impl tower::hedge::Policy<Bytes> for Idempotent {
    fn clone_request(&self, req: &Bytes) -> Option<Bytes> {
        Some(req.clone())
    }
    fn can_retry(&self, _: &Bytes) -> bool {
        true
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedge_over_the_client_answers_from_the_second_copy_when_the_first_is_held() {
    // The first request is never answered; its hedged copy is echoed.
    let server = start_scripted(|n, _| {
        if n == 0 {
            Action::Ignore
        } else {
            Action::Echo(Duration::ZERO)
        }
    })
    .await;
    let client = Client::builder().endpoint(server.addr).build();
    let hedge = tower::hedge::Hedge::new_with_mock_latencies(
        client,
        Idempotent,
        10,
        0.5,
        Duration::from_secs(60),
        &[20; 20],
    );
    let reply = tokio::time::timeout(WAIT, hedge.oneshot(bytes("twice")))
        .await
        .expect("the hedge answered")
        .expect("reply");
    assert_eq!(reply, "twice");
    assert_eq!(server.counters.requests.load(SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn towers_p2c_balances_over_whole_balancers() {
    let a = start_scripted(|_, _| Action::Reply(Duration::ZERO, bytes("a"))).await;
    let b = start_scripted(|_, _| Action::Reply(Duration::ZERO, bytes("b"))).await;
    let balancers: Vec<Balancer> = [&a, &b]
        .iter()
        .map(|s| Client::builder().endpoint(s.addr).build().balancer())
        .collect();
    let mut p2c = tower::balance::p2c::Balance::new(tower::discover::ServiceList::new(balancers));
    let mut seen = std::collections::HashSet::new();
    for _ in 0..64 {
        let reply = tokio::time::timeout(WAIT, async { p2c.ready().await?.call(bytes("x")).await })
            .await
            .expect("answered")
            .expect("reply");
        seen.insert(reply);
    }
    assert_eq!(seen.len(), 2, "both clusters served: {seen:?}");
}

// ---- reconnecting one connection --------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn towers_reconnect_over_the_connector_dials_again_after_the_connection_is_lost() {
    // The first request's connection is closed by the server; later ones echo.
    let server = start_scripted(|n, _| {
        if n == 0 {
            Action::Close
        } else {
            Action::Echo(Duration::ZERO)
        }
    })
    .await;
    let mut reconnect =
        tower::reconnect::Reconnect::new(anet::client::Connector::new(), server.addr);
    let lost = tokio::time::timeout(WAIT, async {
        reconnect.ready().await?.call(bytes("first")).await
    })
    .await
    .expect("fails, never hangs")
    .expect_err("the server closed the connection");
    assert_eq!(Error::from_boxed(lost).kind(), Kind::ConnectionLost);

    let reply = tokio::time::timeout(WAIT, async {
        reconnect.ready().await?.call(bytes("second")).await
    })
    .await
    .expect("answered")
    .expect("a new connection");
    assert_eq!(reply, "second");
    assert_eq!(server.counters.connections.load(SeqCst), 2);
}

/// The measure itself, not only that p2c runs over it: the units in use over
/// every endpoint's connections, a ready handle's own reservation included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancers_load_counts_the_units_in_use_on_every_endpoint() {
    use tower::load::Load;

    let a = holding_server().await;
    let b = holding_server().await;
    let client = Client::builder().endpoints([a.addr, b.addr]).build();
    client.wait_connected(WAIT).await.expect("connected");
    let mut balancer = client.balancer();
    assert_eq!(balancer.load(), 0, "nothing in flight");

    let held: Vec<_> = (0..3)
        .map(|_| tokio::spawn(client.clone().oneshot(bytes("hold"))))
        .collect();
    let total = || a.counters.requests.load(SeqCst) + b.counters.requests.load(SeqCst);
    assert!(
        eventually(WAIT, || total() == 3).await,
        "held on the servers"
    );
    assert_eq!(
        balancer.load(),
        3,
        "three requests in flight over both endpoints"
    );
    balancer.ready().await.expect("room");
    assert_eq!(balancer.load(), 4, "and the unit this handle reserved");
    drop(balancer);
    assert_eq!(client.balancer().load(), 3, "the reservation went back");
    for task in held {
        task.abort();
    }
}

/// One cluster per balancer is the point of p2c over balancers: while a
/// whole cluster is down, its balancer is ready (its calls fail at once with
/// `Unavailable`, by design) with nothing in flight. Its load must not make
/// it the cheaper choice, or every request goes to the dead cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn towers_p2c_over_balancers_avoids_a_cluster_with_no_endpoint_up() {
    use tower::load::Load;

    let live = holding_server().await;
    let dead_addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr")
    };
    let live_client = Client::builder().endpoint(live.addr).build();
    live_client.wait_connected(WAIT).await.expect("connected");
    let dead_client = Client::builder().endpoint(dead_addr).build();
    // Known down: its balancer is ready and fails at once.
    let mut dead = dead_client.balancer();
    let error = tokio::time::timeout(WAIT, async { dead.ready().await?.call(bytes("x")).await })
        .await
        .expect("fails at once, never hangs")
        .expect_err("no endpoint up");
    assert_eq!(error.kind(), Kind::Unavailable);
    assert_eq!(
        dead.load(),
        usize::MAX,
        "a cluster that cannot take a request"
    );

    let mut p2c = tower::balance::p2c::Balance::new(tower::discover::ServiceList::new(vec![
        live_client.balancer(),
        dead_client.balancer(),
    ]));
    let mut failures = Vec::new();
    for _ in 0..32 {
        let result =
            tokio::time::timeout(WAIT, async { p2c.ready().await?.call(bytes("x")).await })
                .await
                .expect("answered, never hangs");
        match result {
            Ok(reply) => assert_eq!(reply, "x"),
            Err(e) => failures.push(Error::from_boxed(e).kind()),
        }
    }
    assert!(
        failures.is_empty(),
        "sent to the dead cluster: {failures:?}"
    );
}

/// As the `Balancer` docs say: while the first connection is still being
/// made, a `LoadShed` over the balancer sheds; once warmed up, it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_shed_over_the_balancer_sheds_until_the_first_connection_is_up() {
    let server = holding_server().await;
    let open = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = open.clone();
    let client = Client::builder()
        .endpoint(server.addr)
        .handshake(move |_| {
            let gate = gate.clone();
            async move {
                let _ = gate.acquire().await.map(|p| p.forget());
                Ok::<_, BoxError>(())
            }
        })
        .build();
    let shed = ServiceBuilder::new().load_shed().service(client.balancer());
    let error = tokio::time::timeout(WAIT, shed.clone().oneshot(bytes("early")))
        .await
        .expect("shed at once")
        .expect_err("no connection yet");
    assert!(error.is::<Overloaded>(), "{error}");

    open.add_permits(1);
    client.wait_connected(WAIT).await.expect("connected");
    assert_eq!(shed.oneshot(bytes("warm")).await.unwrap(), "warm");
}

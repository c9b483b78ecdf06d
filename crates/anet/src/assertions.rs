//! Compile-time checks that every public service, handle and future can cross
//! threads: spawned on a multi-threaded runtime, or held across an `.await` in a
//! task that is. A change that makes one of them `!Send` fails the build here,
//! not in a user's application.

#[cfg(feature = "client")]
const _: fn() = || {
    use crate::client::{
        Backoff, Balancer, Client, ClientBuilder, ClientStats, Connection, ConnectionConfig,
        ConnectionStats, Connector, EndpointStats, Endpoints, ErrorCounts, PoolConfig, RateLimit,
        RateLimitLayer, RetryBudget, RetryPolicy, SystemResolver, future,
    };

    fn send<T: Send>(_: &T) {}
    fn send_sync<T: Send + Sync>() {}

    // Services, handles, configuration.
    send_sync::<Client>();
    send_sync::<Balancer>();
    send_sync::<Connection>();
    send_sync::<Connector>();
    send_sync::<Endpoints>();
    send_sync::<ClientBuilder>();
    send_sync::<RetryPolicy>();
    send_sync::<RetryBudget>();
    send_sync::<RateLimitLayer>();
    send_sync::<RateLimit<Balancer>>();
    send_sync::<ConnectionConfig>();
    send_sync::<PoolConfig>();
    send_sync::<Backoff>();
    send_sync::<SystemResolver>();
    send_sync::<ClientStats>();
    send_sync::<EndpointStats>();
    send_sync::<ErrorCounts>();
    send_sync::<ConnectionStats>();
    send_sync::<crate::Error>();

    // Futures: `Send`; `Sync` where nothing inside is `!Sync` (a boxed
    // `dyn Future + Send` is not).
    fn futures_are_send() {
        fn send_only<T: Send>() {}
        send_only::<future::CallFuture>();
        send_only::<future::BalanceFuture>();
        send_only::<future::ConnectFuture>();
        send_only::<future::ResolveFuture>();
        send_sync::<future::ConnectionFuture>();
    }
    futures_are_send();

    // `async fn`s: their futures, as returned.
    fn async_fns(client: &Client, connection: &Connection, connector: &Connector) {
        send(&client.closed());
        send(&connection.closed());
        send(&connector.connect(([127, 0, 0, 1], 0).into()));
    }
    let _ = async_fns;
};

#[cfg(feature = "server")]
const _: fn() = || {
    use std::convert::Infallible;

    use bytes::Bytes;

    use crate::server::{Builder, Request, Server, ServerStats, StatsHandle};

    fn send<T: Send>(_: &T) {}
    fn send_sync<T: Send + Sync>() {}

    send_sync::<Server>();
    send_sync::<Builder>();
    send_sync::<StatsHandle>();
    send_sync::<ServerStats>();
    send_sync::<Request>();

    fn async_fns(server: Server, builder: Builder, io: tokio::io::DuplexStream) {
        let echo =
            tower::service_fn(
                |req: Request| async move { Ok::<Bytes, Infallible>(req.into_payload()) },
            );
        send(&builder.bind(([127, 0, 0, 1], 0).into()));
        send(&builder.serve_connection(io, None, echo));
        send(&server.serve(echo));
    }
    let _ = async_fns;
};

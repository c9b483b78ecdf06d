//! Compile-time checks that every public service, handle and future can cross
//! threads: spawned on a multi-threaded runtime, or held across an `.await` in a
//! task that is. A change that makes one of them `!Send` fails the build here,
//! not in a user's application.

/// `T` can be sent to another thread.
#[cfg(any(feature = "client", feature = "server"))]
fn send<T: Send>(_: &T) {}

/// `T` can be sent to and shared between threads.
#[cfg(any(feature = "client", feature = "server"))]
fn send_sync<T: Send + Sync>() {}

#[cfg(feature = "client")]
const _: fn() = || {
    use crate::client::{
        Backoff, Balancer, Client, ClientBuilder, ClientStats, Connection, ConnectionConfig,
        ConnectionStats, Connector, EndpointStats, Endpoints, ErrorCounts, MakePool, Pool,
        PoolConfig, RateLimit, RateLimitLayer, RetryBudget, RetryPolicy, SystemResolver, future,
    };

    // Services, handles, configuration, stats.
    send_sync::<(
        Client,
        Balancer,
        Connection,
        Connector,
        Endpoints,
        ClientBuilder,
        Pool,
        MakePool,
    )>();
    send_sync::<(
        RetryPolicy,
        RetryBudget,
        RateLimitLayer,
        RateLimit<Balancer>,
    )>();
    send_sync::<(ConnectionConfig, PoolConfig, Backoff, SystemResolver)>();
    send_sync::<(
        ClientStats,
        EndpointStats,
        ErrorCounts,
        ConnectionStats,
        crate::Error,
    )>();

    // Futures: `Send`; `Sync` where nothing inside is `!Sync` (a boxed
    // `dyn Future + Send` is not).
    fn futures(
        call: future::CallFuture,
        balance: future::BalanceFuture,
        connect: future::ConnectFuture,
        resolve: future::ResolveFuture,
        pool: future::PoolFuture,
        make_pool: future::MakePoolFuture,
    ) {
        send(&(call, balance, connect, resolve, pool, make_pool));
        send_sync::<future::ConnectionFuture>();
    }

    // `async fn`s: their futures, as returned.
    fn async_fns(client: &Client, connection: &Connection, connector: &Connector) {
        send(&(
            client.closed(),
            connection.closed(),
            connector.connect(([127, 0, 0, 1], 0).into()),
        ));
    }
    let _ = (futures, async_fns);
};

#[cfg(feature = "server")]
const _: fn() = || {
    use std::convert::Infallible;

    use bytes::Bytes;

    use crate::server::{Builder, Request, Server, ServerStats, StatsHandle};

    send_sync::<(Server, Builder, StatsHandle, ServerStats, Request)>();

    fn async_fns(server: Server, builder: Builder, io: tokio::io::DuplexStream) {
        let echo =
            tower::service_fn(
                |req: Request| async move { Ok::<Bytes, Infallible>(req.into_payload()) },
            );
        send(&(
            builder.bind(([127, 0, 0, 1], 0).into()),
            builder.serve_connection(io, None, echo),
            server.serve(echo),
        ));
    }
    let _ = async_fns;
};

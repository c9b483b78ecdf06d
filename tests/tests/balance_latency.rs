//! Latency-aware balancing (`LoadMeasure::PeakEwma`) on paused time: a slow
//! backend gets a small share, a new endpoint gets its fair share at once, a
//! backend that fails fast is not preferred, and one that was slow gets its
//! traffic back once it is fast again. Each scenario also runs with
//! `LoadMeasure::InFlight`, which it must tell apart.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use anet::client::{
    Classification, Client, ClientBuilder, LoadMeasure, PeakEwmaConfig, PoolConfig, RetryPolicy,
};
use anet_tests::{Action, MemoryConnector, ServerCounters, memory_scripted};
use bytes::Bytes;
use tokio::{io::AsyncWriteExt, time::Instant};

const FAST: Duration = Duration::from_millis(5);
const SLOW: Duration = Duration::from_millis(50);
const CALLERS: usize = 16;

/// Scripted in-memory backends, one per address `127.0.0.1:1..`, behind one
/// connector that dials each address's own backend.
struct Net {
    addrs: Vec<SocketAddr>,
    counters: Vec<Arc<ServerCounters>>,
    connectors: Arc<Vec<MemoryConnector>>,
}

type Script = Box<dyn Fn(usize, &anet_proto::Frame) -> Action + Send + Sync>;

impl Net {
    fn new(scripts: Vec<Script>) -> Net {
        let mut addrs = Vec::new();
        let mut counters = Vec::new();
        let mut connectors = Vec::new();
        for (i, script) in scripts.into_iter().enumerate() {
            let (connector, c) = memory_scripted(script);
            addrs.push(SocketAddr::from(([127, 0, 0, 1], i as u16 + 1)));
            counters.push(c);
            connectors.push(connector);
        }
        Net {
            addrs,
            counters,
            connectors: Arc::new(connectors),
        }
    }

    fn builder(&self, measure: LoadMeasure) -> ClientBuilder {
        let connectors = self.connectors.clone();
        Client::builder()
            .connector(tower::service_fn(move |addr: SocketAddr| {
                let mut connector = connectors[usize::from(addr.port()) - 1].clone();
                tower::Service::call(&mut connector, addr)
            }))
            .balance_load(measure)
            .retry(RetryPolicy::new(0))
    }

    fn requests(&self, i: usize) -> usize {
        self.counters[i].requests.load(SeqCst)
    }
}

fn echo_after(delay: Duration) -> Script {
    Box::new(move |_, _| Action::Echo(delay))
}

/// Runs `CALLERS` closed-loop callers for `time`; returns the calls answered.
async fn load(client: &Client, time: Duration) -> usize {
    let done = Arc::new(AtomicUsize::new(0));
    let end = Instant::now() + time;
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..CALLERS {
        let (client, done) = (client.clone(), done.clone());
        callers.spawn(async move {
            while Instant::now() < end {
                if client.call(Bytes::from_static(b"ping")).await.is_ok() {
                    done.fetch_add(1, SeqCst);
                }
            }
        });
    }
    while callers.join_next().await.is_some() {}
    done.load(SeqCst)
}

/// Two fast backends and one 50 ms one: requests sent to the slow one.
async fn slow_share(measure: LoadMeasure) -> (usize, usize) {
    let net = Net::new(vec![echo_after(FAST), echo_after(FAST), echo_after(SLOW)]);
    let client = net.builder(measure).endpoints(net.addrs.clone()).build();
    client
        .wait_connected(Duration::from_secs(5))
        .await
        .expect("connected");
    let answered = load(&client, Duration::from_secs(2)).await;
    (net.requests(2), answered)
}

#[tokio::test(start_paused = true)]
async fn a_slow_backend_gets_a_small_share_of_the_requests() {
    let (slow, answered) = slow_share(LoadMeasure::peak_ewma()).await;
    let (slow_in_flight, answered_in_flight) = slow_share(LoadMeasure::InFlight).await;
    // In-flight alone keeps about a third of the callers parked on the slow
    // backend; the peak-EWMA sends it only the requests of its first 50 ms.
    assert!(
        slow_in_flight > 100,
        "in-flight only: {slow_in_flight} of {answered_in_flight}"
    );
    assert!(slow < 40, "peak-EWMA: {slow} of {answered}");
    // Two fast backends at 5 ms serve 16 callers at 3200 calls a second.
    assert!(
        answered as f64 > 0.9 * 2.0 * 3200.0,
        "peak-EWMA answered {answered} (in-flight: {answered_in_flight})"
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_endpoint_gets_its_share_at_once_neither_starved_nor_flooded() {
    for measure in [LoadMeasure::peak_ewma(), LoadMeasure::InFlight] {
        let net = Net::new(vec![echo_after(FAST), echo_after(FAST), echo_after(FAST)]);
        let client = net
            .builder(measure)
            .endpoints(net.addrs[..2].to_vec())
            .build();
        client
            .wait_connected(Duration::from_secs(5))
            .await
            .expect("connected");
        let running = {
            let client = client.clone();
            tokio::spawn(async move { load(&client, Duration::from_secs(2)).await })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The two have estimates by now; the newcomer has none.
        let before: usize = (0..2).map(|i| net.requests(i)).sum();
        assert!(client.endpoints().add(net.addrs[2]));
        running.await.expect("load");
        let old: usize = (0..2).map(|i| net.requests(i)).sum::<usize>() - before;
        let new = net.requests(2);
        let share = new as f64 / (new + old) as f64;
        // Its fair share is a third (less the moment it takes to connect).
        assert!(
            (0.25..0.4).contains(&share),
            "{measure:?}: new endpoint got {new} of {} requests",
            new + old
        );
        // Not flooded: never much more than its share of the callers at once.
        let most = net.counters[2].max_in_flight.load(SeqCst);
        assert!(
            most <= CALLERS / 2,
            "{measure:?}: {most} requests at once on the new endpoint"
        );
    }
}

/// Two backends: one fails every request within 1 ms (classified as its
/// failure), one answers in 5 ms. Requests sent to the failing one.
async fn failing_share(measure: LoadMeasure) -> (usize, usize) {
    let failing: Script =
        Box::new(|_, _| Action::Reply(Duration::from_millis(1), Bytes::from_static(b"ERR")));
    let net = Net::new(vec![failing, echo_after(FAST)]);
    let client = net
        .builder(measure)
        .endpoints(net.addrs.clone())
        // Failure accrual would mark it down; the balancer alone is tested.
        .pool(PoolConfig::new().failure_threshold(u32::MAX))
        .classify(|reply| {
            if reply.as_ref() == b"ERR" {
                Classification::EndpointFailure
            } else {
                Classification::Success
            }
        })
        .build();
    client
        .wait_connected(Duration::from_secs(5))
        .await
        .expect("connected");
    load(&client, Duration::from_secs(2)).await;
    (net.requests(0), net.requests(1))
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_fails_fast_is_not_preferred() {
    let (failed, served) = failing_share(LoadMeasure::peak_ewma()).await;
    assert!(
        failed * 20 < served,
        "peak-EWMA: {failed} sent to the failing backend, {served} to the good one"
    );
    // In-flight alone prefers it: it never has anything in flight.
    let (failed, served) = failing_share(LoadMeasure::InFlight).await;
    assert!(
        failed > served,
        "in-flight only: {failed} sent to the failing backend, {served} to the good one"
    );
}

#[tokio::test(start_paused = true)]
async fn a_backend_that_was_slow_gets_its_traffic_back_once_it_is_fast() {
    let slow = Arc::new(AtomicBool::new(true));
    let s = slow.clone();
    // Far slower than the others ever cost (5 ms × 9 in flight), so that
    // only the decay brings it back, not the others filling up.
    let very_slow = Duration::from_millis(200);
    let recovering: Script =
        Box::new(move |_, _| Action::Echo(if s.load(SeqCst) { very_slow } else { FAST }));
    let net = Net::new(vec![echo_after(FAST), echo_after(FAST), recovering]);
    let decay = Duration::from_secs(1);
    let client = net
        .builder(LoadMeasure::PeakEwma(PeakEwmaConfig::new().decay(decay)))
        .endpoints(net.addrs.clone())
        .build();
    client
        .wait_connected(Duration::from_secs(5))
        .await
        .expect("connected");
    load(&client, Duration::from_secs(2)).await;
    let while_slow = net.requests(2);
    assert!(while_slow < 40, "{while_slow} sent while it was slow");
    slow.store(false, SeqCst);
    // 200 ms decays below the others' cost within two decay constants; the
    // first fast answers then bring the estimate down with them.
    load(&client, 4 * decay).await;
    let before: Vec<usize> = (0..3).map(|i| net.requests(i)).collect();
    load(&client, Duration::from_secs(2)).await;
    let got: Vec<usize> = (0..3).map(|i| net.requests(i) - before[i]).collect();
    let share = got[2] as f64 / got.iter().sum::<usize>() as f64;
    assert!(
        share > 0.2,
        "recovered backend's share {share:.3} ({got:?})"
    );
}

/// The estimate of a connection that goes idle decays on its own timer,
/// however its last answer falls against the driver's other timers. Here the
/// answer comes exactly when the abandoned-request sweep is due (the sweep
/// runs every quarter of the 2 s quarantine while requests wait; the server's
/// one task answers at 1 s on a timer set before the driver's), so the driver
/// sees both in one pass: the sweep finds nothing left waiting and schedules
/// no other, and the decay scheduled by that pass's answer must still arm the
/// timer, or the estimate stays at its peak for good (and the endpoint,
/// avoided for it, never gets the traffic that would bring it down).
#[tokio::test(start_paused = true)]
async fn an_idle_estimate_decays_when_its_last_answer_meets_the_sweep() {
    let answer = Duration::from_secs(1);
    let server = MemoryConnector::new(move |mut io| async move {
        let codec = anet_proto::FrameCodec::new();
        while let Ok(Some(frame)) = anet_proto::read_frame(&mut io, &codec).await {
            tokio::time::sleep(answer).await;
            let echo = anet_tests::encode(&frame.tag, &frame.payload);
            if io.write_all(&echo).await.is_err() {
                return;
            }
        }
    });
    let decay = Duration::from_secs(1);
    let client = Client::builder()
        .endpoint(anet_tests::memory_addr())
        .connector(server)
        .balance_load(LoadMeasure::PeakEwma(PeakEwmaConfig::new().decay(decay)))
        // No request deadline: its stale timer entry would wake the driver
        // (and arm the decay) at the deadline.
        .request_timeout(Duration::MAX)
        .build();
    client
        .wait_connected(Duration::from_secs(5))
        .await
        .expect("connected");
    client
        .call(Bytes::from_static(b"ping"))
        .await
        .expect("answered");
    let latency = || client.stats().endpoints[0].latency;
    let peak = latency().expect("an estimate after the answer");
    assert!(peak >= answer, "{peak:?}");
    tokio::time::sleep(10 * decay).await;
    let later = latency().expect("an estimate");
    assert!(
        later < peak / 100,
        "idle for 10 decay constants, the estimate is still {later:?} (peak {peak:?})"
    );
}

/// All three backends fail fast for a second (an outage behind them), then
/// all answer in 5 ms again: within one decay constant every backend has its
/// share back. Failures count against an estimate, but must not compound
/// pass after pass (a second of errors doubled it to its one-minute cap),
/// which kept one backend of three without traffic for a minute after the
/// outage while the others, which happened to answer first, took it all.
#[tokio::test(start_paused = true)]
async fn every_backend_gets_its_share_back_soon_after_an_outage_of_all() {
    let failing = Arc::new(AtomicBool::new(true));
    let script = |f: Arc<AtomicBool>| -> Script {
        Box::new(move |_, _| {
            if f.load(SeqCst) {
                Action::Reply(Duration::from_millis(1), Bytes::from_static(b"ERR"))
            } else {
                Action::Echo(FAST)
            }
        })
    };
    let net = Net::new((0..3).map(|_| script(failing.clone())).collect());
    let decay = Duration::from_secs(10);
    let client = net
        .builder(LoadMeasure::PeakEwma(PeakEwmaConfig::new().decay(decay)))
        .endpoints(net.addrs.clone())
        // Failure accrual would mark them down; the balancer alone is tested.
        .pool(PoolConfig::new().failure_threshold(u32::MAX))
        .classify(|reply| {
            if reply.as_ref() == b"ERR" {
                Classification::EndpointFailure
            } else {
                Classification::Success
            }
        })
        .build();
    client
        .wait_connected(Duration::from_secs(5))
        .await
        .expect("connected");
    load(&client, Duration::from_secs(1)).await;
    failing.store(false, SeqCst);
    load(&client, decay).await;
    let before: Vec<usize> = (0..3).map(|i| net.requests(i)).collect();
    load(&client, Duration::from_secs(5)).await;
    let got: Vec<usize> = (0..3).map(|i| net.requests(i) - before[i]).collect();
    let total: usize = got.iter().sum();
    let latency: Vec<_> = client.stats().endpoints.iter().map(|e| e.latency).collect();
    assert!(
        got.iter().all(|&n| n * 5 > total),
        "shares {got:?} of {total}, estimates {latency:?}"
    );
}

/// A fast backend, a 50 ms one and an endpoint that never connects: with
/// three endpoints every pick draws all three, so the two that are up must
/// still be tried cheaper first though one candidate is down.
#[tokio::test(start_paused = true)]
async fn a_down_endpoint_among_the_candidates_does_not_make_the_choice_random() {
    let net = Net::new(vec![echo_after(FAST), echo_after(SLOW)]);
    let connectors = net.connectors.clone();
    let down = SocketAddr::from(([127, 0, 0, 1], 3));
    let client = Client::builder()
        .connector(tower::service_fn(move |addr: SocketAddr| match connectors
            .get(usize::from(addr.port()) - 1)
        {
            Some(connector) => tower::Service::call(&mut connector.clone(), addr),
            None => std::future::ready(Err(std::io::Error::other("down"))),
        }))
        .balance_load(LoadMeasure::peak_ewma())
        .retry(RetryPolicy::new(0))
        .endpoints(net.addrs.iter().copied().chain([down]))
        .build();
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.stats().endpoints.iter().filter(|e| e.up).count() < 2 {
        assert!(Instant::now() < deadline, "the two backends never came up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let answered = load(&client, Duration::from_secs(2)).await;
    let slow = net.requests(1);
    // Random order between the two sent it about half (592 of 1141).
    assert!(
        slow * 20 < answered,
        "peak-EWMA: {slow} of {answered} to the slow backend"
    );
}

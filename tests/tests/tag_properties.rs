//! Property test of the tag invariant and of capacity returned by ownership: over
//! random tag formats, windows, held-tag limits and quarantines, random callers
//! that give up (before or after their request is written) against a server
//! that answers late, never (until the end) or twice. The server checks on the
//! wire that no tag is issued while a request that carried it is unanswered;
//! callers check that every response is their own; once everything is answered,
//! the connection's whole window is free again (or it retired, for its
//! held-tag limit).
//!
//! An in-memory pipe and paused time make each case deterministic and fast; the
//! socket paths are covered over loopback TCP in `tags.rs`.

use std::{
    collections::HashSet,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anet::client::{Connection, ConnectionConfig};
use anet_proto::{Builder, FrameCodec, TagFormat};
use anet_tests::encode_with;
use bytes::Bytes;
use futures_util::StreamExt;
use proptest::prelude::*;
use tokio::{io::AsyncWriteExt, sync::mpsc};
use tokio_util::codec::FramedRead;
use tower::{Service, ServiceExt};

/// What happens to one request.
#[derive(Clone, Debug)]
struct Plan {
    /// When the caller starts, in ms from the start.
    start_ms: u64,
    /// How long the caller waits for its answer before giving up (dropping it).
    patience_ms: u64,
    /// When the server answers after reading it; `None`: only at the very end.
    answer_ms: Option<u64>,
    /// The server sends the answer twice, back to back.
    duplicate: bool,
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        0u64..300,
        0u64..150,
        prop_oneof![12 => (0u64..100).prop_map(Some), 1 => Just(None)],
        proptest::bool::weighted(0.1),
    )
        .prop_map(|(start_ms, patience_ms, answer_ms, duplicate)| Plan {
            start_ms,
            patience_ms,
            answer_ms,
            duplicate,
        })
}

#[derive(Clone, Copy, Debug)]
struct Case {
    format: TagFormat,
    window: usize,
    held_limit: usize,
    quarantine: Duration,
}

fn case() -> impl Strategy<Value = Case> {
    let format = prop_oneof![
        Just(TagFormat::ascii(1)),
        Just(TagFormat::ascii(2)),
        Just(TagFormat::ascii(3)),
        Just(TagFormat::binary(1)),
        Just(TagFormat::binary(2)),
        Just(TagFormat::BINARY_U32),
    ];
    let quarantine = prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_millis(5)),
        Just(Duration::from_millis(50)),
        Just(Duration::MAX),
    ];
    (format, 1usize..=16, 1usize..=64, quarantine).prop_map(|(format, window, held, quarantine)| {
        let space = format.id_space().min(1 << 20) as usize;
        let window = window.min(space / 2).max(1);
        let held_limit = held.min(space - window).max(1);
        Case {
            format,
            window,
            held_limit,
            quarantine,
        }
    })
}

/// What the server saw.
#[derive(Debug, Default)]
struct Wire {
    /// Requests read whose tag was still held by an unanswered request.
    reissued: AtomicUsize,
}

async fn run_case(case: Case, plans: Vec<Plan>) -> Result<(), TestCaseError> {
    let frame = Builder::new().tag_format(case.format);
    let config = ConnectionConfig::new()
        .frame(frame)
        .max_in_flight(case.window)
        .held_tag_limit(case.held_limit)
        .quarantine(case.quarantine)
        .close_grace(Duration::from_millis(500));
    prop_assert!(config.validate().is_ok(), "{config:?}");
    let (client_io, server_io) = tokio::io::duplex(1 << 20);
    let conn = Connection::new(client_io, config);

    // The server: reads requests, answers each as planned, checks tags.
    let wire = Arc::new(Wire::default());
    let outstanding: Arc<Mutex<HashSet<Vec<u8>>>> = Arc::default();
    let never: Arc<Mutex<Vec<anet_proto::Frame>>> = Arc::default();
    let (read, mut write) = tokio::io::split(server_io);
    let (tx, mut rx) = mpsc::unbounded_channel::<(Vec<u8>, Bytes)>();
    let writer = tokio::spawn({
        let outstanding = outstanding.clone();
        async move {
            while let Some((tag, bytes)) = rx.recv().await {
                // Answered from the moment its bytes leave.
                outstanding.lock().expect("lock").remove(&tag);
                if write.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        }
    });
    let reader = tokio::spawn({
        let (wire, outstanding, never, tx) =
            (wire.clone(), outstanding.clone(), never.clone(), tx.clone());
        let plans = plans.clone();
        let codec: FrameCodec = frame.new_codec();
        async move {
            let mut frames = FramedRead::new(read, codec.clone());
            while let Some(Ok(request)) = frames.next().await {
                let tag = request.tag.as_bytes().to_vec();
                if !outstanding.lock().expect("lock").insert(tag.clone()) {
                    wire.reissued.fetch_add(1, Ordering::SeqCst);
                }
                let i: usize = std::str::from_utf8(&request.payload)
                    .expect("utf8")
                    .parse()
                    .expect("index");
                let plan = &plans[i];
                let Some(delay) = plan.answer_ms else {
                    never.lock().expect("lock").push(request);
                    continue;
                };
                let mut bytes = encode_with(&codec, &request.tag, &request.payload).to_vec();
                if plan.duplicate {
                    bytes.extend_from_slice(&bytes.clone());
                }
                let tx = tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let _ = tx.send((tag, Bytes::from(bytes)));
                });
            }
        }
    });

    // The callers.
    let mut callers = tokio::task::JoinSet::new();
    for (i, plan) in plans.iter().enumerate() {
        let mut conn = conn.clone();
        let plan = plan.clone();
        callers.spawn(async move {
            tokio::time::sleep(Duration::from_millis(plan.start_ms)).await;
            let payload = Bytes::from(i.to_string());
            let patience = Duration::from_millis(plan.patience_ms);
            let attempt = async {
                let fut = conn.ready().await?.call(payload.clone());
                fut.await
            };
            match tokio::time::timeout(patience, attempt).await {
                Ok(Ok(response)) => response == payload,
                // A typed error or giving up: both fine.
                Ok(Err(_)) | Err(_) => true,
            }
        });
    }
    let mut misdelivered = 0;
    while let Some(own) = callers.join_next().await {
        if !own.expect("caller does not panic") {
            misdelivered += 1;
        }
    }
    prop_assert_eq!(misdelivered, 0, "responses delivered to the wrong request");

    // The late answers come at last.
    let codec = frame.new_codec();
    for request in never.lock().expect("lock").drain(..) {
        let bytes = encode_with(&codec, &request.tag, &request.payload);
        let _ = tx.send((request.tag.as_bytes().to_vec(), bytes));
    }
    // Once everything is answered (and any quarantine or close grace has
    // passed) the whole window is free again, and no tag is held.
    let mut idle = false;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stats = conn.stats();
        if stats.in_flight == 0 && (stats.held_tags == 0 || conn.is_closed()) {
            idle = true;
            break;
        }
    }
    prop_assert!(idle, "capacity leaked: {:?}", conn.stats());
    if conn.is_closed() {
        // Only retirement closes it here (the server never breaks the framing
        // or the connection), and a retired connection gave its units back by
        // closing; check it retired for the reason it should have.
        let reason = conn.close_reason().expect("closed");
        let why = std::error::Error::source(&reason).map(ToString::to_string);
        prop_assert!(
            why.as_deref()
                .is_some_and(|w| w.starts_with("connection retired")),
            "closed for another reason: {reason:?} {why:?}"
        );
    } else {
        let mut all = Vec::new();
        for _ in 0..case.window {
            let mut c = conn.clone();
            tokio::time::timeout(Duration::from_secs(1), c.ready())
                .await
                .map_err(|_| TestCaseError::fail("window not whole"))?
                .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            all.push(c);
        }
    }
    prop_assert_eq!(
        wire.reissued.load(Ordering::SeqCst),
        0,
        "a held tag was issued again"
    );
    conn.close();
    drop(tx);
    reader.abort();
    writer.abort();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn no_tag_is_reissued_while_held_and_the_window_comes_back_whole(
        case in case(),
        plans in proptest::collection::vec(plan(), 1..80),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        rt.block_on(run_case(case, plans))?;
    }
}

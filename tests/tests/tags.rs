//! The tag invariant, checked from the bytes on the wire: on one connection a tag
//! value is never issued while an earlier request that carried it was written and
//! has not been answered, whatever the tag format and however many requests pass;
//! a late answer reaches nobody; held tags are bounded by retiring the connection.

use anet_tests::ready_call;
use std::{sync::atomic::Ordering, time::Duration};

use anet::{
    Kind,
    client::{Client, Connection, ConnectionConfig, Connector, RetryPolicy},
};
use anet_proto::{Builder, TagFormat};
use anet_tests::{Action, ManualServer, encode_with, eventually, start_scripted};
use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tower::{Service, ServiceExt};

const LIMIT: Duration = Duration::from_secs(20);

/// Abandons one request the server never answers (until the end), lets its
/// quarantine pass, then sends `rounds` requests one after the other. The server
/// checks every tag against the held one; if the held value comes back, it
/// first sends the late answer (so a reissued tag would misdeliver it) and then
/// the real one. Returns (tags reissued while held, responses misdelivered).
async fn held_tag_survives_rounds(
    format: TagFormat,
    window: usize,
    rounds: usize,
) -> (usize, usize) {
    let frame = Builder::new().tag_format(format);
    let mut server = ManualServer::bind().await;
    let config = ConnectionConfig::new()
        .frame(frame)
        .max_in_flight(window)
        .quarantine(Duration::from_millis(20));
    let addr = server.addr;
    let (conn, mut peer) = tokio::join!(
        async {
            Connector::new()
                .connection_config(config)
                .connect(addr)
                .await
                .expect("connect")
        },
        server.accept_with(frame.new_codec())
    );

    let mut abandoned = conn.clone();
    let fut = ready_call(&mut abandoned, b"abandoned").await;
    let held = peer.recv().await;
    assert_eq!(held.payload, "abandoned");
    drop(fut);
    // The quarantine ends: the window is whole again.
    assert!(
        eventually(LIMIT, || conn.stats().in_flight == 0).await,
        "{:?}",
        conn.stats()
    );

    let mut reissued = 0;
    let mut misdelivered = 0;
    let mut late_sent = false;
    let mut conn2 = conn.clone();
    for i in 0..rounds {
        let payload = Bytes::from(format!("request-{i}"));
        let fut = conn2.ready().await.expect("ready").call(payload.clone());
        let frame = peer.recv().await;
        assert_eq!(frame.payload, payload);
        if frame.tag == held.tag {
            reissued += 1;
            if !late_sent {
                peer.reply(&held, b"late answer").await;
                late_sent = true;
            }
        }
        peer.reply(&frame, &frame.payload).await;
        match tokio::time::timeout(LIMIT, fut).await.expect("answered") {
            Ok(response) if response == payload => {}
            Ok(_) => misdelivered += 1,
            Err(e) => panic!("request {i} failed: {e:?}"),
        }
    }
    if !late_sent {
        // The late answer comes at last: it must be dropped, not delivered.
        peer.reply(&held, b"late answer").await;
        let payload = Bytes::from_static(b"after the late answer");
        let fut = conn2.ready().await.expect("ready").call(payload.clone());
        let frame = peer.recv().await;
        peer.reply(&frame, &frame.payload).await;
        if fut.await.expect("answered") != payload {
            misdelivered += 1;
        }
        assert!(
            eventually(LIMIT, || conn.stats().late == 1).await,
            "{:?}",
            conn.stats()
        );
    }
    (reissued, misdelivered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_two_digit_ascii_tag_is_not_reissued_when_every_generation_wraps() {
    // 100 tags: a few hundred requests wrap every slot's generations many times.
    let result = held_tag_survives_rounds(TagFormat::ascii(2), 32, 1_000).await;
    assert_eq!(result, (0, 0), "(tags reissued while held, misdelivered)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_four_digit_ascii_tag_is_not_reissued_when_every_generation_wraps() {
    // The README's HSM setup: 10,000 tags, 64 in flight.
    let result = held_tag_survives_rounds(TagFormat::ascii(4), 64, 25_000).await;
    assert_eq!(result, (0, 0), "(tags reissued while held, misdelivered)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_one_byte_binary_tag_is_not_reissued_when_every_generation_wraps() {
    let result = held_tag_survives_rounds(TagFormat::binary(1), 16, 2_000).await;
    assert_eq!(result, (0, 0), "(tags reissued while held, misdelivered)");
}

#[tokio::test]
async fn a_window_and_held_limit_beyond_the_tag_space_are_refused_not_clamped() {
    let two_digits = ConnectionConfig::new().frame(Builder::new().tag_format(TagFormat::ascii(2)));
    assert_eq!(
        two_digits.effective_max_in_flight(),
        50,
        "the default fits the space"
    );
    assert!(two_digits.validate().is_ok());
    for bad in [
        two_digits.max_in_flight(100),
        two_digits.max_in_flight(64).held_tag_limit(40),
        two_digits.max_in_flight(0),
        two_digits.held_tag_limit(0),
    ] {
        let err = bad.validate().expect_err("refused");
        assert_eq!(err.kind(), Kind::InvalidConfig, "{bad:?}");
    }
    // Building a connection from it is refused too, before any dial.
    let err = Connector::new()
        .connection_config(two_digits.max_in_flight(100))
        .connect("127.0.0.1:9".parse().expect("addr"))
        .await
        .expect_err("refused");
    assert_eq!(err.kind(), Kind::InvalidConfig);
    let (io, _peer) = tokio::io::duplex(64);
    let err = Connection::try_new(io, two_digits.max_in_flight(100)).expect_err("refused");
    assert_eq!(err.kind(), Kind::InvalidConfig);
}

#[test]
#[should_panic(expected = "invalid connection configuration")]
fn building_a_client_whose_tags_cannot_cover_its_window_panics_with_the_reason() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let _client = Client::builder()
            .endpoint("127.0.0.1:9".parse().expect("addr"))
            .connection(
                ConnectionConfig::new()
                    .frame(Builder::new().tag_format(TagFormat::ascii(2)))
                    .max_in_flight(128),
            )
            .build();
    });
}

/// A server that never answers requests whose payload starts with `drop` and
/// echoes the rest; the client's held-tag limit is 4. After four dropped
/// requests the connection retires and the pool replaces it: requests keep
/// succeeding and none fails but the dropped ones. (That a held value is never
/// issued again on its connection is checked on the wire above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_tags_reaching_their_limit_retire_the_connection_and_nothing_else_fails() {
    let server = start_scripted(|_, frame| {
        if frame.payload.starts_with(b"drop") {
            Action::Ignore
        } else {
            Action::Echo(Duration::ZERO)
        }
    })
    .await;
    let client = Client::builder()
        .endpoint(server.addr)
        .connections_per_endpoint(1, 1)
        .connection(
            ConnectionConfig::new()
                .max_in_flight(16)
                .held_tag_limit(4)
                .quarantine(Duration::from_millis(20)),
        )
        .request_timeout(Duration::from_millis(100))
        .retry(RetryPolicy::new(0))
        .build();
    client.call(Bytes::from_static(b"warm")).await.expect("ok");

    let mut failures = Vec::new();
    for round in 0..4 {
        let err = client
            .call(Bytes::from(format!("drop-{round}")))
            .await
            .expect_err("never answered");
        assert_eq!(err.kind(), Kind::Timeout);
        for i in 0..50 {
            if let Err(e) = client.call(Bytes::from(format!("ok-{round}-{i}"))).await {
                failures.push(e.kind());
            }
        }
    }
    // The fourth held tag retired the first connection; its replacement serves.
    assert!(
        eventually(LIMIT, || server.counters.connections.load(Ordering::SeqCst)
            >= 2)
        .await,
        "the retired connection was replaced"
    );
    for i in 0..50 {
        if let Err(e) = client.call(Bytes::from(format!("after-{i}"))).await {
            failures.push(e.kind());
        }
    }
    assert!(failures.is_empty(), "requests failed: {failures:?}");
}

/// A server repeats its answer to the first request before answering each of
/// the next ones: every repeat is dropped (no slot holds that value: the slot
/// was freed, then reused with a new generation) until the value itself comes
/// back, after about as many requests as the 2-digit tag space holds.
#[tokio::test(start_paused = true)]
async fn a_repeated_answer_is_dropped_until_its_tag_value_comes_back() {
    let frame = Builder::new().tag_format(TagFormat::ascii(2));
    let (client_io, mut server_io) = tokio::io::duplex(1 << 16);
    let mut conn = Connection::new(client_io, ConnectionConfig::new().frame(frame));
    let codec = frame.new_codec();
    let mut first = None;
    let mut repeats = 0;
    for i in 0u64.. {
        let payload = Bytes::from(format!("request-{i}"));
        let fut = conn.ready().await.expect("ready").call(payload.clone());
        let request = anet_proto::read_frame(&mut server_io, &codec)
            .await
            .expect("read")
            .expect("frame");
        let first = first.get_or_insert_with(|| request.clone());
        if i > 0 {
            if request.tag == first.tag {
                break; // the value came back: a repeat now would look like its answer
            }
            server_io
                .write_all(&encode_with(&codec, &first.tag, &first.payload))
                .await
                .expect("write");
            repeats += 1;
        }
        server_io
            .write_all(&encode_with(&codec, &request.tag, &request.payload))
            .await
            .expect("write");
        assert_eq!(fut.await.expect("answered"), payload, "request {i}");
    }
    assert!(
        repeats >= 90,
        "the value came back after {repeats} requests"
    );
    assert!(
        eventually(LIMIT, || conn.stats().unknown_tags == repeats).await,
        "{:?}",
        conn.stats()
    );
}

/// A window smaller than the held-tag limit, filled with abandoned requests
/// under an endless quarantine: the connection could never take another
/// request, so it retires (and its owner replaces it) instead of waiting
/// forever.
#[tokio::test(start_paused = true)]
async fn a_window_full_of_quarantined_requests_retires_below_the_held_limit() {
    let config = ConnectionConfig::new()
        .max_in_flight(2)
        .held_tag_limit(8)
        .quarantine(Duration::MAX);
    let (client_io, mut server_io) = tokio::io::duplex(1 << 16);
    let mut conn = Connection::new(client_io, config);
    let codec = anet_proto::FrameCodec::new();
    for _ in 0..2 {
        let fut = ready_call(&mut conn, b"x").await;
        anet_proto::read_frame(&mut server_io, &codec)
            .await
            .expect("read")
            .expect("frame");
        drop(fut); // abandoned, never answered
    }
    let err = tokio::time::timeout(Duration::from_secs(3600), conn.ready())
        .await
        .expect("refused instead of waiting forever")
        .expect_err("retired");
    // Refused unsent, so that a request racing the retirement is retried on
    // another connection (a `Closed` would read as the client closing).
    assert_eq!(err.kind(), Kind::NotSent, "{err:?}");
    assert!(err.is_unsent(), "{err:?}");
    tokio::time::timeout(Duration::from_secs(60), conn.closed())
        .await
        .expect("closes within its grace");
}

#[tokio::test]
async fn windows_and_held_limits_past_two_to_the_twenty_are_refused_before_allocating() {
    for config in [
        ConnectionConfig::new().max_in_flight(1 << 31),
        ConnectionConfig::new().max_in_flight((1 << 20) + 1),
        ConnectionConfig::new().held_tag_limit((1 << 20) + 1),
    ] {
        assert_eq!(
            config.validate().expect_err("refused").kind(),
            Kind::InvalidConfig
        );
        let (io, _peer) = tokio::io::duplex(64);
        let err = Connection::try_new(io, config).expect_err("refused");
        assert_eq!(err.kind(), Kind::InvalidConfig);
    }
    assert!(
        ConnectionConfig::new()
            .max_in_flight(1 << 20)
            .validate()
            .is_ok()
    );
}

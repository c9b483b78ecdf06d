//! `anet proxy`, the real binary, between raw foreign clients and backends.

// These tests time a child process from a synchronous test: wall-clock time is
// what they measure, so std's Instant is the right clock here.
#![allow(clippy::disallowed_types)]

mod common;

use std::{
    collections::HashMap,
    io::Read,
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use common::{Daemon, Reordering, anet, closed_port, read_body, write_frame};

/// Sends every `(tag, payload)` on one connection, pipelined from another
/// thread, and returns the answers by tag (each tag must be unique in `requests`).
fn exchange(
    proxy: SocketAddr,
    length_width: usize,
    tag_width: usize,
    requests: Vec<(Vec<u8>, Vec<u8>)>,
) -> HashMap<Vec<u8>, Vec<u8>> {
    let mut conn = TcpStream::connect(proxy).expect("connect to the proxy");
    conn.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut writer = conn.try_clone().expect("clone");
    let n = requests.len();
    let sender = std::thread::spawn(move || {
        for (tag, payload) in requests {
            write_frame(&mut writer, length_width, &tag, &payload).expect("write");
        }
    });
    let mut answers = HashMap::new();
    for _ in 0..n {
        let body = read_body(&mut conn, length_width).expect("an answer for every request");
        let (tag, payload) = body.split_at(tag_width);
        let previous = answers.insert(tag.to_vec(), payload.to_vec());
        assert!(previous.is_none(), "two answers for tag {tag:?}");
    }
    sender.join().expect("sender");
    answers
}

/// `n` requests with tags `{prefix}NNN` and payloads naming the connection.
fn requests(prefix: u8, conn: usize, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let tag = format!("{}{i:03}", char::from(prefix)).into_bytes();
            (tag, format!("conn{conn}-request{i}").into_bytes())
        })
        .collect()
}

fn verify(sent: &[(Vec<u8>, Vec<u8>)], answers: &HashMap<Vec<u8>, Vec<u8>>) {
    assert_eq!(answers.len(), sent.len());
    for (tag, payload) in sent {
        let mut expected = b"re:".to_vec();
        expected.extend_from_slice(payload);
        assert_eq!(
            answers
                .get(tag)
                .map(|a| String::from_utf8_lossy(a).into_owned()),
            Some(String::from_utf8_lossy(&expected).into_owned()),
            "tag {:?}",
            String::from_utf8_lossy(tag)
        );
    }
}

#[test]
fn a_foreign_client_with_its_own_tags_gets_every_answer_through_a_reordering_backend() {
    let backend = Reordering::start(2, 4);
    let proxy = Daemon::start(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--connect",
        &backend.addr.to_string(),
        "--tag",
        "ascii:4",
        "--backend-tag",
        "binary:4",
    ]);
    // Letters, not digits: the client's tags are opaque to the proxy.
    let sent = requests(b'Q', 0, 500);
    let answers = exchange(proxy.addr, 2, 4, sent.clone());
    verify(&sent, &answers);
    assert!(backend.reordered() > 0, "the backend answered out of order");
}

#[test]
fn tags_that_collide_across_client_connections_share_one_backend_connection_safely() {
    let backend = Reordering::start(2, 4);
    let proxy = Daemon::start(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--connect",
        &backend.addr.to_string(),
        "--tag",
        "ascii:4",
        "--connections-per-endpoint",
        "1",
    ]);
    // Four clients, the same tags, different payloads, at the same time.
    let clients: Vec<_> = (0..4)
        .map(|conn| {
            let addr = proxy.addr;
            std::thread::spawn(move || {
                let sent = requests(b'0', conn, 300);
                let answers = exchange(addr, 2, 4, sent.clone());
                verify(&sent, &answers);
            })
        })
        .collect();
    for client in clients {
        client.join().expect("every answer verified");
    }
    assert_eq!(backend.connections(), 1, "four clients, one backend socket");
}

#[test]
fn proxy_keeps_serving_when_a_backend_is_killed_mid_run() {
    let mut first = Daemon::echo(&[]);
    let second = Daemon::echo(&[]);
    let proxy = Daemon::start(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--connect",
        &first.addr_string(),
        &second.addr_string(),
        "--timeout",
        "1s",
    ]);
    let bench = anet()
        .args(["bench", "--connect", &proxy.addr_string(), "--json"])
        .args(["-d", "3s", "-c", "16", "--timeout", "1s"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn bench");
    std::thread::sleep(Duration::from_secs(1));
    first.child.kill().expect("kill a backend");
    let out = bench.wait_with_output().expect("bench");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value =
        serde_json::from_str(text.lines().last().expect("a report")).expect("json");
    assert_eq!(report["mismatches"], 0, "{report}");
    let ok = report["ok"].as_u64().expect("ok");
    let requests = report["requests"].as_u64().expect("requests");
    // Only what was in flight on the killed backend may fail (each of the 16
    // callers can lose at most a request or two), not the rest of the run.
    assert!(ok > 0 && requests - ok <= 64, "{report}");

    // Afterwards everything goes to the survivor.
    for i in 0..5 {
        let out = anet()
            .args([
                "send",
                "--connect",
                &proxy.addr_string(),
                &format!("after {i}"),
            ])
            .output()
            .expect("send");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim_end(),
            format!("after {i}")
        );
    }
}

#[test]
fn a_request_to_a_dead_backend_gets_no_answer_or_a_close_as_on_error_says() {
    let dead = closed_port().to_string();
    // Default (no response): the client's own deadline ends it.
    let proxy = Daemon::start(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--connect",
        &dead,
        "--timeout",
        "500ms",
    ]);
    let started = Instant::now();
    let out = anet()
        .args([
            "send",
            "--connect",
            &proxy.addr_string(),
            "--timeout",
            "2s",
            "x",
        ])
        .output()
        .expect("send");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timeout"),
        "{out:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The failure leaves a trace on the proxy's stderr (warnings by default).
    proxy.wait_for_stderr("WARN");

    // --on-error close: the client's connection closes, well before its deadline.
    let proxy = Daemon::start(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--connect",
        &dead,
        "--timeout-ms",
        "500",
        "--on-error",
        "close",
    ]);
    let mut conn = TcpStream::connect(proxy.addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = Instant::now();
    write_frame(&mut conn, 2, b"0001", b"x").expect("write");
    let mut buf = [0u8; 16];
    assert!(matches!(conn.read(&mut buf), Ok(0) | Err(_)), "closed");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn proxy_takes_host_names_and_converts_the_length_width() {
    let echo = Daemon::echo(&[]);
    let proxy = Daemon::start(&[
        "proxy",
        "--listen",
        "localhost:0",
        "--connect",
        &format!("localhost:{}", echo.addr.port()),
        "--length-width",
        "4",
        "--backend-length-width",
        "2",
        "--resolve-every",
        "200ms",
    ]);
    assert!(proxy.addr.ip().is_loopback(), "{}", proxy.addr);
    let out = anet()
        .args([
            "send",
            "--connect",
            &format!("localhost:{}", proxy.addr.port()),
        ])
        .args(["--length-width", "4", "four-byte length in front"])
        .output()
        .expect("send");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        "four-byte length in front"
    );
}

#[test]
fn proxy_max_connections_refuses_a_client_beyond_the_limit() {
    let backend = Reordering::start(2, 4);
    let proxy = Daemon::start(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--connect",
        &backend.addr.to_string(),
        "--max-connections",
        "1",
        // Never make room by evicting the first (it could be idle past the
        // default 1 s on a loaded machine).
        "--evict-idle-after",
        "off",
    ]);
    let sent = requests(b'A', 0, 1);
    let mut first = TcpStream::connect(proxy.addr).expect("connect");
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write_frame(&mut first, 2, &sent[0].0, &sent[0].1).expect("write");
    assert_eq!(
        read_body(&mut first, 2).expect("answer"),
        b"A000re:conn0-request0"
    );
    // The first is busy-recent (active within evict-idle-after): no room.
    let mut second = TcpStream::connect(proxy.addr).expect("connect");
    second
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = write_frame(&mut second, 2, b"B000", b"x");
    let mut buf = [0u8; 16];
    assert!(matches!(second.read(&mut buf), Ok(0) | Err(_)), "refused");
    // The first still works.
    write_frame(&mut first, 2, b"A001", b"again").expect("write");
    assert_eq!(read_body(&mut first, 2).expect("answer"), b"A001re:again");
}

#[test]
fn proxy_shuts_down_gracefully_on_ctrl_c() {
    let echo = Daemon::echo(&[]);
    let mut proxy = Daemon::start(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--connect",
        &echo.addr_string(),
    ]);
    let out = anet()
        .args(["send", "--connect", &proxy.addr_string(), "before"])
        .output()
        .expect("send");
    assert!(out.status.success(), "{out:?}");
    let status = Command::new("kill")
        .args(["-INT", &proxy.child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
    let started = Instant::now();
    loop {
        if let Some(status) = proxy.child.try_wait().expect("wait") {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "still running");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        TcpStream::connect(proxy.addr).is_err(),
        "no longer listening"
    );
    // One stats line on exit.
    proxy.wait_for_stderr("anet proxy: 1 requests, 1 answered, 0 failed");
}

/// A backend of 2-byte lengths and 4-byte tags that answers each request
/// unchanged after `delay`.
fn slow_backend(delay: Duration) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                while let Ok(body) = read_body(&mut stream, 2) {
                    std::thread::sleep(delay);
                    let (tag, payload) = body.split_at(4.min(body.len()));
                    if write_frame(&mut stream, 2, tag, payload).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Waits up to `wait` for the connection to be closed by the proxy.
fn closed_within(conn: &mut TcpStream, wait: Duration) -> bool {
    conn.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = [0u8; 16];
    match conn.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// The proxy lowers the client-side maximum frame to what a backend frame
/// carries: the largest request a client frame can hold is forwarded and
/// answered, one byte more closes the client's connection at once (as any frame
/// over the maximum does) instead of failing silently inside the proxy.
#[test]
fn a_client_frame_too_large_for_the_backend_frame_closes_the_connection() {
    let echo = Daemon::echo(&[]);
    let backend = echo.addr_string();
    // (flags, client length width, client tag, largest payload that fits both)
    let cases: [(&[&str], usize, &[u8], usize); 2] = [
        // 4-byte lengths in front, 2-byte towards the backend, a larger max:
        // the backend frame carries 65535 - 4 payload bytes.
        (
            &[
                "--length-width",
                "4",
                "--backend-length-width",
                "2",
                "--max-frame",
                "100000",
            ],
            4,
            b"T001",
            65_531,
        ),
        // A wider backend tag: 65535 - 8 payload bytes.
        (
            &["--tag", "binary:2", "--backend-tag", "binary:8"],
            2,
            b"T1",
            65_527,
        ),
    ];
    for (flags, length_width, tag, largest) in cases {
        let mut args = vec!["proxy", "--listen", "127.0.0.1:0", "--connect", &backend];
        args.extend_from_slice(flags);
        let proxy = Daemon::start(&args);
        let mut conn = TcpStream::connect(proxy.addr).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let payload = vec![b'x'; largest];
        write_frame(&mut conn, length_width, tag, &payload).expect("write");
        let body = read_body(&mut conn, length_width).expect("answer");
        assert_eq!(&body[..tag.len()], tag, "{flags:?}");
        assert_eq!(body.len(), tag.len() + largest, "{flags:?}");

        let mut conn = TcpStream::connect(proxy.addr).expect("connect");
        let _ = write_frame(&mut conn, length_width, tag, &vec![b'x'; largest + 1]);
        assert!(
            closed_within(&mut conn, Duration::from_secs(10)),
            "{flags:?}: a {}-byte request did not close the connection",
            largest + 1
        );
        proxy.wait_for_stderr("lowered");
    }
}

/// README: on Ctrl-C the proxy answers what is in flight.
#[test]
fn ctrl_c_answers_a_request_in_flight_to_a_slow_backend() {
    let backend = slow_backend(Duration::from_millis(1500));
    let mut proxy = Daemon::start(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--connect",
        &backend.to_string(),
        "--timeout",
        "10s",
    ]);
    let mut conn = TcpStream::connect(proxy.addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    write_frame(&mut conn, 2, b"\0\0\0\x07", b"in flight").expect("write");
    std::thread::sleep(Duration::from_millis(300));
    interrupt(&proxy);
    assert_eq!(
        read_body(&mut conn, 2).expect("the answer to the request in flight"),
        b"\0\0\0\x07in flight"
    );
    let status = wait_exit(&mut proxy, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
}

/// A second Ctrl-C ends the graceful shutdown at once (exit code 130).
#[test]
fn a_second_ctrl_c_exits_without_waiting_for_requests_in_flight() {
    let backend = slow_backend(Duration::from_secs(30));
    let mut proxy = Daemon::start(&[
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--connect",
        &backend.to_string(),
        "--timeout",
        "60s",
    ]);
    let mut conn = TcpStream::connect(proxy.addr).expect("connect");
    write_frame(&mut conn, 2, b"\0\0\0\x01", b"slow").expect("write");
    std::thread::sleep(Duration::from_millis(300));
    interrupt(&proxy);
    // The first one is being handled once the proxy says so.
    proxy.wait_for_stderr("Ctrl-C again");
    interrupt(&proxy);
    // Well within the 10 s grace.
    let status = wait_exit(&mut proxy, Duration::from_secs(8));
    assert_eq!(status.code(), Some(130), "{status:?}");
}

/// Sends SIGINT (Ctrl-C) to the daemon.
fn interrupt(daemon: &Daemon) {
    let status = Command::new("kill")
        .args(["-INT", &daemon.child.id().to_string()])
        .status()
        .expect("kill -INT");
    assert!(status.success());
}

/// The daemon's exit status, which must come within `limit`.
fn wait_exit(daemon: &mut Daemon, limit: Duration) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = daemon.child.try_wait().expect("wait") {
            return status;
        }
        assert!(started.elapsed() < limit, "still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

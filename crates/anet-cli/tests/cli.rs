//! The real `anet` binary, spawned as a user would run it.

// These tests time a child process from a synchronous test: wall-clock time is
// what they measure, so std's Instant is the right clock here.
#![allow(clippy::disallowed_types)]

use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    process::Output,
    time::{Duration, Instant},
};

mod common;

use common::{Daemon, anet, closed_port, device, read_body, write_frame};

fn last_json_line(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let last = text.lines().last().expect("some output");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line {last:?} is not JSON: {e}"))
}

#[test]
fn echo_and_send_round_trip() {
    let echo = Daemon::echo(&[]);
    let out = anet()
        .args(["send", "--connect", &echo.addr.to_string(), "hello anet"])
        .output()
        .expect("run send");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        "hello anet"
    );

    let out = anet()
        .args([
            "send",
            "--connect",
            &echo.addr.to_string(),
            "--hex",
            "hello",
        ])
        .output()
        .expect("run send --hex");
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        "68656c6c6f"
    );
}

#[test]
fn echo_takes_a_budget_in_units_and_refuses_an_unknown_unit() {
    let echo = Daemon::echo(&[
        "--max-in-flight-bytes",
        "1KiB",
        "--max-in-flight-requests",
        "1",
    ]);
    let out = anet()
        .args(["send", "--connect", &echo.addr.to_string(), "within budget"])
        .output()
        .expect("run send");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        "within budget"
    );

    let out = anet()
        .args([
            "echo",
            "--listen",
            "127.0.0.1:0",
            "--max-in-flight-bytes",
            "3 parsecs",
        ])
        .output()
        .expect("run echo");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown size unit"),
        "{out:?}"
    );
}

/// The issue's reproduction: a full limit of connections that send nothing.
#[test]
fn echo_serves_send_while_silent_connections_fill_its_limit_and_closes_them_at_the_first_frame_timeout()
 {
    let echo = Daemon::echo(&[
        "--max-connections",
        "4",
        "--first-frame-timeout",
        "2s",
        "--evict-idle-after",
        "200ms",
    ]);
    let started = Instant::now();
    let mut silent: Vec<_> = (0..4)
        .map(|_| std::net::TcpStream::connect(echo.addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(400));
    let out = anet()
        .args(["send", "--connect", &echo.addr.to_string(), "let me in"])
        .output()
        .expect("run anet send");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "let me in");
    for conn in silent.iter_mut() {
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("read timeout");
        let mut buf = [0u8; 16];
        // Closed by the server: end of stream (or a reset for the evicted one).
        assert!(matches!(conn.read(&mut buf), Ok(0) | Err(_)));
    }
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn send_to_a_closed_port_fails_with_the_error_kind_and_exit_1() {
    let port = closed_port();
    let out = anet()
        .args([
            "send",
            "--connect",
            &port.to_string(),
            "--timeout-ms",
            "500",
            "x",
        ])
        .output()
        .expect("run send");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unavailable") || stderr.contains("connect"),
        "{stderr}"
    );
}

#[test]
fn bench_against_the_embedded_server_reports_no_mismatch_and_no_error() {
    let out = anet()
        .args(["bench", "--json", "-d", "2s", "-c", "64"])
        .output()
        .expect("run bench");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report = last_json_line(&out.stdout);
    assert_eq!(report["mismatches"], 0, "{report}");
    assert!(report["ok"].as_u64().expect("ok") > 0);
    assert_eq!(report["ok"], report["requests"], "no errors: {report}");
    for (kind, n) in report["errors"].as_object().expect("errors") {
        assert_eq!(n, 0, "{kind}");
    }
    assert!(report["latency_us"]["p50"].as_u64().expect("p50") > 0);
}

#[test]
fn bench_prints_its_thread_setup_and_takes_a_client_thread_count() {
    let out = anet()
        .args([
            "bench",
            "--json",
            "-d",
            "300ms",
            "-c",
            "8",
            "--threads",
            "2",
        ])
        .output()
        .expect("run bench");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(
            "setup        client runtime multi-thread (2 workers); \
             embedded echo server on its own thread (current-thread runtime)"
        ),
        "{stdout}"
    );
    let report = last_json_line(&out.stdout);
    assert_eq!(report["setup"]["client_threads"], 2, "{report}");
    assert_eq!(report["setup"]["embedded_server"], true, "{report}");
    assert_eq!(report["mismatches"], 0, "{report}");

    let out = anet()
        .args(["bench", "-d", "300ms", "-c", "8", "--threads", "1"])
        .output()
        .expect("run bench");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("setup        client runtime current-thread (1 thread)"),
        "{stdout}"
    );
}

/// A thread count the machine cannot run is a usage error, not a panic in
/// the runtime's builder (`usize::MAX` overflowed its thread arithmetic) nor
/// minutes of spawning threads and gigabytes of memory (`100000`).
#[test]
fn bench_refuses_a_thread_count_it_cannot_run() {
    for bad in ["0", "100000", "18446744073709551615"] {
        let mut child = anet()
            .args(["bench", "-d", "100ms", "-c", "1", "--threads", bad])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run bench");
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for bench") {
                break status;
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("--threads {bad}: still running after 30 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = child.wait_with_output().expect("bench output");
        assert_eq!(status.code(), Some(2), "--threads {bad}: {out:?}");
        assert!(stderr(&out).contains("--threads"), "{}", stderr(&out));
    }
}

#[test]
fn bench_against_an_external_echo_server() {
    let echo = Daemon::echo(&[]);
    let out = anet()
        .args([
            "bench",
            "--connect",
            &echo.addr.to_string(),
            "--json",
            "-d",
            "1s",
        ])
        .args([
            "--size",
            "200",
            "--connections-per-endpoint",
            "2",
            "--max-in-flight",
            "64",
        ])
        .output()
        .expect("run bench");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report = last_json_line(&out.stdout);
    assert_eq!(report["mismatches"], 0);
    assert!(report["ok"].as_u64().expect("ok") > 0);
}

#[test]
fn bench_where_nothing_listens_ends_quickly_with_connect_errors() {
    let port = closed_port();
    let started = Instant::now();
    let out = anet()
        .args([
            "bench",
            "--connect",
            &port.to_string(),
            "--json",
            "-d",
            "1s",
            "-c",
            "8",
        ])
        .output()
        .expect("run bench");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report = last_json_line(&out.stdout);
    assert_eq!(report["ok"], 0);
    let failures = report["errors"]["unavailable"].as_u64().unwrap_or(0)
        + report["errors"]["connect"].as_u64().unwrap_or(0);
    assert!(failures > 0, "{report}");
    assert_eq!(report["requests"].as_u64(), Some(failures));
}

#[test]
fn bench_against_a_server_that_never_answers_ends_within_duration_timeout_and_grace() {
    // Accepts and reads, never writes.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut sink = [0u8; 4096];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    let started = Instant::now();
    let out = anet()
        .args([
            "bench",
            "--connect",
            &addr.to_string(),
            "--json",
            "-d",
            "1s",
        ])
        .args(["--timeout", "500ms", "-c", "16"])
        .output()
        .expect("run bench");
    let elapsed = started.elapsed();
    assert!(
        elapsed < Duration::from_millis(1000 + 500 + 2000 + 1500),
        "{elapsed:?}"
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report = last_json_line(&out.stdout);
    assert_eq!(report["ok"], 0);
    assert!(
        report["errors"]["timeout"].as_u64().expect("timeouts") >= 16,
        "{report}"
    );
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A peer that answers each connection's first request with `answer` (raw
/// bytes), then reads until the client leaves; with an empty `answer` it
/// closes instead.
fn hostile_server(answer: &'static [u8]) -> std::net::SocketAddr {
    use std::io::Write;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                if read_body(&mut stream, 2).is_err()
                    || answer.is_empty()
                    || stream.write_all(answer).is_err()
                {
                    return;
                }
                let mut sink = [0u8; 4096];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// `anet send` against a peer that breaks the protocol (a frame shorter than
/// the tag), or closes with the request in flight: the error kind on stderr,
/// exit 1, well within the timeout.
#[test]
fn send_to_a_peer_that_breaks_the_protocol_or_closes_fails_with_the_kind_and_exit_1() {
    for (answer, kind) in [
        (&[0u8, 0][..], "error: protocol: "),
        (&[0u8, 1, 0][..], "error: protocol: "),
        (&[][..], "error: connection_lost: "),
    ] {
        let addr = hostile_server(answer);
        let started = Instant::now();
        let out = anet()
            .args([
                "send",
                "--connect",
                &addr.to_string(),
                "--timeout",
                "5s",
                "x",
            ])
            .output()
            .expect("run send");
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(
            stderr(&out).starts_with(kind),
            "{answer:?}: {}",
            stderr(&out)
        );
        assert!(stdout(&out).is_empty(), "{out:?}");
        assert!(started.elapsed() < Duration::from_secs(4), "{answer:?}");
    }
}

/// A peer that accepts and reads, and never writes.
fn silent_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut sink = [0u8; 4096];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// The issue's example: a payShield-like device that echoes a 4-character header.
#[test]
fn send_with_an_ascii_tag_to_a_device_that_echoes_the_header_prints_its_answer() {
    let (addr, bodies) = device(2, 4);
    let out = anet()
        .args([
            "send",
            "--connect",
            &addr.to_string(),
            "--tag",
            "ascii:4",
            "NC",
        ])
        .output()
        .expect("run send");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "NC00");
    let body = bodies
        .recv_timeout(Duration::from_secs(5))
        .expect("a request");
    assert_eq!(body.len(), 6, "{body:?}");
    assert!(body[..4].iter().all(u8::is_ascii_digit), "header {body:?}");
    assert_eq!(&body[4..], b"NC");
}

#[test]
fn send_with_a_4_byte_length_and_a_2_byte_binary_tag_frames_them_so() {
    let (addr, bodies) = device(4, 2);
    let out = anet()
        .args(["send", "--connect", &addr.to_string()])
        .args(["--length-width", "4", "--tag", "binary:2", "NC"])
        .output()
        .expect("run send");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "NC00");
    let body = bodies
        .recv_timeout(Duration::from_secs(5))
        .expect("a request");
    assert_eq!(body.len(), 4, "2-byte tag + NC: {body:?}");
    assert_eq!(&body[2..], b"NC");
}

#[test]
fn echo_with_frame_options_answers_raw_frames_in_that_format() {
    let echo = Daemon::echo(&["--tag", "ascii:6", "--length-width", "4"]);
    let mut conn = TcpStream::connect(echo.addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // Two frames in one write, with the client's own (non-numeric) headers.
    let mut both = Vec::new();
    write_frame(&mut both, 4, b"HDR-01", b"first").expect("encode");
    write_frame(&mut both, 4, b"HDR-02", b"").expect("encode");
    std::io::Write::write_all(&mut conn, &both).expect("write");
    let mut answers = vec![
        read_body(&mut conn, 4).expect("answer"),
        read_body(&mut conn, 4).expect("answer"),
    ];
    answers.sort();
    assert_eq!(answers, [b"HDR-01first".to_vec(), b"HDR-02".to_vec()]);
}

#[test]
fn send_and_bench_with_frame_options_round_trip_through_echo_with_the_same_options() {
    let flags = ["--tag", "ascii:4", "--length-width", "4"];
    let echo = Daemon::echo(&flags);
    let out = anet()
        .args(["send", "--connect", &echo.addr_string()])
        .args(flags)
        .arg("over ascii tags")
        .output()
        .expect("run send");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "over ascii tags");

    let out = anet()
        .args(["bench", "--connect", &echo.addr_string(), "--json"])
        .args(["-d", "1s", "-c", "32"])
        .args(flags)
        .output()
        .expect("run bench");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report = last_json_line(&out.stdout);
    assert_eq!(report["mismatches"], 0, "{report}");
    assert!(report["ok"].as_u64().expect("ok") > 0);
    assert_eq!(report["ok"], report["requests"], "{report}");
}

#[test]
fn bench_starts_its_embedded_echo_server_with_the_frame_options() {
    let out = anet()
        .args(["bench", "--json", "-d", "1s", "-c", "16"])
        .args(["--tag", "binary:2", "--length-width", "4"])
        .output()
        .expect("run bench");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report = last_json_line(&out.stdout);
    assert_eq!(report["mismatches"], 0, "{report}");
    assert!(report["ok"].as_u64().expect("ok") > 0);
    assert_eq!(report["ok"], report["requests"], "{report}");
}

#[test]
fn frame_options_that_do_not_parse_are_usage_errors() {
    for bad in [
        ["--tag", "hex:4"],
        ["--tag", "ascii:0"],
        ["--tag", "binary:9"],
        ["--length-width", "3"],
    ] {
        let out = anet()
            .args(["send", "--connect", "127.0.0.1:1"])
            .args(bad)
            .arg("x")
            .output()
            .expect("run send");
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {out:?}");
        assert!(stderr(&out).contains(bad[0]), "{}", stderr(&out));
    }
    // Parses, but a 2-digit tag has 100 values: no room for 100 in flight.
    let out = anet()
        .args(["bench", "--connect", "127.0.0.1:1", "-d", "1s"])
        .args(["--tag", "ascii:2", "--max-in-flight", "100"])
        .output()
        .expect("run bench");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stderr(&out).contains("invalid"), "{}", stderr(&out));
}

#[test]
fn send_hex_input_sends_the_bytes_the_digits_spell() {
    let echo = Daemon::echo(&[]);
    let out = anet()
        .args(["send", "--connect", &echo.addr_string()])
        .args(["--hex-input", "68 65 6c6C6f"])
        .output()
        .expect("run send");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hello");

    let out = anet()
        .args(["send", "--connect", &echo.addr_string()])
        .args(["--hex-input", "--hex", "00ff4e43"])
        .output()
        .expect("run send");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "00ff4e43");

    for bad in ["4e4", "zz"] {
        let out = anet()
            .args(["send", "--connect", &echo.addr_string(), "--hex-input", bad])
            .output()
            .expect("run send");
        assert_eq!(out.status.code(), Some(1), "{bad}: {out:?}");
        assert!(stderr(&out).contains("--hex-input"), "{}", stderr(&out));
    }
}

#[test]
fn send_timeout_takes_a_duration_and_timeout_ms_still_works() {
    let addr = silent_server().to_string();
    for flags in [["--timeout", "500ms"], ["--timeout-ms", "500"]] {
        let started = Instant::now();
        let out = anet()
            .args(["send", "--connect", &addr])
            .args(flags)
            .arg("x")
            .output()
            .expect("run send");
        let elapsed = started.elapsed();
        assert_eq!(out.status.code(), Some(1), "{flags:?}: {out:?}");
        assert!(stderr(&out).contains("timeout"), "{}", stderr(&out));
        assert!(
            elapsed >= Duration::from_millis(450) && elapsed < Duration::from_secs(5),
            "{flags:?}: {elapsed:?}"
        );
    }
    let out = anet()
        .args(["send", "--connect", &addr])
        .args(["--timeout", "1s", "--timeout-ms", "1000", "x"])
        .output()
        .expect("run send");
    assert_eq!(
        out.status.code(),
        Some(2),
        "both spellings at once: {out:?}"
    );
    let out = anet()
        .args(["send", "--connect", &addr, "--timeout", "500", "x"])
        .output()
        .expect("run send");
    assert_eq!(
        out.status.code(),
        Some(2),
        "a duration needs a unit: {out:?}"
    );
}

#[test]
fn echo_idle_timeout_takes_a_duration_and_the_ms_spelling_still_works() {
    for flags in [["--idle-timeout", "300ms"], ["--idle-timeout-ms", "300"]] {
        let echo = Daemon::echo(&flags);
        let mut conn = TcpStream::connect(echo.addr).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        write_frame(&mut conn, 2, &[0, 0, 0, 1], b"ping").expect("write");
        assert_eq!(read_body(&mut conn, 2).expect("answer"), b"\0\0\0\x01ping");
        let started = Instant::now();
        let mut buf = [0u8; 16];
        assert!(
            matches!(conn.read(&mut buf), Ok(0) | Err(_)),
            "{flags:?}: closed when idle"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{flags:?}: {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn echo_listens_on_a_host_name_and_send_and_bench_connect_by_name() {
    let echo = Daemon::start(&["echo", "--listen", "localhost:0"]);
    assert!(echo.addr.ip().is_loopback(), "{}", echo.addr);
    let by_name = format!("localhost:{}", echo.addr.port());
    let out = anet()
        .args(["send", "--connect", &by_name, "by name"])
        .output()
        .expect("run send");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "by name");

    let out = anet()
        .args([
            "bench",
            "--connect",
            &by_name,
            "--json",
            "-d",
            "1s",
            "-c",
            "8",
        ])
        .args(["--resolve-every", "100ms"])
        .output()
        .expect("run bench");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report = last_json_line(&out.stdout);
    assert_eq!(report["mismatches"], 0, "{report}");
    assert!(report["ok"].as_u64().expect("ok") > 0);
    assert_eq!(report["ok"], report["requests"], "{report}");
}

#[test]
fn a_name_that_does_not_resolve_is_a_one_line_error_and_exit_1() {
    let name = "no-such-host.invalid:1500";
    let runs: [&[&str]; 4] = [
        &["send", "--connect", name, "x"],
        &["bench", "--connect", name, "-d", "1s"],
        &["echo", "--listen", name],
        &["proxy", "--listen", "127.0.0.1:0", "--connect", name],
    ];
    for args in runs {
        let started = Instant::now();
        let out = anet().args(args).output().expect("run anet");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{args:?}: {:?}",
            started.elapsed()
        );
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.starts_with("error: cannot resolve no-such-host.invalid:1500"),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: nothing listens");
    }
}

#[test]
fn a_connect_address_without_a_port_is_a_usage_error() {
    let out = anet()
        .args(["send", "--connect", "localhost", "x"])
        .output()
        .expect("run send");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(stderr(&out).contains("HOST:PORT"), "{}", stderr(&out));
}

/// The exit code of `anet ARGS`, which must exit within 10 s.
fn exit_code(args: &[&str]) -> Option<i32> {
    let mut child = anet()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code();
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn zero_durations_zero_counts_and_frames_without_room_are_usage_errors() {
    let proxy = [
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--connect",
        "localhost:1",
    ];
    let bench = ["bench", "--connect", "localhost:1", "-d", "1s"];
    let send = ["send", "--connect", "127.0.0.1:1"];
    let echo = ["echo", "--listen", "127.0.0.1:0"];
    let cases: &[(&[&str], &[&str])] = &[
        // Re-resolving back to back would flood the resolver.
        (&bench, &["--resolve-every", "0s"]),
        (&proxy, &["--resolve-every", "0s"]),
        (&send, &["--timeout", "0s", "x"]),
        (&send, &["--timeout-ms", "0", "x"]),
        (&bench, &["--timeout", "0s"]),
        (&proxy, &["--timeout", "0ms"]),
        (&proxy, &["--timeout-ms", "0"]),
        (&echo, &["--max-in-flight", "0"]),
        (&bench, &["--max-in-flight", "0"]),
        (&proxy, &["--max-in-flight", "0"]),
        (&proxy, &["--backend-max-in-flight", "0"]),
        (&bench, &["--connections-per-endpoint", "0"]),
        (&proxy, &["--connections-per-endpoint", "0"]),
        (&bench, &["-c", "0"]),
        // A frame must hold its tag.
        (&echo, &["--max-frame", "3"]),
        (&send, &["--max-frame", "3", "x"]),
        (&bench, &["--max-frame", "1", "--tag", "binary:2"]),
        (&proxy, &["--backend-tag", "binary:8", "--max-frame", "7"]),
        // The payload does not fit the frame.
        (&bench, &["--size", "65532"]),
        (&bench, &["--max-frame", "10"]),
    ];
    for (command, flags) in cases {
        let args = [*command, *flags].concat();
        assert_eq!(exit_code(&args), Some(2), "{args:?}");
    }
    let out = anet()
        .args(["bench", "--size", "70000", "--length-width", "4"])
        .output()
        .expect("run bench");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        stderr(&out).contains("at most 65531 payload bytes"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn send_and_bench_with_a_4_byte_length_and_max_frame_carry_payloads_over_64_kib() {
    let wide = ["--length-width", "4", "--max-frame", "100000"];
    let echo = Daemon::echo(&wide);
    let payload = "y".repeat(70_000);
    let out = anet()
        .args(["send", "--connect", &echo.addr_string()])
        .args(wide)
        .arg(&payload)
        .output()
        .expect("send");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim_end(), payload);
    // Against the embedded echo server, which takes the same frame options.
    let out = anet()
        .args([
            "bench", "--json", "-d", "300ms", "-c", "2", "--size", "70000",
        ])
        .args(wide)
        .output()
        .expect("bench");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report = last_json_line(&out.stdout);
    assert_eq!(report["mismatches"], 0, "{report}");
    assert_eq!(report["ok"], report["requests"], "{report}");
    assert!(report["ok"].as_u64().expect("ok") > 0, "{report}");
}

/// A loopback address with a port free a moment ago (for `--metrics`, which
/// does not print the port it bound).
fn free_addr() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// `GET http://addr/metrics`, the body; `None` while nothing answers.
fn scrape(addr: std::net::SocketAddr) -> Option<String> {
    use std::io::Write;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    Some(body.to_owned())
}

/// Scrapes until the endpoint answers (it starts with the command), for up to
/// 10 s.
fn scrape_when_up(addr: std::net::SocketAddr) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(body) = scrape(addr) {
            return body;
        }
        assert!(Instant::now() < deadline, "nothing serves {addr}/metrics");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the sample `series` (name and labels exactly as rendered).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.trim().parse().expect("a number"))
}

#[test]
fn echo_metrics_count_the_requests_of_a_bench_run_and_their_duration_histogram() {
    let metrics = free_addr();
    let echo = Daemon::echo(&["--metrics", &metrics.to_string()]);
    let out = anet()
        .args([
            "bench",
            "--connect",
            &echo.addr.to_string(),
            "-d",
            "1s",
            "-c",
            "8",
        ])
        .arg("--json")
        .output()
        .expect("run bench");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report = last_json_line(&out.stdout);
    let ok = report["ok"].as_u64().expect("ok");
    assert!(ok > 0);
    assert_eq!(report["requests"], ok);

    let body = scrape_when_up(metrics);
    let served = sample(&body, r#"anet_server_requests{outcome="ok"}"#);
    assert_eq!(served, Some(ok as f64), "{body}");
    assert_eq!(
        sample(&body, r#"anet_server_request_duration_count{outcome="ok"}"#),
        Some(ok as f64),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            r#"anet_server_request_duration_bucket{outcome="ok",le="+Inf"}"#
        ),
        Some(ok as f64),
        "{body}"
    );
    assert!(
        body.contains("# TYPE anet_server_request_duration histogram"),
        "{body}"
    );
    assert_eq!(sample(&body, "anet_server_in_flight"), Some(0.0), "{body}");
}

#[test]
fn bench_reports_requests_ok_errors_and_latency_for_each_of_two_endpoints() {
    let (a, b) = (Daemon::echo(&[]), Daemon::echo(&[]));
    let out = anet()
        .args([
            "bench",
            "--connect",
            &a.addr.to_string(),
            &b.addr.to_string(),
        ])
        .args(["-d", "1s", "-c", "16", "--json"])
        .output()
        .expect("run bench");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let report = last_json_line(&out.stdout);
    let endpoints = report["endpoints"].as_array().expect("endpoints");
    let mut addresses: Vec<&str> = endpoints
        .iter()
        .map(|e| e["address"].as_str().expect("address"))
        .collect();
    addresses.sort_unstable();
    let mut want = vec![a.addr.to_string(), b.addr.to_string()];
    want.sort_unstable();
    assert_eq!(addresses, want, "{report}");
    let mut sum = 0;
    for e in endpoints {
        let requests = e["requests"].as_u64().expect("requests");
        // Both take a share: the balancer spreads 16 callers over the two.
        assert!(requests > 0, "{e}");
        assert_eq!(e["ok"], requests, "{e}");
        assert_eq!(e["errors"], serde_json::json!({}), "{e}");
        let (p50, p99) = (
            e["latency_us"]["p50"].as_u64().expect("p50"),
            e["latency_us"]["p99"].as_u64().expect("p99"),
        );
        assert!(p50 > 0 && p50 <= p99, "{e}");
        sum += requests;
    }
    assert_eq!(
        sum,
        report["requests"].as_u64().expect("requests"),
        "{report}"
    );
    // The human report has a line for each.
    let text = stdout(&out);
    for addr in &want {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(addr.as_str()))
            .unwrap_or_else(|| panic!("no line for {addr} in {text}"));
        assert!(line.contains("requests") && line.contains("p99"), "{line}");
    }
}

#[test]
fn bench_reports_errors_by_kind_for_an_endpoint_that_stops_answering() {
    let a = Daemon::echo(&[]);
    let silent = silent_server();
    let out = anet()
        .args([
            "bench",
            "--connect",
            &a.addr.to_string(),
            &silent.to_string(),
        ])
        .args(["-d", "1s", "-c", "8", "--timeout", "200ms", "--json"])
        .output()
        .expect("run bench");
    let report = last_json_line(&out.stdout);
    let endpoints = report["endpoints"].as_array().expect("endpoints");
    let silent_line = endpoints
        .iter()
        .find(|e| e["address"] == silent.to_string())
        .unwrap_or_else(|| panic!("no line for the silent endpoint: {report}"));
    assert_eq!(silent_line["ok"], 0, "{report}");
    assert!(
        silent_line["errors"]["timeout"].as_u64().expect("timeouts") > 0,
        "{report}"
    );
    let live = endpoints
        .iter()
        .find(|e| e["address"] == a.addr.to_string())
        .expect("the live endpoint");
    assert!(live["ok"].as_u64().expect("ok") > 0, "{report}");
}

#[test]
fn bench_serves_its_client_metrics_and_draws_a_latency_histogram() {
    let echo = Daemon::echo(&[]);
    let metrics = free_addr();
    let dir = std::env::temp_dir().join(format!("anet-cli-histogram-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let svg = dir.join("latency.svg");
    let mut bench = anet()
        .args([
            "bench",
            "--connect",
            &echo.addr.to_string(),
            "-d",
            "3s",
            "-c",
            "4",
        ])
        .args(["--metrics", &metrics.to_string()])
        .arg("--histogram")
        .arg(&svg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn bench");
    // While it runs: the client's requests, by endpoint and outcome (the
    // series exists at zero from the endpoint's creation, before any answer).
    let series = format!(
        r#"anet_client_requests{{endpoint="{}",outcome="ok"}}"#,
        echo.addr
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = scrape(metrics).and_then(|body| sample(&body, &series));
        if seen.is_some_and(|n| n > 0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{series} did not count while bench ran (last seen {seen:?})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = bench.wait().expect("bench ends");
    assert!(status.success(), "{status:?}");
    let drawn = std::fs::read_to_string(&svg).expect("the histogram");
    assert!(drawn.contains("<svg") && drawn.contains("p99"), "{drawn}");
    let _ = std::fs::remove_dir_all(&dir);
}

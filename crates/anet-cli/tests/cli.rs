//! The real `anet` binary, spawned as a user would run it.

// These tests time a child process from a synchronous test: wall-clock time is
// what they measure, so std's Instant is the right clock here.
#![allow(clippy::disallowed_types)]

use std::{
    io::{BufRead, BufReader, Read},
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

fn anet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_anet"))
}

/// `anet echo` on an ephemeral port; killed on drop.
struct Echo {
    child: Child,
    addr: SocketAddr,
}

impl Echo {
    fn start() -> Echo {
        Echo::start_with(&[])
    }

    fn start_with(flags: &[&str]) -> Echo {
        let mut child = anet()
            .args(["echo", "--listen", "127.0.0.1:0"])
            .args(flags)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn anet echo");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("first line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address");
        Echo { child, addr }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn last_json_line(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let last = text.lines().last().expect("some output");
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line {last:?} is not JSON: {e}"))
}

#[test]
fn echo_and_send_round_trip() {
    let echo = Echo::start();
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
    let echo = Echo::start_with(&[
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

/// The reproduction: a full limit of connections that send nothing.
#[test]
fn echo_serves_send_while_silent_connections_fill_its_limit_and_closes_them_at_the_first_frame_timeout()
 {
    let echo = Echo::start_with(&[
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
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
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
fn bench_against_an_external_echo_server() {
    let echo = Echo::start();
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
    let port = TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
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
        .args(["--timeout-ms", "500", "-c", "16"])
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

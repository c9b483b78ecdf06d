//! Resident memory per idle server connection: `CONNECTIONS` clients each send
//! one request, read its response and stay connected; the figure is the growth
//! of the server's resident set divided by the connections.
//!
//! The server runs in a child process (this binary again, with the hidden
//! `--idle-server KIND` flag), so only its memory is measured: the clients'
//! sockets and buffers are in the parent. Clients connect and send in batches
//! of [`BATCH`] before the batch's responses are read, so the server serves
//! many connections at once; all of them stay open to the end. The baseline is taken after a
//! warm-up connection has been served and closed.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anet::server::Server;
use anet_tests::servers::{anet_echo_on_own_thread, raw_echo_on_own_thread};

/// Payload bytes of the one request each connection sends.
const PAYLOAD: usize = 64;
/// Connections opened (each sending its request) before their responses are
/// read: a bound on the listen backlog, which overflows (a connect then waits a
/// second for its SYN to be resent) when a busy machine delays the accepts.
const BATCH: usize = 100;
/// How long the server gets to settle after the last response was read (an
/// anet connection frees its spare memory after 500 ms idle).
const SETTLE: Duration = Duration::from_millis(1000);

/// The child's side: starts the server `kind` (`raw` or `anet`), prints its
/// address, and serves until its standard input closes.
pub(crate) fn serve(kind: &str) -> anyhow::Result<()> {
    let addr = match kind {
        "raw" => raw_echo_on_own_thread(),
        // Room for every measured connection; none is evicted.
        "anet" => anet_echo_on_own_thread(
            Server::builder()
                .max_connections(100_000)
                .evict_idle_after(None),
        ),
        other => anyhow::bail!("unknown idle server {other}"),
    };
    println!("{addr}");
    std::io::stdout().flush()?;
    // Until the parent closes its end.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

/// Kills the child server when the measurement ends, however it ends.
struct ChildServer(Child);

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Resident KiB per idle connection of the server `kind`, with `connections`
/// clients.
pub(crate) fn kib_per_connection(kind: &str, connections: usize) -> anyhow::Result<f64> {
    let mut child = ChildServer(
        Command::new(std::env::current_exe()?)
            .args(["--idle-server", kind])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().expect("piped stdout")).read_line(&mut line)?;
    let addr: SocketAddr = line.trim().parse()?;
    let pid = child.0.id();
    // Warm-up: one connection served and closed.
    drop(one_request(addr)?);
    std::thread::sleep(SETTLE);
    let before = rss_bytes(pid)?;
    let mut clients = Vec::with_capacity(connections);
    while clients.len() < connections {
        let batch = clients.len()..connections.min(clients.len() + BATCH);
        for i in batch.clone() {
            let mut stream = TcpStream::connect(addr)?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(&frame(i as u32))?;
            clients.push(stream);
        }
        for i in batch {
            read_echo(&mut clients[i], i as u32)?;
        }
    }
    std::thread::sleep(SETTLE);
    let after = rss_bytes(pid)?;
    drop(clients);
    Ok(after.saturating_sub(before) as f64 / 1024.0 / connections as f64)
}

fn one_request(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(&frame(0))?;
    read_echo(&mut stream, 0)?;
    Ok(stream)
}

/// A request frame (2-byte length, 4-byte tag, payload).
fn frame(tag: u32) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(2 + 4 + PAYLOAD);
    bytes.extend_from_slice(&((4 + PAYLOAD) as u16).to_be_bytes());
    bytes.extend_from_slice(&tag.to_be_bytes());
    bytes.resize(2 + 4 + PAYLOAD, b'.');
    bytes
}

fn read_echo(stream: &mut TcpStream, tag: u32) -> anyhow::Result<()> {
    let mut response = vec![0; 2 + 4 + PAYLOAD];
    stream.read_exact(&mut response)?;
    anyhow::ensure!(
        response == frame(tag),
        "response does not match its request"
    );
    Ok(())
}

/// Resident set size of process `pid` in bytes (Linux).
fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("unreadable /proc/{pid}/statm"))?;
    Ok(pages * 4096)
}

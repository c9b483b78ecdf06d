//! `anet`: an echo server, a one-shot sender and a load generator for the anet
//! protocol (2-byte length, 4-byte tag, Go anet compatible).
//!
//! ```text
//! anet echo  [--listen 127.0.0.1:7878] [--max-connections 1024]
//!            [--first-frame-timeout 10s] [--evict-idle-after 1s]
//!            [--max-connections-per-peer N]
//!            [--max-in-flight-bytes 64MiB] [--max-in-flight-requests 10000]
//! anet send  --connect ADDR [--timeout-ms 1000] [--hex] PAYLOAD
//! anet bench [--connect ADDR]... [-c 256] [-d 10s] [--size 64] [--json]
//! ```

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

mod bench;
mod echo;
mod send;

/// Client, server and load generator for length-prefixed, tag-multiplexed TCP.
#[derive(Debug, Parser)]
#[command(name = "anet", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an echo server (each payload answered unchanged) until Ctrl-C.
    Echo(EchoArgs),
    /// Send one request and print the response.
    Send(SendArgs),
    /// Closed-loop load through the full client stack, checking every response.
    Bench(BenchArgs),
}

/// Options of `anet echo`.
#[derive(Debug, Args)]
struct EchoArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: SocketAddr,
    /// Most connections open at once. At the limit a newcomer takes the place of
    /// an idle connection (see --evict-idle-after); when none can make room, it
    /// is closed on accept.
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Close a connection that has not sent a complete first frame within this
    /// long, e.g. `10s`, `500ms` (`off` or `0s` = never).
    #[arg(long, default_value = "10s", value_parser = optional_duration)]
    first_frame_timeout: OptionalDuration,
    /// At --max-connections, evict an idle connection (nothing in flight; silent
    /// ones first, then the longest idle) once it has been idle this long, e.g.
    /// `1s` (`off` = never evict: refuse the newcomer).
    #[arg(long, default_value = "1s", value_parser = optional_duration)]
    evict_idle_after: OptionalDuration,
    /// Most connections open at once from one IP address (default: no limit).
    #[arg(long)]
    max_connections_per_peer: Option<usize>,
    /// Most requests served at once per connection.
    #[arg(long, default_value_t = 256)]
    max_in_flight: usize,
    /// Largest frame body (tag + payload) accepted.
    #[arg(long, default_value_t = 65535)]
    max_frame: usize,
    /// Close connections idle this long (0 = never).
    #[arg(long, default_value_t = 300_000)]
    idle_timeout_ms: u64,
    /// Close connections whose started frame does not complete in this long (0 = never).
    #[arg(long, default_value_t = 10_000)]
    read_timeout_ms: u64,
    /// Most request bytes held for unanswered requests, all connections
    /// together (bytes, or with a unit: `64MiB`, `512KiB`, `1GiB`). At the
    /// limit the server stops reading until answers free room.
    #[arg(long, default_value = "64MiB", value_parser = byte_size)]
    max_in_flight_bytes: usize,
    /// Most unanswered requests held, all connections together. At the limit
    /// the server stops reading until answers free room.
    #[arg(long, default_value_t = 10_000)]
    max_in_flight_requests: usize,
}

/// Options of `anet send`.
#[derive(Debug, Args)]
struct SendArgs {
    /// Server address.
    #[arg(long)]
    connect: SocketAddr,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Print the response as hex instead of text.
    #[arg(long)]
    hex: bool,
    /// The request payload (sent as its UTF-8 bytes).
    payload: String,
}

/// Options of `anet bench`.
#[derive(Debug, Args)]
struct BenchArgs {
    /// Server address (repeat for several); without it an embedded echo server is
    /// started on an ephemeral loopback port.
    #[arg(long)]
    connect: Vec<SocketAddr>,
    /// Concurrent callers, each with one request in flight.
    #[arg(short = 'c', long, default_value_t = 256)]
    concurrency: usize,
    /// How long to send, e.g. `10s`, `500ms`, `2m`.
    #[arg(short = 'd', long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Payload size in bytes (at least the digits of the sequence number).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Connections per endpoint (default: the client's, 1 growing to 4).
    #[arg(long)]
    connections_per_endpoint: Option<usize>,
    /// Requests in flight per connection (default: 512).
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Per-request deadline in milliseconds.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

/// A duration flag that can be switched off (`None`).
#[derive(Clone, Copy, Debug)]
struct OptionalDuration(Option<Duration>);

/// A duration such as `10s` or `500ms`, or `off`.
fn optional_duration(text: &str) -> Result<OptionalDuration, humantime::DurationError> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(OptionalDuration(None));
    }
    humantime::parse_duration(text).map(|d| OptionalDuration(Some(d)))
}

/// A size in bytes: a number, optionally followed by `B`, `KiB`, `MiB` or
/// `GiB` (also `K`, `M`, `G`, `KB`, `MB`, `GB`, all powers of 1024).
fn byte_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size in bytes"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        other => return Err(format!("unknown size unit `{other}` (use KiB, MiB or GiB)")),
    };
    number
        .checked_mul(1 << shift)
        .ok_or_else(|| format!("`{text}` is too large"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Echo(args) => echo::run(args).await,
            Command::Send(args) => send::run(args).await,
            Command::Bench(args) => bench::run(args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! `anet`: an echo server, a one-shot sender, a load generator and a connection
//! concentrator for the anet protocol (by default 2-byte length, 4-byte binary
//! tag, Go anet compatible; `--tag` and `--length-width` for other devices).
//!
//! ```text
//! anet echo  [--listen 127.0.0.1:7878] [--tag binary:4] [--length-width 2]
//!            [--max-in-flight-bytes 64MiB] [--max-in-flight-requests 10000] ...
//! anet send  --connect HOST:PORT [--timeout 1s] [--hex] [--hex-input] PAYLOAD
//! anet bench [--connect HOST:PORT]... [-c 256] [-d 10s] [--size 64] [--threads N] [--json]
//!            [--histogram FILE.svg]
//!
//! echo, bench and proxy take --metrics ADDR: Prometheus text at http://ADDR/metrics.
//! anet proxy --listen HOST:PORT --connect HOST:PORT... [--backend-tag ...]
//! ```

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anet_proto::TagFormat;
use clap::{Args, CommandFactory as _, Parser, Subcommand, ValueEnum, error::ErrorKind};

use crate::common::{FrameArgs, Target, duration, parse_length_width, parse_tag, parse_target};

mod bench;
mod chart;
mod common;
mod echo;
mod metrics;
mod proxy;
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
    /// Serve any number of client connections over a few pooled, balanced
    /// backend connections (a connection concentrator), until Ctrl-C.
    Proxy(ProxyArgs),
}

/// Options of `anet echo`.
#[derive(Debug, Args)]
struct EchoArgs {
    /// Address to listen on (`HOST:PORT`, an IP literal or a name resolved once);
    /// port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7878", value_parser = parse_target)]
    listen: Target,
    /// Serve anet's metrics as Prometheus text at `http://ADDR/metrics` while
    /// the command runs.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    #[command(flatten)]
    frame: FrameArgs,
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
    /// Most requests served at once per connection (at least 1).
    #[arg(long, default_value_t = 256, value_parser = positive)]
    max_in_flight: usize,
    /// Largest frame body (tag + payload) accepted (at least the tag width; with
    /// `--length-width 2` at most 65535).
    #[arg(long, default_value_t = 65535)]
    max_frame: usize,
    /// Close connections idle this long, e.g. `5m` (`off` or `0s` = never).
    /// [default: 5m]
    #[arg(long, value_parser = optional_duration, conflicts_with = "idle_timeout_ms")]
    idle_timeout: Option<OptionalDuration>,
    /// `--idle-timeout` in milliseconds (0 = never); the older spelling.
    #[arg(long)]
    idle_timeout_ms: Option<u64>,
    /// Close connections whose started frame does not complete in this long,
    /// e.g. `10s` (`off` or `0s` = never). [default: 10s]
    #[arg(long, value_parser = optional_duration, conflicts_with = "read_timeout_ms")]
    read_timeout: Option<OptionalDuration>,
    /// `--read-timeout` in milliseconds (0 = never); the older spelling.
    #[arg(long)]
    read_timeout_ms: Option<u64>,
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
    /// Server address: `HOST:PORT` (every address the name resolves to is an
    /// endpoint), `IPv4:PORT` or `[IPv6]:PORT`.
    #[arg(long, value_parser = parse_target)]
    connect: Target,
    #[command(flatten)]
    frame: FrameArgs,
    /// Largest frame body (tag + payload) sent or accepted (at least the tag
    /// width; with `--length-width 2` at most 65535).
    #[arg(long, default_value_t = 65535)]
    max_frame: usize,
    /// Give up after this long (the name lookup included), e.g. `500ms`, `2s`;
    /// not zero. [default: 1s]
    #[arg(long, value_parser = positive_duration, conflicts_with = "timeout_ms")]
    timeout: Option<Duration>,
    /// `--timeout` in milliseconds; the older spelling.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: Option<u64>,
    /// Print the response as hex instead of text.
    #[arg(long)]
    hex: bool,
    /// The payload is hex digits (`4e43` for `NC`; whitespace ignored), sent as
    /// the bytes they spell.
    #[arg(long)]
    hex_input: bool,
    /// The request payload (sent as its UTF-8 bytes, or see --hex-input).
    #[arg(allow_hyphen_values = true)]
    payload: String,
}

/// Options of `anet bench`.
#[derive(Debug, Args)]
struct BenchArgs {
    /// Server address, `HOST:PORT` or an IP literal (repeat for several); a name's
    /// every address becomes an endpoint, re-resolved every --resolve-every.
    /// Without it an embedded echo server (with the same frame options) is started
    /// on an ephemeral loopback port.
    #[arg(long, value_parser = parse_target, num_args = 1..)]
    connect: Vec<Target>,
    #[command(flatten)]
    frame: FrameArgs,
    /// Largest frame body (tag + payload) sent or accepted, also by the embedded
    /// echo server (at least the tag width; with `--length-width 2` at most
    /// 65535).
    #[arg(long, default_value_t = 65535)]
    max_frame: usize,
    /// How often `--connect` names are resolved again (not zero).
    #[arg(long, default_value = "5s", value_parser = positive_duration)]
    resolve_every: Duration,
    /// Concurrent callers, each with one request in flight (at least 1).
    #[arg(short = 'c', long, default_value_t = 256, value_parser = positive)]
    concurrency: usize,
    /// How long to send, e.g. `10s`, `500ms`, `2m`.
    #[arg(short = 'd', long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Payload size in bytes (at least the 8 digits of the sequence number, at
    /// most what a --max-frame frame carries).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Client runtime worker threads, 1 to 1024 (1: a current-thread runtime).
    /// [default: with the embedded echo server (which runs on a thread of its
    /// own), the cores less one, at least 1; with --connect, the cores]
    #[arg(long, value_parser = thread_count)]
    threads: Option<usize>,
    /// Connections per endpoint, at least 1 (default: the client's, 1 growing
    /// to 4).
    #[arg(long, value_parser = positive)]
    connections_per_endpoint: Option<usize>,
    /// Requests in flight per connection, at least 1 (default: 512).
    #[arg(long, value_parser = positive)]
    max_in_flight: Option<usize>,
    /// Per-request deadline (also the limit of each name lookup at start, at
    /// most 5 s), e.g. `500ms`, `2s`; not zero. [default: 1s]
    #[arg(long, value_parser = positive_duration, conflicts_with = "timeout_ms")]
    timeout: Option<Duration>,
    /// `--timeout` in milliseconds; the older spelling.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: Option<u64>,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Serve anet's metrics as Prometheus text at `http://ADDR/metrics` while
    /// the command runs.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Draw the latency distribution of the run as an SVG chart in FILE.
    #[arg(long, value_name = "FILE")]
    histogram: Option<PathBuf>,
}

/// Options of `anet proxy`.
#[derive(Debug, Args)]
struct ProxyArgs {
    /// Address to listen on for clients (`HOST:PORT`, an IP literal or a name
    /// resolved once); port 0 picks a free port.
    #[arg(long, value_parser = parse_target)]
    listen: Target,
    /// Serve anet's metrics as Prometheus text at `http://ADDR/metrics` while
    /// the command runs.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,
    /// Backend address, `HOST:PORT` or an IP literal (repeat, or list several
    /// after one --connect); a name's every address becomes an endpoint,
    /// re-resolved every --resolve-every.
    #[arg(long, value_parser = parse_target, num_args = 1.., required = true)]
    connect: Vec<Target>,
    /// The clients' frame format (their tags are echoed as they came).
    #[command(flatten)]
    frame: FrameArgs,
    /// Tag format towards the backends (the proxy numbers its own requests in
    /// it). [default: the --tag value]
    #[arg(long, value_parser = parse_tag, value_name = "binary:N|ascii:N")]
    backend_tag: Option<TagFormat>,
    /// Length prefix width towards the backends: 2 or 4. [default: the
    /// --length-width value]
    #[arg(long, value_name = "2|4", value_parser = parse_length_width)]
    backend_length_width: Option<usize>,
    /// Largest frame body (tag + payload), on both sides (at least both tag
    /// widths). Lowered at start, if need be, so that every payload a client
    /// frame can carry fits a backend frame and every backend answer fits a
    /// client frame (a larger client frame closes its connection).
    #[arg(long, default_value_t = 65535)]
    max_frame: usize,
    /// Most client connections open at once (see `anet echo --max-connections`).
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// At --max-connections, evict an idle client connection once it has been
    /// idle this long, e.g. `1s` (`off` = never evict: refuse the newcomer).
    #[arg(long, default_value = "1s", value_parser = optional_duration)]
    evict_idle_after: OptionalDuration,
    /// Most requests served at once per client connection (at least 1).
    #[arg(long, default_value_t = 256, value_parser = positive)]
    max_in_flight: usize,
    /// Most request bytes held for unanswered client requests, all client
    /// connections together (bytes, or `64MiB`, `512KiB`, `1GiB`); at the limit
    /// the proxy stops reading until answers free room.
    #[arg(long, default_value = "64MiB", value_parser = byte_size)]
    max_in_flight_bytes: usize,
    /// Most unanswered client requests held, all client connections together.
    #[arg(long, default_value_t = 10_000)]
    max_in_flight_requests: usize,
    /// Connections to each backend endpoint, kept open, at least 1 (default:
    /// the client's, 1 growing to 4).
    #[arg(long, value_parser = positive)]
    connections_per_endpoint: Option<usize>,
    /// Requests in flight per backend connection, at least 1 (default: 512, or
    /// half the backend tag space when smaller).
    #[arg(long, value_parser = positive)]
    backend_max_in_flight: Option<usize>,
    /// Deadline of a forwarded request (waiting for a backend, retries of unsent
    /// requests, the answer), e.g. `2s`; not zero. [default: 2s]
    #[arg(long, value_parser = positive_duration, conflicts_with = "timeout_ms")]
    timeout: Option<Duration>,
    /// `--timeout` in milliseconds.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: Option<u64>,
    /// What a client sees when its request fails (backend down, timeout):
    /// `no-response` (its own deadline applies; its other requests carry on) or
    /// `close` (its connection is closed once the answers already made are
    /// written).
    #[arg(long, value_enum, default_value_t = ProxyOnError::NoResponse)]
    on_error: ProxyOnError,
    /// How often `--connect` names are resolved again (not zero).
    #[arg(long, default_value = "5s", value_parser = positive_duration)]
    resolve_every: Duration,
}

/// `anet proxy --on-error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ProxyOnError {
    /// Send nothing for a failed request.
    NoResponse,
    /// Close the client's connection.
    Close,
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

/// A duration such as `10s` or `500ms` that is not zero.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match duration(text) {
        Ok(d) if d.is_zero() => Err("must be more than zero".to_owned()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// A count of at least 1.
fn positive(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// A client runtime's worker threads: at least 1, at most
/// [`bench::MAX_CLIENT_THREADS`] (tokio spawns them all when the runtime is
/// built: a huge count takes minutes and gigabytes, or overflows).
fn thread_count(text: &str) -> Result<usize, String> {
    match positive(text)? {
        n if n > bench::MAX_CLIENT_THREADS => {
            Err(format!("must be at most {}", bench::MAX_CLIENT_THREADS))
        }
        n => Ok(n),
    }
}

/// `max_frame` leaves room for a tag of every format in `tags`.
fn check_max_frame(max_frame: usize, tags: &[TagFormat]) -> Result<(), String> {
    match tags.iter().map(|t| t.width()).max() {
        Some(width) if max_frame < width => Err(format!(
            "--max-frame {max_frame} is smaller than the {width}-byte tag"
        )),
        _ => Ok(()),
    }
}

impl Command {
    /// Checks what the flags say together (each flag's own range is checked as
    /// it is parsed).
    fn validate(&self) -> Result<(), String> {
        match self {
            Command::Echo(args) => check_max_frame(args.max_frame, &[args.frame.tag]),
            Command::Send(args) => check_max_frame(args.max_frame, &[args.frame.tag]),
            Command::Bench(args) => {
                check_max_frame(args.max_frame, &[args.frame.tag])?;
                let max = args
                    .frame
                    .builder()
                    .max_frame_length(args.max_frame)
                    .max_payload();
                let size = args.size.max(bench::MIN_SIZE);
                if size > max {
                    return Err(format!(
                        "--size {size}: a frame of --max-frame {} with a {}-byte tag and a \
                         {}-byte length carries at most {max} payload bytes",
                        args.max_frame,
                        args.frame.tag.width(),
                        args.frame.length_width
                    ));
                }
                Ok(())
            }
            Command::Proxy(args) => check_max_frame(
                args.max_frame,
                &[args.frame.tag, args.backend_tag.unwrap_or(args.frame.tag)],
            ),
        }
    }
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
    if let Err(message) = cli.command.validate() {
        // A usage error: exit code 2, as for a flag that does not parse.
        Cli::command()
            .error(ErrorKind::ValueValidation, message)
            .exit();
    }
    let runtime = match &cli.command {
        Command::Bench(args) => bench::client_runtime(bench::client_threads(args)),
        _ => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
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
            Command::Proxy(args) => proxy::run(args).await,
        }
    });
    // A name lookup still running on a blocking thread (one that timed out) must
    // not hold up the exit.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

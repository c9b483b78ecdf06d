//! What several subcommands share: frame options, `host:port` targets, hex.

use std::{
    fmt::{self, Write as _},
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use anet::client::{ClientBuilder, Resolve, future::ResolveFuture};
use anet_proto::{Builder as FrameBuilder, MAX_TAG_LEN, TagFormat};
use anyhow::Context as _;
use clap::Args;

/// How long one name may take to resolve before the command gives up on it.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// `--tag` and `--length-width`: the frame format on the wire.
#[derive(Clone, Copy, Debug, Args)]
pub(crate) struct FrameArgs {
    /// Tag format: `binary:N` (N big-endian bytes, 1-8; Go anet's is `binary:4`)
    /// or `ascii:N` (N ASCII characters, 1-16, e.g. a payShield header
    /// `ascii:4`).
    #[arg(long, default_value = "binary:4", value_parser = parse_tag, value_name = "binary:N|ascii:N")]
    pub(crate) tag: TagFormat,
    /// Bytes in the big-endian length prefix: 2 or 4.
    #[arg(long, default_value_t = 2, value_parser = parse_length_width, value_name = "2|4")]
    pub(crate) length_width: usize,
}

impl FrameArgs {
    /// The frame settings these options describe (other settings at their defaults).
    pub(crate) fn builder(&self) -> FrameBuilder {
        FrameBuilder::new()
            .tag_format(self.tag)
            .length_width(self.length_width)
    }
}

/// Parses `binary:N` (1..=8) or `ascii:N` (1..=16).
pub(crate) fn parse_tag(text: &str) -> Result<TagFormat, String> {
    let (kind, width) = text
        .split_once(':')
        .ok_or_else(|| format!("expected binary:N or ascii:N, got {text:?}"))?;
    let width: usize = width
        .parse()
        .map_err(|_| format!("tag width {width:?} is not a number"))?;
    match kind {
        "binary" if (1..=8).contains(&width) => Ok(TagFormat::binary(width)),
        "binary" => Err(format!("a binary tag is 1 to 8 bytes, not {width}")),
        "ascii" if (1..=MAX_TAG_LEN).contains(&width) => Ok(TagFormat::ascii(width)),
        "ascii" => Err(format!(
            "an ascii tag is 1 to {MAX_TAG_LEN} characters, not {width}"
        )),
        _ => Err(format!(
            "unknown tag format {kind:?}: use binary:N or ascii:N"
        )),
    }
}

/// Parses the length width: 2 or 4.
pub(crate) fn parse_length_width(text: &str) -> Result<usize, String> {
    match text {
        "2" => Ok(2),
        "4" => Ok(4),
        _ => Err(format!("the length width is 2 or 4, not {text:?}")),
    }
}

/// A duration such as `10s`, `500ms` or `2m` (humantime).
pub(crate) fn duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

/// `--timeout` if given, else `--timeout-ms` (its older spelling), else `default`.
pub(crate) fn timeout(
    timeout: Option<Duration>,
    timeout_ms: Option<u64>,
    default: Duration,
) -> Duration {
    timeout
        .or(timeout_ms.map(Duration::from_millis))
        .unwrap_or(default)
}

/// A `--connect` or `--listen` value: an IP literal or a host name, with a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// `127.0.0.1:7878`, `[::1]:7878`.
    Addr(SocketAddr),
    /// `hsm01.example:1500`, kept as written for the resolver.
    Name(String),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addr(addr) => addr.fmt(f),
            Target::Name(name) => f.write_str(name),
        }
    }
}

/// Parses `HOST:PORT`, `IPv4:PORT` or `[IPv6]:PORT`.
pub(crate) fn parse_target(text: &str) -> Result<Target, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(Target::Addr(addr));
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("expected HOST:PORT, got {text:?}"))?;
    if host.is_empty() {
        return Err(format!("no host in {text:?}"));
    }
    if host.contains(':') || host.starts_with('[') {
        return Err(format!(
            "{text:?} is not an address: write IPv6 as [ADDR]:PORT"
        ));
    }
    if host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(format!("{host:?} is not a host name"));
    }
    port.parse::<u16>()
        .map_err(|_| format!("invalid port {port:?} in {text:?}"))?;
    Ok(Target::Name(text.to_owned()))
}

/// How long name lookups may take for a command whose deadline is `timeout`:
/// the deadline, but never more than [`RESOLVE_TIMEOUT`].
pub(crate) fn lookup_limit(timeout: Duration) -> Duration {
    timeout.min(RESOLVE_TIMEOUT)
}

/// Resolves one `host:port` once, within `limit`.
async fn resolve_name(name: &str, limit: Duration) -> io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(limit, tokio::net::lookup_host(name)).await {
            Ok(found) => found?.collect(),
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {limit:?}"),
                ));
            }
        };
    if addrs.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no address"));
    }
    Ok(addrs)
}

/// The addresses of `target`: itself, or what its name resolves to now (within
/// `limit`).
///
/// # Errors
///
/// When the name does not resolve within `limit` to any address.
pub(crate) async fn resolve(target: &Target, limit: Duration) -> anyhow::Result<Vec<SocketAddr>> {
    match target {
        Target::Addr(addr) => Ok(vec![*addr]),
        Target::Name(name) => resolve_name(name, limit)
            .await
            .with_context(|| format!("cannot resolve {name}")),
    }
}

/// A client builder with `targets` as its endpoints.
///
/// Every name is resolved now (each within `limit`), so one that does not
/// resolve is an error before anything starts. With `follow` the names are then
/// re-resolved on that interval through the client's DNS discovery (every
/// address becomes an endpoint, and changes are followed; a name that stops
/// resolving keeps its last addresses); without it the addresses found now are
/// static endpoints.
///
/// # Errors
///
/// When a name does not resolve.
pub(crate) async fn client_builder(
    targets: &[Target],
    follow: Option<Duration>,
    limit: Duration,
) -> anyhow::Result<ClientBuilder> {
    let mut builder = ClientBuilder::new();
    let mut names = Vec::new();
    for target in targets {
        let addrs = resolve(target, limit).await?;
        match (target, follow) {
            (Target::Name(name), Some(_)) => names.push((name.clone(), addrs)),
            _ => builder = builder.endpoints(addrs),
        }
    }
    if let (false, Some(every)) = (names.is_empty(), follow) {
        // One DNS source for all the names: the resolver answers with the union
        // of every name's latest good answer.
        let joined = names
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let lookup: Lookup = Arc::new(|name: String| {
            Box::pin(async move { resolve_name(&name, RESOLVE_TIMEOUT).await })
        });
        builder = builder
            .dns(joined, every)
            .resolver(Names::new(names, lookup));
    }
    Ok(builder)
}

/// Names with their addresses, in `--connect` order.
type Answers = Vec<(String, Vec<SocketAddr>)>;

/// Looks one name up (the system resolver in the tool, a script in tests).
type Lookup = Arc<dyn Fn(String) -> ResolveFuture + Send + Sync>;

/// Resolves every name of a `--connect` list. Each name's last good answer is
/// kept: a name whose lookup fails contributes those addresses, so one failing
/// name does not stop discovery for the others. The answer is the union; it is
/// an error (the client then keeps its current endpoints) only when every name
/// fails.
struct Names {
    /// The names with their last good answers, in `--connect` order.
    known: Arc<Mutex<Answers>>,
    /// How one name is looked up.
    lookup: Lookup,
}

impl Names {
    /// A resolver of `names`, seeded with the answers found at start.
    fn new(names: Answers, lookup: Lookup) -> Names {
        Names {
            known: Arc::new(Mutex::new(names)),
            lookup,
        }
    }
}

impl fmt::Debug for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Names").finish_non_exhaustive()
    }
}

impl Resolve for Names {
    fn resolve(&self, _joined: &str) -> ResolveFuture {
        let known = self.known.clone();
        let lookup = self.lookup.clone();
        Box::pin(async move {
            let names: Vec<String> = lock(&known).iter().map(|(n, _)| n.clone()).collect();
            let mut all = Vec::new();
            let mut failures = 0;
            let mut last_error = None;
            for (i, name) in names.iter().enumerate() {
                let answer = match lookup(name.clone()).await {
                    Ok(addrs) if addrs.is_empty() => {
                        Err(io::Error::new(io::ErrorKind::NotFound, "no address"))
                    }
                    answer => answer,
                };
                let mut known = lock(&known);
                match answer {
                    Ok(addrs) => {
                        all.extend_from_slice(&addrs);
                        known[i].1 = addrs;
                    }
                    Err(error) => {
                        tracing::warn!(%name, %error, "resolve failed; keeping its last addresses");
                        all.extend_from_slice(&known[i].1);
                        failures += 1;
                        last_error = Some(error);
                    }
                }
            }
            match last_error {
                Some(error) if failures == names.len() => Err(error),
                _ => Ok(all),
            }
        })
    }
}

/// `mutex`'s contents, also after a panic elsewhere (the data stays consistent:
/// every write is a single assignment).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Binds a server of `builder`'s settings on `target`: an address, or the first
/// address a name resolves to that can be bound (resolved once).
///
/// # Errors
///
/// When the name does not resolve or no address can be bound.
pub(crate) async fn bind(
    builder: anet::server::Builder,
    target: &Target,
) -> anyhow::Result<anet::server::Server> {
    let mut last = None;
    for addr in resolve(target, RESOLVE_TIMEOUT).await? {
        match builder.bind(addr).await {
            Ok(server) => return Ok(server),
            Err(e) => last = Some((addr, e)),
        }
    }
    let (addr, e) = last.expect("resolve returns at least one address");
    Err(e).with_context(|| format!("cannot listen on {target} ({addr})"))
}

/// Logs to stderr, filtered by `RUST_LOG` (e.g. `RUST_LOG=anet=debug`);
/// warnings and errors when it is unset or does not parse.
pub(crate) fn init_logging() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .try_init();
}

/// How long a server's graceful shutdown waits for requests in flight (the
/// server's default shutdown grace).
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Completes at the first Ctrl-C (starting a graceful shutdown); a second
/// Ctrl-C ends the process at once with exit code 130.
pub(crate) async fn shutdown_signal() {
    if tokio::signal::ctrl_c().await.is_err() {
        // No signal handling: never shut down on a signal.
        std::future::pending::<()>().await;
    }
    eprintln!(
        "shutting down: answering requests in flight (up to {} s); Ctrl-C again to exit now",
        SHUTDOWN_GRACE.as_secs()
    );
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("second Ctrl-C: exiting now");
            std::process::exit(130);
        }
    });
}

/// The bytes written as hex digits (whitespace between them is ignored).
///
/// # Errors
///
/// On a character that is not a hex digit, or an odd number of digits.
pub(crate) fn from_hex(text: &str) -> anyhow::Result<Vec<u8>> {
    let digits: Vec<u8> = text
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .map(|b| match b {
            b'0'..=b'9' => Ok(b - b'0'),
            b'a'..=b'f' => Ok(b - b'a' + 10),
            b'A'..=b'F' => Ok(b - b'A' + 10),
            _ => Err(anyhow::anyhow!(
                "--hex-input: {:?} is not a hex digit",
                char::from(b)
            )),
        })
        .collect::<Result<_, _>>()?;
    if digits.len() % 2 != 0 {
        anyhow::bail!("--hex-input: an odd number of hex digits");
    }
    Ok(digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect())
}

/// `bytes` as lowercase hex digits.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_parse_in_both_formats_and_reject_bad_widths() {
        assert_eq!(parse_tag("binary:4"), Ok(TagFormat::BINARY_U32));
        assert_eq!(parse_tag("ascii:4"), Ok(TagFormat::ascii(4)));
        assert_eq!(parse_tag("binary:1"), Ok(TagFormat::binary(1)));
        assert!(parse_tag("binary:9").is_err());
        assert!(parse_tag("ascii:0").is_err());
        assert!(parse_tag("ascii:17").is_err());
        assert!(parse_tag("hex:4").is_err());
        assert!(parse_tag("ascii").is_err());
        assert!(parse_tag("ascii:x").is_err());
    }

    #[test]
    fn targets_are_addresses_or_names_with_a_port() {
        assert_eq!(
            parse_target("127.0.0.1:80"),
            Ok(Target::Addr("127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            parse_target("[::1]:80"),
            Ok(Target::Addr("[::1]:80".parse().unwrap()))
        );
        assert_eq!(
            parse_target("hsm01.example:1500"),
            Ok(Target::Name("hsm01.example:1500".into()))
        );
        assert_eq!(
            parse_target("localhost:0"),
            Ok(Target::Name("localhost:0".into()))
        );
        for bad in ["localhost", ":80", "host:", "host:70000", "::1:80", "a b:1"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hex_round_trips_and_rejects_bad_input() {
        assert_eq!(from_hex("4e43").unwrap(), b"NC");
        assert_eq!(from_hex("4E 43\n").unwrap(), b"NC");
        assert_eq!(from_hex("").unwrap(), b"");
        assert!(from_hex("4e4").is_err());
        assert!(from_hex("zz").is_err());
        assert_eq!(to_hex(b"NC\x00"), "4e4300");
    }

    /// A resolver whose answers the test sets per name (an error when unset).
    fn scripted(answers: Arc<Mutex<Answers>>) -> Lookup {
        Arc::new(move |name: String| {
            let answer = lock(&answers)
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, addrs)| addrs.clone());
            Box::pin(async move {
                answer.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "scripted failure"))
            })
        })
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test]
    async fn a_failing_name_keeps_its_last_addresses_and_the_others_are_followed() {
        let answers = Arc::new(Mutex::new(vec![
            ("a:1".to_owned(), vec![addr(1)]),
            ("b:2".to_owned(), vec![addr(2), addr(3)]),
        ]));
        let names = Names::new(
            vec![
                ("a:1".to_owned(), vec![addr(1)]),
                ("b:2".to_owned(), vec![addr(2)]),
            ],
            scripted(answers.clone()),
        );
        // Both resolve: the union of the new answers.
        assert_eq!(
            names.resolve("").await.unwrap(),
            [addr(1), addr(2), addr(3)]
        );
        // `a` fails: its last answer stays, `b` changes are still followed.
        lock(&answers)[0].0 = "gone".to_owned();
        lock(&answers)[1].1 = vec![addr(4)];
        assert_eq!(names.resolve("").await.unwrap(), [addr(1), addr(4)]);
        // Every name fails (an empty answer counts as a failure): an error, so
        // the client keeps its endpoints.
        lock(&answers)[1].1 = Vec::new();
        assert!(names.resolve("").await.is_err());
        // `a` is back with a new address; `b` still contributes its last one.
        lock(&answers)[0] = ("a:1".to_owned(), vec![addr(5)]);
        assert_eq!(names.resolve("").await.unwrap(), [addr(5), addr(4)]);
    }
}

//! What several subcommands share: frame options, `host:port` targets, hex.

use std::{
    fmt::{self, Write as _},
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    time::Duration,
};

use anet::client::{ClientBuilder, Resolve};
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

/// Resolves one `host:port` once, within [`RESOLVE_TIMEOUT`].
async fn resolve_name(name: &str) -> io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(name)).await {
            Ok(found) => found?.collect(),
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no answer within {RESOLVE_TIMEOUT:?}"),
                ));
            }
        };
    if addrs.is_empty() {
        return Err(io::Error::new(io::ErrorKind::NotFound, "no address"));
    }
    Ok(addrs)
}

/// The addresses of `target`: itself, or what its name resolves to now.
///
/// # Errors
///
/// When the name does not resolve (within a few seconds) to any address.
pub(crate) async fn resolve(target: &Target) -> anyhow::Result<Vec<SocketAddr>> {
    match target {
        Target::Addr(addr) => Ok(vec![*addr]),
        Target::Name(name) => resolve_name(name)
            .await
            .with_context(|| format!("cannot resolve {name}")),
    }
}

/// A client builder with `targets` as its endpoints.
///
/// Every name is resolved now, so one that does not resolve is an error before
/// anything starts. With `follow` the names are then re-resolved on that interval
/// through the client's DNS discovery (every address becomes an endpoint, and
/// changes are followed); without it the addresses found now are static endpoints.
///
/// # Errors
///
/// When a name does not resolve.
pub(crate) async fn client_builder(
    targets: &[Target],
    follow: Option<Duration>,
) -> anyhow::Result<ClientBuilder> {
    let mut builder = ClientBuilder::new();
    let mut names = Vec::new();
    for target in targets {
        let addrs = resolve(target).await?;
        match (target, follow) {
            (Target::Name(name), Some(_)) => names.push(name.clone()),
            _ => builder = builder.endpoints(addrs),
        }
    }
    if let (false, Some(every)) = (names.is_empty(), follow) {
        // One DNS source for all the names: the resolver answers with the union,
        // or fails (keeping the current endpoints) when any name fails.
        builder = builder
            .dns(names.join(","), every)
            .resolver(Names(Arc::new(names)));
    }
    Ok(builder)
}

/// Resolves every name of a `--connect` list: the union of their addresses, or
/// the first failure (the client then keeps its current endpoints).
#[derive(Debug)]
struct Names(Arc<Vec<String>>);

impl Resolve for Names {
    fn resolve(
        &self,
        _joined: &str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>> {
        let names = self.0.clone();
        Box::pin(async move {
            let mut all = Vec::new();
            for name in names.iter() {
                all.extend(resolve_name(name).await?);
            }
            Ok(all)
        })
    }
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
    for addr in resolve(target).await? {
        match builder.bind(addr).await {
            Ok(server) => return Ok(server),
            Err(e) => last = Some((addr, e)),
        }
    }
    let (addr, e) = last.expect("resolve returns at least one address");
    Err(e).with_context(|| format!("cannot listen on {target} ({addr})"))
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
}

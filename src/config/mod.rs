//! lb.toml: the schema (schema v1), its defaults, and validation that reports *every*
//! problem as `PATH:LINE:COL: message`.
//!
//! Pure: no sockets, no shared state. The reload path and `clonelb check` both call
//! [`load`] / [`parse`], so a file `check` accepts is exactly a file `run` accepts.
//!
//! Why a hand-written walker and not `#[derive(Deserialize)]`: serde stops at the first
//! error, and ops want the whole list at once. The TOML is parsed by the `toml` crate into
//! a spanned document tree ([`DeTable`]); this module walks that tree, checks every key
//! and value against the schema, and builds [`Config`]. Positions come from the spans, so
//! each message points at the offending key or value (the second occurrence, for
//! duplicates).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use toml::de::DeTable;

use crate::error::ConfigError;

mod walk;
use walk::Walker;

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub listen: ListenConfig,
    pub balancer: BalancerConfig,
    pub proxy: ProxyConfig,
    /// `None` when `[health]` is absent: no active checks (passive ejection still applies).
    pub health: Option<HealthConfig>,
    pub limits: LimitsConfig,
    pub backends: Vec<BackendConfig>,
}

impl Config {
    /// Consecutive connection-level failures that eject a clone: `[health]
    /// unhealthy_threshold`, or its default when `[health]` is absent.
    pub fn ejection_threshold(&self) -> u32 {
        self.health
            .as_ref()
            .map_or(DEFAULT_UNHEALTHY_THRESHOLD, |h| h.unhealthy_threshold)
    }

    /// Whether a 5xx answer counts as a failure towards passive ejection.
    pub fn eject_on_5xx(&self) -> bool {
        self.health.as_ref().is_some_and(|h| h.eject_on_5xx)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenConfig {
    /// Plain-HTTP listener (HTTP/1.1, and HTTP/2 by prior knowledge).
    pub http: Option<SocketAddr>,
    /// HTTPS listener (ALPN h2 and http/1.1); needs `tls_cert` and `tls_key`.
    pub https: Option<SocketAddr>,
    /// PEM certificate chain, leaf first; relative paths are from lb.toml's directory.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<PathBuf>,
}

impl ListenConfig {
    /// Plain HTTP on `addr` only.
    pub fn http(addr: SocketAddr) -> Self {
        ListenConfig {
            http: Some(addr),
            https: None,
            tls_cert: None,
            tls_key: None,
        }
    }

    /// The listener addresses, which a reload cannot change.
    pub fn addresses(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        (self.http, self.https)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct BalancerConfig {
    pub strategy: StrategyKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyKind {
    #[default]
    RoundRobin,
    LeastConnections,
}

impl StrategyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round-robin",
            StrategyKind::LeastConnections => "least-connections",
        }
    }
}

/// `[proxy]`: timeouts of one proxied request and its client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProxyConfig {
    /// Opening a TCP connection to a clone; past it → 502.
    pub connect_timeout: Duration,
    /// Per attempt, from sending the request until the clone's response headers; → 504.
    pub response_timeout: Duration,
    /// A kept-alive client connection with no request in progress is closed after this.
    pub idle_timeout: Duration,
    /// From accept (or a later request's first byte) to the end of the request headers.
    pub header_read_timeout: Duration,
    /// Further attempts on other clones (so at most 1 + retries attempts).
    pub retries: u32,
    /// Also retry a response timeout (idempotent requests without a body only).
    pub retry_on_timeout: bool,
    /// Without `[health]`: how long a passively ejected clone stays out.
    pub ejection_time: Duration,
    /// A clone removed by a reload is dropped when idle, or after this (cutting what is
    /// still in flight).
    pub drain_timeout: Duration,
    /// On SIGTERM/SIGINT, requests in flight get this long to finish.
    pub shutdown_timeout: Duration,
    /// A request body that sends nothing for this long between frames is aborted (408).
    pub body_read_timeout: Duration,
    /// Keep an incoming `X-Forwarded-For` and append the client (true), or replace it with
    /// the client alone (false, for an edge balancer that must not trust clients).
    pub trust_forwarded: bool,
    /// HTTP/2: concurrent streams per client connection.
    pub max_concurrent_streams: u32,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            header_read_timeout: Duration::from_secs(10),
            retries: 2,
            retry_on_timeout: false,
            ejection_time: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            trust_forwarded: true,
            max_concurrent_streams: 100,
        }
    }
}

/// `[limits]`: what one client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LimitsConfig {
    /// Request target longer than this → 414.
    pub max_request_line: u64,
    /// Request line + headers larger than this → 431. At least 8 KiB (hyper's minimum
    /// read buffer).
    pub max_header_size: u64,
    /// More header fields than this → 431.
    pub max_headers: u64,
    /// Request body larger than this → 413; 0 = unlimited.
    pub max_body: u64,
    /// Open client connections (all listeners); beyond it new connections wait in the
    /// accept backlog.
    pub max_connections: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_request_line: 8 * 1024,
            max_header_size: 32 * 1024,
            max_headers: 100,
            max_body: 0,
            max_connections: 10_000,
        }
    }
}

/// hyper cannot read request heads with a buffer under 8 KiB.
pub const MIN_HEADER_SIZE: u64 = 8 * 1024;

pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
pub const MAX_RETRIES: u32 = 100;

/// `[health]`: active health checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthConfig {
    /// GET this path on every clone.
    pub path: String,
    pub interval: Duration,
    /// Per check, connect to status line; shorter than `interval`.
    pub timeout: Duration,
    /// Consecutive passes before a down clone is put back.
    pub healthy_threshold: u32,
    /// Consecutive failures before an up clone is taken out.
    pub unhealthy_threshold: u32,
    /// Statuses that count as a pass.
    pub expect_status: StatusRanges,
    /// `Host` header of the checks; the clone's address when unset.
    pub host: Option<String>,
    /// A new clone must pass `healthy_threshold` checks before it gets traffic.
    pub start_unhealthy: bool,
    /// Count 5xx answers to real requests as failures towards passive ejection.
    pub eject_on_5xx: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            path: "/healthz".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: DEFAULT_UNHEALTHY_THRESHOLD,
            expect_status: StatusRanges(vec![(200, 399)]),
            host: None,
            start_unhealthy: false,
            eject_on_5xx: false,
        }
    }
}

/// A set of status codes: "200-399", "200", "200,204", or a mix ("200-299,304").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusRanges(pub Vec<(u16, u16)>);

impl StatusRanges {
    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&status))
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        let code = |t: &str| -> Result<u16, String> {
            match t.trim().parse::<u16>() {
                Ok(c) if (100..=599).contains(&c) => Ok(c),
                _ => Err(format!("\"{}\" is not a status code (100..=599)", t.trim())),
            }
        };
        let mut out = Vec::new();
        for part in s.split(',') {
            let range = match part.split_once('-') {
                Some((lo, hi)) => (code(lo)?, code(hi)?),
                None => {
                    let c = code(part)?;
                    (c, c)
                }
            };
            if range.0 > range.1 {
                return Err(format!("range {}-{} is empty", range.0, range.1));
            }
            out.push(range);
        }
        Ok(StatusRanges(out))
    }
}

/// One `[[backend]]`: a clone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendConfig {
    pub address: SocketAddr,
    /// Defaults to the address as written.
    pub name: String,
    /// 1..=1000, default 1.
    pub weight: u32,
}

pub const MAX_WEIGHT: u32 = 1000;

/// One problem with its 1-based position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub col: usize,
    pub error: ConfigError,
}

/// A file that could not be loaded: every problem found, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub path: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl LoadError {
    /// The `PATH:LINE:COL: message` lines, one per problem.
    pub fn lines(&self) -> Vec<String> {
        self.diagnostics
            .iter()
            .map(|d| format_diagnostic(&self.path, d))
            .collect()
    }
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.lines().join("\n"))
    }
}

impl std::error::Error for LoadError {}

pub fn format_diagnostic(path: &str, d: &Diagnostic) -> String {
    format!("{path}:{}:{}: {}", d.line, d.col, d.error)
}

/// A valid configuration and the warnings found on the way (e.g. no clones).
#[derive(Debug, Clone)]
pub struct Checked {
    pub config: Config,
    pub warnings: Vec<Diagnostic>,
    /// Where `tls_cert` and `tls_key` are written (line, column), to point at them when
    /// the files turn out unusable.
    pub tls_cert_at: (usize, usize),
    pub tls_key_at: (usize, usize),
}

/// Read and validate the file at `path`.
pub fn load(path: &Path) -> Result<Checked, LoadError> {
    let label = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(src) => parse(&label, &src),
        Err(e) => Err(LoadError {
            path: label,
            diagnostics: vec![Diagnostic {
                line: 1,
                col: 1,
                error: ConfigError::Io(e.to_string()),
            }],
        }),
    }
}

/// Validate lb.toml text; `path` is only used to label the problems.
pub fn parse(path: &str, src: &str) -> Result<Checked, LoadError> {
    let mut w = Walker {
        src,
        base: Path::new(path).parent().map(Path::to_path_buf),
        diags: Vec::new(),
        tls_spans: (0..0, 0..0),
    };
    let (doc, syntax) = DeTable::parse_recoverable(src);
    for e in syntax {
        let span = e.span().unwrap_or(0..0);
        w.report(
            span,
            ConfigError::Syntax {
                message: e.message().trim().to_string(),
            },
        );
    }
    // After a syntax error the recovered document is partial; checking its schema would
    // report problems that are not there. Syntax first.
    let config = if w.diags.is_empty() {
        w.config(doc.get_ref(), doc.span())
    } else {
        None
    };
    w.diags.sort_by_key(|(span, _)| span.start);
    let (warnings, errors): (Vec<_>, Vec<_>) = std::mem::take(&mut w.diags)
        .into_iter()
        .map(|(span, error)| {
            let (line, col) = line_col(src, span.start);
            Diagnostic { line, col, error }
        })
        .partition(|d| d.error.is_warning());
    match config {
        Some(config) if errors.is_empty() => Ok(Checked {
            config,
            warnings,
            tls_cert_at: line_col(src, w.tls_spans.0.start),
            tls_key_at: line_col(src, w.tls_spans.1.start),
        }),
        _ => Err(LoadError {
            path: path.to_string(),
            diagnostics: errors,
        }),
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

/// Parse "250ms", "2s", "1m", "1h" (humantime's grammar, which also takes "1h 30m").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    use humantime::DurationError as E;
    let d = humantime::parse_duration(s.trim()).map_err(|e| match e {
        E::UnknownUnit { unit, .. } if unit.is_empty() => "missing unit".to_string(),
        E::UnknownUnit { unit, .. } => format!("unknown unit \"{unit}\""),
        E::NumberOverflow => "too large".to_string(),
        E::Empty => "empty".to_string(),
        _ => "not a number followed by a unit".to_string(),
    })?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

/// A byte count: "4096", "512B", "8KiB", "16MiB", "1GiB" (binary units only, so "8KB"
/// cannot be misread as 8,000 or 8,192).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let n: u64 = number
        .parse()
        .map_err(|_| "expected an integer and an optional unit B, KiB, MiB or GiB".to_string())?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => return Err(format!("unknown unit \"{other}\" (use B, KiB, MiB or GiB)")),
    };
    n.checked_mul(scale).ok_or_else(|| "too large".to_string())
}

/// `IP:PORT`, `[IPv6]:PORT` or `localhost:PORT` (read as 127.0.0.1); port 0 is returned as
/// is (only a listener may use it). Host names are not
/// resolved: a balancer must not block a reload on DNS, and DNS-based discovery of clones
/// is its own feature.
pub fn parse_address(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err("missing :PORT".into());
    };
    let port: u16 = port
        .parse()
        .map_err(|_| format!("port \"{port}\" is not a number in 1..=65535"))?;
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if host.parse::<IpAddr>().is_ok() {
        // e.g. "::1:80": an IPv6 address needs brackets to carry a port.
        return Err("an IPv6 address with a port must be written [ADDR]:PORT".into());
    }
    Err(format!(
        "\"{host}\" is not an IP address (host names are not resolved)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(src: &str) -> Vec<String> {
        match parse("lb.toml", src) {
            Ok(_) => vec![],
            Err(e) => e.lines(),
        }
    }

    const MINIMAL: &str = "[listen]\nhttp = \"127.0.0.1:8080\"\n";

    #[test]
    fn defaults() {
        let c = parse("lb.toml", MINIMAL).unwrap();
        assert_eq!(c.config.proxy, ProxyConfig::default());
        assert_eq!(c.config.balancer.strategy, StrategyKind::RoundRobin);
        assert!(c.config.backends.is_empty());
        assert_eq!(c.warnings.len(), 1);
        assert_eq!(c.warnings[0].error, ConfigError::NoBackends);
    }

    #[test]
    fn full_file() {
        let src = r#"
[listen]
http = "127.0.0.1:8080"
[balancer]
strategy = "least-connections"
[proxy]
connect_timeout = "250ms"
response_timeout = "2s"
idle_timeout = "1m"
header_read_timeout = "1h"
[[backend]]
address = "127.0.0.1:9001"
name = "a"
weight = 3
[[backend]]
address = "localhost:9002"
"#;
        let c = parse("lb.toml", src).unwrap().config;
        assert_eq!(c.balancer.strategy, StrategyKind::LeastConnections);
        assert_eq!(c.proxy.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.proxy.header_read_timeout, Duration::from_secs(3600));
        assert_eq!(c.backends[0].weight, 3);
        assert_eq!(c.backends[1].name, "localhost:9002");
        assert_eq!(c.backends[1].address, "127.0.0.1:9002".parse().unwrap());
    }

    #[test]
    fn all_problems_reported_with_positions() {
        let src = "[listen]\nhttp = \"127.0.0.1:8080\"\n[proxy]\nconect_timeout = \"1s\"\nidle_timeout = \"soon\"\n[[backend]]\nadress = \"127.0.0.1:1\"\n[[backend]]\naddress = \"127.0.0.1:2\"\nweight = 0\n";
        let e = errors(src);
        assert_eq!(
            e,
            vec![
                "lb.toml:4:1: unknown key `conect_timeout` in [proxy] (did you mean `connect_timeout`?)",
                "lb.toml:5:16: invalid duration \"soon\" for `idle_timeout`: not a number followed by a unit (use an integer and a unit: \"250ms\", \"2s\", \"1m\", \"1h\")",
                "lb.toml:6:1: missing required key `address` in [[backend]]",
                "lb.toml:7:1: unknown key `adress` in [[backend]] (did you mean `address`?)",
                "lb.toml:10:10: weight 0 is out of range (1..=1000)",
            ]
        );
    }

    #[test]
    fn duplicates_point_at_second() {
        let src = "[listen]\nhttp = \"127.0.0.1:8080\"\n[[backend]]\naddress = \"127.0.0.1:1\"\nname = \"x\"\n[[backend]]\naddress = \"127.0.0.1:1\"\nname = \"x\"\n";
        let e = errors(src);
        assert_eq!(
            e,
            vec![
                "lb.toml:7:11: duplicate clone address 127.0.0.1:1 (first used on line 4)",
                "lb.toml:8:8: duplicate clone name \"x\" (first used on line 5)",
            ]
        );
    }

    #[test]
    fn addresses() {
        assert!(parse_address("127.0.0.1:80").is_ok());
        assert!(parse_address("[::1]:80").is_ok());
        assert!(parse_address("127.0.0.1").unwrap_err().contains("PORT"));
        assert!(parse_address("::1:80").unwrap_err().contains("[ADDR]"));
        assert!(parse_address("app1:80")
            .unwrap_err()
            .contains("not resolved"));
        assert_eq!(parse_address("127.0.0.1:0").unwrap().port(), 0);
        let e =
            errors("[listen]\nhttp = \"127.0.0.1:0\"\n[[backend]]\naddress = \"127.0.0.1:0\"\n");
        assert_eq!(e, vec!["lb.toml:4:11: invalid address \"127.0.0.1:0\": port must be 1..=65535 (expected IP:PORT, e.g. \"127.0.0.1:9001\" or \"[::1]:9001\")"]);
        assert!(parse_address("127.0.0.1:99999").is_err());
    }

    #[test]
    fn health_section() {
        let ok = parse(
            "t",
            "[listen]\nhttp = \"127.0.0.1:1\"\n[health]\npath = \"/up\"\nexpect_status = \"200-299,304\"\nstart_unhealthy = true\n[proxy]\nretries = 0\nretry_on_timeout = true\nejection_time = \"5s\"\n",
        )
        .unwrap()
        .config;
        let h = ok.health.clone().unwrap();
        assert_eq!(h.path, "/up");
        assert!(h.expect_status.contains(304) && h.expect_status.contains(204));
        assert!(!h.expect_status.contains(302));
        assert!(h.start_unhealthy && !h.eject_on_5xx);
        assert_eq!((h.healthy_threshold, h.unhealthy_threshold), (2, 3));
        assert_eq!((ok.proxy.retries, ok.proxy.retry_on_timeout), (0, true));
        assert_eq!(ok.proxy.ejection_time, Duration::from_secs(5));

        let e = errors("[listen]\nhttp = \"127.0.0.1:1\"\n[health]\ninterval = \"1s\"\ntimeout = \"1s\"\nhealthy_threshold = 0\nexpect_status = \"200-99\"\npath = \"healthz\"\neject_on_5xx = \"yes\"\n");
        assert_eq!(
            e,
            vec![
                "lb.toml:5:11: health `timeout` (1s) must be shorter than `interval` (1s)",
                "lb.toml:6:21: `healthy_threshold` = 0 is out of range (1..=4294967295)",
                "lb.toml:7:17: invalid status set \"200-99\": \"99\" is not a status code (100..=599) (e.g. \"200-399\", \"200\", \"200,204\")",
                "lb.toml:8:8: health check path \"healthz\" must start with '/'",
                "lb.toml:9:16: `eject_on_5xx` must be true or false, found string",
            ]
        );
        assert_eq!(
            errors("[listen]\nhttp = \"127.0.0.1:1\"\n[proxy]\nretries = 101\n"),
            vec!["lb.toml:4:11: `retries` = 101 is out of range (0..=100)"]
        );
    }

    #[test]
    fn limits_and_sizes() {
        assert_eq!(parse_size("8KiB"), Ok(8192));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("3 MiB"), Ok(3 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("8KB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("lots").is_err());
        let c = parse(
            "t",
            "[listen]\nhttp = \"127.0.0.1:1\"\n[limits]\nmax_body = \"1MiB\"\nmax_headers = 50\n",
        )
        .unwrap()
        .config;
        assert_eq!((c.limits.max_body, c.limits.max_headers), (1 << 20, 50));
        assert_eq!(c.limits.max_header_size, 32 * 1024);
        let e = errors("[listen]\nhttp = \"127.0.0.1:1\"\n[limits]\nmax_header_size = \"4KiB\"\nmax_body = \"1MB\"\n");
        assert_eq!(
            e,
            vec![
                "lb.toml:4:19: `max_header_size` = 4096 is below its minimum 8192",
                "lb.toml:5:12: invalid size \"1MB\" for `max_body`: unknown unit \"MB\" (use B, KiB, MiB or GiB)",
            ]
        );
    }

    #[test]
    fn line_col_counts_chars() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("", 0), (1, 1));
    }
}

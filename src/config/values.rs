//! Owns the grammars of lb.toml's value kinds that are written as strings: durations,
//! byte sizes, socket addresses and status sets. Each parser takes a `&str` and returns
//! the value or the reason it is not one, with no position; the walker adds the key, the
//! position and the hint.
//!
//! Pure functions only: no I/O (host names are not resolved), no shared state, nothing
//! from the rest of the crate.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

/// The statuses whose answers clonelb builds itself, so `[error_pages]` may replace them.
pub const ERROR_PAGE_STATUSES: [u16; 7] = [400, 408, 413, 414, 502, 503, 504];

/// The largest error page file read.
pub const MAX_ERROR_PAGE: u64 = 64 * 1024;

/// The content type of an error page, by its file's extension: `.html`, `.json`, `.txt`.
pub fn page_content_type(path: &Path) -> Option<&'static str> {
    match path.extension()?.to_str()? {
        "html" => Some("text/html; charset=utf-8"),
        "json" => Some("application/json"),
        "txt" => Some("text/plain; charset=utf-8"),
        _ => None,
    }
}

/// The longest duration any lb.toml key accepts: 24 hours. Longer timeouts are typos
/// ("2days" for "2s") more often than intent.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Parse a duration in humantime's grammar: one or more spans, each a decimal number
/// (optionally with a fraction) and a unit, spaces allowed ("250ms", "2s", "1.5s",
/// "1h 30m", "30 sec", "2days"). The README's lb.toml reference lists the units. Zero is
/// rejected here; the upper bound ([`MAX_DURATION`]) is the validator's.
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
/// is (only a listener may use it). Host names are not resolved here: a balancer must not
/// block a reload on DNS. A clone's `address` may be a host name ([`parse_clone_target`]),
/// which the resolver task resolves after the reload.
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

/// A clone's `address` as written: an IP address (or `localhost`) and a port, which is one
/// clone, or a host name and a port, whose A/AAAA records are the clones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloneTarget {
    Ip(SocketAddr),
    Host { host: String, port: u16 },
}

/// A clone's `address`: what [`parse_address`] takes, or `HOST:PORT` with a valid DNS name.
/// Port 0 is returned as is (the validator refuses it).
pub fn parse_clone_target(s: &str) -> Result<CloneTarget, String> {
    let ip_error = match parse_address(s) {
        Ok(a) => return Ok(CloneTarget::Ip(a)),
        Err(e) => e,
    };
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(ip_error);
    };
    // An IP-looking host (or a port problem) keeps parse_address's reason.
    let Ok(port) = port.parse::<u16>() else {
        return Err(ip_error);
    };
    if host.contains(':') || host.starts_with('[') {
        return Err(ip_error);
    }
    check_dns_name(host).map_err(|reason| {
        format!("\"{host}\" is neither an IP address nor a host name: {reason}")
    })?;
    Ok(CloneTarget::Host {
        host: host.to_string(),
        port,
    })
}

/// A DNS name as lb.toml may give it (a host or an SRV name): labels of letters, digits,
/// `-` and `_` (SRV names start with `_service._proto.`), each 1..=63 bytes, at most 253 in
/// all, an optional final dot; not all digits and dots (that is a mistyped IP address).
pub fn check_dns_name(s: &str) -> Result<(), String> {
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.len() > 253 {
        return Err("longer than 253 bytes".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (two dots in a row)".into());
        }
        if label.len() > 63 {
            return Err(format!("label \"{label}\" is longer than 63 bytes"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("'{c}' is not allowed in a host name"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label \"{label}\" starts or ends with '-'"));
        }
    }
    if name.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err("all digits: not a valid IP address either".into());
    }
    Ok(())
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

/// A secret from lb.toml (the admin token): never printed. `Debug` and `Serialize` show
/// `<redacted>`; [`Secret::matches`] compares in constant time.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// Whether `candidate` is the secret, in time that depends only on the lengths (no
    /// early exit on the first differing byte).
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let secret = self.0.as_bytes();
        let mut diff = u8::from(secret.len() != candidate.len());
        for (i, &b) in secret.iter().enumerate() {
            diff |= b ^ candidate.get(i).copied().unwrap_or(!b);
        }
        diff == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

/// A key whose value is one of a fixed set of words (read by the `choice` validator).
pub trait Choice: Copy + 'static {
    const ALL: &'static [Self];
    fn as_str(self) -> &'static str;
}

/// `[log] access`: the access log's format, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessFormat {
    Off,
    /// Apache/nginx "combined", then duration (s), clone and request ID.
    Combined,
    Json,
}

impl Choice for AccessFormat {
    const ALL: &'static [Self] = &[
        AccessFormat::Off,
        AccessFormat::Combined,
        AccessFormat::Json,
    ];
    fn as_str(self) -> &'static str {
        match self {
            AccessFormat::Off => "off",
            AccessFormat::Combined => "combined",
            AccessFormat::Json => "json",
        }
    }
}

/// `[log] format` (and `--log-format`): clonelb's own log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Choice for LogFormat {
    const ALL: &'static [Self] = &[LogFormat::Text, LogFormat::Json];
    fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// `[deploy] mode`: route to every up clone (`"mixed"`), or only to up clones of the
/// active version (`"atomic"`, needs `[health] version_header`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployMode {
    #[default]
    Mixed,
    Atomic,
}

impl Choice for DeployMode {
    const ALL: &'static [Self] = &[DeployMode::Mixed, DeployMode::Atomic];
    fn as_str(self) -> &'static str {
        match self {
            DeployMode::Mixed => "mixed",
            DeployMode::Atomic => "atomic",
        }
    }
}

/// `[deploy] cutover_at`: up clones a new version needs to become active: a count (≥ 1)
/// or a share `"N%"` (1..=100) of the routing table's clones, rounded up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum CutoverAt {
    Count(u32),
    /// Percent, 1..=100.
    Share(u32),
}

impl Default for CutoverAt {
    fn default() -> Self {
        CutoverAt::Share(50)
    }
}

impl CutoverAt {
    /// Up clones needed with `clones` in the routing table (at least 1).
    pub fn threshold(self, clones: usize) -> usize {
        match self {
            CutoverAt::Count(n) => n as usize,
            CutoverAt::Share(p) => (clones * p as usize).div_ceil(100),
        }
        .max(1)
    }

    /// `"N%"` with N in 1..=100.
    pub fn parse_share(s: &str) -> Result<Self, &'static str> {
        let n = s
            .strip_suffix('%')
            .ok_or("a share ends in '%' (or give a count: an integer)")?;
        match n.trim().parse::<u32>() {
            Ok(p) if (1..=100).contains(&p) => Ok(CutoverAt::Share(p)),
            Ok(_) => Err("a share is 1% to 100%"),
            Err(_) => Err("expected \"N%\" with N a whole number"),
        }
    }
}

impl std::fmt::Display for CutoverAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CutoverAt::Count(n) => write!(f, "{n}"),
            CutoverAt::Share(p) => write!(f, "{p}%"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn clone_targets_by_example() {
        let host = |h: &str, port| CloneTarget::Host {
            host: h.into(),
            port,
        };
        assert_eq!(
            parse_clone_target("127.0.0.1:80"),
            Ok(CloneTarget::Ip("127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            parse_clone_target("localhost:80"),
            Ok(CloneTarget::Ip("127.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(parse_clone_target("app.test:80"), Ok(host("app.test", 80)));
        assert_eq!(
            parse_clone_target("app.test.:80"),
            Ok(host("app.test.", 80))
        );
        assert_eq!(parse_clone_target("_x-y.a1:1"), Ok(host("_x-y.a1", 1)));
        for bad in [
            "app.test",
            "app.test:http",
            "app..test:80",
            "-app.test:80",
            "1.2.3:80",
            "::1:80",
            "[app.test]:80",
            "app test:80",
            ":80",
        ] {
            assert!(parse_clone_target(bad).is_err(), "{bad}");
        }
        assert!(check_dns_name(&format!("{}.test", "a".repeat(64))).is_err());
        assert!(check_dns_name(&format!("{}.test", "a".repeat(63))).is_ok());
        assert!(
            check_dns_name(&["a"; 130].join(".")).is_err(),
            "over 253 bytes"
        );
    }

    proptest! {
        /// Any text: an answer, never a panic; an IP written with its port stays that IP.
        #[test]
        fn any_text_gives_an_answer_and_socket_addresses_stay_ips(
            text in "\\PC{0,80}",
            ip in any::<std::net::IpAddr>(),
            port in 1u16..,
        ) {
            let _ = parse_clone_target(&text);
            let addr = SocketAddr::new(ip, port);
            prop_assert_eq!(parse_clone_target(&addr.to_string()), Ok(CloneTarget::Ip(addr)));
        }

        /// Names made of valid labels are host names, kept as written.
        #[test]
        fn valid_labels_make_a_host_name(
            labels in proptest::collection::vec("[a-z_][a-z0-9_-]{0,20}[a-z0-9]", 1..5),
            port in 1u16..,
        ) {
            let name = labels.join(".");
            prop_assume!(!name.eq_ignore_ascii_case("localhost"));
            let want = CloneTarget::Host { host: name.clone(), port };
            prop_assert_eq!(parse_clone_target(&format!("{name}:{port}")), Ok(want));
        }
    }
}

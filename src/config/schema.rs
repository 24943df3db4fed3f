//! Owns the lb.toml schema (v1): every section's keys, each declared once with its type,
//! default and validator (see `section.rs`), and the limits those validators apply.
//!
//! Adding a key: one line in its section below, plus its entry in README.md's lb.toml
//! reference. Rules that tie several keys together (listeners and TLS files, health
//! `timeout` < `interval`, unique clones) are in `walk.rs`.
//!
//! Must not touch: I/O, shared state, the request path, `error.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::section::section;
use super::values::{
    AccessFormat, CloneTarget, CutoverAt, DeployMode, LogFormat, Secret, StatusRanges,
};
use crate::strategy::StrategyKind;

/// hyper cannot read request heads with a buffer under 8 KiB.
pub const MIN_HEADER_SIZE: u64 = 8 * 1024;

pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
pub const MAX_RETRIES: u32 = 100;
pub const MAX_WEIGHT: u32 = 1000;

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

section! {
    /// `[listen]`: at least one listener; `https` needs both TLS files, which need `https`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
    pub struct ListenConfig in "[listen]" {
        /// Plain-HTTP listener (HTTP/1.1, and HTTP/2 by prior knowledge).
        http: Option<SocketAddr> = None => listener,
        /// HTTPS listener (ALPN h2 and http/1.1); needs `tls_cert` and `tls_key`.
        https: Option<SocketAddr> = None => listener,
        /// PEM certificate chain, leaf first; relative paths are from lb.toml's directory.
        tls_cert: Option<PathBuf> = None => file,
        /// PEM private key (PKCS#8, PKCS#1 or SEC1).
        tls_key: Option<PathBuf> = None => file,
    }
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

section! {
    /// `[balancer]`: how a clone is picked.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
    pub struct BalancerConfig in "[balancer]" with Default {
        /// `"round-robin"` or `"least-connections"`.
        strategy: StrategyKind = StrategyKind::RoundRobin => strategy,
    }
}

section! {
    /// `[proxy]`: timeouts of one proxied request and its client connection.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
    pub struct ProxyConfig in "[proxy]" with Default {
        /// Opening a TCP connection to a clone; past it → 502.
        connect_timeout: Duration = secs(1) => duration,
        /// Per attempt, from sending the request until the clone's response headers; → 504.
        response_timeout: Duration = secs(30) => duration,
        /// A kept-alive client connection with no request in progress is closed after this.
        idle_timeout: Duration = secs(60) => duration,
        /// From accept (or a later request's first byte) to the end of the request headers.
        header_read_timeout: Duration = secs(10) => duration,
        /// Further attempts on other clones (so at most 1 + retries attempts).
        retries: u32 = 2 => count(0..=MAX_RETRIES),
        /// Also retry a response timeout (idempotent requests without a body only).
        retry_on_timeout: bool = false => boolean,
        /// Without `[health]`: how long a passively ejected clone stays out.
        ejection_time: Duration = secs(30) => duration,
        /// A clone removed by a reload is dropped when idle, or after this (cutting what is
        /// still in flight).
        drain_timeout: Duration = secs(30) => duration,
        /// On SIGTERM/SIGINT, requests in flight get this long to finish.
        shutdown_timeout: Duration = secs(30) => duration,
        /// A request body that sends nothing for this long between frames is aborted (408).
        body_read_timeout: Duration = secs(30) => duration,
        /// Keep an incoming `X-Forwarded-For` and append the client (true), or replace it
        /// with the client alone (false, for an edge balancer that must not trust clients).
        trust_forwarded: bool = true => boolean,
        /// HTTP/2: concurrent streams per client connection.
        max_concurrent_streams: u32 = 100 => count(1..=u32::MAX),
    }
}

section! {
    /// `[limits]`: what one client may send.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
    pub struct LimitsConfig in "[limits]" with Default {
        /// Request target longer than this → 414.
        max_request_line: u64 = 8 * 1024 => size(1),
        /// Request line + headers larger than this → 431. At least 8 KiB (hyper's minimum
        /// read buffer).
        max_header_size: u64 = 32 * 1024 => size(MIN_HEADER_SIZE),
        /// More header fields than this → 431.
        max_headers: u64 = 100 => size(1),
        /// Request body larger than this → 413; 0 = unlimited.
        max_body: u64 = 0 => size(0),
        /// Open client connections (all listeners); beyond it new connections wait in the
        /// accept backlog.
        max_connections: u64 = 10_000 => size(1),
    }
}

section! {
    /// `[health]`: active health checks.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
    pub struct HealthConfig in "[health]" with Default {
        /// GET this path on every clone.
        path: String = "/healthz".into() => request_path,
        interval: Duration = secs(2) => duration,
        /// Per check, connect to status line; shorter than `interval`.
        timeout: Duration = secs(1) => duration,
        /// Consecutive passes before a down clone is put back.
        healthy_threshold: u32 = 2 => count(1..=u32::MAX),
        /// Consecutive failures before an up clone is taken out.
        unhealthy_threshold: u32 = DEFAULT_UNHEALTHY_THRESHOLD => count(1..=u32::MAX),
        /// Statuses that count as a pass.
        expect_status: StatusRanges = StatusRanges(vec![(200, 399)]) => status_set,
        /// `Host` header of the checks; the clone's address when unset.
        host: Option<String> = None => optional_text,
        /// A new clone must pass `healthy_threshold` checks before it gets traffic.
        start_unhealthy: bool = false => boolean,
        /// Count 5xx answers to real requests as failures towards passive ejection.
        eject_on_5xx: bool = false => boolean,
        /// The response header of a check that carries the clone's code version (e.g.
        /// `"x-clone-version"`). Unset: clonelb does not track versions.
        version_header: Option<String> = None => header_name,
    }
}

section! {
    /// `[deploy]`: how a new code version takes over (needs `[health] version_header`
    /// for `"atomic"`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
    pub struct DeployConfig in "[deploy]" with Default {
        /// `"mixed"`: every up clone gets requests; `"atomic"`: only the active version's.
        mode: DeployMode = DeployMode::Mixed => choice,
        /// Up clones a new version needs to become active: a count or `"N%"` of the
        /// clones, rounded up.
        cutover_at: CutoverAt = CutoverAt::Share(50) => cutover,
    }
}

section! {
    /// `[reload]`: how changes to lb.toml reach the running balancer.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
    pub struct ReloadConfig in "[reload]" with Default {
        /// Watch lb.toml (and the TLS files) and reload on save. `false` leaves SIGHUP
        /// (and later the admin API) for ops who ship config by other means.
        watch: bool = true => boolean,
    }
}

section! {
    /// `[admin]`: the admin API (status, metrics, disable/enable, reload). Absent: none.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
    pub struct AdminConfig in "[admin]" {
        /// Where the admin API listens. Required in `[admin]`; needs a restart to change.
        listen: Option<SocketAddr> = None => listener,
        /// When set, every admin request but `GET /`, `/live` and `/ready` needs
        /// `Authorization: Bearer <token>`. `listen` off loopback needs this or
        /// `token_file`. With `token_file`, `reload::load` sets it from the file.
        token: Option<Secret> = None => secret,
        /// A file holding the token (e.g. a Kubernetes Secret's key; relative paths are
        /// from lb.toml's directory), read by `reload::load` at every load (`token_file`
        /// module) and watched. Not together with `token`.
        token_file: Option<PathBuf> = None => file,
    }
}

section! {
    /// `[log]`: the access log, and the format of clonelb's own log lines.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize)]
    pub struct LogConfig in "[log]" with Default {
        /// One line per request: `"off"`, `"combined"` (Apache/nginx combined, then the
        /// duration, the clone and the request ID) or `"json"`.
        access: AccessFormat = AccessFormat::Off => choice,
        /// Where access lines go; standard output when unset. Relative paths are from
        /// lb.toml's directory. Reopened on SIGUSR1 and on every reload.
        access_path: Option<PathBuf> = None => file,
        /// Log the query string with the path (off: it may carry tokens).
        access_query: bool = false => boolean,
        /// clonelb's own log lines on stderr: `"text"` or `"json"` (`--log-format`
        /// overrides it; a change needs a restart).
        format: LogFormat = LogFormat::Text => choice,
    }
}

section! {
    /// `[audit]`: the consistency audit (its presence turns it on): sampled safe requests
    /// replayed on a second clone and compared, and each clone's behaviour compared with
    /// the pool's.
    #[derive(Debug, Clone, PartialEq, Serialize)]
    pub struct AuditConfig in "[audit]" with Default {
        /// Share of eligible requests replayed on a second clone (0: no replays).
        sample: f64 = 0.01 => fraction,
        /// Methods audited: GET, HEAD, OPTIONS, TRACE only.
        methods: Vec<String> = vec!["GET".into(), "HEAD".into()] => safe_methods,
        /// Answers larger than this are not compared.
        max_response: u64 = 1024 * 1024 => size(0),
        /// The peer comparison's window (10 s to 60 s).
        window: Duration = secs(60) => audit_window,
        /// How many times worse than the pool's median makes an outlier (above 1).
        outlier_factor: f64 = 3.0 => factor,
        /// Take an outlier out of rotation (one at a time, never below half the pool).
        eject_outliers: bool = false => boolean,
        /// Headers never compared.
        ignore_headers: Vec<String> = vec!["date".into(), "set-cookie".into(), "x-request-id".into()] => header_names,
        /// Path prefixes never audited.
        exclude_paths: Vec<String> = vec!["/healthz".into()] => path_prefixes,
        /// Replays in flight at once; beyond it a sample is skipped (`busy`).
        max_concurrent: u32 = 4 => count(1..=u32::MAX),
    }
}

section! {
    /// `[dns]`: how clones given by a host name or an SRV name are resolved.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
    pub struct DnsConfig in "[dns]" with Default {
        /// The DNS server asked (`IP:PORT`, or an IP for port 53); default: the system's
        /// (`/etc/resolv.conf`).
        resolver: Option<SocketAddr> = None => dns_server,
        /// Re-resolve each name this often, or at its records' TTL when shorter; never
        /// below 1 s.
        refresh: Duration = secs(5) => refresh,
    }
}

section! {
    /// One `[[backend]]` entry as written: one clone (`address` an IP), or a name whose
    /// DNS records are the clones (`address` a host name, or `srv`). `walk_backends.rs`
    /// turns entries into [`BackendConfig`]s and [`DnsBackendConfig`]s.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct BackendEntry in "[[backend]]" {
        /// `IP:PORT`, `localhost:PORT` or `HOST:PORT` (every A/AAAA record one clone).
        address: Option<CloneTarget> = None => clone_target,
        /// Instead of `address`: an SRV name (records give host, port and weight).
        srv: Option<String> = None => srv_name,
        /// Defaults to the address (or SRV name) as written. Unique.
        name: String = String::new() => text,
        /// 1..=1000, default 1 (not with `srv`: the records carry the weights).
        weight: u32 = 1 => weight,
    }
}

/// One clone written in lb.toml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendConfig {
    pub address: SocketAddr,
    /// Defaults to the address as written. Unique.
    pub name: String,
    /// 1..=1000, default 1.
    pub weight: u32,
}

/// What a DNS `[[backend]]` entry asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum DnsLookup {
    /// A and AAAA records of `host`; each address with `port` is a clone.
    Host { host: String, port: u16 },
    /// SRV records of `name` (lowest priority only), their targets' addresses.
    Srv { name: String },
}

impl DnsLookup {
    /// The name looked up, as written (the clones' `source`).
    pub fn name(&self) -> &str {
        match self {
            DnsLookup::Host { host, .. } => host,
            DnsLookup::Srv { name } => name,
        }
    }

    /// `"address"` or `"srv"`.
    pub fn kind(&self) -> &'static str {
        match self {
            DnsLookup::Host { .. } => "address",
            DnsLookup::Srv { .. } => "srv",
        }
    }
}

/// A `[[backend]]` entry whose clones come from DNS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsBackendConfig {
    pub lookup: DnsLookup,
    /// Its clones are named `NAME/IP:PORT`. Defaults to the address or SRV name as written.
    pub name: String,
    /// Each resolved clone's weight (an address entry; SRV records carry their own).
    pub weight: u32,
    /// How many lb.toml clones are written before it: where its clones go in lb.toml's
    /// order (the first source of an address wins).
    pub after_static: usize,
}

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub listen: ListenConfig,
    pub balancer: BalancerConfig,
    pub proxy: ProxyConfig,
    /// `None` when `[health]` is absent: no active checks (passive ejection still applies).
    pub health: Option<HealthConfig>,
    pub limits: LimitsConfig,
    pub reload: ReloadConfig,
    /// `None` when `[admin]` is absent: no admin listener.
    pub admin: Option<AdminConfig>,
    pub log: LogConfig,
    pub deploy: DeployConfig,
    /// `None` when `[audit]` is absent: no audit.
    pub audit: Option<AuditConfig>,
    /// `[error_pages]`: status → file (relative paths joined to lb.toml's folder) served
    /// instead of clonelb's own text for that status. Only the paths: the files are read
    /// by `error_pages` when the file is loaded.
    pub error_pages: BTreeMap<u16, PathBuf>,
    /// `[dns]` (defaults when absent).
    pub dns: DnsConfig,
    /// The clones written as IP addresses, in lb.toml order.
    pub backends: Vec<BackendConfig>,
    /// The entries resolved by DNS, in lb.toml order.
    pub dns_backends: Vec<DnsBackendConfig>,
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

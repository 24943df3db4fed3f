//! Owns what a problem in an lb.toml is: [`ConfigError`] (the `message` of one problem),
//! [`Diagnostic`] (a problem and its position), [`LoadError`] (every problem of one file)
//! and the `PATH:LINE:COL: message` rendering.
//!
//! Must not touch: `error.rs` (which re-exports [`ConfigError`] for compatibility; the
//! dependency goes that way only) or anything on the request path.

use std::net::SocketAddr;
use std::time::Duration;

/// One problem in an lb.toml. Rendered as the `message` part of `PATH:LINE:COL: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{message}")]
    Syntax { message: String },
    #[error("unknown key `{key}` in {table}{}", hint(suggestion))]
    UnknownKey {
        table: String,
        key: String,
        suggestion: Option<&'static str>,
    },
    #[error("missing required key `{key}` in {table}")]
    MissingKey { table: String, key: &'static str },
    #[error("`{key}` must be {expected}, found {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("invalid duration \"{value}\" for `{key}`: {reason} (a number and a unit, e.g. \"250ms\", \"2s\", \"1m 30s\", \"1h\")")]
    BadDuration {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid duration \"{value}\" for `{key}`: above the maximum 24h (allowed: more than 0, at most 24h)")]
    DurationTooLong { key: &'static str, value: String },
    #[error("invalid address \"{value}\": {reason} (expected IP:PORT, e.g. \"127.0.0.1:9001\" or \"[::1]:9001\")")]
    BadAddress { value: String, reason: String },
    #[error("unknown strategy \"{value}\" (expected \"round-robin\" or \"least-connections\")")]
    UnknownStrategy { value: String },
    #[error("unknown value \"{value}\" for `{key}` (expected {expected})")]
    UnknownChoice {
        key: &'static str,
        value: String,
        expected: String,
    },
    #[error("weight {value} is out of range (1..=1000)")]
    WeightOutOfRange { value: i128 },
    #[error("`{key}` = {value} is out of range ({min}..={max})")]
    OutOfRange {
        key: &'static str,
        value: i128,
        min: u32,
        max: u32,
    },
    #[error("invalid size \"{value}\" for `{key}`: {reason}")]
    BadSize {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("`{key}` = {value} is below its minimum {min}")]
    SizeTooSmall {
        key: &'static str,
        value: u64,
        min: u64,
    },
    #[error("health check path \"{value}\" must start with '/'")]
    BadPath { value: String },
    #[error("invalid status set \"{value}\": {reason} (e.g. \"200-399\", \"200\", \"200,204\")")]
    BadStatus { value: String, reason: String },
    #[error("health `timeout` ({timeout:?}) must be shorter than `interval` ({interval:?})")]
    TimeoutNotBelowInterval {
        timeout: Duration,
        interval: Duration,
    },
    #[error("`https` needs `{key}` in [listen]")]
    MissingTlsFile { key: &'static str },
    #[error("`{key}` is set but there is no `https` listener")]
    TlsWithoutHttps { key: &'static str },
    #[error("`{key}` must not be empty")]
    EmptyPath { key: &'static str },
    #[error("`{key}` must not be empty")]
    EmptySecret { key: &'static str },
    #[error("admin listener {address} is not on loopback: set `token` or `token_file` in [admin] (anyone who can reach it could steer the balancer)")]
    AdminWithoutToken { address: SocketAddr },
    #[error("`token` and `token_file` are both set in [admin]: keep one")]
    TokenAndTokenFile,
    #[error("admin token file {0}")]
    TokenFile(String),
    #[error("{0}")]
    Tls(String),
    #[error("`name` must not be empty")]
    EmptyName,
    #[error("duplicate clone name \"{name}\" (first used on line {first_line})")]
    DuplicateName { name: String, first_line: usize },
    #[error("duplicate clone address {address} (first used on line {first_line})")]
    DuplicateAddress {
        address: SocketAddr,
        first_line: usize,
    },
    #[error("duplicate DNS name {name} (first used on line {first_line})")]
    DuplicateSource { name: String, first_line: usize },
    #[error("`address` and `srv` are two ways to give a clone: use one per [[backend]]")]
    AddressAndSrv,
    #[error("`weight` cannot be set with `srv`: each SRV record carries its own weight")]
    WeightWithSrv,
    #[error("invalid SRV name \"{value}\": {reason} (e.g. \"_http._tcp.app.service.consul\")")]
    BadSrvName { value: String, reason: String },
    #[error("invalid `resolver` \"{value}\": {reason} (expected IP:PORT, e.g. \"127.0.0.1:53\", or an IP for port 53)")]
    BadResolver { value: String, reason: String },
    #[error("warning: no [[backend]] entries: every request will be answered 503")]
    NoBackends,
    #[error("`{key}` = {value} must be a number from 0 to 1")]
    NotAFraction { key: &'static str, value: String },
    #[error("`{key}` = {value} must be a number above 1")]
    FactorNotAboveOne { key: &'static str, value: String },
    #[error("`{key}` = \"{value}\" must be from {min} to {max}")]
    DurationOutOfRange {
        key: &'static str,
        value: String,
        min: &'static str,
        max: &'static str,
    },
    #[error("method \"{value}\" cannot be audited: only safe methods are replayed (GET, HEAD, OPTIONS, TRACE)")]
    UnsafeMethod { value: String },
    #[error("path prefix \"{value}\" must start with '/'")]
    BadPathPrefix { value: String },
    #[error("invalid header name \"{value}\" for `{key}`")]
    BadHeaderName { key: &'static str, value: String },
    #[error("`mode = \"atomic\"` needs `version_header` in [health] (the clones' versions come from their health checks)")]
    AtomicWithoutVersionHeader,
    #[error("invalid `cutover_at` {value}: {reason}")]
    BadCutover { value: String, reason: String },
    #[error("warning: `cutover_at` = {count} is more than the {clones} clones in lb.toml: no version can cut over until more clones are added")]
    CutoverAboveClones { count: u32, clones: usize },
    #[error("cannot read: {0}")]
    Io(String),
    #[error("`{key}` is not a status clonelb answers itself (error pages exist for 400, 408, 413, 414, 502, 503, 504)")]
    ErrorPageStatus { key: String },
    #[error("error page \"{value}\" must end in .html, .json or .txt (its content type follows the extension)")]
    ErrorPageType { value: String },
    #[error("error page {0}")]
    ErrorPage(String),
}

fn hint(suggestion: &Option<&'static str>) -> String {
    match suggestion {
        Some(s) => format!(" (did you mean `{s}`?)"),
        None => String::new(),
    }
}

impl ConfigError {
    /// Warnings are reported but do not make a file invalid.
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            ConfigError::NoBackends | ConfigError::CutoverAboveClones { .. }
        )
    }
}

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

//! Error types, one enum per layer.
//!
//! * [`ConfigError`] — one problem found in an lb.toml (with its position kept by
//!   [`crate::config::Diagnostic`]).
//! * [`ProxyError`] — why a request could not be served. [`ProxyError::status`] is the one
//!   place that maps a cause to the status code the client sees; [`ProxyError::fault`] says
//!   whose fault it was and [`ProxyError::retryable`] whether another clone may be tried.
//! * [`StartError`] — why the balancer could not start (bad config, address in use).

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;

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
    #[error("invalid duration \"{value}\" for `{key}`: {reason} (use an integer and a unit: \"250ms\", \"2s\", \"1m\", \"1h\")")]
    BadDuration {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("invalid address \"{value}\": {reason} (expected IP:PORT, e.g. \"127.0.0.1:9001\" or \"[::1]:9001\")")]
    BadAddress { value: String, reason: String },
    #[error("unknown strategy \"{value}\" (expected \"round-robin\" or \"least-connections\")")]
    UnknownStrategy { value: String },
    #[error("weight {value} is out of range (1..=1000)")]
    WeightOutOfRange { value: i128 },
    #[error("`name` must not be empty")]
    EmptyName,
    #[error("duplicate clone name \"{name}\" (first used on line {first_line})")]
    DuplicateName { name: String, first_line: usize },
    #[error("duplicate clone address {address} (first used on line {first_line})")]
    DuplicateAddress {
        address: SocketAddr,
        first_line: usize,
    },
    #[error("warning: no [[backend]] entries: every request will be answered 503")]
    NoBackends,
    #[error("cannot read: {0}")]
    Io(String),
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
        matches!(self, ConfigError::NoBackends)
    }
}

/// Whose fault a failed request was; decides logging and, later, ejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The clone misbehaved (refused, reset, too slow, malformed answer).
    Clone,
    /// Nothing was wrong with any one clone: the pool has none available.
    Balancer,
}

/// Why a request could not be proxied. Every variant names the clone involved, if any.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no clone available")]
    NoClone,
    #[error("clone {address} refused or reset the connection")]
    Connect {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("clone {address} did not accept the connection within {timeout:?}")]
    ConnectTimeout {
        address: SocketAddr,
        timeout: Duration,
    },
    #[error("clone {address} closed the connection or sent a malformed response")]
    Upstream {
        address: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("clone {address} sent no response headers within {timeout:?}")]
    ResponseTimeout {
        address: SocketAddr,
        timeout: Duration,
    },
}

impl ProxyError {
    /// The one place that decides the status code of a failed request.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoClone => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::ResponseTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::NoClone => Fault::Balancer,
            _ => Fault::Clone,
        }
    }

    /// True when the request never reached the clone (the connection could not be
    /// opened), so it may be sent to another clone whatever its method or body.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect { .. } | ProxyError::ConnectTimeout { .. }
        )
    }

    /// The clone this error is about, if any.
    pub fn clone_address(&self) -> Option<SocketAddr> {
        match self {
            ProxyError::NoClone => None,
            ProxyError::Connect { address, .. }
            | ProxyError::ConnectTimeout { address, .. }
            | ProxyError::Upstream { address, .. }
            | ProxyError::ResponseTimeout { address, .. } => Some(*address),
        }
    }
}

/// Why the balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] crate::config::LoadError),
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start worker thread: {0}")]
    Thread(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(ProxyError::NoClone.status(), 503);
        let refused = ProxyError::Connect {
            address: a,
            source: std::io::ErrorKind::ConnectionRefused.into(),
        };
        assert_eq!(refused.status(), 502);
        assert!(refused.retryable());
        let slow = ProxyError::ResponseTimeout {
            address: a,
            timeout: Duration::from_secs(1),
        };
        assert_eq!(slow.status(), 504);
        assert!(!slow.retryable());
        assert_eq!(slow.fault(), Fault::Clone);
    }
}

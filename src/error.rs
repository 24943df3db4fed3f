//! Error types, one enum per layer.
//!
//! * [`ConfigError`] — one problem found in an lb.toml. It lives in `config` (see
//!   `config/error.rs`, with [`crate::config::Diagnostic`] and
//!   [`crate::config::LoadError`]) and is re-exported here for compatibility; `config`
//!   imports nothing from this module, so the dependency goes one way only.
//! * [`ProxyError`] — why a request could not be served. [`ProxyError::status`] is the one
//!   place that maps a cause to the status code the client sees; [`ProxyError::fault`] says
//!   whose fault it was and [`ProxyError::retry`] whether another clone may be tried.
//! * [`StartError`] — why the balancer could not start (bad config, address in use, bad
//!   TLS files). It refers to [`crate::config::LoadError`] and [`crate::tls::TlsError`];
//!   neither of those modules imports this one.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;

pub use crate::config::ConfigError;

/// Whose fault a failed request was; decides what counts against a clone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The clone misbehaved (refused, reset, too slow, malformed answer).
    Clone,
    /// The client did (e.g. its request body failed mid-stream).
    Client,
    /// Nothing was wrong with any one clone: the pool has none available.
    Balancer,
}

/// A request refused for what the client sent, before or while it was forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("Transfer-Encoding other than \"chunked\"")]
    BadTransferEncoding,
    #[error("Transfer-Encoding in an HTTP/1.0 request")]
    TransferEncodingHttp10,
    #[error("no Host header")]
    MissingHost,
    #[error("more than one Host header")]
    DuplicateHost,
    #[error("invalid Host header")]
    BadHost,
    #[error("request target longer than max_request_line")]
    UriTooLong,
    #[error("request body larger than max_body")]
    BodyTooLarge,
    #[error("request body stalled longer than body_read_timeout")]
    BodyTimeout,
    #[error("the request body failed before its end")]
    BodyFailed,
}

impl RequestError {
    /// What the client is told: the same words as `Display` (they name nothing internal),
    /// as a `&'static str`.
    pub fn client_message(self) -> &'static str {
        match self {
            RequestError::BadTransferEncoding => "Transfer-Encoding other than \"chunked\"",
            RequestError::TransferEncodingHttp10 => "Transfer-Encoding in an HTTP/1.0 request",
            RequestError::MissingHost => "no Host header",
            RequestError::DuplicateHost => "more than one Host header",
            RequestError::BadHost => "invalid Host header",
            RequestError::UriTooLong => "request target longer than max_request_line",
            RequestError::BodyTooLarge => "request body larger than max_body",
            RequestError::BodyTimeout => "request body stalled longer than body_read_timeout",
            RequestError::BodyFailed => "the request body failed before its end",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            RequestError::UriTooLong => StatusCode::URI_TOO_LONG,
            RequestError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            RequestError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Why a request body being forwarded stopped early (the `Error` of
/// `UpstreamBody`; found again in hyper's error chain by `forward`).
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("client body failed: {0}")]
    Client(#[source] hyper::Error),
    #[error("body larger than max_body")]
    TooLarge,
    #[error("no body data within body_read_timeout")]
    Timeout,
}

impl BodyError {
    pub fn as_request_error(&self) -> RequestError {
        match self {
            BodyError::Client(_) => RequestError::BodyFailed,
            BodyError::TooLarge => RequestError::BodyTooLarge,
            BodyError::Timeout => RequestError::BodyTimeout,
        }
    }
}

/// When a failed attempt may be sent to another clone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Always: nothing of the request reached the clone.
    Always,
    /// Only for an idempotent method (GET, HEAD, OPTIONS, PUT, DELETE) without a body: the
    /// clone may have seen the request, but repeating it is harmless.
    IfIdempotent,
    /// As `IfIdempotent`, and only with `[proxy] retry_on_timeout = true`: the clone may
    /// still be working on it, and retrying timeouts is how retry storms start.
    IfTimeoutRetriesOn,
    Never,
}

/// Why a request could not be proxied. Every variant names the clone involved, if any:
/// `Display` is the detailed text for the logs; the client gets
/// [`ProxyError::client_message`], which names no clone.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no clone available")]
    NoClone,
    #[error("{0}")]
    Rejected(RequestError),
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
    #[error("clone {address} sent a malformed response: {reason}")]
    BadResponse {
        address: SocketAddr,
        reason: &'static str,
    },
    #[error("clone {address} sent no response headers within {timeout:?}")]
    ResponseTimeout {
        address: SocketAddr,
        timeout: Duration,
    },
    /// The clone was removed by a reload and its connections were cut at `drain_timeout`
    /// before it answered: the balancer's doing, not the clone's.
    #[error("clone {address} was cut at drain_timeout before it answered")]
    Cut { address: SocketAddr },
}

impl ProxyError {
    /// The one place that decides the status code of a failed request.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoClone => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::Rejected(r) => r.status(),
            ProxyError::Connect { .. }
            | ProxyError::ConnectTimeout { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::BadResponse { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::ResponseTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Cut { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The cause as the client reads it, after the status: plain words that name no
    /// clone, address or internal error (those go to the log, with `Display`).
    pub fn client_message(&self) -> &'static str {
        match self {
            ProxyError::NoClone => "no upstream server is available",
            ProxyError::Rejected(r) => r.client_message(),
            ProxyError::Connect { .. } => "the upstream server refused the connection",
            ProxyError::ConnectTimeout { .. } => {
                "the upstream server did not accept the connection in time"
            }
            ProxyError::Upstream { .. } => {
                "the upstream server closed the connection or sent a malformed response"
            }
            ProxyError::BadResponse { .. } => "the upstream server sent a malformed response",
            ProxyError::ResponseTimeout { .. } => "the upstream server did not answer in time",
            ProxyError::Cut { .. } => "the upstream server was taken out of service",
        }
    }

    pub fn fault(&self) -> Fault {
        match self {
            ProxyError::NoClone | ProxyError::Cut { .. } => Fault::Balancer,
            ProxyError::Rejected(_) => Fault::Client,
            // hyper calls an error of the body we were streaming a "user" error: here that
            // body is the client's.
            ProxyError::Upstream { source, .. } if source.is_user() => Fault::Client,
            _ => Fault::Clone,
        }
    }

    /// Refused, reset before the response, or connect timeout: what passive ejection
    /// counts. A response timeout is not one (the clone may be busy, not gone).
    pub fn is_connection_failure(&self) -> bool {
        self.fault() == Fault::Clone
            && matches!(
                self,
                ProxyError::Connect { .. }
                    | ProxyError::ConnectTimeout { .. }
                    | ProxyError::Upstream { .. }
                    | ProxyError::BadResponse { .. }
            )
    }

    /// When this failed attempt may be repeated on another clone.
    pub fn retry(&self) -> Retry {
        match self {
            // The request never left the balancer: safe for any method and body.
            ProxyError::Connect { .. } | ProxyError::ConnectTimeout { .. } => Retry::Always,
            ProxyError::Upstream { .. } if self.fault() == Fault::Clone => Retry::IfIdempotent,
            ProxyError::BadResponse { .. } => Retry::IfIdempotent,
            // The clone may have seen the request before its connection was cut.
            ProxyError::Cut { .. } => Retry::IfIdempotent,
            ProxyError::ResponseTimeout { .. } => Retry::IfTimeoutRetriesOn,
            _ => Retry::Never,
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
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("[error_pages]: {}", .0.join("; "))]
    ErrorPages(Vec<String>),
    #[error("[admin] token_file: {0}")]
    TokenFile(String),
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
        assert_eq!(refused.retry(), Retry::Always);
        assert!(refused.is_connection_failure());
        let slow = ProxyError::ResponseTimeout {
            address: a,
            timeout: Duration::from_secs(1),
        };
        assert_eq!(slow.status(), 504);
        assert_eq!(slow.retry(), Retry::IfTimeoutRetriesOn);
        assert!(!slow.is_connection_failure());
        assert_eq!(slow.fault(), Fault::Clone);
        let cut = ProxyError::Cut { address: a };
        assert_eq!(cut.status(), 503);
        assert_eq!(cut.fault(), Fault::Balancer);
        assert_eq!(cut.retry(), Retry::IfIdempotent);
        assert!(!cut.is_connection_failure());
    }

    #[test]
    fn client_messages_name_no_address() {
        let a: SocketAddr = "127.0.0.1:21098".parse().unwrap();
        let errors = [
            ProxyError::NoClone,
            ProxyError::Connect {
                address: a,
                source: std::io::ErrorKind::ConnectionRefused.into(),
            },
            ProxyError::ConnectTimeout {
                address: a,
                timeout: Duration::from_secs(1),
            },
            ProxyError::BadResponse {
                address: a,
                reason: "both Content-Length and Transfer-Encoding",
            },
            ProxyError::ResponseTimeout {
                address: a,
                timeout: Duration::from_secs(1),
            },
            ProxyError::Cut { address: a },
        ];
        for e in &errors {
            let m = e.client_message();
            assert!(!m.contains("127.0.0.1") && !m.contains("21098"), "{m}");
            assert!(!m.contains("clone"), "{m}");
        }
        assert!(errors[1].to_string().contains("127.0.0.1:21098"));
        for r in [
            RequestError::BadTransferEncoding,
            RequestError::TransferEncodingHttp10,
            RequestError::MissingHost,
            RequestError::DuplicateHost,
            RequestError::BadHost,
            RequestError::UriTooLong,
            RequestError::BodyTooLarge,
            RequestError::BodyTimeout,
            RequestError::BodyFailed,
        ] {
            assert_eq!(r.client_message(), r.to_string());
        }
    }
}

//! What the request path hands the audit for one sampled request, and the audit's settings.
//!
//! A sampled request's response body hashes its data frames as they stream past
//! ([`super::verdict::BodyHash`]); at its clean end a [`Job`] goes to the audit's bounded
//! queue with `try_send` (full: the sample is skipped and counted `busy`).

use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method, StatusCode, Uri};

use super::task::Audit;
use super::verdict::{Answer, BodyHash};
use crate::backend::BackendState;
use crate::config::AuditConfig;
use crate::tap::{SampledHead, Tap};

/// One sampled request and the answer its clone gave.
#[derive(Debug)]
pub struct Job {
    /// The clone that served it.
    pub served: Arc<BackendState>,
    pub method: Method,
    pub uri: Uri,
    /// The request's headers as forwarded to the clone (cookies included, hop-by-hop
    /// removed, `X-Forwarded-*` and `X-Request-Id` set).
    pub headers: HeaderMap,
    /// The served answer: status, headers as sent to the client, body hash and length.
    pub answer: Answer,
}

/// `[audit]` as the audit task uses it (built from the validated config by each publish).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Responses larger than this are not compared (`too_large`).
    pub max_response: u64,
    /// Headers never compared (lowercase names).
    pub ignore_headers: Vec<HeaderName>,
    /// Replays in flight at once; beyond it a sample is skipped (`busy`).
    pub max_concurrent: u32,
    /// `[proxy] connect_timeout` and `response_timeout`, for the replays.
    pub connect_timeout: std::time::Duration,
    pub response_timeout: std::time::Duration,
}

impl Settings {
    /// `[audit]` of `config` as the audit task uses it (`None`: the audit is off).
    pub fn of(config: &crate::config::Config) -> Option<Settings> {
        let a = config.audit.as_ref()?;
        Some(Settings {
            max_response: a.max_response,
            // Validated header names (lb.toml's check), so none is dropped here.
            ignore_headers: a
                .ignore_headers
                .iter()
                .filter_map(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                .collect(),
            max_concurrent: a.max_concurrent,
            connect_timeout: config.proxy.connect_timeout,
            response_timeout: config.proxy.response_timeout,
        })
    }
}

/// Why a sample was not compared (the `reason` label of `clonelb_audit_skipped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Skip {
    /// The queue was full, or `max_concurrent` replays were in flight.
    Busy,
    /// No other available clone of the served clone's version.
    NoPeer,
    /// The served answer or the replay's was over `max_response`.
    TooLarge,
    /// The replay failed (connect, timeout, reset, bad answer).
    ReplayFailed,
}

impl Skip {
    pub const ALL: [Skip; 4] = [Skip::Busy, Skip::NoPeer, Skip::TooLarge, Skip::ReplayFailed];
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::Busy => "busy",
            Skip::NoPeer => "no_peer",
            Skip::TooLarge => "too_large",
            Skip::ReplayFailed => "replay_failed",
        }
    }
}

/// Whether a request drawn for the audit may be replayed: a listed method and a path no
/// `exclude_paths` prefix covers. (Bodiless and not a WebSocket upgrade are checked by the
/// caller, before the draw.)
pub fn eligible(audit: &AuditConfig, method: &Method, path: &str) -> bool {
    audit.methods.iter().any(|m| m == method.as_str())
        && !audit
            .exclude_paths
            .iter()
            .any(|p| path.starts_with(p.as_str()))
}

/// A sampled response's tap: hashes the body as it streams to the client (never
/// delaying or buffering it) and, at its clean end, hands the job to the audit.
#[derive(Debug)]
pub struct AuditTap {
    head: SampledHead,
    served: Arc<BackendState>,
    status: StatusCode,
    headers: HeaderMap,
    hash: BodyHash,
    sink: Arc<Audit>,
}

impl AuditTap {
    /// The tap of `head`'s answer from `served`: its status and headers as the clone sent
    /// them (before clonelb adds its own), bodies compared up to `max_response`.
    pub fn new(
        head: SampledHead,
        served: Arc<BackendState>,
        status: StatusCode,
        headers: HeaderMap,
        max_response: u64,
        sink: Arc<Audit>,
    ) -> Self {
        AuditTap {
            head,
            served,
            status,
            headers,
            hash: BodyHash::new(max_response),
            sink,
        }
    }
}

impl Tap for AuditTap {
    fn data(&mut self, chunk: &[u8]) {
        self.hash.update(chunk);
    }

    fn end(self: Box<Self>) {
        let t = *self;
        let answer = Answer::new(t.status, t.headers, &t.hash);
        t.sink.submit(Job {
            served: t.served,
            method: t.head.method,
            uri: t.head.uri,
            headers: t.head.headers,
            answer,
        });
    }
}

//! What the request path hands the audit for one sampled request, and the audit's settings.
//!
//! A sampled request's response body hashes its data frames as they stream past
//! ([`super::verdict::BodyHash`]); at its clean end a [`Job`] goes to the audit's bounded
//! queue with `try_send` (full: the sample is skipped and counted `busy`).

use std::sync::Arc;

use http::{HeaderMap, HeaderName, Method, Uri};

use super::verdict::Answer;
use crate::backend::BackendState;

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

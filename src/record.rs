//! One record per finished request, and the one hook that receives it.
//!
//! When a request ends — its response body finished, the client went away, a drain or a
//! shutdown cut it, or clonelb answered the error itself — exactly one [`RequestRecord`]
//! is built (on the stack; the default path allocates nothing) and handed to
//! [`Completion::complete`]. Its consumers: the per-clone counters by status class and the
//! clone's time-to-head histogram (always on, `BackendState` atomics), or, for a request
//! answered without any clone, the same in [`ProcessStats`] (`backend="none"`); then an
//! access log (when `[log] access` is on: the record then carries
//! a [`RequestHead`]); then an optional [`Hook`] (tests; the audit plugs in here).
//!
//! hyper's own answers to malformed request heads (its 400 and 431, sent before clonelb's
//! service is called) produce no record: clonelb never sees those requests.
//!
//! Owns: the record's shape and the dispatch. Must not touch: anything but the counters
//! a record names; consumers must not block or allocate per record unless configured to.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Uri, Version};

use crate::backend::BackendState;
use crate::stats::ProcessStats;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The clone's answer reached the client whole (for a WebSocket: the tunnel closed).
    Complete,
    /// The client went away before the answer was whole (before the head: status 499).
    ClientAborted,
    /// The clone failed mid-body (reset, bad framing) after its head was sent.
    UpstreamError,
    /// clonelb cut it: a drain's `drain_timeout` or the end of `shutdown_timeout`.
    Cut,
    /// clonelb answered it itself: a rejected request (4xx), no clone available (503), or
    /// the last attempt's failure (502/504).
    ClonelbError,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::ClientAborted => "client_aborted",
            Outcome::UpstreamError => "upstream_error",
            Outcome::Cut => "cut",
            Outcome::ClonelbError => "clonelb_error",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status recorded for a client that left before any answer (nginx's convention).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// One finished request.
#[derive(Debug, Clone, Copy)]
pub struct RequestRecord<'a> {
    /// The clone whose attempt produced the answer (for clonelb's own 502/504, the last
    /// clone tried); `None` when no clone was tried (rejected request, none available).
    /// Its name is `clone.name()`, its address `clone.address()`.
    pub clone: Option<&'a BackendState>,
    pub method: &'a Method,
    /// The status sent to the client ([`CLIENT_CLOSED_REQUEST`] when none was).
    pub status: u16,
    /// Response body bytes sent to the client (for a WebSocket: clone-to-client bytes).
    pub bytes: u64,
    /// From the start of the request to the response head, when there was one.
    pub head_time: Option<Duration>,
    /// From the start of the request (its head parsed) to its end.
    pub duration: Duration,
    /// Attempts made on clones (0 when none was tried; 1 + retries otherwise).
    pub attempts: u32,
    pub client: SocketAddr,
    pub outcome: Outcome,
    /// The request's `X-Request-Id` (see [`crate::request_id`]).
    pub request_id: &'a HeaderValue,
    /// What the access log needs of the request's head; kept only while `[log] access`
    /// is on (`None` otherwise: nothing is copied).
    pub head: Option<&'a RequestHead>,
}

/// The parts of a request head the access log prints, kept from the start of the request
/// (each a reference-counted handle into hyper's buffers: no copy).
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub uri: Uri,
    /// The client's protocol.
    pub version: Version,
    pub user_agent: Option<HeaderValue>,
    pub referer: Option<HeaderValue>,
}

impl RequestHead {
    pub fn of<B>(req: &http::Request<B>) -> Self {
        let headers = req.headers();
        RequestHead {
            uri: req.uri().clone(),
            version: req.version(),
            user_agent: headers.get(http::header::USER_AGENT).cloned(),
            referer: headers.get(http::header::REFERER).cloned(),
        }
    }
}

/// A consumer of every record. Called on the worker thread that served the request, once
/// per request: it must be quick and must not block.
pub type Hook = Arc<dyn Fn(&RequestRecord<'_>) + Send + Sync>;

/// Where records carrying a [`RequestHead`] go: the access log (which implements it;
/// declared here so that this module does not depend on the access log's). Called on the
/// worker, once per such record: it must not block.
pub trait AccessSink: Send + Sync {
    fn log(&self, record: &RequestRecord<'_>, head: &RequestHead);
}

/// The completion hook of a balancer: the per-clone status-class counters and latency
/// histogram (or the balancer's own, for requests no clone answered), the access log
/// (records carrying a [`RequestHead`]), then the optional [`Hook`].
#[derive(Clone, Default)]
pub struct Completion {
    hook: Option<Hook>,
    process: Arc<ProcessStats>,
    access: Option<Arc<dyn AccessSink>>,
}

impl Completion {
    pub fn new(
        hook: Option<Hook>,
        process: Arc<ProcessStats>,
        access: Option<Arc<dyn AccessSink>>,
    ) -> Self {
        Completion {
            hook,
            process,
            access,
        }
    }

    /// The balancer's own counters (requests without a clone, connections, reloads).
    pub fn process_stats(&self) -> &Arc<ProcessStats> {
        &self.process
    }

    /// Hand one finished request to every consumer. Without a hook and with the access log
    /// off: a few atomic adds and a binary search over the histogram's bounds; no lock, no
    /// allocation. With the access log on: one more `try_send` of reference-counted
    /// handles (the line is formatted on the access log's own thread).
    #[inline]
    pub fn complete(&self, record: &RequestRecord<'_>) {
        match record.clone {
            Some(clone) => {
                clone.count_response(record.status);
                if let Some(head) = record.head_time {
                    clone.latency().record(head);
                }
            }
            None => self.process.count_unrouted(record.status, record.head_time),
        }
        if let (Some(head), Some(access)) = (record.head, &self.access) {
            access.log(record, head);
        }
        if let Some(hook) = &self.hook {
            hook(record);
        }
    }
}

impl fmt::Debug for Completion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Completion")
            .field("hook", &self.hook.is_some())
            .finish()
    }
}

//! The response body on its way to the client ([`ResponseBody`]), and the request's
//! [`Recorder`], which it carries to the request's end.
//!
//! The body streams the clone's answer (or holds a short error text). It owns the
//! request's [`InFlightGuard`] and the upstream connection, so the clone counts the
//! request as in flight until the last byte, and the connection goes back to the clone's
//! idle set only after a clean end of the body. This is where the end of a request is
//! seen, so this is where its [`RequestRecord`] is produced. (The request body, going the
//! other way, is [`crate::upstream_body::UpstreamBody`].)
//!
//! Owns: the end of a request. Must not touch: the routing table, clone selection.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Instant;

use crate::backend::{BackendState, InFlightGuard};
use crate::context::ConnContext;
use crate::forward::drain;
use crate::health;
use crate::record::{Outcome, RequestHead, RequestRecord, CLIENT_CLOSED_REQUEST};
use crate::tap::Tap;
use crate::upstream_conn::Upstream;

/// What is needed to record one request when it ends. Created when the service is called
/// and moved along with the request: into its [`ResponseBody`], or into a WebSocket
/// tunnel. Dropped without [`Recorder::finish`] (the client left before the response
/// head, so hyper dropped the service's future; or the body or tunnel was dropped), it
/// records that: `client_aborted`, or `cut` when the balancer was cutting.
#[derive(Debug)]
pub struct Recorder {
    cx: Arc<ConnContext>,
    method: Method,
    start: Instant,
    head_time: Option<Duration>,
    status: u16,
    bytes: u64,
    attempts: u32,
    clone: Option<Arc<BackendState>>,
    request_id: HeaderValue,
    /// Kept only while the access log is on.
    head: Option<RequestHead>,
    done: bool,
}

impl Recorder {
    /// The record of `req`, whose ID is `request_id`; `access_log`: keep what the access
    /// log prints of its head (the one branch the access log costs when it is off).
    pub fn start<B>(
        cx: Arc<ConnContext>,
        req: &Request<B>,
        request_id: HeaderValue,
        access_log: bool,
    ) -> Self {
        // The client connection's "request in progress" mark, until the request ends.
        cx.activity.begin();
        Recorder {
            cx,
            method: req.method().clone(),
            start: Instant::now(),
            head_time: None,
            status: CLIENT_CLOSED_REQUEST,
            bytes: 0,
            attempts: 0,
            clone: None,
            request_id,
            head: if access_log {
                Some(RequestHead::of(req))
            } else {
                None
            },
            done: false,
        }
    }

    /// The request's `X-Request-Id`.
    pub fn request_id(&self) -> &HeaderValue {
        &self.request_id
    }

    /// An attempt starts on `clone`: the record names it from now on (the clone that
    /// answers, the last one tried, or the one the client was waiting on when it left).
    pub fn start_attempt(&mut self, clone: Arc<BackendState>) {
        self.attempts += 1;
        self.clone = Some(clone);
    }

    /// The response head is on its way with `status`.
    pub fn head(&mut self, status: u16) {
        self.status = status;
        self.head_time = Some(self.start.elapsed());
    }

    pub fn add_bytes(&mut self, n: u64) {
        self.bytes += n;
    }

    /// Produce the record (once).
    pub fn finish(&mut self, outcome: Outcome) {
        if self.done {
            return;
        }
        self.done = true;
        let record = RequestRecord {
            clone: self.clone.as_deref(),
            method: &self.method,
            status: self.status,
            bytes: self.bytes,
            head_time: self.head_time,
            duration: self.start.elapsed(),
            attempts: self.attempts,
            client: self.cx.peer,
            outcome,
            request_id: &self.request_id,
            head: self.head.as_ref(),
        };
        self.cx.shared.completion.complete(&record);
    }

    /// How a request dropped before its end ended: cut by the balancer, or abandoned by
    /// its client.
    fn dropped_outcome(&self) -> Outcome {
        if self.cx.shared.is_cutting() || self.clone.as_ref().is_some_and(|c| c.is_cut()) {
            Outcome::Cut
        } else {
            Outcome::ClientAborted
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        if !self.done {
            self.finish(self.dropped_outcome());
        }
        self.cx.activity.end();
    }
}

/// A response body on its way to the client.
#[derive(Debug)]
pub struct ResponseBody {
    kind: Kind,
    /// The request's record, produced when the body ends or is dropped (`None` for bodies
    /// that answer no proxied request).
    rec: Option<Recorder>,
    /// The audit's tap, on a sampled request only.
    tap: Option<Box<dyn Tap>>,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Upstream {
        inner: Incoming,
        finish: Option<Finish>,
    },
}

/// What is released when a proxied response ends.
#[derive(Debug)]
struct Finish {
    guard: InFlightGuard,
    /// The connection the body comes over, driven by polling the body.
    conn: Upstream,
}

impl ResponseBody {
    /// A complete, short body (error pages), not tied to a request's record.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody {
            kind: Kind::Full(Some(bytes.into())),
            rec: None,
            tap: None,
        }
    }

    /// clonelb's own answer to a request: recorded as `clonelb_error` when it ends.
    pub(crate) fn own_answer(bytes: Bytes, status: u16, mut rec: Recorder) -> Self {
        rec.head(status);
        ResponseBody {
            kind: Kind::Full(Some(bytes)),
            rec: Some(rec),
            tap: None,
        }
    }

    /// The clone's body over `conn`; `guard` and `conn` are released when it ends.
    pub(crate) fn upstream(
        inner: Incoming,
        guard: InFlightGuard,
        conn: Upstream,
        rec: Recorder,
    ) -> Self {
        ResponseBody {
            kind: Kind::Upstream {
                inner,
                finish: Some(Finish { guard, conn }),
            },
            rec: Some(rec),
            tap: None,
        }
    }

    /// The same body, observed by `tap` (a sampled request).
    pub(crate) fn with_tap(mut self, tap: Box<dyn Tap>) -> Self {
        self.tap = Some(tap);
        self
    }

    /// The body ended (`clean`: read to its end) or failed: release the clone and the
    /// connection, and record the request.
    fn end(&mut self, end: End) {
        let outcome = match &mut self.kind {
            Kind::Full(_) => Outcome::ClonelbError,
            Kind::Upstream { finish, .. } => {
                let Some(Finish { guard, mut conn }) = finish.take() else {
                    return;
                };
                let state = guard.state();
                match end {
                    End::Clean => {
                        conn.settle();
                        state.idle.put(conn, !state.keeps_idle());
                        if let Some(tap) = self.tap.take() {
                            tap.end();
                        }
                        Outcome::Complete
                    }
                    End::CloneError if state.is_cut() => Outcome::Cut,
                    End::CloneError => {
                        health::report_mid_body(state);
                        Outcome::UpstreamError
                    }
                    End::Dropped => match &self.rec {
                        Some(r) => r.dropped_outcome(),
                        None => Outcome::ClientAborted,
                    },
                }
            }
        };
        if let Some(rec) = &mut self.rec {
            rec.finish(outcome);
        }
    }
}

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Read to the end: the connection may serve another request.
    Clean,
    /// The clone failed mid-body (reset, bad framing): count it against the clone, unless
    /// the balancer cut it (drain timeout).
    CloneError,
    /// Dropped early (the client went away, or the balancer cut the client connection):
    /// not the clone's fault, but the connection is mid-response and cannot be reused.
    Dropped,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        match &mut this.kind {
            Kind::Full(bytes) => {
                let frame = bytes.take();
                if let (Some(b), Some(rec)) = (&frame, &mut this.rec) {
                    rec.add_bytes(b.len() as u64);
                }
                Poll::Ready(frame.map(|b| Ok(Frame::data(b))))
            }
            Kind::Upstream { inner, finish } => {
                let polled = ready!(match finish {
                    Some(f) => f.conn.poll_body(inner, cx),
                    // Ended already (hyper polls no further after the end).
                    None => Pin::new(&mut *inner).poll_frame(cx),
                });
                // hyper stops polling once `is_end_stream()` is true, so the end is
                // detected after the last frame, not only on `None`.
                let ended = inner.is_end_stream();
                match &polled {
                    Some(Ok(frame)) => {
                        if let (Some(d), Some(rec)) = (frame.data_ref(), &mut this.rec) {
                            rec.add_bytes(d.len() as u64);
                            if let Some(tap) = &mut this.tap {
                                tap.data(d);
                            }
                        }
                        if ended {
                            this.end(End::Clean);
                        }
                    }
                    None => this.end(End::Clean),
                    Some(Err(_)) => this.end(End::CloneError),
                }
                Poll::Ready(polled)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body hyper never polled because it was empty from the start (HEAD, 204, 304,
        // Content-Length: 0) ended cleanly; anything else dropped early was cut short.
        let clean = matches!(&self.kind, Kind::Upstream { inner, .. } if inner.is_end_stream());
        if !clean
            && matches!(
                &self.kind,
                Kind::Upstream {
                    finish: Some(_),
                    ..
                }
            )
        {
            if let Kind::Upstream {
                inner,
                finish: Some(finish),
            } = std::mem::replace(&mut self.kind, Kind::Full(None))
            {
                self.abandoned(inner, finish);
                return;
            }
        }
        self.end(if clean { End::Clean } else { End::Dropped });
    }
}

impl ResponseBody {
    /// The client went away (or the balancer cut it) before the clone's body ended: record
    /// that; then, when the client left and what remains is small, read the rest in the
    /// background so the connection can serve the next request instead of being closed
    /// (HAProxy keeps a server connection after a client abort the same way). Without it
    /// every client that hangs up mid-response costs a new upstream connection: a load
    /// generator's end of run alone closed hundreds at 256 connections.
    fn abandoned(&mut self, inner: Incoming, Finish { guard, conn }: Finish) {
        let outcome = self
            .rec
            .as_ref()
            .map_or(Outcome::ClientAborted, Recorder::dropped_outcome);
        if let Some(rec) = &mut self.rec {
            rec.finish(outcome);
        }
        let worth_it = outcome == Outcome::ClientAborted
            && guard.state().keeps_idle()
            && inner
                .size_hint()
                .upper()
                .is_none_or(|n| n <= drain::DRAIN_MAX);
        if !worth_it {
            return; // dropping it closes the connection
        }
        drain::after_body(inner, guard, conn);
    }
}

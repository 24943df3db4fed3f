//! The service for one client request: validate and rewrite it → load the table once →
//! pick a clone → take its in-flight guard → forward → stream the answer back, or retry on
//! another clone, or answer the error.
//!
//! The request is checked against `[limits]` and the framing rules before any clone is
//! picked, so a request answered 400/413/414 touches no clone's counters. The table guard
//! is dropped before the first `.await`; after that the request holds only its clone's
//! `Arc<BackendState>` (inside the guard), so a reload never waits for it and a removed
//! clone's state lives exactly as long as its last request.
//!
//! Retries (`[proxy] retries`, never the same clone twice) follow [`ProxyError::retry`]:
//! a failed connect is retried for any request (nothing was sent); a reset or malformed
//! answer before the response head only for an idempotent method without a body; a
//! response timeout only with `retry_on_timeout` and under the same condition. A request
//! whose body was partly streamed is never retried: its body is gone. A request whose
//! clone was cut at `drain_timeout` before it answered follows the reset's rule; when it
//! cannot be retried it is answered 503 (taken out of service), not blamed on the clone.
//!
//! Every request is recorded once (see [`crate::record`]): its [`Recorder`] is created
//! first thing and travels with the answer. Each attempt's outcome is reported to
//! [`health::report`], which decides passive ejection.
//!
//! Owns: the order of one request's steps. Must not touch: the table's contents (it only
//! loads snapshots), health decisions, the control plane.

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use http::{Method, Request, Response};
use hyper::body::{Body, Incoming};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::audit::job;
use crate::backend::{BackendState, InFlightGuard};
use crate::body::{Recorder, ResponseBody};
use crate::context::ConnContext;
use crate::error::{Fault, ProxyError, Retry};
use crate::error_pages::ErrorPages;
use crate::forward::{self, SendFailure};
use crate::health::{self, Attempt};
use crate::record::Outcome;
use crate::request_id::{self, X_REQUEST_ID};
use crate::table::{Policy, RoutingTable, SharedTable};
use crate::tap::SampledHead;
use crate::upstream_body::UpstreamBody;
use crate::upstream_conn::Upstream;

thread_local! {
    /// Randomness for strategies that sample (least-connections on large pools).
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// Pick an available clone not in `tried` from the current table and count the attempt
/// on it. The table guard never outlives this call.
fn acquire(table: &SharedTable, tried: &[SocketAddr]) -> Option<InFlightGuard> {
    pick(&table.load(), tried)
}

/// A number in [0, 1) from the worker's RNG (the audit's draw).
fn draw() -> f64 {
    use rand::Rng;
    RNG.with(|rng| (rng.borrow_mut().next_u64() >> 11) as f64 / (1u64 << 53) as f64)
}

/// Pick from a table already loaded.
fn pick(table: &RoutingTable, tried: &[SocketAddr]) -> Option<InFlightGuard> {
    RNG.with(|rng| {
        let rng = &mut *rng.borrow_mut();
        if tried.is_empty() {
            table.pick(rng)
        } else {
            table.pick_excluding(rng, tried)
        }
        .map(|b| b.state.acquire())
    })
}

/// Serve one request. Never fails: every error becomes a response.
pub async fn handle(
    req: Request<Incoming>,
    cx: Arc<ConnContext>,
) -> Result<Response<ResponseBody>, Infallible> {
    // One table load for the checks and the first pick; the guard is gone before any await.
    let table = cx.shared.table.load();
    let policy = *table.policy();
    let id = request_id::of(req.headers(), policy.proxy.trust_forwarded);
    let mut rec = Recorder::start(Arc::clone(&cx), &req, id, policy.access_log);
    let cx = &*cx;
    let mut req = req;
    // The client side of a WebSocket handshake: its socket, once hyper has sent our 101.
    let client_upgrade = forward::is_websocket(&req).then(|| hyper::upgrade::on(&mut req));
    let websocket = client_upgrade.is_some();
    let (mut req, close_after, needs_host) = match forward::prepare(req, cx, &policy, websocket) {
        Ok(p) => (p.request, p.close_after, p.needs_host),
        Err(e) => {
            return Ok(own_answer(
                &ProxyError::Rejected(e),
                table.error_pages(),
                rec,
            ))
        }
    };
    req.headers_mut()
        .insert(X_REQUEST_ID, rec.request_id().clone());
    // The audit's draw (`[audit] sample`): a bodiless request that is not an upgrade; the
    // lists are read only once drawn.
    let mut audit_head = (policy.audit_sample > 0.0
        && !websocket
        && req.body().is_end_stream()
        && draw() < policy.audit_sample
        && table
            .config()
            .audit
            .as_ref()
            .is_some_and(|a| job::eligible(a, req.method(), req.uri().path())))
    .then(|| SampledHead::of(&req));
    let first = pick(&table, &[]);
    let Some(mut guard) = first else {
        return Ok(own_answer(&ProxyError::NoClone, table.error_pages(), rec));
    };
    drop(table);
    // The head of a request that may be repeated after the clone saw it (idempotent, no
    // body); kept only when retries are on.
    let replay =
        (policy.proxy.retries > 0 && is_idempotent(req.method()) && req.body().is_end_stream())
            .then(|| UpstreamHead::of(&req));
    let mut tried: Vec<SocketAddr> = Vec::new();
    loop {
        // The record names the clone of the attempt in progress: the one that answers, the
        // last one tried, or the one the client was waiting on when it left.
        rec.start_attempt(Arc::clone(guard.state()));
        let state = guard.state();
        if needs_host {
            // Each attempt's own clone: a retry overwrites the previous clone's address.
            forward::set_fallback_host(&mut req, state.host());
        }
        match attempt(state, req, &policy).await {
            Ok((mut resp, conn)) => {
                let status = resp.status();
                // The answer as the clone sent it (before clonelb adds its own headers).
                let tap = match (audit_head.take(), &cx.shared.audit) {
                    (Some(head), Some(audits)) => Some(Arc::clone(audits).tap(
                        head,
                        Arc::clone(state),
                        status,
                        resp.headers().clone(),
                        policy.audit_max_response,
                    )),
                    _ => None,
                };
                health::report(state, &policy, Attempt::Answered(status.as_u16()));
                rec.head(status.as_u16());
                resp.headers_mut()
                    .insert(X_REQUEST_ID, rec.request_id().clone());
                if let Some(client) = client_upgrade {
                    if status == http::StatusCode::SWITCHING_PROTOCOLS {
                        return Ok(tunnel(client, conn, &mut resp, guard, rec));
                    }
                }
                let (mut parts, body) = resp.into_parts();
                if close_after {
                    parts
                        .headers
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                let body = ResponseBody::upstream(body, guard, conn, rec);
                let body = match tap {
                    Some(tap) => body.with_tap(tap),
                    None => body,
                };
                return Ok(Response::from_parts(parts, body));
            }
            Err(AttemptFailure { error, request }) => {
                let error = match error {
                    // Its drain timed out and the balancer cut its connections: not the
                    // clone's failure, and nothing for passive ejection to count. (hyper
                    // reports the shut-down socket like a clone that closed, so this does
                    // not go by `fault()`; a failed client body stays the client's.)
                    e if state.is_cut() && !matches!(e, ProxyError::Rejected(_)) => {
                        ProxyError::Cut {
                            address: state.address(),
                        }
                    }
                    e => e,
                };
                if !matches!(error, ProxyError::Cut { .. }) {
                    let seen = if error.is_connection_failure() {
                        Attempt::ConnectionFailure
                    } else {
                        Attempt::OtherFailure
                    };
                    health::report(state, &policy, seen);
                }
                let again = match (error.retry(), request) {
                    _ if tried.len() as u32 >= policy.proxy.retries => None,
                    // Handed back untouched: nothing of it reached the clone.
                    (Retry::Always | Retry::IfIdempotent, Some(request)) => Some(request),
                    (Retry::IfIdempotent, None) => replay.as_ref().map(UpstreamHead::request),
                    (Retry::IfTimeoutRetriesOn, _) if policy.proxy.retry_on_timeout => {
                        replay.as_ref().map(UpstreamHead::request)
                    }
                    _ => None,
                };
                let Some(again) = again else {
                    tracing::debug!(clone = %state.name(), address = %state.address(), error = %error, "request failed");
                    drop(guard);
                    return Ok(own_answer(
                        &error,
                        cx.shared.table.load().error_pages(),
                        rec,
                    ));
                };
                tried.push(state.address());
                let Some(next) = acquire(&cx.shared.table, &tried) else {
                    tracing::debug!(clone = %state.name(), address = %state.address(), error = %error, "request failed; no other clone to retry on");
                    drop(guard);
                    return Ok(own_answer(
                        &error,
                        cx.shared.table.load().error_pages(),
                        rec,
                    ));
                };
                state.count_retry();
                tracing::debug!(clone = %state.name(), address = %state.address(), error = %error, next = %next.state().address(), "retrying on another clone");
                guard = next;
                req = again;
            }
        }
    }
}

/// The clone accepted a WebSocket handshake: answer the client 101 and, once both sides
/// have switched, join their sockets byte for byte until either closes. The tunnel counts
/// as one request in flight on its clone (least-connections and draining see it), keeps
/// the client connection out of its idle deadline, is closed when a drain times out, and
/// is recorded when it closes.
fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    conn: Upstream,
    resp: &mut Response<Incoming>,
    guard: InFlightGuard,
    mut rec: Recorder,
) -> Response<ResponseBody> {
    let state = Arc::clone(guard.state());
    let task = tokio::spawn(async move {
        let (client, upstream) = tokio::join!(client, conn.into_io());
        let (client, (mut upstream, early, _cut)) = match (client, upstream) {
            (Ok(c), Some(u)) => (c, u),
            (Err(e), _) => {
                tracing::debug!(error = %e, "WebSocket upgrade did not complete");
                return;
            }
            (_, None) => return,
        };
        let mut client = hyper_util::rt::TokioIo::new(client);
        // What the clone sent right after its 101 (read along with the head) goes first.
        let early_len = early.len() as u64;
        if !early.is_empty() {
            if let Err(e) = tokio::io::AsyncWriteExt::write_all(&mut client, &early).await {
                tracing::debug!(error = %e, "WebSocket tunnel ended");
                return;
            }
        }
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((_, to_client)) => {
                rec.add_bytes(early_len + to_client);
                rec.finish(Outcome::Complete);
            }
            Err(e) => tracing::debug!(error = %e, "WebSocket tunnel ended"),
        }
        drop((guard, rec));
    });
    state.track_connection(task.abort_handle());
    let mut answer = Response::new(ResponseBody::full(Bytes::new()));
    *answer.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    *answer.headers_mut() = std::mem::take(resp.headers_mut());
    let headers = answer.headers_mut();
    headers.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    answer
}

fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// The head of a bodiless request, to send it again.
struct UpstreamHead(http::request::Parts);

impl UpstreamHead {
    fn of(req: &Request<UpstreamBody>) -> Self {
        let mut head = Request::new(());
        *head.method_mut() = req.method().clone();
        *head.uri_mut() = req.uri().clone();
        *head.version_mut() = req.version();
        *head.headers_mut() = req.headers().clone();
        UpstreamHead(head.into_parts().0)
    }

    fn request(&self) -> Request<UpstreamBody> {
        Request::from_parts(self.0.clone(), UpstreamBody::Empty)
    }
}

/// A failed attempt, with the request back when none of it reached the clone.
struct AttemptFailure {
    error: ProxyError,
    request: Option<Request<UpstreamBody>>,
}

/// One attempt on one clone. A pooled connection found closed before the request left is
/// replaced by a fresh one (that is the pool's failure, not the clone's).
async fn attempt(
    state: &Arc<BackendState>,
    req: Request<UpstreamBody>,
    policy: &Policy,
) -> Result<(Response<Incoming>, Upstream), AttemptFailure> {
    let conn = match forward::connect(state, policy.proxy.connect_timeout, true).await {
        Ok(c) => c,
        Err(error) => {
            return Err(AttemptFailure {
                error,
                request: Some(req),
            })
        }
    };
    let reused = conn.reused;
    match forward::send(conn, req, state, policy.proxy.response_timeout).await {
        Ok(answer) => Ok(answer),
        Err(SendFailure {
            request: Some(req), ..
        }) if reused => Box::pin(attempt_fresh(state, req, policy)).await,
        Err(f) => Err(AttemptFailure {
            error: f.error,
            request: f.request,
        }),
    }
}

/// The same attempt on a new connection (rare: boxed, to keep `attempt` small).
async fn attempt_fresh(
    state: &Arc<BackendState>,
    req: Request<UpstreamBody>,
    policy: &Policy,
) -> Result<(Response<Incoming>, Upstream), AttemptFailure> {
    let conn = match forward::connect(state, policy.proxy.connect_timeout, false).await {
        Ok(c) => c,
        Err(error) => {
            return Err(AttemptFailure {
                error,
                request: Some(req),
            })
        }
    };
    forward::send(conn, req, state, policy.proxy.response_timeout)
        .await
        .map_err(|f| AttemptFailure {
            error: f.error,
            request: f.request,
        })
}

/// clonelb's own answer to a request it could not proxy, recorded as `clonelb_error`: the
/// configured page for its status (`[error_pages]`, a `Bytes` clone), else the plain-text
/// line.
fn own_answer(e: &ProxyError, pages: &ErrorPages, rec: Recorder) -> Response<ResponseBody> {
    let status = e.status();
    let id = rec.request_id();
    let (content_type, body) = match pages.get(status.as_u16()) {
        Some(page) => (page.content_type.clone(), page.render(id)),
        None => (HeaderValue::from_static(TEXT), error_text(e, Some(id))),
    };
    let mut resp = error_head(e, content_type);
    resp.headers_mut().insert(X_REQUEST_ID, id.clone());
    *resp.body_mut() = ResponseBody::own_answer(body, status.as_u16(), rec);
    resp
}

const TEXT: &str = "text/plain; charset=utf-8";

/// `STATUS REASON: cause`, the plain-text line of clonelb's own answers, then
/// `request id: ID` when the request has one. The client reads the status and a plain
/// cause; the clone, its address and the error's detail are in the log line of the
/// failure (`Display`).
pub fn error_text(e: &ProxyError, request_id: Option<&HeaderValue>) -> Bytes {
    let status = e.status();
    let mut text = format!(
        "{} {}: {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        e.client_message()
    );
    if let Some(id) = request_id {
        text.push_str("request id: ");
        text.push_str(&String::from_utf8_lossy(id.as_bytes()));
        text.push('\n');
    }
    Bytes::from(text)
}

fn error_head(e: &ProxyError, content_type: HeaderValue) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(Bytes::new()));
    *resp.status_mut() = e.status();
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, content_type);
    if e.fault() == Fault::Client {
        // What the client sent is in doubt (framing, an unread body): do not read on.
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

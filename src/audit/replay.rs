//! One replay: the peer it goes to ([`pick_peer`]), the request it sends
//! ([`replay_request`]) and the answer it reads back ([`replay`]).
//!
//! A replay is invisible to the clone's counters: it opens a fresh connection with
//! `forward::connect(.., use_pool = false)`, never takes an in-flight guard
//! (`BackendState::acquire`), records no request and reports no health outcome, and its
//! connection is closed once its answer is read (never pooled). The peer is drawn with the
//! audit's own RNG, never through `RoutingTable::pick`, so the round-robin rotation does
//! not move.

use std::future::poll_fn;
use std::sync::Arc;

use http::{header, HeaderName, HeaderValue, Request, Uri};
use hyper::body::{Body, Incoming};
use rand::{Rng, RngExt};

use super::job::{Job, Settings, Skip};
use super::verdict::{Answer, BodyHash};
use crate::backend::{Backend, BackendState};
use crate::forward;
use crate::table::RoutingTable;
use crate::upstream_body::UpstreamBody;
use crate::upstream_conn::Upstream;

/// The header that marks a replay, so a clone (or its logs) can tell one apart.
pub const AUDIT_HEADER: HeaderName = HeaderName::from_static("x-clonelb-audit");

/// Whether `b` may answer a replay of what `served` answered: available, of the served
/// clone's version (both 0 when versions are not tracked), and not the served clone.
fn is_peer(b: &Backend, served: &BackendState) -> bool {
    b.address != served.address() && b.is_available() && b.state.version() == served.version()
}

/// A peer for a replay of an answer from `served`, drawn uniformly among the table's
/// clones that are available, of the served clone's version (both 0 when versions are
/// not tracked) and not the served clone; `None` when there is none. Two passes over the
/// table (count, then the n-th), no allocation.
pub fn pick_peer<'t, R: Rng + ?Sized>(
    table: &'t RoutingTable,
    served: &BackendState,
    rng: &mut R,
) -> Option<&'t Backend> {
    let peers = || table.backends().iter().filter(|b| is_peer(b, served));
    let n = peers().count();
    if n == 0 {
        return None;
    }
    peers().nth(rng.random_range(0..n))
}

/// The replay of `job` for `peer`: same method and target (in origin form), the job's
/// headers plus `x-clonelb-audit: 1`, no body. A request that went out with the served
/// clone's address as its `Host` (the client sent none: see `forward::set_fallback_host`)
/// goes with the peer's.
pub fn replay_request(job: &Job, peer: &BackendState) -> Request<UpstreamBody> {
    let mut req = Request::new(UpstreamBody::Empty);
    *req.method_mut() = job.method.clone();
    *req.uri_mut() = match (job.uri.authority(), job.uri.path_and_query()) {
        (Some(_), Some(pq)) => Uri::from(pq.clone()),
        _ => job.uri.clone(),
    };
    let headers = req.headers_mut();
    *headers = job.headers.clone();
    headers.insert(AUDIT_HEADER, HeaderValue::from_static("1"));
    // No body goes with a replay: drop any framing the original carried (at most a
    // `Content-Length: 0`, as only bodiless requests are sampled).
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::TRANSFER_ENCODING);
    let fallback = match headers.get(header::HOST) {
        None => true,
        Some(host) => host == job.served.host(),
    };
    if fallback {
        headers.insert(header::HOST, peer.host().clone());
    }
    req
}

/// Replay `job` on `peer` and read its answer: the connection under `connect_timeout`,
/// the head under `response_timeout`, and the body under `response_timeout` again (a
/// clone trickling its body must not hold a replay slot for ever). A body over
/// `max_response` stops the read at once ([`Skip::TooLarge`]); any failure is
/// [`Skip::ReplayFailed`].
pub async fn replay(
    job: &Job,
    peer: &Arc<BackendState>,
    settings: &Settings,
) -> Result<Answer, Skip> {
    let req = replay_request(job, peer);
    let (resp, mut upstream) = match idle_take(peer.address()) {
        Some(upstream) => {
            let conn = forward::Connection {
                upstream,
                reused: true,
            };
            match forward::send(conn, req, peer, settings.response_timeout).await {
                Ok(answer) => answer,
                // Closed by the clone while it sat in the audit's pool, before the
                // request left: the same request on a fresh connection.
                Err(forward::SendFailure {
                    request: Some(req), ..
                }) => send_fresh(req, peer, settings).await?,
                Err(f) => {
                    tracing::debug!(error = %f.error, "audit replay: no answer");
                    return Err(Skip::ReplayFailed);
                }
            }
        }
        None => send_fresh(req, peer, settings).await?,
    };
    let (parts, body) = resp.into_parts();
    let hash = tokio::time::timeout(
        settings.response_timeout,
        read_body(&mut upstream, body, settings.max_response),
    )
    .await
    .map_err(|_| Skip::ReplayFailed)??;
    idle_put(peer.address(), upstream);
    Ok(Answer::new(parts.status, parts.headers, &hash))
}

/// `req` on a new connection to `peer`.
async fn send_fresh(
    req: http::Request<crate::upstream_body::UpstreamBody>,
    peer: &Arc<BackendState>,
    settings: &Settings,
) -> Result<(http::Response<Incoming>, Upstream), Skip> {
    let conn = forward::connect(peer, settings.connect_timeout, false)
        .await
        .map_err(|e| {
            tracing::debug!(error = %e, "audit replay: connect failed");
            Skip::ReplayFailed
        })?;
    forward::send(conn, req, peer, settings.response_timeout)
        .await
        .map_err(|f| {
            tracing::debug!(error = %f.error, "audit replay: no answer");
            Skip::ReplayFailed
        })
}

/// Replay connections kept per peer (the audit's own, never the request path's pool: a
/// replay touches none of the clone's state). Without them every replay paid a TCP
/// handshake and teardown, which cost more balancer CPU than the replay itself.
const IDLE_PER_PEER: usize = 8;

thread_local! {
    /// The audit thread's idle replay connections, by clone address (replays run on the
    /// audit's one-thread runtime, so this is all of them).
    static IDLE: std::cell::RefCell<std::collections::HashMap<std::net::SocketAddr, Vec<Upstream>>> =
        std::cell::RefCell::default();
}

fn idle_take(peer: std::net::SocketAddr) -> Option<Upstream> {
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.get_mut(&peer)?;
        while let Some(mut c) = list.pop() {
            if c.is_open() && c.is_ready() {
                return Some(c);
            }
        }
        None
    })
}

fn idle_put(peer: std::net::SocketAddr, mut conn: Upstream) {
    conn.settle();
    if !conn.is_reusable() {
        return;
    }
    IDLE.with(|idle| {
        let mut idle = idle.borrow_mut();
        let list = idle.entry(peer).or_default();
        if list.len() < IDLE_PER_PEER {
            list.push(conn);
        }
    });
}

/// Hash `body` (driving `upstream` for it), stopping as soon as it is over `max`.
async fn read_body(
    upstream: &mut Upstream,
    mut body: Incoming,
    max: u64,
) -> Result<BodyHash, Skip> {
    if body.size_hint().lower() > max {
        return Err(Skip::TooLarge); // its Content-Length says so already
    }
    let mut hash = BodyHash::new(max);
    loop {
        match poll_fn(|cx| upstream.poll_body(&mut body, cx)).await {
            None => return Ok(hash),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    hash.update(data);
                    if hash.overflowed() {
                        return Err(Skip::TooLarge);
                    }
                }
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "audit replay: body failed");
                return Err(Skip::ReplayFailed);
            }
        }
    }
}

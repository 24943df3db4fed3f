//! Sending one request to one clone: get one of the clone's idle connections or open one
//! (under `connect_timeout`) *before* the request is handed over, so a failed connect
//! leaves the request and its body untouched for another clone; send it under
//! `response_timeout`. The request was checked and rewritten by [`prepare`] first.
//!
//! Owns: upstream connections and one exchange on them. Must not touch: clone selection,
//! counters (the caller reports outcomes), the client connection.

pub(crate) mod drain;
mod prepare;

pub use prepare::{
    is_websocket, prepare, set_fallback_host, strip_hop_by_hop, valid_host, Prepared,
};

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use http::header;
use http::{Request, Response};
use hyper::body::Incoming;
use tokio::net::TcpStream;

use crate::backend::BackendState;
use crate::error::{BodyError, ProxyError};
use crate::upstream_body::UpstreamBody;
use crate::upstream_conn::{HandshakeError, PendingHead, Upstream};

/// A connection to a clone, ready for one request.
pub struct Connection {
    pub upstream: Upstream,
    /// Taken from the pool (it may have been closed by the clone meanwhile).
    pub reused: bool,
}

/// An idle pooled connection to the clone, or a new one opened within `timeout`.
///
/// The common case, a pooled connection ready for a request, is answered without an
/// `.await`; everything else runs in a boxed future, so the request's own future (moved
/// into hyper for every request) stays small.
pub async fn connect(
    state: &BackendState,
    timeout: Duration,
    use_pool: bool,
) -> Result<Connection, ProxyError> {
    if use_pool {
        if let Some(upstream) = state.idle.take_ready() {
            return Ok(Connection {
                upstream,
                reused: true,
            });
        }
    }
    Box::pin(connect_slow(state, timeout, use_pool)).await
}

async fn connect_slow(
    state: &BackendState,
    timeout: Duration,
    use_pool: bool,
) -> Result<Connection, ProxyError> {
    if use_pool {
        while let Some(mut upstream) = state.idle.take() {
            // Returned at the end of a body and not done with its bookkeeping yet: drive
            // it until it is ready (or found closed).
            if upstream.ready().await {
                return Ok(Connection {
                    upstream,
                    reused: true,
                });
            }
        }
    }
    let address = state.address();
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
        Ok(Ok(s)) => s,
        Ok(Err(source)) => return Err(ProxyError::Connect { address, source }),
        Err(_) => return Err(ProxyError::ConnectTimeout { address, timeout }),
    };
    let _ = stream.set_nodelay(true);
    let upstream = Upstream::handshake(stream, state.sockets())
        .await
        .map_err(|e| match e {
            HandshakeError::Hyper(source) => ProxyError::Upstream { address, source },
            HandshakeError::Io(source) => ProxyError::Connect { address, source },
        })?;
    Ok(Connection {
        upstream,
        reused: false,
    })
}

/// Why a send failed, and the request back when it never left the balancer.
pub struct SendFailure {
    pub error: ProxyError,
    pub request: Option<Request<UpstreamBody>>,
}

/// Send `req` on `conn` and wait for the response head, at most `timeout`; the connection
/// comes back with the head (its body comes over it).
///
/// Dropped while it waits (the client left, so hyper dropped the request's future), the
/// exchange is finished in the background when the clone may keep the connection: the
/// head and a body of at most `drain::DRAIN_MAX` are read and the connection pooled, as
/// for an answer abandoned mid-body. Closing it instead cost a new upstream connection for
/// every request in flight when a client hung up (a load generator's end of run: ~120 at
/// 256 connections).
pub async fn send(
    conn: Connection,
    req: Request<UpstreamBody>,
    state: &Arc<BackendState>,
    timeout: Duration,
) -> Result<(Response<Incoming>, Upstream), SendFailure> {
    let address = state.address();
    let mut upstream = conn.upstream;
    let head = upstream.start(req);
    let mut exchange = Exchange {
        state,
        parts: Some((upstream, head)),
    };
    let polled = tokio::time::timeout(
        timeout,
        poll_fn(|cx| match &mut exchange.parts {
            Some((upstream, head)) => upstream.poll_head(head, cx),
            None => Poll::Pending,
        }),
    )
    .await;
    // Finished or timed out: nothing to hand to the background any more.
    let upstream = exchange.parts.take().map(|(upstream, _head)| upstream);
    match (polled, upstream) {
        (Ok(Ok(mut resp)), Some(upstream)) => {
            let headers = resp.headers_mut();
            if headers.contains_key(header::TRANSFER_ENCODING)
                && headers.contains_key(header::CONTENT_LENGTH)
            {
                // Both framings: a sign of response splitting (RFC 9112 §6.3). Not passed on;
                // dropping the response and its connection closes it.
                return Err(SendFailure {
                    error: ProxyError::BadResponse {
                        address,
                        reason: "both Content-Length and Transfer-Encoding",
                    },
                    request: None,
                });
            }
            strip_hop_by_hop(headers);
            Ok((resp, upstream))
        }
        (Ok(Err(mut e)), _) => {
            let request = e.take_message();
            let source = e.into_error();
            let error = match body_error(&source) {
                // The client's body failed (too large, stalled, cut): not the clone's doing.
                Some(b) => ProxyError::Rejected(b.as_request_error()),
                None => ProxyError::Upstream { address, source },
            };
            Err(SendFailure { error, request })
        }
        // (A head without its connection cannot happen: `parts` is taken only above.)
        (Err(_), _) | (Ok(Ok(_)), None) => Err(SendFailure {
            error: ProxyError::ResponseTimeout { address, timeout },
            request: None,
        }),
    }
}

/// A request on its way to `state`'s clone, until its head is here.
struct Exchange<'a> {
    state: &'a Arc<BackendState>,
    parts: Option<(Upstream, PendingHead)>,
}

impl Drop for Exchange<'_> {
    fn drop(&mut self) {
        if let Some((upstream, head)) = self.parts.take() {
            drain::before_head(self.state, upstream, head);
        }
    }
}

/// Our own [`BodyError`] inside hyper's error chain, if that is what failed.
fn body_error(e: &hyper::Error) -> Option<&BodyError> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(b) = s.downcast_ref::<BodyError>() {
            return Some(b);
        }
        source = s.source();
    }
    None
}

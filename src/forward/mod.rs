//! Sending one request to one clone: get one of the clone's idle connections or open one
//! (under `connect_timeout`) *before* the request is handed over, so a failed connect
//! leaves the request and its body untouched for another clone; send it under
//! `response_timeout`. The request was checked and rewritten by [`prepare`] first.
//!
//! Owns: upstream connections and one exchange on them. Must not touch: clone selection,
//! counters (the caller reports outcomes), the client connection.

mod prepare;

pub use prepare::{
    is_websocket, prepare, set_fallback_host, strip_hop_by_hop, valid_host, Prepared,
};

use std::net::SocketAddr;
use std::time::Duration;

use http::header;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::backend::BackendState;
use crate::error::{BodyError, ProxyError};
use crate::idle::Sender;
use crate::upstream_body::UpstreamBody;

/// A connection to a clone, ready for one request.
pub struct Connection {
    pub sender: Sender,
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
        if let Some(sender) = state.idle.take_ready() {
            return Ok(Connection {
                sender,
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
        while let Some(mut sender) = state.idle.take() {
            // Returned at the end of a body and not done with its bookkeeping yet: `ready()`
            // waits for its connection task to run (or reports it closed). No timer: that
            // wait involves no network, and a timer per wait cost measurable CPU when 256
            // busy connections kept the pool's connections from getting ready in time.
            if sender.ready().await.is_ok() {
                return Ok(Connection {
                    sender,
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
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        // One write() of head and body rather than writev: measured 5 % less CPU per
        // request on the loopback benchmark.
        .writev(false)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ProxyError::Upstream { address, source })?;
    let name = state.name();
    let task = tokio::spawn(async move {
        // with_upgrades: after a 101 the connection hands its socket to a WebSocket tunnel.
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(clone = %name, address = %address, error = %e, "upstream connection ended");
        }
    });
    // So the end of a drain can close it (see BackendState::cut_connections).
    state.track_connection(task.abort_handle());
    Ok(Connection {
        sender,
        reused: false,
    })
}

/// Why a send failed, and the request back when it never left the balancer.
pub struct SendFailure {
    pub error: ProxyError,
    pub request: Option<Request<UpstreamBody>>,
}

/// Send `req` and wait for the response head, at most `timeout`.
pub async fn send(
    conn: &mut Connection,
    req: Request<UpstreamBody>,
    address: SocketAddr,
    timeout: Duration,
) -> Result<Response<Incoming>, SendFailure> {
    match tokio::time::timeout(timeout, conn.sender.try_send_request(req)).await {
        Ok(Ok(mut resp)) => {
            let headers = resp.headers_mut();
            if headers.contains_key(header::TRANSFER_ENCODING)
                && headers.contains_key(header::CONTENT_LENGTH)
            {
                // Both framings: a sign of response splitting (RFC 9112 §6.3). Not passed on;
                // dropping the response closes its connection.
                return Err(SendFailure {
                    error: ProxyError::BadResponse {
                        address,
                        reason: "both Content-Length and Transfer-Encoding",
                    },
                    request: None,
                });
            }
            strip_hop_by_hop(headers);
            Ok(resp)
        }
        Ok(Err(mut e)) => {
            let request = e.take_message();
            let source = e.into_error();
            let error = match body_error(&source) {
                // The client's body failed (too large, stalled, cut): not the clone's doing.
                Some(b) => ProxyError::Rejected(b.as_request_error()),
                None => ProxyError::Upstream { address, source },
            };
            Err(SendFailure { error, request })
        }
        Err(_) => Err(SendFailure {
            error: ProxyError::ResponseTimeout { address, timeout },
            request: None,
        }),
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

//! Sending one request to one clone: get a connection from the clone's own pool or open one
//! (under `connect_timeout`) *before* the request is handed over, so a failed connect
//! leaves the request and its body untouched for another clone; rewrite the request for
//! the clone (origin-form target, hop-by-hop headers removed, `X-Forwarded-*` set); send it
//! under `response_timeout`.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::backend::BackendState;
use crate::body::UpstreamBody;
use crate::error::ProxyError;
use crate::pool::Sender;

/// Headers that describe one hop, never the message (RFC 9110 §7.6.1), plus the
/// non-standard `Proxy-Connection`. Removed in both directions together with every field
/// the `Connection` header names.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// What the balancer knows about the client connection, computed once per connection.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The client's IP as an `X-Forwarded-For` element.
    pub forwarded_for: HeaderValue,
    /// "http" or "https".
    pub proto: HeaderValue,
}

impl ClientInfo {
    pub fn new(peer: SocketAddr, proto: &'static str) -> Self {
        let ip = peer.ip().to_canonical().to_string();
        ClientInfo {
            // An IP address is always a valid header value.
            forwarded_for: HeaderValue::from_str(&ip)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            proto: HeaderValue::from_static(proto),
        }
    }
}

/// Remove hop-by-hop headers, including those named by `Connection`, in place.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Names listed in Connection first, while the header is still there.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Rewrite a client request for a clone. Done once per request, before a clone is picked.
pub fn prepare(req: Request<Incoming>, client: &ClientInfo) -> Request<UpstreamBody> {
    let (mut parts, body) = req.into_parts();
    let headers = &mut parts.headers;
    if headers.contains_key(header::CONNECTION) || has_any_hop_by_hop(headers) {
        strip_hop_by_hop(headers);
    }

    // Absolute-form target ("GET http://a/x"): the clone gets origin-form; a missing Host
    // is taken from the authority.
    if let Some(authority) = parts.uri.authority() {
        if !headers.contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                headers.insert(header::HOST, v);
            }
        }
        let pq = parts
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string();
        parts.uri = pq.parse().unwrap_or_else(|_| Uri::from_static("/"));
    }

    append_forwarded_for(headers, &client.forwarded_for);
    headers.insert(X_FORWARDED_PROTO, client.proto.clone());
    match headers.get(header::HOST).cloned() {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
    parts.version = Version::HTTP_11;
    Request::from_parts(parts, UpstreamBody::Incoming(body))
}

fn has_any_hop_by_hop(headers: &HeaderMap) -> bool {
    HOP_BY_HOP.iter().any(|h| headers.contains_key(h))
}

/// `X-Forwarded-For: <existing, joined>, <client>` as one header line.
fn append_forwarded_for(headers: &mut HeaderMap, client: &HeaderValue) {
    let mut existing = headers.get_all(&X_FORWARDED_FOR).iter();
    let Some(first) = existing.next() else {
        headers.insert(X_FORWARDED_FOR, client.clone());
        return;
    };
    let mut joined: Vec<u8> = first.as_bytes().to_vec();
    for v in existing {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(v.as_bytes());
    }
    joined.extend_from_slice(b", ");
    joined.extend_from_slice(client.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(X_FORWARDED_FOR, v);
    }
}

/// A connection to a clone, ready for one request.
pub struct Connection {
    pub sender: Sender,
    /// Taken from the pool (it may have been closed by the clone meanwhile).
    pub reused: bool,
}

/// An idle pooled connection to the clone, or a new one opened within `timeout`.
pub async fn connect(
    state: &BackendState,
    timeout: Duration,
    use_pool: bool,
) -> Result<Connection, ProxyError> {
    if use_pool {
        while let Some(mut sender) = state.pool.take() {
            // A connection returned to the pool at the end of a body may not have finished
            // its bookkeeping yet; `ready()` waits for that (or reports it closed).
            if let Ok(Ok(())) = tokio::time::timeout(timeout, sender.ready()).await {
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
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ProxyError::Upstream { address, source })?;
    let cut = std::sync::Arc::clone(&state.cut);
    tokio::spawn(async move {
        let cut = cut.notified();
        tokio::select! {
            res = conn => if let Err(e) = res {
                tracing::debug!(clone = %address, error = %e, "upstream connection ended");
            },
            _ = cut => tracing::debug!(clone = %address, "upstream connection cut: drain timeout"),
        }
    });
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
            strip_hop_by_hop(resp.headers_mut());
            Ok(resp)
        }
        Ok(Err(mut e)) => {
            let request = e.take_message();
            Err(SendFailure {
                error: ProxyError::Upstream {
                    address,
                    source: e.into_error(),
                },
                request,
            })
        }
        Err(_) => Err(SendFailure {
            error: ProxyError::ResponseTimeout { address, timeout },
            request: None,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_named_and_standard_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("X-Secret, close"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn forwarded_for_appends_one_line() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("2.2.2.2, 3.3.3.3"),
        );
        append_forwarded_for(&mut h, &HeaderValue::from_static("127.0.0.1"));
        let all: Vec<_> = h.get_all("x-forwarded-for").iter().collect();
        assert_eq!(all, vec!["1.1.1.1, 2.2.2.2, 3.3.3.3, 127.0.0.1"]);
    }
}

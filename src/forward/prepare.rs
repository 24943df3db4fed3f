//! Checking a client request and rewriting it for a clone: framing rules (RFC 9112),
//! `[limits]`, Host, origin-form target, hop-by-hop headers removed, `X-Forwarded-*` set.
//!
//! Owns: what a request may look like on its way to a clone. Must not touch: clones,
//! connections, the table (it reads only the policy it is given).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Uri, Version};
use hyper::body::{Body, Incoming};

use crate::context::ConnContext;
use crate::error::RequestError;
use crate::table::Policy;
use crate::upstream_body::{ClientBody, UpstreamBody};

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

/// Which of the headers the request path cares about are present: one pass over the
/// names (standard names compare as small integers), so the common request, which has
/// none of them, costs no hash lookup for each.
#[derive(Debug, Default, Clone, Copy)]
struct Present {
    hop_by_hop: bool,
    transfer_encoding: bool,
    forwarded_for: bool,
    forwarded_host: bool,
}

fn scan(headers: &HeaderMap) -> Present {
    let mut p = Present::default();
    for name in headers.keys() {
        if *name == header::TRANSFER_ENCODING {
            p.transfer_encoding = true;
            p.hop_by_hop = true;
        } else if HOP_BY_HOP.contains(name) || *name == HTTP2_SETTINGS {
            p.hop_by_hop = true;
        } else if *name == X_FORWARDED_FOR {
            p.forwarded_for = true;
        } else if *name == X_FORWARDED_HOST {
            p.forwarded_host = true;
        }
    }
    p
}

/// Remove hop-by-hop headers, including those named by `Connection`, in place.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if scan(headers).hop_by_hop {
        remove_hop_by_hop(headers);
    }
}

fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Names listed in Connection first, while the header is still there. The usual
    // options "keep-alive" and "close" name no field of their own.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        // `Connection: Host` would leave the request without its target's host: Host is
        // end-to-end whatever Connection says.
        if name != header::HOST {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// A client request checked and rewritten for a clone.
pub struct Prepared {
    pub request: Request<UpstreamBody>,
    /// The framing was doubtful (`Content-Length` and `Transfer-Encoding` both sent): the
    /// client connection is closed after the response (RFC 9112 §6.1).
    pub close_after: bool,
    /// The client sent no Host (HTTP/1.0): each attempt sets the address of its clone
    /// (see [`set_fallback_host`]), as HTTP/1.1 requires a Host on every request.
    pub needs_host: bool,
}

/// A request that came without Host goes to `clone` with `Host: <clone's address>` (what
/// nginx sends by default). Called once per attempt, as a retry goes to another clone.
pub fn set_fallback_host(req: &mut Request<UpstreamBody>, clone: &HeaderValue) {
    req.headers_mut().insert(header::HOST, clone.clone());
}

const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Check a client request against the framing rules and `[limits]`, and rewrite it for a
/// clone: origin-form target, hop-by-hop headers removed, `X-Forwarded-*` set. Done once per
/// request, before a clone is picked (so a rejected request touches no clone).
pub fn prepare(
    req: Request<Incoming>,
    client: &ConnContext,
    policy: &Policy,
    websocket: bool,
) -> Result<Prepared, RequestError> {
    let (proxy, limits) = (&policy.proxy, &policy.limits);
    let (mut parts, body) = req.into_parts();
    let target_len = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    if target_len as u64 > limits.max_request_line {
        return Err(RequestError::UriTooLong);
    }
    let headers = &mut parts.headers;
    let present = scan(headers);
    let close_after = present.transfer_encoding && check_framing(parts.version, headers)?;
    if close_after {
        // Framed by chunked; the clone gets the balancer's own framing either way.
        headers.remove(header::CONTENT_LENGTH);
    }
    if limits.max_body > 0 {
        if let Some(len) = body.size_hint().exact() {
            if len > limits.max_body {
                return Err(RequestError::BodyTooLarge);
            }
        }
    }

    let mut needs_host = false;
    // Absolute-form target ("GET http://a/x"): the clone gets origin-form, and Host is the
    // target's authority, whatever Host said (RFC 9112 §3.2.2).
    if let Some(authority) = parts.uri.authority() {
        let host = HeaderValue::from_str(authority.as_str()).map_err(|_| RequestError::BadHost)?;
        if !valid_host(&host) {
            return Err(RequestError::BadHost);
        }
        headers.insert(header::HOST, host);
        let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        parts.uri = Uri::try_from(pq).map_err(|_| RequestError::BadHost)?;
    } else {
        let mut hosts = headers.get_all(header::HOST).iter();
        match (hosts.next(), hosts.next()) {
            (None, _) if parts.version >= Version::HTTP_11 => {
                return Err(RequestError::MissingHost)
            }
            (None, _) => needs_host = true,
            (Some(_), Some(_)) => return Err(RequestError::DuplicateHost),
            (Some(h), None) if !valid_host(h) => return Err(RequestError::BadHost),
            _ => {}
        }
    }

    // Every field named in Connection goes before the balancer adds its own headers, so
    // `Connection: X-Forwarded-For` cannot erase them.
    if present.hop_by_hop {
        let upgrade = websocket
            .then(|| headers.get(header::UPGRADE).cloned())
            .flatten();
        remove_hop_by_hop(headers);
        headers.remove(HTTP2_SETTINGS);
        // The one exception to hop-by-hop removal: a WebSocket handshake goes to the clone
        // as one, so the clone can switch protocols.
        if let Some(upgrade) = upgrade {
            headers.insert(header::UPGRADE, upgrade);
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
    }
    if proxy.trust_forwarded && present.forwarded_for {
        append_forwarded_for(headers, &client.forwarded_for);
    } else {
        headers.insert(X_FORWARDED_FOR, client.forwarded_for.clone());
    }
    headers.insert(X_FORWARDED_PROTO, client.proto.clone());
    match headers.get(header::HOST).cloned() {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host);
        }
        None if present.forwarded_host => {
            headers.remove(X_FORWARDED_HOST);
        }
        None => {}
    }
    parts.version = Version::HTTP_11;
    let body = ClientBody::new(body, limits.max_body, proxy.body_read_timeout);
    Ok(Prepared {
        request: Request::from_parts(parts, UpstreamBody::Client(body)),
        close_after,
        needs_host,
    })
}

/// An HTTP/1.1 WebSocket handshake: `Upgrade: websocket` with `Connection: upgrade`.
/// Any other upgrade (h2c included) is not forwarded.
pub fn is_websocket(req: &Request<Incoming>) -> bool {
    let h = req.headers();
    req.version() == Version::HTTP_11
        && h.get(header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        && h.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
        })
}

/// Transfer-Encoding must be exactly "chunked" (one field, one coding) on HTTP/1.1 and
/// absent on HTTP/1.0; anything else is how requests get smuggled. Returns whether
/// Content-Length came with it.
fn check_framing(version: Version, headers: &HeaderMap) -> Result<bool, RequestError> {
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    let Some(first) = te.next() else {
        return Ok(false);
    };
    if version == Version::HTTP_10 || version == Version::HTTP_09 {
        return Err(RequestError::TransferEncodingHttp10);
    }
    let chunked = first
        .to_str()
        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
    if !chunked || te.next().is_some() {
        return Err(RequestError::BadTransferEncoding);
    }
    Ok(headers.contains_key(header::CONTENT_LENGTH))
}

/// `host[:port]`: a reg-name, IPv4 or bracketed IPv6 literal, and an optional numeric port.
pub fn valid_host(v: &HeaderValue) -> bool {
    let Ok(s) = v.to_str() else { return false };
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((literal, after)) = rest.split_once(']') else {
            return false;
        };
        if literal.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => ("ipv6", Some(port)),
                None => return false,
            },
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b));
    let port_ok = port.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 5
            && p.bytes().all(|b| b.is_ascii_digit())
            && p.parse::<u16>().is_ok()
    });
    host_ok && port_ok
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
    fn hosts() {
        let ok = |s: &'static str| valid_host(&HeaderValue::from_static(s));
        for good in [
            "a",
            "example.com",
            "example.com:8080",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:80",
            "xn--d1acufc.xn--p1ai",
        ] {
            assert!(ok(good), "{good}");
        }
        for bad in [
            "", ":80", "a:", "a:b", "a:99999", "a b", "a/b", "user@a", "[::1", "[zz]:1", "a:80:80",
            "[::1]x",
        ] {
            assert!(!ok(bad), "{bad}");
        }
    }

    #[test]
    fn transfer_encoding_rules() {
        let h = |te: &[&'static str], cl: bool| {
            let mut m = HeaderMap::new();
            for v in te {
                m.append(header::TRANSFER_ENCODING, HeaderValue::from_static(v));
            }
            if cl {
                m.insert(header::CONTENT_LENGTH, HeaderValue::from_static("5"));
            }
            m
        };
        assert_eq!(
            check_framing(Version::HTTP_11, &h(&["chunked"], false)),
            Ok(false)
        );
        assert_eq!(
            check_framing(Version::HTTP_11, &h(&["Chunked "], true)),
            Ok(true)
        );
        for bad in [
            &["chunked, chunked"][..],
            &["gzip, chunked"],
            &["chunked", "chunked"],
            &["identity"],
        ] {
            assert_eq!(
                check_framing(Version::HTTP_11, &h(bad, false)),
                Err(RequestError::BadTransferEncoding),
                "{bad:?}"
            );
        }
        assert_eq!(
            check_framing(Version::HTTP_10, &h(&["chunked"], false)),
            Err(RequestError::TransferEncodingHttp10)
        );
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

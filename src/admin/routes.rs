//! The admin API's routes, its token check and its cross-site guard.
//!
//! Public (no token): `GET /` (the status page: static, it fetches `/status` itself with
//! the token the user gives it), `GET /live`, `GET /ready`.
//!
//! Everything else needs `Authorization: Bearer <token>` when `[admin] token` is set
//! (compared in constant time; the token read from the running configuration, so a
//! reload's new token applies at once): `GET /status`, `GET /metrics`, `POST /reload`,
//! `POST /backends/{name}/disable`, `POST /backends/{name}/enable`,
//! `GET /backends/{name}/wait-drained?timeout=60s`, `POST /deploy/pin` (body exactly
//! `{"version": "v1"}`, at most [`MAX_PIN_BODY`] bytes: pin the active version) and
//! `DELETE /deploy/pin` (unpin); both answer the `deploy` object of `/status`, 400 for a
//! bad body, 409 when the pin is refused (mixed mode, a version no clone reports).
//!
//! A `POST` or `DELETE` carrying an `Origin` other than the admin's own, or
//! `Sec-Fetch-Site: cross-site`, is refused with 403, so a web page cannot steer a loopback
//! admin that has no token. Errors are `{"error": "one line"}`; an unknown path is 404, a
//! known one with the wrong method 405.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HOST, ORIGIN};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::json;

use super::{json, metrics, Admin};
use crate::control::Drain;
use crate::reload::{Outcome, Trigger};

type Answer = Response<Full<Bytes>>;

/// The longest `wait-drained` may be asked to wait.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);
/// How often `wait-drained` looks at the clone's in-flight count.
const WAIT_POLL: Duration = Duration::from_millis(20);
/// The largest body `POST /deploy/pin` reads (`{"version": "..."}` needs far less).
const MAX_PIN_BODY: usize = 4096;
/// How long `POST /deploy/pin` waits for its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) async fn handle(
    req: Request<Incoming>,
    admin: Arc<Admin>,
    own: SocketAddr,
) -> Result<Answer, Infallible> {
    Ok(route(req, &admin, own).await)
}

/// The request by value: only `POST /deploy/pin` reads its body; every other route looks
/// at the head alone.
async fn route(req: Request<Incoming>, admin: &Admin, own: SocketAddr) -> Answer {
    let (head, body) = req.into_parts();
    let path = head.uri.path();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = &head.method;
    // The public three.
    match segments.as_slice() {
        [""] => return only(method, &Method::GET).unwrap_or_else(page),
        ["live"] => {
            return only(method, &Method::GET)
                .unwrap_or_else(|| json(StatusCode::OK, &json!({"status": "live"})))
        }
        ["ready"] => {
            return only(method, &Method::GET).unwrap_or_else(|| {
                if admin.is_ready() {
                    json(StatusCode::OK, &json!({"status": "ready"}))
                } else {
                    error(StatusCode::SERVICE_UNAVAILABLE, "not ready")
                }
            })
        }
        _ => {}
    }
    let Some(token_set) = authorize(&head.headers, admin) else {
        let mut resp = error(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
        resp.headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        return resp;
    };
    if *method == Method::POST || *method == Method::DELETE {
        if let Some(refused) = same_origin(&head.headers, own, token_set) {
            return refused;
        }
    }
    match segments.as_slice() {
        ["status"] => only(method, &Method::GET).unwrap_or_else(|| {
            json(
                StatusCode::OK,
                &json::status(&admin.control.status(), admin.config_path()),
            )
        }),
        ["metrics"] => only(method, &Method::GET).unwrap_or_else(|| metrics_answer(admin)),
        ["reload"] => only(method, &Method::POST).unwrap_or_else(|| reload(admin)),
        ["backends", name, action] => {
            let Some(name) = percent_decode(name) else {
                return error(StatusCode::BAD_REQUEST, "clone name: bad percent-encoding");
            };
            match *action {
                "disable" | "enable" => only(method, &Method::POST)
                    .unwrap_or_else(|| set_disabled(admin, &name, *action == "disable")),
                "wait-drained" => match only(method, &Method::GET) {
                    Some(refused) => refused,
                    None => wait_drained(admin, &name, head.uri.query()).await,
                },
                _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
            }
        }
        ["deploy", "pin"] => match *method {
            Method::POST => match pin_body(body).await {
                Ok(version) => pin(admin, Some(&version)),
                Err(refused) => refused,
            },
            Method::DELETE => pin(admin, None),
            _ => {
                let mut resp = error(StatusCode::METHOD_NOT_ALLOWED, "use POST or DELETE here");
                resp.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("POST, DELETE"));
                resp
            }
        },
        _ => error(StatusCode::NOT_FOUND, "no such endpoint"),
    }
}

/// 405 unless the request uses `allowed`.
fn only(method: &Method, allowed: &Method) -> Option<Answer> {
    if method == allowed {
        return None;
    }
    let mut resp = error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("use {allowed} here"),
    );
    if let Ok(v) = HeaderValue::from_str(allowed.as_str()) {
        resp.headers_mut().insert(ALLOW, v);
    }
    Some(resp)
}

/// 401 unless the request carries the running configuration's token (when one is set).
/// `Some(whether a token is set)` when the request may go on, `None` for a 401. A
/// `token_file` whose token was never read (a `Config` not loaded through `reload::load`
/// or `Balancer::start`) locks everything rather than opening it.
fn authorize(headers: &HeaderMap, admin: &Admin) -> Option<bool> {
    let table = admin.control.table().load();
    let config = table.config().admin.as_ref();
    let Some(token) = config.and_then(|a| a.token.as_ref()) else {
        return match config.and_then(|a| a.token_file.as_ref()) {
            Some(_) => None,
            None => Some(false),
        };
    };
    let given = headers
        .get(AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .and_then(|v| {
            let (scheme, rest) = v.split_at(v.len().min(7));
            scheme.eq_ignore_ascii_case(b"bearer ").then_some(rest)
        });
    given
        .is_some_and(|candidate| token.matches(candidate))
        .then_some(true)
}

/// 403 for a state-changing request sent by another site's page: `Sec-Fetch-Site:
/// cross-site`, or an `Origin` other than the admin's own. The admin's own origins are
/// `http://ADDR` and `http://localhost:PORT`; with a token set, also the page's own host
/// (`http://` + the request's `Host`: the status page reached by a DNS name). Without a
/// token that last one is not trusted, since a DNS-rebound name would match it.
fn same_origin(headers: &HeaderMap, own: SocketAddr, token_set: bool) -> Option<Answer> {
    let cross_site = headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"cross-site"));
    let foreign_origin = headers.get(ORIGIN).is_some_and(|origin| {
        let origin = origin.to_str().unwrap_or("");
        let own_name = origin == format!("http://{own}")
            || origin == format!("http://localhost:{}", own.port());
        let page_host = token_set
            && headers
                .get(HOST)
                .and_then(|h| h.to_str().ok())
                .is_some_and(|h| origin == format!("http://{h}"));
        !(own_name || page_host)
    });
    (cross_site || foreign_origin)
        .then(|| error(StatusCode::FORBIDDEN, "cross-site request refused"))
}

fn set_disabled(admin: &Admin, name: &str, disabled: bool) -> Answer {
    match admin.control.set_disabled(name, disabled) {
        Some(clone) => json(StatusCode::OK, &json::clone_entry(&clone)),
        None => error(StatusCode::NOT_FOUND, &format!("no clone named {name:?}")),
    }
}

/// The version a `POST /deploy/pin` names, or its 400 (408 when the body does not come):
/// at most [`MAX_PIN_BODY`] bytes of `{"version": "..."}`, nothing else.
async fn pin_body(body: Incoming) -> Result<String, Answer> {
    let read = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_PIN_BODY).collect());
    let bytes = match read.await {
        Err(_) => {
            return Err(error(
                StatusCode::REQUEST_TIMEOUT,
                &format!("body not received within {}s", BODY_TIMEOUT.as_secs()),
            ))
        }
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                &format!("body over {MAX_PIN_BODY} bytes: expected {{\"version\": \"...\"}}"),
            ))
        }
        Ok(Err(e)) => return Err(error(StatusCode::BAD_REQUEST, &format!("body: {e}"))),
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let expected = |why: &str| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("body: expected {{\"version\": \"...\"}}: {why}"),
        )
    };
    // A JSON object with exactly one key, `version`, a string. (serde's derive would also
    // take `["v1"]` for such a struct.)
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| expected(&e.to_string()))?;
    let Some(object) = value.as_object() else {
        return Err(expected("not a JSON object"));
    };
    if let Some(other) = object.keys().find(|k| *k != "version") {
        return Err(expected(&format!("unknown field `{other}`")));
    }
    match object.get("version") {
        Some(serde_json::Value::String(v)) => Ok(v.clone()),
        Some(_) => Err(expected("`version` is not a string")),
        None => Err(expected("no `version`")),
    }
}

/// Pin (`Some`) or unpin: 200 with the `deploy` object, 409 with the reason nothing changed.
fn pin(admin: &Admin, version: Option<&str>) -> Answer {
    match admin.control.pin(version) {
        Ok(deploy) => json(StatusCode::OK, &json::deploy(&deploy)),
        Err(e) => error(StatusCode::CONFLICT, &e.to_string()),
    }
}

/// `GET /backends/{name}/wait-drained?timeout=60s`.
async fn wait_drained(admin: &Admin, name: &str, query: Option<&str>) -> Answer {
    let timeout = match query_param(query, "timeout") {
        None => Duration::from_secs(60),
        Some(t) => match crate::config::parse_duration(&t) {
            Ok(d) if d <= MAX_WAIT => d,
            Ok(_) => return error(StatusCode::BAD_REQUEST, "timeout: at most 24h"),
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid duration \"{t}\" for `timeout`: {e}"),
                )
            }
        },
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match admin.control.drain_state(name) {
            Drain::NeverSeen => {
                return error(StatusCode::NOT_FOUND, &format!("no clone named {name:?}"))
            }
            Drain::Enabled => {
                return error(
                    StatusCode::CONFLICT,
                    &format!("clone {name:?} is enabled: disable it first"),
                )
            }
            Drain::Drained => return json(StatusCode::OK, &json!({"name": name, "in_flight": 0})),
            Drain::Busy(n) if tokio::time::Instant::now() >= deadline => {
                return json(
                    StatusCode::REQUEST_TIMEOUT,
                    &json!({"error": format!("clone {name:?} still has {n} in flight"), "in_flight": n}),
                )
            }
            Drain::Busy(_) => tokio::time::sleep(WAIT_POLL).await,
        }
    }
}

fn reload(admin: &Admin) -> Answer {
    let Some(reloader) = &admin.reloader else {
        return error(
            StatusCode::CONFLICT,
            "no configuration file: this balancer was started without one",
        );
    };
    match reloader.reload(Trigger::Signal) {
        Outcome::Reloaded(s) => json(
            StatusCode::OK,
            &json!({"generation": s.generation, "added": s.added, "removed": s.removed, "changed": s.changed}),
        ),
        Outcome::Unchanged => json(
            StatusCode::OK,
            &json!({"generation": admin.control.status().generation, "added": [], "removed": [], "changed": []}),
        ),
        Outcome::Failed(errors) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"generation": admin.control.status().generation, "errors": errors}),
        ),
    }
}

fn metrics_answer(admin: &Admin) -> Answer {
    match metrics::render(&admin.control.status()) {
        Ok(text) => {
            let mut resp = Response::new(Full::new(Bytes::from(text)));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

/// The live status page (`page.html`): static HTML that polls `/status` from the browser
/// with the token the user types in, so it holds no data itself and needs no token.
fn page() -> Answer {
    let mut resp = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    let headers = resp.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Its own inline script and style, fetches to its own origin, and never inside another
    // site's frame (where a click on Disable could be stolen).
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; \
             base-uri 'none'",
        ),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    resp
}

const PAGE: &str = include_str!("page.html");

fn json(status: StatusCode, body: &serde_json::Value) -> Answer {
    let mut text = body.to_string();
    text.push('\n');
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn error(status: StatusCode, message: &str) -> Answer {
    json(status, &json!({ "error": message }))
}

/// `key`'s value in a query string, percent-decoded.
fn query_param(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| percent_decode(v).unwrap_or_else(|| v.to_string()))
    })
}

/// `%41b` → `Ab`; `None` for a bad escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("web%2F1").as_deref(), Some("web/1"));
        assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("bad%2"), None);
        assert_eq!(percent_decode("bad%zz"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
        assert_eq!(
            query_param(Some("x=1&timeout=500ms"), "timeout").as_deref(),
            Some("500ms")
        );
        assert_eq!(query_param(Some("x=1"), "timeout"), None);
    }
}

//! X-Request-Id on real sockets: made when absent, kept when trusted and sane, replaced
//! otherwise; the same value on the request to the clone, the response, clonelb's own
//! error answers and pages, and the access log; over HTTP/1.1 and HTTP/2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/raw.rs"]
mod raw;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

/// A new ID: 32 lowercase hex digits.
fn is_generated(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// GET `/` on a fresh connection, with `X-Request-Id: id` when given.
async fn get_with_id(addr: SocketAddr, id: Option<HeaderValue>) -> Answer {
    let mut req = Request::get("/").header("host", "test.local");
    if let Some(id) = id {
        req = req.header("x-request-id", id);
    }
    let req = req.body(Full::new(Bytes::new())).unwrap();
    timeout(WAIT, async { Client::connect(addr).await.send(req).await })
        .await
        .unwrap()
}

/// The response's ID.
fn answered_id(a: &Answer) -> String {
    let all: Vec<_> = a.headers.get_all("x-request-id").iter().collect();
    assert_eq!(all.len(), 1, "response IDs: {all:?}");
    all[0].to_str().unwrap().to_string()
}

/// The ID the clone saw on its last request (exactly one field).
fn seen_id(c: &TestClone) -> String {
    let h = c.last_headers();
    let all: Vec<_> = h.get_all("x-request-id").iter().collect();
    assert_eq!(all.len(), 1, "the clone saw {all:?}");
    all[0].to_str().unwrap().to_string()
}

#[tokio::test]
async fn an_id_is_made_when_the_client_sends_none() {
    let c = spawn_clone("a");
    let lb = spawn_lb(&config_text("round-robin", &[(&c, 1)], ""));
    let mut ids = HashSet::new();
    for _ in 0..5 {
        let a = get_with_id(lb.http_addr(), None).await;
        assert_eq!(a.status, 200);
        let id = answered_id(&a);
        assert!(is_generated(&id), "{id:?}");
        assert_eq!(seen_id(&c), id);
        ids.insert(id);
    }
    assert_eq!(ids.len(), 5, "IDs repeat: {ids:?}");
}

#[tokio::test]
async fn a_sane_client_id_is_kept_when_trusted() {
    let c = spawn_clone("a");
    // trust_forwarded is on by default.
    let lb = spawn_lb(&config_text("round-robin", &[(&c, 1)], ""));
    let longest = "y".repeat(128);
    let all_visible: String = (0x21u8..=0x7e).map(char::from).take(128).collect();
    for id in ["abc-123", "!", "~", &longest, &all_visible] {
        let a = get_with_id(lb.http_addr(), Some(HeaderValue::from_str(id).unwrap())).await;
        assert_eq!(a.status, 200);
        assert_eq!(answered_id(&a), id);
        assert_eq!(seen_id(&c), id);
    }
}

#[tokio::test]
async fn an_insane_client_id_is_replaced() {
    let c = spawn_clone("a");
    let lb = spawn_lb(&config_text("round-robin", &[(&c, 1)], ""));
    let insane: Vec<HeaderValue> = vec![
        HeaderValue::from_static("has space"),
        HeaderValue::from_static("tab\there"),
        HeaderValue::from_str(&"x".repeat(129)).unwrap(),
        HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        HeaderValue::from_bytes(b"\x80\xff").unwrap(),
        HeaderValue::from_static(""),
    ];
    for bad in insane {
        let a = get_with_id(lb.http_addr(), Some(bad.clone())).await;
        assert_eq!(a.status, 200);
        let id = answered_id(&a);
        assert!(is_generated(&id), "{bad:?} gave {id:?}");
        assert_eq!(seen_id(&c), id, "for {bad:?}");
    }
}

#[tokio::test]
async fn two_client_ids_reach_the_clone_as_one_the_response_names() {
    let c = spawn_clone("a");
    let lb = spawn_lb(&config_text("round-robin", &[(&c, 1)], ""));
    let mut s = TcpStream::connect(lb.http_addr()).await.unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nHost: t\r\nX-Request-Id: first\r\nX-Request-Id: second\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    let answered: Vec<&str> = raw
        .split("\r\n")
        .filter(|l| l.to_ascii_lowercase().starts_with("x-request-id:"))
        .map(|l| l[13..].trim())
        .collect();
    assert_eq!(answered.len(), 1, "{raw}");
    assert_eq!(seen_id(&c), answered[0]);
}

#[tokio::test]
async fn the_clones_own_x_request_id_is_replaced_by_the_requests() {
    let clone = raw::RawClone::scripted(|_, _| {
        raw::Reply::send(
            b"HTTP/1.1 200 OK\r\nX-Request-Id: the-clones-own\r\nContent-Length: 2\r\n\r\nok",
        )
    });
    let lb = spawn_lb(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[[backend]]\naddress = \"{}\"\n",
        clone.addr
    ));
    let a = get_with_id(lb.http_addr(), Some(HeaderValue::from_static("mine-1"))).await;
    assert_eq!(a.status, 200);
    assert_eq!(answered_id(&a), "mine-1");
    let a = get_with_id(lb.http_addr(), None).await;
    let id = answered_id(&a);
    assert!(is_generated(&id), "{id:?}");
    let requests = clone.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[1].one("x-request-id"), Some(id.as_str()));
}

#[tokio::test]
async fn a_client_id_is_replaced_when_not_trusted() {
    let c = spawn_clone("a");
    let lb = spawn_lb(&config_text(
        "round-robin",
        &[(&c, 1)],
        "trust_forwarded = false",
    ));
    let a = get_with_id(lb.http_addr(), Some(HeaderValue::from_static("abc-123"))).await;
    assert_eq!(a.status, 200);
    let id = answered_id(&a);
    assert!(is_generated(&id), "{id:?}");
    assert_eq!(seen_id(&c), id);
}

/// The JSON access lines of `log`, once there are `n`.
async fn json_lines(log: &std::path::Path, n: usize) -> Vec<Value> {
    assert!(
        eventually(WAIT, || file_lines(log).len() >= n).await,
        "{:?}",
        file_lines(log)
    );
    file_lines(log)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test]
async fn the_clone_the_response_and_the_access_log_carry_the_same_id() {
    let c = spawn_clone("a");
    let dir = fresh_dir("rid-log");
    let log = dir.join("access.log");
    let lb = spawn_lb(&format!(
        "{}[log]\naccess = \"json\"\naccess_path = \"{}\"\n",
        config_text("round-robin", &[(&c, 1)], ""),
        log.display()
    ));
    let mut want = Vec::new();
    for sent in [
        None,
        Some(HeaderValue::from_static("from-client-7")),
        Some(HeaderValue::from_static("bad id")),
    ] {
        let a = get_with_id(lb.http_addr(), sent).await;
        assert_eq!(a.status, 200);
        let id = answered_id(&a);
        assert_eq!(seen_id(&c), id);
        want.push(id);
    }
    assert_eq!(want[1], "from-client-7");
    let logged: Vec<String> = json_lines(&log, 3)
        .await
        .iter()
        .map(|v| v["request_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(logged, want);
    drop(lb);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn clonelbs_own_answers_carry_the_id_in_the_header_and_the_last_line() {
    // 503: no clone at all.
    let none = spawn_lb("[listen]\nhttp = \"127.0.0.1:0\"\n");
    let a = get_with_id(none.http_addr(), None).await;
    assert_eq!(a.status, 503);
    assert!(is_generated(&answered_id(&a)));
    // `error_line` checks the body ends with `request id: <the header's ID>`.
    assert_eq!(
        a.error_line(),
        "503 Service Unavailable: no upstream server is available\n"
    );
    let a = get_with_id(none.http_addr(), Some(HeaderValue::from_static("abc-123"))).await;
    assert_eq!(answered_id(&a), "abc-123");
    assert!(
        a.text().ends_with("\nrequest id: abc-123\n"),
        "{}",
        a.text()
    );

    // 502: the clone refuses.
    let refused = spawn_lb(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[[backend]]\naddress = \"{}\"\n",
        refused_addr()
    ));
    let a = get_with_id(refused.http_addr(), Some(HeaderValue::from_static("r-502"))).await;
    assert_eq!(a.status, 502);
    assert_eq!(answered_id(&a), "r-502");
    assert_eq!(
        a.error_line(),
        "502 Bad Gateway: the upstream server refused the connection\n"
    );

    // 400: a request clonelb rejects (two Host fields) before any clone.
    let mut s = TcpStream::connect(none.http_addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nX-Request-Id: rej-1\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    timeout(WAIT, s.read_to_end(&mut raw))
        .await
        .unwrap()
        .unwrap();
    let raw = String::from_utf8(raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 400"), "{raw}");
    assert!(
        raw.to_ascii_lowercase()
            .contains("\r\nx-request-id: rej-1\r\n"),
        "{raw}"
    );
    let body = raw.split_once("\r\n\r\n").unwrap().1;
    assert!(body.starts_with("400 Bad Request: "), "{raw}");
    assert!(body.ends_with("\nrequest id: rej-1\n"), "{raw}");
}

#[tokio::test]
async fn error_pages_show_the_id_escaped_for_their_type() {
    let dir = fresh_dir("rid-pages");
    std::fs::write(dir.join("503.html"), "<p>id={{request_id}}</p>\n").unwrap();
    std::fs::write(dir.join("502.json"), "{\"id\": \"{{request_id}}\"}\n").unwrap();
    let text =
        "[listen]\nhttp = \"127.0.0.1:0\"\n[error_pages]\n503 = \"503.html\"\n502 = \"502.json\"\n";
    let label = dir.join("lb.toml").display().to_string();
    let checked = clonelb::config::parse(&label, text).unwrap();
    let lb = clonelb::Balancer::start_with_workers(&checked.config, 2).unwrap();

    // A sane ID that is HTML: escaped in the page, as sent in the header.
    let a = get_with_id(lb.http_addr(), Some(HeaderValue::from_static("<x>&"))).await;
    assert_eq!(a.status, 503);
    assert_eq!(answered_id(&a), "<x>&");
    assert_eq!(a.text(), "<p>id=&lt;x&gt;&amp;</p>\n");
    // A made one.
    let a = get_with_id(lb.http_addr(), None).await;
    let id = answered_id(&a);
    assert!(is_generated(&id));
    assert_eq!(a.text(), format!("<p>id={id}</p>\n"));

    // A JSON page: the ID is a JSON string's content.
    let text = format!(
        "{text}[[backend]]\naddress = \"{}\"\nname = \"gone\"\n",
        refused_addr()
    );
    let checked = clonelb::config::parse(&label, &text).unwrap();
    let lb = clonelb::Balancer::start_with_workers(&checked.config, 2).unwrap();
    let a = get_with_id(lb.http_addr(), Some(HeaderValue::from_static(r#"a"b\c"#))).await;
    assert_eq!(a.status, 502);
    assert_eq!(answered_id(&a), r#"a"b\c"#);
    let page: Value =
        serde_json::from_slice(&a.body).unwrap_or_else(|e| panic!("{e}: {}", a.text()));
    assert_eq!(page["id"], r#"a"b\c"#);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn http2_responses_carry_the_id_too() {
    let c = spawn_clone("a");
    let dir = fresh_dir("rid-h2");
    let log = dir.join("access.log");
    let lb = spawn_lb(&format!(
        "{}[log]\naccess = \"json\"\naccess_path = \"{}\"\n",
        config_text("round-robin", &[(&c, 1)], ""),
        log.display()
    ));
    let tcp = TcpStream::connect(lb.http_addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut ids = Vec::new();
    for sent in [None, Some("h2-client-id")] {
        let mut req = Request::get("http://localhost/");
        if let Some(id) = sent {
            req = req.header("x-request-id", id);
        }
        let resp = timeout(
            WAIT,
            sender.send_request(req.body(Full::new(Bytes::new())).unwrap()),
        )
        .await
        .unwrap()
        .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        let body = timeout(WAIT, resp.into_body().collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"clone=a");
        match sent {
            None => assert!(is_generated(&id), "{id:?}"),
            Some(s) => assert_eq!(id, s),
        }
        assert_eq!(seen_id(&c), id);
        ids.push(id);
    }
    let lines = json_lines(&log, 2).await;
    for (line, id) in lines.iter().zip(&ids) {
        assert_eq!(line["request_id"], id.as_str(), "{line}");
        assert_eq!(line["protocol"], "HTTP/2.0", "{line}");
    }
    drop(lb);
    let _ = std::fs::remove_dir_all(dir);
}

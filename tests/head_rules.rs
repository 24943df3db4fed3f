//! The request head on its way in and out, byte for byte: the Host every forwarded request
//! carries (a client's, else its clone's address, per attempt), and the 414 for a request
//! target over `max_request_line` even when the head also overflows `max_header_size`.
//!
//! In the style of `tests/hostile.rs`: raw sockets on both sides, a [`RawClone`] that
//! records what it received.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/raw.rs"]
mod raw;

use std::net::SocketAddr;

use common::*;
use raw::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// lb.toml for `clones` (round-robin, in order) with extra `[proxy]` and `[limits]` lines.
fn lb_toml(clones: &[SocketAddr], proxy: &str, limits: &str) -> String {
    let mut s = format!("[listen]\nhttp = \"127.0.0.1:0\"\n[proxy]\n{proxy}\n[limits]\n{limits}\n");
    for a in clones {
        s.push_str(&format!("[[backend]]\naddress = \"{a}\"\n"));
    }
    s
}

/// Send `bytes` on a new connection and read until `responses` whole responses are in.
async fn ask(lb: &clonelb::Balancer, bytes: &[u8], responses: usize) -> RawAnswer {
    exchange_keep(lb.http_addr(), bytes, responses, CLOSE_WAIT)
        .await
        .1
}

// ---------------------------------------------------------------------------------------
// Host on every forwarded request
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_request_without_host_reaches_its_clone_with_the_clones_address_as_host() {
    let clone = RawClone::recorder();
    let lb = spawn_lb(&lb_toml(&[clone.addr], "", ""));
    let a = ask(&lb, b"GET /old HTTP/1.0\r\n\r\n", 1).await;
    assert_eq!(a.only().status(), 200, "{:?}", a.text());
    let a = ask(&lb, b"GET /named HTTP/1.0\r\nHost: app.example\r\n\r\n", 1).await;
    assert_eq!(a.only().status(), 200, "{:?}", a.text());
    let reqs = clone.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    // Without a Host from the client: exactly one, the clone's address; no X-Forwarded-Host.
    assert_eq!(reqs[0].start, "GET /old HTTP/1.1");
    assert_eq!(
        reqs[0].all("host"),
        [clone.addr.to_string()],
        "{:?}",
        reqs[0]
    );
    assert!(!reqs[0].has("x-forwarded-host"), "{:?}", reqs[0]);
    // With one: the client's, unchanged.
    assert_eq!(reqs[1].all("host"), ["app.example"], "{:?}", reqs[1]);
    assert_eq!(reqs[1].one("x-forwarded-host"), Some("app.example"));
    lb.abort();
}

#[tokio::test]
async fn a_retried_request_without_host_carries_the_second_clones_address() {
    // Round-robin starts at the first clone, which closes without answering: the GET is
    // retried on the second.
    let broken = RawClone::scripted(|_, _| Reply::close());
    let good = RawClone::recorder();
    let lb = spawn_lb(&lb_toml(&[broken.addr, good.addr], "retries = 1", ""));
    let a = ask(&lb, b"GET /again HTTP/1.0\r\n\r\n", 1).await;
    assert_eq!(a.only().status(), 200, "{:?}", a.text());
    let first = broken.requests();
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].all("host"), [broken.addr.to_string()], "{first:?}");
    let second = good.requests();
    assert_eq!(second.len(), 1, "{second:?}");
    assert_eq!(second[0].start, "GET /again HTTP/1.1");
    assert_eq!(second[0].all("host"), [good.addr.to_string()], "{second:?}");
    assert!(!second[0].has("x-forwarded-host"), "{second:?}");
    lb.abort();
}

// ---------------------------------------------------------------------------------------
// 414 before hyper's 431
// ---------------------------------------------------------------------------------------

/// clonelb's own 414 body (the same line `forward::prepare`'s 414 carries).
const BODY_414: &str = "414 URI Too Long: request target longer than max_request_line\n";

/// Write `bytes` (the balancer may stop reading before the end) and read until it closes.
async fn until_closed(s: &mut TcpStream, bytes: &[u8]) -> RawAnswer {
    let _ = s.write_all(bytes).await;
    let a = read_answer(s, None, CLOSE_WAIT).await;
    assert!(a.closed, "the connection was left open: {:?}", a.text());
    a
}

fn get(target: &str, extra: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: a.example\r\n{extra}\r\n").into_bytes()
}

#[tokio::test]
async fn a_target_over_max_request_line_is_414_even_when_the_head_overflows_too() {
    let clone = RawClone::recorder();
    // Defaults: max_request_line 8 KiB, max_header_size 32 KiB.
    let lb = spawn_lb(&lb_toml(&[clone.addr], "", ""));
    // Exactly max_request_line, trickled in small writes: forwarded.
    let at_limit = format!("/{}", "a".repeat(8191));
    let mut s = TcpStream::connect(lb.http_addr()).await.unwrap();
    for piece in get(&at_limit, "").chunks(1000) {
        s.write_all(piece).await.unwrap();
    }
    let a = read_answer(&mut s, Some(1), CLOSE_WAIT).await;
    assert_eq!(a.only().status(), 200, "{:?}", a.text());
    assert_eq!(
        clone.requests()[0].method_target(),
        ("GET", at_limit.as_str())
    );
    // A 70 KB target, absolute-form too: 414, not hyper's 431, and the connection closes.
    let before = clone.total_bytes();
    for target in [
        format!("/{}", "u".repeat(70 * 1024)),
        format!("http://abs.example/?{}", "q".repeat(70 * 1024)),
    ] {
        let mut s = TcpStream::connect(lb.http_addr()).await.unwrap();
        let a = until_closed(&mut s, &get(&target, "")).await;
        let resp = a.only();
        assert_eq!(
            resp.status(),
            414,
            "{:?}",
            &a.text()[..200.min(a.text().len())]
        );
        assert_eq!(String::from_utf8_lossy(&resp.body), BODY_414);
        assert!(resp.says_close(), "{resp:?}");
    }
    assert_eq!(
        clone.total_bytes(),
        before,
        "the clone saw a rejected request"
    );
    // A short target with a 40 KB header is still 431: only the target counts.
    let mut s = TcpStream::connect(lb.http_addr()).await.unwrap();
    let big = get("/short", &format!("X-Big: {}\r\n", "b".repeat(40 * 1024)));
    let a = until_closed(&mut s, &big).await;
    assert_eq!(first_status(&a), Some(431), "{:?}", a.text());
    lb.abort();
}

#[tokio::test]
async fn a_long_header_line_under_max_header_size_is_not_taken_for_a_long_target() {
    // A 20 KB field is longer than max_request_line but fits the head: forwarded; over a
    // 16 KiB head it is 431, not 414.
    let clone = RawClone::recorder();
    let lb = spawn_lb(&lb_toml(&[clone.addr], "", ""));
    let twenty = get("/h", &format!("X-Big: {}\r\n", "b".repeat(20 * 1024)));
    let a = ask(&lb, &twenty, 1).await;
    assert_eq!(a.only().status(), 200, "{:?}", a.text());
    lb.abort();
    let lb = spawn_lb(&lb_toml(&[clone.addr], "", "max_header_size = \"16KiB\""));
    let mut s = TcpStream::connect(lb.http_addr()).await.unwrap();
    let a = until_closed(&mut s, &twenty).await;
    assert_eq!(first_status(&a), Some(431), "{:?}", a.text());
    // ...and a long target over that smaller head is 414.
    let mut s = TcpStream::connect(lb.http_addr()).await.unwrap();
    let a = until_closed(&mut s, &get(&format!("/{}", "u".repeat(20 * 1024)), "")).await;
    assert_eq!(first_status(&a), Some(414), "{:?}", a.text());
    lb.abort();
}

#[tokio::test]
async fn a_later_request_on_a_kept_alive_connection_with_a_too_long_target_is_414() {
    let clone = RawClone::recorder();
    let lb = spawn_lb(&lb_toml(&[clone.addr], "", ""));
    let (mut s, a) = exchange_keep(lb.http_addr(), &get("/first", ""), 1, CLOSE_WAIT).await;
    assert_eq!(a.only().status(), 200, "{:?}", a.text());
    // A second short one, with a body, then the long one.
    s.write_all(b"POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nGET /")
        .await
        .unwrap();
    let a = read_answer(&mut s, Some(1), CLOSE_WAIT).await;
    assert_eq!(a.only().status(), 200, "{:?}", a.text());
    let a = until_closed(&mut s, &get(&format!("/{}", "u".repeat(70 * 1024)), "")).await;
    let resp = a.only();
    assert_eq!(
        resp.status(),
        414,
        "{:?}",
        &a.text()[..200.min(a.text().len())]
    );
    assert_eq!(String::from_utf8_lossy(&resp.body), BODY_414);
    assert_eq!(clone.requests().len(), 2);
    lb.abort();
}

/// The status of the first whole response, if one came.
fn first_status(a: &RawAnswer) -> Option<u16> {
    a.responses().0.first().map(Msg::status)
}

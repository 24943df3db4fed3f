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

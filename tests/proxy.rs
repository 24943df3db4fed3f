//! The proxy core over real sockets: distribution, headers, error statuses, connection
//! reuse and client-side deadlines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

#[tokio::test]
async fn round_robin_spreads_exactly_evenly() {
    let clones: Vec<_> = ["a", "b", "c"].iter().map(|n| spawn_clone(n)).collect();
    let lb = spawn_lb(&config_text(
        "round-robin",
        &clones.iter().map(|c| (c, 1)).collect::<Vec<_>>(),
        "",
    ));
    let mut names = Vec::new();
    for _ in 0..300 {
        let a = get(lb.http_addr(), "/").await;
        assert_eq!(a.status, 200);
        names.push(a.clone_name());
    }
    // Strict rotation: every three consecutive picks cover all clones.
    for (i, three) in names.chunks(3).enumerate() {
        let mut three = three.to_vec();
        three.sort();
        assert_eq!(three, ["a", "b", "c"], "picks {}..{}", 3 * i, 3 * i + 3);
    }
    let t = tally(names);
    assert_eq!((t["a"], t["b"], t["c"]), (100, 100, 100), "{t:?}");
    assert_eq!(clones.iter().map(|c| c.hits()).sum::<u64>(), 300);
}

#[tokio::test]
async fn weighted_round_robin_honours_weights() {
    let clones: Vec<_> = ["w1", "w2", "w3"].iter().map(|n| spawn_clone(n)).collect();
    let lb = spawn_lb(&config_text(
        "round-robin",
        &[(&clones[0], 1), (&clones[1], 2), (&clones[2], 3)],
        "",
    ));
    let mut client = Client::connect(lb.http_addr()).await;
    let mut names = Vec::new();
    for _ in 0..600 {
        names.push(client.get("/").await.clone_name());
    }
    // Smooth: the heaviest clone never gets more than two in a row.
    let max_run = names
        .windows(3)
        .filter(|w| w.iter().all(|n| n == "w3"))
        .count();
    assert_eq!(max_run, 0, "w3 got three in a row");
    let t = tally(names);
    assert_eq!((t["w1"], t["w2"], t["w3"]), (100, 200, 300), "{t:?}");
}

#[tokio::test]
async fn least_connections_avoids_the_busy_clone() {
    let clones: Vec<_> = ["busy", "b", "c"].iter().map(|n| spawn_clone(n)).collect();
    let lb = spawn_lb(&config_text(
        "least-connections",
        &clones.iter().map(|c| (c, 1)).collect::<Vec<_>>(),
        "",
    ));
    let table = lb.table();
    let state = |i: usize| table.find(clones[i].addr).unwrap().state.clone();
    // Park 10 slow requests on "busy": with b and c disabled, they can only go there.
    state(1).set_disabled(true);
    state(2).set_disabled(true);
    let addr = lb.http_addr();
    let held: Vec<_> = (0..10)
        .map(|_| tokio::spawn(async move { get(addr, "/hold").await }))
        .collect();
    assert!(eventually(Duration::from_secs(5), || clones[0].held() == 10).await);
    assert_eq!(state(0).in_flight(), 10);
    state(1).set_disabled(false);
    state(2).set_disabled(false);

    let mut client = Client::connect(addr).await;
    let mut names = Vec::new();
    for _ in 0..20 {
        names.push(client.get("/").await.clone_name());
    }
    let t = tally(names);
    assert_eq!(t.get("busy"), None, "{t:?}");
    // Ties between the idle clones are spread, not always the first.
    assert!(t["b"] >= 4 && t["c"] >= 4, "{t:?}");

    clones[0].release();
    for h in held {
        assert_eq!(h.await.unwrap().status, 200);
    }
    assert!(eventually(Duration::from_secs(5), || state(0).in_flight() == 0).await);
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let c = spawn_clone("solo");
    let lb = spawn_lb(&config_text("round-robin", &[(&c, 1)], ""));
    let mut client = Client::connect(lb.http_addr()).await;
    for _ in 0..100 {
        assert_eq!(client.get("/").await.status, 200);
    }
    // Sequential requests need one upstream connection; allow a little slack for the
    // moment a returned connection is not yet ready.
    assert!(c.connections() <= 3, "{} connections", c.connections());
    let pooled = lb.table().backends()[0].state.clone();
    assert!(eventually(Duration::from_secs(2), || pooled.in_flight() == 0).await);
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_both_ways_and_forwarded_for_appended() {
    let c = spawn_clone("h");
    let lb = spawn_lb(&config_text("round-robin", &[(&c, 1)], ""));
    let mut client = Client::connect(lb.http_addr()).await;
    let req = Request::get("/hop")
        .header("host", "shop.example")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "client-secret")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-connection", "keep-alive")
        .header("upgrade", "h2c")
        .header("x-forwarded-for", "10.1.1.1")
        .header("x-forwarded-for", "10.2.2.2")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "evil.example")
        .header("x-end-to-end", "kept")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let a = client.send(req).await;
    assert_eq!(a.status, 200);

    let seen = c.last_headers();
    for h in [
        "connection",
        "x-private",
        "keep-alive",
        "te",
        "proxy-connection",
        "upgrade",
        "transfer-encoding",
    ] {
        assert!(!seen.contains_key(h), "clone received {h}: {seen:?}");
    }
    assert_eq!(seen["x-end-to-end"], "kept");
    assert_eq!(seen["host"], "shop.example");
    let xff: Vec<_> = seen.get_all("x-forwarded-for").iter().collect();
    assert_eq!(xff, vec!["10.1.1.1, 10.2.2.2, 127.0.0.1"]);
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "shop.example");

    // Response side: the clone's Connection-named and Keep-Alive headers are gone.
    assert!(
        !a.headers.contains_key("x-clone-private"),
        "{:?}",
        a.headers
    );
    assert!(!a.headers.contains_key("keep-alive"));
    assert_eq!(a.headers["x-kept"], "yes");
}

#[tokio::test]
async fn empty_pool_answers_503() {
    // A long connect_timeout, so that any wait on a timer would be obvious below.
    let lb = spawn_lb("[listen]\nhttp = \"127.0.0.1:0\"\n[proxy]\nconnect_timeout = \"10s\"\n");
    let t = Instant::now();
    let a = get(lb.http_addr(), "/").await;
    assert_eq!(a.status, 503);
    assert_eq!(
        a.error_line(),
        "503 Service Unavailable: no upstream server is available\n"
    );
    // Was "< 1 s" (breakable on a busy machine); half of connect_timeout still shows the
    // 503 came at once, not after a wait.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
}

#[tokio::test]
async fn refused_connection_answers_502() {
    let refused = refused_addr();
    let lb = spawn_lb(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[[backend]]\naddress = \"{refused}\"\nname = \"app-seven\"\n"
    ));
    let a = get(lb.http_addr(), "/").await;
    assert_eq!(a.status, 502);
    // The status and a plain cause; no clone name, address or port (those are logged).
    assert_eq!(
        a.error_line(),
        "502 Bad Gateway: the upstream server refused the connection\n"
    );
    assert_no_internals(&a.text(), "app-seven", refused);
    assert_eq!(lb.table().backends()[0].state.failures_total(), 1);
}

/// A client-facing body names neither the clone nor its address.
fn assert_no_internals(body: &str, name: &str, address: std::net::SocketAddr) {
    assert!(!body.contains(name), "names the clone: {body}");
    assert!(!body.contains("127.0.0.1"), "names the address: {body}");
    assert!(
        !body.contains(&address.port().to_string()),
        "names the port: {body}"
    );
}

#[tokio::test]
async fn silent_clone_answers_504_after_response_timeout() {
    let c = spawn_clone("mute-clone");
    let lb = spawn_lb(&config_text(
        "round-robin",
        &[(&c, 1)],
        "response_timeout = \"400ms\"",
    ));
    let t = Instant::now();
    let a = get(lb.http_addr(), "/hang").await;
    let took = t.elapsed();
    assert_eq!(a.status, 504);
    assert_eq!(
        a.error_line(),
        "504 Gateway Timeout: the upstream server did not answer in time\n"
    );
    assert_no_internals(&a.text(), "mute-clone", c.addr);
    assert!(took >= Duration::from_millis(400), "{took:?}");
    // Was "< 5 s": kept as "answered at all", widened so a busy machine cannot break it
    // (the default idle and header timeouts are far longer, so it is still this one).
    assert!(took < Duration::from_secs(10), "{took:?}");
    // The in-flight count is released with the failed request.
    assert_eq!(lb.table().backends()[0].state.in_flight(), 0);
}

#[tokio::test]
async fn silent_client_is_closed_after_header_read_timeout() {
    let c = spawn_clone("x");
    let lb = spawn_lb(&config_text(
        "round-robin",
        &[(&c, 1)],
        "header_read_timeout = \"300ms\"\nidle_timeout = \"60s\"",
    ));
    let addr = lb.http_addr();
    let closed_after = tokio::task::spawn_blocking(move || {
        // From before connect: the deadline starts at accept, so the lower bound below
        // holds however slow this thread is.
        let t = Instant::now();
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // Half a request line, then nothing: the whole-head deadline still applies.
        s.write_all(b"GET / HT").unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap_or(0);
        (n, t.elapsed())
    })
    .await
    .unwrap();
    assert_eq!(closed_after.0, 0, "expected a close, got data");
    assert!(
        closed_after.1 >= Duration::from_millis(300),
        "{:?}",
        closed_after.1
    );
    // Was "< 3 s" with idle_timeout 5 s; the exact boundary is unit-tested in paused time
    // (server::deadline), and idle_timeout is now 60 s, so 10 s still shows which deadline.
    assert!(
        closed_after.1 < Duration::from_secs(10),
        "{:?}",
        closed_after.1
    );
    assert_eq!(c.hits(), 0);
}

#[tokio::test]
async fn kept_alive_connection_waits_idle_timeout_not_header_timeout() {
    let c = spawn_clone("x");
    let lb = spawn_lb(&config_text(
        "round-robin",
        &[(&c, 1)],
        // idle_timeout leaves 1.5 s of margin over the 500 ms idle pause below.
        "header_read_timeout = \"200ms\"\nidle_timeout = \"2s\"",
    ));
    let addr = lb.http_addr();
    let (first_ok, second_ok, closed_after) = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let req = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
        let mut buf = [0u8; 4096];
        s.write_all(req).unwrap();
        let n = s.read(&mut buf).unwrap();
        let first_ok = buf[..n].starts_with(b"HTTP/1.1 200");
        // Idle for longer than header_read_timeout but within idle_timeout: still open.
        std::thread::sleep(Duration::from_millis(500));
        // From before the second request: the idle deadline starts after its answer, so
        // the lower bound below holds however slow this thread is.
        let t = Instant::now();
        s.write_all(req).unwrap();
        let n = s.read(&mut buf).unwrap();
        let second_ok = buf[..n].starts_with(b"HTTP/1.1 200");
        // Now idle past idle_timeout: closed.
        let n = s.read(&mut buf).unwrap_or(0);
        (first_ok, second_ok, (n, t.elapsed()))
    })
    .await
    .unwrap();
    assert!(first_ok && second_ok);
    assert_eq!(closed_after.0, 0);
    // Was ">= 800 ms" of idle_timeout 1 s, measured after the answer; now measured from
    // before the request, so the whole idle_timeout is a safe lower bound.
    assert!(
        closed_after.1 >= Duration::from_secs(2),
        "{:?}",
        closed_after.1
    );
    // Was "< 4 s" with idle_timeout 1 s; the exact boundary is unit-tested in paused time
    // (server::deadline); here only "closed by the idle deadline", with room for a busy
    // machine.
    assert!(
        closed_after.1 < Duration::from_secs(12),
        "{:?}",
        closed_after.1
    );
}

#[tokio::test]
async fn slow_response_is_not_cut_by_client_deadlines() {
    let c = spawn_clone("slow");
    let lb = spawn_lb(&config_text(
        "round-robin",
        &[(&c, 1)],
        "header_read_timeout = \"200ms\"\nidle_timeout = \"300ms\"",
    ));
    // The clone takes longer than both client-side deadlines; the request is in progress,
    // so neither applies.
    let a = get(lb.http_addr(), "/slow?ms=800").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), "clone=slow");
}

//! A client that hangs up mid-response: the rest of a small answer is read in the
//! background and its upstream connection reused; a large one's connection is closed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

/// Send a GET for `path` on a raw socket, read until `bytes` of the answer have arrived,
/// then close the socket.
async fn abandon_after(addr: std::net::SocketAddr, path: &str, bytes: usize) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = 0;
    let mut buf = vec![0u8; 4096];
    while got < bytes {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("the answer stalled")
            .unwrap();
        assert!(n > 0, "closed after {got} bytes");
        got += n;
    }
    drop(s);
}

/// One worker: idle connections are per worker, and the test needs the next request to
/// land where the drained connection went.
fn one_worker(clone: &TestClone) -> clonelb::Balancer {
    let toml = config_text("round-robin", &[(clone, 1)], "retries = 0");
    let checked = clonelb::config::parse("test.toml", &toml).unwrap();
    clonelb::Balancer::start_with_workers(&checked.config, 1).unwrap()
}

/// The clone's in-flight count as the balancer sees it.
fn in_flight(lb: &clonelb::Balancer) -> usize {
    lb.status().backends[0].in_flight
}

#[tokio::test]
async fn a_small_abandoned_answer_is_drained_and_its_connection_reused() {
    let c = spawn_clone("small");
    let lb = one_worker(&c);
    // 5 chunks of 1,000 bytes, 50 ms apart: the client leaves after the first.
    abandon_after(lb.http_addr(), "/drip?chunks=5&ms=50", 1000).await;
    // The drain holds the clone's in-flight count until the rest has been read.
    assert!(eventually(WAIT, || in_flight(&lb) == 0).await);
    assert_eq!(c.connections(), 1);
    // The next request (another client) goes over the same upstream connection.
    let a = get(lb.http_addr(), "/").await;
    assert_eq!(a.status, 200);
    assert_eq!(c.connections(), 1, "the drained connection was not reused");
    let record = &lb.status().backends[0];
    assert_eq!(record.counters.requests, 2);
}

#[tokio::test]
async fn a_large_abandoned_answer_closes_its_connection() {
    let c = spawn_clone("large");
    let lb = one_worker(&c);
    // 200 chunks of 1,000 bytes over about a second, with a Content-Length: more than
    // is worth reading for nobody (and still arriving when the client leaves).
    abandon_after(lb.http_addr(), "/drip?chunks=200&ms=5", 1000).await;
    assert!(eventually(WAIT, || in_flight(&lb) == 0).await);
    let a = get(lb.http_addr(), "/").await;
    assert_eq!(a.status, 200);
    assert_eq!(
        c.connections(),
        2,
        "the abandoned connection should have been closed"
    );
}

#[tokio::test]
async fn an_answer_slower_than_the_drain_time_closes_its_connection() {
    let c = spawn_clone("slow");
    let lb = one_worker(&c);
    // 3 small chunks but 2 s apart: longer than the drain waits.
    abandon_after(lb.http_addr(), "/drip?chunks=3&ms=2000", 1).await;
    assert!(eventually(WAIT, || in_flight(&lb) == 0).await);
    let a = get(lb.http_addr(), "/").await;
    assert_eq!(a.status, 200);
    assert_eq!(c.connections(), 2);
}

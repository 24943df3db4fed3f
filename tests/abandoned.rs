//! A client that hangs up mid-response: the rest of a small answer is read in the
//! background and its upstream connection reused; a large one's connection is closed.
//! The same when it hangs up before the response head: the head (and a small body) are
//! waited for in the background, at most `forward::drain::DRAIN_TIME`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use clonelb::record::{Hook, Outcome, RequestRecord};
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

/// One worker, and a count of the requests recorded as abandoned before their response
/// head (the record is written when hyper drops the request's future).
fn one_worker_counting_early_leavers(clone: &TestClone) -> (clonelb::Balancer, Arc<AtomicUsize>) {
    let toml = config_text("round-robin", &[(clone, 1)], "retries = 0");
    let config = clonelb::config::parse("test.toml", &toml).unwrap().config;
    let left = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&left);
    let hook: Hook = Arc::new(move |r: &RequestRecord<'_>| {
        if r.head_time.is_none() && r.outcome == Outcome::ClientAborted {
            count.fetch_add(1, SeqCst);
        }
    });
    let options = clonelb::Options::workers(1).on_record(hook);
    let lb = clonelb::Balancer::start_with_options(&config, options).unwrap();
    (lb, left)
}

/// Send a GET for `path` on a raw socket, wait until the clone holds it, then close.
async fn leave_before_the_head(lb: &clonelb::Balancer, c: &TestClone, path: &str) {
    let mut s = TcpStream::connect(lb.http_addr()).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert!(eventually(WAIT, || c.hits() == 1).await);
    drop(s);
}

#[tokio::test]
async fn a_client_leaving_before_the_head_leaves_its_connection_reusable() {
    let c = spawn_clone("held");
    let (lb, left) = one_worker_counting_early_leavers(&c);
    leave_before_the_head(&lb, &c, "/hold").await;
    // The balancer saw the client leave before any answer ...
    assert!(eventually(WAIT, || left.load(SeqCst) == 1).await);
    // ... and waits for the clone's answer in the background, holding its in-flight count.
    assert_eq!(in_flight(&lb), 1);
    c.release();
    assert!(eventually(WAIT, || in_flight(&lb) == 0).await);
    let a = get(lb.http_addr(), "/").await;
    assert_eq!(a.status, 200);
    assert_eq!(
        c.connections(),
        1,
        "the abandoned exchange's connection was not reused"
    );
}

#[tokio::test]
async fn a_head_slower_than_the_drain_time_closes_its_connection() {
    let c = spawn_clone("hang");
    let (lb, left) = one_worker_counting_early_leavers(&c);
    // Never answered: the background wait gives up after DRAIN_TIME.
    leave_before_the_head(&lb, &c, "/hang").await;
    assert!(eventually(WAIT, || left.load(SeqCst) == 1).await);
    assert!(eventually(WAIT, || in_flight(&lb) == 0).await);
    let a = get(lb.http_addr(), "/").await;
    assert_eq!(a.status, 200);
    assert_eq!(c.connections(), 2);
}

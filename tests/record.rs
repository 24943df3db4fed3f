//! One record per request: the right clone, status and outcome for every way a request
//! ends, and a rejected request touching no clone.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/raw.rs"]
mod raw;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clonelb::record::{Hook, Outcome, RequestRecord};
use clonelb::{Balancer, Options};
use common::*;
use http_body_util::BodyExt;
use raw::{RawClone, Reply};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A record as the test keeps it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    clone: Option<(String, SocketAddr)>,
    method: String,
    status: u16,
    bytes: u64,
    head: bool,
    attempts: u32,
    outcome: Outcome,
}

#[derive(Clone, Default)]
struct Records(Arc<Mutex<Vec<Seen>>>);

impl Records {
    fn hook(&self) -> Hook {
        let all = Arc::clone(&self.0);
        Arc::new(move |r: &RequestRecord<'_>| {
            all.lock().unwrap().push(Seen {
                clone: r.clone.map(|c| (c.name().to_string(), c.address())),
                method: r.method.to_string(),
                status: r.status,
                bytes: r.bytes,
                head: r.head_time.is_some(),
                attempts: r.attempts,
                outcome: r.outcome,
            });
            assert!(r.head_time.is_none_or(|h| h <= r.duration));
            assert!(r.client.ip().is_loopback());
        })
    }

    fn all(&self) -> Vec<Seen> {
        self.0.lock().unwrap().clone()
    }

    /// Wait until there are `n` records (a record is produced when the response ends,
    /// which may be just after the client has read it), then check there are no more.
    async fn exactly(&self, n: usize) -> Vec<Seen> {
        assert!(
            eventually(Duration::from_secs(5), || self.all().len() >= n).await,
            "expected {n} records, got {:?}",
            self.all()
        );
        // Nothing else is in flight: a second record for the same request would already
        // be there, since each is produced before its response's connection moves on.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let all = self.all();
        assert_eq!(all.len(), n, "{all:#?}");
        all
    }
}

fn start(toml: &str, records: &Records) -> Balancer {
    let config = clonelb::config::parse("test.toml", toml).unwrap().config;
    let options = Options::workers(2).on_record(records.hook());
    Balancer::start_with_options(&config, options).unwrap()
}

/// GET whose response body the caller streams.
async fn stream_get(addr: SocketAddr, path: &str) -> http::Response<hyper::body::Incoming> {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "t")
        .body(empty())
        .unwrap();
    sender.send_request(req).await.unwrap()
}

fn named(c: &TestClone) -> Option<(String, SocketAddr)> {
    Some((c.name.clone(), c.addr))
}

#[tokio::test]
async fn answered_and_rejected_requests_each_produce_one_record() {
    let a = spawn_clone("a");
    let records = Records::default();
    let lb = start(&config_text("round-robin", &[(&a, 1)], ""), &records);
    let ok = get(lb.http_addr(), "/").await;
    assert_eq!(ok.status, 200);
    let all = records.exactly(1).await;
    assert_eq!(
        all[0],
        Seen {
            clone: named(&a),
            method: "GET".into(),
            status: 200,
            bytes: ok.body.len() as u64,
            head: true,
            attempts: 1,
            outcome: Outcome::Complete,
        }
    );
    // 404 from the clone: complete too, counted under 4xx.
    assert_eq!(get(lb.http_addr(), "/status?code=404").await.status, 404);
    let all = records.exactly(2).await;
    assert_eq!((all[1].status, all[1].outcome), (404, Outcome::Complete));
    let state = lb.table().backends()[0].state.clone();
    assert_eq!(state.responses_by_class(), [0, 1, 0, 1, 0]);
    assert_eq!(state.requests_total(), 2);
    // Every answer with a head lands in the clone's histogram, none in backend="none".
    let s = lb.status();
    assert_eq!(s.backends[0].latency.count, 2);
    assert_eq!(s.backends[0].latency.counts.iter().sum::<u64>(), 2);
    assert!(s.backends[0].latency.sum > Duration::ZERO);
    assert_eq!(s.process.unrouted_requests, 0);
    assert_eq!(s.process.unrouted_latency.count, 0);
}

#[tokio::test]
async fn a_rejected_request_leaves_every_clone_untouched() {
    let (a, b) = (spawn_clone("a"), spawn_clone("b"));
    let records = Records::default();
    let lb = start(
        &config_text("least-connections", &[(&a, 1), (&b, 1)], ""),
        &records,
    );
    // Two Host fields: 400 before any clone is picked.
    let mut s = TcpStream::connect(lb.http_addr()).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 400"), "{answer:?}");
    let all = records.exactly(1).await;
    assert_eq!(
        (
            all[0].clone.clone(),
            all[0].status,
            all[0].attempts,
            all[0].outcome
        ),
        (None, 400, 0, Outcome::ClonelbError)
    );
    let s = lb.status();
    for c in s.backends {
        assert_eq!(c.counters, Default::default(), "{} was touched", c.name);
        assert_eq!(c.in_flight, 0);
        assert_eq!(c.latency.count, 0, "{} was touched", c.name);
    }
    assert_eq!(a.hits() + b.hits(), 0);
    // It is backend="none": the balancer's own counters.
    assert_eq!(s.process.unrouted, [0, 0, 0, 1, 0]);
    assert_eq!(s.process.unrouted_latency.count, 1);
}

#[tokio::test]
async fn retries_count_attempts_and_the_answer_counts_once_on_its_clone() {
    let a = spawn_clone("a");
    let refused = refused_addr();
    let toml = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[[backend]]\naddress = \"{refused}\"\nname = \"gone\"\n[[backend]]\naddress = \"{}\"\nname = \"a\"\n",
        a.addr
    );
    let records = Records::default();
    let lb = start(&toml, &records);
    // Round-robin starts at "gone": refused, retried on a.
    assert_eq!(get(lb.http_addr(), "/").await.status, 200);
    let all = records.exactly(1).await;
    assert_eq!(
        (all[0].clone.clone(), all[0].attempts, all[0].outcome),
        (named(&a), 2, Outcome::Complete)
    );
    let s = lb.status();
    let gone = s.clone_named("gone").unwrap().counters;
    let on_a = s.clone_named("a").unwrap().counters;
    assert_eq!((gone.attempts, gone.requests, gone.retries), (1, 0, 1));
    assert_eq!((on_a.attempts, on_a.requests), (1, 1));
    let latency = |name| s.clone_named(name).unwrap().latency.count;
    assert_eq!(
        (latency("gone"), latency("a")),
        (0, 1),
        "counted where answered"
    );
}

#[tokio::test]
async fn the_balancers_own_502_names_the_last_clone_tried_and_503_none() {
    let refused = refused_addr();
    let toml = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[[backend]]\naddress = \"{refused}\"\nname = \"gone\"\n"
    );
    let records = Records::default();
    let lb = start(&toml, &records);
    assert_eq!(get(lb.http_addr(), "/").await.status, 502);
    let all = records.exactly(1).await;
    assert_eq!(
        (
            all[0].clone.clone(),
            all[0].status,
            all[0].attempts,
            all[0].outcome
        ),
        (
            Some(("gone".to_string(), refused)),
            502,
            1,
            Outcome::ClonelbError
        )
    );
    // Ejected after three connection failures in a row: then nothing is available.
    for _ in 0..2 {
        get(lb.http_addr(), "/").await;
    }
    assert_eq!(get(lb.http_addr(), "/").await.status, 503);
    let all = records.exactly(4).await;
    assert_eq!(
        (
            all[3].clone.clone(),
            all[3].status,
            all[3].attempts,
            all[3].outcome
        ),
        (None, 503, 0, Outcome::ClonelbError)
    );
    let s = lb.status();
    let gone = s.clone_named("gone").unwrap();
    assert_eq!((gone.counters.requests, gone.counters.responses[4]), (3, 3));
    // The 502s are the clone's (with their time to head); the 503 is backend="none".
    assert_eq!(gone.latency.count, 3);
    assert_eq!(s.process.unrouted, [0, 0, 0, 0, 1]);
    assert_eq!(s.process.unrouted_latency.count, 1);
}

#[tokio::test]
async fn open_client_connections_are_counted_per_connection() {
    let a = spawn_clone("a");
    let records = Records::default();
    let lb = start(&config_text("round-robin", &[(&a, 1)], ""), &records);
    let open = || lb.status().process.downstream_connections;
    assert_eq!(open(), 0);
    let mut one = Client::connect(lb.http_addr()).await;
    let two = TcpStream::connect(lb.http_addr()).await.unwrap();
    assert!(eventually(Duration::from_secs(5), || open() == 2).await);
    // Requests on a connection do not move it.
    for _ in 0..3 {
        assert_eq!(one.get("/").await.status, 200);
    }
    assert_eq!(open(), 2);
    drop(two);
    assert!(eventually(Duration::from_secs(5), || open() == 1).await);
    drop(one);
    assert!(eventually(Duration::from_secs(5), || open() == 0).await);
    records.exactly(3).await;
}

#[tokio::test]
async fn a_client_leaving_mid_body_or_before_the_head_is_client_aborted() {
    let a = spawn_clone("a");
    let records = Records::default();
    let lb = start(&config_text("round-robin", &[(&a, 1)], ""), &records);
    // Mid-body: read the head and a little of a slow stream, then hang up.
    let mut s = TcpStream::connect(lb.http_addr()).await.unwrap();
    s.write_all(b"GET /drip?chunks=50&ms=50 HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    drop(s);
    let all = records.exactly(1).await;
    assert_eq!(
        (
            all[0].clone.clone(),
            all[0].status,
            all[0].head,
            all[0].outcome
        ),
        (named(&a), 200, true, Outcome::ClientAborted)
    );
    assert!(all[0].bytes < 50 * DRIP_CHUNK);

    // Before the head: the clone holds the answer; the client leaves.
    let mut s = TcpStream::connect(lb.http_addr()).await.unwrap();
    s.write_all(b"GET /hold HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || a.held() == 1).await);
    drop(s);
    let all = records.exactly(2).await;
    assert_eq!(
        (
            all[1].clone.clone(),
            all[1].status,
            all[1].head,
            all[1].outcome
        ),
        (named(&a), 499, false, Outcome::ClientAborted)
    );
    a.release();
    assert!(
        eventually(Duration::from_secs(5), || lb.status().backends[0].in_flight
            == 0)
        .await
    );
}

#[tokio::test]
async fn a_clone_failing_mid_body_is_an_upstream_error() {
    // Promises 100 bytes, sends 3, closes.
    let broken = RawClone::scripted(|_, _| {
        Reply::send_and_close(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc")
    });
    let toml = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[[backend]]\naddress = \"{}\"\nname = \"broken\"\n",
        broken.addr
    );
    let records = Records::default();
    let lb = start(&toml, &records);
    let resp = stream_get(lb.http_addr(), "/").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.into_body().collect().await.is_err());
    let all = records.exactly(1).await;
    assert_eq!(
        (
            all[0].clone.clone(),
            all[0].status,
            all[0].bytes,
            all[0].outcome
        ),
        (
            Some(("broken".to_string(), broken.addr)),
            200,
            3,
            Outcome::UpstreamError
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_cut_is_recorded_as_cut() {
    let (a, b) = (spawn_clone("a"), spawn_clone("b"));
    let dir = fresh_dir("record");
    let path = dir.join("lb.toml");
    let proxy = "drain_timeout = \"300ms\"";
    std::fs::write(
        &path,
        config_text("round-robin", &[(&b, 1), (&a, 1)], proxy),
    )
    .unwrap();
    let records = Records::default();
    let options = Options::workers(2).on_record(records.hook());
    let lb = Balancer::start_from_file_with_options(&path, options).unwrap();
    let addr = lb.http_addr();
    // A 5 s stream on b, which is removed at once and cut after 300 ms.
    let stream = tokio::spawn(async move {
        let resp = stream_get(addr, "/drip?chunks=50&ms=100").await;
        resp.into_body().collect().await.map(|b| b.to_bytes().len())
    });
    assert!(eventually(Duration::from_secs(5), || b.hits() == 1).await);
    std::fs::write(&path, config_text("round-robin", &[(&a, 1)], proxy)).unwrap();
    assert!(matches!(lb.reload(), clonelb::reload::Outcome::Reloaded(_)));
    let result = tokio::time::timeout(Duration::from_secs(10), stream)
        .await
        .expect("the stream was not cut")
        .unwrap();
    assert!(result.is_err(), "{result:?}");
    let all = records.exactly(1).await;
    assert_eq!(
        (all[0].clone.clone(), all[0].status, all[0].outcome),
        (named(&b), 200, Outcome::Cut)
    );
    drop(lb);
    let _ = std::fs::remove_dir_all(dir);
}

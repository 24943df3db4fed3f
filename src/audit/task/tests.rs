//! The audit task and its replays: pure parts, then real sockets on 127.0.0.1 with tiny
//! hyper clones on the test's runtime and the audit on its own thread.

use std::convert::Infallible;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;
use crate::audit::replay::{pick_peer, replay_request, AUDIT_HEADER};
use crate::audit::verdict::{Answer, BodyHash, Difference};
use crate::table::RoutingTable;
use crate::upstream_body::UpstreamBody;

fn table(addrs: &[SocketAddr]) -> Arc<SharedTable> {
    let mut text = "[listen]\nhttp = \"127.0.0.1:0\"\n".to_string();
    for (i, a) in addrs.iter().enumerate() {
        text.push_str(&format!(
            "[[backend]]\naddress = \"{a}\"\nname = \"c{}\"\n",
            i + 1
        ));
    }
    let config = crate::config::parse("t", &text).unwrap().config;
    Arc::new(ArcSwap::from_pointee(RoutingTable::build(&config, None)))
}

fn settings(max_response: u64, max_concurrent: u32) -> Settings {
    Settings {
        max_response,
        ignore_headers: vec![header::DATE],
        max_concurrent,
        connect_timeout: Duration::from_secs(2),
        response_timeout: Duration::from_secs(2),
    }
}

/// What a hyper clone answering `body` sends, as the tap would record it.
fn answer(body: &str) -> Answer {
    let mut hash = BodyHash::new(1 << 20);
    hash.update(body.as_bytes());
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    Answer::new(StatusCode::OK, headers, &hash)
}

/// `GET /x?q=secret` served by the table's first clone with `body`.
fn job(table: &SharedTable, body: &str) -> Job {
    let mut headers = HeaderMap::new();
    headers.insert(header::HOST, HeaderValue::from_static("app.example"));
    headers.insert(header::COOKIE, HeaderValue::from_static("session=1"));
    Job {
        served: Arc::clone(&table.load().backends()[0].state),
        method: Method::GET,
        uri: "/x?q=secret".parse().unwrap(),
        headers,
        answer: answer(body),
    }
}

/// A clone answering `body` to everything; counts the requests marked as replays.
async fn spawn_app(body: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let audited = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&audited);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = Arc::clone(&seen);
            let service = service_fn(move |req: Request<Incoming>| {
                if req.headers().get(AUDIT_HEADER).is_some_and(|v| v == "1")
                    && req.uri() == "/x?q=secret"
                    && req.headers().get(header::COOKIE).is_some()
                {
                    seen.fetch_add(1, Relaxed);
                }
                async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, audited)
}

/// A clone that accepts connections and never answers.
async fn spawn_silent() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// A clone answering a chunked body of 10 bytes (no `Content-Length` to go by).
async fn spawn_chunked() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                      5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n",
                )
                .await;
        }
    });
    addr
}

/// An address nothing listens on.
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// Polls the audit's snapshot until `done` holds (panics after 10 s).
async fn until(audit: &Audit, done: impl Fn(&AuditSnapshot) -> bool) -> AuditSnapshot {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = audit.snapshot();
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out: {s:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn settled(s: &AuditSnapshot) -> bool {
    s.checked() + s.skipped_total() >= 1
}

#[test]
fn peer_is_available_of_the_same_version_and_not_the_served_clone() {
    let addrs: Vec<SocketAddr> = (1..=4)
        .map(|p| format!("127.0.0.1:{p}").parse().unwrap())
        .collect();
    let t = table(&addrs);
    let t = t.load();
    let b = t.backends();
    let mut rng = SmallRng::seed_from_u64(1);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let p = pick_peer(&t, &b[0].state, &mut rng).unwrap();
        assert_ne!(p.address, b[0].address);
        seen.insert(p.address);
    }
    assert_eq!(seen.len(), 3, "drawn among every peer");
    b[1].state.set_down(true);
    b[2].state.set_disabled(true);
    for _ in 0..50 {
        assert_eq!(
            pick_peer(&t, &b[0].state, &mut rng).unwrap().address,
            b[3].address
        );
    }
    b[3].state.set_version(7);
    assert!(
        pick_peer(&t, &b[0].state, &mut rng).is_none(),
        "other version"
    );
    b[0].state.set_version(7);
    assert_eq!(
        pick_peer(&t, &b[0].state, &mut rng).unwrap().address,
        b[3].address
    );
    b[3].state.set_draining(true);
    assert!(pick_peer(&t, &b[0].state, &mut rng).is_none(), "draining");
}

#[test]
fn replay_request_adds_the_mark_and_keeps_the_rest() {
    let addrs: Vec<SocketAddr> = vec![
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
    ];
    let t = table(&addrs);
    let peer = Arc::clone(&t.load().backends()[1].state);
    let mut j = job(&t, "a");
    j.headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    let req = replay_request(&j, &peer);
    assert_eq!(req.method(), Method::GET);
    assert_eq!(req.uri(), "/x?q=secret");
    assert_eq!(req.headers()[AUDIT_HEADER], "1");
    assert_eq!(req.headers()[header::HOST], "app.example");
    assert_eq!(req.headers()[header::COOKIE], "session=1");
    assert!(!req.headers().contains_key(header::CONTENT_LENGTH));
    assert!(matches!(req.body(), UpstreamBody::Empty));

    // No Host from the client: the served clone's address went out; the peer's goes now.
    j.headers.insert(header::HOST, j.served.host().clone());
    j.uri = "http://127.0.0.1:1/y?z".parse().unwrap();
    let req = replay_request(&j, &peer);
    assert_eq!(req.headers()[header::HOST], "127.0.0.1:2");
    assert_eq!(req.uri(), "/y?z", "origin form");
}

#[test]
fn a_new_audit_is_off_and_empty() {
    let audit = Audit::new();
    let s = audit.snapshot();
    assert!(!s.enabled);
    assert_eq!((s.checked(), s.mismatches(), s.skipped_total()), (0, 0, 0));
    assert_eq!(s.skipped.map(|(r, _)| r), Skip::ALL);
    assert!(s.odd_clone().is_none());
    // Never configured: submitting drops the job (no thread, no queue).
    audit.submit(job(&table(&[closed_port()]), "a"));
    assert_eq!(audit.snapshot().skipped_total(), 0);
}

#[tokio::test]
async fn different_answers_record_a_body_mismatch_against_the_pair() {
    let (a, a_seen) = spawn_app("a").await;
    let (b, b_seen) = spawn_app("b").await;
    let t = table(&[a, b]);
    let audit = Audit::new();
    audit.configure(Some(settings(1024, 4)), Arc::clone(&t));
    assert!(audit.is_on());
    audit.submit(job(&t, "a"));
    let s = until(&audit, settled).await;
    assert_eq!(
        (s.checked(), s.mismatches(), s.skipped_total()),
        (1, 1, 0),
        "{s:?}"
    );
    let m = &s.verdicts.recent[0];
    assert_eq!(m.path.as_ref(), "/x", "never the query");
    assert_eq!((&*m.served.name, &*m.peer.name), ("c1", "c2"));
    assert_eq!(m.difference, Difference::Body);
    assert_eq!(
        s.verdicts
            .clones
            .iter()
            .map(|c| c.mismatches)
            .collect::<Vec<_>>(),
        [1, 1]
    );
    assert_eq!((a_seen.load(Relaxed), b_seen.load(Relaxed)), (0, 1));
    // Invisible to the peer's counters.
    let peer = Arc::clone(&t.load().backends()[1].state);
    assert_eq!(
        (
            peer.requests_total(),
            peer.attempts_total(),
            peer.in_flight()
        ),
        (0, 0, 0)
    );
    assert_eq!(peer.failures_total(), 0);

    let compared = |addr| {
        let s = audit.snapshot();
        s.verdicts
            .clones
            .iter()
            .find(|c| c.clone.addr == addr)
            .map(|c| c.compared)
    };
    audit.reset(b);
    assert_eq!((compared(a), compared(b)), (Some(1), Some(0)));
    audit.forget(b);
    assert_eq!((compared(a), compared(b)), (Some(1), None));
}

#[tokio::test]
async fn identical_answers_agree() {
    let (a, _) = spawn_app("a").await;
    let (b, b_seen) = spawn_app("a").await;
    let t = table(&[a, b]);
    let audit = Audit::new();
    audit.configure(Some(settings(1024, 4)), Arc::clone(&t));
    audit.submit(job(&t, "a"));
    let s = until(&audit, settled).await;
    assert_eq!(
        (s.checked(), s.mismatches(), s.skipped_total()),
        (1, 0, 0),
        "{s:?}"
    );
    assert!(s.verdicts.recent.is_empty());
    assert_eq!(b_seen.load(Relaxed), 1);
}

#[tokio::test]
async fn skips_are_counted_by_reason() {
    let (a, _) = spawn_app("a").await;
    let (big, _) = spawn_app("a much longer answer").await;
    let audit = Audit::new();

    // Alone in its version: no peer.
    let t = table(&[a]);
    audit.configure(Some(settings(8, 4)), Arc::clone(&t));
    audit.submit(job(&t, "a"));
    let s = until(&audit, |s| s.skipped_total() == 1).await;
    assert_eq!(s.skipped(Skip::NoPeer), 1);

    // The served answer overflowed.
    let t = table(&[a, big]);
    audit.configure(Some(settings(8, 4)), Arc::clone(&t));
    let mut j = job(&t, "a");
    j.answer.body_len = 9;
    audit.submit(j);
    let s = until(&audit, |s| s.skipped_total() == 2).await;
    assert_eq!(s.skipped(Skip::TooLarge), 1);

    // The replay's answer overflows.
    audit.submit(job(&t, "a"));
    let s = until(&audit, |s| s.skipped_total() == 3).await;
    assert_eq!(s.skipped(Skip::TooLarge), 2);

    // The replay's chunked answer overflows as it streams.
    let t = table(&[a, spawn_chunked().await]);
    audit.configure(Some(settings(8, 4)), Arc::clone(&t));
    audit.submit(job(&t, "a"));
    let s = until(&audit, |s| s.skipped_total() == 4).await;
    assert_eq!(s.skipped(Skip::TooLarge), 3);

    // The peer refuses the connection.
    let t = table(&[a, closed_port()]);
    audit.configure(Some(settings(8, 4)), Arc::clone(&t));
    audit.submit(job(&t, "a"));
    let s = until(&audit, |s| s.skipped_total() == 5).await;
    assert_eq!(s.skipped(Skip::ReplayFailed), 1);
    assert_eq!(s.checked(), 0);
    assert_eq!(t.load().backends()[1].state.failures_total(), 0);

    audit.configure(None, Arc::clone(&t));
    assert!(!audit.is_on());
    assert!(!audit.snapshot().enabled);
}

#[tokio::test]
async fn beyond_max_concurrent_a_sample_is_busy() {
    let (a, _) = spawn_app("a").await;
    let silent = spawn_silent().await;
    let t = table(&[a, silent]);
    let audit = Audit::new();
    let mut s = settings(1024, 1);
    s.response_timeout = Duration::from_millis(200);
    audit.configure(Some(s), Arc::clone(&t));
    audit.submit(job(&t, "a"));
    audit.submit(job(&t, "a"));
    let s = until(&audit, |s| s.skipped_total() == 2).await;
    assert_eq!(s.skipped(Skip::Busy), 1, "{s:?}");
    assert_eq!(s.skipped(Skip::ReplayFailed), 1, "the held one timed out");
    // Its slot is free again.
    audit.submit(job(&t, "a"));
    let s = until(&audit, |s| s.skipped_total() == 3).await;
    assert_eq!(s.skipped(Skip::ReplayFailed), 2);
}

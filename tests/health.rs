//! Health: active checks, passive ejection and retries, with clones that die, hang and fail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;

const HEALTH: &str = "[health]\ninterval = \"200ms\"\ntimeout = \"100ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 3\n";

fn with_health(mut toml: String, health: &str) -> String {
    toml.push_str(health);
    toml
}

#[tokio::test]
async fn killed_clone_costs_no_errors_is_marked_down_and_comes_back() {
    let a = spawn_clone("a");
    let b = spawn_clone("b");
    let c = spawn_clone("c");
    let lb = spawn_lb(&with_health(
        config_text("round-robin", &[(&a, 1), (&b, 1), (&c, 1)], ""),
        HEALTH,
    ));
    let b_addr = b.addr;
    let state = lb.table().find(b_addr).unwrap().state.clone();

    let sent = Arc::new(AtomicU64::new(0));
    let addr = lb.http_addr();
    let counter = Arc::clone(&sent);
    let load = tokio::spawn(async move {
        let mut client = Client::connect(addr).await;
        let mut bad = Vec::new();
        for i in 0..2000 {
            let a = client.get("/").await;
            if !a.status.is_success() {
                bad.push((i, a.status, a.text()));
            }
            counter.fetch_add(1, SeqCst);
        }
        bad
    });

    assert!(eventually(Duration::from_secs(30), || sent.load(SeqCst) >= 300).await);
    let failures_before = state.failures_total();
    b.kill();
    // Generous: about 3 × 220 + 100 ms are expected; a busy machine may take longer.
    assert!(eventually(Duration::from_secs(5), || state.is_down()).await);
    // Was "down within 960 ms", which a busy 2-core machine can break. What it meant: the
    // clone is taken out promptly, at a threshold, not after failures pile up. Killed, it
    // cannot count checks, so count the real requests that failed on it: at most the
    // passive threshold (3), whether the checker (unhealthy_threshold, whose exact count is
    // unit-tested in src/health.rs) or the request path took it out first.
    let failed_on_b = state.failures_total() - failures_before;
    assert!(
        failed_on_b <= 3,
        "{failed_on_b} requests failed on the killed clone before it was marked down"
    );

    let bad = load.await.unwrap();
    assert!(bad.is_empty(), "non-2xx answers: {bad:?}");

    // Restart it where it was: it is put back after healthy_threshold passes.
    let b2 = spawn_clone_at("b", b_addr);
    assert!(eventually(Duration::from_secs(5), || state.is_available()).await);
    assert!(b2.checks() >= 2, "up after {} checks", b2.checks());
    let mut client = Client::connect(addr).await;
    for _ in 0..30 {
        assert_eq!(client.get("/").await.status, 200);
    }
    assert_eq!(b2.hits(), 10, "the restarted clone takes its share again");
}

#[tokio::test]
async fn hung_clone_answers_504_then_is_marked_down_and_skipped() {
    let mute = spawn_clone("mute");
    mute.stats.mute.store(true, SeqCst);
    let ok = spawn_clone("ok");
    let lb = spawn_lb(&with_health(
        config_text(
            "round-robin",
            &[(&mute, 1), (&ok, 1)],
            // Long, so "not waited on" below can be a bound no busy machine breaks.
            "response_timeout = \"4s\"",
        ),
        "[health]\ninterval = \"200ms\"\ntimeout = \"100ms\"\nunhealthy_threshold = 2\n",
    ));
    let response_timeout = Duration::from_secs(4);
    // The first pick is the first clone: the mute one.
    let t = Instant::now();
    let first = get(lb.http_addr(), "/").await;
    assert_eq!(first.status, 504, "{}", first.text());
    assert!(t.elapsed() >= response_timeout);

    let state = lb.table().find(mute.addr).unwrap().state.clone();
    assert!(eventually(Duration::from_secs(3), || state.is_down()).await);
    let sent_to_mute = state.requests_total();
    let mut client = Client::connect(lb.http_addr()).await;
    for _ in 0..20 {
        let t = Instant::now();
        let a = client.get("/").await;
        assert_eq!((a.status.as_u16(), a.clone_name().as_str()), (200, "ok"));
        // Was "< 250 ms" (breakable on a busy machine); a GET that waited on the mute
        // clone would take response_timeout (4 s), so half of it still tells them apart.
        assert!(t.elapsed() < response_timeout / 2, "{:?}", t.elapsed());
        // And the timing-free form: the down clone was not even picked.
        assert_eq!(
            state.requests_total(),
            sent_to_mute,
            "a down clone was tried"
        );
    }
}

#[tokio::test]
async fn response_timeout_is_retried_only_when_asked() {
    let mute = spawn_clone("mute");
    mute.stats.mute.store(true, SeqCst);
    let ok = spawn_clone("ok");
    let lb = spawn_lb(&config_text(
        "round-robin",
        &[(&mute, 1), (&ok, 1)],
        "response_timeout = \"300ms\"\nretry_on_timeout = true",
    ));
    let mut client = Client::connect(lb.http_addr()).await;
    // First pick: the mute clone; the GET is retried on the other after the timeout.
    let a = client.get("/").await;
    assert_eq!((a.status.as_u16(), a.clone_name().as_str()), (200, "ok"));
    // A POST with a body is never retried on timeout.
    let post = Request::post("/")
        .header("host", "t")
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let hits_before = ok.hits();
    let a = client.send(post).await;
    assert_eq!(a.status, 504, "{}", a.text());
    assert_eq!(ok.hits(), hits_before);
    let mute_state = lb.table().find(mute.addr).unwrap().state.clone();
    assert_eq!(mute_state.retries_total(), 1);
}

#[tokio::test]
async fn failing_health_check_marks_down() {
    let sick = spawn_clone("sick");
    sick.set_health(500);
    let ok = spawn_clone("ok");
    let lb = spawn_lb(&with_health(
        config_text("round-robin", &[(&sick, 1), (&ok, 1)], ""),
        "[health]\ninterval = \"200ms\"\ntimeout = \"100ms\"\nunhealthy_threshold = 2\n",
    ));
    let state = lb.table().find(sick.addr).unwrap().state.clone();
    assert!(eventually(Duration::from_secs(3), || state.is_down()).await);
    assert!(sick.checks() >= 2);
    let mut client = Client::connect(lb.http_addr()).await;
    for _ in 0..10 {
        assert_eq!(client.get("/").await.clone_name(), "ok");
    }
    assert_eq!(sick.hits(), 0);
    // Fixed: back after healthy_threshold (default 2) passes.
    sick.set_health(200);
    assert!(eventually(Duration::from_secs(3), || state.is_available()).await);
}

#[tokio::test]
async fn a_500_passes_to_the_client_and_is_not_retried() {
    let a = spawn_clone("a");
    let b = spawn_clone("b");
    let lb = spawn_lb(&config_text("round-robin", &[(&a, 1), (&b, 1)], ""));
    let mut client = Client::connect(lb.http_addr()).await;
    for _ in 0..6 {
        let r = client.get("/status?code=500").await;
        assert_eq!(r.status, 500);
        assert!(r.text().ends_with("status=500"), "{}", r.text());
    }
    // Each 500 reached exactly one clone, and nobody was ejected for it.
    assert_eq!(a.hits() + b.hits(), 6);
    let t = lb.table();
    assert!(t.backends().iter().all(|b| b.is_available()));
    assert!(t.backends().iter().all(|b| b.state.retries_total() == 0));
}

#[tokio::test]
async fn post_to_a_refused_clone_is_retried_elsewhere() {
    let good = spawn_clone("good");
    let refused = refused_addr();
    let lb = spawn_lb(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[[backend]]\naddress = \"{refused}\"\n[[backend]]\naddress = \"{}\"\nname = \"good\"\n",
        good.addr
    ));
    let size = 1024 * 1024;
    let stream = tokio::net::TcpStream::connect(lb.http_addr())
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    // The first pick is the refused clone.
    let req = Request::post("/upload")
        .header("host", "t")
        .body(PatternBody::new(size))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    let want = PatternBody::checksum(size);
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("{size} {}", want.value())
    );
    assert_eq!(good.hits(), 1);
    let t = lb.table();
    assert_eq!(t.find(refused).unwrap().state.retries_total(), 1);
}

#[tokio::test]
async fn post_whose_body_started_is_never_retried_but_a_bodiless_get_is() {
    let clones: Vec<_> = ["x", "y", "z"].iter().map(|n| spawn_clone(n)).collect();
    let lb = spawn_lb(&config_text(
        "round-robin",
        &clones.iter().map(|c| (c, 1)).collect::<Vec<_>>(),
        "",
    ));
    let total = |cs: &[TestClone]| cs.iter().map(|c| c.hits()).sum::<u64>();

    // The clone reads the first body frame, then drops the connection.
    let mut client = Client::connect(lb.http_addr()).await;
    let post = Request::post("/abort")
        .header("host", "t")
        .body(Full::new(Bytes::from(vec![7u8; 256 * 1024])))
        .unwrap();
    let a = client.send(post).await;
    assert_eq!(a.status, 502, "{}", a.text());
    assert_eq!(
        total(&clones),
        1,
        "a POST whose body was sent must not be retried"
    );

    // The same failure on a GET without a body is retried on each other clone once.
    let a = get(lb.http_addr(), "/abort").await;
    assert_eq!(a.status, 502);
    assert_eq!(
        total(&clones),
        1 + 3,
        "1 + retries(2) attempts, each on another clone"
    );
}

#[tokio::test]
async fn all_clones_down_answers_503_without_touching_them() {
    let a = spawn_clone("a");
    let b = spawn_clone("b");
    // Long timeouts: any wait on a clone would last at least connect_timeout (10 s).
    let lb = spawn_lb(&config_text(
        "round-robin",
        &[(&a, 1), (&b, 1)],
        "connect_timeout = \"10s\"\nresponse_timeout = \"20s\"",
    ));
    for c in lb.table().backends() {
        c.state.set_down(true);
    }
    let t = Instant::now();
    let r = get(lb.http_addr(), "/").await;
    assert_eq!(r.status, 503);
    // Was "< 500 ms" (breakable on a busy machine); half of connect_timeout still shows
    // that no clone was waited on.
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_eq!(a.connections() + b.connections(), 0);
    let t = lb.table();
    assert!(t.backends().iter().all(|c| c.state.requests_total() == 0));
}

#[tokio::test]
async fn passive_ejection_without_health_checks_and_probation() {
    let a = spawn_clone("a");
    let b = spawn_clone("b");
    let lb = spawn_lb(&config_text(
        "round-robin",
        &[(&a, 1), (&b, 1)],
        "ejection_time = \"600ms\"",
    ));
    let state = lb.table().find(b.addr).unwrap().state.clone();
    b.kill();
    let mut client = Client::connect(lb.http_addr()).await;
    // Every request is answered (a refused attempt is retried on a); after three refusals
    // in a row b is ejected and no longer tried.
    for _ in 0..10 {
        assert_eq!(client.get("/").await.status, 200);
    }
    assert!(state.is_down());
    assert_eq!(state.ejections_total(), 1);
    let failures = state.failures_total();
    assert_eq!(failures, 3);
    for _ in 0..10 {
        assert_eq!(client.get("/").await.status, 200);
    }
    assert_eq!(
        state.failures_total(),
        failures,
        "an ejected clone is not tried"
    );

    // After ejection_time it is back on probation: one more failure ejects it again.
    assert!(eventually(Duration::from_secs(3), || state.is_available()).await);
    for _ in 0..4 {
        assert_eq!(client.get("/").await.status, 200);
    }
    assert!(state.is_down());
    assert_eq!(state.ejections_total(), 2);
    assert_eq!(state.failures_total(), failures + 1);
}

/// The checker counts every check and keeps the last one, with a short reason.
#[tokio::test]
async fn checks_are_counted_and_the_last_one_kept() {
    let a = spawn_clone("a");
    let lb = spawn_lb(&with_health(
        config_text("round-robin", &[(&a, 1)], ""),
        HEALTH,
    ));
    let a_status = || lb.status().clone_named("a").unwrap().clone();
    let before = std::time::SystemTime::now();
    assert!(eventually(Duration::from_secs(5), || a_status().checks.passed >= 2).await);
    let c = a_status();
    let last = c.last_check.unwrap();
    assert!(last.ok && last.at >= before, "{last:?}");
    assert_eq!(last.detail, "status 200");
    assert_eq!(c.checks.failed, 0);

    a.set_health(500);
    assert!(eventually(Duration::from_secs(5), || a_status().checks.failed >= 1).await);
    let c = a_status();
    let last = c.last_check.unwrap();
    assert!(!last.ok, "{last:?}");
    assert_eq!(last.detail, "status 500");
    assert!(c.checks.passed >= 2);
    // Every check the clone saw was counted (one may be in flight).
    let seen = a.checks();
    let counted = c.checks.passed + c.checks.failed;
    assert!(
        counted == seen || counted + 1 == seen,
        "{counted} counted, {seen} seen"
    );

    // Without [health] there is no last check.
    let b = spawn_clone("b");
    let plain = spawn_lb(&config_text("round-robin", &[(&b, 1)], ""));
    let s = plain.status();
    assert!(s.backends[0].last_check.is_none());
    assert_eq!(
        (s.backends[0].checks.passed, s.backends[0].checks.failed),
        (0, 0)
    );
}

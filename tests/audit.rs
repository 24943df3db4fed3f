//! The consistency audit (issue 16) on real sockets: sampled replays on a second clone,
//! their verdicts in `/status` (`audit`: `checked`, `skipped`, `mismatches`, `odd_clone`,
//! `recent`) and `/metrics` (`clonelb_audit_*`), and the peer comparison of behaviour
//! (`backends[].outlier`).
//!
//! The clones are programmable ([`spawn_app`]): `TestClone` names itself in its answers,
//! so every replay of them would differ. Every wait is bounded and polls.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::request::Parts;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;

/// One GET to the admin API on a fresh connection: status and body.
async fn admin_get(admin: SocketAddr, path: &str) -> (StatusCode, String) {
    admin_call(admin, Method::GET, path, "").await
}

/// `/status` as JSON.
async fn status(admin: SocketAddr) -> Value {
    let (code, body) = admin_get(admin, "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// `/metrics` as text.
async fn metrics(admin: SocketAddr) -> String {
    let (code, body) = admin_get(admin, "/metrics").await;
    assert_eq!(code, 200, "{body}");
    body
}

/// The sum of the samples of `family` whose labels contain every `key="value"` of
/// `labels` (a sample without labels matches only an empty filter).
fn metric_sum(text: &str, family: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (name, rest) = match series.split_once('{') {
                Some((n, r)) => (n, r),
                None => (series, ""),
            };
            (name == family
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())
            .flatten()
        })
        .sum()
}

/// A count in the `audit` object: a number, or an object of numbers (e.g. `skipped` by
/// reason) summed.
fn total(v: &Value) -> u64 {
    match v {
        Value::Number(n) => n.as_u64().unwrap(),
        Value::Object(m) => m.values().map(total).sum(),
        other => panic!("not a count: {other}"),
    }
}

/// Whether any string anywhere inside `v` equals `s`.
fn mentions(v: &Value, s: &str) -> bool {
    match v {
        Value::String(x) => x == s,
        Value::Array(a) => a.iter().any(|x| mentions(x, s)),
        Value::Object(m) => m.values().any(|x| mentions(x, s)),
        _ => false,
    }
}

/// Poll `/status` (every 50 ms, at most `limit`) until `cond` holds of it; returns it.
/// Panics with the last one, saying what was awaited, when it never does.
async fn status_when(
    admin: SocketAddr,
    what: &str,
    limit: Duration,
    cond: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = status(admin).await;
        if cond(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within {limit:?}; last /status: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until every one of `sampled` requests has its verdict: `audit.checked` plus
/// `audit.skipped` reaches it (at most 30 s). Returns `/status`.
async fn settled(admin: SocketAddr, sampled: u64) -> Value {
    let first = status(admin).await;
    assert!(
        first["audit"].is_object(),
        "no `audit` object in /status: {first:#}"
    );
    let v = status_when(
        admin,
        &format!("{sampled} sampled requests checked or skipped"),
        Duration::from_secs(30),
        |v| total(&v["audit"]["checked"]) + total(&v["audit"]["skipped"]) >= sampled,
    )
    .await;
    // Nothing more may come: no request outside the sample is ever counted.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = status(admin).await;
    assert_eq!(
        total(&again["audit"]["checked"]) + total(&again["audit"]["skipped"]),
        sampled,
        "more verdicts than sampled requests: {again:#}"
    );
    assert_eq!(again["audit"]["checked"], v["audit"]["checked"]);
    again
}

/// `[audit]` replaying every eligible request.
fn audit_all(extra: &str) -> String {
    format!("[audit]\nsample = 1.0\nmax_concurrent = 64\n{extra}\n")
}

fn get_req(path: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", "test.local")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// The same answer for the same path, whichever clone gives it.
fn stateless(p: &Parts, _: &Bytes) -> AppReply {
    AppReply::ok(format!("item at {}", p.uri.path()))
        .header("cache-control", "no-store")
        .header("x-app", "shop/1")
}

/// `n` GETs of `path(i)` over `conns` kept-alive connections at once; every answer is a
/// 200.
async fn drive(
    addr: SocketAddr,
    n: usize,
    conns: usize,
    path: impl Fn(usize) -> String + Send + Sync + 'static,
) {
    let path = Arc::new(path);
    let tasks: Vec<_> = (0..conns)
        .map(|c| {
            let path = Arc::clone(&path);
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                for i in (c..n).step_by(conns) {
                    let a = client.send(get_req(&path(i))).await;
                    assert_eq!(a.status, 200, "{}", a.text());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// Runs now (no audit task needed): with `[audit]` on and every request drawn, the user's
/// answers are exactly what the programmable clones send, and they stay programmable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_answers_reach_the_user_unchanged() {
    let a = spawn_app("a", |p: &Parts, body: &Bytes| {
        AppReply::ok(format!("{} {} {}", p.method, p.uri, body.len()))
            .header("date", "Mon, 01 Jan 2024 00:00:00 GMT")
            .header("x-app", "one")
            .status(if p.uri.path() == "/missing" { 404 } else { 200 })
    });
    let lb = spawn_lb(&app_config(&[&a], "", &audit_all("")));
    let addr = lb.http_addr();
    let mut client = Client::connect(addr).await;
    let ans = client.get("/x?q=1").await;
    assert_eq!(ans.status, 200);
    assert_eq!(ans.text(), "GET /x?q=1 0");
    assert_eq!(ans.headers["date"], "Mon, 01 Jan 2024 00:00:00 GMT");
    assert_eq!(ans.headers["x-app"], "one");
    assert_eq!(client.get("/missing").await.status, 404);
    let post = client
        .send(
            Request::post("/cart")
                .header("host", "test.local")
                .body(Full::new(Bytes::from("abc")))
                .unwrap(),
        )
        .await;
    assert_eq!(post.text(), "POST /cart 3");
    assert_eq!(a.hits(), 3);
    assert_eq!(a.count(|s| s.method == Method::POST), 1);
    assert_eq!(a.count(|s| s.audit), 0, "the client sent no audit header");
}

/// Three identical stateless clones behind a balancer that audits every request.
fn three_identical_audited() -> ([AppClone; 3], clonelb::Balancer) {
    let clones = [
        spawn_app("a", stateless),
        spawn_app("b", stateless),
        spawn_app("c", stateless),
    ];
    let lb = spawn_lb(&app_config(
        &[&clones[0], &clones[1], &clones[2]],
        "",
        &audit_all(""),
    ));
    (clones, lb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_clones_never_disagree_over_2000_requests() {
    let (clones, lb) = three_identical_audited();
    let (addr, admin) = (lb.http_addr(), lb.admin_addr().unwrap());
    const N: u64 = 2_000;
    drive(addr, N as usize, 8, |i| format!("/item/{}", i % 10)).await;
    let v = settled(admin, N).await;
    let audit = &v["audit"];
    assert_eq!(total(&audit["mismatches"]), 0, "{v:#}");
    assert!(
        total(&audit["checked"]) >= 500,
        "too few checked to mean anything: {v:#}"
    );
    assert_eq!(audit["odd_clone"], Value::Null, "{v:#}");
    assert_eq!(audit["recent"], serde_json::json!([]), "{v:#}");
    // Every check was a replay a clone saw, marked as one.
    let replays: usize = clones.iter().map(|c| c.count(|s| s.audit)).sum();
    assert!(
        replays as u64 >= total(&audit["checked"]),
        "{replays} replays"
    );
    let users: usize = clones.iter().map(|c| c.count(|s| !s.audit)).sum();
    assert_eq!(users as u64, N);
    // The metrics agree, and replays are not user requests.
    let text = metrics(admin).await;
    assert_eq!(
        metric_sum(&text, "clonelb_audit_checks_total", &[]),
        total(&audit["checked"]) as f64,
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, "clonelb_audit_mismatches_total", &[]),
        0.0,
        "{text}"
    );
    assert_eq!(
        metric_sum(&text, "clonelb_audit_skipped_total", &[]),
        total(&audit["skipped"]) as f64,
        "{text}"
    );
    let requests: f64 = ["a", "b", "c"]
        .iter()
        .map(|b| metric_sum(&text, "clonelb_requests_total", &[("backend", b)]))
        .sum();
    assert_eq!(requests, N as f64, "replays counted as requests:\n{text}");
}

type Carts = Arc<Mutex<HashMap<String, String>>>;

/// A shop keeping carts in `carts`: `POST /cart` stores the body as the cookie `sid`'s
/// cart, `GET /cart` reads it.
fn cart_app(carts: Carts) -> impl Fn(&Parts, &Bytes) -> AppReply + Send + Sync + 'static {
    move |p: &Parts, body: &Bytes| {
        let sid = p
            .headers
            .get("cookie")
            .and_then(|c| c.to_str().ok())
            .and_then(|c| c.split("; ").find_map(|kv| kv.strip_prefix("sid=")))
            .unwrap_or("")
            .to_string();
        match (&p.method, p.uri.path()) {
            (&Method::POST, "/cart") => {
                let item = String::from_utf8_lossy(body).into_owned();
                carts.lock().unwrap().insert(sid, item);
                AppReply::ok("saved")
            }
            (_, "/cart") => {
                let cart = carts.lock().unwrap().get(&sid).cloned();
                AppReply::ok(format!("cart: {}", cart.as_deref().unwrap_or("empty")))
            }
            _ => AppReply::ok("shop"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clone_keeping_sessions_in_local_memory_is_the_odd_clone() {
    let shared: Carts = Arc::default();
    let a = spawn_app("a", cart_app(Arc::clone(&shared)));
    let b = spawn_app("b", cart_app(Arc::clone(&shared)));
    let local = spawn_app("local", cart_app(Arc::default()));
    let lb = spawn_lb(&app_config(
        &[&a, &b, &local],
        "",
        &audit_all("methods = [\"GET\"]"),
    ));
    let (addr, admin) = (lb.http_addr(), lb.admin_addr().unwrap());
    const USERS: usize = 60;
    const READS: usize = 3;
    let mut client = Client::connect(addr).await;
    for u in 0..USERS {
        let cookie = format!("theme=dark; sid=user{u}");
        let saved = client
            .send(
                Request::post("/cart")
                    .header("host", "test.local")
                    .header("cookie", &cookie)
                    .body(Full::new(Bytes::from(format!("book-{u}"))))
                    .unwrap(),
            )
            .await;
        assert_eq!(saved.text(), "saved");
        for _ in 0..READS {
            let cart = client
                .send(
                    Request::get("/cart")
                        .header("host", "test.local")
                        .header("cookie", &cookie)
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await;
            assert_eq!(cart.status, 200);
        }
    }
    let v = settled(admin, (USERS * READS) as u64).await;
    let audit = &v["audit"];
    assert!(total(&audit["checked"]) >= 60, "{v:#}");
    assert!(total(&audit["mismatches"]) >= 20, "{v:#}");
    assert_eq!(audit["odd_clone"], "local", "{v:#}");
    // Every mismatch involves the local clone, on /cart; no cookie value is shown.
    let recent = audit["recent"].as_array().unwrap();
    assert!(!recent.is_empty(), "{v:#}");
    for m in recent {
        assert_eq!(m["path"], "/cart", "{m}");
        assert!(mentions(m, "local"), "{m}");
        let shown = m.to_string();
        assert!(
            !shown.contains("sid=") && !shown.contains("book-") && !shown.contains("user1"),
            "{m}"
        );
    }
    // The two sharing clones never disagreed with each other: every mismatch counts
    // against the local one.
    let text = metrics(admin).await;
    assert_eq!(
        metric_sum(
            &text,
            "clonelb_audit_mismatches_total",
            &[("backend", "local")]
        ),
        total(&audit["mismatches"]) as f64,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_different_body_on_one_path_is_a_body_mismatch_on_that_path() {
    fn price(cents: &'static str) -> impl Fn(&Parts, &Bytes) -> AppReply + Send + Sync {
        move |p: &Parts, b: &Bytes| match p.uri.path() {
            // The same length either way, so only the body can differ.
            "/price" => AppReply::ok(format!("price={cents}")),
            _ => stateless(p, b),
        }
    }
    let (a, b, c) = (
        spawn_app("a", price("100")),
        spawn_app("b", price("100")),
        spawn_app("c", price("999")),
    );
    let lb = spawn_lb(&app_config(&[&a, &b, &c], "", &audit_all("")));
    let (addr, admin) = (lb.http_addr(), lb.admin_addr().unwrap());
    const N: usize = 90;
    drive(addr, N, 3, |i| {
        if i % 2 == 0 {
            format!("/price?user=secret{i}")
        } else {
            "/other".to_string()
        }
    })
    .await;
    let v = settled(admin, N as u64).await;
    let audit = &v["audit"];
    assert!(total(&audit["mismatches"]) >= 1, "{v:#}");
    let recent = audit["recent"].as_array().unwrap();
    assert!(
        recent
            .iter()
            .any(|m| m["path"] == "/price" && mentions(m, "body") && mentions(m, "c")),
        "no body mismatch on /price involving c: {v:#}"
    );
    for m in recent {
        // Only /price differs, its query is never kept, and c is in every mismatch.
        assert_eq!(m["path"], "/price", "{m}");
        assert!(mentions(m, "c"), "{m}");
        assert!(!m.to_string().contains("secret"), "{m}");
    }
    let text = metrics(admin).await;
    assert!(
        metric_sum(&text, "clonelb_audit_mismatches_total", &[("backend", "c")]) >= 1.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clones_differing_only_in_their_date_header_match() {
    fn dated(date: &'static str) -> impl Fn(&Parts, &Bytes) -> AppReply + Send + Sync {
        move |p: &Parts, b: &Bytes| stateless(p, b).header("date", date)
    }
    let (a, b, c) = (
        spawn_app("a", dated("Mon, 01 Jan 2024 00:00:00 GMT")),
        spawn_app("b", dated("Tue, 02 Jan 2024 00:00:00 GMT")),
        spawn_app("c", dated("Wed, 03 Jan 2024 00:00:00 GMT")),
    );
    let lb = spawn_lb(&app_config(&[&a, &b, &c], "", &audit_all("")));
    let (addr, admin) = (lb.http_addr(), lb.admin_addr().unwrap());
    // The dates really do differ as the user sees them (round-robin: one of each).
    let mut client = Client::connect(addr).await;
    let mut dates = Vec::new();
    for _ in 0..3 {
        dates.push(client.get("/item/1").await.headers["date"].clone());
    }
    dates.sort();
    dates.dedup();
    assert_eq!(dates.len(), 3, "{dates:?}");
    const N: usize = 150;
    drive(addr, N, 3, |i| format!("/item/{}", i % 5)).await;
    let v = settled(admin, (N + 3) as u64).await;
    let audit = &v["audit"];
    assert!(total(&audit["checked"]) >= 50, "{v:#}");
    assert_eq!(total(&audit["mismatches"]), 0, "{v:#}");
    assert_eq!(audit["recent"], serde_json::json!([]), "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn post_is_never_replayed_even_at_full_sample() {
    let (clones, lb) = three_identical_audited();
    let (addr, admin) = (lb.http_addr(), lb.admin_addr().unwrap());
    const POSTS: usize = 30;
    const GETS: usize = 30;
    let mut client = Client::connect(addr).await;
    for i in 0..POSTS {
        // With a body and without one (content-length: 0): neither is replayed.
        let body = if i % 2 == 0 { "order" } else { "" };
        let a = client
            .send(
                Request::post(format!("/order/{i}"))
                    .header("host", "test.local")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap(),
            )
            .await;
        assert_eq!(a.status, 200);
    }
    // GETs after them, so the audit is seen working: once their verdicts are in, any
    // replay of an earlier POST would have been too.
    for i in 0..GETS {
        assert_eq!(client.get(&format!("/item/{i}")).await.status, 200);
    }
    let v = settled(admin, GETS as u64).await;
    assert!(
        total(&v["audit"]["checked"]) >= 1,
        "the audit replayed nothing: {v:#}"
    );
    // Each POST reached exactly one clone, once, and never as a replay.
    let mut posts: HashMap<String, usize> = HashMap::new();
    for c in &clones {
        for s in c.seen() {
            if s.method == Method::POST {
                assert!(!s.audit, "{} got a replayed POST {}", c.name, s.target);
                *posts.entry(s.target).or_default() += 1;
            }
        }
    }
    assert_eq!(posts.len(), POSTS, "{posts:?}");
    assert!(posts.values().all(|&n| n == 1), "{posts:?}");
    let replays: usize = clones.iter().map(|c| c.count(|s| s.audit)).sum();
    assert!((1..=GETS).contains(&replays), "{replays} replays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clone_five_times_slower_is_a_latency_outlier_within_one_window() {
    fn after(ms: u64) -> impl Fn(&Parts, &Bytes) -> AppReply + Send + Sync {
        move |p: &Parts, b: &Bytes| stateless(p, b).after(Duration::from_millis(ms))
    }
    let (a, b, slow) = (
        spawn_app("a", after(20)),
        spawn_app("b", after(20)),
        spawn_app("slow", after(100)),
    );
    // No replays: the peer comparison alone.
    let lb = spawn_lb(&app_config(
        &[&a, &b, &slow],
        "",
        "[audit]\nsample = 0.0\nwindow = \"10s\"\noutlier_factor = 3.0\n",
    ));
    let (addr, admin) = (lb.http_addr(), lb.admin_addr().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..12)
        .map(|_| {
            let stop = Arc::clone(&stop);
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                while !stop.load(SeqCst) {
                    assert_eq!(client.get("/item/1").await.status, 200);
                }
            })
        })
        .collect();
    let started = Instant::now();
    // One 10 s window, plus slack for the judging and a slow machine.
    let v = status_when(
        admin,
        "an outlier on `slow`",
        Duration::from_secs(25),
        |v| !backend(v, "slow")["outlier"].is_null(),
    )
    .await;
    let took = started.elapsed();
    stop.store(true, SeqCst);
    for t in load {
        t.await.unwrap();
    }
    let o = &backend(&v, "slow")["outlier"];
    let metric = o["metric"].as_str().unwrap_or_default();
    assert!(metric == "p50_ms" || metric == "p99_ms", "{o}");
    let (value, median) = (
        o["value"].as_f64().unwrap(),
        o["pool_median"].as_f64().unwrap(),
    );
    assert!(value > 3.0 * median, "{o}");
    assert_eq!(o["ejected"], false, "{o}");
    assert_ne!(backend(&v, "slow")["state"], "down", "reported only: {v:#}");
    for fast in ["a", "b"] {
        assert_eq!(backend(&v, fast)["outlier"], Value::Null, "{v:#}");
    }
    assert!(took < Duration::from_secs(25), "{took:?}");
}

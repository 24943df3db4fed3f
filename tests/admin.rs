//! The admin API on real sockets: status, disable/enable under load, wait-drained, token,
//! metrics (checked by promtool and a Prometheus parser), reload, and that scrapes never
//! delay requests or health checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::{Method, StatusCode};
use serde_json::Value;

/// lb.toml text for `clones` with an admin listener on a free port and `extra` appended.
fn with_admin(clones: &[(&TestClone, u32)], proxy: &str, extra: &str) -> String {
    format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n{extra}\n",
        config_text("round-robin", clones, proxy)
    )
}

/// One admin request on a fresh connection: status and body.
async fn call(
    admin: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    admin_request(admin, method, path, headers, "").await
}

async fn get_json(admin: SocketAddr, path: &str) -> (StatusCode, Value) {
    let (status, body) = call(admin, Method::GET, path, &[]).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

async fn post_json(admin: SocketAddr, path: &str) -> (StatusCode, Value) {
    let (status, body) = call(admin, Method::POST, path, &[]).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// `name` → `state` from `/status`.
async fn states(admin: SocketAddr) -> HashMap<String, String> {
    let (status, v) = get_json(admin, "/status").await;
    assert_eq!(status, 200, "{v}");
    v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn admin_of(lb: &clonelb::Balancer) -> SocketAddr {
    lb.admin_addr().expect("an admin listener")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_every_state_and_a_failed_reload() {
    let (a, b, c, d) = (
        spawn_clone("a"),
        spawn_clone("b"),
        spawn_clone("c"),
        spawn_clone("d"),
    );
    let health = "[health]\ninterval = \"100ms\"\ntimeout = \"50ms\"\nunhealthy_threshold = 1\n";
    let all = [(&a, 1), (&b, 1), (&c, 1), (&d, 1)];
    let dir = fresh_dir("admin");
    let path = dir.join("lb.toml");
    std::fs::write(&path, with_admin(&all, "", health)).unwrap();
    let lb = clonelb::Balancer::start_from_file_with_workers(&path, 2).unwrap();
    let admin = admin_of(&lb);
    // One held request on each clone (round-robin), then only d's stays in flight.
    let addr = lb.http_addr();
    let held: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { get(addr, "/hold").await.status }))
        .collect();
    assert!(
        eventually(Duration::from_secs(5), || a.held()
            + b.held()
            + c.held()
            + d.held()
            == 4)
        .await
    );
    for x in [&a, &b, &c] {
        x.release();
    }
    b.set_health(500);
    // d removed by a reload while its request is in flight: draining.
    std::fs::write(&path, with_admin(&all[..3], "", health)).unwrap();
    let (status, v) = post_json(admin, "/reload").await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["generation"], 2);
    assert_eq!(v["removed"], serde_json::json!(["d"]));
    let (status, v) = post_json(admin, "/backends/c/disable").await;
    assert_eq!(
        (status, v["state"].as_str()),
        (StatusCode::OK, Some("disabled"))
    );
    assert!(
        eventually(Duration::from_secs(5), || lb
            .status()
            .clone_named("b")
            .unwrap()
            .down)
        .await
    );
    // A bad edit: 422, the old configuration keeps serving.
    std::fs::write(
        &path,
        "[listen]\nhttp = \"127.0.0.1:0\"\n[proxy]\nretries = \"x\"\n",
    )
    .unwrap();
    let (status, v) = post_json(admin, "/reload").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["generation"], 2);
    let errors = v["errors"].as_array().unwrap();
    assert!(errors[0].as_str().unwrap().contains("lb.toml:4:"), "{v}");

    let s = states(admin).await;
    let want: HashMap<String, String> = [
        ("a", "up"),
        ("b", "down"),
        ("c", "disabled"),
        ("d", "draining"),
    ]
    .into_iter()
    .map(|(n, st)| (n.to_string(), st.to_string()))
    .collect();
    assert_eq!(s, want);
    let (_, v) = get_json(admin, "/status").await;
    assert_eq!(v["config"]["generation"], 2);
    assert_eq!(
        v["config"]["path"].as_str(),
        Some(&*path.display().to_string())
    );
    assert!(
        v["config"]["last_error"][0]
            .as_str()
            .unwrap()
            .contains("retries"),
        "{v}"
    );
    assert_eq!(v["strategy"], "round-robin");
    let d_entry = backend(&v, "d");
    assert_eq!(d_entry["in_flight"], 1);
    assert!(v["config"]["loaded_at"].as_str().unwrap().ends_with('Z'));
    // The old pool still serves.
    assert_eq!(get(addr, "/").await.status, 200);
    // `history`: the last minute second by second, oldest first, once a few have ticked.
    assert!(
        eventually(Duration::from_secs(10), || lb
            .status()
            .clone_named("a")
            .is_some_and(|c| c.history.len() >= 2))
        .await
    );
    let (_, v) = get_json(admin, "/status").await;
    let a_entry = backend(&v, "a");
    let history = a_entry["history"].as_array().unwrap();
    assert!((2..=60).contains(&history.len()), "{a_entry}");
    for point in history {
        let point = point.as_object().unwrap();
        let mut keys: Vec<&str> = point.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["p99_ms", "rps", "t"], "{a_entry}");
        assert!(point["t"].as_str().unwrap().ends_with('Z'), "{a_entry}");
        assert!(point["rps"].as_f64().unwrap() >= 0.0, "{a_entry}");
        assert!(
            point["p99_ms"].is_null() || point["p99_ms"].as_f64().is_some(),
            "{a_entry}"
        );
    }
    let times: Vec<&str> = history.iter().map(|p| p["t"].as_str().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] <= w[1]),
        "t not ascending: {times:?}"
    );
    d.release();
    for h in held {
        assert_eq!(h.await.unwrap(), 200);
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_under_load_moves_traffic_without_a_failure_and_enable_brings_it_back() {
    let (a, b, c) = (spawn_clone("a"), spawn_clone("b"), spawn_clone("c"));
    let lb = spawn_lb(&with_admin(&[(&a, 1), (&b, 1), (&c, 1)], "", ""));
    let (addr, admin) = (lb.http_addr(), admin_of(&lb));
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, failed, answered) = (stop.clone(), failed.clone(), answered.clone());
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                // Bounded: at most 20,000 requests per client, or until told to stop.
                for _ in 0..20_000 {
                    if stop.load(SeqCst) {
                        break;
                    }
                    if client.get("/slow?ms=5").await.status == 200 {
                        answered.fetch_add(1, SeqCst);
                    } else {
                        failed.fetch_add(1, SeqCst);
                    }
                }
            })
        })
        .collect();
    assert!(eventually(Duration::from_secs(5), || b.hits() > 20).await);
    let (status, v) = post_json(admin, "/backends/b/disable").await;
    assert_eq!(
        (status, v["state"].as_str()),
        (StatusCode::OK, Some("disabled"))
    );
    // What was in flight on b finishes; after that b gets nothing.
    let (status, v) = get_json(admin, "/backends/b/wait-drained?timeout=5s").await;
    assert_eq!((status, &v["in_flight"]), (StatusCode::OK, &Value::from(0)));
    let after_drain = b.hits();
    let a_before = a.hits();
    assert!(eventually(Duration::from_secs(5), || a.hits() > a_before + 50).await);
    assert_eq!(b.hits(), after_drain, "a disabled clone got new requests");
    // Enabled again: back in rotation.
    let (status, v) = post_json(admin, "/backends/b/enable").await;
    assert_eq!((status, v["state"].as_str()), (StatusCode::OK, Some("up")));
    assert!(eventually(Duration::from_secs(5), || b.hits() > after_drain + 10).await);
    stop.store(true, SeqCst);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        failed.load(SeqCst),
        0,
        "requests failed during disable/enable"
    );
    assert!(answered.load(SeqCst) > 100);
    // Idempotent, and unknown names are 404.
    assert_eq!(post_json(admin, "/backends/b/enable").await.0, 200);
    assert_eq!(post_json(admin, "/backends/nobody/disable").await.0, 404);
    assert_eq!(
        get_json(admin, "/backends/nobody/wait-drained").await.0,
        404
    );
    assert_eq!(get_json(admin, "/backends/b/wait-drained").await.0, 409);
    assert_eq!(
        get_json(admin, "/backends/b/wait-drained?timeout=soon")
            .await
            .0,
        400
    );
}

#[tokio::test]
async fn wait_drained_times_out_with_the_in_flight_count() {
    let a = spawn_clone("a");
    let lb = spawn_lb(&with_admin(&[(&a, 1)], "", ""));
    let (addr, admin) = (lb.http_addr(), admin_of(&lb));
    let held = tokio::spawn(async move { get(addr, "/hold").await.status });
    assert!(eventually(Duration::from_secs(5), || a.held() == 1).await);
    assert_eq!(post_json(admin, "/backends/a/disable").await.0, 200);
    let (status, v) = get_json(admin, "/backends/a/wait-drained?timeout=200ms").await;
    assert_eq!(
        (status, &v["in_flight"]),
        (StatusCode::REQUEST_TIMEOUT, &Value::from(1))
    );
    a.release();
    assert_eq!(
        held.await.unwrap(),
        200,
        "a disabled clone's request is never cut"
    );
    let (status, _) = get_json(admin, "/backends/a/wait-drained?timeout=5s").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_token_guards_everything_but_the_page_and_the_probes() {
    let a = spawn_clone("a");
    let lb = spawn_lb(&with_admin(&[(&a, 1)], "", "token = \"s3cret\""));
    let admin = admin_of(&lb);
    for path in ["/status", "/metrics", "/backends/a/wait-drained"] {
        let (status, body) = call(admin, Method::GET, path, &[]).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert!(!body.contains("s3cret"));
        let wrong = [("authorization", "Bearer s3cre")];
        assert_eq!(call(admin, Method::GET, path, &wrong).await.0, 401);
    }
    let ok = [("authorization", "Bearer s3cret")];
    assert_eq!(call(admin, Method::GET, "/status", &ok).await.0, 200);
    assert_eq!(
        call(admin, Method::POST, "/backends/a/disable", &ok)
            .await
            .0,
        200
    );
    for path in ["/", "/live", "/ready"] {
        assert_eq!(call(admin, Method::GET, path, &[]).await.0, 200, "{path}");
    }
    // The token never shows in /status or in Debug output.
    let (_, body) = call(admin, Method::GET, "/status", &ok).await;
    assert!(!body.contains("s3cret"));
    assert!(!format!("{:?}", lb.table().config()).contains("s3cret"));
}

#[tokio::test]
async fn a_cross_site_post_is_refused() {
    let a = spawn_clone("a");
    let lb = spawn_lb(&with_admin(&[(&a, 1)], "", ""));
    let admin = admin_of(&lb);
    let evil = [("origin", "http://evil.example")];
    assert_eq!(
        call(admin, Method::POST, "/backends/a/disable", &evil)
            .await
            .0,
        403
    );
    let fetch = [("sec-fetch-site", "cross-site")];
    assert_eq!(
        call(admin, Method::POST, "/backends/a/disable", &fetch)
            .await
            .0,
        403
    );
    assert_eq!(lb.status().backends[0].state.as_str(), "up");
    let own = format!("http://{admin}");
    let same = [("origin", own.as_str())];
    assert_eq!(
        call(admin, Method::POST, "/backends/a/disable", &same)
            .await
            .0,
        200
    );
    // Wrong method, unknown path.
    assert_eq!(call(admin, Method::POST, "/status", &[]).await.0, 405);
    assert_eq!(call(admin, Method::GET, "/nope", &[]).await.0, 404);
    assert_eq!(
        post_json(admin, "/reload").await.0,
        409,
        "no file to reload"
    );
}

#[test]
fn a_non_loopback_admin_without_a_token_fails_check_at_its_line() {
    let dir = fresh_dir("admin-check");
    let path = dir.join("lb.toml");
    std::fs::write(
        &path,
        "[listen]\nhttp = \"127.0.0.1:8080\"\n[admin]\nlisten = \"0.0.0.0:9090\"\n[[backend]]\naddress = \"127.0.0.1:9001\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clonelb"))
        .arg("check")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}:4:10: admin listener 0.0.0.0:9090 is not on loopback",
            path.display()
        )),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Every sample of a Prometheus text exposition: (family, sorted labels) → value.
type Samples = HashMap<(String, Vec<(String, String)>), f64>;

fn samples(text: &str) -> Samples {
    use openmetrics_parser::PrometheusValue;
    let parsed = openmetrics_parser::prometheus::parse_prometheus(text).unwrap();
    let mut out = HashMap::new();
    for (name, family) in &parsed.families {
        for s in family.iter_samples() {
            let mut labels: Vec<(String, String)> = s
                .get_labelset()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            let value = match &s.value {
                PrometheusValue::Counter(c) => c.value.as_f64(),
                PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => n.as_f64(),
                PrometheusValue::Histogram(h) => h.count.unwrap_or(0) as f64,
                PrometheusValue::Summary(_) => f64::NAN,
            };
            out.insert((name.clone(), labels), value);
        }
    }
    out
}

fn requests_of(all: &Samples, backend: &str) -> f64 {
    all.iter()
        .filter(|((name, labels), _)| {
            name == "clonelb_requests_total"
                && labels.iter().any(|(k, v)| k == "backend" && v == backend)
        })
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test]
async fn metrics_count_exactly_what_was_sent_and_pass_promtool() {
    let (a, b) = (spawn_clone("a"), spawn_clone("b"));
    let lb = spawn_lb(&with_admin(&[(&a, 1), (&b, 1)], "", ""));
    let (addr, admin) = (lb.http_addr(), admin_of(&lb));
    let (status, first) = call(admin, Method::GET, "/metrics", &[]).await;
    assert_eq!(status, 200);
    let before = samples(&first);
    for family in [
        "clonelb_requests_total",
        "clonelb_backend_in_flight",
        "clonelb_backend_up",
        "clonelb_retries_total",
        "clonelb_config_generation",
        "clonelb_request_duration_seconds",
        "clonelb_health_checks_total",
        "clonelb_config_reloads_total",
        "clonelb_downstream_connections",
    ] {
        assert!(
            before.keys().any(|(n, _)| n == family),
            "{family} missing:\n{first}"
        );
    }
    let mut client = Client::connect(addr).await;
    for _ in 0..10 {
        assert_eq!(client.get("/").await.status, 200);
    }
    // A rejected request: answered without any clone.
    let bad = raw_exchange(addr, b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n").await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    let (_, text) = call(admin, Method::GET, "/metrics", &[]).await;
    let after = samples(&text);
    for name in ["a", "b"] {
        assert_eq!(
            requests_of(&after, name) - requests_of(&before, name),
            5.0,
            "{name}"
        );
    }
    assert_eq!(
        requests_of(&after, "none") - requests_of(&before, "none"),
        1.0
    );
    promtool_check(&text);
}

/// `promtool check metrics` on `text`. CI installs promtool (Debian's prometheus
/// package) and sets CLONELB_REQUIRE_PROMTOOL=1; elsewhere its absence skips this check.
fn promtool_check(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if std::env::var_os("CLONELB_REQUIRE_PROMTOOL").is_none() => {
            eprintln!("promtool not run ({e}); apt-get install prometheus to run it");
            return;
        }
        Err(e) => panic!("promtool is required here: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Raw bytes in, the whole answer out (the balancer closes after a 400).
async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_flood_delays_neither_requests_nor_health_checks() {
    let (a, b) = (spawn_clone("a"), spawn_clone("b"));
    let interval = Duration::from_secs(1);
    let health = "[health]\ninterval = \"1s\"\ntimeout = \"500ms\"\n";
    let lb = spawn_lb(&with_admin(&[(&a, 1), (&b, 1)], "", health));
    let (addr, admin) = (lb.http_addr(), admin_of(&lb));
    // Health checks start at a random offset within one interval.
    assert!(eventually(Duration::from_secs(5), || a.checks() > 0 && b.checks() > 0).await);
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (stop, failed) = (stop.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            for _ in 0..100_000 {
                if stop.load(SeqCst) {
                    break;
                }
                if client.get("/").await.status != 200 {
                    failed.fetch_add(1, SeqCst);
                }
            }
        }));
    }
    for _ in 0..8 {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..100_000 {
                if stop.load(SeqCst) {
                    break;
                }
                assert_eq!(call(admin, Method::GET, "/metrics", &[]).await.0, 200);
            }
        }));
    }
    let started = Instant::now();
    // Five intervals of load: each clone is checked about five times meanwhile.
    tokio::time::sleep(interval * 5).await;
    stop.store(true, SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(failed.load(SeqCst), 0);
    for clone in [&a, &b] {
        let times = clone.stats.check_times.lock().unwrap().clone();
        let during: Vec<_> = times.iter().filter(|t| **t >= started).collect();
        assert!(
            during.len() >= 3,
            "{} checks during the flood",
            during.len()
        );
        for pair in times.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap <= interval.mul_f64(1.5),
                "{}: checks {gap:?} apart",
                clone.name
            );
        }
    }
}

/// `clonelb ARGS --admin ADDR` run off the test's runtime: exit code and both outputs.
async fn cli(admin: SocketAddr, args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_clonelb"));
    cmd.args(args).arg("--admin").arg(admin.to_string());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_disable_wait_returns_when_the_request_in_flight_ends() {
    let a = spawn_clone("a");
    let lb = spawn_lb(&with_admin(&[(&a, 1)], "", ""));
    let (addr, admin) = (lb.http_addr(), admin_of(&lb));
    let done = Arc::new(AtomicBool::new(false));
    let request = {
        let done = done.clone();
        tokio::spawn(async move {
            let status = get(addr, "/slow?ms=2000").await.status;
            done.store(true, SeqCst);
            status
        })
    };
    assert!(eventually(Duration::from_secs(5), || a.hits() == 1).await);
    let (code, out) = cli(admin, &["disable", "a", "--wait", "--timeout", "20s"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(
        done.load(SeqCst),
        "returned before the request in flight ended: {out}"
    );
    assert_eq!(request.await.unwrap(), 200);

    // Enabled again, a held request, and a wait shorter than it: exit 1 with the count.
    let (code, out) = cli(admin, &["enable", "a"]).await;
    assert_eq!(code, Some(0), "{out}");
    let held = tokio::spawn(async move { get(addr, "/hold").await.status });
    assert!(eventually(Duration::from_secs(5), || a.held() == 1).await);
    let (code, out) = cli(admin, &["disable", "a", "--wait", "--timeout", "500ms"]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("1 in flight"), "{out}");
    a.release();
    assert_eq!(held.await.unwrap(), 200);
    // status shows it, and an unknown clone is one line and exit 1.
    let (code, out) = cli(admin, &["status"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("disabled"), "{out}");
    let (code, out) = cli(admin, &["enable", "nobody"]).await;
    assert_eq!((code, out.trim().lines().count()), (Some(1), 1), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_turns_503_during_a_graceful_shutdown_while_live_stays_200() {
    let a = spawn_clone("a");
    let lb = spawn_lb(&with_admin(&[(&a, 1)], "shutdown_timeout = \"20s\"", ""));
    let (addr, admin) = (lb.http_addr(), admin_of(&lb));
    assert_eq!(call(admin, Method::GET, "/ready", &[]).await.0, 200);
    let held = tokio::spawn(async move { get(addr, "/hold").await.status });
    assert!(eventually(Duration::from_secs(5), || a.held() == 1).await);
    // shutdown() waits for the held request, so it runs on a thread of its own.
    let stopping = std::thread::spawn(move || lb.shutdown());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if call(admin, Method::GET, "/ready", &[]).await.0 == 503 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/ready stayed 200 during shutdown"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(call(admin, Method::GET, "/live", &[]).await.0, 200);
    a.release();
    assert_eq!(held.await.unwrap(), 200);
    stopping.join().unwrap();
}

/// lb.toml: `clones` (name, address) round-robin, fast checks reading `x-clone-version`,
/// `[deploy] mode`, an admin listener.
fn deploy_config(clones: &[(&str, SocketAddr)], mode: &str) -> String {
    let mut s = "[listen]\nhttp = \"127.0.0.1:0\"\n".to_string();
    for (name, addr) in clones {
        s.push_str(&format!(
            "[[backend]]\naddress = \"{addr}\"\nname = \"{name}\"\n"
        ));
    }
    s.push_str(&format!(
        "[health]\ninterval = \"100ms\"\ntimeout = \"50ms\"\nversion_header = \"x-clone-version\"\n\
         [deploy]\nmode = \"{mode}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n"
    ));
    s
}

async fn pin_call(admin: SocketAddr, method: Method, body: &str) -> (StatusCode, Value) {
    let (status, body) = admin_call(admin, method, "/deploy/pin", body).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// `/status`'s `deploy` once `ready` holds for it; panics after 5 s.
async fn deploy_when(admin: SocketAddr, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, v) = get_json(admin, "/status").await;
        assert_eq!(status, 200, "{v}");
        if ready(&v["deploy"]) {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {}", v["deploy"]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The error line of a refusal: one line, non-empty.
fn error_line(v: &Value) -> &str {
    let line = v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error: {v}"));
    assert!(!line.is_empty() && !line.contains('\n'), "{v}");
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_is_refused_in_mixed_mode_and_on_a_bad_body_and_changes_nothing() {
    let a = versioned_clone("a", "v1").await;
    let lb = spawn_lb(&deploy_config(&[("a", a)], "mixed"));
    let admin = admin_of(&lb);
    deploy_when(admin, "v1 reported", |d| d["versions"]["v1"]["up"] == 1).await;

    let (status, v) = pin_call(admin, Method::POST, r#"{"version": "v1"}"#).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert!(error_line(&v).contains("mixed"), "{v}");
    let (status, v) = pin_call(admin, Method::DELETE, "").await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert!(error_line(&v).contains("mixed"), "{v}");

    let big = format!(r#"{{"version": "{}"}}"#, "v".repeat(8192));
    for body in [
        "v1",
        "",
        "{}",
        r#"{"version": 1}"#,
        r#"{"version": null}"#,
        r#"["v1"]"#,
        r#"{"version": "v1", "force": true}"#,
        big.as_str(),
    ] {
        let (status, v) = pin_call(admin, Method::POST, body).await;
        let shown = &body[..body.len().min(40)];
        assert_eq!(status, StatusCode::BAD_REQUEST, "{shown}: {v}");
        error_line(&v);
    }
    // Neither a pin nor a mode change happened.
    let (_, v) = get_json(admin, "/status").await;
    assert_eq!(v["deploy"]["mode"], "mixed", "{v}");
    assert_eq!(v["deploy"]["pinned"], Value::Null, "{v}");
    let (status, v) = call(admin, Method::GET, "/deploy/pin", &[]).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{v}");
    assert_eq!(call(admin, Method::PUT, "/deploy/pin", &[]).await.0, 405);
    // The cross-site guard covers both methods.
    let evil = [("origin", "http://evil.example")];
    for method in [Method::POST, Method::DELETE] {
        assert_eq!(call(admin, method, "/deploy/pin", &evil).await.0, 403);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_and_unpin_in_atomic_mode_answer_the_deploy_object_and_route_by_it() {
    let (a, b, c) = (
        versioned_clone("a", "v1").await,
        versioned_clone("b", "v1").await,
        versioned_clone("c", "v2").await,
    );
    let lb = spawn_lb(&deploy_config(&[("a", a), ("b", b), ("c", c)], "atomic"));
    let (addr, admin) = (lb.http_addr(), admin_of(&lb));
    // cutover_at "50%" of 3 is 2: v1 (2 clones) is elected, v2 (1 clone) stays standby.
    let v = deploy_when(admin, "v1 active beside v2", |d| {
        d["active"] == "v1" && d["versions"]["v2"]["up"] == 1 && d["skew"] == 2
    })
    .await;
    let state_of = |v: &Value, name: &str| {
        let b = backend(v, name);
        (b["state"].clone(), b["version"].clone())
    };
    assert_eq!(state_of(&v, "c"), ("standby".into(), "v2".into()), "{v}");
    assert_eq!(state_of(&v, "a"), ("up".into(), "v1".into()), "{v}");

    // A version no clone reports: 409, nothing changed.
    let (status, body) = pin_call(admin, Method::POST, r#"{"version": "v9"}"#).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(error_line(&body).contains("\"v9\""), "{body}");
    // A bad body in atomic mode: 400, nothing changed.
    let (status, body) = pin_call(admin, Method::POST, r#"{"version": ["v2"]}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (_, v) = get_json(admin, "/status").await;
    assert_eq!(
        (&v["deploy"]["active"], &v["deploy"]["pinned"]),
        (&Value::from("v1"), &Value::Null),
        "{v}"
    );

    // Pin v2: 200 with the deploy object, and only c gets requests.
    let (status, d) = pin_call(admin, Method::POST, r#"{"version": "v2"}"#).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(
        (&d["pinned"], &d["active"]),
        (&"v2".into(), &"v2".into()),
        "{d}"
    );
    assert_eq!(d["mode"], "atomic", "{d}");
    assert_eq!(d["versions"]["v1"]["up"], 2, "{d}");
    let mut client = Client::connect(addr).await;
    for _ in 0..6 {
        let answer = client.get("/").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.headers["x-clone-version"], "v2", "{}", answer.text());
    }
    let (_, v) = get_json(admin, "/status").await;
    assert_eq!(v["deploy"]["pinned"], "v2", "{v}");
    assert_eq!(state_of(&v, "a").0, "standby", "{v}");

    // Unpin: 200, pinned null.
    let (status, d) = pin_call(admin, Method::DELETE, "").await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(d["pinned"], Value::Null, "{d}");
    assert_eq!(d["mode"], "atomic", "{d}");
    let (_, v) = get_json(admin, "/status").await;
    assert_eq!(v["deploy"]["pinned"], Value::Null, "{v}");

    // The metrics: one info sample per clone with its version, and the skew.
    let (status, text) = call(admin, Method::GET, "/metrics", &[]).await;
    assert_eq!(status, 200);
    let all = samples(&text);
    for (name, version) in [("a", "v1"), ("b", "v1"), ("c", "v2")] {
        let labels = vec![
            ("backend".to_string(), name.to_string()),
            ("version".to_string(), version.to_string()),
        ];
        assert_eq!(
            all.get(&("clonelb_backend_info".to_string(), labels)),
            Some(&1.0),
            "{name} {version}:\n{text}"
        );
    }
    assert_eq!(
        all.get(&("clonelb_version_skew".to_string(), vec![])),
        Some(&2.0),
        "{text}"
    );
    promtool_check(&text);
}

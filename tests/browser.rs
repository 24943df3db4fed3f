//! The status page (`GET /` on the admin listener) in a real browser: headless Chromium
//! driven through chromedriver (WebDriver), against an in-process balancer and test clones.
//! Only with `cargo test --features browser`; needs `chromium` and `chromium-driver`
//! (Debian's packages; `CHROMEDRIVER` and `CHROMIUM` override the binaries' paths).
#![cfg(feature = "browser")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use http::Request;
use http_body_util::Full;
use serde_json::{json, Value};

/// How long anything the page shows may take to show (it refreshes every 2 s).
const PAGE_WAIT: Duration = Duration::from_secs(15);

/// chromedriver as a child process on a free loopback port; killed when dropped.
struct Driver {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Ask it to quit first, which closes the browser of a session still open (a test
        // that failed before closing its own); then make sure it is gone.
        use std::io::{Read, Write};
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&self.addr, Duration::from_secs(1))
        {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let _ = write!(
                s,
                "GET /shutdown HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
                self.addr
            );
            let _ = s.read_to_end(&mut Vec::new());
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

async fn start_driver() -> Driver {
    let addr = refused_addr();
    let path = binary("CHROMEDRIVER", "/usr/bin/chromedriver");
    let child = Command::new(&path)
        .arg(format!("--port={}", addr.port()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{path}: {e} (apt-get install chromium-driver)"));
    let mut driver = Driver { child, addr };
    // Ready when its /status says so (chromedriver wants a loopback Host header).
    let ready = wait_for(
        "chromedriver to be ready",
        Duration::from_secs(20),
        || async {
            tokio::net::TcpStream::connect(addr).await.ok()?;
            let answer = Client::connect(addr)
                .await
                .send(
                    Request::get("/status")
                        .header("host", addr.to_string())
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await;
            let v: Value = serde_json::from_slice(&answer.body).ok()?;
            v["value"]["ready"].as_bool()?.then_some(())
        },
    );
    tokio::select! {
        () = ready => {}
        status = async { loop {
            if let Some(s) = driver.child.try_wait().unwrap() { break s; }
            tokio::time::sleep(Duration::from_millis(50)).await;
        } } => panic!("chromedriver exited: {status}"),
    }
    driver
}

/// A headless Chromium session through `driver`.
async fn browser(driver: &Driver) -> Browser {
    // rustls is built with both ring (clonelb) and aws-lc-rs (hyper-rustls' default), so
    // a process default must be chosen before the connector builds its config.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": binary("CHROMIUM", "/usr/bin/chromium"),
            "args": ["--headless", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1400,900"],
        }),
    );
    let mut builder = ClientBuilder::rustls().unwrap();
    builder.capabilities(caps);
    builder
        .connect(&format!("http://{}", driver.addr))
        .await
        .unwrap()
}

/// Poll `probe` every 100 ms until it gives a value; panic naming `what` after `limit`.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One clone's row as the page shows it.
#[derive(Debug, serde::Deserialize)]
struct Row {
    name: String,
    state: String,
    state_class: String,
    /// The version column's text.
    version: String,
    /// The rps polyline's `points` attribute.
    points: String,
    /// The history length the page rendered (the chart's `data-points`).
    rendered: usize,
}

impl Row {
    fn point_count(&self) -> usize {
        self.points.split_whitespace().count()
    }
}

/// Every `tr[data-clone]` of the page, read in one script run (one consistent snapshot).
async fn rows(browser: &Browser) -> Vec<Row> {
    let v = browser
        .execute(
            "return [...document.querySelectorAll('tr[data-clone]')].map((tr) => ({
               name: tr.dataset.clone,
               state: tr.querySelector('td.state').textContent,
               state_class: tr.querySelector('td.state').className,
               version: tr.querySelector('td.version').textContent,
               points: tr.querySelector('svg.chart polyline.rps').getAttribute('points'),
               rendered: Number(tr.querySelector('svg.chart').getAttribute('data-points')),
             }));",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

/// Wait until the page shows `want` (clone → state) for those clones.
async fn wait_states(browser: &Browser, want: &[(&str, &str)]) {
    wait_for(&format!("the page to show {want:?}"), PAGE_WAIT, || async {
        let rows = rows(browser).await;
        want.iter()
            .all(|(name, state)| {
                rows.iter().any(|r| {
                    r.name == *name
                        && r.state == *state
                        && r.state_class == format!("state state-{state}")
                })
            })
            .then_some(())
    })
    .await;
}

/// `/status` from a plain HTTP client, with the token when there is one.
async fn status(admin: SocketAddr, token: Option<&str>) -> Value {
    let mut req = Request::get("/status").header("host", admin.to_string());
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let answer = Client::connect(admin)
        .await
        .send(req.body(Full::new(Bytes::new())).unwrap())
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    serde_json::from_slice(&answer.body).unwrap()
}

fn state_in(status: &Value, name: &str) -> String {
    backend(status, name)["state"].as_str().unwrap().to_string()
}

/// Requests to the balancer until `stop`, at a rate and latency that vary, so the charts
/// have something to draw (bounded: at most 20,000 requests).
fn traffic(addr: SocketAddr, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = Client::connect(addr).await;
        for i in 0u64..20_000 {
            if stop.load(SeqCst) {
                break;
            }
            let answer = client.get(&format!("/slow?ms={}", (i * 7) % 13)).await;
            if answer
                .headers
                .get("connection")
                .is_some_and(|v| v == "close")
            {
                client = Client::connect(addr).await;
            }
            tokio::time::sleep(Duration::from_millis(10 + (i / 40 % 5) * 10)).await;
        }
    })
}

/// lb.toml: `clones` round-robin, fast health checks, an admin listener with `admin_extra`.
fn config(clones: &[&TestClone], admin_extra: &str) -> String {
    let weighted: Vec<(&TestClone, u32)> = clones.iter().map(|c| (*c, 1)).collect();
    format!(
        "{}[health]\ninterval = \"200ms\"\ntimeout = \"100ms\"\nunhealthy_threshold = 2\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}\n",
        config_text("round-robin", &weighted, "")
    )
}

fn screenshot_path() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("status-page.png")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_every_clone_follows_their_state_steers_them_and_notices_the_balancer_gone()
{
    let clones = [
        spawn_clone("web-1"),
        spawn_clone("web-2"),
        spawn_clone("web-3"),
    ];
    let all: Vec<&TestClone> = clones.iter().collect();
    let dir = fresh_dir("browser");
    let path = dir.join("lb.toml");
    std::fs::write(&path, config(&all, "")).unwrap();
    let lb = clonelb::Balancer::start_from_file_with_workers(&path, 2).unwrap();
    let admin = lb.admin_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let load = traffic(lb.http_addr(), Arc::clone(&stop));
    let driver = start_driver().await;
    let browser = browser(&driver).await;

    browser.goto(&format!("http://{admin}/")).await.unwrap();
    wait_states(
        &browser,
        &[("web-1", "up"), ("web-2", "up"), ("web-3", "up")],
    )
    .await;
    assert_eq!(rows(&browser).await.len(), 3);
    let header = browser.find(Locator::Id("strategy")).await.unwrap();
    assert_eq!(header.text().await.unwrap(), "round-robin");

    // A clone that dies turns down.
    clones[1].kill();
    wait_states(&browser, &[("web-2", "down")]).await;

    // Disable from the page: a real click, a POST the cross-site guard lets through.
    browser
        .find(Locator::Css("tr[data-clone=\"web-3\"] button.disable"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_states(&browser, &[("web-3", "disabled")]).await;
    assert_eq!(state_in(&status(admin, None).await, "web-3"), "disabled");
    let action_error = browser.find(Locator::Id("action-error")).await.unwrap();
    assert!(!action_error.is_displayed().await.unwrap());

    // Each chart has one rps point per second of history: as the page rendered it, and
    // within 2 of /status read right after (history grows by one a second; the page
    // refreshes every 2 s). Wait for 10 s of history (CLONELB_SCREENSHOT_HISTORY: more, for
    // a fuller picture in the docs), so the screenshot has a chart.
    let history_wanted: usize = std::env::var("CLONELB_SCREENSHOT_HISTORY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let chart_wait = PAGE_WAIT + Duration::from_secs(history_wanted as u64);
    wait_for("charts that match /status", chart_wait, || async {
        let page = rows(&browser).await;
        let now = status(admin, None).await;
        let agree = page.iter().all(|row| {
            let len = backend(&now, &row.name)["history"]
                .as_array()
                .unwrap()
                .len();
            row.point_count() == row.rendered && row.rendered.abs_diff(len) <= 2
        });
        (agree && page.len() == 3 && page.iter().all(|r| r.rendered >= history_wanted))
            .then_some(())
    })
    .await;
    for row in rows(&browser).await {
        assert_eq!(row.point_count(), row.rendered, "{row:?}");
    }
    wait_states(
        &browser,
        &[("web-1", "up"), ("web-2", "down"), ("web-3", "disabled")],
    )
    .await;
    // The body only: the table without the empty viewport below it.
    let body = browser.find(Locator::Css("body")).await.unwrap();
    let png = body.screenshot().await.unwrap();
    let shot = screenshot_path();
    std::fs::create_dir_all(shot.parent().unwrap()).unwrap();
    std::fs::write(&shot, png).unwrap();
    eprintln!("screenshot: {}", shot.display());

    // A POST that fails shows its error line (the page's own steer(), on a name no clone has).
    browser
        .execute(
            "steer('no such clone', 'disable', document.createElement('button'));",
            vec![],
        )
        .await
        .unwrap();
    wait_for("the action's error line", PAGE_WAIT, || async {
        action_error.is_displayed().await.unwrap().then_some(())
    })
    .await;
    let line = action_error.text().await.unwrap();
    assert!(
        line.contains("404") && line.contains("no such clone"),
        "{line}"
    );
    // Enable from the page brings it back, and clears the error line.
    browser
        .find(Locator::Css("tr[data-clone=\"web-3\"] button.enable"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_states(&browser, &[("web-3", "up")]).await;
    assert_eq!(state_in(&status(admin, None).await, "web-3"), "up");
    assert!(!action_error.is_displayed().await.unwrap());

    // A failed reload: the red banner with its lines, until a good one clears it.
    let banner = browser.find(Locator::Id("last-error")).await.unwrap();
    assert!(!banner.is_displayed().await.unwrap());
    std::fs::write(
        &path,
        "[listen]\nhttp = \"127.0.0.1:0\"\n[proxy]\nretries = \"x\"\n",
    )
    .unwrap();
    let _ = lb.reload();
    wait_for("the failed reload's banner", PAGE_WAIT, || async {
        (banner.is_displayed().await.unwrap()
            && banner.text().await.unwrap().contains("lb.toml:4:"))
        .then_some(())
    })
    .await;
    std::fs::write(&path, config(&all, "").replace("weight = 1", "weight = 2")).unwrap();
    let _ = lb.reload();
    let generation = browser.find(Locator::Id("generation")).await.unwrap();
    wait_for("the good reload", PAGE_WAIT, || async {
        (!banner.is_displayed().await.unwrap() && generation.text().await.unwrap() == "2")
            .then_some(())
    })
    .await;

    // The balancer gone: the page says so.
    stop.store(true, SeqCst);
    load.await.unwrap();
    let offline = browser.find(Locator::Id("offline")).await.unwrap();
    assert!(!offline.is_displayed().await.unwrap());
    tokio::task::spawn_blocking(move || lb.abort())
        .await
        .unwrap();
    wait_for("the offline banner", PAGE_WAIT, || async {
        offline.is_displayed().await.unwrap().then_some(())
    })
    .await;
    assert!(offline
        .text()
        .await
        .unwrap()
        .contains("balancer is not answering"));
    browser.close().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_the_page_asks_for_it_keeps_it_in_the_session_and_steers_with_it() {
    let clones = [spawn_clone("a"), spawn_clone("b")];
    let lb = spawn_lb(&config(
        &clones.iter().collect::<Vec<_>>(),
        "token = \"s3cret-token\"",
    ));
    let admin = lb.admin_addr().unwrap();
    let driver = start_driver().await;
    let browser = browser(&driver).await;
    browser.goto(&format!("http://{admin}/")).await.unwrap();

    let input = wait_for("the token input", PAGE_WAIT, || async {
        let input = browser.find(Locator::Id("token")).await.ok()?;
        input.is_displayed().await.unwrap().then_some(input)
    })
    .await;
    assert!(rows(&browser).await.is_empty(), "rows before the token");
    // A wrong token: asked again.
    input.send_keys("wrong").await.unwrap();
    let save = browser.find(Locator::Id("token-save")).await.unwrap();
    save.click().await.unwrap();
    let message = browser.find(Locator::Id("login-msg")).await.unwrap();
    wait_for("the token to be asked again", PAGE_WAIT, || async {
        (input.is_displayed().await.unwrap() && message.text().await.unwrap().contains("refused"))
            .then_some(())
    })
    .await;
    input.send_keys("s3cret-token").await.unwrap();
    save.click().await.unwrap();
    wait_states(&browser, &[("a", "up"), ("b", "up")]).await;
    assert!(!input.is_displayed().await.unwrap());

    // Kept in sessionStorage only: not in the URL, not in a cookie.
    let stored = browser
        .execute(
            "return sessionStorage.getItem('clonelb-admin-token') + ' ' + document.cookie + ' ' + location.href;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(stored, json!(format!("s3cret-token  http://{admin}/")));
    assert!(browser.get_all_cookies().await.unwrap().is_empty());

    browser
        .find(Locator::Css("tr[data-clone=\"b\"] button.disable"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_states(&browser, &[("b", "disabled")]).await;
    assert_eq!(
        state_in(&status(admin, Some("s3cret-token")).await, "b"),
        "disabled"
    );
    browser.close().await.unwrap();
}

/// The text of element `id` when it is displayed, else `None`.
async fn shown_text(browser: &Browser, id: &str) -> Option<String> {
    let e = browser.find(Locator::Id(id)).await.unwrap();
    if e.is_displayed().await.unwrap() {
        Some(e.text().await.unwrap())
    } else {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_each_clone_version_the_skew_banner_and_the_deploy_header() {
    let clones = [
        ("web-1", versioned_clone("web-1", "v1").await),
        ("web-2", versioned_clone("web-2", "v1").await),
        ("web-3", versioned_clone("web-3", "v2").await),
    ];
    let mut toml = "[listen]\nhttp = \"127.0.0.1:0\"\n".to_string();
    for (name, addr) in &clones {
        toml.push_str(&format!(
            "[[backend]]\naddress = \"{addr}\"\nname = \"{name}\"\n"
        ));
    }
    // A fourth clone that never answers: no version, shown as a dash.
    toml.push_str(&format!(
        "[[backend]]\naddress = \"{}\"\nname = \"gone\"\n\
         [health]\ninterval = \"200ms\"\ntimeout = \"100ms\"\n\
         version_header = \"x-clone-version\"\n[deploy]\nmode = \"atomic\"\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
        refused_addr()
    ));
    let lb = spawn_lb(&toml);
    let admin = lb.admin_addr().unwrap();
    let driver = start_driver().await;
    let browser = browser(&driver).await;
    browser.goto(&format!("http://{admin}/")).await.unwrap();

    // cutover_at "50%" of 4 is 2: v1 (two clones) is active, web-3 (v2) is standby.
    wait_states(
        &browser,
        &[
            ("web-1", "up"),
            ("web-2", "up"),
            ("web-3", "standby"),
            ("gone", "down"),
        ],
    )
    .await;
    let versions: Vec<(String, String)> = rows(&browser)
        .await
        .into_iter()
        .map(|r| (r.name, r.version))
        .collect();
    let want = [
        ("web-1", "v1"),
        ("web-2", "v1"),
        ("web-3", "v2"),
        ("gone", "—"),
    ]
    .map(|(n, v)| (n.to_string(), v.to_string()));
    assert_eq!(versions, want);
    let header = browser
        .find(Locator::Css("th.version"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(header, "version");

    // Two versions up: the banner lists each with up / total.
    let skew = wait_for("the skew banner", PAGE_WAIT, || {
        shown_text(&browser, "skew")
    })
    .await;
    assert_eq!(skew, "2 versions up: v1 (2/2), v2 (1/1)");
    assert_eq!(shown_text(&browser, "fallback").await, None);
    // The header: the active version and the mode; no pin yet.
    wait_for("the deploy header", PAGE_WAIT, || async {
        let active = shown_text(&browser, "deploy-active").await;
        let mode = shown_text(&browser, "deploy-mode").await;
        let pinned = shown_text(&browser, "deploy-pinned").await;
        (active.as_deref() == Some("v1") && mode.as_deref() == Some("atomic") && pinned.is_none())
            .then_some(())
    })
    .await;

    // Pinned to v2: the header shows the pin, web-3 turns up and web-1 standby.
    let answer = Client::connect(admin)
        .await
        .send(
            Request::post("/deploy/pin")
                .header("host", admin.to_string())
                .body(Full::new(Bytes::from_static(br#"{"version": "v2"}"#)))
                .unwrap(),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    wait_states(&browser, &[("web-1", "standby"), ("web-3", "up")]).await;
    wait_for("the pin in the header", PAGE_WAIT, || async {
        let pinned = shown_text(&browser, "deploy-pinned").await;
        let active = shown_text(&browser, "deploy-active").await;
        (pinned.as_deref() == Some("v2") && active.as_deref() == Some("v2")).then_some(())
    })
    .await;
    // web-3 disabled: one version left up, so no skew banner; and the pinned version has no
    // clone left, so v1 serves as an outage fallback, in its own banner.
    let answer = Client::connect(admin)
        .await
        .send(
            Request::post("/backends/web-3/disable")
                .header("host", admin.to_string())
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let fallback = wait_for("the fallback banner", PAGE_WAIT, || async {
        let skew = shown_text(&browser, "skew").await;
        let fallback = shown_text(&browser, "fallback").await;
        skew.is_none().then_some(fallback).flatten()
    })
    .await;
    let prefix = "active v1 is a fallback from v2 since ";
    let since = fallback
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{fallback}"));
    assert!(
        since.len() == 8 && since.chars().filter(|c| *c == ':').count() == 2,
        "{fallback}"
    );
    browser.close().await.unwrap();
}

/// The audit's section: its counters and the recent mismatches (every demo clone names
/// itself in its body, so every replay differs), path without its query, what differed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_lists_the_audits_recent_mismatches() {
    let mut toml = "[listen]\nhttp = \"127.0.0.1:0\"\n".to_string();
    for name in ["web-1", "web-2", "web-3"] {
        let addr = versioned_clone(name, "v1").await;
        toml.push_str(&format!(
            "[[backend]]\naddress = \"{addr}\"\nname = \"{name}\"\n"
        ));
    }
    // Their `x-clone` header differs too (and is compared first): ignored here, so the
    // difference is the body.
    toml.push_str(
        "[audit]\nsample = 1.0\nignore_headers = [\"date\", \"x-request-id\", \"x-clone\"]\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n",
    );
    let lb = spawn_lb(&toml);
    let admin = lb.admin_addr().unwrap();
    for _ in 0..12 {
        assert_eq!(get(lb.http_addr(), "/p?secret=1").await.status, 200);
    }
    let driver = start_driver().await;
    let browser = browser(&driver).await;
    browser.goto(&format!("http://{admin}/")).await.unwrap();
    let summary = wait_for("the audit summary", PAGE_WAIT, || async {
        shown_text(&browser, "audit-summary")
            .await
            .filter(|t| t.contains(" mismatches") && !t.starts_with("0 compared"))
    })
    .await;
    let audit = status(admin, None).await["audit"].clone();
    assert!(audit["mismatches"].as_u64().unwrap() >= 1, "{audit}");
    assert!(summary.ends_with("skipped"), "{summary}");
    let cells: Vec<String> = {
        let mut out = Vec::new();
        for td in browser
            .find_all(Locator::Css("#mismatches tbody tr:first-child td"))
            .await
            .unwrap()
        {
            out.push(td.text().await.unwrap());
        }
        out
    };
    assert_eq!(cells.len(), 4, "{cells:?}");
    assert_eq!(cells[0], "/p", "the path, without its query");
    assert!(cells[1].starts_with("web-") && cells[2].starts_with("web-") && cells[1] != cells[2]);
    assert_eq!(cells[3], "body");
    assert!(!browser.source().await.unwrap().contains("secret"));
    drop(browser);
    drop(driver);
}

/// The cells of the DNS table's first row.
async fn dns_row(browser: &Browser) -> Vec<String> {
    let mut out = Vec::new();
    for td in browser
        .find_all(Locator::Css("#dns-names tbody tr:first-child td"))
        .await
        .unwrap()
    {
        out.push(td.text().await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_lists_the_dns_names_and_warns_while_a_lookup_fails() {
    let dns = common::dns::DnsServer::start();
    let (port, clones) = clones_on_ips("app", &["127.0.0.1", "127.0.0.2"]);
    dns.set_a("app.test", &["127.0.0.1", "127.0.0.2"], 1);
    let lb = spawn_lb(&format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [dns]\nresolver = \"{}\"\nrefresh = \"1s\"\n\
         [[backend]]\naddress = \"app.test:{port}\"\nname = \"app\"\n",
        dns.resolver()
    ));
    let admin = lb.admin_addr().unwrap();
    let driver = start_driver().await;
    let browser = browser(&driver).await;
    browser.goto(&format!("http://{admin}/")).await.unwrap();
    let names: Vec<String> = clones.iter().map(|c| c.name.clone()).collect();
    wait_states(&browser, &[(&names[0], "up"), (&names[1], "up")]).await;
    let row = wait_for("the DNS name's row", PAGE_WAIT, || async {
        Some(dns_row(&browser).await).filter(|c| c.len() == 5 && c[3] == "2")
    })
    .await;
    assert_eq!(row[0], "app.test");
    assert_eq!(row[1], "address");
    assert!(row[2].starts_with("ok at "), "{row:?}");
    assert!(row[4].contains(" ago"), "{row:?}");
    assert_eq!(shown_text(&browser, "dns-failing").await, None);

    // NXDOMAIN: the clones stay, the page says the lookup fails and what is kept.
    dns.set_mode("app.test", common::dns::Mode::NxDomain);
    let banner = wait_for("the DNS banner", PAGE_WAIT, || async {
        shown_text(&browser, "dns-failing").await
    })
    .await;
    assert!(
        banner.contains("app.test (nxdomain), keeping 2 clones"),
        "{banner}"
    );
    let row = dns_row(&browser).await;
    assert!(row[2].starts_with("nxdomain: NXDOMAIN"), "{row:?}");
    wait_states(&browser, &[(&names[0], "up"), (&names[1], "up")]).await;
    drop(browser);
    drop(driver);
}

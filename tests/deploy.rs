//! Deploy awareness (issue 15) on real sockets with real clones: each clone reports its code
//! version in its health check (`x-clone-version`) and in every body (`version=<v>`), and
//! in `[deploy] mode = "atomic"` only the active version's clones get new requests.
//!
//! Deploys here are what ops do: disable a clone (the admin API), wait until it has nothing
//! in flight, swap its code ([`TestClone::set_version`]), enable it. Health checks run
//! every 100 ms with `healthy_threshold = 1`; everything that waits polls a condition with
//! a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clonelb::config::{CutoverAt, DeployMode};
use clonelb::control::{CloneState, PinError};
use clonelb::Balancer;
use common::*;
use http::{Method, StatusCode};
use serde_json::Value;

/// Checks every 100 ms; one pass brings a clone up; five failures take it down (a slow
/// check on a busy 2-core machine must not take a clone out in the middle of a test).
const HEALTH: &str = "[health]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"50ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 5\nversion_header = \"x-clone-version\"\n";

/// Long enough for the deploy task to look at the clones several times (it is rung on
/// every change and ticks every 50 ms): a cutover that was going to happen has happened.
const SETTLE: Duration = Duration::from_millis(300);

const LIMIT: Duration = Duration::from_secs(10);

/// Clones `names`, each running `version` (`None`: they send no version header).
fn clones(names: &[&str], version: Option<&str>) -> Vec<TestClone> {
    names
        .iter()
        .map(|n| {
            let c = spawn_clone(n);
            if let Some(v) = version {
                c.set_version(v);
            }
            c
        })
        .collect()
}

/// A balancer (round-robin, an admin listener) over `clones` with `[deploy]` set to
/// `deploy`.
fn start(clones: &[TestClone], deploy: &str) -> Balancer {
    let weighted: Vec<(&TestClone, u32)> = clones.iter().map(|c| (c, 1)).collect();
    let toml = format!(
        "{}{HEALTH}[deploy]\n{deploy}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        config_text("round-robin", &weighted, "")
    );
    spawn_lb(&toml)
}

fn active(lb: &Balancer) -> Option<String> {
    lb.status().deploy.active.map(|v| v.to_string())
}

/// Up clones of `version`, as `/status` counts them.
fn up(lb: &Balancer, version: &str) -> usize {
    lb.status().deploy.versions.get(version).map_or(0, |c| c.up)
}

/// `(state, version)` of the clone named `name` in `/status`.
fn clone_status(lb: &Balancer, name: &str) -> (CloneState, Option<String>) {
    let s = lb.status();
    let b = s.backends.iter().find(|b| &*b.name == name).unwrap();
    (b.state, b.version.as_ref().map(|v| v.to_string()))
}

/// Wait until the balancer runs atomic mode with `version` active over all `n` clones.
async fn until_active(lb: &Balancer, version: &str, n: usize) {
    let ok = eventually(LIMIT, || {
        active(lb).as_deref() == Some(version) && up(lb, version) == n
    })
    .await;
    assert!(
        ok,
        "{version} never active over {n} clones: {:?}",
        lb.status().deploy
    );
}

/// One admin request: status and body.
async fn admin(lb: &Balancer, method: Method, path: &str) -> (StatusCode, String) {
    admin_call(lb.admin_addr().unwrap(), method, path, "").await
}

async fn set_enabled(lb: &Balancer, clone: &TestClone, enabled: bool) {
    let action = if enabled { "enable" } else { "disable" };
    let (status, body) = admin(
        lb,
        Method::POST,
        &format!("/backends/{}/{action}", clone.name),
    )
    .await;
    assert_eq!(status, 200, "{action} {}: {body}", clone.name);
}

/// Redeploy `clone` with `version` as ops would: disable it, wait until nothing is in
/// flight on it, swap its code, enable it. Returns once it is enabled (its version is
/// then checked at once; callers wait for what they need).
///
/// Why disable first: a clone's version is known as of its last check. Swapped while
/// enabled, a request in flight (or routed before the next check) would be answered by
/// the new code while the balancer still counts the clone as the old version, so a user
/// could see v2 while v1 is active, then v1 again. Disabled, it gets no request; enabling
/// clears its version, so it gets none until a check has reported the new one.
async fn redeploy(lb: &Balancer, clone: &TestClone, version: &str) {
    set_enabled(lb, clone, false).await;
    let drained = eventually(LIMIT, || {
        let s = lb.status();
        let b = s.backends.iter().find(|b| *b.name == clone.name).unwrap();
        b.state == CloneState::Disabled && b.in_flight == 0
    })
    .await;
    assert!(drained, "{} never drained", clone.name);
    clone.set_version(version);
    // The new code is serving: one check answered after the swap. (A real deploy waits
    // for the new process anyway; here it also means no check answered by the old code
    // is still on its way to the balancer when the clone is enabled.)
    let swapped_at = clone.checks();
    assert!(
        eventually(LIMIT, || clone.checks() > swapped_at).await,
        "{} not checked after the swap",
        clone.name
    );
    set_enabled(lb, clone, true).await;
}

/// Send requests on one connection for at least `min` requests and `SETTLE`: every one
/// must be answered 200 by a clone of `version`.
async fn all_answered_by(client: &mut Client, version: &str, min: usize) -> Vec<String> {
    let until = Instant::now() + SETTLE;
    let mut names = Vec::new();
    while names.len() < min || Instant::now() < until {
        let a = client.get("/").await;
        assert_eq!(a.status, 200, "{}", a.text());
        assert_eq!(
            a.version().as_deref(),
            Some(version),
            "answer {} was {:?}",
            names.len(),
            a.text()
        );
        names.push(a.clone_name());
        assert!(names.len() < 10_000, "runaway loop");
    }
    names
}

/// One answer as a client saw it.
#[derive(Debug, Clone)]
struct Seen {
    status: StatusCode,
    version: Option<String>,
    clone: String,
    /// When the request was sent.
    sent: Instant,
}

/// A client task sending GETs one after another on one kept-alive connection until `stop`
/// is set (then `tail` more), at most `max`.
fn load(
    addr: SocketAddr,
    stop: &Arc<AtomicBool>,
    sent: &Arc<AtomicU64>,
    tail: usize,
    max: usize,
) -> tokio::task::JoinHandle<Vec<Seen>> {
    let stop = Arc::clone(stop);
    let sent = Arc::clone(sent);
    tokio::spawn(async move {
        let mut client = Client::connect(addr).await;
        let mut seen = Vec::new();
        let mut after_stop = 0;
        while seen.len() < max && after_stop < tail {
            if stop.load(SeqCst) {
                after_stop += 1;
            }
            let t = Instant::now();
            let a = client.get("/").await;
            seen.push(Seen {
                status: a.status,
                version: a.version(),
                clone: a.clone_name(),
                sent: t,
            });
            sent.fetch_add(1, SeqCst);
        }
        seen
    })
}

async fn progress(sent: &AtomicU64, more: u64) {
    let from = sent.load(SeqCst);
    assert!(
        eventually(LIMIT, || sent.load(SeqCst) >= from + more).await,
        "the clients stalled"
    );
}

/// Rolling deploy v1 → v2 of 4 clones, one at a time, under steady load from 4 clients,
/// `cutover_at` default ("50%": 2 of 4): no client ever sees v1 after v2, nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_deploy_under_load_is_monotonic_per_client_and_loses_nothing() {
    let cs = clones(&["a", "b", "c", "d"], Some("v1"));
    let lb = start(&cs, "mode = \"atomic\"");
    until_active(&lb, "v1", 4).await;
    assert_eq!(lb.status().deploy.cutover_at, CutoverAt::Share(50));

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| load(lb.http_addr(), &stop, &sent, 50, 100_000))
        .collect();
    progress(&sent, 200).await;
    for c in &cs {
        redeploy(&lb, c, "v2").await;
        let name = c.name.clone();
        assert!(
            eventually(LIMIT, || clone_status(&lb, &name).1.as_deref()
                == Some("v2"))
            .await,
            "{name} never reported v2"
        );
        progress(&sent, 200).await;
    }
    until_active(&lb, "v2", 4).await;
    stop.store(true, SeqCst);

    let mut total = 0;
    for (i, client) in clients.into_iter().enumerate() {
        let seen = client.await.unwrap();
        total += seen.len();
        assert!(
            seen.len() < 100_000,
            "client {i} hit its bound before the end"
        );
        let failed: Vec<&Seen> = seen.iter().filter(|s| s.status != 200).collect();
        assert!(failed.is_empty(), "client {i}: failed requests {failed:?}");
        let versions: Vec<&str> = seen
            .iter()
            .map(|s| s.version.as_deref().expect("an answer without a version"))
            .collect();
        assert_eq!(
            versions.first(),
            Some(&"v1"),
            "client {i} started before the deploy"
        );
        assert_eq!(versions.last(), Some(&"v2"), "client {i} ended after it");
        let first_v2 = versions.iter().position(|&v| v == "v2").unwrap();
        if let Some(back) = versions[first_v2..].iter().position(|&v| v != "v2") {
            let at = first_v2 + back;
            panic!(
                "client {i}: answer {at} was {} from {} after v2 from answer {first_v2} on",
                versions[at], seen[at].clone
            );
        }
    }
    assert!(total > 1000, "only {total} requests under the deploy");
    let d = lb.status().deploy;
    assert_eq!(d.skew, 1);
    assert_eq!(d.fallbacks_total, 0, "{d:?}");
    assert!(!d.versions.contains_key("v1"), "{d:?}");
}

/// Deploy v2 onto clones one at a time with no load: before the `k`-th clone reports v2
/// every answer is v1 and v1 stays active; once it does, v2 is active and every answer
/// is v2, and the clones still on v1 are standby.
async fn cutover_exactly_at(cutover_at: &str, expect: CutoverAt, k: usize) {
    let cs = clones(&["a", "b", "c", "d"], Some("v1"));
    let lb = start(
        &cs,
        &format!("mode = \"atomic\"\ncutover_at = {cutover_at}"),
    );
    until_active(&lb, "v1", 4).await;
    assert_eq!(lb.status().deploy.cutover_at, expect);
    let mut client = Client::connect(lb.http_addr()).await;
    all_answered_by(&mut client, "v1", 8).await;

    for (i, c) in cs.iter().take(k).enumerate() {
        redeploy(&lb, c, "v2").await;
        let n = i + 1;
        assert!(
            eventually(LIMIT, || up(&lb, "v2") == n).await,
            "v2 up never reached {n}: {:?}",
            lb.status().deploy
        );
        if n < k {
            // Below the threshold nothing changes, however long we look.
            let names = all_answered_by(&mut client, "v1", 20).await;
            assert!(names
                .iter()
                .all(|name| cs[n..].iter().any(|c| &c.name == name)));
            let d = lb.status().deploy;
            assert_eq!(d.active.as_deref(), Some("v1"), "{n} of {k}: {d:?}");
            assert_eq!(d.versions["v2"].up, n);
            for done in &cs[..n] {
                assert_eq!(
                    clone_status(&lb, &done.name),
                    (CloneState::Standby, Some("v2".to_string())),
                    "{} runs v2 before the cutover",
                    done.name
                );
            }
        }
    }
    // The k-th clone reported v2: the cutover is made (the deploy task was rung by the
    // check that reported it).
    assert!(
        eventually(Duration::from_secs(2), || active(&lb).as_deref()
            == Some("v2"))
        .await,
        "no cutover at {k} of 4 v2 clones: {:?}",
        lb.status().deploy
    );
    let names = all_answered_by(&mut client, "v2", 4 * k).await;
    let served = tally(names);
    for c in &cs[..k] {
        assert!(
            served.contains_key(&c.name),
            "{} got nothing: {served:?}",
            c.name
        );
    }
    for c in &cs[k..] {
        assert_eq!(
            clone_status(&lb, &c.name),
            (CloneState::Standby, Some("v1".to_string())),
            "{} still runs v1 after the cutover",
            c.name
        );
    }
    let d = lb.status().deploy;
    assert_eq!(d.versions["v1"].up, 4 - k);
    assert_eq!(d.fallback, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_at_a_count_happens_at_exactly_that_many_clones() {
    cutover_exactly_at("2", CutoverAt::Count(2), 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cutover_at_a_share_happens_at_that_share_rounded_up() {
    // 75% of 4 is 3: at 2 of 4 (a tie with v1) nothing changes.
    cutover_exactly_at("\"75%\"", CutoverAt::Share(75), 3).await;
}

/// After a cutover to v2, every v2 clone dies: requests fall back to v1 rather than being
/// answered 503, and `/status` and `/metrics` say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_new_clones_killed_after_cutover_falls_back_to_the_old_version_without_503() {
    let cs = clones(&["a", "b", "c", "d"], Some("v1"));
    let lb = start(&cs, "mode = \"atomic\"\ncutover_at = 2");
    until_active(&lb, "v1", 4).await;
    redeploy(&lb, &cs[0], "v2").await;
    redeploy(&lb, &cs[1], "v2").await;
    assert!(
        eventually(LIMIT, || active(&lb).as_deref() == Some("v2")).await,
        "{:?}",
        lb.status().deploy
    );
    let mut client = Client::connect(lb.http_addr()).await;
    all_answered_by(&mut client, "v2", 4).await;
    drop(client);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let load = load(lb.http_addr(), &stop, &sent, 100, 50_000);
    progress(&sent, 50).await;
    cs[0].kill();
    cs[1].kill();
    let killed = Instant::now();
    assert!(
        eventually(LIMIT, || active(&lb).as_deref() == Some("v1")).await,
        "no fallback: {:?}",
        lb.status().deploy
    );
    progress(&sent, 50).await;
    stop.store(true, SeqCst);
    let seen = load.await.unwrap();

    let failed: Vec<&Seen> = seen.iter().filter(|s| s.status != 200).collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let after: Vec<&Seen> = seen.iter().filter(|s| s.sent > killed).collect();
    assert!(
        after.len() >= 100,
        "{} requests after the kill",
        after.len()
    );
    for s in after {
        assert_eq!(s.version.as_deref(), Some("v1"), "{s:?}");
        assert!(s.clone == "c" || s.clone == "d", "{s:?}");
    }

    let d = lb.status().deploy;
    assert_eq!(d.active.as_deref(), Some("v1"));
    let fallback = d.fallback.as_ref().expect("deploy.fallback set");
    assert_eq!(&*fallback.from, "v2");
    assert!(d.fallbacks_total >= 1, "{d:?}");

    // The same through the admin API.
    let (status, body) = admin(&lb, Method::GET, "/status").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["deploy"]["active"], "v1", "{body}");
    assert_eq!(v["deploy"]["fallback"]["from"], "v2", "{body}");
    assert!(v["deploy"]["fallback"]["since"].is_string(), "{body}");
    let (status, metrics) = admin(&lb, Method::GET, "/metrics").await;
    assert_eq!(status, 200);
    let total: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("clonelb_deploy_fallbacks_total "))
        .unwrap_or_else(|| panic!("no fallbacks metric in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(total >= 1, "{metrics}");
}

/// A pin holds v1 active while v2 passes the threshold; unpinning lets the cutover
/// happen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_holds_the_old_version_past_the_threshold_and_unpin_cuts_over() {
    let cs = clones(&["a", "b", "c", "d"], Some("v1"));
    let lb = start(&cs, "mode = \"atomic\"");
    until_active(&lb, "v1", 4).await;
    assert!(matches!(
        lb.pin(Some("v9")),
        Err(PinError::UnknownVersion(v)) if v == "v9"
    ));
    let d = lb.pin(Some("v1")).unwrap();
    assert_eq!(d.pinned.as_deref(), Some("v1"));
    assert_eq!(d.active.as_deref(), Some("v1"));

    let mut client = Client::connect(lb.http_addr()).await;
    for c in &cs[..3] {
        redeploy(&lb, c, "v2").await;
    }
    assert!(
        eventually(LIMIT, || up(&lb, "v2") == 3).await,
        "{:?}",
        lb.status().deploy
    );
    // 3 of 4 run v2, past "50%": the pin keeps every request on the one v1 clone.
    let names = all_answered_by(&mut client, "v1", 20).await;
    assert!(names.iter().all(|n| n == "d"), "{:?}", tally(names));
    let d = lb.status().deploy;
    assert_eq!(d.active.as_deref(), Some("v1"), "{d:?}");
    assert_eq!(d.pinned.as_deref(), Some("v1"));

    let d = lb.pin(None).unwrap();
    assert_eq!(d.pinned, None);
    assert!(
        eventually(Duration::from_secs(2), || active(&lb).as_deref()
            == Some("v2"))
        .await,
        "no cutover after the unpin: {:?}",
        lb.status().deploy
    );
    let names = all_answered_by(&mut client, "v2", 12).await;
    assert!(names.iter().all(|n| n != "d"), "{:?}", tally(names));
    assert_eq!(d.fallbacks_total, 0);
}

/// `mode = "mixed"` (with versions tracked): round-robin over every up clone whatever
/// its version, but the versions and the skew are reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_mode_routes_to_every_clone_and_reports_the_skew() {
    let mut cs = clones(&["a", "b"], Some("v1"));
    cs.extend(clones(&["c", "d"], Some("v2")));
    let lb = start(&cs, "mode = \"mixed\"");
    let reported = eventually(LIMIT, || {
        let d = lb.status().deploy;
        d.versions.get("v1").map(|c| (c.up, c.total)) == Some((2, 2))
            && d.versions.get("v2").map(|c| (c.up, c.total)) == Some((2, 2))
    })
    .await;
    assert!(reported, "{:?}", lb.status().deploy);
    let s = lb.status();
    assert_eq!(s.deploy.mode, DeployMode::Mixed);
    assert_eq!(s.deploy.active, None);
    assert_eq!(s.deploy.skew, 2);
    for b in &s.backends {
        assert_eq!(b.state, CloneState::Up, "{}", b.name);
        let expect = if &*b.name < "c" { "v1" } else { "v2" };
        assert_eq!(b.version.as_deref(), Some(expect), "{}", b.name);
    }

    let mut client = Client::connect(lb.http_addr()).await;
    let mut answers = Vec::new();
    for _ in 0..40 {
        let a = client.get("/").await;
        assert_eq!(a.status, 200);
        answers.push(format!("{} {}", a.clone_name(), a.version().unwrap()));
    }
    let t = tally(answers);
    for (name, v) in [("a", "v1"), ("b", "v1"), ("c", "v2"), ("d", "v2")] {
        assert_eq!(t.get(&format!("{name} {v}")), Some(&10), "{t:?}");
    }

    assert!(matches!(lb.pin(Some("v1")), Err(PinError::Mixed)));
    let (status, metrics) = admin(&lb, Method::GET, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.lines().any(|l| l == "clonelb_version_skew 2"),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("clonelb_backend_info{") && l.contains("version=\"v2\"")),
        "{metrics}"
    );
}

/// In atomic mode a clone of another version is standby, and one whose check sends no
/// version header is of unknown version: standby too, and never routed to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_and_unknown_version_clones_show_standby_and_get_nothing() {
    let mut cs = clones(&["a", "b"], Some("v1"));
    cs.extend(clones(&["c"], Some("v2")));
    cs.extend(clones(&["d"], None));
    let lb = start(&cs, "mode = \"atomic\"");
    // d never reports: the election waits one interval for it, then v1 (2 clones) wins.
    assert!(
        eventually(LIMIT, || active(&lb).as_deref() == Some("v1")).await,
        "{:?}",
        lb.status().deploy
    );
    assert!(cs[3].checks() >= 1, "d was checked");
    assert_eq!(clone_status(&lb, "a"), (CloneState::Up, Some("v1".into())));
    assert_eq!(clone_status(&lb, "b"), (CloneState::Up, Some("v1".into())));
    assert_eq!(
        clone_status(&lb, "c"),
        (CloneState::Standby, Some("v2".into()))
    );
    assert_eq!(clone_status(&lb, "d"), (CloneState::Standby, None));
    let d = lb.status().deploy;
    assert_eq!(d.versions.len(), 2, "unknown is not a version: {d:?}");
    assert_eq!((d.versions["v1"].up, d.versions["v1"].total), (2, 2));
    assert_eq!((d.versions["v2"].up, d.versions["v2"].total), (1, 1));
    assert_eq!(d.skew, 2);

    let mut client = Client::connect(lb.http_addr()).await;
    let names = all_answered_by(&mut client, "v1", 30).await;
    let t = tally(names);
    assert_eq!(t.len(), 2, "{t:?}");
    assert_eq!(cs[2].hits(), 0);
    assert_eq!(cs[3].hits(), 0);

    // In /status JSON too.
    let (_, body) = admin(&lb, Method::GET, "/status").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let d_entry = backend(&v, "d");
    assert_eq!(d_entry["state"], "standby", "{body}");
    assert!(d_entry["version"].is_null(), "{body}");
}

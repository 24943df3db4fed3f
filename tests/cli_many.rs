//! `clonelb status | disable | enable` with `--admin` given more than once, run as the real
//! binary against two real balancers (in this process, each with its own admin listener)
//! in front of the same clones.
//!
//! Contract: each balancer is called on its own (one that fails does not stop the others);
//! every line about one starts with its address as given (`status`: a `== ADDR ==`
//! section each); exit 0 only when every balancer succeeded (`--wait`: drained), else 1
//! with a last line `clonelb: N of M balancers failed` on stderr.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use common::*;

const TOKEN: &str = "s3cret-token";

/// Two balancers in front of clones `a` and `b`, admin API with [`TOKEN`].
fn two_balancers(a: &TestClone, b: &TestClone) -> [clonelb::Balancer; 2] {
    let toml = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n",
        config_text("round-robin", &[(a, 1), (b, 1)], "")
    );
    [spawn_lb(&toml), spawn_lb(&toml)]
}

fn admin_of(lb: &clonelb::Balancer) -> String {
    lb.admin_addr().unwrap().to_string()
}

/// `clonelb ARGS --token TOKEN` (then one `--admin` per address) off the test's runtime:
/// exit code, stdout, stderr.
async fn cli(args: &[&str], admins: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_clonelb"));
    cmd.args(args)
        .args(["--token", TOKEN])
        .env_remove("CLONELB_ADMIN_TOKEN")
        .env_remove("NO_COLOR");
    for a in admins {
        cmd.args(["--admin", a]);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// The `state` of clone `name` in one balancer's `GET /status`.
async fn state_on(admin: &str, name: &str) -> String {
    let s = tokio::net::TcpStream::connect(admin).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/status")
        .header("host", admin)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let status: serde_json::Value = serde_json::from_slice(&body).unwrap();
    backend(&status, name)["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_and_enable_act_on_every_balancer_with_one_line_each() {
    let (a, b) = (spawn_clone("a"), spawn_clone("b"));
    let lbs = two_balancers(&a, &b);
    let (one, two) = (admin_of(&lbs[0]), admin_of(&lbs[1]));
    let admins = [one.as_str(), two.as_str()];

    let (code, out, err) = cli(&["disable", "a"], &admins).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(err, "");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(
        lines[0],
        format!("{one}: a ({}): disabled, 0 in flight", a.addr)
    );
    assert_eq!(
        lines[1],
        format!("{two}: a ({}): disabled, 0 in flight", a.addr)
    );
    for admin in admins {
        assert_eq!(state_on(admin, "a").await, "disabled", "on {admin}");
        assert_eq!(state_on(admin, "b").await, "up", "on {admin}");
    }

    let (code, out, err) = cli(&["enable", "a"], &admins).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    assert!(out.starts_with(&format!("{one}: a (")), "{out}");
    for admin in admins {
        assert_eq!(state_on(admin, "a").await, "up", "on {admin}");
    }

    // An unknown clone fails on both, each saying so, and the command fails.
    let (code, out, err) = cli(&["enable", "nobody"], &admins).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(out, "");
    assert_eq!(
        err,
        format!(
            "{one}: no clone named \"nobody\"\n{two}: no clone named \"nobody\"\n\
             clonelb: 2 of 2 balancers failed\n"
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_balancer_does_not_stop_the_others_but_fails_the_command() {
    let (a, b) = (spawn_clone("a"), spawn_clone("b"));
    let lbs = two_balancers(&a, &b);
    let (one, two) = (admin_of(&lbs[0]), admin_of(&lbs[1]));
    let gone = refused_addr().to_string();
    // The unreachable one first: the ones after it are still called.
    let (code, out, err) = cli(&["disable", "b"], &[&gone, &one, &two]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert_eq!(
        out,
        format!(
            "{one}: b ({0}): disabled, 0 in flight\n{two}: b ({0}): disabled, 0 in flight\n",
            b.addr
        )
    );
    assert_eq!(
        err,
        format!(
            "{gone}: cannot reach the admin API at {gone}: connection refused\n\
             clonelb: 1 of 3 balancers failed\n"
        )
    );
    for admin in [&one, &two] {
        assert_eq!(state_on(admin, "b").await, "disabled", "on {admin}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_wait_exits_once_every_balancer_has_drained() {
    let (a, b) = (spawn_clone("a"), spawn_clone("b"));
    let lbs = two_balancers(&a, &b);
    let (one, two) = (admin_of(&lbs[0]), admin_of(&lbs[1]));
    // A request in flight on the second balancer only, on whichever clone it picked.
    let addr: SocketAddr = lbs[1].http_addr();
    let done = Arc::new(AtomicBool::new(false));
    let request = {
        let done = done.clone();
        tokio::spawn(async move {
            let answer = get(addr, "/slow?ms=1500").await;
            done.store(true, SeqCst);
            answer
        })
    };
    assert!(eventually(Duration::from_secs(5), || a.hits() + b.hits() == 1).await);
    let busy = if a.hits() == 1 { "a" } else { "b" };

    let (code, out, err) = cli(
        &["disable", busy, "--wait", "--timeout", "20s"],
        &[&one, &two],
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        done.load(SeqCst),
        "exited before the request in flight on {two} ended: {out}"
    );
    let answer = request.await.unwrap();
    assert_eq!(answer.status, 200);
    assert_eq!(answer.clone_name(), busy);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].starts_with(&format!("{one}: {busy} (")), "{out}");
    assert!(
        lines[1].starts_with(&format!("{two}: {busy} (")) && lines[1].ends_with("1 in flight"),
        "{out}"
    );
    assert_eq!(lines[2], format!("{one}: {busy}: drained, 0 in flight"));
    assert_eq!(lines[3], format!("{two}: {busy}: drained, 0 in flight"));

    // Held past a short timeout on the second: the first drains, the command fails.
    let (code, _, err) = cli(&["enable", busy], &[&one, &two]).await;
    assert_eq!(code, Some(0), "{err}");
    let held = {
        let path = "/hold";
        tokio::spawn(async move { get(addr, path).await.clone_name() })
    };
    assert!(eventually(Duration::from_secs(5), || a.held() + b.held() == 1).await);
    let busy = if a.held() == 1 { "a" } else { "b" };
    let (code, out, err) = cli(
        &["disable", busy, "--wait", "--timeout", "300ms"],
        &[&one, &two],
    )
    .await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.contains(&format!("{one}: {busy}: drained, 0 in flight\n")),
        "{out}"
    );
    assert!(!out.contains(&format!("{two}: {busy}: drained")), "{out}");
    assert_eq!(
        err,
        format!(
            "{two}: clone \"{busy}\" not drained after 300ms: 1 in flight\n\
             clonelb: 1 of 2 balancers failed\n"
        )
    );
    a.release();
    b.release();
    assert_eq!(held.await.unwrap(), busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_each_balancer_under_its_own_header() {
    let (a, b) = (spawn_clone("a"), spawn_clone("b"));
    let lbs = two_balancers(&a, &b);
    let (one, two) = (admin_of(&lbs[0]), admin_of(&lbs[1]));
    let (code, _, err) = cli(&["disable", "b"], &[&two]).await;
    assert_eq!(code, Some(0), "{err}");

    let (code, out, err) = cli(&["status"], &[&one, &two]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(err, "");
    let (first, second) = out
        .split_once(&format!("\n== {two} ==\n"))
        .unwrap_or_else(|| panic!("no section for {two}: {out}"));
    let first = first
        .strip_prefix(&format!("== {one} ==\n"))
        .unwrap_or_else(|| panic!("no section for {one} first: {out}"));
    for (section, b_state) in [(first, "up"), (second, "disabled")] {
        assert!(section.starts_with("generation 1, loaded "), "{out}");
        let row = |name: &str| {
            section
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no row for {name}: {out}"))
                .to_string()
        };
        assert!(row("a").contains(" up "), "{out}");
        assert!(row("b").contains(&format!(" {b_state} ")), "{out}");
    }

    // An unreachable one: its header, its failure, exit 1; the other still shown.
    let gone = refused_addr().to_string();
    let (code, out, err) = cli(&["status"], &[&gone, &one]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        out.starts_with(&format!("== {gone} ==\n\n== {one} ==\ngeneration 1")),
        "{out}"
    );
    assert_eq!(
        err,
        format!(
            "{gone}: cannot reach the admin API at {gone}: connection refused\n\
             clonelb: 1 of 2 balancers failed\n"
        )
    );
}

//! `[admin] token_file`: the admin token read from a file (a Kubernetes Secret's key) at
//! every load, watched like the TLS files, read by `clonelb check` and by the admin
//! commands, and never shown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};

const BIN: &str = env!("CARGO_BIN_EXE_clonelb");

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// lb.toml for one clone, an admin listener on a free loopback port and `admin` (the rest
/// of its section), with `extra` appended.
fn config(clone: &TestClone, admin: &str, extra: &str) -> String {
    format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n{admin}\n{extra}",
        config_text("round-robin", &[(clone, 1)], "")
    )
}

/// `GET /status` with `token` as the bearer token (none: no header): status and body.
async fn status_with(admin: SocketAddr, token: Option<&str>) -> (StatusCode, String) {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("authorization", b.as_str()))
        .collect();
    admin_request(admin, Method::GET, "/status", &headers, "").await
}

async fn code(admin: SocketAddr, token: Option<&str>) -> StatusCode {
    status_with(admin, token).await.0
}

/// Poll `/status` with `token` until it answers 200, at most 5 s.
async fn accepted_within(admin: SocketAddr, token: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if code(admin, Some(token)).await == StatusCode::OK {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// `clonelb ARGS` off the test's runtime, with no token in the environment.
async fn clonelb(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&args)
            .env_remove("CLONELB_LOG")
            .env_remove("CLONELB_ADMIN_TOKEN")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_comes_from_the_file_and_a_wrong_one_gets_401() {
    let a = spawn_clone("a");
    let dir = TempDir(fresh_dir("token-file"));
    std::fs::write(dir.0.join("admin-token"), "s3cret-from-file\n").unwrap();
    let path = dir.0.join("lb.toml");
    // Relative to lb.toml's folder, like the other file keys.
    std::fs::write(&path, config(&a, "token_file = \"admin-token\"", "")).unwrap();
    let lb = clonelb::Balancer::start_from_file_with_workers(&path, 1).unwrap();
    let admin = lb.admin_addr().unwrap();

    let (status, body) = status_with(admin, Some("s3cret-from-file")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.contains("s3cret"),
        "the token shows in /status: {body}"
    );
    for wrong in [Some("S3CRET-FROM-FILE"), Some("s3cret"), Some(""), None] {
        assert_eq!(code(admin, wrong).await, 401, "{wrong:?}");
    }
    assert!(!format!("{:?}", lb.table().config()).contains("s3cret"));

    // The admin commands read the token from token_file when they read lb.toml's [admin]
    // (a copy naming the port the balancer took).
    let cli_config = dir.0.join("cli.toml");
    let admin_section = format!("[admin]\nlisten = \"{admin}\"\ntoken_file = \"admin-token\"\n");
    std::fs::write(&cli_config, admin_section).unwrap();
    let path = cli_config;
    let out = clonelb(vec![
        "status".into(),
        "--config".into(),
        path.display().to_string(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("generation 1"));
    // A given token still wins over the file.
    let out = clonelb(vec![
        "status".into(),
        "--config".into(),
        path.display().to_string(),
        "--token".into(),
        "wrong".into(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "clonelb: the admin API refused the token (401)\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rereads_the_file_and_a_missing_one_keeps_the_old_token() {
    let a = spawn_clone("a");
    let dir = TempDir(fresh_dir("token-reload"));
    let token = dir.0.join("admin-token");
    std::fs::write(&token, "first").unwrap();
    let path = dir.0.join("lb.toml");
    let text = config(
        &a,
        "token_file = \"admin-token\"",
        "[reload]\nwatch = false\n",
    );
    std::fs::write(&path, &text).unwrap();
    let lb = clonelb::Balancer::start_from_file_with_workers(&path, 1).unwrap();
    let admin = lb.admin_addr().unwrap();
    assert_eq!(code(admin, Some("first")).await, 200);

    // lb.toml unchanged, the file rewritten: the reload applies the new token at once.
    std::fs::write(&token, "second\n").unwrap();
    assert!(matches!(lb.reload(), clonelb::reload::Outcome::Reloaded(_)));
    assert_eq!(code(admin, Some("second")).await, 200);
    assert_eq!(code(admin, Some("first")).await, 401);

    // Gone: the reload fails at the key naming it, and the running token stays.
    std::fs::remove_file(&token).unwrap();
    let clonelb::reload::Outcome::Failed(lines) = lb.reload() else {
        panic!("a reload without the token file succeeded");
    };
    let line = text
        .lines()
        .position(|l| l.starts_with("token_file"))
        .unwrap()
        + 1;
    let want = format!(
        "{}:{line}:14: admin token file {}: cannot read: ",
        path.display(),
        token.display()
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with(&want), "{lines:?}");
    assert_eq!(code(admin, Some("second")).await, 200);
    assert_eq!(lb.status().generation, 2);

    // Empty: the same, with its reason.
    std::fs::write(&token, "\n").unwrap();
    let clonelb::reload::Outcome::Failed(lines) = lb.reload() else {
        panic!("a reload with an empty token file succeeded");
    };
    assert!(lines[0].ends_with(" is empty"), "{lines:?}");
    assert_eq!(code(admin, Some("second")).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_is_picked_up_by_the_watcher() {
    let a = spawn_clone("a");
    let dir = TempDir(fresh_dir("token-secret"));
    let secret = dir.0.join("secret");
    std::fs::create_dir(&secret).unwrap();
    let (old, new, newer) = (
        "..2026_12_01_10_00_00.1",
        "..2026_12_01_10_05_00.2",
        "..2026_12_01_10_10_00.3",
    );
    kubelet_volume(&secret, old, "admin-token", "v1-token\n");
    let path = dir.0.join("lb.toml");
    let file = format!("token_file = \"{}\"", secret.join("admin-token").display());
    std::fs::write(&path, config(&a, &file, "")).unwrap();
    let lb = clonelb::Balancer::start_from_file_with_workers(&path, 1).unwrap();
    let admin = lb.admin_addr().unwrap();
    assert_eq!(code(admin, Some("v1-token")).await, 200);

    kubelet_update(&secret, old, new, "admin-token", "v2-token\n");
    assert!(
        accepted_within(admin, "v2-token").await,
        "the rotated token was not applied"
    );
    assert_eq!(code(admin, Some("v1-token")).await, 401);
    // The watch followed the new link: the next rotation applies too.
    kubelet_update(&secret, new, newer, "admin-token", "v3-token\n");
    assert!(accepted_within(admin, "v3-token").await);
    assert_eq!(code(admin, Some("v2-token")).await, 401);
    assert!(lb.status().last_error.is_none());
}

#[test]
fn check_names_a_missing_or_empty_token_file_at_its_key() {
    let dir = TempDir(fresh_dir("token-check"));
    let path = dir.0.join("lb.toml");
    std::fs::write(
        &path,
        "[listen]\nhttp = \"127.0.0.1:8080\"\n[admin]\nlisten = \"127.0.0.1:9901\"\ntoken_file = \"secret/admin-token\"\n",
    )
    .unwrap();
    let missing = dir.0.join("secret/admin-token");
    let out = run_check(&path);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let want = format!(
        "{}:5:14: admin token file {}: cannot read: ",
        path.display(),
        missing.display()
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with(&want), "{err}");

    std::fs::create_dir(dir.0.join("secret")).unwrap();
    std::fs::write(&missing, "  \n").unwrap();
    let err = text(&run_check(&path).stderr);
    assert_eq!(
        err,
        format!(
            "{}:5:14: admin token file {} is empty\n",
            path.display(),
            missing.display()
        )
    );
    std::fs::write(&missing, "fine\n").unwrap();
    let out = run_check(&path);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn token_and_token_file_together_are_an_error() {
    let dir = TempDir(fresh_dir("token-both"));
    std::fs::write(dir.0.join("admin-token"), "x").unwrap();
    let path = dir.0.join("lb.toml");
    std::fs::write(
        &path,
        "[listen]\nhttp = \"127.0.0.1:8080\"\n[admin]\nlisten = \"127.0.0.1:9901\"\ntoken = \"inline\"\ntoken_file = \"admin-token\"\n",
    )
    .unwrap();
    let out = run_check(&path);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "{}:6:1: `token` and `token_file` are both set in [admin]: keep one\n",
            path.display()
        )
    );
}

#[test]
fn a_non_loopback_admin_with_a_token_file_passes_check_and_shows_no_token() {
    let dir = TempDir(fresh_dir("token-public"));
    std::fs::write(dir.0.join("admin-token"), "never-printed\n").unwrap();
    let path = dir.0.join("lb.toml");
    let head = "[listen]\nhttp = \"0.0.0.0:8080\"\n[admin]\nlisten = \"0.0.0.0:9901\"\n";
    std::fs::write(&path, format!("{head}token_file = \"admin-token\"\n")).unwrap();
    let out = run_check(&path);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(!all.contains("never-printed"), "{all}");
    // Without either key it is still refused, naming both.
    std::fs::write(&path, head).unwrap();
    let err = text(&run_check(&path).stderr);
    assert!(
        err.contains("is not on loopback: set `token` or `token_file` in [admin]"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_balancer_started_from_a_config_reads_the_file_too() {
    let a = spawn_clone("a");
    let dir = TempDir(fresh_dir("token-start"));
    let token = dir.0.join("admin-token");
    let text = config(&a, &format!("token_file = \"{}\"", token.display()), "");
    let parsed = clonelb::config::parse("lb.toml", &text).unwrap().config;
    let err = clonelb::Balancer::start_with_workers(&parsed, 1)
        .err()
        .expect("started without its token file");
    let err = err.to_string();
    let want = format!("[admin] token_file: {}: cannot read: ", token.display());
    assert!(err.starts_with(&want), "{err}");

    std::fs::write(&token, "t0k3n\n").unwrap();
    let lb = clonelb::Balancer::start_with_workers(&parsed, 1).unwrap();
    let admin = lb.admin_addr().unwrap();
    assert_eq!(code(admin, Some("t0k3n")).await, 200);
    assert_eq!(code(admin, None).await, 401);
}

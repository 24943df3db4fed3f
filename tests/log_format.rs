//! clonelb's own log lines as JSON or text: `--log-format` (before or after `run`) and
//! `[log] format`, the flag winning; a reload cannot change the format and says so.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// A JSON log line: an object with a level and `fields.message`.
fn json_line(line: &str) -> Option<Value> {
    let v: Value = serde_json::from_str(line).ok()?;
    let level = v["level"].as_str()?;
    assert!(
        ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
        "{line}"
    );
    v["fields"]["message"].as_str()?;
    Some(v)
}

fn message(v: &Value) -> &str {
    v["fields"]["message"].as_str().unwrap()
}

/// Make the balancer log at least these lines: a request, SIGUSR1 ("reopening the access
/// log"), SIGHUP ("reloaded"), then a graceful stop ("stopped"). Returns every stderr line.
async fn exercise(mut lb: BinLb) -> Vec<String> {
    let a = tokio::time::timeout(WAIT, get(lb.addr, "/")).await.unwrap();
    assert_eq!(a.status, 200);
    lb.signal("-USR1");
    assert!(lb.logged("SIGUSR1: reopening the access log", WAIT).await);
    lb.signal("-HUP");
    assert!(lb.logged("reloaded", WAIT).await, "{:#?}", lb.log_lines());
    assert!(lb.stop().success());
    lb.log_lines()
}

/// Every line is JSON, and the expected messages are there.
fn assert_all_json(lines: &[String], listen: std::net::SocketAddr) {
    assert!(lines.len() >= 5, "{lines:#?}");
    let parsed: Vec<Value> = lines
        .iter()
        .map(|l| json_line(l).unwrap_or_else(|| panic!("not a JSON log line: {l}")))
        .collect();
    let messages: Vec<&str> = parsed.iter().map(message).collect();
    for want in [
        "clonelb serving",
        "SIGUSR1: reopening the access log",
        "reloaded",
        "stopped",
    ] {
        assert!(messages.contains(&want), "no {want:?} in {messages:#?}");
    }
    let serving = parsed
        .iter()
        .find(|v| message(v) == "clonelb serving")
        .unwrap();
    assert_eq!(serving["level"], "INFO");
    assert_eq!(serving["fields"]["listen"], listen.to_string());
}

fn assert_all_text(lines: &[String]) {
    assert!(lines.len() >= 5, "{lines:#?}");
    for l in lines {
        assert!(json_line(l).is_none(), "a JSON line: {l}");
        assert!(!l.trim_start().starts_with('{'), "{l}");
    }
    assert!(
        lines.iter().any(|l| l.contains(" INFO ")
            && l.contains("clonelb serving")
            && l.contains("listen=")),
        "{lines:#?}"
    );
}

fn plain(clone: &TestClone) -> String {
    config_text("round-robin", &[(clone, 1)], "") + "[reload]\nwatch = false\n"
}

#[tokio::test]
async fn log_format_json_before_the_command_makes_every_line_json() {
    let c = spawn_clone("a");
    let lb = BinLb::start_with(&plain(&c), &["--log-format", "json"], &[]);
    let addr = lb.addr;
    assert_all_json(&exercise(lb).await, addr);
}

#[tokio::test]
async fn log_format_json_after_the_command_makes_every_line_json() {
    let c = spawn_clone("a");
    let lb = BinLb::start_with(&plain(&c), &[], &["--log-format", "json"]);
    let addr = lb.addr;
    assert_all_json(&exercise(lb).await, addr);
}

#[tokio::test]
async fn log_format_json_in_lb_toml_makes_every_line_json() {
    let c = spawn_clone("a");
    let lb = BinLb::start(&format!("{}[log]\nformat = \"json\"\n", plain(&c)));
    let addr = lb.addr;
    assert_all_json(&exercise(lb).await, addr);
}

#[tokio::test]
async fn log_format_text_overrides_a_json_lb_toml() {
    let c = spawn_clone("a");
    let toml = format!("{}[log]\nformat = \"json\"\n", plain(&c));
    let lb = BinLb::start_with(&toml, &["--log-format", "text"], &[]);
    assert_all_text(&exercise(lb).await);
    // And the default is text.
    let lb = BinLb::start(&plain(&c));
    assert_all_text(&exercise(lb).await);
}

const CANNOT_CHANGE: &str = "log.format cannot change without a restart";

#[tokio::test]
async fn a_reload_cannot_change_the_format_from_text_and_says_so() {
    let c = spawn_clone("a");
    let lb = BinLb::start(&plain(&c));
    std::fs::write(
        &lb.config,
        format!("{}[log]\nformat = \"json\"\n", plain(&c)),
    )
    .unwrap();
    lb.signal("-HUP");
    assert!(
        eventually(WAIT, || lb
            .log_lines()
            .iter()
            .any(|l| l.contains(CANNOT_CHANGE)))
        .await,
        "{:#?}",
        lb.log_lines()
    );
    let warning = lb
        .log_lines()
        .into_iter()
        .find(|l| l.contains(CANNOT_CHANGE))
        .unwrap();
    assert!(warning.contains(" WARN "), "{warning}");
    // Still text after the reload, which applied (the format aside).
    let lines = exercise(lb).await;
    assert_all_text(&lines);
    assert_eq!(
        lines.iter().filter(|l| l.contains(CANNOT_CHANGE)).count(),
        2,
        "one warning per reload (the second is exercise's SIGHUP): {lines:#?}"
    );
}

#[tokio::test]
async fn a_reload_by_the_watcher_cannot_change_the_format_from_json_and_says_so() {
    let c = spawn_clone("a");
    let toml = config_text("round-robin", &[(&c, 1)], "");
    let lb = BinLb::start(&format!("{toml}[log]\nformat = \"json\"\n"));
    let addr = lb.addr;
    // The file watcher (on by default) reloads the new text.
    std::fs::write(&lb.config, format!("{toml}[log]\nformat = \"text\"\n")).unwrap();
    assert!(
        eventually(WAIT, || lb
            .log_lines()
            .iter()
            .any(|l| l.contains(CANNOT_CHANGE)))
        .await,
        "{:#?}",
        lb.log_lines()
    );
    let lines = exercise(lb).await;
    assert_all_json(&lines, addr);
    let warnings: Vec<Value> = lines
        .iter()
        .filter_map(|l| json_line(l))
        .filter(|v| message(v).contains(CANNOT_CHANGE))
        .collect();
    assert!(!warnings.is_empty());
    for w in &warnings {
        assert_eq!(w["level"], "WARN", "{w}");
        assert_eq!(w["fields"]["running"], "json", "{w}");
        assert_eq!(w["fields"]["configured"], "text", "{w}");
    }
}

#[test]

fn a_failed_start_is_logged_as_json_too() {
    let dir = fresh_dir("json-fail");
    // The port is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = dir.join("busy.toml");
    std::fs::write(
        &busy,
        format!(
            "[listen]\nhttp = \"{}\"\n[[backend]]\naddress = \"127.0.0.1:9\"\n",
            taken.local_addr().unwrap()
        ),
    )
    .unwrap();
    // An invalid file that asks for JSON.
    let invalid = dir.join("invalid.toml");
    std::fs::write(
        &invalid,
        "[listen]\nhttp = \"127.0.0.1:0\"\nbogus = 1\n[log]\nformat = \"json\"\n",
    )
    .unwrap();
    for (config, flag) in [(&busy, true), (&invalid, false)] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_clonelb"));
        if flag {
            cmd.args(["--log-format", "json"]);
        }
        let out = cmd.arg("run").arg("--config").arg(config).output().unwrap();
        assert_eq!(out.status.code(), Some(1));
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!stderr.trim().is_empty());
        for line in stderr.lines() {
            let v = json_line(line).unwrap_or_else(|| panic!("not a JSON log line: {line}"));
            assert_eq!(v["level"], "ERROR", "{line}");
        }
    }
    drop(taken);
    let _ = std::fs::remove_dir_all(dir);
}

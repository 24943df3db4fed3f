//! A clone removed by a reload and cut at `drain_timeout` while a request still waits for
//! its response head: the request is retried elsewhere when it may be, else answered 503
//! "taken out of service"; the cut is never counted against the clone. The log lines of a
//! cut and of `shutdown_timeout` say how many they cut.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::Full;

const CUT_BODY: &str = "503 Service Unavailable: the upstream server was taken out of service\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_before_the_head_retries_a_get_and_answers_a_post_503() {
    let a = spawn_clone("a");
    let b = spawn_clone("b");
    let proxy = "drain_timeout = \"300ms\"";
    let dir = fresh_dir("cut");
    let path = dir.join("lb.toml");
    std::fs::write(&path, config_text("round-robin", &[(&a, 1)], proxy)).unwrap();
    let lb = clonelb::Balancer::start_from_file_with_workers(&path, 2).unwrap();
    let addr = lb.http_addr();
    let a_state = lb.table().find(a.addr).unwrap().state.clone();

    // Both wait on a for their response head: a GET (idempotent, no body) and a POST
    // with a body.
    let get = tokio::spawn(async move { Client::connect(addr).await.get("/hold").await });
    let post = tokio::spawn(async move {
        let req = http::Request::post("/hold")
            .header("host", "test.local")
            .body(Full::new(Bytes::from_static(b"order=1")))
            .unwrap();
        Client::connect(addr).await.send(req).await
    });
    assert!(eventually(Duration::from_secs(5), || a.held() == 2).await);

    // a is removed; b takes its place. At drain_timeout a's connections are cut.
    std::fs::write(&path, config_text("round-robin", &[(&b, 1)], proxy)).unwrap();
    assert_eq!(reload_now(&lb), 2);

    let post = tokio::time::timeout(Duration::from_secs(5), post)
        .await
        .expect("the POST was not answered after the cut")
        .unwrap();
    assert_eq!(post.status, 503);
    assert_eq!(post.error_line(), CUT_BODY);
    assert!(a_state.is_cut());

    // The GET went to b, which holds it too until released.
    assert!(eventually(Duration::from_secs(5), || b.held() == 1).await);
    b.release();
    let get = tokio::time::timeout(Duration::from_secs(5), get)
        .await
        .expect("the GET was not answered")
        .unwrap();
    assert_eq!(get.status, 200, "{}", get.text());
    assert_eq!(get.clone_name(), "b");

    // Not blamed on a: no failure, no ejection, no failure run.
    assert_eq!(a_state.failures_total(), 0);
    assert_eq!(a_state.ejections_total(), 0);
    assert!(!a_state.is_down());
    drop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reload now; returns the generation running after it (panics when the reload failed).
fn reload_now(lb: &clonelb::Balancer) -> u64 {
    match lb.reload() {
        clonelb::reload::Outcome::Reloaded(s) => s.generation,
        // The watcher applied the edit first.
        clonelb::reload::Outcome::Unchanged => lb.status().generation,
        other => panic!("{other:?}"),
    }
}

/// `key=value` of a structured log line.
fn log_field(line: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .map(str::to_string)
}

/// Send a GET on a new connection from a thread; returns what the connection read.
fn raw_get(addr: std::net::SocketAddr, path: &str) -> std::thread::JoinHandle<String> {
    let request = format!("GET {path} HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n");
    std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
    })
}

#[tokio::test]
async fn cut_and_shutdown_timeout_log_how_many_they_cut() {
    let a = spawn_clone("a");
    let b = spawn_clone("b");
    let proxy = "drain_timeout = \"300ms\"\nshutdown_timeout = \"300ms\"\nretries = 0";
    let mut lb = BinLb::start(&config_text("round-robin", &[(&a, 1)], proxy));
    let held = raw_get(lb.addr, "/hold");
    assert!(eventually(Duration::from_secs(5), || a.held() == 1).await);
    std::fs::write(&lb.config, config_text("round-robin", &[(&b, 1)], proxy)).unwrap();
    let answer = held.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains(CUT_BODY), "{answer}");
    let cut_line = |l: &String| l.contains("drain_timeout passed");
    assert!(
        eventually(Duration::from_secs(5), || lb
            .log
            .lock()
            .unwrap()
            .iter()
            .any(cut_line))
        .await
    );
    let line = lb.log.lock().unwrap().iter().find(|l| cut_line(l)).cloned();
    assert_eq!(log_field(&line.unwrap(), "cut").as_deref(), Some("1"));

    // One connection still waiting on b when shutdown_timeout passes.
    let held = raw_get(lb.addr, "/hold");
    assert!(eventually(Duration::from_secs(5), || b.held() == 1).await);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &lb.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = held.join().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while lb.child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "clonelb did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The reader thread may still be collecting the last lines.
    let shutdown_line = |l: &String| l.contains("shutdown_timeout passed");
    assert!(
        eventually(Duration::from_secs(5), || lb
            .log
            .lock()
            .unwrap()
            .iter()
            .any(shutdown_line))
        .await,
        "{:?}",
        lb.log.lock().unwrap()
    );
    let log = lb.log.lock().unwrap().clone();
    let lines: Vec<&String> = log.iter().filter(|l| shutdown_line(l)).collect();
    assert_eq!(lines.len(), 1, "{log:?}");
    assert_eq!(log_field(lines[0], "connections").as_deref(), Some("1"));
}

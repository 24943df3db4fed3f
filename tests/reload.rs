//! Hot reload, draining and graceful shutdown: edit lb.toml under load and lose nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clonelb::reload::Outcome;
use common::*;
use http_body_util::BodyExt;

/// A temporary directory holding an lb.toml.
struct ConfigDir {
    dir: PathBuf,
    path: PathBuf,
}

impl ConfigDir {
    fn new(text: &str) -> ConfigDir {
        let dir = fresh_dir("reload");
        let path = dir.join("lb.toml");
        std::fs::write(&path, text).unwrap();
        ConfigDir { dir, path }
    }

    /// Overwrite in place (truncate and write), as `echo > lb.toml` does.
    fn write(&self, text: &str) {
        std::fs::write(&self.path, text).unwrap();
    }

    /// Write a new file and rename it over lb.toml, as editors do.
    fn replace(&self, text: &str) {
        let tmp = self.dir.join(".lb.toml.swp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(dir: &ConfigDir) -> clonelb::Balancer {
    clonelb::Balancer::start_from_file_with_workers(dir.path(), 2).unwrap()
}

/// Steady load: `n` clients sending GETs over keep-alive connections until stopped.
/// Returns (requests answered, failures seen).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr, n: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let tasks = (0..n)
            .map(|_| {
                let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
                tokio::spawn(async move {
                    let mut failures = Vec::new();
                    let mut client = Client::connect(addr).await;
                    while !stop.load(SeqCst) {
                        let a = client.get("/").await;
                        if a.status == 200 {
                            ok.fetch_add(1, SeqCst);
                        } else {
                            failures.push(format!("{} {}", a.status, a.text()));
                        }
                    }
                    failures
                })
            })
            .collect();
        Load { stop, ok, tasks }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, SeqCst);
        let mut failures = Vec::new();
        for t in self.tasks {
            failures.extend(t.await.unwrap());
        }
        (self.ok.load(SeqCst), failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_edits_under_load_lose_nothing() {
    let a = spawn_clone("a");
    let b = spawn_clone("b");
    let c = spawn_clone("c");
    let two = config_text("round-robin", &[(&a, 1), (&b, 1)], "");
    let three = config_text("round-robin", &[(&a, 1), (&b, 1), (&c, 1)], "");
    let dir = ConfigDir::new(&two);
    let lb = start(&dir);
    let load = Load::start(lb.http_addr(), 4);

    let mut removed_at: Vec<(Instant, Instant)> = Vec::new(); // (write, next write)
    let mut last_removal: Option<Instant> = None;
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let adding = i % 2 == 0;
        let text = if adding { &three } else { &two };
        let t = Instant::now();
        if i % 4 < 2 {
            dir.write(text);
        } else {
            dir.replace(text);
        }
        if let Some(r) = last_removal.take() {
            removed_at.push((r, t));
        }
        if adding {
            let before = c.hits_after(t);
            assert!(
                eventually(Duration::from_secs(1), || c.hits_after(t) > before).await,
                "edit {i}: the added clone got no traffic within 1 s"
            );
        } else {
            last_removal = Some(t);
        }
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    if let Some(r) = last_removal {
        removed_at.push((r, Instant::now()));
    }
    let (ok, failures) = load.finish().await;
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(ok > 1000, "only {ok} requests answered");
    // The removed clone gets no request that started more than 1 s after the write.
    let times = c.stats.hit_times.lock().unwrap().clone();
    for (removed, next) in removed_at {
        let late = times
            .iter()
            .filter(|&&h| h > removed + Duration::from_secs(1) && h < next)
            .count();
        assert_eq!(
            late, 0,
            "the removed clone got {late} requests after its removal"
        );
    }
    assert!(
        lb.status().generation >= 11,
        "generation {}",
        lb.status().generation
    );
    assert!(lb.status().last_error.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_edit_keeps_old_config_and_fix_applies() {
    let a = spawn_clone("a");
    let b = spawn_clone("b");
    let c = spawn_clone("c");
    let two = config_text("round-robin", &[(&a, 1), (&b, 1)], "");
    let dir = ConfigDir::new(&two);
    let lb = start(&dir);
    let load = Load::start(lb.http_addr(), 2);

    let broken = two.replace("weight = 1", "wieght = 1");
    dir.write(&broken);
    assert!(eventually(Duration::from_secs(3), || lb.status().last_error.is_some()).await);
    let errors = lb.status().last_error.unwrap();
    assert!(
        errors[0].ends_with("unknown key `wieght` in [[backend]] (did you mean `weight`?)"),
        "{errors:?}"
    );
    assert!(errors[0].starts_with(&format!("{}:", dir.path().display())));
    assert_eq!(lb.status().generation, 1);
    assert_eq!(lb.table().backends().len(), 2);
    let before = a.hits() + b.hits();
    assert!(eventually(Duration::from_secs(2), || a.hits() + b.hits() > before + 50).await);

    let three = config_text("round-robin", &[(&a, 1), (&b, 1), (&c, 1)], "");
    dir.write(&three);
    assert!(eventually(Duration::from_secs(3), || c.hits() > 0).await);
    assert_eq!(lb.status().generation, 2);
    assert!(lb.status().last_error.is_none());
    let (_, failures) = load.finish().await;
    assert!(failures.is_empty(), "{failures:?}");
}

#[tokio::test]
async fn atomic_rename_and_explicit_reload() {
    let a = spawn_clone("a");
    let b = spawn_clone("b");
    let dir = ConfigDir::new(&config_text("round-robin", &[(&a, 1)], ""));
    let lb = start(&dir);
    dir.replace(&config_text("round-robin", &[(&a, 1), (&b, 1)], ""));
    assert!(eventually(Duration::from_secs(3), || lb.table().backends().len() == 2).await);
    assert_eq!(lb.status().generation, 2);
    // SIGHUP's path: reloads even an unchanged file.
    match lb.reload() {
        Outcome::Reloaded(s) => {
            assert_eq!((s.generation, s.added.len(), s.removed.len()), (3, 0, 0))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_clone_finishes_its_streaming_response() {
    let a = spawn_clone("a");
    let b = spawn_clone("b");
    // b first: the first request goes to it.
    let dir = ConfigDir::new(&config_text("round-robin", &[(&b, 1), (&a, 1)], ""));
    let lb = start(&dir);
    let addr = lb.http_addr();
    let stream = tokio::spawn(async move {
        let mut client = Client::connect(addr).await;
        client.get("/drip?chunks=30&ms=100").await
    });
    assert!(eventually(Duration::from_secs(2), || b.hits() == 1).await);
    let b_state = lb.table().find(b.addr).unwrap().state.clone();
    assert_eq!(b_state.in_flight(), 1);

    dir.write(&config_text("round-robin", &[(&a, 1)], ""));
    assert!(eventually(Duration::from_secs(2), || lb.status().generation == 2).await);
    assert_eq!(lb.status().draining().count(), 1);
    assert!(b_state.is_draining());
    let mut client = Client::connect(addr).await;
    for _ in 0..20 {
        assert_eq!(client.get("/").await.clone_name(), "a");
    }
    assert_eq!(b.hits(), 1, "the removed clone got new requests");

    let answer = stream.await.unwrap();
    assert_eq!(answer.status, 200);
    let mut want = Checksum::default();
    want.update(&{
        let mut body = PatternBody::dripping(30, Duration::ZERO);
        let mut all = Vec::new();
        while let Some(f) = body.frame().await {
            all.extend_from_slice(f.unwrap().data_ref().unwrap());
        }
        all
    });
    let mut got = Checksum::default();
    got.update(&answer.body);
    assert_eq!(
        got, want,
        "the streamed response arrived incomplete or altered"
    );
    // Idle now: dropped from the drain list.
    assert!(
        eventually(Duration::from_secs(2), || lb
            .status()
            .draining()
            .next()
            .is_none())
        .await
    );
    assert_eq!(b_state.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_cuts_what_is_still_in_flight() {
    let a = spawn_clone("a");
    let b = spawn_clone("b");
    let proxy = "drain_timeout = \"500ms\"";
    let dir = ConfigDir::new(&config_text("round-robin", &[(&b, 1), (&a, 1)], proxy));
    let lb = start(&dir);
    let addr = lb.http_addr();
    // A 10 s stream on b, which is removed at once.
    let stream = tokio::spawn(async move {
        let s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("/drip?chunks=100&ms=100")
            .header("host", "t")
            .body(empty())
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        resp.into_body().collect().await.map(|b| b.to_bytes().len())
    });
    assert!(eventually(Duration::from_secs(2), || b.hits() == 1).await);
    let removed_at = Instant::now();
    dir.write(&config_text("round-robin", &[(&a, 1)], proxy));
    let result = tokio::time::timeout(Duration::from_secs(5), stream)
        .await
        .expect("the stream was not cut")
        .unwrap();
    assert!(
        result.is_err(),
        "a cut transfer must end in an error, got {result:?}"
    );
    let took = removed_at.elapsed();
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(lb.status().draining().next().is_none());
}

#[tokio::test]
async fn kept_clones_keep_their_state() {
    let a = spawn_clone("a");
    let b = spawn_clone("b");
    let c = spawn_clone("c");
    a.set_health(500);
    let health = "[health]\ninterval = \"100ms\"\ntimeout = \"50ms\"\nunhealthy_threshold = 1\n";
    let mut text = config_text("round-robin", &[(&a, 1), (&b, 1)], "");
    text.push_str(health);
    let dir = ConfigDir::new(&text);
    let lb = start(&dir);
    let t1 = lb.table();
    let (sa, sb) = (
        t1.find(a.addr).unwrap().state.clone(),
        t1.find(b.addr).unwrap().state.clone(),
    );
    assert!(eventually(Duration::from_secs(3), || sa.is_down()).await);
    // One request held on b.
    let addr = lb.http_addr();
    let held = tokio::spawn(async move { get(addr, "/hold").await });
    assert!(eventually(Duration::from_secs(3), || b.held() == 1).await);
    assert_eq!(sb.in_flight(), 1);

    // An unrelated edit: b's weight, and a new clone c.
    let mut text = config_text("round-robin", &[(&a, 1), (&b, 3), (&c, 1)], "");
    text.push_str(health);
    dir.replace(&text);
    assert!(eventually(Duration::from_secs(3), || lb.status().generation == 2).await);
    let t2 = lb.table();
    assert!(Arc::ptr_eq(&t2.find(a.addr).unwrap().state, &sa));
    assert!(Arc::ptr_eq(&t2.find(b.addr).unwrap().state, &sb));
    assert!(
        sa.is_down(),
        "a down clone came back up after an unrelated edit"
    );
    assert_eq!(sb.in_flight(), 1);
    assert_eq!(t2.find(b.addr).unwrap().weight, 3);
    b.release();
    assert_eq!(held.await.unwrap().status, 200);
}

#[tokio::test]
async fn listen_address_change_needs_a_restart() {
    let a = spawn_clone("a");
    let dir = ConfigDir::new(&config_text("round-robin", &[(&a, 1)], ""));
    let lb = start(&dir);
    let running = lb.http_addr();
    let other = refused_addr();
    let text = config_text("round-robin", &[(&a, 1)], "")
        .replace("http = \"127.0.0.1:0\"", &format!("http = \"{other}\""));
    dir.write(&text);
    assert!(eventually(Duration::from_secs(3), || lb.status().generation == 2).await);
    // The rest of the file applied; the listener stayed where it was.
    assert_eq!(lb.table().config().listen.http.unwrap().port(), 0);
    assert_eq!(get(running, "/").await.status, 200);
    assert!(std::net::TcpStream::connect(other).is_err());
}

#[tokio::test]
async fn sigterm_lets_the_request_finish_refuses_new_connections_and_exits_zero() {
    let c = spawn_clone("c");
    let mut lb = BinLb::start(&config_text("round-robin", &[(&c, 1)], ""));
    let addr = lb.addr;
    let request = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /slow?ms=2000 HTTP/1.1\r\nhost: t\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    });
    assert!(eventually(Duration::from_secs(5), || c.hits() == 1).await);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &lb.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The listener closes at once: new connections are refused, not queued.
    let refused = eventually(Duration::from_secs(1), || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    assert!(refused, "new connections still accepted after SIGTERM");

    let answer = request.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(answer.ends_with("clone=c"), "{answer}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Some(s) = lb.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "clonelb did not exit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(code.success(), "exit status {code:?}");
}

#[tokio::test]
async fn sighup_reloads_the_binary() {
    let a = spawn_clone("a");
    let lb = BinLb::start(&config_text("round-robin", &[(&a, 1)], ""));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &lb.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The reload line's structured fields: generation, and what was added, removed and
    // changed (comma-separated names; empty here).
    let logged = eventually(Duration::from_secs(3), || {
        lb.log.lock().unwrap().iter().any(|l| {
            l.contains(" reloaded ")
                && log_field(l, "generation").as_deref() == Some("2")
                && log_field(l, "added").as_deref() == Some("")
                && log_field(l, "removed").as_deref() == Some("")
                && log_field(l, "changed").as_deref() == Some("")
        })
    })
    .await;
    assert!(logged, "{:?}", lb.log.lock().unwrap());
    assert_eq!(get(lb.addr, "/").await.status, 200);
}

/// The value of `key=value` in a log line (the fmt subscriber's structured fields).
fn log_field(line: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .map(str::to_string)
}

#[tokio::test]
async fn restart_only_changes_are_logged_with_plain_addresses() {
    let a = spawn_clone("a");
    let lb = BinLb::start(&config_text("round-robin", &[(&a, 1)], ""));
    let other = refused_addr();
    let text = config_text("round-robin", &[(&a, 1)], "")
        .replace("http = \"127.0.0.1:0\"", &format!("http = \"{other}\""));
    std::fs::write(&lb.config, text).unwrap();
    let warned = |l: &String| l.contains("cannot change without a restart");
    assert!(
        eventually(Duration::from_secs(5), || lb
            .log
            .lock()
            .unwrap()
            .iter()
            .any(warned))
        .await,
        "{:?}",
        lb.log.lock().unwrap()
    );
    let line = lb
        .log
        .lock()
        .unwrap()
        .iter()
        .find(|l| warned(l))
        .cloned()
        .unwrap();
    let running = lb.addr.to_string();
    let configured = other.to_string();
    assert_eq!(log_field(&line, "running_http").as_deref(), Some(&*running));
    assert_eq!(log_field(&line, "running_https").as_deref(), Some("none"));
    assert_eq!(
        log_field(&line, "configured_http").as_deref(),
        Some(&*configured)
    );
    assert!(!line.contains("Some("), "Rust debug output in {line}");
}

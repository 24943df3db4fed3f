//! `clonelb run` under systemd's notify protocol (`Type=notify`), against a real
//! `AF_UNIX` datagram socket standing in for systemd's: the binary is started with
//! `NOTIFY_SOCKET` pointing at it, and every datagram it sends is read here.
//!
//! `READY=1` once the listeners accept; `RELOADING=1` with `MONOTONIC_USEC=` then `READY=1`
//! (and a `STATUS=` naming the outcome) around every reload, rejected ones included;
//! `STOPPING=1` when SIGTERM starts the stop; a socket nobody listens on costs one warning.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// The stand-in for systemd's notify socket, in a directory of its own.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    dir: PathBuf,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let dir = fresh_dir("systemd");
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket { socket, path, dir }
    }

    fn env(&self) -> [(&'static str, &OsStr); 1] {
        [("NOTIFY_SOCKET", self.path.as_os_str())]
    }

    /// The next datagram as `KEY=VALUE` pairs (and its text, for messages); panics when
    /// none comes within `limit`.
    fn next(&self, limit: Duration) -> (HashMap<String, String>, String) {
        self.socket.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 4096];
        let n = match self.socket.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => panic!("no notify message within {limit:?}: {e}"),
        };
        let text = String::from_utf8(buf[..n].to_vec()).unwrap();
        let fields = text
            .lines()
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("{text:?}"));
                (k.to_string(), v.to_string())
            })
            .collect();
        (fields, text)
    }

    /// The next datagram, which must carry `key=1`.
    fn expect(&self, key: &str) -> HashMap<String, String> {
        let (fields, text) = self.next(Duration::from_secs(20));
        assert_eq!(
            fields.get(key).map(String::as_str),
            Some("1"),
            "expected {key}=1, got {text:?}"
        );
        fields
    }

    /// Nothing more arrives within `quiet`.
    fn nothing_for(&self, quiet: Duration) {
        self.socket.set_read_timeout(Some(quiet)).unwrap();
        let mut buf = [0u8; 4096];
        if let Ok(n) = self.socket.recv(&mut buf) {
            panic!(
                "unexpected notify message {:?}",
                String::from_utf8_lossy(&buf[..n])
            );
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `RELOADING=1` message's `MONOTONIC_USEC`, checked to be a plausible clock reading.
fn monotonic_usec(fields: &HashMap<String, String>) -> u64 {
    let usec: u64 = fields
        .get("MONOTONIC_USEC")
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {fields:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("MONOTONIC_USEC not a number ({e}): {fields:?}"));
    assert!(usec > 0, "{fields:?}");
    usec
}

fn status(fields: &HashMap<String, String>) -> &str {
    fields.get("STATUS").map_or("", String::as_str)
}

/// The child is killed if the test fails before it exits.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn kill(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn ready_comes_once_the_listeners_accept_and_stopping_on_sigterm() {
    let clone = spawn_clone("c");
    let notify = NotifySocket::bind();
    // Fixed ports, so both can be dialled the moment READY=1 arrives, before the process
    // has said anything else.
    let (http, admin) = (refused_addr(), refused_addr());
    let dir = fresh_dir("systemd-ready");
    let config = dir.join("lb.toml");
    let text = config_text("round-robin", &[(&clone, 1)], "")
        .replace("http = \"127.0.0.1:0\"", &format!("http = \"{http}\""))
        + &format!("[admin]\nlisten = \"{admin}\"\n");
    std::fs::write(&config, text).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_clonelb"))
        .args(["run", "--config"])
        .arg(&config)
        .env("CLONELB_LOG", "warn")
        .env("NOTIFY_SOCKET", &notify.path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut child = Reaped(child);
    let ready = notify.expect("READY");
    assert_eq!(status(&ready), "generation 1", "{ready:?}");
    for (what, addr) in [("listener", http), ("admin listener", admin)] {
        let accepted = TcpStream::connect_timeout(&addr, Duration::from_secs(1));
        assert!(
            accepted.is_ok(),
            "READY=1 came before the {what} ({addr}) accepted: {accepted:?}"
        );
    }
    // Exactly one READY=1 at start.
    notify.nothing_for(Duration::from_millis(300));
    kill(child.0.id(), "-TERM");
    notify.expect("STOPPING");
    let exit = wait_exit(&mut child.0);
    assert_eq!((exit.code(), exit.signal()), (Some(0), None));
    let _ = std::fs::remove_dir_all(dir);
}

/// lb.toml for one clone with the file watcher off: only the test's SIGHUPs reload.
fn unwatched(clone: &TestClone) -> String {
    config_text("round-robin", &[(clone, 1)], "") + "[reload]\nwatch = false\n"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_is_reloading_with_a_timestamp_then_ready_even_when_rejected() {
    let clone = spawn_clone("c");
    let notify = NotifySocket::bind();
    let mut lb = BinLb::start_env(&unwatched(&clone), &[], &[], &notify.env());
    assert_eq!(status(&notify.expect("READY")), "generation 1");

    let mut last_usec = 0;
    for generation in [2, 3] {
        lb.signal("-HUP");
        let reloading = notify.expect("RELOADING");
        let usec = monotonic_usec(&reloading);
        assert!(
            usec > last_usec,
            "MONOTONIC_USEC went back: {usec} after {last_usec}"
        );
        last_usec = usec;
        let ready = notify.expect("READY");
        assert_eq!(status(&ready), format!("generation {generation}"));
    }

    // A broken file: announced the same way, and the STATUS says it failed.
    std::fs::write(&lb.config, "[listen]\nhttp = 3\n").unwrap();
    lb.signal("-HUP");
    let usec = monotonic_usec(&notify.expect("RELOADING"));
    assert!(usec > last_usec);
    let ready = notify.expect("READY");
    let said = status(&ready);
    assert!(said.starts_with("reload failed: "), "{ready:?}");
    assert!(
        said.contains("lb.toml:2:"),
        "the first error line: {ready:?}"
    );
    // It keeps serving the previous configuration.
    assert_eq!(get(lb.addr, "/").await.status, 200);

    // stop() sends SIGTERM and waits for the exit; the datagram waits in the socket.
    let exit = lb.stop();
    notify.expect("STOPPING");
    assert_eq!((exit.code(), exit.signal()), (Some(0), None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_watcher_and_admin_reloads_are_announced_too() {
    let clone = spawn_clone("c");
    let notify = NotifySocket::bind();
    let toml =
        config_text("round-robin", &[(&clone, 1)], "") + "[admin]\nlisten = \"127.0.0.1:0\"\n";
    let lb = BinLb::start_env(&toml, &[], &[], &notify.env());
    notify.expect("READY");

    // The watcher: a changed file.
    std::fs::write(&lb.config, format!("{toml}\n# changed\n")).unwrap();
    monotonic_usec(&notify.expect("RELOADING"));
    assert_eq!(status(&notify.expect("READY")), "generation 2");

    // The admin API's POST /reload.
    let admin: SocketAddr = lb.admin.unwrap();
    let (code, body) = admin_call(admin, http::Method::POST, "/reload", "").await;
    assert_eq!(code, 200, "{body}");
    monotonic_usec(&notify.expect("RELOADING"));
    assert_eq!(status(&notify.expect("READY")), "generation 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notify_socket_nobody_listens_on_is_one_warning_and_serving_goes_on() {
    let clone = spawn_clone("c");
    let dir = fresh_dir("systemd-gone");
    let gone = dir.join("nobody.sock");
    let mut lb = BinLb::start_env(
        &unwatched(&clone),
        &[],
        &[],
        &[("NOTIFY_SOCKET", gone.as_os_str())],
    );
    assert!(
        lb.logged("cannot notify systemd", Duration::from_secs(10))
            .await
    );
    // Two reloads, one after the other (two signals at once may arrive as one).
    for generation in [2, 3] {
        lb.signal("-HUP");
        let line = format!("reloaded generation={generation}");
        assert!(lb.logged(&line, Duration::from_secs(10)).await, "{line}");
    }
    assert_eq!(get(lb.addr, "/").await.status, 200);
    let exit = lb.stop();
    assert_eq!((exit.code(), exit.signal()), (Some(0), None));
    let warnings = lb
        .log_lines()
        .iter()
        .filter(|l| l.contains("cannot notify systemd"))
        .count();
    assert_eq!(warnings, 1, "{:#?}", lb.log_lines());
    let _ = std::fs::remove_dir_all(dir);
}

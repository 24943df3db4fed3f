//! What a new operator meets first: `--help`, `--version`, a second instance on a port
//! that is taken, `demo --listen`. Real processes of the binary, real sockets on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_clonelb");

fn clonelb(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("CLONELB_LOG")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn help_says_how_reload_signals_and_logs_work() {
    for args in [&["--help"][..], &["run", "--help"]] {
        let help = stdout(&clonelb(args));
        for needle in [
            "SIGHUP",
            "CLONELB_LOG",
            "stderr",
            "Reload on save",
            "SIGTERM",
        ] {
            assert!(
                help.contains(needle),
                "`clonelb {}` does not mention {needle}:\n{help}",
                args.join(" ")
            );
        }
    }
}

/// `clonelb 0.1.0`, or `clonelb 0.1.0 (abc1234)` / `(abc1234-dirty)` from a checkout.
fn is_version_line(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("clonelb ") else {
        return false;
    };
    let (version, commit) = match rest.split_once(' ') {
        Some((v, c)) => (v, Some(c)),
        None => (rest, None),
    };
    let parts: Vec<&str> = version.split('.').collect();
    let semver = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let commit_ok = commit.is_none_or(|c| {
        let Some(inner) = c.strip_prefix('(').and_then(|c| c.strip_suffix(')')) else {
            return false;
        };
        let hash = inner.strip_suffix("-dirty").unwrap_or(inner);
        hash.len() >= 7 && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    });
    semver && commit_ok
}

#[test]
fn version_line_names_the_commit_when_built_from_a_checkout() {
    // The pattern itself: ^clonelb \d+\.\d+\.\d+( \([0-9a-f]{7,}(-dirty)?\))?$
    for ok in [
        "clonelb 0.1.0",
        "clonelb 0.1.0 (abc1234)",
        "clonelb 10.2.33 (abc1234def-dirty)",
    ] {
        assert!(is_version_line(ok), "{ok}");
    }
    for bad in [
        "clonelb 0.1",
        "clonelb 0.1.0 ()",
        "clonelb 0.1.0 (abc12)",
        "clonelb 0.1.0 (ABC1234)",
        "clonelb 0.1.0 abc1234",
        "clonelb 0.1.0 (abc1234-wip)",
    ] {
        assert!(!is_version_line(bad), "{bad}");
    }
    let text = stdout(&clonelb(&["--version"]));
    let line = text.strip_suffix('\n').unwrap_or(&text);
    assert!(is_version_line(line), "{text:?}");
    // This test runs from the repository, so the commit must be there and be HEAD's.
    let head = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_string());
    if let Some(head) = head {
        assert!(
            line.starts_with(&format!("clonelb {} ({head}", env!("CARGO_PKG_VERSION"))),
            "HEAD is {head}: {line:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// A listen address that is taken
// ---------------------------------------------------------------------------------------

/// A `clonelb run` started here; killed (by its PID) and its directory removed on drop.
struct Running {
    child: Child,
    dir: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// lb.toml listening on `addr` in front of `clone`, written to a fresh directory.
fn config_on(addr: SocketAddr, clone: &TestClone) -> PathBuf {
    let dir = fresh_dir("startup");
    let text = config_text("round-robin", &[(clone, 1)], "")
        .replace("http = \"127.0.0.1:0\"", &format!("http = \"{addr}\""));
    std::fs::write(dir.join("lb.toml"), text).unwrap();
    dir
}

fn run_command(dir: &std::path::Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--config"])
        .arg(dir.join("lb.toml"))
        .args(extra)
        .env("CLONELB_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// `clonelb run` in `dir`, once it logs that it serves.
fn start(dir: PathBuf, extra: &[&str]) -> Running {
    let mut child = run_command(&dir, extra).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("clonelb serving") {
                let _ = tx.send(());
            }
        }
    });
    let running = Running { child, dir };
    rx.recv_timeout(Duration::from_secs(20))
        .expect("clonelb never said it serves");
    running
}

/// `clonelb run` in `dir` expected to exit: its exit code and stderr lines. Killed (by PID)
/// and failed when it is still running after 20 s.
fn refused(dir: &std::path::Path, extra: &[&str]) -> (Option<i32>, Vec<String>) {
    let child = run_command(dir, extra).spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = rx.recv_timeout(Duration::from_secs(20)) else {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        panic!("clonelb started instead of refusing");
    };
    let out = out.unwrap();
    let lines = String::from_utf8(out.stderr)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    (out.status.code(), lines)
}

/// One request on a new connection: the name of the clone that answered it.
fn served_by(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer.rsplit("clone=").next().unwrap().to_string()
}

fn in_use_line(addr: SocketAddr) -> String {
    format!("cannot listen on {addr}: address already in use by another process")
}

#[test]
fn a_second_instance_on_the_same_port_refuses_to_start() {
    let (a, b) = (spawn_clone("a"), spawn_clone("b"));
    let addr = refused_addr();
    let _first = start(config_on(addr, &a), &[]);
    let dir = config_on(addr, &b);
    let (code, stderr) = refused(&dir, &[]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!((code, stderr), (Some(1), vec![in_use_line(addr)]));
    // Only the first serves.
    for _ in 0..20 {
        assert_eq!(served_by(addr), "a");
    }
}

#[test]
fn reuse_port_starts_a_second_instance_beside_the_first() {
    let (a, b) = (spawn_clone("a"), spawn_clone("b"));
    let addr = refused_addr();
    let _first = start(config_on(addr, &a), &[]);
    let _second = start(config_on(addr, &b), &["--reuse-port"]);
    // The kernel spreads new connections over both instances' listeners.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..500 {
        seen.insert(served_by(addr));
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["a", "b"]);
}

#[test]
fn a_plain_listener_on_the_port_makes_run_refuse() {
    let c = spawn_clone("c");
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let dir = config_on(addr, &c);
    let (code, stderr) = refused(&dir, &[]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!((code, stderr), (Some(1), vec![in_use_line(addr)]));
}

// ---------------------------------------------------------------------------------------
// demo --listen
// ---------------------------------------------------------------------------------------

fn demo_command(listen: SocketAddr) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["demo", "--listen", &listen.to_string()])
        .env("CLONELB_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

#[test]
fn demo_listens_where_told() {
    let addr = refused_addr();
    let mut child = demo_command(addr).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let demo = Running {
        child,
        dir: fresh_dir("demo"),
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        let mut reader = BufReader::new(stdout);
        let _ = reader.read_line(&mut first);
        let _ = tx.send(first);
        // Keep reading so the demo never blocks on a full pipe.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    let first = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the demo printed nothing");
    assert_eq!(first, format!("http://{addr}/\n"));
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("hello from clone-"), "{answer}");
    drop(demo);
}

#[test]
fn demo_refuses_a_given_listen_address_that_is_taken() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let child = demo_command(addr).stderr(Stdio::piped()).spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let Ok(out) = rx.recv_timeout(Duration::from_secs(20)) else {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        panic!("the demo started on another address instead of refusing");
    };
    let out = out.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out.stdout.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        in_use_line(addr) + "\n"
    );
}

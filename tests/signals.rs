//! `clonelb run` owns SIGHUP, SIGTERM and SIGINT before its port accepts anything: a
//! signal sent the moment the port first accepts a connection is handled, never the
//! default action (which would kill the process by the signal and cut what is in flight).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The binary on a port chosen here (so the test can dial it before the process says
/// anything), plus the directory holding its lb.toml.
fn spawn_on_fixed_port(clone: &TestClone) -> (Child, SocketAddr, std::path::PathBuf) {
    let addr = refused_addr();
    let dir = fresh_dir("signals");
    let config = dir.join("lb.toml");
    let text = config_text("round-robin", &[(clone, 1)], "")
        .replace("http = \"127.0.0.1:0\"", &format!("http = \"{addr}\""));
    std::fs::write(&config, text).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_clonelb"))
        .args(["run", "--config"])
        .arg(&config)
        .env("CLONELB_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (child, addr, dir)
}

/// Dial until the port first accepts (the earliest moment a signal could matter).
fn first_accept(child: &mut Child, addr: SocketAddr) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = TcpStream::connect(addr) {
            return s;
        }
        assert!(child.try_wait().unwrap().is_none(), "clonelb exited early");
        assert!(Instant::now() < deadline, "clonelb never listened");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn kill(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn get_on(mut s: TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer
}

#[test]
fn sighup_at_the_first_accept_reloads_and_keeps_serving() {
    let c = spawn_clone("c");
    let (mut child, addr, dir) = spawn_on_fixed_port(&c);
    let first = first_accept(&mut child, addr);
    kill(&child, "-HUP");
    // The connection accepted before the signal is served, and so is a new one.
    assert!(get_on(first).starts_with("HTTP/1.1 200"));
    assert!(get_on(TcpStream::connect(addr).unwrap()).starts_with("HTTP/1.1 200"));
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP killed clonelb");
    kill(&child, "-TERM");
    let status = wait_exit(&mut child);
    assert_eq!((status.code(), status.signal()), (Some(0), None));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sigterm_at_the_first_accept_is_a_graceful_stop() {
    let c = spawn_clone("c");
    let (mut child, addr, dir) = spawn_on_fixed_port(&c);
    let _first = first_accept(&mut child, addr);
    kill(&child, "-TERM");
    let status = wait_exit(&mut child);
    assert_eq!(
        (status.code(), status.signal()),
        (Some(0), None),
        "killed by the signal's default action instead of stopping gracefully"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn sigterm_with_a_request_in_flight_right_after_start_lets_it_finish() {
    let c = spawn_clone("c");
    let (mut child, addr, dir) = spawn_on_fixed_port(&c);
    let mut s = first_accept(&mut child, addr);
    s.write_all(b"GET /slow?ms=500 HTTP/1.1\r\nhost: t\r\n\r\n")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.hits() == 0 {
        assert!(
            Instant::now() < deadline,
            "the request never reached the clone"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    kill(&child, "-TERM");
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("clone=c"), "{answer}");
    let status = wait_exit(&mut child);
    assert_eq!((status.code(), status.signal()), (Some(0), None));
    let _ = std::fs::remove_dir_all(dir);
}

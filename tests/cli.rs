#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Integration tests of `clonelb status | disable | enable | reload`, run as the real binary
//! against a fake admin API written here: a hyper server on 127.0.0.1:0 that answers canned
//! JSON and records every request it got (method, path with query, Authorization); and of
//! `clonelb pin | unpin` against a running balancer (its deploy state is the point).
//!
//! Contract: normal output on stdout, exit 0; errors one line on stderr starting with
//! `clonelb: `, exit 1 (a failed reload prints its header and the file's error lines);
//! usage errors exit 2. The binary bounds every run itself (3 s connect, 15 s request).

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::run_local;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const BIN: &str = env!("CARGO_BIN_EXE_clonelb");

/// One request the fake admin API received.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
}

type Route = dyn Fn(&str, &str) -> (u16, String) + Send + Sync;

/// The fake admin API; stops when dropped.
struct FakeAdmin {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl FakeAdmin {
    /// Answer every request with `route(method, path_and_query)`: a status and a JSON body.
    fn start(route: impl Fn(&str, &str) -> (u16, String) + Send + Sync + 'static) -> Self {
        // Bound before the thread starts: the port accepts from the moment this returns.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let route: Arc<Route> = Arc::new(route);
        let log = Arc::clone(&seen);
        std::thread::spawn(move || {
            run_local(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let stream = tokio::select! {
                        _ = &mut stopped => return,
                        accepted = listener.accept() => match accepted {
                            Ok((s, _)) => s,
                            Err(_) => continue,
                        },
                    };
                    let (route, log) = (Arc::clone(&route), Arc::clone(&log));
                    let service = service_fn(move |req: Request<Incoming>| {
                        let path = req.uri().path_and_query().unwrap().to_string();
                        let method = req.method().to_string();
                        let authorization = req
                            .headers()
                            .get("authorization")
                            .map(|v| v.to_str().unwrap().to_string());
                        let (status, body) = route(&method, &path);
                        log.lock().unwrap().push(Seen {
                            method,
                            path,
                            authorization,
                        });
                        let response = Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap();
                        async move { Ok::<_, Infallible>(response) }
                    });
                    tokio::spawn(async move {
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            });
        });
        FakeAdmin {
            addr,
            seen,
            _stop: stop,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn admin(&self) -> String {
        self.addr.to_string()
    }
}

fn seen(method: &str, path: &str, token: Option<&str>) -> Seen {
    Seen {
        method: method.into(),
        path: path.into(),
        authorization: token.map(|t| format!("Bearer {t}")),
    }
}

/// Run `clonelb ARGS` with a clean environment for the variables it reads.
fn clonelb(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("CLONELB_LOG")
        .env_remove("CLONELB_ADMIN_TOKEN")
        .env_remove("NO_COLOR");
    cmd
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run clonelb");
    (
        status.code().expect("exit code"),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

/// A scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("clonelb-cli-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn backend_json(name: &str, state: &str, in_flight: u64) -> String {
    format!(
        r#"{{"name": "{name}", "address": "127.0.0.1:9001", "weight": 1, "state": "{state}",
            "in_flight": {in_flight}, "requests_total": 10, "failures_total": 0,
            "last_check": null,
            "last_minute": {{"requests": 0, "errors": 0, "p50_ms": null, "p99_ms": null}}}}"#
    )
}

fn status_json() -> String {
    let three_s_ago = humantime::format_rfc3339_seconds(SystemTime::now() - Duration::from_secs(3));
    format!(
        r#"{{"version": "0.1.0", "uptime_s": 5,
            "config": {{"path": "/etc/lb.toml", "generation": 7,
                        "loaded_at": "2026-12-03T10:00:00Z",
                        "last_error": ["/etc/lb.toml:4:9: unknown key `wieght`"]}},
            "strategy": "round-robin",
            "backends": [
              {{"name": "clone-1", "address": "127.0.0.1:9001", "weight": 1, "state": "up",
                "in_flight": 2, "requests_total": 1500, "failures_total": 3,
                "last_check": {{"at": "{three_s_ago}", "ok": true, "detail": "200"}},
                "last_minute": {{"requests": 90, "errors": 1, "p50_ms": 1.2, "p99_ms": 48.0}}}},
              {{"name": "clone-22", "address": "127.0.0.1:9002", "weight": 2,
                "state": "disabled", "in_flight": 0, "requests_total": 7, "failures_total": 0,
                "last_check": null,
                "last_minute": {{"requests": 0, "errors": 0, "p50_ms": null, "p99_ms": null}}}}
            ]}}"#
    )
}

#[test]
fn status_prints_header_last_error_and_an_uncoloured_table() {
    let fake = FakeAdmin::start(|_, _| (200, status_json()));
    let (code, out, err) = run(&mut clonelb(&[
        "status",
        "--admin",
        &fake.admin(),
        "--token",
        "s3",
    ]));
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    assert!(!out.contains('\x1b'), "colour codes on a pipe: {out:?}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..4],
        [
            "generation 7, loaded 2026-12-03T10:00:00Z, strategy round-robin",
            "last reload failed:",
            "/etc/lb.toml:4:9: unknown key `wieght`",
            "NAME      ADDRESS         STATE     IN-FLIGHT  REQUESTS  ERRORS   P99  LAST-CHECK",
        ],
        "{out}"
    );
    let row = lines[4];
    assert!(
        row.starts_with(
            "clone-1   127.0.0.1:9001  up                2      1500       1  48ms  ok 200 "
        ),
        "{out}"
    );
    assert!(row.ends_with("s ago"), "{out}");
    assert_eq!(
        lines[5],
        "clone-22  127.0.0.1:9002  disabled          0         7       0     -  -"
    );
    assert_eq!(lines.len(), 6, "{out}");
    assert_eq!(fake.seen(), [seen("GET", "/status", Some("s3"))]);
}

#[test]
fn disable_and_enable_send_the_token_and_print_the_new_state() {
    let fake = FakeAdmin::start(|_, path| match path {
        "/backends/clone%201/disable" => (200, backend_json("clone 1", "disabled", 4)),
        "/backends/clone%201/enable" => (200, backend_json("clone 1", "up", 0)),
        _ => (500, r#"{"error": "unexpected"}"#.into()),
    });
    let admin = fake.admin();
    let (code, out, err) = run(&mut clonelb(&[
        "disable", "clone 1", "--admin", &admin, "--token", "tk",
    ]));
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "clone 1 (127.0.0.1:9001): disabled, 4 in flight\n", "")
    );
    let (code, out, err) = run(&mut clonelb(&[
        "enable", "--token", "tk", "--admin", &admin, "clone 1",
    ]));
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (0, "clone 1 (127.0.0.1:9001): up, 0 in flight\n", "")
    );
    assert_eq!(
        fake.seen(),
        [
            seen("POST", "/backends/clone%201/disable", Some("tk")),
            seen("POST", "/backends/clone%201/enable", Some("tk")),
        ]
    );
}

#[test]
fn disable_wait_exits_0_once_drained() {
    let fake = FakeAdmin::start(|method, path| match (method, path) {
        ("POST", "/backends/clone-1/disable") => (200, backend_json("clone-1", "disabled", 2)),
        ("GET", "/backends/clone-1/wait-drained?timeout=2s") => (200, r#"{"in_flight": 0}"#.into()),
        _ => (500, r#"{"error": "unexpected"}"#.into()),
    });
    let (code, out, err) = run(&mut clonelb(&[
        "disable",
        "clone-1",
        "--wait",
        "--timeout",
        "2s",
        "--admin",
        &fake.admin(),
    ]));
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    assert_eq!(
        out,
        "clone-1 (127.0.0.1:9001): disabled, 2 in flight\nclone-1: drained, 0 in flight\n"
    );
    assert_eq!(
        fake.seen(),
        [
            seen("POST", "/backends/clone-1/disable", None),
            seen("GET", "/backends/clone-1/wait-drained?timeout=2s", None),
        ]
    );
}

#[test]
fn disable_wait_timeout_exits_1_with_the_in_flight_count() {
    let fake = FakeAdmin::start(|method, _| match method {
        "POST" => (200, backend_json("clone-1", "disabled", 5)),
        _ => (408, r#"{"in_flight": 3}"#.into()),
    });
    let (code, _, err) = run(&mut clonelb(&[
        "disable",
        "clone-1",
        "--wait",
        "--admin",
        &fake.admin(),
    ]));
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "clonelb: clone \"clone-1\" not drained after 60s: 3 in flight\n"
    );
    assert_eq!(
        fake.seen()[1].path,
        "/backends/clone-1/wait-drained?timeout=60s"
    );
}

#[test]
fn unknown_clone_exits_1_with_one_line() {
    let fake = FakeAdmin::start(|_, _| (404, r#"{"error": "no clone named \"x\""}"#.into()));
    for args in [["disable", "x"], ["enable", "x"]] {
        let (code, out, err) = run(clonelb(&args).args(["--admin", &fake.admin()]));
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (1, "", "clonelb: no clone named \"x\"\n")
        );
    }
}

#[test]
fn a_refused_or_missing_token_exits_1() {
    let fake = FakeAdmin::start(|_, _| (401, r#"{"error": "missing or wrong token"}"#.into()));
    let (code, out, err) = run(&mut clonelb(&[
        "status",
        "--admin",
        &fake.admin(),
        "--token",
        "nope",
    ]));
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(err, "clonelb: the admin API refused the token (401)\n");
    let (code, _, err) = run(&mut clonelb(&["reload", "--admin", &fake.admin()]));
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "clonelb: the admin API needs a token (401): give --token or set CLONELB_ADMIN_TOKEN\n"
    );
}

#[test]
fn unreachable_admin_exits_1() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (code, out, err) = run(&mut clonelb(&["status", "--admin", &closed.to_string()]));
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        format!("clonelb: cannot reach the admin API at {closed}: connection refused\n")
    );
}

#[test]
fn reload_prints_what_changed() {
    let fake = FakeAdmin::start(|_, _| {
        (
            200,
            r#"{"generation": 8, "added": ["a", "b"], "removed": [], "changed": ["c"]}"#.into(),
        )
    });
    let (code, out, err) = run(&mut clonelb(&["reload", "--admin", &fake.admin()]));
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (
            0,
            "reloaded: generation 8, added a,b, removed -, changed c\n",
            ""
        )
    );
    assert_eq!(fake.seen(), [seen("POST", "/reload", None)]);
}

#[test]
fn a_rejected_reload_exits_1_with_the_error_lines() {
    let fake = FakeAdmin::start(|_, _| {
        (
            422,
            r#"{"generation": 7, "errors": ["lb.toml:3:1: a", "lb.toml:9:5: b"]}"#.into(),
        )
    });
    let (code, out, err) = run(&mut clonelb(&["reload", "--admin", &fake.admin()]));
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "reload failed (generation 7 still serving):\nlb.toml:3:1: a\nlb.toml:9:5: b\n"
    );
}

#[test]
fn admin_address_and_token_default_to_the_config_files_admin_section() {
    let fake = FakeAdmin::start(|_, _| {
        (
            200,
            r#"{"generation": 1, "added": [], "removed": [], "changed": []}"#.into(),
        )
    });
    let dir = Scratch::new("config");
    let text = format!(
        "[listen]\nhttp = \"127.0.0.1:8080\"\n\n[admin]\nlisten = \"{}\"\ntoken = \"from-config\"\n",
        fake.addr
    );
    let other = dir.write("other.toml", &text);
    let (code, out, err) = run(&mut clonelb(&[
        "reload",
        "--config",
        other.to_str().unwrap(),
    ]));
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    // Without --config: ./lb.toml.
    dir.write("lb.toml", &text);
    let (code, _, err) = run(clonelb(&["reload"]).current_dir(&dir.0));
    assert_eq!((code, err.as_str()), (0, ""));
    // The file's token is sent, unless one is given.
    let (code, _, err) = run(clonelb(&["reload", "--token", "flag"]).current_dir(&dir.0));
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(
        fake.seen(),
        [
            seen("POST", "/reload", Some("from-config")),
            seen("POST", "/reload", Some("from-config")),
            seen("POST", "/reload", Some("flag")),
        ]
    );
    // No [admin] listen: a usage error.
    let bare = dir.write("bare.toml", "[listen]\nhttp = \"127.0.0.1:8080\"\n");
    let (code, _, err) = run(&mut clonelb(&["status", "-c", bare.to_str().unwrap()]));
    assert_eq!(code, 2);
    assert_eq!(
        err,
        format!(
            "clonelb: no --admin given and {} has no [admin] listen\n",
            bare.display()
        )
    );
}

#[test]
fn token_comes_from_the_environment_unless_given() {
    let fake = FakeAdmin::start(|_, _| (200, status_json()));
    let (code, _, _) =
        run(clonelb(&["status", "--admin", &fake.admin()]).env("CLONELB_ADMIN_TOKEN", "from-env"));
    assert_eq!(code, 0);
    let (code, _, _) = run(
        clonelb(&["status", "--admin", &fake.admin(), "--token", "flag"])
            .env("CLONELB_ADMIN_TOKEN", "from-env"),
    );
    assert_eq!(code, 0);
    assert_eq!(
        fake.seen(),
        [
            seen("GET", "/status", Some("from-env")),
            seen("GET", "/status", Some("flag")),
        ]
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["disable"][..],
        &["disable", "x", "--timeout", "5s"],
        &["disable", "x", "--wait", "--timeout", "soon"],
        &["enable", "x", "--bogus"],
        &["pin"],
        &["pin", "v1", "v2"],
        &["unpin", "v1"],
    ] {
        let (code, _, err) = run(&mut clonelb(args));
        assert_eq!(code, 2, "{args:?}: {err}");
    }
}

/// A balancer in this process in front of clones that report their versions
/// (`clonelb::demo::serve_clone`, on a runtime of their own), with fast checks reading
/// `x-clone-version`, `[deploy] mode` and an admin listener with `admin_extra`.
struct Deployed {
    lb: clonelb::Balancer,
    _clones: tokio::runtime::Runtime,
}

impl Deployed {
    fn start(clones: &[(&str, &str)], mode: &str, admin_extra: &str) -> Deployed {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut toml = "[listen]\nhttp = \"127.0.0.1:0\"\n".to_string();
        for (name, version) in clones {
            let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"));
            let listener = listener.unwrap();
            let addr = listener.local_addr().unwrap();
            rt.spawn(clonelb::demo::serve_clone(
                listener,
                name.to_string(),
                version.to_string(),
            ));
            toml.push_str(&format!(
                "[[backend]]\naddress = \"{addr}\"\nname = \"{name}\"\n"
            ));
        }
        toml.push_str(&format!(
            "[health]\ninterval = \"100ms\"\ntimeout = \"50ms\"\n\
             version_header = \"x-clone-version\"\n[deploy]\nmode = \"{mode}\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}\n"
        ));
        let checked = clonelb::config::parse("test.toml", &toml).unwrap();
        let lb = clonelb::Balancer::start_with_workers(&checked.config, 2).unwrap();
        Deployed { lb, _clones: rt }
    }

    fn admin(&self) -> String {
        self.lb.admin_addr().unwrap().to_string()
    }

    /// Poll the balancer's deploy status until `ready` holds; panic after 5 s.
    fn wait(&self, what: &str, ready: impl Fn(&clonelb::control::DeployStatus) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let deploy = self.lb.status().deploy;
            if ready(&deploy) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: {deploy:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn pin_and_unpin_print_what_is_active_and_a_refusal_exits_1() {
    let lb = Deployed::start(
        &[("a", "v1"), ("b", "v1"), ("c", "v2")],
        "atomic",
        "token = \"tk\"",
    );
    let admin = lb.admin();
    lb.wait("v1 elected beside v2", |d| {
        d.active.as_deref() == Some("v1") && d.versions.len() == 2
    });
    let pin = |version: &str| {
        run(&mut clonelb(&[
            "pin", version, "--admin", &admin, "--token", "tk",
        ]))
    };

    // A version no clone reports: one line, exit 1, nothing changed.
    assert_eq!(
        pin("v9"),
        (
            1,
            String::new(),
            "clonelb: no clone reports version \"v9\"\n".into()
        )
    );
    // Without the token: refused like every other command.
    let (code, out, err) = run(&mut clonelb(&["pin", "v2", "--admin", &admin]));
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(err.contains("needs a token (401)"), "{err}");
    let d = lb.lb.status().deploy;
    assert_eq!(
        (d.active.as_deref(), d.pinned.as_deref()),
        (Some("v1"), None)
    );

    assert_eq!(
        pin("v2"),
        (
            0,
            "pinned v2: active v2 (mode atomic)\n".into(),
            String::new()
        )
    );
    let d = lb.lb.status().deploy;
    assert_eq!(
        (d.active.as_deref(), d.pinned.as_deref()),
        (Some("v2"), Some("v2"))
    );

    let (code, out, err) = run(&mut clonelb(&["unpin", "--admin", &admin, "--token", "tk"]));
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    assert!(
        out.starts_with("unpinned: active v") && out.ends_with(" (mode atomic)\n"),
        "{out}"
    );
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_eq!(lb.lb.status().deploy.pinned, None);
}

#[test]
fn pin_and_unpin_in_mixed_mode_exit_1_with_the_reason() {
    let lb = Deployed::start(&[("a", "v1")], "mixed", "");
    let admin = lb.admin();
    lb.wait("v1 reported", |d| d.versions.len() == 1);
    for args in [&["pin", "v1"][..], &["unpin"]] {
        let (code, out, err) = run(clonelb(args).args(["--admin", &admin]));
        assert_eq!((code, out.as_str()), (1, ""), "{args:?}");
        assert!(
            err.starts_with("clonelb: deploy mode is \"mixed\"") && err.lines().count() == 1,
            "{args:?}: {err}"
        );
    }
    assert_eq!(lb.lb.status().deploy.pinned, None);
}

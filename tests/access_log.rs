//! The access log on real sockets: one line per request in both formats, each naming the
//! clone that answered (matched to the responses by request ID), with clonelb's own
//! answers, client aborts and stripped queries; reopened on SIGUSR1 and on reloads without
//! losing or repeating a line; an unwritable log logged once, counted, and never in the
//! way of the traffic.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use regex::Regex;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The bound on any single wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Combined,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Combined => "combined",
        }
    }
}

/// One access line, parsed. Fields only the JSON format has are `None` for combined.
#[derive(Debug, Clone)]
struct Line {
    time: SystemTime,
    client: String,
    method: String,
    path: String,
    protocol: String,
    status: u16,
    bytes: u64,
    duration_ms: f64,
    /// JSON only: `Some(None)` is `"head_ms": null`.
    head_ms: Option<Option<f64>>,
    clone: Option<String>,
    attempts: Option<u64>,
    outcome: Option<String>,
    request_id: String,
    user_agent: Option<String>,
    referer: Option<String>,
}

const JSON_KEYS: [&str; 15] = [
    "attempts",
    "bytes",
    "client",
    "clone",
    "duration_ms",
    "head_ms",
    "method",
    "outcome",
    "path",
    "protocol",
    "referer",
    "request_id",
    "status",
    "time",
    "user_agent",
];

fn regex(cell: &'static OnceLock<Regex>, re: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(re).unwrap())
}

fn parse_json(text: &str) -> Line {
    static TIME: OnceLock<Regex> = OnceLock::new();
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {text}"));
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, JSON_KEYS, "{text}");
    let s = |k: &str| {
        v[k].as_str()
            .unwrap_or_else(|| panic!("{k} is not a string: {text}"))
            .to_string()
    };
    let opt_s = |k: &str| match &v[k] {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => panic!("{k} is {other}: {text}"),
    };
    let n = |k: &str| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("{k} is not an integer: {text}"))
    };
    let f = |k: &str| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("{k} is not a number: {text}"))
    };
    let time = s("time");
    assert!(
        regex(&TIME, r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$").is_match(&time),
        "time is not RFC 3339 UTC with milliseconds: {text}"
    );
    Line {
        time: humantime::parse_rfc3339(&time).unwrap(),
        client: s("client"),
        method: s("method"),
        path: s("path"),
        protocol: s("protocol"),
        status: u16::try_from(n("status")).unwrap(),
        bytes: n("bytes"),
        duration_ms: f("duration_ms"),
        head_ms: Some(match &v["head_ms"] {
            Value::Null => None,
            x => Some(
                x.as_f64()
                    .unwrap_or_else(|| panic!("head_ms is {x}: {text}")),
            ),
        }),
        clone: opt_s("clone"),
        attempts: Some(n("attempts")),
        outcome: Some(s("outcome")),
        request_id: s("request_id"),
        user_agent: opt_s("user_agent"),
        referer: opt_s("referer"),
    }
}

/// Apache/nginx combined, then the duration in seconds, the clone and the request ID.
const COMBINED: &str = r#"^(?P<client>\S+) - - \[(?P<time>\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2}) \+0000\] "(?P<method>[A-Z]+) (?P<path>\S+) (?P<protocol>HTTP/\d\.\d)" (?P<status>\d{3}) (?P<bytes>\d+) "(?P<referer>[^"]*)" "(?P<ua>[^"]*)" (?P<secs>\d+\.\d{3}) (?P<clone>\S+) (?P<id>\S+)$"#;

fn parse_combined(text: &str) -> Line {
    static RE: OnceLock<Regex> = OnceLock::new();
    let c = regex(&RE, COMBINED)
        .captures(text)
        .unwrap_or_else(|| panic!("not a combined line: {text}"));
    let dash = |k: &str| Some(c[k].to_string()).filter(|v| v != "-");
    Line {
        time: clf_time(&c["time"]),
        client: c["client"].to_string(),
        method: c["method"].to_string(),
        path: c["path"].to_string(),
        protocol: c["protocol"].to_string(),
        status: c["status"].parse().unwrap(),
        bytes: c["bytes"].parse().unwrap(),
        duration_ms: c["secs"].parse::<f64>().unwrap() * 1000.0,
        head_ms: None,
        clone: dash("clone"),
        attempts: None,
        outcome: None,
        request_id: c["id"].to_string(),
        user_agent: dash("ua"),
        referer: dash("referer"),
    }
}

/// `01/Dec/2026:10:00:00` (UTC) as a time.
fn clf_time(s: &str) -> SystemTime {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == &s[3..6]).unwrap() + 1;
    let rfc = format!("{}-{month:02}-{}T{}Z", &s[7..11], &s[0..2], &s[12..20]);
    humantime::parse_rfc3339(&rfc).unwrap()
}

fn parse(format: Format, text: &str) -> Line {
    match format {
        Format::Json => parse_json(text),
        Format::Combined => parse_combined(text),
    }
}

/// The request IDs of JSON lines.
fn ids(lines: &[String]) -> Vec<String> {
    lines.iter().map(|l| parse_json(l).request_id).collect()
}

/// Poll `path` until it holds at least `n` complete lines (or `limit` passes).
async fn wait_lines(path: &Path, n: usize, limit: Duration) -> Vec<String> {
    let ok = eventually(limit, || file_lines(path).len() >= n).await;
    let lines = file_lines(path);
    assert!(
        ok,
        "{}: expected {n} lines within {limit:?}, have {}",
        path.display(),
        lines.len()
    );
    lines
}

/// A response read off a plain socket.
struct RawAnswer {
    status: u16,
    /// Names lowercased.
    headers: HashMap<String, String>,
    /// The body bytes read so far.
    body: Vec<u8>,
}

impl RawAnswer {
    fn id(&self) -> String {
        self.headers
            .get("x-request-id")
            .unwrap_or_else(|| panic!("no x-request-id: {:?}", self.headers))
            .clone()
    }
}

/// Read a response head (and whatever body bytes came with it).
async fn read_head(s: &mut TcpStream) -> RawAnswer {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let mut lines = head.split("\r\n");
            let status = lines.next().unwrap().split(' ').nth(1).unwrap();
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            return RawAnswer {
                status: status.parse().unwrap(),
                headers,
                body: buf[end + 4..].to_vec(),
            };
        }
        let n = timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("no response head in time")
            .unwrap();
        assert!(n > 0, "closed before a response head: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Read the rest of a Content-Length body.
async fn read_body(s: &mut TcpStream, a: &mut RawAnswer) {
    let len: usize = a.headers["content-length"].parse().unwrap();
    let mut chunk = [0u8; 4096];
    while a.body.len() < len {
        let n = timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("body not read in time")
            .unwrap();
        assert!(n > 0, "closed mid-body");
        a.body.extend_from_slice(&chunk[..n]);
    }
}

/// What a request's line must say.
#[derive(Debug, Clone)]
struct Expect {
    status: u16,
    clone: Option<String>,
    outcome: &'static str,
    /// As sent, with its query.
    target: String,
    bytes: Range<u64>,
    head: bool,
    attempts: u64,
    user_agent: Option<String>,
    referer: Option<String>,
}

fn exactly(n: usize) -> Range<u64> {
    n as u64..n as u64 + 1
}

/// The dead clone's 502, answered by clonelb.
fn refused(target: &str, ua: Option<&str>, referer: Option<&str>, body: usize) -> Expect {
    Expect {
        status: 502,
        clone: Some("dead".into()),
        outcome: "clonelb_error",
        target: target.into(),
        bytes: exactly(body),
        head: true,
        attempts: 1,
        user_agent: ua.map(str::to_string),
        referer: referer.map(str::to_string),
    }
}

/// Note what request `id`'s line must say.
fn add(expected: &mut HashMap<String, Expect>, id: String, e: Expect) {
    assert!(expected.insert(id.clone(), e).is_none(), "id {id} reused");
}

/// Check one parsed line against what its request must have logged.
fn check_line(
    format: Format,
    query: bool,
    l: &Line,
    e: &Expect,
    text: &str,
    window: &Range<SystemTime>,
) {
    let logged_target = if query {
        e.target.clone()
    } else {
        e.target.split('?').next().unwrap().to_string()
    };
    assert_eq!(l.path, logged_target, "{text}");
    if !query {
        assert!(!text.contains("secret"), "the query was logged: {text}");
    }
    assert_eq!(
        (l.status, l.clone.as_deref(), l.method.as_str()),
        (e.status, e.clone.as_deref(), "GET"),
        "{text}"
    );
    assert_eq!(
        (l.client.as_str(), l.protocol.as_str()),
        ("127.0.0.1", "HTTP/1.1"),
        "{text}"
    );
    assert!(
        e.bytes.contains(&l.bytes),
        "bytes not in {:?}: {text}",
        e.bytes
    );
    assert_eq!(
        (l.user_agent.as_deref(), l.referer.as_deref()),
        (e.user_agent.as_deref(), e.referer.as_deref()),
        "{text}"
    );
    // Combined times have whole seconds.
    assert!(
        l.time + Duration::from_secs(1) >= window.start && l.time <= window.end,
        "time outside the test's run: {text}"
    );
    assert!(l.duration_ms >= 0.0 && l.duration_ms < 60_000.0, "{text}");
    if format == Format::Json {
        assert_eq!(l.outcome.as_deref(), Some(e.outcome), "{text}");
        assert_eq!(l.attempts, Some(e.attempts), "{text}");
        let head = l.head_ms.unwrap();
        assert_eq!(head.is_some(), e.head, "head_ms: {text}");
        if let Some(h) = head {
            assert!(
                h >= 0.0 && h <= l.duration_ms + 0.001,
                "head after the end: {text}"
            );
        }
    }
}

/// Three clones plus a refused one ("dead", retries off, so it answers 502 until passive
/// ejection takes it out), `[log] access = FORMAT` to a file. Exactly 300 requests: a 400
/// clonelb answers itself, a download the client leaves mid-body, a request the client
/// leaves before any head (499), and plain GETs on four kept-alive connections (one with
/// `?secret=1`). Every request has exactly one line, matched by request ID, naming the
/// clone whose answer the client got.
async fn three_hundred_requests(format: Format, query: bool) {
    const TOTAL: usize = 300;
    let clones = [spawn_clone("a"), spawn_clone("b"), spawn_clone("c")];
    let dead = refused_addr();
    let dir = fresh_dir("access");
    let log = dir.join("access.log");
    let toml = format!(
        "{}[[backend]]\naddress = \"{dead}\"\nname = \"dead\"\n[log]\naccess = \"{}\"\naccess_path = \"{}\"\naccess_query = {query}\n",
        config_text(
            "round-robin",
            &[(&clones[0], 1), (&clones[1], 1), (&clones[2], 1)],
            "retries = 0"
        ),
        format.name(),
        log.display()
    );
    let lb = spawn_lb(&toml);
    let addr = lb.http_addr();
    let start = SystemTime::now();
    let mut expected: HashMap<String, Expect> = HashMap::new();
    let mut sent = 0usize;

    // clonelb's own 400 (two Host fields): no clone, no attempt.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /bad?secret=2 HTTP/1.1\r\nHost: a\r\nHost: b\r\nUser-Agent: alt/bad\r\n\r\n")
        .await
        .unwrap();
    let mut bad = read_head(&mut s).await;
    read_body(&mut s, &mut bad).await;
    drop(s);
    sent += 1;
    assert_eq!(bad.status, 400);
    let e = Expect {
        status: 400,
        clone: None,
        outcome: "clonelb_error",
        target: "/bad?secret=2".into(),
        bytes: exactly(bad.body.len()),
        head: true,
        attempts: 0,
        user_agent: Some("alt/bad".into()),
        referer: None,
    };
    add(&mut expected, bad.id(), e);

    // A download the client leaves after its head and some bytes (a 502 from the dead
    // clone is a line too; then try again).
    let drip = "/drip?chunks=50&ms=40";
    loop {
        assert!(sent < 8, "never reached a live clone");
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {drip} HTTP/1.1\r\nHost: t\r\nUser-Agent: alt/drip\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut a = read_head(&mut s).await;
        sent += 1;
        if a.status == 502 {
            read_body(&mut s, &mut a).await;
            add(
                &mut expected,
                a.id(),
                refused(drip, Some("alt/drip"), None, a.body.len()),
            );
            continue;
        }
        assert_eq!(a.status, 200);
        while a.body.is_empty() {
            let mut chunk = [0u8; 4096];
            let n = timeout(WAIT, s.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0);
            a.body.extend_from_slice(&chunk[..n]);
        }
        drop(s);
        let e = Expect {
            status: 200,
            clone: Some(a.headers["x-clone"].clone()),
            outcome: "client_aborted",
            target: drip.into(),
            bytes: a.body.len() as u64..50 * DRIP_CHUNK,
            head: true,
            attempts: 1,
            user_agent: Some("alt/drip".into()),
            referer: None,
        };
        add(&mut expected, a.id(), e);
        break;
    }

    // A client that leaves while its clone holds the answer: 499, no head.
    loop {
        assert!(sent < 12, "never reached a live clone");
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /hold HTTP/1.1\r\nHost: t\r\nUser-Agent: alt/hold\r\nReferer: http://ref.example/hold\r\n\r\n")
            .await
            .unwrap();
        sent += 1;
        let deadline = Instant::now() + WAIT;
        let held = loop {
            if let Some(c) = clones.iter().find(|c| c.held() == 1) {
                break Some(c);
            }
            let mut one = [0u8; 1];
            if let Ok(Ok(n)) = timeout(Duration::from_millis(10), s.peek(&mut one)).await {
                assert!(n > 0, "closed without an answer");
                break None;
            }
            assert!(Instant::now() < deadline, "neither held nor answered");
        };
        let Some(c) = held else {
            let mut a = read_head(&mut s).await;
            assert_eq!(a.status, 502);
            read_body(&mut s, &mut a).await;
            let e = refused(
                "/hold",
                Some("alt/hold"),
                Some("http://ref.example/hold"),
                a.body.len(),
            );
            add(&mut expected, a.id(), e);
            continue;
        };
        // No answer reaches the client: the ID is the one the clone saw.
        let id = c.last_headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_string();
        drop(s);
        let e = Expect {
            status: 499,
            clone: Some(c.name.clone()),
            outcome: "client_aborted",
            target: "/hold".into(),
            bytes: exactly(0),
            head: false,
            attempts: 1,
            user_agent: Some("alt/hold".into()),
            referer: Some("http://ref.example/hold".into()),
        };
        add(&mut expected, id.clone(), e);
        // Its line is written (promptly: the channel ran empty) before the clone answers.
        assert!(
            eventually(Duration::from_secs(3), || file_lines(&log)
                .iter()
                .any(|l| l.contains(&id)))
            .await,
            "the 499's line did not reach the file within 3 s"
        );
        c.release();
        break;
    }

    // The rest: plain GETs on four kept-alive connections.
    let rest = TOTAL - sent;
    let mut tasks = Vec::new();
    for k in 0..4 {
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let mut out = Vec::new();
            for i in (k..rest).step_by(4) {
                let target = if i == 7 {
                    "/item/7?secret=1".to_string()
                } else {
                    format!("/item/{i}")
                };
                let ua = format!("alt/{}", i % 3);
                let referer = (i % 2 == 0).then(|| format!("http://ref.example/{i}"));
                let mut req = Request::get(&target)
                    .header("host", "test.local")
                    .header("user-agent", &ua);
                if let Some(r) = &referer {
                    req = req.header("referer", r);
                }
                let a = client
                    .send(req.body(Full::new(Bytes::new())).unwrap())
                    .await;
                out.push((target, ua, referer, a));
            }
            out
        }));
    }
    let mut refusals = expected.values().filter(|e| e.status == 502).count();
    let mut last_answer = Instant::now();
    for t in tasks {
        for (target, ua, referer, a) in timeout(Duration::from_secs(60), t).await.unwrap().unwrap()
        {
            let id = a.headers["x-request-id"].to_str().unwrap().to_string();
            let e = match a.status.as_u16() {
                200 => {
                    let clone = a.text().strip_prefix("clone=").unwrap().to_string();
                    assert_eq!(a.clone_name(), clone);
                    Expect {
                        status: 200,
                        clone: Some(clone),
                        outcome: "complete",
                        target,
                        bytes: exactly(a.body.len()),
                        head: true,
                        attempts: 1,
                        user_agent: Some(ua),
                        referer,
                    }
                }
                502 => {
                    refusals += 1;
                    refused(&target, Some(&ua), referer.as_deref(), a.body.len())
                }
                s => panic!("unexpected status {s}: {}", a.text()),
            };
            add(&mut expected, id, e);
        }
        last_answer = Instant::now();
    }
    assert_eq!(expected.len(), TOTAL);
    assert!(refusals >= 1, "the dead clone was never picked");

    // Every line reaches the file without a shutdown (flushed when the channel runs empty).
    wait_lines(&log, TOTAL, Duration::from_secs(5)).await;
    let prompt = last_answer.elapsed();
    // Then a graceful stop flushes whatever else there could be: still exactly 300.
    timeout(WAIT, tokio::task::spawn_blocking(move || lb.shutdown()))
        .await
        .unwrap()
        .unwrap();
    let window = start..SystemTime::now();
    let lines = file_lines(&log);
    assert_eq!(lines.len(), TOTAL, "{lines:#?}");
    let mut seen = HashSet::new();
    for text in &lines {
        let l = parse(format, text);
        assert!(
            seen.insert(l.request_id.clone()),
            "two lines for one request: {text}"
        );
        let e = expected
            .get(&l.request_id)
            .unwrap_or_else(|| panic!("a line for no request sent: {text}"));
        check_line(format, query, &l, e, text, &window);
    }
    assert_eq!(seen.len(), TOTAL);
    eprintln!(
        "{}: {TOTAL} lines, {refusals} refused, all written {prompt:?} after the last answer",
        format.name()
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn three_hundred_requests_give_three_hundred_json_lines() {
    three_hundred_requests(Format::Json, false).await;
}

#[tokio::test]
async fn three_hundred_requests_give_three_hundred_combined_lines() {
    three_hundred_requests(Format::Combined, true).await;
}

#[tokio::test]
async fn the_query_is_logged_only_with_access_query() {
    let a = spawn_clone("a");
    for format in [Format::Json, Format::Combined] {
        for query in [false, true] {
            let dir = fresh_dir("query");
            let log = dir.join("access.log");
            let lb = spawn_lb(&format!(
                "{}[log]\naccess = \"{}\"\naccess_path = \"{}\"\naccess_query = {query}\n",
                config_text("round-robin", &[(&a, 1)], ""),
                format.name(),
                log.display()
            ));
            assert_eq!(get(lb.http_addr(), "/q?secret=1&b=2").await.status, 200);
            let lines = wait_lines(&log, 1, WAIT).await;
            let path = parse(format, &lines[0]).path;
            let want = if query { "/q?secret=1&b=2" } else { "/q" };
            assert_eq!(path, want, "{format:?} query={query}: {}", lines[0]);
            assert_eq!(lines[0].contains("secret"), query, "{}", lines[0]);
            drop(lb);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `n` GETs on one kept-alive connection, each answered 200; their request IDs.
async fn get_ids(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut client = timeout(WAIT, Client::connect(addr)).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..n {
        let a = timeout(WAIT, client.get(&format!("/n/{i}"))).await.unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
        ids.push(a.headers["x-request-id"].to_str().unwrap().to_string());
    }
    ids
}

/// `n` GETs on four connections at once; every status.
async fn get_many(addr: SocketAddr, n: usize) -> Vec<u16> {
    let mut tasks = Vec::new();
    for k in 0..4 {
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(addr).await;
            let mut statuses = Vec::new();
            for i in (k..n).step_by(4) {
                statuses.push(client.get(&format!("/m/{i}")).await.status.as_u16());
            }
            statuses
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(timeout(Duration::from_secs(60), t).await.unwrap().unwrap());
    }
    all
}

fn set(ids: &[String]) -> HashSet<String> {
    ids.iter().cloned().collect()
}

#[tokio::test]
async fn sigusr1_after_a_rename_reopens_without_losing_or_repeating_a_line() {
    let a = spawn_clone("a");
    // No watcher: only the signal may reopen the file.
    let mut lb = BinLb::start(&format!(
        "{}[reload]\nwatch = false\n[log]\naccess = \"json\"\naccess_path = \"access.log\"\n",
        config_text("round-robin", &[(&a, 1)], "")
    ));
    // Relative to lb.toml's folder.
    let log = lb.dir.join("access.log");
    let rotated = lb.dir.join("access.log.1");
    let first = get_ids(lb.addr, 20).await;
    wait_lines(&log, 20, WAIT).await;
    std::fs::rename(&log, &rotated).unwrap();
    // Answered after the rename, before the signal: their lines may be in either file.
    let middle = get_ids(lb.addr, 10).await;
    lb.signal("-USR1");
    assert!(
        eventually(WAIT, || log.exists()).await,
        "SIGUSR1 did not open a new {}",
        log.display()
    );
    let last = get_ids(lb.addr, 20).await;
    assert!(
        eventually(WAIT, || file_lines(&log).len() + file_lines(&rotated).len()
            >= 50)
        .await,
        "lines missing: {} + {}",
        file_lines(&rotated).len(),
        file_lines(&log).len()
    );
    let status = lb.stop();
    assert!(status.success(), "{status:?}");
    let old = ids(&file_lines(&rotated));
    let new = ids(&file_lines(&log));
    let (old_set, new_set) = (set(&old), set(&new));
    assert_eq!(old.len() + new.len(), 50, "old {old:?} new {new:?}");
    assert_eq!(old_set.len() + new_set.len(), 50, "a line written twice");
    assert!(old_set.is_disjoint(&new_set), "a line in both files");
    let all: HashSet<String> = old_set.union(&new_set).cloned().collect();
    let sent: HashSet<String> = [&first[..], &middle[..], &last[..]]
        .concat()
        .into_iter()
        .collect();
    assert_eq!(all, sent);
    assert!(
        set(&first).is_subset(&old_set),
        "lines written before the rename moved"
    );
    assert!(
        set(&last).is_subset(&new_set),
        "lines after the reopen went to the old file"
    );
    // Logged at info.
    assert!(lb
        .log_lines()
        .iter()
        .any(|l| l.contains("SIGUSR1: reopening the access log")));
}

/// The value of an unlabelled counter in `/metrics`.
async fn metric(admin: SocketAddr, name: &str) -> f64 {
    let a = timeout(WAIT, get(admin, "/metrics")).await.unwrap();
    assert_eq!(a.status, 200);
    let text = a.text();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Poll `name` until it is at least `min`; its value then.
async fn metric_reaches(admin: SocketAddr, name: &str, min: f64) -> f64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = metric(admin, name).await;
        if v >= min {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{name} = {v}, never reached {min}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The error lines about the access log.
fn access_errors(lb: &BinLb) -> Vec<String> {
    lb.log_lines()
        .into_iter()
        .filter(|l| l.contains("ERROR") && l.contains("access log"))
        .collect()
}

const WRITE_ERRORS: &str = "clonelb_access_log_write_errors_total";

#[tokio::test]
async fn a_full_disk_is_logged_once_counted_and_never_slows_the_traffic() {
    let a = spawn_clone("a");
    let mut lb = BinLb::start(&format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = \"combined\"\naccess_path = \"/dev/full\"\n",
        config_text("round-robin", &[(&a, 1)], "")
    ));
    let admin = lb.admin.expect("no admin address logged");
    let t = Instant::now();
    let statuses = get_many(lb.addr, 200).await;
    assert_eq!(statuses.len(), 200);
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let took = t.elapsed();
    // Every line is lost and counted, one by one.
    let lost = metric_reaches(admin, WRITE_ERRORS, 200.0).await;
    assert_eq!(lost, 200.0);
    assert!(
        eventually(WAIT, || !access_errors(&lb).is_empty()).await,
        "no error logged"
    );
    let more = get_many(lb.addr, 50).await;
    assert!(more.iter().all(|s| *s == 200));
    assert_eq!(metric_reaches(admin, WRITE_ERRORS, 250.0).await, 250.0);
    assert_eq!(metric(admin, "clonelb_access_log_dropped_total").await, 0.0);
    lb.stop();
    let errors = access_errors(&lb);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("No space left"), "{}", errors[0]);
    eprintln!("200 requests with /dev/full as the access log: {took:?}");
}

#[tokio::test]
async fn a_removed_folder_is_logged_once_counted_and_recovers_on_the_next_reopen() {
    let a = spawn_clone("a");
    let parent = fresh_dir("logs");
    let sub = parent.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    let log = sub.join("access.log");
    let mut lb = BinLb::start(&format!(
        "{}[reload]\nwatch = false\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = \"json\"\naccess_path = \"{}\"\n",
        config_text("round-robin", &[(&a, 1)], ""),
        log.display()
    ));
    let admin = lb.admin.expect("no admin address logged");
    let before = get_ids(lb.addr, 5).await;
    assert_eq!(ids(&wait_lines(&log, 5, WAIT).await), before);

    std::fs::remove_dir_all(&sub).unwrap();
    lb.signal("-USR1");
    // The failed open is the signal's mark.
    assert!(
        eventually(WAIT, || !access_errors(&lb).is_empty()).await,
        "no error logged for the failed reopen"
    );
    let lost = get_ids(lb.addr, 20).await;
    assert_eq!(lost.len(), 20);
    assert_eq!(metric_reaches(admin, WRITE_ERRORS, 20.0).await, 20.0);
    assert_eq!(access_errors(&lb).len(), 1, "{:#?}", access_errors(&lb));

    std::fs::create_dir_all(&sub).unwrap();
    lb.signal("-USR1");
    assert!(
        eventually(WAIT, || log.exists()).await,
        "the second SIGUSR1 did not open a new file"
    );
    let after = get_ids(lb.addr, 10).await;
    assert_eq!(ids(&wait_lines(&log, 10, WAIT).await), after);
    assert_eq!(metric(admin, WRITE_ERRORS).await, 20.0);
    lb.stop();
    assert_eq!(file_lines(&log).len(), 10);
    let errors = access_errors(&lb);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(errors[0].contains("cannot open"), "{}", errors[0]);
    let _ = std::fs::remove_dir_all(parent);
}

#[tokio::test]
async fn a_reload_reopens_even_a_rejected_one() {
    let a = spawn_clone("a");
    let dir = fresh_dir("reload");
    let config = dir.join("lb.toml");
    let text = format!(
        "{}[reload]\nwatch = false\n[log]\naccess = \"json\"\naccess_path = \"access.log\"\n",
        config_text("round-robin", &[(&a, 1)], "")
    );
    std::fs::write(&config, &text).unwrap();
    let lb = clonelb::Balancer::start_from_file_with_workers(&config, 2).unwrap();
    // Relative to lb.toml's folder.
    let log = dir.join("access.log");
    let first = get_ids(lb.http_addr(), 5).await;
    assert_eq!(ids(&wait_lines(&log, 5, WAIT).await), first);

    std::fs::rename(&log, dir.join("access.log.1")).unwrap();
    assert!(matches!(lb.reload(), clonelb::reload::Outcome::Reloaded(_)));
    assert!(
        eventually(WAIT, || log.exists()).await,
        "the reload did not reopen"
    );
    let second = get_ids(lb.http_addr(), 5).await;
    assert_eq!(ids(&wait_lines(&log, 5, WAIT).await), second);

    // A rejected reload reopens too (logrotate's postrotate may run it on a bad file).
    std::fs::rename(&log, dir.join("access.log.2")).unwrap();
    std::fs::write(&config, format!("{text}\nnot toml at all [")).unwrap();
    assert!(matches!(lb.reload(), clonelb::reload::Outcome::Failed(_)));
    assert!(
        eventually(WAIT, || log.exists()).await,
        "the rejected reload did not reopen"
    );
    let third = get_ids(lb.http_addr(), 5).await;
    assert_eq!(ids(&wait_lines(&log, 5, WAIT).await), third);

    timeout(WAIT, tokio::task::spawn_blocking(move || lb.shutdown()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids(&file_lines(&dir.join("access.log.1"))), first);
    assert_eq!(ids(&file_lines(&dir.join("access.log.2"))), second);
    assert_eq!(ids(&file_lines(&log)), third);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_reload_applies_new_access_settings() {
    let a = spawn_clone("a");
    let dir = fresh_dir("settings");
    let config = dir.join("lb.toml");
    let base = format!(
        "{}[reload]\nwatch = false\n",
        config_text("round-robin", &[(&a, 1)], "")
    );
    let with = |log: &str| format!("{base}[log]\n{log}\n");
    std::fs::write(&config, with("access = \"json\"\naccess_path = \"a.log\"")).unwrap();
    let lb = clonelb::Balancer::start_from_file_with_workers(&config, 2).unwrap();
    let reload = |text: String| {
        std::fs::write(&config, text).unwrap();
        assert!(matches!(lb.reload(), clonelb::reload::Outcome::Reloaded(_)));
    };
    let first = get_ids(lb.http_addr(), 2).await;
    assert_eq!(ids(&wait_lines(&dir.join("a.log"), 2, WAIT).await), first);

    // Another file and format.
    reload(with("access = \"combined\"\naccess_path = \"b.log\""));
    let second = get_ids(lb.http_addr(), 2).await;
    let b: Vec<String> = wait_lines(&dir.join("b.log"), 2, WAIT)
        .await
        .iter()
        .map(|l| parse_combined(l).request_id)
        .collect();
    assert_eq!(b, second);

    // Off: nothing more anywhere.
    reload(with("access = \"off\"\naccess_path = \"b.log\""));
    get_ids(lb.http_addr(), 2).await;

    // On again, a third file.
    reload(with("access = \"json\"\naccess_path = \"c.log\""));
    let fourth = get_ids(lb.http_addr(), 2).await;
    assert_eq!(ids(&wait_lines(&dir.join("c.log"), 2, WAIT).await), fourth);

    timeout(WAIT, tokio::task::spawn_blocking(move || lb.shutdown()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ids(&file_lines(&dir.join("a.log"))), first);
    assert_eq!(file_lines(&dir.join("b.log")).len(), 2);
    assert_eq!(ids(&file_lines(&dir.join("c.log"))), fourth);
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files, ["a.log", "b.log", "c.log", "lb.toml"]);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn without_access_path_lines_go_to_stdout_and_the_default_is_off() {
    let a = spawn_clone("a");
    let toml = config_text("round-robin", &[(&a, 1)], "");
    let mut on = BinLb::start(&format!("{toml}[log]\naccess = \"json\"\n"));
    let sent = get_ids(on.addr, 3).await;
    assert!(
        eventually(WAIT, || on.out_lines().len() >= 3).await,
        "stdout: {:?}",
        on.out_lines()
    );
    assert!(on.stop().success());
    assert_eq!(ids(&on.out_lines()), sent);

    let mut off = BinLb::start(&toml);
    assert_eq!(get_ids(off.addr, 3).await.len(), 3);
    assert!(off.stop().success());
    assert_eq!(off.out_lines(), Vec::<String>::new());
    let files: Vec<_> = std::fs::read_dir(&off.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, ["lb.toml"], "files besides lb.toml");
}

/// A named pipe nobody reads: opening it for writing blocks, like a hung disk or mount.
fn stalled_fifo(dir: &Path) -> std::path::PathBuf {
    let fifo = dir.join("access.fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    fifo
}

#[tokio::test]
async fn a_stalled_log_drops_and_counts_lines_and_never_holds_up_requests() {
    use clonelb::access_log::CAPACITY;
    let a = spawn_clone("a");
    let dir = fresh_dir("fifo");
    let fifo = stalled_fifo(&dir);
    let mut lb = BinLb::start(&format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n[log]\naccess = \"json\"\naccess_path = \"{}\"\n",
        config_text("round-robin", &[(&a, 1)], ""),
        fifo.display()
    ));
    let admin = lb.admin.expect("no admin address logged");
    // The writer is stuck opening the pipe: the channel fills, then lines are dropped.
    let n = CAPACITY + 300;
    let t = Instant::now();
    let statuses = get_many(lb.addr, n).await;
    let took = t.elapsed();
    assert_eq!(statuses.len(), n);
    assert!(statuses.iter().all(|s| *s == 200));
    let dropped = metric_reaches(admin, "clonelb_access_log_dropped_total", 300.0).await;
    assert_eq!(dropped, 300.0);
    assert_eq!(metric(admin, WRITE_ERRORS).await, 0.0);
    // A reader comes: the queued lines flow, and a graceful stop ends the stream.
    let reader = std::thread::spawn(move || file_lines(&fifo));
    assert!(lb.stop().success());
    let lines = reader.join().unwrap();
    assert_eq!(lines.len(), CAPACITY);
    let unique: HashSet<String> = ids(&lines).into_iter().collect();
    assert_eq!(unique.len(), CAPACITY);
    eprintln!("{n} requests with a stalled access log: {took:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]

async fn sigterm_stops_the_balancer_while_its_access_log_is_stalled() {
    let a = spawn_clone("a");
    let dir = fresh_dir("fifo");
    let fifo = stalled_fifo(&dir);
    let mut lb = BinLb::start(&format!(
        "{}[log]\naccess = \"json\"\naccess_path = \"{}\"\n",
        config_text("round-robin", &[(&a, 1)], ""),
        fifo.display()
    ));
    assert_eq!(get_ids(lb.addr, 1).await.len(), 1);
    // Nothing in flight: a graceful stop has nothing to wait for.
    // (`stop` panics when the process has not exited 20 s after SIGTERM.)
    assert!(lb.stop().success());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]

async fn sigusr1_with_a_full_access_log_channel_leaves_the_control_plane_working() {
    use clonelb::access_log::CAPACITY;
    let a = spawn_clone("a");
    let dir = fresh_dir("fifo");
    let fifo = stalled_fifo(&dir);
    let lb = BinLb::start(&format!(
        "{}[reload]\nwatch = false\n[log]\naccess = \"json\"\naccess_path = \"{}\"\n",
        config_text("round-robin", &[(&a, 1)], ""),
        fifo.display()
    ));
    let statuses = get_many(lb.addr, CAPACITY + 10).await;
    assert!(statuses.iter().all(|s| *s == 200));
    lb.signal("-USR1");
    assert!(lb.logged("SIGUSR1: reopening the access log", WAIT).await);
    // The control runtime still handles signals: SIGHUP reloads.
    lb.signal("-HUP");
    assert!(
        lb.logged("reloaded", WAIT).await,
        "SIGHUP was not handled after SIGUSR1: {:#?}",
        lb.log_lines()
    );
    drop(lb);
    let _ = std::fs::remove_dir_all(dir);
}

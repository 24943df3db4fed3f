//! The life of upstream (balancer → clone) HTTP/1 connections, seen from outside: a
//! connection the clone closed is replaced without the client noticing; one whose answer
//! had no body goes back to the pool; `Connection: close` is obeyed; a drain cut ends a
//! streaming answer and closes the idle connections too; a client that leaves a large
//! answer costs nothing to the next request; an upgrade after pooled use still tunnels;
//! two workers reuse their connections under concurrency.
//!
//! Clones with special connection behaviour are written here over blocking sockets
//! ([`Upstream`]); the others are `common`'s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/raw.rs"]
mod raw;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use raw::{parse_msg, Msg, Parsed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

/// Await `f`, failing the test when it takes longer than [`WAIT`]: a hang guard (a lost
/// connection must fail the test, not stall it), not a timing assertion.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("no answer within {WAIT:?} (hang guard)"))
}

// ---------------------------------------------------------------------------------------
// A raw clone that counts its connections
// ---------------------------------------------------------------------------------------

/// What the raw clone does with one whole request.
enum Act {
    /// Write the bytes and wait for the next request on the connection.
    Send(Vec<u8>),
    /// Write the bytes, then close the socket (as a clone whose keep-alive timeout just
    /// expired does, without saying so).
    SendClose(Vec<u8>),
    /// Write the bytes (a head and the start of a body), then send nothing more; the
    /// connection stays open until the balancer closes it.
    Stall(Vec<u8>),
    /// Write the bytes (a 101), then echo every byte back until the balancer closes.
    Echo(Vec<u8>),
}

#[derive(Default)]
struct Seen {
    accepted: AtomicU64,
    /// Connections ended, by either side (counted once the socket is closed).
    closed: AtomicU64,
    /// Every whole request, with the index of the connection it came on.
    requests: Mutex<Vec<(usize, Msg)>>,
}

/// A clone on 127.0.0.1 over blocking sockets, one thread per connection: it answers each
/// whole request as `act` says and records what it saw. Stops accepting when dropped.
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
}

type ActFn = dyn Fn(&Msg) -> Act + Send + Sync;

impl Upstream {
    fn start(act: impl Fn(&Msg) -> Act + Send + Sync + 'static) -> Upstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let act: Arc<ActFn> = Arc::new(act);
        let (st, stopping) = (Arc::clone(&seen), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let index = st.accepted.fetch_add(1, SeqCst) as usize;
                let (st, act) = (Arc::clone(&st), Arc::clone(&act));
                std::thread::spawn(move || {
                    serve(stream, index, &st, &*act);
                    st.closed.fetch_add(1, SeqCst);
                });
            }
        });
        Upstream { addr, seen, stop }
    }
    fn accepted(&self) -> u64 {
        self.seen.accepted.load(SeqCst)
    }
    fn closed(&self) -> u64 {
        self.seen.closed.load(SeqCst)
    }
    fn requests(&self) -> Vec<(usize, Msg)> {
        self.seen.requests.lock().unwrap().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

/// Serve one connection; returns when it is over (the socket is closed on return).
fn serve(mut s: std::net::TcpStream, index: usize, seen: &Seen, act: &ActFn) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Parsed::Done(msg, used) = parse_msg(&buf, false) {
            buf.drain(..used);
            let what = act(&msg);
            seen.requests.lock().unwrap().push((index, msg));
            match what {
                Act::Send(b) => {
                    if s.write_all(&b).is_err() {
                        return;
                    }
                }
                Act::SendClose(b) => {
                    let _ = s.write_all(&b);
                    return;
                }
                Act::Stall(b) => {
                    let _ = s.write_all(&b);
                    while matches!(s.read(&mut chunk), Ok(n) if n > 0) {}
                    return;
                }
                Act::Echo(b) => {
                    let _ = s.write_all(&b);
                    if s.write_all(&buf).is_err() {
                        return;
                    }
                    while let Ok(n @ 1..) = s.read(&mut chunk) {
                        if s.write_all(&chunk[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = s.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// lb.toml text for one raw clone named `up`.
fn raw_config(clones: &[SocketAddr], proxy: &str) -> String {
    let mut s = format!("[listen]\nhttp = \"127.0.0.1:0\"\n[proxy]\n{proxy}\n");
    for (i, a) in clones.iter().enumerate() {
        s.push_str(&format!(
            "[[backend]]\naddress = \"{a}\"\nname = \"up{i}\"\n"
        ));
    }
    s
}

/// One worker, so every request shares one shard of idle connections.
fn one_worker(toml: &str) -> clonelb::Balancer {
    let checked = clonelb::config::parse("test.toml", toml).unwrap();
    clonelb::Balancer::start_with_workers(&checked.config, 1).unwrap()
}

/// Whether every TCP socket on this machine whose peer is `clone` has received the clone's
/// FIN (none is ESTABLISHED any more), from the kernel's socket table (Linux:
/// `/proc/net/tcp`). Only the balancer connects to the test's clones, so this says the
/// balancer's kernel has the close: what the balancer's runtime learns in its next poll of
/// the reactor, before it sees a request sent after this held.
fn kernel_saw_close_from(clone: SocketAddr) -> bool {
    let SocketAddr::V4(v4) = clone else {
        panic!("IPv4 only: {clone}")
    };
    // /proc/net/tcp shows the address as the in-memory u32 and the port in host order.
    let peer = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(v4.ip().octets()),
        v4.port()
    );
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    !table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // Field 2: remote address; field 3: state, 01 = ESTABLISHED.
        f.get(2) == Some(&peer.as_str()) && f.get(3) == Some(&"01")
    })
}

// ---------------------------------------------------------------------------------------
// 1. A pooled connection the clone closed
// ---------------------------------------------------------------------------------------

/// Pins: a pooled connection that the clone closed after its last answer (keep-alive
/// promised, then the socket closed, as when a clone's keep-alive timeout expires) is
/// never where the next request is lost. A POST with a 64 KiB body sent after that close
/// is answered 200, and the clone receives it once, whole, on a new connection; `retries =
/// 0`, so no retry on another clone can hide a failure. Whether the balancer drops the
/// dead connection from its pool as soon as the close arrives, or finds it dead only when
/// a request takes it (a pool whose idle connections nobody polls), the request must end
/// up on a new connection.
///
/// Each request waits until the clone's close reached the balancer's kernel (its socket
/// left ESTABLISHED): then the close is in the balancer's event queue before the next
/// request is, which is what makes the outcome a guarantee and not a race. (Without that
/// wait the balancer can write a request on a connection whose FIN its runtime has not
/// read yet; a POST whose body was sent cannot be replayed and would be answered 502. That
/// window is inherent to HTTP/1 keep-alive, not something a balancer can close.)
#[tokio::test]
async fn a_pooled_connection_closed_by_the_clone_is_replaced_transparently() {
    let up = Upstream::start(|m| match m.method_target() {
        ("POST", _) => {
            // The answer is the number of body bytes received.
            let n = m.body.len().to_string();
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{n}", n.len());
            Act::SendClose(answer.into_bytes())
        }
        _ => Act::SendClose(OK.to_vec()),
    });
    let lb = one_worker(&raw_config(&[up.addr], "retries = 0"));
    let body: Bytes = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut client = Client::connect(lb.http_addr()).await;
    let rounds = 20u64;
    for round in 0..rounds {
        // Request 1: a GET, after which the clone closes the connection.
        let a = within(client.get("/")).await;
        assert_eq!(
            (a.status.as_u16(), a.text().as_str()),
            (200, "ok"),
            "round {round}"
        );
        let closed = 2 * round + 1;
        assert!(
            eventually(WAIT, || up.closed() == closed
                && kernel_saw_close_from(up.addr))
            .await,
            "round {round}: the clone's close never reached the balancer"
        );
        // Request 2: a POST with a body, which cannot be replayed once sent.
        let req = http::Request::post("/upload")
            .header("host", "test.local")
            .body(Full::new(body.clone()))
            .unwrap();
        let a = within(client.send(req)).await;
        assert_eq!(a.status, 200, "round {round}: {}", a.text());
        assert_eq!(a.text(), body.len().to_string(), "round {round}");
        assert!(
            eventually(WAIT, || up.closed() == closed + 1
                && kernel_saw_close_from(up.addr))
            .await,
            "round {round}: the clone's second close never reached the balancer"
        );
    }
    // Every request reached the clone exactly once, each on its own connection, and every
    // POST body arrived whole.
    let requests = up.requests();
    assert_eq!(requests.len() as u64, 2 * rounds);
    assert_eq!(up.accepted(), 2 * rounds);
    let posts: Vec<&Msg> = requests
        .iter()
        .map(|(_, m)| m)
        .filter(|m| m.method_target().0 == "POST")
        .collect();
    assert_eq!(posts.len() as u64, rounds);
    for p in posts {
        assert_eq!(p.body, body.as_ref());
    }
    let mut conns: Vec<usize> = requests.iter().map(|(c, _)| *c).collect();
    conns.dedup();
    assert_eq!(
        conns.len() as u64,
        2 * rounds,
        "a connection carried two requests"
    );
    let state = lb.table().backends()[0].state.clone();
    assert_eq!(state.failures_total(), 0);
    assert!(eventually(WAIT, || state.in_flight() == 0).await);
}

// ---------------------------------------------------------------------------------------
// 2. Answers without a body
// ---------------------------------------------------------------------------------------

/// Pins: an answer with no body to read (a HEAD's, a 204, a 304, `Content-Length: 0`, an
/// empty chunked body) ends its request and returns its connection to the pool: 10
/// rounds of each, one after the other on one client connection with one worker, all
/// travel on one upstream connection.
#[tokio::test]
async fn answers_without_a_body_return_their_connection_to_the_pool() {
    let up = Upstream::start(|m| {
        Act::Send(match m.method_target() {
            ("HEAD", "/head") => b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n".to_vec(),
            (_, "/204") => b"HTTP/1.1 204 No Content\r\n\r\n".to_vec(),
            (_, "/304") => b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\n\r\n".to_vec(),
            (_, "/empty") => b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(),
            (_, "/chunked") => {
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec()
            }
            _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
        })
    });
    let lb = one_worker(&raw_config(&[up.addr], ""));
    let mut client = Client::connect(lb.http_addr()).await;
    let kinds = [
        ("HEAD", "/head", 200),
        ("GET", "/204", 204),
        ("GET", "/304", 304),
        ("GET", "/empty", 200),
        ("GET", "/chunked", 200),
    ];
    let rounds = 10;
    for round in 0..rounds {
        for (method, path, status) in kinds {
            let req = http::Request::builder()
                .method(method)
                .uri(path)
                .header("host", "test.local")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let a = within(client.send(req)).await;
            assert_eq!(a.status, status, "{method} {path}, round {round}");
            assert!(a.body.is_empty(), "{method} {path}: {:?}", a.text());
            assert_eq!(
                up.accepted(),
                1,
                "{method} {path} (round {round}) did not give its connection back"
            );
        }
    }
    assert_eq!(up.requests().len(), rounds * kinds.len());
    let state = lb.table().backends()[0].state.clone();
    assert!(eventually(WAIT, || state.in_flight() == 0).await);
    assert_eq!(state.failures_total(), 0);
}

// ---------------------------------------------------------------------------------------
// 3. Connection: close
// ---------------------------------------------------------------------------------------

/// Pins: an answer that says `Connection: close` is the last one on its connection. The
/// clone here says it but leaves the socket open (reading on), so a balancer that pooled
/// the connection anyway would send it the next request and be caught: each of 5
/// requests comes on a new connection, no connection carries a second request, and the
/// balancer closes each one itself.
#[tokio::test]
async fn connection_close_from_the_clone_is_honoured() {
    let up = Upstream::start(|_| {
        Act::Send(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok".to_vec())
    });
    let lb = one_worker(&raw_config(&[up.addr], ""));
    let mut client = Client::connect(lb.http_addr()).await;
    for i in 0..5 {
        let a = within(client.get("/")).await;
        assert_eq!(
            (a.status.as_u16(), a.text().as_str()),
            (200, "ok"),
            "request {i}"
        );
    }
    assert_eq!(up.accepted(), 5);
    let requests = up.requests();
    let conns: Vec<usize> = requests.iter().map(|(c, _)| *c).collect();
    assert_eq!(conns, vec![0, 1, 2, 3, 4]);
    assert!(
        eventually(WAIT, || up.closed() == 5).await,
        "the balancer left {} of 5 told-to-close connections open",
        5 - up.closed()
    );
}

// ---------------------------------------------------------------------------------------
// 4. A drain cut in the middle of a body
// ---------------------------------------------------------------------------------------

/// Reload now; returns the generation running after it (panics when the reload failed).
fn reload_now(lb: &clonelb::Balancer) -> u64 {
    match lb.reload() {
        clonelb::reload::Outcome::Reloaded(s) => s.generation,
        // The watcher applied the edit first.
        clonelb::reload::Outcome::Unchanged => lb.status().generation,
        other => panic!("{other:?}"),
    }
}

/// Pins (beyond reload.rs's `drain_timeout_cuts_what_is_still_in_flight`, which checks
/// only that the client sees an error): when a removed clone's `drain_timeout` passes
/// while an answer is mid-body, the client's transfer ends in an error (never a body that
/// looks complete); the cut is not held against the clone (no failure, no ejection, not
/// down); its in-flight count drops to 0; and every connection to it, the busy one and an
/// idle pooled one alike, is closed (the clone sees both close).
#[tokio::test]
async fn a_drain_cut_mid_body_ends_the_answer_and_closes_every_connection() {
    let up = Upstream::start(|m| match m.method_target().1 {
        // A head promising 1,000,000 bytes, 1,000 of them, then nothing.
        "/stream" => {
            let mut b = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n".to_vec();
            b.extend_from_slice(&[b'x'; 1000]);
            Act::Stall(b)
        }
        _ => Act::Send(OK.to_vec()),
    });
    let other = spawn_clone("other");
    let proxy = "drain_timeout = \"300ms\"";
    let dir = fresh_dir("upconn");
    let path = dir.join("lb.toml");
    std::fs::write(&path, raw_config(&[up.addr], proxy)).unwrap();
    let lb = clonelb::Balancer::start_from_file_with_workers(&path, 1).unwrap();
    let addr = lb.http_addr();
    let state = lb.table().find(up.addr).unwrap().state.clone();

    // The streaming answer: head and first bytes in.
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/stream")
        .header("host", "t")
        .body(empty())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = tokio::time::timeout(WAIT, body.frame())
        .await
        .expect("no first bytes")
        .unwrap()
        .unwrap();
    let mut got = first.data_ref().map_or(0, Bytes::len);
    // A second client's request, on a second upstream connection that then sits idle in
    // the pool.
    assert_eq!(within(get(addr, "/")).await.status, 200);
    assert_eq!(up.accepted(), 2);
    assert_eq!(up.closed(), 0);
    assert_eq!(state.in_flight(), 1);

    // The clone is removed; at drain_timeout what is still on it is cut.
    std::fs::write(&path, config_text("round-robin", &[(&other, 1)], proxy)).unwrap();
    reload_now(&lb);
    let rest = tokio::time::timeout(WAIT, async {
        loop {
            match body.frame().await {
                None => return Ok(got),
                Some(Ok(f)) => got += f.data_ref().map_or(0, Bytes::len),
                Some(Err(e)) => return Err((got, e)),
            }
        }
    })
    .await
    .expect("the answer was not cut");
    let (got, _) = rest.expect_err("a cut answer must end in an error");
    assert!(got < 1_000_000, "{got} bytes");
    assert!(state.is_cut());
    assert!(eventually(WAIT, || state.in_flight() == 0).await);
    assert!(
        eventually(WAIT, || up.closed() == 2).await,
        "{} of 2 connections to the cut clone closed",
        up.closed()
    );
    assert_eq!(state.failures_total(), 0);
    assert_eq!(state.ejections_total(), 0);
    assert!(!state.is_down());
    // Nothing of the removed clone was retried or reused: it saw its two requests only,
    // and the balancer goes on with the other clone.
    let a = within(get(addr, "/")).await;
    assert_eq!((a.status.as_u16(), a.clone_name().as_str()), (200, "other"));
    assert_eq!(up.requests().len(), 2);
    assert_eq!(up.accepted(), 2);
    drop(lb);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// 5. A client that leaves a large answer
// ---------------------------------------------------------------------------------------

/// Pins (beyond abandoned.rs, which uses a dripping body and checks only the next
/// status): a client that hangs up 256 KiB into a 64 MiB download, while the balancer is
/// held back by it, releases the clone (in-flight back to 0), and the next request, on a
/// new client connection, gets a whole and correct body: nothing left over from the
/// abandoned answer reaches it. Three rounds, one worker.
#[tokio::test]
async fn a_client_leaving_a_large_download_costs_the_next_request_nothing() {
    let c = spawn_clone("big");
    let lb = one_worker(&config_text("round-robin", &[(&c, 1)], ""));
    let state = lb.table().backends()[0].state.clone();
    let next_len = 1_000_000u64;
    let want = PatternBody::checksum(next_len);
    for round in 0..3 {
        let mut s = tokio::net::TcpStream::connect(lb.http_addr())
            .await
            .unwrap();
        s.write_all(b"GET /download?bytes=67108864 HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let mut got = 0;
        let mut buf = vec![0u8; 64 * 1024];
        while got < 256 * 1024 {
            let n = tokio::time::timeout(WAIT, s.read(&mut buf))
                .await
                .expect("the download stalled")
                .unwrap();
            assert!(n > 0, "round {round}: closed after {got} bytes");
            got += n;
        }
        drop(s);
        assert!(
            eventually(WAIT, || state.in_flight() == 0).await,
            "round {round}: the abandoned download is still in flight"
        );
        let mut client = Client::connect(lb.http_addr()).await;
        let a = within(client.get(&format!("/download?bytes={next_len}"))).await;
        assert_eq!(a.status, 200, "round {round}");
        let mut sum = Checksum::default();
        sum.update(&a.body);
        assert_eq!(
            sum, want,
            "round {round}: the next download's body is wrong"
        );
        assert!(eventually(WAIT, || state.in_flight() == 0).await);
    }
    assert_eq!(state.failures_total(), 0);
}

// ---------------------------------------------------------------------------------------
// 6. An upgrade after pooled use
// ---------------------------------------------------------------------------------------

/// Pins: a WebSocket handshake sent when the clone's pool holds an idle connection (one
/// worker, so today it rides that very connection) is switched and tunnels bytes both
/// ways; while the tunnel is open plain requests are still answered (they are not sent
/// into the tunnel); the tunnel counts as in flight until it closes; and afterwards the
/// tunnel's connection is never used for a plain request (a request written into the echo
/// would come back as a malformed answer).
#[tokio::test]
async fn an_upgrade_after_pooled_use_still_tunnels() {
    let up = Upstream::start(|m| {
        match m.method_target().1 {
        "/ws" => Act::Echo(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                .to_vec(),
        ),
        _ => Act::Send(OK.to_vec()),
    }
    });
    let lb = one_worker(&raw_config(&[up.addr], "retries = 0"));
    let state = lb.table().backends()[0].state.clone();
    let mut plain = Client::connect(lb.http_addr()).await;
    for _ in 0..3 {
        assert_eq!(within(plain.get("/")).await.status, 200);
    }
    assert_eq!(up.accepted(), 1);

    let mut ws = tokio::net::TcpStream::connect(lb.http_addr())
        .await
        .unwrap();
    ws.write_all(
        b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, ws.read(&mut byte))
            .await
            .expect("no answer to the handshake")
            .unwrap();
        assert_eq!(n, 1, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    async fn echo(ws: &mut tokio::net::TcpStream, text: &[u8]) {
        ws.write_all(text).await.unwrap();
        let mut back = vec![0u8; text.len()];
        tokio::time::timeout(WAIT, ws.read_exact(&mut back))
            .await
            .expect("no echo")
            .unwrap();
        assert_eq!(back, text);
    }
    echo(&mut ws, b"first frame, as raw bytes").await;
    assert_eq!(state.in_flight(), 1);
    // Plain requests meanwhile, on other connections.
    for _ in 0..3 {
        let a = within(plain.get("/")).await;
        assert_eq!((a.status.as_u16(), a.text().as_str()), (200, "ok"));
    }
    echo(&mut ws, b"second frame").await;
    drop(ws);
    assert!(eventually(WAIT, || state.in_flight() == 0).await);
    for _ in 0..3 {
        let a = within(plain.get("/")).await;
        assert_eq!((a.status.as_u16(), a.text().as_str()), (200, "ok"));
        let a = within(get(lb.http_addr(), "/")).await;
        assert_eq!((a.status.as_u16(), a.text().as_str()), (200, "ok"));
    }
    // Only the handshake went over the tunnel's connection after it.
    let requests = up.requests();
    let (ws_conn, _) = requests
        .iter()
        .find(|(_, m)| m.method_target().1 == "/ws")
        .unwrap();
    let after: Vec<&str> = requests
        .iter()
        .skip_while(|(_, m)| m.method_target().1 != "/ws")
        .skip(1)
        .filter(|(c, _)| c == ws_conn)
        .map(|(_, m)| m.start.as_str())
        .collect();
    assert!(after.is_empty(), "{after:?}");
    assert_eq!(state.failures_total(), 0);
}

// ---------------------------------------------------------------------------------------
// 7. Two workers
// ---------------------------------------------------------------------------------------

/// Pins: with two workers, 200 sequential requests over 4 client connections and then
/// 32 client connections sending 8 requests each at once are all answered 200 with
/// whole, correct bodies of assorted sizes, and the clone sees no more upstream
/// connections than the peak concurrency (32) plus a small margin: connections are
/// reused, not opened per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_answer_correctly_and_reuse_their_connections() {
    const SIZES: [u64; 7] = [0, 1, 7, 1000, 65_536, 65_537, 300_000];
    let c = spawn_clone("two");
    let lb = spawn_lb(&config_text("round-robin", &[(&c, 1)], ""));
    let addr = lb.http_addr();
    let sums: Arc<Vec<Checksum>> =
        Arc::new(SIZES.iter().map(|&n| PatternBody::checksum(n)).collect());
    fn check(a: &Answer, i: usize, sums: &[Checksum], what: &str) {
        assert_eq!(a.status, 200, "{what}");
        let mut sum = Checksum::default();
        sum.update(&a.body);
        assert_eq!(sum, sums[i % SIZES.len()], "{what}: {} bytes", a.body.len());
    }

    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(Client::connect(addr).await);
    }
    for i in 0..200 {
        let path = format!("/download?bytes={}", SIZES[i % SIZES.len()]);
        let a = within(clients[i % 4].get(&path)).await;
        check(&a, i, &sums, &format!("sequential request {i}"));
    }

    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let sums = Arc::clone(&sums);
            tokio::spawn(async move {
                let mut client = Client::connect(addr).await;
                for k in 0..8 {
                    let i = t + k;
                    let path = format!("/download?bytes={}", SIZES[i % SIZES.len()]);
                    let a = within(client.get(&path)).await;
                    check(&a, i, &sums, &format!("client {t}, request {k}"));
                }
            })
        })
        .collect();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("concurrent clients stalled")
            .unwrap();
    }
    assert_eq!(c.hits(), 200 + 32 * 8);
    assert!(
        c.connections() <= 32 + 4,
        "{} upstream connections for 32 concurrent requests",
        c.connections()
    );
    let state = lb.table().backends()[0].state.clone();
    assert!(eventually(WAIT, || state.in_flight() == 0).await);
    assert_eq!(state.failures_total(), 0);
}

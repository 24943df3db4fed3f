//! Raw HTTP/1 over plain sockets, for tests that must control every byte: a minimal message
//! parser (head, then a Content-Length or chunked body), a client that writes exact bytes
//! and reads the answer until EOF, and a scripted clone that records exactly what it
//! received on each connection.
//!
//! Included with `#[path = "common/raw.rs"] mod raw;` (it is not part of `common`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------

/// One HTTP/1 message as it was on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    /// The request line or status line.
    pub start: String,
    /// Header fields in order, names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked when it was chunked.
    pub body: Vec<u8>,
    /// The body was framed by chunked encoding.
    pub chunked: bool,
}

impl Msg {
    /// Every value of `name`, in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The only value of `name` (panics when it occurs more than once).
    pub fn one(&self, name: &str) -> Option<&str> {
        let all = self.all(name);
        assert!(
            all.len() <= 1,
            "{name} occurs {} times in {self:?}",
            all.len()
        );
        all.first().copied()
    }

    pub fn has(&self, name: &str) -> bool {
        !self.all(name).is_empty()
    }

    /// The status code of a response.
    pub fn status(&self) -> u16 {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not a status line: {:?}", self.start))
    }

    /// Method and target of a request.
    pub fn method_target(&self) -> (&str, &str) {
        let mut it = self.start.split(' ');
        (it.next().unwrap_or(""), it.next().unwrap_or(""))
    }

    /// Whether `Connection` lists `close`.
    pub fn says_close(&self) -> bool {
        self.all("connection")
            .iter()
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("close"))
    }
}

/// The result of trying to parse one message at the start of a buffer.
#[derive(Debug)]
pub enum Parsed {
    /// A whole message and how many bytes it took.
    Done(Msg, usize),
    /// Not enough bytes yet.
    Partial,
    /// Not HTTP/1 as this parser understands it.
    Bad(String),
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parse one message. Requests: a body by chunked or Content-Length, else none. Responses:
/// the same, except that one with neither takes the rest of the buffer (read to EOF).
pub fn parse_msg(buf: &[u8], response: bool) -> Parsed {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Parsed::Partial;
    };
    let Ok(head) = std::str::from_utf8(&buf[..end]) else {
        return Parsed::Bad("head is not UTF-8".into());
    };
    let mut lines = head.split("\r\n");
    let start = lines.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    for line in lines {
        let Some((n, v)) = line.split_once(':') else {
            return Parsed::Bad(format!("header line without a colon: {line:?}"));
        };
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let body_at = end + 4;
    let mut msg = Msg {
        start,
        headers,
        body: Vec::new(),
        chunked: false,
    };
    let chunked = msg
        .all("transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    if response && (msg.status() < 200 || msg.status() == 204 || msg.status() == 304) {
        return Parsed::Done(msg, body_at);
    }
    if chunked {
        msg.chunked = true;
        return match parse_chunked(&buf[body_at..]) {
            Ok(Some((body, used))) => {
                msg.body = body;
                Parsed::Done(msg, body_at + used)
            }
            Ok(None) => Parsed::Partial,
            Err(e) => Parsed::Bad(e),
        };
    }
    let lengths = msg.all("content-length");
    if let Some(v) = lengths.first() {
        let Ok(len) = v.parse::<usize>() else {
            return Parsed::Bad(format!("bad content-length {v:?}"));
        };
        if buf.len() < body_at + len {
            return Parsed::Partial;
        }
        msg.body = buf[body_at..body_at + len].to_vec();
        return Parsed::Done(msg, body_at + len);
    }
    if response {
        msg.body = buf[body_at..].to_vec();
        return Parsed::Done(msg, buf.len());
    }
    Parsed::Done(msg, body_at)
}

/// A chunked body at the start of `b`: the data and the bytes used, `None` if incomplete.
fn parse_chunked(b: &[u8]) -> Result<Option<(Vec<u8>, usize)>, String> {
    let mut pos = 0;
    let mut body = Vec::new();
    loop {
        let Some(nl) = find(&b[pos..], b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&b[pos..pos + nl]).map_err(|_| "chunk size not UTF-8")?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size line {line:?}"))?;
        pos += nl + 2;
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let Some(nl) = find(&b[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += nl + 2;
                if nl == 0 {
                    return Ok(Some((body, pos)));
                }
            }
        }
        let Some(after) = pos.checked_add(size).and_then(|p| p.checked_add(2)) else {
            return Err("chunk size overflows".into());
        };
        if b.len() < after {
            return Ok(None);
        }
        body.extend_from_slice(&b[pos..pos + size]);
        if &b[pos + size..after] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        pos = after;
    }
}

/// Every whole message at the start of `buf`, and the bytes left after them.
pub fn parse_all(buf: &[u8], response: bool) -> (Vec<Msg>, Vec<u8>) {
    let mut msgs = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        match parse_msg(&buf[at..], response) {
            Parsed::Done(m, used) => {
                msgs.push(m);
                at += used;
            }
            Parsed::Partial | Parsed::Bad(_) => break,
        }
    }
    (msgs, buf[at..].to_vec())
}

/// A chunked body: the given chunks, then the last chunk.
pub fn chunked(chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

// ---------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------

/// What came back on one raw connection.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    pub bytes: Vec<u8>,
    /// The peer closed (EOF or reset) within the time allowed.
    pub closed: bool,
}

impl RawAnswer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The whole responses in the answer, and what follows them.
    pub fn responses(&self) -> (Vec<Msg>, Vec<u8>) {
        parse_all(&self.bytes, true)
    }

    /// The one and only response (panics, showing the bytes, otherwise).
    pub fn only(&self) -> Msg {
        let (msgs, rest) = self.responses();
        assert!(
            msgs.len() == 1 && rest.is_empty(),
            "expected exactly one whole response, got {} and {} bytes after: {:?}",
            msgs.len(),
            rest.len(),
            self.text()
        );
        msgs.into_iter().next().unwrap()
    }
}

/// How long a raw exchange waits for the peer to close.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Connect, write `bytes` in one write, and read until the peer closes or `limit` passes.
pub async fn exchange(addr: SocketAddr, bytes: &[u8], limit: Duration) -> RawAnswer {
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The peer may close before it read everything (e.g. an oversized head): not an error.
    let _ = s.write_all(bytes).await;
    read_answer(&mut s, None, limit).await
}

/// Connect, write `bytes`, and read until `responses` whole responses arrived, the peer
/// closes, or `limit` passes. The connection is returned for further use.
pub async fn exchange_keep(
    addr: SocketAddr,
    bytes: &[u8],
    responses: usize,
    limit: Duration,
) -> (TcpStream, RawAnswer) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let a = read_answer(&mut s, Some(responses), limit).await;
    (s, a)
}

/// Read until EOF (or a reset), until `responses` whole responses are in (if given), or
/// until `limit` passes.
pub async fn read_answer(
    s: &mut TcpStream,
    responses: Option<usize>,
    limit: Duration,
) -> RawAnswer {
    let deadline = Instant::now() + limit;
    let mut bytes = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if let Some(n) = responses {
            if parse_all(&bytes, true).0.len() >= n {
                return RawAnswer {
                    bytes,
                    closed: false,
                };
            }
        }
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => {
                return RawAnswer {
                    bytes,
                    closed: false,
                }
            }
            Ok(Ok(0)) => {
                return RawAnswer {
                    bytes,
                    closed: true,
                }
            }
            Ok(Ok(n)) => bytes.extend_from_slice(&chunk[..n]),
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
                ) =>
            {
                return RawAnswer {
                    bytes,
                    closed: true,
                }
            }
            Ok(Err(e)) => panic!("read failed: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// A scripted, recording clone
// ---------------------------------------------------------------------------------------

/// What a [`RawClone`] does with one whole request.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Written as is.
    pub bytes: Vec<u8>,
    /// Close the connection after writing.
    pub close: bool,
}

impl Reply {
    pub const OK: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    /// The fixed small valid answer.
    pub fn ok() -> Reply {
        Reply {
            bytes: Self::OK.to_vec(),
            close: false,
        }
    }
    pub fn send(bytes: &[u8]) -> Reply {
        Reply {
            bytes: bytes.to_vec(),
            close: false,
        }
    }
    pub fn send_and_close(bytes: &[u8]) -> Reply {
        Reply {
            bytes: bytes.to_vec(),
            close: true,
        }
    }
    /// Close without a byte.
    pub fn close() -> Reply {
        Reply {
            bytes: Vec::new(),
            close: true,
        }
    }
}

/// Everything one connection to a [`RawClone`] carried towards it.
#[derive(Debug, Clone, Default)]
pub struct Recorded {
    pub bytes: Vec<u8>,
    /// The connection has ended (the balancer closed it, or the clone did).
    pub closed: bool,
}

impl Recorded {
    /// The whole requests received, and the bytes after them (a partial or unparsable
    /// request).
    pub fn requests(&self) -> (Vec<Msg>, Vec<u8>) {
        parse_all(&self.bytes, false)
    }
}

type Script = dyn Fn(usize, usize) -> Reply + Send + Sync;

/// A clone on 127.0.0.1 written over raw sockets: it records every byte received per
/// connection, finds where each request ends, and answers it as `script(connection
/// index, request index on that connection)` says. Stops accepting when dropped.
pub struct RawClone {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>>,
    stop: Arc<AtomicBool>,
}

impl RawClone {
    /// The recording clone: answers every request with [`Reply::OK`].
    pub fn recorder() -> RawClone {
        RawClone::scripted(|_, _| Reply::ok())
    }

    pub fn scripted(script: impl Fn(usize, usize) -> Reply + Send + Sync + 'static) -> RawClone {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let script: Arc<Script> = Arc::new(script);
        let (all, stopping) = (Arc::clone(&conns), Arc::clone(&stop));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let rec = Arc::new(Mutex::new(Recorded::default()));
                let index = {
                    let mut all = all.lock().unwrap();
                    all.push(Arc::clone(&rec));
                    all.len() - 1
                };
                let script = Arc::clone(&script);
                std::thread::spawn(move || serve_raw(stream, index, &rec, &*script));
            }
        });
        RawClone { addr, conns, stop }
    }

    /// A snapshot of every connection so far.
    pub fn connections(&self) -> Vec<Recorded> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.lock().unwrap().clone())
            .collect()
    }

    pub fn total_bytes(&self) -> usize {
        self.connections().iter().map(|c| c.bytes.len()).sum()
    }

    /// Every whole request received, over all connections.
    pub fn requests(&self) -> Vec<Msg> {
        self.connections()
            .iter()
            .flat_map(|c| c.requests().0)
            .collect()
    }

    pub fn all_closed(&self) -> bool {
        self.connections().iter().all(|c| c.closed)
    }
}

impl Drop for RawClone {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

fn serve_raw(
    mut stream: std::net::TcpStream,
    index: usize,
    rec: &Mutex<Recorded>,
    script: &Script,
) {
    let mut consumed = 0;
    let mut served = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let pending = {
            let mut r = rec.lock().unwrap();
            r.bytes.extend_from_slice(&buf[..n]);
            r.bytes[consumed..].to_vec()
        };
        let mut at = 0;
        while let Parsed::Done(_, used) = parse_msg(&pending[at..], false) {
            at += used;
            let reply = script(index, served);
            served += 1;
            if stream.write_all(&reply.bytes).is_err() {
                break;
            }
            if reply.close {
                let _ = stream.shutdown(Shutdown::Both);
                rec.lock().unwrap().closed = true;
                return;
            }
        }
        consumed += at;
    }
    rec.lock().unwrap().closed = true;
}

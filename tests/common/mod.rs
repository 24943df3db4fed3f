//! Test helpers: clones written here (real hyper servers on 127.0.0.1:0 that count what
//! they receive and can be slow, hang or stream big bodies on command), a balancer started
//! from lb.toml text, and a small HTTP/1.1 client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub mod dns;

/// What a test clone saw.
#[derive(Default)]
pub struct CloneStats {
    pub hits: AtomicU64,
    pub connections: AtomicU64,
    /// Requests currently parked on `/hold`.
    pub held: AtomicU64,
    /// Headers of the last request, for header tests.
    pub last_headers: Mutex<Option<HeaderMap>>,
    /// Health checks (`/healthz`) seen.
    pub checks: AtomicU64,
    /// When each health check arrived.
    pub check_times: Mutex<Vec<Instant>>,
    /// Status `/healthz` answers (0 = 200).
    pub health_status: AtomicU16,
    /// Accept connections but answer nothing at all.
    pub mute: AtomicBool,
    /// When each counted request arrived.
    pub hit_times: Mutex<Vec<Instant>>,
    /// The code version it runs ([`TestClone::set_version`]); `None`: it says none.
    pub version: Mutex<Option<String>>,
}

/// A clone app server for tests. Paths:
/// * `/` and anything else: `clone=<name>`;
/// * `/slow?ms=N`: answers after N ms;
/// * `/hang`: never answers;
/// * `/hold`: answers when the test calls [`TestClone::release`];
/// * `/upload`: reads the whole body, answers `<bytes> <checksum>`;
/// * `/download?bytes=N`: streams N bytes of [`PatternBody`];
/// * `/hop`: answers with hop-by-hop headers set;
/// * `/status?code=N`: answers status N;
/// * `/drip?chunks=N&ms=M`: streams N chunks of [`DRIP_CHUNK`] bytes, one every M ms;
/// * `/abort`: reads one body frame, then drops the connection without answering;
/// * `/healthz`: answers [`CloneStats::health_status`] and is not counted in `hits`.
///
/// Once [`TestClone::set_version`] is called, `/healthz` also sends the version in
/// `x-clone-version`, and every text body ends with ` version=<v>` (`clone=a version=v2`;
/// read back with [`Answer::version`]). Without it, bodies are exactly as listed above.
pub struct TestClone {
    pub name: String,
    pub addr: SocketAddr,
    pub stats: Arc<CloneStats>,
    release: watch::Sender<u64>,
    stop: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    stopped: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
}

impl TestClone {
    pub fn hits(&self) -> u64 {
        self.stats.hits.load(SeqCst)
    }
    pub fn connections(&self) -> u64 {
        self.stats.connections.load(SeqCst)
    }
    pub fn held(&self) -> u64 {
        self.stats.held.load(SeqCst)
    }
    /// Let every request parked on `/hold` answer.
    pub fn release(&self) {
        self.release.send_modify(|g| *g += 1);
    }
    /// Requests that arrived after `t`.
    pub fn hits_after(&self, t: Instant) -> usize {
        self.stats
            .hit_times
            .lock()
            .unwrap()
            .iter()
            .filter(|&&h| h > t)
            .count()
    }
    pub fn last_headers(&self) -> HeaderMap {
        self.stats.last_headers.lock().unwrap().clone().unwrap()
    }
    pub fn checks(&self) -> u64 {
        self.stats.checks.load(SeqCst)
    }
    pub fn set_health(&self, status: u16) {
        self.stats.health_status.store(status, SeqCst);
    }
    /// From now on, run code version `v`: health checks report it in `x-clone-version`
    /// and every text answer carries it (an answer's version is read when it is sent, so
    /// a request in flight across the change answers with the new one).
    pub fn set_version(&self, v: &str) {
        *self.stats.version.lock().unwrap() = Some(v.to_string());
    }
    /// The version set by [`TestClone::set_version`], if any.
    pub fn version(&self) -> Option<String> {
        self.stats.version.lock().unwrap().clone()
    }
    /// Stop at once: the listener and every open connection are closed (as a crashed
    /// process's would be). Returns once they are.
    pub fn kill(&self) {
        drop(self.stop.lock().unwrap().take());
        if let Some(rx) = self.stopped.lock().unwrap().take() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }
}

impl Drop for TestClone {
    fn drop(&mut self) {
        drop(self.stop.lock().unwrap().take());
    }
}

/// Start a clone on its own thread and runtime (so it outlives nothing and needs nothing
/// from the test's runtime). It stops when the handle is dropped.
pub fn spawn_clone(name: &str) -> TestClone {
    spawn_clone_at(name, "127.0.0.1:0".parse().unwrap())
}

/// A clone on a given address (to restart a killed one where it was, or on another
/// loopback IP such as 127.0.0.2).
pub fn spawn_clone_at(name: &str, at: SocketAddr) -> TestClone {
    try_spawn_clone_at(name, at).unwrap_or_else(|e| panic!("cannot listen on {at}: {e}"))
}

/// As [`spawn_clone_at`], but a failure to listen on `at` (e.g. the port is taken) is
/// returned.
pub fn try_spawn_clone_at(name: &str, at: SocketAddr) -> std::io::Result<TestClone> {
    let stats = Arc::new(CloneStats::default());
    let (release, release_rx) = watch::channel(0u64);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let (stopped_tx, stopped_rx) = std::sync::mpsc::channel::<()>();
    let st = Arc::clone(&stats);
    let n = name.to_string();
    std::thread::spawn(move || {
        run_local(async move {
            let listener = match TcpListener::bind(at).await {
                Ok(l) => l,
                Err(e) => {
                    let _ = addr_tx.send(Err(e));
                    return;
                }
            };
            addr_tx.send(Ok(listener.local_addr().unwrap())).unwrap();
            let stop = tokio::task::spawn_blocking(move || {
                let _ = stop_rx.recv();
            });
            let serve = async {
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    st.connections.fetch_add(1, SeqCst);
                    let st = Arc::clone(&st);
                    let n = n.clone();
                    let rel = release_rx.clone();
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| {
                            clone_service(req, n.clone(), Arc::clone(&st), rel.clone())
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            };
            tokio::select! {
                _ = serve => {}
                _ = stop => {}
            }
        });
        // The runtime is gone, and with it every connection task and socket.
        let _ = stopped_tx.send(());
    });
    let addr = addr_rx.recv().unwrap()?;
    Ok(TestClone {
        name: name.to_string(),
        addr,
        stats,
        release,
        stop: Mutex::new(Some(stop_tx)),
        stopped: Mutex::new(Some(stopped_rx)),
    })
}

/// One clone on each loopback IP of `ips` (e.g. `["127.0.0.1", "127.0.0.2", "127.0.0.3"]`),
/// all on the same port, as one DNS name's A records describe them: the port and the clones
/// in `ips`' order, each named `PREFIX/IP:PORT` (the name clonelb gives a clone of a name
/// with `name = "PREFIX"`, so [`Answer::clone_name`] matches /status). The port is one
/// free on the first IP, then tried on the others; taken there, another is tried.
pub fn clones_on_ips(name_prefix: &str, ips: &[&str]) -> (u16, Vec<TestClone>) {
    let ips: Vec<std::net::IpAddr> = ips.iter().map(|ip| ip.parse().unwrap()).collect();
    assert!(
        ips.iter().all(|ip| ip.is_loopback()),
        "tests use 127.0.0.0/8 only: {ips:?}"
    );
    for _ in 0..50 {
        let Ok(probe) = std::net::TcpListener::bind(SocketAddr::new(ips[0], 0)) else {
            continue;
        };
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        // The port may be taken on any IP, the first too (by someone else in between).
        let clones: Result<Vec<TestClone>, _> = ips
            .iter()
            .map(|ip| {
                let at = SocketAddr::new(*ip, port);
                try_spawn_clone_at(&format!("{name_prefix}/{at}"), at)
            })
            .collect();
        if let Ok(clones) = clones {
            return (port, clones);
        }
    }
    panic!("no port free on all of {ips:?} in 50 tries");
}

fn query(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

type TestBody = http_body_util::Either<Full<Bytes>, PatternBody>;

async fn clone_service(
    req: Request<Incoming>,
    name: String,
    stats: Arc<CloneStats>,
    mut release: watch::Receiver<u64>,
) -> Result<Response<TestBody>, std::io::Error> {
    if stats.mute.load(SeqCst) {
        std::future::pending::<()>().await;
    }
    if req.uri().path() == "/healthz" {
        // Counted before the version is read: a check counted after a `set_version`
        // reports the new version.
        stats.checks.fetch_add(1, SeqCst);
        stats.check_times.lock().unwrap().push(Instant::now());
        let mut r = Response::new(http_body_util::Either::Left(Full::new(Bytes::from("ok"))));
        *r.status_mut() = match stats.health_status.load(SeqCst) {
            0 => StatusCode::OK,
            s => StatusCode::from_u16(s).unwrap(),
        };
        if let Some(v) = stats.version.lock().unwrap().as_deref() {
            r.headers_mut()
                .insert("x-clone-version", v.parse().unwrap());
        }
        return Ok(r);
    }
    stats.hit_times.lock().unwrap().push(Instant::now());
    stats.hits.fetch_add(1, SeqCst);
    *stats.last_headers.lock().unwrap() = Some(req.headers().clone());
    // The version is read when the answer is made (after any wait), as a real process
    // answers with the code it runs then.
    let text = |s: String| {
        let s = match stats.version.lock().unwrap().as_deref() {
            Some(v) => format!("{s} version={v}"),
            None => s,
        };
        http_body_util::Either::Left(Full::new(Bytes::from(s)))
    };
    let mut resp = match req.uri().path() {
        "/slow" => {
            let ms = query(&req, "ms").unwrap_or(100);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(text(format!("clone={name}")))
        }
        "/hang" => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        "/hold" => {
            let generation = *release.borrow();
            stats.held.fetch_add(1, SeqCst);
            let _ = release.wait_for(|g| *g > generation).await;
            stats.held.fetch_sub(1, SeqCst);
            Response::new(text(format!("clone={name}")))
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut sum = Checksum::default();
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Some(d) = f.data_ref() {
                            sum.update(d);
                        }
                    }
                    Err(_) => break,
                }
            }
            Response::new(text(format!("{} {}", sum.len, sum.value())))
        }
        "/download" => {
            let n = query(&req, "bytes").unwrap_or(0);
            Response::new(http_body_util::Either::Right(PatternBody::new(n)))
        }
        "/hop" => {
            let mut r = Response::new(text(format!("clone={name}")));
            let h = r.headers_mut();
            h.insert("connection", "x-clone-private".parse().unwrap());
            h.insert("x-clone-private", "secret".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            h.insert("x-kept", "yes".parse().unwrap());
            r
        }
        "/drip" => {
            let chunks = query(&req, "chunks").unwrap_or(10);
            let ms = query(&req, "ms").unwrap_or(100);
            Response::new(http_body_util::Either::Right(PatternBody::dripping(
                chunks,
                Duration::from_millis(ms),
            )))
        }
        "/status" => {
            let code = query(&req, "code").unwrap_or(200) as u16;
            let mut r = Response::new(text(format!("clone={name} status={code}")));
            *r.status_mut() = StatusCode::from_u16(code).unwrap();
            r
        }
        "/abort" => {
            let mut body = req.into_body();
            let _ = body.frame().await;
            // An error from the service makes hyper drop the connection unanswered.
            return Err(std::io::Error::other("clone aborts the exchange"));
        }
        _ => Response::new(text(format!("clone={name}"))),
    };
    resp.headers_mut().insert("x-clone", name.parse().unwrap());
    Ok(resp)
}

/// An order-sensitive checksum of a byte stream (Fletcher style over 8-byte words, so it
/// stays quick in debug builds); chunk boundaries do not matter.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub struct Checksum {
    pub len: u64,
    a: u64,
    b: u64,
    pending: [u8; 8],
}

impl Checksum {
    pub fn update(&mut self, mut data: &[u8]) {
        let have = (self.len % 8) as usize;
        self.len += data.len() as u64;
        if have > 0 {
            let take = (8 - have).min(data.len());
            self.pending[have..have + take].copy_from_slice(&data[..take]);
            data = &data[take..];
            if have + take < 8 {
                return;
            }
            self.word(u64::from_le_bytes(self.pending));
        }
        let mut words = data.chunks_exact(8);
        for w in &mut words {
            self.word(u64::from_le_bytes(w.try_into().unwrap()));
        }
        let rest = words.remainder();
        self.pending[..rest.len()].copy_from_slice(rest);
    }
    fn word(&mut self, w: u64) {
        self.a = self.a.wrapping_add(w);
        self.b = self.b.wrapping_add(self.a);
    }
    pub fn value(&self) -> u64 {
        let tail = (self.len % 8) as usize;
        let mut last = [0u8; 8];
        last[..tail].copy_from_slice(&self.pending[..tail]);
        self.b
            .wrapping_add(self.a.rotate_left(17))
            .wrapping_add(u64::from_le_bytes(last))
            ^ self.len
    }
}

const CHUNK: usize = 64 * 1024;

/// 64 KiB of pseudo-random bytes, twice over, so any rotation is one slice.
fn pattern_block() -> Bytes {
    static BLOCK: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    BLOCK
        .get_or_init(|| {
            let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
            let one: Vec<u8> = (0..CHUNK)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            Bytes::from([one.clone(), one].concat())
        })
        .clone()
}

/// A body of `len` pseudo-random bytes in 64 KiB chunks (each chunk a different rotation of
/// one block, so reordering or loss changes the checksum); never held whole.
pub struct PatternBody {
    sent: u64,
    len: u64,
    block: Bytes,
    /// For a dripping body: the pause before each chunk.
    drip: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
}

pub const DRIP_CHUNK: u64 = 1000;

impl PatternBody {
    pub fn new(len: u64) -> Self {
        PatternBody {
            sent: 0,
            len,
            block: pattern_block(),
            drip: None,
        }
    }
    /// `chunks` chunks of [`DRIP_CHUNK`] bytes, one every `every`.
    pub fn dripping(chunks: u64, every: Duration) -> Self {
        PatternBody {
            sent: 0,
            len: chunks * DRIP_CHUNK,
            block: pattern_block(),
            drip: Some((every, Box::pin(tokio::time::sleep(every)))),
        }
    }
    pub fn checksum(len: u64) -> Checksum {
        let mut c = Checksum::default();
        let mut body = PatternBody::new(len);
        while let Some(chunk) = body.next_chunk() {
            c.update(&chunk);
        }
        c
    }
    fn next_chunk(&mut self) -> Option<Bytes> {
        if self.sent >= self.len {
            return None;
        }
        let max = if self.drip.is_some() {
            DRIP_CHUNK
        } else {
            CHUNK as u64
        };
        let n = (self.len - self.sent).min(max) as usize;
        let k = ((self.sent / CHUNK as u64) * 7919 % CHUNK as u64) as usize;
        self.sent += n as u64;
        Some(self.block.slice(k..k + n))
    }
}

impl Body for PatternBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let more = self.sent < self.len;
        if let Some((every, sleep)) = &mut self.drip {
            if more {
                std::task::ready!(sleep.as_mut().poll(cx));
                let next = tokio::time::Instant::now() + *every;
                sleep.as_mut().reset(next);
            }
        }
        Poll::Ready(self.next_chunk().map(|c| Ok(Frame::data(c))))
    }
    fn is_end_stream(&self) -> bool {
        self.sent >= self.len
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len - self.sent)
    }
}

/// lb.toml text for `clones` behind a listener on a free port.
pub fn config_text(strategy: &str, clones: &[(&TestClone, u32)], proxy: &str) -> String {
    let mut s = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[balancer]\nstrategy = \"{strategy}\"\n[proxy]\n{proxy}\n"
    );
    for (c, w) in clones {
        s.push_str(&format!(
            "[[backend]]\naddress = \"{}\"\nname = \"{}\"\nweight = {w}\n",
            c.addr, c.name
        ));
    }
    s
}

/// A balancer started in this process from lb.toml text.
pub fn spawn_lb(toml: &str) -> clonelb::Balancer {
    let checked = clonelb::config::parse("test.toml", toml).unwrap();
    clonelb::Balancer::start_with_workers(&checked.config, 2).unwrap()
}

/// A response read whole.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// clonelb's own plain-text answer without its last line, `request id: ID`, which
    /// must name the response's `X-Request-Id`.
    pub fn error_line(&self) -> String {
        let text = self.text();
        let id = self.headers.get("x-request-id").expect("no x-request-id");
        let last = format!("request id: {}\n", id.to_str().unwrap());
        assert!(text.ends_with(&last), "{text:?} does not end with {last:?}");
        text[..text.len() - last.len()].to_string()
    }
    pub fn clone_name(&self) -> String {
        self.headers
            .get("x-clone")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
    /// The code version a test clone put in the body (` version=<v>`, see
    /// [`TestClone::set_version`]); `None` when it runs none (or the answer is not a
    /// clone's).
    pub fn version(&self) -> Option<String> {
        self.text()
            .split_whitespace()
            .find_map(|w| w.strip_prefix("version="))
            .map(str::to_string)
    }
}

/// One kept-alive HTTP/1.1 client connection.
pub struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Client { sender }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Answer {
        self.sender.ready().await.unwrap();
        let resp = self.sender.send_request(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub async fn get(&mut self, path: &str) -> Answer {
        self.send(
            Request::get(path)
                .header("host", "test.local")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
    }
}

/// GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> Answer {
    Client::connect(addr).await.get(path).await
}

/// Count answers by the clone that gave them.
pub fn tally(names: impl IntoIterator<Item = String>) -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for n in names {
        *m.entry(n).or_insert(0) += 1;
    }
    m
}

/// Poll `cond` every 10 ms until it holds or `limit` passes; returns whether it held.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// As [`eventually`], for a condition that needs to await (e.g. an admin request).
pub async fn eventually_async<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An empty request body for hyper clients that need a concrete type.
pub fn empty() -> Empty<Bytes> {
    Empty::new()
}

/// A port on 127.0.0.1 with nothing listening (bound, then closed).
pub fn refused_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// A new empty directory under the system's temporary directory, unique to this process
/// and call (the caller removes it).
pub fn fresh_dir(prefix: &str) -> std::path::PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "clonelb-{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `clonelb` binary serving a config written to a temporary directory.
pub struct BinLb {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    /// The admin API's address, when `[admin]` is set (from the "clonelb serving" line).
    pub admin: Option<SocketAddr>,
    pub dir: std::path::PathBuf,
    pub config: std::path::PathBuf,
    /// Lines the process writes to stderr, collected by a reader thread.
    pub log: Arc<Mutex<Vec<String>>>,
    /// Lines the process writes to stdout (the access log without `access_path`).
    pub out: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// The value of `key` in a log line, text (`key=VALUE`) or JSON (`"key":"VALUE"`).
pub fn logged_value(line: &str, key: &str) -> Option<String> {
    if let Some(rest) = line.split(&format!("\"{key}\":\"")).nth(1) {
        return rest.split('"').next().map(str::to_string);
    }
    line.split(&format!("{key}="))
        .nth(1)?
        .split_whitespace()
        .next()
        .map(str::to_string)
}

/// Collect the lines of `from` into `into` on a thread; `each` sees every line first.
fn collect_lines(
    from: impl std::io::Read + Send + 'static,
    into: &Arc<Mutex<Vec<String>>>,
    mut each: impl FnMut(&str) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    use std::io::BufRead;
    let lines = Arc::clone(into);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            each(&line);
            lines.lock().unwrap().push(line);
        }
    })
}

impl BinLb {
    /// Start the binary on `toml` (whose listener should use port 0) and wait until it
    /// logs the address it serves on.
    pub fn start(toml: &str) -> BinLb {
        Self::start_with(toml, &[], &[])
    }

    /// As [`BinLb::start`], running `clonelb BEFORE.. run AFTER.. --config PATH`. The
    /// address is found in text (`listen=ADDR`) and JSON (`"listen":"ADDR"`) logs.
    pub fn start_with(toml: &str, before: &[&str], after: &[&str]) -> BinLb {
        Self::start_env(toml, before, after, &[])
    }

    /// As [`BinLb::start_with`], with these environment variables set. `NOTIFY_SOCKET` is
    /// removed unless given here (a test run under systemd must not notify it).
    pub fn start_env(
        toml: &str,
        before: &[&str],
        after: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> BinLb {
        let dir = fresh_dir("test");
        let config = dir.join("lb.toml");
        std::fs::write(&config, toml).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_clonelb"))
            .args(before)
            .arg("run")
            .args(after)
            .arg("--config")
            .arg(&config)
            .env("CLONELB_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let out = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let readers = vec![
            collect_lines(stderr, &log, move |line| {
                let listen = logged_value(line, "listen").and_then(|a| a.parse().ok());
                if let Some(a) = listen {
                    let admin: Option<SocketAddr> =
                        logged_value(line, "admin").and_then(|a| a.parse().ok());
                    let _ = addr_tx.send((a, admin));
                }
            }),
            collect_lines(stdout, &out, |_| {}),
        ];
        let Ok((addr, admin)) = addr_rx.recv_timeout(Duration::from_secs(20)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "clonelb did not report its listen address; its log: {:#?}",
                log.lock().unwrap()
            );
        };
        BinLb {
            child,
            addr,
            admin,
            dir,
            config,
            log,
            out,
            readers,
        }
    }

    /// Send `signal` (e.g. "-USR1") to the process.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} failed");
    }

    /// Poll, up to `limit`, until a stderr line contains `needle`.
    pub async fn logged(&self, needle: &str, limit: Duration) -> bool {
        eventually(limit, || {
            self.log_lines().iter().any(|l| l.contains(needle))
        })
        .await
    }

    /// The stderr lines so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The stdout lines so far.
    pub fn out_lines(&self) -> Vec<String> {
        self.out.lock().unwrap().clone()
    }

    /// SIGTERM, then wait (at most 20 s) for the process to exit and for its output to be
    /// read to the end.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                panic!("clonelb did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        status
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of /proc/PID/status in KiB (e.g. "VmRSS", "VmHWM").
    pub fn status_kib(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }
}

impl Drop for BinLb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The complete lines of a file (a last line without its newline is not counted yet); none
/// when it does not exist.
pub fn file_lines(path: &std::path::Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap_or_default();
    String::from_utf8(bytes)
        .unwrap()
        .split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
        .map(str::to_string)
        .collect()
}

/// What a programmable clone ([`spawn_app`]) answers: built by the test's handler.
#[derive(Clone, Debug)]
pub struct AppReply {
    pub status: StatusCode,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// How long the clone waits before sending the head.
    pub delay: Duration,
}

impl AppReply {
    /// 200 with `body`, no extra header, at once.
    pub fn ok(body: impl Into<Bytes>) -> AppReply {
        AppReply {
            status: StatusCode::OK,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }
    pub fn status(mut self, code: u16) -> AppReply {
        self.status = StatusCode::from_u16(code).unwrap();
        self
    }
    /// Add a header (a `date` given here replaces the one hyper would add).
    pub fn header(mut self, name: &str, value: &str) -> AppReply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
    /// Send the head only after `d`.
    pub fn after(mut self, d: Duration) -> AppReply {
        self.delay = d;
        self
    }
}

/// One request a programmable clone answered (not its health checks).
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: http::Method,
    /// Path and query, as received.
    pub target: String,
    /// It carried `x-clonelb-audit` (a replay).
    pub audit: bool,
}

/// The handler of a programmable clone: request head and whole body in, answer out.
pub type Handler = dyn Fn(&http::request::Parts, &Bytes) -> AppReply + Send + Sync + 'static;

/// A clone whose answers the test programs ([`spawn_app`]).
pub struct AppClone {
    pub name: String,
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<std::sync::mpsc::Sender<()>>,
}

impl AppClone {
    /// Every request it answered so far (health checks excluded), in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    /// How many of them satisfy `f`.
    pub fn count(&self, f: impl Fn(&Seen) -> bool) -> usize {
        self.seen.lock().unwrap().iter().filter(|s| f(s)).count()
    }
    /// Requests answered (health checks excluded).
    pub fn hits(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for AppClone {
    fn drop(&mut self) {
        drop(self.stop.take());
    }
}

/// A clone on 127.0.0.1:0 (own thread and runtime, like [`spawn_clone`]) whose answers
/// come from `handler`, called with the request's head and whole body. `/healthz` always
/// answers 200 `ok` without calling it. Unlike [`TestClone`], nothing is added to the
/// answer but what the handler says (and the `date` hyper adds when the handler sets
/// none), so identical handlers give identical answers. Stops when the handle is dropped.
pub fn spawn_app(
    name: &str,
    handler: impl Fn(&http::request::Parts, &Bytes) -> AppReply + Send + Sync + 'static,
) -> AppClone {
    let handler: Arc<Handler> = Arc::new(handler);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let log = Arc::clone(&seen);
    std::thread::spawn(move || {
        run_local(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let stop = tokio::task::spawn_blocking(move || {
                let _ = stop_rx.recv();
            });
            let serve = async {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let handler = Arc::clone(&handler);
                    let log = Arc::clone(&log);
                    tokio::spawn(async move {
                        let svc = service_fn(move |req| {
                            app_service(req, Arc::clone(&handler), Arc::clone(&log))
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            };
            tokio::select! {
                _ = serve => {}
                _ = stop => {}
            }
        });
    });
    let addr = addr_rx.recv().unwrap();
    AppClone {
        name: name.to_string(),
        addr,
        seen,
        stop: Some(stop_tx),
    }
}

async fn app_service(
    req: Request<Incoming>,
    handler: Arc<Handler>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    if req.uri().path() == "/healthz" {
        return Ok(Response::new(Full::new(Bytes::from("ok"))));
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    seen.lock().unwrap().push(Seen {
        method: parts.method.clone(),
        target: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
        audit: parts.headers.contains_key("x-clonelb-audit"),
    });
    let reply = handler(&parts, &body);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut resp = Response::new(Full::new(reply.body));
    *resp.status_mut() = reply.status;
    for (k, v) in &reply.headers {
        resp.headers_mut().append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    Ok(resp)
}

/// lb.toml text for programmable clones (round-robin, weight 1 each) with an admin
/// listener on a free port; `extra` is appended (e.g. an `[audit]` section).
pub fn app_config(clones: &[&AppClone], proxy: &str, extra: &str) -> String {
    let mut s = format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[balancer]\nstrategy = \"round-robin\"\n[proxy]\n{proxy}\n[admin]\nlisten = \"127.0.0.1:0\"\n"
    );
    for c in clones {
        s.push_str(&format!(
            "[[backend]]\naddress = \"{}\"\nname = \"{}\"\n",
            c.addr, c.name
        ));
    }
    s.push_str(extra);
    s.push('\n');
    s
}

/// A clone answering as `clonelb::demo::serve_clone` does: `x-clone` and `x-clone-version`
/// on every answer (`/healthz` too), on a free port of the test's runtime.
pub async fn versioned_clone(name: &str, version: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(clonelb::demo::serve_clone(
        listener,
        name.to_string(),
        version.to_string(),
    ));
    addr
}

/// One admin API request on a fresh connection (Host set to the admin's address, `body`
/// sent as is): its status and body.
pub async fn admin_call(
    admin: SocketAddr,
    method: http::Method,
    path: &str,
    body: &str,
) -> (StatusCode, String) {
    let json = [("content-type", "application/json")];
    admin_request(admin, method, path, &json, body).await
}

/// One admin request on a fresh connection, with `headers`: status and body.
pub async fn admin_request(
    admin: SocketAddr,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (StatusCode, String) {
    let s = TcpStream::connect(admin).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", admin.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The `/status` entry of the clone named `name` (panics, showing the status, when there
/// is none).
pub fn backend<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no backend {name} in {v:#}"))
}

/// Run `fut` to its end on a new current-thread runtime of this thread (a test server's
/// own thread), then drop the runtime: its tasks and sockets go with it.
pub fn run_local(fut: impl Future<Output = ()>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(fut);
}

/// The balancer process's exit status, waited for up to 20 s.
pub fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "clonelb did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `clonelb check PATH` (the real binary, without `CLONELB_LOG`).
pub fn run_check(path: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_clonelb"))
        .arg("check")
        .arg(path)
        .env_remove("CLONELB_LOG")
        .output()
        .expect("run clonelb check")
}

/// A ConfigMap or Secret volume as the kubelet lays it out: `root/FILE -> ..data/FILE`,
/// `root/..data -> STAMP`, the file's `text` in `root/STAMP/`.
pub fn kubelet_volume(root: &std::path::Path, stamp: &str, file: &str, text: &str) {
    std::fs::create_dir(root.join(stamp)).unwrap();
    std::fs::write(root.join(stamp).join(file), text).unwrap();
    std::os::unix::fs::symlink(stamp, root.join("..data")).unwrap();
    std::os::unix::fs::symlink(format!("..data/{file}"), root.join(file)).unwrap();
}

/// An update of that volume as the kubelet makes it: a new stamp folder, a new `..data`
/// link renamed over the old one, the old folder removed.
pub fn kubelet_update(root: &std::path::Path, old: &str, new: &str, file: &str, text: &str) {
    std::fs::create_dir(root.join(new)).unwrap();
    std::fs::write(root.join(new).join(file), text).unwrap();
    std::os::unix::fs::symlink(new, root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join(old)).unwrap();
}

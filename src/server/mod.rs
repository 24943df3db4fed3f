//! Worker threads, listeners and client connections.
//!
//! One worker thread per core, each with its own `current_thread` tokio runtime and its own
//! `SO_REUSEPORT` listener on the same address; the kernel spreads new connections over
//! them. Workers share only the routing table (one `ArcSwap`) and the per-clone atomics.
//! (Measured on a 2-core machine with a bare hyper proxy: the multi-thread runtime cost
//! 10–15 % more CPU per request than `current_thread`, even with one worker.)
//!
//! A worker accepts on the plain listener, the TLS listener, or both; `conn` serves each
//! connection (TLS handshake or HTTP/2 detection, then hyper's HTTP/1.1 or HTTP/2 server)
//! under the per-connection deadlines of [`deadline`], and stops it gracefully on
//! shutdown.
//!
//! Owns: the worker threads and their runtimes, listening sockets, client connections and
//! their deadlines. Must not touch: the table's contents or any clone's state (requests
//! are handed to [`crate::proxy::handle`]), the control plane.

mod conn;
pub mod deadline;
mod prefixed;
mod request_line;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::context::Shared;
use crate::error::StartError;

/// What the workers are told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Run,
    /// Stop accepting, close the listener, let connections finish (up to the grace time).
    Graceful,
    /// Stop now: every connection is dropped.
    Abort,
}

const LISTEN_BACKLOG: u32 = 4096;

/// Bind a listener that other workers may bind too (`SO_REUSEPORT`).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    #[cfg(unix)]
    socket.set_reuseport(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr).map_err(in_use)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Fail with `AddrInUse` when another process listens on `addr` (port 0: nothing to
/// check). The workers' listeners all set `SO_REUSEPORT` to share the port among
/// themselves, which would let them share it with another clonelb (same user) too, each
/// with its own view of lb.toml. So first bind a probe socket *without* `SO_REUSEPORT`
/// (with `SO_REUSEADDR`, as the listeners have, so connections of a previous instance
/// left in TIME_WAIT do not count) and let it go: any listener on the address, shared or
/// not, makes that bind fail.
///
/// A probe is a check before the act: two instances starting at the same moment can both
/// pass it and then share the port. It catches the common case, a second start beside a
/// running one.
pub fn probe(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr).map_err(in_use)
}

/// An `AddrInUse` error says who has the address; others pass through.
fn in_use(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::AddrInUse {
        io::Error::new(
            io::ErrorKind::AddrInUse,
            "address already in use by another process",
        )
    } else {
        e
    }
}

/// One worker's listening sockets.
#[derive(Debug)]
pub struct Listeners {
    pub http: Option<TcpListener>,
    pub https: Option<TcpListener>,
}

/// Accept and serve until told to stop; then wait for open connections (graceful) or drop
/// them (abort).
pub async fn serve(
    listeners: Listeners,
    shared: Arc<Shared>,
    mut signal: watch::Receiver<Signal>,
    connections: Arc<Semaphore>,
) {
    // Every connection task holds a clone of `done`; when all are gone, `recv` says so.
    let (done, mut all_done) = mpsc::channel::<()>(1);
    let mut logged_accept_error = false;
    loop {
        tokio::select! {
            (permit, accepted, on_tls) = next_connection(&listeners, &connections) => match accepted {
                Ok((stream, peer)) => {
                    logged_accept_error = false;
                    let transport = if on_tls {
                        match shared.tls.load_full() {
                            Some(config) => conn::Transport::Tls(config),
                            None => continue,
                        }
                    } else {
                        conn::Transport::Plain
                    };
                    tokio::spawn(conn::serve(
                        stream,
                        peer,
                        transport,
                        Arc::clone(&shared),
                        signal.clone(),
                        (done.clone(), permit),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off, log once, keep going.
                    if !logged_accept_error {
                        tracing::warn!(error = %e, "accept failed; retrying");
                        logged_accept_error = true;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = signal.changed() => {
                if *signal.borrow() != Signal::Run {
                    break;
                }
            }
        }
    }
    // Close the listening sockets at once: new connections are refused, not queued.
    drop(listeners);
    // Every connection task still holds a sender: their count is the connections open.
    let live = done.downgrade();
    drop(done);
    if *signal.borrow() == Signal::Abort {
        shared.start_cutting();
        return;
    }
    let grace = shared.table.load().proxy().shutdown_timeout;
    tokio::select! {
        _ = all_done.recv() => return,
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(
                timeout = %humantime::format_duration(grace),
                connections = live.strong_count(),
                "shutdown_timeout passed; closing the remaining connections"
            );
        }
        _ = wait_for(&mut signal, Signal::Abort) => {}
    }
    // What is still open is dropped with this worker's runtime: recorded as cut.
    shared.start_cutting();
}

/// A connection from either listener, then a slot for it under `[limits]
/// max_connections`. While every slot is taken this worker stops accepting (one accepted
/// connection waits here for a slot), so the rest wait in the kernel's accept backlog.
/// Accepting first means a worker never sits on a free slot while a connection queues at
/// another worker's listener.
async fn next_connection(
    listeners: &Listeners,
    slots: &Arc<Semaphore>,
) -> (
    Option<OwnedSemaphorePermit>,
    io::Result<(TcpStream, SocketAddr)>,
    bool,
) {
    let (accepted, on_tls) = tokio::select! {
        a = accept_on(listeners.http.as_ref()) => (a, false),
        a = accept_on(listeners.https.as_ref()) => (a, true),
    };
    if accepted.is_err() {
        return (None, accepted, on_tls);
    }
    // The semaphore is never closed, so acquiring cannot fail; serve anyway if it did.
    let permit = Arc::clone(slots).acquire_owned().await.ok();
    (permit, accepted, on_tls)
}

async fn accept_on(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn wait_for(signal: &mut watch::Receiver<Signal>, want: Signal) {
    // An error means the sender is gone: nobody can ask for anything any more.
    let _ = signal.wait_for(|s| *s == want).await;
}

/// The running workers: their threads and the addresses they bound.
pub struct Workers {
    pub threads: Vec<std::thread::JoinHandle<()>>,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
}

/// How [`start`] binds.
#[derive(Debug, Clone, Copy)]
pub struct Bind {
    /// Worker threads (at least 1).
    pub workers: usize,
    /// `[limits] max_connections`, over all workers.
    pub max_connections: u64,
    /// Start even when another process listens on the addresses (see [`probe`]).
    pub reuse_port: bool,
}

/// Start `bind.workers` worker threads (at least 1), each with its own `current_thread`
/// runtime and `SO_REUSEPORT` listeners. Unless `reuse_port`, an address another process
/// listens on is refused first ([`probe`]). The first worker binds the configured
/// addresses (resolving port 0); the others bind the addresses it got. Returns once all
/// are listening.
pub fn start(
    (http, https): (Option<SocketAddr>, Option<SocketAddr>),
    bind: Bind,
    shared: &Arc<Shared>,
    signal: &watch::Sender<Signal>,
) -> Result<Workers, StartError> {
    if !bind.reuse_port {
        for address in [http, https].into_iter().flatten() {
            probe(address).map_err(|source| StartError::Bind { address, source })?;
        }
    }
    let (count, max_connections) = (bind.workers, bind.max_connections);
    let slots = Arc::new(Semaphore::new(
        usize::try_from(max_connections)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS),
    ));
    let mut workers = Workers {
        threads: Vec::new(),
        http,
        https,
    };
    for i in 0..count.max(1) {
        let (tx, rx) = std::sync::mpsc::channel();
        let addrs = (workers.http, workers.https);
        let shared = Arc::clone(shared);
        let signal = signal.subscribe();
        let slots = Arc::clone(&slots);
        let handle = std::thread::Builder::new()
            .name(format!("clonelb-worker-{i}"))
            .spawn(move || {
                crate::idle::set_worker(i);
                worker(addrs, shared, signal, slots, tx)
            })
            .map_err(StartError::Thread)?;
        workers.threads.push(handle);
        match rx.recv() {
            Ok(Ok((http, https))) => {
                workers.http = http;
                workers.https = https;
            }
            Ok(Err((address, source))) => return Err(StartError::Bind { address, source }),
            Err(_) => {
                return Err(StartError::Thread(io::Error::other(
                    "worker thread exited before binding",
                )))
            }
        }
    }
    Ok(workers)
}

/// The bound (http, https) addresses, or the address that could not be bound and why.
type BindResult = Result<(Option<SocketAddr>, Option<SocketAddr>), (SocketAddr, io::Error)>;

fn worker(
    (http, https): (Option<SocketAddr>, Option<SocketAddr>),
    shared: Arc<Shared>,
    signal: watch::Receiver<Signal>,
    slots: Arc<Semaphore>,
    bound: std::sync::mpsc::Sender<BindResult>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let at = http
                .or(https)
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
            let _ = bound.send(Err((at, e)));
            return;
        }
    };
    rt.block_on(async move {
        let bind_one = |addr: Option<SocketAddr>| -> Result<_, (SocketAddr, io::Error)> {
            let Some(addr) = addr else {
                return Ok((None, None));
            };
            let l = bind(addr).map_err(|e| (addr, e))?;
            let local = l.local_addr().map_err(|e| (addr, e))?;
            Ok((Some(l), Some(local)))
        };
        let listeners =
            bind_one(http).and_then(|(h, hl)| bind_one(https).map(|(s, sl)| ((h, hl), (s, sl))));
        let ((http_l, http_local), (https_l, https_local)) = match listeners {
            Ok(l) => l,
            Err(e) => {
                let _ = bound.send(Err(e));
                return;
            }
        };
        let _ = bound.send(Ok((http_local, https_local)));
        let listeners = Listeners {
            http: http_l,
            https: https_l,
        };
        serve(listeners, shared, signal, slots).await;
    });
}

//! Listeners and client connections.
//!
//! One worker thread per core, each with its own `current_thread` tokio runtime and its own
//! `SO_REUSEPORT` listener on the same address; the kernel spreads new connections over
//! them. Workers share only the routing table (one `ArcSwap`) and the per-clone atomics.
//! (Measured on a 2-core machine with a bare hyper proxy: the multi-thread runtime cost
//! 10–15 % more CPU per request than `current_thread`, even with one worker.)
//!
//! Each connection is served by hyper's HTTP/1.1 server with keep-alive, under the
//! per-connection deadlines of [`crate::deadline`], and stops gracefully on shutdown.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::config;

use crate::deadline::{ConnActivity, DeadlineIo};
use crate::forward::ClientInfo;
use crate::proxy::{self, ConnContext};
use crate::table::SharedTable;

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

/// hyper's own limit on request header fields when none is set.
const HYPER_DEFAULT_MAX_HEADERS: u64 = 100;

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
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Accept and serve until told to stop; then wait for open connections (graceful) or drop
/// them (abort).
pub async fn serve(
    listener: TcpListener,
    table: Arc<SharedTable>,
    mut signal: watch::Receiver<Signal>,
    connections: Arc<Semaphore>,
) {
    // Every connection task holds a clone of `done`; when all are gone, `recv` says so.
    let (done, mut all_done) = mpsc::channel::<()>(1);
    let mut logged_accept_error = false;
    loop {
        tokio::select! {
            (permit, accepted) = next_connection(&listener, &connections) => match accepted {
                Ok((stream, peer)) => {
                    logged_accept_error = false;
                    tokio::spawn(connection(stream, peer, Arc::clone(&table), signal.clone(), (done.clone(), permit)));
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
    // Close the listening socket at once: new connections are refused, not queued.
    drop(listener);
    drop(done);
    if *signal.borrow() == Signal::Abort {
        return;
    }
    let grace = table.load().proxy().shutdown_timeout;
    tokio::select! {
        _ = all_done.recv() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(timeout = ?grace, "shutdown_timeout passed; closing the remaining connections");
        }
        _ = wait_for(&mut signal, Signal::Abort) => {}
    }
}

/// A connection, then a slot for it under `[limits] max_connections`. While every slot is
/// taken this worker stops accepting (one accepted connection waits here for a slot), so
/// the rest wait in the kernel's accept backlog. Accepting first means a worker never sits
/// on a free slot while a connection queues at another worker's listener.
async fn next_connection(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> (
    Option<OwnedSemaphorePermit>,
    io::Result<(TcpStream, SocketAddr)>,
) {
    let accepted = listener.accept().await;
    if accepted.is_err() {
        return (None, accepted);
    }
    // The semaphore is never closed, so acquiring cannot fail; serve anyway if it did.
    let permit = Arc::clone(slots).acquire_owned().await.ok();
    (permit, accepted)
}

async fn wait_for(signal: &mut watch::Receiver<Signal>, want: Signal) {
    // An error means the sender is gone: nobody can ask for anything any more.
    let _ = signal.wait_for(|s| *s == want).await;
}

/// Serve one client connection.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    table: Arc<SharedTable>,
    mut signal: watch::Receiver<Signal>,
    _held: (mpsc::Sender<()>, Option<OwnedSemaphorePermit>),
) {
    let _ = stream.set_nodelay(true);
    let (proxy_cfg, limits) = {
        let t = table.load();
        (*t.proxy(), t.policy().limits)
    };
    let activity = Arc::new(ConnActivity::default());
    let io = DeadlineIo::new(
        stream,
        Arc::clone(&activity),
        proxy_cfg.idle_timeout,
        proxy_cfg.header_read_timeout,
    );
    let cx = Arc::new(ConnContext {
        table,
        client: ClientInfo::new(peer, "http"),
        activity,
    });
    let service = service_fn(move |req| proxy::handle(req, Arc::clone(&cx)));
    let mut builder = hyper::server::conn::http1::Builder::new();
    let header_size = usize::try_from(limits.max_header_size).unwrap_or(usize::MAX);
    if limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        // Only when it differs: with an explicit limit hyper initialises a header array of
        // that size for every request head, which costs ~1 % CPU at the default of 100.
        builder.max_headers(usize::try_from(limits.max_headers).unwrap_or(usize::MAX));
    }
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        // One write() of head and body rather than writev: measured 5 % less CPU per
        // request on the loopback benchmark (median of 5 paired runs, 18.4 -> 17.4 µs).
        .writev(false)
        // DeadlineIo enforces the idle and header deadlines. hyper's own header timer would
        // arm (and allocate) a sleep for every request head, for nothing.
        .header_read_timeout(None)
        // Request line + headers above max_header_size, or more than max_headers fields:
        // hyper answers 431. The read buffer is capped at the same size (hyper's minimum
        // is 8 KiB, which config validation enforces), so a client cannot make the
        // balancer buffer more than that while it sends a head.
        .max_header_size(header_size)
        .max_buf_size(header_size.max(config::MIN_HEADER_SIZE as usize));
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(client = %peer, error = %e, "client connection ended");
            }
            return;
        }
        _ = signal.wait_for(|s| *s != Signal::Run) => {}
    }
    if *signal.borrow() == Signal::Abort {
        return;
    }
    // Graceful: finish the request in progress, answer it with `Connection: close`.
    conn.as_mut().graceful_shutdown();
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = wait_for(&mut signal, Signal::Abort) => {}
    }
}

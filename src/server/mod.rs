//! Listeners and client connections.
//!
//! One worker thread per core, each with its own `current_thread` tokio runtime and its own
//! `SO_REUSEPORT` listener on the same address; the kernel spreads new connections over
//! them. Workers share only the routing table (one `ArcSwap`) and the per-clone atomics.
//! (Measured on a 2-core machine with a bare hyper proxy: the multi-thread runtime cost
//! 10–15 % more CPU per request than `current_thread`, even with one worker.)
//!
//! A worker accepts on the plain listener, the TLS listener, or both; `conn` serves each
//! connection (TLS handshake or HTTP/2 detection, then hyper's HTTP/1.1 or HTTP/2 server)
//! under the per-connection deadlines of [`crate::deadline`], and stops it gracefully on
//! shutdown.

mod conn;
pub mod deadline;
mod prefixed;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

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

/// What the workers share: the routing table and the current TLS configuration (both
/// swapped whole by reload).
#[derive(Debug)]
pub struct Shared {
    pub table: Arc<SharedTable>,
    pub tls: Arc<ArcSwapOption<ServerConfig>>,
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
                        Arc::clone(&shared.table),
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
    drop(done);
    if *signal.borrow() == Signal::Abort {
        return;
    }
    let grace = shared.table.load().proxy().shutdown_timeout;
    tokio::select! {
        _ = all_done.recv() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(timeout = ?grace, "shutdown_timeout passed; closing the remaining connections");
        }
        _ = wait_for(&mut signal, Signal::Abort) => {}
    }
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

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
use tokio::sync::{mpsc, watch};

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
) {
    // Every connection task holds a clone of `done`; when all are gone, `recv` says so.
    let (done, mut all_done) = mpsc::channel::<()>(1);
    let mut logged_accept_error = false;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    logged_accept_error = false;
                    tokio::spawn(connection(stream, peer, Arc::clone(&table), signal.clone(), done.clone()));
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
    _done: mpsc::Sender<()>,
) {
    let _ = stream.set_nodelay(true);
    let proxy_cfg = *table.load().proxy();
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
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        // A backstop only: DeadlineIo enforces the real idle and header deadlines.
        .header_read_timeout(proxy_cfg.idle_timeout + proxy_cfg.header_read_timeout);
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

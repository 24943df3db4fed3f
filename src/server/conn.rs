//! One client connection: the TLS handshake (HTTPS listener) or HTTP/2 preface detection
//! (plain listener), both under the connection's header deadline, then hyper's HTTP/1.1
//! server (keep-alive, upgrades for WebSocket) or HTTP/2 server, until the client leaves or
//! the balancer stops.
//!
//! hyper-util's auto builder reads the HTTP/2 preface with no timer and hides hyper's
//! header-size limit, so the protocol is chosen here and hyper's own builders are used.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};
use tokio::time::Instant;

use super::deadline::DeadlineIo;
use super::prefixed::Prefixed;
use super::{wait_for, Signal};
use crate::config::{self, LimitsConfig};
use crate::context::{ConnContext, Shared};
use crate::proxy;

/// How the connection arrived.
pub(super) enum Transport {
    Plain,
    Tls(Arc<ServerConfig>),
}

/// hyper's own limit on request header fields when none is set.
const HYPER_DEFAULT_MAX_HEADERS: u64 = 100;

/// Serve one client connection. `_held` (the worker's connection count and the
/// `max_connections` slot) is released when it ends.
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    shared: Arc<Shared>,
    signal: watch::Receiver<Signal>,
    _held: (mpsc::Sender<()>, Option<OwnedSemaphorePermit>),
) {
    let accepted_at = Instant::now();
    // The open-connections gauge, until this connection ends (or its task is dropped).
    let _open = shared.process_stats().connection_opened();
    let _ = stream.set_nodelay(true);
    let proto = match transport {
        Transport::Plain => "http",
        Transport::Tls(_) => "https",
    };
    let cx = ConnContext::new(shared, peer, proto, accepted_at);
    // The handshake or detection counts against the header deadline, from accept.
    let deadline = accepted_at + cx.proxy.header_read_timeout;
    // Each way of serving is its own boxed future: the task spawned per connection would
    // otherwise be as large as the largest of them (TLS state, HTTP/2 codec), and an idle
    // plain HTTP/1.1 connection would pay for all of them in memory.
    match transport {
        Transport::Plain => {
            let detected = tokio::select! {
                d = tokio::time::timeout_at(deadline, Prefixed::detect_h2(stream)) => d,
                _ = stopping(&signal) => return,
            };
            match detected {
                Ok(Ok((io, true))) => Box::pin(run_h2(cx, io, signal)).await,
                Ok(Ok((io, false))) => Box::pin(run_h1(cx, io, signal)).await,
                _ => tracing::debug!(client = %peer, "connection closed before its first request"),
            }
        }
        Transport::Tls(config) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let handshake = tokio::select! {
                h = Box::pin(tokio::time::timeout_at(deadline, acceptor.accept(stream))) => h,
                _ = stopping(&signal) => return,
            };
            match handshake {
                Ok(Ok(tls)) => {
                    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                        Box::pin(run_h2(cx, tls, signal)).await;
                    } else {
                        Box::pin(run_h1(cx, tls, signal)).await;
                    }
                }
                Ok(Err(e)) => tracing::debug!(client = %peer, error = %e, "TLS handshake failed"),
                Err(_) => {
                    tracing::debug!(client = %peer, "TLS handshake not done within header_read_timeout")
                }
            }
        }
    }
}

/// Resolves once the balancer stops: a connection that has not sent its first request yet
/// (HTTP/2 detection, TLS handshake) is closed at once, like an idle kept-alive one, so it
/// cannot hold a graceful stop for `header_read_timeout`.
async fn stopping(signal: &watch::Receiver<Signal>) {
    let mut signal = signal.clone();
    let _ = signal.wait_for(|s| *s != Signal::Run).await;
}

/// Serve `$conn` (a hyper connection future) until it ends; on a graceful stop, let it
/// finish what is in flight (HTTP/1.1 answers with `Connection: close`, HTTP/2 sends
/// GOAWAY); on abort, drop it. A macro, as hyper's two connection types share no trait.
macro_rules! drive {
    ($conn:expr, $signal:expr, $peer:expr) => {{
        let conn = $conn;
        let mut signal = $signal;
        tokio::pin!(conn);
        let stopping = tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(client = %$peer, error = %e, "client connection ended");
                }
                false
            }
            _ = signal.wait_for(|s| *s != Signal::Run) => true,
        };
        if stopping && *signal.borrow() != Signal::Abort {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = wait_for(&mut signal, Signal::Abort) => {}
            }
        }
    }};
}

/// The connection's deadlines around its socket, and the context every request on it is
/// served with.
fn prepare<I>(cx: ConnContext, io: I, multiplexed: bool) -> (DeadlineIo<I>, Arc<ConnContext>) {
    let io = DeadlineIo::new(
        io,
        Arc::clone(&cx.activity),
        (cx.proxy.idle_timeout, cx.proxy.header_read_timeout),
        cx.accepted_at,
        multiplexed,
        cx.limits.max_request_line,
    );
    (io, Arc::new(cx))
}

async fn run_h1<I>(cx: ConnContext, io: I, signal: watch::Receiver<Signal>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let builder = http1_builder(&cx.limits);
    let peer = cx.peer;
    let (io, cx) = prepare(cx, io, false);
    let service = service_fn(move |req| proxy::handle(req, Arc::clone(&cx)));
    drive!(
        builder
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades(),
        signal,
        peer
    );
}

async fn run_h2<I>(cx: ConnContext, io: I, signal: watch::Receiver<Signal>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // hyper's limits on pending and locally reset streams (rapid-reset floods) stay at
    // their defaults, which are on.
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(cx.proxy.max_concurrent_streams)
        .max_header_list_size(u32::try_from(cx.limits.max_header_size).unwrap_or(u32::MAX));
    let peer = cx.peer;
    let (io, cx) = prepare(cx, io, true);
    let service = service_fn(move |req| proxy::handle(req, Arc::clone(&cx)));
    drive!(
        builder.serve_connection(TokioIo::new(io), service),
        signal,
        peer
    );
}

fn http1_builder(limits: &LimitsConfig) -> hyper::server::conn::http1::Builder {
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
    builder
}

//! One HTTP/1.1 connection to a clone ([`Upstream`]), driven by the task of the request
//! that uses it: hyper's `SendRequest` and its `Connection` stay together (in the clone's
//! idle set too), and whoever waits on the exchange — the request's future for the head,
//! the response body for its frames, the abandoned-answer drain — polls the connection
//! itself. A request/response pair so crosses no task boundary and no channel between
//! tasks (the layout before spawned a task per connection: the request went to it over a
//! channel, the head came back over a oneshot, every body frame over another channel).
//!
//! The head's oneshot and the body's channel are filled only while the connection is
//! polled, which happens on this same task right before they are looked at, so they are
//! polled with a no-op waker: no self-wake per response. (The head's future runs
//! `unconstrained`: tokio's budget would otherwise return `Pending` with a wake of the
//! no-op waker, and nobody would poll again.)
//!
//! A drain that times out must still cut the exchanges in flight without the tasks it
//! used to abort: each connection keeps a duplicate of its socket's descriptor, listed
//! (weakly) in the clone's [`Sockets`]; `shutdown(2)` through it from the control thread
//! ends the connection where it stands and wakes whichever task waits on it.
//!
//! Owns: one upstream connection's halves and their polling. Must not touch: any clone's
//! state (the idle set is typed over this; the clone's `Sockets` is handed in).

use std::future::{poll_fn, Future};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{ready, Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::upstream_body::UpstreamBody;

type Conn = http1::Connection<TokioIo<TcpStream>, UpstreamBody>;

/// A second descriptor of an upstream socket (a `dup`, never read or written): shutting
/// it down shuts the socket down for its connection too. Closed with its last `Arc`.
pub type CutHandle = std::net::TcpStream;

/// A connection to a clone: both halves, boxed once when it opens so that moving it into
/// a response body or the idle set moves a pointer.
#[derive(Debug)]
pub struct Upstream(Box<Halves>);

#[derive(Debug)]
struct Halves {
    sender: SendRequest<UpstreamBody>,
    /// `None` once the connection ended and was dropped (which completes whatever still
    /// waited on it: hyper answers a pending request or body with an error).
    conn: Option<Conn>,
    /// The connection future returned: it is closed (or upgraded, see
    /// [`Upstream::into_io`]); never polled again.
    ended: bool,
    /// A duplicate of the socket's descriptor, for [`Sockets::shutdown_all`].
    cut: Arc<CutHandle>,
    /// A body error held back for one poll (see [`Upstream::poll_body`]).
    held_error: Option<hyper::Error>,
}

impl Upstream {
    /// HTTP/1.1 over `stream`, listed in `sockets` so the end of a drain can cut it.
    pub async fn handshake(stream: TcpStream, sockets: &Sockets) -> Result<Self, HandshakeError> {
        let cut = Arc::new(std::net::TcpStream::from(
            stream.as_fd().try_clone_to_owned()?,
        ));
        let (sender, conn) = http1::Builder::new()
            // One write() of head and body rather than writev: measured 5 % less CPU per
            // request on the loopback benchmark.
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await?;
        sockets.track(&cut);
        Ok(Upstream(Box::new(Halves {
            sender,
            conn: Some(conn),
            ended: false,
            cut,
            held_error: None,
        })))
    }

    /// Drive the connection (its reads and writes); `Ready` once it has ended.
    fn poll_conn(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let h = &mut *self.0;
        let Some(conn) = h.conn.as_mut().filter(|_| !h.ended) else {
            return Poll::Ready(());
        };
        match Pin::new(conn).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(result) => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
                h.ended = true;
                Poll::Ready(())
            }
        }
    }

    /// Drop the connection's half (closing the socket unless it was taken for a tunnel):
    /// hyper then completes anything still waiting on it.
    fn close(&mut self) {
        self.0.conn = None;
        self.0.ended = true;
    }

    /// Whether the connection is still open, after letting it take in whatever arrived
    /// while it sat idle (the clone closing it, typically). Never waits.
    pub fn is_open(&mut self) -> bool {
        if self
            .poll_conn(&mut Context::from_waker(Waker::noop()))
            .is_ready()
        {
            self.close();
        }
        !self.0.ended && !self.0.sender.is_closed()
    }

    /// Ready for a request now (a connection put back at the end of a body may still be
    /// finishing that exchange's bookkeeping).
    pub fn is_ready(&self) -> bool {
        !self.0.ended && self.0.sender.is_ready()
    }

    /// Wait until it is ready for a request, driving it meanwhile; `false` if it closed.
    /// No timer: this involves no network, only the connection's own bookkeeping.
    pub async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            if let Poll::Ready(r) = self.0.sender.poll_ready(cx) {
                return Poll::Ready(r.is_ok());
            }
            if self.poll_conn(cx).is_ready() {
                self.close();
                return Poll::Ready(false);
            }
            self.0.sender.poll_ready(cx).map(|r| r.is_ok())
        })
        .await
    }

    /// Let the connection finish an exchange whose body was read to its end, so it is
    /// ready for the next one, before it goes back to the idle set. Never waits.
    pub fn settle(&mut self) {
        if self
            .poll_conn(&mut Context::from_waker(Waker::noop()))
            .is_ready()
        {
            self.close();
        }
    }

    /// Send `req`: its response head is then waited for with [`Upstream::poll_head`].
    pub fn start(&mut self, req: Request<UpstreamBody>) -> PendingHead {
        // Unconstrained: polled with a no-op waker, a budget-exhausted `Pending` would
        // never be woken. It is not a loop of its own: the connection's I/O is budgeted
        // as usual. Boxed (one small allocation) so that a request whose client leaves
        // before the head can hand the wait to a background task (see `body::drain`).
        PendingHead(Box::pin(tokio::task::unconstrained(
            self.0.sender.try_send_request(req),
        )))
    }

    /// The response head of `head` (a request started on this connection), driving the
    /// connection for it. Errors as hyper's `try_send_request`: the request comes back
    /// when it never left.
    pub fn poll_head(&mut self, head: &mut PendingHead, cx: &mut Context<'_>) -> Poll<HeadResult> {
        let mut noop = Context::from_waker(Waker::noop());
        if let Poll::Ready(r) = head.0.as_mut().poll(&mut noop) {
            return Poll::Ready(r);
        }
        if self.poll_conn(cx).is_ready() && self.0.conn.is_some() {
            // Ended without answering: dropping it answers the request with an error (its
            // request handed back when it was never written). An ended connection that
            // did answer (a 101 whose socket a tunnel takes) is kept.
            if let Poll::Ready(r) = head.0.as_mut().poll(&mut noop) {
                return Poll::Ready(r);
            }
            self.close();
        }
        // Either the connection made progress and the head may be here, or it waits on
        // the network with this task's waker. (Once closed, hyper has completed the
        // request's callback, so this is `Ready`; were it ever not, the caller's response
        // timeout would answer.)
        head.0.as_mut().poll(&mut noop)
    }

    /// The next frame of `body` (this connection's response body), driving the
    /// connection for it.
    ///
    /// A body error is handed out one poll late (after a self-wake): the connection often
    /// delivers the last data and the error together (the clone closed mid-body), and the
    /// client's server must get a `Pending` in between to flush what it has before the
    /// error aborts the client's connection.
    pub fn poll_body(
        &mut self,
        body: &mut Incoming,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(e) = self.0.held_error.take() {
            return Poll::Ready(Some(Err(e)));
        }
        let mut noop = Context::from_waker(Waker::noop());
        let frame = match Pin::new(&mut *body).poll_frame(&mut noop) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if self.poll_conn(cx).is_ready() {
                    // Ended: dropping it ends the body (with hyper's error if it was cut
                    // short).
                    self.close();
                }
                ready!(Pin::new(body).poll_frame(&mut noop))
            }
        };
        match frame {
            Some(Err(e)) => {
                self.0.held_error = Some(e);
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            frame => Poll::Ready(frame),
        }
    }

    /// Whether it may serve another request (open, its body read to the end).
    pub fn is_reusable(&self) -> bool {
        !self.0.ended && !self.0.sender.is_closed()
    }

    /// The socket after a `101 Switching Protocols`, for a tunnel: the stream, the bytes
    /// hyper had already read past the head, and the descriptor a drain cut goes through
    /// (keep it as long as the stream).
    pub async fn into_io(mut self) -> Option<(TcpStream, Bytes, Arc<CutHandle>)> {
        if !self.0.ended {
            let conn = self.0.conn.as_mut()?;
            if let Err(e) = poll_fn(|cx| conn.poll_without_shutdown(cx)).await {
                tracing::debug!(error = %e, "upstream connection ended before the upgrade");
                return None;
            }
        }
        let h = *self.0;
        let parts = h.conn?.into_parts();
        Some((parts.io.into_inner(), parts.read_buf, h.cut))
    }
}

/// What a request's response head resolves to.
pub type HeadResult = Result<Response<Incoming>, TrySendError<Request<UpstreamBody>>>;

/// A request sent on an [`Upstream`], its response head not yet here.
pub struct PendingHead(Pin<Box<dyn Future<Output = HeadResult> + Send>>);

impl std::fmt::Debug for PendingHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingHead")
    }
}

/// Opening a connection failed after its socket connected.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error("duplicating the socket: {0}")]
    Io(#[from] std::io::Error),
}

/// A clone's open upstream sockets (weakly: a connection's descriptor closes with it), so
/// the end of a drain can shut them all down from another thread. Touched when a
/// connection opens and at a cut, never per request.
#[derive(Debug, Default)]
pub struct Sockets(Mutex<Vec<Weak<CutHandle>>>);

impl Sockets {
    fn track(&self, fd: &Arc<CutHandle>) {
        let mut list = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(fd));
    }

    /// Shut down every socket still open: whatever waits on one wakes and finds it
    /// closed. Returns how many were open.
    pub fn shutdown_all(&self) -> usize {
        let list = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        let mut open = 0;
        for fd in list.iter().filter_map(Weak::upgrade) {
            open += 1;
            let _ = fd.shutdown(std::net::Shutdown::Both);
        }
        open
    }
}

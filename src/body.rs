//! The two concrete body types of the request path (no boxing, no dynamic dispatch).
//!
//! * [`UpstreamBody`]: what the balancer sends to a clone — the client's body, streamed
//!   frame by frame, or nothing (health checks, bodiless requests).
//! * [`ResponseBody`]: what the balancer sends to the client — the clone's body, streamed,
//!   or a short error text. It owns the request's [`InFlightGuard`] and the upstream
//!   connection, so the clone counts the request as in flight until the last byte, and the
//!   connection goes back to the clone's pool only after a clean end of the body.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::backend::InFlightGuard;
use crate::deadline::ActiveRequest;
use crate::error::BodyError;
use crate::pool::Sender;
use tokio::time::{Instant, Sleep};

/// A request body on its way to a clone.
#[derive(Debug)]
pub enum UpstreamBody {
    Empty,
    Client(ClientBody),
}

/// The client's request body, streamed with two guards: at most `max_body` bytes (0 = no
/// limit), and no pause between frames longer than `body_read_timeout`. Either failing
/// ends the stream with a [`BodyError`], which aborts the upstream request (the clone
/// never sees a complete body the client did not send).
#[derive(Debug)]
pub struct ClientBody {
    inner: Incoming,
    max: u64,
    seen: u64,
    idle: Duration,
    /// Armed on the first wait for data, reset after every frame.
    timer: Option<Pin<Box<Sleep>>>,
}

impl ClientBody {
    pub fn new(inner: Incoming, max: u64, idle: Duration) -> Self {
        ClientBody {
            inner,
            max,
            seen: 0,
            idle,
            timer: None,
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let b = match self.get_mut() {
            UpstreamBody::Empty => return Poll::Ready(None),
            UpstreamBody::Client(b) => b,
        };
        match Pin::new(&mut b.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    b.seen += data.len() as u64;
                    if b.max > 0 && b.seen > b.max {
                        return Poll::Ready(Some(Err(BodyError::TooLarge)));
                    }
                }
                if let Some(t) = &mut b.timer {
                    t.as_mut().reset(Instant::now() + b.idle);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(BodyError::Client(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let idle = b.idle;
                let timer = b
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Timeout))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Empty => true,
            UpstreamBody::Client(b) => b.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Empty => SizeHint::with_exact(0),
            UpstreamBody::Client(b) => b.inner.size_hint(),
        }
    }
}

/// A response body on its way to the client.
#[derive(Debug)]
pub struct ResponseBody {
    kind: Kind,
    /// Keeps the client connection's "request in progress" mark until the body ends.
    _active: Option<ActiveRequest>,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Upstream {
        inner: Incoming,
        finish: Option<Finish>,
    },
}

/// What is released when a proxied response ends.
#[derive(Debug)]
struct Finish {
    guard: InFlightGuard,
    sender: Sender,
}

impl ResponseBody {
    /// A complete, short body (error pages).
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody {
            kind: Kind::Full(Some(bytes.into())),
            _active: None,
        }
    }

    /// The clone's body; `guard` and `sender` are released when it ends.
    pub(crate) fn upstream(
        inner: Incoming,
        guard: InFlightGuard,
        sender: Sender,
        active: Option<ActiveRequest>,
    ) -> Self {
        ResponseBody {
            kind: Kind::Upstream {
                inner,
                finish: Some(Finish { guard, sender }),
            },
            _active: active,
        }
    }
}

/// How a proxied response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Read to the end: the connection may serve another request.
    Clean,
    /// The clone failed mid-body (reset, bad framing): count it against the clone.
    CloneError,
    /// Dropped early (the client went away): not the clone's fault, but the connection
    /// is mid-response and cannot be reused.
    Cut,
}

impl Kind {
    /// Release the guard; pool the connection only if the body ended cleanly.
    fn finish(&mut self, end: End) {
        if let Kind::Upstream { finish, .. } = self {
            if let Some(Finish { guard, sender }) = finish.take() {
                match end {
                    End::Clean => {
                        let state = guard.state();
                        state.pool.put(sender, state.is_draining());
                    }
                    End::CloneError => guard.state().record_failure(),
                    End::Cut => {}
                }
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let kind = &mut self.get_mut().kind;
        match kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream { inner, .. } => {
                let polled = ready!(Pin::new(&mut *inner).poll_frame(cx));
                // hyper stops polling once `is_end_stream()` is true, so the end is
                // detected after the last frame, not only on `None`.
                match &polled {
                    Some(Ok(_)) if !inner.is_end_stream() => {}
                    Some(Ok(_)) | None => kind.finish(End::Clean),
                    Some(Err(_)) => kind.finish(End::CloneError),
                }
                Poll::Ready(polled)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body hyper never polled because it was empty from the start (HEAD, 204, 304,
        // Content-Length: 0) ended cleanly; anything else dropped early was cut.
        let clean = matches!(&self.kind, Kind::Upstream { inner, .. } if inner.is_end_stream());
        self.kind.finish(if clean { End::Clean } else { End::Cut });
    }
}

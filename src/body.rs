//! The response body on its way to the client ([`ResponseBody`]): the clone's body,
//! streamed, or a short error text. It owns the request's [`InFlightGuard`] and the
//! upstream connection, so the clone counts the request as in flight until the last byte,
//! and the connection goes back to the clone's idle set only after a clean end of the body.
//! (The request body, going the other way, is [`crate::upstream_body::UpstreamBody`].)

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::backend::InFlightGuard;
use crate::idle::Sender;
use crate::server::deadline::ActiveRequest;

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
                        state.idle.put(sender, state.is_draining());
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

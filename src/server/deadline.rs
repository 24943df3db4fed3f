//! Per-connection deadlines for HTTP/1 clients: `idle_timeout` and `header_read_timeout`
//! as lb.toml defines them.
//!
//! hyper's own `header_read_timeout` starts as soon as it waits for a request head, which
//! on a kept-alive connection includes the idle wait for the next request; with it alone a
//! 10 s header timeout would also close every connection idle for 10 s. So the balancer
//! wraps the client socket in [`DeadlineIo`], which knows three phases:
//!
//! * **head** — from accept, or from the first byte of a later request, until the request
//!   head is parsed: closed after `header_read_timeout` (a whole-head deadline, not an
//!   inactivity timer, so a client trickling a byte a second gets no extension);
//! * **busy** — a request is being served (an [`ActiveRequest`] exists): no deadline here;
//!   the clone's side has its own timeouts;
//! * **idle** — between requests: closed after `idle_timeout` with no byte of a new request.
//!
//! The service marks "busy" by holding an [`ActiveRequest`] from the moment it is called
//! until the response body ends (or an upgraded connection closes). On HTTP/2 the same
//! count covers all streams: the connection is idle when no stream is open, and bytes
//! between requests (PING, WINDOW_UPDATE) do not start a head deadline.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `impl AsyncWrite for $ty<T>` passing every call to its `inner` field: the socket
/// wrappers on the client side change how reads behave, never writes.
macro_rules! delegate_async_write {
    ($ty:ident) => {
        impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $ty<T> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.inner.is_write_vectored()
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
            }
        }
    };
}

pub use crate::context::{ActiveRequest, ConnActivity};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Head { since: Instant },
    Busy,
    Idle { since: Instant },
}

/// A client socket that fails its reads once the current phase's deadline passes.
#[derive(Debug)]
pub struct DeadlineIo<T> {
    inner: T,
    activity: Arc<ConnActivity>,
    idle_timeout: Duration,
    header_timeout: Duration,
    /// HTTP/2: bytes between requests (PING, WINDOW_UPDATE) do not start a request head,
    /// so only the idle deadline applies once the first request is in.
    multiplexed: bool,
    phase: Phase,
    sleep: Pin<Box<Sleep>>,
    armed: Option<Instant>,
}

impl<T> DeadlineIo<T> {
    /// `started`: when the connection was accepted (the first head's deadline counts from
    /// there, TLS handshake included).
    pub fn new(
        inner: T,
        activity: Arc<ConnActivity>,
        idle_timeout: Duration,
        header_timeout: Duration,
        started: Instant,
        multiplexed: bool,
    ) -> Self {
        DeadlineIo {
            inner,
            activity,
            idle_timeout,
            header_timeout,
            multiplexed,
            phase: Phase::Head { since: started },
            sleep: Box::pin(tokio::time::sleep_until(started + header_timeout)),
            armed: Some(started + header_timeout),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Head { since } => Some(since + self.header_timeout),
            Phase::Idle { since } => Some(since + self.idle_timeout),
            Phase::Busy => None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for DeadlineIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.activity.in_progress() {
            this.phase = Phase::Busy;
        } else if this.phase == Phase::Busy {
            this.phase = Phase::Idle {
                since: Instant::now(),
            };
        }
        match res {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && !this.multiplexed {
                    if let Phase::Idle { .. } = this.phase {
                        this.phase = Phase::Head {
                            since: Instant::now(),
                        };
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some(deadline) = this.deadline() else {
                    return Poll::Pending;
                };
                if this.armed != Some(deadline) {
                    this.sleep.as_mut().reset(deadline);
                    this.armed = Some(deadline);
                }
                match this.sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        match this.phase {
                            Phase::Idle { .. } => "idle timeout",
                            _ => "header read timeout",
                        },
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

delegate_async_write!(DeadlineIo);

pub(crate) use delegate_async_write;

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

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::request_line::{self, LineWatch, Rejecting, Verdict};

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
    /// HTTP/1: each request's target against `max_request_line` as it is read.
    line: LineWatch,
    /// The target was too long: the 414 is being answered instead of reading on.
    rejecting: Option<Rejecting>,
}

impl<T> DeadlineIo<T> {
    /// `started`: when the connection was accepted (the first head's deadline counts from
    /// there, TLS handshake included). `max_request_line`: see [`request_line`] (HTTP/1
    /// only; 0 turns it off).
    pub fn new(
        inner: T,
        activity: Arc<ConnActivity>,
        (idle_timeout, header_timeout): (Duration, Duration),
        started: Instant,
        multiplexed: bool,
        max_request_line: u64,
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
            line: LineWatch::new(if multiplexed { 0 } else { max_request_line }),
            rejecting: None,
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

impl<T> DeadlineIo<T> {
    /// Nothing to read yet: fail once the current phase's deadline has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(deadline) = self.deadline() else {
            return Poll::Pending;
        };
        if self.armed != Some(deadline) {
            self.sleep.as_mut().reset(deadline);
            self.armed = Some(deadline);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                match self.phase {
                    Phase::Idle { .. } => "idle timeout",
                    _ => "header read timeout",
                },
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> DeadlineIo<T> {
    /// Answering 414 (under the head's deadline) instead of reading on.
    fn poll_reject(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let Some(step) = self.rejecting.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        match request_line::poll_reject(step, &mut self.inner, cx, buf) {
            Poll::Pending => self.poll_deadline(cx),
            done => done,
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin> AsyncRead for DeadlineIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.rejecting.is_some() {
            return this.poll_reject(cx, buf);
        }
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
                        this.line.start();
                    }
                    if let Phase::Head { .. } = this.phase {
                        if this.line.watching()
                            && this.line.scan(&buf.filled()[before..]) == Verdict::TooLong
                        {
                            // hyper never sees these bytes; the connection answers 414.
                            buf.set_filled(before);
                            this.rejecting = Some(Rejecting::Write(0));
                            return this.poll_reject(cx, buf);
                        }
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_deadline(cx),
        }
    }
}

delegate_async_write!(DeadlineIo);

pub(crate) use delegate_async_write;

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncWriteExt, DuplexStream};
    use tokio::time::advance;

    const IDLE: Duration = Duration::from_secs(10);
    const HEADER: Duration = Duration::from_secs(2);
    const MS: Duration = Duration::from_millis(1);

    /// A `DeadlineIo` over one end of a duplex pipe accepted now, the client's end, and
    /// the activity count its service would hold.
    fn conn(multiplexed: bool) -> (DeadlineIo<DuplexStream>, DuplexStream, Arc<ConnActivity>) {
        let (server, client) = duplex(1024);
        let activity = Arc::new(ConnActivity::default());
        let io = DeadlineIo::new(
            server,
            Arc::clone(&activity),
            (IDLE, HEADER),
            Instant::now(),
            multiplexed,
            0,
        );
        (io, client, activity)
    }

    /// Poll one read in the test task's own context: Pending, the bytes read, or the error.
    async fn read(io: &mut DeadlineIo<DuplexStream>) -> Poll<io::Result<Vec<u8>>> {
        std::future::poll_fn(|cx| {
            let mut buf = [0u8; 64];
            let mut rb = ReadBuf::new(&mut buf);
            Poll::Ready(
                Pin::new(&mut *io)
                    .poll_read(cx, &mut rb)
                    .map_ok(|()| rb.filled().to_vec()),
            )
        })
        .await
    }

    async fn pending(io: &mut DeadlineIo<DuplexStream>) {
        match read(io).await {
            Poll::Pending => {}
            other => panic!("expected a read still waiting, got {other:?}"),
        }
    }

    async fn bytes(io: &mut DeadlineIo<DuplexStream>, want: &[u8]) {
        match read(io).await {
            Poll::Ready(Ok(b)) => assert_eq!(b, want),
            other => panic!("expected {want:?}, got {other:?}"),
        }
    }

    async fn timed_out(io: &mut DeadlineIo<DuplexStream>, why: &str) {
        match read(io).await {
            Poll::Ready(Err(e)) => {
                assert_eq!(e.kind(), io::ErrorKind::TimedOut);
                assert_eq!(e.to_string(), why);
            }
            other => panic!("expected TimedOut ({why}), got {other:?}"),
        }
    }

    /// One request served and answered: busy while the `ActiveRequest` lives, then idle.
    async fn serve_one(io: &mut DeadlineIo<DuplexStream>, activity: &Arc<ConnActivity>) {
        let request = ActiveRequest::new(activity);
        pending(io).await;
        drop(request);
        pending(io).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_head_times_out_exactly_at_header_read_timeout() {
        let (mut io, _client, _activity) = conn(false);
        pending(&mut io).await;
        advance(HEADER - MS).await;
        pending(&mut io).await;
        advance(MS).await;
        timed_out(&mut io, "header read timeout").await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickled_head_gets_no_extension() {
        let (mut io, mut client, _activity) = conn(false);
        // A byte every 100 ms, the last one 1 ms before the deadline: each is read...
        for _ in 0..19 {
            advance(Duration::from_millis(100)).await;
            client.write_all(b"G").await.unwrap();
            bytes(&mut io, b"G").await;
            pending(&mut io).await;
        }
        advance(Duration::from_millis(99)).await;
        client.write_all(b"E").await.unwrap();
        bytes(&mut io, b"E").await;
        pending(&mut io).await;
        // ...and the head still fails at header_read_timeout from accept.
        advance(MS).await;
        timed_out(&mut io, "header read timeout").await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_closes_after_idle_timeout_not_header_read_timeout() {
        let (mut io, _client, activity) = conn(false);
        serve_one(&mut io, &activity).await;
        // Well past header_read_timeout: still open.
        advance(HEADER * 2).await;
        pending(&mut io).await;
        advance(IDLE - HEADER * 2 - MS).await;
        pending(&mut io).await;
        advance(MS).await;
        timed_out(&mut io, "idle timeout").await;
    }

    #[tokio::test(start_paused = true)]
    async fn no_deadline_applies_while_a_request_is_active() {
        let (mut io, mut client, activity) = conn(false);
        let request = ActiveRequest::new(&activity);
        pending(&mut io).await;
        advance((IDLE + HEADER) * 1000).await;
        pending(&mut io).await;
        // Bytes while busy (a request body) start no head deadline either.
        client.write_all(b"body").await.unwrap();
        bytes(&mut io, b"body").await;
        advance((IDLE + HEADER) * 1000).await;
        pending(&mut io).await;
        // Once the request ends, the idle deadline counts from then.
        drop(request);
        pending(&mut io).await;
        advance(IDLE - MS).await;
        pending(&mut io).await;
        advance(MS).await;
        timed_out(&mut io, "idle timeout").await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_byte_after_idle_starts_a_fresh_head_deadline() {
        let (mut io, mut client, activity) = conn(false);
        serve_one(&mut io, &activity).await;
        // Idle for longer than header_read_timeout (so the accept-time head deadline is
        // long gone), then the first byte of the next request.
        advance(HEADER + HEADER / 2).await;
        client.write_all(b"G").await.unwrap();
        bytes(&mut io, b"G").await;
        pending(&mut io).await;
        // The head deadline counts from that byte, and ends well before the idle one would.
        advance(HEADER - MS).await;
        pending(&mut io).await;
        advance(MS).await;
        timed_out(&mut io, "header read timeout").await;
    }

    #[tokio::test(start_paused = true)]
    async fn multiplexed_bytes_while_idle_start_no_head_deadline() {
        let (mut io, mut client, activity) = conn(true);
        serve_one(&mut io, &activity).await;
        // A PING's worth of bytes while idle.
        advance(HEADER).await;
        client.write_all(b"ping").await.unwrap();
        bytes(&mut io, b"ping").await;
        pending(&mut io).await;
        // No head deadline: still open a header_read_timeout later...
        advance(HEADER).await;
        pending(&mut io).await;
        // ...and closed by the idle deadline, counted from the end of the request.
        advance(IDLE - HEADER * 2 - MS).await;
        pending(&mut io).await;
        advance(MS).await;
        timed_out(&mut io, "idle timeout").await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_target_over_max_request_line_is_answered_414_and_never_read_by_hyper() {
        use tokio::io::AsyncReadExt;
        let (server, mut client) = duplex(1024);
        let activity = Arc::new(ConnActivity::default());
        let mut io = DeadlineIo::new(server, activity, (IDLE, HEADER), Instant::now(), false, 8);
        client.write_all(b"GET /12345678").await.unwrap();
        // The reader gets none of it; the 414 goes out and the write side is shut.
        pending(&mut io).await;
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert_eq!(answer, request_line::RESPONSE);
        // What the client still sends is dropped; its close ends the connection.
        client.write_all(b"more").await.unwrap();
        pending(&mut io).await;
        drop(client);
        match read(&mut io).await {
            Poll::Ready(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::InvalidData),
            other => panic!("expected the end of the connection, got {other:?}"),
        }
    }
}

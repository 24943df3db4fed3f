//! The request body on its way to a clone ([`UpstreamBody`]): the client's body, streamed
//! frame by frame under `max_body` and `body_read_timeout`, or nothing (health checks,
//! bodiless requests, replays).
//!
//! Owns: the two request-body guards. Must not touch: any clone's state (this type is
//! what a clone's idle connections are typed over, so it must not depend on the clone).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::error::BodyError;

/// A request body on its way to a clone. `B` is the client's body: hyper's [`Incoming`]
/// everywhere but in this file's tests, which feed frames by hand.
#[derive(Debug)]
pub enum UpstreamBody<B = Incoming> {
    Empty,
    Client(ClientBody<B>),
}

/// The client's request body, streamed with two guards: at most `max_body` bytes (0 = no
/// limit), and no pause between frames longer than `body_read_timeout`. Either failing
/// ends the stream with a [`BodyError`], which aborts the upstream request (the clone
/// never sees a complete body the client did not send).
#[derive(Debug)]
pub struct ClientBody<B = Incoming> {
    inner: B,
    max: u64,
    seen: u64,
    idle: Duration,
    /// Armed on the first wait for data, reset after every frame.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> ClientBody<B> {
    pub fn new(inner: B, max: u64, idle: Duration) -> Self {
        ClientBody {
            inner,
            max,
            seen: 0,
            idle,
            timer: None,
        }
    }
}

impl<B> Body for UpstreamBody<B>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    /// A client body fed frame by frame from the test (its `Error` is hyper's, as
    /// [`Incoming`]'s is, but it never fails).
    struct Fed(mpsc::UnboundedReceiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = hyper::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    const IDLE: Duration = Duration::from_secs(1);
    const MS: Duration = Duration::from_millis(1);

    fn body(max: u64) -> (mpsc::UnboundedSender<Bytes>, UpstreamBody<Fed>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            tx,
            UpstreamBody::Client(ClientBody::new(Fed(rx), max, IDLE)),
        )
    }

    /// Poll the body once, in the test task's own context.
    async fn poll(b: &mut UpstreamBody<Fed>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *b).poll_frame(cx))).await
    }

    fn data(p: Poll<Option<Result<Frame<Bytes>, BodyError>>>) -> Bytes {
        match p {
            Poll::Ready(Some(Ok(f))) => f.into_data().unwrap_or_default(),
            other => panic!("expected a data frame, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_longer_than_idle_times_out_exactly_after_idle() {
        let (tx, mut b) = body(0);
        tx.send(Bytes::from_static(b"one")).unwrap();
        assert_eq!(data(poll(&mut b).await), "one");
        assert!(poll(&mut b).await.is_pending());
        // A second frame just inside the limit resets it.
        tokio::time::advance(IDLE - MS).await;
        tx.send(Bytes::from_static(b"two")).unwrap();
        assert_eq!(data(poll(&mut b).await), "two");
        assert!(poll(&mut b).await.is_pending());
        // Then silence: still waiting 1 ms before `idle` has passed since that frame...
        tokio::time::advance(IDLE - MS).await;
        assert!(poll(&mut b).await.is_pending());
        // ...and Timeout at `idle`.
        tokio::time::advance(MS).await;
        match poll(&mut b).await {
            Poll::Ready(Some(Err(BodyError::Timeout))) => {}
            other => panic!("expected Timeout, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_every_idle_minus_1ms_never_times_out() {
        let (tx, mut b) = body(0);
        assert!(poll(&mut b).await.is_pending());
        for i in 0..50u32 {
            tokio::time::advance(IDLE - MS).await;
            assert!(poll(&mut b).await.is_pending(), "frame {i}: gave up early");
            tx.send(Bytes::from(i.to_string())).unwrap();
            assert_eq!(data(poll(&mut b).await), i.to_string());
        }
        // 50 × (idle - 1 ms) of streaming, far longer than idle; the end is clean.
        drop(tx);
        assert!(matches!(poll(&mut b).await, Poll::Ready(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_over_max_ends_with_too_large() {
        // Exactly max: forwarded whole.
        let (tx, mut b) = body(10);
        tx.send(Bytes::from_static(b"123456")).unwrap();
        tx.send(Bytes::from_static(b"7890")).unwrap();
        drop(tx);
        assert_eq!(data(poll(&mut b).await), "123456");
        assert_eq!(data(poll(&mut b).await), "7890");
        assert!(matches!(poll(&mut b).await, Poll::Ready(None)));
        // One byte more: the frame that crosses max is an error, not data.
        let (tx, mut b) = body(10);
        tx.send(Bytes::from_static(b"123456")).unwrap();
        tx.send(Bytes::from_static(b"78901")).unwrap();
        assert_eq!(data(poll(&mut b).await), "123456");
        match poll(&mut b).await {
            Poll::Ready(Some(Err(BodyError::TooLarge))) => {}
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }
}

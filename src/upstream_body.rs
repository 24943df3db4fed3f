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

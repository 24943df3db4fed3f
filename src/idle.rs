//! A clone's idle upstream HTTP/1.1 connections, kept alive for the next request.
//!
//! Lives inside the clone's `BackendState`, so it carries over on reload, is cleared when
//! the clone drains and is dropped with it. Requests to different clones never share a
//! lock; for one clone the critical section is a push, or a look from the newest end for a
//! connection that is ready (almost always the first one looked at), or a pop.
//!
//! A connection is kept only when its previous response body was read to the end without
//! error (see `ResponseBody`); one that saw an error is dropped, which closes it. Last in,
//! first out, so the warmest connections are reused and the surplus ages out on the clone's
//! own keep-alive timeout.
//!
//! Owns: idle connections. Must not touch: the clone's flags and counters, the request.

use std::sync::{Mutex, PoisonError};

use hyper::client::conn::http1::SendRequest;

use crate::upstream_body::UpstreamBody;

/// Idle connections kept per clone. Sized for peak concurrency of a busy balancer; a
/// connection above it is closed rather than pooled.
pub const MAX_IDLE_PER_CLONE: usize = 1024;

pub type Sender = SendRequest<UpstreamBody>;

#[derive(Debug, Default)]
pub struct IdleConns {
    idle: Mutex<Vec<Sender>>,
}

impl IdleConns {
    /// The most recently returned idle connection that is ready for a request now.
    /// (One put back at the end of a body may still be finishing its bookkeeping; a
    /// request taking it would wait a scheduling round.)
    pub fn take_ready(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let i = idle.iter().rposition(|s| s.is_ready())?;
        Some(idle.swap_remove(i))
    }

    /// Any open idle connection, most recently returned first; callers wait on `ready()`.
    pub fn take(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(s) = idle.pop() {
            if !s.is_closed() {
                return Some(s);
            }
        }
        None
    }

    /// Keep `sender` for the next request, unless it is closed or `closing` (the clone is
    /// draining: its idle connections are closed, not kept).
    pub fn put(&self, sender: Sender, closing: bool) {
        if closing || sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE_PER_CLONE {
            idle.push(sender);
        }
    }

    /// Close every idle connection (dropping a sender closes its connection).
    pub fn clear(&self) {
        let drained: Vec<Sender> =
            std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        drop(drained);
    }
}

//! A clone's idle upstream HTTP/1.1 connections, kept alive for the next request.
//!
//! Lives inside the clone's `BackendState`, so it carries over on reload, is cleared when
//! the clone drains and is dropped with it. One shard per worker thread: a worker reuses
//! only the connections it opened (whose tasks run on it), so no exchange crosses threads
//! and workers never share a lock. Within a shard the critical section is a push, or a
//! look from the newest end for a connection that is ready (almost always the first one
//! looked at), or a pop.
//!
//! A connection is kept only when its previous response body was read to the end without
//! error (see `ResponseBody`); one that saw an error is dropped, which closes it. Last in,
//! first out, so the warmest connections are reused and the surplus ages out on the clone's
//! own keep-alive timeout.
//!
//! Owns: idle connections. Must not touch: the clone's flags and counters, the request.

use std::cell::Cell;
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::upstream_conn::Upstream;

/// Idle connections kept per clone (split evenly between the shards, at least
/// [`MIN_PER_SHARD`] each). Sized for peak concurrency of a busy balancer; a connection
/// above it is closed rather than pooled.
pub const MAX_IDLE_PER_CLONE: usize = 1024;
const MIN_PER_SHARD: usize = 64;
/// Shards per clone at most (workers beyond it share shards, which stays correct).
const MAX_SHARDS: usize = 16;

thread_local! {
    /// The shard this thread takes from and returns to: its worker number (0 for any
    /// other thread).
    static SHARD: Cell<usize> = const { Cell::new(0) };
}

/// Called once by each worker thread before it serves: its connections go to, and come
/// from, shard `worker`.
pub fn set_worker(worker: usize) {
    SHARD.with(|s| s.set(worker));
}

/// Shards per clone: one per core (up to [`MAX_SHARDS`]).
fn shard_count() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_SHARDS)
    })
}

/// A clone's idle connections, one shard per worker thread. A connection's socket is
/// registered with the reactor of the worker that opened it, so a request on another
/// worker would have its wake-ups cross threads: each worker reuses only its own
/// connections, as nginx's per-worker keep-alive pools do.
#[derive(Debug)]
pub struct IdleConns {
    /// Never empty (at least one shard).
    shards: Box<[Mutex<Vec<Upstream>>]>,
    per_shard: usize,
}

impl Default for IdleConns {
    fn default() -> Self {
        let n = shard_count();
        IdleConns {
            shards: (0..n).map(|_| Mutex::default()).collect(),
            per_shard: (MAX_IDLE_PER_CLONE / n).max(MIN_PER_SHARD),
        }
    }
}

impl IdleConns {
    /// This thread's shard, locked.
    fn mine(&self) -> std::sync::MutexGuard<'_, Vec<Upstream>> {
        let i = SHARD.with(Cell::get) % self.shards.len();
        // `i < len`: `shards` is never empty and `i` is taken modulo its length.
        self.shards[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently returned idle connection that is still open and ready for a
    /// request now. Connections found closed (by the clone, while they sat idle) are
    /// dropped on the way; one still finishing its last exchange's bookkeeping is left for
    /// [`IdleConns::take`].
    pub fn take_ready(&self) -> Option<Upstream> {
        let mut idle = self.mine();
        while let Some(i) = idle.iter().rposition(Upstream::is_ready) {
            let mut conn = idle.swap_remove(i);
            if conn.is_open() {
                return Some(conn);
            }
        }
        None
    }

    /// Any open idle connection, most recently returned first; callers wait on
    /// `Upstream::ready()`.
    pub fn take(&self) -> Option<Upstream> {
        let mut idle = self.mine();
        while let Some(mut s) = idle.pop() {
            if s.is_open() {
                return Some(s);
            }
        }
        None
    }

    /// Keep `conn` for the next request, unless it is closed or `closing` (the clone is
    /// draining: its idle connections are closed, not kept).
    pub fn put(&self, conn: Upstream, closing: bool) {
        if closing || !conn.is_reusable() {
            return;
        }
        let mut idle = self.mine();
        if idle.len() < self.per_shard {
            idle.push(conn);
        }
    }

    /// Close every idle connection (dropping one closes it).
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            let drained: Vec<Upstream> =
                std::mem::take(&mut *shard.lock().unwrap_or_else(PoisonError::into_inner));
            drop(drained);
        }
    }
}

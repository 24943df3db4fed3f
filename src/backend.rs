//! One clone: its configuration ([`Backend`]) and its shared, mutable state
//! ([`BackendState`]: atomics and the clone's own idle-connection pool).
//!
//! A `BackendState` is keyed by the clone's address and lives in an `Arc`, so a reload that
//! keeps the address keeps the state (health, in-flight, counters, pooled connections).
//! Writers touch one atomic field each: health checks write `down`, the admin API writes
//! `disabled`, reload writes `draining`. The request path only reads flags and bumps
//! counters, so it never waits on anyone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::task::AbortHandle;

use crate::idle::IdleConns;

/// A clone as the routing table sees it: identity and weight from lb.toml, plus the state.
#[derive(Debug, Clone)]
pub struct Backend {
    pub name: Arc<str>,
    pub address: SocketAddr,
    pub weight: u32,
    pub state: Arc<BackendState>,
}

impl Backend {
    #[inline]
    pub fn is_available(&self) -> bool {
        self.state.is_available()
    }
}

/// Availability flags; a clone is available to new requests only when none is set.
const DOWN: u8 = 1;
const DISABLED: u8 = 2;
const DRAINING: u8 = 4;

/// Per-clone state shared by every thread and carried over by reloads.
#[derive(Debug)]
pub struct BackendState {
    address: SocketAddr,
    flags: AtomicU8,
    in_flight: AtomicUsize,
    requests: AtomicU64,
    failures: AtomicU64,
    retries: AtomicU64,
    ejections: AtomicU64,
    /// Connection-level failures of real requests in a row (passive ejection).
    consecutive_failures: AtomicU32,
    pub(crate) idle: IdleConns,
    /// The tasks driving this clone's upstream connections, so the end of a drain can
    /// close them all. Touched when a connection opens, never per request.
    connections: Mutex<Vec<AbortHandle>>,
}

impl BackendState {
    pub fn new(address: SocketAddr) -> Self {
        BackendState {
            address,
            flags: AtomicU8::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            idle: IdleConns::default(),
            connections: Mutex::new(Vec::new()),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Up, not disabled, not draining: may receive new requests. One load.
    #[inline]
    pub fn is_available(&self) -> bool {
        self.flags.load(Relaxed) == 0
    }

    pub fn is_down(&self) -> bool {
        self.flags.load(Relaxed) & DOWN != 0
    }
    pub fn is_disabled(&self) -> bool {
        self.flags.load(Relaxed) & DISABLED != 0
    }
    pub fn is_draining(&self) -> bool {
        self.flags.load(Relaxed) & DRAINING != 0
    }

    /// Returns whether the clone was down before.
    pub fn set_down(&self, down: bool) -> bool {
        self.set_flag(DOWN, down) & DOWN != 0
    }
    pub fn set_disabled(&self, disabled: bool) {
        self.set_flag(DISABLED, disabled);
    }
    pub fn set_draining(&self, draining: bool) {
        self.set_flag(DRAINING, draining);
        if draining {
            self.idle.clear();
        }
    }

    /// Set or clear one flag; returns all flags as they were before.
    fn set_flag(&self, flag: u8, on: bool) -> u8 {
        if on {
            self.flags.fetch_or(flag, Relaxed)
        } else {
            self.flags.fetch_and(!flag, Relaxed)
        }
    }

    /// Close every connection to this clone now, idle or busy (end of a drain): requests
    /// still in flight on it fail, and their clients see an aborted transfer.
    pub fn cut_connections(&self) {
        self.idle.clear();
        let tasks = std::mem::take(
            &mut *self
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for t in tasks {
            t.abort();
        }
    }

    pub(crate) fn track_connection(&self, task: AbortHandle) {
        let mut tasks = self
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// Requests (or upgraded connections) on this clone right now.
    #[inline]
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Relaxed)
    }

    /// Requests sent to this clone since it was first configured.
    pub fn requests_total(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    /// Requests that failed on this clone (connect error, reset, timeout).
    pub fn failures_total(&self) -> u64 {
        self.failures.load(Relaxed)
    }

    /// Attempts on this clone that failed and were retried on another clone.
    pub fn retries_total(&self) -> u64 {
        self.retries.load(Relaxed)
    }

    /// Times this clone was ejected by passive outlier detection.
    pub fn ejections_total(&self) -> u64 {
        self.ejections.load(Relaxed)
    }

    pub(crate) fn record_retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    /// A failure that says nothing about reachability (timeout, error mid-body).
    pub(crate) fn record_failure(&self) {
        self.failures.fetch_add(1, Relaxed);
    }

    /// A connection-level failure of a real request (refused, reset before the response,
    /// connect timeout; and 5xx when `eject_on_5xx`). Returns true when this failure
    /// ejected the clone: the `threshold`-th in a row, and the clone was up until now.
    pub(crate) fn record_connection_failure(&self, threshold: u32) -> bool {
        self.failures.fetch_add(1, Relaxed);
        let run = self.consecutive_failures.fetch_add(1, Relaxed) + 1;
        if run >= threshold && !self.set_down(true) {
            self.ejections.fetch_add(1, Relaxed);
            return true;
        }
        false
    }

    /// A real request got its response: the failure run is over. (Read first, so the
    /// common case writes nothing to a cache line every thread shares.)
    #[inline]
    pub(crate) fn record_success(&self) {
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
    }

    /// Put the clone back with `run` failures already counted: `threshold - 1` re-admits
    /// it on probation (its next connection failure ejects it again), 0 clears it.
    pub(crate) fn readmit(&self, run: u32) {
        self.consecutive_failures.store(run, Relaxed);
        self.set_down(false);
    }

    /// Count a request as in flight on this clone until the guard is dropped.
    pub fn acquire(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Relaxed);
        self.requests.fetch_add(1, Relaxed);
        InFlightGuard {
            state: Arc::clone(self),
        }
    }
}

/// Holds one unit of a clone's in-flight count. The proxy moves it into the response body,
/// so a long download counts as in flight until its last byte.
#[derive(Debug)]
pub struct InFlightGuard {
    state: Arc<BackendState>,
}

impl InFlightGuard {
    pub fn state(&self) -> &Arc<BackendState> {
        &self.state
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_guard() {
        let s = Arc::new(BackendState::new("127.0.0.1:1".parse().unwrap()));
        assert!(s.is_available());
        s.set_down(true);
        s.set_disabled(true);
        assert!(!s.is_available());
        s.set_down(false);
        assert!(!s.is_available() && s.is_disabled() && !s.is_down());
        s.set_disabled(false);
        assert!(s.is_available());
        let g1 = s.acquire();
        let g2 = s.acquire();
        assert_eq!(s.in_flight(), 2);
        drop(g1);
        assert_eq!(s.in_flight(), 1);
        drop(g2);
        assert_eq!((s.in_flight(), s.requests_total()), (0, 2));
    }

    #[test]
    fn passive_ejection_after_threshold_and_probation() {
        let s = BackendState::new("127.0.0.1:1".parse().unwrap());
        assert!(!s.record_connection_failure(3));
        s.record_success();
        assert!(!s.record_connection_failure(3));
        assert!(!s.record_connection_failure(3));
        assert!(s.record_connection_failure(3), "third in a row ejects");
        assert!(s.is_down());
        assert!(
            !s.record_connection_failure(3),
            "already out: not ejected twice"
        );
        assert_eq!(s.ejections_total(), 1);
        s.readmit(2);
        assert!(s.is_available());
        assert!(
            s.record_connection_failure(3),
            "on probation one failure ejects"
        );
    }
}

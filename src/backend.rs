//! One clone: its configuration ([`Backend`]) and its shared, mutable state
//! ([`BackendState`]: atomics and the clone's own idle-connection pool).
//!
//! A `BackendState` is keyed by the clone's address and lives in an `Arc`, so a reload that
//! keeps the address keeps the state (health, in-flight, counters, pooled connections).
//! Writers touch one atomic field each: health checks write `down`, the admin API writes
//! `disabled`, reload writes `draining`. The request path only reads flags and bumps
//! counters, so it never waits on anyone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use crate::pool::Pool;

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
    pub(crate) pool: Pool,
}

impl BackendState {
    pub fn new(address: SocketAddr) -> Self {
        BackendState {
            address,
            flags: AtomicU8::new(0),
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            pool: Pool::default(),
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

    pub fn set_down(&self, down: bool) {
        self.set_flag(DOWN, down);
    }
    pub fn set_disabled(&self, disabled: bool) {
        self.set_flag(DISABLED, disabled);
    }
    pub fn set_draining(&self, draining: bool) {
        self.set_flag(DRAINING, draining);
        if draining {
            self.pool.clear();
        }
    }

    fn set_flag(&self, flag: u8, on: bool) {
        if on {
            self.flags.fetch_or(flag, Relaxed);
        } else {
            self.flags.fetch_and(!flag, Relaxed);
        }
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

    pub(crate) fn record_failure(&self) {
        self.failures.fetch_add(1, Relaxed);
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
}

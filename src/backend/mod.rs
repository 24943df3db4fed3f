//! One clone: its configuration ([`Backend`]) and its shared, mutable state
//! ([`BackendState`]: atomics and the clone's own idle connections).
//!
//! Owns: a clone's flags, counters and idle connections. Must not touch: the routing
//! table, health decisions (health.rs decides up and down; this module only stores the
//! flag and the failure run), the request path's types.
//!
//! A `BackendState` is keyed by the clone's address and lives in an `Arc`, so a reload that
//! keeps the address keeps the state (health, in-flight, counters, idle connections).
//! Writers touch one bit of one atomic field each: health checks and passive ejection
//! write `down`, the control plane writes `draining` (and, with the admin API, `disabled`;
//! with `[audit] eject_outliers`, `outlier`). Each writer sets or clears only its own bit,
//! so none undoes another's (a passing health check cannot readmit an ejected outlier).
//! The request path only reads flags and bumps counters, so it never waits on anyone.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use tokio::task::AbortHandle;

use crate::idle::IdleConns;
use crate::stats::{ChecksCount, LastCheck, LatencyHistogram};
use crate::upstream_conn::Sockets;

/// A clone as the routing table sees it: identity and weight from lb.toml, plus the state.
#[derive(Debug, Clone)]
pub struct Backend {
    pub name: Arc<str>,
    pub address: SocketAddr,
    pub weight: u32,
    /// The DNS name it was resolved from; `None` for a clone written in lb.toml.
    pub source: Option<Arc<str>>,
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
/// Ejected by the peer comparison (`[audit] eject_outliers`): markedly worse than the
/// other clones over the audit window. Written only by the control plane's audit step.
const OUTLIER: u8 = 16;
/// All of them: [`BackendState::is_available`] is one load and this mask.
const UNAVAILABLE: u8 = DOWN | DISABLED | DRAINING | OUTLIER;
/// Not an availability flag: set when a drain timed out and its connections were cut, so
/// the requests that fail because of it are recorded as `cut`, not as the clone's error.
const CUT: u8 = 8;

/// Status classes counted per clone: 1xx … 5xx.
pub const STATUS_CLASSES: usize = crate::stats::STATUS_CLASSES;

/// Per-clone state shared by every thread and carried over by reloads.
#[derive(Debug)]
pub struct BackendState {
    address: SocketAddr,
    /// The address as a `Host` value: what a request that came without one (HTTP/1.0) is
    /// sent to this clone with. Built once, cloned (a reference count) per such request.
    host: http::HeaderValue,
    /// The clone's name in the current table (a reload may rename it). Read off the
    /// request path only (logs, status).
    name: ArcSwap<Arc<str>>,
    flags: AtomicU8,
    /// The code version its last passing check reported: an id in the deploy
    /// controller's `Versions` (0 = unknown), in the low 32 bits; the high 32 count the
    /// enables that cleared it, so a check that was already under way when the clone was
    /// enabled (and may have been answered by the old code) cannot store its version
    /// afterwards. Written by the checker and an enable, read by the request path with one
    /// load.
    version: AtomicU64,
    in_flight: AtomicUsize,
    /// Attempts sent to this clone (a retried request counts once per clone it tried).
    attempts: AtomicU64,
    /// Client requests answered from this clone's attempt, by status class (1xx at 0).
    responses: [AtomicU64; STATUS_CLASSES],
    failures: AtomicU64,
    retries: AtomicU64,
    ejections: AtomicU64,
    /// Connection-level failures of real requests in a row (passive ejection).
    consecutive_failures: AtomicU32,
    /// Time to response head of the requests answered from this clone (written by the
    /// completion hook).
    latency: LatencyHistogram,
    /// Active health checks passed and failed, and the last one: written only by the
    /// clone's checker (`health::check_loop`), read off the request path.
    checks_passed: AtomicU64,
    checks_failed: AtomicU64,
    last_check: Mutex<Option<LastCheck>>,
    pub(crate) idle: IdleConns,
    /// This clone's open upstream sockets, so the end of a drain can cut every exchange
    /// in flight (each is driven by its request's own task). Touched when a connection
    /// opens, never per request.
    sockets: Sockets,
    /// The tasks of this clone's WebSocket tunnels, aborted by a cut as well.
    connections: Mutex<Vec<AbortHandle>>,
}

/// `ip:port` (IPv6 bracketed) as a header value; an address always makes a valid one.
fn host_value(address: SocketAddr) -> http::HeaderValue {
    let text = address.to_string();
    http::HeaderValue::try_from(text).unwrap_or(http::HeaderValue::from_static("localhost"))
}

impl BackendState {
    /// A clone named by its address until [`BackendState::set_name`].
    pub fn new(address: SocketAddr) -> Self {
        BackendState {
            address,
            host: host_value(address),
            name: ArcSwap::from_pointee(Arc::from(address.to_string())),
            flags: AtomicU8::new(0),
            version: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            attempts: AtomicU64::new(0),
            responses: Default::default(),
            failures: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            consecutive_failures: AtomicU32::new(0),
            latency: LatencyHistogram::new(),
            checks_passed: AtomicU64::new(0),
            checks_failed: AtomicU64::new(0),
            last_check: Mutex::new(None),
            idle: IdleConns::default(),
            sockets: Sockets::default(),
            connections: Mutex::new(Vec::new()),
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The clone's address as a `Host` value (`127.0.0.1:9001`, `[::1]:9001`).
    pub fn host(&self) -> &http::HeaderValue {
        &self.host
    }

    /// The clone's name in the table that holds it.
    pub fn name(&self) -> Arc<str> {
        Arc::clone(&self.name.load())
    }

    /// Rename (a reload kept the address but changed the name).
    pub fn set_name(&self, name: &Arc<str>) {
        if ***self.name.load() != **name {
            self.name.store(Arc::new(Arc::clone(name)));
        }
    }

    /// Up, not disabled, not draining, not an ejected outlier: may receive new requests.
    /// One load.
    #[inline]
    pub fn is_available(&self) -> bool {
        self.flags.load(Relaxed) & UNAVAILABLE == 0
    }

    /// Available but for the `OUTLIER` mark: what the peer comparison calls available (it
    /// knows which clone it ejected itself).
    pub fn is_available_but_for_outlier(&self) -> bool {
        self.flags.load(Relaxed) & (UNAVAILABLE & !OUTLIER) == 0
    }

    /// The version id its checks report (0 = unknown).
    #[inline]
    pub fn version(&self) -> u32 {
        self.version.load(Relaxed) as u32
    }

    /// Store the version id; returns the one before.
    pub fn set_version(&self, id: u32) -> u32 {
        let before = self
            .version
            .fetch_update(Relaxed, Relaxed, |v| Some((v & !0xffff_ffff) | id as u64));
        // `fetch_update` with a closure that always returns `Some` cannot fail.
        before.unwrap_or_else(|v| v) as u32
    }

    /// The version as a check starts: pass it to [`BackendState::set_version_from`].
    pub fn version_stamp(&self) -> u64 {
        self.version.load(Relaxed)
    }

    /// Store the version id a check that started at `stamp` found, unless the clone was
    /// enabled since (its code may have changed under that check). Returns the id before,
    /// or `None` when the check came too late to count.
    pub fn set_version_from(&self, stamp: u64, id: u32) -> Option<u32> {
        let new = (stamp & !0xffff_ffff) | id as u64;
        match self.version.compare_exchange(stamp, new, Relaxed, Relaxed) {
            Ok(before) => Some(before as u32),
            Err(now) if now >> 32 == stamp >> 32 => Some(self.set_version(id)),
            Err(_) => None,
        }
    }

    /// Forget the version (an enable: its code may have changed while it was out), and
    /// make any check already under way too late to set it.
    pub fn clear_version(&self) {
        let _ = self.version.fetch_update(Relaxed, Relaxed, |v| {
            Some(((v >> 32).wrapping_add(1) & 0xffff_ffff) << 32)
        });
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
    /// Ejected as an outlier by the peer comparison (`[audit] eject_outliers`).
    pub fn is_outlier(&self) -> bool {
        self.flags.load(Relaxed) & OUTLIER != 0
    }
    /// Its drain timed out and its connections were cut.
    pub fn is_cut(&self) -> bool {
        self.flags.load(Relaxed) & CUT != 0
    }

    /// Returns whether the clone was down before. Touches only `DOWN`: an ejected
    /// outlier stays out whatever its checks say.
    pub fn set_down(&self, down: bool) -> bool {
        self.set_flag(DOWN, down) & DOWN != 0
    }
    /// Take the clone out of rotation as an outlier, or put it back (the control plane's
    /// audit step only). Its idle connections are kept: it comes back after one window.
    /// Returns whether it was marked before.
    pub fn set_outlier(&self, outlier: bool) -> bool {
        self.set_flag(OUTLIER, outlier) & OUTLIER != 0
    }
    /// Ops take the clone out of rotation (or put it back): like a draining clone, a
    /// disabled one gets no new request, its idle connections are closed and not refilled,
    /// and requests in flight on it finish.
    pub fn set_disabled(&self, disabled: bool) {
        self.set_flag(DISABLED, disabled);
        if disabled {
            self.idle.clear();
        }
    }

    /// Whether a connection freed by a finished response may be kept for the next request
    /// (not when the clone is draining or disabled).
    #[inline]
    pub fn keeps_idle(&self) -> bool {
        self.flags.load(Relaxed) & (DISABLED | DRAINING) == 0
    }
    pub fn set_draining(&self, draining: bool) {
        self.set_flag(DRAINING, draining);
        if draining {
            self.idle.clear();
        } else {
            self.set_flag(CUT, false);
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
        self.set_flag(CUT, true);
        self.idle.clear();
        self.sockets.shutdown_all();
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

    /// Where a new upstream connection to this clone lists its socket.
    pub(crate) fn sockets(&self) -> &Sockets {
        &self.sockets
    }

    /// A WebSocket tunnel's task, so a cut can end it.
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

    /// Client requests answered from this clone (each counted once, on the clone whose
    /// attempt produced the answer), since it was first configured.
    pub fn requests_total(&self) -> u64 {
        self.responses.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Client requests answered from this clone, by status class: `[1xx, 2xx, 3xx, 4xx,
    /// 5xx]` (a client that left before the answer counts as 499, see `record`).
    pub fn responses_by_class(&self) -> [u64; STATUS_CLASSES] {
        std::array::from_fn(|i| self.responses[i].load(Relaxed))
    }

    /// Attempts sent to this clone: first tries and retries alike.
    pub fn attempts_total(&self) -> u64 {
        self.attempts.load(Relaxed)
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

    /// Count one answered client request under its status class.
    #[inline]
    pub(crate) fn count_response(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, STATUS_CLASSES) - 1;
        self.responses[class].fetch_add(1, Relaxed);
    }

    /// Time to response head of the requests answered from this clone, since it was first
    /// configured.
    pub fn latency(&self) -> &LatencyHistogram {
        &self.latency
    }

    /// Active health checks passed and failed since the clone was first configured.
    pub fn checks(&self) -> ChecksCount {
        ChecksCount {
            passed: self.checks_passed.load(Relaxed),
            failed: self.checks_failed.load(Relaxed),
        }
    }

    /// The last active health check (`None` without `[health]`, or before the first).
    pub fn last_check(&self) -> Option<LastCheck> {
        self.last_check
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Record one active check (its checker only).
    pub(crate) fn record_check(&self, check: LastCheck) {
        let counter = if check.ok {
            &self.checks_passed
        } else {
            &self.checks_failed
        };
        counter.fetch_add(1, Relaxed);
        *self
            .last_check
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(check);
    }

    pub(crate) fn count_retry(&self) {
        self.retries.fetch_add(1, Relaxed);
    }

    pub(crate) fn count_failure(&self) {
        self.failures.fetch_add(1, Relaxed);
    }

    pub(crate) fn count_ejection(&self) {
        self.ejections.fetch_add(1, Relaxed);
    }

    /// One more connection failure in the current run; returns the run's length.
    pub(crate) fn extend_failure_run(&self) -> u32 {
        self.consecutive_failures.fetch_add(1, Relaxed) + 1
    }

    /// A real request got its response: the failure run is over. (Read first, so the
    /// common case writes nothing to a cache line every thread shares.)
    #[inline]
    pub(crate) fn end_failure_run(&self) {
        if self.consecutive_failures.load(Relaxed) != 0 {
            self.consecutive_failures.store(0, Relaxed);
        }
    }

    /// Set the failure run (re-admission on probation starts it at `threshold - 1`).
    pub(crate) fn set_failure_run(&self, run: u32) {
        self.consecutive_failures.store(run, Relaxed);
    }

    /// Count an attempt as in flight on this clone until the guard is dropped.
    pub fn acquire(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Relaxed);
        self.attempts.fetch_add(1, Relaxed);
        InFlightGuard {
            state: Arc::clone(self),
        }
    }

    /// One unit of in-flight for work on the clone's connection that is no attempt of
    /// its own (an abandoned exchange read to its end).
    pub fn hold(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Relaxed);
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
mod tests;

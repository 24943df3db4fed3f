//! The counters behind the admin API and the metrics, and the shapes they are read in.
//!
//! * [`LatencyHistogram`]: fixed log-spaced buckets of time to response head (each upper
//!   bound at most 25 % above the previous one, 100 µs to 65 s, then `+Inf`). One per clone
//!   (in `BackendState`) and one for requests answered without any clone (in
//!   [`ProcessStats`]). Recording is a binary search over 61 integers and two `Relaxed`
//!   atomic adds: no lock, no allocation.
//! * [`ProcessStats`]: one per balancer — requests answered without a clone
//!   (`backend="none"`: rejected requests, 503 with no clone available) by status class
//!   and their latency, the open client connections gauge, reload successes and failures.
//! * The read-side shapes: [`HistogramSnapshot`], [`ProcessSnapshot`], [`LastCheck`],
//!   [`ChecksCount`], [`LastMinute`], [`HistoryPoint`].
//!
//! The per-clone one-second ring that turns these counters into [`LastMinute`] and
//! [`HistoryPoint`]s lives with the control plane (`control/history.rs`), which owns the
//! task that feeds it.
//!
//! Owns: these counters and their arithmetic. Must not touch: anything else — it imports
//! nothing from the crate (a leaf: `backend`, `record`, `server` and `control` import it).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Status classes counted: 1xx … 5xx (the same as `backend::STATUS_CLASSES`).
pub const STATUS_CLASSES: usize = 5;

/// The first bucket's upper bound, in nanoseconds (100 µs).
const FIRST_BOUND_NS: u64 = 100_000;
/// Finite buckets: 100 µs × 1.25^60 ≈ 65 s, the first bound past 60 s.
const FINITE: usize = 61;
/// Buckets, `+Inf` included.
pub const BUCKETS: usize = FINITE + 1;

/// Upper bounds in nanoseconds: each is the previous one × 5/4, rounded down, so no bucket
/// is more than 25 % wider than the bound below it.
const BOUNDS_NS: [u64; FINITE] = {
    let mut b = [0u64; FINITE];
    b[0] = FIRST_BOUND_NS;
    let mut i = 1;
    while i < FINITE {
        b[i] = b[i - 1] * 5 / 4;
        i += 1;
    }
    b
};

/// The buckets' upper bounds in seconds, ascending, without `+Inf` (the bucket after the
/// last one). These are the Prometheus `le` values.
pub const BOUNDS: &[f64] = &{
    let mut b = [0f64; FINITE];
    let mut i = 0;
    while i < FINITE {
        b[i] = BOUNDS_NS[i] as f64 / 1e9;
        i += 1;
    }
    b
};

/// [`BOUNDS`], as a function.
pub fn bounds() -> &'static [f64] {
    BOUNDS
}

/// The bucket `d` falls in: the first whose upper bound is `>= d` (Prometheus `le`), or
/// the `+Inf` bucket (`BOUNDS.len()`).
#[inline]
pub fn bucket_of(d: Duration) -> usize {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
    BOUNDS_NS.partition_point(|&b| b < ns)
}

/// The upper bound of bucket `i` (the last finite bound for the `+Inf` bucket).
pub fn upper_bound(i: usize) -> Duration {
    Duration::from_nanos(BOUNDS_NS[i.min(FINITE - 1)])
}

/// Time to response head, in fixed log-spaced buckets (see [`BOUNDS`]).
#[derive(Debug)]
pub struct LatencyHistogram {
    counts: [AtomicU64; BUCKETS],
    /// Sum of the recorded durations, in nanoseconds (wraps after 584 years of latency).
    sum_ns: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    pub fn new() -> Self {
        Self::default()
    }

    /// Count one observation: a binary search and two `Relaxed` adds. (The count is the
    /// sum of the buckets, so it needs no atomic of its own.)
    #[inline]
    pub fn record(&self, d: Duration) {
        self.counts[bucket_of(d)].fetch_add(1, Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// The per-bucket counts now, on the stack (the one-second ring reads this).
    pub fn counts(&self) -> [u64; BUCKETS] {
        std::array::from_fn(|i| self.counts[i].load(Relaxed))
    }

    /// Everything recorded so far. `count` is the sum of `counts`, so the snapshot is
    /// consistent with itself (Prometheus wants `_count` equal to the `+Inf` bucket) even
    /// while requests are being recorded; `sum` may be a few observations ahead or behind.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let counts = self.counts().to_vec();
        HistogramSnapshot {
            count: counts.iter().sum(),
            counts,
            sum: Duration::from_nanos(self.sum_ns.load(Relaxed)),
        }
    }
}

/// A histogram's contents at one time (or the difference of two, [`HistogramSnapshot::delta`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Per bucket, NOT cumulative: `BOUNDS.len() + 1` entries, `+Inf` last.
    pub counts: Vec<u64>,
    pub sum: Duration,
    pub count: u64,
}

impl Default for HistogramSnapshot {
    fn default() -> Self {
        HistogramSnapshot {
            counts: vec![0; BUCKETS],
            sum: Duration::ZERO,
            count: 0,
        }
    }
}

impl HistogramSnapshot {
    /// The `q`-quantile (0 ≤ q ≤ 1): the upper bound of the bucket that holds the
    /// ⌈q·count⌉-th observation (no interpolation), so at most 25 % above the true value.
    /// An observation in the `+Inf` bucket reads as the last finite bound (65 s). `None`
    /// when empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        quantile_of(&self.counts, q)
    }

    /// What was recorded between `earlier` and `self` (bucket by bucket; a counter that
    /// went backwards, which a histogram's never does, reads as 0).
    pub fn delta(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, &c)| c.saturating_sub(earlier.counts.get(i).copied().unwrap_or(0)))
            .collect();
        HistogramSnapshot {
            count: counts.iter().sum(),
            counts,
            sum: self.sum.saturating_sub(earlier.sum),
        }
    }
}

/// [`HistogramSnapshot::quantile`] over per-bucket counts (dense, `+Inf` last).
pub fn quantile_of(counts: &[u64], q: f64) -> Option<Duration> {
    quantile_bucket(counts.iter().copied().enumerate(), q).map(upper_bound)
}

/// The bucket holding the ⌈q·count⌉-th observation, from `(bucket, count)` pairs in
/// ascending bucket order (dense or sparse). `None` when they count nothing.
pub fn quantile_bucket(
    counts: impl Iterator<Item = (usize, u64)> + Clone,
    q: f64,
) -> Option<usize> {
    let total: u64 = counts.clone().map(|(_, c)| c).sum();
    if total == 0 {
        return None;
    }
    // The rank of the q-th observation, 1-based: ceil(q * total), within [1, total].
    let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0u64;
    for (i, c) in counts {
        seen += c;
        if seen >= rank {
            return Some(i);
        }
    }
    None
}

/// A duration in milliseconds, as [`LastMinute`] and [`HistoryPoint`] show it.
pub fn as_ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The balancer's own counters (one per balancer, `Arc`-shared by the control plane, the
/// completion hook and the workers).
#[derive(Debug, Default)]
pub struct ProcessStats {
    /// Requests answered without any clone (`backend="none"`), by status class.
    unrouted: [AtomicU64; STATUS_CLASSES],
    /// Their time to response head.
    unrouted_latency: LatencyHistogram,
    /// Client connections open now.
    downstream_connections: AtomicU64,
    reloads_success: AtomicU64,
    reloads_failure: AtomicU64,
    /// Access log lines dropped because its channel was full.
    access_log_dropped: AtomicU64,
    /// Access log lines lost to a failed open or write.
    access_log_write_errors: AtomicU64,
}

impl ProcessStats {
    pub fn new() -> Self {
        Self::default()
    }

    /// Count a request answered without any clone (rejected, or none available).
    #[inline]
    pub fn count_unrouted(&self, status: u16, head_time: Option<Duration>) {
        self.unrouted[status_class(status)].fetch_add(1, Relaxed);
        if let Some(d) = head_time {
            self.unrouted_latency.record(d);
        }
    }

    /// A client connection was accepted: counted open until the guard is dropped.
    pub fn connection_opened(self: &Arc<Self>) -> ConnectionGuard {
        self.downstream_connections.fetch_add(1, Relaxed);
        ConnectionGuard(Arc::clone(self))
    }

    /// A reload was published (`true`) or rejected (`false`).
    pub fn count_reload(&self, success: bool) {
        let c = if success {
            &self.reloads_success
        } else {
            &self.reloads_failure
        };
        c.fetch_add(1, Relaxed);
    }

    /// An access log line was dropped (its channel full).
    #[inline]
    pub fn count_access_log_dropped(&self) {
        self.access_log_dropped.fetch_add(1, Relaxed);
    }

    /// `lines` access log lines could not be written.
    pub fn count_access_log_write_errors(&self, lines: u64) {
        self.access_log_write_errors.fetch_add(lines, Relaxed);
    }

    /// Client connections open now.
    pub fn downstream_connections(&self) -> u64 {
        self.downstream_connections.load(Relaxed)
    }

    pub fn snapshot(&self) -> ProcessSnapshot {
        let unrouted: [u64; STATUS_CLASSES] =
            std::array::from_fn(|i| self.unrouted[i].load(Relaxed));
        ProcessSnapshot {
            unrouted_requests: unrouted.iter().sum(),
            unrouted,
            unrouted_latency: self.unrouted_latency.snapshot(),
            downstream_connections: self.downstream_connections(),
            reloads_success: self.reloads_success.load(Relaxed),
            reloads_failure: self.reloads_failure.load(Relaxed),
            access_log_dropped: self.access_log_dropped.load(Relaxed),
            access_log_write_errors: self.access_log_write_errors.load(Relaxed),
        }
    }
}

/// `[1xx … 5xx]` index of a status (below 100 counts as 1xx, 600 and up as 5xx).
#[inline]
fn status_class(status: u16) -> usize {
    usize::from(status / 100).clamp(1, STATUS_CLASSES) - 1
}

/// One open client connection (see [`ProcessStats::connection_opened`]).
#[derive(Debug)]
pub struct ConnectionGuard(Arc<ProcessStats>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.downstream_connections.fetch_sub(1, Relaxed);
    }
}

/// [`ProcessStats`] read at one time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessSnapshot {
    /// Requests answered without any clone (`backend="none"`), by status class:
    /// `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub unrouted: [u64; STATUS_CLASSES],
    /// Their sum.
    pub unrouted_requests: u64,
    /// Their time to response head (since start).
    pub unrouted_latency: HistogramSnapshot,
    /// Client connections open now.
    pub downstream_connections: u64,
    /// Reloads published (the first load is not a reload).
    pub reloads_success: u64,
    /// Reloads rejected (unreadable or invalid file).
    pub reloads_failure: u64,
    /// Access log lines dropped (channel full) and lost (open or write failed).
    pub access_log_dropped: u64,
    pub access_log_write_errors: u64,
}

/// A clone's last active health check (written only by its checker).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastCheck {
    pub at: SystemTime,
    pub ok: bool,
    /// A short reason: `status 200`, `status 500`, `timeout after 1s`, `connection refused
    /// or reset`, `bad response`.
    pub detail: String,
}

/// A clone's active health checks since it was first configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChecksCount {
    pub passed: u64,
    pub failed: u64,
}

/// A clone over the last minute (the one-second ring's entries: up to 60 whole seconds,
/// ending at the last tick).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LastMinute {
    /// Requests answered from the clone.
    pub requests: u64,
    /// Of those, answers >= 500 (the 5xx class, clonelb's own 502/504 included).
    pub errors: u64,
    /// Time-to-head quantiles over the same seconds (bucket upper bounds; `None` without
    /// any response head in them).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One second of a clone's recent history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistoryPoint {
    /// When the second ended (the ring's tick).
    pub t: SystemTime,
    /// Requests answered in it, per second of wall time since the previous tick.
    pub rps: f64,
    /// Time-to-head p99 in it (bucket upper bound; `None` without any response head).
    pub p99_ms: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_grow_by_at_most_a_quarter_and_reach_a_minute() {
        assert_eq!(BOUNDS.len() + 1, BUCKETS);
        assert_eq!(bounds()[0], 0.0001);
        assert!(*BOUNDS.last().unwrap() >= 60.0);
        assert!(
            BOUNDS[BOUNDS.len() - 2] < 60.0,
            "no more buckets than needed"
        );
        for w in BOUNDS_NS.windows(2) {
            assert!(w[1] > w[0] && w[1] * 4 <= w[0] * 5, "{w:?}");
        }
        for w in BOUNDS.windows(2) {
            assert!(w[1] > w[0] && w[1] <= w[0] * (1.25 + 1e-12), "{w:?}");
        }
    }

    #[test]
    fn a_value_lands_in_its_bucket() {
        assert_eq!(bucket_of(Duration::ZERO), 0);
        assert_eq!(bucket_of(Duration::from_micros(100)), 0, "le is inclusive");
        assert_eq!(bucket_of(Duration::from_nanos(100_001)), 1);
        assert_eq!(bucket_of(Duration::from_micros(125)), 1);
        assert_eq!(bucket_of(Duration::from_secs(61)), FINITE - 1);
        assert_eq!(bucket_of(Duration::from_secs(66)), FINITE, "+Inf");
        assert_eq!(bucket_of(Duration::MAX), FINITE);
        for (i, &bound) in BOUNDS.iter().enumerate() {
            let b = Duration::from_secs_f64(bound);
            assert_eq!(bucket_of(b), i);
            assert_eq!(bucket_of(b + Duration::from_nanos(1)), i + 1);
        }
        let h = LatencyHistogram::new();
        h.record(Duration::from_millis(10));
        h.record(Duration::from_millis(10));
        h.record(Duration::from_secs(100));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.counts.len(), BUCKETS);
        let i = bucket_of(Duration::from_millis(10));
        assert!(BOUNDS[i - 1] < 0.010 && BOUNDS[i] >= 0.010);
        assert_eq!((s.counts[i], s.counts[FINITE]), (2, 1));
        assert_eq!(s.sum, Duration::from_millis(100_020));
    }

    #[test]
    fn quantiles_of_known_distributions() {
        assert_eq!(HistogramSnapshot::default().quantile(0.5), None);
        let h = LatencyHistogram::new();
        // 1..=1000 ms, uniform.
        for ms in 1..=1000 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        for (q, exact) in [(0.5, 500.0), (0.9, 900.0), (0.99, 990.0), (1.0, 1000.0)] {
            let got = as_ms(s.quantile(q).unwrap());
            assert!(
                got >= exact && got <= exact * 1.25,
                "q{q}: {got} vs {exact}"
            );
        }
        assert_eq!(
            s.quantile(0.0),
            Some(upper_bound(bucket_of(Duration::from_millis(1)))),
            "q0 is the first observation's bucket"
        );
        // 99 fast, 1 slow: p50 and p99 fast, p99.9 slow.
        let h = LatencyHistogram::new();
        for _ in 0..99 {
            h.record(Duration::from_millis(2));
        }
        h.record(Duration::from_secs(2));
        let s = h.snapshot();
        let fast = upper_bound(bucket_of(Duration::from_millis(2)));
        let slow = upper_bound(bucket_of(Duration::from_secs(2)));
        assert_eq!(s.quantile(0.5), Some(fast));
        assert_eq!(s.quantile(0.99), Some(fast));
        assert_eq!(s.quantile(0.999), Some(slow));
        // Beyond the last bound: the last bound.
        let h = LatencyHistogram::new();
        h.record(Duration::from_secs(3600));
        assert_eq!(h.snapshot().quantile(0.5), Some(upper_bound(FINITE)));
    }

    #[test]
    fn delta_is_what_happened_in_between() {
        let h = LatencyHistogram::new();
        h.record(Duration::from_millis(1));
        let before = h.snapshot();
        h.record(Duration::from_millis(1));
        h.record(Duration::from_millis(50));
        let d = h.snapshot().delta(&before);
        assert_eq!(d.count, 2);
        assert_eq!(d.sum, Duration::from_millis(51));
        assert_eq!(d.counts[bucket_of(Duration::from_millis(1))], 1);
        assert_eq!(d.counts[bucket_of(Duration::from_millis(50))], 1);
        assert_eq!(before.delta(&h.snapshot()).count, 0, "never negative");
    }

    #[test]
    fn process_stats_count_unrouted_connections_and_reloads() {
        let p = Arc::new(ProcessStats::new());
        p.count_unrouted(400, Some(Duration::from_micros(50)));
        p.count_unrouted(503, Some(Duration::from_micros(80)));
        p.count_unrouted(499, None);
        let g1 = p.connection_opened();
        let g2 = p.connection_opened();
        p.count_reload(true);
        p.count_reload(false);
        p.count_reload(false);
        let s = p.snapshot();
        assert_eq!(s.unrouted, [0, 0, 0, 2, 1]);
        assert_eq!(s.unrouted_requests, 3);
        assert_eq!(s.unrouted_latency.count, 2, "no head, no latency");
        assert_eq!(s.downstream_connections, 2);
        assert_eq!((s.reloads_success, s.reloads_failure), (1, 2));
        drop(g1);
        assert_eq!(p.downstream_connections(), 1);
        drop(g2);
        assert_eq!(p.downstream_connections(), 0);
    }
}

//! The one-second ring: every clone's last minute, second by second.
//!
//! Each second a task of the control runtime ([`super::ControlState::new`]) reads every
//! clone's counters (table clones and draining ones) and appends one entry per clone:
//! requests answered in that second, errors (the 5xx class: clonelb's own 502/504
//! included), and the second's time-to-head histogram delta. At most [`SECONDS`] entries
//! are kept; a clone that left both the table and the drain list is forgotten at the next
//! tick. [`History::view`] sums a clone's entries into a [`LastMinute`] and lists them as
//! [`HistoryPoint`]s; [`History::window`] sums only its last N (the audit's peer
//! comparison, over `[audit] window`).
//!
//! Memory, for 10,000 clones: per clone, the counters at the last tick (62 bucket counts
//! and 5 class counts, kept as `u32`: deltas are taken with wrapping subtraction, exact as
//! long as fewer than 2³² requests land in one bucket in one second), 60 entries of 12
//! bytes (requests, errors, the p99 bucket, how many histogram buckets the second moved), and the second's non-zero histogram buckets only, 8 bytes each (bucket index
//! and count). An idle clone costs about 1.1 KiB (11 MiB for 10,000); a busy one 480 bytes
//! more per histogram bucket its latencies spread over in a typical second (some 5 KiB
//! for 10 buckets). The minute's quantiles are exact over those buckets: the sparse deltas
//! of the 60 seconds are merged when read. The tick times are kept once for all clones.
//!
//! Owns: the ring. Reads clones' counters only; writes nothing of theirs.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use crate::backend::{BackendState, STATUS_CLASSES};
use crate::stats::{as_ms, quantile_bucket, upper_bound, HistoryPoint, LastMinute, BUCKETS};

/// Entries kept per clone: one minute.
pub const SECONDS: usize = 60;

/// No quantile (a second without any response head).
const NO_BUCKET: u8 = u8::MAX;

/// Every clone's last minute.
#[derive(Debug, Default)]
pub struct History {
    /// When each of the last ticks happened and how many seconds it covered, oldest first.
    /// A clone's entries are the last `seconds.len()` of these.
    ticks: VecDeque<(SystemTime, f64)>,
    /// Keyed by the address of the clone's `BackendState`.
    clones: HashMap<usize, CloneRing>,
    /// Ticks so far, to forget the clones a tick did not see.
    generation: u64,
}

#[derive(Debug)]
struct CloneRing {
    /// Keeps the state's allocation (not the state) from being freed, so its address, the
    /// key, cannot be reused by another clone while this ring exists.
    _key: Weak<BackendState>,
    prev_buckets: [u32; BUCKETS],
    prev_classes: [u32; STATUS_CLASSES],
    seconds: VecDeque<Second>,
    /// The non-zero histogram buckets of each of `seconds`, in order:
    /// `bucket << 32 | count`.
    sparse: VecDeque<u64>,
    seen: u64,
}

/// One second of one clone (12 bytes; its time is the tick's).
#[derive(Debug, Clone, Copy)]
struct Second {
    requests: u32,
    errors: u32,
    /// The second's p99 bucket (its p50 is not kept: nothing shows it, and its sparse
    /// buckets would give it).
    p99: u8,
    /// Its entries in `sparse`.
    buckets: u8,
}

fn key(state: &BackendState) -> usize {
    std::ptr::from_ref(state) as usize
}

fn bucket_ms(b: u8) -> Option<f64> {
    (b != NO_BUCKET).then(|| as_ms(upper_bound(usize::from(b))))
}

fn unpack(e: u64) -> (usize, u64) {
    ((e >> 32) as usize, e & u64::from(u32::MAX))
}

impl History {
    /// One tick at `at`, `secs` after the previous one: append an entry for every clone of
    /// `clones`, forget the rest.
    pub fn tick(&mut self, at: SystemTime, secs: f64, clones: &[Arc<BackendState>]) {
        self.generation += 1;
        if self.ticks.len() == SECONDS {
            self.ticks.pop_front();
        }
        self.ticks.push_back((at, secs));
        for c in clones {
            let ring = self
                .clones
                .entry(key(c))
                .or_insert_with(|| CloneRing::new(c));
            if ring.seen != self.generation {
                ring.seen = self.generation;
                ring.push(c);
            }
        }
        let generation = self.generation;
        self.clones.retain(|_, r| r.seen == generation);
    }

    /// `state`'s last `seconds` entries (at most [`SECONDS`]; fewer if it has fewer)
    /// summed: requests, 5xx errors, and p50/p99 over their merged histogram buckets (the
    /// peer comparison's window). Empty for 0 seconds or before the clone's first tick.
    pub fn window(&self, state: &BackendState, seconds: usize) -> LastMinute {
        self.clones
            .get(&key(state))
            .map_or_else(LastMinute::default, |ring| ring.sum(seconds))
    }

    /// `state`'s last minute and its seconds, oldest first (empty before its first tick).
    pub fn view(&self, state: &BackendState) -> (LastMinute, Vec<HistoryPoint>) {
        let Some(ring) = self.clones.get(&key(state)) else {
            return (LastMinute::default(), Vec::new());
        };
        let minute = ring.sum(SECONDS);
        let skip = self.ticks.len().saturating_sub(ring.seconds.len());
        let history = self
            .ticks
            .iter()
            .skip(skip)
            .zip(&ring.seconds)
            .map(|(&(t, secs), s)| HistoryPoint {
                t,
                rps: f64::from(s.requests) / secs.max(f64::EPSILON),
                p99_ms: bucket_ms(s.p99),
            })
            .collect();
        (minute, history)
    }

    /// Clones with a ring.
    #[cfg(test)]
    pub fn clones(&self) -> usize {
        self.clones.len()
    }
}

impl CloneRing {
    /// Its last `seconds` entries summed (all of them when it has fewer).
    fn sum(&self, seconds: usize) -> LastMinute {
        let n = seconds.min(self.seconds.len());
        let recent = self.seconds.range(self.seconds.len() - n..);
        // Their sparse buckets are the last ones of `sparse`.
        let entries: usize = recent.clone().map(|s| usize::from(s.buckets)).sum();
        let mut merged = [0u64; BUCKETS];
        for &e in self.sparse.range(self.sparse.len() - entries..) {
            let (b, c) = unpack(e);
            merged[b] += c;
        }
        let dense = merged.iter().copied().enumerate();
        let p = |q| quantile_bucket(dense.clone(), q).map(|b| as_ms(upper_bound(b)));
        LastMinute {
            requests: recent.clone().map(|s| u64::from(s.requests)).sum(),
            errors: recent.map(|s| u64::from(s.errors)).sum(),
            p50_ms: p(0.5),
            p99_ms: p(0.99),
        }
    }

    /// A clone seen for the first time: its counters started at zero when its state was
    /// created, so its first second counts everything since.
    fn new(state: &Arc<BackendState>) -> Self {
        CloneRing {
            _key: Arc::downgrade(state),
            prev_buckets: [0; BUCKETS],
            prev_classes: [0; STATUS_CLASSES],
            seconds: VecDeque::with_capacity(SECONDS),
            sparse: VecDeque::new(),
            seen: 0,
        }
    }

    fn push(&mut self, state: &BackendState) {
        if self.seconds.len() == SECONDS {
            if let Some(old) = self.seconds.pop_front() {
                self.sparse.drain(..usize::from(old.buckets));
            }
        }
        // Truncation to u32 is the point: see the module's memory note.
        let now = state.latency().counts();
        let mut delta = [0u64; BUCKETS];
        let mut buckets = 0u8;
        for (i, (&cur, prev)) in now.iter().zip(&mut self.prev_buckets).enumerate() {
            let d = (cur as u32).wrapping_sub(*prev);
            *prev = cur as u32;
            if d != 0 {
                delta[i] = u64::from(d);
                self.sparse.push_back((i as u64) << 32 | u64::from(d));
                buckets += 1;
            }
        }
        let classes = state.responses_by_class();
        let mut by_class = [0u32; STATUS_CLASSES];
        for ((&cur, prev), d) in classes
            .iter()
            .zip(&mut self.prev_classes)
            .zip(&mut by_class)
        {
            *d = (cur as u32).wrapping_sub(*prev);
            *prev = cur as u32;
        }
        let q = |q| {
            quantile_bucket(delta.iter().copied().enumerate(), q)
                .and_then(|b| u8::try_from(b).ok())
                .unwrap_or(NO_BUCKET)
        };
        self.seconds.push_back(Second {
            requests: by_class.iter().fold(0u32, |a, &d| a.saturating_add(d)),
            errors: by_class[STATUS_CLASSES - 1],
            p99: q(0.99),
            buckets,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn state(port: u16) -> Arc<BackendState> {
        Arc::new(BackendState::new(([127, 0, 0, 1], port).into()))
    }

    fn answer(s: &BackendState, status: u16, ms: u64) {
        s.count_response(status);
        s.latency().record(Duration::from_millis(ms));
    }

    #[test]
    fn a_ring_keeps_sixty_seconds_and_forgets_departed_clones() {
        let (a, b) = (state(1), state(2));
        let mut h = History::default();
        let t0 = SystemTime::UNIX_EPOCH;
        answer(&a, 200, 1);
        h.tick(t0, 1.0, &[Arc::clone(&a), Arc::clone(&b)]);
        for i in 1..SECONDS as u64 {
            answer(&a, 503, 10);
            h.tick(t0 + Duration::from_secs(i), 1.0, &[Arc::clone(&a)]);
        }
        assert_eq!(h.clones(), 1, "b left: forgotten");
        let (m, hist) = h.view(&a);
        assert_eq!((m.requests, m.errors), (60, 59));
        assert_eq!(hist.len(), SECONDS);
        assert_eq!(hist[0].t, t0);
        assert_eq!(hist[0].rps, 1.0);
        h.tick(t0 + Duration::from_secs(60), 2.0, &[Arc::clone(&a)]);
        let (m, hist) = h.view(&a);
        assert_eq!(
            (m.requests, m.errors),
            (59, 59),
            "the first second fell out"
        );
        assert_eq!(hist.len(), SECONDS);
        assert_eq!(hist[59].rps, 0.0);
        assert_eq!(hist[58].rps, 1.0);
        assert_eq!(h.view(&b), (LastMinute::default(), Vec::new()));
        let ring = &h.clones[&key(&a)];
        assert_eq!(ring.sparse.len(), 59, "one bucket per busy second");
        assert_eq!(std::mem::size_of::<Second>(), 12);
    }

    #[test]
    fn a_window_sums_the_last_n_seconds_with_their_quantiles() {
        use crate::stats::bucket_of;
        let ms_of = |ms: u64| Some(as_ms(upper_bound(bucket_of(Duration::from_millis(ms)))));
        let a = state(1);
        let mut h = History::default();
        let t0 = SystemTime::UNIX_EPOCH;
        assert_eq!(h.window(&a, 10), LastMinute::default(), "no ring yet");
        // Seconds 1..=5: 100 answers of 2 ms, one a 503; seconds 6..=8: 10 of 300 ms.
        for i in 0..8u64 {
            if i < 5 {
                for _ in 0..99 {
                    answer(&a, 200, 2);
                }
                answer(&a, 503, 2);
            } else {
                for _ in 0..10 {
                    answer(&a, 200, 300);
                }
            }
            h.tick(t0 + Duration::from_secs(i), 1.0, &[Arc::clone(&a)]);
        }
        let w = |n| h.window(&a, n);
        assert_eq!(w(0), LastMinute::default());
        assert_eq!(
            w(3),
            LastMinute {
                requests: 30,
                errors: 0,
                p50_ms: ms_of(300),
                p99_ms: ms_of(300),
            }
        );
        assert_eq!(
            w(4),
            LastMinute {
                requests: 130,
                errors: 1,
                p50_ms: ms_of(2),
                p99_ms: ms_of(300),
            }
        );
        assert_eq!((w(8).requests, w(8).errors), (530, 5));
        assert_eq!(w(8), w(SECONDS), "fewer seconds than asked: all of them");
        assert_eq!(w(SECONDS), h.view(&a).0, "the whole minute is the view's");
        assert_eq!(w(1000), w(SECONDS));
    }
}

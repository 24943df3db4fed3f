//! The peer comparison of behaviour (see the module docs of `audit`): which clone does
//! markedly worse than its peers over the last `window`, and, with `[audit]
//! eject_outliers = true`, which one is taken out of rotation and when it comes back.
//!
//! Pure: no I/O, no clock (callers pass `now`), no locks. The control runtime calls it
//! once per second:
//! 1. for each clone, sum the one-second ring over [`Ejections::judged_over`] (or over the
//!    whole `window` in reported-only mode) into a [`CloneWindow`];
//! 2. [`judge`] them with `outlier_factor`: the [`Outlier`]s are what `/status` shows;
//! 3. with `eject_outliers`, feed them to [`Ejections::step`] and apply its [`Change`] to
//!    the clone's `OUTLIER` flag.
//!
//! **The judgement.** Only clones with at least [`MIN_REQUESTS`] requests in the window
//! are judged, and the pool's baseline for each metric is the median of that metric over
//! the *available* ones among them (a down, disabled, draining, standby or ejected clone
//! is still judged — it may have served errors before it left — but does not shape the
//! baseline). With fewer than [`MIN_CLONES`] values behind a median there is no baseline:
//! of two clones, neither can say which of them is the odd one. The median of an even
//! count is the mean of the two middle values (the textbook one; a lower-middle median
//! would let one half of a pool call the other half outliers). A clone is an outlier when
//! its value is more than `factor` times the baseline on one of the [`Metric`]s; the 5xx
//! share's baseline is at least [`ERROR_SHARE_FLOOR`] (1 %), so a pool without errors
//! does not make a single error an outlier. On several metrics, the one with the largest
//! ratio is reported.
//!
//! **Latency precision.** p50 and p99 come from `stats`' histogram as bucket upper
//! bounds: each bound is the previous one × 5/4 (rounded down to the nanosecond), so every
//! bucket from 100 µs to 65 s is at most 25 % wider than its lower edge (`stats` tests
//! this; the "at most 25 % wide" holds). A quantile thus reads at most 25 % above
//! the true value (anything under 100 µs reads 100 µs, anything past 65 s reads 65 s),
//! and a ratio of two of them is off by at most a factor 1.25 either way: with the
//! default factor 3, a clone 2.4× slower than the median may already be flagged and one
//! 3.75× slower always is.
//!
//! **Time.** [`Ejections`] uses `tokio::time::Instant`, the control plane's clock (so
//! tests with paused time work); it never reads it.

use std::cmp::Ordering;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

/// Requests a clone needs in the window to be judged or to count in a median.
pub const MIN_REQUESTS: u64 = 50;
/// Values a median needs: with two clones, neither is "the odd one".
pub const MIN_CLONES: usize = 3;
/// The least baseline a 5xx share is compared with (1 %).
pub const ERROR_SHARE_FLOOR: f64 = 0.01;

/// One clone over the window (the caller's sum of its one-second ring entries).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CloneWindow {
    /// The clone (addresses are unique within a routing table).
    pub key: SocketAddr,
    /// Receives new requests: up, not disabled, not draining, not standby, not ejected.
    pub available: bool,
    /// Requests answered in the window.
    pub requests: u64,
    /// Of those, answers in the 5xx class.
    pub errors_5xx: u64,
    /// Time-to-head quantiles over the window (`None` without any response head).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl CloneWindow {
    /// The share of 5xx answers, in 0..=1 (`None` without requests).
    pub fn error_share(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors_5xx as f64 / self.requests as f64)
    }

    /// Its value of `metric`; non-finite values read as missing.
    pub fn value(&self, metric: Metric) -> Option<f64> {
        match metric {
            Metric::FiveXxShare => self.error_share(),
            Metric::P50 => self.p50_ms,
            Metric::P99 => self.p99_ms,
        }
        .filter(|v| v.is_finite())
    }

    fn judged(&self) -> bool {
        self.requests >= MIN_REQUESTS
    }
}

/// What a clone is compared on. Worse is higher for all three.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    FiveXxShare,
    P50,
    P99,
}

impl Metric {
    /// All of them, in the order ties between equal ratios are settled.
    pub const ALL: [Metric; 3] = [Metric::FiveXxShare, Metric::P50, Metric::P99];

    /// The name `/status` shows (`outlier.metric`).
    pub fn as_str(self) -> &'static str {
        match self {
            Metric::FiveXxShare => "5xx_share",
            Metric::P50 => "p50_ms",
            Metric::P99 => "p99_ms",
        }
    }

    /// What a value is compared with, given the pool's median: `None` when there is no
    /// meaningful baseline (a latency median of 0, which the histogram never gives).
    fn baseline(self, median: f64) -> Option<f64> {
        match self {
            Metric::FiveXxShare => Some(median.max(ERROR_SHARE_FLOOR)),
            Metric::P50 | Metric::P99 => (median > 0.0).then_some(median),
        }
    }
}

/// A clone doing markedly worse than its pool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outlier {
    pub key: SocketAddr,
    /// The metric with the largest ratio to its baseline.
    pub metric: Metric,
    /// The clone's value of it (a share in 0..=1, or milliseconds).
    pub value: f64,
    /// The median of the available judged clones (before the 1 % floor of 5xx shares).
    pub pool_median: f64,
}

impl Outlier {
    /// How many times worse than the baseline (the median, floored for 5xx shares).
    pub fn ratio(&self) -> f64 {
        ratio(self.metric, self.value, self.pool_median).unwrap_or(0.0)
    }
}

fn ratio(metric: Metric, value: f64, median: f64) -> Option<f64> {
    metric.baseline(median).map(|b| value / b)
}

/// The median of `values` (mean of the two middle ones for an even count); `None` for
/// fewer than [`MIN_CLONES`] values.
fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.len() < MIN_CLONES {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    })
}

/// The outliers among `clones`, in their order: each judged clone (at least
/// [`MIN_REQUESTS`] requests) more than `factor` times worse than the median of the
/// available judged clones on some metric, with the metric of the largest ratio (the
/// first of [`Metric::ALL`] on a tie). `factor` is `outlier_factor`, validated `> 1`.
pub fn judge(clones: &[CloneWindow], factor: f64) -> Vec<Outlier> {
    let medians = Metric::ALL.map(|m| {
        median(
            clones
                .iter()
                .filter(|c| c.available && c.judged())
                .filter_map(|c| c.value(m))
                .collect(),
        )
    });
    clones
        .iter()
        .filter(|c| c.judged())
        .filter_map(|c| {
            let mut worst: Option<(f64, Outlier)> = None;
            for (m, median) in Metric::ALL.into_iter().zip(medians) {
                let (Some(pool_median), Some(value)) = (median, c.value(m)) else {
                    continue;
                };
                let Some(r) = ratio(m, value, pool_median) else {
                    continue;
                };
                if r > factor && worst.is_none_or(|(w, _)| r > w) {
                    let o = Outlier {
                        key: c.key,
                        metric: m,
                        value,
                        pool_median,
                    };
                    worst = Some((r, o));
                }
            }
            worst.map(|(_, o)| o)
        })
        .collect()
}

/// What [`Ejections::step`] asks the caller to do to a clone's `OUTLIER` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Set it: the clone leaves the rotation.
    Eject(SocketAddr),
    /// Clear it: the clone is back (and judged again once it has served enough).
    Readmit(SocketAddr),
}

/// The clone out of rotation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ejection {
    /// Why: its judgement when it was ejected (what `/status` shows while it is out).
    pub outlier: Outlier,
    /// When it was ejected.
    pub since: Instant,
    /// When it comes back: one `window` after `since`.
    pub until: Instant,
}

/// The fewest available clones a pool of `pool_size` may be left with by an ejection:
/// half of it, rounded up (2 of 3, 2 of 4, 3 of 5). No ejection brings the pool below it,
/// and an ejected clone is readmitted early if others going down do.
pub fn min_available(pool_size: usize) -> usize {
    pool_size.div_ceil(2)
}

/// The ejection policy of `eject_outliers = true`: at most one clone out at a time, never
/// leaving fewer than [`min_available`] clones available, each back after one `window`.
///
/// An ejected clone gets no traffic, so the judgement of it that counts is the one made on
/// what it serves after its return: [`Ejections::judged_over`] tells the caller to sum
/// only its seconds since then. It is judged again once those hold [`MIN_REQUESTS`], and
/// ejected again if it is still an outlier. Reported-only mode does not use this at all.
#[derive(Debug, Clone)]
pub struct Ejections {
    window: Duration,
    current: Option<Ejection>,
    /// Clones readmitted less than a window ago, and when.
    readmitted: Vec<(SocketAddr, Instant)>,
}

impl Ejections {
    /// No clone ejected; `window` is `[audit] window`.
    pub fn new(window: Duration) -> Self {
        Ejections {
            window,
            current: None,
            readmitted: Vec::new(),
        }
    }

    /// A reloaded `window`: it applies from the next ejection (the current one keeps its
    /// `until`).
    pub fn set_window(&mut self, window: Duration) {
        self.window = window;
    }

    /// One second's decision, after [`judge`]: `clones` are the windows judged (the
    /// ejected clone, its flag set, not available), `outliers` the judgement, `pool_size`
    /// the clones in the routing table (draining ones not included).
    ///
    /// In order: an ejected clone no longer in `clones` is forgotten; an ejected clone
    /// whose `until` has come, or while fewer than [`min_available`] clones are available,
    /// is readmitted; otherwise, with no clone ejected, the available outlier of the
    /// largest ratio is ejected if the others available are at least [`min_available`].
    /// At most one change per call; judgements of the ejected clone are ignored.
    pub fn step(
        &mut self,
        now: Instant,
        clones: &[CloneWindow],
        outliers: &[Outlier],
        pool_size: usize,
    ) -> Option<Change> {
        let window = self.window;
        self.readmitted.retain(|&(_, at)| now < at + window);
        let floor = min_available(pool_size);
        let available = clones.iter().filter(|c| c.available).count();
        if let Some(e) = self.current {
            let key = e.outlier.key;
            if !clones.iter().any(|c| c.key == key) {
                self.current = None;
            } else if now >= e.until || available < floor {
                self.current = None;
                self.readmitted.push((key, now));
                return Some(Change::Readmit(key));
            } else {
                return None;
            }
        }
        if available.saturating_sub(1) < floor {
            return None;
        }
        let mut worst: Option<&Outlier> = None;
        for o in outliers {
            let is_available = clones.iter().any(|c| c.key == o.key && c.available);
            let worse = worst.is_none_or(|w| o.ratio().total_cmp(&w.ratio()) == Ordering::Greater);
            if is_available && worse {
                worst = Some(o);
            }
        }
        let outlier = *worst?;
        self.readmitted.retain(|&(k, _)| k != outlier.key);
        self.current = Some(Ejection {
            outlier,
            since: now,
            until: now + window,
        });
        Some(Change::Eject(outlier.key))
    }

    /// The clone out of rotation, if any.
    pub fn current(&self) -> Option<&Ejection> {
        self.current.as_ref()
    }

    /// Since when `key` is ejected (`None`: it is not).
    pub fn ejected_since(&self, key: SocketAddr) -> Option<Instant> {
        self.current
            .filter(|e| e.outlier.key == key)
            .map(|e| e.since)
    }

    /// How far back the caller should sum `key`'s seconds at `now`: the window, or for a
    /// clone readmitted less than a window ago, the time since its return (its earlier
    /// seconds are from before or during its ejection). Round to whole ring entries: the
    /// entries of ticks after the readmitting one.
    pub fn judged_over(&self, key: SocketAddr, now: Instant) -> Duration {
        self.readmitted
            .iter()
            .find(|&&(k, _)| k == key)
            .map_or(self.window, |&(_, at)| {
                now.saturating_duration_since(at).min(self.window)
            })
    }
}

#[cfg(test)]
mod tests;

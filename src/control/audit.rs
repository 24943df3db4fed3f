//! The peer comparison on the control runtime (`[audit]`, see `crate::audit::outlier`):
//! once per second, right after the one-second ring's tick, every table clone's last
//! `window` is judged against the pool, and with `eject_outliers = true` the worst outlier
//! is taken out of rotation by its `OUTLIER` flag and brought back one window later.
//!
//! A clone's window is its ring entries of the ticks within [`Ejections::judged_over`]
//! (the whole `window`; for a clone readmitted less than a window ago, only the ticks since
//! its return). It counts as available when it is up, not disabled, not draining, not
//! standby (atomic deploy mode) and not the clone this step ejected: its own `OUTLIER` mark
//! is not read (this step is its only writer, and knows).
//!
//! Only one clone's `OUTLIER` flag is ever set: the one [`Ejections`] holds. With
//! `eject_outliers = false` or without `[audit]` (a reload can turn either off) no clone
//! keeps it: the next step readmits the one out. A clone that leaves the table while
//! ejected is forgotten and its flag cleared, so it comes back whole if it is added back.
//!
//! Owns: the latest judgement, the ejection policy's state, the one `OUTLIER` flag. Reads
//! the ring and the table; writes nothing else.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::history::{History, SECONDS};
use super::status::OutlierStatus;
use super::ControlState;
use crate::audit::outlier::{judge, Change, CloneWindow, Ejections, Outlier};
use crate::backend::BackendState;
use crate::table::RoutingTable;

/// The audit's state between ticks.
#[derive(Debug)]
pub(super) struct Audit {
    /// The last ticks (at most [`SECONDS`], like the ring), to turn a duration into a
    /// number of ring entries.
    ticks: VecDeque<Instant>,
    /// The latest judgement (empty without `[audit]`).
    outliers: Vec<Outlier>,
    ejections: Ejections,
    /// The clone whose `OUTLIER` flag is set, if any.
    marked: Option<Arc<BackendState>>,
}

impl Default for Audit {
    fn default() -> Self {
        Audit {
            ticks: VecDeque::with_capacity(SECONDS),
            outliers: Vec::new(),
            ejections: Ejections::new(Duration::from_secs(SECONDS as u64)),
            marked: None,
        }
    }
}

impl Audit {
    /// One second at `now` (the ring's tick, just taken): judge the table's clones, eject
    /// or readmit. Called at every tick, `[audit]` or not.
    pub(super) fn step(&mut self, now: Instant, table: &RoutingTable, history: &History) {
        if self.ticks.len() == SECONDS {
            self.ticks.pop_front();
        }
        self.ticks.push_back(now);
        let Some(audit) = table.config().audit.as_ref() else {
            self.outliers.clear();
            self.stop_ejecting("[audit] is off");
            return;
        };
        if !audit.eject_outliers {
            self.stop_ejecting("eject_outliers is off");
        }
        self.ejections.set_window(audit.window);
        let active = table.gate().active();
        let clones: Vec<CloneWindow> = table
            .backends()
            .iter()
            .map(|b| {
                let s = &b.state;
                let span = self.ejections.judged_over(b.address, now);
                let w = history.window(s, self.entries_within(now, span));
                CloneWindow {
                    key: b.address,
                    available: s.is_available_but_for_outlier()
                        && (active == 0 || s.version() == active)
                        && self.ejections.ejected_since(b.address).is_none(),
                    requests: w.requests,
                    errors_5xx: w.errors,
                    p50_ms: w.p50_ms,
                    p99_ms: w.p99_ms,
                }
            })
            .collect();
        self.outliers = judge(&clones, audit.outlier_factor);
        if !audit.eject_outliers {
            return;
        }
        let until = self.ejections.current().map(|e| e.until);
        let pool = table.backends().len();
        match self.ejections.step(now, &clones, &self.outliers, pool) {
            Some(Change::Eject(addr)) => self.eject(table, addr, audit.window),
            Some(Change::Readmit(_)) => {
                let why = if until.is_some_and(|u| now < u) {
                    "readmitted early: too few clones available without it"
                } else {
                    "outlier readmitted after one window; judged again on its fresh traffic"
                };
                self.readmit(why);
            }
            // Forgotten: it left the table while out.
            None if self.ejections.current().is_none() => {
                self.readmit("outlier left the table; its ejection is over")
            }
            None => {}
        }
    }

    /// Ring entries of the ticks within `span` before `now` (`now`'s own included): of the
    /// ticks after `now - span`.
    fn entries_within(&self, now: Instant, span: Duration) -> usize {
        match now.checked_sub(span) {
            Some(from) => self.ticks.iter().rev().take_while(|&&t| t > from).count(),
            None => self.ticks.len(),
        }
    }

    fn eject(&mut self, table: &RoutingTable, addr: SocketAddr, window: Duration) {
        let (Some(b), Some(e)) = (table.find(addr), self.ejections.current()) else {
            return;
        };
        let o = e.outlier;
        b.state.set_outlier(true);
        self.marked = Some(Arc::clone(&b.state));
        tracing::warn!(
            clone = %b.name,
            address = %addr,
            metric = o.metric.as_str(),
            value = o.value,
            pool_median = o.pool_median,
            ratio = o.ratio(),
            window = ?window,
            "outlier ejected: markedly worse than the pool's median; back after one window"
        );
    }

    /// Clear the `OUTLIER` flag of the clone that has it, logging why.
    fn readmit(&mut self, why: &'static str) {
        if let Some(s) = self.marked.take() {
            s.set_outlier(false);
            tracing::info!(clone = %s.name(), address = %s.address(), "{why}");
        }
    }

    /// No more ejections: forget the policy's state and readmit the clone out, if any.
    fn stop_ejecting(&mut self, why: &'static str) {
        if self.ejections.current().is_some() || self.marked.is_some() {
            self.ejections = Ejections::new(Duration::from_secs(SECONDS as u64));
            self.readmit(why);
        }
    }

    /// What `/status` shows of the clone at `addr`: the judgement it was ejected on while
    /// it is out, else its latest one.
    pub(super) fn status_of(&self, addr: SocketAddr) -> Option<OutlierStatus> {
        let shown = |o: &Outlier, ejected| OutlierStatus {
            metric: o.metric.as_str(),
            value: o.value,
            pool_median: o.pool_median,
            ejected,
        };
        match self.ejections.current() {
            Some(e) if e.outlier.key == addr => Some(shown(&e.outlier, true)),
            _ => self
                .outliers
                .iter()
                .find(|o| o.key == addr)
                .map(|o| shown(o, false)),
        }
    }
}

impl ControlState {
    /// The audit's state. Lock order: `inner`, then `history`, then this.
    pub(super) fn audit_lock(&self) -> MutexGuard<'_, Audit> {
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

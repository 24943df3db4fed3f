//! Deploy awareness: which code version each clone runs, and — in `[deploy] mode =
//! "atomic"` — which one version gets new requests.
//!
//! Each clone reports its version in a header of its health check (`[health]
//! version_header`); the checker interns the text ([`Versions`]) and stores the id in the
//! clone's `BackendState` (0 = unknown). The request path reads two atomics: the clone's
//! version and the shared [`DeployGate`]'s `active` (0 = every up clone, mixed routing).
//! A cutover is one store to `active`, made only by the control plane's deploy task, which
//! feeds a [`Machine`] (pure: events in, changes out, no clock of its own, unit-tested
//! here) with what it sees.
//!
//! The rules ([`Machine::record`]):
//! * **Election** (at start, and when a reload switches to atomic): the version reported
//!   by the most up clones (ties: the one seen first) becomes active once every up clone
//!   has reported, or one health `interval` has passed. Until then routing is mixed.
//! * **Cutover**: any other version whose up clones reach `cutover_at` (a count, or a
//!   share of the table's clones, rounded up) becomes active in one step; the old
//!   version's clones get no new request from then on (standby). A version replaced
//!   this way is *retired*: it cannot win a cutover back (at a tie, or when a standby
//!   clone of it comes back from a health blip) until none of its clones is up any more —
//!   so a rollback, which redeploys the old version onto clones that ran the new one,
//!   cuts over again once the old version had been fully replaced; a rollback in the
//!   middle of a rollout is a pin.
//! * **Pin**: a pinned version is active whatever the counts (cutovers wait).
//! * **Outage fallback**: when the active version has no up clone left, the request path
//!   already takes the gate's `fallback` (the other version with the most up clones)
//!   rather than answer 503; the machine makes it official: that version becomes active,
//!   counted, logged as an error, shown as `deploy.fallback`. A pin does not prevent it.
//!
//! Owns: the version intern table, the gate's values, the deploy rules. Must not touch:
//! the table, clones' flags (it only reads what it is given), the request path's types.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

/// A version's id in [`Versions`]; 0 = unknown.
pub type VersionId = u32;

/// The longest version text accepted (longer: unknown).
pub const MAX_VERSION_LEN: usize = 128;

/// Why a version header value is not a version.
pub fn invalid_version(value: &[u8]) -> Option<&'static str> {
    if value.is_empty() {
        Some("empty")
    } else if value.len() > MAX_VERSION_LEN {
        Some("longer than 128 bytes")
    } else if !value.iter().all(|b| b.is_ascii_graphic()) {
        Some("not visible ASCII")
    } else {
        None
    }
}

/// Every version text seen since start, each with a small id (in order of first report,
/// from 1). Written by the health checkers, read by status and logs; never by the
/// request path, which compares ids.
#[derive(Debug, Default)]
pub struct Versions(RwLock<VersionsInner>);

#[derive(Debug, Default)]
struct VersionsInner {
    names: Vec<Arc<str>>,
    ids: HashMap<Arc<str>, VersionId>,
}

impl Versions {
    /// The id of `version` (a new one the first time it is seen).
    pub fn intern(&self, version: &str) -> VersionId {
        if let Some(&id) = self.read().ids.get(version) {
            return id;
        }
        let mut w = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(&id) = w.ids.get(version) {
            return id;
        }
        let name: Arc<str> = Arc::from(version);
        w.names.push(Arc::clone(&name));
        let id = w.names.len() as VersionId;
        w.ids.insert(name, id);
        id
    }

    /// The id of `version`, if any clone ever reported it.
    pub fn id(&self, version: &str) -> Option<VersionId> {
        self.read().ids.get(version).copied()
    }

    /// The text of `id` (`None` for 0 or an id never given out).
    pub fn name(&self, id: VersionId) -> Option<Arc<str>> {
        let i = (id as usize).checked_sub(1)?;
        self.read().names.get(i).cloned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, VersionsInner> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What the request path reads, shared by every routing table (a reload carries it over
/// like clone state). Written by the deploy task alone.
#[derive(Debug, Default)]
pub struct DeployGate {
    /// The version new requests go to; 0 = every up clone (mixed).
    active: AtomicU32,
    /// When `active` has no available clone: the version to use instead (0 = none).
    fallback: AtomicU32,
}

impl DeployGate {
    #[inline]
    pub fn active(&self) -> VersionId {
        self.active.load(Relaxed)
    }
    #[inline]
    pub fn fallback(&self) -> VersionId {
        self.fallback.load(Relaxed)
    }
    /// Publish the machine's decision: one store each.
    pub fn set(&self, active: VersionId, fallback: VersionId) {
        self.fallback.store(fallback, Relaxed);
        self.active.store(active, Relaxed);
    }
}

pub use crate::config::{CutoverAt, DeployMode as Mode};

/// One clone as the deploy task sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloneView {
    pub version: VersionId,
    /// Up, not disabled, not draining (whether its version is active or not).
    pub up: bool,
}

/// What the deploy task tells the machine.
#[derive(Debug, Clone)]
pub enum Event {
    /// The mode and threshold (from a publish); `interval` is the health interval, the
    /// longest an election waits for every up clone to report.
    Mode {
        mode: Mode,
        cutover_at: CutoverAt,
        interval: Duration,
        now: Instant,
    },
    /// The routing table's clones as they are now (after a publish, a check, an enable,
    /// or on the 50 ms tick that notices passive ejections).
    Clones {
        clones: Vec<CloneView>,
        now: Instant,
    },
    /// Pin a version (`Some`) or unpin (`None`).
    Pin(Option<VersionId>),
}

/// A decision that changes routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `to` became active (0: mixed routing), after `from`.
    Active {
        from: VersionId,
        to: VersionId,
        why: Why,
    },
}

/// Why the active version changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Mixed mode, or atomic mode not elected yet.
    Mixed,
    /// First election in atomic mode.
    Elected,
    /// The new version's up clones reached `cutover_at`.
    Cutover,
    /// Pinned by ops (or unpinned, back to the counts).
    Pinned,
    /// The active version had no up clone left.
    Fallback,
}

/// The deploy rules' state. Pure: no clock, no I/O; the task passes `now`.
#[derive(Debug, Default)]
pub struct Machine {
    mode: Mode,
    cutover_at: CutoverAt,
    /// An election waits until then at most (set when atomic mode starts).
    elect_by: Option<Instant>,
    active: VersionId,
    fallback: VersionId,
    pinned: Option<VersionId>,
    /// The last `Clones` event.
    clones: Vec<CloneView>,
    /// Up clones per known version in it, by id (a handful of entries).
    up_counts: Vec<(VersionId, usize)>,
    /// Set when a fallback made the active version official; cleared by a cutover or pin.
    fell_back_from: Option<VersionId>,
    /// Versions replaced as active that still have an up clone: no cutover back to them.
    retired: Vec<VersionId>,
}

impl Machine {
    pub fn active(&self) -> VersionId {
        self.active
    }
    pub fn fallback(&self) -> VersionId {
        self.fallback
    }
    pub fn pinned(&self) -> Option<VersionId> {
        self.pinned
    }
    pub fn mode(&self) -> Mode {
        self.mode
    }
    pub fn cutover_at(&self) -> CutoverAt {
        self.cutover_at
    }
    /// The version the active one replaced by an outage fallback, while that stands.
    pub fn fell_back_from(&self) -> Option<VersionId> {
        self.fell_back_from
    }

    /// Distinct versions among up clones (unknown not counted).
    pub fn skew(&self) -> usize {
        self.up_counts.len()
    }

    /// Take one event; the change of active version it caused, if any.
    pub fn record(&mut self, event: Event) -> Option<Change> {
        let now = match event {
            Event::Mode {
                mode,
                cutover_at,
                interval,
                now,
            } => {
                if mode == Mode::Atomic && self.mode != Mode::Atomic {
                    self.elect_by = Some(now + interval);
                }
                self.mode = mode;
                self.cutover_at = cutover_at;
                now
            }
            Event::Clones { clones, now } => {
                self.up_counts.clear();
                for c in clones.iter().filter(|c| c.up && c.version != 0) {
                    match self.up_counts.iter_mut().find(|(v, _)| *v == c.version) {
                        Some((_, n)) => *n += 1,
                        None => self.up_counts.push((c.version, 1)),
                    }
                }
                self.up_counts.sort_unstable();
                self.clones = clones;
                let gone: Vec<VersionId> = self
                    .retired
                    .iter()
                    .copied()
                    .filter(|&v| self.up(v) == 0)
                    .collect();
                self.retired.retain(|v| !gone.contains(v));
                now
            }
            Event::Pin(version) => {
                self.pinned = version;
                let before = self.active;
                let change = self.decide(None);
                return change.map(|c| match c {
                    Change::Active { to, .. } => Change::Active {
                        from: before,
                        to,
                        why: Why::Pinned,
                    },
                });
            }
        };
        self.decide(Some(now))
    }

    /// Up clones of `version`.
    fn up(&self, version: VersionId) -> usize {
        self.up_counts
            .iter()
            .find(|(v, _)| *v == version)
            .map_or(0, |&(_, n)| n)
    }

    /// The version with the most up clones among those `keep` accepts (ties: the lowest
    /// id, i.e. the one seen first), if any has one.
    fn most_up(&self, keep: impl Fn(VersionId) -> bool) -> Option<VersionId> {
        // `up_counts` is sorted by id: a strict `>` keeps the lowest id of a tie.
        let mut best: Option<(usize, VersionId)> = None;
        for &(v, n) in self.up_counts.iter().filter(|(v, _)| keep(*v)) {
            if best.is_none_or(|(m, _)| n > m) {
                best = Some((n, v));
            }
        }
        best.map(|(_, v)| v)
    }

    fn decide(&mut self, now: Option<Instant>) -> Option<Change> {
        let from = self.active;
        let (to, why) = self.target(now);
        self.active = to;
        self.fallback = match to {
            0 => 0,
            a => self.most_up(|v| v != a).unwrap_or(0),
        };
        if why != Why::Fallback && to != from {
            self.fell_back_from = None;
        }
        if to != from && from != 0 && self.up(from) > 0 && !self.retired.contains(&from) {
            self.retired.push(from);
        }
        self.retired.retain(|&v| v != to);
        (to != from).then_some(Change::Active { from, to, why })
    }

    fn target(&mut self, now: Option<Instant>) -> (VersionId, Why) {
        if self.mode == Mode::Mixed {
            return (0, Why::Mixed);
        }
        let active = self.active;
        if active == 0 {
            if let Some(p) = self.pinned.filter(|&p| self.up(p) > 0) {
                return (p, Why::Pinned);
            }
            let all_reported = self.clones.iter().all(|c| !c.up || c.version != 0);
            let waited = matches!((now, self.elect_by), (Some(n), Some(by)) if n >= by);
            if !(all_reported || waited) {
                return (0, Why::Mixed);
            }
            return match self.most_up(|_| true) {
                Some(v) => (v, Why::Elected),
                None => (0, Why::Mixed),
            };
        }
        // The active version has nobody up: the outage fallback.
        if self.up(active) == 0 {
            if let Some(v) = self.most_up(|v| v != active) {
                self.fell_back_from = Some(active);
                return (v, Why::Fallback);
            }
            return (active, Why::Fallback);
        }
        if let Some(p) = self.pinned {
            if self.up(p) > 0 {
                return (p, Why::Pinned);
            }
            return (active, Why::Pinned);
        }
        let need = self.cutover_at.threshold(self.clones.len());
        match self.most_up(|v| v != active && !self.retired.contains(&v)) {
            Some(v) if self.up(v) >= need => (v, Why::Cutover),
            _ => (active, Why::Cutover),
        }
    }
}

#[cfg(test)]
mod tests;

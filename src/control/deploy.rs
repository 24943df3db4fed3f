//! The deploy task: one task on the control runtime feeds the deploy [`Machine`] with the
//! routing table's clones (on every bell from a checker, an enable or a publish, and on a
//! 50 ms tick that notices passive ejections made on the request path) and alone writes
//! the [`DeployGate`] every table shares. Also the read side (`deploy` in [`Status`]) and
//! the pin.
//!
//! [`Status`]: super::Status

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::backend::Backend;
use crate::config::Config;
use crate::deploy::{
    CloneView, CutoverAt, DeployGate, Event, Machine, Mode, VersionId, Versions, Why,
};
use crate::health::CheckHooks;
use crate::table::SharedTable;

/// How often the task looks at the clones without being rung.
const TICK: Duration = Duration::from_millis(50);

/// The deploy side of the control plane.
#[derive(Debug, Default)]
pub struct DeployControl {
    versions: Arc<Versions>,
    gate: Arc<DeployGate>,
    /// Rung by the checkers, an enable and a publish.
    changed: Arc<Notify>,
    inner: Mutex<DeployInner>,
    /// Outage fallbacks since start (`clonelb_deploy_fallbacks_total`).
    fallbacks: AtomicU64,
}

#[derive(Debug, Default)]
struct DeployInner {
    machine: Machine,
    /// Since when the active version is an outage fallback.
    fell_back_at: Option<SystemTime>,
    /// More than one version among up clones, as last logged.
    skewed: bool,
}

/// `deploy` in `/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployStatus {
    pub active: Option<Arc<str>>,
    /// Every version the table's clones report: up (up, not disabled, not draining) and
    /// total.
    pub versions: BTreeMap<Arc<str>, VersionCount>,
    pub mode: Mode,
    pub cutover_at: CutoverAt,
    pub pinned: Option<Arc<str>>,
    /// Set while the active version is an outage fallback.
    pub fallback: Option<Fallback>,
    /// Outage fallbacks since start.
    pub fallbacks_total: u64,
    /// Distinct versions among up clones.
    pub skew: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VersionCount {
    pub up: usize,
    pub total: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub from: Arc<str>,
    pub since: SystemTime,
}

/// Why a pin was refused (both answered 409 by the admin API).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PinError {
    #[error("deploy mode is \"mixed\": there is no active version to pin (set [deploy] mode = \"atomic\")")]
    Mixed,
    #[error("no clone reports version \"{0}\"")]
    UnknownVersion(String),
}

impl DeployControl {
    pub fn gate(&self) -> &Arc<DeployGate> {
        &self.gate
    }

    pub fn versions(&self) -> &Arc<Versions> {
        &self.versions
    }

    /// What the health checkers share with this task.
    pub fn hooks(&self) -> CheckHooks {
        CheckHooks {
            versions: Arc::clone(&self.versions),
            changed: Arc::clone(&self.changed),
            ..CheckHooks::default()
        }
    }

    /// Look at the clones now (something changed).
    pub fn ring(&self) {
        self.changed.notify_one();
    }

    fn lock(&self) -> MutexGuard<'_, DeployInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A published configuration's `[deploy]` and health interval.
    pub fn configure(&self, config: &Config, table: &SharedTable) {
        let interval = config
            .health
            .as_ref()
            .map_or(Duration::ZERO, |h| h.interval);
        let event = Event::Mode {
            mode: config.deploy.mode,
            cutover_at: config.deploy.cutover_at,
            interval,
            now: Instant::now(),
        };
        let mut inner = self.lock();
        let change = inner.machine.record(event);
        self.apply(&mut inner, change);
        drop(inner);
        self.observe(table);
    }

    /// Feed the machine the table's clones as they are now.
    pub fn observe(&self, table: &SharedTable) {
        let views: Vec<CloneView> = table.load().backends().iter().map(view).collect();
        let mut inner = self.lock();
        let change = inner.machine.record(Event::Clones {
            clones: views,
            now: Instant::now(),
        });
        self.apply(&mut inner, change);
        let skewed = inner.machine.skew() > 1;
        if skewed != inner.skewed {
            inner.skewed = skewed;
            if skewed {
                tracing::warn!(
                    versions = inner.machine.skew(),
                    "version skew: clones that are up run different versions"
                );
            } else {
                tracing::info!("version skew over: every up clone runs one version");
            }
        }
    }

    /// Pin `version` (`Some`) or unpin.
    pub fn pin(&self, version: Option<&str>, table: &SharedTable) -> Result<(), PinError> {
        self.observe(table);
        let mut inner = self.lock();
        if inner.machine.mode() != Mode::Atomic {
            return Err(PinError::Mixed);
        }
        let id = match version {
            None => None,
            Some(v) => {
                let id = self
                    .versions
                    .id(v)
                    .filter(|&id| {
                        table
                            .load()
                            .backends()
                            .iter()
                            .any(|b| b.state.version() == id)
                    })
                    .ok_or_else(|| PinError::UnknownVersion(v.to_string()))?;
                Some(id)
            }
        };
        match version {
            Some(v) => tracing::info!(version = v, "deploy: version pinned"),
            None => tracing::info!("deploy: version unpinned"),
        }
        let change = inner.machine.record(Event::Pin(id));
        self.apply(&mut inner, change);
        Ok(())
    }

    /// Store the machine's decision in the gate; log and count a change.
    fn apply(&self, inner: &mut DeployInner, change: Option<crate::deploy::Change>) {
        let m = &inner.machine;
        self.gate.set(m.active(), m.fallback());
        let Some(crate::deploy::Change::Active { from, to, why }) = change else {
            return;
        };
        let (from_name, to_name) = (self.name(from), self.name(to));
        match why {
            Why::Fallback => {
                self.fallbacks.fetch_add(1, Relaxed);
                inner.fell_back_at = Some(SystemTime::now());
                tracing::error!(from = %from_name, to = %to_name, "deploy: no clone of the active version is up; falling back to the version that is");
            }
            Why::Mixed => {
                inner.fell_back_at = None;
                tracing::info!(from = %from_name, "deploy: routing to every up clone (mixed)");
            }
            Why::Elected => {
                inner.fell_back_at = None;
                tracing::info!(version = %to_name, "deploy: active version elected");
            }
            Why::Cutover => {
                inner.fell_back_at = None;
                tracing::info!(from = %from_name, to = %to_name, "deploy: cut over to the new version");
            }
            Why::Pinned => {
                inner.fell_back_at = None;
                tracing::info!(from = %from_name, to = %to_name, "deploy: active version set by the pin");
            }
        }
    }

    fn name(&self, id: VersionId) -> Arc<str> {
        self.versions.name(id).unwrap_or_else(|| Arc::from("none"))
    }

    /// The `deploy` object of `/status`, for the table's clones.
    pub fn status(&self, clones: &[Backend]) -> DeployStatus {
        let inner = self.lock();
        let m = &inner.machine;
        let mut versions: BTreeMap<Arc<str>, VersionCount> = BTreeMap::new();
        for b in clones {
            let Some(v) = self.versions.name(b.state.version()) else {
                continue;
            };
            let count = versions.entry(v).or_default();
            count.total += 1;
            if view(b).up {
                count.up += 1;
            }
        }
        let skew = versions.values().filter(|c| c.up > 0).count();
        DeployStatus {
            active: self.versions.name(m.active()),
            versions,
            mode: m.mode(),
            cutover_at: m.cutover_at(),
            pinned: m.pinned().and_then(|p| self.versions.name(p)),
            fallback: match (m.fell_back_from(), inner.fell_back_at) {
                (Some(from), Some(since)) => Some(Fallback {
                    from: self.name(from),
                    since,
                }),
                _ => None,
            },
            fallbacks_total: self.fallbacks.load(Relaxed),
            skew,
        }
    }

    /// The task: look at the clones when rung, and every [`TICK`].
    pub async fn run(this: std::sync::Weak<Self>, table: std::sync::Weak<SharedTable>) {
        let changed = match this.upgrade() {
            Some(d) => Arc::clone(&d.changed),
            None => return,
        };
        loop {
            tokio::select! {
                _ = changed.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
            let (Some(d), Some(t)) = (this.upgrade(), table.upgrade()) else {
                return;
            };
            d.observe(&t);
        }
    }
}

/// A clone as the machine sees it.
fn view(b: &Backend) -> CloneView {
    CloneView {
        version: b.state.version(),
        up: b.state.is_available(),
    }
}

//! The control plane: everything that changes at run time, in one place.
//!
//! [`ControlState`] is the only writer of the routing table and the TLS configuration.
//! It owns the generation, `loaded_at`, the last error, the drain list and its reaper, and
//! keeps the health checkers in step with the clones. One entry point applies a new
//! desired state, [`ControlState::publish`] (its [`Inputs`]: the validated lb.toml today;
//! discovered clones and admin overrides plug in here); one read-only view,
//! [`ControlState::status`], tells everyone else what is running. The file side (watch,
//! read, parse, then `publish`) is the `reload` module; the runtime it all runs on and the
//! signal handlers are [`runtime`].
//!
//! A publish is a transaction: build a new table (reusing the state of every clone whose
//! address is unchanged, and of a draining clone that is added back), then one atomic
//! store. A clone the new table no longer has is *drained*: it gets no new request from
//! the instant of the swap, its idle connections are closed, requests in flight on it
//! finish, and it is dropped once its in-flight count is zero, or cut at `drain_timeout`.
//!
//! Owns: the table's `ArcSwap`, the TLS `ArcSwapOption`, generation, drains, health
//! checker tasks. Must not touch: files (reload reads them), sockets of the request path,
//! per-request state.

mod audit;
mod deploy;
mod dns;
mod history;
mod publish;
mod restart_only;
pub mod runtime;
pub mod status;
mod steer;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use rustls::ServerConfig;
use tokio::time::Instant;

use crate::access_log::{self, AccessLog};
use crate::audit::job::Settings as AuditSettings;
use crate::audit::task::Audit;
use crate::backend::{Backend, BackendState};
use crate::config::Config;
use crate::error_pages::ErrorPages;
use crate::health::HealthChecks;
use crate::stats::ProcessStats;
use crate::table::{RoutingTable, SharedTable};
use history::History;
use restart_only::keep_restart_only_settings;

pub use crate::stats::{
    ChecksCount, HistogramSnapshot, HistoryPoint, LastCheck, LastMinute, ProcessSnapshot,
};
pub use deploy::{DeployStatus, Fallback, PinError, VersionCount};
pub use dns::DnsNameStatus;
pub use status::{CloneState, CloneStatus, Counters, OutlierStatus, Status};
pub use steer::Drain;

/// How often draining clones are looked at.
const DRAIN_TICK: Duration = Duration::from_millis(50);

/// How often the one-second ring takes its entry.
const HISTORY_TICK: Duration = Duration::from_secs(1);

/// Names listed per field in the reload log line; the rest are counted.
const LOGGED_NAMES: usize = 10;

/// A desired state to publish.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The validated lb.toml.
    pub config: Config,
    /// Its TLS configuration (`None` without an HTTPS listener).
    pub tls: Option<Arc<ServerConfig>>,
    /// Its `[error_pages]`, read (the table serves them).
    pub error_pages: Arc<ErrorPages>,
}

/// What a successful publish changed: the new generation and the clones (by name) added,
/// removed, and changed (renamed or reweighted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub generation: u64,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

/// A clone removed from the table, finishing its requests.
#[derive(Debug)]
struct Draining {
    backend: Backend,
    deadline: Instant,
}

/// The run-time state of a balancer. Lives on the control runtime; the request path never
/// touches its lock (it reads only the table and the TLS configuration, lock-free).
pub struct ControlState {
    /// Itself, for the tasks it starts (they end once it is dropped).
    me: Weak<ControlState>,
    table: Arc<SharedTable>,
    tls: Arc<ArcSwapOption<ServerConfig>>,
    rt: tokio::runtime::Handle,
    inner: Mutex<Inner>,
    /// The balancer's own counters (shared with the completion hook and the workers).
    process: Arc<ProcessStats>,
    /// Every clone's last minute; its own lock, so a tick never holds `inner`'s.
    history: Mutex<History>,
    /// The peer comparison, stepped after each tick of the ring (`[audit]`).
    peers: Mutex<audit::Audit>,
    /// The access log (configured by every publish, reopened by every reload).
    access: Arc<AccessLog>,
    /// Versions, the deploy gate and its task.
    deploy: Arc<deploy::DeployControl>,
    /// The consistency audit (on with `[audit]`).
    audit: Arc<Audit>,
}

struct Inner {
    /// Every clone name any table has had since start (for "never seen" answers).
    seen: HashSet<Arc<str>>,
    /// The addresses the listeners are bound to (port 0 resolved), once they are.
    listeners: (Option<SocketAddr>, Option<SocketAddr>),
    /// The admin listener's bound address, once it is.
    admin_listener: Option<SocketAddr>,
    generation: u64,
    loaded_at: SystemTime,
    last_error: Option<Vec<String>>,
    draining: Vec<Draining>,
    health: HealthChecks,
    /// The DNS names of lb.toml, what they resolved to, their tasks.
    dns: dns::Dns,
}

impl Inner {
    fn remember_names(&mut self, table: &RoutingTable) {
        for b in table.backends() {
            if !self.seen.contains(&*b.name) {
                self.seen.insert(Arc::clone(&b.name));
            }
        }
    }
}

impl ControlState {
    /// Generation 1 of `inputs`. Starts the health checkers, the drain reaper and the
    /// one-second ring's task on `rt` (both tasks end once the `ControlState` is dropped).
    pub fn new(inputs: Inputs, rt: tokio::runtime::Handle) -> Arc<ControlState> {
        let process = Arc::new(ProcessStats::new());
        let access = Arc::new(AccessLog::new(Arc::clone(&process)));
        access.configure(access_log::Settings::of(&inputs.config.log));
        let deploy = Arc::new(deploy::DeployControl::default());
        let audit = Arc::new(Audit::new());
        let mut hooks = deploy.hooks();
        hooks.reset = {
            let audit = Arc::downgrade(&audit);
            Arc::new(move |addr| {
                if let Some(a) = audit.upgrade() {
                    a.reset(addr);
                }
            })
        };
        let state = Arc::new_cyclic(|me| ControlState {
            me: Weak::clone(me),
            table: Arc::new(ArcSwap::from_pointee(
                RoutingTable::build(&inputs.config, None)
                    .with_error_pages(Arc::clone(&inputs.error_pages))
                    .with_gate(Arc::clone(deploy.gate())),
            )),
            tls: Arc::new(ArcSwapOption::new(inputs.tls)),
            rt,
            inner: Mutex::new(Inner {
                seen: HashSet::new(),
                listeners: inputs.config.listen.addresses(),
                admin_listener: inputs.config.admin.as_ref().and_then(|a| a.listen),
                generation: 1,
                loaded_at: SystemTime::now(),
                last_error: None,
                draining: Vec::new(),
                health: HealthChecks::new(hooks),
                dns: dns::Dns::default(),
            }),
            process,
            history: Mutex::new(History::default()),
            peers: Mutex::default(),
            access,
            deploy,
            audit,
        });
        state
            .audit
            .configure(AuditSettings::of(&inputs.config), Arc::clone(&state.table));
        state.deploy.configure(&inputs.config, &state.table);
        state.rt.spawn(deploy::DeployControl::run(
            Arc::downgrade(&state.deploy),
            Arc::downgrade(&state.table),
        ));
        {
            let mut inner = state.lock();
            state.sync_health(&mut inner);
            let table = state.table.load();
            inner.remember_names(&table);
            // The DNS names' clones come with their first answers.
            inner.dns.set_entries(&inputs.config);
            inner.dns.start_tasks(Weak::clone(&state.me), &state.rt);
        }
        let weak = Arc::downgrade(&state);
        state.rt.spawn(async move {
            let mut tick = tokio::time::interval(DRAIN_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(state) = weak.upgrade() else { return };
                state.reap_drained();
            }
        });
        let weak = Arc::downgrade(&state);
        state.rt.spawn(async move {
            let mut last = Instant::now();
            let mut tick = tokio::time::interval_at(last + HISTORY_TICK, HISTORY_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let now = tick.tick().await;
                let Some(state) = weak.upgrade() else { return };
                state.take_second(now, (now - last).as_secs_f64());
                last = now;
            }
        });
        state
    }

    /// The one-second ring's tick at `now`: one entry for every clone in the table or
    /// draining; then the audit's step over the table's clones.
    fn take_second(&self, now: Instant, secs: f64) {
        let table = self.table.load();
        let mut clones: Vec<Arc<BackendState>> = table
            .backends()
            .iter()
            .map(|b| Arc::clone(&b.state))
            .collect();
        clones.extend(
            self.lock()
                .draining
                .iter()
                .map(|d| Arc::clone(&d.backend.state)),
        );
        let mut history = self.history_lock();
        history.tick(SystemTime::now(), secs, &clones);
        self.audit_lock().step(now, &table, &history);
    }

    fn history_lock(&self) -> MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The balancer's own counters: requests answered without a clone, open client
    /// connections, reloads.
    pub fn process_stats(&self) -> &Arc<ProcessStats> {
        &self.process
    }

    /// The consistency audit (the request path hands it sampled answers).
    pub fn audit(&self) -> &Arc<Audit> {
        &self.audit
    }

    /// The access log (for the completion hook, SIGUSR1 and shutdown).
    pub fn access_log(&self) -> &Arc<AccessLog> {
        &self.access
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The table every worker reads (for the workers' shared context).
    pub fn table(&self) -> &Arc<SharedTable> {
        &self.table
    }

    /// The HTTPS listener's configuration (for the workers' shared context).
    pub fn tls(&self) -> &Arc<ArcSwapOption<ServerConfig>> {
        &self.tls
    }

    /// The workers are listening on these addresses (a configured port 0 resolved).
    pub fn set_listeners(&self, http: Option<SocketAddr>, https: Option<SocketAddr>) {
        self.lock().listeners = (http, https);
    }

    /// The admin listener is bound to this address.
    pub fn set_admin_listener(&self, admin: Option<SocketAddr>) {
        self.lock().admin_listener = admin;
    }

    /// The control runtime.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.rt
    }

    /// What is running now.
    pub fn status(&self) -> Status {
        let inner = self.lock();
        let history = self.history_lock();
        let audit = self.audit_lock();
        let table = self.table.load();
        let versions = (&**self.deploy.versions(), self.deploy.gate().active());
        let of = |b: &Backend, draining| {
            let outlier = audit.status_of(b.address);
            let (h, v) = (&*history, versions);
            let mut c = CloneStatus::of(&b.name, b.weight, &b.state, draining, h, v, outlier);
            if let Some(source) = &b.source {
                c.resolved_at = inner.dns.resolved_at(source);
                c.source = Some(Arc::clone(source));
            }
            c
        };
        let mut backends: Vec<CloneStatus> =
            table.backends().iter().map(|b| of(b, false)).collect();
        backends.extend(inner.draining.iter().map(|d| of(&d.backend, true)));
        Status {
            generation: inner.generation,
            loaded_at: inner.loaded_at,
            last_error: inner.last_error.clone(),
            strategy: table.picker().kind(),
            backends,
            process: self.process.snapshot(),
            deploy: self.deploy.status(table.backends()),
            audit: self.audit.snapshot(),
            dns: inner.dns.status(),
        }
    }

    /// Pin the active version (`Some`), or unpin: the `deploy` object after it.
    pub fn pin(&self, version: Option<&str>) -> Result<DeployStatus, PinError> {
        self.deploy.pin(version, &self.table)?;
        Ok(self.deploy.status(self.table.load().backends()))
    }

    /// Checkers follow the table and the drain list: a removed clone is checked until it
    /// is dropped.
    fn sync_health(&self, inner: &mut Inner) {
        let table = self.table.load();
        let mut clones: Vec<Backend> = table.backends().to_vec();
        clones.extend(inner.draining.iter().map(|d| d.backend.clone()));
        inner
            .health
            .sync(&self.rt, table.config().health.as_ref(), &clones);
    }

    /// Stop the health checkers and the resolver tasks (at shutdown).
    pub fn stop(&self) {
        let mut inner = self.lock();
        inner.health.stop_all();
        inner.dns.stop();
    }
}

#[cfg(test)]
mod tests;

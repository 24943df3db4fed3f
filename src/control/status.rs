//! The read-only view of a running balancer ([`Status`]): what the admin API, the logs
//! and tests read. Built on demand by [`super::ControlState::status`] from the table, the
//! drain list, each clone's atomics and the one-second ring; holds no reference into them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use super::deploy::DeployStatus;
use super::history::History;
use crate::backend::{BackendState, STATUS_CLASSES};
use crate::deploy::{VersionId, Versions};
use crate::stats::{
    ChecksCount, HistogramSnapshot, HistoryPoint, LastCheck, LastMinute, ProcessSnapshot,
};
use crate::strategy::StrategyKind;

/// A snapshot of the balancer's run-time state.
#[derive(Debug, Clone)]
pub struct Status {
    /// Successful loads so far, counting the first: 1, 2, 3 …
    pub generation: u64,
    /// When the running configuration was published.
    pub loaded_at: SystemTime,
    /// The error lines of the last reload, if it failed (cleared by the next success).
    pub last_error: Option<Vec<String>>,
    pub strategy: StrategyKind,
    /// The table's clones in lb.toml order, then the clones still draining.
    pub backends: Vec<CloneStatus>,
    /// The balancer's own counters: requests answered without any clone
    /// (`backend="none"`), open client connections, reloads.
    pub process: ProcessSnapshot,
    /// Versions and the deploy mode (`deploy` in `/status`).
    pub deploy: DeployStatus,
    /// The consistency audit's counters and verdicts (`audit` in `/status`).
    pub audit: crate::audit::task::AuditSnapshot,
    /// The DNS names of lb.toml and their last lookups (`dns` in `/status`).
    pub dns: Vec<super::DnsNameStatus>,
}

impl Status {
    /// The clone named `name` (table clones first).
    pub fn clone_named(&self, name: &str) -> Option<&CloneStatus> {
        self.backends.iter().find(|c| &*c.name == name)
    }

    /// Clones removed by a reload that are still finishing requests.
    pub fn draining(&self) -> impl Iterator<Item = &CloneStatus> {
        self.backends
            .iter()
            .filter(|c| c.state == CloneState::Draining)
    }
}

/// One clone as [`Status`] shows it.
#[derive(Debug, Clone)]
pub struct CloneStatus {
    pub name: Arc<str>,
    pub address: SocketAddr,
    pub weight: u32,
    pub state: CloneState,
    /// The code version its last passing check reported (`None`: unknown, or versions not
    /// tracked).
    pub version: Option<Arc<str>>,
    /// Failing its checks or passively ejected, whatever `state` shows first (a disabled
    /// clone may be down too). Not set by an outlier ejection (see `outlier`).
    pub down: bool,
    /// Requests (and WebSocket tunnels) on it right now.
    pub in_flight: usize,
    pub counters: Counters,
    /// The last active health check (`None` without `[health]`, or before the first).
    pub last_check: Option<LastCheck>,
    /// Active health checks passed and failed since the clone was first configured.
    pub checks: ChecksCount,
    /// Time to response head of the requests answered from it, since it was first
    /// configured (cumulative: the Prometheus histogram).
    pub latency: HistogramSnapshot,
    /// Its last minute: the one-second ring's entries summed (up to 60 s, ending at the
    /// ring's last tick).
    pub last_minute: LastMinute,
    /// The same seconds one by one, oldest first (up to 60).
    pub history: Vec<HistoryPoint>,
    /// Markedly worse than its peers over `[audit] window` (`None`: not, or no `[audit]`).
    pub outlier: Option<OutlierStatus>,
    /// The DNS name it was resolved from (`None`: written in lb.toml).
    pub source: Option<Arc<str>>,
    /// When that name last resolved (the answer this clone is part of, or left).
    pub resolved_at: Option<SystemTime>,
}

/// A clone the peer comparison names (`outlier` in `/status`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OutlierStatus {
    /// `5xx_share`, `p50_ms` or `p99_ms`: the metric of the largest ratio to the pool.
    pub metric: &'static str,
    /// The clone's value of it (a share in 0..=1, or milliseconds).
    pub value: f64,
    /// The median of the available judged clones.
    pub pool_median: f64,
    /// Out of rotation (`eject_outliers = true`): the judgement shown is the one it was
    /// ejected on, and its state is `down` until it is readmitted.
    pub ejected: bool,
}

/// What a clone is doing, as one word. When several apply, the first of draining,
/// disabled, down, standby wins (a disabled clone that also fails its checks shows
/// `disabled`: ops put it there, and it gets no traffic either way). `down`: failing its
/// checks, passively ejected, or ejected as an outlier (`[audit] eject_outliers`; its
/// `outlier.ejected` is true). `standby`: up, but not of the active version in atomic
/// deploy mode (no new requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloneState {
    Up,
    Down,
    Draining,
    Disabled,
    Standby,
}

impl CloneState {
    pub fn as_str(self) -> &'static str {
        match self {
            CloneState::Up => "up",
            CloneState::Down => "down",
            CloneState::Draining => "draining",
            CloneState::Disabled => "disabled",
            CloneState::Standby => "standby",
        }
    }

    /// `active`: the deploy gate's active version (0: mixed routing).
    fn of(state: &BackendState, draining: bool, active: VersionId) -> CloneState {
        if draining || state.is_draining() {
            CloneState::Draining
        } else if state.is_disabled() {
            CloneState::Disabled
        } else if state.is_down() || state.is_outlier() {
            CloneState::Down
        } else if active != 0 && state.version() != active {
            CloneState::Standby
        } else {
            CloneState::Up
        }
    }
}

impl std::fmt::Display for CloneState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A clone's counters since it was first configured (they survive reloads that keep its
/// address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    /// Client requests answered from this clone (each counted once).
    pub requests: u64,
    /// Those requests by status class: `[1xx, 2xx, 3xx, 4xx, 5xx]`.
    pub responses: [u64; STATUS_CLASSES],
    /// Attempts sent to it, retries included.
    pub attempts: u64,
    pub failures: u64,
    /// Failed attempts on it that were retried elsewhere.
    pub retries: u64,
    pub ejections: u64,
}

impl CloneStatus {
    pub(super) fn of(
        name: &Arc<str>,
        weight: u32,
        state: &BackendState,
        draining: bool,
        history: &History,
        (versions, active): (&Versions, VersionId),
        outlier: Option<OutlierStatus>,
    ) -> CloneStatus {
        let responses = state.responses_by_class();
        let (last_minute, history) = history.view(state);
        CloneStatus {
            name: Arc::clone(name),
            address: state.address(),
            weight,
            state: CloneState::of(state, draining, active),
            version: versions.name(state.version()),
            down: state.is_down(),
            in_flight: state.in_flight(),
            counters: Counters {
                requests: responses.iter().sum(),
                responses,
                attempts: state.attempts_total(),
                failures: state.failures_total(),
                retries: state.retries_total(),
                ejections: state.ejections_total(),
            },
            last_check: state.last_check(),
            checks: state.checks(),
            latency: state.latency().snapshot(),
            last_minute,
            history,
            outlier,
            source: None,
            resolved_at: None,
        }
    }
}

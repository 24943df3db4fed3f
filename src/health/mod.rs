//! Up and down: every decision that takes a clone out of rotation or puts it back.
//!
//! * **Active checks**: one checker task per clone GETs `[health] path` every `interval`
//!   (±10 % jitter, and a random first delay, so checks of many clones do not fire in one
//!   burst), feeds the outcome to its [`HealthCounter`], and publishes only transitions,
//!   with one atomic store to the clone's `down` flag. The request path never waits on a
//!   check.
//! * **Passive ejection**: the request path reports each attempt's outcome with
//!   [`report`]; `eject_after` connection failures in a row (or 5xx answers, with
//!   `eject_on_5xx`) take the clone out. With active checks, its checker sees the flag
//!   before its next check, counts the clone as down and brings it back after
//!   `healthy_threshold` passes; without them it is re-admitted on probation after
//!   `ejection_time` (its next connection failure ejects it again).
//!
//! Every transition is logged once, with the clone's name, address and the reason.
//!
//! Owns: the decisions. Writes only `BackendState`'s health (the `down` flag, the failure
//! run, the failure and ejection counters, and — the checker alone — the checks passed
//! and failed and the last check). Must not touch: the routing table, draining,
//! the request path's types.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderValue, HOST, USER_AGENT};
use http::{Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use rand::{Rng, SeedableRng};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::backend::{Backend, BackendState};
use crate::config::HealthConfig;
use crate::deploy::{self, VersionId, Versions};
use crate::stats::LastCheck;
use crate::table::Policy;

/// A health transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

/// Consecutive passes and failures of one clone's checks. Pure: feed it outcomes, it says
/// when the clone changes state.
#[derive(Debug, Clone)]
pub struct HealthCounter {
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    up: bool,
    /// Outcomes in a row that disagree with the current state.
    run: u32,
}

impl HealthCounter {
    pub fn new(up: bool, healthy_threshold: u32, unhealthy_threshold: u32) -> Self {
        HealthCounter {
            healthy_threshold: healthy_threshold.max(1),
            unhealthy_threshold: unhealthy_threshold.max(1),
            up,
            run: 0,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Record one check; returns the transition it caused, if any.
    pub fn record(&mut self, pass: bool) -> Option<Transition> {
        if pass == self.up {
            self.run = 0;
            return None;
        }
        self.run += 1;
        let threshold = if self.up {
            self.unhealthy_threshold
        } else {
            self.healthy_threshold
        };
        if self.run < threshold {
            return None;
        }
        self.up = pass;
        self.run = 0;
        Some(if pass {
            Transition::Up
        } else {
            Transition::Down
        })
    }

    /// The clone was taken out by someone else (passive ejection): start counting passes.
    pub fn force_down(&mut self) {
        self.up = false;
        self.run = 0;
    }
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckFailure {
    #[error("status {0}")]
    Status(StatusCode),
    #[error("timeout after {0:?}")]
    Timeout(Duration),
    #[error("connection refused or reset: {0}")]
    Connect(#[source] std::io::Error),
    #[error("bad response: {0}")]
    Http(#[source] hyper::Error),
}

/// A passed check: its status and, with `[health] version_header`, that header's value.
#[derive(Debug, Clone)]
pub struct Checked {
    pub status: StatusCode,
    pub version: Option<HeaderValue>,
}

/// One check: connect, `GET path`, read the response head, all within `timeout`.
pub async fn probe(address: SocketAddr, cfg: &HealthConfig) -> Result<Checked, CheckFailure> {
    let host = match &cfg.host {
        Some(h) => HeaderValue::from_str(h).ok(),
        None => HeaderValue::from_str(&address.to_string()).ok(),
    };
    let exchange = async {
        let stream = TcpStream::connect(address)
            .await
            .map_err(CheckFailure::Connect)?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(CheckFailure::Http)?;
        let conn = tokio::spawn(conn);
        let mut req = Request::get(cfg.path.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|_| CheckFailure::Status(StatusCode::BAD_REQUEST))?;
        let headers = req.headers_mut();
        if let Some(h) = host {
            headers.insert(HOST, h);
        }
        headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
        headers.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        let mut resp = sender.send_request(req).await.map_err(CheckFailure::Http)?;
        // The body is not needed; dropping the connection closes it.
        conn.abort();
        let version = match &cfg.version_header {
            Some(name) => resp.headers_mut().remove(name.as_str()),
            None => None,
        };
        Ok(Checked {
            status: resp.status(),
            version,
        })
    };
    match tokio::time::timeout(cfg.timeout, exchange).await {
        Ok(Ok(c)) if cfg.expect_status.contains(c.status.as_u16()) => Ok(c),
        Ok(Ok(c)) => Err(CheckFailure::Status(c.status)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(CheckFailure::Timeout(cfg.timeout)),
    }
}

/// A check's outcome in a few words, for [`LastCheck::detail`]: `status 200`,
/// `status 500`, `timeout after 1s`, `connection refused or reset`, `bad response`.
pub fn check_detail(outcome: Result<StatusCode, &CheckFailure>) -> String {
    match outcome {
        Ok(status) | Err(&CheckFailure::Status(status)) => format!("status {}", status.as_u16()),
        Err(CheckFailure::Timeout(t)) => {
            format!("timeout after {}", humantime::format_duration(*t))
        }
        Err(CheckFailure::Connect(_)) => "connection refused or reset".to_string(),
        Err(CheckFailure::Http(_)) => "bad response".to_string(),
    }
}

const USER_AGENT_VALUE: &str = concat!("clonelb-health/", env!("CARGO_PKG_VERSION"));

/// `interval` ± 10 %.
fn jittered(interval: Duration, rng: &mut impl Rng) -> Duration {
    let f = 0.9 + 0.2 * (rng.next_u32() as f64 / u32::MAX as f64);
    interval.mul_f64(f)
}

/// What the checkers share with the deploy task and the audit: where versions are
/// interned, a bell rung whenever a clone's version or health changed, and `reset`,
/// called with a clone's address when it goes down or reports a new version (the audit
/// starts its comparison window over).
#[derive(Clone)]
pub struct CheckHooks {
    pub versions: Arc<Versions>,
    pub changed: Arc<Notify>,
    pub reset: Arc<dyn Fn(SocketAddr) + Send + Sync>,
}

impl Default for CheckHooks {
    fn default() -> Self {
        CheckHooks {
            versions: Arc::default(),
            changed: Arc::default(),
            reset: Arc::new(|_| {}),
        }
    }
}

impl std::fmt::Debug for CheckHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckHooks").finish_non_exhaustive()
    }
}

/// Check one clone forever (until the task is aborted). `now` cuts a wait short (an
/// enabled clone is checked at once).
pub async fn check_loop(
    state: Arc<BackendState>,
    cfg: Arc<HealthConfig>,
    hooks: CheckHooks,
    now: Arc<Notify>,
) {
    let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
    let mut counter = HealthCounter::new(
        !state.is_down(),
        cfg.healthy_threshold,
        cfg.unhealthy_threshold,
    );
    // Spread the first checks of many clones over one interval; with versions tracked,
    // every clone's version is wanted at once (an atomic-mode election waits for them).
    if cfg.version_header.is_none() {
        let first = cfg
            .interval
            .mul_f64(rng.next_u32() as f64 / u32::MAX as f64);
        wait(first, &now).await;
    }
    // Why the last version header was not a version (logged once per clone until a good
    // one comes).
    let mut bad_version: Option<&'static str> = None;
    loop {
        if counter.is_up() && state.is_down() {
            counter.force_down();
        }
        let stamp = state.version_stamp();
        let outcome = probe(state.address(), &cfg).await;
        state.record_check(LastCheck {
            at: SystemTime::now(),
            ok: outcome.is_ok(),
            detail: check_detail(outcome.as_ref().map(|c| c.status)),
        });
        let transition = counter.record(outcome.is_ok());
        match (transition, &outcome) {
            (Some(Transition::Up), _) => {
                readmit(&state, 0);
                tracing::info!(clone = %state.name(), address = %state.address(), "clone up: health checks pass");
            }
            (Some(Transition::Down), Err(why)) => {
                state.set_down(true);
                tracing::warn!(clone = %state.name(), address = %state.address(), reason = %why, "clone down: health checks fail");
            }
            _ => {}
        }
        let version = match (&outcome, counter.is_up()) {
            // Every passing check of an up clone says its version; a failed one (not yet
            // enough to take it down) leaves it; a down clone has none.
            (Ok(checked), true) if cfg.version_header.is_some() => {
                version_of(&state, checked, &hooks.versions, &mut bad_version)
            }
            (Err(_), true) => state.version(),
            _ => 0,
        };
        // An enable during the check (its answer may be the old code's) leaves the
        // version unknown; the enable rang `now`, so the next check runs at once.
        let changed = state
            .set_version_from(stamp, version)
            .is_some_and(|before| before != version);
        if changed || transition.is_some() {
            hooks.changed.notify_one();
        }
        if (changed && version != 0) || transition == Some(Transition::Down) {
            (hooks.reset)(state.address());
        }
        wait(jittered(cfg.interval, &mut rng), &now).await;
    }
}

/// Sleep `d`, or less when `now` rings.
async fn wait(d: Duration, now: &Notify) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = now.notified() => {}
    }
}

/// The version id a passing check reported (0 when the header is missing or not a
/// version; why is logged once per clone).
fn version_of(
    state: &BackendState,
    checked: &Checked,
    versions: &Versions,
    bad: &mut Option<&'static str>,
) -> VersionId {
    let why = match &checked.version {
        None => Some("missing"),
        Some(v) => deploy::invalid_version(v.as_bytes()),
    };
    match (why, &checked.version) {
        (None, Some(v)) => {
            *bad = None;
            // Visible ASCII (checked above), so `to_str` cannot fail.
            v.to_str().map_or(0, |text| versions.intern(text))
        }
        (Some(why), _) => {
            if bad.replace(why) != Some(why) {
                tracing::warn!(clone = %state.name(), address = %state.address(), reason = why, "clone version unknown: its health check's version header is {why}");
            }
            0
        }
        (None, None) => 0,
    }
}

/// What one attempt on a clone said about the clone, as the request path saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// The clone sent a response head with this status.
    Answered(u16),
    /// Refused, reset or closed before the response, connect timeout, malformed answer.
    ConnectionFailure,
    /// A failure that says nothing about reachability (response timeout, error mid-body).
    OtherFailure,
}

/// The request path's report of one attempt: counts it and decides passive ejection. On
/// the failure that ejects the clone, logs it and, without active checks, schedules its
/// return on probation after `ejection_time` (on the caller's runtime).
pub fn report(state: &Arc<BackendState>, policy: &Policy, attempt: Attempt) {
    match attempt {
        Attempt::Answered(status) if !(policy.eject_on_5xx && status >= 500) => {
            state.end_failure_run();
            return;
        }
        Attempt::OtherFailure => {
            report_mid_body(state);
            return;
        }
        // A connection failure, or a 5xx that counts as one.
        Attempt::Answered(_) | Attempt::ConnectionFailure => {}
    }
    if !passive_failure(state, policy.eject_after) {
        return;
    }
    tracing::warn!(
        clone = %state.name(),
        address = %state.address(),
        failures = policy.eject_after,
        "clone ejected: connection failures in a row"
    );
    if policy.active_checks {
        return; // its checker brings it back after healthy_threshold passes
    }
    let state = Arc::clone(state);
    let (wait, probation) = (policy.proxy.ejection_time, policy.eject_after - 1);
    tokio::spawn(async move {
        tokio::time::sleep(wait).await;
        readmit(&state, probation);
        tracing::info!(clone = %state.name(), address = %state.address(), "clone re-admitted on probation");
    });
}

/// A failure that says nothing about reachability (a response timeout, or the clone failing
/// after its response head): counted, never ejecting. Needs no policy, so the response body
/// reports it without loading the table.
pub fn report_mid_body(state: &BackendState) {
    state.count_failure();
}

/// Count a connection-level failure. Returns true when it ejected the clone: the
/// `threshold`-th in a row, and the clone was up until now.
fn passive_failure(state: &BackendState, threshold: u32) -> bool {
    state.count_failure();
    let run = state.extend_failure_run();
    if run >= threshold && !state.set_down(true) {
        state.count_ejection();
        return true;
    }
    false
}

/// Put the clone back with `run` failures already counted: `threshold - 1` re-admits it on
/// probation (its next connection failure ejects it again), 0 clears it.
fn readmit(state: &BackendState, run: u32) {
    state.set_failure_run(run);
    state.set_down(false);
}

/// The checker tasks of every clone, kept in step with the routing table.
#[derive(Default)]
pub struct HealthChecks {
    config: Option<Arc<HealthConfig>>,
    hooks: CheckHooks,
    tasks: HashMap<SocketAddr, Checker>,
}

/// One clone's checker: its state, its task, and the bell that makes it check now.
struct Checker {
    state: Arc<BackendState>,
    task: JoinHandle<()>,
    now: Arc<Notify>,
}

impl HealthChecks {
    /// Checkers that intern versions in, and ring, `hooks`.
    pub fn new(hooks: CheckHooks) -> Self {
        HealthChecks {
            config: None,
            hooks,
            tasks: HashMap::new(),
        }
    }

    /// Check the clone at `address` now rather than at its next interval (an enabled
    /// clone's version is wanted at once).
    pub fn check_now(&self, address: SocketAddr) {
        if let Some(c) = self.tasks.get(&address) {
            c.now.notify_one();
        }
    }

    /// Start a checker for every clone in `clones` that has none, stop those of clones no
    /// longer listed, and restart all of them if the health settings changed. A clone's
    /// checker is tied to its state: a new state for the same address gets a new checker.
    pub fn sync(
        &mut self,
        rt: &tokio::runtime::Handle,
        config: Option<&HealthConfig>,
        clones: &[Backend],
    ) {
        if self.config.as_deref() != config {
            self.stop_all();
            self.config = config.cloned().map(Arc::new);
        }
        let Some(cfg) = self.config.clone() else {
            return;
        };
        let wanted: HashMap<SocketAddr, &Backend> = clones.iter().map(|b| (b.address, b)).collect();
        self.tasks.retain(|addr, c| {
            let keep = wanted
                .get(addr)
                .is_some_and(|b| Arc::ptr_eq(&b.state, &c.state));
            if !keep {
                c.task.abort();
            }
            keep
        });
        for b in clones {
            self.tasks.entry(b.address).or_insert_with(|| {
                let now = Arc::new(Notify::new());
                let task = rt.spawn(check_loop(
                    Arc::clone(&b.state),
                    Arc::clone(&cfg),
                    self.hooks.clone(),
                    Arc::clone(&now),
                ));
                Checker {
                    state: Arc::clone(&b.state),
                    task,
                    now,
                }
            });
        }
    }

    pub fn stop_all(&mut self) {
        for (_, c) in self.tasks.drain() {
            c.task.abort();
        }
    }
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        self.stop_all();
    }
}

#[cfg(test)]
mod tests;

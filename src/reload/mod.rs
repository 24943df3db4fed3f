//! Reloading lb.toml and draining removed clones. The only writer of the `ArcSwap`.
//!
//! A reload is a transaction: read → parse → validate → build a new routing table (reusing
//! the state of every clone whose address is unchanged, and of a draining clone that is
//! added back) → one atomic store. If any step fails, the old table keeps serving
//! untouched and the error lines (the same `PATH:LINE:COL: message` lines `clonelb check`
//! prints) are logged and kept as the last error until the next success.
//!
//! Triggers: changes to the file (a `notify` watcher on its directory, so an editor's
//! write-new-then-rename is seen too; events within [`DEBOUNCE`] are coalesced) and
//! `SIGHUP` (set up by `clonelb run`). `notify` uses inotify on Linux and FSEvents on
//! macOS: reloads follow a save within about [`DEBOUNCE`], with no polling.
//!
//! A clone removed by a reload is *drained*: it gets no new request from the instant of
//! the swap, its idle pooled connections are closed, requests in flight on it finish, and
//! it is dropped once its in-flight count is zero, or cut at `drain_timeout`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;

use arc_swap::ArcSwapOption;
use rustls::ServerConfig;

use crate::backend::Backend;
use crate::config::{self, Config};
use crate::health::HealthChecks;
use crate::table::{RoutingTable, SharedTable};
use crate::tls;

/// File events closer together than this are one reload.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// How often draining clones are looked at.
const DRAIN_TICK: Duration = Duration::from_millis(50);

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The file changed: skipped when its text is the same as last time.
    File,
    /// SIGHUP or an explicit call: always reloads.
    Signal,
}

/// The result of one reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Reloaded(Summary),
    /// The file's text was unchanged since the last attempt.
    Unchanged,
    /// The old table keeps serving; these are the problems.
    Failed(Vec<String>),
}

/// What a successful reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub generation: u64,
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
}

/// A clone removed from the table, finishing its requests.
#[derive(Debug)]
struct Draining {
    backend: Backend,
    deadline: Instant,
}

/// The control state of a running balancer: config file, generation, drains, health
/// checkers. Lives on the control runtime; the request path never touches its lock.
pub struct ControlState {
    table: Arc<SharedTable>,
    tls: Arc<ArcSwapOption<ServerConfig>>,
    rt: tokio::runtime::Handle,
    path: Option<PathBuf>,
    inner: Mutex<Inner>,
    watch: Mutex<Option<Watch>>,
}

/// The file watcher and what it watches: lb.toml and the TLS files.
struct Watch {
    watcher: notify::RecommendedWatcher,
    dirs: HashSet<PathBuf>,
    /// File name → whether a change to it must reload even when lb.toml is unchanged.
    files: Arc<Mutex<HashMap<OsString, bool>>>,
}

struct Inner {
    generation: u64,
    last_error: Option<Vec<String>>,
    last_text: Option<String>,
    draining: Vec<Draining>,
    health: HealthChecks,
}

impl ControlState {
    /// Control state for a table built from `path` (or from no file, for embedded use) at
    /// generation 1. Starts the health checkers and the drain ticker on `rt`.
    pub fn new(
        table: Arc<SharedTable>,
        tls: Arc<ArcSwapOption<ServerConfig>>,
        rt: tokio::runtime::Handle,
        path: Option<PathBuf>,
        text: Option<String>,
    ) -> Arc<ControlState> {
        let state = Arc::new(ControlState {
            table,
            tls,
            rt,
            path,
            watch: Mutex::new(None),
            inner: Mutex::new(Inner {
                generation: 1,
                last_error: None,
                last_text: text,
                draining: Vec::new(),
                health: HealthChecks::default(),
            }),
        });
        state.sync_health(&mut state.lock());
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
        state
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Successful loads so far, counting the first: 1, 2, 3 …
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// The error lines of the last reload, if it failed (cleared by the next success).
    pub fn last_error(&self) -> Option<Vec<String>> {
        self.lock().last_error.clone()
    }

    /// Clones removed by a reload that are still finishing requests.
    pub fn draining(&self) -> Vec<Backend> {
        self.lock()
            .draining
            .iter()
            .map(|d| d.backend.clone())
            .collect()
    }

    /// Reload the config file (see the module docs). Logs its outcome once.
    pub fn reload(&self, trigger: Trigger) -> Outcome {
        let Some(path) = self.path.as_deref() else {
            return Outcome::Unchanged;
        };
        let label = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                let lines = vec![format!("{label}:1:1: cannot read: {e}")];
                return self.fail(lines);
            }
        };
        let mut inner = self.lock();
        if trigger == Trigger::File && inner.last_text.as_deref() == Some(text.as_str()) {
            return Outcome::Unchanged;
        }
        inner.last_text = Some(text.clone());
        let checked = config::parse(&label, &text).and_then(|checked| {
            let tls = tls::from_checked(&label, &checked)?;
            Ok((checked, tls))
        });
        match checked {
            Ok((checked, tls)) => {
                for w in &checked.warnings {
                    tracing::warn!("{}", config::format_diagnostic(&label, w));
                }
                let summary = self.apply(&mut inner, checked.config, tls);
                drop(inner);
                self.update_watches();
                tracing::info!(
                    "reloaded {}: generation {}, +{} clone{}, -{} clone{}, {} changed",
                    file_name(path),
                    summary.generation,
                    summary.added,
                    plural(summary.added),
                    summary.removed,
                    plural(summary.removed),
                    summary.changed
                );
                Outcome::Reloaded(summary)
            }
            Err(e) => {
                drop(inner);
                self.fail(e.lines())
            }
        }
    }

    fn fail(&self, lines: Vec<String>) -> Outcome {
        let mut inner = self.lock();
        tracing::error!(
            generation = inner.generation,
            "reload failed; still serving the previous configuration"
        );
        for l in &lines {
            tracing::error!("{l}");
        }
        inner.last_error = Some(lines.clone());
        Outcome::Failed(lines)
    }

    /// Swap in a table for `config` and start draining what it no longer has.
    fn apply(
        &self,
        inner: &mut Inner,
        mut config: Config,
        tls: Option<Arc<ServerConfig>>,
    ) -> Summary {
        let old = self.table.load_full();
        let running = old.config();
        if config.listen.addresses() != running.listen.addresses() {
            tracing::warn!(
                running = ?running.listen.addresses(),
                configured = ?config.listen.addresses(),
                "listen.http and listen.https cannot change without a restart; keeping the running listeners"
            );
            config.listen.http = running.listen.http;
            config.listen.https = running.listen.https;
        }
        // A new certificate is used for new handshakes; open connections keep theirs. With
        // no https listener running there is nothing to give it to.
        if running.listen.https.is_some() {
            self.tls.store(tls);
        }
        if config.limits.max_connections != running.limits.max_connections {
            tracing::warn!(
                running = running.limits.max_connections,
                configured = config.limits.max_connections,
                "limits.max_connections cannot change without a restart; keeping the running limit"
            );
            config.limits.max_connections = running.limits.max_connections;
        }
        // A clone coming back while it drains gets its state (and connections) back.
        let new = RoutingTable::build_reusing(&config, |addr| {
            old.find(addr)
                .or_else(|| {
                    inner
                        .draining
                        .iter()
                        .map(|d| &d.backend)
                        .find(|b| b.address == addr)
                })
                .map(|b| Arc::clone(&b.state))
        });
        let (mut added, mut changed) = (0, 0);
        for b in new.backends() {
            match old.find(b.address) {
                None => added += 1,
                Some(o) if o.name != b.name || o.weight != b.weight => changed += 1,
                Some(_) => {}
            }
        }
        let undrained: Vec<SocketAddr> = new.backends().iter().map(|b| b.address).collect();
        inner.draining.retain(|d| {
            let back = undrained.contains(&d.backend.address);
            if back {
                d.backend.state.set_draining(false);
            }
            !back
        });
        let removed: Vec<Backend> = old
            .backends()
            .iter()
            .filter(|b| new.find(b.address).is_none())
            .cloned()
            .collect();

        let drain_timeout = new.proxy().drain_timeout;
        self.table.store(Arc::new(new));

        let deadline = Instant::now() + drain_timeout;
        for b in &removed {
            b.state.set_draining(true);
            tracing::info!(clone = %b.name, address = %b.address, in_flight = b.state.in_flight(), "clone removed; draining");
            inner.draining.push(Draining {
                backend: b.clone(),
                deadline,
            });
        }
        inner.generation += 1;
        inner.last_error = None;
        self.sync_health(inner);
        Summary {
            generation: inner.generation,
            added,
            removed: removed.len(),
            changed,
        }
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

    /// Drop draining clones that are idle, or whose drain_timeout passed.
    fn reap_drained(&self) {
        let mut inner = self.lock();
        if inner.draining.is_empty() {
            return;
        }
        let now = Instant::now();
        let before = inner.draining.len();
        inner.draining.retain(|d| {
            let in_flight = d.backend.state.in_flight();
            if in_flight == 0 {
                tracing::info!(clone = %d.backend.name, address = %d.backend.address, "clone drained and dropped");
                return false;
            }
            if now >= d.deadline {
                tracing::warn!(
                    clone = %d.backend.name,
                    address = %d.backend.address,
                    in_flight,
                    "drain_timeout passed; cutting the requests still in flight"
                );
                d.backend.state.cut_connections();
                return false;
            }
            true
        });
        if inner.draining.len() != before {
            self.sync_health(&mut inner);
        }
    }

    /// Stop the health checkers (at shutdown).
    pub fn stop(&self) {
        self.lock().health.stop_all();
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    )
}

/// Watch lb.toml's directory (and the TLS files' directories) and reload on changes: to
/// lb.toml when its text changed, to a certificate or key always.
pub fn watch(state: &Arc<ControlState>) -> notify::Result<()> {
    if state.path.is_none() {
        return Ok(());
    }
    let files: Arc<Mutex<HashMap<OsString, bool>>> = Arc::default();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bool>(16);
    let names = Arc::clone(&files);
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if event.kind.is_access() {
            return;
        }
        let names = names.lock().unwrap_or_else(PoisonError::into_inner);
        for p in &event.paths {
            if let Some(&force) = p.file_name().and_then(|n| names.get(n)) {
                // A full channel already holds pending reloads: nothing is lost.
                let _ = tx.try_send(force);
            }
        }
    })?;
    *state.watch.lock().unwrap_or_else(PoisonError::into_inner) = Some(Watch {
        watcher,
        dirs: HashSet::new(),
        files,
    });
    state.update_watches();
    let weak = Arc::downgrade(state);
    state.rt.spawn(async move {
        while let Some(mut force) = rx.recv().await {
            // Coalesce a burst (editors write, truncate, rename …) into one reload.
            tokio::time::sleep(DEBOUNCE).await;
            while let Ok(f) = rx.try_recv() {
                force |= f;
            }
            let Some(state) = weak.upgrade() else { return };
            state.reload(if force {
                Trigger::Signal
            } else {
                Trigger::File
            });
        }
    });
    Ok(())
}

impl ControlState {
    /// Watch the directories of lb.toml and of the TLS files now configured.
    fn update_watches(&self) {
        use notify::Watcher;
        let mut guard = self.watch.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(w) = guard.as_mut() else { return };
        let table = self.table.load();
        let listen = &table.config().listen;
        let mut wanted: Vec<(PathBuf, bool)> = Vec::new();
        if let Some(p) = &self.path {
            wanted.push((p.clone(), false));
        }
        for p in [&listen.tls_cert, &listen.tls_key].into_iter().flatten() {
            wanted.push((p.clone(), true));
        }
        let mut files = w.files.lock().unwrap_or_else(PoisonError::into_inner);
        files.clear();
        for (path, force) in wanted {
            let Some(name) = path.file_name() else {
                continue;
            };
            files.insert(name.to_os_string(), force);
            let dir = match path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            if !w.dirs.contains(&dir) {
                match w.watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        w.dirs.insert(dir);
                    }
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch for changes")
                    }
                }
            }
        }
    }
}

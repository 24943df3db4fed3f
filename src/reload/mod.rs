//! The file side of the control plane: watch lb.toml → read → parse → validate → load
//! TLS, error pages and the admin token file → [`ControlState::publish`]. If any step
//! fails, the running configuration keeps serving untouched and the error lines (the same
//! `PATH:LINE:COL: message` lines `clonelb check` prints) go to [`ControlState::reject`],
//! which logs them and keeps them as the last error until the next success.
//!
//! [`load`] is the one "read the file, parse, load TLS" sequence: start-up, every reload
//! and `clonelb check` use it.
//!
//! Triggers: the file watcher (`watch/`: settled files, symlink chains; off with `[reload] watch = false`) and SIGHUP
//! (set up by `clonelb run`), which always reloads, and the admin API's `POST /reload`: all
//! of them call [`Reloader::reload`]. Under `clonelb run` (from its first `READY=1`,
//! [`Reloader::notify_systemd`]) each attempt is announced: `RELOADING=1` before,
//! `READY=1` with the outcome as `STATUS=` after (see [`crate::notify`]).
//!
//! Owns: the config file, its last text, the watcher. Must not touch: the table or any
//! clone (only `publish` does).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rustls::ServerConfig;

use crate::config::{self, Checked, LoadError};
use crate::control::{ControlState, Inputs};
use crate::error_pages::{self, ErrorPages};
use crate::notify as systemd;
use crate::{tls, token_file};

pub use crate::control::Summary;

mod watch;

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// The file changed: skipped when its text is the same as last time (unless the last
    /// attempt failed: then a good read always applies).
    File,
    /// SIGHUP, a TLS file change or an explicit call: always reloads.
    Signal,
}

/// The result of one reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Reloaded(Summary),
    /// The file's text was unchanged since the last successful load.
    Unchanged,
    /// The old configuration keeps serving; these are the problems.
    Failed(Vec<String>),
}

/// A config file read and checked: its text, the validated config (with its warnings) and
/// the TLS configuration it names.
#[derive(Debug)]
pub struct Loaded {
    pub text: String,
    pub checked: Checked,
    pub tls: Option<Arc<ServerConfig>>,
    /// The `[error_pages]` files, read.
    pub error_pages: Arc<ErrorPages>,
}

impl Loaded {
    pub fn inputs(&self) -> Inputs {
        Inputs {
            config: self.checked.config.clone(),
            tls: self.tls.clone(),
            error_pages: Arc::clone(&self.error_pages),
        }
    }

    /// Log the warnings (e.g. no clones) as `PATH:LINE:COL: warning: …` lines.
    pub fn log_warnings(&self, path: &Path) {
        let label = path.display().to_string();
        for w in &self.checked.warnings {
            tracing::warn!("{}", config::format_diagnostic(&label, w));
        }
    }
}

/// Read `path`, validate it, and load the certificate, key, error pages and admin token
/// file it names.
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    check(path, read(path)?)
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|e| LoadError {
        path: path.display().to_string(),
        diagnostics: vec![config::Diagnostic {
            line: 1,
            col: 1,
            error: config::ConfigError::Io(e.to_string()),
        }],
    })
}

/// Validate `text` (read from `path`) and load the TLS files, error pages and admin token
/// file it names (the token becomes `[admin] token` of the loaded configuration).
fn check(path: &Path, text: String) -> Result<Loaded, LoadError> {
    let label = path.display().to_string();
    let mut checked = config::parse(&label, &text)?;
    let tls = tls::from_checked(&label, &checked)?;
    let error_pages = Arc::new(error_pages::from_checked(&label, &checked)?);
    token_file::from_checked(&label, &mut checked)?;
    Ok(Loaded {
        text,
        checked,
        tls,
        error_pages,
    })
}

/// What `systemctl status` shows after a reload attempt.
fn status_line(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Reloaded(summary) => format!("generation {}", summary.generation),
        Outcome::Failed(lines) => format!(
            "reload failed: {}",
            lines.first().map_or("", String::as_str)
        ),
        Outcome::Unchanged => "unchanged".to_string(),
    }
}

/// A config file and the balancer it configures.
pub struct Reloader {
    path: PathBuf,
    control: Arc<ControlState>,
    last: Mutex<Last>,
    watcher: Mutex<Option<watch::FileWatcher>>,
    /// Announce each reload attempt to systemd (only `clonelb run` sets it).
    notify: AtomicBool,
}

/// The text of the last read, and whether it was applied.
struct Last {
    text: Option<String>,
    ok: bool,
}

impl Reloader {
    /// `loaded` is what `control` was started with.
    pub fn new(path: &Path, loaded: &Loaded, control: Arc<ControlState>) -> Arc<Reloader> {
        Arc::new(Reloader {
            path: path.to_path_buf(),
            control,
            last: Mutex::new(Last {
                text: Some(loaded.text.clone()),
                ok: true,
            }),
            watcher: Mutex::new(None),
            notify: AtomicBool::new(false),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tell systemd the balancer is ready (`READY=1`, `STATUS=generation N`), and announce
    /// every reload attempt from now on (`clonelb run`, once its listeners are bound: a
    /// reload during the start says nothing). Under the reload lock, so a racing reload
    /// comes wholly before (this names its generation) or wholly after (announced).
    pub(crate) fn notify_systemd(&self) {
        let _last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let generation = self.control.status().generation;
        systemd::ready(Some(&format!("generation {generation}")));
        self.notify.store(true, Ordering::Relaxed);
    }

    /// Reload the config file (see the module docs). Logs its outcome once.
    pub fn reload(&self, trigger: Trigger) -> Outcome {
        // One reload at a time: the watcher, SIGHUP and explicit calls may race.
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let text = read(&self.path);
        if let Ok(text) = &text {
            if trigger == Trigger::File && last.ok && last.text.as_deref() == Some(text) {
                // Not an attempt: nothing to announce.
                return Outcome::Unchanged;
            }
        }
        let notify = self.notify.load(Ordering::Relaxed);
        if notify {
            systemd::reloading();
        }
        let outcome = self.apply(&mut last, text);
        if notify {
            // Still under the lock: the next attempt's RELOADING=1 comes after this.
            systemd::ready(Some(&status_line(&outcome)));
        }
        drop(last);
        if let Outcome::Reloaded(_) = outcome {
            self.update_watches();
        }
        outcome
    }

    /// Check `text` (or its read error) and publish it, or reject it.
    fn apply(&self, last: &mut Last, text: Result<String, LoadError>) -> Outcome {
        match text.and_then(|text| check(&self.path, text)) {
            Ok(loaded) => {
                loaded.log_warnings(&self.path);
                let summary = self.control.publish(loaded.inputs());
                last.text = Some(loaded.text);
                last.ok = true;
                Outcome::Reloaded(summary)
            }
            Err(e) => {
                last.ok = false;
                let lines = e.lines();
                self.control.reject(lines.clone());
                Outcome::Failed(lines)
            }
        }
    }
}

impl Reloader {
    /// Reload whenever lb.toml (or a TLS, error page or admin token file it names) changes
    /// (see the `watch` module).
    pub fn watch(self: &Arc<Self>) -> notify::Result<()> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<bool>(16);
        let watcher = watch::FileWatcher::new(tx)?;
        *self.watcher.lock().unwrap_or_else(PoisonError::into_inner) = Some(watcher);
        self.update_watches();
        let weak = Arc::downgrade(self);
        self.control.runtime().spawn(async move {
            while let Some(force) = watch::next_change(&mut rx).await {
                let Some(reloader) = weak.upgrade() else {
                    return;
                };
                reloader.reload(if force {
                    Trigger::Signal
                } else {
                    Trigger::File
                });
            }
        });
        Ok(())
    }

    /// Watch lb.toml and the TLS, error page and admin token files the running
    /// configuration names (a change to one of those reloads even when lb.toml is the same).
    fn update_watches(&self) {
        let guard = self.watcher.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(w) = guard.as_ref() else { return };
        let table = self.control.table().load();
        let listen = &table.config().listen;
        let mut files = vec![(self.path.clone(), false)];
        for p in [&listen.tls_cert, &listen.tls_key].into_iter().flatten() {
            files.push((p.clone(), true));
        }
        for p in table.config().error_pages.values() {
            files.push((p.clone(), true));
        }
        let token_file = table
            .config()
            .admin
            .as_ref()
            .and_then(|a| a.token_file.as_ref());
        if let Some(p) = token_file {
            files.push((p.clone(), true));
        }
        w.set_files(files);
    }
}

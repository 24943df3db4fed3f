//! clonelb: a layer-7 load balancer for a cluster of identical app servers ("clones").
//!
//! The library holds everything; `main.rs` only parses the command line. Tests and
//! benchmarks drive the same code the binary runs. This file is the wiring: [`Balancer`]
//! puts the control plane, the file side and the workers together. The design — layout,
//! one request's path, one reload's path, who owns what — is in `docs/ARCHITECTURE.md`.
//!
//! Data flows one way on the request path: [`server`] accepts and serves a connection,
//! [`proxy`] checks the request ([`forward::prepare`]), loads the [`table::RoutingTable`]
//! snapshot once, the [`strategy`] picks a clone, [`forward`] sends the request over one
//! of that clone's [`idle`] connections (or a new one), and [`body`] streams the answer
//! back and produces the request's [`record::RequestRecord`] when it ends. The only
//! writes are atomics in the clone's [`backend::BackendState`].
//!
//! Modules:
//! * [`config`] — lb.toml schema and validation (pure);
//! * [`backend`], [`idle`] — a clone, its shared state and its idle connections;
//! * [`strategy`], [`table`] — picking a clone from an immutable snapshot;
//! * [`server`], [`context`], [`proxy`], [`forward`], [`upstream_body`], [`body`] — the
//!   request path (HTTP/1.1, HTTP/2, WebSocket tunnels);
//! * [`record`] — one record per finished request and the completion hook;
//! * [`access_log`] — the access log's lines, channel and writer thread;
//! * [`request_id`] — `X-Request-Id`: kept or made;
//! * [`health`] — every up/down decision: active checks and passive ejection;
//! * [`stats`] — latency histograms, the balancer's own counters, the shapes the admin
//!   API reads;
//! * [`control`] — the run-time state: the only writer of the table, generation, drains,
//!   health-checker sync, [`control::Status`], the control runtime and signals;
//! * [`reload`] — the config file: load, watch, reload (then `control` publishes);
//! * [`tls`] — PEM files to a rustls configuration for the HTTPS listener;
//! * [`token_file`] — `[admin] token_file`: the admin token read from a file;
//! * [`demo`] — the embedded clones of `clonelb demo`;
//! * [`notify`] — the systemd notify protocol of `clonelb run` (a leaf);
//! * [`cli`] — `clonelb status`, `disable`, `enable`, `reload`: clients of the admin API;
//! * [`error`] — the request path's and start-up's error enums.
//!
//! Picking a clone from a table built from lb.toml text:
//!
//! ```
//! use clonelb::{config, table::RoutingTable};
//! use rand::SeedableRng;
//!
//! let text = r#"
//!     [listen]
//!     http = "127.0.0.1:8080"
//!     [[backend]]
//!     address = "127.0.0.1:9001"
//!     [[backend]]
//!     address = "127.0.0.1:9002"
//! "#;
//! let cfg = config::parse("lb.toml", text).expect("valid").config;
//! let table = RoutingTable::build(&cfg, None);
//! let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
//! let picks: Vec<_> = (0..4).map(|_| table.pick(&mut rng).unwrap().name.to_string()).collect();
//! assert_eq!(picks, ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9001", "127.0.0.1:9002"]);
//! ```

#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod audit;
pub mod backend;
pub mod body;
pub mod cli;
pub mod config;
pub mod context;
pub mod control;
pub mod demo;
pub mod deploy;
pub mod dns;
pub mod error;
pub mod error_pages;
pub mod files;
pub mod forward;
pub mod health;
pub mod idle;
pub mod notify;
pub mod proxy;
pub mod record;
pub mod reload;
pub mod request_id;
pub mod server;
pub mod stats;
pub mod strategy;
pub mod table;
pub mod tap;
pub mod tls;
pub mod token_file;
pub mod upstream_body;
pub mod upstream_conn;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use tokio::sync::watch;

use crate::admin::{Admin, AdminServer};
use crate::config::Config;
use crate::context::Shared;
use crate::control::runtime::{self, Runtime};
use crate::control::{ControlState, Inputs, Status};
use crate::error::StartError;
use crate::record::{Completion, Hook};
use crate::reload::{Reloader, Trigger};
use crate::server::Signal;
use crate::table::RoutingTable;

/// How long a stop waits for the access log to write its last lines.
const ACCESS_LOG_FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How to start a [`Balancer`] beyond its configuration.
#[derive(Clone)]
pub struct Options {
    /// Worker threads (at least 1); default: one per core.
    pub workers: usize,
    /// Called once for every finished request (see [`record`]).
    pub on_record: Option<Hook>,
    /// Take over SIGHUP, SIGTERM and SIGINT (`clonelb run` and `demo` only; never for a
    /// balancer embedded in tests), before any listener is bound.
    signals: bool,
    /// Start even when another process already listens on a listener's address, sharing
    /// it through `SO_REUSEPORT` (`clonelb run --reuse-port`). Off: such an address is
    /// refused at start (see [`server::probe`]).
    pub reuse_port: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            on_record: None,
            signals: false,
            reuse_port: false,
        }
    }
}

impl Options {
    pub fn workers(workers: usize) -> Self {
        Options {
            workers,
            ..Options::default()
        }
    }

    /// Share the listeners' port with another process already on it (see
    /// [`Options::reuse_port`]).
    pub fn reuse_port(mut self, on: bool) -> Self {
        self.reuse_port = on;
        self
    }

    /// Hand every finished request's record to `hook` too.
    pub fn on_record(mut self, hook: Hook) -> Self {
        self.on_record = Some(hook);
        self
    }
}

/// A running balancer: its worker threads, its control plane and its stop switch.
///
/// Dropping it stops the workers at once (connections are dropped); [`Balancer::shutdown`]
/// stops them gracefully and waits.
pub struct Balancer {
    control: Arc<ControlState>,
    reloader: Option<Arc<Reloader>>,
    http_addr: Option<SocketAddr>,
    https_addr: Option<SocketAddr>,
    signal: watch::Sender<Signal>,
    workers: Vec<JoinHandle<()>>,
    stop_signals: Option<mpsc::Receiver<()>>,
    admin: Option<(Arc<Admin>, AdminServer)>,
    // Dropped last: the runtime the control plane's tasks run on.
    runtime: Runtime,
}

impl Balancer {
    /// Start serving `config` with one worker per core (`listen.http` port 0 picks a free
    /// port; see [`Balancer::http_addr`]). No file: nothing is reloaded.
    pub fn start(config: &Config) -> Result<Balancer, StartError> {
        Self::start_with_options(config, Options::default())
    }

    /// As [`Balancer::start`], with an explicit number of worker threads (at least 1).
    pub fn start_with_workers(config: &Config, workers: usize) -> Result<Balancer, StartError> {
        Self::start_with_options(config, Options::workers(workers))
    }

    pub fn start_with_options(config: &Config, options: Options) -> Result<Balancer, StartError> {
        let tls = match (&config.listen.tls_cert, &config.listen.tls_key) {
            (Some(cert), Some(key)) => Some(tls::load(cert, key)?),
            _ => None,
        };
        let error_pages =
            error_pages::ErrorPages::load(&config.error_pages).map_err(|problems| {
                StartError::ErrorPages(problems.into_iter().map(|(_, why)| why).collect())
            })?;
        let mut config = config.clone();
        token_file::fill(&mut config).map_err(StartError::TokenFile)?;
        let inputs = Inputs {
            config,
            tls,
            error_pages: Arc::new(error_pages),
        };
        Self::start_inner(inputs, None, options)
    }

    /// Load `path`, start serving it, and reload it whenever it changes (see [`reload`]).
    pub fn start_from_file(path: &Path) -> Result<Balancer, StartError> {
        Self::start_from_file_with_options(path, Options::default())
    }

    /// As [`Balancer::start_from_file`], with an explicit number of worker threads.
    pub fn start_from_file_with_workers(
        path: &Path,
        workers: usize,
    ) -> Result<Balancer, StartError> {
        Self::start_from_file_with_options(path, Options::workers(workers))
    }

    pub fn start_from_file_with_options(
        path: &Path,
        options: Options,
    ) -> Result<Balancer, StartError> {
        let loaded = reload::load(path)?;
        loaded.log_warnings(path);
        Self::start_inner(loaded.inputs(), Some((path, &loaded)), options)
    }

    /// Control plane, then the file side, then (for `run`) the signal handlers, then the
    /// workers: by the time a port accepts, everything that may act on it exists.
    fn start_inner(
        inputs: Inputs,
        file: Option<(&Path, &reload::Loaded)>,
        options: Options,
    ) -> Result<Balancer, StartError> {
        let runtime = Runtime::start()?;
        let (http, https) = inputs.config.listen.addresses();
        let admin_listen = inputs.config.admin.as_ref().and_then(|a| a.listen);
        let max_connections = inputs.config.limits.max_connections;
        let watch_file = inputs.config.reload.watch;
        let control = ControlState::new(inputs, runtime.handle().clone());
        let reloader = file.map(|(path, loaded)| Reloader::new(path, loaded, Arc::clone(&control)));
        if let Some(r) = reloader.as_ref().filter(|_| watch_file) {
            r.watch().map_err(|e| {
                StartError::Thread(std::io::Error::other(format!(
                    "cannot watch {}: {e}",
                    r.path().display()
                )))
            })?;
        }
        let stop_signals = if options.signals {
            let on_hup = {
                let reloader = reloader.as_ref().map(Arc::downgrade);
                move || match reloader.as_ref().and_then(std::sync::Weak::upgrade) {
                    Some(r) => {
                        r.reload(Trigger::Signal);
                    }
                    None => tracing::info!("SIGHUP: no configuration file to reload"),
                }
            };
            let on_usr1 = {
                let access = Arc::clone(control.access_log());
                move || {
                    tracing::info!("SIGUSR1: reopening the access log");
                    access.reopen();
                }
            };
            Some(
                runtime::install_signals(runtime.handle(), on_hup, on_usr1)
                    .map_err(StartError::Thread)?,
            )
        } else {
            None
        };
        let shared = Arc::new(Shared::new(
            Arc::clone(control.table()),
            Arc::clone(control.tls()),
            Completion::new(
                options.on_record,
                Arc::clone(control.process_stats()),
                Some(Arc::clone(control.access_log()) as Arc<dyn record::AccessSink>),
            ),
            Some(Arc::clone(control.audit()) as Arc<dyn tap::Audits>),
        ));
        let (signal, _) = watch::channel(Signal::Run);
        let mut balancer = Balancer {
            control,
            reloader,
            http_addr: http,
            https_addr: https,
            signal,
            workers: Vec::new(),
            stop_signals,
            admin: None,
            runtime,
        };
        if let Some(listen) = admin_listen {
            let admin = Admin::new(Arc::clone(&balancer.control), balancer.reloader.clone());
            let server = AdminServer::start(listen, Arc::clone(&admin))?;
            balancer.control.set_admin_listener(Some(server.addr()));
            balancer.admin = Some((admin, server));
        }
        let bind = server::Bind {
            workers: options.workers,
            max_connections,
            reuse_port: options.reuse_port,
        };
        let workers = server::start((http, https), bind, &shared, &balancer.signal);
        // On error, dropping the half-built balancer stops what was started.
        let workers = workers?;
        balancer.workers = workers.threads;
        balancer.http_addr = workers.http;
        balancer.https_addr = workers.https;
        balancer.control.set_listeners(workers.http, workers.https);
        if let Some((admin, _)) = &balancer.admin {
            admin.set_ready(true);
        }
        Ok(balancer)
    }

    /// The address of the plain-HTTP listener, or of the HTTPS one when there is no plain
    /// listener (there is always one or the other).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
            .or(self.https_addr)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The address of the HTTPS listener, if there is one.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    /// The admin API's address, when `[admin]` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(_, server)| server.addr())
    }

    /// The current routing table snapshot.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.control.table().load_full()
    }

    /// What is running: generation, last error, every clone's state and counters.
    pub fn status(&self) -> Status {
        self.control.status()
    }

    /// Pin the active version (`Some`) or unpin (`None`), as the admin API's
    /// `POST`/`DELETE /deploy/pin` do: the `deploy` object after it.
    pub fn pin(&self, version: Option<&str>) -> Result<control::DeployStatus, control::PinError> {
        self.control.pin(version)
    }

    /// Reload the config file now (as SIGHUP does). A balancer started without a file has
    /// nothing to reload.
    pub fn reload(&self) -> reload::Outcome {
        match &self.reloader {
            Some(r) => r.reload(Trigger::Signal),
            None => reload::Outcome::Unchanged,
        }
    }

    /// Block until SIGTERM or SIGINT (only for a balancer that installed the handlers:
    /// `clonelb run` and `demo`; returns at once otherwise).
    fn wait_for_stop_signal(&self) {
        if let Some(rx) = &self.stop_signals {
            let _ = rx.recv();
        }
    }

    /// Stop accepting (the listeners close at once), let requests in flight finish (up to
    /// `[proxy] shutdown_timeout`), and wait for the workers to exit.
    pub fn shutdown(mut self) {
        self.stop(Signal::Graceful);
    }

    /// Stop at once, dropping every connection, and wait for the workers.
    pub fn abort(mut self) {
        self.stop(Signal::Abort);
    }

    fn stop(&mut self, how: Signal) {
        if let Some((admin, _)) = &self.admin {
            admin.set_ready(false);
        }
        let _ = self.signal.send(how);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        // Every request has ended: write the access log's last lines (bounded: a file
        // that takes no writes must not keep the process from stopping).
        if !self.control.access_log().flush(ACCESS_LOG_FLUSH_WAIT) {
            tracing::warn!(
                "access log: its last lines could not be written within {ACCESS_LOG_FLUSH_WAIT:?} (the file takes no writes); stopping anyway"
            );
        }
        self.control.stop();
        self.admin = None;
        self.runtime.stop();
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        // Workers not joined here: they stop on their own right after the signal. The
        // health checkers stop with the control runtime.
        let _ = self.signal.send(Signal::Abort);
        self.control.stop();
        self.runtime.stop();
    }
}

/// `clonelb run`: load the config, serve until SIGINT/SIGTERM (reloading on change and on
/// SIGHUP), then stop gracefully. A second SIGINT/SIGTERM exits at once. `options` gives
/// `reuse_port` (`--reuse-port`); the signal handlers are always installed.
///
/// Under systemd (`NOTIFY_SOCKET` set, `Type=notify`) it sends `READY=1` once the
/// listeners (and the admin listener) are bound, `RELOADING=1` and `READY=1` around every
/// reload from then on, and `STOPPING=1` when a stop signal starts the shutdown.
pub fn run(config_path: &Path, options: Options) -> Result<(), StartError> {
    let options = Options {
        signals: true,
        ..options
    };
    let balancer = Balancer::start_from_file_with_options(config_path, options)?;
    let status = balancer.status();
    tracing::info!(
        listen = %balancer.http_addr(),
        https = %balancer.https_addr().map_or_else(|| "none".to_string(), |a| a.to_string()),
        admin = %balancer.admin_addr().map_or_else(|| "none".to_string(), |a| a.to_string()),
        strategy = status.strategy.as_str(),
        clones = status.backends.len(),
        generation = status.generation,
        "clonelb serving"
    );
    // `start` returned: every listener is bound. Reload notifications start only now, so
    // a reload racing the start cannot tell systemd "ready" early.
    match &balancer.reloader {
        Some(r) => r.notify_systemd(),
        None => crate::notify::ready(Some(&format!("generation {}", status.generation))),
    }
    serve_until_stopped(balancer, true);
    Ok(())
}

/// Start serving `config` with the signal handlers installed (for `demo`).
pub(crate) fn start_with_signals(config: &Config) -> Result<Balancer, StartError> {
    let options = Options {
        signals: true,
        ..Options::default()
    };
    Balancer::start_with_options(config, options)
}

/// Wait for SIGTERM/SIGINT, then stop gracefully; `systemd`: say `STOPPING=1` first
/// (`clonelb run` only).
pub(crate) fn serve_until_stopped(balancer: Balancer, systemd: bool) {
    balancer.wait_for_stop_signal();
    if systemd {
        crate::notify::stopping();
    }
    tracing::info!("stopping: listeners closed, finishing requests in flight");
    balancer.shutdown();
    tracing::info!("stopped");
}

//! clonelb: a layer-7 load balancer for a cluster of identical app servers ("clones").
//!
//! The library holds everything; `main.rs` only parses the command line. Tests and
//! benchmarks drive the same code the binary runs.
//!
//! Data flows one way on the request path: [`server`] accepts and serves a connection,
//! [`proxy`] loads the [`table::RoutingTable`] snapshot once, the [`strategy`] picks a
//! clone, and [`forward`] sends the request over one of that clone's [`idle`] connections (or a new one).
//! The only writes are atomics in the clone's [`backend::BackendState`].
//!
//! Modules:
//! * [`config`] — lb.toml schema and validation (pure);
//! * [`backend`], [`idle`] — a clone and its shared state and idle connections;
//! * [`strategy`], [`table`] — picking a clone from an immutable snapshot;
//! * [`server`], [`proxy`], [`forward`], [`body`] — the request path
//!   (HTTP/1.1, HTTP/2, WebSocket tunnels);
//! * [`tls`] — PEM files to a rustls configuration for the HTTPS listener;
//! * [`health`] — active health checks (passive ejection lives on the request path);
//! * [`reload`] — lb.toml reloads (the only writer of the table) and draining;
//! * [`demo`] — the embedded clones of `clonelb demo`;
//! * [`error`] — one error enum per layer.
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

pub mod backend;
pub mod body;
pub mod config;
pub mod demo;
pub mod error;
pub mod forward;
pub mod health;
pub mod idle;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod strategy;
pub mod table;
pub mod tls;
pub mod upstream_body;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;

use crate::config::Config;
use crate::error::StartError;
use crate::reload::{ControlState, Trigger};
use crate::server::Signal;
use crate::table::{RoutingTable, SharedTable};

/// A running balancer: its worker threads, its routing table and its stop switch.
///
/// Dropping it stops the workers at once (connections are dropped); [`Balancer::shutdown`]
/// stops them gracefully and waits.
pub struct Balancer {
    table: Arc<SharedTable>,
    tls: Arc<ArcSwapOption<rustls::ServerConfig>>,
    http_addr: Option<SocketAddr>,
    https_addr: Option<SocketAddr>,
    signal: watch::Sender<Signal>,
    workers: Vec<JoinHandle<()>>,
    state: Arc<ControlState>,
    // Dropped last: the runtime the control state's tasks run on.
    control: Control,
}

/// The runtime of everything off the request path (health checks, later reload and
/// admin), on its own thread so it never competes with the workers' runtimes.
struct Control {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Control {
    fn start() -> Result<Control, StartError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StartError::Thread)?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("clonelb-control".into())
            .spawn(move || {
                rt.block_on(async {
                    let _ = stopped.await;
                })
            })
            .map_err(StartError::Thread)?;
        Ok(Control {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        self.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Balancer {
    /// Build the routing table and start one worker per core listening on
    /// `config.listen.http` (port 0 picks a free port; see [`Balancer::http_addr`]).
    pub fn start(config: &Config) -> Result<Balancer, StartError> {
        Self::start_with_workers(config, default_workers())
    }

    /// Load `path`, start serving it, and reload it whenever it changes (see [`reload`]).
    pub fn start_from_file(path: &Path) -> Result<Balancer, StartError> {
        Self::start_from_file_with_workers(path, default_workers())
    }

    /// As [`Balancer::start_from_file`], with an explicit number of worker threads.
    pub fn start_from_file_with_workers(
        path: &Path,
        workers: usize,
    ) -> Result<Balancer, StartError> {
        let label = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            StartError::Config(config::LoadError {
                path: label.clone(),
                diagnostics: vec![config::Diagnostic {
                    line: 1,
                    col: 1,
                    error: error::ConfigError::Io(e.to_string()),
                }],
            })
        })?;
        let checked = config::parse(&label, &text)?;
        for w in &checked.warnings {
            tracing::warn!("{}", config::format_diagnostic(&label, w));
        }
        let tls = tls::from_checked(&label, &checked)?;
        let balancer = Self::start_with(
            &checked.config,
            tls,
            Some((path.to_path_buf(), text)),
            workers,
        )?;
        reload::watch(&balancer.state).map_err(|e| {
            StartError::Thread(std::io::Error::other(format!("cannot watch {label}: {e}")))
        })?;
        Ok(balancer)
    }

    /// As [`Balancer::start`], with an explicit number of worker threads (at least 1).
    pub fn start_with_workers(config: &Config, workers: usize) -> Result<Balancer, StartError> {
        let tls = match (&config.listen.tls_cert, &config.listen.tls_key) {
            (Some(cert), Some(key)) => Some(tls::load(cert, key)?),
            _ => None,
        };
        Self::start_with(config, tls, None, workers)
    }

    fn start_with(
        config: &Config,
        tls: Option<Arc<rustls::ServerConfig>>,
        file: Option<(std::path::PathBuf, String)>,
        workers: usize,
    ) -> Result<Balancer, StartError> {
        let table = Arc::new(ArcSwap::from_pointee(RoutingTable::build(config, None)));
        let tls = Arc::new(ArcSwapOption::new(tls));
        let (signal, _) = watch::channel(Signal::Run);
        let control = Control::start()?;
        let (path, text) = file.unzip();
        let state = ControlState::new(
            Arc::clone(&table),
            Arc::clone(&tls),
            control.handle.clone(),
            path,
            text,
        );
        let mut balancer = Balancer {
            table,
            tls,
            http_addr: config.listen.http,
            https_addr: config.listen.https,
            signal,
            workers: Vec::new(),
            state,
            control,
        };
        // The first worker binds the configured address (resolving port 0); the others
        // bind the address it got.
        let slots = Arc::new(tokio::sync::Semaphore::new(
            usize::try_from(config.limits.max_connections)
                .unwrap_or(usize::MAX)
                .min(tokio::sync::Semaphore::MAX_PERMITS),
        ));
        let shared = Arc::new(server::Shared {
            table: Arc::clone(&balancer.table),
            tls: Arc::clone(&balancer.tls),
        });
        for i in 0..workers.max(1) {
            let (tx, rx) = mpsc::channel();
            let addrs = (balancer.http_addr, balancer.https_addr);
            let shared = Arc::clone(&shared);
            let signal = balancer.signal.subscribe();
            let slots = Arc::clone(&slots);
            let handle = std::thread::Builder::new()
                .name(format!("clonelb-worker-{i}"))
                .spawn(move || worker(addrs, shared, signal, slots, tx))
                .map_err(StartError::Thread)?;
            balancer.workers.push(handle);
            match rx.recv() {
                Ok(Ok((http, https))) => {
                    balancer.http_addr = http;
                    balancer.https_addr = https;
                }
                Ok(Err((address, source))) => return Err(StartError::Bind { address, source }),
                Err(_) => {
                    return Err(StartError::Thread(std::io::Error::other(
                        "worker thread exited before binding",
                    )))
                }
            }
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

    /// The current routing table snapshot.
    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    /// Reload the config file now (as SIGHUP does); see [`reload::ControlState::reload`].
    pub fn reload(&self) -> reload::Outcome {
        self.state.reload(Trigger::Signal)
    }

    /// Generation, last reload error, draining clones.
    pub fn control(&self) -> &Arc<ControlState> {
        &self.state
    }

    /// Stop accepting (the listeners close at once), let requests in flight finish (up to
    /// `[proxy] shutdown_timeout`), and wait for the workers to exit.
    pub fn shutdown(mut self) {
        let _ = self.signal.send(Signal::Graceful);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        self.state.stop();
        self.control.stop();
    }

    /// Stop at once, dropping every connection, and wait for the workers.
    pub fn abort(mut self) {
        let _ = self.signal.send(Signal::Abort);
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        self.state.stop();
        self.control.stop();
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        // Workers not joined here: they stop on their own right after the signal. The
        // health checkers stop with the control runtime.
        let _ = self.signal.send(Signal::Abort);
        self.state.stop();
        self.control.stop();
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The bound (http, https) addresses, or the address that could not be bound and why.
type BindResult = Result<(Option<SocketAddr>, Option<SocketAddr>), (SocketAddr, std::io::Error)>;

fn worker(
    (http, https): (Option<SocketAddr>, Option<SocketAddr>),
    shared: Arc<server::Shared>,
    signal: watch::Receiver<Signal>,
    slots: Arc<tokio::sync::Semaphore>,
    bound: mpsc::Sender<BindResult>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let at = http
                .or(https)
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
            let _ = bound.send(Err((at, e)));
            return;
        }
    };
    rt.block_on(async move {
        let bind = |addr: Option<SocketAddr>| -> Result<_, (SocketAddr, std::io::Error)> {
            let Some(addr) = addr else {
                return Ok((None, None));
            };
            let l = server::bind(addr).map_err(|e| (addr, e))?;
            let local = l.local_addr().map_err(|e| (addr, e))?;
            Ok((Some(l), Some(local)))
        };
        let listeners =
            bind(http).and_then(|(h, hl)| bind(https).map(|(s, sl)| ((h, hl), (s, sl))));
        let ((http_l, http_local), (https_l, https_local)) = match listeners {
            Ok(l) => l,
            Err(e) => {
                let _ = bound.send(Err(e));
                return;
            }
        };
        let _ = bound.send(Ok((http_local, https_local)));
        let listeners = server::Listeners {
            http: http_l,
            https: https_l,
        };
        server::serve(listeners, shared, signal, slots).await;
    });
}

/// `clonelb run`: load the config, serve until SIGINT/SIGTERM (reloading on change and on
/// SIGHUP), then stop gracefully. A second SIGINT/SIGTERM exits at once.
pub fn run(config_path: &Path) -> Result<(), StartError> {
    let balancer = Balancer::start_from_file(config_path)?;
    let table = balancer.table();
    tracing::info!(
        listen = %balancer.http_addr(),
        https = %balancer.https_addr().map_or_else(|| "none".to_string(), |a| a.to_string()),
        strategy = table.picker().kind().as_str(),
        clones = table.backends().len(),
        generation = 1,
        "clonelb serving"
    );
    drop(table);
    wait_for_signals(Some(&balancer));
    tracing::info!("stopping: listeners closed, finishing requests in flight");
    std::thread::spawn(|| {
        wait_for_signals(None);
        tracing::warn!("second stop signal: exiting now");
        std::process::exit(1);
    });
    balancer.shutdown();
    tracing::info!("stopped");
    Ok(())
}

/// Block until SIGINT or SIGTERM.
pub fn wait_for_stop_signal() {
    wait_for_signals(None);
}

/// Block until SIGINT or SIGTERM; on SIGHUP reload `balancer`'s config file.
fn wait_for_signals(balancer: Option<&Balancer>) {
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    rt.block_on(async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut term), Ok(mut hup)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) else {
                let _ = tokio::signal::ctrl_c().await;
                return;
            };
            loop {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return,
                    _ = term.recv() => return,
                    _ = hup.recv() => {
                        if let Some(b) = balancer {
                            b.reload();
                        }
                    }
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    });
}

//! The admin API: status, Prometheus metrics, disable/enable, wait-drained, reload, and
//! the orchestrators' probes, on its own listener (`[admin] listen`).
//!
//! It runs on **its own thread and `current_thread` runtime**, neither on the workers nor
//! on the control runtime, so a flood of `/metrics` scrapes cannot delay a request, a
//! health check or a reload; it serves at most [`MAX_CONNECTIONS`] connections at once
//! (the rest wait in the accept backlog). Every answer is built from
//! [`crate::control::ControlState::status`] and the control plane's steering calls; the
//! admin holds no state of its own but the readiness flag.
//!
//! Owns: the admin listener and its HTTP surface (routes, auth, JSON and metrics
//! rendering). Must not touch: the table or any clone directly (it goes through
//! `ControlState`), the request path.

mod json;
mod metrics;
mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;

use crate::control::ControlState;
use crate::error::StartError;
use crate::reload::Reloader;

/// Admin connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// What the admin API answers from: the control plane, the config file (if any), and
/// whether the balancer is ready.
pub struct Admin {
    control: Arc<ControlState>,
    reloader: Option<Arc<Reloader>>,
    ready: AtomicBool,
}

impl Admin {
    pub fn new(control: Arc<ControlState>, reloader: Option<Arc<Reloader>>) -> Arc<Admin> {
        Arc::new(Admin {
            control,
            reloader,
            ready: AtomicBool::new(false),
        })
    }

    /// `/ready` answers 200 from now on (listeners bound, first configuration loaded)…
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Relaxed);
    }

    /// …until this says otherwise (shutdown).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Relaxed)
    }

    fn config_path(&self) -> Option<PathBuf> {
        self.reloader.as_ref().map(|r| r.path().to_path_buf())
    }
}

/// The running admin listener. Dropping it stops it.
pub struct AdminServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl AdminServer {
    /// Bind `listen` (port 0 picks a free port) and serve `admin` on a thread of its own.
    pub fn start(listen: SocketAddr, admin: Arc<Admin>) -> Result<AdminServer, StartError> {
        let std_listener = std::net::TcpListener::bind(listen)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| StartError::Bind {
                address: listen,
                source,
            })?;
        let addr = std_listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                address: listen,
                source,
            })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(StartError::Thread)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("clonelb-admin".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(std_listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "admin listener failed");
                            return;
                        }
                    };
                    tokio::select! {
                        _ = serve(listener, addr, admin) => {}
                        _ = stopped => {}
                    }
                })
            })
            .map_err(StartError::Thread)?;
        Ok(AdminServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(listener: tokio::net::TcpListener, own: SocketAddr, admin: Arc<Admin>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // A slot first: beyond MAX_CONNECTIONS, connections wait in the kernel's backlog.
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let admin = Arc::clone(&admin);
        tokio::spawn(async move {
            let service = service_fn(move |req| routes::handle(req, Arc::clone(&admin), own));
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .keep_alive(true);
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "admin connection ended");
            }
            drop(permit);
        });
    }
}

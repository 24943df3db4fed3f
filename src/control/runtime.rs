//! The control runtime (one thread, one `current_thread` tokio runtime, away from the
//! workers) and the process's signal handlers.

use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::error::StartError;

/// The runtime of everything off the request path: health checks, the drain reaper, the
/// file watcher's reloads, signal handling. Stopped (and its thread joined) when dropped.
pub struct Runtime {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Runtime {
    pub fn start() -> Result<Runtime, StartError> {
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
        Ok(Runtime {
            handle,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Stop the runtime's tasks (the thread exits on its own).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Take over SIGHUP, SIGUSR1, SIGTERM and SIGINT for this process, on `rt`. Done by `clonelb run`
/// (and `demo`) before any listener is bound, so there is no moment when the port accepts
/// connections while a signal would still kill the process with its default action.
///
/// SIGHUP calls `on_hup`, SIGUSR1 `on_usr1` (reopen the access log). The first SIGTERM or SIGINT is sent on the returned channel
/// (graceful stop); a second one exits the process at once with status 1.
pub fn install_signals(
    rt: &tokio::runtime::Handle,
    on_hup: impl Fn() + Send + 'static,
    on_usr1: impl Fn() + Send + 'static,
) -> std::io::Result<mpsc::Receiver<()>> {
    let (tx, rx) = mpsc::channel();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // The handlers are registered here, synchronously, with `rt`'s signal driver.
        let _entered = rt.enter();
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut usr1 = signal(SignalKind::user_defined1())?;
        rt.spawn(async move {
            let mut stopping = false;
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                    _ = hup.recv() => {
                        on_hup();
                        continue;
                    }
                    _ = usr1.recv() => {
                        on_usr1();
                        continue;
                    }
                }
                if stopping {
                    tracing::warn!("second stop signal: exiting now");
                    std::process::exit(1);
                }
                stopping = true;
                let _ = tx.send(());
            }
        });
    }
    #[cfg(not(unix))]
    {
        let _ = (on_hup, on_usr1);
        rt.spawn(async move {
            let mut stopping = false;
            while tokio::signal::ctrl_c().await.is_ok() {
                if stopping {
                    std::process::exit(1);
                }
                stopping = true;
                let _ = tx.send(());
            }
        });
    }
    Ok(rx)
}

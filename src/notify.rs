//! The systemd notify protocol (`Type=notify`, see `deploy/systemd/clonelb.service`):
//! `READY=1` once `clonelb run` serves, `RELOADING=1` with `MONOTONIC_USEC` before a reload
//! and `READY=1` after it, `STOPPING=1` when a graceful stop starts, each with an optional
//! `STATUS=` line that `systemctl status` shows.
//!
//! Nothing is sent without `NOTIFY_SOCKET` (sd-notify returns at once). The variable is
//! left in the environment: every later message needs it. A failed send is logged once as
//! a warning and never stops anything; the balancer serves whether or not systemd hears it.
//!
//! A leaf: imports nothing from the crate. Only `clonelb run` calls it (never a balancer
//! embedded in tests or `clonelb demo`).

use std::sync::atomic::{AtomicBool, Ordering};

use sd_notify::NotifyState;

/// The service is up: its listeners are bound, or a reload has ended. `status` is shown by
/// `systemctl status` (e.g. `generation 3`, `reload failed: ...`).
pub fn ready(status: Option<&str>) {
    send(&[NotifyState::Ready], status);
}

/// A reload starts: `RELOADING=1` and `MONOTONIC_USEC=<now>` in one datagram (systemd 253+
/// ignores a `RELOADING=1` without the timestamp). Follow it with [`ready`].
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now], None),
        // Without a clock reading the message would be refused anyway; say why once.
        Err(e) => warn_once(&e),
    }
}

/// A graceful stop starts (SIGTERM or SIGINT).
pub fn stopping() {
    send(
        &[NotifyState::Stopping],
        Some("stopping: finishing requests in flight"),
    );
}

/// One datagram with `states`, then `STATUS=` (its first line only: the protocol is one
/// `KEY=VALUE` per line) when given.
fn send(states: &[NotifyState<'_>], status: Option<&str>) {
    let line = status.map(one_line);
    let mut all: Vec<NotifyState<'_>> = states.to_vec();
    if let Some(line) = &line {
        all.push(NotifyState::Status(line));
    }
    if let Err(e) = sd_notify::notify(&all) {
        warn_once(&e);
    }
}

/// The first line of `text`, each control character (a tab) made a space.
fn one_line(text: &str) -> String {
    text.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Log the first failure only: a socket that refuses one message refuses the next too, and
/// a warning on every reload would bury the log.
fn warn_once(e: &std::io::Error) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        let socket = std::env::var("NOTIFY_SOCKET").unwrap_or_default();
        tracing::warn!(
            error = %e,
            socket = %socket,
            "cannot notify systemd (NOTIFY_SOCKET); serving anyway, further failures are not logged"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_one_line_without_control_characters() {
        assert_eq!(one_line("generation 3"), "generation 3");
        assert_eq!(
            one_line("lb.toml:1:1: bad\tkey\nlb.toml:2:1: more"),
            "lb.toml:1:1: bad key"
        );
        assert_eq!(one_line(""), "");
    }
}

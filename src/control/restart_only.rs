//! The settings a reload cannot change (bound at start): a reload keeps their running
//! values and logs that they need a restart.

use std::net::SocketAddr;

use crate::config::{Choice, Config};

/// Listener addresses and `max_connections` are bound at start: a reload keeps the running
/// values and says so.
pub(super) fn keep_restart_only_settings(
    config: &mut Config,
    running: &Config,
    (bound_http, bound_https): (Option<SocketAddr>, Option<SocketAddr>),
    bound_admin: Option<SocketAddr>,
) {
    let listen_of = |c: &Config| c.admin.as_ref().and_then(|a| a.listen);
    if listen_of(config) != listen_of(running) {
        tracing::warn!(
            running = %show(bound_admin),
            configured = %show(listen_of(config)),
            "admin.listen cannot change without a restart; keeping the running admin listener"
        );
        match (&mut config.admin, &running.admin) {
            // The listener stays, and so does the token guarding it.
            (None, Some(_)) => config.admin = running.admin.clone(),
            (Some(_), None) => config.admin = None,
            (Some(new), Some(old)) => new.listen = old.listen,
            (None, None) => {}
        }
    }
    if config.listen.addresses() != running.listen.addresses() {
        tracing::warn!(
            running_http = %show(bound_http),
            running_https = %show(bound_https),
            configured_http = %show(config.listen.http),
            configured_https = %show(config.listen.https),
            "listen.http and listen.https cannot change without a restart; keeping the running listeners"
        );
        config.listen.http = running.listen.http;
        config.listen.https = running.listen.https;
    }
    if config.limits.max_connections != running.limits.max_connections {
        tracing::warn!(
            running = running.limits.max_connections,
            configured = config.limits.max_connections,
            "limits.max_connections cannot change without a restart; keeping the running limit"
        );
        config.limits.max_connections = running.limits.max_connections;
    }
    if config.log.format != running.log.format {
        tracing::warn!(
            running = running.log.format.as_str(),
            configured = config.log.format.as_str(),
            "log.format cannot change without a restart; keeping the running format"
        );
        config.log.format = running.log.format;
    }
}

/// A listener address for people: `127.0.0.1:8080`, or `none`.
fn show(address: Option<SocketAddr>) -> String {
    address.map_or_else(|| "none".to_string(), |a| a.to_string())
}

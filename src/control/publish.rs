//! Publishing: a new lb.toml ([`ControlState::publish`]), a rejected one
//! ([`ControlState::reject`]), and the table swap both a reload and a DNS answer go
//! through ([`ControlState::swap`]): build a table for the lb.toml clones and what the DNS
//! names resolved to, reusing the state of every clone whose address is unchanged (or that
//! drains and is added back), one atomic store, then drain what the new table no longer
//! has.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use tokio::time::Instant;

use super::{
    keep_restart_only_settings, ControlState, Draining, Inner, Inputs, Summary, LOGGED_NAMES,
};
use crate::access_log;
use crate::audit::job::Settings as AuditSettings;
use crate::backend::Backend;
use crate::config::Config;
use crate::error_pages::ErrorPages;
use crate::table::RoutingTable;

/// What one swap changed, by clone name.
pub(super) struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// Renamed or reweighted.
    pub changed: Vec<String>,
}

impl ControlState {
    /// Apply a new desired state: swap in a table for it, start draining what it no longer
    /// has, sync the health checkers and the resolver tasks, clear the last error. Logs
    /// one line naming what changed. Settings that need a restart keep their running
    /// values (logged). The DNS names' clones are those they last resolved to (a new name
    /// has none until its first answer): a reload never waits for DNS.
    pub fn publish(&self, inputs: Inputs) -> Summary {
        let mut inner = self.lock();
        let Inputs {
            mut config,
            tls,
            error_pages,
        } = inputs;
        // The running configuration, borrowed from the table (a 10,000-clone one is not
        // copied); released before the swap loads the table again.
        let old = self.table.load_full();
        let running = old.config();
        keep_restart_only_settings(&mut config, running, inner.listeners, inner.admin_listener);
        // A new certificate is used for new handshakes; open connections keep theirs. With
        // no https listener running there is nothing to give it to.
        if running.listen.https.is_some() {
            self.tls.store(tls);
        }
        drop(old);
        // Reopens the access log (every reload does, logrotate's convention). Before the
        // swap, so that once the new table turns the log on its thread exists.
        self.access.configure(access_log::Settings::of(&config.log));
        inner.dns.set_entries(&config);
        let changes = self.swap(&mut inner, &config, error_pages);
        let summary = Summary {
            generation: inner.generation + 1,
            added: changes.added,
            removed: changes.removed,
            changed: changes.changed,
        };
        tracing::info!(
            generation = summary.generation,
            added = %name_list(&summary.added),
            removed = %name_list(&summary.removed),
            changed = %name_list(&summary.changed),
            "reloaded"
        );
        self.deploy.configure(&config, &self.table);
        self.audit
            .configure(AuditSettings::of(&config), Arc::clone(&self.table));
        inner.generation = summary.generation;
        inner.loaded_at = SystemTime::now();
        inner.last_error = None;
        inner.dns.start_tasks(Weak::clone(&self.me), &self.rt);
        self.process.count_reload(true);
        summary
    }

    /// A new desired state could not be had (unreadable or invalid file): keep serving the
    /// running one, log the problems and keep them as the last error until the next
    /// success.
    pub fn reject(&self, lines: Vec<String>) {
        let mut inner = self.lock();
        tracing::error!(
            generation = inner.generation,
            "reload failed; still serving the previous configuration"
        );
        for l in &lines {
            tracing::error!("{l}");
        }
        inner.last_error = Some(lines);
        self.process.count_reload(false);
        // A reload, even a rejected one, reopens the access log (logrotate's convention).
        self.access.reopen();
    }

    /// Swap in a table for `config` with lb.toml's clones and the DNS names' current ones;
    /// drain the clones it no longer has; sync the health checkers.
    pub(super) fn swap(
        &self,
        inner: &mut Inner,
        config: &Config,
        error_pages: Arc<ErrorPages>,
    ) -> Changes {
        let old = self.table.load_full();
        let clones = inner.dns.clones(config);
        // A clone coming back while it drains gets its state (and connections) back. Every
        // lookup here is by hash, not a scan: a swap is linear in the clones.
        let draining: HashMap<SocketAddr, &Backend> = inner
            .draining
            .iter()
            .map(|d| (d.backend.address, &d.backend))
            .collect();
        let new = RoutingTable::build_reusing(config, &clones, |addr| {
            old.find(addr)
                .or_else(|| draining.get(&addr).copied())
                .map(|b| Arc::clone(&b.state))
        })
        .with_error_pages(error_pages)
        .with_gate(Arc::clone(self.deploy.gate()));
        drop(draining);
        let mut added = Vec::new();
        let mut changed = Vec::new();
        for b in new.backends() {
            match old.find(b.address) {
                None => added.push(b.name.to_string()),
                Some(o) if o.name != b.name || o.weight != b.weight => {
                    changed.push(b.name.to_string())
                }
                Some(_) => {}
            }
        }
        inner.draining.retain(|d| {
            let is_back = new.find(d.backend.address).is_some();
            if is_back {
                d.backend.state.set_draining(false);
            }
            !is_back
        });
        let removed: Vec<Backend> = old
            .backends()
            .iter()
            .filter(|b| new.find(b.address).is_none())
            .cloned()
            .collect();
        let new = Arc::new(new);
        let drain_timeout = new.proxy().drain_timeout;
        self.table.store(new);
        if config
            .health
            .as_ref()
            .and_then(|h| h.version_header.as_ref())
            .is_none()
        {
            // No checker reads versions any more: forget the last ones reported.
            for b in self.table.load().backends() {
                b.state.clear_version();
            }
        }
        let deadline = Instant::now() + drain_timeout;
        for b in &removed {
            self.audit.forget(b.address);
            b.state.set_draining(true);
            tracing::info!(clone = %b.name, address = %b.address, in_flight = b.state.in_flight(), "clone removed; draining");
            inner.draining.push(Draining {
                backend: b.clone(),
                deadline,
            });
        }
        inner.remember_names(&self.table.load());
        self.sync_health(inner);
        Changes {
            added,
            removed: removed.iter().map(|b| b.name.to_string()).collect(),
            changed,
        }
    }
}

/// `a,b,c`, at most [`LOGGED_NAMES`] names, then ` and N more`; empty for none.
pub(super) fn name_list(names: &[String]) -> String {
    let mut s = names
        .iter()
        .take(LOGGED_NAMES)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(",");
    if names.len() > LOGGED_NAMES {
        s.push_str(&format!(" and {} more", names.len() - LOGGED_NAMES));
    }
    s
}

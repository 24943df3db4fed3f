//! Clones from DNS: one resolver task per `[[backend]]` name on the control runtime, and
//! what each name resolved to last. A lookup's answer reaches [`ControlState::dns_answer`],
//! which publishes the name's new set through the same table swap as a reload (clones
//! matched by address keep their state; those that left the answers drain).
//!
//! The rules: a failed lookup (timeout, SERVFAIL, NXDOMAIN) changes nothing and is logged
//! once while it lasts; an empty answer (NOERROR, no records) is a real answer and drains
//! the name's clones; a name that never resolved has no clones. Two sources giving the
//! same address: the first in lb.toml's order wins (a warning, once).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use tokio::task::AbortHandle;

use super::publish::name_list;
use super::ControlState;
use crate::config::{Config, DnsBackendConfig, DnsConfig, DnsLookup};
use crate::dns::resolve::Resolver;
use crate::dns::{next_lookup, Answer, Found, LookupResult};
use crate::table::CloneSpec;

/// What is known of one DNS name of lb.toml.
struct NameState {
    entry: DnsBackendConfig,
    source: Arc<str>,
    /// The clones of the last answer; `None` until the name first resolves.
    set: Option<Vec<Found>>,
    /// When the answer `set` holds arrived (it is refreshed by every successful lookup).
    resolved_at: Option<SystemTime>,
    last_lookup: Option<SystemTime>,
    last_result: Option<LookupResult>,
    last_error: Option<String>,
    /// In a run of failed lookups (logged once at its start).
    failing: bool,
    /// Lookups by result, in [`LookupResult::ALL`]'s order.
    lookups: [u64; 5],
    /// The task resolving it, and its number (an answer from an older task is dropped).
    task: Option<(u64, AbortHandle)>,
}

/// One DNS name as `/status` shows it (`dns[]`).
#[derive(Debug, Clone)]
pub struct DnsNameStatus {
    /// The name as written (the clones' `source`).
    pub name: Arc<str>,
    /// `"address"` (A/AAAA) or `"srv"`.
    pub kind: &'static str,
    /// The last lookup's result; `None` before the first one ends.
    pub result: Option<LookupResult>,
    /// Why the last lookup failed.
    pub error: Option<String>,
    /// Clones of the last answer (0 before the first).
    pub clones: usize,
    pub resolved_at: Option<SystemTime>,
    pub last_lookup: Option<SystemTime>,
    /// Lookups by result, in [`LookupResult::ALL`]'s order (`clonelb_dns_lookups_total`).
    pub lookups: [u64; 5],
}

/// Every DNS name of the running lb.toml.
#[derive(Default)]
pub(super) struct Dns {
    /// In lb.toml's order.
    names: Vec<NameState>,
    /// The `[dns]` the tasks run with.
    config: Option<DnsConfig>,
    resolver: Option<Resolver>,
    /// Addresses (and names) a later source also gave, already warned about.
    warned: HashSet<(Arc<str>, SocketAddr)>,
    next_task: u64,
}

impl Dns {
    /// Take the DNS entries of `config`: a name already there keeps what it resolved to
    /// (and its task); a new one starts with nothing. Tasks of names no longer there are
    /// stopped; all are restarted when `[dns]` changed (they keep their sets).
    pub(super) fn set_entries(&mut self, config: &Config) {
        let mut old: HashMap<DnsLookup, NameState> = self
            .names
            .drain(..)
            .map(|n| (n.entry.lookup.clone(), n))
            .collect();
        let restart = self.config.as_ref() != Some(&config.dns);
        for entry in &config.dns_backends {
            let n = match old.remove(&entry.lookup) {
                Some(mut n) => {
                    n.entry = entry.clone();
                    n
                }
                None => NameState {
                    source: Arc::from(entry.lookup.name()),
                    entry: entry.clone(),
                    set: None,
                    resolved_at: None,
                    last_lookup: None,
                    last_result: None,
                    last_error: None,
                    failing: false,
                    lookups: [0; 5],
                    task: None,
                },
            };
            self.names.push(n);
        }
        for gone in old.into_values() {
            if let Some((_, task)) = gone.task {
                task.abort();
            }
        }
        if restart {
            for n in &mut self.names {
                if let Some((_, task)) = n.task.take() {
                    task.abort();
                }
            }
            self.config = Some(config.dns);
            self.resolver = None;
        }
    }

    /// Start a task for every name without one (after [`Dns::set_entries`]).
    pub(super) fn start_tasks(&mut self, state: Weak<ControlState>, rt: &tokio::runtime::Handle) {
        let Some(config) = self.config else { return };
        if self.names.iter().all(|n| n.task.is_some()) {
            return;
        }
        if self.resolver.is_none() {
            // Building reads /etc/resolv.conf (without `resolver`); lookups need the runtime.
            let _enter = rt.enter();
            match Resolver::new(&config) {
                Ok(r) => self.resolver = Some(r),
                Err(error) => {
                    tracing::error!(%error, "no DNS resolver: names in lb.toml give no clones");
                    return;
                }
            }
        }
        let Some(resolver) = &self.resolver else {
            return;
        };
        for n in self.names.iter_mut().filter(|n| n.task.is_none()) {
            self.next_task += 1;
            let id = self.next_task;
            let task = rt.spawn(resolve_forever(
                Weak::clone(&state),
                resolver.clone(),
                n.entry.clone(),
                config,
                id,
            ));
            n.task = Some((id, task.abort_handle()));
        }
    }

    /// Stop every task (at shutdown).
    pub(super) fn stop(&mut self) {
        for n in &mut self.names {
            if let Some((_, task)) = n.task.take() {
                task.abort();
            }
        }
    }

    /// The table's clones: lb.toml's, with each DNS name's inserted where it is written.
    /// An address (or a clone name) already given by an earlier source is skipped and
    /// warned about once.
    pub(super) fn clones(&mut self, config: &Config) -> Vec<CloneSpec> {
        // lb.toml's order: a name's clones go before the lb.toml clone written after it.
        let mut candidates: Vec<CloneSpec> = Vec::with_capacity(config.backends.len());
        let mut names = self.names.iter().peekable();
        for (i, s) in CloneSpec::of_config(config).into_iter().enumerate() {
            while let Some(n) = names.next_if(|n| n.entry.after_static <= i) {
                candidates.extend(n.clone_specs());
            }
            candidates.push(s);
        }
        for n in names {
            candidates.extend(n.clone_specs());
        }
        let mut taken_addr: HashSet<SocketAddr> = HashSet::with_capacity(candidates.len());
        let mut taken_name: HashSet<Arc<str>> = HashSet::with_capacity(candidates.len());
        let mut warned = HashSet::new();
        let mut merged: Vec<CloneSpec> = Vec::with_capacity(candidates.len());
        for c in candidates {
            if taken_addr.contains(&c.address) || taken_name.contains(&c.name) {
                let key = (Arc::clone(&c.name), c.address);
                if !self.warned.contains(&key) {
                    tracing::warn!(
                        clone = %c.name,
                        address = %c.address,
                        source = c.source.as_deref().unwrap_or("lb.toml"),
                        "skipped: already a clone with this address or name (the first in lb.toml's order wins)"
                    );
                }
                warned.insert(key);
                continue;
            }
            taken_addr.insert(c.address);
            taken_name.insert(Arc::clone(&c.name));
            merged.push(c);
        }
        self.warned = warned;
        merged
    }

    /// The `/status` view of every name, in lb.toml's order.
    pub(super) fn status(&self) -> Vec<DnsNameStatus> {
        self.names
            .iter()
            .map(|n| DnsNameStatus {
                name: Arc::clone(&n.source),
                kind: n.entry.lookup.kind(),
                result: n.last_result,
                error: n.last_error.clone(),
                clones: n.set.as_ref().map_or(0, Vec::len),
                resolved_at: n.resolved_at,
                last_lookup: n.last_lookup,
                lookups: n.lookups,
            })
            .collect()
    }

    /// When the set a clone of `source` came from was resolved.
    pub(super) fn resolved_at(&self, source: &str) -> Option<SystemTime> {
        self.names
            .iter()
            .find(|n| &*n.source == source)
            .and_then(|n| n.resolved_at)
    }

    /// Record one lookup's answer for the name task `task` resolves. Returns whether its
    /// set of clones changed (the table must be rebuilt).
    fn record(&mut self, task: u64, answer: Answer) -> Option<bool> {
        let n = self
            .names
            .iter_mut()
            .find(|n| n.task.as_ref().is_some_and(|(id, _)| *id == task))?;
        let now = SystemTime::now();
        let result = answer.result();
        n.lookups[result.index()] += 1;
        n.last_lookup = Some(now);
        n.last_result = Some(result);
        match answer {
            Answer::Failed { error, .. } => {
                if !n.failing {
                    n.failing = true;
                    match &n.set {
                        Some(set) => tracing::warn!(
                            name = %n.source, result = result.as_str(), %error, clones = set.len(),
                            "DNS lookup failed; keeping the last set of clones until it answers"
                        ),
                        None => tracing::warn!(
                            name = %n.source, result = result.as_str(), %error,
                            "DNS lookup failed; the name has not resolved yet: no clones from it"
                        ),
                    }
                }
                n.last_error = Some(error);
                Some(false)
            }
            Answer::Clones { clones, .. } => {
                if n.failing {
                    n.failing = false;
                    tracing::info!(name = %n.source, clones = clones.len(), "DNS lookup ok again");
                }
                n.last_error = None;
                n.resolved_at = Some(now);
                if n.set.as_ref() == Some(&clones) {
                    return Some(false);
                }
                if clones.is_empty() {
                    tracing::info!(
                        name = %n.source,
                        "DNS answer is empty (NOERROR, no records): the name's clones drain"
                    );
                }
                n.set = Some(clones);
                Some(true)
            }
        }
    }
}

impl NameState {
    /// Its clones as the table takes them: named `NAME/IP:PORT`.
    fn clone_specs(&self) -> Vec<CloneSpec> {
        let Some(set) = &self.set else {
            return Vec::new();
        };
        let weight_of = |f: &Found| match self.entry.lookup {
            DnsLookup::Host { .. } => self.entry.weight,
            DnsLookup::Srv { .. } => f.weight,
        };
        set.iter()
            .map(|f| CloneSpec {
                name: Arc::from(format!("{}/{}", self.entry.name, f.address)),
                address: f.address,
                weight: weight_of(f),
                source: Some(Arc::clone(&self.source)),
            })
            .collect()
    }
}

/// One name's task: look it up, hand the answer over, wait until the next lookup is due
/// (`refresh`, or the records' TTL when shorter, never under a second). Ends when the
/// balancer is gone or the task is aborted (name removed, `[dns]` changed, shutdown).
async fn resolve_forever(
    state: Weak<ControlState>,
    resolver: Resolver,
    entry: DnsBackendConfig,
    config: DnsConfig,
    task: u64,
) {
    loop {
        let answer = resolver.resolve(&entry.lookup, entry.weight).await;
        let wait = next_lookup(config.refresh, &answer);
        let Some(state) = state.upgrade() else { return };
        state.dns_answer(task, answer);
        drop(state);
        tokio::time::sleep(wait).await;
    }
}

impl ControlState {
    /// A lookup's answer: recorded, and when the name's clones changed, published (the
    /// same swap as a reload: kept clones keep their state, those that left drain).
    fn dns_answer(&self, task: u64, answer: Answer) {
        let mut inner = self.lock();
        if inner.dns.record(task, answer) != Some(true) {
            return;
        }
        let old = self.table.load_full();
        let changes = self.swap(&mut inner, old.config(), old.error_pages_shared());
        drop(inner);
        tracing::info!(
            added = %name_list(&changes.added),
            removed = %name_list(&changes.removed),
            changed = %name_list(&changes.changed),
            "DNS answer changed the clones"
        );
        self.deploy.observe(&self.table);
    }
}

#[cfg(test)]
mod tests;

//! The routing table: one immutable snapshot of the clones, their strategy and the proxy
//! settings, published through one `ArcSwap` so a request sees either all of a reload or
//! none of it.
//!
//! [`RoutingTable::build`] reuses each unchanged clone's `Arc<BackendState>` (keyed by
//! address), so health, in-flight counts, counters and idle connections survive a reload.
//!
//! Owns: the snapshot's shape and the pick over it. Must not touch: the `ArcSwap` (only
//! the control plane stores into it), per-request state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rand::Rng;

use crate::backend::{Backend, BackendState};
use crate::config::{AccessFormat, Config, LimitsConfig, ProxyConfig};
use crate::deploy::{DeployGate, VersionId};
use crate::error_pages::ErrorPages;
use crate::strategy::{Candidates, Picker, Strategy};

/// What every thread reads: the current table, swapped whole by reload.
pub type SharedTable = ArcSwap<RoutingTable>;

#[derive(Debug)]
pub struct RoutingTable {
    backends: Box<[Backend]>,
    /// Each clone's index in `backends`, by address: [`RoutingTable::find`] is what a
    /// publish asks for every clone of the old and the new table, so a linear scan there
    /// made a reload quadratic in the number of clones.
    by_address: HashMap<SocketAddr, usize>,
    picker: Picker,
    policy: Policy,
    config: Arc<Config>,
    /// `[error_pages]`, read when the config was loaded (none by default).
    error_pages: Arc<ErrorPages>,
    /// The deploy gate: which version new requests go to (shared by every table; its own
    /// until [`RoutingTable::with_gate`], which routes to every up clone).
    gate: Arc<DeployGate>,
}

/// One clone a table is built with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneSpec {
    pub name: Arc<str>,
    pub address: SocketAddr,
    pub weight: u32,
    /// The DNS name it was resolved from; `None` for a clone written in lb.toml.
    pub source: Option<Arc<str>>,
}

impl CloneSpec {
    /// The clones written in lb.toml, in its order.
    pub fn of_config(config: &Config) -> Vec<CloneSpec> {
        config
            .backends
            .iter()
            .map(|b| CloneSpec {
                name: Arc::from(b.name.as_str()),
                address: b.address,
                weight: b.weight,
                source: None,
            })
            .collect()
    }
}

/// What one request needs to know about failures, copied out of the table per request.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub proxy: ProxyConfig,
    pub limits: LimitsConfig,
    /// Connection failures in a row that eject a clone.
    pub eject_after: u32,
    pub eject_on_5xx: bool,
    /// Whether active checks run (else ejected clones come back after `ejection_time`).
    pub active_checks: bool,
    /// `[log] access` is on: the request keeps what its access line needs.
    pub access_log: bool,
    /// `[audit] sample` (0: no replays, the one branch the audit costs when off).
    pub audit_sample: f64,
    /// `[audit] max_response`.
    pub audit_max_response: u64,
}

impl RoutingTable {
    /// Build a table for `config`, carrying over the state of every clone whose address
    /// `previous` already had.
    pub fn build(config: &Config, previous: Option<&RoutingTable>) -> RoutingTable {
        Self::build_reusing(config, &CloneSpec::of_config(config), |a| {
            previous
                .and_then(|p| p.find(a))
                .map(|b| Arc::clone(&b.state))
        })
    }

    /// Build a table for `config` and `clones` (the lb.toml clones and those its DNS names
    /// resolved to, in that order: [`CloneSpec::of_config`] for lb.toml's alone), taking
    /// each clone's state from `reuse` (by address) when it has one, so health, in-flight
    /// counts, counters and pooled connections carry over.
    pub fn build_reusing(
        config: &Config,
        clones: &[CloneSpec],
        reuse: impl Fn(SocketAddr) -> Option<Arc<BackendState>>,
    ) -> RoutingTable {
        let backends: Box<[Backend]> = clones
            .iter()
            .map(|c| {
                let state = reuse(c.address).unwrap_or_else(|| new_state(config, c.address));
                state.set_name(&c.name);
                Backend {
                    name: Arc::clone(&c.name),
                    address: c.address,
                    weight: c.weight,
                    source: c.source.clone(),
                    state,
                }
            })
            .collect();
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        let mut by_address = HashMap::with_capacity(backends.len());
        for (i, b) in backends.iter().enumerate() {
            by_address.entry(b.address).or_insert(i);
        }
        RoutingTable {
            picker: Picker::new(config.balancer.strategy, &weights),
            backends,
            by_address,
            policy: Policy {
                proxy: config.proxy,
                limits: config.limits,
                eject_after: config.ejection_threshold(),
                eject_on_5xx: config.eject_on_5xx(),
                active_checks: config.health.is_some(),
                access_log: config.log.access != AccessFormat::Off,
                audit_sample: config.audit.as_ref().map_or(0.0, |a| a.sample),
                audit_max_response: config.audit.as_ref().map_or(0, |a| a.max_response),
            },
            config: Arc::new(config.clone()),
            error_pages: Arc::default(),
            gate: Arc::default(),
        }
    }

    /// The same table behind `gate` (the control plane's, shared by every table).
    pub fn with_gate(mut self, gate: Arc<DeployGate>) -> RoutingTable {
        self.gate = gate;
        self
    }

    /// The same table serving `pages` for clonelb's own answers.
    pub fn with_error_pages(mut self, pages: Arc<ErrorPages>) -> RoutingTable {
        self.error_pages = pages;
        self
    }

    /// The pages for clonelb's own answers.
    /// The table's error pages, shared (a table built from this one keeps them).
    pub fn error_pages_shared(&self) -> Arc<ErrorPages> {
        Arc::clone(&self.error_pages)
    }

    pub fn error_pages(&self) -> &ErrorPages {
        &self.error_pages
    }

    /// A clone for a retry: available and not one of `tried`. Tries the strategy first (so
    /// retries follow it too), then any available clone not tried yet (of the active
    /// version, else of the fallback one, in atomic mode).
    pub fn pick_excluding<R: Rng + ?Sized>(
        &self,
        rng: &mut R,
        tried: &[SocketAddr],
    ) -> Option<&Backend> {
        for _ in 0..self.backends.len() {
            let b = self.pick(rng)?;
            if !tried.contains(&b.address) {
                return Some(b);
            }
        }
        let untried = |version: VersionId| {
            self.backends.iter().find(move |b| {
                b.is_available()
                    && (version == 0 || b.state.version() == version)
                    && !tried.contains(&b.address)
            })
        };
        let active = self.gate.active();
        untried(active).or_else(|| match self.gate.fallback() {
            0 => None,
            fallback if active != 0 => untried(fallback),
            _ => None,
        })
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The clone for the next request, or `None` when none is available. No lock, no
    /// allocation. In atomic deploy mode only clones of the gate's active version are
    /// available (and, when none of them is, those of its fallback version); otherwise
    /// this costs one atomic load more than the strategy.
    #[inline]
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<&Backend> {
        let active = self.gate.active();
        let i = if active == 0 {
            self.picker.pick(&self.backends[..], rng)
        } else {
            self.pick_version(active, rng)
        };
        i.and_then(|i| self.backends.get(i))
    }

    /// Atomic mode: a clone of `active`, else of the fallback version.
    fn pick_version<R: Rng + ?Sized>(&self, active: VersionId, rng: &mut R) -> Option<usize> {
        let of = |version| OfVersion {
            clones: &self.backends,
            version,
        };
        self.picker.pick(&of(active), rng).or_else(|| {
            let fallback = self.gate.fallback();
            if fallback == 0 {
                return None;
            }
            self.picker.pick(&of(fallback), rng)
        })
    }

    /// The deploy gate this table routes by.
    pub fn gate(&self) -> &Arc<DeployGate> {
        &self.gate
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The clone at `address` (addresses are unique in a table).
    pub fn find(&self, address: SocketAddr) -> Option<&Backend> {
        self.by_address
            .get(&address)
            .and_then(|&i| self.backends.get(i))
    }

    pub fn proxy(&self) -> &ProxyConfig {
        &self.policy.proxy
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn picker(&self) -> &Picker {
        &self.picker
    }
}

/// The real table's clones as a strategy sees them: availability and load are the clones'
/// atomics (the strategy module knows nothing of clones).
impl Candidates for [Backend] {
    #[inline]
    fn count(&self) -> usize {
        self.len()
    }
    #[inline]
    fn available(&self, i: usize) -> bool {
        self[i].is_available()
    }
    #[inline]
    fn load(&self, i: usize) -> usize {
        self[i].state.in_flight()
    }
    #[inline]
    fn weight(&self, i: usize) -> u32 {
        self[i].weight
    }
}

/// The clones of one version as a strategy sees them (atomic deploy mode): a clone of
/// another version, or of none known, is not available.
struct OfVersion<'a> {
    clones: &'a [Backend],
    version: VersionId,
}

impl Candidates for OfVersion<'_> {
    #[inline]
    fn count(&self) -> usize {
        self.clones.len()
    }
    #[inline]
    fn available(&self, i: usize) -> bool {
        let b = &self.clones[i];
        b.is_available() && b.state.version() == self.version
    }
    #[inline]
    fn load(&self, i: usize) -> usize {
        self.clones[i].state.in_flight()
    }
    #[inline]
    fn weight(&self, i: usize) -> u32 {
        self.clones[i].weight
    }
}

/// A clone seen for the first time: up (optimistic), or down until it passes
/// `healthy_threshold` checks when `[health] start_unhealthy = true`.
fn new_state(config: &Config, address: SocketAddr) -> Arc<BackendState> {
    let state = BackendState::new(address);
    if config.health.as_ref().is_some_and(|h| h.start_unhealthy) {
        state.set_down(true);
    }
    Arc::new(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn config(backends: &[&str]) -> Config {
        let mut src = String::from("[listen]\nhttp = \"127.0.0.1:1\"\n");
        for b in backends {
            src.push_str(&format!("[[backend]]\naddress = \"{b}\"\n"));
        }
        parse("t", &src).unwrap().config
    }

    #[test]
    fn state_carries_over_by_address() {
        let t1 = RoutingTable::build(&config(&["127.0.0.1:1", "127.0.0.1:2"]), None);
        t1.backends()[0].state.set_down(true);
        let _g = t1.backends()[1].state.acquire();
        let t2 = RoutingTable::build(
            &config(&["127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:1"]),
            Some(&t1),
        );
        let one = t2.find("127.0.0.1:1".parse().unwrap()).unwrap();
        let two = t2.find("127.0.0.1:2".parse().unwrap()).unwrap();
        let three = t2.find("127.0.0.1:3".parse().unwrap()).unwrap();
        assert!(Arc::ptr_eq(&one.state, &t1.backends()[0].state));
        assert!(one.state.is_down());
        assert_eq!(two.state.in_flight(), 1);
        assert!(three.state.is_available() && three.state.in_flight() == 0);
    }
}

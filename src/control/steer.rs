//! Steering one clone by name (the admin API's disable, enable and wait-drained): the
//! disabled mark lives in the clone's `BackendState`, so it survives reloads that keep the
//! clone; nothing here touches the table's shape.

use tokio::time::Instant;

use super::{CloneStatus, ControlState};

/// How far a clone is from being safe to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// No table has had a clone of that name since start.
    NeverSeen,
    /// In rotation: it will not drain by itself.
    Enabled,
    /// Disabled or draining, with this many requests (or WebSocket tunnels) in flight.
    Busy(usize),
    /// Disabled or draining with nothing in flight, or gone from the balancer.
    Drained,
}

impl ControlState {
    /// Ops take the clone named `name` out of rotation (`true`) or put it back. The mark
    /// lives with the clone's state, so it survives reloads that keep the clone. Returns
    /// the clone's status, or `None` when the table has no clone of that name.
    pub fn set_disabled(&self, name: &str, disabled: bool) -> Option<CloneStatus> {
        let table = self.table.load();
        let b = table.backends().iter().find(|b| &*b.name == name)?;
        if b.state.is_disabled() != disabled {
            if !disabled {
                // Its code may have changed while it was out: no version until its next
                // check, which runs now. A redeployed clone is never routed under the
                // version it had before.
                b.state.clear_version();
            }
            b.state.set_disabled(disabled);
            if !disabled {
                self.lock().health.check_now(b.address);
                self.audit.reset(b.address);
            }
            self.deploy.ring();
            tracing::info!(
                clone = %b.name,
                address = %b.address,
                in_flight = b.state.in_flight(),
                "{}",
                if disabled { "clone disabled" } else { "clone enabled" }
            );
        }
        let history = self.history_lock();
        Some(CloneStatus::of(
            &b.name,
            b.weight,
            &b.state,
            false,
            &history,
            (&**self.deploy.versions(), self.deploy.gate().active()),
            self.audit_lock().status_of(b.address),
        ))
    }

    /// Whether the clone named `name` is out of rotation and idle (see [`Drain`]).
    pub fn drain_state(&self, name: &str) -> Drain {
        let inner = self.lock();
        let table = self.table.load();
        let found = table
            .backends()
            .iter()
            .chain(inner.draining.iter().map(|d| &d.backend))
            .find(|b| &*b.name == name);
        match found {
            Some(b) if b.state.is_disabled() || b.state.is_draining() => {
                match b.state.in_flight() {
                    0 => Drain::Drained,
                    n => Drain::Busy(n),
                }
            }
            Some(_) => Drain::Enabled,
            None if inner.seen.contains(name) => Drain::Drained,
            None => Drain::NeverSeen,
        }
    }

    /// Drop draining clones that are idle, or whose drain_timeout passed.
    pub(super) fn reap_drained(&self) {
        let mut inner = self.lock();
        if inner.draining.is_empty() {
            return;
        }
        let now = Instant::now();
        let before = inner.draining.len();
        inner.draining.retain(|d| {
            // Requests (and WebSocket tunnels) still on the clone: what a cut would end.
            let in_flight = d.backend.state.in_flight();
            if in_flight == 0 {
                tracing::info!(clone = %d.backend.name, address = %d.backend.address, "clone drained and dropped");
                return false;
            }
            if now >= d.deadline {
                tracing::warn!(
                    clone = %d.backend.name,
                    address = %d.backend.address,
                    cut = in_flight,
                    "drain_timeout passed; cutting the requests still in flight"
                );
                d.backend.state.cut_connections();
                return false;
            }
            true
        });
        if inner.draining.len() != before {
            self.sync_health(&mut inner);
        }
    }
}

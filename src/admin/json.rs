//! `/status` as JSON. Field names are a contract: later versions add fields, never rename.

use std::path::PathBuf;
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::config::Choice;
use crate::control::{CloneStatus, DeployStatus, Status};

/// RFC 3339, UTC, whole seconds: `2026-12-03T10:00:00Z`.
pub(super) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(super) fn status(s: &Status, path: Option<PathBuf>) -> Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "config": {
            "path": path.map(|p| p.display().to_string()),
            "generation": s.generation,
            "loaded_at": rfc3339(s.loaded_at),
            "last_error": s.last_error,
        },
        "strategy": s.strategy.as_str(),
        "backends": s.backends.iter().map(clone_entry).collect::<Vec<_>>(),
        "deploy": deploy(&s.deploy),
        "audit": audit(&s.audit),
        "dns": s.dns.iter().map(|d| json!({
            "name": &*d.name,
            "type": d.kind,
            "result": d.result.map(|r| r.as_str()),
            "error": d.error,
            "clones": d.clones,
            "resolved_at": d.resolved_at.map(rfc3339),
            "last_lookup": d.last_lookup.map(rfc3339),
        })).collect::<Vec<_>>(),
    })
}

/// The `audit` object of `/status` (`null` without `[audit]`).
fn audit(a: &crate::audit::task::AuditSnapshot) -> Value {
    if !a.enabled {
        return Value::Null;
    }
    let by_reason: serde_json::Map<String, Value> = crate::audit::job::Skip::ALL
        .iter()
        .map(|r| (r.as_str().to_string(), json!(a.skipped(*r))))
        .collect();
    json!({
        "checked": a.checked(),
        "skipped": a.skipped_total(),
        "skipped_by_reason": by_reason,
        "mismatches": a.mismatches(),
        "odd_clone": a.odd_clone(),
        "recent": a.verdicts.recent.iter().map(|m| json!({
            "path": &*m.path,
            "served": &*m.served.name,
            "peer": &*m.peer.name,
            "difference": m.difference.to_string(),
        })).collect::<Vec<_>>(),
    })
}

/// The `deploy` object of `/status` (also the answer to a pin or an unpin).
pub(super) fn deploy(d: &DeployStatus) -> Value {
    let versions: serde_json::Map<String, Value> = d
        .versions
        .iter()
        .map(|(v, c)| (v.to_string(), json!({"up": c.up, "total": c.total})))
        .collect();
    json!({
        "active": d.active.as_deref(),
        "versions": versions,
        "mode": d.mode.as_str(),
        "cutover_at": d.cutover_at.to_string(),
        "pinned": d.pinned.as_deref(),
        "fallback": d.fallback.as_ref().map(|f| json!({
            "from": &*f.from,
            "since": rfc3339(f.since),
        })),
        "fallbacks_total": d.fallbacks_total,
        "skew": d.skew,
    })
}

/// One clone, as `/status` lists it and as disable/enable answer.
pub(super) fn clone_entry(c: &CloneStatus) -> Value {
    json!({
        "name": &*c.name,
        "address": c.address.to_string(),
        "weight": c.weight,
        "state": c.state.as_str(),
        "version": c.version.as_deref(),
        // Where it comes from: "lb.toml", or the DNS name it was resolved from, and when.
        "source": c.source.as_deref().unwrap_or("lb.toml"),
        "resolved_at": c.resolved_at.map(rfc3339),
        "in_flight": c.in_flight,
        "requests_total": c.counters.requests,
        "failures_total": c.counters.failures,
        "last_check": c.last_check.as_ref().map(|l| json!({
            "at": rfc3339(l.at),
            "ok": l.ok,
            "detail": l.detail,
        })),
        "last_minute": {
            "requests": c.last_minute.requests,
            "errors": c.last_minute.errors,
            "p50_ms": c.last_minute.p50_ms,
            "p99_ms": c.last_minute.p99_ms,
        },
        // The peer comparison (`[audit]`): null, or the metric it is markedly worse on.
        "outlier": c.outlier.as_ref().map(|o| json!({
            "metric": o.metric,
            "value": o.value,
            "pool_median": o.pool_median,
            "ejected": o.ejected,
        })),
        // The last minute second by second, oldest first (the status page's charts).
        "history": c.history.iter().map(|h| json!({
            "t": rfc3339(h.t),
            "rps": h.rps,
            "p99_ms": h.p99_ms,
        })).collect::<Vec<_>>(),
    })
}

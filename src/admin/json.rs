//! `/status` as JSON. Field names are a contract: later versions add fields, never rename.

use std::path::PathBuf;
use std::time::SystemTime;

use serde_json::{json, Value};

use crate::control::{CloneStatus, Status};

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
    })
}

/// One clone, as `/status` lists it and as disable/enable answer.
pub(super) fn clone_entry(c: &CloneStatus) -> Value {
    json!({
        "name": &*c.name,
        "address": c.address.to_string(),
        "weight": c.weight,
        "state": c.state.as_str(),
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
        // The last minute second by second, oldest first (the status page's charts).
        "history": c.history.iter().map(|h| json!({
            "t": rfc3339(h.t),
            "rps": h.rps,
            "p99_ms": h.p99_ms,
        })).collect::<Vec<_>>(),
    })
}

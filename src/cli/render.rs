//! The admin API's JSON answers as the command line reads them, and how they are printed.
//!
//! Every field is `#[serde(default)]` and unknown fields are ignored: later versions of the
//! admin API add fields (never rename them), and an older `clonelb` must still read them.
//! Pure: no I/O; the current time is a parameter.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

/// `GET /status`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Status {
    pub version: String,
    pub config: ConfigStatus,
    pub strategy: String,
    pub backends: Vec<Backend>,
    pub dns: Vec<DnsName>,
}

/// One DNS name of lb.toml (`dns` in `/status`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct DnsName {
    pub name: String,
    pub result: Option<String>,
    pub error: Option<String>,
    pub clones: u64,
    pub resolved_at: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ConfigStatus {
    pub path: Option<String>,
    pub generation: u64,
    pub loaded_at: Option<String>,
    pub last_error: Option<Vec<String>>,
}

/// One clone: an entry of `/status`, and the answer to disable and enable.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Backend {
    pub name: String,
    pub address: String,
    pub weight: u32,
    pub state: String,
    pub in_flight: u64,
    pub requests_total: u64,
    pub failures_total: u64,
    pub last_check: Option<LastCheck>,
    pub last_minute: LastMinute,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct LastCheck {
    pub at: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct LastMinute {
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The `deploy` object: of `/status`, and the answer to a pin or an unpin.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Deploy {
    pub active: Option<String>,
    pub mode: String,
    pub pinned: Option<String>,
    pub fallback: Option<DeployFallback>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct DeployFallback {
    pub from: String,
    pub since: String,
}

/// `POST /reload`: 200.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Reloaded {
    pub generation: u64,
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

/// `POST /reload`: 422.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Rejected {
    pub generation: u64,
    pub errors: Vec<String>,
}

/// `wait-drained`: 408.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct NotDrained {
    pub in_flight: u64,
}

/// Every error answer.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ErrorBody {
    pub error: String,
}

/// The whole output of `clonelb status`: header line, last error, table.
pub(crate) fn status(s: &Status, now: SystemTime, color: bool) -> String {
    let mut out = format!(
        "generation {}, loaded {}, strategy {}\n",
        s.config.generation,
        s.config.loaded_at.as_deref().unwrap_or("-"),
        or_dash(&s.strategy),
    );
    if let Some(lines) = &s.config.last_error {
        out.push_str("last reload failed:\n");
        for l in lines {
            out.push_str(l);
            out.push('\n');
        }
    }
    for d in &s.dns {
        out.push_str(&dns_line(d, now));
        out.push('\n');
    }
    if s.backends.is_empty() {
        out.push_str("no clones\n");
        return out;
    }
    let header = [
        "NAME",
        "ADDRESS",
        "STATE",
        "IN-FLIGHT",
        "REQUESTS",
        "ERRORS",
        "P99",
        "LAST-CHECK",
    ]
    .map(String::from);
    let rows: Vec<[String; 8]> = s
        .backends
        .iter()
        .map(|b| {
            [
                b.name.clone(),
                b.address.clone(),
                or_dash(&b.state).to_string(),
                b.in_flight.to_string(),
                b.requests_total.to_string(),
                b.last_minute.errors.to_string(),
                b.last_minute.p99_ms.map_or_else(|| "-".into(), millis),
                b.last_check
                    .as_ref()
                    .map_or_else(|| "-".into(), |c| last_check(c, now)),
            ]
        })
        .collect();
    let mut widths = header.clone().map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    out.push_str(&line(&header, &widths, None));
    for (row, b) in rows.iter().zip(&s.backends) {
        out.push_str(&line(row, &widths, color.then_some(b.state.as_str())));
    }
    out
}

/// One table line: numbers right-aligned, the rest left-aligned, two spaces apart, the
/// last column unpadded; with `state`, the STATE cell is coloured after padding (so the
/// escape codes do not upset the alignment).
fn line(cells: &[String; 8], widths: &[usize; 8], state: Option<&str>) -> String {
    let mut out = String::new();
    for (i, (cell, &w)) in cells.iter().zip(widths).enumerate() {
        if i > 0 {
            out.push_str("  ");
        }
        let padded = match i {
            3..=6 => format!("{cell:>w$}"),
            7 => cell.clone(),
            _ => format!("{cell:<w$}"),
        };
        match (i, state.and_then(color_of)) {
            (2, Some(code)) => out.push_str(&format!("\x1b[{code}m{padded}\x1b[0m")),
            _ => out.push_str(&padded),
        }
    }
    out.push('\n');
    out
}

/// SGR code of a state: green up, red down, yellow draining, grey disabled, blue standby.
fn color_of(state: &str) -> Option<&'static str> {
    match state {
        "up" => Some("32"),
        "down" => Some("31"),
        "draining" => Some("33"),
        "disabled" => Some("90"),
        "standby" => Some("34"),
        _ => None,
    }
}

/// `dns app.internal: ok, 3 clones, resolved 2s ago`; a failing name says what failed and
/// what it keeps: `dns app.internal: timeout (...), keeping 3 clones resolved 40s ago`.
fn dns_line(d: &DnsName, now: SystemTime) -> String {
    let resolved = d.resolved_at.as_deref().and_then(parse_time).map(|t| {
        let age = ago(now.duration_since(t).unwrap_or(Duration::ZERO));
        format!(
            "{} clone{} resolved {age}",
            d.clones,
            if d.clones == 1 { "" } else { "s" }
        )
    });
    let name = &d.name;
    match (d.result.as_deref(), resolved) {
        (None, _) => format!("dns {name}: no answer yet"),
        (Some(r @ ("ok" | "nodata")), Some(resolved)) => format!("dns {name}: {r}, {resolved}"),
        (Some(r), resolved) => {
            let error = d
                .error
                .as_deref()
                .map_or(String::new(), |e| format!(" ({e})"));
            let keeps = resolved.map_or("never resolved: no clones".into(), |r| {
                format!("keeping {r}")
            });
            format!("dns {name}: {r}{error}, {keeps}")
        }
    }
}

/// `12ms`; one decimal under 10 ms (`0.8ms`).
fn millis(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{ms:.0}ms")
    }
}

/// `ok 200 3s ago`, `fail timeout after 1s 1s ago`.
fn last_check(c: &LastCheck, now: SystemTime) -> String {
    let verdict = if c.ok { "ok" } else { "fail" };
    let when = match parse_time(&c.at) {
        Some(at) => ago(now.duration_since(at).unwrap_or(Duration::ZERO)),
        None => format!("at {}", or_dash(&c.at)),
    };
    if c.detail.is_empty() {
        format!("{verdict} {when}")
    } else {
        format!("{verdict} {} {when}", c.detail)
    }
}

/// RFC 3339 in UTC (`Z` or `+00:00`), with or without fractional seconds.
fn parse_time(s: &str) -> Option<SystemTime> {
    let s = s
        .strip_suffix("+00:00")
        .map_or_else(|| s.to_string(), |t| format!("{t}Z"));
    humantime::parse_rfc3339_weak(&s).ok()
}

/// `3s ago`, `5m ago`, `2h ago`, `4d ago`.
fn ago(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// `clone-1 (127.0.0.1:9001): disabled, 3 in flight`.
pub(crate) fn backend_line(b: &Backend) -> String {
    format!(
        "{} ({}): {}, {} in flight",
        b.name,
        or_dash(&b.address),
        or_dash(&b.state),
        b.in_flight
    )
}

/// `pinned v1: active v1 (mode atomic)`, `unpinned: active v2 (mode atomic)`; an outage
/// fallback adds `, a fallback from v2 since 2026-12-03T10:00:00Z`.
pub(crate) fn deploy_line(d: &Deploy) -> String {
    let pinned = match &d.pinned {
        Some(v) => format!("pinned {v}"),
        None => "unpinned".to_string(),
    };
    let active = d.active.as_deref().unwrap_or("none");
    let fallback = d.fallback.as_ref().map_or_else(String::new, |f| {
        format!(", a fallback from {} since {}", f.from, or_dash(&f.since))
    });
    format!(
        "{pinned}: active {active}{fallback} (mode {})",
        or_dash(&d.mode)
    )
}

/// `reloaded: generation 8, added a,b, removed -, changed c`.
pub(crate) fn reloaded(r: &Reloaded) -> String {
    let list = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(",")
        }
    };
    format!(
        "reloaded: generation {}, added {}, removed {}, changed {}",
        r.generation,
        list(&r.added),
        list(&r.removed),
        list(&r.changed)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    fn sample() -> Status {
        serde_json::from_str(
            r#"{"version": "0.1.0", "future_field": [1, 2],
                "config": {"path": "lb.toml", "generation": 7,
                           "loaded_at": "2026-12-03T10:00:00Z", "last_error": null},
                "strategy": "round-robin",
                "backends": [
                  {"name": "clone-1", "address": "127.0.0.1:9001", "weight": 1, "state": "up",
                   "in_flight": 3, "requests_total": 12345, "failures_total": 2,
                   "last_check": {"at": "2026-12-03T10:59:57Z", "ok": true, "detail": "200"},
                   "last_minute": {"requests": 60, "errors": 1, "p50_ms": 2.5, "p99_ms": 31.7}},
                  {"name": "c2", "address": "127.0.0.1:9002", "state": "disabled",
                   "last_check": {"at": "2026-12-03T10:58:00.250+00:00", "ok": false,
                                  "detail": "timeout after 1s"},
                   "last_minute": {"p50_ms": null, "p99_ms": 0.84}},
                  {"name": "c3", "address": "127.0.0.1:9003", "state": "draining",
                   "last_check": null, "last_minute": {"p99_ms": null}}
                ]}"#,
        )
        .unwrap()
    }

    #[test]
    fn status_table_is_aligned_and_tolerates_unknown_and_missing_fields() {
        let out = status(&sample(), at("2026-12-03T11:00:00Z"), false);
        let expected = "\
generation 7, loaded 2026-12-03T10:00:00Z, strategy round-robin
NAME     ADDRESS         STATE     IN-FLIGHT  REQUESTS  ERRORS    P99  LAST-CHECK
clone-1  127.0.0.1:9001  up                3     12345       1   32ms  ok 200 3s ago
c2       127.0.0.1:9002  disabled          0         0       0  0.8ms  fail timeout after 1s 1m ago
c3       127.0.0.1:9003  draining          0         0       0      -  -
";
        assert_eq!(out, expected);
    }

    #[test]
    fn colour_wraps_the_padded_state_only() {
        let out = status(&sample(), at("2026-12-03T11:00:00Z"), true);
        assert!(out.contains("\x1b[32mup      \x1b[0m"), "{out}");
        assert!(out.contains("\x1b[90mdisabled\x1b[0m"), "{out}");
        assert!(out.contains("\x1b[33mdraining\x1b[0m"), "{out}");
        assert_eq!(color_of("standby"), Some("34"));
        assert!(out.lines().nth(1).is_some_and(|h| !h.contains('\x1b')));
    }

    #[test]
    fn last_error_and_no_clones() {
        let s: Status = serde_json::from_str(
            r#"{"config": {"generation": 2, "loaded_at": null,
                           "last_error": ["lb.toml:3:1: oops", "lb.toml:4:2: again"]},
                "strategy": "least-connections", "backends": []}"#,
        )
        .unwrap();
        assert_eq!(
            status(&s, SystemTime::UNIX_EPOCH, false),
            "generation 2, loaded -, strategy least-connections\nlast reload failed:\n\
             lb.toml:3:1: oops\nlb.toml:4:2: again\nno clones\n"
        );
    }

    #[test]
    fn dns_names_say_what_they_resolved_and_what_a_failing_one_keeps() {
        let s: Status = serde_json::from_str(
            r#"{"config": {"generation": 3}, "strategy": "round-robin", "backends": [],
                "dns": [
                  {"name": "app.test", "type": "address", "result": "ok", "error": null,
                   "clones": 3, "resolved_at": "2026-12-03T10:59:58Z"},
                  {"name": "_h._tcp.svc", "type": "srv", "result": "timeout",
                   "error": "SRV query timed out", "clones": 1,
                   "resolved_at": "2026-12-03T10:59:00Z"},
                  {"name": "gone.test", "result": "nxdomain", "error": "NXDOMAIN", "clones": 0},
                  {"name": "new.test", "result": null}]}"#,
        )
        .unwrap();
        let out = status(&s, at("2026-12-03T11:00:00Z"), false);
        assert_eq!(
            out,
            "generation 3, loaded -, strategy round-robin\n\
             dns app.test: ok, 3 clones resolved 2s ago\n\
             dns _h._tcp.svc: timeout (SRV query timed out), keeping 1 clone resolved 1m ago\n\
             dns gone.test: nxdomain (NXDOMAIN), never resolved: no clones\n\
             dns new.test: no answer yet\n\
             no clones\n"
        );
    }

    #[test]
    fn ages_and_lines() {
        assert_eq!(ago(Duration::from_secs(59)), "59s ago");
        assert_eq!(ago(Duration::from_secs(3599)), "59m ago");
        assert_eq!(ago(Duration::from_secs(7200)), "2h ago");
        assert_eq!(ago(Duration::from_secs(86400 * 3)), "3d ago");
        let r = Reloaded {
            generation: 8,
            added: vec!["a".into(), "b".into()],
            removed: vec![],
            changed: vec!["c".into()],
        };
        assert_eq!(
            reloaded(&r),
            "reloaded: generation 8, added a,b, removed -, changed c"
        );
        let b: Backend =
            serde_json::from_str(r#"{"name": "x", "address": "10.0.0.1:80", "state": "disabled"}"#)
                .unwrap();
        assert_eq!(backend_line(&b), "x (10.0.0.1:80): disabled, 0 in flight");
    }

    #[test]
    fn deploy_lines() {
        let d: Deploy = serde_json::from_str(
            r#"{"active": "v1", "versions": {"v1": {"up": 2, "total": 2}}, "mode": "atomic",
                "cutover_at": "50%", "pinned": "v1", "fallback": null, "skew": 1}"#,
        )
        .unwrap();
        assert_eq!(deploy_line(&d), "pinned v1: active v1 (mode atomic)");
        let d: Deploy = serde_json::from_str(
            r#"{"active": "v1", "mode": "atomic", "pinned": null,
                "fallback": {"from": "v2", "since": "2026-12-03T10:00:00Z"}}"#,
        )
        .unwrap();
        assert_eq!(
            deploy_line(&d),
            "unpinned: active v1, a fallback from v2 since 2026-12-03T10:00:00Z (mode atomic)"
        );
        let d: Deploy = serde_json::from_str(r#"{"mode": "atomic"}"#).unwrap();
        assert_eq!(deploy_line(&d), "unpinned: active none (mode atomic)");
    }
}

//! lb.toml: the schema (schema v1), its defaults, and validation that reports *every*
//! problem as `PATH:LINE:COL: message`.
//!
//! Pure: no sockets, no shared state. The reload path and `clonelb check` both call
//! [`load`] / [`parse`], so a file `check` accepts is exactly a file `run` accepts. This
//! module imports nothing from the request path nor from `error.rs` (which re-exports
//! [`ConfigError`] from here); of the rest of the crate it only uses
//! [`crate::strategy::StrategyKind`], which it maps `[balancer] strategy` to.
//!
//! Why a hand-written walker and not `#[derive(Deserialize)]`: serde stops at the first
//! error, and ops want the whole list at once. The TOML is parsed by the `toml` crate into
//! a spanned document tree ([`DeTable`]); the walker checks every key and value against
//! the schema, and builds [`Config`]. Positions come from the spans, so each message points
//! at the offending key or value (the second occurrence, for duplicates).
//!
//! Files:
//! * `schema.rs` — every section and key, each declared once: name, type, default,
//!   validator (adding a key is one line there plus README.md's lb.toml reference);
//! * `section.rs` — the `section!` macro that turns those declarations into the structs,
//!   their defaults, the allowed-key lists and the reading code;
//! * `validate.rs` — one validator per kind of value (duration, size, address, ...);
//! * `walk.rs` — the walk over the document and the rules between keys;
//! * `values.rs` — the string grammars (durations, sizes, addresses, status sets);
//! * `error.rs` — [`ConfigError`], [`Diagnostic`], [`LoadError`].

use std::collections::BTreeMap;
use std::path::Path;

use toml::de::DeTable;

mod error;
mod schema;
mod section;
mod validate;
mod validate_audit;
mod validate_dns;
mod values;
mod walk;
mod walk_backends;
mod walker;

pub use self::error::{format_diagnostic, ConfigError, Diagnostic, LoadError};
pub use self::schema::{
    AdminConfig, AuditConfig, BackendConfig, BalancerConfig, Config, DeployConfig,
    DnsBackendConfig, DnsConfig, DnsLookup, HealthConfig, LimitsConfig, ListenConfig, LogConfig,
    ProxyConfig, ReloadConfig, DEFAULT_UNHEALTHY_THRESHOLD, MAX_RETRIES, MAX_WEIGHT,
    MIN_HEADER_SIZE,
};
pub use self::values::{
    check_dns_name, page_content_type, parse_address, parse_clone_target, parse_duration,
    parse_size, AccessFormat, Choice, CloneTarget, CutoverAt, DeployMode, LogFormat, Secret,
    StatusRanges, ERROR_PAGE_STATUSES, MAX_DURATION, MAX_ERROR_PAGE,
};
pub use crate::strategy::StrategyKind;
use walker::Walker;

/// A valid configuration and the warnings found on the way (e.g. no clones).
#[derive(Debug, Clone)]
pub struct Checked {
    pub config: Config,
    pub warnings: Vec<Diagnostic>,
    /// Where `tls_cert` and `tls_key` are written (line, column), to point at them when
    /// the files turn out unusable.
    pub tls_cert_at: (usize, usize),
    pub tls_key_at: (usize, usize),
    /// Where each `[error_pages]` file is named (line, column), for the same reason.
    pub error_pages_at: BTreeMap<u16, (usize, usize)>,
    /// Where `[admin] token_file` is named (line, column), for the same reason.
    pub token_file_at: (usize, usize),
}

/// Read and validate the file at `path`.
pub fn load(path: &Path) -> Result<Checked, LoadError> {
    let label = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(src) => parse(&label, &src),
        Err(e) => Err(LoadError {
            path: label,
            diagnostics: vec![Diagnostic {
                line: 1,
                col: 1,
                error: ConfigError::Io(e.to_string()),
            }],
        }),
    }
}

/// Validate lb.toml text; `path` is only used to label the problems.
pub fn parse(path: &str, src: &str) -> Result<Checked, LoadError> {
    let mut w = Walker::new(src, Path::new(path).parent().map(Path::to_path_buf));
    let (doc, syntax) = DeTable::parse_recoverable(src);
    for e in syntax {
        let span = e.span().unwrap_or(0..0);
        w.report(
            span,
            ConfigError::Syntax {
                message: e.message().trim().to_string(),
            },
        );
    }
    // After a syntax error the recovered document is partial; checking its schema would
    // report problems that are not there. Syntax first. The walk builds a `Config` even
    // from a file with errors (bad values keep their defaults); only an error-free one is
    // returned.
    let config = if w.diags.is_empty() {
        Some(w.config(doc.get_ref(), doc.span()))
    } else {
        None
    };
    w.diags.sort_by_key(|(span, _)| span.start);
    let (warnings, errors): (Vec<_>, Vec<_>) = std::mem::take(&mut w.diags)
        .into_iter()
        .map(|(span, error)| {
            let (line, col) = line_col(src, span.start);
            Diagnostic { line, col, error }
        })
        .partition(|d| d.error.is_warning());
    match config {
        Some(config) if errors.is_empty() => Ok(Checked {
            config,
            warnings,
            tls_cert_at: line_col(src, w.tls_spans.0.start),
            tls_key_at: line_col(src, w.tls_spans.1.start),
            error_pages_at: w
                .page_spans
                .iter()
                .map(|(status, span)| (*status, line_col(src, span.start)))
                .collect(),
            token_file_at: line_col(src, w.token_file_span.start),
        }),
        _ => Err(LoadError {
            path: path.to_string(),
            diagnostics: errors,
        }),
    }
}

/// `[log] format` as the file at `path` sets it, read before logging is set up (so
/// `clonelb run` starts in the right format). `None` when the file cannot be read or does
/// not set a valid one: the full load reports its problems right after.
pub fn log_format_of(path: &Path) -> Option<LogFormat> {
    let src = std::fs::read_to_string(path).ok()?;
    let doc = DeTable::parse(&src).ok()?;
    let log = doc.get_ref().get("log")?.get_ref().as_table()?;
    let format = log.get("format")?.get_ref().as_str()?;
    LogFormat::ALL
        .iter()
        .copied()
        .find(|f| f.as_str() == format)
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(src.len());
    let before = src.get(..offset).unwrap_or(src);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn errors(src: &str) -> Vec<String> {
        match parse("lb.toml", src) {
            Ok(_) => vec![],
            Err(e) => e.lines(),
        }
    }

    const MINIMAL: &str = "[listen]\nhttp = \"127.0.0.1:8080\"\n";

    #[test]
    fn defaults() {
        let c = parse("lb.toml", MINIMAL).unwrap();
        assert_eq!(c.config.proxy, ProxyConfig::default());
        assert_eq!(c.config.balancer.strategy, StrategyKind::RoundRobin);
        assert!(c.config.backends.is_empty());
        assert_eq!(c.warnings.len(), 1);
        assert_eq!(c.warnings[0].error, ConfigError::NoBackends);
    }

    #[test]
    fn full_file() {
        let src = r#"
[listen]
http = "127.0.0.1:8080"
[balancer]
strategy = "least-connections"
[proxy]
connect_timeout = "250ms"
response_timeout = "2s"
idle_timeout = "1m"
header_read_timeout = "1h"
[[backend]]
address = "127.0.0.1:9001"
name = "a"
weight = 3
[[backend]]
address = "localhost:9002"
"#;
        let c = parse("lb.toml", src).unwrap().config;
        assert_eq!(c.balancer.strategy, StrategyKind::LeastConnections);
        assert_eq!(c.proxy.connect_timeout, Duration::from_millis(250));
        assert_eq!(c.proxy.header_read_timeout, Duration::from_secs(3600));
        assert_eq!(c.backends[0].weight, 3);
        assert_eq!(c.backends[1].name, "localhost:9002");
        assert_eq!(c.backends[1].address, "127.0.0.1:9002".parse().unwrap());
    }

    #[test]
    fn all_problems_reported_with_positions() {
        let src = "[listen]\nhttp = \"127.0.0.1:8080\"\n[proxy]\nconect_timeout = \"1s\"\nidle_timeout = \"soon\"\n[[backend]]\nadress = \"127.0.0.1:1\"\n[[backend]]\naddress = \"127.0.0.1:2\"\nweight = 0\n";
        let e = errors(src);
        assert_eq!(
            e,
            vec![
                "lb.toml:4:1: unknown key `conect_timeout` in [proxy] (did you mean `connect_timeout`?)",
                "lb.toml:5:16: invalid duration \"soon\" for `idle_timeout`: not a number followed by a unit (a number and a unit, e.g. \"250ms\", \"2s\", \"1m 30s\", \"1h\")",
                "lb.toml:6:1: missing required key `address` in [[backend]]",
                "lb.toml:7:1: unknown key `adress` in [[backend]] (did you mean `address`?)",
                "lb.toml:10:10: weight 0 is out of range (1..=1000)",
            ]
        );
    }

    #[test]
    fn durations_follow_humantime_up_to_24h() {
        let src = |value: &str| format!("{MINIMAL}[proxy]\nidle_timeout = \"{value}\"\n");
        for (value, want) in [
            ("250ms", Duration::from_millis(250)),
            ("1.5s", Duration::from_millis(1500)),
            ("30 sec", Duration::from_secs(30)),
            ("1h 30m", Duration::from_secs(5400)),
            ("1h30m", Duration::from_secs(5400)),
            ("24h", MAX_DURATION),
            ("1day", MAX_DURATION),
        ] {
            let c = parse("lb.toml", &src(value)).unwrap().config;
            assert_eq!(c.proxy.idle_timeout, want, "{value}");
        }
        let too_long = |value: &str| {
            format!(
                "lb.toml:4:16: invalid duration \"{value}\" for `idle_timeout`: above the maximum 24h (allowed: more than 0, at most 24h)"
            )
        };
        for value in ["2days", "1y", "10000000000000h", "24h 1ns", "1w"] {
            assert_eq!(errors(&src(value)), vec![too_long(value)], "{value}");
        }
        // Every duration key has the same bound.
        assert_eq!(
            errors(&format!("{MINIMAL}[health]\ninterval = \"25h\"\n")),
            vec!["lb.toml:4:12: invalid duration \"25h\" for `interval`: above the maximum 24h (allowed: more than 0, at most 24h)"]
        );
        // What humantime rejects keeps its reason.
        for (value, reason) in [
            ("1H", "unknown unit \"H\""),
            ("10", "missing unit"),
            ("0", "must be greater than zero"),
            ("-1s", "not a number followed by a unit"),
            ("1h, 30m", "not a number followed by a unit"),
            ("99999999999999999999s", "too large"),
        ] {
            assert_eq!(
                errors(&src(value)),
                vec![format!("lb.toml:4:16: invalid duration \"{value}\" for `idle_timeout`: {reason} (a number and a unit, e.g. \"250ms\", \"2s\", \"1m 30s\", \"1h\")")],
                "{value}"
            );
        }
    }

    #[test]
    fn duplicates_point_at_second() {
        let src = "[listen]\nhttp = \"127.0.0.1:8080\"\n[[backend]]\naddress = \"127.0.0.1:1\"\nname = \"x\"\n[[backend]]\naddress = \"127.0.0.1:1\"\nname = \"x\"\n";
        let e = errors(src);
        assert_eq!(
            e,
            vec![
                "lb.toml:7:11: duplicate clone address 127.0.0.1:1 (first used on line 4)",
                "lb.toml:8:8: duplicate clone name \"x\" (first used on line 5)",
            ]
        );
    }

    #[test]
    fn addresses() {
        assert!(parse_address("127.0.0.1:80").is_ok());
        assert!(parse_address("[::1]:80").is_ok());
        assert!(parse_address("127.0.0.1").unwrap_err().contains("PORT"));
        assert!(parse_address("::1:80").unwrap_err().contains("[ADDR]"));
        assert!(parse_address("app1:80")
            .unwrap_err()
            .contains("not resolved"));
        assert_eq!(parse_address("127.0.0.1:0").unwrap().port(), 0);
        let e =
            errors("[listen]\nhttp = \"127.0.0.1:0\"\n[[backend]]\naddress = \"127.0.0.1:0\"\n");
        assert_eq!(e, vec!["lb.toml:4:11: invalid address \"127.0.0.1:0\": port must be 1..=65535 (expected IP:PORT, e.g. \"127.0.0.1:9001\" or \"[::1]:9001\")"]);
        assert!(parse_address("127.0.0.1:99999").is_err());
    }

    #[test]
    fn health_section() {
        let ok = parse(
            "t",
            "[listen]\nhttp = \"127.0.0.1:1\"\n[health]\npath = \"/up\"\nexpect_status = \"200-299,304\"\nstart_unhealthy = true\n[proxy]\nretries = 0\nretry_on_timeout = true\nejection_time = \"5s\"\n",
        )
        .unwrap()
        .config;
        let h = ok.health.clone().unwrap();
        assert_eq!(h.path, "/up");
        assert!(h.expect_status.contains(304) && h.expect_status.contains(204));
        assert!(!h.expect_status.contains(302));
        assert!(h.start_unhealthy && !h.eject_on_5xx);
        assert_eq!((h.healthy_threshold, h.unhealthy_threshold), (2, 3));
        assert_eq!((ok.proxy.retries, ok.proxy.retry_on_timeout), (0, true));
        assert_eq!(ok.proxy.ejection_time, Duration::from_secs(5));

        let e = errors("[listen]\nhttp = \"127.0.0.1:1\"\n[health]\ninterval = \"1s\"\ntimeout = \"1s\"\nhealthy_threshold = 0\nexpect_status = \"200-99\"\npath = \"healthz\"\neject_on_5xx = \"yes\"\n");
        assert_eq!(
            e,
            vec![
                "lb.toml:5:11: health `timeout` (1s) must be shorter than `interval` (1s)",
                "lb.toml:6:21: `healthy_threshold` = 0 is out of range (1..=4294967295)",
                "lb.toml:7:17: invalid status set \"200-99\": \"99\" is not a status code (100..=599) (e.g. \"200-399\", \"200\", \"200,204\")",
                "lb.toml:8:8: health check path \"healthz\" must start with '/'",
                "lb.toml:9:16: `eject_on_5xx` must be true or false, found string",
            ]
        );
        assert_eq!(
            errors("[listen]\nhttp = \"127.0.0.1:1\"\n[proxy]\nretries = 101\n"),
            vec!["lb.toml:4:11: `retries` = 101 is out of range (0..=100)"]
        );
    }

    #[test]
    fn limits_and_sizes() {
        assert_eq!(parse_size("8KiB"), Ok(8192));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("3 MiB"), Ok(3 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert!(parse_size("8KB").unwrap_err().contains("unknown unit"));
        assert!(parse_size("lots").is_err());
        let c = parse(
            "t",
            "[listen]\nhttp = \"127.0.0.1:1\"\n[limits]\nmax_body = \"1MiB\"\nmax_headers = 50\n",
        )
        .unwrap()
        .config;
        assert_eq!((c.limits.max_body, c.limits.max_headers), (1 << 20, 50));
        assert_eq!(c.limits.max_header_size, 32 * 1024);
        let e = errors("[listen]\nhttp = \"127.0.0.1:1\"\n[limits]\nmax_header_size = \"4KiB\"\nmax_body = \"1MB\"\n");
        assert_eq!(
            e,
            vec![
                "lb.toml:4:19: `max_header_size` = 4096 is below its minimum 8192",
                "lb.toml:5:12: invalid size \"1MB\" for `max_body`: unknown unit \"MB\" (use B, KiB, MiB or GiB)",
            ]
        );
    }

    #[test]
    fn reload_section() {
        let c = parse("t", MINIMAL).unwrap().config;
        assert_eq!(c.reload, ReloadConfig { watch: true });
        assert_eq!(ReloadConfig::default(), ReloadConfig { watch: true });
        let c = parse(
            "t",
            "[listen]\nhttp = \"127.0.0.1:1\"\n[reload]\nwatch = false\n",
        )
        .unwrap()
        .config;
        assert!(!c.reload.watch);
        assert_eq!(
            errors("[listen]\nhttp = \"127.0.0.1:1\"\n[reload]\nwatch = \"no\"\nwach = true\n"),
            vec![
                "lb.toml:4:9: `watch` must be true or false, found string",
                "lb.toml:5:1: unknown key `wach` in [reload] (did you mean `watch`?)",
            ]
        );
        assert_eq!(
            errors("reload = 1\n[listen]\nhttp = \"127.0.0.1:1\"\n"),
            vec!["lb.toml:1:10: `reload` must be a table, found integer"]
        );
    }

    #[test]
    fn log_section() {
        let c = parse("t", MINIMAL).unwrap().config;
        assert_eq!(c.log, LogConfig::default());
        assert_eq!(
            (c.log.access, c.log.format, c.log.access_query),
            (AccessFormat::Off, LogFormat::Text, false)
        );
        let c = parse(
            "dir/lb.toml",
            "[listen]\nhttp = \"127.0.0.1:1\"\n[log]\naccess = \"json\"\naccess_path = \"log/a.log\"\naccess_query = true\nformat = \"json\"\n",
        )
        .unwrap()
        .config;
        assert_eq!(c.log.access, AccessFormat::Json);
        assert_eq!(
            c.log.access_path.as_deref(),
            Some(Path::new("dir/log/a.log"))
        );
        assert!(c.log.access_query);
        assert_eq!(c.log.format, LogFormat::Json);
        assert_eq!(
            errors("[listen]\nhttp = \"127.0.0.1:1\"\n[log]\naccess = \"common\"\nformat = \"xml\"\naccess_path = \"\"\n"),
            vec![
                "lb.toml:4:10: unknown value \"common\" for `access` (expected \"off\", \"combined\", \"json\")",
                "lb.toml:5:10: unknown value \"xml\" for `format` (expected \"text\", \"json\")",
                "lb.toml:6:15: `access_path` must not be empty",
            ]
        );
    }

    #[test]
    fn log_format_is_read_before_the_full_load() {
        let dir = std::env::temp_dir().join(format!("clonelb-logfmt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("lb.toml");
        std::fs::write(&p, "[log]\nformat = \"json\"\n[listen]\nhttp = \"bad\"\n").unwrap();
        assert_eq!(log_format_of(&p), Some(LogFormat::Json));
        std::fs::write(&p, "[log]\nformat = \"yaml\"\n").unwrap();
        assert_eq!(log_format_of(&p), None);
        assert_eq!(log_format_of(&dir.join("missing.toml")), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn admin_section() {
        assert_eq!(parse("t", MINIMAL).unwrap().config.admin, None);
        let c = parse(
            "t",
            "[listen]\nhttp = \"127.0.0.1:1\"\n[admin]\nlisten = \"0.0.0.0:9090\"\ntoken = \"abc\"\n",
        )
        .unwrap()
        .config;
        let admin = c.admin.clone().unwrap();
        assert_eq!(admin.listen, Some("0.0.0.0:9090".parse().unwrap()));
        assert!(admin.token.as_ref().unwrap().matches(b"abc"));
        assert!(!admin.token.as_ref().unwrap().matches(b"abd"));
        assert!(!admin.token.as_ref().unwrap().matches(b"ab"));
        assert!(
            !format!("{c:?}").contains("abc"),
            "the token leaks into Debug"
        );
        // Loopback needs no token.
        assert!(parse(
            "t",
            "[listen]\nhttp = \"127.0.0.1:1\"\n[admin]\nlisten = \"[::1]:0\"\n"
        )
        .is_ok());
        assert_eq!(
            errors("[listen]\nhttp = \"127.0.0.1:1\"\n[admin]\nlisten = \"10.0.0.1:9090\"\n"),
            vec!["lb.toml:4:10: admin listener 10.0.0.1:9090 is not on loopback: set `token` or `token_file` in [admin] (anyone who can reach it could steer the balancer)"]
        );
        assert_eq!(
            errors("[listen]\nhttp = \"127.0.0.1:1\"\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"\"\n"),
            vec!["lb.toml:5:9: `token` must not be empty"]
        );
        assert_eq!(
            errors("[listen]\nhttp = \"127.0.0.1:1\"\n[admin]\ntoken = \"x\"\n"),
            vec!["lb.toml:3:1: missing required key `listen` in [admin]"]
        );
    }

    #[test]
    fn line_col_counts_chars() {
        assert_eq!(line_col("ab\ncé d", 7), (2, 4));
        assert_eq!(line_col("", 0), (1, 1));
    }
}

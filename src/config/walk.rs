//! The walk over a parsed lb.toml that checks every key and value against the schema and
//! builds [`Config`], collecting every problem instead of stopping at the first (which is
//! what serde's derive would do).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::*;
use crate::error::ConfigError;

const TOP_KEYS: &[&str] = &["listen", "balancer", "proxy", "health", "limits", "backend"];
const LIMITS_KEYS: &[&str] = &[
    "max_request_line",
    "max_header_size",
    "max_headers",
    "max_body",
    "max_connections",
];
const LISTEN_KEYS: &[&str] = &["http", "https", "tls_cert", "tls_key"];
const BALANCER_KEYS: &[&str] = &["strategy"];
const PROXY_KEYS: &[&str] = &[
    "connect_timeout",
    "response_timeout",
    "idle_timeout",
    "header_read_timeout",
    "retries",
    "retry_on_timeout",
    "ejection_time",
    "drain_timeout",
    "shutdown_timeout",
    "body_read_timeout",
    "trust_forwarded",
    "max_concurrent_streams",
];
const HEALTH_KEYS: &[&str] = &[
    "path",
    "interval",
    "timeout",
    "healthy_threshold",
    "unhealthy_threshold",
    "expect_status",
    "host",
    "start_unhealthy",
    "eject_on_5xx",
];
const BACKEND_KEYS: &[&str] = &["address", "name", "weight"];

type Entry<'i> = (
    &'i Spanned<toml::de::DeString<'i>>,
    &'i Spanned<DeValue<'i>>,
);

/// Collects problems while building a [`Config`]. Every getter reports what is wrong with
/// its key and returns `None`, so the walk goes on and finds the rest.
pub(super) struct Walker<'s> {
    pub(super) src: &'s str,
    /// lb.toml's directory: relative file paths are read from there.
    pub(super) base: Option<PathBuf>,
    pub(super) diags: Vec<(Range<usize>, ConfigError)>,
    /// Spans of the `tls_cert` and `tls_key` values.
    pub(super) tls_spans: (Range<usize>, Range<usize>),
}

impl<'s> Walker<'s> {
    pub(super) fn report(&mut self, span: Range<usize>, error: ConfigError) {
        self.diags.push((span, error));
    }

    pub(super) fn config(&mut self, root: &DeTable<'_>, root_span: Range<usize>) -> Option<Config> {
        self.check_keys(root, "the top level", TOP_KEYS);

        let listen = match self.table(root, "listen") {
            Some((t, span)) => self.listen(t, span),
            None => {
                if find(root, "listen").is_none() {
                    self.report(
                        root_span.start..root_span.start,
                        ConfigError::MissingKey {
                            table: "the top level".into(),
                            key: "listen",
                        },
                    );
                }
                None
            }
        };

        let mut balancer = BalancerConfig::default();
        if let Some((t, _)) = self.table(root, "balancer") {
            self.check_keys(t, "[balancer]", BALANCER_KEYS);
            if let Some((s, span)) = self.string(t, "strategy") {
                match s {
                    "round-robin" => balancer.strategy = StrategyKind::RoundRobin,
                    "least-connections" => balancer.strategy = StrategyKind::LeastConnections,
                    other => self.report(
                        span,
                        ConfigError::UnknownStrategy {
                            value: other.to_string(),
                        },
                    ),
                }
            }
        }

        let mut proxy = ProxyConfig::default();
        if let Some((t, _)) = self.table(root, "proxy") {
            self.check_keys(t, "[proxy]", PROXY_KEYS);
            self.duration(t, "connect_timeout", &mut proxy.connect_timeout);
            self.duration(t, "response_timeout", &mut proxy.response_timeout);
            self.duration(t, "idle_timeout", &mut proxy.idle_timeout);
            self.duration(t, "header_read_timeout", &mut proxy.header_read_timeout);
            self.count(t, "retries", 0..=MAX_RETRIES, &mut proxy.retries);
            self.boolean(t, "retry_on_timeout", &mut proxy.retry_on_timeout);
            self.duration(t, "ejection_time", &mut proxy.ejection_time);
            self.duration(t, "drain_timeout", &mut proxy.drain_timeout);
            self.duration(t, "shutdown_timeout", &mut proxy.shutdown_timeout);
            self.duration(t, "body_read_timeout", &mut proxy.body_read_timeout);
            self.boolean(t, "trust_forwarded", &mut proxy.trust_forwarded);
            self.count(
                t,
                "max_concurrent_streams",
                1..=u32::MAX,
                &mut proxy.max_concurrent_streams,
            );
        }

        let mut limits = LimitsConfig::default();
        if let Some((t, _)) = self.table(root, "limits") {
            self.check_keys(t, "[limits]", LIMITS_KEYS);
            self.size(t, "max_request_line", 1, &mut limits.max_request_line);
            self.size(
                t,
                "max_header_size",
                MIN_HEADER_SIZE,
                &mut limits.max_header_size,
            );
            self.size(t, "max_headers", 1, &mut limits.max_headers);
            self.size(t, "max_body", 0, &mut limits.max_body);
            self.size(t, "max_connections", 1, &mut limits.max_connections);
        }

        let health = self.table(root, "health").map(|(t, _)| self.health(t));
        let backends = self.backends(root);
        Some(Config {
            listen: listen?,
            balancer,
            proxy,
            health,
            limits,
            backends,
        })
    }

    /// `[listen]`: at least one listener; `https` needs both TLS files, which need `https`.
    fn listen(&mut self, t: &DeTable<'_>, span: Range<usize>) -> Option<ListenConfig> {
        self.check_keys(t, "[listen]", LISTEN_KEYS);
        if find(t, "http").is_none() && find(t, "https").is_none() {
            self.report(
                span,
                ConfigError::MissingKey {
                    table: "[listen]".into(),
                    key: "http",
                },
            );
            return None;
        }
        // Each: `Some(None)` absent, `None` present but invalid (already reported).
        // Port 0 asks the kernel for a free port (tests, demos).
        let http = match find(t, "http") {
            None => Some(None),
            Some((_, v)) => self.address("http", v, true).map(Some),
        };
        let https = match find(t, "https") {
            None => Some(None),
            Some((_, v)) => self.address("https", v, true).map(Some),
        };
        let cert = self.path(t, "tls_cert").map_or(Some(None), |p| p.map(Some));
        let key = self.path(t, "tls_key").map_or(Some(None), |p| p.map(Some));
        let mut ok = true;
        if find(t, "https").is_some() {
            for name in ["tls_cert", "tls_key"] {
                if find(t, name).is_none() {
                    self.report(span.clone(), ConfigError::MissingTlsFile { key: name });
                    ok = false;
                }
            }
        } else {
            for name in ["tls_cert", "tls_key"] {
                if let Some((k, _)) = find(t, name) {
                    self.report(k.span(), ConfigError::TlsWithoutHttps { key: name });
                    ok = false;
                }
            }
        }
        let (Some(http), Some(https), Some(tls_cert), Some(tls_key)) = (http, https, cert, key)
        else {
            return None;
        };
        ok.then_some(ListenConfig {
            http,
            https,
            tls_cert,
            tls_key,
        })
    }

    /// A file path (a non-empty string), relative to lb.toml's directory. `None`: absent;
    /// `Some(None)`: present but invalid (reported).
    fn path(&mut self, t: &DeTable<'_>, key: &'static str) -> Option<Option<PathBuf>> {
        find(t, key)?;
        let Some((s, span)) = self.string(t, key) else {
            return Some(None);
        };
        if key == "tls_cert" {
            self.tls_spans.0 = span.clone();
        } else {
            self.tls_spans.1 = span.clone();
        }
        if s.is_empty() {
            self.report(span, ConfigError::EmptyPath { key });
            return Some(None);
        }
        let p = PathBuf::from(s);
        Some(Some(match &self.base {
            Some(base) if p.is_relative() => base.join(p),
            _ => p,
        }))
    }

    /// A size or count: a TOML integer, or a string "N", "NB", "NKiB", "NMiB", "NGiB".
    fn size(&mut self, table: &DeTable<'_>, key: &'static str, min: u64, slot: &mut u64) {
        let Some((k, v)) = find(table, key) else {
            return;
        };
        let parsed = match v.get_ref() {
            DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix())
                .map_err(|_| "must be a non-negative integer".to_string()),
            DeValue::String(s) => parse_size(s),
            _ => {
                self.wrong_type(k, v, "a size (e.g. 8192 or \"8KiB\")");
                return;
            }
        };
        match parsed {
            Ok(n) if n >= min => *slot = n,
            Ok(n) => self.report(v.span(), ConfigError::SizeTooSmall { key, value: n, min }),
            Err(reason) => self.report(
                v.span(),
                ConfigError::BadSize {
                    key,
                    value: match v.get_ref() {
                        DeValue::String(s) => s.to_string(),
                        other => format!("{other:?}"),
                    },
                    reason,
                },
            ),
        }
    }

    fn health(&mut self, t: &DeTable<'_>) -> HealthConfig {
        self.check_keys(t, "[health]", HEALTH_KEYS);
        let mut h = HealthConfig::default();
        if let Some((p, span)) = self.string(t, "path") {
            if p.starts_with('/') {
                h.path = p.to_string();
            } else {
                self.report(span, ConfigError::BadPath { value: p.into() });
            }
        }
        self.duration(t, "interval", &mut h.interval);
        self.duration(t, "timeout", &mut h.timeout);
        self.count(
            t,
            "healthy_threshold",
            1..=u32::MAX,
            &mut h.healthy_threshold,
        );
        self.count(
            t,
            "unhealthy_threshold",
            1..=u32::MAX,
            &mut h.unhealthy_threshold,
        );
        if let Some((s, span)) = self.string(t, "expect_status") {
            match StatusRanges::parse(s) {
                Ok(r) => h.expect_status = r,
                Err(reason) => self.report(
                    span,
                    ConfigError::BadStatus {
                        value: s.into(),
                        reason,
                    },
                ),
            }
        }
        h.host = self.string(t, "host").map(|(s, _)| s.to_string());
        self.boolean(t, "start_unhealthy", &mut h.start_unhealthy);
        self.boolean(t, "eject_on_5xx", &mut h.eject_on_5xx);
        if h.timeout >= h.interval {
            let span = find(t, "timeout")
                .or_else(|| find(t, "interval"))
                .map_or(0..0, |(_, v)| v.span());
            self.report(
                span,
                ConfigError::TimeoutNotBelowInterval {
                    timeout: h.timeout,
                    interval: h.interval,
                },
            );
        }
        h
    }

    /// An integer key within `range`; left at its default when absent or invalid.
    fn count(
        &mut self,
        table: &DeTable<'_>,
        key: &'static str,
        range: std::ops::RangeInclusive<u32>,
        slot: &mut u32,
    ) {
        if let Some((n, span)) = self.integer(table, key) {
            match u32::try_from(n) {
                Ok(v) if range.contains(&v) => *slot = v,
                _ => self.report(
                    span,
                    ConfigError::OutOfRange {
                        key,
                        value: n,
                        min: *range.start(),
                        max: *range.end(),
                    },
                ),
            }
        }
    }

    fn boolean(&mut self, table: &DeTable<'_>, key: &str, slot: &mut bool) {
        let Some((k, v)) = find(table, key) else {
            return;
        };
        match v.get_ref().as_bool() {
            Some(b) => *slot = b,
            None => self.wrong_type(k, v, "true or false"),
        }
    }

    fn backends(&mut self, root: &DeTable<'_>) -> Vec<BackendConfig> {
        let mut out = Vec::new();
        let Some((key, value)) = find(root, "backend") else {
            self.report(self.src.len()..self.src.len(), ConfigError::NoBackends);
            return out;
        };
        let Some(array) = value.get_ref().as_array() else {
            self.wrong_type(key, value, "an array of tables ([[backend]])");
            return out;
        };
        if array.is_empty() {
            self.report(key.span(), ConfigError::NoBackends);
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut addresses: HashMap<SocketAddr, usize> = HashMap::new();
        for item in array.iter() {
            let Some(t) = item.get_ref().as_table() else {
                self.report(
                    item.span(),
                    ConfigError::WrongType {
                        key: "backend".into(),
                        expected: "a table",
                        found: item.get_ref().type_str(),
                    },
                );
                continue;
            };
            self.check_keys(t, "[[backend]]", BACKEND_KEYS);
            let address = match find(t, "address") {
                Some((_, v)) => self.address("address", v, false).map(|a| (a, v)),
                None => {
                    self.report(
                        item.span(),
                        ConfigError::MissingKey {
                            table: "[[backend]]".into(),
                            key: "address",
                        },
                    );
                    None
                }
            };
            let name = self
                .string(t, "name")
                .map(|(s, span)| (s.to_string(), span));
            let weight = match self.integer(t, "weight") {
                Some((w, span)) => {
                    if (1..=i128::from(MAX_WEIGHT)).contains(&w) {
                        Some(w as u32)
                    } else {
                        self.report(span, ConfigError::WeightOutOfRange { value: w });
                        None
                    }
                }
                None => Some(1),
            };
            let mut ok = weight.is_some();
            if let Some((name, span)) = &name {
                if name.is_empty() {
                    self.report(span.clone(), ConfigError::EmptyName);
                    ok = false;
                } else if let Some(first) = names.get(name) {
                    self.report(
                        span.clone(),
                        ConfigError::DuplicateName {
                            name: name.clone(),
                            first_line: *first,
                        },
                    );
                    ok = false;
                } else {
                    names.insert(name.clone(), line_col(self.src, span.start).0);
                }
            }
            let Some((address, addr_value)) = address else {
                continue;
            };
            if let Some(first) = addresses.get(&address) {
                self.report(
                    addr_value.span(),
                    ConfigError::DuplicateAddress {
                        address,
                        first_line: *first,
                    },
                );
                continue;
            }
            addresses.insert(address, line_col(self.src, addr_value.span().start).0);
            let written = addr_value
                .get_ref()
                .as_str()
                .unwrap_or_default()
                .to_string();
            let name = match name {
                Some((n, _)) => n,
                None => {
                    // The default name is the address as written; it must not collide with
                    // an explicit name either.
                    if let Some(first) = names.get(&written) {
                        self.report(
                            addr_value.span(),
                            ConfigError::DuplicateName {
                                name: written.clone(),
                                first_line: *first,
                            },
                        );
                        continue;
                    }
                    names.insert(
                        written.clone(),
                        line_col(self.src, addr_value.span().start).0,
                    );
                    written
                }
            };
            if ok {
                out.push(BackendConfig {
                    address,
                    name,
                    weight: weight.unwrap_or(1),
                });
            }
        }
        out
    }

    /// Unknown keys are errors, with a "did you mean" when one allowed key is close.
    fn check_keys(&mut self, table: &DeTable<'_>, name: &str, allowed: &'static [&'static str]) {
        for (key, _) in table.iter() {
            let k: &str = key.get_ref();
            if !allowed.contains(&k) {
                let suggestion = allowed
                    .iter()
                    .map(|a| (strsim::damerau_levenshtein(a, k), *a))
                    .filter(|(d, _)| *d <= 2)
                    .min()
                    .map(|(_, a)| a);
                self.report(
                    key.span(),
                    ConfigError::UnknownKey {
                        table: name.to_string(),
                        key: k.to_string(),
                        suggestion,
                    },
                );
            }
        }
    }

    fn wrong_type(
        &mut self,
        key: &Spanned<toml::de::DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
        expected: &'static str,
    ) {
        self.report(
            value.span(),
            ConfigError::WrongType {
                key: key.get_ref().to_string(),
                expected,
                found: value.get_ref().type_str(),
            },
        );
    }

    fn table<'t>(
        &mut self,
        root: &'t DeTable<'t>,
        key: &str,
    ) -> Option<(&'t DeTable<'t>, Range<usize>)> {
        let (k, v) = find(root, key)?;
        match v.get_ref().as_table() {
            Some(t) => Some((t, v.span())),
            None => {
                self.wrong_type(k, v, "a table");
                None
            }
        }
    }

    fn string<'t>(&mut self, table: &'t DeTable<'t>, key: &str) -> Option<(&'t str, Range<usize>)> {
        let (k, v) = find(table, key)?;
        match v.get_ref().as_str() {
            Some(s) => Some((s, v.span())),
            None => {
                self.wrong_type(k, v, "a string");
                None
            }
        }
    }

    fn integer(&mut self, table: &DeTable<'_>, key: &str) -> Option<(i128, Range<usize>)> {
        let (k, v) = find(table, key)?;
        let parsed = v
            .get_ref()
            .as_integer()
            .and_then(|i| i128::from_str_radix(i.as_str(), i.radix()).ok());
        match parsed {
            Some(n) => Some((n, v.span())),
            None => {
                self.wrong_type(k, v, "an integer");
                None
            }
        }
    }

    /// A duration: an integer and a unit ("250ms", "2s", "1m", "1h"); must be above zero.
    fn duration(&mut self, table: &DeTable<'_>, key: &'static str, slot: &mut Duration) {
        let Some((s, span)) = self.string(table, key) else {
            return;
        };
        match parse_duration(s) {
            Ok(d) => *slot = d,
            Err(reason) => self.report(
                span,
                ConfigError::BadDuration {
                    key,
                    value: s.to_string(),
                    reason,
                },
            ),
        }
    }

    fn address(
        &mut self,
        key: &str,
        v: &Spanned<DeValue<'_>>,
        port_zero_ok: bool,
    ) -> Option<SocketAddr> {
        let Some(s) = v.get_ref().as_str() else {
            self.report(
                v.span(),
                ConfigError::WrongType {
                    key: key.into(),
                    expected: "a string \"IP:PORT\"",
                    found: v.get_ref().type_str(),
                },
            );
            return None;
        };
        match parse_address(s) {
            Ok(a) if a.port() == 0 && !port_zero_ok => {
                self.report(
                    v.span(),
                    ConfigError::BadAddress {
                        value: s.to_string(),
                        reason: "port must be 1..=65535".into(),
                    },
                );
                None
            }
            Ok(a) => Some(a),
            Err(reason) => {
                self.report(
                    v.span(),
                    ConfigError::BadAddress {
                        value: s.to_string(),
                        reason,
                    },
                );
                None
            }
        }
    }
}

fn find<'t, 'i>(table: &'t DeTable<'i>, key: &str) -> Option<Entry<'t>> {
    table.iter().find(|(k, _)| {
        let k: &str = k.get_ref();
        k == key
    })
}

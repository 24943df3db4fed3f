//! Owns the walk over a parsed lb.toml: which tables exist at the top level, reading each
//! through its declared keys (`schema.rs`, with the validators of `validate.rs`), and the
//! rules that tie several keys together: `[listen]` listeners and TLS files, `[health]`
//! `timeout` < `interval`, and unique, named `[[backend]]` clones. Every problem is
//! collected instead of stopping at the first (which is what serde's derive would do).
//!
//! Must not touch: I/O, shared state, `crate::error`, the request path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;

use toml::de::{DeString, DeTable, DeValue};
use toml::Spanned;

use super::error::ConfigError;
use super::schema::*;
use super::section::Section;
use super::Config;

/// The top-level tables; each is declared in `schema.rs` (`backend` is `[[backend]]`).
const TOP_KEYS: &[&str] = &[
    "listen", "balancer", "proxy", "health", "limits", "reload", "backend",
];

type Entry<'i> = (&'i Spanned<DeString<'i>>, &'i Spanned<DeValue<'i>>);

/// Collects problems while building a [`Config`]. Every validator reports what is wrong
/// with its key and leaves the field alone, so the walk goes on and finds the rest.
pub(super) struct Walker<'s> {
    pub(super) src: &'s str,
    /// lb.toml's directory: relative file paths are read from there.
    pub(super) base: Option<PathBuf>,
    pub(super) diags: Vec<(Range<usize>, ConfigError)>,
    /// Spans of the `tls_cert` and `tls_key` values.
    pub(super) tls_spans: (Range<usize>, Range<usize>),
    /// The last offset asked of [`Walker::line_of`] and its line.
    line_cursor: (usize, usize),
}

impl<'s> Walker<'s> {
    pub(super) fn new(src: &'s str, base: Option<PathBuf>) -> Self {
        Walker {
            src,
            base,
            diags: Vec::new(),
            tls_spans: (0..0, 0..0),
            line_cursor: (0, 1),
        }
    }

    pub(super) fn report(&mut self, span: Range<usize>, error: ConfigError) {
        self.diags.push((span, error));
    }

    /// The whole file. Only meaningful when no error was reported.
    pub(super) fn config(&mut self, root: &DeTable<'_>, root_span: Range<usize>) -> Config {
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
                ListenConfig::defaults()
            }
        };
        let balancer = self.optional(root, "balancer");
        let proxy = self.optional(root, "proxy");
        let limits = self.optional(root, "limits");
        let health = self.table(root, "health").map(|(t, _)| self.health(t));
        let reload = self.optional(root, "reload");
        let backends = self.backends(root);
        Config {
            listen,
            balancer,
            proxy,
            health,
            limits,
            reload,
            backends,
        }
    }

    /// Every key of `t`: unknown ones reported, declared ones read over their defaults.
    fn read<S: Section>(&mut self, t: &DeTable<'_>) -> S {
        self.check_keys(t, S::TABLE, S::KEYS);
        let mut section = S::defaults();
        section.read_keys(self, t);
        section
    }

    /// A section that may be absent (then its defaults).
    fn optional<S: Section>(&mut self, root: &DeTable<'_>, key: &str) -> S {
        match self.table(root, key) {
            Some((t, _)) => self.read(t),
            None => S::defaults(),
        }
    }

    /// `[listen]`: at least one listener; `https` needs both TLS files, which need `https`.
    fn listen(&mut self, t: &DeTable<'_>, span: Range<usize>) -> ListenConfig {
        if find(t, "http").is_none() && find(t, "https").is_none() {
            self.check_keys(t, ListenConfig::TABLE, ListenConfig::KEYS);
            self.report(
                span,
                ConfigError::MissingKey {
                    table: "[listen]".into(),
                    key: "http",
                },
            );
            return ListenConfig::defaults();
        }
        let listen: ListenConfig = self.read(t);
        let value_span = |key| find(t, key).map_or(0..0, |(_, v)| v.span());
        self.tls_spans = (value_span("tls_cert"), value_span("tls_key"));
        let https = find(t, "https").is_some();
        for name in ["tls_cert", "tls_key"] {
            match find(t, name) {
                None if https => {
                    self.report(span.clone(), ConfigError::MissingTlsFile { key: name });
                }
                Some((k, _)) if !https => {
                    self.report(k.span(), ConfigError::TlsWithoutHttps { key: name });
                }
                _ => {}
            }
        }
        listen
    }

    /// `[health]`: the check `timeout` must be shorter than the `interval`.
    fn health(&mut self, t: &DeTable<'_>) -> HealthConfig {
        let h: HealthConfig = self.read(t);
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

    /// `[[backend]]`: each needs an address; addresses and names (by default the address
    /// as written) are unique, and a duplicate is reported where it is written the second
    /// time, with the line of the first.
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
            let mut b: BackendConfig = self.read(t);
            let address = find(t, "address");
            if address.is_none() {
                self.report(
                    item.span(),
                    ConfigError::MissingKey {
                        table: "[[backend]]".into(),
                        key: "address",
                    },
                );
            }
            // A name of the wrong type (reported) is treated as absent.
            let name_span = find(t, "name")
                .filter(|(_, v)| v.get_ref().as_str().is_some())
                .map(|(_, v)| v.span());
            if let Some(span) = &name_span {
                if b.name.is_empty() {
                    self.report(span.clone(), ConfigError::EmptyName);
                } else if let Some(first) = names.get(&b.name) {
                    let error = ConfigError::DuplicateName {
                        name: b.name.clone(),
                        first_line: *first,
                    };
                    self.report(span.clone(), error);
                } else {
                    let line = self.line_of(span.start);
                    names.insert(b.name.clone(), line);
                }
            }
            // A missing or invalid address (reported) leaves port 0, which the validator
            // refuses for a clone.
            let Some((_, addr_value)) = address.filter(|_| b.address.port() != 0) else {
                continue;
            };
            if let Some(first) = addresses.get(&b.address) {
                self.report(
                    addr_value.span(),
                    ConfigError::DuplicateAddress {
                        address: b.address,
                        first_line: *first,
                    },
                );
                continue;
            }
            let line = self.line_of(addr_value.span().start);
            addresses.insert(b.address, line);
            if name_span.is_none() {
                // The default name is the address as written; it must not collide with an
                // explicit name either.
                let written = addr_value.get_ref().as_str().unwrap_or_default();
                if let Some(first) = names.get(written) {
                    let error = ConfigError::DuplicateName {
                        name: written.to_string(),
                        first_line: *first,
                    };
                    self.report(addr_value.span(), error);
                    continue;
                }
                names.insert(written.to_string(), line);
                b.name = written.to_string();
            }
            out.push(b);
        }
        out
    }

    /// The 1-based line of a byte offset, counted from the previous call's offset: the
    /// `[[backend]]` walk asks in file order, so a file of thousands of clones is scanned
    /// about once instead of once per clone.
    fn line_of(&mut self, offset: usize) -> usize {
        let newlines = |from: usize, to: usize| {
            let bytes = self.src.as_bytes().get(from..to).unwrap_or_default();
            bytes.iter().filter(|&&b| b == b'\n').count()
        };
        let offset = offset.min(self.src.len());
        let (at, line) = self.line_cursor;
        let line = if offset >= at {
            line + newlines(at, offset)
        } else {
            line - newlines(offset, at)
        };
        self.line_cursor = (offset, line);
        line
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

    pub(super) fn wrong_type(
        &mut self,
        key: &Spanned<DeString<'_>>,
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

    /// The table under `key`, if present; a value of another type is reported.
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
}

pub(super) fn find<'t, 'i>(table: &'t DeTable<'i>, key: &str) -> Option<Entry<'t>> {
    table.iter().find(|(k, _)| {
        let k: &str = k.get_ref();
        k == key
    })
}

//! Owns the walk over a parsed lb.toml: which tables exist at the top level, reading each
//! through its declared keys (`schema.rs`, with the validators of `validate.rs`), and the
//! rules that tie several keys together: `[listen]` listeners and TLS files, `[health]`
//! `timeout` < `interval`, and unique, named `[[backend]]` clones. Every problem is
//! collected instead of stopping at the first (which is what serde's derive would do).
//!
//! Must not touch: I/O, shared state, `error.rs`, the request path.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

use toml::de::DeTable;

use super::error::ConfigError;
use super::schema::*;
use super::section::Section;
use super::values::{page_content_type, CutoverAt, DeployMode, ERROR_PAGE_STATUSES};
use super::walker::{find, Walker};

/// The top-level tables; each is declared in `schema.rs` (`backend` is `[[backend]]`).
const TOP_KEYS: &[&str] = &[
    "listen",
    "balancer",
    "proxy",
    "health",
    "limits",
    "reload",
    "admin",
    "log",
    "deploy",
    "audit",
    "error_pages",
    "dns",
    "backend",
];

impl Walker<'_> {
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
        let log = self.optional(root, "log");
        let deploy = self.deploy(root, health.as_ref());
        let audit = self.table(root, "audit").map(|(t, _)| self.read(t));
        let admin = self
            .table(root, "admin")
            .map(|(t, span)| self.admin(t, span));
        let error_pages = match self.table(root, "error_pages") {
            Some((t, _)) => self.error_pages(t),
            None => BTreeMap::new(),
        };
        let dns = self.optional(root, "dns");
        let (backends, dns_backends) = self.backends(root);
        // With DNS entries the number of clones is only known at run time.
        if let (CutoverAt::Count(count), true) = (deploy.cutover_at, dns_backends.is_empty()) {
            // A count is only there when [deploy] is a valid table (else the default).
            let at = self
                .table(root, "deploy")
                .and_then(|(t, _)| find(t, "cutover_at"))
                .map(|(_, v)| v.span());
            if let (Some(span), true) = (at, count as usize > backends.len()) {
                let clones = backends.len();
                self.report(span, ConfigError::CutoverAboveClones { count, clones });
            }
        }
        Config {
            listen,
            balancer,
            proxy,
            health,
            limits,
            reload,
            admin,
            log,
            deploy,
            audit,
            error_pages,
            dns,
            backends,
            dns_backends,
        }
    }

    /// `[deploy]`: `"atomic"` needs `[health] version_header` (reported at `mode`).
    fn deploy(&mut self, root: &DeTable<'_>, health: Option<&HealthConfig>) -> DeployConfig {
        let Some((t, _)) = self.table(root, "deploy") else {
            return DeployConfig::defaults();
        };
        let deploy: DeployConfig = self.read(t);
        let has_header = health.is_some_and(|h| h.version_header.is_some());
        if deploy.mode == DeployMode::Atomic && !has_header {
            if let Some((_, v)) = find(t, "mode") {
                self.report(v.span(), ConfigError::AtomicWithoutVersionHeader);
            }
        }
        deploy
    }

    /// `[error_pages]`: each key a status clonelb answers itself, each value a file whose
    /// extension gives the content type. The files are read later (`error_pages` module),
    /// so their problems can still point at these values.
    fn error_pages(&mut self, t: &DeTable<'_>) -> BTreeMap<u16, PathBuf> {
        let mut pages = BTreeMap::new();
        for (k, _) in t.iter() {
            let key: &str = k.get_ref();
            let status = key
                .parse::<u16>()
                .ok()
                .filter(|s| ERROR_PAGE_STATUSES.contains(s));
            let Some(status) = status else {
                self.report(
                    k.span(),
                    ConfigError::ErrorPageStatus {
                        key: key.to_string(),
                    },
                );
                continue;
            };
            let Some((value, span)) = self.string(t, key) else {
                continue;
            };
            let path = self.beside_config(value);
            if value.is_empty() || page_content_type(&path).is_none() {
                let value = value.to_string();
                self.report(span, ConfigError::ErrorPageType { value });
                continue;
            }
            self.page_spans.push((status, span));
            pages.insert(status, path);
        }
        pages
    }

    /// Every key of `t`: unknown ones reported, declared ones read over their defaults.
    pub(super) fn read<S: Section>(&mut self, t: &DeTable<'_>) -> S {
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

    /// `[admin]`: `listen` is required; off loopback a `token` or a `token_file` is too;
    /// not both.
    fn admin(&mut self, t: &DeTable<'_>, span: Range<usize>) -> AdminConfig {
        let admin: AdminConfig = self.read(t);
        let has_token = find(t, "token").is_some();
        if let Some((k, v)) = find(t, "token_file") {
            self.token_file_span = v.span();
            if has_token {
                self.report(k.span(), ConfigError::TokenAndTokenFile);
            }
        }
        let has_token = has_token || find(t, "token_file").is_some();
        match (find(t, "listen"), admin.listen) {
            (None, _) => self.report(
                span,
                ConfigError::MissingKey {
                    table: "[admin]".into(),
                    key: "listen",
                },
            ),
            (Some((_, v)), Some(address)) if !address.ip().is_loopback() && !has_token => {
                self.report(v.span(), ConfigError::AdminWithoutToken { address })
            }
            _ => {}
        }
        admin
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
}

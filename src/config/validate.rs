//! Owns the validators: one `Walker` method per kind of value a key may hold, named in
//! `schema.rs` after each key's `=>`. A validator is called as
//! `validator(table, key, args..., &mut field)`; it does nothing when the key is absent,
//! stores the value when it is valid, and otherwise reports the problem at the value and
//! leaves the field alone, so the walk goes on and finds the rest.
//!
//! Must not touch: which keys exist or their defaults (`schema.rs`), rules between keys
//! (`walk.rs`), I/O (file paths are only joined to lb.toml's folder, not opened).

use std::net::SocketAddr;
use std::ops::{Range, RangeInclusive};
use std::path::PathBuf;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::ConfigError;
use super::schema::MAX_WEIGHT;
use super::values::{
    parse_address, parse_duration, parse_size, Choice, CutoverAt, Secret, StatusRanges,
    MAX_DURATION,
};
use super::walker::{find, Walker};
use crate::strategy::StrategyKind;

impl Walker<'_> {
    /// A duration in humantime's grammar ("250ms", "2s", "1m", "1h 30m", "1.5s"); must be
    /// above zero and at most [`MAX_DURATION`] (24 h).
    pub(super) fn duration(&mut self, table: &DeTable<'_>, key: &'static str, slot: &mut Duration) {
        let Some((s, span)) = self.string(table, key) else {
            return;
        };
        match parse_duration(s) {
            Ok(d) if d > MAX_DURATION => self.report(
                span,
                ConfigError::DurationTooLong {
                    key,
                    value: s.to_string(),
                },
            ),
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

    /// An integer key within `range`.
    pub(super) fn count(
        &mut self,
        table: &DeTable<'_>,
        key: &'static str,
        range: RangeInclusive<u32>,
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

    /// A size or count of at least `min`: a TOML integer, or a string "N", "NB", "NKiB",
    /// "NMiB", "NGiB".
    pub(super) fn size(
        &mut self,
        table: &DeTable<'_>,
        key: &'static str,
        min: u64,
        slot: &mut u64,
    ) {
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

    pub(super) fn boolean(&mut self, table: &DeTable<'_>, key: &str, slot: &mut bool) {
        let Some((k, v)) = find(table, key) else {
            return;
        };
        match v.get_ref().as_bool() {
            Some(b) => *slot = b,
            None => self.wrong_type(k, v, "true or false"),
        }
    }

    /// Any string.
    pub(super) fn text(&mut self, table: &DeTable<'_>, key: &str, slot: &mut String) {
        if let Some((s, _)) = self.string(table, key) {
            *slot = s.to_string();
        }
    }

    /// An HTTP header name (stored lowercase), `None` when absent.
    pub(super) fn header_name(
        &mut self,
        table: &DeTable<'_>,
        key: &'static str,
        slot: &mut Option<String>,
    ) {
        if let Some((s, span)) = self.string(table, key) {
            match http::HeaderName::from_bytes(s.as_bytes()) {
                Ok(name) => *slot = Some(name.as_str().to_string()),
                Err(_) => self.report(
                    span,
                    ConfigError::BadHeaderName {
                        key,
                        value: s.to_string(),
                    },
                ),
            }
        }
    }

    /// `[deploy] cutover_at`: an integer ≥ 1, or a string `"N%"` with N in 1..=100.
    pub(super) fn cutover(&mut self, table: &DeTable<'_>, key: &'static str, slot: &mut CutoverAt) {
        let Some((k, v)) = find(table, key) else {
            return;
        };
        let span = v.span();
        if let Some(s) = v.get_ref().as_str() {
            match CutoverAt::parse_share(s) {
                Ok(c) => *slot = c,
                Err(reason) => self.report(
                    span,
                    ConfigError::BadCutover {
                        value: format!("\"{s}\""),
                        reason: reason.to_string(),
                    },
                ),
            }
            return;
        }
        if v.get_ref().as_integer().is_none() {
            self.wrong_type(k, v, "an integer or a string \"N%\"");
            return;
        }
        if let Some((n, span)) = self.integer(table, key) {
            match u32::try_from(n) {
                Ok(c) if c >= 1 => *slot = CutoverAt::Count(c),
                _ => self.report(
                    span,
                    ConfigError::BadCutover {
                        value: n.to_string(),
                        reason: "a count is at least 1".to_string(),
                    },
                ),
            }
        }
    }

    /// Any string, `None` when absent.
    pub(super) fn optional_text(
        &mut self,
        table: &DeTable<'_>,
        key: &str,
        slot: &mut Option<String>,
    ) {
        if let Some((s, _)) = self.string(table, key) {
            *slot = Some(s.to_string());
        }
    }

    /// A secret (the admin token): a non-empty string, kept out of every printout.
    pub(super) fn secret(
        &mut self,
        table: &DeTable<'_>,
        key: &'static str,
        slot: &mut Option<Secret>,
    ) {
        if let Some((s, span)) = self.string(table, key) {
            if s.is_empty() {
                self.report(span, ConfigError::EmptySecret { key });
            } else {
                *slot = Some(Secret::new(s));
            }
        }
    }

    /// The path of an HTTP request: starts with '/'.
    pub(super) fn request_path(&mut self, table: &DeTable<'_>, key: &str, slot: &mut String) {
        if let Some((p, span)) = self.string(table, key) {
            if p.starts_with('/') {
                *slot = p.to_string();
            } else {
                self.report(span, ConfigError::BadPath { value: p.into() });
            }
        }
    }

    /// A set of status codes (see [`StatusRanges::parse`]).
    pub(super) fn status_set(&mut self, table: &DeTable<'_>, key: &str, slot: &mut StatusRanges) {
        if let Some((s, span)) = self.string(table, key) {
            match StatusRanges::parse(s) {
                Ok(r) => *slot = r,
                Err(reason) => self.report(
                    span,
                    ConfigError::BadStatus {
                        value: s.into(),
                        reason,
                    },
                ),
            }
        }
    }

    /// `"round-robin"` or `"least-connections"`.
    /// One of a fixed set of words (an enum implementing [`Choice`]).
    pub(super) fn choice<C: Choice>(
        &mut self,
        table: &DeTable<'_>,
        key: &'static str,
        slot: &mut C,
    ) {
        let Some((s, span)) = self.string(table, key) else {
            return;
        };
        match C::ALL.iter().find(|c| c.as_str() == s) {
            Some(c) => *slot = *c,
            None => self.report(
                span,
                ConfigError::UnknownChoice {
                    key,
                    value: s.to_string(),
                    expected: C::ALL
                        .iter()
                        .map(|c| format!("\"{}\"", c.as_str()))
                        .collect::<Vec<_>>()
                        .join(", "),
                },
            ),
        }
    }

    pub(super) fn strategy(&mut self, table: &DeTable<'_>, key: &str, slot: &mut StrategyKind) {
        if let Some((s, span)) = self.string(table, key) {
            match s {
                "round-robin" => *slot = StrategyKind::RoundRobin,
                "least-connections" => *slot = StrategyKind::LeastConnections,
                other => self.report(
                    span,
                    ConfigError::UnknownStrategy {
                        value: other.to_string(),
                    },
                ),
            }
        }
    }

    /// A listener's address; port 0 asks the kernel for a free port (tests, demos).
    pub(super) fn listener(
        &mut self,
        table: &DeTable<'_>,
        key: &str,
        slot: &mut Option<SocketAddr>,
    ) {
        if let Some((_, v)) = find(table, key) {
            if let Some(a) = self.address(key, v, true) {
                *slot = Some(a);
            }
        }
    }

    /// A clone's weight, 1..=[`MAX_WEIGHT`].
    pub(super) fn weight(&mut self, table: &DeTable<'_>, key: &str, slot: &mut u32) {
        if let Some((w, span)) = self.integer(table, key) {
            match u32::try_from(w) {
                Ok(v) if (1..=MAX_WEIGHT).contains(&v) => *slot = v,
                _ => self.report(span, ConfigError::WeightOutOfRange { value: w }),
            }
        }
    }

    /// A file path (a non-empty string), relative to lb.toml's directory.
    pub(super) fn file(&mut self, t: &DeTable<'_>, key: &'static str, slot: &mut Option<PathBuf>) {
        let Some((s, span)) = self.string(t, key) else {
            return;
        };
        if s.is_empty() {
            self.report(span, ConfigError::EmptyPath { key });
            return;
        }
        *slot = Some(self.beside_config(s));
    }

    /// A path as written, relative ones joined to lb.toml's directory.
    pub(super) fn beside_config(&self, s: &str) -> PathBuf {
        let p = PathBuf::from(s);
        match &self.base {
            Some(base) if p.is_relative() => base.join(p),
            _ => p,
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
        let reason = match parse_address(s) {
            Ok(a) if a.port() == 0 && !port_zero_ok => "port must be 1..=65535".into(),
            Ok(a) => return Some(a),
            Err(reason) => reason,
        };
        self.report(
            v.span(),
            ConfigError::BadAddress {
                value: s.to_string(),
                reason,
            },
        );
        None
    }

    /// A string value and its span; a value of another type is reported.
    pub(super) fn string<'t>(
        &mut self,
        table: &'t DeTable<'t>,
        key: &str,
    ) -> Option<(&'t str, Range<usize>)> {
        let (k, v) = find(table, key)?;
        match v.get_ref().as_str() {
            Some(s) => Some((s, v.span())),
            None => {
                self.wrong_type(k, v, "a string");
                None
            }
        }
    }

    /// An integer value (any size TOML allows) and its span; another type is reported.
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
}

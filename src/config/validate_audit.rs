//! Validators of `[audit]`'s value kinds: numbers that may be floats (a share, a factor),
//! the window's range, and lists (safe methods, header names, path prefixes). Part of the
//! `Walker`, like `validate.rs`.

use std::ops::Range;
use std::time::Duration;

use toml::de::DeTable;

use super::error::ConfigError;
use super::walker::{find, Walker};

impl Walker<'_> {
    /// A number (float or integer) and its text and span; another type is reported.
    fn number(&mut self, table: &DeTable<'_>, key: &str) -> Option<(f64, String, Range<usize>)> {
        let (k, v) = find(table, key)?;
        let text = match (v.get_ref().as_float(), v.get_ref().as_integer()) {
            (Some(f), _) => f.as_str().to_string(),
            (None, Some(i)) => i.as_str().to_string(),
            _ => {
                self.wrong_type(k, v, "a number");
                return None;
            }
        };
        let parsed: Option<f64> = text.replace('_', "").parse().ok();
        match parsed {
            Some(n) if n.is_finite() => Some((n, text, v.span())),
            _ => {
                self.wrong_type(k, v, "a finite number");
                None
            }
        }
    }

    /// A share: a number from 0 to 1.
    pub(super) fn fraction(&mut self, table: &DeTable<'_>, key: &'static str, slot: &mut f64) {
        if let Some((n, value, span)) = self.number(table, key) {
            if (0.0..=1.0).contains(&n) {
                *slot = n;
            } else {
                self.report(span, ConfigError::NotAFraction { key, value });
            }
        }
    }

    /// A factor: a number above 1.
    pub(super) fn factor(&mut self, table: &DeTable<'_>, key: &'static str, slot: &mut f64) {
        if let Some((n, value, span)) = self.number(table, key) {
            if n > 1.0 {
                *slot = n;
            } else {
                self.report(span, ConfigError::FactorNotAboveOne { key, value });
            }
        }
    }

    /// `[audit] window`: a duration from 10 s to 60 s (the one-second ring's length).
    pub(super) fn audit_window(
        &mut self,
        table: &DeTable<'_>,
        key: &'static str,
        slot: &mut Duration,
    ) {
        let mut d = *slot;
        self.duration(table, key, &mut d);
        if d == *slot {
            return;
        }
        if (Duration::from_secs(10)..=Duration::from_secs(60)).contains(&d) {
            *slot = d;
        } else if let Some((s, span)) = self.string(table, key) {
            self.report(
                span,
                ConfigError::DurationOutOfRange {
                    key,
                    value: s.to_string(),
                    min: "10s",
                    max: "60s",
                },
            );
        }
    }

    /// The strings of an array key, each with its span; another type is reported.
    fn strings<'t>(
        &mut self,
        table: &'t DeTable<'t>,
        key: &str,
    ) -> Option<Vec<(&'t str, Range<usize>)>> {
        let (k, v) = find(table, key)?;
        let Some(items) = v.get_ref().as_array() else {
            self.wrong_type(k, v, "an array of strings");
            return None;
        };
        let mut out = Vec::new();
        for item in items.iter() {
            match item.get_ref().as_str() {
                Some(s) => out.push((s, item.span())),
                None => {
                    self.wrong_type(k, item, "a string");
                    return None;
                }
            }
        }
        Some(out)
    }

    /// A list of strings, each kept as `check` turns it or reported where it stands;
    /// `slot` gets the good ones.
    fn string_list(
        &mut self,
        table: &DeTable<'_>,
        key: &'static str,
        slot: &mut Vec<String>,
        check: impl Fn(&str) -> Result<String, ConfigError>,
    ) {
        let Some(items) = self.strings(table, key) else {
            return;
        };
        let mut good = Vec::new();
        for (s, span) in items {
            match check(s) {
                Ok(v) => good.push(v),
                Err(e) => self.report(span, e),
            }
        }
        *slot = good;
    }

    /// `[audit] methods`: safe methods only (GET, HEAD, OPTIONS, TRACE), upper case.
    pub(super) fn safe_methods(
        &mut self,
        table: &DeTable<'_>,
        key: &'static str,
        slot: &mut Vec<String>,
    ) {
        self.string_list(table, key, slot, |m| {
            if ["GET", "HEAD", "OPTIONS", "TRACE"].contains(&m) {
                Ok(m.to_string())
            } else {
                Err(ConfigError::UnsafeMethod {
                    value: m.to_string(),
                })
            }
        });
    }

    /// A list of HTTP header names (stored lowercase).
    pub(super) fn header_names(
        &mut self,
        table: &DeTable<'_>,
        key: &'static str,
        slot: &mut Vec<String>,
    ) {
        self.string_list(table, key, slot, |s| {
            http::HeaderName::from_bytes(s.as_bytes())
                .map(|name| name.as_str().to_string())
                .map_err(|_| ConfigError::BadHeaderName {
                    key,
                    value: s.to_string(),
                })
        });
    }

    /// A list of path prefixes, each starting with `/`.
    pub(super) fn path_prefixes(
        &mut self,
        table: &DeTable<'_>,
        key: &'static str,
        slot: &mut Vec<String>,
    ) {
        self.string_list(table, key, slot, |s| {
            if s.starts_with('/') {
                Ok(s.to_string())
            } else {
                Err(ConfigError::BadPathPrefix {
                    value: s.to_string(),
                })
            }
        });
    }
}

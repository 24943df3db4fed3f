//! Owns the [`Walker`]: the state of one walk over a parsed lb.toml (the source, the
//! problems found so far, where things are) and the helpers every part of the walk uses:
//! reporting a problem, unknown keys with "did you mean", wrong types, finding a key.
//!
//! Must not touch: the schema (`schema.rs`), the validators (`validate.rs`), the walk's
//! order (`walk.rs`), I/O, shared state, `error.rs`.

use std::ops::Range;
use std::path::PathBuf;

use toml::de::{DeString, DeTable, DeValue};
use toml::Spanned;

use super::error::ConfigError;

type Entry<'i> = (&'i Spanned<DeString<'i>>, &'i Spanned<DeValue<'i>>);

/// Collects problems while building a `Config`. Every validator reports what is wrong
/// with its key and leaves the field alone, so the walk goes on and finds the rest.
pub(super) struct Walker<'s> {
    pub(super) src: &'s str,
    /// lb.toml's directory: relative file paths are read from there.
    pub(super) base: Option<PathBuf>,
    pub(super) diags: Vec<(Range<usize>, ConfigError)>,
    /// Spans of the `tls_cert` and `tls_key` values.
    pub(super) tls_spans: (Range<usize>, Range<usize>),
    /// Each `[error_pages]` status and the span of its value.
    pub(super) page_spans: Vec<(u16, Range<usize>)>,
    /// The span of `[admin] token_file`'s value.
    pub(super) token_file_span: Range<usize>,
    /// The last offset asked of [`Walker::line_of`] and its line.
    pub(super) line_cursor: (usize, usize),
}

impl<'s> Walker<'s> {
    pub(super) fn new(src: &'s str, base: Option<PathBuf>) -> Self {
        Walker {
            src,
            base,
            diags: Vec::new(),
            tls_spans: (0..0, 0..0),
            page_spans: Vec::new(),
            token_file_span: 0..0,
            line_cursor: (0, 1),
        }
    }

    pub(super) fn report(&mut self, span: Range<usize>, error: ConfigError) {
        self.diags.push((span, error));
    }

    /// The 1-based line of a byte offset, counted from the previous call's offset: the
    /// `[[backend]]` walk asks in file order, so a file of thousands of clones is scanned
    /// about once instead of once per clone.
    pub(super) fn line_of(&mut self, offset: usize) -> usize {
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
    pub(super) fn check_keys(
        &mut self,
        table: &DeTable<'_>,
        name: &str,
        allowed: &'static [&'static str],
    ) {
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
    pub(super) fn table<'t>(
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

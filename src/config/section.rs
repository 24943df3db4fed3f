//! Owns the `section!` macro, which turns one declaration per key (name, type, default,
//! validator) into the section's struct, its defaults, its list of allowed keys and the
//! code that reads each key; and the [`Section`] trait the walker reads a table through.
//!
//! Must not touch: the schema itself (that is `schema.rs`), value grammars (`values.rs`),
//! the walker's state. Nothing here does I/O.

use toml::de::DeTable;

use super::walker::Walker;

/// A table of lb.toml declared with `section!`.
pub(super) trait Section: Sized {
    /// How messages name the table: `"[proxy]"`, `"[[backend]]"`.
    const TABLE: &'static str;
    /// Every key the table may hold (any other is an unknown-key error).
    const KEYS: &'static [&'static str];
    /// Every key at its declared default.
    fn defaults() -> Self;
    /// Read each declared key present in `t` into `self` with its validator. A bad value is
    /// reported to `w` and leaves the field as it was.
    fn read_keys(&mut self, w: &mut Walker<'_>, t: &DeTable<'_>);
}

/// Declares one lb.toml table:
///
/// ```text
/// section! {
///     /// `[proxy]`: ...
///     #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
///     pub struct ProxyConfig in "[proxy]" with Default {
///         /// Opening a TCP connection to a clone; past it → 502.
///         connect_timeout: Duration = secs(1) => duration,
///         retries: u32 = 2 => count(0..=MAX_RETRIES),
///     }
/// }
/// ```
///
/// Each key is `NAME: TYPE = DEFAULT => VALIDATOR` or `=> VALIDATOR(ARGS)`, where the
/// validator is a method of `Walker` (see `validate.rs`) called as
/// `walker.VALIDATOR(table, "NAME", ARGS..., &mut field)`. `with Default` also implements
/// `Default` from the declared defaults (sections whose every key has a real default).
macro_rules! section {
    (
        $(#[$meta:meta])*
        pub struct $name:ident in $table:literal $(with $default:ident)? {
            $(
                $(#[$fmeta:meta])*
                $field:ident : $ty:ty = $init:expr => $check:ident $(( $($arg:expr),* ))?
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$fmeta])* pub $field: $ty, )*
        }

        impl $crate::config::section::Section for $name {
            const TABLE: &'static str = $table;
            const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];

            fn defaults() -> Self {
                $name { $($field: $init),* }
            }

            fn read_keys(
                &mut self,
                w: &mut $crate::config::walker::Walker<'_>,
                t: &::toml::de::DeTable<'_>,
            ) {
                $( w.$check(t, stringify!($field), $($($arg,)*)? &mut self.$field); )*
            }
        }

        $( section!(@$default $name); )?
    };
    (@Default $name:ident) => {
        impl Default for $name {
            fn default() -> Self {
                <Self as $crate::config::section::Section>::defaults()
            }
        }
    };
}
pub(super) use section;

//! Owns the validators of the DNS keys: a clone's `address` that may be a host name, an
//! `srv` name, and `[dns]`'s `resolver` and `refresh`. Same contract as `validate.rs`:
//! report a bad value at its position and leave the field alone.
//!
//! Must not touch: which keys exist (`schema.rs`), rules between keys (`walk_backends.rs`),
//! I/O (nothing is resolved here: `clonelb check --resolve` and the resolver task do that).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use toml::de::DeTable;

use super::error::ConfigError;
use super::values::{check_dns_name, parse_address, parse_clone_target, CloneTarget};
use super::walker::{find, Walker};

/// `[dns] refresh` may not go below this (a TTL of 0 is also clamped to it).
pub const MIN_REFRESH: Duration = Duration::from_secs(1);

impl Walker<'_> {
    /// A clone's `address`: `IP:PORT`, `localhost:PORT` or `HOST:PORT`; port 1..=65535.
    pub(super) fn clone_target(
        &mut self,
        table: &DeTable<'_>,
        key: &str,
        slot: &mut Option<CloneTarget>,
    ) {
        let Some((k, v)) = find(table, key) else {
            return;
        };
        let Some(s) = v.get_ref().as_str() else {
            self.wrong_type(k, v, "a string \"IP:PORT\" or \"HOST:PORT\"");
            return;
        };
        let reason = match parse_clone_target(s) {
            Ok(CloneTarget::Ip(a)) if a.port() == 0 => "port must be 1..=65535".into(),
            Ok(CloneTarget::Host { port: 0, .. }) => "port must be 1..=65535".into(),
            Ok(t) => {
                *slot = Some(t);
                return;
            }
            Err(reason) => reason,
        };
        let value = s.to_string();
        self.report(v.span(), ConfigError::BadAddress { value, reason });
    }

    /// An SRV name (`_service._proto.name`, any valid DNS name is taken).
    pub(super) fn srv_name(&mut self, table: &DeTable<'_>, key: &str, slot: &mut Option<String>) {
        let Some((s, span)) = self.string(table, key) else {
            return;
        };
        match check_dns_name(s) {
            Ok(()) => *slot = Some(s.to_string()),
            Err(reason) => {
                let value = s.to_string();
                self.report(span, ConfigError::BadSrvName { value, reason });
            }
        }
    }

    /// `[dns] resolver`: `IP:PORT`, or an IP alone for port 53.
    pub(super) fn dns_server(
        &mut self,
        table: &DeTable<'_>,
        key: &str,
        slot: &mut Option<SocketAddr>,
    ) {
        let Some((s, span)) = self.string(table, key) else {
            return;
        };
        let parsed = match s.parse::<IpAddr>() {
            Ok(ip) => Ok(SocketAddr::new(ip, 53)),
            Err(_) => parse_address(s),
        };
        match parsed {
            Ok(a) if a.port() != 0 => *slot = Some(a),
            Ok(_) => self.report(
                span,
                ConfigError::BadResolver {
                    value: s.to_string(),
                    reason: "port must be 1..=65535".into(),
                },
            ),
            Err(reason) => {
                let value = s.to_string();
                self.report(span, ConfigError::BadResolver { value, reason });
            }
        }
    }

    /// `[dns] refresh`: a duration from [`MIN_REFRESH`] to 24 h.
    pub(super) fn refresh(&mut self, table: &DeTable<'_>, key: &'static str, slot: &mut Duration) {
        let mut d = *slot;
        self.duration(table, key, &mut d);
        if d == *slot {
            return;
        }
        if d < MIN_REFRESH {
            if let Some((s, span)) = self.string(table, key) {
                let error = ConfigError::DurationOutOfRange {
                    key,
                    value: s.to_string(),
                    min: "1s",
                    max: "24h",
                };
                self.report(span, error);
            }
            return;
        }
        *slot = d;
    }
}

//! Owns the `[[backend]]` rules: each entry gives one clone (`address` an IP) or a name
//! resolved by DNS (`address` a host name, or `srv`), never both; names (by default the
//! address or SRV name as written), clone addresses and DNS names are unique, and a
//! duplicate is reported where it is written the second time, with the line of the first.
//!
//! Must not touch: I/O (nothing is resolved here), shared state, the request path.

use std::collections::HashMap;
use std::net::SocketAddr;

use toml::de::DeTable;

use super::error::ConfigError;
use super::schema::{BackendConfig, BackendEntry, DnsBackendConfig, DnsLookup};
use super::values::CloneTarget;
use super::walker::{find, Walker};

/// What one entry gives, once valid.
enum Source {
    Static(SocketAddr),
    Dns(DnsLookup),
}

impl Walker<'_> {
    /// `[[backend]]`: the clones written as IPs, and the entries resolved by DNS.
    pub(super) fn backends(
        &mut self,
        root: &DeTable<'_>,
    ) -> (Vec<BackendConfig>, Vec<DnsBackendConfig>) {
        let mut out = Vec::new();
        let mut dns = Vec::new();
        let Some((key, value)) = find(root, "backend") else {
            self.report(self.src.len()..self.src.len(), ConfigError::NoBackends);
            return (out, dns);
        };
        let Some(array) = value.get_ref().as_array() else {
            self.wrong_type(key, value, "an array of tables ([[backend]])");
            return (out, dns);
        };
        if array.is_empty() {
            self.report(key.span(), ConfigError::NoBackends);
        }
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut addresses: HashMap<SocketAddr, usize> = HashMap::new();
        let mut lookups: HashMap<DnsLookup, usize> = HashMap::new();
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
            let entry: BackendEntry = self.read(t);
            let address = find(t, "address");
            let srv = find(t, "srv");
            match (&address, &srv) {
                (None, None) => self.report(
                    item.span(),
                    ConfigError::MissingKey {
                        table: "[[backend]]".into(),
                        key: "address",
                    },
                ),
                (Some(_), Some((_, v))) => self.report(v.span(), ConfigError::AddressAndSrv),
                (None, Some(_)) => {
                    if let Some((_, w)) = find(t, "weight") {
                        self.report(w.span(), ConfigError::WeightWithSrv);
                    }
                }
                (Some(_), None) => {}
            }
            // A name of the wrong type (reported) is treated as absent.
            let name_span = find(t, "name")
                .filter(|(_, v)| v.get_ref().as_str().is_some())
                .map(|(_, v)| v.span());
            let mut name = entry.name.clone();
            if let Some(span) = &name_span {
                if name.is_empty() {
                    self.report(span.clone(), ConfigError::EmptyName);
                } else if let Some(first) = names.get(&name) {
                    let error = ConfigError::DuplicateName {
                        name: name.clone(),
                        first_line: *first,
                    };
                    self.report(span.clone(), error);
                } else {
                    let line = self.line_of(span.start);
                    names.insert(name.clone(), line);
                }
            }
            // What the entry gives; an invalid or conflicting one (reported) gives nothing.
            let (source, written) = match (entry.address, entry.srv, address, srv) {
                (Some(CloneTarget::Ip(a)), None, Some((_, v)), None) => (Source::Static(a), v),
                (Some(CloneTarget::Host { host, port }), None, Some((_, v)), None) => {
                    (Source::Dns(DnsLookup::Host { host, port }), v)
                }
                (None, Some(name), None, Some((_, v))) => (Source::Dns(DnsLookup::Srv { name }), v),
                _ => continue,
            };
            let line = self.line_of(written.span().start);
            match &source {
                Source::Static(a) => {
                    if let Some(first) = addresses.get(a) {
                        let error = ConfigError::DuplicateAddress {
                            address: *a,
                            first_line: *first,
                        };
                        self.report(written.span(), error);
                        continue;
                    }
                    addresses.insert(*a, line);
                }
                Source::Dns(lookup) => {
                    if let Some(first) = lookups.get(lookup) {
                        let error = ConfigError::DuplicateSource {
                            name: written.get_ref().as_str().unwrap_or_default().into(),
                            first_line: *first,
                        };
                        self.report(written.span(), error);
                        continue;
                    }
                    lookups.insert(lookup.clone(), line);
                }
            }
            if name_span.is_none() {
                // The default name is the address (or SRV name) as written; it must not
                // collide with an explicit name either.
                let as_written = written.get_ref().as_str().unwrap_or_default();
                if let Some(first) = names.get(as_written) {
                    let error = ConfigError::DuplicateName {
                        name: as_written.to_string(),
                        first_line: *first,
                    };
                    self.report(written.span(), error);
                    continue;
                }
                names.insert(as_written.to_string(), line);
                name = as_written.to_string();
            }
            match source {
                Source::Static(address) => out.push(BackendConfig {
                    address,
                    name,
                    weight: entry.weight,
                }),
                Source::Dns(lookup) => dns.push(DnsBackendConfig {
                    lookup,
                    name,
                    weight: entry.weight,
                    after_static: out.len(),
                }),
            }
        }
        (out, dns)
    }
}

//! `clonelb check --resolve`: each DNS name of lb.toml looked up once, as the resolver
//! task would, and what it gave, one line per name.

use std::fmt::Write as _;

use super::resolve::Resolver;
use super::{Answer, DnsLookup};
use crate::config::Config;

/// One line per DNS name of `config`, in lb.toml's order, and whether every lookup
/// answered (an empty answer counts: it is an answer). Runs its own runtime; an error
/// when the resolver cannot be set up.
pub fn resolve_all(config: &Config) -> Result<(Vec<String>, bool), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    rt.block_on(async {
        let resolver = Resolver::new(&config.dns)?;
        let mut lines = Vec::new();
        let mut all_ok = true;
        for entry in &config.dns_backends {
            let answer = resolver.resolve(&entry.lookup, entry.weight).await;
            all_ok &= !matches!(answer, Answer::Failed { .. });
            lines.push(describe(&entry.lookup, &answer));
        }
        Ok((lines, all_ok))
    })
}

/// `app.internal: 2 clones: 10.0.0.5:8080, 10.0.0.6:8080 (ttl 30s)`, `... no records
/// (NOERROR): no clones`, or `... lookup failed (timeout): ...`.
fn describe(lookup: &DnsLookup, answer: &Answer) -> String {
    let name = lookup.name();
    match answer {
        Answer::Clones { clones, .. } if clones.is_empty() => {
            format!("{name}: no records (NOERROR)")
        }
        Answer::Clones { clones, ttl } => {
            let mut s = format!(
                "{name}: {} clone{}: ",
                clones.len(),
                if clones.len() == 1 { "" } else { "s" }
            );
            for (i, c) in clones.iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(s, "{sep}{}", c.address);
                if matches!(lookup, DnsLookup::Srv { .. }) {
                    let _ = write!(s, " weight {}", c.weight);
                }
            }
            if let Some(ttl) = ttl {
                let _ = write!(s, " (ttl {}s)", ttl.as_secs());
            }
            s
        }
        Answer::Failed { result, error } => {
            format!("{name}: lookup failed ({}): {error}", result.as_str())
        }
    }
}

//! DNS discovery of clones: what one lookup of a `[[backend]]` name gives ([`Answer`]),
//! how it is told apart ([`LookupResult`]: ok, nxdomain, nodata, timeout, error), when the
//! next lookup is due ([`next_lookup`]), and the lookup itself over hickory-resolver
//! ([`resolve::Resolver`]).
//!
//! Nothing here runs on the request path or holds up a reload: the resolver task
//! (`control::dns`) calls [`resolve::Resolver::resolve`] on the control runtime and
//! publishes what it got; `clonelb check --resolve` calls it once per name.
//!
//! Owns: the lookup and its classification. Must not touch: the table, clones, which
//! answer wins (the control plane decides: a failed lookup changes nothing).

pub mod check;
pub mod resolve;

use std::net::SocketAddr;
use std::time::Duration;

pub use crate::config::DnsLookup;

/// The shortest time between two lookups of a name (`[dns] refresh`'s minimum; a TTL of 0
/// is clamped to it).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How a lookup ended (`clonelb_dns_lookups_total{result}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LookupResult {
    /// Records: these are the clones.
    Ok,
    /// NXDOMAIN: the name does not exist (the last set is kept).
    NxDomain,
    /// NOERROR without records: a real answer, the name has no clones now.
    NoData,
    /// No answer in time (the last set is kept).
    Timeout,
    /// SERVFAIL, REFUSED, a network error, ... (the last set is kept).
    Error,
}

impl LookupResult {
    pub const ALL: [LookupResult; 5] = [
        LookupResult::Ok,
        LookupResult::NxDomain,
        LookupResult::NoData,
        LookupResult::Timeout,
        LookupResult::Error,
    ];

    /// The metric's and `/status`'s word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            LookupResult::Ok => "ok",
            LookupResult::NxDomain => "nxdomain",
            LookupResult::NoData => "nodata",
            LookupResult::Timeout => "timeout",
            LookupResult::Error => "error",
        }
    }

    /// Its position in [`LookupResult::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One clone a lookup found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Found {
    pub address: SocketAddr,
    pub weight: u32,
}

/// What one lookup of a name gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The clones, sorted by address, each address once (empty: NOERROR without records),
    /// and the lowest TTL of the records they came from.
    Clones {
        clones: Vec<Found>,
        ttl: Option<Duration>,
    },
    /// No usable answer: NXDOMAIN, a timeout or an error, and why.
    Failed { result: LookupResult, error: String },
}

impl Answer {
    /// The answer's result for the metric.
    pub fn result(&self) -> LookupResult {
        match self {
            Answer::Clones { clones, .. } if clones.is_empty() => LookupResult::NoData,
            Answer::Clones { .. } => LookupResult::Ok,
            Answer::Failed { result, .. } => *result,
        }
    }

    /// Clones from `found` (sorted, the first of each address kept).
    pub fn clones(mut found: Vec<Found>, ttl: Option<Duration>) -> Answer {
        // A stable sort by address keeps the first record of an address first.
        found.sort_by_key(|f| f.address);
        found.dedup_by_key(|f| f.address);
        Answer::Clones { clones: found, ttl }
    }
}

/// When to look `answer`'s name up again: after `refresh`, or the records' TTL when that
/// is shorter; never sooner than [`MIN_INTERVAL`]. A failed lookup is retried after
/// `refresh`.
pub fn next_lookup(refresh: Duration, answer: &Answer) -> Duration {
    let due = match answer {
        Answer::Clones { ttl: Some(ttl), .. } => refresh.min(*ttl),
        _ => refresh,
    };
    due.max(MIN_INTERVAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(a: &str, weight: u32) -> Found {
        Found {
            address: a.parse().unwrap(),
            weight,
        }
    }

    #[test]
    fn a_ttl_shorter_than_refresh_is_honoured_and_zero_is_clamped_to_a_second() {
        let s = Duration::from_secs;
        let with = |ttl| Answer::clones(vec![found("127.0.0.1:1", 1)], ttl);
        assert_eq!(next_lookup(s(5), &with(Some(s(2)))), s(2));
        assert_eq!(next_lookup(s(5), &with(Some(s(30)))), s(5));
        assert_eq!(next_lookup(s(5), &with(Some(s(0)))), s(1));
        assert_eq!(next_lookup(s(5), &with(None)), s(5));
        let failed = Answer::Failed {
            result: LookupResult::Timeout,
            error: "request timed out".into(),
        };
        assert_eq!(next_lookup(s(5), &failed), s(5));
        // An empty answer has no records, so no TTL: refresh.
        assert_eq!(next_lookup(s(3), &Answer::clones(vec![], None)), s(3));
    }

    #[test]
    fn clones_are_sorted_and_an_address_counts_once() {
        let a = Answer::clones(
            vec![
                found("127.0.0.3:80", 1),
                found("127.0.0.1:80", 2),
                found("127.0.0.3:80", 5),
            ],
            None,
        );
        let Answer::Clones { clones, .. } = &a else {
            panic!("clones")
        };
        assert_eq!(
            clones,
            &[found("127.0.0.1:80", 2), found("127.0.0.3:80", 1)]
        );
        assert_eq!(a.result(), LookupResult::Ok);
        assert_eq!(Answer::clones(vec![], None).result(), LookupResult::NoData);
        for (i, r) in LookupResult::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
    }
}

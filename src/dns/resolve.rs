//! The lookup over hickory-resolver: A and AAAA of a host name (both asked at once; each
//! address with the entry's port is a clone), or SRV records (lowest priority only, weights
//! clamped to 1..=1000) and their targets' addresses (from the answer's additional
//! section, else looked up).
//!
//! hickory reports NXDOMAIN and an empty answer alike as "no records found"; they are told
//! apart by the response code. Its cache is off, so every lookup asks the server: the
//! schedule is [`super::next_lookup`]'s.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ProtocolConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::TokioResolver;

use super::{Answer, DnsLookup, Found, LookupResult};
use crate::config::{DnsConfig, MAX_WEIGHT};

/// One query's wait for an answer, per attempt.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// hickory's retries after a query's first try (so a server that never answers fails a
/// lookup after 2 × [`QUERY_TIMEOUT`] = 4 s).
pub const QUERY_RETRIES: usize = 1;

/// A resolver for `[dns]`: the given server, or the system's.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

/// One query's outcome.
enum One {
    Records(Vec<Record>, Vec<Record>),
    NxDomain,
    Failed(LookupResult, String),
}

impl Resolver {
    /// The resolver `[dns]` asks for. Fails only when the system's configuration cannot be
    /// read (no `/etc/resolv.conf`).
    pub fn new(config: &DnsConfig) -> Result<Resolver, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match config.resolver {
            Some(server) => {
                let connections = [ProtocolConfig::Udp, ProtocolConfig::Tcp]
                    .into_iter()
                    .map(|p| {
                        let mut c = ConnectionConfig::new(p);
                        c.port = server.port();
                        c
                    })
                    .collect();
                let mut rc = ResolverConfig::default();
                rc.add_name_server(NameServerConfig::new(server.ip(), true, connections));
                let mut b = TokioResolver::builder_with_config(rc, provider);
                // A given server answers everything: /etc/hosts is not consulted.
                b.options_mut().use_hosts_file = ResolveHosts::Never;
                b
            }
            None => TokioResolver::builder(provider)
                .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?,
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        opts.timeout = QUERY_TIMEOUT;
        opts.attempts = QUERY_RETRIES;
        // No cache: every lookup asks the server (the schedule is next_lookup's), and the
        // records keep the TTLs the server gave (`check --resolve` prints them).
        opts.cache_size = 0;
        let inner = builder
            .build()
            .map_err(|e| format!("cannot set up the DNS resolver: {e}"))?;
        Ok(Resolver { inner })
    }

    /// Look `lookup` up once. `weight` is each clone's for a host name (SRV records carry
    /// their own).
    pub async fn resolve(&self, lookup: &DnsLookup, weight: u32) -> Answer {
        match lookup {
            DnsLookup::Host { host, port } => match self.addresses(host).await {
                Ok((ips, ttl)) => {
                    let found = ips
                        .into_iter()
                        .map(|ip| Found {
                            address: SocketAddr::new(ip, *port),
                            weight,
                        })
                        .collect();
                    Answer::clones(found, ttl)
                }
                Err(failed) => failed,
            },
            DnsLookup::Srv { name } => self.srv(name).await,
        }
    }

    /// The A and AAAA records of `host`, asked at once; both must answer (records, or
    /// none) for the lookup to count: a failed half would make the other family's clones
    /// come and go.
    async fn addresses(&self, host: &str) -> Result<(Vec<IpAddr>, Option<Duration>), Answer> {
        let (a, aaaa) = tokio::join!(
            self.query(host, RecordType::A),
            self.query(host, RecordType::AAAA)
        );
        let mut records = Vec::new();
        let mut nxdomain = false;
        for one in [a, aaaa] {
            match one {
                One::Records(answers, _) => records.extend(answers),
                One::NxDomain => nxdomain = true,
                One::Failed(result, error) => return Err(Answer::Failed { result, error }),
            }
        }
        let ips: Vec<IpAddr> = records.iter().filter_map(ip_of).collect();
        if ips.is_empty() && nxdomain {
            return Err(nxdomain_answer(host));
        }
        Ok((ips, min_ttl(&records, |r| ip_of(r).is_some())))
    }

    /// The SRV records of `name` at their lowest priority, each target's addresses.
    async fn srv(&self, name: &str) -> Answer {
        let (answers, additionals) = match self.query(name, RecordType::SRV).await {
            One::Records(answers, additionals) => (answers, additionals),
            One::NxDomain => return nxdomain_answer(name),
            One::Failed(result, error) => return Answer::Failed { result, error },
        };
        let srvs: Vec<&hickory_resolver::proto::rr::rdata::SRV> = answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => Some(s),
                _ => None,
            })
            .collect();
        let Some(lowest) = srvs.iter().map(|s| s.priority).min() else {
            return Answer::clones(Vec::new(), None);
        };
        let mut ttl = min_ttl(&answers, |r| matches!(r.data, RData::SRV(_)));
        let mut found = Vec::new();
        for s in srvs.iter().filter(|s| s.priority == lowest) {
            // A target of "." says the service is not available there.
            if s.target.is_root() {
                continue;
            }
            let weight = u32::from(s.weight).clamp(1, MAX_WEIGHT);
            let given: Vec<&Record> = additionals
                .iter()
                .filter(|r| names_equal(&r.name, &s.target) && ip_of(r).is_some())
                .collect();
            let ips = if given.is_empty() {
                match self.addresses(&s.target.to_ascii()).await {
                    Ok((ips, t)) => {
                        ttl = shorter(ttl, t);
                        ips
                    }
                    Err(Answer::Failed { result, error }) => {
                        let error = format!("target {}: {error}", s.target);
                        return Answer::Failed { result, error };
                    }
                    Err(other) => return other,
                }
            } else {
                let t = given.iter().map(|r| r.ttl).min();
                ttl = shorter(ttl, t.map(|t| Duration::from_secs(u64::from(t))));
                given.iter().filter_map(|r| ip_of(r)).collect()
            };
            found.extend(ips.into_iter().map(|ip| Found {
                address: SocketAddr::new(ip, s.port),
                weight,
            }));
        }
        Answer::clones(found, ttl)
    }

    /// One query: its answers and additionals, NXDOMAIN, or why it failed. An empty
    /// NOERROR answer is `Records` with none.
    async fn query(&self, name: &str, kind: RecordType) -> One {
        match self.inner.lookup(name, kind).await {
            Ok(lookup) => One::Records(lookup.answers().to_vec(), lookup.additionals().to_vec()),
            Err(NetError::Dns(DnsError::NoRecordsFound(no))) => {
                if no.response_code == ResponseCode::NXDomain {
                    One::NxDomain
                } else {
                    One::Records(Vec::new(), Vec::new())
                }
            }
            Err(NetError::Timeout) => One::Failed(
                LookupResult::Timeout,
                format!("{kind} query timed out (no answer in {QUERY_TIMEOUT:?}, twice)"),
            ),
            Err(NetError::Dns(DnsError::ResponseCode(code))) => {
                One::Failed(LookupResult::Error, format!("{kind} query: {code}"))
            }
            Err(e) => One::Failed(LookupResult::Error, format!("{kind} query: {e}")),
        }
    }
}

fn nxdomain_answer(name: &str) -> Answer {
    Answer::Failed {
        result: LookupResult::NxDomain,
        error: format!("NXDOMAIN: {name} does not exist"),
    }
}

/// The address of an A or AAAA record.
fn ip_of(r: &Record) -> Option<IpAddr> {
    match &r.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    }
}

/// The lowest TTL of the records `keep` takes.
fn min_ttl(records: &[Record], keep: impl Fn(&Record) -> bool) -> Option<Duration> {
    records
        .iter()
        .filter(|r| keep(r))
        .map(|r| Duration::from_secs(u64::from(r.ttl)))
        .min()
}

fn shorter(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// DNS names compare without case and without the final dot.
fn names_equal(a: &Name, b: &Name) -> bool {
    let (a, b) = (a.to_ascii(), b.to_ascii());
    a.trim_end_matches('.')
        .eq_ignore_ascii_case(b.trim_end_matches('.'))
}

//! Clones from DNS (issue 17): `[[backend]] address = "NAME:PORT"` (one clone per A/AAAA
//! record) and `srv = "NAME"` (one per SRV record of the lowest priority), re-resolved in
//! the background, against the steerable DNS server of tests/common/dns.rs (UDP on
//! 127.0.0.1, its records on 127.0.0.0/8 only) and real balancers.
//!
//! The first tests check that DNS server itself (and `clones_on_ips`); they need nothing
//! from the balancer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::dns::{ask, srv, DnsServer, Mode, RecordType};
use common::*;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;

const ALL3: [&str; 3] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];

// ---------------------------------------------------------------------------------------
// The DNS server and the helpers
// ---------------------------------------------------------------------------------------

const ASK: Duration = Duration::from_secs(5);

fn ips_of(m: &hickory_resolver::proto::op::Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn dns_server_answers_a_aaaa_and_srv_records() {
    let dns = DnsServer::start();
    dns.set_a("App.Test.", &ALL3, 30);
    let m = ask(dns.addr, "app.test.", RecordType::A, ASK)
        .await
        .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.metadata.authoritative && m.metadata.recursion_available);
    assert!(m.metadata.recursion_desired, "RD is copied from the query");
    assert_eq!(m.queries.len(), 1);
    assert_eq!(m.queries[0].name().to_ascii(), "app.test.");
    assert_eq!(m.queries[0].query_type(), RecordType::A);
    assert_eq!(ips_of(&m), ALL3);
    assert!(m.answers.iter().all(|r| r.ttl == 30));
    // Case-insensitive; the answer keeps the name as asked.
    let m = ask(dns.addr, "APP.test", RecordType::A, ASK).await.unwrap();
    assert_eq!(ips_of(&m), ALL3);
    assert_eq!(m.answers[0].name.to_ascii().to_lowercase(), "app.test.");

    // A known name without records of the type: NOERROR, nothing ("nodata").
    let m = ask(dns.addr, "app.test", RecordType::AAAA, ASK)
        .await
        .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert!(m.answers.is_empty());
    dns.set_aaaa("app.test", &["::1"], 5);
    let m = ask(dns.addr, "app.test", RecordType::AAAA, ASK)
        .await
        .unwrap();
    assert_eq!(ips_of(&m), ["::1"]);
    assert_eq!(m.answers[0].ttl, 5);

    // SRV, with and without the targets in the additional section.
    dns.set_a("a.svc.test", &["127.0.0.2"], 7);
    dns.set_srv(
        "_http._tcp.svc.test",
        &[
            srv("a.svc.test", 8001, 3, 10),
            srv("b.svc.test.", 8002, 0, 20),
        ],
        9,
    );
    let m = ask(dns.addr, "_http._tcp.svc.test", RecordType::SRV, ASK)
        .await
        .unwrap();
    let srvs: Vec<_> = m
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::SRV(s) => (s.target.to_ascii(), s.port, s.weight, s.priority, r.ttl),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        srvs,
        [
            ("a.svc.test.".to_string(), 8001, 3, 10, 9),
            ("b.svc.test.".to_string(), 8002, 0, 20, 9)
        ]
    );
    assert!(m.additionals.is_empty(), "{:?}", m.additionals);
    dns.set_srv_additional(true);
    let m = ask(dns.addr, "_http._tcp.svc.test", RecordType::SRV, ASK)
        .await
        .unwrap();
    let extra: Vec<_> = m
        .additionals
        .iter()
        .map(|r| (r.name.to_ascii(), r.data.clone(), r.ttl))
        .collect();
    // b.svc.test has no records: nothing for it.
    assert_eq!(
        extra,
        [(
            "a.svc.test.".to_string(),
            RData::A(hickory_resolver::proto::rr::rdata::A(
                "127.0.0.2".parse().unwrap()
            )),
            7
        )]
    );

    // Counted per (name, type), case-insensitively.
    assert_eq!(dns.queries("app.test", RecordType::A), 2);
    assert_eq!(dns.queries("APP.TEST.", RecordType::AAAA), 2);
    assert_eq!(dns.queries("_http._tcp.svc.test", RecordType::SRV), 2);
    assert_eq!(dns.total_queries(), 6);
    let times = dns.query_times("app.test", RecordType::A);
    assert!(times[0] <= times[1]);
}

#[tokio::test]
async fn dns_server_modes_nxdomain_empty_servfail() {
    let dns = DnsServer::start();
    let code = |m: Option<hickory_resolver::proto::op::Message>| {
        let m = m.expect("an answer");
        (m.metadata.response_code, m.answers.len())
    };
    // Unknown: NXDOMAIN.
    assert_eq!(
        code(ask(dns.addr, "nobody.test", RecordType::A, ASK).await),
        (ResponseCode::NXDomain, 0)
    );
    dns.set_a("app.test", &["127.0.0.1"], 1);
    assert_eq!(
        code(ask(dns.addr, "app.test", RecordType::A, ASK).await),
        (ResponseCode::NoError, 1)
    );
    dns.set_mode("app.test", Mode::NxDomain);
    assert_eq!(
        code(ask(dns.addr, "app.test", RecordType::A, ASK).await),
        (ResponseCode::NXDomain, 0)
    );
    dns.set_mode("app.test", Mode::Empty);
    for t in [RecordType::A, RecordType::AAAA, RecordType::SRV] {
        assert_eq!(
            code(ask(dns.addr, "app.test", t, ASK).await),
            (ResponseCode::NoError, 0)
        );
    }
    dns.set_mode("app.test", Mode::ServFail);
    assert_eq!(
        code(ask(dns.addr, "app.test", RecordType::A, ASK).await),
        (ResponseCode::ServFail, 0)
    );
    dns.set_mode("app.test", Mode::Answer);
    assert_eq!(
        code(ask(dns.addr, "app.test", RecordType::A, ASK).await),
        (ResponseCode::NoError, 1)
    );
    // An empty list keeps the name known: nodata, not NXDOMAIN.
    dns.set_a("app.test", &[], 1);
    assert_eq!(
        code(ask(dns.addr, "app.test", RecordType::A, ASK).await),
        (ResponseCode::NoError, 0)
    );
    dns.remove("app.test");
    assert_eq!(
        code(ask(dns.addr, "app.test", RecordType::A, ASK).await),
        (ResponseCode::NXDomain, 0)
    );
}

#[tokio::test]
async fn dns_server_silent_and_hang_answer_nothing_but_count() {
    let dns = DnsServer::start();
    dns.set_a("quiet.test", &["127.0.0.1"], 1);
    dns.set_a("loud.test", &["127.0.0.2"], 1);
    dns.set_mode("quiet.test", Mode::Silent);
    // "Never answers" can only be checked for a while: 300 ms, where an answer takes
    // microseconds (the loud name's, asked right after, shows the server is answering).
    let wait = Duration::from_millis(300);
    assert!(ask(dns.addr, "quiet.test", RecordType::A, wait)
        .await
        .is_none());
    assert!(ask(dns.addr, "loud.test", RecordType::A, ASK)
        .await
        .is_some());
    assert_eq!(dns.queries("quiet.test", RecordType::A), 1);

    dns.set_hang(true);
    assert!(ask(dns.addr, "loud.test", RecordType::A, wait)
        .await
        .is_none());
    assert!(ask(dns.addr, "nobody.test", RecordType::A, wait)
        .await
        .is_none());
    assert_eq!(dns.queries("loud.test", RecordType::A), 2);
    assert_eq!(dns.queries("nobody.test", RecordType::A), 1);
    dns.set_hang(false);
    let m = ask(dns.addr, "loud.test", RecordType::A, ASK)
        .await
        .unwrap();
    assert_eq!(ips_of(&m), ["127.0.0.2"]);
    dns.set_mode("quiet.test", Mode::Answer);
    let m = ask(dns.addr, "quiet.test", RecordType::A, ASK)
        .await
        .unwrap();
    assert_eq!(ips_of(&m), ["127.0.0.1"]);
    assert_eq!(dns.total_queries(), 6);
}

/// The server speaks well enough for hickory's own resolver (what clonelb uses).
#[tokio::test]
async fn dns_server_serves_the_hickory_resolver() {
    use hickory_resolver::config::{NameServerConfig, ResolverConfig};
    use hickory_resolver::net::runtime::TokioRuntimeProvider;

    let dns = DnsServer::start();
    dns.set_a("app.test", &ALL3, 30);
    dns.set_a("a.svc.test", &["127.0.0.1"], 30);
    dns.set_srv("_http._tcp.svc.test", &[srv("a.svc.test", 9001, 1, 1)], 30);
    dns.set_mode("gone.test", Mode::NxDomain);
    dns.set_a("gone.test", &["127.0.0.1"], 30);

    let mut ns = NameServerConfig::udp(dns.addr.ip());
    ns.connections[0].port = dns.addr.port();
    let config = ResolverConfig::from_parts(None, vec![], vec![ns]);
    let resolver =
        hickory_resolver::Resolver::builder_with_config(config, TokioRuntimeProvider::default())
            .build()
            .unwrap();
    let ips: Vec<String> = resolver
        .lookup_ip("app.test.")
        .await
        .unwrap()
        .iter()
        .map(|ip| ip.to_string())
        .collect();
    assert_eq!(ips, ALL3);
    let lookup = resolver.srv_lookup("_http._tcp.svc.test.").await.unwrap();
    let RData::SRV(s) = &lookup.answers()[0].data else {
        panic!("{lookup:?}")
    };
    assert_eq!(
        (s.port, s.target.to_ascii().as_str()),
        (9001, "a.svc.test.")
    );
    let err = resolver.lookup_ip("gone.test.").await.unwrap_err();
    assert!(err.is_nx_domain(), "{err:?}");
    assert!(dns.queries("app.test", RecordType::A) >= 1);
}

#[tokio::test]
async fn clones_on_ips_share_one_port() {
    let (port, clones) = clones_on_ips("app", &ALL3);
    assert_eq!(clones.len(), 3);
    for (c, ip) in clones.iter().zip(ALL3) {
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        assert_eq!(c.addr, addr);
        assert_eq!(c.name, format!("app/{addr}"));
        assert_eq!(get(addr, "/").await.clone_name(), c.name);
    }
}

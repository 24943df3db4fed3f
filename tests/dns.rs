//! Clones from DNS (issue 17): `[[backend]] address = "NAME:PORT"` (one clone per A/AAAA
//! record) and `srv = "NAME"` (one per SRV record of the lowest priority), re-resolved in
//! the background, against the steerable DNS server of tests/common/dns.rs (UDP on
//! 127.0.0.1, its records on 127.0.0.0/8 only) and real balancers.
//!
//! The first tests check that DNS server itself (and `clones_on_ips`); they need nothing
//! from the balancer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::dns::{ask, srv, DnsServer, Mode, RecordType};
use common::*;
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::RData;
use http::{Method, StatusCode};
use serde_json::Value;

const ALL3: [&str; 3] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];

/// How long a change of the DNS answer may take to show in /status with `refresh = "1s"`
/// and TTLs of 1 s (about 2 s expected; generous for a busy 2-core machine).
const SETTLE: Duration = Duration::from_secs(10);

/// How long a failed lookup (a silent server: the resolver's timeout and retries) may take
/// to be noticed. Not known to the tests: generous.
const LOOKUP_FAILS: Duration = Duration::from_secs(60);

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

// ---------------------------------------------------------------------------------------
// Helpers for the balancer's side
// ---------------------------------------------------------------------------------------

/// lb.toml: round-robin, an admin listener, `[dns]` asking `dns` every `refresh`, then
/// `rest` (the `[[backend]]` entries and any other section).
fn lb_toml(dns: &DnsServer, refresh: &str, rest: &str) -> String {
    format!(
        "[listen]\nhttp = \"127.0.0.1:0\"\n[balancer]\nstrategy = \"round-robin\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[dns]\nresolver = \"{}\"\nrefresh = \"{refresh}\"\n{rest}\n",
        dns.resolver()
    )
}

/// A `[[backend]]` entry for a host name, with `name` when given.
fn address_entry(host_port: &str, name: Option<&str>) -> String {
    let mut s = format!("[[backend]]\naddress = \"{host_port}\"\n");
    if let Some(n) = name {
        s.push_str(&format!("name = \"{n}\"\n"));
    }
    s
}

/// The `[[backend]]` entry most tests use: `app.test:PORT`, its clones named `app/IP:PORT`.
fn app_entry(port: u16) -> String {
    address_entry(&format!("app.test:{port}"), Some("app"))
}

fn static_entry(c: &TestClone) -> String {
    format!(
        "[[backend]]\naddress = \"{}\"\nname = \"{}\"\n",
        c.addr, c.name
    )
}

async fn status(admin: SocketAddr) -> Value {
    let (code, body) = admin_call(admin, Method::GET, "/status", "").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn backends(v: &Value) -> &Vec<Value> {
    v["backends"].as_array().expect("backends")
}

/// address → state of every clone listed.
fn states(v: &Value) -> BTreeMap<String, String> {
    backends(v)
        .iter()
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_string(),
                b["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The listed clone at `addr`.
fn clone_at(v: &Value, addr: SocketAddr) -> Option<&Value> {
    let a = addr.to_string();
    backends(v).iter().find(|b| b["address"] == a.as_str())
}

/// Exactly these clones (by address) and states.
fn exactly(want: &[(SocketAddr, &str)]) -> BTreeMap<String, String> {
    want.iter()
        .map(|(a, s)| (a.to_string(), s.to_string()))
        .collect()
}

/// Poll /status until `pred` holds (panics with the last /status after `limit`); returns it.
async fn wait_status(
    admin: SocketAddr,
    limit: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + limit;
    loop {
        let v = status(admin).await;
        if pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}; /status: {v:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `clonelb_dns_lookups_total{name="NAME",result="RESULT"}` (0 when absent).
async fn lookups(admin: SocketAddr, name: &str, result: &str) -> u64 {
    let (code, text) = admin_call(admin, Method::GET, "/metrics", "").await;
    assert_eq!(code, StatusCode::OK, "{text}");
    let (n, r) = (format!("name=\"{name}\""), format!("result=\"{result}\""));
    text.lines()
        .filter(|l| l.starts_with("clonelb_dns_lookups_total{") && l.contains(&n) && l.contains(&r))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Failed lookups of `name` so far (every result but `ok` and `nodata`).
async fn failed_lookups(admin: SocketAddr, name: &str) -> u64 {
    let mut n = 0;
    for r in ["nxdomain", "timeout", "error"] {
        n += lookups(admin, name, r).await;
    }
    n
}

/// `n` GETs of `/` over one connection, each 200: who answered, tallied.
async fn spread(addr: SocketAddr, n: usize) -> std::collections::HashMap<String, u64> {
    let mut client = Client::connect(addr).await;
    let mut names = Vec::with_capacity(n);
    for i in 0..n {
        let a = client.get("/").await;
        assert_eq!(a.status, 200, "request {i}: {}", a.text());
        names.push(a.clone_name());
    }
    tally(names)
}

/// `n` requests split evenly over `clones` (round-robin: exactly, give or take a
/// request or two where the table was rebuilt mid-way, or 5 %), and to nobody else.
fn fair(t: &std::collections::HashMap<String, u64>, clones: &[&TestClone], n: u64) -> bool {
    let share = n / clones.len() as u64;
    let slack = (share / 20).max(2);
    t.values().sum::<u64>() == n
        && t.keys().all(|k| clones.iter().any(|c| c.name == *k))
        && clones.iter().all(|c| {
            let got = t.get(&c.name).copied().unwrap_or(0);
            got + slack >= share && got <= share + slack
        })
}

/// Log lines containing every one of `needles`.
fn lines_with(lb: &BinLb, needles: &[&str]) -> Vec<String> {
    lb.log_lines()
        .into_iter()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .collect()
}

// ---------------------------------------------------------------------------------------
// A records
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_a_records_are_three_clones_one_leaves_draining_and_comes_back_new() {
    let dns = DnsServer::start();
    let (port, clones) = clones_on_ips("app", &ALL3);
    let [c1, c2, c3] = &clones[..] else {
        unreachable!()
    };
    dns.set_a("app.test", &ALL3, 1);
    let lb = spawn_lb(&lb_toml(
        &dns,
        "1s",
        &format!("{}weight = 2\n", app_entry(port)),
    ));
    let admin = lb.admin_addr().unwrap();
    let all_up = exactly(&[(c1.addr, "up"), (c2.addr, "up"), (c3.addr, "up")]);
    let v = wait_status(admin, SETTLE, "three clones up", |v| states(v) == all_up).await;
    for c in &clones {
        let b = clone_at(&v, c.addr).unwrap();
        // Named PREFIX/IP:PORT, which is also the test clone's own name.
        assert_eq!(b["name"], c.name.as_str(), "{b:#}");
        assert_eq!(b["source"], "app.test", "{b:#}");
        assert_eq!(b["weight"], 2, "{b:#}");
        assert!(b["resolved_at"].is_string(), "{b:#}");
    }
    let d = &v["dns"][0];
    assert_eq!(v["dns"].as_array().unwrap().len(), 1, "{v:#}");
    assert_eq!(d["name"], "app.test", "{d:#}");
    assert_eq!(d["type"], "address", "{d:#}");
    assert_eq!(d["result"], "ok", "{d:#}");
    assert_eq!(d["clones"], 3, "{d:#}");
    assert!(d["error"].is_null(), "{d:#}");
    assert!(
        d["resolved_at"].is_string() && d["last_lookup"].is_string(),
        "{d:#}"
    );
    assert!(lookups(admin, "app.test", "ok").await >= 1);

    // Round-robin: an even spread (exactly 100 each expected; a little slack).
    let t = spread(lb.http_addr(), 300).await;
    assert!(fair(&t, &clones.iter().collect::<Vec<_>>(), 300), "{t:?}");

    // A request held on the third clone (one at a time until one lands there).
    let addr = lb.http_addr();
    let mut holds = Vec::new();
    for _ in 0..6 {
        let before = c1.held() + c2.held() + c3.held();
        holds.push(tokio::spawn(async move { get(addr, "/hold").await }));
        assert!(
            eventually(SETTLE, || c1.held() + c2.held() + c3.held() > before).await,
            "a /hold request did not arrive"
        );
        if c3.held() == 1 {
            break;
        }
    }
    assert_eq!(c3.held(), 1, "no request landed on the third clone");
    c1.release();
    c2.release();

    // The answer loses it: it drains.
    dns.set_a("app.test", &ALL3[..2], 1);
    let draining = exactly(&[(c1.addr, "up"), (c2.addr, "up"), (c3.addr, "draining")]);
    let v = wait_status(admin, SETTLE, "the third clone draining", |v| {
        states(v) == draining
    })
    .await;
    assert_eq!(clone_at(&v, c3.addr).unwrap()["in_flight"], 1, "{v:#}");
    assert_eq!(v["dns"][0]["clones"], 2, "{v:#}");
    let c3_hits = c3.hits();
    let t = spread(addr, 40).await;
    assert_eq!(
        c3.hits(),
        c3_hits,
        "the draining clone got new requests: {t:?}"
    );
    c3.release();
    for h in holds {
        let a = h.await.unwrap();
        assert_eq!(a.status, 200, "{}", a.text());
    }
    let two = exactly(&[(c1.addr, "up"), (c2.addr, "up")]);
    wait_status(admin, SETTLE, "the drained clone gone", |v| {
        states(v) == two
    })
    .await;

    // Back in the answer: a new clone (its counters start from 0), serving again.
    dns.set_a("app.test", &ALL3, 1);
    let v = wait_status(admin, SETTLE, "the third clone back", |v| {
        states(v) == all_up
    })
    .await;
    let back = clone_at(&v, c3.addr).unwrap();
    assert_eq!(
        back["requests_total"], 0,
        "state kept across its absence: {back:#}"
    );
    assert!(
        clone_at(&v, c1.addr).unwrap()["requests_total"]
            .as_u64()
            .unwrap()
            > 100
    );
    let t = spread(addr, 300).await;
    assert!(fair(&t, &clones.iter().collect::<Vec<_>>(), 300), "{t:?}");
}

// ---------------------------------------------------------------------------------------
// SRV records
// ---------------------------------------------------------------------------------------

/// Two clones on 127.0.0.1 behind SRV records of priority 10 with weights `w_a` and 3, and
/// a third behind a record of priority 20 (less preferred: never used), the targets'
/// addresses in the additional section or not; `name` as lb.toml's `name` (absent: the
/// default prefix, the SRV name). 400 requests split 1:3 when `w_a` is 0 or 1.
async fn srv_spread(additional: bool, w_a: u16, name: Option<&str>) {
    let dns = DnsServer::start();
    dns.set_srv_additional(additional);
    let (a, b, c) = (spawn_clone("a"), spawn_clone("b"), spawn_clone("c"));
    for t in ["a.svc.test", "b.svc.test", "c.svc.test"] {
        dns.set_a(t, &["127.0.0.1"], 30);
    }
    let srv_name = "_http._tcp.svc.test";
    dns.set_srv(
        srv_name,
        &[
            srv("a.svc.test", a.addr.port(), w_a, 10),
            srv("b.svc.test", b.addr.port(), 3, 10),
            srv("c.svc.test", c.addr.port(), 5, 20),
        ],
        30,
    );
    let mut entry = format!("[[backend]]\nsrv = \"{srv_name}\"\n");
    if let Some(n) = name {
        entry.push_str(&format!("name = \"{n}\"\n"));
    }
    let lb = spawn_lb(&lb_toml(&dns, "1s", &entry));
    let admin = lb.admin_addr().unwrap();
    let want = exactly(&[(a.addr, "up"), (b.addr, "up")]);
    let v = wait_status(admin, SETTLE, "two SRV clones up", |v| states(v) == want).await;
    let prefix = name.unwrap_or(srv_name);
    for (clone, weight) in [(&a, w_a.max(1)), (&b, 3)] {
        let e = clone_at(&v, clone.addr).unwrap();
        assert_eq!(
            e["name"],
            format!("{prefix}/{}", clone.addr).as_str(),
            "{e:#}"
        );
        assert_eq!(e["weight"], weight, "{e:#}");
        assert_eq!(e["source"], srv_name, "{e:#}");
    }
    assert_eq!(v["dns"][0]["name"], srv_name, "{v:#}");
    assert_eq!(v["dns"][0]["type"], "srv", "{v:#}");
    assert_eq!(v["dns"][0]["result"], "ok", "{v:#}");
    assert_eq!(v["dns"][0]["clones"], 2, "{v:#}");
    if !additional {
        // Nothing in the additional section: the balancer asked for the targets itself.
        assert!(dns.queries("a.svc.test", RecordType::A) >= 1);
        assert!(dns.queries("b.svc.test", RecordType::A) >= 1);
    }

    // Smooth weighted round-robin: exactly 100 and 300 expected; a little slack.
    let t = spread(lb.http_addr(), 400).await;
    let on_a = t.get("a").copied().unwrap_or(0);
    let on_b = t.get("b").copied().unwrap_or(0);
    assert!((90..=110).contains(&on_a), "{t:?}");
    assert_eq!(on_a + on_b, 400, "{t:?}");
    assert_eq!(c.hits(), 0, "the priority-20 record was used: {t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_weights_1_and_3_split_1_to_3_with_targets_in_the_additional_section() {
    srv_spread(true, 1, Some("svc")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_targets_are_looked_up_when_the_answer_carries_no_addresses() {
    srv_spread(false, 1, Some("svc")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_weight_0_counts_as_1_and_names_default_to_the_srv_name() {
    srv_spread(true, 0, None).await;
}

// ---------------------------------------------------------------------------------------
// Failures
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_keeps_the_last_set_and_is_logged_once() {
    let dns = DnsServer::start();
    let (port, clones) = clones_on_ips("app", &ALL3);
    let [c1, c2, c3] = &clones[..] else {
        unreachable!()
    };
    dns.set_a("app.test", &ALL3[..2], 1);
    let lb = BinLb::start(&lb_toml(&dns, "1s", &app_entry(port)));
    let admin = lb.admin.unwrap();
    let two = exactly(&[(c1.addr, "up"), (c2.addr, "up")]);
    wait_status(admin, SETTLE, "two clones up", |v| states(v) == two).await;

    dns.set_mode("app.test", Mode::Silent);
    let failed = ["DNS lookup failed", "app.test"];
    assert!(
        eventually(LOOKUP_FAILS, || !lines_with(&lb, &failed).is_empty()).await,
        "no failure logged: {:#?}",
        lb.log_lines()
    );
    assert!(
        lines_with(&lb, &failed)[0].contains("WARN"),
        "{:?}",
        lines_with(&lb, &failed)
    );
    // Several failed refreshes: still one line.
    assert!(
        eventually_async(LOOKUP_FAILS, || async move {
            failed_lookups(admin, "app.test").await >= 3
        })
        .await,
        "fewer than 3 failed lookups in {LOOKUP_FAILS:?}"
    );
    assert!(lookups(admin, "app.test", "timeout").await >= 1);
    let v = status(admin).await;
    assert_eq!(states(&v), two, "{v:#}");
    let d = &v["dns"][0];
    assert_eq!(d["result"], "timeout", "{d:#}");
    assert!(d["error"].is_string(), "{d:#}");
    assert_eq!(d["clones"], 2, "{d:#}");
    // The last set keeps serving, all of it.
    let t = spread(lb.addr, 20).await;
    assert!(fair(&t, &[c1, c2], 20), "{t:?}");
    assert_eq!(
        lines_with(&lb, &failed).len(),
        1,
        "{:#?}",
        lines_with(&lb, &failed)
    );

    // Answering again, with a changed set: applied, and said so.
    dns.set_a("app.test", &ALL3, 1);
    dns.set_mode("app.test", Mode::Answer);
    assert!(
        eventually(LOOKUP_FAILS, || !lines_with(
            &lb,
            &["DNS lookup ok again", "app.test"]
        )
        .is_empty())
        .await,
        "{:#?}",
        lb.log_lines()
    );
    let three = exactly(&[(c1.addr, "up"), (c2.addr, "up"), (c3.addr, "up")]);
    wait_status(admin, SETTLE, "the new set", |v| states(v) == three).await;
    let t = spread(lb.addr, 30).await;
    assert!(fair(&t, &[c1, c2, c3], 30), "{t:?}");
    assert_eq!(
        lines_with(&lb, &failed).len(),
        1,
        "{:#?}",
        lines_with(&lb, &failed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_keeps_the_last_set_but_an_empty_answer_drains_it() {
    let dns = DnsServer::start();
    let (port, clones) = clones_on_ips("app", &ALL3[..2]);
    let [c1, c2] = &clones[..] else {
        unreachable!()
    };
    dns.set_a("app.test", &ALL3[..2], 1);
    let lb = spawn_lb(&lb_toml(&dns, "1s", &app_entry(port)));
    let admin = lb.admin_addr().unwrap();
    let two = exactly(&[(c1.addr, "up"), (c2.addr, "up")]);
    wait_status(admin, SETTLE, "two clones up", |v| states(v) == two).await;

    // NXDOMAIN is a failed lookup: nothing changes.
    dns.set_mode("app.test", Mode::NxDomain);
    let v = wait_status(admin, SETTLE, "an nxdomain result", |v| {
        v["dns"][0]["result"] == "nxdomain"
    })
    .await;
    assert_eq!(states(&v), two, "{v:#}");
    assert_eq!(v["dns"][0]["clones"], 2, "{v:#}");
    assert!(v["dns"][0]["error"].is_string(), "{v:#}");
    assert!(lookups(admin, "app.test", "nxdomain").await >= 1);
    let t = spread(lb.http_addr(), 20).await;
    assert!(fair(&t, &[c1, c2], 20), "{t:?}");

    // An empty NOERROR answer is an answer: the name has no clones now.
    dns.set_mode("app.test", Mode::Empty);
    let v = wait_status(admin, SETTLE, "an empty answer", |v| {
        v["dns"][0]["result"] == "nodata" && v["dns"][0]["clones"] == 0
    })
    .await;
    assert!(v["dns"][0]["error"].is_null(), "{v:#}");
    assert!(lookups(admin, "app.test", "nodata").await >= 1);
    // Nothing was in flight: they are dropped at once (draining, at most, for a moment).
    wait_status(admin, SETTLE, "no clones left", |v| backends(v).is_empty()).await;
    let hits = c1.hits() + c2.hits();
    let mut client = Client::connect(lb.http_addr()).await;
    for _ in 0..5 {
        assert_eq!(client.get("/").await.status, 503);
    }
    assert_eq!(c1.hits() + c2.hits(), hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_that_never_resolved_has_no_clones() {
    let dns = DnsServer::start();
    let s = spawn_clone("static");
    let lb = BinLb::start(&lb_toml(
        &dns,
        "1s",
        &format!("{}{}", static_entry(&s), address_entry("gone.test:9", None)),
    ));
    let admin = lb.admin.unwrap();
    assert!(
        eventually(LOOKUP_FAILS, || !lines_with(
            &lb,
            &["has not resolved yet", "gone.test"]
        )
        .is_empty())
        .await,
        "{:#?}",
        lb.log_lines()
    );
    let v = wait_status(admin, SETTLE, "gone.test's nxdomain", |v| {
        v["dns"][0]["result"] == "nxdomain"
    })
    .await;
    assert_eq!(states(&v), exactly(&[(s.addr, "up")]), "{v:#}");
    assert_eq!(v["dns"][0]["clones"], 0, "{v:#}");
    assert!(v["dns"][0]["resolved_at"].is_null(), "{v:#}");
    assert_eq!(clone_at(&v, s.addr).unwrap()["source"], "lb.toml");
    assert!(clone_at(&v, s.addr).unwrap()["resolved_at"].is_null());
    let t = spread(lb.addr, 5).await;
    assert_eq!(t.get("static"), Some(&5), "{t:?}");
}

// ---------------------------------------------------------------------------------------
// TTLs
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_ttl_applies_a_change_long_before_the_refresh() {
    let dns = DnsServer::start();
    let (port, clones) = clones_on_ips("app", &ALL3);
    let [c1, c2, c3] = &clones[..] else {
        unreachable!()
    };
    dns.set_a("app.test", &["127.0.0.1", "127.0.0.2"], 1);
    // No `name`: the clones are named after the address as written.
    let lb = spawn_lb(&lb_toml(
        &dns,
        "60s",
        &address_entry(&format!("app.test:{port}"), None),
    ));
    let admin = lb.admin_addr().unwrap();
    let v = wait_status(admin, SETTLE, "two clones up", |v| {
        states(v) == exactly(&[(c1.addr, "up"), (c2.addr, "up")])
    })
    .await;
    for c in [c1, c2] {
        let name = clone_at(&v, c.addr).unwrap()["name"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            name.starts_with("app.test") && name.ends_with(&format!("/{}", c.addr)),
            "{name}"
        );
    }
    dns.set_a("app.test", &["127.0.0.1", "127.0.0.3"], 1);
    wait_status(admin, SETTLE, "the TTL's change applied", |v| {
        let s = states(v);
        s.get(&c1.addr.to_string()).map(String::as_str) == Some("up")
            && s.get(&c3.addr.to_string()).map(String::as_str) == Some("up")
            && s.get(&c2.addr.to_string())
                .is_none_or(|st| st == "draining")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_of_0_is_asked_again_about_once_a_second() {
    let dns = DnsServer::start();
    let (port, clones) = clones_on_ips("app", &ALL3[..1]);
    dns.set_a("app.test", &ALL3[..1], 0);
    let lb = spawn_lb(&lb_toml(&dns, "60s", &app_entry(port)));
    let admin = lb.admin_addr().unwrap();
    wait_status(admin, SETTLE, "the clone up", |v| {
        states(v) == exactly(&[(clones[0].addr, "up")])
    })
    .await;
    // This test is about time passing: watch the queries for 4 s. Never below 1 s apart
    // (at most ~5, with slack: 8), and not waiting for the 60 s refresh (at least 2).
    let from = Instant::now();
    let window = Duration::from_secs(4);
    tokio::time::sleep(window).await;
    let n = dns
        .query_times("app.test", RecordType::A)
        .into_iter()
        .filter(|&t| t > from && t <= from + window)
        .count();
    assert!((2..=8).contains(&n), "{n} A queries in {window:?}");
}

/// clonelb keeps no DNS cache: records with a TTL far longer than `refresh` are asked for
/// again every `refresh`, so a change applies at the refresh, not at the TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_ttl_does_not_hold_a_change_past_the_refresh() {
    let dns = DnsServer::start();
    let (port, clones) = clones_on_ips("app", &ALL3[..2]);
    dns.set_a("app.test", &ALL3[..1], 3600);
    let lb = spawn_lb(&lb_toml(&dns, "1s", &app_entry(port)));
    let admin = lb.admin_addr().unwrap();
    wait_status(admin, SETTLE, "the first clone up", |v| {
        states(v) == exactly(&[(clones[0].addr, "up")])
    })
    .await;
    dns.set_a("app.test", &ALL3[..2], 3600);
    wait_status(
        admin,
        SETTLE,
        "the second clone added at the refresh",
        |v| states(v) == exactly(&[(clones[0].addr, "up"), (clones[1].addr, "up")]),
    )
    .await;
    assert!(dns.queries("app.test", RecordType::A) >= 2);
}

// ---------------------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_during_a_dns_outage_publishes_static_clones_at_once() {
    let dns = DnsServer::start();
    let (port, clones) = clones_on_ips("app", &ALL3[..2]);
    let [c1, c2] = &clones[..] else {
        unreachable!()
    };
    let (s1, s2, s3) = (spawn_clone("s1"), spawn_clone("s2"), spawn_clone("s3"));
    dns.set_a("app.test", &ALL3[..2], 1);
    let dns_entry = app_entry(port);
    let text = |s: &TestClone| lb_toml(&dns, "1s", &format!("{dns_entry}{}", static_entry(s)));
    let dir = fresh_dir("dns");
    let path = dir.join("lb.toml");
    std::fs::write(&path, text(&s1)).unwrap();
    let lb = clonelb::Balancer::start_from_file_with_workers(&path, 2).unwrap();
    let admin = lb.admin_addr().unwrap();
    wait_status(admin, SETTLE, "all up", |v| {
        states(v) == exactly(&[(c1.addr, "up"), (c2.addr, "up"), (s1.addr, "up")])
    })
    .await;

    dns.set_hang(true);
    // A reload takes milliseconds; waiting on a lookup would take the resolver's timeout
    // (seconds, times its attempts). 5 s tells them apart on a busy machine.
    let quick = Duration::from_secs(5);
    std::fs::write(&path, text(&s2)).unwrap();
    let v = wait_status(admin, quick, "the edited file applied", |v| {
        v["config"]["generation"] == 2
            && states(v).get(&s2.addr.to_string()).map(String::as_str) == Some("up")
    })
    .await;
    // The DNS clones stay (their last answer stands); the old static clone is gone.
    let s = states(&v);
    assert_eq!(
        s.get(&c1.addr.to_string()).map(String::as_str),
        Some("up"),
        "{v:#}"
    );
    assert_eq!(
        s.get(&c2.addr.to_string()).map(String::as_str),
        Some("up"),
        "{v:#}"
    );
    assert!(
        s.get(&s1.addr.to_string())
            .is_none_or(|st| st == "draining"),
        "{v:#}"
    );
    assert_eq!(clone_at(&v, s2.addr).unwrap()["source"], "lb.toml");
    let t = spread(lb.http_addr(), 9).await;
    assert!(
        (2..=4).contains(&t.get("s2").copied().unwrap_or(0)),
        "{t:?}"
    );

    // POST /reload too (the file changed again: s3 for s2).
    std::fs::write(&path, text(&s3)).unwrap();
    let (code, body) = tokio::time::timeout(quick, admin_call(admin, Method::POST, "/reload", ""))
        .await
        .expect("POST /reload waited on DNS");
    assert_eq!(code, StatusCode::OK, "{body}");
    wait_status(admin, quick, "s3 serving", |v| {
        states(v).get(&s3.addr.to_string()).map(String::as_str) == Some("up")
    })
    .await;
    assert!(dns.total_queries() > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// Static clones, sources, health
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localhost_is_still_a_static_clone_without_a_dns_query() {
    let dns = DnsServer::start();
    let c = spawn_clone("c");
    let port = c.addr.port();
    let lb = spawn_lb(&lb_toml(
        &dns,
        "1s",
        &address_entry(&format!("localhost:{port}"), None),
    ));
    let admin = lb.admin_addr().unwrap();
    let v = wait_status(admin, SETTLE, "the clone up", |v| {
        states(v) == exactly(&[(c.addr, "up")])
    })
    .await;
    let b = clone_at(&v, c.addr).unwrap();
    assert_eq!(b["name"], format!("localhost:{port}").as_str(), "{b:#}");
    assert_eq!(b["source"], "lb.toml", "{b:#}");
    assert!(b["resolved_at"].is_null(), "{b:#}");
    assert_eq!(v["dns"], serde_json::json!([]), "{v:#}");
    let t = spread(lb.http_addr(), 5).await;
    assert_eq!(t.get("c"), Some(&5), "{t:?}");
    // About time passing: more than a refresh, and still nothing asked.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(dns.total_queries(), 0, "{:?}", dns.received());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_both_static_and_from_dns_is_one_clone_the_first_entry() {
    let dns = DnsServer::start();
    let s = spawn_clone("static");
    let port = s.addr.port();
    dns.set_a("app.test", &["127.0.0.1"], 1);
    let lb = BinLb::start(&lb_toml(
        &dns,
        "1s",
        &format!("{}{}", static_entry(&s), app_entry(port)),
    ));
    let admin = lb.admin.unwrap();
    let warned = ["already a clone"];
    assert!(
        eventually(SETTLE, || !lines_with(&lb, &warned).is_empty()).await,
        "{:#?}",
        lb.log_lines()
    );
    assert!(lines_with(&lb, &warned)[0].contains("WARN"));
    let v = wait_status(admin, SETTLE, "one clone up", |v| {
        states(v) == exactly(&[(s.addr, "up")])
    })
    .await;
    let b = clone_at(&v, s.addr).unwrap();
    assert_eq!(b["name"], s.name.as_str(), "{b:#}");
    assert_eq!(b["source"], "lb.toml", "{b:#}");
    // About time passing: a few refreshes later, still one warning.
    let asked = dns.queries("app.test", RecordType::A);
    assert!(
        eventually(SETTLE, || dns.queries("app.test", RecordType::A)
            >= asked + 2)
        .await,
        "not re-resolved"
    );
    assert_eq!(
        lines_with(&lb, &warned).len(),
        1,
        "{:#?}",
        lines_with(&lb, &warned)
    );
    assert_eq!(states(&status(admin).await), exactly(&[(s.addr, "up")]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_dns_clone_starts_down_with_start_unhealthy() {
    let dns = DnsServer::start();
    let (port, clones) = clones_on_ips("app", &ALL3[..2]);
    let [c1, c2] = &clones[..] else {
        unreachable!()
    };
    dns.set_a("app.test", &ALL3[..1], 1);
    // Were a new clone up at first, 5 failed checks 200 ms apart would leave it up for
    // about a second: seen by the poll below.
    let health = "[health]\ninterval = \"200ms\"\ntimeout = \"100ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 5\nstart_unhealthy = true\n";
    let lb = spawn_lb(&lb_toml(
        &dns,
        "1s",
        &format!("{}{health}", app_entry(port)),
    ));
    let admin = lb.admin_addr().unwrap();
    wait_status(admin, SETTLE, "the first clone up after its checks", |v| {
        states(v) == exactly(&[(c1.addr, "up")])
    })
    .await;
    assert!(c1.checks() >= 2, "up after {} checks", c1.checks());

    c2.set_health(500);
    dns.set_a("app.test", &ALL3[..2], 1);
    let v = wait_status(admin, SETTLE, "the second clone listed", |v| {
        clone_at(v, c2.addr).is_some()
    })
    .await;
    assert_eq!(clone_at(&v, c2.addr).unwrap()["state"], "down", "{v:#}");
    let t = spread(lb.http_addr(), 20).await;
    assert_eq!(t.get(&c1.name), Some(&20), "{t:?}");
    assert_eq!(c2.hits(), 0);

    c2.set_health(0);
    wait_status(admin, SETTLE, "the second clone up", |v| {
        states(v) == exactly(&[(c1.addr, "up"), (c2.addr, "up")])
    })
    .await;
    assert!(c2.checks() >= 2);
    let t = spread(lb.http_addr(), 20).await;
    assert!(fair(&t, &[c1, c2], 20), "{t:?}");
}

// ---------------------------------------------------------------------------------------
// clonelb check
// ---------------------------------------------------------------------------------------

/// `clonelb check PATH EXTRA..` on lb.toml text; the scratch directory is removed after.
fn check(toml: &str, extra: &[&str]) -> Output {
    let dir = fresh_dir("dns-check");
    let path = dir.join("lb.toml");
    std::fs::write(&path, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_clonelb"))
        .arg("check")
        .arg(&path)
        .args(extra)
        .env_remove("CLONELB_LOG")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    out
}

fn both(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Port 9 (discard) in these files: `check` connects to no clone.
fn check_toml(dns: &DnsServer, names: &[&str]) -> String {
    let entries: String = names
        .iter()
        .map(|n| address_entry(&format!("{n}:9"), None))
        .collect();
    lb_toml(
        dns,
        "1s",
        &format!("{entries}[[backend]]\nsrv = \"_http._tcp.svc.test\"\n"),
    )
}

#[test]
fn check_accepts_host_names_without_resolving_them() {
    let dns = DnsServer::start();
    dns.set_a("app.test", &ALL3, 30);
    let out = check(&check_toml(&dns, &["app.test"]), &[]);
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(": ok: listen http 127.0.0.1:0"),
        "{}",
        both(&out)
    );
    assert_eq!(dns.total_queries(), 0, "{:?}", dns.received());
}

#[test]
fn check_resolve_prints_each_names_clones() {
    let dns = DnsServer::start();
    dns.set_a("app.test", &ALL3, 30);
    dns.set_a("fq.test", &ALL3[..1], 30);
    dns.set_mode("none.test", Mode::Empty);
    dns.set_a("a.svc.test", &["127.0.0.1"], 30);
    dns.set_srv("_http._tcp.svc.test", &[srv("a.svc.test", 9001, 1, 1)], 30);
    let out = check(
        &check_toml(&dns, &["app.test", "none.test", "fq.test."]),
        &["--resolve"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", both(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines.contains(&"app.test: 3 clones: 127.0.0.1:9, 127.0.0.2:9, 127.0.0.3:9 (ttl 30s)"),
        "{}",
        both(&out)
    );
    assert!(
        lines.contains(&"none.test: no records (NOERROR)"),
        "{}",
        both(&out)
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("_http._tcp.svc.test: 1 clone") && l.contains("127.0.0.1:9001")),
        "{}",
        both(&out)
    );
    assert!(dns.queries("app.test", RecordType::A) >= 1);
    // A fully qualified name (final dot) is looked up as written.
    assert!(
        lines.contains(&"fq.test.: 1 clone: 127.0.0.1:9 (ttl 30s)"),
        "{}",
        both(&out)
    );
}

#[test]
fn check_resolve_exits_1_when_a_lookup_fails() {
    let dns = DnsServer::start();
    dns.set_a("app.test", &ALL3, 30);
    dns.set_a("a.svc.test", &["127.0.0.1"], 30);
    dns.set_srv("_http._tcp.svc.test", &[srv("a.svc.test", 9001, 1, 1)], 30);
    // gone.test: unknown, NXDOMAIN.
    let out = check(
        &check_toml(&dns, &["app.test", "gone.test"]),
        &["--resolve"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", both(&out));
    let text = both(&out);
    assert!(
        text.lines()
            .any(|l| l.starts_with("gone.test: lookup failed")),
        "{text}"
    );
    assert!(text.contains("app.test: 3 clones"), "{text}");
    assert!(dns.queries("gone.test", RecordType::A) >= 1);
}

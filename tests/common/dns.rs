//! A DNS server for tests, steered while it runs: UDP on 127.0.0.1:0, on its own thread (so
//! it answers even while the test's runtime is blocked, e.g. on `clonelb check --resolve`),
//! answering from a table of records the test changes at any time, and counting every query
//! it receives.
//!
//! Per name (case-insensitive, trailing dot optional) it holds records by type (A, AAAA,
//! SRV; each type with one TTL) and a [`Mode`]:
//! * [`Mode::Answer`] (the default): the records asked for; an unknown name (no records of
//!   any type) is NXDOMAIN; a known name without records of the asked type is NOERROR with an
//!   empty answer ("nodata");
//! * [`Mode::NxDomain`], [`Mode::Empty`] (NOERROR, no records, whatever the type),
//!   [`Mode::ServFail`];
//! * [`Mode::Silent`]: the query is read (and counted) but never answered.
//!
//! [`DnsServer::set_hang`] silences every name at once. [`DnsServer::set_srv_additional`]
//! puts the SRV targets' A/AAAA records in the additional section (off: the client must look
//! the targets up itself). Answers carry the query's id and question, RD copied, RA and AA
//! set; negative answers carry no SOA (so a resolver caches them for its minimum, 0 by
//! default). Answers stay small (no truncation, no TCP).
//!
//! Only loopback addresses can be put in A/AAAA records: tests never reach anything else.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_resolver::proto::op::{
    Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode,
};
use hickory_resolver::proto::rr::rdata::{A, AAAA, SRV};
use hickory_resolver::proto::rr::{Name, RData, Record};

pub use hickory_resolver::proto::rr::RecordType;

/// How the server treats one name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Answer from the records (unknown name: NXDOMAIN; no records of the type: nodata).
    Answer,
    /// NXDOMAIN, whatever the records.
    NxDomain,
    /// NOERROR with no records, whatever the type.
    Empty,
    /// SERVFAIL.
    ServFail,
    /// Read the query, never answer: the client times out.
    Silent,
}

/// One SRV record's data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Srv {
    pub target: String,
    pub port: u16,
    pub weight: u16,
    pub priority: u16,
}

/// An SRV record pointing at `target` (a name the server should also hold A records for).
pub fn srv(target: &str, port: u16, weight: u16, priority: u16) -> Srv {
    Srv {
        target: target.to_string(),
        port,
        weight,
        priority,
    }
}

/// One record of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rec {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    Srv(Srv),
}

impl Rec {
    fn record_type(&self) -> RecordType {
        match self {
            Rec::A(_) => RecordType::A,
            Rec::Aaaa(_) => RecordType::AAAA,
            Rec::Srv(_) => RecordType::SRV,
        }
    }

    fn rdata(&self) -> RData {
        match self {
            Rec::A(ip) => RData::A(A(*ip)),
            Rec::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
            Rec::Srv(s) => RData::SRV(SRV::new(s.priority, s.weight, s.port, fqdn(&s.target))),
        }
    }
}

/// One query the server received.
#[derive(Clone, Debug)]
pub struct Received {
    /// Lower case, without the trailing dot.
    pub name: String,
    pub record_type: RecordType,
    pub at: Instant,
}

/// The table's key for a name: lower case, no trailing dot.
fn norm(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn fqdn(name: &str) -> Name {
    Name::from_ascii(format!("{}.", norm(name))).unwrap()
}

#[derive(Default)]
struct Zone {
    /// (name, type) → (records, TTL).
    records: HashMap<(String, RecordType), (Vec<Rec>, u32)>,
    modes: HashMap<String, Mode>,
}

impl Zone {
    fn known(&self, name: &str) -> bool {
        self.records.keys().any(|(n, _)| n == name)
    }

    fn get(&self, name: &str, t: RecordType) -> Option<&(Vec<Rec>, u32)> {
        self.records.get(&(name.to_string(), t))
    }
}

#[derive(Default)]
struct Shared {
    zone: Mutex<Zone>,
    hang: AtomicBool,
    srv_additional: AtomicBool,
    received: Mutex<Vec<Received>>,
}

/// The steerable DNS server. Stops (and its thread ends) when dropped.
pub struct DnsServer {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DnsServer {
    /// Start on 127.0.0.1:0, with an empty table (every name NXDOMAIN).
    pub fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        // Short, so a dropped server's thread notices `stop` quickly.
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (sh, st) = (Arc::clone(&shared), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("test-dns".into())
            .spawn(move || serve(&socket, &sh, &st))
            .unwrap();
        DnsServer {
            addr,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    /// `resolver = "…"` for lb.toml's `[dns]`.
    pub fn resolver(&self) -> String {
        self.addr.to_string()
    }

    /// Replace `name`'s records of `t` (an empty list keeps the name known: nodata).
    pub fn set(&self, name: &str, t: RecordType, records: Vec<Rec>, ttl: u32) {
        for r in &records {
            assert_eq!(r.record_type(), t, "{r:?} is no {t} record");
        }
        self.shared
            .zone
            .lock()
            .unwrap()
            .records
            .insert((norm(name), t), (records, ttl));
    }

    /// `name`'s A records: `ips` (loopback only), each with `ttl` seconds.
    pub fn set_a(&self, name: &str, ips: &[&str], ttl: u32) {
        let recs = ips
            .iter()
            .map(|ip| {
                let ip: Ipv4Addr = ip.parse().unwrap();
                assert!(ip.is_loopback(), "tests use 127.0.0.0/8 only, not {ip}");
                Rec::A(ip)
            })
            .collect();
        self.set(name, RecordType::A, recs, ttl);
    }

    /// `name`'s AAAA records (`::1` is the only loopback address).
    pub fn set_aaaa(&self, name: &str, ips: &[&str], ttl: u32) {
        let recs = ips
            .iter()
            .map(|ip| {
                let ip: Ipv6Addr = ip.parse().unwrap();
                assert!(ip.is_loopback(), "tests use loopback only, not {ip}");
                Rec::Aaaa(ip)
            })
            .collect();
        self.set(name, RecordType::AAAA, recs, ttl);
    }

    /// `name`'s SRV records.
    pub fn set_srv(&self, name: &str, records: &[Srv], ttl: u32) {
        let recs = records.iter().cloned().map(Rec::Srv).collect();
        self.set(name, RecordType::SRV, recs, ttl);
    }

    /// Forget `name`'s records of every type and its mode: NXDOMAIN from now on.
    pub fn remove(&self, name: &str) {
        let n = norm(name);
        let mut zone = self.shared.zone.lock().unwrap();
        zone.records.retain(|(k, _), _| *k != n);
        zone.modes.remove(&n);
    }

    pub fn set_mode(&self, name: &str, mode: Mode) {
        self.shared
            .zone
            .lock()
            .unwrap()
            .modes
            .insert(norm(name), mode);
    }

    /// On: answer nothing at all (queries are still counted).
    pub fn set_hang(&self, on: bool) {
        self.shared.hang.store(on, SeqCst);
    }

    /// On: SRV answers carry their targets' A/AAAA records in the additional section.
    pub fn set_srv_additional(&self, on: bool) {
        self.shared.srv_additional.store(on, SeqCst);
    }

    /// Queries received for `name` and type `t` (answered or not).
    pub fn queries(&self, name: &str, t: RecordType) -> usize {
        self.query_times(name, t).len()
    }

    /// When each query for `name` and type `t` arrived, oldest first.
    pub fn query_times(&self, name: &str, t: RecordType) -> Vec<Instant> {
        let n = norm(name);
        self.shared
            .received
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.name == n && r.record_type == t)
            .map(|r| r.at)
            .collect()
    }

    /// Every query received so far, whatever the name.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    pub fn total_queries(&self) -> usize {
        self.shared.received.lock().unwrap().len()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socket: &UdpSocket, shared: &Shared, stop: &AtomicBool) {
    let mut buf = [0u8; 4096];
    while !stop.load(SeqCst) {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue; // the read timeout, or a stray ICMP error: look at `stop` again
        };
        if let Some(answer) = answer(shared, &buf[..n]) {
            let _ = socket.send_to(&answer, peer);
        }
    }
}

/// The bytes to send back for one datagram, or none (garbage, hang, silent).
fn answer(shared: &Shared, bytes: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(bytes).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let query = request.queries.first()?.clone();
    let name = norm(&query.name().to_ascii());
    shared.received.lock().unwrap().push(Received {
        name: name.clone(),
        record_type: query.query_type(),
        at: Instant::now(),
    });
    if shared.hang.load(SeqCst) {
        return None;
    }
    let mut response = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    response.metadata = Metadata::response_from_request(&request.metadata);
    response.metadata.authoritative = true;
    response.metadata.recursion_available = true;
    response.add_query(query.clone());
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        response.set_edns(edns);
    }
    let zone = shared.zone.lock().unwrap();
    let mode = zone.modes.get(&name).copied().unwrap_or(Mode::Answer);
    match mode {
        Mode::Silent => return None,
        Mode::NxDomain => response.metadata.response_code = ResponseCode::NXDomain,
        Mode::ServFail => response.metadata.response_code = ResponseCode::ServFail,
        Mode::Empty => {}
        Mode::Answer if request.metadata.op_code != OpCode::Query => {
            response.metadata.response_code = ResponseCode::NotImp;
        }
        Mode::Answer if !zone.known(&name) => {
            response.metadata.response_code = ResponseCode::NXDomain;
        }
        Mode::Answer => {
            if let Some((recs, ttl)) = zone.get(&name, query.query_type()) {
                for r in recs {
                    // Owned by the name as asked (its case and dot), as real servers do.
                    response.add_answer(Record::from_rdata(query.name().clone(), *ttl, r.rdata()));
                }
                if query.query_type() == RecordType::SRV && shared.srv_additional.load(SeqCst) {
                    add_targets(&zone, recs, &mut response);
                }
            }
        }
    }
    drop(zone);
    response.to_vec().ok()
}

/// The A and AAAA records of each SRV target (once per target) as additional records.
fn add_targets(zone: &Zone, srvs: &[Rec], response: &mut Message) {
    let mut done = Vec::new();
    for r in srvs {
        let Rec::Srv(s) = r else { continue };
        let target = norm(&s.target);
        if done.contains(&target) {
            continue;
        }
        if zone.modes.get(&target).is_some_and(|m| *m != Mode::Answer) {
            continue;
        }
        for t in [RecordType::A, RecordType::AAAA] {
            if let Some((recs, ttl)) = zone.get(&target, t) {
                for rec in recs {
                    response.add_additional(Record::from_rdata(fqdn(&target), *ttl, rec.rdata()));
                }
            }
        }
        done.push(target);
    }
}

/// Ask `server` one question over UDP (RD set, a random id) and wait at most `limit` for
/// the answer with that id; `None` when none came. For the server's own tests.
pub async fn ask(
    server: SocketAddr,
    name: &str,
    t: RecordType,
    limit: Duration,
) -> Option<Message> {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut q = Message::query();
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    let id = q.metadata.id;
    socket.send_to(&q.to_vec().unwrap(), server).await.unwrap();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            let (n, _) = socket.recv_from(&mut buf).await.unwrap();
            if let Ok(m) = Message::from_vec(&buf[..n]) {
                if m.metadata.id == id {
                    return m;
                }
            }
        }
    })
    .await
    .ok()
}

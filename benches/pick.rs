//! The cost of one pick of a clone, through the public API: `config` → `RoutingTable::build`
//! → `RoutingTable::pick`, for both strategies at 3, 100 and 10,000 clones (plus weighted
//! round-robin at 100), and in atomic deploy mode at 100 and 10,000 (clones alternate
//! between two versions, the second one active: half the pool is standby).
//!
//! Before criterion runs, a counting global allocator checks that a pick allocates
//! nothing: 1,000,000 picks per case, and the run panics on any allocation.

#![allow(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use clonelb::backend::InFlightGuard;
use clonelb::config::{
    parse, BackendConfig, BalancerConfig, Config, ListenConfig, ProxyConfig, StrategyKind,
};
use clonelb::deploy::DeployGate;
use clonelb::table::RoutingTable;
use criterion::{BenchmarkId, Criterion};
use rand::rngs::SmallRng;
use rand::SeedableRng;

/// `System`, counting every allocation (and reallocation).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to `System`; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as our caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SIZES: [usize; 3] = [3, 100, 10_000];
const CHECK_PICKS: u64 = 1_000_000;

/// Clone `i`'s distinct address: 127.0.x.y:port, unique for i < 62,500.
fn address(i: usize) -> SocketAddr {
    let ip = Ipv4Addr::new(127, 0, (i / 250) as u8, (i % 250 + 1) as u8);
    SocketAddr::new(IpAddr::V4(ip), 10_000 + (i % 50_000) as u16)
}

/// Weight of clone `i`: 1 for every clone, or 1..=5 cycling.
fn weight(i: usize, weighted: bool) -> u32 {
    if weighted {
        (i % 5) as u32 + 1
    } else {
        1
    }
}

/// The lb.toml text of a pool of `n` clones.
fn config_text(strategy: StrategyKind, n: usize, weighted: bool) -> String {
    let mut src = format!(
        "[listen]\nhttp = \"127.0.0.1:1\"\n[balancer]\nstrategy = \"{}\"\n",
        strategy.as_str()
    );
    for i in 0..n {
        src.push_str(&format!("[[backend]]\naddress = \"{}\"\n", address(i)));
        if weighted {
            src.push_str(&format!("weight = {}\n", weight(i, weighted)));
        }
    }
    src
}

/// The same pool built directly (parsing 10,000 `[[backend]]` tables is slow to no purpose).
fn config_direct(strategy: StrategyKind, n: usize, weighted: bool) -> Config {
    Config {
        listen: ListenConfig::http("127.0.0.1:1".parse().unwrap()),
        balancer: BalancerConfig { strategy },
        proxy: ProxyConfig::default(),
        health: None,
        limits: Default::default(),
        reload: Default::default(),
        admin: None,
        log: Default::default(),
        deploy: Default::default(),
        audit: None,
        error_pages: Default::default(),
        dns: Default::default(),
        backends: (0..n)
            .map(|i| BackendConfig {
                address: address(i),
                name: address(i).to_string(),
                weight: weight(i, weighted),
            })
            .collect(),
        dns_backends: Vec::new(),
    }
}

/// Pools of up to 100 clones go through `config::parse`; larger ones are built directly
/// (checked equal to the parsed form at 100 clones).
fn config(strategy: StrategyKind, n: usize, weighted: bool) -> Config {
    if n <= 100 {
        let parsed = parse("bench.toml", &config_text(strategy, n, weighted))
            .expect("bench config is valid")
            .config;
        assert_eq!(parsed, config_direct(strategy, n, weighted));
        parsed
    } else {
        config_direct(strategy, n, weighted)
    }
}

/// One benchmark case: a table and the guards that give its clones varied load.
struct Case {
    label: &'static str,
    n: usize,
    table: RoutingTable,
    _load: Vec<InFlightGuard>,
}

fn case(label: &'static str, strategy: StrategyKind, n: usize, weighted: bool) -> Case {
    let table = RoutingTable::build(&config(strategy, n, weighted), None);
    if label.starts_with("atomic") {
        // Versions 1 and 2 alternate; 2 is active (1 the fallback), as the deploy task
        // would set the gate mid-rollout.
        for (i, b) in table.backends().iter().enumerate() {
            b.state.set_version(1 + (i % 2) as u32);
        }
        let gate = Arc::new(DeployGate::default());
        gate.set(2, 1);
        return Case {
            label,
            n,
            table: table.with_gate(gate),
            _load: Vec::new(),
        };
    }
    let mut load = Vec::new();
    if strategy == StrategyKind::LeastConnections {
        // 0..=4 in flight, spread so the least-loaded clones are few and not adjacent.
        for (i, b) in table.backends().iter().enumerate() {
            for _ in 0..(i * 7 + 3) % 5 {
                load.push(b.state.acquire());
            }
        }
    }
    Case {
        label,
        n,
        table,
        _load: load,
    }
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for n in SIZES {
        out.push(case("round-robin", StrategyKind::RoundRobin, n, false));
    }
    out.push(case(
        "weighted-round-robin",
        StrategyKind::RoundRobin,
        100,
        true,
    ));
    for n in SIZES {
        out.push(case(
            "least-connections",
            StrategyKind::LeastConnections,
            n,
            false,
        ));
    }
    for n in [100, 10_000] {
        out.push(case(
            "atomic-round-robin",
            StrategyKind::RoundRobin,
            n,
            false,
        ));
        out.push(case(
            "atomic-least-connections",
            StrategyKind::LeastConnections,
            n,
            false,
        ));
    }
    out
}

/// Counts the allocations of `CHECK_PICKS` picks and panics unless there are none.
fn check_no_allocations(c: &Case) {
    let mut rng = SmallRng::seed_from_u64(1);
    let before = ALLOCATIONS.load(Relaxed);
    for _ in 0..CHECK_PICKS {
        black_box(black_box(&c.table).pick(&mut rng).expect("a clone is up"));
    }
    let allocations = ALLOCATIONS.load(Relaxed) - before;
    println!(
        "allocations per pick ({}, {} clones): {} ({allocations} in {CHECK_PICKS} picks)",
        c.label,
        c.n,
        allocations as f64 / CHECK_PICKS as f64
    );
    assert_eq!(
        allocations, 0,
        "{} with {} clones allocated while picking",
        c.label, c.n
    );
}

fn bench(c: &mut Criterion, cases: &[Case]) {
    let mut group = c.benchmark_group("pick");
    for case in cases {
        let mut rng = SmallRng::seed_from_u64(1);
        group.bench_with_input(
            BenchmarkId::new(case.label, case.n),
            &case.table,
            |b, table| b.iter(|| black_box(table.pick(&mut rng))),
        );
    }
    group.finish();
}

fn main() {
    let cases = cases();
    for case in &cases {
        check_no_allocations(case);
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    bench(&mut c, &cases);
    c.final_summary();
}

//! Picking a clone: round-robin (smooth weighted) and least-connections.
//!
//! Pure: no I/O, no async, no clock; randomness comes from the caller's RNG. A pick reads
//! availability and load through [`Candidates`] (atomics in the real table, plain vectors
//! in tests) and takes no lock and no allocation. All mutable state here is one atomic
//! counter per strategy.
//!
//! Owns [`StrategyKind`], the names of the strategies. Imports nothing from `config`: the
//! config maps lb.toml's `strategy = "..."` string to a [`StrategyKind`], not the other way
//! round.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use rand::Rng;
use serde::Serialize;

/// Which strategy a routing table uses (`[balancer] strategy` in lb.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyKind {
    #[default]
    RoundRobin,
    LeastConnections,
}

impl StrategyKind {
    /// The name lb.toml uses for it.
    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::RoundRobin => "round-robin",
            StrategyKind::LeastConnections => "least-connections",
        }
    }
}

/// What a strategy may know about the clones: how many, which may take a request now,
/// how loaded each is, and their weights.
pub trait Candidates {
    fn count(&self) -> usize;
    fn available(&self, i: usize) -> bool;
    /// In-flight requests on clone `i`.
    fn load(&self, i: usize) -> usize;
    fn weight(&self, i: usize) -> u32;
}

/// A way of picking one clone per request.
pub trait Strategy {
    /// The index of the clone to use, or `None` when no clone is available.
    fn pick<C: Candidates + ?Sized, R: Rng + ?Sized>(&self, c: &C, rng: &mut R) -> Option<usize>;
}

/// The strategy of one routing table (an enum, so the hot path has no dynamic dispatch).
#[derive(Debug)]
pub enum Picker {
    RoundRobin(RoundRobin),
    LeastConnections(LeastConnections),
}

impl Picker {
    pub fn new(kind: StrategyKind, weights: &[u32]) -> Self {
        match kind {
            StrategyKind::RoundRobin => Picker::RoundRobin(RoundRobin::new(weights)),
            StrategyKind::LeastConnections => Picker::LeastConnections(LeastConnections::new()),
        }
    }

    pub fn kind(&self) -> StrategyKind {
        match self {
            Picker::RoundRobin(_) => StrategyKind::RoundRobin,
            Picker::LeastConnections(_) => StrategyKind::LeastConnections,
        }
    }
}

impl Strategy for Picker {
    #[inline]
    fn pick<C: Candidates + ?Sized, R: Rng + ?Sized>(&self, c: &C, rng: &mut R) -> Option<usize> {
        match self {
            Picker::RoundRobin(s) => s.pick(c, rng),
            Picker::LeastConnections(s) => s.pick(c, rng),
        }
    }
}

/// Longest precomputed round-robin sequence (entries of 4 bytes). Pools whose weights add
/// up to more (after dividing by their common divisor) have their weights scaled down to
/// fit, each kept at 1 or more: at most 4 MiB per table, at the cost of exact ratios for
/// pools of thousands of clones with large, unequal weights.
pub const MAX_SEQUENCE: usize = 1 << 20;

/// Above this many index × step operations the exact nginx construction (O(n) per step)
/// gives way to an earliest-deadline construction (O(log n) per step), which is just as
/// smooth but may order ties differently.
const NGINX_BUILD_BUDGET: u64 = 50_000_000;

/// Smooth weighted round-robin. The sequence nginx's algorithm produces for the weights
/// (e.g. 5:1:1 → a a b a c a a, never a burst to the heavy clone) is computed once when the
/// table is built; a pick is one `fetch_add` and an index. Unavailable clones are skipped
/// and the counter advanced past them, so the others keep an even share.
#[derive(Debug)]
pub struct RoundRobin {
    sequence: Box<[u32]>,
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new(weights: &[u32]) -> Self {
        RoundRobin {
            sequence: smooth_sequence(weights).into_boxed_slice(),
            next: AtomicUsize::new(0),
        }
    }
}

impl Strategy for RoundRobin {
    #[inline]
    fn pick<C: Candidates + ?Sized, R: Rng + ?Sized>(&self, c: &C, _: &mut R) -> Option<usize> {
        let len = self.sequence.len();
        if len == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Relaxed);
        for skip in 0..len {
            let i = self.sequence[(start.wrapping_add(skip)) % len] as usize;
            if c.available(i) {
                if skip > 0 {
                    self.next.fetch_add(skip, Relaxed);
                }
                return Some(i);
            }
        }
        None
    }
}

/// The smooth weighted round-robin sequence for `weights` (one entry per pick of a cycle).
pub fn smooth_sequence(weights: &[u32]) -> Vec<u32> {
    if weights.is_empty() {
        return Vec::new();
    }
    let g = weights
        .iter()
        .fold(0u64, |g, &w| gcd(g, u64::from(w.max(1))));
    let mut w: Vec<u64> = weights.iter().map(|&x| u64::from(x.max(1)) / g).collect();
    let mut total: u64 = w.iter().sum();
    if total > MAX_SEQUENCE as u64 {
        let scale = MAX_SEQUENCE as f64 / total as f64;
        for x in &mut w {
            *x = ((*x as f64 * scale) as u64).max(1);
        }
        total = w.iter().sum();
    }
    if total.saturating_mul(w.len() as u64) <= NGINX_BUILD_BUDGET {
        nginx_sequence(&w, total)
    } else {
        deadline_sequence(&w, total)
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// nginx's smooth weighted round-robin (ngx_http_upstream_get_peer), run for one cycle.
fn nginx_sequence(w: &[u64], total: u64) -> Vec<u32> {
    let total = total as i64;
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

/// Earliest virtual deadline first: clone i's k-th turn falls at (k + ½) / w_i.
fn deadline_sequence(w: &[u64], total: u64) -> Vec<u32> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    // Deadline (2k + 1) / (2 w) kept as a fraction; compared by cross-multiplying.
    #[derive(PartialEq, Eq)]
    struct Turn {
        num: u64,
        den: u64,
        index: u32,
    }
    impl Ord for Turn {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            (u128::from(self.num) * u128::from(o.den))
                .cmp(&(u128::from(o.num) * u128::from(self.den)))
                .then(self.index.cmp(&o.index))
        }
    }
    impl PartialOrd for Turn {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    let mut heap: BinaryHeap<Reverse<Turn>> = w
        .iter()
        .enumerate()
        .map(|(i, &wi)| {
            Reverse(Turn {
                num: 1,
                den: 2 * wi,
                index: i as u32,
            })
        })
        .collect();
    let mut out = Vec::with_capacity(total as usize);
    while out.len() < total as usize {
        let Some(Reverse(t)) = heap.pop() else { break };
        out.push(t.index);
        heap.push(Reverse(Turn {
            num: t.num + 2,
            ..t
        }));
    }
    out
}

/// Clones above which least-connections samples two at random (power of two choices, as
/// Envoy's least-request does) instead of scanning all: the scan costs a cache miss per
/// clone, the sample two, and the result is within a small factor of the best.
pub const FULL_SCAN_MAX: usize = 32;

/// The available clone with the fewest in-flight requests relative to its weight
/// (`load / weight`, as nginx's and HAProxy's leastconn do). Ties are broken at random,
/// so equal clones share the load. Stateless: all it reads is the clones' in-flight counts.
#[derive(Debug, Default)]
pub struct LeastConnections;

impl LeastConnections {
    pub fn new() -> Self {
        LeastConnections
    }

    /// Exact scan; ties are broken at random (reservoir sampling: the k-th equal clone
    /// replaces the current choice with probability 1/k).
    fn scan<C: Candidates + ?Sized, R: Rng + ?Sized>(c: &C, rng: &mut R) -> Option<usize> {
        let mut best: Option<(usize, u64, u64)> = None;
        let mut ties = 0u32;
        for i in 0..c.count() {
            if !c.available(i) {
                continue;
            }
            let (load, weight) = (c.load(i) as u64, u64::from(c.weight(i).max(1)));
            match best {
                // Compare load_i / w_i with load_b / w_b without division.
                Some((_, bl, bw)) => match (load * bw).cmp(&(bl * weight)) {
                    std::cmp::Ordering::Greater => {}
                    std::cmp::Ordering::Less => {
                        best = Some((i, load, weight));
                        ties = 1;
                    }
                    std::cmp::Ordering::Equal => {
                        ties += 1;
                        if rng.next_u32().is_multiple_of(ties) {
                            best = Some((i, load, weight));
                        }
                    }
                },
                None => {
                    best = Some((i, load, weight));
                    ties = 1;
                }
            }
        }
        best.map(|(i, _, _)| i)
    }
}

impl Strategy for LeastConnections {
    #[inline]
    fn pick<C: Candidates + ?Sized, R: Rng + ?Sized>(&self, c: &C, rng: &mut R) -> Option<usize> {
        let n = c.count();
        if n == 0 {
            return None;
        }
        if n <= FULL_SCAN_MAX {
            return Self::scan(c, rng);
        }
        let mut chosen: Option<usize> = None;
        for _ in 0..8 {
            let i = below(rng, n);
            if !c.available(i) {
                continue;
            }
            chosen = Some(match chosen {
                None => i,
                Some(j) => {
                    let (li, wi) = (c.load(i) as u64, u64::from(c.weight(i).max(1)));
                    let (lj, wj) = (c.load(j) as u64, u64::from(c.weight(j).max(1)));
                    return Some(if li * wj < lj * wi { i } else { j });
                }
            });
        }
        // Most clones are unavailable: fall back to the exact answer.
        chosen.or_else(|| Self::scan(c, rng))
    }
}

/// A uniform index below `n` (Lemire's multiply-shift; bias below 2^-32 for n < 2^32).
#[inline]
fn below<R: Rng + ?Sized>(rng: &mut R, n: usize) -> usize {
    ((u128::from(rng.next_u64()) * n as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    /// A fake pool: availability and load as plain vectors.
    struct Fake {
        up: Vec<bool>,
        load: Vec<usize>,
        weight: Vec<u32>,
    }

    impl Fake {
        fn new(n: usize) -> Self {
            Fake {
                up: vec![true; n],
                load: vec![0; n],
                weight: vec![1; n],
            }
        }
    }

    impl Candidates for Fake {
        fn count(&self) -> usize {
            self.up.len()
        }
        fn available(&self, i: usize) -> bool {
            self.up[i]
        }
        fn load(&self, i: usize) -> usize {
            self.load[i]
        }
        fn weight(&self, i: usize) -> u32 {
            self.weight[i]
        }
    }

    fn rng() -> SmallRng {
        SmallRng::seed_from_u64(7)
    }

    #[test]
    fn nginx_sequence_is_smooth() {
        assert_eq!(smooth_sequence(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_sequence(&[1, 1, 1]), vec![0, 1, 2]);
        // Common divisor removed: 2:2:2 is 1:1:1.
        assert_eq!(smooth_sequence(&[2, 2, 2]), vec![0, 1, 2]);
        let s = smooth_sequence(&[1, 2, 3]);
        assert_eq!(s.len(), 6);
        for (i, want) in [(0u32, 1), (1, 2), (2, 3)] {
            assert_eq!(s.iter().filter(|&&x| x == i).count(), want);
        }
    }

    #[test]
    fn deadline_sequence_honours_weights_and_spreads() {
        let s = deadline_sequence(&[5, 1, 1], 7);
        assert_eq!(s.iter().filter(|&&x| x == 0).count(), 5);
        // the light clones are served mid-cycle, not after the heavy one's five turns
        assert_eq!(s, vec![0, 0, 0, 1, 2, 0, 0]);
        assert_eq!(deadline_sequence(&[1, 1, 1], 3), vec![0, 1, 2]);
    }

    #[test]
    fn huge_weights_are_scaled_to_fit() {
        let weights: Vec<u32> = (0..5000).map(|i| 1 + (i % 1000)).collect();
        let s = smooth_sequence(&weights);
        assert!(s.len() <= MAX_SEQUENCE + weights.len());
        // every clone still appears
        let mut seen = vec![false; weights.len()];
        for &i in &s {
            seen[i as usize] = true;
        }
        assert!(seen.iter().all(|&x| x));
    }

    #[test]
    fn round_robin_rotates_and_skips_unavailable_evenly() {
        let rr = RoundRobin::new(&[1, 1, 1]);
        let mut f = Fake::new(3);
        let picks: Vec<_> = (0..6).map(|_| rr.pick(&f, &mut rng()).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        f.up[1] = false;
        let mut counts = [0; 3];
        for _ in 0..100 {
            counts[rr.pick(&f, &mut rng()).unwrap()] += 1;
        }
        assert_eq!(counts, [50, 0, 50]);
    }

    #[test]
    fn all_down_is_none() {
        let mut f = Fake::new(40);
        f.up.iter_mut().for_each(|u| *u = false);
        let w = vec![1; 40];
        assert_eq!(RoundRobin::new(&w).pick(&f, &mut rng()), None);
        assert_eq!(LeastConnections::new().pick(&f, &mut rng()), None);
        assert_eq!(RoundRobin::new(&[]).pick(&Fake::new(0), &mut rng()), None);
        assert_eq!(
            LeastConnections::new().pick(&Fake::new(0), &mut rng()),
            None
        );
    }

    #[test]
    fn least_connections_prefers_idle_and_spreads_ties() {
        let lc = LeastConnections::new();
        let mut f = Fake::new(3);
        f.load = vec![10, 0, 0];
        let mut counts = [0; 3];
        let mut r = rng();
        for _ in 0..20 {
            counts[lc.pick(&f, &mut r).unwrap()] += 1;
        }
        assert_eq!(counts[0], 0);
        assert!(counts[1] >= 8 && counts[2] >= 8, "{counts:?}");
        // weights: 4 in flight on a weight-4 clone is as loaded as 1 on weight 1
        f.load = vec![4, 2, 2];
        f.weight = vec![4, 1, 1];
        assert_eq!(lc.pick(&f, &mut rng()), Some(0));
    }

    #[test]
    fn property_never_picks_unavailable() {
        let mut r = rng();
        for n in [1usize, 2, 3, 10, 33, 100] {
            for round in 0..200 {
                let mut f = Fake::new(n);
                for i in 0..n {
                    f.up[i] = !r.next_u32().is_multiple_of(3);
                    f.load[i] = (r.next_u32() % 5) as usize;
                    f.weight[i] = 1 + r.next_u32() % 5;
                }
                let any = f.up.iter().any(|&u| u);
                let w = f.weight.clone();
                let strategies = [
                    Picker::new(StrategyKind::RoundRobin, &w),
                    Picker::new(StrategyKind::LeastConnections, &w),
                ];
                for s in &strategies {
                    match s.pick(&f, &mut r) {
                        Some(i) => assert!(f.up[i], "n={n} round={round}"),
                        None => assert!(!any, "n={n} round={round}: none picked"),
                    }
                }
            }
        }
    }

    #[test]
    fn p2c_spreads_over_large_pools() {
        let lc = LeastConnections::new();
        let mut f = Fake::new(100);
        f.load = vec![5; 100];
        f.load[42] = 0;
        let mut r = rng();
        let hits = (0..1000)
            .filter(|_| lc.pick(&f, &mut r) == Some(42))
            .count();
        // With two samples the idle clone wins whenever it is drawn: ~2% of picks.
        assert!(hits >= 5, "{hits}");
    }
}

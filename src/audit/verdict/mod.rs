//! Answers compared with their replays (see the module docs of `audit`).
//!
//! Pure parts only: no I/O, no async, no clock. Nothing in the crate calls this yet; the
//! plumbing (the response tap, the replays on the admin runtime, `/status`) will.
//!
//! * [`BodyHash`] (hash.rs): the streaming body hash the tap feeds frame by frame.
//! * [`Answer`] and [`compare`] (answer.rs): what a response looks like for comparison,
//!   and the first [`Difference`] between an answer and its replay.
//! * [`Verdicts`]: each clone's (compared, disagreed) window, the odd clone, the ring of
//!   recent mismatches and the counters; [`Verdicts::snapshot`] for `/status`.
//!
//! Privacy: nothing here keeps a query string, a header value or a cookie. A mismatch keeps
//! the path up to its `?`, the two clones and what differed (a header's *name* at most).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

mod answer;
mod hash;
#[cfg(test)]
mod tests;

pub use answer::{compare, Answer, Difference};
pub use hash::BodyHash;

/// Comparisons kept per clone (the window of its (compared, disagreed) counts).
pub const WINDOW: usize = 1_000;
/// Comparisons in the pool ring behind "the rate among comparisons not involving a clone".
pub const POOL_WINDOW: usize = 4 * WINDOW;
/// Compared samples a clone needs in its window before it can be named the odd clone.
pub const MIN_SAMPLES: u32 = 20;
/// Mismatches kept for the page.
pub const RECENT: usize = 20;

/// A clone as the verdicts know it: its address is its identity (as everywhere in
/// clonelb), the name is for display and follows the latest [`Verdicts::record`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CloneKey {
    pub addr: SocketAddr,
    pub name: Arc<str>,
}

impl CloneKey {
    pub fn new(addr: SocketAddr, name: impl Into<Arc<str>>) -> Self {
        CloneKey {
            addr,
            name: name.into(),
        }
    }
}

/// One recent mismatch, for the page: the path without its query, the two clones, and
/// what differed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub path: Box<str>,
    pub served: CloneKey,
    pub peer: CloneKey,
    pub difference: Difference,
}

/// One clone in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneVerdict {
    pub clone: CloneKey,
    /// Comparisons in its window (at most [`WINDOW`]).
    pub compared: u32,
    /// Of those, the ones that disagreed.
    pub disagreed: u32,
    /// Mismatches it was part of since it joined (never reset; for the metric).
    pub mismatches: u64,
}

/// The verdicts as `/status` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub checked: u64,
    pub mismatches: u64,
    pub odd_clone: Option<CloneKey>,
    /// Newest first, at most [`RECENT`].
    pub recent: Vec<Mismatch>,
    /// Sorted by address.
    pub clones: Vec<CloneVerdict>,
}

/// The last [`WINDOW`] outcomes of one clone: a ring of bits, counts kept incrementally.
#[derive(Debug, Clone)]
struct Window {
    bits: [u64; WINDOW.div_ceil(64)],
    next: usize,
    len: u32,
    disagreed: u32,
}

impl Window {
    fn new() -> Self {
        Window {
            bits: [0; WINDOW.div_ceil(64)],
            next: 0,
            len: 0,
            disagreed: 0,
        }
    }

    fn push(&mut self, disagreed: bool) {
        let (word, bit) = (self.next / 64, 1u64 << (self.next % 64));
        if self.len as usize == WINDOW {
            if self.bits[word] & bit != 0 {
                self.disagreed -= 1;
            }
        } else {
            self.len += 1;
        }
        if disagreed {
            self.bits[word] |= bit;
            self.disagreed += 1;
        } else {
            self.bits[word] &= !bit;
        }
        self.next = (self.next + 1) % WINDOW;
    }
}

/// A tracked clone.
#[derive(Debug, Clone)]
struct Tracked {
    key: CloneKey,
    window: Window,
    /// (comparisons, disagreements) in the pool ring that involve this clone.
    in_pool: (u32, u32),
    mismatches: u64,
}

/// Where a forgotten clone was, in the pool ring.
const GONE: u32 = u32::MAX;

/// One comparison in the pool ring: the two clones' slots and the outcome.
#[derive(Debug, Clone, Copy)]
struct Entry {
    a: u32,
    b: u32,
    disagreed: bool,
}

/// The verdicts: fed one comparison at a time by [`record`](Self::record).
///
/// Per clone: its last [`WINDOW`] outcomes as a ring of bits (128 bytes) with the
/// (compared, disagreed) counts kept incrementally, and its mismatch total. A mismatch
/// counts against *both* clones of the pair: the verdicts cannot tell which one is wrong
/// from one comparison; the odd clone is what tells them apart.
///
/// **The odd clone** needs the rate among comparisons *not* involving a clone. Instead of
/// per-pair counts (quadratic in the pool), the verdicts keep one ring of the pool's last
/// [`POOL_WINDOW`] comparisons (two clone slots and the outcome, 12 bytes each), its
/// disagreement count, and per clone its (comparisons, disagreements) in that ring, all
/// updated incrementally on push and eviction. "Not involving X" is then the ring's
/// totals minus X's share: O(1) per clone, O(clones) for [`odd_clone`](Self::odd_clone).
/// The ring is four windows long, so with 3 clones (each in 2/3 of the comparisons,
/// a window spanning 1,500 of the pool's) the baseline covers every clone's window.
///
/// [`reset`](Self::reset) clears one clone's window only: its past comparisons stay in the
/// pool ring and in its peers' windows, as they are part of those peers' history too.
/// [`forget`](Self::forget) drops the clone and turns its slot in the pool ring into a
/// tombstone (the outcomes still count for the others), so its slot can be reused.
///
/// Memory: about 250 bytes per clone (slot and index entry), plus 48 KB for the pool
/// ring and [`RECENT`] paths, whatever the pool size. Not synchronized: the caller wraps
/// it in a mutex.
#[derive(Debug, Clone, Default)]
pub struct Verdicts {
    index: HashMap<SocketAddr, u32>,
    slots: Vec<Option<Tracked>>,
    free: Vec<u32>,
    pool: Vec<Entry>,
    /// Once `pool` is full, the oldest entry (the next to be overwritten).
    pool_next: usize,
    pool_disagreed: u32,
    checked: u64,
    mismatches: u64,
    recent: VecDeque<Mismatch>,
}

impl Verdicts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one comparison: `served` answered the user, `peer` the replay, `difference`
    /// is [`compare`]'s result. Only the part of `path` before any `?` is kept. A clone
    /// compared with itself (`served.addr == peer.addr`) is ignored entirely.
    pub fn record(
        &mut self,
        served: CloneKey,
        peer: CloneKey,
        path: &str,
        difference: Option<Difference>,
    ) {
        if served.addr == peer.addr {
            return;
        }
        let disagreed = difference.is_some();
        let a = self.slot(&served);
        let b = self.slot(&peer);
        for s in [a, b] {
            if let Some(t) = self.tracked_mut(s) {
                t.window.push(disagreed);
                t.in_pool.0 += 1;
                if disagreed {
                    t.in_pool.1 += 1;
                    t.mismatches += 1;
                }
            }
        }
        self.push_pool(Entry { a, b, disagreed });
        self.checked += 1;
        if let Some(difference) = difference {
            self.mismatches += 1;
            let path = path.split_once('?').map_or(path, |(p, _)| p);
            if self.recent.len() == RECENT {
                self.recent.pop_back();
            }
            self.recent.push_front(Mismatch {
                path: path.into(),
                served,
                peer,
                difference,
            });
        }
    }

    /// Clears one clone's window (it went down, was enabled, or reports a new version).
    /// Its mismatch total and the counters stay. Unknown addresses are ignored.
    pub fn reset(&mut self, addr: SocketAddr) {
        if let Some(&s) = self.index.get(&addr) {
            if let Some(t) = self.tracked_mut(s) {
                t.window = Window::new();
            }
        }
    }

    /// Drops a clone that left the pool. Its past comparisons keep counting in the pool
    /// ring for the others; the recent mismatches that name it stay.
    pub fn forget(&mut self, addr: SocketAddr) {
        let Some(s) = self.index.remove(&addr) else {
            return;
        };
        for e in &mut self.pool {
            if e.a == s {
                e.a = GONE;
            }
            if e.b == s {
                e.b = GONE;
            }
        }
        if let Some(slot) = self.slots.get_mut(s as usize) {
            *slot = None;
        }
        self.free.push(s);
    }

    /// Comparisons recorded.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// Mismatches recorded.
    pub fn mismatches(&self) -> u64 {
        self.mismatches
    }

    /// A clone's (compared, disagreed) in its window, if it is tracked.
    pub fn window(&self, addr: SocketAddr) -> Option<(u32, u32)> {
        let t = self.tracked(*self.index.get(&addr)?)?;
        Some((t.window.len, t.window.disagreed))
    }

    /// The odd clone: with 3 or more tracked clones, one with at least [`MIN_SAMPLES`]
    /// comparisons in its window whose disagreement rate there is at least twice, and at
    /// least 10 percentage points above, the rate among the pool ring's comparisons not
    /// involving it (none of those: it cannot be judged). If several qualify, the highest
    /// rate wins, then the lowest address. Exact integer arithmetic, no float boundaries.
    pub fn odd_clone(&self) -> Option<&CloneKey> {
        if self.index.len() < 3 {
            return None;
        }
        let total = self.pool.len() as u64;
        let total_disagreed = u64::from(self.pool_disagreed);
        let mut best: Option<&Tracked> = None;
        for t in self.slots.iter().flatten() {
            let (c, d) = (u64::from(t.window.len), u64::from(t.window.disagreed));
            let bc = total - u64::from(t.in_pool.0);
            let bd = total_disagreed - u64::from(t.in_pool.1);
            // d/c >= 2·bd/bc  and  d/c >= bd/bc + 1/10
            if c < u64::from(MIN_SAMPLES)
                || bc == 0
                || d * bc < 2 * bd * c
                || 10 * d * bc < 10 * bd * c + c * bc
            {
                continue;
            }
            best = match best {
                None => Some(t),
                Some(b) => {
                    let (oc, od) = (u64::from(b.window.len), u64::from(b.window.disagreed));
                    // t wins on a higher rate (d/c > od/oc), or on the same rate and a
                    // lower address.
                    let better = (d * oc, b.key.addr) > (od * c, t.key.addr);
                    Some(if better { t } else { b })
                }
            };
        }
        best.map(|t| &t.key)
    }

    /// Everything `/status` shows.
    pub fn snapshot(&self) -> Snapshot {
        let mut clones: Vec<CloneVerdict> = self
            .slots
            .iter()
            .flatten()
            .map(|t| CloneVerdict {
                clone: t.key.clone(),
                compared: t.window.len,
                disagreed: t.window.disagreed,
                mismatches: t.mismatches,
            })
            .collect();
        clones.sort_unstable_by_key(|c| c.clone.addr);
        Snapshot {
            checked: self.checked,
            mismatches: self.mismatches,
            odd_clone: self.odd_clone().cloned(),
            recent: self.recent.iter().cloned().collect(),
            clones,
        }
    }

    fn tracked(&self, s: u32) -> Option<&Tracked> {
        self.slots.get(s as usize)?.as_ref()
    }

    fn tracked_mut(&mut self, s: u32) -> Option<&mut Tracked> {
        self.slots.get_mut(s as usize)?.as_mut()
    }

    /// The clone's slot, creating it if new; refreshes its display name.
    fn slot(&mut self, key: &CloneKey) -> u32 {
        if let Some(&s) = self.index.get(&key.addr) {
            if let Some(t) = self.tracked_mut(s) {
                if t.key.name != key.name {
                    t.key.name = key.name.clone();
                }
            }
            return s;
        }
        let tracked = Tracked {
            key: key.clone(),
            window: Window::new(),
            in_pool: (0, 0),
            mismatches: 0,
        };
        let s = match self.free.pop() {
            Some(s) => {
                if let Some(slot) = self.slots.get_mut(s as usize) {
                    *slot = Some(tracked);
                }
                s
            }
            None => {
                self.slots.push(Some(tracked));
                // Slots are bounded by the pool size, far below u32::MAX (GONE).
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(key.addr, s);
        s
    }

    fn push_pool(&mut self, entry: Entry) {
        if entry.disagreed {
            self.pool_disagreed += 1;
        }
        if self.pool.len() < POOL_WINDOW {
            self.pool.push(entry);
            return;
        }
        let Some(slot) = self.pool.get_mut(self.pool_next) else {
            return;
        };
        let old = std::mem::replace(slot, entry);
        self.pool_next = (self.pool_next + 1) % POOL_WINDOW;
        if old.disagreed {
            self.pool_disagreed -= 1;
        }
        for s in [old.a, old.b] {
            if let Some(t) = self.tracked_mut(s) {
                t.in_pool.0 -= 1;
                if old.disagreed {
                    t.in_pool.1 -= 1;
                }
            }
        }
    }
}

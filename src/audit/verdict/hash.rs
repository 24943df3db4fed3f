//! The streaming body hash (see [`BodyHash`]).

const SEED: u64 = 0x243f_6a88_85a3_08d3; // digits of pi: the empty body does not hash to 0
const MUL: u64 = 0x9e37_79b9_7f4a_7c15; // odd (2^64 / golden ratio)

/// A streaming 64-bit non-cryptographic hash of a response body, fed chunk by chunk.
///
/// The result depends only on the bytes, never on where the chunks were cut: bytes are
/// gathered into little-endian 8-byte words (a partial word waits in `tail` for the next
/// chunk), and each word goes through one round `x = (h ^ w) * MUL; h = x ^ (x >> 32)`,
/// one multiply per 8 bytes. The round is a bijection of `h` for a given word and of the
/// word for a given `h`, so two bodies of the same length that differ in a single word can
/// never collide. [`finish`](Self::finish) hashes the partial last word (zero-padded),
/// mixes in the length (so padding is not ambiguous) and ends with murmur3's `fmix64`
/// avalanche. Not keyed and not collision-resistant against an adversary: it tells apart
/// a clone's answers from its peer's, which are not crafted to collide.
///
/// Why not `std::hash::DefaultHasher`: SipHash is several times slower per byte, its
/// output is not guaranteed stable across Rust releases, and `Hasher::write` is only
/// chunk-invariant by accident of the implementation. FNV-1a is byte-at-a-time (slow).
///
/// Past `max_response` bytes the hash stops (the answer is not comparable) and only
/// [`len`](Self::len) keeps counting; check [`overflowed`](Self::overflowed).
#[derive(Debug, Clone)]
pub struct BodyHash {
    state: u64,
    tail: [u8; 8],
    tail_len: usize,
    len: u64,
    max: u64,
    overflowed: bool,
}

#[inline]
fn round(h: u64, word: u64) -> u64 {
    let x = (h ^ word).wrapping_mul(MUL);
    x ^ (x >> 32)
}

/// murmur3's 64-bit finalizer (a bijection with full avalanche).
#[inline]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

#[inline]
fn word(bytes: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(w)
}

impl BodyHash {
    /// A hash that stops once more than `max_response` bytes were seen.
    pub fn new(max_response: u64) -> Self {
        BodyHash {
            state: SEED,
            tail: [0; 8],
            tail_len: 0,
            len: 0,
            max: max_response,
            overflowed: false,
        }
    }

    /// Feeds the next chunk (a data frame). After an overflow only the length is counted.
    pub fn update(&mut self, chunk: &[u8]) {
        self.len = self.len.saturating_add(chunk.len() as u64);
        if self.overflowed || self.len > self.max {
            self.overflowed = true;
            return;
        }
        let mut rest = chunk;
        if self.tail_len > 0 {
            let take = (8 - self.tail_len).min(rest.len());
            self.tail[self.tail_len..self.tail_len + take].copy_from_slice(&rest[..take]);
            self.tail_len += take;
            rest = &rest[take..];
            if self.tail_len < 8 {
                return;
            }
            self.state = round(self.state, u64::from_le_bytes(self.tail));
            self.tail_len = 0;
        }
        let mut words = rest.chunks_exact(8);
        let mut h = self.state;
        for w in &mut words {
            h = round(h, word(w));
        }
        self.state = h;
        let rem = words.remainder();
        self.tail[..rem.len()].copy_from_slice(rem);
        self.tail_len = rem.len();
    }

    /// The hash of the bytes fed so far (meaningless once [`overflowed`](Self::overflowed)).
    pub fn finish(&self) -> u64 {
        let mut h = self.state;
        if self.tail_len > 0 {
            h = round(h, word(&self.tail[..self.tail_len]));
        }
        fmix64(h ^ self.len)
    }

    /// Bytes seen, including those past `max_response`.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// More than `max_response` bytes were seen: the answer is not comparable.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }
}

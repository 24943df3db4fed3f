//! Request IDs: every forwarded request carries `X-Request-Id`, and so does its answer.
//!
//! The client's own ID is kept when `[proxy] trust_forwarded = true` and it is sane
//! (visible ASCII, 1..=128 bytes); otherwise a new one is made: 128 random bits as 32
//! lowercase hex digits. The ID travels in the request's [`crate::body::Recorder`]: to the
//! clone (request header), to the client (response header, and clonelb's own error
//! pages), and to the access log.
//!
//! Cost: a kept ID is a `HeaderValue` clone (a reference count); a new one is one small
//! allocation (the only one the request record makes).
//!
//! Owns: the ID's rules. Must not touch: anything else (a leaf).

use std::cell::RefCell;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The header's name, in requests and responses.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest client ID kept.
pub const MAX_LEN: usize = 128;

thread_local! {
    /// Per worker thread, seeded from the OS: IDs need to be unique, not secret.
    static RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_rng(&mut rand::rng()));
}

/// The ID of a request arriving with `headers`: the client's when `trusted` and sane,
/// else a new one.
#[inline]
pub fn of(headers: &HeaderMap, trusted: bool) -> HeaderValue {
    if trusted {
        if let Some(v) = headers.get(X_REQUEST_ID).filter(|v| is_sane(v)) {
            return v.clone();
        }
    }
    generate()
}

/// Visible ASCII (no spaces, no controls), 1..=[`MAX_LEN`] bytes.
pub fn is_sane(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty() && b.len() <= MAX_LEN && b.iter().all(|c| (0x21..=0x7e).contains(c))
}

/// A new ID: 128 random bits, 32 lowercase hex digits.
pub fn generate() -> HeaderValue {
    let bits = RNG.with(|rng| {
        let rng = &mut *rng.borrow_mut();
        (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64())
    });
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (i, slot) in out.iter_mut().enumerate() {
        *slot = HEX[((bits >> (124 - 4 * i)) & 0xf) as usize];
    }
    // 32 hex digits are always a valid header value; the fallback is never taken.
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_32_hex_digits_and_differ() {
        let a = generate();
        let b = generate();
        assert_eq!(a.len(), 32);
        assert!(a.as_bytes().iter().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(is_sane(&a));
    }

    #[test]
    fn client_ids_are_kept_only_when_trusted_and_sane() {
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(of(&h, true), "abc-123");
        assert_ne!(of(&h, false), "abc-123");
        for insane in ["has space", "", &"x".repeat(129)] {
            h.insert(X_REQUEST_ID, HeaderValue::from_str(insane).unwrap());
            let id = of(&h, true);
            assert_ne!(id, insane);
            assert_eq!(id.len(), 32);
        }
        h.insert(
            X_REQUEST_ID,
            HeaderValue::from_str(&"y".repeat(128)).unwrap(),
        );
        assert_eq!(of(&h, true).len(), 128);
        h.insert(
            X_REQUEST_ID,
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert_eq!(of(&h, true).len(), 32, "not ASCII");
    }
}

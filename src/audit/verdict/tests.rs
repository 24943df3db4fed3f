//! Unit tests of `audit::verdict`.

use super::*;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use proptest::prelude::*;

fn hash(max: u64, chunks: &[&[u8]]) -> BodyHash {
    let mut h = BodyHash::new(max);
    for c in chunks {
        h.update(c);
    }
    h
}

fn body(n: usize) -> Vec<u8> {
    // A fixed pseudo-random body (an LCG), so every byte value and alignment shows up.
    let mut x = 0x1234_5678_u32;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) as u8
        })
        .collect()
}

#[test]
fn hash_is_chunk_invariant_at_every_split_and_size() {
    let data = body(203);
    let whole = hash(u64::MAX, &[&data]).finish();
    for cut in 0..=data.len() {
        let (a, b) = data.split_at(cut);
        assert_eq!(hash(u64::MAX, &[a, b]).finish(), whole, "cut at {cut}");
        for cut2 in (cut..=data.len()).step_by(7) {
            let (b1, b2) = b.split_at(cut2 - cut);
            assert_eq!(hash(u64::MAX, &[a, &[], b1, b2]).finish(), whole);
        }
    }
    for size in 1..=33 {
        let chunks: Vec<&[u8]> = data.chunks(size).collect();
        assert_eq!(hash(u64::MAX, &chunks).finish(), whole, "chunks of {size}");
    }
}

proptest! {
    #[test]
    fn hash_ignores_chunk_boundaries(
        data in proptest::collection::vec(any::<u8>(), 0..300),
        mut cuts in proptest::collection::vec(0usize..300, 0..8),
    ) {
        cuts.iter_mut().for_each(|c| *c %= data.len() + 1);
        cuts.sort_unstable();
        let mut chunks = Vec::new();
        let mut from = 0;
        for &c in &cuts {
            chunks.push(&data[from..c]);
            from = c;
        }
        chunks.push(&data[from..]);
        prop_assert_eq!(hash(u64::MAX, &chunks).finish(), hash(u64::MAX, &[&data]).finish());
    }
}

#[test]
fn hash_tells_bodies_apart() {
    let mut seen = std::collections::HashSet::new();
    // Trailing zeros (padding must not be ambiguous), lengths, every single-byte flip.
    for b in [
        &b""[..],
        b"\0",
        b"\0\0",
        b"a",
        b"a\0",
        b"abcdefgh",
        b"abcdefgh\0",
    ] {
        assert!(seen.insert(hash(u64::MAX, &[b]).finish()), "{b:?}");
    }
    let data = body(100);
    for i in 0..data.len() {
        let mut flipped = data.clone();
        flipped[i] ^= 1;
        assert!(
            seen.insert(hash(u64::MAX, &[&flipped]).finish()),
            "flip at {i}"
        );
    }
    assert!(seen.insert(hash(u64::MAX, &[&data]).finish()));
    // Deterministic.
    assert_eq!(hash(0, &[]).finish(), BodyHash::new(5).finish());
}

#[test]
fn hash_overflows_past_max_response_and_keeps_counting() {
    let mut h = hash(10, &[b"01234", b"56789"]);
    assert!(!h.overflowed());
    assert_eq!(h.finish(), hash(u64::MAX, &[b"0123456789"]).finish());
    h.update(b"x");
    assert!(h.overflowed());
    h.update(b"yz");
    assert!(h.overflowed());
    assert_eq!(h.len(), 13);
    assert!(!h.is_empty());
    assert!(hash(3, &[b"abcd"]).overflowed());
}

fn answer(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut map = HeaderMap::new();
    for (n, v) in headers {
        let name = HeaderName::from_bytes(n.as_bytes()).unwrap();
        map.append(name, HeaderValue::from_str(v).unwrap());
    }
    let status = StatusCode::from_u16(status).unwrap();
    Answer::new(status, map, &hash(u64::MAX, &[body]))
}

fn name(n: &str) -> HeaderName {
    HeaderName::from_bytes(n.as_bytes()).unwrap()
}

#[test]
fn compare_agrees_on_the_same_answer_whatever_the_order_of_names() {
    let a = answer(
        200,
        &[("a", "1"), ("b", "2"), ("c", "3"), ("c", "4")],
        b"hi",
    );
    let b = answer(
        200,
        &[("c", "3"), ("b", "2"), ("C", "4"), ("A", "1")],
        b"hi",
    );
    assert_eq!(compare(&a, &b, &[]), None);
    assert_eq!(compare(&b, &a, &[]), None);
}

#[test]
fn compare_finds_status_then_headers_then_body() {
    let base = answer(200, &[("x-foo", "1")], b"hi");
    let status = answer(500, &[("x-foo", "2")], b"ho");
    assert_eq!(compare(&base, &status, &[]), Some(Difference::Status));
    let header = answer(200, &[("x-foo", "2")], b"ho");
    assert_eq!(
        compare(&base, &header, &[]),
        Some(Difference::Header(name("x-foo")))
    );
    let body = answer(200, &[("x-foo", "1")], b"ho");
    assert_eq!(compare(&base, &body, &[]), Some(Difference::Body));
    // Same hash, other length (as the caller could build it): still the body.
    let mut longer = base.clone();
    longer.body_len += 1;
    assert_eq!(compare(&base, &longer, &[]), Some(Difference::Body));
}

#[test]
fn compare_headers_one_sided_ordered_values_and_first_name() {
    let base = answer(200, &[("x-a", "1"), ("x-v", "1"), ("x-v", "2")], b"");
    let extra = answer(
        200,
        &[("x-a", "1"), ("x-v", "1"), ("x-v", "2"), ("x-z", "")],
        b"",
    );
    let d = Some(Difference::Header(name("x-z")));
    assert_eq!(compare(&base, &extra, &[]), d);
    assert_eq!(compare(&extra, &base, &[]), d);
    let swapped = answer(200, &[("x-a", "1"), ("x-v", "2"), ("x-v", "1")], b"");
    assert_eq!(
        compare(&base, &swapped, &[]),
        Some(Difference::Header(name("x-v")))
    );
    let fewer = answer(200, &[("x-a", "1"), ("x-v", "1")], b"");
    assert_eq!(
        compare(&base, &fewer, &[]),
        Some(Difference::Header(name("x-v")))
    );
    // Several differ: the name that sorts first, whichever side it is on.
    let many = answer(200, &[("x-v", "9"), ("x-z", "1"), ("x-b", "1")], b"");
    assert_eq!(
        compare(&base, &many, &[]),
        Some(Difference::Header(name("x-a")))
    );
    assert_eq!(
        compare(&many, &base, &[]),
        Some(Difference::Header(name("x-a")))
    );
}

#[test]
fn compare_skips_ignored_headers_case_insensitively() {
    let a = answer(
        200,
        &[("Date", "Mon"), ("x-request-id", "1"), ("x-k", "1")],
        b"",
    );
    let b = answer(
        200,
        &[("date", "Tue"), ("x-k", "1"), ("Set-Cookie", "s=1")],
        b"",
    );
    let ignore = [name("DATE"), name("X-Request-Id"), name("set-cookie")];
    assert_eq!(compare(&a, &b, &ignore), None);
    assert_eq!(
        compare(&a, &b, &ignore[..2]),
        Some(Difference::Header(name("set-cookie")))
    );
    let c = answer(200, &[("date", "Tue"), ("x-k", "2")], b"");
    assert_eq!(
        compare(&a, &c, &ignore),
        Some(Difference::Header(name("x-k")))
    );
}

#[test]
fn difference_display() {
    assert_eq!(Difference::Status.to_string(), "status");
    assert_eq!(
        Difference::Header(name("X-Foo")).to_string(),
        "header x-foo"
    );
    assert_eq!(Difference::Body.to_string(), "body");
}

fn key(n: u8) -> CloneKey {
    CloneKey::new(SocketAddr::from(([10, 0, 0, n], 80)), format!("c{n}"))
}

/// Records `times` comparisons of clones `a` and `b`, `disagree` of them first disagreeing.
fn run(v: &mut Verdicts, a: u8, b: u8, times: u32, disagree: u32) {
    for i in 0..times {
        let d = (i < disagree).then_some(Difference::Body);
        v.record(key(a), key(b), "/p?q=secret", d);
    }
}

#[test]
fn counters_count_a_mismatch_against_both_clones() {
    let mut v = Verdicts::new();
    run(&mut v, 1, 2, 5, 2);
    run(&mut v, 2, 3, 4, 1);
    v.record(key(1), key(1), "/self", Some(Difference::Status)); // ignored
    let s = v.snapshot();
    assert_eq!((s.checked, s.mismatches), (9, 3));
    let per: Vec<_> = s
        .clones
        .iter()
        .map(|c| (c.compared, c.disagreed, c.mismatches))
        .collect();
    assert_eq!(per, [(5, 2, 2), (9, 3, 3), (4, 1, 1)]);
    assert_eq!(s.clones[0].clone, key(1));
    assert_eq!((v.checked(), v.mismatches()), (9, 3));
}

#[test]
fn window_slides_past_a_thousand() {
    let mut v = Verdicts::new();
    run(&mut v, 1, 2, 1, 1);
    run(&mut v, 1, 2, 999, 0);
    assert_eq!(v.window(key(1).addr), Some((1000, 1)));
    run(&mut v, 1, 2, 1, 0); // the 1,001st evicts the first (the disagreement)
    assert_eq!(v.window(key(1).addr), Some((1000, 0)));
    run(&mut v, 1, 2, 1500, 1500);
    assert_eq!(v.window(key(2).addr), Some((1000, 1000)));
    assert_eq!(v.mismatches(), 1501);
}

#[test]
fn reset_clears_one_window_only() {
    let mut v = Verdicts::new();
    run(&mut v, 1, 2, 30, 10);
    v.reset(key(1).addr);
    v.reset(key(9).addr); // unknown: nothing
    assert_eq!(v.window(key(1).addr), Some((0, 0)));
    assert_eq!(v.window(key(2).addr), Some((30, 10)));
    assert_eq!(v.window(key(9).addr), None);
    let s = v.snapshot();
    assert_eq!(
        (s.checked, s.mismatches, s.clones[0].mismatches),
        (30, 10, 10)
    );
    run(&mut v, 1, 2, 3, 3);
    assert_eq!(v.window(key(1).addr), Some((3, 3)));
}

/// One odd clone (1) of three: disagrees whenever it is involved; 2 and 3 agree.
fn odd_one_out(v: &mut Verdicts, rounds: u32) {
    for _ in 0..rounds {
        run(v, 1, 2, 1, 1);
        run(v, 3, 1, 1, 1);
        run(v, 2, 3, 1, 0);
    }
}

#[test]
fn odd_clone_is_the_one_that_disagrees_with_everyone() {
    let mut v = Verdicts::new();
    odd_one_out(&mut v, 10);
    assert_eq!(v.odd_clone(), Some(&key(1)));
    assert_eq!(v.snapshot().odd_clone, Some(key(1)));
    v.reset(key(1).addr); // fixed (a new version): judged again from scratch
    assert_eq!(v.odd_clone(), None);
}

#[test]
fn odd_clone_needs_twenty_samples() {
    let mut v = Verdicts::new();
    run(&mut v, 2, 3, 50, 0);
    run(&mut v, 1, 2, 19, 19);
    assert_eq!(v.window(key(1).addr), Some((19, 19)));
    assert_eq!(v.odd_clone(), None);
    run(&mut v, 1, 3, 1, 1);
    assert_eq!(v.odd_clone(), Some(&key(1)));
}

#[test]
fn odd_clone_needs_three_clones() {
    let mut v = Verdicts::new();
    run(&mut v, 2, 3, 50, 0);
    run(&mut v, 1, 2, 30, 30);
    assert_eq!(v.odd_clone(), Some(&key(1)));
    // Clone 3 leaves: its agreements with 2 stay in the baseline, but two clones cannot
    // tell which of them is odd.
    v.forget(key(3).addr);
    assert_eq!(v.odd_clone(), None);
    run(&mut v, 1, 2, 30, 30);
    assert_eq!(v.odd_clone(), None);
    assert_eq!(v.snapshot().clones.len(), 2);
}

#[test]
fn no_odd_clone_when_everyone_disagrees_alike() {
    let mut v = Verdicts::new();
    for disagree in [1, 0] {
        run(&mut v, 1, 2, 40, 40 * disagree);
        run(&mut v, 2, 3, 40, 40 * disagree);
        run(&mut v, 3, 1, 40, 40 * disagree);
        assert_eq!(v.odd_clone(), None);
    }
    let mut v = Verdicts::new();
    for _ in 0..50 {
        run(&mut v, 1, 2, 2, 1);
        run(&mut v, 2, 3, 2, 1);
        run(&mut v, 3, 1, 2, 1);
    }
    assert_eq!(v.odd_clone(), None);
}

/// Clone 1 compared 100 times with 2 only, `odd` disagreeing; 2 and 3 compared 100 times,
/// `base` disagreeing. Only clone 1 can qualify (2 and 3 have worse baselines or none).
fn boundary(odd: u32, base: u32) -> Option<CloneKey> {
    let mut v = Verdicts::new();
    run(&mut v, 2, 3, 100, base);
    run(&mut v, 1, 2, 100, odd);
    v.odd_clone().cloned()
}

#[test]
fn odd_clone_needs_twice_the_baseline() {
    // Baseline 20 %: 39 % is 19 points above but not twice; 40 % is both.
    assert_eq!(boundary(39, 20), None);
    assert_eq!(boundary(40, 20), Some(key(1)));
}

#[test]
fn odd_clone_needs_ten_points_above_the_baseline() {
    // Baseline 2 %: 11 % is 5.5 times but 9 points above; 12 % is 10 points.
    assert_eq!(boundary(11, 2), None);
    assert_eq!(boundary(12, 2), Some(key(1)));
    // Baseline 0 %: 9 % is "infinitely" worse but not 10 points.
    assert_eq!(boundary(9, 0), None);
    assert_eq!(boundary(10, 0), Some(key(1)));
}

#[test]
fn several_odd_clones_highest_rate_then_lowest_address() {
    // 2 disagrees with 3 always, 1 with 4 in 19 of 20; 3 and 4 agree 200 times.
    let mut v = Verdicts::new();
    run(&mut v, 3, 4, 200, 0);
    run(&mut v, 1, 4, 20, 19);
    run(&mut v, 2, 3, 20, 20);
    assert_eq!(v.odd_clone(), Some(&key(2)));
    // Same rates: the lowest address, whatever the order of arrival.
    let mut v = Verdicts::new();
    run(&mut v, 3, 4, 200, 0);
    run(&mut v, 2, 3, 20, 20);
    run(&mut v, 1, 4, 20, 20);
    assert_eq!(v.odd_clone(), Some(&key(1)));
}

#[test]
fn forget_then_rejoin_starts_fresh_and_the_pool_ring_stays_consistent() {
    let mut v = Verdicts::new();
    odd_one_out(&mut v, 10);
    v.forget(key(1).addr);
    v.forget(key(1).addr); // twice: nothing
    run(&mut v, 4, 2, 5, 0); // 4 reuses 1's slot
    assert_eq!(v.window(key(4).addr), Some((5, 0)));
    assert_eq!(v.window(key(1).addr), None);
    // Run the pool ring round more than once: evicting the tombstones must not touch
    // clone 4's counts (an underflow would panic in this debug build).
    odd_one_out(&mut v, 2_000);
    assert_eq!(v.window(key(4).addr), Some((5, 0)));
    assert_eq!(v.odd_clone(), Some(&key(1)));
    let total = v.pool.len() as u32;
    let involved: u32 = v.slots.iter().flatten().map(|t| t.in_pool.0).sum();
    assert_eq!(total, POOL_WINDOW as u32);
    assert_eq!(involved, 2 * total, "every entry counted once per clone");
    assert_eq!(
        v.pool_disagreed,
        v.pool.iter().filter(|e| e.disagreed).count() as u32
    );
}

#[test]
fn recent_keeps_twenty_newest_first_without_queries() {
    let mut v = Verdicts::new();
    for i in 0..25 {
        v.record(
            key(1),
            key(2),
            &format!("/p{i}?token=secret"),
            Some(Difference::Body),
        );
        v.record(key(1), key(2), "/agreed", None);
    }
    v.record(
        key(2),
        key(3),
        "/h",
        Some(Difference::Header(name("x-foo"))),
    );
    let s = v.snapshot();
    assert_eq!(s.recent.len(), RECENT);
    assert_eq!(&*s.recent[0].path, "/h");
    assert_eq!(s.recent[0].difference.to_string(), "header x-foo");
    assert_eq!(
        (s.recent[0].served.clone(), s.recent[0].peer.clone()),
        (key(2), key(3))
    );
    let paths: Vec<&str> = s.recent[1..].iter().map(|m| &*m.path).collect();
    let expected: Vec<String> = (6..25).rev().map(|i| format!("/p{i}")).collect();
    assert_eq!(paths, expected);
    assert!(s
        .recent
        .iter()
        .all(|m| !m.path.contains('?') && !m.path.contains("secret")));
}

#[test]
fn names_follow_the_latest_record() {
    let mut v = Verdicts::new();
    run(&mut v, 1, 2, 1, 0);
    let renamed = CloneKey::new(key(1).addr, "web-1");
    v.record(renamed.clone(), key(2), "/", None);
    assert_eq!(v.snapshot().clones[0].clone, renamed);
    assert_eq!(v.window(key(1).addr), Some((2, 0)));
}

use super::*;

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8000 + i))
}

/// Clone `i`: available, 1,000 requests, no errors, p50 10 ms, p99 `p99` ms.
fn clone(i: u16, p99: f64) -> CloneWindow {
    CloneWindow {
        key: addr(i),
        available: true,
        requests: 1000,
        errors_5xx: 0,
        p50_ms: Some(10.0),
        p99_ms: Some(p99),
    }
}

fn pool(p99s: &[f64]) -> Vec<CloneWindow> {
    (0u16..).zip(p99s).map(|(i, &p)| clone(i, p)).collect()
}

#[test]
fn five_times_the_median_p99_is_an_outlier_on_p99() {
    let clones = pool(&[100.0, 90.0, 110.0, 100.0, 500.0]);
    let out = judge(&clones, 3.0);
    assert_eq!(
        out,
        vec![Outlier {
            key: addr(4),
            metric: Metric::P99,
            value: 500.0,
            pool_median: 100.0,
        }]
    );
    assert_eq!(out[0].ratio(), 5.0);
    assert_eq!(out[0].metric.as_str(), "p99_ms");
    assert!(
        judge(&clones, 5.0).is_empty(),
        "more than factor times: 5 is not > 5"
    );
}

#[test]
fn metric_names() {
    let names = Metric::ALL.map(Metric::as_str);
    assert_eq!(names, ["5xx_share", "p50_ms", "p99_ms"]);
}

#[test]
fn five_xx_shares_are_compared_with_at_least_one_percent() {
    let mut clones = pool(&[100.0; 5]);
    clones[2].errors_5xx = 20; // 2 %: not more than 3 × 1 %
    assert!(judge(&clones, 3.0).is_empty());
    clones[2].errors_5xx = 40; // 4 %
    let out = judge(&clones, 3.0);
    assert_eq!(
        out,
        vec![Outlier {
            key: addr(2),
            metric: Metric::FiveXxShare,
            value: 0.04,
            pool_median: 0.0,
        }]
    );
    assert!((out[0].ratio() - 4.0).abs() < 1e-9);
    // Above the floor the median itself counts: 10 % in a pool at 5 % is only 2×.
    for c in &mut clones {
        c.errors_5xx = 50;
    }
    clones[2].errors_5xx = 100;
    assert!(judge(&clones, 3.0).is_empty());
    clones[2].errors_5xx = 160;
    assert_eq!(judge(&clones, 3.0)[0].pool_median, 0.05);
}

#[test]
fn clones_under_fifty_requests_are_neither_judged_nor_in_the_median() {
    // Judged: 100, 100, 400. Two quiet, very slow clones would lift the median to 400.
    let mut clones = pool(&[100.0, 100.0, 400.0, 1000.0, 1000.0]);
    clones[3].requests = MIN_REQUESTS - 1;
    clones[4].requests = 10;
    let out = judge(&clones, 3.0);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].key, out[0].pool_median), (addr(2), 100.0));
    // Exactly 50 is enough.
    clones[3].requests = MIN_REQUESTS;
    clones[4].requests = MIN_REQUESTS;
    let out = judge(&clones, 3.0);
    assert_eq!(out, vec![], "median 400 now: nobody is 3× worse");
}

#[test]
fn unavailable_clones_are_judged_but_not_in_the_median() {
    let mut clones = pool(&[100.0, 100.0, 100.0, 1000.0, 1000.0, 1000.0]);
    for c in &mut clones[3..] {
        c.available = false;
    }
    let out = judge(&clones, 3.0);
    let keys: Vec<_> = out.iter().map(|o| o.key).collect();
    assert_eq!(keys, [addr(3), addr(4), addr(5)]);
    assert!(out.iter().all(|o| o.pool_median == 100.0));
}

#[test]
fn fewer_than_three_qualifying_clones_give_no_outliers() {
    assert!(judge(&pool(&[100.0, 5000.0]), 3.0).is_empty());
    assert!(judge(&pool(&[100.0]), 3.0).is_empty());
    assert!(judge(&[], 3.0).is_empty());
    let mut clones = pool(&[100.0, 100.0, 5000.0]);
    clones[0].available = false;
    assert!(judge(&clones, 3.0).is_empty(), "two available");
    clones[0].available = true;
    clones[1].requests = 3;
    assert!(judge(&clones, 3.0).is_empty(), "two with 50 requests");
    clones[1].requests = 50;
    assert_eq!(judge(&clones, 3.0).len(), 1);
}

#[test]
fn the_metric_with_the_largest_ratio_is_reported() {
    let mut clones = pool(&[100.0; 5]);
    // Clone 1: 5xx 5× the floor, p50 4×, p99 4.5×.
    clones[1].errors_5xx = 50;
    clones[1].p50_ms = Some(40.0);
    clones[1].p99_ms = Some(450.0);
    // Clone 3: 5xx 4×, p50 7×, p99 6×.
    clones[3].errors_5xx = 40;
    clones[3].p50_ms = Some(70.0);
    clones[3].p99_ms = Some(600.0);
    let out = judge(&clones, 3.0);
    assert_eq!(out.len(), 2);
    assert_eq!((out[0].key, out[0].metric), (addr(1), Metric::FiveXxShare));
    assert!((out[0].value - 0.05).abs() < 1e-12);
    assert_eq!((out[1].key, out[1].metric), (addr(3), Metric::P50));
    assert_eq!((out[1].value, out[1].pool_median), (70.0, 10.0));
}

#[test]
fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
    assert_eq!(median(vec![10.0, 50.0, 10.0, 50.0]), Some(30.0));
    assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
    assert_eq!(median(vec![1.0, 2.0]), None);
    // Half a pool cannot call the other half outliers.
    assert!(judge(&pool(&[10.0, 10.0, 50.0, 50.0]), 3.0).is_empty());
    let out = judge(&pool(&[10.0, 20.0, 40.0, 200.0]), 3.0);
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].key, out[0].pool_median), (addr(3), 30.0));
}

#[test]
fn missing_or_odd_latencies_are_skipped() {
    let mut clones = pool(&[100.0, 100.0, 100.0, 900.0]);
    clones[0].p99_ms = None;
    clones[1].p99_ms = Some(f64::NAN);
    // p99 has two values behind its median: no baseline, no p99 outliers.
    assert!(judge(&clones, 3.0).is_empty());
    clones[1].p99_ms = Some(100.0);
    assert_eq!(judge(&clones, 3.0)[0].key, addr(3));
    // A latency median of 0 is no baseline (the histogram never gives one).
    let mut zero = pool(&[0.0, 0.0, 0.0, 5.0]);
    zero[3].p50_ms = Some(10.0);
    assert!(judge(&zero, 3.0).is_empty());
}

// The ejection policy. `W` is the window; times are offsets from one instant.

const W: Duration = Duration::from_secs(10);

fn at(t0: Instant, secs: f64) -> Instant {
    t0 + Duration::from_secs_f64(secs)
}

fn outlier(i: u16, p99: f64) -> Outlier {
    Outlier {
        key: addr(i),
        metric: Metric::P99,
        value: p99,
        pool_median: 100.0,
    }
}

#[test]
fn one_clone_at_a_time_the_worst_first_and_back_after_exactly_one_window() {
    let t0 = Instant::now();
    let mut clones = pool(&[100.0; 6]);
    let bad = [outlier(2, 400.0), outlier(4, 900.0)];
    let mut e = Ejections::new(W);
    assert_eq!(e.step(t0, &clones, &[], 6), None);
    assert_eq!(e.step(t0, &clones, &bad, 6), Some(Change::Eject(addr(4))));
    assert_eq!(e.ejected_since(addr(4)), Some(t0));
    assert_eq!(e.ejected_since(addr(2)), None);
    assert_eq!(
        e.current().map(|j| (j.outlier, j.until)),
        Some((bad[1], t0 + W))
    );
    clones[4].available = false; // the caller sets OUTLIER
    for s in 1..10 {
        assert_eq!(e.step(at(t0, f64::from(s)), &clones, &bad, 6), None, "{s}");
    }
    assert_eq!(
        e.step(t0 + W - Duration::from_millis(1), &clones, &bad, 6),
        None
    );
    assert_eq!(
        e.step(t0 + W, &clones, &bad, 6),
        Some(Change::Readmit(addr(4)))
    );
    assert_eq!(e.ejected_since(addr(4)), None);
    clones[4].available = true;
    // The next second, the other outlier (clone 4 has no fresh judgement yet).
    let t1 = at(t0, 11.0);
    let e2 = e.step(t1, &clones, &bad[..1], 6);
    assert_eq!(e2, Some(Change::Eject(addr(2))));
}

#[test]
fn a_readmitted_clone_is_judged_on_its_fresh_traffic_and_ejected_again() {
    let t0 = Instant::now();
    let mut clones = pool(&[100.0; 4]);
    let mut e = Ejections::new(W);
    assert_eq!(e.judged_over(addr(3), t0), W);
    assert_eq!(
        e.step(t0, &clones, &[outlier(3, 900.0)], 4),
        Some(Change::Eject(addr(3)))
    );
    clones[3].available = false;
    assert_eq!(
        e.judged_over(addr(3), at(t0, 5.0)),
        W,
        "ejected: its whole window"
    );
    let back = t0 + W;
    assert_eq!(
        e.step(back, &clones, &[outlier(3, 900.0)], 4),
        Some(Change::Readmit(addr(3)))
    );
    clones[3].available = true;
    // Its seconds before the return are stale: the caller sums only those since.
    assert_eq!(e.judged_over(addr(3), back), Duration::ZERO);
    assert_eq!(e.judged_over(addr(3), at(t0, 13.0)), Duration::from_secs(3));
    assert_eq!(e.judged_over(addr(0), at(t0, 13.0)), W);
    // Under 50 fresh requests: not judged, so nothing happens.
    clones[3].requests = 30;
    clones[3].p99_ms = Some(900.0);
    let fresh = judge(&clones, 3.0);
    assert!(fresh.is_empty());
    assert_eq!(e.step(at(t0, 11.0), &clones, &fresh, 4), None);
    // 50 fresh requests, still slow: ejected again.
    clones[3].requests = 50;
    let fresh = judge(&clones, 3.0);
    assert_eq!(fresh.len(), 1);
    let again = at(t0, 12.0);
    assert_eq!(
        e.step(again, &clones, &fresh, 4),
        Some(Change::Eject(addr(3)))
    );
    assert_eq!(e.ejected_since(addr(3)), Some(again));
    assert_eq!(e.judged_over(addr(3), at(t0, 13.0)), W);
    // A window after its return, a readmitted clone's lookback is the full window again.
    let mut f = Ejections::new(W);
    clones[3].available = true;
    f.step(t0, &clones, &[outlier(3, 900.0)], 4);
    f.step(t0 + W, &clones, &[], 4);
    assert_eq!(f.judged_over(addr(3), t0 + W + W), W);
    f.step(t0 + W + W, &clones, &[], 4);
    assert_eq!(f.judged_over(addr(3), t0 + W + W + W), W);
}

#[test]
fn never_below_half_the_pool_rounded_up() {
    let sizes: Vec<_> = (0..=6).map(min_available).collect();
    assert_eq!(sizes, [0, 1, 1, 2, 2, 3, 3]);
    let t0 = Instant::now();
    let bad = [outlier(0, 900.0)];
    // (pool size, available clones, may eject)
    let cases = [
        (3, 3, true),  // 2 left of 3
        (3, 2, false), // 1 left of 3
        (4, 3, true),  // 2 of 4
        (4, 2, false), // 1 of 4
        (5, 4, true),  // 3 of 5
        (5, 3, false), // 2 of 5
        (2, 2, true),  // 1 of 2 (the judge never names one of two)
        (1, 1, false),
    ];
    for (size, up, may) in cases {
        let mut clones = pool(&vec![100.0; size]);
        for c in &mut clones[up..] {
            c.available = false;
        }
        let got = Ejections::new(W).step(t0, &clones, &bad, size);
        assert_eq!(got.is_some(), may, "pool {size}, {up} available");
    }
}

#[test]
fn readmitted_early_when_others_go_down_and_only_available_clones_ejected() {
    let t0 = Instant::now();
    let mut clones = pool(&[100.0; 5]);
    let mut e = Ejections::new(W);
    // A clone already down is not ejected (it gets no traffic anyway).
    clones[1].available = false;
    assert_eq!(e.step(t0, &clones, &[outlier(1, 900.0)], 5), None);
    clones[1].available = true;
    assert_eq!(
        e.step(t0, &clones, &[outlier(1, 900.0)], 5),
        Some(Change::Eject(addr(1)))
    );
    clones[1].available = false;
    clones[2].available = false; // another goes down: 3 of 5 available, still enough
    assert_eq!(e.step(at(t0, 1.0), &clones, &[], 5), None);
    clones[3].available = false; // 2 of 5: below 3, the ejected clone comes back
    let t = at(t0, 2.0);
    assert_eq!(e.step(t, &clones, &[], 5), Some(Change::Readmit(addr(1))));
    assert_eq!(e.judged_over(addr(1), t), Duration::ZERO);
}

#[test]
fn an_ejected_clone_that_leaves_the_pool_is_forgotten() {
    let t0 = Instant::now();
    let clones = pool(&[100.0; 5]);
    let mut e = Ejections::new(W);
    assert_eq!(
        e.step(t0, &clones, &[outlier(4, 900.0)], 5),
        Some(Change::Eject(addr(4)))
    );
    // Reloaded without clone 4 (and a longer window, for the next ejection).
    e.set_window(Duration::from_secs(20));
    let t = at(t0, 1.0);
    assert_eq!(
        e.step(t, &clones[..4], &[outlier(0, 900.0)], 4),
        Some(Change::Eject(addr(0)))
    );
    assert_eq!(
        e.current().map(|j| j.until),
        Some(t + Duration::from_secs(20))
    );
}

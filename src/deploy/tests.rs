//! Unit tests of `deploy`.

use super::*;

fn at(ms: u64) -> Instant {
    // A fixed origin: paused time is not needed, the machine never reads a clock.
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now) + Duration::from_millis(ms)
}

fn clones(spec: &[(VersionId, bool)]) -> Vec<CloneView> {
    spec.iter()
        .map(|&(version, up)| CloneView { version, up })
        .collect()
}

fn atomic(cutover_at: CutoverAt) -> Machine {
    let mut m = Machine::default();
    let change = m.record(Event::Mode {
        mode: Mode::Atomic,
        cutover_at,
        interval: Duration::from_secs(2),
        now: at(0),
    });
    assert_eq!(change, None, "nothing to elect yet");
    m
}

fn see(m: &mut Machine, spec: &[(VersionId, bool)], ms: u64) -> Option<Change> {
    m.record(Event::Clones {
        clones: clones(spec),
        now: at(ms),
    })
}

fn active(from: VersionId, to: VersionId, why: Why) -> Option<Change> {
    Some(Change::Active { from, to, why })
}

#[test]
fn mixed_mode_never_gates() {
    let mut m = Machine::default();
    assert_eq!(see(&mut m, &[(1, true), (2, true)], 0), None);
    assert_eq!(m.active(), 0);
    assert_eq!(m.skew(), 2);
}

#[test]
fn election_waits_for_every_up_clone_or_one_interval() {
    let mut m = atomic(CutoverAt::default());
    // One up clone has not reported: wait.
    assert_eq!(see(&mut m, &[(1, true), (0, true), (2, false)], 100), None);
    // Everyone up has reported: the most common version wins.
    assert_eq!(
        see(&mut m, &[(1, true), (2, true), (2, true)], 200),
        active(0, 2, Why::Elected)
    );

    let mut m = atomic(CutoverAt::default());
    assert_eq!(see(&mut m, &[(1, true), (0, true)], 1999), None);
    assert_eq!(
        see(&mut m, &[(1, true), (0, true)], 2000),
        active(0, 1, Why::Elected),
        "one interval passed"
    );
}

#[test]
fn election_ties_go_to_the_version_seen_first() {
    let mut m = atomic(CutoverAt::default());
    assert_eq!(
        see(&mut m, &[(2, true), (1, true)], 0),
        active(0, 1, Why::Elected)
    );
}

#[test]
fn cutover_exactly_at_the_threshold() {
    // 5 clones, "50%" → 3.
    let mut m = atomic(CutoverAt::Share(50));
    see(&mut m, &[(1, true); 5], 0);
    assert_eq!(m.active(), 1);
    let two_of_five = [(2, true), (2, true), (1, true), (1, true), (1, false)];
    assert_eq!(see(&mut m, &two_of_five, 10), None);
    assert_eq!(m.fallback(), 2);
    let three = [(2, true), (2, true), (2, true), (1, true), (1, false)];
    assert_eq!(see(&mut m, &three, 20), active(1, 2, Why::Cutover));
    assert_eq!(m.fallback(), 1);
    // A count.
    let mut m = atomic(CutoverAt::Count(1));
    see(&mut m, &[(1, true), (1, true)], 0);
    assert_eq!(
        see(&mut m, &[(2, true), (1, true)], 10),
        active(1, 2, Why::Cutover)
    );
    assert_eq!(CutoverAt::Share(50).threshold(5), 3);
    assert_eq!(CutoverAt::Share(1).threshold(0), 1);
}

#[test]
fn no_way_back_once_cut_over() {
    let mut m = atomic(CutoverAt::Count(2));
    see(&mut m, &[(1, true); 4], 0);
    see(&mut m, &[(2, true), (2, true), (1, true), (1, true)], 10);
    assert_eq!(m.active(), 2);
    // The old version still has as many: it stays standby.
    assert_eq!(
        see(&mut m, &[(2, true), (2, true), (1, true), (1, true)], 20),
        None
    );
    assert_eq!(m.active(), 2);
}

#[test]
fn a_rollback_cuts_over_once_the_old_version_was_fully_replaced() {
    let mut m = atomic(CutoverAt::Count(2));
    see(&mut m, &[(1, true); 4], 0);
    see(&mut m, &[(2, true), (2, true), (1, true), (1, true)], 10);
    // A standby v1 clone blips down and back: still retired.
    see(&mut m, &[(2, true), (2, true), (1, false), (1, true)], 20);
    assert_eq!(
        see(&mut m, &[(2, true), (2, true), (1, true), (1, true)], 30),
        None
    );
    // The rollout finishes: no v1 clone up, v1 is no longer retired ...
    see(&mut m, &[(2, true); 4], 40);
    // ... so rolling back to it cuts over at the threshold.
    assert_eq!(
        see(&mut m, &[(1, true), (2, true), (2, true), (2, true)], 50),
        None
    );
    assert_eq!(
        see(&mut m, &[(1, true), (1, true), (2, true), (2, true)], 60),
        active(2, 1, Why::Cutover)
    );
}

#[test]
fn outage_falls_back_and_says_so() {
    let mut m = atomic(CutoverAt::Count(2));
    see(&mut m, &[(1, true); 4], 0);
    see(&mut m, &[(2, true), (2, true), (1, true), (1, true)], 10);
    assert_eq!(
        see(&mut m, &[(2, false), (2, false), (1, true), (1, true)], 20),
        active(2, 1, Why::Fallback)
    );
    assert_eq!(m.fell_back_from(), Some(2));
    // v2 back in numbers: a cutover again, and the fallback mark clears.
    assert_eq!(
        see(&mut m, &[(2, true), (2, true), (1, true), (1, true)], 30),
        active(1, 2, Why::Cutover)
    );
    assert_eq!(m.fell_back_from(), None);
}

#[test]
fn pin_overrides_cutover_but_not_the_outage_fallback() {
    let mut m = atomic(CutoverAt::Count(1));
    see(&mut m, &[(1, true), (1, true)], 0);
    assert_eq!(m.record(Event::Pin(Some(1))), None, "already active");
    assert_eq!(see(&mut m, &[(2, true), (1, true)], 10), None);
    assert_eq!(m.active(), 1, "pinned: no cutover");
    assert_eq!(m.record(Event::Pin(None)), active(1, 2, Why::Pinned));
    assert_eq!(m.record(Event::Pin(Some(1))), active(2, 1, Why::Pinned));
    assert_eq!(
        see(&mut m, &[(2, true), (1, false)], 20),
        active(1, 2, Why::Fallback)
    );
}

#[test]
fn leaving_atomic_mode_routes_to_everyone() {
    let mut m = atomic(CutoverAt::default());
    see(&mut m, &[(1, true)], 0);
    let change = m.record(Event::Mode {
        mode: Mode::Mixed,
        cutover_at: CutoverAt::default(),
        interval: Duration::from_secs(2),
        now: at(10),
    });
    assert_eq!(change, active(1, 0, Why::Mixed));
}

#[test]
fn versions_intern_in_order_of_first_report() {
    let v = Versions::default();
    assert_eq!(v.intern("v1"), 1);
    assert_eq!(v.intern("v2"), 2);
    assert_eq!(v.intern("v1"), 1);
    assert_eq!(v.name(2).as_deref(), Some("v2"));
    assert_eq!(v.name(0), None);
    assert_eq!(v.id("v3"), None);
    assert_eq!(invalid_version(b""), Some("empty"));
    assert_eq!(invalid_version(b"v 1"), Some("not visible ASCII"));
    assert_eq!(invalid_version(&[b'a'; 129]), Some("longer than 128 bytes"));
    assert_eq!(invalid_version(b"2026.12.03-abc"), None);
}

//! Unit tests of `backend`.

use super::*;

#[test]
fn flags_and_guard() {
    let s = Arc::new(BackendState::new("127.0.0.1:1".parse().unwrap()));
    assert!(s.is_available());
    s.set_down(true);
    s.set_disabled(true);
    assert!(!s.is_available());
    s.set_down(false);
    assert!(!s.is_available() && s.is_disabled() && !s.is_down());
    s.set_disabled(false);
    assert!(s.is_available());
    // An ejected outlier is unavailable, and health cannot undo it.
    assert!(!s.set_outlier(true));
    assert!(!s.is_available() && s.is_outlier() && s.is_available_but_for_outlier());
    s.set_down(true);
    assert!(!s.is_available_but_for_outlier());
    s.set_down(false);
    assert!(
        !s.is_available() && s.is_outlier(),
        "set_down touches DOWN only"
    );
    assert!(s.set_outlier(false));
    assert!(s.is_available() && !s.is_outlier());
    let g1 = s.acquire();
    let g2 = s.acquire();
    assert_eq!(s.in_flight(), 2);
    drop(g1);
    assert_eq!(s.in_flight(), 1);
    drop(g2);
    assert_eq!((s.in_flight(), s.attempts_total()), (0, 2));
    // Attempts are not answers: nothing was recorded yet.
    assert_eq!(s.requests_total(), 0);
}

#[test]
fn a_check_under_way_at_an_enable_cannot_set_the_version() {
    let s = BackendState::new("127.0.0.1:1".parse().unwrap());
    let stamp = s.version_stamp();
    assert_eq!(s.set_version_from(stamp, 3), Some(0));
    assert_eq!(s.version(), 3);
    let stamp = s.version_stamp();
    s.clear_version();
    assert_eq!(s.version(), 0);
    assert_eq!(
        s.set_version_from(stamp, 3),
        None,
        "too late: enabled since"
    );
    assert_eq!(s.version(), 0);
    let stamp = s.version_stamp();
    assert_eq!(s.set_version_from(stamp, 4), Some(0));
    assert_eq!((s.version(), s.set_version(0)), (4, 4));
}

#[test]
fn responses_by_class_and_cut_flag() {
    let s = BackendState::new("127.0.0.1:1".parse().unwrap());
    for status in [200, 204, 302, 404, 499, 502, 101] {
        s.count_response(status);
    }
    assert_eq!(s.responses_by_class(), [1, 2, 1, 2, 1]);
    assert_eq!(s.requests_total(), 7);
    s.set_draining(true);
    s.cut_connections();
    assert!(s.is_cut() && !s.is_available());
    s.set_draining(false);
    assert!(
        !s.is_cut() && s.is_available(),
        "a clone added back is whole again"
    );
    assert_eq!(&*s.name(), "127.0.0.1:1");
    s.set_name(&Arc::from("web-1"));
    assert_eq!(&*s.name(), "web-1");
}

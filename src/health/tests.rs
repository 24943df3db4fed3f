//! Unit tests of `health`.

use super::*;

#[test]
fn counter_needs_consecutive_results() {
    let mut c = HealthCounter::new(true, 2, 3);
    assert_eq!(c.record(false), None);
    assert_eq!(c.record(false), None);
    assert_eq!(c.record(true), None, "a pass breaks the failure run");
    assert_eq!(c.record(false), None);
    assert_eq!(c.record(false), None);
    assert_eq!(c.record(false), Some(Transition::Down));
    assert_eq!(c.record(false), None, "a transition is reported once");
    assert_eq!(c.record(true), None);
    assert_eq!(c.record(false), None);
    assert_eq!(c.record(true), None);
    assert_eq!(c.record(true), Some(Transition::Up));
}

#[test]
fn forced_down_needs_healthy_threshold_passes() {
    let mut c = HealthCounter::new(true, 2, 3);
    c.force_down();
    assert!(!c.is_up());
    assert_eq!(c.record(true), None);
    assert_eq!(c.record(true), Some(Transition::Up));
}

#[test]
fn passive_ejection_after_threshold_and_probation() {
    let s = BackendState::new("127.0.0.1:1".parse().unwrap());
    assert!(!passive_failure(&s, 3));
    s.end_failure_run();
    assert!(!passive_failure(&s, 3));
    assert!(!passive_failure(&s, 3));
    assert!(passive_failure(&s, 3), "third in a row ejects");
    assert!(s.is_down());
    assert!(!passive_failure(&s, 3), "already out: not ejected twice");
    assert_eq!(s.ejections_total(), 1);
    readmit(&s, 2);
    assert!(s.is_available());
    assert!(passive_failure(&s, 3), "on probation one failure ejects");
}

fn policy(config: &str) -> Policy {
    let text = format!("[listen]\nhttp = \"127.0.0.1:1\"\n{config}");
    let cfg = crate::config::parse("t", &text).unwrap().config;
    *crate::table::RoutingTable::build(&cfg, None).policy()
}

/// Without active checks an ejected clone comes back after exactly `ejection_time`, on
/// probation: one more connection failure ejects it again.
#[tokio::test(start_paused = true)]
async fn readmitted_on_probation_after_ejection_time() {
    let policy = policy("[proxy]\nejection_time = \"30s\"\n");
    let s = Arc::new(BackendState::new("127.0.0.1:1".parse().unwrap()));
    for _ in 0..3 {
        report(&s, &policy, Attempt::ConnectionFailure);
    }
    assert!(s.is_down());
    tokio::time::sleep(Duration::from_millis(29_999)).await;
    assert!(s.is_down(), "still out just before ejection_time");
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert!(s.is_available(), "back after ejection_time");
    report(&s, &policy, Attempt::ConnectionFailure);
    assert!(s.is_down(), "on probation: one failure ejects again");
    assert_eq!(s.ejections_total(), 2);
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(s.is_available());
    report(&s, &policy, Attempt::Answered(200));
    report(&s, &policy, Attempt::ConnectionFailure);
    assert!(s.is_available(), "an answer ends probation");
}

/// With active checks passive ejection never schedules a return: the checker does it.
#[tokio::test(start_paused = true)]
async fn with_active_checks_no_timed_readmission() {
    let policy = policy("[health]\neject_on_5xx = true\n[proxy]\nejection_time = \"1s\"\n");
    let s = Arc::new(BackendState::new("127.0.0.1:1".parse().unwrap()));
    for _ in 0..3 {
        report(&s, &policy, Attempt::Answered(503));
    }
    assert!(s.is_down(), "5xx count with eject_on_5xx");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(s.is_down());
}

#[test]
fn check_details_are_short() {
    let detail = |o: Result<StatusCode, CheckFailure>| check_detail(o.as_ref().map(|s| *s));
    assert_eq!(detail(Ok(StatusCode::OK)), "status 200");
    assert_eq!(
        detail(Err(CheckFailure::Status(StatusCode::INTERNAL_SERVER_ERROR))),
        "status 500"
    );
    assert_eq!(
        detail(Err(CheckFailure::Timeout(Duration::from_secs(1)))),
        "timeout after 1s"
    );
    assert_eq!(
        detail(Err(CheckFailure::Connect(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused
        )))),
        "connection refused or reset"
    );
}

#[test]
fn jitter_stays_within_ten_percent() {
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let d = jittered(Duration::from_secs(2), &mut rng);
        assert!(d >= Duration::from_millis(1800) && d <= Duration::from_millis(2200));
    }
}

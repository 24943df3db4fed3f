//! The control plane in paused time: publish, status, the drain reaper.

use super::publish::name_list;
use super::*;
use crate::config::parse;

fn inputs(addrs: &[&str], extra: &str) -> Inputs {
    let mut text = format!("[listen]\nhttp = \"127.0.0.1:0\"\n{extra}\n");
    for (i, a) in addrs.iter().enumerate() {
        text.push_str(&format!(
            "[[backend]]\naddress = \"{a}\"\nname = \"c{}\"\n",
            i + 1
        ));
    }
    Inputs {
        config: parse("t", &text).unwrap().config,
        tls: None,
        error_pages: Arc::default(),
    }
}

fn states(status: &Status) -> Vec<(String, CloneState, usize)> {
    status
        .backends
        .iter()
        .map(|c| (c.name.to_string(), c.state, c.in_flight))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn status_shows_up_down_disabled_draining_and_a_failed_reload() {
    let control = ControlState::new(
        inputs(
            &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"],
            "",
        ),
        tokio::runtime::Handle::current(),
    );
    let first = control.status();
    assert_eq!(first.generation, 1);
    assert!(first.last_error.is_none());
    let t = control.table().load_full();
    t.backends()[1].state.set_down(true);
    t.backends()[2].state.set_disabled(true);
    let _busy = t.backends()[3].state.acquire();
    control.publish(inputs(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], ""));
    control.reject(vec!["t:3:1: broken".to_string()]);
    let s = control.status();
    assert_eq!(
        states(&s),
        [
            ("c1".to_string(), CloneState::Up, 0),
            ("c2".to_string(), CloneState::Down, 0),
            ("c3".to_string(), CloneState::Disabled, 0),
            ("c4".to_string(), CloneState::Draining, 1),
        ]
    );
    assert_eq!(s.generation, 2, "a failed reload keeps the generation");
    assert_eq!(
        s.last_error.as_deref(),
        Some(&["t:3:1: broken".to_string()][..])
    );
    assert!(s.loaded_at >= first.loaded_at);
    assert_eq!(s.strategy.as_str(), "round-robin");
    assert_eq!(s.draining().count(), 1);
    assert_eq!(s.clone_named("c2").map(|c| c.address.port()), Some(2));
    assert_eq!(
        (s.process.reloads_success, s.process.reloads_failure),
        (1, 1),
        "one publish, one reject; the first load is no reload"
    );
    assert!(s.backends.iter().all(|c| c.last_check.is_none()
        && c.checks == ChecksCount::default()
        && c.latency.count == 0));
    // The next success clears the error.
    control.publish(inputs(&["127.0.0.1:1"], ""));
    assert!(control.status().last_error.is_none());
}

#[tokio::test(start_paused = true)]
async fn drain_reaper_drops_idle_clones_and_cuts_at_drain_timeout() {
    let control = ControlState::new(
        inputs(
            &["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"],
            "[proxy]\ndrain_timeout = \"5s\"",
        ),
        tokio::runtime::Handle::current(),
    );
    let t = control.table().load_full();
    let (two, three) = (
        Arc::clone(&t.backends()[1].state),
        Arc::clone(&t.backends()[2].state),
    );
    let g2 = two.acquire();
    let _g3 = three.acquire();
    let s = control.publish(inputs(&["127.0.0.1:1"], "[proxy]\ndrain_timeout = \"5s\""));
    assert_eq!(
        (
            s.generation,
            s.added.len(),
            s.removed.len(),
            s.changed.len()
        ),
        (2, 0, 2, 0)
    );
    assert_eq!(s.removed, ["c2", "c3"]);
    assert!(two.is_draining() && three.is_draining());

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(control.status().draining().count(), 2, "both still busy");
    drop(g2);
    tokio::time::sleep(DRAIN_TICK * 2).await;
    let names: Vec<_> = control
        .status()
        .draining()
        .map(|c| c.name.to_string())
        .collect();
    assert_eq!(
        names,
        ["c3"],
        "an idle draining clone is dropped at the next tick"
    );
    assert!(!two.is_cut(), "dropped when idle, not cut");

    // drain_timeout counts from the publish (1.1 s ago).
    tokio::time::sleep(Duration::from_millis(3_800)).await;
    assert_eq!(
        control.status().draining().count(),
        1,
        "not cut before drain_timeout"
    );
    assert!(!three.is_cut());
    tokio::time::sleep(DRAIN_TICK * 4).await;
    assert_eq!(control.status().draining().count(), 0);
    assert!(three.is_cut(), "cut at drain_timeout");
}

#[tokio::test(start_paused = true)]
async fn a_clone_added_back_while_draining_keeps_its_state() {
    let control = ControlState::new(
        inputs(&["127.0.0.1:1", "127.0.0.1:2"], ""),
        tokio::runtime::Handle::current(),
    );
    let two = Arc::clone(&control.table().load().backends()[1].state);
    let _g = two.acquire();
    control.publish(inputs(&["127.0.0.1:1"], ""));
    assert!(two.is_draining());
    let s = control.publish(inputs(&["127.0.0.1:1", "127.0.0.1:2"], ""));
    assert_eq!((s.added.len(), s.removed.len()), (1, 0));
    assert_eq!(s.added, ["c2"]);
    let back = Arc::clone(&control.table().load().backends()[1].state);
    assert!(Arc::ptr_eq(&back, &two) && back.is_available());
    assert_eq!(control.status().draining().count(), 0);
}

#[test]
fn name_lists_stop_at_ten() {
    assert_eq!(name_list(&[]), "");
    assert_eq!(name_list(&["a".into(), "b".into()]), "a,b");
    let many: Vec<String> = (1..=13).map(|i| format!("c{i}")).collect();
    assert_eq!(
        name_list(&many),
        "c1,c2,c3,c4,c5,c6,c7,c8,c9,c10 and 3 more"
    );
}

/// The one-second ring in paused time: the last minute is exactly the requests of the
/// ring's last 60 ticks; older ones are forgotten, and so are clones that left.
#[tokio::test(start_paused = true)]
async fn the_last_minute_counts_exactly_the_last_sixty_seconds() {
    use crate::stats::{as_ms, bucket_of, upper_bound};
    let control = ControlState::new(
        inputs(&["127.0.0.1:1", "127.0.0.1:2"], ""),
        tokio::runtime::Handle::current(),
    );
    let a = Arc::clone(&control.table().load().backends()[0].state);
    let answer = |status: u16, ms: u64| {
        a.count_response(status);
        a.latency().record(Duration::from_millis(ms));
    };
    let ms_of = |ms: u64| Some(as_ms(upper_bound(bucket_of(Duration::from_millis(ms)))));
    let a_now = || control.status().backends.swap_remove(0);

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        a_now().history.is_empty(),
        "no tick before the first second"
    );
    // In the first second: 98 fast answers (one a 404) and 2 slow 502s.
    for _ in 0..97 {
        answer(200, 2);
    }
    answer(404, 2);
    answer(502, 900);
    answer(502, 900);
    tokio::time::sleep(Duration::from_secs(1)).await; // t = 1.5 s, one tick
    let c = a_now();
    assert_eq!(
        c.last_minute,
        LastMinute {
            requests: 100,
            errors: 2,
            p50_ms: ms_of(2),
            p99_ms: ms_of(900),
        }
    );
    assert_eq!(c.history.len(), 1);
    assert!((c.history[0].rps - 100.0).abs() < 1e-9, "{:?}", c.history);
    assert_eq!(c.history[0].p99_ms, ms_of(900));
    assert_eq!(c.latency.count, 100, "the cumulative histogram too");

    // In the second second: 10 answers of 50 ms.
    for _ in 0..10 {
        answer(200, 50);
    }
    tokio::time::sleep(Duration::from_secs(59)).await; // t = 60.5 s, 60 ticks
    let c = a_now();
    assert_eq!((c.last_minute.requests, c.last_minute.errors), (110, 2));
    assert_eq!(c.history.len(), 60);
    assert_eq!(c.history[1].p99_ms, ms_of(50));
    assert_eq!(c.history[2].p99_ms, None);
    assert!(
        c.history.windows(2).all(|w| w[0].t <= w[1].t),
        "oldest first"
    );

    tokio::time::sleep(Duration::from_secs(1)).await; // the first second falls out
    let c = a_now();
    assert_eq!(
        c.last_minute,
        LastMinute {
            requests: 10,
            errors: 0,
            p50_ms: ms_of(50),
            p99_ms: ms_of(50),
        }
    );
    assert_eq!(c.history.len(), 60);
    tokio::time::sleep(Duration::from_secs(1)).await; // and the second one
    assert_eq!(a_now().last_minute, LastMinute::default());
    assert_eq!(control.history_lock().clones(), 2);

    // A clone removed (idle: reaped at once) is forgotten at the next tick.
    control.publish(inputs(&["127.0.0.1:1"], ""));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(control.history_lock().clones(), 1);
}

/// The ring's task holds no strong reference: it ends with the control state.
#[tokio::test(start_paused = true)]
async fn the_ring_stops_with_the_control_state() {
    let control = ControlState::new(
        inputs(&["127.0.0.1:1"], ""),
        tokio::runtime::Handle::current(),
    );
    let weak = Arc::downgrade(&control);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    drop(control);
    assert!(weak.upgrade().is_none());
    let metrics = tokio::runtime::Handle::current().metrics();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(metrics.num_alive_tasks(), 0, "reaper and ring ended");
}

#[tokio::test(start_paused = true)]
async fn admin_listen_needs_a_restart_but_a_new_token_applies() {
    let with = |admin: &str| inputs(&["127.0.0.1:1"], &format!("[admin]\n{admin}"));
    let control = ControlState::new(
        with("listen = \"127.0.0.1:9090\"\ntoken = \"old\""),
        tokio::runtime::Handle::current(),
    );
    control.publish(with("listen = \"127.0.0.1:9191\"\ntoken = \"new\""));
    let table = control.table().load();
    let admin = table.config().admin.as_ref().unwrap();
    assert_eq!(admin.listen, Some("127.0.0.1:9090".parse().unwrap()));
    assert!(admin.token.as_ref().unwrap().matches(b"new"));
    // Removing [admin] keeps the running listener and the token guarding it.
    control.publish(inputs(&["127.0.0.1:1"], ""));
    let table = control.table().load();
    let admin = table.config().admin.as_ref().unwrap();
    assert!(admin.token.as_ref().unwrap().matches(b"new"));
}

#[tokio::test(start_paused = true)]
async fn a_reload_without_version_header_forgets_the_versions() {
    let header = "[health]\nversion_header = \"x-clone-version\"\n";
    let control = ControlState::new(
        inputs(&["127.0.0.1:1", "127.0.0.1:2"], header),
        tokio::runtime::Handle::current(),
    );
    let one = Arc::clone(&control.table().load().backends()[0].state);
    one.set_version(control.deploy.versions().intern("v1"));
    control.publish(inputs(&["127.0.0.1:1", "127.0.0.1:2"], header));
    assert_eq!(control.status().backends[0].version.as_deref(), Some("v1"));
    control.publish(inputs(&["127.0.0.1:1", "127.0.0.1:2"], ""));
    assert_eq!(one.version(), 0);
    assert_eq!(control.status().backends[0].version, None);
}

/// The peer comparison in paused time: a clone 20× slower than its two peers is an
/// outlier; with `eject_outliers` it is out (state down, unavailable, health cannot undo
/// it) for one window, judged again on its fresh traffic after, and a reload turning
/// ejection off (or `[audit]` off) readmits it.
#[tokio::test(start_paused = true)]
async fn a_slow_clone_is_an_outlier_ejected_for_one_window() {
    let audit = |eject: bool| {
        let text = format!("[audit]\nsample = 0\nwindow = \"10s\"\neject_outliers = {eject}");
        inputs(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], &text)
    };
    let control = ControlState::new(audit(true), tokio::runtime::Handle::current());
    let clones: Vec<Arc<BackendState>> = control
        .table()
        .load()
        .backends()
        .iter()
        .map(|b| Arc::clone(&b.state))
        .collect();
    // 100 answers each, as the completion hook records them: 10 ms, 10 ms, 200 ms.
    let serve = || {
        for (c, ms) in clones.iter().zip([10, 10, 200]) {
            for _ in 0..100 {
                c.count_response(200);
                c.latency().record(Duration::from_millis(ms));
            }
        }
    };
    let third = || control.status().backends.swap_remove(2);
    let p50 = |ms| as_ms(upper_bound(bucket_of(Duration::from_millis(ms))));
    use crate::stats::{as_ms, bucket_of, upper_bound};

    tokio::time::sleep(Duration::from_millis(500)).await;
    serve();
    tokio::time::sleep(Duration::from_secs(1)).await; // t = 1.5 s: judged at the tick of 1 s
    let c = third();
    let expected = OutlierStatus {
        metric: "p50_ms",
        value: p50(200),
        pool_median: p50(10),
        ejected: true,
    };
    assert_eq!(c.outlier, Some(expected));
    assert_eq!(c.state, CloneState::Down);
    assert!(!c.down, "its checks still pass");
    assert!(!clones[2].is_available() && clones[2].is_outlier());
    assert!(control.status().backends[..2]
        .iter()
        .all(|c| c.outlier.is_none() && c.state == CloneState::Up));
    // A passing check does not bring it back.
    clones[2].set_down(false);
    assert!(!clones[2].is_available());

    tokio::time::sleep(Duration::from_secs(9)).await; // t = 10.5 s
    assert_eq!(third().state, CloneState::Down, "out for a whole window");
    tokio::time::sleep(Duration::from_secs(1)).await; // t = 11.5 s: readmitted at 11 s
    let c = third();
    assert_eq!((c.state, c.outlier), (CloneState::Up, None));
    assert!(clones[2].is_available());

    // Still slow on its fresh traffic: out again at the next tick.
    serve();
    tokio::time::sleep(Duration::from_secs(1)).await; // t = 12.5 s
    assert!(!clones[2].is_available());
    assert_eq!(third().outlier.map(|o| o.ejected), Some(true));

    // A reload turning ejection off readmits it; it is still reported.
    control.publish(audit(false));
    tokio::time::sleep(Duration::from_secs(1)).await; // t = 13.5 s
    assert!(clones[2].is_available() && !clones[2].is_outlier());
    let c = third();
    assert_eq!(c.state, CloneState::Up);
    assert_eq!(
        c.outlier.map(|o| (o.metric, o.ejected)),
        Some(("p50_ms", false))
    );

    // Reported only: nobody is ejected, however slow.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(clones.iter().all(|c| c.is_available()));

    // Without [audit], no outliers.
    control.publish(inputs(&["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"], ""));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(control
        .status()
        .backends
        .iter()
        .all(|c| c.outlier.is_none()));
}

/// `[audit]` off while a clone is ejected: the next tick readmits it.
#[tokio::test(start_paused = true)]
async fn a_reload_without_audit_readmits_the_ejected_clone() {
    let addrs = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"];
    let on = "[audit]\nsample = 0\nwindow = \"10s\"\neject_outliers = true";
    let control = ControlState::new(inputs(&addrs, on), tokio::runtime::Handle::current());
    let table = control.table().load_full();
    for (b, errors) in table.backends().iter().zip([0, 1, 0, 30]) {
        for i in 0..100 {
            b.state.count_response(if i < errors { 503 } else { 200 });
            b.state.latency().record(Duration::from_millis(5));
        }
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let s = control.status();
    let o = s.backends[3].outlier.expect("30 % of 5xx against 1 %");
    assert_eq!((o.metric, o.ejected), ("5xx_share", true));
    // The median of 0, 1, 0 and 30 %: it was available when judged.
    assert!((o.value - 0.3).abs() < 1e-9 && (o.pool_median - 0.005).abs() < 1e-9);
    assert!(!table.backends()[3].is_available());
    control.publish(inputs(&addrs, ""));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(table.backends().iter().all(|b| b.is_available()));
    assert!(control
        .status()
        .backends
        .iter()
        .all(|c| c.outlier.is_none()));
}

//! The control plane in paused time: publish, status, the drain reaper.

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
    assert_eq!(name_list(&["a", "b"]), "a,b");
    let many: Vec<String> = (1..=13).map(|i| format!("c{i}")).collect();
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(
        name_list(&refs),
        "c1,c2,c3,c4,c5,c6,c7,c8,c9,c10 and 3 more"
    );
}

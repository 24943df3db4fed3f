//! The merge of lb.toml's clones with what the DNS names resolved to, and the rules of a
//! name's answers (no runtime: answers are recorded by hand).

use super::*;
use crate::config::parse;

fn config(text: &str) -> Config {
    let src = format!("[listen]\nhttp = \"127.0.0.1:0\"\n{text}");
    parse("lb.toml", &src).expect("valid").config
}

fn found(a: &str, weight: u32) -> Found {
    Found {
        address: a.parse().unwrap(),
        weight,
    }
}

/// `dns` with `config`'s entries, each given a pretend task (ids 1, 2, ...).
fn with_tasks(config: &Config) -> Dns {
    let mut dns = Dns::default();
    dns.set_entries(config);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for (i, n) in dns.names.iter_mut().enumerate() {
        let h = rt.spawn(async {});
        n.task = Some((i as u64 + 1, h.abort_handle()));
    }
    dns
}

fn names(clones: &[CloneSpec]) -> Vec<String> {
    clones.iter().map(|c| c.name.to_string()).collect()
}

#[test]
fn names_resolved_clones_go_where_the_name_is_written_and_the_first_source_wins() {
    let c = config(
        "[[backend]]\naddress = \"127.0.0.1:1\"\nname = \"a\"\n\
         [[backend]]\naddress = \"app.test:80\"\nname = \"app\"\nweight = 3\n\
         [[backend]]\naddress = \"127.0.0.2:80\"\nname = \"b\"\n\
         [[backend]]\nsrv = \"_http._tcp.svc.test\"\n",
    );
    let mut dns = with_tasks(&c);
    // Before any answer: lb.toml's clones only.
    assert_eq!(names(&dns.clones(&c)), ["a", "b"]);
    let app = Answer::clones(
        vec![found("127.0.0.3:80", 1), found("127.0.0.2:80", 1)],
        None,
    );
    assert_eq!(dns.record(1, app), Some(true));
    let srv = Answer::clones(
        vec![found("127.0.0.9:81", 7), found("127.0.0.3:80", 2)],
        None,
    );
    assert_eq!(dns.record(2, srv), Some(true));
    let clones = dns.clones(&c);
    // app's clones come before b (written after it), so 127.0.0.2:80 is app's: b, written
    // later with the same address, is skipped; the SRV name's 127.0.0.3:80 likewise.
    assert_eq!(
        names(&clones),
        [
            "a",
            "app/127.0.0.2:80",
            "app/127.0.0.3:80",
            "_http._tcp.svc.test/127.0.0.9:81"
        ]
    );
    assert_eq!(clones[1].weight, 3, "an address entry's weight");
    assert_eq!(clones[3].weight, 7, "an SRV record's weight");
    assert_eq!(clones[3].source.as_deref(), Some("_http._tcp.svc.test"));
    assert_eq!(clones[0].source, None);
    assert_eq!(dns.warned.len(), 2);
}

#[test]
fn a_failed_lookup_keeps_the_set_and_an_empty_answer_empties_it() {
    let c = config("[[backend]]\naddress = \"app.test:80\"\nname = \"app\"\n");
    let mut dns = with_tasks(&c);
    let failed = |result| Answer::Failed {
        result,
        error: "no".into(),
    };
    // Never resolved: nothing, and a failure changes nothing.
    assert_eq!(dns.record(1, failed(LookupResult::Timeout)), Some(false));
    assert!(dns.clones(&c).is_empty());
    let two = Answer::clones(
        vec![found("127.0.0.1:80", 1), found("127.0.0.2:80", 1)],
        None,
    );
    assert_eq!(dns.record(1, two.clone()), Some(true));
    assert_eq!(dns.record(1, two), Some(false), "the same set again");
    for r in [
        LookupResult::NxDomain,
        LookupResult::Timeout,
        LookupResult::Error,
    ] {
        assert_eq!(dns.record(1, failed(r)), Some(false));
        assert_eq!(dns.clones(&c).len(), 2);
    }
    assert_eq!(dns.record(1, Answer::clones(vec![], None)), Some(true));
    assert!(dns.clones(&c).is_empty());
    let s = &dns.status()[0];
    assert_eq!(s.result, Some(LookupResult::NoData));
    assert_eq!(s.lookups, [2, 1, 1, 2, 1]);
    // An answer from a task that is not the name's (an older one) is dropped.
    assert_eq!(dns.record(99, Answer::clones(vec![], None)), None);
}

#[test]
fn a_reload_keeps_what_an_unchanged_name_resolved_to() {
    let c = config("[[backend]]\naddress = \"app.test:80\"\nname = \"app\"\n");
    let mut dns = with_tasks(&c);
    dns.record(1, Answer::clones(vec![found("127.0.0.1:80", 1)], None));
    // Renamed and reweighted: same lookup, same set, new names and weights.
    let renamed = config("[[backend]]\naddress = \"app.test:80\"\nname = \"web\"\nweight = 5\n");
    dns.set_entries(&renamed);
    let clones = dns.clones(&renamed);
    assert_eq!(names(&clones), ["web/127.0.0.1:80"]);
    assert_eq!(clones[0].weight, 5);
    // Another port is another lookup: nothing until it answers.
    let other = config("[[backend]]\naddress = \"app.test:81\"\nname = \"web\"\n");
    dns.set_entries(&other);
    assert!(dns.clones(&other).is_empty());
}

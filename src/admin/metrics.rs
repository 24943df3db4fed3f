//! `/metrics`: the Prometheus text format 0.0.4, written by the `prometheus` crate's
//! `TextEncoder` from metric families built at scrape time out of a [`Status`] (every value
//! is read from the atomics when scraped; nothing is registered or kept here).
//!
//! Every family is exposed from the first scrape, with a zero-valued series per clone (and
//! per `result` value). Clones are labelled `backend="NAME"`; requests answered without any
//! clone (rejected input, 503 with none available) are `backend="none"`.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};

use crate::control::{HistogramSnapshot, Status};
use crate::stats;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The exposition text, or why it could not be written.
pub(super) fn render(s: &Status) -> Result<String, String> {
    let mut families = Vec::new();

    let mut requests = Vec::new();
    for c in &s.backends {
        for (class, n) in CLASSES.iter().zip(c.counters.responses) {
            requests.push(counter(&[("backend", &c.name), ("code", class)], n));
        }
    }
    let process = &s.process;
    for (class, n) in CLASSES.iter().zip(process.unrouted) {
        requests.push(counter(&[("backend", "none"), ("code", class)], n));
    }
    families.push(family(
        "clonelb_requests_total",
        "Client requests answered, by the clone that answered and status class.",
        MetricType::COUNTER,
        requests,
    ));

    families.push(family(
        "clonelb_backend_in_flight",
        "Requests (and WebSocket tunnels) in flight on the clone.",
        MetricType::GAUGE,
        s.backends
            .iter()
            .map(|c| gauge(&[("backend", &c.name)], c.in_flight as f64))
            .collect(),
    ));
    families.push(family(
        "clonelb_backend_up",
        "1 when the clone is up (passes its checks, not ejected), 0 when down; a disabled or draining clone that is healthy is 1.",
        MetricType::GAUGE,
        s.backends
            .iter()
            .map(|c| {
                let up = !c.down;
                gauge(&[("backend", &c.name)], if up { 1.0 } else { 0.0 })
            })
            .collect(),
    ));
    families.push(family(
        "clonelb_retries_total",
        "Failed attempts on the clone that were retried on another clone.",
        MetricType::COUNTER,
        s.backends
            .iter()
            .map(|c| counter(&[("backend", &c.name)], c.counters.retries))
            .collect(),
    ));
    families.push(family(
        "clonelb_config_generation",
        "Successful configuration loads since start, counting the first.",
        MetricType::GAUGE,
        vec![gauge(&[], s.generation as f64)],
    ));
    let mut durations: Vec<Metric> = s
        .backends
        .iter()
        .map(|c| histogram(&[("backend", &c.name)], &c.latency))
        .collect();
    durations.push(histogram(&[("backend", "none")], &process.unrouted_latency));
    families.push(family(
        "clonelb_request_duration_seconds",
        "Time from the start of a request to its response head.",
        MetricType::HISTOGRAM,
        durations,
    ));
    let mut checks = Vec::new();
    for c in &s.backends {
        checks.push(counter(
            &[("backend", &c.name), ("result", "pass")],
            c.checks.passed,
        ));
        checks.push(counter(
            &[("backend", &c.name), ("result", "fail")],
            c.checks.failed,
        ));
    }
    families.push(family(
        "clonelb_health_checks_total",
        "Active health checks of the clone, by result.",
        MetricType::COUNTER,
        checks,
    ));
    families.push(family(
        "clonelb_config_reloads_total",
        "Configuration reloads since start, by result (the first load is not one).",
        MetricType::COUNTER,
        vec![
            counter(&[("result", "success")], process.reloads_success),
            counter(&[("result", "failure")], process.reloads_failure),
        ],
    ));
    families.push(family(
        "clonelb_downstream_connections",
        "Open client connections.",
        MetricType::GAUGE,
        vec![gauge(&[], process.downstream_connections as f64)],
    ));
    families.push(family(
        "clonelb_access_log_dropped_total",
        "Access log lines dropped because the log's queue was full.",
        MetricType::COUNTER,
        vec![counter(&[], process.access_log_dropped)],
    ));
    families.push(family(
        "clonelb_access_log_write_errors_total",
        "Access log lines lost because the log could not be opened or written.",
        MetricType::COUNTER,
        vec![counter(&[], process.access_log_write_errors)],
    ));
    families.push(family(
        "clonelb_backend_info",
        "1 for each clone with the code version its last passing health check reported (clones of unknown version are not listed).",
        MetricType::GAUGE,
        s.backends
            .iter()
            .filter_map(|c| {
                let v = c.version.as_deref()?;
                Some(gauge(&[("backend", &c.name), ("version", v)], 1.0))
            })
            .collect(),
    ));
    families.push(family(
        "clonelb_version_skew",
        "Distinct code versions among clones that are up (not disabled, not draining); above 1 during a rolling deploy.",
        MetricType::GAUGE,
        vec![gauge(&[], s.deploy.skew as f64)],
    ));
    families.push(family(
        "clonelb_deploy_fallbacks_total",
        "Times the active version had no clone up and requests fell back to another version (atomic deploy mode).",
        MetricType::COUNTER,
        vec![counter(&[], s.deploy.fallbacks_total)],
    ));
    if s.audit.enabled {
        families.push(family(
            "clonelb_audit_checks_total",
            "Sampled answers compared with their replay on a second clone.",
            MetricType::COUNTER,
            vec![counter(&[], s.audit.checked())],
        ));
        families.push(family(
            "clonelb_audit_mismatches_total",
            "Comparisons that disagreed, counted against both clones of the pair.",
            MetricType::COUNTER,
            s.audit
                .verdicts
                .clones
                .iter()
                .map(|c| counter(&[("backend", &c.clone.name)], c.mismatches))
                .collect(),
        ));
        families.push(family(
            "clonelb_audit_skipped_total",
            "Samples not compared, by reason.",
            MetricType::COUNTER,
            crate::audit::job::Skip::ALL
                .iter()
                .map(|r| counter(&[("reason", r.as_str())], s.audit.skipped(*r)))
                .collect(),
        ));
    }

    let mut lookups = Vec::new();
    for d in &s.dns {
        for r in crate::dns::LookupResult::ALL {
            let n = d.lookups[r.index()];
            lookups.push(counter(&[("name", &d.name), ("result", r.as_str())], n));
        }
    }
    families.push(family(
        "clonelb_dns_lookups_total",
        "Lookups of each DNS name of lb.toml, by result (only ok and nodata change its clones).",
        MetricType::COUNTER,
        lookups,
    ));

    // A family with no series (no clones) cannot be written: leave it out.
    families.retain(|f| !f.get_metric().is_empty());
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .map_err(|e| format!("cannot write metrics: {e}"))?;
    String::from_utf8(out).map_err(|e| format!("cannot write metrics: {e}"))
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

fn counter(pairs: &[(&str, &str)], value: u64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value as f64);
    let mut m = Metric::from_label(labels(pairs));
    m.set_counter(c);
    m
}

fn gauge(pairs: &[(&str, &str)], value: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::from_label(labels(pairs));
    m.set_gauge(g);
    m
}

/// A histogram from a snapshot's per-bucket (not cumulative) counts over
/// [`stats::bounds`] (seconds), the last count being `+Inf`'s.
fn histogram(pairs: &[(&str, &str)], h: &HistogramSnapshot) -> Metric {
    let mut cumulative = 0;
    let mut buckets = Vec::with_capacity(stats::bounds().len());
    for (bound, n) in stats::bounds().iter().zip(&h.counts) {
        cumulative += n;
        let mut b = Bucket::default();
        b.set_upper_bound(*bound);
        b.set_cumulative_count(cumulative);
        buckets.push(b);
    }
    let mut out = Histogram::default();
    out.set_bucket(buckets);
    out.set_sample_count(h.count);
    out.set_sample_sum(h.sum.as_secs_f64());
    let mut m = Metric::from_label(labels(pairs));
    m.set_histogram(out);
    m
}

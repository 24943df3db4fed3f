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

use crate::control::Status;

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
    // MERGE: backend="none" from the process stats.
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
    // MERGE: durations, health checks, reloads, downstream connections.

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

/// A histogram from per-bucket (not cumulative) counts over `bounds` (seconds), the last
/// count being `+Inf`'s.
#[allow(dead_code)] // MERGE: used once the latency histograms exist
fn histogram(pairs: &[(&str, &str)], bounds: &[f64], counts: &[u64], sum: f64) -> Metric {
    let mut cumulative = 0;
    let mut buckets = Vec::with_capacity(bounds.len());
    for (bound, n) in bounds.iter().zip(counts) {
        cumulative += n;
        let mut b = Bucket::default();
        b.set_upper_bound(*bound);
        b.set_cumulative_count(cumulative);
        buckets.push(b);
    }
    let total: u64 = counts.iter().sum();
    let mut h = Histogram::default();
    h.set_bucket(buckets);
    h.set_sample_count(total);
    h.set_sample_sum(sum);
    let mut m = Metric::from_label(labels(pairs));
    m.set_histogram(h);
    m
}

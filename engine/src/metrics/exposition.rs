//! Turning gathered metric families into the exposition `/metrics` serves: labels every
//! series must carry, unit conversions done at scrape time, the process's own metrics, and
//! the text encoding.
//!
//! Invariant: nothing here runs on the dataflow's hot path; all of it runs once per scrape.

use prometheus::core::Collector;
use prometheus::proto::{LabelPair, MetricFamily, MetricType};
use prometheus::{Encoder, IntGaugeVec};

/// Adds each of `labels` to every series of `families` that does not have it yet, keeping
/// each series' labels sorted by name as the prometheus crate does.
pub(super) fn add_labels(families: &mut [MetricFamily], labels: &[(&str, &str)]) {
    if labels.is_empty() {
        return;
    }
    for family in families {
        for metric in family.mut_metric() {
            let mut pairs = metric.take_label();
            for (name, value) in labels {
                if !pairs.iter().any(|p| p.name() == *name) {
                    let mut pair = LabelPair::default();
                    pair.set_name(name.to_string());
                    pair.set_value(value.to_string());
                    pairs.push(pair);
                }
            }
            pairs.sort_by(|a, b| a.name().cmp(b.name()));
            metric.set_label(pairs);
        }
    }
}

/// The family of `vec`, whose gauges hold milliseconds, with its values in seconds (its
/// name and help are already those of the seconds family). Empty when `vec` has no series.
pub(super) fn milliseconds_as_seconds(vec: &IntGaugeVec) -> Vec<MetricFamily> {
    let mut families = vec.collect();
    families.retain(|f| !f.get_metric().is_empty());
    for family in &mut families {
        family.set_field_type(MetricType::GAUGE);
        for metric in family.mut_metric() {
            let mut seconds = metric.get_gauge().clone();
            seconds.set_value(seconds.get_value() / 1000.0);
            metric.set_gauge(seconds);
        }
    }
    families
}

/// The `process_*` families of this process (CPU, memory, file descriptors, threads, start
/// time), each series labelled `job="job"`.
///
/// They come from the `prometheus` crate's collector (feature `process`, Linux only, which
/// reads `/proc/self`), chosen over reading `/proc` here: it is the maintained reading of
/// the standard names. Its CPU counter advances in whole seconds, which `rate()` over a
/// minute or more smooths out.
pub(super) fn process(job: &str) -> Vec<MetricFamily> {
    let mut families = read_process();
    add_labels(&mut families, &[("job", job)]);
    families
}

#[cfg(target_os = "linux")]
fn read_process() -> Vec<MetricFamily> {
    use std::sync::OnceLock;
    static COLLECTOR: OnceLock<prometheus::process_collector::ProcessCollector> = OnceLock::new();
    COLLECTOR
        .get_or_init(prometheus::process_collector::ProcessCollector::for_self)
        .collect()
}

#[cfg(not(target_os = "linux"))]
fn read_process() -> Vec<MetricFamily> {
    Vec::new()
}

/// Metric families in Prometheus text format.
pub(super) fn encode(families: &[MetricFamily]) -> String {
    let mut buf = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(families, &mut buf) {
        return format!("# weir: cannot encode metrics: {e}\n");
    }
    String::from_utf8_lossy(&buf).into_owned()
}

//! End-to-end latency: from the moment a source hands a batch of events to the engine to the
//! moment a sink receives the results that batch produced, in processing time.
//!
//! # How it is measured
//! A source stamps each batch with the instant it read it ([`crate::Batch::ingested`]).
//! Per-record operators keep the stamp; a keyed operator gives its output batch the stamp of
//! the input batch whose records *or watermark* made those results due (so a window result
//! is timed from the event that closed the window, not from the window's first event, which
//! is what a user waiting for the result sees). Sinks record `now - stamp` once per batch,
//! weighted by the batch's record count. Batches without a stamp (end of input, idle
//! watermarks) are not timed. Results that workers gather for a sink's thread (up to 1 ms
//! of them while the workers are busy) are timed from the oldest stamp among them, so a
//! percentile may overstate, never understate, what a result waited.
//!
//! # Invariants
//! - Recording is one atomic add per batch, never per record; the histogram is lock-free.
//! - Buckets are log-linear (16 per power of two of microseconds), so a percentile is exact
//!   to within 1/16 (about 6 %) of its value; reported values are bucket upper bounds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Metric, MetricFamily, MetricType, Quantile, Summary};

/// Sub-buckets per power of two.
const SUB_BUCKETS: u64 = 16;
const SUB_BITS: u32 = SUB_BUCKETS.trailing_zeros();
/// Enough buckets for every `u64` of microseconds.
const BUCKETS: usize = (64 * SUB_BUCKETS) as usize;

/// The quantiles the Prometheus summary exports.
const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

/// A lock-free histogram of latencies in microseconds.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_micros: AtomicU64,
    max_micros: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
            max_micros: AtomicU64::new(0),
        }
    }
}

/// The bucket of `micros`: values below 16 have their own bucket; above, each power of two
/// is split into 16 equal parts.
fn bucket_of(micros: u64) -> usize {
    if micros < SUB_BUCKETS {
        return micros as usize;
    }
    let magnitude = 63 - micros.leading_zeros(); // >= SUB_BITS
    let shift = magnitude - SUB_BITS;
    let sub = (micros >> shift) & (SUB_BUCKETS - 1);
    ((u64::from(shift) + 1) * SUB_BUCKETS + sub) as usize
}

/// The largest value in bucket `index`.
fn bucket_upper(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB_BUCKETS {
        return index;
    }
    let shift = index / SUB_BUCKETS - 1;
    let sub = index % SUB_BUCKETS;
    let low = (SUB_BUCKETS + sub) << shift;
    low + ((1u64 << shift) - 1)
}

impl LatencyHistogram {
    /// Records `records` results that each took `latency`.
    pub fn record(&self, latency: Duration, records: u64) {
        if records == 0 {
            return;
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(micros)].fetch_add(records, Ordering::Relaxed);
        self.count.fetch_add(records, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(micros.saturating_mul(records), Ordering::Relaxed);
        self.max_micros.fetch_max(micros, Ordering::Relaxed);
    }

    /// Percentiles of what was recorded so far, or `None` if nothing was.
    pub fn summary(&self) -> Option<LatencySummary> {
        let count = self.count.load(Ordering::Relaxed);
        if count == 0 {
            return None;
        }
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let quantile = |q: f64| {
            let rank = ((q * total as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Duration::from_micros(bucket_upper(i));
                }
            }
            Duration::from_micros(self.max_micros.load(Ordering::Relaxed))
        };
        Some(LatencySummary {
            count,
            p50: quantile(0.5),
            p90: quantile(0.9),
            p99: quantile(0.99),
            p999: quantile(0.999),
            max: Duration::from_micros(self.max_micros.load(Ordering::Relaxed)),
            mean: Duration::from_micros(self.sum_micros.load(Ordering::Relaxed) / count),
        })
    }
}

/// Latency percentiles of the results a job's sinks received.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    /// Results timed.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Largest.
    pub max: Duration,
    /// Mean.
    pub mean: Duration,
}

/// Exports a histogram as the Prometheus summary `weir_end_to_end_latency_seconds`.
#[derive(Debug)]
pub(crate) struct LatencyCollector {
    histogram: std::sync::Arc<LatencyHistogram>,
    job: String,
    desc: Desc,
}

/// Metric name of the end-to-end latency summary.
const NAME: &str = "weir_end_to_end_latency_seconds";

impl LatencyCollector {
    pub(crate) fn new(
        histogram: std::sync::Arc<LatencyHistogram>,
        job: &str,
    ) -> prometheus::Result<Self> {
        let desc = Desc::new(
            NAME.into(),
            "Processing time from a source reading events to a sink receiving the results \
             they made due"
                .into(),
            vec!["job".into()],
            Default::default(),
        )?;
        Ok(LatencyCollector {
            histogram,
            job: job.to_string(),
            desc,
        })
    }
}

impl Collector for LatencyCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut summary = Summary::default();
        if let Some(s) = self.histogram.summary() {
            summary.set_sample_count(s.count);
            summary.set_sample_sum(s.mean.as_secs_f64() * s.count as f64);
            let values = [s.p50, s.p90, s.p99, s.p999];
            summary.set_quantile(
                QUANTILES
                    .iter()
                    .zip(values)
                    .map(|(&q, v)| {
                        let mut quantile = Quantile::default();
                        quantile.set_quantile(q);
                        quantile.set_value(v.as_secs_f64());
                        quantile
                    })
                    .collect(),
            );
        }
        let mut label = prometheus::proto::LabelPair::default();
        label.set_name("job".into());
        label.set_value(self.job.clone());
        let mut metric = Metric::default();
        metric.set_label(vec![label]);
        metric.set_summary(summary);
        let mut family = MetricFamily::default();
        family.set_name(NAME.into());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::SUMMARY);
        family.set_metric(vec![metric]);
        vec![family]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_in_order_within_a_sixteenth() {
        let mut previous = 0;
        for micros in (0..100_000u64).chain([u64::MAX / 2, u64::MAX]) {
            let b = bucket_of(micros);
            assert!(b < BUCKETS);
            assert!(b >= previous, "bucket order at {micros}");
            previous = b;
            let upper = bucket_upper(b);
            assert!(upper >= micros, "{micros} above its bucket's upper {upper}");
            assert!(
                upper - micros <= micros / SUB_BUCKETS,
                "{micros}: bucket upper {upper} is off by more than 1/16"
            );
        }
    }

    #[test]
    fn percentiles_follow_the_recorded_weights() {
        let h = LatencyHistogram::default();
        assert_eq!(h.summary(), None);
        h.record(Duration::from_micros(100), 98);
        h.record(Duration::from_millis(5), 1);
        h.record(Duration::from_millis(50), 1);
        let s = h.summary().expect("recorded");
        assert_eq!(s.count, 100);
        assert!(s.p50 >= Duration::from_micros(100) && s.p50 < Duration::from_micros(107));
        assert!(s.p99 >= Duration::from_millis(5) && s.p99 < Duration::from_micros(5_320));
        assert_eq!(s.max, Duration::from_millis(50));
    }

    #[test]
    fn the_prometheus_summary_carries_the_quantiles() {
        let h = std::sync::Arc::new(LatencyHistogram::default());
        h.record(Duration::from_millis(2), 10);
        let collector = LatencyCollector::new(h, "demo").expect("valid metric");
        let registry = prometheus::Registry::new();
        registry.register(Box::new(collector)).expect("register");
        let mut text = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut text,
        )
        .expect("encode");
        let text = String::from_utf8(text).expect("utf-8");
        assert!(
            text.contains("# TYPE weir_end_to_end_latency_seconds summary"),
            "{text}"
        );
        assert!(
            text.contains("weir_end_to_end_latency_seconds{job=\"demo\",quantile=\"0.99\"} 0.002"),
            "{text}"
        );
        assert!(
            text.contains("weir_end_to_end_latency_seconds_count{job=\"demo\"} 10"),
            "{text}"
        );
    }
}

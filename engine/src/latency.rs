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
//! - Each result sink has its own histogram, exported as one series of the Prometheus
//!   histogram `weir_end_to_end_latency_seconds` (label `sink`) with fixed buckets from
//!   100 µs to 60 s, so `histogram_quantile` can aggregate sinks, tasks and processes. The
//!   run summary's percentiles are over all sinks together, from the fine buckets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Histogram, Metric, MetricFamily, MetricType};

/// Sub-buckets per power of two.
const SUB_BUCKETS: u64 = 16;
const SUB_BITS: u32 = SUB_BUCKETS.trailing_zeros();
/// Enough buckets for every `u64` of microseconds.
const BUCKETS: usize = (64 * SUB_BUCKETS) as usize;

/// Upper bounds (seconds) of the exported Prometheus histogram's buckets (`+Inf` is added
/// by the encoder): from 100 µs, where a hop between threads lies, to a minute.
const BOUNDS_SECONDS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// A lock-free histogram of latencies in microseconds.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
    max_micros: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
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
        self.sum_micros
            .fetch_add(micros.saturating_mul(records), Ordering::Relaxed);
        self.max_micros.fetch_max(micros, Ordering::Relaxed);
    }

    /// Percentiles of what was recorded so far, or `None` if nothing was.
    pub fn summary(&self) -> Option<LatencySummary> {
        self.snapshot().summary()
    }

    /// A copy of the counts, for reading without racing the sinks that record.
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            counts: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum_micros: self.sum_micros.load(Ordering::Relaxed),
            max_micros: self.max_micros.load(Ordering::Relaxed),
        }
    }
}

/// The counts of one or more histograms at one moment. Its record count is the sum of its
/// buckets (not the histograms' `count`, which a concurrent record may not have reached
/// yet), so the buckets and the count always agree.
#[derive(Debug, Clone, Default)]
struct Snapshot {
    counts: Vec<u64>,
    sum_micros: u64,
    max_micros: u64,
}

impl Snapshot {
    /// The counts of all of `histograms` together.
    fn of<'a>(histograms: impl IntoIterator<Item = &'a LatencyHistogram>) -> Snapshot {
        let mut all = Snapshot {
            counts: vec![0; BUCKETS],
            ..Snapshot::default()
        };
        for h in histograms {
            let one = h.snapshot();
            for (sum, c) in all.counts.iter_mut().zip(&one.counts) {
                *sum += c;
            }
            all.sum_micros = all.sum_micros.saturating_add(one.sum_micros);
            all.max_micros = all.max_micros.max(one.max_micros);
        }
        all
    }

    fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn summary(&self) -> Option<LatencySummary> {
        let count = self.count();
        if count == 0 {
            return None;
        }
        let max = Duration::from_micros(self.max_micros);
        let quantile = |q: f64| {
            let rank = ((q * count as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (i, c) in self.counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Duration::from_micros(bucket_upper(i));
                }
            }
            max
        };
        Some(LatencySummary {
            count,
            p50: quantile(0.5),
            p90: quantile(0.9),
            p99: quantile(0.99),
            p999: quantile(0.999),
            max,
            mean: Duration::from_micros(self.sum_micros / count),
        })
    }

    /// Cumulative counts at each of [`BOUNDS_SECONDS`]: the results whose bucket lies wholly
    /// at or below the bound. A bucket that straddles a bound counts at the next one, so
    /// the exported histogram may overstate a latency (by less than 1/16), never understate.
    fn cumulative(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(BOUNDS_SECONDS.len());
        let (mut index, mut seen) = (0, 0);
        for bound in BOUNDS_SECONDS {
            let bound_micros = (bound * 1e6).round() as u64;
            while index < self.counts.len() && bucket_upper(index) <= bound_micros {
                seen += self.counts[index];
                index += 1;
            }
            out.push(seen);
        }
        out
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

/// The latency histograms of a job's result sinks, by sink name.
#[derive(Debug, Default)]
pub(crate) struct SinkLatencies {
    sinks: std::sync::Mutex<Vec<(String, Arc<LatencyHistogram>)>>,
}

impl SinkLatencies {
    /// The histogram of sink `sink`, made on first use. Sinks of the same name share one.
    pub(crate) fn sink(&self, sink: &str) -> Arc<LatencyHistogram> {
        let mut sinks = self.lock();
        if let Some((_, h)) = sinks.iter().find(|(name, _)| name == sink) {
            return h.clone();
        }
        let h = Arc::new(LatencyHistogram::default());
        sinks.push((sink.to_string(), h.clone()));
        h
    }

    /// Percentiles over every sink's results, or `None` if none was timed.
    pub(crate) fn summary(&self) -> Option<LatencySummary> {
        let sinks = self.lock();
        Snapshot::of(sinks.iter().map(|(_, h)| &**h)).summary()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Arc<LatencyHistogram>)>> {
        self.sinks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Exports the sinks' histograms as the Prometheus histogram
/// `weir_end_to_end_latency_seconds`, one series per sink (label `sink`; the `job` label is
/// added with the job's other series).
#[derive(Debug, Clone)]
pub(crate) struct LatencyCollector {
    sinks: Arc<SinkLatencies>,
    desc: Desc,
}

/// Metric name of the end-to-end latency histogram.
const NAME: &str = "weir_end_to_end_latency_seconds";

impl LatencyCollector {
    pub(crate) fn new(sinks: Arc<SinkLatencies>) -> prometheus::Result<Self> {
        let desc = Desc::new(
            NAME.into(),
            "Processing time from a source reading events to a sink receiving the results \
             they made due"
                .into(),
            vec!["sink".into()],
            Default::default(),
        )?;
        Ok(LatencyCollector { sinks, desc })
    }
}

impl Collector for LatencyCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let metrics = self
            .sinks
            .lock()
            .iter()
            .map(|(sink, h)| {
                let snapshot = h.snapshot();
                let mut histogram = Histogram::default();
                histogram.set_sample_count(snapshot.count());
                histogram.set_sample_sum(snapshot.sum_micros as f64 / 1e6);
                histogram.set_bucket(
                    BOUNDS_SECONDS
                        .iter()
                        .zip(snapshot.cumulative())
                        .map(|(&bound, count)| {
                            let mut bucket = Bucket::default();
                            bucket.set_upper_bound(bound);
                            bucket.set_cumulative_count(count);
                            bucket
                        })
                        .collect(),
                );
                let mut label = prometheus::proto::LabelPair::default();
                label.set_name("sink".into());
                label.set_value(sink.clone());
                let mut metric = Metric::default();
                metric.set_label(vec![label]);
                metric.set_histogram(histogram);
                metric
            })
            .collect();
        let mut family = MetricFamily::default();
        family.set_name(NAME.into());
        family.set_help(self.desc.help.clone());
        family.set_field_type(MetricType::HISTOGRAM);
        family.set_metric(metrics);
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
    fn the_prometheus_histogram_has_a_series_per_sink_with_cumulative_buckets() {
        let sinks = Arc::new(SinkLatencies::default());
        sinks.sink("out").record(Duration::from_millis(2), 10);
        sinks.sink("out").record(Duration::from_micros(2_600), 1);
        sinks.sink("late").record(Duration::from_secs(90), 2);
        let collector = LatencyCollector::new(sinks.clone()).expect("valid metric");
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
        for line in [
            "# TYPE weir_end_to_end_latency_seconds histogram",
            // 2 ms is at or below the 2.5 ms bound; 2.6 ms is not.
            r#"weir_end_to_end_latency_seconds_bucket{sink="out",le="0.001"} 0"#,
            r#"weir_end_to_end_latency_seconds_bucket{sink="out",le="0.0025"} 10"#,
            r#"weir_end_to_end_latency_seconds_bucket{sink="out",le="0.005"} 11"#,
            r#"weir_end_to_end_latency_seconds_bucket{sink="out",le="+Inf"} 11"#,
            r#"weir_end_to_end_latency_seconds_count{sink="out"} 11"#,
            r#"weir_end_to_end_latency_seconds_bucket{sink="late",le="60"} 0"#,
            r#"weir_end_to_end_latency_seconds_bucket{sink="late",le="+Inf"} 2"#,
            r#"weir_end_to_end_latency_seconds_sum{sink="late"} 180"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        // The run summary is over both sinks.
        let summary = sinks.summary().expect("recorded");
        assert_eq!(summary.count, 13);
        assert_eq!(summary.max, Duration::from_secs(90));
    }
}

//! Prometheus metrics of a job (served over HTTP by the `weir` binary, `weir-jobs`'s
//! `http` module).
//!
//! One [`JobMetrics`] exists per job run; operators get per-instance handles
//! ([`OperatorMetrics`]) when they are created and update them once per batch, never per
//! event.
//!
//! # Conventions (checked by `promtool check metrics` in `tests/prometheus.rs`)
//! - Names start with `weir_` (`process_*` for the process); values are in base units
//!   (seconds, bytes); counters end in `_total`; each family has help text.
//! - Every series carries the label `job` (added when the metrics are gathered, so no
//!   handle can miss it), and `operator` and `subtask` (the worker index) where they
//!   apply. Scrape with `honor_labels: true`, or Prometheus renames `job` to
//!   `exported_job`. The worker index is not called `instance`: that is the label
//!   Prometheus gives each scraped target, and with `honor_labels` it would be overwritten.
//! - Handles keep their cheap integer form on the hot path; conversions to the exported
//!   unit (the watermark's epoch milliseconds to seconds) happen at scrape time.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `weir_events_in_total` | counter | records an operator received |
//! | `weir_events_out_total` | counter | records an operator emitted (sources: events read) |
//! | `weir_late_events_total` | counter | events dropped from windows as late |
//! | `weir_dead_letter_records_total` | counter | input records sent to the dead-letter output |
//! | `weir_duplicates_dropped_total` | counter | events a dedup operator dropped as repeats |
//! | `weir_watermark_seconds` | gauge | current watermark of an operator instance (seconds since the epoch, milliseconds as the fraction) |
//! | `weir_state_entries` | gauge | state entries (e.g. open window panes) of an instance |
//! | `weir_state_table_entries` | gauge | entries of one state table of an instance (label `table`: the names `weir describe` lists; a window's table holds a key's panes per entry), sampled after each batch |
//! | `weir_channel_fill` | gauge | batches queued in front of an instance (backpressure) |
//! | `weir_channel_capacity` | gauge | capacity of that queue, in batches |
//! | `weir_uptime_seconds` | gauge | seconds since the job started |
//! | `weir_end_to_end_latency_seconds` | histogram | processing time from a source reading events to a sink receiving the results they made due, per result sink (label `sink`; buckets 100 µs to 60 s; see [`crate::latency`]) |
//! | `weir_state_bytes` | gauge | bytes of an instance's state files (RocksDB SST files of its tables, before compaction merged versions; RocksDB state only) |
//! | `weir_state_memory_bytes` | gauge | memory RocksDB holds for an instance outside the block cache: memtables (state not yet in files; flushed at the write buffer size) and SST readers |
//! | `weir_rocksdb_block_cache_bytes` | gauge | bytes in the block cache all state databases of the run share (at most 64 MiB) |
//! | `weir_rocksdb_compaction_pending_bytes` | gauge | bytes waiting for compaction (RocksDB state only) |
//! | `weir_rocksdb_block_cache_hit_ratio` | gauge | share of block cache lookups that hit (RocksDB state with `--rocksdb-statistics` only) |
//! | `weir_checkpoints_completed_total` | counter | checkpoints completed (with `--checkpoint-interval` only, as the rest) |
//! | `weir_checkpoints_failed_total` | counter | checkpoints that failed (the job went on) |
//! | `weir_checkpoint_duration_seconds` | gauge | trigger to manifest, last completed checkpoint |
//! | `weir_checkpoint_size_bytes` | gauge | bytes of files in the last completed checkpoint (hard links counted in full) |
//! | `weir_checkpoint_alignment_seconds` | gauge | longest barrier alignment of any task in the last completed checkpoint |
//! | `weir_checkpoint_age_seconds` | gauge | seconds since the last checkpoint completed |
//! | `weir_kafka_records_in_total` | counter | records read from a topic (label `topic`; Kafka jobs only, as the rest) |
//! | `weir_kafka_read_bytes_total` | counter | payload bytes read from a topic |
//! | `weir_kafka_records_out_total` | counter | records a topic acknowledged |
//! | `weir_kafka_consumer_lag` | gauge | records behind the partition's end, counted from what the job has read (labels `topic`, `partition`; from librdkafka's statistics, once a second) |
//! | `weir_kafka_rebalances_total` | counter | partition assignments and revocations received |
//! | `weir_kafka_produce_errors_total` | counter | records the brokers did not acknowledge |
//! | `weir_kafka_broker_errors_total` | counter | errors reaching the brokers (each is retried with backoff) |
//! | `weir_projection_lag_seconds` | gauge | per queryable table (label `table`): now minus the event time of the last event it applied (jobs with queryable state only) |
//! | `weir_tcp_subscribers` | gauge | subscribers connected to a TCP server sink (`--output tcp://..?mode=listen`; such jobs only, as the next) |
//! | `weir_tcp_subscribers_dropped_total` | counter | subscribers a TCP server sink disconnected for falling behind |
//! | `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`, `process_threads`, `process_start_time_seconds` | | the process, read from `/proc` at each scrape (Linux; the `prometheus` crate's collector, which counts CPU in whole seconds) |

mod exposition;
mod groups;

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::latency::{LatencyCollector, LatencyHistogram, LatencySummary, SinkLatencies};
use crate::state::RocksStore;
use groups::{
    counter_vec, first_use, gauge, gauge_vec, int_gauge, register, valid, ProjectionMetrics,
};
pub use groups::{CheckpointMetrics, KafkaMetrics, TcpServerMetrics};

mod instances;

pub use instances::InstanceSample;

/// Counter handle type, re-exported so operators need no direct prometheus dependency.
pub use prometheus::IntCounter as Counter;

/// A keyed instance's RocksDB database, with its `weir_state_bytes` and
/// `weir_state_memory_bytes` series.
#[derive(Debug, Clone)]
struct ObservedStore {
    operator: String,
    instance: usize,
    bytes: IntGauge,
    memory: IntGauge,
    store: Arc<RocksStore>,
}

/// All metrics of one job.
#[derive(Debug, Clone)]
pub struct JobMetrics {
    job: String,
    registry: Registry,
    started: Instant,
    events_in: IntCounterVec,
    events_out: IntCounterVec,
    late_events: IntCounterVec,
    dead_letters: IntCounterVec,
    duplicates: IntCounterVec,
    /// Epoch milliseconds, as the operators set them; not in `registry`: exported as
    /// `weir_watermark_seconds` by [`JobMetrics::gather`].
    watermark_ms: IntGaugeVec,
    state_entries: IntGaugeVec,
    state_table_entries: IntGaugeVec,
    channel_fill: IntGaugeVec,
    channel_capacity: IntGaugeVec,
    uptime: Gauge,
    state_bytes: IntGaugeVec,
    state_memory: IntGaugeVec,
    block_cache_bytes: IntGauge,
    compaction_pending: IntGauge,
    /// Registered when the first database that keeps statistics is observed.
    block_cache_hit_ratio: Arc<std::sync::Mutex<Option<Gauge>>>,
    stores: Arc<std::sync::Mutex<Vec<ObservedStore>>>,
    checkpoints: Arc<std::sync::Mutex<Option<CheckpointMetrics>>>,
    kafka: Arc<std::sync::Mutex<Option<KafkaMetrics>>>,
    latency: Arc<SinkLatencies>,
    tcp_server: Arc<std::sync::Mutex<Option<TcpServerMetrics>>>,
    projections: Arc<std::sync::Mutex<Option<ProjectionMetrics>>>,
}

/// Metric handles of one operator instance.
#[derive(Debug, Clone)]
pub struct OperatorMetrics {
    /// Records received.
    pub events_in: IntCounter,
    /// Records emitted.
    pub events_out: IntCounter,
    /// Late events dropped.
    pub late_events: IntCounter,
    /// Current watermark (epoch milliseconds; exported in seconds).
    pub watermark: IntGauge,
    /// State entries held.
    pub state_entries: IntGauge,
    /// Input records the operator sent to its dead letters (`weir_dead_letters_total` of
    /// the operator: asynchronous requests that failed for good).
    pub dead_letters: IntCounter,
}

/// Labels of per-instance series (`job` is added to every series when gathering).
const INSTANCE_LABELS: &[&str] = &["operator", "subtask"];

/// Name of the exported watermark family.
const WATERMARK: &str = "weir_watermark_seconds";

impl JobMetrics {
    /// Fresh metrics for the job `job`.
    pub fn new(job: &str) -> Self {
        let registry = Registry::new();
        let r = &registry;
        let latency = Arc::new(SinkLatencies::default());
        let collector = valid(
            "weir_end_to_end_latency_seconds",
            LatencyCollector::new(latency.clone()),
        );
        register(r, "weir_end_to_end_latency_seconds", collector);
        JobMetrics {
            projections: Arc::default(),
            latency,
            job: job.to_string(),
            uptime: gauge(r, "weir_uptime_seconds", "Seconds since the job started"),
            state_bytes: gauge_vec(
                r,
                "weir_state_bytes",
                "Bytes of the RocksDB SST files of an operator instance's state tables",
                INSTANCE_LABELS,
            ),
            state_memory: gauge_vec(
                r,
                "weir_state_memory_bytes",
                "Memory RocksDB holds for an operator instance: memtables and SST readers",
                INSTANCE_LABELS,
            ),
            block_cache_bytes: int_gauge(
                r,
                "weir_rocksdb_block_cache_bytes",
                "Bytes in the RocksDB block cache the state databases of the run share",
            ),
            compaction_pending: int_gauge(
                r,
                "weir_rocksdb_compaction_pending_bytes",
                "RocksDB estimate of bytes waiting for compaction",
            ),
            block_cache_hit_ratio: Arc::default(),
            stores: Arc::new(std::sync::Mutex::new(Vec::new())),
            checkpoints: Arc::new(std::sync::Mutex::new(None)),
            kafka: Arc::new(std::sync::Mutex::new(None)),
            tcp_server: Arc::new(std::sync::Mutex::new(None)),
            started: Instant::now(),
            events_in: counter_vec(
                r,
                "weir_events_in_total",
                "Records an operator received",
                INSTANCE_LABELS,
            ),
            events_out: counter_vec(
                r,
                "weir_events_out_total",
                "Records an operator emitted",
                INSTANCE_LABELS,
            ),
            late_events: counter_vec(
                r,
                "weir_late_events_total",
                "Events dropped from windows as late",
                INSTANCE_LABELS,
            ),
            dead_letters: counter_vec(
                r,
                "weir_dead_letter_records_total",
                "Input records sent to the dead-letter output",
                &["operator"],
            ),
            duplicates: counter_vec(
                r,
                "weir_duplicates_dropped_total",
                "Events a dedup operator dropped as repeats",
                INSTANCE_LABELS,
            ),
            watermark_ms: valid(
                WATERMARK,
                IntGaugeVec::new(
                    Opts::new(
                        WATERMARK,
                        "Current watermark of an operator instance (seconds since the epoch)",
                    ),
                    INSTANCE_LABELS,
                ),
            ),
            state_entries: gauge_vec(
                r,
                "weir_state_entries",
                "State entries held by an operator instance",
                INSTANCE_LABELS,
            ),
            state_table_entries: gauge_vec(
                r,
                "weir_state_table_entries",
                "Entries of one state table of an operator instance",
                &["operator", "subtask", "table"],
            ),
            channel_fill: gauge_vec(
                r,
                "weir_channel_fill",
                "Batches queued in front of an operator instance",
                INSTANCE_LABELS,
            ),
            channel_capacity: gauge_vec(
                r,
                "weir_channel_capacity",
                "Capacity of the queue in front of an operator instance, in batches",
                INSTANCE_LABELS,
            ),
            registry,
        }
    }

    /// The histogram of end-to-end latencies that the result sink `sink` records into.
    pub fn latency(&self, sink: &str) -> Arc<LatencyHistogram> {
        self.latency.sink(sink)
    }

    /// Latency percentiles over every result sink, or `None` if no result was timed.
    pub fn latency_summary(&self) -> Option<LatencySummary> {
        self.latency.summary()
    }

    /// The job's name.
    pub fn job(&self) -> &str {
        &self.job
    }

    /// Handles for instance `instance` of a stateful (keyed) operator.
    pub fn operator(&self, operator: &str, instance: usize) -> OperatorMetrics {
        self.handles(operator, instance, true)
    }

    /// Handles for a source, sink or stateless operator: it has no late events and no
    /// state, so those two handles count privately and are not exported.
    pub fn stateless_operator(&self, operator: &str, instance: usize) -> OperatorMetrics {
        self.handles(operator, instance, false)
    }

    fn handles(&self, operator: &str, instance: usize, stateful: bool) -> OperatorMetrics {
        let instance = instance.to_string();
        let labels = [operator, instance.as_str()];
        let (late_events, state_entries, dead_letters) = if stateful {
            (
                self.late_events.with_label_values(&labels),
                self.state_entries.with_label_values(&labels),
                self.dead_letters.with_label_values(&[operator]),
            )
        } else {
            let private = || {
                valid(
                    "private",
                    IntCounter::new("weir_unexported", "not exported"),
                )
            };
            (
                private(),
                valid("private", IntGauge::new("weir_unexported", "not exported")),
                private(),
            )
        };
        OperatorMetrics {
            events_in: self.events_in.with_label_values(&labels),
            events_out: self.events_out.with_label_values(&labels),
            late_events,
            watermark: self.watermark_ms.with_label_values(&labels),
            state_entries,
            dead_letters,
        }
    }

    /// The entry gauge of state table `table` of instance `instance` of the keyed operator
    /// `operator`.
    pub fn state_table(&self, operator: &str, instance: usize, table: &str) -> IntGauge {
        let instance = instance.to_string();
        self.state_table_entries
            .with_label_values(&[operator, instance.as_str(), table])
    }

    /// The dead-letter counter of a source.
    pub fn dead_letters(&self, operator: &str) -> IntCounter {
        self.dead_letters.with_label_values(&[operator])
    }

    /// The counter of repeats dropped by instance `instance` of the dedup operator `operator`.
    pub fn duplicates(&self, operator: &str, instance: usize) -> IntCounter {
        let instance = instance.to_string();
        self.duplicates
            .with_label_values(&[operator, instance.as_str()])
    }

    /// Queue gauges (fill, capacity) in front of an operator instance.
    pub fn channel(&self, operator: &str, instance: usize) -> (IntGauge, IntGauge) {
        let instance = instance.to_string();
        let labels = [operator, instance.as_str()];
        (
            self.channel_fill.with_label_values(&labels),
            self.channel_capacity.with_label_values(&labels),
        )
    }

    /// Sum of a counter family over all label sets whose operator label is `operator`.
    pub fn total(&self, family: MetricFamily, operator: Option<&str>) -> u64 {
        let vec = match family {
            MetricFamily::EventsIn => &self.events_in,
            MetricFamily::EventsOut => &self.events_out,
            MetricFamily::LateEvents => &self.late_events,
            MetricFamily::DeadLetters => &self.dead_letters,
        };
        let mut sum = 0.0;
        for family in vec.collect() {
            for m in family.get_metric() {
                let matches = operator.is_none_or(|op| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == "operator" && l.value() == op)
                });
                if matches {
                    sum += m.get_counter().get_value();
                }
            }
        }
        sum as u64
    }

    /// Seconds since the job's metrics were created.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Adds `store`, the database of instance `instance` of `operator`, to those whose size
    /// and compaction backlog are reported.
    pub fn observe_store(&self, operator: &str, instance: usize, store: Arc<RocksStore>) {
        let index = instance.to_string();
        let labels = [operator, index.as_str()];
        let observed = ObservedStore {
            operator: operator.to_string(),
            instance,
            bytes: self.state_bytes.with_label_values(&labels),
            memory: self.state_memory.with_label_values(&labels),
            store,
        };
        if observed.store.keeps_statistics() {
            first_use(&self.block_cache_hit_ratio, || {
                gauge(
                    &self.registry,
                    "weir_rocksdb_block_cache_hit_ratio",
                    "Share of RocksDB block cache lookups that hit, since the job started",
                )
            });
        }
        if let Ok(mut stores) = self.stores.lock() {
            stores.push(observed);
        }
    }

    /// The checkpoint metrics, registered on first use.
    pub fn checkpoints(&self) -> CheckpointMetrics {
        first_use(&self.checkpoints, || {
            CheckpointMetrics::register(&self.registry)
        })
    }

    /// The Kafka metrics, registered on first use.
    pub fn kafka(&self) -> KafkaMetrics {
        first_use(&self.kafka, || KafkaMetrics::register(&self.registry))
    }

    /// The TCP server sink metrics, registered on first use.
    pub fn tcp_server(&self) -> TcpServerMetrics {
        first_use(&self.tcp_server, || {
            TcpServerMetrics::register(&self.registry)
        })
    }

    /// The event time (epoch ms) of the last event queryable table `table` applied, which
    /// its instances raise and `weir_projection_lag_seconds` is computed from; registered on
    /// first use.
    pub fn projection(&self, table: &str) -> Arc<std::sync::atomic::AtomicI64> {
        first_use(&self.projections, || {
            ProjectionMetrics::register(&self.registry)
        })
        .applied(table)
    }

    /// The metrics in Prometheus text format, with those of the process.
    pub fn render(&self) -> String {
        let mut families = self.gather();
        families.extend(exposition::process(&self.job));
        exposition::encode(&families)
    }

    /// The metrics of several jobs (or tasks of one job) in one exposition, each sample
    /// with its set's extra labels (e.g. `task="partition-3"`), and the process metrics
    /// once (labelled with the first set's job); families of the same name are merged. A
    /// set's extra labels must not be labels its metrics already have.
    pub fn render_all(sets: &[(&[(&str, &str)], &JobMetrics)]) -> String {
        let mut merged: Vec<prometheus::proto::MetricFamily> = Vec::new();
        for (labels, metrics) in sets {
            let mut families = metrics.gather();
            exposition::add_labels(&mut families, labels);
            for mut family in families {
                match merged.iter_mut().find(|f| f.name() == family.name()) {
                    Some(same) => same.mut_metric().extend(family.take_metric()),
                    None => merged.push(family),
                }
            }
        }
        if let Some((_, first)) = sets.first() {
            merged.extend(exposition::process(&first.job));
        }
        exposition::encode(&merged)
    }

    /// Collects every metric, refreshed, each series labelled with the job.
    fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.refresh();
        let mut families = self.registry.gather();
        families.extend(exposition::milliseconds_as_seconds(&self.watermark_ms));
        families.sort_by(|a, b| a.name().cmp(b.name()));
        exposition::add_labels(&mut families, &[("job", self.job.as_str())]);
        families
    }

    /// Refreshes the metrics read on demand (uptime, RocksDB figures, checkpoint age).
    fn refresh(&self) {
        self.uptime.set(self.started.elapsed().as_secs_f64());
        let stores = self.stores.lock().map(|s| s.clone()).unwrap_or_default();
        if !stores.is_empty() {
            let (mut pending, mut hits, mut misses) = (0, 0, 0);
            for ObservedStore {
                bytes,
                memory,
                store,
                ..
            } in &stores
            {
                bytes.set(store.file_bytes() as i64);
                memory.set(store.memory_bytes() as i64);
                pending += store.pending_compaction_bytes();
                if let Some((h, m)) = store.block_cache_hits_misses() {
                    hits += h;
                    misses += m;
                }
            }
            self.compaction_pending.set(pending as i64);
            // One cache serves every database of the run: any of them reports its usage.
            self.block_cache_bytes
                .set(stores[0].store.block_cache_bytes() as i64);
            let ratio = self
                .block_cache_hit_ratio
                .lock()
                .ok()
                .and_then(|g| g.clone());
            if let (Some(ratio), true) = (ratio, hits + misses > 0) {
                ratio.set(hits as f64 / (hits + misses) as f64);
            }
        }
        if let Some(checkpoints) = self.checkpoints.lock().ok().and_then(|c| c.clone()) {
            checkpoints.refresh_age();
        }
        if let Some(projections) = self.projections.lock().ok().and_then(|p| p.clone()) {
            projections.refresh();
        }
    }
}

/// Counter families that [`JobMetrics::total`] can sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricFamily {
    /// `weir_events_in_total`
    EventsIn,
    /// `weir_events_out_total`
    EventsOut,
    /// `weir_late_events_total`
    LateEvents,
    /// `weir_dead_letter_records_total`
    DeadLetters,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample lines (not comments) of an exposition.
    fn samples(text: &str) -> impl Iterator<Item = &str> {
        text.lines().filter(|l| !l.starts_with('#'))
    }

    #[test]
    fn several_jobs_render_as_one_exposition_told_apart_by_their_labels() {
        let (process, task) = (JobMetrics::new("j"), JobMetrics::new("j"));
        process.kafka().rebalances.inc();
        task.operator("window", 0).events_in.inc_by(5);
        let text = JobMetrics::render_all(&[(&[], &process), (&[("task", "partition-2")], &task)]);
        // One family header for both sets, and each sample with its own labels.
        assert_eq!(text.matches("# TYPE weir_uptime_seconds gauge").count(), 1);
        assert!(
            text.contains(
                r#"weir_events_in_total{job="j",operator="window",subtask="0",task="partition-2"} 5"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_kafka_rebalances_total{job="j"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_uptime_seconds{job="j",task="partition-2"}"#),
            "{text}"
        );
        // The process is described once, not once per task.
        if cfg!(target_os = "linux") {
            let rss: Vec<&str> = samples(&text)
                .filter(|l| l.starts_with("process_resident_memory_bytes"))
                .collect();
            assert_eq!(rss.len(), 1, "{text}");
            assert!(rss[0].starts_with(r#"process_resident_memory_bytes{job="j"} "#));
        }
    }

    #[test]
    fn every_series_has_the_job_label_and_the_watermark_is_in_seconds() {
        let metrics = JobMetrics::new("demo");
        let window = metrics.operator("window", 1);
        window.watermark.set(1_767_225_598_688);
        metrics.checkpoints().completed.inc();
        metrics.tcp_server().subscribers.set(2);
        metrics.kafka().set_consumer_lag("events", 3, 40);
        metrics
            .latency("output")
            .record(Duration::from_millis(3), 4);
        let text = metrics.render();
        assert!(
            text.contains(
                r#"weir_watermark_seconds{job="demo",operator="window",subtask="1"} 1767225598.688"#
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE weir_watermark_seconds gauge"),
            "{text}"
        );
        assert!(
            text.contains(r#"weir_end_to_end_latency_seconds_count{job="demo",sink="output"} 4"#),
            "{text}"
        );
        for line in samples(&text) {
            assert!(line.contains(r#"job="demo""#), "no job label: {line}");
        }
        assert_eq!(
            metrics.latency_summary().map(|s| s.count),
            Some(4),
            "the run summary sees the sink's results"
        );
    }
}

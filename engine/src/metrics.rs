//! Prometheus metrics of a job (served over HTTP by the `weir` binary, `weir-jobs`'s
//! `http` module).
//!
//! One [`JobMetrics`] exists per job run; operators get per-instance handles
//! ([`OperatorMetrics`]) when they are created and update them once per batch, never per
//! event. All metric names start with `weir_` and carry the labels `job`, `operator` and,
//! where it applies, `instance`.
//!
//! | metric | type | meaning |
//! |---|---|---|
//! | `weir_events_in_total` | counter | records an operator received |
//! | `weir_events_out_total` | counter | records an operator emitted (sources: events read) |
//! | `weir_late_events_total` | counter | events dropped from windows as late |
//! | `weir_dead_letter_records_total` | counter | input records sent to the dead-letter output |
//! | `weir_duplicates_dropped_total` | counter | events a dedup operator dropped as repeats |
//! | `weir_watermark_ms` | gauge | current watermark of an operator instance (epoch ms) |
//! | `weir_state_entries` | gauge | state entries (e.g. open window panes) of an instance |
//! | `weir_channel_fill` | gauge | batches queued in front of an instance (backpressure) |
//! | `weir_channel_capacity` | gauge | capacity of that queue, in batches |
//! | `weir_uptime_seconds` | gauge | seconds since the job started |
//! | `weir_end_to_end_latency_seconds` | summary | processing time from a source reading events to a sink receiving the results they made due (quantiles 0.5, 0.9, 0.99, 0.999; see [`crate::latency`]) |
//! | `weir_state_bytes` | gauge | bytes of an instance's state files (RocksDB SST files of its tables, before compaction merged versions; RocksDB state only) |
//! | `weir_state_memory_bytes` | gauge | memory RocksDB holds for an instance outside the block cache: memtables (state not yet in files; flushed at the write buffer size) and SST readers |
//! | `weir_rocksdb_block_cache_bytes` | gauge | bytes in the block cache all state databases of the run share (at most 64 MiB) |
//! | `weir_rocksdb_compaction_pending_bytes` | gauge | bytes waiting for compaction (RocksDB state only) |
//! | `weir_rocksdb_block_cache_hit_ratio` | gauge | share of block cache lookups that hit (RocksDB state only) |
//! | `weir_checkpoints_completed_total` | counter | checkpoints completed (with `--checkpoint-interval` only, as the rest) |
//! | `weir_checkpoints_failed_total` | counter | checkpoints that failed (the job went on) |
//! | `weir_checkpoint_duration_seconds` | gauge | trigger to manifest, last completed checkpoint |
//! | `weir_checkpoint_size_bytes` | gauge | bytes of files in the last completed checkpoint (hard links counted in full) |
//! | `weir_checkpoint_alignment_seconds` | gauge | longest barrier alignment of any task in the last completed checkpoint |
//! | `weir_checkpoint_age_seconds` | gauge | seconds since the last checkpoint completed |
//! | `weir_kafka_records_in_total` | counter | records read from a topic (labels `job`, `topic`; Kafka jobs only, as the rest) |
//! | `weir_kafka_bytes_in_total` | counter | payload bytes read from a topic |
//! | `weir_kafka_records_out_total` | counter | records a topic acknowledged |
//! | `weir_kafka_consumer_lag` | gauge | records behind the partition's end, counted from what the job has read (labels `topic`, `partition`; from librdkafka's statistics, once a second) |
//! | `weir_kafka_rebalances_total` | counter | partition assignments and revocations received |
//! | `weir_kafka_produce_errors_total` | counter | records the brokers did not acknowledge |
//! | `weir_kafka_broker_errors_total` | counter | errors reaching the brokers (each is retried with backoff) |
//! | `weir_tcp_subscribers` | gauge | subscribers connected to a TCP server sink (`--output tcp://..?mode=listen`; such jobs only, as the next) |
//! | `weir_tcp_subscribers_dropped_total` | counter | subscribers a TCP server sink disconnected for falling behind |

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::latency::{LatencyCollector, LatencyHistogram};
use crate::state::RocksStore;

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
    watermark: IntGaugeVec,
    state_entries: IntGaugeVec,
    channel_fill: IntGaugeVec,
    channel_capacity: IntGaugeVec,
    uptime: Gauge,
    state_bytes: IntGaugeVec,
    state_memory: IntGaugeVec,
    block_cache_bytes: IntGauge,
    compaction_pending: IntGauge,
    block_cache_hit_ratio: Gauge,
    stores: Arc<std::sync::Mutex<Vec<ObservedStore>>>,
    checkpoints: Arc<std::sync::Mutex<Option<CheckpointMetrics>>>,
    kafka: Arc<std::sync::Mutex<Option<KafkaMetrics>>>,
    latency: Arc<LatencyHistogram>,
    tcp_server: Arc<std::sync::Mutex<Option<TcpServerMetrics>>>,
}

/// Metrics of Kafka sources and sinks, registered only for jobs that use Kafka.
#[derive(Debug, Clone)]
pub struct KafkaMetrics {
    job: String,
    records_in: IntCounterVec,
    bytes_in: IntCounterVec,
    records_out: IntCounterVec,
    consumer_lag: IntGaugeVec,
    /// Partition assignments and revocations the consumer group made.
    pub rebalances: IntCounter,
    /// Records the brokers did not acknowledge.
    pub produce_errors: IntCounter,
    /// Errors reaching the brokers; the client retries each with backoff.
    pub broker_errors: IntCounter,
}

impl KafkaMetrics {
    /// Records read from `topic`.
    pub fn records_in(&self, topic: &str) -> IntCounter {
        self.records_in
            .with_label_values(&[self.job.as_str(), topic])
    }

    /// Payload bytes read from `topic`.
    pub fn bytes_in(&self, topic: &str) -> IntCounter {
        self.bytes_in.with_label_values(&[self.job.as_str(), topic])
    }

    /// Records `topic` acknowledged.
    pub fn records_out(&self, topic: &str) -> IntCounter {
        self.records_out
            .with_label_values(&[self.job.as_str(), topic])
    }

    /// How many records the consumer is behind the end of `topic`'s `partition`.
    pub fn set_consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        let partition = partition.to_string();
        self.consumer_lag
            .with_label_values(&[self.job.as_str(), topic, partition.as_str()])
            .set(lag);
    }
}

/// Metrics of TCP server sinks, registered only for jobs that have one.
#[derive(Debug, Clone)]
pub struct TcpServerMetrics {
    /// Subscribers connected now.
    pub subscribers: IntGauge,
    /// Subscribers disconnected because they fell behind.
    pub dropped: IntCounter,
}

/// Metrics of checkpointing, registered only for jobs that checkpoint.
#[derive(Debug, Clone)]
pub struct CheckpointMetrics {
    /// Checkpoints completed.
    pub completed: IntCounter,
    /// Checkpoints that failed.
    pub failed: IntCounter,
    /// Duration of the last completed checkpoint.
    pub last_duration_seconds: Gauge,
    /// Size of the last completed checkpoint.
    pub last_size_bytes: IntGauge,
    /// Longest alignment in the last completed checkpoint.
    pub last_alignment_seconds: Gauge,
    age_seconds: Gauge,
    last_completed: Arc<std::sync::Mutex<Option<Instant>>>,
}

impl CheckpointMetrics {
    /// A checkpoint completed just now.
    pub fn mark_completed(&self) {
        if let Ok(mut at) = self.last_completed.lock() {
            *at = Some(Instant::now());
        }
    }

    fn refresh_age(&self) {
        if let Some(at) = self.last_completed.lock().ok().and_then(|at| *at) {
            self.age_seconds.set(at.elapsed().as_secs_f64());
        }
    }
}

fn register<C: Collector + Clone + 'static>(registry: &Registry, name: &str, metric: C) -> C {
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    let g = Gauge::new(name, help).unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    register(registry, name, g)
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    register(registry, name, g)
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c =
        IntCounter::new(name, help).unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    register(registry, name, c)
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
    /// Current watermark.
    pub watermark: IntGauge,
    /// State entries held.
    pub state_entries: IntGauge,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    registry
        .register(Box::new(vec.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    vec
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let vec = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    registry
        .register(Box::new(vec.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    vec
}

const INSTANCE_LABELS: &[&str] = &["job", "operator", "instance"];

impl JobMetrics {
    /// Fresh metrics for the job `job`.
    pub fn new(job: &str) -> Self {
        let registry = Registry::new();
        let uptime = Gauge::new("weir_uptime_seconds", "Seconds since the job started")
            .unwrap_or_else(|e| panic!("metric weir_uptime_seconds is malformed: {e}"));
        registry
            .register(Box::new(uptime.clone()))
            .unwrap_or_else(|e| panic!("metric weir_uptime_seconds registered twice: {e}"));
        let state_bytes = gauge_vec(
            &registry,
            "weir_state_bytes",
            "Bytes of the RocksDB SST files of an operator instance's state tables",
            INSTANCE_LABELS,
        );
        let state_memory = gauge_vec(
            &registry,
            "weir_state_memory_bytes",
            "Memory RocksDB holds for an operator instance: memtables and SST readers",
            INSTANCE_LABELS,
        );
        let block_cache_bytes = IntGauge::new(
            "weir_rocksdb_block_cache_bytes",
            "Bytes in the RocksDB block cache the state databases of the run share",
        )
        .unwrap_or_else(|e| panic!("metric weir_rocksdb_block_cache_bytes is malformed: {e}"));
        registry
            .register(Box::new(block_cache_bytes.clone()))
            .unwrap_or_else(|e| panic!("state metric registered twice: {e}"));
        let compaction_pending = IntGauge::new(
            "weir_rocksdb_compaction_pending_bytes",
            "RocksDB estimate of bytes waiting for compaction",
        )
        .unwrap_or_else(|e| {
            panic!("metric weir_rocksdb_compaction_pending_bytes is malformed: {e}")
        });
        registry
            .register(Box::new(compaction_pending.clone()))
            .unwrap_or_else(|e| panic!("state metric registered twice: {e}"));
        let block_cache_hit_ratio = Gauge::new(
            "weir_rocksdb_block_cache_hit_ratio",
            "Share of RocksDB block cache lookups that hit, since the job started",
        )
        .unwrap_or_else(|e| panic!("metric weir_rocksdb_block_cache_hit_ratio is malformed: {e}"));
        registry
            .register(Box::new(block_cache_hit_ratio.clone()))
            .unwrap_or_else(|e| panic!("state metric registered twice: {e}"));
        let latency = Arc::new(LatencyHistogram::default());
        let collector = LatencyCollector::new(latency.clone(), job)
            .unwrap_or_else(|e| panic!("metric weir_end_to_end_latency_seconds is malformed: {e}"));
        registry
            .register(Box::new(collector))
            .unwrap_or_else(|e| panic!("latency metric registered twice: {e}"));
        JobMetrics {
            latency,
            job: job.to_string(),
            state_bytes,
            state_memory,
            block_cache_bytes,
            compaction_pending,
            block_cache_hit_ratio,
            stores: Arc::new(std::sync::Mutex::new(Vec::new())),
            checkpoints: Arc::new(std::sync::Mutex::new(None)),
            kafka: Arc::new(std::sync::Mutex::new(None)),
            tcp_server: Arc::new(std::sync::Mutex::new(None)),
            started: Instant::now(),
            events_in: counter_vec(
                &registry,
                "weir_events_in_total",
                "Records an operator received",
                INSTANCE_LABELS,
            ),
            events_out: counter_vec(
                &registry,
                "weir_events_out_total",
                "Records an operator emitted",
                INSTANCE_LABELS,
            ),
            late_events: counter_vec(
                &registry,
                "weir_late_events_total",
                "Events dropped from windows as late",
                INSTANCE_LABELS,
            ),
            dead_letters: counter_vec(
                &registry,
                "weir_dead_letter_records_total",
                "Input records sent to the dead-letter output",
                &["job", "operator"],
            ),
            duplicates: counter_vec(
                &registry,
                "weir_duplicates_dropped_total",
                "Events a dedup operator dropped as repeats",
                INSTANCE_LABELS,
            ),
            watermark: gauge_vec(
                &registry,
                "weir_watermark_ms",
                "Current watermark (epoch ms)",
                INSTANCE_LABELS,
            ),
            state_entries: gauge_vec(
                &registry,
                "weir_state_entries",
                "State entries held by an operator instance",
                INSTANCE_LABELS,
            ),
            channel_fill: gauge_vec(
                &registry,
                "weir_channel_fill",
                "Batches queued in front of an operator instance",
                INSTANCE_LABELS,
            ),
            channel_capacity: gauge_vec(
                &registry,
                "weir_channel_capacity",
                "Capacity of the queue in front of an operator instance, in batches",
                INSTANCE_LABELS,
            ),
            uptime,
            registry,
        }
    }

    /// The histogram of end-to-end latencies that sinks record into.
    pub fn latency(&self) -> Arc<LatencyHistogram> {
        self.latency.clone()
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
        let labels = [self.job.as_str(), operator, instance.as_str()];
        let (late_events, state_entries) = if stateful {
            (
                self.late_events.with_label_values(&labels),
                self.state_entries.with_label_values(&labels),
            )
        } else {
            (
                IntCounter::new("weir_unexported_late_events", "not exported")
                    .unwrap_or_else(|e| panic!("private counter is malformed: {e}")),
                IntGauge::new("weir_unexported_state_entries", "not exported")
                    .unwrap_or_else(|e| panic!("private gauge is malformed: {e}")),
            )
        };
        OperatorMetrics {
            events_in: self.events_in.with_label_values(&labels),
            events_out: self.events_out.with_label_values(&labels),
            late_events,
            watermark: self.watermark.with_label_values(&labels),
            state_entries,
        }
    }

    /// The dead-letter counter of a source.
    pub fn dead_letters(&self, operator: &str) -> IntCounter {
        self.dead_letters
            .with_label_values(&[self.job.as_str(), operator])
    }

    /// The counter of repeats dropped by instance `instance` of the dedup operator `operator`.
    pub fn duplicates(&self, operator: &str, instance: usize) -> IntCounter {
        let instance = instance.to_string();
        self.duplicates
            .with_label_values(&[self.job.as_str(), operator, instance.as_str()])
    }

    /// Queue gauges (fill, capacity) in front of an operator instance.
    pub fn channel(&self, operator: &str, instance: usize) -> (IntGauge, IntGauge) {
        let instance = instance.to_string();
        let labels = [self.job.as_str(), operator, instance.as_str()];
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
        let labels = [self.job.as_str(), operator, index.as_str()];
        let observed = ObservedStore {
            operator: operator.to_string(),
            instance,
            bytes: self.state_bytes.with_label_values(&labels),
            memory: self.state_memory.with_label_values(&labels),
            store,
        };
        if let Ok(mut stores) = self.stores.lock() {
            stores.push(observed);
        }
    }

    /// The checkpoint metrics, registered on first use.
    pub fn checkpoints(&self) -> CheckpointMetrics {
        let mut slot = self
            .checkpoints
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.get_or_insert_with(|| {
            let r = &self.registry;
            CheckpointMetrics {
                completed: counter(
                    r,
                    "weir_checkpoints_completed_total",
                    "Checkpoints completed",
                ),
                failed: counter(
                    r,
                    "weir_checkpoints_failed_total",
                    "Checkpoints that failed (the job went on)",
                ),
                last_duration_seconds: gauge(
                    r,
                    "weir_checkpoint_duration_seconds",
                    "Duration of the last completed checkpoint",
                ),
                last_size_bytes: int_gauge(
                    r,
                    "weir_checkpoint_size_bytes",
                    "Bytes of files in the last completed checkpoint",
                ),
                last_alignment_seconds: gauge(
                    r,
                    "weir_checkpoint_alignment_seconds",
                    "Longest barrier alignment in the last completed checkpoint",
                ),
                age_seconds: gauge(
                    r,
                    "weir_checkpoint_age_seconds",
                    "Seconds since the last checkpoint completed",
                ),
                last_completed: Arc::new(std::sync::Mutex::new(None)),
            }
        })
        .clone()
    }

    /// The Kafka metrics, registered on first use.
    pub fn kafka(&self) -> KafkaMetrics {
        let mut slot = self
            .kafka
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.get_or_insert_with(|| {
            let r = &self.registry;
            let by_topic = &["job", "topic"];
            KafkaMetrics {
                job: self.job.clone(),
                records_in: counter_vec(
                    r,
                    "weir_kafka_records_in_total",
                    "Records read from a Kafka topic",
                    by_topic,
                ),
                bytes_in: counter_vec(
                    r,
                    "weir_kafka_bytes_in_total",
                    "Payload bytes read from a Kafka topic",
                    by_topic,
                ),
                records_out: counter_vec(
                    r,
                    "weir_kafka_records_out_total",
                    "Records a Kafka topic acknowledged",
                    by_topic,
                ),
                consumer_lag: gauge_vec(
                    r,
                    "weir_kafka_consumer_lag",
                    "Records the consumer is behind the end of a partition",
                    &["job", "topic", "partition"],
                ),
                rebalances: counter(
                    r,
                    "weir_kafka_rebalances_total",
                    "Partition assignments and revocations received from the consumer group",
                ),
                produce_errors: counter(
                    r,
                    "weir_kafka_produce_errors_total",
                    "Records the Kafka brokers did not acknowledge",
                ),
                broker_errors: counter(
                    r,
                    "weir_kafka_broker_errors_total",
                    "Errors reaching the Kafka brokers (retried with backoff)",
                ),
            }
        })
        .clone()
    }

    /// The TCP server sink metrics, registered on first use.
    pub fn tcp_server(&self) -> TcpServerMetrics {
        let mut slot = self
            .tcp_server
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slot.get_or_insert_with(|| TcpServerMetrics {
            subscribers: int_gauge(
                &self.registry,
                "weir_tcp_subscribers",
                "Subscribers connected to a TCP server sink",
            ),
            dropped: counter(
                &self.registry,
                "weir_tcp_subscribers_dropped_total",
                "Subscribers a TCP server sink disconnected for falling behind",
            ),
        })
        .clone()
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        encode(&self.gather())
    }

    /// The metrics of several jobs (or tasks of one job) in one exposition, each sample
    /// with its set's extra labels (e.g. `task="partition-3"`); families of the same name
    /// are merged. A set's extra labels must not be labels its metrics already have.
    pub fn render_all(sets: &[(&[(&str, &str)], &JobMetrics)]) -> String {
        let mut merged: Vec<prometheus::proto::MetricFamily> = Vec::new();
        for (labels, metrics) in sets {
            for mut family in metrics.gather() {
                for metric in family.mut_metric() {
                    let mut pairs = metric.take_label();
                    for (name, value) in labels.iter() {
                        let mut pair = prometheus::proto::LabelPair::default();
                        pair.set_name(name.to_string());
                        pair.set_value(value.to_string());
                        pairs.push(pair);
                    }
                    metric.set_label(pairs);
                }
                match merged.iter_mut().find(|f| f.name() == family.name()) {
                    Some(same) => same.mut_metric().extend(family.take_metric()),
                    None => merged.push(family),
                }
            }
        }
        encode(&merged)
    }

    /// Refreshes the metrics read on demand (uptime, RocksDB figures, checkpoint age) and
    /// collects them all.
    fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
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
                let (h, m) = store.block_cache_hits_misses();
                hits += h;
                misses += m;
            }
            self.compaction_pending.set(pending as i64);
            // One cache serves every database of the run: any of them reports its usage.
            self.block_cache_bytes
                .set(stores[0].store.block_cache_bytes() as i64);
            if hits + misses > 0 {
                self.block_cache_hit_ratio
                    .set(hits as f64 / (hits + misses) as f64);
            }
        }
        if let Some(checkpoints) = self.checkpoints.lock().ok().and_then(|c| c.clone()) {
            checkpoints.refresh_age();
        }
        self.registry.gather()
    }
}

/// Metric families in Prometheus text format.
fn encode(families: &[prometheus::proto::MetricFamily]) -> String {
    let mut buf = Vec::new();
    if let Err(e) = prometheus::TextEncoder::new().encode(families, &mut buf) {
        return format!("# weir: cannot encode metrics: {e}\n");
    }
    String::from_utf8_lossy(&buf).into_owned()
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
                r#"weir_events_in_total{instance="0",job="j",operator="window",task="partition-2"} 5"#
            ),
            "{text}"
        );
        assert!(text.contains("weir_kafka_rebalances_total 1"), "{text}");
        assert!(
            text.contains(r#"weir_uptime_seconds{task="partition-2"}"#),
            "{text}"
        );
    }
}

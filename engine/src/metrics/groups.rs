//! Metric groups registered only when a job has what they describe (checkpoints, Kafka, a
//! TCP server sink, queryable tables), and the registration helpers every metric of a job goes through.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus::core::Collector;
use prometheus::{
    Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Metrics of Kafka sources and sinks, registered only for jobs that use Kafka.
#[derive(Debug, Clone)]
pub struct KafkaMetrics {
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
    pub(super) fn register(r: &Registry) -> Self {
        let by_topic = &["topic"];
        KafkaMetrics {
            records_in: counter_vec(
                r,
                "weir_kafka_records_in_total",
                "Records read from a Kafka topic",
                by_topic,
            ),
            bytes_in: counter_vec(
                r,
                "weir_kafka_read_bytes_total",
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
                &["topic", "partition"],
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
    }

    /// Records read from `topic`.
    pub fn records_in(&self, topic: &str) -> IntCounter {
        self.records_in.with_label_values(&[topic])
    }

    /// Payload bytes read from `topic`.
    pub fn bytes_in(&self, topic: &str) -> IntCounter {
        self.bytes_in.with_label_values(&[topic])
    }

    /// Records `topic` acknowledged.
    pub fn records_out(&self, topic: &str) -> IntCounter {
        self.records_out.with_label_values(&[topic])
    }

    /// How many records the consumer is behind the end of `topic`'s `partition`.
    pub fn set_consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        let partition = partition.to_string();
        self.consumer_lag
            .with_label_values(&[topic, partition.as_str()])
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

impl TcpServerMetrics {
    pub(super) fn register(r: &Registry) -> Self {
        TcpServerMetrics {
            subscribers: int_gauge(
                r,
                "weir_tcp_subscribers",
                "Subscribers connected to a TCP server sink",
            ),
            dropped: counter(
                r,
                "weir_tcp_subscribers_dropped_total",
                "Subscribers a TCP server sink disconnected for falling behind",
            ),
        }
    }
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
    last_completed: Arc<Mutex<Option<Instant>>>,
}

impl CheckpointMetrics {
    pub(super) fn register(r: &Registry) -> Self {
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
            last_completed: Arc::new(Mutex::new(None)),
        }
    }

    /// A checkpoint completed just now.
    pub fn mark_completed(&self) {
        if let Ok(mut at) = self.last_completed.lock() {
            *at = Some(Instant::now());
        }
    }

    pub(super) fn refresh_age(&self) {
        if let Some(at) = self.last_completed.lock().ok().and_then(|at| *at) {
            self.age_seconds.set(at.elapsed().as_secs_f64());
        }
    }
}

// Metric names and help texts are constants of these files, so a malformed or twice
// registered one is a programming error, found by any test that makes a `JobMetrics`.

/// Registers `metric` in `registry` and returns it.
pub(super) fn register<C: Collector + Clone + 'static>(
    registry: &Registry,
    name: &str,
    metric: C,
) -> C {
    registry
        .register(Box::new(metric.clone()))
        .unwrap_or_else(|e| panic!("metric {name} registered twice: {e}"));
    metric
}

/// `made`, or a panic naming the malformed metric `name`.
pub(super) fn valid<M>(name: &str, made: prometheus::Result<M>) -> M {
    made.unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"))
}

pub(super) fn gauge(registry: &Registry, name: &str, help: &str) -> Gauge {
    register(registry, name, valid(name, Gauge::new(name, help)))
}

pub(super) fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, name, valid(name, IntGauge::new(name, help)))
}

pub(super) fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, name, valid(name, IntCounter::new(name, help)))
}

pub(super) fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntCounterVec {
    let vec = valid(name, IntCounterVec::new(Opts::new(name, help), labels));
    register(registry, name, vec)
}

pub(super) fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> IntGaugeVec {
    let vec = valid(name, IntGaugeVec::new(Opts::new(name, help), labels));
    register(registry, name, vec)
}

/// The group in `slot`, made by `make` (which registers it) the first time.
pub(super) fn first_use<G: Clone>(slot: &Mutex<Option<G>>, make: impl FnOnce() -> G) -> G {
    let mut slot = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    slot.get_or_insert_with(make).clone()
}

/// `weir_projection_lag_seconds`: per queryable table (label `table`), now minus the event
/// time of the last event the table applied, computed at scrape time.
#[derive(Debug, Clone)]
pub(super) struct ProjectionMetrics {
    lag: GaugeVec,
    /// Event time (epoch ms) of the last applied event per table; `i64::MIN` before any.
    applied: Arc<Mutex<BTreeMap<String, Arc<AtomicI64>>>>,
}

impl ProjectionMetrics {
    pub(super) fn register(r: &Registry) -> Self {
        let name = "weir_projection_lag_seconds";
        let help = "seconds from the event time of the last event a queryable table applied to now";
        let lag = valid(name, GaugeVec::new(Opts::new(name, help), &["table"]));
        ProjectionMetrics {
            lag: register(r, name, lag),
            applied: Arc::default(),
        }
    }

    /// The last-applied event time of `table`, shared by its instances.
    pub(super) fn applied(&self, table: &str) -> Arc<AtomicI64> {
        let mut applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        applied
            .entry(table.to_string())
            .or_insert_with(|| Arc::new(AtomicI64::new(i64::MIN)))
            .clone()
    }

    pub(super) fn refresh(&self) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let applied = self.applied.lock().unwrap_or_else(|p| p.into_inner());
        for (table, at) in applied.iter() {
            let at = at.load(Ordering::Relaxed);
            if at != i64::MIN {
                let lag = now_ms.saturating_sub(at) as f64 / 1000.0;
                self.lag.with_label_values(&[table.as_str()]).set(lag);
            }
        }
    }
}

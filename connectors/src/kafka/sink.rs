//! The Kafka sink (one JSON value per result, keyed so results stay partitioned by key) and
//! a line writer that turns newline-delimited text into records (for `weir gen`).
//!
//! Both produce with the idempotent producer (no duplicates from producer retries) and
//! wait for every record to be acknowledged at each checkpoint barrier and at the end; a
//! record the brokers refused fails the job there instead of being lost silently. In a job
//! with checkpoints the sink is exactly-once through Kafka transactions unless its URI says
//! `delivery=at-least-once` (see `transactions`).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::error::{KafkaError as RdKafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use serde::Serialize;
use weir_engine::metrics::{JobMetrics, KafkaMetrics};
use weir_engine::{BoxError, CheckpointId, ConnectorState, Record, Sink};

use super::reach::{wait_for_brokers, UnreachableBrokers};
use super::transactions::Transactional;
use super::{Delivery, KafkaError, KafkaSpec, Reporting};

/// How long one wait for acknowledgements lasts before weir says it is still waiting.
const FLUSH_STEP: Duration = Duration::from_secs(5);
/// How long a full local queue is waited on before trying again.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(50);

/// Picks a result's Kafka key.
pub type KeyOf<T> = for<'a> fn(&'a T) -> &'a str;

pub(super) struct SinkContext {
    reporting: Reporting,
    acked: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

report_through_reporting!(SinkContext);

impl ProducerContext for SinkContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
            }
            Err((e, _)) => {
                self.reporting.metrics.produce_errors.inc();
                let mut first = self
                    .first_failure
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                first.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// A producer that knows when everything sent was acknowledged.
pub(super) struct Producing {
    pub(super) spec: KafkaSpec,
    pub(super) producer: BaseProducer<SinkContext>,
    /// Acknowledged records already added to `weir_kafka_records_out_total`.
    counted: u64,
}

impl Producing {
    /// A producer for `spec`'s first topic; transactional if `transactional_id` is given.
    pub(super) fn connect(
        spec: &KafkaSpec,
        metrics: &KafkaMetrics,
        transactional_id: Option<&str>,
    ) -> Result<Producing, KafkaError> {
        let mut config = spec.client_config();
        config
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("statistics.interval.ms", "0");
        if let Some(id) = transactional_id {
            config.set("transactional.id", id);
        }
        let context = SinkContext {
            reporting: Reporting::new(spec, metrics.clone()),
            acked: AtomicU64::new(0),
            first_failure: Mutex::new(None),
        };
        let producer = config
            .create_with_context(context)
            .map_err(|source| KafkaError {
                endpoint: spec.describe(),
                action: "create a producer",
                source,
            })?;
        Ok(Producing {
            spec: spec.clone(),
            producer,
            counted: 0,
        })
    }

    /// Waits for a first answer from the brokers, `connect_timeout` at most (see `reach`):
    /// a sink whose brokers cannot be reached fails the job then, saying so, instead of
    /// queueing results until librdkafka gives up on them minutes later.
    pub(super) fn reach_brokers(&self) -> Result<(), UnreachableBrokers> {
        let reporting = &self.producer.context().reporting;
        let drain = || {
            self.producer.poll(Duration::ZERO);
        };
        wait_for_brokers(
            self.producer.client(),
            reporting,
            &self.spec,
            "the output",
            drain,
            || false,
        )?;
        Ok(())
    }

    /// Queues one record; waits while librdkafka's local queue is full (backpressure).
    pub(super) fn send(&self, key: Option<&str>, payload: &[u8]) -> Result<(), KafkaError> {
        let topic = &self.spec.topics[0];
        let mut record = BaseRecord::to(topic).payload(payload);
        if let Some(key) = key {
            record = record.key(key);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((RdKafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    self.producer.poll(QUEUE_FULL_WAIT);
                }
                Err((source, _)) => {
                    return Err(KafkaError {
                        endpoint: self.spec.describe(),
                        action: "queue a record",
                        source,
                    })
                }
            }
        }
    }

    /// Serves delivery reports without waiting.
    fn poll(&mut self) {
        self.producer.poll(Duration::ZERO);
        self.count_acknowledged();
    }

    fn count_acknowledged(&mut self) {
        let acked = self.producer.context().acked.load(Ordering::Relaxed);
        self.producer
            .context()
            .reporting
            .metrics
            .records_out(&self.spec.topics[0])
            .inc_by(acked - self.counted);
        self.counted = acked;
    }

    /// Waits until every queued record is acknowledged, saying so while it waits; fails if
    /// the brokers refused any record.
    pub(super) fn flush(&mut self) -> Result<(), BoxError> {
        loop {
            match self.producer.flush(FLUSH_STEP) {
                Ok(()) => break,
                Err(RdKafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) => eprintln!(
                    "weir: kafka {}: still waiting for {} records to be acknowledged",
                    self.spec.describe(),
                    self.producer.in_flight_count()
                ),
                Err(source) => {
                    return Err(KafkaError {
                        endpoint: self.spec.describe(),
                        action: "flush",
                        source,
                    }
                    .into())
                }
            }
        }
        self.count_acknowledged();
        let failure = self
            .producer
            .context()
            .first_failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        match failure {
            Some(reason) => Err(format!(
                "kafka {}: the brokers did not acknowledge some records ({reason}); the job \\
                 stops so they are not lost: restart it from its checkpoint",
                self.spec.describe()
            )
            .into()),
            None => Ok(()),
        }
    }
}

/// Writes each result as a JSON value to the first topic of its spec, keyed by `key`.
pub struct KafkaSink<T> {
    spec: KafkaSpec,
    key: Option<KeyOf<T>>,
    /// Registered when the job opens the sink.
    metrics: Option<KafkaMetrics>,
    delivering: Delivering,
    buf: Vec<u8>,
}

/// How a [`KafkaSink`] delivers; connectors do no I/O until the job runs.
enum Delivering {
    /// Not connected yet.
    Unconnected,
    /// At-least-once: produced at once; connected by the first write.
    AtOnce(Producing),
    /// Exactly-once: held until their checkpoint completes; connected when a job with
    /// checkpoints begins transactions.
    Transactions(Box<Transactional>),
}

impl<T> std::fmt::Debug for KafkaSink<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl<T> KafkaSink<T> {
    /// Produces to `spec.topics[0]`; `key` picks each record's key (records without a key
    /// are spread over the partitions).
    pub fn new(spec: KafkaSpec, key: Option<KeyOf<T>>) -> Self {
        KafkaSink {
            spec,
            key,
            metrics: None,
            delivering: Delivering::Unconnected,
            buf: Vec::with_capacity(256),
        }
    }

    /// Sets the function that picks each record's key.
    pub fn set_key(&mut self, key: KeyOf<T>) {
        self.key = Some(key);
    }
}

impl<T: Serialize + Send + 'static> Sink<T> for KafkaSink<T> {
    fn open(&mut self, metrics: &JobMetrics) -> Result<(), BoxError> {
        self.metrics = Some(metrics.kafka());
        Ok(())
    }

    fn write(&mut self, records: &[Record<T>]) -> Result<(), BoxError> {
        let key = self.key;
        if let Delivering::Unconnected = self.delivering {
            let metrics = self.opened()?;
            let producing = Producing::connect(&self.spec, &metrics, None)?;
            producing.reach_brokers()?;
            self.delivering = Delivering::AtOnce(producing);
        }
        let producing = match &mut self.delivering {
            Delivering::Transactions(t) => {
                for record in records {
                    t.write(key.map(|k| k(&record.value)), &record.value)?;
                }
                return Ok(());
            }
            Delivering::AtOnce(p) => p,
            Delivering::Unconnected => return Err("the Kafka producer did not connect".into()),
        };
        let mut buf = std::mem::take(&mut self.buf);
        for record in records {
            buf.clear();
            serde_json::to_writer(&mut buf, &record.value)?;
            producing.send(key.map(|k| k(&record.value)), &buf)?;
        }
        producing.poll();
        self.buf = buf;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), BoxError> {
        match &mut self.delivering {
            Delivering::Transactions(t) => t.finish(),
            Delivering::AtOnce(p) => p.flush(),
            Delivering::Unconnected => Ok(()),
        }
    }

    fn describe(&self) -> String {
        self.spec.describe()
    }

    /// Exactly-once unless the URI says `delivery=at-least-once`: connects the
    /// transactional producer and commits what the restored checkpoint left uncommitted.
    fn begin_transactions(
        &mut self,
        restored: Option<(CheckpointId, Option<&ConnectorState>)>,
    ) -> Result<(), BoxError> {
        if self.spec.delivery == Delivery::ExactlyOnce {
            let metrics = self.opened()?;
            self.delivering = Delivering::Transactions(Box::new(Transactional::begin(
                &self.spec, &metrics, restored,
            )?));
        }
        Ok(())
    }

    /// Exactly-once: the rows since the last barrier are kept for this checkpoint.
    /// At-least-once: makes sure everything written so far was acknowledged, so a
    /// checkpoint never covers results that could still be lost.
    fn pre_commit(&mut self, checkpoint: CheckpointId) -> Result<Option<ConnectorState>, BoxError> {
        if let Delivering::Transactions(t) = &mut self.delivering {
            return t.pre_commit(checkpoint);
        }
        self.finish()?;
        Ok(None)
    }

    fn commit(&mut self, checkpoint: CheckpointId) -> Result<(), BoxError> {
        match &mut self.delivering {
            Delivering::Transactions(t) => t.commit(checkpoint),
            _ => Ok(()),
        }
    }
}

impl<T> KafkaSink<T> {
    /// The metrics [`Sink::open`] registered.
    fn opened(&self) -> Result<KafkaMetrics, BoxError> {
        self.metrics.clone().ok_or_else(|| {
            format!(
                "{}: the sink was not opened by a job (Sink::open)",
                self.spec.describe()
            )
            .into()
        })
    }
}

/// Newline-delimited text written to a topic, one record per line (without the newline),
/// without a key or keyed by a field of each line's JSON object: what `weir gen` uses to
/// fill a topic.
pub struct KafkaLineWriter {
    producing: Producing,
    pending: Vec<u8>,
    key_field: Option<String>,
}

impl std::fmt::Debug for KafkaLineWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaLineWriter")
            .field("spec", &self.producing.spec)
            .finish_non_exhaustive()
    }
}

impl KafkaLineWriter {
    /// Connects a producer to `spec`'s first topic.
    pub fn connect(spec: &KafkaSpec, metrics: &KafkaMetrics) -> Result<Self, KafkaError> {
        Ok(KafkaLineWriter {
            producing: Producing::connect(spec, metrics, None)?,
            pending: Vec::new(),
            key_field: None,
        })
    }

    /// Keys each record by the top-level field `field` of its line (a JSON object): the
    /// string's content, or the JSON text of any other value. The partitioner then puts all
    /// records of a key in one partition, as Kafka Streams expects of its input.
    pub fn keyed_by(mut self, field: &str) -> Self {
        self.key_field = Some(field.to_string());
        self
    }

    fn send(&self, line: &[u8]) -> std::io::Result<()> {
        let key = match &self.key_field {
            None => None,
            Some(field) => Some(key_of(line, field).map_err(std::io::Error::other)?),
        };
        self.producing
            .send(key.as_deref(), line)
            .map_err(std::io::Error::other)
    }
}

/// The text of field `field` of the JSON object `line`, as a record key.
fn key_of(line: &[u8], field: &str) -> Result<String, String> {
    let text = String::from_utf8_lossy(line);
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(line).map_err(|e| {
            format!("cannot key the line `{text}` by `{field}`: not a JSON object: {e}")
        })?;
    match object.get(field) {
        Some(serde_json::Value::String(key)) => Ok(key.clone()),
        Some(other) => Ok(other.to_string()),
        None => Err(format!(
            "cannot key the line `{text}` by `{field}`: it has no such field"
        )),
    }
}

impl Write for KafkaLineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut rest = buf;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            let line = if self.pending.is_empty() {
                &rest[..end]
            } else {
                self.pending.extend_from_slice(&rest[..end]);
                &self.pending[..]
            };
            self.send(line)?;
            self.pending.clear();
            rest = &rest[end + 1..];
        }
        self.pending.extend_from_slice(rest);
        self.producing.poll();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            self.send(&self.pending)?;
            self.pending.clear();
        }
        self.producing.flush().map_err(std::io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::key_of;

    #[test]
    fn a_line_is_keyed_by_its_field_as_text() {
        let line = br#"{"ts":5,"key":"k7","n":12,"o":{"a":1}}"#;
        assert_eq!(key_of(line, "key").as_deref(), Ok("k7"));
        assert_eq!(key_of(line, "n").as_deref(), Ok("12"));
        assert_eq!(key_of(line, "o").as_deref(), Ok(r#"{"a":1}"#));
        let missing = key_of(line, "user").unwrap_err();
        assert!(
            missing.contains("no such field") && missing.contains("`user`"),
            "{missing}"
        );
        let garbage = key_of(b"not json", "key").unwrap_err();
        assert!(garbage.contains("not a JSON object"), "{garbage}");
    }
}

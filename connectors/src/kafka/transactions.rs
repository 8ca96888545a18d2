//! Exactly-once delivery for the Kafka sink in a job with checkpoints: results are held
//! back until the checkpoint that covers them is complete, then produced in one Kafka
//! transaction that also sets the offset of a marker consumer group to that checkpoint's
//! number (a write-ahead sink, as Flink's `GenericWriteAheadSink`, with Kafka's
//! transactions making each commit atomic).
//!
//! Why not one transaction open across each checkpoint, as Flink's `KafkaSink`: finishing
//! a pre-committed transaction after a crash needs the dead producer's id and epoch, which
//! librdkafka cannot resume; a new producer with the same transactional id aborts it. So
//! the pre-commit is the rows themselves, kept in the checkpoint, and the marker says
//! whether the dead process got to commit them.
//!
//! # Invariants
//! - The rows written between two barriers belong to the second barrier's checkpoint; they
//!   stay in memory, and in the sink's part of every checkpoint taken before they are
//!   committed (memory grows with the results of a checkpoint interval, not with the input).
//! - A commit produces every pending checkpoint's rows up to the completed checkpoint `C`
//!   and sets the marker to `C` in the same transaction: both land or neither does.
//! - A fresh start sets the marker to 0. A restart from checkpoint `C` commits the rows of
//!   the checkpoints in `C`'s sink state that are above the marker (the dead process did
//!   not commit them), drops the rest (it did), and sets the marker to `C`.
//! - A restart from a checkpoint older than the marker (a fallback past a corrupt newest
//!   checkpoint, or an older savepoint) is refused: the rows committed after it would be
//!   derived and committed again.
//! - Starting a producer with a transactional id fences every older producer with it: a
//!   zombie process of the same job cannot commit any more. One transactional id belongs to
//!   one sink of one job (default `weir.GROUP.TOPIC`; set `transactional.id=` in the URI to
//!   give two jobs writing one topic their own).

use std::borrow::Cow;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerGroupMetadata};
use rdkafka::error::{KafkaError as RdKafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use weir_engine::metrics::KafkaMetrics;
use weir_engine::{BoxError, CheckpointId, ConnectorState, ConnectorStateType, StateMismatch};

use super::sink::Producing;
use super::{KafkaError, KafkaSpec};

/// How long one transactional call waits before weir says it is still waiting.
const CALL_STEP: Duration = Duration::from_secs(5);

/// The rows of one checkpoint, produced once it completes: one line per row, its key as a
/// JSON string (or `null`), a space, and its JSON value (compact JSON has no newlines). One
/// string rather than a value per row: it is kept in memory and in checkpoints until
/// committed, and a tree of JSON values costs several times the rows' size.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    checkpoint: CheckpointId,
    rows: String,
}

/// What the sink keeps in a checkpoint: every row not committed yet, by checkpoint.
/// Borrowed when written, so that the rows are not copied before they are encoded.
#[derive(Debug, Serialize, Deserialize)]
#[serde(transparent)]
struct Uncommitted<'a>(Cow<'a, [Pending]>);

impl ConnectorStateType for Uncommitted<'_> {
    const KIND: &'static str = "kafka sink";
    const VERSION: u32 = 1;
}

impl Pending {
    /// Each row's key and value.
    fn rows(&self) -> impl Iterator<Item = Result<(Option<String>, &str), BoxError>> {
        self.rows.lines().map(|line| {
            let mut de = serde_json::Deserializer::from_str(line).into_iter::<Option<String>>();
            let key = de
                .next()
                .ok_or("a pending Kafka row without a key")?
                .map_err(|e| format!("a pending Kafka row's key is unreadable ({e}): {line}"))?;
            Ok((key, line[de.byte_offset()..].trim_start()))
        })
    }
}

/// A transactional producer, the marker group it commits to, and the rows not yet committed.
pub(super) struct Transactional {
    producing: Producing,
    transactional_id: String,
    marker: Marker,
    /// Rows written since the last barrier, as in [`Pending::rows`].
    open: Vec<u8>,
    /// Rows of checkpoints that have not completed yet, oldest first.
    pending: Vec<Pending>,
}

/// The consumer group whose offset on partition 0 of the sink's topic is the number of the
/// last checkpoint whose rows were committed.
struct Marker {
    consumer: BaseConsumer,
    group: ConsumerGroupMetadata,
    topic: String,
}

impl Transactional {
    /// Connects with `spec`'s transactional id (fencing any older producer with it) and
    /// finishes what the restored checkpoint left: its rows not yet committed are committed
    /// now. On a fresh start (`restored` is `None`) the marker is reset.
    pub(super) fn begin(
        spec: &KafkaSpec,
        metrics: &KafkaMetrics,
        restored: Option<(CheckpointId, Option<&ConnectorState>)>,
    ) -> Result<Self, BoxError> {
        let transactional_id = spec.transactional_id();
        let producing = Producing::connect(spec, metrics, Some(&transactional_id))?;
        producing.reach_brokers()?;
        let mut sink = Transactional {
            marker: Marker::connect(spec, &transactional_id)?,
            producing,
            transactional_id,
            open: Vec::new(),
            pending: Vec::new(),
        };
        sink.call("initialise transactions", |p, t| p.init_transactions(t))
            .map_err(|e| {
                format!(
                    "{e}; a broker without transactions needs `delivery=at-least-once` in \
                     the URI"
                )
            })?;
        let Some((checkpoint, state)) = restored else {
            sink.commit_rows(Vec::new(), 0)?;
            return Ok(sink);
        };
        let state = state.ok_or(StateMismatch::Missing {
            kind: Uncommitted::KIND,
        })?;
        let pending = state.decode::<Uncommitted>()?.0.into_owned();
        let committed = sink.marker.read(spec)?;
        if let Some(newer) = committed.filter(|&c| c > checkpoint) {
            // The rows of the checkpoints after the restored one are in the topic already,
            // and this run derives them again with other checkpoint boundaries: nothing
            // tells which of them to leave out, so resuming would write them twice.
            return Err(format!(
                "{}: the topic already holds the results committed with checkpoint {newer} \
                 (transactional id `{}`), and this run resumes from the older checkpoint \
                 {checkpoint}, so the results of checkpoints {}..{newer} would be written a \
                 second time; resume from checkpoint {newer} or newer, or, to write them again \
                 on purpose, give the output a new `transactional.id=` (or start over with \
                 --replay-from beginning)",
                spec.describe(),
                sink.transactional_id,
                checkpoint + 1,
            )
            .into());
        }
        let undone: Vec<Pending> = pending
            .into_iter()
            .filter(|p| committed.is_none_or(|c| p.checkpoint > c))
            .collect();
        if !undone.is_empty() {
            let rows: usize = undone.iter().map(|p| p.rows.lines().count()).sum();
            eprintln!(
                "weir: kafka {}: committing {rows} results of checkpoint {checkpoint} that the \
                 previous run did not commit",
                spec.describe()
            );
        }
        // The marker is set to the restored checkpoint even with nothing to commit, so that
        // it names this run's checkpoints from now on.
        sink.commit_rows(undone, checkpoint)?;
        Ok(sink)
    }

    /// Holds a row back until the checkpoint after the next barrier completes.
    pub(super) fn write<T: Serialize>(
        &mut self,
        key: Option<&str>,
        value: &T,
    ) -> Result<(), BoxError> {
        serde_json::to_writer(&mut self.open, &key)?;
        self.open.push(b' ');
        serde_json::to_writer(&mut self.open, value)?;
        self.open.push(b'\n');
        Ok(())
    }

    /// A barrier of `checkpoint`: the rows since the last one belong to it. Returns every
    /// uncommitted row, for the checkpoint.
    pub(super) fn pre_commit(
        &mut self,
        checkpoint: CheckpointId,
    ) -> Result<Option<ConnectorState>, BoxError> {
        if !self.open.is_empty() {
            let rows = String::from_utf8(std::mem::take(&mut self.open))
                .map_err(|e| format!("a result is not UTF-8 JSON: {e}"))?;
            self.pending.push(Pending { checkpoint, rows });
        }
        Ok(Some(ConnectorState::encode(&Uncommitted(Cow::Borrowed(
            &self.pending,
        )))?))
    }

    /// `checkpoint` completed: its rows and those of every earlier one are committed.
    pub(super) fn commit(&mut self, checkpoint: CheckpointId) -> Result<(), BoxError> {
        let due = self
            .pending
            .iter()
            .take_while(|p| p.checkpoint <= checkpoint)
            .count();
        if due == 0 {
            return Ok(());
        }
        let due: Vec<Pending> = self.pending.drain(..due).collect();
        self.commit_rows(due, checkpoint)
    }

    /// Waits for every produced row to be acknowledged (nothing is produced outside a
    /// commit, so this only reports failures).
    pub(super) fn finish(&mut self) -> Result<(), BoxError> {
        self.producing.flush()
    }

    /// Produces `due` and moves the marker to `checkpoint`, in one transaction.
    fn commit_rows(&mut self, due: Vec<Pending>, checkpoint: CheckpointId) -> Result<(), BoxError> {
        self.producing
            .producer
            .begin_transaction()
            .map_err(|source| self.error("begin a transaction", source))?;
        for row in due.iter().flat_map(Pending::rows) {
            let (key, value) = row?;
            self.producing.send(key.as_deref(), value.as_bytes())?;
        }
        let mut marker = TopicPartitionList::new();
        marker
            .add_partition_offset(&self.marker.topic, 0, Offset::Offset(checkpoint as i64))
            .map_err(|source| self.error("set the commit marker", source))?;
        self.call("add the commit marker to the transaction", |p, t| {
            p.send_offsets_to_transaction(&marker, &self.marker.group, t)
        })?;
        self.producing.flush()?;
        self.call("commit a transaction", |p, t| p.commit_transaction(t))
            .map_err(|e| {
                format!(
                    "{e}; the results stay in checkpoint {checkpoint} and are committed when \
                     the job restarts from it"
                )
                .into()
            })
    }

    /// Runs a transactional call, again while it fails with a retriable error (a broker
    /// that is away or slow), saying so.
    fn call(
        &self,
        action: &'static str,
        mut op: impl FnMut(
            &rdkafka::producer::BaseProducer<super::sink::SinkContext>,
            Duration,
        ) -> KafkaResult<()>,
    ) -> Result<(), BoxError> {
        loop {
            match op(&self.producing.producer, CALL_STEP) {
                Ok(()) => return Ok(()),
                Err(RdKafkaError::Transaction(e)) if e.is_retriable() => eprintln!(
                    "weir: kafka {}: still waiting to {action} ({e}); retrying with backoff",
                    self.producing.spec.describe()
                ),
                Err(RdKafkaError::Transaction(e))
                    if matches!(
                        e.code(),
                        RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced
                    ) =>
                {
                    return Err(format!(
                        "{}: another producer with transactional.id `{}` took over (a second \
                         instance of this job?); stop it, or give each job its own \
                         `transactional.id=` in the URI",
                        self.producing.spec.describe(),
                        self.transactional_id
                    )
                    .into())
                }
                Err(source) => return Err(self.error(action, source).into()),
            }
        }
    }

    fn error(&self, action: &'static str, source: RdKafkaError) -> KafkaError {
        KafkaError {
            endpoint: self.producing.spec.describe(),
            action,
            source,
        }
    }
}

impl Marker {
    fn connect(spec: &KafkaSpec, transactional_id: &str) -> Result<Marker, KafkaError> {
        let endpoint = spec.describe();
        let consumer: BaseConsumer = spec
            .client_config()
            .set("group.id", format!("weir-commits.{transactional_id}"))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|source| KafkaError {
                endpoint: endpoint.clone(),
                action: "create the commit marker's consumer",
                source,
            })?;
        let group = consumer.group_metadata().ok_or_else(|| KafkaError {
            endpoint,
            action: "read the commit marker group's metadata",
            source: RdKafkaError::ClientCreation("no consumer group metadata".into()),
        })?;
        Ok(Marker {
            consumer,
            group,
            topic: spec.topics[0].clone(),
        })
    }

    /// The last checkpoint whose rows were committed; `None` if there is no marker.
    fn read(&self, spec: &KafkaSpec) -> Result<Option<CheckpointId>, KafkaError> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, 0);
        loop {
            match self.consumer.committed_offsets(tpl.clone(), CALL_STEP) {
                Ok(committed) => {
                    let offset = committed.elements().first().map(|e| e.offset());
                    return Ok(match offset {
                        Some(Offset::Offset(n)) => CheckpointId::try_from(n).ok(),
                        _ => None,
                    });
                }
                Err(RdKafkaError::MetadataFetch(RDKafkaErrorCode::OperationTimedOut)) => {
                    eprintln!(
                        "weir: kafka {}: still waiting to read the commit marker; retrying \
                         with backoff",
                        spec.describe()
                    )
                }
                Err(source) => {
                    return Err(KafkaError {
                        endpoint: spec.describe(),
                        action: "read the commit marker",
                        source,
                    })
                }
            }
        }
    }
}

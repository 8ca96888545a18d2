//! The [`KeyedOperator`] trait: stateful operators that run per key group.
//!
//! An operator has one required method, [`KeyedOperator::process`], which handles a batch
//! of keyed records in stream order, and hooks with default bodies for watermarks and the
//! end of input. Operators never talk to channels or threads: they write results to an
//! [`Output`], and the runtime moves them on. An operator with processing-time timers says
//! when the next is due ([`KeyedOperator::on_processing_time`]); the runtime owns the wait
//! and calls it back then.
//!
//! An operator over a keyed stream connected to a broadcast stream implements
//! [`BroadcastOperator`] as well (see [`broadcast`]).
//!
//! Operators on event time implement [`EventTimeOperator`] instead, and [`EventTime`] runs
//! them: it owns their watermark, lateness and checkpoint protocol (see [`event_time`]).
//!
//! # Watermarks in operators
//! Each input record carries the watermark that preceded it. An operator that fires timers
//! (windows) first advances to `record.watermark`, then handles the record, so lateness and
//! firing positions are identical for every batch size and parallelism. Results emitted while
//! firing carry the operator's *previous* output watermark, exactly like Flink emits window
//! results before forwarding the watermark that fired them.

pub mod broadcast;
pub mod event_time;

pub(crate) use broadcast::AsKeyed;
pub use broadcast::{
    BroadcastEventTimeOperator, BroadcastOperator, BroadcastOperatorFactory, Connected,
};
pub use event_time::{Due, EventTime, EventTimeOperator, Handled, KeyedEvent, Lateness};

use std::ops::Range;

use crate::clock::ProcessingClock;
use crate::error::{BoxError, EngineError};
use crate::keys::KeyGroup;
use crate::metrics::OperatorMetrics;
use crate::query::QueryableTable;
use crate::record::{Batch, Data, Keyed, Record};
use crate::runtime::Push;
use crate::state::{StateBackend, StateTable};
use crate::time::{Timestamp, MIN_WATERMARK};

/// Where an operator writes its results.
///
/// In a running job the output is connected to the operator's downstream: every `chunk`
/// results go on at once, while the operator is still emitting, so a watermark that fires
/// millions of windows never holds all their results in memory. Unconnected (in unit tests)
/// it keeps everything until [`Output::take`].
pub struct Output<T> {
    records: Vec<Record<T>>,
    watermark: Timestamp,
    downstream: Option<Downstream<T>>,
}

/// The runtime's side of a connected [`Output`].
struct Downstream<T> {
    push: Box<dyn Push<T>>,
    chunk: usize,
    /// When the input that made the current results due was read (see [`crate::latency`]).
    ingested: Option<std::time::Instant>,
    /// Records pushed since the last [`Output::forward`].
    pushed: usize,
    /// The first error of a push made from [`Output::emit`], reported by the next forward.
    failed: Option<EngineError>,
}

impl<T> std::fmt::Debug for Output<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("records", &self.records.len())
            .field("watermark", &self.watermark)
            .field("connected", &self.downstream.is_some())
            .finish()
    }
}

impl<T> Default for Output<T> {
    fn default() -> Self {
        Output {
            records: Vec::new(),
            watermark: MIN_WATERMARK,
            downstream: None,
        }
    }
}

impl<T> Output<T> {
    /// An output that pushes every `chunk` results to `push`.
    pub(crate) fn connected(push: Box<dyn Push<T>>, chunk: usize) -> Self {
        Output {
            downstream: Some(Downstream {
                push,
                chunk: chunk.max(1),
                ingested: None,
                pushed: 0,
                failed: None,
            }),
            ..Output::default()
        }
    }

    /// Results from now on are due because of input read at `ingested`.
    pub(crate) fn set_ingested(&mut self, ingested: Option<std::time::Instant>) {
        if let Some(d) = &mut self.downstream {
            d.ingested = ingested;
        }
    }

    /// Pushes what is left downstream with the output watermark (even if nothing is left:
    /// the watermark moves on); returns how many records went downstream since the last
    /// call.
    pub(crate) fn forward(&mut self) -> crate::error::Result<usize> {
        self.push_chunk();
        let d = self
            .downstream
            .as_mut()
            .expect("forward is only called on a connected output");
        match d.failed.take() {
            Some(e) => Err(e),
            None => Ok(std::mem::take(&mut d.pushed)),
        }
    }

    /// Whether results were emitted since the last [`Output::forward`].
    pub(crate) fn has_results(&self) -> bool {
        !self.records.is_empty() || self.downstream.as_ref().is_some_and(|d| d.pushed > 0)
    }

    /// The downstream, for barriers and the end of input.
    pub(crate) fn downstream(&mut self) -> &mut dyn Push<T> {
        self.downstream
            .as_mut()
            .expect("only connected outputs have a downstream")
            .push
            .as_mut()
    }

    #[cold]
    fn push_chunk(&mut self) {
        let Some(d) = &mut self.downstream else {
            return;
        };
        let records = std::mem::take(&mut self.records);
        d.pushed += records.len();
        if d.failed.is_none() {
            let batch = Batch::new(records, self.watermark).ingested_at(d.ingested);
            if let Err(e) = d.push.push(batch) {
                d.failed = Some(e);
            }
        }
    }

    /// Emits a result with event time `ts`.
    #[inline]
    pub fn emit(&mut self, ts: Timestamp, value: T) {
        self.records.push(Record {
            ts,
            watermark: self.watermark,
            value,
        });
        if let Some(d) = &self.downstream {
            if self.records.len() >= d.chunk {
                self.push_chunk();
            }
        }
    }

    /// The output watermark so far (what downstream has been told).
    pub fn watermark(&self) -> Timestamp {
        self.watermark
    }

    /// Moves the output watermark forward; results emitted later carry it.
    #[inline]
    pub fn advance_watermark(&mut self, watermark: Timestamp) {
        if watermark > self.watermark {
            self.watermark = watermark;
        }
    }

    /// Takes the emitted records, leaving the output empty.
    pub fn take(&mut self) -> Vec<Record<T>> {
        std::mem::take(&mut self.records)
    }

    /// Number of records emitted and not yet taken.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True if nothing was emitted since the last take.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// What an operator instance knows about where it runs.
#[derive(Debug, Clone)]
pub struct OperatorContext {
    /// The operator's name in the job graph.
    pub name: String,
    /// This instance's index in `0..parallelism`.
    pub instance: usize,
    /// How many instances run.
    pub parallelism: usize,
    /// The key groups this instance owns.
    pub key_groups: Range<KeyGroup>,
    /// Metric handles for this instance.
    pub metrics: OperatorMetrics,
    /// Where the instance reads processing time (the system clock in a running job).
    pub clock: ProcessingClock,
}

/// An operator that runs in the thread of its input, before any exchange (see
/// [`crate::Stream::chain`]): local pre-aggregation is one. Its state is its own and not in
/// checkpoints, so it hands on everything it holds when a checkpoint barrier passes and at
/// the end of input ([`ChainedOperator::drain`]); what it emits then is in the checkpoint
/// of the operators after it. With idleness on (`RunOptions::idle_timeout`) it is drained
/// after every batch: a receiver that leaves a quiet input out of its watermark cannot see
/// what that input holds.
///
/// It writes records, not values: each output record carries the watermark that preceded
/// it downstream, which the operator chooses (at most its input's watermark), so operators
/// after it judge lateness as they would have for the input.
pub trait ChainedOperator: Send + 'static {
    /// The input event type.
    type In: Data;
    /// The output event type.
    type Out: Data;

    /// Handles `records` in stream order, appending results to `out`.
    fn process(
        &mut self,
        records: Vec<Record<Self::In>>,
        out: &mut Vec<Record<Self::Out>>,
    ) -> Result<(), BoxError>;

    /// The input watermark advanced to `watermark` (after the records of a batch; called
    /// only when it moved forward): appends what it made due. The watermark goes downstream
    /// after them.
    fn on_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut Vec<Record<Self::Out>>,
    ) -> Result<(), BoxError>;

    /// Appends everything held, leaving the operator empty.
    fn drain(&mut self, out: &mut Vec<Record<Self::Out>>) -> Result<(), BoxError>;
}

/// A stateful operator over a keyed stream.
pub trait KeyedOperator: Send + 'static {
    /// The key type.
    type Key: Data;
    /// The input event type.
    type In: Data;
    /// The result type.
    type Out: Data;

    /// Handles records in stream order.
    fn process(
        &mut self,
        records: Vec<Record<Keyed<Self::Key, Self::In>>>,
        out: &mut Output<Self::Out>,
    ) -> Result<(), BoxError>;

    /// The input watermark advanced to `watermark` (after the records of a batch): fire what
    /// it made due. The runtime forwards the watermark to the output right after, so results
    /// emitted here carry the previous one.
    fn on_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<Self::Out>,
    ) -> Result<(), BoxError> {
        out.advance_watermark(watermark);
        Ok(())
    }

    /// Whether the instance has a processing-time timer pending: the runtime then calls
    /// [`KeyedOperator::on_processing_time`] between batches and when the timer is due, even
    /// while no input arrives. Called once per batch, so it must be cheap.
    #[inline]
    fn has_processing_timers(&mut self) -> bool {
        false
    }

    /// Fires the processing-time timers that are due by the instance's clock
    /// ([`OperatorContext::clock`]) and returns how long until the next one is due, if one
    /// is left: the runtime wakes the instance's thread then.
    fn on_processing_time(
        &mut self,
        _out: &mut Output<Self::Out>,
    ) -> Result<Option<std::time::Duration>, BoxError> {
        Ok(None)
    }

    /// Number of state entries this instance holds, for the metrics.
    fn state_entries(&self) -> usize {
        0
    }

    /// The watermark the operator has reached, if it keeps one (event-time operators, whose
    /// restored watermark counts before any input arrives): what queries report.
    fn watermark(&self) -> Option<Timestamp> {
        None
    }

    /// The table this operator answers queries from ([`crate::query`]), if it has one
    /// that [`crate::Stream::queryable`] can name.
    fn queryable(&mut self) -> Option<&mut dyn QueryableTable> {
        None
    }

    /// Every state table of the instance, in the order and with the names its factory
    /// declares ([`OperatorFactory::tables`]): the runtime checks the two agree when it
    /// creates the instance, and samples each table's size for
    /// `weir_state_table_entries` once per batch.
    fn tables(&mut self) -> Vec<&mut dyn StateTable> {
        Vec::new()
    }

    /// A checkpoint barrier arrived: makes all state durable in the backend
    /// ([`crate::StateTable::flush`]) and returns what else the instance needs to resume (for
    /// example its watermark). Required, so no operator can forget to flush.
    fn snapshot(&mut self) -> Result<serde_json::Value, BoxError>;

    /// Called once, right after creation, when the job resumes from a checkpoint. The
    /// backend already holds the restored entries of this instance's key groups;
    /// `snapshots` are what [`KeyedOperator::snapshot`] returned in the instances that held
    /// them (several after a change of parallelism). In-memory structures derived from
    /// state, such as timers, are rebuilt here.
    fn restore(&mut self, snapshots: &[serde_json::Value]) -> Result<(), BoxError>;

    /// Its broadcast state ([`BroadcastOperator`]), encoded, if it has one. Every instance
    /// holds the same, so the runtime asks only instance 0 at a checkpoint and keeps one
    /// copy, which every instance of a restored job gets
    /// ([`KeyedOperator::restore_broadcast_state`]) whatever its parallelism.
    fn broadcast_state(&mut self) -> Result<Option<Vec<u8>>, BoxError> {
        Ok(None)
    }

    /// Loads the broadcast state a checkpoint kept ([`KeyedOperator::broadcast_state`]),
    /// right after creation and before [`KeyedOperator::restore`].
    fn restore_broadcast_state(&mut self, _bytes: &[u8]) -> Result<(), BoxError> {
        Err(event_time::no_broadcast_state::<Self>())
    }
}

/// Creates operator instances, one per worker, over whichever state backend the job runs
/// with. The backend is a type parameter so operators are monomorphized per backend (no
/// dynamic dispatch on state access) and a new backend needs no change to operators.
pub trait OperatorFactory: Send + 'static {
    /// The key type.
    type Key: Data;
    /// The input event type.
    type In: Data;
    /// The result type.
    type Out: Data;
    /// The operator over backend `S`.
    type Operator<S: StateBackend>: KeyedOperator<Key = Self::Key, In = Self::In, Out = Self::Out>;

    /// Creates the instance described by `ctx`, with its state in `state`.
    fn create<S: StateBackend>(
        &self,
        ctx: &OperatorContext,
        state: S,
    ) -> Result<Self::Operator<S>, BoxError>;

    /// The names of the state tables its operators open ([`KeyedOperator::tables`]), known
    /// before any instance exists: `weir describe` lists them and the metrics label each
    /// table's size with them. An instance whose tables differ from these fails the job
    /// as it starts, so the two cannot drift apart.
    fn tables(&self) -> Vec<String> {
        Vec::new()
    }
}

//! The event-time harness: **where an operator's watermark advances, where late events are
//! judged and counted, and what an event-time operator keeps in a checkpoint.**
//!
//! An operator on event time (windows, top-N, CEP, the joins, process functions) implements
//! [`EventTimeOperator`]: its logic for one event ([`EventTimeOperator::on_event`]), for a
//! watermark that moved ([`EventTimeOperator::on_watermark`], where its timers fire), and
//! the list of its named state tables. [`EventTime`] wraps it into a [`KeyedOperator`] and
//! owns the protocol every such operator used to repeat:
//!
//! - **the watermark**: each record carries the watermark that preceded it; the harness
//!   advances the operator to it *before* the record, and only when it moved, so firing
//!   positions are the same for every batch size and parallelism. Results emitted after a
//!   watermark fired its timers carry that watermark (Flink forwards the watermark right
//!   after the timers it fired).
//! - **lateness**: one explicit [`Lateness`] policy per operator type. Late events are
//!   counted in `weir_late_events_total` (once per batch, not per event). The harness drops
//!   those its policy finds late; an operator that decides itself ([`Lateness::Decided`])
//!   may route its late events somewhere (the windows' late-data output) before it reports
//!   them as [`Handled::Late`].
//! - **checkpoints**: at a barrier the harness flushes every table the operator lists and
//!   saves the watermark; on a restore it gives the operator the watermark to resume from
//!   (the smallest of the instances it took key groups from), and the operator rebuilds what
//!   it derives from its tables (timers).
//!
//! # Invariants
//! - `on_watermark` is called with strictly increasing watermarks, and `on_event` with the
//!   watermark of the last `on_watermark` (or the restored one).
//! - An event the policy judges late never reaches `on_event`.

use serde::{Deserialize, Serialize};

use super::{KeyedOperator, OperatorContext, Output};
use crate::error::BoxError;
use crate::query::QueryableTable;
use crate::record::{Data, Keyed, Record};
use crate::state::StateTable;
use crate::time::Timestamp;

/// When an event is late, given the watermark that preceded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lateness {
    /// No event is late: the operator sees every event and may compare its time with the
    /// watermark itself (process functions).
    Never,
    /// Late when `ts <= watermark`: the operator has already acted on everything up to the
    /// watermark (CEP, the temporal join, continuous top-N).
    AtOrBeforeWatermark,
    /// Late when `ts < watermark`: an event exactly at the watermark still counts (the
    /// interval join, whose matches at the watermark are not expired yet).
    BeforeWatermark,
    /// The operator decides in [`EventTimeOperator::on_event`] and reports late events as
    /// [`Handled::Late`] (windows: late when every window of the event is past its
    /// allowed lateness, which for sessions depends on the sessions it would merge with).
    Decided,
}

impl Lateness {
    /// Whether the harness drops an event at `ts` before the operator sees it.
    #[inline]
    fn drops(self, ts: Timestamp, watermark: Timestamp) -> bool {
        match self {
            Lateness::Never | Lateness::Decided => false,
            Lateness::AtOrBeforeWatermark => ts <= watermark,
            Lateness::BeforeWatermark => ts < watermark,
        }
    }
}

/// What an operator did with an event ([`Lateness::Decided`] operators may find it late).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Taken into the operator's state (or emitted).
    Taken,
    /// Late: the harness counts it.
    Late,
}

/// The keyed event type of an operator.
pub type KeyedEvent<O> = Keyed<<O as EventTimeOperator>::Key, <O as EventTimeOperator>::In>;

/// The logic of a keyed operator on event time; [`EventTime`] runs it.
pub trait EventTimeOperator: Send + 'static {
    /// The key type.
    type Key: Data;
    /// The input event type.
    type In: Data;
    /// The result type.
    type Out: Data;

    /// Which events are late.
    const LATENESS: Lateness;

    /// Handles one event with event time `ts` that the policy did not find late;
    /// `watermark` is the watermark that preceded it.
    fn on_event(
        &mut self,
        ts: Timestamp,
        event: KeyedEvent<Self>,
        watermark: Timestamp,
        out: &mut Output<Self::Out>,
    ) -> Result<Handled, BoxError>;

    /// The watermark moved forward to `watermark`: fire what it made due. Results emitted
    /// here carry the previous watermark.
    fn on_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<Self::Out>,
    ) -> Result<(), BoxError>;

    /// Every state table of the operator, by name: flushed at each checkpoint. A table left
    /// out here would lose its writes since the last flush on a restore. The names are
    /// those its factory declares ([`super::OperatorFactory::tables`]).
    fn tables(&mut self) -> Vec<&mut dyn StateTable>;

    /// Number of state entries, for the metrics (entries of the tables, or what the
    /// operator counts inside them, such as window panes).
    fn state_entries(&self) -> usize;

    /// The table queries are answered from, if the operator has one (see
    /// [`KeyedOperator::queryable`]).
    fn queryable(&mut self) -> Option<&mut dyn QueryableTable> {
        None
    }

    /// The job resumes from a checkpoint: the tables hold the restored entries and the
    /// operator is at `watermark`. Rebuilds what is derived from the tables (timers, counts).
    fn restore(&mut self, watermark: Timestamp) -> Result<(), BoxError>;
}

/// What an event-time operator keeps in a checkpoint besides its tables: the watermark it
/// had reached, so a restored operator neither fires again what it fired nor treats as on
/// time what was late.
#[derive(Debug, Serialize, Deserialize)]
struct WatermarkSnapshot {
    watermark: Timestamp,
}

/// Runs an [`EventTimeOperator`] as a [`KeyedOperator`] (see the module docs).
pub struct EventTime<O> {
    operator: O,
    watermark: Timestamp,
    late_events: prometheus::IntCounter,
}

impl<O> std::fmt::Debug for EventTime<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventTime")
            .field("operator", &std::any::type_name::<O>())
            .field("watermark", &self.watermark)
            .finish_non_exhaustive()
    }
}

impl<O: EventTimeOperator> EventTime<O> {
    /// Runs `operator` as the instance described by `ctx` (for its late-event counter).
    pub fn new(operator: O, ctx: &OperatorContext) -> Self {
        EventTime {
            operator,
            watermark: Timestamp::MIN,
            late_events: ctx.metrics.late_events.clone(),
        }
    }

    #[inline]
    fn advance(&mut self, watermark: Timestamp, out: &mut Output<O::Out>) -> Result<(), BoxError> {
        self.watermark = watermark;
        self.operator.on_watermark(watermark, out)?;
        out.advance_watermark(watermark);
        Ok(())
    }
}

impl<O: EventTimeOperator> KeyedOperator for EventTime<O> {
    type Key = O::Key;
    type In = O::In;
    type Out = O::Out;

    #[inline]
    fn process(
        &mut self,
        records: Vec<Record<KeyedEvent<O>>>,
        out: &mut Output<O::Out>,
    ) -> Result<(), BoxError> {
        let mut late = 0;
        for r in records {
            if r.watermark > self.watermark {
                self.advance(r.watermark, out)?;
            }
            let handled = if O::LATENESS.drops(r.ts, self.watermark) {
                Handled::Late
            } else {
                self.operator.on_event(r.ts, r.value, self.watermark, out)?
            };
            late += (handled == Handled::Late) as u64;
        }
        if late > 0 {
            self.late_events.inc_by(late);
        }
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<O::Out>,
    ) -> Result<(), BoxError> {
        if watermark > self.watermark {
            self.advance(watermark, out)?;
        }
        Ok(())
    }

    fn state_entries(&self) -> usize {
        self.operator.state_entries()
    }

    fn queryable(&mut self) -> Option<&mut dyn QueryableTable> {
        self.operator.queryable()
    }

    fn tables(&mut self) -> Vec<&mut dyn StateTable> {
        self.operator.tables()
    }

    fn watermark(&self) -> Option<Timestamp> {
        Some(self.watermark)
    }

    fn snapshot(&mut self) -> Result<serde_json::Value, BoxError> {
        for table in self.operator.tables() {
            table.flush()?;
        }
        Ok(serde_json::to_value(WatermarkSnapshot {
            watermark: self.watermark,
        })?)
    }

    fn restore(&mut self, snapshots: &[serde_json::Value]) -> Result<(), BoxError> {
        // The instances whose key groups this one took over saw the same watermarks at the
        // barrier; should they differ, the smallest is the safe choice (nothing fires that
        // had not fired before).
        let mut watermark = None;
        for s in snapshots {
            let s: WatermarkSnapshot = serde_json::from_value(s.clone())?;
            watermark = Some(watermark.map_or(s.watermark, |w: Timestamp| w.min(s.watermark)));
        }
        self.watermark = watermark.unwrap_or(Timestamp::MIN);
        self.operator.restore(self.watermark)
    }
}

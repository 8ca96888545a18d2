//! The event-time harness: **where an operator's watermark advances, where late events are
//! judged and counted, and what an event-time operator keeps in a checkpoint.**
//!
//! An operator on event time (windows, top-N, CEP, the joins, process functions) implements
//! [`EventTimeOperator`]: its logic for one event ([`EventTimeOperator::on_event`]), for one
//! of its timers ([`EventTimeOperator::on_timer`]), optionally for a watermark that moved
//! ([`EventTimeOperator::on_watermark`]), and the list of its named state tables.
//! [`EventTime`] wraps it into a [`KeyedOperator`] and owns the protocol every such
//! operator used to repeat:
//!
//! - **the watermark**: each record carries the watermark that preceded it; the harness
//!   advances the operator to it *before* the record, and only when it moved, so firing
//!   positions are the same for every batch size and parallelism. Results emitted after a
//!   watermark fired its timers carry that watermark (Flink forwards the watermark right
//!   after the timers it fired).
//! - **timers**: the operator registers `(time, key)` in its queues (the state backend's
//!   [`TimerQueue`]s, in memory or in RocksDB), and the harness fires them: when the
//!   watermark moves to `w` it pops every timer with `time <= w`, queue by queue in the
//!   order the operator lists them ([`EventTimeOperator::timers`]), each queue in time
//!   order, and calls [`EventTimeOperator::on_timer`] for each (Flink's
//!   `onEventTime`, timely's frontier notificator); then [`EventTimeOperator::on_watermark`].
//!   An event that registered a timer already due says so ([`Handled::TakenTimersDue`]) and
//!   the harness fires it before the next event.
//! - **lateness**: one explicit [`Lateness`] policy per operator type. Late events are
//!   counted in `weir_late_events_total` (once per batch, not per event). The harness drops
//!   those its policy finds late; an operator that decides itself ([`Lateness::Decided`])
//!   may route its late events somewhere (the windows' late-data output) before it reports
//!   them as [`Handled::Late`].
//! - **processing-time timers** (Flink's `onProcessingTime`): an operator may keep queues
//!   of timers in wall-clock time ([`EventTimeOperator::processing_timers`]). The harness
//!   reads the instance's clock ([`OperatorContext::clock`]), fires every timer the clock
//!   has reached, queue by queue in time order ([`EventTimeOperator::on_processing_timer`]),
//!   and tells the runtime how long until the next, which wakes it then even while no input
//!   arrives. An operator without such queues costs one test of an empty slice per batch.
//!   Once the input has ended (the end watermark), processing-time timers no longer fire:
//!   a job over a bounded input does not wait for the wall clock (Flink does the same).
//! - **checkpoints**: at a barrier the harness flushes every table the operator lists and
//!   saves the watermark; on a restore it gives the operator the watermark to resume from
//!   (the smallest of the instances it took key groups from), and the operator rebuilds what
//!   it derives from its tables (timers).
//!
//! # Invariants
//! - `on_watermark` is called with strictly increasing watermarks, and `on_event` with the
//!   watermark of the last `on_watermark` (or the restored one).
//! - `on_timer` gets a timer only once the watermark has reached its time, and the
//!   watermark it gets is the one that made it due.
//! - An event the policy judges late never reaches `on_event`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{KeyedOperator, OperatorContext, Output};
use crate::clock::ProcessingClock;
use crate::error::BoxError;
use crate::query::QueryableTable;
use crate::record::{Data, Keyed, Record};
use crate::state::{StateTable, TimerQueue};
use crate::time::{Timestamp, END_WATERMARK};

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

/// When the timers of a queue are due, given the watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// A timer at `t` is due once the watermark reaches `t`.
    AtTime,
    /// A timer at a window's start `t` is due once the watermark reaches the window's last
    /// millisecond plus `lateness`: `t + size - 1 + lateness`, saturating (windows near
    /// `i64::MAX` end there). A window's end as the time gives `size` 0.
    WindowEnd {
        /// The window's length.
        size: i64,
        /// How long after its end the timer waits.
        lateness: i64,
    },
}

impl Due {
    /// Whether a timer at `time` is due at `watermark`.
    #[inline]
    pub fn at(self, time: Timestamp, watermark: Timestamp) -> bool {
        match self {
            Due::AtTime => time <= watermark,
            Due::WindowEnd { size, lateness } => {
                (time.saturating_add(size) - 1).saturating_add(lateness) <= watermark
            }
        }
    }
}

/// What an operator did with an event ([`Lateness::Decided`] operators may find it late).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Taken into the operator's state (or emitted).
    Taken,
    /// Taken, and it registered a timer that is already due (at or before the watermark):
    /// the harness fires the due timers before the next event.
    TakenTimersDue,
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

    /// The operator's timer queues: the state backend's ([`crate::StateBackend::timer_queue`]),
    /// or [`crate::state::NoTimers`] for an operator without timers.
    type Timers: TimerQueue<Self::Key>;

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

    /// The operator's timer queues, in the order their due timers fire (the order of the
    /// state backend's queues is the operator's: a window fires before it is cleaned up).
    fn timers(&mut self) -> &mut [Self::Timers];

    /// When the timers of queue `queue` are due (by default at their time).
    fn timer_due(&self, _queue: usize) -> Due {
        Due::AtTime
    }

    /// `key`'s timer at `time` in queue `queue` (an index into [`EventTimeOperator::timers`])
    /// is due ([`EventTimeOperator::timer_due`]) at `watermark`. Timers may be stale (the key's
    /// state changed after it was registered), so the operator checks its state. Results
    /// emitted here carry the previous watermark. Required of every operator with timers:
    /// the default, for operators without ([`crate::state::NoTimers`]), fails the job.
    fn on_timer(
        &mut self,
        queue: usize,
        time: Timestamp,
        _key: Self::Key,
        _watermark: Timestamp,
        _out: &mut Output<Self::Out>,
    ) -> Result<(), BoxError> {
        Err(format!(
            "a timer at {time} of queue {queue} came due, but {} has no on_timer",
            std::any::type_name::<Self>()
        )
        .into())
    }

    /// The operator's processing-time timer queues, in the order their due timers fire
    /// (none by default): a timer is due once the instance's clock reads its time.
    fn processing_timers(&mut self) -> &mut [Self::Timers] {
        &mut []
    }

    /// `key`'s processing-time timer at `time` in queue `queue` (an index into
    /// [`EventTimeOperator::processing_timers`]) is due: the clock reached `time`. As with
    /// [`EventTimeOperator::on_timer`] the timer may be stale, and `watermark` is the
    /// operator's event-time watermark. Required of every operator with processing-time
    /// timers; the default fails the job.
    fn on_processing_timer(
        &mut self,
        queue: usize,
        time: Timestamp,
        _key: Self::Key,
        _watermark: Timestamp,
        _out: &mut Output<Self::Out>,
    ) -> Result<(), BoxError> {
        Err(format!(
            "a processing-time timer at {time} of queue {queue} came due, but {} has no \
             on_processing_timer",
            std::any::type_name::<Self>()
        )
        .into())
    }

    /// The watermark moved forward to `watermark`, and the timers it made due have fired:
    /// for operators that act on the watermark itself rather than per key (top-N ranks the
    /// windows it closed).
    fn on_watermark(
        &mut self,
        _watermark: Timestamp,
        _out: &mut Output<Self::Out>,
    ) -> Result<(), BoxError> {
        Ok(())
    }

    /// The keys about to be handled one by one: a batch's events (before
    /// [`EventTimeOperator::on_event`]) or the timers due at one time (before
    /// [`EventTimeOperator::on_timer`]). An operator on large state reads their entries in
    /// one batch ([`crate::MapState::prefetch`]). Nothing by default.
    fn prefetch<'a>(&mut self, keys: impl Iterator<Item = &'a Self::Key>) -> Result<(), BoxError>
    where
        Self::Key: 'a,
    {
        drop(keys);
        Ok(())
    }

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

    /// Its broadcast state, encoded, if it has one (see [`KeyedOperator::broadcast_state`]).
    fn broadcast_state(&mut self) -> Result<Option<Vec<u8>>, BoxError> {
        Ok(None)
    }

    /// Loads the broadcast state (see [`KeyedOperator::restore_broadcast_state`]).
    fn restore_broadcast_state(&mut self, _bytes: &[u8]) -> Result<(), BoxError> {
        Err(no_broadcast_state::<Self>())
    }
}

/// The error of an operator without broadcast state asked to restore one.
pub(super) fn no_broadcast_state<O: ?Sized>() -> BoxError {
    format!(
        "a checkpoint holds broadcast state for {}, which has none",
        std::any::type_name::<O>()
    )
    .into()
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
    pub(super) operator: O,
    pub(super) watermark: Timestamp,
    late_events: prometheus::IntCounter,
    /// Processing time, for the processing-time timers.
    clock: ProcessingClock,
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
            clock: ctx.clock.clone(),
        }
    }

    /// The time of the earliest processing-time timer, unless the input has ended.
    #[inline]
    fn next_processing_timer(&mut self) -> Option<Timestamp> {
        if self.watermark == END_WATERMARK {
            return None;
        }
        self.operator
            .processing_timers()
            .iter()
            .filter_map(TimerQueue::next_time)
            .min()
    }

    #[inline]
    pub(super) fn advance(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<O::Out>,
    ) -> Result<(), BoxError> {
        self.watermark = watermark;
        self.fire_timers(out)?;
        self.operator.on_watermark(watermark, out)?;
        out.advance_watermark(watermark);
        Ok(())
    }

    /// Fires every timer at or before the watermark: queue by queue, each in time order
    /// (timers that firing registers at or before the watermark fire too).
    fn fire_timers(&mut self, out: &mut Output<O::Out>) -> Result<(), BoxError> {
        let watermark = self.watermark;
        for queue in 0..self.operator.timers().len() {
            let due = self.operator.timer_due(queue);
            while let Some((time, keys)) =
                self.operator.timers()[queue].pop_due(|time| due.at(time, watermark))?
            {
                self.operator.prefetch(keys.iter())?;
                for key in keys {
                    self.operator.on_timer(queue, time, key, watermark, out)?;
                }
            }
        }
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
        self.operator
            .prefetch(records.iter().map(|r| &r.value.key))?;
        for r in records {
            if r.watermark > self.watermark {
                self.advance(r.watermark, out)?;
            }
            let handled = if O::LATENESS.drops(r.ts, self.watermark) {
                Handled::Late
            } else {
                self.operator.on_event(r.ts, r.value, self.watermark, out)?
            };
            match handled {
                Handled::Taken => {}
                Handled::Late => late += 1,
                Handled::TakenTimersDue => self.fire_timers(out)?,
            }
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

    #[inline]
    fn has_processing_timers(&mut self) -> bool {
        self.next_processing_timer().is_some()
    }

    /// Fires every processing-time timer at or before the clock's time: queue by queue, each
    /// in time order (timers that firing registers at or before that time fire too).
    fn on_processing_time(
        &mut self,
        out: &mut Output<O::Out>,
    ) -> Result<Option<Duration>, BoxError> {
        let watermark = self.watermark;
        if watermark == END_WATERMARK {
            return Ok(None);
        }
        let now = self.clock.now();
        for queue in 0..self.operator.processing_timers().len() {
            while let Some((time, keys)) =
                self.operator.processing_timers()[queue].pop_due(|time| time <= now)?
            {
                for key in keys {
                    self.operator
                        .on_processing_timer(queue, time, key, watermark, out)?;
                }
            }
        }
        // The clock is read again: firing took time, and a timer it registered for the
        // next millisecond must not wait a whole period.
        Ok(self.next_processing_timer().map(|next| {
            let wait = next.saturating_sub(self.clock.now()).max(0);
            Duration::from_millis(u64::try_from(wait).unwrap_or(0))
        }))
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

    fn broadcast_state(&mut self) -> Result<Option<Vec<u8>>, BoxError> {
        self.operator.broadcast_state()
    }

    fn restore_broadcast_state(&mut self, bytes: &[u8]) -> Result<(), BoxError> {
        self.operator.restore_broadcast_state(bytes)
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

#[cfg(test)]
#[path = "event_time_tests.rs"]
mod tests;

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

use serde::{Deserialize, Serialize};

use super::{KeyedOperator, OperatorContext, Output};
use crate::error::BoxError;
use crate::query::QueryableTable;
use crate::record::{Data, Keyed, Record};
use crate::state::{StateTable, TimerQueue};
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
mod tests {
    use super::*;
    use crate::metrics::JobMetrics;
    use crate::state::MemoryTimers;

    /// Registers, for an event `(key, [t1, t2, ..])`, a timer at each time in queue 0 and
    /// one at the first time in queue 1, and emits `(queue, time, key, watermark)` for
    /// every timer that fires; a timer of queue 0 at an odd time registers another one
    /// at the same watermark (which must fire in the same advance).
    #[derive(Default)]
    struct Recorder {
        timers: [MemoryTimers<String>; 2],
    }

    impl EventTimeOperator for Recorder {
        type Key = String;
        type In = Vec<Timestamp>;
        type Out = (usize, Timestamp, String, Timestamp);
        type Timers = MemoryTimers<String>;
        const LATENESS: Lateness = Lateness::Never;

        fn on_event(
            &mut self,
            _ts: Timestamp,
            event: KeyedEvent<Self>,
            watermark: Timestamp,
            _out: &mut Output<Self::Out>,
        ) -> Result<Handled, BoxError> {
            let mut due = false;
            for &time in &event.value {
                self.timers[0].register(time, event.key.clone())?;
                due |= time <= watermark;
            }
            if let Some(&first) = event.value.first() {
                self.timers[1].register(first, event.key.clone())?;
            }
            Ok(if due {
                Handled::TakenTimersDue
            } else {
                Handled::Taken
            })
        }

        fn timers(&mut self) -> &mut [MemoryTimers<String>] {
            &mut self.timers
        }

        fn timer_due(&self, queue: usize) -> Due {
            match queue {
                0 => Due::AtTime,
                // A window of 10 starting at the time, 5 of lateness after it.
                _ => Due::WindowEnd {
                    size: 10,
                    lateness: 5,
                },
            }
        }

        fn on_timer(
            &mut self,
            queue: usize,
            time: Timestamp,
            key: String,
            watermark: Timestamp,
            out: &mut Output<Self::Out>,
        ) -> Result<(), BoxError> {
            if queue == 0 && time % 2 != 0 {
                self.timers[0].register(time + 1, format!("{key}+"))?;
            }
            out.emit(time, (queue, time, key, watermark));
            Ok(())
        }

        fn tables(&mut self) -> Vec<&mut dyn StateTable> {
            Vec::new()
        }

        fn state_entries(&self) -> usize {
            0
        }

        fn restore(&mut self, _watermark: Timestamp) -> Result<(), BoxError> {
            Ok(())
        }
    }

    fn harness() -> EventTime<Recorder> {
        let ctx = OperatorContext {
            name: "recorder".into(),
            instance: 0,
            parallelism: 1,
            key_groups: 0..128,
            metrics: JobMetrics::new("test").operator("recorder", 0),
        };
        EventTime::new(Recorder::default(), &ctx)
    }

    fn event(watermark: Timestamp, key: &str, times: &[Timestamp]) -> Record<KeyedEvent<Recorder>> {
        Record {
            ts: 0,
            watermark,
            value: Keyed {
                key: key.to_string(),
                value: times.to_vec(),
            },
        }
    }

    fn fired(out: &mut Output<(usize, Timestamp, String, Timestamp)>) -> Vec<String> {
        out.take()
            .into_iter()
            .map(|r| {
                let (queue, time, key, watermark) = r.value;
                format!("q{queue} {time} {key} @{watermark}")
            })
            .collect()
    }

    #[test]
    fn timers_fire_queue_by_queue_in_time_order_once_the_watermark_makes_them_due() {
        let mut op = harness();
        let mut out = Output::default();
        op.process(
            vec![event(0, "a", &[30, 10]), event(0, "b", &[20])],
            &mut out,
        )
        .unwrap();
        assert!(fired(&mut out).is_empty(), "nothing is due at watermark 0");
        // Queue 1's timers (at 30, 20) are due at 30 + 14 and 20 + 14.
        op.on_watermark(34, &mut out).unwrap();
        assert_eq!(
            fired(&mut out),
            ["q0 10 a @34", "q0 20 b @34", "q0 30 a @34", "q1 20 b @34"]
        );
        op.on_watermark(43, &mut out).unwrap();
        assert!(fired(&mut out).is_empty(), "a's window timer waits for 44");
        op.on_watermark(44, &mut out).unwrap();
        assert_eq!(fired(&mut out), ["q1 30 a @44"]);
    }

    #[test]
    fn a_timer_already_due_fires_before_the_next_event_and_timers_registered_by_timers_fire_too() {
        let mut op = harness();
        let mut out = Output::default();
        op.process(
            vec![event(100, "a", &[7, 200]), event(100, "b", &[300])],
            &mut out,
        )
        .unwrap();
        // a's 7 fired at once (before b's event) and registered "a+" at 8, due too; then
        // queue 1's timer at 7 (due at 21).
        assert_eq!(
            fired(&mut out),
            ["q0 7 a @100", "q0 8 a+ @100", "q1 7 a @100"]
        );
    }

    #[test]
    fn a_window_end_saturates_near_the_largest_time() {
        let due = Due::WindowEnd {
            size: 10,
            lateness: 5,
        };
        assert!(!due.at(i64::MAX - 3, i64::MAX - 1));
        assert!(due.at(i64::MAX - 3, i64::MAX));
        assert!(due.at(0, 14) && !due.at(0, 13));
        assert!(Due::AtTime.at(5, 5) && !Due::AtTime.at(6, 5));
    }
}

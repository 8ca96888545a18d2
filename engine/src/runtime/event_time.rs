//! Where event time enters a job: [`TimestampPush`] assigns timestamps and generates
//! watermarks (bounded out-of-orderness, idleness, the future guard).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::push::{Flush, Push};
use super::stateless::NodeContext;
use crate::checkpoint::coordinator::Participant;
use crate::checkpoint::state::{EventClock, WatermarkGenerator};
use crate::checkpoint::{CheckpointId, ParticipantState};
use crate::error::Result;
use crate::record::{Batch, Data, Record, Split};
use crate::time::{Timestamp, Watermarks, MIN_WATERMARK};

pub(crate) struct TimestampPush<F, T> {
    ts: F,
    watermarks: Watermarks,
    clock: EventClock,
    /// The splits of the source as last announced, and when each last delivered.
    active: Option<Arc<[u32]>>,
    last_seen: BTreeMap<u32, Instant>,
    idle_timeout: Option<Duration>,
    participant: Option<Participant>,
    replay_from: Option<Timestamp>,
    down: Box<dyn Push<T>>,
}

impl WatermarkGenerator {
    const START: WatermarkGenerator = WatermarkGenerator {
        max_ts: MIN_WATERMARK,
        current: MIN_WATERMARK,
    };

    /// Advances past an event at `ts`.
    #[inline]
    fn observe(&mut self, ts: Timestamp, watermarks: &Watermarks) {
        if ts > self.max_ts {
            self.max_ts = ts;
            self.current = self.current.max(watermarks.watermark_for(ts));
        }
    }
}

impl<F, T> TimestampPush<F, T> {
    pub(crate) fn new(
        ts: F,
        watermarks: Watermarks,
        down: Box<dyn Push<T>>,
        context: NodeContext,
    ) -> Result<Self> {
        let NodeContext {
            name,
            participant,
            replay_from,
            idle_timeout,
        } = context;
        // Every instance resumes from the earliest clock of all (see
        // `EventClock::earliest`): a source whose readers' shares are dealt again at a
        // restore may give this instance lines another instance's clock came from.
        let mut clocks = Vec::new();
        if let Some(p) = &participant {
            for state in p.restored_by_every_instance() {
                match state {
                    ParticipantState::EventTime(clock) => clocks.push(clock),
                    other => return Err(p.unexpected_state(&name, "watermark state", other)),
                }
            }
        }
        let clock = EventClock::earliest(clocks).unwrap_or(EventClock {
            stream: WatermarkGenerator::START,
            splits: BTreeMap::new(),
        });
        Ok(TimestampPush {
            ts,
            watermarks,
            clock,
            active: None,
            last_seen: BTreeMap::new(),
            idle_timeout,
            participant,
            replay_from,
            down,
        })
    }

    /// Takes note that `split` delivered a batch; returns the smallest watermark of the
    /// other splits that hold event time back (`Timestamp::MAX` if none do).
    fn others_watermark(&mut self, split: &Split) -> Timestamp {
        let now = Instant::now();
        if !self
            .active
            .as_ref()
            .is_some_and(|a| Arc::ptr_eq(a, &split.active))
        {
            // The source's splits changed: new ones start at the beginning of time (they
            // hold the watermark back until they deliver or go idle), gone ones stop counting.
            let clock = &mut self.clock;
            clock.splits.retain(|id, _| split.active.contains(id));
            for &id in split.active.iter() {
                clock.splits.entry(id).or_insert(WatermarkGenerator::START);
                self.last_seen.entry(id).or_insert(now);
            }
            self.last_seen.retain(|id, _| split.active.contains(id));
            self.active = Some(split.active.clone());
        }
        self.last_seen.insert(split.id, now);
        let idle = |id: &u32| match (self.idle_timeout, self.last_seen.get(id)) {
            (Some(timeout), Some(seen)) => now.duration_since(*seen) >= timeout,
            _ => false,
        };
        self.clock
            .splits
            .iter()
            .filter(|(id, _)| **id != split.id && !idle(id))
            .map(|(_, g)| g.current)
            .min()
            .unwrap_or(Timestamp::MAX)
    }
}

/// Sets each record's event time with `ts` and hands it to `stamp`; with a replay point,
/// drops the records before it first (they are not part of this run's history).
#[inline]
pub(super) fn assign_times<T>(
    records: &mut Vec<Record<T>>,
    ts: &impl Fn(&T) -> i64,
    replay_from: Option<Timestamp>,
    mut stamp: impl FnMut(&mut Record<T>),
) {
    match replay_from {
        None => {
            for r in records.iter_mut() {
                r.ts = ts(&r.value);
                stamp(r);
            }
        }
        Some(from) => records.retain_mut(|r| {
            r.ts = ts(&r.value);
            let kept = r.ts >= from;
            if kept {
                stamp(r);
            }
            kept
        }),
    }
}

impl<F: Fn(&T) -> i64 + Send, T: Data> Push<T> for TimestampPush<F, T> {
    fn push(&mut self, mut batch: Batch<T>) -> Result<()> {
        let split = batch
            .split
            .as_ref()
            .map(|s| (s.id, self.others_watermark(s)));
        let (ts, watermarks, from) = (&self.ts, &self.watermarks, self.replay_from);
        // One loop per case, so that a stream without splits pays nothing per record for them.
        match split {
            None => {
                let stream = &mut self.clock.stream;
                assign_times(&mut batch.records, ts, from, |r| {
                    r.watermark = stream.current;
                    stream.observe(r.ts, watermarks);
                });
            }
            // The split's generator sees the events; the stream's watermark follows the
            // minimum over the splits.
            Some((id, others)) => {
                let clock = &mut self.clock;
                let stream = &mut clock.stream;
                let split = clock.splits.entry(id).or_insert(WatermarkGenerator::START);
                assign_times(&mut batch.records, ts, from, |r| {
                    r.watermark = stream.current;
                    split.observe(r.ts, watermarks);
                    stream.max_ts = stream.max_ts.max(r.ts);
                    stream.current = stream.current.max(split.current.min(others));
                });
            }
        }
        batch.watermark = batch.watermark.max(self.clock.stream.current);
        self.down.push(batch)
    }
    fn barrier(&mut self, id: CheckpointId) -> Result<()> {
        if let Some(p) = &self.participant {
            p.ack(id, Ok(ParticipantState::EventTime(self.clock.clone())));
        }
        self.down.barrier(id)
    }
    fn finish(&mut self) -> Result<()> {
        self.down.finish()
    }
    fn flush(&mut self, what: Flush) -> Result<()> {
        self.down.flush(what)
    }
}

//! Two-phase window aggregation (Flink's local-global aggregation): each producer instance
//! pre-aggregates its own events per key and pane in its thread, before the exchange
//! ([`LocalWindows`], a [`ChainedOperator`]), and the keyed window operator merges the
//! partial aggregates ([`MergePartials`]). A window over one hot key (Nexmark q7 has a
//! single key) then costs each worker its share of the events, and one partial per pane,
//! key and producer crosses the exchange instead of every event.
//!
//! Panes are those of [`super::aligned`]: a tumbling window is one pane, a sliding window
//! is made of panes of `gcd(size, slide)`. A pane lies whole in every window that contains
//! its start, so a partial, timed at its pane's start, counts in exactly the windows its
//! events belong to.
//!
//! # Invariants
//! - Results, lateness and late counts are those of [`super::WindowedStream::aggregate`]:
//!   a partial goes downstream with the watermark that preceded its events (the local one
//!   before the advance that completed its window), so it is late only where its events
//!   would have been (a pane ends no later than the first window holding it); an event
//!   whose pane the local watermark has completed goes on alone, with its own watermark,
//!   and the window operator judges it (drops and counts it, adds it to the windows still
//!   open, or updates them within the allowed lateness).
//! - Aligned windows only: a session has no panes.
//! - Memory is bounded: at most [`MAX_HELD_PARTIALS`] partials are held per instance; past
//!   that, every open pane's partials go on at once, as Flink's mini-batch flushes at its
//!   size, and until the newest of those panes completes, events go on one by one (holding
//!   them saves little with that many keys). Early partials are still right: partials of
//!   one key and pane merge, and a partial of one event, timed at the event, is that event
//!   to the window. With millions of keys per window and memory state, two phases are
//!   still slower than one (BENCHMARKS.md).
//! - An event the aggregate fails on here fails the job with the error the window operator
//!   gives (key, pane, event time and input position); a failure while merging partials
//!   names the key and window only, no single event being to blame.
//! - Nothing here is checkpointed: every partial goes on before a barrier passes.
//! - With idleness on (`--idle-timeout`) partials go on after every batch: a receiver that
//!   leaves a quiet input out of its watermark would otherwise fire a window without what
//!   that input holds (see [`ChainedOperator`]).

use std::collections::BTreeMap;
use std::marker::PhantomData;

use rustc_hash::FxHashMap;
use weir_engine::{BoxError, ChainedOperator, Data, Record, StateKey, Timestamp};

use super::{window_start, OriginOf, Window, WindowAggregateError};
use crate::aggregate::{AggregateError, Aggregator};

/// Partials held by one instance of the local phase before they all go on early.
pub(crate) const MAX_HELD_PARTIALS: usize = 65_536;

/// What a key's events of one pane came to on one producer instance.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Partial<K, Acc> {
    /// The key.
    pub(crate) key: K,
    /// The aggregate of those events.
    pub(crate) acc: Acc,
}

/// The local phase: partial aggregates per pane and key, handed on when the local
/// watermark completes the pane, before a barrier and at the end.
pub(crate) struct LocalWindows<K, T, A: Aggregator<T>, KF> {
    key: KF,
    /// Words for where an event was read, for the error of one the aggregate fails on.
    origin: Option<OriginOf<T>>,
    /// Panes: the windows themselves if tumbling, `gcd(size, slide)` if sliding.
    pane: i64,
    offset: i64,
    aggregator: A,
    /// Open panes by start.
    open: BTreeMap<Timestamp, FxHashMap<K, A::Acc>>,
    /// Partials in `open`.
    held: usize,
    /// An emptied pane table, kept for the next pane (no allocation and regrowth per pane).
    spare: Option<FxHashMap<K, A::Acc>>,
    /// After the held partials reached the limit: events go on one by one until the
    /// watermark reaches this time (the last millisecond of the newest pane then open).
    one_by_one_until: Option<Timestamp>,
    /// The input watermark so far; no open pane has `end - 1 <= watermark`.
    watermark: Timestamp,
    _events: PhantomData<fn(T)>,
}

impl<K, T, A: Aggregator<T>, KF> LocalWindows<K, T, A, KF> {
    pub(crate) fn new(
        key: KF,
        pane: i64,
        offset: i64,
        aggregator: A,
        origin: Option<OriginOf<T>>,
    ) -> Self {
        LocalWindows {
            key,
            origin,
            pane,
            offset,
            aggregator,
            open: BTreeMap::new(),
            held: 0,
            spare: None,
            one_by_one_until: None,
            watermark: Timestamp::MIN,
            _events: PhantomData,
        }
    }
}

impl<K, T, A, KF> LocalWindows<K, T, A, KF>
where
    K: StateKey + Data,
    A: Aggregator<T>,
{
    /// The watermark advances to `watermark`: appends the partials of the panes it
    /// completes (`end - 1 <= watermark`), with the watermark before it, which did not.
    fn advance(&mut self, watermark: Timestamp, out: &mut Vec<Record<Partial<K, A::Acc>>>) {
        let completed = if watermark >= Timestamp::MAX - 1 {
            // Every pane is complete, including those whose end saturates at the maximum.
            std::mem::take(&mut self.open)
        } else {
            // Complete: `start + pane - 1 <= watermark`, so the first still open starts at
            // `watermark - pane + 2` (saturated near the minimum, which hands panes there
            // on early: harmless, their partials merge).
            let first_open = watermark.saturating_sub(self.pane).saturating_add(2);
            let open = self.open.split_off(&first_open);
            std::mem::replace(&mut self.open, open)
        };
        self.held -= completed.values().map(FxHashMap::len).sum::<usize>();
        self.hand_on(completed, out);
        self.watermark = watermark;
    }

    /// The job's error for `event`, which the aggregate failed on in the pane at `start`.
    fn failed(
        &self,
        cause: AggregateError,
        key: &K,
        start: Timestamp,
        event: &Record<T>,
    ) -> BoxError {
        let pane = Window {
            start,
            end: start.saturating_add(self.pane),
        };
        let mut error = WindowAggregateError::new(cause, key, pane, Some(event.ts));
        error.origin = self.origin.as_ref().and_then(|origin| origin(&event.value));
        Box::new(error)
    }

    fn hand_on(
        &mut self,
        panes: BTreeMap<Timestamp, FxHashMap<K, A::Acc>>,
        out: &mut Vec<Record<Partial<K, A::Acc>>>,
    ) {
        for (start, mut keys) in panes {
            let watermark = self.watermark;
            out.extend(keys.drain().map(|(key, acc)| Record {
                ts: start,
                watermark,
                value: Partial { key, acc },
            }));
            // The next pane reuses the table, grown to this one's keys.
            self.spare.get_or_insert(keys);
        }
    }
}

impl<K, T, A, KF> ChainedOperator for LocalWindows<K, T, A, KF>
where
    K: StateKey + Data,
    T: Data,
    A: Aggregator<T>,
    KF: Fn(&T) -> K + Send + 'static,
{
    type In = T;
    type Out = Partial<K, A::Acc>;

    fn process(
        &mut self,
        records: Vec<Record<T>>,
        out: &mut Vec<Record<Self::Out>>,
    ) -> Result<(), BoxError> {
        for r in records {
            // As the window operator does: what the record's watermark completes goes
            // first, so partials never follow a watermark that would make them late.
            if r.watermark > self.watermark {
                self.advance(r.watermark, out);
            }
            let start = window_start(r.ts, self.pane, self.offset);
            let key = (self.key)(&r.value);
            let one_by_one = self.one_by_one_until.is_some_and(|t| self.watermark < t);
            if one_by_one || start.saturating_add(self.pane) - 1 <= self.watermark {
                // Too many keys to hold, or completed here already (the window operator
                // decides what it is): the event goes on alone, with its own watermark.
                let acc = aggregate_of(&self.aggregator, &r.value)
                    .map_err(|cause| self.failed(cause, &key, start, &r))?;
                out.push(Record {
                    ts: r.ts,
                    watermark: r.watermark,
                    value: Partial { key, acc },
                });
                continue;
            }
            // Most events fall in the newest open pane.
            let keys = match self.open.last_entry() {
                Some(newest) if *newest.key() == start => newest.into_mut(),
                _ => {
                    let spare = &mut self.spare;
                    self.open
                        .entry(start)
                        .or_insert_with(|| spare.take().unwrap_or_default())
                }
            };
            // The key is kept for the error, not cloned for the table.
            let added = match keys.get_mut(&key) {
                Some(acc) => self.aggregator.add(acc, &r.value),
                None => match aggregate_of(&self.aggregator, &r.value) {
                    Ok(acc) => {
                        keys.insert(key, acc);
                        self.held += 1;
                        continue;
                    }
                    Err(cause) => Err(cause),
                },
            };
            if let Err(cause) = added {
                return Err(self.failed(cause, &key, start, &r));
            }
        }
        if self.held > MAX_HELD_PARTIALS {
            self.one_by_one_until = self
                .open
                .last_key_value()
                .map(|(start, _)| start.saturating_add(self.pane) - 1);
            let open = std::mem::take(&mut self.open);
            self.held = 0;
            self.hand_on(open, out);
        }
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut Vec<Record<Self::Out>>,
    ) -> Result<(), BoxError> {
        // Called only when the watermark moved forward (the trait's contract).
        self.advance(watermark, out);
        Ok(())
    }

    fn drain(&mut self, out: &mut Vec<Record<Self::Out>>) -> Result<(), BoxError> {
        let open = std::mem::take(&mut self.open);
        self.held = 0;
        self.hand_on(open, out);
        Ok(())
    }
}

/// The aggregate of one event.
fn aggregate_of<T, A: Aggregator<T>>(aggregator: &A, event: &T) -> Result<A::Acc, AggregateError> {
    let mut acc = aggregator.create();
    aggregator.add(&mut acc, event)?;
    Ok(acc)
}

/// The global phase: merges partial aggregates as [`Aggregator::add`] would add their
/// events.
pub(crate) struct MergePartials<A, T> {
    aggregator: A,
    _events: PhantomData<fn(T)>,
}

impl<A: Clone, T> Clone for MergePartials<A, T> {
    fn clone(&self) -> Self {
        MergePartials::new(self.aggregator.clone())
    }
}

impl<A, T> MergePartials<A, T> {
    pub(crate) fn new(aggregator: A) -> Self {
        MergePartials {
            aggregator,
            _events: PhantomData,
        }
    }
}

impl<K, T, A> Aggregator<Partial<K, A::Acc>> for MergePartials<A, T>
where
    T: 'static,
    A: Aggregator<T>,
{
    type Acc = A::Acc;
    type Output = A::Output;
    fn create(&self) -> A::Acc {
        self.aggregator.create()
    }
    fn add(&self, acc: &mut A::Acc, partial: &Partial<K, A::Acc>) -> Result<(), AggregateError> {
        self.aggregator.merge(acc, &partial.acc)
    }
    fn merge(&self, acc: &mut A::Acc, other: &A::Acc) -> Result<(), AggregateError> {
        self.aggregator.merge(acc, other)
    }
    fn finish(&self, acc: &A::Acc) -> A::Output {
        self.aggregator.finish(acc)
    }
    fn finish_owned(&self, acc: A::Acc) -> A::Output {
        self.aggregator.finish_owned(acc)
    }
}

#[cfg(test)]
#[path = "local_tests.rs"]
mod tests;

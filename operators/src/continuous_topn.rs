//! Continuous (non-windowed) top-N over a running aggregate per key, as a changelog.
//! **This is where ranking changes are emitted** ([`ContinuousTopNOperator::advance`]).
//!
//! # Semantics
//! `keyed.continuous_top_n(n, aggregator, metric)` keeps, per key, the aggregate of all its
//! events so far, and ranks the keys by `metric` of that aggregate, descending, ties to the
//! smaller key (as the windowed top-N), ranks from 1. Events wait until the watermark
//! reaches them and are applied in event-time order; for each distinct event time `t`, once
//! every event with time `t` is applied, the new top `n` is compared place by place with
//! the one before, and each place that changed emits (with event time `t`, like Flink SQL's
//! Top-N changelog with the rank number):
//! - `+I` (insert) for a place that was empty (fewer than `n` keys before);
//! - `-U` (update before, the retraction of the old row) then `+U` (update after) for a
//!   place whose key or value changed.
//!
//! Places are never vacated (keys do not leave a running aggregate), so there are no `-D`
//! rows. Applying by event time and comparing per distinct time makes the changelog
//! independent of arrival order, batch sizes and parallelism. An event below the watermark
//! when it arrives is late: dropped and counted.
//!
//! # State and cost
//! The ranking needs every key's aggregate (a key outside the top may climb into it), so
//! the operator runs as **one instance** (all keys in one state entry, memory or RocksDB,
//! saved by checkpoints) whatever the parallelism. After each time `t` only the keys updated
//! at `t` and the previous top `n` are re-ranked, unless a key of the previous top got a
//! smaller metric: then all keys are (so the result is exact for aggregates that can fall,
//! such as a sum of negative values).

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use weir_engine::error::BoxError;
use weir_engine::operator::OperatorFactory;
use weir_engine::{
    Data, EventTime, EventTimeOperator, Handled, Keyed, KeyedStream, Lateness, MapState, NoTimers,
    OperatorContext, Output, StableHash, StateBackend, StateKey, StateTable, StateValue, Stream,
    Timestamp,
};

use crate::aggregate::Aggregator;
use crate::time_order::{insert_by_time, take_due, TimeOrdered};
use crate::topn::insert_ranked;

/// The kind of a changelog row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ChangeKind {
    /// `+I`: a new row at a place that was empty.
    #[serde(rename = "+I")]
    Insert,
    /// `-U`: the row that was at a place (a retraction).
    #[serde(rename = "-U")]
    UpdateBefore,
    /// `+U`: the row now at that place.
    #[serde(rename = "+U")]
    UpdateAfter,
}

/// One changelog row of a continuous top-N.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankChange<K, V> {
    /// What the row does.
    pub op: ChangeKind,
    /// The place, from 1.
    pub rank: u32,
    /// The key at that place (before the change for `-U`).
    pub key: K,
    /// Its aggregate.
    pub value: V,
    /// The event time the ranking changed at.
    pub at: Timestamp,
}

/// Adds [`ContinuousTopNExt::continuous_top_n`] to keyed streams.
pub trait ContinuousTopNExt<K, T> {
    /// The `n` keys with the largest `metric` of their running `aggregator`, as a changelog
    /// (see the module docs).
    fn continuous_top_n<A, M, F>(
        self,
        n: usize,
        aggregator: A,
        metric: F,
    ) -> Stream<RankChange<K, A::Output>>
    where
        A: Aggregator<T>,
        A::Output: StateValue + PartialEq,
        M: PartialOrd,
        F: Fn(&A::Output) -> M + Clone + Send + 'static;
}

impl<K, T, KF> ContinuousTopNExt<K, T> for KeyedStream<K, T, KF>
where
    K: StateKey + StableHash + Data + Ord,
    T: StateValue + Data,
    KF: Fn(&T) -> K + Clone + Send + 'static,
{
    fn continuous_top_n<A, M, F>(
        self,
        n: usize,
        aggregator: A,
        metric: F,
    ) -> Stream<RankChange<K, A::Output>>
    where
        A: Aggregator<T>,
        A::Output: StateValue + PartialEq,
        M: PartialOrd,
        F: Fn(&A::Output) -> M + Clone + Send + 'static,
    {
        let stream = self.stream().clone();
        if n == 0 {
            stream.invalid("top-N needs n >= 1".into());
        }
        if !stream.has_timestamps() {
            stream.invalid(
                "continuous top-N runs in event-time order: call .timestamps(..) first".into(),
            );
        }
        let key = self.key_fn();
        // One instance ranks all keys: every event goes to the same (constant) key.
        stream
            .map(move |e: T| (key(&e), e))
            .internal()
            .key_by(|_: &(K, T)| 0u8)
            .process(
                "continuous-top-n",
                format!("top {n} keys by a running aggregate, changelog"),
                ContinuousTopNFactory {
                    n,
                    aggregator,
                    metric,
                    _types: PhantomData,
                },
            )
    }
}

struct ContinuousTopNFactory<K, T, A, F> {
    n: usize,
    aggregator: A,
    metric: F,
    _types: PhantomData<fn() -> (K, T)>,
}

/// The state table of the ranking (one entry: the operator runs on one key).
const TABLE: &str = "continuous-top-n";

impl<K, T, A, M, F> OperatorFactory for ContinuousTopNFactory<K, T, A, F>
where
    K: StateKey + Data + Ord,
    T: StateValue + Data,
    A: Aggregator<T>,
    A::Output: StateValue + PartialEq,
    M: PartialOrd,
    F: Fn(&A::Output) -> M + Clone + Send + 'static,
{
    type Key = u8;
    type In = (K, T);
    type Out = RankChange<K, A::Output>;
    type Operator<S: StateBackend> = EventTime<ContinuousTopNOperator<S, K, T, A, F>>;

    fn create<S: StateBackend>(
        &self,
        ctx: &OperatorContext,
        mut state: S,
    ) -> Result<Self::Operator<S>, BoxError> {
        let operator = ContinuousTopNOperator {
            n: self.n,
            aggregator: self.aggregator.clone(),
            metric: self.metric.clone(),
            table: state.map_state(TABLE)?,
            next_due: None,
        };
        Ok(EventTime::new(operator, ctx))
    }

    fn tables(&self) -> Vec<String> {
        vec![TABLE.to_string()]
    }
}

/// Everything the ranking needs, in one state entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ranking<K: Ord, T, Acc, V> {
    /// Events waiting for the watermark.
    pending: TimeOrdered<(K, T)>,
    /// Every key's running aggregate.
    accs: BTreeMap<K, Acc>,
    /// The current top `n`, best first.
    top: Vec<(K, V)>,
}

impl<K: Ord, T, Acc, V> Default for Ranking<K, T, Acc, V> {
    fn default() -> Self {
        Ranking {
            pending: Vec::new(),
            accs: BTreeMap::new(),
            top: Vec::new(),
        }
    }
}

/// The ranking state of aggregator `A` over events `T` keyed by `K`.
type RankingOf<K, T, A> = Ranking<K, T, <A as Aggregator<T>>::Acc, <A as Aggregator<T>>::Output>;

/// The single instance of a continuous top-N.
pub struct ContinuousTopNOperator<
    S: StateBackend,
    K: StateKey + Ord,
    T: StateValue,
    A: Aggregator<T>,
    F,
> where
    A::Output: StateValue,
{
    n: usize,
    aggregator: A,
    metric: F,
    table: S::Map<u8, RankingOf<K, T, A>>,
    /// The earliest pending event time, if any (derived from state).
    next_due: Option<Timestamp>,
}

impl<S: StateBackend, K: StateKey + Ord, T: StateValue, A: Aggregator<T>, F> std::fmt::Debug
    for ContinuousTopNOperator<S, K, T, A, F>
where
    A::Output: StateValue,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContinuousTopNOperator")
            .field("n", &self.n)
            .finish_non_exhaustive()
    }
}

impl<S, K, T, A, M, F> ContinuousTopNOperator<S, K, T, A, F>
where
    S: StateBackend,
    K: StateKey + Data + Ord,
    T: StateValue + Data,
    A: Aggregator<T>,
    A::Output: StateValue + PartialEq,
    M: PartialOrd,
    F: Fn(&A::Output) -> M,
{
    /// Applies the events the watermark reached, one event time after another, and emits
    /// each time's ranking changes.
    fn advance(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<RankChange<K, A::Output>>,
    ) -> Result<(), BoxError> {
        let w = watermark;
        if self.next_due.is_none_or(|t| t > w) {
            return Ok(());
        }
        let (n, aggregator, metric) = (self.n, &self.aggregator, &self.metric);
        let mut changes = Vec::new();
        let next = self
            .table
            .modify(&0, |r| -> Result<Option<Timestamp>, BoxError> {
                let due: Vec<(Timestamp, (K, T))> = take_due(&mut r.pending, w).collect();
                let mut i = 0;
                while i < due.len() {
                    let at = due[i].0;
                    let mut updated = BTreeSet::new();
                    while i < due.len() && due[i].0 == at {
                        let (key, event) = &due[i].1;
                        let acc = r
                            .accs
                            .entry(key.clone())
                            .or_insert_with(|| aggregator.create());
                        aggregator.add(acc, event)?;
                        updated.insert(key.clone());
                        i += 1;
                    }
                    let top = rerank(&r.accs, &r.top, &updated, n, aggregator, metric);
                    diff(&r.top, &top, at, &mut changes);
                    r.top = top;
                }
                Ok(r.pending.first().map(|(t, _)| *t))
            })?;
        self.next_due = next.transpose()?.flatten();
        for change in changes {
            out.emit(change.at, change);
        }
        Ok(())
    }
}

/// The new top `n` after the keys in `updated` changed: from the previous top and the
/// updated keys, unless a key of the previous top fell (then from all keys).
fn rerank<K: Ord + Clone, T, A: Aggregator<T>, M: PartialOrd>(
    accs: &BTreeMap<K, A::Acc>,
    previous: &[(K, A::Output)],
    updated: &BTreeSet<K>,
    n: usize,
    aggregator: &A,
    metric: impl Fn(&A::Output) -> M,
) -> Vec<(K, A::Output)> {
    let value = |k: &K| accs.get(k).map(|acc| aggregator.finish(acc));
    let fell = previous.iter().any(|(k, old)| {
        updated.contains(k)
            && value(k).is_some_and(|new| {
                metric(&new).partial_cmp(&metric(old)) == Some(std::cmp::Ordering::Less)
            })
    });
    let mut top = Vec::with_capacity(n + 1);
    let mut consider = |k: &K| {
        if let Some(v) = value(k) {
            insert_ranked(&mut top, n, k.clone(), v, &metric);
        }
    };
    if fell {
        accs.keys().for_each(&mut consider);
    } else {
        let previous_keys = previous.iter().map(|(k, _)| k);
        let candidates: BTreeSet<&K> = previous_keys.chain(updated).collect();
        candidates.into_iter().for_each(consider);
    }
    top
}

/// The changelog rows turning `old` into `new`, place by place.
fn diff<K: Clone + PartialEq, V: Clone + PartialEq>(
    old: &[(K, V)],
    new: &[(K, V)],
    at: Timestamp,
    changes: &mut Vec<RankChange<K, V>>,
) {
    for (place, (key, value)) in new.iter().enumerate() {
        let rank = place as u32 + 1;
        let row = |op, (key, value): &(K, V)| RankChange {
            op,
            rank,
            key: key.clone(),
            value: value.clone(),
            at,
        };
        match old.get(place) {
            None => changes.push(row(ChangeKind::Insert, &(key.clone(), value.clone()))),
            Some(before) if before.0 == *key && before.1 == *value => {}
            Some(before) => {
                changes.push(row(ChangeKind::UpdateBefore, before));
                changes.push(row(ChangeKind::UpdateAfter, &(key.clone(), value.clone())));
            }
        }
    }
}

impl<S, K, T, A, M, F> EventTimeOperator for ContinuousTopNOperator<S, K, T, A, F>
where
    S: StateBackend,
    K: StateKey + Data + Ord,
    T: StateValue + Data,
    A: Aggregator<T>,
    A::Output: StateValue + PartialEq,
    M: PartialOrd,
    F: Fn(&A::Output) -> M + Send + 'static,
{
    type Key = u8;
    type In = (K, T);
    type Out = RankChange<K, A::Output>;
    type Timers = NoTimers;

    /// Events wait for the watermark and apply in time order; one at or before it would
    /// change a ranking already emitted.
    const LATENESS: Lateness = Lateness::AtOrBeforeWatermark;

    fn on_event(
        &mut self,
        ts: Timestamp,
        event: Keyed<u8, (K, T)>,
        _watermark: Timestamp,
        _out: &mut Output<RankChange<K, A::Output>>,
    ) -> Result<Handled, BoxError> {
        self.table.update(&0, Ranking::default, |ranking| {
            insert_by_time(&mut ranking.pending, ts, event.value);
        })?;
        self.next_due = Some(self.next_due.map_or(ts, |t| t.min(ts)));
        Ok(Handled::Taken)
    }

    /// No timers: it acts on the watermark itself.
    fn timers(&mut self) -> &mut [NoTimers] {
        &mut []
    }

    fn on_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<RankChange<K, A::Output>>,
    ) -> Result<(), BoxError> {
        self.advance(watermark, out)
    }

    fn tables(&mut self) -> Vec<&mut dyn StateTable> {
        vec![&mut self.table]
    }

    fn state_entries(&self) -> usize {
        self.table.len()
    }

    fn restore(&mut self, _watermark: Timestamp) -> Result<(), BoxError> {
        let mut next = None;
        self.table.scan(|_, ranking| {
            next = ranking.pending.first().map(|(t, _)| *t);
        })?;
        self.next_due = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use weir_engine::MemoryBackend;
    use weir_engine::{KeyedOperator, Record};

    use super::*;
    use crate::aggregate::Sum;

    const MIN: i64 = i64::MIN;

    type Row = (&'static str, u32, String, i64, i64);

    /// Feeds `(ts, watermark before it, key, value)` to a top-`n` by sum and returns the
    /// changelog as `(op, rank, key, sum, at)` in emission order, and the late count.
    fn changelog(n: usize, input: &[(i64, i64, &str, i64)]) -> (Vec<Row>, u64) {
        let ctx = crate::test_support::operator_context("continuous-top-n");
        let sum = Sum::of(|e: &(String, i64)| e.1);
        let factory = ContinuousTopNFactory::<String, (String, i64), _, _> {
            n,
            aggregator: sum,
            metric: |v: &i64| *v,
            _types: PhantomData,
        };
        let mut op = factory.create(&ctx, MemoryBackend::new()).expect("create");
        let mut out = Output::default();
        for &(ts, watermark, key, value) in input {
            let event = (key.to_string(), (key.to_string(), value));
            let record = Record {
                ts,
                watermark,
                value: Keyed {
                    key: 0,
                    value: event,
                },
            };
            op.process(vec![record], &mut out).expect("process");
        }
        op.on_watermark(i64::MAX, &mut out).expect("watermark");
        let rows = out
            .take()
            .into_iter()
            .map(|r| {
                assert_eq!(r.ts, r.value.at);
                let op = match r.value.op {
                    ChangeKind::Insert => "+I",
                    ChangeKind::UpdateBefore => "-U",
                    ChangeKind::UpdateAfter => "+U",
                };
                (op, r.value.rank, r.value.key, r.value.value, r.value.at)
            })
            .collect();
        (rows, ctx.metrics.late_events.get())
    }

    fn rows(list: &[(&'static str, u32, &str, i64, i64)]) -> Vec<Row> {
        list.iter()
            .map(|&(op, rank, key, v, at)| (op, rank, key.to_string(), v, at))
            .collect()
    }

    #[test]
    fn inserts_then_retracts_and_updates_places_ties_to_the_smaller_key() {
        let (changes, late) = changelog(
            2,
            &[
                (1, MIN, "b", 5),
                (1, MIN, "a", 5),   // tie at 5: a first
                (2, MIN, "b", 1),   // b overtakes a: both places change
                (3, MIN, "c", 1),   // c is third: nothing changes
                (4, MIN, "a", -10), // a falls below c: place 2 changes
            ],
        );
        assert_eq!(
            changes,
            rows(&[
                ("+I", 1, "a", 5, 1),
                ("+I", 2, "b", 5, 1),
                ("-U", 1, "a", 5, 2),
                ("+U", 1, "b", 6, 2),
                ("-U", 2, "b", 5, 2),
                ("+U", 2, "a", 5, 2),
                ("-U", 2, "a", 5, 4),
                ("+U", 2, "c", 1, 4),
            ])
        );
        assert_eq!(late, 0);
    }

    #[test]
    fn events_apply_in_event_time_order_once_per_time_and_late_ones_are_dropped() {
        // Out of order: b's event at 2 arrives before a's at 1. At time 1 a leads alone;
        // at time 2 b's two events (one diff for both) put it first.
        let (changes, late) = changelog(
            1,
            &[
                (2, MIN, "b", 3),
                (1, MIN, "a", 4),
                (2, MIN, "b", 3),
                (0, 1, "c", 100), // late: the watermark is at 1
                (5, 1, "a", 0),
            ],
        );
        assert_eq!(
            changes,
            rows(&[
                ("+I", 1, "a", 4, 1),
                ("-U", 1, "a", 4, 2),
                ("+U", 1, "b", 6, 2),
            ])
        );
        assert_eq!(late, 1);
        // The same events in time order give the same changelog.
        let (in_order, _) = changelog(
            1,
            &[
                (1, MIN, "a", 4),
                (2, MIN, "b", 3),
                (2, MIN, "b", 3),
                (5, 1, "a", 0),
            ],
        );
        assert_eq!(in_order, changes);
    }

    #[test]
    fn no_events_no_rows() {
        assert_eq!(changelog(3, &[]), (Vec::new(), 0));
    }
}

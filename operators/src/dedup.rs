//! Deduplication: idempotent consumption of streams that may repeat events (at-least-once
//! producers, replays). **This is where repeats are dropped** ([`DedupOperator::process`]).
//!
//! # Semantics
//! `stream.dedup_by(|e| e.id, ttl)` (partitioned by id), or `stream.key_by(..).dedup_by(|e|
//! e.id, ttl)` (partitioned by the key, so each key's events keep their order for a keyed
//! operator after it), passes the first event of each id and drops later ones
//! with the same id, counting them (`weir_duplicates_dropped_total`). An id is remembered
//! until the watermark reaches `ts + ttl`, `ts` being the event time of the event that
//! passed (state with a time-to-live in event time, see `weir_engine::state::ttl`), so state
//! stays bounded and a replay drops exactly the same events. A repeat that comes later than
//! that passes again (and is remembered anew). Repeats do not extend the memory, as in
//! Flink SQL's keep-first-row deduplication. The events that pass keep their order, times
//! and watermarks.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use weir_engine::error::BoxError;
use weir_engine::keys::StableHash;
use weir_engine::metrics::Counter;
use weir_engine::operator::OperatorFactory;
use weir_engine::state::{Expiring, TtlMap};
use weir_engine::{
    Data, JobMetrics, Keyed, KeyedOperator, KeyedStream, MapState, Namespaced, OperatorContext,
    Output, Record, StateBackend, StateKey, StateTable, Stream, Timestamp,
};

/// Adds [`DedupExt::dedup_by`] to streams: partitioned by the id.
pub trait DedupExt<T> {
    /// Drops events whose `id` was seen within `ttl` of event time (see the module docs).
    fn dedup_by<I, IF>(self, id: IF, ttl: Duration) -> Stream<T>
    where
        I: StateKey + StableHash + Data,
        IF: Fn(&T) -> I + Clone + Send + 'static;
}

/// What can identify an event under a key (stored in state, compared for equality).
pub trait DedupId:
    Eq + std::hash::Hash + Clone + Send + serde::Serialize + serde::de::DeserializeOwned + 'static
{
}
impl<I> DedupId for I where
    I: Eq
        + std::hash::Hash
        + Clone
        + Send
        + serde::Serialize
        + serde::de::DeserializeOwned
        + 'static
{
}

/// Adds [`KeyedDedupExt::dedup_by`] to keyed streams: partitioned by the stream's key, so
/// the events of one key keep their order through the dedup (an id belongs to one key).
pub trait KeyedDedupExt<K, T> {
    /// Drops events whose `id` was seen, under the same key, within `ttl` of event time.
    fn dedup_by<I, IF>(self, id: IF, ttl: Duration) -> Stream<T>
    where
        I: DedupId,
        IF: Fn(&T) -> I + Clone + Send + 'static;
}

fn needs_timestamps<T: Data>(stream: &Stream<T>) {
    if !stream.has_timestamps() {
        stream.invalid(
            "dedup forgets ids by event time: call .timestamps(..) before .dedup_by(..)".into(),
        );
    }
}

impl<T: Data> DedupExt<T> for Stream<T> {
    fn dedup_by<I, IF>(self, id: IF, ttl: Duration) -> Stream<T>
    where
        I: StateKey + StableHash + Data,
        IF: Fn(&T) -> I + Clone + Send + 'static,
    {
        needs_timestamps(&self);
        let metrics = self.job().metrics();
        self.key_by(id).process(
            "dedup",
            format!("drop repeated ids within {ttl:?} of event time"),
            DedupFactory {
                ttl,
                metrics,
                seen_key: |id: &I, _: &T| id.clone(),
                _types: PhantomData,
            },
        )
    }
}

impl<K, T, KF> KeyedDedupExt<K, T> for KeyedStream<K, T, KF>
where
    K: StateKey + StableHash + Data,
    T: Data,
    KF: Fn(&T) -> K + Clone + Send + 'static,
{
    fn dedup_by<I, IF>(self, id: IF, ttl: Duration) -> Stream<T>
    where
        I: DedupId,
        IF: Fn(&T) -> I + Clone + Send + 'static,
    {
        needs_timestamps(self.stream());
        let metrics = self.stream().job().metrics();
        self.process(
            "dedup",
            format!("drop repeated ids per key within {ttl:?} of event time"),
            DedupFactory {
                ttl,
                metrics,
                seen_key: move |key: &K, event: &T| Namespaced {
                    key: key.clone(),
                    namespace: id(event),
                },
                _types: PhantomData,
            },
        )
    }
}

/// Creates dedup instances; `seen_key` names what is remembered for an event of a key.
struct DedupFactory<K, T, SK, SF> {
    ttl: Duration,
    metrics: Arc<JobMetrics>,
    seen_key: SF,
    _types: PhantomData<fn(K, T) -> SK>,
}

/// The state table of the ids seen, each with the time it expires from.
const SEEN: &str = "seen-ids";

impl<K, T, SK, SF> OperatorFactory for DedupFactory<K, T, SK, SF>
where
    K: StateKey + Data,
    T: Data,
    SK: StateKey,
    SF: Fn(&K, &T) -> SK + Clone + Send + 'static,
{
    type Key = K;
    type In = T;
    type Out = T;
    type Operator<S: StateBackend> = DedupOperator<S, K, T, SK, SF>;

    fn create<S: StateBackend>(
        &self,
        ctx: &OperatorContext,
        mut state: S,
    ) -> Result<Self::Operator<S>, BoxError> {
        Ok(DedupOperator {
            seen: state.map_state_with_ttl(SEEN, self.ttl)?,
            seen_key: self.seen_key.clone(),
            dropped: self.metrics.duplicates(&ctx.name, ctx.instance),
            _input: PhantomData,
        })
    }

    fn tables(&self) -> Vec<String> {
        vec![SEEN.to_string()]
    }
}

/// The ids one worker has seen, each forgotten a TTL after the event that passed.
pub struct DedupOperator<S: StateBackend, K, T, SK: StateKey, SF> {
    seen: TtlMap<SK, (), S::Map<SK, Expiring<()>>>,
    seen_key: SF,
    dropped: Counter,
    _input: PhantomData<fn(K, T)>,
}

impl<S: StateBackend, K, T, SK: StateKey, SF> std::fmt::Debug for DedupOperator<S, K, T, SK, SF> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DedupOperator")
            .field("ids", &self.seen.len())
            .finish_non_exhaustive()
    }
}

impl<S, K, T, SK, SF> KeyedOperator for DedupOperator<S, K, T, SK, SF>
where
    S: StateBackend,
    K: StateKey + Data,
    T: Data,
    SK: StateKey,
    SF: Fn(&K, &T) -> SK + Send + 'static,
{
    type Key = K;
    type In = T;
    type Out = T;

    fn process(
        &mut self,
        records: Vec<Record<Keyed<K, T>>>,
        out: &mut Output<T>,
    ) -> Result<(), BoxError> {
        let mut dropped = 0;
        for r in records {
            self.seen.advance_time(r.watermark)?;
            out.advance_watermark(r.watermark);
            let Keyed { key, value } = r.value;
            let seen_key = (self.seen_key)(&key, &value);
            if !self.seen.insert_new_at(seen_key, (), r.ts)? {
                dropped += 1;
                continue;
            }
            out.emit(r.ts, value);
        }
        self.dropped.inc_by(dropped);
        Ok(())
    }

    fn on_watermark(&mut self, watermark: Timestamp, _: &mut Output<T>) -> Result<(), BoxError> {
        // Nothing fires; the runner forwards the watermark after this.
        self.seen.advance_time(watermark)?;
        Ok(())
    }

    fn state_entries(&self) -> usize {
        self.seen.len()
    }

    fn tables(&mut self) -> Vec<&mut dyn StateTable> {
        vec![&mut self.seen]
    }

    fn snapshot(&mut self) -> Result<serde_json::Value, BoxError> {
        self.seen.flush()?;
        Ok(serde_json::Value::Null)
    }

    fn restore(&mut self, _snapshots: &[serde_json::Value]) -> Result<(), BoxError> {
        // The clock comes back with the first record's watermark; the scan recounts.
        Ok(self.seen.scan(|_, _| {})?)
    }
}

#[cfg(test)]
mod tests {
    use weir_engine::{Job, RunOptions, Watermarks};

    use super::*;
    use crate::test_support::{sorted, Collect, VecSource};

    fn dedup(events: Vec<(i64, u32)>, parallelism: usize) -> (Vec<(i64, u32)>, u64) {
        let job = Job::new("dedup");
        let (sink, passed) = Collect::new();
        job.source("events", VecSource(events))
            .timestamps(|e| e.0, Watermarks::bounded(Duration::ZERO))
            .dedup_by(|e: &(i64, u32)| e.1, Duration::from_millis(100))
            .sink("out", sink);
        let options = RunOptions {
            parallelism,
            ..RunOptions::default()
        };
        job.run(&options).expect("the job runs");
        let dropped = job
            .metrics()
            .render()
            .lines()
            .filter(|l| l.starts_with("weir_duplicates_dropped_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        (sorted(&passed), dropped)
    }

    #[test]
    fn repeats_within_the_ttl_are_dropped_and_counted() {
        for parallelism in [1, 2] {
            let (passed, dropped) = dedup(
                vec![
                    (1_000, 1),
                    (1_010, 2),
                    (1_020, 1), // repeat of 1: dropped
                    (1_050, 2), // repeat of 2: dropped
                    (1_110, 1), // 1 passed at 1000, remembered until watermark 1100: dropped
                    (1_300, 3),
                    (1_400, 1), // 1 forgotten: passes again
                    (1_401, 2), // 2 forgotten too
                ],
                parallelism,
            );
            assert_eq!(
                passed,
                vec![(1_000, 1), (1_010, 2), (1_300, 3), (1_400, 1), (1_401, 2)],
                "parallelism {parallelism}"
            );
            assert_eq!(dropped, 3, "parallelism {parallelism}");
        }
    }
}

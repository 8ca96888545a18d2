//! Top-N per window. **This is where a window's ranking is emitted**
//! ([`TopNOperator::advance`]).
//!
//! # Semantics
//! `results.top_n(n, metric)` takes window results (one per key and window) and emits, per
//! window, the `n` keys with the largest `metric`, ranked from 1; ties go to the smaller
//! key (SEMANTICS: "ranks by the metric descending, ties broken by key ascending"). A
//! window's ranking is emitted once, when the watermark reaches the window's `end - 1`:
//! window results carry the watermark from before their window fired, so by then every
//! key's result for the window has arrived, from every worker. Each worker keeps at most
//! `n` candidates per open window. Window *updates* (allowed lateness) are refused: a
//! ranking is final when emitted.

use std::collections::BTreeSet;
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use weir_engine::error::BoxError;
use weir_engine::operator::OperatorFactory;
use weir_engine::{
    Data, Keyed, KeyedOperator, MapState, OperatorContext, Output, Record, StateBackend, StateKey,
    StateValue, Stream, Timestamp,
};

use crate::snapshot::{restored_watermark, save_watermark};
use crate::window::{Window, WindowResult};

/// One place of a window's ranking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ranked<K, V> {
    /// The window ranked.
    pub window: Window,
    /// 1 for the largest metric.
    pub rank: u32,
    /// The key at this place.
    pub key: K,
    /// Its window result.
    pub value: V,
}

/// Adds [`TopNExt::top_n`] to streams of window results.
pub trait TopNExt<K, V> {
    /// The `n` keys with the largest `metric` per window (see the module docs).
    fn top_n<M, F>(self, n: usize, metric: F) -> Stream<Ranked<K, V>>
    where
        M: PartialOrd,
        F: Fn(&V) -> M + Clone + Send + 'static;
}

impl<K, V> TopNExt<K, V> for Stream<WindowResult<K, V>>
where
    K: StateKey + Data + Ord,
    V: StateValue + Data,
{
    fn top_n<M, F>(self, n: usize, metric: F) -> Stream<Ranked<K, V>>
    where
        M: PartialOrd,
        F: Fn(&V) -> M + Clone + Send + 'static,
    {
        if n == 0 {
            self.invalid("top-N needs n >= 1".into());
        }
        self.key_by(|r: &WindowResult<K, V>| (r.window.start, r.window.end))
            .process(
                "top-n",
                format!("top {n} keys per window"),
                TopNFactory {
                    n,
                    metric,
                    _types: PhantomData,
                },
            )
    }
}

struct TopNFactory<K, V, F> {
    n: usize,
    metric: F,
    _types: PhantomData<fn() -> (K, V)>,
}

impl<K, V, M, F> OperatorFactory for TopNFactory<K, V, F>
where
    K: StateKey + Data + Ord,
    V: StateValue + Data,
    M: PartialOrd,
    F: Fn(&V) -> M + Clone + Send + 'static,
{
    type Key = (Timestamp, Timestamp);
    type In = WindowResult<K, V>;
    type Out = Ranked<K, V>;
    type Operator<S: StateBackend> = TopNOperator<S, K, V, F>;

    fn create<S: StateBackend>(
        &self,
        _ctx: &OperatorContext,
        mut state: S,
    ) -> Result<Self::Operator<S>, BoxError> {
        Ok(TopNOperator {
            n: self.n,
            metric: self.metric.clone(),
            candidates: state.map_state("top-n-candidates")?,
            due: BTreeSet::new(),
            watermark: Timestamp::MIN,
        })
    }
}

/// The best `n` results so far of each open window on one worker.
pub struct TopNOperator<S: StateBackend, K: StateKey, V: StateValue, F> {
    n: usize,
    metric: F,
    /// Per window `(start, end)`: up to `n` `(key, result)`, best first.
    candidates: S::Map<(Timestamp, Timestamp), Vec<(K, V)>>,
    /// Open windows by `(end, start)`: the order they are due in.
    due: BTreeSet<(Timestamp, Timestamp)>,
    watermark: Timestamp,
}

impl<S: StateBackend, K: StateKey, V: StateValue, F> std::fmt::Debug for TopNOperator<S, K, V, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopNOperator")
            .field("n", &self.n)
            .field("open_windows", &self.due.len())
            .finish_non_exhaustive()
    }
}

impl<S, K, V, M, F> TopNOperator<S, K, V, F>
where
    S: StateBackend,
    K: StateKey + Data + Ord,
    V: StateValue + Data,
    M: PartialOrd,
    F: Fn(&V) -> M,
{
    /// Emits the ranking of every window with `end - 1 <= watermark`.
    fn advance(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<Ranked<K, V>>,
    ) -> Result<(), BoxError> {
        self.watermark = self.watermark.max(watermark);
        while let Some(&(end, start)) = self.due.first() {
            if end - 1 > self.watermark {
                break;
            }
            self.due.pop_first();
            let ranking = self.candidates.take(&(start, end))?.unwrap_or_default();
            for (place, (key, value)) in ranking.into_iter().enumerate() {
                out.emit(
                    end - 1,
                    Ranked {
                        window: Window { start, end },
                        rank: place as u32 + 1,
                        key,
                        value,
                    },
                );
            }
        }
        Ok(())
    }
}

/// Inserts `(key, value)` into `ranking` (best first, at most `n`) if it belongs there.
pub(crate) fn insert_ranked<K: Ord, V, M: PartialOrd>(
    ranking: &mut Vec<(K, V)>,
    n: usize,
    key: K,
    value: V,
    metric: impl Fn(&V) -> M,
) {
    let m = metric(&value);
    // Before the first entry it beats: a larger metric, or an equal one and a smaller key.
    let at = ranking
        .iter()
        .position(|(k, v)| match m.partial_cmp(&metric(v)) {
            Some(std::cmp::Ordering::Greater) => true,
            Some(std::cmp::Ordering::Equal) => key < *k,
            _ => false,
        })
        .unwrap_or(ranking.len());
    if at < n {
        ranking.insert(at, (key, value));
        ranking.truncate(n);
    }
}

impl<S, K, V, M, F> KeyedOperator for TopNOperator<S, K, V, F>
where
    S: StateBackend,
    K: StateKey + Data + Ord,
    V: StateValue + Data,
    M: PartialOrd,
    F: Fn(&V) -> M + Send + 'static,
{
    type Key = (Timestamp, Timestamp);
    type In = WindowResult<K, V>;
    type Out = Ranked<K, V>;

    fn process(
        &mut self,
        records: Vec<Record<Keyed<(Timestamp, Timestamp), WindowResult<K, V>>>>,
        out: &mut Output<Ranked<K, V>>,
    ) -> Result<(), BoxError> {
        for r in records {
            if r.watermark > self.watermark {
                self.advance(r.watermark, out)?;
            }
            let window = r.value.key;
            let result = r.value.value;
            if result.is_update {
                return Err(format!(
                    "top-N got an update of window [{}, {}) for key {:?}: rankings are final \
                     when emitted, so run top-N without allowed lateness",
                    window.0,
                    window.1,
                    serde_json::to_string(&result.key).unwrap_or_default()
                )
                .into());
            }
            let (n, metric) = (self.n, &self.metric);
            self.candidates.update(&window, Vec::new, |ranking| {
                insert_ranked(ranking, n, result.key, result.value, metric)
            })?;
            self.due.insert((window.1, window.0));
        }
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<Ranked<K, V>>,
    ) -> Result<(), BoxError> {
        // The runner forwards the watermark after this.
        self.advance(watermark, out)
    }

    fn state_entries(&self) -> usize {
        self.due.len()
    }

    fn snapshot(&mut self) -> Result<serde_json::Value, BoxError> {
        self.candidates.flush()?;
        save_watermark(self.watermark)
    }

    fn restore(&mut self, snapshots: &[serde_json::Value]) -> Result<(), BoxError> {
        self.watermark = restored_watermark(snapshots)?;
        let due = &mut self.due;
        self.candidates.scan(|(start, end), _| {
            due.insert((end, start));
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_is_by_metric_descending_then_key_ascending() {
        let mut ranking = Vec::new();
        for (key, value) in [("d", 5), ("b", 7), ("a", 5), ("c", 7), ("e", 1), ("f", 9)] {
            insert_ranked(&mut ranking, 4, key, value, |v: &i32| *v);
        }
        assert_eq!(ranking, vec![("f", 9), ("b", 7), ("c", 7), ("a", 5)]);
        // Arrival order does not matter.
        let mut reversed = Vec::new();
        for (key, value) in [("f", 9), ("e", 1), ("c", 7), ("a", 5), ("b", 7), ("d", 5)] {
            insert_ranked(&mut reversed, 4, key, value, |v: &i32| *v);
        }
        assert_eq!(reversed, ranking);
    }
}

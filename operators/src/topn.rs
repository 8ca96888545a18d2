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
//!
//! # Two phases
//! A window's results are spread over the workers by key, and the ranking is keyed by
//! window, so without more every result would cross the exchange to the window's worker
//! (Nexmark q5 makes 0.3 window results per event). As with two-phase aggregation, each
//! producer instance first keeps the best `n` of its own results per window, in its thread
//! ([`LocalTopN`]), and hands them on when its watermark makes the window due. Every key's
//! result for a window is on one instance only, so the best `n` of the instances' best `n`
//! are the window's best `n`: rankings are unchanged.

use std::collections::BTreeSet;
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use weir_engine::error::BoxError;
use weir_engine::operator::OperatorFactory;
use weir_engine::{
    ChainedOperator, Data, EventTime, EventTimeOperator, Handled, Keyed, Lateness, MapState,
    NoTimers, OperatorContext, Output, Record, StateBackend, StateKey, StateTable, StateValue,
    Stream, Timestamp,
};

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
        let local_metric = metric.clone();
        self.chain("top-n-local", move || LocalTopN {
            n,
            metric: local_metric.clone(),
            held: Vec::new(),
        })
        .internal()
        .key_by(|r: &WindowResult<K, V>| (r.window.start, r.window.end))
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

/// The local phase (see the module docs): the best `n` results per window of one producer
/// instance, held until its watermark makes the window due. Not in checkpoints: drained
/// before every barrier, as every [`ChainedOperator`].
struct LocalTopN<K, V, F> {
    n: usize,
    metric: F,
    /// Windows with results held, oldest first; a watermark makes few due at a time.
    held: Vec<HeldRanking<K, V>>,
}

/// One window's best results so far on one instance.
struct HeldRanking<K, V> {
    window: Window,
    /// The results' event time (their window's `end - 1`).
    ts: Timestamp,
    /// The watermark that preceded the results: they go on with it, so the ranking
    /// operator judges them as it would have judged the results themselves.
    watermark: Timestamp,
    best: Vec<(K, V)>,
}

impl<K, V, F> LocalTopN<K, V, F> {
    /// Appends the held windows `due` selects, best result first, and forgets them.
    fn hand_on(
        &mut self,
        due: impl Fn(&Window) -> bool,
        out: &mut Vec<Record<WindowResult<K, V>>>,
    ) {
        for held in self.held.extract_if(.., |held| due(&held.window)) {
            out.extend(held.best.into_iter().map(|(key, value)| Record {
                ts: held.ts,
                watermark: held.watermark,
                value: WindowResult {
                    key,
                    window: held.window,
                    value,
                    is_update: false,
                    timing: crate::window::Timing::OnTime,
                },
            }));
        }
    }
}

impl<K, V, M, F> ChainedOperator for LocalTopN<K, V, F>
where
    K: Data + Ord,
    V: Data,
    M: PartialOrd,
    F: Fn(&V) -> M + Send + 'static,
{
    type In = WindowResult<K, V>;
    type Out = WindowResult<K, V>;

    fn process(
        &mut self,
        records: Vec<Record<WindowResult<K, V>>>,
        out: &mut Vec<Record<WindowResult<K, V>>>,
    ) -> Result<(), BoxError> {
        for r in records {
            let window = r.value.window;
            if r.value.is_update || r.watermark >= window.end - 1 {
                // Not part of a window's first firing: the ranking operator judges it alone.
                out.push(r);
                continue;
            }
            let at = match self.held.iter().rposition(|h| h.window == window) {
                Some(at) => at,
                None => {
                    self.held.push(HeldRanking {
                        window,
                        ts: r.ts,
                        watermark: r.watermark,
                        best: Vec::with_capacity(self.n.min(16)),
                    });
                    self.held.len() - 1
                }
            };
            let held = &mut self.held[at];
            held.watermark = held.watermark.min(r.watermark);
            let result = r.value;
            insert_ranked(
                &mut held.best,
                self.n,
                result.key,
                result.value,
                &self.metric,
            );
        }
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut Vec<Record<WindowResult<K, V>>>,
    ) -> Result<(), BoxError> {
        self.hand_on(|window| window.end - 1 <= watermark, out);
        Ok(())
    }

    fn drain(&mut self, out: &mut Vec<Record<WindowResult<K, V>>>) -> Result<(), BoxError> {
        self.hand_on(|_| true, out);
        Ok(())
    }
}

struct TopNFactory<K, V, F> {
    n: usize,
    metric: F,
    _types: PhantomData<fn() -> (K, V)>,
}

/// The state table of the best results so far per open window.
const CANDIDATES: &str = "top-n-candidates";

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
    type Operator<S: StateBackend> = EventTime<TopNOperator<S, K, V, F>>;

    fn create<S: StateBackend>(
        &self,
        ctx: &OperatorContext,
        mut state: S,
    ) -> Result<Self::Operator<S>, BoxError> {
        let operator = TopNOperator {
            n: self.n,
            metric: self.metric.clone(),
            candidates: state.map_state(CANDIDATES)?,
            due: BTreeSet::new(),
        };
        Ok(EventTime::new(operator, ctx))
    }

    fn tables(&self) -> Vec<String> {
        vec![CANDIDATES.to_string()]
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
        while let Some(&(end, start)) = self.due.first() {
            if end - 1 > watermark {
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

impl<S, K, V, M, F> EventTimeOperator for TopNOperator<S, K, V, F>
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
    type Timers = NoTimers;

    /// Its input are window results, which come before the watermark that fired them.
    const LATENESS: Lateness = Lateness::Never;

    fn on_event(
        &mut self,
        _ts: Timestamp,
        event: Keyed<(Timestamp, Timestamp), WindowResult<K, V>>,
        _watermark: Timestamp,
        _out: &mut Output<Ranked<K, V>>,
    ) -> Result<Handled, BoxError> {
        let window = event.key;
        let result = event.value;
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
        Ok(Handled::Taken)
    }

    /// No timers: it acts on the watermark itself.
    fn timers(&mut self) -> &mut [NoTimers] {
        &mut []
    }

    fn on_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<Ranked<K, V>>,
    ) -> Result<(), BoxError> {
        self.advance(watermark, out)
    }

    fn tables(&mut self) -> Vec<&mut dyn StateTable> {
        vec![&mut self.candidates]
    }

    fn state_entries(&self) -> usize {
        self.due.len()
    }

    fn restore(&mut self, _watermark: Timestamp) -> Result<(), BoxError> {
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

    fn result(
        key: &'static str,
        start: i64,
        value: i32,
        watermark: i64,
    ) -> Record<WindowResult<&'static str, i32>> {
        Record {
            ts: start + 9,
            watermark,
            value: WindowResult {
                key,
                window: Window {
                    start,
                    end: start + 10,
                },
                value,
                is_update: false,
                timing: crate::window::Timing::OnTime,
            },
        }
    }

    #[test]
    fn local_top_n_hands_on_each_windows_best_when_its_watermark_makes_it_due() {
        let mut local = LocalTopN {
            n: 2,
            metric: |v: &i32| *v,
            held: Vec::new(),
        };
        let mut out = Vec::new();
        let mut update = result("late", 0, 99, 3);
        update.value.is_update = true;
        let records = vec![
            result("a", 0, 5, 3),
            result("b", 0, 9, 3),
            result("c", 10, 1, 3),
            result("d", 0, 7, 2),
            update.clone(),
        ];
        local.process(records, &mut out).unwrap();
        // Only the update went on at once.
        assert_eq!(out, vec![update]);
        out.clear();
        local.on_watermark(9, &mut out).unwrap();
        // Window [0, 10): its best two, best first, with the lowest watermark of its results.
        let best: Vec<_> = out
            .iter()
            .map(|r| (r.value.key, r.value.value, r.watermark, r.ts))
            .collect();
        assert_eq!(best, vec![("b", 9, 2, 9), ("d", 7, 2, 9)]);
        out.clear();
        // Window [10, 20) is not due yet; the end of input hands it on.
        local.on_watermark(18, &mut out).unwrap();
        assert!(out.is_empty());
        local.drain(&mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].value.key, "c");
    }
}

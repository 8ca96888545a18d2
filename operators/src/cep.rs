//! Complex event processing: sequence patterns per key, in the spirit of FlinkCEP.
//! **This is where a key's events run through the pattern** ([`CepOperator::advance`]).
//!
//! ```ignore
//! let pattern = Pattern::begin("placed").where_(|e: &Ev| e.kind == "OrderPlaced")
//!     .followed_by("paid").where_(|e: &Ev| e.kind == "PaymentProcessed")
//!     .within(Duration::from_secs(30));
//! orders.key_by(|e| e.order_id.clone()).pattern(pattern)   // Stream<CepOutput<Ev>>
//! ```
//!
//! # Semantics
//! - Events are buffered per key and fed to the pattern in event-time order once the
//!   watermark reaches them (ties in arrival order), so matches do not depend on arrival
//!   order. An event below the watermark when it arrives is late: dropped and counted.
//! - Every event that satisfies the first stage starts a partial match. A partial match
//!   waiting for stage `s` takes the next event that satisfies `s`'s condition. If `s` was
//!   added with [`Pattern::next`] (strict contiguity) any other event ends the partial match
//!   silently; with [`Pattern::followed_by`] (relaxed contiguity) other events are skipped
//!   ("skip till next match": the match continues with the first fitting event only).
//! - With [`Pattern::within`], a match must end less than `within` after its first event. A
//!   partial match that can no longer make it (the next event is too late, or the watermark
//!   passed its deadline) is emitted as [`CepOutput::TimedOut`], naming the stage it waited
//!   for, with event time `first + within - 1`; completed matches are [`CepOutput::Matched`]
//!   with the time of their last event.
//! - Not implemented yet: `optional`, `times(n)`, `one_or_more` / `until`, after-match skip
//!   strategies other than skip-till-next, and a separate timeout output.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};
use weir_engine::error::BoxError;
use weir_engine::metrics::Counter;
use weir_engine::operator::OperatorFactory;
use weir_engine::time::duration_ms;
use weir_engine::{
    Data, Keyed, KeyedOperator, KeyedStream, MapState, OperatorContext, Output, Record,
    StateBackend, StateKey, StateValue, Stream, Timestamp,
};

use crate::snapshot::{restored_watermark, save_watermark};
use crate::time_order::{insert_by_time, take_due, TimeOrdered};
use crate::window::Timers;

type Condition<T> = Arc<dyn Fn(&T) -> bool + Send + Sync>;

/// How a stage follows the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contiguity {
    /// The very next event of the key must fit (`next`).
    Strict,
    /// Events that do not fit are skipped (`followed_by`).
    Relaxed,
}

struct Stage<T> {
    name: String,
    condition: Condition<T>,
    contiguity: Contiguity,
}

impl<T> Clone for Stage<T> {
    fn clone(&self) -> Self {
        Stage {
            name: self.name.clone(),
            condition: self.condition.clone(),
            contiguity: self.contiguity,
        }
    }
}

/// A sequence of named stages, each with a condition.
pub struct Pattern<T> {
    stages: Vec<Stage<T>>,
    within: Option<i64>,
}

impl<T> Clone for Pattern<T> {
    fn clone(&self) -> Self {
        Pattern {
            stages: self.stages.clone(),
            within: self.within,
        }
    }
}

impl<T> std::fmt::Debug for Pattern<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl<T> Pattern<T> {
    /// A pattern whose first stage is `name` (any event, until [`Pattern::where_`]).
    pub fn begin(name: &str) -> Self {
        Pattern {
            stages: vec![Stage {
                name: name.to_string(),
                condition: Arc::new(|_| true),
                contiguity: Contiguity::Relaxed,
            }],
            within: None,
        }
    }

    /// The condition of the last stage added.
    pub fn where_(mut self, condition: impl Fn(&T) -> bool + Send + Sync + 'static) -> Self {
        if let Some(stage) = self.stages.last_mut() {
            stage.condition = Arc::new(condition);
        }
        self
    }

    /// A stage that must be the very next event of the key (strict contiguity).
    pub fn next(self, name: &str) -> Self {
        self.then(name, Contiguity::Strict)
    }

    /// A stage that may come after other events of the key (relaxed contiguity).
    pub fn followed_by(self, name: &str) -> Self {
        self.then(name, Contiguity::Relaxed)
    }

    /// A whole match must end less than `within` after its first event.
    pub fn within(mut self, within: Duration) -> Self {
        self.within = Some(duration_ms(within).max(1));
        self
    }

    fn then(mut self, name: &str, contiguity: Contiguity) -> Self {
        self.stages.push(Stage {
            name: name.to_string(),
            condition: Arc::new(|_| true),
            contiguity,
        });
        self
    }

    /// `placed -> paid within 30000 ms` (`->` relaxed, `=>` strict).
    pub fn describe(&self) -> String {
        let mut text = String::new();
        for (i, stage) in self.stages.iter().enumerate() {
            if i > 0 {
                text.push_str(match stage.contiguity {
                    Contiguity::Strict => " => ",
                    Contiguity::Relaxed => " -> ",
                });
            }
            text.push_str(&stage.name);
        }
        if let Some(within) = self.within {
            text.push_str(&format!(" within {within} ms"));
        }
        text
    }
}

/// What a pattern produces for a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CepOutput<T> {
    /// All stages matched: the events by stage name, in order.
    Matched {
        /// `(stage, event time, event)` for every stage.
        events: Vec<(String, Timestamp, T)>,
    },
    /// The match could not be completed within the pattern's time.
    TimedOut {
        /// The stages matched so far.
        events: Vec<(String, Timestamp, T)>,
        /// The stage it waited for.
        missing: String,
        /// When the match had to be complete by (first event + within), exclusive.
        deadline: Timestamp,
    },
}

/// Adds [`CepExt::pattern`] to keyed streams.
pub trait CepExt<T> {
    /// Runs `pattern` over each key's events (see the module docs).
    fn pattern(self, pattern: Pattern<T>) -> Stream<CepOutput<T>>;
}

impl<K, T, KF> CepExt<T> for KeyedStream<K, T, KF>
where
    K: StateKey + weir_engine::StableHash + Data,
    T: StateValue + Data,
    KF: Fn(&T) -> K + Clone + Send + 'static,
{
    fn pattern(self, pattern: Pattern<T>) -> Stream<CepOutput<T>> {
        if !self.stream().has_timestamps() {
            self.stream().invalid(
                "a pattern runs in event-time order: call .timestamps(..) before .key_by(..)"
                    .into(),
            );
        }
        let detail = pattern.describe();
        self.process(
            "cep",
            detail,
            CepFactory {
                pattern,
                _key: PhantomData,
            },
        )
    }
}

struct CepFactory<K, T> {
    pattern: Pattern<T>,
    _key: PhantomData<fn() -> K>,
}

impl<K: StateKey + Data, T: StateValue + Data> OperatorFactory for CepFactory<K, T> {
    type Key = K;
    type In = T;
    type Out = CepOutput<T>;
    type Operator<S: StateBackend> = CepOperator<S, K, T>;

    fn create<S: StateBackend>(
        &self,
        ctx: &OperatorContext,
        mut state: S,
    ) -> Result<Self::Operator<S>, BoxError> {
        Ok(CepOperator {
            pattern: self.pattern.clone(),
            keys: state.map_state("cep-keys")?,
            timers: Timers::new(),
            watermark: Timestamp::MIN,
            late: ctx.metrics.late_events.clone(),
        })
    }
}

/// A match in progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Partial<T> {
    /// The stage it waits for.
    next: usize,
    /// `(stage, time, event)` matched so far.
    events: Vec<(usize, Timestamp, T)>,
}

impl<T> Partial<T> {
    fn start(&self) -> Timestamp {
        self.events.first().map_or(Timestamp::MIN, |e| e.1)
    }
}

/// The state of one key: events waiting for the watermark, and matches in progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyState<T> {
    /// Events waiting for the watermark.
    pending: TimeOrdered<T>,
    partials: Vec<Partial<T>>,
}

impl<T> Default for KeyState<T> {
    fn default() -> Self {
        KeyState {
            pending: Vec::new(),
            partials: Vec::new(),
        }
    }
}

/// One worker of a pattern.
pub struct CepOperator<S: StateBackend, K: StateKey, T: StateValue> {
    pattern: Pattern<T>,
    keys: S::Map<K, KeyState<T>>,
    timers: Timers<K>,
    watermark: Timestamp,
    late: Counter,
}

impl<S: StateBackend, K: StateKey, T: StateValue> std::fmt::Debug for CepOperator<S, K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CepOperator")
            .field("pattern", &self.pattern.describe())
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl<T: Clone> Pattern<T> {
    fn named(&self, events: &[(usize, Timestamp, T)]) -> Vec<(String, Timestamp, T)> {
        events
            .iter()
            .map(|(s, ts, e)| (self.stages[*s].name.clone(), *ts, e.clone()))
            .collect()
    }

    fn timed_out(&self, p: &Partial<T>, within: i64) -> CepOutput<T> {
        CepOutput::TimedOut {
            events: self.named(&p.events),
            missing: self.stages[p.next].name.clone(),
            deadline: p.start().saturating_add(within),
        }
    }

    /// Feeds one event (the next in time order) to a key's partial matches.
    fn feed(
        &self,
        partials: &mut Vec<Partial<T>>,
        ts: Timestamp,
        event: &T,
        out: &mut Vec<(Timestamp, CepOutput<T>)>,
    ) {
        if let Some(within) = self.within {
            partials.retain(|p| {
                let alive = ts.saturating_sub(p.start()) < within;
                if !alive {
                    out.push((
                        p.start().saturating_add(within) - 1,
                        self.timed_out(p, within),
                    ));
                }
                alive
            });
        }
        let last = self.stages.len() - 1;
        let mut kept = Vec::with_capacity(partials.len() + 1);
        for mut p in partials.drain(..) {
            let stage = &self.stages[p.next];
            if (stage.condition)(event) {
                p.events.push((p.next, ts, event.clone()));
                if p.next == last {
                    out.push((
                        ts,
                        CepOutput::Matched {
                            events: self.named(&p.events),
                        },
                    ));
                    continue;
                }
                p.next += 1;
            } else if stage.contiguity == Contiguity::Strict {
                continue;
            }
            kept.push(p);
        }
        if (self.stages[0].condition)(event) {
            let first = Partial {
                next: 1,
                events: vec![(0, ts, event.clone())],
            };
            if last == 0 {
                out.push((
                    ts,
                    CepOutput::Matched {
                        events: self.named(&first.events),
                    },
                ));
            } else {
                kept.push(first);
            }
        }
        *partials = kept;
    }
}

impl<S, K, T> CepOperator<S, K, T>
where
    S: StateBackend,
    K: StateKey + Data,
    T: StateValue + Data,
{
    /// The next time a key needs attention: its earliest pending event or deadline.
    fn next_timer(&self, state: &KeyState<T>) -> Option<Timestamp> {
        let pending = state.pending.first().map(|(ts, _)| *ts);
        let deadline = self.pattern.within.and_then(|within| {
            state
                .partials
                .iter()
                .map(|p| p.start().saturating_add(within) - 1)
                .min()
        });
        pending.into_iter().chain(deadline).min()
    }

    /// Runs every key with due timers up to the watermark, in event-time order.
    fn advance(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<CepOutput<T>>,
    ) -> Result<(), BoxError> {
        self.watermark = self.watermark.max(watermark);
        let w = self.watermark;
        let mut due = FxHashSet::default();
        while let Some((_, keys)) = self.timers.pop_due(|t| t <= w) {
            due.extend(keys);
        }
        let mut emitted = Vec::new();
        for key in due {
            let Some(mut state) = self.keys.take(&key)? else {
                continue;
            };
            for (ts, event) in take_due(&mut state.pending, w) {
                self.pattern
                    .feed(&mut state.partials, ts, &event, &mut emitted);
            }
            if let Some(within) = self.pattern.within {
                let pattern = &self.pattern;
                state.partials.retain(|p| {
                    let deadline = p.start().saturating_add(within) - 1;
                    if deadline <= w {
                        emitted.push((deadline, pattern.timed_out(p, within)));
                    }
                    deadline > w
                });
            }
            if let Some(t) = self.next_timer(&state) {
                self.timers.register(t, key.clone());
                self.keys.put(key, state)?;
            }
            for (ts, result) in emitted.drain(..) {
                out.emit(ts, result);
            }
        }
        Ok(())
    }
}

impl<S, K, T> KeyedOperator for CepOperator<S, K, T>
where
    S: StateBackend,
    K: StateKey + Data,
    T: StateValue + Data,
{
    type Key = K;
    type In = T;
    type Out = CepOutput<T>;

    fn process(
        &mut self,
        records: Vec<Record<Keyed<K, T>>>,
        out: &mut Output<CepOutput<T>>,
    ) -> Result<(), BoxError> {
        let mut late = 0;
        for r in records {
            if r.watermark > self.watermark {
                self.advance(r.watermark, out)?;
            }
            let ts = r.ts;
            if ts <= self.watermark {
                late += 1;
                continue;
            }
            let Keyed { key, value } = r.value;
            self.keys.update(&key, KeyState::default, |state| {
                insert_by_time(&mut state.pending, ts, value);
            })?;
            self.timers.register(ts, key);
        }
        self.late.inc_by(late);
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut Output<CepOutput<T>>,
    ) -> Result<(), BoxError> {
        // The runner forwards the watermark after this.
        self.advance(watermark, out)
    }

    fn state_entries(&self) -> usize {
        self.keys.len()
    }

    fn snapshot(&mut self) -> Result<serde_json::Value, BoxError> {
        self.keys.flush()?;
        save_watermark(self.watermark)
    }

    fn restore(&mut self, snapshots: &[serde_json::Value]) -> Result<(), BoxError> {
        self.watermark = restored_watermark(snapshots)?;
        let mut restored = Vec::new();
        self.keys.scan(|key, state| restored.push((key, state)))?;
        for (key, state) in restored {
            if let Some(t) = self.next_timer(&state) {
                self.timers.register(t, key);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use weir_engine::{Job, RunOptions, Watermarks};

    use super::*;
    use crate::test_support::{Collect, VecSource};

    /// `(ts, order, step)`.
    type Ev = (i64, u32, String);

    fn events(list: &[(i64, u32, &str)]) -> Vec<Ev> {
        list.iter()
            .map(|&(ts, order, step)| (ts, order, step.to_string()))
            .collect()
    }

    /// Runs `pattern` on `events` (in this arrival order) at P = 1 and P = 2; both must give
    /// the same results, returned as `(order, outcome, stage names)`, sorted.
    fn outcomes(pattern: Pattern<Ev>, events: Vec<Ev>) -> Vec<(u32, &'static str, String)> {
        let mut results = Vec::new();
        for parallelism in [1, 2] {
            let job = Job::new("cep");
            let (sink, seen) = Collect::new();
            job.source("events", VecSource(events.clone()))
                .timestamps(|e| e.0, Watermarks::bounded(Duration::from_secs(5)))
                .key_by(|e: &Ev| e.1)
                .pattern(pattern.clone())
                .sink("out", sink);
            let options = RunOptions {
                parallelism,
                ..RunOptions::default()
            };
            job.run(&options).expect("the job runs");
            let seen = seen.lock().expect("not poisoned").clone();
            let mut summary: Vec<_> = seen
                .into_iter()
                .map(|o| match o {
                    CepOutput::Matched { events } => (
                        events[0].2 .1,
                        "matched",
                        events
                            .iter()
                            .map(|e| e.0.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                    CepOutput::TimedOut {
                        events, missing, ..
                    } => (events[0].2 .1, "timed out", format!("missing {missing}")),
                })
                .collect();
            summary.sort();
            results.push(summary);
        }
        assert_eq!(results[0], results[1], "P=1 and P=2 agree");
        results.swap_remove(0)
    }

    fn saga(step_two: fn(Pattern<Ev>, &str) -> Pattern<Ev>) -> Pattern<Ev> {
        let placed = Pattern::begin("placed").where_(|e: &Ev| e.2 == "placed");
        step_two(placed, "reserved")
            .where_(|e: &Ev| e.2 == "reserved")
            .followed_by("paid")
            .where_(|e: &Ev| e.2 == "paid")
            .within(Duration::from_secs(10))
    }

    #[test]
    fn relaxed_strict_timeouts_and_event_time_order() {
        let events = events(&[
            (1_000, 1, "placed"),
            (1_500, 1, "noise"),
            (2_000, 1, "reserved"),
            (3_000, 1, "paid"), // order 1 completes
            (1_100, 2, "placed"),
            (2_100, 2, "reserved"), // order 2 never pays: times out waiting for "paid"
            // Order 3 arrives out of order: paid and reserved before placed, by event time
            // after it.
            (4_300, 3, "paid"),
            (4_200, 3, "reserved"),
            (4_100, 3, "placed"),
            (5_000, 4, "placed"),
            (16_000, 4, "reserved"), // too late: more than 10 s after placed
            (30_000, 5, "end"),
        ]);
        assert_eq!(
            outcomes(saga(Pattern::followed_by), events.clone()),
            vec![
                (1, "matched", "placed,reserved,paid".to_string()),
                (2, "timed out", "missing paid".to_string()),
                (3, "matched", "placed,reserved,paid".to_string()),
                (4, "timed out", "missing reserved".to_string()),
            ]
        );
        // Strict: "reserved" must follow "placed" at once; the noise ends order 1's match.
        assert_eq!(
            outcomes(saga(Pattern::next), events),
            vec![
                (2, "timed out", "missing paid".to_string()),
                (3, "matched", "placed,reserved,paid".to_string()),
                (4, "timed out", "missing reserved".to_string()),
            ]
        );
    }
}

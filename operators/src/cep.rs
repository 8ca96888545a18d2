//! Complex event processing: sequence patterns per key, in the spirit of FlinkCEP.
//! **This is where a key's events run through the pattern** ([`CepOperator::run_key`]).
//!
//! ```ignore
//! let pattern = Pattern::begin("placed").where_(|e: &Ev| e.kind == "OrderPlaced")
//!     .followed_by("retry").where_(|e: &Ev| e.kind == "PaymentFailed").one_or_more().optional()
//!     .followed_by("paid").where_(|e: &Ev| e.kind == "PaymentProcessed")
//!     .within(Duration::from_secs(30));
//! let (matches, timeouts) = orders.key_by(|e| e.order_id.clone()).pattern_with_timeouts(pattern);
//! ```
//!
//! # Semantics (FlinkCEP's defaults, after-match skip strategy "no skip")
//! - Events are buffered per key and fed to the pattern in event-time order once the
//!   watermark reaches them (ties in arrival order), so matches do not depend on arrival
//!   order. An event below the watermark when it arrives is late: dropped and counted.
//! - A stage takes one event by default; [`Pattern::times`]`(n)` exactly `n`,
//!   [`Pattern::one_or_more`] one or more (a *looping* stage), and [`Pattern::optional`]
//!   makes it skippable (`times(n).optional()`: 0 or `n`). [`Pattern::until`] stops a loop:
//!   once it has taken an event, an event satisfying the `until` condition is not taken and
//!   ends the loop (the next stage may still take it).
//! - **Contiguity.** A stage added with [`Pattern::next`] must take the event right after
//!   the previous stage's last one; with [`Pattern::followed_by`] events that do *not* fit
//!   are skipped ("skip till next match": an event that fits is always taken, there is no
//!   branch that ignores it; FlinkCEP's `followedByAny` does not exist here). Inside a loop
//!   (`times`, `one_or_more`) events that do not fit are skipped too, unless
//!   [`Pattern::consecutive`] makes the loop strict. An event that does not fit a strict
//!   stage ends that way of continuing the match; a partial match that may also go on with
//!   a later stage (the current one is satisfied or optional) keeps that way.
//! - **Which matches.** Every event fitting the first stage starts a partial match. A
//!   match is emitted each time a partial match takes an event after which every remaining
//!   stage is optional or satisfied; it goes on if it can take more (a loop, a trailing
//!   optional stage). So `a b+` on `a b1 b2` gives `{a b1}` and `{a b1 b2}`; `a b? c` on
//!   `a b c` gives `{a b c}` and `{a c}`; `c a+ b` on `c d a1 a2 a3 d a4 b` gives `{c a1 b}`,
//!   `{c a1 a2 b}`, `{c a1 a2 a3 b}` and `{c a1 a2 a3 a4 b}` (with `consecutive()`: the
//!   first three), as FlinkCEP with `noSkip`. A match has the event time of its last event.
//! - **Timeouts.** With [`Pattern::within`], a match must end less than `within` after its
//!   first event. A partial match that can no longer make it (the next event is too late,
//!   or the watermark passed its deadline) is a timeout, naming the first stage it still
//!   needed, with event time `first + within - 1`; one that had already completed (it was
//!   only waiting to extend a loop or a trailing optional stage) is dropped silently.
//!   Timeouts go to a separate output ([`CepExt::pattern_with_timeouts`]);
//!   [`CepExt::pattern`] drops them. Without `within`, partial matches of a pattern ending
//!   in a loop or an optional stage live as long as the key has events: use `within`.
//! - State: each key's buffered events and partial matches are one entry of a state table
//!   (memory or RocksDB), saved by checkpoints; timers are rebuilt from it on restore.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_engine::error::BoxError;
use weir_engine::operator::OperatorFactory;
use weir_engine::time::duration_ms;
use weir_engine::{
    Data, EventTime, EventTimeOperator, Handled, Keyed, KeyedStream, Lateness, MapState,
    OperatorContext, Output, Routed, StateBackend, StateKey, StateTable, StateValue, Stream,
    TimerQueue, Timestamp,
};

use crate::time_order::{insert_by_time, take_due, TimeOrdered};

type Condition<T> = Arc<dyn Fn(&T) -> bool + Send + Sync>;

/// How a stage follows the one before it (or a loop's events follow each other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Contiguity {
    /// The very next event of the key must fit (`next`, `consecutive`).
    Strict,
    /// Events that do not fit are skipped (`followed_by`, loops by default).
    Relaxed,
}

struct Stage<T> {
    name: String,
    condition: Condition<T>,
    /// Relative to the previous stage's last event.
    contiguity: Contiguity,
    /// Between the events of a looping stage.
    inner: Contiguity,
    /// Events it needs (unless optional) and may take (`None`: unbounded).
    min: u32,
    max: Option<u32>,
    optional: bool,
    /// Stops a loop once it has taken an event.
    until: Option<Condition<T>>,
}

impl<T> Clone for Stage<T> {
    fn clone(&self) -> Self {
        Stage {
            name: self.name.clone(),
            condition: self.condition.clone(),
            contiguity: self.contiguity,
            inner: self.inner,
            min: self.min,
            max: self.max,
            optional: self.optional,
            until: self.until.clone(),
        }
    }
}

impl<T> Stage<T> {
    fn new(name: &str, contiguity: Contiguity) -> Self {
        Stage {
            name: name.to_string(),
            condition: Arc::new(|_| true),
            contiguity,
            inner: Contiguity::Relaxed,
            min: 1,
            max: Some(1),
            optional: false,
            until: None,
        }
    }

    /// With `count` events taken, the pattern may go on to the next stage.
    fn satisfied(&self, count: u32) -> bool {
        count >= self.min || (self.optional && count == 0)
    }

    /// With `count` events taken, the stage may take another.
    fn open(&self, count: u32) -> bool {
        self.max.is_none_or(|max| count < max)
    }

    /// Whether an event that the stage does not take may be skipped.
    fn skips(&self, count: u32) -> Contiguity {
        if count == 0 {
            self.contiguity
        } else {
            self.inner
        }
    }

    /// `name`, `name?`, `name{3}`, `name+`.
    fn describe(&self) -> String {
        let quantifier = match (self.min, self.max) {
            (1, Some(1)) => String::new(),
            (_, None) => "+".into(),
            (_, Some(n)) => format!("{{{n}}}"),
        };
        let optional = if self.optional { "?" } else { "" };
        format!("{}{quantifier}{optional}", self.name)
    }
}

/// A sequence of named stages, each with a condition and a quantifier.
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
            stages: vec![Stage::new(name, Contiguity::Relaxed)],
            within: None,
        }
    }

    fn last(&mut self) -> &mut Stage<T> {
        let at = self.stages.len() - 1;
        &mut self.stages[at]
    }

    /// The condition of the last stage added.
    pub fn where_(mut self, condition: impl Fn(&T) -> bool + Send + Sync + 'static) -> Self {
        self.last().condition = Arc::new(condition);
        self
    }

    /// A stage that must take the very next event of the key (strict contiguity).
    pub fn next(self, name: &str) -> Self {
        self.then(name, Contiguity::Strict)
    }

    /// A stage that may come after other events of the key (relaxed contiguity).
    pub fn followed_by(self, name: &str) -> Self {
        self.then(name, Contiguity::Relaxed)
    }

    /// The last stage may be left out.
    pub fn optional(mut self) -> Self {
        self.last().optional = true;
        self
    }

    /// The last stage takes exactly `n` events (`n >= 1`; 0 is taken as 1).
    pub fn times(mut self, n: u32) -> Self {
        let stage = self.last();
        stage.min = n.max(1);
        stage.max = Some(n.max(1));
        self
    }

    /// The last stage takes one or more events (a loop).
    pub fn one_or_more(mut self) -> Self {
        let stage = self.last();
        stage.min = 1;
        stage.max = None;
        self
    }

    /// The events of the last stage's loop must follow each other directly (strict).
    pub fn consecutive(mut self) -> Self {
        self.last().inner = Contiguity::Strict;
        self
    }

    /// Ends the last stage's loop at the first event satisfying `stop` (not taken).
    pub fn until(mut self, stop: impl Fn(&T) -> bool + Send + Sync + 'static) -> Self {
        self.last().until = Some(Arc::new(stop));
        self
    }

    /// A whole match must end less than `within` after its first event.
    pub fn within(mut self, within: Duration) -> Self {
        self.within = Some(duration_ms(within).max(1));
        self
    }

    fn then(mut self, name: &str, contiguity: Contiguity) -> Self {
        self.stages.push(Stage::new(name, contiguity));
        self
    }

    /// `placed -> retry+? => paid within 30000 ms` (`->` relaxed, `=>` strict).
    pub fn describe(&self) -> String {
        let mut text = String::new();
        for (i, stage) in self.stages.iter().enumerate() {
            if i > 0 {
                text.push_str(match stage.contiguity {
                    Contiguity::Strict => " => ",
                    Contiguity::Relaxed => " -> ",
                });
            }
            text.push_str(&stage.describe());
        }
        if let Some(within) = self.within {
            text.push_str(&format!(" within {within} ms"));
        }
        text
    }
}

/// A complete match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Match<T> {
    /// `(stage, event time, event)` for every event taken, in order.
    pub events: Vec<(String, Timestamp, T)>,
}

/// A partial match that could not be completed within the pattern's time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimedOut<T> {
    /// The events matched so far.
    pub events: Vec<(String, Timestamp, T)>,
    /// The first stage it still needed.
    pub missing: String,
    /// When the match had to be complete by (first event + within), exclusive.
    pub deadline: Timestamp,
}

/// What the pattern operator produces for a key (split into two streams by
/// [`CepExt::pattern_with_timeouts`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CepOutput<T> {
    /// A complete match.
    Matched(Match<T>),
    /// A timed-out partial match.
    TimedOut(TimedOut<T>),
}

/// Adds CEP patterns to keyed streams.
pub trait CepExt<T> {
    /// Runs `pattern` over each key's events (see the module docs); the matches. Partial
    /// matches that time out are dropped.
    fn pattern(self, pattern: Pattern<T>) -> Stream<Match<T>>;

    /// Like [`CepExt::pattern`], and the timed-out partial matches as a second stream (the
    /// timeout output; give it a sink too).
    fn pattern_with_timeouts(self, pattern: Pattern<T>) -> (Stream<Match<T>>, Stream<TimedOut<T>>);
}

impl<K, T, KF> CepExt<T> for KeyedStream<K, T, KF>
where
    K: StateKey + weir_engine::StableHash + Data,
    T: StateValue + Data,
    KF: Fn(&T) -> K + Clone + Send + 'static,
{
    fn pattern(self, pattern: Pattern<T>) -> Stream<Match<T>> {
        let outputs = run_pattern(self, pattern, false);
        outputs
            .clone()
            .flat_map(|o| match o {
                CepOutput::Matched(m) => Some(m),
                CepOutput::TimedOut(_) => None,
            })
            .uid_names(&outputs)
    }

    fn pattern_with_timeouts(self, pattern: Pattern<T>) -> (Stream<Match<T>>, Stream<TimedOut<T>>) {
        // The timeouts are a side output of the pattern: routed, not cloned.
        run_pattern(self, pattern, true).split("timeouts", |o| match o {
            CepOutput::Matched(m) => Routed::Main(m),
            CepOutput::TimedOut(t) => Routed::Side(t),
        })
    }
}

fn run_pattern<K, T, KF>(
    keyed: KeyedStream<K, T, KF>,
    pattern: Pattern<T>,
    timeouts: bool,
) -> Stream<CepOutput<T>>
where
    K: StateKey + weir_engine::StableHash + Data,
    T: StateValue + Data,
    KF: Fn(&T) -> K + Clone + Send + 'static,
{
    if !keyed.stream().has_timestamps() {
        keyed.stream().invalid(
            "a pattern runs in event-time order: call .timestamps(..) before .key_by(..)".into(),
        );
    }
    let detail = pattern.describe();
    keyed.process(
        "cep",
        detail,
        CepFactory {
            pattern,
            timeouts,
            _key: PhantomData,
        },
    )
}

struct CepFactory<K, T> {
    pattern: Pattern<T>,
    timeouts: bool,
    _key: PhantomData<fn() -> K>,
}

/// The state table of the matches in progress, by key.
const KEYS: &str = "cep-keys";

impl<K: StateKey + Data, T: StateValue + Data> OperatorFactory for CepFactory<K, T> {
    type Key = K;
    type In = T;
    type Out = CepOutput<T>;
    type Operator<S: StateBackend> = EventTime<CepOperator<S, K, T>>;

    fn create<S: StateBackend>(
        &self,
        ctx: &OperatorContext,
        mut state: S,
    ) -> Result<Self::Operator<S>, BoxError> {
        let operator = CepOperator {
            pattern: self.pattern.clone(),
            timeouts: self.timeouts,
            keys: state.map_state(KEYS)?,
            timers: state.timer_queue("timers")?,
            emitted: Vec::new(),
        };
        Ok(EventTime::new(operator, ctx))
    }

    fn tables(&self) -> Vec<String> {
        vec![KEYS.to_string()]
    }
}

/// A match in progress: a state of the pattern's NFA plus the events taken.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Partial<T> {
    /// The stage it is at (`< stages`).
    stage: usize,
    /// Events that stage has taken (`open(count)` holds).
    count: u32,
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
    timeouts: bool,
    keys: S::Map<K, KeyState<T>>,
    timers: S::Timers<K>,
    /// What running a key emits, before it goes out (kept to reuse its allocation).
    emitted: Vec<(Timestamp, CepOutput<T>)>,
}

impl<S: StateBackend, K: StateKey, T: StateValue> std::fmt::Debug for CepOperator<S, K, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CepOperator")
            .field("pattern", &self.pattern.describe())
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// Where a partial match may be when the next event comes: its own state, then, while the
/// stage it is at is satisfied, the next stages at count 0 (the NFA's proceed edges).
/// `None` once every stage is satisfied: the match is complete.
fn closure<T>(
    stages: &[Stage<T>],
    stage: usize,
    count: u32,
) -> impl Iterator<Item = Option<(usize, u32)>> + '_ {
    let mut at = Some(Some((stage, count)));
    std::iter::from_fn(move || {
        let current = at?;
        at = match current {
            Some((s, c)) if stages[s].satisfied(c) => {
                Some((s + 1 < stages.len()).then_some((s + 1, 0)))
            }
            _ => None,
        };
        Some(current)
    })
}

/// The match can end here: every stage from `stage` on is satisfied.
fn complete<T>(stages: &[Stage<T>], stage: usize, count: u32) -> bool {
    closure(stages, stage, count).any(|q| q.is_none())
}

/// After taking an event at `stage` (now `count` events): where the partial match is; a
/// stage that cannot take more is left. `None`: past the last stage.
fn after_take<T>(stages: &[Stage<T>], stage: usize, count: u32) -> Option<(usize, u32)> {
    if stages[stage].open(count) {
        Some((stage, count))
    } else {
        (stage + 1 < stages.len()).then_some((stage + 1, 0))
    }
}

impl<T: Clone> Pattern<T> {
    fn named(&self, events: &[(usize, Timestamp, T)]) -> Vec<(String, Timestamp, T)> {
        self.named_owned(events.to_vec())
    }

    fn named_owned(&self, events: Vec<(usize, Timestamp, T)>) -> Vec<(String, Timestamp, T)> {
        events
            .into_iter()
            .map(|(s, ts, e)| (self.stages[s].name.clone(), ts, e))
            .collect()
    }

    /// The timeout of `p`, unless it had completed already (then nothing is missing).
    fn timed_out(&self, p: &Partial<T>, within: i64) -> Option<TimedOut<T>> {
        let missing = closure(&self.stages, p.stage, p.count)
            .find_map(|q| q.filter(|(s, c)| !self.stages[*s].satisfied(*c)))?;
        Some(TimedOut {
            events: self.named(&p.events),
            missing: self.stages[missing.0].name.clone(),
            deadline: p.start().saturating_add(within),
        })
    }

    /// Drops the partial matches whose deadline (`first + within - 1`) is at or before
    /// `now`, reporting them as timeouts if `report`.
    fn expire(
        &self,
        partials: &mut Vec<Partial<T>>,
        now: Timestamp,
        report: bool,
        out: &mut Vec<(Timestamp, CepOutput<T>)>,
    ) {
        let Some(within) = self.within else {
            return;
        };
        partials.retain(|p| {
            let deadline = p.start().saturating_add(within) - 1;
            if deadline > now {
                return true;
            }
            if report {
                if let Some(t) = self.timed_out(p, within) {
                    out.push((deadline, CepOutput::TimedOut(t)));
                }
            }
            false
        });
    }

    /// Feeds one event (the next in time order) to a key's partial matches.
    fn feed(
        &self,
        partials: &mut Vec<Partial<T>>,
        ts: Timestamp,
        event: &T,
        report: bool,
        out: &mut Vec<(Timestamp, CepOutput<T>)>,
    ) {
        // Partial matches this event comes too late for (`ts - start >= within`).
        self.expire(partials, ts.saturating_sub(1), report, out);
        let stages = &self.stages;
        let mut kept = Vec::with_capacity(partials.len() + 1);
        let mut step = |events: Vec<(usize, Timestamp, T)>,
                        stage: usize,
                        count: u32,
                        kept: &mut Vec<Partial<T>>| {
            let started = !events.is_empty();
            let mut takes = Vec::new();
            let mut survivor = None;
            for q in closure(stages, stage, count) {
                let Some((s, c)) = q else { break };
                let st = &stages[s];
                if c > 0 && st.until.as_ref().is_some_and(|stop| stop(event)) {
                    // The loop ends here: this state neither takes nor skips the event.
                    continue;
                }
                if (st.condition)(event) {
                    takes.push((s, c));
                } else if survivor.is_none() && st.skips(c) == Contiguity::Relaxed && started {
                    survivor = Some((s, c));
                }
            }
            // The events are copied only for a take that is not the last use of them.
            let mut events = Some(events);
            let last = takes.len();
            for (i, (s, c)) in takes.into_iter().enumerate() {
                let mut taken = match events.take() {
                    Some(e) if i + 1 == last && survivor.is_none() => e,
                    Some(e) => {
                        let copy = e.clone();
                        events = Some(e);
                        copy
                    }
                    None => Vec::new(),
                };
                taken.push((s, ts, event.clone()));
                match after_take(stages, s, c + 1) {
                    Some((s2, c2)) => {
                        if complete(stages, s2, c2) {
                            let events = self.named(&taken);
                            out.push((ts, CepOutput::Matched(Match { events })));
                        }
                        kept.push(Partial {
                            stage: s2,
                            count: c2,
                            events: taken,
                        });
                    }
                    None => {
                        let events = self.named_owned(taken);
                        out.push((ts, CepOutput::Matched(Match { events })));
                    }
                }
            }
            if let (Some((stage, count)), Some(events)) = (survivor, events) {
                kept.push(Partial {
                    stage,
                    count,
                    events,
                });
            }
        };
        for p in partials.drain(..) {
            step(p.events, p.stage, p.count, &mut kept);
        }
        // Every event fitting the first stage (or, past optional first stages, a later
        // one) starts a partial match.
        step(Vec::new(), 0, 0, &mut kept);
        *partials = kept;
    }
}

impl<T> Pattern<T> {
    /// The next time a key needs attention: its earliest pending event or deadline.
    fn next_timer(&self, state: &KeyState<T>) -> Option<Timestamp> {
        let pending = state.pending.first().map(|(ts, _)| *ts);
        let deadline = self.within.and_then(|within| {
            state
                .partials
                .iter()
                .map(|p| p.start().saturating_add(within) - 1)
                .min()
        });
        pending.into_iter().chain(deadline).min()
    }
}

impl<S, K, T> CepOperator<S, K, T>
where
    S: StateBackend,
    K: StateKey + Data,
    T: StateValue + Data,
{
    /// Runs `key`, whose timer came out at watermark `w`, in event-time order.
    ///
    /// Each key with state has a timer at exactly its `next_timer` (registered when an
    /// event moved it earlier, or after the key ran); timers at other times are stale
    /// copies. So a popped timer runs its key only if the key has something due: the key
    /// runs once per watermark however many of its timers come out, with no set of due
    /// keys to build, and a stale timer costs one lookup.
    fn run_key(
        &mut self,
        key: K,
        w: Timestamp,
        out: &mut Output<CepOutput<T>>,
    ) -> Result<(), BoxError> {
        let CepOperator {
            pattern,
            timeouts,
            keys,
            timers,
            emitted,
        } = self;
        let ran = keys.modify(&key, |state| {
            if pattern.next_timer(state).is_none_or(|t| t > w) {
                return None;
            }
            for (ts, event) in take_due(&mut state.pending, w) {
                pattern.feed(&mut state.partials, ts, &event, *timeouts, emitted);
            }
            pattern.expire(&mut state.partials, w, *timeouts, emitted);
            Some(pattern.next_timer(state))
        })?;
        match ran.flatten() {
            None => {}
            Some(Some(next)) => timers.register(next, key)?,
            Some(None) => {
                keys.take(&key)?;
            }
        }
        for (ts, result) in emitted.drain(..) {
            out.emit(ts, result);
        }
        Ok(())
    }
}

impl<S, K, T> EventTimeOperator for CepOperator<S, K, T>
where
    S: StateBackend,
    K: StateKey + Data,
    T: StateValue + Data,
{
    type Key = K;
    type In = T;
    type Out = CepOutput<T>;
    type Timers = S::Timers<K>;

    /// Events wait for the watermark to pass them; one at or before it comes too late to
    /// take its place in time order.
    const LATENESS: Lateness = Lateness::AtOrBeforeWatermark;

    fn on_event(
        &mut self,
        ts: Timestamp,
        event: Keyed<K, T>,
        _watermark: Timestamp,
        _out: &mut Output<CepOutput<T>>,
    ) -> Result<Handled, BoxError> {
        let Keyed { key, value } = event;
        let pattern = &self.pattern;
        let earlier = self.keys.update(&key, KeyState::default, |state| {
            let earlier = pattern.next_timer(state).is_none_or(|next| ts < next);
            insert_by_time(&mut state.pending, ts, value);
            earlier
        })?;
        // The key's timer stays where it is unless this event is due before it.
        if earlier {
            self.timers.register(ts, key)?;
        }
        Ok(Handled::Taken)
    }

    fn timers(&mut self) -> &mut [S::Timers<K>] {
        std::slice::from_mut(&mut self.timers)
    }

    fn on_timer(
        &mut self,
        _queue: usize,
        _time: Timestamp,
        key: K,
        watermark: Timestamp,
        out: &mut Output<CepOutput<T>>,
    ) -> Result<(), BoxError> {
        self.run_key(key, watermark, out)
    }

    fn tables(&mut self) -> Vec<&mut dyn StateTable> {
        vec![&mut self.keys]
    }

    fn state_entries(&self) -> usize {
        self.keys.len()
    }

    fn restore(&mut self, _watermark: Timestamp) -> Result<(), BoxError> {
        let mut restored = Vec::new();
        self.keys.scan(|key, state| restored.push((key, state)))?;
        for (key, state) in restored {
            if let Some(t) = self.pattern.next_timer(&state) {
                self.timers.register(t, key)?;
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

    fn steps(events: &[(String, Timestamp, Ev)]) -> String {
        let named: Vec<String> = events
            .iter()
            .map(|(stage, ts, e)| format!("{stage}:{}@{ts}", e.2))
            .collect();
        format!("{}: {}", events[0].2 .1, named.join(" "))
    }

    /// Runs `pattern` on `events` (in this arrival order) at P = 1 and P = 2; both must give
    /// the same results. Returns the matches and the timeouts (two outputs), each as
    /// `order: stage:step@ts ..` lines (timeouts add `| missing STAGE`), sorted.
    fn outcomes(pattern: Pattern<Ev>, events: Vec<Ev>) -> (Vec<String>, Vec<String>) {
        let mut results = Vec::new();
        for parallelism in [1, 2] {
            let job = Job::new("cep");
            let (match_sink, matches) = Collect::new();
            let (timeout_sink, timeouts) = Collect::new();
            let (m, t) = job
                .source("events", VecSource(events.clone()))
                .timestamps(|e| e.0, Watermarks::bounded(Duration::from_secs(5)))
                .key_by(|e: &Ev| e.1)
                .pattern_with_timeouts(pattern.clone());
            m.map(|m| steps(&m.events)).sink("matches", match_sink);
            t.map(|t| format!("{} | missing {}", steps(&t.events), t.missing))
                .sink("timeouts", timeout_sink);
            let options = RunOptions {
                parallelism,
                ..RunOptions::default()
            };
            job.run(&options).expect("the job runs");
            results.push((
                crate::test_support::sorted(&matches),
                crate::test_support::sorted(&timeouts),
            ));
        }
        assert_eq!(results[0], results[1], "P=1 and P=2 agree");
        results.swap_remove(0)
    }

    fn step(name: &'static str) -> impl Fn(&Ev) -> bool + Send + Sync + 'static {
        move |e: &Ev| e.2 == name
    }

    fn saga(step_two: fn(Pattern<Ev>, &str) -> Pattern<Ev>) -> Pattern<Ev> {
        let placed = Pattern::begin("placed").where_(step("placed"));
        step_two(placed, "reserved")
            .where_(step("reserved"))
            .followed_by("paid")
            .where_(step("paid"))
            .within(Duration::from_secs(10))
    }

    fn lines(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
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
        let (matches, timeouts) = outcomes(saga(Pattern::followed_by), events.clone());
        assert_eq!(
            matches,
            lines(&[
                "1: placed:placed@1000 reserved:reserved@2000 paid:paid@3000",
                "3: placed:placed@4100 reserved:reserved@4200 paid:paid@4300",
            ])
        );
        assert_eq!(
            timeouts,
            lines(&[
                "2: placed:placed@1100 reserved:reserved@2100 | missing paid",
                "4: placed:placed@5000 | missing reserved",
            ])
        );
        // Strict: "reserved" must follow "placed" at once; the noise ends order 1's match
        // (silently: a broken match is not a timeout).
        let (matches, timeouts) = outcomes(saga(Pattern::next), events);
        assert_eq!(
            matches,
            lines(&["3: placed:placed@4100 reserved:reserved@4200 paid:paid@4300"])
        );
        assert_eq!(timeouts.len(), 2);
    }

    /// FlinkCEP's documented example for looping contiguity: `c a+ b` over
    /// `c d a1 a2 a3 d a4 b`.
    #[test]
    fn one_or_more_follows_flink_no_skip_relaxed_and_consecutive() {
        let input = events(&[
            (1, 1, "c"),
            (2, 1, "d"),
            (3, 1, "a"),
            (4, 1, "a"),
            (5, 1, "a"),
            (6, 1, "d"),
            (7, 1, "a"),
            (8, 1, "b"),
        ]);
        let pattern = |consecutive: bool| {
            let p = Pattern::begin("c")
                .where_(step("c"))
                .followed_by("a")
                .where_(step("a"))
                .one_or_more();
            let p = if consecutive { p.consecutive() } else { p };
            p.followed_by("b").where_(step("b"))
        };
        let (matches, timeouts) = outcomes(pattern(false), input.clone());
        assert_eq!(
            matches,
            lines(&[
                "1: c:c@1 a:a@3 a:a@4 a:a@5 a:a@7 b:b@8",
                "1: c:c@1 a:a@3 a:a@4 a:a@5 b:b@8",
                "1: c:c@1 a:a@3 a:a@4 b:b@8",
                "1: c:c@1 a:a@3 b:b@8",
            ])
        );
        assert!(timeouts.is_empty(), "no within: no timeouts");
        let (matches, _) = outcomes(pattern(true), input);
        assert_eq!(
            matches,
            lines(&[
                "1: c:c@1 a:a@3 a:a@4 a:a@5 b:b@8",
                "1: c:c@1 a:a@3 a:a@4 b:b@8",
                "1: c:c@1 a:a@3 b:b@8",
            ])
        );
    }

    #[test]
    fn a_trailing_loop_emits_each_extension_and_until_ends_a_loop() {
        let trailing = Pattern::begin("a")
            .where_(step("a"))
            .followed_by("b")
            .where_(step("b"))
            .one_or_more();
        let (matches, _) = outcomes(trailing, events(&[(1, 1, "a"), (2, 1, "b"), (3, 1, "b")]));
        assert_eq!(matches, lines(&["1: a:a@1 b:b@2", "1: a:a@1 b:b@2 b:b@3"]));
        // `a b+ c`, with and without `until(x)`: x ends the loop, so b@5 is never taken.
        let input = events(&[
            (1, 1, "a"),
            (2, 1, "b"),
            (3, 1, "b"),
            (4, 1, "x"),
            (5, 1, "b"),
            (6, 1, "c"),
        ]);
        let pattern = |until: bool| {
            let p = Pattern::begin("a")
                .where_(step("a"))
                .followed_by("b")
                .where_(step("b"))
                .one_or_more();
            let p = if until { p.until(step("x")) } else { p };
            p.followed_by("c").where_(step("c"))
        };
        assert_eq!(
            outcomes(pattern(false), input.clone()).0,
            lines(&[
                "1: a:a@1 b:b@2 b:b@3 b:b@5 c:c@6",
                "1: a:a@1 b:b@2 b:b@3 c:c@6",
                "1: a:a@1 b:b@2 c:c@6",
            ])
        );
        assert_eq!(
            outcomes(pattern(true), input).0,
            lines(&["1: a:a@1 b:b@2 b:b@3 c:c@6", "1: a:a@1 b:b@2 c:c@6"])
        );
    }

    #[test]
    fn optional_stages_give_the_match_with_and_without_them() {
        let pattern = Pattern::begin("a")
            .where_(step("a"))
            .followed_by("b")
            .where_(step("b"))
            .optional()
            .followed_by("c")
            .where_(step("c"));
        let (matches, _) = outcomes(
            pattern,
            events(&[
                (1, 1, "a"),
                (2, 1, "b"),
                (3, 1, "c"),
                (1, 2, "a"),
                (2, 2, "x"),
                (3, 2, "c"),
            ]),
        );
        assert_eq!(
            matches,
            lines(&["1: a:a@1 b:b@2 c:c@3", "1: a:a@1 c:c@3", "2: a:a@1 c:c@3"])
        );
        // A strict optional stage: x breaks "b right after a", but not "c after a".
        let strict = Pattern::begin("a")
            .where_(step("a"))
            .next("b")
            .where_(step("b"))
            .optional()
            .followed_by("c")
            .where_(step("c"));
        let (matches, _) = outcomes(
            strict,
            events(&[(1, 1, "a"), (2, 1, "x"), (3, 1, "b"), (4, 1, "c")]),
        );
        assert_eq!(matches, lines(&["1: a:a@1 c:c@4"]));
    }

    #[test]
    fn times_counts_with_relaxed_or_consecutive_loops() {
        let input = events(&[
            (1, 1, "a"),
            (2, 1, "b"),
            (3, 1, "x"),
            (4, 1, "b"),
            (5, 1, "b"),
        ]);
        let pattern = |consecutive: bool| {
            let p = Pattern::begin("a")
                .where_(step("a"))
                .followed_by("b")
                .where_(step("b"))
                .times(2);
            if consecutive {
                p.consecutive()
            } else {
                p
            }
        };
        assert_eq!(
            outcomes(pattern(false), input.clone()).0,
            lines(&["1: a:a@1 b:b@2 b:b@4"])
        );
        assert_eq!(outcomes(pattern(true), input).0, Vec::<String>::new());
    }

    #[test]
    fn timeouts_go_to_their_own_output_naming_the_first_missing_stage() {
        let pattern = |trailing_loop: bool| {
            let p = Pattern::begin("a")
                .where_(step("a"))
                .followed_by("b")
                .where_(step("b"))
                .one_or_more();
            let p = if trailing_loop {
                p
            } else {
                p.followed_by("c").where_(step("c"))
            };
            p.within(Duration::from_secs(10))
        };
        let input = events(&[
            (1_000, 1, "a"),
            (2_000, 1, "b"),
            (1_000, 2, "a"),
            (9_000, 2, "b"),
            (11_000, 2, "c"), // 10 s after a: too late
            (60_000, 3, "end"),
        ]);
        let (matches, timeouts) = outcomes(pattern(false), input.clone());
        assert!(matches.is_empty(), "{matches:?}");
        assert_eq!(
            timeouts,
            lines(&[
                "1: a:a@1000 b:b@2000 | missing c",
                "2: a:a@1000 b:b@9000 | missing c",
            ])
        );
        // `a b+`: complete after the first b, then only waiting to extend the loop, so its
        // expiry is not a timeout.
        let (matches, timeouts) = outcomes(pattern(true), input);
        assert_eq!(
            matches,
            lines(&["1: a:a@1000 b:b@2000", "2: a:a@1000 b:b@9000"])
        );
        assert!(timeouts.is_empty(), "{timeouts:?}");
        // `pattern` (no timeout output) gives the same matches.
        let job = Job::new("cep");
        let (sink, seen) = Collect::new();
        job.source("events", VecSource(events(&[(1, 1, "a"), (2, 1, "b")])))
            .timestamps(|e| e.0, Watermarks::bounded(Duration::from_secs(5)))
            .key_by(|e: &Ev| e.1)
            .pattern(pattern(true))
            .map(|m| steps(&m.events))
            .sink("matches", sink);
        job.run(&RunOptions::default()).expect("the job runs");
        assert_eq!(
            crate::test_support::sorted(&seen),
            lines(&["1: a:a@1 b:b@2"])
        );
    }
}

//! Keyed processing with per-key state, for logic that is not a window (alerts,
//! running totals, "first time X happens" events, joins that close on a deadline).
//!
//! - [`ProcessExt::process_with_state`]: a function sees each event with its key's state
//!   (created with `Default` on first use) and may emit any number of results, which carry
//!   the event's time.
//! - [`ProcessExt::process_with_timers`]: a [`TimerFunction`], Flink's
//!   `KeyedProcessFunction`: besides events it gets event-time timers, which fire once the
//!   watermark reaches their time, in time order, before any later record is handled, and
//!   processing-time timers, which fire once the wall clock reaches their time, even while
//!   no input arrives ([`TimerContext::register_processing_time_timer`];
//!   [`TimerContext::time_domain`] tells which fired). It may also keep map and list state
//!   per key, declared by name ([`TimerFunction::declare_state`], see
//!   [`crate::process_state`]).
//!
//! # Invariants (timers)
//! - A key's pending timers of both domains are kept with its state, so they survive a
//!   checkpoint and are rebuilt on restore, and at most one timer exists per key, domain
//!   and time. A processing-time timer whose time passed while the job was down fires
//!   right after the restore.
//! - Clearing a key's state also cancels its timers and clears its map and list state.
//! - Events are not dropped as late here: a function that cares compares the event's time
//!   with [`TimerContext::watermark`].

use std::marker::PhantomData;

use crate::process_state::{
    DeclareState, KeyedStates, ListStateDescriptor, ListStateHandle, MapStateDescriptor,
    MapStateHandle, OpenStates, StateNames,
};
use serde::{Deserialize, Serialize};
use weir_engine::error::BoxError;
use weir_engine::keys::StableHash;
use weir_engine::operator::OperatorFactory;
use weir_engine::query::{answer_from_map, Entry, QueryableTable, TableQuery};
use weir_engine::state::{StateError, UserKey};
use weir_engine::time::MIN_WATERMARK;
use weir_engine::{
    Data, EventTime, EventTimeOperator, Handled, Keyed, KeyedStream, Lateness, MapState,
    OperatorContext, Output, ProcessingClock, QueryError, StateBackend, StateKey, StateTable,
    StateValue, Stream, TimerQueue, Timestamp,
};

/// Per-key logic that is not a window, on keyed streams: [`ProcessExt::process_with_state`]
/// (a function with a state value per key) and [`ProcessExt::process_with_timers`] (a
/// [`TimerFunction`] with event-time timers, map and list state).
///
/// ```
/// use std::time::Duration;
/// use weir_engine::{Job, Timestamp, Watermarks};
/// use weir_operators::prelude::*;
/// # use weir_operators::doc_support::{sorted, Collect, VecSource};
///
/// // (account, event time in ms, amount): an alert with the balance each time an
/// // account's balance goes below zero.
/// type Tx = (&'static str, i64, i64);
/// let txs: Vec<Tx> = vec![("a", 1, 50), ("b", 2, -5), ("a", 3, -80), ("a", 4, 100), ("a", 5, -90)];
/// let (sink, seen) = Collect::new();
/// let job = Job::new("balances");
/// job.source("txs", VecSource(txs))
///     .timestamps(|t| t.1, Watermarks::bounded(Duration::ZERO))
///     .key_by(|t: &Tx| t.0.to_string())
///     .process_with_state("overdrawn", |account: &String, balance: &mut i64, _: Timestamp, t: &Tx, out: &mut Vec<(String, i64)>| {
///         let before = *balance;
///         *balance += t.2;
///         if before >= 0 && *balance < 0 {
///             out.push((account.clone(), *balance));
///         }
///     })
///     .sink("alerts", sink);
/// job.run(&Default::default())?;
/// assert_eq!(sorted(&seen), vec![("a".into(), -30), ("a".into(), -20), ("b".into(), -5)]);
/// # Ok::<(), weir_engine::EngineError>(())
/// ```
pub trait ProcessExt<K, T> {
    /// Runs `f(key, state, event_time, event, emit)` for every event, in stream order per key.
    fn process_with_state<S, O, F>(self, name: &str, f: F) -> Stream<O>
    where
        S: StateValue + Default,
        O: Data,
        F: Fn(&K, &mut S, Timestamp, &T, &mut Vec<O>) + Clone + Send + 'static;

    /// Runs `f` for every event, in stream order per key, and for every timer it registered
    /// once the watermark reaches the timer's time.
    fn process_with_timers<F>(self, name: &str, f: F) -> Stream<F::Out>
    where
        F: TimerFunction<K, T>;
}

impl<K, T, KF> ProcessExt<K, T> for KeyedStream<K, T, KF>
where
    K: StateKey + StableHash + Data,
    T: Data,
    KF: Fn(&T) -> K + Clone + Send + 'static,
{
    fn process_with_state<S, O, F>(self, name: &str, f: F) -> Stream<O>
    where
        S: StateValue + Default,
        O: Data,
        F: Fn(&K, &mut S, Timestamp, &T, &mut Vec<O>) + Clone + Send + 'static,
    {
        self.process(
            name,
            "per-key state".into(),
            TimerProcessFactory {
                f: Stateful {
                    f,
                    _types: PhantomData,
                },
                _types: PhantomData,
            },
        )
    }

    fn process_with_timers<F>(self, name: &str, f: F) -> Stream<F::Out>
    where
        F: TimerFunction<K, T>,
    {
        self.process(
            name,
            "per-key state and timers".into(),
            TimerProcessFactory {
                f,
                _types: PhantomData,
            },
        )
    }
}

/// A [`ProcessExt::process_with_state`] function: a [`TimerFunction`] that sets no timers.
#[derive(Clone)]
struct Stateful<F, S, O> {
    f: F,
    _types: PhantomData<fn() -> (S, O)>,
}

impl<K, T, S, O, F> TimerFunction<K, T> for Stateful<F, S, O>
where
    S: StateValue + Default,
    O: Data,
    F: Fn(&K, &mut S, Timestamp, &T, &mut Vec<O>) + Clone + Send + 'static,
{
    type State = S;
    type Out = O;

    fn on_event(
        &self,
        key: &K,
        state: &mut S,
        ts: Timestamp,
        event: &T,
        ctx: &mut TimerContext<O>,
    ) {
        (self.f)(key, state, ts, event, &mut ctx.emitted)
    }

    fn on_timer(&self, _: &K, _: &mut S, _: Timestamp, _: &mut TimerContext<O>) {}
}

/// A keyed function with state and event-time timers (Flink's `KeyedProcessFunction`).
pub trait TimerFunction<K, T>: Clone + Send + 'static {
    /// Per-key state, created with `Default` on a key's first event.
    type State: StateValue + Default;
    /// What it emits.
    type Out: Data;

    /// Handles one event of `key` with event time `ts`; results emitted carry `ts`.
    fn on_event(
        &self,
        key: &K,
        state: &mut Self::State,
        ts: Timestamp,
        event: &T,
        ctx: &mut TimerContext<Self::Out>,
    );

    /// A timer of `key` registered for `time` fired: the watermark reached `time` (an
    /// event-time timer) or the clock did (a processing-time timer;
    /// [`TimerContext::time_domain`] says which). Results emitted carry `time` as their
    /// event time.
    fn on_timer(
        &self,
        key: &K,
        state: &mut Self::State,
        time: Timestamp,
        ctx: &mut TimerContext<Self::Out>,
    );

    /// Declares the map and list state the function uses, by descriptor (none by
    /// default); each becomes a state table named like its descriptor:
    ///
    /// ```ignore
    /// const SEEN: MapStateDescriptor<String, u64> = MapStateDescriptor::new("seen");
    /// fn declare_state<D: DeclareState<K>>(&self, states: &mut D) {
    ///     states.map(&SEEN);
    /// }
    /// ```
    fn declare_state<D: DeclareState<K>>(&self, _states: &mut D) {}
}

/// Which clock a timer follows (Flink's `TimeDomain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeDomain {
    /// Event time: due once the watermark reaches the timer's time.
    EventTime,
    /// Processing time: due once the wall clock reaches the timer's time.
    ProcessingTime,
}

/// What a [`TimerFunction`] can do besides changing its state.
#[derive(Debug)]
pub struct TimerContext<O> {
    emitted: Vec<O>,
    /// Event-time timers asked for by this call.
    timers: Timers,
    /// Processing-time timers asked for by this call.
    processing: Timers,
    clear: bool,
    watermark: Timestamp,
    /// The domain of the timer that fired (in `on_timer`).
    domain: TimeDomain,
    clock: ProcessingClock,
    /// The declared map and list state, at the current key.
    states: KeyedStates,
}

/// The timers of one domain a call registered and deleted.
#[derive(Debug, Default)]
struct Timers {
    registered: Vec<Timestamp>,
    /// Applied before `registered`.
    deleted: Vec<Timestamp>,
}

impl Timers {
    fn register(&mut self, time: Timestamp) {
        self.registered.push(time);
    }

    fn delete(&mut self, time: Timestamp) {
        self.registered.retain(|&t| t != time);
        self.deleted.push(time);
    }

    fn clear(&mut self) {
        self.registered.clear();
        self.deleted.clear();
    }

    /// Applies the call's deletions and registrations to a key's `pending` timers, leaving
    /// in `registered` only the times that became new timers.
    fn apply(&mut self, pending: &mut Vec<Timestamp>) {
        let deleted = std::mem::take(&mut self.deleted);
        pending.retain(|t| !deleted.contains(t));
        self.registered.retain(|time| {
            let new = !pending.contains(time);
            if new {
                pending.push(*time);
            }
            new
        });
    }

    fn is_empty(&self) -> bool {
        self.registered.is_empty() && self.deleted.is_empty()
    }
}

impl<O> TimerContext<O> {
    /// Emits a result.
    pub fn emit(&mut self, value: O) {
        self.emitted.push(value);
    }

    /// Asks for [`TimerFunction::on_timer`] with `time` once the watermark reaches it (at
    /// once, if it already has). Registering the same time twice gives one timer.
    pub fn register_timer(&mut self, time: Timestamp) {
        self.timers.register(time);
    }

    /// Cancels the key's timer at `time` (Flink's `deleteEventTimeTimer`), whether it was
    /// registered earlier or in this call; a time without a timer is ignored. Registering
    /// the time again after this, in the same call or a later one, gives a timer again.
    pub fn delete_timer(&mut self, time: Timestamp) {
        self.timers.delete(time);
    }

    /// Asks for [`TimerFunction::on_timer`] with `time` once the wall clock reaches it
    /// (milliseconds since the Unix epoch, as [`TimerContext::current_processing_time`]),
    /// even if no input arrives then; at once if it has, after this call (Flink's
    /// `registerProcessingTimeTimer`). Registering the same time twice gives one timer.
    pub fn register_processing_time_timer(&mut self, time: Timestamp) {
        self.processing.register(time);
    }

    /// Cancels the key's processing-time timer at `time` (Flink's
    /// `deleteProcessingTimeTimer`), as [`TimerContext::delete_timer`] does for event time.
    pub fn delete_processing_time_timer(&mut self, time: Timestamp) {
        self.processing.delete(time);
    }

    /// The wall clock now, in milliseconds since the Unix epoch (the instance's clock: a
    /// manual one in tests).
    pub fn current_processing_time(&self) -> Timestamp {
        self.clock.now()
    }

    /// In [`TimerFunction::on_timer`]: whether an event-time or a processing-time timer
    /// fired. In [`TimerFunction::on_event`] it is [`TimeDomain::EventTime`].
    pub fn time_domain(&self) -> TimeDomain {
        self.domain
    }

    /// Removes the key's state and cancels its timers, after this call returns.
    pub fn clear_state(&mut self) {
        self.clear = true;
    }

    /// The watermark before the current event (for an event: is it late?).
    pub fn watermark(&self) -> Timestamp {
        self.watermark
    }

    /// The current key's map in the map state `descriptor`, which the function declared
    /// ([`TimerFunction::declare_state`]).
    pub fn map_state<UK: UserKey, UV: StateValue>(
        &mut self,
        descriptor: &MapStateDescriptor<UK, UV>,
    ) -> Result<MapStateHandle<'_, UK, UV>, StateError> {
        self.states.map(descriptor)
    }

    /// The current key's list in the list state `descriptor`, which the function declared
    /// ([`TimerFunction::declare_state`]).
    pub fn list_state<V: StateValue>(
        &mut self,
        descriptor: &ListStateDescriptor<V>,
    ) -> Result<ListStateHandle<'_, V>, StateError> {
        self.states.list(descriptor)
    }
}

/// A key's state with its pending timers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct WithTimers<S> {
    state: S,
    /// Event-time timers.
    timers: Vec<Timestamp>,
    /// Processing-time timers. Values written before they existed end before this field;
    /// they restore with none (see [`absent_as_empty`]).
    #[serde(deserialize_with = "absent_as_empty")]
    processing: Vec<Timestamp>,
}

/// A trailing field read from a value that may have been written before the field existed:
/// bincode (the state codec) has no field names or lengths to tell, so the read that runs
/// past the end of such a value is what tells, and it yields an empty list.
fn absent_as_empty<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Timestamp>, D::Error> {
    Ok(Vec::deserialize(deserializer).unwrap_or_default())
}

struct TimerProcessFactory<F, K, T> {
    f: F,
    _types: PhantomData<fn() -> (K, T)>,
}

/// The state table of the process function: its state per key.
const STATE: &str = "process-state";

impl<F, K, T> OperatorFactory for TimerProcessFactory<F, K, T>
where
    K: StateKey + Data,
    T: Data,
    F: TimerFunction<K, T>,
{
    type Key = K;
    type In = T;
    type Out = F::Out;
    type Operator<B: StateBackend> = EventTime<TimerProcessOperator<B, F, K, T>>;

    fn create<B: StateBackend>(
        &self,
        ctx: &OperatorContext,
        mut state: B,
    ) -> Result<Self::Operator<B>, BoxError> {
        let operator = TimerProcessOperator::open(self.f.clone(), &mut state, ctx)?;
        Ok(EventTime::new(operator, ctx))
    }

    fn tables(&self) -> Vec<String> {
        table_names::<K, T, F>(&self.f)
    }
}

/// The state tables of the operator running `f`, in the order it lists them.
pub(crate) fn table_names<K, T, F: TimerFunction<K, T>>(f: &F) -> Vec<String> {
    let mut names = StateNames(vec![STATE.to_string()]);
    f.declare_state(&mut names);
    names.0
}

/// The operator behind [`ProcessExt::process_with_timers`].
pub struct TimerProcessOperator<B: StateBackend, F: TimerFunction<K, T>, K: StateKey, T> {
    f: F,
    state: B::Map<K, WithTimers<F::State>>,
    timers: B::Timers<K>,
    /// The processing-time timers.
    processing: B::Timers<K>,
    ctx: TimerContext<F::Out>,
    _types: PhantomData<fn(T)>,
}

impl<B: StateBackend, F: TimerFunction<K, T>, K: StateKey, T> std::fmt::Debug
    for TimerProcessOperator<B, F, K, T>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerProcessOperator")
            .field("keys", &self.state.len())
            .finish()
    }
}

impl<B, F, K, T> TimerProcessOperator<B, F, K, T>
where
    B: StateBackend,
    K: StateKey + Data,
    T: Data,
    F: TimerFunction<K, T>,
{
    /// The operator running `f`, with its tables opened in `state`.
    pub(crate) fn open(f: F, state: &mut B, ctx: &OperatorContext) -> Result<Self, BoxError> {
        let table = state.map_state(STATE)?;
        let timers = state.timer_queue("timers")?;
        let processing = state.timer_queue("processing-timers")?;
        let mut declared = OpenStates::<B, K>::new(state);
        f.declare_state(&mut declared);
        Ok(TimerProcessOperator {
            f,
            state: table,
            timers,
            processing,
            ctx: TimerContext {
                emitted: Vec::new(),
                timers: Timers::default(),
                processing: Timers::default(),
                clear: false,
                watermark: MIN_WATERMARK,
                domain: TimeDomain::EventTime,
                clock: ctx.clock.clone(),
                states: declared.finish(&[STATE])?,
            },
            _types: PhantomData,
        })
    }

    /// Its tables, with its function (which a connected operator keeps its broadcast
    /// state in).
    pub(crate) fn tables_and_function(&mut self) -> (Vec<&mut dyn StateTable>, &mut F) {
        let mut tables: Vec<&mut dyn StateTable> = vec![&mut self.state];
        tables.extend(self.ctx.states.tables());
        (tables, &mut self.f)
    }

    /// Its function.
    pub(crate) fn function(&self) -> &F {
        &self.f
    }

    /// Its function, to change what it holds besides keyed state.
    pub(crate) fn function_mut(&mut self) -> &mut F {
        &mut self.f
    }

    /// Applies what the last call asked for (new timers, clearing) to `key`'s entry and
    /// emits its results at `ts`.
    fn settle(&mut self, key: &K, ts: Timestamp, out: &mut Output<F::Out>) -> Result<(), BoxError> {
        if let Some(error) = self.ctx.states.take_error() {
            // What the call emitted rests on a state access that failed: dropped.
            self.ctx.emitted.clear();
            return Err(error.into());
        }
        if std::mem::take(&mut self.ctx.clear) {
            self.state.take(key)?;
            self.ctx.states.clear_key()?;
            self.ctx.timers.clear();
            self.ctx.processing.clear();
        }
        if !self.ctx.timers.is_empty() || !self.ctx.processing.is_empty() {
            // A deleted timer leaves the key's list; its queue entry, stale now, is skipped
            // when it comes due (see `fire`). Only times the key does not wait for yet
            // become timers.
            let (timers, processing) = (&mut self.ctx.timers, &mut self.ctx.processing);
            let kept = self.state.modify(key, |entry| {
                timers.apply(&mut entry.timers);
                processing.apply(&mut entry.processing);
            })?;
            // A cleared key has no entry to hold timers: they were cancelled with it.
            if kept.is_some() {
                for &time in &timers.registered {
                    self.timers.register(time, key.clone())?;
                }
                for &time in &processing.registered {
                    self.processing.register(time, key.clone())?;
                }
            }
            timers.clear();
            processing.clear();
        }
        for value in self.ctx.emitted.drain(..) {
            out.emit(ts, value);
        }
        Ok(())
    }

    /// `key`'s timer at `time` in `domain` is due: calls the function unless the timer is
    /// stale (deleted, or its key cleared and maybe recreated since).
    fn fire(
        &mut self,
        domain: TimeDomain,
        time: Timestamp,
        key: K,
        watermark: Timestamp,
        out: &mut Output<F::Out>,
    ) -> Result<(), BoxError> {
        self.ctx.watermark = watermark;
        self.ctx.domain = domain;
        self.ctx.states.set_key(&key);
        let (f, ctx) = (&self.f, &mut self.ctx);
        let fired = self.state.modify(&key, |entry| {
            let pending = match domain {
                TimeDomain::EventTime => &mut entry.timers,
                TimeDomain::ProcessingTime => &mut entry.processing,
            };
            let Some(at) = pending.iter().position(|&t| t == time) else {
                return false;
            };
            pending.swap_remove(at);
            f.on_timer(&key, &mut entry.state, time, ctx);
            true
        })?;
        if fired == Some(true) {
            self.settle(&key, time, out)?;
        }
        Ok(())
    }
}

impl<B, F, K, T> EventTimeOperator for TimerProcessOperator<B, F, K, T>
where
    B: StateBackend,
    K: StateKey + Data,
    T: Data,
    F: TimerFunction<K, T>,
{
    type Key = K;
    type In = T;
    type Out = F::Out;
    type Timers = B::Timers<K>;

    /// The function sees every event and judges lateness itself
    /// ([`TimerContext::watermark`]).
    const LATENESS: Lateness = Lateness::Never;

    fn on_event(
        &mut self,
        ts: Timestamp,
        event: Keyed<K, T>,
        watermark: Timestamp,
        out: &mut Output<F::Out>,
    ) -> Result<Handled, BoxError> {
        self.ctx.watermark = watermark;
        self.ctx.domain = TimeDomain::EventTime;
        self.ctx.states.set_key(&event.key);
        let (f, ctx) = (&self.f, &mut self.ctx);
        let at_once = self
            .state
            .update(&event.key, WithTimers::default, |entry| {
                f.on_event(&event.key, &mut entry.state, ts, &event.value, ctx);
                ctx.timers.registered.iter().any(|&time| time <= watermark)
            })?;
        self.settle(&event.key, ts, out)?;
        // A timer at or before the watermark fires at once, before the next event.
        Ok(match at_once {
            true => Handled::TakenTimersDue,
            false => Handled::Taken,
        })
    }

    fn timers(&mut self) -> &mut [B::Timers<K>] {
        std::slice::from_mut(&mut self.timers)
    }

    fn on_timer(
        &mut self,
        _queue: usize,
        time: Timestamp,
        key: K,
        watermark: Timestamp,
        out: &mut Output<F::Out>,
    ) -> Result<(), BoxError> {
        self.fire(TimeDomain::EventTime, time, key, watermark, out)
    }

    fn processing_timers(&mut self) -> &mut [B::Timers<K>] {
        std::slice::from_mut(&mut self.processing)
    }

    fn on_processing_timer(
        &mut self,
        _queue: usize,
        time: Timestamp,
        key: K,
        watermark: Timestamp,
        out: &mut Output<F::Out>,
    ) -> Result<(), BoxError> {
        self.fire(TimeDomain::ProcessingTime, time, key, watermark, out)
    }

    fn tables(&mut self) -> Vec<&mut dyn StateTable> {
        self.tables_and_function().0
    }

    fn state_entries(&self) -> usize {
        self.state.len() + self.ctx.states.entries()
    }

    fn queryable(&mut self) -> Option<&mut dyn QueryableTable> {
        Some(self)
    }

    fn restore(&mut self, _watermark: Timestamp) -> Result<(), BoxError> {
        self.ctx.states.restored()?;
        let (mut timers, mut processing) = (Vec::new(), Vec::new());
        self.state.scan(|key, entry| {
            timers.extend(entry.timers.into_iter().map(|time| (time, key.clone())));
            processing.extend(entry.processing.into_iter().map(|time| (time, key.clone())));
        })?;
        for (time, key) in timers {
            self.timers.register(time, key)?;
        }
        // Those whose time passed while the job was down are due at once: the runtime
        // fires them before the first batch.
        for (time, key) in processing {
            self.processing.register(time, key)?;
        }
        Ok(())
    }
}

/// A key's state is what queries see, without its pending timers.
impl<B, F, K, T> QueryableTable for TimerProcessOperator<B, F, K, T>
where
    B: StateBackend,
    K: StateKey + Data,
    T: Data,
    F: TimerFunction<K, T>,
{
    fn answer(&mut self, table: &str, query: &TableQuery) -> Result<Vec<Entry>, QueryError> {
        answer_from_map(&mut self.state, table, query, |entry| {
            serde_json::to_value(&entry.state).unwrap_or(serde_json::Value::Null)
        })
    }
}

#[cfg(test)]
#[path = "process_tests.rs"]
mod tests;

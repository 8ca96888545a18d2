//! Keyed processing with per-key state, for logic that is not a window (alerts,
//! running totals, "first time X happens" events, joins that close on a deadline).
//!
//! - [`ProcessExt::process_with_state`]: a function sees each event with its key's state
//!   (created with `Default` on first use) and may emit any number of results, which carry
//!   the event's time.
//! - [`ProcessExt::process_with_timers`]: a [`TimerFunction`], Flink's
//!   `KeyedProcessFunction`: besides events it gets event-time timers, which fire once the
//!   watermark reaches their time, in time order, before any later record is handled.
//!   It may also keep map and list state per key, declared by name
//!   ([`TimerFunction::declare_state`], see [`crate::process_state`]).
//!
//! # Invariants (timers)
//! - A key's pending timers are kept with its state, so they survive a checkpoint and are
//!   rebuilt on restore, and at most one timer exists per key and time.
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
    OperatorContext, Output, QueryError, StateBackend, StateKey, StateTable, StateValue, Stream,
    TimerQueue, Timestamp,
};

/// Adds `process_with_state` to keyed streams.
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
            "per-key state and event-time timers".into(),
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

    /// A timer of `key` registered for `time` fired (the watermark reached `time`); results
    /// emitted carry `time`.
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

/// What a [`TimerFunction`] can do besides changing its state.
#[derive(Debug)]
pub struct TimerContext<O> {
    emitted: Vec<O>,
    timers: Vec<Timestamp>,
    /// Timers deleted by this call: applied before `timers`.
    deleted: Vec<Timestamp>,
    clear: bool,
    watermark: Timestamp,
    /// The declared map and list state, at the current key.
    states: KeyedStates,
}

impl<O> TimerContext<O> {
    /// Emits a result.
    pub fn emit(&mut self, value: O) {
        self.emitted.push(value);
    }

    /// Asks for [`TimerFunction::on_timer`] with `time` once the watermark reaches it (at
    /// once, if it already has). Registering the same time twice gives one timer.
    pub fn register_timer(&mut self, time: Timestamp) {
        self.timers.push(time);
    }

    /// Cancels the key's timer at `time` (Flink's `deleteEventTimeTimer`), whether it was
    /// registered earlier or in this call; a time without a timer is ignored. Registering
    /// the time again after this, in the same call or a later one, gives a timer again.
    pub fn delete_timer(&mut self, time: Timestamp) {
        self.timers.retain(|&t| t != time);
        self.deleted.push(time);
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
    timers: Vec<Timestamp>,
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
        let table = state.map_state(STATE)?;
        let timers = state.timer_queue("timers")?;
        let mut declared = OpenStates::<B, K>::new(&mut state);
        self.f.declare_state(&mut declared);
        let operator = TimerProcessOperator {
            f: self.f.clone(),
            state: table,
            timers,
            ctx: TimerContext {
                emitted: Vec::new(),
                timers: Vec::new(),
                deleted: Vec::new(),
                clear: false,
                watermark: MIN_WATERMARK,
                states: declared.finish(&[STATE])?,
            },
            _types: PhantomData,
        };
        Ok(EventTime::new(operator, ctx))
    }

    fn tables(&self) -> Vec<String> {
        let mut names = StateNames(vec![STATE.to_string()]);
        self.f.declare_state(&mut names);
        names.0
    }
}

/// The operator behind [`ProcessExt::process_with_timers`].
pub struct TimerProcessOperator<B: StateBackend, F: TimerFunction<K, T>, K: StateKey, T> {
    f: F,
    state: B::Map<K, WithTimers<F::State>>,
    timers: B::Timers<K>,
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
            self.ctx.deleted.clear();
        }
        if !self.ctx.deleted.is_empty() {
            // A deleted timer leaves the key's list; its queue entry, stale now, is skipped
            // when it comes due (see `on_timer`).
            let deleted = &self.ctx.deleted;
            self.state
                .modify(key, |entry| entry.timers.retain(|t| !deleted.contains(t)))?;
            self.ctx.deleted.clear();
        }
        if !self.ctx.timers.is_empty() {
            let requested = &mut self.ctx.timers;
            let kept = self.state.modify(key, |entry| {
                // Only times the key does not wait for yet become timers.
                requested.retain(|time| {
                    let new = !entry.timers.contains(time);
                    if new {
                        entry.timers.push(*time);
                    }
                    new
                });
            })?;
            // A cleared key has no entry to hold timers: they were cancelled with it.
            if kept.is_some() {
                for &time in &self.ctx.timers {
                    self.timers.register(time, key.clone())?;
                }
            }
            self.ctx.timers.clear();
        }
        for value in self.ctx.emitted.drain(..) {
            out.emit(ts, value);
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
        self.ctx.states.set_key(&event.key);
        let (f, ctx) = (&self.f, &mut self.ctx);
        let at_once = self
            .state
            .update(&event.key, WithTimers::default, |entry| {
                f.on_event(&event.key, &mut entry.state, ts, &event.value, ctx);
                ctx.timers.iter().any(|&time| time <= watermark)
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
        self.ctx.watermark = watermark;
        self.ctx.states.set_key(&key);
        let (f, ctx) = (&self.f, &mut self.ctx);
        let fired = self.state.modify(&key, |entry| {
            // Timers of a cleared (and maybe recreated) key are stale.
            let Some(at) = entry.timers.iter().position(|&t| t == time) else {
                return false;
            };
            entry.timers.swap_remove(at);
            f.on_timer(&key, &mut entry.state, time, ctx);
            true
        })?;
        if fired == Some(true) {
            self.settle(&key, time, out)?;
        }
        Ok(())
    }

    fn tables(&mut self) -> Vec<&mut dyn StateTable> {
        let mut tables: Vec<&mut dyn StateTable> = vec![&mut self.state];
        tables.extend(self.ctx.states.tables());
        tables
    }

    fn state_entries(&self) -> usize {
        self.state.len() + self.ctx.states.entries()
    }

    fn queryable(&mut self) -> Option<&mut dyn QueryableTable> {
        Some(self)
    }

    fn restore(&mut self, _watermark: Timestamp) -> Result<(), BoxError> {
        self.ctx.states.restored()?;
        let mut restored = Vec::new();
        self.state.scan(|key, entry| {
            restored.extend(entry.timers.into_iter().map(|time| (time, key.clone())));
        })?;
        for (time, key) in restored {
            self.timers.register(time, key)?;
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
mod tests {
    use super::*;
    use weir_engine::MemoryBackend;
    use weir_engine::{KeyedOperator, Record};

    /// Sums values per key and emits the sum at a deadline 10 ms after the key's first
    /// event, then forgets the key.
    #[derive(Clone)]
    struct SumUntilDeadline;

    impl TimerFunction<String, u64> for SumUntilDeadline {
        type State = Option<u64>;
        type Out = (String, u64);
        fn on_event(
            &self,
            _: &String,
            sum: &mut Option<u64>,
            ts: Timestamp,
            value: &u64,
            ctx: &mut TimerContext<Self::Out>,
        ) {
            if sum.is_none() {
                ctx.register_timer(ts + 10);
            }
            *sum = Some(sum.unwrap_or(0) + value);
        }
        fn on_timer(
            &self,
            key: &String,
            sum: &mut Option<u64>,
            _: Timestamp,
            ctx: &mut TimerContext<Self::Out>,
        ) {
            ctx.emit((key.clone(), sum.unwrap_or(0)));
            ctx.clear_state();
        }
    }

    fn record(ts: i64, watermark: i64, key: &str, value: u64) -> Record<Keyed<String, u64>> {
        Record {
            ts,
            watermark,
            value: Keyed {
                key: key.to_string(),
                value,
            },
        }
    }

    fn fired(out: &mut Output<(String, u64)>) -> Vec<(i64, (&'static str, u64))> {
        out.take()
            .into_iter()
            .map(|r| (r.ts, (if r.value.0 == "a" { "a" } else { "b" }, r.value.1)))
            .collect()
    }

    /// `f` as an operator instance on memory state.
    fn in_memory<F: TimerFunction<String, u64>>(
        f: F,
    ) -> EventTime<TimerProcessOperator<MemoryBackend, F, String, u64>> {
        let ctx = crate::test_support::operator_context("process");
        let factory = TimerProcessFactory::<_, String, u64> {
            f,
            _types: PhantomData,
        };
        factory.create(&ctx, MemoryBackend::new()).expect("create")
    }

    #[test]
    fn timers_fire_in_time_order_when_the_watermark_reaches_them_and_clearing_forgets_the_key() {
        let mut op = in_memory(SumUntilDeadline);
        let mut out = Output::default();
        op.process(
            vec![
                record(0, i64::MIN, "a", 1),
                record(5, 0, "b", 2),
                record(9, 5, "a", 3),
                // Watermark 10 fires a's deadline (10) before this record is handled.
                record(11, 10, "a", 4),
            ],
            &mut out,
        )
        .expect("process");
        assert_eq!(fired(&mut out), vec![(10, ("a", 4))]);
        // a started again at 11 (deadline 21); b's deadline is 15.
        assert_eq!(op.state_entries(), 2);
        op.on_watermark(30, &mut out).expect("watermark");
        assert_eq!(fired(&mut out), vec![(15, ("b", 2)), (21, ("a", 4))]);
        assert_eq!(op.state_entries(), 0);
    }

    /// Registers a timer 10 ms after each event and deletes the one of the event before
    /// (a timeout that restarts on activity), emitting the key's event count when one fires.
    #[derive(Clone)]
    struct Inactivity;

    impl TimerFunction<String, u64> for Inactivity {
        type State = (u64, Option<Timestamp>);
        type Out = (String, u64);
        fn on_event(
            &self,
            _: &String,
            (count, timer): &mut (u64, Option<Timestamp>),
            ts: Timestamp,
            _: &u64,
            ctx: &mut TimerContext<Self::Out>,
        ) {
            if let Some(previous) = timer.take() {
                ctx.delete_timer(previous);
            }
            ctx.register_timer(ts + 10);
            *timer = Some(ts + 10);
            *count += 1;
        }
        fn on_timer(
            &self,
            key: &String,
            (count, _): &mut (u64, Option<Timestamp>),
            _: Timestamp,
            ctx: &mut TimerContext<Self::Out>,
        ) {
            ctx.emit((key.clone(), *count));
            ctx.clear_state();
        }
    }

    #[test]
    fn deleted_timers_do_not_fire_and_the_last_one_registered_does() {
        let mut op = in_memory(Inactivity);
        let mut out = Output::default();
        op.process(
            vec![
                record(0, i64::MIN, "a", 1),
                record(5, 0, "a", 1),
                record(12, 5, "a", 1),
                record(3, 5, "b", 1),
            ],
            &mut out,
        )
        .expect("process");
        // a's timers at 10 and 15 were deleted; only 22 is left. b's is at 13.
        op.on_watermark(21, &mut out).expect("watermark");
        assert_eq!(fired(&mut out), vec![(13, ("b", 1))]);
        op.on_watermark(22, &mut out).expect("watermark");
        assert_eq!(fired(&mut out), vec![(22, ("a", 3))]);
        assert_eq!(op.state_entries(), 0);
    }

    const SEEN: MapStateDescriptor<u64, u64> = MapStateDescriptor::new("seen");
    const OTHER: MapStateDescriptor<u64, u64> = MapStateDescriptor::new("other");

    /// Counts each value per key in map state; value 0 asks for a state it did not declare.
    #[derive(Clone)]
    struct CountValues;

    impl TimerFunction<String, u64> for CountValues {
        type State = ();
        type Out = (String, u64);
        fn on_event(
            &self,
            key: &String,
            _: &mut (),
            _: Timestamp,
            value: &u64,
            ctx: &mut TimerContext<Self::Out>,
        ) {
            ctx.emit((key.clone(), *value));
            let wanted = if *value == 0 { &OTHER } else { &SEEN };
            if let Ok(mut seen) = ctx.map_state(wanted) {
                let count = seen.get(value).ok().flatten().unwrap_or(0);
                let _ = seen.put(*value, count + 1);
            }
        }
        fn on_timer(&self, _: &String, _: &mut (), _: Timestamp, _: &mut TimerContext<Self::Out>) {}
        fn declare_state<D: DeclareState<String>>(&self, states: &mut D) {
            states.map(&SEEN);
        }
    }

    #[test]
    fn declared_state_is_a_table_and_an_undeclared_one_fails_the_call() {
        let factory = TimerProcessFactory::<_, String, u64> {
            f: CountValues,
            _types: PhantomData,
        };
        assert_eq!(factory.tables(), vec!["process-state", "seen"]);
        let mut op = in_memory(CountValues);
        let mut out = Output::default();
        op.process(
            vec![
                record(0, i64::MIN, "a", 5),
                record(1, 0, "a", 5),
                record(2, 0, "b", 5),
            ],
            &mut out,
        )
        .expect("process");
        // Two values state entries and two map entries.
        assert_eq!(op.state_entries(), 4);
        assert_eq!(out.take().len(), 3);
        let failed = op.process(vec![record(3, 0, "a", 0)], &mut out);
        let error = failed.expect_err("an undeclared state fails").to_string();
        assert!(
            error.contains("`other`") && error.contains("declare_state"),
            "{error}"
        );
        assert!(
            out.take().is_empty(),
            "what the failed call emitted is dropped"
        );
    }

    #[test]
    fn timers_survive_a_snapshot_and_restore() -> Result<(), BoxError> {
        use weir_engine::state::{shared_block_cache, RocksBackend, RocksStore};
        let ctx = crate::test_support::operator_context("deadline");
        let factory = TimerProcessFactory::<_, String, u64> {
            f: SumUntilDeadline,
            _types: PhantomData,
        };
        let dir = tempfile::tempdir()?;
        let store = RocksStore::open_fresh(&dir.path().join("db"), &shared_block_cache())?;
        let mut op = factory.create(&ctx, RocksBackend::new(store.clone(), "op", 1))?;
        let mut out = Output::default();
        op.process(vec![record(0, i64::MIN, "a", 7)], &mut out)?;
        op.snapshot()?;
        // A new instance over the same database rebuilds the timer from the state.
        let mut restored = factory.create(&ctx, RocksBackend::new(store, "op", 1))?;
        restored.restore(&[])?;
        restored.on_watermark(10, &mut out)?;
        assert_eq!(fired(&mut out), vec![(10, ("a", 7))]);
        Ok(())
    }
}

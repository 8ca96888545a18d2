//! Broadcast state (Flink's broadcast state pattern): a low-rate control stream (rules,
//! thresholds, a currency table) reaches every instance of a keyed operator, which keeps
//! it in a broadcast state that its keyed side reads for every key.
//!
//! [`BroadcastProcessExt::process_with_broadcast`] runs a [`BroadcastProcessFunction`]
//! (Flink's `KeyedBroadcastProcessFunction`) over
//! `keyed.connect_broadcast(control, &DESCRIPTOR)`:
//! - [`BroadcastProcessFunction::process_element`] sees each keyed element with its key's
//!   state and the broadcast state **read only** (`&BroadcastState`), and has the
//!   [`TimerContext`] of [`crate::process`]: timers, map and list state, clearing;
//! - [`BroadcastProcessFunction::process_broadcast_element`] sees each control element,
//!   at every instance, with the broadcast state **writable**. It has no key, so neither
//!   keyed state nor timers; it cannot go over the keyed state of all keys either (Flink's
//!   `applyToKeyedState`): not offered, since it would scan the instance's whole keyed state
//!   once per control element.
//!
//! # Invariants
//! - Every instance applies the same control elements; with one producer of them (a
//!   source that is not split over the workers) in the same order, so every instance holds
//!   the same broadcast state as long as the function's writes depend only on the control
//!   elements (not on keyed state or the instance). Checkpoints keep it once.
//! - Which keyed elements an instance handled before or after a control element depends on
//!   arrival (see `docs/SEMANTICS.md`); a function that needs a fixed answer uses event
//!   time: it waits for the watermark (a timer), which is the minimum of both inputs'.

use std::marker::PhantomData;

use crate::process::{table_names, TimerContext, TimerFunction, TimerProcessOperator};
use crate::process_state::DeclareState;
use weir_engine::error::BoxError;
use weir_engine::keys::StableHash;
use weir_engine::operator::{BroadcastEventTimeOperator, BroadcastOperatorFactory};
use weir_engine::query::QueryableTable;
use weir_engine::state::BroadcastKey;
use weir_engine::{
    BroadcastConnectedStream, BroadcastState, Data, EventTime, EventTimeOperator, Handled, Keyed,
    Lateness, OperatorContext, Output, StateBackend, StateKey, StateTable, StateValue, Stream,
    Timestamp,
};

/// A keyed function connected to a broadcast stream (Flink's
/// `KeyedBroadcastProcessFunction`); see the [module docs](self).
pub trait BroadcastProcessFunction<K, T, C>: Clone + Send + 'static {
    /// Per-key state, created with `Default` on a key's first element.
    type State: StateValue + Default;
    /// The broadcast state's key type (its descriptor's).
    type BroadcastKey: BroadcastKey;
    /// The broadcast state's value type (its descriptor's).
    type BroadcastValue: StateValue;
    /// What it emits.
    type Out: Data;

    /// Handles one keyed element of `key` with event time `ts`, reading the broadcast
    /// state; results emitted carry `ts`.
    fn process_element(
        &self,
        key: &K,
        state: &mut Self::State,
        ts: Timestamp,
        event: &T,
        broadcast: &BroadcastState<Self::BroadcastKey, Self::BroadcastValue>,
        ctx: &mut TimerContext<Self::Out>,
    );

    /// Handles one control element with event time `ts` (at every instance), and may
    /// change the broadcast state; results emitted carry `ts`, at every instance.
    fn process_broadcast_element(
        &self,
        ts: Timestamp,
        control: &C,
        broadcast: &mut BroadcastState<Self::BroadcastKey, Self::BroadcastValue>,
        ctx: &mut BroadcastContext<Self::Out>,
    );

    /// A timer of `key` registered for `time` fired; results emitted carry `time`.
    fn on_timer(
        &self,
        _key: &K,
        _state: &mut Self::State,
        _time: Timestamp,
        _broadcast: &BroadcastState<Self::BroadcastKey, Self::BroadcastValue>,
        _ctx: &mut TimerContext<Self::Out>,
    ) {
    }

    /// Declares the map and list state of its keyed side (see
    /// [`TimerFunction::declare_state`]).
    fn declare_state<D: DeclareState<K>>(&self, _states: &mut D) {}
}

/// What [`BroadcastProcessFunction::process_broadcast_element`] can do besides changing
/// the broadcast state.
#[derive(Debug)]
pub struct BroadcastContext<O> {
    emitted: Vec<O>,
    watermark: Timestamp,
}

impl<O> BroadcastContext<O> {
    /// Emits a result (at every instance: each emits its own).
    pub fn emit(&mut self, value: O) {
        self.emitted.push(value);
    }

    /// The watermark before the current control element.
    pub fn watermark(&self) -> Timestamp {
        self.watermark
    }
}

/// Adds `process_with_broadcast` to keyed streams connected to a broadcast stream.
pub trait BroadcastProcessExt<K, T, C, BK, BV> {
    /// Runs `f` on every keyed element (in stream order per key), every control element
    /// (at every instance) and every timer it registered.
    fn process_with_broadcast<F>(self, name: &str, f: F) -> Stream<F::Out>
    where
        F: BroadcastProcessFunction<K, T, C, BroadcastKey = BK, BroadcastValue = BV>;
}

impl<K, T, KF, C, BK, BV> BroadcastProcessExt<K, T, C, BK, BV>
    for BroadcastConnectedStream<K, T, KF, C, BK, BV>
where
    K: StateKey + StableHash + Data,
    T: Data,
    C: Data,
    KF: Fn(&T) -> K + Clone + Send + 'static,
    BK: BroadcastKey,
    BV: StateValue,
{
    fn process_with_broadcast<F>(self, name: &str, f: F) -> Stream<F::Out>
    where
        F: BroadcastProcessFunction<K, T, C, BroadcastKey = BK, BroadcastValue = BV>,
    {
        let descriptor = self.descriptor();
        let detail = format!(
            "per-key state, event-time timers and broadcast state `{}`",
            descriptor.name()
        );
        let side = KeyedSide {
            f,
            broadcast: BroadcastState::new(&descriptor),
            _types: PhantomData,
        };
        self.process(name, detail, BroadcastProcessFactory { side })
    }
}

/// The types a function is generic over, kept without owning any.
type Types<K, T, C> = PhantomData<fn() -> (K, T, C)>;

/// The keyed side as a [`TimerFunction`]: the function with the instance's broadcast
/// state, which the keyed side reads through `&self`.
struct KeyedSide<F: BroadcastProcessFunction<K, T, C>, K, T, C> {
    f: F,
    broadcast: BroadcastState<F::BroadcastKey, F::BroadcastValue>,
    _types: Types<K, T, C>,
}

impl<F: BroadcastProcessFunction<K, T, C>, K, T, C> Clone for KeyedSide<F, K, T, C> {
    fn clone(&self) -> Self {
        KeyedSide {
            f: self.f.clone(),
            broadcast: self.broadcast.clone(),
            _types: PhantomData,
        }
    }
}

impl<F, K, T, C> TimerFunction<K, T> for KeyedSide<F, K, T, C>
where
    F: BroadcastProcessFunction<K, T, C>,
    K: 'static,
    T: 'static,
    C: 'static,
{
    type State = F::State;
    type Out = F::Out;

    fn on_event(
        &self,
        key: &K,
        state: &mut F::State,
        ts: Timestamp,
        event: &T,
        ctx: &mut TimerContext<F::Out>,
    ) {
        self.f
            .process_element(key, state, ts, event, &self.broadcast, ctx)
    }

    fn on_timer(
        &self,
        key: &K,
        state: &mut F::State,
        time: Timestamp,
        ctx: &mut TimerContext<F::Out>,
    ) {
        self.f.on_timer(key, state, time, &self.broadcast, ctx)
    }

    fn declare_state<D: DeclareState<K>>(&self, states: &mut D) {
        self.f.declare_state(states)
    }
}

struct BroadcastProcessFactory<F: BroadcastProcessFunction<K, T, C>, K, T, C> {
    side: KeyedSide<F, K, T, C>,
}

impl<F, K, T, C> BroadcastOperatorFactory for BroadcastProcessFactory<F, K, T, C>
where
    K: StateKey + Data,
    T: Data,
    C: Data,
    F: BroadcastProcessFunction<K, T, C>,
{
    type Key = K;
    type In = T;
    type Control = C;
    type Out = F::Out;
    type Operator<B: StateBackend> = EventTime<BroadcastProcessOperator<B, F, K, T, C>>;

    fn create<B: StateBackend>(
        &self,
        ctx: &OperatorContext,
        mut state: B,
    ) -> Result<Self::Operator<B>, BoxError> {
        let keyed = TimerProcessOperator::open(self.side.clone(), &mut state, ctx)?;
        Ok(EventTime::new(BroadcastProcessOperator { keyed }, ctx))
    }

    fn tables(&self) -> Vec<String> {
        let mut names = table_names::<K, T, _>(&self.side);
        names.push(self.side.broadcast.name().to_string());
        names
    }
}

/// The operator behind [`BroadcastProcessExt::process_with_broadcast`]: the keyed process
/// operator, whose function holds the broadcast state.
pub struct BroadcastProcessOperator<B, F, K, T, C>
where
    B: StateBackend,
    F: BroadcastProcessFunction<K, T, C>,
    K: StateKey,
    T: 'static,
    C: 'static,
{
    keyed: TimerProcessOperator<B, KeyedSide<F, K, T, C>, K, T>,
}

impl<B, F, K, T, C> std::fmt::Debug for BroadcastProcessOperator<B, F, K, T, C>
where
    B: StateBackend,
    F: BroadcastProcessFunction<K, T, C>,
    K: StateKey,
    T: 'static,
    C: 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BroadcastProcessOperator")
            .field("keyed", &self.keyed)
            .finish()
    }
}

impl<B, F, K, T, C> EventTimeOperator for BroadcastProcessOperator<B, F, K, T, C>
where
    B: StateBackend,
    K: StateKey + Data,
    T: Data,
    C: Data,
    F: BroadcastProcessFunction<K, T, C>,
{
    type Key = K;
    type In = T;
    type Out = F::Out;
    type Timers = B::Timers<K>;

    /// As the process functions: the function sees every element.
    const LATENESS: Lateness = Lateness::Never;

    fn on_event(
        &mut self,
        ts: Timestamp,
        event: Keyed<K, T>,
        watermark: Timestamp,
        out: &mut Output<F::Out>,
    ) -> Result<Handled, BoxError> {
        self.keyed.on_event(ts, event, watermark, out)
    }

    fn timers(&mut self) -> &mut [B::Timers<K>] {
        self.keyed.timers()
    }

    fn on_timer(
        &mut self,
        queue: usize,
        time: Timestamp,
        key: K,
        watermark: Timestamp,
        out: &mut Output<F::Out>,
    ) -> Result<(), BoxError> {
        self.keyed.on_timer(queue, time, key, watermark, out)
    }

    fn processing_timers(&mut self) -> &mut [B::Timers<K>] {
        self.keyed.processing_timers()
    }

    fn on_processing_timer(
        &mut self,
        queue: usize,
        time: Timestamp,
        key: K,
        watermark: Timestamp,
        out: &mut Output<F::Out>,
    ) -> Result<(), BoxError> {
        self.keyed
            .on_processing_timer(queue, time, key, watermark, out)
    }

    fn tables(&mut self) -> Vec<&mut dyn StateTable> {
        let (mut tables, side) = self.keyed.tables_and_function();
        tables.push(&mut side.broadcast);
        tables
    }

    fn state_entries(&self) -> usize {
        self.keyed.state_entries() + self.keyed.function().broadcast.len()
    }

    fn queryable(&mut self) -> Option<&mut dyn QueryableTable> {
        self.keyed.queryable()
    }

    fn restore(&mut self, watermark: Timestamp) -> Result<(), BoxError> {
        self.keyed.restore(watermark)
    }

    fn broadcast_state(&mut self) -> Result<Option<Vec<u8>>, BoxError> {
        Ok(Some(self.keyed.function().broadcast.encode()?))
    }

    fn restore_broadcast_state(&mut self, bytes: &[u8]) -> Result<(), BoxError> {
        Ok(self.keyed.function_mut().broadcast.decode(bytes)?)
    }
}

impl<B, F, K, T, C> BroadcastEventTimeOperator for BroadcastProcessOperator<B, F, K, T, C>
where
    B: StateBackend,
    K: StateKey + Data,
    T: Data,
    C: Data,
    F: BroadcastProcessFunction<K, T, C>,
{
    type Control = C;

    fn on_broadcast(
        &mut self,
        ts: Timestamp,
        control: C,
        watermark: Timestamp,
        out: &mut Output<F::Out>,
    ) -> Result<(), BoxError> {
        let side = self.keyed.function_mut();
        let mut ctx = BroadcastContext {
            emitted: Vec::new(),
            watermark,
        };
        side.f
            .process_broadcast_element(ts, &control, &mut side.broadcast, &mut ctx);
        for value in ctx.emitted {
            out.emit(ts, value);
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "broadcast_tests.rs"]
mod tests;

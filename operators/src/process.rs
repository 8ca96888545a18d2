//! Keyed processing with per-key state, for logic that is not a window (alerts,
//! running totals, "first time X happens" events).
//!
//! The function sees each event with its key's state (created with `Default` on first use)
//! and may emit any number of results, which carry the event's time.

use std::marker::PhantomData;

use weir_engine::error::BoxError;
use weir_engine::keys::StableHash;
use weir_engine::operator::OperatorFactory;
use weir_engine::{
    Data, Keyed, KeyedOperator, KeyedStream, MapState, OperatorContext, Output, Record,
    StateBackend, StateKey, StateValue, Stream, Timestamp,
};

/// Adds `process_with_state` to keyed streams.
pub trait ProcessExt<K, T> {
    /// Runs `f(key, state, event_time, event, emit)` for every event, in stream order per key.
    fn process_with_state<S, O, F>(self, name: &str, f: F) -> Stream<O>
    where
        S: StateValue + Default,
        O: Data,
        F: Fn(&K, &mut S, Timestamp, &T, &mut Vec<O>) + Clone + Send + 'static;
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
            ProcessFactory {
                f,
                _types: Types::<K, T, S, O>::default(),
            },
        )
    }
}

/// The types a [`ProcessFactory`] is generic over, as a zero-sized marker.
type Types<K, T, S, O> = PhantomData<fn() -> (K, T, S, O)>;

struct ProcessFactory<F, K, T, S, O> {
    f: F,
    _types: Types<K, T, S, O>,
}

impl<F, K, T, S, O> OperatorFactory for ProcessFactory<F, K, T, S, O>
where
    K: StateKey + Data,
    T: Data,
    S: StateValue + Default,
    O: Data,
    F: Fn(&K, &mut S, Timestamp, &T, &mut Vec<O>) + Clone + Send + 'static,
{
    type Key = K;
    type In = T;
    type Out = O;
    type Operator<B: StateBackend> = ProcessOperator<B, F, K, T, S, O>;

    fn create<B: StateBackend>(
        &self,
        _ctx: &OperatorContext,
        mut state: B,
    ) -> Result<Self::Operator<B>, BoxError> {
        Ok(ProcessOperator {
            f: self.f.clone(),
            state: state.map_state("process-state")?,
            emitted: Vec::new(),
            _types: PhantomData,
        })
    }
}

/// The operator behind [`ProcessExt::process_with_state`].
pub struct ProcessOperator<B: StateBackend, F, K: StateKey, T, S: StateValue, O> {
    f: F,
    state: B::Map<K, S>,
    emitted: Vec<O>,
    _types: PhantomData<fn(T)>,
}

impl<B: StateBackend, F, K: StateKey, T, S: StateValue, O> std::fmt::Debug
    for ProcessOperator<B, F, K, T, S, O>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessOperator")
            .field("keys", &self.state.len())
            .finish()
    }
}

impl<B, F, K, T, S, O> KeyedOperator for ProcessOperator<B, F, K, T, S, O>
where
    B: StateBackend,
    K: StateKey + Data,
    T: Data,
    S: StateValue + Default,
    O: Data,
    F: Fn(&K, &mut S, Timestamp, &T, &mut Vec<O>) + Send + 'static,
{
    type Key = K;
    type In = T;
    type Out = O;

    fn process(
        &mut self,
        records: Vec<Record<Keyed<K, T>>>,
        out: &mut Output<O>,
    ) -> Result<(), BoxError> {
        for r in records {
            out.advance_watermark(r.watermark);
            let (f, emitted) = (&self.f, &mut self.emitted);
            self.state.update(&r.value.key, S::default, |s| {
                f(&r.value.key, s, r.ts, &r.value.value, emitted)
            })?;
            for o in self.emitted.drain(..) {
                out.emit(r.ts, o);
            }
        }
        Ok(())
    }

    fn state_entries(&self) -> usize {
        self.state.len()
    }

    fn snapshot(&mut self) -> Result<serde_json::Value, BoxError> {
        self.state.flush()?;
        Ok(serde_json::Value::Null)
    }

    fn restore(&mut self, _snapshots: &[serde_json::Value]) -> Result<(), BoxError> {
        // No timers to rebuild; the scan recounts the restored entries for the metrics.
        Ok(self.state.scan(|_, _| {})?)
    }
}

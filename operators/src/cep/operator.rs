//! The CEP operator on the engine's event-time harness: buffers each key's events until the
//! watermark reaches them, then runs them through the pattern ([`CepOperator::run_key`]).

use std::marker::PhantomData;

use weir_engine::error::BoxError;
use weir_engine::operator::OperatorFactory;
use weir_engine::time::END_WATERMARK;
use weir_engine::{
    Data, EventTime, EventTimeOperator, Handled, Keyed, Lateness, MapState, OperatorContext,
    Output, StateBackend, StateKey, StateTable, StateValue, TimerQueue, Timestamp,
};

use super::state::KeyState;
use super::{CepOutput, Pattern};
use crate::time_order::{insert_by_time, take_due};

pub(super) struct CepFactory<K, T> {
    pub(super) pattern: Pattern<T>,
    pub(super) timeouts: bool,
    pub(super) _key: PhantomData<fn() -> K>,
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
            watermark: Timestamp::MIN,
            emitted: Vec::new(),
        };
        Ok(EventTime::new(operator, ctx))
    }

    fn tables(&self) -> Vec<String> {
        vec![KEYS.to_string()]
    }
}

/// One worker of a pattern.
pub struct CepOperator<S: StateBackend, K: StateKey, T: StateValue> {
    pattern: Pattern<T>,
    timeouts: bool,
    keys: S::Map<K, KeyState<T>>,
    timers: S::Timers<K>,
    /// The watermark before the one whose timers are firing: results emitted now must be
    /// later (set once the timers have fired, in `on_watermark`).
    watermark: Timestamp,
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
            watermark: before,
            emitted,
        } = self;
        // At the end of the input nothing more can complete: matches held by a skip
        // strategy come out, just after what downstream has seen.
        let end = (w == END_WATERMARK).then(|| before.saturating_add(1));
        let ran = keys.modify(&key, |state| {
            if pattern.next_timer(state).is_none_or(|t| t > w) {
                return None;
            }
            let nfa = &mut state.nfa;
            for (ts, event) in take_due(&mut state.pending, w) {
                pattern.feed(nfa, ts, &event, *timeouts, emitted);
            }
            pattern.expire(nfa, w, *timeouts, emitted);
            if let Some(at) = end {
                pattern.finish(nfa, at, emitted);
            }
            Some((pattern.next_timer(state), state.is_empty()))
        })?;
        match ran.flatten() {
            None => {}
            Some((Some(next), _)) => timers.register(next, key)?,
            // Partial matches without a deadline wait for the key's next event.
            Some((None, false)) => {}
            Some((None, true)) => {
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

    fn on_watermark(
        &mut self,
        watermark: Timestamp,
        _out: &mut Output<CepOutput<T>>,
    ) -> Result<(), BoxError> {
        self.watermark = watermark;
        Ok(())
    }

    fn tables(&mut self) -> Vec<&mut dyn StateTable> {
        vec![&mut self.keys]
    }

    fn state_entries(&self) -> usize {
        self.keys.len()
    }

    fn restore(&mut self, watermark: Timestamp) -> Result<(), BoxError> {
        self.watermark = watermark;
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

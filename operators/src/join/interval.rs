//! The interval join: each left element meets the right elements of its key whose event
//! time lies within a bound of its own ([`super::JoinExt::interval_join`]).

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use weir_engine::error::BoxError;
use weir_engine::operator::OperatorFactory;
use weir_engine::{
    Data, EventTime, EventTimeOperator, Handled, Keyed, Lateness, MapState, OperatorContext,
    Output, StateBackend, StateKey, StateTable, StateValue, TimerQueue, Timestamp,
};

use super::Side;

pub(super) struct IntervalJoinFactory<K, A, B> {
    pub(super) lower: i64,
    pub(super) upper: i64,
    pub(super) outer: bool,
    pub(super) _types: PhantomData<fn(K, A) -> B>,
}

/// The state table of the elements per key that may still find partners.
const BUFFERS: &str = "interval-join-buffers";

impl<K: StateKey + Data, A: StateValue + Data, B: StateValue + Data> OperatorFactory
    for IntervalJoinFactory<K, A, B>
{
    type Key = K;
    type In = Side<A, B>;
    type Out = (A, Option<B>);
    type Operator<S: StateBackend> = EventTime<IntervalJoinOperator<S, K, A, B>>;

    fn create<S: StateBackend>(
        &self,
        ctx: &OperatorContext,
        mut state: S,
    ) -> Result<Self::Operator<S>, BoxError> {
        let operator = IntervalJoinOperator {
            lower: self.lower,
            upper: self.upper,
            outer: self.outer,
            buffers: state.map_state(BUFFERS)?,
            cleanup: state.timer_queue("cleanup")?,
        };
        Ok(EventTime::new(operator, ctx))
    }

    fn tables(&self) -> Vec<String> {
        vec![BUFFERS.to_string()]
    }
}

/// The elements of one key that may still find partners.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Buffers<A, B> {
    /// Left elements: time, element, whether it matched anything yet.
    lefts: Vec<(Timestamp, A, bool)>,
    /// Right elements: time, element.
    rights: Vec<(Timestamp, B)>,
}

impl<A, B> Default for Buffers<A, B> {
    fn default() -> Self {
        Buffers {
            lefts: Vec::new(),
            rights: Vec::new(),
        }
    }
}

/// One worker of an interval join.
pub struct IntervalJoinOperator<S: StateBackend, K: StateKey, A: StateValue, B: StateValue> {
    lower: i64,
    upper: i64,
    outer: bool,
    buffers: S::Map<K, Buffers<A, B>>,
    cleanup: S::Timers<K>,
}

impl<S: StateBackend, K: StateKey, A: StateValue, B: StateValue> std::fmt::Debug
    for IntervalJoinOperator<S, K, A, B>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntervalJoinOperator")
            .field("lower", &self.lower)
            .field("upper", &self.upper)
            .field("keys", &self.buffers.len())
            .finish_non_exhaustive()
    }
}

impl<S, K, A, B> IntervalJoinOperator<S, K, A, B>
where
    S: StateBackend,
    K: StateKey + Data,
    A: StateValue + Data,
    B: StateValue + Data,
{
    /// When a left element at `ts` can no longer match: the watermark passed `ts + upper`.
    fn left_expiry(&self, ts: Timestamp) -> Timestamp {
        ts.saturating_add(self.upper).saturating_add(1)
    }

    /// When a right element at `ts` can no longer match: the watermark passed `ts - lower`.
    fn right_expiry(&self, ts: Timestamp) -> Timestamp {
        ts.saturating_sub(self.lower).saturating_add(1)
    }

    /// Drops `key`'s elements the watermark made useless (emitting unmatched lefts if
    /// outer).
    fn expire(
        &mut self,
        key: K,
        watermark: Timestamp,
        out: &mut Output<(A, Option<B>)>,
    ) -> Result<(), BoxError> {
        let w = watermark;
        let (lower, upper, outer) = (self.lower, self.upper, self.outer);
        let mut unmatched = Vec::new();
        let empty = self.buffers.modify(&key, |b| {
            b.lefts.retain(|(ts, a, matched)| {
                let keep = ts.saturating_add(upper) >= w;
                if !keep && outer && !matched {
                    unmatched.push((*ts, a.clone()));
                }
                keep
            });
            b.rights.retain(|(ts, _)| ts.saturating_sub(lower) >= w);
            b.lefts.is_empty() && b.rights.is_empty()
        })?;
        if empty == Some(true) {
            self.buffers.take(&key)?;
        }
        for (ts, a) in unmatched {
            out.emit(ts.saturating_add(upper), (a, None));
        }
        Ok(())
    }
}

impl<S, K, A, B> EventTimeOperator for IntervalJoinOperator<S, K, A, B>
where
    S: StateBackend,
    K: StateKey + Data,
    A: StateValue + Data,
    B: StateValue + Data,
{
    type Key = K;
    type In = Side<A, B>;
    type Out = (A, Option<B>);
    type Timers = S::Timers<K>;

    /// An element exactly at the watermark may still match (its partners up to the
    /// watermark are not expired yet).
    const LATENESS: Lateness = Lateness::BeforeWatermark;

    fn on_event(
        &mut self,
        ts: Timestamp,
        event: Keyed<K, Side<A, B>>,
        _watermark: Timestamp,
        out: &mut Output<(A, Option<B>)>,
    ) -> Result<Handled, BoxError> {
        let Keyed { key, value } = event;
        let (lower, upper) = (self.lower, self.upper);
        let mut pairs = Vec::new();
        let expiry = match value {
            Side::Left(a) => {
                self.buffers.update(&key, Buffers::default, |b| {
                    let (from, to) = (ts.saturating_add(lower), ts.saturating_add(upper));
                    let mut matched = false;
                    for (bts, bv) in b.rights.iter().filter(|(t, _)| (from..=to).contains(t)) {
                        pairs.push((ts.max(*bts), a.clone(), bv.clone()));
                        matched = true;
                    }
                    b.lefts.push((ts, a, matched));
                })?;
                self.left_expiry(ts)
            }
            Side::Right(bv) => {
                self.buffers.update(&key, Buffers::default, |b| {
                    let (from, to) = (ts.saturating_sub(upper), ts.saturating_sub(lower));
                    for (ats, a, matched) in b
                        .lefts
                        .iter_mut()
                        .filter(|(t, _, _)| (from..=to).contains(t))
                    {
                        pairs.push((ts.max(*ats), a.clone(), bv.clone()));
                        *matched = true;
                    }
                    b.rights.push((ts, bv));
                })?;
                self.right_expiry(ts)
            }
        };
        self.cleanup.register(expiry, key)?;
        for (at, a, b) in pairs {
            out.emit(at, (a, Some(b)));
        }
        Ok(Handled::Taken)
    }

    fn timers(&mut self) -> &mut [S::Timers<K>] {
        std::slice::from_mut(&mut self.cleanup)
    }

    fn on_timer(
        &mut self,
        _queue: usize,
        _time: Timestamp,
        key: K,
        watermark: Timestamp,
        out: &mut Output<(A, Option<B>)>,
    ) -> Result<(), BoxError> {
        self.expire(key, watermark, out)
    }

    fn state_entries(&self) -> usize {
        self.buffers.len()
    }

    fn tables(&mut self) -> Vec<&mut dyn StateTable> {
        vec![&mut self.buffers]
    }

    fn restore(&mut self, _watermark: Timestamp) -> Result<(), BoxError> {
        let mut expiries = Vec::new();
        let (lower, upper) = (self.lower, self.upper);
        self.buffers.scan(|key, b| {
            let first = b
                .lefts
                .iter()
                .map(|(ts, _, _)| ts.saturating_add(upper).saturating_add(1))
                .chain(
                    b.rights
                        .iter()
                        .map(|(ts, _)| ts.saturating_sub(lower).saturating_add(1)),
                )
                .min();
            if let Some(t) = first {
                expiries.push((t, key));
            }
        })?;
        for (t, key) in expiries {
            self.cleanup.register(t, key)?;
        }
        Ok(())
    }
}

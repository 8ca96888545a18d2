//! The temporal (versioned) join: each left element meets the version of the right side
//! that was valid at its event time.

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use weir_engine::error::BoxError;
use weir_engine::operator::OperatorFactory;
use weir_engine::{
    Data, EventTime, EventTimeOperator, Handled, Keyed, Lateness, MapState, OperatorContext,
    Output, StateBackend, StateKey, StateTable, StateValue, TimerQueue, Timestamp,
};

use super::Side;
use crate::time_order::{insert_by_time, take_due, upto, TimeOrdered};

pub(super) struct TemporalJoinFactory<K, A, V> {
    pub(super) _types: PhantomData<fn(K, A) -> V>,
}

/// The state table of the versioned rows and waiting events per key.
const VERSIONS: &str = "temporal-join";

impl<K: StateKey + Data, A: StateValue + Data, V: StateValue + Data> OperatorFactory
    for TemporalJoinFactory<K, A, V>
{
    type Key = K;
    type In = Side<A, (K, Option<V>)>;
    type Out = (A, Option<V>);
    type Operator<S: StateBackend> = EventTime<TemporalJoinOperator<S, K, A, V>>;

    fn create<S: StateBackend>(
        &self,
        ctx: &OperatorContext,
        mut state: S,
    ) -> Result<Self::Operator<S>, BoxError> {
        let operator = TemporalJoinOperator {
            keys: state.map_state(VERSIONS)?,
            timers: state.timer_queue("timers")?,
        };
        Ok(EventTime::new(operator, ctx))
    }

    fn tables(&self) -> Vec<String> {
        vec![VERSIONS.to_string()]
    }
}

/// One key's versioned table row and the events waiting for the watermark.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Versioned<A, V> {
    /// Versions by the time they are valid from: a value, or deleted.
    versions: TimeOrdered<Option<V>>,
    /// Events waiting for the watermark.
    pending: TimeOrdered<A>,
}

impl<A, V> Default for Versioned<A, V> {
    fn default() -> Self {
        Versioned {
            versions: Vec::new(),
            pending: Vec::new(),
        }
    }
}

/// One worker of a temporal join.
pub struct TemporalJoinOperator<S: StateBackend, K: StateKey, A: StateValue, V: StateValue> {
    keys: S::Map<K, Versioned<A, V>>,
    timers: S::Timers<K>,
}

impl<S: StateBackend, K: StateKey, A: StateValue, V: StateValue> std::fmt::Debug
    for TemporalJoinOperator<S, K, A, V>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemporalJoinOperator")
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

impl<S, K, A, V> TemporalJoinOperator<S, K, A, V>
where
    S: StateBackend,
    K: StateKey + Data,
    A: StateValue + Data,
    V: StateValue + Data,
{
    /// Joins `key`'s waiting events the watermark reached, then compacts its versions.
    fn join_due(
        &mut self,
        key: K,
        watermark: Timestamp,
        out: &mut Output<(A, Option<V>)>,
    ) -> Result<(), BoxError> {
        let w = watermark;
        let mut joined = Vec::new();
        let next = self.keys.modify(&key, |row| {
            for (ts, event) in take_due(&mut row.pending, w) {
                let valid = upto(&row.versions, ts);
                let value = valid.checked_sub(1).and_then(|i| row.versions[i].1.clone());
                joined.push((ts, event, value));
            }
            // Only the version valid at the watermark, and later ones, can be used.
            let valid = upto(&row.versions, w);
            row.versions.drain(..valid.saturating_sub(1));
            row.pending.first().map(|(ts, _)| *ts)
        })?;
        if let Some(Some(t)) = next {
            self.timers.register(t, key)?;
        }
        for (ts, event, value) in joined {
            out.emit(ts, (event, value));
        }
        Ok(())
    }
}

impl<S, K, A, V> EventTimeOperator for TemporalJoinOperator<S, K, A, V>
where
    S: StateBackend,
    K: StateKey + Data,
    A: StateValue + Data,
    V: StateValue + Data,
{
    type Key = K;
    type In = Side<A, (K, Option<V>)>;
    type Out = (A, Option<V>);
    type Timers = S::Timers<K>;

    /// Events wait for the watermark and join the version valid at their time; one at or
    /// before the watermark comes after its versions were compacted.
    const LATENESS: Lateness = Lateness::AtOrBeforeWatermark;

    fn on_event(
        &mut self,
        ts: Timestamp,
        event: Keyed<K, Side<A, (K, Option<V>)>>,
        _watermark: Timestamp,
        _out: &mut Output<(A, Option<V>)>,
    ) -> Result<Handled, BoxError> {
        let Keyed { key, value } = event;
        self.keys
            .update(&key, Versioned::default, |row| match value {
                Side::Left(event) => {
                    insert_by_time(&mut row.pending, ts, event);
                }
                Side::Right((_, version)) => {
                    insert_by_time(&mut row.versions, ts, version);
                }
            })?;
        // Events are joined at this time; versions are compacted then.
        self.timers.register(ts, key)?;
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
        out: &mut Output<(A, Option<V>)>,
    ) -> Result<(), BoxError> {
        self.join_due(key, watermark, out)
    }

    fn state_entries(&self) -> usize {
        self.keys.len()
    }

    fn tables(&mut self) -> Vec<&mut dyn StateTable> {
        vec![&mut self.keys]
    }

    fn restore(&mut self, _watermark: Timestamp) -> Result<(), BoxError> {
        let mut due = Vec::new();
        self.keys.scan(|key, row| {
            if let Some((ts, _)) = row.pending.first() {
                due.push((*ts, key));
            }
        })?;
        for (ts, key) in due {
            self.timers.register(ts, key)?;
        }
        Ok(())
    }
}

//! The window operator: one instance per worker, on the engine's event-time harness.

use weir_engine::error::BoxError;
use weir_engine::operator::OperatorFactory;
use weir_engine::query::QueryableTable;
use weir_engine::{
    Data, Due, EventTime, EventTimeOperator, Handled, Keyed, Lateness, MapState, OperatorContext,
    Output, StateBackend, StateKey, StateTable, Timestamp,
};

use super::aligned::{self, AlignedWindows};
use super::latest::{LatestResults, LATEST};
use super::session::{self, SessionWindows};
use super::trigger::{Trigger, TRIGGERS};
use super::{LateData, OriginOf, Rejections, WindowEvent, WindowSpec};
use crate::aggregate::Aggregator;

/// Builds one [`WindowOperator`] per worker instance from the options set on the stream.
pub(crate) struct WindowFactory<K, T, A> {
    pub(super) spec: WindowSpec,
    pub(super) allowed_lateness: i64,
    pub(super) aggregator: A,
    /// Whether late events are emitted (for the late-data sink) or only counted.
    pub(super) route_late: bool,
    /// Whether events the aggregate fails on are emitted (for the rejects sink) or fail
    /// the job; and the words for where they were read.
    pub(super) route_rejects: bool,
    pub(super) origin: Option<OriginOf<T>>,
    /// Whether each key's latest result is kept for queries
    /// ([`super::WindowedStream::queryable`]).
    pub(super) queryable: bool,
    /// Early firings ([`super::WindowedStream::trigger`]; aligned windows only).
    pub(super) trigger: Option<Trigger>,
    pub(super) _types: std::marker::PhantomData<fn() -> (K, T)>,
}

#[cfg(test)]
impl<K, T, A> WindowFactory<K, T, A> {
    /// Windows of `spec` without lateness or late-data output, for unit tests of operators
    /// built on windows (the window join).
    pub(crate) fn plain(spec: WindowSpec, aggregator: A) -> Self {
        WindowFactory {
            spec,
            allowed_lateness: 0,
            aggregator,
            route_late: false,
            route_rejects: false,
            origin: None,
            queryable: false,
            trigger: None,
            _types: std::marker::PhantomData,
        }
    }
}

impl<K, T, A> OperatorFactory for WindowFactory<K, T, A>
where
    K: StateKey + Data,
    T: Data,
    A: Aggregator<T>,
{
    type Key = K;
    type In = T;
    type Out = WindowEvent<K, A::Output, T>;
    type Operator<S: StateBackend> = EventTime<WindowOperator<S, K, T, A>>;

    fn create<S: StateBackend>(
        &self,
        ctx: &OperatorContext,
        mut state: S,
    ) -> Result<Self::Operator<S>, BoxError> {
        let late = LateData {
            routed: self.route_late,
        };
        let rejections = || Rejections {
            routed: self.route_rejects,
            origin: self.origin.clone(),
        };
        let agg = self.aggregator.clone();
        let latest = LatestResults::open_if(self.queryable, &mut state)?;
        let windows = match self.spec {
            WindowSpec::Tumbling(t) => Windows::Aligned(AlignedWindows::new(
                &mut state,
                t.size,
                t.size,
                t.offset,
                self.allowed_lateness,
                agg,
                late,
                rejections(),
                latest,
                self.trigger,
            )?),
            WindowSpec::Sliding(s) => Windows::Aligned(AlignedWindows::new(
                &mut state,
                s.size,
                s.slide,
                s.offset,
                self.allowed_lateness,
                agg,
                late,
                rejections(),
                latest,
                self.trigger,
            )?),
            WindowSpec::Session(s) => Windows::Session(SessionWindows::new(
                &mut state,
                s.gap,
                self.allowed_lateness,
                agg,
                late,
                rejections(),
                latest,
            )?),
        };
        let operator = WindowOperator { windows };
        Ok(EventTime::new(operator, ctx))
    }

    fn tables(&self) -> Vec<String> {
        let table = match self.spec {
            WindowSpec::Tumbling(_) | WindowSpec::Sliding(_) => aligned::PANES,
            WindowSpec::Session(_) => session::SESSIONS,
        };
        let mut tables = vec![table.to_string()];
        if self.queryable {
            tables.push(LATEST.to_string());
        }
        if self.trigger.is_some() {
            tables.push(TRIGGERS.to_string());
        }
        tables
    }
}

/// The windows of one kind; the kind is matched once per event.
enum Windows<S: StateBackend, K: StateKey, T, A: Aggregator<T>> {
    /// Tumbling or sliding.
    Aligned(AlignedWindows<S, K, T, A>),
    /// Session.
    Session(SessionWindows<S, K, T, A>),
}

/// The window operator for any [`WindowSpec`], run by the engine's [`EventTime`] harness.
pub struct WindowOperator<S: StateBackend, K: StateKey, T, A: Aggregator<T>> {
    windows: Windows<S, K, T, A>,
}

impl<S: StateBackend, K: StateKey, T, A: Aggregator<T>> std::fmt::Debug
    for WindowOperator<S, K, T, A>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.windows {
            Windows::Aligned(_) => "WindowOperator::Aligned",
            Windows::Session(_) => "WindowOperator::Session",
        })
    }
}

impl<S, K, T, A> EventTimeOperator for WindowOperator<S, K, T, A>
where
    S: StateBackend,
    K: StateKey + Data,
    T: Data,
    A: Aggregator<T>,
{
    type Key = K;
    type In = T;
    type Out = WindowEvent<K, A::Output, T>;
    type Timers = S::Timers<K>;

    /// Late when every window of the event is past its allowed lateness (for sessions:
    /// the session it would merge into).
    const LATENESS: Lateness = Lateness::Decided;

    #[inline]
    fn on_event(
        &mut self,
        ts: Timestamp,
        event: Keyed<K, T>,
        watermark: Timestamp,
        out: &mut Output<Self::Out>,
    ) -> Result<Handled, BoxError> {
        match &mut self.windows {
            Windows::Aligned(w) => w.on_event(ts, event, watermark, out),
            Windows::Session(w) => w.on_event(ts, event, watermark, out),
        }
    }

    fn prefetch<'a>(&mut self, keys: impl Iterator<Item = &'a K>) -> Result<(), BoxError>
    where
        K: 'a,
    {
        match &mut self.windows {
            Windows::Aligned(w) => w.prefetch(keys),
            Windows::Session(_) => Ok(()),
        }
    }

    fn timers(&mut self) -> &mut [S::Timers<K>] {
        match &mut self.windows {
            Windows::Aligned(w) => w.timers(),
            Windows::Session(w) => w.timers(),
        }
    }

    fn timer_due(&self, queue: usize) -> Due {
        match &self.windows {
            Windows::Aligned(w) => w.timer_due(queue),
            Windows::Session(w) => w.timer_due(queue),
        }
    }

    #[inline]
    fn on_timer(
        &mut self,
        queue: usize,
        time: Timestamp,
        key: K,
        watermark: Timestamp,
        out: &mut Output<Self::Out>,
    ) -> Result<(), BoxError> {
        match &mut self.windows {
            Windows::Aligned(w) => w.on_timer(queue, time, key, watermark, out),
            Windows::Session(w) => w.on_timer(queue, time, key, watermark, out),
        }
    }

    fn tables(&mut self) -> Vec<&mut dyn StateTable> {
        match &mut self.windows {
            Windows::Aligned(w) => w.tables(),
            Windows::Session(w) => w.tables(),
        }
    }

    /// Each key's latest result, when the job made the window queryable.
    fn queryable(&mut self) -> Option<&mut dyn QueryableTable> {
        let latest = match &mut self.windows {
            Windows::Aligned(w) => w.latest(),
            Windows::Session(w) => w.latest(),
        };
        latest.map(|l| l as &mut dyn QueryableTable)
    }

    fn state_entries(&self) -> usize {
        match &self.windows {
            Windows::Aligned(w) => w.state_entries(),
            Windows::Session(w) => w.state_entries(),
        }
    }

    fn restore(&mut self, watermark: Timestamp) -> Result<(), BoxError> {
        match &mut self.windows {
            Windows::Aligned(w) => w.restore(watermark),
            Windows::Session(w) => w.restore(),
        }
    }
}

/// Keeps the items of `key`'s list for which `keep` holds, dropping the key when none is
/// left; returns how many items were removed.
pub(crate) fn prune<K, V, M: MapState<K, Vec<V>>>(
    table: &mut M,
    key: &K,
    keep: impl FnMut(&V) -> bool,
) -> Result<usize, BoxError> {
    shrink(table, key, |items| {
        let before = items.len();
        items.retain(keep);
        before - items.len()
    })
}

/// Removes the leading items of `key`'s list for which `drop` holds (the list must be
/// ordered so that they form a prefix), dropping the key when none is left; returns how
/// many items were removed. Bisection instead of a scan: cheap however long the list.
pub(crate) fn prune_prefix<K, V, M: MapState<K, Vec<V>>>(
    table: &mut M,
    key: &K,
    drop: impl Fn(&V) -> bool,
) -> Result<usize, BoxError> {
    shrink(table, key, |items| {
        let removed = items.partition_point(drop);
        items.drain(..removed);
        removed
    })
}

/// Applies `remove` (returning how many items it removed) to `key`'s list, dropping the
/// key when the list is empty.
fn shrink<K, V, M: MapState<K, Vec<V>>>(
    table: &mut M,
    key: &K,
    remove: impl FnOnce(&mut Vec<V>) -> usize,
) -> Result<usize, BoxError> {
    let left = table.modify(key, |items| (remove(items), items.is_empty()))?;
    let Some((removed, empty)) = left else {
        return Ok(0);
    };
    if empty {
        table.take(key)?;
    }
    Ok(removed)
}

//! Window functions besides [`WindowedStream::aggregate`]: `reduce`, a process function over
//! a window's elements, and an aggregate whose result a function sees with the window
//! (Flink's `WindowedStream::reduce`, `process` and `aggregate(agg, windowFunction)`).
//!
//! None of them is a second window operator: each is an [`Aggregator`] run by the same
//! operator, with a function applied to the fired results (chained to the operator, so no
//! exchange between them).
//!
//! - `reduce` is [`Reduce`]: the accumulator is the reduced value so far.
//! - `process` buffers the elements: [`Collect`]'s accumulator is the list of a pane's
//!   elements (tumbling windows: the window's; sliding windows: each of the `gcd(size,
//!   slide)` panes', so an element is stored once however many windows hold it, and a
//!   firing window concatenates its panes; sessions: the session's, concatenated as
//!   sessions merge). They live in the window's state table like any accumulator, so they
//!   are checkpointed on every backend. The function gets them grouped by pane in time
//!   order, in arrival order within a pane.
//! - `aggregate_with` keeps only the aggregate's accumulator (no elements), as Flink
//!   recommends, and hands the function the result.

use serde::{Deserialize, Serialize};
use weir_engine::keys::StableHash;
use weir_engine::{Data, StateKey, StateValue, Stream};

use super::{Timing, Window, WindowResult, WindowedStream};
use crate::aggregate::{AggregateError, Aggregator};

/// What a window function knows of the window it is called for (Flink's
/// `ProcessWindowFunction.Context`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowContext<'a, K> {
    /// The key.
    pub key: &'a K,
    /// The window's bounds; the function's outputs have event time `window.end - 1`.
    pub window: Window,
    /// Whether the window fired early, on time or late (see [`Timing`]).
    pub timing: Timing,
    /// Whether the window fired before (see [`WindowResult::is_update`]).
    pub is_update: bool,
}

impl<K, R> WindowResult<K, R> {
    /// The window this result is of, for a window function.
    pub fn context(&self) -> WindowContext<'_, K> {
        WindowContext {
            key: &self.key,
            window: self.window,
            timing: self.timing,
            is_update: self.is_update,
        }
    }
}

/// Flink's `reduce`: combines a window's events pairwise with `f`, incrementally. `f` must
/// be associative and commutative, since panes and merging sessions are reduced
/// separately and then combined (see [`Aggregator`]'s invariants).
#[derive(Debug, Clone, Copy)]
pub struct Reduce<F>(F);

impl<F> Reduce<F> {
    /// Reduces with `f`.
    pub fn new<T>(f: F) -> Self
    where
        F: Fn(T, T) -> T,
    {
        Reduce(f)
    }
}

impl<T: StateValue, F: Fn(T, T) -> T + Clone + Send + 'static> Aggregator<T> for Reduce<F> {
    /// The value reduced so far; `None` before the first event.
    type Acc = Option<T>;
    /// `None` only for no events, which a fired window never has.
    type Output = Option<T>;
    fn create(&self) -> Option<T> {
        None
    }
    fn add(&self, acc: &mut Option<T>, event: &T) -> Result<(), AggregateError> {
        self.merge(acc, &Some(event.clone()))
    }
    fn merge(&self, acc: &mut Option<T>, other: &Option<T>) -> Result<(), AggregateError> {
        if let Some(other) = other {
            *acc = Some(match acc.take() {
                Some(value) => (self.0)(value, other.clone()),
                None => other.clone(),
            });
        }
        Ok(())
    }
    fn finish(&self, acc: &Option<T>) -> Option<T> {
        acc.clone()
    }
    fn finish_owned(&self, acc: Option<T>) -> Option<T> {
        acc
    }
}

/// All events, in a list: the buffer of a window process function
/// ([`WindowedStream::process`]). `merge` appends, so the list of merged panes is in pane
/// order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collect;

impl<T: StateValue> Aggregator<T> for Collect {
    type Acc = Vec<T>;
    type Output = Vec<T>;
    fn create(&self) -> Vec<T> {
        Vec::new()
    }
    fn add(&self, acc: &mut Vec<T>, event: &T) -> Result<(), AggregateError> {
        acc.push(event.clone());
        Ok(())
    }
    fn merge(&self, acc: &mut Vec<T>, other: &Vec<T>) -> Result<(), AggregateError> {
        acc.extend_from_slice(other);
        Ok(())
    }
    fn finish(&self, acc: &Vec<T>) -> Vec<T> {
        acc.clone()
    }
    fn finish_owned(&self, acc: Vec<T>) -> Vec<T> {
        acc
    }
}

/// Calls a window function on one fired result; what it pushes goes on.
pub(super) fn apply<K, V: ?Sized, R>(
    f: &impl Fn(&WindowContext<'_, K>, &V, &mut Vec<R>),
    context: &WindowContext<'_, K>,
    value: &V,
) -> Vec<R> {
    let mut out = Vec::new();
    f(context, value, &mut out);
    out
}

impl<K, T, KF> WindowedStream<K, T, KF>
where
    K: StateKey + StableHash + Data,
    T: Data,
    KF: Fn(&T) -> K + Clone + Send + 'static,
{
    /// Reduces each window's events with `f`, incrementally (Flink's `reduce`): the result
    /// has the events' type. `f` must be associative and commutative ([`Reduce`]).
    pub fn reduce<F>(self, f: F) -> Stream<WindowResult<K, T>>
    where
        T: StateValue,
        F: Fn(T, T) -> T + Clone + Send + 'static,
    {
        self.aggregate(Reduce::new(f)).flat_map(|r| {
            let WindowResult {
                key,
                window,
                value,
                is_update,
                timing,
            } = r;
            value.map(|value| WindowResult {
                key,
                window,
                value,
                is_update,
                timing,
            })
        })
    }

    /// Calls `f` with all the events of each window as it fires (Flink's
    /// `ProcessWindowFunction`): the window's key and bounds, its events (grouped by pane in
    /// time order, in arrival order within a pane; see the module docs), and a list to
    /// push outputs to, which go on with event time `window.end - 1`. The events are
    /// buffered in the window's state until it fires; where an aggregate suffices,
    /// [`WindowedStream::aggregate_with`] keeps only its accumulator.
    pub fn process<R, F>(self, f: F) -> Stream<R>
    where
        T: StateValue,
        R: Data,
        F: Fn(&WindowContext<'_, K>, &[T], &mut Vec<R>) + Clone + Send + 'static,
    {
        self.aggregate(Collect)
            .flat_map(move |r: WindowResult<K, Vec<T>>| apply(&f, &r.context(), &r.value[..]))
    }

    /// Aggregates each window with `aggregator` and calls `f` with the window and the
    /// result as it fires (Flink's `aggregate(aggregateFunction, windowFunction)`): only
    /// the accumulator is kept, no events. What `f` pushes goes on with event time
    /// `window.end - 1`.
    pub fn aggregate_with<A, R, F>(self, aggregator: A, f: F) -> Stream<R>
    where
        A: Aggregator<T>,
        R: Data,
        F: Fn(&WindowContext<'_, K>, &A::Output, &mut Vec<R>) + Clone + Send + 'static,
    {
        self.aggregate(aggregator)
            .flat_map(move |r: WindowResult<K, A::Output>| apply(&f, &r.context(), &r.value))
    }
}

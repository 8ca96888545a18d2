//! Incremental aggregates: create an accumulator, add events, merge accumulators (panes,
//! sessions), finish into a result.
//!
//! # Invariants
//! - `add` and `merge` are associative and commutative over the events they see, so panes
//!   and merged sessions give the same result as adding every event to one accumulator.
//! - Integer sums are checked: overflow is an [`AggregateError`], never a silent wrap.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use weir_engine::StateValue;

/// An aggregate failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AggregateError {
    /// An integer sum left the `i64` range.
    #[error(
        "{what} overflowed i64: the values are too large to sum; aggregate them as f64 instead"
    )]
    Overflow {
        /// Which aggregate.
        what: &'static str,
    },
}

/// An incremental aggregate over events of type `T`.
pub trait Aggregator<T>: Clone + Send + 'static {
    /// The running state, kept in the state backend.
    type Acc: StateValue;
    /// The result: kept in the state backend as each key's latest result when the window
    /// is queryable ([`crate::window::WindowedStream::queryable`]).
    type Output: StateValue;

    /// An empty accumulator.
    fn create(&self) -> Self::Acc;
    /// Adds one event. When it fails, `acc` should be as before, so that a job routing
    /// the event to its rejects ([`crate::window::WindowedStream::rejects`]) goes on
    /// without it: the built-in aggregates check before they change anything (`and`
    /// keeps its first half's addition if the second half fails).
    fn add(&self, acc: &mut Self::Acc, event: &T) -> Result<(), AggregateError>;
    /// Adds everything `other` has seen.
    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc) -> Result<(), AggregateError>;
    /// The result of an accumulator.
    fn finish(&self, acc: &Self::Acc) -> Self::Output;
    /// The result of an accumulator that is not needed afterwards (a window merged from
    /// panes): aggregates that collect events override it to move them instead of copying.
    fn finish_owned(&self, acc: Self::Acc) -> Self::Output {
        self.finish(&acc)
    }
}

/// Combinators on aggregators.
pub trait AggregatorExt<T>: Aggregator<T> + Sized {
    /// Runs `self` and `other` side by side; the result is the pair of results.
    fn and<B: Aggregator<T>>(self, other: B) -> Both<Self, B> {
        Both(self, other)
    }

    /// Turns the result into a type of the job's own, so that a combined aggregate's
    /// fields have names instead of tuple positions (as Flink's
    /// `AggregateFunction::getResult` returns the user's type):
    ///
    /// ```
    /// # use serde::{Deserialize, Serialize};
    /// # use weir_operators::prelude::*;
    /// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    /// struct Dwell {
    ///     views: u64,
    ///     avg_ms: Option<f64>,
    /// }
    ///
    /// let dwell = Count
    ///     .and(Avg::of(|ms: &i64| *ms))
    ///     .map_result(|(views, avg_ms)| Dwell { views, avg_ms });
    /// let mut acc = dwell.create();
    /// for ms in [100, 300] {
    ///     dwell.add(&mut acc, &ms)?;
    /// }
    /// assert_eq!(dwell.finish(&acc), Dwell { views: 2, avg_ms: Some(200.0) });
    /// # Ok::<(), weir_operators::AggregateError>(())
    /// ```
    ///
    /// Only the result changes: the accumulator kept in state is `self`'s, so adding
    /// `map_result` to a job keeps its checkpoints.
    fn map_result<O, F>(self, f: F) -> MapResult<Self, F>
    where
        O: StateValue,
        F: Fn(Self::Output) -> O + Clone + Send + 'static,
    {
        MapResult(self, f)
    }
}
impl<T, A: Aggregator<T>> AggregatorExt<T> for A {}

/// An aggregate whose result is mapped (see [`AggregatorExt::map_result`]).
#[derive(Clone, Copy)]
pub struct MapResult<A, F>(A, F);

impl<A: std::fmt::Debug, F> std::fmt::Debug for MapResult<A, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("MapResult")
            .field(&self.0)
            .finish_non_exhaustive()
    }
}

impl<T, A, O, F> Aggregator<T> for MapResult<A, F>
where
    A: Aggregator<T>,
    O: StateValue,
    F: Fn(A::Output) -> O + Clone + Send + 'static,
{
    type Acc = A::Acc;
    type Output = O;
    fn create(&self) -> Self::Acc {
        self.0.create()
    }
    #[inline]
    fn add(&self, acc: &mut Self::Acc, event: &T) -> Result<(), AggregateError> {
        self.0.add(acc, event)
    }
    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc) -> Result<(), AggregateError> {
        self.0.merge(acc, other)
    }
    fn finish(&self, acc: &Self::Acc) -> O {
        (self.1)(self.0.finish(acc))
    }
    fn finish_owned(&self, acc: Self::Acc) -> O {
        (self.1)(self.0.finish_owned(acc))
    }
}

/// Two aggregates side by side (see [`AggregatorExt::and`]).
#[derive(Debug, Clone, Copy)]
pub struct Both<A, B>(A, B);

impl<T, A: Aggregator<T>, B: Aggregator<T>> Aggregator<T> for Both<A, B> {
    type Acc = (A::Acc, B::Acc);
    type Output = (A::Output, B::Output);
    fn create(&self) -> Self::Acc {
        (self.0.create(), self.1.create())
    }
    fn add(&self, acc: &mut Self::Acc, event: &T) -> Result<(), AggregateError> {
        self.0.add(&mut acc.0, event)?;
        self.1.add(&mut acc.1, event)
    }
    fn merge(&self, acc: &mut Self::Acc, other: &Self::Acc) -> Result<(), AggregateError> {
        self.0.merge(&mut acc.0, &other.0)?;
        self.1.merge(&mut acc.1, &other.1)
    }
    fn finish(&self, acc: &Self::Acc) -> Self::Output {
        (self.0.finish(&acc.0), self.1.finish(&acc.1))
    }
}

/// Numbers the built-in aggregates work on: `i64` (checked sums) and `f64`.
pub trait Numeric:
    Copy + PartialOrd + Send + Serialize + DeserializeOwned + std::fmt::Debug + 'static
{
    /// The additive identity.
    const ZERO: Self;
    /// `self + other`, or `None` if it does not fit.
    fn checked_add(self, other: Self) -> Option<Self>;
    /// The value as `f64`, for averages.
    fn to_f64(self) -> f64;
}

impl Numeric for i64 {
    const ZERO: i64 = 0;
    #[inline]
    fn checked_add(self, other: i64) -> Option<i64> {
        i64::checked_add(self, other)
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self as f64
    }
}

impl Numeric for f64 {
    const ZERO: f64 = 0.0;
    #[inline]
    fn checked_add(self, other: f64) -> Option<f64> {
        Some(self + other)
    }
    #[inline]
    fn to_f64(self) -> f64 {
        self
    }
}

#[inline]
fn add_checked<N: Numeric>(a: N, b: N, what: &'static str) -> Result<N, AggregateError> {
    a.checked_add(b).ok_or(AggregateError::Overflow { what })
}

#[inline]
fn min_of<N: Numeric>(a: Option<N>, b: N) -> Option<N> {
    Some(match a {
        Some(a) if a <= b => a,
        _ => b,
    })
}

#[inline]
fn max_of<N: Numeric>(a: Option<N>, b: N) -> Option<N> {
    Some(match a {
        Some(a) if a >= b => a,
        _ => b,
    })
}

/// Number of events.
#[derive(Debug, Clone, Copy, Default)]
pub struct Count;

impl<T> Aggregator<T> for Count {
    type Acc = u64;
    type Output = u64;
    fn create(&self) -> u64 {
        0
    }
    #[inline]
    fn add(&self, acc: &mut u64, _: &T) -> Result<(), AggregateError> {
        *acc += 1;
        Ok(())
    }
    fn merge(&self, acc: &mut u64, other: &u64) -> Result<(), AggregateError> {
        *acc += other;
        Ok(())
    }
    fn finish(&self, acc: &u64) -> u64 {
        *acc
    }
}

macro_rules! field_aggregate {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name<F>(F);

        impl<F> $name<F> {
            /// Aggregates the number `field` extracts from each event.
            pub fn of<T, N: Numeric>(field: F) -> Self
            where
                F: Fn(&T) -> N,
            {
                $name(field)
            }
        }
    };
}

field_aggregate!(
    /// Sum of a field (checked for `i64`).
    Sum
);
field_aggregate!(
    /// Smallest value of a field (`None` for no events).
    Min
);
field_aggregate!(
    /// Largest value of a field (`None` for no events).
    Max
);
field_aggregate!(
    /// Mean of a field (`None` for no events).
    Avg
);
field_aggregate!(
    /// Count, sum, min, max and mean of a field in one accumulator: the cheapest way to get
    /// all five.
    Stats
);

impl<T, N: Numeric, F: Fn(&T) -> N + Clone + Send + 'static> Aggregator<T> for Sum<F> {
    type Acc = N;
    type Output = N;
    fn create(&self) -> N {
        N::ZERO
    }
    #[inline]
    fn add(&self, acc: &mut N, event: &T) -> Result<(), AggregateError> {
        *acc = add_checked(*acc, (self.0)(event), "sum")?;
        Ok(())
    }
    fn merge(&self, acc: &mut N, other: &N) -> Result<(), AggregateError> {
        *acc = add_checked(*acc, *other, "sum")?;
        Ok(())
    }
    fn finish(&self, acc: &N) -> N {
        *acc
    }
}

/// Min and Max differ only in which of two values they keep.
macro_rules! extremum_aggregate {
    ($name:ident, $keep:ident) => {
        impl<T, N: Numeric, F: Fn(&T) -> N + Clone + Send + 'static> Aggregator<T> for $name<F> {
            type Acc = Option<N>;
            type Output = Option<N>;
            fn create(&self) -> Option<N> {
                None
            }
            #[inline]
            fn add(&self, acc: &mut Option<N>, event: &T) -> Result<(), AggregateError> {
                *acc = $keep(*acc, (self.0)(event));
                Ok(())
            }
            fn merge(&self, acc: &mut Option<N>, other: &Option<N>) -> Result<(), AggregateError> {
                if let Some(o) = *other {
                    *acc = $keep(*acc, o);
                }
                Ok(())
            }
            fn finish(&self, acc: &Option<N>) -> Option<N> {
                *acc
            }
        }
    };
}

extremum_aggregate!(Min, min_of);
extremum_aggregate!(Max, max_of);

impl<T, N: Numeric, F: Fn(&T) -> N + Clone + Send + 'static> Aggregator<T> for Avg<F> {
    type Acc = (u64, N);
    type Output = Option<f64>;
    fn create(&self) -> (u64, N) {
        (0, N::ZERO)
    }
    #[inline]
    fn add(&self, acc: &mut (u64, N), event: &T) -> Result<(), AggregateError> {
        acc.1 = add_checked(acc.1, (self.0)(event), "avg")?;
        acc.0 += 1;
        Ok(())
    }
    fn merge(&self, acc: &mut (u64, N), other: &(u64, N)) -> Result<(), AggregateError> {
        acc.1 = add_checked(acc.1, other.1, "avg")?;
        acc.0 += other.0;
        Ok(())
    }
    fn finish(&self, acc: &(u64, N)) -> Option<f64> {
        (acc.0 > 0).then(|| acc.1.to_f64() / acc.0 as f64)
    }
}

/// Accumulator of [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StatsAcc<N> {
    count: u64,
    sum: N,
    min: Option<N>,
    max: Option<N>,
}

/// Result of [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StatsOutput<N> {
    /// Number of events.
    pub count: u64,
    /// Sum of the field.
    pub sum: N,
    /// Smallest value.
    pub min: N,
    /// Largest value.
    pub max: N,
    /// Mean value.
    pub avg: f64,
}

impl<T, N: Numeric, F: Fn(&T) -> N + Clone + Send + 'static> Aggregator<T> for Stats<F> {
    type Acc = StatsAcc<N>;
    type Output = StatsOutput<N>;
    fn create(&self) -> StatsAcc<N> {
        StatsAcc {
            count: 0,
            sum: N::ZERO,
            min: None,
            max: None,
        }
    }
    #[inline]
    fn add(&self, acc: &mut StatsAcc<N>, event: &T) -> Result<(), AggregateError> {
        let v = (self.0)(event);
        acc.sum = add_checked(acc.sum, v, "sum")?;
        acc.count += 1;
        acc.min = min_of(acc.min, v);
        acc.max = max_of(acc.max, v);
        Ok(())
    }
    fn merge(&self, acc: &mut StatsAcc<N>, other: &StatsAcc<N>) -> Result<(), AggregateError> {
        acc.sum = add_checked(acc.sum, other.sum, "sum")?;
        acc.count += other.count;
        if let Some(m) = other.min {
            acc.min = min_of(acc.min, m);
        }
        if let Some(m) = other.max {
            acc.max = max_of(acc.max, m);
        }
        Ok(())
    }
    fn finish(&self, acc: &StatsAcc<N>) -> StatsOutput<N> {
        StatsOutput {
            count: acc.count,
            sum: acc.sum,
            min: acc.min.unwrap_or(N::ZERO),
            max: acc.max.unwrap_or(N::ZERO),
            avg: if acc.count == 0 {
                0.0
            } else {
                acc.sum.to_f64() / acc.count as f64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fold<A: Aggregator<i64>>(agg: &A, values: &[i64]) -> Result<A::Acc, AggregateError> {
        let mut acc = agg.create();
        for v in values {
            agg.add(&mut acc, v)?;
        }
        Ok(acc)
    }

    #[test]
    fn merge_equals_adding_everything() -> Result<(), AggregateError> {
        let agg = Stats::of(|v: &i64| *v);
        let all = [5, -3, 12, 7, 0, 9];
        let whole = fold(&agg, &all)?;
        let mut left = fold(&agg, &all[..2])?;
        let right = fold(&agg, &all[2..])?;
        agg.merge(&mut left, &right)?;
        assert_eq!(left, whole);
        let out = agg.finish(&whole);
        assert_eq!((out.count, out.sum, out.min, out.max), (6, 30, -3, 12));
        assert!((out.avg - 5.0).abs() < 1e-12);
        // Merging with an empty accumulator changes nothing.
        let mut copy = whole;
        agg.merge(&mut copy, &agg.create())?;
        assert_eq!(copy, whole);
        Ok(())
    }

    #[test]
    fn combined_aggregates() -> Result<(), AggregateError> {
        let agg = Count
            .and(Sum::of(|v: &i64| *v))
            .and(Min::of(|v: &i64| *v))
            .and(Max::of(|v: &i64| *v))
            .and(Avg::of(|v: &i64| *v));
        let acc = fold(&agg, &[4, 8])?;
        assert_eq!(agg.finish(&acc), ((((2, 12), Some(4)), Some(8)), Some(6.0)));
        assert_eq!(agg.finish(&agg.create()), ((((0, 0), None), None), None));
        Ok(())
    }

    #[test]
    fn integer_sum_overflow_is_an_error() {
        let agg = Sum::of(|v: &i64| *v);
        assert_eq!(
            fold(&agg, &[i64::MAX, 1]),
            Err(AggregateError::Overflow { what: "sum" })
        );
        let mut a = i64::MAX;
        assert!(agg.merge(&mut a, &1).is_err());
    }

    #[test]
    fn float_sums() -> Result<(), AggregateError> {
        let agg = Sum::of(|v: &f64| *v);
        let mut acc = agg.create();
        agg.add(&mut acc, &1.5)?;
        agg.add(&mut acc, &2.25)?;
        assert_eq!(agg.finish(&acc), 3.75);
        Ok(())
    }
}

//! Timers: which keys need attention when the watermark (event-time timers) or the clock
//! (processing-time timers) passes a time.
//!
//! Operators register `(time, key)` pairs and pop the earliest ones once the watermark makes
//! them due. A backend provides the queue ([`StateBackend::timer_queue`]): the memory backend
//! keeps it in a B-tree ([`MemoryTimers`]); the RocksDB backend keeps it in a column family
//! ordered by time, so a job with tens of millions of open windows does not hold one
//! in-memory entry per key and window.
//!
//! # Contract
//! - Timers come out in time order; keys due at one time may come in several chunks.
//! - Registering the same `(time, key)` twice may make it come out once or twice, so an
//!   operator checks its state when a timer fires (every operator here does).
//! - Timers are derived data: they are not checkpointed. An operator rebuilds them from its
//!   state when it restores (the windows' module docs say how).
//!
//! [`StateBackend::timer_queue`]: super::StateBackend::timer_queue

use std::collections::BTreeMap;

use super::StateError;
use crate::time::Timestamp;

/// Keys ordered by the time they are due.
pub trait TimerQueue<K>: Send + 'static {
    /// Registers `key` to be due at `time`.
    fn register(&mut self, time: Timestamp, key: K) -> Result<(), StateError>;

    /// The earliest timers, if `due` says their time has come: their time and some or all
    /// of the keys due then (call again for the rest).
    fn pop_due(
        &mut self,
        due: impl Fn(Timestamp) -> bool,
    ) -> Result<Option<(Timestamp, Vec<K>)>, StateError>;

    /// The time of the earliest timer, if any (without a read from disk).
    fn next_time(&self) -> Option<Timestamp>;
}

/// The timer queue of an operator that has no timers: never due.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoTimers;

impl<K> TimerQueue<K> for NoTimers {
    fn register(&mut self, time: Timestamp, _key: K) -> Result<(), StateError> {
        Err(StateError {
            table: "<timers>".into(),
            message: format!(
                "a timer at {time} registered with an operator that declared no timers \
                 (its `EventTimeOperator::Timers` is `NoTimers`): declare the backend's queue"
            ),
        })
    }

    fn pop_due(
        &mut self,
        _due: impl Fn(Timestamp) -> bool,
    ) -> Result<Option<(Timestamp, Vec<K>)>, StateError> {
        Ok(None)
    }

    fn next_time(&self) -> Option<Timestamp> {
        None
    }
}

/// Timers in memory: one B-tree entry per time.
#[derive(Debug)]
pub struct MemoryTimers<K> {
    by_time: BTreeMap<Timestamp, Vec<K>>,
}

impl<K> Default for MemoryTimers<K> {
    fn default() -> Self {
        MemoryTimers {
            by_time: BTreeMap::new(),
        }
    }
}

impl<K> MemoryTimers<K> {
    /// The earliest time with timers.
    pub(crate) fn first_time(&self) -> Option<Timestamp> {
        self.by_time.first_key_value().map(|(&time, _)| time)
    }

    /// Removes and returns the keys due at `time`.
    pub(crate) fn remove(&mut self, time: Timestamp) -> Vec<K> {
        self.by_time.remove(&time).unwrap_or_default()
    }

    /// Removes and returns every timer, in time order.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = (Timestamp, Vec<K>)> {
        std::mem::take(&mut self.by_time).into_iter()
    }

    /// Registers `key` at `time`; infallible, unlike the trait method.
    pub(crate) fn insert(&mut self, time: Timestamp, key: K) {
        self.by_time.entry(time).or_default().push(key);
    }
}

impl<K: Send + 'static> TimerQueue<K> for MemoryTimers<K> {
    #[inline]
    fn register(&mut self, time: Timestamp, key: K) -> Result<(), StateError> {
        self.insert(time, key);
        Ok(())
    }

    fn pop_due(
        &mut self,
        due: impl Fn(Timestamp) -> bool,
    ) -> Result<Option<(Timestamp, Vec<K>)>, StateError> {
        Ok(match self.first_time() {
            Some(time) if due(time) => self.by_time.pop_first(),
            _ => None,
        })
    }

    fn next_time(&self) -> Option<Timestamp> {
        self.first_time()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_timers_pop_in_time_order_only_when_due() -> Result<(), StateError> {
        let mut timers = MemoryTimers::default();
        timers.register(20, "b")?;
        timers.register(10, "a")?;
        timers.register(20, "c")?;
        assert_eq!(timers.pop_due(|t| t < 10)?, None);
        assert_eq!(timers.next_time(), Some(10));
        assert_eq!(timers.pop_due(|t| t <= 20)?, Some((10, vec!["a"])));
        assert_eq!(timers.pop_due(|t| t <= 20)?, Some((20, vec!["b", "c"])));
        assert_eq!(timers.pop_due(|_| true)?, None);
        assert_eq!(timers.next_time(), None);
        Ok(())
    }
}

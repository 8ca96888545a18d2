//! Processing time: the wall clock an operator instance reads for its processing-time
//! timers (Flink's `ProcessingTimeService`), replaceable by a manual clock so that tests of
//! timer logic need neither threads nor sleeps.
//!
//! Processing time is, like event time, milliseconds since the Unix epoch
//! ([`crate::Timestamp`]), so a function can compare the two. The system clock may jump
//! (NTP); a timer is due once the clock reads its time or later, whichever way it got there.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::time::Timestamp;

/// Where an operator instance reads processing time: the system clock, or a
/// [`ManualClock`] a test moves.
#[derive(Debug, Clone, Default)]
pub struct ProcessingClock {
    /// Set for a manual clock: the time it reads.
    manual: Option<Arc<AtomicI64>>,
}

impl ProcessingClock {
    /// The system's wall clock.
    pub fn system() -> Self {
        ProcessingClock { manual: None }
    }

    /// The current processing time, in milliseconds since the Unix epoch.
    #[inline]
    pub fn now(&self) -> Timestamp {
        match &self.manual {
            Some(time) => time.load(Ordering::SeqCst),
            None => system_now(),
        }
    }
}

/// The system clock in milliseconds (before the epoch, negative; saturating).
fn system_now() -> Timestamp {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

/// A clock that moves only when told to, for tests: the [`ProcessingClock`]s it hands out
/// all read its time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock reading `now`.
    pub fn new(now: Timestamp) -> Self {
        ManualClock(Arc::new(AtomicI64::new(now)))
    }

    /// A processing clock that reads this one.
    pub fn clock(&self) -> ProcessingClock {
        ProcessingClock {
            manual: Some(self.0.clone()),
        }
    }

    /// Sets the time.
    pub fn set(&self, now: Timestamp) {
        self.0.store(now, Ordering::SeqCst);
    }

    /// Moves the time forward by `ms`.
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_the_system_clock_is_near_now() {
        let manual = ManualClock::new(1_000);
        let clock = manual.clock();
        assert_eq!(clock.now(), 1_000);
        manual.advance(250);
        assert_eq!(clock.now(), 1_250);
        manual.set(7);
        assert_eq!(clock.clone().now(), 7);
        // 2020-01-01 and 2100-01-01: the system clock reads milliseconds since the epoch.
        let now = ProcessingClock::system().now();
        assert!(
            (1_577_836_800_000..4_102_444_800_000).contains(&now),
            "{now}"
        );
    }
}

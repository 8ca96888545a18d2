//! The alarm of a thread that runs keyed operators: the earliest moment one of them has a
//! processing-time timer due, so that the thread's wait for input ends then
//! ([`crate::KeyedOperator::on_processing_time`]).
//!
//! The engine owns this protocol, as timely's notificator does: an operator only registers
//! timers, its runner sets the alarm after each batch and flush, and every loop that waits
//! (a worker, a source's thread, a receiver's thread) takes the alarm and waits no longer
//! than it says. The runner fires due timers in its next batch or flush, which each of
//! those loops calls as it wakes.
//!
//! # Invariants
//! - Every runner sets its next deadline in each of its flushes, and loops flush every
//!   part before they wait, so the alarm a loop takes before it waits is at or before
//!   every pending timer of its thread: none waits longer than its time.
//! - A loop takes (clears) the alarm before each wait, so a deadline that passed or a timer
//!   that was deleted costs at most one early wake-up, never a busy loop.
//! - A thread without processing-time timers never sets it: waiting costs one read of a
//!   thread-local.

use std::cell::Cell;
use std::time::{Duration, Instant};

thread_local! {
    static ALARM: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Asks the calling thread to wake by `at` (the earliest of all asks since the last take).
pub(super) fn wake_by(at: Instant) {
    ALARM.with(|alarm| {
        if alarm.get().is_none_or(|earlier| at < earlier) {
            alarm.set(Some(at));
        }
    });
}

/// Clears the alarm and returns how long `timeout` may still be waited: no longer than
/// until the alarm.
pub(super) fn bound(timeout: Duration) -> Duration {
    match ALARM.with(Cell::take) {
        Some(at) => timeout.min(at.saturating_duration_since(Instant::now())),
        None => timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_ask_bounds_the_next_wait_only() {
        let long = Duration::from_secs(60);
        assert_eq!(bound(long), long, "no alarm: the whole wait");
        let now = Instant::now();
        wake_by(now + Duration::from_secs(30));
        wake_by(now + Duration::from_secs(5));
        wake_by(now + Duration::from_secs(20));
        let bounded = bound(long);
        assert!(bounded <= Duration::from_secs(5), "{bounded:?}");
        assert!(bounded > Duration::from_secs(4), "{bounded:?}");
        assert_eq!(bound(long), long, "taken: the next wait is whole again");
        wake_by(now);
        assert_eq!(bound(long), Duration::ZERO, "a passed alarm: no wait");
    }
}

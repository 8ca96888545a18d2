//! Early firings of tumbling and sliding windows ([`WindowedStream::trigger`]): Flink's
//! `ContinuousEventTimeTrigger` ([`Trigger::every`]) and `CountTrigger` ([`Trigger::count`]),
//! both accumulating (`FIRE`, not `FIRE_AND_PURGE`).
//!
//! A trigger *adds* firings: the window still fires on time when the watermark reaches its
//! end, and late events within the allowed lateness still update it. (A Flink trigger
//! replaces the default one, so a bare `CountTrigger` on a time window never fires at its
//! end; here it does, as a Beam trigger with early firings.) Each result says which it is
//! ([`Timing`]); `is_update` is set on all but a window's first result.
//!
//! - `every(i)`: a window `[s, e)` fires its result so far when the watermark passes a
//!   multiple `b` of `i` with `s < b < e - 1`, if it got events since it last fired (or
//!   ever). A watermark that passes several multiples at once fires it once: what it would
//!   fire at each is the same. So the firings depend only on which events precede which
//!   watermark in the input, as on-time firings do, not on how finely an instance sees the
//!   watermark move (which depends on the parallelism). Flink's
//!   `ContinuousEventTimeTrigger` fires at every multiple after the window's first event,
//!   new events or not. Each key has one timer, due when the watermark reaches the next
//!   multiple after it, in the windows' fire queue of the harness (so windows without a
//!   trigger keep their queues as they were); the multiple is kept in this module's state
//!   table, so a restore registers the timer again.
//! - `count(n)`: a window fires when its `n`-th, `2n`-th, ... event arrives (events
//!   counted per window, so with sliding windows an event counts in each window it is in),
//!   before the watermark reaches its end.
//!
//! Windows fire from their panes as on time (see [`super::aligned`]); the panes stay. The
//! state table [`TRIGGERS`] keeps, per key, the counts and which windows fired early (so
//! that their on-time result is an update) and the boundary of the key's timer: it is
//! checkpointed, so a restored job fires exactly where the first run would have.
//!
//! [`WindowedStream::trigger`]: super::WindowedStream::trigger

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_engine::error::BoxError;
use weir_engine::time::duration_ms;
use weir_engine::{MapState, StateBackend, StateKey, StateTable, Timestamp};

#[cfg(doc)]
use super::Timing;

/// The state table of the triggers, by key.
pub(super) const TRIGGERS: &str = "window-triggers";

/// When a window fires before the watermark reaches its end (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Every `interval_ms` of event time, at the multiples of it inside the window.
    Every {
        /// The interval, in milliseconds.
        interval_ms: i64,
    },
    /// Every `n` events of the window.
    Count {
        /// How many events.
        n: u64,
    },
}

impl Trigger {
    /// Fires each window's result so far each time the watermark passes a multiple of
    /// `interval` inside it (Flink's `ContinuousEventTimeTrigger`).
    pub fn every(interval: Duration) -> Trigger {
        Trigger::Every {
            interval_ms: duration_ms(interval),
        }
    }

    /// Fires each window's result so far at its `n`-th, `2n`-th, ... event (Flink's
    /// `CountTrigger`, accumulating).
    pub fn count(n: u64) -> Trigger {
        Trigger::Count { n }
    }

    /// Why the trigger cannot work, if it cannot.
    pub(super) fn check(self) -> Result<(), String> {
        match self {
            Trigger::Every { interval_ms } if interval_ms < 1 => {
                Err("Trigger::every needs an interval of at least 1 ms".into())
            }
            Trigger::Count { n: 0 } => Err("Trigger::count needs at least 1 event".into()),
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trigger::Every { interval_ms } => write!(f, "early every {interval_ms}ms"),
            Trigger::Count { n } => write!(f, "early every {n} events"),
        }
    }
}

/// One window of a key that has events and has not fired on time yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct WindowTrigger {
    /// The window's start.
    start: Timestamp,
    /// Its events so far.
    count: u64,
    /// Its events when it last fired early; 0 if it did not.
    fired: u64,
}

impl WindowTrigger {
    /// Fires early: `(start, is_update)`.
    fn fire(&mut self) -> (Timestamp, bool) {
        let before = std::mem::replace(&mut self.fired, self.count);
        (self.start, before > 0)
    }
}

/// The triggers of one key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct KeyTriggers {
    /// The time of the key's timer (`every`), once registered.
    next: Option<Timestamp>,
    /// Its windows with events that have not fired on time, sorted by start.
    windows: Vec<WindowTrigger>,
}

impl KeyTriggers {
    /// The entry of the window at `start`, created if absent.
    fn window(&mut self, start: Timestamp) -> &mut WindowTrigger {
        let at = self.windows.partition_point(|w| w.start < start);
        if self.windows.get(at).is_none_or(|w| w.start != start) {
            let entry = WindowTrigger {
                start,
                count: 0,
                fired: 0,
            };
            self.windows.insert(at, entry);
        }
        &mut self.windows[at]
    }
}

/// Windows to fire early: `(start, is_update)`.
pub(crate) type Early = Vec<(Timestamp, bool)>;

/// The trigger of one window operator instance and its state.
pub(crate) struct Triggers<S: StateBackend, K: StateKey> {
    trigger: Trigger,
    size: i64,
    state: S::Map<K, KeyTriggers>,
}

impl<S: StateBackend, K: StateKey> Triggers<S, K> {
    pub(crate) fn new(state: &mut S, trigger: Trigger, size: i64) -> Result<Self, BoxError> {
        Ok(Triggers {
            trigger,
            size,
            state: state.map_state(TRIGGERS)?,
        })
    }

    pub(crate) fn table(&mut self) -> &mut dyn StateTable {
        &mut self.state
    }

    /// The keys' timers to register again after a restore: `(boundary, key)`.
    pub(crate) fn restore(&mut self) -> Result<Vec<(Timestamp, K)>, BoxError> {
        let mut timers = Vec::new();
        self.state.scan(|key, triggers| {
            if let Some(next) = triggers.next {
                timers.push((next, key));
            }
        })?;
        Ok(timers)
    }

    /// An event of `key` went into the windows starting at `open` (those not due yet):
    /// counts it in each; returns the windows to fire early now (`count`) and the time of
    /// a timer to register for the key (`every`).
    pub(crate) fn on_event(
        &mut self,
        key: &K,
        open: impl Iterator<Item = Timestamp>,
        watermark: Timestamp,
    ) -> Result<(Early, Option<Timestamp>), BoxError> {
        let trigger = self.trigger;
        let changed = self.state.update(key, KeyTriggers::default, |triggers| {
            let mut early = Vec::new();
            for start in open {
                let window = triggers.window(start);
                window.count += 1;
                if let Trigger::Count { n } = trigger {
                    if window.count % n == 0 {
                        early.push(window.fire());
                    }
                }
            }
            let Trigger::Every { interval_ms } = trigger else {
                return (early, None);
            };
            let next = boundary_after(watermark, interval_ms);
            if triggers.next == Some(next) {
                return (early, None);
            }
            triggers.next = Some(next);
            (early, Some(next))
        })?;
        Ok(changed)
    }

    /// A timer of `key` came due at `watermark`. If it passed the key's next boundary:
    /// fires each window not due yet that has a boundary passed inside it and got events
    /// since it last fired; returns those and the key's next boundary. Else (a window's
    /// timer, or an early timer that came twice) does nothing.
    pub(crate) fn on_timer(
        &mut self,
        key: &K,
        watermark: Timestamp,
    ) -> Result<(Early, Option<Timestamp>), BoxError> {
        let Trigger::Every { interval_ms } = self.trigger else {
            return Ok((Vec::new(), None));
        };
        let size = self.size;
        let fired = self.state.modify(key, |triggers| {
            let Some(time) = triggers.next.filter(|&b| b <= watermark) else {
                return (Vec::new(), None, false);
            };
            let mut early = Vec::new();
            let mut open = false;
            for window in &mut triggers.windows {
                let end = window.start.saturating_add(size);
                if end - 1 <= watermark {
                    continue;
                }
                open = true;
                let passed = passed_inside(window.start, end, time, watermark, interval_ms);
                if passed && window.count > window.fired {
                    early.push(window.fire());
                }
            }
            triggers.next = open.then(|| boundary_after(watermark, interval_ms));
            let done = triggers.next.is_none() && triggers.windows.is_empty();
            (early, triggers.next, done)
        })?;
        let Some((early, next, done)) = fired else {
            return Ok((Vec::new(), None));
        };
        if done {
            self.state.take(key)?;
        }
        Ok((early, next))
    }

    /// The window of `key` at `start` fires on time, if it has events and has not fired on
    /// time yet: then whether it fired early before (its on-time result is then an
    /// update); else `None` (a fire timer that was only an early one, or came twice).
    /// Forgets the window.
    pub(crate) fn on_time(&mut self, key: &K, start: Timestamp) -> Result<Option<bool>, BoxError> {
        let forgot = self.state.modify(key, |triggers| {
            let at = triggers.windows.partition_point(|w| w.start < start);
            let fired = match triggers.windows.get(at) {
                Some(w) if w.start == start => Some(triggers.windows.remove(at).fired > 0),
                _ => None,
            };
            (
                fired,
                triggers.windows.is_empty() && triggers.next.is_none(),
            )
        })?;
        let Some((fired, done)) = forgot else {
            return Ok(None);
        };
        if done {
            self.state.take(key)?;
        }
        Ok(fired)
    }
}

/// Whether the watermark, moving from before `time` (a multiple of `interval`) to
/// `watermark`, passed a multiple of `interval` inside the window `[start, end)`:
/// strictly after its start and before its last millisecond.
fn passed_inside(
    start: Timestamp,
    end: Timestamp,
    time: Timestamp,
    watermark: Timestamp,
    interval: i64,
) -> bool {
    let first = time.max(boundary_after(start, interval));
    let last_inside = end
        .saturating_sub(2)
        .div_euclid(interval)
        .saturating_mul(interval);
    let last = watermark
        .div_euclid(interval)
        .saturating_mul(interval)
        .min(last_inside);
    first <= last
}

/// The first multiple of `interval` after `watermark` (saturating at `i64::MAX`).
fn boundary_after(watermark: Timestamp, interval: i64) -> Timestamp {
    watermark
        .div_euclid(interval)
        .saturating_add(1)
        .saturating_mul(interval)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_engine::MemoryBackend;

    #[test]
    fn boundaries_are_the_next_multiple_after_the_watermark() {
        assert_eq!(boundary_after(0, 10), 10);
        assert_eq!(boundary_after(9, 10), 10);
        assert_eq!(boundary_after(10, 10), 20);
        assert_eq!(boundary_after(-1, 10), 0);
        assert_eq!(boundary_after(i64::MIN, 10), i64::MIN + 8);
        assert_eq!(boundary_after(i64::MAX - 1, 10), i64::MAX);
    }

    #[test]
    fn a_window_fires_if_the_watermark_passed_a_boundary_strictly_inside_it() {
        // Window [0, 100), interval 10: boundaries 10..=90 are inside.
        assert!(!passed_inside(0, 100, 0, 9, 10), "0 is the start");
        assert!(
            passed_inside(0, 100, 0, 10, 10),
            "10 is passed with the timer at 0"
        );
        assert!(passed_inside(0, 100, 30, 65, 10));
        assert!(passed_inside(0, 100, 90, 200, 10), "90 < 99");
        assert!(
            !passed_inside(0, 100, 100, 200, 10),
            "100 is past the window"
        );
        // Window [0, 91): 90 is its last millisecond, the on-time firing's.
        assert!(!passed_inside(0, 91, 90, 95, 10));
        assert!(!passed_inside(55, 60, 50, 59, 50));
    }

    #[test]
    fn a_count_trigger_fires_each_window_every_n_events_and_forgets_it_on_time() {
        let mut backend = MemoryBackend::new();
        let mut t = Triggers::<_, String>::new(&mut backend, Trigger::count(2), 10).unwrap();
        let k = "k".to_string();
        // Sliding windows at 0 and 5: the first event is in both, the second in 5 only.
        assert_eq!(t.on_event(&k, [5, 0].into_iter(), -1).unwrap().0, vec![]);
        assert_eq!(
            t.on_event(&k, [5].into_iter(), -1).unwrap().0,
            vec![(5, false)]
        );
        assert_eq!(
            t.on_event(&k, [5, 0].into_iter(), -1).unwrap().0,
            vec![(0, false)]
        );
        assert_eq!(
            t.on_event(&k, [5].into_iter(), -1).unwrap().0,
            vec![(5, true)]
        );
        assert_eq!(t.on_time(&k, 0).unwrap(), Some(true), "0 fired early");
        assert_eq!(t.on_time(&k, 0).unwrap(), None, "0 fired on time already");
        assert_eq!(t.on_time(&k, 5).unwrap(), Some(true));
        assert_eq!(t.on_time(&k, 10).unwrap(), None, "10 has no events");
        assert_eq!(t.state.len(), 0, "nothing left of the key");
    }
}

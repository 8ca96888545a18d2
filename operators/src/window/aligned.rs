//! Tumbling and sliding windows, computed from panes. **This is where aligned windows fire**
//! ([`AlignedWindows::on_timer`], called by the engine's harness when the watermark makes a window due).
//!
//! A pane is a slice of time of length `gcd(size, slide)`; every window is a whole number
//! of panes. Each key keeps one accumulator per pane it has events in, so an event is added
//! once however many sliding windows contain it, and a firing window merges its panes.
//!
//! # Invariants
//! - A key's panes are sorted by start and unique.
//! - A window `[s, e)` has a fire timer at `s` iff the key has a pane in it and
//!   `e - 1 > watermark` when the pane was created. A pane is removed when
//!   `end - 1 + lateness <= watermark` for the last window containing it: by a cleanup timer
//!   at that window's start if lateness > 0, else when that window fires (which is then
//!   due at the same watermark and always has a fire timer: a pane whose last window is
//!   already due belongs to a late event).
//! - Timers are derived from panes, so they can be rebuilt from state alone; with a
//!   trigger, also from its state (its early timers share the fire queue, and a fire
//!   timer fires a window on time only if the trigger holds the window: see
//!   [`super::trigger`]).

use std::marker::PhantomData;

use weir_engine::error::BoxError;
use weir_engine::{
    Due, Handled, Keyed, MapState, StateBackend, StateKey, StateTable, TimerQueue, Timestamp,
};

use super::latest::{emit_result, LatestResults};
use super::trigger::{Early, Trigger, Triggers};
use super::{
    prune_prefix, window_start, Alignment, LateData, Rejections, Timing, Window,
    WindowAggregateError, WindowOutput, WindowResult,
};
use crate::aggregate::{AggregateError, Aggregator};

/// Pane accumulators of one key: `(pane start, accumulator)`, sorted by start.
pub type Panes<Acc> = Vec<(Timestamp, Acc)>;

/// The state table of the panes, by key: each entry holds the open panes of one key.
pub(super) const PANES: &str = "window-panes";

/// The timer queue of windows to fire, at their starts.
const FIRE: usize = 0;
/// The timer queue of panes to drop, at the start of their last window.
const CLEANUP: usize = 1;

/// Tumbling (`slide == size`) or sliding windows over one worker's keys.
pub struct AlignedWindows<S: StateBackend, K: StateKey, T, A: Aggregator<T>> {
    size: i64,
    slide: i64,
    offset: i64,
    /// Start of an event's last window (slide-aligned), and of its pane.
    window_starts: Alignment,
    pane_starts: Alignment,
    lateness: i64,
    aggregator: A,
    panes: S::Map<K, Panes<A::Acc>>,
    /// The fire and cleanup queues ([`FIRE`], [`CLEANUP`]), timers at window starts. A
    /// trigger's early timers go in the fire queue too (see [`early_timer_at`]), so that
    /// windows without one have the same queues and checks as before triggers existed.
    timers: [S::Timers<K>; 2],
    /// Early firings, if the job asked for them.
    trigger: Option<Triggers<S, K>>,
    /// `lateness > 0` or a trigger: what an event does beyond adding itself to its pane,
    /// in one check per event.
    more_per_event: bool,
    pane_count: usize,
    late: LateData,
    rejections: Rejections<T>,
    /// Each key's latest result, when the window is queryable.
    latest: Option<LatestResults<S, K, A::Output>>,
    new_windows: Vec<Timestamp>,
    _input: PhantomData<fn(T)>,
}

pub(crate) fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl<S: StateBackend, K: StateKey, T, A: Aggregator<T>> std::fmt::Debug
    for AlignedWindows<S, K, T, A>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedWindows")
            .field("pane_count", &self.pane_count)
            .finish_non_exhaustive()
    }
}

impl<S: StateBackend, K: StateKey, T: Send + Clone + 'static, A: Aggregator<T>>
    AlignedWindows<S, K, T, A>
{
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        state: &mut S,
        size: i64,
        slide: i64,
        offset: i64,
        lateness: i64,
        aggregator: A,
        late: LateData,
        rejections: Rejections<T>,
        latest: Option<LatestResults<S, K, A::Output>>,
        trigger: Option<Trigger>,
    ) -> Result<Self, BoxError> {
        let trigger = trigger
            .map(|trigger| Triggers::new(state, trigger, size))
            .transpose()?;
        Ok(AlignedWindows {
            size,
            slide,
            offset,
            window_starts: Alignment::new(slide, offset),
            pane_starts: Alignment::new(gcd(size, slide), offset),
            lateness,
            aggregator,
            panes: state.map_state(PANES)?,
            timers: [state.timer_queue("fire")?, state.timer_queue("cleanup")?],
            more_per_event: lateness > 0 || trigger.is_some(),
            trigger,
            pane_count: 0,
            late,
            rejections,
            latest,
            new_windows: Vec::new(),
            _input: PhantomData,
        })
    }

    pub(crate) fn state_entries(&self) -> usize {
        self.pane_count
    }

    /// The state tables.
    pub(crate) fn tables(&mut self) -> Vec<&mut dyn StateTable> {
        let mut tables: Vec<&mut dyn StateTable> = vec![&mut self.panes];
        tables.extend(self.latest.as_mut().map(LatestResults::table));
        tables.extend(self.trigger.as_mut().map(Triggers::table));
        tables
    }

    /// Each key's latest result, if the window is queryable.
    pub(crate) fn latest(&mut self) -> Option<&mut LatestResults<S, K, A::Output>> {
        self.latest.as_mut()
    }

    /// Rebuilds counts and timers from the restored panes (see the module invariants).
    pub(crate) fn restore(&mut self, watermark: Timestamp) -> Result<(), BoxError> {
        let mut restored = Vec::new();
        self.panes.scan(|key, panes| restored.push((key, panes)))?;
        let (size, slide, offset) = (self.size, self.slide, self.offset);
        let mut windows = std::collections::BTreeSet::new();
        for (key, panes) in restored {
            self.pane_count += panes.len();
            windows.clear();
            let mut last_starts = std::collections::BTreeSet::new();
            for (pane_start, _) in &panes {
                let last_start = window_start(*pane_start, slide, offset);
                last_starts.insert(last_start);
                windows.extend(windows_containing(*pane_start, last_start, size, slide));
            }
            for &start in &windows {
                if self.end_of(start) - 1 > watermark {
                    self.timers[FIRE].register(start, key.clone())?;
                }
            }
            if self.lateness > 0 {
                for last_start in last_starts {
                    self.timers[CLEANUP].register(last_start, key.clone())?;
                }
            }
        }
        if let Some(trigger) = &mut self.trigger {
            for (boundary, key) in trigger.restore()? {
                self.timers[FIRE].register(early_timer_at(boundary, size), key)?;
            }
        }
        Ok(())
    }

    /// Reads the panes of `keys` in one batch: a batch's events about to be added, or the
    /// keys whose windows are about to fire.
    pub(crate) fn prefetch<'a>(&mut self, keys: impl Iterator<Item = &'a K>) -> Result<(), BoxError>
    where
        K: 'a,
    {
        Ok(self.panes.prefetch(keys)?)
    }

    /// End of the window starting at `start` (saturating: windows near `i64::MAX` end there).
    #[inline]
    fn end_of(&self, start: Timestamp) -> Timestamp {
        start.saturating_add(self.size)
    }

    /// Adds an event at `ts` (`watermark` preceded it) to its pane; late if every window it
    /// belongs to is past its allowed lateness.
    #[inline]
    pub(crate) fn on_event(
        &mut self,
        ts: Timestamp,
        event: Keyed<K, T>,
        watermark: Timestamp,
        out: &mut WindowOutput<K, A::Output, T>,
    ) -> Result<Handled, BoxError> {
        let last_start = self.window_starts.start_of(ts);
        if (self.end_of(last_start) - 1).saturating_add(self.lateness) <= watermark {
            return Ok(self.late.route(ts, event.value, out));
        }
        let Keyed { key, value, .. } = event;
        let pane_start = self.pane_starts.start_of(ts);
        let (aggregator, size, slide, new_windows) = (
            &self.aggregator,
            self.size,
            self.slide,
            &mut self.new_windows,
        );
        let created = self.panes.update(&key, Vec::new, |panes| {
            add_to_pane(
                aggregator,
                panes,
                pane_start,
                &value,
                last_start,
                size,
                slide,
                new_windows,
            )
        })?;
        let created = match created {
            Ok(created) => created,
            Err(cause) => {
                let window = Window {
                    start: last_start,
                    end: last_start.saturating_add(size),
                };
                let error = WindowAggregateError::new(cause, &key, window, Some(ts));
                self.rejections.fail_or_route(error, ts, value, out)?;
                return Ok(Handled::Taken);
            }
        };
        if created {
            self.pane_count += 1;
            if self.lateness > 0 {
                self.timers[CLEANUP].register(last_start, key.clone())?;
            }
            for &start in &self.new_windows {
                if self.end_of(start) - 1 > watermark {
                    self.timers[FIRE].register(start, key.clone())?;
                }
            }
        }
        if self.more_per_event {
            self.more_for_event(&key, ts, last_start, created, watermark, out)?;
        }
        Ok(Handled::Taken)
    }

    /// What an event does with allowed lateness or a trigger, once added to its pane.
    fn more_for_event(
        &mut self,
        key: &K,
        ts: Timestamp,
        last_start: Timestamp,
        created: bool,
        watermark: Timestamp,
        out: &mut WindowOutput<K, A::Output, T>,
    ) -> Result<(), BoxError> {
        if self.trigger.is_some() {
            self.trigger_event(key, ts, last_start, watermark, out)?;
        }
        if self.lateness > 0 {
            // Windows already due but still kept fire again at once with the event in
            // them; a window that had no pane before this event fires for the first time.
            for start in windows_containing(ts, last_start, self.size, self.slide) {
                let end_inclusive = self.end_of(start) - 1;
                let kept = end_inclusive.saturating_add(self.lateness) > watermark;
                if end_inclusive <= watermark && kept {
                    let first = created && self.new_windows.contains(&start);
                    self.emit(key, start, Timing::Late, !first, out)?;
                }
            }
        }
        Ok(())
    }

    /// The timer queues, fire first.
    pub(crate) fn timers(&mut self) -> &mut [S::Timers<K>] {
        &mut self.timers
    }

    /// A fire timer at a window's start is due when the window's last millisecond is; a
    /// cleanup timer at the start of a pane's last window, `lateness` after that.
    pub(crate) fn timer_due(&self, queue: usize) -> Due {
        let lateness = if queue == FIRE { 0 } else { self.lateness };
        Due::WindowEnd {
            size: self.size,
            lateness,
        }
    }

    /// Fires `key`'s window starting at `start`, or (cleanup) drops its panes whose last
    /// window starts at or before `start`.
    pub(crate) fn on_timer(
        &mut self,
        queue: usize,
        start: Timestamp,
        key: K,
        watermark: Timestamp,
        out: &mut WindowOutput<K, A::Output, T>,
    ) -> Result<(), BoxError> {
        if queue == FIRE {
            if self.trigger.is_some() {
                return self.fire_triggered(start, key, watermark, out);
            }
            return self.emit(&key, start, Timing::OnTime, false, out);
        }
        let (slide, offset) = (self.slide, self.offset);
        // The panes to drop are a prefix (sorted starts; `window_start` is monotonic).
        self.pane_count -= prune_prefix(&mut self.panes, &key, |(p, _)| {
            window_start(*p, slide, offset) <= start
        })?;
        Ok(())
    }

    /// Counts an event at `ts` of `key` in its windows not due yet, fires those a count
    /// trigger makes due, and registers the key's early timer (`Trigger::every`).
    fn trigger_event(
        &mut self,
        key: &K,
        ts: Timestamp,
        last_start: Timestamp,
        watermark: Timestamp,
        out: &mut WindowOutput<K, A::Output, T>,
    ) -> Result<(), BoxError> {
        let (size, slide) = (self.size, self.slide);
        let Some(trigger) = &mut self.trigger else {
            return Ok(());
        };
        let open = windows_containing(ts, last_start, size, slide)
            .filter(|s| s.saturating_add(size) - 1 > watermark);
        let (early, timer) = trigger.on_event(key, open, watermark)?;
        if let Some(boundary) = timer {
            self.timers[FIRE].register(early_timer_at(boundary, size), key.clone())?;
        }
        self.fire_early(key, early, out)
    }

    /// A fire timer at `time` of `key` came due at `watermark`, with a trigger: fires the
    /// windows the trigger makes due early, then the window starting at `time` on time if
    /// the trigger knows it as one with events not fired on time yet (else the timer was
    /// only an early one, or one registered twice, and firing would emit a bogus window
    /// of the panes in `[time, time + size)`).
    fn fire_triggered(
        &mut self,
        time: Timestamp,
        key: K,
        watermark: Timestamp,
        out: &mut WindowOutput<K, A::Output, T>,
    ) -> Result<(), BoxError> {
        let size = self.size;
        let Some(trigger) = &mut self.trigger else {
            return Ok(());
        };
        let (early, next) = trigger.on_timer(&key, watermark)?;
        let on_time = trigger.on_time(&key, time)?;
        if let Some(next) = next {
            self.timers[FIRE].register(early_timer_at(next, size), key.clone())?;
        }
        self.fire_early(&key, early, out)?;
        if let Some(is_update) = on_time {
            self.emit(&key, time, Timing::OnTime, is_update, out)?;
        }
        Ok(())
    }

    fn fire_early(
        &mut self,
        key: &K,
        early: Early,
        out: &mut WindowOutput<K, A::Output, T>,
    ) -> Result<(), BoxError> {
        for (start, is_update) in early {
            self.emit(key, start, Timing::Early, is_update, out)?;
        }
        Ok(())
    }

    /// Emits the window of `key` starting at `start`, merged from its panes. Without
    /// allowed lateness, the panes whose last window this is go in the same step as the
    /// on-time firing (their cleanup would be due at the same watermark): one state access
    /// per key and window.
    fn emit(
        &mut self,
        key: &K,
        start: Timestamp,
        timing: Timing,
        is_update: bool,
        out: &mut WindowOutput<K, A::Output, T>,
    ) -> Result<(), BoxError> {
        let end = self.end_of(start);
        let (aggregator, slide, offset) = (&self.aggregator, self.slide, self.offset);
        let done_with_panes = self.lateness == 0 && timing == Timing::OnTime;
        let fired = self
            .panes
            .modify(key, |panes| -> Result<_, AggregateError> {
                let mut merged = None;
                // Panes are sorted by start: the window's are one run, found by bisection
                // (a key may hold many panes while an input lags behind the other).
                let first = panes.partition_point(|pane| pane.0 < start);
                let last = panes.partition_point(|pane| pane.0 < end);
                for (_, acc) in &panes[first..last] {
                    let m = merged.get_or_insert_with(|| aggregator.create());
                    aggregator.merge(m, acc)?;
                }
                let mut dropped = 0;
                if done_with_panes {
                    dropped =
                        panes.partition_point(|(p, _)| window_start(*p, slide, offset) <= start);
                    panes.drain(..dropped);
                }
                Ok((merged, dropped, panes.is_empty()))
            })?
            .transpose()
            .map_err(|cause| WindowAggregateError::new(cause, key, Window { start, end }, None))?;
        let Some((merged, dropped, empty)) = fired else {
            return Ok(());
        };
        self.pane_count -= dropped;
        if empty {
            self.panes.take(key)?;
        }
        if let Some(acc) = merged {
            let result = WindowResult {
                key: key.clone(),
                window: Window { start, end },
                value: self.aggregator.finish_owned(acc),
                is_update,
                timing,
            };
            emit_result(&mut self.latest, result, out)?;
        }
        Ok(())
    }
}

/// The time of a fire timer due when the watermark reaches `boundary` (a trigger's early
/// timer): fire timers are at window starts, due at `start + size - 1`.
#[inline]
fn early_timer_at(boundary: Timestamp, size: i64) -> Timestamp {
    boundary.saturating_sub(size - 1)
}

/// Starts of the windows (of `size`, every `slide`) that contain `at`, latest first, given
/// the latest one, `last_start`. Stops at the edge of the `i64` range instead of wrapping.
#[inline]
fn windows_containing(
    at: Timestamp,
    last_start: Timestamp,
    size: i64,
    slide: i64,
) -> impl Iterator<Item = Timestamp> {
    std::iter::successors(Some(last_start), move |s| s.checked_sub(slide))
        .take_while(move |s| s.saturating_add(size) > at)
}

/// Adds `value` to the pane at `pane_start`, creating it if needed. Returns whether it was
/// created; `new_windows` receives the starts of the windows that had no pane before (none
/// if the pane existed).
#[allow(clippy::too_many_arguments)]
#[inline]
fn add_to_pane<T, A: Aggregator<T>>(
    aggregator: &A,
    panes: &mut Panes<A::Acc>,
    pane_start: Timestamp,
    value: &T,
    last_start: Timestamp,
    size: i64,
    slide: i64,
    new_windows: &mut Vec<Timestamp>,
) -> Result<bool, AggregateError> {
    new_windows.clear();
    // Search from the back: events mostly land in the newest pane.
    let found = panes.iter().rposition(|(p, _)| *p <= pane_start);
    if let Some(i) = found {
        if panes[i].0 == pane_start {
            aggregator.add(&mut panes[i].1, value)?;
            return Ok(false);
        }
    }
    let mut acc = aggregator.create();
    aggregator.add(&mut acc, value)?;
    let at = found.map_or(0, |i| i + 1);
    panes.insert(at, (pane_start, acc));
    for start in windows_containing(pane_start, last_start, size, slide) {
        let end = start.saturating_add(size);
        let pane_before = at > 0 && panes[at - 1].0 >= start;
        let pane_after = at + 1 < panes.len() && panes[at + 1].0 < end;
        if !pane_before && !pane_after {
            new_windows.push(start);
        }
    }
    Ok(true)
}

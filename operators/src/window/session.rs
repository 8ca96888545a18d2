//! Session windows. **This is where session windows fire** ([`SessionWindows::on_timer`]).
//!
//! Each event opens `[ts, ts + gap)`. It merges with every session of its key that overlaps
//! or touches it (`a.start <= b.end && a.end >= b.start`); the merged session is late only
//! if `end - 1 + lateness <= watermark` (so a late event may still join an open session).
//!
//! # Invariants
//! - A key's sessions are sorted, and no two of them overlap or touch.
//! - With allowed lateness 0 a session is removed when it fires: later events never merge
//!   into a fired session. With lateness > 0 it is kept until `end - 1 + lateness <=
//!   watermark`; an event merging into it makes it fire again, as an update.
//! - Timers may be stale (a session grew or merged); a timer only acts on a session whose
//!   end equals the timer's time.

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use weir_engine::error::BoxError;
use weir_engine::{
    Due, Handled, Keyed, MapState, StateBackend, StateKey, StateTable, TimerQueue, Timestamp,
};

use super::latest::{emit_result, LatestResults};
use super::{
    prune, LateData, Rejections, Timing, Window, WindowAggregateError, WindowOutput, WindowResult,
};
use crate::aggregate::{AggregateError, Aggregator};

/// One session of a key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionState<Acc> {
    /// Start of the session (its earliest event).
    pub start: Timestamp,
    /// End of the session (latest event + gap), exclusive.
    pub end: Timestamp,
    /// The aggregate of its events.
    pub acc: Acc,
    /// A result for (part of) this session was already emitted.
    pub emitted: bool,
    /// Its current contents have not been emitted yet.
    pub pending: bool,
}

/// The state table of the sessions, by key: each entry holds the open sessions of one key.
pub(super) const SESSIONS: &str = "sessions";

/// The timer queue of sessions to fire, at their ends.
const FIRE: usize = 0;
/// The timer queue of sessions to drop, at their ends.
const CLEANUP: usize = 1;

/// Session windows over one worker's keys.
pub struct SessionWindows<S: StateBackend, K: StateKey, T, A: Aggregator<T>> {
    gap: i64,
    lateness: i64,
    aggregator: A,
    sessions: S::Map<K, Vec<SessionState<A::Acc>>>,
    /// The fire and cleanup queues ([`FIRE`], [`CLEANUP`]), timers at session ends.
    timers: [S::Timers<K>; 2],
    session_count: usize,
    late: LateData,
    rejections: Rejections<T>,
    /// Each key's latest result, when the window is queryable.
    latest: Option<LatestResults<S, K, A::Output>>,
    _input: PhantomData<fn(T)>,
}

#[inline]
fn touches(start: Timestamp, end: Timestamp, s: &SessionState<impl Sized>) -> bool {
    s.start <= end && s.end >= start
}

impl<S: StateBackend, K: StateKey, T, A: Aggregator<T>> std::fmt::Debug
    for SessionWindows<S, K, T, A>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionWindows")
            .field("session_count", &self.session_count)
            .finish_non_exhaustive()
    }
}

impl<S: StateBackend, K: StateKey, T: Send + Clone + 'static, A: Aggregator<T>>
    SessionWindows<S, K, T, A>
{
    pub(crate) fn new(
        state: &mut S,
        gap: i64,
        lateness: i64,
        aggregator: A,
        late: LateData,
        rejections: Rejections<T>,
        latest: Option<LatestResults<S, K, A::Output>>,
    ) -> Result<Self, BoxError> {
        Ok(SessionWindows {
            gap,
            lateness,
            aggregator,
            sessions: state.map_state(SESSIONS)?,
            timers: [state.timer_queue("fire")?, state.timer_queue("cleanup")?],
            session_count: 0,
            late,
            rejections,
            latest,
            _input: PhantomData,
        })
    }

    pub(crate) fn state_entries(&self) -> usize {
        self.session_count
    }

    /// The state tables.
    pub(crate) fn tables(&mut self) -> Vec<&mut dyn StateTable> {
        let mut tables: Vec<&mut dyn StateTable> = vec![&mut self.sessions];
        tables.extend(self.latest.as_mut().map(LatestResults::table));
        tables
    }

    /// Each key's latest result, if the window is queryable.
    pub(crate) fn latest(&mut self) -> Option<&mut LatestResults<S, K, A::Output>> {
        self.latest.as_mut()
    }

    /// Rebuilds counts and timers from the restored sessions.
    pub(crate) fn restore(&mut self) -> Result<(), BoxError> {
        let mut restored = Vec::new();
        self.sessions
            .scan(|key, sessions| restored.push((key, sessions)))?;
        for (key, sessions) in restored {
            self.session_count += sessions.len();
            for s in sessions {
                if s.pending {
                    self.timers[FIRE].register(s.end, key.clone())?;
                }
                self.timers[CLEANUP].register(s.end, key.clone())?;
            }
        }
        Ok(())
    }

    /// Merges an event at `ts` (`watermark` preceded it) into its key's sessions; late if the
    /// merged session is past its allowed lateness.
    #[inline]
    pub(crate) fn on_event(
        &mut self,
        ts: Timestamp,
        event: Keyed<K, T>,
        watermark: Timestamp,
        out: &mut WindowOutput<K, A::Output, T>,
    ) -> Result<Handled, BoxError> {
        let key = &event.key;
        let (start, end) = (ts, ts.saturating_add(self.gap));
        let merged = self.sessions.read(key, |sessions| {
            sessions
                .into_iter()
                .flatten()
                .filter(|s| touches(start, end, s))
                .fold((start, end), |(a, b), s| (a.min(s.start), b.max(s.end)))
        })?;
        if (merged.1 - 1).saturating_add(self.lateness) <= watermark {
            return Ok(self.late.route(ts, event.value, out));
        }
        let Keyed { key, value, .. } = event;
        let due = merged.1 - 1 <= watermark;
        let aggregator = &self.aggregator;
        let merged_event = self.sessions.update(&key, Vec::new, |sessions| {
            merge_event(aggregator, sessions, start, end, merged, &value, due)
        })?;
        let (removed, result) = match merged_event {
            Ok(merged_event) => merged_event,
            Err(cause) => {
                let window = Window {
                    start: merged.0,
                    end: merged.1,
                };
                let error = WindowAggregateError::new(cause, &key, window, Some(ts));
                self.rejections.fail_or_route(error, ts, value, out)?;
                return Ok(Handled::Taken);
            }
        };
        self.session_count = self.session_count + 1 - removed;
        if let Some((window, value, is_update)) = result {
            let result = WindowResult {
                key: key.clone(),
                window,
                value,
                is_update,
                timing: Timing::Late,
            };
            emit_result(&mut self.latest, result, out)?;
        } else {
            self.timers[FIRE].register(merged.1, key.clone())?;
        }
        self.timers[CLEANUP].register(merged.1, key)?;
        Ok(Handled::Taken)
    }

    /// The timer queues, fire first.
    pub(crate) fn timers(&mut self) -> &mut [S::Timers<K>] {
        &mut self.timers
    }

    /// A fire timer at a session's end is due when the session's last millisecond is; a
    /// cleanup timer, `lateness` after that.
    pub(crate) fn timer_due(&self, queue: usize) -> Due {
        let lateness = if queue == FIRE { 0 } else { self.lateness };
        Due::WindowEnd { size: 0, lateness }
    }

    /// Fires `key`'s pending session ending at `end`, or (cleanup) drops its fired sessions
    /// past their lateness at `watermark`.
    pub(crate) fn on_timer(
        &mut self,
        queue: usize,
        end: Timestamp,
        key: K,
        watermark: Timestamp,
        out: &mut WindowOutput<K, A::Output, T>,
    ) -> Result<(), BoxError> {
        if queue == CLEANUP {
            let lateness = self.lateness;
            self.session_count -= prune(&mut self.sessions, &key, |s| {
                s.pending || (s.end - 1).saturating_add(lateness) > watermark
            })?;
            return Ok(());
        }
        let aggregator = &self.aggregator;
        let fired = self.sessions.modify(&key, |sessions| {
            let s = sessions.iter_mut().find(|s| s.end == end && s.pending)?;
            let result = (
                Window {
                    start: s.start,
                    end,
                },
                aggregator.finish(&s.acc),
                s.emitted,
            );
            s.pending = false;
            s.emitted = true;
            Some(result)
        })?;
        if let Some(Some((window, value, is_update))) = fired {
            let result = WindowResult {
                key,
                window,
                value,
                is_update,
                timing: Timing::OnTime,
            };
            emit_result(&mut self.latest, result, out)?;
        }
        Ok(())
    }
}

/// The outcome of merging one event into a key's sessions: how many sessions it replaced,
/// and the result to emit at once if the merged session is already due (with whether it
/// revises an earlier result).
type Merged<Out> = (usize, Option<(Window, Out, bool)>);

/// Replaces the sessions touching `[start, end)` by their union `merged` plus the event.
fn merge_event<T, A: Aggregator<T>>(
    aggregator: &A,
    sessions: &mut Vec<SessionState<A::Acc>>,
    start: Timestamp,
    end: Timestamp,
    merged: (Timestamp, Timestamp),
    value: &T,
    due: bool,
) -> Result<Merged<A::Output>, AggregateError> {
    // Everything that can fail comes before the sessions change: a failed event leaves
    // them as they were (it may go to the rejected output and the job go on).
    let mut acc = aggregator.create();
    aggregator.add(&mut acc, value)?;
    let mut emitted = false;
    for s in sessions.iter().filter(|s| touches(start, end, s)) {
        aggregator.merge(&mut acc, &s.acc)?;
        emitted |= s.emitted;
    }
    let before = sessions.len();
    sessions.retain(|s| !touches(start, end, s));
    let removed = before - sessions.len();
    let at = sessions.partition_point(|s| s.start < merged.0);
    let result = due.then(|| {
        (
            Window {
                start: merged.0,
                end: merged.1,
            },
            aggregator.finish(&acc),
            emitted,
        )
    });
    sessions.insert(
        at,
        SessionState {
            start: merged.0,
            end: merged.1,
            acc,
            emitted: emitted || due,
            pending: !due,
        },
    );
    Ok((removed, result))
}

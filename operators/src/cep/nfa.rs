//! The per-key matching: a key's partial matches (the states of the pattern's NFA) and
//! what one event, or the watermark passing a deadline, does to them.

use serde::{Deserialize, Serialize};
use weir_engine::Timestamp;

use super::pattern::{Contiguity, Stage};
use super::{CepOutput, Match, Pattern, TimedOut};
use crate::time_order::TimeOrdered;

/// A match in progress: a state of the pattern's NFA plus the events taken.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Partial<T> {
    /// The stage it is at (`< stages`).
    pub(super) stage: usize,
    /// Events that stage has taken (`open(count)` holds).
    pub(super) count: u32,
    /// `(stage, time, event)` matched so far.
    pub(super) events: Vec<(usize, Timestamp, T)>,
}

impl<T> Partial<T> {
    fn start(&self) -> Timestamp {
        self.events.first().map_or(Timestamp::MIN, |e| e.1)
    }
}

/// The state of one key: events waiting for the watermark, and matches in progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyState<T> {
    /// Events waiting for the watermark.
    pub(super) pending: TimeOrdered<T>,
    pub(super) partials: Vec<Partial<T>>,
}

impl<T> Default for KeyState<T> {
    fn default() -> Self {
        KeyState {
            pending: Vec::new(),
            partials: Vec::new(),
        }
    }
}

/// Where a partial match may be when the next event comes: its own state, then, while the
/// stage it is at is satisfied, the next stages at count 0 (the NFA's proceed edges).
/// `None` once every stage is satisfied: the match is complete.
fn closure<T>(
    stages: &[Stage<T>],
    stage: usize,
    count: u32,
) -> impl Iterator<Item = Option<(usize, u32)>> + '_ {
    let mut at = Some(Some((stage, count)));
    std::iter::from_fn(move || {
        let current = at?;
        at = match current {
            Some((s, c)) if stages[s].satisfied(c) => {
                Some((s + 1 < stages.len()).then_some((s + 1, 0)))
            }
            _ => None,
        };
        Some(current)
    })
}

/// The match can end here: every stage from `stage` on is satisfied.
fn complete<T>(stages: &[Stage<T>], stage: usize, count: u32) -> bool {
    closure(stages, stage, count).any(|q| q.is_none())
}

/// After taking an event at `stage` (now `count` events): where the partial match is; a
/// stage that cannot take more is left. `None`: past the last stage.
fn after_take<T>(stages: &[Stage<T>], stage: usize, count: u32) -> Option<(usize, u32)> {
    if stages[stage].open(count) {
        Some((stage, count))
    } else {
        (stage + 1 < stages.len()).then_some((stage + 1, 0))
    }
}

impl<T: Clone> Pattern<T> {
    fn named(&self, events: &[(usize, Timestamp, T)]) -> Vec<(String, Timestamp, T)> {
        self.named_owned(events.to_vec())
    }

    fn named_owned(&self, events: Vec<(usize, Timestamp, T)>) -> Vec<(String, Timestamp, T)> {
        events
            .into_iter()
            .map(|(s, ts, e)| (self.stages[s].name.clone(), ts, e))
            .collect()
    }

    /// The timeout of `p`, unless it had completed already (then nothing is missing).
    fn timed_out(&self, p: &Partial<T>, within: i64) -> Option<TimedOut<T>> {
        let missing = closure(&self.stages, p.stage, p.count)
            .find_map(|q| q.filter(|(s, c)| !self.stages[*s].satisfied(*c)))?;
        Some(TimedOut {
            events: self.named(&p.events),
            missing: self.stages[missing.0].name.clone(),
            deadline: p.start().saturating_add(within),
        })
    }

    /// Drops the partial matches whose deadline (`first + within - 1`) is at or before
    /// `now`, reporting them as timeouts if `report`.
    pub(super) fn expire(
        &self,
        partials: &mut Vec<Partial<T>>,
        now: Timestamp,
        report: bool,
        out: &mut Vec<(Timestamp, CepOutput<T>)>,
    ) {
        let Some(within) = self.within else {
            return;
        };
        partials.retain(|p| {
            let deadline = p.start().saturating_add(within) - 1;
            if deadline > now {
                return true;
            }
            if report {
                if let Some(t) = self.timed_out(p, within) {
                    out.push((deadline, CepOutput::TimedOut(t)));
                }
            }
            false
        });
    }

    /// Feeds one event (the next in time order) to a key's partial matches.
    pub(super) fn feed(
        &self,
        partials: &mut Vec<Partial<T>>,
        ts: Timestamp,
        event: &T,
        report: bool,
        out: &mut Vec<(Timestamp, CepOutput<T>)>,
    ) {
        // Partial matches this event comes too late for (`ts - start >= within`).
        self.expire(partials, ts.saturating_sub(1), report, out);
        let stages = &self.stages;
        let mut kept = Vec::with_capacity(partials.len() + 1);
        let mut step = |events: Vec<(usize, Timestamp, T)>,
                        stage: usize,
                        count: u32,
                        kept: &mut Vec<Partial<T>>| {
            let started = !events.is_empty();
            let mut takes = Vec::new();
            let mut survivor = None;
            for q in closure(stages, stage, count) {
                let Some((s, c)) = q else { break };
                let st = &stages[s];
                if c > 0 && st.until.as_ref().is_some_and(|stop| stop(event)) {
                    // The loop ends here: this state neither takes nor skips the event.
                    continue;
                }
                if (st.condition)(event) {
                    takes.push((s, c));
                } else if survivor.is_none() && st.skips(c) == Contiguity::Relaxed && started {
                    survivor = Some((s, c));
                }
            }
            // The events are copied only for a take that is not the last use of them.
            let mut events = Some(events);
            let last = takes.len();
            for (i, (s, c)) in takes.into_iter().enumerate() {
                let mut taken = match events.take() {
                    Some(e) if i + 1 == last && survivor.is_none() => e,
                    Some(e) => {
                        let copy = e.clone();
                        events = Some(e);
                        copy
                    }
                    None => Vec::new(),
                };
                taken.push((s, ts, event.clone()));
                match after_take(stages, s, c + 1) {
                    Some((s2, c2)) => {
                        if complete(stages, s2, c2) {
                            let events = self.named(&taken);
                            out.push((ts, CepOutput::Matched(Match { events })));
                        }
                        kept.push(Partial {
                            stage: s2,
                            count: c2,
                            events: taken,
                        });
                    }
                    None => {
                        let events = self.named_owned(taken);
                        out.push((ts, CepOutput::Matched(Match { events })));
                    }
                }
            }
            if let (Some((stage, count)), Some(events)) = (survivor, events) {
                kept.push(Partial {
                    stage,
                    count,
                    events,
                });
            }
        };
        for p in partials.drain(..) {
            step(p.events, p.stage, p.count, &mut kept);
        }
        // Every event fitting the first stage (or, past optional first stages, a later
        // one) starts a partial match.
        step(Vec::new(), 0, 0, &mut kept);
        *partials = kept;
    }
}

impl<T> Pattern<T> {
    /// The next time a key needs attention: its earliest pending event or deadline.
    pub(super) fn next_timer(&self, state: &KeyState<T>) -> Option<Timestamp> {
        let pending = state.pending.first().map(|(ts, _)| *ts);
        let deadline = self.within.and_then(|within| {
            state
                .partials
                .iter()
                .map(|p| p.start().saturating_add(within) - 1)
                .min()
        });
        pending.into_iter().chain(deadline).min()
    }
}

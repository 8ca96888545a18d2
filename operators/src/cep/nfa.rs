//! The per-key matching: **what one event, or the watermark passing a deadline, does to a
//! key's partial matches** (the states of the pattern's NFA), and, with a skip strategy,
//! which complete matches are emitted and which partial matches they discard.

use weir_engine::time::END_WATERMARK;
use weir_engine::Timestamp;

use super::pattern::{AfterMatchSkip, Contiguity, Negation, Negative, Stage};
use super::state::{Held, KeyState, NfaState, Partial, Seqs, Skips};
use super::{CepOutput, Match, Pattern, TimedOut};

/// What the matching emits: `(event time, result)`.
pub(super) type Emitted<T> = Vec<(Timestamp, CepOutput<T>)>;

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

/// The last time a partial match may take an event: `first + within - 1`.
fn deadline<T>(p: &Partial<T>, within: i64) -> Timestamp {
    p.start().saturating_add(within) - 1
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

/// What the negative stages after the last stage a partial match took an event at say
/// about an event.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Nothing against it.
    Clear,
    /// A `not_followed_by` condition holds: the partial match ends, though a match this
    /// very event completes is still emitted (the event is taken, not between stages).
    Stopped,
    /// A `not_next` condition holds on the event right after: the partial match ends.
    Broken,
}

impl<T> Pattern<T> {
    /// The negative stages at the end of the pattern.
    fn trailing(&self) -> &[Negative<T>] {
        self.stages.last().map_or(&[], |s| &s.after[..])
    }

    /// A complete match waits for its deadline (the pattern ends with `not_followed_by`).
    fn waits_for_deadline(&self) -> bool {
        let negation = |n: &Negative<T>| n.negation == Negation::FollowedBy;
        self.trailing().iter().any(negation)
    }

    /// Whether an event at the stages' end is against the negative stages after `stage`
    /// (whose last event was the previous one of the key if `fresh`).
    fn verdict(&self, stage: usize, fresh: bool, event: &T) -> Verdict {
        let mut verdict = Verdict::Clear;
        for negative in &self.stages[stage].after {
            if (negative.condition)(event) {
                match negative.negation {
                    Negation::Next if fresh => return Verdict::Broken,
                    Negation::Next => {}
                    Negation::FollowedBy => verdict = Verdict::Stopped,
                }
            }
        }
        verdict
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
        let missing = if p.stage() == self.stages.len() {
            // Complete, waiting for the event after it to pass a trailing `not_next`.
            self.trailing().first()?.name.clone()
        } else {
            let (s, _) = closure(&self.stages, p.stage(), p.count)
                .find_map(|q| q.filter(|(s, c)| !self.stages[*s].satisfied(*c)))?;
            self.stages[s].name.clone()
        };
        Some(TimedOut {
            events: self.named(&p.events),
            missing,
            deadline: p.start().saturating_add(within),
        })
    }

    /// A complete match: emitted at once without a skip strategy (`held` is `None`), else
    /// held until the partial matches that started before it are over. `done` orders
    /// matches of the same first event (see [`Held::key`]).
    fn matched(
        &self,
        held: Option<&mut Vec<Held<T>>>,
        ts: Timestamp,
        done: u64,
        events: Vec<(usize, Timestamp, T)>,
        seqs: Option<Box<Seqs>>,
        out: &mut Emitted<T>,
    ) {
        let Some(held) = held else {
            let events = self.named_owned(events);
            out.push((ts, CepOutput::Matched(Match { events })));
            return;
        };
        let seqs = seqs.map_or_else(Vec::new, |s| s.0);
        let key = (seqs.first().copied().unwrap_or(0), done, seqs);
        let at = held.partition_point(|h| h.key <= key);
        held.insert(at, Held { key, ts, events });
    }

    /// Emits the held matches no partial match that started earlier can precede, in order,
    /// each discarding what its skip strategy says (at `now` or at its own time if later).
    fn release(&self, nfa: &mut NfaState<T>, now: Timestamp, out: &mut Emitted<T>) {
        let NfaState { partials, skips } = nfa;
        let Some(Skips { held, .. }) = skips.as_deref_mut() else {
            return;
        };
        while let Some(first) = held.first() {
            if partials.iter().any(|p| p.first() < first.key.0) {
                break;
            }
            let m = held.remove(0);
            let seqs = &m.key.2;
            let of_stage = |stage: &str| -> Vec<u64> {
                let events = m.events.iter().zip(seqs);
                let named = events.filter(|(e, _)| self.stages[e.0].name == stage);
                named.map(|(_, seq)| *seq).collect()
            };
            // The event before which partial matches started are discarded; and whether
            // those that started at it go too.
            let (prune, inclusive) = match &self.skip {
                AfterMatchSkip::NoSkip => (None, false),
                AfterMatchSkip::SkipToNext => (seqs.first().copied(), true),
                AfterMatchSkip::SkipPastLastEvent => (seqs.last().copied(), true),
                AfterMatchSkip::SkipToFirst(stage) => (of_stage(stage).first().copied(), false),
                AfterMatchSkip::SkipToLast(stage) => (of_stage(stage).last().copied(), false),
            };
            if let Some(at) = prune {
                let keep = |first: u64| first > at || (first == at && !inclusive);
                partials.retain(|p| keep(p.first()));
                held.retain(|h| keep(h.key.0));
            }
            let events = self.named_owned(m.events);
            out.push((m.ts.max(now), CepOutput::Matched(Match { events })));
        }
    }

    /// Ends the partial matches whose deadline (`first + within - 1`) is at or before
    /// `now`: timeouts (reported if `report`), or, waiting for a trailing
    /// `not_followed_by`, matches.
    #[inline]
    pub(super) fn expire(
        &self,
        nfa: &mut NfaState<T>,
        now: Timestamp,
        report: bool,
        out: &mut Emitted<T>,
    ) {
        // Usually nothing is due (called for every event): look before taking the partial
        // matches apart.
        if let Some(within) = self.within {
            if nfa.partials.iter().any(|p| deadline(p, within) <= now) {
                self.expire_due(nfa, within, now, report, out);
            }
        }
    }

    fn expire_due(
        &self,
        nfa: &mut NfaState<T>,
        within: i64,
        now: Timestamp,
        report: bool,
        out: &mut Emitted<T>,
    ) {
        let end = self.stages.len();
        let NfaState { partials, skips } = nfa;
        let done = skips.as_ref().map_or(0, |s| 2 * s.seq);
        let mut held = skips.as_deref_mut().map(|s| &mut s.held);
        partials.retain_mut(|p| {
            let deadline = deadline(p, within);
            if deadline > now {
                return true;
            }
            if p.stage() == end && self.waits_for_deadline() {
                let (events, seqs) = (std::mem::take(&mut p.events), p.seqs.take());
                self.matched(held.as_deref_mut(), deadline, done, events, seqs, out);
            } else if report {
                if let Some(t) = self.timed_out(p, within) {
                    out.push((deadline, CepOutput::TimedOut(t)));
                }
            }
            false
        });
        self.release(nfa, now, out);
    }

    /// The end of the input: no partial match can complete any more; the held matches are
    /// emitted (at `at` or their own time if later).
    pub(super) fn finish(&self, nfa: &mut NfaState<T>, at: Timestamp, out: &mut Emitted<T>) {
        nfa.partials.clear();
        self.release(nfa, at, out);
    }

    /// Feeds one event (the next in time order) to a key's partial matches.
    pub(super) fn feed(
        &self,
        nfa: &mut NfaState<T>,
        ts: Timestamp,
        event: &T,
        report: bool,
        out: &mut Emitted<T>,
    ) {
        // Partial matches this event comes too late for (`ts - start >= within`).
        self.expire(nfa, ts.saturating_sub(1), report, out);
        let NfaState { partials, skips } = nfa;
        if self.skip != AfterMatchSkip::NoSkip && skips.is_none() {
            *skips = Some(Box::default());
        }
        let (seq, held) = match skips.as_deref_mut() {
            Some(skips) => {
                skips.seq += 1;
                (skips.seq - 1, Some(&mut skips.held))
            }
            None => (0, None),
        };
        let mut step = Step {
            pattern: self,
            trailing: !self.trailing().is_empty(),
            ts,
            event,
            seq,
            kept: Vec::with_capacity(partials.len() + 1),
            held,
            out: &mut *out,
        };
        for p in partials.drain(..) {
            step.run(p);
        }
        // Every event fitting the first stage (or, past optional first stages, a later
        // one) starts a partial match.
        step.run(Partial::new(0, 0, Vec::new(), false, None));
        *partials = step.kept;
        if !nfa.held().is_empty() {
            self.release(nfa, ts, out);
        }
    }
}

/// One event going through a key's partial matches.
struct Step<'a, T> {
    pattern: &'a Pattern<T>,
    /// The pattern ends with negative stages.
    trailing: bool,
    ts: Timestamp,
    event: &'a T,
    /// The event's number (with a skip strategy).
    seq: u64,
    /// The partial matches after the event.
    kept: Vec<Partial<T>>,
    /// With a skip strategy, the matches waiting to be emitted.
    held: Option<&'a mut Vec<Held<T>>>,
    out: &'a mut Emitted<T>,
}

impl<T: Clone> Step<'_, T> {
    /// The event numbers of a partial match that took this event (with a skip strategy).
    fn taken(&self, seqs: &Option<Box<Seqs>>) -> Option<Box<Seqs>> {
        self.held.as_ref()?;
        let before = seqs.as_deref().map_or(&[][..], |s| &s.0);
        let mut taken = Vec::with_capacity(before.len() + 1);
        taken.extend_from_slice(before);
        taken.push(self.seq);
        Some(Box::new(Seqs(taken)))
    }

    /// A match this event completed, unless trailing negative stages must let it through
    /// first (then it waits as a partial match at the end).
    fn completed(&mut self, events: Vec<(usize, Timestamp, T)>, seqs: Option<Box<Seqs>>) {
        let pattern = self.pattern;
        if !self.trailing {
            let done = 2 * self.seq + 1;
            let held = self.held.as_deref_mut();
            pattern.matched(held, self.ts, done, events, seqs, self.out);
        } else {
            let end = pattern.stages.len();
            self.kept.push(Partial::new(end, 0, events, false, seqs));
        }
    }

    /// A complete match waiting for the trailing negative stages: ends if the event is
    /// against them, is emitted if it was only waiting for this event (`not_next`), waits on
    /// otherwise (for its deadline: `not_followed_by`).
    fn waiting(&mut self, mut p: Partial<T>) {
        let pattern = self.pattern;
        let last = pattern.stages.len() - 1;
        if pattern.verdict(last, !p.skipped, self.event) != Verdict::Clear {
            return;
        }
        if pattern.waits_for_deadline() {
            p.skipped = true;
            self.kept.push(p);
        } else {
            let done = 2 * self.seq + 1;
            let held = self.held.as_deref_mut();
            pattern.matched(held, self.ts, done, p.events, p.seqs, self.out);
        }
    }

    /// The event through one partial match (`p` without events: the start).
    fn run(&mut self, p: Partial<T>) {
        let pattern = self.pattern;
        let stages = &pattern.stages;
        let event = self.event;
        let started = !p.events.is_empty();
        let fresh = started && !p.skipped;
        let stage = p.stage();
        if stage == stages.len() {
            return self.waiting(p);
        }
        // The negative stages after the last stage that took an event hold once the
        // partial match may go past that stage.
        let mut stopped = false;
        if let (true, Some(&(last, _, _))) = (pattern.negated, p.events.last()) {
            if stage > last || stages[last].satisfied(p.count) {
                match pattern.verdict(last, fresh, event) {
                    Verdict::Clear => {}
                    Verdict::Stopped => stopped = true,
                    Verdict::Broken => return,
                }
            }
        }
        let mut takes = Vec::new();
        let mut survivor = None;
        for q in closure(stages, stage, p.count) {
            let Some((s, c)) = q else { break };
            let st = &stages[s];
            if s != stage && st.contiguity == Contiguity::Strict && started && !fresh {
                // A strict stage takes the event right after the previous stage's last
                // one, and this partial match skipped events since.
                break;
            }
            if c > 0 && st.until.as_ref().is_some_and(|stop| stop(event)) {
                // The loop ends here: this state neither takes nor skips the event.
                continue;
            }
            let fits = (st.condition)(event);
            if fits {
                takes.push((s, c));
            }
            let skips = match st.skips(c) {
                Contiguity::Strict => false,
                Contiguity::Relaxed => !fits,
                Contiguity::Any => true,
            };
            if survivor.is_none() && skips && started && !stopped {
                survivor = Some((s, c));
            }
        }
        // The events are copied only for a take that is not the last use of them.
        let Partial { events, seqs, .. } = p;
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
            taken.push((s, self.ts, event.clone()));
            let taken_seqs = self.taken(&seqs);
            match after_take(stages, s, c + 1) {
                Some((s2, c2)) => {
                    let complete = complete(stages, s2, c2);
                    if stopped {
                        // Nothing goes on; a match this event completes is still emitted.
                        if complete && !self.trailing {
                            self.completed(taken, taken_seqs);
                        }
                        continue;
                    }
                    if complete {
                        self.completed(taken.clone(), taken_seqs.clone());
                    }
                    let partial = Partial::new(s2, c2, taken, false, taken_seqs);
                    self.kept.push(partial);
                }
                None if stopped && self.trailing => {}
                None => self.completed(taken, taken_seqs),
            }
        }
        if let (Some((stage, count)), Some(events)) = (survivor, events) {
            self.kept
                .push(Partial::new(stage, count, events, true, seqs));
        }
    }
}

impl<T> Pattern<T> {
    /// The next time a key needs attention: its earliest pending event or deadline; the
    /// end of the input if it only holds matches (for a partial match without a deadline).
    pub(super) fn next_timer(&self, state: &KeyState<T>) -> Option<Timestamp> {
        let pending = state.pending.first().map(|(ts, _)| *ts);
        let deadline = self.within.and_then(|within| {
            let partials = state.nfa.partials.iter();
            partials.map(|p| deadline(p, within)).min()
        });
        let held = (!state.nfa.held().is_empty()).then_some(END_WATERMARK);
        pending.into_iter().chain(deadline).chain(held).min()
    }
}

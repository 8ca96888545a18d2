//! The matching against a brute-force reference, on random patterns and event sequences:
//! the reference lists every subsequence of a key's events with every assignment of its
//! events to stages, keeps those the pattern's definition allows (one way of matching
//! walked event by event: contiguity, quantifiers, `until`, negative stages, `within`),
//! then applies the skip strategy as FlinkCEP defines it: matches in the order of their
//! first events, each discarding the later ones that started at or before (or before) its
//! pruning event. The matcher runs the same events through [`Pattern::feed`], with
//! watermarks between events at random and the key's state stored and loaded again
//! (bincode, the state codec) at random.

use weir_engine::time::END_WATERMARK;
use weir_engine::Timestamp;

use super::nfa::Emitted;
use super::pattern::Negation;
use super::state::KeyState;
use super::{AfterMatchSkip, CepOutput, Pattern};
use crate::test_support::SplitMix;

/// `(time, letter 0..4, index)`.
type Ev = (i64, u8, usize);

/// A condition: the set of letters it accepts.
type Letters = u8;

fn fits(letters: Letters, e: &Ev) -> bool {
    (letters >> e.1) & 1 == 1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Next,
    FollowedBy,
    FollowedByAny,
}

#[derive(Debug, Clone)]
struct StageSpec {
    letters: Letters,
    link: Link,
    min: u32,
    max: Option<u32>,
    optional: bool,
    consecutive: bool,
    until: Option<Letters>,
    after: Vec<(Negation, Letters)>,
}

/// A pattern as data: the reference reads it, [`Spec::pattern`] builds the real one.
#[derive(Debug, Clone)]
struct Spec {
    stages: Vec<StageSpec>,
    within: Option<i64>,
    skip: AfterMatchSkip,
}

fn name(stage: usize) -> String {
    format!("s{stage}")
}

impl Spec {
    fn random(rng: &mut SplitMix) -> Spec {
        let letters = |rng: &mut SplitMix| match rng.below(4) {
            0 => (1 << rng.below(4)) | (1 << rng.below(4)),
            _ => 1 << rng.below(4),
        };
        let n = 1 + rng.below(3) as usize;
        let mut stages = Vec::new();
        for k in 0..n {
            let link = match (k, rng.below(3)) {
                (0, _) | (_, 0) => Link::FollowedBy,
                (_, 1) => Link::Next,
                _ => Link::FollowedByAny,
            };
            let (min, max) = match rng.below(4) {
                0 => (2, Some(2)),
                1 => (1, None),
                _ => (1, Some(1)),
            };
            let looping = max != Some(1);
            let optional = rng.below(4) == 0;
            let mut after = Vec::new();
            // FlinkCEP refuses a negative stage after an optional one.
            while !optional && rng.below(3) == 0 && after.len() < 2 {
                let negation = match rng.below(2) {
                    0 => Negation::Next,
                    _ => Negation::FollowedBy,
                };
                after.push((negation, letters(rng)));
            }
            stages.push(StageSpec {
                letters: letters(rng),
                link,
                min,
                max,
                optional,
                consecutive: looping && rng.below(3) == 0,
                until: (max.is_none() && rng.below(3) == 0).then(|| letters(rng)),
                after,
            });
        }
        let trailing_nfb = stages[n - 1]
            .after
            .iter()
            .any(|(negation, _)| *negation == Negation::FollowedBy);
        let within = (trailing_nfb || rng.below(2) == 0).then(|| 2 + rng.below(8) as i64);
        let skip = match rng.below(5) {
            0 => AfterMatchSkip::NoSkip,
            1 => AfterMatchSkip::SkipToNext,
            2 => AfterMatchSkip::SkipPastLastEvent,
            3 => AfterMatchSkip::SkipToFirst(name(rng.below(n as u64) as usize)),
            _ => AfterMatchSkip::SkipToLast(name(rng.below(n as u64) as usize)),
        };
        Spec {
            stages,
            within,
            skip,
        }
    }

    fn pattern(&self) -> Pattern<Ev> {
        let condition = |letters: Letters| move |e: &Ev| fits(letters, e);
        let mut pattern = Pattern::begin(&name(0));
        for (k, stage) in self.stages.iter().enumerate() {
            if k > 0 {
                pattern = match stage.link {
                    Link::Next => pattern.next(&name(k)),
                    Link::FollowedBy => pattern.followed_by(&name(k)),
                    Link::FollowedByAny => pattern.followed_by_any(&name(k)),
                };
            }
            pattern = pattern.where_(condition(stage.letters));
            pattern = match stage.max {
                None => pattern.one_or_more(),
                Some(n) => pattern.times(n),
            };
            if stage.optional {
                pattern = pattern.optional();
            }
            if stage.consecutive {
                pattern = pattern.consecutive();
            }
            if let Some(stop) = stage.until {
                pattern = pattern.until(condition(stop));
            }
            for (i, &(negation, letters)) in stage.after.iter().enumerate() {
                let n = format!("n{k}{i}");
                pattern = match negation {
                    Negation::Next => pattern.not_next(&n),
                    Negation::FollowedBy => pattern.not_followed_by(&n),
                };
                pattern = pattern.where_(condition(letters));
            }
        }
        if let Some(within) = self.within {
            pattern = pattern.within(std::time::Duration::from_millis(within as u64));
        }
        pattern.skip(self.skip.clone())
    }

    fn satisfied(&self, stage: usize, count: u32) -> bool {
        let s = &self.stages[stage];
        count >= s.min || (s.optional && count == 0)
    }

    /// The states one way of matching at `(stage, count)` may take or skip an event from:
    /// its own, and those it may go on to (`None`: the end, the match is complete).
    fn reach(&self, stage: usize, count: u32) -> Vec<Option<(usize, u32)>> {
        let mut states = vec![Some((stage, count))];
        let (mut s, mut c) = (stage, count);
        while self.satisfied(s, c) {
            if s + 1 == self.stages.len() {
                states.push(None);
                break;
            }
            (s, c) = (s + 1, 0);
            states.push(Some((s, c)));
        }
        states
    }

    fn complete(&self, at: Option<(usize, u32)>) -> bool {
        at.is_none_or(|(s, c)| self.reach(s, c).contains(&None))
    }

    fn trailing(&self) -> &[(Negation, Letters)] {
        &self.stages[self.stages.len() - 1].after
    }
}

/// One way of matching, between events.
#[derive(Debug, Clone, Copy)]
struct Way {
    /// `None`: past the last stage.
    at: Option<(usize, u32)>,
    /// The stage of its last event.
    last: usize,
    /// Its last event is the previous event of the key.
    fresh: bool,
}

/// What the negative stages say about an event: `(broken, stopped)`.
fn negated(spec: &Spec, way: &Way, e: &Ev) -> (bool, bool) {
    let Some((s, c)) = way.at else {
        return (false, false);
    };
    if !(s > way.last || spec.satisfied(s, c)) {
        return (false, false);
    }
    let hit = |kind| {
        spec.stages[way.last]
            .after
            .iter()
            .any(|&(n, letters)| n == kind && fits(letters, e))
    };
    (way.fresh && hit(Negation::Next), hit(Negation::FollowedBy))
}

/// The states `way` takes or skips `e` from, in order.
fn states(spec: &Spec, way: &Way, e: &Ev) -> Vec<(usize, u32)> {
    let Some((stage, count)) = way.at else {
        return Vec::new();
    };
    let mut states = Vec::new();
    for (s, c) in spec.reach(stage, count).into_iter().flatten() {
        let st = &spec.stages[s];
        if s != stage && st.link == Link::Next && !way.fresh {
            break;
        }
        if !(c > 0 && st.until.is_some_and(|stop| fits(stop, e))) {
            states.push((s, c));
        }
    }
    states
}

/// `way` takes `e` at `stage`, if the definition lets it.
fn take(spec: &Spec, way: &Way, e: &Ev, stage: usize) -> Option<Way> {
    let (s, c) = states(spec, way, e)
        .into_iter()
        .find(|&(s, _)| s == stage)?;
    let st = &spec.stages[s];
    if !fits(st.letters, e) {
        return None;
    }
    let count = c + 1;
    let at = if st.max.is_none_or(|max| count < max) {
        Some((s, count))
    } else {
        (s + 1 < spec.stages.len()).then_some((s + 1, 0))
    };
    Some(Way {
        at,
        last: s,
        fresh: true,
    })
}

/// `way` skips `e`, if the definition lets it: the first state that may skip it does.
fn skip(spec: &Spec, way: &Way, e: &Ev) -> Option<Way> {
    let (broken, stopped) = negated(spec, way, e);
    if broken || stopped {
        return None;
    }
    states(spec, way, e).into_iter().find_map(|(s, c)| {
        let st = &spec.stages[s];
        let fit = fits(st.letters, e);
        let skips = match (c, st.link) {
            (0, Link::Next) => false,
            (0, Link::FollowedByAny) => true,
            (0, Link::FollowedBy) => !fit,
            (_, _) if st.consecutive => false,
            _ => !fit,
        };
        skips.then_some(Way {
            at: Some((s, c)),
            last: way.last,
            fresh: false,
        })
    })
}

/// What becomes of one way of matching.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fate {
    /// A match, completed at `done` (see `Held::key`).
    Match(u64),
    /// A timeout naming the stage it still needed.
    TimedOut(String),
}

/// The fate of the way of matching that takes `taken` (`(event, stage)`, in order) and
/// skips every other event from the first taken on, if the definition allows it.
fn judge(spec: &Spec, events: &[Ev], taken: &[(usize, usize)]) -> Option<Fate> {
    let &(first, stage) = taken.first()?;
    // The start: no event taken yet, so no contiguity to keep.
    let start = Way {
        at: Some((0, 0)),
        last: 0,
        fresh: true,
    };
    let mut way = take(spec, &start, &events[first], stage)?;
    let deadline = spec.within.map(|w| events[first].0 + w - 1);
    let in_time = |e: &Ev| deadline.is_none_or(|d| e.0 <= d);
    let mut next = 1;
    let mut j = first + 1;
    while next < taken.len() {
        let e = &events[j];
        if !in_time(e) {
            return None;
        }
        way = if taken[next].0 == j {
            let (broken, stopped) = negated(spec, &way, e);
            let took = take(spec, &way, e, taken[next].1)?;
            next += 1;
            // A stopped way still emits the match this very event completes.
            let last_one = next == taken.len() && spec.complete(took.at);
            if broken || (stopped && !(last_one && spec.trailing().is_empty())) {
                return None;
            }
            took
        } else {
            skip(spec, &way, e)?
        };
        j += 1;
    }
    // The events after its last one, up to its deadline (or the end of the input).
    let rest = events[j..].iter().take_while(|e| in_time(e));
    // The completion order of a match decided `k` events after its last one.
    let after = |k: usize| 2 * (j + k) as u64;
    if spec.complete(way.at) {
        let trailing = spec.trailing();
        if trailing.is_empty() {
            return Some(Fate::Match(2 * (j - 1) as u64 + 1));
        }
        let until_deadline = trailing.iter().any(|t| t.0 == Negation::FollowedBy);
        for (i, e) in rest.enumerate() {
            let against = |kind, fresh| {
                trailing
                    .iter()
                    .any(|&(n, letters)| n == kind && fresh && fits(letters, e))
            };
            if against(Negation::Next, i == 0) || against(Negation::FollowedBy, true) {
                return None;
            }
            if !until_deadline {
                // The event after it was not against it.
                return Some(Fate::Match(after(i) + 1));
            }
        }
        let n = events[j..].iter().take_while(|e| in_time(e)).count();
        return match (deadline, until_deadline) {
            (Some(_), true) => Some(Fate::Match(after(n))),
            (Some(_), false) => Some(Fate::TimedOut(trailing_name(spec))),
            (None, _) => None,
        };
    }
    // Not complete: a timeout if it is still there at its deadline.
    deadline?;
    for e in rest {
        way = skip(spec, &way, e)?;
    }
    let (s, c) = way.at?;
    let missing = spec
        .reach(s, c)
        .into_iter()
        .flatten()
        .find(|&(s, c)| !spec.satisfied(s, c))?;
    Some(Fate::TimedOut(name(missing.0)))
}

fn trailing_name(spec: &Spec) -> String {
    format!("n{}0", spec.stages.len() - 1)
}

/// A result as `(stage, event index)` pairs (timeouts end with the missing stage).
type Found = Vec<(String, usize)>;

/// Every labeled subsequence of `events` starting at each event, judged.
fn reference(spec: &Spec, events: &[Ev]) -> (Vec<Found>, Vec<Found>) {
    let n = events.len();
    let stages = spec.stages.len();
    let mut matches = Vec::new();
    let mut timeouts = Vec::new();
    for first in 0..n {
        for mask in 0u32..1 << (n - first - 1) {
            let chosen: Vec<usize> = std::iter::once(first)
                .chain(
                    (0..n - first - 1)
                        .filter(|b| (mask >> b) & 1 == 1)
                        .map(|b| first + 1 + b),
                )
                .collect();
            // Every non-decreasing assignment of the chosen events to stages.
            let mut labels = vec![0; chosen.len()];
            loop {
                let taken: Vec<(usize, usize)> =
                    chosen.iter().copied().zip(labels.iter().copied()).collect();
                let found = || -> Found { taken.iter().map(|&(e, s)| (name(s), e)).collect() };
                match judge(spec, events, &taken) {
                    Some(Fate::Match(done)) => matches.push((taken.clone(), done, found())),
                    Some(Fate::TimedOut(missing)) => {
                        let mut t = found();
                        t.push((missing, usize::MAX));
                        timeouts.push(t);
                    }
                    None => {}
                }
                // The next assignment, in lexicographic order.
                let Some(i) = (0..labels.len()).rev().find(|&i| labels[i] + 1 < stages) else {
                    break;
                };
                labels[i] += 1;
                let from = labels[i];
                labels[i + 1..].iter_mut().for_each(|l| *l = from);
            }
        }
    }
    // FlinkCEP's skip strategies: by first event, then completion, then events.
    matches.sort_by_key(|(taken, done, _)| {
        let seqs: Vec<u64> = taken.iter().map(|&(e, _)| e as u64).collect();
        (seqs[0], *done, seqs)
    });
    let mut emitted = Vec::new();
    let mut rest = matches;
    while !rest.is_empty() {
        let (taken, _, found) = rest.remove(0);
        let of = |stage: &String| -> Vec<(usize, usize)> {
            taken
                .iter()
                .copied()
                .filter(|&(_, s)| &name(s) == stage)
                .collect()
        };
        let (prune, inclusive) = match &spec.skip {
            AfterMatchSkip::NoSkip => (None, false),
            AfterMatchSkip::SkipToNext => (taken.first().map(|t| t.0), true),
            AfterMatchSkip::SkipPastLastEvent => (taken.last().map(|t| t.0), true),
            AfterMatchSkip::SkipToFirst(stage) => (of(stage).first().map(|t| t.0), false),
            AfterMatchSkip::SkipToLast(stage) => (of(stage).last().map(|t| t.0), false),
        };
        if let Some(at) = prune {
            rest.retain(|(t, _, _)| t[0].0 > at || (t[0].0 == at && !inclusive));
        }
        emitted.push(found);
    }
    (emitted, timeouts)
}

/// `spec` through the real matcher: watermarks between events and stored state at random.
fn matcher(spec: &Spec, events: &[Ev], rng: &mut SplitMix) -> (Vec<Found>, Vec<Found>) {
    let pattern = spec.pattern();
    assert!(pattern.problems().is_empty(), "{:?}", pattern.problems());
    let mut state: KeyState<Ev> = KeyState::default();
    let mut out: Emitted<Ev> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        if i > 0 && events[i - 1].0 < e.0 && rng.below(3) == 0 {
            let now = events[i - 1].0 + rng.below((e.0 - events[i - 1].0) as u64) as i64;
            pattern.expire(&mut state.nfa, now, true, &mut out);
        }
        pattern.feed(&mut state.nfa, e.0, e, true, &mut out);
        if rng.below(2) == 0 {
            let bytes = bincode::serialize(&state).expect("encodes");
            state = bincode::deserialize(&bytes).expect("decodes");
        }
    }
    pattern.expire(&mut state.nfa, END_WATERMARK, true, &mut out);
    let last: Timestamp = events.last().map_or(0, |e| e.0);
    pattern.finish(&mut state.nfa, last + 1, &mut out);
    assert!(state.nfa.partials.is_empty() && state.nfa.held().is_empty());
    let found = |events: Vec<(String, Timestamp, Ev)>| -> Found {
        events.into_iter().map(|(s, _, e)| (s, e.2)).collect()
    };
    let (mut matches, mut timeouts) = (Vec::new(), Vec::new());
    for (_, result) in out {
        match result {
            CepOutput::Matched(m) => matches.push(found(m.events)),
            CepOutput::TimedOut(t) => {
                let mut f = found(t.events);
                f.push((t.missing, usize::MAX));
                timeouts.push(f);
            }
        }
    }
    (matches, timeouts)
}

fn random_events(rng: &mut SplitMix) -> Vec<Ev> {
    let mut ts = 0;
    (0..1 + rng.below(8) as usize)
        .map(|i| {
            ts += rng.below(3) as i64;
            (ts, rng.below(4) as u8, i)
        })
        .collect()
}

#[test]
fn the_matcher_agrees_with_the_brute_force_reference_on_random_patterns() {
    let mut rng = SplitMix::new(30);
    let mut seen = [0usize; 5];
    // Cases with matches: all, with a negative stage, with `followed_by_any`.
    let (mut matched, mut negated, mut any) = (0, 0, 0);
    for case in 0..3000 {
        let spec = Spec::random(&mut rng);
        let events = random_events(&mut rng);
        let (mut expected, mut expected_timeouts) = reference(&spec, &events);
        let (mut actual, mut timeouts) = matcher(&spec, &events, &mut rng);
        let context = || format!("case {case}: {spec:#?}\nevents {events:?}");
        if spec.skip == AfterMatchSkip::NoSkip {
            // Without a skip strategy matches come out as they complete.
            expected.sort();
            actual.sort();
            expected_timeouts.sort();
            timeouts.sort();
            assert_eq!(timeouts, expected_timeouts, "timeouts, {}", context());
        }
        assert_eq!(actual, expected, "matches, {}", context());
        seen[match spec.skip {
            AfterMatchSkip::NoSkip => 0,
            AfterMatchSkip::SkipToNext => 1,
            AfterMatchSkip::SkipPastLastEvent => 2,
            AfterMatchSkip::SkipToFirst(_) => 3,
            AfterMatchSkip::SkipToLast(_) => 4,
        }] += 1;
        if !expected.is_empty() {
            matched += 1;
            negated += usize::from(spec.stages.iter().any(|s| !s.after.is_empty()));
            any += usize::from(spec.stages.iter().any(|s| s.link == Link::FollowedByAny));
        }
    }
    assert!(seen.iter().all(|&n| n > 400), "{seen:?}");
    assert!(matched > 1000, "only {matched} cases had matches");
    assert!(
        negated > 200 && any > 200,
        "cases with matches: {negated} with negative stages, {any} with followed_by_any"
    );
}

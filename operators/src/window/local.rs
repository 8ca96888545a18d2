//! Two-phase window aggregation (Flink's local-global aggregation): each producer instance
//! pre-aggregates its own events per key and pane in its thread, before the exchange
//! ([`LocalWindows`], a [`ChainedOperator`]), and the keyed window operator merges the
//! partial aggregates ([`MergePartials`]). A window over one hot key (Nexmark q7 has a
//! single key) then costs each worker its share of the events, and one partial per pane,
//! key and producer crosses the exchange instead of every event.
//!
//! Panes are those of [`super::aligned`]: a tumbling window is one pane, a sliding window
//! is made of panes of `gcd(size, slide)`. A pane lies whole in every window that contains
//! its start, so a partial, timed at its pane's start, counts in exactly the windows its
//! events belong to.
//!
//! # Invariants
//! - Results, lateness and late counts are those of [`super::WindowedStream::aggregate`]:
//!   a partial goes downstream with the watermark that preceded its events (the local one
//!   before the advance that completed its window), so it is late only where its events
//!   would have been (a pane ends no later than the first window holding it); an event
//!   whose pane the local watermark has completed goes on alone, with its own watermark,
//!   and the window operator judges it (drops and counts it, adds it to the windows still
//!   open, or updates them within the allowed lateness).
//! - Aligned windows only: a session has no panes.
//! - Memory is bounded: at most [`MAX_HELD_PARTIALS`] partials are held per instance; past
//!   that, every open pane's partials go on at once, as Flink's mini-batch flushes at its
//!   size, and until the newest of those panes completes, events go on one by one (holding
//!   them saves little with that many keys). Early partials are still right: partials of
//!   one key and pane merge, and a partial of one event, timed at the event, is that event
//!   to the window. With millions of keys per window and memory state, two phases are
//!   still slower than one (BENCHMARKS.md).
//! - An event the aggregate fails on here fails the job with the error the window operator
//!   gives (key, pane, event time and input position); a failure while merging partials
//!   names the key and window only, no single event being to blame.
//! - Nothing here is checkpointed: every partial goes on before a barrier passes.
//! - With idleness on (`--idle-timeout`) partials go on after every batch: a receiver that
//!   leaves a quiet input out of its watermark would otherwise fire a window without what
//!   that input holds (see [`ChainedOperator`]).

use std::collections::BTreeMap;
use std::marker::PhantomData;

use rustc_hash::FxHashMap;
use weir_engine::{BoxError, ChainedOperator, Data, Record, StateKey, Timestamp};

use super::{window_start, OriginOf, Window, WindowAggregateError};
use crate::aggregate::{AggregateError, Aggregator};

/// Partials held by one instance of the local phase before they all go on early.
pub(crate) const MAX_HELD_PARTIALS: usize = 65_536;

/// What a key's events of one pane came to on one producer instance.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Partial<K, Acc> {
    /// The key.
    pub(crate) key: K,
    /// The aggregate of those events.
    pub(crate) acc: Acc,
}

/// The local phase: partial aggregates per pane and key, handed on when the local
/// watermark completes the pane, before a barrier and at the end.
pub(crate) struct LocalWindows<K, T, A: Aggregator<T>, KF> {
    key: KF,
    /// Words for where an event was read, for the error of one the aggregate fails on.
    origin: Option<OriginOf<T>>,
    /// Panes: the windows themselves if tumbling, `gcd(size, slide)` if sliding.
    pane: i64,
    offset: i64,
    aggregator: A,
    /// Open panes by start.
    open: BTreeMap<Timestamp, FxHashMap<K, A::Acc>>,
    /// Partials in `open`.
    held: usize,
    /// An emptied pane table, kept for the next pane (no allocation and regrowth per pane).
    spare: Option<FxHashMap<K, A::Acc>>,
    /// After the held partials reached the limit: events go on one by one until the
    /// watermark reaches this time (the last millisecond of the newest pane then open).
    one_by_one_until: Option<Timestamp>,
    /// The input watermark so far; no open pane has `end - 1 <= watermark`.
    watermark: Timestamp,
    _events: PhantomData<fn(T)>,
}

impl<K, T, A: Aggregator<T>, KF> LocalWindows<K, T, A, KF> {
    pub(crate) fn new(
        key: KF,
        pane: i64,
        offset: i64,
        aggregator: A,
        origin: Option<OriginOf<T>>,
    ) -> Self {
        LocalWindows {
            key,
            origin,
            pane,
            offset,
            aggregator,
            open: BTreeMap::new(),
            held: 0,
            spare: None,
            one_by_one_until: None,
            watermark: Timestamp::MIN,
            _events: PhantomData,
        }
    }
}

impl<K, T, A, KF> LocalWindows<K, T, A, KF>
where
    K: StateKey + Data,
    A: Aggregator<T>,
{
    /// The watermark advances to `watermark`: appends the partials of the panes it
    /// completes (`end - 1 <= watermark`), with the watermark before it, which did not.
    fn advance(&mut self, watermark: Timestamp, out: &mut Vec<Record<Partial<K, A::Acc>>>) {
        let completed = if watermark >= Timestamp::MAX - 1 {
            // Every pane is complete, including those whose end saturates at the maximum.
            std::mem::take(&mut self.open)
        } else {
            // Complete: `start + pane - 1 <= watermark`, so the first still open starts at
            // `watermark - pane + 2` (saturated near the minimum, which hands panes there
            // on early: harmless, their partials merge).
            let first_open = watermark.saturating_sub(self.pane).saturating_add(2);
            let open = self.open.split_off(&first_open);
            std::mem::replace(&mut self.open, open)
        };
        self.held -= completed.values().map(FxHashMap::len).sum::<usize>();
        self.hand_on(completed, out);
        self.watermark = watermark;
    }

    /// The job's error for `event`, which the aggregate failed on in the pane at `start`.
    fn failed(
        &self,
        cause: AggregateError,
        key: &K,
        start: Timestamp,
        event: &Record<T>,
    ) -> BoxError {
        let pane = Window {
            start,
            end: start.saturating_add(self.pane),
        };
        let mut error = WindowAggregateError::new(cause, key, pane, Some(event.ts));
        error.origin = self.origin.as_ref().and_then(|origin| origin(&event.value));
        Box::new(error)
    }

    fn hand_on(
        &mut self,
        panes: BTreeMap<Timestamp, FxHashMap<K, A::Acc>>,
        out: &mut Vec<Record<Partial<K, A::Acc>>>,
    ) {
        for (start, mut keys) in panes {
            let watermark = self.watermark;
            out.extend(keys.drain().map(|(key, acc)| Record {
                ts: start,
                watermark,
                value: Partial { key, acc },
            }));
            // The next pane reuses the table, grown to this one's keys.
            self.spare.get_or_insert(keys);
        }
    }
}

impl<K, T, A, KF> ChainedOperator for LocalWindows<K, T, A, KF>
where
    K: StateKey + Data,
    T: Data,
    A: Aggregator<T>,
    KF: Fn(&T) -> K + Send + 'static,
{
    type In = T;
    type Out = Partial<K, A::Acc>;

    fn process(
        &mut self,
        records: Vec<Record<T>>,
        out: &mut Vec<Record<Self::Out>>,
    ) -> Result<(), BoxError> {
        for r in records {
            // As the window operator does: what the record's watermark completes goes
            // first, so partials never follow a watermark that would make them late.
            if r.watermark > self.watermark {
                self.advance(r.watermark, out);
            }
            let start = window_start(r.ts, self.pane, self.offset);
            let key = (self.key)(&r.value);
            let one_by_one = self.one_by_one_until.is_some_and(|t| self.watermark < t);
            if one_by_one || start.saturating_add(self.pane) - 1 <= self.watermark {
                // Too many keys to hold, or completed here already (the window operator
                // decides what it is): the event goes on alone, with its own watermark.
                let acc = aggregate_of(&self.aggregator, &r.value)
                    .map_err(|cause| self.failed(cause, &key, start, &r))?;
                out.push(Record {
                    ts: r.ts,
                    watermark: r.watermark,
                    value: Partial { key, acc },
                });
                continue;
            }
            // Most events fall in the newest open pane.
            let keys = match self.open.last_entry() {
                Some(newest) if *newest.key() == start => newest.into_mut(),
                _ => {
                    let spare = &mut self.spare;
                    self.open
                        .entry(start)
                        .or_insert_with(|| spare.take().unwrap_or_default())
                }
            };
            // The key is kept for the error, not cloned for the table.
            let added = match keys.get_mut(&key) {
                Some(acc) => self.aggregator.add(acc, &r.value),
                None => match aggregate_of(&self.aggregator, &r.value) {
                    Ok(acc) => {
                        keys.insert(key, acc);
                        self.held += 1;
                        continue;
                    }
                    Err(cause) => Err(cause),
                },
            };
            if let Err(cause) = added {
                return Err(self.failed(cause, &key, start, &r));
            }
        }
        if self.held > MAX_HELD_PARTIALS {
            self.one_by_one_until = self
                .open
                .last_key_value()
                .map(|(start, _)| start.saturating_add(self.pane) - 1);
            let open = std::mem::take(&mut self.open);
            self.held = 0;
            self.hand_on(open, out);
        }
        Ok(())
    }

    fn on_watermark(
        &mut self,
        watermark: Timestamp,
        out: &mut Vec<Record<Self::Out>>,
    ) -> Result<(), BoxError> {
        // Called only when the watermark moved forward (the trait's contract).
        self.advance(watermark, out);
        Ok(())
    }

    fn drain(&mut self, out: &mut Vec<Record<Self::Out>>) -> Result<(), BoxError> {
        let open = std::mem::take(&mut self.open);
        self.held = 0;
        self.hand_on(open, out);
        Ok(())
    }
}

/// The aggregate of one event.
fn aggregate_of<T, A: Aggregator<T>>(aggregator: &A, event: &T) -> Result<A::Acc, AggregateError> {
    let mut acc = aggregator.create();
    aggregator.add(&mut acc, event)?;
    Ok(acc)
}

/// The global phase: merges partial aggregates as [`Aggregator::add`] would add their
/// events.
pub(crate) struct MergePartials<A, T> {
    aggregator: A,
    _events: PhantomData<fn(T)>,
}

impl<A: Clone, T> Clone for MergePartials<A, T> {
    fn clone(&self) -> Self {
        MergePartials::new(self.aggregator.clone())
    }
}

impl<A, T> MergePartials<A, T> {
    pub(crate) fn new(aggregator: A) -> Self {
        MergePartials {
            aggregator,
            _events: PhantomData,
        }
    }
}

impl<K, T, A> Aggregator<Partial<K, A::Acc>> for MergePartials<A, T>
where
    T: 'static,
    A: Aggregator<T>,
{
    type Acc = A::Acc;
    type Output = A::Output;
    fn create(&self) -> A::Acc {
        self.aggregator.create()
    }
    fn add(&self, acc: &mut A::Acc, partial: &Partial<K, A::Acc>) -> Result<(), AggregateError> {
        self.aggregator.merge(acc, &partial.acc)
    }
    fn merge(&self, acc: &mut A::Acc, other: &A::Acc) -> Result<(), AggregateError> {
        self.aggregator.merge(acc, other)
    }
    fn finish(&self, acc: &A::Acc) -> A::Output {
        self.aggregator.finish(acc)
    }
    fn finish_owned(&self, acc: A::Acc) -> A::Output {
        self.aggregator.finish_owned(acc)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weir_engine::{Job, RunOptions, Source, SourceStatus, Stream, Watermarks};

    use super::*;
    use crate::aggregate::Stats;
    use crate::test_support::{sorted, Collect};
    use crate::window::{Session, Sliding, Tumbling, WindowExt, WindowSpec, WindowedStream};

    /// `(ts, key, value)`.
    type Ev = (i64, u32, i64);

    /// Instance `instance` of `instances`: every `instances`-th event, three per poll, so
    /// watermarks advance between and within batches.
    struct Share {
        events: Vec<Ev>,
        at: usize,
        step: usize,
    }

    impl Source for Share {
        type Item = Ev;
        fn poll_batch(&mut self, out: &mut Vec<Ev>, _: usize) -> Result<SourceStatus, BoxError> {
            for _ in 0..3 {
                match self.events.get(self.at) {
                    Some(e) => out.push(*e),
                    None => return Ok(SourceStatus::Exhausted),
                }
                self.at += self.step;
            }
            Ok(SourceStatus::More)
        }
        fn describe(&self) -> String {
            "share".into()
        }
    }

    /// Out of order by up to 1.5 s around 100 ms apart (within the 2 s bound, so never
    /// late), and every 40th event from the 200th on 30 s behind: late at every
    /// interleaving of the two instances (they stay within 16 polls of each other), and
    /// alone in its window, so the updates an allowed lateness makes are the same at P = 1
    /// and 2.
    fn events() -> Vec<Ev> {
        let mut x: u64 = 7;
        (0..1_000)
            .map(|i| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let jitter = (x >> 33) as i64 % 1_500;
                let behind = if i % 40 == 0 && i >= 200 { 30_000 } else { 0 };
                (
                    i * 100 + jitter - behind,
                    (x >> 40) as u32 % 3,
                    (x >> 20) as i64 % 1_000,
                )
            })
            .collect()
    }

    type Windowed = WindowedStream<u32, Ev, fn(&Ev) -> u32>;

    /// Results (as text, sorted) and late events of one run with `(spec, allowed
    /// lateness)`.
    fn run(
        setup: (usize, Option<Duration>),
        windows: (WindowSpec, Duration),
        aggregate: fn(Windowed) -> Stream<String>,
    ) -> (Vec<String>, u64) {
        run_on(events(), setup, windows, aggregate)
    }

    /// [`run`] on the events `all`.
    fn run_on(
        all: Vec<Ev>,
        (parallelism, idle_timeout): (usize, Option<Duration>),
        (spec, lateness): (WindowSpec, Duration),
        aggregate: fn(Windowed) -> Stream<String>,
    ) -> (Vec<String>, u64) {
        let job = Job::new("two-phase");
        let windowed: Windowed = job
            .parallel_source("events", move |instance, instances| Share {
                events: all.clone(),
                at: instance,
                step: instances,
            })
            .timestamps(|e| e.0, Watermarks::bounded(Duration::from_secs(2)))
            .key_by((|e: &Ev| e.1) as fn(&Ev) -> u32)
            .window(spec)
            .allowed_lateness(lateness);
        let (sink, seen) = Collect::new();
        aggregate(windowed).sink("out", sink);
        let options = RunOptions {
            parallelism,
            idle_timeout,
            ..RunOptions::default()
        };
        let summary = job.run(&options).expect("the job runs");
        (sorted(&seen), summary.late_events)
    }

    fn one_phase(w: Windowed) -> Stream<String> {
        w.aggregate(Stats::of(|e: &Ev| e.2))
            .map(|r| format!("{r:?}"))
    }

    fn two_phase(w: Windowed) -> Stream<String> {
        w.aggregate_two_phase(Stats::of(|e: &Ev| e.2))
            .map(|r| format!("{r:?}"))
    }

    fn updates(results: &[String]) -> usize {
        results
            .iter()
            .filter(|r| r.contains("is_update: true"))
            .count()
    }

    #[test]
    fn two_phases_give_the_results_and_late_counts_of_one() {
        let tumbling = WindowSpec::from(Tumbling::of(Duration::from_secs(2)));
        // Panes of 1 s (the gcd), each in five windows.
        let sliding = Sliding::of(Duration::from_secs(5), Duration::from_secs(2)).into();
        for spec in [tumbling, sliding] {
            for lateness in [Duration::ZERO, Duration::from_secs(40)] {
                let windows = (spec, lateness);
                let (expected, late) = run((1, None), windows, one_phase);
                assert!(expected.len() > 100, "{} windows", expected.len());
                match lateness.is_zero() {
                    true => assert_eq!(late, 20, "late events"),
                    // Most land in a window their key has already fired.
                    false => assert!(updates(&expected) >= 15, "{}", updates(&expected)),
                }
                assert_eq!(run((2, None), windows, one_phase), (expected.clone(), late));
                // With idleness on, the local phase holds nothing from one batch to the
                // next (no input goes quiet long enough here to be left out).
                let idle = Some(Duration::from_secs(30));
                for setup in [(1, None), (2, None), (2, idle)] {
                    let (results, two_phase_late) = run(setup, windows, two_phase);
                    assert_eq!(results, expected, "{setup:?}, {windows:?}");
                    assert_eq!(two_phase_late, late, "{setup:?}, {windows:?}");
                }
            }
        }
    }

    #[test]
    fn more_keys_than_the_local_phase_holds_give_the_results_of_one_phase() {
        // 120,000 keys, each in both 10 s windows: the local phase reaches its limit in
        // each, hands its partials on and passes the rest of the window's events one by one.
        let keys = 120_000u32;
        let all: Vec<Ev> = (0..4 * keys)
            .map(|i| (i64::from(i) / 24, (i * 7_919) % keys, i64::from(i % 1_000)))
            .collect();
        let windows = (Tumbling::of(Duration::from_secs(10)).into(), Duration::ZERO);
        let (expected, late) = run_on(all.clone(), (1, None), windows, one_phase);
        assert_eq!(expected.len(), 2 * keys as usize);
        for setup in [(1, None), (2, None)] {
            let results = run_on(all.clone(), setup, windows, two_phase);
            assert_eq!(results, (expected.clone(), late), "{setup:?}");
        }
    }

    fn partial(ts: Timestamp, watermark: Timestamp, events: u64) -> Record<Partial<u32, u64>> {
        Record {
            ts,
            watermark,
            value: Partial {
                key: 1,
                acc: events,
            },
        }
    }

    /// Counts per key in windows of 10 ms at `offset`.
    fn local(offset: i64) -> LocalWindows<u32, Ev, crate::aggregate::Count, fn(&Ev) -> u32> {
        LocalWindows::new(
            (|e: &Ev| e.1) as fn(&Ev) -> u32,
            10,
            offset,
            crate::aggregate::Count,
            None,
        )
    }

    fn event(ts: Timestamp, watermark: Timestamp) -> Record<Ev> {
        Record {
            ts,
            watermark,
            value: (ts, 1, 0),
        }
    }

    #[test]
    fn past_the_held_limit_partials_go_on_early_and_events_one_by_one_until_the_pane_completes(
    ) -> Result<(), BoxError> {
        let mut op = local(0);
        let mut out = Vec::new();
        let keys = u32::try_from(MAX_HELD_PARTIALS).map_err(|e| e.to_string())?;
        let distinct = |n: u32| {
            (0..n).map(|key| Record {
                ts: 5,
                watermark: 2,
                value: (5, key, 0),
            })
        };
        op.process(distinct(keys).collect(), &mut out)?;
        assert_eq!(out.len(), 0, "at the limit, partials are held");
        op.process(distinct(keys + 1).collect(), &mut out)?;
        // The first batch's keys were held, so they now count 2; the new one 1.
        assert_eq!(out.len(), MAX_HELD_PARTIALS + 1, "all went on at once");
        assert!(out.iter().all(|p| p.ts == 0 && p.watermark == 2));
        let events: u64 = out.iter().map(|p| p.value.acc).sum();
        assert_eq!(events, 2 * u64::from(keys) + 1);
        // Until the pane completes, its events go on one by one, timed as themselves.
        out.clear();
        op.process(vec![event(7, 2)], &mut out)?;
        assert_eq!(out, vec![partial(7, 2, 1)]);
        op.on_watermark(9, &mut out)?;
        assert_eq!(out, vec![partial(7, 2, 1)], "nothing was held");
        // Then they are held again.
        out.clear();
        op.process(vec![event(15, 9)], &mut out)?;
        assert_eq!(out, vec![]);
        op.on_watermark(19, &mut out)?;
        assert_eq!(out, vec![partial(10, 9, 1)]);
        Ok(())
    }

    #[test]
    fn an_event_the_local_phase_fails_on_is_named_as_the_window_names_it() {
        let job = Job::new("two-phase");
        let (sink, _) = Collect::new();
        let overflowing: Vec<Ev> = vec![(1, 1, i64::MAX), (2, 1, 1)];
        job.source("events", crate::test_support::VecSource(overflowing))
            .timestamps(|e| e.0, Watermarks::bounded(Duration::from_secs(2)))
            .key_by(|e: &Ev| e.1)
            .window(Tumbling::of(Duration::from_secs(10)))
            .origin(|e: &Ev| Some(format!("input line {}", e.0)))
            .aggregate_two_phase(Stats::of(|e: &Ev| e.2))
            .sink("out", sink);
        let err = job
            .run(&RunOptions::default())
            .expect_err("the sum overflows");
        let mut said = err.to_string();
        let mut cause = std::error::Error::source(&err);
        while let Some(c) = cause {
            said += &format!(": {c}");
            cause = c.source();
        }
        assert!(
            said.contains("overflowed")
                && said.contains("(key 1, window [0, 10000), event time 2, input line 2)"),
            "{said}"
        );
    }

    #[test]
    fn a_window_goes_on_when_the_watermark_reaches_its_end_minus_one() -> Result<(), BoxError> {
        let mut op = local(0);
        let mut out = Vec::new();
        op.process(
            vec![event(0, i64::MIN), event(5, 2), event(12, 3)],
            &mut out,
        )?;
        op.on_watermark(8, &mut out)?;
        assert_eq!(out, vec![], "[0, 10) is open until watermark 9");
        op.on_watermark(9, &mut out)?;
        assert_eq!(out, vec![partial(0, 8, 2)], "with the watermark before");
        // Completed here: each goes alone, with its own watermark.
        out.clear();
        op.process(vec![event(3, 9), event(4, 9), event(15, 9)], &mut out)?;
        assert_eq!(out, vec![partial(3, 9, 1), partial(4, 9, 1)]);
        // The end of input completes everything, and nothing is left to drain.
        out.clear();
        op.on_watermark(i64::MAX, &mut out)?;
        assert_eq!(out, vec![partial(10, 9, 2)]);
        out.clear();
        op.drain(&mut out)?;
        assert_eq!(out, vec![]);
        Ok(())
    }

    #[test]
    fn windows_at_an_offset_and_at_the_ends_of_time_complete_on_time() -> Result<(), BoxError> {
        // Offset 3: [-7, 3) holds -7 and 2; it completes at watermark 2.
        let mut op = local(3);
        let mut out = Vec::new();
        op.process(vec![event(-7, i64::MIN), event(2, -10)], &mut out)?;
        op.on_watermark(1, &mut out)?;
        assert_eq!(out, vec![]);
        op.on_watermark(2, &mut out)?;
        assert_eq!(out, vec![partial(-7, 1, 2)]);
        // A window whose end saturates at the maximum completes at the end of input.
        let mut op = local(0);
        out.clear();
        let start = i64::MAX - i64::MAX.rem_euclid(10);
        op.process(vec![event(i64::MAX - 1, 0)], &mut out)?;
        op.on_watermark(i64::MAX - 2, &mut out)?;
        assert_eq!(out, vec![]);
        op.on_watermark(i64::MAX, &mut out)?;
        assert_eq!(out, vec![partial(start, i64::MAX - 2, 1)]);
        // Before a barrier: everything open, with the current watermark.
        let mut op = local(0);
        out.clear();
        op.process(vec![event(20, 5), event(31, 6)], &mut out)?;
        op.drain(&mut out)?;
        assert_eq!(out, vec![partial(20, 6, 1), partial(30, 6, 1)]);
        Ok(())
    }

    #[test]
    fn two_phases_refuse_sessions_and_a_late_data_sink() {
        let job = Job::new("two-phase");
        let (sink, _) = Collect::new();
        job.parallel_source("events", |_, _| Share {
            events: events(),
            at: 0,
            step: 1,
        })
        .timestamps(|e| e.0, Watermarks::bounded(Duration::from_secs(2)))
        .key_by(|e: &Ev| e.1)
        .window(Session::with_gap(Duration::from_secs(2)))
        .aggregate_two_phase(Stats::of(|e: &Ev| e.2))
        .sink("out", sink);
        let err = job.run(&RunOptions::default()).expect_err("refused");
        assert!(
            err.to_string()
                .contains("needs tumbling or sliding windows"),
            "{err}"
        );

        let job = Job::new("two-phase");
        let (sink, _) = Collect::new();
        let (late_sink, _) = Collect::new();
        job.source("events", crate::test_support::VecSource(events()))
            .timestamps(|e| e.0, Watermarks::bounded(Duration::from_secs(2)))
            .key_by(|e: &Ev| e.1)
            .window(Tumbling::of(Duration::from_secs(2)))
            .late_data(late_sink)
            .aggregate_two_phase(Stats::of(|e: &Ev| e.2))
            .sink("out", sink);
        let err = job.run(&RunOptions::default()).expect_err("refused");
        assert!(err.to_string().contains("late events to a sink"), "{err}");
    }
}

//! Tests of the local phase and of two-phase aggregation against one phase.

use std::time::Duration;

use weir_engine::metrics::MetricFamily;
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

fn two_phase_or_one(w: Windowed) -> Stream<String> {
    w.aggregate_two_phase_or_one(Stats::of(|e: &Ev| e.2))
        .map(|r| format!("{r:?}"))
}

#[test]
fn two_phases_or_one_run_one_phase_where_two_cannot() {
    // A session window has no panes: one phase, its results, and no refusal.
    let session = (
        Session::with_gap(Duration::from_millis(150)).into(),
        Duration::ZERO,
    );
    let expected = run((2, None), session, one_phase);
    assert!(expected.0.len() > 10, "{} sessions", expected.0.len());
    assert_eq!(run((2, None), session, two_phase_or_one), expected);

    // Tumbling windows without or with a late-data sink: two phases (the local phase
    // receives every event), then one (it receives none; the sink gets the late events).
    for late_sink in [false, true] {
        let job = Job::new("two-phase-or-one");
        let (sink, seen) = Collect::new();
        let (late_sink_to, late) = Collect::new();
        let windowed = job
            .parallel_source("events", |instance, instances| Share {
                events: events(),
                at: instance,
                step: instances,
            })
            .timestamps(|e| e.0, Watermarks::bounded(Duration::from_secs(2)))
            .key_by(|e: &Ev| e.1)
            .window(Tumbling::of(Duration::from_secs(2)));
        let windowed = match late_sink {
            true => windowed.late_data(late_sink_to),
            false => windowed,
        };
        windowed
            .aggregate_two_phase_or_one(Stats::of(|e: &Ev| e.2))
            .sink("out", sink);
        let options = RunOptions {
            parallelism: 2,
            ..RunOptions::default()
        };
        job.run(&options).expect("the job runs");
        let local_in = job
            .metrics()
            .total(MetricFamily::EventsIn, Some("local-window"));
        match late_sink {
            false => assert_eq!(local_in, 1_000),
            true => {
                assert_eq!(local_in, 0);
                assert_eq!(late.lock().map(|l| l.len()).unwrap_or(0), 20);
            }
        }
        assert!(seen.lock().map(|s| s.len()).unwrap_or(0) > 100);
    }
}

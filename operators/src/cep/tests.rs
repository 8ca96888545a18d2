//! The pattern through the job API at P = 1 and P = 2: contiguity, loops, optional stages,
//! timeouts.

use std::time::Duration;

use weir_engine::{Job, RunOptions, Watermarks};

use super::*;
use crate::test_support::{Collect, VecSource};

/// `(ts, order, step)`.
type Ev = (i64, u32, String);

fn events(list: &[(i64, u32, &str)]) -> Vec<Ev> {
    list.iter()
        .map(|&(ts, order, step)| (ts, order, step.to_string()))
        .collect()
}

fn steps(events: &[(String, Timestamp, Ev)]) -> String {
    let named: Vec<String> = events
        .iter()
        .map(|(stage, ts, e)| format!("{stage}:{}@{ts}", e.2))
        .collect();
    format!("{}: {}", events[0].2 .1, named.join(" "))
}

/// Runs `pattern` on `events` (in this arrival order) at P = 1 and P = 2; both must give
/// the same results. Returns the matches and the timeouts (two outputs), each as
/// `order: stage:step@ts ..` lines (timeouts add `| missing STAGE`), sorted.
fn outcomes(pattern: Pattern<Ev>, events: Vec<Ev>) -> (Vec<String>, Vec<String>) {
    let mut results = Vec::new();
    for parallelism in [1, 2] {
        let job = Job::new("cep");
        let (match_sink, matches) = Collect::new();
        let (timeout_sink, timeouts) = Collect::new();
        let (m, t) = job
            .source("events", VecSource(events.clone()))
            .timestamps(|e| e.0, Watermarks::bounded(Duration::from_secs(5)))
            .key_by(|e: &Ev| e.1)
            .pattern_with_timeouts(pattern.clone());
        m.map(|m| steps(&m.events)).sink("matches", match_sink);
        t.map(|t| format!("{} | missing {}", steps(&t.events), t.missing))
            .sink("timeouts", timeout_sink);
        let options = RunOptions {
            parallelism,
            ..RunOptions::default()
        };
        job.run(&options).expect("the job runs");
        results.push((
            crate::test_support::sorted(&matches),
            crate::test_support::sorted(&timeouts),
        ));
    }
    assert_eq!(results[0], results[1], "P=1 and P=2 agree");
    results.swap_remove(0)
}

fn step(name: &'static str) -> impl Fn(&Ev) -> bool + Send + Sync + 'static {
    move |e: &Ev| e.2 == name
}

fn saga(step_two: fn(Pattern<Ev>, &str) -> Pattern<Ev>) -> Pattern<Ev> {
    let placed = Pattern::begin("placed").where_(step("placed"));
    step_two(placed, "reserved")
        .where_(step("reserved"))
        .followed_by("paid")
        .where_(step("paid"))
        .within(Duration::from_secs(10))
}

fn lines(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn relaxed_strict_timeouts_and_event_time_order() {
    let events = events(&[
        (1_000, 1, "placed"),
        (1_500, 1, "noise"),
        (2_000, 1, "reserved"),
        (3_000, 1, "paid"), // order 1 completes
        (1_100, 2, "placed"),
        (2_100, 2, "reserved"), // order 2 never pays: times out waiting for "paid"
        // Order 3 arrives out of order: paid and reserved before placed, by event time
        // after it.
        (4_300, 3, "paid"),
        (4_200, 3, "reserved"),
        (4_100, 3, "placed"),
        (5_000, 4, "placed"),
        (16_000, 4, "reserved"), // too late: more than 10 s after placed
        (30_000, 5, "end"),
    ]);
    let (matches, timeouts) = outcomes(saga(Pattern::followed_by), events.clone());
    assert_eq!(
        matches,
        lines(&[
            "1: placed:placed@1000 reserved:reserved@2000 paid:paid@3000",
            "3: placed:placed@4100 reserved:reserved@4200 paid:paid@4300",
        ])
    );
    assert_eq!(
        timeouts,
        lines(&[
            "2: placed:placed@1100 reserved:reserved@2100 | missing paid",
            "4: placed:placed@5000 | missing reserved",
        ])
    );
    // Strict: "reserved" must follow "placed" at once; the noise ends order 1's match
    // (silently: a broken match is not a timeout).
    let (matches, timeouts) = outcomes(saga(Pattern::next), events);
    assert_eq!(
        matches,
        lines(&["3: placed:placed@4100 reserved:reserved@4200 paid:paid@4300"])
    );
    assert_eq!(timeouts.len(), 2);
}

/// FlinkCEP's documented example for looping contiguity: `c a+ b` over
/// `c d a1 a2 a3 d a4 b`.
#[test]
fn one_or_more_follows_flink_no_skip_relaxed_and_consecutive() {
    let input = events(&[
        (1, 1, "c"),
        (2, 1, "d"),
        (3, 1, "a"),
        (4, 1, "a"),
        (5, 1, "a"),
        (6, 1, "d"),
        (7, 1, "a"),
        (8, 1, "b"),
    ]);
    let pattern = |consecutive: bool| {
        let p = Pattern::begin("c")
            .where_(step("c"))
            .followed_by("a")
            .where_(step("a"))
            .one_or_more();
        let p = if consecutive { p.consecutive() } else { p };
        p.followed_by("b").where_(step("b"))
    };
    let (matches, timeouts) = outcomes(pattern(false), input.clone());
    assert_eq!(
        matches,
        lines(&[
            "1: c:c@1 a:a@3 a:a@4 a:a@5 a:a@7 b:b@8",
            "1: c:c@1 a:a@3 a:a@4 a:a@5 b:b@8",
            "1: c:c@1 a:a@3 a:a@4 b:b@8",
            "1: c:c@1 a:a@3 b:b@8",
        ])
    );
    assert!(timeouts.is_empty(), "no within: no timeouts");
    let (matches, _) = outcomes(pattern(true), input);
    assert_eq!(
        matches,
        lines(&[
            "1: c:c@1 a:a@3 a:a@4 a:a@5 b:b@8",
            "1: c:c@1 a:a@3 a:a@4 b:b@8",
            "1: c:c@1 a:a@3 b:b@8",
        ])
    );
}

#[test]
fn a_trailing_loop_emits_each_extension_and_until_ends_a_loop() {
    let trailing = Pattern::begin("a")
        .where_(step("a"))
        .followed_by("b")
        .where_(step("b"))
        .one_or_more();
    let (matches, _) = outcomes(trailing, events(&[(1, 1, "a"), (2, 1, "b"), (3, 1, "b")]));
    assert_eq!(matches, lines(&["1: a:a@1 b:b@2", "1: a:a@1 b:b@2 b:b@3"]));
    // `a b+ c`, with and without `until(x)`: x ends the loop, so b@5 is never taken.
    let input = events(&[
        (1, 1, "a"),
        (2, 1, "b"),
        (3, 1, "b"),
        (4, 1, "x"),
        (5, 1, "b"),
        (6, 1, "c"),
    ]);
    let pattern = |until: bool| {
        let p = Pattern::begin("a")
            .where_(step("a"))
            .followed_by("b")
            .where_(step("b"))
            .one_or_more();
        let p = if until { p.until(step("x")) } else { p };
        p.followed_by("c").where_(step("c"))
    };
    assert_eq!(
        outcomes(pattern(false), input.clone()).0,
        lines(&[
            "1: a:a@1 b:b@2 b:b@3 b:b@5 c:c@6",
            "1: a:a@1 b:b@2 b:b@3 c:c@6",
            "1: a:a@1 b:b@2 c:c@6",
        ])
    );
    assert_eq!(
        outcomes(pattern(true), input).0,
        lines(&["1: a:a@1 b:b@2 b:b@3 c:c@6", "1: a:a@1 b:b@2 c:c@6"])
    );
}

#[test]
fn optional_stages_give_the_match_with_and_without_them() {
    let pattern = Pattern::begin("a")
        .where_(step("a"))
        .followed_by("b")
        .where_(step("b"))
        .optional()
        .followed_by("c")
        .where_(step("c"));
    let (matches, _) = outcomes(
        pattern,
        events(&[
            (1, 1, "a"),
            (2, 1, "b"),
            (3, 1, "c"),
            (1, 2, "a"),
            (2, 2, "x"),
            (3, 2, "c"),
        ]),
    );
    assert_eq!(
        matches,
        lines(&["1: a:a@1 b:b@2 c:c@3", "1: a:a@1 c:c@3", "2: a:a@1 c:c@3"])
    );
    // A strict optional stage: x breaks "b right after a", but not "c after a".
    let strict = Pattern::begin("a")
        .where_(step("a"))
        .next("b")
        .where_(step("b"))
        .optional()
        .followed_by("c")
        .where_(step("c"));
    let (matches, _) = outcomes(
        strict,
        events(&[(1, 1, "a"), (2, 1, "x"), (3, 1, "b"), (4, 1, "c")]),
    );
    assert_eq!(matches, lines(&["1: a:a@1 c:c@4"]));
}

#[test]
fn times_counts_with_relaxed_or_consecutive_loops() {
    let input = events(&[
        (1, 1, "a"),
        (2, 1, "b"),
        (3, 1, "x"),
        (4, 1, "b"),
        (5, 1, "b"),
    ]);
    let pattern = |consecutive: bool| {
        let p = Pattern::begin("a")
            .where_(step("a"))
            .followed_by("b")
            .where_(step("b"))
            .times(2);
        if consecutive {
            p.consecutive()
        } else {
            p
        }
    };
    assert_eq!(
        outcomes(pattern(false), input.clone()).0,
        lines(&["1: a:a@1 b:b@2 b:b@4"])
    );
    assert_eq!(outcomes(pattern(true), input).0, Vec::<String>::new());
}

#[test]
fn timeouts_go_to_their_own_output_naming_the_first_missing_stage() {
    let pattern = |trailing_loop: bool| {
        let p = Pattern::begin("a")
            .where_(step("a"))
            .followed_by("b")
            .where_(step("b"))
            .one_or_more();
        let p = if trailing_loop {
            p
        } else {
            p.followed_by("c").where_(step("c"))
        };
        p.within(Duration::from_secs(10))
    };
    let input = events(&[
        (1_000, 1, "a"),
        (2_000, 1, "b"),
        (1_000, 2, "a"),
        (9_000, 2, "b"),
        (11_000, 2, "c"), // 10 s after a: too late
        (60_000, 3, "end"),
    ]);
    let (matches, timeouts) = outcomes(pattern(false), input.clone());
    assert!(matches.is_empty(), "{matches:?}");
    assert_eq!(
        timeouts,
        lines(&[
            "1: a:a@1000 b:b@2000 | missing c",
            "2: a:a@1000 b:b@9000 | missing c",
        ])
    );
    // `a b+`: complete after the first b, then only waiting to extend the loop, so its
    // expiry is not a timeout.
    let (matches, timeouts) = outcomes(pattern(true), input);
    assert_eq!(
        matches,
        lines(&["1: a:a@1000 b:b@2000", "2: a:a@1000 b:b@9000"])
    );
    assert!(timeouts.is_empty(), "{timeouts:?}");
    // `pattern` (no timeout output) gives the same matches.
    let job = Job::new("cep");
    let (sink, seen) = Collect::new();
    job.source("events", VecSource(events(&[(1, 1, "a"), (2, 1, "b")])))
        .timestamps(|e| e.0, Watermarks::bounded(Duration::from_secs(5)))
        .key_by(|e: &Ev| e.1)
        .pattern(pattern(true))
        .map(|m| steps(&m.events))
        .sink("matches", sink);
    job.run(&RunOptions::default()).expect("the job runs");
    assert_eq!(
        crate::test_support::sorted(&seen),
        lines(&["1: a:a@1 b:b@2"])
    );
}

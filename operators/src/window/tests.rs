//! Tests of the window operator: window kinds, lateness, updates, rejects and state release.

use std::sync::Arc;
use std::time::Duration;

use weir_engine::operator::OperatorFactory;
use weir_engine::{Keyed, KeyedOperator, MemoryBackend, Output, Record};

use super::*;

use crate::aggregate::Count;

type Row = (&'static str, i64, i64, u64, bool);

#[test]
fn windows_of_zero_size_or_a_slide_past_the_size_are_refused_as_on_the_command_line() {
    let zero = Duration::ZERO;
    let ten = Duration::from_secs(10);
    for bad in [
        WindowSpec::from(Tumbling::of(zero)),
        Sliding::of(ten, zero).into(),
        Sliding::of(Duration::from_secs(1), ten).into(),
        Session::with_gap(Duration::from_micros(500)).into(),
    ] {
        assert!(bad.check().is_err(), "{bad} was accepted");
    }
    assert_eq!(Tumbling::of(ten).with_offset(ten).offset(), 0);
    assert!(WindowSpec::from(Tumbling::of(zero).with_offset(ten))
        .check()
        .is_err());
    assert!(WindowSpec::from(Sliding::of(ten, ten)).check().is_ok());
}

#[test]
fn an_event_the_aggregate_fails_on_is_rejected_with_its_origin_and_left_out() {
    use crate::aggregate::Sum;
    let ctx = crate::test_support::operator_context("window");
    for spec in [
        WindowSpec::from(Tumbling::of(ms(10))),
        Sliding::of(ms(10), ms(5)).into(),
        Session::with_gap(ms(10)).into(),
    ] {
        let factory = WindowFactory::<String, i64, _> {
            route_rejects: true,
            origin: Some(Arc::new(|v: &i64| Some(format!("value {v}")))),
            ..WindowFactory::plain(spec, Sum::of(|v: &i64| *v))
        };
        let mut op = factory.create(&ctx, MemoryBackend::new()).expect("create");
        let mut out = Output::default();
        for (ts, value) in [(1, i64::MAX), (2, 1), (3, -5)] {
            let value = Keyed {
                key: "k".to_string(),
                value,
            };
            let record = Record {
                ts,
                watermark: MIN,
                value,
            };
            op.process(vec![record], &mut out)
                .expect("routed, not failed");
        }
        op.on_watermark(END, &mut out).expect("watermark");
        let (mut sums, mut rejected) = (Vec::new(), Vec::new());
        for r in out.take() {
            match r.value {
                WindowEvent::Result(w) => sums.push(w.value),
                WindowEvent::Rejected(r) => rejected.push(*r),
                WindowEvent::Late(_) => panic!("nothing is late"),
            }
        }
        assert!(
            sums.contains(&(i64::MAX - 5)),
            "{spec}: the windows go on without the rejected event: {sums:?}"
        );
        assert_eq!(rejected.len(), 1, "{spec}: {rejected:?}");
        assert_eq!(rejected[0].event, 1);
        let error = rejected[0].error.to_string();
        assert!(error.ends_with("event time 2, value 1)"), "{spec}: {error}");
    }
    // Without a rejects sink the same event fails the operator, naming it.
    let factory = WindowFactory::<String, i64, _> {
        origin: Some(Arc::new(|v: &i64| Some(format!("value {v}")))),
        ..WindowFactory::plain(Tumbling::of(ms(10)).into(), Sum::of(|v: &i64| *v))
    };
    let mut op = factory.create(&ctx, MemoryBackend::new()).expect("create");
    let mut out = Output::default();
    let records = [(1, i64::MAX), (2, 1)].map(|(ts, value)| Record {
        ts,
        watermark: MIN,
        value: Keyed {
            key: "k".to_string(),
            value,
        },
    });
    let failed = op
        .process(records.to_vec(), &mut out)
        .expect_err("overflow");
    assert!(
        failed.to_string().ends_with("event time 2, value 1)"),
        "{failed}"
    );
}

#[test]
fn the_remembered_alignment_agrees_with_window_start() {
    // Mostly ordered times with jumps back and forth, negative ones, and the edges.
    let mut times = vec![i64::MIN, i64::MIN + 1, i64::MIN + 2_999, i64::MIN + 4_000];
    times.extend([i64::MAX - 1, i64::MAX, -1, 0]);
    let mut state: u64 = 7;
    let mut ts: i64 = -25_000;
    for _ in 0..20_000 {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        ts += (state >> 33) as i64 % 700 - 200;
        times.push(ts);
    }
    for (size, offset) in [(1000, 0), (10_000, 300), (7, -3), (1, 0), (3_000, i64::MAX)] {
        let mut alignment = Alignment::new(size, offset);
        for &ts in &times {
            assert_eq!(
                alignment.start_of(ts),
                window_start(ts, size, offset),
                "ts {ts} size {size} offset {offset}"
            );
        }
    }
}

/// Feeds `(ts, watermark before the event, key)` events one per batch and returns the
/// fired windows `(key, start, end, count, is_update)` and the late count.
fn run(
    spec: impl Into<WindowSpec>,
    lateness: i64,
    events: &[(i64, i64, &'static str)],
    end_watermark: i64,
) -> (Vec<Row>, u64, usize) {
    let ctx = crate::test_support::operator_context("window");
    let factory = WindowFactory::<String, (), Count> {
        spec: spec.into(),
        allowed_lateness: lateness,
        aggregator: Count,
        route_late: true,
        route_rejects: false,
        origin: None,
        queryable: false,
        trigger: None,
        _types: std::marker::PhantomData,
    };
    let mut op = factory.create(&ctx, MemoryBackend::new()).expect("create");
    let mut out = Output::default();
    for &(ts, watermark, key) in events {
        let record = Record {
            ts,
            watermark,
            value: Keyed {
                key: key.to_string(),
                value: (),
            },
        };
        op.process(vec![record], &mut out).expect("process");
    }
    op.on_watermark(end_watermark, &mut out).expect("watermark");
    let mut routed_late = 0;
    let rows = out
        .take()
        .into_iter()
        .filter_map(|r| {
            let result = match r.value {
                WindowEvent::Result(result) => result,
                WindowEvent::Late(()) => {
                    routed_late += 1;
                    return None;
                }
                WindowEvent::Rejected(r) => panic!("Count never fails: {r:?}"),
            };
            let r = Record {
                ts: r.ts,
                watermark: r.watermark,
                value: result,
            };
            assert_eq!(r.ts, r.value.window.end - 1, "results carry time end - 1");
            let key = events
                .iter()
                .map(|e| e.2)
                .find(|k| *k == r.value.key)
                .expect("known key");
            Some((
                key,
                r.value.window.start,
                r.value.window.end,
                r.value.value,
                r.value.is_update,
            ))
        })
        .collect();
    let late = ctx.metrics.late_events.get();
    assert_eq!(
        routed_late, late,
        "every late event counted is routed to the late output"
    );
    (rows, late, op.state_entries())
}

const MIN: i64 = i64::MIN;
const END: i64 = i64::MAX;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn tumbling_fires_at_end_minus_one_and_drops_late_events() {
    let (rows, late, _) = run(
        Tumbling::of(ms(10)),
        0,
        // (-3, wm 0): its window [-10,0) has end - 1 = -1 <= 0, so it is late.
        // (5, wm 9): watermark 9 = end - 1 of [0,10) fired it first, so it is late.
        &[
            (1, MIN, "a"),
            (-3, 0, "a"),
            (9, 0, "a"),
            (12, 8, "a"),
            (5, 9, "a"),
        ],
        12,
    );
    assert_eq!(rows, vec![("a", 0, 10, 2, false)]);
    assert_eq!(late, 2);
    // One millisecond earlier the window is still open.
    let (rows, late, _) = run(Tumbling::of(ms(10)), 0, &[(1, MIN, "a"), (5, 8, "a")], END);
    assert_eq!((rows, late), (vec![("a", 0, 10, 2, false)], 0));
}

#[test]
fn sliding_windows_hold_each_event_once_per_window() {
    // size 30, slide 10: ts 25 belongs to [0,30), [10,40), [20,50); ts 5 belongs to
    // [-20,10), [-10,20) (both already due at watermark 24) and [0,30).
    let (mut rows, late, _) = run(
        Sliding::of(ms(30), ms(10)),
        0,
        &[(25, MIN, "a"), (5, 24, "a")],
        END,
    );
    rows.sort_by_key(|r| (r.2, r.1));
    assert_eq!(
        rows,
        vec![
            ("a", 0, 30, 2, false),
            ("a", 10, 40, 1, false),
            ("a", 20, 50, 1, false)
        ]
    );
    assert_eq!(late, 0);
    let (rows, _, _) = run(Sliding::of(ms(30), ms(10)), 0, &[(5, MIN, "a")], END);
    let windows: Vec<_> = rows.iter().map(|r| (r.1, r.2)).collect();
    assert_eq!(windows, vec![(-20, 10), (-10, 20), (0, 30)]);
}

#[test]
fn sliding_event_is_late_only_if_all_its_windows_are() {
    // Watermark 29 fired [0,30) but not [10,40) and [20,50): ts 25 is added to those two.
    let (rows, late, _) = run(
        Sliding::of(ms(30), ms(10)),
        0,
        &[(25, MIN, "a"), (25, 29, "b")],
        END,
    );
    let b: Vec<_> = rows
        .iter()
        .filter(|r| r.0 == "b")
        .map(|r| (r.1, r.2))
        .collect();
    assert_eq!(b, vec![(10, 40), (20, 50)]);
    assert_eq!(late, 0);
    let (_, late, _) = run(Sliding::of(ms(30), ms(10)), 0, &[(25, 49, "a")], END);
    assert_eq!(late, 1);
}

#[test]
fn sessions_merge_on_overlap_and_touch() {
    // gap 10: [0,10) and [10,20) touch -> [0,20); [25,35) stays apart; 5 overlaps [0,20).
    let (rows, _, _) = run(
        Session::with_gap(ms(10)),
        0,
        &[(0, MIN, "a"), (10, MIN, "a"), (25, MIN, "a"), (5, MIN, "a")],
        END,
    );
    assert_eq!(rows, vec![("a", 0, 20, 3, false), ("a", 25, 35, 1, false)]);
    // An event bridging two sessions merges all three.
    let (rows, _, _) = run(
        Session::with_gap(ms(10)),
        0,
        &[(0, MIN, "a"), (20, MIN, "a"), (10, MIN, "a")],
        END,
    );
    assert_eq!(rows, vec![("a", 0, 30, 3, false)]);
    // Sessions of different keys never merge.
    let (rows, _, _) = run(
        Session::with_gap(ms(10)),
        0,
        &[(0, MIN, "a"), (5, MIN, "b")],
        END,
    );
    assert_eq!(rows, vec![("a", 0, 10, 1, false), ("b", 5, 15, 1, false)]);
}

#[test]
fn late_session_event_may_join_an_open_session() {
    // Watermark 12: the lone [3,13) would be due (12 >= 12), but it touches the open
    // [10,20), so it is not late; [-20,-10) alone is late.
    let (rows, late, _) = run(
        Session::with_gap(ms(10)),
        0,
        &[(10, MIN, "a"), (3, 12, "a"), (-20, 12, "a")],
        END,
    );
    assert_eq!(rows, vec![("a", 3, 20, 2, false)]);
    assert_eq!(late, 1);
    // A fired session is gone: a later event never merges into it.
    let (rows, late, _) = run(
        Session::with_gap(ms(10)),
        0,
        &[(0, MIN, "a"), (30, 9, "a"), (5, 29, "a")],
        END,
    );
    assert_eq!(rows, vec![("a", 0, 10, 1, false), ("a", 30, 40, 1, false)]);
    assert_eq!(late, 1);
}

#[test]
fn allowed_lateness_updates_fired_windows() {
    // Lateness 5: [0,10) is kept until watermark 14; an event at wm 12 updates it,
    // at wm 14 it is dropped.
    let (rows, late, _) = run(
        Tumbling::of(ms(10)),
        5,
        &[(1, MIN, "a"), (2, 12, "a"), (3, 14, "a")],
        END,
    );
    assert_eq!(rows, vec![("a", 0, 10, 1, false), ("a", 0, 10, 2, true)]);
    assert_eq!(late, 1);
    let (rows, late, _) = run(
        Session::with_gap(ms(10)),
        5,
        &[(1, MIN, "a"), (2, 12, "a"), (3, 20, "a")],
        END,
    );
    assert_eq!(rows, vec![("a", 1, 11, 1, false), ("a", 1, 12, 2, true)]);
    assert_eq!(late, 1);
}

#[test]
fn sliding_lateness_does_not_update_expired_windows() {
    // hop 20/10, lateness 1000: at watermark 11499 window [-10000,10000) expired at
    // 10999, so ts 6000 only revises [0,20000).
    let (mut rows, late, _) = run(
        Sliding::of(ms(20_000), ms(10_000)),
        1000,
        &[(1000, MIN, "a"), (11_500, 999, "a"), (6000, 11_499, "a")],
        END,
    );
    rows.sort_by_key(|r| (r.2, r.4));
    assert_eq!(
        rows,
        vec![
            ("a", -10_000, 10_000, 1, false),
            ("a", 0, 20_000, 3, false),
            ("a", 10_000, 30_000, 1, false),
        ]
    );
    assert_eq!(late, 0);
}

#[test]
fn first_firing_of_a_late_window_is_not_an_update() {
    // Lateness 10 s: b's [10000,20000) is due when its first event arrives at watermark
    // 24999; its only result is not an update. A second late event revises it.
    let (rows, _, _) = run(
        Tumbling::of(ms(10_000)),
        10_000,
        &[
            (25_000, MIN, "a"),
            (15_000, 24_999, "b"),
            (16_000, 24_999, "b"),
        ],
        END,
    );
    let b: Vec<_> = rows
        .iter()
        .filter(|r| r.0 == "b")
        .map(|r| (r.3, r.4))
        .collect();
    assert_eq!(b, vec![(1, false), (2, true)]);
    let (rows, _, _) = run(
        Session::with_gap(ms(3000)),
        10_000,
        &[
            (25_000, MIN, "a"),
            (15_000, 24_999, "b"),
            (16_000, 24_999, "b"),
        ],
        END,
    );
    let b: Vec<_> = rows
        .iter()
        .filter(|r| r.0 == "b")
        .map(|r| (r.1, r.2, r.3, r.4))
        .collect();
    assert_eq!(
        b,
        vec![(15_000, 18_000, 1, false), (15_000, 19_000, 2, true)]
    );
}

#[test]
fn windows_near_i64_max_do_not_overflow() {
    let ts = i64::MAX - 800;
    for spec in [
        WindowSpec::from(Tumbling::of(ms(10_000))),
        Sliding::of(ms(10_000), ms(5000)).into(),
        Session::with_gap(ms(10_000)).into(),
    ] {
        let (rows, late, open) = run(spec, 0, &[(ts, MIN, "a")], END);
        assert_eq!(late, 0, "{spec}");
        assert_eq!(open, 0, "{spec}");
        assert!(!rows.is_empty(), "{spec}: the event must land in a window");
        assert!(
            rows.iter().all(|r| r.1 <= ts && r.2 == i64::MAX),
            "{spec}: {rows:?}"
        );
    }
    let ts = i64::MIN + 10;
    let (rows, late, _) = run(Sliding::of(ms(10_000), ms(5000)), 0, &[(ts, MIN, "a")], END);
    assert_eq!((rows.len(), late), (1, 0), "{rows:?}");
}

#[test]
fn state_is_released_after_firing() {
    let events: Vec<(i64, i64, &'static str)> =
        (0..100).map(|i| (i * 10, i * 10 - 1, "k")).collect();
    // Before the end watermark only the last window is open; afterwards nothing is.
    let (rows, _, open) = run(Tumbling::of(ms(10)), 0, &events, 995);
    assert_eq!((rows.len(), open), (99, 1));
    let (rows, _, open) = run(Sliding::of(ms(30), ms(10)), 0, &events, END);
    assert_eq!((rows.len(), open), (102, 0));
    let (rows, _, open) = run(Session::with_gap(ms(5)), 0, &events, END);
    assert_eq!((rows.len(), open), (100, 0));
}

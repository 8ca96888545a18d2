//! Tests of the window functions (reduce, process, aggregate-with) and the triggers on the
//! window operator itself, one event per batch, against hand-computed firings.

use weir_engine::operator::OperatorFactory;
use weir_engine::{Keyed, KeyedOperator, MemoryBackend, Output, Record};

use super::*;
use crate::aggregate::{Aggregator, Count};

const MIN: i64 = i64::MIN;
const END: i64 = i64::MAX;

/// One fired result: key, start, end, value, timing, is_update.
type Fired<V> = (String, i64, i64, V, Timing, bool);

/// Feeds `(ts, watermark before it, key, value)` one per batch through windows of `spec`
/// with `trigger`, then the watermark `END`; returns the results in emission order.
fn fire<A: Aggregator<i64>>(
    spec: impl Into<WindowSpec>,
    trigger: Option<Trigger>,
    aggregator: A,
    events: &[(i64, i64, &str, i64)],
) -> Vec<Fired<A::Output>> {
    let ctx = crate::test_support::operator_context("window");
    let factory = WindowFactory::<String, i64, A> {
        trigger,
        ..WindowFactory::plain(spec.into(), aggregator)
    };
    let mut op = factory.create(&ctx, MemoryBackend::new()).expect("create");
    let mut out = Output::default();
    for &(ts, watermark, key, value) in events {
        let value = Keyed {
            key: key.to_string(),
            value,
        };
        let record = Record {
            ts,
            watermark,
            value,
        };
        op.process(vec![record], &mut out).expect("process");
    }
    op.on_watermark(END, &mut out).expect("watermark");
    out.take()
        .into_iter()
        .map(|r| match r.value {
            WindowEvent::Result(w) => {
                assert_eq!(r.ts, w.window.end - 1, "results carry time end - 1");
                (
                    w.key,
                    w.window.start,
                    w.window.end,
                    w.value,
                    w.timing,
                    w.is_update,
                )
            }
            _ => panic!("only results: nothing is late or rejected"),
        })
        .collect()
}

fn row<V>(start: i64, end: i64, value: V, timing: Timing, is_update: bool) -> Fired<V> {
    ("k".to_string(), start, end, value, timing, is_update)
}

fn ms(n: u64) -> std::time::Duration {
    std::time::Duration::from_millis(n)
}

#[test]
fn reduce_gives_each_sliding_window_its_events_combined() {
    // Size 10, slide 5: 1 and 4 are in [-5, 5) and [0, 10), 7 in [0, 10) and [5, 15), 12
    // in [5, 15) and [10, 20). Max per window.
    let events = [(1, MIN, "k", 30), (4, MIN, "k", 10), (7, MIN, "k", 20)];
    let events = [&events[..], &[(12, MIN, "k", 5)]].concat();
    let max = Reduce::new(|a: i64, b: i64| a.max(b));
    let fired = fire(Sliding::of(ms(10), ms(5)), None, max, &events);
    let on_time = Timing::OnTime;
    assert_eq!(
        fired,
        vec![
            row(-5, 5, Some(30), on_time, false),
            row(0, 10, Some(30), on_time, false),
            row(5, 15, Some(20), on_time, false),
            row(10, 20, Some(5), on_time, false),
        ]
    );
}

#[test]
fn reduce_merging_panes_equals_reducing_every_event() {
    let sum = Reduce::new(|a: i64, b: i64| a + b);
    let mut all = sum.create();
    let (mut left, mut right) = (sum.create(), sum.create());
    for v in [3, 9, -2] {
        sum.add(&mut all, &v).expect("add");
        sum.add(&mut left, &v).expect("add");
    }
    sum.add(&mut right, &4).expect("add");
    sum.add(&mut all, &4).expect("add");
    sum.merge(&mut left, &right).expect("merge");
    sum.merge(&mut left, &sum.create())
        .expect("an empty side changes nothing");
    assert_eq!((left, all), (Some(14), Some(14)));
}

#[test]
fn a_process_function_sees_each_windows_elements_in_pane_then_arrival_order() {
    // Size 10, slide 5; 7 arrives after 12 but its pane [5, 10) comes first.
    let events = [
        (1, MIN, "k", 1),
        (4, MIN, "k", 2),
        (12, MIN, "k", 4),
        (7, MIN, "k", 3),
    ];
    let fired = fire(Sliding::of(ms(10), ms(5)), None, Collect, &events);
    let elements: Vec<(i64, Vec<i64>)> = fired.iter().map(|f| (f.1, f.3.clone())).collect();
    assert_eq!(
        elements,
        vec![
            (-5, vec![1, 2]),
            (0, vec![1, 2, 3]),
            (5, vec![3, 4]),
            (10, vec![4]),
        ]
    );
    // The function gets the window and the elements; what it pushes goes on.
    let median = |w: &WindowContext<'_, String>, elements: &[i64], out: &mut Vec<String>| {
        let mut sorted = elements.to_vec();
        sorted.sort();
        out.push(format!(
            "{} [{}, {}) {}",
            w.key,
            w.window.start,
            w.window.end,
            sorted[sorted.len() / 2]
        ));
    };
    let (key, start, end, value, timing, is_update) = fired[1].clone();
    let result = WindowResult {
        key,
        window: Window { start, end },
        value,
        is_update,
        timing,
    };
    let out = functions::apply(&median, &result.context(), &result.value[..]);
    assert_eq!(out, vec!["k [0, 10) 2".to_string()]);
}

#[test]
fn a_count_trigger_fires_every_n_events_then_on_time_as_an_update() {
    let events = [
        (1, MIN, "k", 0),
        (2, MIN, "k", 0),
        (3, MIN, "k", 0),
        (4, MIN, "k", 0),
        (5, MIN, "k", 0),
        (15, MIN, "j", 0),
    ];
    let fired = fire(
        Tumbling::of(ms(10)),
        Some(Trigger::count(2)),
        Count,
        &events,
    );
    let j = ("j".to_string(), 10, 20, 1, Timing::OnTime, false);
    assert_eq!(
        fired,
        vec![
            row(0, 10, 2, Timing::Early, false),
            row(0, 10, 4, Timing::Early, true),
            row(0, 10, 5, Timing::OnTime, true),
            j,
        ]
    );
}

#[test]
fn a_count_trigger_counts_an_event_in_each_sliding_window_it_is_in() {
    // Size 10, slide 5: 6 and 8 are both in [0, 10) and [5, 15); 11 only in [5, 15) and
    // [10, 20).
    let events = [(6, MIN, "k", 0), (8, MIN, "k", 0), (11, MIN, "k", 0)];
    let fired = fire(
        Sliding::of(ms(10), ms(5)),
        Some(Trigger::count(2)),
        Count,
        &events,
    );
    assert_eq!(
        fired,
        vec![
            row(5, 15, 2, Timing::Early, false),
            row(0, 10, 2, Timing::Early, false),
            row(0, 10, 2, Timing::OnTime, true),
            row(5, 15, 3, Timing::OnTime, true),
            row(10, 20, 1, Timing::OnTime, false),
        ]
    );
}

#[test]
fn a_periodic_trigger_fires_at_the_boundaries_the_watermark_passes_inside_the_window() {
    // Window [0, 100), every 10 ms. The watermark passes 0 (not inside the window) and 10
    // (one firing, the first event), 20 (two events), 30..60 at once (one firing, three
    // events), and then the end.
    let events = [
        (5, -1, "k", 0),
        (20, 12, "k", 0),
        (30, 25, "k", 0),
        (66, 65, "k", 0),
    ];
    let fired = fire(
        Tumbling::of(ms(100)),
        Some(Trigger::every(ms(10))),
        Count,
        &events,
    );
    assert_eq!(
        fired,
        vec![
            row(0, 100, 1, Timing::Early, false),
            row(0, 100, 2, Timing::Early, true),
            row(0, 100, 3, Timing::Early, true),
            row(0, 100, 4, Timing::OnTime, true),
        ]
    );
}

#[test]
fn a_periodic_trigger_leaves_windows_without_a_boundary_inside_to_fire_on_time() {
    // [0, 10) has no multiple of 50 inside it; [50, 60) neither (50 is its start).
    let events = [(1, MIN, "k", 0), (55, 2, "k", 0), (56, 51, "k", 0)];
    let fired = fire(
        Tumbling::of(ms(10)),
        Some(Trigger::every(ms(50))),
        Count,
        &events,
    );
    assert_eq!(
        fired,
        vec![
            row(0, 10, 1, Timing::OnTime, false),
            row(50, 60, 2, Timing::OnTime, false),
        ]
    );
}

#[test]
fn a_periodic_trigger_fires_a_window_again_only_if_it_got_events_since() {
    // Window [0, 100), every 10 ms. At 15 k fires with 1 event; at 25 with 2; at 35 k has
    // nothing new and does not fire, while j fires for the first time.
    let events = [
        (5, -1, "k", 0),
        (6, 15, "k", 0),
        (50, 25, "j", 0),
        (51, 35, "j", 0),
    ];
    let fired = fire(
        Tumbling::of(ms(100)),
        Some(Trigger::every(ms(10))),
        Count,
        &events,
    );
    let j = |value, timing, is_update| ("j".to_string(), 0, 100, value, timing, is_update);
    let (early, mut on_time): (Vec<_>, Vec<_>) =
        fired.into_iter().partition(|f| f.4 == Timing::Early);
    assert_eq!(
        early,
        vec![
            row(0, 100, 1, Timing::Early, false),
            row(0, 100, 2, Timing::Early, true),
            j(1, Timing::Early, false),
        ]
    );
    on_time.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        on_time,
        vec![
            j(2, Timing::OnTime, true),
            row(0, 100, 2, Timing::OnTime, true)
        ]
    );
}

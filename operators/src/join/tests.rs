//! The joins run in small jobs against pairs computed by brute force: interval (inner and
//! left outer), temporal, and window joins and co-groups (tumbling, sliding, session,
//! at parallelism 1 and 2, memory and RocksDB state), and the lateness of window joins.

use std::collections::BTreeSet;
use std::time::Duration;

use weir_engine::operator::OperatorFactory;
use weir_engine::{Job, Keyed, KeyedOperator, Output, Record, RunOptions, StateConfig, Watermarks};

use super::window::BothSides;
use super::*;
use crate::test_support::{sorted, Collect, VecSource};
use crate::window::{Session, Sliding, Tumbling};

/// `(ts, key, id)`.
type Ev = (i64, u32, u32);

/// Events every 0-19 ms, up to 50 ms out of order (the watermark delay is 100 ms, so
/// nothing is late), 5 keys.
fn events(n: u32, seed: u64) -> Vec<Ev> {
    let mut x = seed;
    let mut next = move || {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        x >> 33
    };
    let mut clock = 0;
    (0..n)
        .map(|id| {
            clock += (next() % 20) as i64;
            (clock - (next() % 50) as i64, (next() % 5) as u32, id)
        })
        .collect()
}

fn run<O: Data + Ord>(
    build: impl Fn(Stream<Ev>, Stream<Ev>) -> Stream<O>,
    parallelism: usize,
    rocksdb: bool,
) -> Vec<O> {
    let job = Job::new("join");
    let timed = |name: &str, evs: Vec<Ev>| {
        job.source(name, VecSource(evs))
            .timestamps(|e| e.0, Watermarks::bounded(Duration::from_millis(100)))
    };
    let (sink, seen) = Collect::new();
    build(
        timed("left", events(600, 1)),
        timed("right", events(500, 2)),
    )
    .sink("out", sink);
    let dir = tempfile::tempdir().expect("temp dir");
    let options = RunOptions {
        parallelism,
        state: if rocksdb {
            StateConfig::RocksDb {
                dir: dir.path().to_path_buf(),
                cache_entries: 2,
                statistics: false,
            }
        } else {
            StateConfig::Memory
        },
        ..RunOptions::default()
    };
    job.run(&options).expect("the job runs");
    sorted(&seen)
}

/// Every (parallelism, backend) the tests run under.
const SETUPS: [(usize, bool); 3] = [(1, false), (2, false), (2, true)];

fn interval_pairs(lower: i64, upper: i64) -> Vec<(Ev, Ev)> {
    let (lefts, rights) = (events(600, 1), events(500, 2));
    let mut pairs = Vec::new();
    for a in &lefts {
        for b in &rights {
            if a.1 == b.1 && a.0 + lower <= b.0 && b.0 <= a.0 + upper {
                pairs.push((*a, *b));
            }
        }
    }
    pairs.sort();
    pairs
}

#[test]
fn interval_join_pairs_exactly_the_elements_within_the_bounds() {
    let expected = interval_pairs(-30, 50);
    assert!(expected.len() > 100, "enough pairs to mean something");
    for (p, rocksdb) in SETUPS {
        let actual = run(
            |l, r| l.interval_join(r, |a: &Ev| a.1, |b: &Ev| b.1, -30, 50),
            p,
            rocksdb,
        );
        assert_eq!(actual, expected, "P={p} rocksdb={rocksdb}");
    }
}

#[test]
fn left_outer_interval_join_adds_each_unmatched_left_once() {
    let pairs = interval_pairs(0, 10);
    let matched: BTreeSet<u32> = pairs.iter().map(|(a, _)| a.2).collect();
    let mut expected: Vec<(Ev, Option<Ev>)> =
        pairs.into_iter().map(|(a, b)| (a, Some(b))).collect();
    let unmatched = events(600, 1)
        .into_iter()
        .filter(|a| !matched.contains(&a.2))
        .map(|a| (a, None));
    expected.extend(unmatched);
    expected.sort();
    assert!(expected.iter().any(|(_, b)| b.is_none()));
    for (p, rocksdb) in SETUPS {
        let actual = run(
            |l, r| l.interval_left_join(r, |a: &Ev| a.1, |b: &Ev| b.1, 0, 10),
            p,
            rocksdb,
        );
        assert_eq!(actual, expected, "P={p} rocksdb={rocksdb}");
    }
}

#[test]
fn temporal_join_uses_the_version_valid_at_each_event() {
    let changes = events(500, 2);
    // Every 7th change deletes its key.
    let version = |c: &Ev| (!c.2.is_multiple_of(7)).then_some(c.2);
    let mut expected: Vec<(Ev, Option<u32>)> = events(600, 1)
        .into_iter()
        .map(|e| {
            let valid = changes
                .iter()
                .filter(|c| c.1 == e.1 && c.0 <= e.0)
                // The latest by time; among equal times the last to arrive.
                .fold(None, |best: Option<&Ev>, c| match best {
                    Some(b) if b.0 > c.0 => Some(b),
                    _ => Some(c),
                });
            (e, valid.and_then(version))
        })
        .collect();
    expected.sort();
    assert!(expected.iter().any(|(_, v)| v.is_none()));
    assert!(expected.iter().filter(|(_, v)| v.is_some()).count() > 300);
    for (p, rocksdb) in SETUPS {
        let actual = run(
            |l, r| l.temporal_join(r, |e: &Ev| e.1, |c: &Ev| c.1, version),
            p,
            rocksdb,
        );
        assert_eq!(actual, expected, "P={p} rocksdb={rocksdb}");
    }
}

/// Pairs `(window start, a, b)` of the same key whose windows, given by `windows` for
/// the key's elements of both sides, contain both.
fn window_pairs(windows: impl Fn(&[i64]) -> Vec<(i64, i64)>) -> Vec<(i64, Ev, Ev)> {
    let (lefts, rights) = (events(600, 1), events(500, 2));
    let mut expected = Vec::new();
    for key in 0..5 {
        let times: Vec<i64> = lefts
            .iter()
            .chain(&rights)
            .filter(|e| e.1 == key)
            .map(|e| e.0)
            .collect();
        for (start, end) in windows(&times) {
            let inside = |e: &&Ev| e.1 == key && start <= e.0 && e.0 < end;
            for a in lefts.iter().filter(inside) {
                for b in rights.iter().filter(inside) {
                    expected.push((start, *a, *b));
                }
            }
        }
    }
    expected.sort();
    expected
}

fn run_window_join(spec: WindowSpec, p: usize, rocksdb: bool) -> Vec<(i64, Ev, Ev)> {
    run(
        |l, r| {
            l.window_join(r, |a: &Ev| a.1, |b: &Ev| b.1, spec)
                .map(|pair| (pair.window.start, pair.left, pair.right))
        },
        p,
        rocksdb,
    )
}

#[test]
fn tumbling_window_join_pairs_the_elements_of_a_key_in_the_same_window() {
    let expected = window_pairs(|times| {
        let starts: BTreeSet<i64> = times.iter().map(|t| t - t.rem_euclid(100)).collect();
        starts.into_iter().map(|s| (s, s + 100)).collect()
    });
    assert!(expected.len() > 200, "{} pairs", expected.len());
    for (p, rocksdb) in SETUPS {
        let spec = Tumbling::of(Duration::from_millis(100)).into();
        assert_eq!(
            run_window_join(spec, p, rocksdb),
            expected,
            "P={p} rocksdb={rocksdb}"
        );
    }
}

#[test]
fn sliding_window_join_pairs_per_window_each_window_a_pair_is_in() {
    // Size 100, slide 40: windows start at multiples of 40 (not a divisor of 100, so
    // panes are 20 ms); a pair is emitted once for every window holding both elements.
    let expected = window_pairs(|times| {
        let mut windows = BTreeSet::new();
        for t in times {
            let mut s = t - t.rem_euclid(40);
            while s + 100 > *t {
                windows.insert((s, s + 100));
                s -= 40;
            }
        }
        windows.into_iter().collect()
    });
    let tumbling_pairs = window_pairs(|times| {
        let starts: BTreeSet<i64> = times.iter().map(|t| t - t.rem_euclid(100)).collect();
        starts.into_iter().map(|s| (s, s + 100)).collect()
    });
    assert!(expected.len() > 2 * tumbling_pairs.len());
    for (p, rocksdb) in SETUPS {
        let spec = Sliding::of(Duration::from_millis(100), Duration::from_millis(40)).into();
        assert_eq!(
            run_window_join(spec, p, rocksdb),
            expected,
            "P={p} rocksdb={rocksdb}"
        );
    }
}

#[test]
fn session_window_join_forms_sessions_from_both_sides() {
    // Gap 15: a key's elements of either side closer than (or exactly) 15 ms apart are
    // in one session [first, last + 15).
    let expected = window_pairs(|times| {
        let mut sorted = times.to_vec();
        sorted.sort();
        let mut sessions: Vec<(i64, i64)> = Vec::new();
        for t in sorted {
            match sessions.last_mut() {
                Some(last) if t <= last.1 => last.1 = last.1.max(t + 15),
                _ => sessions.push((t, t + 15)),
            }
        }
        sessions
    });
    assert!(expected.len() > 200, "{} pairs", expected.len());
    for (p, rocksdb) in SETUPS {
        let spec = Session::with_gap(Duration::from_millis(15)).into();
        assert_eq!(
            run_window_join(spec, p, rocksdb),
            expected,
            "P={p} rocksdb={rocksdb}"
        );
    }
}

/// A fired window: `(start, end, left ids, right ids)`.
type Fired = (i64, i64, Vec<u32>, Vec<u32>);

/// Runs a cogroup of `lefts` and `rights` (each its own source, in time order, so
/// nothing is late however the inputs interleave) at P = 1; returns `(start, end, left
/// ids, right ids)` per fired window.
fn cogroup_once(spec: WindowSpec, lefts: Vec<Ev>, rights: Vec<Ev>) -> Vec<Fired> {
    let job = Job::new("cogroup");
    let timed = |name: &str, evs: Vec<Ev>| {
        job.source(name, VecSource(evs))
            .timestamps(|e| e.0, Watermarks::bounded(Duration::from_millis(10)))
    };
    let (sink, seen) = Collect::new();
    timed("left", lefts)
        .window_cogroup(timed("right", rights), |a: &Ev| a.1, |b: &Ev| b.1, spec)
        .map(|g| {
            // The order within a side is not specified (merged sessions): sort.
            let ids = |side: &[Ev]| {
                let mut ids: Vec<u32> = side.iter().map(|e| e.2).collect();
                ids.sort();
                ids
            };
            (g.window.start, g.window.end, ids(&g.left), ids(&g.right))
        })
        .sink("out", sink);
    job.run(&RunOptions::default()).expect("the job runs");
    sorted(&seen)
}

#[test]
fn cogroup_hands_over_one_sided_windows_and_sessions_span_both_sides() {
    // Left 1 and right 2 share [0,100); left 3 is alone in [200,300) (an empty right
    // side, so a join would emit nothing for it).
    let tumbling = Tumbling::of(Duration::from_millis(100)).into();
    let lefts = vec![(10, 0, 1), (250, 0, 3), (300, 0, 6)];
    let rights = vec![(20, 0, 2), (400, 0, 5)];
    assert_eq!(
        cogroup_once(tumbling, lefts, rights),
        vec![
            (0, 100, vec![1], vec![2]),
            (200, 300, vec![3], vec![]),
            (300, 400, vec![6], vec![]),
            (400, 500, vec![], vec![5]),
        ]
    );
    // A session joins across sides: left 1 at 0 and left 3 at 40 (gap 25) are bridged
    // by right 2 at 20, so all three share one session [0, 65).
    let session = Session::with_gap(Duration::from_millis(25)).into();
    assert_eq!(
        cogroup_once(session, vec![(0, 0, 1), (40, 0, 3)], vec![(20, 0, 2)]),
        vec![(0, 65, vec![1, 3], vec![2])]
    );
    // Without the bridge they are two sessions, each one-sided.
    assert_eq!(
        cogroup_once(session, vec![(0, 0, 1), (40, 0, 3)], vec![]),
        vec![(0, 25, vec![1], vec![]), (40, 65, vec![3], vec![])]
    );
}

/// Feeds `(ts, watermark before it, side)` to one window-join operator instance and
/// returns `(start, end, left ids, right ids)` per fired window and the late count.
fn join_operator(spec: WindowSpec, input: &[(i64, i64, Side<u32, u32>)]) -> (Vec<Fired>, u64) {
    use weir_engine::MemoryBackend;
    let ctx = crate::test_support::operator_context("window");
    let factory =
        crate::window::WindowFactory::<u8, Side<u32, u32>, _>::plain(spec, BothSides(PhantomData));
    let mut op = factory.create(&ctx, MemoryBackend::new()).expect("create");
    let mut out = Output::default();
    for (ts, watermark, side) in input {
        let value = Keyed {
            key: 0,
            value: side.clone(),
        };
        let record = Record {
            ts: *ts,
            watermark: *watermark,
            value,
        };
        op.process(vec![record], &mut out).expect("process");
    }
    op.on_watermark(i64::MAX, &mut out).expect("watermark");
    let mut rows: Vec<_> = out
        .take()
        .into_iter()
        .filter_map(|r| match r.value {
            crate::window::WindowEvent::Result(w) => {
                let (l, r2) = w.value;
                Some((w.window.start, w.window.end, l, r2))
            }
            crate::window::WindowEvent::Late(_) | crate::window::WindowEvent::Rejected(_) => None,
        })
        .collect();
    rows.sort();
    (rows, ctx.metrics.late_events.get())
}

#[test]
fn window_join_drops_and_counts_elements_of_fired_windows() {
    const MIN: i64 = i64::MIN;
    // Watermark 150 fired [0,100): right 4 at ts 5 is late; right 7 at 150 is not.
    let (rows, late) = join_operator(
        Tumbling::of(Duration::from_millis(100)).into(),
        &[
            (10, MIN, Side::Left(1)),
            (20, MIN, Side::Right(2)),
            (400, 0, Side::Right(5)),
            (5, 150, Side::Right(4)),
            (150, 150, Side::Right(7)),
        ],
    );
    assert_eq!(
        rows,
        vec![
            (0, 100, vec![1], vec![2]),
            (100, 200, vec![], vec![7]),
            (400, 500, vec![], vec![5]),
        ]
    );
    assert_eq!(late, 1);
    // Sliding 100/50: at watermark 120, ts 60 is late for [0,100) but still joins
    // [50,150); ts 40 (windows [-50,50) and [0,100), both fired) is late.
    let (rows, late) = join_operator(
        Sliding::of(Duration::from_millis(100), Duration::from_millis(50)).into(),
        &[
            (70, MIN, Side::Left(1)),
            (60, 120, Side::Right(2)),
            (40, 120, Side::Right(3)),
        ],
    );
    assert_eq!(
        rows,
        vec![(0, 100, vec![1], vec![]), (50, 150, vec![1], vec![2])]
    );
    assert_eq!(late, 1);
    // Session gap 10 at watermark 30: right 2 at 15 touches the open session of left 1
    // at 25 ([25,35)), so it joins it; right 3 at 2 ([2,12), due) touches nothing open.
    let (rows, late) = join_operator(
        Session::with_gap(Duration::from_millis(10)).into(),
        &[
            (25, MIN, Side::Left(1)),
            (15, 30, Side::Right(2)),
            (2, 30, Side::Right(3)),
        ],
    );
    assert_eq!(rows, vec![(15, 35, vec![1], vec![2])]);
    assert_eq!(late, 1);
}

//! The operators of the joins/CEP/top-N issue through the public job API, in-process,
//! each against a reference computed here by brute force (nested loops over the input):
//! at P = 1 and P = 2 in memory, at P = 2 on RocksDB, and crashed half-way then resumed
//! from a checkpoint at another parallelism (the committed output must still equal the
//! reference, row for row: the operator's state survived the checkpoint).
//!
//! Inputs are two JSON-lines files (`left`, `right`), each up to 400 ms out of order with a
//! watermark delay of 1 s, so nothing is late however the two inputs interleave.

// Helpers here set up fixtures; a failing setup should panic the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::checkpointed::{
    committed_rows, complete_checkpoints, in_progress_files, run_options, sorted_lines, Flaky,
};
use common::keyed_events::{events, Ev};
use serde_json::{json, Value};
use weir_engine::RunOptions;
use weir_jobs::prelude::*;

/// A job under test: the two inputs in, JSON rows out.
type Build = fn(Stream<Ev>, Stream<Ev>) -> Stream<Value>;

struct Setup {
    dir: tempfile::TempDir,
    inputs: [PathBuf; 2],
    left: Vec<Ev>,
    right: Vec<Ev>,
}

impl Setup {
    fn new(left: Vec<Ev>, right: Vec<Ev>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let inputs = [
            dir.path().join("left.jsonl"),
            dir.path().join("right.jsonl"),
        ];
        for (path, evs) in inputs.iter().zip([&left, &right]) {
            let text: String = evs
                .iter()
                .map(|e| serde_json::to_string(e).unwrap() + "\n")
                .collect();
            std::fs::write(path, text).unwrap();
        }
        Setup {
            dir,
            inputs,
            left,
            right,
        }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `build` over the two files; `left` crashes after `fail_after` events if given.
    fn job(&self, build: Build, output: &Path, fail_after: Option<u64>) -> Job {
        let job = Job::new("operators");
        let source = |name: &str, path: &Path, fail_after| {
            let inner = FileSource::new(path, Format::JsonLines, Json::<Ev>::default());
            let root = self.state_dir().join("operators/checkpoints");
            job.source(
                name,
                Flaky::new(inner, fail_after).after_a_checkpoint_in(root),
            )
            .timestamps(|e: &Ev| e.ts, Watermarks::bounded(Duration::from_secs(1)))
        };
        let left = source("left", &self.inputs[0], fail_after);
        let right = source("right", &self.inputs[1], None);
        build(left, right).sink("out", FileSink::new(output));
        job
    }

    fn options(&self, parallelism: usize, rocksdb: bool, checkpoints: bool) -> RunOptions {
        run_options(
            &self.state_dir(),
            "operators",
            parallelism,
            rocksdb.then_some(64),
            checkpoints.then_some(Duration::from_millis(2)),
        )
    }

    /// Runs `build` every way and compares each output with `expected`.
    fn check(&self, build: Build, expected: &[Value]) {
        let mut expected: Vec<String> = expected.iter().map(Value::to_string).collect();
        expected.sort();
        assert!(expected.len() > 50, "too few rows to mean anything");
        for (p, rocksdb) in [(1, false), (2, false), (2, true)] {
            let out = self.dir.path().join(format!("out-{p}-{rocksdb}.jsonl"));
            self.job(build, &out, None)
                .run(&self.options(p, rocksdb, false))
                .unwrap();
            let rows = sorted_lines(&std::fs::read_to_string(&out).unwrap());
            assert!(
                rows == expected,
                "P={p} rocksdb={rocksdb}: {}",
                diff(&rows, &expected)
            );
        }
        // Crash at P = 2 two thirds through the left input, resume at P = 1.
        let out = self.dir.path().join("out-checkpointed");
        let crashed = self
            .job(build, &out, Some(self.left.len() as u64 * 2 / 3))
            .run(&self.options(2, true, true));
        let err = format!("{:#}", anyhow::Error::from(crashed.unwrap_err()));
        assert!(err.contains("simulated crash"), "{err}");
        let root = self.state_dir().join("operators/checkpoints");
        assert!(
            complete_checkpoints(&root) > 0,
            "the crash came before any checkpoint: the test would prove nothing"
        );
        let resumed = self
            .job(build, &out, None)
            .run(&self.options(1, true, true))
            .unwrap();
        let total = (self.left.len() + self.right.len()) as u64;
        assert!(
            resumed.events_read < total,
            "the second run read all {} events: it started over instead of resuming",
            resumed.events_read
        );
        assert_eq!(in_progress_files(&out), Vec::<String>::new());
        let rows = committed_rows(&out);
        assert!(
            rows == expected,
            "after restore: {}",
            diff(&rows, &expected)
        );
    }
}

/// A short description of how two sorted row lists differ.
fn diff(actual: &[String], expected: &[String]) -> String {
    let a: BTreeSet<&String> = actual.iter().collect();
    let e: BTreeSet<&String> = expected.iter().collect();
    let missing: Vec<_> = e.difference(&a).take(3).collect();
    let extra: Vec<_> = a.difference(&e).take(3).collect();
    format!(
        "{} rows, expected {}; missing e.g. {missing:?}; unexpected e.g. {extra:?}",
        actual.len(),
        expected.len()
    )
}

// ---------------------------------------------------------------- window joins

/// Pairs `{start, a, b}` of the same key in every window `windows` gives for the key's
/// event times (both sides).
fn window_pairs(
    left: &[Ev],
    right: &[Ev],
    windows: impl Fn(&[i64]) -> Vec<(i64, i64)>,
) -> Vec<Value> {
    let keys: BTreeSet<&str> = left.iter().chain(right).map(|e| e.key.as_str()).collect();
    let mut rows = Vec::new();
    for key in keys {
        let times: Vec<i64> = left
            .iter()
            .chain(right)
            .filter(|e| e.key == key)
            .map(|e| e.ts)
            .collect();
        for (start, end) in windows(&times) {
            let inside = |e: &&Ev| e.key == key && start <= e.ts && e.ts < end;
            for a in left.iter().filter(inside) {
                for b in right.iter().filter(inside) {
                    rows.push(json!({"start": start, "end": end, "a": a.id, "b": b.id}));
                }
            }
        }
    }
    rows
}

fn pair_row(p: WindowPair<Ev, Ev>) -> Value {
    json!({"start": p.window.start, "end": p.window.end, "a": p.left.id, "b": p.right.id})
}

#[test]
fn sliding_window_join_matches_nested_loops_and_survives_a_crash() {
    let setup = Setup::new(events(8000, 40, 1), events(6000, 40, 2));
    // Size 1 s, slide 400 ms: the windows containing t start at the multiples of 400 in
    // (t - 1000, t].
    let expected = window_pairs(&setup.left, &setup.right, |times| {
        let mut windows = BTreeSet::new();
        for &t in times {
            let mut s = t - t.rem_euclid(400);
            while s + 1000 > t {
                windows.insert((s, s + 1000));
                s -= 400;
            }
        }
        windows.into_iter().collect()
    });
    setup.check(
        |l, r| {
            l.window_join(
                r,
                |a: &Ev| a.key.clone(),
                |b: &Ev| b.key.clone(),
                Sliding::of(Duration::from_secs(1), Duration::from_millis(400)),
            )
            .map(pair_row)
        },
        &expected,
    );
}

#[test]
fn session_window_join_matches_nested_loops_and_survives_a_crash() {
    let setup = Setup::new(events(8000, 40, 3), events(6000, 40, 4));
    // Gap 300 ms: sorted times of a key (both sides) closer than or exactly 300 ms apart
    // share a session [first, last + 300).
    let expected = window_pairs(&setup.left, &setup.right, |times| {
        let mut sorted = times.to_vec();
        sorted.sort();
        let mut sessions: Vec<(i64, i64)> = Vec::new();
        for t in sorted {
            match sessions.last_mut() {
                Some(last) if t <= last.1 => last.1 = last.1.max(t + 300),
                _ => sessions.push((t, t + 300)),
            }
        }
        sessions
    });
    setup.check(
        |l, r| {
            l.window_join(
                r,
                |a: &Ev| a.key.clone(),
                |b: &Ev| b.key.clone(),
                Session::with_gap(Duration::from_millis(300)),
            )
            .map(pair_row)
        },
        &expected,
    );
}

// ---------------------------------------------------------------- CEP

/// The kind of an event for the CEP test: 0 starts, 1 is the looped stage, 2 ends, 3 is
/// noise.
fn kind(e: &Ev) -> u64 {
    e.id % 4
}

/// `x -> y{2} -> z within 2 s` with skip-till-next-match, decided per start event: the
/// first two `y` after it (event time order, ties in input order), then the first `z`
/// after those; a match if all came less than 2 s after `x`, else a timeout naming the
/// first stage that did not.
fn cep_reference(events: &[Ev]) -> Vec<Value> {
    let keys: BTreeSet<&str> = events.iter().map(|e| e.key.as_str()).collect();
    let mut rows = Vec::new();
    for key in keys {
        let mut mine: Vec<&Ev> = events.iter().filter(|e| e.key == key).collect();
        mine.sort_by_key(|e| e.ts); // stable: ties keep input order
        for (i, x) in mine.iter().enumerate().filter(|(_, e)| kind(e) == 0) {
            let deadline = x.ts + 2000;
            let mut taken = vec![x.id];
            let mut missing = None;
            let mut rest = mine[i + 1..].iter().filter(|e| e.ts < deadline);
            for (stage, wanted) in [("y", 1), ("y", 1), ("z", 2)] {
                match rest.find(|e| kind(e) == wanted) {
                    Some(e) => taken.push(e.id),
                    None => {
                        missing = Some(stage);
                        break;
                    }
                }
            }
            rows.push(match missing {
                None => json!({"match": taken}),
                Some(stage) => json!({"timeout": taken, "missing": stage}),
            });
        }
    }
    rows
}

#[test]
fn cep_with_a_counted_loop_and_timeouts_matches_a_reference_and_survives_a_crash() {
    let setup = Setup::new(events(8000, 40, 5), events(10, 1, 6));
    let expected = cep_reference(&setup.left);
    assert!(expected.iter().any(|r| r.get("match").is_some()));
    assert!(expected.iter().any(|r| r.get("timeout").is_some()));
    setup.check(
        |l, r| {
            let pattern = Pattern::begin("x")
                .where_(|e: &Ev| kind(e) == 0)
                .followed_by("y")
                .where_(|e: &Ev| kind(e) == 1)
                .times(2)
                .followed_by("z")
                .where_(|e: &Ev| kind(e) == 2)
                .within(Duration::from_secs(2));
            // Only the left input is matched (the right one joins the union empty).
            let (matches, timeouts) = l
                .union(r.filter(|_| false))
                .key_by(|e: &Ev| e.key.clone())
                .pattern_with_timeouts(pattern);
            let ids = |events: Vec<(String, i64, Ev)>| -> Vec<u64> {
                events.into_iter().map(|(_, _, e)| e.id).collect()
            };
            matches.map(move |m| json!({"match": ids(m.events)})).union(
                timeouts.map(move |t| json!({"timeout": ids(t.events), "missing": t.missing})),
            )
        },
        &expected,
    );
}

/// "3 withdrawals within 5 s" (kind 1 here) with skip past last event, per key: the first
/// three withdrawals in event-time order (ties in input order) that span less than 5 s, then
/// the first three after those, and so on; a withdrawal is in one alert at most.
fn withdrawal_alerts(events: &[Ev]) -> Vec<Value> {
    let keys: BTreeSet<&str> = events.iter().map(|e| e.key.as_str()).collect();
    let mut rows = Vec::new();
    for key in keys {
        let mut mine: Vec<&Ev> = events
            .iter()
            .filter(|e| e.key == key && kind(e) == 1)
            .collect();
        mine.sort_by_key(|e| e.ts); // stable: ties keep input order
        let mut i = 0;
        while i + 2 < mine.len() {
            if mine[i + 2].ts - mine[i].ts < 5000 {
                rows.push(json!({"alert": [mine[i].id, mine[i + 1].id, mine[i + 2].id]}));
                i += 3;
            } else {
                i += 1;
            }
        }
    }
    rows
}

#[test]
fn cep_skip_past_last_event_alerts_once_per_withdrawal_and_survives_a_crash() {
    let setup = Setup::new(events(8000, 40, 9), events(10, 1, 10));
    let expected = withdrawal_alerts(&setup.left);
    let mut ids: Vec<u64> = expected
        .iter()
        .flat_map(|r| r["alert"].as_array().unwrap().iter())
        .map(|id| id.as_u64().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3 * expected.len(), "a withdrawal in two alerts");
    setup.check(
        |l, r| {
            let pattern = Pattern::begin("withdrawal")
                .where_(|e: &Ev| kind(e) == 1)
                .times(3)
                .within(Duration::from_secs(5))
                .skip(AfterMatchSkip::SkipPastLastEvent);
            l.union(r.filter(|_| false))
                .key_by(|e: &Ev| e.key.clone())
                .pattern(pattern)
                .map(|m| {
                    let ids: Vec<u64> = m.events.iter().map(|(_, _, e)| e.id).collect();
                    json!({ "alert": ids })
                })
        },
        &expected,
    );
}

// ---------------------------------------------------------------- continuous top-N

/// The value an event adds to its key's running sum: -3..=3, so sums also fall.
fn points(e: &Ev) -> i64 {
    (e.id % 7) as i64 - 3
}

/// The changelog of the top 3 keys by running sum, by brute force: after each distinct
/// event time, every key's sum from scratch, all keys sorted, places compared.
fn top_n_reference(events: &[Ev]) -> Vec<Value> {
    let mut times: Vec<i64> = events.iter().map(|e| e.ts).collect();
    times.sort();
    times.dedup();
    let mut rows = Vec::new();
    let mut before: Vec<(String, i64)> = Vec::new();
    for t in times {
        let mut sums: std::collections::BTreeMap<&str, i64> = Default::default();
        for e in events.iter().filter(|e| e.ts <= t) {
            *sums.entry(&e.key).or_default() += points(e);
        }
        let mut ranking: Vec<(String, i64)> =
            sums.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        ranking.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        ranking.truncate(3);
        for (place, now) in ranking.iter().enumerate() {
            let row = |op: &str, (key, sum): &(String, i64)| json!({"op": op, "rank": place + 1, "key": key, "sum": sum, "at": t});
            match before.get(place) {
                None => rows.push(row("+I", now)),
                Some(old) if old == now => {}
                Some(old) => {
                    rows.push(row("-U", old));
                    rows.push(row("+U", now));
                }
            }
        }
        before = ranking;
    }
    rows
}

#[test]
fn continuous_top_n_changelog_matches_brute_force_and_survives_a_crash() {
    let setup = Setup::new(events(8000, 40, 7), events(10, 1, 8));
    let expected = top_n_reference(&setup.left);
    assert!(expected.iter().any(|r| r["op"] == "-U"));
    setup.check(
        |l, r| {
            l.union(r.filter(|_| false))
                .key_by(|e: &Ev| e.key.clone())
                .continuous_top_n(3, Sum::of(points), |sum: &i64| *sum)
                .map(|c| {
                    let op = serde_json::to_value(c.op).unwrap();
                    json!({"op": op, "rank": c.rank, "key": c.key, "sum": c.value, "at": c.at})
                })
        },
        &expected,
    );
}

// ---------------------------------------------------------------- map and list state

/// Per key: events per kind (map state), the last three ids (list state), events since the
/// key's state was last cleared (value state); a kind-3 event removes kind 0 from the map,
/// and an id divisible by 97 clears the key's whole state after its row.
#[derive(Clone)]
struct KindStats;

const KIND_COUNTS: MapStateDescriptor<u64, u64> = MapStateDescriptor::new("kind-counts");
const RECENT: ListStateDescriptor<u64> = ListStateDescriptor::new("recent-ids");

impl TimerFunction<String, Ev> for KindStats {
    type State = u64;
    type Out = Value;

    fn on_event(
        &self,
        key: &String,
        seen: &mut u64,
        _: i64,
        e: &Ev,
        ctx: &mut TimerContext<Value>,
    ) {
        *seen += 1;
        // A state error fails the job when the call returns, whatever is done with it here.
        let Ok(row) = kind_stats_row(key, *seen, e, ctx) else {
            return;
        };
        ctx.emit(row);
        if e.id.is_multiple_of(97) {
            ctx.clear_state();
        }
    }

    fn on_timer(&self, _: &String, _: &mut u64, _: i64, _: &mut TimerContext<Value>) {}

    fn declare_state<D: DeclareState<String>>(&self, states: &mut D) {
        states.map(&KIND_COUNTS);
        states.list(&RECENT);
    }
}

fn kind_stats_row(
    key: &str,
    seen: u64,
    e: &Ev,
    ctx: &mut TimerContext<Value>,
) -> Result<Value, weir_engine::state::StateError> {
    let mut counts = ctx.map_state(&KIND_COUNTS)?;
    let count = counts.get(&kind(e))?.unwrap_or(0) + 1;
    counts.put(kind(e), count)?;
    if kind(e) == 3 {
        counts.remove(&0)?;
    }
    let mut entries = counts.entries()?.collect::<Result<Vec<_>, _>>()?;
    entries.sort();
    let mut recent = ctx.list_state(&RECENT)?;
    recent.add(e.id)?;
    let mut ids = recent.get()?;
    if ids.len() > 3 {
        ids.remove(0);
        recent.update(ids.clone())?;
    }
    Ok(json!({"key": key, "id": e.id, "seen": seen, "counts": entries, "recent": ids}))
}

/// `KindStats` computed over the events of each key in input order.
fn kind_stats_reference(events: &[Ev]) -> Vec<Value> {
    use std::collections::{BTreeMap, HashMap};
    #[derive(Default)]
    struct Key {
        seen: u64,
        counts: BTreeMap<u64, u64>,
        recent: Vec<u64>,
    }
    let mut keys: HashMap<&str, Key> = HashMap::new();
    let mut rows = Vec::new();
    for e in events {
        let state = keys.entry(&e.key).or_default();
        state.seen += 1;
        *state.counts.entry(kind(e)).or_default() += 1;
        if kind(e) == 3 {
            state.counts.remove(&0);
        }
        state.recent.push(e.id);
        if state.recent.len() > 3 {
            state.recent.remove(0);
        }
        let counts: Vec<(u64, u64)> = state.counts.iter().map(|(k, v)| (*k, *v)).collect();
        rows.push(
            json!({"key": e.key, "id": e.id, "seen": state.seen, "counts": counts,
            "recent": state.recent}),
        );
        if e.id.is_multiple_of(97) {
            keys.remove(e.key.as_str());
        }
    }
    rows
}

#[test]
fn map_and_list_state_of_a_process_function_match_a_reference_and_survive_a_crash() {
    let setup = Setup::new(events(6000, 40, 9), events(10, 1, 10));
    let expected = kind_stats_reference(&setup.left);
    setup.check(
        |l, r| {
            l.union(r.filter(|_| false))
                .key_by(|e: &Ev| e.key.clone())
                .process_with_timers("kind-stats", KindStats)
        },
        &expected,
    );
}

// ---------------------------------------------------------------- the benchmark job

/// `weir run operators` (the benchmark job) through the binary: its queries compute what
/// their generator implies.
#[test]
fn the_operators_benchmark_job_computes_what_its_generator_implies() {
    let dir = tempfile::tempdir().unwrap();
    let run = |query: &str, events: &str| -> Vec<Value> {
        let out = dir.path().join(format!("{query}.jsonl"));
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["run", "operators", "--query", query, "--events", events])
            .args(["--state", "memory", "--metrics-addr", "off", "--output"])
            .arg(&out)
            .status()
            .unwrap();
        assert!(status.success(), "{query}");
        let text = std::fs::read_to_string(&out).unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    // Every id twice: each passes once.
    let ids: Vec<u64> = run("dedup", "1000")
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, (0..500).collect::<Vec<_>>());
    // 3000 saga steps over 1000 keys, each a -> b -> c within 2 s: 1000 matches of 3.
    let matches = run("cep", "3000");
    assert_eq!(matches.len(), 1000);
    assert!(matches.iter().all(|m| m == &json!(3)));
}

//! The window functions and triggers through the public job API (`reduce`, `process`,
//! `aggregate_with`, `Trigger::count`, `Trigger::every`): each against a reference computed
//! here by brute force over the input, at P = 1 and P = 2 in memory and at P = 2 on
//! RocksDB; and a process function with a periodic trigger killed with SIGKILL after some
//! checkpoints and run again, whose committed output must be the uninterrupted run's, row
//! for row (the elements buffered in window state and the trigger's state survived).
//!
//! The input is one JSON-lines file, up to 400 ms out of order with a watermark delay of
//! 1 s, so no event is late.

// Helpers here set up fixtures; a failing setup should panic the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::checkpointed::{committed_rows, run_options, sorted_lines};
use common::keyed_events::{events, Ev};
use serde_json::{json, Value};
use weir_engine::{BoxError, Source, SourceStatus};
use weir_jobs::prelude::*;

/// A job under test: the input in, JSON rows out.
type Build = fn(Stream<Ev>) -> Stream<Value>;

/// Hands on the input a few events at a time, slowly enough for a test to kill the job
/// after some checkpoints.
struct Slow<S>(S);

impl<S: Source> Source for Slow<S> {
    type Item = S::Item;
    fn poll_batch(&mut self, out: &mut Vec<S::Item>, max: usize) -> Result<SourceStatus, BoxError> {
        std::thread::sleep(Duration::from_millis(2));
        self.0.poll_batch(out, max.min(8))
    }
    fn describe(&self) -> String {
        self.0.describe()
    }
    fn position(&mut self) -> Result<Option<weir_engine::ConnectorState>, BoxError> {
        self.0.position()
    }
    fn seek(&mut self, position: &weir_engine::ConnectorState) -> Result<(), BoxError> {
        self.0.seek(position)
    }
}

fn write_input(path: &Path, events: &[Ev]) {
    let text: String = events
        .iter()
        .map(|e| serde_json::to_string(e).unwrap() + "\n")
        .collect();
    std::fs::write(path, text).unwrap();
}

/// `build` over the file `input`, into `output`; slowly if `slow`.
fn job(build: Build, input: &Path, output: &Path, slow: bool) -> Job {
    let job = Job::new("windows");
    let file = FileSource::new(input, Format::JsonLines, Json::<Ev>::default());
    let source = if slow {
        job.source("input", Slow(file))
    } else {
        job.source("input", file)
    };
    let events = source.timestamps(|e: &Ev| e.ts, Watermarks::bounded(Duration::from_secs(1)));
    build(events).sink("out", FileSink::new(output));
    job
}

/// Runs `build` over `events` at P = 1 and P = 2 in memory and at P = 2 on RocksDB;
/// returns the sorted rows of each run.
fn run_every_way(build: Build, events: &[Ev]) -> Vec<(String, Vec<String>)> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.jsonl");
    write_input(&input, events);
    let mut runs = Vec::new();
    for (p, rocksdb) in [(1, false), (2, false), (2, true)] {
        let out = dir.path().join(format!("out-{p}-{rocksdb}.jsonl"));
        let state = dir.path().join(format!("state-{p}"));
        job(build, &input, &out, false)
            .run(&run_options(
                &state,
                "windows",
                p,
                rocksdb.then_some(64),
                None,
            ))
            .unwrap();
        let rows = sorted_lines(&std::fs::read_to_string(&out).unwrap());
        runs.push((format!("P={p} rocksdb={rocksdb}"), rows));
    }
    runs
}

/// Asserts every run gave `expected`.
fn check(build: Build, events: &[Ev], expected: &[Value]) {
    let mut expected: Vec<String> = expected.iter().map(Value::to_string).collect();
    expected.sort();
    assert!(expected.len() > 50, "too few rows to mean anything");
    for (run, rows) in run_every_way(build, events) {
        assert!(rows == expected, "{run}: {}", diff(&rows, &expected));
    }
}

fn diff(actual: &[String], expected: &[String]) -> String {
    let missing: Vec<_> = expected
        .iter()
        .filter(|r| !actual.contains(r))
        .take(3)
        .collect();
    let extra: Vec<_> = actual
        .iter()
        .filter(|r| !expected.contains(r))
        .take(3)
        .collect();
    format!(
        "{} rows, expected {}; missing e.g. {missing:?}; unexpected e.g. {extra:?}",
        actual.len(),
        expected.len()
    )
}

/// The events of each key and window `[start, start + size)` (windows every `slide`),
/// by `(key, start)`, in input order.
fn windows(events: &[Ev], size: i64, slide: i64) -> BTreeMap<(String, i64), Vec<&Ev>> {
    let mut windows: BTreeMap<(String, i64), Vec<&Ev>> = BTreeMap::new();
    for e in events {
        let mut start = e.ts - e.ts.rem_euclid(slide);
        while start + size > e.ts {
            windows.entry((e.key.clone(), start)).or_default().push(e);
            start -= slide;
        }
    }
    windows
}

fn timing(t: Timing) -> &'static str {
    match t {
        Timing::Early => "early",
        Timing::OnTime => "on_time",
        Timing::Late => "late",
    }
}

// ---------------------------------------------------------------- functions

/// Sliding windows of 1 s every 400 ms.
fn sliding() -> Sliding {
    Sliding::of(Duration::from_secs(1), Duration::from_millis(400))
}

fn process_ids(events: Stream<Ev>) -> Stream<Value> {
    events
        .key_by(|e: &Ev| e.key.clone())
        .window(sliding())
        .process(
            |w: &WindowContext<'_, String>, elements: &[Ev], out: &mut Vec<Value>| {
                let mut ids: Vec<u64> = elements.iter().map(|e| e.id).collect();
                ids.sort();
                out.push(
                    json!({"key": w.key, "start": w.window.start, "end": w.window.end,
                "ids": ids, "timing": timing(w.timing)}),
                );
            },
        )
}

#[test]
fn a_process_function_gets_every_element_of_each_sliding_window() {
    let events = events(5000, 30, 11);
    let expected: Vec<Value> = windows(&events, 1000, 400)
        .into_iter()
        .map(|((key, start), evs)| {
            let mut ids: Vec<u64> = evs.iter().map(|e| e.id).collect();
            ids.sort();
            json!({"key": key, "start": start, "end": start + 1000, "ids": ids,
                "timing": "on_time"})
        })
        .collect();
    check(process_ids, &events, &expected);
}

#[test]
fn reduce_and_aggregate_with_give_each_window_its_result() {
    let events = events(5000, 30, 12);
    let mut expected = Vec::new();
    for ((key, start), evs) in windows(&events, 1000, 400) {
        let max = evs.iter().map(|e| e.id).max().unwrap();
        expected.push(json!({"key": key, "start": start, "max_id": max}));
        expected.push(json!({"key": key, "window": [start, start + 1000], "n": evs.len()}));
    }
    check(
        |events| {
            let keyed = |s: Stream<Ev>| s.key_by(|e: &Ev| e.key.clone()).window(sliding());
            let max = keyed(events.clone())
                .reduce(|a: Ev, b: Ev| if a.id >= b.id { a } else { b })
                .map(|r| json!({"key": r.key, "start": r.window.start, "max_id": r.value.id}));
            let counts = keyed(events).aggregate_with(
                Count,
                |w: &WindowContext<'_, String>, n: &u64, out: &mut Vec<Value>| {
                    out.push(
                        json!({"key": w.key, "window": [w.window.start, w.window.end], "n": n}),
                    );
                },
            );
            max.union(counts)
        },
        &events,
        &expected,
    );
}

// ---------------------------------------------------------------- triggers

fn count_row(r: WindowResult<String, u64>) -> Value {
    json!({"key": r.key, "start": r.window.start, "count": r.value,
        "timing": timing(r.timing), "update": r.is_update})
}

#[test]
fn a_count_trigger_fires_every_n_events_of_a_window_and_then_on_time() {
    // No event is late, so every event arrives before its window is due and counts: a
    // window of n events fires early with 5, 10, .. (the count at the 5th, 10th, .. event
    // whatever their order), then on time with n, an update if it fired early.
    let events = events(5000, 30, 13);
    let mut expected = Vec::new();
    for ((key, start), evs) in windows(&events, 1000, 1000) {
        let n = evs.len() as u64;
        for k in (5..=n).step_by(5) {
            expected.push(
                json!({"key": key, "start": start, "count": k, "timing": "early",
                "update": k > 5}),
            );
        }
        expected.push(
            json!({"key": key, "start": start, "count": n, "timing": "on_time",
            "update": n >= 5}),
        );
    }
    assert!(expected
        .iter()
        .any(|r| r["count"] == 10 && r["timing"] == "early"));
    check(
        |events| {
            events
                .key_by(|e: &Ev| e.key.clone())
                .window(Tumbling::of(Duration::from_secs(1)))
                .trigger(Trigger::count(5))
                .aggregate(Count)
                .map(count_row)
        },
        &events,
        &expected,
    );
}

fn every_200ms(events: Stream<Ev>) -> Stream<Value> {
    events
        .key_by(|e: &Ev| e.key.clone())
        .window(Tumbling::of(Duration::from_secs(2)))
        .trigger(Trigger::every(Duration::from_millis(200)))
        .aggregate(Count)
        .map(count_row)
}

#[test]
fn a_periodic_trigger_fires_running_windows_alike_on_every_run() {
    // When a window fires early depends on how the watermark moves, which per-record
    // watermarks make the same at any parallelism: so every run gives the same rows. Its
    // on-time results are the windows' counts, and early ones never exceed them.
    let events = events(5000, 10, 14);
    let runs = run_every_way(every_200ms, &events);
    let on_time: Vec<String> = windows(&events, 2000, 2000)
        .into_iter()
        .map(|((key, start), evs)| format!("{key} {start} {}", evs.len()))
        .collect();
    let (first, rows) = &runs[0];
    let parsed: Vec<Value> = rows
        .iter()
        .map(|r| serde_json::from_str(r).unwrap())
        .collect();
    let mut final_rows: Vec<String> = parsed
        .iter()
        .filter(|r| r["timing"] == "on_time")
        .map(|r| {
            format!(
                "{} {} {}",
                r["key"].as_str().unwrap(),
                r["start"],
                r["count"]
            )
        })
        .collect();
    final_rows.sort();
    let mut on_time = on_time;
    on_time.sort();
    assert_eq!(
        final_rows, on_time,
        "{first}: the on-time results are the counts"
    );
    let early = parsed.iter().filter(|r| r["timing"] == "early").count();
    assert!(
        early > on_time.len() * 3,
        "{first}: only {early} early results"
    );
    for run in &runs[1..] {
        assert!(
            run.1 == *rows,
            "{} differs from {first}: {}",
            run.0,
            diff(&run.1, rows)
        );
    }
}

// ---------------------------------------------------------------- kill -9

/// A process function over sliding windows and a periodic trigger, side by side.
fn killed_job(events: Stream<Ev>) -> Stream<Value> {
    process_ids(events.clone()).union(every_200ms(events))
}

/// The argument that makes [`child`] run the killed job in the directory that follows it.
const CHILD: &str = "windows-child-dir=";

/// Runs [`killed_job`] with checkpoints, on RocksDB, when this test binary is started by
/// the kill test with a `CHILD` argument (a filter that matches no test); else nothing.
#[test]
fn child() {
    let Some(dir) = std::env::args().find_map(|a| a.strip_prefix(CHILD).map(PathBuf::from)) else {
        return;
    };
    let options = run_options(
        &dir.join("state"),
        "windows",
        1,
        Some(64),
        Some(Duration::from_millis(20)),
    );
    job(killed_job, &dir.join("input.jsonl"), &dir.join("out"), true)
        .run(&options)
        .unwrap();
}

#[cfg(unix)]
#[test]
fn a_process_function_and_a_trigger_killed_with_sigkill_resume_to_the_same_results() {
    use common::kill::{run_and_kill, Ended, Running};
    // 4000 events, 8 every 2 ms: a run of about a second, killed after 2 checkpoints.
    let events = events(4000, 10, 15);
    let dir = tempfile::tempdir().unwrap();
    write_input(&dir.path().join("input.jsonl"), &events);
    // The uninterrupted run.
    let reference = dir.path().join("reference.jsonl");
    job(
        killed_job,
        &dir.path().join("input.jsonl"),
        &reference,
        false,
    )
    .run(&run_options(dir.path(), "windows", 1, None, None))
    .unwrap();
    let reference = sorted_lines(&std::fs::read_to_string(&reference).unwrap());
    assert!(reference.iter().any(|r| r.contains("\"early\"")));
    let bin = std::env::current_exe().unwrap();
    let mut arg = OsString::from(CHILD);
    arg.push(dir.path());
    let args: Vec<OsString> = vec!["--exact".into(), "child".into(), arg, "--nocapture".into()];
    let stderr = dir.path().join("stderr");
    let (ended, log) = run_and_kill(
        bin.to_str().unwrap(),
        &args,
        stderr.clone(),
        Duration::from_millis(100),
        &dir.path().join("state/windows/checkpoints"),
        2,
    );
    assert_eq!(ended, Ended::Killed, "the job ended before the kill: {log}");
    let partial = committed_rows(&dir.path().join("out"));
    assert!(
        partial.len() < reference.len(),
        "killed after writing everything"
    );
    let log = Running::start(bin.to_str().unwrap(), &args, stderr).finish();
    let rows = committed_rows(&dir.path().join("out"));
    assert!(
        rows == reference,
        "after the restart: {}; {log}",
        diff(&rows, &reference)
    );
}

//! Checkpoints through the public job API, in-process: a job with two file sources joined
//! by a union (so barriers are aligned across producers) fails half-way, and a second run
//! with the same state directory resumes from the last checkpoint. Its committed output
//! must equal an uninterrupted run's, row for row. Also: a checkpoint that cannot be
//! written fails alone (counted) while the job goes on, and a source given another kind
//! of source's position (an input replaced under its uid) is refused, naming both.

// Helpers here set up fixtures; a failing setup should panic the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::checkpointed::{self, committed_rows, in_progress_files, sorted_lines, Flaky};
use serde::{Deserialize, Serialize};
use weir_engine::{
    BoxError, CheckpointConfig, ConnectorState, ConnectorStateType, EngineError, Resume,
    RunOptions, RunSummary, Source, SourceStatus, StateConfig,
};
use weir_jobs::prelude::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ev {
    ts: i64,
    key: String,
    v: i64,
}

#[derive(Debug, Clone, Serialize)]
struct Row {
    key: String,
    start: i64,
    count: u64,
    sum: i64,
}

fn write_input(path: &Path, events: i64, salt: i64) {
    let mut text = String::new();
    for i in 0..events {
        // Out of order by up to 400 ms, well within the watermark delay of 1 s.
        let ts = 1_000_000 + i * 10 + ((i * 7919 + salt) % 400);
        let line = serde_json::to_string(&Ev {
            ts,
            key: format!("k{}", (i + salt) % 97),
            v: i % 13,
        })
        .unwrap();
        text.push_str(&line);
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

struct Setup {
    dir: tempfile::TempDir,
    inputs: [PathBuf; 2],
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let inputs = [dir.path().join("a.jsonl"), dir.path().join("b.jsonl")];
        write_input(&inputs[0], 40_000, 0);
        write_input(&inputs[1], 30_000, 5);
        Setup { dir, inputs }
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Source `name` reading `path` as JSON lines with its own watermarks; it crashes
    /// after `fail_after` events if given.
    fn source(&self, job: &Job, name: &str, path: &Path, fail_after: Option<u64>) -> Stream<Ev> {
        let inner = FileSource::new(path, Format::JsonLines, Json::<Ev>::default());
        job.source(name, Flaky::new(inner, fail_after))
            .uid(name)
            .timestamps(|e| e.ts, Watermarks::bounded(Duration::from_secs(1)))
            .uid(&format!("{name}-time"))
    }

    /// The job: both files unioned, counted per key in tumbling 1 s windows. Source `a`
    /// crashes after `fail_after` events if given.
    fn job(&self, output: &Path, fail_after: Option<u64>) -> Job {
        let job = Job::new("union-counts");
        let a = self.source(&job, "a", &self.inputs[0], fail_after);
        let b = self.source(&job, "b", &self.inputs[1], None);
        count_per_key(a.union(b), output);
        job
    }

    /// The same counts with source `a` split into two branches (even and odd values) that
    /// a union joins again in their own thread, before the union with `b` across threads.
    fn branched_job(&self, output: &Path, fail_after: Option<u64>) -> Job {
        let job = Job::new("union-counts");
        let a = self.source(&job, "a", &self.inputs[0], fail_after);
        let b = self.source(&job, "b", &self.inputs[1], None);
        let evens = a.clone().filter(|e| e.v % 2 == 0);
        let odds = a.filter(|e| e.v % 2 != 0);
        count_per_key(evens.union(odds).union(b), output);
        job
    }

    /// The same counts from one parallel source whose two instances read a file each
    /// (so the job runs at parallelism 2 only); instance 0 crashes after `fail_after`.
    fn split_job(&self, output: &Path, fail_after: Option<u64>) -> Job {
        let job = Job::new("union-counts");
        count_per_key(self.split_source(&job, fail_after), output);
        job
    }

    /// [`Setup::split_job`] aggregating in two phases: each instance pre-aggregates its
    /// file before the exchange.
    fn two_phase_job(&self, output: &Path, fail_after: Option<u64>) -> Job {
        let job = Job::new("union-counts");
        count_per_key_in_two_phases(self.split_source(&job, fail_after), output);
        job
    }

    fn split_source(&self, job: &Job, fail_after: Option<u64>) -> Stream<Ev> {
        let inputs = self.inputs.clone();
        job.parallel_source("in", move |instance, _| {
            let file = &inputs[instance % 2];
            let inner = FileSource::new(file, Format::JsonLines, Json::<Ev>::default());
            Flaky::new(inner, fail_after.filter(|_| instance == 0))
        })
        .timestamps(|e| e.ts, Watermarks::bounded(Duration::from_secs(1)))
    }

    fn options(&self, parallelism: usize, interval: Option<Duration>) -> RunOptions {
        RunOptions {
            parallelism,
            state: StateConfig::RocksDb {
                dir: self.state_dir(),
                cache_entries: 1024,
                statistics: false,
            },
            checkpoints: interval.map(|interval| CheckpointConfig {
                dir: self.state_dir().join("union-counts/checkpoints"),
                interval,
                retained: 2,
                resume: Resume::Latest,
            }),
            ..RunOptions::default()
        }
    }

    /// Rows of an uninterrupted run without checkpoints, sorted.
    fn reference(&self) -> Vec<String> {
        let out = self.dir.path().join("reference.jsonl");
        self.job(&out, None).run(&self.options(1, None)).unwrap();
        sorted_lines(&std::fs::read_to_string(out).unwrap())
    }
}

/// Counts and sums `events` per key in tumbling 1 s windows into a file sink.
fn count_per_key(events: Stream<Ev>, output: &Path) {
    let counts = per_key_windows(events).aggregate(Count.and(Sum::of(|e: &Ev| e.v)));
    write_rows(counts, output);
}

/// [`count_per_key`] with [`WindowedStream::aggregate_two_phase`].
fn count_per_key_in_two_phases(events: Stream<Ev>, output: &Path) {
    let counts = per_key_windows(events).aggregate_two_phase(Count.and(Sum::of(|e: &Ev| e.v)));
    write_rows(counts, output);
}

type ByKey = fn(&Ev) -> String;

fn per_key_windows(events: Stream<Ev>) -> WindowedStream<String, Ev, ByKey> {
    events
        .key_by((|e: &Ev| e.key.clone()) as ByKey)
        .window(Tumbling::of(Duration::from_secs(1)))
}

fn write_rows(counts: Stream<WindowResult<String, (u64, i64)>>, output: &Path) -> SinkHandle {
    counts
        .map(|r| Row {
            key: r.key,
            start: r.window.start,
            count: r.value.0,
            sum: r.value.1,
        })
        .sink("out", FileSink::new(output))
}

fn complete_checkpoints(setup: &Setup) -> usize {
    checkpointed::complete_checkpoints(&setup.state_dir().join("union-counts/checkpoints"))
}

type BuildJob = fn(&Setup, &Path, Option<u64>) -> Job;

fn crash_then_resume(first: usize, second: usize) {
    crash_then_resume_job(Setup::job, first, second);
}

fn crash_then_resume_job(build: BuildJob, first: usize, second: usize) {
    let setup = Setup::new();
    let expected = setup.reference();
    let out = setup.dir.path().join("out");
    let interval = Some(Duration::from_millis(5));

    let crashed = build(&setup, &out, Some(25_000)).run(&setup.options(first, interval));
    let err = format!("{:#}", anyhow::Error::from(crashed.unwrap_err()));
    assert!(err.contains("simulated crash"), "{err}");
    assert!(
        complete_checkpoints(&setup) > 0,
        "the crash came before any checkpoint: the test would prove nothing"
    );
    let visible_after_crash = committed_rows(&out).len();

    let resumed: RunSummary = build(&setup, &out, None)
        .run(&setup.options(second, interval))
        .unwrap();
    assert!(
        resumed.events_read < 70_000,
        "the second run read {} events: it started over instead of resuming",
        resumed.events_read
    );
    let rows = committed_rows(&out);
    assert_eq!(in_progress_files(&out), Vec::<String>::new());
    assert!(visible_after_crash < rows.len());
    assert_eq!(rows.len(), expected.len(), "rows lost or duplicated");
    assert_eq!(rows, expected);
}

#[test]
fn a_crash_half_way_resumes_with_exactly_once_output() {
    crash_then_resume(1, 1);
}

#[test]
fn branches_of_one_source_unioned_in_its_thread_resume_exactly_once() {
    crash_then_resume_job(Setup::branched_job, 1, 1);
    crash_then_resume_job(Setup::branched_job, 2, 1);
}

#[test]
fn two_phase_aggregation_resumes_exactly_once() {
    // The local phase keeps no state: what it holds goes on before each barrier.
    crash_then_resume_job(Setup::two_phase_job, 2, 2);
}

#[test]
fn a_crash_at_parallelism_2_resumes_at_parallelism_1_and_back() {
    crash_then_resume(2, 1);
    crash_then_resume(1, 2);
}

#[test]
fn a_checkpoint_that_cannot_be_written_fails_alone() {
    let setup = Setup::new();
    let expected = setup.reference();
    let out = setup.dir.path().join("out");
    // A file where checkpoint 1's directory must go: that checkpoint cannot be written.
    let root = setup.state_dir().join("union-counts/checkpoints");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(root.join("chk-000001"), "in the way").unwrap();

    let job = setup.job(&out, None);
    let metrics = job.metrics();
    job.run(&setup.options(1, Some(Duration::from_millis(5))))
        .unwrap();
    let text = metrics.render();
    let value = |name: &str| -> f64 {
        assert!(
            text.contains(&format!("\n{name}{{")),
            "{name} missing from\n{text}"
        );
        common::sample_sum(&text, name, &[r#"job="union-counts""#])
    };
    assert!(value("weir_checkpoints_failed_total") >= 1.0);
    assert!(value("weir_checkpoints_completed_total") >= 1.0);
    assert_eq!(committed_rows(&out), expected);
}

#[test]
fn a_finished_job_started_again_changes_nothing() {
    let setup = Setup::new();
    let out = setup.dir.path().join("out");
    let options = setup.options(1, Some(Duration::from_millis(50)));
    setup.job(&out, None).run(&options).unwrap();
    let first = committed_rows(&out);
    let again = setup.job(&out, None).run(&options).unwrap();
    assert_eq!(
        again.events_read, 0,
        "the final checkpoint says all was read"
    );
    assert_eq!(committed_rows(&out), first);
    assert_eq!(first, setup.reference());
}

#[test]
fn a_parallel_source_resumes_with_its_own_instances_only() {
    let setup = Setup::new();
    // Two instances reading a file each count what the union of two sources counts.
    let expected = setup.reference();
    let out = setup.dir.path().join("out");
    let interval = Some(Duration::from_millis(5));

    let crashed = setup
        .split_job(&out, Some(25_000))
        .run(&setup.options(2, interval));
    let err = format!("{:#}", anyhow::Error::from(crashed.unwrap_err()));
    assert!(err.contains("simulated crash"), "{err}");
    assert!(
        complete_checkpoints(&setup) > 0,
        "no checkpoint before the crash"
    );

    // Its positions belong to the two instances' files: one instance cannot take them on.
    let refused = setup
        .split_job(&out, None)
        .run(&setup.options(1, interval))
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("source `in`") && refused.contains("--parallelism 2"),
        "{refused}"
    );

    let resumed = setup
        .split_job(&out, None)
        .run(&setup.options(2, interval))
        .unwrap();
    assert!(resumed.events_read < 70_000, "it started over");
    assert_eq!(in_progress_files(&out), Vec::<String>::new());
    assert_eq!(committed_rows(&out), expected);
}

/// [`Setup::job`] as it may change between a crash and the restart: with `filtered`, a
/// filter (passing every event) is added before the window; with `uids`, the window and
/// the sink are named by uids (the sources always are, in [`Setup::source`]).
fn changed_job(
    setup: &Setup,
    output: &Path,
    fail_after: Option<u64>,
    filtered: bool,
    uids: bool,
) -> Job {
    let job = Job::new("union-counts");
    let a = setup.source(&job, "a", &setup.inputs[0], fail_after);
    let b = setup.source(&job, "b", &setup.inputs[1], None);
    let events = a.union(b);
    let events = if filtered {
        events.filter(|e| e.v >= 0)
    } else {
        events
    };
    let counts = per_key_windows(events).aggregate(Count.and(Sum::of(|e: &Ev| e.v)));
    let counts = if uids { counts.uid("counts") } else { counts };
    let sink = write_rows(counts, output);
    if uids {
        sink.uid("out");
    }
    job
}

/// Crashes [`changed_job`] half-way, unchanged; returns the setup and the output.
fn crash_before_a_change(uids: bool) -> (Setup, PathBuf) {
    let setup = Setup::new();
    let out = setup.dir.path().join("out");
    let interval = Some(Duration::from_millis(5));
    let crashed =
        changed_job(&setup, &out, Some(25_000), false, uids).run(&setup.options(1, interval));
    assert!(crashed.is_err(), "the first run should crash");
    assert!(
        complete_checkpoints(&setup) > 0,
        "no checkpoint before the crash"
    );
    (setup, out)
}

#[test]
fn an_operator_added_upstream_does_not_take_state_matched_by_position() {
    let (setup, out) = crash_before_a_change(false);
    let interval = Some(Duration::from_millis(5));
    let err = changed_job(&setup, &out, None, true, false)
        .run(&setup.options(1, interval))
        .map(|_| ())
        .unwrap_err();
    let says = format!("{:#}", anyhow::Error::from(err));
    assert!(
        says.contains("has no operator in this job") && says.contains("window"),
        "the window's state, under a uid derived from its old place, must be refused: {says}"
    );
}

#[test]
fn state_follows_its_uid_through_a_change_to_the_job() {
    let (setup, out) = crash_before_a_change(true);
    let expected = setup.reference();
    let interval = Some(Duration::from_millis(5));
    let resumed = changed_job(&setup, &out, None, true, true)
        .run(&setup.options(1, interval))
        .unwrap();
    assert!(
        resumed.events_read < 70_000,
        "the changed job read {} events: it started over instead of resuming",
        resumed.events_read
    );
    assert_eq!(committed_rows(&out), expected, "rows lost or duplicated");
}

/// A replayable source of events whose position is its own type, not a file position.
struct Numbers {
    next: i64,
    end: i64,
}

#[derive(Serialize, Deserialize)]
struct NumbersPosition {
    next: i64,
}

impl ConnectorStateType for NumbersPosition {
    const KIND: &'static str = "numbers source";
    const VERSION: u32 = 1;
}

impl Source for Numbers {
    type Item = Ev;

    fn poll_batch(&mut self, out: &mut Vec<Ev>, max: usize) -> Result<SourceStatus, BoxError> {
        while self.next < self.end && out.len() < max {
            let (ts, key, v) = (1_000_000 + self.next * 10, "k".to_string(), 1);
            out.push(Ev { ts, key, v });
            self.next += 1;
        }
        Ok(match self.next < self.end {
            true => SourceStatus::More,
            false => SourceStatus::Exhausted,
        })
    }

    fn describe(&self) -> String {
        "numbers".into()
    }

    fn position(&mut self) -> Result<Option<ConnectorState>, BoxError> {
        let position = NumbersPosition { next: self.next };
        Ok(Some(ConnectorState::encode(&position)?))
    }

    fn seek(&mut self, position: &ConnectorState) -> Result<(), BoxError> {
        self.next = position.decode::<NumbersPosition>()?.next;
        Ok(())
    }
}

#[test]
fn an_input_replaced_under_its_uid_is_refused_naming_the_checkpoint_the_source_and_both_kinds() {
    let (setup, out) = crash_before_a_change(true);
    // Source `a` was a file; the restarted job reads other input under the same uid.
    let job = Job::new("union-counts");
    let a = job
        .source(
            "a",
            Numbers {
                next: 0,
                end: 1_000,
            },
        )
        .uid("a")
        .timestamps(|e| e.ts, Watermarks::bounded(Duration::from_secs(1)))
        .uid("a-time");
    let b = setup.source(&job, "b", &setup.inputs[1], None);
    let counts = per_key_windows(a.union(b))
        .aggregate(Count.and(Sum::of(|e: &Ev| e.v)))
        .uid("counts");
    write_rows(counts, &out).uid("out");
    let err = job
        .run(&setup.options(1, Some(Duration::from_millis(5))))
        .map(|_| ())
        .unwrap_err();
    assert!(matches!(err, EngineError::RestoreState { .. }), "{err:?}");
    let says = err.to_string();
    assert!(
        says.starts_with("checkpoint ")
            && says.contains("the state of `a (a#0)` cannot be restored")
            && says.contains("the state of a file source, not of a numbers source"),
        "{says}"
    );
}

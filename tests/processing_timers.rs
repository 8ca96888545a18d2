//! Processing-time timers of a `process_with_timers` function through the public job API
//! (Flink's `registerProcessingTimeTimer`):
//!
//! - A session timeout by the wall clock: a key quiet for 300 ms of processing time emits
//!   its session while the input stays open and sends nothing more (the engine wakes the
//!   operator without a record), at P = 1 and 2, in memory and on RocksDB. A timer still
//!   pending when the input ends does not fire.
//! - Killed with SIGKILL in a child process while every key's timer is pending and
//!   checkpointed, then resumed from the newest checkpoint at the other parallelism: each
//!   timer fires exactly once in the committed output, both when it is still ahead at the
//!   restart and when its time passed while the job was down (it fires right after the
//!   restore).
//!
//! Times are wall-clock, so the assertions claim only what a loaded machine cannot break:
//! a timer never fires before its time, every wait is bounded, and nothing fires twice.
//! The child of the kill test is this test binary, running the ignored test
//! [`run_job_in_child`] with its parameters in `WEIR_PTIMERS_CHILD`.

// Helpers here set up fixtures; a failing setup should panic the test.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::checkpointed::{committed_rows, in_progress_files, latest_checkpoint, run_options};
use common::kill::{Ended, Running, POLL, RUN_LIMIT};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use weir_engine::{
    BoxError, ConnectorState, DeadLetter, Record, RunOptions, Sink, Source, SourceStatus,
};
use weir_jobs::prelude::*;

const CHILD_ENV: &str = "WEIR_PTIMERS_CHILD";
/// How long a key must be quiet for its session to close.
const QUIET_MS: i64 = 300;
/// The quiet time of keys starting with `long`: longer than any test runs.
const LONG_QUIET_MS: i64 = 600_000;
/// The timeout of the kill test: long enough that the kill comes first on a loaded machine.
const KILL_TIMEOUT_MS: i64 = 8_000;
/// Longest a test waits for results.
const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Ev {
    ts: i64,
    key: String,
}

/// The wall clock in milliseconds, as processing time reads it.
fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Closes a key's session once it has been quiet for `quiet_ms` of processing time:
/// each event deletes the pending timeout and registers a new one. The session row says
/// when the timer was due and when it fired.
#[derive(Clone)]
struct SessionTimeout {
    quiet_ms: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Session {
    events: u64,
    timeout: Option<i64>,
}

impl TimerFunction<String, Ev> for SessionTimeout {
    type State = Session;
    type Out = Value;

    fn on_event(
        &self,
        key: &String,
        session: &mut Session,
        _: i64,
        _: &Ev,
        ctx: &mut TimerContext<Value>,
    ) {
        if let Some(previous) = session.timeout.take() {
            ctx.delete_processing_time_timer(previous);
        }
        let quiet = match key.starts_with("long") {
            true => LONG_QUIET_MS,
            false => self.quiet_ms,
        };
        let at = ctx.current_processing_time() + quiet;
        ctx.register_processing_time_timer(at);
        session.timeout = Some(at);
        session.events += 1;
    }

    fn on_timer(
        &self,
        key: &String,
        session: &mut Session,
        time: i64,
        ctx: &mut TimerContext<Value>,
    ) {
        let domain = format!("{:?}", ctx.time_domain());
        let fired = ctx.current_processing_time();
        ctx.emit(json!({"key": key, "events": session.events, "due": time,
                        "fired": fired, "domain": domain}));
        ctx.clear_state();
    }
}

/// Events sent by the test; pending while the sender is open, ended once it is dropped.
/// It asks to be polled again only after a second: a timer that waited for the next poll
/// (rather than for the engine's alarm) would fire up to that late.
struct Feed(Receiver<Ev>);

impl Source for Feed {
    type Item = Ev;

    fn poll_batch(&mut self, out: &mut Vec<Ev>, max: usize) -> Result<SourceStatus, BoxError> {
        while out.len() < max {
            match self.0.try_recv() {
                Ok(ev) => out.push(ev),
                Err(TryRecvError::Empty) if out.is_empty() => {
                    return Ok(SourceStatus::Pending(Duration::from_secs(1)))
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return Ok(SourceStatus::Exhausted),
            }
        }
        Ok(SourceStatus::More)
    }

    fn describe(&self) -> String {
        "events from the test".into()
    }
}

/// Collects the rows it receives.
struct Collect(Arc<Mutex<Vec<Value>>>);

impl Sink<Value> for Collect {
    fn write(&mut self, records: &[Record<Value>]) -> Result<(), BoxError> {
        let mut rows = self.0.lock().map_err(|_| "poisoned")?;
        rows.extend(records.iter().map(|r| r.value.clone()));
        Ok(())
    }

    fn finish(&mut self) -> Result<(), BoxError> {
        Ok(())
    }

    fn describe(&self) -> String {
        "rows for the test".into()
    }
}

/// Waits (at most [`WAIT`]) until `rows` holds `n` rows; returns them.
fn wait_for_rows(rows: &Arc<Mutex<Vec<Value>>>, n: usize, what: &str) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let seen = rows.lock().unwrap().clone();
        if seen.len() >= n {
            return seen;
        }
        assert!(
            started.elapsed() < WAIT,
            "{what}: {} of {n} rows after {WAIT:?}: {seen:?}",
            seen.len()
        );
        sleep(Duration::from_millis(10));
    }
}

/// The (key, events) of session rows, sorted; each row's timer fired at or after its time.
fn sessions_of(rows: &[Value]) -> Vec<(String, u64)> {
    let mut sessions: Vec<(String, u64)> = rows
        .iter()
        .map(|row| {
            assert_eq!(row["domain"], "ProcessingTime", "{row}");
            let (due, fired) = (row["due"].as_i64().unwrap(), row["fired"].as_i64().unwrap());
            assert!(fired >= due, "fired before its time: {row}");
            (
                row["key"].as_str().unwrap().to_string(),
                row["events"].as_u64().unwrap(),
            )
        })
        .collect();
    sessions.sort();
    sessions
}

fn ev(key: &str) -> Ev {
    Ev {
        ts: 0,
        key: key.into(),
    }
}

/// The job's thread, ending with its outcome.
type JobThread = std::thread::JoinHandle<Result<(), String>>;

/// Runs the session job over a [`Feed`] in a thread; the sender, the rows and the job.
fn start_sessions(options: RunOptions) -> (Sender<Ev>, Arc<Mutex<Vec<Value>>>, JobThread) {
    let (tx, rx) = channel();
    let rows = Arc::new(Mutex::new(Vec::new()));
    let sink_rows = rows.clone();
    let job = std::thread::spawn(move || {
        let job = Job::new("sessions");
        job.source("feed", Feed(rx))
            .timestamps(|e: &Ev| e.ts, Watermarks::ascending())
            .key_by(|e: &Ev| e.key.clone())
            .process_with_timers("sessions", SessionTimeout { quiet_ms: QUIET_MS })
            .sink("rows", Collect(sink_rows));
        job.run(&options).map(drop).map_err(|e| e.to_string())
    });
    (tx, rows, job)
}

#[test]
fn a_key_quiet_for_300ms_of_processing_time_closes_its_session_while_the_input_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    for (parallelism, rocksdb) in [(1, false), (2, false), (1, true), (2, true)] {
        let what = format!("P={parallelism} rocksdb={rocksdb}");
        let state = dir.path().join(format!("state-{parallelism}-{rocksdb}"));
        let options = run_options(&state, "sessions", parallelism, rocksdb.then_some(16), None);
        let (tx, rows, job) = start_sessions(options);
        let sent = Instant::now();
        for key in ["a", "b", "a", "c", "a", "b", "long"] {
            tx.send(ev(key)).unwrap();
        }
        let first = wait_for_rows(&rows, 3, &what);
        // How late each fired (not asserted: a loaded machine may delay any thread).
        let lags: Vec<i64> = first
            .iter()
            .map(|r| r["fired"].as_i64().unwrap() - r["due"].as_i64().unwrap())
            .collect();
        eprintln!("{what}: sessions closed {lags:?} ms after their timeout");
        assert!(
            sent.elapsed() >= Duration::from_millis(QUIET_MS as u64),
            "{what}: a session closed before its key was quiet for {QUIET_MS} ms"
        );
        assert_eq!(
            sessions_of(&first),
            [("a".into(), 3), ("b".into(), 2), ("c".into(), 1)],
            "{what}"
        );
        // A closed session forgot its key: the next event of `a` opens a new one.
        tx.send(ev("a")).unwrap();
        let second = wait_for_rows(&rows, 4, &what);
        assert_eq!(sessions_of(&second[3..]), [("a".into(), 1)], "{what}");
        // The end of input does not wait for `long`'s timer (ten minutes ahead).
        drop(tx);
        job.join().unwrap().unwrap();
        assert_eq!(rows.lock().unwrap().len(), 4, "{what}: {:?}", rows.lock());
    }
}

/// Holds a replayable source open after its input ended, until the wall clock reaches
/// `until` (ms): a job over a file that keeps running, and checkpointing, while its
/// processing-time timers wait.
struct HoldOpen<S> {
    inner: S,
    ended: bool,
    until: i64,
}

impl<S: Source> Source for HoldOpen<S> {
    type Item = S::Item;

    fn poll_batch(&mut self, out: &mut Vec<S::Item>, max: usize) -> Result<SourceStatus, BoxError> {
        if !self.ended {
            match self.inner.poll_batch(out, max)? {
                SourceStatus::Exhausted => self.ended = true,
                status => return Ok(status),
            }
        }
        let left = self.until - wall_ms();
        if left <= 0 {
            return Ok(SourceStatus::Exhausted);
        }
        Ok(SourceStatus::Pending(Duration::from_millis(
            left.min(50) as u64
        )))
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn position(&mut self) -> Result<Option<ConnectorState>, BoxError> {
        self.inner.position()
    }

    fn seek(&mut self, position: &ConnectorState) -> Result<(), BoxError> {
        self.inner.seek(position)
    }

    fn checkpoint_completed(&mut self, position: &ConnectorState) -> Result<(), BoxError> {
        self.inner.checkpoint_completed(position)
    }

    fn take_dead_letters(&mut self, out: &mut Vec<DeadLetter>) {
        self.inner.take_dead_letters(out)
    }
}

/// The kill test's job: the events in `dir`, a session per key closed after
/// [`KILL_TIMEOUT_MS`], its input held open until `until`.
fn timeout_job(dir: &Path, until: i64) -> Job {
    let job = Job::new("ptimers");
    let file = FileSource::new(
        dir.join("in.jsonl"),
        Format::JsonLines,
        Json::<Ev>::default(),
    );
    job.source(
        "in",
        HoldOpen {
            inner: file,
            ended: false,
            until,
        },
    )
    .uid("in")
    .timestamps(|e: &Ev| e.ts, Watermarks::bounded(Duration::from_secs(1)))
    .uid("in-time")
    .key_by(|e: &Ev| e.key.clone())
    .process_with_timers(
        "timeout",
        SessionTimeout {
            quiet_ms: KILL_TIMEOUT_MS,
        },
    )
    .uid("timeout")
    .sink("out", FileSink::new(dir.join("out")))
    .uid("out");
    job
}

fn kill_options(dir: &Path, parallelism: usize, rocksdb: bool) -> RunOptions {
    run_options(
        &dir.join("state"),
        "ptimers",
        parallelism,
        rocksdb.then_some(16),
        Some(Duration::from_millis(50)),
    )
}

const KEYS: usize = 20;

#[test]
fn a_pending_processing_time_timer_fires_exactly_once_after_a_kill_9_and_a_restore() {
    // (killed at P, resumed at P, RocksDB, restarted only once the timers were due)
    for (killed_at, resumed_at, rocksdb, restart_when_due) in
        [(2, 1, false, false), (1, 2, true, true)]
    {
        let what = format!(
            "killed at P={killed_at}, resumed at P={resumed_at}, rocksdb={rocksdb}, \
             restarted when due={restart_when_due}"
        );
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..KEYS)
            .map(|i| {
                serde_json::to_string(&Ev {
                    ts: i as i64,
                    key: format!("k{i:02}"),
                })
                .unwrap()
                    + "\n"
            })
            .collect();
        std::fs::write(dir.path().join("in.jsonl"), text).unwrap();
        let root = dir.path().join("state/ptimers/checkpoints");
        let mut child = Command::new(std::env::current_exe().unwrap());
        child
            .args(["run_job_in_child", "--exact", "--ignored", "--nocapture"])
            .env(
                CHILD_ENV,
                format!("{}|{killed_at}|{rocksdb}", dir.path().display()),
            );
        let started = wall_ms();
        let mut run = Running::spawn(child, dir.path().join("child.stderr"));
        // Three checkpoints: the input (read in the first poll) is in the last two, with
        // every key's pending timer.
        while run.is_running() && latest_checkpoint(&root) < 3 {
            assert!(run.started.elapsed() < RUN_LIMIT, "{}", run.stderr());
            sleep(POLL);
        }
        let (ended, stderr) = run.kill();
        assert_eq!(
            ended,
            Ended::Killed,
            "{what}: the child finished first:\n{stderr}"
        );
        let out = dir.path().join("out");
        assert_eq!(
            committed_rows(&out),
            Vec::<String>::new(),
            "{what}: a timer fired before the kill (the machine is very slow?)"
        );
        // Every timer is due by `started + KILL_TIMEOUT_MS` plus the time the child took
        // to read its input, which the kill bounds.
        let due_by = wall_ms() + KILL_TIMEOUT_MS;
        if restart_when_due {
            sleep(Duration::from_millis((due_by - wall_ms()).max(0) as u64));
        }
        let restarted = wall_ms();
        let summary = timeout_job(dir.path(), due_by.max(restarted) + 1_500)
            .run(&kill_options(dir.path(), resumed_at, rocksdb))
            .unwrap();
        assert_eq!(
            summary.events_read, 0,
            "{what}: the restart read its input again"
        );
        assert_eq!(in_progress_files(&out), Vec::<String>::new());
        let rows: Vec<Value> = committed_rows(&out)
            .iter()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let expected: Vec<(String, u64)> = (0..KEYS).map(|i| (format!("k{i:02}"), 1)).collect();
        assert_eq!(sessions_of(&rows), expected, "{what}: {rows:?}");
        for row in &rows {
            let (due, fired) = (row["due"].as_i64().unwrap(), row["fired"].as_i64().unwrap());
            assert!(due >= started + KILL_TIMEOUT_MS, "{what}: {row}");
            assert!(
                fired >= restarted,
                "{what}: fired before the restart: {row}"
            );
        }
    }
}

/// The child of the kill -9 test: runs the job with checkpoints, its input held open.
#[test]
#[ignore = "run by a_pending_processing_time_timer_fires_exactly_once_after_a_kill_9_and_a_restore"]
fn run_job_in_child() {
    let spec = std::env::var(CHILD_ENV).expect("set by the parent test");
    let parts: Vec<&str> = spec.rsplitn(3, '|').collect();
    let (rocksdb, parallelism, dir) = (parts[0] == "true", parts[1].parse().unwrap(), parts[2]);
    let dir = PathBuf::from(dir);
    timeout_job(&dir, wall_ms() + 600_000)
        .run(&kill_options(&dir, parallelism, rocksdb))
        .unwrap();
}

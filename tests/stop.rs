//! Stopping a running job, through the real binary: SIGINT/SIGTERM stop it as Flink's
//! `stop` does (sources end, a final checkpoint, sinks flushed, temporary state removed,
//! a summary, exit 0), a second signal exits at once, a followed job's results are
//! visible while it runs, and a job that fails keeps what it computed before it failed.

// This whole file is test code (clippy's allow-unwrap-in-tests misses helpers).
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

mod common;

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use common::checkpointed::{committed_rows, sorted_lines};
use common::follow_run::{checkpoints_of, run, Fixture, Process, LIMIT};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// Sends `signal` (`TERM`, `INT`) to the process.
fn send(process: &Process, signal: &str) {
    let sent = Command::new("kill")
        .args([format!("-{signal}"), process.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -{signal} failed");
}

/// Waits for the process to end (failing after `LIMIT`).
fn wait_for_exit(process: &mut Process) -> ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = process.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < LIMIT,
            "still running {LIMIT:?} after the signal; stderr:\n{}",
            process.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` and checks that the job stops by itself with exit code 0.
fn stop_with(process: &mut Process, signal: &str) {
    send(process, signal);
    let status = wait_for_exit(process);
    assert_eq!(
        status.code(),
        Some(0),
        "SIG{signal} should stop the job and exit 0; stderr:\n{}",
        process.stderr()
    );
}

/// Waits until `path` has a whole line (failing after `within` or if the process ended).
fn wait_for_a_row(process: &mut Process, path: &Path, within: Duration) {
    let started = Instant::now();
    while !fs::read_to_string(path).is_ok_and(|text| text.contains('\n')) {
        assert!(
            process.is_running(),
            "the job ended early; stderr:\n{}",
            process.stderr()
        );
        assert!(
            started.elapsed() < within,
            "no row in {} {within:?} after the job started; stderr:\n{}",
            path.display(),
            process.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// `args` reading `input` instead of the fixture's input.
fn reading(mut args: Vec<OsString>, input: &Path) -> Vec<OsString> {
    let at = args.iter().position(|a| a == "--input").unwrap() + 1;
    args[at] = input.into();
    args
}

fn assert_every_line_is_json(text: &str, what: &str) {
    for line in text.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "a cut-off or broken line in {what}: {line:?}"
        );
    }
}

#[test]
fn sigterm_takes_a_final_checkpoint_and_a_restart_resumes_exactly() {
    let fx = Fixture::new(WEIR);
    let reference = fx.reference(&[]);
    // The job follows a file that holds the first 60 % of the input when it is stopped;
    // the rest is appended before the restart.
    let text = fs::read_to_string(&fx.input).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = lines.len() * 6 / 10;
    let growing = fx.path("growing.jsonl");
    fs::write(&growing, lines[..cut].join("\n") + "\n").unwrap();
    let (out, state) = (fx.path("out"), fx.path("state"));
    let args = reading(fx.checkpointed(&out, &state, &[]), &growing);
    let mut follow = args.clone();
    follow.push("--follow".into());

    let mut job = Process::start(WEIR, &follow, fx.path("stopped.stderr"));
    job.wait_for_checkpoint_after(&checkpoints_of(&state), 0);
    stop_with(&mut job, "TERM");
    assert!(
        job.stderr().contains("window-agg stopped:"),
        "no summary of the stopped run; stderr:\n{}",
        job.stderr()
    );
    let stopped_rows = committed_rows(&out);
    assert!(
        !stopped_rows.is_empty(),
        "the stopped run committed nothing"
    );
    assert_every_line_is_json(&stopped_rows.join("\n"), "the stopped run's output");

    let mut rest = OpenOptions::new().append(true).open(&growing).unwrap();
    rest.write_all((lines[cut..].join("\n") + "\n").as_bytes())
        .unwrap();
    drop(rest);
    let (ok, says) = run(WEIR, &args);
    assert!(ok, "the restart failed: {says}");
    assert_eq!(
        sorted_lines(&committed_rows(&out).join("\n")),
        reference,
        "a stop and a restart do not give the rows of an uninterrupted run"
    );
}

#[test]
fn a_stop_without_checkpoints_flushes_whole_rows_and_removes_temporary_state() {
    let fx = Fixture::new(WEIR);
    let out = fx.path("out.jsonl");
    let tmp = fx.path("tmp");
    fs::create_dir(&tmp).unwrap();
    let mut follow = fx.args(&out, &["--follow"]);
    // RocksDB state in a temporary directory under TMPDIR (the default without --state-dir).
    follow.extend(["--state".into(), "rocksdb".into()]);
    let mut job = Process::start_with_env(
        WEIR,
        &follow,
        fx.path("job.stderr"),
        &[("TMPDIR", tmp.as_os_str())],
    );
    // Rows of a followed job are visible while it runs, not only at its end.
    wait_for_a_row(&mut job, &out, Duration::from_secs(10));
    stop_with(&mut job, "INT");
    let stderr = job.stderr();
    assert!(
        stderr.contains("window-agg stopped:") && stderr.contains("windows still open"),
        "no summary saying what a stop without checkpoints leaves; stderr:\n{stderr}"
    );
    let text = fs::read_to_string(&out).unwrap();
    assert!(text.ends_with('\n'), "the output ends in a cut-off row");
    assert_every_line_is_json(&text, "the output");
    let left: Vec<_> = fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "temporary state left behind: {left:?}");
}

#[test]
fn a_followed_job_shows_its_rows_within_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = (
        dir.path().join("events.jsonl"),
        dir.path().join("out.jsonl"),
    );
    // A few kilobytes of results: far less than any write buffer.
    common::run_ok(
        WEIR,
        [
            "gen", "events", "--events", "2000", "--keys", "5", "--output",
        ]
        .map(OsString::from)
        .into_iter()
        .chain([input.clone().into()]),
    )
    .unwrap();
    let args: Vec<OsString> = [
        "run",
        "window-agg",
        "--input",
        input.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--follow",
        "--metrics-addr",
        "off",
        "--quiet",
    ]
    .map(OsString::from)
    .into();
    let mut job = Process::start(WEIR, &args, dir.path().join("job.stderr"));
    wait_for_a_row(&mut job, &out, Duration::from_secs(2));
}

#[test]
fn a_second_signal_exits_at_once() {
    let fx = Fixture::new(WEIR);
    // Results go to a TCP address nobody listens on: the sink keeps retrying, so the job
    // cannot drain and the first signal's stop does not end it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let output = format!("tcp://{}", closed.local_addr().unwrap());
    drop(closed);
    let args = fx.args(Path::new(&output), &["--follow"]);
    let mut job = Process::start(WEIR, &args, fx.path("job.stderr"));
    let started = Instant::now();
    while !job.stderr().contains("trying again") {
        assert!(
            started.elapsed() < LIMIT,
            "the sink never retried: {}",
            job.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
    send(&job, "TERM");
    thread::sleep(Duration::from_millis(300));
    assert!(
        job.is_running(),
        "the job could not drain, yet it ended: {}",
        job.stderr()
    );
    send(&job, "TERM");
    let status = wait_for_exit(&mut job);
    assert_eq!(
        status.code(),
        Some(143),
        "the second SIGTERM should exit at once with 143; stderr:\n{}",
        job.stderr()
    );
}

#[test]
fn a_signal_while_the_sources_connect_stops_cleanly_without_temporary_state() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    fs::create_dir(&tmp).unwrap();
    // A broker nobody runs, and a connect timeout far longer than the test: the source is
    // still connecting (RocksDB state already open) when the signal comes.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let input = format!(
        "kafka://{}/t?until=end&connect_timeout=10m",
        closed.local_addr().unwrap()
    );
    drop(closed);
    let out = dir.path().join("out.jsonl");
    let args: Vec<OsString> = vec![
        "run".into(),
        "window-agg".into(),
        "--input".into(),
        input.into(),
        "--output".into(),
        out.into(),
        "--state".into(),
        "rocksdb".into(),
        "--metrics-addr".into(),
        "off".into(),
        "--quiet".into(),
    ];
    let mut job = Process::start_with_env(
        WEIR,
        &args,
        dir.path().join("job.stderr"),
        &[("TMPDIR", tmp.as_os_str())],
    );
    let started = Instant::now();
    while !job.stderr().contains("cannot reach broker") {
        assert!(job.is_running(), "the job ended early: {}", job.stderr());
        assert!(
            started.elapsed() < LIMIT,
            "the source never tried the broker: {}",
            job.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
    stop_with(&mut job, "TERM");
    let stderr = job.stderr();
    assert!(
        stderr.contains("window-agg stopped: 0 events read"),
        "no one-line summary of a run stopped before any input: {stderr}"
    );
    let left: Vec<_> = fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "temporary state left behind: {left:?}");
}

/// An input whose 12th (last) line makes key b's sum overflow `i64` in window
/// [100000, 110000), after 10 windows of key a fired; and the run's output path.
fn overflowing_input(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let input = dir.join("events.jsonl");
    let mut events: String = (0..10)
        .map(|i| format!("{{\"ts\":{},\"key\":\"a\",\"value\":1}}\n", i * 10_000))
        .collect();
    events.push_str("{\"ts\":100000,\"key\":\"b\",\"value\":9223372036854775807}\n");
    events.push_str("{\"ts\":100001,\"key\":\"b\",\"value\":1}\n");
    fs::write(&input, events).unwrap();
    (input, dir.join("out.jsonl"))
}

/// Runs window-agg on `input` into `out` with watermark delay 0 and `extra` options.
fn run_window_agg(input: &Path, out: &Path, extra: &[&str]) -> common::Run {
    let mut args: Vec<OsString> = vec![
        "run".into(),
        "window-agg".into(),
        "--input".into(),
        input.into(),
        "--output".into(),
        out.into(),
        "--watermark-delay".into(),
        "0s".into(),
        "--metrics-addr".into(),
        "off".into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    common::run(WEIR, args).unwrap()
}

#[test]
fn an_overflowing_sum_keeps_the_rows_of_windows_that_fired_and_names_its_key_window_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = overflowing_input(dir.path());
    let run = run_window_agg(&input, &out, &["--quiet"]);
    assert!(!run.status.success(), "the overflow did not fail the job");
    // The record that overflowed is the 12th line of the input, as its dead letter would say.
    let line = format!("input {} line 12)", input.display());
    for what in ["overflowed", "key \"b\"", "window [100000, 110000)", &line] {
        assert!(
            run.stderr.contains(what),
            "the error does not say {what:?}: {}",
            run.stderr
        );
    }
    let rows = fs::read_to_string(&out).unwrap_or_default();
    assert_eq!(
        rows.lines().count(),
        10,
        "the 10 windows of key a fired before the overflow; the output has:\n{rows}"
    );
}

#[test]
fn on_aggregate_error_dead_letter_sends_the_overflowing_record_there_and_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (input, out) = overflowing_input(dir.path());
    let run = run_window_agg(&input, &out, &["--on-aggregate-error", "dead-letter"]);
    assert!(
        run.status.success(),
        "the job should go on past the overflow: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("1 dead letters"),
        "the rejected record is not counted: {}",
        run.stderr
    );
    let rows = fs::read_to_string(&out).unwrap();
    let b: Vec<serde_json::Value> = rows
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["key"] == "b")
        .collect();
    assert_eq!(rows.lines().count(), 11, "a's 10 windows and b's: {rows}");
    assert_eq!(
        (&b[0]["count"], &b[0]["sum"]),
        (&serde_json::json!(1), &serde_json::json!(i64::MAX)),
        "b's window without the record that would overflow it"
    );
    let dead = fs::read_to_string(dir.path().join("out.jsonl.dead.jsonl")).unwrap();
    let letters: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 1, "one dead letter: {dead}");
    let letter = &letters[0];
    assert_eq!(letter["source"], input.display().to_string());
    assert_eq!(letter["line"], 12);
    let error = letter["error"].as_str().unwrap();
    assert!(
        error.contains("overflowed") && error.contains("window [100000, 110000)"),
        "{error}"
    );
    assert_eq!(
        letter["raw"], r#"{"ts":100001,"key":"b","value":1}"#,
        "the event as decoded"
    );
    // With checkpoints too (the letters go through the exactly-once dead-letter sink;
    // tests/dead_letter_recovery.rs kills such runs): the same letter, committed.
    let state = dir.path().join("state");
    let parts = dir.path().join("parts");
    let checkpointed = run_window_agg(
        &input,
        &parts,
        &[
            "--on-aggregate-error",
            "dead-letter",
            "--checkpoint-interval",
            "1s",
            "--state-dir",
            state.to_str().unwrap(),
        ],
    );
    assert!(checkpointed.status.success(), "{}", checkpointed.stderr);
    let again = fs::read_to_string(dir.path().join("parts.dead.jsonl")).unwrap();
    assert_eq!(again, dead, "the dead letters of the run with checkpoints");
}

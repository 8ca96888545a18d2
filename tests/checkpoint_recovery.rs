//! Exactly-once recovery of `weir run window-agg --checkpoint-interval ...`, through the real
//! binary. With checkpoints, `--output OUT` is a directory: committed results are
//! `OUT/part-NNNNNN.jsonl`, uncommitted ones hidden `.inprogress` files, and checkpoints are
//! `STATE/window-agg/checkpoints/chk-NNNNNN/` (complete once they hold `_manifest`).
//!
//! Every test compares the committed rows with those of one uninterrupted run without
//! checkpoints on the same input, as multisets, so a lost row and a duplicated row both fail.
//! The tests prove that:
//! - SIGKILL at random moments (before the first checkpoint, mid-run, maybe during a restore
//!   or after the end), 20 times in a row at P = 1 and at P = 2, loses and duplicates nothing,
//!   and a successful finish leaves no uncommitted file behind; the same holds with memory
//!   state (its snapshots are full copies) and for late events sent to `--late-output`;
//! - restarts really resume from a checkpoint (they say "resuming" on stderr), so the tests
//!   cannot pass by quietly starting over;
//! - state taken at one parallelism is restored at another (2 -> 1 and 1 -> 2, and with
//!   memory state 2 -> 1);
//! - restarting a job that already finished leaves its committed files byte for byte as they
//!   were;
//! - a corrupt newest checkpoint is reported as unusable and the job resumes from the one
//!   before it;
//! - order-analytics (dedup with a TTL, windows, top-N, per-customer totals) and
//!   saga-monitor (CEP) survive kills across parallelism changes too;
//! - a savepoint asked for over HTTP (`weir savepoint`) is a starting point
//!   (`--from-savepoint`), and `--replay-from beginning|TIME` derives the state again.
//!
//! The input comes from `weir gen events`: one event per millisecond, up to 1 s out of order,
//! 10,000 keys. The watermark delay (2 s) exceeds that, so no event is late and the results
//! are a function of the input alone, whenever the job is killed and whether the file is
//! read by one reader or split over the workers. The late-output fixture waits only 300 ms,
//! so some events are late; which ones is a function of the input too (the file is read by
//! one reader and the watermark generator's state is checkpointed). A small state cache keeps
//! the state in RocksDB (so checkpoints carry it) and makes a run last long enough to be
//! killed midway.

// This whole file is test code, but clippy's `allow-unwrap-in-tests` only covers the
// `#[test]` functions of an integration test, not its helpers (rust-clippy#11119).
#![allow(clippy::unwrap_used)]
// SIGKILL and exit signals are Unix notions.
#![cfg(unix)]

mod common;

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::kill::{self, Ended, Running, POLL, RUN_LIMIT};
use common::{SplitMix64, Summary};
use serde_json::Value;
use tempfile::TempDir;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
/// Distinct keys of the generated input.
const KEYS: u64 = 10_000;
/// How far the generator puts events behind the stream's clock, at most...
const DISORDER_MS: u64 = 1_000;
/// ...and the watermark waits longer than that: no event is late...
const WATERMARK_DELAY: &str = "2s";
/// ...except with this delay, which the late-output tests use.
const SHORT_WATERMARK_DELAY: &str = "300ms";
const WINDOW: &str = "tumble:10s";
/// Decoded state entries kept in memory per table (default 65,536): few, so the state lives
/// in RocksDB and a run takes long enough to be killed midway.
const STATE_CACHE_ENTRIES: &str = "64";
/// Events of the kill tests (about 950,000 result rows).
const BIG: u64 = 1_500_000;
/// Events of the corrupt-checkpoint test.
const MEDIUM: u64 = 1_000_000;
/// Events of the finished-job test.
const SMALL: u64 = 50_000;
/// Runs killed per kill test (one at P = 1, one at P = 2).
const KILLS: usize = 20;

// ------------------------------------------------------------------ tests

#[test]
fn kill_9_at_random_moments_loses_and_duplicates_nothing_at_parallelism_1() {
    kill_9_at_random_moments(&Fixture::new(BIG), 1, 0x0C4E_C001, "rocksdb");
}

#[test]
fn kill_9_at_random_moments_loses_and_duplicates_nothing_at_parallelism_2() {
    kill_9_at_random_moments(&Fixture::new(BIG), 2, 0x0C4E_C002, "rocksdb");
}

#[test]
fn kill_9_with_memory_state_and_late_output_loses_and_duplicates_nothing() {
    kill_9_at_random_moments(&Fixture::with_late_events(BIG), 2, 0x0C4E_C003, "memory");
}

/// Runs the job `KILLS` times, each SIGKILLed after a random 100-900 ms, then lets it finish.
fn kill_9_at_random_moments(fx: &Fixture, parallelism: usize, seed: u64, state_backend: &str) {
    let (out, state) = (fx.path("out"), fx.path("state"));
    let mut args = fx.checkpointed(&out, &state, "200ms", parallelism);
    args.extend(["--state".into(), state_backend.into()]);
    let mut rng = SplitMix64::new(seed);
    let (mut kills, mut mid_run, mut resumed) = (0, 0, 0);
    for run in 0..KILLS {
        // The first kill comes before the first checkpoint (200 ms) can complete; the second
        // as soon as a checkpoint is complete, so that a kill lands after one however fast
        // this machine runs the job (random delays alone left the job finished by the second
        // run on a fast machine); the others anywhere. A run started after the job finished
        // is a restart of a finished job, which must change nothing either.
        let (delay, checkpoints) = match run {
            0 => (100 + rng.below(80), 0),
            1 => (0, 1),
            _ => (100 + rng.below(801), 0),
        };
        let stderr = fx.path(&format!("run-{run}.stderr"));
        let delay = Duration::from_millis(delay);
        let (ended, stderr) = run_and_kill(&args, stderr, delay, &state, checkpoints);
        if ended == Ended::Killed {
            kills += 1;
            // Killed with a checkpoint to resume from (the first kill comes before any).
            if !complete_checkpoints(&state).is_empty() {
                mid_run += 1;
            }
        }
        if says(&stderr, "resuming") {
            assert!(run > 0, "the run on an empty state dir resumed:\n{stderr}");
            resumed += 1;
        }
    }
    let checkpointed = !complete_checkpoints(&state).is_empty();
    let stderr = Running::start(WEIR, &args, fx.path("last.stderr")).finish();
    if checkpointed {
        assert!(
            says(&stderr, "resuming"),
            "P={parallelism}: the last run did not resume from the checkpoints in {}:\n{stderr}",
            state.display()
        );
        resumed += 1;
    }
    let tally = format!(
        "P={parallelism}, {state_backend} state: {kills} of {KILLS} kills landed, {mid_run} \
         after a checkpoint; {resumed} runs resumed"
    );
    assert!(
        mid_run > 0 && resumed > 0,
        "{tally}: the job was never killed midway, so this test proved nothing"
    );
    eprintln!("{tally}");
    fx.assert_committed_equals_reference(
        &out,
        &format!("P={parallelism}, {state_backend} state, after {kills} kills"),
    );
}

#[test]
fn restore_with_a_different_parallelism() {
    let fx = Fixture::new(BIG);
    let mut rng = SplitMix64::new(0x9A2A_11E1);
    for (from, to, backend) in [(2, 1, "rocksdb"), (1, 2, "rocksdb"), (2, 1, "memory")] {
        let what = format!("P={from} -> P={to}, {backend} state");
        let out = fx.path(&format!("out-{from}-{to}-{backend}"));
        let state = fx.path(&format!("state-{from}-{to}-{backend}"));
        let args = |parallelism| {
            // Checkpoints every 100 ms: the fast JSON path reads this input in about 0.5 s.
            let mut args = fx.checkpointed(&out, &state, "100ms", parallelism);
            args.extend(["--state".into(), backend.into()]);
            args
        };
        // Killed after 150-300 ms, or later if no checkpoint is complete by then.
        let delay = Duration::from_millis(150 + rng.below(151));
        let (ended, stderr) = run_and_kill(
            &args(from),
            fx.path(&format!("killed-{from}-{to}-{backend}.stderr")),
            delay,
            &state,
            1,
        );
        assert_eq!(
            ended,
            Ended::Killed,
            "{what}: the job finished before it could be killed after a checkpoint:\n{stderr}"
        );
        let stderr = Running::start(
            WEIR,
            &args(to),
            fx.path(&format!("restart-{from}-{to}-{backend}.stderr")),
        )
        .finish();
        assert!(
            says(&stderr, "resuming"),
            "{what}: the restart did not resume:\n{stderr}"
        );
        fx.assert_committed_equals_reference(&out, &what);
    }
}

#[test]
fn a_finished_job_restarted_changes_nothing() {
    let fx = Fixture::new(SMALL);
    let (out, state) = (fx.path("out"), fx.path("state"));
    let args = fx.checkpointed(&out, &state, "200ms", 2);
    Running::start(WEIR, &args, fx.path("first.stderr")).finish();
    fx.assert_committed_equals_reference(&out, "the first run");
    let (rows, files) = (committed_rows(&out), committed_files(&out));

    let stderr = Running::start(WEIR, &args, fx.path("again.stderr")).finish();
    assert!(
        says(&stderr, "resuming"),
        "the restart did not resume from the final checkpoint:\n{stderr}"
    );
    assert_same_rows(
        &committed_rows(&out),
        &rows,
        "after restarting the finished job",
    );
    let after = committed_files(&out);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        files.keys().collect::<Vec<_>>(),
        "committed files after restarting the finished job"
    );
    for (name, bytes) in &files {
        assert!(
            after[name] == *bytes,
            "restarting the finished job changed {name}"
        );
    }
    let left = in_progress_files(&out);
    assert!(
        left.is_empty(),
        "uncommitted files after the restart: {left:?}"
    );
}

#[test]
fn a_savepoint_over_http_and_replays_derive_the_same_results() {
    let fx = Fixture::new(MEDIUM);
    let (out, state) = (fx.path("out"), fx.path("state"));
    let args = fx.checkpointed(&out, &state, "200ms", 1);
    // The same run with a metrics endpoint on a free port, for `weir savepoint`.
    let mut served = args.clone();
    let off = served.iter().position(|a| a == "off").unwrap();
    served[off] = "127.0.0.1:0".into();
    let run = Running::start(WEIR, &served, fx.path("served.stderr"));
    let addr = loop {
        let stderr = run.stderr();
        let addr = stderr.lines().find_map(|l| {
            l.strip_prefix("weir: metrics at http://")?
                .strip_suffix("/metrics")
                .map(str::to_string)
        });
        if let Some(addr) = addr {
            break addr;
        }
        assert!(
            run.started.elapsed() < RUN_LIMIT,
            "no metrics address:\n{stderr}"
        );
        thread::sleep(POLL);
    };
    let answer = Command::new(WEIR)
        .args(["savepoint", "--metrics-addr", &addr])
        .output()
        .unwrap();
    assert!(
        answer.status.success(),
        "weir savepoint: {}",
        String::from_utf8_lossy(&answer.stderr)
    );
    let savepoint = PathBuf::from(String::from_utf8(answer.stdout).unwrap().trim());
    assert!(
        savepoint.join("_manifest").is_file(),
        "{}",
        savepoint.display()
    );
    run.finish();
    fx.assert_committed_equals_reference(&out, "the run that took a savepoint");

    // Back to the savepoint: later parts are withdrawn and derived again.
    let mut from_savepoint = args.clone();
    from_savepoint.extend(["--from-savepoint".into(), savepoint.clone().into()]);
    let stderr = Running::start(WEIR, &from_savepoint, fx.path("restored.stderr")).finish();
    assert!(
        stderr
            .lines()
            .any(|l| says(l, "resuming") && l.contains("savepoint-")),
        "did not resume from the savepoint:\n{stderr}"
    );
    fx.assert_committed_equals_reference(&out, "after --from-savepoint");

    // From the beginning: all input read again, the same rows.
    let mut replay = args.clone();
    replay.extend(["--replay-from".into(), "beginning".into()]);
    let stderr = Running::start(WEIR, &replay, fx.path("replay.stderr")).finish();
    assert!(!says(&stderr, "resuming"), "{stderr}");
    assert_eq!(Summary::from_stderr(&stderr).unwrap().events_read, MEDIUM);
    fx.assert_committed_equals_reference(&out, "after --replay-from beginning");

    // From a point in event time: the rows of a run over only the events from then on.
    let from_ts = {
        let text = fs::read_to_string(&fx.input).unwrap();
        let middle = text.lines().nth(MEDIUM as usize / 2).unwrap();
        serde_json::from_str::<Value>(middle).unwrap()["ts"]
            .as_i64()
            .unwrap()
    };
    let later_input = fx.path("later.jsonl");
    let later: String = fs::read_to_string(&fx.input)
        .unwrap()
        .lines()
        .filter(|l| {
            serde_json::from_str::<Value>(l).unwrap()["ts"]
                .as_i64()
                .unwrap()
                >= from_ts
        })
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&later_input, later).unwrap();
    let later_reference = fx.path("later-reference.jsonl");
    Running::start(
        WEIR,
        &job_args(&later_input, &later_reference, 1),
        fx.path("later-reference.stderr"),
    )
    .finish();
    let mut replay_from_ts = args;
    replay_from_ts.extend(["--replay-from".into(), from_ts.to_string().into()]);
    Running::start(WEIR, &replay_from_ts, fx.path("replay-ts.stderr")).finish();
    assert_same_rows(
        &committed_rows(&out),
        &canonical_rows([later_reference]),
        "after --replay-from an event time",
    );
}

/// order-analytics holds most kinds of state there are: dedup ids with a TTL, window panes,
/// top-N candidates and per-customer running totals.
#[test]
fn order_analytics_with_dedup_top_n_and_alerts_survives_kill_9() {
    bundled_job_survives_kill_9("order-analytics", "orders", 1_500_000, 0x0DE5_0001);
}

/// saga-monitor keeps CEP state: buffered events and partial matches with deadlines.
#[test]
fn saga_monitor_cep_survives_kill_9() {
    bundled_job_survives_kill_9("saga-monitor", "sagas", 600_000, 0x5A6A_0001);
}

/// Runs `job` on `weir gen STREAM --events N`, killed at random moments at P = 1 and P = 2
/// alternately (so state is also redistributed), then to the end: it must commit what an
/// uninterrupted run writes.
fn bundled_job_survives_kill_9(job: &str, stream: &str, events: u64, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let input = path("input.jsonl");
    let generate: [OsString; 6] = [
        "gen".into(),
        stream.into(),
        "--events".into(),
        events.to_string().into(),
        "--output".into(),
        input.clone().into(),
    ];
    common::run_ok(WEIR, generate).unwrap();
    let args = |output: &Path, parallelism: usize| -> Vec<OsString> {
        vec![
            "run".into(),
            job.into(),
            "--input".into(),
            input.clone().into(),
            "--output".into(),
            output.into(),
            "--parallelism".into(),
            parallelism.to_string().into(),
            "--metrics-addr".into(),
            "off".into(),
            "--quiet".into(),
        ]
    };
    let reference = path("reference.jsonl");
    Running::start(WEIR, &args(&reference, 1), path("reference.stderr")).finish();

    let (out, state) = (path("out"), path("state"));
    let checkpointed = |parallelism: usize| {
        let mut a = args(&out, parallelism);
        a.extend([
            "--state-dir".into(),
            state.clone().into(),
            "--checkpoint-interval".into(),
            "200ms".into(),
        ]);
        a
    };
    let mut rng = SplitMix64::new(seed);
    let mut resumed = 0;
    for run in 0..4 {
        let (_, stderr) = run_and_kill(
            &checkpointed(run % 2 + 1),
            path(&format!("run-{run}.stderr")),
            Duration::from_millis(300 + rng.below(900)),
            &state,
            0,
        );
        resumed += usize::from(says(&stderr, "resuming"));
    }
    let stderr = Running::start(WEIR, &checkpointed(2), path("last.stderr")).finish();
    resumed += usize::from(says(&stderr, "resuming"));
    assert!(
        resumed > 0,
        "{job}: no run resumed from a checkpoint: the test proved nothing"
    );
    assert!(in_progress_files(&out).is_empty());
    assert_same_rows(
        &committed_rows(&out),
        &canonical_rows([reference]),
        &format!("{job} after kills"),
    );
}

#[test]
fn a_corrupt_latest_checkpoint_falls_back_to_the_previous_one() {
    let fx = Fixture::new(MEDIUM);
    let (out, state) = (fx.path("out"), fx.path("state"));
    let args = fx.checkpointed(&out, &state, "100ms", 2);
    let (ended, stderr) = run_and_kill(&args, fx.path("killed.stderr"), Duration::ZERO, &state, 2);
    assert_eq!(
        ended,
        Ended::Killed,
        "the job finished before two checkpoints were complete:\n{stderr}"
    );
    let complete = complete_checkpoints(&state);
    let [.., previous, newest] = complete.as_slice() else {
        panic!("fewer than 2 complete checkpoints: {complete:?}");
    };
    let corrupted = flip_a_byte(newest);

    let stderr = Running::start(WEIR, &args, fx.path("restart.stderr")).finish();
    assert!(
        stderr
            .lines()
            .any(|l| says(l, "unusable") && names_checkpoint(l, newest)),
        "stderr should call checkpoint {} unusable (a byte of {} was flipped):\n{stderr}",
        name(newest),
        corrupted.display()
    );
    assert!(
        stderr
            .lines()
            .any(|l| says(l, "resuming") && names_checkpoint(l, previous)),
        "the restart should resume from the checkpoint before, {}:\n{stderr}",
        name(previous)
    );
    fx.assert_committed_equals_reference(&out, "after falling back from a corrupt checkpoint");
}

// ------------------------------------------------------------------ the job

/// A temporary directory with a generated input and the rows of one uninterrupted run of the
/// job on it, without checkpoints.
struct Fixture {
    dir: TempDir,
    input: PathBuf,
    /// The rows of the uninterrupted run, as [`canonical_rows`].
    reference: Vec<String>,
    /// With late events: the late events of the uninterrupted run, as [`canonical_rows`].
    late_reference: Option<Vec<String>>,
}

impl Fixture {
    /// Input in which no event is late.
    fn new(events: u64) -> Fixture {
        Fixture::build(events, false)
    }

    /// Input in which some events are late, with the jobs sending them to `--late-output`.
    fn with_late_events(events: u64) -> Fixture {
        Fixture::build(events, true)
    }

    fn build(events: u64, late: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("events.jsonl");
        let gen_args: Vec<OsString> = vec![
            "gen".into(),
            "events".into(),
            "--output".into(),
            input.clone().into(),
            "--events".into(),
            events.to_string().into(),
            "--keys".into(),
            KEYS.to_string().into(),
            "--disorder-ms".into(),
            DISORDER_MS.to_string().into(),
        ];
        common::run_ok(WEIR, gen_args).unwrap();

        let output = dir.path().join("reference.jsonl");
        let late_output = dir.path().join("reference-late.jsonl");
        let mut args = job_args(&input, &output, 1);
        if late {
            with_late_output(&mut args, &late_output);
        }
        let stderr = Running::start(WEIR, &args, dir.path().join("reference.stderr")).finish();
        let summary = Summary::from_stderr(&stderr).unwrap();
        assert_eq!(
            (summary.events_read, summary.dead_letters),
            (events, 0),
            "reference run: events read, dead letters"
        );
        let reference = canonical_rows([output]);
        assert_eq!(
            summary.results_written,
            reference.len() as u64,
            "reference run: rows"
        );
        let late_reference = late.then(|| canonical_rows([late_output]));
        let late_rows = late_reference.as_ref().map_or(0, Vec::len) as u64;
        assert_eq!(summary.late_events, late_rows, "reference run: late events");
        assert_eq!(late, late_rows > 0, "reference run: late events");
        Fixture {
            dir,
            input,
            reference,
            late_reference,
        }
    }

    /// Where the checkpointed runs writing results to `out` put late events.
    fn late_dir(out: &Path) -> PathBuf {
        out.with_extension("late")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The job with a checkpoint every `interval`, committing to the directory `out`, with
    /// its state and checkpoints in `state`.
    fn checkpointed(
        &self,
        out: &Path,
        state: &Path,
        interval: &str,
        parallelism: usize,
    ) -> Vec<OsString> {
        let mut args = job_args(&self.input, out, parallelism);
        if self.late_reference.is_some() {
            with_late_output(&mut args, &Fixture::late_dir(out));
        }
        args.extend([
            OsString::from("--state-dir"),
            state.into(),
            "--checkpoint-interval".into(),
            interval.into(),
        ]);
        args
    }

    /// Checks that the job finished committing: no uncommitted file is left in `out`, and
    /// its committed rows are the reference rows.
    fn assert_committed_equals_reference(&self, out: &Path, what: &str) {
        let left = in_progress_files(out);
        assert!(
            left.is_empty(),
            "{what}: uncommitted files after a successful finish: {left:?}"
        );
        assert_same_rows(&committed_rows(out), &self.reference, what);
        if let Some(late) = &self.late_reference {
            let late_dir = Fixture::late_dir(out);
            let left = in_progress_files(&late_dir);
            assert!(
                left.is_empty(),
                "{what}: uncommitted late-output files after a successful finish: {left:?}"
            );
            assert_same_rows(
                &committed_rows(&late_dir),
                late,
                &format!("{what}, late output"),
            );
        }
    }
}

/// `weir run window-agg` on `input`, results to `output`, with the options all runs share.
fn job_args(input: &Path, output: &Path, parallelism: usize) -> Vec<OsString> {
    vec![
        "run".into(),
        "window-agg".into(),
        "--input".into(),
        input.into(),
        "--output".into(),
        output.into(),
        "--window".into(),
        WINDOW.into(),
        "--watermark-delay".into(),
        WATERMARK_DELAY.into(),
        "--state-cache-entries".into(),
        STATE_CACHE_ENTRIES.into(),
        "--parallelism".into(),
        parallelism.to_string().into(),
        "--metrics-addr".into(),
        "off".into(),
        "--quiet".into(),
    ]
}

/// Makes `args` (from [`job_args`]) wait only [`SHORT_WATERMARK_DELAY`], so that some
/// events are late, and send those to `late_output`. The input is read by one reader at
/// any parallelism (a piece as large as any input): with several readers, which events
/// beyond the bound are late depends on timing (docs/SEMANTICS.md, "A file read by several
/// workers"), and this test wants them to be a function of the input.
fn with_late_output(args: &mut Vec<OsString>, late_output: &Path) {
    let delay = args
        .iter()
        .position(|a| a == "--watermark-delay")
        .expect("job_args sets a watermark delay")
        + 1;
    args[delay] = SHORT_WATERMARK_DELAY.into();
    args.extend(["--late-output".into(), late_output.into()]);
    args.extend(["--split-bytes".into(), u64::MAX.to_string().into()]);
}

// ------------------------------------------------------------------ processes

/// Runs `args` and SIGKILLs the process once `delay` has passed and `state` holds at least
/// `checkpoints` complete checkpoints of window-agg, unless it ends first.
fn run_and_kill(
    args: &[OsString],
    stderr: PathBuf,
    delay: Duration,
    state: &Path,
    checkpoints: usize,
) -> (Ended, String) {
    let root = state.join("window-agg").join("checkpoints");
    kill::run_and_kill(WEIR, args, stderr, delay, &root, checkpoints)
}

/// True if `text` contains `word` (lower case), in any case.
fn says(text: &str, word: &str) -> bool {
    text.to_lowercase().contains(word)
}

// ------------------------------------------------------------------ files

/// The paths in `dir`, sorted; none if it does not exist. Entries the job removes meanwhile
/// (old checkpoints) are skipped.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries.filter_map(Result::ok).map(|e| e.path()).collect(),
        Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    paths.sort();
    paths
}

fn name(path: &Path) -> &str {
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
}

/// The complete checkpoints (`chk-NNNNNN` directories with a `_manifest`) of the job whose
/// state directory is `state`, oldest first.
fn complete_checkpoints(state: &Path) -> Vec<PathBuf> {
    entries(&state.join("window-agg").join("checkpoints"))
        .into_iter()
        .filter(|p| name(p).starts_with("chk-") && p.join("_manifest").is_file())
        .collect()
}

/// True if `line` names the checkpoint in `dir` (`chk-000007`), by that name or its number.
fn names_checkpoint(line: &str, dir: &Path) -> bool {
    let id: u64 = name(dir).trim_start_matches("chk-").parse().unwrap();
    line.contains(name(dir))
        || line
            .split(|c: char| !c.is_ascii_digit())
            .any(|n| n.parse::<u64>() == Ok(id))
}

/// Flips a byte in the middle of one file of the checkpoint in `dir` (not `_manifest`; an
/// `.sst` file if there is one) and returns the file. The file is replaced by a changed copy
/// rather than changed in place: RocksDB checkpoints hard-link the files they share with the
/// live database and with other checkpoints, which must stay intact.
fn flip_a_byte(dir: &Path) -> PathBuf {
    fn files_under(dir: &Path, files: &mut Vec<PathBuf>) {
        for path in entries(dir) {
            let kind = fs::symlink_metadata(&path).unwrap().file_type();
            if kind.is_dir() {
                files_under(&path, files);
            } else if kind.is_file() {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    files_under(dir, &mut files);
    files.retain(|f| name(f) != "_manifest" && fs::metadata(f).unwrap().len() > 0);
    // `.sst` files first (a stable sort: false < true).
    files.sort_by_key(|f| !name(f).ends_with(".sst"));
    let file = files
        .first()
        .unwrap_or_else(|| panic!("no file but _manifest in {}", dir.display()))
        .clone();
    let mut bytes = fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    fs::remove_file(&file).unwrap();
    fs::write(&file, bytes).unwrap();
    file
}

/// The committed part files (`part-*.jsonl`) of the output directory `out`.
fn part_files(out: &Path) -> Vec<PathBuf> {
    entries(out)
        .into_iter()
        .filter(|p| name(p).starts_with("part-") && name(p).ends_with(".jsonl"))
        .collect()
}

/// The names of the uncommitted (`.inprogress`) files in `out`.
fn in_progress_files(out: &Path) -> Vec<String> {
    entries(out)
        .iter()
        .map(|p| name(p).to_string())
        .filter(|n| n.ends_with(".inprogress"))
        .collect()
}

/// The committed part files of `out` with their contents, by name.
fn committed_files(out: &Path) -> BTreeMap<String, Vec<u8>> {
    part_files(out)
        .into_iter()
        .map(|p| (name(&p).to_string(), fs::read(&p).unwrap()))
        .collect()
}

/// The committed rows of `out`, as [`canonical_rows`]; uncommitted files are not read.
fn committed_rows(out: &Path) -> Vec<String> {
    canonical_rows(part_files(out))
}

// ------------------------------------------------------------------ rows

/// Every line of `files` parsed and printed again by serde_json (fields in name order, one
/// spelling per number), sorted: two outputs compare as multisets of rows.
fn canonical_rows(files: impl IntoIterator<Item = PathBuf>) -> Vec<String> {
    let mut rows = Vec::new();
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        for (i, line) in text.lines().enumerate() {
            let row: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}:{}: `{line}`: {e}", file.display(), i + 1));
            rows.push(row.to_string());
        }
    }
    rows.sort_unstable();
    rows
}

/// Checks that the sorted `actual` and `expected` hold the same rows; if not, says how many
/// are missing and extra (duplicated or wrong) and shows the first ones.
fn assert_same_rows(actual: &[String], expected: &[String], what: &str) {
    if actual == expected {
        return;
    }
    let (mut missing, mut extra) = (Vec::new(), Vec::new());
    let (mut a, mut e) = (actual.iter().peekable(), expected.iter().peekable());
    loop {
        let order = match (a.peek(), e.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => x.cmp(y),
        };
        match order {
            Ordering::Less => extra.extend(a.next()),
            Ordering::Greater => missing.extend(e.next()),
            Ordering::Equal => {
                a.next();
                e.next();
            }
        }
    }
    let first = |rows: &[&String]| -> String {
        rows.iter().take(5).map(|r| format!("\n    {r}")).collect()
    };
    panic!(
        "{what}: {} committed rows, {} expected: {} missing, {} extra (duplicated or wrong)\n  \
         first missing:{}\n  first extra:{}",
        actual.len(),
        expected.len(),
        missing.len(),
        extra.len(),
        first(&missing),
        first(&extra)
    );
}

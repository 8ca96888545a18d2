//! Exactly-once dead letters under SIGKILL: `weir run window-agg --checkpoint-interval ..`
//! on input with malformed lines at known places, killed at random moments and restarted,
//! must end with the dead-letter file holding each malformed line once, in input order,
//! with its true line number and bytes, and with the committed results of an uninterrupted
//! run.
//!
//! The malformed lines are of three kinds: text that is not JSON, bytes that are not UTF-8
//! (kept as `raw_base64`) and a JSON record cut short. The reference is twofold: the list of
//! malformed lines the test inserted (line number and bytes), and one uninterrupted run
//! without checkpoints on the same input (its results, and its dead-letter file byte for
//! byte, since a dead letter's text is a function of the line alone).
//!
//! The second test adds events the window's sum cannot take (`i64` overflow) and runs with
//! `--on-aggregate-error dead-letter` at parallelism 2: those letters leave the window by
//! its side output, from two worker threads, and meet the source's in one exactly-once sink.
//! Each must be there once too, though the order of the two kinds may differ between runs.

// This whole file is test code, but clippy's `allow-unwrap-in-tests` only covers the
// `#[test]` functions of an integration test, not its helpers (rust-clippy#11119).
#![allow(clippy::unwrap_used)]
// SIGKILL is a Unix notion.
#![cfg(unix)]

mod common;

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use common::checkpointed::{committed_rows, complete_checkpoints, in_progress_files, sorted_lines};
use common::kill::{self, Ended, Running};
use common::{SplitMix64, Summary};
use serde_json::Value;
use tempfile::TempDir;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
/// Good events of the input (about a second of work per run at a small state cache).
const EVENTS: u64 = 1_000_000;
/// A malformed line comes before every this-many-th good line.
const EVERY: usize = 1_999;
/// Padding of each malformed line: long enough that the sink's buffer goes to the file
/// every few dead letters, so that a kill finds lines written after the last checkpoint in
/// the file (what a restore must withdraw), not only in the dead process's buffer.
const PADDING: usize = 3_000;
/// Runs killed before the one let finish.
const KILLS: usize = 12;
/// An overflowing pair of events (with `--on-aggregate-error dead-letter` only) comes
/// before every this-many-th good line.
const OVERFLOW_EVERY: usize = 3_001;

/// The malformed lines, by kind: not JSON, not UTF-8, a record cut short.
fn malformed(n: usize) -> Vec<u8> {
    let pad = "p".repeat(PADDING);
    match n % 3 {
        0 => format!("not json, malformed line {n} {pad}").into_bytes(),
        1 => {
            let mut bytes = b"{\"ts\":1,\"key\":\"caf\xe9\xff".to_vec();
            bytes.extend_from_slice(format!("{n}{pad}\"}}").as_bytes());
            bytes
        }
        _ => format!("{{\"ts\":1000,\"key\":\"k{n}{pad}\",\"val").into_bytes(),
    }
}

#[test]
fn kill_9_keeps_each_dead_letter_exactly_once_and_the_results_exact() {
    let fx = Fixture::new(Rejects::Fail);
    let (tally, letters) = kill_restart_and_finish(&fx);
    check_letters(
        &letters,
        &fx.malformed,
        &format!("{tally}: {}", dead_letter_file(&fx.path("out")).display()),
    );
    assert!(
        letters == fx.reference_dead,
        "{tally}: the dead letters differ from the uninterrupted run's:\n--- got\n{}\n--- \
         reference\n{}",
        String::from_utf8_lossy(&letters),
        String::from_utf8_lossy(&fx.reference_dead)
    );
}

#[test]
fn kill_9_keeps_each_event_the_aggregate_refused_in_the_dead_letters_exactly_once() {
    let fx = Fixture::new(Rejects::DeadLetter);
    let (tally, letters) = kill_restart_and_finish(&fx);
    let what = format!("{tally}: {}", dead_letter_file(&fx.path("out")).display());
    // Source letters and refused events reach the sink from different threads: compared
    // by line number, each must be there once.
    let mut got = parse_letters(&letters, &what);
    got.sort();
    assert_eq!(
        got.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        fx.malformed.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        "{what}: line numbers of the dead letters (malformed and refused)"
    );
    assert!(got == fx.malformed, "{what}: the bytes of the dead letters");
    let refused = String::from_utf8_lossy(&letters)
        .lines()
        .filter(|l| l.contains("overflowed"))
        .count();
    assert_eq!(refused, fx.refused, "{what}: letters of refused events");
    assert_eq!(
        sorted_lines(&String::from_utf8_lossy(&letters)),
        sorted_lines(&String::from_utf8_lossy(&fx.reference_dead)),
        "{what}: the dead letters differ from the uninterrupted run's"
    );
}

/// Runs the job with checkpoints `KILLS` times, each killed at a random moment, then once
/// to the end; checks that the kills happened midway and the results are the
/// uninterrupted run's. Returns a tally of the kills and the dead-letter file.
fn kill_restart_and_finish(fx: &Fixture) -> (String, Vec<u8>) {
    let (out, state) = (fx.path("out"), fx.path("state"));
    let dead = dead_letter_file(&out);
    let mut args = fx.args(&fx.input, &out);
    args.extend([
        OsString::from("--state-dir"),
        state.clone().into(),
        "--checkpoint-interval".into(),
        "150ms".into(),
    ]);
    let root = state.join("window-agg").join("checkpoints");
    let mut rng = SplitMix64::new(0x00DE_AD1E);
    let (mut mid_run, mut resumed, mut partial_seen) = (0, 0, 0);
    for run in 0..KILLS {
        let delay = Duration::from_millis(100 + rng.below(700));
        let stderr = fx.path(&format!("run-{run}.stderr"));
        let (ended, stderr) = kill::run_and_kill(WEIR, &args, stderr, delay, &root, 0);
        if ended == Ended::Killed && complete_checkpoints(&root) > 0 {
            mid_run += 1;
            // Dead letters already in the file when the run died: some of them may be
            // after the checkpoint the next run resumes from, so they must not stay twice.
            let letters = fs::read(&dead).unwrap_or_default();
            if !letters.is_empty() && letters.len() < fx.reference_dead.len() {
                partial_seen += 1;
            }
        }
        if stderr.to_lowercase().contains("resuming") {
            resumed += 1;
        }
    }
    let stderr = Running::start(WEIR, &args, fx.path("last.stderr")).finish();
    let tally = format!(
        "{mid_run} of {KILLS} kills after a checkpoint, {partial_seen} with part of the dead \
         letters written; {resumed} runs resumed"
    );
    eprintln!("{tally}");
    assert!(
        mid_run > 0 && resumed > 0 && partial_seen > 0,
        "{tally}: the job was never killed midway with dead letters written, so this test \
         proved nothing"
    );
    assert!(
        stderr.to_lowercase().contains("resuming"),
        "the last run did not resume:\n{stderr}"
    );
    let left = in_progress_files(&out);
    assert!(left.is_empty(), "uncommitted files after the end: {left:?}");
    assert_eq!(
        committed_rows(&out),
        fx.reference_rows,
        "{tally}: the committed results differ from the uninterrupted run's"
    );
    (tally, fs::read(&dead).unwrap())
}

/// Checks that `letters` (a dead-letter file) holds exactly the `expected` lines (line
/// number, bytes), once each and in order.
fn check_letters(letters: &[u8], expected: &[(u64, Vec<u8>)], what: &str) {
    let got = parse_letters(letters, what);
    let lines = |v: &[(u64, Vec<u8>)]| v.iter().map(|(n, _)| *n).collect::<Vec<_>>();
    assert_eq!(
        lines(&got),
        lines(expected),
        "{what}: line numbers of the dead letters"
    );
    assert!(got == expected, "{what}: the bytes of the dead letters");
}

/// The line number and bytes of each dead letter of a dead-letter file, in file order.
fn parse_letters(letters: &[u8], what: &str) -> Vec<(u64, Vec<u8>)> {
    let text = std::str::from_utf8(letters).unwrap();
    text.lines()
        .map(|l| {
            let letter: Value = serde_json::from_str(l).unwrap_or_else(|e| {
                panic!("{what}: a dead letter that is not JSON ({e}), torn or run together: {l}")
            });
            let line = letter["line"].as_u64().unwrap();
            let raw = match (letter["raw"].as_str(), letter["raw_base64"].as_str()) {
                (Some(text), None) => text.as_bytes().to_vec(),
                (None, Some(encoded)) => base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .unwrap(),
                _ => panic!("{what}: neither raw nor raw_base64 alone in {l}"),
            };
            (line, raw)
        })
        .collect()
}

/// What the window does with an event its sum cannot take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rejects {
    /// The default: the job fails (the input has no such event).
    Fail,
    /// `--on-aggregate-error dead-letter` at parallelism 2; the input has such events.
    DeadLetter,
}

/// The input with malformed lines (and, refused by the window, overflowing events), and
/// what an uninterrupted run makes of it.
struct Fixture {
    dir: TempDir,
    rejects: Rejects,
    input: PathBuf,
    /// The lines that become dead letters, in input order: line number (1-based) and
    /// bytes (a refused event's dead letter holds it as decoded, which is its line).
    malformed: Vec<(u64, Vec<u8>)>,
    /// How many of them the window refused.
    refused: usize,
    reference_rows: Vec<String>,
    reference_dead: Vec<u8>,
}

impl Fixture {
    fn new(rejects: Rejects) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clean = dir.path().join("clean.jsonl");
        let gen_args: Vec<OsString> = vec![
            "gen".into(),
            "events".into(),
            "--output".into(),
            clean.clone().into(),
            "--events".into(),
            EVENTS.to_string().into(),
            "--keys".into(),
            "10000".into(),
            "--disorder-ms".into(),
            "1000".into(),
        ];
        common::run_ok(WEIR, gen_args).unwrap();
        let good = fs::read(&clean).unwrap();
        let mut input = Vec::with_capacity(good.len() + good.len() / EVERY * 64);
        let mut malformed_lines = Vec::new();
        let (mut line, mut refused, mut overflowing) = (0u64, 0, 0u64);
        let mut push = |input: &mut Vec<u8>, raw: &[u8]| {
            input.extend_from_slice(raw);
            input.push(b'\n');
            line += 1;
            line
        };
        for (i, text) in good.split_inclusive(|&b| b == b'\n').enumerate() {
            if i % EVERY == EVERY / 2 {
                let raw = malformed(malformed_lines.len());
                let at = push(&mut input, &raw);
                malformed_lines.push((at, raw));
            }
            if rejects == Rejects::DeadLetter && i % OVERFLOW_EVERY == OVERFLOW_EVERY / 3 {
                // Two events of a key of their own at the time of the next good line (so
                // not late): the window takes the first and refuses the second, whose sum
                // would overflow.
                let ts = serde_json::from_slice::<Value>(text).unwrap()["ts"]
                    .as_i64()
                    .unwrap();
                let raw = format!(
                    r#"{{"ts":{ts},"key":"overflow-{refused}","value":{}}}"#,
                    i64::MAX
                );
                push(&mut input, raw.as_bytes());
                let at = push(&mut input, raw.as_bytes());
                malformed_lines.push((at, raw.into_bytes()));
                refused += 1;
                overflowing += 2;
            }
            push(&mut input, text.strip_suffix(b"\n").unwrap_or(text));
        }
        let path = dir.path().join("dirty.jsonl");
        fs::write(&path, &input).unwrap();

        let mut fx = Fixture {
            dir,
            rejects,
            input: path,
            malformed: malformed_lines,
            refused,
            reference_rows: Vec::new(),
            reference_dead: Vec::new(),
        };
        let output = fx.path("reference.jsonl");
        let args = fx.args(&fx.input, &output);
        let stderr = Running::start(WEIR, &args, fx.path("reference.stderr")).finish();
        let summary = Summary::from_stderr(&stderr).unwrap();
        assert_eq!(
            (summary.events_read, summary.dead_letters),
            (EVENTS + overflowing, fx.malformed.len() as u64),
            "reference run: events read, dead letters"
        );
        fx.reference_rows = sorted_lines(&fs::read_to_string(&output).unwrap());
        fx.reference_dead = fs::read(dead_letter_file(&output)).unwrap();
        if rejects == Rejects::Fail {
            check_letters(&fx.reference_dead, &fx.malformed, "reference run");
        }
        fx
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `weir run window-agg` on `input`, results to `output`, with the options all runs
    /// share.
    fn args(&self, input: &Path, output: &Path) -> Vec<OsString> {
        let mut args = job_args(input, output);
        if self.rejects == Rejects::DeadLetter {
            args.extend(
                ["--on-aggregate-error", "dead-letter", "--parallelism", "2"].map(OsString::from),
            );
        }
        args
    }
}

/// Where window-agg puts the dead letters of a run writing its results to `output`.
fn dead_letter_file(output: &Path) -> PathBuf {
    PathBuf::from(format!("{}.dead.jsonl", output.display()))
}

/// `weir run window-agg` on `input`, results to `output`, with the options of every test.
fn job_args(input: &Path, output: &Path) -> Vec<OsString> {
    vec![
        "run".into(),
        "window-agg".into(),
        "--input".into(),
        input.into(),
        "--output".into(),
        output.into(),
        "--window".into(),
        "tumble:10s".into(),
        "--watermark-delay".into(),
        "2s".into(),
        // Few decoded entries in memory: the state lives in RocksDB and a run lasts long
        // enough to be killed midway.
        "--state-cache-entries".into(),
        "64".into(),
        "--metrics-addr".into(),
        "off".into(),
        "--quiet".into(),
    ]
}

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
    let fx = Fixture::new();
    let (out, state) = (fx.path("out"), fx.path("state"));
    let dead = dead_letter_file(&out);
    let mut args = job_args(&fx.input, &out);
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
    let letters = fs::read(&dead).unwrap();
    check_letters(
        &letters,
        &fx.malformed,
        &format!("{tally}: {}", dead.display()),
    );
    assert!(
        letters == fx.reference_dead,
        "{tally}: the dead letters differ from the uninterrupted run's:\n--- got\n{}\n--- \
         reference\n{}",
        String::from_utf8_lossy(&letters),
        String::from_utf8_lossy(&fx.reference_dead)
    );
}

/// Checks that `letters` (a dead-letter file) holds exactly the `expected` lines (line
/// number, bytes), once each and in order.
fn check_letters(letters: &[u8], expected: &[(u64, Vec<u8>)], what: &str) {
    let text = std::str::from_utf8(letters).unwrap();
    let got: Vec<(u64, Vec<u8>)> = text
        .lines()
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
        .collect();
    let lines = |v: &[(u64, Vec<u8>)]| v.iter().map(|(n, _)| *n).collect::<Vec<_>>();
    assert_eq!(
        lines(&got),
        lines(expected),
        "{what}: line numbers of the dead letters"
    );
    assert!(got == expected, "{what}: the bytes of the dead letters");
}

/// The input with malformed lines, and what an uninterrupted run makes of it.
struct Fixture {
    dir: TempDir,
    input: PathBuf,
    /// The malformed lines inserted: line number (1-based) and bytes.
    malformed: Vec<(u64, Vec<u8>)>,
    reference_rows: Vec<String>,
    reference_dead: Vec<u8>,
}

impl Fixture {
    fn new() -> Fixture {
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
        let mut line = 0u64;
        for (i, text) in good.split_inclusive(|&b| b == b'\n').enumerate() {
            if i % EVERY == EVERY / 2 {
                let raw = malformed(malformed_lines.len());
                input.extend_from_slice(&raw);
                input.push(b'\n');
                line += 1;
                malformed_lines.push((line, raw));
            }
            input.extend_from_slice(text);
            line += 1;
        }
        let path = dir.path().join("dirty.jsonl");
        fs::write(&path, &input).unwrap();

        let output = dir.path().join("reference.jsonl");
        let args = job_args(&path, &output);
        let stderr = Running::start(WEIR, &args, dir.path().join("reference.stderr")).finish();
        let summary = Summary::from_stderr(&stderr).unwrap();
        assert_eq!(
            (summary.events_read, summary.dead_letters),
            (EVENTS, malformed_lines.len() as u64),
            "reference run: events read, dead letters"
        );
        let reference_rows = sorted_lines(&fs::read_to_string(&output).unwrap());
        let reference_dead = fs::read(dead_letter_file(&output)).unwrap();
        check_letters(&reference_dead, &malformed_lines, "reference run");
        Fixture {
            dir,
            input: path,
            malformed: malformed_lines,
            reference_rows,
            reference_dead,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Where window-agg puts the dead letters of a run writing its results to `output`.
fn dead_letter_file(output: &Path) -> PathBuf {
    PathBuf::from(format!("{}.dead.jsonl", output.display()))
}

/// `weir run window-agg` on `input`, results to `output`, with the options all runs share.
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

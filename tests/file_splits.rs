//! One file read by several workers: `weir run window-agg --parallelism P` on a JSON-lines
//! file cut into pieces (`--split-bytes`), through the real binary.
//!
//! The input is `weir gen events` (up to 1 s out of order, a 2 s watermark delay: no event
//! is late, so results are a function of the input alone) with malformed lines put in at
//! known lines. The tests prove that:
//! - two and three readers, with pieces cut inside lines, give the results and the dead
//!   letters of one reader: every malformed line once, with its true line number and bytes;
//! - readers killed with SIGKILL after a checkpoint resume at another parallelism
//!   (2 -> 3, then one reader of the whole file) and the committed results and dead
//!   letters are still each exactly once.

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

use common::checkpointed::{assert_same_rows, committed_rows, in_progress_files, sorted_lines};
use common::kill::{self, Ended, Running};
use serde_json::Value;
use tempfile::TempDir;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");
/// Good events of the input (about 14 MB).
const EVENTS: u64 = 300_000;
/// A malformed line comes before every this-many-th good line.
const EVERY: usize = 4_999;

#[test]
fn two_and_three_readers_give_the_results_and_dead_letters_of_one() {
    let fx = Fixture::new();
    for (parallelism, split_bytes) in [(2, "100000"), (3, "77777"), (2, "1")] {
        let what = format!("P={parallelism}, pieces of {split_bytes} bytes");
        let out = fx.path(&format!("out-{parallelism}-{split_bytes}.jsonl"));
        let mut args = fx.args(&out, parallelism);
        args.extend(["--split-bytes".into(), split_bytes.into()]);
        let stderr = Running::start(WEIR, &args, fx.path("split.stderr")).finish();
        assert!(
            stderr.contains(&format!("{} dead letters", fx.malformed.len())),
            "{what}: {stderr}"
        );
        let rows = sorted_lines(&fs::read_to_string(&out).unwrap());
        assert_same_rows(&rows, &fx.reference_rows, &what);
        assert_eq!(letters(&out), fx.malformed, "{what}: dead letters");
    }
}

/// `account-balances` alerts on the third withdrawal of an account within a minute, in the
/// order of the input: it reads a file with one reader at any parallelism, since readers of
/// pieces would deliver an account's events interleaved by timing.
#[test]
fn a_job_that_follows_input_order_reads_a_file_with_one_reader() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("accounts.jsonl");
    let gen_args: [OsString; 8] = [
        "gen".into(),
        "accounts".into(),
        "--events".into(),
        "200000".into(),
        "--keys".into(),
        "2000".into(),
        "--output".into(),
        input.clone().into(),
    ];
    common::run_ok(WEIR, gen_args).unwrap();
    let run = |parallelism: &str, split_bytes: &str| {
        let out = dir
            .path()
            .join(format!("out-{parallelism}-{split_bytes}.jsonl"));
        let args: Vec<OsString> = vec![
            "run".into(),
            "account-balances".into(),
            "--input".into(),
            input.clone().into(),
            "--output".into(),
            out.clone().into(),
            "--parallelism".into(),
            parallelism.into(),
            "--split-bytes".into(),
            split_bytes.into(),
            "--metrics-addr".into(),
            "off".into(),
            "--quiet".into(),
        ];
        Running::start(WEIR, &args, dir.path().join("run.stderr")).finish();
        sorted_lines(&fs::read_to_string(&out).unwrap())
    };
    let one_reader = run("1", "8388608");
    assert!(
        one_reader.iter().any(|l| l.contains("rapid_withdrawals")),
        "the input must make alerts"
    );
    assert_same_rows(
        &run("2", "4096"),
        &one_reader,
        "account-balances at P=2 with pieces of 4096 bytes",
    );
}

#[test]
fn readers_killed_after_a_checkpoint_resume_at_another_parallelism_exactly_once() {
    let fx = Fixture::new();
    let (out, state) = (fx.path("out"), fx.path("state"));
    let root = state.join("window-agg").join("checkpoints");
    let args = |parallelism, split_bytes: &str| {
        let mut args = fx.args(&out, parallelism);
        args.extend(
            [
                "--split-bytes",
                split_bytes,
                "--checkpoint-interval",
                "50ms",
                "--state-dir",
            ]
            .map(OsString::from),
        );
        args.push(state.clone().into());
        // A small cache: the state lives in RocksDB and a run lasts long enough to kill.
        args.extend(["--state-cache-entries", "16"].map(OsString::from));
        args
    };
    for (run, parallelism) in [2, 3].into_iter().enumerate() {
        let stderr = fx.path(&format!("killed-{run}.stderr"));
        let (ended, stderr) = kill::run_and_kill(
            WEIR,
            &args(parallelism, "150000"),
            stderr,
            Duration::from_millis(100),
            &root,
            run + 1,
        );
        assert_eq!(
            ended,
            Ended::Killed,
            "P={parallelism}: finished before a kill after a checkpoint:\n{stderr}"
        );
    }
    // Pieces larger than the file: one reader reads what the three left.
    let one_reader = args(1, "100000000");
    let stderr = Running::start(WEIR, &one_reader, fx.path("last.stderr")).finish();
    assert!(stderr.contains("resuming"), "{stderr}");
    assert_eq!(in_progress_files(&out), Vec::<String>::new());
    let what = "killed at P=2 and P=3, finished by one reader";
    assert_same_rows(&committed_rows(&out), &fx.reference_rows, what);
    assert_eq!(letters(&out), fx.malformed, "{what}: dead letters");
}

/// The line number and text of each dead letter of the run that wrote `output` (a file,
/// or a part-file directory), by line.
fn letters(output: &Path) -> Vec<(u64, String)> {
    let file = PathBuf::from(format!("{}.dead.jsonl", output.display()));
    let text = fs::read_to_string(&file).unwrap();
    let mut letters: Vec<(u64, String)> = text
        .lines()
        .map(|l| {
            let letter: Value = serde_json::from_str(l).unwrap();
            let raw = letter["raw"].as_str().unwrap_or_default().to_string();
            (letter["line"].as_u64().unwrap(), raw)
        })
        .collect();
    letters.sort();
    letters
}

/// The input with malformed lines, and what one reader makes of it.
struct Fixture {
    dir: TempDir,
    input: PathBuf,
    /// Line number (1-based) and text of each malformed line.
    malformed: Vec<(u64, String)>,
    reference_rows: Vec<String>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clean = dir.path().join("clean.jsonl");
        let gen_args = [
            "gen",
            "events",
            "--events",
            &EVENTS.to_string(),
            "--keys",
            "1000",
            "--disorder-ms",
            "1000",
            "--output",
        ]
        .map(OsString::from);
        let mut gen_args = gen_args.to_vec();
        gen_args.push(clean.clone().into());
        common::run_ok(WEIR, gen_args).unwrap();
        let mut input = String::new();
        let mut malformed = Vec::new();
        let mut line = 0;
        for (i, text) in fs::read_to_string(&clean).unwrap().lines().enumerate() {
            if i % EVERY == EVERY / 2 {
                let bad = format!("not json, malformed line {}", malformed.len());
                line += 1;
                input.push_str(&bad);
                input.push('\n');
                malformed.push((line, bad));
            }
            line += 1;
            input.push_str(text);
            input.push('\n');
        }
        let path = dir.path().join("dirty.jsonl");
        fs::write(&path, input).unwrap();
        let mut fx = Fixture {
            dir,
            input: path,
            malformed,
            reference_rows: Vec::new(),
        };
        let out = fx.path("reference.jsonl");
        Running::start(WEIR, &fx.args(&out, 1), fx.path("reference.stderr")).finish();
        fx.reference_rows = sorted_lines(&fs::read_to_string(&out).unwrap());
        assert_eq!(
            letters(&out),
            fx.malformed,
            "the reference run's dead letters"
        );
        fx
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `weir run window-agg` on the input at `parallelism`, results to `output`.
    fn args(&self, output: &Path, parallelism: usize) -> Vec<OsString> {
        let mut args: Vec<OsString> = ["run", "window-agg", "--input"].map(Into::into).to_vec();
        args.push(self.input.clone().into());
        args.push("--output".into());
        args.push(output.into());
        args.extend(
            [
                "--window",
                "tumble:10s",
                "--watermark-delay",
                "2s",
                "--metrics-addr",
                "off",
                "--parallelism",
                &parallelism.to_string(),
            ]
            .map(OsString::from),
        );
        args
    }
}

//! Operator mistakes that used to lose or duplicate results while weir exited 0, through
//! the real binary: each must now be refused in one clear line, and lose nothing.
//!
//! - Two runs on one state directory: the second is refused, naming the first's pid, and
//!   the first goes on checkpointing; a later resume is exact.
//! - A job changed between restarts (window-agg checkpointed with `--top 3`, restarted
//!   without it): refused, naming the top-N state, unless `--allow-non-restored-state`.
//! - A corrupt file hard-linked into every retained checkpoint: the restart is refused,
//!   naming the file and the flags that start anyway, and leaves the checkpoints in place;
//!   `--replay-from beginning` then derives exact output.
//! - A run without `--state-dir` killed with -9 leaves its temporary RocksDB state behind:
//!   the next such run removes it (and nothing of a run still going).
//!
//! Each run reads its input with `--follow`, so it is still running (and checkpointing)
//! when the test acts, and is ended by SIGKILL.

// This whole file is test code (clippy's allow-unwrap-in-tests misses helpers).
#![allow(clippy::unwrap_used)]
#![cfg(unix)]

mod common;

use std::fs::{self, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::checkpointed::{committed_rows, complete_checkpoint_dirs};
use common::follow_run::{checkpoints_of, run, Fixture, Process, LIMIT};

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn a_second_run_on_a_state_dir_in_use_is_refused_and_the_first_goes_on() {
    let fx = Fixture::new(WEIR);
    let reference = fx.reference(&[]);
    let (out, state) = (fx.path("out"), fx.path("state"));
    let checkpoints = checkpoints_of(&state);
    let mut first = Process::start(
        WEIR,
        &fx.checkpointed(&out, &state, &["--follow"]),
        fx.path("first.stderr"),
    );
    let seen = first.wait_for_checkpoint_after(&checkpoints, 0);

    let (ok, says) = run(WEIR, &fx.checkpointed(&out, &state, &[]));
    assert!(!ok, "a second run on the same state dir succeeded:\n{says}");
    let pid = format!("pid {}", first.child.id());
    assert!(
        says.contains("in use by another weir run") && says.contains(&pid),
        "the refusal should name the holder ({pid}):\n{says}"
    );
    assert_eq!(
        says.lines().filter(|l| l.contains("in use")).count(),
        1,
        "one line says why:\n{says}"
    );
    // The first run was not disturbed: it is alive and still completes checkpoints.
    first.wait_for_checkpoint_after(&checkpoints, seen);
    drop(first);

    let (ok, says) = run(WEIR, &fx.checkpointed(&out, &state, &[]));
    assert!(ok, "the resume after the first run died failed:\n{says}");
    assert!(says.contains("resuming"), "{says}");
    assert_eq!(committed_rows(&out), reference, "rows lost or duplicated");
}

#[test]
fn a_job_changed_between_restarts_is_refused_unless_its_dropped_state_is_allowed() {
    let fx = Fixture::new(WEIR);
    let (out, state) = (fx.path("out"), fx.path("state"));
    let checkpoints = checkpoints_of(&state);
    let mut ranked = Process::start(
        WEIR,
        &fx.checkpointed(&out, &state, &["--top", "3", "--follow"]),
        fx.path("ranked.stderr"),
    );
    ranked.wait_for_checkpoint_after(&checkpoints, 1);
    drop(ranked);
    let before = complete_checkpoint_dirs(&checkpoints);

    let (ok, says) = run(WEIR, &fx.checkpointed(&out, &state, &[]));
    assert!(
        !ok,
        "the job without --top took the --top job's state:\n{says}"
    );
    assert!(
        says.contains("state of `top-n`") && says.contains("--allow-non-restored-state"),
        "the refusal should name the top-N state and the flag:\n{says}"
    );
    assert_eq!(
        complete_checkpoint_dirs(&checkpoints),
        before,
        "a refused restart must leave the checkpoints as they were"
    );

    let (ok, says) = run(
        WEIR,
        &fx.checkpointed(&out, &state, &["--allow-non-restored-state"]),
    );
    assert!(
        ok,
        "--allow-non-restored-state should start the job:\n{says}"
    );
    assert!(
        says.contains("dropping restored state") && says.contains("`top-n`"),
        "{says}"
    );
    assert!(
        says.contains("resuming"),
        "the window's state is kept:\n{says}"
    );
}

/// A non-empty file of the newest checkpoint that is the same file (inode) in every one
/// of `dirs`, if there is one.
fn file_shared_by_all(dirs: &[PathBuf]) -> Option<PathBuf> {
    let inodes = |dir: &Path| {
        let mut files = Vec::new();
        files_under(dir, &mut files);
        files
            .into_iter()
            .filter(|f| !f.ends_with("_manifest"))
            .map(|f| (fs::metadata(&f).unwrap().ino(), f))
            .collect::<Vec<_>>()
    };
    let (newest, older) = dirs.split_last()?;
    inodes(newest)
        .into_iter()
        .find(|(ino, f)| {
            fs::metadata(f).unwrap().len() > 0
                && older
                    .iter()
                    .all(|d| inodes(d).iter().any(|(i, _)| i == ino))
        })
        .map(|(_, f)| f)
}

#[test]
fn a_corrupt_file_in_every_checkpoint_refuses_the_restart_instead_of_starting_empty() {
    let fx = Fixture::new(WEIR);
    let reference = fx.reference(&[]);
    let (out, state) = (fx.path("out"), fx.path("state"));
    let checkpoints = checkpoints_of(&state);
    // Three retained checkpoints taken after the input was read share their RocksDB
    // files by hard links. The test cannot see when the source reached the end of the
    // file, and on a loaded machine RocksDB may still flush or compact between
    // checkpoints; so if the retained ones share no file yet, the run is resumed from
    // its checkpoint (reading nothing new) until they do, a bounded number of times.
    let mut latest = 0;
    let mut found = None;
    for attempt in 0..5 {
        let mut follower = Process::start(
            WEIR,
            &fx.checkpointed(&out, &state, &["--follow"]),
            fx.path(&format!("run{attempt}.stderr")),
        );
        latest = follower.wait_for_checkpoint_after(&checkpoints, latest);
        let first = latest;
        while complete_checkpoint_dirs(&checkpoints).len() < 3 || latest < first + 3 {
            latest = follower.wait_for_checkpoint_after(&checkpoints, latest);
        }
        drop(follower);
        let dirs = complete_checkpoint_dirs(&checkpoints);
        if let Some(file) = file_shared_by_all(&dirs) {
            found = Some((dirs, file));
            break;
        }
    }
    let (dirs, shared) = found.unwrap_or_else(|| {
        panic!(
            "no file is shared by every retained checkpoint after 5 quiet runs: {:?}",
            complete_checkpoint_dirs(&checkpoints)
        )
    });
    // Flipped in place: every checkpoint linking it sees the change.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&shared)
        .unwrap();
    let middle = file.metadata().unwrap().len() / 2;
    let mut byte = [0u8];
    file.seek(SeekFrom::Start(middle)).unwrap();
    file.read_exact(&mut byte).unwrap();
    file.seek(SeekFrom::Start(middle)).unwrap();
    file.write_all(&[byte[0] ^ 0xFF]).unwrap();
    drop(file);
    let name = shared.file_name().unwrap().to_string_lossy().into_owned();

    let (ok, says) = run(WEIR, &fx.checkpointed(&out, &state, &[]));
    assert!(!ok, "weir started although no checkpoint verifies:\n{says}");
    assert!(
        says.contains("none of the checkpoints")
            && says.contains(&name)
            && says.contains("--replay-from beginning"),
        "the refusal should name the bad file ({name}) and the way to start anyway:\n{says}"
    );
    assert_eq!(
        complete_checkpoint_dirs(&checkpoints),
        dirs,
        "the refused restart must leave every checkpoint in place"
    );
    let (ok, says) = run(WEIR, &fx.checkpointed(&out, &state, &[]));
    assert!(
        !ok,
        "a second attempt must be refused the same way:\n{says}"
    );

    let (ok, says) = run(
        WEIR,
        &fx.checkpointed(&out, &state, &["--replay-from", "beginning"]),
    );
    assert!(ok, "--replay-from beginning should start over:\n{says}");
    assert_eq!(committed_rows(&out), reference, "rows after the replay");
}

/// The temporary state directories (`weir-state-*`) under `temp`.
fn temporary_state_dirs(temp: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(temp)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("weir-state-")
        })
        .collect();
    dirs.sort();
    dirs
}

/// Starts `weir run window-agg --follow` into `name.jsonl` with `TMPDIR` at `temp`, and
/// waits until it holds a temporary state directory besides those in `others`; returns it
/// with the process.
fn start_following(
    fx: &Fixture,
    temp: &Path,
    name: &str,
    others: &[PathBuf],
) -> (Process, PathBuf) {
    let mut run = Process::start_with_env(
        WEIR,
        &fx.args(&fx.path(&format!("{name}.jsonl")), &["--follow"]),
        fx.path(&format!("{name}.stderr")),
        &[("TMPDIR", temp.as_os_str())],
    );
    let started = std::time::Instant::now();
    loop {
        let new = temporary_state_dirs(temp)
            .into_iter()
            .find(|d| !others.contains(d) && d.join("window-agg/weir.lock").exists());
        if let Some(dir) = new {
            return (run, dir);
        }
        assert!(
            run.is_running() && started.elapsed() < LIMIT,
            "no temporary state directory; stderr:\n{}",
            run.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn the_temporary_state_of_a_run_killed_with_9_is_removed_by_the_next_run() {
    let fx = Fixture::new(WEIR);
    let temp = fx.path("tmp");
    fs::create_dir(&temp).unwrap();
    // Without --state-dir, a run keeps its RocksDB state in a temporary directory. One
    // run goes on throughout; another is killed with -9 and cannot remove its directory.
    let (mut going, going_dir) = start_following(&fx, &temp, "going", &[]);
    let (mut killed, killed_dir) =
        start_following(&fx, &temp, "killed", std::slice::from_ref(&going_dir));
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let mut both = vec![going_dir.clone(), killed_dir.clone()];
    both.sort();
    assert_eq!(temporary_state_dirs(&temp), both);

    // The next run removes the killed run's directory, says so, and leaves the running
    // one's; its own goes when it ends.
    let next = std::process::Command::new(WEIR)
        .args(fx.args(&fx.path("next.jsonl"), &[]))
        .env("TMPDIR", &temp)
        .output()
        .unwrap();
    let says = String::from_utf8_lossy(&next.stderr);
    assert!(next.status.success(), "{says}");
    assert!(
        says.contains(&format!("removed {}", killed_dir.display())),
        "the next run should say it removed the killed run's state:\n{says}"
    );
    assert_eq!(temporary_state_dirs(&temp), vec![going_dir]);
    assert!(going.is_running(), "{}", going.stderr());
}

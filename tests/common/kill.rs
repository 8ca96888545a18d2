//! Runs of a weir binary that a test kills with SIGKILL at chosen moments (the kill -9
//! tests): a running process whose stderr goes to a file, killed and reaped when dropped so
//! a failing test leaves none behind.

use std::ffi::OsString;
use std::fs::{self, File};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::checkpointed::{complete_checkpoints, latest_checkpoint};

/// Longest a run may take before the test kills it and fails.
pub(crate) const RUN_LIMIT: Duration = Duration::from_secs(120);
/// How often the tests look at a running process and its checkpoints.
pub(crate) const POLL: Duration = Duration::from_millis(10);
const SIGKILL: i32 = 9;

/// A running binary whose stderr goes to a file.
pub(crate) struct Running {
    child: Child,
    stderr: PathBuf,
    pub(crate) started: Instant,
}

/// How a run the test meant to kill ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// The SIGKILL landed.
    Killed,
    /// The job had already finished, successfully.
    Finished,
}

impl Running {
    pub(crate) fn start(bin: &str, args: &[OsString], stderr: PathBuf) -> Running {
        let mut command = Command::new(bin);
        command.args(args);
        Running::spawn(command, stderr)
    }

    /// Starts `command` (its environment and arguments set by the caller).
    pub(crate) fn spawn(mut command: Command, stderr: PathBuf) -> Running {
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Running {
            child,
            stderr,
            started: Instant::now(),
        }
    }

    pub(crate) fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// What the process wrote to stderr so far.
    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.stderr).unwrap()).into_owned()
    }

    /// SIGKILLs the process unless it exited already, and reaps it; a process that exited
    /// by itself must have succeeded. Returns how it ended and its stderr.
    pub(crate) fn kill(mut self) -> (Ended, String) {
        // Signalling a process that exited but is not reaped yet does nothing, and the exit
        // status tells which came first.
        let _ = self.child.kill();
        let status = self.child.wait().unwrap();
        let stderr = self.stderr();
        if status.signal() == Some(SIGKILL) {
            return (Ended::Killed, stderr);
        }
        assert!(
            status.success(),
            "weir failed ({status}) before it was killed; stderr:\n{stderr}"
        );
        (Ended::Finished, stderr)
    }

    /// Waits for the process to end by itself (failing, and killing it, after `RUN_LIMIT`)
    /// and checks that it succeeded. Returns its stderr.
    pub(crate) fn finish(mut self) -> String {
        while self.is_running() {
            assert!(
                self.started.elapsed() < RUN_LIMIT,
                "weir did not finish within {RUN_LIMIT:?}; stderr:\n{}",
                self.stderr()
            );
            thread::sleep(POLL);
        }
        let status = self.child.wait().unwrap();
        let stderr = self.stderr();
        assert!(
            status.success(),
            "weir failed ({status}); stderr:\n{stderr}"
        );
        stderr
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Both do nothing once the process was reaped (std never signals a reaped pid).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `bin args` and SIGKILLs the process once `delay` has passed and the checkpoint root
/// `checkpoints_root` holds at least `checkpoints` complete checkpoints (failing after
/// `RUN_LIMIT`), unless it ends first.
pub(crate) fn run_and_kill(
    bin: &str,
    args: &[OsString],
    stderr: PathBuf,
    delay: Duration,
    checkpoints_root: &Path,
    checkpoints: usize,
) -> (Ended, String) {
    run_and_kill_when(bin, args, stderr, delay, || {
        complete_checkpoints(checkpoints_root) >= checkpoints
    })
}

/// Runs `bin args` and SIGKILLs the process once `delay` has passed and `ready` holds
/// (looked at every `POLL`; failing if it does not within `RUN_LIMIT`), unless the process
/// ends first.
pub(crate) fn run_and_kill_when(
    bin: &str,
    args: &[OsString],
    stderr: PathBuf,
    delay: Duration,
    mut ready: impl FnMut() -> bool,
) -> (Ended, String) {
    let mut run = Running::start(bin, args, stderr);
    thread::sleep(delay);
    while run.is_running() && !ready() {
        assert!(
            run.started.elapsed() < RUN_LIMIT,
            "the moment to kill did not come within {RUN_LIMIT:?}; stderr:\n{}",
            run.stderr()
        );
        thread::sleep(POLL);
    }
    run.kill()
}

/// The directory and parallelism a kill test gave its child in the environment variable
/// `env`, as `dir|parallelism` (see [`kill_child_test_after`]).
pub(crate) fn child_job_spec(env: &str) -> (PathBuf, usize) {
    let spec = std::env::var(env).expect("set by the parent test");
    let (dir, parallelism) = spec.rsplit_once('|').unwrap();
    (PathBuf::from(dir), parallelism.parse().unwrap())
}

/// Runs this test binary's ignored test `child_test` in a child process with the
/// environment variable `env.0` set to `env.1`, and SIGKILLs it once the checkpoint root
/// `root` holds checkpoint number `checkpoints` (failing after `RUN_LIMIT`); asserts that
/// the kill landed before the child finished.
pub(crate) fn kill_child_test_after(
    child_test: &str,
    env: (&str, String),
    stderr: PathBuf,
    root: &Path,
    checkpoints: u64,
) {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap());
    child
        .args([child_test, "--exact", "--ignored", "--nocapture"])
        .env(env.0, env.1);
    let mut run = Running::spawn(child, stderr);
    while run.is_running() && latest_checkpoint(root) < checkpoints {
        assert!(run.started.elapsed() < RUN_LIMIT, "{}", run.stderr());
        thread::sleep(POLL);
    }
    let (ended, stderr) = run.kill();
    assert_eq!(ended, Ended::Killed, "the child finished first:\n{stderr}");
}

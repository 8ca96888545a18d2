//! Controlling a running job from outside its threads: savepoints on demand (the metrics
//! server's `POST /savepoint`, `weir savepoint`), stopping it gracefully (SIGINT/SIGTERM in
//! the `weir` binary), and cancelling it (a partition task whose partition the Kafka group
//! moved elsewhere).
//!
//! Stop and cancel differ as in Flink: a stop ends the sources where they are, lets what is
//! in flight drain, takes a final checkpoint (with checkpoints on) and closes the sinks, so
//! the run ends cleanly and a restart resumes exactly where it stopped; a cancel ends like a
//! crash, committing nothing more.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::coordinator::Checkpointing;
use super::history::{CheckpointHistory, CheckpointsSnapshot};

/// How long a stop with a savepoint waits for a job still being built to start running.
const SAVEPOINT_WAIT_FOR_RUN: Duration = Duration::from_secs(600);

/// A handle on a job's checkpointing while it runs.
#[derive(Debug, Default)]
pub struct JobControl {
    checkpointing: Mutex<Attached>,
    /// Signalled when a run attaches its checkpointing (or ends).
    attached: Condvar,
    history: Arc<CheckpointHistory>,
    cancel: Mutex<Request>,
    stop: Mutex<Request>,
}

/// Where the job's run is, for savepoints: one asked for while the job is still being
/// built waits for its run to start instead of failing.
#[derive(Debug, Default)]
enum Attached {
    /// No run has started yet.
    #[default]
    NotYet,
    /// A run is going, with its checkpointing if it checkpoints.
    Running(Option<Arc<Checkpointing>>),
    /// The run ended.
    Ended,
}

/// Whether the job was asked to cancel (or stop), and the running job's flag for it. The
/// cancel flag is also set by the job's tasks when one of them fails.
#[derive(Debug, Default)]
struct Request {
    requested: bool,
    flag: Option<Arc<AtomicBool>>,
}

impl Request {
    fn request(request: &Mutex<Request>) {
        let mut request = request.lock().unwrap_or_else(|p| p.into_inner());
        request.requested = true;
        if let Some(flag) = &request.flag {
            flag.store(true, Ordering::SeqCst);
        }
    }

    fn requested(request: &Mutex<Request>) -> bool {
        request.lock().unwrap_or_else(|p| p.into_inner()).requested
    }

    /// Gives the request the flag of the run starting now (set at once if the request came
    /// first).
    fn attach(request: &Mutex<Request>, flag: Arc<AtomicBool>) {
        let mut request = request.lock().unwrap_or_else(|p| p.into_inner());
        if request.requested {
            flag.store(true, Ordering::SeqCst);
        }
        request.flag = Some(flag);
    }
}

impl JobControl {
    /// Stops the job as a crash would, without a final checkpoint: its tasks end, nothing
    /// more is committed, and [`crate::Job::run`] returns [`crate::EngineError::Cancelled`].
    /// A job with checkpoints resumes from its newest one when run again. Works before the
    /// run has started too (it then ends at once).
    pub fn cancel(&self) {
        Request::request(&self.cancel);
    }

    /// True once [`JobControl::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        Request::requested(&self.cancel)
    }

    /// Stops the job gracefully, as Flink's `stop` (without `--drain`): every source ends
    /// where it is, without the end-of-input watermark, so windows still open stay open in
    /// state; what is in flight drains to the sinks; with checkpoints a final checkpoint is
    /// taken and committed, so running the job again resumes exactly where it stopped; the
    /// sinks are flushed and closed. [`crate::Job::run`] then returns normally with
    /// [`crate::RunSummary::stopped`] set. Works before the run has started too.
    pub fn stop(&self) {
        Request::request(&self.stop);
    }

    /// True once [`JobControl::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        Request::requested(&self.stop)
    }

    /// Gives the control the cancel flag and the stop flag of the run starting now (set at
    /// once if a cancel or stop came first).
    pub(crate) fn attach_flags(&self, cancelled: Arc<AtomicBool>, stopping: Arc<AtomicBool>) {
        Request::attach(&self.cancel, cancelled);
        Request::attach(&self.stop, stopping);
    }

    pub(crate) fn attach(&self, checkpointing: Option<Arc<Checkpointing>>) {
        *self.lock() = Attached::Running(checkpointing);
        self.attached.notify_all();
    }

    /// The run ended: savepoints are refused from now on.
    pub(crate) fn detach(&self) {
        *self.lock() = Attached::Ended;
        self.attached.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Attached> {
        self.checkpointing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
    /// The checkpoints of the current (or last) run: counts and the newest ones.
    pub fn checkpoints(&self) -> CheckpointsSnapshot {
        self.history.snapshot()
    }

    pub(crate) fn history(&self) -> Arc<CheckpointHistory> {
        self.history.clone()
    }

    /// Stops the job as [`JobControl::stop`] does, keeping its final checkpoint as a
    /// savepoint (Flink's stop with savepoint). The receiver gets the savepoint's directory
    /// once it is written, or why there is none; a closed channel means the run ended
    /// without a final checkpoint (it failed or was cancelled). Refused, without stopping,
    /// if the job is not running with checkpoints.
    pub fn stop_with_savepoint(&self) -> Result<Receiver<Result<PathBuf, String>>, String> {
        let answer = self
            .running_checkpointing(SAVEPOINT_WAIT_FOR_RUN)?
            .request_savepoint_at_end()?;
        self.stop();
        Ok(answer)
    }

    /// Takes a checkpoint now and keeps it as a savepoint (not removed by retention);
    /// returns its directory, to pass to `--from-savepoint`. Waits up to `timeout`.
    pub fn savepoint(&self, timeout: Duration) -> Result<PathBuf, String> {
        let started = Instant::now();
        let checkpointing = self.running_checkpointing(timeout)?;
        checkpointing.request_savepoint(timeout.saturating_sub(started.elapsed()))
    }

    /// The running job's checkpointing; waits up to `wait` for a run that has not started
    /// yet (the job is still being built, its state restored).
    fn running_checkpointing(&self, wait: Duration) -> Result<Arc<Checkpointing>, String> {
        let deadline = Instant::now() + wait;
        let mut attached = self.lock();
        while matches!(*attached, Attached::NotYet) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "the job did not start running within {wait:?}: no savepoint taken"
                ));
            }
            attached = self
                .attached
                .wait_timeout(attached, left)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        match &*attached {
            Attached::Running(Some(checkpointing)) => Ok(checkpointing.clone()),
            Attached::Running(None) => Err(
                "this job is not running with checkpoints: start it with --checkpoint-interval \
                 and --state-dir to take savepoints"
                    .to_string(),
            ),
            Attached::Ended | Attached::NotYet => {
                Err("the job has ended: savepoints are taken of a running job".to_string())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_savepoint_says_whether_the_run_has_not_started_takes_none_or_ended() {
        let control = JobControl::default();
        let reason = control.savepoint(Duration::ZERO).expect_err("refused");
        assert!(reason.contains("did not start running"), "{reason}");
        control.attach(None);
        let reason = control.savepoint(Duration::ZERO).expect_err("refused");
        assert!(reason.contains("not running with checkpoints"), "{reason}");
        control.detach();
        let reason = control.savepoint(Duration::ZERO).expect_err("refused");
        assert!(reason.contains("has ended"), "{reason}");
    }
}

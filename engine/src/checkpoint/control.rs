//! Controlling a running job from outside its threads: savepoints on demand (the metrics
//! server's `POST /savepoint`, `weir savepoint`), and cancelling it (a partition task whose
//! partition the Kafka group moved elsewhere).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::coordinator::Checkpointing;

/// A handle on a job's checkpointing while it runs.
#[derive(Debug, Default)]
pub struct JobControl {
    checkpointing: Mutex<Option<Arc<Checkpointing>>>,
    cancel: Mutex<Cancel>,
}

/// Whether the job was asked to stop, and the running job's stop flag (which its tasks
/// also set when one of them fails).
#[derive(Debug, Default)]
struct Cancel {
    requested: bool,
    flag: Option<Arc<AtomicBool>>,
}

impl JobControl {
    /// Stops the job as a crash would, without a final checkpoint: its tasks end, nothing
    /// more is committed, and [`crate::Job::run`] returns [`crate::EngineError::Cancelled`].
    /// A job with checkpoints resumes from its newest one when run again. Works before the
    /// run has started too (it then ends at once).
    pub fn cancel(&self) {
        let mut cancel = self.cancel.lock().unwrap_or_else(|p| p.into_inner());
        cancel.requested = true;
        if let Some(flag) = &cancel.flag {
            flag.store(true, Ordering::SeqCst);
        }
    }

    /// True once [`JobControl::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancel
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .requested
    }

    /// Gives the control the stop flag of the run starting now (set at once if a cancel
    /// came first).
    pub(crate) fn attach_stop_flag(&self, flag: Arc<AtomicBool>) {
        let mut cancel = self.cancel.lock().unwrap_or_else(|p| p.into_inner());
        if cancel.requested {
            flag.store(true, Ordering::SeqCst);
        }
        cancel.flag = Some(flag);
    }

    pub(crate) fn attach(&self, checkpointing: Option<Arc<Checkpointing>>) {
        *self
            .checkpointing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = checkpointing;
    }

    /// Takes a checkpoint now and keeps it as a savepoint (not removed by retention);
    /// returns its directory, to pass to `--from-savepoint`. Waits up to `timeout`.
    pub fn savepoint(&self, timeout: Duration) -> Result<PathBuf, String> {
        let checkpointing = self
            .checkpointing
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
            .ok_or(
                "this job is not running with checkpoints: start it with --checkpoint-interval \
                 and --state-dir to take savepoints",
            )?;
        checkpointing.request_savepoint(timeout)
    }
}

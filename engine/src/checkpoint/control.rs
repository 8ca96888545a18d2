//! Controlling a running job from outside its threads: savepoints on demand (the metrics
//! server's `POST /savepoint`, `weir savepoint`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::coordinator::Checkpointing;

/// A handle on a job's checkpointing while it runs.
#[derive(Debug, Default)]
pub struct JobControl {
    checkpointing: Mutex<Option<Arc<Checkpointing>>>,
}

impl JobControl {
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

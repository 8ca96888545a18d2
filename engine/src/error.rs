//! Errors of the runtime. Every variant names the part of the job that failed, so a user
//! can tell a bad input from a bad job definition from a failing disk.
//!
//! A variant with a `source` does not repeat it in its own message: print errors with their
//! chain (`anyhow`'s `{:#}`) to see the cause.

use std::path::PathBuf;

/// A boxed error from user code or a connector.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result with [`EngineError`] as the default error.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// What can go wrong while building or running a job.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A source failed to read or decode its input.
    #[error("source `{name}` failed")]
    Source {
        /// The source's name in the job graph.
        name: String,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// A sink failed to write.
    #[error("sink `{name}` failed")]
    Sink {
        /// The sink's name in the job graph.
        name: String,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// An operator failed (for example an aggregate overflowed).
    #[error("operator `{name}` failed")]
    Operator {
        /// The operator's name in the job graph.
        name: String,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// The job graph is not runnable as defined.
    #[error("invalid job `{job}`: {reason}")]
    InvalidJob {
        /// The job's name.
        job: String,
        /// Why it cannot run, and what to change.
        reason: String,
    },
    /// An I/O error on a named file.
    #[error("{path}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A downstream task stopped, so this one cannot hand over its output. The failing task
    /// reports the real cause.
    #[error("a downstream task of `{name}` stopped")]
    DownstreamGone {
        /// The task that noticed.
        name: String,
    },
    /// An upstream task stopped without reaching the end of its input.
    #[error("an upstream task of `{name}` stopped before the end of its input")]
    UpstreamGone {
        /// The task that noticed.
        name: String,
    },
    /// The job cannot resume from its checkpoints (none verifies, or one cannot be read).
    #[error("job `{job}` cannot resume from its checkpoints")]
    Restore {
        /// The job's name.
        job: String,
        /// What is wrong with them.
        #[source]
        source: crate::checkpoint::CheckpointError,
    },
    /// A participant's state in the checkpoint being restored does not fit it (another
    /// kind of state, a newer version, fields that do not match).
    #[error("checkpoint {checkpoint}: the state of `{participant}` cannot be restored: {reason}")]
    RestoreState {
        /// The checkpoint being restored.
        checkpoint: crate::checkpoint::CheckpointId,
        /// The participant (`UID#INSTANCE`, with its node name).
        participant: String,
        /// What did not match, and what to do.
        reason: String,
    },
    /// An invariant of weir itself broke: a bug in weir, not in the job or its input.
    #[error("internal error (a bug in weir, please report it): {reason}")]
    Internal {
        /// Which invariant broke, and where.
        reason: String,
    },
    /// The job's state directory is in use by another run, or cannot be locked.
    #[error("job `{job}` cannot use its state directory")]
    StateDir {
        /// The job's name.
        job: String,
        /// Why (the holder's pid, or the I/O error).
        #[source]
        source: crate::checkpoint::OwnershipError,
    },
    /// Checkpointing failed in a way the job cannot go on from (the final checkpoint).
    #[error("checkpointing failed: {reason}")]
    Checkpoint {
        /// What went wrong.
        reason: String,
    },
    /// The job was stopped through [`crate::JobControl::cancel`] before its input ended.
    #[error("job `{job}` was cancelled")]
    Cancelled {
        /// The job's name.
        job: String,
    },
    /// A worker thread panicked: a bug in weir or in user code.
    #[error("task `{name}` panicked: {message}")]
    Panicked {
        /// The task's name.
        name: String,
        /// The panic payload, if it was a string.
        message: String,
    },
}

impl EngineError {
    /// True for errors that only echo a failure elsewhere in the job.
    pub fn is_secondary(&self) -> bool {
        matches!(
            self,
            EngineError::DownstreamGone { .. } | EngineError::UpstreamGone { .. }
        )
    }
}

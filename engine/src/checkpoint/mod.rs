//! Checkpoints: consistent snapshots of a running job, from which a restarted job resumes
//! with nothing lost and nothing duplicated.
//!
//! # How a checkpoint is taken (Chandy-Lamport with aligned barriers, as in Flink)
//! 1. The [`coordinator`] picks the next id, creates its directory and asks the sources for
//!    it. At most one checkpoint is in flight.
//! 2. Each source, between two batches, records its position (for a file: byte offset and
//!    line) and sends a barrier with the id downstream, behind everything it sent before.
//! 3. A task with several producers *aligns*: once a producer's barrier arrived, that
//!    producer's later batches are held back until the barrier arrived from all producers;
//!    then the barrier moves on. Every operator therefore snapshots a state that reflects
//!    exactly the input before the barriers.
//! 4. Participants acknowledge with their snapshot: a keyed operator instance writes back
//!    its state and takes a RocksDB checkpoint (hard links, no copy) into the checkpoint's
//!    directory; a sink makes its output durable but not yet visible (pre-commit).
//! 5. When every participant acknowledged, the coordinator writes the manifest (the
//!    checkpoint is complete), and only then do sinks make the output visible (commit).
//!
//! What each participant acknowledges is typed ([`state`]): a source position, watermark
//! state, a keyed instance's snapshot or a sink's pre-commit.
//!
//! A restore matches state to operators by uid ([`compatibility`]), never by position alone.
//! Before any of this, a run locks its state directory ([`ownership`]): one writer per
//! directory, and a run another one has taken over (fenced) completes no checkpoint.
//!
//! The end of all input is a checkpoint too (the *final* one): sources that reach their end
//! wait for it, so the job's last output is committed exactly like every other.
//!
//! # Restart
//! A job started with checkpoints enabled resumes from the newest complete checkpoint that
//! verifies (see [`manifest`]): sources seek to their positions, keyed state is imported
//! key group by key group (so the parallelism may change), sinks commit what the checkpoint
//! covered and discard what it did not.
//!
//! # Where each step lives in the runtime
//! | step | type | file |
//! |---|---|---|
//! | injecting barriers, recording source positions | `SourceLoop`, `Lockstep` | `runtime/source.rs` |
//! | watermark generator state in checkpoints | `TimestampPush` | `runtime/event_time.rs` |
//! | barrier alignment over several producers | `Alignment` | `runtime/alignment.rs` |
//! | barriers across threads, held results | `ForwardPush`, `Held`, `SinkFeed` | `runtime/exchange.rs` |
//! | keyed state snapshot and import by key group | `KeyedRunner`, `KeyedSnapshot` | `runtime/keyed.rs`, `runtime/keyed_snapshot.rs` |
//! | an event-time operator's tables and watermark | [`crate::operator::EventTime`] | `operator/event_time.rs` |
//! | pre-commit at the barrier, commit on completion | `SinkPush`, `SinkTransactions` | `runtime/sink.rs` |
//! | the checkpoint coordinator, acks, the manifest | [`coordinator`], [`manifest`] | `checkpoint/` |

mod compatibility;
mod control;
pub(crate) mod coordinator;
pub mod history;
mod in_flight;
pub mod manifest;
pub mod ownership;
pub mod state;

use std::path::PathBuf;
use std::time::Duration;

pub use control::JobControl;
pub use history::{CheckpointHistory, CheckpointRecord, CheckpointStatus, CheckpointsSnapshot};
pub use manifest::{Manifest, OperatorRecord};
pub use ownership::{Fence, OwnershipError, StateDirLock};
pub use state::{ConnectorState, ConnectorStateType, ParticipantState, StateMismatch};

/// Checkpoint ids: 1, 2, 3, ... per job state directory.
pub type CheckpointId = u64;

/// How a job checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// Where checkpoints live (`<state-dir>/<job>/checkpoints`); savepoints go to the
    /// sibling directory `savepoints`.
    pub dir: PathBuf,
    /// Time between the end of one checkpoint and the start of the next.
    pub interval: Duration,
    /// Complete checkpoints kept (older ones are removed).
    pub retained: usize,
    /// Where the run starts.
    pub resume: Resume,
}

/// Where a run with checkpoints starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Resume {
    /// From the newest complete checkpoint in [`CheckpointConfig::dir`], if there is one.
    #[default]
    Latest,
    /// From this savepoint (or checkpoint) directory; newer checkpoints are discarded.
    From(PathBuf),
    /// From the beginning of the input: every checkpoint is discarded and the state is
    /// derived again by replaying the input (outputs start afresh).
    Beginning,
}

impl CheckpointConfig {
    /// Where savepoints go: `savepoints` beside the checkpoint directory.
    pub fn savepoints_dir(&self) -> PathBuf {
        self.dir.with_file_name("savepoints")
    }
}

/// A checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file or directory of a checkpoint could not be read or written.
    #[error("checkpoint file {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint's contents do not match its manifest.
    #[error("checkpoint {dir} is corrupt: {reason}")]
    Corrupt {
        /// The checkpoint directory.
        dir: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// A checkpoint holds state the job has no operator for (by uid), or state of another
    /// kind of operator than the one with its uid now.
    #[error(
        "checkpoint {id} holds state this job cannot take: {problems}; pass \
         --allow-non-restored-state to drop that state and go on, or run the job as it was \
         (set .uid(..) on operators so that their state follows them through changes)",
        problems = problems.join("; ")
    )]
    Incompatible {
        /// The checkpoint.
        id: CheckpointId,
        /// Each uid that does not fit, and why.
        problems: Vec<String>,
    },
    /// There are checkpoints to resume from, and none of them verifies.
    #[error(
        "none of the checkpoints in {root} can be restored ({reasons}); weir does not start \
         from empty state on its own: restore the files, start from a savepoint \
         (--from-savepoint DIR), or derive the state again from the input \
         (--replay-from beginning)",
        root = root.display(),
        reasons = reasons.join("; ")
    )]
    NoneUsable {
        /// The checkpoint directory.
        root: PathBuf,
        /// Each checkpoint and why it cannot be used, newest first.
        reasons: Vec<String>,
    },
}

impl CheckpointError {
    /// What is wrong, without the checkpoint's directory.
    fn reason(&self) -> String {
        match self {
            CheckpointError::Corrupt { reason, .. } => reason.clone(),
            other => other.to_string(),
        }
    }
}

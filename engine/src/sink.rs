//! The [`Sink`] trait: where results leave a job.
//!
//! A sink instance is driven by one task. It receives records in batches and is finished
//! exactly once, after the last batch, when it must make everything durable (flush).
//!
//! # Transactions (jobs with checkpoints)
//! A sink that can hold output back until a checkpoint covers it gives exactly-once results
//! (two-phase commit, as Flink's `TwoPhaseCommitSinkFunction`): at a barrier it makes its
//! output durable but invisible ([`Sink::pre_commit`]); when the checkpoint completed it
//! makes it visible ([`Sink::commit`]); on a restart it commits what the restored
//! checkpoint covered and discards the rest ([`Sink::begin_transactions`]). Sinks that
//! keep the defaults write at once and repeat rows replayed after a restart
//! (at-least-once). What a sink pre-commits is its own type
//! ([`ConnectorStateType`](crate::ConnectorStateType)), stored with its kind and version
//! as a [`ConnectorState`].

use crate::checkpoint::{CheckpointId, ConnectorState};
use crate::error::BoxError;
use crate::metrics::JobMetrics;
use crate::record::Record;

/// A consumer of results.
pub trait Sink<T>: Send + 'static {
    /// Called once when the job starts, before anything else: a sink that exports metrics of
    /// its own registers them here. The default does nothing.
    fn open(&mut self, metrics: &JobMetrics) -> Result<(), BoxError> {
        let _ = metrics;
        Ok(())
    }

    /// Writes a batch of records, in stream order.
    fn write(&mut self, records: &[Record<T>]) -> Result<(), BoxError>;

    /// Flushes and closes; called once after the last batch.
    fn finish(&mut self) -> Result<(), BoxError>;

    /// Makes what was written so far visible to readers (e.g. hands a buffer to the OS).
    /// Called when the job goes quiet, at least once a second while it writes, and before
    /// a failing job ends, so results of a long-running job never wait in a buffer. Called
    /// often: cheap when nothing is buffered. The default does nothing.
    fn flush(&mut self) -> Result<(), BoxError> {
        Ok(())
    }

    /// A one-line description for `weir describe` (e.g. the path or URI).
    fn describe(&self) -> String;

    /// Jobs with checkpoints call this once, before the first write. `restored` is the
    /// checkpoint the job resumes from and what [`Sink::pre_commit`] returned for it
    /// (`None` on a fresh start; `Some((id, None))` if the sink pre-committed nothing).
    fn begin_transactions(
        &mut self,
        restored: Option<(CheckpointId, Option<&ConnectorState>)>,
    ) -> Result<(), BoxError> {
        let _ = restored;
        Ok(())
    }

    /// A barrier of checkpoint `checkpoint` arrived: makes everything written so far
    /// durable, to be made visible once the checkpoint completes. Returns what a restart
    /// needs to commit it (`None`, the default: nothing).
    fn pre_commit(&mut self, checkpoint: CheckpointId) -> Result<Option<ConnectorState>, BoxError> {
        let _ = checkpoint;
        Ok(None)
    }

    /// Checkpoint `checkpoint` completed: makes everything pre-committed up to it visible.
    fn commit(&mut self, checkpoint: CheckpointId) -> Result<(), BoxError> {
        let _ = checkpoint;
        Ok(())
    }
}

//! The [`Source`] trait: where events enter a job.
//!
//! A source is polled by a task thread of its own or, for the instances of a parallel source
//! at parallelism > 1, by a worker thread it shares with keyed operators. It fills a batch
//! with up to `max` items and says whether more may come. Sources never block for long: a
//! source that is waiting for data (a followed file, a socket) returns
//! [`SourceStatus::Idle`] after a short wait, so the task can flush what it has and stay
//! responsive; a source that knows when its next item is due (a paced generator) returns
//! [`SourceStatus::Pending`] at once and lets the runtime wait.
//!
//! A *replayable* source (a file, a Kafka topic) can say where it stands and continue from
//! there later ([`Source::position`], [`Source::seek`]); only jobs whose sources are all
//! replayable can checkpoint. A position is the source's own type
//! ([`ConnectorStateType`](crate::ConnectorStateType)), stored with its kind and version
//! as a [`ConnectorState`]: a source decodes it with [`ConnectorState::decode`], which
//! refuses another source's position or a newer version.
//!
//! A source with splits ([`Source::split_of_batch`]) gets one watermark per split: one slow
//! or late-starting partition then holds event time back instead of making the others'
//! events late. A source that also tells an external system how far it got
//! (a Kafka consumer group's committed offsets) does so in [`Source::checkpoint_completed`],
//! once the checkpoint that holds the position is durable: the checkpoint stays the source
//! of truth, the external copy is for lag tools.
//!
//! # Dead letters
//! A source that rejects input it cannot decode keeps the [`DeadLetter`]s of a poll and
//! hands them over in [`Source::take_dead_letters`], which the runtime calls after every
//! poll. They leave the source node by its dead-letter output (see
//! [`crate::Stream::dead_letters`]), between the same checkpoint barriers as the events of
//! that poll, so a source's position never has to say anything about them.

use crate::checkpoint::ConnectorState;
use crate::dead_letter::DeadLetter;
use crate::error::BoxError;
use crate::record::{Data, Split};

/// What a poll found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    /// Items may have been added; poll again.
    More,
    /// Nothing is available right now; poll again later.
    Idle,
    /// Nothing is due for about this long (a paced generator): the runtime polls again
    /// after it, and a worker thread does its other work meanwhile instead of the source
    /// sleeping in the poll.
    Pending(std::time::Duration),
    /// The input is finished; items added in this call are the last.
    Exhausted,
}

/// A producer of events.
pub trait Source: Send + 'static {
    /// The events this source produces.
    type Item: Data;

    /// Appends up to `max` items to `out`.
    fn poll_batch(
        &mut self,
        out: &mut Vec<Self::Item>,
        max: usize,
    ) -> Result<SourceStatus, BoxError>;

    /// A one-line description for `weir describe` (e.g. the path or URI).
    fn describe(&self) -> String;

    /// Moves the records rejected since the last call (input that could not be decoded)
    /// into `out`. Called after every poll; the default rejects nothing.
    fn take_dead_letters(&mut self, out: &mut Vec<DeadLetter>) {
        let _ = out;
    }

    /// For a source whose input is several independently ordered splits (the partitions of
    /// a Kafka topic): the split every item of the last batch came from, and the splits it
    /// reads now. Such a source fills each batch from one split, so that event time and
    /// watermarks are tracked per split and merged by minimum (as Flink's per-partition
    /// watermarks). `None` (the default): the source is one ordered stream.
    fn split_of_batch(&self) -> Option<Split> {
        None
    }

    /// For a source whose input can be read by several readers at once (a file, read in
    /// byte ranges): instance `instance` of `instances` readers that together read the
    /// input exactly once. A source that can is added by [`crate::Job::source`] as one
    /// instance per worker (`None`, the default: one instance reads everything). The
    /// instances' positions together say which parts of the input are read, whatever the
    /// parallelism was: a restore hands every instance all of them
    /// ([`Source::seek_shares`]), so such a job resumes at any parallelism. Called when
    /// the job is built as `split(0, 1)`, to learn whether the source splits at all (a file
    /// of one piece does not), and when each run starts, before any poll.
    fn split(&self, instance: usize, instances: usize) -> Option<Self>
    where
        Self: Sized,
    {
        let _ = (instance, instances);
        None
    }

    /// For an instance made by [`Source::split`]: continues from the positions of all the
    /// instances of the run that took the checkpoint, however many there were, taking
    /// its own share of what is left (every instance is given the same positions and its
    /// number). Called once, before the first poll, instead of [`Source::seek`].
    fn seek_shares(&mut self, positions: &[ConnectorState]) -> Result<(), BoxError> {
        match positions {
            [position] => self.seek(position),
            _ => Err(format!(
                "{} cannot share out the positions of {} readers",
                self.describe(),
                positions.len()
            )
            .into()),
        }
    }

    /// For an instance of a parallel source ([`crate::Job::parallel_source`]): whether the
    /// instances keep together in stream order by themselves, because they take their input
    /// from one shared queue as they go (as Flink's FLIP-27 readers ask for the next split
    /// when they need one) instead of each reading a fixed share. Then no instance can run
    /// far ahead of a slow one, and the engine does not hold a fast one back to wait for the
    /// others: it makes more of the stream instead. `false` (the default): the instances
    /// move in step.
    fn aligns_instances(&self) -> bool {
        false
    }

    /// Where this source stands after the items it returned so far, for a checkpoint.
    /// `None` (the default) means it cannot be replayed, and a job reading it cannot
    /// checkpoint. Called between polls only.
    fn position(&mut self) -> Result<Option<ConnectorState>, BoxError> {
        Ok(None)
    }

    /// Continues from `position` (returned by [`Source::position`] in an earlier run)
    /// instead of from the start. Called once, before the first poll.
    fn seek(&mut self, position: &ConnectorState) -> Result<(), BoxError> {
        Err(format!(
            "{} cannot be replayed, so it cannot resume from the {} position in the checkpoint",
            self.describe(),
            position.kind()
        )
        .into())
    }

    /// The checkpoint that recorded `position` (an earlier result of [`Source::position`])
    /// is complete. The default does nothing. Called between polls only.
    fn checkpoint_completed(&mut self, position: &ConnectorState) -> Result<(), BoxError> {
        let _ = position;
        Ok(())
    }
}

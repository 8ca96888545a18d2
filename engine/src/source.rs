//! The [`Source`] trait: where events enter a job.
//!
//! A source is polled by its own task thread. It fills a batch with up to `max` items and
//! says whether more may come. Sources never block for long: a source that is waiting for
//! data (a followed file, a socket) returns [`SourceStatus::Idle`] after a short wait, so
//! the task can flush what it has and stay responsive.
//!
//! A *replayable* source (a file, a Kafka topic) can say where it stands and continue from
//! there later ([`Source::position`], [`Source::seek`]); only jobs whose sources are all
//! replayable can checkpoint.

use crate::error::BoxError;
use crate::record::Data;

/// What a poll found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceStatus {
    /// Items may have been added; poll again.
    More,
    /// Nothing is available right now; poll again later.
    Idle,
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

    /// Where this source stands after the items it returned so far, for a checkpoint.
    /// `None` (the default) means it cannot be replayed, and a job reading it cannot
    /// checkpoint. Called between polls only.
    fn position(&mut self) -> Result<Option<serde_json::Value>, BoxError> {
        Ok(None)
    }

    /// Continues from `position` (returned by [`Source::position`] in an earlier run)
    /// instead of from the start. Called once, before the first poll.
    fn seek(&mut self, position: &serde_json::Value) -> Result<(), BoxError> {
        Err(format!(
            "{} cannot be replayed, so it cannot resume from position {position}",
            self.describe()
        )
        .into())
    }
}

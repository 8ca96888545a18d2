//! The [`Source`] trait: where events enter a job.
//!
//! A source is polled by its own task thread. It fills a batch with up to `max` items and
//! says whether more may come. Sources never block for long: a source that is waiting for
//! data (a followed file, a socket) returns [`SourceStatus::Idle`] after a short wait, so
//! the task can flush what it has and stay responsive.

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
}

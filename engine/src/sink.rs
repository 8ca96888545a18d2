//! The [`Sink`] trait: where results leave a job.
//!
//! A sink instance is driven by one task. It receives records in batches and is finished
//! exactly once, after the last batch, when it must make everything durable (flush).

use crate::error::BoxError;
use crate::record::Record;

/// A consumer of results.
pub trait Sink<T>: Send + 'static {
    /// Writes a batch of records, in stream order.
    fn write(&mut self, records: &[Record<T>]) -> Result<(), BoxError>;

    /// Flushes and closes; called once after the last batch.
    fn finish(&mut self) -> Result<(), BoxError>;

    /// A one-line description for `weir describe` (e.g. the path or URI).
    fn describe(&self) -> String;
}

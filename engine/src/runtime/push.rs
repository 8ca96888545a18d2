//! The [`Push`] trait: how a batch, a barrier, the end and a flush reach the next operator,
//! in the same thread (a call) or across a channel (a [`Message`]).

use crate::checkpoint::CheckpointId;
use crate::error::Result;
use crate::record::Batch;

/// Hands batches to the next operator, in the same thread or across a channel.
pub(crate) trait Push<T>: Send {
    fn push(&mut self, batch: Batch<T>) -> Result<()>;
    /// A checkpoint barrier: everything pushed before it belongs to checkpoint `id`.
    fn barrier(&mut self, id: CheckpointId) -> Result<()>;
    fn finish(&mut self) -> Result<()>;
    /// Sends on what a push further down holds back ([`Held`]): what is due, or all
    /// results when the thread driving this push is about to wait.
    fn flush(&mut self, what: Flush) -> Result<()>;
}

/// What [`Push::flush`] sends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flush {
    /// What has been held long enough.
    Due,
    /// Every result (a watermark without results still waits for its time).
    All,
}

/// What travels over a channel: batches and barriers, then one end marker per producer.
pub(super) enum Message<T> {
    Batch(Batch<T>),
    Barrier(CheckpointId),
    End,
}

pub(super) type Envelope<T> = (usize, Message<T>);

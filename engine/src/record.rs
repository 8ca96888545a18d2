//! Records and batches: how events travel between operators.
//!
//! # Invariants
//! - A [`Record`] carries its event time `ts` and `watermark`, the watermark of its stream
//!   just *before* the record. Lateness is decided per record against that watermark, so it
//!   never depends on batch sizes, scheduling or parallelism.
//! - A [`Batch`] carries records in stream order and the watermark *after* its last record.
//!   Watermarks never go backwards within a stream.

use crate::time::Timestamp;

/// What a stream can carry: owned, cloneable (for fan-out) and sendable between threads.
pub trait Data: Clone + Send + 'static {}
impl<T: Clone + Send + 'static> Data for T {}

/// One event with its event time and the watermark that preceded it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<T> {
    /// Event time in epoch milliseconds (`i64::MIN` before timestamps are assigned).
    pub ts: Timestamp,
    /// The stream's watermark just before this record.
    pub watermark: Timestamp,
    /// The event itself.
    pub value: T,
}

/// Records in stream order, followed by the watermark after the last of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch<T> {
    /// The records, in stream order.
    pub records: Vec<Record<T>>,
    /// The stream's watermark after the last record.
    pub watermark: Timestamp,
    /// The source split (e.g. a Kafka partition) all records came from, for sources whose
    /// input is several independently ordered splits: event time is then tracked per split.
    /// Kept by per-record operators (map, filter, flat_map), dropped where streams merge.
    pub split: Option<Split>,
    /// When the source read the events this batch derives from (see [`crate::latency`]);
    /// `None` where no input batch made it (end of input, idle watermarks).
    pub ingested: Option<std::time::Instant>,
}

/// The split a batch came from, and the splits its source reads now (for watermarks that
/// are the minimum over the splits; a split not listed no longer holds the watermark back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The split's id.
    pub id: u32,
    /// All splits the source reads now; the same `Arc` until the set changes.
    pub active: std::sync::Arc<[u32]>,
}

impl<T> Batch<T> {
    /// A batch that belongs to no source split and has no ingestion time.
    pub fn new(records: Vec<Record<T>>, watermark: Timestamp) -> Self {
        Batch {
            records,
            watermark,
            split: None,
            ingested: None,
        }
    }

    /// The same batch, stamped as derived from events read at `ingested`.
    pub fn ingested_at(mut self, ingested: Option<std::time::Instant>) -> Self {
        self.ingested = ingested;
        self
    }

    /// The batch with its records replaced by `f(records)`; watermark, split and stamp kept
    /// (what a per-record operator such as map or flat_map produces).
    pub fn map_records<U>(self, f: impl FnOnce(Vec<Record<T>>) -> Vec<Record<U>>) -> Batch<U> {
        Batch {
            records: f(self.records),
            watermark: self.watermark,
            split: self.split,
            ingested: self.ingested,
        }
    }
}

/// An event paired with its key, as produced by `key_by`. (Its key group is derived from
/// the key where needed: for routing, and by state backends that lay state out by group.)
#[derive(Debug, Clone, PartialEq)]
pub struct Keyed<K, T> {
    /// The key the user function extracted.
    pub key: K,
    /// The event.
    pub value: T,
}

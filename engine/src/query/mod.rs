//! Queryable state: reading a keyed operator's state table from outside while the job runs
//! (Kafka Streams' interactive queries).
//!
//! [`crate::Stream::queryable`] names the state table of the keyed operator that made a
//! stream (a `process_with_state` value per key) under a job-unique name. While the job runs,
//! [`QueryableState`] (from [`crate::Job::queryable_state`]) answers point lookups and
//! bounded scans of it, from Rust or through `weir run`'s HTTP API.
//!
//! ```text
//!  caller (HTTP handler on the blocking pool, or a user's thread)
//!    │  TableHandle::get(key) ── route: key -> key group -> owning instance
//!    ▼
//!  bounded request queue per keyed instance  ──▶  KeyedRunner, between two batches:
//!    (try_send: a full queue is `Busy`)            answers from its own table, stamps
//!    ◀── reply channel (waited on with a timeout) ── the watermark and last checkpoint
//! ```
//!
//! # Consistency: answered by the worker, between batches
//! Every keyed instance owns a bounded request queue (`queue.rs`). Its runner drains the
//! queue after each batch it applied and whenever its thread is about to wait, in the
//! thread that owns the table: a read never sees a half-applied batch, needs no lock on
//! the table, and works the same for the memory and the RocksDB backend (whose cache of
//! decoded entries in front of the database is only coherent in that thread). Ingestion
//! never stops for a reader: a query costs the worker the time of its own lookup, and when
//! nothing is queried the runner pays one `is_empty` on the queue per batch.
//!
//! The issue suggested reading RocksDB from a snapshot in the caller's thread instead. Not
//! done: the operator's write-back cache holds the newest values of hot keys until a flush,
//! so a snapshot of the database alone would answer stale values (and sometimes a value
//! older than one answered before); a snapshot would also need the same answer path for
//! the memory backend anyway. Answering in the worker gives both backends the same, newest
//! consistent view.
//!
//! # Answering while the input is quiet
//! A caller unparks the thread that drains the queue after it sends. A source thread waiting
//! for input (a followed file at its end, a source that said `Pending`) parks rather than
//! sleeps, so a keyed instance chained into it (P = 1) answers at once; a worker thread
//! (P > 1) waits on its channels and its bell, which the caller rings. A keyed instance in
//! a thread of its own (P = 1 fed by several producers) looks at its queue every 50 ms
//! while its input is quiet.
//!
//! # Routing
//! A point lookup goes to the one instance that owns the key's key group (the same
//! [`crate::StableHash`](trait@crate::StableHash) routing as the exchange), so exactly one instance answers for a
//! key. A scan asks every instance and merges their answers in key order.
//!
//! # Bounds
//! A scan returns at most [`MAX_LIMIT`] entries ([`DEFAULT_LIMIT`] unless asked). A hash
//! map (and RocksDB's key-group order) is not key order, so an instance visits every entry
//! of its table for a scan, keeping the `limit` smallest matching keys: a scan costs the
//! worker time proportional to its table, and a runner answers at most one scan per batch
//! boundary (and at most 256 (`queue::LOOKUPS_PER_BOUNDARY`) lookups), so queries cannot hold
//! ingestion up for more than one scan at a time. Callers wait at most their timeout for an
//! answer ([`QueryError::Timeout`]) and a full queue refuses at once ([`QueryError::Busy`]).

mod inbox;
mod parse;
pub(crate) mod queue;
pub(crate) mod table;

pub use parse::{parse_key, Cmp, Filter};
pub use queue::{QueryableState, TableHandle};
pub use table::{answer_from_map, key_order, QueryableTable};

use serde::Serialize;
use serde_json::Value;

use crate::checkpoint::CheckpointId;
use crate::time::Timestamp;

/// Entries a scan returns when no limit is given.
pub const DEFAULT_LIMIT: usize = 100;

/// The most entries one scan returns.
pub const MAX_LIMIT: usize = 10_000;

/// What to read from a queryable table.
#[derive(Debug, Clone, PartialEq)]
pub enum TableQuery {
    /// The value under one key (the key as text: a string key as is, a number as digits).
    Get(String),
    /// Entries in key order.
    Scan(Scan),
}

/// A bounded scan: keys in `from..to` (from inclusive, to exclusive), with `prefix`, whose
/// value passes `filter`, at most `limit` of them, smallest keys first.
#[derive(Debug, Clone, PartialEq)]
pub struct Scan {
    /// Smallest key (inclusive).
    pub from: Option<String>,
    /// Key bound (exclusive).
    pub to: Option<String>,
    /// Only string keys that start with this.
    pub prefix: Option<String>,
    /// A condition on one numeric field of the value.
    pub filter: Option<Filter>,
    /// At most this many entries (1 to [`MAX_LIMIT`]).
    pub limit: usize,
}

impl Default for Scan {
    fn default() -> Self {
        Scan {
            from: None,
            to: None,
            prefix: None,
            filter: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// One entry of a table, as JSON.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// The key (a JSON string for string keys).
    pub key: Value,
    /// The value.
    pub value: Value,
}

/// How fresh an answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Freshness {
    /// The watermark of the operator instance(s) that answered (the smallest, for a scan);
    /// `None` before the first watermark.
    pub watermark: Option<Timestamp>,
    /// The last completed checkpoint when the answer was made; `None` without checkpoints
    /// or before the first one.
    pub checkpoint: Option<CheckpointId>,
}

/// The answer to a point lookup.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Lookup {
    /// The entry, if the key has one.
    pub entry: Option<Entry>,
    /// How fresh it is.
    pub freshness: Freshness,
}

/// The answer to a scan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScanResult {
    /// Matching entries in key order, at most the scan's limit.
    pub entries: Vec<Entry>,
    /// True if more entries matched than the limit let through.
    pub more: bool,
    /// How fresh it is.
    pub freshness: Freshness,
}

/// Why a query was not answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// No operator made a table queryable under this name.
    #[error("no queryable table `{table}`: the job's queryable tables are [{}]", known.join(", "))]
    UnknownTable {
        /// The name asked for.
        table: String,
        /// The names that exist.
        known: Vec<String>,
    },
    /// The key (or a scan bound) is not a key of the table.
    #[error("`{key}` is not a key of table `{table}`: {reason}")]
    BadKey {
        /// The table.
        table: String,
        /// The key as given.
        key: String,
        /// Why it does not parse.
        reason: String,
    },
    /// The query itself is malformed (a filter, a limit).
    #[error("{0}")]
    BadQuery(String),
    /// The job has not started its operators yet.
    #[error("table `{table}` is not being served yet: the job is starting; ask again")]
    NotRunning {
        /// The table.
        table: String,
    },
    /// The job ended: its state is gone with it.
    #[error("table `{table}` is no longer served: the job has finished")]
    JobFinished {
        /// The table.
        table: String,
    },
    /// Too many queries are waiting for the worker that owns the key.
    #[error(
        "table `{table}`: {waiting} queries are already waiting for its worker; ask again later"
    )]
    Busy {
        /// The table.
        table: String,
        /// The queue's capacity.
        waiting: usize,
    },
    /// The worker did not answer in time (it is stalled, or busy with a long batch).
    #[error("table `{table}`: no answer from the job within {waited_ms} ms (it may be stalled or busy); ask again later")]
    Timeout {
        /// The table.
        table: String,
        /// How long the caller waited.
        waited_ms: u64,
    },
    /// Reading the table failed (a RocksDB error).
    #[error("table `{table}`: reading the state failed: {reason}")]
    Failed {
        /// The table.
        table: String,
        /// What failed.
        reason: String,
    },
}

//! An instance's end of its table's queue ([`QueryInbox`]): answering between batches,
//! at most one scan and [`LOOKUPS_PER_BOUNDARY`] lookups per call, and telling whoever
//! still waits when the instance ends.

use crossbeam_channel::Receiver;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};

use super::queue::{Request, LOOKUPS_PER_BOUNDARY};
use super::table::QueryableTable;
use super::{Freshness, QueryError, TableQuery};
use crate::runtime::ThreadWaker as Waker;

/// An instance's end of its table's queue.
pub(crate) struct QueryInbox {
    table: Arc<str>,
    rx: Receiver<Request>,
    /// Event time of the last event the table applied (the projection lag's reference).
    applied: Arc<AtomicI64>,
    /// The thread that drains the queue, once known.
    thread: Arc<OnceLock<Waker>>,
}

impl QueryInbox {
    pub(super) fn new(
        table: &str,
        rx: Receiver<Request>,
        applied: Arc<AtomicI64>,
        thread: Arc<OnceLock<Waker>>,
    ) -> Self {
        QueryInbox {
            table: table.into(),
            rx,
            applied,
            thread,
        }
    }

    /// Makes the calling thread the one callers wake after they send (see
    /// [`std::thread::park_timeout`] in the loops that wait for input); cheap once set.
    #[inline]
    pub(crate) fn drained_here(&self) {
        self.thread.get_or_init(Waker::current);
    }

    /// True if no query waits (what the runner asks once per batch).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// The instance applied events up to event time `ts`.
    pub(crate) fn applied(&self, ts: i64) {
        self.applied.fetch_max(ts, Ordering::Relaxed);
    }

    /// Answers waiting queries from `table`, at most one scan and
    /// [`LOOKUPS_PER_BOUNDARY`] lookups; how many it answered.
    pub(crate) fn drain(&self, table: &mut dyn QueryableTable, freshness: Freshness) -> usize {
        let mut answered = 0;
        while let Ok(request) = self.rx.try_recv() {
            let result = table.answer(&self.table, &request.query);
            // The caller may have given up waiting: nobody to tell.
            let _ = request
                .reply
                .send(result.map(|entries| (entries, freshness)));
            answered += 1;
            if matches!(request.query, TableQuery::Scan(_)) || answered == LOOKUPS_PER_BOUNDARY {
                break;
            }
        }
        answered
    }
}

/// An instance that ends tells whoever still waits in its queue (a channel's receiver going
/// away does not drop what the channel holds while senders live).
impl Drop for QueryInbox {
    fn drop(&mut self) {
        while let Ok(request) = self.rx.try_recv() {
            let _ = request.reply.send(Err(QueryError::JobFinished {
                table: self.table.to_string(),
            }));
        }
    }
}

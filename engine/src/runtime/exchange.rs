//! How a record crosses threads: [`ForwardPush`] into one channel (with [`Held`], which
//! gathers results for a sink's task), and [`ExchangePush`], which routes keyed records by
//! key group to the worker that owns it over an [`Exchange`] (which `runtime::broadcast`
//! also uses, to send a broadcast stream to every worker).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use super::doorbell::Doorbell;
use super::push::{Envelope, Flush, Message, Push};
use crate::checkpoint::CheckpointId;
use crate::error::{EngineError, Result};
use crate::keys::{key_group_of, worker_for_key_group, StableHash};
use crate::record::{Batch, Data, Keyed, Record};
use crate::time::{Timestamp, END_WATERMARK, MIN_WATERMARK};

/// Sends batches to one channel (sinks and unions fed by several producers).
pub(super) struct ForwardPush<T> {
    pub(super) name: String,
    pub(super) producer: usize,
    pub(super) sender: Sender<Envelope<T>>,
    /// `Some` in front of a sink; a union's input sends every batch as it comes, since
    /// the operators behind it fire on each watermark.
    pub(super) sink: Option<SinkFeed<T>>,
}

/// A producer's side of a sink's channel.
pub(super) struct SinkFeed<T> {
    pub(super) held: Held<T>,
    pub(super) doorbell: Arc<Doorbell>,
}

impl<T: Data> ForwardPush<T> {
    fn send(&self, message: Message<T>) -> Result<()> {
        self.sender
            .send((self.producer, message))
            .map_err(|_| EngineError::DownstreamGone {
                name: self.name.clone(),
            })?;
        if let Some(sink) = &self.sink {
            sink.doorbell.ring();
        }
        Ok(())
    }

    fn send_held(&mut self) -> Result<()> {
        match self.sink.as_mut().and_then(|sink| sink.held.take()) {
            Some(batch) => self.send(Message::Batch(batch)),
            None => Ok(()),
        }
    }
}

impl<T: Data> Push<T> for ForwardPush<T> {
    fn push(&mut self, batch: Batch<T>) -> Result<()> {
        let (end, fits) = match &self.sink {
            None => return self.send(Message::Batch(batch)),
            Some(sink) => (batch.watermark == END_WATERMARK, sink.held.can_take(&batch)),
        };
        // The end goes on its own (the sink's gauge skips the end watermark, not the one
        // before it), and what is held goes first when the batch is timed differently.
        if end || !fits {
            self.send_held()?;
        }
        if end {
            return self.send(Message::Batch(batch));
        }
        if let Some(sink) = &mut self.sink {
            let now = Instant::now();
            sink.held.add(batch, now);
            if sink.held.due(now) {
                self.send_held()?;
            }
        }
        Ok(())
    }
    fn barrier(&mut self, id: CheckpointId) -> Result<()> {
        self.send_held()?;
        self.send(Message::Barrier(id))
    }
    fn finish(&mut self) -> Result<()> {
        self.send_held()?;
        self.send(Message::End)
    }
    fn flush(&mut self, what: Flush) -> Result<()> {
        match self.sink.as_ref().map(|sink| &sink.held) {
            Some(held)
                if held.due(Instant::now()) || (what == Flush::All && !held.records.is_empty()) =>
            {
                self.send_held()
            }
            _ => Ok(()),
        }
    }
}

/// How long results wait at most on their way to a sink while their thread keeps busy.
pub(super) const RESULTS_HOLD: Duration = Duration::from_millis(1);
/// How long a watermark without results waits at most: a sink reads it only for its gauge.
pub(super) const WATERMARK_HOLD: Duration = Duration::from_millis(10);

/// What a producer holds back on its way to a sink. A sink fed by several producers runs
/// in a thread of its own, and a send per batch woke it thousands of times a second, each
/// time taking a core from a worker (at P = 2, q3 and q4 ran up to 13 % faster with their
/// results dropped before the sink). As Flink's output buffers do, a producer sends when
/// it holds a batch's worth of records or has held them for [`RESULTS_HOLD`], and always
/// when its thread goes quiet ([`Flush::All`]): a stream that does not keep its workers
/// busy gets every result at once (a watermark alone waits for [`WATERMARK_HOLD`]).
pub(super) struct Held<T> {
    records: Vec<Record<T>>,
    watermark: Timestamp,
    /// The oldest ingestion time of what is held: latency is counted from it.
    ingested: Option<Instant>,
    /// When the oldest batch not yet sent arrived.
    since: Option<Instant>,
    max_records: usize,
}

impl<T> Held<T> {
    pub(super) fn new(max_records: usize) -> Self {
        Held {
            records: Vec::new(),
            watermark: MIN_WATERMARK,
            ingested: None,
            since: None,
            max_records,
        }
    }

    /// Whether `batch`'s results can join those held without changing their latency:
    /// timed results (with an ingestion stamp) and untimed ones (fired by the end of input
    /// or an idle watermark) go in separate batches.
    fn can_take(&self, batch: &Batch<T>) -> bool {
        self.records.is_empty()
            || batch.records.is_empty()
            || self.ingested.is_some() == batch.ingested.is_some()
    }

    /// Holds `batch`, arrived at `now`.
    fn add(&mut self, mut batch: Batch<T>, now: Instant) {
        self.since.get_or_insert(now);
        self.watermark = self.watermark.max(batch.watermark);
        if batch.records.is_empty() {
            // Latency is that of results: a watermark's ingestion time does not count.
            return;
        }
        self.ingested = match (self.ingested, batch.ingested) {
            (Some(held), Some(new)) => Some(held.min(new)),
            (held, new) => held.or(new),
        };
        if self.records.is_empty() {
            std::mem::swap(&mut self.records, &mut batch.records);
        } else {
            self.records.append(&mut batch.records);
        }
    }

    /// Whether what is held is to be sent at `now`.
    fn due(&self, now: Instant) -> bool {
        let hold = match self.records.is_empty() {
            true => WATERMARK_HOLD,
            false if self.records.len() >= self.max_records => return true,
            false => RESULTS_HOLD,
        };
        self.since
            .is_some_and(|since| now.saturating_duration_since(since) >= hold)
    }

    /// Everything held as one batch, if anything is.
    fn take(&mut self) -> Option<Batch<T>> {
        self.since.take()?;
        let records = std::mem::take(&mut self.records);
        Some(Batch::new(records, self.watermark).ingested_at(self.ingested.take()))
    }
}

/// The sending side of an exchange: one buffer and channel per worker, filled by a router
/// ([`ExchangePush`] by key group, `runtime::broadcast` by key group and to every worker).
pub(super) struct Exchange<W> {
    pub(super) name: String,
    pub(super) producer: usize,
    pub(super) senders: Vec<Sender<Envelope<W>>>,
    pub(super) buffers: Vec<Vec<Record<W>>>,
    pub(super) sent_watermark: Vec<Timestamp>,
}

impl<W: Data> Exchange<W> {
    /// An exchange into `senders` as producer `producer` of node `name`.
    pub(super) fn new(name: String, producer: usize, senders: Vec<Sender<Envelope<W>>>) -> Self {
        let workers = senders.len();
        Exchange {
            name,
            producer,
            senders,
            buffers: (0..workers).map(|_| Vec::new()).collect(),
            sent_watermark: vec![MIN_WATERMARK; workers],
        }
    }

    /// Sends what the buffers hold, with `watermark`, to each worker that has records or
    /// has not been told the watermark yet.
    pub(super) fn send(&mut self, watermark: Timestamp, ingested: Option<Instant>) -> Result<()> {
        for w in 0..self.senders.len() {
            if self.buffers[w].is_empty() && watermark <= self.sent_watermark[w] {
                continue;
            }
            let capacity = self.buffers[w].capacity();
            let records = std::mem::replace(&mut self.buffers[w], Vec::with_capacity(capacity));
            self.sent_watermark[w] = watermark;
            self.senders[w]
                .send((
                    self.producer,
                    Message::Batch(Batch::new(records, watermark).ingested_at(ingested)),
                ))
                .map_err(|_| EngineError::DownstreamGone {
                    name: self.name.clone(),
                })?;
        }
        Ok(())
    }

    /// Sends `message` to every worker.
    pub(super) fn broadcast(&self, message: impl Fn() -> Message<W>) -> Result<()> {
        for s in &self.senders {
            s.send((self.producer, message()))
                .map_err(|_| EngineError::DownstreamGone {
                    name: self.name.clone(),
                })?;
        }
        Ok(())
    }
}

/// `barrier`, `finish` and `flush` of a push in front of an [`Exchange`] in `self.exchange`.
macro_rules! exchange_control {
    () => {
        fn barrier(&mut self, id: CheckpointId) -> Result<()> {
            // Buffers are empty between pushes, so the barrier follows everything routed
            // so far.
            self.exchange.broadcast(|| Message::Barrier(id))
        }
        fn finish(&mut self) -> Result<()> {
            self.exchange.broadcast(|| Message::End)
        }
        fn flush(&mut self, _: Flush) -> Result<()> {
            // Every push is sent as it comes.
            Ok(())
        }
    };
}
pub(super) use exchange_control;

/// Routes records to the worker owning their key group.
pub(super) struct ExchangePush<K, T, KF> {
    pub(super) key: KF,
    pub(super) exchange: Exchange<Keyed<K, T>>,
}

impl<K: Data + StableHash, T: Data, KF: Fn(&T) -> K + Send> Push<T> for ExchangePush<K, T, KF> {
    fn push(&mut self, batch: Batch<T>) -> Result<()> {
        let workers = self.exchange.senders.len();
        for r in batch.records {
            let key = (self.key)(&r.value);
            let worker = worker_for_key_group(key_group_of(&key), workers);
            self.exchange.buffers[worker].push(Record {
                ts: r.ts,
                watermark: r.watermark,
                value: Keyed {
                    key,
                    value: r.value,
                },
            });
        }
        self.exchange.send(batch.watermark, batch.ingested)
    }
    exchange_control!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn results(values: &[i64], ingested: Option<Instant>) -> Batch<i64> {
        let records = values
            .iter()
            .map(|&value| Record {
                ts: value,
                watermark: value,
                value,
            })
            .collect();
        Batch::new(records, values.last().copied().unwrap_or(0)).ingested_at(ingested)
    }

    #[test]
    fn results_wait_for_the_results_hold_at_most() {
        let mut held = Held::new(100);
        let start = Instant::now();
        held.add(results(&[1], Some(start)), start);
        assert!(!held.due(start));
        assert!(held.due(start + RESULTS_HOLD));
    }

    #[test]
    fn a_batchs_worth_of_results_goes_at_once() {
        let mut held = Held::new(3);
        let start = Instant::now();
        held.add(results(&[1, 2], Some(start)), start);
        assert!(!held.due(start));
        held.add(results(&[3], Some(start)), start);
        assert!(held.due(start));
    }

    #[test]
    fn a_watermark_without_results_waits_for_the_watermark_hold() {
        let mut held = Held::<i64>::new(100);
        let start = Instant::now();
        held.add(Batch::new(Vec::new(), 50), start);
        assert!(!held.due(start + RESULTS_HOLD));
        assert!(held.due(start + WATERMARK_HOLD));
        let sent = held.take().expect("the watermark is held");
        assert_eq!((sent.records.len(), sent.watermark), (0, 50));
    }

    #[test]
    fn what_is_held_goes_as_one_batch_once_with_its_oldest_ingestion_time() {
        let mut held = Held::new(100);
        let start = Instant::now();
        let later = start + Duration::from_millis(5);
        held.add(results(&[1, 2], Some(later)), start);
        held.add(results(&[3], Some(start)), later);
        let sent = held.take().expect("results are held");
        let values: Vec<i64> = sent.records.iter().map(|r| r.value).collect();
        assert_eq!(values, [1, 2, 3]);
        assert_eq!((sent.watermark, sent.ingested), (3, Some(start)));
        assert!(held.take().is_none(), "sent once");
        assert!(
            !held.due(later + WATERMARK_HOLD),
            "nothing is held any more"
        );
    }

    #[test]
    fn timed_and_untimed_results_are_not_held_together() {
        let mut held = Held::new(100);
        let start = Instant::now();
        held.add(results(&[1], Some(start)), start);
        // Results fired by the end of input or an idle watermark have no ingestion time:
        // held with timed ones they would skew the latency histogram.
        assert!(!held.can_take(&results(&[2], None)));
        assert!(held.can_take(&results(&[2], Some(start))));
        assert!(held.can_take(&Batch::new(Vec::new(), 9)));
    }
}

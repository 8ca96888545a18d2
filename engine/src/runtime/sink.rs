//! Sinks: the sink node, and [`SinkPush`], which writes batches, times their latency,
//! pre-commits at barriers and commits once a checkpoint completed.

use std::any::Any;
use std::cell::RefCell;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use super::build::{erase, Build, NodeImpl};
use super::push::{Flush, Push};
use super::run::SINK_FLUSH_INTERVAL;
use crate::checkpoint::coordinator::Participant;
use crate::checkpoint::{CheckpointId, ParticipantState, StateMismatch};
use crate::error::{EngineError, Result};
use crate::job::NodeId;
use crate::latency::LatencyHistogram;
use crate::metrics::OperatorMetrics;
use crate::record::{Batch, Data};
use crate::sink::Sink;
use crate::time::END_WATERMARK;

pub(crate) struct SinkNode<T> {
    sink: RefCell<Option<Box<dyn Sink<T>>>>,
    /// Whether what it receives are the job's results (counted in the run summary and timed
    /// in the latency histogram), not a side output such as late events.
    results: bool,
}

impl<T> SinkNode<T> {
    pub(crate) fn new<S: Sink<T>>(sink: S, results: bool) -> Self {
        SinkNode {
            sink: RefCell::new(Some(Box::new(sink))),
            results,
        }
    }
}

impl<T: Data> SinkNode<T> {
    fn take(&self, b: &mut Build<'_>, me: NodeId) -> Result<SinkPush<T>> {
        let name = b.name(me);
        let sink = self
            .sink
            .borrow_mut()
            .take()
            .ok_or_else(|| EngineError::InvalidJob {
                job: b.metrics.job().to_string(),
                reason: format!(
                    "sink `{name}` was already used by an earlier run: build the job again"
                ),
            })?;
        let metrics = b.metrics.stateless_operator(&name, 0);
        if self.results {
            b.progress.sinks.push(metrics.events_in.clone());
        }
        let participant = b.participant(format!("{}#0", b.uid(me)));
        let mut sink = sink;
        sink.open(b.metrics).map_err(|source| EngineError::Sink {
            name: name.clone(),
            source,
        })?;
        if let Some(p) = &participant {
            let restored = match p.restored() {
                Some(ParticipantState::Sink { pre_commit }) => {
                    Some((p.checkpointing().restored_id(), pre_commit.as_ref()))
                }
                Some(other) => return Err(p.unexpected_state(&name, "a sink's pre-commit", other)),
                None => None,
            };
            sink.begin_transactions(restored).map_err(|source| {
                match source.downcast::<StateMismatch>() {
                    Ok(mismatch) => p.restore_error(&name, mismatch),
                    Err(source) => EngineError::Sink {
                        name: name.clone(),
                        source,
                    },
                }
            })?;
        }
        let latency = self.results.then(|| b.metrics.latency(&name));
        Ok(SinkPush {
            name,
            sink,
            metrics,
            latency,
            transactions: participant.map(|participant| SinkTransactions {
                committed: participant.checkpointing().restored_id(),
                last_barrier: 0,
                participant,
                cancelled: b.cancelled.clone(),
            }),
            flushed_at: Instant::now(),
        })
    }
}

impl<T: Data> NodeImpl for SinkNode<T> {
    fn input(&self, b: &mut Build<'_>, me: NodeId, _: usize) -> Result<Box<dyn Any>> {
        if b.chained(me) {
            return Ok(erase::<T>(Box::new(self.take(b, me)?)));
        }
        Ok(erase::<T>(Box::new(b.forward_input::<T>(me, true))))
    }

    fn start(&self, b: &mut Build<'_>, me: NodeId) -> Result<()> {
        if b.chained(me) {
            return Ok(());
        }
        let sink = self.take(b, me)?;
        // The sink's thread waits on its doorbell, whether its producers exist yet or not.
        b.doorbell(me);
        b.spawn_receiver::<T>(me, 0, 1, Box::new(sink))
    }
}

pub(super) struct SinkPush<T> {
    name: String,
    sink: Box<dyn Sink<T>>,
    metrics: OperatorMetrics,
    /// `None` for a side output's sink.
    latency: Option<Arc<LatencyHistogram>>,
    transactions: Option<SinkTransactions>,
    /// When [`Sink::flush`] was last called.
    flushed_at: Instant,
}

/// A sink's part in checkpoints: what it pre-committed and committed.
pub(super) struct SinkTransactions {
    participant: Participant,
    committed: CheckpointId,
    last_barrier: CheckpointId,
    cancelled: Arc<AtomicBool>,
}

impl<T: Data> SinkPush<T> {
    fn sink_error(&self, source: crate::BoxError) -> EngineError {
        EngineError::Sink {
            name: self.name.clone(),
            source,
        }
    }

    /// Commits up to the newest completed checkpoint, if that moved since the last commit.
    fn commit_completed(&mut self) -> Result<()> {
        let Some(t) = &mut self.transactions else {
            return Ok(());
        };
        let completed = t.participant.checkpointing().completed();
        if completed > t.committed {
            t.committed = completed;
            self.sink
                .commit(completed)
                .map_err(|source| EngineError::Sink {
                    name: self.name.clone(),
                    source,
                })?;
        }
        Ok(())
    }
}

impl<T: Data> Push<T> for SinkPush<T> {
    fn push(&mut self, batch: Batch<T>) -> Result<()> {
        self.commit_completed()?;
        if !batch.records.is_empty() {
            self.metrics.events_in.inc_by(batch.records.len() as u64);
            self.sink
                .write(&batch.records)
                .map_err(|source| EngineError::Sink {
                    name: self.name.clone(),
                    source,
                })?;
            if let (Some(latency), Some(ingested)) = (&self.latency, batch.ingested) {
                latency.record(ingested.elapsed(), batch.records.len() as u64);
            }
            self.flush(Flush::Due)?;
        }
        if batch.watermark != END_WATERMARK {
            self.metrics.watermark.set(batch.watermark);
        }
        Ok(())
    }
    fn barrier(&mut self, id: CheckpointId) -> Result<()> {
        self.commit_completed()?;
        if let Some(t) = &mut self.transactions {
            t.last_barrier = id;
            let result = self.sink.pre_commit(id).map_err(|e| e.to_string());
            let state = result.map(|pre_commit| ParticipantState::Sink { pre_commit });
            t.participant.ack(id, state);
        }
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        if let Some(t) = &self.transactions {
            // The last barrier was the final checkpoint's: its output becomes visible only
            // once the checkpoint is complete.
            if let Err(reason) = t
                .participant
                .checkpointing()
                .wait_completed(t.last_barrier, &t.cancelled)
            {
                return Err(self.sink_error(
                    format!(
                        "the final checkpoint did not complete ({reason}); its output stays \
                         uncommitted and is derived again when the job restarts"
                    )
                    .into(),
                ));
            }
            self.commit_completed()?;
        }
        self.sink.finish().map_err(|source| self.sink_error(source))
    }
    fn flush(&mut self, what: Flush) -> Result<()> {
        // A sink writes every batch it gets; what it buffers becomes visible now if the
        // thread is going quiet, and at least once a second while it keeps writing.
        if what == Flush::All || self.flushed_at.elapsed() >= SINK_FLUSH_INTERVAL {
            self.flushed_at = Instant::now();
            self.sink
                .flush()
                .map_err(|source| self.sink_error(source))?;
        }
        Ok(())
    }
}

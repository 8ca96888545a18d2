//! Stateless operators, chained into the thread of their input: map, filter, flat_map,
//! user chained operators, the metered node wrapper and the fan-out to several consumers
//! (which clones each batch per consumer; [`super::split`] routes without copies).

use std::any::Any;
use std::time::Duration;

use super::build::{erase, Build, NodeImpl};
use super::push::{Flush, Push};
use crate::checkpoint::coordinator::Participant;
use crate::checkpoint::CheckpointId;
use crate::error::{BoxError, EngineError, Result};
use crate::job::NodeId;
use crate::metrics::{Counter, OperatorMetrics};
use crate::operator::ChainedOperator;
use crate::record::{Batch, Data, Record};
use crate::time::{Timestamp, END_WATERMARK, MIN_WATERMARK};

/// Wraps a downstream pusher into a node's pusher.
pub(super) type Wrap<T, U> = dyn Fn(Box<dyn Push<U>>, NodeContext) -> Result<Box<dyn Push<T>>>;

/// What a stateless node instance may need from the run: a node that assigns event times
/// keeps its watermark generator in checkpoints and skips events before a replay point.
pub(crate) struct NodeContext {
    /// The node's name in the job graph.
    pub(crate) name: String,
    pub(crate) participant: Option<Participant>,
    pub(crate) replay_from: Option<Timestamp>,
    /// Splits of a source that delivered nothing for this long stop holding time back.
    pub(crate) idle_timeout: Option<Duration>,
}

pub(crate) struct StatelessNode<T, U> {
    wrap: Box<Wrap<T, U>>,
    /// This node assigns event times: its output watermark is the job's progress.
    assigns_time: bool,
}

impl<T, U> StatelessNode<T, U> {
    pub(crate) fn new(
        wrap: impl Fn(Box<dyn Push<U>>, NodeContext) -> Result<Box<dyn Push<T>>> + 'static,
    ) -> Self {
        StatelessNode {
            wrap: Box::new(wrap),
            assigns_time: false,
        }
    }

    /// A node that assigns event times (see [`StatelessNode::assigns_time`]).
    pub(crate) fn assigning_time(
        wrap: impl Fn(Box<dyn Push<U>>, NodeContext) -> Result<Box<dyn Push<T>>> + 'static,
    ) -> Self {
        StatelessNode {
            assigns_time: true,
            ..StatelessNode::new(wrap)
        }
    }
}

impl<T: Data, U: Data> NodeImpl for StatelessNode<T, U> {
    fn input(&self, b: &mut Build<'_>, me: NodeId, instance: usize) -> Result<Box<dyn Any>> {
        let down = b.downstream::<U>(me, instance)?;
        let name = b.name(me);
        let metrics = b.metrics.stateless_operator(&name, instance);
        let participant = if self.assigns_time {
            b.progress.watermarks.push(metrics.watermark.clone());
            b.participant(format!("{}#{instance}", b.uid(me)))
        } else {
            None
        };
        let events_in = metrics.events_in.clone();
        let metered: Box<dyn Push<U>> = Box::new(Metered::new(down, metrics));
        let context = NodeContext {
            name,
            participant,
            replay_from: b.options.replay_from,
            idle_timeout: b.options.idle_timeout,
        };
        let node = (self.wrap)(metered, context)?;
        Ok(erase::<T>(Box::new(CountedIn { events_in, node })))
    }
}

/// Counts what a stateless node receives (`weir_events_in_total`), once per batch.
struct CountedIn<T> {
    events_in: Counter,
    node: Box<dyn Push<T>>,
}

impl<T: Data> Push<T> for CountedIn<T> {
    fn push(&mut self, batch: Batch<T>) -> Result<()> {
        self.events_in.inc_by(batch.records.len() as u64);
        self.node.push(batch)
    }
    pass_on_control!(node);
}

/// Counts what a chained operator emits and publishes its output watermark.
pub(super) struct Metered<T> {
    down: Box<dyn Push<T>>,
    metrics: OperatorMetrics,
}

impl<T> Metered<T> {
    pub(super) fn new(down: Box<dyn Push<T>>, metrics: OperatorMetrics) -> Self {
        Metered { down, metrics }
    }
}

impl<T: Data> Push<T> for Metered<T> {
    fn push(&mut self, batch: Batch<T>) -> Result<()> {
        self.metrics.events_out.inc_by(batch.records.len() as u64);
        if batch.watermark != END_WATERMARK {
            self.metrics.watermark.set(batch.watermark);
        }
        self.down.push(batch)
    }
    pass_on_control!(down);
}

pub(crate) struct MapPush<F, U> {
    f: F,
    down: Box<dyn Push<U>>,
}

impl<F, U> MapPush<F, U> {
    pub(crate) fn new(f: F, down: Box<dyn Push<U>>) -> Self {
        MapPush { f, down }
    }
}

impl<T: Data, U: Data, F: Fn(T) -> U + Send> Push<T> for MapPush<F, U> {
    fn push(&mut self, batch: Batch<T>) -> Result<()> {
        let f = &self.f;
        self.down.push(batch.map_records(|records| {
            records
                .into_iter()
                .map(|r| Record {
                    ts: r.ts,
                    watermark: r.watermark,
                    value: f(r.value),
                })
                .collect()
        }))
    }
    pass_on_control!(down);
}

/// Runs a [`ChainedOperator`] in its input's thread.
pub(crate) struct ChainedPush<O: ChainedOperator> {
    name: String,
    operator: O,
    /// The last watermark passed on: what drained records go with.
    watermark: Timestamp,
    /// Drain after every batch. With idleness on, a receiver leaves an input that sent
    /// nothing for a while out of its watermark; what the operator held would then arrive
    /// behind the watermark, late, where its input records would have been on time.
    hold_nothing: bool,
    down: Box<dyn Push<O::Out>>,
}

impl<O: ChainedOperator> ChainedPush<O> {
    pub(crate) fn new(operator: O, down: Box<dyn Push<O::Out>>, context: NodeContext) -> Self {
        ChainedPush {
            name: context.name,
            operator,
            watermark: MIN_WATERMARK,
            hold_nothing: context.idle_timeout.is_some(),
            down,
        }
    }

    fn failed(&self, source: BoxError) -> EngineError {
        EngineError::Operator {
            name: self.name.clone(),
            source,
        }
    }

    /// Sends on everything the operator holds.
    fn drain(&mut self) -> Result<()> {
        let mut out = Vec::new();
        self.operator.drain(&mut out).map_err(|e| self.failed(e))?;
        match out.is_empty() {
            true => Ok(()),
            false => self.down.push(Batch::new(out, self.watermark)),
        }
    }
}

impl<O: ChainedOperator> Push<O::In> for ChainedPush<O> {
    fn push(&mut self, batch: Batch<O::In>) -> Result<()> {
        let mut out = Vec::new();
        self.operator
            .process(batch.records, &mut out)
            .map_err(|e| self.failed(e))?;
        if batch.watermark > self.watermark {
            self.operator
                .on_watermark(batch.watermark, &mut out)
                .map_err(|e| self.failed(e))?;
            self.watermark = batch.watermark;
        }
        if self.hold_nothing {
            self.operator.drain(&mut out).map_err(|e| self.failed(e))?;
        }
        self.down
            .push(Batch::new(out, batch.watermark).ingested_at(batch.ingested))
    }
    fn barrier(&mut self, id: CheckpointId) -> Result<()> {
        self.drain()?;
        self.down.barrier(id)
    }
    fn finish(&mut self) -> Result<()> {
        self.drain()?;
        self.down.finish()
    }
    fn flush(&mut self, what: Flush) -> Result<()> {
        self.down.flush(what)
    }
}

pub(crate) struct FilterPush<F, T> {
    f: F,
    down: Box<dyn Push<T>>,
}

impl<F, T> FilterPush<F, T> {
    pub(crate) fn new(f: F, down: Box<dyn Push<T>>) -> Self {
        FilterPush { f, down }
    }
}

impl<T: Data, F: Fn(&T) -> bool + Send> Push<T> for FilterPush<F, T> {
    fn push(&mut self, mut batch: Batch<T>) -> Result<()> {
        batch.records.retain(|r| (self.f)(&r.value));
        self.down.push(batch)
    }
    pass_on_control!(down);
}

pub(crate) struct FlatMapPush<F, U> {
    f: F,
    down: Box<dyn Push<U>>,
}

impl<F, U> FlatMapPush<F, U> {
    pub(crate) fn new(f: F, down: Box<dyn Push<U>>) -> Self {
        FlatMapPush { f, down }
    }
}

impl<T: Data, U: Data, I: IntoIterator<Item = U>, F: Fn(T) -> I + Send> Push<T>
    for FlatMapPush<F, U>
{
    fn push(&mut self, batch: Batch<T>) -> Result<()> {
        let f = &self.f;
        self.down.push(batch.map_records(|input| {
            let mut records = Vec::with_capacity(input.len());
            for r in input {
                let (ts, watermark) = (r.ts, r.watermark);
                records.extend(f(r.value).into_iter().map(|value| Record {
                    ts,
                    watermark,
                    value,
                }));
            }
            records
        }))
    }
    pass_on_control!(down);
}

pub(super) struct Fanout<T> {
    pub(super) pushes: Vec<Box<dyn Push<T>>>,
}

impl<T: Data> Push<T> for Fanout<T> {
    fn push(&mut self, batch: Batch<T>) -> Result<()> {
        if let Some((last, rest)) = self.pushes.split_last_mut() {
            for p in rest {
                p.push(batch.clone())?;
            }
            last.push(batch)?;
        }
        Ok(())
    }
    fn barrier(&mut self, id: CheckpointId) -> Result<()> {
        for p in &mut self.pushes {
            p.barrier(id)?;
        }
        Ok(())
    }
    fn finish(&mut self) -> Result<()> {
        for p in &mut self.pushes {
            p.finish()?;
        }
        Ok(())
    }
    fn flush(&mut self, what: Flush) -> Result<()> {
        self.pushes.iter_mut().try_for_each(|p| p.flush(what))
    }
}

//! Side outputs: **how one operator's output reaches two streams without copying records.**
//!
//! [`crate::Stream::split`] adds a split node and one port node per output (`main` and
//! `side`), so the graph, `weir describe` and the metrics show both outputs. The split node
//! builds its consumers' pushes itself, through its ports: each record goes to the output
//! its routing function chooses, moved, not cloned. The alternative, a fan-out of the whole
//! stream into two filters, clones every record once per output (saga-monitor's completed
//! and timed-out sagas did that).
//!
//! # Invariants
//! - Both outputs see every batch's watermark, barrier, flush and end, in input order, even
//!   when a batch holds nothing for one of them: the watermark of an output never lags its
//!   input.
//! - Port nodes are only ever built by the node whose output they are: a split, or a
//!   source for its dead letters ([`super::source`]); a port has no input of its own.

use std::any::Any;

use super::build::{erase, Build, NodeImpl};
use super::push::{Flush, Push};
use crate::checkpoint::CheckpointId;
use crate::error::{EngineError, Result};
use crate::job::NodeId;
use crate::record::{Batch, Data, Record};

/// Where a split sends a record (see [`crate::Stream::split`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed<A, B> {
    /// To the main output.
    Main(A),
    /// To the side output.
    Side(B),
    /// Nowhere.
    Dropped,
}

/// The split node: its consumers are its two ports, main first.
pub(crate) struct SplitNode<T, A, B, F> {
    route: F,
    _types: std::marker::PhantomData<fn(T) -> (A, B)>,
}

impl<T, A, B, F> SplitNode<T, A, B, F> {
    pub(crate) fn new(route: F) -> Self {
        SplitNode {
            route,
            _types: std::marker::PhantomData,
        }
    }
}

impl<T, A, B, F> NodeImpl for SplitNode<T, A, B, F>
where
    T: Data,
    A: Data,
    B: Data,
    F: Fn(T) -> Routed<A, B> + Clone + Send + 'static,
{
    fn input(&self, b: &mut Build<'_>, me: NodeId, instance: usize) -> Result<Box<dyn Any>> {
        let ports = b.graph.nodes[me].consumers.clone();
        let [main, side] = ports[..] else {
            return Err(EngineError::InvalidJob {
                job: b.metrics.job().to_string(),
                reason: format!("internal: split `{}` has {} ports", b.name(me), ports.len()),
            });
        };
        let main = b.port(main, instance)?;
        let side = b.port(side, instance)?;
        Ok(erase::<T>(Box::new(SplitPush {
            route: self.route.clone(),
            main,
            side,
        })))
    }
}

/// A port of a split or of a source's dead letters: built by that node, never on its own.
pub(crate) struct PortNode;

impl NodeImpl for PortNode {
    fn input(&self, b: &mut Build<'_>, me: NodeId, _: usize) -> Result<Box<dyn Any>> {
        Err(EngineError::InvalidJob {
            job: b.metrics.job().to_string(),
            reason: format!(
                "internal: port `{}` was asked for an input; only the node whose output it is \
                 feeds it",
                b.name(me)
            ),
        })
    }
}

struct SplitPush<F, A, B> {
    route: F,
    main: Box<dyn Push<A>>,
    side: Box<dyn Push<B>>,
}

impl<T, A, B, F> Push<T> for SplitPush<F, A, B>
where
    T: Data,
    A: Data,
    B: Data,
    F: Fn(T) -> Routed<A, B> + Send,
{
    fn push(&mut self, batch: Batch<T>) -> Result<()> {
        let Batch {
            records,
            watermark,
            split,
            ingested,
        } = batch;
        let mut main = Vec::with_capacity(records.len());
        let mut side = Vec::new();
        for r in records {
            let (ts, watermark) = (r.ts, r.watermark);
            match (self.route)(r.value) {
                Routed::Main(value) => main.push(Record {
                    ts,
                    watermark,
                    value,
                }),
                Routed::Side(value) => side.push(Record {
                    ts,
                    watermark,
                    value,
                }),
                Routed::Dropped => {}
            }
        }
        // The side output first: where both outputs meet again (a union into one file),
        // records come in the order the fan-out of two filters gave them.
        self.side.push(Batch {
            records: side,
            watermark,
            split: split.clone(),
            ingested,
        })?;
        self.main.push(Batch {
            records: main,
            watermark,
            split,
            ingested,
        })
    }

    fn barrier(&mut self, id: CheckpointId) -> Result<()> {
        self.side.barrier(id)?;
        self.main.barrier(id)
    }

    fn finish(&mut self) -> Result<()> {
        self.side.finish()?;
        self.main.finish()
    }

    fn flush(&mut self, what: Flush) -> Result<()> {
        self.side.flush(what)?;
        self.main.flush(what)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;

    /// Counts its clones: a split must move records, never copy them.
    #[derive(Debug)]
    struct Event {
        n: i64,
        clones: Arc<AtomicUsize>,
    }

    impl Clone for Event {
        fn clone(&self) -> Self {
            self.clones.fetch_add(1, Ordering::Relaxed);
            Event {
                n: self.n,
                clones: self.clones.clone(),
            }
        }
    }

    /// What reached one output: each batch's values and watermark, and the barriers.
    #[derive(Default)]
    struct Seen {
        batches: Vec<(Vec<i64>, i64)>,
        barriers: Vec<CheckpointId>,
        finished: bool,
    }

    struct Recorder(Arc<Mutex<Seen>>);

    impl Push<Event> for Recorder {
        fn push(&mut self, batch: Batch<Event>) -> Result<()> {
            let values = batch.records.iter().map(|r| r.value.n).collect();
            self.0
                .lock()
                .unwrap()
                .batches
                .push((values, batch.watermark));
            Ok(())
        }
        fn barrier(&mut self, id: CheckpointId) -> Result<()> {
            self.0.lock().unwrap().barriers.push(id);
            Ok(())
        }
        fn finish(&mut self) -> Result<()> {
            self.0.lock().unwrap().finished = true;
            Ok(())
        }
        fn flush(&mut self, _: Flush) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_split_moves_each_record_to_its_output_and_both_see_every_watermark_and_barrier() {
        let (main, side) = (Arc::default(), Arc::default());
        let mut split = SplitPush {
            // Evens to main, odds to side, negatives nowhere.
            route: |e: Event| match e.n {
                n if n < 0 => Routed::Dropped,
                n if n % 2 == 0 => Routed::Main(e),
                _ => Routed::Side(e),
            },
            main: Box::new(Recorder(Arc::clone(&main))) as Box<dyn Push<Event>>,
            side: Box::new(Recorder(Arc::clone(&side))) as Box<dyn Push<Event>>,
        };
        let clones = Arc::new(AtomicUsize::new(0));
        let event = |n| Record {
            ts: n,
            watermark: 0,
            value: Event {
                n,
                clones: clones.clone(),
            },
        };
        let batch =
            |ns: &[i64], watermark| Batch::new(ns.iter().map(|&n| event(n)).collect(), watermark);
        split.push(batch(&[1, 2, -3, 4], 10)).unwrap();
        split.barrier(7).unwrap();
        // A batch with nothing for the side output still moves its watermark.
        split.push(batch(&[6], 20)).unwrap();
        split.finish().unwrap();

        let (main, side) = (main.lock().unwrap(), side.lock().unwrap());
        assert_eq!(main.batches, vec![(vec![2, 4], 10), (vec![6], 20)]);
        assert_eq!(side.batches, vec![(vec![1], 10), (vec![], 20)]);
        assert_eq!(
            (main.barriers.clone(), side.barriers.clone()),
            (vec![7], vec![7])
        );
        assert!(main.finished && side.finished);
        assert_eq!(clones.load(Ordering::Relaxed), 0, "no record was cloned");
    }
}

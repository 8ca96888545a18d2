//! Building a run: the [`Build`] that turns graph nodes ([`NodeImpl`]) into pushes,
//! channels and tasks.

use std::any::Any;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use prometheus::{IntCounter, IntGauge};
use rustc_hash::FxHashMap;

use super::alignment::Alignment;
use super::doorbell::Doorbell;
use super::exchange::{ForwardPush, Held, SinkFeed};
use super::inbox::{Inbox, Inputs};
use super::push::{Envelope, Push};
use super::stateless::{Fanout, Metered};
use super::worker::{BacklogBuilder, Part};
use super::RunOptions;
use crate::checkpoint::coordinator::{Checkpointing, Participant};
use crate::error::{EngineError, Result};
use crate::job::{Graph, NodeId, NodeKind, Uid, MAIN_OUTPUT};
use crate::metrics::JobMetrics;
use crate::query::QueryableState;
use crate::record::Data;

pub(super) struct ChannelSet<T> {
    pub(super) senders: Vec<Sender<Envelope<T>>>,
    receivers: Vec<Option<Receiver<Envelope<T>>>>,
}

pub(super) struct Task {
    pub(super) name: String,
    pub(super) run: Box<dyn FnOnce() -> Result<()> + Send>,
}

/// What the progress reporter and the summary read.
#[derive(Default)]
pub(super) struct Progress {
    pub(super) sources: Vec<IntCounter>,
    pub(super) sinks: Vec<IntCounter>,
    pub(super) watermarks: Vec<IntGauge>,
}

/// State while a graph is turned into tasks.
pub(crate) struct Build<'g> {
    pub(super) graph: &'g Graph,
    pub(super) options: &'g RunOptions,
    pub(super) metrics: &'g Arc<JobMetrics>,
    /// The job's queryable tables, whose queues keyed instances open.
    pub(super) queries: Arc<QueryableState>,
    pub(super) channels: FxHashMap<NodeId, Box<dyn Any>>,
    /// Chained unions by node and instance: the merge (an `Arc<Mutex<UnionMerge<T>>>`) and
    /// how many of its inputs were handed out.
    pub(super) unions: FxHashMap<(NodeId, usize), (Box<dyn Any>, usize)>,
    pub(super) next_producer: FxHashMap<NodeId, usize>,
    pub(super) tasks: Vec<Task>,
    pub(super) progress: Progress,
    /// Directory of the keyed instances' RocksDB databases and their shared block cache.
    pub(super) rocksdb: Option<(PathBuf, crate::state::SharedCache)>,
    pub(super) checkpointing: Option<Arc<Checkpointing>>,
    /// Set by the first task that fails; sources stop when they see it.
    pub(super) cancelled: Arc<AtomicBool>,
    /// Set by [`JobControl::stop`]: sources end their input where they are.
    pub(super) stopping: Arc<AtomicBool>,
    /// At parallelism > 1, what each worker thread runs (see [`worker`]).
    pub(super) workers: Vec<Vec<Box<dyn Part>>>,
    /// The channels into workers, which sources keep from overfilling.
    pub(super) backlog: BacklogBuilder,
    /// The wake-ups of sinks' threads, by node.
    pub(super) doorbells: FxHashMap<NodeId, Arc<Doorbell>>,
    /// Every node's uid, by node id.
    pub(super) uids: Vec<Uid>,
}

impl Build<'_> {
    pub(super) fn name(&self, id: NodeId) -> String {
        self.graph.nodes[id].name.clone()
    }

    /// The uid node `id`'s state is checkpointed under.
    pub(super) fn uid(&self, id: NodeId) -> String {
        self.uids[id].value.clone()
    }

    pub(super) fn chained(&self, id: NodeId) -> bool {
        self.graph.is_chained(id, self.options.parallelism)
    }

    /// What instance `instance` of a split delivers to its port `port`: the port's
    /// downstream, counted in the port's metrics (see [`super::split`]).
    pub(super) fn port<T: Data>(
        &mut self,
        port: NodeId,
        instance: usize,
    ) -> Result<Box<dyn Push<T>>> {
        let down = self.downstream(port, instance)?;
        let metrics = self.metrics.stateless_operator(&self.name(port), instance);
        Ok(Box::new(Metered::new(down, metrics)))
    }

    /// What instance `instance` of node `me` delivers its side output `output` to: its
    /// ports' downstream (see [`super::split`]), `None` if nothing reads that output.
    pub(super) fn side_output<T: Data>(
        &mut self,
        me: NodeId,
        output: usize,
        instance: usize,
    ) -> Result<Option<Box<dyn Push<T>>>> {
        let ports: Vec<NodeId> = self.graph.nodes[me]
            .consumers
            .iter()
            .copied()
            .filter(|&c| self.graph.nodes[c].output == output)
            .collect();
        let mut pushes = Vec::with_capacity(ports.len());
        for port in ports {
            pushes.push(self.port(port, instance)?);
        }
        Ok(match pushes.len() {
            0 => None,
            1 => pushes.pop(),
            _ => Some(Box::new(Fanout { pushes })),
        })
    }

    /// The pusher instance `instance` of node `me` delivers its (main) output to.
    pub(super) fn downstream<T: Data>(
        &mut self,
        me: NodeId,
        instance: usize,
    ) -> Result<Box<dyn Push<T>>> {
        let consumers: Vec<NodeId> = self.graph.nodes[me]
            .consumers
            .iter()
            .copied()
            .filter(|&c| self.graph.nodes[c].output == MAIN_OUTPUT)
            .collect();
        let mut pushes: Vec<Box<dyn Push<T>>> = Vec::with_capacity(consumers.len());
        for c in consumers {
            let imp = self.graph.nodes[c].imp.clone();
            let input = imp.input(self, c, instance)?;
            let push = input
                .downcast::<Box<dyn Push<T>>>()
                .map_err(|_| EngineError::Internal {
                    reason: format!("`{}` got an input of the wrong type", self.name(c)),
                })?;
            pushes.push(*push);
        }
        match pushes.len() {
            0 => Err(EngineError::InvalidJob {
                job: self.metrics.job().to_string(),
                reason: format!(
                    "the output of `{}` goes nowhere: add a sink to it",
                    self.name(me)
                ),
            }),
            1 => Ok(pushes.pop().expect("one pusher")),
            _ => Ok(Box::new(Fanout { pushes })),
        }
    }

    /// True if node `me`'s instances receive in the worker threads (keyed nodes at
    /// parallelism > 1), not in tasks of their own.
    fn colocated_receiver(&self, me: NodeId) -> bool {
        self.options.parallelism > 1 && self.graph.nodes[me].kind == NodeKind::Keyed
    }

    /// True if node `me`'s instances run in the worker threads (parallel sources at
    /// parallelism > 1), not in tasks of their own.
    pub(super) fn colocated_source(&self, me: NodeId) -> bool {
        self.options.parallelism > 1 && self.graph.nodes[me].kind == NodeKind::ParallelSource
    }

    pub(super) fn channels<T: Data>(&mut self, me: NodeId, instances: usize) -> &mut ChannelSet<T> {
        let capacity = self.options.channel_capacity.max(1);
        // A worker must never block on a send (it may be the receiver), so channels into
        // workers are unbounded and sources stop polling while any holds `capacity`.
        let colocated = self.colocated_receiver(me);
        let backlog = &mut self.backlog;
        let entry = self.channels.entry(me).or_insert_with(|| {
            let (senders, receivers) = (0..instances)
                .map(|_| {
                    let (tx, rx) = match colocated {
                        true => {
                            let (tx, rx) = unbounded::<Envelope<T>>();
                            backlog.watch(rx.clone(), capacity);
                            (tx, rx)
                        }
                        false => bounded::<Envelope<T>>(capacity),
                    };
                    (tx, Some(rx))
                })
                .unzip();
            Box::new(ChannelSet::<T> { senders, receivers })
        });
        entry
            .downcast_mut::<ChannelSet<T>>()
            .expect("a node's channels always carry its input type")
    }

    /// A new producer's end of the single channel in front of node `me`; for a sink it
    /// holds batches back and rings the sink's doorbell.
    pub(super) fn forward_input<T: Data>(&mut self, me: NodeId, sink: bool) -> ForwardPush<T> {
        let producer = self.next_producer(me);
        ForwardPush {
            name: self.name(me),
            producer,
            sender: self.channels::<T>(me, 1).senders[0].clone(),
            sink: sink.then(|| SinkFeed {
                held: Held::new(self.options.batch_size.max(1)),
                doorbell: self.doorbell(me),
            }),
        }
    }

    /// The doorbell of node `me`'s thread, which it waits on instead of its channel.
    pub(super) fn doorbell(&mut self, me: NodeId) -> Arc<Doorbell> {
        self.doorbells.entry(me).or_default().clone()
    }

    /// Registers a checkpoint participant called `key`, if the job checkpoints.
    pub(super) fn participant(&self, key: String) -> Option<Participant> {
        self.checkpointing.as_ref().map(|c| c.register(key))
    }

    pub(super) fn next_producer(&mut self, me: NodeId) -> usize {
        let n = self.next_producer.entry(me).or_insert(0);
        *n += 1;
        *n - 1
    }

    /// Starts draining channel `instance` of node `me` into `down`: in a worker thread for
    /// a keyed node's instance at parallelism > 1, else in a task of its own.
    pub(super) fn spawn_receiver<T: Data>(
        &mut self,
        me: NodeId,
        instance: usize,
        instances: usize,
        down: Box<dyn Push<T>>,
    ) -> Result<()> {
        let name = format!("{}#{instance}", self.name(me));
        let producers = self.graph.producers(me, self.options.parallelism);
        let rx = self.channels::<T>(me, instances).receivers[instance]
            .take()
            .ok_or_else(|| EngineError::Internal {
                reason: format!("the input channel of `{name}` was taken twice"),
            })?;
        let (fill, capacity) = self.metrics.channel(&self.name(me), instance);
        capacity.set(self.options.channel_capacity as i64);
        let inbox = Inbox {
            name: name.clone(),
            rx,
            inputs: Inputs::new(producers, self.options.idle_timeout),
            alignment: Alignment::new(producers),
            fill,
            down,
            checkpointing: self.checkpointing.clone(),
            doorbell: self.doorbells.get(&me).cloned(),
        };
        if self.colocated_receiver(me) {
            self.workers[instance].push(Box::new(inbox));
        } else {
            self.tasks.push(Task {
                name,
                run: Box::new(move || inbox.run()),
            });
        }
        Ok(())
    }
}

/// The scheduling behaviour of one node kind, with its types erased.
pub(crate) trait NodeImpl {
    /// The pusher upstream instance `upstream_instance` uses to deliver into node `me`,
    /// boxed as `Box<dyn Push<In>>` inside the `Any`.
    fn input(
        &self,
        b: &mut Build<'_>,
        me: NodeId,
        upstream_instance: usize,
    ) -> Result<Box<dyn Any>>;

    /// Creates the tasks this node runs in its own threads, if any.
    fn start(&self, _b: &mut Build<'_>, _me: NodeId) -> Result<()> {
        Ok(())
    }
}

pub(super) fn erase<T: 'static>(push: Box<dyn Push<T>>) -> Box<dyn Any> {
    Box::new(push)
}

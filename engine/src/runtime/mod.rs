//! Turning a job graph into threads and bounded channels, and running it.
//!
//! # Scheduling
//! - At parallelism P > 1 the job runs P worker threads ([`worker`]): worker `w` runs
//!   instance `w` of every source added with [`crate::Job::parallel_source`] and of every
//!   keyed operator. Keyed input is routed by key group through channels; a record whose
//!   key group belongs to the worker that made it never leaves that thread. The instances
//!   of a parallel source move in step ([`Lockstep`]), unless they keep together by
//!   themselves ([`crate::Source::aligns_instances`]). A checkpoint holds one position per
//!   instance, so a parallel source resumes only with as many instances as it had.
//! - Any other source runs in a task (thread) of its own, as does a parallel source at
//!   P = 1, each instance with its own chain of stateless operators after it.
//! - Stateless operators are chained: they run as plain calls in the thread of their input.
//! - At P = 1 a keyed operator is chained too when it has a single upstream instance, and
//!   otherwise runs in a task of its own fed by a bounded channel.
//! - Sinks run where their single input runs, or in a task of their own fed by a channel
//!   when several upstream instances deliver to them. A union of branches of one stream
//!   (all its inputs in one thread, instance by instance) is chained into that thread
//!   ([`UnionMerge`]); a union of streams from different threads has a task of its own.
//! - What goes to a sink's own task is held back a little ([`Held`]): results are sent
//!   when a batch's worth or 1 ms of them has gathered, and whenever the producing thread
//!   goes quiet ([`Push::flush`]; not when it only waits for a slower worker); a watermark
//!   without results waits up to 10 ms. The sink's task sleeps on a
//!   [`doorbell::Doorbell`], not in the channel's spin-then-yield wait.
//!
//! # Backpressure
//! Channels hold at most [`RunOptions::channel_capacity`] batches. A full channel blocks the
//! sender, so a slow sink slows the source instead of growing memory. Channels into worker
//! threads cannot block their senders (workers send to each other); sources stop polling
//! while any of them holds that many messages instead ([`worker::Backlog`]).
//!
//! # Watermarks across channels
//! A receiver with several producers tracks each producer's watermark; its watermark (and
//! the watermark stamped on each record it forwards) is the minimum over producers.
//!
//! # Checkpoints
//! With [`RunOptions::checkpoints`], barriers travel with the batches (see
//! [`crate::checkpoint`]): a receiver with several producers aligns them in [`Inbox`], keyed
//! operator instances snapshot in [`KeyedRunner`], sinks pre-commit in [`SinkPush`], and
//! sources inject barriers between polls. Each keyed instance has a RocksDB database of its
//! own under `<state-dir>/<job>/rocksdb/`.
//!
//! # Shutdown
//! A source that is exhausted sends the end watermark (`i64::MAX`), which fires every
//! window, then an end marker. A source of a job that is stopping ([`JobControl::stop`])
//! sends only the end marker, so open windows stay open; with checkpoints, sources end only
//! after the final checkpoint, which the coordinator takes once every source ended its
//! input either way. Receivers pass the end on once all their producers ended, adding no
//! watermark of their own. A task that fails drops its channels; its neighbours notice
//! ([`EngineError::DownstreamGone`] / [`EngineError::UpstreamGone`]) and stop, and
//! [`run`] reports the first real cause.

use std::any::Any;
use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::marker::PhantomData;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, unbounded, Receiver, Select, Sender};
use prometheus::{IntCounter, IntGauge};
use rustc_hash::FxHashMap;

use crate::checkpoint::coordinator::{Checkpointing, Participant, RunClaims};
use crate::checkpoint::{CheckpointConfig, CheckpointId, JobControl};
use crate::error::{BoxError, EngineError, Result};
use crate::job::{Graph, NodeId, NodeKind, Uid};
use crate::keys::{
    key_group_of, key_groups_of_worker, worker_for_key_group, KeyGroup, StableHash, MAX_KEY_GROUPS,
};
use crate::latency::{LatencyHistogram, LatencySummary};
use crate::metrics::{JobMetrics, MetricFamily, OperatorMetrics};
use crate::operator::{ChainedOperator, KeyedOperator, OperatorContext, OperatorFactory, Output};
use crate::record::{Batch, Data, Keyed, Record, Split};
use crate::sink::Sink;
use crate::source::{Source, SourceStatus};
use crate::state::{
    read_key_groups, shared_block_cache, write_snapshot, MemoryBackend, MemorySnapshots,
    RocksBackend, RocksStore, StateBackend, StateConfig,
};
use crate::time::{format_timestamp, Timestamp, Watermarks, END_WATERMARK, MIN_WATERMARK};
use state_dir::{lock_state_dirs, operator_records};

mod doorbell;
mod state_dir;
mod worker;

use doorbell::Doorbell;
use worker::{Backlog, BacklogBuilder, Part, Step};

/// How a job runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Number of workers of each keyed operator (1..=128).
    pub parallelism: usize,
    /// Largest number of events a source hands over at once.
    pub batch_size: usize,
    /// Batches a channel holds before its sender blocks.
    pub channel_capacity: usize,
    /// Print progress (events, events/s, watermark) to stderr this often.
    pub progress_interval: Option<Duration>,
    /// An input of a multi-input operator that delivers nothing for this long is idle and
    /// left out of the watermark minimum until it delivers again (default: never).
    pub idle_timeout: Option<Duration>,
    /// Where keyed operators keep their state.
    pub state: StateConfig,
    /// Periodic checkpoints, and resuming from the newest one (with either state backend).
    pub checkpoints: Option<CheckpointConfig>,
    /// Skip events whose event time is before this (a replay from a point in time).
    pub replay_from: Option<Timestamp>,
    /// Names this run in progress lines and messages when it is one of several tasks of a
    /// job in one process (e.g. `partition 3`).
    pub task: Option<String>,
    /// How long to wait for another run to release the state directory before refusing to
    /// start (default zero: refused at once, naming the holder).
    pub state_dir_wait: Duration,
    /// Restore a checkpoint even if some of its state has no operator (by uid) in the job,
    /// dropping that state (Flink's `--allowNonRestoredState`). Default: refuse.
    pub allow_non_restored_state: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            parallelism: 1,
            batch_size: 1024,
            channel_capacity: 16,
            progress_interval: None,
            idle_timeout: None,
            state: StateConfig::Memory,
            checkpoints: None,
            replay_from: None,
            task: None,
            state_dir_wait: Duration::ZERO,
            allow_non_restored_state: false,
        }
    }
}

/// What a finished run did.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// Events read by all sources.
    pub events_read: u64,
    /// Records sent to dead-letter outputs.
    pub dead_letters: u64,
    /// Events dropped from windows as late.
    pub late_events: u64,
    /// Records received by the sinks of results (not by side outputs' sinks).
    pub results_written: u64,
    /// Wall-clock duration of the run.
    pub elapsed: Duration,
    /// The last event-time watermark before the end of input, if any events had times.
    pub watermark: Option<Timestamp>,
    /// End-to-end latency of the results the sinks received (see [`crate::latency`]).
    pub latency: Option<LatencySummary>,
    /// The run ended because it was stopped ([`JobControl::stop`]), not at the end of its
    /// input: windows still open were not fired (with checkpoints they are in the final
    /// checkpoint, and the next run goes on from there).
    pub stopped: bool,
}

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

/// The `barrier`, `finish` and `flush` of a push that passes them on to `self.$down`
/// unchanged (most of them).
macro_rules! pass_on_control {
    ($down:ident) => {
        fn barrier(&mut self, id: CheckpointId) -> Result<()> {
            self.$down.barrier(id)
        }
        fn finish(&mut self) -> Result<()> {
            self.$down.finish()
        }
        fn flush(&mut self, what: Flush) -> Result<()> {
            self.$down.flush(what)
        }
    };
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
enum Message<T> {
    Batch(Batch<T>),
    Barrier(CheckpointId),
    End,
}

type Envelope<T> = (usize, Message<T>);

struct ChannelSet<T> {
    senders: Vec<Sender<Envelope<T>>>,
    receivers: Vec<Option<Receiver<Envelope<T>>>>,
}

struct Task {
    name: String,
    run: Box<dyn FnOnce() -> Result<()> + Send>,
}

/// What the progress reporter and the summary read.
#[derive(Default)]
struct Progress {
    sources: Vec<IntCounter>,
    sinks: Vec<IntCounter>,
    watermarks: Vec<IntGauge>,
}

/// State while a graph is turned into tasks.
pub(crate) struct Build<'g> {
    graph: &'g Graph,
    options: &'g RunOptions,
    metrics: &'g Arc<JobMetrics>,
    channels: FxHashMap<NodeId, Box<dyn Any>>,
    /// Chained unions by node and instance: the merge (an `Arc<Mutex<UnionMerge<T>>>`) and
    /// how many of its inputs were handed out.
    unions: FxHashMap<(NodeId, usize), (Box<dyn Any>, usize)>,
    next_producer: FxHashMap<NodeId, usize>,
    tasks: Vec<Task>,
    progress: Progress,
    /// Directory of the keyed instances' RocksDB databases and their shared block cache.
    rocksdb: Option<(PathBuf, crate::state::SharedCache)>,
    checkpointing: Option<Arc<Checkpointing>>,
    /// Set by the first task that fails; sources stop when they see it.
    cancelled: Arc<AtomicBool>,
    /// Set by [`JobControl::stop`]: sources end their input where they are.
    stopping: Arc<AtomicBool>,
    /// At parallelism > 1, what each worker thread runs (see [`worker`]).
    workers: Vec<Vec<Box<dyn Part>>>,
    /// The channels into workers, which sources keep from overfilling.
    backlog: BacklogBuilder,
    /// The wake-ups of sinks' threads, by node.
    doorbells: FxHashMap<NodeId, Arc<Doorbell>>,
    /// Every node's uid, by node id.
    uids: Vec<Uid>,
}

impl Build<'_> {
    fn name(&self, id: NodeId) -> String {
        self.graph.nodes[id].name.clone()
    }

    /// The uid node `id`'s state is checkpointed under.
    fn uid(&self, id: NodeId) -> String {
        self.uids[id].value.clone()
    }

    fn chained(&self, id: NodeId) -> bool {
        self.graph.is_chained(id, self.options.parallelism)
    }

    /// The pusher instance `instance` of node `me` delivers its output to.
    fn downstream<T: Data>(&mut self, me: NodeId, instance: usize) -> Result<Box<dyn Push<T>>> {
        let consumers = self.graph.nodes[me].consumers.clone();
        let mut pushes: Vec<Box<dyn Push<T>>> = Vec::with_capacity(consumers.len());
        for c in consumers {
            let imp = self.graph.nodes[c].imp.clone();
            let input = imp.input(self, c, instance)?;
            let push =
                input
                    .downcast::<Box<dyn Push<T>>>()
                    .map_err(|_| EngineError::InvalidJob {
                        job: self.metrics.job().to_string(),
                        reason: format!(
                            "internal: `{}` got an input of the wrong type",
                            self.name(c)
                        ),
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
    fn colocated_source(&self, me: NodeId) -> bool {
        self.options.parallelism > 1 && self.graph.nodes[me].kind == NodeKind::ParallelSource
    }

    fn channels<T: Data>(&mut self, me: NodeId, instances: usize) -> &mut ChannelSet<T> {
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
    fn forward_input<T: Data>(&mut self, me: NodeId, sink: bool) -> ForwardPush<T> {
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
    fn doorbell(&mut self, me: NodeId) -> Arc<Doorbell> {
        self.doorbells.entry(me).or_default().clone()
    }

    /// Registers a checkpoint participant called `key`, if the job checkpoints.
    fn participant(&self, key: String) -> Option<Participant> {
        self.checkpointing.as_ref().map(|c| c.register(key))
    }

    fn next_producer(&mut self, me: NodeId) -> usize {
        let n = self.next_producer.entry(me).or_insert(0);
        *n += 1;
        *n - 1
    }

    /// Starts draining channel `instance` of node `me` into `down`: in a worker thread for
    /// a keyed node's instance at parallelism > 1, else in a task of its own.
    fn spawn_receiver<T: Data>(
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
            .ok_or_else(|| EngineError::InvalidJob {
                job: name.clone(),
                reason: "internal: channel drained twice".into(),
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

fn erase<T: 'static>(push: Box<dyn Push<T>>) -> Box<dyn Any> {
    Box::new(push)
}

// ---------------------------------------------------------------- sources

pub(crate) struct SourceNode<S> {
    instances: RefCell<SourceInstances<S>>,
}

/// Where a source node's instances come from.
enum SourceInstances<S> {
    /// The one instance, whatever the parallelism; taken by the first run.
    One(Option<S>),
    /// `make(instance, instances)`: one per worker, built for each run.
    Split(Box<dyn Fn(usize, usize) -> S>),
}

impl<S> SourceNode<S> {
    pub(crate) fn new(source: S) -> Self {
        SourceNode {
            instances: RefCell::new(SourceInstances::One(Some(source))),
        }
    }

    pub(crate) fn split(make: impl Fn(usize, usize) -> S + 'static) -> Self {
        SourceNode {
            instances: RefCell::new(SourceInstances::Split(Box::new(make))),
        }
    }
}

impl<S: Source> NodeImpl for SourceNode<S> {
    fn input(&self, b: &mut Build<'_>, me: NodeId, _: usize) -> Result<Box<dyn Any>> {
        Err(EngineError::InvalidJob {
            job: b.metrics.job().to_string(),
            reason: format!("internal: source `{}` cannot have an input", b.name(me)),
        })
    }

    fn start(&self, b: &mut Build<'_>, me: NodeId) -> Result<()> {
        let name = b.name(me);
        let count = b.graph.parallelism(me, b.options.parallelism);
        let sources = match &mut *self.instances.borrow_mut() {
            SourceInstances::One(source) => {
                vec![source.take().ok_or_else(|| EngineError::InvalidJob {
                    job: b.metrics.job().to_string(),
                    reason: format!(
                        "source `{name}` was already used by an earlier run: build the job again"
                    ),
                })?]
            }
            SourceInstances::Split(make) => {
                check_restored_instances(b, &name, &b.uid(me), count)?;
                (0..count).map(|i| make(i, count)).collect()
            }
        };
        let lockstep = Lockstep::new(count, b.options.channel_capacity.max(1) as u64);
        for (instance, source) in sources.into_iter().enumerate() {
            let in_step =
                (count > 1 && !source.aligns_instances()).then(|| lockstep.instance(instance));
            start_source_instance(b, me, instance, count, source, in_step)?;
        }
        Ok(())
    }
}

/// A split source's positions belong to its instances' shares of the input, so a restore
/// needs as many instances as the checkpoint had.
fn check_restored_instances(b: &Build<'_>, name: &str, uid: &str, count: usize) -> Result<()> {
    let Some(manifest) = b.checkpointing.as_ref().and_then(|c| c.restored()) else {
        return Ok(());
    };
    let prefix = format!("{uid}#");
    let checkpointed = manifest
        .participants
        .keys()
        .filter(|k| k.starts_with(&prefix))
        .count();
    if checkpointed == count {
        return Ok(());
    }
    Err(EngineError::InvalidJob {
        job: b.metrics.job().to_string(),
        reason: format!(
            "source `{name}` reads its input split over the workers and checkpoint {} has \
             {checkpointed} of its instances, not {count}: resume with --parallelism \
             {checkpointed}, or start over with --replay-from beginning",
            manifest.id
        ),
    })
}

/// Spawns the task that polls instance `instance` (of `count`) of source node `me`.
fn start_source_instance<S: Source>(
    b: &mut Build<'_>,
    me: NodeId,
    instance: usize,
    count: usize,
    mut source: S,
    lockstep: Option<Lockstep>,
) -> Result<()> {
    let name = b.name(me);
    let source_err = |source| EngineError::Source {
        name: name.clone(),
        source,
    };
    let participant = b
        .checkpointing
        .as_ref()
        .map(|c| c.register_source(format!("{}#{instance}", b.uid(me))));
    if let Some(p) = &participant {
        if source.position().map_err(source_err)?.is_none() {
            return Err(EngineError::InvalidJob {
                job: b.metrics.job().to_string(),
                reason: format!(
                    "source `{name}` ({}) cannot be replayed, so the job cannot checkpoint: \
                         run it without --checkpoint-interval",
                    source.describe()
                ),
            });
        }
        if let Some(position) = p.restored() {
            source.seek(position).map_err(source_err)?;
        }
    }
    let down = b.downstream::<S::Item>(me, instance)?;
    let metrics = b.metrics.stateless_operator(&name, instance);
    b.progress.sources.push(metrics.events_out.clone());
    let last_barrier = participant
        .as_ref()
        .map_or(0, |p| p.checkpointing().restored_id());
    let source_loop = SourceLoop {
        name: name.clone(),
        source,
        down,
        events_out: metrics.events_out,
        batch_size: b.options.batch_size.max(1),
        items: Vec::with_capacity(b.options.batch_size.max(1)),
        participant,
        last_barrier,
        pending_positions: VecDeque::new(),
        final_barrier: None,
        exhausted: false,
        cancelled: b.cancelled.clone(),
        stopping: b.stopping.clone(),
        backlog: b.backlog.backlog(),
        lockstep,
        pending_until: None,
    };
    if b.colocated_source(me) {
        b.workers[instance].push(Box::new(source_loop));
        return Ok(());
    }
    b.tasks.push(Task {
        name: if count > 1 {
            format!("{name}#{instance}")
        } else {
            name
        },
        run: Box::new(move || source_loop.run()),
    });
    Ok(())
}

/// Polls one source instance into its chain and puts checkpoint barriers between polls.
struct SourceLoop<S: Source> {
    name: String,
    source: S,
    down: Box<dyn Push<S::Item>>,
    events_out: IntCounter,
    batch_size: usize,
    items: Vec<S::Item>,
    participant: Option<Participant>,
    last_barrier: CheckpointId,
    /// Positions acked for checkpoints not known complete yet, oldest first.
    pending_positions: VecDeque<(CheckpointId, serde_json::Value)>,
    /// The final checkpoint's barrier went out: the loop ends once it completed (or failed).
    final_barrier: Option<CheckpointId>,
    /// The source read all its input, or stopped reading because the job is stopping.
    exhausted: bool,
    cancelled: Arc<AtomicBool>,
    /// Set when the job is asked to stop ([`JobControl::stop`]).
    stopping: Arc<AtomicBool>,
    backlog: Backlog,
    /// For an instance of a parallel source: its place among its siblings.
    lockstep: Option<Lockstep>,
    /// The source said nothing is due before this ([`SourceStatus::Pending`]).
    pending_until: Option<Instant>,
}

impl<S: Source> SourceLoop<S> {
    fn source_err(&self, source: crate::BoxError) -> EngineError {
        EngineError::Source {
            name: self.name.clone(),
            source,
        }
    }

    /// The source reads no more: at the end of its input (`reached_end`) the end watermark
    /// fires every window; when the job stops, windows stay open (in the final checkpoint,
    /// for the next run). With checkpoints the loop goes on until the final checkpoint.
    fn end_input(&mut self, reached_end: bool) -> Result<Step> {
        if reached_end {
            self.down.push(Batch::new(Vec::new(), END_WATERMARK))?;
        }
        self.exhausted = true;
        self.pending_until = None;
        if let Some(lockstep) = &self.lockstep {
            // Siblings no longer wait for this instance.
            lockstep.polled(true);
        }
        match &self.participant {
            Some(p) => {
                p.checkpointing().source_exhausted();
                Ok(Step::Worked)
            }
            None => {
                self.down.finish()?;
                Ok(Step::Done)
            }
        }
    }

    /// Runs in a thread of its own until the source ended and its final checkpoint is done.
    fn run(mut self) -> Result<()> {
        loop {
            match self.step()? {
                Step::Worked => {}
                Step::Idle => {
                    self.down.flush(Flush::All)?;
                    std::thread::sleep(self.wake_after().unwrap_or_default());
                }
                Step::HeldBack => {
                    self.down.flush(Flush::Due)?;
                    std::thread::sleep(self.wake_after().unwrap_or_default());
                }
                Step::Done => return Ok(()),
            }
        }
    }
}

impl<S: Source> Part for SourceLoop<S> {
    fn step(&mut self) -> Result<Step> {
        // A source that is idle sends nothing, so it would never notice that another task
        // failed: it asks.
        if self.cancelled.load(Ordering::Relaxed) {
            return Err(EngineError::DownstreamGone {
                name: self.name.clone(),
            });
        }
        if let Some(p) = &self.participant {
            if let Some(id) = self.final_barrier {
                // The final checkpoint's position is told too, if it completes.
                match p.checkpointing().completion(id, &self.cancelled) {
                    None => return Ok(Step::Idle),
                    Some(Ok(())) => {
                        notify_completed(&mut self.source, &mut self.pending_positions, id)
                            .map_err(|e| self.source_err(e))?
                    }
                    Some(Err(_)) => {}
                }
                self.down.finish()?;
                return Ok(Step::Done);
            }
            notify_completed(
                &mut self.source,
                &mut self.pending_positions,
                p.checkpointing().completed(),
            )
            .map_err(|e| self.source_err(e))?;
            let id = p.checkpointing().requested();
            if id > self.last_barrier {
                self.last_barrier = id;
                let position = match self.source.position() {
                    Ok(Some(position)) => {
                        self.pending_positions.push_back((id, position.clone()));
                        Ok(position)
                    }
                    Ok(None) => Err("the source cannot be replayed".to_string()),
                    Err(e) => Err(e.to_string()),
                };
                p.ack(id, position);
                self.down.barrier(id)?;
                if p.checkpointing().is_final(id) {
                    self.final_barrier = Some(id);
                }
                return Ok(Step::Worked);
            }
        }
        if self.exhausted {
            return Ok(Step::Idle);
        }
        if self.stopping.load(Ordering::Relaxed) {
            return self.end_input(false);
        }
        if self
            .pending_until
            .is_some_and(|until| Instant::now() < until)
        {
            return Ok(Step::Idle);
        }
        self.pending_until = None;
        if self.backlog.is_full() || self.lockstep.as_ref().is_some_and(Lockstep::ahead) {
            return Ok(Step::HeldBack);
        }
        let status = self
            .source
            .poll_batch(&mut self.items, self.batch_size)
            .map_err(|e| self.source_err(e))?;
        if self.items.is_empty() {
            // The source may wait in its next poll: what is held for a sink goes now.
            self.down.flush(Flush::All)?;
        } else {
            self.events_out.inc_by(self.items.len() as u64);
            let records = self
                .items
                .drain(..)
                .map(|value| Record {
                    ts: MIN_WATERMARK,
                    watermark: MIN_WATERMARK,
                    value,
                })
                .collect();
            self.down.push(Batch {
                records,
                watermark: MIN_WATERMARK,
                split: self.source.split_of_batch(),
                ingested: Some(Instant::now()),
            })?;
        }
        match status {
            SourceStatus::Exhausted => return self.end_input(true),
            SourceStatus::Pending(wait) => self.pending_until = Some(Instant::now() + wait),
            SourceStatus::More | SourceStatus::Idle => {}
        }
        if let Some(lockstep) = &self.lockstep {
            lockstep.polled(false);
        }
        Ok(Step::Worked)
    }

    fn watch<'a>(&'a self, _select: &mut Select<'a>) {}

    fn wake_after(&self) -> Option<Duration> {
        Some(match self.pending_until {
            Some(until) => until.saturating_duration_since(Instant::now()),
            // Only the final checkpoint is left to take part in: no hurry.
            None if self.exhausted => Duration::from_millis(2),
            // Held back by the workers' backlog or a slower sibling.
            None => Duration::from_micros(100),
        })
    }

    fn flush(&mut self, what: Flush) -> Result<()> {
        self.down.flush(what)
    }
}

/// Keeps the instances of a parallel source in step: one that polled more than `lead`
/// batches past the slowest waits. Their shares interleave in event time, and a keyed
/// operator's watermark is the minimum over them, so an instance running ahead only makes
/// state pile up downstream until the others catch up (Flink's watermark alignment, counted
/// in batches because the instances split one stream by position).
#[derive(Clone)]
struct Lockstep {
    /// Batches polled per instance; `u64::MAX` once an instance is exhausted.
    polled: Arc<[AtomicU64]>,
    instance: usize,
    lead: u64,
}

impl Lockstep {
    fn new(instances: usize, lead: u64) -> Self {
        Lockstep {
            polled: (0..instances).map(|_| AtomicU64::new(0)).collect(),
            instance: 0,
            lead,
        }
    }

    fn instance(&self, instance: usize) -> Self {
        Lockstep {
            instance,
            ..self.clone()
        }
    }

    fn ahead(&self) -> bool {
        let mine = self.polled[self.instance].load(Ordering::Relaxed);
        let slowest = self.polled.iter().map(|p| p.load(Ordering::Relaxed)).min();
        slowest.is_some_and(|slowest| mine > slowest.saturating_add(self.lead))
    }

    fn polled(&self, exhausted: bool) {
        let polled = &self.polled[self.instance];
        match exhausted {
            true => polled.store(u64::MAX, Ordering::Relaxed),
            false => {
                polled.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Tells `source` the newest of its positions whose checkpoint (at most `completed`) is
/// complete, and forgets those.
fn notify_completed<S: Source>(
    source: &mut S,
    pending: &mut VecDeque<(CheckpointId, serde_json::Value)>,
    completed: CheckpointId,
) -> std::result::Result<(), crate::BoxError> {
    let mut newest = None;
    while pending.front().is_some_and(|(id, _)| *id <= completed) {
        newest = pending.pop_front();
    }
    match newest {
        Some((_, position)) => source.checkpoint_completed(&position),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------- stateless

/// Wraps a downstream pusher into a node's pusher.
type Wrap<T, U> = dyn Fn(Box<dyn Push<U>>, NodeContext) -> Result<Box<dyn Push<T>>>;

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
        let metered: Box<dyn Push<U>> = Box::new(Metered { down, metrics });
        let context = NodeContext {
            name,
            participant,
            replay_from: b.options.replay_from,
            idle_timeout: b.options.idle_timeout,
        };
        Ok(erase((self.wrap)(metered, context)?))
    }
}

/// Counts what a chained operator emits and publishes its output watermark.
struct Metered<T> {
    down: Box<dyn Push<T>>,
    metrics: OperatorMetrics,
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

pub(crate) struct TimestampPush<F, T> {
    ts: F,
    watermarks: Watermarks,
    clock: EventClock,
    /// The splits of the source as last announced, and when each last delivered.
    active: Option<Arc<[u32]>>,
    last_seen: BTreeMap<u32, Instant>,
    idle_timeout: Option<Duration>,
    participant: Option<Participant>,
    replay_from: Option<Timestamp>,
    down: Box<dyn Push<T>>,
}

/// The state of a watermark generator, kept in checkpoints so that a restarted job decides
/// lateness exactly as the uninterrupted one would.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
struct WatermarkGenerator {
    max_ts: Timestamp,
    current: Timestamp,
}

impl WatermarkGenerator {
    const START: WatermarkGenerator = WatermarkGenerator {
        max_ts: MIN_WATERMARK,
        current: MIN_WATERMARK,
    };

    /// Advances past an event at `ts`.
    #[inline]
    fn observe(&mut self, ts: Timestamp, watermarks: &Watermarks) {
        if ts > self.max_ts {
            self.max_ts = ts;
            self.current = self.current.max(watermarks.watermark_for(ts));
        }
    }
}

/// Event time of a stream: its watermark generator and, for a source with splits, one
/// generator per split. The stream's watermark is then the minimum over the splits that are
/// active and not idle, and never goes back.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct EventClock {
    #[serde(flatten)]
    stream: WatermarkGenerator,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    splits: BTreeMap<u32, WatermarkGenerator>,
}

impl<F, T> TimestampPush<F, T> {
    pub(crate) fn new(
        ts: F,
        watermarks: Watermarks,
        down: Box<dyn Push<T>>,
        context: NodeContext,
    ) -> Result<Self> {
        let NodeContext {
            participant,
            replay_from,
            idle_timeout,
            ..
        } = context;
        let restored = participant.as_ref().and_then(|p| p.restored());
        let clock = match restored {
            Some(value) => {
                serde_json::from_value(value.clone()).map_err(|e| EngineError::InvalidJob {
                    job: "<restore>".into(),
                    reason: format!(
                        "the checkpoint's watermark state {value} cannot be read ({e}): \
                         was it written by another job?"
                    ),
                })?
            }
            None => EventClock {
                stream: WatermarkGenerator::START,
                splits: BTreeMap::new(),
            },
        };
        Ok(TimestampPush {
            ts,
            watermarks,
            clock,
            active: None,
            last_seen: BTreeMap::new(),
            idle_timeout,
            participant,
            replay_from,
            down,
        })
    }

    /// Takes note that `split` delivered a batch; returns the smallest watermark of the
    /// other splits that hold event time back (`Timestamp::MAX` if none do).
    fn others_watermark(&mut self, split: &Split) -> Timestamp {
        let now = Instant::now();
        if !self
            .active
            .as_ref()
            .is_some_and(|a| Arc::ptr_eq(a, &split.active))
        {
            // The source's splits changed: new ones start at the beginning of time (they
            // hold the watermark back until they deliver or go idle), gone ones stop counting.
            let clock = &mut self.clock;
            clock.splits.retain(|id, _| split.active.contains(id));
            for &id in split.active.iter() {
                clock.splits.entry(id).or_insert(WatermarkGenerator::START);
                self.last_seen.entry(id).or_insert(now);
            }
            self.last_seen.retain(|id, _| split.active.contains(id));
            self.active = Some(split.active.clone());
        }
        self.last_seen.insert(split.id, now);
        let idle = |id: &u32| match (self.idle_timeout, self.last_seen.get(id)) {
            (Some(timeout), Some(seen)) => now.duration_since(*seen) >= timeout,
            _ => false,
        };
        self.clock
            .splits
            .iter()
            .filter(|(id, _)| **id != split.id && !idle(id))
            .map(|(_, g)| g.current)
            .min()
            .unwrap_or(Timestamp::MAX)
    }
}

/// Sets each record's event time with `ts` and hands it to `stamp`; with a replay point,
/// drops the records before it first (they are not part of this run's history).
#[inline]
fn assign_times<T>(
    records: &mut Vec<Record<T>>,
    ts: &impl Fn(&T) -> i64,
    replay_from: Option<Timestamp>,
    mut stamp: impl FnMut(&mut Record<T>),
) {
    match replay_from {
        None => {
            for r in records.iter_mut() {
                r.ts = ts(&r.value);
                stamp(r);
            }
        }
        Some(from) => records.retain_mut(|r| {
            r.ts = ts(&r.value);
            let kept = r.ts >= from;
            if kept {
                stamp(r);
            }
            kept
        }),
    }
}

impl<F: Fn(&T) -> i64 + Send, T: Data> Push<T> for TimestampPush<F, T> {
    fn push(&mut self, mut batch: Batch<T>) -> Result<()> {
        let split = batch
            .split
            .as_ref()
            .map(|s| (s.id, self.others_watermark(s)));
        let (ts, watermarks, from) = (&self.ts, &self.watermarks, self.replay_from);
        // One loop per case, so that a stream without splits pays nothing per record for them.
        match split {
            None => {
                let stream = &mut self.clock.stream;
                assign_times(&mut batch.records, ts, from, |r| {
                    r.watermark = stream.current;
                    stream.observe(r.ts, watermarks);
                });
            }
            // The split's generator sees the events; the stream's watermark follows the
            // minimum over the splits.
            Some((id, others)) => {
                let clock = &mut self.clock;
                let stream = &mut clock.stream;
                let split = clock.splits.entry(id).or_insert(WatermarkGenerator::START);
                assign_times(&mut batch.records, ts, from, |r| {
                    r.watermark = stream.current;
                    split.observe(r.ts, watermarks);
                    stream.max_ts = stream.max_ts.max(r.ts);
                    stream.current = stream.current.max(split.current.min(others));
                });
            }
        }
        batch.watermark = batch.watermark.max(self.clock.stream.current);
        self.down.push(batch)
    }
    fn barrier(&mut self, id: CheckpointId) -> Result<()> {
        if let Some(p) = &self.participant {
            p.ack(
                id,
                serde_json::to_value(&self.clock).map_err(|e| e.to_string()),
            );
        }
        self.down.barrier(id)
    }
    fn finish(&mut self) -> Result<()> {
        self.down.finish()
    }
    fn flush(&mut self, what: Flush) -> Result<()> {
        self.down.flush(what)
    }
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

struct Fanout<T> {
    pushes: Vec<Box<dyn Push<T>>>,
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

// ---------------------------------------------------------------- channels

/// Sends batches to one channel (sinks and unions fed by several producers).
struct ForwardPush<T> {
    name: String,
    producer: usize,
    sender: Sender<Envelope<T>>,
    /// `Some` in front of a sink; a union's input sends every batch as it comes, since
    /// the operators behind it fire on each watermark.
    sink: Option<SinkFeed<T>>,
}

/// A producer's side of a sink's channel.
struct SinkFeed<T> {
    held: Held<T>,
    doorbell: Arc<Doorbell>,
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
            sink.held.add(batch);
            if sink.held.due() {
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
            Some(held) if held.due() || (what == Flush::All && !held.records.is_empty()) => {
                self.send_held()
            }
            _ => Ok(()),
        }
    }
}

/// How long results wait at most on their way to a sink while their thread keeps busy.
const RESULTS_HOLD: Duration = Duration::from_millis(1);
/// How long a watermark without results waits at most: a sink reads it only for its gauge.
const WATERMARK_HOLD: Duration = Duration::from_millis(10);

/// What a producer holds back on its way to a sink. A sink fed by several producers runs
/// in a thread of its own, and a send per batch woke it thousands of times a second, each
/// time taking a core from a worker (at P = 2, q3 and q4 ran up to 13 % faster with their
/// results dropped before the sink). As Flink's output buffers do, a producer sends when
/// it holds a batch's worth of records or has held them for [`RESULTS_HOLD`], and always
/// when its thread goes quiet ([`Flush::All`]): a stream that does not keep its workers
/// busy gets every result at once (a watermark alone waits for [`WATERMARK_HOLD`]).
struct Held<T> {
    records: Vec<Record<T>>,
    watermark: Timestamp,
    /// The oldest ingestion time of what is held: latency is counted from it.
    ingested: Option<Instant>,
    /// When the oldest batch not yet sent arrived.
    since: Option<Instant>,
    max_records: usize,
}

impl<T> Held<T> {
    fn new(max_records: usize) -> Self {
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

    fn add(&mut self, mut batch: Batch<T>) {
        self.since.get_or_insert_with(Instant::now);
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

    fn due(&self) -> bool {
        let hold = match self.records.is_empty() {
            true => WATERMARK_HOLD,
            false if self.records.len() >= self.max_records => return true,
            false => RESULTS_HOLD,
        };
        self.since.is_some_and(|since| since.elapsed() >= hold)
    }

    /// Everything held as one batch, if anything is.
    fn take(&mut self) -> Option<Batch<T>> {
        self.since.take()?;
        let records = std::mem::take(&mut self.records);
        Some(Batch::new(records, self.watermark).ingested_at(self.ingested.take()))
    }
}

/// Routes records to the worker owning their key group.
struct ExchangePush<K, T, KF> {
    name: String,
    key: KF,
    producer: usize,
    senders: Vec<Sender<Envelope<Keyed<K, T>>>>,
    buffers: Vec<Vec<Record<Keyed<K, T>>>>,
    sent_watermark: Vec<Timestamp>,
}

impl<K: Data + StableHash, T: Data, KF: Fn(&T) -> K + Send> Push<T> for ExchangePush<K, T, KF> {
    fn push(&mut self, batch: Batch<T>) -> Result<()> {
        let workers = self.senders.len();
        for r in batch.records {
            let key = (self.key)(&r.value);
            let worker = worker_for_key_group(key_group_of(&key), workers);
            self.buffers[worker].push(Record {
                ts: r.ts,
                watermark: r.watermark,
                value: Keyed {
                    key,
                    value: r.value,
                },
            });
        }
        for w in 0..workers {
            if self.buffers[w].is_empty() && batch.watermark <= self.sent_watermark[w] {
                continue;
            }
            let capacity = self.buffers[w].capacity();
            let records = std::mem::replace(&mut self.buffers[w], Vec::with_capacity(capacity));
            self.sent_watermark[w] = batch.watermark;
            self.senders[w]
                .send((
                    self.producer,
                    Message::Batch(
                        Batch::new(records, batch.watermark).ingested_at(batch.ingested),
                    ),
                ))
                .map_err(|_| EngineError::DownstreamGone {
                    name: self.name.clone(),
                })?;
        }
        Ok(())
    }
    fn barrier(&mut self, id: CheckpointId) -> Result<()> {
        // Buffers are empty between pushes, so the barrier follows everything routed so far.
        self.broadcast(|| Message::Barrier(id))
    }
    fn finish(&mut self) -> Result<()> {
        self.broadcast(|| Message::End)
    }
    fn flush(&mut self, _: Flush) -> Result<()> {
        // Every push is sent as it comes.
        Ok(())
    }
}

impl<K, T, KF> ExchangePush<K, T, KF> {
    fn broadcast(&self, message: impl Fn() -> Message<Keyed<K, T>>) -> Result<()> {
        for s in &self.senders {
            s.send((self.producer, message()))
                .map_err(|_| EngineError::DownstreamGone {
                    name: self.name.clone(),
                })?;
        }
        Ok(())
    }
}

/// The producers feeding one channel: their watermarks, and which of them are idle.
///
/// The combined watermark is the minimum over producers that are not idle; it never goes
/// backwards (a producer that wakes up behind it does not pull it back, as in Flink).
struct Inputs {
    watermarks: Vec<Timestamp>,
    last_seen: Vec<Instant>,
    idle: Vec<bool>,
    idle_timeout: Option<Duration>,
    combined: Timestamp,
    ended: usize,
}

impl Inputs {
    fn new(producers: usize, idle_timeout: Option<Duration>) -> Self {
        Inputs {
            watermarks: vec![MIN_WATERMARK; producers],
            last_seen: vec![Instant::now(); producers],
            idle: vec![false; producers],
            // Idleness only matters where there is a minimum to take.
            idle_timeout: idle_timeout.filter(|_| producers > 1),
            combined: MIN_WATERMARK,
            ended: 0,
        }
    }

    /// Minimum watermark of the active producers other than `except`; `None` if none.
    fn others(&self, except: usize) -> Option<Timestamp> {
        (0..self.watermarks.len())
            .filter(|&p| p != except && !self.idle[p])
            .map(|p| self.watermarks[p])
            .min()
    }

    /// Producer `p` delivered a batch: stamps its records and the batch with combined
    /// watermarks.
    fn on_batch<T>(&mut self, p: usize, batch: &mut Batch<T>) {
        self.last_seen[p] = Instant::now();
        self.idle[p] = false;
        if self.watermarks.len() == 1 {
            self.combined = self.combined.max(batch.watermark);
            return;
        }
        let others = self.others(p).unwrap_or(END_WATERMARK);
        for r in &mut batch.records {
            r.watermark = r.watermark.min(others).max(self.combined);
        }
        self.watermarks[p] = batch.watermark;
        self.combined = self.combined.max(batch.watermark.min(others));
        batch.watermark = self.combined;
    }

    fn on_end(&mut self, p: usize) {
        self.ended += 1;
        self.watermarks[p] = END_WATERMARK;
        self.idle[p] = false;
    }

    /// Marks producers idle that delivered nothing for the idle timeout; returns the new
    /// combined watermark if that moved it forward.
    fn check_idle(&mut self) -> Option<Timestamp> {
        let timeout = self.idle_timeout?;
        let now = Instant::now();
        let mut changed = false;
        for p in 0..self.watermarks.len() {
            let quiet = now.duration_since(self.last_seen[p]) >= timeout;
            if quiet && !self.idle[p] && self.watermarks[p] != END_WATERMARK {
                self.idle[p] = true;
                changed = true;
            }
        }
        let active_min = (0..self.watermarks.len())
            .filter(|&p| !self.idle[p])
            .map(|p| self.watermarks[p])
            .min()?;
        if changed && active_min > self.combined {
            self.combined = active_min;
            return Some(active_min);
        }
        None
    }
}

/// Barrier alignment of one receiving task (see [`crate::checkpoint`]): once a producer's
/// barrier arrived, that producer's later messages are held until every producer that has
/// not ended delivered the same barrier.
struct Alignment<T> {
    /// Producers whose barrier for the checkpoint being aligned arrived.
    arrived: Vec<bool>,
    ended: Vec<bool>,
    aligning: Option<(CheckpointId, Instant)>,
    held: VecDeque<Envelope<T>>,
    /// Held messages released by a completed alignment, delivered before new ones.
    released: VecDeque<Envelope<T>>,
}

impl<T> Alignment<T> {
    fn new(producers: usize) -> Self {
        Alignment {
            arrived: vec![false; producers],
            ended: vec![false; producers],
            aligning: None,
            held: Default::default(),
            released: Default::default(),
        }
    }

    /// The barrier id and alignment time, if the barrier has now arrived from every producer.
    fn complete(&mut self) -> Option<(CheckpointId, Duration)> {
        let (id, started) = self.aligning?;
        let all = (0..self.arrived.len()).all(|p| self.arrived[p] || self.ended[p]);
        if !all {
            return None;
        }
        self.aligning = None;
        self.arrived.iter_mut().for_each(|a| *a = false);
        // Held messages come after anything their producers sent before, and only blocked
        // producers have held messages, so putting them first keeps every producer's order.
        let mut released = std::mem::take(&mut self.held);
        released.append(&mut self.released);
        self.released = released;
        Some((id, started.elapsed()))
    }
}

/// How long a receiver waits at most before it looks at idle producers (or, for a sink,
/// at its channel: a safety net, as every send rings its doorbell).
const IDLE_CHECK: Duration = Duration::from_millis(50);

/// The receiving end of a channel: merges its producers' watermarks and aligns checkpoint
/// barriers, handing batches on to `down`, until every producer ended.
struct Inbox<T> {
    name: String,
    rx: Receiver<Envelope<T>>,
    inputs: Inputs,
    alignment: Alignment<T>,
    fill: IntGauge,
    down: Box<dyn Push<T>>,
    checkpointing: Option<Arc<Checkpointing>>,
    /// A sink's: its thread waits on this, not on the channel.
    doorbell: Option<Arc<Doorbell>>,
}

impl<T: Data> Inbox<T> {
    fn gone(&self) -> EngineError {
        EngineError::UpstreamGone {
            name: self.name.clone(),
        }
    }

    fn ended(&self) -> bool {
        self.inputs.ended == self.inputs.watermarks.len()
    }

    /// Receives in a thread of its own until every producer ended.
    fn run(mut self) -> Result<()> {
        while !self.ended() {
            let received = match self.alignment.released.pop_front() {
                Some(envelope) => Some(envelope),
                None => self.receive()?,
            };
            self.handle(received)?;
        }
        self.finish()
    }

    /// The next message, waiting for it; `None` after a while without one, if producers
    /// can become idle or a doorbell is rung without a message.
    fn receive(&mut self) -> Result<Option<Envelope<T>>> {
        if self.rx.is_empty() {
            self.down.flush(Flush::All)?;
        }
        // At most this long between looks at idle producers.
        let timeout = self.inputs.idle_timeout.map(|t| t.min(IDLE_CHECK));
        if let Some(doorbell) = &self.doorbell {
            return match self.rx.try_recv() {
                Ok(envelope) => Ok(Some(envelope)),
                Err(crossbeam_channel::TryRecvError::Disconnected) => Err(self.gone()),
                Err(crossbeam_channel::TryRecvError::Empty) => {
                    let rx = &self.rx;
                    doorbell.wait_while(|| rx.is_empty(), timeout.unwrap_or(IDLE_CHECK));
                    Ok(None)
                }
            };
        }
        match timeout {
            None => self.rx.recv().map(Some).map_err(|_| self.gone()),
            Some(timeout) => match self.rx.recv_timeout(timeout) {
                Ok(envelope) => Ok(Some(envelope)),
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => Ok(None),
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(self.gone()),
            },
        }
    }

    /// One message (or, with `None`, a look at idle producers).
    fn handle(&mut self, received: Option<Envelope<T>>) -> Result<()> {
        self.fill.set(self.rx.len() as i64);
        match received {
            Some((producer, message)) if self.alignment.arrived[producer] => {
                self.alignment.held.push_back((producer, message));
            }
            Some((producer, Message::Batch(mut batch))) => {
                self.inputs.on_batch(producer, &mut batch);
                self.down.push(batch)?;
            }
            Some((producer, Message::Barrier(id))) => {
                self.alignment.arrived[producer] = true;
                self.alignment.aligning.get_or_insert((id, Instant::now()));
            }
            Some((producer, Message::End)) => {
                self.inputs.on_end(producer);
                self.alignment.ended[producer] = true;
            }
            None => {}
        }
        if let Some((id, took)) = self.alignment.complete() {
            if let Some(c) = &self.checkpointing {
                c.aligned(took);
            }
            self.down.barrier(id)?;
        }
        if let Some(watermark) = self.inputs.check_idle() {
            self.down.push(Batch::new(Vec::new(), watermark))?;
        }
        Ok(())
    }

    /// Every producer ended. Each sent the end watermark first if its input ended, so it
    /// has passed on already; producers that stopped ([`JobControl::stop`]) did not, and
    /// their windows stay open.
    fn finish(&mut self) -> Result<()> {
        self.down.finish()
    }
}

impl<T: Data> Part for Inbox<T> {
    fn step(&mut self) -> Result<Step> {
        // A bounded share of the channel per step, so the worker's other parts get turns.
        const MESSAGES_PER_STEP: usize = 64;
        let mut worked = false;
        for _ in 0..MESSAGES_PER_STEP {
            if self.ended() {
                break;
            }
            let envelope = match self.alignment.released.pop_front() {
                Some(envelope) => envelope,
                None => match self.rx.try_recv() {
                    Ok(envelope) => envelope,
                    Err(crossbeam_channel::TryRecvError::Empty) => break,
                    Err(crossbeam_channel::TryRecvError::Disconnected) => return Err(self.gone()),
                },
            };
            self.handle(Some(envelope))?;
            worked = true;
        }
        if self.ended() {
            self.finish()?;
            return Ok(Step::Done);
        }
        if !worked {
            self.handle(None)?;
            return Ok(Step::Idle);
        }
        Ok(Step::Worked)
    }

    fn watch<'a>(&'a self, select: &mut Select<'a>) {
        select.recv(&self.rx);
    }

    fn wake_after(&self) -> Option<Duration> {
        None
    }

    fn flush(&mut self, what: Flush) -> Result<()> {
        self.down.flush(what)
    }
}

// ---------------------------------------------------------------- keyed operators

pub(crate) struct KeyedNode<F, KF> {
    factory: F,
    key: KF,
}

impl<F, KF> KeyedNode<F, KF> {
    pub(crate) fn new(factory: F, key: KF) -> Self {
        KeyedNode { factory, key }
    }
}

/// One keyed operator instance with its input type erased from its backend.
type KeyedInput<F> = Box<dyn Push<Keyed<<F as OperatorFactory>::Key, <F as OperatorFactory>::In>>>;

impl<F, KF> KeyedNode<F, KF>
where
    F: OperatorFactory,
    F::Key: StableHash,
{
    /// Creates instance `instance` over the job's state backend, wired to its downstream.
    fn runner(&self, b: &mut Build<'_>, me: NodeId, instance: usize) -> Result<KeyedInput<F>> {
        let name = b.name(me);
        let invalid = |reason: String| EngineError::InvalidJob {
            job: b.metrics.job().to_string(),
            reason,
        };
        match (&b.options.state, b.rocksdb.clone()) {
            (StateConfig::RocksDb { cache_entries, .. }, Some((root, cache))) => {
                let dir = root.join(store_name(&name, instance));
                let store =
                    RocksStore::open_fresh(&dir, &cache).map_err(|e| invalid(e.to_string()))?;
                b.metrics.observe_store(&name, instance, store.clone());
                let backend = RocksBackend::new(store.clone(), &name, *cache_entries);
                let state = Some(InstanceState::Rocks(store));
                Ok(Box::new(self.runner_over(b, me, instance, backend, state)?))
            }
            _ if b.checkpointing.is_some() => {
                let snapshots = Arc::new(MemorySnapshots::default());
                let backend = MemoryBackend::checkpointed(snapshots.clone(), &name);
                let state = Some(InstanceState::Memory(snapshots));
                Ok(Box::new(self.runner_over(b, me, instance, backend, state)?))
            }
            _ => Ok(Box::new(self.runner_over(
                b,
                me,
                instance,
                MemoryBackend::new(),
                None,
            )?)),
        }
    }

    /// The instance over `state`; `checkpointed` is how its state is snapshotted, if the
    /// job takes checkpoints.
    fn runner_over<S: StateBackend>(
        &self,
        b: &mut Build<'_>,
        me: NodeId,
        instance: usize,
        state: S,
        checkpointed: Option<InstanceState>,
    ) -> Result<KeyedRunner<F::Operator<S>>> {
        let name = b.name(me);
        let store = checkpointed.map(|state| KeyedStore {
            state,
            name: store_name(&name, instance),
        });
        let parallelism = b.options.parallelism;
        let metrics = b.metrics.operator(&name, instance);
        let key_groups = key_groups_of_worker(instance, parallelism);
        let ctx = OperatorContext {
            name: name.clone(),
            instance,
            parallelism,
            key_groups: key_groups.clone(),
            metrics: metrics.clone(),
        };
        let op_err = |source| EngineError::Operator {
            name: name.clone(),
            source,
        };
        // Restored state goes into the database before the operator opens its tables.
        let restored = match (&b.checkpointing, &store) {
            (Some(c), Some(store)) => {
                import_keyed_state(c, &b.uid(me), &key_groups, &store.state).map_err(op_err)?
            }
            _ => None,
        };
        let mut operator = self.factory.create(&ctx, state).map_err(op_err)?;
        if let Some(snapshots) = restored {
            operator.restore(&snapshots).map_err(op_err)?;
        }
        let participant = b.participant(format!("{}#{instance}", b.uid(me)));
        let down = b.downstream::<F::Out>(me, instance)?;
        Ok(KeyedRunner {
            name,
            operator,
            out: Output::connected(down, b.options.batch_size),
            metrics,
            checkpoint: participant.map(|participant| KeyedCheckpoint {
                participant,
                key_groups,
                store,
            }),
        })
    }
}

/// The database directory of a keyed instance: its node name made file-safe, and instance.
fn store_name(node: &str, instance: usize) -> String {
    let safe: String = node
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}-{instance}")
}

/// What a keyed instance leaves in a checkpoint.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct KeyedSnapshot {
    /// The key groups its database holds, `[start, end)`.
    key_groups: (KeyGroup, KeyGroup),
    /// Its state: a RocksDB database (a RocksDB checkpoint, or a memory backend's full
    /// copy in the same layout), relative to the checkpoint directory.
    store: String,
    /// What the operator returned from `snapshot`.
    operator: serde_json::Value,
}

/// Imports the key groups `groups` of the operator with uid `uid` from the checkpoint
/// being restored (from every old instance that held some of them); returns those
/// instances' operator snapshots, or `None` on a fresh start.
fn import_keyed_state(
    checkpointing: &Checkpointing,
    uid: &str,
    groups: &std::ops::Range<KeyGroup>,
    state: &InstanceState,
) -> std::result::Result<Option<Vec<serde_json::Value>>, crate::BoxError> {
    let Some(manifest) = checkpointing.restored() else {
        return Ok(None);
    };
    let prefix = format!("{uid}#");
    let mut snapshots = Vec::new();
    for (key, value) in manifest.participants.range(prefix.clone()..) {
        if !key.starts_with(&prefix) {
            break;
        }
        let old: KeyedSnapshot = serde_json::from_value(value.clone()).map_err(|e| {
            format!(
                "checkpoint {}: the entry of {key} cannot be read: {e}",
                manifest.id
            )
        })?;
        let overlap = old.key_groups.0.max(groups.start)..old.key_groups.1.min(groups.end);
        if overlap.is_empty() {
            continue;
        }
        let dir = checkpointing
            .restored_dir()
            .ok_or("internal: a restored checkpoint without a directory")?;
        let from = dir.join(&old.store);
        match state {
            InstanceState::Rocks(store) => {
                store.import_key_groups(&from, overlap)?;
            }
            InstanceState::Memory(tables) => {
                read_key_groups(&from, overlap, |table, key, value| {
                    tables.restore_entry(table, key, value);
                    Ok(())
                })?;
            }
        }
        snapshots.push(old.operator);
    }
    Ok(Some(snapshots))
}

/// The checkpointed state of one keyed instance.
struct KeyedStore {
    state: InstanceState,
    /// Its directory name, also used inside checkpoints.
    name: String,
}

/// Where a keyed instance's state lives, which decides how it is snapshotted and restored.
enum InstanceState {
    /// A RocksDB database: snapshotted as a RocksDB checkpoint (hard links).
    Rocks(Arc<RocksStore>),
    /// Memory tables: snapshotted as a full copy, written as a RocksDB database.
    Memory(Arc<MemorySnapshots>),
}

/// How a keyed instance takes part in checkpoints.
struct KeyedCheckpoint {
    participant: Participant,
    key_groups: std::ops::Range<KeyGroup>,
    store: Option<KeyedStore>,
}

impl<F, KF> NodeImpl for KeyedNode<F, KF>
where
    F: OperatorFactory,
    F::Key: StableHash,
    KF: Fn(&F::In) -> F::Key + Clone + Send + 'static,
{
    fn input(&self, b: &mut Build<'_>, me: NodeId, _: usize) -> Result<Box<dyn Any>> {
        if b.chained(me) {
            let runner = self.runner(b, me, 0)?;
            return Ok(erase(Box::new(KeyedChained {
                key: self.key.clone(),
                runner,
                _types: PhantomData,
            })));
        }
        let workers = b.options.parallelism;
        let producer = b.next_producer(me);
        let senders = b
            .channels::<Keyed<F::Key, F::In>>(me, workers)
            .senders
            .clone();
        Ok(erase::<F::In>(Box::new(ExchangePush {
            name: b.name(me),
            key: self.key.clone(),
            producer,
            senders,
            buffers: (0..workers).map(|_| Vec::new()).collect(),
            sent_watermark: vec![MIN_WATERMARK; workers],
        })))
    }

    fn start(&self, b: &mut Build<'_>, me: NodeId) -> Result<()> {
        if b.chained(me) {
            return Ok(());
        }
        let workers = b.options.parallelism;
        for instance in 0..workers {
            let runner = self.runner(b, me, instance)?;
            b.spawn_receiver::<Keyed<F::Key, F::In>>(me, instance, workers, runner)?;
        }
        Ok(())
    }
}

/// Runs one keyed operator instance and forwards its output.
struct KeyedRunner<O: KeyedOperator> {
    name: String,
    operator: O,
    /// Connected to the downstream: results go on in chunks as they are emitted.
    out: Output<O::Out>,
    metrics: OperatorMetrics,
    checkpoint: Option<KeyedCheckpoint>,
}

impl<O: KeyedOperator> KeyedRunner<O> {
    /// Flushes the operator's state and checkpoints its database into checkpoint `id`.
    fn snapshot(&mut self, id: CheckpointId) -> std::result::Result<serde_json::Value, String> {
        let Some(c) = &self.checkpoint else {
            return Err("internal: not a checkpoint participant".into());
        };
        let Some(store) = &c.store else {
            return Err("internal: a checkpoint participant without state".into());
        };
        let dir = c.participant.checkpointing().dir(id).join(&store.name);
        let operator = match &store.state {
            InstanceState::Rocks(db) => {
                let operator = self.operator.snapshot().map_err(|e| e.to_string())?;
                db.checkpoint_to(&dir).map_err(|e| e.to_string())?;
                operator
            }
            InstanceState::Memory(tables) => {
                // The operator's flushes hand the tables over while the snapshot is open.
                tables.begin();
                let operator = self.operator.snapshot();
                let taken = tables.take();
                let operator = operator.map_err(|e| e.to_string())?;
                write_snapshot(&dir, taken).map_err(|e| e.to_string())?;
                operator
            }
        };
        serde_json::to_value(KeyedSnapshot {
            key_groups: (c.key_groups.start, c.key_groups.end),
            store: store.name.clone(),
            operator,
        })
        .map_err(|e| e.to_string())
    }
}

impl<O: KeyedOperator> Push<Keyed<O::Key, O::In>> for KeyedRunner<O> {
    fn push(&mut self, batch: Batch<Keyed<O::Key, O::In>>) -> Result<()> {
        let op_err = |source| EngineError::Operator {
            name: self.name.clone(),
            source,
        };
        self.metrics.events_in.inc_by(batch.records.len() as u64);
        // Results are due because of this batch (its records or its watermark): they are
        // timed from its ingestion.
        self.out.set_ingested(batch.ingested);
        // User code runs in here (aggregates, process functions): a panic is caught so that
        // it fails the job like an error does.
        let (operator, out) = (&mut self.operator, &mut self.out);
        let ran = std::panic::catch_unwind(AssertUnwindSafe(|| {
            operator.process(batch.records, out).map_err(op_err)?;
            operator.on_watermark(batch.watermark, out).map_err(op_err)
        }))
        .unwrap_or_else(|payload| {
            Err(EngineError::Panicked {
                name: self.name.clone(),
                message: panic_message(payload.as_ref()),
            })
        });
        if let Err(e) = ran {
            // What the operator emitted before it failed (windows that fired) still reaches
            // the sinks, which flush it before the job ends with the error.
            self.out.forward()?;
            self.out.downstream().flush(Flush::All)?;
            return Err(e);
        }
        self.out.advance_watermark(batch.watermark);
        if batch.watermark != END_WATERMARK {
            self.metrics.watermark.set(batch.watermark);
        }
        self.metrics
            .state_entries
            .set(self.operator.state_entries() as i64);
        let forwarded = self.out.forward()?;
        self.metrics.events_out.inc_by(forwarded as u64);
        Ok(())
    }
    fn barrier(&mut self, id: CheckpointId) -> Result<()> {
        // A failed snapshot fails only this checkpoint: the state is still intact in memory
        // and the next checkpoint tries again.
        let snapshot = self.snapshot(id);
        if let Some(c) = &self.checkpoint {
            c.participant.ack(id, snapshot);
        }
        self.out.downstream().barrier(id)
    }
    fn finish(&mut self) -> Result<()> {
        self.out.downstream().finish()
    }
    fn flush(&mut self, what: Flush) -> Result<()> {
        self.out.downstream().flush(what)
    }
}

/// A keyed operator chained into its input's thread (P = 1): keys are computed in place.
struct KeyedChained<KF, K, T> {
    key: KF,
    runner: Box<dyn Push<Keyed<K, T>>>,
    _types: PhantomData<fn() -> (K, T)>,
}

impl<KF, K, T> Push<T> for KeyedChained<KF, K, T>
where
    K: Data + StableHash,
    T: Data,
    KF: Fn(&T) -> K + Send,
{
    fn push(&mut self, batch: Batch<T>) -> Result<()> {
        let records = batch
            .records
            .into_iter()
            .map(|r| {
                let key = (self.key)(&r.value);
                Record {
                    ts: r.ts,
                    watermark: r.watermark,
                    value: Keyed {
                        key,
                        value: r.value,
                    },
                }
            })
            .collect();
        self.runner
            .push(Batch::new(records, batch.watermark).ingested_at(batch.ingested))
    }
    pass_on_control!(runner);
}

// ---------------------------------------------------------------- union and sinks

pub(crate) struct UnionNode<T> {
    _data: PhantomData<fn() -> T>,
}

impl<T> UnionNode<T> {
    pub(crate) fn new() -> Self {
        UnionNode { _data: PhantomData }
    }
}

impl<T: Data> NodeImpl for UnionNode<T> {
    fn input(&self, b: &mut Build<'_>, me: NodeId, instance: usize) -> Result<Box<dyn Any>> {
        if !b.chained(me) {
            return Ok(erase::<T>(Box::new(b.forward_input::<T>(me, false))));
        }
        let key = (me, instance);
        if !b.unions.contains_key(&key) {
            let inputs = b.graph.nodes[me].inputs.len();
            let down = b.downstream::<T>(me, instance)?;
            let merge = Arc::new(Mutex::new(UnionMerge {
                down,
                inputs: Inputs::new(inputs, None),
                barriers: 0,
            }));
            b.unions.insert(key, (Box::new(merge), 0));
        }
        let (merge, next_input) = b.unions.get_mut(&key).expect("inserted above");
        let input = *next_input;
        *next_input += 1;
        let merge = merge
            .downcast_ref::<Arc<Mutex<UnionMerge<T>>>>()
            .expect("a union's merge always carries its input type")
            .clone();
        Ok(erase::<T>(Box::new(UnionInput { input, merge })))
    }

    fn start(&self, b: &mut Build<'_>, me: NodeId) -> Result<()> {
        if b.chained(me) {
            return Ok(());
        }
        let down = b.downstream::<T>(me, 0)?;
        b.spawn_receiver::<T>(me, 0, 1, down)
    }
}

/// One instance of a union whose inputs all run in one thread (branches of one stream):
/// their batches arrive one after another in that thread, so the union merges watermarks
/// as a receiving task does ([`Inputs`]) but without a channel, and a barrier, which comes
/// through every branch before anything after it, goes on once all branches passed it.
struct UnionMerge<T> {
    down: Box<dyn Push<T>>,
    inputs: Inputs,
    /// Branches that passed the barrier being aligned.
    barriers: usize,
}

/// The pusher of branch `input` into a [`UnionMerge`].
struct UnionInput<T> {
    input: usize,
    merge: Arc<Mutex<UnionMerge<T>>>,
}

impl<T> UnionInput<T> {
    fn merge(&self) -> std::sync::MutexGuard<'_, UnionMerge<T>> {
        // Only this thread locks it; a poisoned lock means a panic that is reported anyway.
        self.merge
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<T: Data> Push<T> for UnionInput<T> {
    fn push(&mut self, mut batch: Batch<T>) -> Result<()> {
        let mut merge = self.merge();
        merge.inputs.on_batch(self.input, &mut batch);
        merge.down.push(batch)
    }
    fn barrier(&mut self, id: CheckpointId) -> Result<()> {
        let mut merge = self.merge();
        merge.barriers += 1;
        let open = merge.inputs.watermarks.len() - merge.inputs.ended;
        if merge.barriers < open {
            return Ok(());
        }
        merge.barriers = 0;
        merge.down.barrier(id)
    }
    fn finish(&mut self) -> Result<()> {
        let mut merge = self.merge();
        merge.inputs.on_end(self.input);
        if merge.inputs.ended < merge.inputs.watermarks.len() {
            return Ok(());
        }
        // As in `Inbox::finish`: the end watermark came with the inputs' last batches.
        merge.down.finish()
    }
    fn flush(&mut self, what: Flush) -> Result<()> {
        self.merge().down.flush(what)
    }
}

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
            let restored = p
                .restored()
                .map(|value| (p.checkpointing().restored_id(), value));
            sink.begin_transactions(restored)
                .map_err(|source| EngineError::Sink {
                    name: name.clone(),
                    source,
                })?;
        }
        Ok(SinkPush {
            name,
            sink,
            metrics,
            latency: self.results.then(|| b.metrics.latency()),
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

struct SinkPush<T> {
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
struct SinkTransactions {
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
            t.participant.ack(id, result);
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

// ---------------------------------------------------------------- running

/// Longest a sink's written results wait for [`Sink::flush`] while its job keeps busy.
const SINK_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Builds the tasks of `graph` and runs them to completion.
pub(crate) fn run(
    job: &str,
    graph: &Graph,
    metrics: &Arc<JobMetrics>,
    control: &JobControl,
    options: &RunOptions,
) -> Result<RunSummary> {
    if options.parallelism == 0 || options.parallelism > usize::from(MAX_KEY_GROUPS) {
        return Err(EngineError::InvalidJob {
            job: job.to_string(),
            reason: format!(
                "parallelism {} is out of range: use 1 to {MAX_KEY_GROUPS}",
                options.parallelism
            ),
        });
    }
    let invalid = |reason: String| EngineError::InvalidJob {
        job: job.to_string(),
        reason,
    };
    let uids = graph.uids();
    // Locked before anything in the state directory is read or replaced; held (in
    // `_locks`) until the run ends.
    let (_locks, fence) = lock_state_dirs(job, options, control)?;
    let rocksdb = match &options.state {
        StateConfig::Memory => None,
        StateConfig::RocksDb { dir, .. } => {
            // Only weir's own subdirectory is replaced, never what else is in `dir`.
            let root = dir.join(job).join("rocksdb");
            if root.exists() {
                std::fs::remove_dir_all(&root).map_err(|e| {
                    invalid(format!(
                        "cannot clear the state directory {}: {e} (check --state-dir)",
                        root.display()
                    ))
                })?;
            }
            Some((root, shared_block_cache()))
        }
    };
    let checkpointing = match &options.checkpoints {
        None => None,
        Some(config) => {
            let c = Checkpointing::new(
                config.clone(),
                job,
                options.parallelism,
                RunClaims {
                    fence,
                    operators: operator_records(graph, &uids),
                    allow_non_restored_state: options.allow_non_restored_state,
                },
                metrics.checkpoints(),
                options.progress_interval.is_some(),
                options.task.as_deref(),
            )
            .map_err(|source| EngineError::Restore {
                job: job.to_string(),
                source,
            })?;
            if let (Some(m), Some(dir)) = (c.restored(), c.restored_dir()) {
                eprintln!(
                    "weir: resuming job `{job}` from checkpoint {} ({}; taken at parallelism {}, now {})",
                    m.id,
                    dir.display(),
                    m.parallelism,
                    options.parallelism
                );
            }
            Some(c)
        }
    };
    control.attach(checkpointing.clone());
    let cancelled = Arc::new(AtomicBool::new(false));
    let stopping = Arc::new(AtomicBool::new(false));
    control.attach_flags(cancelled.clone(), stopping.clone());
    let mut build = Build {
        cancelled: cancelled.clone(),
        stopping,
        graph,
        options,
        metrics,
        channels: FxHashMap::default(),
        unions: FxHashMap::default(),
        next_producer: FxHashMap::default(),
        doorbells: FxHashMap::default(),
        tasks: Vec::new(),
        progress: Progress::default(),
        rocksdb,
        checkpointing: checkpointing.clone(),
        workers: (0..options.parallelism).map(|_| Vec::new()).collect(),
        backlog: BacklogBuilder::default(),
        uids,
    };
    for id in 0..graph.nodes.len() {
        let imp = graph.nodes[id].imp.clone();
        imp.start(&mut build, id)?;
    }
    // Only the tasks and the progress handles live on. Dropping the rest now matters: the
    // build holds the original end of every channel, and while it lives no receiver can see
    // its producers disappear, so a failed task would leave its neighbours waiting forever.
    let Build {
        mut tasks,
        progress,
        channels,
        unions,
        workers,
        backlog,
        ..
    } = build;
    drop((channels, unions));
    backlog.seal();
    for (w, parts) in workers.into_iter().enumerate() {
        if parts.is_empty() {
            continue;
        }
        let name = format!("worker-{w}");
        let cancel = cancelled.clone();
        tasks.push(Task {
            name: name.clone(),
            run: Box::new(move || worker::run(&name, parts, &cancel)),
        });
    }
    if let Some(c) = checkpointing {
        let cancel = cancelled.clone();
        tasks.push(Task {
            name: "checkpoint-coordinator".into(),
            run: Box::new(move || {
                c.coordinate(&cancel)
                    .map_err(|reason| EngineError::Checkpoint { reason })
            }),
        });
    }
    let started = Instant::now();
    // Dropping `done` ends the reporter at once (a sleeping reporter would add its tick to
    // every run's wall time).
    let (done, ended) = crossbeam_channel::bounded::<()>(0);
    let progress = Arc::new(progress);
    let reporter = options.progress_interval.map(|every| {
        let progress = progress.clone();
        let job = match &options.task {
            Some(task) => format!("{job} {task}"),
            None => job.to_string(),
        };
        std::thread::spawn(move || report_progress(&job, &progress, &ended, every))
    });

    let mut handles = Vec::with_capacity(tasks.len());
    let mut spawn_error = None;
    for task in tasks {
        if spawn_error.is_some() {
            // Dropping the task drops its channel ends, so started tasks wind down.
            continue;
        }
        let name = task.name.clone();
        let cancel = cancelled.clone();
        let run = task.run;
        let spawned = std::thread::Builder::new()
            .name(format!("weir-{name}"))
            .spawn(move || {
                let _on_panic = CancelOnPanic(cancel.clone());
                let result = run();
                if result.is_err() {
                    cancel.store(true, Ordering::Relaxed);
                }
                result
            });
        match spawned {
            Ok(handle) => handles.push((name, handle)),
            Err(source) => {
                cancelled.store(true, Ordering::Relaxed);
                spawn_error = Some(EngineError::Io {
                    path: format!("<thread {name}>").into(),
                    source,
                });
            }
        }
    }
    let mut first_error: Option<EngineError> = None;
    for (name, handle) in handles {
        let result = handle.join().unwrap_or_else(|payload| {
            Err(EngineError::Panicked {
                name,
                message: panic_message(payload.as_ref()),
            })
        });
        if let Err(e) = result {
            let replace = match &first_error {
                None => true,
                Some(prev) => prev.is_secondary() && !e.is_secondary(),
            };
            if replace {
                first_error = Some(e);
            }
        }
    }
    drop(done);
    if let Some(handle) = reporter {
        let _ = handle.join();
    }
    if let Some(e) = spawn_error {
        return Err(e);
    }
    if control.is_cancelled() {
        return Err(EngineError::Cancelled {
            job: job.to_string(),
        });
    }
    let stopped = control.is_stopped();
    if let Some(e) = first_error {
        return Err(e);
    }
    let watermark = progress
        .watermarks
        .iter()
        .map(|g| g.get())
        .filter(|&w| w != MIN_WATERMARK)
        .min();
    Ok(RunSummary {
        events_read: progress.sources.iter().map(|c| c.get()).sum(),
        dead_letters: metrics.total(MetricFamily::DeadLetters, None),
        late_events: metrics.total(MetricFamily::LateEvents, None),
        results_written: progress.sinks.iter().map(|c| c.get()).sum(),
        elapsed: started.elapsed(),
        watermark,
        latency: metrics.latency().summary(),
        stopped,
    })
}

/// The message of a panic, if it was a string.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Sets the cancel flag if the task's thread unwinds from a panic.
struct CancelOnPanic(Arc<AtomicBool>);

impl Drop for CancelOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

fn report_progress(job: &str, progress: &Progress, ended: &Receiver<()>, every: Duration) {
    let mut last = (Instant::now(), 0u64);
    let tick = Duration::from_millis(50).min(every);
    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = ended.recv_timeout(tick) {
        let now = Instant::now();
        if now.duration_since(last.0) < every {
            continue;
        }
        let events: u64 = progress.sources.iter().map(|c| c.get()).sum();
        let rate = (events - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        let watermark = progress.watermarks.iter().map(|g| g.get()).min();
        let wm = match watermark {
            Some(w) if w != MIN_WATERMARK => format!("{w} ({})", format_timestamp(w)),
            _ => "none yet".to_string(),
        };
        eprintln!("weir: {job}: {events} events, {rate:.0} events/s, watermark {wm}");
        last = (now, events);
    }
}

/// Test operators and sinks shared by the runtime's test modules.
#[cfg(test)]
mod test_support {
    use std::sync::{Arc, Mutex};

    use crate::operator::{KeyedOperator, OperatorContext, OperatorFactory, Output};
    use crate::record::{Keyed, Record};
    use crate::sink::Sink;
    use crate::state::StateBackend;
    use crate::BoxError;

    /// Passes every event on unchanged; fails on the value `fail_on`, if given.
    pub(super) struct PassOn {
        fail_on: Option<i64>,
    }

    impl KeyedOperator for PassOn {
        type Key = i64;
        type In = i64;
        type Out = i64;
        fn process(
            &mut self,
            records: Vec<Record<Keyed<i64, i64>>>,
            out: &mut Output<i64>,
        ) -> Result<(), BoxError> {
            for r in records {
                if Some(r.value.value) == self.fail_on {
                    return Err("unlucky event".into());
                }
                out.emit(r.ts, r.value.value);
            }
            Ok(())
        }
        fn snapshot(&mut self) -> Result<serde_json::Value, BoxError> {
            Ok(serde_json::Value::Null)
        }
        fn restore(&mut self, _: &[serde_json::Value]) -> Result<(), BoxError> {
            Ok(())
        }
    }

    pub(super) struct PassOnFactory {
        pub(super) fail_on: Option<i64>,
    }

    impl OperatorFactory for PassOnFactory {
        type Key = i64;
        type In = i64;
        type Out = i64;
        type Operator<S: StateBackend> = PassOn;
        fn create<S: StateBackend>(&self, _: &OperatorContext, _: S) -> Result<PassOn, BoxError> {
            Ok(PassOn {
                fail_on: self.fail_on,
            })
        }
    }

    /// Keeps every record it receives.
    pub(super) struct Collect(pub(super) Arc<Mutex<Vec<Record<i64>>>>);

    impl Sink<i64> for Collect {
        fn write(&mut self, records: &[Record<i64>]) -> Result<(), BoxError> {
            self.0
                .lock()
                .map_err(|_| "poisoned")?
                .extend_from_slice(records);
            Ok(())
        }
        fn finish(&mut self) -> Result<(), BoxError> {
            Ok(())
        }
        fn describe(&self) -> String {
            "collect".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::test_support::Collect;
    use super::*;
    use crate::job::Job;
    use crate::BoxError;

    /// Emits `first` at once, `later` after `pause`, then ends after `end_after`.
    struct Scripted {
        first: Vec<i64>,
        later: Vec<i64>,
        pause: Duration,
        end_after: Duration,
        started: Option<Instant>,
    }

    impl Scripted {
        fn new(first: Vec<i64>, later: Vec<i64>, pause: Duration, end_after: Duration) -> Self {
            Scripted {
                first,
                later,
                pause,
                end_after,
                started: None,
            }
        }
    }

    impl Source for Scripted {
        type Item = i64;
        fn poll_batch(
            &mut self,
            out: &mut Vec<i64>,
            _max: usize,
        ) -> Result<SourceStatus, BoxError> {
            let elapsed = self.started.get_or_insert_with(Instant::now).elapsed();
            if !self.first.is_empty() {
                out.append(&mut self.first);
                return Ok(SourceStatus::More);
            }
            if elapsed >= self.pause && !self.later.is_empty() {
                out.append(&mut self.later);
                return Ok(SourceStatus::More);
            }
            if elapsed >= self.end_after {
                return Ok(SourceStatus::Exhausted);
            }
            std::thread::sleep(Duration::from_millis(5));
            Ok(SourceStatus::Idle)
        }
        fn describe(&self) -> String {
            "scripted".into()
        }
    }

    /// Runs `busy` ∪ `quiet` and returns the watermarks stamped on the busy source's late
    /// events (value >= 100).
    #[test]
    fn two_result_sinks_of_one_name_are_refused() {
        let job = Job::new("twins");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let numbers = job.source(
            "numbers",
            Scripted::new(vec![1], vec![], Duration::ZERO, Duration::ZERO),
        );
        numbers.clone().sink("out", Collect(seen.clone()));
        numbers.sink("out", Collect(seen));
        let err = job.run(&RunOptions::default()).unwrap_err().to_string();
        assert!(err.contains("two sinks are named `out`"), "{err}");
    }

    fn union_watermarks(idle_timeout: Option<Duration>) -> Result<Vec<i64>, EngineError> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let job = Job::new("idle");
        let wm = Watermarks::ascending();
        let busy = job
            .source(
                "busy",
                Scripted::new(
                    vec![1, 2],
                    vec![100, 101],
                    Duration::from_millis(600),
                    Duration::from_millis(700),
                ),
            )
            .timestamps(|v| *v, wm);
        let quiet = job
            .source(
                "quiet",
                Scripted::new(vec![], vec![], Duration::ZERO, Duration::from_millis(1500)),
            )
            .timestamps(|v| *v, wm);
        busy.union(quiet).sink("out", Collect(seen.clone()));
        job.run(&RunOptions {
            idle_timeout,
            ..RunOptions::default()
        })?;
        let seen = seen.lock().map_err(|_| EngineError::Panicked {
            name: "collect".into(),
            message: "poisoned".into(),
        })?;
        Ok(seen
            .iter()
            .filter(|r| r.value >= 100)
            .map(|r| r.watermark)
            .collect())
    }

    #[test]
    fn an_idle_input_holds_the_watermark_back_unless_marked_idle() -> Result<(), EngineError> {
        // Without idleness the quiet source (no events yet) keeps the union at MIN.
        assert_eq!(union_watermarks(None)?, vec![MIN_WATERMARK, MIN_WATERMARK]);
        // With a 100 ms idle timeout the quiet source is left out long before the busy one's
        // second batch (at 600 ms), whose records then carry the busy watermark.
        assert_eq!(
            union_watermarks(Some(Duration::from_millis(100)))?,
            vec![1, 99]
        );
        Ok(())
    }
}

#[cfg(test)]
mod failure_tests {
    use std::sync::mpsc;

    use super::test_support::PassOnFactory;
    use super::*;
    use crate::job::Job;
    use crate::BoxError;

    /// Emits `good` events, then fails, or (if `fail` is false) idles until `idle_for`.
    struct Faulty {
        good: Vec<i64>,
        fail: bool,
        idle_for: Duration,
        started: Option<Instant>,
    }

    impl Source for Faulty {
        type Item = i64;
        fn poll_batch(&mut self, out: &mut Vec<i64>, _: usize) -> Result<SourceStatus, BoxError> {
            let started = *self.started.get_or_insert_with(Instant::now);
            if !self.good.is_empty() {
                out.append(&mut self.good);
                return Ok(SourceStatus::More);
            }
            if self.fail {
                return Err("disk on fire".into());
            }
            if started.elapsed() > self.idle_for {
                return Ok(SourceStatus::Exhausted);
            }
            std::thread::sleep(Duration::from_millis(5));
            Ok(SourceStatus::Idle)
        }
        fn describe(&self) -> String {
            "faulty".into()
        }
    }

    struct Discard;

    impl Sink<i64> for Discard {
        fn write(&mut self, _: &[Record<i64>]) -> Result<(), BoxError> {
            Ok(())
        }
        fn finish(&mut self) -> Result<(), BoxError> {
            Ok(())
        }
        fn describe(&self) -> String {
            "discard".into()
        }
    }

    /// Runs a source -> keyed (2 workers) -> sink job on another thread; the error it ends
    /// with, or a panic if it does not end within 20 s (the bug this pins was a hang).
    fn run_to_error(source: Faulty) -> String {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let job = Job::new("failing");
            job.source("faulty", source)
                .timestamps(|v| *v, Watermarks::ascending())
                .key_by(|v: &i64| *v % 7)
                .process("keyed", String::new(), PassOnFactory { fail_on: Some(13) })
                .sink("out", Discard);
            let options = RunOptions {
                parallelism: 2,
                ..RunOptions::default()
            };
            let _ = tx.send(job.run(&options).map(|_| ()).map_err(|e| e.to_string()));
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(Err(e)) => e,
            Ok(Ok(())) => panic!("the job should have failed"),
            Err(_) => panic!("the job hung after a task failed"),
        }
    }

    #[test]
    fn a_failing_source_stops_the_job_with_its_error() {
        let error = run_to_error(Faulty {
            good: (0..10).collect(),
            fail: true,
            idle_for: Duration::ZERO,
            started: None,
        });
        assert!(error.contains("source `faulty` failed"), "{error}");
    }

    #[test]
    fn a_failing_operator_stops_an_idle_source() {
        // The source stays open (idle) for 60 s after its events; the operator fails on 13.
        let started = Instant::now();
        let error = run_to_error(Faulty {
            good: (0..20).collect(),
            fail: false,
            idle_for: Duration::from_secs(60),
            started: None,
        });
        assert!(error.contains("operator `keyed` failed"), "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
    }
}

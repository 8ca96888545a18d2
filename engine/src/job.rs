//! The typed, fluent job API.
//!
//! A [`Job`] collects a dataflow graph; [`Stream`] and [`KeyedStream`] are typed handles to
//! its nodes. Building a job does no I/O: sources open their inputs when the job runs, so a
//! job can be described (`weir describe`) without its inputs.
//!
//! ```
//! use std::time::Duration;
//! use weir_engine::{Job, Watermarks};
//! # use weir_engine::{Source, SourceStatus, Sink, Record, BoxError};
//! # #[derive(Clone)] struct Numbers(i64);
//! # impl Source for Numbers {
//! #     type Item = i64;
//! #     fn poll_batch(&mut self, out: &mut Vec<i64>, _max: usize) -> Result<SourceStatus, BoxError> {
//! #         out.extend(0..self.0); Ok(SourceStatus::Exhausted)
//! #     }
//! #     fn describe(&self) -> String { "numbers".into() }
//! # }
//! # struct Collect(std::sync::Arc<std::sync::Mutex<Vec<i64>>>);
//! # impl Sink<i64> for Collect {
//! #     fn write(&mut self, r: &[Record<i64>]) -> Result<(), BoxError> {
//! #         self.0.lock().unwrap().extend(r.iter().map(|r| r.value)); Ok(())
//! #     }
//! #     fn finish(&mut self) -> Result<(), BoxError> { Ok(()) }
//! #     fn describe(&self) -> String { "collect".into() }
//! # }
//! # let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
//! let job = Job::new("evens");
//! job.source("numbers", Numbers(10))
//!     .timestamps(|n| *n * 1000, Watermarks::bounded(Duration::from_secs(1)))
//!     .filter(|n| n % 2 == 0)
//!     .map(|n| n * 10)
//!     .sink("out", Collect(seen.clone()));
//! job.run(&Default::default())?;
//! assert_eq!(*seen.lock().unwrap(), vec![0, 20, 40, 60, 80]);
//! # Ok::<(), weir_engine::EngineError>(())
//! ```

use std::cell::RefCell;
use std::fmt::Write as _;
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use crate::checkpoint::JobControl;
use crate::dead_letter::DeadLetter;
use crate::error::{EngineError, Result};
use crate::keys::StableHash;
use crate::metrics::JobMetrics;
use crate::operator::{ChainedOperator, OperatorFactory};
use crate::plan::{Exchange, JobPlan, PlanEdge, PlanNode};
use crate::query::QueryableState;
use crate::record::Data;
use crate::runtime::{
    self, ChainedPush, FilterPush, FlatMapPush, KeyedNode, MapPush, NodeImpl, PortNode, Routed,
    RunOptions, RunSummary, SinkNode, SourceNode, SplitNode, StatelessNode, TimestampPush,
    UnionNode,
};
use crate::sink::Sink;
use crate::source::Source;
use crate::state::StateKey;
use crate::time::Watermarks;

pub(crate) type NodeId = usize;

/// What a node does, which decides how it is scheduled (the plan's kinds are the graph's).
pub(crate) use crate::plan::PlanNodeKind as NodeKind;

pub(crate) struct Node {
    pub(crate) name: String,
    /// The name the node was added with, before `-2`, `-3`.. made it unique: what kind of
    /// operator it is, for checking a restored checkpoint against the job.
    pub(crate) base: String,
    /// The uid set with [`Stream::uid`], if any.
    pub(crate) uid: Option<String>,
    pub(crate) kind: NodeKind,
    /// The name its state table is queryable under ([`Stream::queryable`]), if any.
    pub(crate) queryable: Option<String>,
    pub(crate) detail: String,
    pub(crate) inputs: Vec<NodeId>,
    pub(crate) consumers: Vec<NodeId>,
    /// Which output of its input node it reads: [`MAIN_OUTPUT`], or a side output of that
    /// node (a source's [`DEAD_LETTERS_OUTPUT`]), which the input node builds itself.
    pub(crate) output: usize,
    pub(crate) imp: Rc<dyn NodeImpl>,
}

/// The output a node's consumers read unless they are ports of one of its side outputs.
pub(crate) const MAIN_OUTPUT: usize = 0;
/// A source's second output: the records it rejected ([`Stream::dead_letters`]).
pub(crate) const DEAD_LETTERS_OUTPUT: usize = 1;

/// The dataflow graph of a job, in the order nodes were added (a topological order).
#[derive(Default)]
pub(crate) struct Graph {
    pub(crate) nodes: Vec<Node>,
    /// Mistakes found while building; reported when the job runs or is described.
    pub(crate) errors: Vec<String>,
}

impl Graph {
    /// Parallelism of a node when keyed operators run with `parallelism` workers.
    pub(crate) fn parallelism(&self, id: NodeId, parallelism: usize) -> usize {
        let node = &self.nodes[id];
        match node.kind {
            NodeKind::Keyed | NodeKind::ParallelSource => parallelism,
            NodeKind::Stateless => self.parallelism(node.inputs[0], parallelism),
            NodeKind::Union if self.inputs_share_a_thread(id, parallelism) => {
                self.parallelism(node.inputs[0], parallelism)
            }
            NodeKind::Source | NodeKind::Union | NodeKind::Sink => 1,
        }
    }

    /// How many upstream instances deliver into a node.
    pub(crate) fn producers(&self, id: NodeId, parallelism: usize) -> usize {
        self.nodes[id]
            .inputs
            .iter()
            .map(|&i| self.parallelism(i, parallelism))
            .sum()
    }

    /// True if a node runs in the thread of its (single) upstream instance, false if it
    /// reads from channels in threads of its own.
    pub(crate) fn is_chained(&self, id: NodeId, parallelism: usize) -> bool {
        match self.nodes[id].kind {
            NodeKind::Source | NodeKind::ParallelSource => false,
            NodeKind::Stateless => true,
            NodeKind::Keyed => parallelism == 1 && self.producers(id, parallelism) == 1,
            NodeKind::Union => self.inputs_share_a_thread(id, parallelism),
            NodeKind::Sink => self.producers(id, parallelism) == 1,
        }
    }

    /// The node whose thread (per instance) node `id` runs in.
    fn thread_of(&self, id: NodeId, parallelism: usize) -> NodeId {
        if self.is_chained(id, parallelism) {
            self.thread_of(self.nodes[id].inputs[0], parallelism)
        } else {
            id
        }
    }

    /// True if every input of node `id` runs in the same thread, instance by instance (the
    /// branches of one stream split with `clone()`): a union of them needs no channel.
    fn inputs_share_a_thread(&self, id: NodeId, parallelism: usize) -> bool {
        let mut threads = self.nodes[id]
            .inputs
            .iter()
            .map(|&i| self.thread_of(i, parallelism));
        let first = threads.next();
        first.is_some() && threads.all(|t| Some(t) == first)
    }

    fn add(
        &mut self,
        base: &str,
        kind: NodeKind,
        detail: String,
        inputs: &[NodeId],
        imp: Rc<dyn NodeImpl>,
    ) -> NodeId {
        let id = self.nodes.len();
        let mut name = base.to_string();
        let mut n = 2;
        while self.nodes.iter().any(|node| node.name == name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        for &i in inputs {
            self.nodes[i].consumers.push(id);
        }
        self.nodes.push(Node {
            name,
            base: base.to_string(),
            uid: None,
            kind,
            queryable: None,
            detail,
            inputs: inputs.to_vec(),
            consumers: Vec::new(),
            output: MAIN_OUTPUT,
            imp,
        });
        id
    }
}

/// A node's uid: what its state is stored under in checkpoints and matched by on a
/// restore (Flink's `uid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Uid {
    pub(crate) value: String,
    /// True if derived from the node's place in the graph (no [`Stream::uid`] was set).
    pub(crate) derived: bool,
}

impl Graph {
    /// Every node's uid, by node id. A derived uid is the node's name and a checksum of its
    /// place in the graph: its index, the uids of its inputs and the names of its
    /// consumers. So adding, removing or moving an operator upstream of a node, or changing
    /// what consumes it, changes its derived uid, and its checkpointed state no longer
    /// matches (a restore refuses it rather than loading it into another operator).
    pub(crate) fn uids(&self) -> Vec<Uid> {
        let mut uids: Vec<Uid> = Vec::with_capacity(self.nodes.len());
        for (id, node) in self.nodes.iter().enumerate() {
            let uid = match &node.uid {
                Some(uid) => Uid {
                    value: uid.clone(),
                    derived: false,
                },
                None => {
                    let inputs: Vec<&str> = node
                        .inputs
                        .iter()
                        .map(|&i| uids[i].value.as_str())
                        .collect();
                    let consumers: Vec<&str> = node
                        .consumers
                        .iter()
                        .map(|&c| self.nodes[c].name.as_str())
                        .collect();
                    let place = format!(
                        "{id}|{}|{}|{}",
                        node.name,
                        inputs.join(","),
                        consumers.join(",")
                    );
                    Uid {
                        value: format!("{}-{:08x}", node.name, crc32fast::hash(place.as_bytes())),
                        derived: true,
                    }
                }
            };
            uids.push(uid);
        }
        uids
    }

    /// Sets node `id`'s uid, or records why it cannot be.
    fn set_uid(&mut self, id: NodeId, uid: &str) {
        let problem = if uid.is_empty() || uid.contains('#') || uid.chars().any(char::is_control) {
            Some(format!(
                "uid `{uid}` of `{}`: a uid is a non-empty name without `#` or control \
                 characters",
                self.nodes[id].name
            ))
        } else if let Some(other) = self.nodes.iter().find(|n| n.uid.as_deref() == Some(uid)) {
            Some(format!(
                "uid `{uid}` is set on both `{}` and `{}`: each operator needs its own",
                other.name, self.nodes[id].name
            ))
        } else {
            None
        };
        match problem {
            Some(reason) => self.errors.push(reason),
            None => self.nodes[id].uid = Some(uid.to_string()),
        }
    }
}

struct JobInner {
    name: String,
    graph: RefCell<Graph>,
    metrics: Arc<JobMetrics>,
    control: Arc<JobControl>,
    queries: Arc<QueryableState>,
}

/// A dataflow job under construction. Cloning gives another handle to the same job.
#[derive(Clone)]
pub struct Job {
    inner: Rc<JobInner>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

impl Job {
    /// An empty job called `name`.
    pub fn new(name: &str) -> Self {
        Job {
            inner: Rc::new(JobInner {
                name: name.to_string(),
                graph: RefCell::new(Graph::default()),
                metrics: Arc::new(JobMetrics::new(name)),
                control: Arc::new(JobControl::default()),
                queries: Arc::default(),
            }),
        }
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The job's metrics, live while it runs.
    pub fn metrics(&self) -> Arc<JobMetrics> {
        self.inner.metrics.clone()
    }

    /// A handle to control the job while it runs (savepoints).
    pub fn control(&self) -> Arc<JobControl> {
        self.inner.control.clone()
    }

    /// The job's queryable state tables ([`Stream::queryable`]): answers while it runs
    /// (see [`crate::query`]).
    pub fn queryable_state(&self) -> Arc<QueryableState> {
        self.inner.queries.clone()
    }

    /// Adds a source; its events enter the job without timestamps.
    pub fn source<S: Source>(&self, name: &str, source: S) -> Stream<S::Item> {
        let detail = source.describe();
        self.add_source(name, NodeKind::Source, detail, SourceNode::new(source))
    }

    /// Adds a source that runs as one instance per worker (`--parallelism`), as Flink's
    /// parallel sources: `make(instance, instances)` builds instance `instance` of
    /// `instances`, and together they must read the whole input exactly once (split `i`
    /// of `n` of a file, every `n`-th event of a generator, or pieces taken from a shared
    /// queue as they go). Each run makes its instances in order, `make(0, n)` first, before
    /// any of them is polled, so instance 0 may start what the run's instances share. Each
    /// instance has its own watermark; operators downstream take the minimum. A job restored
    /// from a checkpoint must run with as many instances as the checkpoint was taken with,
    /// since the positions belong to the instances' shares. `make(0, 1)` is also called
    /// once here, to describe the source (`weir describe`); sources open their inputs only
    /// when run.
    ///
    /// At parallelism > 1 each instance shares a worker thread with keyed operators, and
    /// the instances move in step (none more than `channel_capacity` polls ahead of the
    /// slowest), unless they keep together by themselves ([`Source::aligns_instances`]).
    /// So an instance should not wait inside `poll_batch`: one with nothing due returns
    /// [`crate::SourceStatus::Pending`] and lets the worker wait. A sleep in the poll stalls
    /// the worker's operators, and an instance that stays quiet holds its siblings back.
    pub fn parallel_source<S, F>(&self, name: &str, make: F) -> Stream<S::Item>
    where
        S: Source,
        F: Fn(usize, usize) -> S + 'static,
    {
        let detail = format!("{} (split over the workers)", make(0, 1).describe());
        self.add_source(
            name,
            NodeKind::ParallelSource,
            detail,
            SourceNode::split(make),
        )
    }

    /// Adds a source node; its events enter the job without timestamps.
    fn add_source<S: Source>(
        &self,
        name: &str,
        kind: NodeKind,
        detail: String,
        node: SourceNode<S>,
    ) -> Stream<S::Item> {
        let id = self.add(name, kind, detail, &[], Rc::new(node));
        Stream::new(self.clone(), id, false)
    }

    /// Runs the job to completion (or failure) and reports what it did.
    pub fn run(&self, options: &RunOptions) -> Result<RunSummary> {
        let graph = self.inner.graph.borrow();
        if let Some(first) = graph.errors.first() {
            return Err(EngineError::InvalidJob {
                job: self.inner.name.clone(),
                reason: first.clone(),
            });
        }
        let result = runtime::run(
            &self.inner.name,
            &graph,
            &self.inner.metrics,
            &self.inner.control,
            &self.inner.queries,
            options,
        );
        self.inner.control.detach();
        self.inner.queries.finish();
        result
    }

    /// The operator graph as data, for `parallelism` workers (see [`JobPlan`]).
    pub fn plan(&self, parallelism: usize) -> JobPlan {
        let graph = self.inner.graph.borrow();
        let uids = graph.uids();
        let mut edges = Vec::new();
        let nodes = graph
            .nodes
            .iter()
            .zip(uids)
            .enumerate()
            .map(|(id, (node, uid))| {
                let exchange = if graph.is_chained(id, parallelism) {
                    Exchange::Forward
                } else if node.kind == NodeKind::Keyed {
                    Exchange::Hash
                } else {
                    Exchange::Channel
                };
                edges.extend(node.inputs.iter().map(|&from| PlanEdge {
                    from,
                    to: id,
                    exchange,
                }));
                PlanNode {
                    id,
                    name: node.name.clone(),
                    uid: uid.value,
                    uid_derived: uid.derived,
                    kind: node.kind,
                    parallelism: graph.parallelism(id, parallelism),
                    detail: node.detail.clone(),
                }
            })
            .collect();
        JobPlan {
            job: self.inner.name.clone(),
            parallelism,
            nodes,
            edges,
        }
    }

    /// The operator graph as text, one node per line, for `parallelism` workers.
    pub fn describe(&self, parallelism: usize) -> String {
        let plan = self.plan(parallelism);
        let mut out = format!("job {} (parallelism {parallelism})\n", plan.job);
        for node in &plan.nodes {
            let inputs: Vec<&PlanEdge> = plan.edges.iter().filter(|e| e.to == node.id).collect();
            let names: Vec<&str> = inputs
                .iter()
                .map(|e| plan.nodes[e.from].name.as_str())
                .collect();
            let how = match inputs.first().map(|e| e.exchange) {
                None => String::new(),
                Some(Exchange::Forward) => format!(" <- {} (chained)", names.join(", ")),
                Some(Exchange::Hash) => {
                    format!(" <- {} (hash exchange over key groups)", names.join(", "))
                }
                Some(Exchange::Channel) => format!(" <- {} (channel)", names.join(", ")),
            };
            let _ = writeln!(
                out,
                "  [{}] {} {:?} x{} uid={}{}{how}{}",
                node.id,
                node.name,
                node.kind,
                node.parallelism,
                node.uid,
                if node.uid_derived { " (derived)" } else { "" },
                if node.detail.is_empty() {
                    String::new()
                } else {
                    format!(" : {}", node.detail)
                }
            );
        }
        for e in &self.inner.graph.borrow().errors {
            let _ = writeln!(out, "  error: {e}");
        }
        out
    }

    /// The operator graph in Graphviz DOT.
    pub fn to_dot(&self, parallelism: usize) -> String {
        let plan = self.plan(parallelism);
        let mut out = format!("digraph \"{}\" {{\n  rankdir=LR;\n", plan.job);
        for node in &plan.nodes {
            let shape = match node.kind {
                NodeKind::Source | NodeKind::ParallelSource => "invhouse",
                NodeKind::Sink => "house",
                NodeKind::Keyed => "box3d",
                NodeKind::Stateless | NodeKind::Union => "box",
            };
            let label = format!("{}\\nx{}\\nuid {}", node.name, node.parallelism, node.uid)
                .replace('"', "'");
            let _ = writeln!(out, "  n{} [label=\"{label}\", shape={shape}];", node.id);
            for edge in plan.edges.iter().filter(|e| e.to == node.id) {
                let style = match edge.exchange {
                    Exchange::Forward => "solid",
                    Exchange::Channel | Exchange::Hash => "bold",
                };
                let _ = writeln!(out, "  n{} -> n{} [style={style}];", edge.from, node.id);
            }
        }
        out.push_str("}\n");
        out
    }

    fn add(
        &self,
        base: &str,
        kind: NodeKind,
        detail: String,
        inputs: &[NodeId],
        imp: Rc<dyn NodeImpl>,
    ) -> NodeId {
        self.inner
            .graph
            .borrow_mut()
            .add(base, kind, detail, inputs, imp)
    }

    fn invalid(&self, reason: String) {
        self.inner.graph.borrow_mut().errors.push(reason);
    }
}

/// A typed stream of events in a job. Cloning a stream and using both copies fans out.
pub struct Stream<T> {
    job: Job,
    node: NodeId,
    /// The node [`Stream::uid`] names: `node`, or the stateful operator an operator API
    /// ended with a stateless step (see [`Stream::uid_names`]).
    uid_target: NodeId,
    timed: bool,
    _data: PhantomData<fn() -> T>,
}

impl<T> Clone for Stream<T> {
    fn clone(&self) -> Self {
        Stream {
            job: self.job.clone(),
            node: self.node,
            uid_target: self.uid_target,
            timed: self.timed,
            _data: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Stream<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("node", &self.node)
            .field("timed", &self.timed)
            .finish()
    }
}

impl<T: Data> Stream<T> {
    fn new(job: Job, node: NodeId, timed: bool) -> Self {
        Stream {
            job,
            node,
            uid_target: node,
            timed,
            _data: PhantomData,
        }
    }

    /// Makes [`Stream::uid`] on this stream name the operator that made `origin`: for an
    /// operator API whose stateful operator is followed by a stateless step (a window
    /// operator's results picked out of its output), so that `.aggregate(..).uid("w")`
    /// names the window, not the step.
    pub fn uid_names<U>(mut self, origin: &Stream<U>) -> Self {
        self.uid_target = origin.uid_target;
        self
    }

    /// The job this stream belongs to.
    pub fn job(&self) -> &Job {
        &self.job
    }

    /// True once [`Stream::timestamps`] assigned event times.
    pub fn has_timestamps(&self) -> bool {
        self.timed
    }

    /// Records a mistake in the job definition; the job will refuse to run.
    pub fn invalid(&self, reason: String) {
        self.job.invalid(reason);
    }

    fn stateless<U: Data>(&self, base: &str, timed: bool, node: StatelessNode<T, U>) -> Stream<U> {
        let id = self.job.add(
            base,
            NodeKind::Stateless,
            String::new(),
            &[self.node],
            Rc::new(node),
        );
        Stream::new(self.job.clone(), id, timed)
    }

    /// Assigns event times with `ts` and derives watermarks with `watermarks`.
    pub fn timestamps<F>(self, ts: F, watermarks: Watermarks) -> Stream<T>
    where
        F: Fn(&T) -> i64 + Clone + Send + 'static,
    {
        self.stateless(
            "timestamps",
            true,
            StatelessNode::assigning_time(move |down, context| {
                Ok(Box::new(TimestampPush::new(
                    ts.clone(),
                    watermarks,
                    down,
                    context,
                )?))
            }),
        )
    }

    /// Transforms each event.
    pub fn map<U: Data, F>(self, f: F) -> Stream<U>
    where
        F: Fn(T) -> U + Clone + Send + 'static,
    {
        let timed = self.timed;
        self.stateless(
            "map",
            timed,
            StatelessNode::new(move |down, _| Ok(Box::new(MapPush::new(f.clone(), down)))),
        )
    }

    /// Keeps the events for which `f` is true.
    pub fn filter<F>(self, f: F) -> Stream<T>
    where
        F: Fn(&T) -> bool + Clone + Send + 'static,
    {
        let timed = self.timed;
        self.stateless(
            "filter",
            timed,
            StatelessNode::new(move |down, _| Ok(Box::new(FilterPush::new(f.clone(), down)))),
        )
    }

    /// Replaces each event by zero or more events (all with the event's time).
    pub fn flat_map<U: Data, I, F>(self, f: F) -> Stream<U>
    where
        I: IntoIterator<Item = U>,
        F: Fn(T) -> I + Clone + Send + 'static,
    {
        let timed = self.timed;
        self.stateless(
            "flat_map",
            timed,
            StatelessNode::new(move |down, _| Ok(Box::new(FlatMapPush::new(f.clone(), down)))),
        )
    }

    /// Splits the stream in two without copying events (Flink's side outputs): `route`
    /// sends each event to the main output, to the side output, or nowhere
    /// ([`Routed`]). Both outputs keep the stream's event times and watermarks. The graph
    /// shows a `split` node with two ports named `main` and `side`.
    ///
    /// Use it where one operator emits two kinds of results (matches and timeouts, window
    /// results and late events): two `flat_map`s over one stream would clone every event
    /// once per consumer.
    pub fn split<A: Data, B: Data, F>(self, name: &str, route: F) -> (Stream<A>, Stream<B>)
    where
        F: Fn(T) -> Routed<A, B> + Clone + Send + 'static,
    {
        let split = self.job.add(
            name,
            NodeKind::Stateless,
            String::new(),
            &[self.node],
            Rc::new(SplitNode::new(route)),
        );
        let port = |port: &str| {
            self.job.add(
                &format!("{name}.{port}"),
                NodeKind::Stateless,
                String::new(),
                &[split],
                Rc::new(PortNode),
            )
        };
        let (main, side) = (port("main"), port("side"));
        // `.uid(..)` on an output names the operator whose output was split.
        (
            Stream::new(self.job.clone(), main, self.timed).uid_names(&self),
            Stream::new(self.job.clone(), side, self.timed).uid_names(&self),
        )
    }

    /// The records the source of this stream rejected ([`Source::take_dead_letters`]: input
    /// it could not decode), as a stream of their own: the source node's second output,
    /// shown as the port `<source>.dead_letters` in `weir describe` and the metrics. They
    /// travel between the same checkpoint barriers as the source's events, so a sink with
    /// transactions keeps each exactly once. A source whose dead letters go nowhere still
    /// counts them (`weir_dead_letters_total`). Only the stream a source returned has them.
    pub fn dead_letters(&self) -> Stream<DeadLetter> {
        let (kind, name) = {
            let graph = self.job.inner.graph.borrow();
            let node = &graph.nodes[self.node];
            (node.kind, node.name.clone())
        };
        if !matches!(kind, NodeKind::Source | NodeKind::ParallelSource) {
            self.job.invalid(format!(
                "dead_letters() of `{name}`: only a source has dead letters; call it on the \
                 stream `Job::source` returned"
            ));
        }
        let port = self.job.add(
            &format!("{name}.dead_letters"),
            NodeKind::Stateless,
            String::new(),
            &[self.node],
            Rc::new(PortNode),
        );
        self.job.inner.graph.borrow_mut().nodes[port].output = DEAD_LETTERS_OUTPUT;
        Stream::new(self.job.clone(), port, false)
    }

    /// Runs an operator made by `make` in the thread of this stream's producer, one
    /// instance per producer instance, before any exchange (see [`ChainedOperator`]).
    pub fn chain<O, F>(self, name: &str, make: F) -> Stream<O::Out>
    where
        O: ChainedOperator<In = T>,
        F: Fn() -> O + Clone + 'static,
    {
        let timed = self.timed;
        self.stateless(
            name,
            timed,
            StatelessNode::new(move |down, context| {
                Ok(Box::new(ChainedPush::new(make(), down, context)))
            }),
        )
    }

    /// Merges two streams of the same type. The watermark is the minimum of both inputs';
    /// the interleaving of events follows arrival (it is not specified).
    pub fn union(self, other: Stream<T>) -> Stream<T> {
        let id = self.job.add(
            "union",
            NodeKind::Union,
            String::new(),
            &[self.node, other.node],
            Rc::new(UnionNode::<T>::new()),
        );
        Stream::new(self.job.clone(), id, self.timed && other.timed)
    }

    /// Partitions the stream by key for stateful operators.
    pub fn key_by<K, KF>(self, key: KF) -> KeyedStream<K, T, KF>
    where
        K: StateKey + StableHash + Data,
        KF: Fn(&T) -> K + Clone + Send + 'static,
    {
        KeyedStream {
            stream: self,
            key,
            _key: PhantomData,
        }
    }

    /// Names the operator that made this stream (its source, keyed operator, ...) with a
    /// uid, as Flink's `uid`: its state is stored under the uid in checkpoints and a
    /// restore gives it the state stored under the same uid, wherever the operator now is
    /// in the job. Set one on every operator that keeps state (sources, keyed operators,
    /// sinks with transactions) before changing a job that has checkpoints; without it
    /// the uid is derived from the operator's place in the graph, and any change upstream
    /// or downstream of it makes a restore refuse its state. Uids must be unique in a job.
    pub fn uid(self, uid: &str) -> Self {
        self.job
            .inner
            .graph
            .borrow_mut()
            .set_uid(self.uid_target, uid);
        self
    }

    /// Makes the state table of the keyed operator that made this stream readable while
    /// the job runs, under `table` ([`Job::queryable_state`], `GET /api/v1/state/{table}`
    /// of `weir run`): for `process_with_state`, each key's state as JSON. Names are unique
    /// in a job; an operator without a table that can be queried makes the job refuse to
    /// run.
    pub fn queryable(self, table: &str) -> Self {
        let target = self.uid_target;
        let mut graph = self.job.inner.graph.borrow_mut();
        let node = &graph.nodes[target];
        let problem = if node.kind != NodeKind::Keyed {
            Some(format!(
                "`{}` cannot be queryable: only keyed operators (process_with_state) keep a \
                 table per key",
                node.name
            ))
        } else if table.is_empty()
            || table.contains(['/', '?', '#'])
            || table.chars().any(char::is_control)
        {
            Some(format!(
                "queryable table name `{table}` of `{}`: use a non-empty name without `/`, `?`, \
                 `#` or control characters (it is part of a URL)",
                node.name
            ))
        } else {
            match self.job.inner.queries.declare(table, &node.name) {
                Ok(()) => None,
                Err(other) => Some(format!(
                    "queryable table `{table}` is named by both `{other}` and `{}`: give each \
                     table its own name",
                    node.name
                )),
            }
        };
        match problem {
            Some(reason) => graph.errors.push(reason),
            None => {
                let node = &mut graph.nodes[target];
                node.queryable = Some(table.to_string());
                node.detail = format!("{}; queryable as `{table}`", node.detail);
            }
        }
        drop(graph);
        self
    }

    /// Sends the stream to a sink.
    pub fn sink<S: Sink<T>>(self, name: &str, sink: S) -> SinkHandle {
        self.add_sink(name, sink, true)
    }

    /// Sends a side output (late events, say) to a sink: as [`Stream::sink`], with the
    /// same checkpoints and transactions, but its records are not counted as the job's
    /// results in the run summary nor timed as results.
    pub fn side_output_sink<S: Sink<T>>(self, name: &str, sink: S) -> SinkHandle {
        self.add_sink(name, sink, false)
    }

    fn add_sink<S: Sink<T>>(self, name: &str, sink: S, results: bool) -> SinkHandle {
        let taken = self
            .job
            .inner
            .graph
            .borrow()
            .nodes
            .iter()
            .any(|n| n.kind == NodeKind::Sink && n.base == name);
        if taken && results {
            // Two result sinks of one name would share metrics and be told apart by a
            // suffix nobody chose; a side output (late data) may repeat its fixed name.
            self.job.invalid(format!(
                "two sinks are named `{name}`: give each sink its own name"
            ));
        }
        let detail = sink.describe();
        let node = self.job.add(
            name,
            NodeKind::Sink,
            detail,
            &[self.node],
            Rc::new(SinkNode::new(sink, results)),
        );
        SinkHandle {
            job: self.job,
            node,
        }
    }
}

/// A sink added to a job, to give it a uid.
#[derive(Debug)]
pub struct SinkHandle {
    job: Job,
    node: NodeId,
}

impl SinkHandle {
    /// The sink's uid (see [`Stream::uid`]): what its transactions are kept under in
    /// checkpoints.
    pub fn uid(self, uid: &str) -> Self {
        self.job.inner.graph.borrow_mut().set_uid(self.node, uid);
        self
    }
}

/// A stream partitioned by key; stateful operators apply per key.
pub struct KeyedStream<K, T, KF> {
    stream: Stream<T>,
    key: KF,
    _key: PhantomData<fn() -> K>,
}

impl<K, T, KF> std::fmt::Debug for KeyedStream<K, T, KF> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedStream")
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl<K, T, KF> KeyedStream<K, T, KF>
where
    K: StateKey + StableHash + Data,
    T: Data,
    KF: Fn(&T) -> K + Clone + Send + 'static,
{
    /// The stream before keying.
    pub fn stream(&self) -> &Stream<T> {
        &self.stream
    }

    /// The key function (for operators that re-key the stream themselves).
    pub fn key_fn(&self) -> KF {
        self.key.clone()
    }

    /// Applies a keyed operator made by `factory`, one instance per worker. Its results
    /// keep the event time the operator gives them.
    pub fn process<F>(self, name: &str, detail: String, factory: F) -> Stream<F::Out>
    where
        F: OperatorFactory<Key = K, In = T>,
    {
        let job = self.stream.job.clone();
        let id = job.add(
            name,
            NodeKind::Keyed,
            detail,
            &[self.stream.node],
            Rc::new(KeyedNode::new(factory, self.key)),
        );
        Stream::new(job, id, self.stream.timed)
    }
}

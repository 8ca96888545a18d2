//! [`Stream`], a typed handle to a node of a job, and its combinators.

use std::marker::PhantomData;
use std::rc::Rc;

use super::{Job, KeyedStream, NodeId, NodeKind, DEAD_LETTERS_OUTPUT};
use crate::dead_letter::DeadLetter;
use crate::keys::StableHash;
use crate::operator::ChainedOperator;
use crate::record::Data;
use crate::runtime::{
    ChainedPush, FilterPush, FlatMapPush, MapPush, PortNode, Routed, SinkNode, SplitNode,
    StatelessNode, TimestampPush, UnionNode,
};
use crate::sink::Sink;
use crate::state::StateKey;
use crate::time::Watermarks;

/// A typed stream of events in a job. Cloning a stream and using both copies fans out.
pub struct Stream<T> {
    pub(super) job: Job,
    pub(super) node: NodeId,
    /// The node [`Stream::uid`] names: `node`, or the stateful operator an operator API
    /// ended with a stateless step (see [`Stream::uid_names`]).
    uid_target: NodeId,
    pub(super) timed: bool,
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
    pub(super) fn new(job: Job, node: NodeId, timed: bool) -> Self {
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
    /// names the window, not the step. The step is then [internal](Stream::internal).
    pub fn uid_names<U>(mut self, origin: &Stream<U>) -> Self {
        self.uid_target = origin.uid_target;
        if self.node != origin.node {
            self = self.internal();
        }
        self
    }

    /// Marks the node that made this stream as internal: a step an operator API added on
    /// the user's behalf (a split into side outputs, a pre-aggregation before an exchange,
    /// the picking of results out of an operator's output), not one the job's author
    /// wrote. `weir describe` says `internal` and its DOT graph draws the node dashed;
    /// nothing else changes.
    pub fn internal(self) -> Self {
        self.job.inner.graph.borrow_mut().nodes[self.node].internal = true;
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
    /// shows a `split` node with two ports named `main` and `side`, all three internal.
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
        // The split and its ports are plumbing: the streams are what the caller wrote.
        self.job.inner.graph.borrow_mut().nodes[split].internal = true;
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

    /// The records the source of this stream rejected
    /// ([`crate::Source::take_dead_letters`]: input it could not decode), as a stream of
    /// their own: the source node's second output, shown as the port
    /// `<source>.dead_letters` in `weir describe` and the metrics. They travel between the
    /// same checkpoint barriers as the source's events, so a sink with transactions keeps
    /// each exactly once. A source whose dead letters go nowhere still counts them
    /// (`weir_dead_letters_total`). Only the stream a source returned has them.
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
        Stream::new(self.job.clone(), port, false).internal()
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
    /// of `weir run`): for `process_with_state`, each key's state as JSON (a window's latest
    /// results are made queryable on the window, `WindowedStream::queryable` in
    /// weir-operators, before its aggregate). Names are unique
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
            None => graph.nodes[target].queryable = Some(table.to_string()),
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

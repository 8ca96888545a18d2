//! The typed, fluent job API.
//!
//! A [`Job`] collects a dataflow graph; [`Stream`] and [`KeyedStream`] are typed handles to
//! its nodes. Building a job does no I/O: sources open their inputs when the job runs, so a
//! job can be described (`weir describe`) without its inputs.
//!
//! The graph itself (nodes, scheduling, uids) is in `graph`; [`Stream`]'s combinators in
//! `stream`, [`KeyedStream`]'s in `keyed`, a keyed stream connected to a broadcast stream
//! ([`BroadcastConnectedStream`]) in `broadcast`; the plan, text and DOT views in `describe`.
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

mod broadcast;
mod describe;
mod graph;
mod keyed;
mod stream;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use crate::checkpoint::JobControl;
use crate::error::{EngineError, Result};
use crate::metrics::JobMetrics;
use crate::query::QueryableState;
use crate::runtime::{self, NodeImpl, RunOptions, RunSummary, SourceNode};
use crate::source::Source;

pub use broadcast::BroadcastConnectedStream;
pub(crate) use graph::{Graph, NodeId, NodeKind, Uid, DEAD_LETTERS_OUTPUT, MAIN_OUTPUT};
pub use keyed::KeyedStream;
pub use stream::{SinkHandle, Stream};

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

    /// Adds a source; its events enter the job without timestamps. A source whose input
    /// splits ([`Source::split`], a file) is read by one instance per worker, which share
    /// the input out among themselves and resume at any parallelism; any other runs as one
    /// instance whatever the parallelism.
    pub fn source<S: Source>(&self, name: &str, source: S) -> Stream<S::Item> {
        let detail = source.describe();
        if source.split(0, 1).is_some() {
            let detail = format!("{detail} (split over the workers)");
            let node = SourceNode::shares(source);
            return self.add_source(name, NodeKind::ParallelSource, detail, node);
        }
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

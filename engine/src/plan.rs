//! A job's operator graph as data: what `weir describe` prints and the HTTP API's
//! `GET /api/v1/job` serves.
//!
//! A [`JobPlan`] is a snapshot taken from a built [`crate::Job`] for a given parallelism;
//! it owns no part of the job and can be serialized. Node ids are the graph's own (the
//! order nodes were added, a topological order), so every edge goes from a lower id to a
//! higher one.

use serde::Serialize;

/// The nodes and edges of a job, for one parallelism.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobPlan {
    /// The job's name.
    pub job: String,
    /// The parallelism the plan is for (`--parallelism`).
    pub parallelism: usize,
    /// The operators, sources and sinks, in topological order.
    pub nodes: Vec<PlanNode>,
    /// Who feeds whom.
    pub edges: Vec<PlanEdge>,
}

/// One node of a [`JobPlan`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanNode {
    /// The node's index in the graph.
    pub id: usize,
    /// Its unique name: the `operator` label of its metrics.
    pub name: String,
    /// What its state is stored under in checkpoints.
    pub uid: String,
    /// True if the uid was derived from the node's place (no `.uid(..)` was set).
    pub uid_derived: bool,
    /// What kind of node it is.
    pub kind: PlanNodeKind,
    /// How many instances run.
    pub parallelism: usize,
    /// What the node does (a source's input, a window's size, ..), possibly empty.
    pub detail: String,
    /// A keyed operator's key type without module paths (`String`, `(i64, i64)`); `None`
    /// for the other kinds.
    pub key: Option<String>,
    /// True for a step an operator API added on the user's behalf (a split into side
    /// outputs, a pre-aggregation before an exchange, a port), not one the job wrote.
    pub internal: bool,
    /// The names of its state tables (keyed operators; empty for the others): the `table`
    /// label of `weir_state_table_entries`.
    pub state_tables: Vec<String>,
    /// The name its state is queryable under (`GET /api/v1/state/{name}`), if any.
    pub queryable: Option<String>,
}

/// The kinds of [`PlanNode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanNodeKind {
    /// A source read by one instance.
    Source,
    /// A source split over the workers.
    ParallelSource,
    /// A stateless operator (map, filter, ..).
    Stateless,
    /// A keyed, stateful operator.
    Keyed,
    /// The union of several streams.
    Union,
    /// A sink.
    Sink,
}

/// How records cross one edge of a [`JobPlan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exchange {
    /// In the same thread, by a function call (chained).
    Forward,
    /// Through a channel to a thread of the consumer's own.
    Channel,
    /// Repartitioned by key over the consumer's instances (key groups).
    Hash,
}

/// One edge of a [`JobPlan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlanEdge {
    /// The producing node's id.
    pub from: usize,
    /// The consuming node's id.
    pub to: usize,
    /// How records cross it.
    pub exchange: Exchange,
}

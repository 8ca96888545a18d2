//! A job's graph as a plan, as text (`weir describe`) and as Graphviz DOT.

use std::fmt::Write as _;

use super::{Job, NodeKind};
use crate::plan::{Exchange, JobPlan, PlanEdge, PlanNode};

impl Job {
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
                    key: node.key.clone(),
                    internal: node.internal,
                    state_tables: node.tables.clone(),
                    queryable: node.queryable.clone(),
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

    /// The operator graph as text, one node per line, for `parallelism` workers: each
    /// node's kind, instances, uid, inputs and how they reach it, then its key type,
    /// detail and state tables; `internal` marks steps an operator API added.
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
            let about = facts(node).join("; ");
            let _ = writeln!(
                out,
                "  [{}] {} {:?} x{}{} uid={}{}{how}{}",
                node.id,
                node.name,
                node.kind,
                node.parallelism,
                if node.internal { " internal" } else { "" },
                node.uid,
                if node.uid_derived { " (derived)" } else { "" },
                if about.is_empty() {
                    about
                } else {
                    format!(" : {about}")
                },
            );
        }
        for e in &self.inner.graph.borrow().errors {
            let _ = writeln!(out, "  error: {e}");
        }
        out
    }

    /// The operator graph in Graphviz DOT (`weir describe JOB --dot | dot -Tsvg`): each
    /// node labelled with its name, instances, uid, key type, detail and state tables;
    /// internal steps dashed, exchanges between threads bold.
    pub fn to_dot(&self, parallelism: usize) -> String {
        let plan = self.plan(parallelism);
        let mut out = format!(
            "digraph \"{}\" {{\n  rankdir=LR;\n  node [fontsize=10];\n",
            dot_escape(&plan.job)
        );
        for node in &plan.nodes {
            let shape = match node.kind {
                NodeKind::Source | NodeKind::ParallelSource => "invhouse",
                NodeKind::Sink => "house",
                NodeKind::Keyed => "box3d",
                NodeKind::Stateless | NodeKind::Union => "box",
            };
            let lines = [
                node.name.clone(),
                format!("x{}", node.parallelism),
                format!("uid {}", node.uid),
            ];
            let label: Vec<String> = lines
                .into_iter()
                .chain(facts(node))
                .map(|line| dot_escape(&line))
                .collect();
            let style = if node.internal { ", style=dashed" } else { "" };
            let _ = writeln!(
                out,
                "  n{} [label=\"{}\", shape={shape}{style}];",
                node.id,
                label.join("\\n")
            );
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
}

/// What `weir describe` says of a node after its place in the graph: its key type, its
/// detail (a source's input, a window's size) and its state tables, each if it has one.
fn facts(node: &PlanNode) -> Vec<String> {
    let key = node.key.as_ref().map(|k| format!("key {k}"));
    let detail = (!node.detail.is_empty()).then(|| node.detail.clone());
    [key, detail, state_of(node)]
        .into_iter()
        .flatten()
        .collect()
}

/// `text` as the inside of a DOT string: quotes and backslashes escaped, line breaks as
/// DOT's `\n`.
fn dot_escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A node's state tables as `weir describe` shows them (`state: window-panes`; a
/// queryable table adds the name queries use), or `None` for a node without state.
fn state_of(node: &PlanNode) -> Option<String> {
    let tables = node.state_tables.join(", ");
    match (tables.is_empty(), &node.queryable) {
        (true, None) => None,
        (true, Some(name)) => Some(format!("queryable as `{name}`")),
        (false, None) => Some(format!("state: {tables}")),
        (false, Some(name)) => Some(format!("state: {tables} (queryable as `{name}`)")),
    }
}

//! The dataflow graph a [`super::Job`] collects: its nodes, how each is scheduled
//! (parallelism, chaining) and the uids its state is checkpointed under.

use std::rc::Rc;

use crate::runtime::NodeImpl;

pub(crate) type NodeId = usize;

/// What a node does, which decides how it is scheduled (the plan's kinds are the graph's).
pub(crate) use crate::plan::PlanNodeKind as NodeKind;

pub(crate) struct Node {
    pub(crate) name: String,
    /// The name the node was added with, before `-2`, `-3`.. made it unique: what kind of
    /// operator it is, for checking a restored checkpoint against the job.
    pub(crate) base: String,
    /// The uid set with [`super::Stream::uid`], if any.
    pub(crate) uid: Option<String>,
    pub(crate) kind: NodeKind,
    /// The name its state table is queryable under ([`super::Stream::queryable`]), if any.
    pub(crate) queryable: Option<String>,
    /// The names of a keyed operator's state tables ([`crate::OperatorFactory::tables`]).
    pub(crate) tables: Vec<String>,
    /// A keyed operator's key type, as `weir describe` shows it (`String`, `(i64, i64)`).
    pub(crate) key: Option<String>,
    /// True for a step an operator API added on the user's behalf ([`super::Stream::internal`]).
    pub(crate) internal: bool,
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
/// A source's second output: the records it rejected ([`super::Stream::dead_letters`]).
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

    pub(super) fn add(
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
            tables: Vec::new(),
            key: None,
            internal: false,
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
    /// True if derived from the node's place in the graph (no [`super::Stream::uid`] was set).
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
    pub(super) fn set_uid(&mut self, id: NodeId, uid: &str) {
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

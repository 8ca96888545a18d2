//! The JSON bodies of `GET /api/v1/job`: the graph with each node's and instance's live
//! figures. Built from the plan, the latest instance samples and the timeline's rates.

use serde::Serialize;
use weir_engine::metrics::InstanceSample;
use weir_engine::plan::{Exchange, PlanNode, PlanNodeKind};

use super::served::{lock, unix_ms, JobState, Serving};
use super::timeline::{Timeline, RATE_WINDOW_SECONDS};

/// `GET /api/v1/job`.
#[derive(Debug, Serialize)]
pub(crate) struct JobView {
    pub(crate) name: String,
    pub(crate) state: JobState,
    /// Why it failed, when it did.
    pub(crate) reason: Option<String>,
    pub(crate) started_at_ms: u64,
    pub(crate) uptime_seconds: f64,
    /// The command line it runs with.
    pub(crate) args: Vec<String>,
    pub(crate) parallelism: Option<usize>,
    pub(crate) nodes: Vec<NodeView>,
    pub(crate) edges: Vec<EdgeView>,
}

/// One node of the graph, its instances summed up.
#[derive(Debug, Serialize)]
pub(crate) struct NodeView {
    pub(crate) id: usize,
    pub(crate) name: String,
    pub(crate) uid: String,
    pub(crate) kind: PlanNodeKind,
    pub(crate) parallelism: usize,
    pub(crate) detail: String,
    /// A keyed operator's key type, as `weir describe` names it.
    pub(crate) key: Option<String>,
    /// A step an operator API added on the job's behalf (a split, a pre-aggregation, a
    /// port), not one the job wrote: the dashboard draws it dashed.
    pub(crate) internal: bool,
    pub(crate) events_in: u64,
    pub(crate) events_out: u64,
    pub(crate) events_in_per_second_1s: f64,
    pub(crate) events_in_per_second_10s: f64,
    pub(crate) events_out_per_second_1s: f64,
    pub(crate) events_out_per_second_10s: f64,
    /// The lowest watermark of its instances, epoch ms.
    pub(crate) watermark_ms: Option<i64>,
    /// Wall clock minus that watermark.
    pub(crate) watermark_lag_ms: Option<i64>,
    pub(crate) state_entries: Option<i64>,
    pub(crate) state_bytes: Option<i64>,
    /// The names of its state tables, as `weir describe` lists them (any state backend).
    pub(crate) state_tables: Vec<String>,
    /// The name its state is queryable under (`GET /api/v1/state/{name}`), if any.
    pub(crate) queryable: Option<String>,
    /// How full the queues of the nodes it sends to are, 0 to 1 (the highest of them): a
    /// node whose consumers' queues are full is held back by them, as Flink's
    /// backpressure ratio shows.
    pub(crate) backpressure: f64,
    pub(crate) instances: Vec<InstanceView>,
}

/// One instance of a node.
#[derive(Debug, Serialize)]
pub(crate) struct InstanceView {
    #[serde(flatten)]
    pub(crate) sample: InstanceSample,
    pub(crate) events_out_per_second_1s: f64,
    pub(crate) events_out_per_second_10s: f64,
    pub(crate) watermark_lag_ms: Option<i64>,
    /// Its input queue's fill, 0 to 1; `None` for an instance fed by a function call.
    pub(crate) queue_fill_ratio: Option<f64>,
}

/// One edge of the graph, with the records that crossed it per second.
#[derive(Debug, Serialize)]
pub(crate) struct EdgeView {
    pub(crate) from: usize,
    pub(crate) to: usize,
    pub(crate) exchange: Exchange,
    pub(crate) events_per_second_1s: f64,
}

impl JobView {
    /// The job as it is now.
    pub(crate) fn of(serving: &Serving) -> JobView {
        let now_ms = unix_ms(std::time::SystemTime::now());
        let (state, reason) = serving.state();
        let timeline = lock(&serving.timeline);
        let latest = timeline.latest();
        let mut nodes: Vec<NodeView> = serving
            .plan
            .iter()
            .flat_map(|p| &p.nodes)
            .map(|node| node_view(node, latest, &timeline, now_ms))
            .collect();
        let edges: Vec<EdgeView> = serving
            .plan
            .iter()
            .flat_map(|p| &p.edges)
            .map(|e| EdgeView {
                from: e.from,
                to: e.to,
                exchange: e.exchange,
                events_per_second_1s: nodes
                    .get(e.from)
                    .map_or(0.0, |n| n.events_out_per_second_1s),
            })
            .collect();
        for edge in &edges {
            let fill = nodes.get(edge.to).map_or(0.0, |consumer| {
                consumer
                    .instances
                    .iter()
                    .filter_map(|i| i.queue_fill_ratio)
                    .fold(0.0, f64::max)
            });
            if let Some(producer) = nodes.get_mut(edge.from) {
                producer.backpressure = producer.backpressure.max(fill);
            }
        }
        JobView {
            name: serving.name.clone(),
            state,
            reason,
            started_at_ms: serving.started_at_ms,
            uptime_seconds: now_ms.saturating_sub(serving.started_at_ms) as f64 / 1e3,
            args: serving.args.clone(),
            parallelism: serving.plan.as_ref().map(|p| p.parallelism),
            nodes,
            edges,
        }
    }
}

fn node_view(node: &PlanNode, latest: &[InstanceSample], t: &Timeline, now_ms: u64) -> NodeView {
    let lag = |w: Option<i64>| w.map(|w| i64::try_from(now_ms).unwrap_or(i64::MAX) - w);
    let instances: Vec<InstanceView> = latest
        .iter()
        .filter(|s| s.operator == node.name)
        .map(|s| InstanceView {
            events_out_per_second_1s: t.rate(&s.operator, s.subtask, 1, |s| s.events_out),
            events_out_per_second_10s: t.rate(&s.operator, s.subtask, RATE_WINDOW_SECONDS, |s| {
                s.events_out
            }),
            watermark_lag_ms: lag(s.watermark_ms),
            queue_fill_ratio: match (s.queue_fill, s.queue_capacity) {
                (Some(fill), Some(capacity)) if capacity > 0 => {
                    Some((fill as f64 / capacity as f64).clamp(0.0, 1.0))
                }
                _ => None,
            },
            sample: s.clone(),
        })
        .collect();
    let sum = |f: fn(&InstanceView) -> f64| instances.iter().map(f).sum::<f64>();
    let sum_some = |f: fn(&InstanceSample) -> Option<i64>| {
        instances
            .iter()
            .filter_map(|i| f(&i.sample))
            .reduce(|a, b| a + b)
    };
    let rate_in = |seconds| {
        instances
            .iter()
            .map(|i| t.rate(&node.name, i.sample.subtask, seconds, |s| s.events_in))
            .sum::<f64>()
    };
    let watermark = instances.iter().filter_map(|i| i.sample.watermark_ms).min();
    NodeView {
        id: node.id,
        name: node.name.clone(),
        uid: node.uid.clone(),
        kind: node.kind,
        parallelism: node.parallelism,
        detail: node.detail.clone(),
        key: node.key.clone(),
        internal: node.internal,
        events_in: instances.iter().map(|i| i.sample.events_in).sum(),
        events_out: instances.iter().map(|i| i.sample.events_out).sum(),
        events_in_per_second_1s: rate_in(1),
        events_in_per_second_10s: rate_in(RATE_WINDOW_SECONDS),
        events_out_per_second_1s: sum(|i| i.events_out_per_second_1s),
        events_out_per_second_10s: sum(|i| i.events_out_per_second_10s),
        watermark_ms: watermark,
        watermark_lag_ms: lag(watermark),
        state_entries: sum_some(|s| s.state_entries),
        state_bytes: sum_some(|s| s.state_bytes),
        state_tables: node.state_tables.clone(),
        queryable: node.queryable.clone(),
        backpressure: 0.0,
        instances,
    }
}

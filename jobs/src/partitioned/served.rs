//! The partition tasks of one process as the HTTP API sees them ([`ServedJob`]): metrics
//! summed over the tasks (each sample labelled with its task), and queryable state routed
//! by partition ([`StateRouter`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use weir_engine::metrics::InstanceSample;
use weir_engine::{JobControl, JobMetrics, LatencySummary};

use super::{lock, StateRouter, Tasks};
use crate::http::ServedJob;

/// The partition tasks of this process, as the HTTP API shows them: one job whose
/// figures are summed over the tasks (their watermarks: the lowest).
pub(super) struct PartitionTasks {
    pub(super) process: Arc<JobMetrics>,
    pub(super) tasks: Arc<Mutex<Tasks>>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) router: StateRouter,
}

impl PartitionTasks {
    /// The metrics of every task, running or finished here, by task name.
    fn task_metrics(&self) -> Vec<(String, Arc<JobMetrics>)> {
        let tasks = lock(&self.tasks);
        let running = tasks.running.iter().map(|(p, t)| (*p, &t.metrics));
        let finished = tasks.finished.iter().map(|(p, _, m)| (*p, m));
        running
            .chain(finished)
            .map(|(p, m)| (format!("partition-{p}"), m.clone()))
            .collect()
    }
}

impl ServedJob for PartitionTasks {
    fn render_metrics(&self) -> String {
        let all = self.task_metrics();
        let labels: Vec<[(&str, &str); 1]> =
            all.iter().map(|(t, _)| [("task", t.as_str())]).collect();
        let mut sets: Vec<(&[(&str, &str)], &JobMetrics)> = vec![(&[], &*self.process)];
        sets.extend(labels.iter().zip(&all).map(|(l, (_, m))| (&l[..], &**m)));
        JobMetrics::render_all(&sets)
    }

    fn instances(&self) -> Vec<InstanceSample> {
        let mut merged: BTreeMap<(String, usize), InstanceSample> = BTreeMap::new();
        for (_, metrics) in self.task_metrics() {
            for s in metrics.instance_samples() {
                match merged.get_mut(&(s.operator.clone(), s.subtask)) {
                    None => {
                        merged.insert((s.operator.clone(), s.subtask), s);
                    }
                    Some(m) => {
                        let both =
                            |a: Option<i64>, b: Option<i64>, f: fn(i64, i64) -> i64| match (a, b) {
                                (Some(a), Some(b)) => Some(f(a, b)),
                                (a, b) => a.or(b),
                            };
                        let sum = |a, b| a + b;
                        m.events_in += s.events_in;
                        m.events_out += s.events_out;
                        m.late_events += s.late_events;
                        m.watermark_ms = both(m.watermark_ms, s.watermark_ms, i64::min);
                        m.state_entries = both(m.state_entries, s.state_entries, sum);
                        m.state_bytes = both(m.state_bytes, s.state_bytes, sum);
                        m.queue_fill = both(m.queue_fill, s.queue_fill, sum);
                        m.queue_capacity = both(m.queue_capacity, s.queue_capacity, sum);
                    }
                }
            }
        }
        merged.into_values().collect()
    }

    fn latency(&self) -> Option<LatencySummary> {
        // Each task times its own sinks; the process shows no single figure for them all
        // (Prometheus has them per task).
        None
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn control(&self) -> Option<&JobControl> {
        None
    }

    fn partitions(&self) -> Option<StateRouter> {
        Some(self.router.clone())
    }
}

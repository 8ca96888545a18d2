//! What the HTTP server serves: a running job seen through [`ServedJob`], what is known of
//! the run ([`Serving`]), and how the run ended ([`Outcome`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use weir_engine::metrics::InstanceSample;
use weir_engine::{JobControl, JobPlan, LatencySummary, QueryableState};

use super::timeline::Timeline;
use crate::partitioned::StateRouter;

/// A running job as the HTTP server sees it: a whole job in this process, or the
/// partition tasks of a Kafka-partitioned run.
pub(crate) trait ServedJob: Send + Sync + 'static {
    /// The Prometheus text exposition.
    fn render_metrics(&self) -> String;
    /// Every operator instance's current figures (summed over tasks).
    fn instances(&self) -> Vec<InstanceSample>;
    /// End-to-end latency of what the sinks received so far.
    fn latency(&self) -> Option<LatencySummary>;
    /// The same graceful stop as SIGTERM.
    fn stop(&self);
    /// True once a stop was asked for (by a signal or the API).
    fn is_stopping(&self) -> bool;
    /// Savepoints and checkpoint history, for a job with one checkpoint coordinator.
    fn control(&self) -> Option<&JobControl>;
    /// The job's queryable state tables, for a whole job in this process.
    fn state(&self) -> Option<&QueryableState> {
        None
    }
    /// Where state queries are answered, for the partition tasks of a run per Kafka
    /// partition (see [`crate::partitioned::StateRouter`]).
    fn partitions(&self) -> Option<StateRouter> {
        None
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It read all its input, or stopped as asked.
    Finished,
    /// It failed for this reason.
    Failed(String),
}

/// A job's state as `GET /api/v1/job` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum JobState {
    Running,
    Stopping,
    Finished,
    Failed,
}

/// A savepoint asked for through the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub(crate) enum SavepointStatus {
    InProgress,
    Completed { path: PathBuf },
    Failed { reason: String },
}

/// Everything the server serves for one run.
pub(crate) struct Serving {
    pub(crate) job: Arc<dyn ServedJob>,
    /// The job's name.
    pub(crate) name: String,
    /// The command line it was started with.
    pub(crate) args: Vec<String>,
    /// Its graph, if known.
    pub(crate) plan: Option<JobPlan>,
    /// Where its dead letters go, if they go to a file.
    pub(crate) dead_letters: Option<PathBuf>,
    /// The bearer token state-changing and data-reading endpoints need, if any.
    pub(crate) token: Option<String>,
    pub(crate) started_at_ms: u64,
    pub(crate) outcome: Mutex<Option<Outcome>>,
    pub(crate) savepoints: Mutex<BTreeMap<u64, SavepointStatus>>,
    pub(crate) timeline: Mutex<Timeline>,
    /// Requests whose answer depends on the run's end (a stop with a savepoint): the
    /// process waits for them before it exits.
    pub(crate) answers_owed: AtomicUsize,
}

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Serving {
    /// Serves `job`, called `name`, started now with this process's arguments.
    pub(crate) fn new(name: &str, job: Arc<dyn ServedJob>) -> Serving {
        Serving {
            job,
            name: name.to_string(),
            args: std::env::args().collect(),
            plan: None,
            dead_letters: None,
            token: None,
            started_at_ms: unix_ms(SystemTime::now()),
            outcome: Mutex::new(None),
            savepoints: Mutex::new(BTreeMap::new()),
            timeline: Mutex::new(Timeline::default()),
            answers_owed: AtomicUsize::new(0),
        }
    }

    /// Marks an answer the process owes until the guard is dropped.
    pub(crate) fn owe_answer(self: &Arc<Self>) -> OwedAnswer {
        self.answers_owed.fetch_add(1, Ordering::SeqCst);
        OwedAnswer(self.clone())
    }

    /// Waits (at most `limit`) until every owed answer was given, then a moment for it to
    /// reach the client: called when the run ended, before the process exits.
    pub(crate) fn wait_for_owed_answers(&self, limit: Duration) {
        let started = Instant::now();
        let mut owed = false;
        while self.answers_owed.load(Ordering::SeqCst) > 0 && started.elapsed() < limit {
            owed = true;
            std::thread::sleep(Duration::from_millis(10));
        }
        if owed {
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Records how the run ended.
    pub(crate) fn ended(&self, outcome: Outcome) {
        *lock(&self.outcome) = Some(outcome);
    }

    /// The job's state now.
    pub(crate) fn state(&self) -> (JobState, Option<String>) {
        match &*lock(&self.outcome) {
            Some(Outcome::Finished) => (JobState::Finished, None),
            Some(Outcome::Failed(reason)) => (JobState::Failed, Some(reason.clone())),
            None if self.job.is_stopping() => (JobState::Stopping, None),
            None => (JobState::Running, None),
        }
    }
}

/// An answer the process owes a client (see [`Serving::owe_answer`]).
#[derive(Debug)]
pub(crate) struct OwedAnswer(Arc<Serving>);

impl Drop for OwedAnswer {
    fn drop(&mut self) {
        self.0.answers_owed.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A whole job running in this process.
#[derive(Debug)]
pub(crate) struct OneJob {
    pub(crate) metrics: Arc<weir_engine::JobMetrics>,
    pub(crate) control: Arc<JobControl>,
    pub(crate) state: Arc<QueryableState>,
}

impl ServedJob for OneJob {
    fn render_metrics(&self) -> String {
        self.metrics.render()
    }

    fn instances(&self) -> Vec<InstanceSample> {
        self.metrics.instance_samples()
    }

    fn latency(&self) -> Option<LatencySummary> {
        self.metrics.latency_summary()
    }

    fn stop(&self) {
        self.control.stop();
    }

    fn is_stopping(&self) -> bool {
        self.control.is_stopped()
    }

    fn control(&self) -> Option<&JobControl> {
        Some(&self.control)
    }

    fn state(&self) -> Option<&QueryableState> {
        Some(&self.state)
    }
}

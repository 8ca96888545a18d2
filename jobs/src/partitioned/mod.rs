//! Running a job as one task per Kafka partition (`--input kafka://..?tasks=per-partition`),
//! so that several `weir` processes in one consumer group split a topic *with* their state,
//! as Kafka Streams' stream tasks do.
//!
//! ```text
//!  weir process                               shared --state-dir DIR
//!  ┌──────────────────────────────────────┐    ┌───────────────────────────────┐
//!  │ group member (assignment only)       │    │ partition-0/JOB/checkpoints   │
//!  │  assigned 0 ─▶ task 0: the whole job │◀──▶│ partition-1/JOB/checkpoints   │
//!  │  assigned 2 ─▶ task 2: the whole job │    │ ...                           │
//!  └──────────────────────────────────────┘    └───────────────────────────────┘
//! ```
//!
//! Each task is the job built for one partition alone (`partitions=P`), with its own
//! state, checkpoints (`DIR/partition-P/`), watermark and output (a file output `OUT`
//! becomes `OUT/partition-P/`; a Kafka output gets the transactional id `ID.P`). When the
//! group assigns a partition, its task starts and restores the partition's newest
//! checkpoint from `DIR` before it reads; when the group takes it away, the task is
//! cancelled (like a crash: nothing after its last checkpoint is committed) and joined
//! *before* the revocation returns, so the next owner resumes from exactly what it left.
//!
//! # Queryable state across processes
//! Each task's queryable tables are its own (its partition's keys). Any process answers
//! `GET /api/v1/state/{table}/{key}`: it finds the key's partition with the input
//! producers' partitioner, asks that partition's task if it runs here, and otherwise
//! answers 421 with the address of the process that does, read from that process's owner
//! claim `DIR/partition-P/JOB/OWNER` (`owners`: written when a task starts, renewed every
//! second, removed on revocation; stale after 10 s), or 503 while nobody owns it (`routing`).
//!
//! # Invariants
//! - Results equal a one-process run only if every record of a key is in one partition
//!   (records keyed by it: `weir gen --key-field`) and every stateful operator is keyed by
//!   that key: a ranking over all keys (`--top`) is per partition here.
//! - Each partition has its own watermark (Kafka Streams' stream time per task); an event
//!   within its partition's out-of-orderness bound is never late.
//! - With `until=end` a partition is finished once its task ended; a marker
//!   `DIR/partition-P/JOB/FINISHED` says so, and a process ends once every partition of
//!   the topic has one, so a survivor goes on with the partitions of a process that died.
//! - A task that fails (not cancelled) ends the process, as Kafka Streams' default
//!   uncaught-exception handler does: its partitions then go to the other processes.

pub mod owners;
mod routing;
mod served;
mod task_options;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use weir_connectors::kafka::{GroupChange, GroupMember};
use weir_engine::{EngineError, JobControl, JobMetrics, QueryableState, RunSummary};

use crate::http::Outcome;
use crate::options::JobOptions;
use crate::registry::JobSpec;

pub use owners::{claim_path, key_owner, read_claim, Claimed, KeyOwner, OwnerClaim, OwnerError};
use owners::{Claims, RENEW_EVERY};
pub(crate) use routing::{Placement, StateRouter};
use served::PartitionTasks;
pub use task_options::kafka_input;
use task_options::{check_options, task_dir, task_options};

/// How often the process serves the group and looks for finished tasks.
const TICK: Duration = Duration::from_millis(100);

/// A running task: one partition's job.
struct Task {
    control: Arc<JobControl>,
    metrics: Arc<JobMetrics>,
    /// Its queryable tables (see `routing`).
    state: Arc<QueryableState>,
    handle: JoinHandle<anyhow::Result<RunSummary>>,
}

/// The tasks of this process, shared by the group's callback, the main loop and the
/// metrics endpoint.
#[derive(Default)]
struct Tasks {
    running: BTreeMap<i32, Task>,
    /// The tasks that finished here: partition, what it did, its metrics (still served).
    finished: Vec<(i32, RunSummary, Arc<JobMetrics>)>,
    /// The first task failure (other than a cancel); it ends the process.
    failed: Option<anyhow::Error>,
}

/// What one process of a job run per partition did.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionedSummary {
    /// The partitions whose tasks finished in this process.
    pub partitions: Vec<i32>,
    /// Their runs added up (`elapsed` is the longest, `watermark` the smallest).
    pub total: Option<RunSummary>,
}

/// How the process shows itself.
#[derive(Debug, Clone)]
pub struct Serving {
    /// `--metrics-addr` as given (`off`: none), or `None` for the default.
    pub metrics_addr: Option<String>,
    /// `--api-token`, if given.
    pub api_token: Option<String>,
    /// No progress lines.
    pub quiet: bool,
    /// `--advertised-api-addr`: the `HOST:PORT` other processes send callers to for the
    /// keys of this process's partitions; `None`: the address the API bound.
    pub advertised_api_addr: Option<String>,
}

/// Runs `spec` as one task per partition the group assigns this process, until every
/// partition is finished (`until=end`), for ever, or until `stop` is set: then every task
/// stops gracefully ([`JobControl::stop`]: a final checkpoint, no `FINISHED` marker, so the
/// partition goes on from there in the next run) and the process leaves the group.
pub fn run(
    spec: &JobSpec,
    options: &JobOptions,
    serving: &Serving,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<PartitionedSummary> {
    let input = kafka_input(options).ok_or_else(|| anyhow!("no Kafka input"))?;
    let state_dir = check_options(options, &input)?;
    let process_metrics = Arc::new(JobMetrics::new(&spec.name));
    let tasks: Arc<Mutex<Tasks>> = Arc::default();
    let claims = Arc::new(Claims::new(&state_dir, &spec.name));
    let partition_count = Arc::new(AtomicI32::new(0));
    let starter = TaskStarter {
        spec: spec.clone(),
        options: options.clone(),
        state_dir: state_dir.clone(),
        until_end: input.until_end,
        quiet: serving.quiet,
        stop: stop.clone(),
        claims: claims.clone(),
    };
    // The job built once, not run: the graph every task runs and its queryable tables
    // (building does no I/O).
    let template = (spec.build)(options).ok();
    let served = PartitionTasks {
        process: process_metrics.clone(),
        tasks: tasks.clone(),
        stop: stop.clone(),
        router: StateRouter {
            tasks: tasks.clone(),
            claims: claims.clone(),
            partitions: partition_count.clone(),
            catalog: template.as_ref().map(|job| job.queryable_state()),
            state_dir,
            job: spec.name.clone(),
            until_end: input.until_end,
        },
    };
    let http = Arc::new(crate::http::Serving {
        plan: template.map(|job| job.plan(options.parallelism)),
        token: serving.api_token.clone(),
        ..crate::http::Serving::new(&spec.name, Arc::new(served))
    });
    let server = crate::cli::serve_http(
        serving.metrics_addr.as_deref(),
        serving.api_token.as_deref(),
        &http,
    )?;
    claims.set_api(advertised_api(
        serving.advertised_api_addr.as_deref(),
        server.as_ref().map(|s| s.addr()),
    ));
    let on_change = {
        let (tasks, starter) = (tasks.clone(), starter.clone());
        move |change: GroupChange| match change {
            GroupChange::Assigned(partitions) => {
                for partition in partitions {
                    if starter.is_finished(partition) || starter.stopping() {
                        continue;
                    }
                    match starter.start(partition) {
                        Ok(task) => {
                            lock(&tasks).running.insert(partition, task);
                            starter.claim(partition);
                        }
                        Err(e) => {
                            lock(&tasks).failed.get_or_insert(e);
                        }
                    }
                }
            }
            GroupChange::Revoked(partitions) => {
                let stopping: Vec<(i32, Task)> = {
                    let mut tasks = lock(&tasks);
                    partitions
                        .iter()
                        .filter_map(|p| tasks.running.remove(p).map(|t| (*p, t)))
                        .collect()
                };
                // All are told first, so they wind down together; the claims go first, so
                // other processes stop sending callers here.
                for (partition, task) in &stopping {
                    starter.release(*partition);
                    task.control.cancel();
                }
                for (partition, task) in stopping {
                    starter.settle(&tasks, partition, task);
                }
            }
        }
    };
    let member = GroupMember::join(&input, process_metrics.kafka(), on_change)?;
    // A bounded run gives its brokers `connect_timeout` to answer, as a bounded source
    // does; a following one waits for them for ever.
    let reached = match input.until_end {
        true => member.reach_brokers(|| starter.stopping()),
        false => Ok(true),
    };
    let outcome = match reached {
        Ok(true) => serve_until_done(&member, &tasks, &starter, &partition_count),
        Ok(false) => Ok(()),
        Err(e) => Err(e.into()),
    };
    // Leaving revokes what is still running (after a failure) through the callback, which
    // takes the tasks' lock: so the member goes before the lock is taken here.
    member.leave();
    drop(member);
    let failed = match outcome {
        Ok(()) => lock(&tasks).failed.take(),
        Err(e) => Some(e),
    };
    http.ended(match &failed {
        None => Outcome::Finished,
        Some(e) => Outcome::Failed(format!("{e:#}")),
    });
    match failed {
        Some(e) => Err(e),
        None => Ok(summarize(&lock(&tasks).finished)),
    }
}

/// How long a partition's task waits for the partition's state directory to be released
/// by an earlier owner on this machine before it fails.
const STATE_DIR_WAIT: Duration = Duration::from_secs(60);

/// How long the topic may show no partitions before the process gives up.
const NO_PARTITIONS_FOR: Duration = Duration::from_secs(30);

/// How often the topic's partition count is asked for while it is unknown, and again once
/// known (for the routing of state queries; partitions added to a topic move keys).
const COUNT_UNKNOWN_EVERY: Duration = Duration::from_secs(1);
const COUNT_KNOWN_EVERY: Duration = Duration::from_secs(30);

/// Serves the group, renews this process's owner claims, keeps `partition_count` (the
/// topic's) current and reaps finished tasks until every partition of the topic is
/// finished (`until=end`), a task failed, or every task stopped after a stop request.
fn serve_until_done(
    member: &GroupMember,
    tasks: &Arc<Mutex<Tasks>>,
    starter: &TaskStarter,
    partition_count: &AtomicI32,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut stop_sent = false;
    let mut renewed = Instant::now();
    let mut counted: Option<Instant> = None;
    loop {
        member.poll(TICK);
        if starter.stopping() && !stop_sent {
            stop_sent = true;
            for task in lock(tasks).running.values() {
                task.control.stop();
            }
        }
        let ended: Vec<(i32, Task)> = {
            let mut tasks = lock(tasks);
            let done: Vec<i32> = tasks
                .running
                .iter()
                .filter(|(_, t)| t.handle.is_finished())
                .map(|(&p, _)| p)
                .collect();
            done.into_iter()
                .filter_map(|p| tasks.running.remove(&p).map(|t| (p, t)))
                .collect()
        };
        for (partition, task) in ended {
            starter.settle(tasks, partition, task);
        }
        if lock(tasks).failed.is_some() || (stop_sent && lock(tasks).running.is_empty()) {
            return Ok(());
        }
        if renewed.elapsed() >= RENEW_EVERY {
            renewed = Instant::now();
            let running: Vec<i32> = lock(tasks).running.keys().copied().collect();
            for partition in running {
                starter.renew(partition);
            }
        }
        let mut count = partition_count.load(Ordering::SeqCst);
        // Asked (it waits for the brokers) once a broker has shown itself by assigning
        // partitions, or when a bounded run needs the count to know it is done.
        let wanted = count > 0 || starter.until_end || !lock(tasks).running.is_empty();
        let every = if count > 0 {
            COUNT_KNOWN_EVERY
        } else {
            COUNT_UNKNOWN_EVERY
        };
        if wanted && counted.is_none_or(|at| at.elapsed() >= every) {
            counted = Some(Instant::now());
            // A metadata error is passing as often as not: asked again next time.
            if let Some(n) = member
                .partition_count()
                .ok()
                .and_then(|n| i32::try_from(n).ok())
                .filter(|&n| n > 0)
            {
                count = n;
                partition_count.store(n, Ordering::SeqCst);
            }
        }
        if !starter.until_end || !lock(tasks).running.is_empty() {
            continue;
        }
        if count == 0 && started.elapsed() > NO_PARTITIONS_FOR {
            bail!(
                "the input topic showed no partitions for {NO_PARTITIONS_FOR:?} (does it \
                 exist? is the broker up?): create it before running the job"
            );
        }
        if count > 0 && (0..count).all(|partition| starter.is_finished(partition)) {
            return Ok(());
        }
    }
}

/// Builds and starts the task of one partition.
#[derive(Clone)]
struct TaskStarter {
    spec: JobSpec,
    options: JobOptions,
    state_dir: PathBuf,
    until_end: bool,
    quiet: bool,
    /// Set when the process is asked to stop: no more tasks start.
    stop: Arc<AtomicBool>,
    /// This process's owner claims on its partitions (see `owners`).
    claims: Arc<Claims>,
}

impl TaskStarter {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// True if partition `partition` was read to its end (`until=end`), here or elsewhere.
    fn is_finished(&self, partition: i32) -> bool {
        self.until_end && self.finished_marker(partition).exists()
    }

    fn finished_marker(&self, partition: i32) -> PathBuf {
        finished_marker(&self.state_dir, &self.spec.name, partition)
    }

    /// Claims `partition` (whose task just started here) for this process's API. A claim
    /// that cannot be written is said and costs only the routing of queries.
    fn claim(&self, partition: i32) {
        if let Err(e) = self.claims.claim(partition) {
            eprintln!("weir: partition {partition}: {e}; state queries for its keys on other processes answer 503");
        }
    }

    fn renew(&self, partition: i32) {
        if let Err(e) = self.claims.renew(partition) {
            eprintln!("weir: partition {partition}: {e}");
        }
    }

    fn release(&self, partition: i32) {
        if let Err(e) = self.claims.release(partition) {
            eprintln!("weir: partition {partition}: {e}");
        }
    }

    /// Starts partition `partition`'s task; it restores the partition's newest checkpoint
    /// before reading.
    fn start(&self, partition: i32) -> anyhow::Result<Task> {
        let options = task_options(&self.options, &self.state_dir, partition)?;
        let mut run_options = options.run_options(&self.spec.name)?;
        run_options.task = Some(format!("partition {partition}"));
        // The task this partition's last owner in this process ran may still be winding
        // down (a revocation cancels it; a zombie expelled from the group notices late).
        run_options.state_dir_wait = STATE_DIR_WAIT;
        if !self.quiet {
            run_options.progress_interval = Some(Duration::from_secs(1));
        }
        let build = self.spec.build;
        // A job is built on the thread that runs it (it is not `Send`); its handles come
        // back once it is built.
        let (built_tx, built_rx) = std::sync::mpsc::sync_channel(1);
        let handle = std::thread::Builder::new()
            .name(format!("weir-partition-{partition}"))
            .spawn(move || {
                let job = match build(&options) {
                    Ok(job) => job,
                    Err(e) => {
                        let _ = built_tx.send(None);
                        return Err(e);
                    }
                };
                let _ = built_tx.send(Some((job.control(), job.metrics(), job.queryable_state())));
                Ok(job.run(&run_options)?)
            })
            .context("cannot start a partition task's thread")?;
        match built_rx.recv().ok().flatten() {
            Some((control, metrics, state)) => Ok(Task {
                control,
                metrics,
                state,
                handle,
            }),
            None => Err(join(handle)
                .err()
                .unwrap_or_else(|| anyhow!("the task of partition {partition} did not start"))
                .context(format!("cannot build the task of partition {partition}"))),
        }
    }

    /// Waits for a task that ended or was cancelled and records how it ended.
    fn settle(&self, tasks: &Mutex<Tasks>, partition: i32, task: Task) {
        self.release(partition);
        match join(task.handle) {
            Ok(summary) if summary.stopped => {
                eprintln!("weir: partition {partition} stopped (final checkpoint taken)");
            }
            Ok(summary) => {
                if self.until_end {
                    let marker = self.finished_marker(partition);
                    if let Err(e) = std::fs::write(&marker, b"") {
                        lock(tasks).failed.get_or_insert(anyhow!(
                            "cannot write {}: {e} (check --state-dir)",
                            marker.display()
                        ));
                        return;
                    }
                }
                eprintln!("weir: partition {partition} finished");
                lock(tasks)
                    .finished
                    .push((partition, summary, task.metrics));
            }
            Err(e) if is_cancel(&e) => eprintln!("weir: partition {partition} stopped here"),
            Err(e) => {
                lock(tasks)
                    .failed
                    .get_or_insert(e.context(format!("the task of partition {partition} failed")));
            }
        }
    }
}

fn join(handle: JoinHandle<anyhow::Result<RunSummary>>) -> anyhow::Result<RunSummary> {
    handle
        .join()
        .unwrap_or_else(|_| Err(anyhow!("a partition task panicked")))
}

fn is_cancel(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<EngineError>(),
        Some(EngineError::Cancelled { .. })
    )
}

fn lock(tasks: &Mutex<Tasks>) -> MutexGuard<'_, Tasks> {
    tasks.lock().unwrap_or_else(|p| p.into_inner())
}

/// `DIR/partition-P/JOB/FINISHED`: partition `P`'s task read to the end (`until=end`);
/// beside the task's checkpoints, so it belongs to this job alone.
fn finished_marker(state_dir: &Path, job: &str, partition: i32) -> PathBuf {
    task_dir(state_dir, partition).join(job).join("FINISHED")
}

/// The API address owner claims name: `--advertised-api-addr` if given, else the address
/// the API bound (`None`: it serves none). An address any process could bind (0.0.0.0)
/// reaches no one from elsewhere, which is said.
fn advertised_api(advertised: Option<&str>, bound: Option<std::net::SocketAddr>) -> Option<String> {
    if let Some(addr) = advertised {
        return Some(match addr.contains("://") {
            true => addr.trim_end_matches('/').to_string(),
            false => format!("http://{addr}"),
        });
    }
    let bound = bound?;
    if bound.ip().is_unspecified() {
        eprintln!(
            "weir: the API listens on {bound}, an address other processes cannot send callers \
             to: pass --advertised-api-addr HOST:PORT so that state queries for this process's \
             partitions are redirected to it"
        );
    }
    Some(format!("http://{bound}"))
}

/// The finished tasks' runs added up.
fn summarize(finished: &[(i32, RunSummary, Arc<JobMetrics>)]) -> PartitionedSummary {
    let mut partitions: Vec<i32> = finished.iter().map(|(p, _, _)| *p).collect();
    partitions.sort_unstable();
    let total = finished
        .iter()
        .map(|(_, s, _)| s.clone())
        .reduce(|a, b| RunSummary {
            events_read: a.events_read + b.events_read,
            dead_letters: a.dead_letters + b.dead_letters,
            late_events: a.late_events + b.late_events,
            results_written: a.results_written + b.results_written,
            elapsed: a.elapsed.max(b.elapsed),
            watermark: a.watermark.into_iter().chain(b.watermark).min(),
            latency: None,
            stopped: a.stopped || b.stopped,
        });
    PartitionedSummary { partitions, total }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_name_the_advertised_address_else_the_bound_one() {
        let bound: std::net::SocketAddr = "127.0.0.1:4242".parse().expect("an address");
        assert_eq!(
            advertised_api(None, Some(bound)).as_deref(),
            Some("http://127.0.0.1:4242")
        );
        assert_eq!(
            advertised_api(Some("node-2.example:9898"), Some(bound)).as_deref(),
            Some("http://node-2.example:9898")
        );
        assert_eq!(
            advertised_api(Some("https://node-2.example/"), None).as_deref(),
            Some("https://node-2.example")
        );
        assert_eq!(advertised_api(None, None), None, "--metrics-addr off");
    }
}

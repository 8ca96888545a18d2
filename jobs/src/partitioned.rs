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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use weir_connectors::kafka::{encode_param_value, GroupChange, GroupMember};
use weir_connectors::KafkaSpec;
use weir_engine::metrics::InstanceSample;
use weir_engine::{EngineError, JobControl, JobMetrics, LatencySummary, RunSummary};

use crate::http::{Outcome, ServedJob};
use crate::options::{usage, JobOptions};
use crate::registry::JobSpec;

/// How often the process serves the group and looks for finished tasks.
const TICK: Duration = Duration::from_millis(100);

/// A running task: one partition's job.
struct Task {
    control: Arc<JobControl>,
    metrics: Arc<JobMetrics>,
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
    let starter = TaskStarter {
        spec: spec.clone(),
        options: options.clone(),
        state_dir,
        until_end: input.until_end,
        quiet: serving.quiet,
        stop: stop.clone(),
    };
    let served = PartitionTasks {
        process: process_metrics.clone(),
        tasks: tasks.clone(),
        stop: stop.clone(),
    };
    let http = Arc::new(crate::http::Serving {
        // The graph every task runs (building does no I/O).
        plan: (spec.build)(options)
            .ok()
            .map(|job| job.plan(options.parallelism)),
        token: serving.api_token.clone(),
        ..crate::http::Serving::new(&spec.name, Arc::new(served))
    });
    let _server = crate::cli::serve_http(
        serving.metrics_addr.as_deref(),
        serving.api_token.as_deref(),
        &http,
    )?;
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
                // All are told first, so they wind down together.
                for (_, task) in &stopping {
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
        Ok(true) => serve_until_done(&member, &tasks, &starter),
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

/// The partition tasks of this process, as the HTTP API shows them: one job whose
/// figures are summed over the tasks (their watermarks: the lowest).
struct PartitionTasks {
    process: Arc<JobMetrics>,
    tasks: Arc<Mutex<Tasks>>,
    stop: Arc<AtomicBool>,
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
}

/// How long a partition's task waits for the partition's state directory to be released
/// by an earlier owner on this machine before it fails.
const STATE_DIR_WAIT: Duration = Duration::from_secs(60);

/// How long the topic may show no partitions before the process gives up.
const NO_PARTITIONS_FOR: Duration = Duration::from_secs(30);

/// Serves the group and reaps finished tasks until every partition of the topic is
/// finished (`until=end`), a task failed, or every task stopped after a stop request.
fn serve_until_done(
    member: &GroupMember,
    tasks: &Arc<Mutex<Tasks>>,
    starter: &TaskStarter,
) -> anyhow::Result<()> {
    let mut partition_count = 0;
    let started = Instant::now();
    let mut stop_sent = false;
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
        if !starter.until_end || !lock(tasks).running.is_empty() {
            continue;
        }
        if partition_count == 0 {
            // A metadata error is passing as often as not: asked again next time.
            partition_count = member.partition_count().unwrap_or(0);
            if partition_count == 0 && started.elapsed() > NO_PARTITIONS_FOR {
                bail!(
                    "the input topic showed no partitions for {NO_PARTITIONS_FOR:?} (does it \
                     exist? is the broker up?): create it before running the job"
                );
            }
        }
        let count = i32::try_from(partition_count).unwrap_or(i32::MAX);
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
}

impl TaskStarter {
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// True if partition `partition` was read to its end (`until=end`), here or elsewhere.
    fn is_finished(&self, partition: i32) -> bool {
        self.until_end && self.finished_marker(partition).exists()
    }

    /// `DIR/partition-P/JOB/FINISHED`: partition `P`'s task read to the end (`until=end`);
    /// beside the task's checkpoints, so it belongs to this job alone.
    fn finished_marker(&self, partition: i32) -> PathBuf {
        task_dir(&self.state_dir, partition)
            .join(&self.spec.name)
            .join("FINISHED")
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
                let _ = built_tx.send(Some((job.control(), job.metrics())));
                Ok(job.run(&run_options)?)
            })
            .context("cannot start a partition task's thread")?;
        match built_rx.recv().ok().flatten() {
            Some((control, metrics)) => Ok(Task {
                control,
                metrics,
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

/// The Kafka input if it asks for one task per partition.
pub fn kafka_input(options: &JobOptions) -> Option<KafkaSpec> {
    let uri = options.input.as_deref()?.to_str()?;
    KafkaSpec::parse(uri)?
        .ok()
        .filter(|spec| spec.per_partition_tasks)
}

/// The state directory; refuses what a job run per partition cannot do.
fn check_options(options: &JobOptions, input: &KafkaSpec) -> anyhow::Result<PathBuf> {
    let (Some(dir), Some(_)) = (&options.state_dir, options.checkpoint_interval) else {
        usage!(
            "tasks=per-partition keeps each partition's state in checkpoints under a directory \
             every process of the group can read: pass --state-dir DIR and \
             --checkpoint-interval D"
        );
    };
    if options.from_savepoint.is_some() || options.replay_from.is_some() {
        usage!(
            "tasks=per-partition resumes each partition from its own newest checkpoint: \
             --from-savepoint and --replay-from are not supported with it"
        );
    }
    if options
        .output
        .as_deref()
        .is_some_and(|o| o.starts_with("tcp://") && o.contains("mode=listen"))
    {
        usage!(
            "tasks=per-partition runs a sink per partition, and they cannot all listen on one \
             address: use a file, Kafka or tcp:// client output"
        );
    }
    // A revoked partition's task stops before the member gives the partition up only with
    // the classic, eager protocol (see `GroupMember`).
    let eager = input.properties.iter().all(|(k, v)| {
        !(k == "partition.assignment.strategy" && v.contains("cooperative")
            || k == "group.protocol" && v != "classic")
    });
    if !eager {
        usage!(
            "tasks=per-partition needs the classic group protocol with an eager assignor \
             (range or roundrobin): drop group.protocol / the cooperative \
             partition.assignment.strategy from --input"
        );
    }
    Ok(dir.clone())
}

/// `DIR/partition-P`: partition `P`'s state, checkpoints and (for non-file outputs) dead
/// letters.
fn task_dir(state_dir: &Path, partition: i32) -> PathBuf {
    state_dir.join(format!("partition-{partition}"))
}

/// The options of partition `partition`'s task: the input reads that partition alone,
/// state and checkpoints live in `DIR/partition-P`, and outputs are the task's own.
fn task_options(
    options: &JobOptions,
    state_dir: &Path,
    partition: i32,
) -> anyhow::Result<JobOptions> {
    let own = format!("partition-{partition}");
    let task_dir = task_dir(state_dir, partition);
    std::fs::create_dir_all(&task_dir)
        .with_context(|| format!("cannot create {} (check --state-dir)", task_dir.display()))?;
    let input = options
        .input
        .as_deref()
        .and_then(Path::to_str)
        .unwrap_or_default();
    let input = with_param(
        &with_param(input, "tasks", None),
        "partitions",
        Some(&partition.to_string()),
    );
    // Dead letters go beside a file output (as without tasks), else in the task's directory.
    let elsewhere = Some(task_dir.join("dead-letters.jsonl"));
    let (output, dead_letter_file) = match options.output.as_deref() {
        None => (None, elsewhere),
        Some(uri) if uri.ends_with(':') || uri == "-" || uri.starts_with("tcp://") => {
            (Some(uri.to_string()), elsewhere)
        }
        Some(uri) => match KafkaSpec::parse(uri) {
            Some(spec) => {
                let spec = spec.map_err(|e| anyhow!("--output {e}"))?;
                let id = format!("{}.{partition}", spec.transactional_id());
                (
                    Some(with_param(uri, "transactional.id", Some(&id))),
                    elsewhere,
                )
            }
            None => {
                let dir = Path::new(uri.strip_prefix("file://").unwrap_or(uri)).join(&own);
                (Some(dir.to_string_lossy().into_owned()), None)
            }
        },
    };
    Ok(JobOptions {
        input: Some(PathBuf::from(input)),
        output,
        state_dir: Some(task_dir),
        late_output: options.late_output.as_ref().map(|p| p.join(&own)),
        dead_letter_file,
        ..options.clone()
    })
}

/// `uri` with query parameter `key` set to `value` (replacing it), or removed (`None`).
fn with_param(uri: &str, key: &str, value: Option<&str>) -> String {
    let (base, query) = uri.split_once('?').unwrap_or((uri, ""));
    let mut pairs: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && p.split('=').next() != Some(key))
        .map(str::to_string)
        .collect();
    if let Some(value) = value {
        // The URI's parser percent-decodes values (a transactional id made of a group's
        // name may hold any character).
        pairs.push(format!("{key}={}", encode_param_value(value)));
    }
    if pairs.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", pairs.join("&"))
    }
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
    fn a_parameter_is_replaced_added_or_removed() {
        let uri = "kafka://b:1/t?group=g&tasks=per-partition&until=end";
        assert_eq!(
            with_param(&with_param(uri, "tasks", None), "partitions", Some("3")),
            "kafka://b:1/t?group=g&until=end&partitions=3"
        );
        assert_eq!(
            with_param("kafka://b:1/t?tasks=x", "tasks", None),
            "kafka://b:1/t"
        );
        assert_eq!(
            with_param(
                "kafka://b:1/o?transactional.id=a",
                "transactional.id",
                Some("a.2")
            ),
            "kafka://b:1/o?transactional.id=a.2"
        );
    }

    #[test]
    fn refuses_what_partition_tasks_cannot_do_and_says_why() {
        let input = "kafka://b:1/t?tasks=per-partition";
        let state = ["--state-dir", "st", "--checkpoint-interval", "1s"];
        for (args, says) in [
            (vec!["--input", input], "pass --state-dir DIR"),
            (
                [
                    &["--input", input][..],
                    &state,
                    &["--replay-from", "beginning"],
                ]
                .concat(),
                "--replay-from are not supported",
            ),
            (
                [
                    &["--input", input][..],
                    &state,
                    &["--output", "tcp://127.0.0.1:1?mode=listen"],
                ]
                .concat(),
                "cannot all listen",
            ),
            (
                [
                    &[
                        "--input",
                        &format!("{input}&partition.assignment.strategy=cooperative-sticky"),
                    ][..],
                    &state,
                ]
                .concat(),
                "eager assignor",
            ),
        ] {
            let options = JobOptions::from_args(&args).expect("parses");
            let spec = kafka_input(&options).expect("a task input");
            let err = check_options(&options, &spec).map(|_| ()).unwrap_err();
            assert!(err.to_string().contains(says), "{args:?}: {err}");
        }
    }

    #[test]
    fn each_task_has_its_own_input_state_and_outputs() {
        let options = JobOptions::from_args([
            "--input",
            "kafka://b:1/events?group=g&tasks=per-partition",
            "--output",
            "out",
            "--late-output",
            "late",
            "--state-dir",
            "/nonexistent-weir-test/st",
            "--checkpoint-interval",
            "1s",
        ])
        .expect("valid options");
        let dir = std::env::temp_dir().join(format!("weir-task-options-{}", std::process::id()));
        let task = task_options(&options, &dir, 2).expect("task options");
        assert_eq!(
            task.input.as_deref(),
            Some(Path::new("kafka://b:1/events?group=g&partitions=2"))
        );
        assert_eq!(task.output.as_deref(), Some("out/partition-2"));
        assert_eq!(
            task.late_output.as_deref(),
            Some(Path::new("late/partition-2"))
        );
        assert_eq!(task.state_dir, Some(dir.join("partition-2")));
        assert_eq!(
            task.dead_letter_path("j"),
            PathBuf::from("out/partition-2.dead.jsonl")
        );

        let to_kafka = JobOptions {
            output: Some("kafka://b:1/results".into()),
            ..options
        };
        let task = task_options(&to_kafka, &dir, 3).expect("task options");
        assert_eq!(
            task.output.as_deref(),
            Some("kafka://b:1/results?transactional.id=weir.weir.results.3")
        );
        assert_eq!(
            task.dead_letter_path("j"),
            dir.join("partition-3").join("dead-letters.jsonl")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Running a built job: threads for tasks and workers, the checkpoint coordinator,
//! progress lines, and reporting the first real cause of a failure.

use std::any::Any;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use rustc_hash::FxHashMap;

use super::build::{Build, Progress, Task};
use super::state_dir::{lock_state_dirs, operator_records};
use super::worker;
use super::worker::BacklogBuilder;
use super::{RunOptions, RunSummary};
use crate::checkpoint::coordinator::{Checkpointing, Reporting, RunClaims};
use crate::checkpoint::JobControl;
use crate::error::{EngineError, Result};
use crate::job::Graph;
use crate::keys::MAX_KEY_GROUPS;
use crate::metrics::{JobMetrics, MetricFamily};
use crate::query::QueryableState;
use crate::state::{shared_block_cache, StateConfig};
use crate::time::{format_timestamp, MIN_WATERMARK};

/// Longest a sink's written results wait for [`Sink::flush`] while its job keeps busy.
pub(super) const SINK_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// Builds the tasks of `graph` and runs them to completion.
pub(crate) fn run(
    job: &str,
    graph: &Graph,
    metrics: &Arc<JobMetrics>,
    control: &JobControl,
    queries: &Arc<QueryableState>,
    options: &RunOptions,
) -> Result<RunSummary> {
    if options.parallelism == 0 || options.parallelism > usize::from(MAX_KEY_GROUPS) {
        return Err(EngineError::InvalidJob {
            job: job.to_string(),
            reason: format!(
                "parallelism {} is out of range: use 1 to {MAX_KEY_GROUPS}",
                options.parallelism
            ),
        });
    }
    let invalid = |reason: String| EngineError::InvalidJob {
        job: job.to_string(),
        reason,
    };
    let uids = graph.uids();
    // Locked before anything in the state directory is read or replaced; held (in
    // `_locks`) until the run ends.
    let (_locks, fence) = lock_state_dirs(job, options, control)?;
    let rocksdb = match &options.state {
        StateConfig::Memory => None,
        StateConfig::RocksDb {
            dir, statistics, ..
        } => {
            // Only weir's own subdirectory is replaced, never what else is in `dir`.
            let root = dir.join(job).join("rocksdb");
            if root.exists() {
                std::fs::remove_dir_all(&root).map_err(|e| {
                    invalid(format!(
                        "cannot clear the state directory {}: {e} (check --state-dir)",
                        root.display()
                    ))
                })?;
            }
            let cache = match statistics {
                true => shared_block_cache().with_statistics(),
                false => shared_block_cache(),
            };
            Some((root, cache))
        }
    };
    let checkpointing = match &options.checkpoints {
        None => None,
        Some(config) => {
            let c = Checkpointing::new(
                config.clone(),
                job,
                options.parallelism,
                RunClaims {
                    fence,
                    operators: operator_records(graph, &uids),
                    allow_non_restored_state: options.allow_non_restored_state,
                },
                Reporting {
                    metrics: metrics.checkpoints(),
                    history: control.history(),
                    verbose: options.progress_interval.is_some(),
                },
                options.task.as_deref(),
            )
            .map_err(|source| EngineError::Restore {
                job: job.to_string(),
                source,
            })?;
            if let (Some(m), Some(dir)) = (c.restored(), c.restored_dir()) {
                eprintln!(
                    "weir: resuming job `{job}` from checkpoint {} ({}; taken at parallelism {}, now {})",
                    m.id,
                    dir.display(),
                    m.parallelism,
                    options.parallelism
                );
            }
            Some(c)
        }
    };
    control.attach(checkpointing.clone());
    let cancelled = Arc::new(AtomicBool::new(false));
    let stopping = Arc::new(AtomicBool::new(false));
    control.attach_flags(cancelled.clone(), stopping.clone());
    let mut build = Build {
        cancelled: cancelled.clone(),
        stopping,
        graph,
        options,
        metrics,
        queries: queries.clone(),
        channels: FxHashMap::default(),
        unions: FxHashMap::default(),
        next_producer: FxHashMap::default(),
        doorbells: FxHashMap::default(),
        tasks: Vec::new(),
        progress: Progress::default(),
        rocksdb,
        checkpointing: checkpointing.clone(),
        workers: (0..options.parallelism).map(|_| Vec::new()).collect(),
        backlog: BacklogBuilder::default(),
        uids,
    };
    for id in 0..graph.nodes.len() {
        let imp = graph.nodes[id].imp.clone();
        imp.start(&mut build, id)?;
    }
    // Only the tasks and the progress handles live on. Dropping the rest now matters: the
    // build holds the original end of every channel, and while it lives no receiver can see
    // its producers disappear, so a failed task would leave its neighbours waiting forever.
    let Build {
        mut tasks,
        progress,
        channels,
        unions,
        workers,
        backlog,
        ..
    } = build;
    drop((channels, unions));
    backlog.seal();
    for (w, parts) in workers.into_iter().enumerate() {
        if parts.is_empty() {
            continue;
        }
        let name = format!("worker-{w}");
        let cancel = cancelled.clone();
        tasks.push(Task {
            name: name.clone(),
            run: Box::new(move || worker::run(&name, parts, &cancel)),
        });
    }
    if let Some(c) = checkpointing {
        let cancel = cancelled.clone();
        tasks.push(Task {
            name: "checkpoint-coordinator".into(),
            run: Box::new(move || {
                c.coordinate(&cancel)
                    .map_err(|reason| EngineError::Checkpoint { reason })
            }),
        });
    }
    let started = Instant::now();
    // Dropping `done` ends the reporter at once (a sleeping reporter would add its tick to
    // every run's wall time).
    let (done, ended) = crossbeam_channel::bounded::<()>(0);
    let progress = Arc::new(progress);
    let reporter = options.progress_interval.map(|every| {
        let progress = progress.clone();
        let job = match &options.task {
            Some(task) => format!("{job} {task}"),
            None => job.to_string(),
        };
        std::thread::spawn(move || report_progress(&job, &progress, &ended, every))
    });

    let mut handles = Vec::with_capacity(tasks.len());
    let mut spawn_error = None;
    for task in tasks {
        if spawn_error.is_some() {
            // Dropping the task drops its channel ends, so started tasks wind down.
            continue;
        }
        let name = task.name.clone();
        let cancel = cancelled.clone();
        let run = task.run;
        let spawned = std::thread::Builder::new()
            .name(format!("weir-{name}"))
            .spawn(move || {
                let _on_panic = CancelOnPanic(cancel.clone());
                let result = run();
                if result.is_err() {
                    cancel.store(true, Ordering::Relaxed);
                }
                result
            });
        match spawned {
            Ok(handle) => handles.push((name, handle)),
            Err(source) => {
                cancelled.store(true, Ordering::Relaxed);
                spawn_error = Some(EngineError::Io {
                    path: format!("<thread {name}>").into(),
                    source,
                });
            }
        }
    }
    let mut first_error: Option<EngineError> = None;
    for (name, handle) in handles {
        let result = handle.join().unwrap_or_else(|payload| {
            Err(EngineError::Panicked {
                name,
                message: panic_message(payload.as_ref()),
            })
        });
        if let Err(e) = result {
            let replace = match &first_error {
                None => true,
                Some(prev) => prev.is_secondary() && !e.is_secondary(),
            };
            if replace {
                first_error = Some(e);
            }
        }
    }
    drop(done);
    if let Some(handle) = reporter {
        let _ = handle.join();
    }
    if let Some(e) = spawn_error {
        return Err(e);
    }
    if control.is_cancelled() {
        return Err(EngineError::Cancelled {
            job: job.to_string(),
        });
    }
    let stopped = control.is_stopped();
    if let Some(e) = first_error {
        return Err(e);
    }
    let watermark = progress
        .watermarks
        .iter()
        .map(|g| g.get())
        .filter(|&w| w != MIN_WATERMARK)
        .min();
    Ok(RunSummary {
        events_read: progress.sources.iter().map(|c| c.get()).sum(),
        dead_letters: metrics.total(MetricFamily::DeadLetters, None),
        late_events: metrics.total(MetricFamily::LateEvents, None),
        results_written: progress.sinks.iter().map(|c| c.get()).sum(),
        elapsed: started.elapsed(),
        watermark,
        latency: metrics.latency_summary(),
        stopped,
    })
}

/// The message of a panic, if it was a string.
pub(super) fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Sets the cancel flag if the task's thread unwinds from a panic.
pub(super) struct CancelOnPanic(Arc<AtomicBool>);

impl Drop for CancelOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

pub(super) fn report_progress(
    job: &str,
    progress: &Progress,
    ended: &Receiver<()>,
    every: Duration,
) {
    let mut last = (Instant::now(), 0u64);
    let tick = Duration::from_millis(50).min(every);
    while let Err(crossbeam_channel::RecvTimeoutError::Timeout) = ended.recv_timeout(tick) {
        let now = Instant::now();
        if now.duration_since(last.0) < every {
            continue;
        }
        let events: u64 = progress.sources.iter().map(|c| c.get()).sum();
        let rate = (events - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        let watermark = progress.watermarks.iter().map(|g| g.get()).min();
        let wm = match watermark {
            Some(w) if w != MIN_WATERMARK => format!("{w} ({})", format_timestamp(w)),
            _ => "none yet".to_string(),
        };
        eprintln!("weir: {job}: {events} events, {rate:.0} events/s, watermark {wm}");
        last = (now, events);
    }
}

//! The `weir bench` harness: runs a job with results discarded (unless `--output` says
//! otherwise) and reports throughput.
//!
//! `events_per_sec_per_core` is events divided by the CPU time of the whole process (all
//! threads, user + system), so it stays honest when a job keeps more or fewer than one core
//! busy. The last line is machine-readable:
//! `RESULT job=.. events=.. parallelism=.. seconds=.. events_per_sec=.. events_per_sec_per_core=.. cpu_seconds=.. peak_rss_mb=..`

use std::time::{Duration, Instant};

use crate::options::JobOptions;
use crate::registry::JobSpec;

/// What one benchmark run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchResult {
    /// The job.
    pub job: String,
    /// The query (`--query`), for jobs that have several (nexmark).
    pub query: Option<String>,
    /// Events read by the sources.
    pub events: u64,
    /// Workers per keyed operator.
    pub parallelism: usize,
    /// `memory` or `rocksdb`.
    pub state: String,
    /// Wall-clock seconds of the run.
    pub seconds: f64,
    /// CPU seconds of the process during the run.
    pub cpu_seconds: f64,
    /// Peak resident memory of the process, in MiB.
    pub peak_rss_mb: f64,
}

impl BenchResult {
    /// Events per wall-clock second.
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }

    /// Events per CPU second.
    pub fn events_per_sec_per_core(&self) -> f64 {
        self.events as f64 / self.cpu_seconds.max(1e-9)
    }

    /// The machine-readable `RESULT` line (latency percentiles are not measured yet, so
    /// there is no `p99_ms` field rather than a made-up one).
    pub fn result_line(&self) -> String {
        let query = self
            .query
            .as_ref()
            .map(|q| format!(" query={q}"))
            .unwrap_or_default();
        format!(
            "RESULT job={}{query} events={} parallelism={} state={} seconds={:.3} events_per_sec={:.0} events_per_sec_per_core={:.0} cpu_seconds={:.3} peak_rss_mb={:.1}",
            self.job,
            self.events,
            self.parallelism,
            self.state,
            self.seconds,
            self.events_per_sec(),
            self.events_per_sec_per_core(),
            self.cpu_seconds,
            self.peak_rss_mb
        )
    }
}

/// Builds and runs `spec` once, measuring it.
pub fn run(spec: &JobSpec, opts: &JobOptions) -> anyhow::Result<BenchResult> {
    let mut opts = opts.clone();
    if opts.output.is_none() {
        opts.output = Some("null:".into());
    }
    let job = (spec.build)(&opts)?;
    let mut run_options = opts.run_options(&spec.name)?;
    run_options.progress_interval = Some(Duration::from_secs(1));
    let cpu_before = process_cpu_seconds();
    let started = Instant::now();
    let result = job.run(&run_options);
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = process_cpu_seconds() - cpu_before;
    opts.remove_temporary_state(&run_options);
    let summary = result?;
    Ok(BenchResult {
        job: spec.name.clone(),
        query: opts.query.clone(),
        events: summary.events_read,
        parallelism: opts.parallelism,
        state: opts.state.clone(),
        seconds,
        cpu_seconds,
        peak_rss_mb: peak_rss_mb(),
    })
}

/// User + system CPU seconds of this process so far (Linux `/proc/self/stat`; 0 elsewhere).
pub fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start at state = field 3.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the whole line, 11 and 12 after the name.
    const CLOCK_TICKS_PER_SEC: f64 = 100.0;
    (ticks(11) + ticks(12)) / CLOCK_TICKS_PER_SEC
}

/// Peak resident set size in MiB (Linux `VmHWM`; 0 elsewhere).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

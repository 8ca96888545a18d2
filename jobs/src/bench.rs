//! The `weir bench` harness: runs a job with results discarded (unless `--output` says
//! otherwise) and reports throughput.
//!
//! `events_per_sec_per_core` is events divided by the CPU time of the whole process (all
//! threads, user + system), so it stays honest when a job keeps more or fewer than one core
//! busy. The last line is machine-readable:
//! `RESULT job=.. events=.. parallelism=.. seconds=.. events_per_sec=.. events_per_sec_per_core=.. cpu_seconds=.. peak_rss_mb=.. p50_ms=.. p99_ms=..`
//!
//! Latency is the engine's end-to-end latency (see `weir_engine::latency`): processing time
//! from a source reading a batch to a sink receiving the results it made due. Flat out, it
//! mostly measures queueing behind full channels; pace the input (`--rate`) to measure
//! latency at a given load. A run whose sinks received nothing prints `NA`.

use std::time::{Duration, Instant};

use weir_engine::LatencySummary;

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
    /// End-to-end latency of the results, if any were written.
    pub latency: Option<LatencySummary>,
}

impl BenchResult {
    /// Events per wall-clock second.
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }

    /// Events per CPU second, if the run used enough CPU time to tell: Linux counts it in
    /// 10 ms ticks, so below 0.1 s the figure would be off by more than 10 %.
    pub fn events_per_sec_per_core(&self) -> Option<f64> {
        (self.cpu_seconds >= 0.1).then(|| self.events as f64 / self.cpu_seconds)
    }

    /// Median and 99th-percentile latency in milliseconds, or `NA` without results.
    fn latency_ms(&self) -> (String, String) {
        let ms = |d: std::time::Duration| format!("{:.3}", d.as_secs_f64() * 1e3);
        self.latency
            .map_or(("NA".into(), "NA".into()), |l| (ms(l.p50), ms(l.p99)))
    }

    /// The machine-readable `RESULT` line.
    pub fn result_line(&self) -> String {
        let query = self
            .query
            .as_ref()
            .map(|q| format!(" query={q}"))
            .unwrap_or_default();
        let (p50, p99) = self.latency_ms();
        let per_core = self
            .events_per_sec_per_core()
            .map_or("NA".into(), |v| format!("{v:.0}"));
        format!(
            "RESULT job={}{query} events={} parallelism={} state={} seconds={:.3} events_per_sec={:.0} events_per_sec_per_core={per_core} cpu_seconds={:.3} peak_rss_mb={:.1} p50_ms={p50} p99_ms={p99}",
            self.job,
            self.events,
            self.parallelism,
            self.state,
            self.seconds,
            self.events_per_sec(),
            self.cpu_seconds,
            self.peak_rss_mb
        )
    }
}

/// A Markdown table of several runs (`weir bench nexmark --all`).
pub fn markdown_table(results: &[BenchResult]) -> String {
    let mut table = String::from(
        "| query | events | P | events/s | events/s/core | peak RSS MiB | p50 ms | p99 ms |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        let (p50, p99) = r.latency_ms();
        table.push_str(&format!(
            "| {} | {} | {} | {:.2} M | {} | {:.1} | {p50} | {p99} |\n",
            r.query.as_deref().unwrap_or(&r.job),
            r.events,
            r.parallelism,
            r.events_per_sec() / 1e6,
            r.events_per_sec_per_core()
                .map_or("NA".into(), |v| format!("{:.2} M", v / 1e6)),
            r.peak_rss_mb,
        ));
    }
    table
}

/// Builds and runs `spec` once, measuring it.
pub fn run(spec: &JobSpec, opts: &JobOptions) -> anyhow::Result<BenchResult> {
    let mut opts = opts.clone();
    if opts.outputs.is_empty() {
        opts.outputs.push("null:".into());
    }
    let job = (spec.build)(&opts)?;
    reset_peak_rss();
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
        latency: summary.latency,
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

/// Starts the peak RSS count afresh, so that each of several runs in one process
/// (`--all`) reports its own (Linux: writing 5 to `clear_refs` resets `VmHWM`; elsewhere,
/// and if refused, the peak stays the process's).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
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

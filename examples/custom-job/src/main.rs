//! A user crate with its own weir job: page dwell time per page over sliding windows.
//!
//! It registers one job and gets the whole `weir` CLI (`jobs`, `describe`, `run`, `bench`,
//! Prometheus metrics, progress) from one call:
//!
//! ```text
//! custom-job run page-dwell --input views.jsonl --output dwell.jsonl
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_jobs::prelude::*;

/// A page view: who looked at which page for how long.
#[derive(Debug, Clone, Deserialize)]
struct PageView {
    ts: i64,
    page: String,
    dwell_ms: i64,
}

/// One result per page and window.
#[derive(Debug, Clone, Serialize)]
struct PageDwell {
    page: String,
    window_end: i64,
    views: u64,
    avg_dwell_ms: Option<f64>,
}

fn page_dwell(opts: &JobOptions) -> anyhow::Result<Job> {
    let job = Job::new("page-dwell");
    let views = FileSource::new(
        opts.require_input("page-dwell")?,
        Format::JsonLines,
        Json::<PageView>::default(),
    );
    // Uids name each operator's state in checkpoints, so that it survives changes to the job.
    let views = job.source("views", views).uid("views");
    views
        .clone()
        .timestamps(|v| v.ts, Watermarks::bounded(Duration::from_secs(1)))
        .uid("view-time")
        .filter(|v| v.dwell_ms > 0)
        .key_by(|v: &PageView| v.page.clone())
        .window(Sliding::of(
            Duration::from_secs(60),
            Duration::from_secs(20),
        ))
        .aggregate(Count.and(Avg::of(|v: &PageView| v.dwell_ms)))
        .uid("dwell-window")
        .map(|r| PageDwell {
            page: r.key,
            window_end: r.window.end,
            views: r.value.0,
            avg_dwell_ms: r.value.1,
        })
        .sink("dwell", OutputSink::from_spec(opts.output.as_deref()))
        .uid("dwell");
    // Lines that cannot be read: one JSON line each, exactly once with checkpoints.
    write_dead_letters(&views, opts.dead_letter_path("page-dwell"));
    Ok(job)
}

fn main() -> std::process::ExitCode {
    let job = JobSpec::new(
        "page-dwell",
        "views and mean dwell time per page, 60 s windows every 20 s",
        page_dwell,
    )
    // What `page_dwell` reads besides the options of every job (--output, --parallelism,
    // state, checkpoints): `custom-job run page-dwell --window ..` is refused, not ignored.
    .reads(&["input"]);
    weir_jobs::cli::main(Registry::new().register(job))
}

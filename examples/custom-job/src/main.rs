//! A user crate with its own weir job: page dwell time per page over sliding windows, and
//! an alert for each very long view.
//!
//! It registers one job and gets the whole `weir` CLI (`jobs`, `describe`, `run`, `bench`,
//! Prometheus metrics, progress) from one call. It reads any `--input` the bundled jobs
//! read (JSON lines, CSV, Arrow IPC, `tcp://`, `kafka://`) and writes two named outputs:
//!
//! ```text
//! custom-job run page-dwell --input views.jsonl \
//!     --output dwell=dwell.jsonl --output alerts=kafka://localhost:9092/long-views
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_jobs::prelude::*;

/// A view this long (or longer) is an alert.
const LONG_VIEW_MS: i64 = 450;

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

/// A view of at least [`LONG_VIEW_MS`].
#[derive(Debug, Clone, Serialize)]
struct LongView {
    ts: i64,
    page: String,
    dwell_ms: i64,
}

fn page_dwell(opts: &JobOptions) -> anyhow::Result<Job> {
    // Named as registered below.
    let job = opts.job();
    // `--input` in any format, into `PageView`. Lines (or rows, records) that do not decode
    // go to the dead-letter file with their position, exactly once with checkpoints; the
    // source's uid "views" keeps its position in checkpoints.
    let views = read_input::<PageView>(&job, "views", opts)?;
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
        // Uids name each operator's state in checkpoints, so that it survives changes to
        // the job.
        .uid("dwell-window")
        .map(|r| PageDwell {
            page: r.key,
            window_end: r.window.end,
            views: r.value.0,
            avg_dwell_ms: r.value.1,
        })
        .sink("dwell", OutputSink::named(opts, "dwell")?)
        .uid("dwell");
    views
        .filter(|v| v.dwell_ms >= LONG_VIEW_MS)
        .map(|v| LongView {
            ts: v.ts,
            page: v.page,
            dwell_ms: v.dwell_ms,
        })
        .sink("alerts", OutputSink::named(opts, "alerts")?)
        .uid("alerts");
    Ok(job)
}

fn main() -> std::process::ExitCode {
    let job = JobSpec::new(
        "page-dwell",
        "views and mean dwell time per page, 60 s windows every 20 s; long views as alerts",
        page_dwell,
    )
    // What `page_dwell` reads besides the options of every job (--parallelism, state,
    // checkpoints): `custom-job run page-dwell --window ..` is refused, not ignored.
    .reads(&["input", "format", "follow", "max-line"])
    // Its outputs, each given as `--output NAME=SPEC`.
    .outputs(&["dwell", "alerts"]);
    weir_jobs::cli::main(Registry::new().register(job))
}

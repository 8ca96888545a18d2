//! A user crate with its own weir job: page dwell time per page over sliding windows, and
//! an alert for each very long view.
//!
//! It registers one job and gets the whole `weir` CLI (`jobs`, `describe`, `run`, `bench`,
//! Prometheus metrics, progress) from one call. It reads any `--input` the bundled jobs
//! read (JSON lines, CSV, Arrow IPC, `tcp://`, `kafka://`), takes options of its own
//! (`custom-job run page-dwell --help` lists them) and writes two named outputs:
//!
//! ```text
//! custom-job run page-dwell --input views.jsonl --long-view-ms 600 \
//!     --output dwell=dwell.jsonl --output alerts=kafka://localhost:9092/long-views
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_jobs::engine::parse_duration;
use weir_jobs::prelude::*;

/// The options of `page-dwell` besides weir's own: clap parses and checks them, and
/// `custom-job run page-dwell --help` lists them with these comments.
#[derive(Debug, Clone, clap::Args)]
struct DwellArgs {
    /// A view at least this long (milliseconds) is an alert.
    #[arg(long, value_name = "MS", default_value_t = 450,
          value_parser = clap::value_parser!(i64).range(1..))]
    long_view_ms: i64,
    /// How often the 60 s dwell windows start (e.g. `20s`; 1ms to 60s).
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = slide)]
    slide: Duration,
}

/// The size of the dwell windows.
const WINDOW: Duration = Duration::from_secs(60);

/// `--slide`: a duration no longer than the window (an error here names the option).
fn slide(text: &str) -> Result<Duration, String> {
    let slide = parse_duration(text).map_err(|e| e.to_string())?;
    match slide.is_zero() || slide > WINDOW {
        true => Err(format!("a slide is 1ms to {}s", WINDOW.as_secs())),
        false => Ok(slide),
    }
}

/// A page view: who looked at which page for how long.
#[derive(Debug, Clone, Deserialize)]
struct PageView {
    ts: i64,
    page: String,
    dwell_ms: i64,
}

/// A window's views and their mean dwell time.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Dwell {
    views: u64,
    avg_dwell_ms: Option<f64>,
}

/// One result per page and window.
#[derive(Debug, Clone, Serialize)]
struct PageDwell {
    page: String,
    window_end: i64,
    views: u64,
    avg_dwell_ms: Option<f64>,
}

/// A view of at least `--long-view-ms`.
#[derive(Debug, Clone, Serialize)]
struct LongView {
    ts: i64,
    page: String,
    dwell_ms: i64,
}

fn page_dwell(opts: &JobOptions) -> anyhow::Result<Job> {
    // Named as registered below.
    let job = opts.job();
    // Its own options, as the command line gave them (see `.args` below).
    let args: DwellArgs = opts.args()?;
    let long_view_ms = args.long_view_ms;
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
        .window(Sliding::of(WINDOW, args.slide))
        // Two aggregates side by side, their results named by a type of the job's own.
        .aggregate(Count.and(Avg::of(|v: &PageView| v.dwell_ms)).map_result(
            |(views, avg_dwell_ms)| Dwell {
                views,
                avg_dwell_ms,
            },
        ))
        // Uids name each operator's state in checkpoints, so that it survives changes to
        // the job.
        .uid("dwell-window")
        .map(|r| PageDwell {
            page: r.key,
            window_end: r.window.end,
            views: r.value.views,
            avg_dwell_ms: r.value.avg_dwell_ms,
        })
        .sink("dwell", OutputSink::named(opts, "dwell")?)
        .uid("dwell");
    views
        .filter(move |v| v.dwell_ms >= long_view_ms)
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
    // Its own options.
    .args::<DwellArgs>()
    // Its outputs, each given as `--output NAME=SPEC`.
    .outputs(&["dwell", "alerts"]);
    weir_jobs::cli::main(Registry::new().register(job))
}

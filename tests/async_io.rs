//! `map_async` through the public job API against a real HTTP service on 127.0.0.1
//! (`common/enrich_server.rs`: injected latency, 500s and answers slower than the timeout,
//! retried; a few ids that never answer in time become dead letters).
//!
//! - At P = 1 and P = 2, ordered and unordered, on a plain and on a keyed stream, the
//!   results are exactly the synchronous computation, and the dead letters exactly the ids
//!   that never answer; ordered at P = 1 keeps the input order.
//! - Killed with SIGKILL while requests are in flight (a child process: this test binary
//!   running the ignored [`run_job_in_child`]) and resumed at the other parallelism from
//!   the newest checkpoint: each result is committed exactly once, and the resumed run
//!   asked the service for ids its source did not read again, the inputs the checkpoint
//!   held in flight.

// Helpers here set up fixtures; a failing setup should panic the test.
#![allow(clippy::unwrap_used)]

mod common;
#[allow(dead_code)]
#[path = "common/enrich_server.rs"]
mod enrich_server;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::checkpointed::{
    assert_same_rows, committed_rows, in_progress_files, latest_checkpoint, run_options,
    sorted_lines, Throttled,
};
use common::kill::{Ended, Running, POLL, RUN_LIMIT};
use enrich_server::{customer_name, is_dead, EnrichClient, EnrichServer, Faults};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use weir_engine::{DeadLetter, RunOptions, Stream};
use weir_jobs::prelude::*;

/// Environment variable that makes [`run_job_in_child`] run a job: `dir|parallelism|port`.
const CHILD_ENV: &str = "WEIR_ASYNC_CHILD";
const EVENTS: u64 = 1_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Order {
    id: u64,
    ts: i64,
}

/// A result as the job emits it (a JSON object: the sink writes it as one line).
fn result_row(id: u64, ts: i64, customer: &str) -> Value {
    json!({"id": id, "ts": ts, "customer": customer})
}

fn orders() -> Vec<Order> {
    (0..EVENTS)
        .map(|id| Order {
            id,
            ts: 1_000_000 + id as i64 * 3,
        })
        .collect()
}

/// The results in input order and the dead ids: what a synchronous loop computes.
fn reference() -> (Vec<String>, Vec<u64>) {
    let rows = orders()
        .iter()
        .filter(|o| !is_dead(o.id))
        .map(|o| result_row(o.id, o.ts, &customer_name(o.id)).to_string())
        .collect();
    (rows, (0..EVENTS).filter(|&id| is_dead(id)).collect())
}

/// Service misbehaviour for a run: `latency` on every answer, failures on.
fn faults(latency: Duration) -> Faults {
    Faults {
        latency,
        failures: true,
        too_slow: Duration::from_millis(400),
    }
}

/// How a run issues its requests.
#[derive(Debug, Clone, Copy)]
struct Mode {
    ordered: bool,
    keyed: bool,
    concurrency: usize,
}

/// The job: orders from `dir/orders.jsonl`, enriched from the service at `client`, results
/// to `output`, dead letters to `dead`.
fn job(
    dir: &Path,
    client: EnrichClient,
    mode: Mode,
    output: &Path,
    dead: &Path,
    throttled: bool,
) -> Job {
    let job = Job::new("enrich");
    let file = FileSource::new(
        dir.join("orders.jsonl"),
        Format::JsonLines,
        Json::<Order>::default(),
    );
    let orders: Stream<Order> = if throttled {
        job.source("orders", Throttled(file))
    } else {
        job.source("orders", file)
    }
    .uid("orders")
    .timestamps(
        |o: &Order| o.ts,
        Watermarks::bounded(Duration::from_millis(50)),
    );
    let mut options = AsyncOptions::new(mode.concurrency)
        .timeout(Duration::from_millis(100))
        .retries(2, Duration::from_millis(5));
    if !mode.ordered {
        options = options.unordered();
    }
    let enrich = move |o: Order| {
        let client = client.clone();
        async move {
            let customer = client.customer(o.id).await?;
            Ok::<_, String>(result_row(o.id, o.ts, &customer))
        }
    };
    let (results, dead_letters) = if mode.keyed {
        orders
            .key_by(|o: &Order| o.id % 10)
            .map_async_with("enrich", options, enrich)
    } else {
        orders.map_async_with("enrich", options, enrich)
    };
    results
        .uid("enrich")
        .sink("out", FileSink::new(output))
        .uid("out");
    dead_letters
        .side_output_sink("dead", FileSink::<DeadLetter>::new(dead))
        .uid("dead");
    job
}

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let text: String = orders()
        .iter()
        .map(|o| serde_json::to_string(o).unwrap() + "\n")
        .collect();
    std::fs::write(dir.path().join("orders.jsonl"), text).unwrap();
    dir
}

/// The ids of dead-letter rows, sorted, after checking each says why and holds its input.
fn dead_ids(rows: &[String]) -> Vec<u64> {
    let mut ids: Vec<u64> = rows
        .iter()
        .map(|row| {
            let letter: DeadLetter = serde_json::from_str(row).unwrap();
            assert_eq!(letter.source, "enrich");
            assert!(letter.error.contains("timed out"), "{row}");
            let order: Order = serde_json::from_str(letter.raw.as_text().unwrap()).unwrap();
            order.id
        })
        .collect();
    ids.sort_unstable();
    ids
}

#[test]
fn enrichment_equals_the_synchronous_computation_at_p1_and_p2() {
    let dir = setup();
    let server = EnrichServer::start(faults(Duration::from_millis(2)));
    let (in_order, dead) = reference();
    let mut expected = in_order.clone();
    expected.sort();
    let modes = [
        (1, true, false),
        (1, false, false),
        (2, true, false),
        (2, false, false),
        (2, true, true),
    ];
    for (p, ordered, keyed) in modes {
        let what = format!("P={p} ordered={ordered} keyed={keyed}");
        let tag = format!("{p}-{ordered}-{keyed}");
        let out = dir.path().join(format!("out-{tag}.jsonl"));
        let dead_out = dir.path().join(format!("dead-{tag}.jsonl"));
        let mode = Mode {
            ordered,
            keyed,
            concurrency: 20,
        };
        let summary = job(
            dir.path(),
            EnrichClient::new(server.addr),
            mode,
            &out,
            &dead_out,
            false,
        )
        .run(&run_options(
            &dir.path().join("state"),
            "enrich",
            p,
            None,
            None,
        ))
        .unwrap();
        assert_eq!(summary.events_read, EVENTS, "{what}");
        let text = std::fs::read_to_string(&out).unwrap();
        assert_same_rows(&sorted_lines(&text), &expected, &what);
        if p == 1 && ordered && !keyed {
            let lines: Vec<String> = text.lines().map(str::to_string).collect();
            assert!(lines == in_order, "{what}: not in input order");
        }
        let dead_rows = sorted_lines(&std::fs::read_to_string(&dead_out).unwrap());
        assert_eq!(dead_ids(&dead_rows), dead, "{what}");
    }
}

fn options(dir: &Path, parallelism: usize) -> RunOptions {
    run_options(
        &dir.join("state"),
        "enrich",
        parallelism,
        Some(16),
        Some(Duration::from_millis(20)),
    )
}

const KILL_MODE: Mode = Mode {
    ordered: false,
    keyed: false,
    concurrency: 50,
};

#[test]
fn requests_in_flight_survive_kill_9_exactly_once() {
    for (killed_at, resumed_at) in [(2, 1), (1, 2)] {
        let dir = setup();
        let (out, dead_out) = (dir.path().join("out"), dir.path().join("dead"));
        let root = dir.path().join("state/enrich/checkpoints");
        // Slow answers: every checkpoint catches requests in flight.
        let slow = EnrichServer::start(faults(Duration::from_millis(40)));
        let mut child = Command::new(std::env::current_exe().unwrap());
        child
            .args(["run_job_in_child", "--exact", "--ignored", "--nocapture"])
            .env(
                CHILD_ENV,
                format!("{}|{killed_at}|{}", dir.path().display(), slow.addr),
            );
        let mut run = Running::spawn(child, dir.path().join("child.stderr"));
        while run.is_running() && latest_checkpoint(&root) < 3 {
            assert!(run.started.elapsed() < RUN_LIMIT, "{}", run.stderr());
            std::thread::sleep(POLL);
        }
        let (ended, stderr) = run.kill();
        assert_eq!(ended, Ended::Killed, "the child finished first:\n{stderr}");

        let fast = EnrichServer::start(faults(Duration::from_millis(1)));
        let resumed = job(
            dir.path(),
            EnrichClient::new(fast.addr),
            KILL_MODE,
            &out,
            &dead_out,
            false,
        )
        .run(&options(dir.path(), resumed_at))
        .unwrap();
        let what = format!("killed at P={killed_at}, resumed at P={resumed_at}");
        assert!(
            resumed.events_read < EVENTS,
            "{what}: the restart started over"
        );
        // The file source resumes at an offset: it read the last `events_read` orders again.
        let first_reread = EVENTS - resumed.events_read;
        let reissued = fast
            .requested()
            .into_iter()
            .filter(|&id| id < first_reread)
            .count();
        assert!(
            reissued > 0,
            "{what}: no request in flight was issued again"
        );
        assert_eq!(in_progress_files(&out), Vec::<String>::new());
        let (mut expected, dead) = reference();
        expected.sort();
        assert_same_rows(&committed_rows(&out), &expected, &what);
        assert_eq!(dead_ids(&committed_rows(&dead_out)), dead, "{what}");
    }
}

/// The child of the kill -9 test: runs the job, throttled, against the parent's slow
/// service, with checkpoints on RocksDB.
#[test]
#[ignore = "run by requests_in_flight_survive_kill_9_exactly_once in a child process"]
fn run_job_in_child() {
    let spec = std::env::var(CHILD_ENV).expect("set by the parent test");
    let parts: Vec<&str> = spec.rsplitn(3, '|').collect();
    let (addr, parallelism, dir) = (parts[0], parts[1], PathBuf::from(parts[2]));
    let client = EnrichClient::new(addr.parse().unwrap());
    job(
        &dir,
        client,
        KILL_MODE,
        &dir.join("out"),
        &dir.join("dead"),
        true,
    )
    .run(&options(&dir, parallelism.parse().unwrap()))
    .unwrap();
}

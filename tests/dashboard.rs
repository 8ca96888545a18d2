//! The dashboard in a real headless Chromium against a running job: it shows the job's
//! nodes, event counts that grow while events arrive, a checkpoint row, and its stop
//! button stops the job gracefully. A screenshot is kept as an artifact
//! (`$CARGO_TARGET_TMPDIR/dashboard.png`).

mod common;

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::follow_run::{Process, LIMIT};
use common::webdriver::Browser;

const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// `lines` events for window-agg, from event number `from`, one a millisecond.
fn events(from: u64, lines: u64) -> String {
    (from..from + lines)
        .map(|i| {
            format!(
                "{{\"ts\":{},\"key\":\"k{}\",\"value\":{}}}\n",
                1_767_225_600_000 + i,
                i % 50,
                i % 7
            )
        })
        .collect()
}

/// Polls `script` in the page until `done` accepts what it returns (at most `LIMIT`).
fn wait_for(browser: &Browser, what: &str, script: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let seen = browser.run(script);
        if done(&seen) {
            return seen;
        }
        assert!(
            started.elapsed() < LIMIT,
            "the page never showed {what}; last: {seen}"
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// Events out of the `input` node as the page's graph shows them.
const INPUT_EVENTS: &str =
    "const n = document.querySelector('#graph .node[data-name=\"input\"]'); \
     return n ? Number(n.dataset.eventsOut) : null;";

#[test]
fn the_dashboard_shows_a_live_job_and_its_stop_button_stops_it() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = dir.path().join("events.jsonl");
    fs::write(&input, events(0, 20_000)).expect("the input");
    let args: Vec<OsString> = [
        "run",
        "window-agg",
        "--follow",
        "--quiet",
        "--metrics-addr",
        "127.0.0.1:0",
        "--checkpoint-interval",
        "200ms",
        "--state-dir",
    ]
    .map(OsString::from)
    .into_iter()
    .chain([
        dir.path().join("state").into(),
        "--input".into(),
        input.clone().into(),
    ])
    .chain(["--output".into(), dir.path().join("out").into()])
    .collect();
    let mut job = Process::start(WEIR, &args, dir.path().join("job.stderr"));
    let addr = loop {
        let stderr = job.stderr();
        if let Some(addr) = stderr
            .lines()
            .find_map(|l| l.strip_prefix("weir: dashboard at http://"))
        {
            break addr.trim_end_matches('/').to_string();
        }
        assert!(job.is_running(), "the job ended; stderr:\n{stderr}");
        thread::sleep(Duration::from_millis(20));
    };

    let browser = Browser::start(&dir.path().join("chromium-profile"));
    browser.open(&format!("http://{addr}/"));
    let header = wait_for(
        &browser,
        "the job's name and state",
        "return [document.getElementById('job-name').textContent, \
                 document.getElementById('job-state').textContent];",
        |v| v[1] == "running",
    );
    assert_eq!(header[0], "window-agg");
    let nodes = wait_for(
        &browser,
        "the job's nodes",
        "return [...document.querySelectorAll('#graph .node')].map(n => n.dataset.name);",
        |v| v.as_array().is_some_and(|a| a.len() >= 3),
    );
    let names: Vec<&str> = nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(names.contains(&"input"), "no input node among {names:?}");
    // Steps an operator API added are drawn dashed, and a keyed node names its key type.
    let drawn = browser.run(
        "const box = (name) => document.querySelector(`#graph .node[data-name=\"${name}\"]`); \
         return [box('flat_map').querySelector('rect').getAttribute('stroke-dasharray'), \
                 box('window').querySelector('rect').getAttribute('stroke-dasharray'), \
                 box('window').querySelector('title').textContent];",
    );
    assert_eq!(
        (&drawn[0], &drawn[1]),
        (&json!("5 3"), &json!("none")),
        "{drawn}"
    );
    assert!(
        drawn[2]
            .as_str()
            .is_some_and(|t| t.contains("key SharedStr")),
        "{drawn}"
    );
    let before = wait_for(&browser, "the events read", INPUT_EVENTS, |v| {
        v.as_u64() == Some(20_000)
    });

    // Events keep arriving: the count on the page grows with them.
    let mut more = OpenOptions::new()
        .append(true)
        .open(&input)
        .expect("the input");
    more.write_all(events(20_000, 5_000).as_bytes())
        .expect("more events");
    drop(more);
    let after = wait_for(&browser, "a growing count", INPUT_EVENTS, |v| {
        v.as_u64() == Some(25_000)
    });
    assert!(after.as_u64() > before.as_u64());

    let rows = wait_for(
        &browser,
        "a completed checkpoint",
        "return [...document.querySelectorAll('#checkpoints tbody tr')].map(r => r.textContent);",
        |v| {
            v.as_array().is_some_and(|a| {
                a.iter()
                    .any(|r| r.as_str().is_some_and(|t| t.contains("completed")))
            })
        },
    );
    assert!(rows.as_array().is_some_and(|r| !r.is_empty()));

    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG screenshot");
    let artifact = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    fs::write(&artifact, &png).expect("the screenshot artifact");
    eprintln!("dashboard screenshot: {}", artifact.display());

    // The stop button asks for a second click, then stops the job as SIGTERM does.
    browser.click("#stop");
    browser.click("#stop");
    let started = Instant::now();
    while job.is_running() {
        assert!(
            started.elapsed() < LIMIT,
            "the stop button did not stop the job"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let status = job.child.wait().expect("the job's status");
    assert!(status.success(), "stderr:\n{}", job.stderr());
    assert!(
        job.stderr().contains("window-agg stopped:"),
        "not the graceful stop; stderr:\n{}",
        job.stderr()
    );
}
